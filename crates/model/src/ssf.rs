//! Shared Signals (OpenID SSF 1.0, CAEP 1.0): the streams receivers
//! configure and the events queued on them until delivered. A Security
//! Event Token (RFC 8417) is built from a [`QueuedEvent`] when it is sent;
//! everything it says is fixed when the event is queued.

use std::str::FromStr;

use time::OffsetDateTime;

use crate::{ModelError, ResourceId, StreamId};

/// `spec_version` of the transmitter metadata (SSF 1.0 §7.1).
pub const SPEC_VERSION: &str = "1_0";
/// RFC 8935 push delivery.
pub const PUSH_METHOD: &str = "urn:ietf:rfc:8935";
/// RFC 8936 poll delivery.
pub const POLL_METHOD: &str = "urn:ietf:rfc:8936";
/// How many undelivered events one stream holds at most. Events for a full
/// stream are not queued (the receiver falls back to the status list);
/// the bound keeps a receiver that never collects from filling the store.
pub const MAX_QUEUED_EVENTS: u64 = 10_000;
/// How many subjects one stream may have removed at once (SSF §8.1.3.3).
pub const MAX_REMOVED_SUBJECTS: u64 = 10_000;
/// The longest `opaque` subject id a receiver may add or remove.
pub const MAX_SUBJECT_ID: usize = 256;

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const SSF: &str = "https://schemas.openid.net/secevent/ssf/event-type/";

/// The event types Mandate transmits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// CAEP §3.1: a token (a session) was revoked.
    SessionRevoked,
    /// CAEP §3.5: an agent's credentials changed.
    CredentialChange,
    /// CAEP §3.2: the claims behind a person's live tokens narrowed.
    TokenClaimsChange,
    /// SSF §8.1.5: the transmitter changed the stream's status.
    StreamUpdated,
    /// SSF §8.1.4: the answer to a verification request.
    Verification,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::SessionRevoked,
        EventKind::CredentialChange,
        EventKind::TokenClaimsChange,
        EventKind::StreamUpdated,
        EventKind::Verification,
    ];

    /// The types a receiver may ask for in `events_requested`; the stream's
    /// own events (verification, stream-updated) are always delivered.
    pub const REQUESTABLE: [EventKind; 3] =
        [EventKind::SessionRevoked, EventKind::CredentialChange, EventKind::TokenClaimsChange];

    /// The short name the stores keep.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SessionRevoked => "session-revoked",
            EventKind::CredentialChange => "credential-change",
            EventKind::TokenClaimsChange => "token-claims-change",
            EventKind::StreamUpdated => "stream-updated",
            EventKind::Verification => "verification",
        }
    }

    /// The event type URI, the key in a SET's `events`.
    pub fn uri(self) -> String {
        match self {
            EventKind::StreamUpdated | EventKind::Verification => format!("{SSF}{}", self.as_str()),
            _ => format!("{CAEP}{}", self.as_str()),
        }
    }

    pub fn from_uri(uri: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.uri() == uri)
    }

    /// Its bit in an [`EventSet`].
    pub fn bit(self) -> u32 {
        match self {
            EventKind::SessionRevoked => 1,
            EventKind::CredentialChange => 2,
            EventKind::TokenClaimsChange => 4,
            EventKind::StreamUpdated => 8,
            EventKind::Verification => 16,
        }
    }
}

impl FromStr for EventKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ModelError::InvalidField { field: "event type", reason: format!("{s:?} is not one") })
    }
}

/// The requestable event types a stream delivers, as bits (the stores
/// filter on them in SQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventSet(u32);

impl EventSet {
    /// Every requestable type.
    pub fn all() -> Self {
        Self(EventKind::REQUESTABLE.iter().map(|k| k.bit()).sum())
    }

    /// The requestable types among `kinds` (others are ignored: SSF §8.1.1,
    /// `events_delivered` is what the transmitter supports of what was asked).
    pub fn of(kinds: impl IntoIterator<Item = EventKind>) -> Self {
        let mut bits = 0;
        for k in kinds {
            if EventKind::REQUESTABLE.contains(&k) {
                bits |= k.bit();
            }
        }
        Self(bits)
    }

    pub fn from_bits(bits: u32) -> Result<Self, ModelError> {
        if bits & !Self::all().0 != 0 {
            return Err(ModelError::InvalidField { field: "events", reason: format!("unknown bits in {bits}") });
        }
        Ok(Self(bits))
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn contains(self, k: EventKind) -> bool {
        self.0 & k.bit() != 0
    }

    pub fn kinds(self) -> Vec<EventKind> {
        EventKind::REQUESTABLE.into_iter().filter(|k| self.contains(*k)).collect()
    }
}

/// A stream's status (SSF §8.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamStatus {
    /// Events are queued and delivered.
    Enabled,
    /// Events are queued and held until the stream is enabled again.
    Paused,
    /// Events are not queued; those waiting are dropped.
    Disabled,
}

impl StreamStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Enabled => "enabled",
            StreamStatus::Paused => "paused",
            StreamStatus::Disabled => "disabled",
        }
    }
}

impl FromStr for StreamStatus {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "enabled" => Ok(Self::Enabled),
            "paused" => Ok(Self::Paused),
            "disabled" => Ok(Self::Disabled),
            _ => Err(ModelError::InvalidField {
                field: "status",
                reason: format!("{s:?} is not enabled, paused or disabled"),
            }),
        }
    }
}

/// Who caused an event (CAEP §2, `initiating_entity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InitiatingEntity {
    Admin,
    User,
    Policy,
    System,
}

impl InitiatingEntity {
    pub fn as_str(self) -> &'static str {
        match self {
            InitiatingEntity::Admin => "admin",
            InitiatingEntity::User => "user",
            InitiatingEntity::Policy => "policy",
            InitiatingEntity::System => "system",
        }
    }
}

impl FromStr for InitiatingEntity {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "admin" => Ok(Self::Admin),
            "user" => Ok(Self::User),
            "policy" => Ok(Self::Policy),
            "system" => Ok(Self::System),
            _ => Err(ModelError::InvalidField { field: "initiating_entity", reason: format!("{s:?}") }),
        }
    }
}

/// Why something happened, as a SET says it: `initiating_entity` and the
/// `reason_admin` text (English).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub initiating_entity: InitiatingEntity,
    pub reason: String,
}

impl Cause {
    pub fn new(initiating_entity: InitiatingEntity, reason: impl Into<String>) -> Self {
        Self { initiating_entity, reason: reason.into() }
    }
}

/// How a stream's events reach the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamDelivery {
    /// RFC 8935: Mandate POSTs each SET to `endpoint_url`, with the
    /// `Authorization` header value the receiver gave, sealed with the
    /// deployment's key-encryption key (it is sent back, so it cannot be
    /// hashed).
    Push { endpoint_url: String, sealed_authorization: Option<Vec<u8>> },
    /// RFC 8936: the receiver polls Mandate.
    Poll,
}

impl StreamDelivery {
    pub fn method(&self) -> &'static str {
        match self {
            StreamDelivery::Push { .. } => PUSH_METHOD,
            StreamDelivery::Poll => POLL_METHOD,
        }
    }
}

/// A stream as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub id: StreamId,
    /// The receiver: the registered resource that created it.
    pub resource: ResourceId,
    /// The resource's identifier: SETs' `aud`, and whose tokens' events the
    /// stream carries.
    pub audience: String,
    pub status: StreamStatus,
    pub status_reason: Option<String>,
    pub delivery: StreamDelivery,
    pub events: EventSet,
    pub description: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Consecutive failed pushes.
    pub failures: u32,
    /// When the next push may be tried.
    pub next_at: OffsetDateTime,
    pub lease_holder: Option<String>,
    pub lease_until: Option<OffsetDateTime>,
    /// When the receiver last asked for a verification event (SSF
    /// §8.1.4.2; `min_verification_interval` is measured from it).
    pub verified_at: Option<OffsetDateTime>,
}

/// One event, as it will be said in a SET. The subject is always a
/// RFC 9493 `opaque` identifier: a token's `jti`, an agent's id, a stream id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub kind: EventKind,
    pub subject: String,
    pub at: OffsetDateTime,
    pub cause: Cause,
    /// Members the event type adds (a JSON object as text), such as a
    /// verification's `state` or a credential change's `change_type`.
    pub detail: Option<String>,
}

/// An event waiting on a stream; `seq` orders a stream's events and names
/// the SET (`jti` = `{stream}.{seq}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    pub seq: u64,
    pub stream: StreamId,
    pub signal: Signal,
}

impl QueuedEvent {
    /// The SET's `jti`: unique, as stream ids are.
    pub fn jti(&self) -> String {
        format!("{}.{}", self.stream, self.seq)
    }
}

/// The `seq` a SET `jti` of `stream` names, if it names one.
pub fn seq_of(stream: StreamId, jti: &str) -> Option<u64> {
    jti.strip_prefix(&stream.to_string())?.strip_prefix('.')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_uri(&k.uri()), Some(k));
            assert_eq!(k.as_str().parse::<EventKind>().ok(), Some(k));
        }
        assert_eq!(
            EventKind::SessionRevoked.uri(),
            "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
        );
        assert_eq!(EventKind::Verification.uri(), "https://schemas.openid.net/secevent/ssf/event-type/verification");
        assert!(EventKind::from_uri("https://example.com/other").is_none());
    }

    #[test]
    fn event_sets_hold_only_requestable_types() {
        let set = EventSet::of([EventKind::SessionRevoked, EventKind::Verification]);
        assert_eq!(set.kinds(), vec![EventKind::SessionRevoked]);
        assert!(EventSet::from_bits(set.bits()).is_ok());
        assert!(EventSet::from_bits(64).is_err());
        assert_eq!(EventSet::all().kinds().len(), 3);
    }

    #[test]
    fn set_jtis_name_their_stream_and_seq() {
        let stream = StreamId::from_ulid(ulid::Ulid::from_parts(1, 2));
        let other = StreamId::from_ulid(ulid::Ulid::from_parts(1, 3));
        let e = QueuedEvent {
            seq: 42,
            stream,
            signal: Signal {
                kind: EventKind::SessionRevoked,
                subject: "tok_x".into(),
                at: OffsetDateTime::UNIX_EPOCH,
                cause: Cause::new(InitiatingEntity::Admin, "r"),
                detail: None,
            },
        };
        assert_eq!(seq_of(stream, &e.jti()), Some(42));
        assert_eq!(seq_of(other, &e.jti()), None);
        assert_eq!(seq_of(stream, &format!("{stream}.x")), None);
        assert_eq!(seq_of(stream, &format!("{stream}42")), None);
    }
}
