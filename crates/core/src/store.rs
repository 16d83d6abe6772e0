//! The storage port. Reads are individual queries; every write is a
//! [`Change`]: a list of mutations applied atomically, so that a token, the
//! replay-store entry of the assertion that obtained it and the audit event
//! recording both land together or not at all. Stores may batch concurrent
//! changes into one durable transaction (group commit).

use async_trait::async_trait;
use mandate_audit::{Checkpoint, Event};
use mandate_model::records::{
    Agent, AgentStatus, Approval, ApprovalStatus, AuthCodeRecord, ClientId, Grant, RefreshRecord, Resource,
    SessionRecord, SuspendedBy, TokenRecord, User, UserToken,
};
use mandate_model::{AgentId, ApprovalId, GrantId, Jti, UserId, UserTokenId};
use thiserror::Error;
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// A uniqueness or precondition failed; nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A client-assertion `jti` was already used.
    #[error("replayed jti")]
    Replay,
    /// A DPoP proof `jti` was already used.
    #[error("replayed DPoP proof")]
    DpopReplay,
    #[error("not found: {0}")]
    NotFound(String),
    /// The store cannot answer now; callers fail closed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// What a stored key signs. Keys are never shared between uses (RFC 8725
/// §3.12 in spirit): a checkpoint key cannot mint tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Access tokens, published in `/jwks.json`.
    Token,
    /// Audit checkpoints, published at `/v1/audit/keys`.
    Audit,
}

impl KeyUse {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyUse::Token => "token",
            KeyUse::Audit => "audit",
        }
    }

    pub fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "token" => Ok(KeyUse::Token),
            "audit" => Ok(KeyUse::Audit),
            other => Err(StoreError::Corrupt(format!("key use {other}"))),
        }
    }
}

/// A signing key as stored: the private half wrapped by the master key.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    pub purpose: KeyUse,
    pub wrapped_private: Vec<u8>,
    /// The public JWK as JSON text, so that verifiers need no master key.
    pub public_jwk: Option<String>,
    pub created_at: OffsetDateTime,
    pub retired_at: Option<OffsetDateTime>,
}

/// A policy set as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    pub version: String,
    pub text: String,
    pub created_at: OffsetDateTime,
}

/// One write. Conditional mutations fail the whole [`Change`].
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Sets a setting unless it exists (affected: 0 or 1).
    PutSettingIfAbsent {
        key: String,
        value: String,
    },
    /// Fails with `Conflict` if the email or id exists.
    InsertUser(User),
    /// Replaces groups, attributes and status.
    UpdateUser(User),
    /// A person's API token, by the hash of its secret.
    InsertUserToken {
        token: UserToken,
        hash: String,
    },
    /// Revokes one of `user`'s API tokens (affected: 0 or 1).
    RevokeUserToken {
        id: UserTokenId,
        user: UserId,
        at: OffsetDateTime,
    },
    /// Fails with `Conflict` if the id exists.
    InsertAgent(Agent),
    /// Fails with `Conflict` unless the agent's status is `from`. `by` is
    /// the level making the change (`None`: Mandate itself); it is kept
    /// while the agent is suspended (who may resume it), cleared by any
    /// other status, and an owner's resume of an agent the admin suspended
    /// fails with `Conflict` in the same statement.
    SetAgentStatus {
        id: AgentId,
        from: AgentStatus,
        to: AgentStatus,
        at: OffsetDateTime,
        by: Option<SuspendedBy>,
    },
    /// Revokes every live token the agent holds, and every token exchanged
    /// from them, transitively: every token whose chain contains the agent
    /// (affected: how many).
    RevokeTokensOfAgent {
        agent: AgentId,
        at: OffsetDateTime,
    },
    /// Revokes every live token whose subject is `subject`.
    RevokeTokensOfSubject {
        subject: String,
        at: OffsetDateTime,
    },
    /// Revokes every live token held by an agent `owner` is accountable for,
    /// and their descendants.
    RevokeTokensOfOwnedAgents {
        owner: UserId,
        at: OffsetDateTime,
    },
    /// Fails with `Conflict` if the identifier or id exists.
    InsertResource(Resource),
    /// Records a new policy set version and makes it current.
    PutPolicy(StoredPolicy),
    InsertSigningKey(StoredKey),
    /// Marks every unretired key of `purpose` but `keep` retired.
    RetireSigningKeys {
        purpose: KeyUse,
        keep: String,
        at: OffsetDateTime,
    },
    /// Fails with `Replay` if this client already used this `jti`.
    ConsumeAssertionJti {
        client: ClientId,
        jti: String,
        expires_at: OffsetDateTime,
    },
    /// Fails with `DpopReplay` if a proof with this replay key was seen.
    ConsumeDpopJti {
        key: String,
        expires_at: OffsetDateTime,
    },
    /// Fails with `Conflict` if the hash exists.
    InsertSession(SessionRecord),
    InsertAuthCode(AuthCodeRecord),
    /// Marks an unused code used; fails with `Conflict` if it was used.
    UseAuthCode {
        hash: String,
        at: OffsetDateTime,
    },
    /// Ends a session (affected: 0 or 1).
    RevokeSession {
        hash: String,
        at: OffsetDateTime,
    },
    /// Reserves `count` status-list indexes, never handed out before
    /// (affected: the first of them).
    ReserveStatusIndexes {
        count: u64,
    },
    /// Fails with `Conflict` when the token has a parent that is revoked or
    /// missing, or a grant that is not active: checked under a lock on those
    /// rows, so that a concurrent revocation either sees the new token or
    /// makes this insert fail (never a live child of a revoked parent).
    InsertToken(TokenRecord),
    /// Revokes one token and every token exchanged from it, transitively
    /// (affected: how many).
    RevokeToken {
        jti: Jti,
        at: OffsetDateTime,
    },
    /// Fails with `Conflict` if the id exists.
    InsertGrant(Grant),
    /// Marks an active grant revoked (affected: 0 or 1).
    RevokeGrant {
        id: GrantId,
        at: OffsetDateTime,
    },
    /// Revokes every live token issued under the grant, its exchanged
    /// descendants included (affected: how many).
    RevokeTokensOfGrant {
        grant: GrantId,
        at: OffsetDateTime,
    },
    /// Revokes every active grant the user gave (affected: how many).
    RevokeGrantsOfUser {
        user: UserId,
        at: OffsetDateTime,
    },
    /// Revokes every active grant given to the agent (affected: how many).
    RevokeGrantsOfAgent {
        agent: AgentId,
        at: OffsetDateTime,
    },
    /// Records the grant's last use.
    TouchGrant {
        id: GrantId,
        at: OffsetDateTime,
    },
    /// Fails with `Conflict` if the id exists.
    InsertApproval(Approval),
    /// Decides a pending, unexpired approval; fails with `Conflict`
    /// otherwise (it was decided already, or it expired).
    DecideApproval {
        id: ApprovalId,
        to: ApprovalStatus,
        by: String,
        grant: Option<GrantId>,
        at: OffsetDateTime,
    },
    /// Hands out an approved CIBA request once: fails with `Conflict` unless
    /// it is approved and unexpired.
    ConsumeApproval {
        id: ApprovalId,
        at: OffsetDateTime,
    },
    /// Records a poll (CIBA `slow_down`).
    PollApproval {
        id: ApprovalId,
        at: OffsetDateTime,
    },
    InsertRefresh(RefreshRecord),
    /// Rotates a refresh token: fails with `Conflict` unless it is unused
    /// and unrevoked (compare-and-swap, so concurrent reuse has one winner).
    UseRefresh {
        hash: String,
        at: OffsetDateTime,
    },
    /// Revokes every refresh token of a family (affected: how many).
    RevokeRefreshFamily {
        family: String,
        at: OffsetDateTime,
    },
    /// Revokes every live access token a refresh family issued, and their
    /// descendants (affected: how many).
    RevokeTokensOfFamily {
        family: String,
        at: OffsetDateTime,
    },
    /// Forgets replay entries whose assertions have expired.
    PurgeExpiredJtis {
        before: OffsetDateTime,
    },
    /// Appends an event to the audit chain: the store numbers, links and
    /// hashes it while it holds the chain's head ("affected": the event's
    /// `seq`).
    AppendAudit(Box<crate::audit::AuditRecord>),
    /// Keeps a signed checkpoint; one per seq, a second is ignored
    /// (affected: 0 or 1).
    InsertCheckpoint(Checkpoint),
}

/// Which grants to list. Every filter given must match; `owner` matches
/// grants whose agent that user owns, `user_or_owner` grants the user gave
/// or whose agent they own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantQuery {
    pub user: Option<UserId>,
    pub agent: Option<AgentId>,
    pub user_or_owner: Option<UserId>,
    pub limit: u32,
}

/// Which approvals to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalQuery {
    pub approver: Option<UserId>,
    pub status: Option<ApprovalStatus>,
    /// Only action approvals with this binding.
    pub binding: Option<String>,
    /// Only approvals older than this one (paging, newest first).
    pub before: Option<ApprovalId>,
    pub limit: u32,
}

impl Mutation {
    /// Whether this mutation can make a live token, grant, agent, user or
    /// approval decision read differently: stores advance their
    /// [`Store::epoch`] when they commit one, so that caches of liveness and
    /// decisions are dropped at once.
    pub fn invalidates(&self) -> bool {
        matches!(
            self,
            Mutation::UpdateUser(_)
                | Mutation::RevokeUserToken { .. }
                | Mutation::SetAgentStatus { .. }
                | Mutation::RevokeTokensOfAgent { .. }
                | Mutation::RevokeTokensOfSubject { .. }
                | Mutation::RevokeTokensOfOwnedAgents { .. }
                | Mutation::RevokeToken { .. }
                | Mutation::RevokeGrant { .. }
                | Mutation::RevokeTokensOfGrant { .. }
                | Mutation::RevokeGrantsOfUser { .. }
                | Mutation::RevokeGrantsOfAgent { .. }
                | Mutation::DecideApproval { .. }
                | Mutation::RevokeTokensOfFamily { .. }
        )
    }
}

/// Mutations applied atomically, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Change(pub Vec<Mutation>);

impl Change {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn with(mut self, m: Mutation) -> Self {
        self.0.push(m);
        self
    }

    pub fn push(&mut self, m: Mutation) {
        self.0.push(m);
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies `change` atomically and durably; returns rows affected per mutation.
    async fn commit(&self, change: Change) -> Result<Vec<u64>, StoreError>;

    /// A number that changes whenever a change holding a mutation that
    /// [`Mutation::invalidates`] commits, on any node, before that change
    /// is acknowledged; reads made after reading a new epoch see the change.
    /// Caches keyed by it are never stale.
    async fn epoch(&self) -> Result<u64, StoreError>;

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError>;

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    /// A person's API token by the hash of its secret, live or not.
    async fn user_token_by_hash(&self, hash: &str) -> Result<Option<UserToken>, StoreError>;
    /// A person's API tokens, newest first.
    async fn user_tokens(&self, user: UserId) -> Result<Vec<UserToken>, StoreError>;

    async fn agent(&self, id: AgentId) -> Result<Option<Agent>, StoreError>;
    /// Agents whose `parent` is `parent`.
    async fn agent_children(&self, parent: AgentId) -> Result<Vec<Agent>, StoreError>;

    async fn resource(&self, id: mandate_model::ResourceId) -> Result<Option<Resource>, StoreError>;
    async fn resource_by_identifier(&self, identifier: &str) -> Result<Option<Resource>, StoreError>;
    async fn resources(&self) -> Result<Vec<Resource>, StoreError>;

    async fn current_policy(&self) -> Result<Option<StoredPolicy>, StoreError>;
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError>;

    async fn token(&self, jti: Jti) -> Result<Option<TokenRecord>, StoreError>;

    async fn grant(&self, id: GrantId) -> Result<Option<Grant>, StoreError>;
    /// Grants matching `query`, newest first, at most `query.limit`.
    async fn grants(&self, query: &GrantQuery) -> Result<Vec<Grant>, StoreError>;
    async fn approval(&self, id: ApprovalId) -> Result<Option<Approval>, StoreError>;
    /// Approvals matching `query`, newest first, at most `query.limit`.
    async fn approvals(&self, query: &ApprovalQuery) -> Result<Vec<Approval>, StoreError>;
    /// How many approvals (CIBA requests and action approvals) of `agent`
    /// (for `user`, when given) are pending and unexpired at `now`.
    async fn pending_requests(
        &self,
        agent: AgentId,
        user: Option<UserId>,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError>;
    async fn refresh(&self, hash: &str) -> Result<Option<RefreshRecord>, StoreError>;

    /// An authorization code by the hash of the code.
    async fn auth_code(&self, hash: &str) -> Result<Option<AuthCodeRecord>, StoreError>;
    /// A sign-in session by the hash of its secret.
    async fn session(&self, hash: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// The agents `owner` is accountable for, oldest first.
    async fn agents_owned_by(&self, owner: UserId) -> Result<Vec<Agent>, StoreError>;
    /// The last use of any grant held by each agent `owner` owns (agents
    /// whose grants were never used are left out).
    async fn last_use_of_owned_agents(&self, owner: UserId) -> Result<Vec<(AgentId, OffsetDateTime)>, StoreError>;

    /// The status indexes in `from..to` of revoked tokens, in any order.
    async fn revoked_status_indexes(&self, from: u64, to: u64) -> Result<Vec<u64>, StoreError>;
    /// How many status indexes have been reserved so far.
    async fn status_indexes_reserved(&self) -> Result<u64, StoreError>;

    /// Ephemeral agents not yet retired whose expiry is at or before `at`.
    async fn expired_agents(&self, at: OffsetDateTime) -> Result<Vec<Agent>, StoreError>;

    /// The last event's `seq` and `hash`, or `None` for an empty trail.
    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// Events matching `query`, in `seq` order, after `query.after`, at most
    /// `query.limit`.
    async fn audit_events(&self, query: &crate::audit::AuditQuery) -> Result<Vec<Event>, StoreError>;
    /// Checkpoints with `seq` greater than `after`, in order.
    async fn audit_checkpoints(&self, after: u64, limit: u32) -> Result<Vec<Checkpoint>, StoreError>;
    async fn last_audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError>;
}

/// Encoding of record fields shared by the SQL stores, so that both write
/// the same representation: times as Unix nanoseconds, lists and maps as
/// JSON text.
pub mod codec {
    use std::collections::BTreeMap;
    use std::str::FromStr;

    use mandate_model::records::{
        Agent, AgentKind, AgentStatus, Approval, ApprovalStatus, ApprovalSubject, AuthCodeRecord, ClientId, Grant,
        GrantStatus, RefreshRecord, Resource, SessionRecord, SuspendedBy, TokenRecord, User, UserStatus, UserToken,
    };
    use mandate_model::{AgentId, ApprovalId, GrantId, Jti, ResourceId, ScopeSet, UserId, UserTokenId};
    use time::OffsetDateTime;

    use super::StoreError;

    /// A time as stored: Unix nanoseconds, which hold 1677 to 2262. A time
    /// outside that is refused, never clamped.
    pub fn ts(t: OffsetDateTime) -> Result<i64, StoreError> {
        i64::try_from(t.unix_timestamp_nanos())
            .map_err(|_| StoreError::Unavailable(format!("the time {t} is outside what the store can hold")))
    }

    pub fn from_ts(n: i64) -> Result<OffsetDateTime, StoreError> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(n)).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    pub fn opt_ts(n: Option<i64>) -> Result<Option<OffsetDateTime>, StoreError> {
        n.map(from_ts).transpose()
    }

    pub fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
        serde_json::to_string(v).map_err(|e| StoreError::Unavailable(format!("a value cannot be encoded: {e}")))
    }

    pub fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
        serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    pub fn parse<T: FromStr>(s: &str) -> Result<T, StoreError>
    where
        T::Err: std::fmt::Display,
    {
        s.parse().map_err(|e: T::Err| StoreError::Corrupt(e.to_string()))
    }

    pub fn user_status(s: UserStatus) -> &'static str {
        match s {
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
        }
    }

    pub fn agent_kind(k: AgentKind) -> &'static str {
        match k {
            AgentKind::Persistent => "persistent",
            AgentKind::Ephemeral => "ephemeral",
        }
    }

    /// A users row, as the stores read it.
    pub struct UserRow {
        pub id: String,
        pub name: String,
        pub email: String,
        pub groups: String,
        pub attributes: String,
        pub status: String,
        pub password_hash: Option<String>,
        pub created_at: i64,
    }

    impl TryFrom<UserRow> for User {
        type Error = StoreError;
        fn try_from(r: UserRow) -> Result<Self, StoreError> {
            Ok(User {
                id: parse::<UserId>(&r.id)?,
                name: r.name,
                email: r.email,
                groups: from_json(&r.groups)?,
                attributes: from_json::<BTreeMap<String, String>>(&r.attributes)?,
                status: match r.status.as_str() {
                    "active" => UserStatus::Active,
                    "disabled" => UserStatus::Disabled,
                    other => return Err(StoreError::Corrupt(format!("user status {other}"))),
                },
                created_at: from_ts(r.created_at)?,
                password_hash: r.password_hash,
            })
        }
    }

    pub struct AgentRow {
        pub id: String,
        pub name: String,
        pub owner: String,
        pub kind: String,
        pub parent: Option<String>,
        pub status: String,
        pub expires_at: Option<i64>,
        pub description: Option<String>,
        pub scopes: Option<String>,
        pub jwks: Option<String>,
        pub redirect_uris: String,
        pub secret_hash: Option<String>,
        pub created_at: i64,
        pub suspended_by: Option<String>,
    }

    impl TryFrom<AgentRow> for Agent {
        type Error = StoreError;
        fn try_from(r: AgentRow) -> Result<Self, StoreError> {
            Ok(Agent {
                id: parse::<AgentId>(&r.id)?,
                name: r.name,
                owner: parse::<UserId>(&r.owner)?,
                kind: match r.kind.as_str() {
                    "persistent" => AgentKind::Persistent,
                    "ephemeral" => AgentKind::Ephemeral,
                    other => return Err(StoreError::Corrupt(format!("agent kind {other}"))),
                },
                parent: r.parent.as_deref().map(parse::<AgentId>).transpose()?,
                status: parse::<AgentStatus>(&r.status)?,
                expires_at: opt_ts(r.expires_at)?,
                description: r.description,
                scopes: r.scopes.as_deref().map(from_json::<ScopeSet>).transpose()?,
                jwks: r.jwks.as_deref().map(from_json::<serde_json::Value>).transpose()?,
                redirect_uris: from_json(&r.redirect_uris)?,
                created_at: from_ts(r.created_at)?,
                secret_hash: r.secret_hash,
                suspended_by: r.suspended_by.as_deref().map(parse::<SuspendedBy>).transpose()?,
            })
        }
    }

    /// A user_tokens row, as the stores read it.
    pub struct UserTokenRow {
        pub id: String,
        pub user_id: String,
        pub created_at: i64,
        pub expires_at: i64,
        pub revoked_at: Option<i64>,
    }

    impl TryFrom<UserTokenRow> for UserToken {
        type Error = StoreError;
        fn try_from(r: UserTokenRow) -> Result<Self, StoreError> {
            Ok(UserToken {
                id: parse::<UserTokenId>(&r.id)?,
                user: parse::<UserId>(&r.user_id)?,
                created_at: from_ts(r.created_at)?,
                expires_at: from_ts(r.expires_at)?,
                revoked_at: opt_ts(r.revoked_at)?,
            })
        }
    }

    pub struct ResourceRow {
        pub id: String,
        pub identifier: String,
        pub name: String,
        pub scopes: String,
        pub jwks: Option<String>,
        pub created_at: i64,
    }

    impl TryFrom<ResourceRow> for Resource {
        type Error = StoreError;
        fn try_from(r: ResourceRow) -> Result<Self, StoreError> {
            Ok(Resource {
                id: parse::<ResourceId>(&r.id)?,
                identifier: r.identifier,
                name: r.name,
                scopes: from_json(&r.scopes)?,
                jwks: r.jwks.as_deref().map(from_json::<serde_json::Value>).transpose()?,
                created_at: from_ts(r.created_at)?,
            })
        }
    }

    /// An audit_events row, as the stores read it.
    pub struct EventRow {
        pub seq: i64,
        pub time: String,
        pub kind: String,
        pub decision: Option<String>,
        pub subject: Option<String>,
        pub actor: Option<String>,
        pub chain: String,
        pub client_id: Option<String>,
        pub action: Option<String>,
        pub resource: Option<String>,
        pub scope: Option<String>,
        pub jti: Option<String>,
        pub grant_id: Option<String>,
        pub parent: Option<String>,
        pub count: Option<i64>,
        pub reason: Option<String>,
        pub request_id: Option<String>,
        pub prev_hash: String,
        pub hash: String,
    }

    impl TryFrom<EventRow> for mandate_audit::Event {
        type Error = StoreError;
        fn try_from(r: EventRow) -> Result<Self, StoreError> {
            Ok(mandate_audit::Event {
                seq: u64::try_from(r.seq).map_err(|_| StoreError::Corrupt(format!("audit seq {}", r.seq)))?,
                time: r.time,
                kind: r.kind,
                decision: r.decision,
                subject: r.subject,
                actor: r.actor,
                chain: from_json(&r.chain)?,
                client_id: r.client_id,
                action: r.action,
                resource: r.resource,
                scope: r.scope,
                jti: r.jti,
                grant_id: r.grant_id,
                parent: r.parent,
                count: r
                    .count
                    .map(|c| u64::try_from(c).map_err(|_| StoreError::Corrupt(format!("audit count {c}"))))
                    .transpose()?,
                reason: r.reason,
                request_id: r.request_id,
                prev_hash: r.prev_hash,
                hash: r.hash,
            })
        }
    }

    /// The column list both stores select and insert, in one order.
    pub const EVENT_COLUMNS: &str = "seq, time, type, decision, subject, actor, chain, client_id, action, resource, \
         scope, jti, grant_id, parent, count, reason, request_id, prev_hash, hash";

    /// The `WHERE` clause of an audit query and its bound values, in order.
    /// Column names come from this fixed list only; every value is a
    /// parameter. `placeholder(n)` spells the n-th parameter (1-based).
    pub fn audit_where(q: &crate::audit::AuditQuery, placeholder: impl Fn(usize) -> String) -> (String, Vec<String>) {
        let mut clauses = Vec::new();
        let mut values = Vec::new();
        let filters: [(&str, &Option<String>, &str); 8] = [
            ("actor", &q.actor, "="),
            ("subject", &q.subject, "="),
            ("jti", &q.jti, "="),
            ("grant_id", &q.grant, "="),
            ("type", &q.kind, "="),
            ("resource", &q.resource, "="),
            ("parent", &q.parent, "="),
            ("time", &q.since, ">="),
        ];
        for (column, value, op) in filters {
            if let Some(v) = value {
                values.push(v.clone());
                clauses.push(format!("{column} {op} {}", placeholder(values.len() + 1)));
            }
        }
        // Parameter 1 is always the cursor.
        let mut sql = format!("seq > {}", placeholder(1));
        for c in clauses {
            sql.push_str(" AND ");
            sql.push_str(&c);
        }
        (sql, values)
    }

    pub struct AuthCodeRow {
        pub hash: String,
        pub agent: String,
        pub user_id: String,
        pub grant_id: String,
        pub redirect_uri: String,
        pub code_challenge: String,
        pub created_at: i64,
        pub expires_at: i64,
        pub used_at: Option<i64>,
    }

    impl TryFrom<AuthCodeRow> for AuthCodeRecord {
        type Error = StoreError;
        fn try_from(r: AuthCodeRow) -> Result<Self, StoreError> {
            Ok(AuthCodeRecord {
                hash: r.hash,
                agent: parse::<AgentId>(&r.agent)?,
                user: parse::<UserId>(&r.user_id)?,
                grant: parse::<GrantId>(&r.grant_id)?,
                redirect_uri: r.redirect_uri,
                code_challenge: r.code_challenge,
                created_at: from_ts(r.created_at)?,
                expires_at: from_ts(r.expires_at)?,
                used_at: opt_ts(r.used_at)?,
            })
        }
    }

    pub struct SessionRow {
        pub hash: String,
        pub user_id: String,
        pub csrf: String,
        pub created_at: i64,
        pub expires_at: i64,
        pub revoked_at: Option<i64>,
    }

    impl TryFrom<SessionRow> for SessionRecord {
        type Error = StoreError;
        fn try_from(r: SessionRow) -> Result<Self, StoreError> {
            Ok(SessionRecord {
                hash: r.hash,
                user: parse::<UserId>(&r.user_id)?,
                csrf: r.csrf,
                created_at: from_ts(r.created_at)?,
                expires_at: from_ts(r.expires_at)?,
                revoked_at: opt_ts(r.revoked_at)?,
            })
        }
    }

    pub struct TokenRow {
        pub jti: String,
        pub client_id: String,
        pub subject: String,
        pub audience: String,
        pub scopes: String,
        pub grant_id: Option<String>,
        pub parent: Option<String>,
        pub chain: String,
        pub issued_at: i64,
        pub expires_at: i64,
        pub cnf_jkt: Option<String>,
        pub status_idx: Option<i64>,
        pub family: Option<String>,
        pub revoked_at: Option<i64>,
    }

    impl TryFrom<TokenRow> for TokenRecord {
        type Error = StoreError;
        fn try_from(r: TokenRow) -> Result<Self, StoreError> {
            Ok(TokenRecord {
                jti: parse::<Jti>(&r.jti)?,
                client_id: parse::<ClientId>(&r.client_id)?,
                subject: r.subject,
                audience: r.audience,
                scopes: from_json(&r.scopes)?,
                grant: r.grant_id.as_deref().map(parse::<GrantId>).transpose()?,
                parent: r.parent.as_deref().map(parse::<Jti>).transpose()?,
                chain: from_json(&r.chain)?,
                issued_at: from_ts(r.issued_at)?,
                expires_at: from_ts(r.expires_at)?,
                cnf_jkt: r.cnf_jkt,
                status_idx: r
                    .status_idx
                    .map(u64::try_from)
                    .transpose()
                    .map_err(|_| StoreError::Corrupt("negative status index".into()))?,
                family: r.family,
                revoked_at: opt_ts(r.revoked_at)?,
            })
        }
    }

    pub struct GrantRow {
        pub id: String,
        pub user_id: String,
        pub agent: String,
        pub resource: String,
        pub scopes: String,
        pub purpose: Option<String>,
        pub approved_by: String,
        pub status: String,
        pub created_at: i64,
        pub expires_at: i64,
        pub revoked_at: Option<i64>,
        pub last_used_at: Option<i64>,
    }

    impl TryFrom<GrantRow> for Grant {
        type Error = StoreError;
        fn try_from(r: GrantRow) -> Result<Self, StoreError> {
            Ok(Grant {
                id: parse::<GrantId>(&r.id)?,
                user: parse::<UserId>(&r.user_id)?,
                agent: parse::<AgentId>(&r.agent)?,
                resource: r.resource,
                scopes: from_json(&r.scopes)?,
                purpose: r.purpose,
                approved_by: r.approved_by,
                status: parse::<GrantStatus>(&r.status)?,
                created_at: from_ts(r.created_at)?,
                expires_at: from_ts(r.expires_at)?,
                revoked_at: opt_ts(r.revoked_at)?,
                last_used_at: opt_ts(r.last_used_at)?,
            })
        }
    }

    pub struct ApprovalRow {
        pub id: String,
        pub agent: String,
        pub user_id: String,
        pub approver: String,
        pub resource: String,
        pub subject: String,
        pub binding_message: Option<String>,
        pub status: String,
        pub decided_by: Option<String>,
        pub created_at: i64,
        pub expires_at: i64,
        pub decided_at: Option<i64>,
        pub grant_id: Option<String>,
        pub polled_at: Option<i64>,
    }

    impl TryFrom<ApprovalRow> for Approval {
        type Error = StoreError;
        fn try_from(r: ApprovalRow) -> Result<Self, StoreError> {
            Ok(Approval {
                id: parse::<ApprovalId>(&r.id)?,
                agent: parse::<AgentId>(&r.agent)?,
                user: parse::<UserId>(&r.user_id)?,
                approver: parse::<UserId>(&r.approver)?,
                resource: r.resource,
                subject: from_json::<ApprovalSubject>(&r.subject)?,
                binding_message: r.binding_message,
                status: parse::<ApprovalStatus>(&r.status)?,
                decided_by: r.decided_by,
                created_at: from_ts(r.created_at)?,
                expires_at: from_ts(r.expires_at)?,
                decided_at: opt_ts(r.decided_at)?,
                grant: r.grant_id.as_deref().map(parse::<GrantId>).transpose()?,
                polled_at: opt_ts(r.polled_at)?,
            })
        }
    }

    /// The binding column of an approval: only action approvals have one.
    pub fn approval_binding(a: &Approval) -> Option<&str> {
        match &a.subject {
            ApprovalSubject::Action { binding, .. } => Some(binding),
            ApprovalSubject::Grant { .. } => None,
        }
    }

    pub struct RefreshRow {
        pub hash: String,
        pub family: String,
        pub grant_id: String,
        pub client_id: String,
        pub scopes: String,
        pub issued_at: i64,
        pub expires_at: i64,
        pub used_at: Option<i64>,
        pub revoked_at: Option<i64>,
        pub cnf_jkt: Option<String>,
    }

    impl TryFrom<RefreshRow> for RefreshRecord {
        type Error = StoreError;
        fn try_from(r: RefreshRow) -> Result<Self, StoreError> {
            Ok(RefreshRecord {
                hash: r.hash,
                family: r.family,
                grant: parse::<GrantId>(&r.grant_id)?,
                client_id: parse::<AgentId>(&r.client_id)?,
                scopes: from_json(&r.scopes)?,
                issued_at: from_ts(r.issued_at)?,
                expires_at: from_ts(r.expires_at)?,
                used_at: opt_ts(r.used_at)?,
                revoked_at: opt_ts(r.revoked_at)?,
                cnf_jkt: r.cnf_jkt,
            })
        }
    }
}
