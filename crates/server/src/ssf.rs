//! The Shared Signals transmitter's HTTP surface (SSF 1.0, RFC 8936 poll;
//! DESIGN §11): transmitter metadata, streams, status, verification,
//! subjects and polling. Receivers call with a `client_credentials` token
//! for `ssf.manage` or `ssf.read` on the issuer; errors are
//! [`SsfError`]s.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_core::Error;
use mandate_core::ssf::{Need, PollRequest, Receiver, StreamRequest, StreamStatusBody, SubjectRequest, VerifyRequest};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::SsfError;
use crate::extract::{bearer, check_json_shape, dpop_token};

/// `?stream_id=`: the only parameter these endpoints take, at most once.
pub struct StreamQuery {
    stream_id: Option<String>,
}

fn stream_query(raw: Option<String>) -> Result<StreamQuery, SsfError> {
    let mut stream_id = None;
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "stream_id" if stream_id.is_none() => stream_id = Some(v.into_owned()),
            other => return Err(Error::BadInput(format!("unexpected or repeated parameter {other:?}")).into()),
        }
    }
    Ok(StreamQuery { stream_id })
}

/// A JSON body, strictly: `application/json`, no duplicate keys, bounded
/// depth; `empty` is what an empty body means, if it may be empty.
fn body<T: DeserializeOwned>(headers: &HeaderMap, bytes: &Bytes, empty: Option<T>) -> Result<T, SsfError> {
    if bytes.is_empty()
        && let Some(v) = empty
    {
        return Ok(v);
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        return Err(Error::BadInput("send application/json".into()).into());
    }
    check_json_shape(bytes).map_err(|e| Error::BadInput(format!("malformed JSON: {e}")))?;
    serde_json::from_slice(bytes).map_err(|e| Error::BadInput(format!("invalid body: {e}")).into())
}

/// The receiver calling `path`, or the refusal (audited as the check
/// API's are).
async fn receiver(s: &AppState, headers: &HeaderMap, path: &str, need: Need) -> Result<Receiver, SsfError> {
    let (token, proof) = match dpop_token(headers) {
        Some((t, p)) => (Some(t), Some(p.unwrap_or_default())),
        None => (bearer(headers), None),
    };
    let Some(token) = token else {
        s.mandate
            .record_admin_refusal(mandate_core::audit::kind::ADMIN_AUTH_FAILED, None, "ssf: no bearer token")
            .await?;
        return Err(Error::Unauthenticated.into());
    };
    match s.mandate.authenticate_receiver(token, proof, path, need).await {
        Ok(r) => Ok(r),
        Err(e @ (Error::Unauthenticated | Error::Forbidden(_))) => {
            s.mandate
                .record_admin_refusal(mandate_core::audit::kind::ADMIN_AUTH_FAILED, None, &format!("ssf: {e}"))
                .await?;
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

fn required(q: &StreamQuery) -> Result<&str, SsfError> {
    q.stream_id.as_deref().ok_or_else(|| Error::BadInput("stream_id is required".into()).into())
}

/// `GET /.well-known/ssf-configuration`.
pub async fn configuration(State(s): State<AppState>) -> Response {
    Json(s.mandate.ssf_configuration()).into_response()
}

/// `POST /ssf/streams`.
pub async fn create(State(s): State<AppState>, headers: HeaderMap, bytes: Bytes) -> Result<Response, SsfError> {
    let r = receiver(&s, &headers, "/ssf/streams", Need::Manage).await?;
    let req: StreamRequest = body(&headers, &bytes, Some(StreamRequest::default()))?;
    let config = s.mandate.create_stream(&r, req).await?;
    Ok((StatusCode::CREATED, Json(config)).into_response())
}

/// `GET /ssf/streams[?stream_id=]`: one stream, or the receiver's list.
pub async fn read(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, SsfError> {
    let q = stream_query(raw)?;
    let r = receiver(&s, &headers, "/ssf/streams", Need::Read).await?;
    let mut all = s.mandate.read_streams(&r, q.stream_id.as_deref()).await?;
    match (q.stream_id.is_some(), all.pop()) {
        (true, Some(one)) => Ok(Json(one).into_response()),
        (true, None) => Err(Error::NotFound("no such stream".into()).into()),
        (false, last) => {
            all.extend(last);
            Ok(Json(all).into_response())
        }
    }
}

/// `PATCH /ssf/streams`.
pub async fn update(State(s): State<AppState>, headers: HeaderMap, bytes: Bytes) -> Result<Response, SsfError> {
    let r = receiver(&s, &headers, "/ssf/streams", Need::Manage).await?;
    let req: StreamRequest = body(&headers, &bytes, None)?;
    Ok(Json(s.mandate.update_stream(&r, req, false).await?).into_response())
}

/// `PUT /ssf/streams`.
pub async fn replace(State(s): State<AppState>, headers: HeaderMap, bytes: Bytes) -> Result<Response, SsfError> {
    let r = receiver(&s, &headers, "/ssf/streams", Need::Manage).await?;
    let req: StreamRequest = body(&headers, &bytes, None)?;
    Ok(Json(s.mandate.update_stream(&r, req, true).await?).into_response())
}

/// `DELETE /ssf/streams?stream_id=`.
pub async fn delete(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, SsfError> {
    let q = stream_query(raw)?;
    let r = receiver(&s, &headers, "/ssf/streams", Need::Manage).await?;
    s.mandate.delete_stream(&r, required(&q)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /ssf/status?stream_id=`.
pub async fn status(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, SsfError> {
    let q = stream_query(raw)?;
    let r = receiver(&s, &headers, "/ssf/status", Need::Read).await?;
    Ok(Json(s.mandate.stream_status(&r, required(&q)?).await?).into_response())
}

/// `POST /ssf/status`.
pub async fn set_status(State(s): State<AppState>, headers: HeaderMap, bytes: Bytes) -> Result<Response, SsfError> {
    let r = receiver(&s, &headers, "/ssf/status", Need::Manage).await?;
    let req: StreamStatusBody = body(&headers, &bytes, None)?;
    Ok(Json(s.mandate.set_stream_status(&r, req).await?).into_response())
}

/// `POST /ssf/verify`: 204; the verification event follows on the stream.
pub async fn verify(State(s): State<AppState>, headers: HeaderMap, bytes: Bytes) -> Result<Response, SsfError> {
    let r = receiver(&s, &headers, "/ssf/verify", Need::Manage).await?;
    let req: VerifyRequest = body(&headers, &bytes, None)?;
    s.mandate.verify_stream(&r, req).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /ssf/subjects:add`.
pub async fn add_subject(State(s): State<AppState>, headers: HeaderMap, bytes: Bytes) -> Result<Response, SsfError> {
    let r = receiver(&s, &headers, "/ssf/subjects:add", Need::Manage).await?;
    let req: SubjectRequest = body(&headers, &bytes, None)?;
    s.mandate.change_subjects(&r, req, true).await?;
    Ok(StatusCode::OK.into_response())
}

/// `POST /ssf/subjects:remove`.
pub async fn remove_subject(State(s): State<AppState>, headers: HeaderMap, bytes: Bytes) -> Result<Response, SsfError> {
    let r = receiver(&s, &headers, "/ssf/subjects:remove", Need::Manage).await?;
    let req: SubjectRequest = body(&headers, &bytes, None)?;
    s.mandate.change_subjects(&r, req, false).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /ssf/poll/{stream_id}` (RFC 8936 §2.4).
pub async fn poll(
    State(s): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, SsfError> {
    let path = format!("/ssf/poll/{stream}");
    let r = receiver(&s, &headers, &path, Need::Read).await?;
    let req: PollRequest = body(&headers, &bytes, Some(PollRequest::default()))?;
    Ok(Json(s.mandate.poll(&r, &stream, req).await?).into_response())
}
