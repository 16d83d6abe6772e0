//! The audit trail: events sealed under the chain's head row and inserted a batch at a time, and checkpoints.

use mandate_audit::{Checkpoint, Event};
use mandate_core::audit::seal_record;
use mandate_core::store::{Applied, Mutation, StoreError};
use mandate_store_sql::{EventRow, json};
use sqlx::postgres::{PgConnection, PgRow};

use crate::writer::{map_write_error, misrouted};
use crate::{get, unavailable};

/// Applies one mutation of this family.
pub(crate) async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    let done = match m {
        Mutation::InsertCheckpoint(cp) => sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, time, kid, signature) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
        )
        .bind(i64::try_from(cp.seq).map_err(|_| StoreError::Unavailable("checkpoint seq does not fit a bigint".into()))?)
        .bind(&cp.hash)
        .bind(&cp.time)
        .bind(&cp.kid)
        .bind(&cp.signature)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "checkpoint"))?,
        other => return Err(misrouted(other)),
    };
    Ok(done.rows_affected())
}

/// The audit chain's head as the batch sees it.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) hash: String,
}

/// Seals the next event after the chain's head, locking the head row the
/// first time a batch needs it (the lock lasts until the batch commits).
pub(crate) async fn append(
    conn: &mut PgConnection,
    head: &mut Option<Head>,
    record: &mandate_core::AuditRecord,
    applied: &Applied,
) -> Result<Event, StoreError> {
    let current = match head.take() {
        Some(h) => h,
        None => {
            let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *conn)
                .await
                .map_err(unavailable)?;
            let seq: i64 = get(&row, "seq")?;
            let hash: String = get(&row, "hash")?;
            // An undecodable head stops the writer: never restart the chain.
            if !mandate_audit::is_chain_hash(&hash) {
                return Err(StoreError::Corrupt("the audit chain head's hash is not a SHA-256 hex digest".into()));
            }
            Head { seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit head {seq}")))?, hash }
        }
    };
    let sealed = seal_record(record, applied, current.seq + 1, &current.hash);
    *head = Some(match &sealed {
        Ok(e) => Head { seq: e.seq, hash: e.hash.clone() },
        Err(_) => current,
    });
    sealed
}

/// Inserts a batch's events and moves the head row, with one statement.
pub(crate) async fn insert_events(conn: &mut PgConnection, events: &[Event], head: &Head) -> Result<(), StoreError> {
    fn col(events: &[Event], f: impl Fn(&Event) -> Option<String>) -> Vec<Option<String>> {
        events.iter().map(f).collect()
    }
    let overflow = |what: &str| StoreError::Unavailable(format!("audit {what} does not fit a bigint"));
    let seqs =
        events.iter().map(|e| i64::try_from(e.seq).map_err(|_| overflow("seq"))).collect::<Result<Vec<_>, _>>()?;
    let counts = events
        .iter()
        .map(|e| e.count.map(|c| i64::try_from(c).map_err(|_| overflow("count"))).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let chains = events.iter().map(|e| json(&e.chain)).collect::<Result<Vec<_>, _>>()?;
    sqlx::query(
        "WITH inserted AS (INSERT INTO audit_events (seq, time, type, decision, subject, actor, chain, client_id, \
         action, resource, scope, jti, grant_id, parent, count, reason, request_id, prev_hash, hash) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::bigint[], \
         $16::text[], $17::text[], $18::text[], $19::text[])) \
         UPDATE audit_head SET seq = $20, hash = $21 WHERE id = 1",
    )
    .bind(seqs)
    .bind(events.iter().map(|e| e.time.clone()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.kind.clone()).collect::<Vec<_>>())
    .bind(col(events, |e| e.decision.clone()))
    .bind(col(events, |e| e.subject.clone()))
    .bind(col(events, |e| e.actor.clone()))
    .bind(chains)
    .bind(col(events, |e| e.client_id.clone()))
    .bind(col(events, |e| e.action.clone()))
    .bind(col(events, |e| e.resource.clone()))
    .bind(col(events, |e| e.scope.clone()))
    .bind(col(events, |e| e.jti.clone()))
    .bind(col(events, |e| e.grant_id.clone()))
    .bind(col(events, |e| e.parent.clone()))
    .bind(counts)
    .bind(col(events, |e| e.reason.clone()))
    .bind(col(events, |e| e.request_id.clone()))
    .bind(events.iter().map(|e| e.prev_hash.clone()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.hash.clone()).collect::<Vec<_>>())
    .bind(i64::try_from(head.seq).map_err(|_| overflow("head"))?)
    .bind(&head.hash)
    .execute(&mut *conn)
    .await
    .map_err(|e| map_write_error(e, "audit event"))?;
    Ok(())
}

pub(crate) fn event_row(r: &PgRow) -> Result<Event, StoreError> {
    Event::try_from(EventRow {
        seq: get(r, "seq")?,
        time: get(r, "time")?,
        kind: get(r, "type")?,
        decision: get(r, "decision")?,
        subject: get(r, "subject")?,
        actor: get(r, "actor")?,
        chain: get(r, "chain")?,
        client_id: get(r, "client_id")?,
        action: get(r, "action")?,
        resource: get(r, "resource")?,
        scope: get(r, "scope")?,
        jti: get(r, "jti")?,
        grant_id: get(r, "grant_id")?,
        parent: get(r, "parent")?,
        count: get(r, "count")?,
        reason: get(r, "reason")?,
        request_id: get(r, "request_id")?,
        prev_hash: get(r, "prev_hash")?,
        hash: get(r, "hash")?,
    })
}

pub(crate) fn checkpoint_row(r: &PgRow) -> Result<Checkpoint, StoreError> {
    let seq: i64 = get(r, "seq")?;
    Ok(Checkpoint {
        seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("checkpoint seq {seq}")))?,
        hash: get(r, "hash")?,
        time: get(r, "time")?,
        kid: get(r, "kid")?,
        signature: get(r, "signature")?,
    })
}
