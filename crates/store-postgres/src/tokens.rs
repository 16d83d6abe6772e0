//! Access tokens and their revocation trees, refresh families, status-list indexes, the replay store (client assertion and DPoP `jti`s) and the attempt counters.

use mandate_core::store::{LAST_USE_RESOLUTION, Mutation, StoreError};
use mandate_model::records::{ClientId, RefreshRecord, TokenRecord};
use mandate_store_sql::{RefreshRow, TokenRow, json, ts};
use sqlx::postgres::{PgConnection, PgRow};

use crate::writer::{map_write_error, misrouted};
use crate::{PgQuery, get, unavailable, unnest_args};

/// Applies one mutation of this family. (Long by nature: one arm per
/// mutation, each one statement; splitting the match would only hide it.)
pub(crate) async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    let done = match m {
        Mutation::RevokeTokensOfAgent { agent, at } => {
            return revoke_tree(conn, "client_id = $2 AND expires_at > $1", *at, &agent.to_string()).await;
        }
        Mutation::RevokeTokensOfSubject { subject, at } => sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE subject = $2 AND revoked_at IS NULL")
            .bind(ts(*at)?)
            .bind(subject)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::RevokeTokensOfOwnedAgents { owner, at } => {
            return revoke_tree(
                conn,
                "expires_at > $1 AND client_id IN (SELECT id FROM agents WHERE owner = $2)",
                *at,
                &owner.to_string(),
            )
            .await;
        }
        Mutation::ConsumeAssertionJti { client, jti, expires_at } => {
            let r = sqlx::query("INSERT INTO assertion_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(client.to_string())
                .bind(jti)
                .bind(ts(*expires_at)?)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Replay);
            }
            r
        }
        Mutation::ConsumeDpopJti { key, expires_at } => {
            let r = sqlx::query("INSERT INTO dpop_jtis (key, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(key)
                .bind(ts(*expires_at)?)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::DpopReplay);
            }
            r
        }
        Mutation::ConsumeGrantJti { key, expires_at } => {
            let r = sqlx::query("INSERT INTO dpop_jtis (key, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(format!("grant:{key}"))
                .bind(ts(*expires_at)?)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::GrantReplay);
            }
            r
        }
        Mutation::ReserveStatusIndexes { count } => {
            let count = i64::try_from(*count).map_err(|_| unavailable("status index overflow"))?;
            let first: i64 =
                sqlx::query_scalar("UPDATE status_counter SET next = next + $1 WHERE id = 1 RETURNING next - $1")
                    .bind(count)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(unavailable)?;
            return u64::try_from(first).map_err(|_| unavailable("status index overflow"));
        }
        Mutation::InsertToken(t) => {
            token_may_be_inserted(conn, t).await?;
            let done = sqlx::query(
            "INSERT INTO tokens (jti, client_id, subject, audience, scopes, grant_id, parent, chain, issued_at, expires_at, cnf_jkt, revoked_at, family, status_idx) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(t.jti.to_string())
        .bind(t.client_id.to_string())
        .bind(&t.subject)
        .bind(&t.audience)
        .bind(json(&t.scopes)?)
        .bind(t.grant.map(|g| g.to_string()))
        .bind(t.parent.map(|p| p.to_string()))
        .bind(json(&t.chain)?)
        .bind(ts(t.issued_at)?)
        .bind(ts(t.expires_at)?)
        .bind(&t.cnf_jkt)
        .bind(t.revoked_at.map(ts).transpose()?)
        .bind(&t.family)
        .bind(t.status_idx.map(i64::try_from).transpose().map_err(|_| unavailable("status index overflow"))?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "token"))?;
            touch_agents(conn, &[t]).await?;
            done
        }
        Mutation::RevokeToken { jti, at } => return revoke_tree(conn, "jti = $2", *at, &jti.to_string()).await,
        Mutation::RevokeTokensOfGrant { grant, at } => {
            return revoke_tree(conn, "grant_id = $2 AND expires_at > $1", *at, &grant.to_string()).await;
        }
        Mutation::InsertRefresh(r) => sqlx::query(
            "INSERT INTO refresh_tokens (hash, family, grant_id, client_id, scopes, issued_at, expires_at, used_at, revoked_at, cnf_jkt) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&r.hash)
        .bind(&r.family)
        .bind(r.grant.to_string())
        .bind(r.client_id.to_string())
        .bind(json(&r.scopes)?)
        .bind(ts(r.issued_at)?)
        .bind(ts(r.expires_at)?)
        .bind(r.used_at.map(ts).transpose()?)
        .bind(r.revoked_at.map(ts).transpose()?)
        .bind(&r.cnf_jkt)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "refresh token"))?,
        Mutation::UseRefresh { hash, at } => {
            let r = sqlx::query(
                "UPDATE refresh_tokens SET used_at = $1 WHERE hash = $2 AND used_at IS NULL AND revoked_at IS NULL",
            )
            .bind(ts(*at)?)
            .bind(hash)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict("the refresh token was already used".into()));
            }
            r
        }
        Mutation::RevokeRefreshFamily { family, at } => sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL")
            .bind(ts(*at)?)
            .bind(family)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::RevokeTokensOfFamily { family, at } => {
            return revoke_tree(conn, "family = $2 AND expires_at > $1", *at, family).await;
        }
        Mutation::PurgeExpiredJtis { before } => {
            let mut n = 0;
            for table in ["assertion_jtis", "dpop_jtis"] {
                n += sqlx::query(&format!("DELETE FROM {table} WHERE expires_at < $1"))
                    .bind(ts(*before)?)
                    .execute(&mut *conn)
                    .await
                    .map_err(unavailable)?
                    .rows_affected();
            }
            // Signalled revocations are forgotten too (not counted: they are
            // not replay entries).
            sqlx::query("DELETE FROM ssf_signalled WHERE at < $1")
                .bind(ts(*before)?)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            return Ok(n);
        }
        Mutation::SwapAttemptCounter { key, expected, new } => {
            let r = match expected {
                None => sqlx::query(
                    "INSERT INTO attempt_counters (key, count, last_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(key)
                .bind(i64::from(new.count))
                .bind(ts(new.last)?)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?,
                Some(old) => sqlx::query(
                    "UPDATE attempt_counters SET count = $2, last_at = $3 WHERE key = $1 AND count = $4 AND last_at = $5",
                )
                .bind(key)
                .bind(i64::from(new.count))
                .bind(ts(new.last)?)
                .bind(i64::from(old.count))
                .bind(ts(old.last)?)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?,
            };
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("the attempt counter {key} has moved")));
            }
            r
        }
        Mutation::ForgetAttemptCounter { key } => sqlx::query("DELETE FROM attempt_counters WHERE key = $1")
            .bind(key)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::DecrementAttemptCounter { key } => {
            sqlx::query("UPDATE attempt_counters SET count = GREATEST(count - 1, 0) WHERE key = $1")
                .bind(key)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?
        }
        Mutation::PurgeAttemptCounters { before } => sqlx::query("DELETE FROM attempt_counters WHERE last_at < $1")
            .bind(ts(*before)?)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        other => return Err(misrouted(other)),
    };
    Ok(done.rows_affected())
}

pub(crate) fn token_row(r: &PgRow) -> Result<TokenRecord, StoreError> {
    TokenRecord::try_from(TokenRow {
        jti: get(r, "jti")?,
        client_id: get(r, "client_id")?,
        subject: get(r, "subject")?,
        audience: get(r, "audience")?,
        scopes: get(r, "scopes")?,
        grant_id: get(r, "grant_id")?,
        parent: get(r, "parent")?,
        chain: get(r, "chain")?,
        issued_at: get(r, "issued_at")?,
        expires_at: get(r, "expires_at")?,
        cnf_jkt: get(r, "cnf_jkt")?,
        status_idx: get(r, "status_idx")?,
        family: get(r, "family")?,
        revoked_at: get(r, "revoked_at")?,
    })
}

pub(crate) fn refresh_row(r: &PgRow) -> Result<RefreshRecord, StoreError> {
    RefreshRecord::try_from(RefreshRow {
        hash: get(r, "hash")?,
        family: get(r, "family")?,
        grant_id: get(r, "grant_id")?,
        client_id: get(r, "client_id")?,
        scopes: get(r, "scopes")?,
        issued_at: get(r, "issued_at")?,
        expires_at: get(r, "expires_at")?,
        used_at: get(r, "used_at")?,
        revoked_at: get(r, "revoked_at")?,
        cnf_jkt: get(r, "cnf_jkt")?,
    })
}

/// Revokes the live tokens matching `roots` (SQL over `tokens` with the
/// time as $1 and one text parameter as $2) and every token exchanged from
/// them, transitively. Two statements on purpose: the first takes the row
/// locks of the roots, waiting for any exchange that holds one (see
/// [`token_may_be_inserted`]); the second starts after that, so under READ
/// COMMITTED its snapshot includes the children such an exchange committed.
pub(crate) async fn revoke_tree(
    conn: &mut PgConnection,
    roots: &str,
    at: time::OffsetDateTime,
    param: &str,
) -> Result<u64, StoreError> {
    let direct = sqlx::query(&format!("UPDATE tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND {roots}"))
        .bind(ts(at)?)
        .bind(param)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?
        .rows_affected();
    let below = sqlx::query(&format!(
        "WITH RECURSIVE tree(jti) AS (SELECT jti FROM tokens WHERE parent IN (SELECT jti FROM tokens WHERE {roots}) \
         UNION SELECT t.jti FROM tokens t JOIN tree ON t.parent = tree.jti) \
         UPDATE tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND jti IN (SELECT jti FROM tree)"
    ))
    .bind(ts(at)?)
    .bind(param)
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?
    .rows_affected();
    Ok(direct + below)
}

/// A delegated token goes in only under a live parent (read `FOR SHARE`)
/// and an active grant (read `FOR NO KEY UPDATE`): a revocation that updated either row first makes this
/// wait and then see it revoked; one that comes later waits for this
/// transaction and then sees the new token (see [`revoke_tree`]).
pub(crate) async fn token_may_be_inserted(conn: &mut PgConnection, t: &TokenRecord) -> Result<(), StoreError> {
    if let Some(parent) = t.parent {
        let live: Option<bool> =
            sqlx::query_scalar("SELECT revoked_at IS NULL AND expires_at > $2 FROM tokens WHERE jti = $1 FOR SHARE")
                .bind(parent.to_string())
                .bind(ts(t.issued_at)?)
                .fetch_optional(&mut *conn)
                .await
                .map_err(unavailable)?;
        if live != Some(true) {
            return Err(StoreError::Conflict(format!("parent token {parent} is revoked or unknown")));
        }
    }
    if let Some(grant) = t.grant {
        // FOR NO KEY UPDATE, not FOR SHARE: a token under a grant comes with
        // `TouchGrant`, an update of the same row. Two writers each holding
        // a share lock and each waiting to update would deadlock (found by
        // PostgreSQL only after `deadlock_timeout`); this lock is the one the
        // update takes, so the second writer waits for the first to commit.
        let active: Option<bool> = sqlx::query_scalar(
            "SELECT status = 'active' AND expires_at > $2 FROM grants WHERE id = $1 FOR NO KEY UPDATE",
        )
        .bind(grant.to_string())
        .bind(ts(t.issued_at)?)
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
        if active != Some(true) {
            return Err(StoreError::Conflict(format!("grant {grant} is not active")));
        }
    }
    Ok(())
}

/// Whether the writer may put `m` in with the rest of its batch's rows of
/// its kind, in one statement (see [`burn_assertions`], [`insert_tokens`]):
/// the mutations of a `client_credentials` or assertion-authenticated
/// token, and nothing that reads or changes what they write.
pub(crate) fn bulk_kind(m: &Mutation) -> bool {
    match m {
        Mutation::InsertToken(t) => t.parent.is_none() && t.grant.is_none(),
        Mutation::ConsumeAssertionJti { .. } | Mutation::AppendAudit(_) | Mutation::ReserveStatusIndexes { .. } => true,
        _ => false,
    }
}

/// Burns the client-assertion `jti`s that open the batch's changes, with
/// one statement: `Some(true)` for a change whose `jti` went in,
/// `Some(false)` for a replay (of a stored one, or of an earlier change of
/// the batch), `None` for a change that does not open with one.
pub(crate) async fn burn_assertions(
    conn: &mut PgConnection,
    changes: &[&mandate_core::store::Change],
) -> Result<Vec<Option<bool>>, StoreError> {
    let mut rows: Vec<(usize, String, &str, i64)> = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        if let Some(Mutation::ConsumeAssertionJti { client, jti, expires_at }) = c.mutations().next() {
            rows.push((i, client.to_string(), jti.as_str(), ts(*expires_at)?));
        }
    }
    let mut out = vec![None; changes.len()];
    if rows.is_empty() {
        return Ok(out);
    }
    let burned: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO assertion_jtis (client_id, jti, expires_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) ON CONFLICT DO NOTHING RETURNING client_id, jti",
    )
    .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    let mut fresh: std::collections::HashSet<(String, String)> = burned.into_iter().collect();
    for (i, client, jti, _) in rows {
        // The first change to name a jti burns it; any other replays it.
        let went_in = fresh.remove(&(client, jti.to_owned()));
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(went_in);
        }
    }
    Ok(out)
}

/// The array parameters [`bind_tokens`] binds, in its order.
pub(crate) const TOKEN_TYPES: [&str; 14] = [
    "text", "text", "text", "text", "text", "text", "text", "text", "bigint", "bigint", "text", "bigint", "text",
    "bigint",
];

/// An insert of the tokens bound by [`bind_tokens`] from parameter `first` on.
pub(crate) fn insert_tokens_sql(first: usize) -> String {
    format!(
        "INSERT INTO tokens (jti, client_id, subject, audience, scopes, grant_id, parent, chain, issued_at, \
         expires_at, cnf_jkt, revoked_at, family, status_idx) SELECT * FROM UNNEST({})",
        unnest_args(first, &TOKEN_TYPES)
    )
}

/// Binds `tokens` column by column, one array each ([`TOKEN_TYPES`]).
pub(crate) fn bind_tokens<'q>(q: PgQuery<'q>, tokens: &[&TokenRecord]) -> Result<PgQuery<'q>, StoreError> {
    fn col(tokens: &[&TokenRecord], f: impl Fn(&TokenRecord) -> Option<String>) -> Vec<Option<String>> {
        tokens.iter().map(|t| f(t)).collect()
    }
    let times = |f: fn(&TokenRecord) -> Option<time::OffsetDateTime>| {
        tokens.iter().map(|t| f(t).map(ts).transpose()).collect::<Result<Vec<_>, _>>()
    };
    let status = tokens
        .iter()
        .map(|t| t.status_idx.map(i64::try_from).transpose().map_err(|_| unavailable("status index overflow")))
        .collect::<Result<Vec<_>, _>>()?;
    let scopes = tokens.iter().map(|t| json(&t.scopes)).collect::<Result<Vec<_>, _>>()?;
    let chains = tokens.iter().map(|t| json(&t.chain)).collect::<Result<Vec<_>, _>>()?;
    Ok(q.bind(col(tokens, |t| Some(t.jti.to_string())))
        .bind(col(tokens, |t| Some(t.client_id.to_string())))
        .bind(col(tokens, |t| Some(t.subject.clone())))
        .bind(col(tokens, |t| Some(t.audience.clone())))
        .bind(scopes)
        .bind(col(tokens, |t| t.grant.map(|g| g.to_string())))
        .bind(col(tokens, |t| t.parent.map(|p| p.to_string())))
        .bind(chains)
        .bind(times(|t| Some(t.issued_at))?)
        .bind(times(|t| Some(t.expires_at))?)
        .bind(col(tokens, |t| t.cnf_jkt.clone()))
        .bind(times(|t| t.revoked_at)?)
        .bind(col(tokens, |t| t.family.clone()))
        .bind(status))
}

static INSERT_TOKENS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| insert_tokens_sql(1));

/// Inserts the tokens of a batch with one statement (tokens with neither a
/// parent nor a grant, which need no check under lock: see
/// [`token_may_be_inserted`]).
pub(crate) async fn insert_tokens(conn: &mut PgConnection, tokens: &[&TokenRecord]) -> Result<(), StoreError> {
    bind_tokens(sqlx::query(INSERT_TOKENS.as_str()), tokens)?
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "token"))?;
    touch_agents(conn, tokens).await
}

/// Records the last use of the agents `tokens` were issued to, each unless
/// its recorded one is within [`LAST_USE_RESOLUTION`] of its newest token
/// (ADR 0032): a busy agent costs one row update a minute. Rows another
/// transaction holds are skipped (`SKIP LOCKED`): that one is recording a
/// use of the same moment, and no batch waits on, or deadlocks with,
/// another over an agent's row.
async fn touch_agents(conn: &mut PgConnection, tokens: &[&TokenRecord]) -> Result<(), StoreError> {
    let Some((ids, ats, stale)) = last_uses(tokens)? else { return Ok(()) };
    sqlx::query(TOUCH_AGENTS.as_str())
        .bind(ids)
        .bind(ats)
        .bind(stale)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "agent"))?;
    Ok(())
}

static TOUCH_AGENTS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| touch_agents_sql(1));

/// The update of [`touch_agents`], its three arrays ([`last_uses`]) bound
/// from parameter `first` on.
pub(crate) fn touch_agents_sql(first: usize) -> String {
    format!(
        "UPDATE agents a SET last_used_at = u.at FROM ( \
           SELECT ag.id, t.at FROM UNNEST({}) AS t(id, at, stale) \
           JOIN agents ag ON ag.id = t.id \
           WHERE ag.last_used_at IS NULL OR ag.last_used_at < t.stale \
           ORDER BY ag.id FOR UPDATE OF ag SKIP LOCKED) u \
         WHERE a.id = u.id",
        unnest_args(first, &["text", "bigint", "bigint"])
    )
}

/// Per agent: its id, its newest token's issue time, and the last use
/// older than which it is recorded anew.
pub(crate) type LastUses = (Vec<String>, Vec<i64>, Vec<i64>);

/// The [`LastUses`] of the agents `tokens` were issued to; `None` when no
/// token went to an agent.
pub(crate) fn last_uses(tokens: &[&TokenRecord]) -> Result<Option<LastUses>, StoreError> {
    let mut newest: std::collections::BTreeMap<String, time::OffsetDateTime> = std::collections::BTreeMap::new();
    for t in tokens {
        if let ClientId::Agent(a) = t.client_id {
            let at = newest.entry(a.to_string()).or_insert(t.issued_at);
            *at = (*at).max(t.issued_at);
        }
    }
    if newest.is_empty() {
        return Ok(None);
    }
    let mut ids = Vec::with_capacity(newest.len());
    let mut ats = Vec::with_capacity(newest.len());
    let mut stale = Vec::with_capacity(newest.len());
    for (id, at) in newest {
        ids.push(id);
        ats.push(ts(at)?);
        stale.push(ts(at - LAST_USE_RESOLUTION)?);
    }
    Ok(Some((ids, ats, stale)))
}
