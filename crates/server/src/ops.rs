//! Health, readiness, Prometheus metrics, request accounting.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::AppState;
use crate::error::Problem;

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The owner gauges of the last inventory sample (ADR 0035), rendered with
/// every scrape. Kept here rather than in the recorder so that an owner who
/// leaves the top N leaves the output too: the series are bounded to N + 1.
static OWNER_GAUGES: std::sync::RwLock<Vec<mandate_core::report::OwnerGauge>> = std::sync::RwLock::new(Vec::new());

/// Replaces the owner gauges.
pub(crate) fn set_owner_gauges(owners: Vec<mandate_core::report::OwnerGauge>) {
    match OWNER_GAUGES.write() {
        Ok(mut g) => *g = owners,
        Err(p) => *p.into_inner() = owners,
    }
}

/// A gauge of the owner gauges: its name, its help, and its value of an owner.
type Series = (&'static str, &'static str, fn(&mandate_core::report::OwnerGauge) -> u64);

/// The owner gauges in the Prometheus text format.
fn owner_gauges() -> String {
    use std::fmt::Write;
    let owners = match OWNER_GAUGES.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    if owners.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let series: [Series; 3] = [
        ("mandate_live_agents", "Agents not retired nor expired, by owner (top N, then other)", |g| g.agents),
        ("mandate_live_grants", "Grants active and unexpired, by their agent's owner (top N, then other)", |g| {
            g.grants
        }),
        ("mandate_live_tokens", "Tokens unrevoked and unexpired, by their agent's owner (top N, then other)", |g| {
            g.tokens
        }),
    ];
    for (name, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for g in &owners {
            // Owner labels are user ids or "other": no quoting needed, but
            // escaped as the format asks all the same.
            let owner = g.owner.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = writeln!(out, "{name}{{owner=\"{owner}\"}} {}", value(g));
        }
    }
    out
}

/// Installs the process-wide Prometheus recorder once.
pub fn install_metrics() -> &'static PrometheusHandle {
    METRICS.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed");
        }
        handle
    })
}

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store answers and a signing key is loaded.
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.mandate.sync_from_store().await {
        Ok(()) => "ready".into_response(),
        Err(e) => Problem::from(e).into_response(),
    }
}

pub async fn metrics() -> Response {
    let handle = install_metrics();
    handle.run_upkeep();
    let mut text = handle.render();
    text.push_str(&owner_gauges());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this endpoint does not take that method",
    )
}

pub async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", "no such endpoint")
}

static NEXT_REQUEST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Fresh request ids for tower-http's request-id layer: unique within this
/// process, and the node's start time keeps ids of different processes
/// apart.
#[derive(Clone, Copy, Default)]
pub(crate) struct NodeRequestIds;

impl tower_http::request_id::MakeRequestId for NodeRequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<tower_http::request_id::RequestId> {
        let id = format!("{:x}-{}", *PROCESS_TAG, NEXT_REQUEST.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        axum::http::HeaderValue::from_str(&id).ok().map(tower_http::request_id::RequestId::new)
    }
}

/// Keeps a caller's `X-Request-Id` only when it is short printable ASCII;
/// any other is dropped, so that the request-id layer gives a fresh one.
pub(crate) async fn screen_request_id(mut req: Request, next: Next) -> Response {
    let valid = req.headers().get_all(REQUEST_ID).iter().count() == 1
        && req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            !v.is_empty() && v.len() <= mandate_core::audit::MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic())
        });
    if !valid {
        req.headers_mut().remove(REQUEST_ID);
    }
    next.run(req).await
}

/// The request-id header, read and echoed.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// A per-process tag for request ids: the process id and start time.
static PROCESS_TAG: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    t ^ (u64::from(std::process::id()) << 48)
});

/// Counts requests and their latency by route and status.
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("mandate_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("mandate_http_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}
