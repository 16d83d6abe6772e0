//! The policy set on the administration API (DESIGN §7, §12, ADR 0034):
//! read and replace it, test a candidate before it ships, and its history.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use mandate_core::policy_test::PolicyTestRequest;
use mandate_core::store::{PolicyVersion, StoredPolicy};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::admin::Authed;
use crate::audit::{number, params};
use crate::error::Problem;
use crate::extract::{OptionalJson, StrictJson};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    policies: String,
    /// The `version` the edit was made from: 409 if the set changed since.
    #[serde(default)]
    expected_version: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    #[serde(default)]
    expected_version: Option<String>,
}

fn rfc3339(t: time::OffsetDateTime) -> Option<String> {
    t.format(&time::format_description::well_known::Rfc3339).ok()
}

fn entry_json(v: &PolicyVersion) -> serde_json::Value {
    json!({
        "number": v.number,
        "version": v.version,
        "author": v.author,
        "created_at": rfc3339(v.created_at),
        "bytes": v.bytes,
    })
}

fn installed(p: &StoredPolicy) -> Response {
    Json(json!({ "version": p.version, "author": p.author })).into_response()
}

/// `PUT /v1/policies` `{policies, expected_version?}`.
pub async fn put_policies(
    State(s): State<AppState>,
    Authed(c): Authed,
    StrictJson(body): StrictJson<PolicyBody>,
) -> Result<Response, Problem> {
    let p = s.mandate.replace_policies(c, &body.policies, body.expected_version.as_deref(), None).await?;
    Ok(installed(&p))
}

/// `GET /v1/policies`: the text, its `version` (also the `ETag`), its
/// history `number` and the schema.
pub async fn get_policies(State(s): State<AppState>, Authed(c): Authed) -> Result<Response, Problem> {
    let p = s.mandate.get_policies(c).await?;
    let body = json!({ "version": p.version, "number": p.number, "policies": p.text, "schema": p.schema });
    let etag = format!("\"{}\"", p.version);
    Ok(([(header::ETAG, etag)], Json(body)).into_response())
}

/// `POST /v1/policies/test` `{policies, cases, replay?}`.
pub async fn test_policies(
    State(s): State<AppState>,
    Authed(c): Authed,
    StrictJson(body): StrictJson<PolicyTestRequest>,
) -> Result<Response, Problem> {
    let answer = s.mandate.test_policies(c, &body).await?;
    Ok(Json(crate::admin::to_json(&answer)?).into_response())
}

/// `GET /v1/policies/versions?limit=&cursor=`: newest first.
pub async fn list_versions(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let mut before = None;
    let mut limit = None;
    for (k, v) in params(raw.as_deref(), &["limit", "cursor"])? {
        match k.as_str() {
            "cursor" => before = Some(number::<u64>(&k, &v)?),
            "limit" => limit = Some(number::<u32>(&k, &v)?),
            _ => {}
        }
    }
    let (items, next) = s.mandate.policy_versions(c, before, limit).await?;
    let items: Vec<serde_json::Value> = items.iter().map(entry_json).collect();
    Ok(Json(json!({ "items": items, "next_cursor": next.map(|n| n.to_string()) })).into_response())
}

fn version_number(raw: &str) -> Result<u64, Problem> {
    raw.parse().ok().filter(|n| *n > 0).ok_or_else(|| Problem::bad_input("a version number is a positive integer"))
}

/// `GET /v1/policies/versions/{n}`: one entry with its text.
pub async fn get_version(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let (entry, text) = s.mandate.policy_version(c, version_number(&raw)?).await?;
    let mut body = entry_json(&entry);
    if let Some(o) = body.as_object_mut() {
        o.insert("policies".into(), json!(text));
    }
    Ok(Json(body).into_response())
}

/// `GET /v1/policies/versions/{n}/diff?against=m`.
pub async fn diff_version(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let mut against = None;
    for (k, v) in params(query.as_deref(), &["against"])? {
        if k == "against" {
            against = Some(version_number(&v)?);
        }
    }
    let diff = s.mandate.policy_diff(c, version_number(&raw)?, against).await?;
    Ok(Json(crate::admin::to_json(&diff)?).into_response())
}

/// `POST /v1/policies/versions/{n}/restore` `{expected_version?}`.
pub async fn restore_version(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
    OptionalJson(body): OptionalJson<RestoreBody>,
) -> Result<Response, Problem> {
    let n = version_number(&raw)?;
    let p = s.mandate.restore_policy_version(c, n, body.expected_version.as_deref()).await?;
    Ok(installed(&p))
}
