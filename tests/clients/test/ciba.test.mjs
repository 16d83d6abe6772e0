// oauth4webapi (panva), unmodified, as a CIBA client (OpenID CIBA poll
// mode) against a real `mandate serve`: a payment asked with RFC 9396
// `authorization_details`, approved by the person, and only what was
// approved covered at /v1/check; and a four-eyes group approval, where the
// library keeps seeing `authorization_pending` until the second member of
// the group approves (issue 16 §4, §5).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as oauth from 'oauth4webapi';
import { CAL, claims, createAgent, newKey, seed, sleep, startServer } from '../lib.mjs';

const PAY = 'https://pay.example';
const PAYMENT = {
  schema: {
    type: 'object',
    required: ['type', 'amount', 'currency', 'creditor'],
    properties: {
      type: { const: 'payment_initiation' },
      amount: { type: 'number', exclusiveMinimum: 0 },
      currency: { type: 'string', pattern: '^[A-Z]{3}$' },
      creditor: { type: 'string' },
    },
  },
  bounds: { amount: 'max', currency: 'equal', creditor: 'equal' },
};
const POLICIES = `
permit (principal in Group::"staff", action, resource);
permit (principal is Agent, action in [Action::"list", Action::"get"], resource)
  when { context has user && principal.owner == context.user };
@approval("user")
permit (principal is Agent, action == Action::"pay", resource is Api)
  when { context has user && principal.owner == context.user };
permit (principal is Agent, action == Action::"pay", resource is Resource)
  when { context has user && principal.owner == context.user };
@approval("group:finance") @approvals("2")
permit (principal is Agent, action == Action::"create", resource)
  when { context has user && principal.owner == context.user };
`;

let server, as, agent, auth, alice, people;
const opts = { [oauth.allowInsecureRequests]: true };

/** A person with a personal API token. */
async function person(email, groups) {
  const u = await server.adminOk('POST', '/v1/users', { name: email.split('@')[0], email, groups });
  const t = await server.adminOk('POST', `/v1/users/${u.id}/tokens`, {});
  return { ...u, token: t.token };
}

async function decide(who, id, verb) {
  const r = await fetch(`${server.url}/v1/approvals/${id}/${verb}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${who.token}` },
  });
  return { status: r.status, body: await r.json().catch(() => null) };
}

async function ask(parameters) {
  const r = await oauth.backchannelAuthenticationRequest(as, { client_id: agent.id }, auth, parameters, opts);
  return oauth.processBackchannelAuthenticationResponse(as, { client_id: agent.id }, r);
}

/** One poll, as CIBA §7.3 asks: `interval` seconds after the last. */
async function poll(asked) {
  await sleep(asked.interval * 1000);
  const r = await oauth.backchannelAuthenticationGrantRequest(as, { client_id: agent.id }, auth, asked.auth_req_id, opts);
  return oauth.processBackchannelAuthenticationGrantResponse(as, { client_id: agent.id }, r);
}

async function pending(asked) {
  await assert.rejects(poll(asked), (e) => e instanceof oauth.ResponseBodyError && e.error === 'authorization_pending');
}

async function check(token, detail) {
  return server.adminOk('POST', '/v1/check', {
    token,
    action: 'pay',
    resource: { type: 'payment', id: 'p1' },
    authorization_details: [detail],
  });
}

before(async () => {
  server = await startServer();
  await seed(server);
  await server.adminOk('POST', '/v1/resources', {
    identifier: PAY,
    name: 'Payments',
    scopes: { pay: ['pay'] },
    authorization_details_types: { payment_initiation: PAYMENT },
  });
  await server.adminOk('PUT', '/v1/policies', { policies: POLICIES });
  alice = await person('alice.ciba@example.com', ['staff']);
  people = {
    carol: await person('carol@example.com', ['staff', 'finance']),
    dave: await person('dave@example.com', ['staff', 'finance']),
  };
  const key = await newKey('Ed25519');
  agent = await createAgent(server, { name: 'ciba agent', owner: alice.id, keys: [key] });
  auth = oauth.PrivateKeyJwt({ key: key.privateKey, kid: key.kid });
  const issuer = new URL(server.issuer);
  const d = await oauth.discoveryRequest(issuer, { ...opts, algorithm: 'oauth2' });
  as = await oauth.processDiscoveryResponse(issuer, d);
});

after(async () => {
  await server?.stop();
});

test('metadata: CIBA endpoint, poll mode and the payment detail type', () => {
  assert.equal(as.backchannel_authentication_endpoint, `${server.issuer}/oauth/bc-authorize`);
  assert.ok(as.backchannel_token_delivery_modes_supported.includes('poll'));
  assert.ok(as.authorization_details_types_supported.includes('payment_initiation'));
});

test('a payment approved for 120 EUR covers 120 EUR, not 500', async () => {
  const detail = { type: 'payment_initiation', amount: 120, currency: 'EUR', creditor: 'ACME Corp' };
  const asked = await ask({
    login_hint: alice.email,
    scope: 'pay',
    resource: PAY,
    binding_message: 'pay the caterer',
    authorization_details: JSON.stringify([detail]),
  });
  await pending(asked);
  // Alice sees what she approves.
  const list = await fetch(`${server.url}/v1/approvals?status=pending`, {
    headers: { authorization: `Bearer ${alice.token}` },
  }).then((r) => r.json());
  const mine = list.approvals.find((a) => a.id === asked.auth_req_id);
  assert.deepEqual(mine.subject.authorization_details, [detail]);
  assert.equal((await decide(alice, asked.auth_req_id, 'approve')).status, 200);
  const t = await poll(asked);
  assert.deepEqual(t.authorization_details, [detail]);
  assert.deepEqual(claims(t.access_token).authorization_details, [detail]);
  assert.deepEqual((await server.introspect(t.access_token)).authorization_details, [detail]);
  assert.equal((await check(t.access_token, { ...detail, amount: 100 })).decision, 'allow');
  assert.equal((await check(t.access_token, detail)).decision, 'allow');
  const big = await check(t.access_token, { ...detail, amount: 500 });
  assert.equal(big.decision, 'deny');
  assert.match(big.reasons.join(' '), /amount 500/);
  assert.equal((await check(t.access_token, { ...detail, currency: 'USD' })).decision, 'deny');
});

test('a detail outside the declared schema is invalid_authorization_details', async () => {
  await assert.rejects(
    ask({
      login_hint: alice.email,
      scope: 'pay',
      resource: PAY,
      binding_message: 'pay',
      authorization_details: JSON.stringify([{ type: 'payment_initiation', amount: -5, currency: 'EUR', creditor: 'x' }]),
    }),
    (e) => e instanceof oauth.ResponseBodyError && e.error === 'invalid_authorization_details',
  );
});

test('four eyes: two members of finance must approve before the library gets a token', async () => {
  const asked = await ask({ login_hint: alice.email, scope: 'write', resource: CAL, binding_message: 'book the offsite' });
  await pending(asked);
  const first = await decide(people.carol, asked.auth_req_id, 'approve');
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.equal(first.body.status, 'pending');
  await pending(asked);
  // The same person twice counts once.
  assert.equal((await decide(people.carol, asked.auth_req_id, 'approve')).status, 409);
  await pending(asked);
  const second = await decide(people.dave, asked.auth_req_id, 'approve');
  assert.equal(second.status, 200, JSON.stringify(second.body));
  assert.equal(second.body.status, 'approved');
  const t = await poll(asked);
  assert.equal(t.scope, 'write');
  assert.equal(claims(t.access_token).sub, alice.id);
});
