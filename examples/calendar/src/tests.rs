//! The calendar in process, with fixed keys and, for decisions, a fake
//! check API.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, header};
use axum::routing::post;
use mandate_jose::{JwkSet, KeyAlg, SigningKey, access};
use mandate_model::claims::{AccessTokenClaims, Actor};
use mandate_verifier::{RemoteCheck, VerifierConfig, system_time};
use tower::ServiceExt;

use super::*;

const AUD: &str = "https://calendar.example";

fn token(key: &SigningKey, iss: &str, sub: &str, scope: &str) -> String {
    let now = system_time();
    let claims = AccessTokenClaims {
        iss: iss.into(),
        sub: sub.into(),
        aud: AUD.into(),
        exp: now + 300,
        iat: now,
        nbf: now,
        jti: "tok_1".into(),
        client_id: "agt_planner".into(),
        scope: scope.into(),
        act: Some(Actor { sub: "agt_summarizer".into(), act: None }),
        may_act: None,
        authorization_details: None,
        grant_id: None,
        purpose: None,
        cnf: None,
        status: None,
    };
    access::mint(key, &claims).unwrap()
}

fn verifier(key: &SigningKey, iss: &str, remote: Option<RemoteCheck>) -> Verifier {
    let mut c = VerifierConfig::new(iss, AUD, "http://127.0.0.1:8080");
    c.remote_check = remote;
    Verifier::with_static_keys(c, JwkSet { keys: vec![key.public().clone()] }).unwrap()
}

async fn call(app: &Router, method: Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path).header(header::AUTHORIZATION, format!("Bearer {token}"));
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn events_by_scope_and_owner() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let iss = "http://127.0.0.1:7070";
    let app = router(verifier(&key, iss, None));
    let alice = token(&key, iss, "usr_alice", "calendar:read calendar:write");
    let new = json!({"title": "Offsite", "start": "2026-05-04T09:00:00Z"});

    let (st, ev) = call(&app, Method::POST, "/events", &alice, Some(new.clone())).await;
    assert_eq!(st, StatusCode::CREATED, "{ev}");
    assert_eq!(ev["id"], "evt_1");
    assert_eq!(ev["owner"], "usr_alice");
    assert_eq!(ev["created_by"], "agt_summarizer", "the current actor");
    assert_eq!(ev["sensitive"], false);

    let (st, list) = call(&app, Method::GET, "/events", &alice, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list, json!([ev]));
    let (st, one) = call(&app, Method::GET, "/events/evt_1", &alice, None).await;
    assert_eq!((st, one), (StatusCode::OK, ev));

    // Bob sees none of Alice's calendar.
    let bob = token(&key, iss, "usr_bob", "calendar:read");
    assert_eq!(call(&app, Method::GET, "/events", &bob, None).await, (StatusCode::OK, json!([])));
    assert_eq!(call(&app, Method::GET, "/events/evt_1", &bob, None).await.0, StatusCode::NOT_FOUND);
    // Reading is not writing.
    let (st, body) = call(&app, Method::POST, "/events", &bob, Some(new)).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "insufficient_scope");
    // Bad input.
    for bad in [
        json!({"title": "", "start": "2026-05-04T09:00:00Z"}),
        json!({"title": "x", "start": "tomorrow"}),
        json!({"title": "x", "start": "2026-05-04T09:00:00Z", "owner": "usr_bob"}),
        json!({"id": "Evt_1", "title": "x", "start": "2026-05-04T09:00:00Z"}),
    ] {
        let (st, body) = call(&app, Method::POST, "/events", &alice, Some(bad.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["type"], "urn:mandate:problem:invalid-input");
    }
    // A chosen id, once per calendar.
    let named = json!({"id": "offsite-2", "title": "Offsite, day 2", "start": "2026-05-05T09:00:00Z"});
    assert_eq!(call(&app, Method::POST, "/events", &alice, Some(named.clone())).await.1["id"], "offsite-2");
    assert_eq!(call(&app, Method::POST, "/events", &alice, Some(named)).await.0, StatusCode::CONFLICT);
    // No token at all.
    let resp = app.clone().oneshot(Request::get("/events").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // The metadata needs none.
    let resp = app.oneshot(Request::get(mandate_verifier::METADATA_PATH).body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// A check API that wants approval for sensitive events and denies `get`.
async fn fake_issuer() -> String {
    async fn token() -> Json<Value> {
        Json(json!({"access_token": "check-token", "token_type": "Bearer", "expires_in": 300}))
    }
    async fn check(Json(req): Json<Value>) -> Json<Value> {
        let decision = if req["resource"]["properties"]["sensitive"] == "true" {
            assert_eq!(req["resource"]["id"], "board-review");
            json!({"decision": "approval_required", "reasons": ["usr_alice: policy3 wants approval"], "approval_request": "apr_1", "audit_seq": 7})
        } else if req["action"] == "get" {
            json!({"decision": "deny", "reasons": ["agt_summarizer: no policy allows get"], "audit_seq": 8})
        } else {
            assert_eq!(req["resource"]["properties"]["owner"], "usr_alice", "{req}");
            json!({"decision": "allow", "reasons": ["policy0"], "audit_seq": 9})
        };
        Json(decision)
    }
    let app = Router::new().route("/oauth/token", post(token)).route("/v1/check", post(check));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn each_action_is_decided_by_the_check_api() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let iss = fake_issuer().await;
    let remote =
        RemoteCheck { client_id: "res_calendar".into(), key: Arc::new(SigningKey::generate(KeyAlg::EdDSA).unwrap()) };
    let app = router(verifier(&key, &iss, Some(remote)));
    let alice = token(&key, &iss, "usr_alice", "calendar:read calendar:write");

    let plain = json!({"title": "Standup", "start": "2026-05-04T09:00:00Z"});
    assert_eq!(call(&app, Method::POST, "/events", &alice, Some(plain)).await.0, StatusCode::CREATED);
    assert_eq!(call(&app, Method::GET, "/events", &alice, None).await.0, StatusCode::OK);

    let sensitive =
        json!({"id": "board-review", "title": "Board review", "start": "2026-05-05T09:00:00Z", "sensitive": true});
    let (st, body) = call(&app, Method::POST, "/events", &alice, Some(sensitive)).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(body["type"], "urn:mandate:problem:approval-required");
    assert_eq!(body["approval_request"], "apr_1");
    assert_eq!(body["audit_seq"], 7);

    let (st, body) = call(&app, Method::GET, "/events/evt_1", &alice, None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(body["type"], "urn:mandate:problem:denied");
    assert_eq!(body["reasons"], json!(["agt_summarizer: no policy allows get"]));
    assert_eq!(call(&app, Method::GET, "/events", &alice, None).await.1.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_pushed_revocation_refuses_the_token_at_once() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let iss = "https://mandate.example";
    let verifier = verifier(&key, iss, None);
    let receiver = SsfReceiver::new(&verifier).with_push_authorization("Bearer push-secret");
    let app = router_with_ssf(verifier, &receiver);
    let t = token(&key, iss, "usr_alice", READ_SCOPE);
    assert_eq!(call(&app, Method::GET, "/events", &t, None).await.0, StatusCode::OK);

    let now = system_time();
    let set = mandate_jose::dpop::sign_raw(
        &key,
        &json!({"typ": "secevent+jwt", "alg": "EdDSA", "kid": key.kid()}),
        &json!({
            "iss": iss, "aud": AUD, "iat": now, "jti": "set_1",
            "sub_id": {"format": "opaque", "id": "tok_1"},
            "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {
                "event_timestamp": now, "initiating_entity": "admin", "reason_admin": {"en": "revoked"}
            }}
        }),
    )
    .unwrap();
    let push = |auth: &'static str| {
        Request::builder()
            .method(Method::POST)
            .uri(SSF_PUSH_PATH)
            .header(header::CONTENT_TYPE, "application/secevent+jwt")
            .header(header::AUTHORIZATION, auth)
            .body(Body::from(set.clone()))
            .unwrap()
    };
    // Without the stream's authorization the push is refused, and changes nothing.
    let refused = app.clone().oneshot(push("Bearer wrong")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(call(&app, Method::GET, "/events", &t, None).await.0, StatusCode::OK);

    let accepted = app.clone().oneshot(push("Bearer push-secret")).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let (status, body) = call(&app, Method::GET, "/events", &t, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "invalid_token");
}
