// Helpers for the federation tests: a real `mandate serve` on a random port
// (SQLite, fresh data dir) trusting test issuers, the test issuers
// themselves (issuer.mjs, each a separate Node process signing with jose),
// the admin API to seed Mandate, oauth4webapi client authentications that
// send a workload JWT, and the checks every test repeats: an access token
// verified with jose against Mandate's JWKS, a refusal that issued nothing.
//
// The server start follows tests/clients/lib.mjs; it is copied, not
// imported, so that this package needs only its own node_modules.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { createRemoteJWKSet, exportJWK, generateKeyPair, jwtVerify } from 'jose';
import * as oauth from 'oauth4webapi';

export const MANDATE_BIN = process.env.MANDATE_BIN || '/var/tmp/mandate-target/debug/mandate';
const ISSUER_JS = join(dirname(fileURLToPath(import.meta.url)), 'issuer.mjs');

export const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
export const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
export const ID_JAG_TYP = 'oauth-id-jag+jwt';
export const ID_JAG_PROFILE = 'urn:ietf:params:oauth:grant-profile:id-jag';

/** The calendar API the tests register (never contacted: only its identifier matters). */
export const CAL = 'https://calendar.example';
export const CAL_SCOPES = { read: ['list', 'get'], write: ['create'] };

/**
 * Staff and agents may do everything, without approval: the scopes a token
 * gets are then decided by the federation rules, the ID-JAG, the request
 * and the agent's ceiling, which is what these tests look at.
 */
export const POLICIES = `
permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
permit (principal is Agent, action in [Action::"list", Action::"get", Action::"create"], resource);
`;

export const randomId = (n = 12) => randomBytes(n).toString('base64url');
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Now, in JWT seconds. */
export const now = () => Math.floor(Date.now() / 1000);

/** The claims of a JWT, unverified. */
export function claims(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString('utf8'));
}

/** The protected header of a JWT. */
export function header(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[0], 'base64url').toString('utf8'));
}

/** A TCP port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createNetServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// --- the test issuer ---------------------------------------------------------

/**
 * Starts issuer.mjs as its own process (`--down`: discovery and JWKS answer
 * 503 from the start) and returns a handle on its control API.
 */
export async function startIssuer({ down = false } = {}) {
  const args = [ISSUER_JS, '--exit-with-stdin', ...(down ? ['--down'] : [])];
  const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let errors = '';
  child.stderr.on('data', (d) => (errors += d));
  const lines = createInterface({ input: child.stdout });
  const first = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`the test issuer did not start:\n${errors}`)), 15_000);
    lines.once('line', (l) => {
      clearTimeout(t);
      resolve(l);
    });
    child.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`the test issuer exited (${code}):\n${errors}`));
    });
  });
  return new Issuer(JSON.parse(first), child);
}

/** A running test issuer (issuer.mjs) and its control API. */
export class Issuer {
  constructor({ issuer, jwks_uri: jwksUri, kids }, child) {
    Object.assign(this, { issuer, url: issuer, jwksUri, kids, child });
  }

  async #post(path, body = {}) {
    const r = await fetch(`${this.url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const text = await r.text();
    assert.equal(r.status, 200, `test issuer ${path}: ${r.status} ${text}`);
    return JSON.parse(text);
  }

  /** A JWT of exactly `claims`, signed by the current `alg` key (or key `kid`); `header` merged over `{alg, kid}`. */
  async mint(claims, { alg = 'RS256', header, kid } = {}) {
    return (await this.#post('/mint', { claims, alg, header, kid })).jwt;
  }

  /** `claims` MACed with HS256, the current RS256 public key as the secret (`pem`, `n` or `jwk`). */
  async hs256(claims, { secret = 'pem', header } = {}) {
    return (await this.#post('/hs256', { claims, secret, header })).jwt;
  }

  /** New current keys (for `alg`, or all); returns the current kids by algorithm. */
  async rotate(alg) {
    this.kids = (await this.#post('/rotate', alg ? { alg } : {})).kids;
    return this.kids;
  }

  /** Discovery and JWKS answer 503 until `up()`. */
  down() {
    return this.#post('/down');
  }

  up() {
    return this.#post('/up');
  }

  /** How often discovery and the JWKS were fetched: `{discovery, jwks, down}`. */
  async stats() {
    return (await fetch(`${this.url}/stats`)).json();
  }

  /** The published JWKS. */
  async jwks() {
    return (await fetch(this.jwksUri)).json();
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise((r) => this.child.once('exit', r));
      this.child.kill('SIGTERM');
      await exited;
    }
  }
}

/** A value as TOML (strings, booleans, numbers, arrays, inline tables). */
function toml(v) {
  if (Array.isArray(v)) return `[${v.map(toml).join(', ')}]`;
  if (v !== null && typeof v === 'object') {
    return `{ ${Object.entries(v)
      .map(([k, x]) => `${k} = ${toml(x)}`)
      .join(', ')} }`;
  }
  // A JSON string of plain text is a TOML basic string.
  return typeof v === 'string' ? JSON.stringify(v) : String(v);
}

/**
 * `--trusted-issuer '{ issuer = "…", use = […] , … }'` for `issuer` (an
 * Issuer or a URL), as `mandate serve` arguments.
 */
export function trustedIssuer(issuer, use, extra = {}) {
  return ['--trusted-issuer', toml({ issuer: issuer.issuer ?? issuer, use, ...extra })];
}

// --- mandate serve -------------------------------------------------------------

/**
 * Starts `$MANDATE_BIN serve` on a random port and waits for `/readyz`.
 * `args` are extra flags. Always with `--dev-loopback-fetch`: the test
 * issuers are on loopback http.
 */
export async function startServer({ args = [] } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'mandate-federation-'));
  const adminToken = `mnd_admin_federation_${randomId(24)}`;
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    // Only what the test means: no MANDATE_* from the caller's environment.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MANDATE_')));
    env.MANDATE_ADMIN_TOKEN = adminToken;
    env.RUST_LOG = env.RUST_LOG || 'warn';
    const argv = ['serve', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--dev-loopback-fetch', ...args];
    const child = spawn(MANDATE_BIN, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    let exited = null;
    const exit = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        exited = { code, signal };
        resolve();
      });
      child.once('error', (e) => {
        exited = { error: e };
        resolve();
      });
    });
    const deadline = Date.now() + 60_000;
    let ready = false;
    while (!exited && Date.now() < deadline) {
      try {
        if ((await fetch(`${url}/readyz`)).status === 200) {
          ready = true;
          break;
        }
      } catch {
        // not listening yet
      }
      await sleep(100);
    }
    if (ready) return new Server({ url, adminToken, dataDir, child, exit, logs: () => output });
    child.kill('SIGKILL');
    await exit;
    lastError = new Error(
      `mandate serve did not become ready on ${url} (${JSON.stringify(exited)})\n` +
        `args: ${JSON.stringify(argv)}\n${output}`,
    );
    if (!/address already in use/i.test(output)) break;
  }
  rmSync(dataDir, { recursive: true, force: true });
  throw lastError;
}

/** A running server, the admin calls the tests make on it, and its discovery. */
export class Server {
  constructor({ url, adminToken, dataDir, child, exit, logs }) {
    Object.assign(this, {
      url,
      issuer: url,
      tokenEndpoint: `${url}/oauth/token`,
      adminToken,
      dataDir,
      child,
      exit,
      logs,
    });
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
      await this.exit;
      clearTimeout(t);
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** Any JSON call with the admin token. Returns `{status, body, text}`. */
  async admin(method, path, body) {
    const h = { authorization: `Bearer ${this.adminToken}` };
    if (body !== undefined) h['content-type'] = 'application/json';
    const r = await fetch(`${this.url}${path}`, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      // not JSON
    }
    return { status: r.status, body: json, text };
  }

  /** An admin call that must answer 2xx; returns the JSON body. */
  async adminOk(method, path, body) {
    const r = await this.admin(method, path, body);
    assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${r.text}`);
    return r.body;
  }

  /** Introspects `token` as the admin. */
  async introspect(token) {
    const r = await fetch(`${this.url}/oauth/introspect`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.adminToken}`, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    });
    assert.equal(r.status, 200, `introspect: ${r.status}`);
    return r.json();
  }

  /** The grants, optionally for one user and/or agent: every page. */
  async grants({ user, agent } = {}) {
    const all = [];
    let cursor = null;
    do {
      const q = new URLSearchParams({ limit: '1000' });
      if (user) q.set('user', user);
      if (agent) q.set('agent', agent);
      if (cursor) q.set('cursor', cursor);
      const page = await this.adminOk('GET', `/v1/grants?${q}`);
      all.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor);
    return all;
  }

  /**
   * What Mandate has issued so far: the number of `token.issued` audit
   * events and of grants. A refusal must leave both as they were.
   */
  async issued() {
    const events = await this.adminOk('GET', '/v1/audit?type=token.issued&limit=1000');
    return { tokens: events.events.length, grants: (await this.grants()).length };
  }

  /** RFC 8414 discovery by oauth4webapi (`algorithm: 'oauth2'`, http allowed on loopback). */
  async discover() {
    if (this.as) return this.as;
    const issuer = new URL(this.issuer);
    const r = await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', [oauth.allowInsecureRequests]: true });
    this.as = await oauth.processDiscoveryResponse(issuer, r);
    return this.as;
  }

  /**
   * Verifies an access token with jose against Mandate's published JWKS
   * (RFC 9068: `typ` at+jwt, `iss`, `aud`); returns its claims.
   */
  async verifyAccessToken(token, audience = CAL) {
    const as = await this.discover();
    this.remoteJwks ??= createRemoteJWKSet(new URL(as.jwks_uri));
    const { payload } = await jwtVerify(token, this.remoteJwks, { issuer: this.issuer, audience, typ: 'at+jwt' });
    return payload;
  }
}

/**
 * The tests' world on `server`: the calendar API, the policies and Alice
 * (staff). Returns `{alice}`.
 */
export async function seed(server) {
  await server.adminOk('POST', '/v1/resources', { identifier: CAL, name: 'Calendar', scopes: CAL_SCOPES });
  await server.adminOk('PUT', '/v1/policies', { policies: POLICIES });
  const alice = await server.adminOk('POST', '/v1/users', {
    name: 'Alice Example',
    email: 'alice@example.com',
    groups: ['staff'],
  });
  return { alice };
}

/** An agent key made with jose (Ed25519 by default), with its public JWK. */
export async function agentKey(alg = 'EdDSA') {
  const { privateKey, publicKey } = await generateKeyPair(alg, alg === 'EdDSA' ? { crv: 'Ed25519' } : {});
  const kid = `agent-${randomId(6)}`;
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

/**
 * Registers an agent owned by `owner`: with `federated_credentials` (and no
 * key) or with `key` (from `agentKey`) for private_key_jwt, or both.
 */
export async function createAgent(server, { name, owner, federated, key, scopes }) {
  const body = { name, owner };
  if (federated) body.federated_credentials = federated;
  if (key) body.jwks = { keys: [key.jwk] };
  if (scopes) body.scopes = scopes;
  const a = await server.adminOk('POST', '/v1/agents', body);
  return { id: a.client_id || a.id, record: a, key };
}

// --- token requests ------------------------------------------------------------

/**
 * An oauth4webapi client authentication that sends a workload JWT as the
 * client assertion (RFC 7523 §2.2), with the client's `client_id` unless
 * `clientId` is false. oauth4webapi has no built-in for an assertion made
 * elsewhere; its `ClientAuth` is this function shape.
 */
export function WorkloadAssertion(jwt, { clientId = true } = {}) {
  return (_as, client, body) => {
    if (clientId) body.set('client_id', client.client_id);
    body.set('client_assertion_type', CLIENT_ASSERTION_TYPE);
    body.set('client_assertion', jwt);
  };
}

/** No client authentication at all, not even `client_id` (oauth4webapi's `None()` sends one). */
export const NoClientAuth = () => () => {};

/** The options every oauth4webapi call takes here: http on loopback allowed. */
export const opts = (more = {}) => ({ [oauth.allowInsecureRequests]: true, ...more });

/**
 * The body of a token endpoint answer that is not a success, with its
 * status; raw, so a refusal's exact status and `error` are asserted.
 */
export async function answer(response) {
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: response.status, body, text, headers: response.headers };
}

/**
 * Asserts that `response` is a refusal with `error` (one of, if an array)
 * and `status` (one of, if an array), carries no token, and that Mandate's
 * issued count did not move since `before` (from `server.issued()`).
 */
export async function assertRefused(server, response, { error, status, before }) {
  const a = await answer(response);
  const errors = [error].flat();
  const statuses = [status].flat();
  assert.ok(statuses.includes(a.status), `expected HTTP ${statuses.join(' or ')}, got ${a.status}: ${a.text}`);
  assert.ok(errors.includes(a.body?.error), `expected error ${errors.join(' or ')}, got ${a.text}`);
  assert.equal(a.body?.access_token, undefined, 'a refusal carries no access_token');
  assert.equal(a.body?.refresh_token, undefined, 'a refusal carries no refresh_token');
  if (before) assert.deepEqual(await server.issued(), before, 'a refusal issued nothing (token.issued events, grants)');
  return a;
}

/** Normalizes a scope claim or a grant's scopes (string or array) to a sorted array. */
export function scopeList(v) {
  const list = Array.isArray(v) ? v : String(v ?? '').split(' ');
  return list.filter(Boolean).sort();
}
