//! The DNS resolver given to reqwest: resolves with tokio's `lookup_host`
//! and refuses a name when **any** of its addresses may not be fetched.
//!
//! Refusing the whole name, rather than dropping the bad addresses, is the
//! stricter choice: a name that points at both a public and an internal
//! address is suspicious in itself, and the outcome does not depend on the
//! order in which the connector would try them.

use std::net::SocketAddr;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::FetchError;
use crate::addr::address_allowed;

/// One of our own refusals, carried through reqwest as the source of its
/// error and recognised again by [`FetchError::from_reqwest`].
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct Refused(pub(crate) FetchError);

#[derive(Debug, Clone, Copy)]
pub(crate) struct GuardedResolver {
    dev_loopback: bool,
}

impl GuardedResolver {
    pub(crate) const fn new(dev_loopback: bool) -> Self {
        Self { dev_loopback }
    }
}

/// Resolves `host` and checks every answer.
pub(crate) async fn resolve_checked(host: &str, dev_loopback: bool) -> Result<Vec<SocketAddr>, FetchError> {
    // Port 0: reqwest puts the URL's port (or the scheme's) in its place.
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await.map_err(FetchError::Dns)?.collect();
    if addrs.is_empty() {
        return Err(FetchError::Dns(std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses")));
    }
    if addrs.iter().any(|addr| !address_allowed(addr.ip(), dev_loopback)) {
        return Err(FetchError::PrivateAddress);
    }
    Ok(addrs)
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let dev_loopback = self.dev_loopback;
        Box::pin(async move {
            match resolve_checked(name.as_str(), dev_loopback).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as Addrs),
                Err(refusal) => Err(Box::new(Refused(refusal)) as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_resolves_to_loopback_and_is_refused_unless_dev() {
        assert!(matches!(resolve_checked("localhost", false).await, Err(FetchError::PrivateAddress)));
        let addrs = resolve_checked("localhost", true).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }

    #[tokio::test]
    async fn ip_strings_given_to_the_resolver_are_checked_too() {
        assert!(matches!(resolve_checked("10.0.0.1", true).await, Err(FetchError::PrivateAddress)));
        assert!(matches!(resolve_checked("0.0.0.0", true).await, Err(FetchError::PrivateAddress)));
        assert!(resolve_checked("127.0.0.1", true).await.is_ok());
    }
}
