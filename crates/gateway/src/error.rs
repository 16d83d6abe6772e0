//! Why the gateway refused, and the one place where that becomes a status,
//! headers and a body: JSON-RPC errors on MCP routes, OAuth-style JSON on
//! HTTP routes. Clients get fixed messages; the detail goes to the log.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_verifier::{Scheme, VerifyError};
use serde_json::{Value, json};

use crate::challenge::Challenge;
use crate::config::RouteKind;

/// JSON-RPC error codes (JSON-RPC 2.0 §5.1 for the reserved ones; the
/// gateway's own are in the range left to servers). docs/gateway.md lists
/// them.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// No token, or one that is not accepted here.
    pub const UNAUTHORIZED: i64 = -32000;
    /// Mandate does not allow this call (or this token, for the upstream).
    pub const FORBIDDEN: i64 = -32001;
    /// A person must approve the call first; `data` says where.
    pub const APPROVAL_REQUIRED: i64 = -32002;
    /// Mandate could not be asked: nothing was forwarded.
    pub const AUTHORIZATION_UNAVAILABLE: i64 = -32003;
    /// The upstream could not be reached, or its answer read.
    pub const UPSTREAM_UNAVAILABLE: i64 = -32004;
    /// A call in a batch whose other calls were refused: not forwarded.
    pub const NOT_FORWARDED: i64 = -32005;
}

/// Seconds a client is told to wait when Mandate cannot be reached.
const RETRY_AFTER_SECS: &str = "5";

/// Why a request was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route for this path")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    /// The token or DPoP proof (or their absence); the verifier's message
    /// is meant for the client.
    #[error("authentication: {0}")]
    Auth(VerifyError),
    #[error("the request body is over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    #[error("unsupported media type: {0}")]
    MediaType(String),
    #[error("JSON parse error: {0}")]
    Parse(String),
    #[error("not a JSON-RPC message: {0}")]
    InvalidRequest(String),
    #[error("invalid params: {0}")]
    InvalidParams(String),
    #[error("the Mcp-Method or Mcp-Name header contradicts the body: {0}")]
    HeaderMismatch(String),
    /// Mandate's check said no scope of the token covers a call; `scopes`
    /// would (the challenge names them, so that the client steps up).
    #[error("no scope of the token covers the call; it needs {scopes:?}")]
    InsufficientScope { scopes: Vec<String> },
    /// Keys, a status list, the check API or the token exchange could not
    /// be had: fail closed.
    #[error("Mandate unavailable: {0}")]
    MandateUnavailable(String),
    #[error("Mandate refused the token exchange: {0}")]
    ExchangeRefused(String),
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    #[error("the upstream's answer could not be used: {0}")]
    UpstreamAnswer(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Auth(e) => match e.status() {
                // Unavailable keys or status lists are Mandate's outage.
                StatusCode::SERVICE_UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::BAD_REQUEST => StatusCode::BAD_REQUEST,
                StatusCode::INTERNAL_SERVER_ERROR => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::UNAUTHORIZED,
            },
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyRead(_)
            | Self::Parse(_)
            | Self::InvalidRequest(_)
            | Self::InvalidParams(_)
            | Self::HeaderMismatch(_) => StatusCode::BAD_REQUEST,
            Self::MediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InsufficientScope { .. } | Self::ExchangeRefused(_) => StatusCode::FORBIDDEN,
            Self::MandateUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnavailable(_) | Self::UpstreamAnswer(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The fixed message a client sees.
    fn public_message(&self) -> String {
        match self {
            Self::NotFound => "no route for this path".into(),
            Self::MethodNotAllowed { .. } => "method not allowed".into(),
            Self::Auth(VerifyError::MissingToken) => "an access token is required".into(),
            Self::Auth(VerifyError::Unavailable(_)) => "authorization is temporarily unavailable; try again".into(),
            Self::Auth(VerifyError::Config(_)) => "internal error".into(),
            // The verifier's messages are written for clients.
            Self::Auth(e) => e.to_string(),
            Self::TooLarge { limit } => format!("the request body is larger than {limit} bytes"),
            Self::BodyRead(_) => "the request body could not be read".into(),
            Self::MediaType(_) => "send the JSON-RPC message as application/json".into(),
            Self::Parse(_) => "parse error: the body is not JSON".into(),
            Self::InvalidRequest(_) => "invalid request: the body is not a JSON-RPC 2.0 message or batch".into(),
            Self::InvalidParams(_) => "invalid params: tools/call needs a name and an object of arguments".into(),
            Self::HeaderMismatch(_) => "the Mcp-Method or Mcp-Name header does not match the body".into(),
            Self::InsufficientScope { .. } => "the token's scopes do not cover this call".into(),
            Self::MandateUnavailable(_) => "authorization is temporarily unavailable; try again".into(),
            Self::ExchangeRefused(_) => "the authorization server refused access to the upstream for this token".into(),
            Self::UpstreamUnavailable(_) => "the upstream server could not be reached".into(),
            Self::UpstreamAnswer(_) => "the upstream server's answer could not be read".into(),
            Self::Internal(_) => "internal error".into(),
        }
    }

    fn rpc_code(&self) -> i64 {
        match self {
            Self::Parse(_) => code::PARSE_ERROR,
            Self::InvalidParams(_) => code::INVALID_PARAMS,
            Self::NotFound
            | Self::MethodNotAllowed { .. }
            | Self::TooLarge { .. }
            | Self::BodyRead(_)
            | Self::MediaType(_)
            | Self::InvalidRequest(_)
            | Self::HeaderMismatch(_) => code::INVALID_REQUEST,
            Self::Auth(VerifyError::Unavailable(_)) | Self::MandateUnavailable(_) => code::AUTHORIZATION_UNAVAILABLE,
            Self::Auth(VerifyError::Config(_)) | Self::Internal(_) => code::INTERNAL_ERROR,
            Self::Auth(e) if e.status() == StatusCode::BAD_REQUEST => code::INVALID_REQUEST,
            Self::Auth(_) => code::UNAUTHORIZED,
            Self::InsufficientScope { .. } | Self::ExchangeRefused(_) => code::FORBIDDEN,
            Self::UpstreamUnavailable(_) | Self::UpstreamAnswer(_) => code::UPSTREAM_UNAVAILABLE,
        }
    }

    /// The OAuth-style error code (RFC 6750 §3.1 where one applies).
    fn oauth_code(&self) -> Option<&'static str> {
        match self {
            Self::Auth(e) => e.code(),
            Self::InsufficientScope { .. } => Some("insufficient_scope"),
            Self::ExchangeRefused(_) => Some("access_denied"),
            Self::MandateUnavailable(_) => Some("temporarily_unavailable"),
            Self::NotFound => Some("not_found"),
            Self::MethodNotAllowed { .. } => Some("method_not_allowed"),
            Self::TooLarge { .. } => Some("request_too_large"),
            Self::BodyRead(_)
            | Self::MediaType(_)
            | Self::Parse(_)
            | Self::InvalidRequest(_)
            | Self::InvalidParams(_)
            | Self::HeaderMismatch(_) => Some("invalid_request"),
            Self::UpstreamUnavailable(_) | Self::UpstreamAnswer(_) => Some("bad_gateway"),
            Self::Internal(_) => Some("server_error"),
        }
    }

    fn log(&self) {
        match self {
            Self::MandateUnavailable(_)
            | Self::Auth(VerifyError::Unavailable(_))
            | Self::UpstreamUnavailable(_)
            | Self::UpstreamAnswer(_)
            | Self::Internal(_)
            | Self::Auth(VerifyError::Config(_)) => tracing::warn!(error = %self, "request refused"),
            Self::ExchangeRefused(_) | Self::InsufficientScope { .. } => {
                tracing::info!(error = %self, "request refused")
            }
            _ => tracing::debug!(error = %self, "request refused"),
        }
    }
}

impl From<VerifyError> for GatewayError {
    fn from(e: VerifyError) -> Self {
        Self::Auth(e)
    }
}

/// A refusal with what its response needs: the JSON-RPC id of a single
/// message, and the scheme the client used (its challenge names it).
#[derive(Debug)]
pub struct Refused {
    pub error: GatewayError,
    pub id: Value,
    pub scheme: Option<Scheme>,
}

impl Refused {
    pub(crate) fn with_id(mut self, id: Option<&Value>) -> Self {
        if let Some(id) = id {
            self.id = id.clone();
        }
        self
    }
}

impl From<GatewayError> for Refused {
    fn from(error: GatewayError) -> Self {
        Self { error, id: Value::Null, scheme: None }
    }
}

impl From<VerifyError> for Refused {
    fn from(e: VerifyError) -> Self {
        GatewayError::from(e).into()
    }
}

/// What the route tells a client to find its way: its metadata URL and
/// the scopes it advertises.
#[derive(Debug, Clone, Copy)]
pub struct RouteHints<'a> {
    pub kind: RouteKind,
    pub metadata_url: &'a str,
    pub scopes: &'a [String],
}

/// The JSON-RPC error object for `id` (JSON-RPC 2.0 §5).
pub fn rpc_error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({ "code": code, "message": message });
    if let (Some(data), Some(obj)) = (data, error.as_object_mut()) {
        obj.insert("data".into(), data);
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

/// Renders a refusal. `route` is `None` when no route matched.
pub fn render(refused: &Refused, route: Option<RouteHints<'_>>) -> Response {
    let err = &refused.error;
    err.log();
    let status = err.status();
    let message = err.public_message();
    let body = match route.map(|r| r.kind) {
        Some(RouteKind::Mcp) => {
            let data = err.oauth_code().map(|c| json!({ "error": c }));
            rpc_error(&refused.id, err.rpc_code(), &message, data)
        }
        _ => match err.oauth_code() {
            Some(code) => json!({ "error": code, "error_description": message }),
            // RFC 6750 §3.1: no error code for a request without credentials.
            None => json!({ "error_description": message }),
        },
    };
    let mut resp = (status, Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
    }
    if let GatewayError::MethodNotAllowed { allow } = err {
        h.insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(route) = route
        && let Some(challenge) = challenge(refused, route)
        && let Ok(v) = HeaderValue::from_str(&challenge.render())
    {
        h.insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// RFC 6750 §3 / RFC 9728 §5.1: every 401 (and a 400 about the
/// credentials) names the metadata and the route's scopes; an error code
/// only when a token was sent. A 403 for scope names the scopes needed.
fn challenge<'a>(refused: &'a Refused, route: RouteHints<'a>) -> Option<Challenge<'a>> {
    let scheme = refused.scheme.unwrap_or(Scheme::Bearer);
    let base = Challenge::new(scheme, route.metadata_url);
    match &refused.error {
        GatewayError::Auth(VerifyError::MissingToken) => Some(base.scope(route.scopes.join(" "))),
        GatewayError::Auth(e) if matches!(e.status(), StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST) => {
            let code = e.code().unwrap_or("invalid_token");
            Some(base.error(code, e.to_string()).scope(route.scopes.join(" ")))
        }
        GatewayError::InsufficientScope { scopes } => Some(
            Challenge::new(Scheme::Bearer, route.metadata_url)
                .error("insufficient_scope", "the token's scopes do not cover this call".into())
                .scope(scopes.join(" ")),
        ),
        _ => None,
    }
}

/// Why one call (of possibly several in a batch) was not forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallRefusal {
    /// Mandate's check said `deny` for a reason other than scope.
    Denied { audit_seq: u64 },
    /// Mandate's check said `approval_required`.
    ApprovalRequired { approval_request: Option<String>, approval_url: String, audit_seq: u64 },
    /// Another call of the same batch was refused, so none was forwarded.
    NotForwarded,
}

impl CallRefusal {
    /// The JSON-RPC error answering the call `id`.
    pub fn to_rpc(&self, id: &Value) -> Value {
        match self {
            Self::Denied { audit_seq } => rpc_error(
                id,
                code::FORBIDDEN,
                "Mandate does not allow this call",
                Some(json!({ "error": "access_denied", "audit_seq": audit_seq })),
            ),
            Self::ApprovalRequired { approval_request, approval_url, audit_seq } => rpc_error(
                id,
                code::APPROVAL_REQUIRED,
                &format!(
                    "This call needs a person's approval. Ask them to approve it at {approval_url}, then make the same call again."
                ),
                Some(json!({
                    "error": "approval_required",
                    "approval_request": approval_request,
                    "approval_url": approval_url,
                    "audit_seq": audit_seq,
                })),
            ),
            Self::NotForwarded => rpc_error(
                id,
                code::NOT_FORWARDED,
                "not forwarded: another call in this batch was refused",
                Some(json!({ "error": "batch_refused" })),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints(kind: RouteKind) -> (String, Vec<String>, RouteKind) {
        ("http://gw.example/.well-known/oauth-protected-resource/mcp".into(), vec!["tools.read".into()], kind)
    }

    async fn rendered(refused: Refused, kind: RouteKind) -> (StatusCode, Option<String>, Option<String>, Value) {
        let (url, scopes, kind) = hints(kind);
        let resp = render(&refused, Some(RouteHints { kind, metadata_url: &url, scopes: &scopes }));
        let status = resp.status();
        let get = |n: header::HeaderName| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (www, retry) = (get(header::WWW_AUTHENTICATE), get(header::RETRY_AFTER));
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        (status, www, retry, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_missing_token_is_challenged_without_an_error_code() {
        let (status, www, _, body) =
            rendered(GatewayError::Auth(VerifyError::MissingToken).into(), RouteKind::Mcp).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            www.unwrap(),
            r#"Bearer scope="tools.read", resource_metadata="http://gw.example/.well-known/oauth-protected-resource/mcp""#
        );
        assert_eq!(body["error"]["code"], code::UNAUTHORIZED);
        assert_eq!(body["id"], Value::Null);
    }

    #[tokio::test]
    async fn a_bad_token_is_invalid_token_on_the_scheme_used() {
        let refused = Refused {
            error: GatewayError::Auth(VerifyError::InvalidToken("token revoked".into())),
            id: json!(3),
            scheme: Some(Scheme::Dpop),
        };
        let (status, www, _, body) = rendered(refused, RouteKind::Mcp).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let www = www.unwrap();
        assert!(
            www.starts_with(r#"DPoP algs="EdDSA ES256", error="invalid_token", error_description="token revoked""#),
            "{www}"
        );
        assert!(www.contains("resource_metadata="), "{www}");
        assert_eq!(body["id"], 3);
        assert_eq!(body["error"]["data"]["error"], "invalid_token");
    }

    #[tokio::test]
    async fn insufficient_scope_names_the_scopes_needed() {
        let err = GatewayError::InsufficientScope { scopes: vec!["tools.write".into(), "files.write".into()] };
        let (status, www, _, body) = rendered(err.into(), RouteKind::Mcp).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            www.unwrap(),
            r#"Bearer error="insufficient_scope", error_description="the token's scopes do not cover this call", scope="tools.write files.write", resource_metadata="http://gw.example/.well-known/oauth-protected-resource/mcp""#
        );
        assert_eq!(body["error"]["code"], code::FORBIDDEN);
    }

    #[tokio::test]
    async fn outages_say_when_to_retry_and_nothing_more() {
        let (status, www, retry, body) =
            rendered(GatewayError::MandateUnavailable("connect refused 10.0.0.7".into()).into(), RouteKind::Mcp).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("5"));
        assert!(www.is_none());
        assert_eq!(body["error"]["code"], code::AUTHORIZATION_UNAVAILABLE);
        assert!(!body.to_string().contains("10.0.0.7"), "detail stays in the log");
        let (status, _, _, body) =
            rendered(GatewayError::UpstreamUnavailable("dns".into()).into(), RouteKind::Http).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            body,
            json!({"error": "bad_gateway", "error_description": "the upstream server could not be reached"})
        );
    }

    #[test]
    fn call_refusals_are_json_rpc_errors() {
        let approval = CallRefusal::ApprovalRequired {
            approval_request: Some("apr_1".into()),
            approval_url: "http://mandate.example/approvals".into(),
            audit_seq: 9,
        }
        .to_rpc(&json!("call-1"));
        assert_eq!(approval["id"], "call-1");
        assert_eq!(approval["error"]["code"], code::APPROVAL_REQUIRED);
        assert_eq!(approval["error"]["data"]["approval_request"], "apr_1");
        assert_eq!(approval["error"]["data"]["approval_url"], "http://mandate.example/approvals");
        assert!(approval["error"]["message"].as_str().unwrap().contains("http://mandate.example/approvals"));
        let denied = CallRefusal::Denied { audit_seq: 4 }.to_rpc(&json!(1));
        assert_eq!(denied["error"]["code"], code::FORBIDDEN);
        assert_eq!(CallRefusal::NotForwarded.to_rpc(&json!(2))["error"]["code"], code::NOT_FORWARDED);
    }
}
