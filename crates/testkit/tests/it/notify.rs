//! CIBA ping and push (OpenID CIBA §10) and approver notifications over
//! HTTP: a real server, its outbox worker, and local receivers: an HTTP
//! one that answers as each test scripts, and Python's aiosmtpd for email.
// Test code indexes JSON freely: a missing member reads as null and fails
// the comparison that follows.
#![allow(clippy::indexing_slicing, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use hmac::Mac;
use mandate_testkit::TestServer;
use mandate_testkit::scenarios::{CAL, World};
use reqwest::Method;
use serde_json::{Value, json};

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Got {
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

/// An HTTP receiver on loopback: records every POST, answers with the
/// next scripted status (then 204).
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
    url: String,
}

impl Receiver {
    async fn start(statuses: &[u16]) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://127.0.0.1:{}/cb", listener.local_addr()?.port());
        let r =
            Receiver { url, statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())), ..Default::default() };
        let state = r.clone();
        let app = axum::Router::new().route(
            "/cb",
            axum::routing::post(
                |axum::extract::State(s): axum::extract::State<Receiver>,
                 headers: axum::http::HeaderMap,
                 body: axum::body::Bytes| async move {
                    s.got.lock().unwrap().push(Got { headers, body: body.to_vec() });
                    let status = s.statuses.lock().unwrap().pop_front().unwrap_or(204);
                    axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::NO_CONTENT)
                },
            ),
        );
        tokio::spawn(axum::serve(listener, app.with_state(state)).into_future());
        Ok(r)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
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

    /// Moves the server's clock on by `step` until `n` requests have
    /// arrived. The worker records a failed attempt (and when the next
    /// is due) only after the receiver has answered, so one advance made
    /// in between would be counted from the new time: advancing again
    /// until the retry comes does not depend on that race.
    async fn advance_until(&self, s: &TestServer, step: i64, n: usize) -> Result<Vec<Got>> {
        for _ in 0..100 {
            s.clock.advance(time::Duration::seconds(step));
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.got().len() >= n {
                return Ok(self.got());
            }
        }
        anyhow::bail!("{} requests arrived, not {n}", self.got().len())
    }
}

/// The audit events `query` finds, once there is one (a few seconds at most).
async fn audited(w: &World, query: &str) -> Result<Vec<Value>> {
    for _ in 0..100 {
        let found = w.s.audit(query).await?;
        if !found.is_empty() {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.s.audit(query).await
}

async fn world() -> Result<World> {
    World::new(TestServer::start_with(|c| c.dev_loopback_fetch = true).await?).await
}

async fn register(w: &World, mode: &str, url: &str) -> Result<(u16, Value)> {
    w.s.admin(
        Method::PATCH,
        &format!("/v1/agents/{}", w.planner.id),
        Some(json!({"backchannel_token_delivery_mode": mode, "backchannel_client_notification_endpoint": url})),
    )
    .await
}

/// A CIBA request for `write` (which waits for Alice) with a notification token.
async fn ask(w: &World, token: &str) -> Result<String> {
    ask_with(w, Some(token)).await
}

/// A CIBA request for `write`, with a notification token when given.
async fn ask_with(w: &World, token: Option<&str>) -> Result<String> {
    let mut form = vec![
        ("login_hint", "alice@example.com"),
        ("scope", "write"),
        ("resource", CAL),
        ("binding_message", "book the venue"),
    ];
    if let Some(t) = token {
        form.push(("client_notification_token", t));
    }
    let (st, body) = w.ciba(&w.planner, &form).await?;
    ensure!(st == 200, "bc-authorize: {st} {body}");
    body["auth_req_id"].as_str().map(str::to_owned).context("auth_req_id")
}

async fn decide(w: &World, id: &str, decision: &str) -> Result<()> {
    let path = format!("/v1/approvals/{id}/{decision}");
    let (st, body) = w.s.call(Method::POST, &path, Some(&w.alice_token), None).await?;
    ensure!(st == 200, "{decision}: {st} {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_calls_the_agent_back_and_the_token_endpoint_then_answers() -> Result<()> {
    let w = world().await?;
    let rx = Receiver::start(&[]).await?;
    let (st, body) = register(&w, "ping", &rx.url).await?;
    ensure!(st == 200 && body["backchannel_token_delivery_mode"] == "ping", "{st} {body}");
    let (st, shown) = w.s.admin(Method::GET, &format!("/v1/agents/{}", w.planner.id), None).await?;
    ensure!(st == 200 && shown["backchannel_client_notification_endpoint"] == rx.url.as_str(), "{shown}");
    ensure!(shown["backchannel_token_delivery_mode"] == "ping", "{shown}");
    // The token is required of a ping agent.
    let (st, body) =
        w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "write"), ("resource", CAL)]).await?;
    ensure!(st == 400 && body["error"] == "invalid_request", "{st} {body}");
    let id = ask(&w, "ping-secret-1").await?;
    let (st, p) = w.poll(&w.planner, &id).await?;
    ensure!(st == 400 && p["error"] == "authorization_pending", "polling stays allowed in ping mode: {st} {p}");
    decide(&w, &id, "approve").await?;
    let got = rx.wait_for(1).await?;
    ensure!(got[0].header("authorization") == "Bearer ping-secret-1", "{:?}", got[0].headers);
    ensure!(got[0].json() == json!({"auth_req_id": id}), "{}", got[0].json());
    ensure!(got[0].header("content-type").starts_with("application/json"));
    w.s.clock.advance(time::Duration::seconds(6));
    let (st, tokens) = w.poll(&w.planner, &id).await?;
    ensure!(st == 200 && tokens["access_token"].is_string(), "{st} {tokens}");
    // The worker records the outcome just after the receiver answered.
    let sent = audited(&w, "type=delivery.sent").await?;
    ensure!(sent.len() == 1 && sent[0]["reason"].as_str().is_some_and(|r| r.contains(&id)), "{sent:?}");
    ensure!(!serde_json::to_string(&sent)?.contains("ping-secret-1"), "the bearer token reached the trail");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_sends_a_token_that_verifies_and_polling_is_refused() -> Result<()> {
    let w = world().await?;
    let rx = Receiver::start(&[]).await?;
    let (st, body) = register(&w, "push", &rx.url).await?;
    ensure!(st == 200, "{st} {body}");
    let id = ask(&w, "push-secret-1").await?;
    decide(&w, &id, "approve").await?;
    let got = rx.wait_for(1).await?;
    ensure!(got[0].header("authorization") == "Bearer push-secret-1");
    let pushed = got[0].json();
    ensure!(pushed["auth_req_id"] == id.as_str() && pushed["token_type"] == "Bearer", "{pushed}");
    ensure!(pushed["expires_in"].as_i64().is_some_and(|e| e > 0) && pushed["scope"] == "write", "{pushed}");
    let at = pushed["access_token"].as_str().context("access_token")?;
    let active = w.s.introspect(at).await?;
    ensure!(active["active"] == true && active["sub"] == w.alice.as_str(), "{active}");
    ensure!(active["client_id"] == w.planner.id.as_str() && active["aud"] == CAL, "{active}");
    // CIBA §11: a push client does not poll.
    let (st, p) = w.poll(&w.planner, &id).await?;
    ensure!(st == 400 && p["error"] == "unauthorized_client", "{st} {p}");
    // A denial is pushed as an error.
    let denied = ask(&w, "push-secret-2").await?;
    decide(&w, &denied, "deny").await?;
    let got = rx.wait_for(2).await?;
    let body = got[1].json();
    ensure!(body["auth_req_id"] == denied.as_str() && body["error"] == "access_denied", "{body}");
    ensure!(body.get("access_token").is_none(), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_twice_gets_it_on_the_third_attempt() -> Result<()> {
    let w = world().await?;
    let rx = Receiver::start(&[500, 503]).await?;
    register(&w, "ping", &rx.url).await?;
    let id = ask(&w, "t1").await?;
    decide(&w, &id, "approve").await?;
    rx.wait_for(1).await?;
    // Not again before its backoff (10 s and a little, on the server's clock).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(rx.got().len() == 1, "retried before the backoff");
    rx.advance_until(&w.s, 13, 2).await?;
    let got = rx.advance_until(&w.s, 37, 3).await?;
    ensure!(got.iter().all(|g| g.json() == json!({"auth_req_id": id})));
    let sent = audited(&w, "type=delivery.sent").await?;
    ensure!(sent.len() == 1 && sent[0]["reason"].as_str().is_some_and(|r| r.contains("after 3 attempts")), "{sent:?}");
    ensure!(w.s.audit("type=delivery.failed").await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_always_fails_ends_in_an_audited_failure() -> Result<()> {
    let w = world().await?;
    let rx = Receiver::start(&[500; 10]).await?;
    register(&w, "push", &rx.url).await?;
    let id = ask(&w, "t2").await?;
    decide(&w, &id, "approve").await?;
    rx.wait_for(1).await?;
    for n in 2..=6 {
        rx.advance_until(&w.s, 361, n).await?;
    }
    let failed = audited(&w, "type=delivery.failed").await?;
    ensure!(failed.len() == 1, "{failed:?}");
    let why = failed[0]["reason"].as_str().unwrap_or_default();
    ensure!(why.contains(&id) && why.contains("after 6 attempts") && why.contains("HTTP 500"), "{why}");
    ensure!(failed[0]["decision"] == "deny", "{}", failed[0]);
    // Nothing more is tried, and the token pushed is in no event.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(rx.got().len() == 6, "{} attempts", rx.got().len());
    let at = rx.got()[0].json()["access_token"].as_str().unwrap_or_default().to_owned();
    ensure!(!at.is_empty() && !serde_json::to_string(&w.s.audit("").await?)?.contains(&at), "a token in the trail");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_must_be_https_at_public_addresses_unless_dev_loopback() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let (_, meta) = w.s.call(Method::GET, "/.well-known/oauth-authorization-server", None, None).await?;
    ensure!(meta["backchannel_token_delivery_modes_supported"] == json!(["poll", "ping", "push"]), "{meta}");
    for (mode, url) in [
        ("ping", "http://127.0.0.1:9/cb"),
        ("push", "https://127.0.0.1/cb"),
        ("ping", "https://10.0.0.7/cb"),
        ("ping", "https://169.254.169.254/latest"),
        ("ping", "https://[::1]/cb"),
        ("push", "https://localhost/cb"),
        ("ping", "http://agent.example/cb"),
        ("ping", "https://user:pw@agent.example/cb"),
        ("ping", "not a url"),
        ("pong", "https://agent.example/cb"),
    ] {
        let (st, body) = register(&w, mode, url).await?;
        ensure!(st == 400, "{mode} {url}: {st} {body}");
    }
    let (st, body) =
        w.s.admin(
            Method::PATCH,
            &format!("/v1/agents/{}", w.planner.id),
            Some(json!({"backchannel_token_delivery_mode": "push"})),
        )
        .await?;
    ensure!(st == 400 && body["detail"].as_str().is_some_and(|d| d.contains("endpoint")), "{st} {body}");
    // Nothing was kept: the agent still polls.
    let (st, body) =
        w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "write"), ("resource", CAL)]).await?;
    ensure!(st == 200, "{st} {body}");
    let (st, body) = register(&w, "ping", "https://agent.example/cb").await?;
    ensure!(st == 200, "{st} {body}");
    // A new agent may register it at once, and is checked the same way.
    let (st, body) = w
        .s
        .admin(
            Method::POST,
            "/v1/agents",
            Some(json!({"name": "Pusher", "owner": w.alice, "jwks": {"keys": [w.planner.key.public().to_json()]},
                "backchannel_token_delivery_mode": "push", "backchannel_client_notification_endpoint": "https://192.168.1.2/cb"})),
        )
        .await?;
    ensure!(st == 400, "{st} {body}");
    // With --dev-loopback-fetch, http on loopback is accepted.
    let dev = world().await?;
    let (st, body) = register(&dev, "ping", "http://127.0.0.1:9/cb").await?;
    ensure!(st == 200, "{st} {body}");
    Ok(())
}

/// HMAC-SHA256 of `id.timestamp.body` under `key`, by the `hmac` crate
/// (Mandate signs with aws-lc-rs), as a Standard Webhooks signature.
fn expected_signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_are_told_by_a_signed_webhook() -> Result<()> {
    let w = world().await?;
    let rx = Receiver::start(&[]).await?;
    let secret = "a-webhook-secret-of-32-bytes-0123";
    let hook = mandate_server::notify::WebhookNotifier::new(&rx.url, secret, true, w.s.mandate.clock())
        .map_err(anyhow::Error::msg)?;
    w.s.mandate.set_notifiers(vec![Arc::new(hook)]);
    let id = ask_with(&w, None).await?;
    let got = rx.wait_for(1).await?;
    let g = &got[0];
    ensure!(g.header("webhook-id") == id, "{:?}", g.headers);
    let ts = g.header("webhook-timestamp");
    ensure!(ts.parse::<i64>().is_ok_and(|t| (t - w.s.now()).abs() < 5), "{ts}");
    let signature = g.header("webhook-signature");
    ensure!(signature == expected_signature(secret.as_bytes(), &id, ts, &g.body), "{signature}");
    ensure!(signature != expected_signature(b"another secret of some length", &id, ts, &g.body));
    let notice = g.json();
    ensure!(notice["type"] == "approval.requested", "{notice}");
    let data = &notice["data"];
    ensure!(data["approval"] == id.as_str() && data["url"] == format!("{}/approvals", w.s.issuer), "{data}");
    ensure!(data["agent"]["id"] == w.planner.id.as_str() && data["user"]["id"] == w.alice.as_str(), "{data}");
    ensure!(data["scopes"] == "write" && data["binding_message"] == "book the venue" && data["resource"] == CAL);
    ensure!(data["recipients"][0]["email"] == "alice@example.com", "{data}");
    // A self-authorised request waits for nobody: no notice.
    w.granted(&w.planner, "read").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(rx.got().len() == 1, "{} notices", rx.got().len());
    Ok(())
}

/// The Python with aiosmtpd: `MANDATE_TEST_SMTP_PYTHON` (set by .ci/run
/// to its venv), else tests/smtp/.venv, else `python3`.
fn smtp_python() -> String {
    if let Ok(p) = std::env::var("MANDATE_TEST_SMTP_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/smtp/.venv/bin/python");
    if std::path::Path::new(venv).exists() { venv.to_owned() } else { "python3".to_owned() }
}

/// Kills the SMTP sink when the test ends, however it ends.
struct Sink(std::process::Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_are_emailed_through_smtp() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let maildir = dir.path().join("mail");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let python = smtp_python();
    let _sink = Sink(
        std::process::Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting aiosmtpd with {python} (tests/smtp/requirements.txt)"))?,
    );
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(up, "aiosmtpd did not start with {python}: install tests/smtp/requirements.txt (see .ci/run)");
    let w = world().await?;
    let smtp =
        mandate_server::notify::SmtpNotifier::new(&format!("smtp://127.0.0.1:{port}"), "Mandate <mandate@example.com>")
            .map_err(anyhow::Error::msg)?;
    w.s.mandate.set_notifiers(vec![Arc::new(smtp)]);
    let id = ask_with(&w, None).await?;
    let mut mail = String::new();
    for _ in 0..100 {
        if let Ok(entries) = std::fs::read_dir(maildir.join("new")) {
            for e in entries.flatten() {
                mail = std::fs::read_to_string(e.path())?;
            }
        }
        if !mail.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(!mail.is_empty(), "no email arrived");
    // The body is quoted-printable: join its soft line breaks.
    let mail = mail.replace("=\r\n", "").replace("=\n", "");
    ensure!(
        mail.contains("To: Alice <alice@example.com>") || mail.contains("To: \"Alice\" <alice@example.com>"),
        "{mail}"
    );
    ensure!(mail.contains("From: Mandate <mandate@example.com>"), "{mail}");
    ensure!(mail.contains(&format!("{}/approvals", w.s.issuer)) && mail.contains(&id), "{mail}");
    ensure!(mail.contains("book the venue") && mail.contains(&w.planner.id), "{mail}");
    let sent = audited(&w, "type=delivery.sent").await?;
    ensure!(sent.len() == 1 && sent[0]["reason"].as_str().is_some_and(|r| r.starts_with("email ")), "{sent:?}");
    Ok(())
}
