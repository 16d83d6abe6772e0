//! The storage port. Reads are individual queries; every write is a
//! [`Change`]: a list of mutations applied atomically, so that a token, the
//! replay-store entry of the assertion that obtained it and the audit event
//! recording both land together or not at all. Stores may batch concurrent
//! changes into one durable transaction (group commit).

use async_trait::async_trait;
use mandate_audit::{Checkpoint, Event};
use mandate_model::records::{
    Agent, AgentStatus, Approval, ApprovalStatus, AuthCodeRecord, ClientId, Grant, RefreshRecord, Resource, ScimGroup,
    ScimToken, ScimUserRecord, SessionRecord, SuspendedBy, TokenRecord, UpstreamLink, User, UserStatus, UserToken,
};
use mandate_model::ssf::{Cause, QueuedEvent, Signal, Stream, StreamStatus};
use mandate_model::{AgentId, ApprovalId, GrantId, GroupId, Jti, ResourceId, StreamId, UserId, UserTokenId};
use thiserror::Error;
use time::OffsetDateTime;

mod memory;

/// Most agents [`Store::agents_federated_by`] returns.
pub const MAX_FEDERATED_CANDIDATES: u32 = 100;

pub use memory::MemoryStore;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// A uniqueness or precondition failed; nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A compare-and-swap found the record changed since it was read
    /// (SCIM's `If-Match`); nothing was written.
    #[error("changed since read: {0}")]
    Stale(String),
    /// The store epoch was no longer the one the change expected
    /// ([`Change::expect_epoch`]): what it was decided on may have changed
    /// since. Nothing was written.
    #[error("the store epoch moved since the change was decided")]
    Moved,
    /// A client-assertion `jti` was already used.
    #[error("replayed jti")]
    Replay,
    /// A DPoP proof `jti` was already used.
    #[error("replayed DPoP proof")]
    DpopReplay,
    /// An authorization grant assertion (an ID-JAG) was already used.
    #[error("replayed grant assertion")]
    GrantReplay,
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
    /// Shared Signals SETs under `--ssf-signing-alg RS256`: an RSA key,
    /// published in `/jwks.json`, that never signs an access token.
    Signals,
}

impl KeyUse {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyUse::Token => "token",
            KeyUse::Audit => "audit",
            KeyUse::Signals => "ssf",
        }
    }

    pub fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "token" => Ok(KeyUse::Token),
            "audit" => Ok(KeyUse::Audit),
            "ssf" => Ok(KeyUse::Signals),
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
    /// Who installed it: `admin` or a `usr_…` id. `None` for versions
    /// stored before authors were recorded (migration 0022).
    pub author: Option<String>,
}

/// One entry of the policy history (ADR 0034), without its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    /// The history's own counter: 1 for the first set ever stored,
    /// increasing by one with every change (a restore included).
    pub number: u64,
    /// The content hash ([`mandate_policy::version_of`]).
    pub version: String,
    pub author: Option<String>,
    pub created_at: OffsetDateTime,
    /// Length of the text in bytes.
    pub bytes: u64,
}

/// Most history entries one page lists.
pub const MAX_POLICY_VERSIONS_PAGE: u32 = 100;

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
    /// Sets a person's name, email and status as SCIM asks, as a
    /// compare-and-swap: fails with `Stale` unless the user still has
    /// `was`, and with `Conflict` if the email belongs to someone else.
    UpdatePersonIf {
        id: UserId,
        was: Person,
        now: Person,
    },
    /// Issues a SCIM token; fails with `Conflict` if its id or hash exists.
    InsertScimToken(ScimToken),
    /// Revokes a SCIM token (affected: 0 or 1).
    RevokeScimToken {
        id: String,
        at: OffsetDateTime,
    },
    /// Writes SCIM's record of a person. With `expect` `None` it is
    /// inserted, and fails with `Stale` if the person has one already;
    /// otherwise it replaces the record whose revision is `expect`, and
    /// fails with `Stale` if the revision moved. Fails with `Conflict` if
    /// the `userName` (without regard to case) is another person's, or the
    /// user is missing.
    PutScimUser {
        record: ScimUserRecord,
        expect: Option<u64>,
    },
    /// Creates a SCIM group, without members; fails with `Conflict` if the
    /// id or the `displayName` exists.
    InsertScimGroup(ScimGroup),
    /// Sets a group's `displayName`, `externalId`, revision and update time
    /// (not its members), if its revision is still `expect`: `Stale`
    /// otherwise (or if it is gone); `Conflict` if the `displayName` is
    /// another group's.
    UpdateScimGroup {
        group: ScimGroup,
        expect: u64,
    },
    /// Deletes a group and its memberships if its revision is still
    /// `expect`; `Stale` otherwise (or if it is gone).
    DeleteScimGroup {
        id: GroupId,
        expect: u64,
    },
    /// Adds members (affected: how many were not members yet); fails with
    /// `Conflict` if the group or a user is missing.
    AddScimGroupMembers {
        group: GroupId,
        users: Vec<UserId>,
    },
    /// Removes members (affected: how many were members).
    RemoveScimGroupMembers {
        group: GroupId,
        users: Vec<UserId>,
    },
    /// Takes the user out of every SCIM group (affected: how many).
    RemoveUserFromScimGroups {
        user: UserId,
    },
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
    /// Fails with `Conflict` if the id, or the metadata URL, exists.
    InsertAgent(Agent),
    /// Replaces an agent's workload identity rules (DESIGN §10); fails
    /// with `Conflict` unless the agent exists.
    SetFederatedCredentials {
        id: AgentId,
        credentials: Vec<mandate_model::records::FederatedCredential>,
        at: OffsetDateTime,
    },
    /// Replaces an agent's credential policy (DESIGN §13); fails with
    /// `Conflict` unless the agent exists.
    SetAgentLimits {
        id: AgentId,
        limits: mandate_model::limits::AgentLimits,
        at: OffsetDateTime,
    },
    /// Refreshes what a self-registered client said of itself (its
    /// metadata document was fetched again); fails with `Conflict` unless
    /// the agent is self-registered.
    UpdateAgentRegistration {
        id: AgentId,
        name: String,
        redirect_uris: Vec<String>,
        jwks: Option<serde_json::Value>,
        public: bool,
        at: OffsetDateTime,
    },
    /// Sets an agent's ceiling (`scopes`) to a narrower one (the caller
    /// checked it); fails with `Conflict` unless the agent exists and is
    /// not retired.
    NarrowAgentScopes {
        id: AgentId,
        scopes: mandate_model::ScopeSet,
    },
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
    /// Fails the change with `Conflict` unless the current policy set has
    /// this content hash (`None`: unless no set was ever stored). Put it
    /// before the [`Mutation::PutPolicy`] it guards: stores hold other
    /// policy writers off from here to the commit.
    ExpectPolicyVersion(Option<String>),
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
    /// Fails with `GrantReplay` if a grant assertion with this replay key
    /// was seen (kept with the DPoP replay keys, under its own prefix).
    ConsumeGrantJti {
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
    /// Links a person to an upstream identity; fails with `Conflict` if the
    /// (`issuer`, `subject`) pair is linked already or the user is missing.
    InsertUpstreamLink(UpstreamLink),
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
    /// Moves a grant's expiry from `from` to `to` (a reapproval, ADR
    /// 0036), stamping `reapproved_at` and counting it; `purpose`, when
    /// given, replaces the grant's. Fails with `Conflict` unless the grant
    /// is active, still expires at `from`, and `from` is after `at` (it has
    /// not lapsed): of concurrent renewals exactly one wins. Nothing else
    /// moves a grant's expiry.
    ExtendGrant {
        id: GrantId,
        from: OffsetDateTime,
        to: OffsetDateTime,
        at: OffsetDateTime,
        purpose: Option<String>,
    },
    /// Stamps a grant lapsed at `at` (ADR 0036): fails with `Conflict`
    /// unless it is active, expired at `at`, and not stamped yet, so that
    /// of several nodes reporting it exactly one does.
    MarkGrantLapsed {
        id: GrantId,
        at: OffsetDateTime,
    },
    /// Narrows an active grant's scopes to `scopes` (the caller checked
    /// they are a subset); fails with `Conflict` unless the grant is active.
    NarrowGrantScopes {
        id: GrantId,
        scopes: mandate_model::ScopeSet,
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
    /// Counts one member's approval of a pending, unexpired group
    /// approval: appends `by` to its `approved_by` only if that list is
    /// still exactly `seen` (compare-and-set), so of concurrent decisions
    /// one counts and the others fail with `Conflict`.
    CountApproval {
        id: ApprovalId,
        seen: Vec<UserId>,
        by: UserId,
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
    /// Sets an attempt counter (sign-in pacing, shared by every node) to
    /// `new` if it still holds `expected` (`None`: no counter yet); fails
    /// with `Conflict` otherwise, so that two nodes counting at once count
    /// twice (affected: 1).
    SwapAttemptCounter {
        key: String,
        expected: Option<AttemptCounter>,
        new: AttemptCounter,
    },
    /// Forgets an attempt counter (affected: 0 or 1).
    ForgetAttemptCounter {
        key: String,
    },
    /// Takes one from an attempt counter, never below zero (affected: 0 or 1).
    DecrementAttemptCounter {
        key: String,
    },
    /// Forgets the attempt counters last counted before `before` (affected:
    /// how many).
    PurgeAttemptCounters {
        before: OffsetDateTime,
    },
    /// Sets an agent's CIBA delivery mode and notification endpoint
    /// (replacing any earlier one); fails with `Conflict` unless the agent
    /// exists.
    SetBackchannel {
        agent: AgentId,
        backchannel: mandate_model::delivery::Backchannel,
    },
    /// Keeps where and how to call back about a ping or push CIBA request;
    /// fails with `Conflict` if the approval has one, or is missing.
    InsertCibaCallback(mandate_model::delivery::CibaCallback),
    /// Puts a message in the outbox; fails with `Conflict` if the id exists.
    InsertDelivery(mandate_model::delivery::Delivery),
    /// Claims a due item for one attempt: fails with `Conflict` unless it
    /// is pending, due at `now`, and not leased to anyone until after
    /// `now` (so two nodes never attempt it at once).
    LeaseDelivery {
        id: String,
        holder: String,
        now: OffsetDateTime,
        until: OffsetDateTime,
    },
    /// Records an attempt by the lease's holder: `status` pending (with
    /// `next_at`) to try again, or delivered, or failed. The lease is
    /// released. Fails with `Conflict` unless `holder` still holds it and
    /// it is pending.
    FinishDelivery {
        id: String,
        holder: String,
        status: mandate_model::delivery::DeliveryStatus,
        attempts: u32,
        next_at: OffsetDateTime,
        error: Option<String>,
    },
    /// Creates a review campaign; fails with `Conflict` if the id exists.
    InsertCampaign(mandate_model::review::Campaign),
    /// Adds an item to a campaign; fails with `Conflict` if the id exists
    /// or the campaign is missing.
    InsertReviewItem(mandate_model::review::ReviewItem),
    /// Decides an item once: fails with `Conflict` unless it is undecided
    /// and its campaign is open (a compare-and-set, so that of two nodes or
    /// two reviewers one applies the decision, and the other's change,
    /// cascade included, is not written).
    DecideReviewItem {
        id: mandate_model::ReviewItemId,
        decision: mandate_model::review::Decision,
        by: String,
        at: OffsetDateTime,
        outcome: mandate_model::review::Outcome,
    },
    /// Closes an open campaign; fails with `Conflict` unless it is open.
    CloseCampaign {
        id: mandate_model::CampaignId,
        at: OffsetDateTime,
    },
    /// Appends an event to the audit chain: the store numbers, links and
    /// hashes it while it holds the chain's head ("affected": the event's
    /// `seq`).
    AppendAudit(Box<crate::audit::AuditRecord>),
    /// Keeps a signed checkpoint; one per seq, a second is ignored
    /// (affected: 0 or 1).
    InsertCheckpoint(Checkpoint),
    /// Creates a Shared Signals stream; fails with `Conflict` if the id
    /// exists or the resource is missing.
    InsertStream(Stream),
    /// Replaces a stream's delivery, event types, description and update
    /// time (not its status or push state); fails with `Conflict` unless
    /// the stream exists and belongs to `resource`.
    UpdateStream(Stream),
    /// Deletes a stream and the events waiting on it (affected: 0 or 1).
    DeleteStream {
        id: StreamId,
    },
    /// Sets a stream's status and reason (affected: 0 or 1). `Disabled`
    /// drops the events waiting; `Enabled` clears the failure count and
    /// makes the stream due at `at`, so that pushing resumes at once.
    SetStreamStatus {
        id: StreamId,
        status: StreamStatus,
        reason: Option<String>,
        at: OffsetDateTime,
    },
    /// Queues a CAEP `session-revoked` event, on every stream that is not
    /// disabled, asks for the type and holds fewer than
    /// [`mandate_model::ssf::MAX_QUEUED_EVENTS`] events, for every token
    /// revoked at exactly `at` whose `aud` is the stream's audience and
    /// that has no such event on it yet (affected: how many). Placed after
    /// the revocations of its change, so that the events commit with them.
    SignalRevocations {
        at: OffsetDateTime,
        cause: Cause,
    },
    /// Queues `signal` on every stream (not disabled, asking for its type,
    /// not full) whose audience is the `aud` of a token live at
    /// `signal.at` that `holder` holds (as client) or is the subject of
    /// (affected: how many streams).
    SignalHolders {
        holder: String,
        signal: Signal,
    },
    /// Queues `signal` on one stream, unless it is disabled or full
    /// (affected: 0 or 1). For the stream's own events (verification,
    /// stream-updated), which every stream delivers.
    SignalStream {
        stream: StreamId,
        signal: Signal,
    },
    /// Removes a subject from a stream (SSF §8.1.3.3; streams carry every
    /// subject of their audience by default): events about it (an `opaque`
    /// id: a token's `jti`, an agent, a person, or the grant, agent or
    /// person behind a revoked token) are no longer queued on the stream
    /// (affected: 1, or 0 if it was removed already). Fails with
    /// `Conflict` if the stream is missing or has
    /// [`mandate_model::ssf::MAX_REMOVED_SUBJECTS`] removed already.
    RemoveStreamSubject {
        stream: StreamId,
        subject: String,
    },
    /// Adds back a subject removed from a stream (SSF §8.1.3.2; affected:
    /// 1, or 0 if it was not removed).
    AddStreamSubject {
        stream: StreamId,
        subject: String,
    },
    /// Records a receiver's verification request at `at` (SSF §8.1.4.2):
    /// fails with `Conflict` if the stream is missing or its last request
    /// was after `not_before` (`min_verification_interval`).
    ClaimVerification {
        stream: StreamId,
        at: OffsetDateTime,
        not_before: OffsetDateTime,
    },
    /// Forgets a stream's acknowledged events (affected: how many).
    AckEvents {
        stream: StreamId,
        seqs: Vec<u64>,
    },
    /// Keeps the larger of each sample's counts and those already kept for
    /// its key in the hour bucket starting at `hour` (an upsert with
    /// `max`, so nodes sampling at once agree; affected: how many samples).
    RecordInventorySamples {
        hour: OffsetDateTime,
        samples: Vec<crate::report::InventorySample>,
    },
    /// Forgets the sample buckets starting before `before` (affected: how
    /// many rows).
    PruneInventorySamples {
        before: OffsetDateTime,
    },
    /// Claims a push stream for one attempt: fails with `Conflict` unless
    /// it is enabled, due at `now` and not leased past `now` (so two nodes
    /// never push one stream at once, and its events go out in order).
    LeaseStream {
        id: StreamId,
        holder: String,
        now: OffsetDateTime,
        until: OffsetDateTime,
    },
    /// Records a push attempt by the lease's holder: the event `delivered`
    /// (if one was) is forgotten, the failure count and next attempt are
    /// set, the lease is released, and with `pause` the stream is paused
    /// for that reason. Fails with `Conflict` unless `holder` holds it.
    FinishPush {
        id: StreamId,
        holder: String,
        delivered: Option<u64>,
        failures: u32,
        next_at: OffsetDateTime,
        pause: Option<String>,
    },
}

/// Failed attempts under one key (an email, an address, or the two
/// together): how many, and when the last was counted, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptCounter {
    pub count: u32,
    pub last: OffsetDateTime,
}

/// Which grants to list. Every filter given must match; `owner` matches
/// grants whose agent that user owns, `user_or_owner` grants the user gave
/// or whose agent they own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantQuery {
    pub user: Option<UserId>,
    pub agent: Option<AgentId>,
    pub user_or_owner: Option<UserId>,
    /// The resource identifier the grant is for.
    pub resource: Option<String>,
    /// The status at the given time (see [`Grant::status_at`]).
    pub status: Option<(GrantState, OffsetDateTime)>,
    /// Only grants expiring strictly before this time.
    pub expires_before: Option<OffsetDateTime>,
    /// Only grants never used, or last used strictly before this time.
    pub used_before: Option<OffsetDateTime>,
    /// Keyset cursor: only grants with a smaller id (lists are newest
    /// first, so a grant inserted meanwhile never shows on a later page).
    pub before: Option<GrantId>,
    pub limit: u32,
}

/// Which lapsed grants to list (`GET /v1/review/lapsed`): those reported
/// lapsed at or after `since`, newest report first (by `lapsed_at`, then
/// id), below the `before` cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LapsedQuery {
    pub since: Option<OffsetDateTime>,
    /// Keyset cursor: the (`lapsed_at`, id) of the last grant of the
    /// previous page.
    pub before: Option<(OffsetDateTime, GrantId)>,
    pub limit: u32,
}

/// A grant's status as lists filter it: stored `revoked`, or stored
/// `active` and before (`Active`) or at/after (`Expired`) its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantState {
    Active,
    Expired,
    Revoked,
}

impl std::str::FromStr for GrantState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(Self::Active),
            "expired" => Ok(Self::Expired),
            "revoked" => Ok(Self::Revoked),
            other => Err(format!("unknown grant status {:?}; known: active, expired, revoked", truncated(other))),
        }
    }
}

/// At most 32 characters of untrusted text, for an error message.
fn truncated(s: &str) -> String {
    s.chars().take(32).collect()
}

/// Which people to list (`GET /v1/users`), newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserListQuery {
    pub status: Option<UserStatus>,
    /// In this group, from either source (the admin's or SCIM's).
    pub group: Option<String>,
    /// Keyset cursor: only ids below this one.
    pub before: Option<UserId>,
    pub limit: u32,
}

/// Which agents to list (`GET /v1/agents`), newest first. Every filter
/// given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentListQuery {
    pub owner: Option<UserId>,
    pub kind: Option<mandate_model::records::AgentKind>,
    pub origin: Option<mandate_model::records::AgentOrigin>,
    /// The stored status (an expired agent keeps its stored status until
    /// housekeeping retires it; `expires_before` finds those).
    pub status: Option<AgentStatus>,
    pub parent: Option<AgentId>,
    /// Never used, or last used strictly before this time.
    pub used_before: Option<OffsetDateTime>,
    /// Last used at or after this time.
    pub used_after: Option<OffsetDateTime>,
    /// With an expiry strictly before this time.
    pub expires_before: Option<OffsetDateTime>,
    /// Only agents that are not retired (any status but `retired`): the
    /// access review's walk, read through the index of live agents.
    pub not_retired: bool,
    /// Keyset cursor: only ids below this one.
    pub before: Option<AgentId>,
    pub limit: u32,
}

/// An agent as the inventory lists it: the record and its last use (the
/// last token issued to it, at [`LAST_USE_RESOLUTION`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ListedAgent {
    pub agent: Agent,
    pub last_used_at: Option<OffsetDateTime>,
}

/// How stale an agent's recorded last use may be: stores write it with a
/// token's insertion only when the recorded one is older than this, so
/// that a busy agent costs one row update a minute, not one per token.
pub const LAST_USE_RESOLUTION: time::Duration = time::Duration::minutes(1);

/// What an agent holds and did, for its inventory view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentActivity {
    /// Grants to it, active and unexpired at the time asked.
    pub live_grants: u64,
    /// Tokens issued to it, unrevoked and unexpired at the time asked.
    pub live_tokens: u64,
    /// Its recorded last use (see [`LAST_USE_RESOLUTION`]).
    pub last_used_at: Option<OffsetDateTime>,
}

/// Which resources to list (`GET /v1/resources`), newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceListQuery {
    /// Keyset cursor: only ids below this one.
    pub before: Option<ResourceId>,
    pub limit: u32,
}

/// The fields of a person SCIM writes (with [`Mutation::UpdatePersonIf`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    pub email: String,
    pub status: UserStatus,
}

impl Person {
    pub fn of(u: &User) -> Self {
        Self { name: u.name.clone(), email: u.email.clone(), status: u.status }
    }
}

/// Which people SCIM lists: those it has not deleted, matching every
/// filter given, by id. `user_name` is compared without regard to case,
/// with SCIM's `userName`, or with the email of a person SCIM keeps no
/// record of (whose `userName` is their email); `email` with the email.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScimUserQuery {
    pub user_name: Option<String>,
    pub external_id: Option<String>,
    pub email: Option<String>,
    /// How many matches to skip (SCIM's `startIndex` - 1).
    pub offset: u64,
    pub limit: u32,
}

/// Which SCIM groups to list, by id; `display_name` is compared without
/// regard to case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScimGroupQuery {
    pub display_name: Option<String>,
    pub external_id: Option<String>,
    pub offset: u64,
    pub limit: u32,
}

/// One page of a list, and how many match in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub total: u64,
    pub items: Vec<T>,
}

/// Which campaigns to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignQuery {
    pub status: Option<mandate_model::review::CampaignStatus>,
    /// Keyset cursor: only ids below this one.
    pub before: Option<mandate_model::CampaignId>,
    pub limit: u32,
}

/// Which review items to list, in id order. Every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewItemQuery {
    pub campaign: Option<mandate_model::CampaignId>,
    pub assignee: Option<UserId>,
    /// Only items not decided yet.
    pub undecided: bool,
    /// Only items of campaigns that are open.
    pub open: bool,
    /// Keyset cursor: only ids above this one.
    pub after: Option<mandate_model::ReviewItemId>,
    pub limit: u32,
}

/// How far a campaign has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CampaignProgress {
    pub items: u64,
    pub decided: u64,
}

/// The most people [`Store::group_members`] answers.
pub const MAX_GROUP_MEMBERS: usize = 1000;

/// Which approvals to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalQuery {
    /// Only approvals this person decides: those naming them as the
    /// approver (not group approvals, whose `approver` only records the
    /// user they are for), and group approvals of `groups`.
    pub approver: Option<UserId>,
    /// With `approver`: the groups the person is in.
    pub groups: Vec<String>,
    pub status: Option<ApprovalStatus>,
    /// Only action approvals with this binding.
    pub binding: Option<String>,
    /// Only approvals older than this one (paging, newest first).
    pub before: Option<ApprovalId>,
    pub limit: u32,
}

impl Mutation {
    /// Whether this mutation can make a live token, grant, agent, user,
    /// approval decision, policy, key or resource read differently: stores
    /// advance their [`Store::epoch`] when they commit one, so that caches
    /// of liveness and decisions are dropped at once, and other nodes hear
    /// of it (the change feed).
    pub fn invalidates(&self) -> bool {
        // A new agent with federated credentials changes which agents a
        // workload token's issuer and subject find.
        if let Mutation::InsertAgent(a) = self {
            return !a.federated_credentials.is_empty();
        }
        matches!(
            self,
            Mutation::UpdateUser(_)
                | Mutation::UpdatePersonIf { .. }
                | Mutation::UpdateScimGroup { .. }
                | Mutation::DeleteScimGroup { .. }
                | Mutation::AddScimGroupMembers { .. }
                | Mutation::RemoveScimGroupMembers { .. }
                | Mutation::RemoveUserFromScimGroups { .. }
                | Mutation::RevokeUserToken { .. }
                | Mutation::SetAgentStatus { .. }
                | Mutation::SetFederatedCredentials { .. }
                | Mutation::SetAgentLimits { .. }
                | Mutation::RevokeTokensOfAgent { .. }
                | Mutation::RevokeTokensOfSubject { .. }
                | Mutation::RevokeTokensOfOwnedAgents { .. }
                | Mutation::RevokeToken { .. }
                | Mutation::RevokeGrant { .. }
                | Mutation::NarrowGrantScopes { .. }
                | Mutation::NarrowAgentScopes { .. }
                | Mutation::RevokeTokensOfGrant { .. }
                | Mutation::RevokeGrantsOfUser { .. }
                | Mutation::RevokeGrantsOfAgent { .. }
                | Mutation::ExtendGrant { .. }
                | Mutation::DecideApproval { .. }
                | Mutation::RevokeTokensOfFamily { .. }
                // Other nodes reload these at once when the epoch moves
                // (the PostgreSQL change feed, DESIGN §8).
                | Mutation::PutPolicy(_)
                | Mutation::InsertSigningKey(_)
                | Mutation::RetireSigningKeys { .. }
                | Mutation::InsertResource(_)
        )
    }
}

/// Names one mutation of its [`Change`]: how an audit record says which
/// mutations' affected rows it counts, and how a caller reads back what one
/// did from the [`Receipt`]. A handle stays valid wherever its mutation
/// ends up in the change ([`Change::prepend`] moves none of the others'
/// handles), so no count depends on the order mutations were added in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle(usize);

impl Handle {
    /// A dense number, below the change's length: stores index their
    /// per-mutation results by it.
    pub fn id(self) -> usize {
        self.0
    }
}

/// Mutations applied atomically, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Change {
    mutations: Vec<(Handle, Mutation)>,
    /// The store epoch the change was decided at, if it must still be it
    /// when the change commits (decision 0042).
    epoch: Option<u64>,
}

impl Change {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `m` last, when nothing needs to be read back about it.
    pub fn with(mut self, m: Mutation) -> Self {
        self.push(m);
        self
    }

    /// Adds `m` last.
    pub fn push(&mut self, m: Mutation) -> Handle {
        let h = Handle(self.mutations.len());
        self.mutations.push((h, m));
        h
    }

    /// Adds `m` first: a compare-and-swap (a code, an approval, a refresh
    /// token used once) that must win before anything else is written.
    pub fn prepend(&mut self, m: Mutation) -> Handle {
        let h = Handle(self.mutations.len());
        self.mutations.insert(0, (h, m));
        h
    }

    /// Adds every mutation of `other` last, in its order. (Handles of
    /// `other` do not carry over: append only changes whose records count
    /// nothing.)
    pub fn append(&mut self, other: Change) {
        self.epoch = self.epoch.or(other.epoch);
        for (_, m) in other.mutations {
            self.push(m);
        }
    }

    /// Makes the change a precondition on the store epoch: it is applied
    /// only if the epoch is still `epoch` when its turn comes, after every
    /// change committed before it (any node's) and every change ahead of it
    /// in its batch; otherwise it fails alone with [`StoreError::Moved`]
    /// and writes nothing. A request that decided on records cached at
    /// `epoch`, without reading it, commits this way (decision 0042).
    pub fn expect_epoch(&mut self, epoch: u64) {
        self.epoch = Some(epoch);
    }

    /// The epoch the change expects, if any ([`Change::expect_epoch`]).
    pub fn expected_epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// The mutations in the order they are applied, with their handles.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (Handle, &Mutation)> {
        self.mutations.iter().map(|(h, m)| (*h, m))
    }

    /// The mutations in the order they are applied.
    pub fn mutations(&self) -> impl ExactSizeIterator<Item = &Mutation> {
        self.mutations.iter().map(|(_, m)| m)
    }

    pub fn len(&self) -> usize {
        self.mutations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mutations.is_empty()
    }
}

impl FromIterator<Mutation> for Change {
    fn from_iter<I: IntoIterator<Item = Mutation>>(iter: I) -> Self {
        let mut change = Change::new();
        for m in iter {
            change.push(m);
        }
        change
    }
}

/// What the mutations of a change did so far, filled in by a store as it
/// applies them (rows affected; for [`Mutation::AppendAudit`], the
/// event's `seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied(Vec<Option<u64>>);

impl Applied {
    pub fn for_change(change: &Change) -> Self {
        Self(vec![None; change.len()])
    }

    pub fn set(&mut self, h: Handle, n: u64) -> Result<(), StoreError> {
        let slot = self
            .0
            .get_mut(h.0)
            .ok_or_else(|| StoreError::Unavailable(format!("mutation {} is not in this change", h.0)))?;
        *slot = Some(n);
        Ok(())
    }

    /// What the mutation did, if it has been applied.
    pub fn get(&self, h: Handle) -> Option<u64> {
        self.0.get(h.0).copied().flatten()
    }

    /// The receipt of a change whose every mutation was applied.
    pub fn into_receipt(self) -> Result<Receipt, StoreError> {
        self.0
            .into_iter()
            .enumerate()
            .map(|(i, n)| n.ok_or_else(|| StoreError::Unavailable(format!("mutation {i} was not applied"))))
            .collect::<Result<_, _>>()
            .map(Receipt)
    }
}

/// What a committed change did, read through the handles of its mutations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt(Vec<u64>);

impl Receipt {
    /// Rows the mutation affected (for [`Mutation::AppendAudit`], the
    /// event's `seq`).
    pub fn affected(&self, h: Handle) -> Result<u64, StoreError> {
        self.0
            .get(h.0)
            .copied()
            .ok_or_else(|| StoreError::Unavailable(format!("the store returned nothing for mutation {}", h.0)))
    }
}

/// What a store's change feed last said (DESIGN §8): the newest epoch it
/// heard of, and whether it is listening now. A node whose feed is not
/// listening falls back to polling the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangeFeed {
    pub epoch: u64,
    pub listening: bool,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Changes that any node commits, pushed as they commit (PostgreSQL
    /// `LISTEN/NOTIFY`); `None` for a store that one process uses alone.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<ChangeFeed>> {
        None
    }

    /// Applies `change` atomically and durably; the receipt tells what each
    /// mutation did.
    async fn commit(&self, change: Change) -> Result<Receipt, StoreError>;

    /// A number that changes whenever a change holding a mutation that
    /// [`Mutation::invalidates`] commits, on any node, before that change
    /// is acknowledged; reads made after reading a new epoch see the change.
    /// Caches keyed by it are never stale.
    async fn epoch(&self) -> Result<u64, StoreError>;

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// The attempt counters kept under `keys` (absent ones are left out).
    async fn attempt_counters(&self, keys: &[String]) -> Result<Vec<(String, AttemptCounter)>, StoreError>;

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    /// The people in a Cedar group: whose own `groups` name it or who are
    /// members of a SCIM group of that display name; by id, at most
    /// [`MAX_GROUP_MEMBERS`], any status.
    async fn group_members(&self, group: &str) -> Result<Vec<User>, StoreError>;
    /// A SCIM token by its id, live or not.
    async fn scim_token(&self, id: &str) -> Result<Option<ScimToken>, StoreError>;
    /// Every SCIM token, newest first.
    async fn scim_tokens(&self) -> Result<Vec<ScimToken>, StoreError>;
    /// SCIM's record of a person, deleted or not.
    async fn scim_user(&self, user: UserId) -> Result<Option<ScimUserRecord>, StoreError>;
    /// The people SCIM lists, by id (see [`ScimUserQuery`]).
    async fn scim_users(&self, query: &ScimUserQuery) -> Result<Page<UserId>, StoreError>;
    async fn scim_group(&self, id: GroupId) -> Result<Option<ScimGroup>, StoreError>;
    /// SCIM groups, by id (see [`ScimGroupQuery`]).
    async fn scim_groups(&self, query: &ScimGroupQuery) -> Result<Page<ScimGroup>, StoreError>;
    /// The link of an upstream identity (`iss`, `sub`), if there is one.
    async fn upstream_link(&self, issuer: &str, subject: &str) -> Result<Option<UpstreamLink>, StoreError>;
    /// Whether `user` is linked to any upstream identity.
    async fn upstream_linked(&self, user: UserId) -> Result<bool, StoreError>;
    /// A person's API token by the hash of its secret, live or not.
    async fn user_token_by_hash(&self, hash: &str) -> Result<Option<UserToken>, StoreError>;
    /// A person's API tokens, newest first.
    async fn user_tokens(&self, user: UserId) -> Result<Vec<UserToken>, StoreError>;

    async fn agent(&self, id: AgentId) -> Result<Option<Agent>, StoreError>;
    /// The agent registered by the client metadata document at `url`.
    async fn agent_by_metadata_url(&self, url: &str) -> Result<Option<Agent>, StoreError>;
    /// Agents whose `parent` is `parent`.
    async fn agent_children(&self, parent: AgentId) -> Result<Vec<Agent>, StoreError>;
    /// Agents with a workload identity rule for `issuer` that names
    /// `subject` exactly or has a subject pattern (the caller matches
    /// patterns), at most [`MAX_FEDERATED_CANDIDATES`].
    async fn agents_federated_by(&self, issuer: &str, subject: &str) -> Result<Vec<Agent>, StoreError>;
    /// People matching `query`, newest first (by id), at most `query.limit`.
    async fn list_users(&self, query: &UserListQuery) -> Result<Vec<User>, StoreError>;
    /// Agents matching `query` with their last use, newest first (by id),
    /// at most `query.limit`.
    async fn list_agents(&self, query: &AgentListQuery) -> Result<Vec<ListedAgent>, StoreError>;
    /// Resources, newest first (by id), at most `query.limit`.
    async fn list_resources(&self, query: &ResourceListQuery) -> Result<Vec<Resource>, StoreError>;
    /// Feeds `tally` every grant, token and agent that is live at
    /// `tally.now()` or was created or ended since `tally.since()` (a
    /// superset is allowed), reading only those: live records and those
    /// ended since `tally.since()`, through indexes on their end times.
    async fn inventory_tally(
        &self,
        tally: crate::report::InventoryTally,
    ) -> Result<crate::report::InventoryTally, StoreError>;
    /// The largest sampled counts of the keys of `by` from `first` to
    /// `last` (inclusive, in key order) over the buckets starting at or
    /// after `since_24h` and `since_7d`; keys without samples are left out.
    async fn inventory_peaks(
        &self,
        by: crate::report::ReportBy,
        first: &str,
        last: &str,
        since_24h: OffsetDateTime,
        since_7d: OffsetDateTime,
    ) -> Result<Vec<crate::report::Peaks>, StoreError>;
    /// How many live grants and tokens `agent` holds at `now`, and its
    /// last use; `None` when there is no such agent.
    async fn agent_activity(&self, agent: AgentId, now: OffsetDateTime) -> Result<Option<AgentActivity>, StoreError>;

    async fn resource(&self, id: mandate_model::ResourceId) -> Result<Option<Resource>, StoreError>;
    async fn resource_by_identifier(&self, identifier: &str) -> Result<Option<Resource>, StoreError>;
    async fn resources(&self) -> Result<Vec<Resource>, StoreError>;

    async fn current_policy(&self) -> Result<Option<StoredPolicy>, StoreError>;
    /// The policy history, newest first: entries numbered below `before`
    /// (all, without it), at most `limit`.
    async fn policy_versions(&self, before: Option<u64>, limit: u32) -> Result<Vec<PolicyVersion>, StoreError>;
    /// One entry of the policy history, with its text.
    async fn policy_version(&self, number: u64) -> Result<Option<(PolicyVersion, StoredPolicy)>, StoreError>;
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError>;

    async fn token(&self, jti: Jti) -> Result<Option<TokenRecord>, StoreError>;

    async fn grant(&self, id: GrantId) -> Result<Option<Grant>, StoreError>;
    /// Grants matching `query`, newest first, at most `query.limit`.
    async fn grants(&self, query: &GrantQuery) -> Result<Vec<Grant>, StoreError>;
    /// Grants that expired at or before `now` without being revoked and
    /// are not yet reported lapsed: earliest expiry first, at most `limit`
    /// (an index on the expiry of unreported active grants; reported and
    /// revoked ones are never read).
    async fn lapse_due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Grant>, StoreError>;
    /// Grants reported lapsed, as `query` selects (see [`LapsedQuery`]).
    async fn lapsed_grants(&self, query: &LapsedQuery) -> Result<Vec<Grant>, StoreError>;
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
    /// How many children `parent` spawned at or after `since`, retired ones
    /// included (the access review's spawn rate).
    async fn spawned_since(&self, parent: AgentId, since: OffsetDateTime) -> Result<u64, StoreError>;

    /// The children each of `parents` spawned at or after `since`, retired
    /// ones included, for the parents that spawned any: one read for a page
    /// of the access review (ADR 0038).
    async fn spawn_counts(&self, parents: &[AgentId], since: OffsetDateTime)
    -> Result<Vec<(AgentId, u64)>, StoreError>;
    /// The grants to any of `agents` that are active and unexpired at `now`
    /// (see [`Grant::is_live`]), newest first: one read for a page of the
    /// access review.
    async fn live_grants_of(&self, agents: &[AgentId], now: OffsetDateTime) -> Result<Vec<Grant>, StoreError>;
    /// The people with these ids (those that exist), by id.
    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, StoreError>;

    /// A review campaign.
    async fn campaign(
        &self,
        id: mandate_model::CampaignId,
    ) -> Result<Option<mandate_model::review::Campaign>, StoreError>;
    /// Campaigns matching `query`, newest first, at most `query.limit`.
    async fn campaigns(&self, query: &CampaignQuery) -> Result<Vec<mandate_model::review::Campaign>, StoreError>;
    /// Open campaigns whose deadline is at or before `now`, oldest deadline
    /// first, at most `limit`.
    async fn campaigns_due(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::review::Campaign>, StoreError>;
    /// How many items a campaign has, and how many are decided.
    async fn campaign_progress(&self, id: mandate_model::CampaignId) -> Result<CampaignProgress, StoreError>;
    /// One review item.
    async fn review_item(
        &self,
        id: mandate_model::ReviewItemId,
    ) -> Result<Option<mandate_model::review::ReviewItem>, StoreError>;
    /// Review items matching `query`, in id order, at most `query.limit`.
    async fn review_items(&self, query: &ReviewItemQuery)
    -> Result<Vec<mandate_model::review::ReviewItem>, StoreError>;

    /// An agent's CIBA delivery registration, if it set one.
    async fn backchannel(&self, agent: AgentId) -> Result<Option<mandate_model::delivery::Backchannel>, StoreError>;
    /// Where to call back about a ping or push CIBA request.
    async fn ciba_callback(
        &self,
        approval: ApprovalId,
    ) -> Result<Option<mandate_model::delivery::CibaCallback>, StoreError>;
    /// Outbox items that are pending, due at `now` and not leased past
    /// `now`, oldest due first, at most `limit`.
    async fn due_deliveries(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::delivery::Delivery>, StoreError>;
    /// The outbox items about `about` (an approval id), oldest first.
    async fn deliveries_about(&self, about: &str) -> Result<Vec<mandate_model::delivery::Delivery>, StoreError>;

    /// A Shared Signals stream.
    async fn stream(&self, id: StreamId) -> Result<Option<Stream>, StoreError>;
    /// The streams a resource created, oldest first.
    async fn streams_of(&self, resource: ResourceId) -> Result<Vec<Stream>, StoreError>;
    /// The events waiting on a stream, oldest (lowest `seq`) first, at most
    /// `limit`.
    async fn queued_events(&self, stream: StreamId, limit: u32) -> Result<Vec<QueuedEvent>, StoreError>;
    /// The subjects removed from a stream (`opaque` ids), sorted.
    async fn removed_subjects(&self, stream: StreamId) -> Result<Vec<String>, StoreError>;
    /// Push streams that are enabled, have events waiting, are due at
    /// `now` and are not leased past `now`; oldest due first, at most `limit`.
    async fn due_streams(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Stream>, StoreError>;

    /// The last event's `seq` and `hash`, or `None` for an empty trail.
    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// The head of every lane that holds events (each lane's last event), in
    /// lane order, derived from the events themselves. A store with a single
    /// writer has one lane, 0.
    async fn audit_lanes(&self) -> Result<Vec<crate::audit::AuditLane>, StoreError>;
    /// Events matching `query`, in `seq` order, after `query.after`, at most
    /// `query.limit`.
    async fn audit_events(&self, query: &crate::audit::AuditQuery) -> Result<Vec<Event>, StoreError>;
    /// The events of many actors or grants (see
    /// [`crate::audit::AuditBatch`]): by key, then `seq`, at most
    /// `per_key` a key.
    async fn audit_events_of(&self, batch: &crate::audit::AuditBatch) -> Result<Vec<Event>, StoreError>;
    /// Checkpoints with `seq` greater than `after`, in order.
    async fn audit_checkpoints(&self, after: u64, limit: u32) -> Result<Vec<Checkpoint>, StoreError>;
    async fn last_audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purge() -> Mutation {
        Mutation::PurgeExpiredJtis { before: OffsetDateTime::UNIX_EPOCH }
    }

    #[test]
    fn handles_survive_a_prepend() -> Result<(), StoreError> {
        let mut change = Change::new();
        let a = change.push(purge());
        let b = change.push(Mutation::ReserveStatusIndexes { count: 1 });
        let first = change.prepend(Mutation::ReserveStatusIndexes { count: 2 });
        let order: Vec<Handle> = change.iter().map(|(h, _)| h).collect();
        assert_eq!(order, vec![first, a, b]);
        // A store applies in order and records by handle.
        let mut applied = Applied::for_change(&change);
        for (n, (h, _)) in change.iter().enumerate() {
            applied.set(h, 10 + n as u64)?;
        }
        let receipt = applied.into_receipt()?;
        assert_eq!((receipt.affected(first)?, receipt.affected(a)?, receipt.affected(b)?), (10, 11, 12));
        Ok(())
    }

    #[test]
    fn an_unapplied_mutation_has_no_receipt() {
        let mut change = Change::new();
        let a = change.push(purge());
        change.push(purge());
        let mut applied = Applied::for_change(&change);
        assert!(applied.set(a, 1).is_ok());
        assert!(applied.into_receipt().is_err(), "a receipt with a mutation missing");
        let mut other = Change::new();
        other.push(purge());
        other.push(purge());
        let far = other.push(purge());
        assert!(Applied::for_change(&change).set(far, 1).is_err(), "a handle beyond the change");
    }

    #[test]
    fn a_count_reads_only_applied_mutations() -> Result<(), StoreError> {
        let mut change = Change::new();
        let a = change.push(purge());
        let b = change.push(purge());
        let record = crate::AuditRecord::counting(mandate_audit::Event::new("t", "x"), &[a, b]);
        let mut applied = Applied::for_change(&change);
        applied.set(a, 2)?;
        assert!(record.count(&applied).is_err(), "counted a mutation not yet applied");
        applied.set(b, 3)?;
        assert_eq!(record.count(&applied)?, Some(5));
        applied.set(b, u64::MAX)?;
        assert!(record.count(&applied).is_err(), "a count that overflows");
        Ok(())
    }
}
