//! The store epoch, read for many requests at once. Every request reads
//! the epoch before it trusts what the node cached (decision 0012), and on
//! PostgreSQL each read is a round trip and a statement for a backend on the
//! same cores. A request must see a value read after it asked: so a request
//! joins the next read to start, never one already on its way. Callers that
//! ask while a read is in flight wait for it to finish and then share the
//! one read that follows; under load, one statement answers a whole queue.

use std::sync::{Arc, Mutex, PoisonError};

use mandate_core::store::StoreError;
use sqlx::postgres::PgPool;
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
    loop {
        let Some(r) = reads.upgrade() else { return };
        // Everyone waiting now asked before the read below starts.
        let batch = std::mem::take(&mut *r.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            // A caller that pushed after the take notifies after it too:
            // `notify_one` keeps the permit, so this wakes at once. The
            // timeout only lets the task see that the store is gone.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), r.wake.notified()).await;
            continue;
        }
        drop(r);
        let read = read_epoch(&pool).await;
        for w in batch {
            let _ = w.send(read.clone());
        }
    }
}

async fn read_epoch(pool: &PgPool) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT n FROM epoch WHERE id = 1").fetch_one(pool).await.map_err(unavailable)?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("epoch {n}")))
}
