// Mandate's RFC 8414 metadata as oauth4webapi reads it, without and with
// trusted issuers: the jwt-bearer grant in `grant_types_supported` and the
// ID-JAG profile in `authorization_grant_profiles_supported`
// (draft-ietf-oauth-identity-assertion-authz-grant), and `mandate serve`
// taking `--trusted-issuer` tables (issue 15 §3, §4; DESIGN §10).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as oauth from 'oauth4webapi';
import { ID_JAG_PROFILE, JWT_BEARER, opts, startIssuer, startServer, trustedIssuer } from '../lib.mjs';

let plain, fed, idp;

before(async () => {
  idp = await startIssuer();
  plain = await startServer();
});

after(async () => {
  await plain?.stop();
  await fed?.stop();
  await idp?.stop();
});

test('the harness: a plain mandate serve, discovered by oauth4webapi', async () => {
  const as = await plain.discover();
  assert.equal(as.issuer, plain.issuer);
  assert.equal(as.token_endpoint, plain.tokenEndpoint);
  assert.ok(as.jwks_uri, 'jwks_uri');
  assert.ok(as.token_endpoint_auth_methods_supported.includes('private_key_jwt'));
});

test('mandate serve takes repeatable --trusted-issuer tables (jwks_uri, resolve_by_email optional)', async () => {
  fed = await startServer({
    args: [
      ...trustedIssuer(idp, ['workload', 'id-jag']),
      ...trustedIssuer('http://127.0.0.1:9', ['id-jag'], {
        jwks_uri: 'http://127.0.0.1:9/keys',
        resolve_by_email: true,
      }),
    ],
  });
  // An issuer that does not answer (port 9 is closed) does not stop the
  // server from starting: it is fetched when one of its JWTs arrives.
  assert.equal((await fetch(`${fed.url}/readyz`)).status, 200);
});

test('with trusted issuers, the jwt-bearer grant and the ID-JAG profile are advertised', async () => {
  assert.ok(fed, 'the server with trusted issuers did not start (previous test)');
  const issuer = new URL(fed.issuer);
  const r = await oauth.discoveryRequest(issuer, opts({ algorithm: 'oauth2' }));
  const as = await oauth.processDiscoveryResponse(issuer, r);
  assert.ok(as.grant_types_supported.includes(JWT_BEARER), `grant_types_supported: ${as.grant_types_supported}`);
  assert.deepEqual(as.authorization_grant_profiles_supported, [ID_JAG_PROFILE]);
  assert.ok(as.token_endpoint_auth_methods_supported.includes('private_key_jwt'));
});

test('a --trusted-issuer with an unknown use is refused at start-up', async () => {
  await assert.rejects(startServer({ args: trustedIssuer(idp, ['everything']) }), (e) => {
    assert.match(e.message, /did not become ready/);
    // Refused for the table, not because the flag is unknown.
    assert.doesNotMatch(e.message, /unexpected argument/);
    assert.match(e.message.split('\n').slice(2).join('\n'), /everything|use/);
    return true;
  });
});
