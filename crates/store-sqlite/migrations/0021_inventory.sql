-- The inventory (issue 18 §1, ADR 0032). An agent's last use: the time of
-- the last token issued to it (Unix nanoseconds), written with the token's
-- insertion only when the recorded one is more than a minute older. The
-- lists page newest first on the id, so each filter's index ends in it.
ALTER TABLE agents ADD COLUMN last_used_at INTEGER;
CREATE INDEX agents_owner_id ON agents (owner, id);
CREATE INDEX agents_parent_id ON agents (parent, id);
CREATE INDEX agents_last_used ON agents (last_used_at);
CREATE INDEX agents_expires ON agents (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX users_status_id ON users (status, id);
CREATE INDEX grants_user_id ON grants (user_id, id);
CREATE INDEX grants_agent_id ON grants (agent, id);
CREATE INDEX grants_resource_id ON grants (resource, id);
CREATE INDEX grants_expires ON grants (expires_at);
DROP INDEX agents_owner;
DROP INDEX agents_parent;
DROP INDEX grants_user;
DROP INDEX grants_agent;
