//! Sign-in with an upstream OpenID Connect provider (DESIGN §10), end to
//! end: a real Mandate and a mock provider this test controls (discovery,
//! JWKS, an authorization endpoint that redirects back with a code, a token
//! endpoint that checks PKCE and the client's authentication and returns ID
//! tokens signed with `mandate_jose` keys), both on loopback ports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use mandate_core::federation::{ClientAuth, UpstreamIdp};
use mandate_jose::{JwkSet, KeyAlg, SigningKey};
use mandate_testkit::TestServer;
use reqwest::Method;
use serde_json::{Value, json};

const CLIENT_ID: &str = "mandate-client";
const SECRET: &str = "upstream-secret-0123456789";

/// How the mock provider authenticates Mandate at its token endpoint.
#[derive(Clone)]
enum Auth {
    Secret,
    Key(JwkSet),
}

struct Inner {
    url: String,
    key: SigningKey,
    auth: Auth,
    /// code → (nonce, PKCE challenge).
    codes: HashMap<String, (String, String)>,
    /// The person signed in at the provider: claims of the next ID token.
    claims: Value,
    /// Claims set over the usual ones (a wrong `nonce`, `aud`, …).
    overrides: Value,
    /// `jti`s of the client assertions seen.
    jtis: Vec<String>,
    /// Why the token endpoint refused, if it did.
    refusals: Vec<String>,
}

#[derive(Clone)]
struct Idp(Arc<Mutex<Inner>>);

impl Idp {
    async fn start(auth: Auth) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let idp = Idp(Arc::new(Mutex::new(Inner {
            url,
            key: SigningKey::generate(KeyAlg::ES256)?,
            auth,
            codes: HashMap::new(),
            claims: json!({"sub": "u-1", "email": "ada@example.com", "email_verified": true, "name": "Ada", "groups": ["eng"]}),
            overrides: json!({}),
            jtis: Vec::new(),
            refusals: Vec::new(),
        })));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(idp.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(idp)
    }

    fn url(&self) -> String {
        self.lock().url.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_claim(&self, k: &str, v: Value) {
        self.lock().claims[k] = v;
    }

    fn override_claim(&self, k: &str, v: Value) {
        self.lock().overrides[k] = v;
    }

    fn config(&self, auth: ClientAuth, key_file: Option<std::path::PathBuf>) -> UpstreamIdp {
        UpstreamIdp {
            id: "corp".into(),
            display_name: "Corp SSO".into(),
            issuer: self.url(),
            client_id: CLIENT_ID.into(),
            client_secret: (auth != ClientAuth::PrivateKeyJwt).then(|| SECRET.to_owned()),
            client_key_file: key_file,
            client_auth: auth,
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
            email_claim: "email".into(),
            email_claim_verified: false,
            groups_claim: Some("groups".into()),
            attributes: Default::default(),
            allowed_email_domains: vec!["example.com".into()],
            jit_provisioning: true,
        }
    }
}

async fn discovery(State(idp): State<Idp>) -> Response {
    let url = idp.url();
    axum::Json(json!({
        "issuer": url,
        "authorization_endpoint": format!("{url}/authorize"),
        "token_endpoint": format!("{url}/token"),
        "jwks_uri": format!("{url}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "code_challenge_methods_supported": ["S256"],
    }))
    .into_response()
}

async fn jwks(State(idp): State<Idp>) -> Response {
    let key = idp.lock().key.public().to_json();
    axum::Json(json!({"keys": [key]})).into_response()
}

fn param(raw: Option<&str>, k: &str) -> Option<String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).find(|(n, _)| n == k).map(|(_, v)| v.into_owned())
}

/// Signs the person in at once and sends the browser back with a code.
async fn authorize(State(idp): State<Idp>, RawQuery(raw): RawQuery) -> Response {
    let raw = raw.as_deref();
    let (Some(redirect), Some(state), Some(nonce), Some(challenge)) =
        (param(raw, "redirect_uri"), param(raw, "state"), param(raw, "nonce"), param(raw, "code_challenge"))
    else {
        return (StatusCode::BAD_REQUEST, "missing parameters").into_response();
    };
    assert_eq!(param(raw, "client_id").as_deref(), Some(CLIENT_ID));
    assert_eq!(param(raw, "code_challenge_method").as_deref(), Some("S256"));
    let code = ulid::Ulid::new().to_string();
    idp.lock().codes.insert(code.clone(), (nonce, challenge));
    let back: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("code", &code)
        .append_pair("state", &state)
        .finish();
    Redirect::to(&format!("{redirect}?{back}")).into_response()
}

async fn token(State(idp): State<Idp>, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let refuse = |why: String| {
        idp.lock().refusals.push(why.clone());
        (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_client", "error_description": why})))
            .into_response()
    };
    let mut inner = idp.lock();
    let url = inner.url.clone();
    // The client's authentication.
    match inner.auth.clone() {
        Auth::Secret => {
            use base64::Engine;
            let expected =
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{SECRET}")));
            if headers.get("authorization").and_then(|h| h.to_str().ok()) != Some(expected.as_str()) {
                drop(inner);
                return refuse("bad client_secret_basic".into());
            }
        }
        Auth::Key(keys) => {
            if form.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                drop(inner);
                return refuse("no client assertion".into());
            }
            // Nothing but the assertion and the client_id authenticates.
            if form.contains_key("client_secret")
                || headers.contains_key("authorization")
                || form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
            {
                drop(inner);
                return refuse("a secret beside the assertion, or no client_id".into());
            }
            let aud = format!("{url}/token");
            let rules = mandate_jose::assertion::AssertionRules {
                audiences: &[aud.as_str()],
                now: wall_clock(),
                max_lifetime: 300,
                leeway: 30,
            };
            let assertion = form.get("client_assertion").map(String::as_str).unwrap_or_default();
            match mandate_jose::assertion::verify_client_assertion(assertion, &keys, CLIENT_ID, &rules) {
                Ok(v) if !inner.jtis.contains(&v.jti) => inner.jtis.push(v.jti),
                Ok(_) => {
                    drop(inner);
                    return refuse("replayed jti".into());
                }
                Err(e) => {
                    drop(inner);
                    return refuse(format!("bad assertion: {e}"));
                }
            }
        }
    }
    let code = form.get("code").cloned().unwrap_or_default();
    let Some((nonce, challenge)) = inner.codes.remove(&code) else {
        drop(inner);
        return refuse("unknown code".into());
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    if mandate_jose::sha256_b64(verifier.as_bytes()) != challenge {
        drop(inner);
        return refuse("PKCE".into());
    }
    let now = wall_clock();
    let mut claims = json!({"iss": url, "aud": CLIENT_ID, "iat": now, "exp": now + 300, "nonce": nonce});
    for (k, v) in
        inner.claims.as_object().into_iter().flatten().chain(inner.overrides.as_object().into_iter().flatten())
    {
        claims[k] = v.clone();
    }
    let id_token = match mandate_jose::jws::sign(&inner.key, "JWT", &claims) {
        Ok(t) => t,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    axum::Json(json!({"access_token": "at", "token_type": "Bearer", "expires_in": 300, "id_token": id_token}))
        .into_response()
}

/// The provider's clock: the wall clock, which is also what the
/// `openidconnect` crate checks an ID token's `exp` against (Mandate's own
/// Clock port does not reach it).
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// What the browser saw at the end of one sign-in.
struct Outcome {
    status: u16,
    body: String,
    session: Option<String>,
    /// The callback URL and the pending cookie, to replay them.
    callback: String,
    pending: String,
}

fn browser() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?)
}

fn location(r: &reqwest::Response) -> String {
    r.headers().get("location").and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned()
}

fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|h| h.to_str().ok())
        .filter_map(|c| c.split(';').next())
        .find(|c| c.starts_with(&format!("{name}=")) && c.len() > name.len() + 1)
        .map(str::to_owned)
}

/// A whole sign-in: Mandate → the provider → the callback.
async fn sign_in(s: &TestServer) -> Result<Outcome> {
    let b = browser()?;
    let r = b.get(format!("{}/login/oidc/corp?next=/", s.url)).send().await?;
    anyhow::ensure!(r.status().is_redirection(), "start: {}", r.status());
    let pending = set_cookie(&r, "mandate_upstream").ok_or_else(|| anyhow::anyhow!("no pending cookie"))?;
    let r = b.get(location(&r)).send().await?;
    anyhow::ensure!(r.status().is_redirection(), "authorize: {}", r.status());
    let callback = location(&r);
    anyhow::ensure!(callback.starts_with(&s.url), "callback {callback}");
    callback_with(&b, callback, pending).await
}

async fn callback_with(b: &reqwest::Client, callback: String, pending: String) -> Result<Outcome> {
    let r = b.get(&callback).header("cookie", &pending).send().await?;
    let status = r.status().as_u16();
    let session = set_cookie(&r, "mandate_session");
    let body = r.text().await?;
    Ok(Outcome { status, body, session, callback, pending })
}

async fn start(auth: ClientAuth) -> Result<(TestServer, Idp, Option<tempfile::TempDir>)> {
    let (idp, key_dir) = match auth {
        ClientAuth::PrivateKeyJwt => {
            let key = SigningKey::generate(KeyAlg::EdDSA)?;
            let dir = tempfile::tempdir()?;
            std::fs::write(dir.path().join("client.pk8"), key.pkcs8())?;
            let keys = JwkSet::from_json(&json!({"keys": [key.public().to_json()]}))?;
            (Idp::start(Auth::Key(keys)).await?, Some(dir))
        }
        _ => (Idp::start(Auth::Secret).await?, None),
    };
    let config = idp.config(auth, key_dir.as_ref().map(|d| d.path().join("client.pk8")));
    config.validate().map_err(anyhow::Error::msg)?;
    let s = TestServer::start_with(|c| {
        c.dev_loopback_fetch = true;
        c.upstream_oidc = vec![config];
    })
    .await?;
    Ok((s, idp, key_dir))
}

/// Every person (each creation is audited) as the admin API shows them.
async fn users(s: &TestServer) -> Result<Value> {
    let mut out = Vec::new();
    for created in s.audit("type=user.created").await? {
        let id = created["subject"].as_str().unwrap_or_default();
        let (st, body) = s.admin(Method::GET, &format!("/v1/users/{id}"), None).await?;
        anyhow::ensure!(st == 200, "user {id}: {st} {body}");
        out.push(body);
    }
    Ok(Value::Array(out))
}

/// Signs in and expects a refusal that says `why` and changes nothing but
/// the one `session.sign_in_failed` event.
async fn refused(s: &TestServer, why: &str) -> Result<()> {
    let users_before = users(s).await?;
    let events_before = s.audit("").await?;
    let out = sign_in(s).await?;
    assert_eq!(out.status, 403, "{}", out.body);
    assert!(out.body.contains("Sign-in refused") && out.body.contains(why), "{why}: {}", out.body);
    assert!(out.session.is_none());
    assert_eq!(users(s).await?, users_before, "a refusal changes no person");
    let events = s.audit("").await?;
    assert_eq!(events.len(), events_before.len() + 1, "one event: {:?}", events.last());
    let last = &events[events.len() - 1];
    assert_eq!(last["type"], "session.sign_in_failed", "{last}");
    assert_eq!(last["decision"], "deny", "{last}");
    assert!(last["reason"].as_str().unwrap_or_default().starts_with("upstream:corp: "), "{last}");
    Ok(())
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

fn user_by_email<'a>(users: &'a Value, email: &str) -> Option<&'a Value> {
    users.as_array()?.iter().find(|u| u["email"] == email)
}

#[tokio::test]
async fn a_good_sign_in_provisions_links_and_replaces_groups() -> Result<()> {
    let (s, idp, _k) = start(ClientAuth::ClientSecretBasic).await?;
    let out = sign_in(&s).await?;
    assert_eq!(out.status, 303, "{}", out.body);
    assert!(out.session.is_some());
    let ada = user_by_email(&users(&s).await?, "ada@example.com").cloned().expect("provisioned");
    assert_eq!(ada["name"], "Ada");
    assert_eq!(ada["groups"], json!(["eng"]));
    let events = s.audit("").await?;
    let k = kinds(&events);
    for kind in ["user.created", "user.linked", "session.created"] {
        assert!(k.contains(&kind), "{kind} in {k:?}");
    }
    let created = events.iter().find(|e| e["type"] == "user.created").expect("created");
    assert_eq!(created["actor"], "upstream:corp");

    // The same identity again: found by its link, no second person; the
    // provider's groups replace the person's.
    idp.set_claim("groups", json!(["ops", "oncall"]));
    let out = sign_in(&s).await?;
    assert_eq!(out.status, 303, "{}", out.body);
    let all = users(&s).await?;
    let ada2 = user_by_email(&all, "ada@example.com").expect("still there");
    assert_eq!(ada2["id"], ada["id"]);
    assert_eq!(ada2["groups"], json!(["ops", "oncall"]));
    let updated = s.audit("type=user.updated").await?;
    assert_eq!(updated.len(), 1);
    assert!(updated[0]["reason"].as_str().unwrap_or_default().contains("[ops,oncall]"), "{}", updated[0]);
    assert_eq!(s.audit("type=user.created").await?.len(), 1);
    assert_eq!(s.audit("type=user.linked").await?.len(), 1);

    // The email changes at the provider: still the same person (the link is
    // by iss and sub).
    idp.set_claim("email", json!("ada.lovelace@example.com"));
    let out = sign_in(&s).await?;
    assert_eq!(out.status, 303, "{}", out.body);
    assert_eq!(s.audit("type=user.created").await?.len(), 1);
    assert!(user_by_email(&users(&s).await?, "ada.lovelace@example.com").is_none());
    Ok(())
}

#[tokio::test]
async fn an_existing_person_is_linked_by_verified_email() -> Result<()> {
    let (s, idp, _k) = start(ClientAuth::ClientSecretBasic).await?;
    let (st, dana) = s
        .admin(
            Method::POST,
            "/v1/users",
            Some(json!({"name": "Ada L", "email": "ada@example.com", "groups": ["staff"]})),
        )
        .await?;
    assert_eq!(st, 201, "{dana}");
    let out = sign_in(&s).await?;
    assert_eq!(out.status, 303, "{}", out.body);
    assert_eq!(s.audit("type=user.created").await?.len(), 1, "only the admin's");
    let linked = s.audit("type=user.linked").await?;
    assert_eq!(linked.len(), 1);
    assert_eq!(linked[0]["subject"], dana["id"]);

    // Another identity with the same verified email (the address reissued
    // to someone new) does not take over the linked account.
    idp.set_claim("sub", json!("u-2"));
    refused(&s, "linked to another sign-in").await?;
    Ok(())
}

#[tokio::test]
async fn a_replayed_state_is_refused() -> Result<()> {
    let (s, _idp, _k) = start(ClientAuth::ClientSecretBasic).await?;
    let out = sign_in(&s).await?;
    assert_eq!(out.status, 303, "{}", out.body);
    let users_before = users(&s).await?;
    let n = s.audit("").await?.len();
    let again = callback_with(&browser()?, out.callback, out.pending).await?;
    assert_eq!(again.status, 403, "{}", again.body);
    assert!(again.body.contains("replayed state"), "{}", again.body);
    assert!(again.session.is_none());
    assert_eq!(users(&s).await?, users_before);
    let events = s.audit("").await?;
    assert_eq!(events.len(), n + 1);
    assert_eq!(events[n]["type"], "session.sign_in_failed");
    Ok(())
}

#[tokio::test]
async fn a_state_that_is_not_the_cookies_is_refused() -> Result<()> {
    let (s, _idp, _k) = start(ClientAuth::ClientSecretBasic).await?;
    let b = browser()?;
    let r = b.get(format!("{}/login/oidc/corp", s.url)).send().await?;
    let pending = set_cookie(&r, "mandate_upstream").expect("pending");
    let r = b.get(location(&r)).send().await?;
    let callback = location(&r).replace("state=", "state=x");
    let out = callback_with(&b, callback, pending).await?;
    assert_eq!(out.status, 403, "{}", out.body);
    assert!(out.body.contains("state mismatch"), "{}", out.body);
    assert!(users(&s).await?.to_string().find("ada@").is_none());
    Ok(())
}

#[tokio::test]
async fn a_wrong_nonce_is_refused_and_writes_nothing_but_the_refusal() -> Result<()> {
    let (s, idp, _k) = start(ClientAuth::ClientSecretBasic).await?;
    idp.override_claim("nonce", json!("not-the-one-we-sent"));
    refused(&s, "the ID token is not valid").await?;
    assert!(user_by_email(&users(&s).await?, "ada@example.com").is_none());
    let failed = s.audit("type=session.sign_in_failed").await?;
    assert!(failed[0]["reason"].as_str().unwrap_or_default().to_lowercase().contains("nonce"), "{}", failed[0]);
    Ok(())
}

#[tokio::test]
async fn wrong_audience_issuer_or_expiry_are_refused() -> Result<()> {
    let (s, idp, _k) = start(ClientAuth::ClientSecretBasic).await?;
    let now = wall_clock();
    for (claim, value) in
        [("aud", json!("someone-else")), ("iss", json!("http://127.0.0.1:1/evil")), ("exp", json!(now - 600))]
    {
        idp.lock().overrides = json!({});
        idp.override_claim(claim, value);
        if claim == "exp" {
            idp.override_claim("iat", json!(now - 1200));
        }
        refused(&s, "the ID token is not valid").await?;
    }
    assert!(user_by_email(&users(&s).await?, "ada@example.com").is_none());
    // And with the claims right again, the same person signs in.
    idp.lock().overrides = json!({});
    assert_eq!(sign_in(&s).await?.status, 303);
    Ok(())
}

#[tokio::test]
async fn an_unverified_email_or_a_disallowed_domain_is_refused() -> Result<()> {
    let (s, idp, _k) = start(ClientAuth::ClientSecretBasic).await?;
    idp.set_claim("email_verified", json!(false));
    refused(&s, "has not verified this email address").await?;
    idp.set_claim("email_verified", json!(true));
    idp.set_claim("email", json!("ada@sub.example.com"));
    refused(&s, "is not allowed to sign in here").await?;
    idp.set_claim("email", json!("ada@example.org"));
    refused(&s, "is not allowed to sign in here").await?;
    Ok(())
}

#[tokio::test]
async fn a_disabled_person_is_refused() -> Result<()> {
    let (s, _idp, _k) = start(ClientAuth::ClientSecretBasic).await?;
    assert_eq!(sign_in(&s).await?.status, 303);
    let ada = user_by_email(&users(&s).await?, "ada@example.com").cloned().expect("provisioned");
    let id = ada["id"].as_str().unwrap_or_default();
    let (st, body) = s.admin(Method::PATCH, &format!("/v1/users/{id}"), Some(json!({"status": "disabled"}))).await?;
    assert_eq!(st, 200, "{body}");
    refused(&s, "this account is disabled").await?;
    let failed = s.audit("type=session.sign_in_failed").await?;
    assert_eq!(failed[0]["subject"], ada["id"]);
    Ok(())
}

#[tokio::test]
async fn private_key_jwt_authenticates_mandate_to_the_provider() -> Result<()> {
    let (s, idp, _k) = start(ClientAuth::PrivateKeyJwt).await?;
    let out = sign_in(&s).await?;
    assert_eq!(out.status, 303, "{} {:?}", out.body, idp.lock().refusals);
    assert!(out.session.is_some());
    let out = sign_in(&s).await?;
    assert_eq!(out.status, 303, "{} {:?}", out.body, idp.lock().refusals);
    let inner = idp.lock();
    assert_eq!(inner.jtis.len(), 2, "one fresh assertion per redemption");
    assert!(inner.refusals.is_empty(), "{:?}", inner.refusals);
    Ok(())
}

#[tokio::test]
async fn a_provider_refusing_the_client_is_a_refusal() -> Result<()> {
    // Mandate signs with a key the provider does not know.
    let (s, idp, _k) = start(ClientAuth::PrivateKeyJwt).await?;
    let other = SigningKey::generate(KeyAlg::EdDSA)?;
    idp.lock().auth = Auth::Key(JwkSet::from_json(&json!({"keys": [other.public().to_json()]}))?);
    refused(&s, "could not be redeemed").await?;
    assert_eq!(idp.lock().refusals.len(), 1, "{:?}", idp.lock().refusals);
    Ok(())
}

#[test]
fn private_key_jwt_needs_a_readable_key() {
    let mut idp = UpstreamIdp {
        id: "corp".into(),
        display_name: "Corp".into(),
        issuer: "https://idp.example.com".into(),
        client_id: "c".into(),
        client_secret: None,
        client_key_file: None,
        client_auth: ClientAuth::PrivateKeyJwt,
        scopes: vec!["openid".into()],
        email_claim: "email".into(),
        email_claim_verified: false,
        groups_claim: None,
        attributes: Default::default(),
        allowed_email_domains: Vec::new(),
        jit_provisioning: false,
    };
    assert!(idp.validate().unwrap_err().contains("needs client_key_file"));
    idp.client_secret = Some("s".into());
    assert!(idp.validate().unwrap_err().contains("sends no client_secret"));
    idp.client_secret = None;
    idp.client_key_file = Some("/nonexistent/key.pk8".into());
    assert!(idp.validate().unwrap_err().contains("client_key_file"));
}
