//! The access review (DESIGN §12): `GET /v1/review`, its campaigns
//! (`/v1/review/campaigns`, `/v1/review/items`), and the lapse report
//! `GET /v1/review/lapsed` (ADR 0036).
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_core::Caller;
use mandate_core::campaigns::CampaignView;
use mandate_core::review::{MAX_DAYS, ThresholdOverrides};
use mandate_core::store::{CampaignProgress, CampaignQuery, LapsedQuery, ReviewItemQuery};
use mandate_model::review::{CampaignDefault, CampaignScope, CampaignStatus, Decision};
use mandate_model::{AgentId, CampaignId, GrantId, ReviewItemId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::admin::{Authed, created, id, to_json};
use crate::delegation::{parsed, query};
use crate::error::Problem;
use crate::extract::StrictJson;
use crate::inventory::{after, cursor, limit, named, page, time_param};

/// `GET /v1/review?stale_days=&unused_days=&expiring_days=&limit=&cursor=`:
/// the findings about a page of `limit` agents (1 to 1,000, default 100;
/// newest first) and their grants, for the admin and auditors, with the
/// cursor of the next page (ADR 0038). Each threshold is 0 (now) to 3650
/// days.
pub async fn findings(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = query(raw.as_deref(), REVIEW_PARAMS)?;
    let mut o = ThresholdOverrides::default();
    for (k, slot) in [
        ("stale_days", &mut o.stale_days),
        ("unused_days", &mut o.unused_days),
        ("expiring_days", &mut o.expiring_days),
    ] {
        *slot =
            q.get(k)
                .map(|v| {
                    v.parse::<u32>().ok().filter(|d| *d <= MAX_DAYS).ok_or_else(|| {
                        Problem::bad_input(format!("{k} must be a whole number of days, 0 to {MAX_DAYS}"))
                    })
                })
                .transpose()?;
    }
    let before = after::<AgentId>("review", q.get("cursor"))?;
    let page = s.mandate.review(c, o, before, limit(&q)?).await?;
    Ok(Json(json!({
        "findings": page.findings,
        "agents_reviewed": page.agents,
        "next_cursor": page.next.map(|id| cursor("review", id)),
    }))
    .into_response())
}

/// The parameters of `GET /v1/review`.
const REVIEW_PARAMS: &[&str] = &["stale_days", "unused_days", "expiring_days", "limit", "cursor"];

/// `POST /v1/review/campaigns` `{scope, deadline, default}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    #[serde(default)]
    pub scope: CampaignScope,
    /// RFC 3339.
    pub deadline: String,
    pub default: String,
}

/// `POST /v1/review/items/{id}/decide` `{decision, scopes?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    pub decision: String,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

fn campaign_json(v: &CampaignView) -> Result<Value, Problem> {
    let mut out = to_json(&v.campaign)?;
    if let Some(o) = out.as_object_mut() {
        o.insert("items_total".into(), json!(v.progress.items));
        o.insert("items_decided".into(), json!(v.progress.decided));
    }
    Ok(out)
}

/// `POST /v1/review/campaigns`: the admin and auditors.
pub async fn create_campaign(
    State(s): State<AppState>,
    Authed(c): Authed,
    StrictJson(body): StrictJson<NewCampaign>,
) -> Result<Response, Problem> {
    let deadline = time_param("deadline", Some(&body.deadline))?
        .ok_or_else(|| Problem::bad_input("deadline must be an RFC 3339 time"))?;
    let default: CampaignDefault =
        body.default.parse().map_err(|_| Problem::bad_input("default must be keep or revoke"))?;
    let (campaign, items) = s.mandate.create_campaign(c, body.scope, deadline, default).await?;
    let view = CampaignView { campaign, progress: CampaignProgress { items: items as u64, decided: 0 } };
    Ok(created(campaign_json(&view)?))
}

/// `GET /v1/review/campaigns?status=&limit=&cursor=`.
pub async fn list_campaigns(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = query(raw.as_deref(), &["status", "limit", "cursor"])?;
    let query = CampaignQuery {
        status: named::<CampaignStatus>("status", q.get("status"), "open, closed")?,
        before: after::<CampaignId>("campaigns", q.get("cursor"))?,
        limit: limit(&q)?,
    };
    page("campaigns", s.mandate.list_campaigns(c, query).await?, campaign_json)
}

/// `GET /v1/review/campaigns/{id}?limit=&cursor=`: the campaign with a
/// page of its items (`items`, `next_cursor`).
pub async fn get_campaign(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
    RawQuery(rawq): RawQuery,
) -> Result<Response, Problem> {
    let q = query(rawq.as_deref(), &["limit", "cursor"])?;
    let campaign = id::<CampaignId>(&raw)?;
    let view = s.mandate.get_campaign(c, campaign).await?;
    let items = ReviewItemQuery {
        campaign: Some(campaign),
        after: after::<ReviewItemId>("items", q.get("cursor"))?,
        limit: limit(&q)?,
        ..ReviewItemQuery::default()
    };
    let page = s.mandate.list_review_items(c, items).await?;
    let mut out = campaign_json(&view)?;
    if let Some(o) = out.as_object_mut() {
        o.insert("items".into(), Value::Array(page.items.iter().map(to_json).collect::<Result<_, _>>()?));
        o.insert("next_cursor".into(), json!(page.next.map(|id| cursor("items", id))));
    }
    Ok(Json(out).into_response())
}

/// `GET /v1/review/items?assignee=me|usr_…&campaign=&status=open|all&limit=&cursor=`:
/// a person (with their own API token) lists the items assigned to them;
/// the admin and auditors any. `status=open` (the default) keeps the
/// undecided items of open campaigns.
pub async fn list_items(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = query(raw.as_deref(), &["assignee", "campaign", "status", "limit", "cursor"])?;
    let assignee = match q.get("assignee").map(String::as_str) {
        None => None,
        Some("me") => match c {
            Caller::User(u) | Caller::ConsoleAdmin(u) => Some(u),
            Caller::Admin => return Err(Problem::bad_input("assignee=me names a person: the admin token is none")),
        },
        Some(other) => Some(id::<UserId>(other)?),
    };
    let open = match q.get("status").map(String::as_str) {
        None | Some("open") => true,
        Some("all") => false,
        Some(_) => return Err(Problem::bad_input("status must be open or all")),
    };
    let query = ReviewItemQuery {
        campaign: parsed::<CampaignId>("campaign", q.get("campaign"))?,
        assignee,
        undecided: open,
        open,
        after: after::<ReviewItemId>("items", q.get("cursor"))?,
        limit: limit(&q)?,
    };
    page("items", s.mandate.list_review_items(c, query).await?, to_json)
}

/// `POST /v1/review/items/{id}/decide`: applied at once; the answer says
/// what the cascade reached.
pub async fn decide_item(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(raw): Path<String>,
    StrictJson(body): StrictJson<DecideBody>,
) -> Result<Response, Problem> {
    let decision: Decision =
        body.decision.parse().map_err(|_| Problem::bad_input("decision must be keep, narrow or revoke"))?;
    let done = s.mandate.decide_review_item(c, id::<ReviewItemId>(&raw)?, decision, body.scopes).await?;
    let mut out = to_json(&done.item)?;
    if let Some(o) = out.as_object_mut() {
        o.insert("revoked_tokens".into(), json!(done.tokens));
        o.insert("revoked_grants".into(), json!(done.grants));
    }
    Ok(Json(out).into_response())
}

/// `GET /v1/review/lapsed?since=&limit=&cursor=` (ADR 0036): the grants
/// housekeeping reported lapsed, newest report first, for the admin and
/// auditors. The cursor is opaque: base64url of `lapsed:`, the report time
/// in Unix nanoseconds and the grant id.
pub async fn lapsed(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = crate::delegation::query(raw.as_deref(), &["since", "limit", "cursor"])?;
    let since = q
        .get("since")
        .map(|v| {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).map_err(|_| {
                Problem::bad_input("since must be an RFC 3339 time, such as 2026-11-23T10:00:00Z".to_owned())
            })
        })
        .transpose()?;
    let limit = mandate_core::inventory::page_size(crate::delegation::parsed::<u32>("limit", q.get("limit"))?)?;
    let before = q.get("cursor").map(String::as_str).map(lapsed_cursor).transpose()?;
    let page = s.mandate.lapsed_grants(c, LapsedQuery { since, before, limit }).await?;
    let now = s.mandate.now();
    let items = page.items.iter().map(|g| crate::delegation::grant_json(g, now)).collect::<Result<Vec<_>, _>>()?;
    let next = page.next.map(|(at, id)| URL_SAFE_NO_PAD.encode(format!("lapsed:{}:{id}", at.unix_timestamp_nanos())));
    Ok(Json(json!({ "items": items, "next_cursor": next })).into_response())
}

/// The (report time, grant id) a lapse report cursor continues below.
fn lapsed_cursor(raw: &str) -> Result<(time::OffsetDateTime, GrantId), Problem> {
    let bad = || Problem::bad_input("cursor is malformed or belongs to another list");
    if raw.len() > 128 {
        return Err(bad());
    }
    let text = URL_SAFE_NO_PAD.decode(raw).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad)?;
    let rest = text.strip_prefix("lapsed:").ok_or_else(bad)?;
    let (at, id) = rest.split_once(':').ok_or_else(bad)?;
    let at = at
        .parse::<i128>()
        .ok()
        .and_then(|n| time::OffsetDateTime::from_unix_timestamp_nanos(n).ok())
        .ok_or_else(bad)?;
    Ok((at, id.parse::<GrantId>().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lapse_cursor_reads_back_and_refuses_others() -> Result<(), Problem> {
        let id: GrantId = "grt_01J00000000000000000000000".parse().map_err(|_| Problem::bad_input("id"))?;
        let at = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let c = URL_SAFE_NO_PAD.encode(format!("lapsed:{}:{id}", at.unix_timestamp_nanos()));
        assert_eq!(lapsed_cursor(&c)?, (at, id));
        assert!(lapsed_cursor(&URL_SAFE_NO_PAD.encode(format!("grants:{id}"))).is_err(), "another list's");
        assert!(lapsed_cursor("not base64!").is_err());
        assert!(lapsed_cursor(&URL_SAFE_NO_PAD.encode("lapsed:x:grt_nope")).is_err());
        Ok(())
    }
}
