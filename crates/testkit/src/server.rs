use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::Engine;
use mandate_core::{Config, Mandate, ManualClock, SystemRandom};
use mandate_jose::kek::Kek;
use mandate_jose::{KeyAlg, SigningKey};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const KEK: [u8; 32] = [42u8; 32];

/// A running server and a client for it.
pub struct TestServer {
    pub url: String,
    /// The issuer (defaults to `url`; restart tests pin it).
    pub issuer: String,
    pub http: reqwest::Client,
    pub mandate: Arc<Mandate>,
    pub clock: Arc<ManualClock>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// An agent registered with a key the test holds.
pub struct TestAgent {
    pub id: String,
    pub key: SigningKey,
}

impl TestServer {
    /// A fresh server on a temporary SQLite store.
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// A fresh server whose configuration `tweak` may change.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_owned();
        let clock = Arc::new(ManualClock::new(mandate_core::Clock::now(&mandate_core::SystemClock)));
        let mut s = Self::start_in(&dir, clock, tweak).await?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// A server over the store in `dir` (for restart tests).
    pub async fn start_in(dir: &Path, clock: Arc<ManualClock>, tweak: impl FnOnce(&mut Config)) -> Result<Self> {
        let store = mandate_store_sqlite::SqliteStore::open(&dir.join("mandate.db")).await?;
        Self::start_on(Arc::new(store), dir, clock, tweak).await
    }

    /// A fresh server where clients may register themselves (DESIGN §9):
    /// a registration owner (returned), dynamic registration on, and client
    /// metadata documents fetched from loopback (`--dev-loopback-fetch`).
    pub async fn start_registering(tweak: impl FnOnce(&mut Config)) -> Result<(Self, String)> {
        use mandate_core::store::{Change, Mutation, Store};
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_owned();
        let store = mandate_store_sqlite::SqliteStore::open(&dir.join("mandate.db")).await?;
        let owner = crate::conformance::user("registrar@example.com");
        let owner_id = owner.id;
        store.commit(Change::new().with(Mutation::InsertUser(owner))).await?;
        let clock = Arc::new(ManualClock::new(mandate_core::Clock::now(&mandate_core::SystemClock)));
        let mut s = Self::start_on(Arc::new(store), &dir, clock, |c| {
            c.registration_owner = Some(owner_id);
            c.dynamic_registration = true;
            c.dev_loopback_fetch = true;
            tweak(c);
        })
        .await?;
        s.mandate.set_metadata_fetcher(Arc::new(mandate_server::fetch::GuardedFetcher::new(true, None)?));
        s._tmp = Some(tmp);
        Ok((s, owner_id.to_string()))
    }

    /// A server over any store; several may share one, as nodes do.
    pub async fn start_on(
        store: Arc<dyn mandate_core::Store>,
        dir: &Path,
        clock: Arc<ManualClock>,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Self> {
        Self::start_full(store, dir, clock, Arc::new(SystemRandom), test_edge(), tweak).await
    }

    /// A fresh server with the edge set up as `edge` says (rate limits,
    /// connection limits, trusted proxies).
    pub async fn start_with_edge(edge: mandate_server::edge::EdgeConfig) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_owned();
        let clock = Arc::new(ManualClock::new(mandate_core::Clock::now(&mandate_core::SystemClock)));
        let store = mandate_store_sqlite::SqliteStore::open(&dir.join("mandate.db")).await?;
        let mut s = Self::start_full(Arc::new(store), &dir, clock, Arc::new(SystemRandom), edge, |_| {}).await?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// A server over any store and random source.
    pub async fn start_full(
        store: Arc<dyn mandate_core::Store>,
        dir: &Path,
        clock: Arc<ManualClock>,
        rng: Arc<dyn mandate_core::Random>,
        edge: mandate_server::edge::EdgeConfig,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let mut config = Config::new(&url);
        tweak(&mut config);
        let issuer = config.issuer.clone();
        let mandate = Arc::new(Mandate::open(store, clock.clone(), rng, Kek::from_bytes(&KEK)?, config).await?);
        mandate.ensure_admin_token(Some(ADMIN_TOKEN)).await?;
        // As `mandate serve` does: trusted issuers get a guarded fetcher.
        if !mandate.config().trusted_issuers.is_empty() {
            let dev = mandate.config().dev_loopback_fetch;
            mandate.set_issuer_fetcher(Arc::new(mandate_server::fetch::GuardedFetcher::for_issuers(dev)?));
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let state = mandate_server::AppState::with_edge(mandate.clone(), edge);
        let task = tokio::spawn(mandate_server::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            url,
            issuer,
            http: reqwest::Client::new(),
            mandate,
            clock,
            data_dir: dir.to_owned(),
            _tmp: None,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops the server gracefully and hands back its temporary directory.
    pub async fn stop(mut self) -> Result<Option<tempfile::TempDir>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(self._tmp.take())
    }

    pub fn now(&self) -> i64 {
        self.clock.as_ref().now_unix()
    }

    /// An admin API call; returns status and JSON body (or `null`).
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        self.call(method, path, Some(ADMIN_TOKEN), body).await
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// POSTs a form to an OAuth endpoint.
    pub async fn form(&self, path: &str, params: &[(&str, &str)]) -> Result<(u16, Value)> {
        let resp = self.http.post(format!("{}{path}", self.url)).form(params).send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// POSTs a form with extra request headers; returns the status, the
    /// JSON body and the response headers.
    pub async fn form_headers(
        &self,
        path: &str,
        params: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value, reqwest::header::HeaderMap)> {
        let mut req = self.http.post(format!("{}{path}", self.url)).form(params);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let h = resp.headers().clone();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null), h))
    }

    /// A DPoP proof by `key` for `htm` on this server's `path`.
    pub fn dpop(&self, key: &mandate_jose::SigningKey, htm: &str, path: &str, nonce: Option<&str>) -> String {
        let htu = format!("{}{path}", self.issuer);
        let jti = fresh_jti();
        let claims = mandate_jose::dpop::ProofClaims { jti: &jti, htm, htu: &htu, iat: self.now(), ath: None, nonce };
        mandate_jose::dpop::sign_proof(key, &claims).unwrap_or_default()
    }

    /// POSTs a form to an OAuth endpoint with `assertion` as the client's
    /// `private_key_jwt` credentials, ahead of `params`.
    pub async fn form_asserted(&self, assertion: &str, path: &str, params: &[(&str, &str)]) -> Result<(u16, Value)> {
        let mut all = vec![
            ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion),
        ];
        all.extend_from_slice(params);
        self.form(path, &all).await
    }

    pub async fn create_user(&self, email: &str) -> Result<String> {
        let (status, body) =
            self.admin(reqwest::Method::POST, "/v1/users", Some(json!({"name": "Test User", "email": email}))).await?;
        anyhow::ensure!(status == 201, "create user: {status} {body}");
        Ok(body.get("id").and_then(Value::as_str).context("id")?.to_owned())
    }

    pub async fn create_resource(&self, identifier: &str, scopes: Value) -> Result<Value> {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/v1/resources",
                Some(json!({"identifier": identifier, "name": "Test API", "scopes": scopes})),
            )
            .await?;
        anyhow::ensure!(status == 201, "create resource: {status} {body}");
        Ok(body)
    }

    pub async fn put_policies(&self, text: &str) -> Result<()> {
        let (status, body) = self.admin(reqwest::Method::PUT, "/v1/policies", Some(json!({"policies": text}))).await?;
        anyhow::ensure!(status == 200, "put policies: {status} {body}");
        Ok(())
    }

    /// Registers an agent with a fresh key of `alg`.
    pub async fn create_agent(&self, owner: &str, alg: KeyAlg) -> Result<TestAgent> {
        let key = SigningKey::generate(alg)?;
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/v1/agents",
                Some(json!({"name": "Test agent", "owner": owner, "jwks": {"keys": [key.public().to_json()]}})),
            )
            .await?;
        anyhow::ensure!(status == 201, "create agent: {status} {body}");
        Ok(TestAgent { id: body.get("client_id").and_then(Value::as_str).context("client_id")?.to_owned(), key })
    }

    /// The usual set-up: a user, an API with `read`/`write`, a policy
    /// allowing agents `read`, and one agent.
    pub async fn seed(&self) -> Result<(String, TestAgent)> {
        let user = self.create_user("owner@example.com").await?;
        self.create_resource("https://api.example.com", json!({"read": [], "write": []})).await?;
        self.put_policies(
            r#"permit(principal is Agent, action == Action::"read", resource == Api::"https://api.example.com");"#,
        )
        .await?;
        let agent = self.create_agent(&user, KeyAlg::EdDSA).await?;
        Ok((user, agent))
    }

    /// A client assertion for `agent` with the standard claims, `extra`
    /// merged over them (a `null` removes a claim).
    pub fn assertion(&self, agent: &TestAgent, extra: Value) -> String {
        let now = self.now();
        let mut claims = json!({
            "iss": agent.id, "sub": agent.id, "aud": self.issuer, "iat": now, "exp": now + 120,
            "jti": fresh_jti(),
        });
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if v.is_null() {
                    c.remove(k);
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        mandate_jose::jws::sign(&agent.key, "JWT", &claims).unwrap_or_default()
    }

    /// `client_credentials` with a `private_key_jwt` assertion.
    pub async fn token_with(&self, assertion: &str, resource: &str, scope: &str) -> Result<(u16, Value)> {
        self.form_asserted(
            assertion,
            "/oauth/token",
            &[("grant_type", "client_credentials"), ("resource", resource), ("scope", scope)],
        )
        .await
    }

    pub async fn token(&self, agent: &TestAgent, resource: &str, scope: &str) -> Result<(u16, Value)> {
        let a = self.assertion(agent, json!({}));
        self.token_with(&a, resource, scope).await
    }

    /// Every audit event matching `query` (a query string such as
    /// `type=token.issued&jti=tok_…`), following the cursor.
    pub async fn audit(&self, query: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut after = 0u64;
        loop {
            let sep = if query.is_empty() { "" } else { "&" };
            let (st, body) = self
                .admin(reqwest::Method::GET, &format!("/v1/audit?{query}{sep}after={after}&limit=1000"), None)
                .await?;
            anyhow::ensure!(st == 200, "audit query {query}: {st} {body}");
            let events = body.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
            out.extend(events);
            match body.get("next").and_then(Value::as_u64) {
                Some(n) => after = n,
                None => return Ok(out),
            }
        }
    }

    /// `GET /v1/audit/verify` as the admin.
    pub async fn verify_audit(&self) -> Result<Value> {
        let (st, body) = self.admin(reqwest::Method::GET, "/v1/audit/verify", None).await?;
        anyhow::ensure!(st == 200, "verify: {st} {body}");
        Ok(body)
    }

    /// Introspects `token` as the admin.
    pub async fn introspect(&self, token: &str) -> Result<Value> {
        let resp = self
            .http
            .post(format!("{}/oauth/introspect", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .form(&[("token", token)])
            .send()
            .await?;
        Ok(resp.json().await?)
    }
}

/// The edge of test servers: no rate limits (the tests call far faster
/// than any client would), the production connection limits.
pub fn test_edge() -> mandate_server::edge::EdgeConfig {
    mandate_server::edge::EdgeConfig { per_address: None, per_client: None, ..Default::default() }
}

/// A random `jti`.
pub fn fresh_jti() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut b).ok();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

trait UnixNow {
    fn now_unix(&self) -> i64;
}

impl UnixNow for ManualClock {
    fn now_unix(&self) -> i64 {
        mandate_core::Clock::now(self).unix_timestamp()
    }
}
