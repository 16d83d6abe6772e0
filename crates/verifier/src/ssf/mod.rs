//! Receiving Shared Signals (OpenID SSF 1.0, CAEP 1.0) from Mandate:
//! revocations that reach the resource server at once, instead of when it
//! next reads the token's status list.
//!
//! An [`SsfReceiver`] made from a [`Verifier`] verifies each Security Event
//! Token ([`set`]) and acts on it:
//!
//! - `session-revoked` about an access token (`sub_id` `{"format":
//!   "complex", "session": {"format": "opaque", "id": "<jti>"}, "user":
//!   {"format": "iss_sub", …}}`, or the simple `{"format": "opaque", "id":
//!   "<jti>"}` Mandate sent before): the verifier refuses a token with
//!   that `jti` from then on, before its status list would say so.
//! - the SSF verification event: its `state` is recorded
//!   ([`SsfReceiver::verified`]).
//! - every accepted event, these and the others (`credential-change`,
//!   `token-claims-change`, `stream-updated`, …), is passed to the
//!   application's hook ([`SsfReceiver::on_event`]); the SDK does nothing
//!   else with the others.
//!
//! SETs arrive pushed (RFC 8935, [`SsfReceiver::push_router`]) or polled
//! (RFC 8936, [`SsfReceiver::spawn_poller`]). A SET whose `jti` was
//! already accepted is not acted on again: a byte-identical copy (a
//! transmitter retrying) is acknowledged, a different SET reusing the
//! `jti` is refused.
//!
//! # What is remembered, and for how long
//!
//! A revoked `jti` is kept for [`VerifierConfig::revocation_retention`]
//! seconds after the event arrived (one day by default), and longer when a
//! token with that `jti` is presented meanwhile: until that token's `exp`,
//! after which it is refused as expired anyway. Past the retention the
//! token's status list still refuses it, so the retention should be at
//! least the issuer's longest access-token lifetime (Mandate's default is
//! five minutes). At most [`VerifierConfig::max_revocations`] revoked
//! `jti`s and as many accepted SETs are kept; when either memory is full of
//! live entries a new SET is answered "try again later" (503 when pushed,
//! not acknowledged when polled), so that the transmitter keeps it, rather
//! than a live entry being forgotten.
//!
//! [`VerifierConfig::revocation_retention`]: crate::VerifierConfig::revocation_retention
//! [`VerifierConfig::max_revocations`]: crate::VerifierConfig::max_revocations

pub(crate) mod memory;
mod poll;
mod push;
pub mod set;
mod stream;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use poll::{PollConfig, Poller};
pub use set::{EventKind, SecurityEvent, SetError, SubjectId};
pub use stream::{Delivery, StreamConfig, StreamError};

use self::memory::{Expiring, Full};
use self::set::SetRules;
use crate::Verifier;

/// Verification `state`s remembered.
const MAX_VERIFICATIONS: usize = 32;

/// The application's hook, called once per accepted event.
pub type EventHook = Arc<dyn Fn(&SecurityEvent) + Send + Sync>;

/// What became of a SET that was not refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// Verified and acted on.
    Accepted(Box<SecurityEvent>),
    /// The same SET again (same `jti`, same bytes): not acted on twice.
    Duplicate { jti: String },
}

impl Received {
    pub fn jti(&self) -> &str {
        match self {
            Self::Accepted(e) => &e.jti,
            Self::Duplicate { jti } => jti,
        }
    }
}

/// Receives SETs for one [`Verifier`]: verifies them against the issuer's
/// keys and acts on them. Cheap to clone; clones share their memory.
#[derive(Clone)]
pub struct SsfReceiver {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: Verifier,
    /// Expected `Authorization` header value on pushed SETs.
    push_authorization: Option<String>,
    hook: Option<EventHook>,
    /// Accepted SETs by `jti`, with their hash.
    seen: Mutex<Expiring<String>>,
    verifications: Mutex<VecDeque<String>>,
}

impl std::fmt::Debug for SsfReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsfReceiver")
            .field("audience", &self.inner.verifier.config().audience)
            .field("push_authorization", &self.inner.push_authorization.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

impl SsfReceiver {
    /// A receiver whose accepted `session-revoked` events make `verifier`
    /// (and every verifier sharing its memory, see
    /// [`Verifier::for_audience`]) refuse the revoked tokens.
    pub fn new(verifier: &Verifier) -> Self {
        Self::build(verifier.clone(), None, None)
    }

    fn build(verifier: Verifier, push_authorization: Option<String>, hook: Option<EventHook>) -> Self {
        let capacity = verifier.config().max_revocations;
        Self {
            inner: Arc::new(Inner {
                verifier,
                push_authorization,
                hook,
                seen: Mutex::new(Expiring::new(capacity)),
                verifications: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// Pushed SETs must carry exactly this `Authorization` header value
    /// (the `authorization_header` given in the stream's delivery
    /// configuration); others are refused with `authentication_failed`.
    pub fn with_push_authorization(self, value: impl Into<String>) -> Self {
        let i = &self.inner;
        Self::build(i.verifier.clone(), Some(value.into()), i.hook.clone())
    }

    /// Calls `hook` with every accepted event (after the receiver acted on
    /// it), from the task that received it: keep it short.
    pub fn on_event(self, hook: impl Fn(&SecurityEvent) + Send + Sync + 'static) -> Self {
        let i = &self.inner;
        Self::build(i.verifier.clone(), i.push_authorization.clone(), Some(Arc::new(hook)))
    }

    pub fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    /// Whether a verification event with this `state` was received.
    pub fn verified(&self, state: &str) -> bool {
        self.lock_verifications().iter().any(|s| s == state)
    }

    fn lock_verifications(&self) -> MutexGuard<'_, VecDeque<String>> {
        self.inner.verifications.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Verifies one SET and acts on it. A refused SET changes nothing.
    pub async fn receive(&self, token: &str) -> Result<Received, SetError> {
        self.receive_as(token, None).await
    }

    /// [`SsfReceiver::receive`], the SET's `jti` required to be `expected`
    /// (RFC 8936: the key it was delivered under).
    pub(crate) async fn receive_as(&self, token: &str, expected: Option<&str>) -> Result<Received, SetError> {
        let v = &self.inner.verifier;
        let now = v.now();
        let config = v.config();
        let unverified = set::parse(token)?;
        let kid =
            unverified.header.kid.as_deref().ok_or_else(|| SetError::InvalidKey("the SET names no key".into()))?;
        let keys = v.set_keys(now, kid).await?;
        let rules = SetRules { issuer: &config.issuer, audience: &config.audience, now, leeway: config.leeway };
        let event = set::verify(token, &keys, &rules)?;
        if expected.is_some_and(|e| e != event.jti) {
            return Err(SetError::InvalidRequest("the SET's jti is not the one it was delivered under".into()));
        }
        let hash = mandate_jose::sha256_b64(token.as_bytes());
        let until = now.saturating_add(config.revocation_retention);
        {
            let mut seen = self.inner.seen.lock().unwrap_or_else(PoisonError::into_inner);
            match seen.get(&event.jti, now) {
                Some(h) if *h == hash => return Ok(Received::Duplicate { jti: event.jti }),
                Some(_) => return Err(SetError::InvalidRequest("a SET with this jti was already received".into())),
                None => {}
            }
            seen.insert(&event.jti, until, hash, now).map_err(|Full::Full| {
                tracing::warn!("the received-SET memory is full; refusing SETs until entries expire");
                SetError::Unavailable("the receiver cannot take more SETs now")
            })?;
            if let Some(jti) = event.revoked_jti()
                && v.revoke_jti(jti, until, now).is_err()
            {
                // Not marked seen: acted on when delivered again.
                seen.remove(&event.jti);
                tracing::warn!("the revoked-token memory is full; refusing SETs until entries expire");
                return Err(SetError::Unavailable("the receiver cannot take more revocations now"));
            }
        }
        if let Some(state) = event.verification_state() {
            let mut states = self.lock_verifications();
            if states.len() >= MAX_VERIFICATIONS {
                states.pop_front();
            }
            states.push_back(state.to_owned());
        }
        tracing::info!(
            jti = %event.jti, event_type = %event.event_type,
            revoked = event.revoked_jti().is_some(), "accepted a security event"
        );
        if let Some(hook) = &self.inner.hook {
            hook(&event);
        }
        Ok(Received::Accepted(Box::new(event)))
    }
}

#[cfg(test)]
mod tests;
