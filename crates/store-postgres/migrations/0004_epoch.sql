-- One counter that every change able to revoke or change a decision input
-- advances in its own transaction, so that nodes may cache liveness and
-- decisions and drop them as soon as any node commits such a change.
CREATE TABLE epoch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
);
INSERT INTO epoch (id, n) VALUES (1, 0);
