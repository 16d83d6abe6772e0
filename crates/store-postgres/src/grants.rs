//! Grants and the authorization codes that create them.

use mandate_core::store::{Mutation, StoreError};
use mandate_model::records::Grant;
use mandate_store_sql::{GrantRow, json, ts};
use sqlx::postgres::{PgConnection, PgRow};

use crate::writer::{map_write_error, misrouted};
use crate::{get, unavailable};

/// Applies one mutation of this family.
pub(crate) async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    let done = match m {
        Mutation::InsertAuthCode(c) => sqlx::query(
            "INSERT INTO auth_codes (hash, agent, user_id, grant_id, redirect_uri, code_challenge, created_at, expires_at, used_at, \
             dpop_jkt, offline) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&c.hash)
        .bind(c.agent.to_string())
        .bind(c.user.to_string())
        .bind(c.grant.to_string())
        .bind(&c.redirect_uri)
        .bind(&c.code_challenge)
        .bind(ts(c.created_at)?)
        .bind(ts(c.expires_at)?)
        .bind(c.used_at.map(ts).transpose()?)
        .bind(&c.dpop_jkt)
        .bind(c.offline)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "authorization code"))?,
        Mutation::UseAuthCode { hash, at } => {
            let r = sqlx::query("UPDATE auth_codes SET used_at = $1 WHERE hash = $2 AND used_at IS NULL")
                .bind(ts(*at)?)
                .bind(hash)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict("the authorization code was already used".into()));
            }
            r
        }
        Mutation::InsertGrant(g) => sqlx::query(
            "INSERT INTO grants (id, user_id, agent, resource, scopes, purpose, approved_by, status, created_at, expires_at, revoked_at, last_used_at, may_act, authorization_details, \
             reapproved_at, reapprovals, lapsed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(g.id.to_string())
        .bind(g.user.to_string())
        .bind(g.agent.to_string())
        .bind(&g.resource)
        .bind(json(&g.scopes)?)
        .bind(&g.purpose)
        .bind(&g.approved_by)
        .bind(g.status.as_str())
        .bind(ts(g.created_at)?)
        .bind(ts(g.expires_at)?)
        .bind(g.revoked_at.map(ts).transpose()?)
        .bind(g.last_used_at.map(ts).transpose()?)
        .bind(g.may_act.as_ref().map(mandate_model::actors::MayAct::to_list))
        .bind(json(&g.authorization_details)?)
        .bind(g.reapproved_at.map(ts).transpose()?)
        .bind(i64::from(g.reapprovals))
        .bind(g.lapsed_at.map(ts).transpose()?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "grant"))?,
        Mutation::RevokeGrant { id, at } => sqlx::query("UPDATE grants SET status = 'revoked', revoked_at = $1 WHERE id = $2 AND status = 'active'")
            .bind(ts(*at)?)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::RevokeGrantsOfUser { user, at } => sqlx::query("UPDATE grants SET status = 'revoked', revoked_at = $1 WHERE user_id = $2 AND status = 'active'")
            .bind(ts(*at)?)
            .bind(user.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::RevokeGrantsOfAgent { agent, at } => sqlx::query("UPDATE grants SET status = 'revoked', revoked_at = $1 WHERE agent = $2 AND status = 'active'")
            .bind(ts(*at)?)
            .bind(agent.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::ExtendGrant { id, from, to, at, purpose } => {
            let r = sqlx::query(
                "UPDATE grants SET expires_at = $1, reapproved_at = $2, reapprovals = reapprovals + 1, \
                 purpose = COALESCE($3, purpose) WHERE id = $4 AND status = 'active' AND expires_at = $5 AND expires_at > $2",
            )
            .bind(ts(*to)?)
            .bind(ts(*at)?)
            .bind(purpose)
            .bind(id.to_string())
            .bind(ts(*from)?)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("grant {id} is not live with that expiry")));
            }
            r
        }
        Mutation::MarkGrantLapsed { id, at } => {
            let r = sqlx::query(
                "UPDATE grants SET lapsed_at = $1 WHERE id = $2 AND status = 'active' AND lapsed_at IS NULL AND expires_at <= $1",
            )
            .bind(ts(*at)?)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("grant {id} is not due to be reported lapsed")));
            }
            r
        }
        Mutation::NarrowGrantScopes { id, scopes } => {
            let r = sqlx::query("UPDATE grants SET scopes = $1 WHERE id = $2 AND status = 'active'")
                .bind(json(scopes)?)
                .bind(id.to_string())
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("grant {id} is not active")));
            }
            r
        }
        Mutation::TouchGrant { id, at } => sqlx::query("UPDATE grants SET last_used_at = $1 WHERE id = $2")
            .bind(ts(*at)?)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        other => return Err(misrouted(other)),
    };
    Ok(done.rows_affected())
}

pub(crate) fn grant_row(r: &PgRow) -> Result<Grant, StoreError> {
    Grant::try_from(GrantRow {
        id: get(r, "id")?,
        user_id: get(r, "user_id")?,
        agent: get(r, "agent")?,
        resource: get(r, "resource")?,
        scopes: get(r, "scopes")?,
        purpose: get(r, "purpose")?,
        approved_by: get(r, "approved_by")?,
        status: get(r, "status")?,
        created_at: get(r, "created_at")?,
        expires_at: get(r, "expires_at")?,
        revoked_at: get(r, "revoked_at")?,
        last_used_at: get(r, "last_used_at")?,
        may_act: get(r, "may_act")?,
        authorization_details: get(r, "authorization_details")?,
        reapproved_at: get(r, "reapproved_at")?,
        reapprovals: get(r, "reapprovals")?,
        lapsed_at: get(r, "lapsed_at")?,
    })
}
