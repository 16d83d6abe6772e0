//! A small calendar API protected by Mandate, built on `mandate-verifier`:
//! what a resource server looks like when agents call it.
//!
//! Every request needs an access token for the calendar (verified by the
//! [`Verifier`]'s layer) with the scope the endpoint names. When the
//! verifier has a remote check configured, each action is also decided by
//! Mandate's check API, for this event and now: a deny, or an action that
//! waits for a person's approval, is refused with a problem JSON body
//! carrying the reasons (and the approval request to approve).
//!
//! | call | scope | checked action and resource |
//! |---|---|---|
//! | `GET /events` | `calendar:read` | `list` on `calendar/<user>` |
//! | `GET /events/{id}` | `calendar:read` | `get` on `event/<id>` |
//! | `POST /events` `{id?, title, start, sensitive?}` | `calendar:write` | `create` on `event/<id>` |
//! | `GET /.well-known/oauth-protected-resource` | none | RFC 9728 metadata |
//! | `POST /ssf/events` (with `--ssf push`) | none; a SET signed by the issuer | RFC 8935 push |
//!
//! Checked resources carry the tag `owner` (the user whose calendar it is)
//! and, for sensitive events, `sensitive`, so that policies can say
//! `resource.hasTag("sensitive")`. Events belong to the user a token acts
//! for (`sub`); each user sees only their own calendar.
//!
//! With Shared Signals on ([`router_with_ssf`], or polling), a token that
//! Mandate revokes is refused as soon as the `session-revoked` event
//! arrives, instead of when the token's status list is next read.
//!
//! An approval covers exactly the action and resource it was asked for. A
//! client that wants to retry a create once it is approved names the event
//! itself (`id`: lowercase letters, digits and hyphens); without one the
//! calendar picks a fresh `evt_…` id per attempt.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mandate_verifier::{
    Authenticated, CheckAnswer, CheckResource, Decision, SsfReceiver, Verifier, VerifyError, metadata_router,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

pub const READ_SCOPE: &str = "calendar:read";
pub const WRITE_SCOPE: &str = "calendar:write";
/// Most events kept in memory.
pub const MAX_EVENTS: usize = 10_000;
const MAX_TITLE: usize = 200;
const MAX_ID: usize = 64;

/// The `scopes` to register the calendar with at Mandate
/// (`POST /v1/resources`): each scope and the actions it covers.
pub fn registered_scopes() -> Value {
    json!({ READ_SCOPE: ["list", "get"], WRITE_SCOPE: ["create"] })
}

/// One calendar entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub title: String,
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    pub sensitive: bool,
    /// The user whose calendar it is.
    pub owner: String,
    /// The agent that created it.
    pub created_by: String,
}

/// `POST /events`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// The event's id, chosen by the client so that a create can be
    /// retried after approval.
    #[serde(default)]
    pub id: Option<String>,
    pub title: String,
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(default)]
    pub sensitive: bool,
}

#[derive(Clone)]
struct App {
    verifier: Verifier,
    events: Arc<Mutex<Vec<Event>>>,
    /// Numbers the ids the calendar picks.
    next_id: Arc<AtomicU64>,
}

/// The calendar's routes, behind `verifier`'s layer, and its metadata.
pub fn router(verifier: Verifier) -> Router {
    let app = App { verifier: verifier.clone(), events: Arc::default(), next_id: Arc::new(AtomicU64::new(1)) };
    Router::new()
        .route("/events", get(list).post(create))
        .route("/events/{id}", get(get_one))
        .with_state(app)
        .layer(verifier.layer())
        .merge(metadata_router(verifier))
}

/// Where the calendar takes pushed Security Event Tokens (RFC 8935).
pub const SSF_PUSH_PATH: &str = "/ssf/events";

/// [`router`], with the Shared Signals push endpoint at [`SSF_PUSH_PATH`]
/// outside the token layer (the transmitter authenticates by the SET's
/// signature and the stream's `authorization_header`).
pub fn router_with_ssf(verifier: Verifier, receiver: &SsfReceiver) -> Router {
    router(verifier).merge(receiver.push_router(SSF_PUSH_PATH))
}

/// Serves the calendar on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, verifier: Verifier) -> std::io::Result<()> {
    axum::serve(listener, router(verifier)).await
}

/// Why a call was refused.
#[derive(Debug)]
pub enum ApiError {
    /// Authentication or scope: an OAuth error with its challenges.
    Auth(VerifyError),
    /// RFC 9457 problem JSON.
    Problem { status: StatusCode, kind: &'static str, title: &'static str, detail: String, extra: Value },
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        Self::Auth(e)
    }
}

impl ApiError {
    fn problem(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self::Problem { status, kind, title, detail: detail.into(), extra: json!({}) }
    }

    /// A check API answer other than allow.
    fn refused(answer: CheckAnswer) -> Self {
        let forbidden =
            |kind, title, detail, extra| Self::Problem { status: StatusCode::FORBIDDEN, kind, title, detail, extra };
        match answer.decision {
            Decision::ApprovalRequired => forbidden(
                "approval-required",
                "Approval required",
                "a person must approve this action first; retry once it is approved".into(),
                json!({ "approval_request": answer.approval_request, "reasons": answer.reasons, "audit_seq": answer.audit_seq }),
            ),
            Decision::Deny | Decision::Allow => forbidden(
                "denied",
                "Denied by policy",
                answer.reasons.join("; "),
                json!({ "reasons": answer.reasons, "audit_seq": answer.audit_seq }),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Auth(e) => e.into_response(),
            Self::Problem { status, kind, title, detail, extra } => {
                let mut body = json!({
                    "type": format!("urn:mandate:problem:{kind}"),
                    "title": title,
                    "status": status.as_u16(),
                    "detail": detail,
                });
                if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                    b.extend(e.clone());
                }
                let mut resp = (status, body.to_string()).into_response();
                resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
                resp
            }
        }
    }
}

impl App {
    fn events(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks Mandate about `action` on `resource` when a remote check is
    /// configured; anything but allow refuses the call.
    async fn decide(&self, auth: &Authenticated, action: &str, resource: CheckResource) -> Result<(), ApiError> {
        if !self.verifier.has_remote_check() {
            return Ok(());
        }
        let answer = self.verifier.check(&auth.token, action, &resource).await?;
        if answer.is_allowed() { Ok(()) } else { Err(ApiError::refused(answer)) }
    }
}

fn event_resource(id: &str, owner: &str, sensitive: bool) -> CheckResource {
    let r = CheckResource::new("event", id).with("owner", owner);
    // A tag's presence is what policies test, so only sensitive events carry it.
    if sensitive { r.with("sensitive", "true") } else { r }
}

async fn list(State(app): State<App>, auth: Authenticated) -> Result<Json<Vec<Event>>, ApiError> {
    auth.require_scope(READ_SCOPE)?;
    let owner = &auth.claims.sub;
    app.decide(&auth, "list", CheckResource::new("calendar", owner.as_str()).with("owner", owner.as_str())).await?;
    let mine = app.events().iter().filter(|e| e.owner == *owner).cloned().collect();
    Ok(Json(mine))
}

async fn get_one(State(app): State<App>, auth: Authenticated, Path(id): Path<String>) -> Result<Json<Event>, ApiError> {
    auth.require_scope(READ_SCOPE)?;
    let found = app.events().iter().find(|e| e.id == id && e.owner == auth.claims.sub).cloned();
    let event =
        found.ok_or_else(|| ApiError::problem(StatusCode::NOT_FOUND, "not-found", "Not found", "no such event"))?;
    app.decide(&auth, "get", event_resource(&event.id, &event.owner, event.sensitive)).await?;
    Ok(Json(event))
}

async fn create(
    State(app): State<App>,
    auth: Authenticated,
    body: Result<Json<NewEvent>, JsonRejection>,
) -> Result<(StatusCode, Json<Event>), ApiError> {
    auth.require_scope(WRITE_SCOPE)?;
    let invalid = |detail: String| ApiError::problem(StatusCode::BAD_REQUEST, "invalid-input", "Invalid input", detail);
    let Json(new) = body.map_err(|e| invalid(e.body_text()))?;
    let title = new.title.trim();
    if title.is_empty() || title.chars().count() > MAX_TITLE || title.chars().any(char::is_control) {
        return Err(invalid(format!("title must be 1 to {MAX_TITLE} characters without control characters")));
    }
    // Client ids have no underscore, so they never meet the `evt_…` ones.
    let id = match new.id {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_ID
                && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            id
        }
        Some(_) => return Err(invalid(format!("id must be 1 to {MAX_ID} lowercase letters, digits and hyphens"))),
        None => format!("evt_{}", app.next_id.fetch_add(1, Ordering::Relaxed)),
    };
    let owner = auth.claims.sub.clone();
    let taken = |events: &[Event]| events.iter().any(|e| e.id == id && e.owner == owner);
    let conflict = || ApiError::problem(StatusCode::CONFLICT, "conflict", "Conflict", format!("event {id} exists"));
    if taken(&app.events()) {
        return Err(conflict());
    }
    app.decide(&auth, "create", event_resource(&id, &owner, new.sensitive)).await?;
    let mut events = app.events();
    if taken(&events) {
        return Err(conflict());
    }
    if events.len() >= MAX_EVENTS {
        return Err(ApiError::problem(StatusCode::INSUFFICIENT_STORAGE, "full", "Calendar full", "too many events"));
    }
    let event = Event {
        id: id.clone(),
        title: title.to_owned(),
        start: new.start,
        sensitive: new.sensitive,
        owner: owner.clone(),
        created_by: auth.actor().to_owned(),
    };
    events.push(event.clone());
    Ok((StatusCode::CREATED, Json(event)))
}

#[cfg(test)]
mod tests;
