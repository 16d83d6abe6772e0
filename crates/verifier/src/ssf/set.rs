//! Security Event Tokens (RFC 8417) as Mandate's Shared Signals
//! transmitter sends them (DESIGN §11, SSF 1.0, CAEP 1.0): parsed and
//! checked strictly, before anything acts on them.
//!
//! A SET is accepted only when its header says `typ: secevent+jwt`, names a
//! `kid` of the issuer's published key set and an algorithm that key allows
//! (EdDSA, ES256, or RS256, which SETs alone may use); its claims carry
//! `iss` (the issuer), `aud` (this resource), `iat` (not in the future
//! beyond the leeway), `jti`, exactly one event, and neither `sub` nor
//! `exp` (SSF 1.0 §4.1: subjects go in `sub_id`, and SETs do not expire).

use std::collections::BTreeMap;

use mandate_jose::jws::{MAX_TOKEN_LEN, Unverified, typ_is};
use mandate_jose::{JoseError, JwkSet};
use serde::Deserialize;
use serde_json::{Map, Value};

/// RFC 8417 §2.3: the `typ` of a SET.
pub const SET_TYP: &str = "secevent+jwt";
/// RFC 8935 §2: the media type of a pushed SET.
pub const SET_MEDIA_TYPE: &str = "application/secevent+jwt";
/// Longest SET accepted, in bytes, before any decoding.
pub const MAX_SET_BYTES: usize = MAX_TOKEN_LEN;

/// CAEP 1.0 §3.1.
pub const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// CAEP 1.0 §3.2.
pub const TOKEN_CLAIMS_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/token-claims-change";
/// CAEP 1.0 §3.3.
pub const CREDENTIAL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
/// CAEP 1.0 §3.4.
pub const ASSURANCE_LEVEL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/assurance-level-change";
/// SSF 1.0 §8.1.4.1.
pub const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
/// SSF 1.0 §8.1.5.
pub const STREAM_UPDATED: &str = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated";

/// The algorithms a SET may be signed with. The key named by `kid` must
/// allow the one used, too.
const SET_ALGS: [&str; 4] = ["EdDSA", "Ed25519", "ES256", "RS256"];
/// Deepest nesting of `aliases` and complex subjects read.
const MAX_SUBJECT_DEPTH: usize = 3;

/// What kind of event a SET carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    SessionRevoked,
    TokenClaimsChange,
    CredentialChange,
    AssuranceLevelChange,
    Verification,
    StreamUpdated,
    /// An event type this SDK does not know; passed to the application.
    Other,
}

impl EventKind {
    fn of(uri: &str) -> Self {
        match uri {
            SESSION_REVOKED => Self::SessionRevoked,
            TOKEN_CLAIMS_CHANGE => Self::TokenClaimsChange,
            CREDENTIAL_CHANGE => Self::CredentialChange,
            ASSURANCE_LEVEL_CHANGE => Self::AssuranceLevelChange,
            VERIFICATION => Self::Verification,
            STREAM_UPDATED => Self::StreamUpdated,
            _ => Self::Other,
        }
    }
}

/// A Subject Identifier (RFC 9493 §3), or an SSF 1.0 §3.3 complex subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectId {
    Opaque {
        id: String,
    },
    Email {
        email: String,
    },
    PhoneNumber {
        phone_number: String,
    },
    IssSub {
        iss: String,
        sub: String,
    },
    Account {
        uri: String,
    },
    Uri {
        uri: String,
    },
    Did {
        url: String,
    },
    Aliases {
        identifiers: Vec<SubjectId>,
    },
    /// SSF complex subject: members such as `user`, `session`, `tenant`,
    /// each a subject identifier.
    Complex(BTreeMap<String, SubjectId>),
    /// A format this SDK does not know, with its members.
    Other {
        format: String,
        members: Map<String, Value>,
    },
}

impl SubjectId {
    /// Parses `sub_id`; `None` when it is not a valid identifier.
    pub fn parse(v: &Value) -> Option<Self> {
        Self::parse_at(v, 0)
    }

    fn parse_at(v: &Value, depth: usize) -> Option<Self> {
        if depth > MAX_SUBJECT_DEPTH {
            return None;
        }
        let obj = v.as_object()?;
        let text = |name: &str| obj.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        // A complex subject: every member a simple identifier. SSF 1.0 §3.3
        // marks it `"format": "complex"`; drafts before it sent no format.
        let complex = |members: &mut dyn Iterator<Item = (&String, &Value)>| {
            let mut out = BTreeMap::new();
            for (name, member) in members {
                let simple = Self::parse_at(member, depth + 1).filter(|s| !matches!(s, Self::Complex(_)))?;
                out.insert(name.clone(), simple);
            }
            (!out.is_empty()).then_some(Self::Complex(out))
        };
        let Some(format) = obj.get("format") else {
            return complex(&mut obj.iter());
        };
        Some(match format.as_str()? {
            "complex" => return complex(&mut obj.iter().filter(|(name, _)| name.as_str() != "format")),
            "opaque" => Self::Opaque { id: text("id")? },
            "email" => Self::Email { email: text("email")? },
            "phone_number" => Self::PhoneNumber { phone_number: text("phone_number")? },
            "iss_sub" => Self::IssSub { iss: text("iss")?, sub: text("sub")? },
            "account" => Self::Account { uri: text("uri")? },
            "uri" => Self::Uri { uri: text("uri")? },
            "did" => Self::Did { url: text("url")? },
            "aliases" => {
                let list = obj.get("identifiers")?.as_array()?;
                if list.is_empty() {
                    return None;
                }
                let identifiers = list
                    .iter()
                    .map(|i| Self::parse_at(i, depth + 1).filter(|s| !matches!(s, Self::Aliases { .. })))
                    .collect::<Option<Vec<_>>>()?;
                Self::Aliases { identifiers }
            }
            "" => return None,
            other => Self::Other { format: other.to_owned(), members: obj.clone() },
        })
    }

    /// The `id` of an `opaque` identifier.
    pub fn opaque_id(&self) -> Option<&str> {
        match self {
            Self::Opaque { id } => Some(id),
            _ => None,
        }
    }

    /// A complex subject's member `name` (`user`, `session`, …).
    pub fn member(&self, name: &str) -> Option<&SubjectId> {
        match self {
            Self::Complex(members) => members.get(name),
            _ => None,
        }
    }

    /// The session a subject names: a complex subject's `session`, or an
    /// `opaque` identifier itself (Mandate before the CAEP
    /// interoperability profile's formats, ADR 0039).
    pub fn session_id(&self) -> Option<&str> {
        match self {
            Self::Opaque { id } => Some(id),
            Self::Complex(_) => self.member("session").and_then(Self::opaque_id),
            _ => None,
        }
    }
}

/// A SET that verified: one event, about one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityEvent {
    pub jti: String,
    pub iss: String,
    pub iat: i64,
    /// RFC 8417 §2.2 transaction identifier, when sent.
    pub txn: Option<String>,
    /// The top-level `sub_id` (SSF 1.0 §4.1.2), when sent.
    pub subject: Option<SubjectId>,
    /// The event type URI, the key of the one member of `events`.
    pub event_type: String,
    pub kind: EventKind,
    /// The event's payload (`event_timestamp`, `reason_admin`, `state`…).
    pub payload: Map<String, Value>,
}

impl SecurityEvent {
    /// CAEP `event_timestamp`, when sent.
    pub fn event_timestamp(&self) -> Option<i64> {
        self.payload.get("event_timestamp").and_then(Value::as_i64)
    }

    /// The `state` of a verification event (SSF 1.0 §8.1.4.1).
    pub fn verification_state(&self) -> Option<&str> {
        if self.kind != EventKind::Verification {
            return None;
        }
        self.payload.get("state").and_then(Value::as_str)
    }

    /// The access token a `session-revoked` event revokes: the `jti` its
    /// subject's `session` names (`{"format": "complex", "session":
    /// {"format": "opaque", "id": "<jti>"}, "user": …}`, DESIGN §11 and
    /// ADR 0039), or a simple `opaque` subject's `id`, as Mandate sent it
    /// before.
    pub fn revoked_jti(&self) -> Option<&str> {
        if self.kind != EventKind::SessionRevoked {
            return None;
        }
        self.subject.as_ref().and_then(SubjectId::session_id)
    }
}

/// Why a SET was refused, with its RFC 8935 §2.3 error code. The message
/// is safe to send to the transmitter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// Not a well-formed SET: framing, JSON, `typ`, claims, events.
    #[error("{0}")]
    InvalidRequest(String),
    /// No usable key: unknown `kid`, an algorithm not allowed, or a
    /// signature that does not verify.
    #[error("{0}")]
    InvalidKey(String),
    #[error("the SET's issuer is not the expected one")]
    InvalidIssuer,
    #[error("the SET is not addressed to this receiver")]
    InvalidAudience,
    /// The push request's `Authorization` header is not the expected one.
    #[error("the request is not authenticated")]
    AuthenticationFailed,
    /// Something the decision depends on (the issuer's keys, room in the
    /// receiver's memory) is not available now: the transmitter should
    /// deliver it again later. Not an RFC 8935 code; pushed SETs get 503.
    #[error("{0}")]
    Unavailable(&'static str),
}

impl SetError {
    /// The RFC 8935 §2.3 `err` code, `None` for [`SetError::Unavailable`].
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::InvalidRequest(_) => Some("invalid_request"),
            Self::InvalidKey(_) => Some("invalid_key"),
            Self::InvalidIssuer => Some("invalid_issuer"),
            Self::InvalidAudience => Some("invalid_audience"),
            Self::AuthenticationFailed => Some("authentication_failed"),
            Self::Unavailable(_) => None,
        }
    }
}

fn invalid(what: &str) -> SetError {
    SetError::InvalidRequest(what.to_owned())
}

impl From<JoseError> for SetError {
    fn from(e: JoseError) -> Self {
        match e {
            JoseError::UnknownKey
            | JoseError::BadSignature
            | JoseError::AlgorithmNotAllowed(_)
            | JoseError::Key(_)
            | JoseError::Crypto => SetError::InvalidKey(e.to_string()),
            JoseError::Issuer => SetError::InvalidIssuer,
            JoseError::Audience => SetError::InvalidAudience,
            other => SetError::InvalidRequest(other.to_string()),
        }
    }
}

/// `aud`: one string or an array of them (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, aud: &str) -> bool {
        match self {
            Self::One(a) => a == aud,
            Self::Many(all) => all.iter().any(|a| a == aud),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    aud: Audience,
    iat: i64,
    jti: String,
    #[serde(default)]
    txn: Option<String>,
    #[serde(default)]
    sub_id: Option<Value>,
    /// Only to refuse a SET that carries them.
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    events: Map<String, Value>,
}

/// What a SET is checked against.
#[derive(Debug, Clone, Copy)]
pub struct SetRules<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub now: i64,
    /// Seconds `iat` may lie in the future.
    pub leeway: i64,
}

/// Verifies a SET's signature with the key its `kid` names among `keys`,
/// then its claims by `rules`.
pub fn verify(token: &str, keys: &JwkSet, rules: &SetRules<'_>) -> Result<SecurityEvent, SetError> {
    let unverified = parse(token)?;
    let kid = unverified.header.kid.as_deref().ok_or_else(|| SetError::InvalidKey("the SET names no key".into()))?;
    let key = keys
        .keys
        .iter()
        .find(|k| k.kid.as_deref() == Some(kid))
        .ok_or_else(|| SetError::InvalidKey(JoseError::UnknownKey.to_string()))?;
    unverified.verify_with(key)?;
    check(&unverified, rules)
}

/// Splits a SET and checks its header: `typ` and an allowed algorithm.
/// Nothing is trusted yet.
pub fn parse(token: &str) -> Result<Unverified<'_>, SetError> {
    if token.len() > MAX_SET_BYTES {
        return Err(invalid("the SET is too long"));
    }
    let unverified = Unverified::parse(token, false).map_err(|e| match e {
        JoseError::AlgorithmNotAllowed(_) => SetError::from(e),
        other => SetError::InvalidRequest(other.to_string()),
    })?;
    if !typ_is(unverified.header.typ.as_deref(), SET_TYP) {
        return Err(invalid("the SET's typ is not secevent+jwt"));
    }
    if !SET_ALGS.contains(&unverified.header.alg.as_str()) {
        return Err(SetError::InvalidKey(format!("algorithm {:?} is not accepted for SETs", unverified.header.alg)));
    }
    Ok(unverified)
}

/// Checks the claims of a SET whose signature verified.
pub fn check(unverified: &Unverified<'_>, rules: &SetRules<'_>) -> Result<SecurityEvent, SetError> {
    let c: Claims = serde_json::from_slice(&unverified.payload)
        .map_err(|e| SetError::InvalidRequest(format!("the SET's claims: {}", short(&e.to_string()))))?;
    if c.iss != rules.issuer {
        return Err(SetError::InvalidIssuer);
    }
    if !c.aud.contains(rules.audience) {
        return Err(SetError::InvalidAudience);
    }
    if c.iat > rules.now.saturating_add(rules.leeway) {
        return Err(invalid("the SET was issued in the future"));
    }
    if c.jti.is_empty() || c.jti.len() > 256 {
        return Err(invalid("the SET's jti is empty or too long"));
    }
    if c.sub.is_some() {
        return Err(invalid("a SET carries its subject in sub_id, never sub"));
    }
    if c.exp.is_some() {
        return Err(invalid("a SET carries no exp"));
    }
    let mut events = c.events.into_iter();
    let (Some((event_type, payload)), None) = (events.next(), events.next()) else {
        return Err(invalid("a SET carries exactly one event"));
    };
    let Value::Object(payload) = payload else {
        return Err(invalid("the event is not a JSON object"));
    };
    let subject = match &c.sub_id {
        None => None,
        Some(v) => Some(SubjectId::parse(v).ok_or_else(|| invalid("sub_id is not a subject identifier"))?),
    };
    let kind = EventKind::of(&event_type);
    if kind == EventKind::SessionRevoked && subject.is_none() {
        return Err(invalid("a session-revoked event names its subject"));
    }
    Ok(SecurityEvent { jti: c.jti, iss: c.iss, iat: c.iat, txn: c.txn, subject, event_type, kind, payload })
}

fn short(s: &str) -> String {
    s.chars().take(160).collect()
}
