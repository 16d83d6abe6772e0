//! The inventory report's reads and its samples (ADR 0035).

use futures_util::TryStreamExt;
use mandate_core::report::{InventoryTally, Peaks, ReportBy};
use mandate_core::store::{Mutation, StoreError};
use mandate_store_sql::{agent_fact, count, grant_fact, peak, token_fact, ts};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgRow};

use crate::unavailable;
use crate::writer::misrouted;

/// Applies one mutation of this family.
pub(crate) async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    match m {
        Mutation::RecordInventorySamples { hour, samples } => {
            let dims: Vec<&str> = samples.iter().map(|s| s.by.as_str()).collect();
            let keys: Vec<&str> = samples.iter().map(|s| s.key.as_str()).collect();
            let grants = samples.iter().map(|s| count(s.counts.grants)).collect::<Result<Vec<_>, _>>()?;
            let tokens = samples.iter().map(|s| count(s.counts.tokens)).collect::<Result<Vec<_>, _>>()?;
            let ephemeral = samples.iter().map(|s| count(s.counts.ephemeral_agents)).collect::<Result<Vec<_>, _>>()?;
            // One statement for the batch; GREATEST keeps the larger of this
            // node's sample and any other's.
            let r = sqlx::query(
                "INSERT INTO inventory_samples (dimension, key, hour, grants, tokens, ephemeral_agents) \
                 SELECT d, k, $3, g, t, e FROM UNNEST($1::text[], $2::text[], $4::bigint[], $5::bigint[], $6::bigint[]) \
                 AS u(d, k, g, t, e) \
                 ON CONFLICT (dimension, key, hour) DO UPDATE SET \
                 grants = GREATEST(inventory_samples.grants, excluded.grants), \
                 tokens = GREATEST(inventory_samples.tokens, excluded.tokens), \
                 ephemeral_agents = GREATEST(inventory_samples.ephemeral_agents, excluded.ephemeral_agents)",
            )
            .bind(&dims)
            .bind(&keys)
            .bind(ts(*hour)?)
            .bind(&grants)
            .bind(&tokens)
            .bind(&ephemeral)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            Ok(r.rows_affected())
        }
        Mutation::PruneInventorySamples { before } => {
            let r = sqlx::query("DELETE FROM inventory_samples WHERE hour < $1")
                .bind(ts(*before)?)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            Ok(r.rows_affected())
        }
        other => Err(misrouted(other)),
    }
}

fn col<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
    row: &'r PgRow,
    i: usize,
) -> Result<T, StoreError> {
    row.try_get(i).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Feeds `tally` the grants, tokens and agents that are live or ended at
/// or after its `since`, each read through an index on its end time
/// (migration 0027), row by row: memory holds the tally, not the rows.
pub(crate) async fn tally(pool: &PgPool, mut tally: InventoryTally) -> Result<InventoryTally, StoreError> {
    let since = ts(tally.since())?;
    let mut rows = sqlx::query(
        "SELECT a.owner, g.resource, g.scopes, g.created_at, g.expires_at, g.revoked_at \
         FROM grants g JOIN agents a ON a.id = g.agent WHERE g.status = 'active' AND g.expires_at >= $1 \
         UNION ALL \
         SELECT a.owner, g.resource, g.scopes, g.created_at, g.expires_at, g.revoked_at \
         FROM grants g JOIN agents a ON a.id = g.agent WHERE g.status = 'revoked' AND g.revoked_at >= $1",
    )
    .bind(since)
    .fetch(pool);
    while let Some(r) = rows.try_next().await.map_err(unavailable)? {
        let f = grant_fact(col(&r, 0)?, col(&r, 1)?, col(&r, 2)?, col(&r, 3)?, col(&r, 4)?, col(&r, 5)?)?;
        tally.grant(&f)?;
    }
    drop(rows);
    let mut rows = sqlx::query(
        "SELECT a.owner, a.kind, t.audience, t.scopes, t.issued_at, t.expires_at, t.revoked_at \
         FROM tokens t LEFT JOIN agents a ON a.id = t.client_id WHERE t.expires_at >= $1",
    )
    .bind(since)
    .fetch(pool);
    while let Some(r) = rows.try_next().await.map_err(unavailable)? {
        let f = token_fact(col(&r, 0)?, col(&r, 1)?, col(&r, 2)?, col(&r, 3)?, col(&r, 4)?, col(&r, 5)?, col(&r, 6)?)?;
        tally.token(&f)?;
    }
    drop(rows);
    if tally.counts_agents() {
        let mut rows = sqlx::query(
            "SELECT owner, kind, created_at, expires_at, status, retired_at FROM agents WHERE status <> 'retired' \
             UNION ALL \
             SELECT owner, kind, created_at, expires_at, status, retired_at FROM agents \
             WHERE kind = 'ephemeral' AND status = 'retired' AND retired_at >= $1",
        )
        .bind(since)
        .fetch(pool);
        while let Some(r) = rows.try_next().await.map_err(unavailable)? {
            let (kind, status): (String, String) = (col(&r, 1)?, col(&r, 4)?);
            let f = agent_fact(col(&r, 0)?, &kind, col(&r, 2)?, col(&r, 3)?, &status, col(&r, 5)?)?;
            tally.agent(&f)?;
        }
    }
    Ok(tally)
}

/// The peaks of the keys of `by` from `first` to `last`: one range of the
/// samples' primary key.
pub(crate) async fn peaks(
    pool: &PgPool,
    by: ReportBy,
    first: &str,
    last: &str,
    since_24h: i64,
    since_7d: i64,
) -> Result<Vec<Peaks>, StoreError> {
    let rows = sqlx::query(
        "SELECT key, max(CASE WHEN hour >= $4 THEN grants END), max(CASE WHEN hour >= $4 THEN tokens END), \
         max(CASE WHEN hour >= $4 THEN ephemeral_agents END), max(grants), max(tokens), max(ephemeral_agents) \
         FROM inventory_samples WHERE dimension = $1 AND key >= $2 AND key <= $3 AND hour >= $5 \
         GROUP BY key ORDER BY key",
    )
    .bind(by.as_str())
    .bind(first)
    .bind(last)
    .bind(since_24h)
    .bind(since_7d)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    rows.iter()
        .map(|r| peak(col(r, 0)?, [col(r, 1)?, col(r, 2)?, col(r, 3)?], [col(r, 4)?, col(r, 5)?, col(r, 6)?]))
        .collect()
}
