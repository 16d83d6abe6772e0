//! Messages Mandate sends on its own, through a durable outbox: CIBA ping
//! and push callbacks to agents (OpenID CIBA §10) and notices to the
//! people asked to approve. An item is written in the same change as what
//! it announces (a decision, a new approval), so it is never lost nor sent
//! for something that did not happen; [`Mandate::deliver_due`] sends what
//! is due, retrying with backoff, under a lease so that two nodes never
//! send one item at once. The item's content is sealed with the
//! key-encryption key: a push carries tokens and a ping a bearer token.
//! Contents are never logged.

use mandate_model::ApprovalId;
use mandate_model::delivery::{CibaCallback, Delivery, DeliveryMode, DeliveryStatus};
use mandate_model::records::{Approval, ApprovalStatus, ApprovalSubject, User};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::Error;
use crate::audit::{ALLOW, AuditRecord, DENY, kind};
use crate::oauth::IssuedToken;
use crate::ports::{SendFailure, new_ulid};
use crate::service::Mandate;
use crate::store::{Change, Mutation, StoreError};

/// The outbox channel of a CIBA ping callback.
pub const PING: &str = "ciba.ping";
/// The outbox channel of a CIBA push callback.
pub const PUSH: &str = "ciba.push";
/// The outbox channel of the ping or push that tells a ping or push agent
/// its request expired undecided (CIBA §12 `expired_token`). It is written
/// with the request, due when the request expires, and sent only if the
/// request is still undecided then.
pub const EXPIRY: &str = "ciba.expiry";
/// Attempts made before an item is given up (and the failure audited).
pub const MAX_ATTEMPTS: u32 = 6;
/// The wait after failed attempt n (1-based) before the next, seconds:
/// six attempts over about nine minutes. Each wait is stretched by up to a
/// fifth at random, so that a receiver that came back is not hit by every
/// node's retries at once.
const BACKOFF: [i64; 5] = [10, 30, 60, 120, 300];
/// How long a node holds an item while it attempts it: longer than any
/// one attempt (the fetcher's time limit is 5 s, SMTP's 30 s).
pub const LEASE_SECONDS: i64 = 60;
/// The longest `client_notification_token` accepted (CIBA §7.1 sets none;
/// a bearer token of 1 KiB is already generous).
pub const MAX_NOTIFICATION_TOKEN: usize = 1024;
/// Items claimed by one pass of the worker.
pub const BATCH: u32 = 32;

/// What the notifiers tell the people asked to decide an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalNotice {
    /// The approval's id (`apr_…`).
    pub approval: String,
    /// The page where it is decided, on the public issuer URL.
    pub url: String,
    pub agent: Party,
    /// The person the agent acts for.
    pub user: Party,
    pub resource: String,
    /// For a CIBA request: the scopes asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<String>,
    /// For an action approval: the action and its target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// For an action approval: the check's declared `context` values it
    /// is bound to.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub context: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_message: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Who is asked to decide.
    pub recipients: Vec<Party>,
}

/// A person or an agent named in a notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl Party {
    fn user(u: &User) -> Self {
        Self { id: u.id.to_string(), name: u.name.clone(), email: Some(u.email.clone()) }
    }
}

/// What the outbox keeps of a callback, sealed.
#[derive(Debug, Serialize, Deserialize)]
struct Callback {
    url: String,
    bearer: String,
    body: serde_json::Value,
}

/// How a CIBA request ended, for its ping or push.
pub(crate) enum Ended<'a> {
    /// Approved, with the tokens a push carries (issued at the decision).
    Approved(Option<&'a IssuedToken>),
    Denied,
    /// Approved, but no token could be issued (the person's rights or the
    /// agent changed meanwhile): CIBA §12's `transaction_failed`.
    Failed(String),
    /// Not decided by the time it expires, at this time: CIBA §12's
    /// `expired_token`, due then.
    Expired(OffsetDateTime),
}

/// What an attempt came to, short of a failure.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Sent,
    /// Nothing needed sending after all: why.
    Moot(&'static str),
}

fn sealing_context(id: &str) -> Vec<u8> {
    format!("mandate outbox {id}").into_bytes()
}

fn token_context(approval: &str) -> Vec<u8> {
    format!("mandate ciba notification token {approval}").into_bytes()
}

/// The wait after `attempts` failed attempts, stretched by `jitter`
/// (0..=255 of a fifth).
pub fn backoff(attempts: u32, jitter: u8) -> Duration {
    let i = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX).min(BACKOFF.len() - 1);
    let base = BACKOFF.get(i).copied().unwrap_or(300);
    Duration::milliseconds(base * 1000 + base * 200 * i64::from(jitter) / 255)
}

/// A `client_notification_token` as CIBA §7.1 needs it: a bearer token
/// (RFC 6750 `b64token` characters), 1 to 1024 of them.
pub fn check_notification_token(token: &str) -> Result<(), Error> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if token.is_empty() || token.len() > MAX_NOTIFICATION_TOKEN || !token.chars().all(ok_char) {
        return Err(Error::InvalidRequest(format!(
            "client_notification_token must be 1 to {MAX_NOTIFICATION_TOKEN} characters of a bearer token"
        )));
    }
    Ok(())
}

impl Mandate {
    /// Sets the sender of CIBA ping and push callbacks (once).
    pub fn set_callback_sender(&self, sender: std::sync::Arc<dyn crate::ports::CallbackSender>) {
        let _ = self.callbacks.set(sender);
    }

    /// Sets the approver notifiers (once).
    pub fn set_notifiers(&self, notifiers: Vec<std::sync::Arc<dyn crate::ports::ApproverNotifier>>) {
        let _ = self.notifiers.set(notifiers);
    }

    /// The CIBA delivery modes this server offers (discovery's
    /// `backchannel_token_delivery_modes_supported`): ping and push only
    /// with a callback sender.
    pub fn delivery_modes(&self) -> Vec<&'static str> {
        if self.callbacks.get().is_some() {
            DeliveryMode::ALL.iter().map(|m| m.as_str()).collect()
        } else {
            vec![DeliveryMode::Poll.as_str()]
        }
    }

    /// Checks an agent's CIBA delivery registration: ping and push need an
    /// endpoint the callback sender accepts (https, not a private address;
    /// `--dev-loopback-fetch` opens loopback http); poll takes none.
    pub(crate) fn check_backchannel(
        &self,
        mode: DeliveryMode,
        endpoint: Option<&str>,
    ) -> Result<mandate_model::delivery::Backchannel, Error> {
        let bad = |m: String| Error::BadInput(m);
        match (mode, endpoint) {
            (DeliveryMode::Poll, None) => Ok(mandate_model::delivery::Backchannel::default()),
            (DeliveryMode::Poll, Some(_)) => {
                Err(bad("backchannel_client_notification_endpoint is for ping and push modes only".into()))
            }
            (_, None) => Err(bad(format!(
                "backchannel_token_delivery_mode {} needs backchannel_client_notification_endpoint",
                mode.as_str()
            ))),
            (_, Some(url)) => {
                let sender = self
                    .callbacks
                    .get()
                    .ok_or_else(|| bad(format!("this server does not deliver CIBA {} callbacks", mode.as_str())))?;
                if url.len() > 2048 {
                    return Err(bad("backchannel_client_notification_endpoint is longer than 2048".into()));
                }
                sender.check_url(url).map_err(|why| bad(format!("backchannel_client_notification_endpoint: {why}")))?;
                Ok(mandate_model::delivery::Backchannel { mode, endpoint: Some(url.to_owned()) })
            }
        }
    }

    /// An agent's CIBA delivery registration (`poll` when it set none).
    pub async fn backchannel_of(
        &self,
        agent: mandate_model::AgentId,
    ) -> Result<mandate_model::delivery::Backchannel, Error> {
        Ok(self.store.backchannel(agent).await?.unwrap_or_default())
    }

    /// Seals a `client_notification_token` for the request `approval`.
    pub(crate) fn seal_notification_token(&self, approval: &str, token: &str) -> Result<Vec<u8>, Error> {
        self.kek.seal(&token_context(approval), token.as_bytes()).map_err(|e| Error::Unavailable(e.to_string()))
    }

    /// Adds to `change` an outbox item for `channel` about `about`, its
    /// `content` sealed.
    fn enqueue(
        &self,
        change: &mut Change,
        channel: &str,
        about: &str,
        target: &str,
        content: &[u8],
    ) -> Result<(), Error> {
        self.enqueue_due(change, (channel, about, target), content, self.clock.now())
    }

    /// [`Mandate::enqueue`], due at `due`.
    fn enqueue_due(
        &self,
        change: &mut Change,
        (channel, about, target): (&str, &str, &str),
        content: &[u8],
        due: OffsetDateTime,
    ) -> Result<(), Error> {
        let id = format!("dlv_{}", new_ulid(self.clock.as_ref(), self.rng.as_ref())?);
        let sealed = self.kek.seal(&sealing_context(&id), content).map_err(|e| Error::Unavailable(e.to_string()))?;
        let now = self.clock.now();
        change.push(Mutation::InsertDelivery(Delivery {
            id,
            channel: channel.to_owned(),
            about: about.to_owned(),
            target: target.to_owned(),
            sealed,
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_at: due.max(now),
            lease_holder: None,
            lease_until: None,
            created_at: now,
            last_error: None,
        }));
        Ok(())
    }

    /// Adds to `change` the ping or push that tells the agent how its CIBA
    /// request ended (CIBA §10.2, §10.3.1, §12).
    pub(crate) fn enqueue_callback(
        &self,
        change: &mut Change,
        callback: &CibaCallback,
        ended: Ended<'_>,
    ) -> Result<(), Error> {
        let id = callback.approval.to_string();
        let bearer = self
            .kek
            .open(&token_context(&id), &callback.sealed_token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Error::Unavailable("a client_notification_token cannot be unsealed".into()))?;
        let due = match &ended {
            Ended::Expired(at) => *at,
            _ => self.clock.now(),
        };
        let (channel, body) = match (callback.mode, ended) {
            (DeliveryMode::Push, Ended::Approved(Some(t))) => {
                let mut body = serde_json::json!({
                    "auth_req_id": id,
                    "access_token": t.access_token,
                    "token_type": t.token_type,
                    "expires_in": t.expires_in,
                    "scope": t.scope,
                });
                if let (Some(r), Some(map)) = (&t.refresh_token, body.as_object_mut()) {
                    map.insert("refresh_token".into(), serde_json::Value::String(r.clone()));
                }
                (PUSH, body)
            }
            (DeliveryMode::Push, Ended::Approved(None)) => {
                return Err(Error::Unavailable("a push without its tokens".into()));
            }
            (DeliveryMode::Push, Ended::Denied) => (
                PUSH,
                serde_json::json!({
                    "auth_req_id": id,
                    "error": "access_denied",
                    "error_description": "the user denied the request",
                }),
            ),
            (DeliveryMode::Push, Ended::Failed(why)) => (
                PUSH,
                serde_json::json!({
                    "auth_req_id": id,
                    "error": "transaction_failed",
                    "error_description": why,
                }),
            ),
            (DeliveryMode::Push, Ended::Expired(_)) => (
                EXPIRY,
                serde_json::json!({
                    "auth_req_id": id,
                    "error": "expired_token",
                    "error_description": "the request expired before anyone decided it",
                }),
            ),
            (DeliveryMode::Ping, Ended::Expired(_)) => (EXPIRY, serde_json::json!({ "auth_req_id": id })),
            (DeliveryMode::Ping, _) => (PING, serde_json::json!({ "auth_req_id": id })),
            (DeliveryMode::Poll, _) => return Ok(()),
        };
        let content = serde_json::to_vec(&Callback { url: callback.endpoint.clone(), bearer, body })
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        self.enqueue_due(change, (channel, &id, &shown_url(&callback.endpoint)), &content, due)
    }

    /// Who is told that `approval` waits for a decision. The one place
    /// that answers it.
    pub(crate) async fn approval_recipients(&self, approval: &Approval) -> Result<Vec<User>, Error> {
        // The named person, or the members of the group who may decide now
        // and have not approved yet (ADR 0025).
        self.people_to_notify(approval).await
    }

    /// Adds to `change` one notice per notifier telling the approval's
    /// recipients that it waits for them, with a link to the approvals
    /// page on the public issuer URL.
    pub(crate) async fn notify_approvers(&self, change: &mut Change, approval: &Approval) -> Result<(), Error> {
        let Some(notifiers) = self.notifiers.get().filter(|n| !n.is_empty()) else {
            return Ok(());
        };
        let recipients = self.approval_recipients(approval).await?;
        let agent = self.store.agent(approval.agent).await?;
        let user = self.store.user(approval.user).await?;
        let (Some(agent), Some(user)) = (agent, user) else {
            return Ok(());
        };
        if recipients.is_empty() {
            return Ok(());
        }
        let (scopes, action, target, context) = match &approval.subject {
            ApprovalSubject::Grant { scopes, .. } | ApprovalSubject::Reapproval { scopes, .. } => {
                (Some(scopes.to_claim()), None, None, Default::default())
            }
            ApprovalSubject::Action { action, target, context, .. } => {
                (None, Some(action.clone()), Some(target.clone()), context.clone())
            }
        };
        let notice = ApprovalNotice {
            approval: approval.id.to_string(),
            url: format!("{}/approvals", self.config.issuer),
            agent: Party { id: agent.id.to_string(), name: agent.name, email: None },
            user: Party::user(&user),
            resource: approval.resource.clone(),
            scopes,
            action,
            target,
            context,
            binding_message: approval.binding_message.clone(),
            expires_at: approval.expires_at,
            recipients: recipients.iter().map(Party::user).collect(),
        };
        let content = serde_json::to_vec(&notice).map_err(|e| Error::Unavailable(e.to_string()))?;
        let to = recipients.iter().map(|u| u.id.to_string()).collect::<Vec<_>>().join(" ");
        for n in notifiers {
            self.enqueue(change, n.channel(), &notice.approval, &to, &content)?;
        }
        Ok(())
    }

    /// One pass of the outbox worker: claims the items due now (each under
    /// a lease, so a node that lost the race skips it), sends each, and
    /// records the outcome: delivered, retried later, or, after
    /// [`MAX_ATTEMPTS`] or a failure not worth retrying, failed. The
    /// final outcome is audited (`delivery.sent`, `delivery.failed`).
    /// Returns how many items it attempted.
    pub async fn deliver_due(&self, holder: &str) -> Result<usize, Error> {
        let now = self.clock.now();
        let due = self.store.due_deliveries(now, BATCH).await?;
        let mut attempted = 0;
        for item in due {
            let until = now + Duration::seconds(LEASE_SECONDS);
            let lease = Mutation::LeaseDelivery { id: item.id.clone(), holder: holder.to_owned(), now, until };
            match self.store.commit(Change::new().with(lease)).await {
                Ok(_) => {}
                // Another node has it, or it was finished meanwhile.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            attempted += 1;
            let outcome = self.send(&item).await;
            self.finish(&item, holder, outcome).await?;
        }
        Ok(attempted)
    }

    async fn send(&self, item: &Delivery) -> Result<Sent, SendFailure> {
        let lasting = |why: &str| SendFailure { why: why.to_owned(), retry: false };
        if item.channel == EXPIRY {
            // Only a request still undecided when it expires is announced.
            let id: ApprovalId = item.about.parse().map_err(|_| lasting("not about a request"))?;
            let approval = self
                .store
                .approval(id)
                .await
                .map_err(|e| SendFailure { why: crate::audit::bounded(&e.to_string()), retry: true })?;
            match approval {
                None => return Ok(Sent::Moot("the request is gone")),
                Some(a) if a.status != ApprovalStatus::Pending => return Ok(Sent::Moot("the request was decided")),
                Some(a) if self.clock.now() < a.expires_at => {
                    return Err(SendFailure { why: "the request has not expired yet".into(), retry: true });
                }
                Some(_) => {}
            }
        }
        let content = self
            .kek
            .open(&sealing_context(&item.id), &item.sealed)
            .map_err(|_| lasting("the content cannot be unsealed"))?;
        match item.channel.as_str() {
            PING | PUSH | EXPIRY => {
                let sender = self.callbacks.get().ok_or_else(|| lasting("no callback sender is configured"))?;
                let cb: Callback =
                    serde_json::from_slice(&content).map_err(|_| lasting("the content is not a callback"))?;
                let body = serde_json::to_vec(&cb.body).map_err(|_| lasting("the body cannot be encoded"))?;
                sender.post_json(&cb.url, &cb.bearer, &body).await.map(|()| Sent::Sent)
            }
            channel => {
                let notifier = self
                    .notifiers
                    .get()
                    .and_then(|all| all.iter().find(|n| n.channel() == channel))
                    .ok_or_else(|| lasting(&format!("no notifier for channel {channel} is configured")))?;
                let notice: ApprovalNotice =
                    serde_json::from_slice(&content).map_err(|_| lasting("the content is not a notice"))?;
                notifier.notify(&notice).await.map(|()| Sent::Sent)
            }
        }
    }

    async fn finish(&self, item: &Delivery, holder: &str, outcome: Result<Sent, SendFailure>) -> Result<(), Error> {
        let now = self.clock.now();
        let attempts = item.attempts.saturating_add(1);
        let mut change = Change::new();
        let moot = matches!(outcome, Ok(Sent::Moot(_)));
        let (status, next_at, error) = match &outcome {
            Ok(Sent::Sent) => (DeliveryStatus::Delivered, now, None),
            // Done with, nothing sent: recorded on the item, not audited.
            Ok(Sent::Moot(why)) => (DeliveryStatus::Delivered, now, Some(format!("not sent: {why}"))),
            Err(f) if f.retry && attempts < MAX_ATTEMPTS => {
                let mut jitter = [0u8; 1];
                self.rng.fill(&mut jitter)?;
                (DeliveryStatus::Pending, now + backoff(attempts, jitter[0]), Some(crate::audit::bounded(&f.why)))
            }
            Err(f) => (DeliveryStatus::Failed, now, Some(crate::audit::bounded(&f.why))),
        };
        change.push(Mutation::FinishDelivery {
            id: item.id.clone(),
            holder: holder.to_owned(),
            status,
            attempts,
            next_at,
            error: error.clone(),
        });
        if status != DeliveryStatus::Pending && !moot {
            let delivered = status == DeliveryStatus::Delivered;
            let mut event = self.event(if delivered { kind::DELIVERY_SENT } else { kind::DELIVERY_FAILED });
            event.decision = Some(if delivered { ALLOW } else { DENY }.into());
            event.actor = Some("mandate".into());
            event.resource = Some(crate::audit::bounded(&item.target));
            event.reason = Some(crate::audit::bounded(&format!(
                "{} {} about {} after {attempts} attempt{}{}",
                item.channel,
                item.id,
                item.about,
                if attempts == 1 { "" } else { "s" },
                error.map(|e| format!(": {e}")).unwrap_or_default()
            )));
            change.push(AuditRecord::new(event).mutation());
        }
        match self.store.commit(change).await {
            Ok(_) => Ok(()),
            // The lease ran out and another node took the item over: its
            // outcome is the one recorded.
            Err(StoreError::Conflict(_)) => {
                tracing::warn!(id = %item.id, "an outbox item's lease ran out before its outcome was recorded");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A URL as the audit trail shows it: without its query, which may carry
/// secrets.
fn shown_url(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    //! The outbox on a memory store, with a clock moved by hand and
    //! receivers that answer as each test scripts.

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use mandate_model::ApprovalId;
    use mandate_model::delivery::{DeliveryMode, DeliveryStatus};
    use mandate_model::records::ApprovalStatus;
    use time::Duration;

    use super::*;
    use crate::audit::kind;
    use crate::ports::{ApproverNotifier, CallbackSender, Clock};
    use crate::store::Store;
    use crate::testing::{CAL, Client, ISSUER, World};
    use crate::{AgentPatch, BcAuthorizeRequest, Caller};

    /// What a receiver got, and how it answers next (then: delivered).
    #[derive(Default)]
    struct Receiver {
        got: Mutex<Vec<(String, String, serde_json::Value)>>,
        answers: Mutex<VecDeque<Result<(), SendFailure>>>,
    }

    impl Receiver {
        fn failing(n: usize, retry: bool) -> Arc<Self> {
            let r = Receiver::default();
            if let Ok(mut a) = r.answers.lock() {
                for _ in 0..n {
                    a.push_back(Err(SendFailure { why: "HTTP 503".into(), retry }));
                }
            }
            Arc::new(r)
        }
        fn got(&self) -> Vec<(String, String, serde_json::Value)> {
            self.got.lock().map(|g| g.clone()).unwrap_or_default()
        }
        fn answer(&self) -> Result<(), SendFailure> {
            self.answers.lock().ok().and_then(|mut a| a.pop_front()).unwrap_or(Ok(()))
        }
    }

    #[async_trait::async_trait]
    impl CallbackSender for Receiver {
        fn check_url(&self, url: &str) -> Result<(), String> {
            if url.starts_with("https://") { Ok(()) } else { Err("the URL must use https".into()) }
        }
        async fn post_json(&self, url: &str, bearer: &str, body: &[u8]) -> Result<(), SendFailure> {
            let body = serde_json::from_slice(body).unwrap_or_default();
            if let Ok(mut g) = self.got.lock() {
                g.push((url.to_owned(), bearer.to_owned(), body));
            }
            self.answer()
        }
    }

    #[async_trait::async_trait]
    impl ApproverNotifier for Receiver {
        fn channel(&self) -> &'static str {
            "test"
        }
        async fn notify(&self, notice: &ApprovalNotice) -> Result<(), SendFailure> {
            if let Ok(mut g) = self.got.lock() {
                g.push((notice.url.clone(), String::new(), serde_json::to_value(notice).unwrap_or_default()));
            }
            self.answer()
        }
    }

    const CB: &str = "https://agent.example/cb";

    async fn register(w: &World, c: &Client, mode: DeliveryMode) {
        let patch = AgentPatch {
            backchannel_token_delivery_mode: Some(mode),
            backchannel_client_notification_endpoint: Some(CB.into()),
            ..Default::default()
        };
        w.m.update_agent(Caller::Admin, c.id(), patch).await.expect("the backchannel is registered");
    }

    async fn ask(w: &World, c: &Client, scope: &str, token: Option<&str>) -> Result<ApprovalId, Error> {
        let req = BcAuthorizeRequest {
            login_hint: w.alice.email.clone(),
            scope: Some(scope.into()),
            resources: vec![CAL.into()],
            binding_message: Some("plan the offsite".into()),
            requested_expiry: None,
            allowed_actors: None,
            authorization_details: None,
            client_notification_token: token.map(str::to_owned),
        };
        let asked = w.m.bc_authorize(&w.creds(c), Ok(req)).await?;
        Ok(asked.auth_req_id.parse().expect("an approval id"))
    }

    /// The outbox items about `id`, but the expiry announcement each
    /// waiting ping or push request has (due only when it expires).
    async fn items(w: &World, id: ApprovalId) -> Vec<Delivery> {
        let all = w.store.deliveries_about(&id.to_string()).await.expect("a store that answers");
        all.into_iter().filter(|d| d.channel != EXPIRY).collect()
    }

    #[tokio::test]
    async fn a_request_that_expires_undecided_is_announced_and_a_decided_one_is_not() {
        let w = World::new().await;
        let rx = Arc::new(Receiver::default());
        w.m.set_callback_sender(rx.clone());
        register(&w, &w.planner, DeliveryMode::Push).await;
        let id = ask(&w, &w.planner, "write", Some("cb-exp")).await.unwrap();
        let all = w.store.deliveries_about(&id.to_string()).await.unwrap();
        assert_eq!(all.iter().map(|d| d.channel.as_str()).collect::<Vec<_>>(), vec![EXPIRY]);
        let expires = w.store.approval(id).await.unwrap().unwrap().expires_at;
        assert_eq!(all[0].next_at, expires, "due when the request expires");
        assert_eq!(w.m.deliver_due("n1").await.unwrap(), 0, "not before it expires");
        w.clock.advance(expires - w.clock.now() + Duration::seconds(1));
        assert_eq!(w.m.deliver_due("n1").await.unwrap(), 1);
        let got = rx.got();
        assert_eq!(got.len(), 1, "{got:?}");
        let (_, bearer, body) = &got[0];
        assert_eq!(bearer, "cb-exp");
        assert_eq!(
            (body["auth_req_id"].as_str(), body["error"].as_str()),
            (Some(id.to_string().as_str()), Some("expired_token"))
        );
        assert!(body.get("access_token").is_none());
        assert_eq!(w.events(kind::DELIVERY_SENT).await.len(), 1);
        assert_eq!(w.m.deliver_due("n1").await.unwrap(), 0, "announced once");
        // A request decided before it expires is announced by its decision only.
        register(&w, &w.planner, DeliveryMode::Ping).await;
        let decided = ask(&w, &w.planner, "write", Some("cb-dec")).await.unwrap();
        w.m.decide_approval(Caller::User(w.alice.id), decided, false).await.unwrap();
        let expires = w.store.approval(decided).await.unwrap().unwrap().expires_at;
        w.clock.advance(expires - w.clock.now() + Duration::seconds(1));
        assert_eq!(w.m.deliver_due("n1").await.unwrap(), 2, "the ping, and the moot expiry");
        let got = rx.got();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1].2, serde_json::json!({"auth_req_id": decided}));
        let left = w.store.deliveries_about(&decided.to_string()).await.unwrap();
        let expiry = left.iter().find(|d| d.channel == EXPIRY).unwrap();
        assert_eq!(
            (expiry.status, expiry.last_error.as_deref()),
            (DeliveryStatus::Delivered, Some("not sent: the request was decided"))
        );
        assert_eq!(w.events(kind::DELIVERY_SENT).await.len(), 2, "what was not sent is not audited as sent");
    }

    #[tokio::test]
    async fn a_ping_agent_is_called_back_with_its_token_and_then_polls() {
        let w = World::new().await;
        let rx = Arc::new(Receiver::default());
        w.m.set_callback_sender(rx.clone());
        register(&w, &w.planner, DeliveryMode::Ping).await;
        let missing = ask(&w, &w.planner, "write", None).await;
        assert!(matches!(missing, Err(Error::InvalidRequest(ref m)) if m.contains("client_notification_token")));
        let long = "a".repeat(MAX_NOTIFICATION_TOKEN + 1);
        assert!(matches!(ask(&w, &w.planner, "write", Some(&long)).await, Err(Error::InvalidRequest(_))));
        assert!(matches!(ask(&w, &w.planner, "write", Some("a b")).await, Err(Error::InvalidRequest(_))));
        let id = ask(&w, &w.planner, "write", Some("cb-token-1")).await.unwrap();
        assert!(items(&w, id).await.is_empty(), "nothing is sent before the decision");
        w.m.decide_approval(Caller::User(w.alice.id), id, true).await.unwrap();
        let queued = items(&w, id).await;
        assert_eq!(queued.len(), 1);
        let item = queued.first().unwrap();
        assert_eq!((item.channel.as_str(), item.status, item.target.as_str()), (PING, DeliveryStatus::Pending, CB));
        assert!(!String::from_utf8_lossy(&item.sealed).contains("cb-token-1"), "the bearer token is sealed");
        assert_eq!(w.m.deliver_due("n1").await.unwrap(), 1);
        assert_eq!(rx.got(), vec![(CB.to_owned(), "cb-token-1".to_owned(), serde_json::json!({"auth_req_id": id}))]);
        let done = items(&w, id).await;
        assert_eq!(done.first().map(|d| (d.status, d.attempts)), Some((DeliveryStatus::Delivered, 1)));
        assert_eq!(w.events(kind::DELIVERY_SENT).await.len(), 1);
        assert_eq!(w.m.deliver_due("n1").await.unwrap(), 0, "sent once");
        // Polling stays allowed in ping mode (CIBA §10.2).
        let tokens = w.poll(&w.planner, &id.to_string()).await.unwrap();
        assert!(tokens.refresh_token.is_some());
    }

    #[tokio::test]
    async fn a_push_agent_gets_its_tokens_at_the_decision_and_may_not_poll() {
        let w = World::new().await;
        let rx = Arc::new(Receiver::default());
        w.m.set_callback_sender(rx.clone());
        register(&w, &w.planner, DeliveryMode::Push).await;
        let id = ask(&w, &w.planner, "write", Some("cb-token-2")).await.unwrap();
        let early = w.poll(&w.planner, &id.to_string()).await;
        assert!(matches!(early, Err(Error::UnauthorizedClient(ref m)) if m.contains("push")), "{early:?}");
        w.m.decide_approval(Caller::User(w.alice.id), id, true).await.unwrap();
        assert_eq!(w.store.approval(id).await.unwrap().map(|a| a.status), Some(ApprovalStatus::Consumed));
        assert!(!String::from_utf8_lossy(&items(&w, id).await[0].sealed).contains("mnd_rt_"), "tokens are sealed");
        w.m.deliver_due("n1").await.unwrap();
        let got = rx.got();
        let (_, bearer, body) = got.first().unwrap();
        assert_eq!(bearer, "cb-token-2");
        assert_eq!(body["auth_req_id"], id.to_string());
        assert_eq!((body["token_type"].as_str(), body["scope"].as_str()), (Some("Bearer"), Some("write")));
        assert!(body["refresh_token"].as_str().is_some_and(|r| r.starts_with("mnd_rt_")));
        let at = body["access_token"].as_str().unwrap();
        let live = w.m.live_chain(at).await.unwrap();
        assert!(live.is_ok_and(|l| l.record.subject == w.alice.id.to_string()), "the pushed access token is live");
        let polled = w.poll(&w.planner, &id.to_string()).await;
        assert!(matches!(polled, Err(Error::UnauthorizedClient(_))), "{polled:?}");
        // A denial is pushed as CIBA §12's error.
        let denied = ask(&w, &w.planner, "write", Some("cb-token-3")).await.unwrap();
        w.m.decide_approval(Caller::User(w.alice.id), denied, false).await.unwrap();
        w.m.deliver_due("n1").await.unwrap();
        let got = rx.got();
        let (_, _, body) = got.get(1).unwrap();
        assert_eq!(
            (body["auth_req_id"].as_str(), body["error"].as_str()),
            (Some(denied.to_string().as_str()), Some("access_denied"))
        );
        assert!(body.get("access_token").is_none());
    }

    #[tokio::test]
    async fn a_self_authorised_push_is_sent_at_once() {
        let w = World::new().await;
        let rx = Arc::new(Receiver::default());
        w.m.set_callback_sender(rx.clone());
        register(&w, &w.planner, DeliveryMode::Push).await;
        let id = ask(&w, &w.planner, "read", Some("cb-token-4")).await.unwrap();
        assert_eq!(w.store.approval(id).await.unwrap().map(|a| a.status), Some(ApprovalStatus::Consumed));
        w.m.deliver_due("n1").await.unwrap();
        assert!(rx.got().first().is_some_and(|(_, _, b)| b["access_token"].is_string()));
        assert_eq!(w.events(kind::TOKEN_ISSUED).await.len(), 1);
    }

    #[tokio::test]
    async fn a_receiver_that_fails_twice_gets_it_on_the_third_attempt() {
        let w = World::new().await;
        let rx = Receiver::failing(2, true);
        w.m.set_callback_sender(rx.clone());
        register(&w, &w.planner, DeliveryMode::Ping).await;
        let id = ask(&w, &w.planner, "write", Some("t")).await.unwrap();
        w.m.decide_approval(Caller::User(w.alice.id), id, true).await.unwrap();
        assert_eq!(w.m.deliver_due("n1").await.unwrap(), 1);
        let after = items(&w, id).await;
        let first = after.first().unwrap();
        assert_eq!(
            (first.status, first.attempts, first.last_error.as_deref()),
            (DeliveryStatus::Pending, 1, Some("HTTP 503"))
        );
        assert!(
            first.next_at >= w.clock.now() + Duration::seconds(10)
                && first.next_at <= w.clock.now() + Duration::seconds(12)
        );
        assert_eq!(w.m.deliver_due("n1").await.unwrap(), 0, "not before its backoff");
        w.clock.advance(Duration::seconds(12));
        assert_eq!(w.m.deliver_due("n1").await.unwrap(), 1);
        w.clock.advance(Duration::seconds(36));
        assert_eq!(w.m.deliver_due("n1").await.unwrap(), 1);
        let done = items(&w, id).await;
        assert_eq!(done.first().map(|d| (d.status, d.attempts)), Some((DeliveryStatus::Delivered, 3)));
        assert_eq!(rx.got().len(), 3);
        assert!(w.events(kind::DELIVERY_FAILED).await.is_empty());
        assert_eq!(w.events(kind::DELIVERY_SENT).await.len(), 1);
    }

    #[tokio::test]
    async fn a_receiver_that_always_fails_is_given_up_after_six_attempts_and_audited() {
        let w = World::new().await;
        let rx = Receiver::failing(100, true);
        w.m.set_callback_sender(rx.clone());
        register(&w, &w.planner, DeliveryMode::Ping).await;
        let id = ask(&w, &w.planner, "write", Some("t")).await.unwrap();
        w.m.decide_approval(Caller::User(w.alice.id), id, true).await.unwrap();
        for _ in 0..20 {
            w.m.deliver_due("n1").await.unwrap();
            w.clock.advance(Duration::seconds(361));
        }
        assert_eq!(rx.got().len(), MAX_ATTEMPTS as usize);
        let done = items(&w, id).await;
        assert_eq!(done.first().map(|d| (d.status, d.attempts)), Some((DeliveryStatus::Failed, MAX_ATTEMPTS)));
        let failed = w.events(kind::DELIVERY_FAILED).await;
        assert_eq!(failed.len(), 1);
        let why = failed.first().and_then(|e| e.reason.clone()).unwrap_or_default();
        assert!(why.contains("after 6 attempts") && why.contains("HTTP 503") && !why.contains("t\""), "{why}");
        // A failure not worth retrying ends at once.
        let rx = Receiver::failing(1, false);
        let w = World::new().await;
        w.m.set_callback_sender(rx.clone());
        register(&w, &w.planner, DeliveryMode::Ping).await;
        let id = ask(&w, &w.planner, "write", Some("t")).await.unwrap();
        w.m.decide_approval(Caller::User(w.alice.id), id, false).await.unwrap();
        w.m.deliver_due("n1").await.unwrap();
        assert_eq!(items(&w, id).await.first().map(|d| d.status), Some(DeliveryStatus::Failed));
        assert_eq!(w.events(kind::DELIVERY_FAILED).await.len(), 1);
    }

    #[tokio::test]
    async fn a_leased_item_is_left_to_its_holder_until_the_lease_runs_out() {
        let w = World::new().await;
        let rx = Arc::new(Receiver::default());
        w.m.set_callback_sender(rx.clone());
        register(&w, &w.planner, DeliveryMode::Ping).await;
        let id = ask(&w, &w.planner, "write", Some("t")).await.unwrap();
        w.m.decide_approval(Caller::User(w.alice.id), id, true).await.unwrap();
        let item = items(&w, id).await.remove(0);
        // Another node claimed it, then went away.
        let now = w.clock.now();
        let lease = Mutation::LeaseDelivery {
            id: item.id.clone(),
            holder: "n2".into(),
            now,
            until: now + Duration::seconds(LEASE_SECONDS),
        };
        w.store.commit(Change::new().with(lease)).await.unwrap();
        assert_eq!(w.m.deliver_due("n1").await.unwrap(), 0);
        assert!(rx.got().is_empty());
        w.clock.advance(Duration::seconds(LEASE_SECONDS));
        assert_eq!(w.m.deliver_due("n1").await.unwrap(), 1);
        assert_eq!(rx.got().len(), 1);
    }

    #[tokio::test]
    async fn approvers_are_told_what_waits_for_them() {
        let w = World::new().await;
        let rx = Arc::new(Receiver::default());
        w.m.set_notifiers(vec![rx.clone()]);
        // A self-authorised request waits for nobody.
        let read = ask(&w, &w.planner, "read", None).await.unwrap();
        assert!(items(&w, read).await.is_empty());
        let id = ask(&w, &w.planner, "write", None).await.unwrap();
        let queued = items(&w, id).await;
        assert_eq!(
            queued.iter().map(|d| (d.channel.as_str(), d.target.clone())).collect::<Vec<_>>(),
            vec![("test", w.alice.id.to_string())]
        );
        w.m.deliver_due("n1").await.unwrap();
        let got = rx.got();
        let (url, _, notice) = got.first().unwrap();
        assert_eq!(url, &format!("{ISSUER}/approvals"));
        assert_eq!(notice["approval"], id.to_string());
        assert_eq!(notice["agent"]["id"], w.planner.id().to_string());
        assert_eq!(notice["user"]["email"], "alice@example.com");
        assert_eq!((notice["scopes"].as_str(), notice["resource"].as_str()), (Some("write"), Some(CAL)));
        assert_eq!(notice["binding_message"], "plan the offsite");
        assert_eq!(notice["recipients"][0]["id"], w.alice.id.to_string());
        assert_eq!(w.events(kind::DELIVERY_SENT).await.len(), 1);
    }

    #[tokio::test]
    async fn backchannel_registrations_are_checked() {
        let w = World::new().await;
        let patch = |mode: Option<DeliveryMode>, endpoint: Option<&str>| AgentPatch {
            backchannel_token_delivery_mode: mode,
            backchannel_client_notification_endpoint: endpoint.map(str::to_owned),
            ..Default::default()
        };
        let id = w.planner.id();
        let no_sender = w.m.update_agent(Caller::Admin, id, patch(Some(DeliveryMode::Ping), Some(CB))).await;
        assert!(matches!(no_sender, Err(Error::BadInput(_))), "ping without a way to call back: {no_sender:?}");
        w.m.set_callback_sender(Arc::new(Receiver::default()));
        for (mode, endpoint) in [
            (Some(DeliveryMode::Ping), None),
            (Some(DeliveryMode::Push), Some("http://agent.example/cb")),
            (Some(DeliveryMode::Poll), Some(CB)),
            (None, Some("ftp://agent.example/cb")),
        ] {
            let got = w.m.update_agent(Caller::Admin, id, patch(mode, endpoint)).await;
            assert!(matches!(got, Err(Error::BadInput(_))), "{mode:?} {endpoint:?}: {got:?}");
        }
        assert_eq!(w.store.backchannel(id).await.unwrap(), None, "a refused registration changed nothing");
        w.m.update_agent(Caller::Admin, id, patch(Some(DeliveryMode::Push), Some(CB))).await.unwrap();
        let kept = w.store.backchannel(id).await.unwrap().unwrap();
        assert_eq!((kept.mode, kept.endpoint.as_deref()), (DeliveryMode::Push, Some(CB)));
        assert!(
            w.events(kind::AGENT_UPDATED).await.iter().any(|e| e.reason.as_deref().is_some_and(|r| r.contains("push")))
        );
        // Back to poll.
        w.m.update_agent(Caller::Admin, id, patch(Some(DeliveryMode::Poll), None)).await.unwrap();
        assert_eq!(w.store.backchannel(id).await.unwrap().map(|b| b.mode), Some(DeliveryMode::Poll));
        assert_eq!(w.m.delivery_modes(), vec!["poll", "ping", "push"]);
    }

    #[test]
    fn backoff_grows_to_five_minutes_with_a_bounded_stretch() {
        assert_eq!(backoff(1, 0), Duration::seconds(10));
        assert_eq!(backoff(1, 255), Duration::seconds(12));
        assert_eq!(backoff(2, 0), Duration::seconds(30));
        assert_eq!(backoff(5, 0), Duration::seconds(300));
        assert_eq!(backoff(9, 255), Duration::seconds(360));
        let total: i64 = (1..MAX_ATTEMPTS).map(|n| backoff(n, 255).whole_seconds()).sum();
        assert!(total <= 12 * 60, "{total}");
    }
}
