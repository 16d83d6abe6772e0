//! Shared Signals streams and the events waiting on them (ADR 0028). The
//! events of a change are queued by its own mutations, in its transaction;
//! a push stream is claimed for an attempt under a lease, so that two
//! nodes never push one stream at once.

use mandate_core::store::{Mutation, StoreError};
use mandate_model::ssf::{
    EventKind, MAX_QUEUED_EVENTS, MAX_REMOVED_SUBJECTS, QueuedEvent, Signal, Stream, StreamStatus,
};
use mandate_store_sql::{SignalRow, StreamRow, ts};
use rusqlite::{Connection, Row, params};

use crate::readers::Mapped;
use crate::writer::exec;

/// What a stream must be to take a new event: not disabled, asking for the
/// type (`?mask` 0 for the stream's own events, which every stream
/// takes), not full, and not with the event's subject (?2) removed.
const TAKES: &str = "s.status <> 'disabled' AND (?9 = 0 OR (s.events & ?9) <> 0) \
     AND (SELECT count(*) FROM ssf_events q WHERE q.stream_id = s.id) < ?10 \
     AND NOT EXISTS (SELECT 1 FROM ssf_subjects x WHERE x.stream_id = s.id AND x.subject = ?2)";

fn removed_bound() -> i64 {
    i64::try_from(MAX_REMOVED_SUBJECTS).unwrap_or(i64::MAX)
}

/// The bit a stream must ask for to take `kind`, or 0.
fn mask(kind: EventKind) -> i64 {
    if EventKind::REQUESTABLE.contains(&kind) { i64::from(kind.bit()) } else { 0 }
}

fn bound() -> i64 {
    i64::try_from(MAX_QUEUED_EVENTS).unwrap_or(i64::MAX)
}

/// Queues `signal` on the streams `filter` picks (SQL over `ssf_streams s`,
/// which may bind ?1 to ?8 as the event's own columns do).
fn queue(conn: &Connection, filter: &str, signal: &Signal, extra: &str) -> Result<u64, StoreError> {
    let sql = format!(
        "INSERT INTO ssf_events (stream_id, kind, subject, event_at, initiating_entity, reason, detail, principal) \
         SELECT s.id, ?1, ?2, ?3, ?4, ?5, ?6, ?11 FROM ssf_streams s WHERE {filter} AND {TAKES} ORDER BY s.id"
    );
    exec(
        conn,
        &sql,
        params![
            signal.kind.as_str(),
            signal.subject,
            ts(signal.at)?,
            signal.cause.initiating_entity.as_str(),
            signal.cause.reason,
            signal.detail,
            extra,
            ts(signal.at)?,
            mask(signal.kind),
            bound(),
            signal.principal,
        ],
        "event",
    )
}

/// Applies one mutation of this family.
pub(crate) fn apply(conn: &Connection, m: &Mutation) -> Result<u64, StoreError> {
    match m {
        Mutation::InsertStream(st) => {
            let r = StreamRow::try_from(st)?;
            exec(
                conn,
                "INSERT INTO ssf_streams (id, resource_id, audience, status, status_reason, method, endpoint_url, \
                 sealed_authorization, events, description, created_at, updated_at, failures, next_at, lease_holder, lease_until, \
                 verified_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                params![
                    r.id,
                    r.resource_id,
                    r.audience,
                    r.status,
                    r.status_reason,
                    r.method,
                    r.endpoint_url,
                    r.sealed_authorization,
                    r.events,
                    r.description,
                    r.created_at,
                    r.updated_at,
                    r.failures,
                    r.next_at,
                    r.lease_holder,
                    r.lease_until,
                    r.verified_at,
                ],
                "stream",
            )
        }
        Mutation::UpdateStream(st) => {
            let r = StreamRow::try_from(st)?;
            let n = exec(
                conn,
                "UPDATE ssf_streams SET method = ?1, endpoint_url = ?2, sealed_authorization = ?3, events = ?4, \
                 description = ?5, updated_at = ?6 WHERE id = ?7 AND resource_id = ?8",
                params![
                    r.method,
                    r.endpoint_url,
                    r.sealed_authorization,
                    r.events,
                    r.description,
                    r.updated_at,
                    r.id,
                    r.resource_id
                ],
                "stream",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("stream {} is not the resource's", st.id)));
            }
            Ok(n)
        }
        Mutation::DeleteStream { id } => {
            exec(conn, "DELETE FROM ssf_events WHERE stream_id = ?1", params![id.to_string()], "events")?;
            exec(conn, "DELETE FROM ssf_subjects WHERE stream_id = ?1", params![id.to_string()], "subjects")?;
            exec(conn, "DELETE FROM ssf_streams WHERE id = ?1", params![id.to_string()], "stream")
        }
        Mutation::SetStreamStatus { id, status, reason, at } => {
            let n = exec(
                conn,
                "UPDATE ssf_streams SET status = ?1, status_reason = ?2, updated_at = ?3, \
                 failures = CASE WHEN ?1 = 'enabled' THEN 0 ELSE failures END, \
                 next_at = CASE WHEN ?1 = 'enabled' THEN ?3 ELSE next_at END WHERE id = ?4",
                params![status.as_str(), reason, ts(*at)?, id.to_string()],
                "stream",
            )?;
            if *status == StreamStatus::Disabled {
                exec(conn, "DELETE FROM ssf_events WHERE stream_id = ?1", params![id.to_string()], "events")?;
            }
            Ok(n)
        }
        Mutation::SignalRevocations { at, cause } => {
            let n = exec(
                conn,
                "INSERT INTO ssf_events (stream_id, kind, subject, event_at, initiating_entity, reason, detail, principal) \
                 SELECT s.id, 'session-revoked', t.jti, ?1, ?2, ?3, NULL, t.subject \
                 FROM tokens t JOIN ssf_streams s ON s.audience = t.audience \
                 WHERE t.revoked_at = ?1 AND s.status <> 'disabled' AND (s.events & ?4) <> 0 \
                 AND (SELECT count(*) FROM ssf_events q WHERE q.stream_id = s.id) < ?5 \
                 AND NOT EXISTS (SELECT 1 FROM ssf_signalled x WHERE x.jti = t.jti) \
                 AND NOT EXISTS (SELECT 1 FROM ssf_subjects r WHERE r.stream_id = s.id \
                     AND r.subject IN (t.jti, t.client_id, t.subject, t.grant_id)) \
                 ORDER BY s.id, t.jti",
                params![
                    ts(*at)?,
                    cause.initiating_entity.as_str(),
                    cause.reason,
                    i64::from(EventKind::SessionRevoked.bit()),
                    bound()
                ],
                "event",
            )?;
            exec(
                conn,
                "INSERT INTO ssf_signalled (jti, at) SELECT t.jti, ?1 FROM tokens t WHERE t.revoked_at = ?1 \
                 AND EXISTS (SELECT 1 FROM ssf_streams s WHERE s.audience = t.audience AND s.status <> 'disabled') \
                 ON CONFLICT DO NOTHING",
                params![ts(*at)?],
                "signalled",
            )?;
            Ok(n)
        }
        Mutation::SignalHolders { holder, signal } => queue(
            conn,
            "EXISTS (SELECT 1 FROM tokens t WHERE t.audience = s.audience AND (t.client_id = ?7 OR t.subject = ?7) \
             AND t.revoked_at IS NULL AND t.expires_at > ?8)",
            signal,
            holder,
        ),
        Mutation::SignalStream { stream, signal } => queue(conn, "s.id = ?7", signal, &stream.to_string()),
        Mutation::RemoveStreamSubject { stream, subject } => {
            let stream = stream.to_string();
            let n = exec(
                conn,
                "INSERT INTO ssf_subjects (stream_id, subject) SELECT s.id, ?2 FROM ssf_streams s WHERE s.id = ?1 \
                 AND (SELECT count(*) FROM ssf_subjects x WHERE x.stream_id = s.id) < ?3 ON CONFLICT DO NOTHING",
                params![stream, subject, removed_bound()],
                "subject",
            )?;
            if n == 0 {
                let there: bool = conn
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM ssf_subjects WHERE stream_id = ?1 AND subject = ?2)")
                    .and_then(|mut q| q.query_row(params![stream, subject], |r| r.get(0)))
                    .map_err(|e| StoreError::Unavailable(format!("subjects: {e}")))?;
                if !there {
                    return Err(StoreError::Conflict(format!(
                        "stream {stream} is missing or has too many subjects removed"
                    )));
                }
            }
            Ok(n)
        }
        Mutation::AddStreamSubject { stream, subject } => exec(
            conn,
            "DELETE FROM ssf_subjects WHERE stream_id = ?1 AND subject = ?2",
            params![stream.to_string(), subject],
            "subject",
        ),
        Mutation::ClaimVerification { stream, at, not_before } => {
            let n = exec(
                conn,
                "UPDATE ssf_streams SET verified_at = ?1 WHERE id = ?2 AND (verified_at IS NULL OR verified_at <= ?3)",
                params![ts(*at)?, stream.to_string(), ts(*not_before)?],
                "stream",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("stream {stream} was verified too recently or is missing")));
            }
            Ok(n)
        }
        Mutation::AckEvents { stream, seqs } => {
            let mut n = 0;
            for seq in seqs {
                let seq = i64::try_from(*seq).map_err(|_| StoreError::Conflict(format!("event {seq}")))?;
                n += exec(
                    conn,
                    "DELETE FROM ssf_events WHERE stream_id = ?1 AND seq = ?2",
                    params![stream.to_string(), seq],
                    "events",
                )?;
            }
            Ok(n)
        }
        Mutation::LeaseStream { id, holder, now, until } => {
            let n = exec(
                conn,
                "UPDATE ssf_streams SET lease_holder = ?1, lease_until = ?2 WHERE id = ?3 AND method = 'push' \
                 AND status = 'enabled' AND next_at <= ?4 AND (lease_until IS NULL OR lease_until <= ?4)",
                params![holder, ts(*until)?, id.to_string(), ts(*now)?],
                "stream",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("stream {id} is not due or is leased")));
            }
            Ok(n)
        }
        Mutation::FinishPush { id, holder, delivered, failures, next_at, pause } => {
            let n = exec(
                conn,
                "UPDATE ssf_streams SET failures = ?1, next_at = ?2, lease_holder = NULL, lease_until = NULL, \
                 status = CASE WHEN ?3 IS NULL THEN status ELSE 'paused' END, \
                 status_reason = CASE WHEN ?3 IS NULL THEN status_reason ELSE ?3 END \
                 WHERE id = ?4 AND lease_holder = ?5",
                params![i64::from(*failures), ts(*next_at)?, pause, id.to_string(), holder],
                "stream",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("stream {id} is not leased to {holder}")));
            }
            if let Some(seq) = delivered {
                let seq = i64::try_from(*seq).map_err(|_| StoreError::Conflict(format!("event {seq}")))?;
                exec(
                    conn,
                    "DELETE FROM ssf_events WHERE stream_id = ?1 AND seq = ?2",
                    params![id.to_string(), seq],
                    "events",
                )?;
            }
            Ok(n)
        }
        other => Err(crate::writer::misrouted(other)),
    }
}

pub(crate) fn stream_row(r: &Row<'_>) -> Mapped<Stream> {
    Ok(Stream::try_from(StreamRow {
        id: r.get("id")?,
        resource_id: r.get("resource_id")?,
        audience: r.get("audience")?,
        status: r.get("status")?,
        status_reason: r.get("status_reason")?,
        method: r.get("method")?,
        endpoint_url: r.get("endpoint_url")?,
        sealed_authorization: r.get("sealed_authorization")?,
        events: r.get("events")?,
        description: r.get("description")?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
        failures: r.get("failures")?,
        next_at: r.get("next_at")?,
        lease_holder: r.get("lease_holder")?,
        lease_until: r.get("lease_until")?,
        verified_at: r.get("verified_at")?,
    }))
}

pub(crate) fn event_row(r: &Row<'_>) -> Mapped<QueuedEvent> {
    Ok(QueuedEvent::try_from(SignalRow {
        seq: r.get("seq")?,
        stream_id: r.get("stream_id")?,
        kind: r.get("kind")?,
        subject: r.get("subject")?,
        principal: r.get("principal")?,
        event_at: r.get("event_at")?,
        initiating_entity: r.get("initiating_entity")?,
        reason: r.get("reason")?,
        detail: r.get("detail")?,
    }))
}
