//! Type-prefixed ULIDs (`usr_…`, `agt_…`, …). Each kind is its own type so
//! that an agent id can never be passed where a user id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

use crate::ModelError;

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Ulid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Builds an id from a ULID minted by the caller (who owns the
            /// clock and the randomness).
            pub fn from_ulid(ulid: Ulid) -> Self {
                Self(ulid)
            }

            pub fn ulid(&self) -> Ulid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = ModelError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let rest = s
                    .strip_prefix($prefix)
                    .and_then(|r| r.strip_prefix('_'))
                    .ok_or(ModelError::InvalidId { kind: $kind, reason: concat!("must start with ", $prefix, "_") })?;
                // Crockford base32, exactly 26 characters, upper case only:
                // one spelling per id, so ids compare as strings.
                if rest.len() != 26 || !rest.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) {
                    return Err(ModelError::InvalidId { kind: $kind, reason: "not a ULID" });
                }
                Ulid::from_string(rest)
                    .map(Self)
                    .map_err(|_| ModelError::InvalidId { kind: $kind, reason: "not a ULID" })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(
    /// A human.
    UserId, "usr", "user"
);
prefixed_id!(
    /// An agent; also its OAuth `client_id`.
    AgentId, "agt", "agent"
);
prefixed_id!(
    /// A resource server; also its OAuth `client_id` when it authenticates.
    ResourceId, "res", "resource"
);
prefixed_id!(
    /// A living delegation record.
    GrantId, "grt", "grant"
);
prefixed_id!(
    /// A pending human decision.
    ApprovalId, "apr", "approval"
);
prefixed_id!(
    /// The `jti` of an access token Mandate issued.
    Jti, "tok", "token"
);
prefixed_id!(
    /// A SCIM Group; its `displayName` is a Cedar group name.
    GroupId, "grp", "group"
);
prefixed_id!(
    /// A person's own API token (not the secret, which is never stored).
    UserTokenId, "utk", "user token"
);
prefixed_id!(
    /// A Shared Signals stream (SSF 1.0 `stream_id`).
    StreamId, "sst", "stream"
);
prefixed_id!(
    /// An access review campaign (DESIGN §12).
    CampaignId, "rvc", "review campaign"
);
prefixed_id!(
    /// One item of a review campaign: a finding, to be decided.
    ReviewItemId, "rvi", "review item"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_prefixes() {
        let id = AgentId::from_ulid(Ulid::from_parts(1_700_000_000_000, 42));
        let text = id.to_string();
        assert!(text.starts_with("agt_"));
        assert_eq!(text.parse::<AgentId>(), Ok(id));
        assert!(text.parse::<UserId>().is_err());
        assert!(text.to_lowercase().parse::<AgentId>().is_err());
        assert!("agt_".parse::<AgentId>().is_err());
        assert!("agt_01HZZZZZZZZZZZZZZZZZZZZZZZ' OR 1=1".parse::<AgentId>().is_err());
    }
}
