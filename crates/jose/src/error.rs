use thiserror::Error;

/// Why a token, key or proof was refused. The messages are safe to return to
/// clients: they never echo key material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JoseError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm {0:?} is not allowed for this key")]
    AlgorithmNotAllowed(String),
    #[error("header member {0} is not accepted")]
    ForbiddenHeader(&'static str),
    #[error("token type {0:?} is not accepted here")]
    WrongType(String),
    #[error("no registered key matches the token")]
    UnknownKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("invalid claims: {0}")]
    Claims(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token lives longer than allowed")]
    LifetimeTooLong,
    #[error("audience does not match")]
    Audience,
    #[error("issuer does not match")]
    Issuer,
    #[error("invalid key: {0}")]
    Key(String),
    #[error("cryptographic operation failed")]
    Crypto,
}
