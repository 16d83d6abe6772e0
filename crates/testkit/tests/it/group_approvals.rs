//! Group approvals over HTTP on SQLite (DESIGN §13, ADR 0025): concurrent
//! members make one decision, and bad annotations are refused at load. The
//! two-member grant and the `@window` permit are delegation scenarios
//! (`scenarios::reach`), run on SQLite and PostgreSQL.

use anyhow::{Context, Result};
use mandate_testkit::TestServer;
use mandate_testkit::scenarios::reach::member;
use mandate_testkit::scenarios::{CAL, World};
use reqwest::Method;
use serde_json::json;

/// The scenario policies, with write grants under `annotations`.
fn policies(annotations: &str) -> String {
    format!(
        r#"
permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
permit (principal is Agent, action in [Action::"list", Action::"get"], resource);
{annotations}
permit (principal is Agent, action == Action::"create", resource);
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_members_make_one_decision() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    w.s.put_policies(&policies(r#"@approval("group:finance")"#)).await?;
    let mut tokens = Vec::new();
    for i in 0..6 {
        tokens.push(member(&w, &format!("M{i}"), &["finance"]).await?.1);
    }
    let (st, asked) =
        w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "write"), ("resource", CAL)]).await?;
    assert_eq!(st, 200, "{asked}");
    let id = asked["auth_req_id"].as_str().context("auth_req_id")?.to_owned();
    let client = reqwest::Client::new();
    let mut calls = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let what = if i % 2 == 0 { "approve" } else { "deny" };
        let (c, url, t) = (client.clone(), format!("{}/v1/approvals/{id}/{what}", w.s.url), t.clone());
        calls.push(tokio::spawn(async move { c.post(url).bearer_auth(t).send().await.map(|r| r.status().as_u16()) }));
    }
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await??);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 409, 409, 409, 409, 409]);
    Ok(())
}

#[tokio::test]
async fn invalid_approval_annotations_are_refused_at_load() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    for bad in [
        r#"@approvals("2") @approval("user")"#,
        r#"@approval("group:finance") @approvals("9")"#,
        r#"@approval("team:finance")"#,
        r#"@window("18:00-09:00 Europe/Paris")"#,
        r#"@window("09:00-18:00 Nowhere/City")"#,
    ] {
        let (st, body) = w.s.admin(Method::PUT, "/v1/policies", Some(json!({"policies": policies(bad)}))).await?;
        assert_eq!(st, 400, "{bad}: {body}");
        assert!(body["detail"].as_str().is_some_and(|d| d.contains('@')), "{bad}: {body}");
    }
    Ok(())
}
