-- Mandate on PostgreSQL. Times are Unix nanoseconds (BIGINT); lists and maps are JSON text,
-- the same representation as the SQLite store.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    email         TEXT NOT NULL UNIQUE,
    groups        TEXT NOT NULL,
    attributes    TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    password_hash TEXT,
    created_at    BIGINT NOT NULL
);

CREATE TABLE user_tokens (
    hash       TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL
);

CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    owner         TEXT NOT NULL REFERENCES users (id),
    kind          TEXT NOT NULL CHECK (kind IN ('persistent', 'ephemeral')),
    parent        TEXT REFERENCES agents (id),
    status        TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'retired')),
    expires_at    BIGINT,
    description   TEXT,
    scopes        TEXT,
    jwks          TEXT,
    redirect_uris TEXT NOT NULL,
    secret_hash   TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX agents_parent ON agents (parent);
CREATE INDEX agents_owner ON agents (owner);

CREATE TABLE resources (
    id         TEXT PRIMARY KEY,
    identifier TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    jwks       TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE policies (
    seq        BIGSERIAL PRIMARY KEY,
    version    TEXT NOT NULL,
    text       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    alg             TEXT NOT NULL,
    wrapped_private BYTEA NOT NULL,
    created_at      BIGINT NOT NULL,
    retired_at      BIGINT
);

-- private_key_jwt replay store: a jti is burned until its assertion expires.
CREATE TABLE assertion_jtis (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX assertion_jtis_expiry ON assertion_jtis (expires_at);

CREATE TABLE tokens (
    jti        TEXT PRIMARY KEY,
    client_id  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    audience   TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    grant_id   TEXT,
    parent     TEXT,
    chain      TEXT NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    cnf_jkt    TEXT,
    revoked_at BIGINT
);
CREATE INDEX tokens_client ON tokens (client_id) WHERE revoked_at IS NULL;
CREATE INDEX tokens_subject ON tokens (subject) WHERE revoked_at IS NULL;
CREATE INDEX tokens_parent ON tokens (parent);
