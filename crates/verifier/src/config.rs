//! What a resource server tells the verifier about itself and its issuer.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mandate_jose::SigningKey;

/// The time, in seconds since the Unix epoch. A parameter so that tests can
/// control expiry, proof age and cache lifetimes without sleeping. Any
/// `Fn() -> i64` is a clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> i64;
}

impl<F: Fn() -> i64 + Send + Sync + 'static> Clock for F {
    fn now(&self) -> i64 {
        self()
    }
}

/// The system clock.
pub fn system_time() -> i64 {
    // SAFETY-FALLBACK: a clock before 1970 reads 0, at which every token
    // of this era is "not yet valid" (iat and nbf are checked), so a broken
    // clock refuses tokens instead of accepting expired ones.
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Credentials for calling Mandate's check API: the resource server is an
/// OAuth client (`res_…`) that registered `key`'s public half, and gets its
/// `mandate:check` token by `client_credentials` with `private_key_jwt`.
#[derive(Debug, Clone)]
pub struct RemoteCheck {
    pub client_id: String,
    pub key: Arc<SigningKey>,
}

/// How a [`Verifier`](crate::Verifier) checks requests.
#[derive(Clone)]
pub struct VerifierConfig {
    /// Mandate's issuer URL, exactly as tokens carry it in `iss`.
    pub issuer: String,
    /// This resource server's identifier: the `aud` its tokens must carry.
    pub audience: String,
    /// The externally visible base URL of this resource server; DPoP proofs
    /// must name `public_url` + request path as `htu`.
    pub public_url: String,
    /// Where the issuer's keys are; `{issuer}/jwks.json` when `None`.
    pub jwks_uri: Option<String>,
    /// Clock skew tolerated on `nbf`, `iat` and proof `iat`, in seconds; a
    /// past `exp` is always refused.
    pub leeway: i64,
    /// Refuse `Bearer` tokens: every token must be DPoP-bound.
    pub require_dpop: bool,
    /// Read the Token Status List named by a token's `status` claim.
    pub check_status: bool,
    /// Longest a status list is cached, in seconds, whatever its `ttl` says.
    pub max_status_ttl: u64,
    /// How old a DPoP proof may be, in seconds.
    pub dpop_max_age: i64,
    /// Most DPoP proofs remembered for replay detection; beyond that,
    /// requests are refused rather than the memory grown.
    pub replay_capacity: usize,
    /// Scopes advertised in the protected-resource metadata.
    pub scopes_supported: Vec<String>,
    /// A human-readable name for the protected-resource metadata.
    pub resource_name: Option<String>,
    /// Credentials for [`Verifier::check`](crate::Verifier::check), and
    /// for the Shared Signals stream calls and polling.
    pub remote_check: Option<RemoteCheck>,
    /// Seconds a token `jti` revoked by a Shared Signals event is
    /// remembered after the event arrived (longer while a token with that
    /// `jti` is presented before its `exp`). Past it, the token's status
    /// list still refuses it; see [`crate::ssf`].
    pub revocation_retention: i64,
    /// Most revoked `jti`s (and as many accepted SETs) remembered.
    pub max_revocations: usize,
    pub clock: Arc<dyn Clock>,
}

impl VerifierConfig {
    /// A configuration with the defaults: 60 s leeway, Bearer and DPoP
    /// accepted, status lists read and cached at most 300 s, proofs at most
    /// 60 s old, 100 000 proofs remembered, revoked `jti`s remembered a day
    /// (at most 100 000), the system clock.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, public_url: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            public_url: public_url.into(),
            jwks_uri: None,
            leeway: 60,
            require_dpop: false,
            check_status: true,
            max_status_ttl: 300,
            dpop_max_age: 60,
            replay_capacity: 100_000,
            scopes_supported: Vec::new(),
            resource_name: None,
            remote_check: None,
            revocation_retention: 86_400,
            max_revocations: 100_000,
            clock: Arc::new(system_time),
        }
    }

    /// The issuer as a base for URLs, without a trailing slash.
    pub(crate) fn issuer_base(&self) -> &str {
        self.issuer.trim_end_matches('/')
    }

    pub(crate) fn public_base(&self) -> &str {
        self.public_url.trim_end_matches('/')
    }

    pub(crate) fn jwks_url(&self) -> String {
        self.jwks_uri.clone().unwrap_or_else(|| format!("{}/jwks.json", self.issuer_base()))
    }
}

impl fmt::Debug for VerifierConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("public_url", &self.public_url)
            .field("jwks_uri", &self.jwks_uri)
            .field("leeway", &self.leeway)
            .field("require_dpop", &self.require_dpop)
            .field("check_status", &self.check_status)
            .field("max_status_ttl", &self.max_status_ttl)
            .field("dpop_max_age", &self.dpop_max_age)
            .field("replay_capacity", &self.replay_capacity)
            .field("scopes_supported", &self.scopes_supported)
            .field("resource_name", &self.resource_name)
            .field("remote_check", &self.remote_check)
            .field("revocation_retention", &self.revocation_retention)
            .field("max_revocations", &self.max_revocations)
            .finish_non_exhaustive()
    }
}
