//! The receiver end to end: SETs signed here with EdDSA, ES256 and RS256
//! keys, pushed through the RFC 8935 endpoint or polled from a transmitter
//! played by a local axum server, and the verifier's answer for the
//! revoked token afterwards.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use mandate_jose::dpop::sign_raw;
use mandate_jose::{JwkSet, KeyAlg, PublicJwk, SigningKey, access};
use mandate_model::claims::AccessTokenClaims;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::set::{CREDENTIAL_CHANGE, SESSION_REVOKED, VERIFICATION};
use super::*;
use crate::{VerifierConfig, VerifyError};

const ISS: &str = "https://mandate.example";
const AUD: &str = "https://calendar.example";
const NOW: i64 = 1_800_000_000;
const TOKEN_JTI: &str = "tok_01JABCDEFGHJKMNPQRSTVWXYZ0";
const PUSH: &str = "/ssf/events";

/// The issuer's keys: Ed25519 and P-256 as Mandate has them, and an RSA
/// key as the CAEP interoperability profile wants for SETs.
struct Keys {
    ed: SigningKey,
    ec: SigningKey,
    rsa: RsaKeyPair,
    rsa_jwk: PublicJwk,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let c = PublicKeyComponents::<Vec<u8>>::from(rsa.public_key());
        let rsa_jwk = PublicJwk::from_json_external(&json!({
            "kty": "RSA", "n": B64.encode(&c.n), "e": B64.encode(&c.e), "kid": "rsa-1", "alg": "RS256", "use": "sig"
        }))
        .unwrap();
        Keys {
            ed: SigningKey::generate(KeyAlg::EdDSA).unwrap(),
            ec: SigningKey::generate(KeyAlg::ES256).unwrap(),
            rsa,
            rsa_jwk,
        }
    })
}

fn jwks() -> JwkSet {
    let k = keys();
    JwkSet { keys: vec![k.ed.public().clone(), k.ec.public().clone(), k.rsa_jwk.clone()] }
}

#[derive(Clone, Copy, Debug)]
enum Signer {
    Ed,
    Ec,
    Rsa,
}

fn header(signer: Signer) -> Value {
    let k = keys();
    match signer {
        Signer::Ed => json!({"typ": "secevent+jwt", "alg": "EdDSA", "kid": k.ed.kid()}),
        Signer::Ec => json!({"typ": "secevent+jwt", "alg": "ES256", "kid": k.ec.kid()}),
        Signer::Rsa => json!({"typ": "secevent+jwt", "alg": "RS256", "kid": "rsa-1"}),
    }
}

fn sign_with(signer: Signer, header: &Value, claims: &Value) -> String {
    let k = keys();
    match signer {
        Signer::Ed => sign_raw(&k.ed, header, claims).unwrap(),
        Signer::Ec => sign_raw(&k.ec, header, claims).unwrap(),
        Signer::Rsa => {
            let mut input = B64.encode(serde_json::to_vec(header).unwrap());
            input.push('.');
            input.push_str(&B64.encode(serde_json::to_vec(claims).unwrap()));
            let mut sig = vec![0; k.rsa.public_modulus_len()];
            k.rsa.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig).unwrap();
            format!("{input}.{}", B64.encode(sig))
        }
    }
}

fn revoked_claims(set_jti: &str, token_jti: &str) -> Value {
    json!({
        "iss": ISS, "aud": AUD, "iat": NOW, "jti": set_jti,
        "sub_id": {
            "format": "complex",
            "session": {"format": "opaque", "id": token_jti},
            "user": {"format": "iss_sub", "iss": ISS, "sub": "usr_01JABCDEFGHJKMNPQRSTVWXYZ0"},
        },
        "events": {SESSION_REVOKED: {
            "event_timestamp": NOW, "initiating_entity": "admin", "reason_admin": {"en": "revoked by an administrator"}
        }}
    })
}

fn revocation(signer: Signer, set_jti: &str) -> String {
    sign_with(signer, &header(signer), &revoked_claims(set_jti, TOKEN_JTI))
}

fn token_claims() -> AccessTokenClaims {
    AccessTokenClaims {
        iss: ISS.into(),
        sub: "usr_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        aud: AUD.into(),
        exp: NOW + 300,
        iat: NOW,
        nbf: NOW,
        jti: TOKEN_JTI.into(),
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

fn access_token() -> String {
    access::mint(&keys().ed, &token_claims()).unwrap()
}

struct Fixture {
    verifier: Verifier,
    receiver: SsfReceiver,
    clock: Arc<AtomicI64>,
    events: Arc<Mutex<Vec<SecurityEvent>>>,
}

fn fixture_with(edit: impl FnOnce(&mut VerifierConfig)) -> Fixture {
    let clock = Arc::new(AtomicI64::new(NOW));
    let mut config = VerifierConfig::new(ISS, AUD, "https://cal.example");
    let c = clock.clone();
    config.clock = Arc::new(move || c.load(Ordering::SeqCst));
    edit(&mut config);
    let verifier = Verifier::with_static_keys(config, jwks()).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let receiver = SsfReceiver::new(&verifier).on_event(move |e| seen.lock().unwrap().push(e.clone()));
    Fixture { verifier, receiver, clock, events }
}

fn fixture() -> Fixture {
    fixture_with(|_| {})
}

async fn push_raw(
    receiver: &SsfReceiver,
    content_type: &str,
    auth: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method("POST").uri(PUSH).header(header::CONTENT_TYPE, content_type);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let resp = receiver.push_router(PUSH).oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
    (status, if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() })
}

async fn push(receiver: &SsfReceiver, set: &str) -> (StatusCode, Value) {
    push_raw(receiver, "application/secevent+jwt", None, set.as_bytes().to_vec()).await
}

#[tokio::test]
async fn a_session_revoked_set_refuses_the_token_at_once_whatever_the_key() {
    for signer in [Signer::Ed, Signer::Ec, Signer::Rsa] {
        let f = fixture();
        let token = access_token();
        assert!(f.verifier.verify(&token).await.is_ok(), "{signer:?}: accepted before");
        let (status, body) = push(&f.receiver, &revocation(signer, "set-1")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{signer:?}: {body}");
        assert_eq!(body, Value::Null);
        assert_eq!(f.verifier.verify(&token).await, Err(VerifyError::InvalidToken("token revoked".into())));
        assert!(f.verifier.is_revoked(TOKEN_JTI));
        // A verifier for another audience shares the memory.
        let other = f.verifier.for_audience("https://mail.example", vec![]).unwrap();
        assert!(other.is_revoked(TOKEN_JTI));
        let events = f.events.lock().unwrap();
        assert_eq!(events.len(), 1);
        let e = events.first().unwrap();
        assert_eq!((e.kind, e.jti.as_str(), e.revoked_jti()), (EventKind::SessionRevoked, "set-1", Some(TOKEN_JTI)));
        assert_eq!(e.event_timestamp(), Some(NOW));
    }
}

#[tokio::test]
async fn every_shape_of_a_session_subject_revokes_and_a_user_alone_does_not() {
    let revoking = [
        // Mandate before ADR 0039: the token's jti as a simple opaque subject.
        json!({"format": "opaque", "id": TOKEN_JTI}),
        // SSF 1.0 §3.3, the session alone.
        json!({"format": "complex", "session": {"format": "opaque", "id": TOKEN_JTI}}),
        // A complex subject as drafts before SSF 1.0 sent it (no format).
        json!({"session": {"format": "opaque", "id": TOKEN_JTI}, "user": {"format": "email", "email": "a@example.com"}}),
    ];
    for sub_id in revoking {
        let f = fixture();
        let mut claims = revoked_claims("set-1", TOKEN_JTI);
        claims["sub_id"] = sub_id.clone();
        let (status, body) = push(&f.receiver, &sign_with(Signer::Ed, &header(Signer::Ed), &claims)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{sub_id}: {body}");
        assert!(f.verifier.is_revoked(TOKEN_JTI), "{sub_id}");
    }
    // A person, or a session named in a format that is not Mandate's
    // token jti: accepted (the application's hook sees it), nothing revoked.
    for sub_id in [
        json!({"format": "iss_sub", "iss": ISS, "sub": "usr_01JABCDEFGHJKMNPQRSTVWXYZ0"}),
        json!({"format": "complex", "user": {"format": "iss_sub", "iss": ISS, "sub": "usr_01JABCDEFGHJKMNPQRSTVWXYZ0"}}),
        json!({"format": "complex", "session": {"format": "email", "email": "a@example.com"}}),
    ] {
        let f = fixture();
        let mut claims = revoked_claims("set-2", TOKEN_JTI);
        claims["sub_id"] = sub_id.clone();
        let (status, body) = push(&f.receiver, &sign_with(Signer::Ed, &header(Signer::Ed), &claims)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{sub_id}: {body}");
        assert!(!f.verifier.is_revoked(TOKEN_JTI), "{sub_id}");
        assert!(f.verifier.verify(&access_token()).await.is_ok(), "{sub_id}");
        assert_eq!(f.events.lock().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn requests_with_a_revoked_token_are_refused_through_the_layer() {
    let f = fixture();
    let app = Router::new().route("/events", get(|| async { "ok" })).layer(f.verifier.layer());
    let call = |app: Router| async move {
        let req = Request::builder()
            .uri("/events")
            .header(header::AUTHORIZATION, format!("Bearer {}", access_token()))
            .body(Body::empty())
            .unwrap();
        app.oneshot(req).await.unwrap().status()
    };
    assert_eq!(call(app.clone()).await, StatusCode::OK);
    assert_eq!(push(&f.receiver, &revocation(Signer::Ed, "set-1")).await.0, StatusCode::ACCEPTED);
    assert_eq!(call(app).await, StatusCode::UNAUTHORIZED);
}

/// Each bad SET is refused with its RFC 8935 code, and changes nothing:
/// the token is still accepted and no event reaches the application.
#[tokio::test]
async fn bad_sets_are_refused_with_their_code_and_change_nothing() {
    let k = keys();
    let good = revoked_claims("set-bad", TOKEN_JTI);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        edit(&mut c);
        c
    };
    let ed = header(Signer::Ed);
    let ed_with = |name: &str, v: Value| {
        let mut h = ed.clone();
        h[name] = v;
        h
    };
    let hs256 = {
        let h = B64.encode(br#"{"typ":"secevent+jwt","alg":"HS256","kid":"k"}"#);
        let p = B64.encode(serde_json::to_vec(&good).unwrap());
        format!("{h}.{p}.{}", B64.encode([7u8; 32]))
    };
    let none = {
        let h = B64.encode(br#"{"typ":"secevent+jwt","alg":"none"}"#);
        let p = B64.encode(serde_json::to_vec(&good).unwrap());
        format!("{h}.{p}.")
    };
    let bad_signature = {
        let t = revocation(Signer::Ed, "set-bad");
        let (rest, _) = t.rsplit_once('.').unwrap();
        format!("{rest}.{}", B64.encode([1u8; 64]))
    };
    let other_key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("wrong typ", sign_raw(&k.ed, &ed_with("typ", json!("JWT")), &good).unwrap(), "invalid_request"),
        ("access token typ", sign_raw(&k.ed, &ed_with("typ", json!("at+jwt")), &good).unwrap(), "invalid_request"),
        ("no typ", sign_raw(&k.ed, &json!({"alg": "EdDSA", "kid": k.ed.kid()}), &good).unwrap(), "invalid_request"),
        ("alg none", none, "invalid_request"),
        ("HS256", hs256, "invalid_key"),
        ("alg not the key's", sign_raw(&k.ed, &ed_with("alg", json!("ES256")), &good).unwrap(), "invalid_key"),
        ("unknown kid", sign_raw(&other_key, &header_for(&other_key), &good).unwrap(), "invalid_key"),
        ("no kid", sign_raw(&k.ed, &json!({"typ": "secevent+jwt", "alg": "EdDSA"}), &good).unwrap(), "invalid_key"),
        ("jwk in header", sign_raw(&k.ed, &ed_with("jwk", k.ed.public().to_json()), &good).unwrap(), "invalid_request"),
        ("bad signature", bad_signature, "invalid_key"),
        (
            "wrong iss",
            sign_raw(&k.ed, &ed, &with(&|c| c["iss"] = json!("https://evil.example"))).unwrap(),
            "invalid_issuer",
        ),
        (
            "wrong aud",
            sign_raw(&k.ed, &ed, &with(&|c| c["aud"] = json!("https://mail.example"))).unwrap(),
            "invalid_audience",
        ),
        (
            "aud list without us",
            sign_raw(&k.ed, &ed, &with(&|c| c["aud"] = json!(["https://mail.example"]))).unwrap(),
            "invalid_audience",
        ),
        (
            "two events",
            sign_raw(&k.ed, &ed, &with(&|c| c["events"][CREDENTIAL_CHANGE] = json!({}))).unwrap(),
            "invalid_request",
        ),
        ("no event", sign_raw(&k.ed, &ed, &with(&|c| c["events"] = json!({}))).unwrap(), "invalid_request"),
        (
            "event not an object",
            sign_raw(&k.ed, &ed, &with(&|c| c["events"][SESSION_REVOKED] = json!("x"))).unwrap(),
            "invalid_request",
        ),
        ("sub present", sign_raw(&k.ed, &ed, &with(&|c| c["sub"] = json!("usr_1"))).unwrap(), "invalid_request"),
        ("exp present", sign_raw(&k.ed, &ed, &with(&|c| c["exp"] = json!(NOW + 60))).unwrap(), "invalid_request"),
        (
            "iat in the future",
            sign_raw(&k.ed, &ed, &with(&|c| c["iat"] = json!(NOW + 3600))).unwrap(),
            "invalid_request",
        ),
        (
            "no jti",
            sign_raw(
                &k.ed,
                &ed,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("jti");
                }),
            )
            .unwrap(),
            "invalid_request",
        ),
        (
            "revocation without subject",
            sign_raw(
                &k.ed,
                &ed,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("sub_id");
                }),
            )
            .unwrap(),
            "invalid_request",
        ),
        (
            "sub_id not an identifier",
            sign_raw(&k.ed, &ed, &with(&|c| c["sub_id"] = json!({"format": "opaque"}))).unwrap(),
            "invalid_request",
        ),
        ("claims not JSON", sign_raw(&k.ed, &ed, &"not an object").unwrap(), "invalid_request"),
        ("not a JWS", "not.a.jws".into(), "invalid_request"),
        ("garbage", "{\"sets\": 1}".into(), "invalid_request"),
        ("oversized", "a".repeat(super::set::MAX_SET_BYTES + 1), "invalid_request"),
    ];
    let f = fixture();
    let token = access_token();
    for (what, set, code) in cases {
        let (status, body) = push(&f.receiver, &set).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["err"], code, "{what}: {body}");
        assert!(body["description"].as_str().is_some_and(|d| !d.is_empty()), "{what}");
        assert!(f.verifier.verify(&token).await.is_ok(), "{what} changed the token's fate");
        assert!(f.events.lock().unwrap().is_empty(), "{what} reached the application");
    }
    // The same SET, well-formed, is then accepted: nothing was burned.
    assert_eq!(push(&f.receiver, &revocation(Signer::Ed, "set-bad")).await.0, StatusCode::ACCEPTED);
}

fn header_for(key: &SigningKey) -> Value {
    json!({"typ": "secevent+jwt", "alg": key.alg().name(), "kid": key.kid()})
}

#[tokio::test]
async fn the_push_request_itself_is_checked() {
    let f = fixture();
    let receiver = f.receiver.clone().with_push_authorization("Bearer push-secret");
    let set = revocation(Signer::Ed, "set-1").into_bytes();
    // What, Content-Type, Authorization, body, the error code.
    type Case = (&'static str, &'static str, Option<&'static str>, Vec<u8>, &'static str);
    let cases: Vec<Case> = vec![
        ("no authorization", "application/secevent+jwt", None, set.clone(), "authentication_failed"),
        ("wrong authorization", "application/secevent+jwt", Some("Bearer nope"), set.clone(), "authentication_failed"),
        ("wrong media type", "application/json", Some("Bearer push-secret"), set.clone(), "invalid_request"),
        (
            "oversized body",
            "application/secevent+jwt",
            Some("Bearer push-secret"),
            vec![b'a'; 1 << 20],
            "invalid_request",
        ),
        ("not UTF-8", "application/secevent+jwt", Some("Bearer push-secret"), vec![0xff, 0xfe], "invalid_request"),
    ];
    for (what, ct, auth, body, code) in cases {
        let (status, answer) = push_raw(&receiver, ct, auth, body).await;
        assert_eq!((status, answer["err"].as_str()), (StatusCode::BAD_REQUEST, Some(code)), "{what}: {answer}");
        assert!(!f.verifier.is_revoked(TOKEN_JTI), "{what}");
    }
    let (status, _) = push_raw(&receiver, "application/secevent+jwt", Some("Bearer push-secret"), set).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(f.verifier.is_revoked(TOKEN_JTI));
}

#[tokio::test]
async fn a_set_is_acted_on_once() {
    let f = fixture();
    let set = revocation(Signer::Ed, "set-1");
    assert_eq!(push(&f.receiver, &set).await.0, StatusCode::ACCEPTED);
    // The transmitter retrying the same SET: acknowledged, not acted on again.
    assert_eq!(push(&f.receiver, &set).await.0, StatusCode::ACCEPTED);
    assert!(matches!(f.receiver.receive(&set).await, Ok(Received::Duplicate { jti }) if jti == "set-1"));
    assert_eq!(f.events.lock().unwrap().len(), 1);
    // Another SET reusing the jti is refused.
    let other = sign_with(Signer::Ed, &header(Signer::Ed), &revoked_claims("set-1", "tok_other"));
    let (status, body) = push(&f.receiver, &other).await;
    assert_eq!((status, body["err"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
    assert!(!f.verifier.is_revoked("tok_other"));
    assert_eq!(f.events.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn other_events_reach_the_application_without_revoking() {
    let f = fixture();
    let verification = json!({
        "iss": ISS, "aud": [AUD, "https://other.example"], "iat": NOW, "jti": "set-v",
        "events": {VERIFICATION: {"state": "VGhpcyBpcyBhbiBleGFtcGxl"}}
    });
    let change = json!({
        "iss": ISS, "aud": AUD, "iat": NOW, "jti": "set-c", "txn": "tx-1",
        "sub_id": {"user": {"format": "opaque", "id": "usr_1"}, "session": {"format": "opaque", "id": TOKEN_JTI}},
        "events": {CREDENTIAL_CHANGE: {"credential_type": "x509", "change_type": "revoke", "event_timestamp": NOW}}
    });
    let unknown = json!({
        "iss": ISS, "aud": AUD, "iat": NOW, "jti": "set-u", "sub_id": {"format": "email", "email": "a@example.com"},
        "events": {"https://example.com/event/unknown": {}}
    });
    assert!(!f.receiver.verified("VGhpcyBpcyBhbiBleGFtcGxl"));
    for (claims, signer) in [(verification, Signer::Ec), (change, Signer::Rsa), (unknown, Signer::Ed)] {
        let (status, body) = push(&f.receiver, &sign_with(signer, &header(signer), &claims)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    assert!(f.receiver.verified("VGhpcyBpcyBhbiBleGFtcGxl"));
    assert!(!f.receiver.verified("another"));
    assert!(f.verifier.verify(&access_token()).await.is_ok(), "only session-revoked revokes");
    let events = f.events.lock().unwrap();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Verification, EventKind::CredentialChange, EventKind::Other]);
    let change = events.get(1).unwrap();
    assert_eq!(change.txn.as_deref(), Some("tx-1"));
    assert!(matches!(&change.subject, Some(SubjectId::Complex(m)) if m.len() == 2));
    assert_eq!(events.get(2).unwrap().subject, Some(SubjectId::Email { email: "a@example.com".into() }));
}

#[tokio::test]
async fn an_rsa_key_verifies_sets_but_never_access_tokens() {
    let f = fixture();
    let claims = serde_json::to_value(token_claims()).unwrap();
    let rsa_token = sign_with(Signer::Rsa, &json!({"typ": "at+jwt", "alg": "RS256", "kid": "rsa-1"}), &claims);
    assert!(matches!(f.verifier.verify(&rsa_token).await, Err(VerifyError::Token(_))));
    assert_eq!(push(&f.receiver, &revocation(Signer::Rsa, "set-1")).await.0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn revocations_are_remembered_for_the_retention_or_until_the_token_expires() {
    let f = fixture_with(|c| c.revocation_retention = 100);
    let token = access_token(); // expires at NOW + 300
    assert_eq!(push(&f.receiver, &revocation(Signer::Ed, "set-1")).await.0, StatusCode::ACCEPTED);
    f.clock.store(NOW + 50, Ordering::SeqCst);
    // Presented while remembered: kept until the token's exp.
    assert!(f.verifier.verify(&token).await.is_err());
    f.clock.store(NOW + 299, Ordering::SeqCst);
    assert_eq!(f.verifier.verify(&token).await, Err(VerifyError::InvalidToken("token revoked".into())));
    f.clock.store(NOW + 300, Ordering::SeqCst);
    assert!(!f.verifier.is_revoked(TOKEN_JTI));

    // Never presented: forgotten after the retention.
    let g = fixture_with(|c| c.revocation_retention = 100);
    g.receiver.receive(&revocation(Signer::Ed, "set-2")).await.unwrap();
    g.clock.store(NOW + 99, Ordering::SeqCst);
    assert!(g.verifier.is_revoked(TOKEN_JTI));
    g.clock.store(NOW + 100, Ordering::SeqCst);
    assert!(!g.verifier.is_revoked(TOKEN_JTI));
}

#[tokio::test]
async fn a_full_memory_asks_the_transmitter_to_come_back() {
    let f = fixture_with(|c| c.max_revocations = 1);
    assert_eq!(push(&f.receiver, &revocation(Signer::Ed, "set-1")).await.0, StatusCode::ACCEPTED);
    let second = sign_with(Signer::Ed, &header(Signer::Ed), &revoked_claims("set-2", "tok_second"));
    let (status, body) = push(&f.receiver, &second).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(!f.verifier.is_revoked("tok_second"));
    assert_eq!(f.events.lock().unwrap().len(), 1);
    // Once the first is forgotten, the same SET is taken.
    f.clock.store(NOW + 86_400, Ordering::SeqCst);
    assert_eq!(push(&f.receiver, &second).await.0, StatusCode::ACCEPTED);
    assert!(f.verifier.is_revoked("tok_second"));
}

#[test]
fn subject_identifiers_are_read_per_rfc_9493() {
    let ok = [
        (json!({"format": "opaque", "id": "x"}), SubjectId::Opaque { id: "x".into() }),
        (
            json!({"format": "iss_sub", "iss": "https://i", "sub": "s"}),
            SubjectId::IssSub { iss: "https://i".into(), sub: "s".into() },
        ),
        (json!({"format": "phone_number", "phone_number": "+1"}), SubjectId::PhoneNumber { phone_number: "+1".into() }),
        (json!({"format": "account", "uri": "acct:a@b"}), SubjectId::Account { uri: "acct:a@b".into() }),
        (json!({"format": "did", "url": "did:example:1"}), SubjectId::Did { url: "did:example:1".into() }),
        (
            json!({"format": "aliases", "identifiers": [{"format": "uri", "uri": "https://u"}]}),
            SubjectId::Aliases { identifiers: vec![SubjectId::Uri { uri: "https://u".into() }] },
        ),
        (
            json!({"format": "complex", "user": {"format": "email", "email": "a@b"}, "session": {"format": "opaque", "id": "t"}}),
            SubjectId::Complex(
                [
                    ("session".to_owned(), SubjectId::Opaque { id: "t".into() }),
                    ("user".to_owned(), SubjectId::Email { email: "a@b".into() }),
                ]
                .into(),
            ),
        ),
    ];
    for (v, want) in ok {
        assert_eq!(SubjectId::parse(&v), Some(want), "{v}");
    }
    assert!(matches!(SubjectId::parse(&json!({"format": "x-new", "a": 1})), Some(SubjectId::Other { .. })));
    for bad in [
        json!("opaque"),
        json!({}),
        json!({"format": "opaque", "id": ""}),
        json!({"format": "opaque", "id": 1}),
        json!({"format": 3}),
        json!({"format": ""}),
        json!({"format": "aliases", "identifiers": []}),
        json!({"format": "aliases", "identifiers": [{"format": "aliases", "identifiers": [{"format": "opaque", "id": "x"}]}]}),
        json!({"user": {"user": {"format": "opaque", "id": "x"}}}),
        json!({"user": "x"}),
        json!({"format": "complex"}),
        json!({"format": "complex", "user": "x"}),
        json!({"format": "complex", "user": {"format": "complex", "session": {"format": "opaque", "id": "t"}}}),
    ] {
        assert_eq!(SubjectId::parse(&bad), None, "{bad}");
    }
}

/// A transmitter's poll endpoint: hands out its queue until each SET is
/// acknowledged, and records every request.
#[derive(Default)]
struct Transmitter {
    queue: Mutex<Vec<(String, String)>>,
    requests: Mutex<Vec<Value>>,
    /// Requests answered 500 before the real answers.
    failures: AtomicUsize,
    /// Requests from this one on are answered 500 (0: none).
    fail_from: AtomicUsize,
}

async fn transmitter(t: Arc<Transmitter>) -> String {
    async fn poll(State(t): State<Arc<Transmitter>>, req: Request) -> Response {
        let auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if auth != "Bearer poll-token" {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        let n = {
            let mut requests = t.requests.lock().unwrap();
            requests.push(body.clone());
            requests.len()
        };
        let fail_from = t.fail_from.load(Ordering::SeqCst);
        if fail_from > 0 && n >= fail_from {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        if t.failures.load(Ordering::SeqCst) > 0 {
            t.failures.fetch_sub(1, Ordering::SeqCst);
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        let mut queue = t.queue.lock().unwrap();
        for acked in body["ack"].as_array().unwrap() {
            queue.retain(|(jti, _)| jti != acked.as_str().unwrap());
        }
        for refused in body["setErrs"].as_object().into_iter().flat_map(|m| m.keys()) {
            queue.retain(|(jti, _)| jti != refused);
        }
        let max = usize::try_from(body["maxEvents"].as_u64().unwrap()).unwrap();
        let sets: serde_json::Map<String, Value> =
            queue.iter().take(max).map(|(j, s)| (j.clone(), Value::String(s.clone()))).collect();
        Json(json!({"sets": sets, "moreAvailable": queue.len() > max})).into_response()
    }
    let app = Router::new().route("/ssf/poll/{id}", post(poll)).with_state(t);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ssf/poll/str_1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn the_poller_acknowledges_reports_errors_and_handles_redelivery_once() {
    let f = fixture();
    let t = Arc::new(Transmitter::default());
    let url = transmitter(t.clone()).await;
    let good = revocation(Signer::Ed, "set-1");
    let mut forged = revoked_claims("set-2", "tok_forged");
    forged["iss"] = json!("https://evil.example");
    let forged = sign_with(Signer::Ed, &header(Signer::Ed), &forged);
    *t.queue.lock().unwrap() = vec![("set-1".into(), good.clone()), ("set-2".into(), forged)];
    // The first request fails: the poller backs off and comes back.
    t.failures.store(1, Ordering::SeqCst);
    let mut config = PollConfig::new(&url);
    config.token = Some("poll-token".into());
    config.return_immediately = true;
    config.idle_interval = Duration::from_millis(20);
    let poller = f.receiver.spawn_poller(config);
    until("the revocation", || f.verifier.is_revoked(TOKEN_JTI)).await;
    until("the queue to drain", || t.queue.lock().unwrap().is_empty()).await;
    {
        let requests = t.requests.lock().unwrap();
        assert!(requests.len() >= 3, "{requests:?}");
        let first = requests.first().unwrap();
        assert_eq!((first["ack"].clone(), first["returnImmediately"].clone()), (json!([]), json!(true)));
        let acked = requests.iter().find(|r| r["ack"] == json!(["set-1"])).expect("set-1 acknowledged");
        assert_eq!(acked["setErrs"]["set-2"]["err"], "invalid_issuer", "{acked}");
    }
    // The transmitter lost the acknowledgement and delivers set-1 again,
    // with a new one: set-1 is acknowledged again, not acted on twice.
    let newer = sign_with(Signer::Rsa, &header(Signer::Rsa), &revoked_claims("set-3", "tok_other"));
    *t.queue.lock().unwrap() = vec![("set-1".into(), good), ("set-3".into(), newer)];
    until("the second revocation", || f.verifier.is_revoked("tok_other")).await;
    until("the queue to drain again", || t.queue.lock().unwrap().is_empty()).await;
    assert_eq!(f.events.lock().unwrap().iter().filter(|e| e.jti == "set-1").count(), 1);
    poller.stop().await;
    let after = t.requests.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(t.requests.lock().unwrap().len(), after, "no request after stop");
}

#[tokio::test]
async fn a_set_delivered_under_another_jti_is_refused() {
    let f = fixture();
    let t = Arc::new(Transmitter::default());
    let url = transmitter(t.clone()).await;
    *t.queue.lock().unwrap() = vec![("set-9".into(), revocation(Signer::Ed, "set-1"))];
    let mut config = PollConfig::new(&url);
    config.token = Some("poll-token".into());
    config.return_immediately = true;
    config.idle_interval = Duration::from_millis(20);
    let poller = f.receiver.spawn_poller(config);
    until("the error report", || {
        t.requests.lock().unwrap().iter().any(|r| r["setErrs"]["set-9"]["err"] == "invalid_request")
    })
    .await;
    poller.stop().await;
    assert!(!f.verifier.is_revoked(TOKEN_JTI));
}

#[tokio::test]
async fn stopping_sends_the_acknowledgements_owed() {
    let f = fixture();
    let t = Arc::new(Transmitter::default());
    let url = transmitter(t.clone()).await;
    *t.queue.lock().unwrap() = vec![("set-1".into(), revocation(Signer::Ed, "set-1"))];
    // Only the first request is answered: the acknowledgement of set-1
    // stays owed while the poller backs off.
    t.fail_from.store(2, Ordering::SeqCst);
    let mut config = PollConfig::new(&url);
    config.token = Some("poll-token".into());
    config.return_immediately = true;
    let poller = f.receiver.spawn_poller(config);
    until("the revocation", || f.verifier.is_revoked(TOKEN_JTI)).await;
    until("a failed acknowledgement", || t.requests.lock().unwrap().len() >= 2).await;
    poller.stop().await;
    let requests = t.requests.lock().unwrap();
    let last = requests.last().unwrap();
    assert_eq!(last["ack"], json!(["set-1"]), "{requests:?}");
    assert_eq!((last["maxEvents"].clone(), last["returnImmediately"].clone()), (json!(0), json!(true)));
}

/// The issuer's JWKS with an RSA key beside the token keys, fetched over
/// HTTP: access tokens still verify (an RSA key in the set used to refuse
/// the whole set), and so do RS256 SETs.
#[tokio::test]
async fn a_published_rsa_key_is_read_for_sets() {
    async fn jwks_json() -> Json<Value> {
        Json(jwks().to_json())
    }
    let app = Router::new().route("/jwks.json", get(jwks_json));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let clock = Arc::new(AtomicI64::new(NOW));
    let mut config = VerifierConfig::new(ISS, AUD, "https://cal.example");
    config.jwks_uri = Some(format!("{base}/jwks.json"));
    let c = clock.clone();
    config.clock = Arc::new(move || c.load(Ordering::SeqCst));
    let verifier = Verifier::new(config).unwrap();
    let receiver = SsfReceiver::new(&verifier);
    assert!(verifier.verify(&access_token()).await.is_ok());
    assert!(matches!(receiver.receive(&revocation(Signer::Rsa, "set-1")).await, Ok(Received::Accepted(_))));
    assert!(verifier.verify(&access_token()).await.is_err());
}

/// A Mandate playing issuer and transmitter: its SSF metadata, a token
/// endpoint handing out tokens per scope, stream calls and a poll endpoint
/// that refuses the first poll token.
#[derive(Default)]
struct Issuer {
    base: Mutex<String>,
    set: Mutex<Option<String>>,
    scopes: Mutex<Vec<String>>,
    calls: Mutex<Vec<(String, String, Value)>>,
    polls: AtomicUsize,
    tokens: AtomicUsize,
}

async fn issuer(state: Arc<Issuer>) -> String {
    async fn metadata(State(i): State<Arc<Issuer>>) -> Json<Value> {
        let base = i.base.lock().unwrap().clone();
        Json(json!({
            "spec_version": "1_0", "issuer": base, "jwks_uri": format!("{base}/jwks.json"),
            "configuration_endpoint": format!("{base}/ssf/streams"),
            "verification_endpoint": format!("{base}/ssf/verify"),
        }))
    }
    async fn token(State(i): State<Arc<Issuer>>, body: axum::body::Bytes) -> Json<Value> {
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        assert_eq!(get("grant_type"), "client_credentials");
        assert_eq!(get("resource"), *i.base.lock().unwrap());
        assert_eq!(mandate_jose::assertion::peek_issuer(&get("client_assertion")).unwrap(), "res_calendar");
        let scope = get("scope");
        i.scopes.lock().unwrap().push(scope.clone());
        let n = i.tokens.fetch_add(1, Ordering::SeqCst);
        Json(json!({"access_token": format!("{scope}-{n}"), "token_type": "Bearer", "expires_in": 300}))
    }
    fn bearer(req: &Request) -> String {
        let h = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        h.strip_prefix("Bearer ").unwrap_or_default().to_owned()
    }
    async fn streams(State(i): State<Arc<Issuer>>, req: Request) -> Response {
        let token = bearer(&req);
        assert!(token.starts_with("ssf.manage-"), "{token}");
        let method = req.method().to_string();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let body = axum::body::to_bytes(req.into_body(), 1 << 16).await.unwrap();
        let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
        i.calls.lock().unwrap().push((method.clone(), query, body));
        let base = i.base.lock().unwrap().clone();
        let stream = json!({"stream_id": "str_1", "iss": base, "aud": AUD,
            "delivery": {"method": "urn:ietf:rfc:8936", "endpoint_url": format!("{base}/ssf/poll/str_1")}});
        match method.as_str() {
            "POST" => (StatusCode::CREATED, Json(stream)).into_response(),
            "GET" => Json(stream).into_response(),
            _ => StatusCode::NO_CONTENT.into_response(),
        }
    }
    async fn verify(State(i): State<Arc<Issuer>>, req: Request) -> StatusCode {
        assert!(bearer(&req).starts_with("ssf.manage-"));
        let body = axum::body::to_bytes(req.into_body(), 1 << 16).await.unwrap();
        i.calls.lock().unwrap().push(("VERIFY".into(), String::new(), serde_json::from_slice(&body).unwrap()));
        StatusCode::NO_CONTENT
    }
    async fn poll(State(i): State<Arc<Issuer>>, req: Request) -> Response {
        let token = bearer(&req);
        assert!(token.starts_with("ssf.read-"), "{token}");
        // The first poll token is refused, as a rotated-out one would be.
        if i.polls.fetch_add(1, Ordering::SeqCst) == 0 {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let body = axum::body::to_bytes(req.into_body(), 1 << 16).await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        let mut set = i.set.lock().unwrap();
        if body["ack"] == json!(["set-1"]) {
            set.take();
        }
        let sets = match &*set {
            Some(s) => json!({"set-1": s}),
            None => json!({}),
        };
        Json(json!({"sets": sets, "moreAvailable": false})).into_response()
    }
    let app = Router::new()
        .route("/.well-known/ssf-configuration", get(metadata))
        .route("/oauth/token", post(token))
        .route("/ssf/streams", post(streams).get(streams).delete(streams))
        .route("/ssf/verify", post(verify))
        .route("/ssf/poll/str_1", post(poll))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *state.base.lock().unwrap() = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test]
async fn a_stream_is_created_and_polled_with_the_resources_own_credentials() {
    let state = Arc::new(Issuer::default());
    let base = issuer(state.clone()).await;
    let mut claims = revoked_claims("set-1", TOKEN_JTI);
    claims["iss"] = json!(base);
    *state.set.lock().unwrap() = Some(sign_with(Signer::Ed, &header(Signer::Ed), &claims));
    let mut config = VerifierConfig::new(&base, AUD, "https://cal.example");
    config.clock = Arc::new(|| NOW);
    let client_key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    config.remote_check = Some(crate::RemoteCheck { client_id: "res_calendar".into(), key: Arc::new(client_key) });
    let verifier = Verifier::with_static_keys(config, jwks()).unwrap();
    let receiver = SsfReceiver::new(&verifier);

    let stream = receiver.create_stream(&Delivery::Poll, "calendar").await.unwrap();
    assert_eq!(stream.stream_id, "str_1");
    assert_eq!(stream.method, "urn:ietf:rfc:8936");
    let url = stream.endpoint_url.unwrap();
    assert_eq!(url, format!("{base}/ssf/poll/str_1"));
    {
        let calls = state.calls.lock().unwrap();
        let (method, _, body) = calls.first().unwrap();
        assert_eq!(method, "POST");
        assert_eq!(body["delivery"], json!({"method": "urn:ietf:rfc:8936"}));
        assert!(body["events_requested"].as_array().unwrap().contains(&json!(SESSION_REVOKED)));
    }

    let mut poll = PollConfig::new(url);
    poll.return_immediately = true;
    poll.idle_interval = Duration::from_millis(20);
    let poller = receiver.spawn_poller(poll);
    // The refused token costs one backoff (1 s).
    for _ in 0..400 {
        if verifier.is_revoked(TOKEN_JTI) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(verifier.is_revoked(TOKEN_JTI));
    until("the acknowledgement", || state.set.lock().unwrap().is_none()).await;
    poller.stop().await;

    receiver.request_verification("str_1", "state-1").await.unwrap();
    assert_eq!(receiver.get_stream("str_1").await.unwrap().stream_id, "str_1");
    receiver.delete_stream("str_1").await.unwrap();
    let calls = state.calls.lock().unwrap();
    let summary: Vec<(&str, &str)> = calls.iter().map(|(m, q, _)| (m.as_str(), q.as_str())).collect();
    assert_eq!(summary, [("POST", ""), ("VERIFY", ""), ("GET", "stream_id=str_1"), ("DELETE", "stream_id=str_1")]);
    assert_eq!(calls.get(1).unwrap().2, json!({"stream_id": "str_1", "state": "state-1"}));
    // One manage token, kept; a read token, and a new one after the 401.
    assert_eq!(*state.scopes.lock().unwrap(), ["ssf.manage", "ssf.read", "ssf.read"]);
}

#[tokio::test]
async fn stream_endpoints_outside_the_issuer_are_not_called() {
    async fn metadata() -> Json<Value> {
        Json(json!({"configuration_endpoint": "http://169.254.169.254/ssf/streams"}))
    }
    let app = Router::new().route("/.well-known/ssf-configuration", get(metadata));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut config = VerifierConfig::new(&base, AUD, "https://cal.example");
    let client_key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    config.remote_check = Some(crate::RemoteCheck { client_id: "res_calendar".into(), key: Arc::new(client_key) });
    let receiver = SsfReceiver::new(&Verifier::with_static_keys(config, jwks()).unwrap());
    let got = receiver.create_stream(&Delivery::Poll, "calendar").await;
    assert!(matches!(got, Err(StreamError::Config(_))), "{got:?}");
}
