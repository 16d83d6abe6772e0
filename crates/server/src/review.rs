//! The access review (DESIGN §12): `GET /v1/review`.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use mandate_core::review::{MAX_DAYS, ThresholdOverrides};
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
