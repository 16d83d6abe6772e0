-- Workload identity federation (DESIGN §10): an agent's rules, as
-- registered (JSON, NULL when it has none), and an index of them by issuer
-- and subject (or subject pattern) to find the agent a workload JWT names.
ALTER TABLE agents ADD COLUMN federated_credentials TEXT;
CREATE TABLE agent_federations (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    pattern INTEGER NOT NULL,
    agent_id TEXT NOT NULL REFERENCES agents (id),
    PRIMARY KEY (issuer, subject, agent_id)
);
CREATE INDEX agent_federations_agent ON agent_federations (agent_id);
-- The pattern rules of an issuer, read beside the exact (issuer, subject)
-- point read, so that the exact case never scans the issuer's rules.
CREATE INDEX agent_federations_patterns ON agent_federations (issuer) WHERE pattern = 1;
