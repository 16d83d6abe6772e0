// The authorization-code flow (OAuth 2.1, PKCE S256): the agent sends the
// person to /oauth/authorize; they sign in, read the consent page (agent,
// owner, description, scopes, resource) and click Allow; the browser lands
// on the agent's redirect_uri with code, state and iss (RFC 9207); the agent
// redeems the code once with private_key_jwt and gets a token with sub = the
// person and act.sub = the agent, which introspection confirms. Deny, an
// unregistered redirect_uri and a missing PKCE challenge give no code.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CAL,
  claims,
  login,
  newPage,
  oauth,
  pageText,
  pkce,
  randomId,
  redirectTarget,
  seed,
  withWorld,
} from '../lib.mjs';

test('authorization code with PKCE, consent and a verified token', { timeout: 90_000 }, () =>
  withWorld(async ({ server, browser }) => {
    const target = await redirectTarget();
    try {
      const { alice, planner } = await seed(server, { agent: { redirect_uris: [target.uri] } });
      const authorize = (over = {}) => {
        const p = new URLSearchParams({
          response_type: 'code',
          client_id: planner.id,
          redirect_uri: target.uri,
          scope: 'read',
          resource: CAL,
          ...over,
        });
        for (const [k, v] of Object.entries(over)) if (v === null) p.delete(k);
        return `${server.url}/oauth/authorize?${p}`;
      };
      const { page, problems, documents } = await newPage(browser, server);

      // To the consent page, through the login.
      const { verifier, challenge } = pkce();
      const state = randomId();
      await page.goto(authorize({ code_challenge: challenge, code_challenge_method: 'S256', state }));
      assert.equal(new URL(page.url()).pathname, '/login', `not sent to sign in first: ${page.url()}`);
      await login(page, alice.email, alice.password);
      await page.getByRole('button', { name: 'Allow' }).waitFor();
      await page.getByRole('button', { name: 'Deny' }).waitFor();
      const consent = await pageText(page);
      for (const [what, shown] of [
        ['agent name', planner.name],
        ['description', "plans Alice's week"],
        ['resource', CAL],
      ]) {
        assert.ok(consent.includes(shown), `the consent page does not show the ${what} (${shown}):\n${consent}`);
      }
      assert.ok(
        [alice.name, alice.email].some((o) => consent.includes(o)),
        `the consent page does not show the owner:\n${consent}`,
      );
      // Scopes in plain words: the scope or the actions it covers; and for how long.
      assert.match(consent, /\bread\b|\blist\b/i, `the consent page does not show the scopes:\n${consent}`);
      assert.match(consent, /\b(minutes?|hours?|days?)\b/i, `the consent page does not show the duration:\n${consent}`);

      // Allow: back at the agent with code, state and iss.
      const landed = target.next();
      await page.getByRole('button', { name: 'Allow' }).click();
      const cb = await landed;
      assert.equal(cb.pathname, '/callback');
      const code = cb.searchParams.get('code');
      assert.ok(code, `no code in ${cb}`);
      assert.equal(cb.searchParams.get('state'), state);
      assert.equal(cb.searchParams.get('iss'), server.issuer);
      assert.equal(cb.searchParams.get('error'), null);

      // Redeemed once, by the agent, with the verifier.
      const redeem = (extra = {}) =>
        oauth(server, planner, '/oauth/token', {
          grant_type: 'authorization_code',
          code,
          redirect_uri: target.uri,
          code_verifier: verifier,
          ...extra,
        });
      const wrongVerifier = await redeem({ code_verifier: pkce().verifier });
      assert.equal(wrongVerifier.status, 400, `a wrong code_verifier: ${wrongVerifier.status} ${wrongVerifier.text}`);
      assert.equal(wrongVerifier.body?.error, 'invalid_grant');
      // A wrong verifier may have burnt the code (single use): ask for a fresh one.
      let tokens = await redeem();
      let usedCode = code;
      if (tokens.status !== 200) {
        assert.equal(tokens.body?.error, 'invalid_grant', `redeem: ${tokens.status} ${tokens.text}`);
        const again = pkce();
        const state2 = randomId();
        const next = target.next();
        await page.goto(authorize({ code_challenge: again.challenge, code_challenge_method: 'S256', state: state2 }));
        await page.getByRole('button', { name: 'Allow' }).click();
        const cb2 = await next;
        assert.equal(cb2.searchParams.get('state'), state2);
        usedCode = cb2.searchParams.get('code');
        tokens = await oauth(server, planner, '/oauth/token', {
          grant_type: 'authorization_code',
          code: usedCode,
          redirect_uri: target.uri,
          code_verifier: again.verifier,
        });
      }
      assert.equal(tokens.status, 200, `redeem: ${tokens.status} ${tokens.text}`);
      const c = claims(tokens.body.access_token);
      assert.equal(c.sub, alice.id);
      assert.equal(c.act?.sub, planner.id);
      assert.equal(c.client_id, planner.id);
      assert.equal(c.aud, CAL);
      assert.equal(c.scope, 'read');
      const intro = await server.introspect(tokens.body.access_token);
      assert.equal(intro.active, true, JSON.stringify(intro));
      assert.equal(intro.sub, alice.id);
      // Single use.
      const reuse = await oauth(server, planner, '/oauth/token', {
        grant_type: 'authorization_code',
        code: usedCode,
        redirect_uri: target.uri,
        code_verifier: verifier,
      });
      assert.equal(reuse.status, 400, `a code redeemed twice: ${reuse.status} ${reuse.text}`);
      assert.equal(reuse.body?.error, 'invalid_grant');
      // …and a replayed code revokes what it gave (RFC 6749 §4.1.2).
      assert.equal((await server.introspect(tokens.body.access_token)).active, false, 'a replayed code left its token live');

      // Deny: back at the agent with access_denied, state and iss, no code.
      const denyState = randomId();
      const denied = target.next();
      await page.goto(authorize({ code_challenge: pkce().challenge, code_challenge_method: 'S256', state: denyState }));
      await page.getByRole('button', { name: 'Deny' }).click();
      const cbDenied = await denied;
      assert.equal(cbDenied.searchParams.get('error'), 'access_denied', `${cbDenied}`);
      assert.equal(cbDenied.searchParams.get('state'), denyState);
      assert.equal(cbDenied.searchParams.get('iss'), server.issuer);
      assert.equal(cbDenied.searchParams.get('code'), null);

      // An unregistered redirect_uri is never followed; no PKCE, no code.
      const before = target.hits.length;
      const bad = await page.goto(
        authorize({
          redirect_uri: `${target.base}/elsewhere`,
          code_challenge: pkce().challenge,
          code_challenge_method: 'S256',
          state: randomId(),
        }),
      );
      assert.ok(bad.status() >= 400, `an unregistered redirect_uri: ${bad.status()} ${page.url()}`);
      assert.equal(target.hits.length, before, 'the browser was sent to an unregistered redirect_uri');
      assert.equal(await page.getByRole('button', { name: 'Allow' }).count(), 0);
      const noPkce = await page.goto(authorize({ state: randomId() }));
      await page.waitForLoadState('load');
      assert.equal(await page.getByRole('button', { name: 'Allow' }).count(), 0, 'consent offered without PKCE');
      for (const u of target.hits.slice(before)) {
        assert.equal(u.searchParams.get('code'), null, `a code without PKCE: ${u}`);
      }
      assert.ok(noPkce === null || noPkce.status() !== 500, 'a server error without PKCE');
      const plain = await page.goto(
        authorize({ code_challenge: pkce().verifier, code_challenge_method: 'plain', state: randomId() }),
      );
      await page.waitForLoadState('load');
      assert.equal(await page.getByRole('button', { name: 'Allow' }).count(), 0, 'consent offered with PKCE plain');
      for (const u of target.hits.slice(before)) assert.equal(u.searchParams.get('code'), null, `${u}`);
      assert.ok(plain === null || plain.status() !== 500, 'a server error with PKCE plain');

      // Every page had the security headers; no CSP violation or script error.
      assert.ok(documents.length >= 3, `pages seen: ${documents}`);
      assert.deepEqual(problems(), []);
      for (const path of ['/login', '/approvals', '/grants', '/agents', '/audit']) {
        const r = await server.call('GET', path);
        const csp = r.headers.get('content-security-policy') || '';
        assert.match(csp, /frame-ancestors 'none'/, `${path}: CSP "${csp}"`);
        assert.ok(r.headers.get('referrer-policy'), `${path}: no Referrer-Policy`);
      }
    } finally {
      await target.close();
    }
  }),
);
