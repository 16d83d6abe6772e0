// Revoking a grant on /grants: the person clicks Revoke next to the grant,
// and the agent's next /v1/check is denied; the other grant is untouched.
// Renewing one (ADR 0036): Renew extends a grant policy renews at once, and
// for one policy asks someone else to approve, says it waits for them.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CAL, bcAuthorize, cibaGranted, claims, entry, entryButton, eventually, newPage, seed, signIn, withWorld } from '../lib.mjs';

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

test('Renew extends a grant at once, or waits for the person policy names', { timeout: 90_000 }, () =>
  withWorld(async ({ server, browser }) => {
    const { alice, planner } = await seed(server);
    const bob = await server.createUser({ name: 'Bob Example', email: 'bob@example.com', groups: ['staff'] });
    const bobToken = (await server.adminOk('POST', `/v1/users/${bob.id}/tokens`, {})).token;
    await cibaGranted(server, planner, { login_hint: alice.email, scope: 'read', binding_message: 'plan the offsite' });
    // Bob lets Alice's planner write to his calendar: policy asks him, and he approves.
    const asked = await bcAuthorize(server, planner, {
      login_hint: bob.email,
      scope: 'write',
      resource: CAL,
      binding_message: 'book the venue',
    });
    const approved = await server.call('POST', `/v1/approvals/${asked.auth_req_id}/approve`, { bearer: bobToken });
    assert.equal(approved.status, 200, approved.text);
    const grants = async () => (await server.adminOk('GET', `/v1/grants?agent=${planner.id}`)).items;
    const before = await grants();
    const read = before.find((g) => g.purpose === 'plan the offsite');
    const write = before.find((g) => g.purpose === 'book the venue');
    assert.ok(read && write, JSON.stringify(before));

    const { page, problems } = await newPage(browser, server);
    await signIn(page, server, alice.email, alice.password);
    await page.goto(`${server.url}/grants`);
    // Alice gave the first; she owns the agent holding the second.
    await entryButton(page, 'plan the offsite', 'Renew').waitFor();
    await entryButton(page, 'book the venue', 'Renew').waitFor();

    // Policy asks nobody for read: renewed at once, and the page says so.
    await entryButton(page, 'plan the offsite', 'Renew').click();
    const notice = page.locator('#notice');
    await eventually(async () => /Renewed/.test(await notice.innerText()), 'the page to say the grant was renewed');
    const renewed = (await grants()).find((g) => g.id === read.id);
    assert.equal(renewed.reapprovals, 1, JSON.stringify(renewed));
    assert.ok(Date.parse(renewed.expires_at) > Date.parse(read.expires_at), JSON.stringify(renewed));

    // Policy asks Bob for write: the page says it waits, and nothing changes yet.
    await entryButton(page, 'book the venue', 'Renew').click();
    await eventually(
      async () => /waiting for approval/i.test(await notice.innerText()),
      'the page to say the renewal waits for approval',
    );
    const waiting = (await grants()).find((g) => g.id === write.id);
    assert.equal(waiting.expires_at, write.expires_at, 'the grant changed before anyone approved');
    assert.equal(waiting.reapprovals, undefined, JSON.stringify(waiting));
    const inbox = await server.call('GET', '/v1/approvals?status=pending', { bearer: bobToken });
    const request = inbox.body.approvals.find((a) => a.subject.kind === 'reapproval');
    assert.ok(request && request.grant === write.id, inbox.text);

    // Bob approves: the grant is extended in place.
    const done = await server.call('POST', `/v1/approvals/${request.id}/approve`, { bearer: bobToken });
    assert.equal(done.status, 200, done.text);
    const extended = (await grants()).find((g) => g.id === write.id);
    assert.equal(extended.reapprovals, 1, JSON.stringify(extended));
    assert.ok(Date.parse(extended.expires_at) > Date.parse(write.expires_at), JSON.stringify(extended));

    assert.deepEqual(problems(), []);
  }),
);
