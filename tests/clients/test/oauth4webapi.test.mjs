// oauth4webapi (panva), unmodified, against a real `mandate serve`: RFC 8414
// discovery, client_credentials with private_key_jwt (Ed25519 and P-256
// keys), DPoP (with the server's nonces), introspection and revocation,
// the authorization code flow with PKCE, `resource` and `offline_access`
// (the consent clicked in Chromium, `iss` checked), and a refresh with
// `resource`. Every access token is also checked by the library's own
// RFC 9068 validator (`validateJwtAccessToken`), as a resource server would.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as oauth from 'oauth4webapi';
import {
  CAL,
  claims,
  consent,
  createAgent,
  launchBrowser,
  newKey,
  freePort,
  hasServeFlag,
  recorder,
  redirectTarget,
  seed,
  startServer,
  within,
} from '../lib.mjs';
import { createServer } from 'node:http';

let server, nonceServer, browser, target, world, as, asNonce;
const rec = recorder();
// Every call: through the recorder, and http:// allowed (a loopback issuer).
const opts = (more = {}) => ({ [oauth.customFetch]: rec.fetch, [oauth.allowInsecureRequests]: true, ...more });

/** Runs `fn`; on failure adds the last exchanges the library made. */
async function traced(fn, n = 2) {
  try {
    return await fn();
  } catch (e) {
    e.message += `\n--- last exchanges ---\n${rec.last(n)}`;
    throw e;
  }
}

async function discover(s) {
  const issuer = new URL(s.issuer);
  const r = await oauth.discoveryRequest(issuer, opts({ algorithm: 'oauth2' }));
  return oauth.processDiscoveryResponse(issuer, r);
}

/** The world on a server: Alice, the calendar, an agent with an Ed25519 and a P-256 key. */
async function populate(s, redirect) {
  const { alice } = await seed(s);
  const ed = await newKey('Ed25519');
  const p256 = await newKey('ES256');
  const agent = await createAgent(s, {
    name: 'oauth4webapi agent',
    owner: alice.id,
    description: 'drives Mandate with oauth4webapi',
    keys: [ed, p256],
    redirect_uris: redirect ? [redirect] : undefined,
  });
  return { alice, agent, ed, p256, client: { client_id: agent.id } };
}

/** A resource server's check of `token`, by the library (RFC 9068, and RFC 9449 with a proof). */
async function rsValidate(asMeta, token, { dpop } = {}) {
  let request;
  await oauth.protectedResourceRequest(token, 'GET', new URL(`${CAL}/events`), undefined, undefined, {
    DPoP: dpop,
    [oauth.allowInsecureRequests]: true,
    // Not sent anywhere: the request the library would send is what the RS receives.
    [oauth.customFetch]: async (url, init) => {
      request = new Request(url, init);
      return new Response('{}', { status: 200, headers: { 'content-type': 'application/json' } });
    },
  });
  return oauth.validateJwtAccessToken(asMeta, request, CAL, opts());
}

before(async () => {
  server = await startServer();
  target = await redirectTarget();
  world = await populate(server, target.uri);
  as = await discover(server);
  browser = await launchBrowser();
});

after(async () => {
  await within(browser?.close().catch(() => {}), 10_000);
  await target?.close();
  await server?.stop();
  await nonceServer?.stop();
});

test('discovery: RFC 8414 metadata with algorithm oauth2; no OpenID document', async () => {
  assert.equal(as.issuer, server.issuer);
  assert.equal(as.token_endpoint, `${server.issuer}/oauth/token`);
  assert.equal(as.authorization_endpoint, `${server.issuer}/oauth/authorize`);
  assert.equal(as.introspection_endpoint, `${server.issuer}/oauth/introspect`);
  assert.equal(as.revocation_endpoint, `${server.issuer}/oauth/revoke`);
  assert.equal(as.authorization_response_iss_parameter_supported, true);
  assert.deepEqual(as.code_challenge_methods_supported, ['S256']);
  assert.ok(as.token_endpoint_auth_methods_supported.includes('private_key_jwt'));
  for (const alg of ['Ed25519', 'ES256']) {
    assert.ok(as.token_endpoint_auth_signing_alg_values_supported.includes(alg), alg);
    assert.ok(as.dpop_signing_alg_values_supported.includes(alg), alg);
  }
  // The library's default is OpenID discovery, which Mandate does not serve
  // (docs/mcp.md): the library does not fall back, it fails.
  const issuer = new URL(server.issuer);
  const oidc = await oauth.discoveryRequest(issuer, opts());
  assert.equal(oidc.status, 404, rec.last());
  await assert.rejects(oauth.processDiscoveryResponse(issuer, oidc), (e) => e.code === oauth.RESPONSE_IS_NOT_CONFORM);
});

for (const alg of ['Ed25519', 'ES256']) {
  test(`client_credentials, PrivateKeyJwt (${alg}), with resource and scope`, async () => {
    const key = alg === 'ES256' ? world.p256 : world.ed;
    const auth = oauth.PrivateKeyJwt({ key: key.privateKey, kid: key.kid });
    const t = await traced(async () => {
      const r = await oauth.clientCredentialsGrantRequest(
        as,
        world.client,
        auth,
        { resource: CAL, scope: 'read' },
        opts(),
      );
      return oauth.processClientCredentialsResponse(as, world.client, r);
    });
    // What the library sent: its own assertion, signed with this key.
    const sent = new URLSearchParams(rec.log.at(-1).body);
    const assertion = sent.get('client_assertion');
    assert.equal(JSON.parse(Buffer.from(assertion.split('.')[0], 'base64url')).alg, alg);
    assert.equal(claims(assertion).aud, server.issuer);
    assert.equal(t.token_type, 'bearer');
    assert.equal(t.scope, 'read');
    assert.ok(t.expires_in > 0);
    const c = claims(t.access_token);
    assert.equal(c.sub, world.agent.id);
    assert.equal(c.client_id, world.agent.id);
    assert.equal(c.aud, CAL);
    const v = await rsValidate(as, t.access_token);
    assert.equal(v.sub, world.agent.id);
  });
}

test('client_credentials without scope: every scope of the resource policy lets the agent hold', async () => {
  const auth = oauth.PrivateKeyJwt({ key: world.ed.privateKey, kid: world.ed.kid });
  const t = await traced(async () => {
    const r = await oauth.clientCredentialsGrantRequest(as, world.client, auth, { resource: CAL }, opts());
    return oauth.processClientCredentialsResponse(as, world.client, r);
  });
  // Agents may list and get (read) and create (write, whose @approval is
  // asked at each action, not at issuance).
  assert.equal(t.scope, 'read write');
  assert.equal(claims(t.access_token).scope, 'read write');
});

test('client_credentials without resource: invalid_target (RFC 8707 §2 lets Mandate require it)', async () => {
  const auth = oauth.PrivateKeyJwt({ key: world.ed.privateKey, kid: world.ed.kid });
  const r = await oauth.clientCredentialsGrantRequest(as, world.client, auth, { scope: 'read' }, opts());
  await assert.rejects(oauth.processClientCredentialsResponse(as, world.client, r), (e) => {
    assert.ok(e instanceof oauth.ResponseBodyError, `${e}`);
    assert.equal(e.status, 400);
    assert.equal(e.error, 'invalid_target');
    return true;
  });
  // Nor without both.
  const r2 = await oauth.clientCredentialsGrantRequest(as, world.client, auth, {}, opts());
  await assert.rejects(oauth.processClientCredentialsResponse(as, world.client, r2), (e) => e.error === 'invalid_target');
});

for (const alg of ['ES256', 'Ed25519']) {
  test(`DPoP-bound client_credentials (${alg} proof key), checked as a resource server would`, async () => {
    const auth = oauth.PrivateKeyJwt({ key: world.ed.privateKey, kid: world.ed.kid });
    const dpop = oauth.DPoP(world.client, await oauth.generateKeyPair(alg));
    const t = await traced(async () => {
      const r = await oauth.clientCredentialsGrantRequest(
        as,
        world.client,
        auth,
        { resource: CAL, scope: 'read' },
        opts({ DPoP: dpop }),
      );
      return oauth.processClientCredentialsResponse(as, world.client, r);
    });
    assert.equal(t.token_type, 'dpop');
    const c = claims(t.access_token);
    assert.ok(c.cnf?.jkt, JSON.stringify(c));
    // The library's RS validator checks the proof, its ath and cnf.jkt.
    const v = await rsValidate(as, t.access_token, { dpop });
    assert.equal(v.cnf.jkt, c.cnf.jkt);
    // Introspection says how the token is bound (RFC 9449 §6.2).
    const ir = await oauth.introspectionRequest(as, world.client, auth, t.access_token, opts());
    const info = await oauth.processIntrospectionResponse(as, world.client, ir);
    assert.equal(info.token_type, 'DPoP');
    assert.equal(info.cnf?.jkt, c.cnf.jkt);
    // Another key's proof does not pass.
    const other = oauth.DPoP(world.client, await oauth.generateKeyPair(alg));
    await assert.rejects(rsValidate(as, t.access_token, { dpop: other }));
  });
}

test('DPoP with server nonces (--dpop-nonces): use_dpop_nonce, then the retry with the nonce', async () => {
  nonceServer = await startServer({ args: ['--dpop-nonces'] });
  const w = await populate(nonceServer);
  asNonce = await discover(nonceServer);
  const auth = oauth.PrivateKeyJwt({ key: w.p256.privateKey, kid: w.p256.kid });
  const dpop = oauth.DPoP(w.client, await oauth.generateKeyPair('ES256'));
  const grant = async () => {
    const r = await oauth.clientCredentialsGrantRequest(
      asNonce,
      w.client,
      auth,
      { resource: CAL, scope: 'read' },
      opts({ DPoP: dpop }),
    );
    return oauth.processClientCredentialsResponse(asNonce, w.client, r);
  };
  let first;
  try {
    await grant();
    assert.fail(`the first proof had no nonce and was accepted:\n${rec.last()}`);
  } catch (e) {
    first = e;
  }
  assert.ok(oauth.isDPoPNonceError(first), `${first}\n${rec.last()}`);
  assert.equal(rec.log.at(-1).status, 400);
  assert.ok(rec.log.at(-1).responseHeaders['dpop-nonce'], 'no DPoP-Nonce header with use_dpop_nonce');
  // The handle kept the nonce: the retry carries it and succeeds.
  const t = await traced(grant);
  assert.equal(t.token_type, 'dpop');
  const proof = rec.log.at(-1).headers.dpop;
  assert.equal(claims(proof).nonce, rec.log.at(-2).responseHeaders['dpop-nonce']);
  assert.ok(claims(t.access_token).cnf?.jkt);
});

test('introspection and revocation with the library (private_key_jwt at both endpoints)', async () => {
  const auth = oauth.PrivateKeyJwt({ key: world.p256.privateKey, kid: world.p256.kid });
  const r = await oauth.clientCredentialsGrantRequest(as, world.client, auth, { resource: CAL, scope: 'read' }, opts());
  const t = await oauth.processClientCredentialsResponse(as, world.client, r);
  const introspect = async () => {
    const ir = await oauth.introspectionRequest(as, world.client, auth, t.access_token, opts());
    return oauth.processIntrospectionResponse(as, world.client, ir);
  };
  const live = await traced(introspect);
  assert.equal(live.active, true, JSON.stringify(live));
  assert.equal(live.sub, world.agent.id);
  assert.equal(live.client_id, world.agent.id);
  assert.equal(live.aud, CAL);
  assert.equal(live.scope, 'read');
  await traced(async () => {
    const rr = await oauth.revocationRequest(as, world.client, auth, t.access_token, opts());
    await oauth.processRevocationResponse(rr);
  });
  const dead = await traced(introspect);
  assert.equal(dead.active, false, JSON.stringify(dead));
  assert.equal((await server.introspect(t.access_token)).active, false);
  // An unknown token: 200 all the same (RFC 7009 §2.2).
  await traced(async () => {
    const rr = await oauth.revocationRequest(as, world.client, auth, 'not-a-token-of-this-server', opts());
    await oauth.processRevocationResponse(rr);
  });
  // token_type_hint is accepted as RFC 7009 §2.1 allows.
  await traced(async () => {
    const rr = await oauth.revocationRequest(
      as,
      world.client,
      auth,
      t.access_token,
      opts({ additionalParameters: { token_type_hint: 'access_token' } }),
    );
    await oauth.processRevocationResponse(rr);
  });
});

test('authorization code + PKCE + resource + offline_access, consent in Chromium, iss checked, refresh with resource', async () => {
  const auth = oauth.PrivateKeyJwt({ key: world.ed.privateKey, kid: world.ed.kid });
  const verifier = oauth.generateRandomCodeVerifier();
  const state = oauth.generateRandomState();
  const url = new URL(as.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: world.agent.id,
    redirect_uri: target.uri,
    scope: 'read offline_access',
    resource: CAL,
    state,
    code_challenge: await oauth.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
  });
  const landed = await consent(browser, url.href, world.alice, { until: target.uri });
  // RFC 9207: the library checks iss against the metadata's issuer.
  const params = oauth.validateAuthResponse(as, world.client, landed, state);
  assert.ok(params.get('code'));
  const forged = new URL(landed);
  forged.searchParams.set('iss', 'https://evil.example');
  assert.throws(() => oauth.validateAuthResponse(as, world.client, forged, state), /unexpected "iss"/);
  const noIss = new URL(landed);
  noIss.searchParams.delete('iss');
  assert.throws(() => oauth.validateAuthResponse(as, world.client, noIss, state), /"iss" \(issuer\) missing/);

  const t = await traced(async () => {
    const r = await oauth.authorizationCodeGrantRequest(
      as,
      world.client,
      auth,
      params,
      target.uri,
      verifier,
      opts({ additionalParameters: { resource: CAL } }),
    );
    return oauth.processAuthorizationCodeResponse(as, world.client, r);
  });
  assert.equal(t.token_type, 'bearer');
  assert.ok(t.refresh_token, 'offline_access asked for, no refresh token');
  assert.ok(t.scope.split(' ').includes('read'), t.scope);
  const c = claims(t.access_token);
  assert.equal(c.sub, world.alice.id);
  assert.equal(c.act?.sub, world.agent.id);
  assert.equal(c.aud, CAL);
  assert.equal((await rsValidate(as, t.access_token)).sub, world.alice.id);

  // Refresh, naming the resource again (RFC 8707 §2.2).
  const t2 = await traced(async () => {
    const r = await oauth.refreshTokenGrantRequest(
      as,
      world.client,
      auth,
      t.refresh_token,
      opts({ additionalParameters: { resource: CAL } }),
    );
    return oauth.processRefreshTokenResponse(as, world.client, r);
  });
  assert.ok(t2.access_token);
  assert.notEqual(t2.refresh_token, t.refresh_token, 'the refresh token did not rotate');
  assert.equal(claims(t2.access_token).sub, world.alice.id);
  assert.equal(claims(t2.access_token).aud, CAL);
  // Another resource at refresh: invalid_target.
  const other = await oauth.refreshTokenGrantRequest(
    as,
    world.client,
    auth,
    t2.refresh_token,
    opts({ additionalParameters: { resource: 'https://elsewhere.example' } }),
  );
  await assert.rejects(oauth.processRefreshTokenResponse(as, world.client, other), (e) => e.error === 'invalid_target');
  // The rotated-out refresh token is refused (and revokes its family).
  const reuse = await oauth.refreshTokenGrantRequest(as, world.client, auth, t.refresh_token, opts());
  await assert.rejects(oauth.processRefreshTokenResponse(as, world.client, reuse), (e) => e.error === 'invalid_grant');
  assert.equal((await server.introspect(t2.access_token)).active, false, 'a reused refresh token left its family live');
});

test('authorization code redeemed with DPoP: bound tokens, the refresh only with the same key', async () => {
  const auth = oauth.PrivateKeyJwt({ key: world.p256.privateKey, kid: world.p256.kid });
  const dpop = oauth.DPoP(world.client, await oauth.generateKeyPair('Ed25519'));
  const verifier = oauth.generateRandomCodeVerifier();
  const state = oauth.generateRandomState();
  const url = new URL(as.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: world.agent.id,
    redirect_uri: target.uri,
    scope: 'read offline_access',
    resource: CAL,
    state,
    code_challenge: await oauth.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
  });
  const landed = await consent(browser, url.href, world.alice, { until: target.uri });
  const params = oauth.validateAuthResponse(as, world.client, landed, state);
  const t = await traced(async () => {
    const r = await oauth.authorizationCodeGrantRequest(as, world.client, auth, params, target.uri, verifier, opts({ DPoP: dpop }));
    return oauth.processAuthorizationCodeResponse(as, world.client, r);
  });
  assert.equal(t.token_type, 'dpop');
  const jkt = claims(t.access_token).cnf?.jkt;
  assert.ok(jkt);
  assert.equal((await rsValidate(as, t.access_token, { dpop })).sub, world.alice.id);
  // Another key cannot use the bound refresh token...
  const thief = oauth.DPoP(world.client, await oauth.generateKeyPair('Ed25519'));
  const stolen = await oauth.refreshTokenGrantRequest(as, world.client, auth, t.refresh_token, opts({ DPoP: thief }));
  await assert.rejects(oauth.processRefreshTokenResponse(as, world.client, stolen), (e) => e instanceof oauth.ResponseBodyError);
  // ...nor can a request without a proof.
  const bare = await oauth.refreshTokenGrantRequest(as, world.client, auth, t.refresh_token, opts());
  await assert.rejects(oauth.processRefreshTokenResponse(as, world.client, bare), (e) => e instanceof oauth.ResponseBodyError);
  // The right key can, and the new token is bound to it again.
  const t2 = await traced(async () => {
    const r = await oauth.refreshTokenGrantRequest(as, world.client, auth, t.refresh_token, opts({ DPoP: dpop }));
    return oauth.processRefreshTokenResponse(as, world.client, r);
  });
  assert.equal(t2.token_type, 'dpop');
  assert.equal(claims(t2.access_token).cnf?.jkt, jkt);
});

const cimdMissing = ['dev-loopback-fetch', 'registration-owner'].filter((f) => !hasServeFlag(f));
test(
  'a public client named by a Client ID Metadata Document: None(), the code flow and a refresh',
  {
    skip:
      cimdMissing.length > 0
        ? `needs Client ID Metadata Documents and public clients (DESIGN §9); mandate serve has no --${cimdMissing.join(', --')}`
        : false,
  },
  async () => {
    // The document, served on loopback (allowed by --dev-loopback-fetch).
    const port = await freePort();
    const clientId = `http://127.0.0.1:${port}/client.json`;
    const doc = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          client_id: clientId,
          client_name: 'oauth4webapi public client',
          redirect_uris: [target.uri],
          grant_types: ['authorization_code', 'refresh_token'],
          response_types: ['code'],
          token_endpoint_auth_method: 'none',
        }),
      );
    });
    await new Promise((r) => doc.listen(port, '127.0.0.1', r));
    let s = await startServer();
    try {
      const { alice: owner } = await seed(s);
      s = await s.restart(['--registration-owner', owner.id, '--dev-loopback-fetch']);
      const asC = await discover(s);
      assert.equal(asC.client_id_metadata_document_supported, true);
      const pub = { client_id: clientId, token_endpoint_auth_method: 'none' };
      const verifier = oauth.generateRandomCodeVerifier();
      const state = oauth.generateRandomState();
      const url = new URL(asC.authorization_endpoint);
      url.search = new URLSearchParams({
        response_type: 'code',
        client_id: clientId,
        redirect_uri: target.uri,
        scope: 'read offline_access',
        resource: CAL,
        state,
        code_challenge: await oauth.calculatePKCECodeChallenge(verifier),
        code_challenge_method: 'S256',
      });
      const landed = await consent(browser, url.href, owner, { until: target.uri });
      const params = oauth.validateAuthResponse(asC, pub, landed, state);
      const t = await traced(async () => {
        const r = await oauth.authorizationCodeGrantRequest(asC, pub, oauth.None(), params, target.uri, verifier, opts({ additionalParameters: { resource: CAL } }));
        return oauth.processAuthorizationCodeResponse(asC, pub, r);
      });
      assert.equal(claims(t.access_token).sub, owner.id);
      assert.ok(t.refresh_token, 'offline_access asked for, no refresh token');
      const t2 = await traced(async () => {
        const r = await oauth.refreshTokenGrantRequest(asC, pub, oauth.None(), t.refresh_token, opts({ additionalParameters: { resource: CAL } }));
        return oauth.processRefreshTokenResponse(asC, pub, r);
      });
      assert.equal(claims(t2.access_token).sub, owner.id);
    } finally {
      await s.stop();
      await new Promise((r) => doc.close(r));
    }
  },
);
