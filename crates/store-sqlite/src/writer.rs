//! The writer thread: it owns the only write connection and applies every
//! change waiting in one transaction (group commit), so one fsync covers
//! many requests; a change that fails after writing is undone alone by
//! replaying the batch with a savepoint per change.

use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mandate_core::store::{Applied, Change, Mutation, Receipt, StoreError};
use mandate_store_sql::{Family, family};
use rusqlite::{Connection, ErrorCode};
use tokio::sync::oneshot;

use crate::audit::Head;
use crate::unavailable;

/// Most changes folded into one transaction.
pub(crate) const MAX_BATCH: usize = 512;

/// Longest a batch waits for more changes once one has arrived.
const LINGER: Duration = Duration::from_micros(200);

/// A batch this large commits without lingering.
const LINGER_UNTIL: usize = 16;

pub(crate) struct Job {
    pub(crate) change: Change,
    pub(crate) reply: oneshot::Sender<Result<Receipt, StoreError>>,
}

/// A passive checkpoint every half second until the store is dropped.
pub(crate) fn checkpoint_loop(conn: Connection, stop: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_millis(500)) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

pub(crate) fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Job>, mut head: Head, epoch: &AtomicU64) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut last_batch = 0;
    while let Ok(first) = rx.recv() {
        batch.push(first);
        // Linger briefly while work keeps arriving (the last batch held more
        // than one change): under load a commit, and its fsync, then covers
        // more changes, which frees CPU for the requests themselves. A
        // server with one request in flight commits at once.
        let deadline = Instant::now() + if last_batch > 1 { LINGER } else { Duration::ZERO };
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    let now = Instant::now();
                    if batch.len() >= LINGER_UNTIL || now >= deadline {
                        break;
                    }
                    match rx.recv_timeout(deadline - now) {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
            }
        }
        last_batch = batch.len();
        metrics::histogram!("mandate_store_commit_batch_size").record(batch.len() as f64);
        let results = apply_batch(&mut conn, &batch, &mut head, epoch.load(std::sync::atomic::Ordering::SeqCst));
        // Committed: caches keyed by the epoch go stale now, before any
        // change of this batch is acknowledged.
        if batch.iter().zip(&results).any(|(job, r)| r.is_ok() && job.change.mutations().any(Mutation::invalidates)) {
            epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        for (job, result) in batch.drain(..).zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

/// One transaction for the whole batch. Changes are applied without
/// savepoints first: a change that fails on its first mutation has written
/// nothing (each statement is atomic), which covers the common refusals
/// (a replayed `jti`, a duplicate). Only when a change fails after writing
/// is the batch rolled back and replayed with a savepoint per change.
///
/// The audit head moves with the transaction: it is put back to where it
/// was whenever what advanced it is rolled back. `epoch` is the store
/// epoch before the batch, for the changes that expect one.
pub(crate) fn apply_batch(
    conn: &mut Connection,
    batch: &[Job],
    head: &mut Head,
    epoch: u64,
) -> Vec<Result<Receipt, StoreError>> {
    match apply_in_transaction(conn, batch, false, head, epoch) {
        Ok(results) => results,
        Err(NeedSavepoints) => match apply_in_transaction(conn, batch, true, head, epoch) {
            Ok(results) => results,
            Err(NeedSavepoints) => batch.iter().map(|_| Err(unavailable("batch could not be applied"))).collect(),
        },
    }
}

pub(crate) struct NeedSavepoints;

pub(crate) fn apply_in_transaction(
    conn: &mut Connection,
    batch: &[Job],
    savepoints: bool,
    head: &mut Head,
    epoch: u64,
) -> Result<Vec<Result<Receipt, StoreError>>, NeedSavepoints> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return Ok(batch.iter().map(|_| Err(unavailable(&e))).collect());
    }
    let start = head.clone();
    // Abandons the whole batch: nothing of it is kept, the head goes back.
    let abandon = |conn: &Connection, head: &mut Head, why: &dyn std::fmt::Display| {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        *head = start.clone();
        Ok(batch.iter().map(|_| Err(unavailable(why))).collect())
    };
    let mut results = Vec::with_capacity(batch.len());
    // Whether a change of this batch ahead of the current one moved the
    // epoch: it moves once the batch commits.
    let mut moved = false;
    for job in batch {
        // A change decided at an epoch that is no longer the store's fails
        // alone, before it writes anything (decision 0042).
        if job.change.expected_epoch().is_some_and(|e| moved || e != epoch) {
            results.push(Err(StoreError::Moved));
            continue;
        }
        let guarded = savepoints && job.change.len() > 1;
        if guarded && let Err(e) = conn.execute_batch("SAVEPOINT change") {
            return abandon(conn, head, &e);
        }
        let before = head.clone();
        let mut applied = Applied::for_change(&job.change);
        let mut outcome = Ok(());
        for (i, (h, m)) in job.change.iter().enumerate() {
            match apply(conn, m, &applied, head).and_then(|n| applied.set(h, n)) {
                Ok(()) => {}
                Err(e) => {
                    // SQLITE_FULL, IOERR or NOMEM may roll back the whole
                    // transaction: then the batch so far is gone, and
                    // continuing would commit later changes on their own.
                    if conn.is_autocommit() {
                        return abandon(conn, head, &e);
                    }
                    if i > 0 && !savepoints {
                        let _ = conn.execute_batch("ROLLBACK");
                        *head = start;
                        return Err(NeedSavepoints);
                    }
                    outcome = Err(e);
                    break;
                }
            }
        }
        if guarded {
            let end = if outcome.is_ok() { "RELEASE change" } else { "ROLLBACK TO change; RELEASE change" };
            // If the savepoint cannot be closed, what it holds is unknown.
            if let Err(e) = conn.execute_batch(end) {
                return abandon(conn, head, &e);
            }
        }
        if outcome.is_err() {
            *head = before;
        } else if job.change.mutations().any(Mutation::invalidates) {
            moved = true;
        }
        results.push(outcome.and_then(|()| applied.into_receipt()));
    }
    if conn.is_autocommit() {
        return abandon(conn, head, &"the transaction was rolled back by SQLite");
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => Ok(results),
        Err(e) => abandon(conn, head, &e),
    }
}

pub(crate) fn map_write_error(e: rusqlite::Error, what: &str) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => {
            StoreError::Conflict(format!("{what} conflicts with an existing record or refers to a missing one"))
        }
        _ => unavailable(e),
    }
}

pub(crate) fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params, what: &str) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(unavailable)?;
    stmt.execute(params).map(|n| n as u64).map_err(|e| map_write_error(e, what))
}

/// Applies one mutation; `applied` holds what the change's earlier
/// mutations did, and `head` is the audit chain's head. Each family of
/// records keeps its SQL in its own module.
pub(crate) fn apply(conn: &Connection, m: &Mutation, applied: &Applied, head: &mut Head) -> Result<u64, StoreError> {
    match family(m) {
        Family::Identity => crate::identity::apply(conn, m),
        Family::Scim => crate::scim::apply(conn, m),
        Family::Keys => crate::keys::apply(conn, m),
        Family::Tokens => crate::tokens::apply(conn, m),
        Family::Grants => crate::grants::apply(conn, m),
        Family::Approvals => crate::approvals::apply(conn, m),
        Family::Deliveries => crate::deliveries::apply(conn, m),
        Family::Signals => crate::signals::apply(conn, m),
        Family::Review => crate::review::apply(conn, m),
        Family::Inventory => crate::inventory::apply(conn, m),
        Family::Audit => crate::audit::apply(conn, m, applied, head),
    }
}

/// A mutation handed to a family it does not belong to: never happens, as
/// [`apply`] routes every variant, but it fails the change rather than panic.
pub(crate) fn misrouted(m: &Mutation) -> StoreError {
    StoreError::Unavailable(format!("no family applies {m:?}"))
}
