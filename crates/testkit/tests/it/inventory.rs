//! The inventory's lists over HTTP (DESIGN §12, ADR 0032): paging with
//! opaque cursors, filters, who may list, and refusals of bad input; and
//! the inventory report and gauges (ADR 0035).

use anyhow::{Result, ensure};
use mandate_jose::KeyAlg;
use mandate_testkit::TestServer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};

fn is_problem(body: &Value, kind: &str) -> bool {
    body["type"] == format!("urn:mandate:problem:{kind}") && body["status"].is_u64() && body["detail"].is_string()
}

/// Every page of `path` (which carries its own `?…`), following
/// `next_cursor`: the ids of each page.
async fn pages(s: &TestServer, token: &str, path: &str) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_owned(),
        };
        let (st, body) = s.call(Method::GET, &url, Some(token), None).await?;
        ensure!(st == 200, "{url}: {st} {body}");
        let ids = body["items"].as_array().map(|a| a.iter().filter_map(|i| i["id"].as_str()).map(str::to_owned));
        out.push(ids.map(Iterator::collect).unwrap_or_default());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                ensure!(body["next_cursor"].is_null(), "the last page ends with next_cursor: null: {body}");
                return Ok(out);
            }
        }
        ensure!(out.len() < 1000, "the cursor never ended");
    }
}

#[tokio::test]
async fn every_list_pages_newest_first_to_a_null_cursor() -> Result<()> {
    let s = TestServer::start().await?;
    let (owner, agent) = s.seed().await?;
    let mut users = vec![owner.clone()];
    for i in 0..4 {
        users.push(s.create_user(&format!("u{i}@example.com")).await?);
    }
    // Ids sort by creation time to the millisecond; the test clock stands
    // still, so within it they sort as they fall.
    users.sort();
    users.reverse();
    let admin = mandate_testkit::server_admin_token();
    let got = pages(&s, admin, "/v1/users?limit=2").await?;
    ensure!(got.iter().map(Vec::len).collect::<Vec<_>>() == vec![2, 2, 1], "{got:?}");
    ensure!(got.concat() == users, "newest first, each once: {got:?}");
    // A full last page still ends with a null cursor, not an empty page.
    let got = pages(&s, admin, "/v1/users?limit=5").await?;
    ensure!(got.len() == 1 && got.concat() == users, "{got:?}");
    let got = pages(&s, admin, "/v1/agents?limit=1").await?;
    ensure!(got.concat() == vec![agent.id.clone()], "{got:?}");
    s.create_resource("https://second.example", json!({"read": []})).await?;
    let got = pages(&s, admin, "/v1/resources?limit=1").await?;
    ensure!(got.len() == 2 && got.concat().iter().all(|id| id.starts_with("res_")), "{got:?}");
    let (st, body) = s.admin(Method::GET, "/v1/grants", None).await?;
    ensure!(st == 200 && body["items"] == json!([]) && body["next_cursor"].is_null(), "{body}");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn agents_are_found_by_owner_kind_status_and_last_use() -> Result<()> {
    let s = TestServer::start().await?;
    let (owner, used) = s.seed().await?;
    let other = s.create_user("other@example.com").await?;
    let idle = s.create_agent(&other, KeyAlg::EdDSA).await?;
    let (st, _) = s.admin(Method::POST, &format!("/v1/agents/{}/suspend", idle.id), None).await?;
    ensure!(st == 200);
    let before = mandate_core::Clock::now(s.clock.as_ref());
    let (st, body) = s.token(&used, "https://api.example.com", "read").await?;
    ensure!(st == 200, "{body}");
    let rfc = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let ids = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .map(|a| a.iter().filter_map(|i| i["id"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let get = |q: String| {
        let s = &s;
        async move {
            let (st, body) = s.admin(Method::GET, &format!("/v1/agents?{q}"), None).await?;
            ensure!(st == 200, "{q}: {st} {body}");
            anyhow::Ok(body)
        }
    };
    let body = get(format!("owner={owner}")).await?;
    ensure!(ids(&body) == vec![used.id.clone()], "{body}");
    ensure!(body["items"][0]["last_used_at"] == json!(rfc(before)), "the token's issuance is its last use: {body}");
    ensure!(body["items"][0]["owner"] == json!(owner), "{body}");
    let body = get(format!("used_after={}", rfc(before))).await?;
    ensure!(ids(&body) == vec![used.id.clone()], "{body}");
    let body = get(format!("used_before={}", rfc(before))).await?;
    ensure!(ids(&body) == vec![idle.id.clone()], "never used: {body}");
    ensure!(body["items"][0]["last_used_at"].is_null(), "{body}");
    let body = get("status=suspended&kind=persistent&origin=admin".into()).await?;
    ensure!(ids(&body) == vec![idle.id.clone()], "{body}");
    let body = get(format!("parent={}", used.id)).await?;
    ensure!(ids(&body).is_empty(), "{body}");
    let body = get(format!("expires_before={}", rfc(before + time::Duration::days(1)))).await?;
    ensure!(ids(&body).is_empty(), "persistent agents do not expire: {body}");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bad_paging_and_filters_are_problem_json() -> Result<()> {
    let s = TestServer::start().await?;
    s.seed().await?;
    s.create_user("second@example.com").await?;
    let (_, body) = s.admin(Method::GET, "/v1/users?limit=1", None).await?;
    let users_cursor = body["next_cursor"].as_str().unwrap_or_default().to_owned();
    ensure!(!users_cursor.is_empty(), "{body}");
    let cases = [
        "/v1/users?limit=0",
        "/v1/users?limit=1001",
        "/v1/users?limit=ten",
        "/v1/users?cursor=not-a-cursor!",
        "/v1/users?status=gone",
        "/v1/users?role=admin",
        "/v1/users?limit=1&limit=2",
        &format!("/v1/agents?cursor={users_cursor}"),
        "/v1/agents?kind=robot",
        "/v1/agents?origin=elsewhere",
        "/v1/agents?owner=agt_01JZZZZZZZZZZZZZZZZZZZZZZZ",
        "/v1/agents?used_before=yesterday",
        "/v1/agents?expires_before=2026-13-01T00:00:00Z",
        "/v1/resources?cursor=",
        "/v1/resources?owner=usr_01JZZZZZZZZZZZZZZZZZZZZZZZ",
        "/v1/grants?status=forever",
        "/v1/grants?used_before=soon",
        &format!("/v1/grants?cursor={users_cursor}"),
    ];
    for path in cases {
        let (st, body) = s.admin(Method::GET, path, None).await?;
        ensure!(st == 400 && is_problem(&body, "invalid-input"), "{path}: {st} {body}");
    }
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn only_the_admin_and_auditors_list_the_inventory() -> Result<()> {
    let s = TestServer::start().await?;
    s.seed().await?;
    let person = s.create_user("person@example.com").await?;
    let (st, body) = s
        .admin(
            Method::POST,
            "/v1/users",
            Some(json!({"name": "Olga", "email": "olga@example.com", "groups": ["mandate-auditors"]})),
        )
        .await?;
    ensure!(st == 201, "{body}");
    let auditor = body["id"].as_str().unwrap_or_default().to_owned();
    let token_of = |id: String| {
        let s = &s;
        async move {
            let (st, body) = s.admin(Method::POST, &format!("/v1/users/{id}/tokens"), None).await?;
            ensure!(st == 201, "{body}");
            anyhow::Ok(body["token"].as_str().unwrap_or_default().to_owned())
        }
    };
    let (person_token, auditor_token) = (token_of(person).await?, token_of(auditor).await?);
    for path in ["/v1/users", "/v1/agents", "/v1/resources"] {
        let (st, body) = s.call(Method::GET, path, Some(&person_token), None).await?;
        ensure!(st == 403 && is_problem(&body, "forbidden"), "{path}: {st} {body}");
        let (st, body) = s.call(Method::GET, path, Some(&auditor_token), None).await?;
        ensure!(st == 200 && body["items"].as_array().is_some_and(|a| !a.is_empty()), "{path}: {st} {body}");
        let (st, _) = s.call(Method::GET, path, None, None).await?;
        ensure!(st == 401, "{path} without a token");
    }
    // A person still lists only their own grants (none here).
    let (st, body) = s.call(Method::GET, "/v1/grants", Some(&person_token), None).await?;
    ensure!(st == 200 && body["items"] == json!([]), "{body}");
    let refusals = s.audit("type=admin.denied").await?;
    ensure!(refusals.len() >= 3, "each refusal is audited: {refusals:?}");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_agents_inventory_shows_what_it_holds_and_whom_it_may_delegate_to() -> Result<()> {
    let s = TestServer::start().await?;
    let (owner, agent) = s.seed().await?;
    let other = s.create_agent(&owner, KeyAlg::EdDSA).await?;
    let third = s.create_agent(&owner, KeyAlg::EdDSA).await?;
    s.put_policies(&format!(
        r#"permit(principal is Agent, action == Action::"read", resource == Api::"https://api.example.com");
permit(principal == Agent::"{}", action == Action::"mandate:delegate", resource == Agent::"{}");"#,
        agent.id, other.id
    ))
    .await?;
    let (st, body) = s.token(&agent, "https://api.example.com", "read").await?;
    ensure!(st == 200, "{body}");
    let (st, body) = s.admin(Method::GET, &format!("/v1/agents/{}/inventory", agent.id), None).await?;
    ensure!(st == 200, "{st} {body}");
    ensure!(body["owner"] == json!(owner) && body["kind"] == "persistent" && body["origin"] == "admin", "{body}");
    ensure!(body["live"] == json!({"grants": 0, "tokens": 1}), "{body}");
    ensure!(body["last_used_at"].is_string() && body["expires_at"].is_null(), "{body}");
    let keys = body["credentials"]["keys"].as_array().map(Vec::len);
    ensure!(keys == Some(1) && body["credentials"]["client_secret"] == false, "{body}");
    let d = &body["delegation"];
    ensure!(d["may_delegate_to"] == json!([other.id]), "policy, not every agent: {body}");
    ensure!(d["candidates_evaluated"] == 2, "the other active agents: {body}");
    ensure!(d["delegated_to"] == json!([]) && d["days"] == 30 && d["complete"] == true, "{body}");
    // The limits it carries and those in force (the server's defaults,
    // narrowed by its own).
    ensure!(body["limits"] == json!({}) && body["limits_in_force"]["max_token_ttl"] == 300, "{body}");
    ensure!(body["limits_in_force"]["require_dpop"] == false, "{body}");
    let (st, b) = s
        .admin(
            Method::PATCH,
            &format!("/v1/agents/{}", agent.id),
            Some(json!({"limits": {"max_token_ttl": 120, "require_dpop": true}})),
        )
        .await?;
    ensure!(st == 200, "{st} {b}");
    let (_, body) = s.admin(Method::GET, &format!("/v1/agents/{}/inventory", agent.id), None).await?;
    ensure!(body["limits"] == json!({"max_token_ttl": 120, "require_dpop": true}), "{body}");
    ensure!(
        body["limits_in_force"]["max_token_ttl"] == 120 && body["limits_in_force"]["require_dpop"] == true,
        "{body}"
    );
    ensure!(body["limits_in_force"]["max_delegation_depth"].is_u64(), "every limit in force is shown: {body}");
    let _ = third;
    for (path, want) in [
        (format!("/v1/agents/{}/inventory?days=0", agent.id), 400),
        (format!("/v1/agents/{}/inventory?days=367", agent.id), 400),
        (format!("/v1/agents/{}/inventory?limit=1", agent.id), 400),
        ("/v1/agents/agt_01JZZZZZZZZZZZZZZZZZZZZZZZ/inventory".to_owned(), 404),
        ("/v1/agents/usr_01JZZZZZZZZZZZZZZZZZZZZZZZ/inventory".to_owned(), 400),
    ] {
        let (st, body) = s.admin(Method::GET, &path, None).await?;
        ensure!(st == want, "{path}: {st} {body}");
    }
    let (st, body) = s.admin(Method::POST, &format!("/v1/users/{owner}/tokens"), None).await?;
    ensure!(st == 201, "{body}");
    let person = body["token"].as_str().unwrap_or_default().to_owned();
    let (st, _) = s.call(Method::GET, &format!("/v1/agents/{}/inventory", agent.id), Some(&person), None).await?;
    ensure!(st == 403, "even the owner: the view is the admin's and auditors'");
    s.stop().await?;
    Ok(())
}

/// Paging visits every record that existed when it began exactly once,
/// in id order, however many are inserted between pages and whatever the
/// page size: nothing listed moves. (A record inserted meanwhile shows only
/// if its id sorts below the cursor; the test clock stands still, so here
/// some do.)
#[test]
fn paging_sees_each_record_once_under_inserts_between_pages() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let s = rt.block_on(TestServer::start())?;
    let admin = mandate_testkit::server_admin_token();
    let made = std::sync::atomic::AtomicU32::new(0);
    let mut runner = TestRunner::new(Config { cases: 24, ..Config::default() });
    let strategy = (0..12u32, 1..5u32, proptest::collection::vec(0..3u32, 0..16));
    let result = runner.run(&strategy, |(initial, limit, inserts)| {
        rt.block_on(async {
            let create = || {
                let n = made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let id = format!("https://p{n}.example");
                let s = &s;
                async move { s.create_resource(&id, json!({"read": []})).await.map(|r| r["id"].clone()) }
            };
            for _ in 0..initial {
                create().await?;
            }
            let (_, all) = s.admin(Method::GET, "/v1/resources?limit=1000", None).await?;
            let existing: Vec<Value> =
                all["items"].as_array().map(|a| a.iter().map(|r| r["id"].clone()).collect()).unwrap_or_default();
            let mut seen: Vec<Value> = Vec::new();
            let mut cursor: Option<String> = None;
            let mut page = 0usize;
            loop {
                let path = match &cursor {
                    Some(c) => format!("/v1/resources?limit={limit}&cursor={c}"),
                    None => format!("/v1/resources?limit={limit}"),
                };
                let (st, body) = s.call(Method::GET, &path, Some(admin), None).await?;
                ensure!(st == 200, "{body}");
                seen.extend(body["items"].as_array().into_iter().flatten().map(|r| r["id"].clone()));
                for _ in 0..inserts.get(page).copied().unwrap_or(0) {
                    create().await?;
                }
                page += 1;
                match body["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            let mut sorted = seen.clone();
            sorted.sort_by(|a, b| b.as_str().cmp(&a.as_str()));
            sorted.dedup();
            ensure!(sorted == seen, "by id, descending, none twice: {seen:?}");
            let old: Vec<&Value> = seen.iter().filter(|id| existing.contains(id)).collect();
            ensure!(old == existing.iter().collect::<Vec<_>>(), "each record that existed, once: {seen:?}");
            anyhow::Ok(())
        })
        .map_err(|e| TestCaseError::fail(format!("{e:#}")))
    });
    rt.block_on(s.stop())?;
    result.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// `GET /v1/inventory/report` by `by` with the admin token, every page.
async fn report(s: &TestServer, by: &str) -> Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/inventory/report?by={by}&limit=1&cursor={c}"),
            None => format!("/v1/inventory/report?by={by}&limit=1"),
        };
        let (st, body) = s.admin(Method::GET, &path, None).await?;
        ensure!(st == 200 && body["by"] == by && body["generated_at"].is_string(), "{path}: {st} {body}");
        items.extend(body["items"].as_array().cloned().unwrap_or_default());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(items),
        }
        ensure!(items.len() < 100, "the cursor never ended");
    }
}

fn item<'a>(items: &'a [Value], key: &str) -> Result<&'a Value> {
    items.iter().find(|i| i["key"] == key).ok_or_else(|| anyhow::anyhow!("no {key} in {items:?}"))
}

fn counts(grants: u64, tokens: u64, ephemeral_agents: u64) -> Value {
    json!({"grants": grants, "tokens": tokens, "ephemeral_agents": ephemeral_agents})
}

/// The report (ADR 0035): live counts per owner and resource, peaks that
/// remember the last sample after a revocation, and churn; and the gauges
/// the same sample sets, scraped from `/metrics`.
#[tokio::test]
async fn the_report_counts_live_records_their_peaks_and_churn() -> Result<()> {
    use mandate_testkit::scenarios::{CAL, World};
    let w = World::new(TestServer::start().await?).await?;
    let s = &w.s;
    // Alice's planner holds a grant and its token, and a spawn token; its
    // ephemeral child holds a token exchanged from the planner's.
    let parent = w.granted(&w.planner, "read").await?["access_token"].as_str().unwrap_or_default().to_owned();
    let child = w.spawn(&w.planner, json!({})).await?;
    let (st, body) = w.exchange(&child, &parent, &[]).await?;
    ensure!(st == 200, "{body}");

    let owners = report(s, "owner").await?;
    ensure!(owners.len() == 1, "only Alice owns agents: {owners:?}");
    let alice = item(&owners, &w.alice)?;
    ensure!(alice["live"] == counts(1, 3, 1), "a grant, three tokens, one ephemeral agent: {alice}");
    ensure!(alice["peak_24h"] == alice["live"] && alice["peak_7d"] == alice["live"], "{alice}");
    ensure!(alice["churn_24h"]["created"] == counts(1, 3, 1), "{alice}");
    ensure!(alice["churn_24h"]["ended"] == counts(0, 0, 0), "{alice}");
    let resources = report(s, "resource").await?;
    let keys: Vec<&str> = resources.iter().filter_map(|i| i["key"].as_str()).collect();
    ensure!(keys.windows(2).all(|k| k.first() < k.last()), "in key order, each once: {keys:?}");
    let cal = item(&resources, CAL)?;
    ensure!(cal["live"] == counts(1, 2, 1), "the child's token is the ephemeral agents' count here: {cal}");
    let mandate = item(&resources, &s.issuer)?;
    ensure!(mandate["live"] == counts(0, 2, 0), "the spawn and check tokens: {mandate}");
    let read = item(&report(s, "scope").await?, "read")?.clone();
    ensure!(read["live"] == counts(1, 2, 1), "{read}");

    // A sample, then the grant is revoked with every token under it.
    mandate_server::refresh_gauges(&s.mandate).await;
    let text = scrape().await?;
    for line in [
        format!("mandate_live_agents{{owner=\"{}\"}} 2", w.alice),
        format!("mandate_live_grants{{owner=\"{}\"}} 1", w.alice),
        format!("mandate_live_tokens{{owner=\"{}\"}} 3", w.alice),
        "mandate_live_tokens{owner=\"other\"} 0".to_owned(),
        "mandate_review_findings{kind=\"stale\"}".to_owned(),
        "mandate_review_findings{kind=\"sprawl\"}".to_owned(),
        "mandate_ephemeral_spawns_total".to_owned(),
        // Each per-node cache's fill against its byte budget (issue 19).
        "mandate_cache_budget_bytes{cache=\"agents\"} 100663296".to_owned(),
        "mandate_cache_bytes{cache=\"agents\"}".to_owned(),
        "mandate_cache_entries{cache=\"live_chains\"}".to_owned(),
        "mandate_cache_bytes{cache=\"issuance_decisions\"}".to_owned(),
        "mandate_cache_bytes{cache=\"client_keys\"}".to_owned(),
    ] {
        ensure!(text.lines().any(|l| l.starts_with(&line)), "{line} is not in the metrics:\n{text}");
    }
    let (_, grants) = s.admin(Method::GET, &format!("/v1/grants?agent={}", w.planner.id), None).await?;
    let grant = grants["items"][0]["id"].as_str().unwrap_or_default().to_owned();
    let (st, body) = s.admin(Method::POST, &format!("/v1/grants/{grant}/revoke"), None).await?;
    ensure!(st == 200, "{body}");

    let owners = report(s, "owner").await?;
    let alice = item(&owners, &w.alice)?;
    ensure!(alice["live"] == counts(0, 1, 1), "only the spawn token is left: {alice}");
    ensure!(alice["peak_24h"] == counts(1, 3, 1) && alice["peak_7d"] == counts(1, 3, 1), "the sample: {alice}");
    ensure!(alice["churn_24h"]["ended"] == counts(1, 2, 0), "the grant and its two tokens ended: {alice}");
    ensure!(alice["churn_7d"]["created"] == counts(1, 3, 1), "{alice}");
    w.s.stop().await?;
    Ok(())
}

/// The process's `/metrics`, from a metrics listener of its own.
async fn scrape() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/metrics", listener.local_addr()?);
    let server = tokio::spawn(mandate_server::serve_metrics(listener, std::future::pending()));
    let text = reqwest::get(&url).await?.text().await?;
    server.abort();
    Ok(text)
}

#[tokio::test]
async fn the_report_refuses_bad_input_and_strangers() -> Result<()> {
    let s = TestServer::start().await?;
    let (owner, _) = s.seed().await?;
    let other = s.create_user("other@example.com").await?;
    s.create_agent(&other, KeyAlg::EdDSA).await?;
    // Both owners have a live agent (nothing else yet): one per page.
    let (st, body) = s.admin(Method::GET, "/v1/inventory/report?by=owner&limit=1", None).await?;
    ensure!(st == 200 && body["items"][0]["live"] == counts(0, 0, 0), "{body}");
    let owner_cursor = body["next_cursor"].as_str().unwrap_or_default().to_owned();
    ensure!(!owner_cursor.is_empty(), "two owners, one per page: {body}");
    let (st, body) = s.admin(Method::GET, "/v1/inventory/report?by=resource", None).await?;
    ensure!(st == 200 && body["items"] == json!([]) && body["next_cursor"].is_null(), "no grants nor tokens: {body}");
    let cases = [
        "/v1/inventory/report".to_owned(),
        "/v1/inventory/report?by=agent".to_owned(),
        "/v1/inventory/report?by=owner&by=scope".to_owned(),
        "/v1/inventory/report?by=owner&limit=0".to_owned(),
        "/v1/inventory/report?by=owner&limit=1001".to_owned(),
        "/v1/inventory/report?by=owner&cursor=not-a-cursor!".to_owned(),
        "/v1/inventory/report?by=owner&window=7d".to_owned(),
        format!("/v1/inventory/report?by=scope&cursor={owner_cursor}"),
    ];
    for path in &cases {
        let (st, body) = s.admin(Method::GET, path, None).await?;
        ensure!(st == 400 && is_problem(&body, "invalid-input"), "{path}: {st} {body}");
    }
    let (st, body) =
        s.admin(Method::GET, &format!("/v1/inventory/report?by=owner&cursor={owner_cursor}"), None).await?;
    ensure!(st == 200 && body["items"].as_array().map(Vec::len) == Some(1) && body["next_cursor"].is_null(), "{body}");
    let (st, body) = s.admin(Method::POST, &format!("/v1/users/{owner}/tokens"), None).await?;
    ensure!(st == 201, "{body}");
    let person = body["token"].as_str().unwrap_or_default().to_owned();
    let before = s.audit("type=admin.denied").await?.len();
    let (st, body) = s.call(Method::GET, "/v1/inventory/report?by=owner", Some(&person), None).await?;
    ensure!(st == 403 && is_problem(&body, "forbidden"), "an agents' owner is not an auditor: {st} {body}");
    ensure!(s.audit("type=admin.denied").await?.len() == before + 1, "the refusal is audited");
    let (st, _) = s.call(Method::GET, "/v1/inventory/report?by=owner", None, None).await?;
    ensure!(st == 401);
    s.stop().await?;
    Ok(())
}
