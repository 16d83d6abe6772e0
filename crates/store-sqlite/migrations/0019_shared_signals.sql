-- Shared Signals (SSF 1.0, CAEP 1.0): the streams receivers configure and
-- the events waiting on them (ADR 0028). Events are queued in the same
-- transaction as the change they report; a stream's events go out in
-- `seq` order and are forgotten once delivered or acknowledged.
CREATE TABLE ssf_streams (
    id TEXT PRIMARY KEY,
    resource_id TEXT NOT NULL REFERENCES resources (id),
    audience TEXT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT,
    method TEXT NOT NULL,
    endpoint_url TEXT,
    sealed_authorization BLOB,
    events INTEGER NOT NULL,
    description TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    lease_holder TEXT,
    lease_until INTEGER
);
CREATE INDEX ssf_streams_audience ON ssf_streams (audience);
CREATE INDEX ssf_streams_resource ON ssf_streams (resource_id);

CREATE TABLE ssf_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id TEXT NOT NULL REFERENCES ssf_streams (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    event_at INTEGER NOT NULL,
    initiating_entity TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX ssf_events_stream ON ssf_events (stream_id, seq);

-- The tokens whose revocation was signalled, so that a later change at the
-- same revocation time signals none of them again (even once their events
-- are acknowledged and gone); forgotten with the expired replay entries.
CREATE TABLE ssf_signalled (
    jti TEXT PRIMARY KEY,
    at INTEGER NOT NULL
);
CREATE INDEX ssf_signalled_at ON ssf_signalled (at);

-- session-revoked finds the tokens a change revoked by their revocation time.
CREATE INDEX tokens_revoked_at ON tokens (revoked_at) WHERE revoked_at IS NOT NULL;

-- The RSA key that signs SETs under --ssf-signing-alg RS256 is a signing
-- key of its own purpose, 'ssf'. SQLite cannot change a CHECK constraint,
-- so the table is rebuilt with the wider one (nothing refers to it).
CREATE TABLE signing_keys_new (
    kid             TEXT PRIMARY KEY,
    alg             TEXT NOT NULL,
    wrapped_private BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    retired_at      INTEGER,
    purpose         TEXT NOT NULL DEFAULT 'token' CHECK (purpose IN ('token', 'audit', 'ssf')),
    public_jwk      TEXT
);
INSERT INTO signing_keys_new (kid, alg, wrapped_private, created_at, retired_at, purpose, public_jwk)
    SELECT kid, alg, wrapped_private, created_at, retired_at, purpose, public_jwk FROM signing_keys;
DROP TABLE signing_keys;
ALTER TABLE signing_keys_new RENAME TO signing_keys;
