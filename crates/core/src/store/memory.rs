//! The [`Store`] port in memory: what the SQL stores do, without a
//! database, for fast tests of the use cases (and anything else that needs
//! a store for the life of one process). It passes the same conformance
//! suite as the SQL stores (`mandate_testkit::store_conformance!`).
//!
//! One lock guards the whole state, so changes are applied one at a time,
//! in the order they take the lock. A change is applied mutation by
//! mutation, each write logging how to undo it; when a mutation fails, the
//! log is played back and the change leaves nothing behind. References
//! between records are checked as the SQL schemas' foreign keys do, and
//! uniqueness as their keys do.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use mandate_audit::{Checkpoint, Event, GENESIS};
use mandate_model::delivery::{Backchannel, CibaCallback, Delivery, DeliveryStatus};
use mandate_model::records::{
    Agent, AgentKind, AgentStatus, Approval, ApprovalStatus, ApprovalSubject, AuthCodeRecord, ClientId, Grant,
    GrantStatus, RefreshRecord, Resource, ScimGroup, ScimToken, ScimUserRecord, SessionRecord, SuspendedBy,
    TokenRecord, UpstreamLink, User, UserToken,
};
use mandate_model::review::{Campaign, CampaignStatus, ReviewItem};
use mandate_model::ssf::{EventKind, MAX_QUEUED_EVENTS, QueuedEvent, Signal, Stream, StreamDelivery, StreamStatus};
use mandate_model::{
    AgentId, ApprovalId, CampaignId, GrantId, GroupId, Jti, ResourceId, ReviewItemId, StreamId, UserId,
};
use time::OffsetDateTime;

use super::{
    AgentActivity, AgentListQuery, Applied, ApprovalQuery, AttemptCounter, CampaignProgress, CampaignQuery, Change,
    GrantQuery, GrantState, LapsedQuery, ListedAgent, Mutation, Page, PolicyVersion, Receipt, ResourceListQuery,
    ReviewItemQuery, ScimGroupQuery, ScimUserQuery, Store, StoreError, StoredKey, StoredPolicy, UserListQuery,
};
use crate::audit::{AuditBatch, AuditQuery, seal_record};
use crate::report::{AgentFact, Counts, GrantFact, InventoryTally, Peaks, ReportBy, TokenFact};

/// Everything a store keeps, as the SQL stores' tables do.
#[derive(Debug, Default)]
struct State {
    settings: BTreeMap<String, String>,
    users: BTreeMap<UserId, User>,
    /// By the hash of the token's secret.
    user_tokens: BTreeMap<String, UserToken>,
    agents: BTreeMap<AgentId, Agent>,
    /// Each agent's recorded last use (see [`super::LAST_USE_RESOLUTION`]).
    agent_last_use: BTreeMap<AgentId, OffsetDateTime>,
    /// When each retired agent was retired (the SQL stores' `retired_at`).
    agent_retired_at: BTreeMap<AgentId, OffsetDateTime>,
    /// The inventory samples: the largest counts per (dimension, key, hour).
    inventory_samples: BTreeMap<(ReportBy, String, OffsetDateTime), Counts>,
    resources: BTreeMap<ResourceId, Resource>,
    policies: Vec<StoredPolicy>,
    keys: BTreeMap<String, StoredKey>,
    /// By client id (as text) and `jti`.
    assertion_jtis: BTreeMap<(String, String), OffsetDateTime>,
    dpop_jtis: BTreeMap<String, OffsetDateTime>,
    attempt_counters: BTreeMap<String, AttemptCounter>,
    tokens: BTreeMap<Jti, TokenRecord>,
    /// The next status-list index to hand out.
    status_next: u64,
    grants: BTreeMap<GrantId, Grant>,
    approvals: BTreeMap<ApprovalId, Approval>,
    refresh: BTreeMap<String, RefreshRecord>,
    sessions: BTreeMap<String, SessionRecord>,
    /// By (issuer, subject).
    upstream_links: BTreeMap<(String, String), UpstreamLink>,
    auth_codes: BTreeMap<String, AuthCodeRecord>,
    /// By id.
    scim_tokens: BTreeMap<String, ScimToken>,
    scim_users: BTreeMap<UserId, ScimUserRecord>,
    /// Without their members, which are kept in `scim_members`.
    scim_groups: BTreeMap<GroupId, ScimGroup>,
    scim_members: BTreeMap<(GroupId, UserId), ()>,
    /// The audit trail; `events[i].seq == i + 1`.
    events: Vec<Event>,
    checkpoints: BTreeMap<u64, Checkpoint>,
    backchannels: BTreeMap<AgentId, Backchannel>,
    callbacks: BTreeMap<ApprovalId, CibaCallback>,
    /// The outbox, by id.
    deliveries: BTreeMap<String, Delivery>,
    streams: BTreeMap<StreamId, Stream>,
    /// Events waiting on streams, by `seq`.
    ssf_events: BTreeMap<u64, QueuedEvent>,
    /// The last `seq` handed out (never reused, as SQL's AUTOINCREMENT).
    ssf_last_seq: u64,
    /// Tokens whose revocation was signalled, with when.
    ssf_signalled: BTreeMap<Jti, OffsetDateTime>,
    /// Subjects removed from streams (`opaque` ids).
    ssf_subjects: BTreeMap<(StreamId, String), ()>,
    campaigns: BTreeMap<CampaignId, Campaign>,
    review_items: BTreeMap<ReviewItemId, ReviewItem>,
    epoch: u64,
}

/// Where a table lives in the state.
type Table<K, V> = fn(&mut State) -> &mut BTreeMap<K, V>;

/// How to put back one write.
type Undo = Box<dyn FnOnce(&mut State) + Send>;

/// The state while a change is applied, and how to undo what it wrote.
struct Tx<'s> {
    state: &'s mut State,
    undo: Vec<Undo>,
}

impl Tx<'_> {
    /// Inserts or replaces the row at `key`.
    fn put<K, V>(&mut self, table: Table<K, V>, key: K, value: V)
    where
        K: Ord + Clone + Send + 'static,
        V: Send + 'static,
    {
        let old = table(self.state).insert(key.clone(), value);
        self.undo.push(Box::new(move |s| {
            let t = table(s);
            match old {
                Some(v) => t.insert(key, v),
                None => t.remove(&key),
            };
        }));
    }

    /// Removes the row at `key`, if there is one.
    fn remove<K, V>(&mut self, table: Table<K, V>, key: &K)
    where
        K: Ord + Clone + Send + 'static,
        V: Send + 'static,
    {
        if let Some(old) = table(self.state).remove(key) {
            let key = key.clone();
            self.undo.push(Box::new(move |s| {
                table(s).insert(key, old);
            }));
        }
    }

    /// Changes every row of `table` that `pick` selects with `change`
    /// (which sees a copy); how many.
    fn update<K, V>(&mut self, table: Table<K, V>, pick: impl Fn(&K, &V) -> bool, change: impl Fn(&mut V)) -> u64
    where
        K: Ord + Clone + Send + 'static,
        V: Clone + Send + 'static,
    {
        let picked: Vec<(K, V)> =
            table(self.state).iter().filter(|(k, v)| pick(k, v)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let n = picked.len() as u64;
        for (k, mut v) in picked {
            change(&mut v);
            self.put(table, k, v);
        }
        n
    }

    fn push_event(&mut self, event: Event) {
        self.state.events.push(event);
        self.undo.push(Box::new(|s| {
            s.events.pop();
        }));
    }

    fn push_policy(&mut self, policy: StoredPolicy) {
        self.state.policies.push(policy);
        self.undo.push(Box::new(|s| {
            s.policies.pop();
        }));
    }

    /// Queues `signal` on `stream` with the next `seq`.
    fn queue(&mut self, stream: StreamId, signal: Signal) {
        let seq = self.state.ssf_last_seq + 1;
        let old = std::mem::replace(&mut self.state.ssf_last_seq, seq);
        self.undo.push(Box::new(move |s| s.ssf_last_seq = old));
        self.put(ssf_events, seq, QueuedEvent { seq, stream, signal });
    }

    fn set_status_next(&mut self, next: u64) {
        let old = std::mem::replace(&mut self.state.status_next, next);
        self.undo.push(Box::new(move |s| s.status_next = old));
    }

    /// Puts back everything written, last first.
    fn roll_back(self) {
        let Tx { state, undo } = self;
        for u in undo.into_iter().rev() {
            u(state);
        }
    }
}

fn settings(s: &mut State) -> &mut BTreeMap<String, String> {
    &mut s.settings
}
fn users(s: &mut State) -> &mut BTreeMap<UserId, User> {
    &mut s.users
}
fn user_tokens(s: &mut State) -> &mut BTreeMap<String, UserToken> {
    &mut s.user_tokens
}
fn agents(s: &mut State) -> &mut BTreeMap<AgentId, Agent> {
    &mut s.agents
}
fn agent_last_use(s: &mut State) -> &mut BTreeMap<AgentId, OffsetDateTime> {
    &mut s.agent_last_use
}
fn agent_retired_at(s: &mut State) -> &mut BTreeMap<AgentId, OffsetDateTime> {
    &mut s.agent_retired_at
}
fn inventory_samples(s: &mut State) -> &mut BTreeMap<(ReportBy, String, OffsetDateTime), Counts> {
    &mut s.inventory_samples
}
fn resources(s: &mut State) -> &mut BTreeMap<ResourceId, Resource> {
    &mut s.resources
}
fn keys(s: &mut State) -> &mut BTreeMap<String, StoredKey> {
    &mut s.keys
}
fn assertion_jtis(s: &mut State) -> &mut BTreeMap<(String, String), OffsetDateTime> {
    &mut s.assertion_jtis
}
fn dpop_jtis(s: &mut State) -> &mut BTreeMap<String, OffsetDateTime> {
    &mut s.dpop_jtis
}
fn attempt_counters(s: &mut State) -> &mut BTreeMap<String, AttemptCounter> {
    &mut s.attempt_counters
}
fn tokens(s: &mut State) -> &mut BTreeMap<Jti, TokenRecord> {
    &mut s.tokens
}
fn grants(s: &mut State) -> &mut BTreeMap<GrantId, Grant> {
    &mut s.grants
}
fn approvals(s: &mut State) -> &mut BTreeMap<ApprovalId, Approval> {
    &mut s.approvals
}
fn refresh(s: &mut State) -> &mut BTreeMap<String, RefreshRecord> {
    &mut s.refresh
}
fn sessions(s: &mut State) -> &mut BTreeMap<String, SessionRecord> {
    &mut s.sessions
}
fn upstream_links(s: &mut State) -> &mut BTreeMap<(String, String), UpstreamLink> {
    &mut s.upstream_links
}
fn auth_codes(s: &mut State) -> &mut BTreeMap<String, AuthCodeRecord> {
    &mut s.auth_codes
}
fn scim_tokens(s: &mut State) -> &mut BTreeMap<String, ScimToken> {
    &mut s.scim_tokens
}
fn scim_users(s: &mut State) -> &mut BTreeMap<UserId, ScimUserRecord> {
    &mut s.scim_users
}
fn scim_groups(s: &mut State) -> &mut BTreeMap<GroupId, ScimGroup> {
    &mut s.scim_groups
}
fn scim_members(s: &mut State) -> &mut BTreeMap<(GroupId, UserId), ()> {
    &mut s.scim_members
}
fn checkpoints(s: &mut State) -> &mut BTreeMap<u64, Checkpoint> {
    &mut s.checkpoints
}
fn backchannels(s: &mut State) -> &mut BTreeMap<AgentId, Backchannel> {
    &mut s.backchannels
}
fn callbacks(s: &mut State) -> &mut BTreeMap<ApprovalId, CibaCallback> {
    &mut s.callbacks
}
fn deliveries(s: &mut State) -> &mut BTreeMap<String, Delivery> {
    &mut s.deliveries
}

fn streams(s: &mut State) -> &mut BTreeMap<StreamId, Stream> {
    &mut s.streams
}
fn ssf_events(s: &mut State) -> &mut BTreeMap<u64, QueuedEvent> {
    &mut s.ssf_events
}
fn campaigns(s: &mut State) -> &mut BTreeMap<CampaignId, Campaign> {
    &mut s.campaigns
}
fn review_items(s: &mut State) -> &mut BTreeMap<ReviewItemId, ReviewItem> {
    &mut s.review_items
}
fn ssf_signalled(s: &mut State) -> &mut BTreeMap<Jti, OffsetDateTime> {
    &mut s.ssf_signalled
}
fn ssf_subjects(s: &mut State) -> &mut BTreeMap<(StreamId, String), ()> {
    &mut s.ssf_subjects
}

/// Whether `subject` was removed from `stream`.
fn removed(s: &State, stream: StreamId, subject: &str) -> bool {
    s.ssf_subjects.contains_key(&(stream, subject.to_owned()))
}

/// The subjects a revoked token's event is about: its `jti`, and the
/// agent, person and grant behind it (SSF §8.1.3: removing any of them
/// stops the event).
fn token_subjects(t: &TokenRecord) -> Vec<String> {
    let mut v = vec![t.jti.to_string(), t.client_id.to_string(), t.subject.clone()];
    v.extend(t.grant.map(|g| g.to_string()));
    v
}

/// Whether a stream takes new events of `kind`: not disabled, asking for
/// the type (the stream's own events always), and not full.
fn takes(s: &State, stream: &Stream, kind: EventKind) -> bool {
    let asked = !EventKind::REQUESTABLE.contains(&kind) || stream.events.contains(kind);
    let queued = s.ssf_events.values().filter(|e| e.stream == stream.id).count() as u64;
    stream.status != StreamStatus::Disabled && asked && queued < MAX_QUEUED_EVENTS
}

/// Whether a push stream may be leased at `now`.
fn pushable(s: &Stream, now: OffsetDateTime) -> bool {
    matches!(s.delivery, StreamDelivery::Push { .. })
        && s.status == StreamStatus::Enabled
        && s.next_at <= now
        && s.lease_until.is_none_or(|u| u <= now)
}

/// Whether an outbox item may be claimed at `now`.
fn claimable(d: &Delivery, now: OffsetDateTime) -> bool {
    d.status == DeliveryStatus::Pending && d.next_at <= now && d.lease_until.is_none_or(|u| u <= now)
}

/// A uniqueness or reference check failed, as a SQL constraint would.
fn conflict(what: &str) -> StoreError {
    StoreError::Conflict(format!("{what} conflicts with an existing record or refers to a missing one"))
}

/// Refuses a write unless `ok`.
fn require(ok: bool, what: &str) -> Result<(), StoreError> {
    if ok { Ok(()) } else { Err(conflict(what)) }
}

/// The SQL stores keep time as Unix nanoseconds in 64 bits (1677 to
/// 2262) and refuse any other; so does this one, so that a test passing
/// here does not fail there.
fn storable(t: OffsetDateTime) -> Result<(), StoreError> {
    i64::try_from(t.unix_timestamp_nanos())
        .map(|_| ())
        .map_err(|_| StoreError::Unavailable(format!("the time {t} is outside what the store can hold")))
}

/// In-memory store: one lock around the state.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.state.lock().map_err(|_| StoreError::Unavailable("the memory store's lock is poisoned".into()))
    }

    /// Reads under the lock.
    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T, StoreError> {
        let state = self.lock()?;
        Ok(f(&state))
    }
}

/// Applies `change` to `state` whole, or not at all.
fn apply_change(state: &mut State, change: &Change) -> Result<Receipt, StoreError> {
    let mut tx = Tx { state, undo: Vec::new() };
    let mut applied = Applied::for_change(change);
    for (h, m) in change.iter() {
        if let Err(e) = apply(&mut tx, m, &applied).and_then(|n| applied.set(h, n)) {
            tx.roll_back();
            return Err(e);
        }
    }
    let receipt = match applied.into_receipt() {
        Ok(r) => r,
        Err(e) => {
            tx.roll_back();
            return Err(e);
        }
    };
    // Committed: caches keyed by the epoch go stale before the change is
    // acknowledged.
    if change.mutations().any(Mutation::invalidates) {
        tx.state.epoch = tx.state.epoch.wrapping_add(1);
    }
    Ok(receipt)
}

/// Applies one mutation; `applied` holds what the change's earlier
/// mutations did. A mutation that fails has written nothing of its own.
fn apply(tx: &mut Tx<'_>, m: &Mutation, applied: &Applied) -> Result<u64, StoreError> {
    match m {
        Mutation::PutSettingIfAbsent { key, value } => {
            if tx.state.settings.contains_key(key) {
                return Ok(0);
            }
            tx.put(settings, key.clone(), value.clone());
            Ok(1)
        }
        Mutation::InsertUser(u) => {
            storable(u.created_at)?;
            let taken = tx.state.users.contains_key(&u.id) || tx.state.users.values().any(|x| x.email == u.email);
            require(!taken, "user")?;
            // The SCIM source of groups is read from the group tables, never stored here.
            tx.put(users, u.id, User { scim_groups: Vec::new(), ..u.clone() });
            Ok(1)
        }
        Mutation::UpdateUser(u) => {
            let Some(mut user) = tx.state.users.get(&u.id).cloned() else {
                return Err(StoreError::NotFound(format!("user {}", u.id)));
            };
            user.groups = u.groups.clone();
            user.attributes = u.attributes.clone();
            user.status = u.status;
            tx.put(users, u.id, user);
            Ok(1)
        }
        Mutation::InsertUserToken { token, hash } => {
            storable(token.created_at)?;
            storable(token.expires_at)?;
            let s = &tx.state;
            let ok = !s.user_tokens.contains_key(hash)
                && !s.user_tokens.values().any(|t| t.id == token.id)
                && s.users.contains_key(&token.user);
            require(ok, "user token")?;
            // A new token is never revoked, whatever the record says.
            tx.put(user_tokens, hash.clone(), UserToken { revoked_at: None, ..token.clone() });
            Ok(1)
        }
        Mutation::RevokeUserToken { id, user, at } => {
            storable(*at)?;
            Ok(tx.update(
                user_tokens,
                |_, t| t.id == *id && t.user == *user && t.revoked_at.is_none(),
                |t| t.revoked_at = Some(*at),
            ))
        }
        Mutation::InsertAgent(a) => {
            storable(a.created_at)?;
            a.expires_at.map(storable).transpose()?;
            let s = &tx.state;
            let ok = !s.agents.contains_key(&a.id)
                && a.metadata_url
                    .as_ref()
                    .is_none_or(|u| !s.agents.values().any(|x| x.metadata_url.as_ref() == Some(u)))
                && s.users.contains_key(&a.owner)
                && a.parent.is_none_or(|p| s.agents.contains_key(&p));
            require(ok, "agent")?;
            tx.put(agents, a.id, a.clone());
            Ok(1)
        }
        Mutation::SetFederatedCredentials { id, credentials, at } => {
            storable(*at)?;
            let agent = tx.state.agents.get(id).cloned().ok_or_else(|| StoreError::Conflict(format!("agent {id}")))?;
            tx.put(agents, *id, Agent { federated_credentials: credentials.clone(), ..agent });
            Ok(1)
        }
        Mutation::SetAgentLimits { id, limits, at } => {
            storable(*at)?;
            let agent = tx.state.agents.get(id).cloned().ok_or_else(|| StoreError::Conflict(format!("agent {id}")))?;
            tx.put(agents, *id, Agent { limits: limits.clone(), ..agent });
            Ok(1)
        }
        Mutation::UpdateAgentRegistration { id, name, redirect_uris, jwks, public, at } => {
            storable(*at)?;
            let agent = tx
                .state
                .agents
                .get(id)
                .filter(|a| a.origin.is_self_registered())
                .cloned()
                .ok_or_else(|| StoreError::Conflict(format!("agent {id} is not a self-registered client")))?;
            let updated = Agent {
                name: name.clone(),
                redirect_uris: redirect_uris.clone(),
                jwks: jwks.clone(),
                public: *public,
                ..agent
            };
            tx.put(agents, *id, updated);
            Ok(1)
        }
        Mutation::NarrowAgentScopes { id, scopes } => {
            let live = tx.state.agents.get(id).is_some_and(|a| a.status != AgentStatus::Retired);
            if !live {
                return Err(StoreError::Conflict(format!("agent {id} is retired or missing")));
            }
            Ok(tx.update(agents, |k, _| k == id, |a| a.scopes = Some(scopes.clone())))
        }
        Mutation::InsertCampaign(c) => {
            storable(c.created_at)?;
            storable(c.deadline)?;
            require(!tx.state.campaigns.contains_key(&c.id), "campaign")?;
            tx.put(campaigns, c.id, c.clone());
            Ok(1)
        }
        Mutation::InsertReviewItem(i) => {
            let ok = !tx.state.review_items.contains_key(&i.id)
                && tx.state.campaigns.contains_key(&i.campaign)
                && tx.state.users.contains_key(&i.assignee);
            require(ok, "review item")?;
            tx.put(review_items, i.id, i.clone());
            Ok(1)
        }
        Mutation::DecideReviewItem { id, decision, by, at, outcome } => {
            storable(*at)?;
            let open = |s: &State, c: &CampaignId| s.campaigns.get(c).is_some_and(|c| c.status == CampaignStatus::Open);
            let item = tx.state.review_items.get(id).cloned();
            match item {
                Some(i) if i.decision.is_none() && open(tx.state, &i.campaign) => {
                    tx.put(
                        review_items,
                        *id,
                        ReviewItem {
                            decision: Some(*decision),
                            decided_by: Some(by.clone()),
                            decided_at: Some(*at),
                            outcome: Some(outcome.clone()),
                            ..i
                        },
                    );
                    Ok(1)
                }
                _ => Err(StoreError::Conflict(format!("review item {id} is decided, closed or missing"))),
            }
        }
        Mutation::CloseCampaign { id, at } => {
            storable(*at)?;
            let open = tx.state.campaigns.get(id).is_some_and(|c| c.status == CampaignStatus::Open);
            if !open {
                return Err(StoreError::Conflict(format!("campaign {id} is not open")));
            }
            Ok(tx.update(
                campaigns,
                |k, _| k == id,
                |c| {
                    c.status = CampaignStatus::Closed;
                    c.closed_at = Some(*at);
                },
            ))
        }
        Mutation::SetAgentStatus { id, from, to, at, by } => {
            storable(*at)?;
            let no_longer = || StoreError::Conflict(format!("agent {id} is no longer {}", from.as_str()));
            let agent = tx.state.agents.get(id).cloned().ok_or_else(no_longer)?;
            // Resuming needs the level that suspended, or a higher one.
            let outranked = *from == AgentStatus::Suspended
                && *to == AgentStatus::Active
                && *by == Some(SuspendedBy::Owner)
                && agent.suspended_by.unwrap_or(SuspendedBy::Admin) == SuspendedBy::Admin;
            if agent.status != *from || outranked {
                return Err(no_longer());
            }
            let suspended_by = if *to == AgentStatus::Suspended { *by } else { None };
            tx.put(agents, *id, Agent { status: *to, suspended_by, ..agent });
            if *to == AgentStatus::Retired {
                tx.put(agent_retired_at, *id, *at);
            }
            Ok(1)
        }
        Mutation::RevokeTokensOfAgent { agent, at } => {
            let client = ClientId::Agent(*agent);
            revoke_tree(tx, |t| t.client_id == client && t.expires_at > *at, *at)
        }
        Mutation::RevokeTokensOfSubject { subject, at } => {
            storable(*at)?;
            Ok(tx.update(tokens, |_, t| t.subject == *subject && t.revoked_at.is_none(), |t| t.revoked_at = Some(*at)))
        }
        Mutation::RevokeTokensOfOwnedAgents { owner, at } => {
            let owned: BTreeSet<AgentId> =
                tx.state.agents.values().filter(|a| a.owner == *owner).map(|a| a.id).collect();
            revoke_tree(
                tx,
                |t| t.expires_at > *at && matches!(t.client_id, ClientId::Agent(a) if owned.contains(&a)),
                *at,
            )
        }
        Mutation::InsertResource(r) => {
            storable(r.created_at)?;
            let s = &tx.state;
            let taken = s.resources.contains_key(&r.id) || s.resources.values().any(|x| x.identifier == r.identifier);
            require(!taken, "resource")?;
            tx.put(resources, r.id, r.clone());
            Ok(1)
        }
        Mutation::PutPolicy(p) => {
            storable(p.created_at)?;
            tx.push_policy(p.clone());
            Ok(1)
        }
        Mutation::ExpectPolicyVersion(v) => {
            let current = tx.state.policies.last().map(|p| &p.version);
            if current != v.as_ref() {
                return Err(StoreError::Conflict("the policy set changed".into()));
            }
            Ok(0)
        }
        Mutation::InsertSigningKey(k) => {
            storable(k.created_at)?;
            k.retired_at.map(storable).transpose()?;
            require(!tx.state.keys.contains_key(&k.kid), "signing key")?;
            tx.put(keys, k.kid.clone(), k.clone());
            Ok(1)
        }
        Mutation::RetireSigningKeys { purpose, keep, at } => {
            storable(*at)?;
            Ok(tx.update(
                keys,
                |kid, k| k.retired_at.is_none() && k.purpose == *purpose && kid != keep,
                |k| k.retired_at = Some(*at),
            ))
        }
        Mutation::ConsumeAssertionJti { client, jti, expires_at } => {
            storable(*expires_at)?;
            let key = (client.to_string(), jti.clone());
            if tx.state.assertion_jtis.contains_key(&key) {
                return Err(StoreError::Replay);
            }
            tx.put(assertion_jtis, key, *expires_at);
            Ok(1)
        }
        Mutation::ConsumeDpopJti { key, expires_at } => {
            storable(*expires_at)?;
            if tx.state.dpop_jtis.contains_key(key) {
                return Err(StoreError::DpopReplay);
            }
            tx.put(dpop_jtis, key.clone(), *expires_at);
            Ok(1)
        }
        Mutation::ConsumeGrantJti { key, expires_at } => {
            storable(*expires_at)?;
            // Kept beside DPoP proofs, under its own prefix, as the SQL stores do.
            let key = format!("grant:{key}");
            if tx.state.dpop_jtis.contains_key(&key) {
                return Err(StoreError::GrantReplay);
            }
            tx.put(dpop_jtis, key, *expires_at);
            Ok(1)
        }
        Mutation::InsertSession(r) => {
            storable(r.created_at)?;
            storable(r.expires_at)?;
            r.revoked_at.map(storable).transpose()?;
            let ok = !tx.state.sessions.contains_key(&r.hash) && tx.state.users.contains_key(&r.user);
            require(ok, "session")?;
            tx.put(sessions, r.hash.clone(), r.clone());
            Ok(1)
        }
        Mutation::UpdatePersonIf { id, was, now } => {
            let Some(mut user) = tx.state.users.get(id).cloned() else {
                return Err(StoreError::Stale(format!("user {id} is gone")));
            };
            if super::Person::of(&user) != *was {
                return Err(StoreError::Stale(format!("user {id} changed")));
            }
            require(!tx.state.users.values().any(|u| u.id != *id && u.email == now.email), "user")?;
            user.name = now.name.clone();
            user.email = now.email.clone();
            user.status = now.status;
            tx.put(users, *id, user);
            Ok(1)
        }
        Mutation::InsertScimToken(t) => {
            storable(t.created_at)?;
            t.revoked_at.map(storable).transpose()?;
            let s = &tx.state;
            require(
                !s.scim_tokens.contains_key(&t.id) && !s.scim_tokens.values().any(|x| x.hash == t.hash),
                "scim token",
            )?;
            tx.put(scim_tokens, t.id.clone(), t.clone());
            Ok(1)
        }
        Mutation::RevokeScimToken { id, at } => {
            storable(*at)?;
            Ok(tx.update(scim_tokens, |k, t| k == id && t.revoked_at.is_none(), |t| t.revoked_at = Some(*at)))
        }
        Mutation::PutScimUser { record, expect } => {
            record.deleted_at.map(storable).transpose()?;
            let s = &tx.state;
            match (s.scim_users.get(&record.user), expect) {
                (Some(_), None) => return Err(StoreError::Stale(format!("SCIM user {} exists", record.user))),
                (None, Some(_)) => return Err(StoreError::Stale(format!("SCIM user {} is gone", record.user))),
                (Some(old), Some(rev)) if old.revision != *rev => {
                    return Err(StoreError::Stale(format!("SCIM user {} changed", record.user)));
                }
                _ => {}
            }
            let key = ScimUserRecord::user_name_key(&record.user_name);
            let taken = s
                .scim_users
                .values()
                .any(|x| x.user != record.user && ScimUserRecord::user_name_key(&x.user_name) == key);
            require(!taken && s.users.contains_key(&record.user), "SCIM userName")?;
            tx.put(scim_users, record.user, record.clone());
            Ok(1)
        }
        Mutation::InsertScimGroup(g) => {
            storable(g.created_at)?;
            storable(g.updated_at)?;
            let s = &tx.state;
            let taken =
                s.scim_groups.contains_key(&g.id) || s.scim_groups.values().any(|x| x.display_name == g.display_name);
            require(!taken, "SCIM group")?;
            tx.put(scim_groups, g.id, ScimGroup { members: Vec::new(), ..g.clone() });
            Ok(1)
        }
        Mutation::UpdateScimGroup { group, expect } => {
            storable(group.updated_at)?;
            let Some(old) = tx.state.scim_groups.get(&group.id).cloned() else {
                return Err(StoreError::Stale(format!("SCIM group {} is gone", group.id)));
            };
            if old.revision != *expect {
                return Err(StoreError::Stale(format!("SCIM group {} changed", group.id)));
            }
            let taken = tx.state.scim_groups.values().any(|x| x.id != group.id && x.display_name == group.display_name);
            require(!taken, "SCIM group displayName")?;
            let new = ScimGroup {
                display_name: group.display_name.clone(),
                external_id: group.external_id.clone(),
                revision: group.revision,
                updated_at: group.updated_at,
                ..old
            };
            tx.put(scim_groups, group.id, new);
            Ok(1)
        }
        Mutation::DeleteScimGroup { id, expect } => {
            match tx.state.scim_groups.get(id) {
                Some(g) if g.revision == *expect => {}
                _ => return Err(StoreError::Stale(format!("SCIM group {id} changed or is gone"))),
            }
            let members: Vec<(GroupId, UserId)> =
                tx.state.scim_members.keys().filter(|(g, _)| g == id).copied().collect();
            for m in members {
                tx.remove(scim_members, &m);
            }
            tx.remove(scim_groups, id);
            Ok(1)
        }
        Mutation::AddScimGroupMembers { group, users: added } => {
            let s = &tx.state;
            require(s.scim_groups.contains_key(group) && added.iter().all(|u| s.users.contains_key(u)), "SCIM member")?;
            let mut n = 0;
            for u in added {
                if !tx.state.scim_members.contains_key(&(*group, *u)) {
                    tx.put(scim_members, (*group, *u), ());
                    n += 1;
                }
            }
            Ok(n)
        }
        Mutation::RemoveScimGroupMembers { group, users: removed } => {
            let mut n = 0;
            for u in removed {
                if tx.state.scim_members.contains_key(&(*group, *u)) {
                    tx.remove(scim_members, &(*group, *u));
                    n += 1;
                }
            }
            Ok(n)
        }
        Mutation::RemoveUserFromScimGroups { user } => {
            let keys: Vec<(GroupId, UserId)> =
                tx.state.scim_members.keys().filter(|(_, u)| u == user).copied().collect();
            for k in &keys {
                tx.remove(scim_members, k);
            }
            Ok(keys.len() as u64)
        }
        Mutation::InsertUpstreamLink(l) => {
            storable(l.created_at)?;
            let key = (l.issuer.clone(), l.subject.clone());
            let ok = !tx.state.upstream_links.contains_key(&key) && tx.state.users.contains_key(&l.user);
            require(ok, "upstream link")?;
            tx.put(upstream_links, key, l.clone());
            Ok(1)
        }
        Mutation::InsertAuthCode(c) => {
            storable(c.created_at)?;
            storable(c.expires_at)?;
            c.used_at.map(storable).transpose()?;
            let s = &tx.state;
            let ok = !s.auth_codes.contains_key(&c.hash)
                && s.agents.contains_key(&c.agent)
                && s.users.contains_key(&c.user)
                && s.grants.contains_key(&c.grant);
            require(ok, "authorization code")?;
            tx.put(auth_codes, c.hash.clone(), c.clone());
            Ok(1)
        }
        Mutation::UseAuthCode { hash, at } => {
            storable(*at)?;
            let n = tx.update(auth_codes, |h, c| h == hash && c.used_at.is_none(), |c| c.used_at = Some(*at));
            if n == 0 {
                return Err(StoreError::Conflict("the authorization code was already used".into()));
            }
            Ok(n)
        }
        Mutation::RevokeSession { hash, at } => {
            storable(*at)?;
            Ok(tx.update(sessions, |h, r| h == hash && r.revoked_at.is_none(), |r| r.revoked_at = Some(*at)))
        }
        Mutation::ReserveStatusIndexes { count } => {
            // As in SQL: the counter is a signed 64-bit integer.
            let first = tx.state.status_next;
            let next = first
                .checked_add(*count)
                .filter(|n| i64::try_from(*n).is_ok())
                .ok_or_else(|| StoreError::Unavailable("status index overflow".into()))?;
            tx.set_status_next(next);
            Ok(first)
        }
        Mutation::InsertToken(t) => {
            storable(t.issued_at)?;
            storable(t.expires_at)?;
            t.revoked_at.map(storable).transpose()?;
            if t.status_idx.is_some_and(|i| i64::try_from(i).is_err()) {
                return Err(StoreError::Unavailable("status index overflow".into()));
            }
            token_may_be_inserted(tx.state, t)?;
            require(!tx.state.tokens.contains_key(&t.jti), "token")?;
            tx.put(tokens, t.jti, t.clone());
            // The agent's last use, at most once per resolution (as the SQL
            // stores' conditional UPDATE).
            if let ClientId::Agent(a) = t.client_id
                && tx.state.agents.contains_key(&a)
                && tx.state.agent_last_use.get(&a).is_none_or(|l| *l < t.issued_at - super::LAST_USE_RESOLUTION)
            {
                tx.put(agent_last_use, a, t.issued_at);
            }
            Ok(1)
        }
        Mutation::RevokeToken { jti, at } => revoke_tree(tx, |t| t.jti == *jti, *at),
        Mutation::InsertGrant(g) => {
            storable(g.created_at)?;
            storable(g.expires_at)?;
            g.revoked_at.map(storable).transpose()?;
            g.last_used_at.map(storable).transpose()?;
            let s = &tx.state;
            let ok = !s.grants.contains_key(&g.id) && s.users.contains_key(&g.user) && s.agents.contains_key(&g.agent);
            require(ok, "grant")?;
            tx.put(grants, g.id, g.clone());
            Ok(1)
        }
        Mutation::RevokeGrant { id, at } => revoke_grants(tx, |g| g.id == *id, *at),
        Mutation::RevokeTokensOfGrant { grant, at } => {
            revoke_tree(tx, |t| t.grant == Some(*grant) && t.expires_at > *at, *at)
        }
        Mutation::RevokeGrantsOfUser { user, at } => revoke_grants(tx, |g| g.user == *user, *at),
        Mutation::RevokeGrantsOfAgent { agent, at } => revoke_grants(tx, |g| g.agent == *agent, *at),
        Mutation::ExtendGrant { id, from, to, at, purpose } => {
            storable(*to)?;
            storable(*at)?;
            let n = tx.update(
                grants,
                |k, g| k == id && g.status == GrantStatus::Active && g.expires_at == *from && *from > *at,
                |g| {
                    g.expires_at = *to;
                    g.reapproved_at = Some(*at);
                    g.reapprovals = g.reapprovals.saturating_add(1);
                    if let Some(p) = purpose {
                        g.purpose = Some(p.clone());
                    }
                },
            );
            if n == 0 {
                return Err(StoreError::Conflict(format!("grant {id} is not live with that expiry")));
            }
            Ok(n)
        }
        Mutation::MarkGrantLapsed { id, at } => {
            storable(*at)?;
            let n = tx.update(
                grants,
                |k, g| k == id && g.status == GrantStatus::Active && g.lapsed_at.is_none() && g.expires_at <= *at,
                |g| g.lapsed_at = Some(*at),
            );
            if n == 0 {
                return Err(StoreError::Conflict(format!("grant {id} is not due to be reported lapsed")));
            }
            Ok(n)
        }
        Mutation::NarrowGrantScopes { id, scopes } => {
            let active = tx.state.grants.get(id).is_some_and(|g| g.status == GrantStatus::Active);
            if !active {
                return Err(StoreError::Conflict(format!("grant {id} is not active")));
            }
            Ok(tx.update(grants, |k, _| k == id, |g| g.scopes = scopes.clone()))
        }
        Mutation::TouchGrant { id, at } => {
            storable(*at)?;
            Ok(tx.update(grants, |k, _| k == id, |g| g.last_used_at = Some(*at)))
        }
        Mutation::InsertApproval(a) => {
            storable(a.created_at)?;
            storable(a.expires_at)?;
            a.decided_at.map(storable).transpose()?;
            a.polled_at.map(storable).transpose()?;
            let s = &tx.state;
            let ok = !s.approvals.contains_key(&a.id)
                && s.agents.contains_key(&a.agent)
                && s.users.contains_key(&a.user)
                && s.users.contains_key(&a.approver)
                && a.grant.is_none_or(|g| s.grants.contains_key(&g));
            require(ok, "approval")?;
            tx.put(approvals, a.id, a.clone());
            Ok(1)
        }
        Mutation::DecideApproval { id, to, by, grant, at } => {
            storable(*at)?;
            let pending =
                tx.state.approvals.get(id).is_some_and(|a| a.status == ApprovalStatus::Pending && a.expires_at > *at);
            if !pending {
                return Err(StoreError::Conflict(format!("approval {id} is no longer pending")));
            }
            require(grant.is_none_or(|g| tx.state.grants.contains_key(&g)), "approval")?;
            Ok(tx.update(
                approvals,
                |k, _| k == id,
                |a| {
                    a.status = *to;
                    a.decided_by = Some(by.clone());
                    a.decided_at = Some(*at);
                    a.grant = grant.or(a.grant);
                },
            ))
        }
        Mutation::CountApproval { id, seen, by, at } => {
            storable(*at)?;
            require(tx.state.users.contains_key(by), "approval")?;
            let n = tx.update(
                approvals,
                |k, a| k == id && a.status == ApprovalStatus::Pending && a.expires_at > *at && a.approved_by == *seen,
                |a| a.approved_by.push(*by),
            );
            if n == 0 {
                return Err(StoreError::Conflict(format!("approval {id} was decided meanwhile")));
            }
            Ok(n)
        }
        Mutation::ConsumeApproval { id, at } => {
            storable(*at)?;
            let n = tx.update(
                approvals,
                |k, a| k == id && a.status == ApprovalStatus::Approved && a.expires_at > *at,
                |a| a.status = ApprovalStatus::Consumed,
            );
            if n == 0 {
                return Err(StoreError::Conflict(format!("approval {id} was already used")));
            }
            Ok(n)
        }
        Mutation::PollApproval { id, at } => {
            storable(*at)?;
            Ok(tx.update(approvals, |k, _| k == id, |a| a.polled_at = Some(*at)))
        }
        Mutation::InsertRefresh(r) => {
            storable(r.issued_at)?;
            storable(r.expires_at)?;
            r.used_at.map(storable).transpose()?;
            r.revoked_at.map(storable).transpose()?;
            let ok = !tx.state.refresh.contains_key(&r.hash) && tx.state.grants.contains_key(&r.grant);
            require(ok, "refresh token")?;
            tx.put(refresh, r.hash.clone(), r.clone());
            Ok(1)
        }
        Mutation::UseRefresh { hash, at } => {
            storable(*at)?;
            let n = tx.update(
                refresh,
                |h, r| h == hash && r.used_at.is_none() && r.revoked_at.is_none(),
                |r| r.used_at = Some(*at),
            );
            if n == 0 {
                return Err(StoreError::Conflict("the refresh token was already used".into()));
            }
            Ok(n)
        }
        Mutation::RevokeRefreshFamily { family, at } => {
            storable(*at)?;
            Ok(tx.update(refresh, |_, r| r.family == *family && r.revoked_at.is_none(), |r| r.revoked_at = Some(*at)))
        }
        Mutation::RevokeTokensOfFamily { family, at } => {
            revoke_tree(tx, |t| t.family.as_deref() == Some(family.as_str()) && t.expires_at > *at, *at)
        }
        Mutation::RecordInventorySamples { hour, samples } => {
            storable(*hour)?;
            for sample in samples {
                let key = (sample.by, sample.key.clone(), *hour);
                let kept = tx.state.inventory_samples.get(&key).copied().unwrap_or_default();
                tx.put(inventory_samples, key, kept.max(sample.counts));
            }
            Ok(samples.len() as u64)
        }
        Mutation::PruneInventorySamples { before } => {
            storable(*before)?;
            let old: Vec<(ReportBy, String, OffsetDateTime)> =
                tx.state.inventory_samples.keys().filter(|(_, _, h)| h < before).cloned().collect();
            for k in &old {
                tx.remove(inventory_samples, k);
            }
            Ok(old.len() as u64)
        }
        Mutation::PurgeExpiredJtis { before } => {
            storable(*before)?;
            let stale: Vec<(String, String)> =
                tx.state.assertion_jtis.iter().filter(|(_, exp)| **exp < *before).map(|(k, _)| k.clone()).collect();
            let proofs: Vec<String> =
                tx.state.dpop_jtis.iter().filter(|(_, exp)| **exp < *before).map(|(k, _)| k.clone()).collect();
            let n = (stale.len() + proofs.len()) as u64;
            let signalled: Vec<Jti> =
                tx.state.ssf_signalled.iter().filter(|(_, at)| **at < *before).map(|(k, _)| *k).collect();
            for k in &signalled {
                tx.remove(ssf_signalled, k);
            }
            for k in &stale {
                tx.remove(assertion_jtis, k);
            }
            for k in &proofs {
                tx.remove(dpop_jtis, k);
            }
            Ok(n)
        }
        Mutation::SwapAttemptCounter { key, expected, new } => {
            storable(new.last)?;
            if tx.state.attempt_counters.get(key) != expected.as_ref() {
                return Err(StoreError::Conflict(format!("the attempt counter {key} has moved")));
            }
            tx.put(attempt_counters, key.clone(), *new);
            Ok(1)
        }
        Mutation::ForgetAttemptCounter { key } => {
            let n = u64::from(tx.state.attempt_counters.contains_key(key));
            tx.remove(attempt_counters, key);
            Ok(n)
        }
        Mutation::DecrementAttemptCounter { key } => {
            Ok(tx.update(attempt_counters, |k, _| k == key, |c| c.count = c.count.saturating_sub(1)))
        }
        Mutation::PurgeAttemptCounters { before } => {
            storable(*before)?;
            let stale: Vec<String> =
                tx.state.attempt_counters.iter().filter(|(_, c)| c.last < *before).map(|(k, _)| k.clone()).collect();
            for k in &stale {
                tx.remove(attempt_counters, k);
            }
            Ok(stale.len() as u64)
        }
        Mutation::AppendAudit(record) => {
            let (seq, prev) = match tx.state.events.last() {
                Some(e) => (e.seq + 1, e.hash.clone()),
                None => (1, GENESIS.to_owned()),
            };
            let event = seal_record(record, applied, seq, &prev)?;
            tx.push_event(event);
            Ok(seq)
        }
        Mutation::InsertCheckpoint(cp) => {
            if i64::try_from(cp.seq).is_err() {
                return Err(StoreError::Unavailable("checkpoint seq overflow".into()));
            }
            if tx.state.checkpoints.contains_key(&cp.seq) {
                return Ok(0);
            }
            tx.put(checkpoints, cp.seq, cp.clone());
            Ok(1)
        }
        Mutation::SetBackchannel { agent, backchannel } => {
            require(tx.state.agents.contains_key(agent), "backchannel")?;
            tx.put(backchannels, *agent, backchannel.clone());
            Ok(1)
        }
        Mutation::InsertCibaCallback(c) => {
            let ok = !tx.state.callbacks.contains_key(&c.approval)
                && tx.state.approvals.contains_key(&c.approval)
                && tx.state.agents.contains_key(&c.agent);
            require(ok, "CIBA callback")?;
            tx.put(callbacks, c.approval, c.clone());
            Ok(1)
        }
        Mutation::InsertDelivery(d) => {
            storable(d.created_at)?;
            storable(d.next_at)?;
            d.lease_until.map(storable).transpose()?;
            require(!tx.state.deliveries.contains_key(&d.id), "delivery")?;
            tx.put(deliveries, d.id.clone(), d.clone());
            Ok(1)
        }
        Mutation::LeaseDelivery { id, holder, now, until } => {
            storable(*now)?;
            storable(*until)?;
            let n = tx.update(
                deliveries,
                |k, d| k == id && claimable(d, *now),
                |d| {
                    d.lease_holder = Some(holder.clone());
                    d.lease_until = Some(*until);
                },
            );
            if n == 0 {
                return Err(StoreError::Conflict(format!("delivery {id} is not due or is leased")));
            }
            Ok(n)
        }
        Mutation::FinishDelivery { id, holder, status, attempts, next_at, error } => {
            storable(*next_at)?;
            let n = tx.update(
                deliveries,
                |k, d| k == id && d.status == DeliveryStatus::Pending && d.lease_holder.as_ref() == Some(holder),
                |d| {
                    d.status = *status;
                    d.attempts = *attempts;
                    d.next_at = *next_at;
                    d.last_error = error.clone();
                    d.lease_holder = None;
                    d.lease_until = None;
                },
            );
            if n == 0 {
                return Err(StoreError::Conflict(format!("delivery {id} is not leased to {holder}")));
            }
            Ok(n)
        }
        m => apply_signals(tx, m),
    }
}

/// The Shared Signals mutations.
fn apply_signals(tx: &mut Tx<'_>, m: &Mutation) -> Result<u64, StoreError> {
    match m {
        Mutation::InsertStream(st) => {
            for t in [st.created_at, st.updated_at, st.next_at] {
                storable(t)?;
            }
            let ok = !tx.state.streams.contains_key(&st.id) && tx.state.resources.contains_key(&st.resource);
            require(ok, "stream")?;
            tx.put(streams, st.id, st.clone());
            Ok(1)
        }
        Mutation::UpdateStream(st) => {
            storable(st.updated_at)?;
            let n = tx.update(
                streams,
                |k, old| *k == st.id && old.resource == st.resource,
                |old| {
                    old.delivery = st.delivery.clone();
                    old.events = st.events;
                    old.description = st.description.clone();
                    old.updated_at = st.updated_at;
                },
            );
            require(n == 1, "stream")?;
            Ok(n)
        }
        Mutation::DeleteStream { id } => {
            if !tx.state.streams.contains_key(id) {
                return Ok(0);
            }
            tx.remove(streams, id);
            let queued: Vec<u64> = tx.state.ssf_events.values().filter(|e| e.stream == *id).map(|e| e.seq).collect();
            for seq in queued {
                tx.remove(ssf_events, &seq);
            }
            let subjects: Vec<(StreamId, String)> =
                tx.state.ssf_subjects.keys().filter(|(st, _)| st == id).cloned().collect();
            for k in subjects {
                tx.remove(ssf_subjects, &k);
            }
            Ok(1)
        }
        Mutation::SetStreamStatus { id, status, reason, at } => {
            storable(*at)?;
            let n = tx.update(
                streams,
                |k, _| k == id,
                |st| {
                    st.status = *status;
                    st.status_reason = reason.clone();
                    st.updated_at = *at;
                    if *status == StreamStatus::Enabled {
                        st.failures = 0;
                        st.next_at = *at;
                    }
                },
            );
            if *status == StreamStatus::Disabled {
                let queued: Vec<u64> =
                    tx.state.ssf_events.values().filter(|e| e.stream == *id).map(|e| e.seq).collect();
                for seq in queued {
                    tx.remove(ssf_events, &seq);
                }
            }
            Ok(n)
        }
        Mutation::SignalRevocations { at, cause } => {
            storable(*at)?;
            let revoked: Vec<(Jti, String, String, Vec<String>)> = tx
                .state
                .tokens
                .values()
                .filter(|t| t.revoked_at == Some(*at) && !tx.state.ssf_signalled.contains_key(&t.jti))
                .map(|t| (t.jti, t.audience.clone(), t.subject.clone(), token_subjects(t)))
                .collect();
            let mut n = 0;
            for (jti, aud, principal, about) in revoked {
                let subject = jti.to_string();
                let watched =
                    tx.state.streams.values().any(|st| st.audience == aud && st.status != StreamStatus::Disabled);
                let targets: Vec<StreamId> = tx
                    .state
                    .streams
                    .values()
                    .filter(|st| {
                        st.audience == aud
                            && takes(tx.state, st, EventKind::SessionRevoked)
                            && !about.iter().any(|sub| removed(tx.state, st.id, sub))
                    })
                    .map(|st| st.id)
                    .collect();
                if watched {
                    tx.put(ssf_signalled, jti, *at);
                }
                for stream in targets {
                    let signal = Signal {
                        kind: EventKind::SessionRevoked,
                        subject: subject.clone(),
                        principal: Some(principal.clone()),
                        at: *at,
                        cause: cause.clone(),
                        detail: None,
                    };
                    tx.queue(stream, signal);
                    n += 1;
                }
            }
            Ok(n)
        }
        Mutation::SignalHolders { holder, signal } => {
            storable(signal.at)?;
            let audiences: BTreeSet<&str> = tx
                .state
                .tokens
                .values()
                .filter(|t| {
                    (t.client_id.to_string() == *holder || t.subject == *holder)
                        && t.revoked_at.is_none()
                        && t.expires_at > signal.at
                })
                .map(|t| t.audience.as_str())
                .collect();
            let targets: Vec<StreamId> = tx
                .state
                .streams
                .values()
                .filter(|st| {
                    audiences.contains(st.audience.as_str())
                        && takes(tx.state, st, signal.kind)
                        && !removed(tx.state, st.id, &signal.subject)
                })
                .map(|st| st.id)
                .collect();
            let n = targets.len() as u64;
            for stream in targets {
                tx.queue(stream, signal.clone());
            }
            Ok(n)
        }
        Mutation::SignalStream { stream, signal } => {
            storable(signal.at)?;
            let ok = tx
                .state
                .streams
                .get(stream)
                .is_some_and(|st| takes(tx.state, st, signal.kind) && !removed(tx.state, st.id, &signal.subject));
            if !ok {
                return Ok(0);
            }
            tx.queue(*stream, signal.clone());
            Ok(1)
        }
        Mutation::RemoveStreamSubject { stream, subject } => {
            require(tx.state.streams.contains_key(stream), "stream")?;
            let key = (*stream, subject.clone());
            if tx.state.ssf_subjects.contains_key(&key) {
                return Ok(0);
            }
            let count = tx.state.ssf_subjects.keys().filter(|(st, _)| st == stream).count() as u64;
            if count >= mandate_model::ssf::MAX_REMOVED_SUBJECTS {
                return Err(StoreError::Conflict(format!("stream {stream} has too many subjects removed")));
            }
            tx.put(ssf_subjects, key, ());
            Ok(1)
        }
        Mutation::AddStreamSubject { stream, subject } => {
            let key = (*stream, subject.clone());
            if !tx.state.ssf_subjects.contains_key(&key) {
                return Ok(0);
            }
            tx.remove(ssf_subjects, &key);
            Ok(1)
        }
        Mutation::ClaimVerification { stream, at, not_before } => {
            storable(*at)?;
            let n = tx.update(
                streams,
                |k, st| k == stream && st.verified_at.is_none_or(|v| v <= *not_before),
                |st| st.verified_at = Some(*at),
            );
            if n == 0 {
                return Err(StoreError::Conflict(format!("stream {stream} was verified too recently or is missing")));
            }
            Ok(n)
        }
        Mutation::AckEvents { stream, seqs } => {
            let mut n = 0;
            for seq in seqs {
                if tx.state.ssf_events.get(seq).is_some_and(|e| e.stream == *stream) {
                    tx.remove(ssf_events, seq);
                    n += 1;
                }
            }
            Ok(n)
        }
        Mutation::LeaseStream { id, holder, now, until } => {
            storable(*now)?;
            storable(*until)?;
            let n = tx.update(
                streams,
                |k, st| k == id && pushable(st, *now),
                |st| {
                    st.lease_holder = Some(holder.clone());
                    st.lease_until = Some(*until);
                },
            );
            if n == 0 {
                return Err(StoreError::Conflict(format!("stream {id} is not due or is leased")));
            }
            Ok(n)
        }
        Mutation::FinishPush { id, holder, delivered, failures, next_at, pause } => {
            storable(*next_at)?;
            let n = tx.update(
                streams,
                |k, st| k == id && st.lease_holder.as_ref() == Some(holder),
                |st| {
                    st.failures = *failures;
                    st.next_at = *next_at;
                    st.lease_holder = None;
                    st.lease_until = None;
                    if let Some(reason) = pause {
                        st.status = StreamStatus::Paused;
                        st.status_reason = Some(reason.clone());
                    }
                },
            );
            if n == 0 {
                return Err(StoreError::Conflict(format!("stream {id} is not leased to {holder}")));
            }
            if let Some(seq) = delivered
                && tx.state.ssf_events.get(seq).is_some_and(|e| e.stream == *id)
            {
                tx.remove(ssf_events, seq);
            }
            Ok(n)
        }
        other => Err(StoreError::Unavailable(format!("the memory store does not apply {other:?}"))),
    }
}

/// A delegated token goes in only under a live parent and an active grant.
fn token_may_be_inserted(state: &State, t: &TokenRecord) -> Result<(), StoreError> {
    if let Some(parent) = t.parent {
        let live = state.tokens.get(&parent).is_some_and(|p| p.revoked_at.is_none() && p.expires_at > t.issued_at);
        if !live {
            return Err(StoreError::Conflict(format!("parent token {parent} is revoked or unknown")));
        }
    }
    if let Some(grant) = t.grant {
        let active =
            state.grants.get(&grant).is_some_and(|g| g.status == GrantStatus::Active && g.expires_at > t.issued_at);
        if !active {
            return Err(StoreError::Conflict(format!("grant {grant} is not active")));
        }
    }
    Ok(())
}

/// Revokes the tokens `root` picks and every token exchanged from any of
/// them, transitively (revoked or not, a root's descendants are reached);
/// how many were live before.
fn revoke_tree(tx: &mut Tx<'_>, root: impl Fn(&TokenRecord) -> bool, at: OffsetDateTime) -> Result<u64, StoreError> {
    storable(at)?;
    let mut children: BTreeMap<Jti, Vec<Jti>> = BTreeMap::new();
    for t in tx.state.tokens.values() {
        if let Some(p) = t.parent {
            children.entry(p).or_default().push(t.jti);
        }
    }
    let mut tree: BTreeSet<Jti> = BTreeSet::new();
    let mut frontier: Vec<Jti> = tx.state.tokens.values().filter(|t| root(t)).map(|t| t.jti).collect();
    while let Some(jti) = frontier.pop() {
        if tree.insert(jti) {
            frontier.extend(children.get(&jti).into_iter().flatten().copied());
        }
    }
    Ok(tx.update(tokens, |jti, t| t.revoked_at.is_none() && tree.contains(jti), |t| t.revoked_at = Some(at)))
}

/// Marks the active grants `pick` selects revoked; how many.
fn revoke_grants(tx: &mut Tx<'_>, pick: impl Fn(&Grant) -> bool, at: OffsetDateTime) -> Result<u64, StoreError> {
    storable(at)?;
    Ok(tx.update(
        grants,
        |_, g| g.status == GrantStatus::Active && pick(g),
        |g| {
            g.status = GrantStatus::Revoked;
            g.revoked_at = Some(at);
        },
    ))
}

/// Newest first (ids are ULIDs), at most `limit`.
fn newest<T>(rows: impl DoubleEndedIterator<Item = T>, limit: u32) -> Vec<T> {
    rows.rev().take(limit as usize).collect()
}

/// `u` with its SCIM source of groups, as the SQL stores read it.
fn with_scim_groups(s: &State, u: &User) -> User {
    let mut names: Vec<String> = s
        .scim_members
        .keys()
        .filter(|(_, m)| *m == u.id)
        .filter_map(|(g, _)| s.scim_groups.get(g).map(|g| g.display_name.clone()))
        .collect();
    names.sort();
    User { scim_groups: names, ..u.clone() }
}

/// `g` with its members, sorted.
fn with_members(s: &State, g: &ScimGroup) -> ScimGroup {
    let members = s.scim_members.keys().filter(|(id, _)| *id == g.id).map(|(_, u)| *u).collect();
    ScimGroup { members, ..g.clone() }
}

fn page<T>(all: Vec<T>, offset: u64, limit: u32) -> Page<T> {
    let total = all.len() as u64;
    // SAFETY-FALLBACK: an offset beyond usize is past every record: an empty page.
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    Page { total, items: all.into_iter().skip(skip).take(limit as usize).collect() }
}

#[async_trait]
impl Store for MemoryStore {
    async fn commit(&self, change: Change) -> Result<Receipt, StoreError> {
        let mut state = self.lock()?;
        if change.expected_epoch().is_some_and(|e| e != state.epoch) {
            return Err(StoreError::Moved);
        }
        apply_change(&mut state, &change)
    }

    async fn epoch(&self) -> Result<u64, StoreError> {
        self.read(|s| s.epoch)
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|s| s.settings.get(key).cloned())
    }

    async fn attempt_counters(&self, keys: &[String]) -> Result<Vec<(String, AttemptCounter)>, StoreError> {
        self.read(|s| keys.iter().filter_map(|k| s.attempt_counters.get(k).map(|c| (k.clone(), *c))).collect())
    }

    async fn group_members(&self, group: &str) -> Result<Vec<User>, StoreError> {
        self.read(|s| {
            s.users
                .values()
                .map(|u| with_scim_groups(s, u))
                .filter(|u| u.groups.iter().chain(&u.scim_groups).any(|g| g == group))
                .take(super::MAX_GROUP_MEMBERS)
                .collect()
        })
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.read(|s| s.users.get(&id).map(|u| with_scim_groups(s, u)))
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.read(|s| s.users.values().find(|u| u.email == email).map(|u| with_scim_groups(s, u)))
    }

    async fn scim_token(&self, id: &str) -> Result<Option<ScimToken>, StoreError> {
        self.read(|s| s.scim_tokens.get(id).cloned())
    }

    async fn scim_tokens(&self) -> Result<Vec<ScimToken>, StoreError> {
        self.read(|s| {
            let mut all: Vec<ScimToken> = s.scim_tokens.values().cloned().collect();
            all.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
            all
        })
    }

    async fn scim_user(&self, user: UserId) -> Result<Option<ScimUserRecord>, StoreError> {
        self.read(|s| s.scim_users.get(&user).cloned())
    }

    async fn scim_users(&self, q: &ScimUserQuery) -> Result<Page<UserId>, StoreError> {
        self.read(|s| {
            let key = q.user_name.as_deref().map(ScimUserRecord::user_name_key);
            let matching: Vec<UserId> = s
                .users
                .values()
                .filter(|u| {
                    let rec = s.scim_users.get(&u.id);
                    rec.is_none_or(|r| r.deleted_at.is_none())
                        && key.as_ref().is_none_or(|k| match rec {
                            Some(r) => ScimUserRecord::user_name_key(&r.user_name) == *k,
                            None => u.email == *k,
                        })
                        && q.external_id.as_ref().is_none_or(|x| rec.is_some_and(|r| r.external_id.as_ref() == Some(x)))
                        && q.email.as_ref().is_none_or(|e| u.email == *e)
                })
                .map(|u| u.id)
                .collect();
            page(matching, q.offset, q.limit)
        })
    }

    async fn scim_group(&self, id: GroupId) -> Result<Option<ScimGroup>, StoreError> {
        self.read(|s| s.scim_groups.get(&id).map(|g| with_members(s, g)))
    }

    async fn scim_groups(&self, q: &ScimGroupQuery) -> Result<Page<ScimGroup>, StoreError> {
        self.read(|s| {
            let name = q.display_name.as_deref().map(str::to_lowercase);
            let matching: Vec<ScimGroup> = s
                .scim_groups
                .values()
                .filter(|g| {
                    name.as_ref().is_none_or(|n| g.display_name.to_lowercase() == *n)
                        && q.external_id.as_ref().is_none_or(|x| g.external_id.as_ref() == Some(x))
                })
                .map(|g| with_members(s, g))
                .collect();
            page(matching, q.offset, q.limit)
        })
    }

    async fn user_token_by_hash(&self, hash: &str) -> Result<Option<UserToken>, StoreError> {
        self.read(|s| s.user_tokens.get(hash).cloned())
    }

    async fn user_tokens(&self, user: UserId) -> Result<Vec<UserToken>, StoreError> {
        self.read(|s| {
            let mut mine: Vec<UserToken> = s.user_tokens.values().filter(|t| t.user == user).cloned().collect();
            mine.sort_by_key(|t| std::cmp::Reverse(t.id));
            mine
        })
    }

    async fn agent(&self, id: AgentId) -> Result<Option<Agent>, StoreError> {
        self.read(|s| s.agents.get(&id).cloned())
    }

    async fn agent_by_metadata_url(&self, url: &str) -> Result<Option<Agent>, StoreError> {
        self.read(|s| s.agents.values().find(|a| a.metadata_url.as_deref() == Some(url)).cloned())
    }

    async fn agents_federated_by(&self, issuer: &str, subject: &str) -> Result<Vec<Agent>, StoreError> {
        self.read(|s| {
            s.agents
                .values()
                .filter(|a| {
                    a.federated_credentials.iter().any(|r| {
                        let (key, pattern) = r.index_key();
                        r.issuer == issuer && (pattern || key == subject)
                    })
                })
                .take(super::MAX_FEDERATED_CANDIDATES as usize)
                .cloned()
                .collect()
        })
    }

    async fn agent_children(&self, parent: AgentId) -> Result<Vec<Agent>, StoreError> {
        self.read(|s| s.agents.values().filter(|a| a.parent == Some(parent)).cloned().collect())
    }

    async fn resource(&self, id: ResourceId) -> Result<Option<Resource>, StoreError> {
        self.read(|s| s.resources.get(&id).cloned())
    }

    async fn resource_by_identifier(&self, identifier: &str) -> Result<Option<Resource>, StoreError> {
        self.read(|s| s.resources.values().find(|r| r.identifier == identifier).cloned())
    }

    async fn resources(&self) -> Result<Vec<Resource>, StoreError> {
        self.read(|s| s.resources.values().cloned().collect())
    }

    async fn policy_versions(&self, before: Option<u64>, limit: u32) -> Result<Vec<PolicyVersion>, StoreError> {
        self.read(|s| {
            let entries = s.policies.iter().zip(1u64..).map(|(p, n)| policy_entry(n, p));
            let mut v: Vec<PolicyVersion> = entries.filter(|e| before.is_none_or(|b| e.number < b)).collect();
            v.reverse();
            v.truncate(limit as usize);
            v
        })
    }

    async fn policy_version(&self, number: u64) -> Result<Option<(PolicyVersion, StoredPolicy)>, StoreError> {
        self.read(|s| {
            let i = usize::try_from(number).ok()?.checked_sub(1)?;
            s.policies.get(i).map(|p| (policy_entry(number, p), p.clone()))
        })
    }

    async fn current_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        self.read(|s| s.policies.last().cloned())
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.read(|s| {
            let mut keys: Vec<StoredKey> = s.keys.values().cloned().collect();
            keys.sort_by_key(|k| k.created_at);
            keys
        })
    }

    async fn token(&self, jti: Jti) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|s| s.tokens.get(&jti).cloned())
    }

    async fn grant(&self, id: GrantId) -> Result<Option<Grant>, StoreError> {
        self.read(|s| s.grants.get(&id).cloned())
    }

    async fn grants(&self, q: &GrantQuery) -> Result<Vec<Grant>, StoreError> {
        self.read(|s| {
            let owned_by = |owner: UserId, agent: AgentId| s.agents.get(&agent).is_some_and(|a| a.owner == owner);
            let rows = s.grants.values().filter(|g| {
                q.user.is_none_or(|u| g.user == u)
                    && q.agent.is_none_or(|a| g.agent == a)
                    && q.user_or_owner.is_none_or(|u| g.user == u || owned_by(u, g.agent))
                    && q.resource.as_ref().is_none_or(|r| &g.resource == r)
                    && q.status.is_none_or(|(st, now)| match st {
                        GrantState::Revoked => g.status == GrantStatus::Revoked,
                        GrantState::Active => g.status == GrantStatus::Active && g.expires_at > now,
                        GrantState::Expired => g.status == GrantStatus::Active && g.expires_at <= now,
                    })
                    && q.expires_before.is_none_or(|t| g.expires_at < t)
                    && q.used_before.is_none_or(|t| g.last_used_at.is_none_or(|l| l < t))
                    && q.before.is_none_or(|b| g.id < b)
            });
            newest(rows.cloned(), q.limit)
        })
    }

    async fn lapse_due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Grant>, StoreError> {
        self.read(|s| {
            let mut due: Vec<Grant> = s
                .grants
                .values()
                .filter(|g| g.status == GrantStatus::Active && g.lapsed_at.is_none() && g.expires_at <= now)
                .cloned()
                .collect();
            due.sort_by_key(|g| (g.expires_at, g.id));
            due.truncate(limit as usize);
            due
        })
    }

    async fn lapsed_grants(&self, q: &LapsedQuery) -> Result<Vec<Grant>, StoreError> {
        self.read(|s| {
            let mut rows: Vec<Grant> = s
                .grants
                .values()
                .filter(|g| {
                    g.lapsed_at.is_some_and(|at| {
                        q.since.is_none_or(|since| at >= since) && q.before.is_none_or(|b| (at, g.id) < b)
                    })
                })
                .cloned()
                .collect();
            rows.sort_by_key(|g| std::cmp::Reverse((g.lapsed_at, g.id)));
            rows.truncate(q.limit as usize);
            rows
        })
    }

    async fn list_users(&self, q: &UserListQuery) -> Result<Vec<User>, StoreError> {
        self.read(|s| {
            let rows = s
                .users
                .values()
                .filter(|u| q.status.is_none_or(|st| u.status == st) && q.before.is_none_or(|b| u.id < b))
                .map(|u| with_scim_groups(s, u))
                .filter(|u| q.group.as_ref().is_none_or(|g| u.groups.contains(g) || u.scim_groups.contains(g)));
            newest(rows, q.limit)
        })
    }

    async fn list_agents(&self, q: &AgentListQuery) -> Result<Vec<ListedAgent>, StoreError> {
        self.read(|s| {
            let rows = s.agents.values().filter_map(|a| {
                let last = s.agent_last_use.get(&a.id).copied();
                let keep = q.owner.is_none_or(|o| a.owner == o)
                    && q.kind.is_none_or(|k| a.kind == k)
                    && q.origin.is_none_or(|o| a.origin == o)
                    && q.status.is_none_or(|st| a.status == st)
                    && q.parent.is_none_or(|p| a.parent == Some(p))
                    && q.used_before.is_none_or(|t| last.is_none_or(|l| l < t))
                    && q.used_after.is_none_or(|t| last.is_some_and(|l| l >= t))
                    && q.expires_before.is_none_or(|t| a.expires_at.is_some_and(|e| e < t))
                    && (!q.not_retired || a.status != AgentStatus::Retired)
                    && q.before.is_none_or(|b| a.id < b);
                keep.then(|| ListedAgent { agent: a.clone(), last_used_at: last })
            });
            newest(rows, q.limit)
        })
    }

    async fn inventory_tally(&self, mut tally: InventoryTally) -> Result<InventoryTally, StoreError> {
        // The SQL stores read only what can count; here everything is fed,
        // which the tally allows.
        let (grants, tokens, agents) = self.read(|s| {
            let owner = |a: &AgentId| s.agents.get(a);
            let scope_json = |set: &mandate_model::ScopeSet| {
                serde_json::to_string(set).map_err(|e| StoreError::Corrupt(format!("a scope set: {e}")))
            };
            // Every grant's agent exists (as the SQL stores' foreign key).
            let grants = s
                .grants
                .values()
                .filter_map(|g| owner(&g.agent).map(|a| (g, a)))
                .map(|(g, a)| {
                    Ok(GrantFact {
                        owner: a.owner.to_string(),
                        resource: g.resource.clone(),
                        scopes: scope_json(&g.scopes)?,
                        created_at: g.created_at,
                        expires_at: g.expires_at,
                        revoked_at: g.revoked_at.filter(|_| g.status == GrantStatus::Revoked),
                    })
                })
                .collect::<Result<Vec<GrantFact>, StoreError>>();
            let tokens = s
                .tokens
                .values()
                .map(|t| {
                    let agent = match &t.client_id {
                        ClientId::Agent(a) => owner(a),
                        _ => None,
                    };
                    Ok(TokenFact {
                        owner: agent.map(|a| a.owner.to_string()),
                        ephemeral: agent.is_some_and(|a| a.kind == AgentKind::Ephemeral),
                        audience: t.audience.clone(),
                        scopes: scope_json(&t.scopes)?,
                        issued_at: t.issued_at,
                        expires_at: t.expires_at,
                        revoked_at: t.revoked_at,
                    })
                })
                .collect::<Result<Vec<TokenFact>, StoreError>>();
            let agents: Vec<AgentFact> = s
                .agents
                .values()
                .map(|a| AgentFact {
                    owner: a.owner.to_string(),
                    ephemeral: a.kind == AgentKind::Ephemeral,
                    created_at: a.created_at,
                    expires_at: a.expires_at,
                    retired: a.status == AgentStatus::Retired,
                    retired_at: s.agent_retired_at.get(&a.id).copied(),
                })
                .collect();
            (grants, tokens, agents)
        })?;
        for g in &grants? {
            tally.grant(g)?;
        }
        for t in &tokens? {
            tally.token(t)?;
        }
        for a in &agents {
            tally.agent(a)?;
        }
        Ok(tally)
    }

    async fn inventory_peaks(
        &self,
        by: ReportBy,
        first: &str,
        last: &str,
        since_24h: OffsetDateTime,
        since_7d: OffsetDateTime,
    ) -> Result<Vec<Peaks>, StoreError> {
        self.read(|s| {
            let mut out: BTreeMap<String, Peaks> = BTreeMap::new();
            for ((b, key, hour), counts) in &s.inventory_samples {
                if *b != by || key.as_str() < first || key.as_str() > last || *hour < since_7d {
                    continue;
                }
                let p = out.entry(key.clone()).or_insert_with(|| Peaks {
                    key: key.clone(),
                    peak_24h: Counts::default(),
                    peak_7d: Counts::default(),
                });
                p.peak_7d = p.peak_7d.max(*counts);
                if *hour >= since_24h {
                    p.peak_24h = p.peak_24h.max(*counts);
                }
            }
            out.into_values().collect()
        })
    }

    async fn agent_activity(&self, agent: AgentId, now: OffsetDateTime) -> Result<Option<AgentActivity>, StoreError> {
        self.read(|s| {
            s.agents.contains_key(&agent).then(|| AgentActivity {
                live_grants: s
                    .grants
                    .values()
                    .filter(|g| g.agent == agent && g.status == GrantStatus::Active && g.expires_at > now)
                    .count() as u64,
                live_tokens: s
                    .tokens
                    .values()
                    .filter(|t| t.client_id == ClientId::Agent(agent) && t.revoked_at.is_none() && t.expires_at > now)
                    .count() as u64,
                last_used_at: s.agent_last_use.get(&agent).copied(),
            })
        })
    }

    async fn list_resources(&self, q: &ResourceListQuery) -> Result<Vec<Resource>, StoreError> {
        self.read(|s| newest(s.resources.values().filter(|r| q.before.is_none_or(|b| r.id < b)).cloned(), q.limit))
    }

    async fn approval(&self, id: ApprovalId) -> Result<Option<Approval>, StoreError> {
        self.read(|s| s.approvals.get(&id).cloned())
    }

    async fn backchannel(&self, agent: AgentId) -> Result<Option<Backchannel>, StoreError> {
        self.read(|s| s.backchannels.get(&agent).cloned())
    }

    async fn ciba_callback(&self, approval: ApprovalId) -> Result<Option<CibaCallback>, StoreError> {
        self.read(|s| s.callbacks.get(&approval).cloned())
    }

    async fn due_deliveries(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        self.read(|s| {
            let mut due: Vec<Delivery> = s.deliveries.values().filter(|d| claimable(d, now)).cloned().collect();
            due.sort_by(|a, b| (a.next_at, &a.id).cmp(&(b.next_at, &b.id)));
            due.truncate(limit as usize);
            due
        })
    }

    async fn stream(&self, id: StreamId) -> Result<Option<Stream>, StoreError> {
        self.read(|s| s.streams.get(&id).cloned())
    }

    async fn streams_of(&self, resource: ResourceId) -> Result<Vec<Stream>, StoreError> {
        self.read(|s| {
            let mut all: Vec<Stream> = s.streams.values().filter(|st| st.resource == resource).cloned().collect();
            all.sort_by_key(|a| (a.created_at, a.id));
            all
        })
    }

    async fn queued_events(&self, stream: StreamId, limit: u32) -> Result<Vec<QueuedEvent>, StoreError> {
        self.read(|s| s.ssf_events.values().filter(|e| e.stream == stream).take(limit as usize).cloned().collect())
    }

    async fn removed_subjects(&self, stream: StreamId) -> Result<Vec<String>, StoreError> {
        self.read(|s| s.ssf_subjects.keys().filter(|(st, _)| *st == stream).map(|(_, sub)| sub.clone()).collect())
    }

    async fn due_streams(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Stream>, StoreError> {
        self.read(|s| {
            let mut due: Vec<Stream> = s
                .streams
                .values()
                .filter(|st| pushable(st, now) && s.ssf_events.values().any(|e| e.stream == st.id))
                .cloned()
                .collect();
            due.sort_by_key(|a| (a.next_at, a.id));
            due.truncate(limit as usize);
            due
        })
    }

    async fn deliveries_about(&self, about: &str) -> Result<Vec<Delivery>, StoreError> {
        self.read(|s| s.deliveries.values().filter(|d| d.about == about).cloned().collect())
    }

    async fn approvals(&self, q: &ApprovalQuery) -> Result<Vec<Approval>, StoreError> {
        self.read(|s| {
            let upto = match q.before {
                Some(b) => Bound::Excluded(b),
                None => Bound::Unbounded,
            };
            let rows = s.approvals.range((Bound::Unbounded, upto)).map(|(_, a)| a).filter(|a| {
                let binding = match &a.subject {
                    ApprovalSubject::Action { binding, .. } => Some(binding.as_str()),
                    ApprovalSubject::Grant { .. } | ApprovalSubject::Reapproval { .. } => None,
                };
                q.approver.is_none_or(|u| match &a.group {
                    None => a.approver == u,
                    Some(g) => q.groups.contains(g),
                }) && q.status.is_none_or(|st| a.status == st)
                    && q.binding.as_deref().is_none_or(|b| binding == Some(b))
            });
            newest(rows.cloned(), q.limit)
        })
    }

    async fn pending_requests(
        &self,
        agent: AgentId,
        user: Option<UserId>,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        self.read(|s| {
            s.approvals
                .values()
                .filter(|a| {
                    a.agent == agent
                        && a.status == ApprovalStatus::Pending
                        && user.is_none_or(|u| a.user == u)
                        && a.expires_at > now
                })
                .count() as u64
        })
    }

    async fn refresh(&self, hash: &str) -> Result<Option<RefreshRecord>, StoreError> {
        self.read(|s| s.refresh.get(hash).cloned())
    }

    async fn auth_code(&self, hash: &str) -> Result<Option<AuthCodeRecord>, StoreError> {
        self.read(|s| s.auth_codes.get(hash).cloned())
    }

    async fn upstream_linked(&self, user: UserId) -> Result<bool, StoreError> {
        self.read(|s| s.upstream_links.values().any(|l| l.user == user))
    }

    async fn upstream_link(&self, issuer: &str, subject: &str) -> Result<Option<UpstreamLink>, StoreError> {
        let key = (issuer.to_owned(), subject.to_owned());
        self.read(|s| s.upstream_links.get(&key).cloned())
    }

    async fn session(&self, hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.read(|s| s.sessions.get(hash).cloned())
    }

    async fn agents_owned_by(&self, owner: UserId) -> Result<Vec<Agent>, StoreError> {
        self.read(|s| s.agents.values().filter(|a| a.owner == owner).cloned().collect())
    }

    async fn last_use_of_owned_agents(&self, owner: UserId) -> Result<Vec<(AgentId, OffsetDateTime)>, StoreError> {
        self.read(|s| {
            let mut last: BTreeMap<AgentId, OffsetDateTime> = BTreeMap::new();
            for g in s.grants.values() {
                let owned = s.agents.get(&g.agent).is_some_and(|a| a.owner == owner);
                if let (true, Some(at)) = (owned, g.last_used_at) {
                    let t = last.entry(g.agent).or_insert(at);
                    *t = (*t).max(at);
                }
            }
            last.into_iter().collect()
        })
    }

    async fn revoked_status_indexes(&self, from: u64, to: u64) -> Result<Vec<u64>, StoreError> {
        self.read(|s| {
            s.tokens
                .values()
                .filter(|t| t.revoked_at.is_some())
                .filter_map(|t| t.status_idx)
                .filter(|i| (from..to).contains(i))
                .collect()
        })
    }

    async fn status_indexes_reserved(&self) -> Result<u64, StoreError> {
        self.read(|s| s.status_next)
    }

    async fn spawned_since(&self, parent: AgentId, since: OffsetDateTime) -> Result<u64, StoreError> {
        self.read(|s| s.agents.values().filter(|a| a.parent == Some(parent) && a.created_at >= since).count() as u64)
    }

    async fn spawn_counts(
        &self,
        parents: &[AgentId],
        since: OffsetDateTime,
    ) -> Result<Vec<(AgentId, u64)>, StoreError> {
        let wanted: BTreeSet<AgentId> = parents.iter().copied().collect();
        self.read(|s| {
            let mut counts: BTreeMap<AgentId, u64> = BTreeMap::new();
            for a in s.agents.values().filter(|a| a.created_at >= since) {
                if let Some(p) = a.parent.filter(|p| wanted.contains(p)) {
                    *counts.entry(p).or_default() += 1;
                }
            }
            counts.into_iter().collect()
        })
    }

    async fn live_grants_of(&self, agents: &[AgentId], now: OffsetDateTime) -> Result<Vec<Grant>, StoreError> {
        let wanted: BTreeSet<AgentId> = agents.iter().copied().collect();
        self.read(|s| {
            let rows = s.grants.values().filter(|g| wanted.contains(&g.agent) && g.is_live(now));
            newest(rows.cloned(), u32::MAX)
        })
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, StoreError> {
        let wanted: BTreeSet<UserId> = ids.iter().copied().collect();
        self.read(|s| wanted.iter().filter_map(|id| s.users.get(id)).map(|u| with_scim_groups(s, u)).collect())
    }

    async fn campaign(&self, id: CampaignId) -> Result<Option<Campaign>, StoreError> {
        self.read(|s| s.campaigns.get(&id).cloned())
    }

    async fn campaigns(&self, q: &CampaignQuery) -> Result<Vec<Campaign>, StoreError> {
        self.read(|s| {
            let upper = q.before.map_or(Bound::Unbounded, Bound::Excluded);
            newest(
                s.campaigns
                    .range((Bound::Unbounded, upper))
                    .map(|(_, c)| c)
                    .filter(|c| q.status.is_none_or(|st| c.status == st))
                    .cloned(),
                q.limit,
            )
        })
    }

    async fn campaigns_due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Campaign>, StoreError> {
        self.read(|s| {
            let mut due: Vec<Campaign> = s
                .campaigns
                .values()
                .filter(|c| c.status == CampaignStatus::Open && c.deadline <= now)
                .cloned()
                .collect();
            due.sort_by_key(|c| (c.deadline, c.id));
            due.truncate(limit as usize);
            due
        })
    }

    async fn campaign_progress(&self, id: CampaignId) -> Result<CampaignProgress, StoreError> {
        self.read(|s| {
            let items = s.review_items.values().filter(|i| i.campaign == id);
            let (n, decided) = items.fold((0u64, 0u64), |(n, d), i| (n + 1, d + u64::from(i.decision.is_some())));
            CampaignProgress { items: n, decided }
        })
    }

    async fn review_item(&self, id: ReviewItemId) -> Result<Option<ReviewItem>, StoreError> {
        self.read(|s| s.review_items.get(&id).cloned())
    }

    async fn review_items(&self, q: &ReviewItemQuery) -> Result<Vec<ReviewItem>, StoreError> {
        self.read(|s| {
            let lower = q.after.map_or(Bound::Unbounded, Bound::Excluded);
            s.review_items
                .range((lower, Bound::Unbounded))
                .map(|(_, i)| i)
                .filter(|i| {
                    q.campaign.is_none_or(|c| i.campaign == c)
                        && q.assignee.is_none_or(|a| i.assignee == a)
                        && (!q.undecided || i.decision.is_none())
                        && (!q.open || s.campaigns.get(&i.campaign).is_some_and(|c| c.status == CampaignStatus::Open))
                })
                .take(q.limit as usize)
                .cloned()
                .collect()
        })
    }

    async fn expired_agents(&self, at: OffsetDateTime) -> Result<Vec<Agent>, StoreError> {
        self.read(|s| {
            s.agents
                .values()
                .filter(|a| {
                    a.kind == AgentKind::Ephemeral
                        && a.status != AgentStatus::Retired
                        && a.expires_at.is_some_and(|e| e <= at)
                })
                .cloned()
                .collect()
        })
    }

    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.read(|s| s.events.last().map(|e| (e.seq, e.hash.clone())))
    }

    async fn audit_lanes(&self) -> Result<Vec<crate::audit::AuditLane>, StoreError> {
        // One writer, one lane.
        self.read(|s| {
            s.events
                .last()
                .map(|e| crate::audit::AuditLane {
                    lane: 0,
                    seq: e.seq,
                    hash: e.hash.clone(),
                    checkpointed: s.checkpoints.contains_key(&e.seq),
                })
                .into_iter()
                .collect()
        })
    }

    async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<Event>, StoreError> {
        let is = |field: &Option<String>, wanted: &Option<String>| wanted.is_none() || field == wanted;
        self.read(|s| {
            s.events
                .iter()
                .filter(|e| {
                    e.seq > q.after
                        && q.lane.is_none_or(|l| l == e.lane)
                        && is(&e.actor, &q.actor)
                        && is(&e.subject, &q.subject)
                        && is(&e.jti, &q.jti)
                        && is(&e.grant_id, &q.grant)
                        && q.kind.as_ref().is_none_or(|k| e.kind == *k)
                        && is(&e.resource, &q.resource)
                        && is(&e.parent, &q.parent)
                        && q.since.as_ref().is_none_or(|t| e.time >= *t)
                })
                .take(q.limit as usize)
                .cloned()
                .collect()
        })
    }

    async fn audit_events_of(&self, b: &AuditBatch) -> Result<Vec<Event>, StoreError> {
        let wanted: BTreeSet<&str> = b.keys.iter().map(String::as_str).collect();
        self.read(|s| {
            let mut by_key: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
            for e in s.events.iter().filter(|e| {
                e.seq > b.after
                    && b.kind.as_ref().is_none_or(|k| e.kind == *k)
                    && b.since.as_ref().is_none_or(|t| e.time >= *t)
            }) {
                if let Some(key) = b.key_of(e).filter(|k| wanted.contains(k)) {
                    let slot = by_key.entry(key).or_default();
                    if slot.len() < b.per_key as usize {
                        slot.push(e.clone());
                    }
                }
            }
            by_key.into_values().flatten().collect()
        })
    }

    async fn audit_checkpoints(&self, after: u64, limit: u32) -> Result<Vec<Checkpoint>, StoreError> {
        self.read(|s| {
            s.checkpoints
                .range((Bound::Excluded(after), Bound::Unbounded))
                .take(limit as usize)
                .map(|(_, c)| c.clone())
                .collect()
        })
    }

    async fn last_audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.read(|s| s.checkpoints.values().next_back().cloned())
    }
}

/// The history entry of the `number`th policy set stored.
fn policy_entry(number: u64, p: &StoredPolicy) -> PolicyVersion {
    PolicyVersion {
        number,
        version: p.version.clone(),
        author: p.author.clone(),
        created_at: p.created_at,
        bytes: p.text.len() as u64,
    }
}
