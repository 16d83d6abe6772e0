//! Mandate's use cases and the ports they need. No HTTP, no SQL: the
//! server crate speaks HTTP and the store crates implement [`Store`].

pub mod audit;
pub mod authorize;
pub mod cache;
pub mod config;
pub mod error;
pub mod ports;
pub mod secrets;
pub mod service;
pub mod store;

mod admin;
pub mod campaigns;
pub mod chain;
mod check;
pub mod delegation;
pub mod delivery;
pub mod details;
pub mod dpop;
pub mod federation;
pub mod footprint;
pub mod inventory;
mod keyring;
pub mod limits;
mod oauth;
pub mod policy_history;
pub mod policy_test;
pub mod refusals;
pub mod registration;
pub mod report;
pub mod request;
pub mod review;
pub mod scim;
pub mod session;
pub mod ssf;
pub mod status;
#[cfg(test)]
mod testing;
pub mod trust;

pub use audit::{AuditQuery, AuditRecord, TrailReport};
pub use check::{CheckAnswer, CheckRequest, CheckedResource, Checker};
pub use config::Config;
pub use delegation::{Approvers, BcAuthorized};
pub use error::Error;
pub use oauth::{
    ActiveToken, ClientCredentials, Endpoint, IntrospectedClaims, Introspection, IssuedToken, TokenCaller,
};
pub use ports::{Clock, ManualClock, Random, SystemClock, SystemRandom};
pub use request::{BadGrant, BcAuthorizeRequest, ExchangeRequest, GrantRequest, GrantType, Malformed, TokenRequest};
pub use service::{AuthenticatedClient, Caller, Mandate, SigningKeyInfo};
pub use store::{Applied, Change, Handle, KeyUse, MemoryStore, Mutation, Receipt, Store, StoreError, StoredKey};

pub use admin::{AgentPatch, Cascade, NewAgent, NewResource, NewUser, NewUserToken, UserPatch};
