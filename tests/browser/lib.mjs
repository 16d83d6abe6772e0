// Helpers for the browser tests: a real `mandate serve` on a random port,
// the admin API, agents that authenticate with private_key_jwt, a headless
// Debian chromium driven by playwright-core, and checks every page must pass.

import { execFileSync, spawn } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

export const MANDATE_BIN = process.env.MANDATE_BIN || '/var/tmp/mandate-target/debug/mandate';

/**
 * A PostgreSQL URL of an existing database: when set, every server runs on a
 * fresh database created beside it (`--database-url`), dropped when the
 * server stops. Unset: embedded SQLite.
 */
export const DATABASE_URL = process.env.BROWSER_DATABASE_URL || '';

/** Creates an empty database beside DATABASE_URL's: its name and URL. */
function freshDatabase() {
  const name = `mandate_browser_${randomBytes(8).toString('hex')}`;
  execFileSync('psql', [DATABASE_URL, '-qAtc', `CREATE DATABASE ${name}`]);
  const url = new URL(DATABASE_URL);
  url.pathname = `/${name}`;
  return { name, url: url.toString() };
}

function dropDatabase(name) {
  execFileSync('psql', [DATABASE_URL, '-qAtc', `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`]);
}
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const SCREENSHOTS = process.env.SCREENSHOTS === '1';
export const SCREENSHOT_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs', 'screenshots');

/** The calendar API the tests register (never contacted: only its identifier matters). */
export const CAL = 'https://calendar.example';
export const CAL_SCOPES = { read: ['list', 'get'], write: ['create'] };

/** The policies of the delegation scenarios (crates/testkit/src/scenarios.rs). */
export const POLICIES = `
// Staff hold every calendar right.
permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
// Agents may read.
permit (principal is Agent, action in [Action::"list", Action::"get"], resource);
// Agents may be granted write, once the user approves the grant.
@approval("user")
permit (principal is Agent, action == Action::"create", resource is Api);
permit (principal is Agent, action == Action::"create", resource is Resource);
// Agents may spawn helpers.
permit (principal is Agent, action == Action::"mandate:spawn", resource);
`;

export const CIBA_GRANT = 'urn:openid:params:grant-type:ciba';
export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

export const b64url = (buf) => Buffer.from(buf).toString('base64url');
export const randomId = (n = 16) => b64url(randomBytes(n));
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

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

/** The claims of a JWT, unverified (the tests verify through the server). */
export function claims(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString('utf8'));
}

/**
 * Starts `$MANDATE_BIN serve` on a fresh data dir and a random port, and
 * waits until `GET /readyz` answers 200. `stop()` kills it and removes the
 * data dir; `logs()` is what it printed (shown when a test fails).
 */
export async function startServer({ args = [] } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'mandate-browser-'));
  const adminToken = `mnd_admin_browser_${randomId(24)}`;
  const database = DATABASE_URL ? freshDatabase() : null;
  if (database) args = ['--database-url', database.url, ...args];
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    // Only what the test means: no MANDATE_* from the caller's environment.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MANDATE_')));
    env.MANDATE_ADMIN_TOKEN = adminToken;
    env.RUST_LOG = env.RUST_LOG || 'warn';
    const child = spawn(MANDATE_BIN, ['serve', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, ...args], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
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
        const r = await fetch(`${url}/readyz`);
        if (r.status === 200) {
          ready = true;
          break;
        }
      } catch {
        // not listening yet
      }
      await sleep(100);
    }
    if (ready) {
      const server = new Server({ url, adminToken, dataDir, database, child, exit, logs: () => output });
      return server;
    }
    child.kill('SIGKILL');
    await exit;
    lastError = new Error(
      `mandate serve did not become ready on ${url} (${JSON.stringify(exited) ?? 'timeout'}):\n${output}`,
    );
    // A port taken in the meantime: try another.
    if (!/address already in use/i.test(output)) break;
  }
  rmSync(dataDir, { recursive: true, force: true });
  if (database) dropDatabase(database.name);
  throw lastError;
}

/** A running server and the calls the tests make on it. */
export class Server {
  constructor({ url, adminToken, dataDir, database, child, exit, logs }) {
    Object.assign(this, { url, issuer: url, adminToken, dataDir, database, child, exit, logs });
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
      await this.exit;
      clearTimeout(t);
    }
    rmSync(this.dataDir, { recursive: true, force: true });
    if (this.database) {
      dropDatabase(this.database.name);
      this.database = null;
    }
  }

  /** Any JSON call; `bearer` null for none. Returns `{status, body, headers}`. */
  async call(method, path, { bearer = null, body, headers = {} } = {}) {
    const h = { ...headers };
    if (bearer) h.authorization = `Bearer ${bearer}`;
    if (body !== undefined) h['content-type'] = 'application/json';
    const r = await fetch(`${this.url}${path}`, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      redirect: 'manual',
    });
    const text = await r.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      // not JSON
    }
    return { status: r.status, body: json, text, headers: r.headers };
  }

  /** An admin API call (Bearer admin token, JSON). */
  admin(method, path, body) {
    return this.call(method, path, { bearer: this.adminToken, body });
  }

  /** An admin call that must answer 2xx; returns the JSON body. */
  async adminOk(method, path, body) {
    const r = await this.admin(method, path, body);
    assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${r.text}`);
    return r.body;
  }

  /** POSTs a form (form-encoded); returns `{status, body, text, headers}`. */
  async form(path, params, headers = {}) {
    const r = await fetch(`${this.url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
      body: new URLSearchParams(params).toString(),
      redirect: 'manual',
    });
    const text = await r.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      // not JSON
    }
    return { status: r.status, body: json, text, headers: r.headers };
  }

  /** A user with a password (for the web login). */
  async createUser({ name, email, groups = [], password }) {
    const u = await this.adminOk('POST', '/v1/users', { name, email, groups, password });
    return { ...u, name, email, password };
  }

  async createResource({ identifier = CAL, name = 'Calendar', scopes = CAL_SCOPES, jwks } = {}) {
    const body = { identifier, name, scopes };
    if (jwks) body.jwks = jwks;
    return this.adminOk('POST', '/v1/resources', body);
  }

  async putPolicies(policies = POLICIES) {
    return this.adminOk('PUT', '/v1/policies', { policies });
  }

  /** A persistent agent with a fresh Ed25519 key. */
  async createAgent({ name, owner, description, redirect_uris } = {}) {
    const key = newKey();
    const body = { name, owner, jwks: { keys: [key.jwk] } };
    if (description !== undefined) body.description = description;
    if (redirect_uris !== undefined) body.redirect_uris = redirect_uris;
    const a = await this.adminOk('POST', '/v1/agents', body);
    return { id: a.client_id || a.id, name, key, record: a };
  }

  /**
   * An ephemeral child of `parent`, spawned with the parent's own
   * `mandate:spawn` token (DESIGN §7).
   */
  async spawnAgent(parent, { name, owner, ttl_seconds = 600, description } = {}) {
    const t = await agentToken(this, parent, { resource: this.issuer, scope: 'mandate:spawn' });
    const key = newKey();
    const body = { name, owner, ttl_seconds, jwks: { keys: [key.jwk] } };
    if (description !== undefined) body.description = description;
    const r = await this.call('POST', '/v1/agents', { bearer: t.access_token, body });
    assert.equal(r.status, 201, `spawn: ${r.status} ${r.text}`);
    return { id: r.body.client_id || r.body.id, name, key, record: r.body };
  }

  /** A token of a resource server (the calendar) for `/v1/check`. */
  async checkerToken(resourceClient) {
    return (await agentToken(this, resourceClient, { resource: this.issuer, scope: 'mandate:check' })).access_token;
  }

  /** `POST /v1/check` with the resource's `mandate:check` token. */
  async check(checker, token, action, id = 'e1', properties = {}) {
    const r = await this.call('POST', '/v1/check', {
      bearer: checker,
      body: { token, action, resource: { type: 'event', id, properties } },
    });
    assert.equal(r.status, 200, `check: ${r.status} ${r.text}`);
    return r.body;
  }

  /** Introspects `token` as the admin. */
  async introspect(token) {
    const r = await this.form('/oauth/introspect', { token }, { authorization: `Bearer ${this.adminToken}` });
    assert.equal(r.status, 200, `introspect: ${r.status} ${r.text}`);
    return r.body;
  }
}

/** A fresh Ed25519 key pair; `jwk` is the public half as registered. */
export function newKey() {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const jwk = { ...publicKey.export({ format: 'jwk' }), alg: 'EdDSA', use: 'sig' };
  return { privateKey, jwk };
}

/** A JWT signed by `privateKey` (Ed25519, EdDSA). */
export function signJwt(privateKey, payload, typ = 'JWT') {
  const head = b64url(JSON.stringify({ alg: 'EdDSA', typ }));
  const body = b64url(JSON.stringify(payload));
  const sig = sign(null, Buffer.from(`${head}.${body}`), privateKey);
  return `${head}.${body}.${b64url(sig)}`;
}

/** A private_key_jwt client assertion (RFC 7523) for `agent` at `server`. */
export function assertion(server, agent) {
  const now = Math.floor(Date.now() / 1000);
  return signJwt(agent.key.privateKey, {
    iss: agent.id,
    sub: agent.id,
    aud: server.issuer,
    iat: now,
    exp: now + 60,
    jti: randomId(),
  });
}

/** An OAuth call (`/oauth/token`, `/oauth/bc-authorize`) authenticated as `agent`. */
export function oauth(server, agent, path, params) {
  return server.form(path, {
    client_assertion_type: ASSERTION_TYPE,
    client_assertion: assertion(server, agent),
    ...params,
  });
}

/** `client_credentials` for `agent`; must succeed; returns the token response. */
export async function agentToken(server, agent, { resource, scope }) {
  const r = await oauth(server, agent, '/oauth/token', { grant_type: 'client_credentials', resource, scope });
  assert.equal(r.status, 200, `client_credentials ${scope} for ${agent.id}: ${r.status} ${r.text}`);
  return r.body;
}

/** `POST /oauth/bc-authorize` by `agent`; must succeed; returns `{auth_req_id, interval, …}`. */
export async function bcAuthorize(server, agent, params) {
  const r = await oauth(server, agent, '/oauth/bc-authorize', params);
  assert.equal(r.status, 200, `bc-authorize: ${r.status} ${r.text}`);
  return r.body;
}

/**
 * A CIBA poller that keeps to the server's interval (faster polls are
 * `slow_down`): `poll()` waits until `interval` seconds have passed since
 * the last poll, then polls once.
 */
export function cibaPoller(server, agent, authReqId, interval = 5) {
  let last = 0;
  return async function poll() {
    const wait = last + interval * 1000 + 250 - Date.now();
    if (wait > 0) await sleep(wait);
    last = Date.now();
    return oauth(server, agent, '/oauth/token', { grant_type: CIBA_GRANT, auth_req_id: authReqId });
  };
}

/** A self-authorised CIBA grant from `login_hint` to `agent`; returns its tokens. */
export async function cibaGranted(server, agent, { login_hint, scope, resource = CAL, binding_message }) {
  const req = await bcAuthorize(server, agent, { login_hint, scope, resource, binding_message });
  const r = await cibaPoller(server, agent, req.auth_req_id)();
  assert.equal(r.status, 200, `CIBA poll: ${r.status} ${r.text}`);
  return r.body;
}

/** Token exchange by `agent` of `subjectToken`. */
export function exchange(server, agent, subjectToken, extra = {}) {
  return oauth(server, agent, '/oauth/token', {
    grant_type: TOKEN_EXCHANGE,
    subject_token: subjectToken,
    subject_token_type: ACCESS_TOKEN_TYPE,
    ...extra,
  });
}

/** PKCE (RFC 7636) S256 verifier and challenge. */
export function pkce() {
  const verifier = randomId(48);
  const challenge = b64url(createHash('sha256').update(verifier).digest());
  return { verifier, challenge };
}

/**
 * A tiny HTTP server standing for an agent's redirect_uri: it records every
 * request (but the browser's favicon fetches) and answers 200. `next()`
 * resolves with the next request's URL.
 */
export async function redirectTarget() {
  const hits = [];
  let waiters = [];
  const srv = createServer((req, res) => {
    const u = new URL(req.url, `http://${req.headers.host}`);
    if (u.pathname === '/favicon.ico') {
      // the browser's own request, not a redirect
      res.writeHead(404);
      res.end();
      return;
    }
    hits.push(u);
    const ws = waiters;
    waiters = [];
    for (const w of ws) w(u);
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><title>Agent callback</title><h1>Back at the agent</h1>');
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${srv.address().port}`;
  return {
    base,
    uri: `${base}/callback`,
    hits,
    next(timeout = 15_000) {
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('the redirect target was not reached')), timeout);
        waiters.push((u) => {
          clearTimeout(t);
          resolve(u);
        });
      });
    },
    close: () =>
      new Promise((r) => {
        srv.closeAllConnections?.();
        srv.close(() => r());
      }),
  };
}

/** A headless Debian chromium. */
export function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true });
}

/**
 * A new browser context and page (1200x800) on `server`, watching every
 * document the server sends for the security headers and the console for
 * CSP violations and script errors; `problems()` lists what went wrong.
 */
export async function newPage(browser, server) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  const seen = [];
  const problems = [];
  page.on('response', (r) => {
    if (!r.url().startsWith(server.url)) return;
    const type = r.request().resourceType();
    if (type !== 'document') return;
    seen.push(r.url());
    const h = r.headers();
    const where = `${r.status()} ${r.request().method()} ${r.url()}`;
    const csp = h['content-security-policy'] || '';
    if (!/frame-ancestors\s+'none'/.test(csp)) problems.push(`${where}: CSP without frame-ancestors 'none': "${csp}"`);
    if (!h['referrer-policy']) problems.push(`${where}: no Referrer-Policy`);
  });
  // A page's own scripts, styles and fetches must load (documents may well
  // answer 4xx: a wrong password is a 401 page).
  page.on('response', (r) => {
    if (!r.url().startsWith(server.url) || r.request().resourceType() === 'document') return;
    if (r.status() >= 400 && !r.url().endsWith('/favicon.ico')) {
      problems.push(`${r.status()} ${r.request().method()} ${r.url()} (${r.request().resourceType()})`);
    }
  });
  page.on('requestfailed', (r) => {
    if (r.url().startsWith(server.url) && r.failure()?.errorText !== 'net::ERR_ABORTED') {
      problems.push(`failed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`);
    }
  });
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) {
      problems.push(`CSP violation on ${page.url()}: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => problems.push(`script error on ${page.url()}: ${e.message}`));
  return {
    context,
    page,
    documents: seen,
    problems: () => problems.slice(),
  };
}

/** Signs in on /login with the fields labelled Email and Password. */
export async function login(page, email, password) {
  if (!new URL(page.url()).pathname.startsWith('/login')) {
    throw new Error(`login() expects the login page, the browser is on ${page.url()}`);
  }
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await Promise.all([page.waitForLoadState('load'), page.getByRole('button', { name: 'Sign in' }).click()]);
  await page.waitForLoadState('load');
}

/** Opens `/login` on `server` and signs in. */
export async function signIn(page, server, email, password) {
  const r = await page.goto(`${server.url}/login`);
  assert.equal(r?.status(), 200, `GET /login answered ${r?.status()}`);
  await login(page, email, password);
  assert.ok(!new URL(page.url()).pathname.startsWith('/login'), `still on ${page.url()} after signing in`);
}

/** Saves `docs/screenshots/<name>` when SCREENSHOTS=1. */
export async function screenshot(page, name) {
  if (!SCREENSHOTS) return;
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOT_DIR, name), fullPage: false });
}

/**
 * One entry of a list page (an approval, a grant, an agent): the innermost
 * table row, list item or article whose text holds `text`.
 */
export function entry(page, text) {
  return page
    .getByRole('row')
    .or(page.getByRole('listitem'))
    .or(page.getByRole('article'))
    .filter({ hasText: text })
    .last();
}

/** The button named `name` in the entry holding `text`. */
export function entryButton(page, text, name) {
  return entry(page, text).getByRole('button', { name });
}

/** The visible text of the page. */
export async function pageText(page) {
  return page.locator('body').innerText();
}

/** Waits until `fn()` is truthy (polling), or fails with `what`. */
export async function eventually(fn, what, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : last})`);
}

/**
 * The usual world: Alice (staff, with a password), the calendar API, the
 * policies, Alice's planner agent, and the calendar as a resource server
 * with its `mandate:check` token.
 */
export async function seed(server, { agent = {} } = {}) {
  const alice = await server.createUser({
    name: 'Alice Example',
    email: 'alice@example.com',
    groups: ['staff'],
    password: 'correct horse battery staple',
  });
  const calKey = newKey();
  const cal = await server.createResource({ jwks: { keys: [calKey.jwk] } });
  await server.putPolicies();
  const planner = await server.createAgent({
    name: 'Planner',
    owner: alice.id,
    description: "plans Alice's week",
    ...agent,
  });
  const calendar = { id: cal.id, key: calKey };
  const checker = await server.checkerToken(calendar);
  return { alice, planner, calendar, checker };
}

/**
 * Runs `body({server, browser, ...})` on a fresh server (started with
 * `options`, as `startServer` takes them) and browser and tears both down;
 * on failure, the server's output is added to the error.
 */
export async function withWorld(body, options = {}) {
  const server = await startServer(options);
  let browser;
  try {
    browser = await launchBrowser();
    await body({ server, browser });
  } catch (e) {
    const logs = server.logs().trim();
    if (logs) e.message += `\n--- mandate serve output ---\n${logs.slice(-4000)}`;
    throw e;
  } finally {
    await browser?.close().catch(() => {});
    await server.stop();
  }
}
