//! A status-list rebuild as the server does it, store read included: a
//! list of 2^20 tokens of which every tenth is revoked (104,858), read back
//! through the partial index, bits set, compressed and signed.
//! `cargo bench -p mandate-store-sqlite --bench statuslist`.
// Benchmarks may panic on set-up failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mandate_core::{Change, Mutation, Store};
use mandate_jose::statuslist::{EncodedList, StatusBits, StatusListClaims, mint};
use mandate_jose::{KeyAlg, SigningKey};
use mandate_testkit::conformance::{agent, token, user};

const SIZE: u64 = 1 << 20;
const BATCH: u64 = 8192;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(rt.block_on(mandate_store_sqlite::SqliteStore::open(&dir.path().join("bench.db"))).unwrap());
    let u = user("bench@example.com");
    let a = agent(u.id, None);
    rt.block_on(async {
        store
            .commit(Change::new().with(Mutation::InsertUser(u.clone())).with(Mutation::InsertAgent(a.clone())))
            .await
            .unwrap();
        let mut revoke = Vec::new();
        for start in (0..SIZE).step_by(BATCH as usize) {
            let mut change = Change::new();
            for i in start..start + BATCH {
                let mut t = token(a.id, &u.id.to_string());
                t.status_idx = Some(i);
                if i % 10 == 0 {
                    revoke.push(t.jti);
                }
                change.push(Mutation::InsertToken(t));
            }
            store.commit(change).await.unwrap();
        }
        for chunk in revoke.chunks(BATCH as usize) {
            let mut change = Change::new();
            for jti in chunk {
                change.push(Mutation::RevokeToken { jti: *jti, at: mandate_testkit::conformance::t0() });
            }
            store.commit(change).await.unwrap();
        }
    });
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let mut g = c.benchmark_group("statuslist_sqlite_1m_10pct_revoked");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("store_read", |b| {
        b.iter(|| {
            let v = rt.block_on(store.revoked_status_indexes(0, SIZE)).unwrap();
            assert_eq!(v.len(), 104_858);
        })
    });
    g.bench_function("rebuild_read_encode_sign", |b| {
        b.iter(|| {
            let v = rt.block_on(store.revoked_status_indexes(0, SIZE)).unwrap();
            let bits = StatusBits::with_invalid(SIZE as usize, v.iter().map(|i| *i as usize));
            let claims = StatusListClaims {
                sub: "https://mandate.example/statuslists/0".into(),
                iat: 1_800_000_000,
                exp: 1_800_003_600,
                ttl: 60,
                status_list: EncodedList { bits: 1, lst: bits.encode().unwrap() },
            };
            mint(&key, &claims).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
