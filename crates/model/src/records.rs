//! The records Mandate keeps (DESIGN §1). Nothing is ever deleted: records
//! change status.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{AgentId, GrantId, Jti, ModelError, ResourceId, Scope, ScopeSet, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    Active,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub email: String,
    pub groups: Vec<String>,
    /// String attributes, exposed to Cedar as entity tags.
    pub attributes: BTreeMap<String, String>,
    pub status: UserStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(skip)]
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    Persistent,
    Ephemeral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Active,
    Suspended,
    Retired,
}

impl AgentStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Suspended => "suspended",
            AgentStatus::Retired => "retired",
        }
    }
}

impl FromStr for AgentStatus {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "active" => Ok(Self::Active),
            "suspended" => Ok(Self::Suspended),
            "retired" => Ok(Self::Retired),
            _ => Err(ModelError::InvalidField { field: "status", reason: format!("unknown agent status {s:?}") }),
        }
    }
}

/// A lifecycle move an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Suspend,
    Resume,
    Retire,
}

impl Lifecycle {
    /// The status this move leads to from `from`, or `None` when the move is
    /// not allowed. Retirement is final.
    pub fn apply(self, from: AgentStatus) -> Option<AgentStatus> {
        match (self, from) {
            (_, AgentStatus::Retired) => None,
            (Lifecycle::Suspend, AgentStatus::Active) => Some(AgentStatus::Suspended),
            (Lifecycle::Resume, AgentStatus::Suspended) => Some(AgentStatus::Active),
            (Lifecycle::Retire, _) => Some(AgentStatus::Retired),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Suspend => "suspend",
            Lifecycle::Resume => "resume",
            Lifecycle::Retire => "retire",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agent {
    pub id: AgentId,
    pub name: String,
    pub owner: UserId,
    pub kind: AgentKind,
    pub parent: Option<AgentId>,
    pub status: AgentStatus,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub description: Option<String>,
    /// The agent's own ceiling narrowing, when it was given one.
    pub scopes: Option<ScopeSet>,
    /// Public JWK set for `private_key_jwt`, as registered (already validated).
    pub jwks: Option<serde_json::Value>,
    pub redirect_uris: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// SHA-256 of the development-only client secret, hex.
    #[serde(skip)]
    pub secret_hash: Option<String>,
}

impl Agent {
    /// Whether the agent may act at `now`: active and not past its expiry.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.status == AgentStatus::Active && self.expires_at.is_none_or(|e| now < e)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    pub id: ResourceId,
    /// The absolute URI that tokens carry as `aud`.
    pub identifier: String,
    pub name: String,
    /// scope → the actions it covers; an empty list covers the action of the
    /// scope's own name.
    pub scopes: BTreeMap<String, Vec<String>>,
    pub jwks: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Resource {
    /// The actions a scope covers, or `None` when the resource has no such scope.
    pub fn actions_of(&self, scope: &Scope) -> Option<Vec<String>> {
        self.scopes
            .get(scope.as_str())
            .map(|actions| if actions.is_empty() { vec![scope.as_str().to_owned()] } else { actions.clone() })
    }

    /// Every action any scope of this resource covers.
    pub fn all_actions(&self) -> impl Iterator<Item = String> + '_ {
        self.scopes.iter().flat_map(
            |(scope, actions)| {
                if actions.is_empty() { vec![scope.clone()] } else { actions.clone() }
            },
        )
    }
}

/// Who authenticated at an OAuth endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientId {
    Agent(AgentId),
    Resource(ResourceId),
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientId::Agent(a) => a.fmt(f),
            ClientId::Resource(r) => r.fmt(f),
        }
    }
}

impl FromStr for ClientId {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        if s.starts_with("agt_") {
            s.parse().map(ClientId::Agent)
        } else if s.starts_with("res_") {
            s.parse().map(ClientId::Resource)
        } else {
            Err(ModelError::InvalidId { kind: "client", reason: "must be an agt_ or res_ id" })
        }
    }
}

/// Every access token Mandate issued, kept for revocation and introspection.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub jti: Jti,
    pub client_id: ClientId,
    /// `sub`: the user the agent acts for, or the agent itself.
    pub subject: String,
    pub audience: String,
    pub scopes: ScopeSet,
    pub grant: Option<GrantId>,
    pub parent: Option<Jti>,
    /// Agents from the first actor to the current one.
    pub chain: Vec<AgentId>,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub cnf_jkt: Option<String>,
    pub revoked_at: Option<OffsetDateTime>,
}

impl TokenRecord {
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retirement_is_final() {
        use AgentStatus::*;
        use Lifecycle::*;
        assert_eq!(Suspend.apply(Active), Some(Suspended));
        assert_eq!(Resume.apply(Suspended), Some(Active));
        assert_eq!(Retire.apply(Suspended), Some(Retired));
        assert_eq!(Retire.apply(Active), Some(Retired));
        assert_eq!(Resume.apply(Active), None);
        assert_eq!(Suspend.apply(Suspended), None);
        for op in [Suspend, Resume, Retire] {
            assert_eq!(op.apply(Retired), None);
        }
    }
}
