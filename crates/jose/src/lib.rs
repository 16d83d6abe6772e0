//! Token cryptography for Mandate: signing keys, JWKs, JWS compact tokens,
//! access tokens (RFC 9068), client assertions (RFC 7523) and key wrapping.
//!
//! Signatures come from aws-lc-rs; this crate only frames them. The rules
//! that RFC 8725 asks for live here, once, for every kind of token:
//! the algorithm comes from the registered key and never from the header,
//! `typ` is explicit per token kind, and header members that point at keys
//! (`jku`, `x5u`, `jwk`, `x5c`) or demand unknown processing (`crit`) are
//! refused.

pub mod access;
pub mod assertion;
pub mod dpop;
pub mod error;
pub mod federated;
pub mod jwk;
pub mod jws;
pub mod kek;
pub mod keys;
pub mod statuslist;

pub use error::JoseError;
pub use jwk::{JwkSet, PublicJwk};
pub use keys::{KeyAlg, SigningKey};

/// base64url without padding (RFC 7515 §2), strict about padding and trailing bits.
pub(crate) fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// `base64url(SHA-256(data))`.
pub fn sha256_b64(data: &[u8]) -> String {
    use base64::Engine;
    b64().encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
