-- SCIM provisioning in tables (ADR 0020): the provisioning clients'
-- tokens, SCIM's record of each person it provisioned (userName as sent,
-- externalId, the name and emails it sent, the deletion mark), and SCIM
-- groups with their members, whose displayNames are Cedar groups.

CREATE TABLE scim_tokens (
    id         TEXT PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE scim_users (
    user_id       TEXT PRIMARY KEY REFERENCES users (id),
    user_name     TEXT NOT NULL,
    -- userName is unique without regard to case (RFC 7643 §4.1.1).
    user_name_key TEXT NOT NULL UNIQUE,
    external_id   TEXT,
    profile       TEXT NOT NULL,
    revision      INTEGER NOT NULL,
    deleted_at    INTEGER
);
CREATE INDEX scim_users_external_id ON scim_users (external_id) WHERE external_id IS NOT NULL;

CREATE TABLE scim_groups (
    id           TEXT PRIMARY KEY,
    display_name TEXT NOT NULL UNIQUE,
    external_id  TEXT,
    revision     INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX scim_groups_external_id ON scim_groups (external_id) WHERE external_id IS NOT NULL;

CREATE TABLE scim_group_members (
    group_id TEXT NOT NULL REFERENCES scim_groups (id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL REFERENCES users (id),
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX scim_group_members_user ON scim_group_members (user_id);

-- What ADR 0020 first kept as write-once settings moves here. A token's
-- creation time is its scim.token_created event's (written in the same
-- change as the token; to the second); its revocation time is the
-- scim.revoked setting's (seconds).
INSERT INTO scim_tokens (id, hash, created_at, revoked_at)
SELECT substr(t.key, length('scim.token.') + 1),
       t.value,
       (SELECT unixepoch(substr(min(e.time), 1, 19)) * 1000000000 FROM audit_events e
         WHERE e.type = 'scim.token_created' AND e.client_id = substr(t.key, length('scim.token.') + 1)),
       (SELECT CAST(r.value AS INTEGER) * 1000000000 FROM settings r
         WHERE r.key = 'scim.revoked.' || substr(t.key, length('scim.token.') + 1))
FROM settings t
WHERE t.key LIKE 'scim.token.%';

-- A person SCIM deleted had userName = their email then.
INSERT INTO scim_users (user_id, user_name, user_name_key, external_id, profile, revision, deleted_at)
SELECT u.id, u.email, u.email, NULL, '{}', 1, CAST(d.value AS INTEGER) * 1000000000
FROM settings d JOIN users u ON u.id = substr(d.key, length('scim.deleted.') + 1)
WHERE d.key LIKE 'scim.deleted.%';

DELETE FROM settings WHERE key LIKE 'scim.token.%' OR key LIKE 'scim.revoked.%' OR key LIKE 'scim.deleted.%';
