-- Attempt counters (issue 17 §2, ADR 0029): failed sign-ins per email and
-- source, per email and per address, kept in the store so that every node
-- paces the same attempts. `last_at` is Unix nanoseconds; a counter is set
-- by compare-and-swap of what was read, so that two nodes counting at once
-- count twice.
CREATE TABLE attempt_counters (
    key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last_at BIGINT NOT NULL
);
CREATE INDEX attempt_counters_last ON attempt_counters (last_at);
