// node-oidc-provider configured for the same grant Mandate's benchmark uses:
// client_credentials, client authenticated with private_key_jwt (EdDSA),
// RFC 8707 resource indicator https://api.example.com, scope "read",
// JWT access tokens signed with EdDSA.
//
// Environment:
//   PORT             listen port on 127.0.0.1 (default 3000)
//   CLIENT_ID        the client's client_id (default "bench-client")
//   CLIENT_JWK       the client's public JWK as JSON, or
//   CLIENT_JWK_FILE  path of a file holding it (output of `mandate-loadgen keygen`)
//   RESOURCE         resource indicator (default https://api.example.com)
//
// Storage: the provider's built-in in-memory adapter. NOT durable: every
// issued token, grant and replay-detection record is lost on restart, and the
// built-in adapter is an LRU bounded to ~1000-2000 entries, so client-assertion
// jti replay detection only covers recently seen assertions.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

import Provider from 'oidc-provider';

const PORT = Number.parseInt(process.env.PORT ?? '3000', 10);
const HOST = '127.0.0.1';
const ISSUER = `http://${HOST}:${PORT}`;
const CLIENT_ID = process.env.CLIENT_ID ?? 'bench-client';
const RESOURCE = process.env.RESOURCE ?? 'https://api.example.com';

function loadClientJwk() {
  let raw = process.env.CLIENT_JWK;
  if (!raw && process.env.CLIENT_JWK_FILE) {
    raw = fs.readFileSync(process.env.CLIENT_JWK_FILE, 'utf8');
  }
  if (!raw) {
    throw new Error('set CLIENT_JWK (JSON) or CLIENT_JWK_FILE to the client public JWK');
  }
  const jwk = JSON.parse(raw);
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') {
    throw new Error('client JWK must be an OKP/Ed25519 public key');
  }
  if (jwk.d) throw new Error('client JWK must not contain the private part "d"');
  return jwk;
}

// The provider's own EdDSA signing key, generated fresh at every start.
const { privateKey } = crypto.generateKeyPairSync('ed25519');
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: 'bench-eddsa-1',
  alg: 'EdDSA',
  use: 'sig',
};

const clientJwk = loadClientJwk();

const configuration = {
  // Built-in in-memory adapter (no `adapter` option): not durable.
  jwks: { keys: [signingJwk] },
  clients: [
    {
      client_id: CLIENT_ID,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'read',
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'EdDSA',
      id_token_signed_response_alg: 'EdDSA',
      jwks: { keys: [clientJwk] },
    },
  ],
  // The provider's only key is EdDSA, so nothing may default to RS256.
  clientDefaults: {
    grant_types: ['client_credentials'],
    response_types: [],
    id_token_signed_response_alg: 'EdDSA',
    token_endpoint_auth_method: 'private_key_jwt',
  },
  clientAuthMethods: ['private_key_jwt'],
  enabledJWA: {
    clientAuthSigningAlgValues: ['EdDSA'],
  },
  scopes: ['read'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo(ctx, resourceIndicator, client) {
        if (resourceIndicator !== RESOURCE) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: 'read',
          audience: RESOURCE,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'EdDSA' } },
        };
      },
    },
  },
  ttl: { ClientCredentials: 300 },
  // No cookies are used by this grant, but the provider wants keys.
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
};

const provider = new Provider(ISSUER, configuration);

// Keep the hot path quiet; surface server errors so a broken setup is visible.
let loggedErrors = 0;
provider.on('server_error', (ctx, err) => {
  if (loggedErrors++ < 5) console.error('server_error', err);
});
provider.on('grant.error', (ctx, err) => {
  if (loggedErrors++ < 5) console.error('grant.error', err.message, err.error_description ?? '');
});

const server = provider.listen(PORT, HOST, () => {
  console.log(
    `node-oidc-provider listening on ${ISSUER} (token endpoint ${ISSUER}/token, client ${CLIENT_ID}); ` +
      'storage: in-memory adapter, NOT durable',
  );
});
server.keepAliveTimeout = 65_000;

function shutdown() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
