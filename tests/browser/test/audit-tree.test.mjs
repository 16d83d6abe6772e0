// The audit view draws the delegation tree of a grant: Alice → her planner
// (CIBA grant) → the summarizer it spawned (token exchange). Another user
// does not get to see it.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cibaGranted, claims, exchange, newPage, pageText, screenshot, seed, signIn, withWorld } from '../lib.mjs';

/** Where the first of `labels` appears in `text`, or -1. */
function position(text, labels) {
  const found = labels.map((l) => text.indexOf(l)).filter((i) => i >= 0);
  return found.length ? Math.min(...found) : -1;
}

test('the audit tree shows the delegation chain', { timeout: 90_000 }, () =>
  withWorld(async ({ server, browser }) => {
    const { alice, planner, checker } = await seed(server);
    const bob = await server.createUser({ name: 'Bob Other', email: 'bob@example.com', password: 'another long passphrase' });
    const granted = await cibaGranted(server, planner, {
      login_hint: alice.email,
      scope: 'read',
      binding_message: 'plan the offsite',
    });
    const parent = claims(granted.access_token);
    const summarizer = await server.spawnAgent(planner, {
      name: 'Summarizer',
      owner: alice.id,
      description: 'summarises the week',
    });
    const hop = await exchange(server, summarizer, granted.access_token, { scope: 'read' });
    assert.equal(hop.status, 200, `exchange: ${hop.status} ${hop.text}`);
    const hc = claims(hop.body.access_token);
    assert.equal(hc.act?.sub, summarizer.id);
    assert.equal(hc.act?.act?.sub, planner.id);

    const { page, problems } = await newPage(browser, server);
    await signIn(page, server, alice.email, alice.password);
    const traceUrl = `${server.url}/audit/trace/${parent.grant_id}`;
    await page.goto(traceUrl);
    assert.equal(new URL(page.url()).pathname, `/audit/trace/${parent.grant_id}`);
    await page
      .getByText(summarizer.name)
      .or(page.getByText(summarizer.id))
      .first()
      .waitFor();
    // The tree itself: a list (or an ARIA tree) named "Delegation tree".
    const tree = page.getByRole('list', { name: /delegation tree/i }).or(page.getByRole('tree')).first();
    await tree.waitFor();
    const text = await tree.innerText();
    const user = position(text, [alice.name, alice.email, alice.id]);
    const agent = position(text, [planner.name, planner.id]);
    const sub = position(text, [summarizer.name, summarizer.id]);
    assert.ok(user >= 0, `the user is not in the tree:\n${text}`);
    assert.ok(agent >= 0, `the agent is not in the tree:\n${text}`);
    assert.ok(sub >= 0, `the sub-agent is not in the tree:\n${text}`);
    assert.ok(user < agent && agent < sub, `the tree is not drawn user → agent → sub-agent:\n${text}`);
    // Drawn with nested list items (or tree items): the sub-agent's item
    // sits inside the agent's, which sits inside the user's.
    const item = 'xpath=ancestor::*[self::li or @role="treeitem"]';
    const items = tree.getByRole('listitem').or(tree.getByRole('treeitem'));
    const subItem = items.filter({ hasText: summarizer.name }).or(items.filter({ hasText: summarizer.id })).last();
    assert.ok((await subItem.count()) > 0, 'the sub-agent has no item of its own in the tree');
    const nestedUnderAgent = subItem
      .locator(item)
      .filter({ hasText: planner.name })
      .or(subItem.locator(item).filter({ hasText: planner.id }));
    assert.ok((await nestedUnderAgent.count()) > 0, 'the sub-agent is not nested under the agent');
    const userItems = nestedUnderAgent.last().locator(item);
    const nestedUnderUser = userItems.filter({ hasText: alice.name }).or(userItems.filter({ hasText: alice.id }));
    assert.ok((await nestedUnderUser.count()) > 0, 'the agent is not nested under the user');
    // The tokens of the tree are named.
    assert.ok(text.includes(hc.jti) && text.includes(parent.jti), `the tokens are not shown:\n${text}`);
    assert.deepEqual(problems(), []);

    // The sub-agent acts: its decision appears under its token.
    assert.equal((await server.check(checker, hop.body.access_token, 'list')).decision, 'allow');
    await page.reload();
    await tree.getByText(/check/).first().waitFor();
    await screenshot(page, 'audit-tree.png');

    // Bob may not see Alice's tree.
    const other = await newPage(browser, server);
    await signIn(other.page, server, bob.email, bob.password);
    const resp = await other.page.goto(traceUrl);
    const seen = await pageText(other.page);
    assert.ok(
      !seen.includes(summarizer.id) && !seen.includes(planner.id) && !seen.includes(summarizer.name),
      `Bob sees Alice's delegation tree (${resp.status()}):\n${seen}`,
    );
  }),
);
