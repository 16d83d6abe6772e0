// Cross-app access with ID-JAG (draft-ietf-oauth-identity-assertion-authz-
// grant; issue 15 §4, DESIGN §10): an enterprise IdP (issuer.mjs, signing
// with jose) issues an Identity Assertion JWT Authorization Grant for a
// person, and an agent redeems it at Mandate with the jwt-bearer grant,
// authenticated by its own key (oauth4webapi's `PrivateKeyJwt`) or by a
// workload JWT. The token must say `sub` = the person, `act.sub` = the
// agent, `aud` = the ID-JAG's resource, the scopes narrowed by the request
// and the agent's ceiling, with no refresh token and a grant approved by
// `idp:<issuer>`. Every check refuses with `invalid_grant` (400) and
// issues nothing (no `token.issued` event, no grant).
//
// Issuers: I (trusted for id-jag, people found by link), E (trusted for
// id-jag with resolve_by_email), W (trusted for workload only), U (never
// trusted).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as oauth from 'oauth4webapi';
import {
  CAL,
  ID_JAG_TYP,
  JWT_BEARER,
  WorkloadAssertion,
  agentKey,
  assertRefused,
  claims,
  createAgent,
  now,
  opts,
  randomId,
  scopeList,
  seed,
  startIssuer,
  startServer,
  trustedIssuer,
} from '../lib.mjs';

const ALICE_SUB = 'idp|00u1alice'; // Alice's subject at IdP I, linked by the admin
const WL_SUB = 'repo:acme/agents:ref:refs/heads/main'; // the workload-authenticated agent

let server, as, I, E, W, U, world;

before(async () => {
  [I, E, W, U] = await Promise.all([startIssuer(), startIssuer(), startIssuer(), startIssuer()]);
  server = await startServer({
    args: [
      ...trustedIssuer(I, ['id-jag']),
      ...trustedIssuer(E, ['id-jag'], { resolve_by_email: true }),
      ...trustedIssuer(W, ['workload']),
    ],
  });
  as = await server.discover();
  const { alice } = await seed(server);
  const person = (name, email) => server.adminOk('POST', '/v1/users', { name, email, groups: ['staff'] });
  const bob = await person('Bob Example', 'bob@example.com');
  const dave = await person('Dave Example', 'dave@example.com');
  // Links made by the admin: Alice and Dave at I. Bob is found by email at E.
  await server.adminOk('PATCH', `/v1/users/${alice.id}`, { links: [{ issuer: I.issuer, sub: ALICE_SUB }] });
  await server.adminOk('PATCH', `/v1/users/${dave.id}`, { links: [{ issuer: I.issuer, sub: 'idp|00u4dave' }] });
  const keyed = async (name, more = {}) =>
    createAgent(server, { name, owner: alice.id, key: await agentKey(), ...more });
  world = {
    alice,
    bob,
    dave,
    planner: await keyed('planner'),
    reader: await keyed('reader', { scopes: ['read'] }),
    other: await keyed('other'),
    ci: await createAgent(server, {
      name: 'ci agent',
      owner: alice.id,
      federated: [{ issuer: W.issuer, subject: WL_SUB }],
    }),
  };
});

after(async () => {
  await server?.stop();
  await Promise.all([I, E, W, U].map((i) => i?.stop()));
});

/** ID-JAG claims from `idp` for Alice, redeemable by the planner, good unless `more` says otherwise. */
const jag = (idp, more = {}) => ({
  iss: idp.issuer,
  sub: ALICE_SUB,
  aud: server.issuer,
  client_id: world.planner.id,
  jti: randomId(),
  iat: now(),
  exp: now() + 300,
  resource: CAL,
  scope: 'read write',
  ...more,
});

/** An ID-JAG: `claims` signed by `idp` with `typ: oauth-id-jag+jwt` (unless `header` says otherwise). */
const mintJag = (idp, c, { alg = 'RS256', header = {} } = {}) =>
  idp.mint(c, { alg, header: { typ: ID_JAG_TYP, ...header } });

/** The agent's own private_key_jwt authentication, by oauth4webapi. */
const keyAuth = (agent) => oauth.PrivateKeyJwt({ key: agent.key.privateKey, kid: agent.key.kid });

/**
 * The jwt-bearer grant with `assertion`, by oauth4webapi, authenticated as
 * `agent` (its key unless `auth`); `scope` and `resource` only if given.
 */
function redeem(agent, assertion, { scope, resource, auth } = {}) {
  const params = { assertion };
  if (scope) params.scope = scope;
  if (resource) params.resource = resource;
  return oauth.genericTokenEndpointRequest(
    as,
    { client_id: agent.id },
    auth ?? keyAuth(agent),
    JWT_BEARER,
    params,
    opts(),
  );
}

/** The library's processing of a token answer; a refusal shows Mandate's body. */
async function tokens(response) {
  try {
    return await oauth.processGenericTokenEndpointResponse(as, { client_id: 'unused' }, response);
  } catch (e) {
    e.message += ` (${response.status}) ${JSON.stringify(e.cause ?? null)}`;
    throw e;
  }
}

/**
 * A delegated token: verified with jose; `sub` the person, `act.sub` the
 * agent, `aud` the calendar, `scope`, no refresh token. Returns its claims.
 */
async function assertDelegated(t, { user, agent, scope }) {
  assert.equal(t.refresh_token, undefined, 'an ID-JAG gives no refresh token');
  const p = await server.verifyAccessToken(t.access_token, CAL);
  assert.equal(p.sub, user.id, 'sub is the person');
  assert.equal(p.act?.sub, agent.id, 'act.sub is the agent');
  assert.equal(p.client_id, agent.id, 'client_id is the agent');
  assert.deepEqual(scopeList(p.scope), scopeList(scope));
  return p;
}

/** The ID-JAG is refused with invalid_grant (400) and nothing is issued. */
async function refused(agent, assertion, options) {
  const before = await server.issued();
  return assertRefused(server, await redeem(agent, assertion, options), {
    error: 'invalid_grant',
    status: 400,
    before,
  });
}

// --- accepted ------------------------------------------------------------------

test('good path: a linked person, private_key_jwt; sub = person, act = agent, no refresh token, a grant by idp:<issuer>', async () => {
  const before = await server.grants({ user: world.alice.id, agent: world.planner.id });
  const t = await tokens(await redeem(world.planner, await mintJag(I, jag(I))));
  const p = await assertDelegated(t, { user: world.alice, agent: world.planner, scope: 'read write' });
  // The grant is in the inventory, named after the IdP.
  const grants = await server.grants({ user: world.alice.id, agent: world.planner.id });
  assert.equal(grants.length, before.length + 1, JSON.stringify(grants));
  const g = grants.find((x) => !before.some((b) => b.id === x.id));
  assert.equal(g.approved_by, `idp:${I.issuer}`);
  assert.equal(g.resource, CAL);
  assert.equal(g.status, 'active');
  assert.deepEqual(scopeList(g.scopes), ['read', 'write']);
  if (p.grant_id !== undefined) assert.equal(p.grant_id, g.id);
  // The token is live, and revoking the grant ends it like any other.
  assert.equal((await server.introspect(t.access_token)).active, true);
  await server.adminOk('POST', `/v1/grants/${g.id}/revoke`);
  assert.equal((await server.introspect(t.access_token)).active, false);
});

test('aud as an array of one, ES256 and EdDSA signatures, resource and scope repeated in the request', async () => {
  for (const alg of ['ES256', 'EdDSA']) {
    const t = await tokens(
      await redeem(world.planner, await mintJag(I, jag(I, { aud: [server.issuer] }), { alg }), {
        resource: CAL,
        scope: 'read write',
      }),
    );
    await assertDelegated(t, { user: world.alice, agent: world.planner, scope: 'read write' });
  }
});

test("a requested scope narrows the ID-JAG's", async () => {
  const t = await tokens(await redeem(world.planner, await mintJag(I, jag(I)), { scope: 'read' }));
  await assertDelegated(t, { user: world.alice, agent: world.planner, scope: 'read' });
});

test("the agent's scope ceiling narrows the ID-JAG's", async () => {
  const c = jag(I, { client_id: world.reader.id });
  const t = await tokens(await redeem(world.reader, await mintJag(I, c)));
  await assertDelegated(t, { user: world.alice, agent: world.reader, scope: 'read' });
  const grants = await server.grants({ user: world.alice.id, agent: world.reader.id });
  assert.ok(
    grants.some((g) => g.approved_by === `idp:${I.issuer}` && scopeList(g.scopes).join() === 'read'),
    JSON.stringify(grants),
  );
});

test('resolve_by_email: an unlinked subject with a verified email finds the person', async () => {
  const c = jag(E, { sub: 'e|bob-7f3a', email: 'bob@example.com', email_verified: true });
  const t = await tokens(await redeem(world.planner, await mintJag(E, c)));
  await assertDelegated(t, { user: world.bob, agent: world.planner, scope: 'read write' });
  const grants = await server.grants({ user: world.bob.id, agent: world.planner.id });
  assert.ok(
    grants.some((g) => g.approved_by === `idp:${E.issuer}`),
    JSON.stringify(grants),
  );
});

test('an agent authenticated by a workload JWT (no key of its own) redeems an ID-JAG', async () => {
  const workload = await W.mint({
    iss: W.issuer,
    sub: WL_SUB,
    aud: server.issuer,
    iat: now(),
    exp: now() + 300,
    jti: randomId(),
  });
  const c = jag(I, { client_id: world.ci.id });
  const t = await tokens(await redeem(world.ci, await mintJag(I, c), { auth: WorkloadAssertion(workload) }));
  await assertDelegated(t, { user: world.alice, agent: world.ci, scope: 'read write' });
});

// --- refused -------------------------------------------------------------------------

test('typ other than oauth-id-jag+jwt, or none, is refused', async () => {
  await refused(world.planner, await mintJag(I, jag(I), { header: { typ: 'JWT' } }));
  await refused(world.planner, await mintJag(I, jag(I), { header: { typ: null } }));
  await refused(world.planner, await mintJag(I, jag(I), { header: { typ: 'at+jwt' } }));
});

test('aud naming another server, or an array of two, is refused', async () => {
  await refused(world.planner, await mintJag(I, jag(I, { aud: 'https://other-as.example' })));
  await refused(world.planner, await mintJag(I, jag(I, { aud: [server.issuer, 'https://other-as.example'] })));
  await refused(world.planner, await mintJag(I, jag(I, { aud: [] })));
});

test('client_id naming another agent, or missing, is refused', async () => {
  await refused(world.planner, await mintJag(I, jag(I, { client_id: world.other.id })));
  const c = jag(I);
  delete c.client_id;
  await refused(world.planner, await mintJag(I, c));
});

test('an expired ID-JAG, or one without exp, is refused', async () => {
  await refused(world.planner, await mintJag(I, jag(I, { iat: now() - 600, exp: now() - 300 })));
  const c = jag(I);
  delete c.exp;
  await refused(world.planner, await mintJag(I, c));
});

test('a replayed ID-JAG (jti already used) is refused', async () => {
  const assertion = await mintJag(I, jag(I));
  await tokens(await redeem(world.planner, assertion));
  await refused(world.planner, assertion);
  // The same jti in a freshly signed ID-JAG is a replay as well.
  await refused(world.planner, await mintJag(I, jag(I, { jti: claims(assertion).jti })));
  // A missing jti cannot be checked: refused.
  const c = jag(I);
  delete c.jti;
  await refused(world.planner, await mintJag(I, c));
});

test('an unknown sub is refused, even with a verified email of a person at an issuer without resolve_by_email', async () => {
  await refused(world.planner, await mintJag(I, jag(I, { sub: 'idp|00u9nobody' })));
  await refused(
    world.planner,
    await mintJag(I, jag(I, { sub: 'idp|00u9nobody', email: 'alice@example.com', email_verified: true })),
  );
});

test('resolve_by_email: an unverified, missing or unknown email is refused', async () => {
  const c = (more) => jag(E, { sub: `e|${randomId(4)}`, ...more });
  await refused(world.planner, await mintJag(E, c({ email: 'bob@example.com', email_verified: false })));
  await refused(world.planner, await mintJag(E, c({ email: 'bob@example.com' })));
  await refused(world.planner, await mintJag(E, c({ email: 'bob@example.com', email_verified: 'true' })));
  await refused(world.planner, await mintJag(E, c({ email: 'nobody@example.com', email_verified: true })));
  await refused(world.planner, await mintJag(E, c({})));
});

test('a disabled person is refused', async () => {
  const c = () => jag(I, { sub: 'idp|00u4dave' });
  await tokens(await redeem(world.planner, await mintJag(I, c())));
  await server.adminOk('PATCH', `/v1/users/${world.dave.id}`, { status: 'disabled' });
  await refused(world.planner, await mintJag(I, c()));
});

test('an untrusted issuer is refused, also when it claims a trusted iss', async () => {
  await refused(world.planner, await mintJag(U, jag(U)));
  await refused(world.planner, await mintJag(U, jag(I)));
  assert.deepEqual(await U.stats(), { discovery: 0, jwks: 0, down: false }, 'an untrusted issuer is never fetched');
});

test('an issuer trusted for workload only cannot issue ID-JAGs', async () => {
  await refused(world.planner, await mintJag(W, jag(W)));
});

test("an unknown resource, or a request for another resource than the ID-JAG's, is refused", async () => {
  await refused(world.planner, await mintJag(I, jag(I, { resource: 'https://unknown.example' })));
  // At the request, `resource` may only repeat the ID-JAG's.
  const before = await server.issued();
  const r = await redeem(world.planner, await mintJag(I, jag(I)), { resource: 'https://unknown.example' });
  await assertRefused(server, r, { error: ['invalid_grant', 'invalid_target'], status: 400, before });
});

test("a requested scope beyond the ID-JAG's is not granted", async () => {
  const before = await server.issued();
  const r = await redeem(world.planner, await mintJag(I, jag(I, { scope: 'read' })), { scope: 'read write' });
  if (r.status === 200) {
    // Narrowed to the ID-JAG's scope…
    await assertDelegated(await tokens(r), { user: world.alice, agent: world.planner, scope: 'read' });
  } else {
    // …or refused outright.
    await assertRefused(server, r, { error: ['invalid_grant', 'invalid_scope'], status: 400, before });
  }
});

test("forged signatures are refused: HS256 with the IdP's public key, alg none, a tampered payload", async () => {
  await refused(world.planner, await I.hs256(jag(I), { header: { typ: ID_JAG_TYP } }));
  await refused(world.planner, await I.mint(jag(I), { alg: 'none' }));
  const jwt = await mintJag(I, jag(I, { scope: 'read' }));
  const [h, , s] = jwt.split('.');
  await refused(world.planner, `${h}.${Buffer.from(JSON.stringify(jag(I))).toString('base64url')}.${s}`);
});

test('an ID-JAG without client authentication, or with a bad one, issues nothing', async () => {
  const none = () => () => {};
  let before = await server.issued();
  await assertRefused(server, await redeem(world.planner, await mintJag(I, jag(I)), { auth: none() }), {
    error: ['invalid_client', 'invalid_grant', 'invalid_request'],
    status: [400, 401],
    before,
  });
  // Signed with another agent's key under the planner's client_id.
  before = await server.issued();
  await assertRefused(server, await redeem(world.planner, await mintJag(I, jag(I)), { auth: keyAuth(world.other) }), {
    error: 'invalid_client',
    status: 401,
    before,
  });
});
