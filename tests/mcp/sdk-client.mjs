// The MCP TypeScript SDK's client, unmodified, with an OAuthClientProvider
// that a test drives: its redirectToAuthorization() records the URL, the
// test has chromium consent, reads the code at the redirect listener and
// calls transport.finishAuth(code).

import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { randomId } from './lib.mjs';

/**
 * An in-memory OAuthClientProvider (the SDK's interface). `exchanges`
 * (shared with the fetch wrapper) records what went over the wire.
 */
export class TestProvider {
  constructor({ redirectUrl, clientMetadata, clientMetadataUrl }) {
    this._redirectUrl = redirectUrl;
    this._clientMetadata = clientMetadata;
    if (clientMetadataUrl) this.clientMetadataUrl = clientMetadataUrl;
    this._client = undefined;
    this._tokens = undefined;
    this._verifier = undefined;
    this._discovery = undefined;
    this.tokenHistory = [];
    this.authorizationUrls = [];
    this.states = [];
    this.invalidated = [];
  }

  get redirectUrl() {
    return this._redirectUrl;
  }

  get clientMetadata() {
    return this._clientMetadata;
  }

  state() {
    const s = randomId();
    this.states.push(s);
    return s;
  }

  clientInformation() {
    return this._client;
  }

  saveClientInformation(info) {
    this._client = info;
  }

  tokens() {
    return this._tokens;
  }

  saveTokens(tokens) {
    this._tokens = tokens;
    this.tokenHistory.push(tokens);
  }

  redirectToAuthorization(url) {
    this.authorizationUrls.push(new URL(url));
  }

  saveCodeVerifier(v) {
    this._verifier = v;
  }

  codeVerifier() {
    if (!this._verifier) throw new Error('no code verifier saved');
    return this._verifier;
  }

  saveDiscoveryState(s) {
    this._discovery = s;
  }

  discoveryState() {
    return this._discovery;
  }

  invalidateCredentials(scope) {
    this.invalidated.push(scope);
    if (scope === 'all' || scope === 'client') this._client = undefined;
    if (scope === 'all' || scope === 'tokens') this._tokens = undefined;
    if (scope === 'all' || scope === 'verifier') this._verifier = undefined;
    if (scope === 'all' || scope === 'discovery') this._discovery = undefined;
  }
}

/** A fetch that records each request and its answer (status, a few headers, the body's start). */
export function recordingFetch(log) {
  return async (input, init = {}) => {
    const url = String(input instanceof Request ? input.url : input);
    const method = init.method || (input instanceof Request ? input.method : 'GET');
    const headers = new Headers(init.headers || (input instanceof Request ? input.headers : undefined));
    let body = init.body;
    if (body instanceof URLSearchParams) body = body.toString();
    const entry = { method, url, authorization: headers.get('authorization') ? 'Bearer …' : null, body: typeof body === 'string' ? body : null };
    log.push(entry);
    const r = await fetch(input, init);
    entry.status = r.status;
    entry.wwwAuthenticate = r.headers.get('www-authenticate');
    entry.contentType = r.headers.get('content-type');
    if (!(r.headers.get('content-type') || '').startsWith('text/event-stream')) {
      const clone = r.clone();
      clone.text().then((t) => (entry.response = t.slice(0, 600)), () => {});
    }
    return r;
  };
}

/** The exchanges as text, for failure messages. */
export function showExchanges(log, last = 25) {
  return log
    .slice(-last)
    .map((e) => `${e.method} ${e.url} -> ${e.status ?? '?'}${e.wwwAuthenticate ? ` [WWW-Authenticate: ${e.wwwAuthenticate}]` : ''}${e.body ? `\n    body: ${e.body.slice(0, 300)}` : ''}${e.response ? `\n    answer: ${e.response.slice(0, 300)}` : ''}`)
    .join('\n');
}

/**
 * One MCP client session: an SDK Client on a StreamableHTTPClientTransport
 * with `provider`. `run(fn)` runs an SDK call; when the SDK gives up with
 * UnauthorizedError after redirecting, the person consents in chromium,
 * the code and `iss` are checked at the listener, `finishAuth(code)` is
 * called, and the call is made again (on a new transport when connecting).
 */
export class Session {
  constructor({ url, provider, person, listener, issuer, log }) {
    Object.assign(this, { url, provider, person, listener, issuer, log });
    this.consents = [];
  }

  newTransport() {
    this.transport = new StreamableHTTPClientTransport(new URL(this.url), {
      authProvider: this.provider,
      fetch: recordingFetch(this.log),
    });
    this.client = new Client({ name: 'mandate-mcp-test', version: '1.0.0' });
    return this.transport;
  }

  /** The person consents to the last authorization URL; returns the redirect's code. */
  async consent(expectText = []) {
    const url = this.provider.authorizationUrls.at(-1);
    assert.ok(url, 'the SDK did not redirect to authorization');
    const landed = this.listener.next();
    const page = await this.person.consent(url.toString(), { expectText });
    const cb = await landed;
    assert.equal(cb.searchParams.get('error'), null, `the authorization failed: ${cb}`);
    const code = cb.searchParams.get('code');
    assert.ok(code, `no code in ${cb}`);
    // RFC 9207: the response names the issuer; RFC 6749 §10.12: state comes back.
    assert.equal(cb.searchParams.get('iss'), this.issuer, `iss in ${cb}`);
    assert.equal(cb.searchParams.get('state'), url.searchParams.get('state'), 'state');
    this.consents.push({ url, page, callback: cb });
    return code;
  }

  /** Connects (initialize), through an authorization when needed. */
  async connect(expectText) {
    this.newTransport();
    try {
      await this.client.connect(this.transport);
      return;
    } catch (e) {
      if (!(e instanceof UnauthorizedError)) throw e;
    }
    const code = await this.consent(expectText);
    await this.transport.finishAuth(code);
    await this.client.close().catch(() => {});
    this.newTransport();
    await this.client.connect(this.transport);
  }

  /** Runs `fn(client)`; a step-up's authorization is consented and the call made again. */
  async run(fn, expectText) {
    try {
      return await fn(this.client);
    } catch (e) {
      if (!(e instanceof UnauthorizedError)) throw e;
    }
    const code = await this.consent(expectText);
    await this.transport.finishAuth(code);
    return fn(this.client);
  }

  close() {
    return this.client?.close().catch(() => {});
  }
}
