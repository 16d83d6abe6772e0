//! A mock Mandate and a mock MCP server on loopback ports, and a gateway
//! between them, for tests that go through real sockets.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mandate_gateway::{Config, Gateway};
use mandate_jose::dpop::{ProofClaims, access_token_hash, sign_proof};
use mandate_jose::{JwkSet, KeyAlg, SigningKey, access, assertion};
use mandate_model::claims::{AccessTokenClaims, Confirmation};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

pub const GATEWAY_AGENT: &str = "agt_01JGATEWAY0000000000000000";
pub const MCP_RESOURCE: &str = "https://tools.example/mcp";
pub const API_RESOURCE: &str = "https://api.example";
pub const UPSTREAM_AUDIENCE: &str = "https://upstream.example";

static TOKENS: AtomicUsize = AtomicUsize::new(0);

pub fn now() -> i64 {
    mandate_verifier::system_time()
}

/// A loopback listener and its base URL.
pub async fn listen() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

/// A URL where nothing listens.
pub fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// A body fed through a channel, so a test can send events when it likes.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

// ---------------------------------------------------------------- Mandate

/// A mock Mandate: JWKS, the token endpoint (client credentials for the
/// check token, token exchange) and `/v1/check`, answering per tool.
pub struct Mandate {
    pub key: SigningKey,
    pub url: String,
    /// Check answers by action; anything else is an allow.
    pub answers: Mutex<HashMap<String, Value>>,
    pub checks: Mutex<Vec<Value>>,
    pub exchanges: Mutex<Vec<HashMap<String, String>>>,
    pub check_tokens: AtomicUsize,
    /// When set, `/v1/check` and `/oauth/token` answer 503.
    pub down: AtomicBool,
    /// When set, the exchange is refused with `invalid_grant`.
    pub refuse_exchange: AtomicBool,
    check_token: Mutex<String>,
}

impl Mandate {
    pub fn answer(&self, action: &str, answer: Value) {
        self.answers.lock().unwrap().insert(action.into(), answer);
    }

    pub fn checks(&self) -> Vec<Value> {
        self.checks.lock().unwrap().clone()
    }

    pub fn exchanges(&self) -> Vec<HashMap<String, String>> {
        self.exchanges.lock().unwrap().clone()
    }

    pub fn claims(&self, aud: &str, scope: &str) -> AccessTokenClaims {
        let now = now();
        AccessTokenClaims {
            iss: self.url.clone(),
            sub: "usr_01JUSER00000000000000000000".into(),
            aud: aud.into(),
            exp: now + 300,
            iat: now,
            nbf: now,
            jti: format!("tok_{now}_{}", TOKENS.fetch_add(1, Ordering::SeqCst)),
            client_id: "agt_01JCLIENT000000000000000000".into(),
            scope: scope.into(),
            act: None,
            may_act: None,
            authorization_details: None,
            grant_id: None,
            purpose: None,
            cnf: None,
            status: None,
        }
    }

    /// A client's token for `aud`.
    pub fn token(&self, aud: &str) -> String {
        access::mint(&self.key, &self.claims(aud, "tools.read")).unwrap()
    }

    /// A DPoP-bound token and the holder's key.
    pub fn bound_token(&self, aud: &str) -> (String, SigningKey) {
        let holder = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let mut c = self.claims(aud, "tools.read");
        c.cnf = Some(Confirmation { jkt: holder.public().thumbprint() });
        (access::mint(&self.key, &c).unwrap(), holder)
    }
}

pub fn proof(holder: &SigningKey, htm: &str, htu: &str, token: &str, jti: &str) -> String {
    let ath = access_token_hash(token);
    sign_proof(holder, &ProofClaims { jti, htm, htu, iat: now(), ath: Some(ath), nonce: None }).unwrap()
}

pub async fn mandate() -> Arc<Mandate> {
    let (listener, url) = listen().await;
    let m = Arc::new(Mandate {
        key: SigningKey::generate(KeyAlg::EdDSA).unwrap(),
        url,
        answers: Mutex::default(),
        checks: Mutex::default(),
        exchanges: Mutex::default(),
        check_tokens: AtomicUsize::new(0),
        down: AtomicBool::new(false),
        refuse_exchange: AtomicBool::new(false),
        check_token: Mutex::default(),
    });
    let app = Router::new()
        .route("/jwks.json", get(jwks))
        .route("/oauth/token", post(token))
        .route("/v1/check", post(check))
        .with_state(m.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    m
}

async fn jwks(State(m): State<Arc<Mandate>>) -> Json<Value> {
    Json(JwkSet { keys: vec![m.key.public().clone()] }.to_json())
}

async fn token(State(m): State<Arc<Mandate>>, body: Bytes) -> Response {
    if m.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    assert_eq!(form["client_assertion_type"], assertion::CLIENT_ASSERTION_TYPE);
    assert_eq!(assertion::peek_issuer(&form["client_assertion"]).unwrap(), GATEWAY_AGENT);
    match form["grant_type"].as_str() {
        "client_credentials" => {
            assert_eq!(form["scope"], "mandate:check");
            assert_eq!(form["resource"], m.url);
            let n = m.check_tokens.fetch_add(1, Ordering::SeqCst) + 1;
            let t = format!("check-token-{n}");
            *m.check_token.lock().unwrap() = t.clone();
            Json(json!({"access_token": t, "token_type": "Bearer", "expires_in": 300})).into_response()
        }
        "urn:ietf:params:oauth:grant-type:token-exchange" => {
            let n = {
                let mut ex = m.exchanges.lock().unwrap();
                ex.push(form.clone());
                ex.len()
            };
            if m.refuse_exchange.load(Ordering::SeqCst) {
                let e = json!({"error": "invalid_grant", "error_description": "the subject token is revoked"});
                return (StatusCode::BAD_REQUEST, Json(e)).into_response();
            }
            Json(json!({"access_token": format!("exchanged-{n}"), "token_type": "Bearer", "expires_in": 300,
                        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}))
            .into_response()
        }
        other => panic!("unexpected grant {other}"),
    }
}

async fn check(State(m): State<Arc<Mandate>>, req: Request) -> Response {
    if m.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let bearer = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if bearer != format!("Bearer {}", m.check_token.lock().unwrap()) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    let action = body["action"].as_str().unwrap().to_owned();
    m.checks.lock().unwrap().push(body);
    let seq = m.checks.lock().unwrap().len();
    let answer = m.answers.lock().unwrap().get(&action).cloned();
    let mut answer = answer.unwrap_or_else(|| json!({"decision": "allow", "reasons": ["ok"], "chain": []}));
    answer["audit_seq"] = json!(seq);
    Json(answer).into_response()
}

// --------------------------------------------------------------- upstream

/// What the mock MCP server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

/// A mock MCP server with tools `read_file`, `write_file`, `delete_all`,
/// `send_mail`, and a plain HTTP API under `/v1`.
pub struct Upstream {
    pub url: String,
    pub seen: Mutex<Vec<Seen>>,
    /// Answer tools/list as an event stream (with a progress notification
    /// first) instead of JSON.
    pub sse: AtomicBool,
    /// A tools/call of `slow` (and, with `slow_list`, a streamed
    /// tools/list) sends its first event, then waits for this.
    pub release: Notify,
    pub slow_list: AtomicBool,
}

impl Upstream {
    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

pub const PROGRESS_EVENT: &str = "id: ev-1\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";

pub fn tools() -> Value {
    json!([
        {"name": "read_file", "inputSchema": {"type": "object"}},
        {"name": "write_file", "inputSchema": {"type": "object"}},
        {"name": "delete_all", "inputSchema": {"type": "object"}},
        {"name": "send_mail", "inputSchema": {"type": "object"}},
    ])
}

pub async fn upstream() -> Arc<Upstream> {
    let (listener, url) = listen().await;
    let u = Arc::new(Upstream {
        url,
        seen: Mutex::default(),
        sse: AtomicBool::new(false),
        release: Notify::new(),
        slow_list: AtomicBool::new(false),
    });
    let app = Router::new()
        .route("/mcp", post(mcp_post).get(mcp_get).delete(mcp_delete))
        .route("/v1/{*rest}", axum::routing::any(api))
        .with_state(u.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    u
}

fn record(u: &Upstream, method: &str, path: &str, headers: &HeaderMap, body: Value) {
    u.seen.lock().unwrap().push(Seen { method: method.into(), path: path.into(), headers: headers.clone(), body });
}

fn sse_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let mut r = Response::new(Body::new(ChannelBody(rx)));
    r.headers_mut().insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
    r.headers_mut().insert("mcp-session-id", "session-1".parse().unwrap());
    r
}

async fn mcp_post(State(u): State<Arc<Upstream>>, headers: HeaderMap, body: Bytes) -> Response {
    let msg: Value = serde_json::from_slice(&body).unwrap();
    record(&u, "POST", "/mcp", &headers, msg.clone());
    if msg.is_array() {
        let answers: Vec<Value> =
            msg.as_array().unwrap().iter().filter(|m| m.get("id").is_some()).map(answer).collect();
        return Json(Value::Array(answers)).into_response();
    }
    if msg.get("id").is_none() {
        return StatusCode::ACCEPTED.into_response();
    }
    let method = msg["method"].as_str().unwrap_or_default();
    let streamed = (method == "tools/list" && u.sse.load(Ordering::SeqCst))
        || (method == "tools/call" && msg["params"]["name"] == "slow");
    if streamed {
        let (tx, rx) = mpsc::channel(4);
        let final_event = format!("event: message\ndata: {}\n\n", answer(&msg));
        let slow = method == "tools/call" || u.slow_list.load(Ordering::SeqCst);
        let u2 = u.clone();
        tokio::spawn(async move {
            tx.send(Bytes::from(PROGRESS_EVENT)).await.unwrap();
            if slow {
                u2.release.notified().await;
            }
            // The final event in two pieces, split inside the data line.
            let (a, b) = final_event.split_at(final_event.len() / 2);
            tx.send(Bytes::from(a.to_owned())).await.unwrap();
            tx.send(Bytes::from(b.to_owned())).await.unwrap();
        });
        return sse_response(rx);
    }
    let mut r = Json(answer(&msg)).into_response();
    r.headers_mut().insert("mcp-session-id", "session-1".parse().unwrap());
    r
}

fn answer(msg: &Value) -> Value {
    let id = msg["id"].clone();
    match msg["method"].as_str().unwrap_or_default() {
        "initialize" => json!({"jsonrpc": "2.0", "id": id, "result": {
            "protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "mock", "version": "1"}}}),
        "tools/list" => json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools()}}),
        "tools/call" => json!({"jsonrpc": "2.0", "id": id, "result": {
            "content": [{"type": "text", "text": format!("called {}", msg["params"]["name"].as_str().unwrap_or("?"))}]}}),
        _ => json!({"jsonrpc": "2.0", "id": id, "result": {}}),
    }
}

async fn mcp_get(State(u): State<Arc<Upstream>>, headers: HeaderMap) -> Response {
    record(&u, "GET", "/mcp", &headers, Value::Null);
    let (tx, rx) = mpsc::channel(4);
    let list = json!({"jsonrpc": "2.0", "id": 41, "result": {"tools": tools()}});
    tokio::spawn(async move {
        tx.send(Bytes::from(PROGRESS_EVENT)).await.unwrap();
        tx.send(Bytes::from(format!("id: ev-2\ndata: {list}\n\n"))).await.unwrap();
    });
    sse_response(rx)
}

async fn mcp_delete(State(u): State<Arc<Upstream>>, headers: HeaderMap) -> StatusCode {
    record(&u, "DELETE", "/mcp", &headers, Value::Null);
    StatusCode::NO_CONTENT
}

async fn api(State(u): State<Arc<Upstream>>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    record(&u, &method, &path, &headers, Value::String(text));
    let mut r = Json(json!({"path": path})).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer realm=\"upstream\"".parse().unwrap());
    r
}

// ---------------------------------------------------------------- gateway

/// A gateway on a loopback port in front of `upstream`, trusting `issuer`.
pub struct Gw {
    pub url: String,
    pub http: reqwest::Client,
}

pub const MCP_PREFIX: &str = "/mcp/tools";
pub const API_PREFIX: &str = "/api";

pub async fn gateway(issuer: &str, upstream: &str, agent_key: SigningKey) -> Gw {
    gateway_with(issuer, upstream, agent_key, "").await
}

pub async fn gateway_with(issuer: &str, upstream: &str, agent_key: SigningKey, extra: &str) -> Gw {
    let (listener, url) = listen().await;
    let addr = listener.local_addr().unwrap();
    let toml = format!(
        r#"
        issuer = "{issuer}"
        listen = "{addr}"
        client_id = "{GATEWAY_AGENT}"
        key_file = "unused.pk8"
        max_body_bytes = 65536
        {extra}

        [[route]]
        prefix = "{MCP_PREFIX}"
        upstream = "{upstream}/mcp"
        kind = "mcp"
        resource = "{MCP_RESOURCE}"
        upstream_token = "exchange"
        upstream_resource = "{UPSTREAM_AUDIENCE}"
        scopes = ["tools.read", "tools.write"]

        [[route]]
        prefix = "{API_PREFIX}"
        upstream = "{upstream}/v1"
        kind = "http"
        resource = "{API_RESOURCE}"
        upstream_token = "none"
        "#
    );
    let config = Config::from_toml(&toml, std::path::Path::new("/nonexistent")).unwrap();
    let gw = Gateway::with_key(config, agent_key).unwrap();
    tokio::spawn(gw.serve(listener));
    Gw { url, http: reqwest::Client::new() }
}

/// A mock Mandate, a mock upstream and a gateway between them.
pub async fn world() -> (Arc<Mandate>, Arc<Upstream>, Gw) {
    let m = mandate().await;
    let u = upstream().await;
    let gw = gateway(&m.url, &u.url, SigningKey::generate(KeyAlg::EdDSA).unwrap()).await;
    (m, u, gw)
}

impl Gw {
    pub fn mcp_url(&self) -> String {
        format!("{}{MCP_PREFIX}", self.url)
    }

    /// POSTs a JSON-RPC body (any bytes) with a bearer token.
    pub async fn post(&self, token: Option<&str>, body: impl Into<reqwest::Body>) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.mcp_url())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    pub async fn rpc(&self, token: &str, msg: Value) -> reqwest::Response {
        self.post(Some(token), msg.to_string()).await
    }
}

pub fn call(id: i64, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
}

pub fn list(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": {}})
}

pub async fn json_body(resp: reqwest::Response) -> Value {
    let bytes = resp.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

pub fn www_authenticate(resp: &reqwest::Response) -> String {
    resp.headers().get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

pub fn tool_names(result: &Value) -> Vec<String> {
    result["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect()
}
