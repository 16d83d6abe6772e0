//! The access review (DESIGN §12, ADR 0033) over HTTP: each finding kind
//! appears when it should and not before, thresholds come from the query,
//! and bad input or a person who is no auditor changes nothing.

use anyhow::{Context, Result, ensure};
use mandate_jose::KeyAlg;
use mandate_testkit::scenarios::{CAL, World};
use mandate_testkit::{TestAgent, TestServer};
use reqwest::Method;
use serde_json::{Value, json};
use time::Duration;

/// Agents may do anything on the calendar, spawn and be delegated to.
const OPEN: &str = r#"
permit (principal is Agent, action, resource);
permit (principal in Group::"staff", action, resource);
"#;

fn text(v: &Value, key: &str) -> Result<String> {
    v[key].as_str().map(str::to_owned).with_context(|| format!("{key} missing in {v}"))
}

/// The findings under `query`, as (kind, subject) pairs, and the answer.
async fn findings(s: &TestServer, query: &str) -> Result<(Vec<(String, String)>, Value)> {
    let (st, body) = s.admin(Method::GET, &format!("/v1/review{query}"), None).await?;
    ensure!(st == 200, "review: {st} {body}");
    let list = body["findings"].as_array().context("findings")?;
    let pairs = list
        .iter()
        .map(|f| (f["kind"].as_str().unwrap_or("").to_owned(), f["subject"].as_str().unwrap_or("").to_owned()));
    Ok((pairs.collect(), body))
}

fn has(found: &[(String, String)], kind: &str, subject: &str) -> bool {
    found.iter().any(|(k, s)| k == kind && s == subject)
}

fn finding<'a>(body: &'a Value, kind: &str, subject: &str) -> Option<&'a Value> {
    body["findings"].as_array()?.iter().find(|f| f["kind"] == kind && f["subject"] == subject)
}

/// An agent of `owner` with a ceiling of `scopes`, registered by the admin.
async fn agent_with_ceiling(s: &TestServer, owner: &str, scopes: &[&str]) -> Result<TestAgent> {
    let key = mandate_jose::SigningKey::generate(KeyAlg::EdDSA)?;
    let (st, body) = s
        .admin(
            Method::POST,
            "/v1/agents",
            Some(json!({"name": "Reviewed", "owner": owner, "scopes": scopes, "jwks": {"keys": [key.public().to_json()]}})),
        )
        .await?;
    ensure!(st == 201, "agent: {st} {body}");
    Ok(TestAgent { id: text(&body, "client_id")?, key })
}

/// A self-authorised grant from Alice to `agent` of `scope`, with `extra`
/// CIBA parameters; its tokens.
async fn grant(w: &World, agent: &TestAgent, scope: &str, extra: &[(&str, &str)]) -> Result<Value> {
    let mut params = vec![("login_hint", "alice@example.com"), ("scope", scope), ("resource", CAL)];
    params.extend_from_slice(extra);
    let (st, body) = w.ciba(agent, &params).await?;
    ensure!(st == 200, "bc-authorize: {st} {body}");
    let (st, tokens) = w.poll(agent, &text(&body, "auth_req_id")?).await?;
    ensure!(st == 200, "poll: {st} {tokens}");
    Ok(tokens)
}

async fn grant_of(w: &World, agent: &TestAgent) -> Result<String> {
    let (_, list) = w.s.admin(Method::GET, &format!("/v1/grants?agent={}", agent.id), None).await?;
    text(&list["items"][0], "id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_finding_appears_when_it_should_and_not_before() -> Result<()> {
    let s = TestServer::start_with(|c| {
        c.grant_ttl = 90 * 86_400;
        c.review.spawn_rate = 1;
    })
    .await?;
    let w = World::new(s).await?;
    w.s.put_policies(OPEN).await?;
    // The planner holds a grant of read and write; the helper may act for
    // it (may_act) and another, idle agent may too.
    let helper = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    let idle_helper = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    let actors = format!("{} {}", helper.id, idle_helper.id);
    let tokens = grant(&w, &w.planner, "read write", &[("allowed_actors", actors.as_str())]).await?;
    let g = grant_of(&w, &w.planner).await?;
    // A ceiling of read and write; an agent nobody uses; Bob's agent.
    let ceiled = agent_with_ceiling(&w.s, &w.alice, &["read", "write"]).await?;
    let idle = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    let bobs = w.s.create_agent(&w.bob, KeyAlg::EdDSA).await?;

    // Fresh records: nothing is stale, broad, orphaned or sprawling.
    let (found, _) = findings(&w.s, "?expiring_days=0").await?;
    ensure!(found.is_empty(), "{found:?}");
    // The grant ends in 90 days: expiring only when the window reaches it.
    let (found, _) = findings(&w.s, "?expiring_days=89").await?;
    ensure!(!has(&found, "expiring", &g), "{found:?}");
    let (found, body) = findings(&w.s, "?expiring_days=90").await?;
    ensure!(found == vec![("expiring".to_owned(), g.clone())], "{found:?}");
    ensure!(finding(&body, "expiring", &g).is_some_and(|f| f["suggestion"]["action"] == "reapprove"), "{body}");

    // Ten days on: the planner refreshes for read only and the helper
    // acts for it by exchange; the ceiled agent asks for read.
    w.s.clock.advance(Duration::days(10));
    let rt = text(&tokens, "refresh_token")?;
    let (st, renewed) =
        w.grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &rt), ("scope", "read")]).await?;
    ensure!(st == 200, "refresh: {st} {renewed}");
    let (st, hop) = w.exchange(&helper, &text(&renewed, "access_token")?, &[]).await?;
    ensure!(st == 200, "exchange: {st} {hop}");
    let (st, body) = w.s.token(&ceiled, CAL, "read").await?;
    ensure!(st == 200, "ceiled: {st} {body}");

    // Thirty-one days after creation.
    w.s.clock.advance(Duration::days(21));
    let (found, body) = findings(&w.s, "?expiring_days=0").await?;
    // Stale: the idle agents, never used; not the planner, the helper or
    // the ceiled agent, nor the grant, all used ten days ago.
    for a in [&idle.id, &idle_helper.id, &bobs.id] {
        ensure!(has(&found, "stale", a), "{a} is stale: {found:?}");
    }
    for subject in [&w.planner.id, &helper.id, &ceiled.id, &g] {
        ensure!(!has(&found, "stale", subject), "{subject} is in use: {found:?}");
    }
    // Over-broad: the grant and the ceiling used only read.
    for subject in [&g, &ceiled.id] {
        let f = finding(&body, "over_broad", subject).with_context(|| format!("over_broad {subject}: {body}"))?;
        ensure!(f["suggestion"] == json!({"action": "narrow", "scopes": ["read"]}), "{f}");
        ensure!(f["evidence"]["unused"] == json!(["write"]), "{f}");
    }
    // Unused delegation: the idle helper never acted for the grant.
    let f = finding(&body, "unused_delegation", &g).with_context(|| format!("unused_delegation: {body}"))?;
    ensure!(f["evidence"]["unused"] == json!([idle_helper.id]), "{f}");
    ensure!(f["suggestion"] == json!({"action": "narrow", "may_act": [helper.id]}), "{f}");
    // With a window of 5 days, the uses ten days ago no longer count.
    let (found, _) = findings(&w.s, "?expiring_days=0&stale_days=5&unused_days=5").await?;
    ensure!(has(&found, "stale", &g) && has(&found, "stale", &ceiled.id), "{found:?}");
    // With a window of 60 days, nothing created 31 days ago is judged yet.
    let (found, _) = findings(&w.s, "?expiring_days=0&stale_days=60&unused_days=60").await?;
    ensure!(found.is_empty(), "{found:?}");

    // Orphaned: not while Bob is active; once he is disabled.
    ensure!(!has(&found, "orphaned", &bobs.id));
    let (st, body) =
        w.s.admin(Method::PATCH, &format!("/v1/users/{}", w.bob), Some(json!({"status": "disabled"}))).await?;
    ensure!(st == 200, "{st} {body}");
    let (found, body) = findings(&w.s, "?expiring_days=0&stale_days=60&unused_days=60").await?;
    ensure!(found == vec![("orphaned".to_owned(), bobs.id.clone())], "{found:?}");
    ensure!(finding(&body, "orphaned", &bobs.id).is_some_and(|f| f["evidence"]["owner_status"] == "disabled"));

    // Sprawl: one child is within the spawn rate (1 a day) and its TTL.
    let quiet = "?expiring_days=0&stale_days=60&unused_days=60";
    let child = w.spawn(&w.planner, json!({})).await?;
    let (found, _) = findings(&w.s, quiet).await?;
    ensure!(!found.iter().any(|(k, _)| k == "sprawl"), "{found:?}");
    // A second child in the same day is above it.
    let _second = w.spawn(&w.planner, json!({})).await?;
    let (found, body) = findings(&w.s, quiet).await?;
    let f = finding(&body, "sprawl", &w.planner.id).with_context(|| format!("spawn rate: {found:?}"))?;
    ensure!(f["evidence"]["spawned_24h"] == 2, "{f}");
    // Eleven minutes on, both children outlived their 10-minute TTL
    // (housekeeping has not retired them yet).
    w.s.clock.advance(Duration::minutes(11));
    let (found, _) = findings(&w.s, quiet).await?;
    ensure!(has(&found, "sprawl", &child.id), "{found:?}");
    // Housekeeping retires them: no longer sprawl.
    w.s.mandate.housekeeping().await?;
    let (found, _) = findings(&w.s, quiet).await?;
    ensure!(!has(&found, "sprawl", &child.id), "{found:?}");
    // A day on, the spawn rate is back under the threshold.
    w.s.clock.advance(Duration::days(1));
    let (found, _) = findings(&w.s, quiet).await?;
    ensure!(!has(&found, "sprawl", &w.planner.id), "{found:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_ids_are_stable_and_thresholds_are_checked() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let idle = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    w.s.clock.advance(Duration::days(31));
    let (_, first) = findings(&w.s, "").await?;
    let (_, again) = findings(&w.s, "").await?;
    let id = finding(&first, "stale", &idle.id).map(|f| f["id"].clone()).context("stale")?;
    ensure!(id.as_str().is_some_and(|i| i.starts_with("fnd_")), "{id}");
    ensure!(finding(&again, "stale", &idle.id).is_some_and(|f| f["id"] == id), "{again}");
    let before = w.s.audit("").await?.len();
    for bad in ["?stale_days=-1", "?stale_days=3651", "?unused_days=x", "?stale_days=1&stale_days=2", "?nope=1"] {
        let (st, body) = w.s.admin(Method::GET, &format!("/v1/review{bad}"), None).await?;
        ensure!(st == 400 && body["type"].as_str().is_some_and(|t| t.contains("invalid")), "{bad}: {st} {body}");
    }
    ensure!(w.s.audit("").await?.len() == before, "bad input changed the trail");
    // A person who is no auditor is refused and recorded; an auditor reads.
    // (Bob's first token expired with the 31 days: a new one.)
    let (st, body) = w.s.admin(Method::POST, &format!("/v1/users/{}/tokens", w.bob), Some(json!({}))).await?;
    ensure!(st == 201, "{st} {body}");
    let bob_token = text(&body, "token")?;
    let (st, _) = w.s.call(Method::GET, "/v1/review", Some(&bob_token), None).await?;
    ensure!(st == 403, "{st}");
    let denied = w.s.audit("type=admin.denied").await?;
    ensure!(denied.last().is_some_and(|e| e["actor"] == w.bob.as_str()), "{denied:?}");
    let (st, body) =
        w.s.admin(Method::PATCH, &format!("/v1/users/{}", w.bob), Some(json!({"groups": ["mandate-auditors"]})))
            .await?;
    ensure!(st == 200, "{st} {body}");
    let (st, body) = w.s.call(Method::GET, "/v1/review", Some(&bob_token), None).await?;
    ensure!(st == 200 && finding(&body, "stale", &idle.id).is_some(), "{st} {body}");
    let (st, _) = w.s.call(Method::GET, "/v1/review", None, None).await?;
    ensure!(st == 401, "{st}");
    Ok(())
}

/// `GET /v1/review` answers a page of agents at a time (ADR 0038): the
/// pages, followed by their cursors, hold exactly the findings of one
/// large page, in the same order; a bad limit or a cursor of another list
/// is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_is_paged_by_agent_and_its_pages_make_the_whole() -> Result<()> {
    let s = TestServer::start_with(|c| c.grant_ttl = 90 * 86_400).await?;
    let w = World::new(s).await?;
    w.s.put_policies(OPEN).await?;
    grant(&w, &w.planner, "read write", &[]).await?;
    let g = grant_of(&w, &w.planner).await?;
    for _ in 0..4 {
        w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    }
    w.s.clock.advance(Duration::days(31));
    let (whole, body) = findings(&w.s, "?limit=1000").await?;
    ensure!(body["next_cursor"].is_null(), "{body}");
    ensure!(has(&whole, "stale", &g) && whole.len() >= 6, "{whole:?}");
    let agents = body["agents_reviewed"].as_u64().context("agents_reviewed")?;

    let (mut paged, mut pages, mut reviewed, mut cursor) = (Vec::new(), 0, 0, String::new());
    loop {
        let (found, body) = findings(&w.s, &format!("?limit=2{cursor}")).await?;
        let n = body["agents_reviewed"].as_u64().context("agents_reviewed")?;
        ensure!(n <= 2, "{body}");
        paged.extend(found);
        pages += 1;
        reviewed += n;
        match body["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
        ensure!(pages < 100, "the cursor does not move");
    }
    ensure!(paged == whole, "pages {paged:?} against {whole:?}");
    ensure!(reviewed == agents && pages == agents.div_ceil(2), "{pages} pages of {reviewed} agents, of {agents}");

    let (_, list) = w.s.admin(Method::GET, "/v1/agents?limit=1", None).await?;
    let foreign = text(&list, "next_cursor")?;
    for bad in ["?limit=0".to_owned(), "?limit=1001".to_owned(), format!("?cursor={foreign}"), "?cursor=%%".into()] {
        let (st, body) = w.s.admin(Method::GET, &format!("/v1/review{bad}"), None).await?;
        ensure!(st == 400 && body["type"].as_str().is_some_and(|t| t.contains("invalid")), "{bad}: {st} {body}");
    }
    Ok(())
}
