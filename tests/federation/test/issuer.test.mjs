// The test issuer (issuer.mjs) checked on its own, with jose as the
// verifier: if these fail, a failure in the Mandate tests says nothing
// about Mandate. Its discovery document and JWKS, tokens of every
// algorithm verifying against the published keys, exact claims, header
// overrides, rotation, the 503 switch, and the two attack tokens (HS256
// keyed with the RSA public key, `alg: none`) being what they claim to be.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createLocalJWKSet, createRemoteJWKSet, exportSPKI, importJWK, jwtVerify, UnsecuredJWT } from 'jose';
import { claims, header, now, randomId, startIssuer } from '../lib.mjs';

let iss;

before(async () => {
  iss = await startIssuer();
});

after(async () => {
  await iss?.stop();
});

/** A token's claims as a test sets them. */
const sample = (more = {}) => ({
  iss: iss.issuer,
  sub: 'repo:acme/deploy:ref:refs/heads/main',
  aud: 'https://mandate.example',
  iat: now(),
  exp: now() + 300,
  jti: randomId(),
  ...more,
});

test('discovery names the issuer and its JWKS; the JWKS holds RS256 2048, ES256, EdDSA keys, cacheable 300 s', async () => {
  const d = await (await fetch(`${iss.url}/.well-known/openid-configuration`)).json();
  assert.equal(d.issuer, iss.issuer);
  assert.match(iss.issuer, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.equal(d.jwks_uri, `${iss.issuer}/jwks`);
  const r = await fetch(d.jwks_uri);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('cache-control'), 'max-age=300');
  const { keys } = await r.json();
  const by = Object.fromEntries(keys.map((k) => [k.alg, k]));
  assert.deepEqual(Object.keys(by).sort(), ['ES256', 'EdDSA', 'RS256']);
  assert.equal(by.RS256.kty, 'RSA');
  assert.equal(Buffer.from(by.RS256.n, 'base64url').length, 256, 'RSA 2048-bit');
  assert.equal(by.ES256.crv, 'P-256');
  assert.equal(by.EdDSA.crv, 'Ed25519');
  for (const k of keys) {
    assert.equal(k.d, undefined, 'no private part published');
    assert.equal(k.kid, iss.kids[k.alg]);
  }
});

for (const alg of ['RS256', 'ES256', 'EdDSA']) {
  test(`${alg}: a minted token verifies with jose against the published JWKS, claims exactly as given`, async () => {
    const c = sample();
    const jwt = await iss.mint(c, { alg });
    assert.deepEqual(header(jwt), { alg, kid: iss.kids[alg] });
    const jwks = createRemoteJWKSet(new URL(iss.jwksUri));
    const { payload } = await jwtVerify(jwt, jwks, { issuer: iss.issuer, audience: c.aud });
    assert.deepEqual(payload, c, 'nothing added, nothing dropped');
  });
}

test('header members merge over {alg, kid}; null leaves one out', async () => {
  const jwt = await iss.mint(sample(), { alg: 'ES256', header: { typ: 'oauth-id-jag+jwt' } });
  assert.deepEqual(header(jwt), { alg: 'ES256', kid: iss.kids.ES256, typ: 'oauth-id-jag+jwt' });
  const nokid = await iss.mint(sample(), { header: { kid: null } });
  assert.deepEqual(header(nokid), { alg: 'RS256' });
  // Bad claims are signed as given: the issuer checks nothing.
  const bad = await iss.mint({ exp: 'tomorrow', aud: ['a', 'b'] });
  assert.deepEqual(claims(bad), { exp: 'tomorrow', aud: ['a', 'b'] });
});

test('rotate: new kids published, old ones gone, still signable by kid', async () => {
  const old = { ...iss.kids };
  const before = await iss.mint(sample(), { alg: 'RS256' });
  const kids = await iss.rotate();
  for (const alg of ['RS256', 'ES256', 'EdDSA']) assert.notEqual(kids[alg], old[alg], alg);
  const published = await iss.jwks();
  assert.deepEqual(published.keys.map((k) => k.kid).sort(), Object.values(kids).sort());
  // A fresh verifier (nothing cached) no longer knows the old key…
  const fresh = createRemoteJWKSet(new URL(iss.jwksUri));
  await assert.rejects(jwtVerify(before, fresh), (e) => e.code === 'ERR_JWKS_NO_MATCHING_KEY');
  // …and does know the new one.
  const after = await iss.mint(sample(), { alg: 'RS256' });
  assert.equal(header(after).kid, kids.RS256);
  await jwtVerify(after, fresh);
  // The rotated-out key can still sign when asked for by kid.
  const stale = await iss.mint(sample(), { kid: old.RS256 });
  assert.equal(header(stale).kid, old.RS256);
  // Only ES256 rotates when asked for.
  const again = await iss.rotate('ES256');
  assert.equal(again.RS256, kids.RS256);
  assert.notEqual(again.ES256, kids.ES256);
});

test('down: discovery and JWKS answer 503 (counted); up: 200 again', async () => {
  const s0 = await iss.stats();
  await iss.down();
  assert.equal((await fetch(`${iss.url}/.well-known/openid-configuration`)).status, 503);
  assert.equal((await fetch(iss.jwksUri)).status, 503);
  // Minting still works while down: a workload holds its token already.
  assert.ok(await iss.mint(sample()));
  const s1 = await iss.stats();
  assert.equal(s1.down, true);
  assert.equal(s1.jwks, s0.jwks + 1);
  assert.equal(s1.discovery, s0.discovery + 1);
  await iss.up();
  assert.equal((await fetch(iss.jwksUri)).status, 200);
  assert.equal((await iss.stats()).down, false);
});

test('HS256 with the RSA public key as the secret: a real HMAC over the PEM, which an RS256 verifier refuses', async () => {
  const c = sample();
  const jwt = await iss.hs256(c);
  assert.deepEqual(header(jwt), { alg: 'HS256', kid: iss.kids.RS256 });
  const rsa = (await iss.jwks()).keys.find((k) => k.alg === 'RS256');
  const pem = await exportSPKI(await importJWK(rsa, 'RS256'));
  // It is what a verifier that takes the key's bytes as an HMAC secret accepts…
  const { payload } = await jwtVerify(jwt, new TextEncoder().encode(pem));
  assert.deepEqual(payload, c);
  // …and what a verifier bound to the key's algorithm refuses.
  await assert.rejects(jwtVerify(jwt, createLocalJWKSet(await iss.jwks())));
  // The other two secrets: the modulus bytes, and the JWK's JSON text.
  const n = await iss.hs256(c, { secret: 'n' });
  await jwtVerify(n, Buffer.from(rsa.n, 'base64url'));
  assert.ok(await iss.hs256(c, { secret: 'jwk' }));
});

test('alg none: an unsecured JWT (empty signature) that a verifier refuses', async () => {
  const c = sample();
  const jwt = await iss.mint(c, { alg: 'none' });
  assert.equal(jwt.split('.')[2], '');
  assert.deepEqual(header(jwt), { alg: 'none' });
  assert.deepEqual(UnsecuredJWT.decode(jwt).payload, c);
  await assert.rejects(jwtVerify(jwt, createLocalJWKSet(await iss.jwks())));
});

test('control API refusals: unknown algorithm or kid, no claims', async () => {
  const post = (path, body) =>
    fetch(`${iss.url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  assert.equal((await post('/mint', { claims: {}, alg: 'PS512' })).status, 400);
  assert.equal((await post('/mint', { claims: {}, kid: 'nope' })).status, 400);
  assert.equal((await post('/mint', {})).status, 400);
  assert.equal((await post('/hs256', { claims: {}, secret: 'x' })).status, 400);
  assert.equal((await fetch(`${iss.url}/nope`)).status, 404);
});
