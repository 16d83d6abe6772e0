// Login and logout: a wrong password is refused on /login, the right one
// signs in, "Sign out" signs out (and the old session is dead); the session
// cookie is HttpOnly and SameSite, and never accepted as an API token; the
// login form is protected against CSRF.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { login, newPage, seed, withWorld } from '../lib.mjs';

test('login and logout', { timeout: 90_000 }, () =>
  withWorld(async ({ server, browser }) => {
    const { alice } = await seed(server);
    const { context, page, problems } = await newPage(browser, server);

    // A wrong password: an error, still on /login, not signed in.
    const first = await page.goto(`${server.url}/login`);
    assert.equal(first?.status(), 200, `GET /login answered ${first?.status()}`);
    await login(page, alice.email, 'not the password');
    assert.equal(new URL(page.url()).pathname, '/login', `a wrong password left /login for ${page.url()}`);
    const error = page.getByRole('alert').or(page.getByText(/invalid|incorrect|wrong|did not match|not recogni[sz]ed/i));
    await error.first().waitFor({ state: 'visible' });
    assert.equal(await page.getByRole('button', { name: 'Sign out' }).count(), 0, 'signed in with a wrong password');
    // The form is there again, ready for another try.
    await page.getByLabel('Password').waitFor();

    // The right one: signed in, somewhere else than /login.
    await login(page, alice.email, alice.password);
    assert.notEqual(new URL(page.url()).pathname, '/login', 'the right password stayed on /login');
    await page.getByRole('button', { name: 'Sign out' }).waitFor({ state: 'visible' });

    // The session cookie: HttpOnly, SameSite, and no API token.
    const cookies = await context.cookies(server.url);
    assert.ok(cookies.length > 0, 'no cookie after signing in');
    const session = cookies.filter((c) => c.httpOnly);
    assert.ok(session.length > 0, `no HttpOnly cookie among ${JSON.stringify(cookies)}`);
    for (const c of cookies) {
      assert.ok(['Strict', 'Lax'].includes(c.sameSite), `cookie ${c.name} has SameSite=${c.sameSite}`);
    }
    const cookieHeader = cookies.map((c) => `${c.name}=${c.value}`).join('; ');
    for (const path of ['/v1/grants', '/v1/approvals', '/v1/audit']) {
      const r = await server.call('GET', path, { headers: { cookie: cookieHeader } });
      assert.equal(r.status, 401, `GET ${path} with the session cookie: ${r.status} ${r.text}`);
    }
    for (const c of session) {
      const r = await server.call('GET', '/v1/grants', { bearer: c.value });
      assert.equal(r.status, 401, `GET /v1/grants with cookie ${c.name} as a bearer token: ${r.status}`);
    }
    // Signed-in pages work with the cookie.
    await page.goto(`${server.url}/grants`);
    assert.equal(new URL(page.url()).pathname, '/grants');

    // Sign out: back to signing in, and the old session cookie is dead.
    await Promise.all([page.waitForLoadState('load'), page.getByRole('button', { name: 'Sign out' }).click()]);
    await page.getByRole('button', { name: 'Sign in' }).waitFor({ state: 'visible' });
    await page.goto(`${server.url}/grants`);
    await page.getByRole('button', { name: 'Sign in' }).waitFor({ state: 'visible' });
    assert.equal(await page.getByRole('button', { name: 'Sign out' }).count(), 0, 'still signed in after Sign out');
    const replay = await browser.newContext();
    await replay.addCookies(session.map(({ name, value, domain, path }) => ({ name, value, domain, path })));
    const again = await replay.newPage();
    await again.goto(`${server.url}/grants`);
    await again.getByRole('button', { name: 'Sign in' }).waitFor({ state: 'visible' });
    assert.equal(await again.getByRole('button', { name: 'Sign out' }).count(), 0, 'a signed-out session still works');
    await replay.close();

    // CSRF: the right credentials posted without the form's token sign nobody in.
    const forged = await server.form('/login', { email: alice.email, password: alice.password });
    assert.ok(
      forged.status >= 400 && forged.status < 500,
      `a login posted without a CSRF token: ${forged.status} ${forged.text.slice(0, 200)}`,
    );
    const jar = forged.headers
      .getSetCookie()
      .map((c) => c.split(';')[0])
      .join('; ');
    if (jar) {
      const r = await server.call('GET', '/grants', { headers: { cookie: jar } });
      assert.ok(!(r.status === 200 && r.text.includes('Sign out')), 'a login posted without a CSRF token set a session');
    }

    // Every page carried the security headers; no CSP violation or script error.
    assert.deepEqual(problems(), []);
  }),
);
