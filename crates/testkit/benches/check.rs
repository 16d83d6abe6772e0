//! `/v1/check` in process, on SQLite: a token at the end of a 3-hop chain
//! (Alice → planner → child → grandchild), checked by the calendar. The
//! chain is built over HTTP by the delegation scenarios' helpers; the
//! decision is then timed without HTTP: once for a repeated request (the
//! verified token, live chain and decision all cached), once for a new
//! resource per call (four Cedar decisions), and once for a denial (which
//! is recorded durably every time).
//! `cargo bench -p mandate-testkit --bench check`.
// Benchmarks may panic on set-up failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use criterion::{Criterion, criterion_group, criterion_main};
use mandate_core::{CheckRequest, CheckedResource, Checker};
use mandate_testkit::TestServer;
use mandate_testkit::scenarios::{CAL, World};
use serde_json::json;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (world, token) = rt.block_on(async {
        let w = World::new(TestServer::start().await.unwrap()).await.unwrap();
        let parent = w.granted(&w.planner, "read").await.unwrap()["access_token"].as_str().unwrap().to_owned();
        let child = w.spawn(&w.planner, json!({})).await.unwrap();
        let (_, hop) = w.exchange(&child, &parent, &[]).await.unwrap();
        let grandchild = w.spawn(&child, json!({})).await.unwrap();
        let (_, leaf) = w.exchange(&grandchild, hop["access_token"].as_str().unwrap(), &[]).await.unwrap();
        (w, leaf["access_token"].as_str().unwrap().to_owned())
    });
    let mandate = world.s.mandate.clone();
    let checker = Checker::Resource { id: world.calendar.id.clone(), identifier: CAL.into() };
    let req = CheckRequest {
        token,
        action: "get".into(),
        resource: CheckedResource { kind: "event".into(), id: "e1".into(), properties: Default::default() },
        context: None,
        client_address: None,
        authorization_details: None,
        probe: false,
    };
    let first = rt.block_on(mandate.check(&checker, &req)).unwrap();
    assert_eq!(first.decision, "allow", "{first:?}");
    assert_eq!(first.chain.len(), 4);
    c.bench_function("check/3-hop chain, allow", |b| b.iter(|| rt.block_on(mandate.check(&checker, &req)).unwrap()));
    // A new resource every call: the chain is cached, Cedar decides anew.
    let mut n = 0u64;
    c.bench_function("check/3-hop chain, allow, a new resource each call", |b| {
        b.iter(|| {
            n += 1;
            let mut r = req.clone();
            r.resource.id = n.to_string();
            rt.block_on(mandate.check(&checker, &r)).unwrap()
        })
    });
    let mut deny = req.clone();
    deny.action = "create".into();
    c.bench_function("check/3-hop chain, deny (recorded)", |b| {
        b.iter(|| rt.block_on(mandate.check(&checker, &deny)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
