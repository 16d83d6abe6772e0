//! Starting `mandate serve` as a child process and talking to it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use mandate_jose::{KeyAlg, SigningKey};
use serde_json::{Value, json};

pub const ADMIN: &str = "process-test-admin-token-0123";
pub const MASTER_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
pub const API: &str = "https://api.example.com";

pub fn mandate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mandate"))
}

/// A free loopback port (bound, then released for the server).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running `mandate serve`.
pub struct Node {
    pub url: String,
    pub child: Child,
}

impl Node {
    /// Starts a node with `args` after `serve` and waits until it is ready.
    pub async fn start(port: u16, issuer: &str, args: &[&str], log: &Path) -> Result<Self> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = mandate()
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}"), "--issuer", issuer, "--log-format", "json"])
            .args(args)
            .env("MANDATE_ADMIN_TOKEN", ADMIN)
            .env("MANDATE_MASTER_KEY", MASTER_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting mandate serve")?;
        let node = Node { url: format!("http://127.0.0.1:{port}"), child };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", node.url)).send().await
                && r.status() == 200
            {
                return Ok(node);
            }
            if Instant::now() > deadline {
                bail!("mandate serve on port {port} did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, no flushing beyond what was committed.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn admin(http: &reqwest::Client, url: &str, path: &str, body: Value) -> Result<Value> {
    let resp = http.post(format!("{url}{path}")).bearer_auth(ADMIN).json(&body).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    ensure!(status.is_success(), "{path}: {status} {body}");
    Ok(body)
}

/// A user, the API with a `read` scope, a policy allowing it, and an agent
/// whose key the test holds. Returns the agent id and key.
pub async fn seed(http: &reqwest::Client, url: &str) -> Result<(String, Arc<SigningKey>)> {
    let user = admin(http, url, "/v1/users", json!({"name": "Ops", "email": "ops@example.com"})).await?;
    admin(http, url, "/v1/resources", json!({"identifier": API, "name": "API", "scopes": {"read": []}})).await?;
    let resp = http
        .put(format!("{url}/v1/policies"))
        .bearer_auth(ADMIN)
        .json(&json!({"policies": format!("permit(principal is Agent, action == Action::\"read\", resource == Api::\"{API}\");")}))
        .send()
        .await?;
    ensure!(resp.status() == 200, "policy: {}", resp.text().await?);
    let key = SigningKey::generate(KeyAlg::EdDSA)?;
    let agent = admin(
        http,
        url,
        "/v1/agents",
        json!({"name": "Load agent", "owner": user["id"], "jwks": {"keys": [key.public().to_json()]}}),
    )
    .await?;
    Ok((agent["client_id"].as_str().context("client_id")?.to_owned(), Arc::new(key)))
}

/// Asks `url` for one token; `Ok(Some(jti))` when one was issued, `Ok(None)`
/// on any refusal, `Err` when the server could not be reached.
pub async fn one_token(
    http: &reqwest::Client,
    url: &str,
    issuer: &str,
    agent: &str,
    key: &SigningKey,
    n: u64,
) -> Result<Option<String>> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let claims = json!({"iss": agent, "sub": agent, "aud": issuer, "iat": now, "exp": now + 60,
                        "jti": format!("{}-{n}", ulid::Ulid::new())});
    let assertion = mandate_jose::jws::sign(key, "JWT", &claims)?;
    let resp = http
        .post(format!("{url}/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion.as_str()),
            ("resource", API),
            ("scope", "read"),
        ])
        .send()
        .await?;
    if resp.status() != 200 {
        return Ok(None);
    }
    // The body is the acknowledgement: only a token the client holds counts.
    let body: Value = resp.json().await?;
    let token = body["access_token"].as_str().context("access_token")?;
    let payload = token.split('.').nth(1).context("JWS payload")?;
    let claims: Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    Ok(Some(claims["jti"].as_str().context("jti")?.to_owned()))
}

/// Runs `mandate audit verify` with `store_args`; returns its exit code and
/// output.
pub fn verify(store_args: &[&str]) -> Result<(i32, String)> {
    let out = mandate().args(["audit", "verify"]).args(store_args).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(-1), text))
}

/// Every event, from `mandate audit export`.
pub fn export(store_args: &[&str]) -> Result<Vec<Value>> {
    let out = mandate().args(["audit", "export", "--format", "jsonl"]).args(store_args).output()?;
    ensure!(out.status.success(), "export failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)?.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

/// The jtis of every `token.issued` event.
pub fn issued_jtis(events: &[Value]) -> std::collections::HashSet<String> {
    events.iter().filter(|e| e["type"] == "token.issued").filter_map(|e| e["jti"].as_str().map(str::to_owned)).collect()
}
