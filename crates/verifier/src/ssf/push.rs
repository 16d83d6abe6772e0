//! Push delivery (RFC 8935): the transmitter POSTs one SET per request as
//! `application/secevent+jwt`; the receiver answers 202 once it has acted
//! on it, or 400 with `{"err", "description"}` (§2.3) when it refuses it.
//! When the receiver cannot decide now (the issuer's keys unreachable, its
//! memory full), it answers 503 with `Retry-After`, so that the transmitter
//! keeps the SET and delivers it again.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use mandate_jose::ct_eq;
use serde_json::json;

use super::set::{MAX_SET_BYTES, SET_MEDIA_TYPE};
use super::{Received, SetError, SsfReceiver};

impl SsfReceiver {
    /// A router with the RFC 8935 push endpoint at `path` (`POST`). Merge
    /// it into the application's router outside the authentication layer:
    /// the transmitter authenticates by the SET's signature and, when set,
    /// the [`SsfReceiver::with_push_authorization`] header.
    pub fn push_router(&self, path: &str) -> Router {
        Router::new().route(path, post(push)).with_state(self.clone())
    }

    /// Handles one pushed SET: what the endpoint does, for applications
    /// that route it themselves.
    pub async fn receive_pushed(&self, headers: &HeaderMap, body: Body) -> Result<Received, SetError> {
        if let Some(expected) = &self.inner.push_authorization {
            let mut sent = headers.get_all(header::AUTHORIZATION).into_iter();
            let ok = match (sent.next(), sent.next()) {
                (Some(v), None) => ct_eq(v.as_bytes(), expected.as_bytes()),
                _ => false,
            };
            if !ok {
                return Err(SetError::AuthenticationFailed);
            }
        }
        let media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim());
        if !media_type.is_some_and(|m| m.eq_ignore_ascii_case(SET_MEDIA_TYPE)) {
            return Err(SetError::InvalidRequest(format!("the body must be {SET_MEDIA_TYPE}")));
        }
        let bytes = axum::body::to_bytes(body, MAX_SET_BYTES)
            .await
            .map_err(|_| SetError::InvalidRequest("the body is too large or could not be read".into()))?;
        let token = std::str::from_utf8(&bytes)
            .map_err(|_| SetError::InvalidRequest("the body is not text".into()))?
            .trim_matches(|c: char| c.is_ascii_whitespace());
        self.receive(token).await
    }
}

async fn push(State(receiver): State<SsfReceiver>, headers: HeaderMap, body: Body) -> Response {
    match receiver.receive_pushed(&headers, body).await {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e) => {
            tracing::info!(error = %e, "refused a pushed SET");
            error_response(&e)
        }
    }
}

/// RFC 8935 §2.3: 400 with the error code, or 503 to be tried again.
pub(crate) fn error_response(e: &SetError) -> Response {
    let mut resp = match e.code() {
        Some(code) => (StatusCode::BAD_REQUEST, Json(json!({ "err": code, "description": e.to_string() }))),
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "description": e.to_string() }))),
    }
    .into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if e.code().is_none() {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}
