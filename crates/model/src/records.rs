//! The records Mandate keeps (DESIGN §1). Nothing is ever deleted: records
//! change status.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::details::{AuthorizationDetail, AuthorizationDetails};
use crate::{AgentId, ApprovalId, GrantId, GroupId, Jti, ModelError, ResourceId, Scope, ScopeSet, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    Active,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub email: String,
    /// The sign-in source of the person's Cedar groups: what the admin sets
    /// and an upstream IdP's groups claim replaces (ADR 0020).
    pub groups: Vec<String>,
    /// The SCIM source: the `displayName`s of the SCIM Groups listing the
    /// person, sorted. Stores fill it on read from the group tables; a
    /// write of the user never writes it (ADR 0020). The person's Cedar
    /// groups are the union of both sources.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scim_groups: Vec<String>,
    /// String attributes, exposed to Cedar as entity tags.
    pub attributes: BTreeMap<String, String>,
    pub status: UserStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(skip)]
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    Persistent,
    Ephemeral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Active,
    Suspended,
    Retired,
}

impl AgentStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Suspended => "suspended",
            AgentStatus::Retired => "retired",
        }
    }
}

impl FromStr for AgentStatus {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "active" => Ok(Self::Active),
            "suspended" => Ok(Self::Suspended),
            "retired" => Ok(Self::Retired),
            _ => Err(ModelError::InvalidField { field: "status", reason: format!("unknown agent status {s:?}") }),
        }
    }
}

/// A lifecycle move an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Suspend,
    Resume,
    Retire,
}

impl Lifecycle {
    /// The status this move leads to from `from`, or `None` when the move is
    /// not allowed. Retirement is final.
    pub fn apply(self, from: AgentStatus) -> Option<AgentStatus> {
        match (self, from) {
            (_, AgentStatus::Retired) => None,
            (Lifecycle::Suspend, AgentStatus::Active) => Some(AgentStatus::Suspended),
            (Lifecycle::Resume, AgentStatus::Suspended) => Some(AgentStatus::Active),
            (Lifecycle::Retire, _) => Some(AgentStatus::Retired),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Suspend => "suspend",
            Lifecycle::Resume => "resume",
            Lifecycle::Retire => "retire",
        }
    }
}

/// Who suspended an agent: only that level or a higher one may resume it
/// (SECURITY row 44). The admin is above the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuspendedBy {
    Owner,
    Admin,
}

impl SuspendedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            SuspendedBy::Owner => "owner",
            SuspendedBy::Admin => "admin",
        }
    }
}

impl FromStr for SuspendedBy {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "owner" => Ok(Self::Owner),
            "admin" => Ok(Self::Admin),
            _ => Err(ModelError::InvalidField { field: "suspended_by", reason: format!("unknown level {s:?}") }),
        }
    }
}

/// How an agent came to be (DESIGN §9): made by an admin or owner,
/// spawned by another agent, registered by itself (a client metadata
/// document or dynamic registration), or federated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentOrigin {
    Admin,
    Spawned,
    MetadataDocument,
    Dynamic,
    Federated,
}

impl AgentOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentOrigin::Admin => "admin",
            AgentOrigin::Spawned => "spawned",
            AgentOrigin::MetadataDocument => "metadata_document",
            AgentOrigin::Dynamic => "dynamic",
            AgentOrigin::Federated => "federated",
        }
    }

    /// Whether the client registered itself: nobody vouched for its name.
    pub fn is_self_registered(self) -> bool {
        matches!(self, AgentOrigin::MetadataDocument | AgentOrigin::Dynamic)
    }
}

impl FromStr for AgentOrigin {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "admin" => Ok(Self::Admin),
            "spawned" => Ok(Self::Spawned),
            "metadata_document" => Ok(Self::MetadataDocument),
            "dynamic" => Ok(Self::Dynamic),
            "federated" => Ok(Self::Federated),
            _ => Err(ModelError::InvalidField { field: "origin", reason: format!("unknown origin {s:?}") }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agent {
    pub id: AgentId,
    pub name: String,
    pub owner: UserId,
    pub kind: AgentKind,
    pub parent: Option<AgentId>,
    pub status: AgentStatus,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub description: Option<String>,
    /// The agent's own ceiling narrowing, when it was given one.
    pub scopes: Option<ScopeSet>,
    /// Public JWK set for `private_key_jwt`, as registered (already validated).
    pub jwks: Option<serde_json::Value>,
    pub redirect_uris: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// SHA-256 of the development-only client secret, hex.
    #[serde(skip)]
    pub secret_hash: Option<String>,
    /// While suspended: who suspended it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended_by: Option<SuspendedBy>,
    pub origin: AgentOrigin,
    /// For an agent of origin `metadata_document`: the document's URL,
    /// which is also the `client_id` the client sends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_url: Option<String>,
    /// A public client (`token_endpoint_auth_method: none`): it holds no
    /// credential, so it may use only the authorization code grant with
    /// PKCE.
    pub public: bool,
    /// Workload identity federation (DESIGN §10): JWTs from these issuers
    /// authenticate the agent, with no key of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federated_credentials: Vec<FederatedCredential>,
    /// Credential policy (DESIGN §13): limits that only tighten the
    /// server's defaults (and, for a spawned child, its parent's).
    #[serde(default)]
    pub limits: crate::limits::AgentLimits,
}

/// One workload identity rule of an agent, in the shape Entra and Google
/// use: a JWT from `issuer` whose `sub` is `subject` (or matches
/// `subject_pattern`, where `*` stands for any run of characters), whose
/// `aud` names one of `audiences` (Mandate's issuer or token endpoint when
/// empty) and whose claims hold every value in `claims`, authenticates the
/// agent. Validated when registered (`mandate-core`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedCredential {
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, serde_json::Value>,
    /// Each token's `jti` is accepted once (workload tokens are otherwise
    /// reused within their lifetime, as Kubernetes and CI runners do).
    #[serde(default)]
    pub single_use: bool,
}

impl FederatedCredential {
    /// Whether `sub` is the subject this rule names, or matches its pattern.
    pub fn subject_matches(&self, sub: &str) -> bool {
        match (&self.subject, &self.subject_pattern) {
            (Some(s), _) => s == sub,
            (None, Some(p)) => glob_matches(p, sub),
            (None, None) => false,
        }
    }

    /// What the store indexes the rule by: the exact subject, or the
    /// pattern (flagged as one).
    pub fn index_key(&self) -> (&str, bool) {
        match (&self.subject, &self.subject_pattern) {
            (Some(s), _) => (s.as_str(), false),
            (None, Some(p)) => (p.as_str(), true),
            (None, None) => ("", true),
        }
    }
}

/// `*` matches any run of characters (none included); every other
/// character matches itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else { return text.is_empty() };
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let tail: Vec<&str> = parts.collect();
    let Some((last, middle)) = tail.split_last() else { return rest.is_empty() };
    for piece in middle {
        match rest.split_once(piece) {
            Some((_, after)) => rest = after,
            None => return false,
        }
    }
    rest.ends_with(last)
}

impl Agent {
    /// Whether the agent may act at `now`: active and not past its expiry.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.status == AgentStatus::Active && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A person's own API token (approvals, their grants and agents): only
/// its hash is stored; it expires and can be revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserToken {
    pub id: crate::UserTokenId,
    pub user: UserId,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl UserToken {
    /// Whether it authenticates at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }

    pub fn status_at(&self, now: OffsetDateTime) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if now >= self.expires_at {
            "expired"
        } else {
            "active"
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    pub id: ResourceId,
    /// The absolute URI that tokens carry as `aud`.
    pub identifier: String,
    pub name: String,
    /// scope → the actions it covers; an empty list covers the action of the
    /// scope's own name.
    pub scopes: BTreeMap<String, Vec<String>>,
    pub jwks: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The agent that guards this resource as a gateway (DESIGN §9): it
    /// may ask the check API about this resource's tokens, and exchange
    /// them for the `exchange_to` audiences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<AgentId>,
    /// The audiences its gateway may exchange this resource's tokens for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exchange_to: Vec<String>,
    /// The `context` keys a check at this resource may carry, with their
    /// Cedar types (DESIGN §13). Any other key is refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, ContextType>,
    /// RFC 9396 types its tokens may carry, each with its JSON Schema and
    /// bounds (DESIGN §13).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub authorization_details_types: BTreeMap<String, crate::details::DetailType>,
}

/// The type of a `context` key a resource declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContextType {
    Long,
    String,
    Bool,
}

impl ContextType {
    /// Its name in a Cedar schema.
    pub fn as_str(self) -> &'static str {
        match self {
            ContextType::Long => "Long",
            ContextType::String => "String",
            ContextType::Bool => "Bool",
        }
    }
}

impl Resource {
    /// The actions a scope covers, or `None` when the resource has no such scope.
    pub fn actions_of(&self, scope: &Scope) -> Option<Vec<String>> {
        self.scopes
            .get(scope.as_str())
            .map(|actions| if actions.is_empty() { vec![scope.as_str().to_owned()] } else { actions.clone() })
    }

    /// Every action any scope of this resource covers.
    pub fn all_actions(&self) -> impl Iterator<Item = String> + '_ {
        self.scopes.iter().flat_map(
            |(scope, actions)| {
                if actions.is_empty() { vec![scope.clone()] } else { actions.clone() }
            },
        )
    }
}

/// Who authenticated at an OAuth endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientId {
    Agent(AgentId),
    Resource(ResourceId),
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientId::Agent(a) => a.fmt(f),
            ClientId::Resource(r) => r.fmt(f),
        }
    }
}

impl FromStr for ClientId {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        if s.starts_with("agt_") {
            s.parse().map(ClientId::Agent)
        } else if s.starts_with("res_") {
            s.parse().map(ClientId::Resource)
        } else {
            Err(ModelError::InvalidId { kind: "client", reason: "must be an agt_ or res_ id" })
        }
    }
}

/// Every access token Mandate issued, kept for revocation and introspection.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub jti: Jti,
    pub client_id: ClientId,
    /// `sub`: the user the agent acts for, or the agent itself.
    pub subject: String,
    pub audience: String,
    pub scopes: ScopeSet,
    pub grant: Option<GrantId>,
    pub parent: Option<Jti>,
    /// Agents from the first actor to the current one.
    pub chain: Vec<AgentId>,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub cnf_jkt: Option<String>,
    /// Position in the status lists (list = idx / list size), never reused.
    pub status_idx: Option<u64>,
    /// The refresh-token family that issued it, if any.
    pub family: Option<String>,
    pub revoked_at: Option<OffsetDateTime>,
}

impl TokenRecord {
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// Whether a grant is still in force. Expiry is not a stored status: it is
/// compared with the clock at every use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    Active,
    Revoked,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Active => "active",
            GrantStatus::Revoked => "revoked",
        }
    }
}

impl FromStr for GrantStatus {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "active" => Ok(Self::Active),
            "revoked" => Ok(Self::Revoked),
            _ => Err(ModelError::InvalidField { field: "status", reason: format!("unknown grant status {s:?}") }),
        }
    }
}

/// A living delegation (DESIGN §1): `user` lets `agent` use `scopes` at
/// `resource` for `purpose` until `expires_at`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Grant {
    pub id: GrantId,
    pub user: UserId,
    pub agent: AgentId,
    /// The resource identifier the grant is for.
    pub resource: String,
    pub scopes: ScopeSet,
    pub purpose: Option<String>,
    /// `policy`, or the id of the user who approved.
    pub approved_by: String,
    pub status: GrantStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// Who may act next for the user with what is issued under the grant
    /// (RFC 8693 §4.4 `may_act`), when the request or policy restricts it.
    #[serde(with = "crate::actors::as_list", skip_serializing_if = "Option::is_none")]
    pub may_act: Option<crate::actors::MayAct>,
    /// The RFC 9396 details the person (or policy) approved: tokens under
    /// the grant carry them.
    #[serde(skip_serializing_if = "AuthorizationDetails::is_empty")]
    pub authorization_details: AuthorizationDetails,
    /// The last reapproval that extended `expires_at` (ADR 0036).
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub reapproved_at: Option<OffsetDateTime>,
    /// How many reapprovals extended it.
    #[serde(skip_serializing_if = "is_zero")]
    pub reapprovals: u32,
    /// When housekeeping reported it lapsed: expired without being revoked
    /// (ADR 0036). Set once.
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub lapsed_at: Option<OffsetDateTime>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Grant {
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.status == GrantStatus::Active && now < self.expires_at
    }

    /// What the grant's status is at `now`, expiry included.
    pub fn status_at(&self, now: OffsetDateTime) -> &'static str {
        match self.status {
            GrantStatus::Revoked => "revoked",
            GrantStatus::Active if now >= self.expires_at => "expired",
            GrantStatus::Active => "active",
        }
    }
}

/// Where an approval request stands. `Expired` is computed from the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    /// Approved, and its token has been handed out (CIBA is single-use).
    Consumed,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Consumed => "consumed",
        }
    }
}

impl FromStr for ApprovalStatus {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "pending" => Ok(Self::Pending),
            "approved" => Ok(Self::Approved),
            "denied" => Ok(Self::Denied),
            "consumed" => Ok(Self::Consumed),
            _ => Err(ModelError::InvalidField { field: "status", reason: format!("unknown approval status {s:?}") }),
        }
    }
}

/// What an approval request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ApprovalSubject {
    /// A CIBA request for a grant of `scopes` at the approval's resource,
    /// with the RFC 9396 details the person is asked to approve.
    Grant {
        scopes: ScopeSet,
        requested_expiry: i64,
        /// Who may act next with the grant's tokens (ADR 0024).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        may_act: Option<crate::actors::MayAct>,
        #[serde(default, skip_serializing_if = "AuthorizationDetails::is_empty")]
        authorization_details: AuthorizationDetails,
    },
    /// Renewing a live grant (the approval's `grant`) for another grant
    /// lifetime, with the same `scopes` (ADR 0036); `purpose` replaces the
    /// grant's when given.
    Reapproval {
        scopes: ScopeSet,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        purpose: Option<String>,
    },
    /// One action on one checked resource, for the token chain `chain`.
    Action {
        action: String,
        target: String,
        chain: Vec<AgentId>,
        binding: String,
        /// The checked resource's properties, which the binding covers and
        /// the person must see (OWASP ASI09: the concrete action).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        properties: BTreeMap<String, String>,
        /// The checked RFC 9396 detail, which the binding covers too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authorization_detail: Option<AuthorizationDetail>,
        /// The check's `context` values that reached policy (the keys its
        /// resource declares, typed), which the binding covers too: an
        /// approval given for `amount` 50 is not one for 500. Empty in
        /// approvals recorded before it was kept.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        context: BTreeMap<String, serde_json::Value>,
    },
}

/// A pending human decision (DESIGN §1). The `approver` is the user whom
/// policy names (`@approval("user")` or `@approval("owner")`); an agent can
/// never be one. A group approval (`@approval("group:<name>")`, DESIGN §13)
/// names the `group` instead: any member decides, `required` distinct
/// members must approve, and `approver` then holds the user the request is
/// for, which gives no right to decide (ADR 0025).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Approval {
    pub id: ApprovalId,
    pub agent: AgentId,
    pub user: UserId,
    pub approver: UserId,
    /// The resource identifier.
    pub resource: String,
    pub subject: ApprovalSubject,
    pub binding_message: Option<String>,
    pub status: ApprovalStatus,
    /// `policy` when the request self-authorised, else the approver's id.
    pub decided_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    /// The grant an approved CIBA request created.
    pub grant: Option<GrantId>,
    /// The last time the agent polled for it (CIBA `slow_down`).
    #[serde(with = "time::serde::rfc3339::option")]
    pub polled_at: Option<OffsetDateTime>,
    /// The group whose members decide, for a group approval.
    pub group: Option<String>,
    /// How many distinct people must approve: 1, or `@approvals("N")`.
    pub required: u32,
    /// The members who approved so far, in order.
    pub approved_by: Vec<UserId>,
}

impl Approval {
    /// The status at `now`: a pending or unused approval past its time is
    /// expired.
    pub fn status_at(&self, now: OffsetDateTime) -> &'static str {
        match self.status {
            ApprovalStatus::Pending | ApprovalStatus::Approved if now >= self.expires_at => "expired",
            s => s.as_str(),
        }
    }
}

/// A refresh token as stored: only its hash. Tokens of one family descend
/// from one grant issuance; reusing a rotated one revokes the family.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshRecord {
    pub hash: String,
    pub family: String,
    pub grant: GrantId,
    pub client_id: AgentId,
    pub scopes: ScopeSet,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    /// The DPoP key thumbprint the family is bound to: every use must prove it.
    pub cnf_jkt: Option<String>,
}

/// An authorization code (OAuth 2.1 §4.1), issued when a person allows an
/// agent on the consent page. Only its SHA-256 is stored; it is redeemed
/// once, within a minute, by the agent, with the PKCE verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCodeRecord {
    pub hash: String,
    pub agent: AgentId,
    pub user: UserId,
    /// The grant the person gave; the code's tokens are issued under it.
    pub grant: GrantId,
    pub redirect_uri: String,
    /// base64url(SHA-256(code_verifier)) (S256 only).
    pub code_challenge: String,
    /// The DPoP key thumbprint the code is bound to (RFC 9449 §10).
    pub dpop_jkt: Option<String>,
    /// Whether the client asked for `offline_access` (a refresh token).
    pub offline: bool,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
}

/// A person linked to an identity at an upstream OpenID Connect provider
/// (DESIGN §10): the provider's `iss` and the `sub` it gave the person. A
/// person is found at sign-in by this pair, never by email alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamLink {
    pub issuer: String,
    pub subject: String,
    pub user: UserId,
    pub created_at: OffsetDateTime,
}

/// A bearer token the admin issued to a SCIM provisioning client (ADR
/// 0020): the secret is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimToken {
    /// `scim_` and the first 16 hex digits of `hash`.
    pub id: String,
    pub hash: String,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// What SCIM says of a person beyond the user record (ADR 0020): the
/// `userName` as the IdP sent it, its `externalId`, and the `name`,
/// `displayName` and `emails` it sent, kept to be answered back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimUserRecord {
    pub user: UserId,
    /// Unique without regard to case (RFC 7643 §4.1.1: `caseExact` false).
    pub user_name: String,
    pub external_id: Option<String>,
    /// A JSON object holding at most `name`, `displayName` and `emails`.
    pub profile: serde_json::Map<String, serde_json::Value>,
    /// Advanced by every SCIM write of the record (compare-and-swap).
    pub revision: u64,
    /// Set by a SCIM DELETE: the resource answers 404 from then on (RFC
    /// 7644 §3.6) while the person stays, disabled.
    pub deleted_at: Option<OffsetDateTime>,
}

impl ScimUserRecord {
    /// The key `user_name` is unique by: lower-cased.
    pub fn user_name_key(user_name: &str) -> String {
        user_name.to_lowercase()
    }
}

/// A SCIM Group (ADR 0020): its `displayName` is a Cedar group name that
/// every member has, besides the groups of the sign-in source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimGroup {
    pub id: GroupId,
    pub display_name: String,
    pub external_id: Option<String>,
    /// Sorted, without repeats.
    pub members: Vec<UserId>,
    /// Advanced by every write of the group (compare-and-swap).
    pub revision: u64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A person's sign-in session at the web pages. The cookie holds a secret
/// whose SHA-256 is `hash`; the cookie is never an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub hash: String,
    pub user: UserId,
    /// The session's CSRF token, echoed by every form.
    pub csrf: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_runs_of_characters() {
        let yes = [
            ("repo:acme/*:ref:refs/heads/main", "repo:acme/app:ref:refs/heads/main"),
            ("system:serviceaccount:prod:*", "system:serviceaccount:prod:runner"),
            ("*:prod", "ns:prod"),
            ("a*b*c", "abc"),
            ("a*b*c", "aXbYc"),
            ("exact", "exact"),
            ("a*", "a"),
        ];
        for (p, t) in yes {
            assert!(glob_matches(p, t), "{p} {t}");
        }
        let no = [
            ("repo:acme/*:ref:refs/heads/main", "repo:acme/app:ref:refs/heads/dev"),
            ("repo:acme/*", "repo:evil/acme/x"),
            ("a*b*c", "acb"),
            ("ab*ba", "aba"),
            ("exact", "exact2"),
            ("*:prod", "ns:prod:x"),
        ];
        for (p, t) in no {
            assert!(!glob_matches(p, t), "{p} {t}");
        }
    }

    #[test]
    fn retirement_is_final() {
        use AgentStatus::*;
        use Lifecycle::*;
        assert_eq!(Suspend.apply(Active), Some(Suspended));
        assert_eq!(Resume.apply(Suspended), Some(Active));
        assert_eq!(Retire.apply(Suspended), Some(Retired));
        assert_eq!(Retire.apply(Active), Some(Retired));
        assert_eq!(Resume.apply(Active), None);
        assert_eq!(Suspend.apply(Suspended), None);
        for op in [Suspend, Resume, Retire] {
            assert_eq!(op.apply(Retired), None);
        }
    }
}
