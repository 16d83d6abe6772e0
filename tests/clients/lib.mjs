// Helpers for the third-party client tests: a real `mandate serve` on a
// random port (SQLite, fresh data dir; or, with CLIENTS_DATABASE_URL, a fresh
// PostgreSQL database beside the one it names), the admin API to seed it, agent keys
// made with WebCrypto, a recording fetch that keeps every exchange a library
// made (so a failure shows the exact request and answer), and Chromium
// (Debian's, through playwright-core) to click the sign-in and consent pages.
//
// The server start, the seed and the sign-in follow tests/browser/lib.mjs;
// they are copied, not imported, so that this package needs only its own
// node_modules.

import { spawn, execFileSync } from 'node:child_process';
import { randomBytes, webcrypto } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

export const MANDATE_BIN = process.env.MANDATE_BIN || '/var/tmp/mandate-target/debug/mandate';
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
/**
 * A PostgreSQL URL of an existing database: when set, every server runs on a
 * fresh database created beside it (`--database-url`), dropped when the
 * server stops for good. Unset: embedded SQLite.
 */
export const DATABASE_URL = process.env.CLIENTS_DATABASE_URL || '';

/** Creates an empty database beside DATABASE_URL's and returns its URL. */
function freshDatabase() {
  const name = `mandate_clients_${randomBytes(8).toString('hex')}`;
  execFileSync('psql', [DATABASE_URL, '-qAtc', `CREATE DATABASE ${name}`]);
  const url = new URL(DATABASE_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

function dropDatabase(databaseUrl) {
  const name = new URL(databaseUrl).pathname.slice(1);
  execFileSync('psql', [DATABASE_URL, '-qAtc', `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`]);
}

/** The calendar API the tests register (never contacted: only its identifier matters). */
export const CAL = 'https://calendar.example';
export const CAL_SCOPES = { read: ['list', 'get'], write: ['create'] };

/** As in tests/browser: staff hold every right; agents may read; writing waits for the user. */
export const POLICIES = `
permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
permit (principal is Agent, action in [Action::"list", Action::"get"], resource);
@approval("user")
permit (principal is Agent, action == Action::"create", resource is Api);
`;

export const ALICE = { name: 'Alice Example', email: 'alice@example.com', password: 'correct horse battery staple' };

export const b64url = (buf) => Buffer.from(buf).toString('base64url');
export const randomId = (n = 16) => b64url(randomBytes(n));
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `promise`, or undefined after `ms` (a close that never finishes must not hang a test). */
export function within(promise, ms) {
  let timer;
  const late = new Promise((r) => {
    timer = setTimeout(r, ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
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

/** The claims of a JWT, unverified. */
export function claims(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString('utf8'));
}

/** The protected header of a JWT. */
export function header(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[0], 'base64url').toString('utf8'));
}

let help;
/** `mandate serve --help`, to see which optional flags this binary has. */
export function serveHelp() {
  help ??= execFileSync(MANDATE_BIN, ['serve', '--help'], { encoding: 'utf8' });
  return help;
}

/** Whether `mandate serve` takes `--flag`. */
export const hasServeFlag = (flag) => new RegExp(`--${flag}\\b`).test(serveHelp());

/**
 * Starts `$MANDATE_BIN serve` on a random port and waits for `/readyz`.
 * `args` are extra flags; `dataDir` reuses a data dir (a restart).
 */
export async function startServer({ args = [], dataDir, adminToken, databaseUrl } = {}) {
  const ownDir = !dataDir;
  dataDir ??= mkdtempSync(join(tmpdir(), 'mandate-clients-'));
  const ownDatabase = DATABASE_URL !== '' && !databaseUrl;
  if (ownDatabase) databaseUrl = freshDatabase();
  const store = databaseUrl ? ['--database-url', databaseUrl] : [];
  adminToken ??= `mnd_admin_clients_${randomId(24)}`;
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    // Only what the test means: no MANDATE_* from the caller's environment.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MANDATE_')));
    env.MANDATE_ADMIN_TOKEN = adminToken;
    env.RUST_LOG = env.RUST_LOG || 'warn';
    const child = spawn(MANDATE_BIN, ['serve', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, ...store, ...args], {
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
        if ((await fetch(`${url}/readyz`)).status === 200) {
          ready = true;
          break;
        }
      } catch {
        // not listening yet
      }
      await sleep(100);
    }
    if (ready) {
      return new Server({ url, adminToken, dataDir, ownDir, databaseUrl, ownDatabase, child, exit, logs: () => output });
    }
    child.kill('SIGKILL');
    await exit;
    lastError = new Error(`mandate serve did not become ready on ${url} (${JSON.stringify(exited)}):\n${output}`);
    if (!/address already in use/i.test(output)) break;
  }
  if (ownDir) rmSync(dataDir, { recursive: true, force: true });
  if (ownDatabase) dropDatabase(databaseUrl);
  throw lastError;
}

/** A running server and the admin calls the tests make on it. */
export class Server {
  constructor({ url, adminToken, dataDir, ownDir, databaseUrl, ownDatabase, child, exit, logs }) {
    Object.assign(this, { url, issuer: url, adminToken, dataDir, ownDir, databaseUrl, ownDatabase, child, exit, logs });
  }

  /** Stops the server; `keep` leaves the data dir for a restart. */
  async stop({ keep = false } = {}) {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
      await this.exit;
      clearTimeout(t);
    }
    if (!keep && this.ownDir) rmSync(this.dataDir, { recursive: true, force: true });
    if (!keep && this.ownDatabase) dropDatabase(this.databaseUrl);
  }

  /** Stops this server and starts another on the same data dir with `args`. */
  async restart(args) {
    await this.stop({ keep: true });
    const next = await startServer({
      args,
      dataDir: this.dataDir,
      adminToken: this.adminToken,
      databaseUrl: this.databaseUrl,
    });
    next.ownDir = this.ownDir;
    next.ownDatabase = this.ownDatabase;
    return next;
  }

  /** Any JSON call with the admin token. Returns `{status, body, text, headers}`. */
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
    return { status: r.status, body: json, text, headers: r.headers };
  }

  /** An admin call that must answer 2xx; returns the JSON body. */
  async adminOk(method, path, body) {
    const r = await this.admin(method, path, body);
    assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${r.text}`);
    return r.body;
  }

  /** Introspects `token` as the admin (the tests' own view, not a library's). */
  async introspect(token) {
    const r = await fetch(`${this.url}/oauth/introspect`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.adminToken}`, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    });
    assert.equal(r.status, 200, `introspect: ${r.status}`);
    return r.json();
  }

  /** The RFC 8414 document, fetched directly. */
  async metadata() {
    const r = await fetch(`${this.url}/.well-known/oauth-authorization-server`);
    assert.equal(r.status, 200);
    return r.json();
  }
}

/**
 * Alice (staff, with a password), the calendar API and the policies.
 * Returns `{alice}`.
 */
export async function seed(server) {
  const alice = await server.adminOk('POST', '/v1/users', { ...ALICE, groups: ['staff'] });
  await server.adminOk('POST', '/v1/resources', { identifier: CAL, name: 'Calendar', scopes: CAL_SCOPES });
  await server.adminOk('PUT', '/v1/policies', { policies: POLICIES });
  return { alice: { ...ALICE, ...alice } };
}

/**
 * A WebCrypto key pair for `alg` (`Ed25519` or `ES256`) and its public JWK
 * with a `kid`, as an agent registers it.
 */
export async function newKey(alg, kid = `${alg.toLowerCase()}-${randomId(6)}`) {
  const params = alg === 'ES256' ? { name: 'ECDSA', namedCurve: 'P-256' } : { name: 'Ed25519' };
  const pair = await webcrypto.subtle.generateKey(params, true, ['sign', 'verify']);
  const pub = await webcrypto.subtle.exportKey('jwk', pair.publicKey);
  const jwk = { kty: pub.kty, crv: pub.crv, x: pub.x, ...(pub.y ? { y: pub.y } : {}), kid, use: 'sig' };
  jwk.alg = alg === 'ES256' ? 'ES256' : 'EdDSA';
  const priv = await webcrypto.subtle.exportKey('jwk', pair.privateKey);
  return { kid, alg, privateKey: pair.privateKey, publicKey: pair.publicKey, jwk, privateJwk: { ...priv, kid } };
}

/** An agent owned by `owner` whose JWKS holds `keys` (from `newKey`). */
export async function createAgent(server, { name, owner, keys, redirect_uris, description, scopes }) {
  const body = { name, owner, jwks: { keys: keys.map((k) => k.jwk) } };
  if (redirect_uris) body.redirect_uris = redirect_uris;
  if (description) body.description = description;
  if (scopes) body.scopes = scopes;
  const a = await server.adminOk('POST', '/v1/agents', body);
  return { id: a.client_id || a.id, record: a, keys };
}

/**
 * A fetch that records every exchange: `fetch` goes into a library's
 * `customFetch`; `log` holds `{method, url, headers, body, status,
 * responseHeaders, responseBody}`; `last(n)` prints the last n for an
 * assertion message.
 */
export function recorder() {
  const log = [];
  async function recordingFetch(url, init = {}) {
    const entry = {
      method: init.method || 'GET',
      url: String(url),
      headers: Object.fromEntries(new Headers(init.headers).entries()),
      body: typeof init.body === 'string' ? init.body : init.body instanceof URLSearchParams ? init.body.toString() : init.body ? '(binary)' : undefined,
    };
    const r = await fetch(url, init);
    entry.status = r.status;
    entry.responseHeaders = Object.fromEntries(r.headers.entries());
    entry.responseBody = await r.clone().text();
    log.push(entry);
    return r;
  }
  const show = (e) => {
    let body = e.body;
    // Assertions are long and say nothing a reader needs here: show their claims.
    if (body) {
      const p = new URLSearchParams(body);
      const a = p.get('client_assertion');
      if (a) p.set('client_assertion', `<jwt ${JSON.stringify(header(a))} ${JSON.stringify(claims(a))}>`);
      body = decodeURIComponent(p.toString());
    }
    return `> ${e.method} ${e.url}\n> ${JSON.stringify(e.headers)}\n> ${body ?? ''}\n< ${e.status} ${JSON.stringify(e.responseHeaders)}\n< ${e.responseBody}`;
  };
  return {
    fetch: recordingFetch,
    log,
    last: (n = 1) => log.slice(-n).map(show).join('\n'),
    clear: () => log.splice(0),
  };
}

/**
 * A tiny HTTP server standing for a client's redirect_uri: `next()`
 * resolves with the next request's full URL (the browser's favicon fetches
 * aside).
 */
export async function redirectTarget(port = 0) {
  let waiters = [];
  const srv = createServer((req, res) => {
    const u = new URL(req.url, `http://${req.headers.host}`);
    if (u.pathname === '/favicon.ico') {
      res.writeHead(404);
      res.end();
      return;
    }
    const ws = waiters;
    waiters = [];
    for (const w of ws) w(u);
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><title>Client callback</title><h1>Back at the client</h1>');
  });
  await new Promise((r) => srv.listen(port, '127.0.0.1', r));
  const base = `http://127.0.0.1:${srv.address().port}`;
  return {
    base,
    uri: `${base}/callback`,
    next(timeout = 20_000) {
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
 * A person at the browser: opens `authorizationUrl` (a URL a library
 * built), signs in as `user` if Mandate asks, and clicks **Allow** (or
 * `button`) on the consent page. Resolves once the browser has left for
 * a URL starting with `until` (the client's redirect_uri), with or without
 * a consent page (an error goes straight back); returns that URL.
 */
export async function consent(browser, authorizationUrl, user, { until, button = 'Allow', context } = {}) {
  const ctx = context ?? (await browser.newContext());
  const page = await ctx.newPage();
  page.setDefaultTimeout(15_000);
  let landed;
  page.on('request', (r) => {
    if (until && r.isNavigationRequest() && r.url().startsWith(until)) landed ??= r.url();
  });
  const dbg = (m) => process.env.CLIENTS_DEBUG && console.error(`[consent ${new Date().toISOString()}] ${m} (${page.url()})`);
  try {
    dbg('goto');
    let first;
    try {
      first = await page.goto(authorizationUrl);
    } catch (e) {
      // Sent straight back to the client, which may close as soon as it has
      // its answer (the navigation is then aborted).
      if (landed) return new URL(landed);
      throw e;
    }
    if (new URL(page.url()).pathname === '/login') {
      dbg('login');
      await page.getByLabel('Email').fill(user.email);
      await page.getByLabel('Password').fill(user.password);
      await Promise.all([page.waitForLoadState('load'), page.getByRole('button', { name: 'Sign in' }).click()]);
      await page.waitForLoadState('load');
    }
    // Either a consent page, or straight back to the client (an error
    // Mandate redirects, or no consent needed).
    dbg('allow?');
    const allow = page.getByRole('button', { name: button });
    let deadline = Date.now() + 10_000;
    while (!landed && Date.now() < deadline && (await allow.count()) === 0) await sleep(50);
    if (!landed) {
      if ((await allow.count()) === 0) {
        const text = await page.locator('body').innerText().catch(() => '');
        throw new Error(`no ${button} button at ${page.url()} (first answer ${first?.status()}):\n${text.slice(0, 1500)}`);
      }
      dbg('click');
      await allow.click();
      dbg('clicked');
      deadline = Date.now() + 15_000;
      while (!landed && Date.now() < deadline) await sleep(50);
    }
    assert.ok(landed, `the browser did not go to ${until}; it is on ${page.url()}`);
    // Let the client's page load before closing: Chromium may never finish
    // closing a page in the middle of a navigation.
    await page.waitForURL((u) => u.href.startsWith(until), { waitUntil: 'load', timeout: 5_000 }).catch(() => {});
    return new URL(landed);
  } finally {
    dbg('close');
    await within((context ? page.close() : ctx.close()).catch(() => {}), 5_000);
    dbg('closed');
  }
}
