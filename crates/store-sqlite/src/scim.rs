//! SCIM's records (ADR 0020): provisioning tokens, what SCIM says of each
//! person, and SCIM groups with their members.

use mandate_core::store::{Mutation, Page, ScimGroupQuery, ScimUserQuery, StoreError};
use mandate_model::UserId;
use mandate_model::records::{ScimGroup, ScimToken, ScimUserRecord};
use mandate_store_sql::{self as codec, ScimGroupRow, ScimTokenRow, ScimUserRow, ids, json, revision, ts, user_status};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::readers::Mapped;
use crate::writer::exec;

/// A users row with the SCIM source of the person's groups (a literal, so
/// that queries can `concat!` their `WHERE`).
macro_rules! user_select {
    () => {
        "SELECT users.*, (SELECT json_group_array(g.display_name) FROM scim_group_members m \
         JOIN scim_groups g ON g.id = m.group_id WHERE m.user_id = users.id) AS scim_groups FROM users"
    };
}
pub(crate) use user_select;

const GROUP_SELECT: &str = "SELECT scim_groups.*, (SELECT json_group_array(m.user_id) FROM scim_group_members m \
     WHERE m.group_id = scim_groups.id) AS members FROM scim_groups";

fn stale(what: String) -> StoreError {
    StoreError::Stale(what)
}

/// Applies one mutation of this family, each one statement.
pub(crate) fn apply(conn: &Connection, m: &Mutation) -> Result<u64, StoreError> {
    match m {
        Mutation::UpdatePersonIf { id, was, now } => {
            let n = exec(
                conn,
                "UPDATE users SET name = ?1, email = ?2, status = ?3 \
                 WHERE id = ?4 AND name = ?5 AND email = ?6 AND status = ?7",
                params![
                    now.name,
                    now.email,
                    user_status(now.status),
                    id.to_string(),
                    was.name,
                    was.email,
                    user_status(was.status)
                ],
                "user",
            )?;
            if n == 0 {
                return Err(stale(format!("user {id} changed or is gone")));
            }
            Ok(n)
        }
        Mutation::InsertScimToken(t) => exec(
            conn,
            "INSERT INTO scim_tokens (id, hash, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4)",
            params![t.id, t.hash, ts(t.created_at)?, t.revoked_at.map(ts).transpose()?],
            "SCIM token",
        ),
        Mutation::RevokeScimToken { id, at } => exec(
            conn,
            "UPDATE scim_tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            params![ts(*at)?, id],
            "SCIM token",
        ),
        Mutation::PutScimUser { record: r, expect } => {
            let key = ScimUserRecord::user_name_key(&r.user_name);
            let (profile, rev, deleted) = (json(&r.profile)?, revision(r.revision)?, r.deleted_at.map(ts).transpose()?);
            let n = match expect {
                None => exec(
                    conn,
                    "INSERT INTO scim_users (user_id, user_name, user_name_key, external_id, profile, revision, deleted_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (user_id) DO NOTHING",
                    params![r.user.to_string(), r.user_name, key, r.external_id, profile, rev, deleted],
                    "SCIM userName",
                )?,
                Some(expect) => exec(
                    conn,
                    "UPDATE scim_users SET user_name = ?2, user_name_key = ?3, external_id = ?4, profile = ?5, \
                     revision = ?6, deleted_at = ?7 WHERE user_id = ?1 AND revision = ?8",
                    params![
                        r.user.to_string(),
                        r.user_name,
                        key,
                        r.external_id,
                        profile,
                        rev,
                        deleted,
                        revision(*expect)?
                    ],
                    "SCIM userName",
                )?,
            };
            if n == 0 {
                return Err(stale(format!("SCIM's record of {} changed", r.user)));
            }
            Ok(n)
        }
        Mutation::InsertScimGroup(g) => exec(
            conn,
            "INSERT INTO scim_groups (id, display_name, external_id, revision, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                g.id.to_string(),
                g.display_name,
                g.external_id,
                revision(g.revision)?,
                ts(g.created_at)?,
                ts(g.updated_at)?
            ],
            "SCIM group",
        ),
        Mutation::UpdateScimGroup { group: g, expect } => {
            let n = exec(
                conn,
                "UPDATE scim_groups SET display_name = ?2, external_id = ?3, revision = ?4, updated_at = ?5 \
                 WHERE id = ?1 AND revision = ?6",
                params![
                    g.id.to_string(),
                    g.display_name,
                    g.external_id,
                    revision(g.revision)?,
                    ts(g.updated_at)?,
                    revision(*expect)?
                ],
                "SCIM group displayName",
            )?;
            if n == 0 {
                return Err(stale(format!("SCIM group {} changed or is gone", g.id)));
            }
            Ok(n)
        }
        Mutation::DeleteScimGroup { id, expect } => {
            // The memberships go with it (ON DELETE CASCADE).
            let n = exec(
                conn,
                "DELETE FROM scim_groups WHERE id = ?1 AND revision = ?2",
                params![id.to_string(), revision(*expect)?],
                "SCIM group",
            )?;
            if n == 0 {
                return Err(stale(format!("SCIM group {id} changed or is gone")));
            }
            Ok(n)
        }
        Mutation::AddScimGroupMembers { group, users } => exec(
            conn,
            "INSERT INTO scim_group_members (group_id, user_id) SELECT ?1, value FROM json_each(?2) WHERE true \
             ON CONFLICT (group_id, user_id) DO NOTHING",
            params![group.to_string(), ids(users)?],
            "SCIM group member",
        ),
        Mutation::RemoveScimGroupMembers { group, users } => exec(
            conn,
            "DELETE FROM scim_group_members WHERE group_id = ?1 AND user_id IN (SELECT value FROM json_each(?2))",
            params![group.to_string(), ids(users)?],
            "SCIM group member",
        ),
        Mutation::RemoveUserFromScimGroups { user } => exec(
            conn,
            "DELETE FROM scim_group_members WHERE user_id = ?1",
            params![user.to_string()],
            "SCIM group member",
        ),
        other => Err(crate::writer::misrouted(other)),
    }
}

pub(crate) fn token_row(r: &Row<'_>) -> Mapped<ScimToken> {
    Ok(ScimToken::try_from(ScimTokenRow {
        id: r.get("id")?,
        hash: r.get("hash")?,
        created_at: r.get("created_at")?,
        revoked_at: r.get("revoked_at")?,
    }))
}

pub(crate) fn user_record_row(r: &Row<'_>) -> Mapped<ScimUserRecord> {
    Ok(ScimUserRecord::try_from(ScimUserRow {
        user_id: r.get("user_id")?,
        user_name: r.get("user_name")?,
        external_id: r.get("external_id")?,
        profile: r.get("profile")?,
        revision: r.get("revision")?,
        deleted_at: r.get("deleted_at")?,
    }))
}

pub(crate) fn group_row(r: &Row<'_>) -> Mapped<ScimGroup> {
    Ok(ScimGroup::try_from(ScimGroupRow {
        id: r.get("id")?,
        display_name: r.get("display_name")?,
        external_id: r.get("external_id")?,
        members: r.get("members")?,
        revision: r.get("revision")?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
    }))
}

pub(crate) fn group(c: &Connection, id: &str) -> rusqlite::Result<Option<Result<ScimGroup, StoreError>>> {
    c.prepare_cached(&format!("{GROUP_SELECT} WHERE id = ?1"))?.query_row([id], group_row).optional()
}

fn offset(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Unavailable(format!("offset {n} is beyond what the store holds")))
}

fn count(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("count {n}")))
}

const USERS_WHERE: &str = "FROM users u LEFT JOIN scim_users s ON s.user_id = u.id WHERE s.deleted_at IS NULL \
     AND (?1 IS NULL OR s.user_name_key = ?1 OR (s.user_id IS NULL AND u.email = ?1)) \
     AND (?2 IS NULL OR s.external_id = ?2) AND (?3 IS NULL OR u.email = ?3)";

pub(crate) fn users(c: &Connection, q: &ScimUserQuery) -> Result<Page<UserId>, StoreError> {
    let key = q.user_name.as_deref().map(ScimUserRecord::user_name_key);
    let skip = offset(q.offset)?;
    let run = || -> rusqlite::Result<(i64, Vec<String>)> {
        let total: i64 = c
            .prepare_cached(&format!("SELECT count(*) {USERS_WHERE}"))?
            .query_row(params![key, q.external_id, q.email], |r| r.get(0))?;
        let page = c
            .prepare_cached(&format!("SELECT u.id {USERS_WHERE} ORDER BY u.id LIMIT ?4 OFFSET ?5"))?
            .query_map(params![key, q.external_id, q.email, q.limit, skip], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((total, page))
    };
    let (total, page) = run().map_err(crate::unavailable)?;
    Ok(Page {
        total: count(total)?,
        items: page.iter().map(|id| codec::parse::<UserId>(id)).collect::<Result<_, _>>()?,
    })
}

const GROUPS_WHERE: &str = "WHERE (?1 IS NULL OR lower(display_name) = ?1) AND (?2 IS NULL OR external_id = ?2)";

pub(crate) fn groups(c: &Connection, q: &ScimGroupQuery) -> Result<Page<ScimGroup>, StoreError> {
    let name = q.display_name.as_deref().map(str::to_lowercase);
    let skip = offset(q.offset)?;
    let run = || -> rusqlite::Result<(i64, Vec<Result<ScimGroup, StoreError>>)> {
        let total: i64 = c
            .prepare_cached(&format!("SELECT count(*) FROM scim_groups {GROUPS_WHERE}"))?
            .query_row(params![name, q.external_id], |r| r.get(0))?;
        let page = c
            .prepare_cached(&format!("{GROUP_SELECT} {GROUPS_WHERE} ORDER BY id LIMIT ?3 OFFSET ?4"))?
            .query_map(params![name, q.external_id, q.limit, skip], group_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((total, page))
    };
    let (total, page) = run().map_err(crate::unavailable)?;
    Ok(Page { total: count(total)?, items: page.into_iter().collect::<Result<_, _>>()? })
}
