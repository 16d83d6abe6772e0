//! The inventory's lists (DESIGN §12, ADR 0032): `GET /v1/users`,
//! `/v1/agents`, `/v1/resources` and `/v1/grants`, each
//! `?limit=&cursor=` and filters → `{items: [...], next_cursor}`.
//!
//! A cursor is opaque to clients: base64url of the list's name and the
//! last id of the page (core pages by keyset on the id). A cursor of
//! another list, or one that does not decode to an id, is 400.
//!
//! `GET /v1/inventory/report?by=` (ADR 0035) pages its keys the same way:
//! the cursor is the last key of the page, bound to the dimension.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_core::inventory::{Paged, page_size, window_days};
use mandate_core::report::{self, Churn, Counts, ReportBy};
use mandate_core::store::{AgentListQuery, GrantQuery, GrantState, ResourceListQuery, UserListQuery};
use mandate_model::records::{AgentKind, AgentOrigin, AgentStatus, UserStatus};
use mandate_model::{AgentId, GrantId, ResourceId, UserId};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::AppState;
use crate::admin::{Authed, to_json};
use crate::delegation::{grant_json, parsed, query};
use crate::error::Problem;

/// The longest cursor read: an id and a list name, encoded, fit well
/// within it.
const MAX_CURSOR: usize = 128;

/// The cursor that continues list `list` below `id`.
pub(crate) fn cursor(list: &str, id: impl ToString) -> String {
    URL_SAFE_NO_PAD.encode(format!("{list}:{}", id.to_string()))
}

/// The id a cursor of list `list` continues below.
pub(crate) fn after<T: std::str::FromStr>(list: &str, raw: Option<&String>) -> Result<Option<T>, Problem> {
    let Some(raw) = raw else { return Ok(None) };
    let bad = || Problem::bad_input("cursor is malformed or belongs to another list");
    if raw.len() > MAX_CURSOR {
        return Err(bad());
    }
    let text = URL_SAFE_NO_PAD.decode(raw).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad)?;
    let id = text.strip_prefix(list).and_then(|r| r.strip_prefix(':')).ok_or_else(bad)?;
    id.parse::<T>().map(Some).map_err(|_| bad())
}

/// An RFC 3339 time parameter.
pub(crate) fn time_param(name: &str, v: Option<&String>) -> Result<Option<OffsetDateTime>, Problem> {
    v.map(|v| {
        OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
            .map_err(|_| Problem::bad_input(format!("{name} must be an RFC 3339 time, such as 2026-11-23T10:00:00Z")))
    })
    .transpose()
}

/// A lowercase enum parameter, read as its JSON name.
pub(crate) fn named<T: serde::de::DeserializeOwned>(
    name: &str,
    v: Option<&String>,
    known: &str,
) -> Result<Option<T>, Problem> {
    v.map(|v| {
        serde_json::from_value::<T>(Value::String(v.clone()))
            .map_err(|_| Problem::bad_input(format!("{name} must be one of {known}")))
    })
    .transpose()
}

pub(crate) fn limit(q: &BTreeMap<String, String>) -> Result<u32, Problem> {
    Ok(page_size(parsed::<u32>("limit", q.get("limit"))?)?)
}

pub(crate) fn page<T, Id: ToString>(
    list: &str,
    p: Paged<T, Id>,
    show: impl Fn(&T) -> Result<Value, Problem>,
) -> Result<Response, Problem> {
    let items = p.items.iter().map(show).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "items": items, "next_cursor": p.next.map(|id| cursor(list, id)) })).into_response())
}

/// The parameters of `GET /v1/users` (and the console's people list).
pub(crate) const USER_FILTERS: &[&str] = &["status", "group", "limit", "cursor"];

/// The people list's query, read from its parameters (400 when one is bad).
pub(crate) fn users_query(q: &BTreeMap<String, String>) -> Result<UserListQuery, Problem> {
    Ok(UserListQuery {
        status: named::<UserStatus>("status", q.get("status"), "active, disabled")?,
        group: q.get("group").cloned(),
        before: after::<UserId>("users", q.get("cursor"))?,
        limit: limit(q)?,
    })
}

/// `GET /v1/users?status=&group=&limit=&cursor=`.
pub async fn list_users(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = query(raw.as_deref(), USER_FILTERS)?;
    page("users", s.mandate.list_users(c, users_query(&q)?).await?, to_json)
}

/// The parameters of `GET /v1/agents` (and the console's agents list).
pub(crate) const AGENT_FILTERS: &[&str] =
    &["owner", "kind", "origin", "status", "parent", "used_before", "used_after", "expires_before", "limit", "cursor"];

/// The agents list's query, read from its parameters (400 when one is bad).
pub(crate) fn agents_query(q: &BTreeMap<String, String>) -> Result<AgentListQuery, Problem> {
    Ok(AgentListQuery {
        owner: parsed::<UserId>("owner", q.get("owner"))?,
        kind: named::<AgentKind>("kind", q.get("kind"), "persistent, ephemeral")?,
        origin: named::<AgentOrigin>(
            "origin",
            q.get("origin"),
            "admin, spawned, metadata_document, dynamic, federated",
        )?,
        status: named::<AgentStatus>("status", q.get("status"), "active, suspended, retired")?,
        parent: parsed::<AgentId>("parent", q.get("parent"))?,
        used_before: time_param("used_before", q.get("used_before"))?,
        used_after: time_param("used_after", q.get("used_after"))?,
        expires_before: time_param("expires_before", q.get("expires_before"))?,
        not_retired: false,
        before: after::<AgentId>("agents", q.get("cursor"))?,
        limit: limit(q)?,
    })
}

/// `GET /v1/agents?owner=&kind=&origin=&status=&parent=&used_before=&used_after=&expires_before=&limit=&cursor=`.
pub async fn list_agents(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = query(raw.as_deref(), AGENT_FILTERS)?;
    page("agents", s.mandate.list_agents(c, agents_query(&q)?).await?, |a| {
        let mut v = to_json(&a.agent)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("client_id".into(), json!(a.agent.id.to_string()));
            o.insert("last_used_at".into(), json!(a.last_used_at.map(rfc3339).transpose()?));
        }
        Ok(v)
    })
}

fn rfc3339(t: OffsetDateTime) -> Result<String, Problem> {
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| Problem::from(mandate_core::Error::Unavailable(format!("encoding: {e}"))))
}

/// `GET /v1/agents/{id}/inventory?days=`: the agent as an operator reviews
/// it (ADR 0032).
pub async fn agent_inventory(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
    RawQuery(rawq): RawQuery,
) -> Result<Response, Problem> {
    let q = query(rawq.as_deref(), &["days"])?;
    let days = window_days(parsed::<u32>("days", q.get("days"))?)?;
    let id = raw.parse::<AgentId>().map_err(|e| Problem::bad_input(e.to_string()))?;
    let inv = s.mandate.agent_inventory(c, id, days).await?;
    let now = s.mandate.now();
    let a = &inv.agent;
    // Key ids and their age: Mandate keeps when the agent was registered,
    // not when each key was added.
    let age = (now - a.created_at).whole_seconds().max(0);
    let keys: Vec<Value> = a
        .jwks
        .as_ref()
        .and_then(|j| j.get("keys"))
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .map(|k| json!({"kid": k.get("kid"), "kty": k.get("kty"), "alg": k.get("alg"), "age_seconds": age}))
                .collect()
        })
        .unwrap_or_default();
    let delegated: Vec<Value> = inv
        .delegated_to
        .iter()
        .map(|d| json!({"agent": d.agent.to_string(), "count": d.count, "last": d.last}))
        .collect();
    Ok(Json(json!({
        "id": a.id.to_string(),
        "name": a.name,
        "owner": a.owner.to_string(),
        "purpose": a.description,
        "origin": a.origin.as_str(),
        "kind": a.kind,
        "status": a.status.as_str(),
        "parent": a.parent.map(|p| p.to_string()),
        "created_at": rfc3339(a.created_at)?,
        "expires_at": a.expires_at.map(rfc3339).transpose()?,
        "last_used_at": inv.activity.last_used_at.map(rfc3339).transpose()?,
        "credentials": {
            "keys": keys,
            "client_secret": a.secret_hash.is_some(),
            "public_client": a.public,
            "metadata_url": a.metadata_url,
            "federated": to_json(&a.federated_credentials)?,
        },
        "ceiling": a.scopes.as_ref().map(|s| s.to_claim()),
        // What the agent carries, and what holds for it: the server's
        // defaults narrowed by its ancestors' limits and its own.
        "limits": to_json(&a.limits)?,
        "limits_in_force": to_json(&s.mandate.limits_of(a).await?)?,
        "live": {"grants": inv.activity.live_grants, "tokens": inv.activity.live_tokens},
        "delegation": {
            "may_delegate_to": inv.may_delegate_to.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "candidates_evaluated": inv.candidates,
            "delegated_to": delegated,
            "days": inv.days,
            "events_read": inv.events_read,
            "complete": inv.complete,
        },
    }))
    .into_response())
}

/// The parameters of `GET /v1/resources` (and the console's list).
pub(crate) const RESOURCE_FILTERS: &[&str] = &["limit", "cursor"];

/// The resources list's query, read from its parameters.
pub(crate) fn resources_query(q: &BTreeMap<String, String>) -> Result<ResourceListQuery, Problem> {
    Ok(ResourceListQuery { before: after::<ResourceId>("resources", q.get("cursor"))?, limit: limit(q)? })
}

/// `GET /v1/resources?limit=&cursor=`.
pub async fn list_resources(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = query(raw.as_deref(), RESOURCE_FILTERS)?;
    page("resources", s.mandate.list_resources(c, resources_query(&q)?).await?, to_json)
}

/// The parameters of `GET /v1/grants` (and the console's grants list).
pub(crate) const GRANT_FILTERS: &[&str] =
    &["user", "agent", "resource", "status", "expires_before", "used_before", "limit", "cursor"];

/// The grants list's query at `now`, read from its parameters.
pub(crate) fn grants_query(q: &BTreeMap<String, String>, now: OffsetDateTime) -> Result<GrantQuery, Problem> {
    let status =
        q.get("status").map(|v| v.parse::<GrantState>().map(|st| (st, now)).map_err(Problem::bad_input)).transpose()?;
    Ok(GrantQuery {
        user: parsed::<UserId>("user", q.get("user"))?,
        agent: parsed::<AgentId>("agent", q.get("agent"))?,
        user_or_owner: None,
        resource: q.get("resource").cloned(),
        status,
        expires_before: time_param("expires_before", q.get("expires_before"))?,
        used_before: time_param("used_before", q.get("used_before"))?,
        before: after::<GrantId>("grants", q.get("cursor"))?,
        limit: limit(q)?,
    })
}

/// `GET /v1/grants?user=&agent=&resource=&status=&expires_before=&used_before=&limit=&cursor=`.
pub async fn list_grants(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = query(raw.as_deref(), GRANT_FILTERS)?;
    let now = s.mandate.now();
    page("grants", s.mandate.list_grants(c, grants_query(&q, now)?).await?, |g| grant_json(g, now))
}

/// The longest report cursor read: a key (a resource identifier may be a
/// long URL) and the dimension, encoded.
const MAX_REPORT_CURSOR: usize = 4096;

fn counts(c: &Counts) -> Value {
    json!({"grants": c.grants, "tokens": c.tokens, "ephemeral_agents": c.ephemeral_agents})
}

fn churn(c: &Churn) -> Value {
    json!({"created": counts(&c.created), "ended": counts(&c.ended)})
}

/// `GET /v1/inventory/report?by=owner|resource|scope&limit=&cursor=` (ADR
/// 0035): per key, in key order, the live counts, their peaks and churn.
pub async fn report(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = query(raw.as_deref(), &["by", "limit", "cursor"])?;
    let by = q
        .get("by")
        .ok_or_else(|| Problem::bad_input("by is required: owner, resource or scope"))?
        .parse::<ReportBy>()
        .map_err(Problem::bad_input)?;
    let limit = report::page_size(parsed::<u32>("limit", q.get("limit"))?)?;
    // The cursor is bound to the dimension: a key of another is refused.
    let list = format!("report-{}", by.as_str());
    let after = match q.get("cursor") {
        None => None,
        Some(raw) => {
            let bad = || Problem::bad_input("cursor is malformed or belongs to another report");
            if raw.len() > MAX_REPORT_CURSOR {
                return Err(bad());
            }
            let text = URL_SAFE_NO_PAD.decode(raw).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad)?;
            let key = text.strip_prefix(&list).and_then(|r| r.strip_prefix(':')).ok_or_else(bad)?;
            Some(key.to_owned())
        }
    };
    let r = s.mandate.inventory_report(c, by, after, limit).await?;
    let items: Vec<Value> = r
        .items
        .iter()
        .map(|i| {
            json!({
                "key": i.key,
                "live": counts(&i.live),
                "peak_24h": counts(&i.peak_24h),
                "peak_7d": counts(&i.peak_7d),
                "churn_24h": churn(&i.churn_24h),
                "churn_7d": churn(&i.churn_7d),
            })
        })
        .collect();
    Ok(Json(json!({
        "by": by.as_str(),
        "generated_at": rfc3339(r.generated_at)?,
        "items": items,
        "next_cursor": r.next.map(|k| cursor(&list, k)),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_only_in_its_own_list() -> Result<(), Problem> {
        let id: AgentId = "agt_01J00000000000000000000000".parse().map_err(|_| Problem::bad_input("id"))?;
        let c = cursor("agents", id);
        assert_eq!(after::<AgentId>("agents", Some(&c))?, Some(id));
        assert!(after::<UserId>("users", Some(&c)).is_err(), "another list's cursor");
        assert!(after::<AgentId>("agents", Some(&"not base64!".to_owned())).is_err());
        assert!(after::<AgentId>("agents", Some(&cursor("agents", "agt_nope"))).is_err(), "not an id");
        assert!(after::<AgentId>("agents", Some(&"A".repeat(MAX_CURSOR + 1))).is_err(), "too long");
        assert_eq!(after::<AgentId>("agents", None)?, None);
        Ok(())
    }
}
