// The Shared Signals transmitter (SSF 1.0, CAEP 1.0) checked by software
// Mandate does not control: a receiver (a registered resource) gets its
// `ssf.manage` token by client_credentials with oauth4webapi, makes the
// CAEP interoperability profile's transmitter calls (configuration, stream
// create / get / update / replace / delete, status, verification, poll),
// removes and adds back subjects (SSF §8.1.3): an agent by its opaque id,
// a person by email as the CAEP interoperability profile asks, and checks
// the profile's subject formats in the SETs (a complex subject of the
// session and the user's `iss_sub`; `opaque` for verification only),
// and verifies every SET with `jose` (panva) against the issuer's
// `jwks_uri`, `typ: secevent+jwt`: once with SETs signed by the token key
// (EdDSA) and once with `--ssf-signing-alg RS256`.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as oauth from 'oauth4webapi';
import * as jose from 'jose';
import { ALICE, POLICIES, claims, createAgent, newKey, startServer } from '../lib.mjs';

const RS = 'https://calendar.example';
const SESSION_REVOKED = 'https://schemas.openid.net/secevent/caep/event-type/session-revoked';
const VERIFICATION = 'https://schemas.openid.net/secevent/ssf/event-type/verification';
const POLL = 'urn:ietf:rfc:8936';
const opts = { [oauth.allowInsecureRequests]: true };

const servers = [];
after(async () => {
  for (const s of servers) await s.stop();
});

/** A server with Alice, the calendar as a receiver (with a key), the policies and an agent. */
async function world(args) {
  const server = await startServer({ args });
  servers.push(server);
  const alice = await server.adminOk('POST', '/v1/users', { ...ALICE, groups: ['staff'] });
  const rsKey = await newKey('Ed25519');
  const rs = await server.adminOk('POST', '/v1/resources', {
    identifier: RS,
    name: 'Calendar',
    scopes: { read: ['list', 'get'], write: ['create'] },
    jwks: { keys: [rsKey.jwk] },
  });
  await server.adminOk('PUT', '/v1/policies', { policies: POLICIES });
  const agentKey = await newKey('Ed25519');
  const agent = await createAgent(server, { name: 'ssf agent', owner: alice.id, keys: [agentKey] });
  const otherKey = await newKey('Ed25519');
  const other = await createAgent(server, { name: 'ssf other agent', owner: alice.id, keys: [otherKey] });
  const thirdKey = await newKey('Ed25519');
  const third = await createAgent(server, { name: 'ssf third agent', owner: alice.id, keys: [thirdKey] });
  const issuer = new URL(server.issuer);
  const as = await oauth.processDiscoveryResponse(
    issuer,
    await oauth.discoveryRequest(issuer, { ...opts, algorithm: 'oauth2' }),
  );
  return {
    server,
    as,
    rs: { id: rs.id, key: rsKey },
    agent: { id: agent.id, key: agentKey },
    other: { id: other.id, key: otherKey },
    third: { id: third.id, key: thirdKey },
    alice,
  };
}

/**
 * Alice's grant of `read` on the calendar to `agent` (CIBA; policy lets it
 * without asking her): its access token, whose `sub` is Alice.
 */
async function granted(as, agent) {
  const client = { client_id: agent.id };
  const auth = oauth.PrivateKeyJwt({ key: agent.key.privateKey, kid: agent.key.kid });
  const params = { login_hint: ALICE.email, scope: 'read', resource: RS };
  const asked = await oauth.processBackchannelAuthenticationResponse(
    as,
    client,
    await oauth.backchannelAuthenticationRequest(as, client, auth, params, opts),
  );
  const r = await oauth.backchannelAuthenticationGrantRequest(as, client, auth, asked.auth_req_id, opts);
  return (await oauth.processBackchannelAuthenticationGrantResponse(as, client, r)).access_token;
}

async function clientCredentials(as, clientId, key, resource, scope) {
  const client = { client_id: clientId };
  const auth = oauth.PrivateKeyJwt({ key: key.privateKey, kid: key.kid });
  const r = await oauth.clientCredentialsGrantRequest(as, client, auth, { resource, scope }, opts);
  return (await oauth.processClientCredentialsResponse(as, client, r)).access_token;
}

/** A JSON call with a bearer token: `{status, body}`. */
async function call(token, method, url, body) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

async function run(args, expectedAlg) {
  const { server, as, rs, agent, other, third, alice } = await world(args);
  // The transmitter's configuration (SSF §7).
  const cfg = await (await fetch(`${server.issuer}/.well-known/ssf-configuration`)).json();
  assert.equal(cfg.issuer, server.issuer);
  assert.deepEqual(cfg.delivery_methods_supported, ['urn:ietf:rfc:8935', POLL]);
  assert.deepEqual(cfg.authorization_schemes, [{ spec_urn: 'urn:ietf:rfc:6749' }]);
  const jwks = jose.createRemoteJWKSet(new URL(cfg.jwks_uri));

  const token = await clientCredentials(as, rs.id, rs.key, server.issuer, 'ssf.manage');
  // Create a poll stream, read it back, update, replace.
  const created = await call(token, 'POST', cfg.configuration_endpoint, {
    delivery: { method: POLL },
    events_requested: [SESSION_REVOKED],
    description: 'interop',
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const stream = created.body;
  assert.equal(stream.aud, RS);
  assert.deepEqual(stream.events_delivered, [SESSION_REVOKED]);
  const got = await call(token, 'GET', `${cfg.configuration_endpoint}?stream_id=${stream.stream_id}`);
  assert.equal(got.status, 200);
  assert.deepEqual(got.body, stream);
  const patched = await call(token, 'PATCH', cfg.configuration_endpoint, {
    stream_id: stream.stream_id,
    description: 'interop, patched',
  });
  assert.equal(patched.status, 200);
  assert.equal(patched.body.description, 'interop, patched');
  const replaced = await call(token, 'PUT', cfg.configuration_endpoint, {
    stream_id: stream.stream_id,
    delivery: { method: POLL },
    events_requested: [SESSION_REVOKED],
  });
  assert.equal(replaced.status, 200);
  assert.equal(replaced.body.description, undefined);
  // Status.
  const status = await call(token, 'GET', `${cfg.status_endpoint}?stream_id=${stream.stream_id}`);
  assert.deepEqual(status.body, { stream_id: stream.stream_id, status: 'enabled' });
  assert.equal(stream.min_verification_interval, 15);

  // Subjects (SSF §8.1.3): every subject is in by default; the receiver
  // removes the other agent (204), so its revoked token is not signalled.
  const otherSubject = { stream_id: stream.stream_id, subject: { format: 'opaque', id: other.id } };
  const removed = await call(token, 'POST', cfg.remove_subject_endpoint, otherSubject);
  assert.equal(removed.status, 204, JSON.stringify(removed.body));
  // A person by email (the CAEP interoperability profile's format), in any
  // case: her tokens' revocations are not signalled on this stream.
  const email = { stream_id: stream.stream_id, subject: { format: 'email', email: 'Alice@Example.com' } };
  const byEmail = await call(token, 'POST', cfg.remove_subject_endpoint, email);
  assert.equal(byEmail.status, 204, JSON.stringify(byEmail.body));
  const nobody = { stream_id: stream.stream_id, subject: { format: 'email', email: 'nobody@example.com' } };
  assert.equal((await call(token, 'POST', cfg.remove_subject_endpoint, nobody)).status, 404);
  const malformed = { stream_id: stream.stream_id, subject: { format: 'email', email: 'alice at example.com' } };
  const refused = await call(token, 'POST', cfg.remove_subject_endpoint, malformed);
  assert.equal(refused.status, 400);
  assert.equal(refused.body.err, 'invalid_request');
  const alicesToken = await granted(as, agent);
  assert.equal(claims(alicesToken).sub, alice.id);
  const own = { stream_id: stream.stream_id, subject: { format: 'opaque', id: stream.stream_id } };
  assert.equal((await call(token, 'POST', cfg.remove_subject_endpoint, own)).status, 403);
  const otherToken = await clientCredentials(as, other.id, other.key, RS, 'read');
  await server.adminOk('POST', `/v1/agents/${other.id}/suspend`);

  // The agent gets a token for the calendar; the admin suspends the agent.
  const agentToken = await clientCredentials(as, agent.id, agent.key, RS, 'read');
  const jti = claims(agentToken).jti;
  await server.adminOk('POST', `/v1/agents/${agent.id}/suspend`);
  // Verification.
  const verify = await fetch(cfg.verification_endpoint, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ stream_id: stream.stream_id, state: 'interop-state' }),
  });
  assert.equal(verify.status, 204);

  // Poll (RFC 8936) at the stream's endpoint, with an ssf.read token.
  const reader = await clientCredentials(as, rs.id, rs.key, server.issuer, 'ssf.read');
  const polled = await call(reader, 'POST', stream.delivery.endpoint_url, { returnImmediately: true });
  assert.ok(otherToken);
  assert.equal(polled.status, 200, JSON.stringify(polled.body));
  const sets = Object.entries(polled.body.sets);
  assert.equal(sets.length, 2, JSON.stringify(polled.body));
  const verified = [];
  for (const [setJti, set] of sets) {
    const { payload, protectedHeader } = await jose.jwtVerify(set, jwks, {
      issuer: server.issuer,
      audience: RS,
      typ: 'secevent+jwt',
    });
    assert.equal(protectedHeader.alg, expectedAlg);
    assert.equal(payload.jti, setJti);
    assert.equal(payload.sub, undefined);
    assert.equal(payload.exp, undefined);
    assert.equal(Object.keys(payload.events).length, 1);
    verified.push(payload);
  }
  // The agent's own token (Alice's, revoked with it, was removed by email):
  // a complex subject, the session (the token) and its user (iss_sub, as
  // the access token's iss and sub name the agent).
  const revoked = verified.find((p) => p.events[SESSION_REVOKED]);
  assert.deepEqual(revoked.sub_id, {
    format: 'complex',
    session: { format: 'opaque', id: jti },
    user: { format: 'iss_sub', iss: server.issuer, sub: agent.id },
  });
  assert.equal(revoked.events[SESSION_REVOKED].initiating_entity, 'admin');
  assert.ok(revoked.events[SESSION_REVOKED].reason_admin.en.length > 0);
  const verification = verified.find((p) => p.events[VERIFICATION]);
  assert.deepEqual(verification.events[VERIFICATION], { state: 'interop-state' });
  assert.deepEqual(verification.sub_id, { format: 'opaque', id: stream.stream_id });

  // Unacknowledged SETs come back; acknowledged ones do not.
  const again = await call(reader, 'POST', stream.delivery.endpoint_url, {});
  assert.deepEqual(Object.keys(again.body.sets).sort(), sets.map(([j]) => j).sort());
  const acked = await call(reader, 'POST', stream.delivery.endpoint_url, {
    ack: sets.map(([j]) => j),
    returnImmediately: true,
  });
  assert.deepEqual(acked.body, { sets: {}, moreAvailable: false });
  // Added back (200); a second verification within min_verification_interval is refused (429).
  const added = await call(token, 'POST', cfg.add_subject_endpoint, otherSubject);
  assert.equal(added.status, 200, JSON.stringify(added.body));
  // Alice added back by email: the revocation of her next token (RFC 7009,
  // by the agent holding it) arrives, naming her by iss_sub.
  const addedBack = await call(token, 'POST', cfg.add_subject_endpoint, email);
  assert.equal(addedBack.status, 200, JSON.stringify(addedBack.body));
  const hers = await granted(as, third);
  const thirdClient = { client_id: third.id };
  const thirdAuth = oauth.PrivateKeyJwt({ key: third.key.privateKey, kid: third.key.kid });
  const hint = { ...opts, additionalParameters: { token_type_hint: 'access_token' } };
  await oauth.processRevocationResponse(await oauth.revocationRequest(as, thirdClient, thirdAuth, hers, hint));
  const afterAdd = await call(reader, 'POST', stream.delivery.endpoint_url, { returnImmediately: true });
  const [[, hersSet]] = Object.entries(afterAdd.body.sets);
  const { payload: hersPayload } = await jose.jwtVerify(hersSet, jwks, {
    issuer: server.issuer,
    audience: RS,
    typ: 'secevent+jwt',
  });
  assert.deepEqual(hersPayload.sub_id, {
    format: 'complex',
    session: { format: 'opaque', id: claims(hers).jti },
    user: { format: 'iss_sub', iss: server.issuer, sub: alice.id },
  });
  assert.equal(hersPayload.events[SESSION_REVOKED].initiating_entity, 'user');
  assert.equal(Object.keys(afterAdd.body.sets).length, 1, JSON.stringify(afterAdd.body));
  const tooSoon = await fetch(cfg.verification_endpoint, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ stream_id: stream.stream_id }),
  });
  assert.equal(tooSoon.status, 429);
  assert.ok(Number(tooSoon.headers.get('retry-after')) >= 1);

  // Delete.
  const deleted = await fetch(`${cfg.configuration_endpoint}?stream_id=${stream.stream_id}`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${token}` },
  });
  assert.equal(deleted.status, 204);
  const gone = await call(token, 'GET', `${cfg.configuration_endpoint}?stream_id=${stream.stream_id}`);
  assert.equal(gone.status, 404);
}

test('SETs signed with the token key (EdDSA) verify with jose', async () => {
  await run([], 'EdDSA');
});

test('SETs signed under --ssf-signing-alg RS256 verify with jose', async () => {
  await run(['--ssf-signing-alg', 'RS256'], 'RS256');
});
