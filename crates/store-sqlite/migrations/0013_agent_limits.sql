-- Credential policy per agent (DESIGN §13): the agent's limits as JSON,
-- NULL when it has none (the server's defaults apply).
ALTER TABLE agents ADD COLUMN limits TEXT;
