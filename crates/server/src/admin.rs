//! The administration API (DESIGN §7): JSON over HTTP under `/v1`.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use mandate_core::{AgentPatch, Caller, Error, NewAgent, NewResource, NewUser, NewUserToken, UserPatch};
use mandate_model::records::Lifecycle;
use mandate_model::{AgentId, ResourceId, UserId, UserTokenId};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::error::Problem;
use crate::extract::{OptionalJson, StrictJson, bearer};

/// The authenticated caller. As an extractor it runs before the body is
/// read, so an unauthenticated request learns nothing about the schema.
pub struct Authed(pub Caller);

impl FromRequestParts<AppState> for Authed {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let result = match bearer(&parts.headers) {
            Some(token) => state.mandate.authenticate_caller(token).await,
            None => Err(Error::Unauthenticated),
        };
        match result {
            Ok(caller) => Ok(Authed(caller)),
            Err(Error::Unauthenticated) => {
                let why = if bearer(&parts.headers).is_some() {
                    "unknown or revoked bearer token"
                } else {
                    "no bearer token"
                };
                state.mandate.record_admin_refusal(mandate_core::audit::kind::ADMIN_AUTH_FAILED, None, why).await?;
                Err(Error::Unauthenticated.into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

pub(crate) fn id<T: std::str::FromStr<Err = mandate_model::ModelError>>(raw: &str) -> Result<T, Problem> {
    raw.parse().map_err(|e: mandate_model::ModelError| Problem::bad_input(e.to_string()))
}

pub(crate) fn created(body: serde_json::Value) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

/// Adds a member to a JSON object response.
fn set(out: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if let Some(obj) = out.as_object_mut() {
        obj.insert(key.to_owned(), value);
    }
}

/// A record as JSON; a record that cannot be encoded fails the request.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, Problem> {
    serde_json::to_value(v).map_err(|e| Problem::from(mandate_core::Error::Unavailable(format!("encoding: {e}"))))
}

pub async fn create_user(
    State(s): State<AppState>,
    Authed(c): Authed,
    StrictJson(body): StrictJson<NewUser>,
) -> Result<Response, Problem> {
    let user = s.mandate.create_user(c, body).await?;
    Ok(created(to_json(&user)?))
}

pub async fn get_user(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let user = s.mandate.get_user(c, id::<UserId>(&raw)?).await?;
    Ok(Json(to_json(&user)?).into_response())
}

pub async fn update_user(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
    StrictJson(body): StrictJson<UserPatch>,
) -> Result<Response, Problem> {
    let user = s.mandate.update_user(c, id::<UserId>(&raw)?, body).await?;
    Ok(Json(to_json(&user)?).into_response())
}

/// `POST /v1/users/{id}/tokens` (admin), optional body `{ttl_seconds}`:
/// the secret, shown once, with the token's id and expiry.
pub async fn create_user_token(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
    OptionalJson(body): OptionalJson<NewUserToken>,
) -> Result<Response, Problem> {
    let (secret, token) = s.mandate.create_user_token(c, id::<UserId>(&raw)?, body).await?;
    let mut out = to_json(&token)?;
    set(&mut out, "token", json!(secret));
    set(&mut out, "status", json!("active"));
    Ok(created(out))
}

/// `GET /v1/users/{id}/tokens` (the admin, or the person): their API
/// tokens, never the secrets.
pub async fn list_user_tokens(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let tokens = s.mandate.list_user_tokens(c, id::<UserId>(&raw)?).await?;
    let now = s.mandate.now();
    let mut items = Vec::with_capacity(tokens.len());
    for t in &tokens {
        let mut v = to_json(t)?;
        set(&mut v, "status", json!(t.status_at(now)));
        items.push(v);
    }
    Ok(Json(json!({ "tokens": items })).into_response())
}

/// `POST /v1/users/{id}/tokens/{token}/revoke` (the admin, or the person).
pub async fn revoke_user_token(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path((user, token)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let t = s.mandate.revoke_user_token(c, id::<UserId>(&user)?, id::<UserTokenId>(&token)?).await?;
    let mut v = to_json(&t)?;
    set(&mut v, "status", json!("revoked"));
    Ok(Json(v).into_response())
}

/// `POST /v1/agents`: the admin registers an agent, or an agent spawns an
/// ephemeral child of itself with its `mandate:spawn` access token.
pub async fn create_agent(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, Problem> {
    let dpop = crate::extract::dpop_token(&headers);
    let spawning = dpop.is_some() || bearer(&headers).is_some_and(|t| t.split('.').count() == 3);
    let (agent, secret) = if spawning {
        // Under the DPoP scheme a missing proof is an empty one: refused.
        let (token, proof) = match dpop {
            Some((t, p)) => (t.to_owned(), Some(p.unwrap_or_default().to_owned())),
            None => (bearer(&headers).unwrap_or_default().to_owned(), None),
        };
        let StrictJson(body) = StrictJson::<NewAgent>::from_request(request, &s).await?;
        let spawned = s.mandate.spawn_agent(&token, proof.as_deref(), body).await?;
        // Committed: the spawn rate is this counter's rate (ADR 0035).
        metrics::counter!("mandate_ephemeral_spawns_total").increment(1);
        spawned
    } else {
        let (mut parts, body) = request.into_parts();
        let Authed(c) = Authed::from_request_parts(&mut parts, &s).await?;
        let request = axum::extract::Request::from_parts(parts, body);
        let StrictJson(body) = StrictJson::<NewAgent>::from_request(request, &s).await?;
        s.mandate.create_agent(c, body).await?
    };
    let mut out = to_json(&agent)?;
    set(&mut out, "client_id", json!(agent.id.to_string()));
    show_backchannel(&s, &mut out, agent.id).await?;
    if let Some(secret) = secret {
        set(&mut out, "client_secret", json!(secret));
    }
    Ok(created(out))
}

pub async fn get_agent(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let agent = s.mandate.get_agent(c, id::<AgentId>(&raw)?).await?;
    let mut out = to_json(&agent)?;
    set(&mut out, "client_id", json!(agent.id.to_string()));
    // `limits` is what the agent carries; this is what holds for it: the
    // server's defaults narrowed by its ancestors' limits and its own.
    set(&mut out, "limits_in_force", to_json(&s.mandate.limits_of(&agent).await?)?);
    show_backchannel(&s, &mut out, agent.id).await?;
    Ok(Json(out).into_response())
}

/// Adds the agent's CIBA delivery registration (OpenID CIBA §4 names).
async fn show_backchannel(s: &AppState, out: &mut serde_json::Value, agent: AgentId) -> Result<(), Problem> {
    let b = s.mandate.backchannel_of(agent).await?;
    set(out, "backchannel_token_delivery_mode", json!(b.mode.as_str()));
    if let Some(endpoint) = b.endpoint {
        set(out, "backchannel_client_notification_endpoint", json!(endpoint));
    }
    Ok(())
}

/// `PATCH /v1/agents/{id}` (admin): `{federated_credentials: [...], limits: {...}}`.
pub async fn update_agent(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
    StrictJson(body): StrictJson<AgentPatch>,
) -> Result<Response, Problem> {
    let agent = s.mandate.update_agent(c, id::<AgentId>(&raw)?, body).await?;
    let mut out = to_json(&agent)?;
    set(&mut out, "client_id", json!(agent.id.to_string()));
    show_backchannel(&s, &mut out, agent.id).await?;
    Ok(Json(out).into_response())
}

pub async fn agent_lifecycle(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path((raw, op)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let op = match op.as_str() {
        "suspend" => Lifecycle::Suspend,
        "resume" => Lifecycle::Resume,
        "retire" => Lifecycle::Retire,
        _ => {
            return Err(Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", "no such endpoint"));
        }
    };
    let (agent, cascade) = s.mandate.agent_lifecycle(c, id::<AgentId>(&raw)?, op).await?;
    let mut out = to_json(&agent)?;
    set(&mut out, "client_id", json!(agent.id.to_string()));
    set(&mut out, "revoked_tokens", json!(cascade.tokens));
    set(&mut out, "revoked_grants", json!(cascade.grants));
    set(&mut out, "retired_agents", json!(cascade.retired.iter().map(ToString::to_string).collect::<Vec<_>>()));
    Ok(Json(out).into_response())
}

pub async fn create_resource(
    State(s): State<AppState>,
    Authed(c): Authed,
    StrictJson(body): StrictJson<NewResource>,
) -> Result<Response, Problem> {
    let r = s.mandate.create_resource(c, body).await?;
    Ok(created(to_json(&r)?))
}

pub async fn get_resource(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let r = s.mandate.get_resource(c, id::<ResourceId>(&raw)?).await?;
    Ok(Json(to_json(&r)?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    #[serde(default)]
    alg: Option<String>,
}

/// The body is optional: `{}` or none rotates to the configured algorithm.
pub async fn rotate_keys(
    State(s): State<AppState>,
    Authed(c): Authed,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let body: RotateBody = if body.is_empty() {
        RotateBody::default()
    } else {
        crate::extract::check_json_shape(&body).map_err(|e| Problem::bad_input(format!("malformed JSON: {e}")))?;
        serde_json::from_slice(&body).map_err(|e| Problem::bad_input(format!("invalid body: {e}")))?
    };
    let alg = match body.alg {
        None => None,
        Some(a) => Some(mandate_jose::KeyAlg::parse(&a).map_err(|e| Problem::bad_input(e.to_string()))?),
    };
    let kid = s.mandate.rotate_keys(c, alg).await?;
    Ok(Json(json!({ "kid": kid })).into_response())
}

/// `POST /v1/scim-tokens` (admin): a bearer token for a SCIM provisioning
/// client, shown once and stored hashed.
pub async fn create_scim_token(State(s): State<AppState>, Authed(c): Authed) -> Result<Response, Problem> {
    let (id, token) = s.mandate.create_scim_token(c).await?;
    Ok(created(json!({"id": id, "token": token})))
}

/// `GET /v1/scim-tokens` (admin): every SCIM token, newest first, without
/// its secret or hash.
pub async fn list_scim_tokens(State(s): State<AppState>, Authed(c): Authed) -> Result<Response, Problem> {
    let tokens = s.mandate.scim_tokens(c).await?;
    let time = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).ok();
    let body: Vec<serde_json::Value> = tokens
        .iter()
        .map(|t| {
            json!({
                "id": t.id,
                "created_at": time(t.created_at),
                "revoked_at": t.revoked_at.and_then(time),
                "status": if t.revoked_at.is_some() { "revoked" } else { "active" },
            })
        })
        .collect();
    Ok(Json(json!({ "scim_tokens": body })).into_response())
}

/// `POST /v1/scim-tokens/{id}/revoke` and `DELETE /v1/scim-tokens/{id}`
/// (admin).
pub async fn revoke_scim_token(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    s.mandate.revoke_scim_token(c, &id).await?;
    Ok(Json(json!({"id": id, "status": "revoked"})).into_response())
}
