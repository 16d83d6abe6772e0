//! Hash-chain verification throughput. `cargo bench -p mandate-audit --bench verify`.
// Benchmarks may panic on set-up failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mandate_audit::{Event, GENESIS, seal, verify};

fn event(i: u64) -> Event {
    Event {
        seq: 0,
        time: "2026-11-22T09:00:00.123456Z".into(),
        kind: "token.issued".into(),
        decision: Some("allow".into()),
        subject: Some("usr_01JABCDEFGHJKMNPQRSTVWXYZ0".into()),
        actor: Some(format!("agt_01JABCDEFGHJKMNPQRSTV{i:05}")),
        chain: vec!["usr_01JABCDEFGHJKMNPQRSTVWXYZ0".into(), format!("agt_01JABCDEFGHJKMNPQRSTV{i:05}")],
        client_id: Some(format!("agt_01JABCDEFGHJKMNPQRSTV{i:05}")),
        action: None,
        resource: Some("https://api.example.com".into()),
        scope: Some("mail.read mail.send".into()),
        jti: Some(format!("tok_01JABCDEFGHJKMNPQRSTV{i:05}")),
        grant_id: Some("grt_01JABCDEFGHJKMNPQRSTVWXYZ0".into()),
        parent: None,
        count: None,
        reason: None,
        request_id: Some(format!("req-{i}")),
        prev_hash: String::new(),
        hash: String::new(),
        lane: 0,
    }
}

fn bench(c: &mut Criterion) {
    const N: u64 = 100_000;
    let mut events = Vec::with_capacity(N as usize);
    let mut prev = GENESIS.to_owned();
    for i in 0..N {
        let e = seal(event(i), i + 1, &prev).unwrap();
        prev = e.hash.clone();
        events.push(e);
    }
    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.bench_function("verify_100k_events", |b| b.iter(|| assert_eq!(verify(&events, &[], &[]).unwrap(), N)));
    g.finish();
    c.bench_function("audit/seal_one_event", |b| b.iter(|| seal(event(7), 8, GENESIS).unwrap()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
