//! The claims of Mandate's access tokens (RFC 9068 profile, DESIGN §2).

use serde::{Deserialize, Serialize};

/// The most actors a chain may hold, checked before any policy code.
pub const MAX_ACT_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessTokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// RFC 8693 §4.4: who may act for `sub` next, when restricted (ADR 0024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<crate::actors::MayAct>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// RFC 9396 §9.1: the details the token was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<crate::details::AuthorizationDetails>,
}

/// `status` (Token Status List): where a relying party reads whether the
/// token was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub status_list: StatusListRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusListRef {
    pub idx: u64,
    pub uri: String,
}

/// RFC 8693 §4.1: the outermost `act` is the current actor, each nested one
/// the actor before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    pub fn depth(&self) -> usize {
        let mut depth = 1;
        let mut cur = self;
        while let Some(next) = &cur.act {
            depth += 1;
            cur = next;
        }
        depth
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    pub jkt: String,
}
