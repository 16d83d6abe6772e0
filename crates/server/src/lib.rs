//! Mandate's HTTP server: OAuth endpoints, the administration API and
//! operations endpoints, on axum.

mod admin;
mod audit;
mod delegation;
pub mod error;
pub mod extract;
mod oauth;
mod ops;
mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, header};
use axum::routing::{get, post, put};
use mandate_core::Mandate;
use tower_http::set_header::SetResponseHeaderLayer;

/// Largest request body, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest body of `PUT /v1/policies`.
pub const MAX_POLICY_BODY: usize = mandate_policy::MAX_POLICY_TEXT + 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub mandate: Arc<Mandate>,
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let oauth = Router::new()
        .route("/.well-known/oauth-authorization-server", get(oauth::metadata))
        .route("/.well-known/openid-configuration", get(oauth::metadata))
        .route("/jwks.json", get(oauth::jwks))
        .route("/oauth/token", post(oauth::token))
        .route("/oauth/bc-authorize", post(oauth::bc_authorize))
        .route("/oauth/introspect", post(oauth::introspect))
        .route("/oauth/revoke", post(oauth::revoke))
        .route("/statuslists/{n}", get(oauth::status_list));
    let admin = Router::new()
        .route("/v1/users", post(admin::create_user))
        .route("/v1/users/{id}", get(admin::get_user).patch(admin::update_user))
        .route("/v1/users/{id}/tokens", post(admin::create_user_token).get(admin::list_user_tokens))
        .route("/v1/users/{id}/tokens/{token}/revoke", post(admin::revoke_user_token))
        .route("/v1/agents", post(admin::create_agent))
        .route("/v1/agents/{id}", get(admin::get_agent))
        .route("/v1/agents/{id}/{op}", post(admin::agent_lifecycle))
        .route("/v1/resources", post(admin::create_resource))
        .route("/v1/resources/{id}", get(admin::get_resource))
        // Policy sets grow with the agents they govern: this one route takes
        // up to the policy text limit (plus JSON quoting).
        .route(
            "/v1/policies",
            put(admin::put_policies).layer(DefaultBodyLimit::max(MAX_POLICY_BODY)).get(admin::get_policies),
        )
        .route("/v1/keys/rotate", post(admin::rotate_keys))
        .route("/v1/grants", get(delegation::list_grants))
        .route("/v1/grants/{id}/revoke", post(delegation::revoke_grant))
        .route("/v1/approvals", get(delegation::list_approvals))
        .route("/v1/approvals/{id}/{decision}", post(delegation::decide_approval))
        .route("/v1/check", post(delegation::check))
        .route("/access/v1/evaluation", post(delegation::evaluation))
        .route("/v1/audit", get(audit::query))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/audit/checkpoints", get(audit::checkpoints))
        .route("/v1/audit/keys", get(audit::keys))
        .route("/v1/audit/trace/{id}", get(audit::trace));
    let ops = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics));
    Router::new()
        .merge(oauth)
        .merge(admin)
        .merge(ops)
        .merge(web::routes())
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(axum::middleware::from_fn(ops::request_id))
        .layer(axum::middleware::from_fn(ops::track))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // RFC 9700 §4.16 (clickjacking) and content sniffing.
        .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        ))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then drains open requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    ops::install_metrics();
    let sync = tokio::spawn(background(state.mandate.clone()));
    let app = router(state);
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    sync.abort();
    result
}

/// Picks up other nodes' policy and key changes, signs audit checkpoints
/// when they are due, and purges the replay store.
async fn background(mandate: Arc<Mandate>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        if let Err(e) = mandate.sync_from_store().await {
            tracing::warn!(error = %e, "could not sync policies and keys from the store");
        }
        match mandate.checkpoint_if_due().await {
            Ok(Some(cp)) => tracing::debug!(seq = cp.seq, "signed an audit checkpoint"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not sign an audit checkpoint"),
        }
        if n.is_multiple_of(60)
            && let Err(e) = mandate.housekeeping().await
        {
            tracing::warn!(error = %e, "housekeeping failed");
        }
    }
}
