// The world every MCP test runs in (one per test file): Mandate, the
// person, server-everything behind `mandate gateway`, the resources and
// policies, an https server for client metadata documents, and chromium.

import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  DATABASE_URL,
  GATEWAY_BIN,
  HERE,
  MANDATE_BIN,
  childEnv,
  documentServer,
  freePort,
  freshDatabase,
  http,
  launchBrowser,
  makeCertificates,
  randomId,
  recordingProxy,
  startMandate,
  startProcess,
  tempDir,
} from './lib.mjs';

/** The scopes of both resources: server-everything's real tool names. */
export const SCOPES = {
  'tools:read': ['echo', 'get-sum'],
  'tools:env': ['get-env'],
  'tools:image': ['get-tiny-image'],
};
export const TOOLS = Object.values(SCOPES).flat();
/** What /mcp/everything advertises: every scope but the step-up one. */
export const ADVERTISED = ['tools:read', 'tools:env'];

/** How long an access token lives: short, so that the tests see a refresh. */
export const ACCESS_TOKEN_TTL = 10;

/**
 * The policies. The person (group staff) holds every tool's right. Agents
 * (the MCP clients) may be granted every scope; at the check, `echo` and
 * `get-tiny-image` are allowed, `get-sum` waits for the person's approval
 * of each call, and `get-env` is forbidden to everyone. The gateway agent
 * is an agent too, so the same permits at the API let it exchange tokens
 * for the upstream.
 */
export const POLICIES = `
// The person's own rights: every tool.
permit (principal in Group::"staff", action in [Action::"echo", Action::"get-sum", Action::"get-env", Action::"get-tiny-image"], resource);
// Agents may hold every scope and call every tool but get-sum...
permit (principal is Agent, action in [Action::"echo", Action::"get-env", Action::"get-tiny-image"], resource);
// ...may hold get-sum's scope (issuance, refresh, the gateway's exchange are decided at the API)...
permit (principal is Agent, action == Action::"get-sum", resource is Api);
// ...and each call of get-sum (a tool under the API) waits for the person.
@approval("user")
permit (principal is Agent, action == Action::"get-sum", resource is Resource);
// get-env is never called through the gateway, whatever the token's scopes.
forbid (principal, action == Action::"get-env", resource is Resource);
`;

export const PERSON = {
  name: 'Pat Person',
  email: 'pat@example.com',
  groups: ['staff'],
  password: 'correct horse battery staple',
};

/**
 * Starts everything. `withGateway` false stops before the gateway (for
 * the checks against Mandate alone).
 */
export async function startWorld({ withGateway = true, browser = true } = {}) {
  const tmp = tempDir('mandate-mcp-');
  const w = { tmp: tmp.dir, procs: [], closers: [] };
  w.stop = async () => {
    for (const c of w.closers.reverse()) await c().catch(() => {});
    for (const p of w.procs.reverse()) await p.stop().catch(() => {});
    tmp.remove();
  };
  w.logs = () =>
    w.procs
      .map((p) => `--- ${p.name} ---\n${p.logs().trim().slice(-3000)}`)
      .join('\n');
  try {
    // The CA for the https client metadata documents; Mandate trusts it
    // through SSL_CERT_FILE (and nothing else: the system store is not read then).
    w.certs = makeCertificates(w.tmp);
    w.docs = await documentServer(w.certs, readFileSync);
    w.closers.push(() => w.docs.close());

    // Mandate, once to create the registration owner and the person, then
    // again with --registration-owner naming that user.
    // On PostgreSQL (MCP_DATABASE_URL), both runs share a fresh database,
    // dropped once everything else has stopped.
    const dataDir = join(w.tmp, 'mandate');
    const adminToken = `mnd_admin_mcp_${randomId(24)}`;
    const database = [];
    if (DATABASE_URL) {
      const db = freshDatabase();
      w.procs.push(db);
      database.push('--database-url', db.url);
    }
    let m = await startMandate({ dataDir, adminToken, args: database });
    const owner = await m.createUser({ name: 'Ops Owner', email: 'ops@example.com', groups: [] });
    w.person = { ...PERSON, ...(await m.createUser(PERSON)) };
    await m.stop();
    m = await startMandate({
      dataDir,
      adminToken,
      args: [
        ...database,
        '--registration-owner', owner.id,
        '--dynamic-registration', 'on',
        '--dev-loopback-fetch',
        '--access-token-ttl', String(ACCESS_TOKEN_TTL),
      ],
      env: { SSL_CERT_FILE: w.certs.ca },
    });
    w.procs.push(m.proc);
    w.mandate = m;
    w.owner = owner;

    // server-everything, streamable HTTP, with an environment of its own
    // (its get-env tool prints it), behind a recording proxy: the proxy's
    // address is "the upstream" (the gateway's upstream and the audience it
    // exchanges for), and `w.upstreamSeen` is every request that reached it.
    const evPort = await freePort();
    const everything = `http://127.0.0.1:${evPort}`;
    w.procs.push(
      await startProcess(
        'server-everything',
        process.execPath,
        [join(HERE, 'node_modules/@modelcontextprotocol/server-everything/dist/index.js'), 'streamableHttp'],
        {
          env: { PORT: String(evPort), PATH: process.env.PATH, HOME: w.tmp, EVERYTHING_SECRET: 'upstream-only' },
          ready: async () => {
            // Any answer at all: it listens.
            const r = await fetch(`${everything}/mcp`, { method: 'GET' });
            return r.status > 0;
          },
        },
      ),
    );
    const proxy = await recordingProxy(everything);
    w.closers.push(() => proxy.close());
    w.upstream = proxy.base;
    w.upstreamSeen = proxy.seen;

    // The gateway's agent, its key (mandate keys client-keygen), and the
    // two resources: the gateway's (which names it) and the upstream's.
    const gwPort = await freePort();
    w.gatewayUrl = `http://127.0.0.1:${gwPort}`;
    w.resource = `${w.gatewayUrl}/mcp/everything`;
    const keyFile = join(w.tmp, 'gateway.pk8');
    const jwks = JSON.parse(execFileSync(MANDATE_BIN, ['keys', 'client-keygen', '--out', keyFile]).toString());
    w.gatewayAgent = await m.adminOk('POST', '/v1/agents', {
      name: 'MCP gateway',
      owner: owner.id,
      description: 'guards server-everything',
      jwks,
    });
    w.gatewayAgent.id = w.gatewayAgent.client_id || w.gatewayAgent.id;
    w.upstreamResource = await m.adminOk('POST', '/v1/resources', {
      identifier: w.upstream,
      name: 'Everything (upstream)',
      scopes: SCOPES,
    });
    // Two routes of the gateway to the same upstream, each a resource:
    // /mcp/everything advertises its baseline scopes (RFC 9728
    // scopes_supported and the 401's scope; tools:image is left to a
    // step-up), /mcp/open advertises none, so a client asks for what it
    // chooses (the TypeScript SDK 1.x asks for offline_access only then).
    w.openResource = `${w.gatewayUrl}/mcp/open`;
    for (const [identifier, name] of [
      [w.resource, 'Everything (via the gateway)'],
      [w.openResource, 'Everything (via the gateway, open route)'],
    ]) {
      await m.adminOk('POST', '/v1/resources', {
        identifier,
        name,
        scopes: SCOPES,
        gateway: w.gatewayAgent.id,
        exchange_to: [w.upstream],
      });
    }
    // Another API this Mandate guards: its scopes are in the authorization
    // server's metadata too.
    await m.adminOk('POST', '/v1/resources', {
      identifier: 'https://calendar.example',
      name: 'Calendar',
      scopes: { 'calendar:read': ['list'] },
    });
    await m.adminOk('PUT', '/v1/policies', { policies: POLICIES });

    w.gatewayConfig = join(w.tmp, 'gateway.toml');
    writeFileSync(
      w.gatewayConfig,
      `issuer = "${m.issuer}"
listen = "127.0.0.1:${gwPort}"
client_id = "${w.gatewayAgent.id}"
key_file = "gateway.pk8"

[[route]]
prefix = "/mcp/everything"
upstream = "${w.upstream}/mcp"
kind = "mcp"
resource = "${w.resource}"
upstream_token = "exchange"
upstream_resource = "${w.upstream}"
scopes = ${JSON.stringify(ADVERTISED)}

[[route]]
prefix = "/mcp/open"
upstream = "${w.upstream}/mcp"
kind = "mcp"
resource = "${w.openResource}"
upstream_token = "exchange"
upstream_resource = "${w.upstream}"
`,
    );
    if (withGateway) {
      w.procs.push(
        await startProcess('mandate gateway', GATEWAY_BIN, ['gateway', '--config', w.gatewayConfig], {
          env: childEnv(),
          ready: async () =>
            (await fetch(`${w.gatewayUrl}/.well-known/oauth-protected-resource/mcp/everything`)).status === 200,
        }),
      );
    }
    if (browser) {
      w.browser = await launchBrowser();
      w.closers.push(() => w.browser.close());
    }
    return w;
  } catch (e) {
    const logs = w.logs();
    await w.stop();
    if (logs) e.message += `\n${logs}`;
    throw e;
  }
}

/** The person's API token, for the approvals API. */
export async function personToken(w) {
  if (!w.personApiToken) w.personApiToken = await w.mandate.userToken(w.person.id);
  return w.personApiToken;
}

/** Approves `id` as the person (the admin token may not). */
export async function approveAsPerson(w, id) {
  const r = await http('POST', `${w.mandate.url}/v1/approvals/${id}/approve`, { bearer: await personToken(w), json: {} });
  if (r.status !== 200) throw new Error(`approve ${id}: ${r.status} ${r.text}`);
  return r.body;
}
