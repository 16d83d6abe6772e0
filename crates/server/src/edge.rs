//! The edge: who the client is, and how fast it may ask (SECURITY row 45).
//!
//! - The client's address is the peer's, unless the peer is a trusted
//!   proxy (`--trusted-proxies`): then it is read from `Forwarded` (RFC
//!   7239) or `X-Forwarded-For`, right to left, skipping trusted proxies.
//!   Those headers are ignored from anyone else, so a client cannot pick
//!   its own address.
//! - Rate limits (GCRA, `governor`) per client address on the token,
//!   CIBA, introspection, revocation, sign-in and admin endpoints, and per
//!   client once it has authenticated at the OAuth endpoints, answer `429`
//!   with `Retry-After`. IPv6 addresses are limited by their /64, which one
//!   host can otherwise walk through.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use mandate_core::Error;

use crate::AppState;
use crate::error::{OAuthError, Problem};

/// A rate: `per_second` requests a second, bursts of twice that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
}

impl Rate {
    fn quota(self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.per_second.saturating_mul(2)).unwrap_or(rate);
        Some(Quota::per_second(rate).allow_burst(burst))
    }
}

/// The header a trusted proxy records the client's address in. Only that
/// one is read: a proxy that appends to `X-Forwarded-For` typically passes a
/// client's own `Forwarded` through untouched, and the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded`.
    Forwarded,
}

/// How the edge is set up.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub connections: crate::conn::Limits,
    /// Peers whose forwarded-for header is believed.
    pub trusted_proxies: Vec<IpNet>,
    pub forwarded_header: ForwardedHeader,
    /// Per client address; `None` (or 0) turns it off.
    pub per_address: Option<Rate>,
    /// Per claimed client id at the OAuth endpoints.
    pub per_client: Option<Rate>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            connections: crate::conn::Limits::default(),
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            per_address: Some(Rate { per_second: 100 }),
            per_client: Some(Rate { per_second: 50 }),
        }
    }
}

/// The edge's state, shared by every request.
pub struct Edge {
    pub config: EdgeConfig,
    by_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    by_client: Option<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The client's address for this request, in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl Edge {
    pub fn new(config: EdgeConfig) -> Arc<Self> {
        let by_address = config.per_address.and_then(Rate::quota).map(DefaultKeyedRateLimiter::keyed);
        let by_client = config.per_client.and_then(Rate::quota).map(DefaultKeyedRateLimiter::keyed);
        Arc::new(Self { config, by_address, by_client })
    }

    /// The client's address: the peer's, or the one a trusted proxy
    /// forwarded.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| self.config.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        // The hops the proxies recorded, client first, from the one header
        // the operator named; any value that does not parse voids the header
        // (the proxy's own address is used).
        let name = match self.config.forwarded_header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        let mut hops: Vec<IpAddr> = Vec::new();
        for value in headers.get_all(name) {
            let Ok(text) = value.to_str() else { return peer };
            let parsed = match self.config.forwarded_header {
                ForwardedHeader::XForwardedFor => {
                    forwarded_header_value::ForwardedHeaderValue::from_x_forwarded_for(text)
                }
                ForwardedHeader::Forwarded => forwarded_header_value::ForwardedHeaderValue::from_forwarded(text),
            };
            let Ok(parsed) = parsed else { return peer };
            for stanza in parsed.iter() {
                match stanza.forwarded_for_ip() {
                    Some(ip) => hops.push(ip),
                    // An obfuscated or unknown hop ends what can be believed.
                    None => hops.clear(),
                }
            }
        }
        // Right to left, the first hop that is not a trusted proxy; if all
        // are, the left-most; if there are none, the peer itself.
        hops.iter().rev().find(|ip| !trusted(ip)).or(hops.first()).copied().unwrap_or(peer)
    }

    /// Seconds to wait, if `client` asked too often.
    pub fn address_wait(&self, client: IpAddr) -> Option<u64> {
        let limiter = self.by_address.as_ref()?;
        limiter.check_key(&bucket(client)).err().map(|n| wait_secs(n.wait_time_from(DefaultClock::default().now())))
    }

    /// Refuses a client that asked too often. Mandate calls it after the
    /// client authenticated, so that naming another client's id does not
    /// use up that client's budget.
    pub fn check_client(&self, authenticated: Option<&str>) -> Result<(), Error> {
        let (Some(limiter), Some(id)) = (self.by_client.as_ref(), authenticated) else { return Ok(()) };
        match limiter.check_key(&id.to_owned()) {
            Ok(()) => Ok(()),
            Err(n) => {
                let secs = wait_secs(n.wait_time_from(DefaultClock::default().now()));
                metrics::counter!("mandate_rate_limited_total", "by" => "client").increment(1);
                Err(Error::RateLimited {
                    why: "too many requests for this client; slow down".into(),
                    retry_after: secs,
                })
            }
        }
    }

    /// Forgets clients that have not asked for a while (run periodically).
    pub fn forget_idle(&self) {
        if let Some(l) = &self.by_address {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.by_client {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

impl mandate_core::ports::ClientGate for Edge {
    fn admit(&self, client: &mandate_model::records::ClientId) -> Result<(), Error> {
        self.check_client(Some(&client.to_string()))
    }
}

/// The key an address is limited under: itself, or its /64 for IPv6.
fn bucket(ip: IpAddr) -> IpAddr {
    mandate_core::refusals::address_bucket(ip)
}

fn wait_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Gives every request its client address and the id the request-id layer
/// set (both stamped on the events it records; the address is what the rate
/// limits and the refusal counts go by).
pub async fn context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let client = peer.map(|p| state.edge.client_addr(p, req.headers()));
    if let Some(c) = client {
        req.extensions_mut().insert(ClientAddr(c));
    }
    let id = req
        .extensions()
        .get::<tower_http::request_id::RequestId>()
        .and_then(|r| r.header_value().to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let ctx = mandate_core::audit::RequestContext { id, client };
    mandate_core::audit::with_request(ctx, next.run(req)).await
}

/// The per-address rate limit, in front of the endpoints that take
/// credentials. The answer fits the endpoint: RFC 6749 JSON on `/oauth/*`,
/// a SCIM error on `/scim/*`, problem JSON elsewhere.
pub async fn limit_by_address(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(ClientAddr(client)) = req.extensions().get::<ClientAddr>().copied() else {
        return next.run(req).await;
    };
    let Some(secs) = state.edge.address_wait(client) else {
        return next.run(req).await;
    };
    metrics::counter!("mandate_rate_limited_total", "by" => "address").increment(1);
    let e = Error::RateLimited { why: "too many requests from this address; slow down".into(), retry_after: secs };
    if req.uri().path().starts_with("/oauth/") {
        OAuthError(e).into_response()
    } else if req.uri().path().starts_with("/v1/") || req.uri().path().starts_with("/access/") {
        Problem::from(e).into_response()
    } else if req.uri().path().starts_with("/scim/") {
        let mut resp = crate::scim::ScimError::from(e).into_response();
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        resp
    } else {
        let mut resp = crate::web::error_response(&e);
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(trusted: &[&str]) -> Arc<Edge> {
        Edge::new(EdgeConfig {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            ..EdgeConfig::default()
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let spoof = headers(&[("x-forwarded-for", "198.51.100.7")]);
        // No trusted proxy: the header is ignored.
        assert_eq!(edge(&[]).client_addr(ip("203.0.113.5"), &spoof), ip("203.0.113.5"));
        // Behind a trusted proxy: the address it forwarded.
        let e = edge(&["10.0.0.0/8"]);
        assert_eq!(e.client_addr(ip("10.1.2.3"), &spoof), ip("198.51.100.7"));
        // A client that prepends its own choice is seen at the right-most
        // untrusted hop.
        let chained = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.9.9.9")]);
        assert_eq!(e.client_addr(ip("10.1.2.3"), &chained), ip("198.51.100.7"));
        // Only the named header is read: a client's own Forwarded is ignored
        // when the proxy appends to X-Forwarded-For, and the other way round.
        let both = headers(&[("forwarded", "for=192.0.2.99"), ("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(e.client_addr(ip("10.1.2.3"), &both), ip("198.51.100.7"));
        let rfc = Edge::new(EdgeConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            forwarded_header: ForwardedHeader::Forwarded,
            ..EdgeConfig::default()
        });
        assert_eq!(rfc.client_addr(ip("10.1.2.3"), &both), ip("192.0.2.99"));
        let fwd = headers(&[("forwarded", r#"for=192.0.2.60;proto=http, for="[2001:db8::1]:4711""#)]);
        assert_eq!(rfc.client_addr(ip("10.1.2.3"), &fwd), ip("2001:db8::1"));
        // A value that does not parse voids the header: the proxy itself.
        let broken = headers(&[("x-forwarded-for", "198.51.100.7"), ("x-forwarded-for", "][")]);
        assert_eq!(e.client_addr(ip("10.1.2.3"), &broken), ip("10.1.2.3"));
        // Garbage, or no header: the proxy itself.
        assert_eq!(e.client_addr(ip("10.1.2.3"), &headers(&[("x-forwarded-for", "not an ip")])), ip("10.1.2.3"));
        assert_eq!(e.client_addr(ip("10.1.2.3"), &HeaderMap::new()), ip("10.1.2.3"));
    }

    #[test]
    fn addresses_are_limited_and_ipv6_by_its_64() {
        let e = Edge::new(EdgeConfig { per_address: Some(Rate { per_second: 1 }), ..EdgeConfig::default() });
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        // Burst of two, shared by the /64.
        assert_eq!(e.address_wait(a), None);
        assert_eq!(e.address_wait(b), None);
        assert!(e.address_wait(a).is_some_and(|s| s >= 1));
        assert_eq!(e.address_wait(c), None, "another /64 has its own budget");
        let off = Edge::new(EdgeConfig { per_address: None, ..EdgeConfig::default() });
        assert!((0..1000).all(|_| off.address_wait(a).is_none()));
    }

    #[test]
    fn client_ids_are_limited() {
        let e = Edge::new(EdgeConfig { per_client: Some(Rate { per_second: 1 }), ..EdgeConfig::default() });
        assert!(e.check_client(Some("agt_x")).is_ok());
        assert!(e.check_client(Some("agt_x")).is_ok());
        assert!(
            matches!(e.check_client(Some("agt_x")), Err(Error::RateLimited { retry_after, .. }) if retry_after >= 1)
        );
        assert!(e.check_client(Some("agt_y")).is_ok());
        assert!(e.check_client(None).is_ok());
    }
}
