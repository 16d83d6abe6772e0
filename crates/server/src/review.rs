//! The access review (DESIGN §12): `GET /v1/review`, and the lapse report
//! `GET /v1/review/lapsed` (ADR 0036).

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_core::review::{MAX_DAYS, ThresholdOverrides};
use mandate_core::store::LapsedQuery;
use mandate_model::GrantId;
use serde_json::json;

use crate::AppState;
use crate::admin::Authed;
use crate::error::Problem;

/// `GET /v1/review?stale_days=&unused_days=&expiring_days=`: every finding,
/// for the admin and auditors. Each threshold is 0 (now) to 3650 days.
pub async fn findings(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let mut o = ThresholdOverrides::default();
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let slot = match k.as_ref() {
            "stale_days" => &mut o.stale_days,
            "unused_days" => &mut o.unused_days,
            "expiring_days" => &mut o.expiring_days,
            other => {
                let name: String = other.chars().take(64).collect();
                return Err(Problem::bad_input(format!(
                    "unknown parameter {name:?}; known: stale_days, unused_days, expiring_days"
                )));
            }
        };
        if seen.iter().any(|n| *n == k) {
            return Err(Problem::bad_input(format!("parameter {k} given twice")));
        }
        let days = v
            .parse::<u32>()
            .ok()
            .filter(|d| *d <= MAX_DAYS)
            .ok_or_else(|| Problem::bad_input(format!("{k} must be a whole number of days, 0 to {MAX_DAYS}")))?;
        *slot = Some(days);
        seen.push(k.into_owned());
    }
    let findings = s.mandate.review(c, o).await?;
    Ok(Json(json!({ "findings": findings })).into_response())
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
