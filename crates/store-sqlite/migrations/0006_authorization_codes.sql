-- Issue 6: authorization codes (OAuth 2.1 with PKCE). Only the SHA-256 of
-- a code is stored; a code is used once.
CREATE TABLE auth_codes (
    hash           TEXT PRIMARY KEY,
    agent          TEXT NOT NULL REFERENCES agents (id),
    user_id        TEXT NOT NULL REFERENCES users (id),
    grant_id       TEXT NOT NULL REFERENCES grants (id),
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER
) WITHOUT ROWID;
