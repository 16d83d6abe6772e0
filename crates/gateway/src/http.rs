//! A plain HTTP route: the token is verified for the route's resource
//! (signature, issuer, audience, lifetime, DPoP, status list), then the
//! request is forwarded under the prefix's upstream path. No per-request
//! decision is asked of Mandate: the upstream enforces scopes on the token
//! it receives (an exchanged one), or trusts the gateway for everything a
//! valid token reaches.

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use mandate_verifier::Scheme;
use serde_json::Value;
use url::Url;

use crate::config::UpstreamToken;
use crate::error::{GatewayError, Refused};
use crate::gateway::{Route, Shared, read_body};
use crate::stream::passthrough;
use crate::upstream::{http_request_headers, http_response_headers, send};

pub(crate) async fn handle(shared: &Shared, route: &Route, rest: &str, req: Request) -> Result<Response, Refused> {
    if matches!(req.method(), &Method::CONNECT | &Method::TRACE) {
        return Err(GatewayError::MethodNotAllowed { allow: "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS" }.into());
    }
    let url = upstream_url(&route.config.upstream, rest, req.uri().query())?;
    let (parts, body) = req.into_parts();
    let scheme = Scheme::of(&parts.headers);
    let auth =
        route.verifier.authenticate(&parts).await.map_err(|e| Refused { error: e.into(), id: Value::Null, scheme })?;
    let bytes = read_body(body, &parts.headers, shared.max_body_bytes).await?;
    let bearer = match &route.config.upstream_token {
        UpstreamToken::None => None,
        UpstreamToken::Exchange { resource } => {
            Some(shared.exchanged.get(&route.verifier, &auth.token, resource).await?)
        }
    };
    let has_body = !bytes.is_empty() || parts.headers.contains_key(axum::http::header::CONTENT_LENGTH);
    let resp = send(
        &shared.upstream,
        shared.upstream_timeout,
        parts.method.clone(),
        url,
        http_request_headers(&parts.headers),
        bearer.as_deref(),
        has_body.then_some(bytes),
    )
    .await?;
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED {
        return Err(GatewayError::UpstreamAnswer("the upstream refused the gateway's credentials (401)".into()).into());
    }
    let headers = http_response_headers(resp.headers());
    let mut out = Response::new(passthrough(resp));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// The upstream URL for what follows the prefix. Dot segments (also
/// percent-encoded) and backslashes are refused: the URL parser would
/// resolve them and climb out of the upstream's path.
fn upstream_url(base: &Url, rest: &str, query: Option<&str>) -> Result<Url, GatewayError> {
    let dot = |seg: &str| {
        let s = seg.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    };
    if rest.contains('\\') || rest.split('/').any(dot) || rest.to_ascii_lowercase().contains("%2f") {
        return Err(GatewayError::InvalidRequest("the path has dot segments or escaped separators".into()));
    }
    let mut target = format!("{}{rest}", base.as_str().trim_end_matches('/'));
    if rest.is_empty() && base.path().ends_with('/') {
        target.push('/');
    }
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    let url = Url::parse(&target).map_err(|e| GatewayError::InvalidRequest(format!("the path: {e}")))?;
    // The same origin and under the base path, whatever the parser did.
    let base_path = base.path().trim_end_matches('/');
    let under = url.path() == base_path || url.path().starts_with(&format!("{base_path}/")) || base_path.is_empty();
    if url.origin() != base.origin() || !under {
        return Err(GatewayError::InvalidRequest("the path leaves the upstream".into()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_upstream() {
        let base = Url::parse("http://127.0.0.1:3002/v1").unwrap();
        let ok = |rest: &str, q: Option<&str>| upstream_url(&base, rest, q).unwrap().to_string();
        assert_eq!(ok("", None), "http://127.0.0.1:3002/v1");
        assert_eq!(ok("/events", Some("day=mon&x=%20")), "http://127.0.0.1:3002/v1/events?day=mon&x=%20");
        assert_eq!(ok("/a/b.c/..d", None), "http://127.0.0.1:3002/v1/a/b.c/..d");
        for bad in ["/../admin", "/a/..", "/%2e%2e/admin", "/%2E./x", "/.", "/a\\..\\b", "/a%2F..%2Fb", "/%2e"] {
            assert!(upstream_url(&base, bad, None).is_err(), "{bad}");
        }
        let root = Url::parse("http://127.0.0.1:3002/").unwrap();
        assert_eq!(upstream_url(&root, "", None).unwrap().as_str(), "http://127.0.0.1:3002/");
        assert_eq!(upstream_url(&root, "/x", None).unwrap().as_str(), "http://127.0.0.1:3002/x");
    }
}
