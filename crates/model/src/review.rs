//! Access review campaigns (DESIGN §12, ADR 0033): a campaign turns the
//! findings of a scope into items, each assigned to the owner accountable
//! for its subject, who decides keep, narrow or revoke before a deadline.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::{CampaignId, ModelError, ReviewItemId, UserId};

/// Which findings a campaign covers: every finding matching all the
/// filters given (`{}`: everything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignScope {
    /// Findings whose accountable owner is this person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserId>,
    /// Findings about grants for this resource identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// What an undecided item becomes at the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignDefault {
    Keep,
    Revoke,
}

impl CampaignDefault {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignDefault::Keep => "keep",
            CampaignDefault::Revoke => "revoke",
        }
    }

    /// The decision it stands for.
    pub fn decision(self) -> Decision {
        match self {
            CampaignDefault::Keep => Decision::Keep,
            CampaignDefault::Revoke => Decision::Revoke,
        }
    }
}

impl FromStr for CampaignDefault {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "keep" => Ok(Self::Keep),
            "revoke" => Ok(Self::Revoke),
            _ => Err(ModelError::InvalidField { field: "default", reason: "must be keep or revoke".into() }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignStatus {
    Open,
    Closed,
}

impl CampaignStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Open => "open",
            CampaignStatus::Closed => "closed",
        }
    }
}

impl FromStr for CampaignStatus {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            _ => Err(ModelError::InvalidField { field: "status", reason: "must be open or closed".into() }),
        }
    }
}

/// A review campaign as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Campaign {
    pub id: CampaignId,
    pub scope: CampaignScope,
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
    pub default: CampaignDefault,
    /// `admin` or the `usr_…` id of the auditor who started it.
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub status: CampaignStatus,
    #[serde(with = "time::serde::rfc3339::option")]
    pub closed_at: Option<OffsetDateTime>,
}

/// A reviewer's decision on an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Keep,
    Narrow,
    Revoke,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Keep => "keep",
            Decision::Narrow => "narrow",
            Decision::Revoke => "revoke",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Decision {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "keep" => Ok(Self::Keep),
            "narrow" => Ok(Self::Narrow),
            "revoke" => Ok(Self::Revoke),
            _ => Err(ModelError::InvalidField { field: "decision", reason: "must be keep, narrow or revoke".into() }),
        }
    }
}

/// The suggested action of a finding, as it was when the campaign began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuggestionSnapshot {
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<Vec<String>>,
}

/// A finding as it was when the campaign began: what the reviewer decides
/// on, kept even after the records change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingSnapshot {
    /// The finding's stable id (`fnd_…`).
    pub id: String,
    pub kind: String,
    /// The agent (`agt_…`) or grant (`grt_…`) it is about.
    pub subject: String,
    pub evidence: Value,
    pub suggestion: SuggestionSnapshot,
}

/// What applying a decision did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// In words: `kept`, `grant revoked`, `agent retired`, `grant narrowed`…
    pub applied: String,
    /// Tokens revoked by the cascade.
    #[serde(default)]
    pub tokens: u64,
    /// Grants revoked by the cascade.
    #[serde(default)]
    pub grants: u64,
    /// Ephemeral descendants retired with an agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
    /// The scopes left after a narrowing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

/// One item of a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewItem {
    pub id: ReviewItemId,
    pub campaign: CampaignId,
    pub finding: FindingSnapshot,
    /// The person accountable for the subject: the agent's owner.
    pub assignee: UserId,
    pub decision: Option<Decision>,
    /// `admin`, a `usr_…` id, or `deadline` (the campaign's default).
    pub decided_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    pub outcome: Option<Outcome>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for d in [Decision::Keep, Decision::Narrow, Decision::Revoke] {
            assert_eq!(d.as_str().parse::<Decision>().ok(), Some(d));
        }
        for d in [CampaignDefault::Keep, CampaignDefault::Revoke] {
            assert_eq!(d.as_str().parse::<CampaignDefault>().ok(), Some(d));
        }
        assert!("narrow".parse::<CampaignDefault>().is_err());
        assert!("Keep".parse::<Decision>().is_err());
        assert_eq!("closed".parse::<CampaignStatus>().ok(), Some(CampaignStatus::Closed));
    }

    #[test]
    fn a_scope_names_only_owner_and_resource() {
        assert!(serde_json::from_str::<CampaignScope>(r#"{"agent":"agt_x"}"#).is_err());
        let s: Result<CampaignScope, _> = serde_json::from_str("{}");
        assert_eq!(s.ok(), Some(CampaignScope::default()));
    }
}
