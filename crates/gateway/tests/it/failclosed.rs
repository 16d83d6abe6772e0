//! SECURITY row 49: when Mandate cannot be asked, or a body cannot be
//! read, nothing is forwarded; an unreachable upstream is a 502.

use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use mandate_gateway::code;
use mandate_jose::{KeyAlg, SigningKey};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn mandate_unreachable_refuses_and_forwards_nothing() {
    let (m, u, gw) = world().await;
    let token = m.token(MCP_RESOURCE);
    // Keys are cached by a first request; then Mandate goes down.
    assert_eq!(gw.rpc(&token, json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).await.status(), StatusCode::OK);
    assert_eq!(u.calls(), 1);
    m.down.store(true, Ordering::SeqCst);
    let fresh = m.token(MCP_RESOURCE);
    for msg in [call(2, "read_file", json!({})), json!({"jsonrpc": "2.0", "id": 3, "method": "ping"})] {
        let resp = gw.rpc(&fresh, msg.clone()).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{msg}");
        assert_eq!(resp.headers()["retry-after"], "5");
        let body = json_body(resp).await;
        assert_eq!(body["error"]["code"], code::AUTHORIZATION_UNAVAILABLE);
        assert_eq!(body["id"], msg["id"]);
    }
    // A list cannot be filtered: an error, not the whole list.
    let body = json_body(gw.rpc(&token, list(4)).await).await;
    assert_eq!(body["error"]["code"], code::AUTHORIZATION_UNAVAILABLE, "{body}");
    assert!(!body.to_string().contains("delete_all"));
    // The ping (exchange down) and the call (check down) never went out;
    // the list did, with the token exchanged before the outage.
    assert_eq!(u.calls(), 2);
    assert!(u.seen.lock().unwrap().iter().all(|s| s.body["method"] != "tools/call"));
}

#[tokio::test]
async fn an_issuer_that_cannot_be_reached_at_all() {
    let m = mandate().await;
    let u = upstream().await;
    // The gateway trusts an issuer on a dead port: no keys, no decisions.
    let gw = gateway(&dead_url(), &u.url, SigningKey::generate(KeyAlg::EdDSA).unwrap()).await;
    let resp = gw.rpc(&m.token(MCP_RESOURCE), call(1, "read_file", json!({}))).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "5");
    assert_eq!(u.calls(), 0);
}

#[tokio::test]
async fn a_refused_exchange_is_forbidden_and_forwards_nothing() {
    let (m, u, gw) = world().await;
    m.refuse_exchange.store(true, Ordering::SeqCst);
    let resp = gw.rpc(&m.token(MCP_RESOURCE), call(1, "read_file", json!({}))).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body = json_body(resp).await;
    assert_eq!(body["error"]["code"], code::FORBIDDEN);
    assert!(!body.to_string().contains("revoked"), "Mandate's description stays in the log");
    assert_eq!(u.calls(), 0);
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_bad_gateway() {
    let m = mandate().await;
    let gw = gateway(&m.url, &dead_url(), SigningKey::generate(KeyAlg::EdDSA).unwrap()).await;
    let resp = gw.rpc(&m.token(MCP_RESOURCE), call(1, "read_file", json!({}))).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body = json_body(resp).await;
    assert_eq!(body["id"], 1);
    assert_eq!(body["error"]["code"], code::UPSTREAM_UNAVAILABLE);
    let resp =
        gw.http.get(format!("{}{API_PREFIX}/x", gw.url)).bearer_auth(m.token(API_RESOURCE)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(json_body(resp).await["error"], "bad_gateway");
}

#[tokio::test]
async fn bodies_that_cannot_be_read_are_refused_not_forwarded() {
    let (m, u, gw) = world().await;
    let token = m.token(MCP_RESOURCE);
    let cases: [(&str, StatusCode, i64); 6] = [
        ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":", StatusCode::BAD_REQUEST, code::PARSE_ERROR),
        ("\u{feff}garbage", StatusCode::BAD_REQUEST, code::PARSE_ERROR),
        // Two names for one call: which would the upstream run?
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","name":"delete_all"}}"#,
            StatusCode::BAD_REQUEST,
            code::PARSE_ERROR,
        ),
        (r#"{"id":1,"method":"tools/call"}"#, StatusCode::BAD_REQUEST, code::INVALID_REQUEST),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            StatusCode::BAD_REQUEST,
            code::INVALID_PARAMS,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"read_file"}}"#,
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
        ),
    ];
    for (body, status, rpc) in cases {
        let resp = gw.post(Some(&token), body).await;
        assert_eq!(resp.status(), status, "{body}");
        assert_eq!(json_body(resp).await["error"]["code"], rpc, "{body}");
    }
    // Not JSON by its media type.
    let resp = gw
        .http
        .post(gw.mcp_url())
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(list(1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(u.calls(), 0);
    assert!(m.checks().is_empty(), "nothing was even decided");
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let (m, u, gw) = world().await;
    let token = m.token(MCP_RESOURCE);
    // The test gateway takes 64 KiB.
    let big = call(1, "read_file", json!({"data": "x".repeat(70_000)})).to_string();
    let resp = gw.post(Some(&token), big.clone()).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_body(resp).await["error"]["code"], code::INVALID_REQUEST);
    // Streamed without a Content-Length: cut off at the limit all the same.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::spawn(async move {
        for chunk in big.as_bytes().chunks(16_384) {
            if tx.send(Ok(chunk.to_vec())).await.is_err() {
                return;
            }
        }
    });
    let stream = ReceiverStream(rx);
    let resp = gw
        .http
        .post(gw.mcp_url())
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(u.calls(), 0);
    assert!(m.checks().is_empty());
}

/// A request body from a channel, without a length.
struct ReceiverStream(tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>);

impl http_body::Body for ReceiverStream {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(|v| http_body::Frame::data(v.into()))))
    }
}
