//! `mandate gateway` against the real server (DESIGN §9): the gateway agent
//! named by its resource checks every tools/call and exchanges the client's
//! token for the upstream's audience; tools/list shows what may be called;
//! a missing scope is a step-up challenge; approvals go through Mandate.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use mandate_gateway::{Config, Gateway, code};
use mandate_jose::KeyAlg;
use mandate_testkit::TestServer;
use mandate_testkit::scenarios::{World, claims};
use reqwest::Method;
use serde_json::{Value, json};

/// The MCP server behind the gateway, as Mandate knows it: the tokens'
/// audience at the gateway, and the upstream's own.
const TOOLS: &str = "https://gateway.example/mcp/files";
const UPSTREAM: &str = "https://files.example/mcp";
const PREFIX: &str = "/mcp/files";

const POLICIES: &str = r#"
permit (principal in Group::"staff", action in [Action::"read_file", Action::"write_file", Action::"delete_all", Action::"send_mail"], resource);
permit (principal is Agent, action in [Action::"read_file", Action::"write_file"], resource);
// Grants may cover mail and deletion; each mail needs Alice, and nothing
// deletes everything.
permit (principal is Agent, action in [Action::"send_mail", Action::"delete_all"], resource is Api);
@approval("user")
permit (principal is Agent, action == Action::"send_mail", resource is Resource);
"#;

/// A call as the upstream saw it: its Authorization and DPoP headers and
/// its body.
type Seen = (Option<String>, Option<String>, Value);

#[derive(Default)]
struct Upstream {
    seen: Mutex<Vec<Seen>>,
}

impl Upstream {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn mcp(State(u): State<Arc<Upstream>>, headers: HeaderMap, body: Bytes) -> Response {
    let msg: Value = serde_json::from_slice(&body).unwrap_or_default();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Ok(mut seen) = u.seen.lock() {
        seen.push((header("authorization"), header("dpop"), msg.clone()));
    }
    let id = msg["id"].clone();
    let result = match msg["method"].as_str() {
        Some("tools/list") => json!({"tools": [
            {"name": "read_file", "inputSchema": {"type": "object"}},
            {"name": "write_file", "inputSchema": {"type": "object"}},
            {"name": "delete_all", "inputSchema": {"type": "object"}},
            {"name": "send_mail", "inputSchema": {"type": "object"}},
        ]}),
        Some("tools/call") => json!({"content": [{"type": "text", "text": format!("did {}", msg["params"]["name"])}]}),
        _ => json!({}),
    };
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

async fn start_upstream() -> Result<(Arc<Upstream>, String)> {
    let u = Arc::new(Upstream::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = Router::new().route("/mcp", post(mcp)).with_state(u.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((u, url))
}

/// A client token: Alice lets the planner use `scope` through the gateway.
async fn client_token(w: &World, scope: &str) -> Result<String> {
    let (st, body) = w
        .ciba(
            &w.planner,
            &[("login_hint", "alice@example.com"), ("scope", scope), ("resource", TOOLS), ("binding_message", "tidy")],
        )
        .await?;
    ensure!(st == 200, "bc-authorize: {st} {body}");
    let (st, tokens) = w.poll(&w.planner, body["auth_req_id"].as_str().unwrap_or_default()).await?;
    ensure!(st == 200, "poll: {st} {tokens}");
    tokens["access_token"].as_str().map(str::to_owned).context("access_token")
}

async fn rpc(http: &reqwest::Client, url: &str, token: &str, msg: Value) -> Result<(u16, String, Value)> {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(msg.to_string())
        .send()
        .await?;
    let status = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    Ok((status, www, resp.json().await?))
}

fn call(id: i64, name: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": {"path": "/tmp/x"}}})
}

fn names(list: &Value) -> Vec<&str> {
    list["result"]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_decides_calls_and_exchanges_tokens_against_the_real_server() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let gw_agent = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    let scopes =
        json!({"files.read": ["read_file"], "files.write": ["write_file", "delete_all"], "mail": ["send_mail"]});
    for body in [
        json!({"identifier": UPSTREAM, "name": "Files upstream", "scopes": scopes}),
        json!({"identifier": TOOLS, "name": "Files", "scopes": scopes, "gateway": gw_agent.id, "exchange_to": [UPSTREAM]}),
    ] {
        let (st, out) = w.s.admin(Method::POST, "/v1/resources", Some(body)).await?;
        ensure!(st == 201, "resource: {st} {out}");
    }
    w.s.put_policies(POLICIES).await?;

    let (upstream, upstream_url) = start_upstream().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = Config::from_toml(
        &format!(
            r#"
            issuer = "{issuer}"
            listen = "{addr}"
            client_id = "{agent}"
            key_file = "unused"
            [[route]]
            prefix = "{PREFIX}"
            upstream = "{upstream_url}/mcp"
            resource = "{TOOLS}"
            upstream_token = "exchange"
            upstream_resource = "{UPSTREAM}"
            scopes = ["files.read", "files.write", "mail"]
            "#,
            issuer = w.s.issuer,
            agent = gw_agent.id,
        ),
        std::path::Path::new("."),
    )?;
    let gateway = Gateway::with_key(config, gw_agent.key)?;
    tokio::spawn(gateway.serve(listener));
    let url = format!("http://{addr}{PREFIX}");
    let http = reqwest::Client::new();

    // Discovery: the challenge names the metadata, the metadata Mandate.
    let resp = http.post(&url).header("content-type", "application/json").body("{}").send().await?;
    ensure!(resp.status() == 401, "{}", resp.status());
    let meta: Value =
        http.get(format!("http://{addr}/.well-known/oauth-protected-resource{PREFIX}")).send().await?.json().await?;
    assert_eq!(meta["resource"], TOOLS);
    assert_eq!(meta["authorization_servers"], json!([w.s.issuer]));

    let token = client_token(&w, "files.read mail").await?;

    // The list hides what the token cannot do; mail needs approval and shows.
    let (st, _, list) = rpc(&http, &url, &token, json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await?;
    assert_eq!(st, 200, "{list}");
    assert_eq!(names(&list), ["read_file", "send_mail"], "{list}");
    // Listing asked nobody anything: no approval request waits for Alice.
    let (st, pending) = w.s.call(Method::GET, "/v1/approvals?status=pending", Some(&w.alice_token), None).await?;
    assert_eq!(st, 200, "{pending}");
    assert_eq!(pending["approvals"].as_array().map(Vec::len), Some(0), "a listing opened approvals: {pending}");

    // An allowed call reaches the upstream with a token Mandate exchanged:
    // its audience is the upstream's, the gateway joins the chain.
    let (st, _, out) = rpc(&http, &url, &token, call(2, "read_file")).await?;
    assert_eq!(st, 200, "{out}");
    assert_eq!(out["result"]["content"][0]["text"], "did \"read_file\"");
    let (auth, dpop, body) = upstream.seen().pop().context("the upstream saw the call")?;
    assert_eq!(body, call(2, "read_file"));
    assert!(dpop.is_none());
    let exchanged = auth.context("an Authorization header")?;
    let exchanged = exchanged.strip_prefix("Bearer ").context("a bearer token")?;
    assert_ne!(exchanged, token, "the client's token is never forwarded");
    let c = claims(exchanged);
    assert_eq!(c["aud"], UPSTREAM, "{c}");
    assert_eq!(c["act"]["sub"].as_str(), Some(gw_agent.id.as_str()), "{c}");
    assert_eq!(c["act"]["act"]["sub"].as_str(), Some(w.planner.id.as_str()), "{c}");
    assert_eq!(c["sub"].as_str(), Some(w.alice.as_str()), "{c}");
    // The list's probe was recorded, and the call is recorded as a call of
    // its own, not taken for the probe.
    let checks = w.s.audit("type=check.decided").await?;
    let about = |probe: bool| {
        checks.iter().any(|e| {
            let r = e["reason"].as_str().unwrap_or_default();
            r.starts_with("probe: ") == probe && r.contains("tool/read_file")
        })
    };
    assert!(about(true) && about(false), "{checks:?}");

    // A tool no scope of the token covers: step up to files.write.
    let (st, www, out) = rpc(&http, &url, &token, call(3, "write_file")).await?;
    assert_eq!(st, 403, "{out}");
    assert!(www.starts_with(r#"Bearer error="insufficient_scope""#), "{www}");
    assert!(www.contains(r#"scope="files.write""#), "{www}");
    assert!(www.contains(&format!("resource_metadata=\"http://{addr}/.well-known/oauth-protected-resource{PREFIX}\"")));

    // Mail waits for Alice; once she approves, the same call goes through.
    let before = upstream.seen().len();
    let (st, _, out) = rpc(&http, &url, &token, call(4, "send_mail")).await?;
    assert_eq!(st, 200, "{out}");
    assert_eq!(out["error"]["code"], code::APPROVAL_REQUIRED, "{out}");
    assert_eq!(out["error"]["data"]["approval_url"], format!("{}/approvals", w.s.issuer));
    let approval = out["error"]["data"]["approval_request"].as_str().context("approval_request")?.to_owned();
    assert!(approval.starts_with("apr_"), "{approval}");
    assert_eq!(upstream.seen().len(), before, "not forwarded before approval");
    let (st, body) =
        w.s.call(Method::POST, &format!("/v1/approvals/{approval}/approve"), Some(&w.alice_token), None).await?;
    ensure!(st == 200, "approve: {st} {body}");
    let (st, _, out) = rpc(&http, &url, &token, call(5, "send_mail")).await?;
    assert_eq!((st, &out["result"]["content"][0]["text"]), (200, &json!("did \"send_mail\"")), "{out}");
    assert_eq!(upstream.seen().len(), before + 1);

    // With files.write, delete_all is covered by scope but refused by policy.
    let writer = client_token(&w, "files.read files.write").await?;
    let (st, _, out) = rpc(&http, &url, &writer, call(6, "delete_all")).await?;
    assert_eq!(st, 200, "{out}");
    assert_eq!(out["error"]["code"], code::FORBIDDEN, "{out}");
    assert_eq!(upstream.seen().len(), before + 1, "a denied call is not forwarded");

    // A revoked token: Mandate's check says no at once, whatever the
    // gateway's status-list cache still says.
    let (st, _, _) =
        w.s.form_headers(
            "/oauth/revoke",
            &[("token", &writer)],
            &[("authorization", &format!("Bearer {}", mandate_testkit::ADMIN_TOKEN))],
        )
        .await?;
    ensure!(st == 200, "revoke: {st}");
    let (st, _, out) = rpc(&http, &url, &writer, call(7, "read_file")).await?;
    ensure!(st == 401 || out["error"]["code"] == code::FORBIDDEN, "a revoked token was let through: {st} {out}");
    assert_eq!(upstream.seen().len(), before + 1);
    Ok(())
}
