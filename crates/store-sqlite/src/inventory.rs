//! The inventory report's reads and its samples (ADR 0035).

use mandate_core::report::{InventoryTally, Peaks, ReportBy};
use mandate_core::store::{Mutation, StoreError};
use mandate_store_sql::{agent_fact, count, grant_fact, peak, token_fact, ts};
use rusqlite::{Connection, params};

use crate::writer::{exec, misrouted};

/// Applies one mutation of this family.
pub(crate) fn apply(conn: &Connection, m: &Mutation) -> Result<u64, StoreError> {
    match m {
        Mutation::RecordInventorySamples { hour, samples } => {
            let hour = ts(*hour)?;
            let mut n = 0;
            for s in samples {
                n += exec(
                    conn,
                    "INSERT INTO inventory_samples (dimension, key, hour, grants, tokens, ephemeral_agents) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (dimension, key, hour) DO UPDATE SET \
                     grants = max(grants, excluded.grants), tokens = max(tokens, excluded.tokens), \
                     ephemeral_agents = max(ephemeral_agents, excluded.ephemeral_agents)",
                    params![
                        s.by.as_str(),
                        s.key,
                        hour,
                        count(s.counts.grants)?,
                        count(s.counts.tokens)?,
                        count(s.counts.ephemeral_agents)?
                    ],
                    "inventory sample",
                )?;
            }
            Ok(n)
        }
        Mutation::PruneInventorySamples { before } => {
            exec(conn, "DELETE FROM inventory_samples WHERE hour < ?1", params![ts(*before)?], "inventory samples")
        }
        other => Err(misrouted(other)),
    }
}

/// Grants live or ended since `?1`: the active ones by expiry, the revoked
/// ones by revocation, each through its partial index.
const GRANTS: &str = "SELECT a.owner, g.resource, g.scopes, g.created_at, g.expires_at, g.revoked_at \
     FROM grants g JOIN agents a ON a.id = g.agent WHERE g.status = 'active' AND g.expires_at >= ?1 \
     UNION ALL \
     SELECT a.owner, g.resource, g.scopes, g.created_at, g.expires_at, g.revoked_at \
     FROM grants g JOIN agents a ON a.id = g.agent WHERE g.status = 'revoked' AND g.revoked_at >= ?1";

/// Tokens live or ended since `?1` (all expire at or after it).
const TOKENS: &str = "SELECT a.owner, a.kind, t.audience, t.scopes, t.issued_at, t.expires_at, t.revoked_at \
     FROM tokens t LEFT JOIN agents a ON a.id = t.client_id WHERE t.expires_at >= ?1";

/// Agents live, and ephemeral ones retired since `?1`. The second part names
/// its index: with `agents (status, id)` (migration 0027) the planner would
/// otherwise read every retired agent, not those retired since `?1`.
const AGENTS: &str = "SELECT owner, kind, created_at, expires_at, status, retired_at FROM agents WHERE status <> 'retired' \
     UNION ALL \
     SELECT owner, kind, created_at, expires_at, status, retired_at FROM agents INDEXED BY agents_ephemeral_retired \
     WHERE kind = 'ephemeral' AND status = 'retired' AND retired_at >= ?1";

/// Feeds `tally` the grants, tokens and agents that are live or ended at
/// or after `since` (Unix nanoseconds), each read through an index on its
/// end time (migration 0025).
pub(crate) fn tally(
    c: &Connection,
    mut tally: InventoryTally,
    since: i64,
) -> rusqlite::Result<Result<InventoryTally, StoreError>> {
    let mut grants = c.prepare_cached(GRANTS)?;
    let mut rows = grants.query([since])?;
    while let Some(r) = rows.next()? {
        let fact = grant_fact(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?);
        if let Err(e) = fact.and_then(|f| tally.grant(&f)) {
            return Ok(Err(e));
        }
    }
    let mut tokens = c.prepare_cached(TOKENS)?;
    let mut rows = tokens.query([since])?;
    while let Some(r) = rows.next()? {
        let fact = token_fact(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?);
        if let Err(e) = fact.and_then(|f| tally.token(&f)) {
            return Ok(Err(e));
        }
    }
    if tally.counts_agents() {
        let mut agents = c.prepare_cached(AGENTS)?;
        let mut rows = agents.query([since])?;
        while let Some(r) = rows.next()? {
            let (kind, status): (String, String) = (r.get(1)?, r.get(4)?);
            let fact = agent_fact(r.get(0)?, &kind, r.get(2)?, r.get(3)?, &status, r.get(5)?);
            if let Err(e) = fact.and_then(|f| tally.agent(&f)) {
                return Ok(Err(e));
            }
        }
    }
    Ok(Ok(tally))
}

/// The peaks of the keys of `by` from `first` to `last`: one range of the
/// samples' primary key.
pub(crate) fn peaks(
    c: &Connection,
    by: ReportBy,
    first: &str,
    last: &str,
    since_24h: i64,
    since_7d: i64,
) -> rusqlite::Result<Result<Vec<Peaks>, StoreError>> {
    let mut stmt = c.prepare_cached(
        "SELECT key, max(CASE WHEN hour >= ?4 THEN grants END), max(CASE WHEN hour >= ?4 THEN tokens END), \
         max(CASE WHEN hour >= ?4 THEN ephemeral_agents END), max(grants), max(tokens), max(ephemeral_agents) \
         FROM inventory_samples WHERE dimension = ?1 AND key >= ?2 AND key <= ?3 AND hour >= ?5 \
         GROUP BY key ORDER BY key",
    )?;
    let rows = stmt
        .query_map(params![by.as_str(), first, last, since_24h, since_7d], |r| {
            Ok((
                r.get::<_, String>(0)?,
                [r.get::<_, Option<i64>>(1)?, r.get(2)?, r.get(3)?],
                [r.get::<_, i64>(4)?, r.get(5)?, r.get(6)?],
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows.into_iter().map(|(key, day, week)| peak(key, day, week)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of `sql`, one detail per line.
    fn plan(c: &Connection, sql: &str) -> rusqlite::Result<String> {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        // The plan does not depend on the values: NULL for each parameter.
        let nulls = std::iter::repeat_n(rusqlite::types::Null, stmt.parameter_count());
        let rows = stmt
            .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows.join("\n"))
    }

    /// The report reads through its indexes (never a scan of the history),
    /// and the access review's walk over the inventory list still reads
    /// the partial index of live agents.
    #[tokio::test]
    async fn the_report_and_the_review_read_through_their_indexes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("plan.db");
        let _store = crate::SqliteStore::open(&path).await?;
        let c = Connection::open(&path)?;
        let grants = plan(&c, GRANTS)?;
        anyhow::ensure!(
            grants.contains("grants_active_expires") && grants.contains("grants_revoked_at"),
            "grants: {grants}"
        );
        let tokens = plan(&c, TOKENS)?;
        anyhow::ensure!(tokens.contains("tokens_expires"), "tokens: {tokens}");
        let agents = plan(&c, AGENTS)?;
        anyhow::ensure!(
            agents.contains("agents_live") && agents.contains("agents_ephemeral_retired"),
            "agents: {agents}"
        );
        let q = mandate_core::store::AgentListQuery {
            not_retired: true,
            before: Some("agt_01J00000000000000000000000".parse()?),
            limit: 500,
            ..Default::default()
        };
        let (tail, _) = mandate_store_sql::agent_list_where(&q, |n| format!("?{n}"))?;
        let review = plan(&c, &format!("SELECT * FROM agents{tail}"))?;
        anyhow::ensure!(review.contains("agents_live") && !review.contains("TEMP B-TREE"), "review: {review}");
        Ok(())
    }
}
