-- Issue 5: DPoP-bound refresh families, DPoP proof replay, Token Status List.

-- Every token's position in the status lists. Only revoked positions are
-- indexed: that is what a list rebuild reads, and issuing pays nothing.
ALTER TABLE tokens ADD COLUMN status_idx BIGINT;
CREATE INDEX tokens_revoked_status ON tokens (status_idx)
    WHERE revoked_at IS NOT NULL AND status_idx IS NOT NULL;

-- A refresh family bound to a DPoP key: every use must prove it.
ALTER TABLE refresh_tokens ADD COLUMN cnf_jkt TEXT;

-- DPoP proofs seen, kept until they would be too old to accept anyway.
CREATE TABLE dpop_jtis (
    key        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX dpop_jtis_expiry ON dpop_jtis (expires_at);

-- The next status-list index to hand out; nodes reserve blocks of it.
CREATE TABLE status_counter (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    next BIGINT NOT NULL
);
INSERT INTO status_counter (id, next) VALUES (1, 0);
