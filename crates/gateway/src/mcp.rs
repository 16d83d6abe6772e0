//! An MCP route (streamable HTTP): POST carries JSON-RPC messages, GET
//! opens the server's event stream, DELETE ends a session. Every request
//! needs a token for the route's resource; every `tools/call` is decided by
//! Mandate before anything is forwarded; `tools/list` results are filtered.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_verifier::{Authenticated, Scheme};
use serde_json::Value;

use crate::config::UpstreamToken;
use crate::decide::{CallDecision, ToolFilter, decide_call};
use crate::error::{CallRefusal, GatewayError, Refused};
use crate::gateway::{Route, Shared, is_event_stream, is_json, read_body};
use crate::jsonrpc::{Message, Payload, id_key};
use crate::stream::{filtered_events, filtered_json, passthrough};
use crate::upstream::{MCP_REQUEST_HEADERS, MCP_RESPONSE_HEADERS, allow_listed, send};

const ALLOW: &str = "GET, POST, DELETE";
const ACCEPT_BOTH: &str = "application/json, text/event-stream";

pub(crate) async fn handle(shared: &Shared, route: &Route, rest: &str, req: Request) -> Result<Response, Refused> {
    // One endpoint: the prefix itself.
    if !rest.is_empty() {
        return Err(GatewayError::NotFound.into());
    }
    let (parts, body) = req.into_parts();
    if !matches!(parts.method, Method::GET | Method::POST | Method::DELETE) {
        return Err(GatewayError::MethodNotAllowed { allow: ALLOW }.into());
    }
    let scheme = Scheme::of(&parts.headers);
    let auth =
        route.verifier.authenticate(&parts).await.map_err(|e| Refused { error: e.into(), id: Value::Null, scheme })?;
    if parts.method == Method::POST {
        post(shared, route, &parts, body, &auth).await
    } else {
        let bearer = upstream_bearer(shared, route, &auth.token).await?;
        let headers = allow_listed(&parts.headers, MCP_REQUEST_HEADERS);
        let resp = send(
            &shared.upstream,
            shared.upstream_timeout,
            parts.method.clone(),
            route.config.upstream.clone(),
            headers,
            bearer.as_deref(),
            None,
        )
        .await?;
        // A GET stream is tied to no request, but may replay a list result
        // when resumed: any result with a tools list is filtered.
        let filter = (parts.method == Method::GET).then(|| (tool_filter(route, &auth), None));
        relay(resp, filter).await.map_err(Refused::from)
    }
}

async fn post(
    shared: &Shared,
    route: &Route,
    parts: &Parts,
    body: Body,
    auth: &Authenticated,
) -> Result<Response, Refused> {
    let bytes = read_body(body, &parts.headers, shared.max_body_bytes).await?;
    if !is_json(&parts.headers) {
        return Err(GatewayError::MediaType("a JSON-RPC POST is application/json".into()).into());
    }
    let payload = Payload::parse(&bytes)?;
    let id = payload.single_id().cloned();
    let fail = |e: GatewayError| Refused::from(e).with_id(id.as_ref());
    check_mcp_headers(&parts.headers, &payload).map_err(fail)?;

    // Decide every call before forwarding anything.
    let mut refusals: HashMap<String, CallRefusal> = HashMap::new();
    let mut needed: BTreeSet<String> = BTreeSet::new();
    for call in payload.tool_calls().map_err(fail)? {
        match decide_call(&route.verifier, &auth.token, &call, &shared.approval_url).await.map_err(fail)? {
            CallDecision::Allow => {}
            CallDecision::NeedsScope(scopes) => needed.extend(scopes),
            CallDecision::Refused(r) => {
                refusals.insert(id_key(call.id), r);
            }
        }
    }
    if !needed.is_empty() {
        return Err(Refused {
            error: GatewayError::InsufficientScope { scopes: needed.into_iter().collect() },
            id: id.unwrap_or(Value::Null),
            scheme: Some(Scheme::Bearer),
        });
    }
    if !refusals.is_empty() {
        return Ok(refused_calls(&payload, &refusals));
    }

    let bearer = upstream_bearer(shared, route, &auth.token).await.map_err(fail)?;
    let mut headers = allow_listed(&parts.headers, MCP_REQUEST_HEADERS);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if !headers.contains_key(header::ACCEPT) {
        headers.insert(header::ACCEPT, HeaderValue::from_static(ACCEPT_BOTH));
    }
    // The bytes checked are the bytes sent.
    let resp = send(
        &shared.upstream,
        shared.upstream_timeout,
        Method::POST,
        route.config.upstream.clone(),
        headers,
        bearer.as_deref(),
        Some(bytes),
    )
    .await
    .map_err(fail)?;
    let list_ids = payload.tool_list_ids();
    let filter = (!list_ids.is_empty()).then(|| (tool_filter(route, auth), Some(list_ids)));
    relay(resp, filter).await.map_err(fail)
}

fn tool_filter(route: &Route, auth: &Authenticated) -> ToolFilter {
    ToolFilter { verifier: route.verifier.clone(), token: Arc::from(auth.token.as_str()) }
}

async fn upstream_bearer(shared: &Shared, route: &Route, client_token: &str) -> Result<Option<String>, GatewayError> {
    match &route.config.upstream_token {
        UpstreamToken::None => Ok(None),
        UpstreamToken::Exchange { resource } => {
            shared.exchanged.get(&route.verifier, client_token, resource).await.map(Some)
        }
    }
}

/// The answer when some calls were refused: nothing was forwarded. A lone
/// call gets its error; in a batch, every request gets one (the refused
/// calls theirs, the others "not forwarded").
fn refused_calls(payload: &Payload, refusals: &HashMap<String, CallRefusal>) -> Response {
    let answers: Vec<Value> = payload
        .messages
        .iter()
        .filter_map(Message::request_id)
        .map(|id| refusals.get(&id_key(id)).unwrap_or(&CallRefusal::NotForwarded).to_rpc(id))
        .collect();
    let body = match (payload.batch, answers.as_slice()) {
        (false, [one]) => one.clone(),
        _ => Value::Array(answers),
    };
    let mut resp = (StatusCode::OK, Json(body)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// MCP 2026-07-28 mirrors the method and the tool in `Mcp-Method` and
/// `Mcp-Name` for intermediaries. The gateway decides on the body, so a
/// header that says something else is refused rather than passed to an
/// upstream that might route on it.
fn check_mcp_headers(headers: &HeaderMap, payload: &Payload) -> Result<(), GatewayError> {
    let method_h: Vec<&HeaderValue> = headers.get_all("mcp-method").iter().collect();
    let name_h: Vec<&HeaderValue> = headers.get_all("mcp-name").iter().collect();
    if method_h.is_empty() && name_h.is_empty() {
        return Ok(());
    }
    let mismatch = |why: &str| GatewayError::HeaderMismatch(why.to_owned());
    let ([message], false) = (payload.messages.as_slice(), payload.batch) else {
        return Err(mismatch("Mcp-Method and Mcp-Name describe one message, not a batch"));
    };
    if method_h.len() > 1 || name_h.len() > 1 {
        return Err(mismatch("Mcp-Method and Mcp-Name are sent once"));
    }
    if let Some(h) = method_h.first()
        && h.to_str().ok() != message.method()
    {
        return Err(mismatch("Mcp-Method is not the body's method"));
    }
    if let Some(h) = name_h.first() {
        let field = match message.method() {
            Some("tools/call" | "prompts/get") => "name",
            Some("resources/read") => "uri",
            _ => return Err(mismatch("Mcp-Name with a method that names nothing")),
        };
        if h.to_str().ok() != message.params().and_then(|p| p.get(field)).and_then(Value::as_str) {
            return Err(mismatch("Mcp-Name is not the body's name"));
        }
    }
    Ok(())
}

/// The upstream's answer, on its way to the client.
async fn relay(
    resp: reqwest::Response,
    filter: Option<(ToolFilter, Option<HashSet<String>>)>,
) -> Result<Response, GatewayError> {
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED {
        // The upstream refused the gateway's token: the client's token is
        // fine, and a 401 would send the client to re-authorize for nothing.
        return Err(GatewayError::UpstreamAnswer("the upstream refused the gateway's credentials (401)".into()));
    }
    let headers = allow_listed(resp.headers(), MCP_RESPONSE_HEADERS);
    let body = match filter {
        Some((filter, ids)) if status == StatusCode::OK && is_event_stream(resp.headers()) => {
            filtered_events(resp, filter, ids)
        }
        Some((filter, Some(ids))) if status == StatusCode::OK && is_json(resp.headers()) => {
            Body::from(filtered_json(resp, &filter, &ids).await?)
        }
        _ => passthrough(resp),
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(v: &str) -> Payload {
        Payload::parse(v.as_bytes()).unwrap()
    }

    fn with(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn mcp_headers_must_match_the_body() {
        let call = payload(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send","arguments":{}}}"#);
        assert!(check_mcp_headers(&HeaderMap::new(), &call).is_ok());
        assert!(check_mcp_headers(&with(&[("mcp-method", "tools/call"), ("mcp-name", "send")]), &call).is_ok());
        for bad in [
            vec![("mcp-method", "tools/list")],
            vec![("mcp-name", "harmless")],
            vec![("mcp-method", "tools/call"), ("mcp-method", "tools/call")],
        ] {
            assert!(matches!(check_mcp_headers(&with(&bad), &call), Err(GatewayError::HeaderMismatch(_))), "{bad:?}");
        }
        let read = payload(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#);
        assert!(check_mcp_headers(&with(&[("mcp-name", "file:///a")]), &read).is_ok());
        let list = payload(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        assert!(check_mcp_headers(&with(&[("mcp-name", "x")]), &list).is_err());
        let batch = payload(r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#);
        assert!(check_mcp_headers(&with(&[("mcp-method", "tools/list")]), &batch).is_err());
    }

    #[tokio::test]
    async fn refused_batches_answer_every_request() {
        let p = payload(
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm"}},
                {"jsonrpc":"2.0","method":"notifications/progress"},
                {"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"ls"}},
                {"jsonrpc":"2.0","id":3,"method":"ping"}]"#,
        );
        let refusals = HashMap::from([("1".to_owned(), CallRefusal::Denied { audit_seq: 5 })]);
        let resp = refused_calls(&p, &refusals);
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value =
            serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap()).unwrap();
        let answers = body.as_array().unwrap();
        assert_eq!(answers.len(), 3, "one per request, none for the notification");
        assert_eq!(answers[0]["id"], 1);
        assert_eq!(answers[0]["error"]["code"], crate::error::code::FORBIDDEN);
        assert_eq!(answers[1]["id"], "b");
        assert_eq!(answers[1]["error"]["code"], crate::error::code::NOT_FORWARDED);
        assert_eq!(answers[2]["error"]["code"], crate::error::code::NOT_FORWARDED);

        let single = payload(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm"}}"#);
        let resp = refused_calls(&single, &refusals);
        let body: Value =
            serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap()).unwrap();
        assert_eq!(body["id"], 1, "a lone call is answered with an object");
    }
}
