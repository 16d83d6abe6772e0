//! Requests end to end through the verifier, against fixed keys or a small
//! fake issuer serving its JWKS, a status list and the OAuth and check
//! endpoints in process.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mandate_jose::dpop::{ProofClaims, access_token_hash, sign_proof};
use mandate_jose::statuslist::{EncodedList, StatusBits, StatusListClaims};
use mandate_jose::{JoseError, JwkSet, KeyAlg, SigningKey, access, assertion, statuslist};
use mandate_model::claims::{AccessTokenClaims, Confirmation, Status, StatusListRef};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::*;

const ISS: &str = "https://mandate.example";
const AUD: &str = "https://calendar.example";
const PUBLIC: &str = "https://cal.example";
const NOW: i64 = 1_800_000_000;

fn claims(iss: &str) -> AccessTokenClaims {
    AccessTokenClaims {
        iss: iss.into(),
        sub: "usr_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        aud: AUD.into(),
        exp: NOW + 300,
        iat: NOW,
        nbf: NOW,
        jti: "tok_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        client_id: "agt_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        scope: "calendar:read".into(),
        act: None,
        may_act: None,
        authorization_details: None,
        grant_id: None,
        purpose: None,
        cnf: None,
        status: None,
    }
}

fn config(iss: &str, clock: &Arc<AtomicI64>) -> VerifierConfig {
    let clock = clock.clone();
    let mut c = VerifierConfig::new(iss, AUD, PUBLIC);
    c.clock = Arc::new(move || clock.load(Ordering::SeqCst));
    c
}

fn clock() -> Arc<AtomicI64> {
    Arc::new(AtomicI64::new(NOW))
}

/// A verifier trusting `key`, at `NOW`.
fn fixed(key: &SigningKey) -> Verifier {
    Verifier::with_static_keys(config(ISS, &clock()), JwkSet { keys: vec![key.public().clone()] }).unwrap()
}

fn parts(method: Method, path: &str, authorization: &[String], dpop: &[String]) -> axum::http::request::Parts {
    let mut b = Request::builder().method(method).uri(path);
    for a in authorization {
        b = b.header(header::AUTHORIZATION, a);
    }
    for d in dpop {
        b = b.header("DPoP", d);
    }
    b.body(()).unwrap().into_parts().0
}

fn proof(key: &SigningKey, htm: &str, htu: &str, token: Option<&str>, jti: &str) -> String {
    let ath = token.map(access_token_hash);
    sign_proof(key, &ProofClaims { jti, htm, htu, iat: NOW, ath, nonce: None }).unwrap()
}

fn bound(issuer_key: &SigningKey, holder: &SigningKey) -> String {
    let mut c = claims(ISS);
    c.cnf = Some(Confirmation { jkt: holder.public().thumbprint() });
    access::mint(issuer_key, &c).unwrap()
}

#[tokio::test]
async fn bearer_tokens_are_accepted_without_proof() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let v = fixed(&key);
    let token = access::mint(&key, &claims(ISS)).unwrap();
    let auth = v.authenticate(&parts(Method::GET, "/events", &[format!("Bearer {token}")], &[])).await.unwrap();
    assert_eq!(auth.claims, claims(ISS));
    assert_eq!(auth.token, token);
    assert_eq!(auth.dpop_jkt, None);
    // The scheme name is case-insensitive.
    assert!(v.authenticate(&parts(Method::GET, "/", &[format!("bearer {token}")], &[])).await.is_ok());
}

#[tokio::test]
async fn authorization_headers_are_strict() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let v = fixed(&key);
    let token = access::mint(&key, &claims(ISS)).unwrap();
    let refused = |auth: Vec<String>, dpop: Vec<String>| {
        let v = v.clone();
        async move { v.authenticate(&parts(Method::GET, "/", &auth, &dpop)).await.unwrap_err() }
    };
    assert_eq!(refused(vec![], vec![]).await, VerifyError::MissingToken);
    assert_eq!(refused(vec!["Basic YTpi".into()], vec![]).await, VerifyError::MissingToken);
    assert!(matches!(refused(vec!["Bearer".into()], vec![]).await, VerifyError::InvalidRequest(_)));
    assert!(matches!(refused(vec!["Bearer a,b".into()], vec![]).await, VerifyError::InvalidRequest(_)));
    let twice = vec![format!("Bearer {token}"), format!("Bearer {token}")];
    assert!(matches!(refused(twice, vec![]).await, VerifyError::InvalidRequest(_)));
    let two_proofs = refused(vec![format!("Bearer {token}")], vec!["a.b.c".into(), "d.e.f".into()]).await;
    assert!(matches!(two_proofs, VerifyError::InvalidProof(_)));
    // A past exp is refused, however recent (SECURITY row 5); a token
    // issued a little in the future (clock skew) is accepted.
    let mut old = claims(ISS);
    old.exp = NOW - 1;
    let expired = refused(vec![format!("Bearer {}", access::mint(&key, &old).unwrap())], vec![]).await;
    assert_eq!(expired, VerifyError::Token(JoseError::Expired));
    let mut early = claims(ISS);
    early.iat = NOW + 30;
    early.nbf = NOW + 30;
    let early = access::mint(&key, &early).unwrap();
    assert!(v.authenticate(&parts(Method::GET, "/", &[format!("Bearer {early}")], &[])).await.is_ok());
}

#[tokio::test]
async fn bearer_and_dpop_are_not_interchangeable() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let holder = SigningKey::generate(KeyAlg::ES256).unwrap();
    let v = fixed(&key);
    let token = bound(&key, &holder);
    let p = proof(&holder, "GET", &format!("{PUBLIC}/events"), Some(&token), "j1");
    // A bound token as Bearer, even with its proof.
    let got = v.authenticate(&parts(Method::GET, "/events", &[format!("Bearer {token}")], &[p])).await;
    assert!(matches!(got, Err(VerifyError::InvalidToken(_))), "{got:?}");
    // An unbound token as DPoP.
    let plain = access::mint(&key, &claims(ISS)).unwrap();
    let p = proof(&holder, "GET", &format!("{PUBLIC}/events"), Some(&plain), "j2");
    let got = v.authenticate(&parts(Method::GET, "/events", &[format!("DPoP {plain}")], &[p])).await;
    assert!(matches!(got, Err(VerifyError::InvalidToken(_))), "{got:?}");
    // A resource that requires DPoP refuses Bearer outright.
    let mut c = config(ISS, &clock());
    c.require_dpop = true;
    let strict = Verifier::with_static_keys(c, JwkSet { keys: vec![key.public().clone()] }).unwrap();
    let got = strict.authenticate(&parts(Method::GET, "/events", &[format!("Bearer {plain}")], &[])).await;
    assert!(matches!(got, Err(VerifyError::InvalidToken(_))), "{got:?}");
    assert!(strict.metadata().dpop_bound_access_tokens_required);
}

#[tokio::test]
async fn dpop_proofs_bind_key_request_and_token_once() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let holder = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let v = fixed(&key);
    let token = bound(&key, &holder);
    let auth = [format!("DPoP {token}")];
    let url = format!("{PUBLIC}/events");
    let req = |p: String| parts(Method::GET, "/events?day=monday", &auth, &[p]);

    let p = proof(&holder, "GET", &url, Some(&token), "once");
    let ok = v.authenticate(&req(p.clone())).await.unwrap();
    assert_eq!(ok.dpop_jkt, Some(holder.public().thumbprint()));
    assert_eq!(v.authenticate(&req(p)).await.unwrap_err(), VerifyError::InvalidProof("the proof was already used"));

    let cases = [
        // No proof at all.
        (None, VerifyError::InvalidProof("missing DPoP header")),
        // No ath.
        (Some(proof(&holder, "GET", &url, None, "a")), VerifyError::Proof(mandate_jose::dpop::DpopError::MissingAth)),
        // Another token's ath.
        (Some(proof(&holder, "GET", &url, Some("other"), "b")), VerifyError::Proof(mandate_jose::dpop::DpopError::Ath)),
        // Another method, another URL.
        (
            Some(proof(&holder, "POST", &url, Some(&token), "c")),
            VerifyError::Proof(mandate_jose::dpop::DpopError::Method),
        ),
        (
            Some(proof(&holder, "GET", &format!("{PUBLIC}/other"), Some(&token), "d")),
            VerifyError::Proof(mandate_jose::dpop::DpopError::Url),
        ),
    ];
    for (p, want) in cases {
        let got = v.authenticate(&parts(Method::GET, "/events", &auth, p.as_slice())).await.unwrap_err();
        assert_eq!(got, want);
    }
    // A valid proof by another key.
    let thief = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let got = v.authenticate(&req(proof(&thief, "GET", &url, Some(&token), "e"))).await.unwrap_err();
    assert_eq!(got, VerifyError::InvalidProof("the proof is not signed by the token's key"));
}

#[tokio::test]
async fn a_full_replay_memory_refuses_new_proofs() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let holder = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let mut c = config(ISS, &clock());
    c.replay_capacity = 1;
    let v = Verifier::with_static_keys(c, JwkSet { keys: vec![key.public().clone()] }).unwrap();
    let token = bound(&key, &holder);
    let url = format!("{PUBLIC}/events");
    let send = |jti: &str| {
        let p = proof(&holder, "GET", &url, Some(&token), jti);
        parts(Method::GET, "/events", &[format!("DPoP {token}")], &[p])
    };
    assert!(v.authenticate(&send("1")).await.is_ok());
    assert!(matches!(v.authenticate(&send("2")).await, Err(VerifyError::Unavailable(_))));
}

#[tokio::test]
async fn status_lists_outside_the_issuer_are_never_fetched() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let v = fixed(&key);
    let mut c = claims(ISS);
    c.status = Some(Status { status_list: StatusListRef { idx: 1, uri: "http://169.254.169.254/latest".into() } });
    let token = access::mint(&key, &c).unwrap();
    let got = v.verify(&token).await.unwrap_err();
    assert_eq!(got, VerifyError::InvalidToken("the token's status list is not the issuer's".into()));
}

/// An issuer on a loopback port, counting what it is asked.
#[derive(Default)]
struct Fake {
    jwks: Mutex<Value>,
    list: Mutex<String>,
    check_token: Mutex<String>,
    jwks_hits: AtomicUsize,
    list_hits: AtomicUsize,
    token_hits: AtomicUsize,
    check_hits: AtomicUsize,
    /// Check calls answered 401 before the real answer.
    check_refusals: AtomicUsize,
    /// The last check request's body.
    last_check: Mutex<Value>,
    /// The last token-exchange form, and what to answer it.
    last_exchange: Mutex<Vec<(String, String)>>,
    exchange_answer: Mutex<Option<(StatusCode, Value)>>,
}

async fn fake_issuer(fake: Arc<Fake>) -> String {
    async fn jwks(State(f): State<Arc<Fake>>) -> Response {
        f.jwks_hits.fetch_add(1, Ordering::SeqCst);
        let mut r = Json(f.jwks.lock().unwrap().clone()).into_response();
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
        r
    }
    async fn list(State(f): State<Arc<Fake>>) -> String {
        f.list_hits.fetch_add(1, Ordering::SeqCst);
        f.list.lock().unwrap().clone()
    }
    async fn token(State(f): State<Arc<Fake>>, body: axum::body::Bytes) -> Response {
        f.token_hits.fetch_add(1, Ordering::SeqCst);
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        if get("grant_type") == "urn:ietf:params:oauth:grant-type:token-exchange" {
            *f.last_exchange.lock().unwrap() = form.clone();
            let (status, body) = f.exchange_answer.lock().unwrap().clone().unwrap();
            return (status, Json(body)).into_response();
        }
        assert_eq!(get("grant_type"), "client_credentials");
        assert_eq!(get("scope"), "mandate:check");
        assert_eq!(get("client_assertion_type"), assertion::CLIENT_ASSERTION_TYPE);
        assert_eq!(assertion::peek_issuer(&get("client_assertion")).unwrap(), "res_calendar");
        let t = format!("check-token-{}", f.token_hits.load(Ordering::SeqCst));
        *f.check_token.lock().unwrap() = t.clone();
        Json(json!({"access_token": t, "token_type": "Bearer", "expires_in": 300})).into_response()
    }
    async fn check(State(f): State<Arc<Fake>>, req: Request) -> Response {
        f.check_hits.fetch_add(1, Ordering::SeqCst);
        let bearer = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(bearer, format!("Bearer {}", f.check_token.lock().unwrap()));
        if f.check_refusals.load(Ordering::SeqCst) > 0 {
            f.check_refusals.fetch_sub(1, Ordering::SeqCst);
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let body = axum::body::to_bytes(req.into_body(), 1 << 16).await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["resource"], json!({"type": "event", "id": "new", "properties": {"sensitive": "true"}}));
        *f.last_check.lock().unwrap() = body;
        Json(
            json!({"decision": "approval_required", "reasons": ["policy2 wants approval"], "chain": ["usr_1", "agt_1"],
                    "approval_request": "apr_1", "policy_version": "v1", "audit_seq": 42}),
        )
        .into_response()
    }
    let app = Router::new()
        .route("/jwks.json", get(jwks))
        .route("/statuslists/{n}", get(list))
        .route("/oauth/token", post(token))
        .route("/v1/check", post(check))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn status_list(key: &SigningKey, uri: &str, revoked: &[usize]) -> String {
    let bits = StatusBits::with_invalid(1024, revoked.iter().copied());
    let claims = StatusListClaims {
        sub: uri.into(),
        iat: NOW,
        exp: NOW + 3600,
        ttl: 600,
        status_list: EncodedList { bits: 1, lst: bits.encode().unwrap() },
    };
    statuslist::mint(key, &claims).unwrap()
}

#[tokio::test]
async fn revoked_tokens_are_refused_through_the_status_list() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let fake = Arc::new(Fake::default());
    *fake.jwks.lock().unwrap() = JwkSet { keys: vec![key.public().clone()] }.to_json();
    let iss = fake_issuer(fake.clone()).await;
    let uri = format!("{iss}/statuslists/0");
    *fake.list.lock().unwrap() = status_list(&key, &uri, &[7]);
    let clock = clock();
    let mut c = config(&iss, &clock);
    c.max_status_ttl = 60;
    let v = Verifier::new(c).unwrap();
    let with_idx = |idx| {
        let mut c = claims(&iss);
        c.status = Some(Status { status_list: StatusListRef { idx, uri: uri.clone() } });
        access::mint(&key, &c).unwrap()
    };
    assert!(v.verify(&with_idx(6)).await.is_ok());
    assert_eq!(v.verify(&with_idx(7)).await.unwrap_err(), VerifyError::InvalidToken("token revoked".into()));
    assert!(matches!(v.verify(&with_idx(5000)).await, Err(VerifyError::InvalidToken(_))));
    assert_eq!(fake.list_hits.load(Ordering::SeqCst), 1, "the list is cached");
    assert_eq!(fake.jwks_hits.load(Ordering::SeqCst), 1, "so are the keys");

    // Index 6 is revoked; the cache holds for max_status_ttl, not the list's ttl.
    *fake.list.lock().unwrap() = status_list(&key, &uri, &[6, 7]);
    clock.store(NOW + 59, Ordering::SeqCst);
    assert!(v.verify(&with_idx(6)).await.is_ok());
    clock.store(NOW + 60, Ordering::SeqCst);
    assert_eq!(v.verify(&with_idx(6)).await.unwrap_err(), VerifyError::InvalidToken("token revoked".into()));

    // A list that does not verify (signed by a stranger) fails closed.
    let stranger = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    *fake.list.lock().unwrap() = status_list(&stranger, &uri, &[]);
    clock.store(NOW + 120, Ordering::SeqCst);
    assert!(matches!(v.verify(&with_idx(1)).await, Err(VerifyError::Unavailable(_))));
    // And so does a list that is not one.
    let mut c = claims(&iss);
    c.status = Some(Status { status_list: StatusListRef { idx: 1, uri: format!("{iss}/statuslists/gone") } });
    *fake.list.lock().unwrap() = String::new();
    assert!(matches!(v.verify(&access::mint(&key, &c).unwrap()).await, Err(VerifyError::Unavailable(_))));
}

#[tokio::test]
async fn unknown_keys_are_fetched_at_most_once_per_interval() {
    let old = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let new = SigningKey::generate(KeyAlg::ES256).unwrap();
    let fake = Arc::new(Fake::default());
    *fake.jwks.lock().unwrap() = JwkSet { keys: vec![old.public().clone()] }.to_json();
    let iss = fake_issuer(fake.clone()).await;
    let clock = clock();
    let v = Verifier::new(config(&iss, &clock)).unwrap();
    assert!(v.verify(&access::mint(&old, &claims(&iss)).unwrap()).await.is_ok());
    assert_eq!(fake.jwks_hits.load(Ordering::SeqCst), 1);

    // The issuer rotates; within 10 s of the last fetch the new kid is refused.
    *fake.jwks.lock().unwrap() = JwkSet { keys: vec![old.public().clone(), new.public().clone()] }.to_json();
    let rotated = access::mint(&new, &claims(&iss)).unwrap();
    assert_eq!(v.verify(&rotated).await.unwrap_err(), VerifyError::Token(JoseError::UnknownKey));
    assert_eq!(fake.jwks_hits.load(Ordering::SeqCst), 1);
    clock.store(NOW + 10, Ordering::SeqCst);
    assert!(v.verify(&rotated).await.is_ok());
    assert_eq!(fake.jwks_hits.load(Ordering::SeqCst), 2);
    // A stranger's kid right after: no fetch.
    let stranger = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    assert!(v.verify(&access::mint(&stranger, &claims(&iss)).unwrap()).await.is_err());
    assert_eq!(fake.jwks_hits.load(Ordering::SeqCst), 2);
    // Past max-age the set is fetched again; the key removed is gone.
    *fake.jwks.lock().unwrap() = JwkSet { keys: vec![new.public().clone()] }.to_json();
    clock.store(NOW + 310, Ordering::SeqCst);
    let mut later = claims(&iss);
    later.exp = NOW + 600;
    assert_eq!(
        v.verify(&access::mint(&old, &later).unwrap()).await.unwrap_err(),
        VerifyError::Token(JoseError::UnknownKey)
    );
    assert_eq!(fake.jwks_hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_unreachable_issuer_fails_closed() {
    let clock = clock();
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let iss = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let v = Verifier::new(config(&iss, &clock)).unwrap();
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let got = v.verify(&access::mint(&key, &claims(&iss)).unwrap()).await.unwrap_err();
    assert_eq!(got, VerifyError::Unavailable("the issuer's keys could not be fetched"));
    assert!(Verifier::new(VerifierConfig::new("mandate.example", AUD, PUBLIC)).is_err());
}

#[tokio::test]
async fn remote_checks_reuse_the_check_token() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let fake = Arc::new(Fake::default());
    *fake.jwks.lock().unwrap() = JwkSet { keys: vec![key.public().clone()] }.to_json();
    let iss = fake_issuer(fake.clone()).await;
    let mut c = config(&iss, &clock());
    let rs_key = Arc::new(SigningKey::generate(KeyAlg::EdDSA).unwrap());
    c.remote_check = Some(RemoteCheck { client_id: "res_calendar".into(), key: rs_key });
    let v = Verifier::new(c).unwrap();
    assert!(v.has_remote_check());
    let resource = CheckResource::new("event", "new").with("sensitive", "true");
    let answer = v.check("agent-token", "create", &resource).await.unwrap();
    assert_eq!(answer.decision, Decision::ApprovalRequired);
    assert_eq!(answer.approval_request.as_deref(), Some("apr_1"));
    assert_eq!(answer.audit_seq, 42);
    assert!(!answer.is_allowed());
    v.check("agent-token", "create", &resource).await.unwrap();
    assert_eq!(fake.token_hits.load(Ordering::SeqCst), 1, "one check token for both");
    // A refused check token is replaced once.
    fake.check_refusals.store(1, Ordering::SeqCst);
    v.check("agent-token", "create", &resource).await.unwrap();
    assert_eq!(fake.token_hits.load(Ordering::SeqCst), 2);
    // Refused again after renewal: no decision, so no access.
    fake.check_refusals.store(2, Ordering::SeqCst);
    assert!(matches!(v.check("agent-token", "create", &resource).await, Err(VerifyError::Unavailable(_))));
    // Without credentials there is no remote check.
    let plain = fixed(&key);
    assert!(matches!(plain.check("t", "list", &resource).await, Err(VerifyError::Config(_))));
    assert!(matches!(plain.exchange("t", "https://mail.example").await, Err(ExchangeError::Config(_))));
}

#[tokio::test]
async fn checks_carry_their_context_and_answers_the_scopes_needed() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let fake = Arc::new(Fake::default());
    *fake.jwks.lock().unwrap() = JwkSet { keys: vec![key.public().clone()] }.to_json();
    let iss = fake_issuer(fake.clone()).await;
    let mut c = config(&iss, &clock());
    let rs_key = Arc::new(SigningKey::generate(KeyAlg::EdDSA).unwrap());
    c.remote_check = Some(RemoteCheck { client_id: "res_calendar".into(), key: rs_key });
    let v = Verifier::new(c).unwrap();
    let resource = CheckResource::new("event", "new").with("sensitive", "true");
    v.check("agent-token", "create", &resource).await.unwrap();
    assert!(fake.last_check.lock().unwrap().get("context").is_none(), "no context unless given");
    let context = json!({"title": "lunch", "attendees": ["a@example.com"]});
    v.check_with_context("agent-token", "create", &resource, context.as_object()).await.unwrap();
    let sent = fake.last_check.lock().unwrap().clone();
    assert_eq!(sent["context"], context);
    assert_eq!(sent["token"], "agent-token");
    assert_eq!(sent["action"], "create");

    // A server that names the scopes a deny lacks, and one that does not.
    let answer: CheckAnswer = serde_json::from_value(json!({
        "decision": "deny", "reasons": ["scope: no scope of the token covers create"],
        "scopes_needed": ["calendar:write"], "audit_seq": 7
    }))
    .unwrap();
    assert_eq!(answer.scopes_needed, ["calendar:write"]);
    let older: CheckAnswer = serde_json::from_value(json!({"decision": "deny", "audit_seq": 8})).unwrap();
    assert!(older.scopes_needed.is_empty());
}

#[tokio::test]
async fn exchanges_send_the_subject_token_and_tell_refusals_from_outages() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let fake = Arc::new(Fake::default());
    *fake.jwks.lock().unwrap() = JwkSet { keys: vec![key.public().clone()] }.to_json();
    let iss = fake_issuer(fake.clone()).await;
    let mut c = config(&iss, &clock());
    let rs_key = Arc::new(SigningKey::generate(KeyAlg::EdDSA).unwrap());
    c.remote_check = Some(RemoteCheck { client_id: "res_calendar".into(), key: rs_key });
    let v = Verifier::new(c).unwrap();

    *fake.exchange_answer.lock().unwrap() = Some((
        StatusCode::OK,
        json!({"access_token": "exchanged", "token_type": "Bearer", "expires_in": 120, "scope": "mail.read",
               "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}),
    ));
    let got = v.exchange("the-callers-token", "https://mail.example").await.unwrap();
    assert_eq!(
        got,
        ExchangedToken { access_token: "exchanged".into(), expires_in: 120, scope: Some("mail.read".into()) }
    );
    assert!(!format!("{got:?}").contains("exchanged"), "the token stays out of logs");
    let form = fake.last_exchange.lock().unwrap().clone();
    let get = |k: &str| form.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(get("subject_token"), ["the-callers-token"]);
    assert_eq!(get("subject_token_type"), ["urn:ietf:params:oauth:token-type:access_token"]);
    assert_eq!(get("resource"), ["https://mail.example"]);
    assert_eq!(get("scope"), Vec::<&str>::new(), "the issuer narrows; no scope is asked for");
    assert_eq!(get("client_assertion_type"), [assertion::CLIENT_ASSERTION_TYPE]);
    assert_eq!(assertion::peek_issuer(get("client_assertion")[0]).unwrap(), "res_calendar");

    *fake.exchange_answer.lock().unwrap() =
        Some((StatusCode::BAD_REQUEST, json!({"error": "invalid_target", "error_description": "not for you"})));
    assert_eq!(
        v.exchange("t", "https://mail.example").await.unwrap_err(),
        ExchangeError::Refused { error: "invalid_target".into(), description: Some("not for you".into()) }
    );
    // Our own credentials refused, or a server error: no answer, not a refusal.
    *fake.exchange_answer.lock().unwrap() = Some((StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"})));
    assert!(matches!(v.exchange("t", "https://mail.example").await, Err(ExchangeError::Unavailable(_))));
    *fake.exchange_answer.lock().unwrap() = Some((StatusCode::SERVICE_UNAVAILABLE, json!({"error": "x"})));
    assert!(matches!(v.exchange("t", "https://mail.example").await, Err(ExchangeError::Unavailable(_))));
    *fake.exchange_answer.lock().unwrap() = Some((StatusCode::OK, json!({"token_type": "Bearer"})));
    assert!(matches!(v.exchange("t", "https://mail.example").await, Err(ExchangeError::Unavailable(_))));
}

#[tokio::test]
async fn verifiers_for_other_audiences_share_keys_and_credentials() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let fake = Arc::new(Fake::default());
    *fake.jwks.lock().unwrap() = JwkSet { keys: vec![key.public().clone()] }.to_json();
    let iss = fake_issuer(fake.clone()).await;
    let mut c = config(&iss, &clock());
    let rs_key = Arc::new(SigningKey::generate(KeyAlg::EdDSA).unwrap());
    c.remote_check = Some(RemoteCheck { client_id: "res_calendar".into(), key: rs_key });
    let calendar = Verifier::new(c).unwrap();
    let mail = calendar.for_audience("https://mail.example", vec!["mail.read".into()]).unwrap();
    assert!(calendar.for_audience("", vec![]).is_err());
    assert_eq!(mail.config().audience, "https://mail.example");
    assert_eq!(mail.metadata().scopes_supported, ["mail.read"]);
    assert_eq!(mail.metadata().resource, "https://mail.example");

    let for_calendar = access::mint(&key, &claims(&iss)).unwrap();
    let for_mail =
        access::mint(&key, &AccessTokenClaims { aud: "https://mail.example".into(), ..claims(&iss) }).unwrap();
    assert!(calendar.verify(&for_calendar).await.is_ok());
    assert!(mail.verify(&for_mail).await.is_ok());
    // Each keeps to its own audience.
    assert!(matches!(mail.verify(&for_calendar).await, Err(VerifyError::Token(_))));
    assert!(matches!(calendar.verify(&for_mail).await, Err(VerifyError::Token(_))));
    assert_eq!(fake.jwks_hits.load(Ordering::SeqCst), 1, "one key set for both");

    let resource = CheckResource::new("event", "new").with("sensitive", "true");
    calendar.check("t", "create", &resource).await.unwrap();
    mail.check("t", "create", &resource).await.unwrap();
    assert_eq!(fake.token_hits.load(Ordering::SeqCst), 1, "one mandate:check token for both");
}

async fn events(auth: Authenticated) -> Result<String, VerifyError> {
    auth.require_scope("calendar:read")?;
    auth.require_scope("calendar:write")?;
    Ok(auth.actor().to_owned())
}

fn app(v: &Verifier) -> Router {
    Router::new().route("/events", get(events)).layer(v.layer()).merge(metadata_router(v.clone()))
}

fn challenges(resp: &Response) -> Vec<String> {
    resp.headers().get_all(header::WWW_AUTHENTICATE).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn the_layer_challenges_and_the_extractor_reads() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let v = fixed(&key);
    let meta = format!(r#"resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource""#);

    let resp = app(&v).oneshot(Request::get("/events").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenges(&resp),
        [format!(r#"Bearer realm="{AUD}", {meta}"#), format!(r#"DPoP realm="{AUD}", algs="EdDSA ES256", {meta}"#)]
    );

    let token = access::mint(&key, &claims(ISS)).unwrap();
    let req = Request::get("/events").header(header::AUTHORIZATION, format!("Bearer {token}"));
    let resp = app(&v).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let got = challenges(&resp);
    assert_eq!(got.len(), 2);
    assert!(got[0].starts_with(&format!(r#"Bearer realm="{AUD}", error="insufficient_scope""#)), "{got:?}");
    assert!(got[0].contains(r#"scope="calendar:write", resource_metadata="#), "{got:?}");
    assert!(!got[1].contains("error="), "{got:?}");

    let mut both = claims(ISS);
    both.scope = "calendar:read calendar:write".into();
    let token = access::mint(&key, &both).unwrap();
    let req = Request::get("/events").header(header::AUTHORIZATION, format!("Bearer {token}"));
    let resp = app(&v).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    assert_eq!(body, both.client_id.as_bytes());

    let bad = Request::get("/events").header(header::AUTHORIZATION, "Bearer not-a-jwt");
    let resp = app(&v).oneshot(bad.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(challenges(&resp)[0].contains(r#"error="invalid_token""#));
    let body: Value = serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1024).await.unwrap()).unwrap();
    assert_eq!(body["error"], "invalid_token");

    // Without the layer the extractor refuses rather than failing open.
    let bare = Router::new().route("/events", get(events));
    let req = Request::get("/events").header(header::AUTHORIZATION, format!("Bearer {token}"));
    let resp = bare.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn metadata_is_served_outside_the_layer() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let mut c = config(ISS, &clock());
    c.scopes_supported = vec!["calendar:read".into()];
    c.resource_name = Some("Calendar".into());
    let v = Verifier::with_static_keys(c, JwkSet { keys: vec![key.public().clone()] }).unwrap();
    let req = Request::get(METADATA_PATH).body(Body::empty()).unwrap();
    let resp = app(&v).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 4096).await.unwrap()).unwrap();
    assert_eq!(
        body,
        json!({
            "resource": AUD,
            "authorization_servers": [ISS],
            "scopes_supported": ["calendar:read"],
            "bearer_methods_supported": ["header"],
            "dpop_signing_alg_values_supported": ["EdDSA", "ES256"],
            "dpop_bound_access_tokens_required": false,
            "resource_name": "Calendar",
        })
    );
    assert_eq!(v.metadata_url(), format!("{PUBLIC}{METADATA_PATH}"));
}
