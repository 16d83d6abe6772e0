//! A store that fails on command, to prove that Mandate fails closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use mandate_audit::{Checkpoint, Event};
use mandate_core::audit::AuditQuery;
use mandate_core::store::{ApprovalQuery, Change, GrantQuery, Mutation, Store, StoreError, StoredKey, StoredPolicy};
use mandate_model::records::{Agent, Approval, Grant, RefreshRecord, Resource, SessionRecord, TokenRecord, User};
use mandate_model::{AgentId, ApprovalId, GrantId, Jti, ResourceId, UserId};
use time::OffsetDateTime;

/// Wraps a store; while `fail_audit` is set, every change that appends an
/// audit event fails as an unavailable store would, writing nothing.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    pub fail_audit: AtomicBool,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self { inner, fail_audit: AtomicBool::new(false) })
    }

    pub fn set_failing(&self, failing: bool) {
        self.fail_audit.store(failing, Ordering::SeqCst);
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn commit(&self, change: Change) -> Result<Vec<u64>, StoreError> {
        if self.fail_audit.load(Ordering::SeqCst) && change.0.iter().any(|m| matches!(m, Mutation::AppendAudit(_))) {
            return Err(StoreError::Unavailable("injected fault: the audit trail cannot be written".into()));
        }
        self.inner.commit(change).await
    }
    async fn epoch(&self) -> Result<u64, StoreError> {
        self.inner.epoch().await
    }
    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.setting(key).await
    }
    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.inner.user(id).await
    }
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.inner.user_by_email(email).await
    }
    async fn user_by_token_hash(&self, hash: &str) -> Result<Option<UserId>, StoreError> {
        self.inner.user_by_token_hash(hash).await
    }
    async fn agent(&self, id: AgentId) -> Result<Option<Agent>, StoreError> {
        self.inner.agent(id).await
    }
    async fn agent_children(&self, parent: AgentId) -> Result<Vec<Agent>, StoreError> {
        self.inner.agent_children(parent).await
    }
    async fn resource(&self, id: ResourceId) -> Result<Option<Resource>, StoreError> {
        self.inner.resource(id).await
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
    async fn expired_agents(&self, at: OffsetDateTime) -> Result<Vec<Agent>, StoreError> {
        self.inner.expired_agents(at).await
    }
    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.inner.audit_head().await
    }
    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<Event>, StoreError> {
        self.inner.audit_events(query).await
    }
    async fn audit_checkpoints(&self, after: u64, limit: u32) -> Result<Vec<Checkpoint>, StoreError> {
        self.inner.audit_checkpoints(after, limit).await
    }
    async fn last_audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.inner.last_audit_checkpoint().await
    }
}
