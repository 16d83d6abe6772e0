-- The agent list filtered by status (`GET /v1/agents?status=…`), newest
-- first, as a range of this index (issue 18's benchmark; SQLite's
-- migration 0027).
CREATE INDEX agents_status_id ON agents (status, id);
