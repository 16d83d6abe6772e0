//! Access tokens and their revocation trees, refresh families, status-list indexes, the replay store (client assertion and DPoP `jti`s) and the attempt counters.

use mandate_core::store::{LAST_USE_RESOLUTION, Mutation, StoreError};
use mandate_model::records::{ClientId, RefreshRecord, TokenRecord};
use mandate_store_sql::{RefreshRow, TokenRow, json, ts};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::readers::Mapped;
use crate::unavailable;
use crate::writer::exec;

/// Applies one mutation of this family. (Long by nature: one arm per
/// mutation, each one statement; splitting the match would only hide it.)
pub(crate) fn apply(conn: &Connection, m: &Mutation) -> Result<u64, StoreError> {
    match m {
        Mutation::RevokeTokensOfAgent { agent, at } => {
            revoke_tree(conn, "client_id = ?2 AND expires_at > ?1", params![ts(*at)?, agent.to_string()])
        }
        Mutation::RevokeTokensOfSubject { subject, at } => exec(
            conn,
            "UPDATE tokens SET revoked_at = ?1 WHERE subject = ?2 AND revoked_at IS NULL",
            params![ts(*at)?, subject],
            "tokens",
        ),
        Mutation::RevokeTokensOfOwnedAgents { owner, at } => revoke_tree(
            conn,
            "expires_at > ?1 AND client_id IN (SELECT id FROM agents WHERE owner = ?2)",
            params![ts(*at)?, owner.to_string()],
        ),
        Mutation::ConsumeAssertionJti { client, jti, expires_at } => {
            let n = exec(
                conn,
                "INSERT INTO assertion_jtis (client_id, jti, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![client.to_string(), jti, ts(*expires_at)?],
                "assertion jti",
            )?;
            if n == 0 {
                return Err(StoreError::Replay);
            }
            Ok(n)
        }
        Mutation::ConsumeDpopJti { key, expires_at } => {
            let n = exec(
                conn,
                "INSERT INTO dpop_jtis (key, expires_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![key, ts(*expires_at)?],
                "DPoP proof",
            )?;
            if n == 0 {
                return Err(StoreError::DpopReplay);
            }
            Ok(n)
        }
        Mutation::ConsumeGrantJti { key, expires_at } => {
            let n = exec(
                conn,
                "INSERT INTO dpop_jtis (key, expires_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![format!("grant:{key}"), ts(*expires_at)?],
                "grant assertion",
            )?;
            if n == 0 {
                return Err(StoreError::GrantReplay);
            }
            Ok(n)
        }
        Mutation::ReserveStatusIndexes { count } => {
            let count = i64::try_from(*count).map_err(|_| unavailable("status index overflow"))?;
            let first: i64 = conn
                .prepare_cached("UPDATE status_counter SET next = next + ?1 WHERE id = 1 RETURNING next - ?1")
                .and_then(|mut s| s.query_row([count], |r| r.get(0)))
                .map_err(unavailable)?;
            u64::try_from(first).map_err(|_| unavailable("status index overflow"))
        }
        Mutation::InsertToken(t) => {
            token_may_be_inserted(conn, t)?;
            exec(
                conn,
                "INSERT INTO tokens (jti, client_id, subject, audience, scopes, grant_id, parent, chain, issued_at, expires_at, cnf_jkt, revoked_at, family, status_idx) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    t.jti.to_string(),
                    t.client_id.to_string(),
                    t.subject,
                    t.audience,
                    json(&t.scopes)?,
                    t.grant.map(|g| g.to_string()),
                    t.parent.map(|p| p.to_string()),
                    json(&t.chain)?,
                    ts(t.issued_at)?,
                    ts(t.expires_at)?,
                    t.cnf_jkt,
                    t.revoked_at.map(ts).transpose()?,
                    t.family,
                    t.status_idx.map(i64::try_from).transpose().map_err(|_| unavailable("status index overflow"))?,
                ],
                "token",
            )
            .and_then(|n| touch_agent(conn, t).map(|()| n))
        }
        Mutation::RevokeToken { jti, at } => revoke_tree(conn, "jti = ?2", params![ts(*at)?, jti.to_string()]),
        Mutation::RevokeTokensOfGrant { grant, at } => {
            revoke_tree(conn, "grant_id = ?2 AND expires_at > ?1", params![ts(*at)?, grant.to_string()])
        }
        Mutation::InsertRefresh(r) => exec(
            conn,
            "INSERT INTO refresh_tokens (hash, family, grant_id, client_id, scopes, issued_at, expires_at, used_at, revoked_at, cnf_jkt) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                r.hash,
                r.family,
                r.grant.to_string(),
                r.client_id.to_string(),
                json(&r.scopes)?,
                ts(r.issued_at)?,
                ts(r.expires_at)?,
                r.used_at.map(ts).transpose()?,
                r.revoked_at.map(ts).transpose()?,
                r.cnf_jkt,
            ],
            "refresh token",
        ),
        Mutation::UseRefresh { hash, at } => {
            let n = exec(
                conn,
                "UPDATE refresh_tokens SET used_at = ?1 WHERE hash = ?2 AND used_at IS NULL AND revoked_at IS NULL",
                params![ts(*at)?, hash],
                "refresh token",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict("the refresh token was already used".into()));
            }
            Ok(n)
        }
        Mutation::RevokeRefreshFamily { family, at } => exec(
            conn,
            "UPDATE refresh_tokens SET revoked_at = ?1 WHERE family = ?2 AND revoked_at IS NULL",
            params![ts(*at)?, family],
            "refresh tokens",
        ),
        Mutation::RevokeTokensOfFamily { family, at } => {
            revoke_tree(conn, "family = ?2 AND expires_at > ?1", params![ts(*at)?, family])
        }
        Mutation::PurgeExpiredJtis { before } => {
            let n = exec(
                conn,
                "DELETE FROM assertion_jtis WHERE expires_at < ?1",
                params![ts(*before)?],
                "assertion jtis",
            )?;
            // Signalled revocations are forgotten too (not counted: they are
            // not replay entries).
            exec(conn, "DELETE FROM ssf_signalled WHERE at < ?1", params![ts(*before)?], "signalled")?;
            Ok(n + exec(conn, "DELETE FROM dpop_jtis WHERE expires_at < ?1", params![ts(*before)?], "DPoP proofs")?)
        }
        Mutation::SwapAttemptCounter { key, expected, new } => {
            let n = match expected {
                None => exec(
                    conn,
                    "INSERT INTO attempt_counters (key, count, last_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    params![key, new.count, ts(new.last)?],
                    "attempt counter",
                )?,
                Some(old) => exec(
                    conn,
                    "UPDATE attempt_counters SET count = ?2, last_at = ?3 WHERE key = ?1 AND count = ?4 AND last_at = ?5",
                    params![key, new.count, ts(new.last)?, old.count, ts(old.last)?],
                    "attempt counter",
                )?,
            };
            if n == 0 {
                return Err(StoreError::Conflict(format!("the attempt counter {key} has moved")));
            }
            Ok(n)
        }
        Mutation::ForgetAttemptCounter { key } => {
            exec(conn, "DELETE FROM attempt_counters WHERE key = ?1", params![key], "attempt counter")
        }
        Mutation::DecrementAttemptCounter { key } => exec(
            conn,
            "UPDATE attempt_counters SET count = max(count - 1, 0) WHERE key = ?1",
            params![key],
            "attempt counter",
        ),
        Mutation::PurgeAttemptCounters { before } => {
            exec(conn, "DELETE FROM attempt_counters WHERE last_at < ?1", params![ts(*before)?], "attempt counters")
        }
        other => Err(crate::writer::misrouted(other)),
    }
}

pub(crate) fn token_row(r: &Row<'_>) -> Mapped<TokenRecord> {
    Ok(TokenRecord::try_from(TokenRow {
        jti: r.get("jti")?,
        client_id: r.get("client_id")?,
        subject: r.get("subject")?,
        audience: r.get("audience")?,
        scopes: r.get("scopes")?,
        grant_id: r.get("grant_id")?,
        parent: r.get("parent")?,
        chain: r.get("chain")?,
        issued_at: r.get("issued_at")?,
        expires_at: r.get("expires_at")?,
        cnf_jkt: r.get("cnf_jkt")?,
        status_idx: r.get("status_idx")?,
        family: r.get("family")?,
        revoked_at: r.get("revoked_at")?,
    }))
}

pub(crate) fn refresh_row(r: &Row<'_>) -> Mapped<RefreshRecord> {
    Ok(RefreshRecord::try_from(RefreshRow {
        hash: r.get("hash")?,
        family: r.get("family")?,
        grant_id: r.get("grant_id")?,
        client_id: r.get("client_id")?,
        scopes: r.get("scopes")?,
        issued_at: r.get("issued_at")?,
        expires_at: r.get("expires_at")?,
        used_at: r.get("used_at")?,
        revoked_at: r.get("revoked_at")?,
        cnf_jkt: r.get("cnf_jkt")?,
    }))
}

/// Revokes the live tokens matching `roots` (SQL over `tokens`, with the
/// revocation time as ?1) and every token exchanged from any of them,
/// transitively. A child never outlives its parent, so expired roots are
/// skipped. One statement: the writer thread is the only writer.
pub(crate) fn revoke_tree(conn: &Connection, roots: &str, params: impl rusqlite::Params) -> Result<u64, StoreError> {
    let sql = format!(
        "WITH RECURSIVE tree(jti) AS (SELECT jti FROM tokens WHERE {roots} \
         UNION SELECT t.jti FROM tokens t JOIN tree ON t.parent = tree.jti) \
         UPDATE tokens SET revoked_at = ?1 WHERE revoked_at IS NULL AND jti IN (SELECT jti FROM tree)"
    );
    exec(conn, &sql, params, "tokens")
}

/// A delegated token goes in only under a live parent and an active grant.
pub(crate) fn token_may_be_inserted(conn: &Connection, t: &TokenRecord) -> Result<(), StoreError> {
    let issued_at = ts(t.issued_at)?;
    if let Some(parent) = t.parent {
        let live: Option<bool> = conn
            .prepare_cached("SELECT revoked_at IS NULL AND expires_at > ?2 FROM tokens WHERE jti = ?1")
            .and_then(|mut st| st.query_row(params![parent.to_string(), issued_at], |r| r.get(0)).optional())
            .map_err(unavailable)?;
        if live != Some(true) {
            return Err(StoreError::Conflict(format!("parent token {parent} is revoked or unknown")));
        }
    }
    if let Some(grant) = t.grant {
        let active: Option<bool> = conn
            .prepare_cached("SELECT status = 'active' AND expires_at > ?2 FROM grants WHERE id = ?1")
            .and_then(|mut st| st.query_row(params![grant.to_string(), issued_at], |r| r.get(0)).optional())
            .map_err(unavailable)?;
        if active != Some(true) {
            return Err(StoreError::Conflict(format!("grant {grant} is not active")));
        }
    }
    Ok(())
}

/// Records the last use of the agent a token was issued to, unless the
/// recorded one is within [`LAST_USE_RESOLUTION`] of it (ADR 0032): a busy
/// agent costs one row update a minute.
fn touch_agent(conn: &Connection, t: &TokenRecord) -> Result<(), StoreError> {
    let ClientId::Agent(agent) = t.client_id else {
        return Ok(());
    };
    exec(
        conn,
        "UPDATE agents SET last_used_at = ?1 WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?3)",
        params![ts(t.issued_at)?, agent.to_string(), ts(t.issued_at - LAST_USE_RESOLUTION)?],
        "agent",
    )
    .map(|_| ())
}
