// openid-client v6 (panva, built on oauth4webapi), unmodified, against a
// real `mandate serve`: discovery of an OAuth-only server, client_credentials
// with PrivateKeyJwt (and DPoP), the authorization code flow built by
// buildAuthorizationUrl with the consent clicked in Chromium and redeemed by
// authorizationCodeGrant, refreshTokenGrant, tokenIntrospection,
// tokenRevocation, and CIBA (initiateBackchannelAuthentication and the
// library's own poller).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as client from 'openid-client';
import {
  CAL,
  claims,
  consent,
  createAgent,
  launchBrowser,
  newKey,
  hasServeFlag,
  recorder,
  redirectTarget,
  seed,
  startServer,
  within,
} from '../lib.mjs';

let server, browser, target, alice, agent, key, config;
const rec = recorder();

async function traced(fn, n = 2) {
  try {
    return await fn();
  } catch (e) {
    e.message += `\n--- last exchanges ---\n${rec.last(n)}`;
    throw e;
  }
}

/** `discovery()` as an OAuth 2.0 server (RFC 8414), http allowed, every exchange recorded. */
function discover(extra = {}) {
  return client.discovery(
    new URL(server.issuer),
    agent.id,
    undefined,
    client.PrivateKeyJwt({ key: key.privateKey, kid: key.kid }),
    { algorithm: 'oauth2', execute: [client.allowInsecureRequests], [client.customFetch]: rec.fetch, ...extra },
  );
}

before(async () => {
  server = await startServer();
  target = await redirectTarget();
  ({ alice } = await seed(server));
  key = await newKey('Ed25519');
  agent = await createAgent(server, {
    name: 'openid-client agent',
    owner: alice.id,
    description: 'drives Mandate with openid-client',
    keys: [key],
    redirect_uris: [target.uri],
  });
  config = await discover();
  browser = await launchBrowser();
});

after(async () => {
  await within(browser?.close().catch(() => {}), 10_000);
  await target?.close();
  await server?.stop();
});

test("discovery(): the default (OpenID) fails on an OAuth-only server; algorithm 'oauth2' works", async () => {
  // The default discovery asks for /.well-known/openid-configuration only,
  // with no fallback to RFC 8414's document; Mandate serves only the latter.
  await assert.rejects(
    client.discovery(new URL(server.issuer), agent.id, undefined, client.None(), {
      execute: [client.allowInsecureRequests],
      [client.customFetch]: rec.fetch,
    }),
    (e) => {
      assert.equal(rec.log.at(-1).url, `${server.issuer}/.well-known/openid-configuration`);
      assert.equal(rec.log.at(-1).status, 404);
      return e.code === 'OAUTH_RESPONSE_IS_NOT_CONFORM';
    },
  );
  // A full well-known URL is used as is.
  const byUrl = await client.discovery(
    new URL(`${server.issuer}/.well-known/oauth-authorization-server`),
    agent.id,
    undefined,
    client.None(),
    { execute: [client.allowInsecureRequests] },
  );
  assert.equal(byUrl.serverMetadata().issuer, server.issuer);
  const m = config.serverMetadata();
  assert.equal(m.issuer, server.issuer);
  assert.equal(m.token_endpoint, `${server.issuer}/oauth/token`);
  assert.equal(m.backchannel_authentication_endpoint, `${server.issuer}/oauth/bc-authorize`);
  assert.ok(m.supportsPKCE('S256'));
});

test('clientCredentialsGrant with PrivateKeyJwt, with and without scope', async () => {
  const t = await traced(() => client.clientCredentialsGrant(config, { resource: CAL, scope: 'read' }));
  assert.equal(t.token_type, 'bearer');
  assert.equal(t.scope, 'read');
  assert.ok(t.expiresIn() > 0);
  const c = claims(t.access_token);
  assert.equal(c.sub, agent.id);
  assert.equal(c.aud, CAL);
  // Without scope: every scope policy lets the agent hold (write's
  // @approval is asked at each action).
  const noScope = await traced(() => client.clientCredentialsGrant(config, { resource: CAL }));
  assert.equal(noScope.scope, 'read write');
  // Without resource: Mandate answers invalid_target, which the library raises.
  await assert.rejects(client.clientCredentialsGrant(config, { scope: 'read' }), (e) => {
    assert.ok(e instanceof client.ResponseBodyError, `${e}`);
    assert.equal(e.error, 'invalid_target');
    return true;
  });
});

test('clientCredentialsGrant bound to a DPoP key (getDPoPHandle)', async () => {
  const dpop = client.getDPoPHandle(config, await client.randomDPoPKeyPair('ES256'));
  const t = await traced(() => client.clientCredentialsGrant(config, { resource: CAL, scope: 'read' }, { DPoP: dpop }));
  assert.equal(t.token_type, 'dpop');
  assert.ok(claims(t.access_token).cnf?.jkt);
  assert.ok(rec.log.at(-1).headers.dpop, 'no DPoP header was sent');
});

test('authorization code: buildAuthorizationUrl, consent in Chromium, authorizationCodeGrant, refreshTokenGrant, introspection, revocation', async () => {
  const verifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: target.uri,
    scope: 'read offline_access',
    resource: CAL,
    state,
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
  });
  assert.equal(url.origin + url.pathname, `${server.issuer}/oauth/authorize`);
  const landed = await consent(browser, url.href, alice, { until: target.uri });
  assert.equal(landed.searchParams.get('iss'), server.issuer);

  const t = await traced(() =>
    client.authorizationCodeGrant(config, landed, { pkceCodeVerifier: verifier, expectedState: state }, { resource: CAL }),
  );
  assert.equal(t.token_type, 'bearer');
  assert.ok(t.refresh_token, 'offline_access asked for, no refresh token');
  const c = claims(t.access_token);
  assert.equal(c.sub, alice.id);
  assert.equal(c.act?.sub, agent.id);
  assert.equal(c.aud, CAL);
  assert.equal(c.scope, 'read');

  const t2 = await traced(() => client.refreshTokenGrant(config, t.refresh_token, { resource: CAL }));
  assert.ok(t2.access_token);
  assert.ok(t2.refresh_token);
  assert.notEqual(t2.refresh_token, t.refresh_token);
  assert.equal(claims(t2.access_token).sub, alice.id);

  const live = await traced(() => client.tokenIntrospection(config, t2.access_token));
  assert.equal(live.active, true);
  assert.equal(live.sub, alice.id);
  assert.equal(live.client_id, agent.id);
  assert.equal(live.act?.sub, agent.id);

  await traced(() => client.tokenRevocation(config, t2.refresh_token, { token_type_hint: 'refresh_token' }));
  const dead = await traced(() => client.tokenIntrospection(config, t2.refresh_token));
  assert.equal(dead.active, false);
  await assert.rejects(client.refreshTokenGrant(config, t2.refresh_token, { resource: CAL }), (e) => e.error === 'invalid_grant');
  await traced(() => client.tokenRevocation(config, t2.access_token));
  assert.equal((await client.tokenIntrospection(config, t2.access_token)).active, false);

  // A wrong state is the library's refusal, before any token request.
  const before = rec.log.length;
  await assert.rejects(
    client.authorizationCodeGrant(config, landed, { pkceCodeVerifier: verifier, expectedState: 'another' }),
    (e) => e.code === 'OAUTH_INVALID_RESPONSE' && /"state"/.test(e.cause?.message),
  );
  assert.equal(rec.log.length, before);
});

test(
  'tokenIntrospection of a live refresh token says active (RFC 7662 §2.1)',
  async () => {
    const verifier = client.randomPKCECodeVerifier();
    const state = client.randomState();
    const url = client.buildAuthorizationUrl(config, {
      redirect_uri: target.uri,
      scope: 'read offline_access',
      resource: CAL,
      state,
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
    });
    const landed = await consent(browser, url.href, alice, { until: target.uri });
    const t = await client.authorizationCodeGrant(config, landed, { pkceCodeVerifier: verifier, expectedState: state }, { resource: CAL });
    assert.ok(t.refresh_token);
    // The refresh token works, so it is live...
    const next = await client.refreshTokenGrant(config, t.refresh_token, { resource: CAL });
    // ...and so is the one it rotated to; introspection should say so.
    const rt = await traced(() => client.tokenIntrospection(config, next.refresh_token, { token_type_hint: 'refresh_token' }));
    assert.equal(rt.active, true, `${JSON.stringify(rt)}\n${rec.last(1)}`);
  },
);

test('CIBA: initiateBackchannelAuthentication and pollBackchannelAuthenticationGrant (self-authorised read)', async () => {
  const req = await traced(() =>
    client.initiateBackchannelAuthentication(config, {
      login_hint: alice.email,
      scope: 'read',
      resource: CAL,
      binding_message: 'Read the week',
    }),
  );
  assert.ok(req.auth_req_id);
  assert.ok(req.interval >= 1);
  const t = await traced(() => client.pollBackchannelAuthenticationGrant(config, req));
  assert.equal(t.token_type, 'bearer');
  const c = claims(t.access_token);
  assert.equal(c.sub, alice.id);
  assert.equal(c.act?.sub, agent.id);
  assert.equal(c.purpose, 'Read the week');
});

test(
  'dynamicClientRegistration (RFC 7591) of a public client, then the code flow with None() and a refresh',
  {
    skip: hasServeFlag('dynamic-registration')
      ? false
      : 'needs dynamic client registration and public clients (DESIGN §9); mandate serve has no --dynamic-registration',
  },
  async () => {
    let dcr = await startServer();
    try {
      const { alice: owner } = await seed(dcr);
      dcr = await dcr.restart(['--dynamic-registration', 'on', '--registration-owner', owner.id]);
      const registered = await traced(() =>
        client.dynamicClientRegistration(
          new URL(dcr.issuer),
          {
            client_name: 'openid-client public client',
            redirect_uris: [target.uri],
            grant_types: ['authorization_code', 'refresh_token'],
            response_types: ['code'],
            token_endpoint_auth_method: 'none',
            application_type: 'native',
          },
          client.None(),
          { algorithm: 'oauth2', execute: [client.allowInsecureRequests], [client.customFetch]: rec.fetch },
        ),
      );
      const meta = registered.clientMetadata();
      assert.ok(meta.client_id);
      assert.equal(meta.client_secret, undefined, 'a public client got a secret');
      const verifier = client.randomPKCECodeVerifier();
      const state = client.randomState();
      const url = client.buildAuthorizationUrl(registered, {
        redirect_uri: target.uri,
        scope: 'read offline_access',
        resource: CAL,
        state,
        code_challenge: await client.calculatePKCECodeChallenge(verifier),
        code_challenge_method: 'S256',
      });
      const landed = await consent(browser, url.href, owner, { until: target.uri });
      const t = await traced(() =>
        client.authorizationCodeGrant(registered, landed, { pkceCodeVerifier: verifier, expectedState: state }, { resource: CAL }),
      );
      const c = claims(t.access_token);
      assert.equal(c.sub, owner.id);
      assert.equal(c.client_id, meta.client_id);
      assert.ok(t.refresh_token, 'offline_access asked for, no refresh token');
      const t2 = await traced(() => client.refreshTokenGrant(registered, t.refresh_token, { resource: CAL }));
      assert.equal(claims(t2.access_token).sub, owner.id);
      // A public client has no credentials: client_credentials is not for it.
      await assert.rejects(client.clientCredentialsGrant(registered, { resource: CAL }), (e) => e instanceof client.ResponseBodyError);
    } finally {
      await dcr.stop();
    }
  },
);
