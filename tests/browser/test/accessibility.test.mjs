// Every page passes axe-core's WCAG 2.1 A and AA rules (labels, names,
// contrast, landmarks, lists, tables), signed out and signed in, with a
// pending approval and a pending renewal, grants, agents, events and a
// tree on screen, and the admin console's pages. axe is injected into a
// context that bypasses the CSP, which allows no inline script (the pages
// themselves are checked for their CSP by the other tests).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { CAL, POLICIES, bcAuthorize, cibaGranted, claims, login, pkce, seed, withWorld } from '../lib.mjs';

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

async function audit(page) {
  await page.addScriptTag({ content: AXE });
  return page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
    return r.violations.map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  });
}

test('every page passes the WCAG 2.1 AA rules of axe-core', { timeout: 120_000 }, () =>
  withWorld(async ({ server, browser }) => {
    const { alice, planner } = await seed(server, { agent: { redirect_uris: ['https://app.example/callback'] } });
    const granted = await cibaGranted(server, planner, { login_hint: alice.email, scope: 'read', binding_message: 'plan the week' });
    await bcAuthorize(server, planner, { login_hint: alice.email, scope: 'read write', resource: CAL, binding_message: 'book the venue' });
    const grant = claims(granted.access_token).grant_id;
    // A reapproval waiting for Alice (ADR 0036): a grant of write she
    // approved, which the admin asks to renew.
    const aliceToken = (await server.adminOk('POST', `/v1/users/${alice.id}/tokens`, {})).token;
    const write = await bcAuthorize(server, planner, { login_hint: alice.email, scope: 'write', resource: CAL, binding_message: 'file the notes' });
    const approved = await server.call('POST', `/v1/approvals/${write.auth_req_id}/approve`, { bearer: aliceToken });
    assert.equal(approved.status, 200, approved.text);
    const listed = (await server.adminOk('GET', `/v1/grants?user=${alice.id}`)).items.find((g) => g.purpose === 'file the notes');
    const renewal = await server.admin('POST', `/v1/grants/${listed.id}/reapprove`);
    assert.equal(renewal.status, 202, renewal.text);
    // An access review campaign, so that /review shows its campaign list (with the default thresholds
    // a day-long grant is neither stale nor expiring, ADR 0036: the item list may be empty).
    await server.adminOk('POST', '/v1/review/campaigns', {
      scope: {}, deadline: new Date(Date.now() + 7 * 86_400_000).toISOString(), default: 'keep',
    });

    // An action approval bound to its check's declared context (SECURITY row 33), whose card shows it.
    const PAY = 'https://pay.example';
    await server.adminOk('POST', '/v1/resources', { identifier: PAY, name: 'Payments', scopes: { pay: ['pay'] }, context: { amount: 'Long' } });
    await server.putPolicies(`${POLICIES}
permit (principal in Group::"staff", action == Action::"pay", resource);
permit (principal is Agent, action == Action::"pay", resource is Api);
@approval("user")
permit (principal is Agent, action == Action::"pay", resource is Resource);
`);
    const pay = await cibaGranted(server, planner, { login_hint: alice.email, scope: 'pay', resource: PAY, binding_message: 'pay the caterer' });
    const asked = await server.adminOk('POST', '/v1/check', {
      token: pay.access_token, action: 'pay', resource: { type: 'payment', id: 'p1' }, context: { amount: 50 },
    });
    assert.equal(asked.decision, 'approval_required', JSON.stringify(asked));

    const context = await browser.newContext({ bypassCSP: true, viewport: { width: 1200, height: 800 } });
    const page = await context.newPage();
    const found = {};
    await page.goto(`${server.url}/login`);
    found['/login'] = await audit(page);
    await login(page, alice.email, alice.password);
    for (const path of ['/approvals', '/grants', '/agents', '/review', '/audit', `/audit/trace/${grant}`]) {
      await page.goto(`${server.url}${path}`);
      if (path === '/approvals') {
        const shown = page.getByRole('table', { name: 'Context of the check' });
        await shown.waitFor();
        assert.match(await shown.textContent(), /amount\s*50/);
      }
      found[path] = await audit(page);
    }
    // The consent page of the authorization code flow.
    const { challenge } = pkce();
    const q = new URLSearchParams({
      response_type: 'code', client_id: planner.id, redirect_uri: 'https://app.example/callback', scope: 'read',
      resource: CAL, state: 's', code_challenge: challenge, code_challenge_method: 'S256',
    });
    await page.goto(`${server.url}/oauth/authorize?${q}`);
    await page.getByRole('button', { name: 'Allow' }).waitFor();
    found['/oauth/authorize'] = await audit(page);
    await context.close();

    // The admin console, as a person in mandate-admins (ADR 0037), with a
    // dry run's results and a diff on screen.
    const ada = await server.createUser({
      name: 'Ada Admin', email: 'ada@example.com', groups: ['mandate-admins'], password: 'correct horse battery staple',
    });
    const admin = await browser.newContext({ bypassCSP: true, viewport: { width: 1200, height: 800 } });
    const adminPage = await admin.newPage();
    await adminPage.goto(`${server.url}/login`);
    await login(adminPage, ada.email, ada.password);
    for (const path of [
      '/console', '/console/inventory', '/console/inventory/users', '/console/inventory/resources',
      '/console/inventory/grants', `/console/agents/${planner.id}`, '/console/policies',
      '/console/policies/versions/1/diff', '/console/keys', '/console/inventory/agents?kind=robot',
    ]) {
      await adminPage.goto(`${server.url}${path}`);
      found[path] = await audit(adminPage);
    }
    await adminPage.goto(`${server.url}/console/policies`);
    await adminPage.getByLabel(/Test cases/).fill(JSON.stringify([
      { principal: planner.id, action: 'read', resource: CAL, expected: 'allow' },
    ]));
    await adminPage.getByLabel('Also replay recorded decisions').check();
    await adminPage.getByRole('button', { name: 'Test' }).click();
    await adminPage.getByRole('heading', { name: 'Test results' }).waitFor();
    found['/console/policies (test results)'] = await audit(adminPage);
    await admin.close();
    const failing = Object.entries(found).filter(([, v]) => v.length > 0);
    assert.deepEqual(failing, [], JSON.stringify(failing, null, 2));
  }),
);
