-- The inventory report and gauges (issue 18 §1-2, ADR 0035).
--
-- When an agent was retired: an ephemeral agent's end, for the report's
-- churn. Agents retired before this migration ended at their last update.
ALTER TABLE agents ADD COLUMN retired_at BIGINT;
UPDATE agents SET retired_at = updated_at WHERE status = 'retired';
-- The report reads what is live and what ended inside its windows, never
-- the retired or revoked history before them: each read is a range over
-- one of these indexes on an end time.
CREATE INDEX agents_ephemeral_retired ON agents (retired_at) WHERE kind = 'ephemeral' AND status = 'retired';
CREATE INDEX grants_active_expires ON grants (expires_at) WHERE status = 'active';
CREATE INDEX grants_revoked_at ON grants (revoked_at) WHERE status = 'revoked';
CREATE INDEX tokens_expires ON tokens (expires_at);
-- The peaks: per dimension, key and hour, the largest live counts any node
-- sampled (an upsert with GREATEST, so nodes sampling at once agree); kept
-- eight days.
CREATE TABLE inventory_samples (
    dimension        TEXT NOT NULL CHECK (dimension IN ('owner', 'resource', 'scope')),
    key              TEXT NOT NULL,
    hour             BIGINT NOT NULL,
    grants           BIGINT NOT NULL,
    tokens           BIGINT NOT NULL,
    ephemeral_agents BIGINT NOT NULL,
    PRIMARY KEY (dimension, key, hour)
);
CREATE INDEX inventory_samples_hour ON inventory_samples (hour);
