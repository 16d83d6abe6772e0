//! The SSRF-guarded outbound HTTP fetcher for documents named by untrusted
//! parties: OAuth Client ID Metadata Documents (an `https` URL used as a
//! `client_id`), the `jwks_uri` they name, and later identity providers'
//! discovery documents and JWKS.
//!
//! This crate is an outbound adapter: it depends on no Mandate crate, and
//! the server wraps it behind a port of `mandate-core`.
//!
//! What a [`Fetcher`] guarantees, for the first URL and again for every
//! redirect hop:
//!
//! - **https only.** `http` is refused, except with
//!   [`FetchPolicy::dev_loopback`] and a loopback host (`127.0.0.0/8`,
//!   `[::1]` or the name `localhost`). URLs with a user name, a password or
//!   a fragment are refused.
//! - **Public addresses only** ([`address_allowed`]): an IP-literal host is
//!   checked before anything is sent, and a host name is resolved by this
//!   crate's resolver (tokio's `lookup_host`), which refuses the **whole
//!   name if any of its addresses** is not allowed, so no connection is
//!   opened to a name that also points inward, whichever address the
//!   connector would have tried first. `dev_loopback` opens `127.0.0.0/8`
//!   and `::1`, nothing else (`0.0.0.0` and `::` stay refused).
//! - **An optional host allow-list** ([`HostPatterns`], `*.example.com`).
//! - **Bounded work**: at most [`FetchPolicy::max_bytes`] of body (64 KiB;
//!   refused from `Content-Length` before reading, or as soon as the
//!   streamed body passes the limit), [`FetchPolicy::timeout`] for the whole
//!   exchange (5 s, redirects and body included) with a shorter connect
//!   timeout, at most [`FetchPolicy::max_redirects`] redirects (3).
//! - **Nothing ambient**: no proxy from the environment, no cookies, no
//!   `Referer`, no retries, no decompression (a response with a
//!   `Content-Encoding` other than `identity` is refused).
//! - **Only `200 OK`** is a document; any other final status is an error.
//!
//! TLS is rustls with the platform's verifier: on Linux the system's root
//! store, honouring `SSL_CERT_FILE` and `SSL_CERT_DIR`.
//!
//! [`FetchError`]'s messages are safe to show to a client as an error
//! description; the underlying I/O or HTTP error, for logs, is its
//! [`source`](std::error::Error::source).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use mandate_fetch::{FetchPolicy, Fetcher, clamp_ttl};
//! use std::time::Duration;
//!
//! let fetcher = Fetcher::new(FetchPolicy::default())?;
//! let url = url::Url::parse("https://app.example.com/oauth/client.json")?;
//! let doc = fetcher.get(&url).await?;
//! if !doc.is_json() {
//!     return Err("not JSON".into());
//! }
//! let ttl = clamp_ttl(doc.cache.max_age, Duration::from_secs(300), Duration::from_secs(86_400));
//! # let _ = ttl;
//! # Ok(())
//! # }
//! ```

mod addr;
mod cache;
mod hosts;
mod resolve;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{self, HeaderValue};
use url::{Host, Url};

pub use addr::address_allowed;
pub use cache::{CacheControl, clamp_ttl};
pub use hosts::{HostPatterns, PatternError};

use resolve::{GuardedResolver, Refused};

/// What a [`Fetcher`] may do. [`FetchPolicy::default`] is the production
/// policy: https, public addresses, any host, 64 KiB, 5 s, 3 redirects.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Development only (`--dev-loopback-fetch`): also allow `http` and
    /// `https` to `127.0.0.0/8`, `localhost` and `[::1]`. Nothing else is
    /// opened: `0.0.0.0`, `::` and every private range stay refused.
    pub dev_loopback: bool,
    /// When set, only hosts matching one pattern are fetched, on every hop.
    pub allowed_hosts: Option<HostPatterns>,
    /// The largest body accepted, in bytes.
    pub max_bytes: usize,
    /// The whole exchange: resolution, connection, TLS, redirects, body.
    pub timeout: Duration,
    /// Each TCP connection; must not exceed `timeout`.
    pub connect_timeout: Duration,
    /// Redirects followed before giving up.
    pub max_redirects: usize,
    /// The `Accept` header sent.
    pub accept: String,
    /// The `User-Agent` header sent.
    pub user_agent: String,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            dev_loopback: false,
            allowed_hosts: None,
            max_bytes: 64 * 1024,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_redirects: 3,
            accept: "application/json".to_owned(),
            user_agent: concat!("Mandate/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// A document fetched with `200 OK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The URL the document came from, after redirects.
    pub final_url: Url,
    /// The `Content-Type` sent, if any and if it is readable text.
    pub content_type: Option<String>,
    /// The body, at most [`FetchPolicy::max_bytes`] long.
    pub body: Vec<u8>,
    /// The response's `Cache-Control`.
    pub cache: CacheControl,
}

impl Fetched {
    /// Whether the content type is JSON: `application/json` or a
    /// `+json` type such as `application/jwk-set+json`, parameters
    /// (`; charset=utf-8`) ignored.
    #[must_use]
    pub fn is_json(&self) -> bool {
        let Some(content_type) = &self.content_type else {
            return false;
        };
        let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
    }
}

/// Why a fetch failed. The messages are meant for clients; details for
/// logs are in [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Not `https` (nor `http` to loopback under `dev_loopback`).
    #[error("the URL must use https")]
    NotHttps,
    /// The URL carries a user name or password.
    #[error("the URL must not contain a user name or password")]
    Credentials,
    /// The URL carries a fragment.
    #[error("the URL must not contain a fragment")]
    Fragment,
    /// The URL has no host.
    #[error("the URL has no host")]
    NoHost,
    /// The host matches no pattern of the allow-list.
    #[error("the URL's host is not allowed")]
    HostNotAllowed,
    /// The host is, or resolves to, an address that may not be fetched.
    #[error("the URL's host is a private or reserved address")]
    PrivateAddress,
    /// The host name could not be resolved.
    #[error("the URL's host name could not be resolved")]
    Dns(#[source] std::io::Error),
    /// The body is larger than allowed.
    #[error("the document is larger than {limit} bytes")]
    TooLarge {
        /// [`FetchPolicy::max_bytes`].
        limit: usize,
    },
    /// The exchange took longer than [`FetchPolicy::timeout`].
    #[error("fetching the document timed out")]
    Timeout,
    /// More redirects than [`FetchPolicy::max_redirects`].
    #[error("fetching the document took more than {max} redirects")]
    TooManyRedirects {
        /// [`FetchPolicy::max_redirects`].
        max: usize,
    },
    /// The final answer was not `200 OK`.
    #[error("fetching the document returned HTTP status {0}")]
    Status(u16),
    /// The body is compressed (or otherwise encoded), which is not accepted.
    #[error("the document was sent with a content encoding, which is not accepted")]
    Encoded,
    /// Connecting, TLS or HTTP failed.
    #[error("the document's server could not be reached or did not answer properly")]
    Network(#[source] reqwest::Error),
    /// [`Fetcher::new`]: the policy is not usable.
    #[error("invalid fetch policy: {0}")]
    InvalidPolicy(&'static str),
    /// [`Fetcher::new`]: the HTTP client (TLS set-up) could not be built.
    #[error("the HTTP client could not be built")]
    Client(#[source] reqwest::Error),
}

impl FetchError {
    /// The same error again, for the errors the resolver and the redirect
    /// policy raise inside reqwest (which only lends them back by
    /// reference).
    fn replicate(&self) -> Option<Self> {
        Some(match self {
            Self::NotHttps => Self::NotHttps,
            Self::Credentials => Self::Credentials,
            Self::Fragment => Self::Fragment,
            Self::NoHost => Self::NoHost,
            Self::HostNotAllowed => Self::HostNotAllowed,
            Self::PrivateAddress => Self::PrivateAddress,
            Self::Dns(e) => Self::Dns(std::io::Error::new(e.kind(), e.to_string())),
            Self::TooLarge { limit } => Self::TooLarge { limit: *limit },
            Self::Timeout => Self::Timeout,
            Self::TooManyRedirects { max } => Self::TooManyRedirects { max: *max },
            Self::Status(status) => Self::Status(*status),
            Self::Encoded => Self::Encoded,
            Self::InvalidPolicy(reason) => Self::InvalidPolicy(reason),
            // Never raised by the resolver or the redirect policy.
            Self::Network(_) | Self::Client(_) => return None,
        })
    }

    /// A reqwest error, with our own refusals (raised by the resolver or
    /// the redirect policy) found in its chain of sources.
    fn from_reqwest(error: reqwest::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(err) = source {
            if let Some(refusal) = err.downcast_ref::<Refused>().and_then(|Refused(inner)| inner.replicate()) {
                return refusal;
            }
            source = err.source();
        }
        if error.is_timeout() { Self::Timeout } else { Self::Network(error) }
    }
}

/// The checks made on a URL before any I/O, for the first URL and for each
/// redirect hop.
#[derive(Debug)]
struct UrlRules {
    dev_loopback: bool,
    allowed_hosts: Option<HostPatterns>,
}

impl UrlRules {
    fn check(&self, url: &Url) -> Result<(), FetchError> {
        let scheme = url.scheme();
        if scheme != "https" && scheme != "http" {
            return Err(FetchError::NotHttps);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::Credentials);
        }
        if url.fragment().is_some() {
            return Err(FetchError::Fragment);
        }
        let host = url.host().ok_or(FetchError::NoHost)?;
        // An IP literal never reaches the resolver: check it here.
        let literal = match host {
            Host::Ipv4(ip) => Some(std::net::IpAddr::V4(ip)),
            Host::Ipv6(ip) => Some(std::net::IpAddr::V6(ip)),
            Host::Domain(_) => None,
        };
        if let Some(ip) = literal
            && !address_allowed(ip, self.dev_loopback)
        {
            return Err(FetchError::PrivateAddress);
        }
        if scheme == "http" {
            let loopback = match host {
                Host::Ipv4(ip) => self.dev_loopback && ip.is_loopback(),
                Host::Ipv6(ip) => self.dev_loopback && ip == std::net::Ipv6Addr::LOCALHOST,
                Host::Domain(name) => {
                    self.dev_loopback && name.strip_suffix('.').unwrap_or(name).eq_ignore_ascii_case("localhost")
                }
            };
            if !loopback {
                return Err(FetchError::NotHttps);
            }
        }
        if let Some(patterns) = &self.allowed_hosts
            && !url.host_str().is_some_and(|h| patterns.matches(h))
        {
            return Err(FetchError::HostNotAllowed);
        }
        Ok(())
    }
}

/// The guarded fetcher. Cheap to clone (the HTTP client and its connection
/// pool are shared); build one and keep it.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    /// The same client but following no redirect, for [`Fetcher::post`].
    unredirected: reqwest::Client,
    rules: Arc<UrlRules>,
    max_bytes: usize,
    timeout: Duration,
    accept: HeaderValue,
}

impl Fetcher {
    /// Builds the HTTP client for `policy`: the guarded resolver, a redirect
    /// policy that checks every hop, no proxy, no cookies, rustls.
    pub fn new(policy: FetchPolicy) -> Result<Self, FetchError> {
        if policy.timeout.is_zero() {
            return Err(FetchError::InvalidPolicy("the timeout must not be zero"));
        }
        if policy.connect_timeout.is_zero() || policy.connect_timeout > policy.timeout {
            return Err(FetchError::InvalidPolicy("the connect timeout must be between zero and the timeout"));
        }
        let accept = HeaderValue::from_str(&policy.accept)
            .map_err(|_| FetchError::InvalidPolicy("the Accept header is not a valid header value"))?;
        let user_agent = HeaderValue::from_str(&policy.user_agent)
            .map_err(|_| FetchError::InvalidPolicy("the User-Agent is not a valid header value"))?;
        let rules = Arc::new(UrlRules { dev_loopback: policy.dev_loopback, allowed_hosts: policy.allowed_hosts });
        let redirect_rules = Arc::clone(&rules);
        let max_redirects = policy.max_redirects;
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            // `previous` holds the first URL and every hop already followed.
            if attempt.previous().len() > max_redirects {
                return attempt.error(Refused(FetchError::TooManyRedirects { max: max_redirects }));
            }
            match redirect_rules.check(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refusal) => attempt.error(Refused(refusal)),
            }
        });
        let build = |redirect: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .dns_resolver(GuardedResolver::new(policy.dev_loopback))
                .redirect(redirect)
                .no_proxy()
                .referer(false)
                .retry(reqwest::retry::never())
                .https_only(!policy.dev_loopback)
                .timeout(policy.timeout)
                .connect_timeout(policy.connect_timeout)
                .user_agent(user_agent.clone())
                .build()
                .map_err(FetchError::Client)
        };
        let client = build(redirect)?;
        let unredirected = build(reqwest::redirect::Policy::none())?;
        Ok(Self { client, unredirected, rules, max_bytes: policy.max_bytes, timeout: policy.timeout, accept })
    }

    /// The checks made before any I/O: scheme, credentials, fragment,
    /// IP-literal host, allow-list. (Host names are checked again, by
    /// address, when [`get`](Self::get) resolves them.)
    pub fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        self.rules.check(url)
    }

    /// Fetches `url` under the policy and returns the `200 OK` document.
    /// The body is not parsed; [`Fetched::is_json`] tells whether the server
    /// called it JSON.
    pub async fn get(&self, url: &Url) -> Result<Fetched, FetchError> {
        self.check_url(url)?;
        tokio::time::timeout(self.timeout, self.exchange(url)).await.unwrap_or(Err(FetchError::Timeout))
    }

    /// Sends `request` (any method, such as an OpenID Connect provider's
    /// token endpoint's POST) under the same policy: the URL and every
    /// redirect hop checked, the body bounded, the whole exchange timed.
    /// Every final status is returned, so that the caller can read an
    /// error body.
    pub async fn send(&self, request: http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, FetchError> {
        let url = Url::parse(&request.uri().to_string()).map_err(|_| FetchError::NotHttps)?;
        self.check_url(&url)?;
        tokio::time::timeout(self.timeout, self.send_checked(&self.client, url, request))
            .await
            .unwrap_or(Err(FetchError::Timeout))
    }

    /// POSTs `body` with `headers` to `url` (a callback or webhook Mandate
    /// sends on its own) under the same policy, but follows **no
    /// redirect**: a `3xx` is returned as the final answer, so a body is
    /// never re-sent to a place the URL's owner did not register. The
    /// answer's body is bounded as a document's is.
    pub async fn post(
        &self,
        url: &Url,
        headers: http::HeaderMap,
        body: Vec<u8>,
    ) -> Result<http::Response<Vec<u8>>, FetchError> {
        self.check_url(url)?;
        let mut request = http::Request::new(body);
        *request.method_mut() = http::Method::POST;
        *request.headers_mut() = headers;
        tokio::time::timeout(self.timeout, self.send_checked(&self.unredirected, url.clone(), request))
            .await
            .unwrap_or(Err(FetchError::Timeout))
    }

    async fn send_checked(
        &self,
        client: &reqwest::Client,
        url: Url,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, FetchError> {
        let (parts, body) = request.into_parts();
        let mut response = client
            .request(parts.method, url)
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(FetchError::from_reqwest)?;
        if response
            .headers()
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|v| !v.to_str().is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity")))
        {
            return Err(FetchError::Encoded);
        }
        let too_large = FetchError::TooLarge { limit: self.max_bytes };
        if response.content_length().is_some_and(|n| n > self.max_bytes as u64) {
            return Err(too_large);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(FetchError::from_reqwest)? {
            if body.len().saturating_add(chunk.len()) > self.max_bytes {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        let mut out = http::Response::builder().status(response.status());
        if let Some(h) = out.headers_mut() {
            *h = response.headers().clone();
        }
        out.body(body).map_err(|_| FetchError::Status(response.status().as_u16()))
    }

    async fn exchange(&self, url: &Url) -> Result<Fetched, FetchError> {
        let mut response = self
            .client
            .get(url.clone())
            .header(header::ACCEPT, self.accept.clone())
            .send()
            .await
            .map_err(FetchError::from_reqwest)?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(FetchError::Status(status.as_u16()));
        }
        let headers = response.headers();
        if headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|v| !v.to_str().is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity")))
        {
            return Err(FetchError::Encoded);
        }
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let cache = CacheControl::parse(headers.get_all(header::CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()));
        let too_large = FetchError::TooLarge { limit: self.max_bytes };
        let announced = match response.content_length() {
            Some(length) if length > self.max_bytes as u64 => return Err(too_large),
            Some(length) => usize::try_from(length).unwrap_or(self.max_bytes),
            None => 0,
        };
        let mut body = Vec::with_capacity(announced);
        while let Some(chunk) = response.chunk().await.map_err(FetchError::from_reqwest)? {
            if body.len().saturating_add(chunk.len()) > self.max_bytes {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        let final_url = response.url().clone();
        Ok(Fetched { final_url, content_type, body, cache })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn fetcher(dev_loopback: bool, hosts: Option<&str>) -> Fetcher {
        Fetcher::new(FetchPolicy {
            dev_loopback,
            allowed_hosts: hosts.map(|h| h.parse().unwrap()),
            ..FetchPolicy::default()
        })
        .unwrap()
    }

    fn check(f: &Fetcher, url: &str) -> Result<(), FetchError> {
        f.check_url(&Url::parse(url).unwrap())
    }

    #[test]
    fn static_checks() {
        let prod = fetcher(false, None);
        assert!(check(&prod, "https://example.com/client.json").is_ok());
        assert!(check(&prod, "https://8.8.8.8/x").is_ok());
        assert!(check(&prod, "https://[2606:4700::1]/x").is_ok());
        assert!(matches!(check(&prod, "http://example.com/x"), Err(FetchError::NotHttps)));
        assert!(matches!(check(&prod, "ftp://example.com/x"), Err(FetchError::NotHttps)));
        assert!(matches!(check(&prod, "file:///etc/passwd"), Err(FetchError::NotHttps)));
        assert!(matches!(check(&prod, "https://user@example.com/x"), Err(FetchError::Credentials)));
        assert!(matches!(check(&prod, "https://:pw@example.com/x"), Err(FetchError::Credentials)));
        assert!(matches!(check(&prod, "https://example.com/x#frag"), Err(FetchError::Fragment)));
        for private in [
            "https://10.0.0.1/x",
            "https://127.0.0.1/x",
            "https://0.0.0.0/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://[fe80::1]/x",
            "https://0x7f.1/x", // 127.0.0.1, as the URL parser reads it
            "https://2130706433/x",
        ] {
            assert!(matches!(check(&prod, private), Err(FetchError::PrivateAddress)), "{private}");
        }
        // A name is left to the resolver.
        assert!(check(&prod, "https://localhost/x").is_ok());
        assert!(matches!(check(&prod, "http://localhost/x"), Err(FetchError::NotHttps)));
    }

    #[test]
    fn dev_loopback_opens_http_to_loopback_only() {
        let dev = fetcher(true, None);
        for ok in [
            "http://127.0.0.1:8080/x",
            "http://127.9.9.9/x",
            "http://localhost:1/x",
            "http://LOCALHOST./x",
            "http://[::1]:8080/x",
            "https://127.0.0.1/x",
            "https://example.com/x",
        ] {
            assert!(check(&dev, ok).is_ok(), "{ok}");
        }
        assert!(matches!(check(&dev, "http://example.com/x"), Err(FetchError::NotHttps)));
        assert!(matches!(check(&dev, "http://localhost.example.com/x"), Err(FetchError::NotHttps)));
        assert!(matches!(check(&dev, "http://8.8.8.8/x"), Err(FetchError::NotHttps)));
        for private in ["http://0.0.0.0:80/x", "http://[::]/x", "http://10.1.2.3/x", "https://192.168.1.1/x"] {
            assert!(matches!(check(&dev, private), Err(FetchError::PrivateAddress)), "{private}");
        }
    }

    #[test]
    fn allow_list_is_checked() {
        let f = fetcher(false, Some("*.example.com,mcp.example.org"));
        assert!(check(&f, "https://a.example.com/x").is_ok());
        assert!(check(&f, "https://mcp.example.org/x").is_ok());
        assert!(matches!(check(&f, "https://example.com/x"), Err(FetchError::HostNotAllowed)));
        assert!(matches!(check(&f, "https://evil.net/x"), Err(FetchError::HostNotAllowed)));
        assert!(matches!(check(&f, "https://8.8.8.8/x"), Err(FetchError::HostNotAllowed)));
        // Address and scheme checks come first, whatever the list says.
        assert!(matches!(check(&f, "https://10.0.0.1/x"), Err(FetchError::PrivateAddress)));
        assert!(matches!(check(&f, "http://a.example.com/x"), Err(FetchError::NotHttps)));
    }

    #[test]
    fn bad_policies_are_refused() {
        let bad = |policy: FetchPolicy| matches!(Fetcher::new(policy), Err(FetchError::InvalidPolicy(_)));
        assert!(bad(FetchPolicy { timeout: Duration::ZERO, ..FetchPolicy::default() }));
        assert!(bad(FetchPolicy { connect_timeout: Duration::from_secs(6), ..FetchPolicy::default() }));
        assert!(bad(FetchPolicy { connect_timeout: Duration::ZERO, ..FetchPolicy::default() }));
        assert!(bad(FetchPolicy { accept: "a\nb".to_owned(), ..FetchPolicy::default() }));
        assert!(bad(FetchPolicy { user_agent: "a\rb".to_owned(), ..FetchPolicy::default() }));
    }

    #[test]
    fn json_content_types() {
        let fetched = |ct: Option<&str>| Fetched {
            final_url: Url::parse("https://example.com/").unwrap(),
            content_type: ct.map(str::to_owned),
            body: Vec::new(),
            cache: CacheControl::default(),
        };
        assert!(fetched(Some("application/json")).is_json());
        assert!(fetched(Some("Application/JSON; charset=utf-8")).is_json());
        assert!(fetched(Some("application/jwk-set+json")).is_json());
        assert!(!fetched(Some("text/html")).is_json());
        assert!(!fetched(Some("text/json+html")).is_json());
        assert!(!fetched(Some("application/jsonp")).is_json());
        assert!(!fetched(None).is_json());
    }

    #[test]
    fn messages_carry_no_detail() {
        let io = FetchError::Dns(std::io::Error::other("secret resolver detail"));
        assert!(!io.to_string().contains("secret"));
        assert!(io.source().is_some_and(|s| s.to_string().contains("secret")));
    }
}
