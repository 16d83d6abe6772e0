//! Shared Signals streams and the events waiting on them (ADR 0028). The
//! events of a change are queued by its own mutations, in its transaction;
//! a push stream is claimed for an attempt under a lease (a conditional
//! update: a concurrent claim waits on the row's lock and then finds it
//! leased), so that two nodes never push one stream at once.

use mandate_core::store::{Mutation, StoreError};
use mandate_model::ssf::{
    EventKind, MAX_QUEUED_EVENTS, MAX_REMOVED_SUBJECTS, QueuedEvent, Signal, Stream, StreamStatus,
};
use mandate_store_sql::{SignalRow, StreamRow, ts};
use sqlx::postgres::{PgConnection, PgRow};

use crate::get;
use crate::writer::{map_write_error, misrouted};

/// What a stream must be to take a new event: not disabled, asking for the
/// type (`$9` 0 for the stream's own events, which every stream takes),
/// not full, and not with the event's subject (`$2`) removed.
const TAKES: &str = "s.status <> 'disabled' AND ($9::BIGINT = 0 OR (s.events & $9::BIGINT) <> 0) \
     AND (SELECT count(*) FROM ssf_events q WHERE q.stream_id = s.id) < $10::BIGINT \
     AND NOT EXISTS (SELECT 1 FROM ssf_subjects x WHERE x.stream_id = s.id AND x.subject = $2)";

/// The bit a stream must ask for to take `kind`, or 0.
fn mask(kind: EventKind) -> i64 {
    if EventKind::REQUESTABLE.contains(&kind) { i64::from(kind.bit()) } else { 0 }
}

fn bound() -> i64 {
    i64::try_from(MAX_QUEUED_EVENTS).unwrap_or(i64::MAX)
}

fn seq(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Conflict(format!("event {n}")))
}

/// Queues `signal` on the streams `filter` picks (SQL over `ssf_streams s`,
/// with `$7` the text `extra` and `$8` the event's time).
async fn queue(conn: &mut PgConnection, filter: &str, signal: &Signal, extra: &str) -> Result<u64, StoreError> {
    let sql = format!(
        "INSERT INTO ssf_events (stream_id, kind, subject, event_at, initiating_entity, reason, detail, principal) \
         SELECT s.id, $1, $2, $3, $4, $5, $6, $11 FROM ssf_streams s WHERE {filter} AND {TAKES} ORDER BY s.id"
    );
    let r = sqlx::query(&sql)
        .bind(signal.kind.as_str())
        .bind(&signal.subject)
        .bind(ts(signal.at)?)
        .bind(signal.cause.initiating_entity.as_str())
        .bind(&signal.cause.reason)
        .bind(&signal.detail)
        .bind(extra)
        .bind(ts(signal.at)?)
        .bind(mask(signal.kind))
        .bind(bound())
        .bind(&signal.principal)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "event"))?;
    Ok(r.rows_affected())
}

/// Applies one mutation of this family.
pub(crate) async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    let done = match m {
        Mutation::InsertStream(st) => {
            let r = StreamRow::try_from(st)?;
            sqlx::query(
                "INSERT INTO ssf_streams (id, resource_id, audience, status, status_reason, method, endpoint_url, \
                 sealed_authorization, events, description, created_at, updated_at, failures, next_at, lease_holder, lease_until, \
                 verified_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            )
            .bind(r.id)
            .bind(r.resource_id)
            .bind(r.audience)
            .bind(r.status)
            .bind(r.status_reason)
            .bind(r.method)
            .bind(r.endpoint_url)
            .bind(r.sealed_authorization)
            .bind(r.events)
            .bind(r.description)
            .bind(r.created_at)
            .bind(r.updated_at)
            .bind(r.failures)
            .bind(r.next_at)
            .bind(r.lease_holder)
            .bind(r.lease_until)
            .bind(r.verified_at)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "stream"))?
        }
        Mutation::UpdateStream(st) => {
            let r = StreamRow::try_from(st)?;
            let done = sqlx::query(
                "UPDATE ssf_streams SET method = $1, endpoint_url = $2, sealed_authorization = $3, events = $4, \
                 description = $5, updated_at = $6 WHERE id = $7 AND resource_id = $8",
            )
            .bind(r.method)
            .bind(r.endpoint_url)
            .bind(r.sealed_authorization)
            .bind(r.events)
            .bind(r.description)
            .bind(r.updated_at)
            .bind(r.id)
            .bind(r.resource_id)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "stream"))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("stream {} is not the resource's", st.id)));
            }
            done
        }
        Mutation::DeleteStream { id } => {
            sqlx::query("DELETE FROM ssf_events WHERE stream_id = $1")
                .bind(id.to_string())
                .execute(&mut *conn)
                .await
                .map_err(|e| map_write_error(e, "events"))?;
            sqlx::query("DELETE FROM ssf_streams WHERE id = $1")
                .bind(id.to_string())
                .execute(&mut *conn)
                .await
                .map_err(|e| map_write_error(e, "stream"))?
        }
        Mutation::SetStreamStatus { id, status, reason, at } => {
            let done = sqlx::query(
                "UPDATE ssf_streams SET status = $1, status_reason = $2, updated_at = $3, \
                 failures = CASE WHEN $1 = 'enabled' THEN 0 ELSE failures END, \
                 next_at = CASE WHEN $1 = 'enabled' THEN $3 ELSE next_at END WHERE id = $4",
            )
            .bind(status.as_str())
            .bind(reason)
            .bind(ts(*at)?)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "stream"))?;
            if *status == StreamStatus::Disabled {
                sqlx::query("DELETE FROM ssf_events WHERE stream_id = $1")
                    .bind(id.to_string())
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| map_write_error(e, "events"))?;
            }
            done
        }
        Mutation::SignalRevocations { at, cause } => {
            let done = sqlx::query(
                "INSERT INTO ssf_events (stream_id, kind, subject, event_at, initiating_entity, reason, detail, principal) \
                 SELECT s.id, 'session-revoked', t.jti, $1, $2, $3, NULL, t.subject \
                 FROM tokens t JOIN ssf_streams s ON s.audience = t.audience \
                 WHERE t.revoked_at = $1 AND s.status <> 'disabled' AND (s.events & $4::BIGINT) <> 0 \
                 AND (SELECT count(*) FROM ssf_events q WHERE q.stream_id = s.id) < $5::BIGINT \
                 AND NOT EXISTS (SELECT 1 FROM ssf_signalled x WHERE x.jti = t.jti) \
                 AND NOT EXISTS (SELECT 1 FROM ssf_subjects r WHERE r.stream_id = s.id \
                     AND r.subject IN (t.jti, t.client_id, t.subject, t.grant_id)) \
                 ORDER BY s.id, t.jti",
            )
            .bind(ts(*at)?)
            .bind(cause.initiating_entity.as_str())
            .bind(&cause.reason)
            .bind(i64::from(EventKind::SessionRevoked.bit()))
            .bind(bound())
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "event"))?;
            sqlx::query(
                "INSERT INTO ssf_signalled (jti, at) SELECT t.jti, $1 FROM tokens t WHERE t.revoked_at = $1 \
                 AND EXISTS (SELECT 1 FROM ssf_streams s WHERE s.audience = t.audience AND s.status <> 'disabled') \
                 ON CONFLICT DO NOTHING",
            )
            .bind(ts(*at)?)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "signalled"))?;
            done
        }
        Mutation::SignalHolders { holder, signal } => {
            return queue(
                conn,
                "EXISTS (SELECT 1 FROM tokens t WHERE t.audience = s.audience AND (t.client_id = $7 OR t.subject = $7) \
                 AND t.revoked_at IS NULL AND t.expires_at > $8)",
                signal,
                holder,
            )
            .await;
        }
        Mutation::SignalStream { stream, signal } => {
            return queue(conn, "s.id = $7 AND $8::BIGINT IS NOT NULL", signal, &stream.to_string()).await;
        }
        Mutation::RemoveStreamSubject { stream, subject } => {
            // The CTE's insert is not visible to the outer query: `there`
            // says whether the subject was removed before.
            let (added, there): (i64, bool) = sqlx::query_as(
                "WITH ins AS (INSERT INTO ssf_subjects (stream_id, subject) SELECT s.id, $2 FROM ssf_streams s \
                 WHERE s.id = $1 AND (SELECT count(*) FROM ssf_subjects x WHERE x.stream_id = s.id) < $3::BIGINT \
                 ON CONFLICT DO NOTHING RETURNING 1) \
                 SELECT (SELECT count(*) FROM ins), \
                 EXISTS (SELECT 1 FROM ssf_subjects WHERE stream_id = $1 AND subject = $2)",
            )
            .bind(stream.to_string())
            .bind(subject)
            .bind(i64::try_from(MAX_REMOVED_SUBJECTS).unwrap_or(i64::MAX))
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "subject"))?;
            if added == 0 && !there {
                return Err(StoreError::Conflict(format!(
                    "stream {stream} is missing or has too many subjects removed"
                )));
            }
            return Ok(u64::try_from(added).unwrap_or(0));
        }
        Mutation::AddStreamSubject { stream, subject } => {
            sqlx::query("DELETE FROM ssf_subjects WHERE stream_id = $1 AND subject = $2")
                .bind(stream.to_string())
                .bind(subject)
                .execute(&mut *conn)
                .await
                .map_err(|e| map_write_error(e, "subject"))?
        }
        Mutation::ClaimVerification { stream, at, not_before } => {
            let done = sqlx::query(
                "UPDATE ssf_streams SET verified_at = $1 WHERE id = $2 AND (verified_at IS NULL OR verified_at <= $3)",
            )
            .bind(ts(*at)?)
            .bind(stream.to_string())
            .bind(ts(*not_before)?)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "stream"))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("stream {stream} was verified too recently or is missing")));
            }
            done
        }
        Mutation::AckEvents { stream, seqs } => {
            let seqs = seqs.iter().map(|s| seq(*s)).collect::<Result<Vec<i64>, _>>()?;
            sqlx::query("DELETE FROM ssf_events WHERE stream_id = $1 AND seq = ANY($2)")
                .bind(stream.to_string())
                .bind(seqs)
                .execute(&mut *conn)
                .await
                .map_err(|e| map_write_error(e, "events"))?
        }
        Mutation::LeaseStream { id, holder, now, until } => {
            let done = sqlx::query(
                "UPDATE ssf_streams SET lease_holder = $1, lease_until = $2 WHERE id = $3 AND method = 'push' \
                 AND status = 'enabled' AND next_at <= $4 AND (lease_until IS NULL OR lease_until <= $4)",
            )
            .bind(holder)
            .bind(ts(*until)?)
            .bind(id.to_string())
            .bind(ts(*now)?)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "stream"))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("stream {id} is not due or is leased")));
            }
            done
        }
        Mutation::FinishPush { id, holder, delivered, failures, next_at, pause } => {
            let done = sqlx::query(
                "UPDATE ssf_streams SET failures = $1, next_at = $2, lease_holder = NULL, lease_until = NULL, \
                 status = CASE WHEN $3::TEXT IS NULL THEN status ELSE 'paused' END, \
                 status_reason = CASE WHEN $3::TEXT IS NULL THEN status_reason ELSE $3::TEXT END \
                 WHERE id = $4 AND lease_holder = $5",
            )
            .bind(i64::from(*failures))
            .bind(ts(*next_at)?)
            .bind(pause)
            .bind(id.to_string())
            .bind(holder)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "stream"))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("stream {id} is not leased to {holder}")));
            }
            if let Some(n) = delivered {
                sqlx::query("DELETE FROM ssf_events WHERE stream_id = $1 AND seq = $2")
                    .bind(id.to_string())
                    .bind(seq(*n)?)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| map_write_error(e, "events"))?;
            }
            done
        }
        other => return Err(misrouted(other)),
    };
    Ok(done.rows_affected())
}

pub(crate) fn stream_row(r: &PgRow) -> Result<Stream, StoreError> {
    Stream::try_from(StreamRow {
        id: get(r, "id")?,
        resource_id: get(r, "resource_id")?,
        audience: get(r, "audience")?,
        status: get(r, "status")?,
        status_reason: get(r, "status_reason")?,
        method: get(r, "method")?,
        endpoint_url: get(r, "endpoint_url")?,
        sealed_authorization: get(r, "sealed_authorization")?,
        events: get(r, "events")?,
        description: get(r, "description")?,
        created_at: get(r, "created_at")?,
        updated_at: get(r, "updated_at")?,
        failures: get(r, "failures")?,
        next_at: get(r, "next_at")?,
        lease_holder: get(r, "lease_holder")?,
        lease_until: get(r, "lease_until")?,
        verified_at: get(r, "verified_at")?,
    })
}

pub(crate) fn event_row(r: &PgRow) -> Result<QueuedEvent, StoreError> {
    QueuedEvent::try_from(SignalRow {
        seq: get(r, "seq")?,
        stream_id: get(r, "stream_id")?,
        kind: get(r, "kind")?,
        subject: get(r, "subject")?,
        principal: get(r, "principal")?,
        event_at: get(r, "event_at")?,
        initiating_entity: get(r, "initiating_entity")?,
        reason: get(r, "reason")?,
        detail: get(r, "detail")?,
    })
}
