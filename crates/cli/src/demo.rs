//! `mandate demo`: the whole story, end to end, against a real server and
//! the example calendar API, on a temporary directory. Every step is a real
//! HTTP call and is printed as it happens; any surprise ends the demo with
//! exit code 1.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use mandate_core::{Config, Mandate, Store, SystemClock, SystemRandom};
use mandate_jose::dpop::{ProofClaims, access_token_hash, sign_proof};
use mandate_jose::{KeyAlg, SigningKey, jws};
use reqwest::{Client, Method};
use serde_json::{Value, json};

/// `PLANNER` is replaced by the planner's id once it is registered. No line
/// names the summarizer it spawns: an ephemeral agent is decided as its
/// parent, within its spawn scopes (ADR 0022).
const POLICIES: &str = r#"
// Alice's team may use the calendar.
permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
// Persistent agents may read the calendar as themselves (the nightly job)
// or for their owner (the planner), never for someone else.
permit (principal is Agent, action in [Action::"list", Action::"get"], resource) when { principal.kind == "persistent" }
  unless { context has user && principal.owner != context.user };
// The planner may be granted event creation for its owner: the grant self-authorises.
permit (principal == Agent::"PLANNER", action == Action::"create", resource is Api)
  when { context has user && principal.owner == context.user };
// Creating a sensitive event needs the user's approval, each time.
@approval("user")
permit (principal == Agent::"PLANNER", action == Action::"create", resource is Resource) when { resource.hasTag("sensitive") && resource.getTag("sensitive") == "true" }
  when { context has user && principal.owner == context.user };
permit (principal == Agent::"PLANNER", action == Action::"create", resource is Resource) unless { resource.hasTag("sensitive") && resource.getTag("sensitive") == "true" }
  when { context has user && principal.owner == context.user };
// The planner may spawn helpers (which then act only within what they are given).
permit (principal == Agent::"PLANNER", action == Action::"mandate:spawn", resource);
"#;

/// An OAuth client of the demo: an agent with its private_key_jwt key and
/// its own DPoP key.
struct DemoAgent {
    id: String,
    key: SigningKey,
    dpop: SigningKey,
}

struct Demo {
    http: Client,
    issuer: String,
    calendar: String,
    /// A CI system's OpenID issuer, trusted for workload identity, and its key.
    ci: String,
    ci_key: SigningKey,
    admin: String,
    step: u32,
}

impl Demo {
    fn step(&mut self, title: &str) {
        self.step += 1;
        println!("\n{}. {title}", self.step);
    }

    async fn call(&self, method: Method, url: &str, bearer: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, url).bearer_auth(bearer);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (st, v) = self.call(method, &format!("{}{path}", self.issuer), &self.admin, body).await?;
        ensure!((200..300).contains(&st), "{path}: {st} {v}");
        Ok(v)
    }

    fn assertion(&self, c: &DemoAgent) -> Result<String> {
        let now = now();
        let claims = json!({"iss": c.id, "sub": c.id, "aud": self.issuer, "iat": now, "exp": now + 60,
                            "jti": ulid::Ulid::new().to_string()});
        Ok(jws::sign(&c.key, "JWT", &claims)?)
    }

    /// A workload token the CI issues to a job whose subject is `sub`.
    fn ci_token(&self, sub: &str) -> Result<String> {
        let n = now();
        let claims = json!({"iss": self.ci, "sub": sub, "aud": self.issuer, "iat": n, "exp": n + 300,
                            "jti": ulid::Ulid::new().to_string()});
        Ok(jws::sign(&self.ci_key, "JWT", &claims)?)
    }

    /// The `jwt-bearer` grant with a workload token: no other client
    /// authentication; the token names the agent. DPoP-bound to `dpop`.
    async fn redeem_workload(&self, dpop: &SigningKey, jwt: String) -> Result<reqwest::Response> {
        let url = format!("{}/oauth/token", self.issuer);
        let form = [
            ("grant_type", mandate_jose::federated::JWT_BEARER_GRANT.to_owned()),
            ("assertion", jwt),
            ("resource", self.calendar.clone()),
            ("scope", "calendar:read".to_owned()),
        ];
        let proof = self.proof(dpop, "POST", &url, None)?;
        Ok(self.http.post(&url).header("DPoP", proof).form(&form).send().await?)
    }

    fn proof(&self, key: &SigningKey, htm: &str, url: &str, token: Option<&str>) -> Result<String> {
        let jti = ulid::Ulid::new().to_string();
        let claims =
            ProofClaims { jti: &jti, htm, htu: url, iat: now(), ath: token.map(access_token_hash), nonce: None };
        Ok(sign_proof(key, &claims)?)
    }

    /// A token-endpoint (or bc-authorize) call by `c`, DPoP-bound.
    async fn oauth(&self, c: &DemoAgent, path: &str, params: &[(&str, &str)]) -> Result<(u16, Value)> {
        let assertion = self.assertion(c)?;
        let mut form = vec![
            ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion.as_str()),
        ];
        form.extend_from_slice(params);
        let url = format!("{}{path}", self.issuer);
        let mut req = self.http.post(&url).form(&form);
        if path == "/oauth/token" {
            req = req.header("DPoP", self.proof(&c.dpop, "POST", &url, None)?);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// A calendar call with a DPoP-bound token.
    async fn calendar(
        &self,
        dpop: &SigningKey,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.calendar);
        let proof = self.proof(dpop, method.as_str(), &url, Some(token))?;
        let mut req =
            self.http.request(method, &url).header("authorization", format!("DPoP {token}")).header("DPoP", proof);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        // The challenge naming the error, if any (one per scheme).
        let all: Vec<&str> =
            resp.headers().get_all("www-authenticate").iter().filter_map(|v| v.to_str().ok()).collect();
        let challenge = all.iter().find(|c| c.contains("error=")).or(all.first()).map(|c| (*c).to_owned());
        let mut v: Value = resp.json().await.unwrap_or(Value::Null);
        if let Some(ch) = challenge {
            if !v.is_object() {
                v = json!({});
            }
            if let Some(obj) = v.as_object_mut() {
                obj.insert("www_authenticate".into(), json!(ch));
            }
        }
        Ok((status, v))
    }
}

fn now() -> i64 {
    mandate_core::Clock::now(&SystemClock).unix_timestamp()
}

fn text(v: &Value, key: &str) -> Result<String> {
    v[key].as_str().map(str::to_owned).with_context(|| format!("{key} missing in {v}"))
}

fn show(label: &str, v: impl std::fmt::Display) {
    println!("   {label:<22} {v}");
}

/// Runs the demo; `Ok(true)` when every step went as told.
pub async fn run() -> Result<bool> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    println!("Mandate demo: a server and the example calendar API on {}", dir.path().display());

    // Mandate, on an embedded SQLite store in the temporary directory.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let issuer = format!("http://{}", listener.local_addr()?);
    let store: Arc<dyn Store> = crate::serve::open_store(dir.path(), None).await?;
    let kek = mandate_jose::kek::Kek::from_bytes(&mandate_jose::kek::Kek::generate_bytes()?)?;
    // A CI system's OpenID issuer (discovery and keys), trusted for
    // workload identity: its agents hold no key of their own.
    let ci_key = SigningKey::generate(KeyAlg::ES256)?;
    let ci_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ci = format!("http://{}", ci_listener.local_addr()?);
    tokio::spawn(serve_ci_issuer(ci_listener, ci.clone(), ci_key.public().to_json()));
    let mut config = Config::new(&issuer);
    config.allow_client_secrets = false;
    config.dev_loopback_fetch = true;
    config.trusted_issuers = vec![mandate_core::trust::TrustedIssuer {
        issuer: ci.clone(),
        jwks_uri: None,
        uses: [mandate_core::trust::IssuerUse::Workload].into(),
        resolve_by_email: false,
    }];
    let mandate =
        Arc::new(Mandate::open(store.clone(), Arc::new(SystemClock), Arc::new(SystemRandom), kek, config).await?);
    mandate.set_issuer_fetcher(Arc::new(mandate_server::fetch::GuardedFetcher::for_issuers(true)?));
    let admin = format!("mnd_admin_demo_{}", ulid::Ulid::new());
    mandate.ensure_admin_token(Some(&admin)).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mandate_server::serve(listener, mandate_server::AppState::new(mandate), async {
        let _ = stopped.await;
    }));

    let cal_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let calendar = format!("http://{}", cal_listener.local_addr()?);
    let mut d =
        Demo { http: Client::new(), issuer: issuer.clone(), calendar: calendar.clone(), ci, ci_key, admin, step: 0 };
    println!("   Mandate at {issuer}, the calendar at {calendar}");

    let outcome = story(&mut d, store.as_ref(), cal_listener).await;
    let _ = stop.send(());
    let _ = server.await;
    match outcome {
        Ok(()) => {
            println!("\nDone in {:.1} s: every step went as told.", started.elapsed().as_secs_f64());
            Ok(true)
        }
        Err(e) => {
            println!("\nThe demo stopped at step {}: {e:#}", d.step);
            Ok(false)
        }
    }
}

/// The demo's steps, in the order the README tells them. (Long on
/// purpose: it is a script, read top to bottom, each step a few lines.)
async fn story(d: &mut Demo, store: &dyn Store, cal_listener: tokio::net::TcpListener) -> Result<()> {
    // 1. Registration.
    d.step("Alice and her planner agent are registered, with the calendar API");
    let alice = d
        .admin(
            Method::POST,
            "/v1/users",
            Some(json!({"name": "Alice", "email": "alice@example.com", "groups": ["staff"]})),
        )
        .await?;
    let alice_id = text(&alice, "id")?;
    let alice_token =
        text(&d.admin(Method::POST, &format!("/v1/users/{alice_id}/tokens"), Some(json!({}))).await?, "token")?;
    show("user", format!("Alice ({alice_id}), staff"));
    let cal_key = SigningKey::generate(KeyAlg::EdDSA)?;
    let cal = d
        .admin(
            Method::POST,
            "/v1/resources",
            Some(json!({"identifier": d.calendar, "name": "Calendar",
                        "scopes": mandate_example_calendar::registered_scopes(),
                        "jwks": {"keys": [cal_key.public().to_json()]}})),
        )
        .await?;
    show("resource", format!("{} ({}), scopes calendar:read calendar:write", d.calendar, text(&cal, "id")?));
    let planner_key = SigningKey::generate(KeyAlg::EdDSA)?;
    let planner = d
        .admin(
            Method::POST,
            "/v1/agents",
            Some(json!({"name": "Planner", "owner": alice_id, "description": "plans Alice's week",
                        "jwks": {"keys": [planner_key.public().to_json()]}})),
        )
        .await?;
    let planner = DemoAgent { id: text(&planner, "id")?, key: planner_key, dpop: SigningKey::generate(KeyAlg::EdDSA)? };
    show("agent", format!("Planner ({}), owned by Alice", planner.id));
    let policies = POLICIES.replace("PLANNER", &planner.id);
    d.admin(Method::PUT, "/v1/policies", Some(json!({ "policies": policies }))).await?;
    show("policies", "the planner gets the calendar by policy; sensitive events need Alice's approval");

    // The calendar: a resource server on the verifier SDK, asking Mandate
    // to decide each action.
    let mut vc = mandate_verifier::VerifierConfig::new(&d.issuer, &d.calendar, &d.calendar);
    vc.remote_check = Some(mandate_verifier::RemoteCheck { client_id: text(&cal, "id")?, key: Arc::new(cal_key) });
    let verifier = mandate_verifier::Verifier::new(vc)?;
    tokio::spawn(mandate_example_calendar::serve(cal_listener, verifier));

    // 2. CIBA: the grant self-authorises by policy.
    d.step("A grant self-authorises by policy");
    let scope = "calendar:read calendar:write";
    let (st, req) = d
        .oauth(
            &planner,
            "/oauth/bc-authorize",
            &[
                ("login_hint", "alice@example.com"),
                ("scope", scope),
                ("resource", &d.calendar),
                ("binding_message", "plan the team offsite"),
            ],
        )
        .await?;
    ensure!(st == 200, "bc-authorize: {st} {req}");
    let (st, tokens) = d
        .oauth(
            &planner,
            "/oauth/token",
            &[("grant_type", "urn:openid:params:grant-type:ciba"), ("auth_req_id", &text(&req, "auth_req_id")?)],
        )
        .await?;
    ensure!(st == 200, "CIBA poll: {st} {tokens}");
    let planner_token = text(&tokens, "access_token")?;
    let claims = jws_claims(&planner_token)?;
    let grant_id = text(&claims, "grant_id")?;
    show("grant", format!("{grant_id}: {scope} on the calendar, approved_by policy"));
    show(
        "token",
        format!("{} for the planner, DPoP-bound (cnf.jkt {})", at(&tokens, "/token_type"), at(&claims, "/cnf/jkt")),
    );
    show("status list entry", at(&claims, "/status/status_list"));

    // 3. A sensitive action waits for Alice.
    d.step("A sensitive action waits for Alice's approval, which she gives");
    let event =
        json!({"id": "board-review", "title": "Board review", "start": "2026-12-01T09:00:00Z", "sensitive": true});
    let (st, refused) = d.calendar(&planner.dpop, &planner_token, Method::POST, "/events", Some(event.clone())).await?;
    ensure!(st == 403, "a sensitive event was created without approval: {st} {refused}");
    show("calendar says", format!("{st}: {}", refused));
    let (st, pending) =
        d.call(Method::GET, &format!("{}/v1/approvals?status=pending", d.issuer), &alice_token, None).await?;
    ensure!(st == 200, "approvals: {st} {pending}");
    let approval = at(&pending, "/approvals")
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .context("Alice has no pending approval")?;
    let approval_id = text(&approval, "id")?;
    let subject = at(&approval, "/subject");
    show(
        "Alice's inbox",
        format!(
            "{approval_id}: {} {} by the chain {}",
            at(subject, "/action"),
            at(subject, "/target"),
            at(subject, "/chain")
        ),
    );
    let (st, decided) =
        d.call(Method::POST, &format!("{}/v1/approvals/{approval_id}/approve", d.issuer), &alice_token, None).await?;
    ensure!(st == 200, "approve: {st} {decided}");
    show("Alice", "approves");
    let (st, created) = d.calendar(&planner.dpop, &planner_token, Method::POST, "/events", Some(event)).await?;
    ensure!(st == 201, "the approved event was not created: {st} {created}");
    show("calendar says", format!("{st}: created {}", at(&created, "/id")));

    // 4. Spawn and delegate.
    d.step("The planner spawns an ephemeral summarizer and delegates a narrower token to it");
    let (st, spawn) = d
        .oauth(
            &planner,
            "/oauth/token",
            &[("grant_type", "client_credentials"), ("resource", &d.issuer), ("scope", "mandate:spawn")],
        )
        .await?;
    ensure!(st == 200, "spawn token: {st} {spawn}");
    let spawn_token = text(&spawn, "access_token")?;
    let summarizer_key = SigningKey::generate(KeyAlg::EdDSA)?;
    let url = format!("{}/v1/agents", d.issuer);
    let resp = d
        .http
        .post(&url)
        .header("authorization", format!("DPoP {spawn_token}"))
        .header("DPoP", d.proof(&planner.dpop, "POST", &url, Some(&spawn_token))?)
        .json(&json!({"name": "Summarizer", "owner": alice_id, "ttl_seconds": 600,
                      "description": "summarises the week", "jwks": {"keys": [summarizer_key.public().to_json()]}}))
        .send()
        .await?;
    ensure!(resp.status() == 201, "spawn: {}", resp.status());
    let summarizer: Value = resp.json().await?;
    let summarizer =
        DemoAgent { id: text(&summarizer, "id")?, key: summarizer_key, dpop: SigningKey::generate(KeyAlg::ES256)? };
    show("ephemeral agent", format!("Summarizer ({}), expires in 10 minutes", summarizer.id));
    show("its policy", "none names it: it is decided as its parent, within what it is given");
    // The planner's token is DPoP-bound to the planner's key: the planner
    // hands it on with a proof of that key for this one exchange (ADR 0024).
    let handoff = d.proof(&planner.dpop, "POST", &format!("{}/oauth/token", d.issuer), Some(&planner_token))?;
    let (st, hop) = d
        .oauth(
            &summarizer,
            "/oauth/token",
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", planner_token.as_str()),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
                ("subject_token_dpop", handoff.as_str()),
                ("scope", "calendar:read"),
            ],
        )
        .await?;
    ensure!(st == 200, "exchange: {st} {hop}");
    let summarizer_token = text(&hop, "access_token")?;
    let hop_claims = jws_claims(&summarizer_token)?;
    show("delegated token", format!("scope {}, act {}", at(&hop_claims, "/scope"), at(&hop_claims, "/act")));
    show("bound to", format!("the summarizer's own key (cnf.jkt {})", at(&hop_claims, "/cnf/jkt")));

    // 5. The summarizer works.
    d.step("The summarizer's calls are allowed");
    let (st, events) = d.calendar(&summarizer.dpop, &summarizer_token, Method::GET, "/events", None).await?;
    ensure!(st == 200, "list events: {st} {events}");
    show("GET /events", format!("{st}: {} event(s)", events.as_array().map_or(0, Vec::len)));

    // 6. Widening is refused.
    d.step("Its attempt to widen its scope is denied");
    let widen = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", summarizer_token.as_str()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
        ("scope", "calendar:read calendar:write"),
    ];
    let (st, wider) = d.oauth(&summarizer, "/oauth/token", &widen).await?;
    ensure!(st == 400, "a wider token was issued: {st} {wider}");
    show("exchange for write", format!("{st} {}: {}", at(&wider, "/error"), at(&wider, "/error_description")));
    let (st, write) = d
        .calendar(
            &summarizer.dpop,
            &summarizer_token,
            Method::POST,
            "/events",
            Some(json!({"title": "Party", "start": "2026-12-02T18:00:00Z"})),
        )
        .await?;
    ensure!(st == 403, "a read-only token created an event: {st} {write}");
    show("POST /events", format!("{st}: {}", at(&write, "/www_authenticate")));

    // 7. Alice revokes the grant.
    d.step("Alice revokes the grant, and the next calls are refused at once");
    let (st, revoked) =
        d.call(Method::POST, &format!("{}/v1/grants/{grant_id}/revoke", d.issuer), &alice_token, None).await?;
    ensure!(st == 200, "revoke: {st} {revoked}");
    show("revoked", format!("{grant_id}, with every token beneath it"));
    for (who, c, token) in [("planner", &planner, &planner_token), ("summarizer", &summarizer, &summarizer_token)] {
        let (st, body) = d.calendar(&c.dpop, token, Method::GET, "/events", None).await?;
        ensure!(st == 401 || st == 403, "the {who}'s call still went through: {st} {body}");
        show(
            &format!("{who} GET /events"),
            format!("{st}: {}", body.get("www_authenticate").or(body.get("detail")).unwrap_or(&body)),
        );
    }
    // What any resource server reads: both tokens' bits in the signed list.
    for (who, token) in [("planner", &planner_token), ("summarizer", &summarizer_token)] {
        let c = jws_claims(token)?;
        let uri = at(&c, "/status/status_list/uri").as_str().context("no status list")?.to_owned();
        let idx = at(&c, "/status/status_list/idx").as_u64().context("no status index")?;
        let list = d.http.get(&uri).send().await?.text().await?;
        let jwks: Value = d.http.get(format!("{}/jwks.json", d.issuer)).send().await?.json().await?;
        let keys = mandate_jose::JwkSet::from_issuer_json(&jwks)?;
        let (_, bits) = mandate_jose::statuslist::verify(&list, &keys, &uri, now())?;
        ensure!(bits.is_invalid(idx) == Some(true), "the {who}'s token is not marked in its status list");
        show("status list", format!("{uri} (signed): the {who}'s entry {idx} is set: revoked"));
    }

    // 8. Workload identity.
    d.step("A nightly job's agent signs in with its CI's workload identity, no key of its own");
    let subject = "repo:acme/reports:ref:refs/heads/main";
    let nightly = d
        .admin(
            Method::POST,
            "/v1/agents",
            Some(json!({"name": "Nightly report", "owner": alice_id, "description": "runs in CI",
                        "federated_credentials": [{"issuer": d.ci, "subject": subject}]})),
        )
        .await?;
    let nightly_id = text(&nightly, "id")?;
    show("agent", format!("Nightly report ({nightly_id}): trusts {} for {subject}, no jwks", d.ci));
    let nightly_dpop = SigningKey::generate(KeyAlg::EdDSA)?;
    let resp = d.redeem_workload(&nightly_dpop, d.ci_token(subject)?).await?;
    ensure!(resp.status() == 200, "workload token: {}", resp.status());
    let nightly_token = text(&resp.json().await?, "access_token")?;
    let claims = jws_claims(&nightly_token)?;
    ensure!(at(&claims, "/sub") == nightly_id.as_str(), "the token is not the agent's: {claims}");
    show("CI token", "ES256, signed by the CI (keys from its discovery document), for Mandate, 5 minutes");
    let scope = at(&claims, "/scope").as_str().unwrap_or_default();
    show("token", format!("sub {nightly_id} (the agent), scope {scope}, DPoP-bound"));
    let (st, events) = d.calendar(&nightly_dpop, &nightly_token, Method::GET, "/events", None).await?;
    ensure!(st == 200, "the nightly job's call: {st} {events}");
    show("GET /events", format!("{st}: {} event(s)", events.as_array().map_or(0, Vec::len)));
    let resp = d.redeem_workload(&nightly_dpop, d.ci_token("repo:acme/reports:ref:refs/heads/feature")?).await?;
    ensure!(resp.status() == 400, "a token for another branch was accepted: {}", resp.status());
    let refused: Value = resp.json().await?;
    let why = |k: &str| at(&refused, k).as_str().unwrap_or_default().to_owned();
    show("another branch's CI token", format!("400 {}: {}", why("/error"), why("/error_description")));

    // 9. The tree.
    d.step("The delegation tree is traced");
    let tree = mandate_core::audit::trace(store, &grant_id).await?;
    for line in tree.render().lines() {
        println!("   {line}");
    }

    // 10. The trail verifies.
    d.step("The audit trail is verified");
    let report = d.admin(Method::GET, "/v1/audit/verify", None).await?;
    if at(&report, "/valid") != true {
        bail!("the audit trail does not verify: {report}");
    }
    show("audit trail", format!("{} events, hash chain intact", at(&report, "/events")));
    Ok(())
}

/// A CI system's OpenID issuer, as far as Mandate reads it: discovery and
/// the public key its workload tokens are signed with.
async fn serve_ci_issuer(listener: tokio::net::TcpListener, issuer: String, key: Value) -> std::io::Result<()> {
    use axum::routing::get;
    let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks"),
                           "id_token_signing_alg_values_supported": ["ES256"]});
    let jwks = json!({"keys": [key]});
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", get(move || std::future::ready(axum::Json(discovery.clone()))))
        .route("/jwks", get(move || std::future::ready(axum::Json(jwks.clone()))));
    axum::serve(listener, app).await
}

/// The member of `v` at JSON pointer `path`, or `null`.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    v.pointer(path).unwrap_or(&Value::Null)
}

/// The claims of a JWT, unverified (for display only).
fn jws_claims(token: &str) -> Result<Value> {
    use base64::Engine;
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}
