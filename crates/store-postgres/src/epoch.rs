//! The store epoch, read for many requests at once. Every request reads
//! the epoch before it trusts what the node cached (decision 0012), and on
//! PostgreSQL each read is a round trip and a statement for a backend on the
//! same cores. A request must see a value read after it asked: so a request
//! joins the next read to start, never one already on its way. Callers that
//! ask while a read is in flight wait for it to finish and then share the
//! one read that follows; under load, one statement answers a whole queue.
//!
//! The reader keeps a connection of the pool for itself while it is busy:
//! sqlx checks a connection with a round trip when it is taken from the
//! pool and again when it goes back, which would make each read three
//! round trips instead of one.

use std::sync::{Arc, Mutex, PoisonError};

use mandate_core::store::StoreError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, Postgres};
use tokio::sync::{Notify, oneshot};

use crate::unavailable;

type Waiter = oneshot::Sender<Result<u64, StoreError>>;

/// The callers waiting for the next read, and the reader's wake-up.
#[derive(Default)]
pub(crate) struct EpochReads {
    waiting: Mutex<Vec<Waiter>>,
    wake: Notify,
}

impl EpochReads {
    /// Starts the reader task on `pool`; it stops when the last handle goes.
    pub(crate) fn spawn(pool: PgPool) -> Arc<Self> {
        let reads = Arc::new(Self::default());
        tokio::spawn(read_loop(pool, Arc::downgrade(&reads)));
        reads
    }

    /// The epoch, from a read that started after this call did.
    pub(crate) async fn epoch(&self) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).push(tx);
        self.wake.notify_one();
        rx.await.map_err(|_| StoreError::Unavailable("the epoch reader has stopped".into()))?
    }
}

async fn read_loop(pool: PgPool, reads: std::sync::Weak<EpochReads>) {
    let mut held: Option<PoolConnection<Postgres>> = None;
    loop {
        let Some(r) = reads.upgrade() else { return };
        // Everyone waiting now asked before the read below starts.
        let batch = std::mem::take(&mut *r.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            // Idle: the connection goes back to the pool, which checks it
            // before the next read.
            held = None;
            // A caller that pushed after the take notifies after it too:
            // `notify_one` keeps the permit, so this wakes at once. The
            // timeout only lets the task see that the store is gone.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), r.wake.notified()).await;
            continue;
        }
        drop(r);
        let read = match held.take() {
            // A kept connection that fails may have been cut (a restarted
            // server): the read is asked once more on one the pool checks.
            Some(mut conn) => match read_epoch(&mut conn).await {
                Ok(n) => {
                    held = Some(conn);
                    Ok(n)
                }
                Err(_) => {
                    let _ = conn.close().await;
                    read_fresh(&pool, &mut held).await
                }
            },
            None => read_fresh(&pool, &mut held).await,
        };
        for w in batch {
            let _ = w.send(read.clone());
        }
    }
}

/// Reads on a connection taken from the pool, kept in `held` if it worked.
async fn read_fresh(pool: &PgPool, held: &mut Option<PoolConnection<Postgres>>) -> Result<u64, StoreError> {
    let mut conn = pool.acquire().await.map_err(unavailable)?;
    let n = read_epoch(&mut conn).await?;
    *held = Some(conn);
    Ok(n)
}

/// The store epoch, read on `conn` (the writer reads it inside its batch's
/// transaction, for the changes that expect one).
pub(crate) async fn read_epoch(conn: &mut sqlx::PgConnection) -> Result<u64, StoreError> {
    let n: i64 =
        sqlx::query_scalar("SELECT n FROM epoch WHERE id = 1").fetch_one(&mut *conn).await.map_err(unavailable)?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("epoch {n}")))
}
