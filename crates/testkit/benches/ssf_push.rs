//! Issue 17 §3: how long after a revocation is requested does a resource
//! server on the verifier SDK refuse the token, by Shared Signals push?
//! An in-process Mandate (SQLite, `--dev-loopback-fetch`) and, in the same
//! process, the SDK with its RFC 8935 endpoint on a loopback listener and a
//! push stream created through its stream calls. Per sample: a token is
//! issued and accepted by the SDK (which caches its status list for the
//! list's ttl, so only the signal can refuse it), the token is revoked at
//! Mandate (RFC 7009, admin), and the time is taken from sending the
//! revocation until the SDK refuses the token. Not a timed test: it asserts
//! nothing about the figures, it prints them.
//!
//! `cargo bench -p mandate-testkit --bench ssf_push` (`SSF_SAMPLES`, default 2,000)
// Benchmarks may panic on set-up failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mandate_jose::{KeyAlg, SigningKey};
use mandate_testkit::scenarios::{CAL, World, claims};
use mandate_testkit::{ADMIN_TOKEN, TestServer};
use mandate_verifier::{Delivery, RemoteCheck, SsfReceiver, Verifier, VerifierConfig};

fn main() {
    // `cargo bench` passes `--bench`; a filter that does not name this
    // bench skips it.
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"ssf_push".contains(a.as_str())) {
        return;
    }
    let samples: usize = std::env::var("SSF_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let w = World::new(TestServer::start_with(|c| c.dev_loopback_fetch = true).await.unwrap()).await.unwrap();
        let mut config = VerifierConfig::new(&w.s.issuer, CAL, "https://calendar.example");
        let clock = w.s.clock.clone();
        config.clock = Arc::new(move || mandate_core::Clock::now(clock.as_ref()).unix_timestamp());
        let key = SigningKey::from_pkcs8(KeyAlg::EdDSA, w.calendar.key.pkcs8()).unwrap();
        config.remote_check = Some(RemoteCheck { client_id: w.calendar.id.clone(), key: Arc::new(key) });
        let v = Verifier::new(config).unwrap();
        let receiver = SsfReceiver::new(&v);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint_url = format!("http://127.0.0.1:{}/ssf/events", listener.local_addr().unwrap().port());
        tokio::spawn(axum::serve(listener, receiver.push_router("/ssf/events")).into_future());
        receiver.create_stream(&Delivery::Push { endpoint_url, authorization_header: None }, "bench").await.unwrap();
        let cc = [("grant_type", "client_credentials"), ("resource", CAL), ("scope", "read")];
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let mut times = Vec::with_capacity(samples);
        for n in 0..samples {
            let (st, body) = w.grant(&w.planner, &cc).await.unwrap();
            assert_eq!(st, 200, "{body}");
            let token = body["access_token"].as_str().unwrap().to_owned();
            let jti = claims(&token)["jti"].as_str().unwrap().to_owned();
            v.verify(&token).await.unwrap();
            let start = Instant::now();
            let (st, _, _) =
                w.s.form_headers("/oauth/revoke", &[("token", &token)], &[("authorization", &bearer)]).await.unwrap();
            assert_eq!(st, 200);
            while !v.is_revoked(&jti) {
                assert!(start.elapsed() < Duration::from_secs(5), "sample {n}: no event within 5 s");
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            assert!(v.verify(&token).await.is_err(), "sample {n}: revoked but accepted");
            times.push(start.elapsed());
        }
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)].as_secs_f64() * 1e3;
        println!(
            "revocation -> refusal at the SDK by push, {samples} samples: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0)
        );
    });
}
