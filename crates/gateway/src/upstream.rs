//! What the gateway sends upstream: never the client's credentials
//! (SECURITY rows 36 and 49), only an allow-listed set of headers, and, if
//! the route says so, a token Mandate exchanged from the client's for the
//! upstream's audience, cached until shortly before it expires.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use mandate_verifier::{ExchangeError, Verifier, system_time};
use url::Url;

use crate::error::GatewayError;

/// Exchanged tokens kept at most; past it, expired ones are dropped, and
/// if none has expired, all.
const MAX_CACHED_TOKENS: usize = 10_000;
/// An exchanged token is replaced this many seconds before it expires.
const RENEW_BEFORE: i64 = 30;

/// Request headers an MCP route forwards (streamable HTTP; `Mcp-Method`
/// and `Mcp-Name` only once checked against the body).
pub const MCP_REQUEST_HEADERS: &[&str] = &[
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "mcp-method",
    "mcp-name",
    "traceparent",
    "tracestate",
    "user-agent",
];

/// Response headers an MCP route passes back.
pub const MCP_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "cache-control",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "retry-after",
    "allow",
];

/// RFC 9110 §7.6.1 hop-by-hop headers, never forwarded either way.
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// Request headers an HTTP route drops on top of the hop-by-hop ones:
/// the client's credentials, and what the gateway sets itself.
const HTTP_DROPPED_REQUEST: &[&str] =
    &["authorization", "dpop", "proxy-authorization", "host", "content-length", "forwarded", "x-forwarded-for"];

/// Response headers an HTTP route drops on top of the hop-by-hop ones: the
/// upstream's challenges concern the gateway's token, not the client's.
const HTTP_DROPPED_RESPONSE: &[&str] = &["www-authenticate", "proxy-authenticate", "content-length"];

/// The named headers of `from`, all their values.
pub fn allow_listed(from: &HeaderMap, names: &[&str]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in names {
        for v in from.get_all(*name) {
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                out.append(n, v.clone());
            }
        }
    }
    out
}

/// `from` without hop-by-hop headers (those named by `Connection` too)
/// and without `dropped`.
pub fn without(from: &HeaderMap, dropped: &[&str]) -> HeaderMap {
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::new();
    for (name, value) in from {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || dropped.contains(&n) || named.iter().any(|c| c == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

pub fn http_request_headers(from: &HeaderMap) -> HeaderMap {
    without(from, HTTP_DROPPED_REQUEST)
}

pub fn http_response_headers(from: &HeaderMap) -> HeaderMap {
    without(from, HTTP_DROPPED_RESPONSE)
}

/// One request to an upstream: no redirects are followed (the client gets
/// the redirect), connections are reused.
pub async fn send(
    http: &reqwest::Client,
    timeout: Duration,
    method: Method,
    url: Url,
    headers: HeaderMap,
    bearer: Option<&str>,
    body: Option<Bytes>,
) -> Result<reqwest::Response, GatewayError> {
    let mut req = http.request(method, url).headers(headers);
    if let Some(token) = bearer {
        let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| GatewayError::Internal("an exchanged token is not a header value".into()))?;
        v.set_sensitive(true);
        req = req.header(header::AUTHORIZATION, v);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    match tokio::time::timeout(timeout, req.send()).await {
        Err(_) => Err(GatewayError::UpstreamUnavailable(format!("no answer within {} s", timeout.as_secs()))),
        Ok(Err(e)) => Err(GatewayError::UpstreamUnavailable(e.to_string())),
        Ok(Ok(resp)) => Ok(resp),
    }
}

/// The client for upstreams: keep-alive, a connect timeout, no redirects,
/// no overall timeout (event streams last).
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
}

/// Exchanged tokens by (hash of the client's token, upstream audience).
#[derive(Default)]
pub struct ExchangedTokens {
    entries: Mutex<HashMap<(String, String), (String, i64)>>,
}

impl ExchangedTokens {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), (String, i64)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A token for `audience` exchanged from `client_token`: the cached one
    /// while it has more than [`RENEW_BEFORE`] seconds left, else a new one
    /// from Mandate. Mandate unreachable is a 503, a refusal a 403.
    pub async fn get(&self, verifier: &Verifier, client_token: &str, audience: &str) -> Result<String, GatewayError> {
        // The client's token is never a key in memory, only its hash.
        let key = (mandate_jose::sha256_b64(client_token.as_bytes()), audience.to_owned());
        let now = system_time();
        if let Some((token, _)) = self.lock().get(&key).filter(|(_, until)| now < *until) {
            return Ok(token.clone());
        }
        let exchanged = verifier.exchange(client_token, audience).await.map_err(|e| match e {
            ExchangeError::Unavailable(why) => GatewayError::MandateUnavailable(format!("token exchange: {why}")),
            ExchangeError::Refused { error, description } => {
                GatewayError::ExchangeRefused(format!("{error}: {}", description.unwrap_or_default()))
            }
            ExchangeError::Config(why) => GatewayError::Internal(why),
        })?;
        let lifetime = exchanged.expires_in.max(0);
        let keep = if lifetime > 2 * RENEW_BEFORE { lifetime - RENEW_BEFORE } else { lifetime / 2 };
        let mut entries = self.lock();
        if entries.len() >= MAX_CACHED_TOKENS {
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= MAX_CACHED_TOKENS {
                entries.clear();
            }
        }
        entries.insert(key, (exchanged.access_token.clone(), now.saturating_add(keep)));
        Ok(exchanged.access_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn credentials_never_leave() {
        let incoming = headers(&[
            ("authorization", "Bearer client-token"),
            ("dpop", "proof"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-session-id", "s1"),
            ("mcp-protocol-version", "2025-11-25"),
            ("last-event-id", "e4"),
            ("cookie", "a=b"),
            ("mcp-param-to", "x"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("x-request-id", "r"),
        ]);
        let mcp = allow_listed(&incoming, MCP_REQUEST_HEADERS);
        let names: Vec<&str> = mcp.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept", "mcp-session-id", "mcp-protocol-version", "last-event-id"]);
        let http = http_request_headers(&incoming);
        assert!(http.get("authorization").is_none());
        assert!(http.get("dpop").is_none());
        assert!(http.get("connection").is_none());
        assert!(http.get("x-private").is_none(), "named by Connection: hop-by-hop");
        assert_eq!(http.get("x-request-id").unwrap(), "r");
        assert_eq!(http.get("cookie").unwrap(), "a=b");

        let back = http_response_headers(&headers(&[
            ("www-authenticate", "Bearer error=\"invalid_token\""),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
        ]));
        assert_eq!(back.len(), 1);
        assert_eq!(back.get("content-type").unwrap(), "application/json");
    }
}
