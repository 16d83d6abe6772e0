//! The SSRF-guarded outbound HTTP fetcher for documents named by untrusted
//! parties: OAuth Client ID Metadata Documents (an `https` URL used as a
//! `client_id`), the `jwks_uri` they name, and later identity providers'
//! discovery documents and JWKS.
//!
//! This crate is an outbound adapter: it depends on no Mandate crate.
//! So far it holds the pure parts: which addresses may be fetched
//! ([`address_allowed`]), the host allow-list ([`HostPatterns`]) and the
//! caching directives of a response ([`CacheControl`], [`clamp_ttl`]).

mod addr;
mod cache;
mod hosts;

pub use addr::address_allowed;
pub use cache::{CacheControl, clamp_ttl};
pub use hosts::{HostPatterns, PatternError};
