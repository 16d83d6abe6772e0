// The MCP TypeScript SDK (@modelcontextprotocol/sdk 1.x), unmodified, in
// front of `mandate gateway` and server-everything: a public client that
// names itself by a client metadata document (CIMD) and goes through the
// code flow in chromium, and a confidential agent with private_key_jwt.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { McpError } from '@modelcontextprotocol/sdk/types.js';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { PrivateKeyJwtProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';
import { claims, http, newKey, personAtBrowser, redirectListener, sleep } from '../lib.mjs';
import { approveAsPerson, personToken, startWorld } from '../world.mjs';
import { Session, TestProvider, recordingFetch, showExchanges } from '../sdk-client.mjs';

let w;
let person;
let listener;

before(async () => {
  w = await startWorld();
  person = await personAtBrowser(w.browser, w.person);
  listener = await redirectListener();
  w.closers.push(() => listener.close(), () => person.close());
});

after(async () => {
  await w?.stop();
});

/** Adds the processes' output and the HTTP exchanges to a failure. */
async function explained(log, body) {
  try {
    await body();
  } catch (e) {
    e.message += `\n--- HTTP exchanges (last 25) ---\n${showExchanges(log)}\n${w.logs()}`;
    throw e;
  }
}

const text = (result) => result.content.filter((c) => c.type === 'text').map((c) => c.text).join('\n');

/** A public client's metadata document, served on https, and its provider. */
function cimdClient(name, scope) {
  const path = `/clients/${name}.json`;
  const url = w.docs.put(path, {
    client_id: `${w.docs.base}${path}`,
    client_name: `MCP TypeScript SDK (${name})`,
    client_uri: w.docs.base,
    redirect_uris: [listener.uri],
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  });
  const provider = new TestProvider({
    redirectUrl: listener.uri,
    clientMetadataUrl: url,
    clientMetadata: {
      client_name: `MCP TypeScript SDK (${name})`,
      redirect_uris: [listener.uri],
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      scope,
    },
  });
  return { url, provider };
}

test('TypeScript SDK: CIMD, code flow in chromium, filtered list, allow / deny / approval, refresh', { timeout: 120_000 }, async () => {
  const log = [];
  // The open route advertises no scopes, so the SDK asks for the ones in
  // its client metadata: with offline_access, for a refresh token.
  const { url: cimd, provider } = cimdClient('main', 'tools:read tools:env offline_access');
  const s = new Session({ url: w.openResource, provider, person, listener, issuer: w.mandate.issuer, log });
  await explained(log, async () => {
    // Connect: 401 from the gateway, RFC 9728 metadata, RFC 8414 metadata,
    // the URL as client_id, consent in chromium, the code redeemed.
    // The consent page names the resource, says the client registered
    // itself (unverified) and where it describes itself.
    await s.connect([w.openResource, "unverified", cimd]);
    const first = log.find((e) => e.url === w.openResource && e.status === 401);
    assert.ok(first, 'the gateway did not answer 401 first');
    assert.match(first.wwwAuthenticate, /^Bearer /);
    assert.ok(
      first.wwwAuthenticate.includes(`resource_metadata="${w.gatewayUrl}/.well-known/oauth-protected-resource/mcp/open"`),
      first.wwwAuthenticate,
    );
    assert.ok(!/scope=/.test(first.wwwAuthenticate), `the open route names no scope: ${first.wwwAuthenticate}`);
    assert.ok(
      log.some((e) => e.url === `${w.gatewayUrl}/.well-known/oauth-protected-resource/mcp/open` && e.status === 200),
      'no RFC 9728 metadata fetched',
    );
    assert.ok(
      log.some((e) => e.url === `${w.mandate.url}/.well-known/oauth-authorization-server` && e.status === 200),
      'no RFC 8414 metadata fetched',
    );
    assert.equal(log.filter((e) => e.url.endsWith('/oauth/register')).length, 0, 'CIMD, not dynamic registration');
    const authz = provider.authorizationUrls[0];
    assert.equal(authz.origin + authz.pathname, `${w.mandate.url}/oauth/authorize`);
    assert.equal(authz.searchParams.get('client_id'), cimd, 'the document URL is the client_id');
    assert.equal(authz.searchParams.get('resource'), w.openResource, 'RFC 8707 resource');
    assert.equal(authz.searchParams.get('code_challenge_method'), 'S256');
    assert.equal(authz.searchParams.get('scope'), 'tools:read tools:env offline_access');
    assert.ok(w.docs.fetches.some((f) => f.path === '/clients/main.json'), 'Mandate did not fetch the document');
    // The consent page named the unverified client by its document.
    assert.ok(s.consents[0].page.includes(cimd), `the consent page does not show the document URL:\n${s.consents[0].page}`);
    const tokenCall = log.find((e) => e.url === `${w.mandate.url}/oauth/token` && e.status === 200);
    assert.ok(tokenCall, 'no token obtained');
    const form = new URLSearchParams(tokenCall.body);
    assert.equal(form.get('grant_type'), 'authorization_code');
    assert.equal(form.get('client_id'), cimd, 'a public client names itself');
    assert.equal(form.get('resource'), w.openResource);
    assert.ok(form.get('code_verifier'), 'PKCE verifier sent');
    const t1 = provider.tokens();
    assert.ok(t1.refresh_token, 'offline_access brings a refresh token');
    const c1 = claims(t1.access_token);
    assert.equal(c1.aud, w.openResource);
    assert.equal(c1.sub, w.person.id, 'the person is the subject');
    assert.match(c1.client_id, /^agt_/, 'the document became an agent');
    // The access token carries the resource's scopes; offline_access is
    // the refresh token's (Mandate leaves it out of the response's scope).
    assert.deepEqual(new Set(c1.scope.split(' ')), new Set(['tools:read', 'tools:env']));
    assert.equal(s.client.getServerVersion()?.name?.length > 0, true, 'initialized with server-everything');

    // tools/list: filtered by the check API. get-env is forbidden (hidden),
    // get-tiny-image needs a scope the token lacks (hidden), and the tools
    // no scope names are hidden too; get-sum needs approval (listed).
    const { tools } = await s.run((c) => c.listTools());
    const names = tools.map((t) => t.name).sort();
    assert.deepEqual(names, ['echo', 'get-sum'], `listed: ${names.join(', ')}`);

    // Allowed.
    const echoed = await s.run((c) => c.callTool({ name: 'echo', arguments: { message: 'hello through Mandate' } }));
    assert.equal(echoed.isError ?? false, false, JSON.stringify(echoed));
    assert.match(text(echoed), /hello through Mandate/);

    // Denied by the forbid: a JSON-RPC error, nothing forwarded.
    const upstreamPosts = () => w.upstreamSeen.filter((q) => q.method === 'POST').length;
    const postsBefore = upstreamPosts();
    await assert.rejects(
      s.run((c) => c.callTool({ name: 'get-env', arguments: {} })),
      (e) => {
        assert.ok(e instanceof McpError, `not an McpError: ${e}`);
        assert.equal(e.code, -32001, e.message);
        assert.equal(e.data?.error, 'access_denied', JSON.stringify(e.data));
        return true;
      },
    );

    // Needs approval: the error carries the request and the page.
    let approval;
    await assert.rejects(
      s.run((c) => c.callTool({ name: 'get-sum', arguments: { a: 2, b: 3 } })),
      (e) => {
        assert.ok(e instanceof McpError, `not an McpError: ${e}`);
        assert.equal(e.code, -32002, e.message);
        assert.equal(e.data?.error, 'approval_required', JSON.stringify(e.data));
        assert.match(e.data?.approval_request ?? '', /^apr_/, JSON.stringify(e.data));
        assert.equal(e.data?.approval_url, `${w.mandate.url}/approvals`);
        approval = e.data.approval_request;
        return true;
      },
    );
    assert.equal(upstreamPosts(), postsBefore, 'a refused call reached the upstream');
    const pending = await http('GET', `${w.mandate.url}/v1/approvals?status=pending`, {
      bearer: await personToken(w),
    });
    assert.equal(pending.status, 200, pending.text);
    assert.ok(JSON.stringify(pending.body).includes(approval), `the person does not see ${approval}: ${pending.text}`);
    await approveAsPerson(w, approval);
    const sum = await s.run((c) => c.callTool({ name: 'get-sum', arguments: { a: 2, b: 3 } }));
    assert.equal(sum.isError ?? false, false, JSON.stringify(sum));
    assert.match(text(sum), /\b5\b/);
    // Single use: the next call asks again.
    await assert.rejects(
      s.run((c) => c.callTool({ name: 'get-sum', arguments: { a: 2, b: 3 } })),
      (e) => e instanceof McpError && e.code === -32002,
    );

    // Refresh: once the access token has expired the gateway answers 401,
    // and the SDK refreshes (offline_access) and sends the call again.
    const before = provider.tokenHistory.length;
    const wait = (claims(provider.tokens().access_token).exp + 1) * 1000 - Date.now();
    if (wait > 0) await sleep(wait);
    const again = await s.run((c) => c.callTool({ name: 'echo', arguments: { message: 'after the refresh' } }));
    assert.match(text(again), /after the refresh/);
    assert.equal(provider.tokenHistory.length, before + 1, 'no refresh happened');
    const refresh = log.findLast((e) => e.url === `${w.mandate.url}/oauth/token`);
    const rform = new URLSearchParams(refresh.body);
    assert.equal(rform.get('grant_type'), 'refresh_token');
    assert.equal(rform.get('resource'), w.openResource, 'resource sent at refresh (RFC 8707 §2.2)');
    assert.equal(refresh.status, 200, refresh.response);
    const t2 = provider.tokens();
    assert.notEqual(t2.access_token, t1.access_token);
    assert.notEqual(t2.refresh_token, t1.refresh_token, 'the refresh token rotates');
    assert.ok(claims(t2.access_token).exp > claims(provider.tokenHistory[before - 1].access_token).exp);
    assert.equal(provider.authorizationUrls.length, 1, 'no second consent for a refresh');

    // What the upstream saw: never the client's tokens, always one
    // exchanged for its own audience, the person's, with the gateway in act
    // (RFC 8693 §4.1) after the client.
    const mine = w.upstreamSeen.filter((q) => q.body.includes('after the refresh') || q.body.includes('hello through Mandate'));
    assert.equal(mine.length, 2, `the upstream saw ${mine.length} of the two echo calls`);
    const clientTokens = new Set(provider.tokenHistory.map((t) => t.access_token));
    for (const q of w.upstreamSeen.filter((q) => q.method === 'POST')) {
      assert.match(q.authorization ?? '', /^Bearer /, `${q.method} ${q.path} without a token`);
      const token = q.authorization.slice(7);
      assert.ok(!clientTokens.has(token), 'a client token reached the upstream');
    }
    for (const q of mine) {
      const x = claims(q.authorization.slice(7));
      assert.equal(x.aud, w.upstream, 'exchanged for the upstream');
      assert.equal(x.sub, w.person.id);
      assert.equal(x.act?.sub, w.gatewayAgent.id, `act: ${JSON.stringify(x.act)}`);
      assert.equal(x.act?.act?.sub, c1.client_id, `act.act: ${JSON.stringify(x.act)}`);
    }
    await s.close();
    if (process.env.MCP_TEST_DUMP) console.error(showExchanges(log, 100));
  });
});

test('TypeScript SDK: step-up after insufficient_scope, consented in chromium', { timeout: 90_000 }, async () => {
  const log = [];
  const { provider } = cimdClient('stepup', undefined);
  const s = new Session({ url: w.resource, provider, person, listener, issuer: w.mandate.issuer, log });
  await explained(log, async () => {
    // /mcp/everything names its baseline scopes in the 401 (and in its
    // metadata): the SDK asks for exactly those.
    await s.connect();
    const first = log.find((e) => e.url === w.resource && e.status === 401);
    assert.match(first.wwwAuthenticate, /scope="tools:read tools:env"/);
    assert.equal(provider.authorizationUrls[0].searchParams.get('scope'), 'tools:read tools:env');
    assert.deepEqual(new Set(claims(provider.tokens().access_token).scope.split(' ')), new Set(['tools:read', 'tools:env']));
    const { tools } = await s.run((c) => c.listTools());
    assert.deepEqual(tools.map((t) => t.name).sort(), ['echo', 'get-sum'], 'a tool the token cannot call is listed');

    // get-tiny-image needs tools:image: 403 insufficient_scope names it,
    // the SDK authorizes again with it, the person consents, the call is
    // made again and succeeds.
    const image = await s.run((c) => c.callTool({ name: 'get-tiny-image', arguments: {} }));
    const denied = log.find((e) => e.status === 403);
    assert.ok(denied, 'no 403');
    assert.match(denied.wwwAuthenticate, /error="insufficient_scope"/);
    assert.match(denied.wwwAuthenticate, /scope="tools:image"/);
    assert.match(denied.wwwAuthenticate, /resource_metadata="[^"]+\/mcp\/everything"/);
    assert.equal(provider.authorizationUrls.length, 2, 'a second authorization');
    // SDK 1.x asks for the challenged scope alone (it does not add the
    // scopes it held, as SEP-2350 clients do).
    assert.equal(provider.authorizationUrls[1].searchParams.get('scope'), 'tools:image');
    assert.equal(image.isError ?? false, false, JSON.stringify(image));
    assert.ok(image.content.some((c) => c.type === 'image'), JSON.stringify(image).slice(0, 300));
    assert.ok(claims(provider.tokens().access_token).scope.split(' ').includes('tools:image'));
    await s.close();
  });
});

test('TypeScript SDK: a confidential agent with private_key_jwt (client credentials)', { timeout: 60_000 }, async () => {
  const log = [];
  await explained(log, async () => {
    const key = newKey();
    const agent = await w.mandate.adminOk('POST', '/v1/agents', {
      name: 'Nightly report bot',
      owner: w.person.id,
      description: 'a confidential MCP client',
      jwks: { keys: [key.jwk] },
    });
    const provider = new PrivateKeyJwtProvider({
      clientId: agent.client_id || agent.id,
      privateKey: key.privateKey.export({ format: 'jwk' }),
      algorithm: 'EdDSA',
      scope: 'tools:read',
      expectedIssuer: w.mandate.issuer,
    });
    const transport = new StreamableHTTPClientTransport(new URL(w.resource), {
      authProvider: provider,
      fetch: recordingFetch(log),
    });
    const client = new Client({ name: 'mandate-mcp-test-cc', version: '1.0.0' });
    await client.connect(transport);
    const tok = provider.tokens();
    assert.ok(tok?.access_token, 'no token');
    const c = claims(tok.access_token);
    assert.equal(c.sub, agent.client_id || agent.id, 'the agent is the subject');
    assert.equal(c.aud, w.resource);
    const tokenCall = log.find((e) => e.url === `${w.mandate.url}/oauth/token`);
    const form = new URLSearchParams(tokenCall.body);
    assert.equal(form.get('grant_type'), 'client_credentials');
    assert.equal(form.get('client_assertion_type'), 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
    assert.equal(form.get('resource'), w.resource);
    const { tools } = await client.listTools();
    assert.deepEqual(tools.map((t) => t.name).sort(), ['echo', 'get-sum']);
    const r = await client.callTool({ name: 'echo', arguments: { message: 'from a confidential agent' } });
    assert.match(text(r), /from a confidential agent/);
    await client.close();
  });
});

// The SDK also runs in browsers (MCP Inspector's direct connection, web
// apps): there every request to the MCP endpoint is a CORS request, the
// POST with `Authorization` after a preflight, and the SDK must read the
// 401's `WWW-Authenticate`: the MCP endpoint answers the preflight and
// exposes the challenge to any origin.
test('a browser-based MCP client can reach the gateway (CORS)', async () => {
  const origin = 'http://localhost:6274';
  const pre = await fetch(w.resource, {
    method: 'OPTIONS',
    headers: {
      origin,
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization, content-type, mcp-protocol-version',
    },
  });
  assert.ok(pre.status >= 200 && pre.status < 300, `preflight: ${pre.status}`);
  assert.ok(pre.headers.get('access-control-allow-origin'), 'preflight without Access-Control-Allow-Origin');
  const r = await fetch(w.resource, {
    method: 'POST',
    headers: { origin, 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: {} }),
  });
  assert.equal(r.status, 401);
  assert.ok(r.headers.get('access-control-allow-origin'), '401 without Access-Control-Allow-Origin');
  assert.match(r.headers.get('access-control-expose-headers') ?? '', /www-authenticate/i, 'WWW-Authenticate not exposed');
});
