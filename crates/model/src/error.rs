use thiserror::Error;

/// Why a piece of input could not become a domain value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModelError {
    #[error("invalid {kind} id: {reason}")]
    InvalidId { kind: &'static str, reason: &'static str },
    #[error("invalid scope: {0}")]
    InvalidScope(String),
    #[error("invalid name: {0}")]
    InvalidName(String),
    #[error("invalid email address")]
    InvalidEmail,
    #[error("invalid resource identifier: {0}")]
    InvalidResourceIdentifier(String),
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
}
