//! Failing closed (SECURITY row 46): a broken random source or store fails
//! the request with a fixed message and the request id, stores nothing, and
//! never puts internal detail on the wire.

use std::sync::Arc;

use mandate_testkit::TestServer;
use mandate_testkit::faulty::{Fault, FaultyStore, FlakyRandom, INJECTED};
use reqwest::Method;
use serde_json::json;

const API: &str = "https://api.example.com";

fn clock() -> Arc<mandate_core::ManualClock> {
    Arc::new(mandate_core::ManualClock::new(mandate_core::Clock::now(&mandate_core::SystemClock)))
}

#[tokio::test]
async fn a_failing_random_source_fails_the_request_and_issues_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = mandate_store_sqlite::SqliteStore::open(&dir.path().join("mandate.db")).await?;
    let rng = Arc::new(FlakyRandom::default());
    let s =
        TestServer::start_full(Arc::new(store), dir.path(), clock(), rng.clone(), mandate_testkit::test_edge(), |_| {})
            .await?;
    let (user, agent) = s.seed().await?;
    let issued_before = s.audit("type=token.issued").await?.len();

    rng.set_failing(true);
    let a = s.assertion(&agent, json!({}));
    let (st, body) = s.token_with(&a, API, "read").await?;
    assert_eq!((st, body["error"].as_str()), (503, Some("temporarily_unavailable")), "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
    let (st, body) = s.admin(Method::POST, "/v1/users", Some(json!({"name": "Bo", "email": "bo@example.com"}))).await?;
    assert_eq!((st, body["type"].as_str()), (503, Some("urn:mandate:problem:unavailable")), "{body}");
    assert!(body["request_id"].is_string(), "the client gets the request id: {body}");
    let (st, body) = s.admin(Method::POST, &format!("/v1/users/{user}/tokens"), Some(json!({}))).await?;
    assert_eq!(st, 503, "{body}");
    // The sign-in form needs a CSRF token: no page with a predictable one.
    let resp = s.http.get(format!("{}/login", s.url)).send().await?;
    assert_eq!(resp.status(), 503);
    let page = resp.text().await?;
    assert!(!page.contains("name=\"csrf\""), "a form was served without randomness: {page}");

    // Nothing happened while it failed: the assertion is unused, the user
    // was not created, no token was issued.
    rng.set_failing(false);
    let (st, body) = s.token_with(&a, API, "read").await?;
    assert_eq!(st, 200, "{body}");
    let (st, _) = s.admin(Method::POST, "/v1/users", Some(json!({"name": "Bo", "email": "bo@example.com"}))).await?;
    assert_eq!(st, 201, "the failed request created the user");
    assert_eq!(s.audit("type=token.issued").await?.len(), issued_before + 1);
    s.stop().await?;
    Ok(())
}

/// Every body the server sends while `store` fails with `fault`.
async fn bodies_under(s: &TestServer, agent: &mandate_testkit::TestAgent, user: &str) -> anyhow::Result<Vec<String>> {
    let mut bodies = Vec::new();
    let a = s.assertion(agent, json!({}));
    let calls: Vec<reqwest::RequestBuilder> = vec![
        s.http.post(format!("{}/oauth/token", s.url)).form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
            ("client_assertion", &a),
            ("resource", API),
            ("scope", "read"),
        ]),
        s.http
            .post(format!("{}/oauth/introspect", s.url))
            .bearer_auth(mandate_testkit::ADMIN_TOKEN)
            .form(&[("token", "x.y.z")]),
        s.http
            .post(format!("{}/oauth/revoke", s.url))
            .bearer_auth(mandate_testkit::ADMIN_TOKEN)
            .form(&[("token", "x.y.z")]),
        s.http.get(format!("{}/v1/users/{user}", s.url)).bearer_auth(mandate_testkit::ADMIN_TOKEN),
        s.http
            .post(format!("{}/v1/users", s.url))
            .bearer_auth(mandate_testkit::ADMIN_TOKEN)
            .json(&json!({"name": "Cy", "email": "cy@example.com"})),
        s.http.get(format!("{}/v1/audit", s.url)).bearer_auth(mandate_testkit::ADMIN_TOKEN),
        s.http.get(format!("{}/v1/audit/verify", s.url)).bearer_auth(mandate_testkit::ADMIN_TOKEN),
        s.http.post(format!("{}/v1/keys/rotate", s.url)).bearer_auth(mandate_testkit::ADMIN_TOKEN),
        s.http.post(format!("{}/v1/check", s.url)).bearer_auth(mandate_testkit::ADMIN_TOKEN).json(&json!({
            "token": "x.y.z", "action": "read", "resource": {"type": "doc", "id": "1"}
        })),
        s.http.get(format!("{}/readyz", s.url)),
        s.http.get(format!("{}/statuslists/0", s.url)),
        s.http.get(format!("{}/approvals", s.url)).header("cookie", "mandate_session=mnd_ses_x"),
        s.http.post(format!("{}/login", s.url)).form(&[("email", "a@example.com"), ("password", "x"), ("csrf", "c")]),
    ];
    for call in calls {
        let resp = call.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        bodies.push(format!("{status} {text}"));
    }
    Ok(bodies)
}

#[tokio::test]
async fn internal_failures_reach_the_client_as_a_fixed_message_and_the_request_id() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let inner = mandate_store_sqlite::SqliteStore::open(&dir.path().join("mandate.db")).await?;
    let store = FaultyStore::new(Arc::new(inner));
    let s = TestServer::start_on(store.clone(), dir.path(), clock(), |_| {}).await?;
    let (user, agent) = s.seed().await?;
    for fault in [Fault::Unavailable, Fault::Corrupt, Fault::GarbledKeys] {
        store.set_fault(fault);
        // Cached keys and records would hide the fault: move the epoch.
        s.mandate.sync_from_store().await.ok();
        let bodies = bodies_under(&s, &agent, &user).await?;
        let mut failed = 0;
        for b in &bodies {
            assert!(!b.contains("INJECTED") && !b.contains(INJECTED), "{fault:?}: internal detail on the wire: {b}");
            assert!(!b.contains("secret_stuff") && !b.contains("unwrap"), "{fault:?}: {b}");
            if b.starts_with("503") {
                failed += 1;
                assert!(b.contains("request "), "{fault:?}: a 503 names its request id: {b}");
                assert!(b.contains("cannot answer now"), "{fault:?}: a 503 says only the fixed sentence: {b}");
            }
        }
        assert!(failed > 0, "{fault:?}: no request failed at all, so the test proves nothing: {bodies:?}");
        if fault != Fault::GarbledKeys {
            assert!(failed >= 5, "{fault:?}: too few failures: {bodies:#?}");
        }
    }
    store.set_fault(Fault::None);
    s.mandate.sync_from_store().await?;
    let (st, body) = s.token(&agent, API, "read").await?;
    assert_eq!(st, 200, "{body}");
    s.stop().await?;
    Ok(())
}
