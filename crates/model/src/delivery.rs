//! Messages Mandate sends on its own: CIBA ping and push callbacks to
//! agents (OpenID CIBA §10) and notices to the people asked to approve.
//! They wait in a durable outbox ([`Delivery`]) until sent or given up.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{AgentId, ApprovalId, ModelError};

/// `backchannel_token_delivery_mode` (CIBA §4): how an agent learns that a
/// request was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// The agent polls the token endpoint (the default).
    #[default]
    Poll,
    /// Mandate calls the agent's notification endpoint with the
    /// `auth_req_id`; the agent then fetches the token as in poll mode.
    Ping,
    /// Mandate sends the token response itself; the agent may not poll.
    Push,
}

impl DeliveryMode {
    pub const ALL: [DeliveryMode; 3] = [DeliveryMode::Poll, DeliveryMode::Ping, DeliveryMode::Push];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::Poll => "poll",
            DeliveryMode::Ping => "ping",
            DeliveryMode::Push => "push",
        }
    }
}

impl FromStr for DeliveryMode {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "poll" => Ok(Self::Poll),
            "ping" => Ok(Self::Ping),
            "push" => Ok(Self::Push),
            _ => Err(ModelError::InvalidField {
                field: "backchannel_token_delivery_mode",
                reason: format!("{s:?} is not poll, ping or push"),
            }),
        }
    }
}

/// An agent's CIBA delivery registration: the mode and, for ping and push,
/// the `backchannel_client_notification_endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Backchannel {
    pub mode: DeliveryMode,
    pub endpoint: Option<String>,
}

/// What a CIBA request in ping or push mode needs at its decision: where
/// to call and the `client_notification_token` to present, sealed with
/// the deployment's key-encryption key (it must be sent back as a bearer
/// token, so it cannot be hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CibaCallback {
    pub approval: ApprovalId,
    pub agent: AgentId,
    pub mode: DeliveryMode,
    pub endpoint: String,
    pub sealed_token: Vec<u8>,
}

/// Where an outbox item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (or being attempted, under a lease).
    Pending,
    Delivered,
    /// Every attempt failed; it is not tried again.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

impl FromStr for DeliveryStatus {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "pending" => Ok(Self::Pending),
            "delivered" => Ok(Self::Delivered),
            "failed" => Ok(Self::Failed),
            _ => Err(ModelError::InvalidField { field: "status", reason: format!("unknown delivery status {s:?}") }),
        }
    }
}

/// One message in the outbox. Its content is sealed with the
/// key-encryption key (a push carries tokens, a ping a bearer token); the
/// other fields say nothing secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `dlv_` and a ULID.
    pub id: String,
    /// Which sender takes it: `ciba.ping`, `ciba.push`, or a notifier's
    /// name (`webhook`, `email`).
    pub channel: String,
    /// What it is about (an approval id).
    pub about: String,
    /// Where it goes, for the record: a URL without its query, or
    /// recipients' ids.
    pub target: String,
    pub sealed: Vec<u8>,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it may next be attempted.
    pub next_at: OffsetDateTime,
    /// The node attempting it, until `lease_until`.
    pub lease_holder: Option<String>,
    pub lease_until: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_statuses_read_back_what_they_write() {
        for m in DeliveryMode::ALL {
            assert_eq!(m.as_str().parse::<DeliveryMode>().ok(), Some(m));
        }
        for s in [DeliveryStatus::Pending, DeliveryStatus::Delivered, DeliveryStatus::Failed] {
            assert_eq!(s.as_str().parse::<DeliveryStatus>().ok(), Some(s));
        }
        assert!("Push".parse::<DeliveryMode>().is_err());
        assert!("".parse::<DeliveryStatus>().is_err());
    }
}
