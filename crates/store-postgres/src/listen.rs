//! The change feed (DESIGN §8): every batch that moves the store epoch
//! sends `NOTIFY mandate_epoch, '<epoch>'` in its transaction, so the
//! notification leaves when, and only when, the change commits. Each node
//! listens on a connection of its own and publishes what it hears on a
//! `watch` channel. When the connection is lost, the feed says so at once
//! (the node falls back to polling); when it is back, the epoch is read
//! afresh, since whatever was sent meanwhile was not heard.

use std::time::Duration;

use mandate_core::store::ChangeFeed;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::watch;

/// The channel the epoch is announced on.
pub(crate) const CHANNEL: &str = "mandate_epoch";

/// Sent by the writer before it commits a batch that moved the epoch.
pub(crate) const NOTIFY: &str = "SELECT pg_notify('mandate_epoch', n::text) FROM epoch WHERE id = 1";

/// The longest wait between attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts listening on `pool` (a pool of its own, so that the listening
/// connection is never one a request waits for) and returns the feed.
pub(crate) fn spawn(pool: PgPool) -> watch::Receiver<ChangeFeed> {
    let (tx, rx) = watch::channel(ChangeFeed::default());
    tokio::spawn(listen(pool, tx));
    rx
}

async fn listen(pool: PgPool, tx: watch::Sender<ChangeFeed>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match session(&pool, &tx, &mut backoff).await {
            Ok(()) => tracing::warn!("the change feed's connection was lost; polling until it is back"),
            Err(e) => tracing::warn!(error = %e, "the change feed cannot listen; polling until it can"),
        }
        tx.send_if_modified(|f| std::mem::replace(&mut f.listening, false));
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One listening connection, until it is lost (`Ok`) or cannot be had.
async fn session(pool: &PgPool, tx: &watch::Sender<ChangeFeed>, backoff: &mut Duration) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    // Read after LISTEN took effect: no change can fall between the two.
    let n: i64 = sqlx::query_scalar("SELECT n FROM epoch WHERE id = 1").fetch_one(&mut listener).await?;
    let epoch = u64::try_from(n).map_err(|_| sqlx::Error::Protocol(format!("epoch {n} is negative")))?;
    tx.send_replace(ChangeFeed { epoch, listening: true });
    *backoff = Duration::from_millis(50);
    while let Some(note) = listener.try_recv().await? {
        // The payload is the epoch after the change; one that cannot be
        // read still means that something changed.
        let heard = note.payload().parse::<u64>().ok();
        tx.send_modify(|f| f.epoch = heard.map_or(f.epoch, |e| e.max(f.epoch)));
    }
    Ok(())
}
