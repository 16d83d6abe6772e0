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
/// The longest `opaque` subject id (or `iss_sub` `sub`) a receiver may add
/// or remove.
pub const MAX_SUBJECT_ID: usize = 256;
/// The longest `iss_sub` `iss` a receiver may add or remove.
pub const MAX_ISSUER: usize = 2048;

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

/// One event, as it will be said in a SET. `subject` is Mandate's id of
/// what the event is about (a token's `jti`, an agent's or a person's id, a
/// stream id): the key `subjects:remove` filters on. The SET names it in
/// the formats of the CAEP interoperability profile ([`Signal::sub_id`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub kind: EventKind,
    pub subject: String,
    /// For `session-revoked`, the revoked token's `sub` (the person it was
    /// issued for, or the agent acting for itself), kept when the event is
    /// queued; `None` for other kinds, and for an event whose token was
    /// gone when the column was added.
    pub principal: Option<String>,
    pub at: OffsetDateTime,
    pub cause: Cause,
    /// Members the event type adds (a JSON object as text), such as a
    /// verification's `state` or a credential change's `change_type`.
    pub detail: Option<String>,
}

impl Signal {
    /// The SET's `sub_id` (SSF 1.0 §4.1.2, RFC 9493), in the formats the
    /// CAEP interoperability profile (§2.5, "Event Subjects") names: `opaque`
    /// for the stream's own events only, `iss_sub` for the principals of
    /// the others, under Mandate's `issuer` (the `iss` and `sub` of the
    /// principal's access tokens).
    ///
    /// - `session-revoked`: a complex subject (SSF §3.3): `session` the
    ///   token (`opaque`, its `jti`) and `user` its `sub` (`iss_sub`).
    /// - `credential-change` (an agent) and `token-claims-change` (a
    ///   person): `iss_sub`.
    /// - `verification` and `stream-updated`: `opaque`, the stream id (SSF
    ///   §8.1.4.1 and §8.1.5 require it).
    pub fn sub_id(&self, issuer: &str) -> serde_json::Value {
        use serde_json::json;
        let iss_sub = |sub: &str| json!({ "format": "iss_sub", "iss": issuer, "sub": sub });
        match self.kind {
            EventKind::SessionRevoked => {
                let mut complex = serde_json::Map::new();
                complex.insert("format".into(), json!("complex"));
                complex.insert("session".into(), json!({ "format": "opaque", "id": self.subject }));
                if let Some(principal) = &self.principal {
                    complex.insert("user".into(), iss_sub(principal));
                }
                serde_json::Value::Object(complex)
            }
            EventKind::CredentialChange | EventKind::TokenClaimsChange => iss_sub(&self.subject),
            EventKind::StreamUpdated | EventKind::Verification => json!({ "format": "opaque", "id": self.subject }),
        }
    }
}

/// A subject a receiver names in `subjects:add` or `subjects:remove` (SSF
/// 1.0 §8.1.3), parsed strictly: a simple subject has exactly the members
/// of its RFC 9493 format, a complex one (SSF §3.3) simple subjects as
/// members. Formats and members Mandate's events never carry parse as
/// [`SubjectClaim::Unrecognized`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectClaim {
    /// RFC 9493 §3.2.4: one of Mandate's ids (a token's `jti`, an agent,
    /// a person, a grant).
    Opaque(String),
    /// RFC 9493 §3.2.2: an address, in the one spelling Mandate stores
    /// people's addresses in (as sent when it has none: no person has it).
    Email(String),
    /// RFC 9493 §3.2.5: an issuer and a subject at it (Mandate's, or an
    /// upstream identity provider's).
    IssSub { iss: String, sub: String },
    /// SSF §3.3 with the members Mandate's events carry: the `user` (any
    /// simple subject above) and the `session` (an `opaque` token `jti`).
    Complex { user: Option<Box<SubjectClaim>>, session: Option<String> },
    /// Well formed, but not something Mandate's events name: another
    /// format, a complex subject with other members. Says why.
    Unrecognized(String),
}

impl SubjectClaim {
    /// Parses a receiver's `subject`.
    pub fn parse(v: &serde_json::Value) -> Result<Self, ModelError> {
        Self::parse_at(v, false)
    }

    fn parse_at(v: &serde_json::Value, in_complex: bool) -> Result<Self, ModelError> {
        let bad = |reason: String| ModelError::InvalidField { field: "subject", reason };
        let obj = v.as_object().ok_or_else(|| bad("it is not an RFC 9493 subject identifier (an object)".into()))?;
        let format = obj
            .get("format")
            .and_then(serde_json::Value::as_str)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| bad("it has no format (RFC 9493 §3)".into()))?;
        // RFC 9493 §3: exactly the members the format defines.
        let members = |names: &[&str]| -> Result<Vec<&str>, ModelError> {
            if obj.len() != names.len() + 1 {
                return Err(bad(format!("a {format} subject has exactly format and {}", names.join(" and "))));
            }
            names
                .iter()
                .map(|n| {
                    obj.get(*n)
                        .and_then(serde_json::Value::as_str)
                        .ok_or_else(|| bad(format!("a {format} subject's {n} is a string")))
                })
                .collect()
        };
        match format {
            "opaque" => {
                let m = members(&["id"])?;
                let id = m.first().copied().unwrap_or_default();
                Ok(Self::Opaque(subject_id("an opaque id", id)?))
            }
            "email" => {
                let m = members(&["email"])?;
                let email = m.first().copied().unwrap_or_default();
                // RFC 9493 §3.2.2: an RFC 5322 addr-spec, without display
                // text or a domain literal.
                let options = email_address::Options::default().without_display_text().without_domain_literal();
                email_address::EmailAddress::parse_with_options(email, options)
                    .map_err(|e| bad(format!("the email is not an RFC 5322 address: {e}")))?;
                // An address Mandate cannot store (`root@localhost`, a
                // quoted local part) is kept as sent: it names no one.
                Ok(Self::Email(crate::name::validate_email(email).unwrap_or_else(|_| email.to_owned())))
            }
            "iss_sub" => {
                let m = members(&["iss", "sub"])?;
                let (iss, sub) = (m.first().copied().unwrap_or_default(), m.get(1).copied().unwrap_or_default());
                Ok(Self::IssSub { iss: issuer_url(iss)?, sub: subject_id("an iss_sub sub", sub)? })
            }
            "complex" if in_complex => Err(bad("a complex subject's members are simple subjects".into())),
            "complex" => {
                if obj.len() < 2 {
                    return Err(bad("a complex subject has at least one member".into()));
                }
                let (mut user, mut session, mut other) = (None, None, None);
                for (name, member) in obj.iter().filter(|(n, _)| n.as_str() != "format") {
                    let parsed = Self::parse_at(member, true)?;
                    match (name.as_str(), parsed) {
                        ("user", u) => user = Some(Box::new(u)),
                        ("session", Self::Opaque(jti)) => session = Some(jti),
                        ("session", _) => other = Some("session that is not opaque".to_owned()),
                        (n, _) => other = Some(n.to_owned()),
                    }
                }
                Ok(match other {
                    Some(n) => Self::Unrecognized(format!("Mandate's complex subjects have no member {n}")),
                    None => Self::Complex { user, session },
                })
            }
            other => Ok(Self::Unrecognized(format!("Mandate's events name no subject in format {other}"))),
        }
    }
}

/// An `opaque` id or an `iss_sub` `sub`: 1 to [`MAX_SUBJECT_ID`]
/// characters, without control characters.
fn subject_id(what: &str, id: &str) -> Result<String, ModelError> {
    if id.is_empty() || id.chars().count() > MAX_SUBJECT_ID || id.chars().any(char::is_control) {
        return Err(ModelError::InvalidField {
            field: "subject",
            reason: format!("{what} is 1 to {MAX_SUBJECT_ID} characters, without control characters"),
        });
    }
    Ok(id.to_owned())
}

/// An `iss_sub` `iss`: an issuer identifier, an absolute `https` (or
/// `http`) URL with a host and no fragment (OpenID Connect Discovery §2,
/// RFC 8414 §2). Kept as sent: issuers are compared as strings.
fn issuer_url(iss: &str) -> Result<String, ModelError> {
    let bad = |reason: &str| ModelError::InvalidField { field: "subject", reason: format!("the iss_sub iss {reason}") };
    if iss.len() > MAX_ISSUER {
        return Err(bad(&format!("is longer than {MAX_ISSUER} bytes")));
    }
    let url = url::Url::parse(iss).map_err(|_| bad("is not a URL"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad("is not an http(s) URL with a host"));
    }
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(bad("has a fragment or user information"));
    }
    Ok(iss.to_owned())
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
                principal: None,
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

    fn signal(kind: EventKind, subject: &str, principal: Option<&str>) -> Signal {
        Signal {
            kind,
            subject: subject.into(),
            principal: principal.map(str::to_owned),
            at: OffsetDateTime::UNIX_EPOCH,
            cause: Cause::new(InitiatingEntity::Admin, "r"),
            detail: None,
        }
    }

    #[test]
    fn sets_name_principals_as_the_interoperability_profile_asks() {
        use serde_json::json;
        let iss = "https://mandate.example";
        assert_eq!(
            signal(EventKind::SessionRevoked, "tok_1", Some("usr_1")).sub_id(iss),
            json!({
                "format": "complex",
                "session": {"format": "opaque", "id": "tok_1"},
                "user": {"format": "iss_sub", "iss": iss, "sub": "usr_1"},
            })
        );
        // An event queued before the token's `sub` was kept names the session.
        assert_eq!(
            signal(EventKind::SessionRevoked, "tok_1", None).sub_id(iss),
            json!({"format": "complex", "session": {"format": "opaque", "id": "tok_1"}})
        );
        assert_eq!(
            signal(EventKind::CredentialChange, "agt_1", None).sub_id(iss),
            json!({"format": "iss_sub", "iss": iss, "sub": "agt_1"})
        );
        assert_eq!(
            signal(EventKind::TokenClaimsChange, "usr_1", None).sub_id(iss),
            json!({"format": "iss_sub", "iss": iss, "sub": "usr_1"})
        );
        for k in [EventKind::Verification, EventKind::StreamUpdated] {
            assert_eq!(signal(k, "sst_1", None).sub_id(iss), json!({"format": "opaque", "id": "sst_1"}));
        }
    }

    #[test]
    fn receivers_subjects_parse_strictly() {
        use serde_json::json;
        let ok = |v: serde_json::Value| SubjectClaim::parse(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(ok(json!({"format": "opaque", "id": "usr_1"})), SubjectClaim::Opaque("usr_1".into()));
        // The stored spelling: what people are looked up by.
        assert_eq!(
            ok(json!({"format": "email", "email": "Alice@Example.COM"})),
            SubjectClaim::Email("alice@example.com".into())
        );
        assert_eq!(
            ok(json!({"format": "iss_sub", "iss": "https://idp.example/t/1", "sub": "99beb27c"})),
            SubjectClaim::IssSub { iss: "https://idp.example/t/1".into(), sub: "99beb27c".into() }
        );
        assert_eq!(
            ok(json!({
                "format": "complex",
                "user": {"format": "email", "email": "a@example.com"},
                "session": {"format": "opaque", "id": "tok_1"},
            })),
            SubjectClaim::Complex {
                user: Some(Box::new(SubjectClaim::Email("a@example.com".into()))),
                session: Some("tok_1".into()),
            }
        );
        assert_eq!(
            ok(json!({"format": "complex", "session": {"format": "opaque", "id": "tok_1"}})),
            SubjectClaim::Complex { user: None, session: Some("tok_1".into()) }
        );
        // Well formed, not what Mandate's events name.
        for v in [
            json!({"format": "phone_number", "phone_number": "+12065550100"}),
            json!({"format": "complex", "tenant": {"format": "opaque", "id": "t1"}}),
            json!({"format": "complex", "user": {"format": "opaque", "id": "u"}, "device": {"format": "opaque", "id": "d"}}),
            json!({"format": "complex", "session": {"format": "email", "email": "a@example.com"}}),
        ] {
            assert!(matches!(ok(v.clone()), SubjectClaim::Unrecognized(_)), "{v}");
        }
        // RFC 5322 allows them; Mandate stores no such address: as sent,
        // they name no one.
        for a in ["\"a b\"@example.com", "root@localhost"] {
            assert_eq!(ok(json!({"format": "email", "email": a})), SubjectClaim::Email(a.into()));
        }
        // Malformed: refused.
        for v in [
            json!("alice@example.com"),
            json!({"id": "x"}),
            json!({"format": "", "id": "x"}),
            json!({"format": 1, "id": "x"}),
            json!({"format": "opaque", "id": ""}),
            json!({"format": "opaque", "id": "x".repeat(MAX_SUBJECT_ID + 1)}),
            json!({"format": "opaque", "id": "a\nb"}),
            json!({"format": "opaque", "id": 7}),
            json!({"format": "opaque", "id": "x", "extra": 1}),
            json!({"format": "email"}),
            json!({"format": "email", "email": "not an address"}),
            json!({"format": "email", "email": "a@@example.com"}),
            json!({"format": "email", "email": "Alice <a@example.com>"}),
            json!({"format": "email", "email": "a@[192.0.2.1]"}),
            json!({"format": "email", "email": "a@example.com", "id": "x"}),
            json!({"format": "iss_sub", "iss": "https://idp.example"}),
            json!({"format": "iss_sub", "iss": "idp.example", "sub": "1"}),
            json!({"format": "iss_sub", "iss": "urn:example:idp", "sub": "1"}),
            json!({"format": "iss_sub", "iss": "ftp://idp.example", "sub": "1"}),
            json!({"format": "iss_sub", "iss": "https://idp.example#x", "sub": "1"}),
            json!({"format": "iss_sub", "iss": "https://u:p@idp.example", "sub": "1"}),
            json!({"format": "iss_sub", "iss": format!("https://idp.example/{}", "x".repeat(MAX_ISSUER)), "sub": "1"}),
            json!({"format": "iss_sub", "iss": "https://idp.example", "sub": ""}),
            json!({"format": "iss_sub", "iss": "https://idp.example", "sub": "1", "email": "a@example.com"}),
            json!({"format": "complex"}),
            json!({"format": "complex", "user": "usr_1"}),
            json!({"format": "complex", "user": {"format": "opaque"}}),
            json!({"format": "complex", "user": {"format": "complex", "session": {"format": "opaque", "id": "t"}}}),
        ] {
            assert!(SubjectClaim::parse(&v).is_err(), "accepted {v}");
        }
    }
}
