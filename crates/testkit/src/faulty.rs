//! A store that fails on command, to prove that Mandate fails closed and
//! that no internal detail reaches a client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use async_trait::async_trait;
use mandate_audit::{Checkpoint, Event};
use mandate_core::audit::AuditQuery;
use mandate_core::store::{
    ApprovalQuery, Change, ChangeFeed, GrantQuery, Mutation, Receipt, Store, StoreError, StoredKey, StoredPolicy,
};
use mandate_model::records::{
    Agent, Approval, Grant, RefreshRecord, Resource, SessionRecord, TokenRecord, User, UserToken,
};
use mandate_model::{AgentId, ApprovalId, GrantId, Jti, ResourceId, UserId};
use time::OffsetDateTime;

/// The text every injected failure carries: a client must never see it.
pub const INJECTED: &str = "INJECTED-INTERNAL-DETAIL table secret_stuff at /var/lib/x";

/// What the store does wrong while set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    None = 0,
    /// Every read and commit fails as an unreachable database would.
    Unavailable = 1,
    /// Every read finds an undecodable row.
    Corrupt = 2,
    /// Signing keys come back with their wrapped private halves garbled.
    GarbledKeys = 3,
}

/// Wraps a store; while `fail_audit` is set, every change that appends an
/// audit event fails as an unavailable store would, writing nothing; while
/// a [`Fault`] is set, reads and commits fail as it says.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    pub fail_audit: AtomicBool,
    fault: AtomicU8,
    /// A change feed that says it listens and never hears anything, in
    /// place of the inner store's (see [`FaultyStore::deaf`]).
    deaf: Option<DeafFeed>,
}

/// The sender is kept so that the feed stays open, as a connection that
/// died without a word (half-open TCP) would look.
struct DeafFeed {
    _tx: tokio::sync::watch::Sender<ChangeFeed>,
    rx: tokio::sync::watch::Receiver<ChangeFeed>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self { inner, fail_audit: AtomicBool::new(false), fault: AtomicU8::new(0), deaf: None })
    }

    /// A store over `inner` (one that other nodes share) whose change feed
    /// claims to listen but never hears a notification: the node must
    /// still decide on what other nodes committed.
    pub fn deaf(inner: Arc<dyn Store>) -> Arc<Self> {
        let (tx, rx) = tokio::sync::watch::channel(ChangeFeed { epoch: 0, listening: true });
        Arc::new(Self {
            inner,
            fail_audit: AtomicBool::new(false),
            fault: AtomicU8::new(0),
            deaf: Some(DeafFeed { _tx: tx, rx }),
        })
    }

    pub fn set_failing(&self, failing: bool) {
        self.fail_audit.store(failing, Ordering::SeqCst);
    }

    pub fn set_fault(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    fn fault(&self) -> Fault {
        match self.fault.load(Ordering::SeqCst) {
            1 => Fault::Unavailable,
            2 => Fault::Corrupt,
            3 => Fault::GarbledKeys,
            _ => Fault::None,
        }
    }

    /// Whether a read may go ahead.
    fn gate(&self) -> Result<(), StoreError> {
        match self.fault() {
            Fault::Unavailable => Err(StoreError::Unavailable(INJECTED.into())),
            Fault::Corrupt => Err(StoreError::Corrupt(INJECTED.into())),
            Fault::None | Fault::GarbledKeys => Ok(()),
        }
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<ChangeFeed>> {
        match &self.deaf {
            Some(d) => Some(d.rx.clone()),
            None => self.inner.changes(),
        }
    }
    async fn commit(&self, change: Change) -> Result<Receipt, StoreError> {
        if self.fault() == Fault::Unavailable {
            return Err(StoreError::Unavailable(INJECTED.into()));
        }
        if self.fail_audit.load(Ordering::SeqCst) && change.mutations().any(|m| matches!(m, Mutation::AppendAudit(_))) {
            return Err(StoreError::Unavailable("injected fault: the audit trail cannot be written".into()));
        }
        self.inner.commit(change).await
    }
    async fn epoch(&self) -> Result<u64, StoreError> {
        self.gate()?;
        self.inner.epoch().await
    }
    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.gate()?;
        self.inner.setting(key).await
    }
    async fn attempt_counters(
        &self,
        keys: &[String],
    ) -> Result<Vec<(String, mandate_core::store::AttemptCounter)>, StoreError> {
        self.gate()?;
        self.inner.attempt_counters(keys).await
    }
    async fn group_members(&self, group: &str) -> Result<Vec<User>, StoreError> {
        self.gate()?;
        self.inner.group_members(group).await
    }
    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.gate()?;
        self.inner.user(id).await
    }
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.gate()?;
        self.inner.user_by_email(email).await
    }
    async fn user_token_by_hash(&self, hash: &str) -> Result<Option<UserToken>, StoreError> {
        self.gate()?;
        self.inner.user_token_by_hash(hash).await
    }
    async fn user_tokens(&self, user: UserId) -> Result<Vec<UserToken>, StoreError> {
        self.gate()?;
        self.inner.user_tokens(user).await
    }
    async fn pending_requests(
        &self,
        agent: AgentId,
        user: Option<UserId>,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        self.gate()?;
        self.inner.pending_requests(agent, user, now).await
    }
    async fn last_use_of_owned_agents(&self, owner: UserId) -> Result<Vec<(AgentId, OffsetDateTime)>, StoreError> {
        self.gate()?;
        self.inner.last_use_of_owned_agents(owner).await
    }
    async fn agent(&self, id: AgentId) -> Result<Option<Agent>, StoreError> {
        self.gate()?;
        self.inner.agent(id).await
    }
    async fn agent_by_metadata_url(&self, url: &str) -> Result<Option<Agent>, StoreError> {
        self.gate()?;
        self.inner.agent_by_metadata_url(url).await
    }
    async fn agents_federated_by(&self, issuer: &str, subject: &str) -> Result<Vec<Agent>, StoreError> {
        self.gate()?;
        self.inner.agents_federated_by(issuer, subject).await
    }
    async fn list_users(&self, q: &mandate_core::store::UserListQuery) -> Result<Vec<User>, StoreError> {
        self.gate()?;
        self.inner.list_users(q).await
    }
    async fn list_agents(
        &self,
        q: &mandate_core::store::AgentListQuery,
    ) -> Result<Vec<mandate_core::store::ListedAgent>, StoreError> {
        self.gate()?;
        self.inner.list_agents(q).await
    }
    async fn agent_activity(
        &self,
        agent: AgentId,
        now: OffsetDateTime,
    ) -> Result<Option<mandate_core::store::AgentActivity>, StoreError> {
        self.gate()?;
        self.inner.agent_activity(agent, now).await
    }
    async fn list_resources(&self, q: &mandate_core::store::ResourceListQuery) -> Result<Vec<Resource>, StoreError> {
        self.gate()?;
        self.inner.list_resources(q).await
    }
    async fn agent_children(&self, parent: AgentId) -> Result<Vec<Agent>, StoreError> {
        self.gate()?;
        self.inner.agent_children(parent).await
    }
    async fn resource(&self, id: ResourceId) -> Result<Option<Resource>, StoreError> {
        self.gate()?;
        self.inner.resource(id).await
    }
    async fn resource_by_identifier(&self, identifier: &str) -> Result<Option<Resource>, StoreError> {
        self.gate()?;
        self.inner.resource_by_identifier(identifier).await
    }
    async fn resources(&self) -> Result<Vec<Resource>, StoreError> {
        self.gate()?;
        self.inner.resources().await
    }
    async fn current_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        self.gate()?;
        self.inner.current_policy().await
    }
    async fn policy_versions(
        &self,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<mandate_core::store::PolicyVersion>, StoreError> {
        self.gate()?;
        self.inner.policy_versions(before, limit).await
    }
    async fn policy_version(
        &self,
        number: u64,
    ) -> Result<Option<(mandate_core::store::PolicyVersion, StoredPolicy)>, StoreError> {
        self.gate()?;
        self.inner.policy_version(number).await
    }
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.gate()?;
        let mut keys = self.inner.signing_keys().await?;
        if self.fault() == Fault::GarbledKeys {
            for k in &mut keys {
                for b in &mut k.wrapped_private {
                    *b ^= 0x5a;
                }
            }
        }
        Ok(keys)
    }
    async fn token(&self, jti: Jti) -> Result<Option<TokenRecord>, StoreError> {
        self.gate()?;
        self.inner.token(jti).await
    }
    async fn grant(&self, id: GrantId) -> Result<Option<Grant>, StoreError> {
        self.gate()?;
        self.inner.grant(id).await
    }
    async fn grants(&self, q: &GrantQuery) -> Result<Vec<Grant>, StoreError> {
        self.gate()?;
        self.inner.grants(q).await
    }

    async fn lapse_due(&self, now: time::OffsetDateTime, limit: u32) -> Result<Vec<Grant>, StoreError> {
        self.gate()?;
        self.inner.lapse_due(now, limit).await
    }

    async fn lapsed_grants(&self, q: &mandate_core::store::LapsedQuery) -> Result<Vec<Grant>, StoreError> {
        self.gate()?;
        self.inner.lapsed_grants(q).await
    }
    async fn backchannel(&self, agent: AgentId) -> Result<Option<mandate_model::delivery::Backchannel>, StoreError> {
        self.gate()?;
        self.inner.backchannel(agent).await
    }
    async fn ciba_callback(
        &self,
        approval: ApprovalId,
    ) -> Result<Option<mandate_model::delivery::CibaCallback>, StoreError> {
        self.gate()?;
        self.inner.ciba_callback(approval).await
    }
    async fn due_deliveries(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::delivery::Delivery>, StoreError> {
        self.gate()?;
        self.inner.due_deliveries(now, limit).await
    }
    async fn stream(&self, id: mandate_model::StreamId) -> Result<Option<mandate_model::ssf::Stream>, StoreError> {
        self.gate()?;
        self.inner.stream(id).await
    }
    async fn streams_of(
        &self,
        resource: mandate_model::ResourceId,
    ) -> Result<Vec<mandate_model::ssf::Stream>, StoreError> {
        self.gate()?;
        self.inner.streams_of(resource).await
    }
    async fn queued_events(
        &self,
        stream: mandate_model::StreamId,
        limit: u32,
    ) -> Result<Vec<mandate_model::ssf::QueuedEvent>, StoreError> {
        self.gate()?;
        self.inner.queued_events(stream, limit).await
    }
    async fn removed_subjects(&self, stream: mandate_model::StreamId) -> Result<Vec<String>, StoreError> {
        self.gate()?;
        self.inner.removed_subjects(stream).await
    }
    async fn due_streams(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::ssf::Stream>, StoreError> {
        self.gate()?;
        self.inner.due_streams(now, limit).await
    }
    async fn deliveries_about(&self, about: &str) -> Result<Vec<mandate_model::delivery::Delivery>, StoreError> {
        self.gate()?;
        self.inner.deliveries_about(about).await
    }
    async fn approval(&self, id: ApprovalId) -> Result<Option<Approval>, StoreError> {
        self.gate()?;
        self.inner.approval(id).await
    }
    async fn approvals(&self, q: &ApprovalQuery) -> Result<Vec<Approval>, StoreError> {
        self.gate()?;
        self.inner.approvals(q).await
    }
    async fn refresh(&self, hash: &str) -> Result<Option<RefreshRecord>, StoreError> {
        self.gate()?;
        self.inner.refresh(hash).await
    }
    async fn auth_code(&self, hash: &str) -> Result<Option<mandate_model::records::AuthCodeRecord>, StoreError> {
        self.gate()?;
        self.inner.auth_code(hash).await
    }
    async fn scim_token(&self, id: &str) -> Result<Option<mandate_model::records::ScimToken>, StoreError> {
        self.gate()?;
        self.inner.scim_token(id).await
    }
    async fn scim_tokens(&self) -> Result<Vec<mandate_model::records::ScimToken>, StoreError> {
        self.gate()?;
        self.inner.scim_tokens().await
    }
    async fn scim_user(&self, user: UserId) -> Result<Option<mandate_model::records::ScimUserRecord>, StoreError> {
        self.gate()?;
        self.inner.scim_user(user).await
    }
    async fn scim_users(
        &self,
        q: &mandate_core::store::ScimUserQuery,
    ) -> Result<mandate_core::store::Page<UserId>, StoreError> {
        self.gate()?;
        self.inner.scim_users(q).await
    }
    async fn scim_group(
        &self,
        id: mandate_model::GroupId,
    ) -> Result<Option<mandate_model::records::ScimGroup>, StoreError> {
        self.gate()?;
        self.inner.scim_group(id).await
    }
    async fn scim_groups(
        &self,
        q: &mandate_core::store::ScimGroupQuery,
    ) -> Result<mandate_core::store::Page<mandate_model::records::ScimGroup>, StoreError> {
        self.gate()?;
        self.inner.scim_groups(q).await
    }
    async fn upstream_linked(&self, user: UserId) -> Result<bool, StoreError> {
        self.gate()?;
        self.inner.upstream_linked(user).await
    }

    async fn upstream_link(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<mandate_model::records::UpstreamLink>, StoreError> {
        self.gate()?;
        self.inner.upstream_link(issuer, subject).await
    }
    async fn session(&self, hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.gate()?;
        self.inner.session(hash).await
    }
    async fn agents_owned_by(&self, owner: UserId) -> Result<Vec<Agent>, StoreError> {
        self.gate()?;
        self.inner.agents_owned_by(owner).await
    }
    async fn revoked_status_indexes(&self, from: u64, to: u64) -> Result<Vec<u64>, StoreError> {
        self.gate()?;
        self.inner.revoked_status_indexes(from, to).await
    }
    async fn status_indexes_reserved(&self) -> Result<u64, StoreError> {
        self.gate()?;
        self.inner.status_indexes_reserved().await
    }
    async fn inventory_tally(
        &self,
        tally: mandate_core::report::InventoryTally,
    ) -> Result<mandate_core::report::InventoryTally, StoreError> {
        self.gate()?;
        self.inner.inventory_tally(tally).await
    }
    async fn inventory_peaks(
        &self,
        by: mandate_core::report::ReportBy,
        first: &str,
        last: &str,
        since_24h: OffsetDateTime,
        since_7d: OffsetDateTime,
    ) -> Result<Vec<mandate_core::report::Peaks>, StoreError> {
        self.gate()?;
        self.inner.inventory_peaks(by, first, last, since_24h, since_7d).await
    }
    async fn spawned_since(&self, parent: AgentId, since: OffsetDateTime) -> Result<u64, StoreError> {
        self.gate()?;
        self.inner.spawned_since(parent, since).await
    }
    async fn spawn_counts(
        &self,
        parents: &[AgentId],
        since: OffsetDateTime,
    ) -> Result<Vec<(AgentId, u64)>, StoreError> {
        self.gate()?;
        self.inner.spawn_counts(parents, since).await
    }
    async fn live_grants_of(&self, agents: &[AgentId], now: OffsetDateTime) -> Result<Vec<Grant>, StoreError> {
        self.gate()?;
        self.inner.live_grants_of(agents, now).await
    }
    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, StoreError> {
        self.gate()?;
        self.inner.users_by_ids(ids).await
    }
    async fn campaign(
        &self,
        id: mandate_model::CampaignId,
    ) -> Result<Option<mandate_model::review::Campaign>, StoreError> {
        self.gate()?;
        self.inner.campaign(id).await
    }
    async fn campaigns(
        &self,
        query: &mandate_core::store::CampaignQuery,
    ) -> Result<Vec<mandate_model::review::Campaign>, StoreError> {
        self.gate()?;
        self.inner.campaigns(query).await
    }
    async fn campaigns_due(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::review::Campaign>, StoreError> {
        self.gate()?;
        self.inner.campaigns_due(now, limit).await
    }
    async fn campaign_progress(
        &self,
        id: mandate_model::CampaignId,
    ) -> Result<mandate_core::store::CampaignProgress, StoreError> {
        self.gate()?;
        self.inner.campaign_progress(id).await
    }
    async fn review_item(
        &self,
        id: mandate_model::ReviewItemId,
    ) -> Result<Option<mandate_model::review::ReviewItem>, StoreError> {
        self.gate()?;
        self.inner.review_item(id).await
    }
    async fn review_items(
        &self,
        query: &mandate_core::store::ReviewItemQuery,
    ) -> Result<Vec<mandate_model::review::ReviewItem>, StoreError> {
        self.gate()?;
        self.inner.review_items(query).await
    }
    async fn expired_agents(&self, at: OffsetDateTime) -> Result<Vec<Agent>, StoreError> {
        self.gate()?;
        self.inner.expired_agents(at).await
    }
    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.gate()?;
        self.inner.audit_head().await
    }
    async fn audit_lanes(&self) -> Result<Vec<mandate_core::audit::AuditLane>, StoreError> {
        self.gate()?;
        self.inner.audit_lanes().await
    }
    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<Event>, StoreError> {
        self.gate()?;
        self.inner.audit_events(query).await
    }
    async fn audit_events_of(&self, batch: &mandate_core::audit::AuditBatch) -> Result<Vec<Event>, StoreError> {
        self.gate()?;
        self.inner.audit_events_of(batch).await
    }
    async fn audit_checkpoints(&self, after: u64, limit: u32) -> Result<Vec<Checkpoint>, StoreError> {
        self.gate()?;
        self.inner.audit_checkpoints(after, limit).await
    }
    async fn last_audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.gate()?;
        self.inner.last_audit_checkpoint().await
    }
}

/// A random source that fails on command, as a broken system source would.
#[derive(Debug, Default)]
pub struct FlakyRandom {
    failing: AtomicBool,
}

impl FlakyRandom {
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

impl mandate_core::Random for FlakyRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), mandate_core::ports::RandomError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(mandate_core::ports::RandomError);
        }
        mandate_core::SystemRandom.fill(buf)
    }
}
