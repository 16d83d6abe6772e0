//! The web pages for people (DESIGN §7): sign-in, the approvals inbox,
//! grants, agents and the audit trail with its delegation trees. They are
//! rendered on the server. A small script (`/static/app.js`) makes forms
//! update their list in place, and every form also works without it.
//!
//! Sessions live in a cookie (`HttpOnly`, `SameSite=Lax`, `Secure` and the
//! `__Host-` prefix when the issuer is https). Every form carries the
//! session's CSRF token; the sign-in form carries a token bound to a
//! short-lived cookie (double submit). The session cookie is never read by
//! the API, and the API's tokens never sign anyone in.

mod authorize;
mod console;
mod html;
mod pages;
pub mod upstream;
mod views;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::cookie::{Cookie, SameSite};
use mandate_core::session::Session;

use crate::AppState;

/// Every page's Content-Security-Policy: scripts and styles from this
/// origin only, no inline code, no framing, forms only to this origin.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub fn routes(state: AppState) -> Router<AppState> {
    // Sign-in takes credentials, and an authorization request may make
    // Mandate fetch a client's metadata document: limited per client
    // address, like the API.
    let sign_in = Router::new()
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/login/oidc/{id}", get(upstream::start))
        .route("/login/oidc/{id}/callback", get(upstream::callback))
        .route("/oauth/authorize", get(authorize::authorize_page).post(authorize::authorize_decision))
        .route_layer(axum::middleware::from_fn_with_state(state, crate::edge::limit_by_address));
    Router::new()
        .merge(sign_in)
        .route("/", get(|| async { Redirect::to("/approvals") }))
        .route("/logout", post(pages::logout))
        .route("/approvals", get(pages::approvals))
        .route("/approvals/{id}/{decision}", post(pages::decide))
        .route("/grants", get(pages::grants))
        .route("/grants/{id}/revoke", post(pages::revoke_grant))
        .route("/grants/{id}/reapprove", post(pages::reapprove_grant))
        .route("/agents", get(pages::agents))
        .route("/agents/{id}/{op}", post(pages::agent_op))
        .route("/review", get(pages::review))
        .route("/review/items/{id}/decide", post(pages::decide_review_item))
        .route("/review/campaigns", post(pages::start_campaign))
        .route("/audit", get(pages::audit))
        .route("/audit/trace/{id}", get(pages::trace))
        // The admin console (ADR 0037); a policy set may be as long as on
        // the API, and a form encodes it at most three times as long.
        .route("/console", get(console::index))
        .route("/console/inventory", get(console::inventory))
        .route("/console/inventory/{list}", get(console::inventory_list))
        .route("/console/agents/{id}", get(console::agent))
        .route(
            "/console/policies",
            get(console::policies)
                .post(console::policies_post)
                .layer(axum::extract::DefaultBodyLimit::max(3 * crate::MAX_POLICY_BODY)),
        )
        .route("/console/policies/versions/{n}/diff", get(console::diff))
        .route("/console/policies/versions/{n}/restore", post(console::restore))
        .route("/console/keys", get(console::keys))
        .route("/console/keys/rotate", post(console::rotate))
        .route("/static/app.css", get(|| async { asset("text/css", include_str!("app.css")) }))
        .route("/static/app.js", get(|| async { asset("text/javascript", include_str!("app.js")) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    resp
}

/// An HTML response with the page headers.
pub(crate) fn page(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// Whether the issuer is https: cookies are then `Secure` and
/// `__Host-` prefixed.
pub(crate) fn https(state: &AppState) -> bool {
    state.mandate.config().issuer.starts_with("https://")
}

/// The session cookie's name: `__Host-` prefixed (Secure, path `/`, no
/// domain) when the issuer is https.
pub(crate) fn cookie_name(secure: bool) -> &'static str {
    if secure { "__Host-mandate_session" } else { "mandate_session" }
}

/// The cookie that marks a browser its person signed in with before.
pub(crate) fn known_cookie_name(secure: bool) -> &'static str {
    if secure { "__Host-mandate_known" } else { "mandate_known" }
}

pub(crate) fn login_cookie_name(secure: bool) -> &'static str {
    if secure { "__Host-mandate_login" } else { "mandate_login" }
}

/// A cookie of the web pages: `Path=/`, `HttpOnly`, `SameSite=Lax`, for
/// `max_age` seconds, and `Secure` when the issuer is https.
pub(crate) fn session_cookie(name: &'static str, value: String, max_age: i64, secure: bool) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::seconds(max_age))
        .secure(secure)
        .build()
}

/// The cookie `name`, emptied and expired.
pub(crate) fn expired_cookie(name: &'static str, secure: bool) -> Cookie<'static> {
    session_cookie(name, String::new(), 0, secure)
}

/// The value of cookie `name`, if the request sent exactly one. A repeated
/// name could be a cookie planted beside the real one (by a sibling
/// domain, say), and no one can tell which is which, so it counts as none.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .filter(|c| c.name() == name)
        .filter_map(|c| c.name_raw().and(c.value_raw()));
    let first = found.next();
    if found.next().is_some() { None } else { first }
}

/// The client's address (after trusted proxies), for the sign-in limits.
pub(crate) fn client_addr(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<crate::edge::ClientAddr>()
        .map(|c| c.0)
        .or_else(|| extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip()))
}

/// An error as a page (for the edge's refusals in front of pages).
pub(crate) fn error_response(e: &mandate_core::Error) -> Response {
    pages::error_page(e)
}

/// A signed-in person. Without a live session, pages redirect to
/// `/login?next=<this page>`.
pub(crate) struct Signed {
    pub session: Session,
    pub secret: String,
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let secure = https(state);
        let to_login = || {
            // After a form post, come back to the page the form was on, not
            // to the post's own address (which answers posts only).
            let page_of_post;
            let next = if parts.method == axum::http::Method::GET {
                parts.uri.path_and_query().map_or("/", |p| p.as_str())
            } else {
                page_of_post = match parts.uri.path().split('/').nth(1) {
                    Some(p @ ("approvals" | "grants" | "agents")) => format!("/{p}"),
                    Some("console") => match parts.uri.path().split('/').nth(2) {
                        Some(p @ ("policies" | "keys")) => format!("/console/{p}"),
                        _ => "/console".to_owned(),
                    },
                    _ => "/".to_owned(),
                };
                page_of_post.as_str()
            };
            let next = if next.starts_with('/') && !next.starts_with("//") { next } else { "/" };
            Redirect::to(&format!("/login?next={}", html::url_encode(next))).into_response()
        };
        let Some(secret) = cookie(&parts.headers, cookie_name(secure)) else { return Err(to_login()) };
        match state.mandate.session(secret).await {
            Ok(Some(session)) => Ok(Signed { session, secret: secret.to_owned() }),
            Ok(None) => Err(to_login()),
            Err(e) => Err(pages::error_page(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_host_prefixed_and_secure_on_https() {
        let c = session_cookie(cookie_name(true), "v".into(), 60, true).to_string();
        assert_eq!(c, "__Host-mandate_session=v; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=60");
        let c = session_cookie(cookie_name(false), "v".into(), 60, false).to_string();
        assert_eq!(c, "mandate_session=v; HttpOnly; SameSite=Lax; Path=/; Max-Age=60");
        let c = expired_cookie(login_cookie_name(false), false).to_string();
        assert_eq!(c, "mandate_login=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0");
    }

    #[test]
    fn a_repeated_cookie_is_no_cookie() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; mandate_session=x"));
        assert_eq!(cookie(&h, "mandate_session"), Some("x"));
        h.append(header::COOKIE, HeaderValue::from_static("mandate_session=y"));
        assert_eq!(cookie(&h, "mandate_session"), None);
    }
}
