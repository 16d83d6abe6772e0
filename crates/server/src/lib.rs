//! Mandate's HTTP server: OAuth endpoints, the administration API and
//! operations endpoints, on axum.

mod admin;
mod audit;
pub mod conn;
mod cors;
mod delegation;
pub mod edge;
pub mod error;
pub mod extract;
pub mod fetch;
pub mod grant;
mod inventory;
pub mod notify;
mod oauth;
pub mod openapi;
mod ops;
mod policies;
mod review;
pub mod scim;
pub mod ssf;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, header};
use axum::routing::{any, get, post};
use mandate_core::Mandate;
use tower_http::set_header::SetResponseHeaderLayer;

/// Largest request body, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest body of `PUT /v1/policies`.
pub const MAX_POLICY_BODY: usize = mandate_policy::MAX_POLICY_TEXT + 1024 * 1024;

/// What every handler can reach. One `Arc`: axum clones the state for
/// every request, and three reference counts cloned and dropped per
/// request were 1.4-2.3% of the token endpoint's CPU (issue 19).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub mandate: Arc<Mandate>,
    /// Connection limits, client addresses and rate limits.
    pub edge: Arc<edge::Edge>,
    /// The upstream OpenID Connect providers' client, when any is configured.
    pub upstreams: Option<Arc<web::upstream::Upstreams>>,
}

impl AppState {
    /// The service with the default edge (limits on, no trusted proxies).
    pub fn new(mandate: Arc<Mandate>) -> Self {
        Self::with_edge(mandate, edge::EdgeConfig::default())
    }

    pub fn with_edge(mandate: Arc<Mandate>, config: edge::EdgeConfig) -> Self {
        let edge = edge::Edge::new(config);
        mandate.set_client_gate(edge.clone());
        // CIBA ping and push callbacks go out through the guarded fetcher.
        match notify::HttpCallbacks::new(mandate.config().dev_loopback_fetch) {
            Ok(c) => mandate.set_callback_sender(Arc::new(c)),
            Err(e) => tracing::error!(error = %e, "the CIBA callback client could not be built: ping and push are off"),
        }
        // Shared Signals pushes too.
        match notify::HttpSetPusher::new(mandate.config().dev_loopback_fetch) {
            Ok(p) => mandate.set_set_pusher(Arc::new(p)),
            Err(e) => tracing::error!(error = %e, "the SET push client could not be built: push streams are off"),
        }
        let upstreams = if mandate.config().upstream_oidc.is_empty() {
            None
        } else {
            match web::upstream::Upstreams::new(mandate.config().dev_loopback_fetch, &mandate.config().upstream_oidc) {
                Ok(u) => Some(Arc::new(u)),
                Err(e) => {
                    tracing::error!(error = %e, "the upstream identity providers' HTTP client could not be built");
                    None
                }
            }
        };
        Self(Arc::new(Shared { mandate, edge, upstreams }))
    }
}

/// The most bytes of client metadata `POST /oauth/register` reads.
const REGISTRATION_BODY_LIMIT: usize = 64 * 1024;

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let limited = axum::middleware::from_fn_with_state(state.clone(), edge::limit_by_address);
    // Endpoints that take credentials: limited per client address. Those a
    // browser-based client calls answer cross-origin requests too.
    let oauth_limited = Router::new()
        .route("/oauth/token", post(oauth::token).options(cors::no_content))
        .route("/oauth/introspect", post(oauth::introspect).options(cors::no_content))
        .route("/oauth/revoke", post(oauth::revoke).options(cors::no_content));
    // RFC 7591 registration, only when it is on; bodies of client metadata
    // are small.
    let oauth_limited = if state.mandate.dynamic_registration_enabled() {
        oauth_limited.route(
            "/oauth/register",
            post(oauth::register)
                .options(cors::no_content)
                .layer(axum::extract::DefaultBodyLimit::max(REGISTRATION_BODY_LIMIT)),
        )
    } else {
        oauth_limited
    };
    let oauth_limited = oauth_limited
        .route_layer(limited.clone())
        .layer(axum::middleware::from_fn(cors::cors))
        .route("/oauth/bc-authorize", post(oauth::bc_authorize).route_layer(limited.clone()));
    let oauth = Router::new()
        .route("/.well-known/oauth-authorization-server", get(oauth::metadata).options(cors::no_content))
        .route("/jwks.json", get(oauth::jwks).options(cors::no_content))
        .route("/statuslists/{n}", get(oauth::status_list).options(cors::no_content))
        .layer(axum::middleware::from_fn(cors::cors));
    // The admin API's routes come from the same table as its OpenAPI
    // document (openapi.rs), so that the two cannot drift apart.
    let admin = openapi::admin_routes()
        .into_iter()
        .fold(Router::new(), |r, (path, methods)| r.route(path, methods))
        .route_layer(limited);
    // Resource servers' decisions: authenticated, high volume by design;
    // not limited per address.
    let checks = openapi::check_routes()
        .into_iter()
        .fold(Router::new(), |r, (path, methods)| r.route(path, methods))
        .route("/openapi.json", get(openapi::serve));
    // SCIM provisioning (DESIGN §10), limited per address like the admin API.
    let scim = Router::new()
        .route("/scim/v2/ServiceProviderConfig", get(scim::service_provider_config))
        .route("/scim/v2/ResourceTypes", get(scim::resource_types))
        .route("/scim/v2/ResourceTypes/{id}", get(scim::resource_type))
        .route("/scim/v2/Schemas", get(scim::schemas))
        .route("/scim/v2/Schemas/{id}", get(scim::schema))
        .route("/scim/v2/Users", get(scim::list_users).post(scim::create_user))
        .route("/scim/v2/Users/.search", post(scim::search_users))
        .route(
            "/scim/v2/Users/{id}",
            get(scim::get_user).put(scim::replace_user).patch(scim::patch_user).delete(scim::delete_user),
        )
        .route("/scim/v2/Groups", get(scim::list_groups).post(scim::create_group))
        .route("/scim/v2/Groups/.search", post(scim::search_groups))
        .route(
            "/scim/v2/Groups/{id}",
            get(scim::get_group).put(scim::replace_group).patch(scim::patch_group).delete(scim::delete_group),
        )
        .route("/scim/v2/.search", post(scim::search_all))
        .route("/scim/v2/{*rest}", any(scim::not_found))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), edge::limit_by_address));
    // Shared Signals (DESIGN §11): stream management limited per address
    // like the admin API; polling is a receiver's steady traffic.
    let signals = Router::new()
        .route(
            "/ssf/streams",
            post(ssf::create).get(ssf::read).patch(ssf::update).put(ssf::replace).delete(ssf::delete),
        )
        .route("/ssf/status", get(ssf::status).post(ssf::set_status))
        .route("/ssf/verify", post(ssf::verify))
        .route("/ssf/subjects:add", post(ssf::add_subject))
        .route("/ssf/subjects:remove", post(ssf::remove_subject))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), edge::limit_by_address))
        .route("/ssf/poll/{stream_id}", post(ssf::poll))
        .route("/.well-known/ssf-configuration", get(ssf::configuration));
    let ops = Router::new().route("/healthz", get(ops::healthz)).route("/readyz", get(ops::readyz));
    let app = Router::new()
        .merge(oauth_limited)
        .merge(oauth)
        .merge(admin)
        .merge(checks)
        .merge(scim)
        .merge(signals)
        .merge(ops)
        .merge(web::routes(state.clone()));
    // An issuer with a path (`https://host/tenant`): its metadata is at
    // `/.well-known/oauth-authorization-server/tenant` (RFC 8414 §3.1), and
    // every endpoint it advertises is served under the path as well as at
    // the root (where the pages' own links point).
    let app = match issuer_path(&state.mandate.config().issuer) {
        Some(path) => {
            let metadata = Router::new()
                .route(
                    &format!("/.well-known/oauth-authorization-server{path}"),
                    get(oauth::metadata).options(cors::no_content),
                )
                .layer(axum::middleware::from_fn(cors::cors));
            Router::new().merge(metadata).nest(&path, app.clone()).merge(app)
        }
        None => app,
    };
    app.fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.edge.config.connections.body_timeout, conn::body_deadline))
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge::context))
        // The id: the caller's when it passes the screen, else a fresh one;
        // echoed on the response.
        .layer(tower_http::request_id::PropagateRequestIdLayer::new(HeaderName::from_static(ops::REQUEST_ID)))
        .layer(tower_http::request_id::SetRequestIdLayer::new(
            HeaderName::from_static(ops::REQUEST_ID),
            ops::NodeRequestIds,
        ))
        .layer(axum::middleware::from_fn(ops::screen_request_id))
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

/// The path of an issuer like `https://host/tenant` (`/tenant`), if it has
/// one.
fn issuer_path(issuer: &str) -> Option<String> {
    let url = url::Url::parse(issuer).ok()?;
    let path = url.path().trim_end_matches('/');
    (!path.is_empty()).then(|| path.to_owned())
}

/// Prometheus metrics, for a listener of their own (`--metrics-listen`):
/// never on the public one.
pub fn metrics_router() -> Router {
    Router::new().route("/metrics", get(ops::metrics)).fallback(ops::not_found)
}

/// Serves until `shutdown` resolves, then drains open requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    ops::install_metrics();
    let sync = tokio::spawn(background(state.clone()));
    let outbox = tokio::spawn(deliver(state.mandate.clone()));
    let signals = tokio::spawn(push_signals(state.mandate.clone()));
    let limits = state.edge.config.connections;
    let trusted = state.edge.config.trusted_proxies.clone();
    let mandate = state.mandate.clone();
    let app = router(state);
    let result = conn::serve_connections(listener, app, limits, trusted, shutdown).await;
    sync.abort();
    outbox.abort();
    signals.abort();
    // Counts of refusals still being aggregated are written, not lost.
    if let Err(e) = mandate.flush_refusals(true).await {
        tracing::warn!(error = %e, "could not write the counted refusals");
    }
    result
}

/// Serves the metrics router on `listener` until `shutdown` resolves, with
/// a small connection cap and the usual timeouts.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    ops::install_metrics();
    let limits = conn::Limits { max_connections: 64, max_per_address: 16, ..conn::Limits::default() };
    conn::serve_connections(listener, metrics_router(), limits, Vec::new(), shutdown).await
}

/// A task stopped when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows the store's change feed (PostgreSQL `LISTEN/NOTIFY`): a change
/// committed on any node makes this node reload its policies and keys at
/// once. The feed coming back after a loss syncs too, since what was sent
/// while it was down was not heard. Everything else a node caches is
/// stamped with the store epoch and checked on every request.
async fn follow_changes(
    mandate: Arc<Mandate>,
    mut feed: tokio::sync::watch::Receiver<mandate_core::store::ChangeFeed>,
) {
    while feed.changed().await.is_ok() {
        let now = *feed.borrow_and_update();
        metrics::gauge!("mandate_change_feed_listening").set(if now.listening { 1.0 } else { 0.0 });
        if now.listening
            && let Err(e) = mandate.sync_from_store().await
        {
            tracing::warn!(error = %e, "could not sync policies and keys after a change");
        }
    }
}

/// The outbox worker: every second, sends the CIBA callbacks and approver
/// notices that are due (each claimed under a lease, so that nodes sharing
/// a store never send one twice). A pass that sent something is followed
/// at once by another, until nothing is due.
async fn deliver(mandate: Arc<Mandate>) {
    let mut bytes = [0u8; 8];
    if mandate.rng().fill(&mut bytes).is_err() {
        tracing::error!("the outbox worker could not name itself: CIBA callbacks and notices are not sent");
        return;
    }
    let holder = format!("node-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        loop {
            match mandate.deliver_due(&holder).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the outbox could not be worked");
                    break;
                }
            }
        }
    }
}

/// The Shared Signals push worker: pushes due SETs as soon as this node
/// queued some, and every quarter second for those other nodes queued or
/// whose backoff passed. Each stream is claimed under a lease, so nodes
/// sharing a store never push one stream at once.
async fn push_signals(mandate: Arc<Mandate>) {
    let mut bytes = [0u8; 8];
    if mandate.rng().fill(&mut bytes).is_err() {
        tracing::error!("the SET push worker could not name itself: push streams are not worked");
        return;
    }
    let holder = format!("ssf-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(250), mandate.signals_queued().notified()).await;
        loop {
            match mandate.push_due(&holder).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the SET push worker could not work the streams");
                    break;
                }
            }
        }
    }
}

/// Picks up other nodes' policy and key changes, signs audit checkpoints
/// when they are due, writes the counts of aggregated refusals, forgets
/// idle rate-limit entries and purges the replay store.
async fn background(state: AppState) {
    let mandate = state.mandate.clone();
    let feed = mandate.change_feed();
    // Dropped (and so stopped) with this task, which `serve` aborts.
    let _follow = feed.clone().map(|f| AbortOnDrop(tokio::spawn(follow_changes(mandate.clone(), f))));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    let mut last_sync: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        if let Err(e) = mandate.flush_refusals(false).await {
            tracing::warn!(error = %e, "could not write the counted refusals");
        }
        if n.is_multiple_of(10) {
            state.edge.forget_idle();
        }
        // The poll is the fallback: while the change feed listens, other
        // nodes' changes arrive through it, and the poll is a rare safeguard.
        let listening = feed.as_ref().is_some_and(|f| f.borrow().listening);
        let every = if listening { mandate_core::config::SYNC_WHILE_LISTENING } else { mandate.config().sync_interval };
        if n.saturating_sub(last_sync) >= u64::try_from(every).unwrap_or(1) {
            last_sync = n;
            if let Err(e) = mandate.sync_from_store().await {
                tracing::warn!(error = %e, "could not sync policies and keys from the store");
            }
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
        if n.is_multiple_of(REVIEW_GAUGE_EVERY) {
            review_gauges(&mandate).await;
        }
        if n.is_multiple_of(10) {
            cache_gauges(&mandate);
        }
        if n.is_multiple_of(INVENTORY_SAMPLE_EVERY) {
            inventory_gauges(&mandate).await;
        }
    }
}

/// Sets `mandate_cache_entries{cache}`, `mandate_cache_bytes{cache}` and
/// `mandate_cache_budget_bytes{cache}`: how full each per-node cache is
/// against the bytes it may hold. One label per cache, never per record.
/// Also `mandate_token_optimistic_total` and
/// `mandate_token_optimistic_again_total`: token requests decided at an
/// epoch the node did not read, and those run again (decision 0042).
fn cache_gauges(mandate: &mandate_core::Mandate) {
    for c in mandate.cache_fill() {
        metrics::gauge!("mandate_cache_entries", "cache" => c.name).set(c.entries as f64);
        metrics::gauge!("mandate_cache_bytes", "cache" => c.name).set(c.bytes as f64);
        metrics::gauge!("mandate_cache_budget_bytes", "cache" => c.name).set(c.budget as f64);
    }
    let (decided, again) = mandate.optimistic_runs();
    metrics::counter!("mandate_token_optimistic_total").absolute(decided);
    metrics::counter!("mandate_token_optimistic_again_total").absolute(again);
}

/// Seconds between inventory samples (ADR 0035): each tallies every live
/// grant, token and agent, off the hot path, on a read connection.
const INVENTORY_SAMPLE_EVERY: u64 = 300;

/// Samples the inventory (the report's peaks) and sets the owner gauges
/// `mandate_live_{agents,grants,tokens}{owner}` from the same tally.
async fn inventory_gauges(mandate: &mandate_core::Mandate) {
    match mandate.sample_inventory().await {
        Ok(owners) => ops::set_owner_gauges(owners),
        Err(e) => tracing::warn!(error = %e, "the inventory sample for the report and the metrics failed"),
    }
}

/// Refreshes every gauge the background loop refreshes: the review
/// findings and the inventory (with its sample). The loop does this every
/// few minutes; tests and operators' tools may ask at once.
pub async fn refresh_gauges(mandate: &mandate_core::Mandate) {
    cache_gauges(mandate);
    review_gauges(mandate).await;
    inventory_gauges(mandate).await;
}

/// Seconds between refreshes of the review gauges: a whole review reads
/// every live agent and grant (ADR 0033), so not every minute.
const REVIEW_GAUGE_EVERY: u64 = 600;

/// Sets `mandate_review_findings{kind}` from a review at the server's
/// thresholds; one label per finding kind, never per record.
async fn review_gauges(mandate: &mandate_core::Mandate) {
    // Counted a page at a time: the findings are never all held at once.
    match mandate.finding_counts(mandate.config().review).await {
        Ok(counts) => {
            for (kind, n) in counts {
                metrics::gauge!("mandate_review_findings", "kind" => kind.as_str()).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "the access review for the metrics failed"),
    }
}
