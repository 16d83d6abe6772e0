// Workload identity federation (issue 15 §3, DESIGN §10): agents registered
// with `federated_credentials` and no key of their own authenticate at the
// token endpoint with a JWT from a separately running issuer (issuer.mjs,
// jose), as a CI runner's OIDC token or a Kubernetes service-account token.
// The requests are made by oauth4webapi (`clientCredentialsGrantRequest`
// with a client authentication that sends the workload JWT,
// `genericTokenEndpointRequest` for the jwt-bearer grant); every access
// token is verified with jose against Mandate's JWKS. Each refusal must be
// `invalid_client` (401) at client authentication, `invalid_grant` (400) at
// the jwt-bearer grant, and must issue nothing (no `token.issued` event, no
// grant).
//
// Issuers: A (trusted for workload, most tests), R (trusted, rotated
// mid-test), D (trusted, down from the start: fail closed), F (never
// trusted: a foreign issuer).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as oauth from 'oauth4webapi';
import {
  CAL,
  JWT_BEARER,
  NoClientAuth,
  WorkloadAssertion,
  agentKey,
  assertRefused,
  claims,
  createAgent,
  header,
  now,
  opts,
  randomId,
  scopeList,
  seed,
  sleep,
  startIssuer,
  startServer,
  trustedIssuer,
} from '../lib.mjs';

// The subjects the rules name, in the shapes real issuers use.
const SUB = 'repo:acme/deploy:ref:refs/heads/main'; // GitHub Actions
const SUB_ONCE = 'spiffe://acme.example/ns/batch/sa/once'; // a SPIFFE JWT-SVID
const SUB_WEB = 'repo:acme/web:environment:production';
const SUB_AUD = 'system:serviceaccount:tools:custom-aud';
const PATTERN = 'system:serviceaccount:payments:*'; // Kubernetes
const CUSTOM_AUD = 'https://mandate.acme.example/workloads';

let server, as, A, R, D, F, world;

before(async () => {
  [A, R, D, F] = await Promise.all([startIssuer(), startIssuer(), startIssuer({ down: true }), startIssuer()]);
  server = await startServer({
    args: [...trustedIssuer(A, ['workload']), ...trustedIssuer(R, ['workload']), ...trustedIssuer(D, ['workload'])],
  });
  as = await server.discover();
  const { alice } = await seed(server);
  const agent = (name, rule, more = {}) => createAgent(server, { name, owner: alice.id, federated: [rule], ...more });
  world = {
    alice,
    exact: await agent('deployer', { issuer: A.issuer, subject: SUB }),
    pattern: await agent('payments worker', { issuer: A.issuer, subject_pattern: PATTERN }),
    once: await agent('batch job', { issuer: A.issuer, subject: SUB_ONCE, single_use: true }),
    claimed: await agent('web deployer', {
      issuer: A.issuer,
      subject: SUB_WEB,
      claims: { repository_owner: 'acme', environment: 'production' },
    }),
    aud: await agent('custom audience', { issuer: A.issuer, subject: SUB_AUD, audiences: [CUSTOM_AUD] }),
    rot: await agent('rotating', { issuer: R.issuer, subject: 'rotating-workload' }),
    down: await agent('behind a dead issuer', { issuer: D.issuer, subject: 'down-workload' }),
    patched: await agent('patched', { issuer: A.issuer, subject: 'patch-me-old' }),
    suspended: await agent('suspended', { issuer: A.issuer, subject: 'suspended-workload' }),
    // An agent with a key, no federation: another client_id to confuse with.
    keyed: await createAgent(server, { name: 'keyed', owner: alice.id, key: await agentKey() }),
  };
});

after(async () => {
  await server?.stop();
  await Promise.all([A, R, D, F].map((i) => i?.stop()));
});

/** Workload claims from `iss` for `sub`, good unless `more` says otherwise: aud Mandate, 5 min, a fresh jti. */
const wl = (iss, sub, more = {}) => ({
  iss: iss.issuer,
  sub,
  aud: server.issuer,
  iat: now(),
  exp: now() + 300,
  jti: randomId(),
  ...more,
});

/** client_credentials for the calendar, authenticated by `jwt`, by oauth4webapi; the raw Response. */
function clientCredentials(agent, jwt, { clientId = true, scope = 'read' } = {}) {
  return oauth.clientCredentialsGrantRequest(
    as,
    { client_id: agent.id },
    WorkloadAssertion(jwt, { clientId }),
    { resource: CAL, scope },
    opts(),
  );
}

/** The jwt-bearer grant with `jwt` as the assertion and no client authentication. */
function jwtBearer(jwt, { scope = 'read' } = {}) {
  return oauth.genericTokenEndpointRequest(
    as,
    { client_id: 'unused' },
    NoClientAuth(),
    JWT_BEARER,
    { assertion: jwt, resource: CAL, scope },
    opts(),
  );
}

/** The library's processing of a token answer; a refusal shows Mandate's body. */
async function tokens(response, process = oauth.processClientCredentialsResponse) {
  try {
    return await process(as, { client_id: 'unused' }, response);
  } catch (e) {
    e.message += ` (${response.status}) ${JSON.stringify(e.cause ?? null)}`;
    throw e;
  }
}

/** A token for `agent` itself: verified with jose; sub and client_id the agent, aud the calendar, `scope`. */
async function assertAgentToken(t, agent, scope = 'read') {
  assert.equal(t.token_type.toLowerCase(), 'bearer');
  const p = await server.verifyAccessToken(t.access_token);
  assert.equal(p.sub, agent.id, 'sub is the agent');
  assert.equal(p.client_id, agent.id, 'client_id is the agent');
  assert.deepEqual(scopeList(p.scope), scopeList(scope));
  assert.equal(p.act, undefined, 'no act: the agent acts for itself');
  return p;
}

/** client_credentials with `jwt` for `agent` succeeds with a token for the agent. */
async function accepted(agent, jwt, options) {
  return assertAgentToken(await tokens(await clientCredentials(agent, jwt, options)), agent);
}

/** client_credentials with `jwt` for `agent` is refused (401 invalid_client) and issues nothing. */
async function refused(agent, jwt, options) {
  const before = await server.issued();
  return assertRefused(server, await clientCredentials(agent, jwt, options), {
    error: 'invalid_client',
    status: 401,
    before,
  });
}

// --- accepted ------------------------------------------------------------------

for (const alg of ['RS256', 'ES256', 'EdDSA']) {
  test(`client_credentials authenticated by a workload JWT (${alg}, aud = Mandate's issuer)`, async () => {
    const jwt = await A.mint(wl(A, SUB), { alg });
    assert.equal(header(jwt).alg, alg);
    await accepted(world.exact, jwt);
  });
}

test('client_id may be left out: the rule identifies the agent', async () => {
  await accepted(world.exact, await A.mint(wl(A, SUB)), { clientId: false });
});

test("aud = Mandate's token endpoint is accepted too", async () => {
  await accepted(world.exact, await A.mint(wl(A, SUB, { aud: as.token_endpoint })));
});

test('a workload JWT is reusable within its lifetime when the rule is not single_use', async () => {
  const jwt = await A.mint(wl(A, SUB));
  await accepted(world.exact, jwt);
  await accepted(world.exact, jwt);
});

test('a lifetime of exactly 1 h (exp - iat = 3600) is accepted, with nbf', async () => {
  const t = now();
  await accepted(world.exact, await A.mint(wl(A, SUB, { iat: t, nbf: t, exp: t + 3600 })));
});

test('subject_pattern: a matching subject is accepted', async () => {
  await accepted(world.pattern, await A.mint(wl(A, 'system:serviceaccount:payments:worker')));
});

test('rule claims: every listed claim equal is accepted', async () => {
  const c = wl(A, SUB_WEB, { repository_owner: 'acme', environment: 'production', ref: 'refs/heads/main' });
  await accepted(world.claimed, await A.mint(c));
});

test('rule audiences: a JWT for the listed audience is accepted, one for Mandate is not', async () => {
  await accepted(world.aud, await A.mint(wl(A, SUB_AUD, { aud: CUSTOM_AUD })));
  await accepted(world.aud, await A.mint(wl(A, SUB_AUD, { aud: [CUSTOM_AUD] })));
  await refused(world.aud, await A.mint(wl(A, SUB_AUD)));
});

test('single_use: the first use is accepted, a replay of the same jti is refused', async () => {
  const jwt = await A.mint(wl(A, SUB_ONCE));
  await accepted(world.once, jwt);
  await refused(world.once, jwt);
  // Another JWT with the same jti (same issuer) is a replay as well.
  const again = await A.mint(wl(A, SUB_ONCE, { jti: claims(jwt).jti }));
  await refused(world.once, again);
  // A fresh jti is fine.
  await accepted(world.once, await A.mint(wl(A, SUB_ONCE)));
});

// --- refused: who -------------------------------------------------------------------

test('a wrong sub is refused', async () => {
  await refused(world.exact, await A.mint(wl(A, 'repo:acme/deploy:ref:refs/heads/evil')));
  await refused(world.exact, await A.mint(wl(A, 'repo:acme/deploy:ref:refs/heads/main-evil')));
  await refused(world.exact, await A.mint(wl(A, SUB.toUpperCase())));
});

test('subject_pattern: a subject outside the pattern is refused', async () => {
  await refused(world.pattern, await A.mint(wl(A, 'system:serviceaccount:billing:worker')));
  await refused(world.pattern, await A.mint(wl(A, 'system:serviceaccount:payments')));
  await refused(world.pattern, await A.mint(wl(A, 'x-system:serviceaccount:payments:worker')));
});

test('rule claims: a different or missing claim value is refused', async () => {
  await refused(world.claimed, await A.mint(wl(A, SUB_WEB, { repository_owner: 'acme', environment: 'staging' })));
  await refused(world.claimed, await A.mint(wl(A, SUB_WEB, { repository_owner: 'acme' })));
  await refused(world.claimed, await A.mint(wl(A, SUB_WEB, { repository_owner: 'acme', environment: ['production'] })));
});

test('a foreign issuer (never trusted) is refused, also when it claims a trusted iss', async () => {
  await refused(world.exact, await F.mint(wl(F, SUB)));
  // F's key, A's name: the signature does not verify with A's keys.
  await refused(world.exact, await F.mint(wl(A, SUB)));
  assert.deepEqual(await F.stats(), { discovery: 0, jwks: 0, down: false }, 'an untrusted issuer is never fetched');
});

test('client_id naming another agent than the rule does is refused', async () => {
  await refused(world.keyed, await A.mint(wl(A, SUB)));
});

test('a suspended agent cannot authenticate with its workload JWT', async () => {
  await accepted(world.suspended, await A.mint(wl(A, 'suspended-workload')));
  await server.adminOk('POST', `/v1/agents/${world.suspended.id}/suspend`);
  await refused(world.suspended, await A.mint(wl(A, 'suspended-workload')));
});

test('PATCH /v1/agents/{id} federated_credentials replaces the rules', async () => {
  await accepted(world.patched, await A.mint(wl(A, 'patch-me-old')));
  await server.adminOk('PATCH', `/v1/agents/${world.patched.id}`, {
    federated_credentials: [{ issuer: A.issuer, subject: 'patch-me-new' }],
  });
  await refused(world.patched, await A.mint(wl(A, 'patch-me-old')));
  await accepted(world.patched, await A.mint(wl(A, 'patch-me-new')));
});

// --- refused: when and for whom ---------------------------------------------------

test('an expired JWT is refused', async () => {
  await refused(world.exact, await A.mint(wl(A, SUB, { iat: now() - 600, exp: now() - 300 })));
});

test('a lifetime over 1 h is refused', async () => {
  const t = now();
  await refused(world.exact, await A.mint(wl(A, SUB, { iat: t, exp: t + 7200 })));
  await refused(world.exact, await A.mint(wl(A, SUB, { iat: t, exp: t + 3900 })));
});

test('a JWT without exp, or not yet valid (nbf or iat in the future), is refused', async () => {
  const noExp = wl(A, SUB);
  delete noExp.exp;
  await refused(world.exact, await A.mint(noExp));
  await refused(world.exact, await A.mint(wl(A, SUB, { nbf: now() + 600, exp: now() + 900 })));
  await refused(world.exact, await A.mint(wl(A, SUB, { iat: now() + 600, exp: now() + 900 })));
});

test('an aud for another service is refused', async () => {
  await refused(world.exact, await A.mint(wl(A, SUB, { aud: 'https://other-service.example' })));
  await refused(world.exact, await A.mint(wl(A, SUB, { aud: `${server.issuer}/other` })));
});

// --- refused: signatures -----------------------------------------------------------

test("HS256 keyed with the issuer's RSA public key (algorithm confusion) is refused", async () => {
  for (const secret of ['pem', 'n', 'jwk']) await refused(world.exact, await A.hs256(wl(A, SUB), { secret }));
});

test('alg none is refused', async () => {
  await refused(world.exact, await A.mint(wl(A, SUB), { alg: 'none' }));
});

test("an alg that does not match the key is refused (RS256 under the ES256 key's kid)", async () => {
  await refused(world.exact, await A.mint(wl(A, SUB), { alg: 'RS256', header: { kid: A.kids.ES256 } }));
});

test('a tampered payload (signature no longer matches) is refused', async () => {
  const jwt = await A.mint(wl(A, 'repo:acme/deploy:ref:refs/heads/evil'));
  const [h, , s] = jwt.split('.');
  const forged = Buffer.from(JSON.stringify(wl(A, SUB))).toString('base64url');
  await refused(world.exact, `${h}.${forged}.${s}`);
});

// --- keys: caching, rotation, an issuer that is down ---------------------------------

test('the JWKS is cached: the issuer down after a first use does not stop a known key', async () => {
  await accepted(world.exact, await A.mint(wl(A, SUB)));
  await A.down();
  try {
    await accepted(world.exact, await A.mint(wl(A, SUB), { alg: 'ES256' }));
  } finally {
    await A.up();
  }
});

test('key rotated mid-test: a new kid makes Mandate re-fetch the JWKS; the old key stops working', async (t) => {
  await accepted(world.rot, await R.mint(wl(R, 'rotating-workload')));
  const firstUse = Date.now();
  const old = { ...R.kids };
  await R.rotate();
  const fresh = () => R.mint(wl(R, 'rotating-workload'));
  const r = await clientCredentials(world.rot, await fresh());
  if (r.status !== 200) {
    // DESIGN §10 allows one unknown-kid re-fetch per 60 s; if the window
    // counts from the first fetch, the new key is known once it has passed.
    t.diagnostic(`refused right after the rotation (${r.status}); retrying once 61 s after the first fetch`);
    await sleep(Math.max(0, firstUse + 61_000 - Date.now()));
    await accepted(world.rot, await fresh());
  } else {
    await assertAgentToken(await tokens(r), world.rot);
  }
  // The re-fetch brought every new key.
  await accepted(world.rot, await R.mint(wl(R, 'rotating-workload'), { alg: 'ES256' }));
  await accepted(world.rot, await R.mint(wl(R, 'rotating-workload'), { alg: 'EdDSA' }));
  // The rotated-out key is no longer in the JWKS Mandate holds.
  await refused(world.rot, await R.mint(wl(R, 'rotating-workload'), { kid: old.RS256 }));
  // Unknown kids do not make Mandate hammer the issuer: at most one more fetch.
  const s0 = await R.stats();
  for (let i = 0; i < 3; i++) {
    await refused(world.rot, await R.mint(wl(R, 'rotating-workload'), { header: { kid: `unknown-${i}` } }));
  }
  const s1 = await R.stats();
  assert.ok(s1.jwks - s0.jwks <= 1, `JWKS fetched ${s1.jwks - s0.jwks} times for 3 unknown kids`);
});

test('an issuer whose discovery and JWKS are unreachable, nothing cached: fail closed, nothing issued', async () => {
  const before = await server.issued();
  const r = await clientCredentials(world.down, await D.mint(wl(D, 'down-workload')));
  assert.ok([400, 401, 403, 503].includes(r.status), `status ${r.status}`);
  await assertRefused(server, r, {
    status: r.status,
    error: ['invalid_client', 'temporarily_unavailable', 'server_error', 'invalid_request'],
    before,
  });
  const s = await D.stats();
  assert.ok(s.discovery + s.jwks > 0, 'Mandate tried to fetch the keys (the rule matched)');
  // The jwt-bearer grant as well.
  const again = await jwtBearer(await D.mint(wl(D, 'down-workload')));
  assert.ok([400, 401, 403, 503].includes(again.status), `status ${again.status}`);
  await assertRefused(server, again, {
    status: again.status,
    error: ['invalid_grant', 'temporarily_unavailable', 'server_error', 'invalid_request'],
    before,
  });
});

// --- the jwt-bearer grant with a workload JWT -------------------------------------------

test('jwt-bearer grant with a workload JWT as assertion, no client authentication: sub = the agent', async () => {
  const t = await tokens(await jwtBearer(await A.mint(wl(A, SUB))), oauth.processGenericTokenEndpointResponse);
  await assertAgentToken(t, world.exact);
  assert.equal(t.refresh_token, undefined, 'no refresh token');
  // Through a pattern rule too, signed ES256.
  const p = await tokens(
    await jwtBearer(await A.mint(wl(A, 'system:serviceaccount:payments:api'), { alg: 'ES256' })),
    oauth.processGenericTokenEndpointResponse,
  );
  await assertAgentToken(p, world.pattern);
});

test('jwt-bearer grant with a bad workload JWT: invalid_grant, nothing issued', async () => {
  const bad = [
    await A.mint(wl(A, 'repo:acme/deploy:ref:refs/heads/evil')), // no rule
    await A.mint(wl(A, SUB, { iat: now() - 600, exp: now() - 300 })), // expired
    await A.mint(wl(A, SUB, { aud: 'https://other-service.example' })), // another audience
    await F.mint(wl(F, SUB)), // untrusted issuer
    await A.hs256(wl(A, SUB)), // algorithm confusion
    await A.mint(wl(A, SUB), { alg: 'none' }),
  ];
  for (const jwt of bad) {
    const before = await server.issued();
    await assertRefused(server, await jwtBearer(jwt), { error: 'invalid_grant', status: 400, before });
  }
  // A single_use JWT used once as a client assertion is spent for the grant too.
  const once = await A.mint(wl(A, SUB_ONCE));
  await accepted(world.once, once);
  const before = await server.issued();
  await assertRefused(server, await jwtBearer(once), { error: 'invalid_grant', status: 400, before });
});
