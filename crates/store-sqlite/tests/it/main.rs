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

/// Edits made to the database file behind the store's back are caught by
/// the verifier; a fault injected into the audit insert takes its change
/// with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_detects_tampering_and_fails_whole_changes() -> anyhow::Result<()> {
    use mandate_testkit::conformance::{Exec, TamperRig};
    let dir = tempfile::tempdir()?;
    let n = std::sync::atomic::AtomicU32::new(0);
    mandate_testkit::conformance::run_tamper_suite(|| {
        let path = dir.path().join(format!("tamper-{}.db", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        async move {
            let store: Arc<dyn Store> = Arc::new(mandate_store_sqlite::SqliteStore::open(&path).await?);
            let exec: Exec = Arc::new(move |sql: String| {
                let path = path.clone();
                Box::pin(async move {
                    let conn = rusqlite::Connection::open(&path)?;
                    conn.busy_timeout(std::time::Duration::from_secs(5))?;
                    conn.execute_batch(&format!("BEGIN; {sql}; COMMIT;"))?;
                    Ok(())
                })
            });
            Ok(TamperRig {
                store,
                exec,
                drop_guards: "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete",
                fail_appends: "CREATE TRIGGER audit_fail BEFORE INSERT ON audit_events \
                               BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
                restore_appends: "DROP TRIGGER audit_fail",
                garble_checkpoint: Some("UPDATE audit_checkpoints SET signature = x'00ff' WHERE seq = 10"),
            })
        }
    })
    .await
}
