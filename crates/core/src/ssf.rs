//! The Shared Signals transmitter (OpenID SSF 1.0, CAEP 1.0; DESIGN §11,
//! ADR 0028). Registered resources are the receivers: with a
//! `client_credentials` token for `ssf.manage` or `ssf.read` on the issuer
//! they create and manage streams of events about their own audience.
//!
//! Events are queued by mutations of the change that causes them
//! ([`Mutation::SignalRevocations`] beside every revocation,
//! [`Mutation::SignalHolders`] and [`Mutation::SignalStream`]), so an event
//! is never lost nor sent for something that did not commit. A SET is
//! built from the stored event when it is sent, and signed then with the
//! current key; its `jti` and content are fixed when it is queued. Push
//! streams are worked by [`Mandate::push_due`] under a lease per stream,
//! one event at a time in `seq` order; poll streams are read and
//! acknowledged by the receiver (RFC 8936).

use std::collections::BTreeMap;
use std::sync::Arc;

use mandate_model::ssf::{
    Cause, EventKind, EventSet, InitiatingEntity, QueuedEvent, Signal, Stream, StreamDelivery, StreamStatus,
    SubjectClaim,
};
use mandate_model::{AgentId, Jti, ResourceId, StreamId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::Error;
use crate::audit::{ALLOW, AuditRecord, kind};
use crate::ports::new_ulid;
use crate::service::Mandate;
use crate::store::{Change, Mutation, Receipt, StoreError};

/// The scope that creates, changes and deletes streams.
pub const MANAGE_SCOPE: &str = "ssf.manage";
/// The scope that reads streams and polls their events.
pub const READ_SCOPE: &str = "ssf.read";
/// Streams one receiver may have at once.
pub const MAX_STREAMS: usize = 8;
/// Consecutive failed pushes after which a stream is paused.
pub const MAX_PUSH_FAILURES: u32 = 5;
/// The wait after failed push n (1-based), seconds: the stream pauses on
/// the fifth failure, about 40 s after the first.
const PUSH_BACKOFF: [i64; 4] = [2, 5, 10, 20];
/// How long a node holds a stream while it pushes one event.
pub const PUSH_LEASE_SECONDS: i64 = 30;
/// Streams one pass of the push worker takes.
pub const PUSH_BATCH: u32 = 16;
/// Events one push pass sends on a stream before it lets others go.
pub const PUSH_PER_STREAM: usize = 64;
/// The most SETs one poll returns (RFC 8936 `maxEvents` is capped here).
pub const MAX_POLL_EVENTS: u32 = 100;
/// Longest `description`, `reason` and verification `state`.
pub const MAX_TEXT: usize = 256;
/// Longest push `authorization_header`.
pub const MAX_AUTHORIZATION: usize = 1024;
/// Longest push `endpoint_url`.
pub const MAX_URL: usize = 2048;
/// SSF §8.1.1 `min_verification_interval`: seconds a receiver waits
/// between two verification requests on one stream (429 sooner).
pub const MIN_VERIFICATION_INTERVAL: i64 = 15;
/// How often a long poll looks again for events queued by other nodes
/// (its own node's wake it at once).
const LONG_POLL_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Which scope an SSF call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Manage,
}

/// A receiver that authenticated: the resource whose streams it may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    pub resource: ResourceId,
    /// The resource's identifier: its streams' audience.
    pub audience: String,
}

/// A stream configuration as a receiver sends it (SSF §8.1.1). The
/// transmitter-supplied members are accepted and ignored, as SSF lets a
/// receiver send back what it read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamRequest {
    #[serde(default)]
    pub stream_id: Option<String>,
    #[serde(default)]
    pub delivery: Option<DeliveryRequest>,
    #[serde(default)]
    pub events_requested: Option<Vec<String>>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryRequest {
    pub method: String,
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub authorization_header: Option<String>,
}

/// A stream as a receiver reads it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamConfig {
    pub stream_id: String,
    pub iss: String,
    pub aud: String,
    pub delivery: DeliveryConfig,
    pub events_supported: Vec<String>,
    pub events_requested: Vec<String>,
    pub events_delivered: Vec<String>,
    /// SSF §8.1.1: seconds between verification requests.
    pub min_verification_interval: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `delivery` as read back: never the push `authorization_header`.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryConfig {
    pub method: String,
    pub endpoint_url: String,
}

/// `GET` and `POST /ssf/status` (SSF §8.1.2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamStatusBody {
    pub stream_id: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /ssf/verify` (SSF §8.1.4.2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub stream_id: String,
    #[serde(default)]
    pub state: Option<String>,
}

/// `POST /ssf/subjects:add` and `:remove` (SSF §8.1.3).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectRequest {
    pub stream_id: String,
    pub subject: Value,
    #[serde(default)]
    pub verified: Option<bool>,
}

/// An RFC 8936 poll request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    #[serde(default, rename = "maxEvents")]
    pub max_events: Option<u32>,
    #[serde(default, rename = "returnImmediately")]
    pub return_immediately: Option<bool>,
    #[serde(default)]
    pub ack: Vec<String>,
    #[serde(default, rename = "setErrs")]
    pub set_errs: BTreeMap<String, Value>,
}

/// An RFC 8936 poll response.
#[derive(Debug, Clone, Serialize)]
pub struct PollResponse {
    pub sets: BTreeMap<String, String>,
    #[serde(rename = "moreAvailable")]
    pub more_available: bool,
}

/// Why a push failed, from the receiver's side of RFC 8935.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushFailure {
    /// The receiver refused this SET (HTTP 400, RFC 8935 §2.3): sending it
    /// again will not change that, so it is dropped and the stream goes on.
    Rejected(String),
    /// The receiver could not be reached or failed: tried again later.
    Unreachable(String),
    /// The endpoint is not allowed (the SSRF rules): the stream is paused.
    Refused(String),
}

/// Sends SETs to push receivers (RFC 8935) through the SSRF guards.
#[async_trait::async_trait]
pub trait SetPusher: Send + Sync + 'static {
    /// The checks made before any I/O, when a receiver names its endpoint.
    fn check_url(&self, url: &str) -> Result<(), String>;
    /// POSTs `set` as `application/secevent+jwt` with the `Authorization`
    /// value given; 202 (or any 2xx) is a delivery.
    async fn push(&self, url: &str, authorization: Option<&str>, set: &str) -> Result<(), PushFailure>;
}

/// CAEP `credential-change` about `agent`, to every stream of an audience
/// it holds live tokens for. Its keys are public-key credentials
/// (`credential_type` `x509` is CAEP's nearest kind); they were updated.
pub(crate) fn credential_change(agent: mandate_model::AgentId, at: OffsetDateTime, cause: Cause) -> Mutation {
    Mutation::SignalHolders {
        holder: agent.to_string(),
        signal: Signal {
            kind: EventKind::CredentialChange,
            subject: agent.to_string(),
            principal: None,
            at,
            cause,
            detail: Some(json!({ "credential_type": "x509", "change_type": "update" }).to_string()),
        },
    }
}

/// The wait after `failures` consecutive failed pushes.
pub fn push_backoff(failures: u32) -> Duration {
    let i = usize::try_from(failures.saturating_sub(1)).unwrap_or(usize::MAX).min(PUSH_BACKOFF.len() - 1);
    Duration::seconds(PUSH_BACKOFF.get(i).copied().unwrap_or(20))
}

fn sealing_context(stream: StreamId) -> Vec<u8> {
    format!("mandate ssf push authorization {stream}").into_bytes()
}

fn text(field: &str, v: Option<String>, max: usize) -> Result<Option<String>, Error> {
    match v {
        Some(s) if s.chars().count() > max || s.chars().any(char::is_control) => {
            Err(Error::BadInput(format!("{field} must be at most {max} characters, without control characters")))
        }
        other => Ok(other),
    }
}

fn parse_stream_id(raw: &str) -> Result<StreamId, Error> {
    raw.parse().map_err(|_| Error::NotFound("no such stream".into()))
}

impl Mandate {
    /// Sets the sender of pushed SETs (once).
    pub fn set_set_pusher(&self, pusher: Arc<dyn SetPusher>) {
        let _ = self.set_pusher.set(pusher);
    }

    /// Woken when this node queued events, so that pushes go out at once.
    pub fn signals_queued(&self) -> &tokio::sync::Notify {
        &self.signals
    }

    /// Commits a change that may queue events, and wakes the push worker.
    pub(crate) async fn commit_signalling(&self, change: Change) -> Result<Receipt, StoreError> {
        let receipt = self.store.commit(change).await?;
        self.wake_signal_readers();
        Ok(receipt)
    }

    /// Wakes this node's push worker and its waiting long polls: events may
    /// have been queued.
    pub(crate) fn wake_signal_readers(&self) {
        self.signals.notify_one();
        self.polls.notify_waiters();
    }

    /// `GET /.well-known/ssf-configuration` (SSF §7.1).
    pub fn ssf_configuration(&self) -> Value {
        let iss = &self.config.issuer;
        json!({
            "spec_version": mandate_model::ssf::SPEC_VERSION,
            "issuer": iss,
            "jwks_uri": format!("{iss}/jwks.json"),
            "delivery_methods_supported": [mandate_model::ssf::PUSH_METHOD, mandate_model::ssf::POLL_METHOD],
            "configuration_endpoint": format!("{iss}/ssf/streams"),
            "status_endpoint": format!("{iss}/ssf/status"),
            "verification_endpoint": format!("{iss}/ssf/verify"),
            "add_subject_endpoint": format!("{iss}/ssf/subjects:add"),
            "remove_subject_endpoint": format!("{iss}/ssf/subjects:remove"),
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
            "default_subjects": "ALL",
        })
    }

    /// Authenticates a receiver: an access token a registered resource got
    /// by `client_credentials` on the issuer, carrying `ssf.manage` (which
    /// also reads) or, for reads, `ssf.read`.
    pub async fn authenticate_receiver(
        &self,
        bearer: &str,
        proof: Option<&str>,
        path: &str,
        need: Need,
    ) -> Result<Receiver, Error> {
        if bearer.split('.').count() != 3 {
            return Err(Error::Unauthenticated);
        }
        let live = self.live_chain(bearer).await?.map_err(|_| Error::Unauthenticated)?;
        if let Err(why) = self.sender_constrained(bearer, live.claims.cnf.as_ref(), proof, path).await {
            self.record_admin_refusal(kind::ADMIN_AUTH_FAILED, None, &format!("ssf: {why}")).await?;
            return Err(Error::Unauthenticated);
        }
        let mandate_model::records::ClientId::Resource(rid) = live.record.client_id else {
            return Err(Error::Forbidden("only a registered resource may manage Shared Signals streams".into()));
        };
        if live.claims.aud != self.config.issuer || live.chain.is_some() {
            return Err(Error::Forbidden("the token is not for the issuer".into()));
        }
        let has = |s: &str| live.record.scopes.iter().any(|x| x.as_str() == s);
        let allowed = match need {
            Need::Manage => has(MANAGE_SCOPE),
            Need::Read => has(MANAGE_SCOPE) || has(READ_SCOPE),
        };
        if !allowed {
            return Err(Error::Forbidden(format!(
                "the token does not carry {}",
                if need == Need::Manage { MANAGE_SCOPE } else { READ_SCOPE }
            )));
        }
        let res = self.store.resource(rid).await?.ok_or(Error::Unauthenticated)?;
        Ok(Receiver { resource: rid, audience: res.identifier })
    }

    fn stream_config(&self, s: &Stream) -> StreamConfig {
        let endpoint_url = match &s.delivery {
            StreamDelivery::Push { endpoint_url, .. } => endpoint_url.clone(),
            StreamDelivery::Poll => format!("{}/ssf/poll/{}", self.config.issuer, s.id),
        };
        let delivered: Vec<String> = s.events.kinds().into_iter().map(EventKind::uri).collect();
        StreamConfig {
            stream_id: s.id.to_string(),
            iss: self.config.issuer.clone(),
            aud: s.audience.clone(),
            delivery: DeliveryConfig { method: s.delivery.method().to_owned(), endpoint_url },
            events_supported: EventKind::REQUESTABLE.into_iter().map(EventKind::uri).collect(),
            events_requested: delivered.clone(),
            events_delivered: delivered,
            min_verification_interval: MIN_VERIFICATION_INTERVAL,
            description: s.description.clone(),
        }
    }

    /// The receiver's stream `raw`; another resource's is not found.
    async fn own_stream(&self, r: &Receiver, raw: &str) -> Result<Stream, Error> {
        let id = parse_stream_id(raw)?;
        match self.store.stream(id).await? {
            Some(s) if s.resource == r.resource => Ok(s),
            _ => Err(Error::NotFound("no such stream".into())),
        }
    }

    /// Parses a delivery request into what is stored.
    fn delivery_of(&self, id: StreamId, d: Option<DeliveryRequest>) -> Result<StreamDelivery, Error> {
        let Some(d) = d else { return Ok(StreamDelivery::Poll) };
        match d.method.as_str() {
            mandate_model::ssf::POLL_METHOD => {
                if d.authorization_header.is_some() {
                    return Err(Error::BadInput("a poll stream takes no authorization_header".into()));
                }
                // The poll endpoint is the transmitter's: a receiver may
                // send back what it read, nothing else.
                let ours = format!("{}/ssf/poll/{id}", self.config.issuer);
                if d.endpoint_url.as_ref().is_some_and(|u| *u != ours) {
                    return Err(Error::BadInput("the poll endpoint_url is the transmitter's".into()));
                }
                Ok(StreamDelivery::Poll)
            }
            mandate_model::ssf::PUSH_METHOD => {
                let url = d.endpoint_url.ok_or_else(|| Error::BadInput("push delivery needs endpoint_url".into()))?;
                if url.len() > MAX_URL {
                    return Err(Error::BadInput(format!("endpoint_url is longer than {MAX_URL} bytes")));
                }
                let pusher = self.set_pusher.get().ok_or_else(|| Error::BadInput("push delivery is off".into()))?;
                pusher.check_url(&url).map_err(|e| Error::BadInput(format!("endpoint_url: {e}")))?;
                let sealed_authorization = match d.authorization_header {
                    None => None,
                    Some(h) => {
                        let ok = !h.is_empty()
                            && h.len() <= MAX_AUTHORIZATION
                            && h.bytes().all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b));
                        if !ok {
                            return Err(Error::BadInput(format!(
                                "authorization_header must be 1 to {MAX_AUTHORIZATION} visible ASCII characters"
                            )));
                        }
                        Some(
                            self.kek
                                .seal(&sealing_context(id), h.as_bytes())
                                .map_err(|e| Error::Unavailable(e.to_string()))?,
                        )
                    }
                };
                Ok(StreamDelivery::Push { endpoint_url: url, sealed_authorization })
            }
            other => Err(Error::BadInput(format!("delivery method {other:?} is not supported"))),
        }
    }

    fn events_of(requested: Option<Vec<String>>) -> EventSet {
        match requested {
            None => EventSet::all(),
            Some(uris) => EventSet::of(uris.iter().filter_map(|u| EventKind::from_uri(u))),
        }
    }

    fn stream_event(&self, what: &str, r: &Receiver, s: &Stream, reason: String) -> AuditRecord {
        let mut event = self.event(what);
        event.decision = Some(ALLOW.into());
        event.actor = Some(r.resource.to_string());
        event.resource = Some(s.id.to_string());
        event.subject = Some(s.audience.clone());
        event.reason = Some(crate::audit::bounded(&reason));
        AuditRecord::new(event)
    }

    /// `POST /ssf/streams`: a new stream, `enabled`, for every subject of
    /// the receiver's audience.
    pub async fn create_stream(&self, r: &Receiver, req: StreamRequest) -> Result<StreamConfig, Error> {
        if req.stream_id.is_some() {
            return Err(Error::BadInput("stream_id is the transmitter's to choose".into()));
        }
        let description = text("description", req.description, MAX_TEXT)?;
        if self.store.streams_of(r.resource).await?.len() >= MAX_STREAMS {
            return Err(Error::Conflict(format!("a receiver has at most {MAX_STREAMS} streams")));
        }
        let now = self.clock.now();
        let id = StreamId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?);
        let delivery = self.delivery_of(id, req.delivery)?;
        let stream = Stream {
            id,
            resource: r.resource,
            audience: r.audience.clone(),
            status: StreamStatus::Enabled,
            status_reason: None,
            delivery,
            events: Self::events_of(req.events_requested),
            description,
            created_at: now,
            updated_at: now,
            failures: 0,
            next_at: now,
            lease_holder: None,
            lease_until: None,
            verified_at: None,
        };
        let record =
            self.stream_event(kind::SSF_STREAM_CREATED, r, &stream, format!("{} stream", stream.delivery.method()));
        self.store.commit(Change::new().with(Mutation::InsertStream(stream.clone())).with(record.mutation())).await?;
        Ok(self.stream_config(&stream))
    }

    /// `GET /ssf/streams`: one stream, or all of the receiver's.
    pub async fn read_streams(&self, r: &Receiver, id: Option<&str>) -> Result<Vec<StreamConfig>, Error> {
        match id {
            Some(raw) => Ok(vec![self.stream_config(&self.own_stream(r, raw).await?)]),
            None => Ok(self.store.streams_of(r.resource).await?.iter().map(|s| self.stream_config(s)).collect()),
        }
    }

    /// `PATCH` (`replace` false: what is sent changes) or `PUT` (`replace`
    /// true: what is not sent goes back to its default) `/ssf/streams`.
    pub async fn update_stream(&self, r: &Receiver, req: StreamRequest, replace: bool) -> Result<StreamConfig, Error> {
        let raw = req.stream_id.as_deref().ok_or_else(|| Error::BadInput("stream_id is required".into()))?;
        let mut stream = self.own_stream(r, raw).await?;
        let description = text("description", req.description, MAX_TEXT)?;
        if replace || req.delivery.is_some() {
            stream.delivery = self.delivery_of(stream.id, req.delivery)?;
        }
        if replace || req.events_requested.is_some() {
            stream.events = Self::events_of(req.events_requested);
        }
        if replace || description.is_some() {
            stream.description = description;
        }
        stream.updated_at = self.clock.now();
        let record = self.stream_event(
            kind::SSF_STREAM_UPDATED,
            r,
            &stream,
            format!("{} ({})", if replace { "replaced" } else { "updated" }, stream.delivery.method()),
        );
        self.store.commit(Change::new().with(Mutation::UpdateStream(stream.clone())).with(record.mutation())).await?;
        Ok(self.stream_config(&stream))
    }

    /// `DELETE /ssf/streams`: the stream and its waiting events go.
    pub async fn delete_stream(&self, r: &Receiver, raw: &str) -> Result<(), Error> {
        let stream = self.own_stream(r, raw).await?;
        let record = self.stream_event(kind::SSF_STREAM_DELETED, r, &stream, "deleted by the receiver".into());
        self.store.commit(Change::new().with(Mutation::DeleteStream { id: stream.id }).with(record.mutation())).await?;
        Ok(())
    }

    /// `GET /ssf/status`.
    pub async fn stream_status(&self, r: &Receiver, raw: &str) -> Result<StreamStatusBody, Error> {
        let s = self.own_stream(r, raw).await?;
        Ok(StreamStatusBody { stream_id: s.id.to_string(), status: s.status.as_str().into(), reason: s.status_reason })
    }

    /// `POST /ssf/status`: the receiver enables, pauses or disables its
    /// stream. Enabling a paused push stream resumes it at once, from the
    /// oldest event waiting; disabling drops the events waiting.
    pub async fn set_stream_status(&self, r: &Receiver, req: StreamStatusBody) -> Result<StreamStatusBody, Error> {
        let stream = self.own_stream(r, &req.stream_id).await?;
        let status: StreamStatus =
            req.status.parse().map_err(|e: mandate_model::ModelError| Error::BadInput(e.to_string()))?;
        let reason = text("reason", req.reason, MAX_TEXT)?;
        let now = self.clock.now();
        let record = self.stream_event(
            kind::SSF_STREAM_STATUS,
            r,
            &stream,
            format!("{} -> {} by the receiver", stream.status.as_str(), status.as_str()),
        );
        let change = Change::new()
            .with(Mutation::SetStreamStatus { id: stream.id, status, reason: reason.clone(), at: now })
            .with(record.mutation());
        self.commit_signalling(change).await?;
        Ok(StreamStatusBody { stream_id: stream.id.to_string(), status: status.as_str().into(), reason })
    }

    /// `POST /ssf/verify`: queues a verification event carrying `state`,
    /// at most once per [`MIN_VERIFICATION_INTERVAL`] on a stream (SSF
    /// §8.1.4.2: 429 sooner, with `Retry-After`).
    pub async fn verify_stream(&self, r: &Receiver, req: VerifyRequest) -> Result<(), Error> {
        let stream = self.own_stream(r, &req.stream_id).await?;
        let state = text("state", req.state, MAX_TEXT)?;
        let detail = state.map(|s| json!({ "state": s }).to_string());
        let now = self.clock.now();
        let interval = Duration::seconds(MIN_VERIFICATION_INTERVAL);
        let signal = Signal {
            kind: EventKind::Verification,
            subject: stream.id.to_string(),
            principal: None,
            at: now,
            cause: Cause::new(InitiatingEntity::System, "verification requested by the receiver"),
            detail,
        };
        // The claim and the event commit together: a refused request
        // queues nothing, and two at once cannot both pass.
        let change = Change::new()
            .with(Mutation::ClaimVerification { stream: stream.id, at: now, not_before: now - interval })
            .with(Mutation::SignalStream { stream: stream.id, signal });
        match self.commit_signalling(change).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict(_)) => {
                let last = self.own_stream(r, &req.stream_id).await?.verified_at.unwrap_or(now);
                let wait = (last + interval - now).whole_seconds().clamp(1, MIN_VERIFICATION_INTERVAL);
                Err(Error::RateLimited {
                    why: format!("one verification request per {MIN_VERIFICATION_INTERVAL} s on a stream"),
                    retry_after: u64::try_from(wait).unwrap_or(1),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `POST /ssf/subjects:add` (`add`) and `:remove` (SSF §8.1.3). Streams
    /// carry every subject of their audience (`default_subjects` `ALL`):
    /// removing a subject stops the events about it on this stream from
    /// then on, and adding it back undoes that. A subject names one of
    /// Mandate's ids ([`Mandate::subject_key`]): an `opaque` id (a token's
    /// `jti`, an agent, a person or a grant), a person by `email`, a person
    /// or an agent by `iss_sub` (Mandate's issuer, or an upstream identity
    /// provider's identity of a person), or a complex subject of a `user`
    /// and a `session`, as the SETs name them. A subject Mandate's events
    /// never carry is in already when added (nothing changes) and is not
    /// recognized when removed (404); so is an email or `iss_sub` that
    /// names nobody, either way. The stream's own id (the subject of its
    /// verification and stream-updated events) cannot be removed (SSF
    /// §8.1.4.1).
    pub async fn change_subjects(&self, r: &Receiver, req: SubjectRequest, add: bool) -> Result<(), Error> {
        let stream = self.own_stream(r, &req.stream_id).await?;
        let claim = SubjectClaim::parse(&req.subject)?;
        let (id, described) = match (self.subject_key(&claim).await?, &claim) {
            (Some(found), _) => found,
            (None, SubjectClaim::Unrecognized(_)) if add => return Ok(()),
            (None, SubjectClaim::Unrecognized(why)) => {
                return Err(Error::NotFound(format!("subject not recognized: {why}")));
            }
            (None, _) => return Err(Error::NotFound("subject not recognized: it names no one Mandate knows".into())),
        };
        if !add && id == stream.id.to_string() {
            return Err(Error::Forbidden("a stream's own subject cannot be removed".into()));
        }
        let (mutation, what) = if add {
            (Mutation::AddStreamSubject { stream: stream.id, subject: id.clone() }, "added")
        } else {
            (Mutation::RemoveStreamSubject { stream: stream.id, subject: id.clone() }, "removed")
        };
        let record = self.stream_event(kind::SSF_STREAM_UPDATED, r, &stream, format!("subject {what}: {described}"));
        match self.store.commit(Change::new().with(mutation).with(record.mutation())).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict(_)) => Err(Error::Conflict(format!(
                "a stream has at most {} subjects removed",
                mandate_model::ssf::MAX_REMOVED_SUBJECTS
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The id a subject stands for on a stream (what the stores filter
    /// events by, `ssf_subjects`), and how the audit says it; `None` when
    /// it names nothing Mandate's events are about.
    ///
    /// - `opaque`: the id itself, unchecked, as ADR 0028 has it (an id
    ///   that names nothing filters no event).
    /// - `email`: the person with that address.
    /// - `iss_sub` at Mandate's issuer: the person or the agent whose id is
    ///   `sub` (the `sub` of their access tokens, as SETs name them); at
    ///   another issuer: the person linked to that upstream identity
    ///   (DESIGN §10).
    /// - complex: its `session` (a token's `jti`) or its `user`; with both,
    ///   the session, when that token was issued for that user (SSF §8.1.3.1:
    ///   a complex subject matches events whose members all match).
    async fn subject_key(&self, claim: &SubjectClaim) -> Result<Option<(String, String)>, Error> {
        Ok(match claim {
            SubjectClaim::Opaque(id) => Some((id.clone(), format!("opaque {id}"))),
            SubjectClaim::Email(email) => {
                self.store.user_by_email(email).await?.map(|u| (u.id.to_string(), format!("email {email} ({})", u.id)))
            }
            SubjectClaim::IssSub { iss, sub } => {
                let found = if *iss == self.config.issuer {
                    if let Ok(user) = sub.parse::<UserId>() {
                        self.store.user(user).await?.map(|u| u.id.to_string())
                    } else if let Ok(agent) = sub.parse::<AgentId>() {
                        self.store.agent(agent).await?.map(|a| a.id.to_string())
                    } else {
                        None
                    }
                } else {
                    self.store.upstream_link(iss, sub).await?.map(|l| l.user.to_string())
                };
                found.map(|id| (id.clone(), format!("iss_sub {iss} {sub} ({id})")))
            }
            SubjectClaim::Complex { user, session } => {
                let user = match user {
                    Some(u) => match Box::pin(self.subject_key(u)).await? {
                        Some(found) => Some(found),
                        None => return Ok(None),
                    },
                    None => None,
                };
                match (session, user) {
                    (Some(jti), None) => Some((jti.clone(), format!("complex session opaque {jti}"))),
                    (None, Some((id, described))) => Some((id, format!("complex user {described}"))),
                    (Some(jti), Some((id, described))) => {
                        let issued_for = match jti.parse::<Jti>() {
                            Ok(j) => self.store.token(j).await?.map(|t| t.subject),
                            Err(_) => None,
                        };
                        (issued_for.as_deref() == Some(id.as_str()))
                            .then(|| (jti.clone(), format!("complex session opaque {jti} user {described}")))
                    }
                    (None, None) => None,
                }
            }
            SubjectClaim::Unrecognized(_) => None,
        })
    }

    /// RFC 8936 poll: acknowledges what `ack` names, then returns up to
    /// `maxEvents` of the events still waiting, oldest first. What is not
    /// acknowledged is returned again by the next poll. A paused stream
    /// holds its events; a push stream cannot be polled.
    pub async fn poll(&self, r: &Receiver, raw: &str, req: PollRequest) -> Result<PollResponse, Error> {
        let stream = self.own_stream(r, raw).await?;
        if stream.delivery != StreamDelivery::Poll {
            return Err(Error::BadInput("the stream is a push stream".into()));
        }
        let mut seqs: Vec<u64> = req
            .ack
            .iter()
            .chain(req.set_errs.keys())
            .filter_map(|jti| mandate_model::ssf::seq_of(stream.id, jti))
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        if !seqs.is_empty() {
            self.store.commit(Change::new().with(Mutation::AckEvents { stream: stream.id, seqs })).await?;
        }
        if !req.set_errs.is_empty() {
            tracing::info!(stream = %stream.id, errors = req.set_errs.len(), "the receiver reported SET errors");
        }
        let max = req.max_events.unwrap_or(MAX_POLL_EVENTS).min(MAX_POLL_EVENTS);
        // RFC 8936 §2.4.1: `returnImmediately` is false by default, a long
        // poll; `maxEvents` 0 only acknowledges.
        let long = !req.return_immediately.unwrap_or(false) && max > 0 && self.config.ssf_long_poll > 0;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(self.config.ssf_long_poll);
        let mut stream = stream;
        loop {
            // Registered before reading, so that an event queued between
            // the read and the wait still wakes this poll.
            let woken = self.polls.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let mut sets = BTreeMap::new();
            let mut more_available = false;
            if stream.status == StreamStatus::Enabled && max > 0 {
                let events = self.store.queued_events(stream.id, max + 1).await?;
                more_available = events.len() > max as usize;
                for e in events.iter().take(max as usize) {
                    sets.insert(e.jti(), self.sign_set(&stream, e)?);
                }
            }
            let now = tokio::time::Instant::now();
            if !sets.is_empty() || !long || now >= deadline {
                return Ok(PollResponse { sets, more_available });
            }
            // Events another node queues are seen at the next look.
            let nap = LONG_POLL_RECHECK.min(deadline - now);
            let _ = tokio::time::timeout(nap, woken).await;
            // Paused, enabled or deleted meanwhile.
            stream = self.own_stream(r, raw).await?;
        }
    }

    /// The SET of a queued event (RFC 8417), signed with the current key:
    /// `typ` `secevent+jwt`, `aud` the stream's audience, no `sub` or
    /// `exp`, the subject as an RFC 9493 `sub_id` in the formats of the
    /// CAEP interoperability profile ([`Signal::sub_id`]), one event.
    pub fn sign_set(&self, stream: &Stream, e: &QueuedEvent) -> Result<String, Error> {
        let mut event = serde_json::Map::new();
        if let Some(detail) = &e.signal.detail {
            let extra: Value = serde_json::from_str(detail)
                .map_err(|_| Error::Unavailable(format!("event {} has a corrupt detail", e.jti())))?;
            if let Value::Object(m) = extra {
                event.extend(m);
            }
        }
        if !matches!(e.signal.kind, EventKind::Verification) {
            event.insert("event_timestamp".into(), json!(e.signal.at.unix_timestamp()));
            event.insert("initiating_entity".into(), json!(e.signal.cause.initiating_entity.as_str()));
            event.insert("reason_admin".into(), json!({ "en": e.signal.cause.reason }));
        }
        let claims = json!({
            "iss": self.config.issuer,
            "aud": stream.audience,
            "iat": self.clock.now().unix_timestamp(),
            "jti": e.jti(),
            "sub_id": e.signal.sub_id(&self.config.issuer),
            "events": { e.signal.kind.uri(): Value::Object(event) },
        });
        let key = self.set_key();
        mandate_jose::jws::sign(&key, "secevent+jwt", &claims).map_err(|e| Error::Unavailable(e.to_string()))
    }

    /// The key SETs are signed with: the RSA key under
    /// `--ssf-signing-alg RS256`, else the current token key.
    fn set_key(&self) -> Arc<mandate_jose::SigningKey> {
        match self.ssf_key() {
            Some(k) => k,
            None => self.ring().active.clone(),
        }
    }

    /// The RSA key of `--ssf-signing-alg RS256`, once loaded.
    pub(crate) fn ssf_key(&self) -> Option<Arc<mandate_jose::SigningKey>> {
        match self.ssf_keys.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Pushes the events that are due, stream by stream: each stream is
    /// claimed under a lease (so two nodes never push one stream at once)
    /// and its events are sent one at a time in `seq` order; a failure
    /// stops the stream until its backoff passes, and after
    /// [`MAX_PUSH_FAILURES`] in a row the stream is paused (audited, and
    /// a `stream-updated` event queued for when it resumes). Returns how
    /// many SETs were delivered.
    pub async fn push_due(&self, holder: &str) -> Result<usize, Error> {
        let Some(pusher) = self.set_pusher.get().cloned() else { return Ok(0) };
        let now = self.clock.now();
        let mut delivered = 0;
        for stream in self.store.due_streams(now, PUSH_BATCH).await? {
            let until = now + Duration::seconds(PUSH_LEASE_SECONDS);
            let lease = Mutation::LeaseStream { id: stream.id, holder: holder.to_owned(), now, until };
            match self.store.commit(Change::new().with(lease)).await {
                Ok(_) => {}
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            delivered += self.push_stream(pusher.as_ref(), &stream, holder).await?;
        }
        Ok(delivered)
    }

    async fn push_stream(&self, pusher: &dyn SetPusher, stream: &Stream, holder: &str) -> Result<usize, Error> {
        let StreamDelivery::Push { endpoint_url, sealed_authorization } = &stream.delivery else {
            return Ok(0);
        };
        let authorization = match sealed_authorization {
            None => None,
            Some(sealed) => Some(
                String::from_utf8(
                    self.kek
                        .open(&sealing_context(stream.id), sealed)
                        .map_err(|e| Error::Unavailable(format!("stream {}: {e}", stream.id)))?,
                )
                .map_err(|_| Error::Unavailable(format!("stream {}: the authorization is not text", stream.id)))?,
            ),
        };
        let events = self.store.queued_events(stream.id, u32::try_from(PUSH_PER_STREAM).unwrap_or(64)).await?;
        let mut sent = 0;
        let mut failures = stream.failures;
        let mut finish = None;
        for (i, e) in events.iter().enumerate() {
            let last = i + 1 == events.len();
            let set = self.sign_set(stream, e)?;
            let outcome = pusher.push(endpoint_url, authorization.as_deref(), &set).await;
            let now = self.clock.now();
            match outcome {
                Ok(()) | Err(PushFailure::Rejected(_)) => {
                    if let Err(PushFailure::Rejected(why)) = &outcome {
                        tracing::warn!(stream = %stream.id, set = e.jti(), why, "the receiver rejected a SET; dropped");
                    }
                    failures = 0;
                    sent += usize::from(outcome.is_ok());
                    // Keeps the lease for the next event; the last one
                    // releases it.
                    let change = Change::new().with(Mutation::FinishPush {
                        id: stream.id,
                        holder: holder.to_owned(),
                        delivered: Some(e.seq),
                        failures: 0,
                        next_at: now,
                        pause: None,
                    });
                    self.store.commit(change).await?;
                    if !last {
                        let until = now + Duration::seconds(PUSH_LEASE_SECONDS);
                        let lease = Mutation::LeaseStream { id: stream.id, holder: holder.to_owned(), now, until };
                        match self.store.commit(Change::new().with(lease)).await {
                            Ok(_) => {}
                            // Paused or disabled meanwhile, or taken.
                            Err(StoreError::Conflict(_)) => return Ok(sent),
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Err(PushFailure::Unreachable(why)) => {
                    failures = failures.saturating_add(1);
                    finish = Some((why, false));
                    break;
                }
                Err(PushFailure::Refused(why)) => {
                    failures = failures.saturating_add(1);
                    finish = Some((why, true));
                    break;
                }
            }
        }
        if let Some((why, lasting)) = finish {
            let now = self.clock.now();
            let pause = (lasting || failures >= MAX_PUSH_FAILURES)
                .then(|| crate::audit::bounded(&format!("{failures} failed pushes in a row: {why}")));
            let mut change = Change::new().with(Mutation::FinishPush {
                id: stream.id,
                holder: holder.to_owned(),
                delivered: None,
                failures,
                next_at: now + push_backoff(failures),
                pause: pause.clone(),
            });
            if let Some(reason) = &pause {
                let mut event = self.event(kind::SSF_STREAM_STATUS);
                event.decision = Some(ALLOW.into());
                event.actor = Some("mandate".into());
                event.resource = Some(stream.id.to_string());
                event.subject = Some(stream.audience.clone());
                event.reason = Some(format!("enabled -> paused: {reason}"));
                change.push(AuditRecord::new(event).mutation());
                change.push(Mutation::SignalStream {
                    stream: stream.id,
                    signal: Signal {
                        kind: EventKind::StreamUpdated,
                        subject: stream.id.to_string(),
                        principal: None,
                        at: now,
                        cause: Cause::new(InitiatingEntity::System, reason.clone()),
                        detail: Some(json!({ "status": "paused", "reason": reason }).to_string()),
                    },
                });
                tracing::warn!(stream = %stream.id, reason, "a push stream was paused");
            }
            self.store.commit(change).await?;
        }
        Ok(sent)
    }

    /// Queues `session-revoked` for the tokens `change` revokes at `at`:
    /// added after its revocations, so that the events commit with them.
    pub(crate) fn signal_revocations(change: &mut Change, at: OffsetDateTime, cause: Cause) {
        change.push(Mutation::SignalRevocations { at, cause });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn pushes_back_off_and_the_bound_is_reached_in_under_a_minute() {
        let waits: Vec<i64> = (1..=MAX_PUSH_FAILURES).map(|n| push_backoff(n).whole_seconds()).collect();
        assert_eq!(waits, vec![2, 5, 10, 20, 20]);
        let until_paused: i64 = waits.iter().take(MAX_PUSH_FAILURES as usize - 1).sum();
        assert!(until_paused < 60, "a receiver that stays down pauses its stream within a minute");
        assert_eq!(push_backoff(0).whole_seconds(), 2);
        assert_eq!(push_backoff(u32::MAX).whole_seconds(), 20);
    }

    #[test]
    fn texts_are_bounded_and_printable() {
        assert!(text("d", Some("x".repeat(MAX_TEXT)), MAX_TEXT).is_ok());
        assert!(text("d", Some("x".repeat(MAX_TEXT + 1)), MAX_TEXT).is_err());
        assert!(text("d", Some("a\nb".into()), MAX_TEXT).is_err());
        assert!(matches!(text("d", None, MAX_TEXT), Ok(None)));
    }

    #[test]
    fn requested_events_keep_only_what_is_transmitted() {
        assert_eq!(Mandate::events_of(None), EventSet::all());
        let asked =
            vec![EventKind::SessionRevoked.uri(), "https://example.com/unknown".into(), EventKind::Verification.uri()];
        assert_eq!(Mandate::events_of(Some(asked)).kinds(), vec![EventKind::SessionRevoked]);
        assert!(Mandate::events_of(Some(vec![])).kinds().is_empty());
    }

    #[test]
    fn a_stream_id_that_does_not_parse_is_not_found() {
        assert!(matches!(parse_stream_id("nope"), Err(Error::NotFound(_))));
        assert!(matches!(parse_stream_id("agt_01ARZ3NDEKTSV4RRFFQ69G5FAV"), Err(Error::NotFound(_))));
        assert!(parse_stream_id("sst_01ARZ3NDEKTSV4RRFFQ69G5FAV").is_ok());
    }

    /// The calendar as a receiver, with a poll stream.
    async fn calendar_stream(w: &crate::testing::World) -> (Receiver, StreamId) {
        let cal = w.store.resource_by_identifier(crate::testing::CAL).await.ok().flatten().expect("the calendar");
        let r = Receiver { resource: cal.id, audience: cal.identifier };
        let created = w.m.create_stream(&r, StreamRequest::default()).await.expect("a stream");
        (r, created.stream_id.parse().expect("a stream id"))
    }

    async fn change(
        w: &crate::testing::World,
        r: &Receiver,
        stream: StreamId,
        subject: Value,
        add: bool,
    ) -> Result<(), Error> {
        let req = SubjectRequest { stream_id: stream.to_string(), subject, verified: None };
        w.m.change_subjects(r, req, add).await
    }

    async fn removed(w: &crate::testing::World, stream: StreamId) -> Vec<String> {
        w.store.removed_subjects(stream).await.expect("the removed subjects")
    }

    #[tokio::test]
    async fn subjects_by_email_and_iss_sub_name_the_person_or_agent() {
        let w = crate::testing::World::new().await;
        let (r, stream) = calendar_stream(&w).await;
        let alice = w.alice.id.to_string();
        // By address, in any case: Alice.
        change(&w, &r, stream, json!({"format": "email", "email": "ALICE@example.com"}), false).await.expect("removed");
        assert_eq!(removed(&w, stream).await, vec![alice.clone()]);
        change(&w, &r, stream, json!({"format": "email", "email": "alice@example.com"}), true).await.expect("added");
        assert!(removed(&w, stream).await.is_empty());
        // By Mandate's issuer and her id, as SETs name her; an agent too.
        let mandate = |sub: &str| json!({"format": "iss_sub", "iss": crate::testing::ISSUER, "sub": sub});
        change(&w, &r, stream, mandate(&alice), false).await.expect("removed");
        let planner = w.planner.id().to_string();
        change(&w, &r, stream, mandate(&planner), false).await.expect("removed");
        let mut both = vec![alice.clone(), planner.clone()];
        both.sort();
        assert_eq!(removed(&w, stream).await, both);
        // As a complex subject's user.
        let complex_user = json!({"format": "complex", "user": mandate(&alice)});
        change(&w, &r, stream, complex_user, true).await.expect("added");
        assert_eq!(removed(&w, stream).await, vec![planner.clone()]);
        // By the identity an upstream provider gave her (DESIGN §10).
        let link = mandate_model::records::UpstreamLink {
            issuer: "https://idp.example/tenant".into(),
            subject: "99beb27c".into(),
            user: w.alice.id,
            created_at: w.clock_now(),
        };
        w.store.commit(Change::new().with(Mutation::InsertUpstreamLink(link))).await.expect("a link");
        let upstream = json!({"format": "iss_sub", "iss": "https://idp.example/tenant", "sub": "99beb27c"});
        change(&w, &r, stream, upstream, false).await.expect("removed");
        assert_eq!(removed(&w, stream).await, both);
        let q =
            crate::audit::AuditQuery { kind: Some(kind::SSF_STREAM_UPDATED.into()), limit: 100, ..Default::default() };
        let audited = w.m.audit_query(crate::Caller::Admin, q).await.expect("the audit");
        let reasons: Vec<String> = audited.iter().filter_map(|e| e.reason.clone()).collect();
        assert!(reasons.contains(&format!("subject removed: email alice@example.com ({alice})")), "{reasons:?}");
        assert!(
            reasons.contains(&format!("subject removed: iss_sub https://idp.example/tenant 99beb27c ({alice})")),
            "{reasons:?}"
        );
    }

    #[tokio::test]
    async fn subjects_that_name_nobody_change_nothing() {
        let w = crate::testing::World::new().await;
        let (r, stream) = calendar_stream(&w).await;
        let nobody = [
            json!({"format": "email", "email": "carol@example.com"}),
            json!({"format": "email", "email": "root@localhost"}),
            json!({"format": "iss_sub", "iss": crate::testing::ISSUER, "sub": "usr_01ARZ3NDEKTSV4RRFFQ69G5FAV"}),
            json!({"format": "iss_sub", "iss": crate::testing::ISSUER, "sub": "grt_01ARZ3NDEKTSV4RRFFQ69G5FAV"}),
            json!({"format": "iss_sub", "iss": "https://idp.example", "sub": "someone"}),
            json!({"format": "complex", "user": {"format": "email", "email": "carol@example.com"}}),
        ];
        for subject in nobody {
            for add in [false, true] {
                let out = change(&w, &r, stream, subject.clone(), add).await;
                assert!(matches!(out, Err(Error::NotFound(_))), "{subject} add={add}: {out:?}");
            }
        }
        // Formats and members Mandate's events never carry: in already
        // when added, not recognized when removed.
        let never = [
            json!({"format": "phone_number", "phone_number": "+12065550100"}),
            json!({"format": "complex", "tenant": {"format": "opaque", "id": "t"}}),
        ];
        for subject in never {
            change(&w, &r, stream, subject.clone(), true).await.expect("in already");
            let out = change(&w, &r, stream, subject.clone(), false).await;
            assert!(matches!(out, Err(Error::NotFound(_))), "{subject}: {out:?}");
        }
        // Malformed: refused.
        let bad = json!({"format": "email", "email": "alice at example.com"});
        assert!(matches!(change(&w, &r, stream, bad, false).await, Err(Error::BadInput(_))));
        // A session and a user that are not the same token's: not recognized.
        let tokens = w.client_credentials(&w.planner, crate::testing::CAL, "read").await.expect("a token");
        let jti = tokens.jti.to_string();
        let mismatch = json!({
            "format": "complex",
            "session": {"format": "opaque", "id": jti},
            "user": {"format": "email", "email": "bob@example.com"},
        });
        assert!(matches!(change(&w, &r, stream, mismatch, false).await, Err(Error::NotFound(_))));
        assert!(removed(&w, stream).await.is_empty(), "nothing was removed");
        // The same token's: its session.
        let planner = json!({"format": "iss_sub", "iss": crate::testing::ISSUER, "sub": w.planner.id().to_string()});
        let matching = json!({"format": "complex", "session": {"format": "opaque", "id": jti}, "user": planner});
        change(&w, &r, stream, matching, false).await.expect("removed");
        assert_eq!(removed(&w, stream).await, vec![jti]);
    }
}
