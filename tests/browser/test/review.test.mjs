// The /review page (DESIGN §12, ADR 0033): an owner decides the items of an
// access review campaign assigned to them (Revoke ends the grant's tokens at
// once, Narrow keeps the scopes typed in, Keep changes nothing), and an
// auditor starts a campaign and sees its progress. The server calls
// everything unused since now stale (`--review-stale-days 0`), and a
// day-long grant expiring (`--review-expiring-days 1`, ADR 0036).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CAL, bcAuthorize, cibaGranted, cibaPoller, claims, eventually, newPage, seed, signIn, withWorld } from '../lib.mjs';

const withReviewWorld = (body) =>
  withWorld(body, { args: ['--review-stale-days', '0', '--review-expiring-days', '1'] });

/** The item row about `subject` of `kind`. */
function itemRow(page, kind, subject) {
  return page.getByRole('row').filter({ hasText: kind }).filter({ hasText: subject });
}

const inAWeek = () => new Date(Date.now() + 7 * 86_400_000).toISOString();

test('the owner decides review items on /review and each is applied at once', { timeout: 90_000 }, () =>
  withReviewWorld(async ({ server, browser }) => {
    const { alice, planner, checker } = await seed(server);
    const doomed = await cibaGranted(server, planner, { login_hint: alice.email, scope: 'read', binding_message: 'old' });
    // write needs Alice's approval under the seed's policy: she approves
    // with her own API token.
    const aliceToken = (await server.adminOk('POST', `/v1/users/${alice.id}/tokens`, {})).token;
    const wide = await bcAuthorize(server, planner, { login_hint: alice.email, scope: 'read write', resource: CAL, binding_message: 'wide' });
    const approved = await server.call('POST', `/v1/approvals/${wide.auth_req_id}/approve`, { bearer: aliceToken });
    assert.equal(approved.status, 200, approved.text);
    const polled = await cibaPoller(server, planner, wide.auth_req_id)();
    assert.equal(polled.status, 200, `CIBA poll: ${polled.status} ${polled.text}`);
    const broad = polled.body;
    const doomedId = claims(doomed.access_token).grant_id;
    const broadId = claims(broad.access_token).grant_id;
    await new Promise((r) => setTimeout(r, 1100));
    const campaign = await server.adminOk('POST', '/v1/review/campaigns', {
      scope: { owner: alice.id }, deadline: inAWeek(), default: 'keep',
    });
    assert.ok(campaign.items_total >= 2, JSON.stringify(campaign));
    assert.equal((await server.check(checker, doomed.access_token, 'list')).decision, 'allow');

    const { page, problems } = await newPage(browser, server);
    await signIn(page, server, alice.email, alice.password);
    await page.getByRole('link', { name: 'Review' }).click();
    await page.waitForLoadState('load');
    assert.equal(new URL(page.url()).pathname, '/review');
    const row = itemRow(page, 'stale', doomedId);
    await row.getByRole('button', { name: 'Revoke' }).waitFor();
    // Kind, subject, evidence, suggestion and the deadline are shown; a
    // person who is no auditor is offered no campaign form.
    const shown = await row.innerText();
    assert.match(shown, /revoke/i, shown);
    assert.match(shown, /UTC/, shown);
    assert.equal(await page.getByRole('button', { name: 'Start a campaign' }).count(), 0);

    // Revoke: the grant's tokens stop working at once.
    await row.getByRole('button', { name: 'Revoke' }).click();
    await eventually(async () => /token\(s\)/.test(await page.locator('#notice').innerText()), 'the cascade to be shown');
    assert.match(await page.locator('#notice').innerText(), /1 token\(s\) and 0 grant\(s\) revoked/);
    assert.equal(await itemRow(page, 'stale', doomedId).count(), 0, 'the decided item is still offered');
    assert.equal((await server.check(checker, doomed.access_token, 'list')).decision, 'deny');
    assert.equal((await server.introspect(doomed.access_token)).active, false);

    // Narrow: the field starts empty for a stale finding (no narrower set
    // is suggested); the person keeps read.
    const broadRow = itemRow(page, 'stale', broadId);
    await broadRow.getByLabel('Scopes to keep').fill('read');
    await broadRow.getByRole('button', { name: 'Narrow' }).click();
    await eventually(async () => /narrowed/.test(await page.locator('#notice').innerText()), 'the narrowing to be shown');
    const grants = (await server.adminOk('GET', `/v1/grants?user=${alice.id}`)).items;
    const narrowed = grants.find((g) => g.id === broadId);
    assert.equal(narrowed?.status, 'active', JSON.stringify(grants));
    assert.ok(!JSON.stringify(narrowed.scopes).includes('write'), JSON.stringify(narrowed));
    assert.equal((await server.introspect(broad.access_token)).active, false, 'a token of the wider set still works');

    // Keep: recorded, nothing changes.
    const expiring = itemRow(page, 'expiring', broadId);
    await expiring.getByRole('button', { name: 'Keep' }).click();
    await eventually(async () => /kept/.test(await page.locator('#notice').innerText()), 'the keep to be shown');
    const items = (await server.adminOk('GET', `/v1/review/campaigns/${campaign.id}`)).items;
    const decided = items.filter((i) => i.decision !== null).map((i) => [i.finding.kind, i.finding.subject, i.decision]);
    assert.deepEqual(
      decided.sort(),
      [['expiring', broadId, 'keep'], ['stale', broadId, 'narrow'], ['stale', doomedId, 'revoke']].sort(),
    );
    assert.deepEqual(problems(), []);
  }),
);

test('an auditor starts a campaign on /review and sees its progress', { timeout: 90_000 }, () =>
  withReviewWorld(async ({ server, browser }) => {
    const { alice, planner } = await seed(server);
    await cibaGranted(server, planner, { login_hint: alice.email, scope: 'read', binding_message: 'week' });
    const bob = await server.createUser({
      name: 'Bob Auditor', email: 'bob@example.com', groups: ['mandate-auditors'], password: 'correct horse battery staple',
    });
    await new Promise((r) => setTimeout(r, 1100));
    const { page, problems } = await newPage(browser, server);
    await signIn(page, server, bob.email, bob.password);
    await page.goto(`${server.url}/review`);
    await page.getByText('No campaign is open.').waitFor();
    await page.getByLabel('Owner').fill(alice.id);
    await page.getByLabel('Deadline (UTC)').fill(inAWeek().slice(0, 16));
    await page.getByLabel('Default for undecided items').selectOption('revoke');
    await page.getByRole('button', { name: 'Start a campaign' }).click();
    await eventually(async () => /Started campaign rvc_/.test(await page.locator('#notice').innerText()), 'the campaign to start');
    const notice = await page.locator('#notice').innerText();
    const id = notice.match(/rvc_[0-9A-Z]{26}/)?.[0];
    assert.ok(id, notice);
    const row = page.getByRole('row').filter({ hasText: id });
    await row.waitFor();
    const created = await server.adminOk('GET', `/v1/review/campaigns/${id}`);
    assert.equal(created.created_by, bob.id);
    assert.equal(created.default, 'revoke');
    assert.ok(created.items_total >= 1 && created.items.every((i) => i.assignee === alice.id), JSON.stringify(created));
    assert.match(await row.innerText(), new RegExp(`0 of ${created.items_total}`));
    // A bad deadline is refused in place, and starts nothing.
    await page.getByLabel('Deadline (UTC)').fill('2001-01-01T00:00');
    await page.getByRole('button', { name: 'Start a campaign' }).click();
    await eventually(async () => /future/.test(await page.locator('#notice').innerText()), 'the refusal to be shown');
    assert.equal((await server.adminOk('GET', '/v1/review/campaigns')).items.length, 1);
    // The one refusal the page was meant to get.
    assert.deepEqual(problems().filter((p) => !/^400 POST .*\/review\/campaigns /.test(p)), []);
  }),
);
