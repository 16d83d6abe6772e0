//! Approvals that reach people (issue 16 §4, ADR 0025 and 0026) on every
//! store: a grant two members of a group must approve, a permit closed
//! outside its `@window`, and CIBA ping and push through the outbox worker
//! to a receiver on loopback (the factories allow loopback callbacks).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reqwest::Method;
use serde_json::{Value, json};

use super::{CAL, World, created, text};

/// The group scenario's policies: write grants under `annotations`.
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
pub async fn member(w: &World, name: &str, groups: &[&str]) -> Result<(String, String)> {
    let email = format!("{}@example.com", name.to_lowercase());
    let u = created(&w.s, "/v1/users", json!({"name": name, "email": email, "groups": groups})).await?;
    let id = text(&u, "id")?;
    let t = created(&w.s, &format!("/v1/users/{id}/tokens"), json!({})).await?;
    Ok((id, text(&t, "token")?))
}

async fn decide(w: &World, token: &str, id: &str, what: &str) -> Result<(u16, Value)> {
    w.s.call(Method::POST, &format!("/v1/approvals/{id}/{what}"), Some(token), None).await
}

async fn pending(w: &World, token: &str) -> Result<Vec<Value>> {
    let (st, l) = w.s.call(Method::GET, "/v1/approvals?status=pending", Some(token), None).await?;
    ensure!(st == 200, "{l}");
    Ok(l["approvals"].as_array().cloned().unwrap_or_default())
}

/// `@approval("group:finance") @approvals("2")`: any two distinct members
/// decide; the admin, outsiders, the same member twice and a decision
/// after the one that completed it are refused.
pub async fn a_ciba_grant_needs_two_members_of_the_group(w: World) -> Result<()> {
    w.s.put_policies(&policies(r#"@approval("group:finance") @approvals("2")"#)).await?;
    let (_, carol) = member(&w, "Carol", &["finance"]).await?;
    let (dave_id, dave) = member(&w, "Dave", &["finance"]).await?;
    let (_, erin) = member(&w, "Erin", &["finance"]).await?;
    let (st, asked) =
        w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "write"), ("resource", CAL)]).await?;
    ensure!(st == 200, "{asked}");
    let id = text(&asked, "auth_req_id")?;
    // Every member sees it, with its count; Alice and Bob do not.
    for token in [&carol, &dave, &erin] {
        let list = pending(&w, token).await?;
        ensure!(list.len() == 1, "{list:?}");
        ensure!(list[0]["group"] == "finance" && list[0]["required"] == 2, "{}", list[0]);
        ensure!(list[0]["approved_by"] == json!([]), "{}", list[0]);
    }
    ensure!(pending(&w, &w.alice_token).await?.is_empty() && pending(&w, &w.bob_token).await?.is_empty());
    let (st, body) = decide(&w, &w.bob_token, &id, "approve").await?;
    ensure!(st == 403, "an outsider decided: {st} {body}");
    let (st, body) = w.s.admin(Method::POST, &format!("/v1/approvals/{id}/approve"), None).await?;
    ensure!(st == 403, "the admin decided for people: {st} {body}");
    let (st, body) = decide(&w, &carol, &id, "approve").await?;
    ensure!(st == 200 && body["status"] == "pending", "{st} {body}");
    ensure!(body["approved_by"].as_array().map(Vec::len) == Some(1), "{body}");
    let (st, body) = w.poll(&w.planner, &id).await?;
    ensure!(st == 400 && body["error"] == "authorization_pending", "{st} {body}");
    let (st, body) = decide(&w, &carol, &id, "approve").await?;
    ensure!(st == 409, "the same person counted twice: {st} {body}");
    let (st, body) = decide(&w, &dave, &id, "approve").await?;
    ensure!(st == 200 && body["status"] == "approved", "{st} {body}");
    ensure!(body["decided_by"] == dave_id.as_str(), "{body}");
    let (st, body) = decide(&w, &erin, &id, "deny").await?;
    ensure!(st == 409, "a decision after the one that completed it: {st} {body}");
    let (st, body) = w.poll(&w.planner, &id).await?;
    ensure!(st == 200 && body["access_token"].is_string(), "{st} {body}");
    Ok(())
}

/// The next Wednesday at 17:58 UTC after `now`.
fn next_wednesday_evening(now: time::OffsetDateTime) -> time::OffsetDateTime {
    let mut d = now.date().next_day().unwrap_or(now.date());
    while d.weekday() != time::Weekday::Wednesday {
        d = d.next_day().unwrap_or(d);
    }
    d.with_hms(17, 58, 0).map(|t| t.assume_utc()).unwrap_or(now)
}

/// `@window("Mon-Fri 09:00-18:00 UTC")` closes a permit after hours: at
/// check, at CIBA and at refresh.
pub async fn a_permit_applies_only_inside_its_window(w: World) -> Result<()> {
    w.s.clock.set(next_wednesday_evening(mandate_core::Clock::now(w.s.clock.as_ref())));
    w.s.put_policies(
        r#"
permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
@window("Mon-Fri 09:00-18:00 UTC")
permit (principal is Agent, action in [Action::"list", Action::"get"], resource);
"#,
    )
    .await?;
    let tokens = w.granted(&w.planner, "read").await?;
    let token = text(&tokens, "access_token")?;
    // As the admin: the calendar's checker token was issued before the
    // clock moved.
    let check = |id: &str| {
        let body = json!({"token": token, "action": "get", "resource": {"type": "event", "id": id}});
        let s = &w.s;
        async move { s.admin(Method::POST, "/v1/check", Some(body)).await.map(|(_, b)| b) }
    };
    let inside = check("e1").await?;
    ensure!(inside["decision"] == "allow", "{inside}");
    // 18:01 UTC: after hours, the token still unexpired.
    w.s.clock.advance(time::Duration::minutes(3));
    let outside = check("e2").await?;
    ensure!(outside["decision"] == "deny", "{outside}");
    ensure!(outside.to_string().contains("applies only Mon-Fri 09:00-18:00 UTC"), "{outside}");
    let (st, body) =
        w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "read"), ("resource", CAL)]).await?;
    ensure!(st == 400 && body["error"] == "access_denied", "{st} {body}");
    ensure!(body["error_description"].as_str().is_some_and(|d| d.contains("Mon-Fri 09:00-18:00 UTC")), "{body}");
    let refresh = text(&tokens, "refresh_token")?;
    let (st, body) = w.grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).await?;
    ensure!(st >= 400, "refresh outside the window: {st} {body}");
    Ok(())
}

/// One request a receiver got: its `Authorization` header and JSON body.
#[derive(Debug, Clone)]
struct Got {
    authorization: String,
    body: Value,
}

/// An HTTP receiver on loopback that records every POST and answers 204.
#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    url: String,
}

impl Receiver {
    async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://127.0.0.1:{}/cb", listener.local_addr()?.port());
        let r = Receiver { got: Arc::new(Mutex::new(Vec::new())), url };
        let got = r.got.clone();
        let app = axum::Router::new().route(
            "/cb",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let got = got.clone();
                async move {
                    let authorization =
                        headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if let Ok(mut g) = got.lock() {
                        g.push(Got { authorization, body });
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        tokio::spawn(axum::serve(listener, app).into_future());
        Ok(r)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Waits (a few seconds at most) until `n` requests have arrived.
    async fn wait_for(&self, n: usize) -> Result<Vec<Got>> {
        for _ in 0..100 {
            if self.got().len() >= n {
                return Ok(self.got());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("{} requests arrived, not {n}", self.got().len())
    }
}

/// The audit events `query` finds once there are `n` (a few seconds at
/// most: the worker records an outcome just after the receiver answered).
async fn audited(w: &World, query: &str, n: usize) -> Result<Vec<Value>> {
    for _ in 0..100 {
        let found = w.s.audit(query).await?;
        if found.len() >= n {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.s.audit(query).await
}

/// A CIBA request for `write` (which waits for Alice) with a notification
/// token, approved by Alice: its id.
async fn asked_and_decided(w: &World, token: &str, decision: &str) -> Result<String> {
    let (st, body) = w
        .ciba(
            &w.planner,
            &[
                ("login_hint", "alice@example.com"),
                ("scope", "write"),
                ("resource", CAL),
                ("client_notification_token", token),
            ],
        )
        .await?;
    ensure!(st == 200, "bc-authorize: {st} {body}");
    let id = text(&body, "auth_req_id")?;
    let (st, body) = decide(w, &w.alice_token, &id, decision).await?;
    ensure!(st == 200, "{decision}: {st} {body}");
    Ok(id)
}

/// CIBA ping then push (OpenID CIBA §10) through the outbox worker: the
/// agent is called back with its notification token, collects or is
/// pushed a token that verifies, and each delivery is audited.
pub async fn ciba_ping_and_push_reach_the_agent(w: World) -> Result<()> {
    let rx = Receiver::start().await?;
    let register = |mode: &str| {
        let body = json!({"backchannel_token_delivery_mode": mode, "backchannel_client_notification_endpoint": rx.url});
        let (s, path) = (&w.s, format!("/v1/agents/{}", w.planner.id));
        async move { s.admin(Method::PATCH, &path, Some(body)).await }
    };
    let (st, body) = register("ping").await?;
    ensure!(st == 200 && body["backchannel_token_delivery_mode"] == "ping", "{st} {body}");
    // A ping agent must send a notification token.
    let (st, body) =
        w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "write"), ("resource", CAL)]).await?;
    ensure!(st == 400 && body["error"] == "invalid_request", "{st} {body}");
    let id = asked_and_decided(&w, "ping-secret-1", "approve").await?;
    let got = rx.wait_for(1).await?;
    ensure!(got[0].authorization == "Bearer ping-secret-1", "{got:?}");
    ensure!(got[0].body == json!({"auth_req_id": id}), "{got:?}");
    w.s.clock.advance(time::Duration::seconds(6));
    let (st, tokens) = w.poll(&w.planner, &id).await?;
    ensure!(st == 200 && tokens["access_token"].is_string(), "{st} {tokens}");
    let sent = audited(&w, "type=delivery.sent", 1).await?;
    ensure!(sent.len() == 1 && sent[0]["reason"].as_str().is_some_and(|r| r.contains(&id)), "{sent:?}");
    ensure!(!serde_json::to_string(&sent)?.contains("ping-secret-1"), "the bearer token reached the trail");

    let (st, body) = register("push").await?;
    ensure!(st == 200 && body["backchannel_token_delivery_mode"] == "push", "{st} {body}");
    let id = asked_and_decided(&w, "push-secret-1", "approve").await?;
    let got = rx.wait_for(2).await?;
    ensure!(got[1].authorization == "Bearer push-secret-1", "{got:?}");
    let pushed = &got[1].body;
    ensure!(pushed["auth_req_id"] == id.as_str() && pushed["scope"] == "write", "{pushed}");
    let at = pushed["access_token"].as_str().context("access_token")?;
    let active = w.s.introspect(at).await?;
    ensure!(active["active"] == true && active["sub"] == w.alice.as_str(), "{active}");
    ensure!(active["client_id"] == w.planner.id.as_str() && active["aud"] == CAL, "{active}");
    // CIBA §11: a push client does not poll.
    let (st, p) = w.poll(&w.planner, &id).await?;
    ensure!(st == 400 && p["error"] == "unauthorized_client", "{st} {p}");
    // A denial is pushed as an error.
    let denied = asked_and_decided(&w, "push-secret-2", "deny").await?;
    let got = rx.wait_for(3).await?;
    ensure!(got[2].body["auth_req_id"] == denied.as_str() && got[2].body["error"] == "access_denied", "{got:?}");
    ensure!(got[2].body.get("access_token").is_none(), "{got:?}");
    let sent = audited(&w, "type=delivery.sent", 3).await?;
    ensure!(sent.len() == 3, "{sent:?}");
    ensure!(!serde_json::to_string(&w.s.audit("").await?)?.contains(at), "a pushed token reached the trail");
    Ok(())
}

/// Group action approvals at `/v1/check` (ADR 0025): a sensitive write that
/// two members of `finance` must approve, used once; an approval given
/// under a laxer policy (one approver) does not satisfy a stricter one (two).
pub async fn a_group_action_approval_at_check(w: World) -> Result<()> {
    let write = |annotations: &str| {
        format!(
            r#"
permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
permit (principal is Agent, action in [Action::"list", Action::"get", Action::"create"], resource is Api);
{annotations}
permit (principal is Agent, action == Action::"create", resource is Resource) when {{ resource.hasTag("sensitive") }};
permit (principal is Agent, action == Action::"create", resource is Resource) unless {{ resource.hasTag("sensitive") }};
"#
        )
    };
    w.s.put_policies(&write(r#"@approval("group:finance") @approvals("2")"#)).await?;
    let (_, carol) = member(&w, "Carol", &["finance"]).await?;
    let (_, dave) = member(&w, "Dave", &["finance"]).await?;
    let token = text(&w.granted(&w.planner, "read write").await?, "access_token")?;
    let sensitive = json!({"sensitive": "yes"});
    let d = w.check(&token, "create", "e2", sensitive.clone()).await?;
    ensure!(d["decision"] == "approval_required", "{d}");
    ensure!(d["reasons"].to_string().contains("policy asks 2 of group finance to approve"), "{d}");
    let id = text(&d, "approval_request")?;
    let list = pending(&w, &carol).await?;
    ensure!(list.len() == 1 && list[0]["id"] == id.as_str() && list[0]["required"] == 2, "{list:?}");
    ensure!(pending(&w, &w.alice_token).await?.is_empty(), "Alice is not in finance");
    let (st, body) = decide(&w, &carol, &id, "approve").await?;
    ensure!(st == 200 && body["status"] == "pending", "{st} {body}");
    // One of two: still waiting, the same request.
    let d = w.check(&token, "create", "e2", sensitive.clone()).await?;
    ensure!(d["decision"] == "approval_required" && d["approval_request"] == id.as_str(), "{d}");
    let (st, body) = decide(&w, &dave, &id, "approve").await?;
    ensure!(st == 200 && body["status"] == "approved", "{st} {body}");
    let d = w.check(&token, "create", "e2", sensitive.clone()).await?;
    ensure!(d["decision"] == "allow" && d["reasons"].to_string().contains(&id), "{d}");
    let d = w.check(&token, "create", "e2", sensitive.clone()).await?;
    ensure!(d["decision"] == "approval_required" && d["approval_request"] != id.as_str(), "used once: {d}");

    // One approver is enough under this policy; Carol approves e3 …
    w.s.put_policies(&write(r#"@approval("group:finance")"#)).await?;
    let d = w.check(&token, "create", "e3", sensitive.clone()).await?;
    let lax = text(&d, "approval_request")?;
    let (st, body) = decide(&w, &carol, &lax, "approve").await?;
    ensure!(st == 200 && body["status"] == "approved", "{st} {body}");
    // … but the policy now asks for two: her approval does not count.
    w.s.put_policies(&write(r#"@approval("group:finance") @approvals("2")"#)).await?;
    let d = w.check(&token, "create", "e3", sensitive).await?;
    ensure!(d["decision"] == "approval_required" && d["approval_request"] != lax.as_str(), "{d}");
    Ok(())
}

/// An action approval under a `@window` permit is usable only inside the
/// window: approved after hours, the check it was asked for is denied.
pub async fn an_action_approval_is_usable_only_inside_its_window(w: World) -> Result<()> {
    w.s.clock.set(next_wednesday_evening(mandate_core::Clock::now(w.s.clock.as_ref())));
    w.s.put_policies(
        r#"
permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
permit (principal is Agent, action in [Action::"list", Action::"get", Action::"create"], resource is Api);
@approval("user") @window("Mon-Fri 09:00-18:00 UTC")
permit (principal is Agent, action == Action::"create", resource is Resource);
"#,
    )
    .await?;
    let token = text(&w.granted(&w.planner, "write").await?, "access_token")?;
    // As the admin: the calendar's checker token was issued before the
    // clock moved.
    let check = || {
        let body = json!({"token": token, "action": "create", "resource": {"type": "event", "id": "e1"}});
        let s = &w.s;
        async move { s.admin(Method::POST, "/v1/check", Some(body)).await.map(|(_, b)| b) }
    };
    let d = check().await?;
    ensure!(d["decision"] == "approval_required", "inside the window: {d}");
    let id = text(&d, "approval_request")?;
    // 18:01 UTC: Alice approves after hours; the approval is in force but
    // the permit that asked for it no longer applies.
    w.s.clock.advance(time::Duration::minutes(3));
    let (st, body) = decide(&w, &w.alice_token, &id, "approve").await?;
    ensure!(st == 200 && body["status"] == "approved", "{st} {body}");
    let d = check().await?;
    ensure!(d["decision"] == "deny", "outside the window: {d}");
    ensure!(d.to_string().contains("applies only Mon-Fri 09:00-18:00 UTC"), "{d}");
    Ok(())
}
