//! Mandate's pure domain: identifiers, scopes, names and the records the
//! server keeps. No I/O, no clock, no randomness: callers pass those in.

pub mod actors;
pub mod claims;
pub mod delegation;
pub mod delivery;
pub mod details;
pub mod error;
pub mod id;
pub mod json;
pub mod limits;
pub mod name;
pub mod records;
pub mod review;
pub mod scope;
pub mod ssf;

pub use error::ModelError;
pub use id::{
    AgentId, ApprovalId, CampaignId, GrantId, GroupId, Jti, ResourceId, ReviewItemId, StreamId, UserId, UserTokenId,
};
pub use scope::{Scope, ScopeSet};
