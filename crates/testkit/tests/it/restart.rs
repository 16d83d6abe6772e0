//! Keys, agents, revocations and the replay store survive a restart.

use std::sync::Arc;

use mandate_core::ManualClock;
use mandate_testkit::TestServer;
use reqwest::Method;
use serde_json::json;

const API: &str = "https://api.example.com";

#[tokio::test]
async fn state_survives_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(mandate_core::Clock::now(&mandate_core::SystemClock)));
    let s = TestServer::start_in(dir.path(), clock.clone(), |c| c.issuer = "https://mandate.test".into()).await?;
    let (_, agent) = s.seed().await?;
    let jwks_before: serde_json::Value = s.http.get(format!("{}/jwks.json", s.url)).send().await?.json().await?;
    let used = s.assertion(&agent, json!({}));
    let (st, body) = s.token_with(&used, API, "read").await?;
    assert_eq!(st, 200);
    let revoked = body["access_token"].as_str().unwrap_or_default().to_owned();
    let (_, body) = s.token(&agent, API, "read").await?;
    let live = body["access_token"].as_str().unwrap_or_default().to_owned();
    let a = s.assertion(&agent, json!({}));
    s.form_asserted(&a, "/oauth/revoke", &[("token", &revoked)]).await?;
    let agent_id = agent.id.clone();
    s.stop().await?;

    let s = TestServer::start_in(dir.path(), clock, |c| c.issuer = "https://mandate.test".into()).await?;
    let jwks_after: serde_json::Value = s.http.get(format!("{}/jwks.json", s.url)).send().await?.json().await?;
    assert_eq!(jwks_before["keys"][0]["kid"], jwks_after["keys"][0]["kid"], "the signing key changed");
    let (st, body) = s.admin(Method::GET, &format!("/v1/agents/{agent_id}"), None).await?;
    assert_eq!((st, body["status"].as_str()), (200, Some("active")));
    assert_eq!(s.introspect(&live).await?["active"], true, "a live token died in the restart");
    assert_eq!(s.introspect(&revoked).await?, json!({"active": false}), "a revocation was forgotten");
    // The replay store remembers the used jti.
    let (st, body) = s.token_with(&used, API, "read").await?;
    assert_eq!(st, 401, "{body}");
    s.stop().await?;
    Ok(())
}
