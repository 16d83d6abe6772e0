#!/usr/bin/env node
// A test token issuer for Mandate's workload identity federation and ID-JAG
// tests: a separate Node process whose keys and JWTs are made by panva's
// `jose`, nothing written for Mandate. It stands for a CI runner's OIDC
// issuer, a Kubernetes API server or an enterprise IdP signing ID-JAGs.
//
//   node issuer.mjs [--exit-with-stdin] [--down]
//
// It listens on 127.0.0.1, on a random port, and prints one JSON line first:
// `{"issuer": "http://127.0.0.1:PORT", "port": PORT, "jwks_uri": …}`.
//
// What Mandate sees (the published side):
//   GET  /.well-known/openid-configuration   {issuer, jwks_uri, …}
//   GET  /jwks                               the current public keys
//        (RS256 2048-bit, ES256, EdDSA/Ed25519), Cache-Control: max-age=300
//
// What the tests drive (the control side, POST with a JSON body):
//   /mint   {claims, header?, alg?, kid?} → {jwt}. `claims` are signed as
//           given (no claim is added: a test sets iss, sub, aud, exp, iat,
//           jti itself, bad ones included). `alg` (default RS256) picks the
//           current key of that algorithm, `kid` any key this issuer ever
//           made (a rotated-out one too). `header` is merged over
//           `{alg, kid}`; a member set to null is left out. `alg: "none"`
//           gives an unsecured JWT (RFC 7519 §6).
//   /rotate {alg?} → {kids}: a new current key for `alg` (default: every
//           algorithm), published at once; the old one leaves the JWKS.
//   /down, /up → discovery and JWKS answer 503 while down (fail-closed tests).
//   /hs256  {claims, header?, secret?} → {jwt}: HS256 keyed with the current
//           RS256 public key, the classic algorithm-confusion attack.
//           `secret`: "pem" (default, the SPKI PEM text), "n" (the modulus
//           bytes) or "jwk" (the public JWK as JSON text).
//   GET /stats → {discovery, jwks, down}: how often Mandate fetched.

import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';
import { SignJWT, UnsecuredJWT, exportJWK, exportSPKI, generateKeyPair } from 'jose';

/** The algorithms this issuer signs with, and how jose makes their keys. */
const ALGS = {
  RS256: { alg: 'RS256', options: { modulusLength: 2048, extractable: true } },
  ES256: { alg: 'ES256', options: { extractable: true } },
  EdDSA: { alg: 'EdDSA', options: { crv: 'Ed25519', extractable: true } },
};

const MAX_BODY = 64 * 1024;
const argv = new Set(process.argv.slice(2));

/** Every key made, by kid; `current` names the one each algorithm signs with. */
const keys = new Map();
const current = {};
const stats = { discovery: 0, jwks: 0 };
let down = argv.has('--down');
let issuer = '';

/** A new key pair for `alg`, with its public JWK; it becomes that algorithm's current key. */
async function newKey(alg) {
  const { privateKey, publicKey } = await generateKeyPair(ALGS[alg].alg, ALGS[alg].options);
  const kid = `${alg.toLowerCase()}-${randomBytes(6).toString('base64url')}`;
  const jwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  const key = { kid, alg, privateKey, publicKey, jwk };
  keys.set(kid, key);
  current[alg] = kid;
  return key;
}

/** The published JWKS: each algorithm's current key only. */
const jwks = () => ({ keys: Object.values(current).map((kid) => keys.get(kid).jwk) });

/** `{alg, kid}` overlaid with the caller's header; null members are dropped. */
function mergeHeader(base, extra = {}) {
  const out = { ...base, ...extra };
  for (const [k, v] of Object.entries(out)) if (v === null) delete out[k];
  return out;
}

/** `/mint`: the claims, signed as asked. */
async function mint({ claims, header, alg = 'RS256', kid }) {
  if (!claims || typeof claims !== 'object') throw new BadRequest('claims must be an object');
  if (alg === 'none') {
    // jose writes `{"alg":"none"}` and an empty signature.
    return { jwt: new UnsecuredJWT(claims).encode() };
  }
  const key = kid ? keys.get(kid) : keys.get(current[alg]);
  if (!key) throw new BadRequest(kid ? `no key ${kid}` : `no algorithm ${alg}`);
  const h = mergeHeader({ alg: key.alg, kid: key.kid }, header);
  return { jwt: await new SignJWT(claims).setProtectedHeader(h).sign(key.privateKey) };
}

/** `/hs256`: the claims MACed with the RSA public key as the secret. */
async function hs256({ claims, header, secret = 'pem' }) {
  if (!claims || typeof claims !== 'object') throw new BadRequest('claims must be an object');
  const rsa = keys.get(current.RS256);
  let bytes;
  if (secret === 'pem') bytes = new TextEncoder().encode(await exportSPKI(rsa.publicKey));
  else if (secret === 'n') bytes = Buffer.from(rsa.jwk.n, 'base64url');
  else if (secret === 'jwk') bytes = new TextEncoder().encode(JSON.stringify(rsa.jwk));
  else throw new BadRequest('secret is pem, n or jwk');
  const h = mergeHeader({ alg: 'HS256', kid: rsa.kid }, header);
  return { jwt: await new SignJWT(claims).setProtectedHeader(h).sign(bytes) };
}

/** `/rotate`: new current keys; the old ones stay usable by kid but unpublished. */
async function rotate({ alg } = {}) {
  if (alg && !ALGS[alg]) throw new BadRequest(`no algorithm ${alg}`);
  for (const a of alg ? [alg] : Object.keys(ALGS)) await newKey(a);
  return { kids: { ...current } };
}

class BadRequest extends Error {}

function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** The request's JSON body (`{}` when empty). */
function readJson(req) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new BadRequest('body too large'));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      try {
        resolve(text ? JSON.parse(text) : {});
      } catch {
        reject(new BadRequest('body is not JSON'));
      }
    });
    req.on('error', reject);
  });
}

const published = {
  '/.well-known/openid-configuration': () => {
    stats.discovery++;
    return {
      issuer,
      jwks_uri: `${issuer}/jwks`,
      response_types_supported: ['id_token'],
      subject_types_supported: ['public'],
      id_token_signing_alg_values_supported: Object.keys(ALGS),
    };
  },
  '/jwks': () => {
    stats.jwks++;
    return jwks();
  },
};

const control = {
  '/mint': mint,
  '/hs256': hs256,
  '/rotate': rotate,
  '/down': () => {
    down = true;
    return { down };
  },
  '/up': () => {
    down = false;
    return { down };
  },
};

const server = createServer(async (req, res) => {
  const path = new URL(req.url, issuer).pathname;
  try {
    if (req.method === 'GET' && published[path]) {
      if (down) {
        if (path === '/jwks') stats.jwks++;
        else stats.discovery++;
        send(res, 503, { error: 'temporarily_unavailable' }, { 'retry-after': '1' });
        return;
      }
      const cache = path === '/jwks' ? { 'cache-control': 'max-age=300' } : {};
      send(res, 200, published[path](), cache);
    } else if (req.method === 'GET' && path === '/stats') {
      send(res, 200, { ...stats, down });
    } else if (req.method === 'POST' && control[path]) {
      send(res, 200, await control[path](await readJson(req)));
    } else {
      send(res, 404, { error: 'not_found' });
    }
  } catch (e) {
    if (e instanceof BadRequest) send(res, 400, { error: e.message });
    else send(res, 500, { error: String(e?.stack || e) });
  }
});

for (const alg of Object.keys(ALGS)) await newKey(alg);
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  issuer = `http://127.0.0.1:${port}`;
  process.stdout.write(`${JSON.stringify({ issuer, port, jwks_uri: `${issuer}/jwks`, kids: current })}\n`);
});

// Started by a test: leave when the test process goes (its pipe closes).
if (argv.has('--exit-with-stdin')) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
