//! Reapproval and lapses (DESIGN §12, ADR 0036) over HTTP: a grant ending
//! within the review window is renewed in place when policy allows, waits
//! for the person policy names when it asks, and is left to lapse when it
//! denies; nothing else, refresh included, moves a grant's expiry; and
//! housekeeping reports each lapse once.

use anyhow::{Context, Result, ensure};
use mandate_testkit::TestServer;
use mandate_testkit::scenarios::{CAL, World};
use reqwest::Method;
use serde_json::{Value, json};
use time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn text(v: &Value, key: &str) -> Result<String> {
    v[key].as_str().map(str::to_owned).with_context(|| format!("{key} missing in {v}"))
}

fn time_of(v: &Value, key: &str) -> Result<OffsetDateTime> {
    Ok(OffsetDateTime::parse(&text(v, key)?, &Rfc3339)?)
}

/// The server's clock, as a time (to the second).
fn now(s: &TestServer) -> Result<OffsetDateTime> {
    Ok(OffsetDateTime::from_unix_timestamp(s.now())?)
}

/// One grant lifetime (a day) from the server's now, to the second.
fn a_day_on(s: &TestServer, t: OffsetDateTime) -> Result<bool> {
    let expected = now(s)? + Duration::hours(24);
    Ok(t >= expected && t < expected + Duration::seconds(1))
}

/// The planner's only grant, as the admin lists it.
async fn the_grant(w: &World) -> Result<Value> {
    let (st, list) = w.s.admin(Method::GET, &format!("/v1/grants?agent={}", w.planner.id), None).await?;
    ensure!(st == 200, "grants: {st} {list}");
    let items = list["items"].as_array().context("items")?;
    ensure!(items.len() == 1, "one grant: {list}");
    Ok(items[0].clone())
}

async fn reapprove(w: &World, token: Option<&str>, id: &str, body: Option<Value>) -> Result<(u16, Value)> {
    let path = format!("/v1/grants/{id}/reapprove");
    match token {
        None => w.s.admin(Method::POST, &path, body).await,
        Some(t) => w.s.call(Method::POST, &path, Some(t), body).await,
    }
}

/// A grant of write, which policy lets only Alice approve: asked by CIBA,
/// approved by her, and its first tokens.
async fn write_grant(w: &World) -> Result<Value> {
    let (st, asked) =
        w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "write"), ("resource", CAL)]).await?;
    ensure!(st == 200, "bc-authorize: {st} {asked}");
    let id = text(&asked, "auth_req_id")?;
    let (st, body) = w.s.call(Method::POST, &format!("/v1/approvals/{id}/approve"), Some(&w.alice_token), None).await?;
    ensure!(st == 200, "approve: {st} {body}");
    let (st, tokens) = w.poll(&w.planner, &id).await?;
    ensure!(st == 200, "poll: {st} {tokens}");
    Ok(tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_renews_a_grant_in_place() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let tokens = w.granted(&w.planner, "read").await?;
    let g = the_grant(&w).await?;
    let id = text(&g, "id")?;
    let was = time_of(&g, "expires_at")?;
    w.s.clock.advance(Duration::hours(20));
    // Alice gave it; policy asks nobody for read: renewed at once.
    let (st, renewed) = reapprove(&w, Some(&w.alice_token), &id, Some(json!({"purpose": "keep planning"}))).await?;
    ensure!(st == 200, "reapprove: {st} {renewed}");
    ensure!(renewed["reapproval"] == "renewed" && renewed["id"] == id.as_str(), "{renewed}");
    let until = time_of(&renewed, "expires_at")?;
    ensure!(a_day_on(&w.s, until)? && until > was, "{renewed}");
    ensure!(renewed["reapprovals"] == 1 && renewed["purpose"] == "keep planning", "{renewed}");
    ensure!(renewed["scopes"] == json!(["read"]) && renewed["resource"] == CAL, "scopes unchanged: {renewed}");
    let stored = the_grant(&w).await?;
    ensure!(time_of(&stored, "expires_at")? == until && stored["reapprovals"] == 1, "{stored}");
    // The same grant: a refresh token rotated after the renewal ends with
    // the renewed grant, and goes on past the old end.
    w.s.clock.advance(Duration::hours(1));
    let rt = text(&tokens, "refresh_token")?;
    let (st, body) = w.grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &rt)]).await?;
    ensure!(st == 200, "refresh after renewal: {st} {body}");
    w.s.clock.advance(Duration::hours(4));
    let rt = text(&body, "refresh_token")?;
    let (st, body) = w.grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &rt)]).await?;
    ensure!(st == 200, "refresh past the old end: {st} {body}");
    let exp = mandate_testkit::scenarios::claims(&text(&body, "access_token")?)["exp"].as_i64().context("exp")?;
    ensure!(exp > was.unix_timestamp() && exp <= until.unix_timestamp(), "{exp}");
    let events = w.s.audit(&format!("type=grant.reapproved&grant={id}")).await?;
    ensure!(
        events.len() == 1 && events[0]["actor"] == w.alice.as_str() && events[0]["decision"] == "allow",
        "{events:?}"
    );
    // The admin may renew it too; the agent's owner is Alice as well.
    let (st, again) = reapprove(&w, None, &id, None).await?;
    ensure!(st == 200 && again["reapprovals"] == 2 && again["purpose"] == "keep planning", "{st} {again}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_named_by_policy_approves_the_renewal() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    write_grant(&w).await?;
    let g = the_grant(&w).await?;
    let id = text(&g, "id")?;
    let was = time_of(&g, "expires_at")?;
    w.s.clock.advance(Duration::hours(12));
    // The admin asks; policy names Alice: 202, nothing changed yet.
    let (st, waiting) = reapprove(&w, None, &id, None).await?;
    ensure!(st == 202 && waiting["reapproval"] == "pending", "{st} {waiting}");
    let approval = text(&waiting, "approval")?;
    ensure!(time_of(&the_grant(&w).await?, "expires_at")? == was, "unchanged until approved");
    let (st, inbox) = w.s.call(Method::GET, "/v1/approvals?status=pending", Some(&w.alice_token), None).await?;
    ensure!(st == 200, "{st} {inbox}");
    let mine = inbox["approvals"].as_array().context("approvals")?;
    ensure!(mine.len() == 1 && mine[0]["id"] == approval.as_str(), "{inbox}");
    ensure!(mine[0]["subject"]["kind"] == "reapproval" && mine[0]["grant"] == id.as_str(), "{inbox}");
    // Bob may not decide it.
    let path = |d: &str| format!("/v1/approvals/{approval}/{d}");
    let (st, _) = w.s.call(Method::POST, &path("approve"), Some(&w.bob_token), None).await?;
    ensure!(st == 403, "Bob decided: {st}");
    let (st, body) = w.s.call(Method::POST, &path("approve"), Some(&w.alice_token), None).await?;
    ensure!(st == 200 && body["status"] == "approved", "{st} {body}");
    let renewed = the_grant(&w).await?;
    let until = time_of(&renewed, "expires_at")?;
    ensure!(a_day_on(&w.s, until)? && renewed["reapprovals"] == 1, "{renewed}");
    ensure!(renewed["id"] == id.as_str(), "the same grant");
    let asked = w.s.audit(&format!("type=grant.reapproval_requested&grant={id}")).await?;
    let done = w.s.audit(&format!("type=grant.reapproved&grant={id}")).await?;
    ensure!(asked.len() == 1 && done.len() == 1 && done[0]["actor"] == w.alice.as_str(), "{asked:?} {done:?}");

    // A second request, denied by Alice: nothing changes, and it is recorded.
    w.s.clock.advance(Duration::hours(1));
    let (st, waiting) = reapprove(&w, None, &id, None).await?;
    ensure!(st == 202, "{st} {waiting}");
    let approval = text(&waiting, "approval")?;
    let (st, body) =
        w.s.call(Method::POST, &format!("/v1/approvals/{approval}/deny"), Some(&w.alice_token), None).await?;
    ensure!(st == 200 && body["status"] == "denied", "{st} {body}");
    let after = the_grant(&w).await?;
    ensure!(time_of(&after, "expires_at")? == until && after["reapprovals"] == 1, "{after}");
    let denied = w.s.audit(&format!("type=grant.reapproval_denied&grant={id}")).await?;
    ensure!(denied.len() == 1 && denied[0]["decision"] == "deny", "{denied:?}");

    // Alice herself asking is her approval: renewed at once.
    let (st, own) = reapprove(&w, Some(&w.alice_token), &id, None).await?;
    ensure!(st == 200 && own["reapproval"] == "renewed" && own["reapprovals"] == 2, "{st} {own}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_policy_denies_is_403_and_changes_nothing() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    w.granted(&w.planner, "read").await?;
    let g = the_grant(&w).await?;
    let id = text(&g, "id")?;
    w.s.clock.advance(Duration::hours(6));
    // Alice leaves staff: she no longer holds read herself.
    let (st, body) = w.s.admin(Method::PATCH, &format!("/v1/users/{}", w.alice), Some(json!({"groups": []}))).await?;
    ensure!(st == 200, "{st} {body}");
    let (st, refused) = reapprove(&w, Some(&w.alice_token), &id, None).await?;
    ensure!(st == 403, "{st} {refused}");
    ensure!(refused["detail"].as_str().is_some_and(|d| d.contains("lapse")), "{refused}");
    let after = the_grant(&w).await?;
    ensure!(after["expires_at"] == g["expires_at"] && after.get("reapprovals").is_none(), "{after}");
    let denied = w.s.audit(&format!("type=grant.reapproval_denied&grant={id}")).await?;
    ensure!(denied.len() == 1 && denied[0]["decision"] == "deny", "{denied:?}");
    ensure!(w.s.audit("type=grant.reapproved").await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_live_grant_inside_the_window_is_renewed_and_only_by_its_people() -> Result<()> {
    // Grants of 30 days under the default 7-day window.
    let w = World::new(TestServer::start_with(|c| c.grant_ttl = 30 * 86_400).await?).await?;
    w.granted(&w.planner, "read").await?;
    let g = the_grant(&w).await?;
    let id = text(&g, "id")?;
    let trail = w.s.audit("").await?.len();
    let (st, early) = reapprove(&w, Some(&w.alice_token), &id, None).await?;
    ensure!(st == 409 && early["detail"].as_str().is_some_and(|d| d.contains("not due")), "{st} {early}");
    // Bob neither gave it nor owns the agent.
    w.s.clock.advance(Duration::days(24));
    let (st, body) = reapprove(&w, Some(&w.bob_token), &id, None).await?;
    ensure!(st == 403, "a stranger: {st} {body}");
    ensure!(w.s.audit("type=admin.denied").await?.len() == 1, "the refusal is recorded");
    let (st, body) = reapprove(&w, Some(&w.alice_token), &id, Some(json!({"scopes": ["write"]}))).await?;
    ensure!(st == 400, "no widening field is accepted: {st} {body}");
    ensure!(the_grant(&w).await?["expires_at"] == g["expires_at"], "nothing changed");
    ensure!(w.s.audit("").await?.len() == trail + 1, "only the stranger's refusal was recorded");
    // Inside the window now.
    let (st, body) = reapprove(&w, Some(&w.alice_token), &id, None).await?;
    ensure!(st == 200, "{st} {body}");
    // Lapsed and revoked grants are 409.
    w.s.clock.advance(Duration::days(31));
    let (st, lapsed) = reapprove(&w, None, &id, None).await?;
    ensure!(st == 409 && lapsed["detail"].as_str().is_some_and(|d| d.contains("lapsed")), "{st} {lapsed}");
    let other = w.s.create_agent(&w.alice, mandate_jose::KeyAlg::EdDSA).await?;
    let tokens = w.granted(&other, "read").await?;
    ensure!(tokens["access_token"].is_string());
    let (_, list) = w.s.admin(Method::GET, &format!("/v1/grants?agent={}", other.id), None).await?;
    let second = text(&list["items"][0], "id")?;
    let (st, _) = w.s.admin(Method::POST, &format!("/v1/grants/{second}/revoke"), None).await?;
    ensure!(st == 200);
    w.s.clock.advance(Duration::days(25));
    let (st, revoked) = reapprove(&w, None, &second, None).await?;
    ensure!(st == 409 && revoked["detail"].as_str().is_some_and(|d| d.contains("revoked")), "{st} {revoked}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshing_never_extends_a_grant() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let tokens = w.granted(&w.planner, "read").await?;
    let g = the_grant(&w).await?;
    let ends = time_of(&g, "expires_at")?;
    let mut rt = text(&tokens, "refresh_token")?;
    // Refresh every few hours up to the grant's end.
    for _ in 0..7 {
        w.s.clock.advance(Duration::hours(3));
        let (st, body) = w.grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &rt)]).await?;
        ensure!(st == 200, "refresh: {st} {body}");
        let exp = mandate_testkit::scenarios::claims(&text(&body, "access_token")?)["exp"].as_i64().context("exp")?;
        ensure!(exp <= ends.unix_timestamp(), "a token outlives its grant: {exp} > {ends}");
        rt = text(&body, "refresh_token")?;
        let now = the_grant(&w).await?;
        ensure!(time_of(&now, "expires_at")? == ends && now.get("reapprovals").is_none(), "refresh moved it: {now}");
    }
    w.s.clock.advance(Duration::hours(4));
    let (st, body) = w.grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &rt)]).await?;
    ensure!(st == 400 && body["error"] == "invalid_grant", "a refresh past the grant's end: {st} {body}");
    ensure!(the_grant(&w).await?["status"] == "expired");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapse_is_reported_once_and_listed() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    w.granted(&w.planner, "read").await?;
    let g = the_grant(&w).await?;
    let id = text(&g, "id")?;
    let other = w.s.create_agent(&w.alice, mandate_jose::KeyAlg::EdDSA).await?;
    w.s.clock.advance(Duration::hours(1));
    w.granted(&other, "read").await?;
    let (_, list) = w.s.admin(Method::GET, &format!("/v1/grants?agent={}", other.id), None).await?;
    let second = text(&list["items"][0], "id")?;
    // A third grant, revoked: it never lapses.
    let third = w.s.create_agent(&w.alice, mandate_jose::KeyAlg::EdDSA).await?;
    w.granted(&third, "read").await?;
    let (_, list) = w.s.admin(Method::GET, &format!("/v1/grants?agent={}", third.id), None).await?;
    let revoked = text(&list["items"][0], "id")?;
    let (st, _) = w.s.admin(Method::POST, &format!("/v1/grants/{revoked}/revoke"), None).await?;
    ensure!(st == 200);
    // Before the end: nothing to report.
    w.s.mandate.housekeeping().await?;
    ensure!(w.s.audit("type=grant.lapsed").await?.is_empty());
    // The first has ended; two nodes run housekeeping at once.
    w.s.clock.advance(Duration::minutes(23 * 60 + 30));
    let (a, b) = tokio::join!(w.s.mandate.housekeeping(), w.s.mandate.housekeeping());
    a?;
    b?;
    w.s.mandate.housekeeping().await?;
    let lapsed = w.s.audit("type=grant.lapsed").await?;
    ensure!(lapsed.len() == 1, "reported once: {lapsed:?}");
    let e = &lapsed[0];
    ensure!(e["grant_id"] == id.as_str() && e["subject"] == w.alice.as_str() && e["resource"] == CAL, "{e}");
    ensure!(e["scope"] == "read" && e["chain"] == json!([w.alice, w.planner.id]), "{e}");
    let (st, page) = w.s.admin(Method::GET, "/v1/review/lapsed", None).await?;
    ensure!(st == 200, "{st} {page}");
    ensure!(page["items"].as_array().map(Vec::len) == Some(1) && page["items"][0]["id"] == id.as_str(), "{page}");
    ensure!(page["items"][0]["lapsed_at"].is_string() && page["next_cursor"].is_null(), "{page}");
    // The second ends an hour later; the revoked one is never reported.
    w.s.clock.advance(Duration::hours(1));
    let since = now(&w.s)?.format(&Rfc3339)?;
    w.s.mandate.housekeeping().await?;
    ensure!(w.s.audit("type=grant.lapsed").await?.len() == 2);
    let (st, first) = w.s.admin(Method::GET, "/v1/review/lapsed?limit=1", None).await?;
    ensure!(st == 200 && first["items"][0]["id"] == second.as_str(), "newest report first: {first}");
    let cursor = text(&first, "next_cursor")?;
    let (st, rest) = w.s.admin(Method::GET, &format!("/v1/review/lapsed?limit=1&cursor={cursor}"), None).await?;
    ensure!(st == 200 && rest["items"][0]["id"] == id.as_str() && rest["next_cursor"].is_null(), "{rest}");
    let (st, recent) = w.s.admin(Method::GET, &format!("/v1/review/lapsed?since={since}"), None).await?;
    ensure!(st == 200 && recent["items"].as_array().map(Vec::len) == Some(1), "since: {recent}");
    // Auditors only; bad input is 400.
    let (st, _) = w.s.call(Method::GET, "/v1/review/lapsed", Some(&w.bob_token), None).await?;
    ensure!(st == 403, "Bob is no auditor: {st}");
    for bad in ["?since=yesterday", "?limit=0", "?cursor=nope", "?sort=id"] {
        let (st, body) = w.s.admin(Method::GET, &format!("/v1/review/lapsed{bad}"), None).await?;
        ensure!(st == 400, "{bad}: {st} {body}");
    }
    // A lapsed grant cannot be renewed.
    let (st, body) = reapprove(&w, None, &id, None).await?;
    ensure!(st == 409, "{st} {body}");
    Ok(())
}
