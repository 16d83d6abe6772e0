//! Durable audit appends under concurrent load, on SQLite (WAL,
//! `synchronous = FULL`): `cargo bench -p mandate-store-sqlite --bench audit_append`.
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
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
