-- Reapproval and lapses (DESIGN §12, ADR 0036). A reapproval moves a
-- grant's expiry forward in place and counts it; housekeeping stamps each
-- grant that expired without being revoked as lapsed, once.
ALTER TABLE grants ADD COLUMN reapproved_at BIGINT;
ALTER TABLE grants ADD COLUMN reapprovals BIGINT NOT NULL DEFAULT 0;
ALTER TABLE grants ADD COLUMN lapsed_at BIGINT;

-- Grants that had expired before this migration are history: they are
-- stamped with their expiry, without an event, so that the first
-- housekeeping does not report years of lapses at once.
UPDATE grants SET lapsed_at = expires_at
 WHERE status = 'active' AND expires_at <= (EXTRACT(EPOCH FROM now()) * 1000000000)::BIGINT;

-- Housekeeping reads the active grants not yet reported, by expiry: the
-- index holds only those, so a report never scans history.
CREATE INDEX grants_lapse_due ON grants (expires_at) WHERE status = 'active' AND lapsed_at IS NULL;
-- `GET /v1/review/lapsed` pages through the reported ones, newest first.
CREATE INDEX grants_lapsed ON grants (lapsed_at, id) WHERE lapsed_at IS NOT NULL;
