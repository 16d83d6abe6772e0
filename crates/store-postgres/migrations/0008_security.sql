-- Security fixes (SECURITY rows 44-47).

-- Who suspended an agent: only that level or higher may resume it. Who
-- suspended the agents already suspended is not known: the admin, so that
-- no owner can undo what the admin may have done.
ALTER TABLE agents ADD COLUMN suspended_by TEXT CHECK (suspended_by IN ('admin', 'owner'));
UPDATE agents SET suspended_by = 'admin' WHERE status = 'suspended';

-- User API tokens get an id, an expiry and a revocation. Existing tokens
-- expire 30 days after they were made; their id is derived from their hash
-- (a leading 0 keeps it a valid ULID).
ALTER TABLE user_tokens ADD COLUMN id TEXT;
ALTER TABLE user_tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE user_tokens ADD COLUMN revoked_at BIGINT;
UPDATE user_tokens SET id = 'utk_0' || upper(substr(hash, 1, 25)), expires_at = created_at + 2592000000000000;
CREATE UNIQUE INDEX user_tokens_id ON user_tokens (id);
CREATE INDEX user_tokens_user ON user_tokens (user_id);

-- Emails are stored in one case: the local part lower-cased (ASCII only,
-- as SQLite does, whatever the database's locale), the domain was already.
-- A row whose lower-cased email another row already has is left as it is,
-- for an admin to resolve.
UPDATE users SET email = translate(email, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
 WHERE email <> translate(email, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
   AND (SELECT count(*) FROM users AS twin
         WHERE translate(twin.email, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
             = translate(users.email, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')) = 1;

-- Pending approvals (CIBA requests and action approvals) are counted per
-- agent and per agent and user.
CREATE INDEX approvals_pending_agent ON approvals (agent, status, user_id);
