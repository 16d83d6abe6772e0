-- CIBA ping and push (OpenID CIBA §10) and approver notifications: each
-- agent's delivery mode, where to call back about a request, and the
-- outbox of messages waiting to be sent (sealed with the key-encryption
-- key), claimed for an attempt under a lease.
CREATE TABLE agent_backchannel (
    agent TEXT PRIMARY KEY REFERENCES agents (id),
    mode TEXT NOT NULL,
    endpoint TEXT
);

CREATE TABLE ciba_callbacks (
    approval TEXT PRIMARY KEY REFERENCES approvals (id),
    agent TEXT NOT NULL REFERENCES agents (id),
    mode TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    sealed_token BYTEA NOT NULL
);

CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    about TEXT NOT NULL,
    target TEXT NOT NULL,
    sealed BYTEA NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_at BIGINT NOT NULL,
    lease_holder TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    last_error TEXT
);
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE status = 'pending';
CREATE INDEX deliveries_about ON deliveries (about);
