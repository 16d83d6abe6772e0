//! Group approvals, four eyes and time windows over HTTP (DESIGN §13,
//! ADR 0025): a CIBA grant that two members of a group must approve, the
//! 409s around it, policies refused at load, and a permit closed outside
//! its `@window`.

use anyhow::{Context, Result};
use mandate_testkit::TestServer;
use mandate_testkit::scenarios::{CAL, World};
use reqwest::Method;
use serde_json::{Value, json};

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

/// A person in `groups`, and a personal token of theirs.
async fn member(w: &World, name: &str, groups: &[&str]) -> Result<(String, String)> {
    let (st, u) =
        w.s.admin(
            Method::POST,
            "/v1/users",
            Some(json!({"name": name, "email": format!("{}@example.com", name.to_lowercase()), "groups": groups})),
        )
        .await?;
    anyhow::ensure!(st == 201, "{u}");
    let id = u["id"].as_str().context("id")?.to_owned();
    let (st, t) = w.s.admin(Method::POST, &format!("/v1/users/{id}/tokens"), Some(json!({}))).await?;
    anyhow::ensure!(st == 201, "{t}");
    Ok((id, t["token"].as_str().context("token")?.to_owned()))
}

async fn decide(w: &World, token: &str, id: &str, what: &str) -> Result<(u16, Value)> {
    w.s.call(Method::POST, &format!("/v1/approvals/{id}/{what}"), Some(token), None).await
}

async fn pending(w: &World, token: &str) -> Result<Vec<Value>> {
    let (st, l) = w.s.call(Method::GET, "/v1/approvals?status=pending", Some(token), None).await?;
    anyhow::ensure!(st == 200, "{l}");
    Ok(l["approvals"].as_array().cloned().unwrap_or_default())
}

#[tokio::test]
async fn a_ciba_grant_needs_two_members_of_the_group() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    w.s.put_policies(&policies(r#"@approval("group:finance") @approvals("2")"#)).await?;
    let (_, carol) = member(&w, "Carol", &["finance"]).await?;
    let (dave_id, dave) = member(&w, "Dave", &["finance"]).await?;
    let (_, erin) = member(&w, "Erin", &["finance"]).await?;
    let (st, asked) =
        w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "write"), ("resource", CAL)]).await?;
    assert_eq!(st, 200, "{asked}");
    let id = asked["auth_req_id"].as_str().context("auth_req_id")?.to_owned();
    // Every member sees it, with its count; Alice and Bob do not.
    for token in [&carol, &dave, &erin] {
        let list = pending(&w, token).await?;
        assert_eq!(list.len(), 1);
        assert_eq!((list[0]["group"].as_str(), list[0]["required"].as_u64()), (Some("finance"), Some(2)));
        assert_eq!(list[0]["approved_by"], json!([]));
    }
    assert!(pending(&w, &w.alice_token).await?.is_empty() && pending(&w, &w.bob_token).await?.is_empty());
    let (st, body) = decide(&w, &w.bob_token, &id, "approve").await?;
    assert_eq!(st, 403, "{body}");
    let (st, body) = w.s.admin(Method::POST, &format!("/v1/approvals/{id}/approve"), None).await?;
    assert_eq!(st, 403, "the admin decided for people: {body}");
    let (st, body) = decide(&w, &carol, &id, "approve").await?;
    assert_eq!((st, body["status"].as_str()), (200, Some("pending")), "{body}");
    assert_eq!(body["approved_by"].as_array().map(Vec::len), Some(1));
    let (st, body) = w.poll(&w.planner, &id).await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("authorization_pending")), "{body}");
    let (st, body) = decide(&w, &carol, &id, "approve").await?;
    assert_eq!(st, 409, "the same person counted twice: {body}");
    let (st, body) = decide(&w, &dave, &id, "approve").await?;
    assert_eq!((st, body["status"].as_str()), (200, Some("approved")), "{body}");
    assert_eq!(body["decided_by"].as_str(), Some(dave_id.as_str()));
    let (st, body) = decide(&w, &erin, &id, "deny").await?;
    assert_eq!(st, 409, "a decision after the one that completed it: {body}");
    let (st, body) = w.poll(&w.planner, &id).await?;
    assert_eq!(st, 200, "{body}");
    assert!(body["access_token"].is_string());
    Ok(())
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

/// The next Wednesday at 17:58 UTC after `now`.
fn next_wednesday_morning(now: time::OffsetDateTime) -> time::OffsetDateTime {
    let mut d = now.date().next_day().unwrap_or(now.date());
    while d.weekday() != time::Weekday::Wednesday {
        d = d.next_day().unwrap_or(d);
    }
    d.with_hms(17, 58, 0).map(|t| t.assume_utc()).unwrap_or(now)
}

#[tokio::test]
async fn a_permit_applies_only_inside_its_window() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    w.s.clock.set(next_wednesday_morning(mandate_core::Clock::now(w.s.clock.as_ref())));
    w.s.put_policies(
        r#"
permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
@window("Mon-Fri 09:00-18:00 UTC")
permit (principal is Agent, action in [Action::"list", Action::"get"], resource);
"#,
    )
    .await?;
    let tokens = w.granted(&w.planner, "read").await?;
    let token = tokens["access_token"].as_str().context("access_token")?;
    // As the admin: the calendar's checker token was issued before the clock moved.
    let server = &w.s;
    let check = |id: &'static str| {
        let body = json!({"token": token, "action": "get", "resource": {"type": "event", "id": id}});
        async move { server.admin(Method::POST, "/v1/check", Some(body)).await.map(|(_, b)| b) }
    };
    let inside = check("e1").await?;
    assert_eq!(inside["decision"], "allow", "{inside}");
    // 18:01 UTC: after hours, the token still unexpired.
    w.s.clock.advance(time::Duration::minutes(3));
    let outside = check("e2").await?;
    assert_eq!(outside["decision"], "deny", "{outside}");
    assert!(outside.to_string().contains("applies only Mon-Fri 09:00-18:00 UTC"), "{outside}");
    let (st, body) =
        w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "read"), ("resource", CAL)]).await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("access_denied")), "{body}");
    assert!(body["error_description"].as_str().is_some_and(|d| d.contains("Mon-Fri 09:00-18:00 UTC")), "{body}");
    let refresh = tokens["refresh_token"].as_str().context("refresh_token")?;
    let (st, body) = w.grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", refresh)]).await?;
    assert!(st >= 400, "refresh outside the window: {st} {body}");
    Ok(())
}
