//! The audit trail seen from outside: every decision and change has its
//! event, a failed audit write fails the request, and the API queries,
//! verifies, checkpoints and traces the trail.

use std::sync::Arc;

use mandate_testkit::TestServer;
use mandate_testkit::faulty::FaultyStore;
use reqwest::Method;
use serde_json::{Value, json};

const API: &str = "https://api.example.com";

fn only(events: Vec<Value>) -> Value {
    assert_eq!(events.len(), 1, "expected one event: {events:#?}");
    events.into_iter().next().unwrap_or_default()
}

async fn jti_of(s: &TestServer, token: &str) -> anyhow::Result<String> {
    Ok(s.introspect(token).await?["jti"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn every_decision_and_change_is_recorded_and_the_chain_verifies() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (user, agent) = s.seed().await?;
    let kinds: Vec<String> = s.audit("").await?.iter().filter_map(|e| e["type"].as_str().map(str::to_owned)).collect();
    for k in
        ["key.created", "admin.token_seeded", "user.created", "resource.created", "policy.updated", "agent.created"]
    {
        assert!(kinds.iter().any(|x| x == k), "no {k} event in {kinds:?}");
    }
    let policy = only(s.audit("type=policy.updated").await?);
    assert!(policy["reason"].as_str().unwrap_or_default().contains("sha256:"), "{policy}");
    assert_eq!(policy["actor"], "admin");

    // Issuance, with the caller's request id.
    let a = s.assertion(&agent, json!({}));
    let resp = s
        .http
        .post(format!("{}/oauth/token", s.url))
        .header("x-request-id", "walkthrough-42")
        .form(&[
            ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
            ("client_assertion", a.as_str()),
            ("grant_type", "client_credentials"),
            ("resource", API),
            ("scope", "read"),
        ])
        .send()
        .await?;
    assert_eq!(resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("walkthrough-42"));
    let body: Value = resp.json().await?;
    let token = body["access_token"].as_str().unwrap_or_default().to_owned();
    let jti = jti_of(&s, &token).await?;
    let issued = only(s.audit(&format!("type=token.issued&jti={jti}")).await?);
    assert_eq!(issued["decision"], "allow");
    assert_eq!(issued["actor"], agent.id.as_str());
    assert_eq!(issued["client_id"], agent.id.as_str());
    assert_eq!(issued["subject"], agent.id.as_str());
    assert_eq!(issued["chain"], json!([agent.id]));
    assert_eq!((issued["resource"].as_str(), issued["scope"].as_str()), (Some(API), Some("read")));
    assert_eq!(issued["request_id"], "walkthrough-42");

    // A refusal by policy.
    let (st, _) = s.token(&agent, API, "write").await?;
    assert_eq!(st, 400);
    let denied = only(s.audit("type=token.denied").await?);
    assert_eq!((denied["decision"].as_str(), denied["scope"].as_str()), (Some("deny"), Some("write")));
    assert!(denied["reason"].as_str().unwrap_or_default().contains("policy does not allow write"), "{denied}");

    // A replayed assertion and a forged one.
    let (st, _) = s.token_with(&a, API, "read").await?;
    assert_eq!(st, 401);
    let forger = mandate_testkit::TestAgent {
        id: agent.id.clone(),
        key: mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?,
    };
    let (st, _) = s.token(&forger, API, "read").await?;
    assert_eq!(st, 401);
    // (Two refusals that say different things, from one address, are two
    // variants: each is written whole.)
    let failed = s.audit("type=client.auth_failed").await?;
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert!(failed[0]["reason"].as_str().unwrap_or_default().contains("already used"), "{}", failed[0]);
    assert!(failed.iter().all(|e| e["client_id"] == agent.id.as_str() && e["decision"] == "deny"));

    // An unsupported grant type.
    let (st, _) = s.form("/oauth/token", &[("grant_type", "password")]).await?;
    assert_eq!(st, 400);
    assert_eq!(s.audit("type=token.denied").await?.len(), 2);

    // Introspection: by the admin, and refused to an unrelated agent.
    let other = s.create_agent(&user, mandate_jose::KeyAlg::EdDSA).await?;
    let (st, body) =
        s.form_asserted(&s.assertion(&other, json!({})), "/oauth/introspect", &[("token", &token)]).await?;
    assert_eq!((st, body), (200, json!({"active": false})));
    let looks = s.audit(&format!("type=token.introspected&jti={jti}")).await?;
    assert_eq!(looks.len(), 2);
    assert_eq!((looks[0]["actor"].as_str(), looks[0]["decision"].as_str()), (Some("admin"), Some("allow")));
    assert_eq!((looks[1]["actor"].as_str(), looks[1]["decision"].as_str()), (Some(other.id.as_str()), Some("deny")));

    // Revocation of another client's token changes nothing but is recorded
    // (SECURITY row 27); the holder's own revocation counts what it reached.
    let (st, _) = s.form_asserted(&s.assertion(&other, json!({})), "/oauth/revoke", &[("token", &token)]).await?;
    assert_eq!(st, 200);
    assert_eq!(s.introspect(&token).await?["active"], true);
    let (st, _) = s.form_asserted(&s.assertion(&agent, json!({})), "/oauth/revoke", &[("token", &token)]).await?;
    assert_eq!(st, 200);
    let revoked = s.audit(&format!("type=token.revoked&jti={jti}")).await?;
    assert_eq!(revoked.len(), 2);
    assert_eq!((revoked[0]["decision"].as_str(), revoked[0]["count"].as_u64()), (Some("deny"), None));
    assert_eq!((revoked[1]["decision"].as_str(), revoked[1]["count"].as_u64()), (Some("allow"), Some(1)));

    // A lifecycle change counts the tokens it revoked.
    s.token(&agent, API, "read").await?;
    let (st, _) = s.admin(Method::POST, &format!("/v1/agents/{}/suspend", agent.id), None).await?;
    assert_eq!(st, 200);
    let suspended = only(s.audit("type=agent.suspended").await?);
    assert_eq!((suspended["resource"].as_str(), suspended["count"].as_u64()), (Some(agent.id.as_str()), Some(1)));

    // Key rotation.
    let (st, rotated) = s.admin(Method::POST, "/v1/keys/rotate", None).await?;
    assert_eq!(st, 200);
    let rotation = only(s.audit("type=key.rotated").await?);
    assert!(rotation["reason"].as_str().unwrap_or_default().contains(rotated["kid"].as_str().unwrap_or("?")));
    assert_eq!(rotation["count"], 1, "the old key was retired");

    // The admin API: a wrong token, and a user calling what only the admin may.
    let (st, _) = s.call(Method::GET, "/v1/policies", Some("not-the-admin-token-at-all"), None).await?;
    assert_eq!(st, 401);
    assert_eq!(only(s.audit("type=admin.auth_failed").await?)["decision"], "deny");
    let (_, body) = s.admin(Method::POST, &format!("/v1/users/{user}/tokens"), None).await?;
    let user_token = body["token"].as_str().unwrap_or_default().to_owned();
    let (st, _) = s.call(Method::GET, "/v1/policies", Some(&user_token), None).await?;
    assert_eq!(st, 403);
    assert_eq!(only(s.audit("type=admin.denied").await?)["actor"], user.as_str());

    // The whole trail verifies, and counts every event.
    let all = s.audit("").await?;
    let seqs: Vec<u64> = all.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());
    let v = s.verify_audit().await?;
    assert_eq!((v["valid"].as_bool(), v["events"].as_u64()), (Some(true), Some(all.len() as u64)), "{v}");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_failed_audit_write_fails_the_request_and_grants_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(mandate_core::ManualClock::new(mandate_core::Clock::now(&mandate_core::SystemClock)));
    let inner = mandate_store_sqlite::SqliteStore::open(&dir.path().join("mandate.db")).await?;
    let store = FaultyStore::new(Arc::new(inner));
    let s = TestServer::start_on(store.clone(), dir.path(), clock, |_| {}).await?;
    let (_, agent) = s.seed().await?;
    let events_before = s.audit("").await?.len();

    store.set_failing(true);
    let a = s.assertion(&agent, json!({}));
    let (st, body) = s.token_with(&a, API, "read").await?;
    assert_eq!((st, body["error"].as_str()), (503, Some("temporarily_unavailable")), "{body}");
    assert!(body.get("access_token").is_none());
    let (st, body) = s.admin(Method::POST, "/v1/users", Some(json!({"name": "Bo", "email": "bo@example.com"}))).await?;
    assert_eq!((st, body["type"].as_str()), (503, Some("urn:mandate:problem:unavailable")), "{body}");
    let (st, _) = s.admin(Method::POST, &format!("/v1/agents/{}/suspend", agent.id), None).await?;
    assert_eq!(st, 503);
    // A refusal whose record cannot be written is still a refusal.
    let (st, _) = s.token(&agent, API, "write").await?;
    assert_eq!(st, 503);

    // Nothing was written: the same assertion is still unused, the user does
    // not exist, the agent is still active, and the trail has no gap.
    store.set_failing(false);
    let (st, body) = s.token_with(&a, API, "read").await?;
    assert_eq!(st, 200, "the failed request burned its assertion: {body}");
    let (st, _) = s.admin(Method::POST, "/v1/users", Some(json!({"name": "Bo", "email": "bo@example.com"}))).await?;
    assert_eq!(st, 201, "the failed request created the user");
    let (_, a_now) = s.admin(Method::GET, &format!("/v1/agents/{}", agent.id), None).await?;
    assert_eq!(a_now["status"], "active");
    let after = s.audit("").await?;
    assert_eq!(after.len(), events_before + 2);
    assert_eq!(s.verify_audit().await?["valid"], true);
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_query_api_filters_pages_and_refuses_bad_input() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (user, agent) = s.seed().await?;
    for _ in 0..3 {
        s.token(&agent, API, "read").await?;
    }
    let all = s.audit("").await?;
    // Cursor pagination by seq covers every event once.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let (st, body) = s.admin(Method::GET, &format!("/v1/audit?limit=2&after={after}"), None).await?;
        assert_eq!(st, 200);
        paged.extend(body["events"].as_array().cloned().unwrap_or_default());
        match body["next"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(paged, all);
    assert_eq!(s.audit(&format!("actor={}&type=token.issued", agent.id)).await?.len(), 3);
    assert_eq!(s.audit("since=2999-01-01T00:00:00Z").await?.len(), 0);
    assert_eq!(s.audit("since=2000-01-01T00:00:00%2B02:00").await?.len(), all.len());
    for bad in [
        "bogus=1",
        "actor=x%27%20OR%20%271%27=%271",
        "subject=a;b",
        "limit=0",
        "limit=1001",
        "after=-1",
        "since=yesterday",
        "type=a&type=b",
        "jti=%00",
    ] {
        let (st, body) = s.admin(Method::GET, &format!("/v1/audit?{bad}"), None).await?;
        assert_eq!((st, body["type"].as_str()), (400, Some("urn:mandate:problem:invalid-input")), "{bad}: {body}");
    }
    let (st, _) = s.call(Method::GET, "/v1/audit", None, None).await?;
    assert_eq!(st, 401);
    // A user sees the events about themselves, and nobody else's.
    let (_, body) = s.admin(Method::POST, &format!("/v1/users/{user}/tokens"), None).await?;
    let mine = body["token"].as_str().unwrap_or_default().to_owned();
    let (st, body) = s.call(Method::GET, "/v1/audit", Some(&mine), None).await?;
    assert_eq!(st, 200);
    let events = body["events"].as_array().cloned().unwrap_or_default();
    assert!(!events.is_empty() && events.iter().all(|e| e["subject"] == user.as_str()), "{events:#?}");
    let (st, _) = s.call(Method::GET, &format!("/v1/audit?subject={}", agent.id), Some(&mine), None).await?;
    assert_eq!(st, 403);
    let (st, _) = s.call(Method::GET, "/v1/audit/verify", Some(&mine), None).await?;
    assert_eq!(st, 403);
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn checkpoints_let_a_witness_verify_the_trail_and_trace_draws_the_tree() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| c.audit_checkpoint_events = 1).await?;
    let (_, agent) = s.seed().await?;
    let (_, body) = s.token(&agent, API, "read").await?;
    let token = body["access_token"].as_str().unwrap_or_default().to_owned();
    let jti = jti_of(&s, &token).await?;
    s.mandate.checkpoint_if_due().await?;
    let resp = s
        .http
        .post(format!("{}/oauth/revoke", s.url))
        .bearer_auth(mandate_testkit::ADMIN_TOKEN)
        .form(&[("token", token.as_str())])
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    s.mandate.checkpoint_if_due().await?;

    // What a witness does: fetch the events, the checkpoints and the keys,
    // and verify offline.
    let events: Vec<mandate_audit::Event> =
        s.audit("").await?.into_iter().map(serde_json::from_value).collect::<Result<_, _>>()?;
    let (st, body) = s.admin(Method::GET, "/v1/audit/checkpoints?limit=1000", None).await?;
    assert_eq!(st, 200);
    let cps: Vec<mandate_audit::Checkpoint> = serde_json::from_value(body["checkpoints"].clone())?;
    assert!(cps.len() >= 2, "{cps:?}");
    let (st, keys) = s.call(Method::GET, "/v1/audit/keys", None, None).await?;
    assert_eq!(st, 200, "the audit keys are public");
    let keys = mandate_jose::JwkSet::from_json(&keys)?.keys;
    assert_eq!(mandate_audit::verify(&events, &cps, &keys), Ok(events.len() as u64));
    let (st, _) = s.call(Method::GET, "/v1/audit/checkpoints", None, None).await?;
    assert_eq!(st, 401);

    // The tree of the token: the agent's hop to the API, then its revocation.
    let (st, body) = s.admin(Method::GET, &format!("/v1/audit/trace/{jti}"), None).await?;
    assert_eq!(st, 200, "{body}");
    let text = body["text"].as_str().unwrap_or_default();
    assert!(text.contains(&format!("{} -> {API} [read] {jti}", agent.id)), "{text}");
    assert!(text.contains("token.revoked allow"), "{text}");
    assert_eq!(body["tokens"], 1);
    let (st, _) = s.admin(Method::GET, "/v1/audit/trace/tok_01JZZZZZZZZZZZZZZZZZZZZZZZ", None).await?;
    assert_eq!(st, 404);
    let (st, _) = s.admin(Method::GET, "/v1/audit/trace/usr_01JZZZZZZZZZZZZZZZZZZZZZZZ", None).await?;
    assert_eq!(st, 400);
    s.stop().await?;
    Ok(())
}

/// SECURITY row 34: a policy that cannot be evaluated denies, and the trail
/// says `policy_error` rather than a plain denial.
#[tokio::test]
async fn a_policy_error_denies_and_is_recorded_as_such() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, agent) = s.seed().await?;
    // Valid under the schema, but its evaluation overflows, so it errors.
    s.put_policies(
        r#"permit(principal is Agent, action == Action::"read", resource);
           forbid(principal is Agent, action, resource) unless { 9223372036854775807 + 1 > 0 };"#,
    )
    .await?;
    let (st, body) = s.token(&agent, API, "read").await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_scope")), "{body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.starts_with("policy_error:") && !description.contains("overflow"), "{description}");
    let denied = only(s.audit("type=token.denied").await?);
    assert!(denied["reason"].as_str().unwrap_or_default().contains("policy_error"), "{denied}");
    s.stop().await?;
    Ok(())
}

/// Every answer carries a request id: the caller's when it is short
/// printable ASCII and sent once, a fresh one otherwise, and never the same
/// fresh one twice.
#[tokio::test]
async fn request_ids_are_the_callers_when_sane_and_fresh_otherwise() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let id_of = |resp: &reqwest::Response| {
        resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_default()
    };
    let url = format!("{}/healthz", s.url);
    let kept = s.http.get(&url).header("x-request-id", "trace-7").send().await?;
    assert_eq!(id_of(&kept), "trace-7");
    let mut fresh = Vec::new();
    for bad in ["", "has space", &"x".repeat(mandate_core::audit::MAX_REQUEST_ID + 1)] {
        let resp = s.http.get(&url).header("x-request-id", bad).send().await?;
        fresh.push(id_of(&resp));
    }
    let twice = s.http.get(&url).header("x-request-id", "a").header("x-request-id", "b").send().await?;
    fresh.push(id_of(&twice));
    fresh.push(id_of(&s.http.get(&url).send().await?));
    for id in &fresh {
        assert!(!id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic()), "{id:?}");
        assert!(!["a", "b", "has space"].contains(&id.as_str()), "a bad id was kept: {id:?}");
    }
    let distinct: std::collections::BTreeSet<&String> = fresh.iter().collect();
    assert_eq!(distinct.len(), fresh.len(), "fresh ids repeat: {fresh:?}");
    Ok(())
}
