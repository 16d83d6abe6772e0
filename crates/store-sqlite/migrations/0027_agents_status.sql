-- The agent list filtered by status (`GET /v1/agents?status=…`), newest
-- first: without this index a page walked every agent's id, through the
-- retired ephemeral ones, to collect its matches (issue 18's benchmark:
-- 328 ms for 1,000 suspended agents among 800,000). With it a page is a
-- range of the index, whatever else it filters on.
CREATE INDEX agents_status_id ON agents (status, id);
