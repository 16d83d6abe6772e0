//! Access review campaigns (DESIGN §12, ADR 0033) over HTTP: a campaign
//! freezes the findings of its scope into items assigned to their owners;
//! each decision is applied at once with its cascade and audited; the
//! deadline applies the default once; bad input and strangers change
//! nothing.

use anyhow::{Context, Result, ensure};
use mandate_jose::KeyAlg;
use mandate_testkit::TestServer;
use mandate_testkit::scenarios::{CAL, World};
use reqwest::Method;
use serde_json::{Value, json};
use time::Duration;

/// Agents may do anything on the calendar.
const OPEN: &str = r#"
permit (principal is Agent, action, resource);
permit (principal in Group::"staff", action, resource);
"#;

fn text(v: &Value, key: &str) -> Result<String> {
    v[key].as_str().map(str::to_owned).with_context(|| format!("{key} missing in {v}"))
}

/// A server whose review calls everything unused since "now" stale.
async fn world() -> Result<World> {
    let s = TestServer::start_with(|c| {
        c.review.stale_days = 0;
        // A day-long grant is `expiring` only in a window no longer than
        // its lifetime (ADR 0036).
        c.review.expiring_days = 1;
    })
    .await?;
    let w = World::new(s).await?;
    w.s.put_policies(OPEN).await?;
    Ok(w)
}

async fn grant_of(w: &World, agent: &str) -> Result<Value> {
    let (st, list) = w.s.admin(Method::GET, &format!("/v1/grants?agent={agent}"), None).await?;
    ensure!(st == 200, "{st} {list}");
    Ok(list["items"][0].clone())
}

fn deadline(w: &World, d: Duration) -> Result<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(w.s.now())? + d;
    Ok(t.format(&time::format_description::well_known::Rfc3339)?)
}

/// The item of `campaign` about `subject` of `kind`.
fn item<'a>(campaign: &'a Value, kind: &str, subject: &str) -> Result<&'a Value> {
    campaign["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["finding"]["kind"] == kind && i["finding"]["subject"] == subject))
        .with_context(|| format!("no {kind} item about {subject} in {campaign}"))
}

async fn decide(w: &World, token: &str, item: &Value, body: Value) -> Result<(u16, Value)> {
    let path = format!("/v1/review/items/{}/decide", text(item, "id")?);
    w.s.call(Method::POST, &path, Some(token), Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_decide_their_items_and_each_decision_is_applied_at_once() -> Result<()> {
    let w = world().await?;
    let revoked = w.granted(&w.planner, "read write").await?;
    let narrowed_agent = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    let narrowed = w.granted(&narrowed_agent, "read write").await?;
    let kept_agent = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    let kept = w.granted(&kept_agent, "read").await?;
    let idle = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    let bobs = w.s.create_agent(&w.bob, KeyAlg::EdDSA).await?;
    let (g1, g2, g3) = (
        text(&grant_of(&w, &w.planner.id).await?, "id")?,
        text(&grant_of(&w, &narrowed_agent.id).await?, "id")?,
        text(&grant_of(&w, &kept_agent.id).await?, "id")?,
    );
    w.s.clock.advance(Duration::seconds(1));

    // Bad input is refused and changes nothing.
    let trail = w.s.audit("").await?.len();
    let soon = deadline(&w, Duration::days(7))?;
    for bad in [
        json!({"scope": {}, "deadline": deadline(&w, -Duration::days(1))?, "default": "revoke"}),
        json!({"scope": {}, "deadline": "next tuesday", "default": "revoke"}),
        json!({"scope": {}, "deadline": soon, "default": "narrow"}),
        json!({"scope": {"agent": idle.id}, "deadline": soon, "default": "keep"}),
        json!({"scope": {"owner": "usr_01ARZ3NDEKTSV4RRFFQ69G5FAV"}, "deadline": soon, "default": "keep"}),
        json!({"scope": {"resource": "https://nowhere.example"}, "deadline": soon, "default": "keep"}),
        json!({"scope": {}, "deadline": soon}),
    ] {
        let (st, body) = w.s.admin(Method::POST, "/v1/review/campaigns", Some(bad.clone())).await?;
        ensure!(st == 400 && body["type"].as_str().is_some_and(|t| t.contains("invalid")), "{bad}: {st} {body}");
    }
    let (st, list) = w.s.admin(Method::GET, "/v1/review/campaigns", None).await?;
    ensure!(st == 200 && list["items"] == json!([]) && list["next_cursor"].is_null(), "{st} {list}");
    ensure!(w.s.audit("").await?.len() == trail, "bad input changed the trail");
    // A person who is no auditor may not start one.
    let body = json!({"scope": {"owner": w.alice}, "deadline": soon, "default": "revoke"});
    let (st, _) = w.s.call(Method::POST, "/v1/review/campaigns", Some(&w.bob_token), Some(body.clone())).await?;
    ensure!(st == 403, "{st}");

    // The admin starts one over Alice's records.
    let (st, created) = w.s.admin(Method::POST, "/v1/review/campaigns", Some(body)).await?;
    ensure!(st == 201, "{st} {created}");
    let id = text(&created, "id")?;
    ensure!(id.starts_with("rvc_") && created["status"] == "open" && created["default"] == "revoke", "{created}");
    let (st, campaign) = w.s.admin(Method::GET, &format!("/v1/review/campaigns/{id}"), None).await?;
    ensure!(st == 200, "{st} {campaign}");
    let items = campaign["items"].as_array().context("items")?;
    ensure!(!items.is_empty() && created["items_total"] == items.len(), "{created} {campaign}");
    ensure!(items.iter().all(|i| i["assignee"] == w.alice.as_str() && i["decision"].is_null()), "{campaign}");
    ensure!(!items.iter().any(|i| i["finding"]["subject"] == bobs.id.as_str()), "Bob's agent is out of scope");
    let (i1, i2, i3, i4) = (
        item(&campaign, "stale", &g1)?,
        item(&campaign, "stale", &g2)?,
        item(&campaign, "stale", &g3)?,
        item(&campaign, "stale", &idle.id)?,
    );

    // Alice lists her items with her own token; Bob has none, and may not
    // list hers.
    let (st, mine) = w.s.call(Method::GET, "/v1/review/items?assignee=me", Some(&w.alice_token), None).await?;
    ensure!(st == 200 && mine["items"].as_array().map(Vec::len) == Some(items.len()), "{st} {mine}");
    let (st, his) = w.s.call(Method::GET, "/v1/review/items?assignee=me", Some(&w.bob_token), None).await?;
    ensure!(st == 200 && his["items"] == json!([]), "{st} {his}");
    let hers = format!("/v1/review/items?assignee={}", w.alice);
    let (st, _) = w.s.call(Method::GET, &hers, Some(&w.bob_token), None).await?;
    ensure!(st == 403, "{st}");

    // A stranger may not decide; the refusal is recorded.
    let (st, _) = decide(&w, &w.bob_token, i1, json!({"decision": "revoke"})).await?;
    ensure!(st == 403, "{st}");
    let denied = w.s.audit("type=admin.denied").await?;
    ensure!(denied.last().is_some_and(|e| e["actor"] == w.bob.as_str()), "{denied:?}");
    let access = text(&revoked, "access_token")?;
    ensure!(w.s.introspect(&access).await?["active"] == true, "the stranger's decision changed something");

    // Revoke: the grant and every token beneath it, at once.
    let (st, done) = decide(&w, &w.alice_token, i1, json!({"decision": "revoke"})).await?;
    ensure!(st == 200 && done["decision"] == "revoke" && done["decided_by"] == w.alice.as_str(), "{st} {done}");
    ensure!(done["revoked_tokens"].as_u64().is_some_and(|n| n >= 1), "{done}");
    ensure!(w.s.introspect(&access).await?["active"] == false, "the grant's token still works");
    ensure!(grant_of(&w, &w.planner.id).await?["status"] == "revoked");
    let (st, again) = decide(&w, &w.alice_token, i1, json!({"decision": "keep"})).await?;
    ensure!(st == 409, "decided twice: {st} {again}");

    // Narrow: only to a subset of what the grant holds; this finding
    // suggests no narrower set, so the scopes are named.
    for bad in [
        json!({"decision": "narrow", "scopes": ["read", "admin"]}),
        json!({"decision": "narrow"}),
        json!({"decision": "narrow", "scopes": []}),
        json!({"decision": "keep", "scopes": ["read"]}),
        json!({"decision": "maybe"}),
    ] {
        let (st, body) = decide(&w, &w.alice_token, i2, bad.clone()).await?;
        ensure!(st == 400, "{bad}: {st} {body}");
    }
    let g2_token = text(&narrowed, "access_token")?;
    ensure!(w.s.introspect(&g2_token).await?["active"] == true, "bad input changed the grant");
    let (st, done) = decide(&w, &w.alice_token, i2, json!({"decision": "narrow", "scopes": ["read"]})).await?;
    ensure!(st == 200 && done["outcome"]["scopes"] == json!(["read"]), "{st} {done}");
    let g2_now = grant_of(&w, &narrowed_agent.id).await?;
    ensure!(g2_now["status"] == "active" && !g2_now["scopes"].to_string().contains("write"), "{g2_now}");
    ensure!(w.s.introspect(&g2_token).await?["active"] == false, "a token of the wider set still works");
    // The refresh token now brings only what the grant holds.
    let rt = text(&narrowed, "refresh_token")?;
    let (st, fresh) = w.grant(&narrowed_agent, &[("grant_type", "refresh_token"), ("refresh_token", &rt)]).await?;
    ensure!(st == 200 && fresh["scope"] == "read", "refresh after narrowing: {st} {fresh}");

    // Keep: nothing changes, and it is recorded.
    let (st, done) = decide(&w, &w.alice_token, i3, json!({"decision": "keep"})).await?;
    ensure!(st == 200 && done["decision"] == "keep" && done["revoked_tokens"] == 0, "{st} {done}");
    ensure!(w.s.introspect(&text(&kept, "access_token")?).await?["active"] == true, "keep changed something");

    // Revoking an agent's item retires it, as the lifecycle call does.
    let (st, done) = decide(&w, &w.alice_token, i4, json!({"decision": "revoke"})).await?;
    ensure!(st == 200, "{st} {done}");
    let (_, agent) = w.s.admin(Method::GET, &format!("/v1/agents/{}", idle.id), None).await?;
    ensure!(agent["status"] == "retired", "{agent}");

    // Progress, and the trail.
    let (_, campaign) = w.s.admin(Method::GET, &format!("/v1/review/campaigns/{id}"), None).await?;
    ensure!(campaign["items_decided"] == 4, "{campaign}");
    ensure!(item(&campaign, "stale", &g3)?["decision"] == "keep", "{campaign}");
    ensure!(w.s.audit("type=review.campaign_created").await?.len() == 1);
    let decided = w.s.audit("type=review.item_decided").await?;
    ensure!(decided.len() == 4 && decided.iter().all(|e| e["actor"] == w.alice.as_str()), "{decided:?}");
    ensure!(w.s.audit("type=grant.narrowed").await?.len() == 1);
    ensure!(w.s.audit(&format!("type=grant.revoked&grant={g1}")).await?.len() == 1);
    ensure!(w.s.verify_audit().await?["valid"] == true, "the trail does not verify");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_applies_the_default_once_and_closes_the_campaign() -> Result<()> {
    let w = world().await?;
    let tokens = w.granted(&w.planner, "read").await?;
    let g = text(&grant_of(&w, &w.planner.id).await?, "id")?;
    w.s.clock.advance(Duration::seconds(1));
    // An auditor starts a campaign over the calendar's grants.
    let (st, body) =
        w.s.admin(Method::PATCH, &format!("/v1/users/{}", w.bob), Some(json!({"groups": ["mandate-auditors"]})))
            .await?;
    ensure!(st == 200, "{st} {body}");
    let body = json!({"scope": {"resource": CAL}, "deadline": deadline(&w, Duration::days(1))?, "default": "revoke"});
    let (st, created) = w.s.call(Method::POST, "/v1/review/campaigns", Some(&w.bob_token), Some(body)).await?;
    ensure!(st == 201 && created["created_by"] == w.bob.as_str(), "{st} {created}");
    let id = text(&created, "id")?;
    let path = format!("/v1/review/campaigns/{id}");
    let (_, campaign) = w.s.call(Method::GET, &path, Some(&w.bob_token), None).await?;
    let items = campaign["items"].as_array().context("items")?;
    ensure!(items.iter().all(|i| i["finding"]["subject"] == g.as_str()), "only the calendar's grants: {campaign}");
    // Alice keeps the expiring one; the stale one she leaves.
    let (st, done) = decide(&w, &w.alice_token, item(&campaign, "expiring", &g)?, json!({"decision": "keep"})).await?;
    ensure!(st == 200, "{st} {done}");

    // Before the deadline, housekeeping leaves it alone.
    w.s.mandate.housekeeping().await?;
    let (_, still) = w.s.admin(Method::GET, &path, None).await?;
    ensure!(still["status"] == "open" && still["items_decided"] == 1, "{still}");

    // Past it, the default is applied to what is undecided, once, even
    // when housekeeping runs twice.
    w.s.clock.advance(Duration::hours(25));
    w.s.mandate.housekeeping().await?;
    w.s.mandate.housekeeping().await?;
    let (_, closed) = w.s.admin(Method::GET, &path, None).await?;
    ensure!(closed["status"] == "closed" && closed["closed_at"].is_string(), "{closed}");
    let stale = item(&closed, "stale", &g)?;
    ensure!(stale["decision"] == "revoke" && stale["decided_by"] == "deadline", "{stale}");
    ensure!(item(&closed, "expiring", &g)?["decided_by"] == w.alice.as_str(), "{closed}");
    ensure!(grant_of(&w, &w.planner.id).await?["status"] == "revoked");
    let rt = text(&tokens, "refresh_token")?;
    let (st, _) = w.grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &rt)]).await?;
    ensure!(st == 400, "the revoked grant still refreshes: {st}");
    ensure!(w.s.audit("type=review.campaign_closed").await?.len() == 1);
    let decided = w.s.audit("type=review.item_decided").await?;
    ensure!(decided.len() == 2 && decided.last().is_some_and(|e| e["actor"] == "mandate"), "{decided:?}");
    // Nothing is decided after the close.
    let (st, _) = decide(&w, &w.alice_token, stale, json!({"decision": "keep"})).await?;
    ensure!(st == 409, "{st}");
    // The list shows it closed, and pages.
    let (_, list) = w.s.admin(Method::GET, "/v1/review/campaigns?status=closed&limit=1", None).await?;
    ensure!(list["items"][0]["id"] == id.as_str() && list["next_cursor"].is_null(), "{list}");
    let (st, _) = w.s.admin(Method::GET, "/v1/review/campaigns?cursor=bogus", None).await?;
    ensure!(st == 400, "{st}");
    Ok(())
}
