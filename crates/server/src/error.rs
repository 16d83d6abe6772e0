//! The one place where use-case errors become HTTP responses: RFC 6749
//! error JSON on OAuth endpoints, RFC 9457 problem JSON on the admin API.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_core::Error;
use serde::Serialize;

/// What a client learns of an internal failure: a fixed sentence and the
/// request id. The detail goes to the log under that id, never on the wire
/// (SECURITY row 46).
pub fn internal_failure(detail: &str) -> String {
    let id = mandate_core::audit::current_request_id();
    tracing::error!(request_id = id.as_deref().unwrap_or("-"), detail, "internal failure; the request failed closed");
    match id {
        Some(id) => format!("the server cannot answer now; nothing was changed (request {id})"),
        None => "the server cannot answer now; nothing was changed".to_owned(),
    }
}

/// An error on an OAuth endpoint (RFC 6749 §5.2).
#[derive(Debug)]
pub struct OAuthError(pub Error);

impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl OAuthError {
    pub fn code(&self) -> &'static str {
        match &self.0 {
            Error::InvalidRequest(_)
            | Error::BadInput(_)
            | Error::NotFound(_)
            | Error::Conflict(_)
            | Error::PreconditionFailed(_) => "invalid_request",
            Error::InvalidClient(_) | Error::Unauthenticated | Error::Forbidden(_) => "invalid_client",
            Error::InvalidGrant(_) => "invalid_grant",
            Error::InvalidScope(_) => "invalid_scope",
            Error::InvalidTarget(_) => "invalid_target",
            Error::InvalidAuthorizationDetails(_) => "invalid_authorization_details",
            Error::UnauthorizedClient(_) => "unauthorized_client",
            Error::UnsupportedGrantType(_) => "unsupported_grant_type",
            Error::AccessDenied(_) => "access_denied",
            Error::AuthorizationPending => "authorization_pending",
            Error::SlowDown => "slow_down",
            Error::ExpiredToken(_) => "expired_token",
            Error::UnknownUser(_) => "unknown_user_id",
            Error::InvalidClientMetadata(_) => "invalid_client_metadata",
            Error::InvalidRedirectUri(_) => "invalid_redirect_uri",
            Error::InvalidDpopProof(_) => "invalid_dpop_proof",
            Error::UseDpopNonce { .. } => "use_dpop_nonce",
            Error::RateLimited { .. } => "slow_down",
            Error::Unavailable(_) => "temporarily_unavailable",
        }
    }

    fn description(&self) -> String {
        match &self.0 {
            Error::InvalidRequest(m)
            | Error::BadInput(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::PreconditionFailed(m)
            | Error::InvalidClient(m)
            | Error::Forbidden(m)
            | Error::InvalidGrant(m)
            | Error::InvalidScope(m)
            | Error::InvalidTarget(m)
            | Error::InvalidAuthorizationDetails(m)
            | Error::UnauthorizedClient(m)
            | Error::UnsupportedGrantType(m)
            | Error::AccessDenied(m)
            | Error::ExpiredToken(m)
            | Error::UnknownUser(m)
            | Error::InvalidClientMetadata(m)
            | Error::InvalidRedirectUri(m)
            | Error::InvalidDpopProof(m)
            | Error::RateLimited { why: m, .. } => m.clone(),
            Error::Unavailable(detail) => internal_failure(detail),
            Error::UseDpopNonce { .. } => "the DPoP proof must carry the nonce in the DPoP-Nonce header".into(),
            Error::Unauthenticated => "client authentication failed".into(),
            Error::AuthorizationPending => "the user has not decided yet".into(),
            Error::SlowDown => "polling faster than the interval; wait longer between polls".into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = match (&self.0, code) {
            (Error::RateLimited { .. }, _) => StatusCode::TOO_MANY_REQUESTS,
            (_, "invalid_client") => StatusCode::UNAUTHORIZED,
            (_, "temporarily_unavailable") => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        metrics::counter!("mandate_oauth_errors_total", "error" => code).increment(1);
        let body = OAuthErrorBody { error: code, error_description: self.description() };
        let mut resp = (status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"mandate\""));
        }
        if let Error::RateLimited { retry_after, .. } = &self.0 {
            h.insert(header::RETRY_AFTER, (*retry_after).into());
        }
        // RFC 9449 §8: the nonce to retry with.
        if let Error::UseDpopNonce { nonce } = &self.0
            && let Ok(v) = HeaderValue::from_str(nonce)
        {
            h.insert("dpop-nonce", v);
        }
        resp
    }
}

/// RFC 6749 §5.2.
#[derive(Serialize)]
struct OAuthErrorBody {
    error: &'static str,
    error_description: String,
}

/// RFC 9457 §3, with the request id as an extension member (§3.2).
#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

/// An error on the admin API (RFC 9457).
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Seconds for `Retry-After` on a 429.
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, kind, title, detail: detail.into(), retry_after: None }
    }

    pub fn bad_input(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-input", "Invalid input", detail)
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        match e {
            Error::BadInput(m)
            | Error::InvalidRequest(m)
            | Error::InvalidScope(m)
            | Error::InvalidTarget(m)
            | Error::InvalidAuthorizationDetails(m)
            | Error::InvalidGrant(m) => Problem::bad_input(m),
            Error::Unauthenticated | Error::InvalidClient(_) => Problem::new(
                S::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
                "send Authorization: Bearer <token>",
            ),
            Error::Forbidden(m) | Error::UnauthorizedClient(m) => {
                Problem::new(S::FORBIDDEN, "forbidden", "Forbidden", m)
            }
            Error::NotFound(m) => Problem::new(S::NOT_FOUND, "not-found", "Not found", m),
            Error::Conflict(m) => Problem::new(S::CONFLICT, "conflict", "Conflict", m),
            Error::PreconditionFailed(m) => {
                Problem::new(S::PRECONDITION_FAILED, "precondition-failed", "Precondition failed", m)
            }
            Error::UnsupportedGrantType(m)
            | Error::UnknownUser(m)
            | Error::InvalidClientMetadata(m)
            | Error::InvalidRedirectUri(m)
            | Error::ExpiredToken(m)
            | Error::InvalidDpopProof(m) => Problem::bad_input(m),
            Error::UseDpopNonce { .. } => Problem::bad_input(e.to_string()),
            Error::RateLimited { why, retry_after } => Problem {
                retry_after: Some(retry_after),
                ..Problem::new(S::TOO_MANY_REQUESTS, "rate-limited", "Too many requests", why)
            },
            Error::AccessDenied(m) => Problem::new(S::FORBIDDEN, "forbidden", "Forbidden", m),
            Error::AuthorizationPending | Error::SlowDown => Problem::bad_input(e.to_string()),
            Error::Unavailable(detail) => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "unavailable",
                "Temporarily unavailable",
                internal_failure(&detail),
            ),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: format!("urn:mandate:problem:{}", self.kind),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            // The id the log knows this failure by.
            request_id: mandate_core::audit::current_request_id(),
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, secs.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"mandate\""));
        }
        resp
    }
}

/// An error on the Shared Signals endpoints: the status SSF 1.0 §8 names
/// (400, 401, 403, 404, 409, 429 with `Retry-After`), with a body in the shape of RFC 8935 §2.4
/// (`err`, `description`) and its error codes where one fits.
#[derive(Debug)]
pub struct SsfError(pub Error);

impl From<Error> for SsfError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for SsfError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            err: &'static str,
            description: String,
        }
        // The status and the sentence come from the one Problem mapping,
        // so that no detail reaches the client that the admin API would
        // not show.
        let code_of = |e: &Error| match e {
            Error::Unauthenticated | Error::InvalidClient(_) => "authentication_failed",
            Error::Forbidden(_) | Error::UnauthorizedClient(_) | Error::AccessDenied(_) => "access_denied",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) | Error::PreconditionFailed(_) => "conflict",
            Error::RateLimited { .. } => "slow_down",
            Error::Unavailable(_) => "temporarily_unavailable",
            _ => "invalid_request",
        };
        let err = code_of(&self.0);
        let problem = Problem::from(self.0);
        let mut resp = (problem.status, axum::Json(Body { err, description: problem.detail })).into_response();
        let h = resp.headers_mut();
        if let Some(secs) = problem.retry_after {
            h.insert(header::RETRY_AFTER, secs.into());
        }
        if problem.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"mandate\""));
        }
        resp
    }
}
