// Sign-in with an upstream OpenID Connect provider (DESIGN §10), against a
// real one: node-oidc-provider on loopback, with its development login and
// consent pages. A good login provisions the person (jit_provisioning) with
// the provider's groups; a group change at the provider replaces them at the
// next sign-in; an unverified email and a disallowed domain are refused with
// a page; a replayed callback (same state, same cookie) is refused.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Provider from 'oidc-provider';
import { freePort, launchBrowser, newPage, startServer } from '../lib.mjs';

const ACCOUNTS = {
  alice: { email: 'alice@example.com', email_verified: true, groups: ['staff'] },
  bob: { email: 'bob@example.com', email_verified: false, groups: [] },
  carol: { email: 'carol@elsewhere.example', email_verified: true, groups: [] },
};

/** A node-oidc-provider whose client is Mandate at `mandateUrl`. */
function provider(issuer, mandateUrl) {
  return new Provider(issuer, {
    clients: [
      {
        client_id: 'mandate',
        client_secret: 'mandate-upstream-secret',
        redirect_uris: [`${mandateUrl}/login/oidc/corp/callback`],
        grant_types: ['authorization_code'],
        response_types: ['code'],
      },
    ],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
    scopes: ['openid', 'email', 'groups'],
    features: { devInteractions: { enabled: true } },
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    async findAccount(_ctx, id) {
      const a = ACCOUNTS[id];
      if (!a) return undefined;
      return { accountId: id, claims: async () => ({ sub: id, ...a }) };
    },
  });
}

/** Signs in at the provider's development pages as `login`. */
async function atProvider(page, login) {
  await page.locator('input[name="login"]').fill(login);
  await page.locator('input[name="password"]').fill('any');
  await Promise.all([page.waitForLoadState('load'), page.locator('button[type="submit"]').click()]);
  // The consent page, the first time.
  if (await page.locator('button[type="submit"]').count()) {
    await Promise.all([page.waitForURL((u) => !u.pathname.startsWith('/interaction')), page.locator('button[type="submit"]').click()]);
  }
  await page.waitForLoadState('load');
}

/** The person the one `user.linked` event of this test names. */
async function linkedUser(server) {
  const events = await server.adminOk('GET', '/v1/audit?limit=1000');
  const linked = (events.events ?? events).filter((e) => e.type === 'user.linked');
  assert.equal(linked.length, 1, `user.linked events: ${JSON.stringify(linked)}`);
  return server.adminOk('GET', `/v1/users/${linked[0].subject}`);
}

test('upstream OpenID Connect sign-in', { timeout: 120_000 }, async () => {
  const idpPort = await freePort();
  const idpIssuer = `http://127.0.0.1:${idpPort}`;
  let handler = (_req, res) => res.writeHead(503).end();
  const idp = createServer((req, res) => handler(req, res));
  await new Promise((r) => idp.listen(idpPort, '127.0.0.1', r));
  const dir = mkdtempSync(join(tmpdir(), 'mandate-upstream-'));
  const config = join(dir, 'mandate.toml');
  writeFileSync(
    config,
    `[[upstream_oidc]]
id = "corp"
display_name = "Corp SSO"
issuer = "${idpIssuer}"
client_id = "mandate"
client_secret = "mandate-upstream-secret"
scopes = ["openid", "email", "groups"]
groups_claim = "groups"
allowed_email_domains = ["example.com"]
jit_provisioning = true
`,
  );
  const server = await startServer({ args: ['--config', config, '--dev-loopback-fetch'] });
  handler = provider(idpIssuer, server.url).callback();
  const browser = await launchBrowser();
  try {
    // A good login: the button, the provider, back signed in.
    const { context, page } = await newPage(browser, server);
    await page.goto(`${server.url}/login`);
    const button = page.getByRole('link', { name: 'Sign in with Corp SSO' });
    await button.waitFor();
    let callback;
    page.on('request', (r) => {
      if (r.url().startsWith(`${server.url}/login/oidc/corp/callback`)) callback = r.url();
    });
    await Promise.all([page.waitForURL((u) => u.port === String(idpPort)), button.click()]);
    // The sealed pending sign-in, as the browser holds it until the callback.
    const pending = (await context.cookies(server.url)).find((c) => c.name === 'mandate_upstream');
    assert.ok(pending?.httpOnly, 'no HttpOnly pending cookie');
    await atProvider(page, 'alice');
    await page.getByRole('button', { name: 'Sign out' }).waitFor();
    assert.ok(callback, 'the callback was not seen');
    let alice = await linkedUser(server);
    assert.equal(alice.email, 'alice@example.com');
    assert.deepEqual(alice.groups, ['staff']);

    // The same response again (same state, same cookie): refused.
    const cookie = (await context.cookies(server.url)).find((c) => c.name === 'mandate_upstream');
    assert.equal(cookie, undefined, 'the pending cookie outlived the callback');
    const replay = await fetch(callback, { headers: { cookie: `mandate_upstream=${pending.value}` }, redirect: 'manual' });
    assert.equal(replay.status, 403);
    assert.match(await replay.text(), /used already/);

    // A group change at the provider: replaced at the next sign-in.
    ACCOUNTS.alice.groups = ['auditors', 'staff-emea'];
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForLoadState('load');
    await page.goto(`${server.url}/login`);
    await Promise.all([page.waitForURL((u) => u.port === String(idpPort) || u.port === new URL(server.url).port), page.getByRole('link', { name: 'Sign in with Corp SSO' }).click()]);
    if (new URL(page.url()).port === String(idpPort)) await atProvider(page, 'alice');
    await page.getByRole('button', { name: 'Sign out' }).waitFor();
    alice = await linkedUser(server);
    assert.deepEqual(alice.groups, ['auditors', 'staff-emea']);
    await context.close();

    // An unverified email, and a domain that is not allowed: refusal pages.
    for (const [login, why] of [
      ['bob', /not verified/],
      ['carol', /not allowed/],
    ]) {
      const { context: c, page: p } = await newPage(browser, server);
      await p.goto(`${server.url}/login`);
      await Promise.all([p.waitForURL((u) => u.port === String(idpPort)), p.getByRole('link', { name: 'Sign in with Corp SSO' }).click()]);
      await atProvider(p, login);
      assert.match(await p.getByRole('alert').innerText(), why, `${login}'s refusal`);
      assert.equal(await p.getByRole('button', { name: 'Sign out' }).count(), 0, `${login} was signed in`);
      await c.close();
    }
    const audit = await server.adminOk('GET', '/v1/audit?limit=1000');
    const refusals = (audit.events ?? audit).filter((e) => e.type === 'session.sign_in_failed');
    assert.ok(refusals.length >= 3, `refusals audited: ${JSON.stringify(refusals)}`);
  } catch (e) {
    e.message += `\n--- mandate serve output ---\n${server.logs().slice(-4000)}`;
    throw e;
  } finally {
    await browser.close().catch(() => {});
    await server.stop();
    idp.close();
  }
});
