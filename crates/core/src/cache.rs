//! A store decorator that keeps agents and users read by this node, each
//! stamped with the store epoch read before it. Both records change only by
//! mutations that advance the epoch (`SetAgentStatus`, `UpdateUser`;
//! inserts add records nobody has cached), so an entry used only at its own
//! epoch is never stale. The agents a workload token's issuer and subject
//! find are kept the same way (`SetFederatedCredentials`, and inserting an
//! agent that has federated credentials, advance the epoch). Resources,
//! which never change once registered, are kept as read. Everything else
//! passes straight through.
//!
//! It also remembers the newest epoch any request read through it
//! ([`CachingStore::seen_epoch`]): a node holding policies and keys loaded
//! at an older epoch reloads them before deciding (decision 0030).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use mandate_audit::{Checkpoint, Event};
use mandate_model::records::{
    Agent, Approval, Grant, RefreshRecord, Resource, SessionRecord, TokenRecord, User, UserToken,
};
use mandate_model::{AgentId, ApprovalId, GrantId, Jti, ResourceId, UserId};
use time::OffsetDateTime;

use crate::audit::AuditQuery;
use crate::footprint::{CacheFill, Footprint, Weighed, bounded};
use crate::store::{ApprovalQuery, Change, GrantQuery, Receipt, Store, StoreError, StoredKey, StoredPolicy};

/// Bytes each cache may hold (estimated, `crate::footprint`); past its
/// budget the least useful entries are evicted (S3-FIFO). An agent with
/// one key weighs about 2.7 KiB (an allocator hands out about 1.9), so the
/// agents' budget keeps about 36,000.
const AGENTS_BYTES: u64 = 96 << 20;
const FEDERATED_BYTES: u64 = 8 << 20;
const USERS_BYTES: u64 = 16 << 20;
const RESOURCES_BYTES: u64 = 8 << 20;
/// A typical entry's weight, which sizes each cache's table.
const TYPICAL_RECORD: u64 = 2_048;

type Cache<K, V> = crate::footprint::Cache<K, V>;

pub struct CachingStore {
    inner: Arc<dyn Store>,
    agents: Cache<AgentId, (u64, Option<Agent>)>,
    /// Agents found by a workload token's issuer and subject.
    federated: Cache<(String, String), (u64, Vec<Agent>)>,
    users: Cache<UserId, (u64, Option<User>)>,
    /// Resources never change once registered: kept without an epoch.
    resources: Cache<ResourceId, Resource>,
    /// The newest epoch read through this store.
    seen: AtomicU64,
    /// The store's change feed, if it has one.
    feed: Option<tokio::sync::watch::Receiver<crate::store::ChangeFeed>>,
    /// Requests decided optimistically, and those of them run again.
    optimistic: AtomicU64,
    again: AtomicU64,
}

impl CachingStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            feed: inner.changes(),
            inner,
            agents: bounded(AGENTS_BYTES, TYPICAL_RECORD),
            federated: bounded(FEDERATED_BYTES, TYPICAL_RECORD),
            users: bounded(USERS_BYTES, TYPICAL_RECORD / 2),
            resources: bounded(RESOURCES_BYTES, TYPICAL_RECORD),
            seen: AtomicU64::new(0),
            optimistic: AtomicU64::new(0),
            again: AtomicU64::new(0),
        }
    }

    /// How full each cache is, for the `mandate_cache_*` gauges.
    pub fn fill(&self) -> [CacheFill; 4] {
        [
            CacheFill::of("agents", &self.agents),
            CacheFill::of("federated", &self.federated),
            CacheFill::of("users", &self.users),
            CacheFill::of("resources", &self.resources),
        ]
    }

    /// The newest store epoch any request has read through this store.
    /// Whatever a request read after its own epoch read is at least that
    /// new, so this is a lower bound of what the node must have loaded.
    pub fn seen_epoch(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    /// The store epoch for a cached read: the request's own, if it has
    /// read one since it began or last committed ([`one_request`]) or
    /// decides optimistically ([`optimistic`]), else a fresh read.
    async fn read_epoch(&self) -> Result<u64, StoreError> {
        if let Ok(Some(epoch)) = REQUEST.try_with(|r| r.get().epoch) {
            return Ok(epoch);
        }
        let epoch = self.inner.epoch().await?;
        self.seen.fetch_max(epoch, Ordering::AcqRel);
        let _ = REQUEST.try_with(|r| r.set(Request { epoch: Some(epoch), ..r.get() }));
        Ok(epoch)
    }

    /// The epoch a request that ends in a commit may decide at without
    /// reading it ([`optimistic`]): the newest this node knows of, the
    /// greater of what its change feed last heard and what any request
    /// read. It counts as seen from now on, so that policies and keys
    /// loaded at an older one are reloaded before the request decides
    /// (decision 0030). `None` when the store has no feed (one process
    /// uses it alone, and its epoch costs nothing to read) or the feed is
    /// not listening (the node reads, as it falls back to polling).
    pub fn decide_at(&self) -> Option<u64> {
        let feed = self.feed.as_ref().map(|f| *f.borrow())?;
        if !feed.listening {
            return None;
        }
        let epoch = feed.epoch.max(self.seen_epoch());
        self.seen.fetch_max(epoch, Ordering::AcqRel);
        Some(epoch)
    }

    /// Settles a request deciding optimistically that has not committed
    /// yet, before it does anything other than commit on what it decided
    /// (a refusal counted, not written): reads the epoch, and the request
    /// goes on as confirmed if it is still the one it decided at, or as
    /// moved, with [`StoreError::Moved`], if not. Any other request is
    /// left as it is.
    pub async fn settle(&self) -> Result<(), StoreError> {
        let decided = match phase() {
            Some(Phase::Optimistic(decided)) => decided,
            Some(Phase::Moved) => return Err(StoreError::Moved),
            _ => return Ok(()),
        };
        let held = self.still_at(decided).await?;
        let phase = if held { Phase::Confirmed } else { Phase::Moved };
        let _ = REQUEST.try_with(|r| r.set(Request { phase, ..r.get() }));
        if held { Ok(()) } else { Err(StoreError::Moved) }
    }

    /// Whether the store epoch is still `epoch`, read now.
    pub async fn still_at(&self, epoch: u64) -> Result<bool, StoreError> {
        let now = self.inner.epoch().await?;
        self.seen.fetch_max(now, Ordering::AcqRel);
        Ok(now == epoch)
    }

    /// Counts a request decided at an epoch it did not read
    /// ([`optimistic`]), and whether it had to run again.
    pub fn count_optimistic(&self, again: bool) {
        self.optimistic.fetch_add(1, Ordering::Relaxed);
        if again {
            self.again.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests decided at an epoch they did not read, and how many of
    /// them ran again because it had moved, since the node started.
    pub fn optimistic_runs(&self) -> (u64, u64) {
        (self.optimistic.load(Ordering::Relaxed), self.again.load(Ordering::Relaxed))
    }
}

/// Where a request stands with the store epoch (decision 0042).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// It reads the epoch before its first cached read, and again after
    /// each commit ([`one_request`]).
    Reading,
    /// It decides at this epoch without reading it; its first commit
    /// holds only if the epoch is still this one ([`optimistic`]).
    Optimistic(u64),
    /// What it decided optimistically was current when it committed (or
    /// settled): it goes on reading, as [`Phase::Reading`].
    Confirmed,
    /// The epoch had moved when it committed or settled: nothing it
    /// decided stands, and nothing more it commits is written.
    Moved,
}

#[derive(Debug, Clone, Copy)]
struct Request {
    /// The epoch its cached reads use until it commits.
    epoch: Option<u64>,
    phase: Phase,
    /// Whether its client passed the per-client rate limit: a request run
    /// again is not counted twice.
    admitted: bool,
}

tokio::task_local! {
    /// The running request's epoch and phase.
    static REQUEST: std::cell::Cell<Request>;
}

/// Runs `request` with one epoch read for all its cached reads, instead of
/// one before each. The first read is made after `request` began, so
/// everything it decides on is at least as new as its start, which is
/// what decisions 0012 and 0030 promise, and its cached reads are all
/// stamped with one epoch, one view of the store. A commit forgets the
/// epoch, so reads after the request's own writes read it again. Tasks
/// `request` spawns read for themselves.
pub async fn one_request<F: std::future::Future>(request: F) -> F::Output {
    again(false, request).await
}

/// [`one_request`], for a request run again after its optimistic run
/// ([`optimistic`]) found the epoch moved; `admitted` is whether that run
/// passed its client through the rate limit ([`admitted`]).
pub async fn again<F: std::future::Future>(admitted: bool, request: F) -> F::Output {
    REQUEST.scope(std::cell::Cell::new(Request { epoch: None, phase: Phase::Reading, admitted }), request).await
}

/// Whether the running request's client already passed the per-client
/// rate limit, in this run or in the one before it.
pub fn admitted() -> bool {
    REQUEST.try_with(|r| r.get().admitted).unwrap_or(false)
}

/// Notes that the running request's client passed the rate limit.
pub fn admit() {
    let _ = REQUEST.try_with(|r| r.set(Request { admitted: true, ..r.get() }));
}

/// Runs `request`, which ends by committing what it decided, at `epoch`
/// without reading it (decision 0042): its cached reads use entries kept
/// at `epoch`, and its first commit carries `epoch` as a precondition
/// ([`Change::expect_epoch`]). Returns what `request` returned, whether
/// its client passed the rate limit ([`admitted`]), and its phase at the
/// end:
/// - [`Phase::Confirmed`]: the first commit held (or the request
///   settled): the answer stands;
/// - [`Phase::Moved`]: the epoch had moved; nothing was written, and the
///   request must run again, with [`one_request`];
/// - [`Phase::Optimistic`]: it never committed nor settled; its answer
///   stands only once [`CachingStore::settle`] confirms the epoch.
pub async fn optimistic<F: std::future::Future>(epoch: u64, request: F) -> (F::Output, bool, Phase) {
    let state = std::cell::Cell::new(Request { epoch: Some(epoch), phase: Phase::Optimistic(epoch), admitted: false });
    REQUEST
        .scope(state, async {
            let out = request.await;
            let end = REQUEST.try_with(std::cell::Cell::get);
            // The state is always there inside its own scope; were it not,
            // the run counts as stale and its client as not yet admitted:
            // it runs again, and passes the rate limit again.
            match end {
                Ok(r) => (out, r.admitted, r.phase),
                Err(_) => (out, false, Phase::Moved),
            }
        })
        .await
}

/// The running request's phase, if it is one.
pub fn phase() -> Option<Phase> {
    REQUEST.try_with(|r| r.get().phase).ok()
}

fn forget_request_epoch() {
    let _ = REQUEST.try_with(|r| r.set(Request { epoch: None, ..r.get() }));
}

fn hit<K: std::hash::Hash + Eq + Clone, V: Clone>(cache: &Cache<K, (u64, V)>, k: &K, epoch: u64) -> Option<V> {
    cache.get(k).map(Weighed::into_value).filter(|(e, _)| *e == epoch).map(|(_, v)| v)
}

/// Keeps `v` read at `epoch` under `k`, whose heap bytes are `key_heap`.
fn keep<K: std::hash::Hash + Eq + Clone, V: Clone + Footprint>(
    cache: &Cache<K, (u64, V)>,
    k: K,
    key_heap: usize,
    epoch: u64,
    v: V,
) {
    cache.insert(k, Weighed::new::<K>(key_heap, (epoch, v)));
}

#[async_trait]
impl Store for CachingStore {
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<crate::store::ChangeFeed>> {
        self.inner.changes()
    }
    async fn commit(&self, mut change: Change) -> Result<Receipt, StoreError> {
        let phase = phase();
        match phase {
            // Nothing of a request whose decision went stale is written.
            Some(Phase::Moved) => return Err(StoreError::Moved),
            // Stores answer an empty change without looking: settle.
            Some(Phase::Optimistic(_)) if change.is_empty() => {
                self.settle().await?;
                return self.inner.commit(change).await;
            }
            Some(Phase::Optimistic(epoch)) => change.expect_epoch(epoch),
            _ => {}
        }
        forget_request_epoch();
        let receipt = self.inner.commit(change).await;
        forget_request_epoch();
        if let Some(Phase::Optimistic(_)) = phase {
            // Stores check the precondition before anything else of the
            // change: its outcome, or a refusal of a mutation, found the
            // epoch as decided. A store that could not answer may not have
            // looked: the request stays optimistic, and whatever it commits
            // next carries the precondition still.
            let now = match &receipt {
                Err(StoreError::Moved) => Some(Phase::Moved),
                Err(StoreError::Unavailable(_) | StoreError::Corrupt(_)) => None,
                _ => Some(Phase::Confirmed),
            };
            if let Some(now) = now {
                let _ = REQUEST.try_with(|r| r.set(Request { phase: now, ..r.get() }));
            }
        }
        receipt
    }
    async fn epoch(&self) -> Result<u64, StoreError> {
        self.read_epoch().await
    }
    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.setting(key).await
    }
    async fn attempt_counters(
        &self,
        keys: &[String],
    ) -> Result<Vec<(String, crate::store::AttemptCounter)>, StoreError> {
        self.inner.attempt_counters(keys).await
    }
    async fn group_members(&self, group: &str) -> Result<Vec<User>, StoreError> {
        self.inner.group_members(group).await
    }
    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let epoch = self.read_epoch().await?;
        if let Some(u) = hit(&self.users, &id, epoch) {
            return Ok(u);
        }
        let u = self.inner.user(id).await?;
        // A user not found yet may be created without advancing the epoch.
        if u.is_some() {
            keep(&self.users, id, 0, epoch, u.clone());
        }
        Ok(u)
    }
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.inner.user_by_email(email).await
    }
    async fn user_token_by_hash(&self, hash: &str) -> Result<Option<UserToken>, StoreError> {
        self.inner.user_token_by_hash(hash).await
    }
    async fn user_tokens(&self, user: UserId) -> Result<Vec<UserToken>, StoreError> {
        self.inner.user_tokens(user).await
    }
    async fn pending_requests(
        &self,
        agent: AgentId,
        user: Option<UserId>,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        self.inner.pending_requests(agent, user, now).await
    }
    async fn last_use_of_owned_agents(&self, owner: UserId) -> Result<Vec<(AgentId, OffsetDateTime)>, StoreError> {
        self.inner.last_use_of_owned_agents(owner).await
    }
    async fn agent_by_metadata_url(&self, url: &str) -> Result<Option<Agent>, StoreError> {
        self.inner.agent_by_metadata_url(url).await
    }

    async fn list_users(&self, q: &crate::store::UserListQuery) -> Result<Vec<User>, StoreError> {
        self.inner.list_users(q).await
    }

    async fn list_agents(
        &self,
        q: &crate::store::AgentListQuery,
    ) -> Result<Vec<crate::store::ListedAgent>, StoreError> {
        self.inner.list_agents(q).await
    }

    async fn agent_activity(
        &self,
        agent: AgentId,
        now: OffsetDateTime,
    ) -> Result<Option<crate::store::AgentActivity>, StoreError> {
        self.inner.agent_activity(agent, now).await
    }

    async fn list_resources(&self, q: &crate::store::ResourceListQuery) -> Result<Vec<Resource>, StoreError> {
        self.inner.list_resources(q).await
    }

    async fn agents_federated_by(&self, issuer: &str, subject: &str) -> Result<Vec<Agent>, StoreError> {
        let epoch = self.read_epoch().await?;
        let key = (issuer.to_owned(), subject.to_owned());
        if let Some(a) = hit(&self.federated, &key, epoch) {
            return Ok(a);
        }
        let found = self.inner.agents_federated_by(issuer, subject).await?;
        // Only what was found: an unverified token's subject could
        // otherwise fill the cache with misses.
        if !found.is_empty() {
            let key_heap = key.0.len() + key.1.len();
            keep(&self.federated, key, key_heap, epoch, found.clone());
        }
        Ok(found)
    }

    async fn agent(&self, id: AgentId) -> Result<Option<Agent>, StoreError> {
        let epoch = self.read_epoch().await?;
        if let Some(a) = hit(&self.agents, &id, epoch) {
            return Ok(a);
        }
        let a = self.inner.agent(id).await?;
        if a.is_some() {
            keep(&self.agents, id, 0, epoch, a.clone());
        }
        Ok(a)
    }
    async fn agent_children(&self, parent: AgentId) -> Result<Vec<Agent>, StoreError> {
        self.inner.agent_children(parent).await
    }
    async fn resource(&self, id: ResourceId) -> Result<Option<Resource>, StoreError> {
        if let Some(r) = self.resources.get(&id) {
            return Ok(Some(r.into_value()));
        }
        let r = self.inner.resource(id).await?;
        if let Some(r) = &r {
            self.resources.insert(id, Weighed::new::<ResourceId>(0, r.clone()));
        }
        Ok(r)
    }
    async fn resource_by_identifier(&self, identifier: &str) -> Result<Option<Resource>, StoreError> {
        self.inner.resource_by_identifier(identifier).await
    }
    async fn resources(&self) -> Result<Vec<Resource>, StoreError> {
        self.inner.resources().await
    }
    async fn current_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        self.inner.current_policy().await
    }
    async fn policy_versions(
        &self,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<crate::store::PolicyVersion>, StoreError> {
        self.inner.policy_versions(before, limit).await
    }
    async fn policy_version(
        &self,
        number: u64,
    ) -> Result<Option<(crate::store::PolicyVersion, StoredPolicy)>, StoreError> {
        self.inner.policy_version(number).await
    }
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.inner.signing_keys().await
    }
    async fn token(&self, jti: Jti) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.token(jti).await
    }
    async fn grant(&self, id: GrantId) -> Result<Option<Grant>, StoreError> {
        self.inner.grant(id).await
    }
    async fn grants(&self, q: &GrantQuery) -> Result<Vec<Grant>, StoreError> {
        self.inner.grants(q).await
    }
    async fn lapse_due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Grant>, StoreError> {
        self.inner.lapse_due(now, limit).await
    }
    async fn lapsed_grants(&self, q: &crate::store::LapsedQuery) -> Result<Vec<Grant>, StoreError> {
        self.inner.lapsed_grants(q).await
    }
    async fn backchannel(&self, agent: AgentId) -> Result<Option<mandate_model::delivery::Backchannel>, StoreError> {
        self.inner.backchannel(agent).await
    }
    async fn ciba_callback(
        &self,
        approval: ApprovalId,
    ) -> Result<Option<mandate_model::delivery::CibaCallback>, StoreError> {
        self.inner.ciba_callback(approval).await
    }
    async fn due_deliveries(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::delivery::Delivery>, StoreError> {
        self.inner.due_deliveries(now, limit).await
    }
    async fn stream(&self, id: mandate_model::StreamId) -> Result<Option<mandate_model::ssf::Stream>, StoreError> {
        self.inner.stream(id).await
    }
    async fn streams_of(
        &self,
        resource: mandate_model::ResourceId,
    ) -> Result<Vec<mandate_model::ssf::Stream>, StoreError> {
        self.inner.streams_of(resource).await
    }
    async fn queued_events(
        &self,
        stream: mandate_model::StreamId,
        limit: u32,
    ) -> Result<Vec<mandate_model::ssf::QueuedEvent>, StoreError> {
        self.inner.queued_events(stream, limit).await
    }
    async fn removed_subjects(&self, stream: mandate_model::StreamId) -> Result<Vec<String>, StoreError> {
        self.inner.removed_subjects(stream).await
    }
    async fn due_streams(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::ssf::Stream>, StoreError> {
        self.inner.due_streams(now, limit).await
    }
    async fn deliveries_about(&self, about: &str) -> Result<Vec<mandate_model::delivery::Delivery>, StoreError> {
        self.inner.deliveries_about(about).await
    }
    async fn approval(&self, id: ApprovalId) -> Result<Option<Approval>, StoreError> {
        self.inner.approval(id).await
    }
    async fn approvals(&self, q: &ApprovalQuery) -> Result<Vec<Approval>, StoreError> {
        self.inner.approvals(q).await
    }
    async fn refresh(&self, hash: &str) -> Result<Option<RefreshRecord>, StoreError> {
        self.inner.refresh(hash).await
    }
    async fn auth_code(&self, hash: &str) -> Result<Option<mandate_model::records::AuthCodeRecord>, StoreError> {
        self.inner.auth_code(hash).await
    }
    async fn scim_token(&self, id: &str) -> Result<Option<mandate_model::records::ScimToken>, StoreError> {
        self.inner.scim_token(id).await
    }
    async fn scim_tokens(&self) -> Result<Vec<mandate_model::records::ScimToken>, StoreError> {
        self.inner.scim_tokens().await
    }
    async fn scim_user(&self, user: UserId) -> Result<Option<mandate_model::records::ScimUserRecord>, StoreError> {
        self.inner.scim_user(user).await
    }
    async fn scim_users(&self, q: &crate::store::ScimUserQuery) -> Result<crate::store::Page<UserId>, StoreError> {
        self.inner.scim_users(q).await
    }
    async fn scim_group(
        &self,
        id: mandate_model::GroupId,
    ) -> Result<Option<mandate_model::records::ScimGroup>, StoreError> {
        self.inner.scim_group(id).await
    }
    async fn scim_groups(
        &self,
        q: &crate::store::ScimGroupQuery,
    ) -> Result<crate::store::Page<mandate_model::records::ScimGroup>, StoreError> {
        self.inner.scim_groups(q).await
    }
    async fn upstream_linked(&self, user: UserId) -> Result<bool, StoreError> {
        self.inner.upstream_linked(user).await
    }

    async fn upstream_link(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<mandate_model::records::UpstreamLink>, StoreError> {
        self.inner.upstream_link(issuer, subject).await
    }
    async fn session(&self, hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.inner.session(hash).await
    }
    async fn agents_owned_by(&self, owner: UserId) -> Result<Vec<Agent>, StoreError> {
        self.inner.agents_owned_by(owner).await
    }
    async fn revoked_status_indexes(&self, from: u64, to: u64) -> Result<Vec<u64>, StoreError> {
        self.inner.revoked_status_indexes(from, to).await
    }
    async fn status_indexes_reserved(&self) -> Result<u64, StoreError> {
        self.inner.status_indexes_reserved().await
    }
    async fn inventory_tally(
        &self,
        tally: crate::report::InventoryTally,
    ) -> Result<crate::report::InventoryTally, StoreError> {
        self.inner.inventory_tally(tally).await
    }
    async fn inventory_peaks(
        &self,
        by: crate::report::ReportBy,
        first: &str,
        last: &str,
        since_24h: OffsetDateTime,
        since_7d: OffsetDateTime,
    ) -> Result<Vec<crate::report::Peaks>, StoreError> {
        self.inner.inventory_peaks(by, first, last, since_24h, since_7d).await
    }
    async fn spawned_since(&self, parent: AgentId, since: OffsetDateTime) -> Result<u64, StoreError> {
        self.inner.spawned_since(parent, since).await
    }
    async fn spawn_counts(
        &self,
        parents: &[AgentId],
        since: OffsetDateTime,
    ) -> Result<Vec<(AgentId, u64)>, StoreError> {
        self.inner.spawn_counts(parents, since).await
    }
    async fn live_grants_of(&self, agents: &[AgentId], now: OffsetDateTime) -> Result<Vec<Grant>, StoreError> {
        self.inner.live_grants_of(agents, now).await
    }
    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, StoreError> {
        self.inner.users_by_ids(ids).await
    }
    async fn campaign(
        &self,
        id: mandate_model::CampaignId,
    ) -> Result<Option<mandate_model::review::Campaign>, StoreError> {
        self.inner.campaign(id).await
    }
    async fn campaigns(
        &self,
        query: &crate::store::CampaignQuery,
    ) -> Result<Vec<mandate_model::review::Campaign>, StoreError> {
        self.inner.campaigns(query).await
    }
    async fn campaigns_due(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::review::Campaign>, StoreError> {
        self.inner.campaigns_due(now, limit).await
    }
    async fn campaign_progress(
        &self,
        id: mandate_model::CampaignId,
    ) -> Result<crate::store::CampaignProgress, StoreError> {
        self.inner.campaign_progress(id).await
    }
    async fn review_item(
        &self,
        id: mandate_model::ReviewItemId,
    ) -> Result<Option<mandate_model::review::ReviewItem>, StoreError> {
        self.inner.review_item(id).await
    }
    async fn review_items(
        &self,
        query: &crate::store::ReviewItemQuery,
    ) -> Result<Vec<mandate_model::review::ReviewItem>, StoreError> {
        self.inner.review_items(query).await
    }
    async fn expired_agents(&self, at: OffsetDateTime) -> Result<Vec<Agent>, StoreError> {
        self.inner.expired_agents(at).await
    }
    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.inner.audit_head().await
    }
    async fn audit_lanes(&self) -> Result<Vec<crate::audit::AuditLane>, StoreError> {
        self.inner.audit_lanes().await
    }
    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<Event>, StoreError> {
        self.inner.audit_events(query).await
    }
    async fn audit_events_of(&self, batch: &crate::audit::AuditBatch) -> Result<Vec<Event>, StoreError> {
        self.inner.audit_events_of(batch).await
    }
    async fn audit_checkpoints(&self, after: u64, limit: u32) -> Result<Vec<Checkpoint>, StoreError> {
        self.inner.audit_checkpoints(after, limit).await
    }
    async fn last_audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.inner.last_audit_checkpoint().await
    }
}

#[cfg(test)]
mod tests {
    use mandate_model::records::FederatedCredential;

    use super::*;
    use crate::store::{Change, MemoryStore, Mutation};

    fn rule() -> FederatedCredential {
        FederatedCredential {
            issuer: "https://ci.example".into(),
            subject: Some("job".into()),
            subject_pattern: None,
            audiences: Vec::new(),
            claims: Default::default(),
            single_use: false,
        }
    }

    fn agent(owner: UserId, n: u128) -> Agent {
        Agent {
            id: AgentId::from_ulid(ulid::Ulid(n)),
            name: "job".into(),
            owner,
            kind: mandate_model::records::AgentKind::Persistent,
            parent: None,
            status: mandate_model::records::AgentStatus::Active,
            expires_at: None,
            description: None,
            scopes: None,
            jwks: None,
            redirect_uris: Vec::new(),
            created_at: crate::testing::start(),
            secret_hash: None,
            suspended_by: None,
            origin: mandate_model::records::AgentOrigin::Admin,
            metadata_url: None,
            public: false,
            federated_credentials: vec![rule()],
            limits: Default::default(),
        }
    }

    fn user() -> User {
        User {
            id: UserId::from_ulid(ulid::Ulid(1)),
            name: "CI".into(),
            email: "ci@example.com".into(),
            groups: Vec::new(),
            scim_groups: Vec::new(),
            attributes: Default::default(),
            status: mandate_model::records::UserStatus::Active,
            created_at: crate::testing::start(),
            password_hash: None,
        }
    }

    fn suspend(a: &Agent) -> Change {
        use mandate_model::records::AgentStatus;
        let (from, to, at) = (AgentStatus::Active, AgentStatus::Suspended, a.created_at);
        Change::new().with(Mutation::SetAgentStatus { id: a.id, from, to, at, by: None })
    }

    /// A store (as another node sees it), this node's cache over it, and an
    /// active agent.
    async fn with_agent() -> (Arc<dyn Store>, CachingStore, Agent) {
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let store = CachingStore::new(inner.clone());
        inner.commit(Change::new().with(Mutation::InsertUser(user()))).await.unwrap();
        let a = agent(user().id, 2);
        inner.commit(Change::new().with(Mutation::InsertAgent(a.clone()))).await.unwrap();
        (inner, store, a)
    }

    async fn status(store: &CachingStore, a: &Agent) -> mandate_model::records::AgentStatus {
        store.agent(a.id).await.unwrap().unwrap().status
    }

    /// A request reads the epoch once: its later cached reads see the store
    /// as of that read, even when another node moves the epoch meanwhile;
    /// the next request reads again and sees the change.
    #[tokio::test]
    async fn a_request_reads_the_epoch_once() {
        use mandate_model::records::AgentStatus;
        let (inner, store, a) = with_agent().await;
        let (before, during) = one_request(async {
            let before = status(&store, &a).await;
            // Another node suspends the agent while this request runs.
            inner.commit(suspend(&a)).await.unwrap();
            (before, status(&store, &a).await)
        })
        .await;
        assert_eq!((before, during), (AgentStatus::Active, AgentStatus::Active));
        assert_eq!(one_request(status(&store, &a)).await, AgentStatus::Suspended);
        // Outside a request, every cached read reads the epoch.
        let (from, to, at) = (AgentStatus::Suspended, AgentStatus::Active, a.created_at);
        inner.commit(Change::new().with(Mutation::SetAgentStatus { id: a.id, from, to, at, by: None })).await.unwrap();
        assert_eq!(status(&store, &a).await, AgentStatus::Active);
    }

    /// A request that commits reads the epoch again: it sees its own write.
    #[tokio::test]
    async fn a_request_sees_its_own_commit() {
        use mandate_model::records::AgentStatus;
        let (_, store, a) = with_agent().await;
        let after = one_request(async {
            assert_eq!(status(&store, &a).await, AgentStatus::Active);
            store.commit(suspend(&a)).await.unwrap();
            status(&store, &a).await
        })
        .await;
        assert_eq!(after, AgentStatus::Suspended);
    }

    fn note() -> Change {
        use mandate_audit::Event;
        let e = Event::new("token.issued", crate::audit::event_time(crate::testing::start()));
        Change::new().with(crate::AuditRecord::new(e).mutation())
    }

    /// A request decided at an epoch it did not read commits only while the
    /// store is still at it (decision 0042). Here another node suspends the
    /// agent after the request read it as active: the request's commit is
    /// refused, and so is anything it commits after; run again, reading,
    /// it sees the suspension.
    #[tokio::test]
    async fn an_optimistic_request_commits_only_at_its_epoch() {
        use mandate_model::records::AgentStatus;
        let (inner, store, a) = with_agent().await;
        let decided = inner.epoch().await.unwrap();
        let (seen, _, phase) = optimistic(decided, async {
            let seen = status(&store, &a).await;
            inner.commit(suspend(&a)).await.unwrap();
            assert_eq!(store.commit(note()).await, Err(StoreError::Moved));
            assert_eq!(store.commit(note()).await, Err(StoreError::Moved));
            assert_eq!(store.settle().await, Err(StoreError::Moved), "a stale request settled");
            seen
        })
        .await;
        assert_eq!((seen, phase), (AgentStatus::Active, Phase::Moved));
        assert_eq!(store.audit_head().await.unwrap(), None, "a stale request wrote its event");
        assert_eq!(one_request(status(&store, &a)).await, AgentStatus::Suspended);
    }

    /// A commit at the epoch decided confirms the request; what it reads
    /// after its commit, it reads afresh.
    #[tokio::test]
    async fn an_optimistic_request_that_commits_in_time_stands() {
        use mandate_model::records::AgentStatus;
        let (inner, store, a) = with_agent().await;
        let decided = inner.epoch().await.unwrap();
        let (after, _, phase) = optimistic(decided, async {
            assert_eq!(status(&store, &a).await, AgentStatus::Active);
            store.commit(note()).await.unwrap();
            inner.commit(suspend(&a)).await.unwrap();
            status(&store, &a).await
        })
        .await;
        assert_eq!((after, phase), (AgentStatus::Suspended, Phase::Confirmed));
    }

    /// A request that decides without committing settles: confirmed while
    /// the epoch stands, moved once it moved.
    #[tokio::test]
    async fn an_optimistic_request_settles_on_the_epoch_read_now() {
        let (inner, store, a) = with_agent().await;
        let decided = inner.epoch().await.unwrap();
        let (settled, _, phase) = optimistic(decided, store.settle()).await;
        assert_eq!((settled, phase), (Ok(()), Phase::Confirmed));
        let (settled, _, phase) = optimistic(decided, async {
            inner.commit(suspend(&a)).await.unwrap();
            store.settle().await
        })
        .await;
        assert_eq!((settled, phase), (Err(StoreError::Moved), Phase::Moved));
        assert!(!store.still_at(decided).await.unwrap());
        assert!(store.seen_epoch() > decided, "the epoch read to settle was not counted as seen");
    }

    /// A request run again after its optimistic run passed the rate limit
    /// is not counted twice; any other request is.
    #[tokio::test]
    async fn a_request_is_admitted_once_across_its_runs() {
        assert!(!admitted(), "outside a request");
        let (_, first, _) = optimistic(1, async { admit() }).await;
        assert!(first);
        assert!(again(first, async { admitted() }).await);
        let (_, refused, _) = optimistic(1, async {}).await;
        assert!(!again(refused, async { admitted() }).await, "a run refused before the limit admits the next");
        assert!(!one_request(async { admitted() }).await);
    }

    /// Without a change feed (a store one process uses alone) a request
    /// always reads.
    #[tokio::test]
    async fn without_a_feed_requests_read() {
        let (_, store, _) = with_agent().await;
        assert_eq!(store.decide_at(), None);
    }

    #[tokio::test]
    async fn a_second_agent_with_the_same_rule_is_seen_at_once() {
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let store = CachingStore::new(inner.clone());
        let user = user();
        inner.commit(Change::new().with(Mutation::InsertUser(user.clone()))).await.unwrap();
        let first = agent(user.id, 2);
        store.commit(Change::new().with(Mutation::InsertAgent(first.clone()))).await.unwrap();
        assert_eq!(store.agents_federated_by("https://ci.example", "job").await.unwrap().len(), 1);
        // Cached now; a second agent naming the same issuer and subject
        // must make the token ambiguous at once, on every node.
        inner.commit(Change::new().with(Mutation::InsertAgent(agent(user.id, 3)))).await.unwrap();
        assert_eq!(store.agents_federated_by("https://ci.example", "job").await.unwrap().len(), 2);
        // Removing a rule is seen at once too.
        let at = first.created_at;
        inner
            .commit(Change::new().with(Mutation::SetFederatedCredentials { id: first.id, credentials: vec![], at }))
            .await
            .unwrap();
        assert_eq!(store.agents_federated_by("https://ci.example", "job").await.unwrap().len(), 1);
    }
}
