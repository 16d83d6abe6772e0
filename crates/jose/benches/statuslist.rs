//! Rebuilding a status list of 2^20 (~1M) entries: set the revoked bits,
//! compress, sign. `cargo bench -p mandate-jose --bench statuslist`.
// Benchmarks may panic on set-up failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mandate_jose::statuslist::{EncodedList, StatusBits, StatusListClaims, mint};
use mandate_jose::{KeyAlg, SigningKey};

const SIZE: usize = 1 << 20;

/// `n` revoked indexes spread pseudo-randomly over the list (a fixed LCG:
/// revocations arrive in no particular order).
fn revoked(n: usize) -> Vec<usize> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as usize % SIZE
        })
        .collect()
}

fn rebuild(c: &mut Criterion) {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let mut group = c.benchmark_group("statuslist_rebuild_1m");
    for share in [0usize, 1, 10, 50] {
        let indexes = revoked(SIZE * share / 100);
        group.bench_with_input(BenchmarkId::new("revoked_percent", share), &indexes, |b, indexes| {
            b.iter(|| {
                let bits = StatusBits::with_invalid(SIZE, indexes.iter().copied());
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
    }
    group.finish();
}

criterion_group!(benches, rebuild);
criterion_main!(benches);
