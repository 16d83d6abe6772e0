//! The store conformance suite on SQLite.
// Test helpers index JSON freely; a missing member fails the test.
#![allow(clippy::indexing_slicing)]

use std::sync::Arc;

use mandate_core::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_store_conformance_suite() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let n = std::sync::atomic::AtomicU32::new(0);
    mandate_testkit::conformance::run_all(|| {
        let path = dir.path().join(format!("case-{}.db", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        async move {
            let store: Arc<dyn Store> = Arc::new(mandate_store_sqlite::SqliteStore::open(&path).await?);
            Ok(store)
        }
    })
    .await
}
