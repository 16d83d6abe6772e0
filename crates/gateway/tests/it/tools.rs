//! Per-tool decisions: tools/list filtered, tools/call decided, the
//! client's token never forwarded.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use mandate_gateway::code;
use serde_json::{Value, json};

use crate::support::*;

fn deny() -> Value {
    json!({"decision": "deny", "reasons": ["policy: usr is denied"], "chain": []})
}

fn approval() -> Value {
    json!({"decision": "approval_required", "reasons": ["wants approval"], "approval_request": "apr_01JAPPROVAL", "chain": []})
}

#[tokio::test]
async fn tools_list_shows_only_what_may_be_called_json() {
    let (m, u, gw) = world().await;
    m.answer("delete_all", deny());
    m.answer("send_mail", approval());
    let token = m.token(MCP_RESOURCE);
    let resp = gw.rpc(&token, list(7)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["mcp-session-id"], "session-1");
    let body = json_body(resp).await;
    assert_eq!(body["id"], 7);
    // Denied tools are hidden; tools that need approval are listed.
    assert_eq!(tool_names(&body), ["read_file", "write_file", "send_mail"]);
    let mut checked: Vec<Value> = m.checks().iter().map(|c| json!([c["action"], c["resource"]])).collect();
    checked.sort_by_key(|v| v.to_string());
    assert_eq!(
        checked,
        [
            json!(["delete_all", {"type": "tool", "id": "delete_all"}]),
            json!(["read_file", {"type": "tool", "id": "read_file"}]),
            json!(["send_mail", {"type": "tool", "id": "send_mail"}]),
            json!(["write_file", {"type": "tool", "id": "write_file"}]),
        ]
    );
    assert!(m.checks().iter().all(|c| c["token"] == token.as_str()), "decided for the client's token");
    assert_eq!(u.calls(), 1);
}

#[tokio::test]
async fn tools_list_is_filtered_in_event_streams_too() {
    let (m, u, gw) = world().await;
    u.sse.store(true, Ordering::SeqCst);
    m.answer("read_file", deny());
    let resp = gw.rpc(&m.token(MCP_RESOURCE), list(8)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    // The notification before the result passes through byte for byte.
    assert!(text.starts_with(PROGRESS_EVENT), "{text}");
    let rest = text.strip_prefix(PROGRESS_EVENT).unwrap();
    assert!(rest.starts_with("event: message\ndata: "), "{rest}");
    let data = rest.trim_start_matches("event: message\ndata: ").trim_end();
    let result: Value = serde_json::from_str(data).unwrap();
    assert_eq!(result["id"], 8);
    assert_eq!(tool_names(&result), ["write_file", "delete_all", "send_mail"]);
    assert_eq!(u.calls(), 1);
}

#[tokio::test]
async fn an_allowed_call_goes_upstream_with_an_exchanged_token() {
    let (m, u, gw) = world().await;
    let token = m.token(MCP_RESOURCE);
    let args = json!({"path": "/etc/motd", "lines": 3});
    let resp = gw.rpc(&token, call(1, "read_file", args.clone())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json_body(resp).await;
    assert_eq!(body["result"]["content"][0]["text"], "called read_file");

    // Mandate decided it with the arguments as context.
    let check = m.checks().pop().unwrap();
    assert_eq!(check["action"], "read_file");
    assert_eq!(check["resource"], json!({"type": "tool", "id": "read_file"}));
    assert_eq!(check["context"], args);
    assert_eq!(check["token"], token.as_str());

    // The upstream got the exchanged token, never the client's.
    let seen = u.last();
    let auth = seen.headers["authorization"].to_str().unwrap().to_owned();
    assert_eq!(auth, "Bearer exchanged-1");
    assert!(!auth.contains(&token));
    assert!(seen.headers.get("dpop").is_none());
    assert_eq!(seen.body, call(1, "read_file", args));
    let ex = m.exchanges();
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0]["subject_token"], token);
    assert_eq!(ex[0]["subject_token_type"], "urn:ietf:params:oauth:token-type:access_token");
    assert_eq!(ex[0]["resource"], UPSTREAM_AUDIENCE);
    assert!(!ex[0].contains_key("scope"), "Mandate narrows; the gateway asks for no scope");

    // The exchanged token is reused for the same client token; another
    // client token gets its own.
    gw.rpc(&token, call(2, "write_file", json!({}))).await;
    assert_eq!(m.exchanges().len(), 1);
    assert_eq!(u.last().headers["authorization"], "Bearer exchanged-1");
    let other = m.token(MCP_RESOURCE);
    assert_ne!(other, token);
    gw.rpc(&other, call(3, "read_file", json!({}))).await;
    assert_eq!(m.exchanges().len(), 2);
    assert_eq!(u.last().headers["authorization"], "Bearer exchanged-2");
    // One mandate:check token served every check.
    assert_eq!(m.check_tokens.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_call_no_scope_covers_is_a_step_up_challenge() {
    let (m, u, gw) = world().await;
    m.answer(
        "write_file",
        json!({"decision": "deny", "reasons": ["scope: no scope of the token covers write_file"],
               "scopes_needed": ["tools.write"], "chain": []}),
    );
    let resp = gw.rpc(&m.token(MCP_RESOURCE), call(4, "write_file", json!({"path": "a"}))).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let meta_url = format!("{}/.well-known/oauth-protected-resource{MCP_PREFIX}", gw.url);
    assert_eq!(
        www_authenticate(&resp),
        format!(
            r#"Bearer error="insufficient_scope", error_description="the token's scopes do not cover this call", scope="tools.write", resource_metadata="{meta_url}""#
        )
    );
    let body = json_body(resp).await;
    assert_eq!(body["id"], 4);
    assert_eq!(body["error"]["code"], code::FORBIDDEN);
    assert_eq!(u.calls(), 0, "not forwarded");
    assert!(m.exchanges().is_empty(), "nor exchanged");
}

#[tokio::test]
async fn a_denied_call_is_a_json_rpc_error() {
    let (m, u, gw) = world().await;
    m.answer("delete_all", deny());
    let resp = gw.rpc(&m.token(MCP_RESOURCE), call(5, "delete_all", json!({}))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json_body(resp).await;
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 5);
    assert_eq!(body["error"]["code"], code::FORBIDDEN);
    assert_eq!(body["error"]["message"], "Mandate does not allow this call");
    assert!(!body.to_string().contains("policy: usr"), "the reasons stay with Mandate and the log");
    assert_eq!(u.calls(), 0);
}

#[tokio::test]
async fn a_call_that_needs_approval_says_where_and_goes_through_after() {
    let (m, u, gw) = world().await;
    m.answer("send_mail", approval());
    let token = m.token(MCP_RESOURCE);
    let msg = call(6, "send_mail", json!({"to": "boss@example.com"}));
    let body = json_body(gw.rpc(&token, msg.clone()).await).await;
    assert_eq!(body["id"], 6);
    assert_eq!(body["error"]["code"], code::APPROVAL_REQUIRED);
    assert_eq!(body["error"]["data"]["approval_request"], "apr_01JAPPROVAL");
    let approvals = format!("{}/approvals", m.url);
    assert_eq!(body["error"]["data"]["approval_url"], approvals.as_str());
    assert!(body["error"]["message"].as_str().unwrap().contains(&approvals));
    assert_eq!(u.calls(), 0);

    // A person approves; Mandate allows the same call now.
    m.answer("send_mail", json!({"decision": "allow", "reasons": ["approval apr_01JAPPROVAL"], "chain": []}));
    let body = json_body(gw.rpc(&token, msg).await).await;
    assert_eq!(body["result"]["content"][0]["text"], "called send_mail");
    assert_eq!(u.calls(), 1);
}

#[tokio::test]
async fn batches_are_decided_call_by_call_and_refused_whole() {
    let (m, u, gw) = world().await;
    m.answer("delete_all", deny());
    let token = m.token(MCP_RESOURCE);
    let batch = json!([
        call(1, "read_file", json!({})),
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}},
        call(2, "delete_all", json!({})),
        list(3),
    ]);
    let resp = gw.rpc(&token, batch).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json_body(resp).await;
    let codes: Vec<(Value, Value)> =
        body.as_array().unwrap().iter().map(|a| (a["id"].clone(), a["error"]["code"].clone())).collect();
    assert_eq!(
        codes,
        [
            (json!(1), json!(code::NOT_FORWARDED)),
            (json!(2), json!(code::FORBIDDEN)),
            (json!(3), json!(code::NOT_FORWARDED))
        ]
    );
    assert_eq!(u.calls(), 0, "nothing of a refused batch is forwarded");

    // A batch whose calls are all allowed is forwarded, its lists filtered.
    let batch = json!([call(1, "read_file", json!({})), list(2)]);
    let body = json_body(gw.rpc(&token, batch).await).await;
    let answers = body.as_array().unwrap();
    assert_eq!(answers[0]["result"]["content"][0]["text"], "called read_file");
    assert_eq!(tool_names(&answers[1]), ["read_file", "write_file", "send_mail"]);
    assert_eq!(u.calls(), 1);
}

#[tokio::test]
async fn other_messages_pass_with_the_session() {
    let (m, u, gw) = world().await;
    let token = m.token(MCP_RESOURCE);
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let resp = gw.rpc(&token, init).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["mcp-session-id"], "session-1");
    assert_eq!(json_body(resp).await["result"]["serverInfo"]["name"], "mock");

    let resp = gw
        .http
        .post(gw.mcp_url())
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("mcp-session-id", "session-1")
        .header("mcp-protocol-version", "2025-11-25")
        .header("cookie", "secret=1")
        .body(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let seen = u.last();
    assert_eq!(seen.headers["mcp-session-id"], "session-1");
    assert_eq!(seen.headers["mcp-protocol-version"], "2025-11-25");
    assert!(seen.headers.get("cookie").is_none(), "only the transport's headers are forwarded");

    // GET opens the server's stream (a resumed one may replay a list: it
    // is filtered); DELETE ends the session.
    m.answer("write_file", deny());
    let resp = gw
        .http
        .get(gw.mcp_url())
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .header("last-event-id", "ev-0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(text.starts_with(PROGRESS_EVENT), "{text}");
    assert!(text.contains("id: ev-2\n"), "{text}");
    assert!(!text.contains("write_file"), "{text}");
    assert!(text.contains("read_file"), "{text}");
    assert_eq!(u.last().headers["last-event-id"], "ev-0");
    assert!(u.last().headers["authorization"].to_str().unwrap().starts_with("Bearer exchanged-"));

    let resp =
        gw.http.delete(gw.mcp_url()).bearer_auth(&token).header("mcp-session-id", "session-1").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(u.last().method, "DELETE");
    assert_eq!(u.last().headers["mcp-session-id"], "session-1");
}

#[tokio::test]
async fn event_streams_pass_through_as_they_come() {
    let (m, u, gw) = world().await;
    let token = m.token(MCP_RESOURCE);
    let mut resp = gw.rpc(&token, call(9, "slow", json!({}))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The first event arrives while the upstream is still working.
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await.expect("first event in time").unwrap();
    assert_eq!(first.unwrap(), PROGRESS_EVENT.as_bytes());
    u.release.notify_one();
    let mut rest = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.starts_with("event: message\ndata: "), "{rest}");
    assert!(rest.contains("called slow"), "{rest}");

    // The same while a list is being filtered: events before it are not
    // held back waiting for it.
    u.sse.store(true, Ordering::SeqCst);
    u.slow_list.store(true, Ordering::SeqCst);
    m.answer("delete_all", deny());
    let mut resp = gw.rpc(&token, list(10)).await;
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await.expect("first event in time").unwrap();
    assert_eq!(first.unwrap(), PROGRESS_EVENT.as_bytes());
    u.release.notify_one();
    let rest = resp.text().await.unwrap();
    let data = rest.trim_start_matches("event: message\ndata: ").trim_end();
    assert_eq!(tool_names(&serde_json::from_str(data).unwrap()), ["read_file", "write_file", "send_mail"]);
}

#[tokio::test]
async fn mcp_headers_that_contradict_the_body_are_refused() {
    let (m, u, gw) = world().await;
    let resp = gw
        .http
        .post(gw.mcp_url())
        .bearer_auth(m.token(MCP_RESOURCE))
        .header("content-type", "application/json")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "read_file")
        .body(call(1, "delete_all", json!({})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_body(resp).await["error"]["code"], code::INVALID_REQUEST);
    assert_eq!(u.calls(), 0);
    assert!(m.checks().is_empty());
}
