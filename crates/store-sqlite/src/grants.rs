//! Grants and the authorization codes that create them.

use mandate_core::store::{Mutation, StoreError};
use mandate_model::records::Grant;
use mandate_store_sql::{GrantRow, json, ts};
use rusqlite::{Connection, Row, params};

use crate::readers::Mapped;
use crate::writer::exec;

/// Applies one mutation of this family.
pub(crate) fn apply(conn: &Connection, m: &Mutation) -> Result<u64, StoreError> {
    match m {
        Mutation::InsertAuthCode(c) => exec(
            conn,
            "INSERT INTO auth_codes (hash, agent, user_id, grant_id, redirect_uri, code_challenge, created_at, expires_at, used_at, \
             dpop_jkt, offline) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                c.hash,
                c.agent.to_string(),
                c.user.to_string(),
                c.grant.to_string(),
                c.redirect_uri,
                c.code_challenge,
                ts(c.created_at)?,
                ts(c.expires_at)?,
                c.used_at.map(ts).transpose()?,
                c.dpop_jkt,
                c.offline
            ],
            "authorization code",
        ),
        Mutation::UseAuthCode { hash, at } => {
            let n = exec(
                conn,
                "UPDATE auth_codes SET used_at = ?1 WHERE hash = ?2 AND used_at IS NULL",
                params![ts(*at)?, hash],
                "authorization code",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict("the authorization code was already used".into()));
            }
            Ok(n)
        }
        Mutation::InsertGrant(g) => exec(
            conn,
            "INSERT INTO grants (id, user_id, agent, resource, scopes, purpose, approved_by, status, created_at, expires_at, revoked_at, last_used_at, may_act, authorization_details, \
             reapproved_at, reapprovals, lapsed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                g.id.to_string(),
                g.user.to_string(),
                g.agent.to_string(),
                g.resource,
                json(&g.scopes)?,
                g.purpose,
                g.approved_by,
                g.status.as_str(),
                ts(g.created_at)?,
                ts(g.expires_at)?,
                g.revoked_at.map(ts).transpose()?,
                g.last_used_at.map(ts).transpose()?,
                g.may_act.as_ref().map(mandate_model::actors::MayAct::to_list),
                json(&g.authorization_details)?,
                g.reapproved_at.map(ts).transpose()?,
                g.reapprovals,
                g.lapsed_at.map(ts).transpose()?,
            ],
            "grant",
        ),
        Mutation::RevokeGrant { id, at } => exec(
            conn,
            "UPDATE grants SET status = 'revoked', revoked_at = ?1 WHERE id = ?2 AND status = 'active'",
            params![ts(*at)?, id.to_string()],
            "grant",
        ),
        Mutation::RevokeGrantsOfUser { user, at } => exec(
            conn,
            "UPDATE grants SET status = 'revoked', revoked_at = ?1 WHERE user_id = ?2 AND status = 'active'",
            params![ts(*at)?, user.to_string()],
            "grants",
        ),
        Mutation::RevokeGrantsOfAgent { agent, at } => exec(
            conn,
            "UPDATE grants SET status = 'revoked', revoked_at = ?1 WHERE agent = ?2 AND status = 'active'",
            params![ts(*at)?, agent.to_string()],
            "grants",
        ),
        Mutation::ExtendGrant { id, from, to, at, purpose } => {
            let n = exec(
                conn,
                "UPDATE grants SET expires_at = ?1, reapproved_at = ?2, reapprovals = reapprovals + 1, \
                 purpose = COALESCE(?3, purpose) WHERE id = ?4 AND status = 'active' AND expires_at = ?5 AND expires_at > ?2",
                params![ts(*to)?, ts(*at)?, purpose, id.to_string(), ts(*from)?],
                "grant",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("grant {id} is not live with that expiry")));
            }
            Ok(n)
        }
        Mutation::MarkGrantLapsed { id, at } => {
            let n = exec(
                conn,
                "UPDATE grants SET lapsed_at = ?1 WHERE id = ?2 AND status = 'active' AND lapsed_at IS NULL AND expires_at <= ?1",
                params![ts(*at)?, id.to_string()],
                "grant",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("grant {id} is not due to be reported lapsed")));
            }
            Ok(n)
        }
        Mutation::NarrowGrantScopes { id, scopes } => {
            let n = exec(
                conn,
                "UPDATE grants SET scopes = ?1 WHERE id = ?2 AND status = 'active'",
                params![json(scopes)?, id.to_string()],
                "grant",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("grant {id} is not active")));
            }
            Ok(n)
        }
        Mutation::TouchGrant { id, at } => {
            exec(conn, "UPDATE grants SET last_used_at = ?1 WHERE id = ?2", params![ts(*at)?, id.to_string()], "grant")
        }
        other => Err(crate::writer::misrouted(other)),
    }
}

pub(crate) fn grant_row(r: &Row<'_>) -> Mapped<Grant> {
    Ok(Grant::try_from(GrantRow {
        id: r.get("id")?,
        user_id: r.get("user_id")?,
        agent: r.get("agent")?,
        resource: r.get("resource")?,
        scopes: r.get("scopes")?,
        purpose: r.get("purpose")?,
        approved_by: r.get("approved_by")?,
        status: r.get("status")?,
        created_at: r.get("created_at")?,
        expires_at: r.get("expires_at")?,
        revoked_at: r.get("revoked_at")?,
        last_used_at: r.get("last_used_at")?,
        may_act: r.get("may_act")?,
        authorization_details: r.get("authorization_details")?,
        reapproved_at: r.get("reapproved_at")?,
        reapprovals: r.get("reapprovals")?,
        lapsed_at: r.get("lapsed_at")?,
    }))
}
