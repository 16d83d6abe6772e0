-- The context keys a resource declares for checks (DESIGN §13), as JSON:
-- {"<key>": "Long" | "String" | "Bool"}.
ALTER TABLE resources ADD COLUMN context TEXT NOT NULL DEFAULT '{}';
