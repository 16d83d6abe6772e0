// A group approval on the inbox (DESIGN §13, ADR 0025): writing needs two
// members of finance. Carol and Dave each see the request with its count;
// Carol approves (1 of 2), the card stays with her approval counted; Dave
// approves on his page and the agent's poll gets tokens.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CAL,
  POLICIES,
  bcAuthorize,
  cibaPoller,
  entry,
  entryButton,
  eventually,
  newPage,
  seed,
  signIn,
  withWorld,
} from '../lib.mjs';

const GROUP_POLICIES = POLICIES.replace(
  '@approval("user")\npermit (principal is Agent, action == Action::"create", resource is Api);',
  '@approval("group:finance") @approvals("2")\npermit (principal is Agent, action == Action::"create", resource is Api);',
);

test('a group approval shows its count and needs two members', { timeout: 90_000 }, () =>
  withWorld(async ({ server, browser }) => {
    assert.notEqual(GROUP_POLICIES, POLICIES, 'the policies were not rewritten');
    const { alice, planner } = await seed(server);
    await server.putPolicies(GROUP_POLICIES);
    const carol = await server.createUser({
      name: 'Carol Finance', email: 'carol@example.com', groups: ['finance'], password: 'correct horse battery staple',
    });
    const dave = await server.createUser({
      name: 'Dave Finance', email: 'dave@example.com', groups: ['finance'], password: 'correct horse battery staple',
    });
    const asked = await bcAuthorize(server, planner, {
      login_hint: alice.email, scope: 'write', resource: CAL, binding_message: 'pay the caterer',
    });
    const poll = cibaPoller(server, planner, asked.auth_req_id, asked.interval);

    const { page, problems } = await newPage(browser, server);
    await signIn(page, server, carol.email, carol.password);
    await page.goto(`${server.url}/approvals`);
    await page.getByText('pay the caterer').first().waitFor();
    const card = entry(page, 'pay the caterer');
    let shown = await card.innerText();
    assert.match(shown, /finance/, `the group is not shown: ${shown}`);
    assert.match(shown, /0 of 2 approvals/, `the count is not shown: ${shown}`);
    assert.ok(shown.includes(alice.name), `the person it is for is not shown: ${shown}`);
    await entryButton(page, 'pay the caterer', 'Approve').click();
    await eventually(
      async () => /1 of 2 approvals/.test(await entry(page, 'pay the caterer').innerText()),
      'the count to read 1 of 2 after Carol approves',
    );
    shown = await entry(page, 'pay the caterer').innerText();
    assert.match(shown, /yours is counted/, `Carol's approval is not marked: ${shown}`);
    const pending = await poll();
    assert.equal(pending.body?.error, 'authorization_pending', `after one approval: ${pending.status} ${pending.text}`);

    const second = await newPage(browser, server);
    await signIn(second.page, server, dave.email, dave.password);
    await second.page.goto(`${server.url}/approvals`);
    await second.page.getByText('pay the caterer').first().waitFor();
    assert.match(await entry(second.page, 'pay the caterer').innerText(), /1 of 2 approvals/);
    await entryButton(second.page, 'pay the caterer', 'Approve').click();
    await eventually(
      async () => (await entryButton(second.page, 'pay the caterer', 'Approve').count()) === 0,
      'the approved request to leave the pending list',
    );
    const granted = await poll();
    assert.equal(granted.status, 200, `after two approvals: ${granted.status} ${granted.text}`);
    assert.deepEqual(problems(), []);
    assert.deepEqual(second.problems(), []);
  }),
);
