//! A batch of plain token issuances, the common case under load, in one
//! round trip instead of seven (ADR 0040, ADR 0044). The long way is
//! `BEGIN`, the assertion `jti`s, the tokens, the agents' last use, the
//! lane's head under lock, its events, `COMMIT`: each a round trip while
//! the writer's transaction stays open, and on two shared cores each round
//! trip waits for a busy scheduler on both sides. Here:
//!
//! 1. the lane's head and the events' seqs are what the writer's previous
//!    statement left ([`Ahead`]); only after anything else (the writer's
//!    first batch, the long way, a statement that did not hold, a batch
//!    larger than the seqs kept) are they read, without a lock, in a round
//!    trip of their own: only this writer appends to its lane (decision
//!    0031);
//! 2. the events are sealed after that head, as if every change stood, and
//!    everything goes in with one statement, an implicit transaction that
//!    ends by asking `mandate_batch_holds` whether every `jti` was burned,
//!    the head was still where step 1 read it and, for changes decided at
//!    an epoch they did not read, the store epoch is still that one
//!    (decision 0042). The same statement reserves the next batch's seqs,
//!    after this batch's, while the node is busy, and the writer keeps the
//!    head it wrote.
//!
//! If it fails, PostgreSQL undoes the whole statement and the writer
//! applies the batch the long way, which sorts out replays change by
//! change. A refused batch costs its reserved seqs (a gap, as any
//! rolled-back batch leaves), and so do seqs reserved for a next batch
//! that never came the short way.

use std::collections::VecDeque;

use mandate_audit::Event;
use mandate_core::audit::seal_record;
use mandate_core::store::{Applied, Change, Handle, Mutation, StoreError};
use mandate_model::records::TokenRecord;
use mandate_store_sql::ts;
use sqlx::postgres::PgConnection;

use crate::audit::{Head, bigint, bind_events, insert_events_sql, read_lane, reserved_seqs};
use crate::tokens::{bind_tokens, bulk_kind, insert_tokens_sql, last_uses, touch_agents_sql};
use crate::writer::{Job, Outcome};

/// Whether `change` is all the short way can write: its client assertion's
/// `jti` first if any, tokens that need no check under lock, audit events,
/// and nothing that moves the store epoch or must read a value back.
pub(crate) fn plain(change: &Change) -> bool {
    change.mutations().enumerate().all(|(i, m)| match m {
        Mutation::ConsumeAssertionJti { .. } => i == 0,
        Mutation::InsertToken(_) => bulk_kind(m) && !m.invalidates(),
        Mutation::AppendAudit(_) => true,
        _ => false,
    })
}

static STATEMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH burned AS (INSERT INTO assertion_jtis (client_id, jti, expires_at) \
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) ON CONFLICT DO NOTHING RETURNING 1), \
         issued AS ({}), \
         touched AS ({}), \
         sealed AS ({}), \
         moved AS (UPDATE audit_lanes SET seq = $41, hash = $42 WHERE id = $40::bigint AND seq = $43 RETURNING 1) \
         SELECT mandate_batch_holds((SELECT count(*) FROM burned) = $44 AND (SELECT count(*) FROM moved) = 1 \
           AND ($45::bigint IS NULL OR (SELECT n FROM epoch WHERE id = 1) = $45)), \
           ARRAY(SELECT nextval('audit_seq') FROM generate_series(1, $46)) AS next",
        insert_tokens_sql(4),
        touch_agents_sql(18),
        insert_events_sql(21, 40)
    )
});

/// What a writer knows of its lane after a statement of the short way
/// held: the head it wrote, and seqs it reserved for the batches after,
/// each greater than every seq the lane holds. Anything but the short way
/// holding forgets both ([`Ahead::forget`]), so a seq from here never
/// follows one the long way took.
#[derive(Default)]
pub(crate) struct Ahead {
    head: Option<Head>,
    seqs: VecDeque<u64>,
    /// When the statement that reserved `seqs` was answered.
    at: Option<tokio::time::Instant>,
}

/// How long kept seqs may wait for a batch. A reader that follows the
/// trail live by `after` may step past an event whose seq was reserved
/// before a greater seq of another lane was read (decision 0031); older
/// kept seqs are dropped (a gap), so that re-reading from a second or two
/// before the last cursor still sees every event (docs/audit.md).
const KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl Ahead {
    pub(crate) fn forget(&mut self) {
        self.head = None;
        self.seqs.clear();
        self.at = None;
    }

    /// The head to seal `n` events after, and their seqs, each greater
    /// than the head's: what the last statement left, or else read (the
    /// head without a lock, and the seqs missing). Kept seqs below a head
    /// read afresh (another writer's, on a shared lane) are dropped; if
    /// too few are left, the batch goes the long way.
    async fn take(&mut self, conn: &mut PgConnection, lane: u64, n: usize) -> Result<(Head, Vec<u64>), StoreError> {
        if self.at.is_some_and(|at| at.elapsed() > KEPT_FOR) {
            self.forget();
        }
        let head = match self.head.take() {
            Some(h) if self.seqs.len() >= n => h,
            _ => {
                let (h, more) = read_lane(conn, lane, n.saturating_sub(self.seqs.len()), false).await?;
                self.seqs.retain(|&s| s > h.seq);
                self.seqs.extend(more);
                h
            }
        };
        if self.seqs.len() < n {
            return Err(StoreError::Unavailable("too few audit seqs are kept".into()));
        }
        Ok((head, self.seqs.drain(..n).collect()))
    }
}

/// Writes `batch` the short way and answers each change, or `None` when
/// the batch is not all plain issuances, or did not hold: nothing of it
/// was written, and the caller applies it the long way (and forgets
/// `ahead`).
pub(crate) async fn try_issue(
    conn: &mut PgConnection,
    lane: u64,
    batch: &[Job],
    ahead: &mut Ahead,
) -> Option<Vec<Outcome>> {
    if batch.is_empty() || !batch.iter().all(|j| plain(&j.change)) {
        return None;
    }
    // The epoch the changes were decided at, if they expect one (decision
    // 0042): the statement holds only if it still is. Changes that expect
    // different epochs cannot all stand: the long way sorts them out.
    let mut expected = batch.iter().filter_map(|j| j.change.expected_epoch());
    let epoch = expected.next();
    if expected.any(|e| Some(e) != epoch) {
        return None;
    }
    let epoch = match epoch {
        Some(e) => Some(bigint(e, "epoch").ok()?),
        None => None,
    };
    // What each change applies if it stands, and its audit records, with
    // what the change had applied before each (as the long way seals them).
    let mut applied: Vec<Applied> = Vec::with_capacity(batch.len());
    let mut records: Vec<(&mandate_core::AuditRecord, Applied, usize, Handle)> = Vec::new();
    let mut tokens: Vec<&TokenRecord> = Vec::with_capacity(batch.len());
    let (mut clients, mut jtis, mut expiries) = (Vec::new(), Vec::new(), Vec::new());
    for (index, job) in batch.iter().enumerate() {
        let mut a = Applied::for_change(&job.change);
        for (h, m) in job.change.iter() {
            match m {
                Mutation::ConsumeAssertionJti { client, jti, expires_at } => {
                    clients.push(client.to_string());
                    jtis.push(jti.clone());
                    expiries.push(ts(*expires_at).ok()?);
                    a.set(h, 1).ok()?;
                }
                Mutation::InsertToken(t) => {
                    tokens.push(t);
                    a.set(h, 1).ok()?;
                }
                Mutation::AppendAudit(record) => {
                    records.push((record.as_ref(), a.clone(), index, h));
                    a.set(h, 0).ok()?;
                }
                _ => return None,
            }
        }
        applied.push(a);
    }
    if records.is_empty() {
        return None;
    }
    let burns = i64::try_from(jtis.len()).ok()?;
    let (head, seqs) = ahead.take(conn, lane, records.len()).await.ok()?;
    let mut seqs: VecDeque<u64> = seqs.into();
    // Seqs for the next batches, so that one up to twice as large needs no
    // read: twice this one's events, less those left over (with exactly as
    // many, batch sizes vary enough under load that more than half of the
    // batches read their lane first, a round trip each). Only while the node
    // is busy (this batch holds more than one change): a lone change
    // reserves none, so that a quiet store's trail has no gaps where nothing
    // failed (seqs kept for a batch that then goes the long way, or kept
    // longer than `KEPT_FOR`, are dropped).
    let wanted = if batch.len() >= 2 { records.len().saturating_mul(2) } else { 0 };
    let reserve = i32::try_from(wanted.saturating_sub(ahead.seqs.len())).ok()?;
    let mut events: Vec<Event> = Vec::with_capacity(records.len());
    let mut prev = head.hash.clone();
    for (record, before, index, h) in records {
        let seq = seqs.pop_front()?;
        let mut e = seal_record(record, &before, seq, &prev).ok()?;
        e.lane = lane;
        prev.clone_from(&e.hash);
        applied.get_mut(index)?.set(h, e.seq).ok()?;
        events.push(e);
    }
    let last = events.last()?;
    // The head the statement writes, if it holds.
    let written = Head { lane, seq: last.seq, hash: last.hash.clone() };
    let (new_seq, new_hash) = (bigint(last.seq, "seq").ok()?, last.hash.clone());
    let (ids, ats, stale) = last_uses(&tokens).ok()?.unwrap_or_default();
    let q = sqlx::query(STATEMENT.as_str()).bind(clients).bind(jtis).bind(expiries);
    let q = bind_tokens(q, &tokens).ok()?.bind(ids).bind(ats).bind(stale);
    let q = bind_events(q, &events)
        .ok()?
        .bind(bigint(lane, "lane").ok()?)
        .bind(new_seq)
        .bind(new_hash)
        .bind(bigint(head.seq, "head").ok()?)
        .bind(burns)
        .bind(epoch)
        .bind(reserve);
    let row = match q.fetch_one(&mut *conn).await {
        Ok(row) => row,
        Err(e) => {
            tracing::debug!(error = %e, "a batch of issuances did not hold; applying it change by change");
            return None;
        }
    };
    // The batch stands. Seqs the statement reserved that do not decode are
    // dropped, with the head: the next batch reads its lane.
    match reserved_seqs(&row) {
        Ok(next) => {
            ahead.seqs.extend(next);
            ahead.head = Some(written);
            ahead.at = Some(tokio::time::Instant::now());
        }
        Err(e) => {
            tracing::warn!(error = %e, "the seqs reserved for the next batch do not decode");
            ahead.forget();
        }
    }
    Some(applied.into_iter().map(Applied::into_receipt).collect())
}
