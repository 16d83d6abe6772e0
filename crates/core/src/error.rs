use thiserror::Error;

use crate::StoreError;

/// Every way a use case can refuse. The server maps these to RFC 6749 JSON
/// on OAuth endpoints and to RFC 9457 problem JSON on the admin API, in one
/// place.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    // OAuth (RFC 6749 §5.2, RFC 8707, RFC 8693).
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    #[error("invalid_client: {0}")]
    InvalidClient(String),
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
    #[error("invalid_target: {0}")]
    InvalidTarget(String),
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(String),
    /// RFC 9396 §5: an unknown type, a detail its schema refuses, too many
    /// or too large, or wider than the token it narrows.
    #[error("invalid_authorization_details: {0}")]
    InvalidAuthorizationDetails(String),
    #[error("unsupported_grant_type: {0}")]
    UnsupportedGrantType(String),
    // CIBA (OpenID CIBA Core §11, §13).
    #[error("access_denied: {0}")]
    AccessDenied(String),
    #[error("authorization_pending")]
    AuthorizationPending,
    #[error("slow_down")]
    SlowDown,
    #[error("expired_token: {0}")]
    ExpiredToken(String),
    #[error("invalid_dpop_proof: {0}")]
    InvalidDpopProof(String),
    /// A DPoP nonce is required: the client retries with `nonce`.
    #[error("use_dpop_nonce: the DPoP proof must carry the server's current nonce")]
    UseDpopNonce { nonce: String },
    /// Too many attempts or requests; try again after `retry_after`
    /// seconds (HTTP 429 with `Retry-After`).
    #[error("rate limited: {why}")]
    RateLimited { why: String, retry_after: u64 },
    // Dynamic client registration (RFC 7591 §3.2.2).
    #[error("invalid_client_metadata: {0}")]
    InvalidClientMetadata(String),
    #[error("invalid_redirect_uri: {0}")]
    InvalidRedirectUri(String),
    #[error("unknown_user_id: {0}")]
    UnknownUser(String),
    // Administration.
    #[error("invalid input: {0}")]
    BadInput(String),
    #[error("authentication required")]
    Unauthenticated,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// A conditional write found the record changed since it was read
    /// (HTTP 412 for SCIM's `If-Match`).
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    // Fail closed.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Error::Conflict(m),
            StoreError::Stale(m) => Error::PreconditionFailed(m),
            // An optimistic request reruns before this can reach a client
            // (decision 0042); if it ever does, it fails closed.
            StoreError::Moved => Error::Unavailable("the store changed while the request was decided".into()),
            StoreError::Replay => Error::InvalidClient("client assertion jti was already used".into()),
            StoreError::DpopReplay => Error::InvalidDpopProof("the proof's jti was already used".into()),
            StoreError::GrantReplay => Error::InvalidGrant("the assertion was already used".into()),
            StoreError::NotFound(m) => Error::NotFound(m),
            // The detail is for the log only: the server logs it with the
            // request id and tells the client a fixed sentence.
            StoreError::Unavailable(m) => Error::Unavailable(format!("store unavailable: {m}")),
            StoreError::Corrupt(m) => Error::Unavailable(format!("corrupt stored record: {m}")),
        }
    }
}

impl From<crate::ports::RandomError> for Error {
    fn from(e: crate::ports::RandomError) -> Self {
        Error::Unavailable(e.to_string())
    }
}

impl From<mandate_model::ModelError> for Error {
    fn from(e: mandate_model::ModelError) -> Self {
        Error::BadInput(e.to_string())
    }
}
