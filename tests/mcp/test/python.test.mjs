// The MCP Python SDK (`mcp` on PyPI), unmodified, in front of `mandate
// gateway` and server-everything: python/client.py runs the SDK's client
// with its OAuthClientProvider; when it redirects, the person consents here
// in chromium, and the browser lands on the script's own listener.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { HERE, PYTHON, claims, eventually, freePort, personAtBrowser, sleep } from '../lib.mjs';
import { approveAsPerson, startWorld } from '../world.mjs';

let w;
let person;

before(async () => {
  assert.ok(existsSync(PYTHON), `no Python venv at ${PYTHON}: run tests/mcp/setup-python.sh (or set MCP_PYTHON)`);
  w = await startWorld();
  person = await personAtBrowser(w.browser, w.person);
  w.closers.push(() => person.close());
});

after(async () => {
  await w?.stop();
});

/**
 * Runs python/client.py; consents to each authorization it asks for; when
 * it reports an approval request, the person approves it. Resolves with
 * its result line.
 */
function runPython(args, { timeout = 90_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, [join(HERE, 'python', 'client.py'), ...args], {
      env: { ...process.env, PYTHONUNBUFFERED: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    const lines = [];
    const consents = [];
    let result = null;
    let failure = null;
    child.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => child.kill('SIGKILL'), timeout);
    const rl = createInterface({ input: child.stdout });
    rl.on('line', (line) => {
      lines.push(line);
      let ev;
      try {
        ev = JSON.parse(line);
      } catch {
        return;
      }
      if (ev.event === 'authorize') {
        consents.push(
          person.consent(ev.url).catch((e) => {
            failure = e;
            child.kill('SIGKILL');
          }),
        );
      } else if (ev.event === 'result' || ev.event === 'error') {
        result = ev;
      }
    });
    child.on('exit', async (code) => {
      clearTimeout(t);
      await Promise.allSettled(consents);
      const why = () => `python exited ${code}:\n${stderr.slice(-4000)}\n${lines.join('\n').slice(-4000)}\n${w.logs()}`;
      if (failure) return reject(new Error(`consent failed: ${failure.message}\n${why()}`));
      if (!result || result.event !== 'result') {
        const seen = result?.requests ? `\n--- the SDK's requests ---\n${exchanges(result)}` : '';
        const err = result?.error ? `\n${result.error}\n${(result.traceback || '').split('\n').slice(-12).join('\n')}` : '';
        return reject(new Error(`${why()}${err}${seen}`));
      }
      result.pages = consents.length;
      resolve(result);
    });
  });
}

const exchanges = (r) =>
  r.requests.map((q) => `${q.method} ${q.url} -> ${q.status ?? 'no answer'}${q.www_authenticate ? ` [${q.www_authenticate}]` : ''}${q.body ? `\n    ${q.body}` : ''}`).join('\n');

test('Python SDK: dynamic registration, code flow in chromium, filtered list, allow / deny / approval, refresh', { timeout: 120_000 }, async () => {
  const r = await runPython([w.resource, 'dcr']);
  const info = `\n--- the SDK's requests ---\n${exchanges(r)}`;
  // Discovery from the 401, RFC 7591 registration, one consent.
  assert.ok(r.requests.some((q) => q.url === w.resource && q.status === 401), `no 401 first${info}`);
  assert.ok(r.requests.some((q) => q.url === `${w.mandate.url}/oauth/register` && q.status === 201), `no registration${info}`);
  assert.match(r.client_info.client_id, /^agt_/, info);
  const authz = new URL(r.authorizations[0]);
  assert.equal(authz.searchParams.get('resource'), w.resource, `RFC 8707 resource${info}`);
  assert.equal(authz.searchParams.get('code_challenge_method'), 'S256');
  // The 401's scope, and offline_access since Mandate lists it (SEP-2207).
  assert.equal(authz.searchParams.get('scope'), 'tools:read tools:env offline_access', info);
  // The SDK checked state and iss itself (RFC 9207); here they are as seen.
  assert.equal(r.callbacks[0].iss, w.mandate.issuer);
  const t1 = r.tokens[0];
  assert.ok(t1.refresh_token, `offline_access brings a refresh token${info}`);
  const c1 = claims(t1.access_token);
  assert.equal(c1.aud, w.resource);
  assert.equal(c1.sub, w.person.id);

  // Filtered list; allowed, forbidden, approval required.
  assert.deepEqual(r.tools, ['echo', 'get-sum'], `listed: ${r.tools}${info}`);
  assert.equal(r.echo.ok, true, JSON.stringify(r.echo));
  assert.match(r.echo.text, /hello from Python/);
  assert.equal(r.get_env.ok, false, JSON.stringify(r.get_env));
  assert.equal(r.get_env.code, -32001);
  assert.equal(r.get_env.data?.error, 'access_denied');
  assert.equal(r.get_sum.ok, false, JSON.stringify(r.get_sum));
  assert.equal(r.get_sum.code, -32002);
  assert.match(r.get_sum.data?.approval_request ?? '', /^apr_/);
  assert.equal(r.get_sum.data?.approval_url, `${w.mandate.url}/approvals`);

  // The refresh: a second token set, no second consent.
  assert.equal(r.after_refresh.ok, true, `after the refresh: ${JSON.stringify(r.after_refresh)}${info}`);
  assert.ok(r.tokens.length >= 2, `no refresh${info}`);
  const refresh = r.requests.find((q) => q.url === `${w.mandate.url}/oauth/token` && q.body.includes('grant_type=refresh_token'));
  assert.ok(refresh, `no refresh request${info}`);
  assert.equal(refresh.status, 200, info);
  assert.notEqual(r.tokens.at(-1).refresh_token, t1.refresh_token, 'the refresh token rotates');
  assert.equal(r.authorizations.length, 2, `a step-up authorization${info}`);

  // The step-up: 403 insufficient_scope for get-tiny-image, a second
  // consent, for the union of the scopes held and the one challenged
  // (SEP-2350), and the call made again.
  assert.ok(r.requests.some((q) => q.status === 403 && /insufficient_scope/.test(q.www_authenticate ?? '')), info);
  const stepUp = new URL(r.authorizations[1]).searchParams.get('scope').split(' ');
  assert.deepEqual(new Set(stepUp), new Set(['tools:read', 'tools:env', 'offline_access', 'tools:image']), info);
  assert.equal(r.pages, 2, 'two consents');
  assert.equal(r.image.ok, true, JSON.stringify(r.image));
  assert.ok(r.image.types.includes('image'), JSON.stringify(r.image));

  // The approval the Python client was told about can be approved by the person.
  await approveAsPerson(w, r.get_sum.data.approval_request);
});

// RFC 9112 §9.3 and §9.6: an HTTP/1.1 connection persists unless a side
// says `close`. The gateway answers a POST's 401 before reading its body and
// hyper then closes the connection, without `Connection: close` in the
// answer. A client that sends its next request at once on the same
// connection (the Python SDK's metadata GET, right after the 401) loses the
// race now and then: "Server disconnected without sending a response"
// (httpx). The gateway now says `Connection: close` on every refusal.
test('the gateway keeps a connection usable after a 401, or says Connection: close', async () => {
  const u = new URL(w.resource);
  const sock = connect(Number(u.port), u.hostname);
  let got = '';
  let closed = false;
  sock.on('data', (d) => (got += d));
  sock.on('close', () => (closed = true));
  sock.on('error', () => {});
  await new Promise((r) => sock.once('connect', r));
  try {
    const body = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: {} });
    // The head first: the gateway answers before the body arrives, which
    // makes the race (the body a moment late) happen every time.
    sock.write(`POST ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`);
    await eventually(() => got.includes('\r\n\r\n'), 'the 401');
    const head = got.split('\r\n\r\n')[0];
    assert.match(head, /^HTTP\/1.1 401/);
    if (/^connection:\s*close/im.test(head)) return; // said so: fine
    sock.write(body);
    await sleep(200);
    assert.ok(!closed, `the connection was closed after:\n${head}`);
    got = '';
    sock.write(`GET /.well-known/oauth-protected-resource${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\n\r\n`);
    await eventually(() => got.startsWith('HTTP/1.1 200'), 'the metadata on the same connection', 2000);
  } finally {
    sock.destroy();
  }
});

/** Serves a client metadata document for the Python client with `redirect_uris`; returns its URL. */
function pythonDocument(name, redirect) {
  const path = `/clients/${name}.json`;
  return w.docs.put(path, {
    client_id: `${w.docs.base}${path}`,
    client_name: `MCP Python SDK (${name})`,
    redirect_uris: [redirect],
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  });
}

test('Python SDK: a client metadata document as client_id (CIMD)', { timeout: 90_000 }, async () => {
  // The document names the listener's exact port (see the next test).
  const port = await freePort();
  const url = pythonDocument('python', `http://127.0.0.1:${port}/callback`);
  const r = await runPython([w.resource, 'cimd', '--cimd', url, '--port', String(port)]);
  const info = `\n--- the SDK's requests ---\n${exchanges(r)}`;
  assert.equal(r.client_info.client_id, url, info);
  assert.equal(r.requests.filter((q) => q.url.endsWith('/oauth/register')).length, 0, `CIMD, not DCR${info}`);
  assert.equal(new URL(r.authorizations[0]).searchParams.get('client_id'), url);
  assert.equal(r.callbacks[0].iss, w.mandate.issuer);
  assert.deepEqual(r.tools, ['echo', 'get-sum'], info);
  assert.equal(r.echo.ok, true, JSON.stringify(r.echo));
  assert.match(r.echo.text, /hello from Python \(cimd\)/);
});

// RFC 8252 §7.3: "The authorization server MUST allow any port to be
// specified at the time of the request for loopback IP redirect URIs".
// A native client's metadata document cannot know the ephemeral port its
// listener will get, so it names the loopback URI without one; Mandate
// matches loopback redirects on any port.
test('Python SDK: CIMD with a loopback redirect on any port (RFC 8252 §7.3)', { timeout: 90_000 }, async () => {
  const url = pythonDocument('python-anyport', 'http://127.0.0.1/callback');
  const r = await runPython([w.resource, 'cimd', '--cimd', url], { timeout: 30_000 });
  assert.equal(r.echo.ok, true, JSON.stringify(r.echo));
});

// MCP 2025-11-25, "Scope selection strategy": with no scope in the 401 and
// no scopes_supported in the resource's metadata, a client omits scope. The
// Python SDK instead asks for the authorization server's scopes_supported,
// which in Mandate lists the scopes of every registered resource (here
// calendar:read too). Mandate leaves out the scopes the requested resource
// does not declare (RFC 6749 §3.3) and grants the rest; it answered
// `invalid_scope` before.
test('Python SDK: a route that advertises no scopes, on a Mandate with other resources', { timeout: 60_000 }, async () => {
  const port = await freePort();
  const url = pythonDocument('python-open', `http://127.0.0.1:${port}/callback`);
  const r = await runPython([w.openResource, 'cimd', '--cimd', url, '--port', String(port)], { timeout: 30_000 });
  assert.equal(r.echo.ok, true, JSON.stringify(r.echo));
});
