// Helpers for the MCP tests: processes (mandate serve, mandate gateway,
// server-everything, Python), the admin API, a local CA for the https
// client metadata documents, and a headless Debian chromium that signs in
// and consents.

import { execFileSync, spawn } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

export const HERE = dirname(fileURLToPath(import.meta.url));
export const MANDATE_BIN = process.env.MANDATE_BIN || '/var/tmp/mandate-target/debug/mandate';
/** The binary that runs `mandate gateway` (the same one, unless told). */
export const GATEWAY_BIN = process.env.MANDATE_GATEWAY_BIN || MANDATE_BIN;

/**
 * A PostgreSQL URL of an existing database: when set, Mandate runs on a
 * fresh database created beside it (`--database-url`), dropped when the
 * world closes. Unset: embedded SQLite.
 */
export const DATABASE_URL = process.env.MCP_DATABASE_URL || '';

/**
 * An empty database beside DATABASE_URL's: its URL, and a `stop` that drops
 * it (a process-like entry for the world's list, stopped after Mandate).
 */
export function freshDatabase() {
  const name = `mandate_mcp_${randomBytes(8).toString('hex')}`;
  execFileSync('psql', [DATABASE_URL, '-qAtc', `CREATE DATABASE ${name}`]);
  const url = new URL(DATABASE_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    name: 'database',
    logs: () => '',
    stop: async () => {
      execFileSync('psql', [DATABASE_URL, '-qAtc', `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`]);
    },
  };
}
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const PYTHON = process.env.MCP_PYTHON || join(HERE, '.venv', 'bin', 'python');

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

/** A fresh Ed25519 key pair; `jwk` is the public half as registered. */
export function newKey() {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const jwk = { ...publicKey.export({ format: 'jwk' }), alg: 'EdDSA', use: 'sig' };
  return { privateKey, jwk };
}

/** Waits until `fn()` is truthy (polling), or fails with `what`. */
export async function eventually(fn, what, timeout = 10_000, every = 100) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(every);
  }
  throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : last})`);
}

/**
 * A child process whose output is kept (the tail is shown when a test
 * fails). `ready()` must resolve truthy within 60 s, or the start fails.
 */
export async function startProcess(name, cmd, args, { env, cwd, ready }) {
  const child = spawn(cmd, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
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
      exited = { error: e.message };
      resolve();
    });
  });
  const proc = {
    name,
    child,
    exit,
    logs: () => output,
    exited: () => exited,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exit;
        clearTimeout(t);
      }
    },
  };
  const deadline = Date.now() + 60_000;
  while (!exited && Date.now() < deadline) {
    try {
      if (await ready()) return proc;
    } catch {
      // not yet
    }
    await sleep(100);
  }
  await proc.stop();
  throw new Error(`${name} did not start (${JSON.stringify(exited) ?? 'timeout'}):\n${output.slice(-4000)}`);
}

/** The environment for a child: the caller's, without MANDATE_* (only what the test means). */
export function childEnv(extra = {}) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MANDATE_')));
  env.RUST_LOG = process.env.RUST_LOG || 'warn';
  return { ...env, ...extra };
}

/** Any JSON or form call; returns `{status, body, text, headers}`. */
export async function http(method, url, { bearer, json, form, headers = {} } = {}) {
  const h = { ...headers };
  if (bearer) h.authorization = `Bearer ${bearer}`;
  let body;
  if (json !== undefined) {
    h['content-type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    h['content-type'] = 'application/x-www-form-urlencoded';
    body = new URLSearchParams(form).toString();
  }
  const r = await fetch(url, { method, headers: h, body, redirect: 'manual' });
  const text = await r.text();
  let parsed = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: r.status, body: parsed, text, headers: r.headers };
}

/**
 * `mandate serve` on `dataDir` and a random port, SQLite (or the database
 * `args` name), with `args`;
 * ready when `/readyz` answers 200.
 */
export async function startMandate({ dataDir, adminToken, args = [], env = {} }) {
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    try {
      const proc = await startProcess(
        'mandate serve',
        MANDATE_BIN,
        ['serve', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, ...args],
        {
          env: childEnv({ MANDATE_ADMIN_TOKEN: adminToken, ...env }),
          ready: async () => (await fetch(`${url}/readyz`)).status === 200,
        },
      );
      return new Mandate({ url, adminToken, proc });
    } catch (e) {
      lastError = e;
      if (!/address already in use/i.test(e.message)) break;
    }
  }
  throw lastError;
}

/** A running Mandate and the admin calls the tests make on it. */
export class Mandate {
  constructor({ url, adminToken, proc }) {
    Object.assign(this, { url, issuer: url, adminToken, proc });
  }

  stop() {
    return this.proc.stop();
  }

  logs() {
    return this.proc.logs();
  }

  /** An admin call that must answer 2xx; returns the JSON body. */
  async adminOk(method, path, json) {
    const r = await http(method, `${this.url}${path}`, { bearer: this.adminToken, json });
    assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${r.text}`);
    return r.body;
  }

  createUser({ name, email, groups = [], password }) {
    return this.adminOk('POST', '/v1/users', { name, email, groups, password });
  }

  /** A person's own API token (`mnd_user_…`), from the admin. */
  async userToken(userId) {
    return (await this.adminOk('POST', `/v1/users/${userId}/tokens`, {})).token;
  }
}

/**
 * A local CA and a server certificate for 127.0.0.1 and localhost, made
 * with openssl in `dir`; `ca` is the CA's PEM file (for SSL_CERT_FILE).
 */
export function makeCertificates(dir) {
  const f = (n) => join(dir, n);
  const run = (...args) => execFileSync('openssl', args, { stdio: 'pipe' });
  run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=Mandate MCP tests CA', '-keyout', f('ca.key'), '-out', f('ca.pem'),
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=127.0.0.1',
    '-keyout', f('server.key'), '-out', f('server.csr'));
  writeFileSync(
    f('server.ext'),
    'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n',
  );
  run('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-days', '2', '-out', f('server.pem'), '-extfile', f('server.ext'));
  return { ca: f('ca.pem'), cert: f('server.pem'), key: f('server.key') };
}

/**
 * An https server on 127.0.0.1 serving JSON documents (the client
 * metadata documents); `fetches` records every GET by path.
 */
export async function documentServer({ cert, key }, readFile) {
  const docs = new Map();
  const fetches = [];
  const srv = createHttpsServer({ cert: readFile(cert), key: readFile(key) }, (req, res) => {
    const path = new URL(req.url, 'https://127.0.0.1').pathname;
    fetches.push({ path, method: req.method, headers: req.headers, at: Date.now() });
    const doc = docs.get(path);
    if (!doc) {
      res.writeHead(404);
      res.end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=300' });
    res.end(JSON.stringify(doc));
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const base = `https://127.0.0.1:${srv.address().port}`;
  return {
    base,
    fetches,
    /** Serves `doc` at `path`; returns its URL. */
    put(path, doc) {
      docs.set(path, doc);
      return `${base}${path}`;
    },
    close: () =>
      new Promise((r) => {
        srv.closeAllConnections?.();
        srv.close(() => r());
      }),
  };
}

/**
 * A loopback http server standing for a client's redirect_uri: it records
 * every request (but favicon fetches) and answers a small page. `next()`
 * resolves with the next request's URL.
 */
export async function redirectListener() {
  const hits = [];
  let waiters = [];
  const srv = createHttpServer((req, res) => {
    const u = new URL(req.url, `http://${req.headers.host}`);
    if (u.pathname === '/favicon.ico') {
      res.writeHead(404);
      res.end();
      return;
    }
    hits.push(u);
    const ws = waiters;
    waiters = [];
    for (const w of ws) w(u);
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><title>MCP client</title><h1>Back at the MCP client</h1>');
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${srv.address().port}`;
  return {
    base,
    uri: `${base}/callback`,
    hits,
    next(timeout = 20_000) {
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('the redirect listener was not reached')), timeout);
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

/**
 * A reverse proxy on 127.0.0.1 to `target` that records each request's
 * method, path, `Authorization` and body in `seen`, and streams answers
 * (event streams included) back untouched.
 */
export async function recordingProxy(target) {
  const seen = [];
  const t = new URL(target);
  const srv = createHttpServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method, path: req.url, authorization: req.headers.authorization ?? null, body: body.toString('utf8') });
      const up = httpRequest(
        { host: t.hostname, port: t.port, method: req.method, path: req.url, headers: { ...req.headers, host: t.host } },
        (upRes) => {
          res.writeHead(upRes.statusCode, upRes.headers);
          // At once: an event stream's head must not wait for its first event.
          res.flushHeaders();
          upRes.pipe(res);
        },
      );
      up.on('error', () => {
        res.writeHead(502);
        res.end();
      });
      up.end(body);
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    base: `http://127.0.0.1:${srv.address().port}`,
    seen,
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
 * A person at the browser: `consent(url)` opens an authorization URL,
 * signs in when Mandate asks, checks the consent page and clicks Allow.
 * It returns the consent page's text (for assertions).
 */
export async function personAtBrowser(browser, { email, password }) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const errors = [];
  page.on('pageerror', (e) => errors.push(`script error on ${page.url()}: ${e.message}`));
  return {
    page,
    errors,
    async consent(url, { expectText = [] } = {}) {
      await page.goto(url);
      if (new URL(page.url()).pathname.startsWith('/login')) {
        await page.getByLabel('Email').fill(email);
        await page.getByLabel('Password').fill(password);
        await Promise.all([
          page.waitForURL((u) => !u.pathname.startsWith('/login')),
          page.getByRole('button', { name: 'Sign in' }).click(),
        ]);
        await page.waitForLoadState('load');
      }
      // The consent page is rendered by the server: its button is there at
      // load, or this is not the consent page (an error page, a redirect).
      const allow = page.getByRole('button', { name: 'Allow' });
      if ((await allow.count()) === 0) {
        const text = await page.locator('body').innerText().catch(() => '');
        throw new Error(`no consent page at ${page.url()}:\n${text.slice(0, 2000)}`);
      }
      const text = await page.locator('body').innerText();
      for (const t of expectText) {
        assert.ok(text.includes(t), `the consent page does not show ${JSON.stringify(t)}:\n${text}`);
      }
      await allow.click();
      return text;
    },
    close: () => context.close(),
  };
}

/** A fresh temporary directory and its removal. */
export function tempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
