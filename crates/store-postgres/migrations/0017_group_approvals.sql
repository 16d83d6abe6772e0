-- Group approvals (DESIGN §13, ADR 0025): the group whose members decide
-- (NULL: the approver alone decides), how many distinct members must
-- approve, and who approved so far (a JSON array of user ids, replaced by
-- compare-and-set so that one of concurrent decisions counts).
ALTER TABLE approvals ADD COLUMN approver_group TEXT;
ALTER TABLE approvals ADD COLUMN required BIGINT NOT NULL DEFAULT 1;
ALTER TABLE approvals ADD COLUMN approved_by TEXT NOT NULL DEFAULT '[]';
CREATE INDEX approvals_group ON approvals (approver_group, status) WHERE approver_group IS NOT NULL;
