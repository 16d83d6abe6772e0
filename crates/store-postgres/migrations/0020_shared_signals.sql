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
    sealed_authorization BYTEA,
    events BIGINT NOT NULL,
    description TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    next_at BIGINT NOT NULL,
    lease_holder TEXT,
    lease_until BIGINT
);
CREATE INDEX ssf_streams_audience ON ssf_streams (audience);
CREATE INDEX ssf_streams_resource ON ssf_streams (resource_id);

CREATE TABLE ssf_events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id TEXT NOT NULL REFERENCES ssf_streams (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    event_at BIGINT NOT NULL,
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
    at BIGINT NOT NULL
);
CREATE INDEX ssf_signalled_at ON ssf_signalled (at);

-- session-revoked finds the tokens a change revoked by their revocation time.
CREATE INDEX tokens_revoked_at ON tokens (revoked_at) WHERE revoked_at IS NOT NULL;

-- The RSA key that signs SETs under --ssf-signing-alg RS256 is a signing
-- key of its own purpose, 'ssf'.
ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_purpose_check;
ALTER TABLE signing_keys ADD CONSTRAINT signing_keys_purpose_check CHECK (purpose IN ('token', 'audit', 'ssf'));
