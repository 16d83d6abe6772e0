//! SCIM's records (ADR 0020): provisioning tokens, what SCIM says of each
//! person, and SCIM groups with their members.

use mandate_core::store::{Mutation, Page, ScimGroupQuery, ScimUserQuery, StoreError};
use mandate_model::UserId;
use mandate_model::records::{ScimGroup, ScimToken, ScimUserRecord};
use mandate_store_sql::{self as codec, ScimGroupRow, ScimTokenRow, ScimUserRow, ids, json, revision, ts, user_status};
use sqlx::postgres::{PgConnection, PgPool, PgRow};

use crate::writer::{map_write_error, misrouted};
use crate::{get, unavailable};

/// A users row with the SCIM source of the person's groups (a literal, so
/// that queries can `concat!` their `WHERE`).
macro_rules! user_select {
    () => {
        "SELECT users.*, (SELECT coalesce(json_agg(g.display_name), '[]'::json)::text FROM scim_group_members m \
         JOIN scim_groups g ON g.id = m.group_id WHERE m.user_id = users.id) AS scim_groups FROM users"
    };
}
pub(crate) use user_select;

const GROUP_SELECT: &str = "SELECT scim_groups.*, (SELECT coalesce(json_agg(m.user_id), '[]'::json)::text \
     FROM scim_group_members m WHERE m.group_id = scim_groups.id) AS members FROM scim_groups";

fn stale(what: String) -> StoreError {
    StoreError::Stale(what)
}

/// Applies one mutation of this family, each one statement.
pub(crate) async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    let n = match m {
        Mutation::UpdatePersonIf { id, was, now } => {
            let n = sqlx::query(
                "UPDATE users SET name = $1, email = $2, status = $3 \
                 WHERE id = $4 AND name = $5 AND email = $6 AND status = $7",
            )
            .bind(&now.name)
            .bind(&now.email)
            .bind(user_status(now.status))
            .bind(id.to_string())
            .bind(&was.name)
            .bind(&was.email)
            .bind(user_status(was.status))
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "user"))?
            .rows_affected();
            if n == 0 {
                return Err(stale(format!("user {id} changed or is gone")));
            }
            n
        }
        Mutation::InsertScimToken(t) => sqlx::query(
            "INSERT INTO scim_tokens (id, hash, created_at, revoked_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&t.id)
        .bind(&t.hash)
        .bind(ts(t.created_at)?)
        .bind(t.revoked_at.map(ts).transpose()?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "SCIM token"))?
        .rows_affected(),
        Mutation::RevokeScimToken { id, at } => {
            sqlx::query("UPDATE scim_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(ts(*at)?)
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?
                .rows_affected()
        }
        Mutation::PutScimUser { record: r, expect } => {
            let sql = match expect {
                None => {
                    "INSERT INTO scim_users (user_id, user_name, user_name_key, external_id, profile, revision, deleted_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id) DO NOTHING"
                }
                Some(_) => {
                    "UPDATE scim_users SET user_name = $2, user_name_key = $3, external_id = $4, profile = $5, \
                     revision = $6, deleted_at = $7 WHERE user_id = $1 AND revision = $8"
                }
            };
            let n = sqlx::query(sql)
                .bind(r.user.to_string())
                .bind(&r.user_name)
                .bind(ScimUserRecord::user_name_key(&r.user_name))
                .bind(&r.external_id)
                .bind(json(&r.profile)?)
                .bind(revision(r.revision)?)
                .bind(r.deleted_at.map(ts).transpose()?);
            let n = match expect {
                Some(e) => n.bind(revision(*e)?),
                None => n,
            }
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "SCIM userName"))?
            .rows_affected();
            if n == 0 {
                return Err(stale(format!("SCIM's record of {} changed", r.user)));
            }
            n
        }
        Mutation::InsertScimGroup(g) => sqlx::query(
            "INSERT INTO scim_groups (id, display_name, external_id, revision, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(g.id.to_string())
        .bind(&g.display_name)
        .bind(&g.external_id)
        .bind(revision(g.revision)?)
        .bind(ts(g.created_at)?)
        .bind(ts(g.updated_at)?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "SCIM group"))?
        .rows_affected(),
        Mutation::UpdateScimGroup { group: g, expect } => {
            let n = sqlx::query(
                "UPDATE scim_groups SET display_name = $2, external_id = $3, revision = $4, updated_at = $5 \
                 WHERE id = $1 AND revision = $6",
            )
            .bind(g.id.to_string())
            .bind(&g.display_name)
            .bind(&g.external_id)
            .bind(revision(g.revision)?)
            .bind(ts(g.updated_at)?)
            .bind(revision(*expect)?)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "SCIM group displayName"))?
            .rows_affected();
            if n == 0 {
                return Err(stale(format!("SCIM group {} changed or is gone", g.id)));
            }
            n
        }
        Mutation::DeleteScimGroup { id, expect } => {
            // The memberships go with it (ON DELETE CASCADE).
            let n = sqlx::query("DELETE FROM scim_groups WHERE id = $1 AND revision = $2")
                .bind(id.to_string())
                .bind(revision(*expect)?)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?
                .rows_affected();
            if n == 0 {
                return Err(stale(format!("SCIM group {id} changed or is gone")));
            }
            n
        }
        Mutation::AddScimGroupMembers { group, users } => sqlx::query(
            "INSERT INTO scim_group_members (group_id, user_id) SELECT $1, u FROM jsonb_array_elements_text($2::jsonb) AS u \
             ON CONFLICT (group_id, user_id) DO NOTHING",
        )
        .bind(group.to_string())
        .bind(ids(users)?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "SCIM group member"))?
        .rows_affected(),
        Mutation::RemoveScimGroupMembers { group, users } => sqlx::query(
            "DELETE FROM scim_group_members WHERE group_id = $1 \
             AND user_id IN (SELECT jsonb_array_elements_text($2::jsonb))",
        )
        .bind(group.to_string())
        .bind(ids(users)?)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?
        .rows_affected(),
        Mutation::RemoveUserFromScimGroups { user } => sqlx::query("DELETE FROM scim_group_members WHERE user_id = $1")
            .bind(user.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?
            .rows_affected(),
        other => return Err(misrouted(other)),
    };
    Ok(n)
}

pub(crate) fn token_row(r: &PgRow) -> Result<ScimToken, StoreError> {
    ScimToken::try_from(ScimTokenRow {
        id: get(r, "id")?,
        hash: get(r, "hash")?,
        created_at: get(r, "created_at")?,
        revoked_at: get(r, "revoked_at")?,
    })
}

pub(crate) fn user_record_row(r: &PgRow) -> Result<ScimUserRecord, StoreError> {
    ScimUserRecord::try_from(ScimUserRow {
        user_id: get(r, "user_id")?,
        user_name: get(r, "user_name")?,
        external_id: get(r, "external_id")?,
        profile: get(r, "profile")?,
        revision: get(r, "revision")?,
        deleted_at: get(r, "deleted_at")?,
    })
}

pub(crate) fn group_row(r: &PgRow) -> Result<ScimGroup, StoreError> {
    ScimGroup::try_from(ScimGroupRow {
        id: get(r, "id")?,
        display_name: get(r, "display_name")?,
        external_id: get(r, "external_id")?,
        members: get(r, "members")?,
        revision: get(r, "revision")?,
        created_at: get(r, "created_at")?,
        updated_at: get(r, "updated_at")?,
    })
}

pub(crate) async fn group(pool: &PgPool, id: &str) -> Result<Option<ScimGroup>, StoreError> {
    let row = sqlx::query(&format!("{GROUP_SELECT} WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(group_row).transpose()
}

fn offset(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Unavailable(format!("offset {n} is beyond what the store holds")))
}

fn count(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("count {n}")))
}

const USERS_WHERE: &str = "FROM users u LEFT JOIN scim_users s ON s.user_id = u.id WHERE s.deleted_at IS NULL \
     AND ($1::text IS NULL OR s.user_name_key = $1 OR (s.user_id IS NULL AND u.email = $1)) \
     AND ($2::text IS NULL OR s.external_id = $2) AND ($3::text IS NULL OR u.email = $3)";

pub(crate) async fn users(pool: &PgPool, q: &ScimUserQuery) -> Result<Page<UserId>, StoreError> {
    let key = q.user_name.as_deref().map(ScimUserRecord::user_name_key);
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) {USERS_WHERE}"))
        .bind(&key)
        .bind(&q.external_id)
        .bind(&q.email)
        .fetch_one(pool)
        .await
        .map_err(unavailable)?;
    let page: Vec<String> = sqlx::query_scalar(&format!("SELECT u.id {USERS_WHERE} ORDER BY u.id LIMIT $4 OFFSET $5"))
        .bind(&key)
        .bind(&q.external_id)
        .bind(&q.email)
        .bind(i64::from(q.limit))
        .bind(offset(q.offset)?)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    Ok(Page {
        total: count(total)?,
        items: page.iter().map(|id| codec::parse::<UserId>(id)).collect::<Result<_, _>>()?,
    })
}

const GROUPS_WHERE: &str =
    "WHERE ($1::text IS NULL OR lower(display_name) = $1) AND ($2::text IS NULL OR external_id = $2)";

pub(crate) async fn groups(pool: &PgPool, q: &ScimGroupQuery) -> Result<Page<ScimGroup>, StoreError> {
    let name = q.display_name.as_deref().map(str::to_lowercase);
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM scim_groups {GROUPS_WHERE}"))
        .bind(&name)
        .bind(&q.external_id)
        .fetch_one(pool)
        .await
        .map_err(unavailable)?;
    let rows = sqlx::query(&format!("{GROUP_SELECT} {GROUPS_WHERE} ORDER BY id LIMIT $3 OFFSET $4"))
        .bind(&name)
        .bind(&q.external_id)
        .bind(i64::from(q.limit))
        .bind(offset(q.offset)?)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    Ok(Page { total: count(total)?, items: rows.iter().map(group_row).collect::<Result<_, _>>()? })
}
