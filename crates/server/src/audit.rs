//! The audit API (DESIGN §7): query, verification, checkpoints, keys and
//! delegation trees.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use mandate_core::TrailReport;
use mandate_core::audit::{AuditQuery, MAX_QUERY_LIMIT, parse_since};
use serde_json::json;

use crate::AppState;
use crate::admin::Authed;
use crate::error::Problem;

/// Longest filter value accepted.
const MAX_FILTER: usize = 256;

/// The query string as name/value pairs, each name at most once and known.
pub(crate) fn params(raw: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, Problem> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !known.contains(&k.as_ref()) {
            return Err(Problem::bad_input(format!(
                "unknown parameter {:?}; known: {}",
                bounded(&k),
                known.join(", ")
            )));
        }
        if out.iter().any(|(n, _)| *n == k) {
            return Err(Problem::bad_input(format!("parameter {k} given twice")));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

fn bounded(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A filter value: ids, event types and URIs only. Quotes, semicolons,
/// backslashes, spaces and control characters are refused outright
/// (SECURITY row 31), though every value is bound as a parameter anyway.
fn filter_value(name: &str, v: &str) -> Result<String, Problem> {
    let ok = !v.is_empty()
        && v.len() <= MAX_FILTER
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~:/?#@!$&()*+,=%".contains(&b));
    if !ok {
        return Err(Problem::bad_input(format!(
            "{name} must be 1-{MAX_FILTER} characters of letters, digits and - . _ ~ : / ? # @ ! $ & ( ) * + , = %"
        )));
    }
    Ok(v.to_owned())
}

pub(crate) fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, Problem> {
    v.parse().map_err(|_| Problem::bad_input(format!("{name} must be a non-negative integer")))
}

/// `GET /v1/audit?actor=&subject=&jti=&grant=&type=&resource=&parent=&since=&after=&limit=`:
/// events in `seq` order; `next` is the cursor for the following page.
pub async fn query(State(s): State<AppState>, Authed(c): Authed, RawQuery(raw): RawQuery) -> Result<Response, Problem> {
    let known = ["actor", "subject", "jti", "grant", "type", "resource", "parent", "since", "after", "limit"];
    let mut q = AuditQuery { limit: 100, ..AuditQuery::default() };
    for (k, v) in params(raw.as_deref(), &known)? {
        match k.as_str() {
            "actor" => q.actor = Some(filter_value(&k, &v)?),
            "subject" => q.subject = Some(filter_value(&k, &v)?),
            "jti" => q.jti = Some(filter_value(&k, &v)?),
            "grant" => q.grant = Some(filter_value(&k, &v)?),
            "type" => q.kind = Some(filter_value(&k, &v)?),
            "resource" => q.resource = Some(filter_value(&k, &v)?),
            "parent" => q.parent = Some(filter_value(&k, &v)?),
            "since" => q.since = Some(parse_since(&v)?),
            "after" => q.after = number(&k, &v)?,
            "limit" => {
                q.limit = number(&k, &v)?;
                if q.limit == 0 || q.limit > MAX_QUERY_LIMIT {
                    return Err(Problem::bad_input(format!("limit must be 1 to {MAX_QUERY_LIMIT}")));
                }
            }
            _ => {}
        }
    }
    let limit = q.limit as usize;
    let events = s.mandate.audit_query(c, q).await?;
    let next = (events.len() == limit).then(|| events.last().map(|e| e.seq)).flatten();
    Ok(Json(json!({ "events": events, "next": next })).into_response())
}

/// `GET /v1/audit/verify`: recomputes the whole chain and checks every
/// signed checkpoint. A broken chain is a 200 answer with `valid: false`
/// and the first bad `seq`.
pub async fn verify(State(s): State<AppState>, Authed(c): Authed) -> Result<Response, Problem> {
    let body = match s.mandate.audit_verify(c).await? {
        TrailReport::Intact(v) => {
            json!({ "valid": true, "events": v.events, "head": v.head, "checkpoints": v.checkpoints, "lanes": v.lanes })
        }
        TrailReport::Broken(t) => json!({ "valid": false, "first_bad_seq": t.seq, "reason": t.reason }),
    };
    Ok(Json(body).into_response())
}

/// `GET /v1/audit/checkpoints?after=&limit=`: signed checkpoints in order,
/// for a witness to keep outside Mandate.
pub async fn checkpoints(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let (mut after, mut limit) = (0u64, 100u32);
    for (k, v) in params(raw.as_deref(), &["after", "limit"])? {
        match k.as_str() {
            "after" => after = number(&k, &v)?,
            _ => limit = number(&k, &v)?,
        }
    }
    let cps = s.mandate.audit_checkpoints(c, after, limit).await?;
    let next = (cps.len() == limit as usize).then(|| cps.last().map(|c| c.seq)).flatten();
    Ok(Json(json!({ "checkpoints": cps, "next": next })).into_response())
}

/// `GET /v1/audit/keys`: the public keys that sign checkpoints. Public, like
/// `/jwks.json`, so that a witness can check what it keeps.
pub async fn keys(State(s): State<AppState>) -> Response {
    Json(s.mandate.audit_keys()).into_response()
}

/// `GET /v1/audit/trace/{id}`: the delegation tree of a token or a grant,
/// as JSON and as the text `mandate audit trace` prints.
pub async fn trace(State(s): State<AppState>, Authed(c): Authed, Path(id): Path<String>) -> Result<Response, Problem> {
    let id = filter_value("id", &id)?;
    let t = s.mandate.audit_trace(c, &id).await?;
    Ok(Json(json!({ "id": id, "tokens": t.len(), "tree": t, "text": t.render() })).into_response())
}
