// Issue 17 §1: how long after a revocation is acknowledged on node A does
// node B refuse the token? Two `mandate serve` nodes on one PostgreSQL
// database (same issuer, same data dir for the key-encryption key). Per
// sample: node A issues a token (client_credentials, private_key_jwt, by
// oauth4webapi), the agent revokes it on A (RFC 7009), and as soon as A has
// answered, node B is asked, again and again, until it refuses: by
// introspection on even samples, by `/v1/check` on odd ones. The figure is
// the time from A's answer to B's first refusal, and how many asks it took.
//
//   node bench/propagation.mjs [samples=10000] [revocation|policy|exchange|refresh]
//
// `exchange` and `refresh` revoke, on A, an access token from a CIBA grant
// (approved by policy) or the refresh token that came with it, and time B's
// refusal of a token exchange with it (by a second agent) or of a refresh.
// `policy` measures instead how long after node A acknowledges a new policy
// set (alternately forbidding and permitting again) node B issues, or
// refuses, accordingly.
//
// Needs: the debug (or MANDATE_BIN) binary, PostgreSQL at
// MANDATE_BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres),
// and tests/clients' npm packages (run `tests/clients/run --help` once, or
// `npm ci` there).

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as oauth from '../tests/clients/node_modules/oauth4webapi/build/index.js';
import { createAgent, newKey, randomId, startServer } from '../tests/clients/lib.mjs';

const samples = Number(process.argv[2] || 10_000);
const mode = process.argv[3] || 'revocation';
if (!['revocation', 'policy', 'exchange', 'refresh'].includes(mode)) {
  throw new Error(`mode ${mode}: revocation, policy, exchange or refresh`);
}
const admin = process.env.MANDATE_BENCH_POSTGRES_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const db = `mandate_propagation_${randomId(6).toLowerCase().replace(/[^a-z0-9]/g, '')}`;
const psql = (sql) => execFileSync('psql', [admin, '-qAtc', sql]);
psql(`CREATE DATABASE ${db}`);
const url = admin.replace(/\/[^/]*$/, `/${db}`);
const API = 'https://api.example.com';
const ISSUER = 'https://mandate.test';
const dataDir = mkdtempSync(join(tmpdir(), 'mandate-propagation-'));
const adminToken = `mnd_admin_bench_${randomId(24)}`;
const args = ['--database-url', url, '--issuer', ISSUER, '--rate-limit-per-address', '0', '--rate-limit-per-client', '0'];

let a, b;
try {
  a = await startServer({ args, dataDir, adminToken });
  b = await startServer({ args, dataDir, adminToken });
  const owner = await a.adminOk('POST', '/v1/users', { name: 'Owner', email: 'owner@example.com' });
  await a.adminOk('POST', '/v1/resources', { identifier: API, name: 'API', scopes: { read: ['read'] } });
  // Agents read, the owner reads (CIBA grants for the exchange and refresh
  // modes need the person's rights too), and agents may delegate.
  const PERMIT = [
    `permit(principal is Agent, action == Action::"read", resource);`,
    `permit(principal is User, action == Action::"read", resource);`,
    `permit(principal is Agent, action == Action::"mandate:delegate", resource);`,
  ].join('\n');
  const FORBID = `${PERMIT}\nforbid(principal, action, resource);`;
  await a.adminOk('PUT', '/v1/policies', { policies: PERMIT });
  const key = await newKey('Ed25519');
  const agent = await createAgent(a, { name: 'bench agent', owner: owner.id, keys: [key] });
  const client = { client_id: agent.id };
  const auth = oauth.PrivateKeyJwt({ key: key.privateKey, kid: key.kid });
  // The agent the exchange mode delegates to.
  const helperKey = await newKey('Ed25519');
  const helper = await createAgent(a, { name: 'bench helper', owner: owner.id, keys: [helperKey] });
  const helperClient = { client_id: helper.id };
  const helperAuth = oauth.PrivateKeyJwt({ key: helperKey.privateKey, kid: helperKey.kid });
  // The nodes' own addresses, under the one issuer they share.
  const as = (node) => ({
    issuer: ISSUER,
    token_endpoint: `${node.url}/oauth/token`,
    revocation_endpoint: `${node.url}/oauth/revoke`,
    backchannel_authentication_endpoint: `${node.url}/oauth/bc-authorize`,
  });
  const opts = { [oauth.allowInsecureRequests]: true };
  const refusedOnB = async (token, n) => {
    if (n % 2 === 0) {
      const r = await fetch(`${b.url}/oauth/introspect`, {
        method: 'POST',
        headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ token }),
      });
      return (await r.json()).active === false;
    }
    const r = await fetch(`${b.url}/v1/check`, {
      method: 'POST',
      headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ token, action: 'read', resource: { type: 'doc', id: 'd1' } }),
    });
    return (await r.json()).decision === 'deny';
  };
  const lat = [];
  const asks = [];
  // Policy mode: A puts a policy set that forbids, or permits again, and
  // B is asked for a token until it follows.
  const issuesOnB = async () => {
    const r = await oauth.clientCredentialsGrantRequest(as(b), client, auth, { resource: API, scope: 'read' }, opts);
    return r.status === 200;
  };
  for (let n = 0; mode === 'policy' && n < samples; n++) {
    const forbid = n % 2 === 0;
    await a.adminOk('PUT', '/v1/policies', { policies: forbid ? FORBID : PERMIT });
    const t0 = performance.now();
    let k = 1;
    while ((await issuesOnB()) === forbid) k++;
    lat.push(performance.now() - t0);
    asks.push(k);
  }
  // A grant for the owner, approved by policy alone (CIBA, poll mode), on A.
  const grantOnA = async (scope) => {
    const asked = await oauth.processBackchannelAuthenticationResponse(
      as(a),
      client,
      await oauth.backchannelAuthenticationRequest(as(a), client, auth, { login_hint: 'owner@example.com', scope, resource: API }, opts),
    );
    const r = await oauth.backchannelAuthenticationGrantRequest(as(a), client, auth, asked.auth_req_id, opts);
    return oauth.processBackchannelAuthenticationGrantResponse(as(a), client, r);
  };
  // Exchange mode: the helper exchanges the agent's grant token on B, once
  // while it is live, then again and again after A revoked it.
  // (This oauth4webapi has no generic grant request: its client
  // authentication fills in the form.)
  const exchangeOnB = async (subject) => {
    const body = new URLSearchParams({
      grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
      subject_token: subject,
      subject_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    });
    const headers = new Headers({ 'content-type': 'application/x-www-form-urlencoded' });
    await helperAuth(as(b), helperClient, body, headers);
    return fetch(as(b).token_endpoint, { method: 'POST', headers, body });
  };
  // Refresh mode: the refresh token A issued, revoked on A, used on B.
  const refreshOnB = (rt) => oauth.refreshTokenGrantRequest(as(b), client, auth, rt, opts);
  for (let n = 0; (mode === 'exchange' || mode === 'refresh') && n < samples; n++) {
    const t = await grantOnA('read');
    const revoking = mode === 'refresh' ? t.refresh_token : t.access_token;
    if (!revoking) throw new Error(`sample ${n}: no ${mode === 'refresh' ? 'refresh' : 'access'} token`);
    if (mode === 'exchange' && (await exchangeOnB(t.access_token)).status !== 200) {
      throw new Error(`sample ${n}: B refused to exchange a live token`);
    }
    await oauth.processRevocationResponse(await oauth.revocationRequest(as(a), client, auth, revoking, opts));
    const t0 = performance.now();
    let k = 1;
    for (;;) {
      const r = mode === 'refresh' ? await refreshOnB(revoking) : await exchangeOnB(t.access_token);
      const body = await r.json();
      // A revoked refresh token is invalid_grant (RFC 6749); a revoked
      // subject token invalid_request (RFC 8693 §2.2.2).
      if (r.status === 400 && body.error === (mode === 'refresh' ? 'invalid_grant' : 'invalid_request')) break;
      if (r.status !== 200) throw new Error(`sample ${n}: B answered ${r.status} ${JSON.stringify(body)}`);
      if (++k > 10_000) throw new Error(`sample ${n}: B never refused`);
    }
    lat.push(performance.now() - t0);
    asks.push(k);
  }
  for (let n = 0; mode === 'revocation' && n < samples; n++) {
    const issued = await oauth.clientCredentialsGrantRequest(as(a), client, auth, { resource: API, scope: 'read' }, opts);
    const { access_token: token } = await oauth.processClientCredentialsResponse(as(a), client, issued);
    // B has seen the token live (and cached its chain) before it is revoked.
    if (await refusedOnB(token, n)) throw new Error(`sample ${n}: B refused a live token`);
    const revoked = await oauth.revocationRequest(as(a), client, auth, token, opts);
    await oauth.processRevocationResponse(revoked);
    const t0 = performance.now();
    let k = 1;
    while (!(await refusedOnB(token, n))) k++;
    lat.push(performance.now() - t0);
    asks.push(k);
  }
  lat.sort((x, y) => x - y);
  const q = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))].toFixed(2);
  const firstTry = asks.filter((k) => k === 1).length;
  console.log(
    JSON.stringify({
      mode,
      samples,
      p50_ms: q(0.5),
      p90_ms: q(0.9),
      p99_ms: q(0.99),
      max_ms: lat.at(-1).toFixed(2),
      refused_at_first_ask: `${firstTry}/${samples}`,
      most_asks: Math.max(...asks),
    }),
  );
} finally {
  await a?.stop({ keep: true });
  await b?.stop({ keep: true });
  rmSync(dataDir, { recursive: true, force: true });
  psql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
}
