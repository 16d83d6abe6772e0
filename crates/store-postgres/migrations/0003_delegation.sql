-- Delegation (DESIGN §1, §3.1, §5): grants, approval requests, refresh
-- tokens (only their hashes), and the links that let revocation cascade.

CREATE TABLE grants (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id),
    agent        TEXT NOT NULL REFERENCES agents (id),
    resource     TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    purpose      TEXT,
    approved_by  TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX grants_user ON grants (user_id);
CREATE INDEX grants_agent ON grants (agent);

CREATE TABLE approvals (
    id              TEXT PRIMARY KEY,
    agent           TEXT NOT NULL REFERENCES agents (id),
    user_id         TEXT NOT NULL REFERENCES users (id),
    approver        TEXT NOT NULL REFERENCES users (id),
    resource        TEXT NOT NULL,
    subject         TEXT NOT NULL,
    binding         TEXT,
    binding_message TEXT,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'consumed')),
    decided_by      TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    decided_at      BIGINT,
    grant_id        TEXT REFERENCES grants (id),
    polled_at       BIGINT
);
CREATE INDEX approvals_approver ON approvals (approver, status);
CREATE INDEX approvals_binding ON approvals (binding) WHERE binding IS NOT NULL;

CREATE TABLE refresh_tokens (
    hash       TEXT PRIMARY KEY,
    family     TEXT NOT NULL,
    grant_id   TEXT NOT NULL REFERENCES grants (id),
    client_id  TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    revoked_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_grant ON refresh_tokens (grant_id);

ALTER TABLE tokens ADD COLUMN family TEXT;
CREATE INDEX tokens_grant ON tokens (grant_id) WHERE grant_id IS NOT NULL;
CREATE INDEX tokens_family ON tokens (family) WHERE family IS NOT NULL;
