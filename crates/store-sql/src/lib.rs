//! What the SQL stores share: how record fields are encoded in columns
//! (times as Unix nanoseconds, lists and maps as JSON text), the rows both
//! read back, and the audit query's `WHERE` clause. SQL lives here and in
//! the stores, never in `mandate-core`, which only defines the port.

use std::collections::BTreeMap;
use std::str::FromStr;

use mandate_model::records::{
    Agent, AgentKind, AgentOrigin, AgentStatus, Approval, ApprovalStatus, ApprovalSubject, AuthCodeRecord, ClientId,
    Grant, GrantStatus, RefreshRecord, Resource, ScimGroup, ScimToken, ScimUserRecord, SessionRecord, SuspendedBy,
    TokenRecord, UpstreamLink, User, UserStatus, UserToken,
};
use mandate_model::{AgentId, ApprovalId, GrantId, GroupId, Jti, ResourceId, ScopeSet, UserId, UserTokenId};
use time::OffsetDateTime;

use mandate_core::store::{Mutation, StoreError};

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
    /// The `displayName`s of the SCIM groups listing the person, as a JSON
    /// array (read with the row, never written through it).
    pub scim_groups: String,
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
            scim_groups: {
                let mut names: Vec<String> = from_json(&r.scim_groups)?;
                names.sort();
                names
            },
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
    pub origin: String,
    pub metadata_url: Option<String>,
    pub public_client: bool,
    pub federated_credentials: Option<String>,
    /// The agent's limits as JSON; NULL when it has none.
    pub limits: Option<String>,
}

/// An agent kind read back.
pub fn agent_kind_of(s: &str) -> Result<AgentKind, StoreError> {
    match s {
        "persistent" => Ok(AgentKind::Persistent),
        "ephemeral" => Ok(AgentKind::Ephemeral),
        other => Err(StoreError::Corrupt(format!("agent kind {other}"))),
    }
}

/// An agent's limits as stored: NULL when it has none.
pub fn limits_json(l: &mandate_model::limits::AgentLimits) -> Result<Option<String>, StoreError> {
    if l.is_empty() { Ok(None) } else { json(l).map(Some) }
}

impl TryFrom<AgentRow> for Agent {
    type Error = StoreError;
    fn try_from(r: AgentRow) -> Result<Self, StoreError> {
        Ok(Agent {
            id: parse::<AgentId>(&r.id)?,
            name: r.name,
            owner: parse::<UserId>(&r.owner)?,
            kind: agent_kind_of(&r.kind)?,
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
            origin: parse::<AgentOrigin>(&r.origin)?,
            metadata_url: r.metadata_url,
            public: r.public_client,
            federated_credentials: r.federated_credentials.as_deref().map(from_json).transpose()?.unwrap_or_default(),
            limits: r.limits.as_deref().map(from_json).transpose()?.unwrap_or_default(),
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
    pub gateway: Option<String>,
    pub exchange_to: String,
    pub context: String,
    pub authorization_details_types: String,
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
            gateway: r.gateway.as_deref().map(parse::<AgentId>).transpose()?,
            exchange_to: from_json(&r.exchange_to)?,
            context: from_json(&r.context)?,
            authorization_details_types: from_json(&r.authorization_details_types)?,
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
    /// The lane (0 where the store has only one).
    pub lane: i64,
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
            lane: u64::try_from(r.lane).map_err(|_| StoreError::Corrupt(format!("audit lane {}", r.lane)))?,
        })
    }
}

/// The column list both stores select and insert, in one order.
pub const EVENT_COLUMNS: &str = "seq, time, type, decision, subject, actor, chain, client_id, action, resource, \
     scope, jti, grant_id, parent, count, reason, request_id, prev_hash, hash";

/// The `WHERE` clause of an audit query and its bound values, in order.
/// Column names come from this fixed list only; every value is a
/// parameter. `placeholder(n)` spells the n-th parameter (1-based).
pub fn audit_where(
    q: &mandate_core::audit::AuditQuery,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<String>) {
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
    pub dpop_jkt: Option<String>,
    pub offline: bool,
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
            dpop_jkt: r.dpop_jkt,
            offline: r.offline,
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

pub struct UpstreamLinkRow {
    pub issuer: String,
    pub subject: String,
    pub user_id: String,
    pub created_at: i64,
}

impl TryFrom<UpstreamLinkRow> for UpstreamLink {
    type Error = StoreError;
    fn try_from(r: UpstreamLinkRow) -> Result<Self, StoreError> {
        Ok(UpstreamLink {
            issuer: r.issuer,
            subject: r.subject,
            user: parse::<UserId>(&r.user_id)?,
            created_at: from_ts(r.created_at)?,
        })
    }
}

pub struct ScimTokenRow {
    pub id: String,
    pub hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl TryFrom<ScimTokenRow> for ScimToken {
    type Error = StoreError;
    fn try_from(r: ScimTokenRow) -> Result<Self, StoreError> {
        Ok(ScimToken { id: r.id, hash: r.hash, created_at: from_ts(r.created_at)?, revoked_at: opt_ts(r.revoked_at)? })
    }
}

pub struct ScimUserRow {
    pub user_id: String,
    pub user_name: String,
    pub external_id: Option<String>,
    pub profile: String,
    pub revision: i64,
    pub deleted_at: Option<i64>,
}

impl TryFrom<ScimUserRow> for ScimUserRecord {
    type Error = StoreError;
    fn try_from(r: ScimUserRow) -> Result<Self, StoreError> {
        Ok(ScimUserRecord {
            user: parse::<UserId>(&r.user_id)?,
            user_name: r.user_name,
            external_id: r.external_id,
            profile: from_json(&r.profile)?,
            revision: u64::try_from(r.revision).map_err(|_| StoreError::Corrupt(format!("revision {}", r.revision)))?,
            deleted_at: opt_ts(r.deleted_at)?,
        })
    }
}

pub struct ScimGroupRow {
    pub id: String,
    pub display_name: String,
    pub external_id: Option<String>,
    /// The members' ids, as a JSON array.
    pub members: String,
    pub revision: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl TryFrom<ScimGroupRow> for ScimGroup {
    type Error = StoreError;
    fn try_from(r: ScimGroupRow) -> Result<Self, StoreError> {
        let mut members = from_json::<Vec<UserId>>(&r.members)?;
        members.sort();
        members.dedup();
        Ok(ScimGroup {
            id: parse::<GroupId>(&r.id)?,
            display_name: r.display_name,
            external_id: r.external_id,
            members,
            revision: u64::try_from(r.revision).map_err(|_| StoreError::Corrupt(format!("revision {}", r.revision)))?,
            created_at: from_ts(r.created_at)?,
            updated_at: from_ts(r.updated_at)?,
        })
    }
}

/// A revision as stored (SQL integers are signed).
pub fn revision(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Unavailable(format!("revision {n} is beyond what the store holds")))
}

/// User ids as a JSON array, for a statement that takes a list.
pub fn ids<T: ToString>(ids: &[T]) -> Result<String, StoreError> {
    json(&ids.iter().map(ToString::to_string).collect::<Vec<_>>())
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
    pub may_act: Option<String>,
    pub authorization_details: String,
    pub reapproved_at: Option<i64>,
    pub reapprovals: i64,
    pub lapsed_at: Option<i64>,
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
            may_act: r
                .may_act
                .as_deref()
                .map(mandate_model::actors::MayAct::parse)
                .transpose()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            authorization_details: from_json(&r.authorization_details)?,
            reapproved_at: opt_ts(r.reapproved_at)?,
            reapprovals: u32::try_from(r.reapprovals)
                .map_err(|_| StoreError::Corrupt(format!("grant reapprovals {}", r.reapprovals)))?,
            lapsed_at: opt_ts(r.lapsed_at)?,
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
    pub approver_group: Option<String>,
    pub required: i64,
    /// A JSON array of user ids.
    pub approved_by: String,
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
            group: r.approver_group,
            required: u32::try_from(r.required).map_err(|_| StoreError::Corrupt(format!("required {}", r.required)))?,
            approved_by: from_json::<Vec<UserId>>(&r.approved_by)?,
        })
    }
}

/// The binding column of an approval: only action approvals have one.
pub fn approval_binding(a: &Approval) -> Option<&str> {
    match &a.subject {
        ApprovalSubject::Action { binding, .. } => Some(binding),
        ApprovalSubject::Grant { .. } | ApprovalSubject::Reapproval { .. } => None,
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

/// The record family a mutation writes, so that each store routes it to the
/// module holding that family's SQL. Every variant is classed here, once,
/// for both stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SCIM's tokens, its records of people, and its groups.
    Scim,
    Identity,
    Keys,
    Tokens,
    Grants,
    Approvals,
    /// CIBA delivery modes and callbacks, and the outbox.
    Deliveries,
    /// Shared Signals streams and the events waiting on them.
    Signals,
    /// Review campaigns and their items.
    Review,
    /// The inventory's samples (its peaks).
    Inventory,
    Audit,
}

/// The family of `m`.
pub fn family(m: &Mutation) -> Family {
    match m {
        Mutation::PutSettingIfAbsent { .. }
        | Mutation::InsertUser(..)
        | Mutation::UpdateUser(..)
        | Mutation::InsertUserToken { .. }
        | Mutation::RevokeUserToken { .. }
        | Mutation::InsertAgent(..)
        | Mutation::SetFederatedCredentials { .. }
        | Mutation::SetAgentLimits { .. }
        | Mutation::UpdateAgentRegistration { .. }
        | Mutation::NarrowAgentScopes { .. }
        | Mutation::SetAgentStatus { .. }
        | Mutation::InsertResource(..)
        | Mutation::PutPolicy(..)
        | Mutation::ExpectPolicyVersion(..)
        | Mutation::InsertSession(..)
        | Mutation::InsertUpstreamLink(..)
        | Mutation::RevokeSession { .. } => Family::Identity,
        Mutation::UpdatePersonIf { .. }
        | Mutation::InsertScimToken(..)
        | Mutation::RevokeScimToken { .. }
        | Mutation::PutScimUser { .. }
        | Mutation::InsertScimGroup(..)
        | Mutation::UpdateScimGroup { .. }
        | Mutation::DeleteScimGroup { .. }
        | Mutation::AddScimGroupMembers { .. }
        | Mutation::RemoveScimGroupMembers { .. }
        | Mutation::RemoveUserFromScimGroups { .. } => Family::Scim,
        Mutation::InsertSigningKey(..) | Mutation::RetireSigningKeys { .. } => Family::Keys,
        Mutation::RevokeTokensOfAgent { .. }
        | Mutation::RevokeTokensOfSubject { .. }
        | Mutation::RevokeTokensOfOwnedAgents { .. }
        | Mutation::ConsumeAssertionJti { .. }
        | Mutation::ConsumeDpopJti { .. }
        | Mutation::ConsumeGrantJti { .. }
        | Mutation::ReserveStatusIndexes { .. }
        | Mutation::InsertToken(..)
        | Mutation::RevokeToken { .. }
        | Mutation::RevokeTokensOfGrant { .. }
        | Mutation::InsertRefresh(..)
        | Mutation::UseRefresh { .. }
        | Mutation::RevokeRefreshFamily { .. }
        | Mutation::RevokeTokensOfFamily { .. }
        | Mutation::PurgeExpiredJtis { .. }
        | Mutation::SwapAttemptCounter { .. }
        | Mutation::ForgetAttemptCounter { .. }
        | Mutation::DecrementAttemptCounter { .. }
        | Mutation::PurgeAttemptCounters { .. } => Family::Tokens,
        Mutation::InsertGrant(..)
        | Mutation::RevokeGrant { .. }
        | Mutation::NarrowGrantScopes { .. }
        | Mutation::RevokeGrantsOfUser { .. }
        | Mutation::RevokeGrantsOfAgent { .. }
        | Mutation::TouchGrant { .. }
        | Mutation::ExtendGrant { .. }
        | Mutation::MarkGrantLapsed { .. }
        | Mutation::InsertAuthCode(..)
        | Mutation::UseAuthCode { .. } => Family::Grants,
        Mutation::InsertApproval(..)
        | Mutation::DecideApproval { .. }
        | Mutation::CountApproval { .. }
        | Mutation::ConsumeApproval { .. }
        | Mutation::PollApproval { .. } => Family::Approvals,
        Mutation::SetBackchannel { .. }
        | Mutation::InsertCibaCallback(..)
        | Mutation::InsertDelivery(..)
        | Mutation::LeaseDelivery { .. }
        | Mutation::FinishDelivery { .. } => Family::Deliveries,
        Mutation::InsertStream(..)
        | Mutation::UpdateStream(..)
        | Mutation::DeleteStream { .. }
        | Mutation::SetStreamStatus { .. }
        | Mutation::SignalRevocations { .. }
        | Mutation::SignalHolders { .. }
        | Mutation::SignalStream { .. }
        | Mutation::AckEvents { .. }
        | Mutation::RemoveStreamSubject { .. }
        | Mutation::AddStreamSubject { .. }
        | Mutation::ClaimVerification { .. }
        | Mutation::LeaseStream { .. }
        | Mutation::FinishPush { .. } => Family::Signals,
        Mutation::InsertCampaign(..)
        | Mutation::InsertReviewItem(..)
        | Mutation::DecideReviewItem { .. }
        | Mutation::CloseCampaign { .. } => Family::Review,
        Mutation::RecordInventorySamples { .. } | Mutation::PruneInventorySamples { .. } => Family::Inventory,
        Mutation::AppendAudit(..) | Mutation::InsertCheckpoint(..) => Family::Audit,
    }
}

/// A `review_campaigns` row, as the stores read and write it.
pub struct CampaignRow {
    pub id: String,
    pub scope: String,
    pub deadline: i64,
    pub default_decision: String,
    pub created_by: String,
    pub created_at: i64,
    pub status: String,
    pub closed_at: Option<i64>,
}

impl TryFrom<CampaignRow> for mandate_model::review::Campaign {
    type Error = StoreError;
    fn try_from(r: CampaignRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: parse(&r.id)?,
            scope: from_json(&r.scope)?,
            deadline: from_ts(r.deadline)?,
            default: parse(&r.default_decision)?,
            created_by: r.created_by,
            created_at: from_ts(r.created_at)?,
            status: parse(&r.status)?,
            closed_at: opt_ts(r.closed_at)?,
        })
    }
}

/// A `review_items` row, as the stores read and write it.
pub struct ReviewItemRow {
    pub id: String,
    pub campaign: String,
    pub finding: String,
    pub assignee: String,
    pub decision: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub outcome: Option<String>,
}

impl TryFrom<ReviewItemRow> for mandate_model::review::ReviewItem {
    type Error = StoreError;
    fn try_from(r: ReviewItemRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: parse(&r.id)?,
            campaign: parse(&r.campaign)?,
            finding: from_json(&r.finding)?,
            assignee: parse(&r.assignee)?,
            decision: r.decision.as_deref().map(parse).transpose()?,
            decided_by: r.decided_by,
            decided_at: opt_ts(r.decided_at)?,
            outcome: r.outcome.as_deref().map(from_json).transpose()?,
        })
    }
}

/// The `WHERE … ORDER BY … LIMIT` of a review item list, with `p(n)` the
/// store's placeholder for the `n`th value, and the values in order.
pub fn review_items_where(
    q: &mandate_core::store::ReviewItemQuery,
    p: impl Fn(usize) -> String,
) -> (String, Vec<ListValue>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    let filters = [("campaign", q.campaign.map(|c| c.to_string())), ("assignee", q.assignee.map(|a| a.to_string()))];
    for (column, value) in filters {
        if let Some(v) = value {
            values.push(ListValue::Text(v));
            clauses.push(format!("{column} = {}", p(values.len())));
        }
    }
    if let Some(after) = q.after {
        values.push(ListValue::Text(after.to_string()));
        clauses.push(format!("id > {}", p(values.len())));
    }
    if q.undecided {
        clauses.push("decision IS NULL".into());
    }
    if q.open {
        clauses.push(
            "EXISTS (SELECT 1 FROM review_campaigns c WHERE c.id = review_items.campaign AND c.status = 'open')".into(),
        );
    }
    let mut sql = String::new();
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    values.push(ListValue::Int(i64::from(q.limit)));
    sql.push_str(&format!(" ORDER BY id LIMIT {}", p(values.len())));
    (sql, values)
}

/// The `WHERE … ORDER BY … LIMIT` of a campaign list (newest first).
pub fn campaigns_where(
    q: &mandate_core::store::CampaignQuery,
    p: impl Fn(usize) -> String,
) -> (String, Vec<ListValue>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    if let Some(st) = q.status {
        values.push(ListValue::Text(st.as_str().into()));
        clauses.push(format!("status = {}", p(values.len())));
    }
    if let Some(b) = q.before {
        values.push(ListValue::Text(b.to_string()));
        clauses.push(format!("id < {}", p(values.len())));
    }
    let mut sql = String::new();
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    values.push(ListValue::Int(i64::from(q.limit)));
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", p(values.len())));
    (sql, values)
}

/// An `ssf_streams` row, as the stores read and write it.
pub struct StreamRow {
    pub id: String,
    pub resource_id: String,
    pub audience: String,
    pub status: String,
    pub status_reason: Option<String>,
    /// `push` or `poll`.
    pub method: String,
    pub endpoint_url: Option<String>,
    pub sealed_authorization: Option<Vec<u8>>,
    pub events: i64,
    pub description: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub failures: i64,
    pub next_at: i64,
    pub lease_holder: Option<String>,
    pub lease_until: Option<i64>,
    pub verified_at: Option<i64>,
}

impl TryFrom<&mandate_model::ssf::Stream> for StreamRow {
    type Error = StoreError;
    fn try_from(s: &mandate_model::ssf::Stream) -> Result<Self, StoreError> {
        use mandate_model::ssf::StreamDelivery;
        let (method, endpoint_url, sealed_authorization) = match &s.delivery {
            StreamDelivery::Push { endpoint_url, sealed_authorization } => {
                ("push", Some(endpoint_url.clone()), sealed_authorization.clone())
            }
            StreamDelivery::Poll => ("poll", None, None),
        };
        Ok(Self {
            id: s.id.to_string(),
            resource_id: s.resource.to_string(),
            audience: s.audience.clone(),
            status: s.status.as_str().to_owned(),
            status_reason: s.status_reason.clone(),
            method: method.to_owned(),
            endpoint_url,
            sealed_authorization,
            events: i64::from(s.events.bits()),
            description: s.description.clone(),
            created_at: ts(s.created_at)?,
            updated_at: ts(s.updated_at)?,
            failures: i64::from(s.failures),
            next_at: ts(s.next_at)?,
            lease_holder: s.lease_holder.clone(),
            lease_until: s.lease_until.map(ts).transpose()?,
            verified_at: s.verified_at.map(ts).transpose()?,
        })
    }
}

impl TryFrom<StreamRow> for mandate_model::ssf::Stream {
    type Error = StoreError;
    fn try_from(r: StreamRow) -> Result<Self, StoreError> {
        use mandate_model::ssf::{EventSet, StreamDelivery};
        let delivery = match (r.method.as_str(), r.endpoint_url) {
            ("push", Some(endpoint_url)) => {
                StreamDelivery::Push { endpoint_url, sealed_authorization: r.sealed_authorization }
            }
            ("poll", None) => StreamDelivery::Poll,
            (m, _) => return Err(StoreError::Corrupt(format!("stream {} delivery {m}", r.id))),
        };
        let events = u32::try_from(r.events)
            .ok()
            .and_then(|b| EventSet::from_bits(b).ok())
            .ok_or_else(|| StoreError::Corrupt(format!("stream {} events {}", r.id, r.events)))?;
        Ok(Self {
            id: parse(&r.id)?,
            resource: parse(&r.resource_id)?,
            audience: r.audience,
            status: parse(&r.status)?,
            status_reason: r.status_reason,
            delivery,
            events,
            description: r.description,
            created_at: from_ts(r.created_at)?,
            updated_at: from_ts(r.updated_at)?,
            failures: u32::try_from(r.failures).map_err(|_| StoreError::Corrupt(format!("failures {}", r.failures)))?,
            next_at: from_ts(r.next_at)?,
            lease_holder: r.lease_holder,
            lease_until: opt_ts(r.lease_until)?,
            verified_at: opt_ts(r.verified_at)?,
        })
    }
}

/// An `ssf_events` row, as the stores read it.
pub struct SignalRow {
    pub seq: i64,
    pub stream_id: String,
    pub kind: String,
    pub subject: String,
    pub principal: Option<String>,
    pub event_at: i64,
    pub initiating_entity: String,
    pub reason: String,
    pub detail: Option<String>,
}

impl TryFrom<SignalRow> for mandate_model::ssf::QueuedEvent {
    type Error = StoreError;
    fn try_from(r: SignalRow) -> Result<Self, StoreError> {
        use mandate_model::ssf::{Cause, Signal};
        Ok(Self {
            seq: u64::try_from(r.seq).map_err(|_| StoreError::Corrupt(format!("event seq {}", r.seq)))?,
            stream: parse(&r.stream_id)?,
            signal: Signal {
                kind: parse(&r.kind)?,
                subject: r.subject,
                principal: r.principal,
                at: from_ts(r.event_at)?,
                cause: Cause { initiating_entity: parse(&r.initiating_entity)?, reason: r.reason },
                detail: r.detail,
            },
        })
    }
}

/// A `deliveries` row, as the stores read it.
pub struct DeliveryRow {
    pub id: String,
    pub channel: String,
    pub about: String,
    pub target: String,
    pub sealed: Vec<u8>,
    pub status: String,
    pub attempts: i64,
    pub next_at: i64,
    pub lease_holder: Option<String>,
    pub lease_until: Option<i64>,
    pub created_at: i64,
    pub last_error: Option<String>,
}

impl TryFrom<DeliveryRow> for mandate_model::delivery::Delivery {
    type Error = StoreError;
    fn try_from(r: DeliveryRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: r.id,
            channel: r.channel,
            about: r.about,
            target: r.target,
            sealed: r.sealed,
            status: parse(&r.status)?,
            attempts: u32::try_from(r.attempts).map_err(|_| StoreError::Corrupt(format!("attempts {}", r.attempts)))?,
            next_at: from_ts(r.next_at)?,
            lease_holder: r.lease_holder,
            lease_until: opt_ts(r.lease_until)?,
            created_at: from_ts(r.created_at)?,
            last_error: r.last_error,
        })
    }
}

/// A `ciba_callbacks` row, as the stores read it.
pub struct CallbackRow {
    pub approval: String,
    pub agent: String,
    pub mode: String,
    pub endpoint: String,
    pub sealed_token: Vec<u8>,
}

impl TryFrom<CallbackRow> for mandate_model::delivery::CibaCallback {
    type Error = StoreError;
    fn try_from(r: CallbackRow) -> Result<Self, StoreError> {
        Ok(Self {
            approval: parse(&r.approval)?,
            agent: parse(&r.agent)?,
            mode: parse(&r.mode)?,
            endpoint: r.endpoint,
            sealed_token: r.sealed_token,
        })
    }
}

/// An `agent_backchannel` row's mode and endpoint, read back.
pub fn backchannel(mode: &str, endpoint: Option<String>) -> Result<mandate_model::delivery::Backchannel, StoreError> {
    Ok(mandate_model::delivery::Backchannel { mode: parse(mode)?, endpoint })
}

/// A value bound to an inventory list query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListValue {
    Text(String),
    Int(i64),
}

/// An inventory list's `WHERE` clause under construction: column names come
/// from the callers below only; every value is a parameter.
struct ListWhere<P: Fn(usize) -> String> {
    clauses: Vec<String>,
    values: Vec<ListValue>,
    placeholder: P,
}

impl<P: Fn(usize) -> String> ListWhere<P> {
    fn new(placeholder: P) -> Self {
        Self { clauses: Vec::new(), values: Vec::new(), placeholder }
    }

    /// The next parameter, bound to `v`.
    fn bind(&mut self, v: ListValue) -> String {
        self.values.push(v);
        (self.placeholder)(self.values.len())
    }

    /// Adds `template` with each `{}` replaced by a new parameter bound to
    /// `v` (the same value, bound once per occurrence).
    fn clause(&mut self, template: &str, v: ListValue) {
        let mut out = String::new();
        let mut parts = template.split("{}").peekable();
        while let Some(part) = parts.next() {
            out.push_str(part);
            if parts.peek().is_some() {
                let p = self.bind(v.clone());
                out.push_str(&p);
            }
        }
        self.clauses.push(out);
    }

    fn text(&mut self, template: &str, v: Option<String>) {
        if let Some(v) = v {
            self.clause(template, ListValue::Text(v));
        }
    }

    fn time(&mut self, template: &str, v: Option<OffsetDateTime>) -> Result<(), StoreError> {
        if let Some(t) = v {
            self.clause(template, ListValue::Int(ts(t)?));
        }
        Ok(())
    }

    /// `WHERE …` (or nothing), ordered newest first by id, at most `limit`.
    fn finish(mut self, limit: u32) -> (String, Vec<ListValue>) {
        let limit = self.bind(ListValue::Int(i64::from(limit)));
        let filter =
            if self.clauses.is_empty() { String::new() } else { format!(" WHERE {}", self.clauses.join(" AND ")) };
        (format!("{filter} ORDER BY id DESC LIMIT {limit}"), self.values)
    }
}

/// The tail of `SELECT … FROM users` for [`mandate_core::store::UserListQuery`]:
/// `WHERE`, `ORDER BY` and `LIMIT`, with its values in order.
/// `in_group(p)` spells "the person is in the group named by parameter `p`".
pub fn user_list_where(
    q: &mandate_core::store::UserListQuery,
    placeholder: impl Fn(usize) -> String,
    in_group: impl Fn(&str) -> String,
) -> (String, Vec<ListValue>) {
    let mut w = ListWhere::new(placeholder);
    w.text("status = {}", q.status.map(|s| user_status(s).to_owned()));
    w.text("id < {}", q.before.map(|b| b.to_string()));
    if let Some(g) = &q.group {
        let p = w.bind(ListValue::Text(g.clone()));
        w.clauses.push(in_group(&p));
    }
    w.finish(q.limit)
}

/// The tail of `SELECT … FROM agents` for [`mandate_core::store::AgentListQuery`].
pub fn agent_list_where(
    q: &mandate_core::store::AgentListQuery,
    placeholder: impl Fn(usize) -> String,
) -> Result<(String, Vec<ListValue>), StoreError> {
    let mut w = ListWhere::new(placeholder);
    w.text("owner = {}", q.owner.map(|o| o.to_string()));
    w.text("kind = {}", q.kind.map(|k| agent_kind(k).to_owned()));
    w.text("origin = {}", q.origin.map(|o| o.as_str().to_owned()));
    w.text("status = {}", q.status.map(|s| s.as_str().to_owned()));
    w.text("parent = {}", q.parent.map(|p| p.to_string()));
    w.time("(last_used_at IS NULL OR last_used_at < {})", q.used_before)?;
    w.time("last_used_at >= {}", q.used_after)?;
    w.time("expires_at < {}", q.expires_before)?;
    if q.not_retired {
        // Spelt as the partial index `agents_live` is, so that it is used.
        w.clauses.push("status <> 'retired'".into());
    }
    w.text("id < {}", q.before.map(|b| b.to_string()));
    Ok(w.finish(q.limit))
}

/// The tail of `SELECT … FROM grants` for [`mandate_core::store::GrantQuery`].
pub fn grant_list_where(
    q: &mandate_core::store::GrantQuery,
    placeholder: impl Fn(usize) -> String,
) -> Result<(String, Vec<ListValue>), StoreError> {
    use mandate_core::store::GrantState;
    let mut w = ListWhere::new(placeholder);
    w.text("user_id = {}", q.user.map(|u| u.to_string()));
    w.text("agent = {}", q.agent.map(|a| a.to_string()));
    w.text(
        "(user_id = {} OR agent IN (SELECT id FROM agents WHERE owner = {}))",
        q.user_or_owner.map(|u| u.to_string()),
    );
    w.text("resource = {}", q.resource.clone());
    match q.status {
        None => {}
        Some((GrantState::Revoked, _)) => w.clauses.push("status = 'revoked'".into()),
        Some((GrantState::Active, now)) => w.time("status = 'active' AND expires_at > {}", Some(now))?,
        Some((GrantState::Expired, now)) => w.time("status = 'active' AND expires_at <= {}", Some(now))?,
    }
    w.time("expires_at < {}", q.expires_before)?;
    w.time("(last_used_at IS NULL OR last_used_at < {})", q.used_before)?;
    w.text("id < {}", q.before.map(|b| b.to_string()));
    Ok(w.finish(q.limit))
}

/// The tail of `SELECT … FROM grants` for
/// [`mandate_core::store::LapsedQuery`]: newest report first, keyset on
/// (`lapsed_at`, id), read from the index on lapsed grants.
pub fn lapsed_list_where(
    q: &mandate_core::store::LapsedQuery,
    placeholder: impl Fn(usize) -> String,
) -> Result<(String, Vec<ListValue>), StoreError> {
    let mut w = ListWhere::new(placeholder);
    w.clauses.push("lapsed_at IS NOT NULL".into());
    w.time("lapsed_at >= {}", q.since)?;
    if let Some((at, id)) = q.before {
        let at = ts(at)?;
        let (a, b) = (w.bind(ListValue::Int(at)), w.bind(ListValue::Int(at)));
        let id = w.bind(ListValue::Text(id.to_string()));
        w.clauses.push(format!("(lapsed_at < {a} OR (lapsed_at = {b} AND id < {id}))"));
    }
    let limit = w.bind(ListValue::Int(i64::from(q.limit)));
    Ok((format!(" WHERE {} ORDER BY lapsed_at DESC, id DESC LIMIT {limit}", w.clauses.join(" AND ")), w.values))
}

/// The tail of `SELECT … FROM resources` for
/// [`mandate_core::store::ResourceListQuery`].
pub fn resource_list_where(
    q: &mandate_core::store::ResourceListQuery,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<ListValue>) {
    let mut w = ListWhere::new(placeholder);
    w.text("id < {}", q.before.map(|b| b.to_string()));
    w.finish(q.limit)
}

/// A count as SQL keeps it.
pub fn count(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Unavailable(format!("the count {n} is more than the store can hold")))
}

/// A count read back.
pub fn uncount(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("a negative count {n}")))
}

/// A grant row as the inventory tally reads it (ADR 0035).
pub fn grant_fact(
    owner: String,
    resource: String,
    scopes: String,
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
) -> Result<mandate_core::report::GrantFact, StoreError> {
    Ok(mandate_core::report::GrantFact {
        owner,
        resource,
        scopes,
        created_at: from_ts(created_at)?,
        expires_at: from_ts(expires_at)?,
        revoked_at: opt_ts(revoked_at)?,
    })
}

/// A token row, with its client agent's owner and kind when the client is
/// an agent, as the inventory tally reads it.
pub fn token_fact(
    owner: Option<String>,
    kind: Option<String>,
    audience: String,
    scopes: String,
    issued_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
) -> Result<mandate_core::report::TokenFact, StoreError> {
    let ephemeral = match kind.as_deref() {
        None => false,
        Some(k) => agent_kind_of(k)? == AgentKind::Ephemeral,
    };
    Ok(mandate_core::report::TokenFact {
        owner,
        ephemeral,
        audience,
        scopes,
        issued_at: from_ts(issued_at)?,
        expires_at: from_ts(expires_at)?,
        revoked_at: opt_ts(revoked_at)?,
    })
}

/// An agent row as the inventory tally reads it.
pub fn agent_fact(
    owner: String,
    kind: &str,
    created_at: i64,
    expires_at: Option<i64>,
    status: &str,
    retired_at: Option<i64>,
) -> Result<mandate_core::report::AgentFact, StoreError> {
    Ok(mandate_core::report::AgentFact {
        owner,
        ephemeral: agent_kind_of(kind)? == AgentKind::Ephemeral,
        created_at: from_ts(created_at)?,
        expires_at: opt_ts(expires_at)?,
        retired: parse::<AgentStatus>(status)? == AgentStatus::Retired,
        retired_at: opt_ts(retired_at)?,
    })
}

/// A row of peaks read back: a key with no sample in the last day has
/// peaked at nothing there (`max` over no rows is NULL).
pub fn peak(key: String, day: [Option<i64>; 3], week: [i64; 3]) -> Result<mandate_core::report::Peaks, StoreError> {
    let counts = |[g, t, e]: [i64; 3]| -> Result<mandate_core::report::Counts, StoreError> {
        Ok(mandate_core::report::Counts { grants: uncount(g)?, tokens: uncount(t)?, ephemeral_agents: uncount(e)? })
    };
    Ok(mandate_core::report::Peaks { key, peak_24h: counts(day.map(|n| n.unwrap_or(0)))?, peak_7d: counts(week)? })
}

#[cfg(test)]
mod list_tests {
    use super::*;
    use mandate_core::store::{AgentListQuery, GrantQuery};

    #[test]
    fn only_given_filters_become_parameters_in_order() -> Result<(), StoreError> {
        let owner: mandate_model::UserId =
            "usr_01J0000000000000000000000A".parse().map_err(|_| StoreError::Corrupt("id".into()))?;
        let q = AgentListQuery { owner: Some(owner), limit: 5, ..AgentListQuery::default() };
        let (sql, values) = agent_list_where(&q, |n| format!("?{n}"))?;
        assert_eq!(sql, " WHERE owner = ?1 ORDER BY id DESC LIMIT ?2");
        assert_eq!(values, vec![ListValue::Text(owner.to_string()), ListValue::Int(5)]);
        let q = AgentListQuery { not_retired: true, limit: 5, ..AgentListQuery::default() };
        let (sql, _) = agent_list_where(&q, |n| format!("?{n}"))?;
        assert_eq!(sql, " WHERE status <> 'retired' ORDER BY id DESC LIMIT ?1");
        let q = GrantQuery { user_or_owner: Some(owner), limit: 1, ..GrantQuery::default() };
        let (sql, values) = grant_list_where(&q, |n| format!("${n}"))?;
        assert_eq!(
            sql,
            " WHERE (user_id = $1 OR agent IN (SELECT id FROM agents WHERE owner = $2)) ORDER BY id DESC LIMIT $3"
        );
        assert_eq!(values.len(), 3);
        Ok(())
    }
}
