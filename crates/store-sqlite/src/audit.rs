//! The audit trail: events appended under the chain's head, and checkpoints.

use mandate_audit::{Checkpoint, Event, GENESIS};
use mandate_core::store::{Applied, Mutation, StoreError};
use mandate_store_sql::{EventRow, json};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::readers::Mapped;
use crate::unavailable;
use crate::writer::exec;

/// Applies one mutation of this family.
pub(crate) fn apply(conn: &Connection, m: &Mutation, applied: &Applied, head: &mut Head) -> Result<u64, StoreError> {
    match m {
        Mutation::AppendAudit(record) => {
            // Hashed from the record in place: the writer is the hot path.
            let e = &record.event;
            let seq = head.seq + 1;
            let count = record.count(applied)?;
            let hash = record.hash_at(seq, &head.hash, count);
            exec(
                conn,
                "INSERT INTO audit_events (seq, time, type, decision, subject, actor, chain, client_id, action, resource, \
                 scope, jti, grant_id, parent, count, reason, request_id, prev_hash, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
                params![
                    i64::try_from(seq).map_err(|_| unavailable("audit seq overflow"))?,
                    e.time,
                    e.kind,
                    e.decision,
                    e.subject,
                    e.actor,
                    json(&e.chain)?,
                    e.client_id,
                    e.action,
                    e.resource,
                    e.scope,
                    e.jti,
                    e.grant_id,
                    e.parent,
                    count.map(|c| i64::try_from(c).map_err(|_| unavailable("audit count overflow"))).transpose()?,
                    e.reason,
                    e.request_id,
                    head.hash,
                    hash,
                ],
                "audit event",
            )?;
            *head = Head { seq, hash };
            Ok(seq)
        }
        Mutation::InsertCheckpoint(cp) => exec(
            conn,
            "INSERT INTO audit_checkpoints (seq, hash, time, kid, signature) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (seq) DO NOTHING",
            params![
                i64::try_from(cp.seq).map_err(|_| unavailable("checkpoint seq overflow"))?,
                cp.hash,
                cp.time,
                cp.kid,
                cp.signature
            ],
            "checkpoint",
        ),
        other => Err(crate::writer::misrouted(other)),
    }
}

/// The audit chain's head: the last event's seq and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) hash: String,
}

pub(crate) fn load_head(conn: &Connection) -> rusqlite::Result<Head> {
    let last = conn
        .query_row("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?;
    match last {
        None => Ok(Head { seq: 0, hash: GENESIS.to_owned() }),
        // An undecodable head stops the store from opening: the chain is
        // never restarted at seq 0 over a trail that exists.
        Some((seq, hash)) => match u64::try_from(seq) {
            Ok(seq) if seq > 0 && mandate_audit::is_chain_hash(&hash) => Ok(Head { seq, hash }),
            _ => Err(rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Integer,
                format!("the audit chain head (seq {seq}) cannot be decoded").into(),
            )),
        },
    }
}

/// An event row, by position in `EVENT_COLUMNS` (a name lookup per column
/// costs more than the rest of reading the row).
pub(crate) fn event_row(r: &Row<'_>) -> Mapped<Event> {
    Ok(Event::try_from(EventRow {
        seq: r.get(0)?,
        time: r.get(1)?,
        kind: r.get(2)?,
        decision: r.get(3)?,
        subject: r.get(4)?,
        actor: r.get(5)?,
        chain: r.get(6)?,
        client_id: r.get(7)?,
        action: r.get(8)?,
        resource: r.get(9)?,
        scope: r.get(10)?,
        jti: r.get(11)?,
        grant_id: r.get(12)?,
        parent: r.get(13)?,
        count: r.get(14)?,
        reason: r.get(15)?,
        request_id: r.get(16)?,
        prev_hash: r.get(17)?,
        hash: r.get(18)?,
        // SQLite has one writer, and so one lane.
        lane: 0,
    }))
}

pub(crate) fn checkpoint_row(r: &Row<'_>) -> Mapped<Checkpoint> {
    let seq: i64 = r.get("seq")?;
    Ok(u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("checkpoint seq {seq}"))).and_then(|seq| {
        Ok(Checkpoint {
            seq,
            hash: r.get("hash").map_err(|e| StoreError::Corrupt(e.to_string()))?,
            time: r.get("time").map_err(|e| StoreError::Corrupt(e.to_string()))?,
            kid: r.get("kid").map_err(|e| StoreError::Corrupt(e.to_string()))?,
            signature: r.get("signature").map_err(|e| StoreError::Corrupt(e.to_string()))?,
        })
    }))
}
