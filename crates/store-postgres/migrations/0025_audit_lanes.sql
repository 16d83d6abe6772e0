-- Audit lanes (decision 0031): the trail becomes one hash chain per writer
-- task, so that writers on different nodes no longer take turns on one
-- head row through each commit's flush. Each writer claims a lane (a row
-- here) when it starts and locks only that row; `seq` comes from a
-- sequence, unique and increasing within each lane, with gaps between.
-- The chain written before lanes is lane 0 (it starts at 64 zeros, as
-- lane 0 does) and verifies as before.
ALTER TABLE audit_events ADD COLUMN lane BIGINT NOT NULL DEFAULT 0;
CREATE INDEX audit_events_lane ON audit_events (lane, seq);

-- A lane's head: its last event's seq and hash (0 and NULL before its
-- first event).
CREATE TABLE audit_lanes (
    id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq  BIGINT NOT NULL DEFAULT 0,
    hash TEXT
);

CREATE SEQUENCE audit_seq;
SELECT setval('audit_seq', seq, true) FROM audit_head WHERE id = 1 AND seq > 0;
DROP TABLE audit_head;
