-- RFC 9396 (DESIGN §13): the detail types a resource declares, as JSON
-- {"<type>": {"schema": <JSON Schema>, "bounds": {"<field>": "max"|"equal"}}},
-- and the details a grant was approved for, as a JSON array.
ALTER TABLE resources ADD COLUMN authorization_details_types TEXT NOT NULL DEFAULT '{}';
ALTER TABLE grants ADD COLUMN authorization_details TEXT NOT NULL DEFAULT '[]';
