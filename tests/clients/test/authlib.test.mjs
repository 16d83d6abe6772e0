// Authlib (Python), unmodified, against a real `mandate serve`. The cases
// live in python/authlib_client.py and run in the venv that ../run creates
// from python/requirements.txt (pinned versions from PyPI); this file starts
// the server, seeds it, runs each case and, for the code flow, clicks the
// consent page in Chromium for the Python client.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { CAL, consent, createAgent, launchBrowser, newKey, redirectTarget, seed, startServer, within } from '../lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const PYTHON = process.env.AUTHLIB_PYTHON || join(here, '..', 'python', '.venv', 'bin', 'python');
const SCRIPT = join(here, '..', 'python', 'authlib_client.py');

let server, browser, target, alice, context;

before(async () => {
  assert.ok(existsSync(PYTHON), `no Python venv at ${PYTHON}: run tests/clients/run (it creates it)`);
  server = await startServer();
  target = await redirectTarget();
  ({ alice } = await seed(server));
  const ed = await newKey('Ed25519');
  const p256 = await newKey('ES256');
  const agent = await createAgent(server, {
    name: 'authlib agent',
    owner: alice.id,
    description: 'drives Mandate with Authlib',
    keys: [ed, p256],
    redirect_uris: [target.uri],
  });
  context = {
    issuer: server.issuer,
    resource: CAL,
    client_id: agent.id,
    user_id: alice.id,
    redirect_uri: target.uri,
    // As a key file would hold them: WebCrypto's export adds alg, key_ops
    // and ext, which joserfc would hold the signature algorithm to.
    keys: { ed25519: bare(ed.privateJwk), es256: bare(p256.privateJwk) },
  };
  browser = await launchBrowser();
});

after(async () => {
  await within(browser?.close().catch(() => {}), 10_000);
  await target?.close();
  await server?.stop();
});

const bare = ({ alg, key_ops, ext, ...jwk }) => jwk;

/**
 * Runs one case; `onAuthorize(url)` answers an `AUTHORIZE <url>` line with
 * the callback URL. Resolves with the case's RESULT, or fails with its output.
 */
function runCase(name, { onAuthorize } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, [SCRIPT, name], {
      env: { ...process.env, MANDATE_CLIENT_CONTEXT: JSON.stringify(context), PYTHONUNBUFFERED: '1' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    let result;
    let failure;
    child.stderr.on('data', (d) => (err += d));
    createInterface({ input: child.stdout }).on('line', async (line) => {
      out += `${line}\n`;
      if (line.startsWith('RESULT ')) result = JSON.parse(line.slice(7));
      if (line.startsWith('AUTHORIZE ')) {
        try {
          const back = await onAuthorize(line.slice(10));
          child.stdin.write(`${back.href}\n`);
        } catch (e) {
          failure = e;
          child.kill();
        }
      }
    });
    const timer = setTimeout(() => child.kill(), 60_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (failure) return reject(failure);
      if (code !== 0 || !result) {
        return reject(new Error(`authlib case ${name} exited ${code}:\n${out}${err}\n--- mandate ---\n${server.logs().slice(-2000)}`));
      }
      resolve(result);
    });
  });
}

test('authlib: the RFC 8414 document passes AuthorizationServerMetadata.validate() (with RFC 9207)', async () => {
  const r = await runCase('metadata');
  assert.equal(r.issuer, server.issuer);
  assert.ok(r.grant_types_supported.includes('client_credentials'));
});

test('authlib: OAuth2Session client_credentials with PrivateKeyJWT (EdDSA)', async () => {
  const r = await runCase('cc-ed25519');
  assert.equal(r.sub, context.client_id);
});

test('authlib: OAuth2Session client_credentials with PrivateKeyJWT (ES256)', async () => {
  const r = await runCase('cc-es256');
  assert.equal(r.sub, context.client_id);
});

test('authlib: AsyncOAuth2Client client_credentials, introspection, revocation', async () => {
  const r = await runCase('cc-async');
  assert.equal(r.sub, context.client_id);
});

test('authlib: authorization code + PKCE + resource + offline_access (consent in Chromium), refresh, introspect, revoke', async () => {
  const r = await runCase('code-flow', {
    onAuthorize: async (url) => {
      const u = new URL(url);
      assert.equal(u.searchParams.get('code_challenge_method'), 'S256');
      assert.equal(u.searchParams.get('resource'), CAL);
      return consent(browser, url, alice, { until: target.uri });
    },
  });
  assert.equal(r.sub, alice.id);
  assert.equal(r.act, context.client_id);
});

test(
  "authlib: refresh_token() as it comes, sending the session's scope 'read offline_access' again (RFC 6749 §6)",
  async () => {
    const r = await runCase('refresh-offline', {
      onAuthorize: (url) => consent(browser, url, alice, { until: target.uri }),
    });
    assert.ok(r.scope);
  },
);
