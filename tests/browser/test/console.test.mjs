// The admin console (ADR 0037): a person in mandate-admins browses the
// agents with a filter and pages through them, opens an agent, edits the
// policy set (tests it, then saves it) and rotates the signing key; every
// page keeps the CSP (no inline code) and the security headers.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { newPage, pageText, screenshot, seed, signIn, withWorld } from '../lib.mjs';

test('an admin browses the inventory, edits the policies and rotates a key', { timeout: 120_000 }, () =>
  withWorld(async ({ server, browser }) => {
    const { alice, planner } = await seed(server);
    const helper = await server.createAgent({ name: 'Helper', owner: alice.id, description: 'helps' });
    const scribe = await server.createAgent({ name: 'Scribe', owner: alice.id, description: 'writes' });
    const ada = await server.createUser({
      name: 'Ada Admin',
      email: 'ada@example.com',
      groups: ['mandate-admins'],
      password: 'correct horse battery staple',
    });

    const { page, problems } = await newPage(browser, server);
    await signIn(page, server, ada.email, ada.password);
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Console' }).click();
    assert.equal(new URL(page.url()).pathname, '/console');
    await page.getByRole('link', { name: 'Inventory' }).first().click();
    assert.equal(new URL(page.url()).pathname, '/console/inventory');

    // Alice's agents, one a page.
    await page.getByLabel('Owner (usr_…)').fill(alice.id);
    await page.getByLabel('Per page').fill('1');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.waitForLoadState('load');
    const shown = new Set();
    for (;;) {
      const rows = page.getByRole('table').getByRole('row');
      assert.equal(await rows.count(), 2, 'a header and one agent a page');
      const text = await rows.nth(1).innerText();
      const id = [planner.id, helper.id, scribe.id].find((a) => text.includes(a));
      assert.ok(id, `an agent not Alice's: ${text}`);
      assert.ok(!shown.has(id), `${id} shown twice`);
      shown.add(id);
      const next = page.getByRole('link', { name: 'Next page' });
      if ((await next.count()) === 0) break;
      await next.click();
      await page.waitForLoadState('load');
      assert.equal(new URL(page.url()).searchParams.get('owner'), alice.id, 'the filter is kept');
    }
    assert.equal(shown.size, 3, `paged through ${[...shown]}`);

    // A bad filter: the API's 400, said on the page.
    await page.getByLabel('Kind').fill('robot');
    const bad = await Promise.all([page.waitForResponse((r) => r.url().includes('kind=robot')), page.getByRole('button', { name: 'Filter' }).click()]);
    assert.equal(bad[0].status(), 400);
    assert.match(await page.getByRole('alert').innerText(), /kind must be one of/);

    // One agent's view.
    await page.goto(`${server.url}/console/inventory/agents?owner=${alice.id}`);
    await page.getByRole('link', { name: 'Planner' }).click();
    await page.getByRole('heading', { name: 'Planner' }).waitFor();
    assert.match(await pageText(page), /Live grants/);

    // The policy editor: test a change, then save it.
    await page.getByRole('navigation', { name: 'Console' }).getByRole('link', { name: 'Policies' }).click();
    const editor = page.getByLabel('Policy set (Cedar)');
    const before = await editor.inputValue();
    assert.match(before, /permit/);
    const edited = `${before}\n// reviewed in the console\n`;
    await editor.fill(edited);
    await page.getByLabel(/Test cases/).fill(JSON.stringify([
      { principal: planner.id, action: 'read', resource: 'https://calendar.example', expected: 'allow' },
      { principal: planner.id, action: 'write', resource: 'https://calendar.example', expected: 'deny' },
    ]));
    await page.getByRole('button', { name: 'Test' }).click();
    await page.getByRole('heading', { name: 'Test results' }).waitFor();
    const cases = page.getByRole('table', { name: 'Cases' }).getByRole('row');
    assert.equal(await cases.count(), 3, 'a row per case');
    assert.equal(await editor.inputValue(), edited.replace(/\r\n/g, '\n'), 'the editor kept the text');
    await screenshot(page, 'console.png');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByRole('status').filter({ hasText: 'Saved' }).waitFor();
    const now = await server.adminOk('GET', '/v1/policies');
    assert.match(now.policies, /reviewed in the console/);
    const history = page.getByRole('table', { name: /Policy versions/ }).getByRole('row');
    assert.ok((await history.count()) >= 3, 'the history shows the new version');
    assert.match(await history.nth(1).innerText(), new RegExp(ada.id), 'the newest version is by Ada');

    // Rotate the signing key.
    await page.getByRole('navigation', { name: 'Console' }).getByRole('link', { name: 'Keys' }).click();
    await page.getByRole('button', { name: 'Rotate' }).click();
    const notice = await page.getByRole('status').innerText();
    const kid = notice.match(/new signing key is (\S+)\./)?.[1];
    assert.ok(kid, notice);
    const jwks = await (await fetch(`${server.url}/jwks.json`)).json();
    assert.ok(jwks.keys.some((k) => k.kid === kid), `${kid} is not published`);
    const rotated = await server.adminOk('GET', '/v1/audit?type=key.rotated');
    assert.equal(rotated.events.at(-1).actor, ada.id, 'the rotation is recorded under Ada');

    assert.deepEqual(problems(), []);
  }),
);

test('a person outside mandate-admins has no console', { timeout: 60_000 }, () =>
  withWorld(async ({ server, browser }) => {
    const { alice } = await seed(server);
    const { page, problems } = await newPage(browser, server);
    await signIn(page, server, alice.email, alice.password);
    assert.equal(await page.getByRole('link', { name: 'Console' }).count(), 0);
    const r = await page.goto(`${server.url}/console/policies`);
    assert.equal(r.status(), 403);
    assert.deepEqual(problems(), []);
  }),
);
