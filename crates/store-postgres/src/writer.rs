//! The writer tasks: each takes every change waiting and applies the lot
//! in one transaction (group commit); a change that fails after writing is
//! undone alone by replaying the batch with a savepoint per change. Audit
//! events are sealed at the end of a batch, in the writer's own lane of
//! the trail, under that lane's head lock.

use mandate_audit::Event;
use mandate_core::store::{Applied, Change, Handle, Mutation, Receipt, StoreError};
use mandate_store_sql::{Family, family};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnectOptions;
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};

use crate::audit::{Head, LaneKeeper, Seqs, append, insert_events};
use crate::issuance::Ahead;
use crate::unavailable;

/// Most changes folded into one transaction.
pub(crate) const MAX_BATCH: usize = 256;

/// Writer tasks per node, unless told otherwise. Each applies its batch's
/// changes on its own connection and seals their events in a lane of the
/// trail of its own, so writers of every node commit side by side. One,
/// because a second only splits a node's queue into smaller batches, each
/// with a commit of its own: measured, one writer issued 8% more tokens
/// per second and 37% more exchanges (ADR 0040).
pub const DEFAULT_WRITERS: u32 = 1;
/// The most writer tasks a node may run.
pub const MAX_WRITERS: u32 = 8;

pub(crate) struct Job {
    pub(crate) change: Change,
    pub(crate) reply: oneshot::Sender<Result<Receipt, StoreError>>,
}

/// The writers' connections: READ COMMITTED, and a 5 s bound on waiting
/// for a lock (the audit chain's head, rows a delegated token is checked
/// against), set once per connection rather than per batch.
pub(crate) fn connect_options(options: PgConnectOptions) -> PgConnectOptions {
    // A space in a startup option is escaped with a backslash.
    options.options([("default_transaction_isolation", "read\\ committed"), ("lock_timeout", "5s")])
}

pub(crate) fn map_write_error(e: sqlx::Error, what: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(format!("{what} already exists")),
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::Conflict(format!("{what} refers to a missing record"))
        }
        _ => unavailable(e),
    }
}

/// How long a writer waits for more changes before it commits a small
/// batch while the node is busy (ADR 0040).
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);
/// Batches smaller than this wait [`LINGER`] for more while the node is busy.
const LINGER_BELOW: usize = 16;

/// Whether a batch of `now` plain issuances waits for more, after one of
/// `previous`: only when the node is busy (the batch before held more than
/// one change) and this one is small. Every commit costs a flush and a
/// fixed share of both processes' CPU, so under load fewer, larger commits
/// issue more; an idle node's lone request never waits.
fn lingers(previous: usize, now: usize) -> bool {
    previous >= 2 && now < LINGER_BELOW
}

/// Moves the changes waiting in `jobs` into `batch`, up to [`MAX_BATCH`].
fn drain(jobs: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// Starts `writers` writer tasks on a thread of their own, under a
/// runtime of their own (ADR 0044). A writer spends most of each batch
/// waiting for PostgreSQL; on the node's workers, each wake-up would wait
/// in line behind the request tasks queued there (each a signature
/// checked and a token signed), and every change in the node waits for
/// the writer. On its own thread it runs when PostgreSQL answers, as the
/// SQLite writer does. The thread ends with the store (when every
/// sender of `jobs` is gone).
pub(crate) fn spawn(
    pool: PgPool,
    jobs: std::sync::Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    lanes: std::sync::Arc<LaneKeeper>,
    writers: u32,
) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(unavailable)?;
    std::thread::Builder::new()
        .name("mandate-pg-writer".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..writers {
                    tasks.spawn(write_loop(pool.clone(), jobs.clone(), lanes.clone()));
                }
                while tasks.join_next().await.is_some() {}
            });
        })
        .map_err(unavailable)?;
    Ok(())
}

/// Takes every waiting change and commits the lot in one transaction.
pub(crate) async fn write_loop(
    pool: PgPool,
    jobs: std::sync::Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    lanes: std::sync::Arc<LaneKeeper>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    // The writer's lane of the audit trail, claimed with its first batch.
    let mut lane: Option<u64> = None;
    // The size of the batch before, as a measure of how busy the node is.
    let mut previous = 0usize;
    // The connection of the batch before, kept while changes keep coming.
    let mut held: Option<PoolConnection<Postgres>> = None;
    // The lane's head and seqs the short way's last statement left.
    let mut ahead = Ahead::default();
    loop {
        {
            let mut jobs = jobs.lock().await;
            let first = match jobs.try_recv() {
                Ok(job) => job,
                Err(_) => {
                    // Idle: the connection goes back to the pool, which
                    // checks that it still works before the next batch.
                    held = None;
                    let Some(job) = jobs.recv().await else { return };
                    job
                }
            };
            batch.push(first);
            drain(&mut jobs, &mut batch);
            // Only plain issuances wait: their commit's fixed cost is most
            // of what they cost. A batch that goes the long way (an
            // exchange under a grant's lock, a revocation) would only be
            // delayed.
            if lingers(previous, batch.len()) && batch.iter().all(|j| crate::issuance::plain(&j.change)) {
                tokio::time::sleep(LINGER).await;
                drain(&mut jobs, &mut batch);
            }
            previous = batch.len();
        }
        metrics::histogram!("mandate_store_commit_batch_size").record(batch.len() as f64);
        let results = apply_batch(&pool, &lanes, &batch, &mut lane, &mut held, &mut ahead).await;
        for (job, result) in batch.drain(..).zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

pub(crate) type Outcome = Result<Receipt, StoreError>;

pub(crate) struct NeedSavepoints;

/// Applies a batch without savepoints first; an SQL error aborts a
/// PostgreSQL transaction, and a change that fails after writing must be
/// undone alone, so either replays the batch with a savepoint per change.
///
/// `held` is the connection of the batch before, if the writer kept it:
/// taking a connection from the pool and giving it back each cost a round
/// trip (sqlx checks the connection both ways), as much as the batch's own
/// statements. A batch that meets an error the store cannot explain
/// closes its connection instead of keeping it. `ahead` is what the short
/// way's last statement left of the lane ([`Ahead`]).
pub(crate) async fn apply_batch(
    pool: &PgPool,
    lanes: &LaneKeeper,
    batch: &[Job],
    lane: &mut Option<u64>,
    held: &mut Option<PoolConnection<Postgres>>,
    ahead: &mut Ahead,
) -> Vec<Outcome> {
    let failed = |e: &dyn std::fmt::Display| batch.iter().map(|_| Err(unavailable(e))).collect();
    let lane = match *lane {
        Some(l) => l,
        None => match lanes.claim().await {
            Ok(l) => *lane.insert(l),
            Err(e) => return failed(&e),
        },
    };
    let mut conn = match held.take() {
        Some(c) => c,
        None => match pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                ahead.forget();
                return failed(&e);
            }
        },
    };
    let results = apply_on(&mut conn, lane, batch, ahead).await;
    if results.iter().any(|r| matches!(r, Err(StoreError::Unavailable(_) | StoreError::Corrupt(_)))) {
        // Whatever state the connection is in, no later batch inherits it.
        let _ = conn.close().await;
    } else {
        *held = Some(conn);
    }
    results
}

async fn apply_on(conn: &mut PgConnection, lane: u64, batch: &[Job], ahead: &mut Ahead) -> Vec<Outcome> {
    // Plain issuances go in with one statement when they can (ADR 0040,
    // ADR 0044).
    if let Some(results) = crate::issuance::try_issue(conn, lane, batch, ahead).await {
        return results;
    }
    // The long way takes seqs and moves the head itself: a seq reserved
    // before it must not seal an event after it.
    ahead.forget();
    match apply_in_transaction(conn, lane, batch, false).await {
        Ok(results) => results,
        Err(NeedSavepoints) => match apply_in_transaction(conn, lane, batch, true).await {
            Ok(results) => results,
            Err(NeedSavepoints) => batch.iter().map(|_| Err(unavailable("batch could not be applied"))).collect(),
        },
    }
}

pub(crate) async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), StoreError> {
    sqlx::query(sql).execute(&mut *conn).await.map(|_| ()).map_err(unavailable)
}

/// One pass over the batch, with or without a savepoint per change. (Its
/// length is the two modes side by side; the sealing tail of the
/// savepoint-free mode is [`seal_deferred`].)
pub(crate) async fn apply_in_transaction(
    conn: &mut PgConnection,
    lane: u64,
    batch: &[Job],
    savepoints: bool,
) -> Result<Vec<Outcome>, NeedSavepoints> {
    let all_fail = |e: StoreError| Ok(batch.iter().map(|_| Err(e.clone())).collect());
    // The writers' connections run READ COMMITTED whatever the server's
    // default (a lane's `seq` order is its commit order because its head row
    // is locked, not because of snapshots), and a lock that cannot be had in 5 s fails
    // the batch closed: both are set when they connect (see [`connect_options`]).
    if let Err(e) = exec(conn, "BEGIN").await {
        return all_fail(e);
    }
    // A batch of token issuances (the common case under load) burns its
    // assertions' jtis with one statement, and inserts its tokens with
    // another at the end; anything else goes row by row. A failure of
    // either statement replays the batch change by change.
    //
    // Changes decided at an epoch they did not read expect it still
    // (decision 0042): the epoch is read once the transaction has begun,
    // after every change of the batch was decided, and again after any
    // mutation of the batch that moves it. A change that expects another
    // fails alone, before it writes anything.
    let mut epoch: Option<u64> = None;
    if batch.iter().any(|j| j.change.expected_epoch().is_some()) {
        match crate::epoch::read_epoch(conn).await {
            Ok(n) => epoch = Some(n),
            Err(e) => {
                let _ = exec(conn, "ROLLBACK").await;
                return all_fail(e);
            }
        }
    }
    // Bulk burns every change's jti first: only where every change that
    // expects an epoch expects the one just read (no bulk mutation moves
    // it, so none of them can then find it moved).
    let bulk = !savepoints
        && batch.iter().all(|j| j.change.mutations().all(crate::tokens::bulk_kind))
        && batch.iter().all(|j| j.change.expected_epoch().is_none_or(|e| Some(e) == epoch));
    let mut burned: Vec<Option<bool>> = vec![None; batch.len()];
    if bulk {
        let changes: Vec<&Change> = batch.iter().map(|j| &j.change).collect();
        match crate::tokens::burn_assertions(conn, &changes).await {
            Ok(b) => burned = b,
            Err(_) => {
                let _ = exec(conn, "ROLLBACK").await;
                return Err(NeedSavepoints);
            }
        }
    }
    let mut tokens: Vec<&mandate_model::records::TokenRecord> = Vec::new();
    let mut head: Option<Head> = None;
    // Seqs are reserved for every event of the batch at once.
    let mut seqs = Seqs::new();
    let want =
        batch.iter().map(|j| j.change.mutations().filter(|m| matches!(m, Mutation::AppendAudit(_))).count()).sum();
    let mut events: Vec<Event> = Vec::new();
    // Without savepoints, events are sealed only once the batch's changes
    // are applied, so the lane's head lock is held just for the tail.
    // (record, what the change had applied before it, the change's index,
    // the record's handle): the event's seq is its "affected" value.
    let mut deferred: Deferred<'_> = Vec::new();
    let mut results: Vec<Result<Applied, StoreError>> = Vec::with_capacity(batch.len());
    for (job_index, job) in batch.iter().enumerate() {
        if savepoints && let Err(e) = exec(conn, "SAVEPOINT change").await {
            let _ = exec(conn, "ROLLBACK").await;
            return all_fail(e);
        }
        let (head_before, events_before, deferred_before, tokens_before) =
            (head.clone(), events.len(), deferred.len(), tokens.len());
        let mut applied = Applied::for_change(&job.change);
        let mut outcome = Ok(());
        if let Some(expected) = job.change.expected_epoch() {
            let now = match epoch {
                Some(n) => n,
                None => match crate::epoch::read_epoch(conn).await {
                    Ok(n) => *epoch.insert(n),
                    Err(e) => {
                        let _ = exec(conn, "ROLLBACK").await;
                        return all_fail(e);
                    }
                },
            };
            if now != expected {
                outcome = Err(StoreError::Moved);
            }
        }
        for (i, (h, m)) in job.change.iter().enumerate() {
            if outcome.is_err() {
                break;
            }
            if m.invalidates() {
                // Read again before the next change that expects one.
                epoch = None;
            }
            let done = match m {
                Mutation::AppendAudit(record) if !savepoints => {
                    deferred.push((record.as_ref(), applied.clone(), job_index, h));
                    Ok(0)
                }
                Mutation::AppendAudit(record) => {
                    append(conn, lane, &mut head, &mut seqs, want, record, &applied).await.map(|e| {
                        let seq = e.seq;
                        events.push(e);
                        seq
                    })
                }
                Mutation::ConsumeAssertionJti { .. } if i == 0 && bulk => match burned.get(job_index) {
                    Some(Some(true)) => Ok(1),
                    Some(Some(false)) => Err(StoreError::Replay),
                    _ => Err(StoreError::Unavailable("a burned jti was not accounted for".into())),
                },
                Mutation::InsertToken(t) if bulk => {
                    tokens.push(t);
                    Ok(1)
                }
                other => apply(conn, other).await,
            };
            match done.and_then(|n| applied.set(h, n)) {
                Ok(()) => {}
                Err(e) => {
                    // Only a replay refused by ON CONFLICT DO NOTHING, as the
                    // change's first write, leaves the transaction usable
                    // with nothing of the change written.
                    let harmless = i == 0 && e == StoreError::Replay;
                    if !savepoints && !harmless {
                        let _ = exec(conn, "ROLLBACK").await;
                        return Err(NeedSavepoints);
                    }
                    outcome = Err(e);
                    break;
                }
            }
        }
        // With savepoints, a change's events go in with the change, so that
        // a failed insert undoes that change alone.
        if savepoints
            && outcome.is_ok()
            && let (Some(h), Some(mine)) = (&head, events.get(events_before..))
            && !mine.is_empty()
            && let Err(e) = insert_events(conn, mine, h).await
        {
            outcome = Err(e);
        }
        if savepoints {
            // A rolled-back savepoint is released too, so that subtransactions
            // do not pile up over a long batch.
            let undo = if outcome.is_err() { exec(conn, "ROLLBACK TO SAVEPOINT change").await } else { Ok(()) };
            if let Err(e) = undo.and(exec(conn, "RELEASE SAVEPOINT change").await) {
                let _ = exec(conn, "ROLLBACK").await;
                return all_fail(e);
            }
        }
        if outcome.is_err() {
            head = head_before;
            events.truncate(events_before);
            deferred.truncate(deferred_before);
            tokens.truncate(tokens_before);
        }
        results.push(outcome.map(|()| applied));
    }
    if !tokens.is_empty() && crate::tokens::insert_tokens(conn, &tokens).await.is_err() {
        let _ = exec(conn, "ROLLBACK").await;
        return Err(NeedSavepoints);
    }
    // Without savepoints, the batch's events are sealed now, under the
    // lane's head lock, and go in with one statement; if that fails, the
    // batch is replayed change by change.
    if !savepoints
        && !deferred.is_empty()
        && seal_deferred(conn, lane, &mut head, &mut events, &deferred, &mut results).await.is_err()
    {
        let _ = exec(conn, "ROLLBACK").await;
        return Err(NeedSavepoints);
    }
    // Other nodes hear of the new epoch when this commits (and not if it
    // does not): one notification per batch, carrying the epoch.
    let moved = batch.iter().zip(&results).any(|(job, r)| r.is_ok() && job.change.mutations().any(|m| m.invalidates()));
    if moved && let Err(e) = exec(conn, crate::listen::NOTIFY).await {
        let _ = exec(conn, "ROLLBACK").await;
        return all_fail(e);
    }
    match exec(conn, "COMMIT").await {
        Ok(()) => Ok(results.into_iter().map(|r| r.and_then(Applied::into_receipt)).collect()),
        Err(e) => {
            let _ = exec(conn, "ROLLBACK").await;
            all_fail(e)
        }
    }
}

/// What the changes of a batch without savepoints still owe: each audit
/// record, with what its change had applied before it, the change's index
/// in the batch and the record's handle.
type Deferred<'a> = Vec<(&'a mandate_core::AuditRecord, Applied, usize, Handle)>;

/// Seals the deferred events after the lane's head (locking it and
/// reserving their seqs with one statement), gives each its `seq` in its
/// change's results, and inserts them with one statement.
async fn seal_deferred(
    conn: &mut PgConnection,
    lane: u64,
    head: &mut Option<Head>,
    events: &mut Vec<Event>,
    deferred: &Deferred<'_>,
    results: &mut [Result<Applied, StoreError>],
) -> Result<(), StoreError> {
    let mut seqs = Seqs::new();
    for (record, before, job_index, h) in deferred {
        let e = append(conn, lane, head, &mut seqs, deferred.len(), record, before).await?;
        if let Some(Ok(applied)) = results.get_mut(*job_index) {
            applied.set(*h, e.seq)?;
        }
        events.push(e);
    }
    match head {
        Some(h) => insert_events(conn, events, h).await,
        None => Err(StoreError::Unavailable("no lane head".into())),
    }
}

/// Applies one mutation other than an audit append (the batch seals and
/// inserts those under its lane's head); each family of records keeps its
/// SQL in its own module.
pub(crate) async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    let n = match family(m) {
        Family::Identity => crate::identity::apply(conn, m).await?,
        Family::Scim => crate::scim::apply(conn, m).await?,
        Family::Keys => crate::keys::apply(conn, m).await?,
        Family::Tokens => crate::tokens::apply(conn, m).await?,
        Family::Grants => crate::grants::apply(conn, m).await?,
        Family::Approvals => crate::approvals::apply(conn, m).await?,
        Family::Deliveries => crate::deliveries::apply(conn, m).await?,
        Family::Signals => crate::signals::apply(conn, m).await?,
        Family::Review => crate::review::apply(conn, m).await?,
        Family::Inventory => crate::inventory::apply(conn, m).await?,
        Family::Audit if matches!(m, Mutation::AppendAudit(_)) => {
            return Err(StoreError::Unavailable("audit events are appended by the writer".into()));
        }
        Family::Audit => crate::audit::apply(conn, m).await?,
    };
    // In the same transaction: a node that reads the new epoch reads this
    // change too.
    if m.invalidates() {
        sqlx::query("UPDATE epoch SET n = n + 1 WHERE id = 1").execute(&mut *conn).await.map_err(unavailable)?;
    }
    Ok(n)
}

/// A mutation handed to a family it does not belong to: never happens, as
/// [`apply`] routes every variant, but it fails the change rather than panic.
pub(crate) fn misrouted(m: &Mutation) -> StoreError {
    StoreError::Unavailable(format!("no family applies {m:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_small_batch_on_a_busy_node_waits() {
        // An idle node: the lone request goes at once, however small.
        assert!(!lingers(0, 1));
        assert!(!lingers(1, 1));
        // Busy (the batch before held several): a small batch waits.
        assert!(lingers(2, 1));
        assert!(lingers(40, LINGER_BELOW - 1));
        // A batch already large enough goes at once.
        assert!(!lingers(40, LINGER_BELOW));
        assert!(!lingers(2, MAX_BATCH));
    }
}
