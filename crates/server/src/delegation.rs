//! Grants, approvals and decisions: `/v1/grants`, `/v1/approvals`,
//! `/v1/check` and OpenID AuthZEN's `/access/v1/evaluation`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{FromRequest, Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use mandate_core::{CheckRequest, CheckedResource, Checker, Error};
use mandate_model::records::{Approval, ApprovalStatus, Grant};
use mandate_model::{ApprovalId, GrantId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::admin::Authed;
use crate::error::Problem;
use crate::extract::{StrictJson, bearer};

/// The query string as name/value pairs, each known and given once.
pub(crate) fn query(raw: Option<&str>, known: &[&str]) -> Result<BTreeMap<String, String>, Problem> {
    let mut out = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !known.contains(&k.as_ref()) {
            let name: String = k.chars().take(64).collect();
            return Err(Problem::bad_input(format!("unknown parameter {name:?}; known: {}", known.join(", "))));
        }
        if out.insert(k.clone().into_owned(), v.into_owned()).is_some() {
            return Err(Problem::bad_input(format!("parameter {k} given twice")));
        }
    }
    Ok(out)
}

pub(crate) fn parsed<T: std::str::FromStr>(name: &str, v: Option<&String>) -> Result<Option<T>, Problem> {
    v.map(|v| v.parse::<T>().map_err(|_| Problem::bad_input(format!("{name} is malformed")))).transpose()
}

pub(crate) fn grant_json(g: &Grant, now: time::OffsetDateTime) -> Result<Value, Problem> {
    let mut v = crate::admin::to_json(g)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("status".into(), json!(g.status_at(now)));
    }
    Ok(v)
}

fn approval_json(a: &Approval, now: time::OffsetDateTime) -> Result<Value, Problem> {
    let mut v = crate::admin::to_json(a)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("status".into(), json!(a.status_at(now)));
    }
    Ok(v)
}

/// `POST /v1/grants/{id}/revoke`.
pub async fn revoke_grant(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let id = raw.parse::<GrantId>().map_err(|e| Problem::bad_input(e.to_string()))?;
    let (grant, revoked) = s.mandate.revoke_grant(c, id).await?;
    let mut out = grant_json(&grant, s.mandate.now())?;
    if let Some(o) = out.as_object_mut() {
        o.insert("tokens_revoked".into(), json!(revoked));
    }
    Ok(Json(out).into_response())
}

/// The optional body of `POST /v1/grants/{id}/reapprove`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReapproveBody {
    /// Replaces the grant's purpose when renewed.
    #[serde(default)]
    purpose: Option<String>,
}

/// `POST /v1/grants/{id}/reapprove` (ADR 0036): 200 with the renewed grant,
/// or 202 with the approval a person must decide first.
pub async fn reapprove_grant(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
    crate::extract::OptionalJson(body): crate::extract::OptionalJson<ReapproveBody>,
) -> Result<Response, Problem> {
    let id = raw.parse::<GrantId>().map_err(|e| Problem::bad_input(e.to_string()))?;
    let now = s.mandate.now();
    match s.mandate.reapprove_grant(c, id, body.purpose).await? {
        mandate_core::delegation::Reapproved::Renewed(grant) => {
            let mut out = grant_json(&grant, now)?;
            if let Some(o) = out.as_object_mut() {
                o.insert("reapproval".into(), json!("renewed"));
            }
            Ok(Json(out).into_response())
        }
        mandate_core::delegation::Reapproved::Waiting { grant, approval } => {
            let out = json!({
                "reapproval": "pending",
                "approval": approval.id.to_string(),
                "approval_expires_at": mandate_core::audit::event_time(approval.expires_at),
                "grant": grant_json(&grant, now)?,
            });
            Ok((axum::http::StatusCode::ACCEPTED, Json(out)).into_response())
        }
    }
}

/// `GET /v1/approvals?status=&limit=`.
pub async fn list_approvals(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = query(raw.as_deref(), &["status", "limit", "before"])?;
    let status = match q.get("status").map(String::as_str) {
        None => None,
        Some(v) => Some(v.parse::<ApprovalStatus>().map_err(|e| Problem::bad_input(e.to_string()))?),
    };
    let limit = parsed::<u32>("limit", q.get("limit"))?.unwrap_or(100);
    let before = parsed::<ApprovalId>("before", q.get("before"))?;
    let list = s.mandate.list_approvals(c, status, before, limit).await?;
    let now = s.mandate.now();
    // The cursor for the next page, when this one is full.
    let next = (list.len() == limit as usize).then(|| list.last().map(|a| a.id.to_string())).flatten();
    Ok(Json(json!({
        "approvals": list.iter().map(|a| approval_json(a, now)).collect::<Result<Vec<_>, _>>()?,
        "next_before": next,
    }))
    .into_response())
}

/// `POST /v1/approvals/{id}/approve` and `/deny`.
pub async fn decide_approval(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path((raw, decision)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let approve = match decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            return Err(Error::NotFound(format!(
                "no such call /v1/approvals/{{id}}/{}",
                decision.chars().take(32).collect::<String>()
            ))
            .into());
        }
    };
    let id = raw.parse::<ApprovalId>().map_err(|e| Problem::bad_input(e.to_string()))?;
    let approval = s.mandate.decide_approval(c, id, approve).await?;
    Ok(Json(approval_json(&approval, s.mandate.now())?).into_response())
}

/// The caller of a decision endpoint: the admin token, or a resource
/// server's `mandate:check` token.
async fn checker(s: &AppState, headers: &HeaderMap, path: &str) -> Result<Checker, Problem> {
    // `DPoP <token>` with its proof, or `Bearer <token>` (RFC 9449 §7.1).
    let (token, proof) = match crate::extract::dpop_token(headers) {
        Some((t, p)) => (Some(t), Some(p.unwrap_or_default())),
        None => (bearer(headers), None),
    };
    let Some(token) = token else {
        s.mandate
            .record_admin_refusal(mandate_core::audit::kind::ADMIN_AUTH_FAILED, None, "check: no bearer token")
            .await?;
        return Err(Error::Unauthenticated.into());
    };
    match s.mandate.authenticate_checker(token, proof, path).await {
        Ok(c) => Ok(c),
        Err(e @ (Error::Unauthenticated | Error::Forbidden(_))) => {
            s.mandate
                .record_admin_refusal(mandate_core::audit::kind::ADMIN_AUTH_FAILED, None, &format!("check: {e}"))
                .await?;
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /v1/check`.
pub async fn check(
    State(s): State<AppState>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, Problem> {
    let who = checker(&s, &headers, "/v1/check").await?;
    let StrictJson(body) = StrictJson::<CheckRequest>::from_request(request, &s).await?;
    let answer = s.mandate.check(&who, &body).await?;
    metrics::counter!("mandate_checks_total", "decision" => answer.decision).increment(1);
    Ok(Json(answer).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    subject: EvalSubject,
    action: EvalAction,
    resource: CheckedResource,
    #[serde(default)]
    context: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalSubject {
    /// Always `token`: the subject is whoever presents this access token.
    #[serde(rename = "type")]
    kind: String,
    id: String,
    #[serde(default)]
    #[allow(dead_code)]
    properties: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalAction {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    properties: Option<serde_json::Map<String, Value>>,
}

/// `POST /access/v1/evaluation` (OpenID AuthZEN): the check API's decision
/// as `{decision: bool}`, with the receipt in `context`. The subject is
/// `{type: "token", id: "<access token>"}`.
pub async fn evaluation(
    State(s): State<AppState>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, Problem> {
    let who = checker(&s, &headers, "/access/v1/evaluation").await?;
    let StrictJson(body) = StrictJson::<Evaluation>::from_request(request, &s).await?;
    if body.subject.kind != "token" {
        return Err(Problem::bad_input("subject.type must be \"token\", with the access token as subject.id"));
    }
    // AuthZEN carries request facts in `context`: `client_address` there
    // is the agent's address as the PEP saw it, as on `/v1/check`.
    let mut context = body.context;
    let client_address = match context.as_mut().and_then(|c| c.remove("client_address")) {
        None => None,
        Some(Value::String(a)) => Some(
            a.parse::<std::net::IpAddr>()
                .map_err(|_| Problem::bad_input("context.client_address must be an IP address"))?,
        ),
        Some(_) => return Err(Problem::bad_input("context.client_address must be an IP address")),
    };
    // RFC 9396's detail rides in AuthZEN's context under its own name.
    let authorization_details = context.as_mut().and_then(|c| c.remove("authorization_details"));
    let req = CheckRequest {
        token: body.subject.id,
        action: body.action.name,
        resource: body.resource,
        context,
        client_address,
        authorization_details,
        probe: false,
    };
    let answer = s.mandate.check(&who, &req).await?;
    metrics::counter!("mandate_checks_total", "decision" => answer.decision).increment(1);
    Ok(Json(json!({ "decision": answer.decision == "allow", "context": answer })).into_response())
}
