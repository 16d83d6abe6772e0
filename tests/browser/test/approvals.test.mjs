// The approvals inbox: an agent asks for a grant by CIBA and polls; the
// person sees the request (binding message, action, resource, chain) on
// /approvals and clicks Approve (or Deny); the list updates without a page
// reload, and the agent's next poll gets its tokens (or access_denied).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CAL,
  bcAuthorize,
  cibaPoller,
  claims,
  entry,
  entryButton,
  eventually,
  newPage,
  screenshot,
  seed,
  signIn,
  withWorld,
} from '../lib.mjs';


test('an approval given in the inbox while the agent polls', { timeout: 90_000 }, () =>
  withWorld(async ({ server, browser }) => {
    const { alice, planner } = await seed(server);
    // write needs Alice's approval (policy @approval("user")).
    const ask = (binding_message) =>
      bcAuthorize(server, planner, { login_hint: alice.email, scope: 'read write', resource: CAL, binding_message });
    const toApprove = await ask('book the venue');
    const toDeny = await ask('cancel the offsite');
    const pollApproved = cibaPoller(server, planner, toApprove.auth_req_id, toApprove.interval);
    const pollDenied = cibaPoller(server, planner, toDeny.auth_req_id, toDeny.interval);
    for (const poll of [pollApproved, pollDenied]) {
      const r = await poll();
      assert.equal(r.body?.error, 'authorization_pending', `first poll: ${r.status} ${r.text}`);
    }

    const { page, problems } = await newPage(browser, server);
    await signIn(page, server, alice.email, alice.password);
    await page.goto(`${server.url}/approvals`);
    assert.equal(new URL(page.url()).pathname, '/approvals');
    await page.getByText('book the venue').first().waitFor();
    await page.getByText('cancel the offsite').first().waitFor();
    const approveEntry = entry(page, 'book the venue');
    await entryButton(page, 'book the venue', 'Approve').waitFor();
    await entryButton(page, 'cancel the offsite', 'Deny').waitFor();
    // What is asked, of what, and by whom (the chain: the planner alone).
    const shown = await approveEntry.innerText();
    assert.match(shown, /write/i, `the action is not shown: ${shown}`);
    assert.ok(shown.includes(CAL) || shown.includes('Calendar'), `the resource is not shown: ${shown}`);
    assert.ok(shown.includes(planner.name) || shown.includes(planner.id), `the agent is not shown: ${shown}`);
    assert.equal(await entryButton(page, 'book the venue', 'Deny').count(), 1, 'no Deny next to Approve');
    await screenshot(page, 'approvals.png');

    // From here on, no navigation: the list updates in place.
    let navigations = 0;
    page.on('framenavigated', (f) => {
      if (f === page.mainFrame()) navigations++;
    });
    await page.evaluate(() => {
      window.__sameDocument = true;
    });

    // Still pending while Alice reads.
    const r = await pollApproved();
    assert.equal(r.body?.error, 'authorization_pending', `poll before the decision: ${r.status} ${r.text}`);

    await entryButton(page, 'book the venue', 'Approve').click();
    await eventually(
      async () => (await entryButton(page, 'book the venue', 'Approve').count()) === 0,
      'the approved request to leave the pending list',
    );
    await entryButton(page, 'cancel the offsite', 'Deny').click();
    await eventually(
      async () => (await entryButton(page, 'cancel the offsite', 'Deny').count()) === 0,
      'the denied request to leave the pending list',
    );
    assert.equal(navigations, 0, 'the page navigated to decide');
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page was reloaded');

    // The agent's next polls: tokens for the approved one, access_denied for the other.
    const granted = await pollApproved();
    assert.equal(granted.status, 200, `poll after Approve: ${granted.status} ${granted.text}`);
    assert.equal(granted.body.scope, 'read write');
    const c = claims(granted.body.access_token);
    assert.equal(c.sub, alice.id);
    assert.equal(c.act?.sub, planner.id);
    assert.equal(c.purpose, 'book the venue');
    const denied = await pollDenied();
    assert.equal(denied.body?.error, 'access_denied', `poll after Deny: ${denied.status} ${denied.text}`);
    const grants = await server.adminOk('GET', `/v1/grants?user=${alice.id}`);
    assert.equal(grants.items.length, 1);
    assert.equal(grants.items[0].approved_by, alice.id);

    // A request that arrives after those decisions shows up on its own.
    const late = await ask('move the standup');
    await entryButton(page, 'move the standup', 'Approve').waitFor({ timeout: 10_000 });
    // Decided elsewhere meanwhile (Alice's API token): the page's Approve
    // is refused in place, with the reason, and nothing navigates.
    const { token: aliceToken } = await server.adminOk('POST', `/v1/users/${alice.id}/tokens`, {});
    const elsewhere = await fetch(`${server.url}/v1/approvals/${late.auth_req_id}/deny`, {
      method: 'POST',
      headers: { authorization: `Bearer ${aliceToken}` },
    });
    assert.equal(elsewhere.status, 200);
    await entryButton(page, 'move the standup', 'Approve').click();
    await page.getByRole('status').filter({ hasText: 'no longer the one shown' }).waitFor();
    assert.equal(navigations, 0, 'a refused decision navigated');

    // A fresh look: nothing is pending any more.
    await page.reload();
    await page.waitForLoadState('load');
    assert.equal(await page.getByRole('button', { name: 'Approve' }).count(), 0, 'a decided request is still pending');

    // The one expected failure: the refused decision on the late request.
    assert.deepEqual(problems().filter((p) => !p.includes(late.auth_req_id)), []);
  }),
);
