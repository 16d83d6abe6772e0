//! The audit trail (DESIGN §6): how use cases record events, and how the
//! trail is read, verified, traced and checkpointed.
//!
//! A use case never appends an event on its own: it adds a
//! [`Mutation::AppendAudit`] to the very [`Change`] that makes the state
//! change, so that the store commits both or neither. The store assigns
//! `seq`, links `prev_hash` and computes `hash` while it holds the chain's
//! head, so events are numbered in commit order.

use std::future::Future;

use mandate_audit::{ChainVerifier, Checkpoint, Event, Tamper, Trace, Verified};
use mandate_jose::PublicJwk;
use time::OffsetDateTime;

use crate::Error;
use crate::service::{Caller, Mandate};
use crate::store::{Applied, Change, Handle, KeyUse, Mutation, Store, StoreError};

/// Event types. The trail's own vocabulary, documented in `docs/audit.md`.
pub mod kind {
    pub const TOKEN_ISSUED: &str = mandate_audit::trace::TOKEN_ISSUED;
    pub const TOKEN_DENIED: &str = "token.denied";
    pub const TOKEN_REVOKED: &str = "token.revoked";
    pub const TOKEN_INTROSPECTED: &str = "token.introspected";
    pub const CLIENT_AUTH_FAILED: &str = "client.auth_failed";
    pub const ADMIN_AUTH_FAILED: &str = "admin.auth_failed";
    pub const ADMIN_DENIED: &str = "admin.denied";
    pub const ADMIN_TOKEN_SEEDED: &str = "admin.token_seeded";
    pub const USER_CREATED: &str = "user.created";
    pub const USER_UPDATED: &str = "user.updated";
    /// A person linked to an upstream identity (`iss`, `sub`).
    pub const USER_LINKED: &str = "user.linked";
    pub const USER_TOKEN_CREATED: &str = "user.token_created";
    pub const USER_TOKEN_REVOKED: &str = "user.token_revoked";
    /// The admin issued a SCIM provisioning token.
    pub const SCIM_TOKEN_CREATED: &str = "scim.token_created";
    pub const SCIM_TOKEN_REVOKED: &str = "scim.token_revoked";
    /// A SCIM client deleted a User: the person is disabled, never removed.
    pub const SCIM_USER_DELETED: &str = "scim.user_deleted";
    /// A SCIM client created, changed (renamed, re-keyed or re-membered) or
    /// deleted a Group; `resource` is its `grp_…` id.
    pub const SCIM_GROUP_CREATED: &str = "scim.group_created";
    pub const SCIM_GROUP_UPDATED: &str = "scim.group_updated";
    pub const SCIM_GROUP_DELETED: &str = "scim.group_deleted";
    /// A person (`subject`) joined or left a SCIM Group: they got or lost
    /// its Cedar group.
    pub const SCIM_MEMBER_ADDED: &str = "scim.group_member_added";
    pub const SCIM_MEMBER_REMOVED: &str = "scim.group_member_removed";
    pub const AGENT_CREATED: &str = "agent.created";
    pub const AGENT_UPDATED: &str = "agent.updated";
    /// A client registered itself (metadata document or RFC 7591), or
    /// its metadata document changed.
    pub const CLIENT_REGISTERED: &str = "client.registered";
    pub const CLIENT_REGISTRATION_REFUSED: &str = "client.registration_refused";
    pub const AGENT_SUSPENDED: &str = "agent.suspended";
    pub const AGENT_RESUMED: &str = "agent.resumed";
    pub const AGENT_RETIRED: &str = "agent.retired";
    pub const AGENT_EXPIRED: &str = "agent.expired";
    pub const RESOURCE_CREATED: &str = "resource.created";
    pub const POLICY_UPDATED: &str = "policy.updated";
    pub const KEY_CREATED: &str = "key.created";
    pub const KEY_ROTATED: &str = "key.rotated";
    pub const GRANT_CREATED: &str = "grant.created";
    pub const GRANT_REVOKED: &str = "grant.revoked";
    pub const GRANT_DENIED: &str = "grant.denied";
    /// A reapproval waits for the person (or group) policy names (ADR 0036).
    pub const GRANT_REAPPROVAL_REQUESTED: &str = "grant.reapproval_requested";
    /// A grant's expiry was moved forward by a reapproval.
    pub const GRANT_REAPPROVED: &str = "grant.reapproved";
    /// Policy, or the person asked, refused to renew a grant.
    pub const GRANT_REAPPROVAL_DENIED: &str = "grant.reapproval_denied";
    /// Housekeeping found a grant expired without being revoked.
    pub const GRANT_LAPSED: &str = "grant.lapsed";
    /// An access review narrowed a grant's scopes; its tokens are revoked.
    pub const GRANT_NARROWED: &str = "grant.narrowed";
    /// An access review campaign was started (`resource`: its `rvc_…` id).
    pub const REVIEW_CAMPAIGN_CREATED: &str = "review.campaign_created";
    /// A review item was decided (by its assignee, a reviewer, or the
    /// campaign's default at the deadline); `resource` is the finding's subject.
    pub const REVIEW_ITEM_DECIDED: &str = "review.item_decided";
    /// A campaign's deadline passed: its defaults were applied and it closed.
    pub const REVIEW_CAMPAIGN_CLOSED: &str = "review.campaign_closed";
    pub const APPROVAL_REQUESTED: &str = "approval.requested";
    pub const APPROVAL_APPROVED: &str = "approval.approved";
    pub const APPROVAL_DENIED: &str = "approval.denied";
    /// One member of a group approval approved; more approvals are needed.
    pub const APPROVAL_COUNTED: &str = "approval.counted";
    pub const CIBA_POLLED: &str = "ciba.polled";
    /// An outbox item (a CIBA ping or push, an approver notice) was sent.
    pub const DELIVERY_SENT: &str = "delivery.sent";
    /// An outbox item was given up: every attempt failed, or one failed
    /// in a way not worth retrying.
    pub const DELIVERY_FAILED: &str = "delivery.failed";
    /// A Shared Signals stream was created, changed or deleted by its receiver.
    pub const SSF_STREAM_CREATED: &str = "ssf.stream_created";
    pub const SSF_STREAM_UPDATED: &str = "ssf.stream_updated";
    pub const SSF_STREAM_DELETED: &str = "ssf.stream_deleted";
    /// A stream's status changed (by its receiver, or paused by Mandate
    /// after failed pushes).
    pub const SSF_STREAM_STATUS: &str = "ssf.stream_status";
    pub const REFRESH_REUSED: &str = "refresh.reused";
    pub const CHECK: &str = "check.decided";
    pub const SESSION_CREATED: &str = "session.created";
    pub const SESSION_ENDED: &str = "session.ended";
    pub const SIGN_IN_FAILED: &str = "session.sign_in_failed";
}

/// Decisions an event may record.
pub const ALLOW: &str = "allow";
pub const DENY: &str = "deny";

/// Longest free text (reasons, request ids) kept in an event.
const MAX_TEXT: usize = 512;
/// Longest request id accepted from a client's `X-Request-Id`.
pub const MAX_REQUEST_ID: usize = 64;
/// Events read per page when the whole trail is walked.
pub const PAGE: u32 = 10_000;
/// Most events one query returns.
pub const MAX_QUERY_LIMIT: u32 = 1_000;
/// People in this group read the whole audit trail, on the API and the
/// web pages, like the admin (and change nothing more than anyone else).
pub const AUDITORS_GROUP: &str = "mandate-auditors";
/// The groups only the admin token gives (ADR 0037): no SCIM client, no
/// upstream identity provider and no person can.
pub const ADMIN_ONLY_GROUPS: [&str; 2] = [AUDITORS_GROUP, Mandate::ADMINS_GROUP];

/// Whether `user` opens the admin console: active, and in
/// [`Mandate::ADMINS_GROUP`] (given by the admin token only).
pub fn opens_console(user: &mandate_model::records::User) -> bool {
    user.status == mandate_model::records::UserStatus::Active && user.groups.iter().any(|g| g == Mandate::ADMINS_GROUP)
}

/// Most tokens a trace follows.
const MAX_TRACE_NODES: usize = 10_000;
/// Most events a trace reads in all, and most agents whose lifecycle it
/// looks up: a trace is an investigation, not an export.
const MAX_TRACE_EVENTS: usize = 100_000;
const MAX_TRACE_AGENTS: usize = 64;

/// `t` as an event time: RFC 3339, UTC, always six fractional digits, so
/// that the text sorts in time order and `since` filters compare strings.
/// Written field by field, so that no time is ever replaced by a sentinel.
pub fn event_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Parses an RFC 3339 time given by a caller into the event-time form.
pub fn parse_since(s: &str) -> Result<String, Error> {
    let t = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| Error::BadInput("since must be an RFC 3339 time, such as 2026-11-23T10:00:00Z".into()))?;
    Ok(event_time(t))
}

/// What the server knows of the request being served.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Stamped on the events the request records.
    pub id: String,
    /// The client's address (after trusted proxies), for aggregating
    /// repeated refusals by source.
    pub client: Option<std::net::IpAddr>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// Runs `f` with `id` as the request id stamped on the events it records.
pub async fn with_request_id<F: Future>(id: String, f: F) -> F::Output {
    REQUEST.scope(RequestContext { id, client: None }, f).await
}

/// Runs `f` as the request `ctx` describes.
pub async fn with_request<F: Future>(ctx: RequestContext, f: F) -> F::Output {
    REQUEST.scope(ctx, f).await
}

/// The client address of the request being served, if known.
pub fn current_client() -> Option<std::net::IpAddr> {
    REQUEST.try_with(|r| r.client).ok().flatten()
}

/// The id of the request being served, if any: stamped on its events, and
/// the one thing a client is told about an internal failure.
pub fn current_request_id() -> Option<String> {
    REQUEST.try_with(|r| r.id.clone()).ok()
}

/// `s` cut to at most `MAX_TEXT` bytes, on a character boundary.
pub(crate) fn bounded(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_owned();
    }
    // Room for the ellipsis (3 bytes) within the bound.
    let mut end = MAX_TEXT - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or_default())
}

/// An event to append in the same change as the state it records.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Unsealed: the store fills in `seq`, `prev_hash` and `hash`.
    pub event: Event,
    /// Earlier mutations of the same change whose affected rows, summed,
    /// become `event.count` (how far a cascade reached).
    pub count_of: Vec<Handle>,
}

impl AuditRecord {
    pub fn new(event: Event) -> Self {
        Self { event, count_of: Vec::new() }
    }

    /// An event whose `count` is the rows `counted` reach.
    pub fn counting(event: Event, counted: &[Handle]) -> Self {
        Self { event, count_of: counted.to_vec() }
    }

    /// The mutation appending this record.
    pub fn mutation(self) -> Mutation {
        Mutation::AppendAudit(Box::new(self))
    }

    /// The event's `count`: the rows reached by the counted mutations,
    /// which must have been applied before this record.
    pub fn count(&self, applied: &Applied) -> Result<Option<u64>, StoreError> {
        if self.count_of.is_empty() {
            return Ok(self.event.count);
        }
        let mut sum = 0u64;
        for &h in &self.count_of {
            let n = applied.get(h).ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "an audit record counts mutation {}, which is not applied before it",
                    h.id()
                ))
            })?;
            sum = sum.checked_add(n).ok_or_else(|| StoreError::Unavailable("an audit count overflows".into()))?;
        }
        Ok(Some(sum))
    }

    /// The hash the event takes at `seq` after `prev`, with `count`.
    pub fn hash_at(&self, seq: u64, prev: &str, count: Option<u64>) -> String {
        self.event.hash_as(seq, prev, count)
    }
}

/// The sealed event a store keeps: `count` from the change's applied
/// mutations, then `seq`, `prev_hash` and `hash`. Stores call it while they
/// hold the chain's head.
pub fn seal_record(record: &AuditRecord, applied: &Applied, seq: u64, prev: &str) -> Result<Event, StoreError> {
    let mut event = record.event.clone();
    event.count = record.count(applied)?;
    mandate_audit::seal(event, seq, prev).map_err(|e| StoreError::Unavailable(format!("audit event: {e}")))
}

/// What a caller may filter the trail by (DESIGN §7). Every value is bound
/// as a parameter; none is ever spliced into SQL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events with `seq` greater than this (the cursor).
    pub after: u64,
    pub limit: u32,
    pub actor: Option<String>,
    pub subject: Option<String>,
    pub jti: Option<String>,
    pub grant: Option<String>,
    pub kind: Option<String>,
    pub resource: Option<String>,
    pub parent: Option<String>,
    /// An event time (see [`event_time`]); events at or after it.
    pub since: Option<String>,
    /// Only the events of this lane (the verifier reads a lane at a time).
    pub lane: Option<u64>,
}

/// Which column an [`AuditBatch`] selects events by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKey {
    /// `actor`: the agent that acted.
    Actor,
    /// `grant_id`: the grant a token or check was under.
    Grant,
}

/// The events of many actors or grants in one read: the access review's
/// per-page read (ADR 0038). Each key's events come in `seq` order, at most
/// `per_key` of them (its first, by `seq`); keys in key order. Every value
/// is bound as a parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBatch {
    pub by: AuditKey,
    pub keys: Vec<String>,
    /// Only events of this type.
    pub kind: Option<String>,
    /// Only events with `seq` greater than this.
    pub after: u64,
    /// An event time (see [`event_time`]); events at or after it.
    pub since: Option<String>,
    pub per_key: u32,
}

impl AuditBatch {
    /// The key of `e` this batch selects by.
    pub fn key_of<'e>(&self, e: &'e Event) -> Option<&'e str> {
        match self.by {
            AuditKey::Actor => e.actor.as_deref(),
            AuditKey::Grant => e.grant_id.as_deref(),
        }
    }
}

/// The head of one lane of the trail: its last event, and whether a stored
/// checkpoint already vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLane {
    pub lane: u64,
    pub seq: u64,
    pub hash: String,
    pub checkpointed: bool,
}

impl AuditQuery {
    /// Every event after `after`, a page at a time.
    pub fn page(after: u64) -> Self {
        Self { after, limit: PAGE, ..Self::default() }
    }
}

/// The result of verifying the stored trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrailReport {
    Intact(Verified),
    Broken(Tamper),
}

/// Verifies the trail in `store` page by page against its own signed
/// checkpoints and any `witnessed` ones kept outside the store.
///
/// Checkpoint signatures are checked against `trusted` keys when given
/// (keys pinned outside the database, or those the server unwrapped with
/// the master key). Without them, the audit keys' public halves stored in
/// the database are used, so that no master key is needed; but then anyone
/// who can write to the database can add a key of their own and re-sign,
/// and only a witness catches a rewritten chain.
pub async fn verify_trail(
    store: &dyn Store,
    witnessed: &[Checkpoint],
    trusted: Option<&[PublicJwk]>,
) -> Result<TrailReport, Error> {
    // A stored key or checkpoint that no longer reads was edited: that is
    // tampering too, though no event's seq can be named for it.
    let unreadable =
        |what: &str, why: String| Ok(TrailReport::Broken(Tamper::new(0, format!("{what} cannot be read: {why}"))));
    let keys = match trusted {
        Some(keys) => keys.to_vec(),
        None => match audit_public_keys(store).await {
            Ok(keys) => keys,
            Err(Error::Unavailable(why)) if why.starts_with("audit key") => return unreadable("an audit key", why),
            Err(e) => return Err(e),
        },
    };
    let mut checkpoints = match all_checkpoints(store).await {
        Ok(c) => c,
        Err(Error::Unavailable(why)) if why.starts_with(CORRUPT) => return unreadable("a stored checkpoint", why),
        Err(e) => return Err(e),
    };
    checkpoints.extend(witnessed.iter().cloned());
    let mut verifier = ChainVerifier::new(&checkpoints, &keys);
    // The lanes are listed after the checkpoints are read, so every lane a
    // checkpoint vouches for is walked. Each lane is read in its own `seq`
    // order, which is its commit order: a lane that grows while it is read
    // only adds pages at its end.
    let lanes = match store.audit_lanes().await {
        Ok(lanes) => lanes,
        Err(StoreError::Corrupt(why)) => return unreadable("a lane of the trail", why),
        Err(e) => return Err(e.into()),
    };
    for lane in lanes.iter().map(|l| l.lane) {
        loop {
            let cursor = verifier.lane_cursor(lane);
            let page = match store.audit_events(&AuditQuery { lane: Some(lane), ..AuditQuery::page(cursor) }).await {
                Ok(page) => page,
                // A row that no longer decodes was edited: that is tampering,
                // somewhere in this page.
                Err(StoreError::Corrupt(why)) => {
                    let why = format!("an event at or after this seq cannot be read: {why}");
                    verifier.close_lane(lane, Tamper::new(cursor + 1, why));
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            if page.is_empty() {
                break;
            }
            // Hashing a page is CPU work for both cores: off the async workers.
            let (back, fed) = tokio::task::spawn_blocking(move || {
                let fed = verifier.feed_lane(lane, &page);
                (verifier, fed)
            })
            .await
            .map_err(|e| Error::Unavailable(format!("the verifier stopped: {e}")))?;
            verifier = back;
            // A broken lane is closed; the other lanes are still walked, so
            // that the earliest failure of all is the one reported.
            if fed.is_err() {
                break;
            }
        }
    }
    Ok(match verifier.finish() {
        Ok(v) => TrailReport::Intact(v),
        Err(t) => TrailReport::Broken(t),
    })
}

/// The prefix of the error a corrupt checkpoint row becomes.
const CORRUPT: &str = "corrupt checkpoint row";

/// Every stored checkpoint, in seq order.
pub async fn all_checkpoints(store: &dyn Store) -> Result<Vec<Checkpoint>, Error> {
    let mut out: Vec<Checkpoint> = Vec::new();
    loop {
        let after = out.last().map_or(0, |c| c.seq);
        let page = match store.audit_checkpoints(after, PAGE).await {
            Ok(page) => page,
            Err(StoreError::Corrupt(why)) => return Err(Error::Unavailable(format!("{CORRUPT}: {why}"))),
            Err(e) => return Err(e.into()),
        };
        let full = page.len() == PAGE as usize;
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// The public keys that sign checkpoints, current and retired.
pub async fn audit_public_keys(store: &dyn Store) -> Result<Vec<PublicJwk>, Error> {
    let mut keys = Vec::new();
    for k in store.signing_keys().await? {
        if k.purpose != KeyUse::Audit {
            continue;
        }
        let jwk = k
            .public_jwk
            .as_deref()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
            .and_then(|v| PublicJwk::from_json(&v).ok())
            .ok_or_else(|| Error::Unavailable(format!("audit key {} has no usable public key", k.kid)))?;
        keys.push(jwk);
    }
    Ok(keys)
}

/// The delegation tree of a token (`tok_…`) or a grant (`grt_…`), from the
/// trail alone. A trace reads at most `MAX_TRACE_EVENTS` rows in all,
/// follows at most `MAX_TRACE_NODES` tokens and looks up at most
/// `MAX_TRACE_AGENTS` agents' lifecycles; past any of these the tree is
/// marked truncated.
pub async fn trace(store: &dyn Store, id: &str) -> Result<Trace, Error> {
    let mut budget = Budget { rows: MAX_TRACE_EVENTS, truncated: false };
    let mut events: Vec<Event> = Vec::new();
    if id.starts_with(mandate_model::GrantId::PREFIX) {
        let q = AuditQuery { grant: Some(id.to_owned()), ..AuditQuery::page(0) };
        collect(store, q, &mut events, &mut budget).await?;
    } else if id.starts_with(mandate_model::Jti::PREFIX) {
        // Climb to the root token, then walk down every hop, each once.
        let mut root = id.to_owned();
        for _ in 0..mandate_model::claims::MAX_ACT_DEPTH {
            let issued = issuance(store, &root).await?;
            match issued.and_then(|e| e.parent) {
                Some(p) => root = p,
                None => break,
            }
        }
        let mut visited: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut frontier = vec![root];
        while let Some(jti) = frontier.pop() {
            if !visited.insert(jti.clone()) {
                continue;
            }
            if visited.len() > MAX_TRACE_NODES || budget.rows == 0 {
                budget.truncated = true;
                break;
            }
            collect(store, AuditQuery { jti: Some(jti.clone()), ..AuditQuery::page(0) }, &mut events, &mut budget)
                .await?;
            let mut children = Vec::new();
            let q = AuditQuery { parent: Some(jti), kind: Some(kind::TOKEN_ISSUED.into()), ..AuditQuery::page(0) };
            collect(store, q, &mut children, &mut budget).await?;
            frontier.extend(children.into_iter().filter_map(|c| c.jti).filter(|j| !visited.contains(j)));
        }
    } else {
        return Err(Error::BadInput("trace takes a token id (tok_…) or a grant id (grt_…)".into()));
    }
    if events.is_empty() {
        return Err(Error::NotFound(format!("no audit events for {id}")));
    }
    // The lifecycle of every agent in the tree: a suspension or retirement
    // cascades to the tokens it held without naming each one.
    let mut agents: Vec<String> = events
        .iter()
        .filter(|e| e.kind == kind::TOKEN_ISSUED)
        .flat_map(|e| e.chain.iter().filter(|a| a.starts_with(mandate_model::AgentId::PREFIX)).cloned())
        .collect();
    agents.sort();
    agents.dedup();
    if agents.len() > MAX_TRACE_AGENTS {
        budget.truncated = true;
    }
    for agent in agents.into_iter().take(MAX_TRACE_AGENTS) {
        let mut lifecycle = Vec::new();
        collect(store, AuditQuery { resource: Some(agent), ..AuditQuery::page(0) }, &mut lifecycle, &mut budget)
            .await?;
        events.extend(lifecycle.into_iter().filter(|e| e.kind.starts_with(mandate_audit::trace::AGENT_EVENT_PREFIX)));
    }
    events.sort_by_key(|e| e.seq);
    events.dedup_by_key(|e| e.seq);
    let mut tree = Trace::build(&events);
    tree.truncated = budget.truncated;
    Ok(tree)
}

/// Rows a trace may still read; whether it had to stop early.
struct Budget {
    rows: usize,
    truncated: bool,
}

async fn issuance(store: &dyn Store, jti: &str) -> Result<Option<Event>, Error> {
    let q =
        AuditQuery { jti: Some(jti.to_owned()), kind: Some(kind::TOKEN_ISSUED.into()), limit: 1, ..Default::default() };
    Ok(store.audit_events(&q).await?.into_iter().next())
}

/// Appends every event matching `q` to `out`, following the cursor, while
/// the budget lasts.
async fn collect(store: &dyn Store, mut q: AuditQuery, out: &mut Vec<Event>, budget: &mut Budget) -> Result<(), Error> {
    loop {
        if budget.rows == 0 {
            budget.truncated = true;
            return Ok(());
        }
        // SAFETY-FALLBACK: a budget too large for u32 is capped at a page.
        q.limit = q.limit.min(u32::try_from(budget.rows).unwrap_or(PAGE));
        let page = store.audit_events(&q).await?;
        budget.rows = budget.rows.saturating_sub(page.len());
        let full = page.len() == q.limit as usize;
        q.after = page.last().map_or(q.after, |e| e.seq);
        out.extend(page);
        if !full {
            return Ok(());
        }
    }
}

impl Mandate {
    /// A new event of `kind`, stamped with the clock and the request id.
    pub(crate) fn event(&self, kind: &str) -> Event {
        let mut e = Event::new(kind, event_time(self.clock.now()));
        e.request_id = current_request_id();
        e
    }

    /// An event naming who called the administration API.
    pub(crate) fn admin_event(&self, kind: &str, caller: Caller) -> Event {
        let mut e = self.event(kind);
        e.decision = Some(ALLOW.into());
        e.actor = Some(match caller {
            Caller::Admin => "admin".into(),
            Caller::User(u) | Caller::ConsoleAdmin(u) => u.to_string(),
        });
        e
    }

    /// Commits `event` alone: a refusal that changes nothing else. If it
    /// cannot be written the request fails closed.
    /// Records a refusal that changes nothing else. Repeated identical
    /// refusals of unauthenticated callers from one source are aggregated
    /// (SECURITY row 45): the first is written at once, the rest of its
    /// window are counted and written as one event with `count`.
    pub(crate) async fn record(&self, event: Event) -> Result<(), Error> {
        if let Some(key) = crate::refusals::key_of(&event, current_client()) {
            // Counted rather than written, a refusal must first be known
            // to stand: a request decided at an epoch it did not read
            // settles it (decision 0042).
            self.caching.settle().await?;
            if self.refusals.suppress(key, &event, self.clock.now()) {
                return Ok(());
            }
        }
        self.store.commit(Change::new().with(AuditRecord::new(event).mutation())).await?;
        Ok(())
    }

    /// Writes the counts of aggregated refusals whose window has closed
    /// (all of them when `all`). Called every second by the server.
    pub async fn flush_refusals(&self, all: bool) -> Result<(), Error> {
        let due = self.refusals.due(self.clock.now(), all);
        if due.is_empty() {
            return Ok(());
        }
        let mut change = Change::new();
        for event in &due {
            change.push(AuditRecord::new(event.clone()).mutation());
        }
        if let Err(e) = self.store.commit(change).await {
            // Kept, and written by a later flush: a count is never lost to
            // a store that did not answer once.
            self.refusals.put_back(due);
            return Err(e.into());
        }
        Ok(())
    }

    /// Records a refusal on the administration API (a bad admin or user
    /// token, or a call the caller may not make).
    pub async fn record_admin_refusal(&self, kind: &str, caller: Option<Caller>, reason: &str) -> Result<(), Error> {
        let mut e = self.event(kind);
        e.decision = Some(DENY.into());
        e.actor = caller.map(|c| match c {
            Caller::Admin => "admin".into(),
            Caller::User(u) | Caller::ConsoleAdmin(u) => u.to_string(),
        });
        e.reason = Some(bounded(reason));
        self.record(e).await
    }

    /// Whether a person reads the whole trail: an active member of
    /// [`AUDITORS_GROUP`], a group only the admin can give.
    pub async fn is_auditor(&self, u: mandate_model::UserId) -> Result<bool, Error> {
        Ok(self.store.user(u).await?.is_some_and(|user| {
            user.status == mandate_model::records::UserStatus::Active && user.groups.iter().any(|g| g == AUDITORS_GROUP)
        }))
    }

    /// The group that opens the admin console pages; only the admin token gives it.
    pub const ADMINS_GROUP: &str = "mandate-admins";

    /// Whether a person opens the admin console (ADR 0037): an active
    /// member of [`Mandate::ADMINS_GROUP`], read from the store on every
    /// call, so that leaving the group or being disabled ends it at once.
    pub async fn is_console_admin(&self, u: mandate_model::UserId) -> Result<bool, Error> {
        Ok(self.store.user(u).await?.is_some_and(|user| opens_console(&user)))
    }

    /// `GET /v1/audit`. The admin and auditors see every event; a user sees
    /// the events whose subject is that user.
    pub async fn audit_query(&self, caller: Caller, mut q: AuditQuery) -> Result<Vec<Event>, Error> {
        if let Some(u) = caller.person()
            && !self.is_auditor(u).await?
        {
            let me = u.to_string();
            if q.subject.as_deref().is_some_and(|s| s != me) {
                let why = "a user may read only the events about themselves";
                self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), why).await?;
                return Err(Error::Forbidden(why.into()));
            }
            q.subject = Some(me);
        }
        if q.limit == 0 {
            q.limit = 100;
        }
        if q.limit > MAX_QUERY_LIMIT {
            return Err(Error::BadInput(format!("limit must be 1 to {MAX_QUERY_LIMIT}")));
        }
        Ok(self.store.audit_events(&q).await?)
    }

    /// `GET /v1/audit/verify`.
    /// Verifies against the audit keys this server unwrapped with the
    /// master key, not against key rows anyone with database access could
    /// add.
    pub async fn audit_verify(&self, caller: Caller) -> Result<TrailReport, Error> {
        self.require_admin(caller).await?;
        self.reload_keys_now().await?;
        // A poisoned lock still holds the keys last loaded: read them.
        let keys = match self.audit_keys.read() {
            Ok(k) => k.public.clone(),
            Err(p) => p.into_inner().public.clone(),
        };
        verify_trail(self.store.as_ref(), &[], Some(&keys)).await
    }

    /// `GET /v1/audit/checkpoints`.
    pub async fn audit_checkpoints(&self, caller: Caller, after: u64, limit: u32) -> Result<Vec<Checkpoint>, Error> {
        self.require_admin(caller).await?;
        if limit == 0 || limit > MAX_QUERY_LIMIT {
            return Err(Error::BadInput(format!("limit must be 1 to {MAX_QUERY_LIMIT}")));
        }
        Ok(self.store.audit_checkpoints(after, limit).await?)
    }

    /// `GET /v1/audit/trace/{id}`: the admin traces anything; a person
    /// traces a grant they gave or a token issued for them.
    /// The delegation tree of a grant or token, for whoever may see it
    /// (SECURITY row 42): the admin and auditors see all of it; a person
    /// sees a grant they gave or whose agent they own, and a token that acts
    /// for them, whole; a token issued to an agent they own is shown with
    /// its own subtree and the path up to its root, every other branch
    /// reduced to a count.
    pub async fn audit_trace(&self, caller: Caller, id: &str) -> Result<Trace, Error> {
        let Some(u) = caller.person() else { return trace(self.store.as_ref(), id).await };
        if self.is_auditor(u).await? {
            return trace(self.store.as_ref(), id).await;
        }
        let owns = |agent: Option<mandate_model::records::Agent>| agent.is_some_and(|a| a.owner == u);
        // Whole: they gave the grant, own the agent holding it, or the token
        // acts for them. Focused: the token was issued to an agent they own.
        let (whole, focused) = if let Ok(g) = id.parse::<mandate_model::GrantId>() {
            let theirs = match self.store.grant(g).await? {
                Some(g) if g.user == u => true,
                Some(g) => owns(self.store.agent(g.agent).await?),
                None => false,
            };
            (theirs, false)
        } else if let Ok(j) = id.parse::<mandate_model::Jti>() {
            match self.store.token(j).await? {
                Some(t) if t.subject == u.to_string() => (true, false),
                Some(t) => match t.client_id {
                    mandate_model::records::ClientId::Agent(a) => (false, owns(self.store.agent(a).await?)),
                    _ => (false, false),
                },
                None => (false, false),
            }
        } else {
            (false, false)
        };
        if !whole && !focused {
            let why = "a person may trace only their own grants and tokens, and those of the agents they own";
            self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), why).await?;
            return Err(Error::Forbidden(why.into()));
        }
        let mut tree = trace(self.store.as_ref(), id).await?;
        if focused && !tree.focus(id) {
            return Err(Error::NotFound(format!("no audit events for {id}")));
        }
        Ok(tree)
    }

    /// The public keys that sign checkpoints (`GET /v1/audit/keys`).
    pub fn audit_keys(&self) -> serde_json::Value {
        let keys = match self.audit_keys.read() {
            Ok(k) => k.public.clone(),
            Err(p) => p.into_inner().public.clone(),
        };
        serde_json::json!({ "keys": keys.iter().map(PublicJwk::to_json).collect::<Vec<_>>() })
    }

    /// Signs a checkpoint of each lane's head that no checkpoint vouches for
    /// yet, when enough events, or enough time, have passed since the last
    /// one. Called periodically by the server; several nodes may race, and
    /// the store keeps one checkpoint per seq. Returns the checkpoint of the
    /// highest seq signed.
    pub async fn checkpoint_if_due(&self) -> Result<Option<Checkpoint>, Error> {
        let lanes = self.store.audit_lanes().await?;
        let unsigned: Vec<&AuditLane> = lanes.iter().filter(|l| !l.checkpointed).collect();
        // The newest head decides whether enough events have passed.
        let Some(seq) = unsigned.iter().map(|l| l.seq).max() else {
            return Ok(None);
        };
        let now = self.clock.now();
        let last = self.store.last_audit_checkpoint().await?;
        let due = match &last {
            None => true,
            // A lane whose head committed after a later seq was signed
            // (lanes commit concurrently) waits for the interval.
            Some(cp) => {
                // SAFETY-FALLBACK: a stored checkpoint whose time cannot be
                // read counts as old, so a fresh one is signed now; the
                // verifier reports the unreadable one on its own.
                let since = OffsetDateTime::parse(&cp.time, &time::format_description::well_known::Rfc3339)
                    .map(|t| (now - t).whole_seconds())
                    .unwrap_or(i64::MAX);
                seq.saturating_sub(cp.seq) >= self.config.audit_checkpoint_events
                    || since >= self.config.audit_checkpoint_interval
            }
        };
        if !due {
            return Ok(None);
        }
        let key = self
            .audit_keys
            .read()
            .ok()
            .and_then(|k| k.active.clone())
            .ok_or_else(|| Error::Unavailable("no audit signing key".into()))?;
        let mut change = Change::new();
        let mut newest = None;
        for head in unsigned {
            let cp = mandate_audit::sign_checkpoint(&key, head.seq, &head.hash, &event_time(now))
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            change.push(Mutation::InsertCheckpoint(cp.clone()));
            newest = Some(cp);
        }
        self.store.commit(change).await?;
        Ok(newest)
    }
}

/// The key that signs checkpoints and every audit key ever used.
#[derive(Default)]
pub(crate) struct AuditKeys {
    pub active: Option<std::sync::Arc<mandate_jose::SigningKey>>,
    pub public: Vec<PublicJwk>,
}

/// Refusal reasons as recorded: bounded, never the raw input.
pub(crate) fn reason(e: &Error) -> String {
    bounded(&e.to_string())
}
