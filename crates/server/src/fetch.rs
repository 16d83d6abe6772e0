//! The core's `MetadataFetcher` port over `mandate-fetch`: client metadata
//! documents and their `jwks_uri`, fetched with the SSRF guards of
//! DESIGN §9 (https only, public addresses only, 64 KiB, 5 s, 3 redirects,
//! each hop checked; `--dev-loopback-fetch` opens loopback http).

use mandate_core::ports::{FetchFailure, FetchedDocument, MetadataFetcher};
use mandate_fetch::{FetchError, FetchPolicy, Fetcher, HostPatterns};

/// Most fetches in flight at once: anyone may name a URL at
/// `/oauth/authorize`, so a flood of slow documents must not tie up the
/// node; past it, a request is refused at once.
const MAX_IN_FLIGHT: usize = 32;

/// Fetches what clients name.
pub struct GuardedFetcher {
    inner: Fetcher,
    in_flight: tokio::sync::Semaphore,
}

impl GuardedFetcher {
    /// `hosts`: when given, only hosts matching one pattern are fetched.
    pub fn new(dev_loopback: bool, hosts: Option<HostPatterns>) -> Result<Self, FetchError> {
        let policy = FetchPolicy { dev_loopback, allowed_hosts: hosts, ..FetchPolicy::default() };
        Ok(Self { inner: Fetcher::new(policy)?, in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT) })
    }

    /// For trusted issuers' discovery documents and key sets: no host
    /// patterns (the configured issuers are the allow-list) and 256 KiB,
    /// as for upstream OpenID providers (key sets with several RSA keys
    /// and certificate chains exceed 64 KiB).
    pub fn for_issuers(dev_loopback: bool) -> Result<Self, FetchError> {
        let policy = FetchPolicy { dev_loopback, max_bytes: 256 * 1024, ..FetchPolicy::default() };
        Ok(Self { inner: Fetcher::new(policy)?, in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT) })
    }
}

#[async_trait::async_trait]
impl MetadataFetcher for GuardedFetcher {
    async fn fetch(&self, url: &str) -> Result<FetchedDocument, FetchFailure> {
        let lasting = |why: &str| FetchFailure { why: why.to_owned(), transient: false };
        let parsed = url::Url::parse(url).map_err(|_| lasting("not a URL"))?;
        let _slot = self.in_flight.try_acquire().map_err(|_| FetchFailure {
            why: "too many client documents are being fetched now; try again shortly".into(),
            transient: true,
        })?;
        let got = self.inner.get(&parsed).await.map_err(|e| {
            tracing::info!(url, error = %e, detail = ?std::error::Error::source(&e), "fetching a client document failed");
            let transient = matches!(e, FetchError::Timeout | FetchError::Network(_) | FetchError::Dns(_));
            FetchFailure { why: e.to_string(), transient }
        })?;
        if !got.is_json() {
            return Err(lasting("the document is not served as JSON"));
        }
        Ok(FetchedDocument {
            body: got.body,
            max_age: got.cache.max_age,
            no_store: got.cache.no_store || got.cache.no_cache,
        })
    }
}
