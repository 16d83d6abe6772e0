//! Durable audit appends under concurrent load, on PostgreSQL, from one
//! node and from two sharing the chain:
//! `cargo bench -p mandate-store-postgres --bench audit_append`
//! (server from `MANDATE_TEST_POSTGRES_URL`, default the local one).
// Benchmarks may panic on set-up failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mandate_core::Store;
use mandate_store_postgres::PostgresStore;
use sqlx::Connection;

const TASKS: usize = 256;
const PER_TASK: usize = 40;

fn admin_url() -> String {
    std::env::var("MANDATE_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn fresh_database() -> String {
    let admin = admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    let name = format!("mandate_bench_{}", ulid::Ulid::new().to_string().to_lowercase());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let url = rt.block_on(fresh_database());
    let one: Arc<dyn Store> = Arc::new(rt.block_on(PostgresStore::connect(&url)).unwrap());
    let other: Arc<dyn Store> = Arc::new(rt.block_on(PostgresStore::connect(&url)).unwrap());
    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements((TASKS * PER_TASK) as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("postgres_durable_append_256_writers_one_node", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                rt.block_on(mandate_testkit::load::append_concurrently(one.clone(), TASKS, PER_TASK)).unwrap();
            }
            start.elapsed()
        })
    });
    g.bench_function("postgres_durable_append_256_writers_two_nodes", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                rt.block_on(async {
                    let (x, y) = tokio::join!(
                        mandate_testkit::load::append_concurrently(one.clone(), TASKS / 2, PER_TASK),
                        mandate_testkit::load::append_concurrently(other.clone(), TASKS / 2, PER_TASK),
                    );
                    x.unwrap();
                    y.unwrap();
                });
            }
            start.elapsed()
        })
    });
    g.finish();
    drop((one, other));
    rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
        let name = url.rsplit_once('/').unwrap().1;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await.unwrap();
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
