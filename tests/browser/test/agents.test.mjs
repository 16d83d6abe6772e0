// My agents: suspending an owned agent on /agents revokes its tokens (and
// the sub-agent's hop) and says what it cascaded to; Resume brings the agent
// back without its old tokens; Retire ends it for good.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  cibaGranted,
  entry,
  entryButton,
  eventually,
  exchange,
  newPage,
  seed,
  signIn,
  withWorld,
} from '../lib.mjs';

test('suspend, resume and retire an owned agent', { timeout: 90_000 }, () =>
  withWorld(async ({ server, browser }) => {
    const { alice, planner, checker } = await seed(server);
    const granted = await cibaGranted(server, planner, {
      login_hint: alice.email,
      scope: 'read',
      binding_message: 'plan the offsite',
    });
    const summarizer = await server.spawnAgent(planner, {
      name: 'Summarizer',
      owner: alice.id,
      description: 'summarises the week',
    });
    const hop = await exchange(server, summarizer, granted.access_token, { scope: 'read' });
    assert.equal(hop.status, 200, `exchange: ${hop.status} ${hop.text}`);
    assert.equal((await server.check(checker, hop.body.access_token, 'list')).decision, 'allow');

    // Its credential policy, set by the admin, is shown on its row.
    await server.adminOk('PATCH', `/v1/agents/${planner.id}`, { limits: { max_token_ttl: 240 } });

    const { page, problems } = await newPage(browser, server);
    page.on('dialog', (d) => d.accept()); // a confirmation, if the page asks for one
    await signIn(page, server, alice.email, alice.password);
    await page.goto(`${server.url}/agents`);
    assert.equal(new URL(page.url()).pathname, '/agents');
    const mine = "plans Alice's week"; // the planner's row
    await entryButton(page, mine, 'Suspend').waitFor();
    await entryButton(page, mine, 'Retire').waitFor();
    assert.equal(await entryButton(page, mine, 'Resume').count(), 0, 'an active agent offers Resume');
    await entry(page, 'summarises the week').waitFor();
    assert.match(await entry(page, mine).innerText(), /tokens live at most 240 s/);

    // Suspend: the tokens die, down the chain, and the page says so.
    await entryButton(page, mine, 'Suspend').click();
    await entryButton(page, mine, 'Resume').waitFor();
    assert.equal(await entryButton(page, mine, 'Suspend').count(), 0, 'a suspended agent still offers Suspend');
    const said = await page.getByRole('status').or(page.getByRole('alert')).first().innerText();
    assert.match(said, /revoked/i, `the page does not say what the suspension reached: "${said}"`);
    assert.equal((await server.check(checker, granted.access_token, 'list')).decision, 'deny');
    assert.equal((await server.check(checker, hop.body.access_token, 'list')).decision, 'deny');
    assert.equal((await server.introspect(hop.body.access_token)).active, false);

    // Resume: active again, the old tokens stay dead.
    await entryButton(page, mine, 'Resume').click();
    await entryButton(page, mine, 'Suspend').waitFor();
    assert.equal((await server.adminOk('GET', `/v1/agents/${planner.id}`)).status, 'active');
    assert.equal((await server.check(checker, granted.access_token, 'list')).decision, 'deny');

    // Retire: no way back.
    await entryButton(page, mine, 'Retire').click();
    await eventually(
      async () => (await entry(page, mine).getByRole('button').count()) === 0,
      'the retired agent to lose its buttons',
    );
    assert.match(await entry(page, mine).innerText(), /retired/i);
    const again = await cibaGranted(server, planner, {
      login_hint: alice.email,
      scope: 'read',
      binding_message: 'after retirement',
    }).catch((e) => e);
    assert.ok(again instanceof Error, 'a retired agent still got a grant');

    assert.deepEqual(problems(), []);
  }),
);
