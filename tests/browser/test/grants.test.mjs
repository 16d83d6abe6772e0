// Revoking a grant on /grants: the person clicks Revoke next to the grant,
// and the agent's next /v1/check is denied; the other grant is untouched.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cibaGranted, claims, entry, entryButton, eventually, newPage, seed, signIn, withWorld } from '../lib.mjs';

test('revoking a grant denies the agent at its next check', { timeout: 90_000 }, () =>
  withWorld(async ({ server, browser }) => {
    const { alice, planner, checker } = await seed(server);
    const doomed = await cibaGranted(server, planner, {
      login_hint: alice.email,
      scope: 'read',
      binding_message: 'plan the offsite',
    });
    const kept = await cibaGranted(server, planner, {
      login_hint: alice.email,
      scope: 'read',
      binding_message: 'summarise the week',
    });
    const grantId = claims(doomed.access_token).grant_id;
    assert.equal((await server.check(checker, doomed.access_token, 'list')).decision, 'allow');

    const { page, problems } = await newPage(browser, server);
    page.on('dialog', (d) => d.accept()); // a confirmation, if the page asks for one
    await signIn(page, server, alice.email, alice.password);
    await page.goto(`${server.url}/grants`);
    assert.equal(new URL(page.url()).pathname, '/grants');
    await entryButton(page, 'plan the offsite', 'Revoke').waitFor();
    await entryButton(page, 'summarise the week', 'Revoke').waitFor();
    const shown = await entry(page, 'plan the offsite').innerText();
    assert.match(shown, /read/i, `the scopes are not shown: ${shown}`);
    assert.ok(shown.includes(planner.name) || shown.includes(planner.id), `the agent is not shown: ${shown}`);

    await entryButton(page, 'plan the offsite', 'Revoke').click();
    await eventually(
      async () => (await entryButton(page, 'plan the offsite', 'Revoke').count()) === 0,
      'the revoked grant to lose its Revoke button',
    );
    await page.waitForLoadState('load');
    // The other grant can still be revoked.
    assert.equal(await entryButton(page, 'summarise the week', 'Revoke').count(), 1, 'the other grant changed too');
    // Still listed (or gone), but as revoked.
    if ((await entry(page, 'plan the offsite').count()) > 0) {
      assert.match(await entry(page, 'plan the offsite').innerText(), /revoked/i, 'the grant is not shown as revoked');
    }

    // The agent's next check is denied; the other grant's token still works.
    const d = await server.check(checker, doomed.access_token, 'list');
    assert.equal(d.decision, 'deny', `check after Revoke: ${JSON.stringify(d)}`);
    assert.equal((await server.check(checker, kept.access_token, 'list')).decision, 'allow');
    assert.equal((await server.introspect(doomed.access_token)).active, false);
    const grants = (await server.adminOk('GET', `/v1/grants?user=${alice.id}`)).items;
    assert.equal(grants.find((g) => g.id === grantId)?.status, 'revoked', JSON.stringify(grants));
    assert.equal(grants.filter((g) => g.status === 'active').length, 1, JSON.stringify(grants));

    assert.deepEqual(problems(), []);
  }),
);
