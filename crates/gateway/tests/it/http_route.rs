//! A plain HTTP route: the token verified, the request forwarded under the
//! upstream's path, no credentials passed on.

use axum::http::StatusCode;
use serde_json::Value;

use crate::support::*;

#[tokio::test]
async fn requests_are_forwarded_without_credentials() {
    let (m, u, gw) = world().await;
    let token = m.token(API_RESOURCE);
    let resp = gw
        .http
        .post(format!("{}{API_PREFIX}/events/today?tz=UTC", gw.url))
        .bearer_auth(&token)
        .header("x-request-id", "r-1")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("www-authenticate").is_none(), "the upstream's challenges stay upstream");
    assert_eq!(json_body(resp).await["path"], "/v1/events/today?tz=UTC");
    let seen = u.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body, Value::String("hello".into()));
    assert!(seen.headers.get("authorization").is_none(), "upstream_token = none: no Authorization");
    assert_eq!(seen.headers["x-request-id"], "r-1");
    assert!(m.checks().is_empty(), "HTTP routes ask no per-request decision");
}

#[tokio::test]
async fn http_routes_need_their_own_audience_and_stay_under_their_path() {
    let (m, u, gw) = world().await;
    let resp = gw.http.get(format!("{}{API_PREFIX}/events", gw.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let www = www_authenticate(&resp);
    assert_eq!(
        www,
        format!(r#"Bearer resource_metadata="{}/.well-known/oauth-protected-resource{API_PREFIX}""#, gw.url)
    );
    let body = json_body(resp).await;
    assert_eq!(
        body,
        serde_json::json!({"error_description": "an access token is required"}),
        "no error code without a token"
    );
    let mcp_token = m.token(MCP_RESOURCE);
    let resp = gw.http.get(format!("{}{API_PREFIX}/events", gw.url)).bearer_auth(&mcp_token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let token = m.token(API_RESOURCE);
    // Sent raw: an HTTP client library would resolve the dots itself.
    for sneaky in ["/%2e%2e/mcp", "/a/%2E%2E/%2e%2e/mcp", "/a%2f..%2fb", "/../../mcp", "/a/.."] {
        assert_eq!(raw_get(&gw.url, &format!("{API_PREFIX}{sneaky}"), &token).await, 400, "{sneaky}");
    }
    assert_eq!(raw_get(&gw.url, &format!("{API_PREFIX}/a/b"), &token).await, 200);
    assert_eq!(u.last().path, "/v1/a/b");
    u.seen.lock().unwrap().clear();
    // A prefix matches whole segments only.
    let resp = gw.http.get(format!("{}{API_PREFIX}x/events", gw.url)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(u.calls(), 0);
}

/// The status of a GET sent byte for byte as written.
async fn raw_get(base: &str, path: &str, token: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").to_owned();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
    })
    .await
    .unwrap()
}
