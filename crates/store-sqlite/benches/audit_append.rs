//! Durable audit appends under concurrent load, on SQLite (WAL,
//! `synchronous = FULL`), and verification of a stored trail read back page
//! by page: `cargo bench -p mandate-store-sqlite --bench audit_append`.
// Benchmarks may panic on set-up failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mandate_core::Store;

const TASKS: usize = 256;
const PER_TASK: usize = 40;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(rt.block_on(mandate_store_sqlite::SqliteStore::open(&dir.path().join("bench.db"))).unwrap());
    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements((TASKS * PER_TASK) as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("sqlite_durable_append_256_writers", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                rt.block_on(mandate_testkit::load::append_concurrently(store.clone(), TASKS, PER_TASK)).unwrap();
            }
            start.elapsed()
        })
    });
    // Verification straight from the store, as `mandate audit verify` does,
    // over its own trail of 256 × 1,200 events.
    let trail_dir = tempfile::tempdir().unwrap();
    let trail: Arc<dyn Store> =
        Arc::new(rt.block_on(mandate_store_sqlite::SqliteStore::open(&trail_dir.path().join("trail.db"))).unwrap());
    let events = rt.block_on(mandate_testkit::load::append_concurrently(trail.clone(), TASKS, 1_200)).unwrap();
    g.throughput(Throughput::Elements(events));
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("sqlite_verify_stored_trail_307200_events", |b| {
        b.iter(|| {
            let report = rt.block_on(mandate_core::audit::verify_trail(trail.as_ref(), &[], None)).unwrap();
            assert!(matches!(report, mandate_core::TrailReport::Intact(_)));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
