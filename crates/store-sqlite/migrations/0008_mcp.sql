-- MCP clients (DESIGN §9): an authorization code may be bound to a DPoP key
-- (RFC 9449 §10), and brings a refresh token only when the client asked for
-- offline_access. Codes live a minute; those in flight keep the old rule.
ALTER TABLE auth_codes ADD COLUMN dpop_jkt TEXT;
ALTER TABLE auth_codes ADD COLUMN offline INTEGER NOT NULL DEFAULT 1;
