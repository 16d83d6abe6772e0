-- Access review campaigns (DESIGN §12, ADR 0033): a campaign and one item
-- per finding of its scope, each assigned to the accountable owner. A
-- decision is written once: the items are updated only where `decision`
-- is still NULL and the campaign is open.
CREATE TABLE review_campaigns (
    id               TEXT PRIMARY KEY,
    scope            TEXT NOT NULL,
    deadline         BIGINT NOT NULL,
    default_decision TEXT NOT NULL CHECK (default_decision IN ('keep', 'revoke')),
    created_by       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    closed_at        BIGINT
);
-- Housekeeping finds the open campaigns past their deadline.
CREATE INDEX review_campaigns_due ON review_campaigns (deadline) WHERE status = 'open';

CREATE TABLE review_items (
    id         TEXT PRIMARY KEY,
    campaign   TEXT NOT NULL REFERENCES review_campaigns (id),
    finding    TEXT NOT NULL,
    assignee   TEXT NOT NULL REFERENCES users (id),
    decision   TEXT CHECK (decision IN ('keep', 'narrow', 'revoke')),
    decided_by TEXT,
    decided_at BIGINT,
    outcome    TEXT
);
CREATE INDEX review_items_campaign ON review_items (campaign, id);
-- A person's open items (the `/review` page, `?assignee=me`).
CREATE INDEX review_items_assignee ON review_items (assignee, id) WHERE decision IS NULL;
