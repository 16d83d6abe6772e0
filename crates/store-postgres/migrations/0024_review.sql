-- Access review (DESIGN §12, ADR 0033): the review walks the agents that are
-- not retired in id order, a page at a time, and counts the children each
-- parent spawned in the last day. Without these indexes both would read
-- every agent, retired ephemeral ones included.
CREATE INDEX agents_live ON agents (id) WHERE status <> 'retired';
CREATE INDEX agents_parent_created ON agents (parent, created_at) WHERE parent IS NOT NULL;
