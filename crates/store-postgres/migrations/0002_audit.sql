-- The audit trail (DESIGN §6): one hash-chained, append-only table, and the
-- signed checkpoints that anchor it. Keys now say what they sign.

ALTER TABLE signing_keys ADD COLUMN purpose TEXT NOT NULL DEFAULT 'token' CHECK (purpose IN ('token', 'audit'));
ALTER TABLE signing_keys ADD COLUMN public_jwk TEXT;

CREATE TABLE audit_events (
    seq        BIGINT PRIMARY KEY,
    time       TEXT NOT NULL,
    type       TEXT NOT NULL,
    decision   TEXT,
    subject    TEXT,
    actor      TEXT,
    chain      TEXT NOT NULL,
    client_id  TEXT,
    action     TEXT,
    resource   TEXT,
    scope      TEXT,
    jti        TEXT,
    grant_id   TEXT,
    parent     TEXT,
    count      BIGINT,
    reason     TEXT,
    request_id TEXT,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_events_subject ON audit_events (subject, seq) WHERE subject IS NOT NULL;
CREATE INDEX audit_events_actor ON audit_events (actor, seq) WHERE actor IS NOT NULL;
CREATE INDEX audit_events_jti ON audit_events (jti, seq) WHERE jti IS NOT NULL;
CREATE INDEX audit_events_grant ON audit_events (grant_id, seq) WHERE grant_id IS NOT NULL;
CREATE INDEX audit_events_parent ON audit_events (parent, seq) WHERE parent IS NOT NULL;
CREATE INDEX audit_events_type ON audit_events (type, seq);

-- Mandate only ever appends. These triggers stop an accidental UPDATE,
-- DELETE or TRUNCATE; they are no defence against someone who can drop
-- them, which is what the hash chain and the signed checkpoints are for.
CREATE FUNCTION mandate_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END
$$;
CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION mandate_audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION mandate_audit_append_only();

-- The chain's head. Every node's writer locks this one row for the length
-- of a batch, so that appends from several nodes are numbered and linked
-- one after another.
CREATE TABLE audit_head (
    id   SMALLINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    hash      TEXT NOT NULL,
    time      TEXT NOT NULL,
    kid       TEXT NOT NULL,
    signature TEXT NOT NULL
);
