//! The gateway: its routes, its clients, and the one handler every request
//! goes through.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_jose::SigningKey;
use mandate_verifier::{METADATA_PATH, RemoteCheck, Verifier, VerifierConfig};

use crate::config::{Config, ConfigError, RouteConfig, RouteKind, load_key};
use crate::error::{GatewayError, RouteHints, render};
use crate::upstream::ExchangedTokens;

/// A route with what it needs at run time.
pub(crate) struct Route {
    pub config: RouteConfig,
    /// Verifies tokens for this route's resource; shares keys, status
    /// lists and the check credentials with every other route's.
    pub verifier: Verifier,
    pub metadata_url: String,
}

impl Route {
    pub(crate) fn hints(&self) -> RouteHints<'_> {
        RouteHints { kind: self.config.kind, metadata_url: &self.metadata_url, scopes: &self.config.scopes }
    }
}

pub(crate) struct Shared {
    /// Longest prefix first, so that the most specific route wins.
    pub routes: Vec<Route>,
    /// Where a person approves a call: the issuer's approvals page.
    pub approval_url: String,
    pub upstream: reqwest::Client,
    pub upstream_timeout: Duration,
    pub max_body_bytes: usize,
    pub exchanged: ExchangedTokens,
}

impl Shared {
    /// The route for a path, and what follows its prefix (empty, or
    /// starting with `/`).
    fn route_for<'p>(&self, path: &'p str) -> Option<(&Route, &'p str)> {
        self.routes.iter().find_map(|r| {
            let rest = path.strip_prefix(r.config.prefix.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((r, rest))
        })
    }
}

/// A gateway, ready to serve. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    config: Arc<Config>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the gateway from its configuration, reading `key_file`.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let key = load_key(&config.key_file)?;
        Self::with_key(config, key)
    }

    /// Builds the gateway with its `private_key_jwt` key given.
    pub fn with_key(config: Config, key: SigningKey) -> Result<Self, ConfigError> {
        let bad = |e: String| ConfigError::Invalid(e);
        let remote = RemoteCheck { client_id: config.client_id.clone(), key: Arc::new(key) };
        let mut first: Option<Verifier> = None;
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let verifier = match &first {
                Some(v) => v.for_audience(r.resource.clone(), r.scopes.clone()).map_err(|e| bad(e.to_string()))?,
                None => {
                    let mut vc = VerifierConfig::new(&config.issuer, &r.resource, &config.public_url);
                    vc.scopes_supported = r.scopes.clone();
                    vc.remote_check = Some(remote.clone());
                    let v = Verifier::new(vc).map_err(|e| bad(e.to_string()))?;
                    first = Some(v.clone());
                    v
                }
            };
            // RFC 9728 §3.1: the well-known path goes before the resource's
            // path, here the route's prefix.
            let metadata_url = format!("{}{METADATA_PATH}{}", config.public_url, r.prefix);
            routes.push(Route { config: r.clone(), verifier, metadata_url });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.config.prefix.len()));
        let upstream = crate::upstream::client().map_err(|e| bad(format!("the upstream HTTP client: {e}")))?;
        let shared = Shared {
            routes,
            approval_url: format!("{}/approvals", config.issuer.trim_end_matches('/')),
            upstream,
            upstream_timeout: config.upstream_timeout,
            max_body_bytes: config.max_body_bytes,
            exchanged: ExchangedTokens::default(),
        };
        Ok(Self { shared: Arc::new(shared), config: Arc::new(config) })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The gateway as an axum router: the metadata documents, and every
    /// route's traffic.
    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.shared.clone())
    }

    /// Serves on `listener` until the future resolves or fails.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix(METADATA_PATH) {
        return metadata(&shared, rest, req.method());
    }
    let Some((route, rest)) = shared.route_for(&path) else {
        return render(&GatewayError::NotFound.into(), None);
    };
    // Browser-based MCP clients call the MCP endpoint from another origin
    // with a bearer token (never cookies): answer their preflight, and let
    // them read the challenge and the session id.
    let cors = route.config.kind == RouteKind::Mcp && req.headers().contains_key(header::ORIGIN);
    if route.config.kind == RouteKind::Mcp && req.method() == Method::OPTIONS && rest.is_empty() {
        return cors_headers(StatusCode::NO_CONTENT.into_response(), true);
    }
    let outcome = match route.config.kind {
        RouteKind::Mcp => crate::mcp::handle(&shared, route, rest, req).await,
        RouteKind::Http => crate::http::handle(&shared, route, rest, req).await,
    };
    let resp = outcome.unwrap_or_else(|refused| {
        // A refusal may leave the request body unread, and then the
        // connection cannot carry another request: say so (RFC 9112 §9.6).
        let mut resp = render(&refused, Some(route.hints()));
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    });
    if cors { cors_headers(resp, false) } else { resp }
}

/// CORS for an MCP endpoint: any origin, no credentials.
fn cors_headers(mut resp: Response, preflight: bool) -> Response {
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("WWW-Authenticate, Mcp-Session-Id, DPoP-Nonce"),
    );
    if preflight {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, DELETE, OPTIONS"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "Authorization, Content-Type, Accept, DPoP, MCP-Protocol-Version, Mcp-Session-Id, Last-Event-ID, Mcp-Method, Mcp-Name",
            ),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

/// RFC 9728 metadata of the route whose prefix follows the well-known
/// path. Readable from any origin: browser-based MCP clients fetch it.
fn metadata(shared: &Shared, rest: &str, method: &Method) -> Response {
    let Some(route) = shared.routes.iter().find(|r| r.config.prefix == rest) else {
        return render(&GatewayError::NotFound.into(), None);
    };
    let mut resp = match *method {
        Method::GET | Method::HEAD => axum::Json(route.verifier.metadata()).into_response(),
        Method::OPTIONS => StatusCode::NO_CONTENT.into_response(),
        _ => return render(&GatewayError::MethodNotAllowed { allow: "GET, HEAD, OPTIONS" }.into(), None),
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, OPTIONS"));
    resp
}

/// Reads a request body of at most `limit` bytes (413 beyond, before
/// reading when `Content-Length` says so).
pub(crate) async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, GatewayError> {
    use http_body::Body as _;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::TooLarge { limit });
    }
    let mut body = std::pin::pin!(body);
    let mut buf = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| GatewayError::BodyRead(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(GatewayError::TooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.into())
}

/// Whether `headers` say the body is JSON (`application/json`, any
/// parameters).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| m.eq_ignore_ascii_case("application/json"))
}

pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| m.eq_ignore_ascii_case("text/event-stream"))
}

fn media_type(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or_default().trim())
}
