//! Cross-origin access for browser-based OAuth clients (MCP Inspector, web
//! agents): discovery, the JWKS, status lists, and the token, revocation
//! and introspection endpoints answer any origin, without credentials
//! (DESIGN §9). Pages and the admin API never do: a cookie or an admin
//! token must not be usable from another site.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tower::{Layer, ServiceExt};
use tower_http::cors::{Any, CorsLayer};

/// `*`, no credentials; the request headers OAuth and MCP clients send, and
/// the response headers they read.
pub fn layer() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("dpop"),
            HeaderName::from_static("mcp-protocol-version"),
        ])
        .expose_headers([HeaderName::from_static("dpop-nonce"), header::WWW_AUTHENTICATE])
        .max_age(std::time::Duration::from_secs(600))
}

/// A bare `OPTIONS` on these endpoints (one that is not a preflight).
pub async fn no_content() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// The CORS middleware of these endpoints. A request without `Origin` (a
/// server-side client: agents, resource servers) passes straight through,
/// so the token endpoint pays nothing for it. `OPTIONS` answers 204 No
/// Content: a preflight, which the CORS layer answers with 200, as well as
/// a bare one.
pub async fn cors(req: Request, next: Next) -> Response {
    let options = req.method() == Method::OPTIONS;
    if !options && !req.headers().contains_key(header::ORIGIN) {
        // The answer differs with Origin: a shared cache must not hand this
        // one to a browser.
        let mut resp = next.run(req).await;
        resp.headers_mut().append(header::VARY, HeaderValue::from_static("origin"));
        return resp;
    }
    let mut resp = match layer().layer(next).oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    if options && resp.status() == StatusCode::OK {
        *resp.status_mut() = StatusCode::NO_CONTENT;
        *resp.body_mut() = axum::body::Body::empty();
        resp.headers_mut().remove(header::CONTENT_TYPE);
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    resp
}
