use mandate_testkit::TestServer;
use reqwest::Method;
use serde_json::json;

const API: &str = "https://api.example.com";

#[tokio::test]
async fn suspend_resume_retire_and_their_revocations() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, agent) = s.seed().await?;
    let (_, body) = s.token(&agent, API, "read").await?;
    let t1 = body["access_token"].as_str().unwrap_or_default().to_owned();
    let (st, body) = s.admin(Method::POST, &format!("/v1/agents/{}/suspend", agent.id), None).await?;
    assert_eq!(st, 200);
    assert_eq!(body["status"], "suspended");
    assert_eq!(body["revoked_tokens"], 1);
    assert_eq!(s.introspect(&t1).await?, json!({"active": false}));
    // A suspended agent cannot authenticate.
    let (st, body) = s.token(&agent, API, "read").await?;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")));
    // Suspending twice is a conflict.
    let (st, body) = s.admin(Method::POST, &format!("/v1/agents/{}/suspend", agent.id), None).await?;
    assert_eq!(st, 409, "{body}");
    // Resume: tokens revoked before stay revoked; new ones work.
    let (st, _) = s.admin(Method::POST, &format!("/v1/agents/{}/resume", agent.id), None).await?;
    assert_eq!(st, 200);
    assert_eq!(s.introspect(&t1).await?, json!({"active": false}));
    let (st, body) = s.token(&agent, API, "read").await?;
    assert_eq!(st, 200);
    let t2 = body["access_token"].as_str().unwrap_or_default().to_owned();
    // Retire: final.
    let (st, body) = s.admin(Method::POST, &format!("/v1/agents/{}/retire", agent.id), None).await?;
    assert_eq!((st, body["revoked_tokens"].as_u64()), (200, Some(1)));
    assert_eq!(s.introspect(&t2).await?, json!({"active": false}));
    for op in ["resume", "suspend", "retire"] {
        let (st, _) = s.admin(Method::POST, &format!("/v1/agents/{}/{op}", agent.id), None).await?;
        assert_eq!(st, 409, "{op} after retire");
    }
    let (st, _) = s.admin(Method::POST, &format!("/v1/agents/{}/explode", agent.id), None).await?;
    assert_eq!(st, 404);
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn ephemeral_agents_expire_and_die_with_their_parent() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (owner, parent) = s.seed().await?;
    let key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
    let (st, body) = s
        .admin(
            Method::POST,
            "/v1/agents",
            Some(json!({"name": "Sub task", "owner": owner, "kind": "ephemeral", "parent": parent.id, "ttl_seconds": 600, "jwks": {"keys": [key.public().to_json()]}})),
        )
        .await?;
    assert_eq!(st, 201, "{body}");
    let child = mandate_testkit::TestAgent { id: body["client_id"].as_str().unwrap_or_default().to_owned(), key };
    let (st, body) = s.token(&child, API, "read").await?;
    assert_eq!(st, 200, "{body}");
    let t = body["access_token"].as_str().unwrap_or_default().to_owned();
    // TTL above the cap is refused.
    let (st, _) = s
        .admin(Method::POST, "/v1/agents", Some(json!({"name": "Too long", "owner": owner, "kind": "ephemeral", "parent": parent.id, "ttl_seconds": 7200, "jwks": {"keys": [parent.key.public().to_json()]}})))
        .await?;
    assert_eq!(st, 400);
    // Retiring the parent retires the child and revokes its tokens.
    let (st, body) = s.admin(Method::POST, &format!("/v1/agents/{}/retire", parent.id), None).await?;
    assert_eq!((st, body["revoked_tokens"].as_u64()), (200, Some(1)));
    assert_eq!(body["retired_agents"], json!([child.id]), "the answer names what the cascade retired");
    assert_eq!(body["revoked_grants"], 0);
    assert_eq!(s.introspect(&t).await?, json!({"active": false}));
    let (_, c) = s.admin(Method::GET, &format!("/v1/agents/{}", child.id), None).await?;
    assert_eq!(c["status"], "retired");
    // One event for the retirement, counting every token the cascade
    // reached, and one for each descendant it took along.
    let retired = s.audit("type=agent.retired").await?;
    assert_eq!(retired.len(), 2, "{retired:?}");
    assert_eq!((retired[0]["resource"].as_str(), retired[0]["count"].as_u64()), (Some(parent.id.as_str()), Some(1)));
    assert_eq!((retired[1]["resource"].as_str(), retired[1]["count"].as_u64()), (Some(child.id.as_str()), Some(1)));
    assert!(retired[1]["reason"].as_str().unwrap_or_default().contains(&parent.id));
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_ephemeral_agent_past_its_expiry_cannot_authenticate() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (owner, parent) = s.seed().await?;
    let key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
    let (_, body) = s
        .admin(Method::POST, "/v1/agents", Some(json!({"name": "Short task", "owner": owner, "kind": "ephemeral", "parent": parent.id, "ttl_seconds": 60, "jwks": {"keys": [key.public().to_json()]}})))
        .await?;
    let child = mandate_testkit::TestAgent { id: body["client_id"].as_str().unwrap_or_default().to_owned(), key };
    let (st, body) = s.token(&child, API, "read").await?;
    assert_eq!(st, 200);
    assert!(body["expires_in"].as_i64().unwrap_or(999) <= 60, "token outlives its agent: {body}");
    let t = body["access_token"].as_str().unwrap_or_default().to_owned();
    s.clock.advance(time::Duration::seconds(61));
    assert_eq!(s.introspect(&t).await?, json!({"active": false}));
    let (st, _) = s.token(&child, API, "read").await?;
    assert_eq!(st, 401);
    // Housekeeping records the expiry as retirement.
    s.mandate.housekeeping().await?;
    let (_, c) = s.admin(Method::GET, &format!("/v1/agents/{}", child.id), None).await?;
    assert_eq!(c["status"], "retired");
    let (_, p) = s.admin(Method::GET, &format!("/v1/agents/{}", parent.id), None).await?;
    assert_eq!(p["status"], "active", "a persistent agent was retired by expiry housekeeping");
    let expired = s.audit("type=agent.expired").await?;
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0]["resource"].as_str(), expired[0]["subject"].as_str()),
        (Some(child.id.as_str()), Some(owner.as_str()))
    );
    // Housekeeping again finds nothing more to record.
    s.mandate.housekeeping().await?;
    assert_eq!(s.audit("type=agent.expired").await?.len(), 1);
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn disabling_a_user_takes_effect_at_once() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let user = s.create_user("d@example.com").await?;
    let (_, body) = s.admin(Method::POST, &format!("/v1/users/{user}/tokens"), None).await?;
    let token = body["token"].as_str().unwrap_or_default().to_owned();
    let (st, _) = s.call(Method::GET, &format!("/v1/users/{user}"), Some(&token), None).await?;
    assert_eq!(st, 200);
    let (st, body) = s
        .admin(Method::PATCH, &format!("/v1/users/{user}"), Some(json!({"status": "disabled", "groups": ["ex"]})))
        .await?;
    assert_eq!((st, body["status"].as_str()), (200, Some("disabled")));
    let (st, _) = s.call(Method::GET, &format!("/v1/users/{user}"), Some(&token), None).await?;
    assert_eq!(st, 401);
    let (st, _) = s.admin(Method::PATCH, &format!("/v1/users/{user}"), Some(json!({"status": "gone"}))).await?;
    assert_eq!(st, 400);
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn disabling_an_owner_stops_their_agents() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (owner, agent) = s.seed().await?;
    let (_, body) = s.token(&agent, API, "read").await?;
    let t = body["access_token"].as_str().unwrap_or_default().to_owned();
    let (st, _) = s.admin(Method::PATCH, &format!("/v1/users/{owner}"), Some(json!({"status": "disabled"}))).await?;
    assert_eq!(st, 200);
    assert_eq!(s.introspect(&t).await?, json!({"active": false}));
    let updated = s.audit(&format!("type=user.updated&subject={owner}")).await?;
    assert_eq!((updated[0]["count"].as_u64(), updated[0]["reason"].as_str()), (Some(1), Some("status: disabled")));
    let (st, body) = s.token(&agent, API, "read").await?;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")));
    // Re-enabling restores the agent (its lifecycle is its own).
    let (st, _) = s.admin(Method::PATCH, &format!("/v1/users/{owner}"), Some(json!({"status": "active"}))).await?;
    assert_eq!(st, 200);
    let (st, _) = s.token(&agent, API, "read").await?;
    assert_eq!(st, 200);
    s.stop().await?;
    Ok(())
}
