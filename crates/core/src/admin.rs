//! Administration use cases (DESIGN §7): users, their API tokens, agents and
//! their lifecycle, resources and policies.

use std::collections::{BTreeMap, BTreeSet};

use argon2::password_hash::{PasswordHasher, SaltString};
use mandate_jose::JwkSet;
use mandate_model::delivery::DeliveryMode;
use mandate_model::name::{self, MAX_DESCRIPTION_CHARS};
use mandate_model::records::{
    Agent, AgentKind, AgentOrigin, AgentStatus, FederatedCredential, Lifecycle, Resource, SuspendedBy, UpstreamLink,
    User, UserStatus, UserToken,
};
use mandate_model::ssf::{Cause, EventKind, InitiatingEntity, Signal};
use mandate_model::{AgentId, ResourceId, Scope, ScopeSet, UserId, UserTokenId};
use mandate_policy::{BUILTIN_ACTIONS, PolicyEngine};
use serde::Deserialize;
use time::Duration;

use crate::audit::{AuditRecord, kind};
use crate::ports::new_ulid;
use crate::service::{Caller, Mandate};
use crate::store::{Change, Mutation};
use crate::{Error, secrets};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub email: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub attributes: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub status: Option<UserStatus>,
    /// Links to add to upstream identities (DESIGN §10): sign-in through
    /// an `[[upstream_oidc]]` and ID-JAGs from a `[[trusted_issuer]]` with
    /// that issuer find the person by them.
    #[serde(default)]
    pub links: Option<Vec<LinkInput>>,
}

/// An upstream identity: the issuer's `iss` and the person's `sub` there.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkInput {
    pub issuer: String,
    pub sub: String,
}

const MAX_LINKS: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    pub name: String,
    pub owner: UserId,
    #[serde(default)]
    pub kind: Option<AgentKind>,
    #[serde(default)]
    pub parent: Option<AgentId>,
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// `none` registers a public client (authorization code with PKCE
    /// only, no credential); `private_key_jwt` (the default) needs `jwks`
    /// or `federated_credentials`.
    #[serde(default)]
    pub token_endpoint_auth_method: Option<ClientAuthMethod>,
    /// Workload identity rules (DESIGN §10): JWTs from trusted issuers
    /// that authenticate the agent, which then needs no key of its own.
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredential>,
    /// Credential policy (DESIGN §13): only tighter than the server's
    /// defaults, and for an ephemeral agent than its parent's limits, which
    /// it inherits.
    #[serde(default)]
    pub limits: Option<mandate_model::limits::AgentLimits>,
    /// CIBA delivery (OpenID CIBA §4): `poll` (the default), `ping` or
    /// `push`; the last two need the notification endpoint.
    #[serde(default)]
    pub backchannel_token_delivery_mode: Option<DeliveryMode>,
    #[serde(default)]
    pub backchannel_client_notification_endpoint: Option<String>,
}

/// How a client authenticates at the token endpoint, as a client may ask
/// for it when it is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    None,
    PrivateKeyJwt,
}

/// `PATCH /v1/agents/{id}` (admin). Status changes go through the
/// lifecycle (suspend, resume, retire).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPatch {
    /// Replaces the agent's workload identity rules; `[]` removes them.
    #[serde(default)]
    pub federated_credentials: Option<Vec<FederatedCredential>>,
    /// Replaces the agent's limits (DESIGN §13); `{}` leaves only the
    /// server's defaults (and, for an ephemeral agent, its parent's).
    #[serde(default)]
    pub limits: Option<mandate_model::limits::AgentLimits>,
    /// Replaces the agent's CIBA delivery mode and endpoint (both are set
    /// together: a mode alone sets no endpoint, as poll needs).
    #[serde(default)]
    pub backchannel_token_delivery_mode: Option<DeliveryMode>,
    #[serde(default)]
    pub backchannel_client_notification_endpoint: Option<String>,
}

/// `POST /v1/users/{id}/tokens`: every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUserToken {
    pub ttl_seconds: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewResource {
    pub identifier: String,
    pub name: String,
    pub scopes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// The persistent agent that guards this resource as a gateway
    /// (DESIGN §9).
    #[serde(default)]
    pub gateway: Option<AgentId>,
    /// The audiences the gateway may exchange this resource's tokens for.
    #[serde(default)]
    pub exchange_to: Vec<String>,
    /// The `context` keys a check at this resource may carry, with their
    /// types (DESIGN §13).
    #[serde(default)]
    pub context: std::collections::BTreeMap<String, mandate_model::records::ContextType>,
    /// RFC 9396 types its tokens may carry: a JSON Schema and bounds each
    /// (DESIGN §13).
    #[serde(default)]
    pub authorization_details_types: std::collections::BTreeMap<String, mandate_model::details::DetailType>,
}

const MAX_CONTEXT_KEYS: usize = 32;

/// A declared `context` key: a Cedar identifier Mandate does not set itself.
fn validate_context_key(key: &str) -> Result<(), Error> {
    let mut chars = key.chars();
    let ok = key.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(Error::BadInput(format!("context key {key:?} must match [a-z_][a-z0-9_]{{0,63}}")));
    }
    if mandate_policy::RESERVED_CONTEXT_KEYS.contains(&key) {
        return Err(Error::BadInput(format!("context key {key} is set by Mandate and cannot be declared")));
    }
    Ok(())
}

const MAX_EXCHANGE_TO: usize = 16;

pub(crate) const MAX_GROUPS: usize = 64;
const MAX_ATTRIBUTES: usize = 64;
pub(crate) const MAX_ATTRIBUTE_VALUE: usize = 256;
pub(crate) const MAX_REDIRECT_URIS: usize = 10;

/// Links an admin adds: bounded, issuer a URL, none twice.
fn validate_links(links: &[LinkInput], user: UserId, now: time::OffsetDateTime) -> Result<Vec<UpstreamLink>, Error> {
    if links.len() > MAX_LINKS {
        return Err(Error::BadInput(format!("at most {MAX_LINKS} links at once")));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(links.len());
    for l in links {
        let url_ok = url::Url::parse(&l.issuer).is_ok_and(|u| matches!(u.scheme(), "https" | "http"));
        if !url_ok || l.issuer.len() > 1024 {
            return Err(Error::BadInput(format!("links: issuer {:?} is not an http(s) URL", l.issuer)));
        }
        if l.sub.is_empty() || l.sub.len() > 1024 || l.sub.chars().any(char::is_control) {
            return Err(Error::BadInput("links: sub must be 1-1024 characters, no control characters".into()));
        }
        if !seen.insert((&l.issuer, &l.sub)) {
            return Err(Error::BadInput("links: a link is repeated".into()));
        }
        out.push(UpstreamLink { issuer: l.issuer.clone(), subject: l.sub.clone(), user, created_at: now });
    }
    Ok(out)
}

pub(crate) fn validate_groups(groups: &[String]) -> Result<Vec<String>, Error> {
    if groups.len() > MAX_GROUPS {
        return Err(Error::BadInput(format!("at most {MAX_GROUPS} groups")));
    }
    let mut seen = BTreeSet::new();
    for g in groups {
        name::validate_label("groups", g)?;
        if !seen.insert(g) {
            return Err(Error::BadInput(format!("group {g:?} is repeated")));
        }
    }
    Ok(groups.to_vec())
}

pub(crate) fn validate_attributes(attrs: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Error> {
    if attrs.len() > MAX_ATTRIBUTES {
        return Err(Error::BadInput(format!("at most {MAX_ATTRIBUTES} attributes")));
    }
    for (k, v) in attrs {
        name::validate_label("attributes", k)?;
        name::validate_text("attributes", v, MAX_ATTRIBUTE_VALUE)?;
    }
    Ok(attrs.clone())
}

fn validate_action(a: &str) -> Result<(), Error> {
    if a.is_empty() || a.len() > 128 || !a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b)) {
        return Err(Error::BadInput(format!("action {a:?} must be 1-128 of A-Z a-z 0-9 - _ . : /")));
    }
    if a.starts_with("mandate:") {
        return Err(Error::BadInput(format!("action {a:?}: the mandate: prefix is reserved")));
    }
    Ok(())
}

/// RFC 9700 §2.1: redirect URIs are registered exactly; https, or http on a
/// loopback address for native apps.
pub(crate) fn validate_redirect_uri(uri: &str) -> Result<(), Error> {
    // Loopback means the host exactly (not `localhost.evil.example`).
    let parsed = url::Url::parse(uri).ok().filter(|u| {
        // Spelt the one way it is compared (not `https:host`), with a host
        // and no user info.
        uri.starts_with(&format!("{}://", u.scheme()))
            && u.host_str().is_some_and(|h| !h.is_empty())
            && u.username().is_empty()
            && u.password().is_none()
            && u.fragment().is_none()
    });
    let ok_scheme = parsed.as_ref().is_some_and(|u| u.scheme() == "https" || name::is_loopback_http(u));
    // Characters that could split a header or a CSP directive are refused.
    let plain = uri.bytes().all(|b| b.is_ascii_graphic() && !b"\"';,<>\\`{}|^".contains(&b));
    if !ok_scheme || uri.contains('#') || uri.len() > 2048 || !plain {
        return Err(Error::BadInput(format!(
            "redirect URI {uri:?} must be https (or loopback http), without a fragment"
        )));
    }
    Ok(())
}

/// The mutations [`Mandate::deactivation`] added, by handle.
#[derive(Debug, Default)]
pub(crate) struct Deactivation {
    /// Token revocations (the agent's, then each descendant's).
    pub(crate) revocations: Vec<crate::store::Handle>,
    pub(crate) grant_revocations: Vec<crate::store::Handle>,
    /// The descendants retired, each with its token revocation.
    pub(crate) children: Vec<(Agent, crate::store::Handle)>,
}

/// What a lifecycle change reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cascade {
    /// Tokens revoked, exchanged descendants included.
    pub tokens: u64,
    /// Grants revoked.
    pub grants: u64,
    /// Ephemeral descendants retired with the agent.
    pub retired: Vec<AgentId>,
}

impl Mandate {
    pub async fn create_user(&self, caller: Caller, new: NewUser) -> Result<User, Error> {
        self.require_admin(caller).await?;
        let name = name::validate_name(&new.name)?;
        let email = name::validate_email(&new.email)?;
        let groups = validate_groups(&new.groups)?;
        let attributes = validate_attributes(&new.attributes)?;
        let password_hash = match new.password.as_deref() {
            None => None,
            Some(p) if p.chars().count() < 8 || p.len() > 1024 => {
                return Err(Error::BadInput("password must be 8 to 1024 characters".into()));
            }
            Some(p) => Some(self.hash_password(p).await?),
        };
        if self.store.user_by_email(&email).await?.is_some() {
            return Err(Error::Conflict(format!("a user with email {email} exists")));
        }
        let user = User {
            id: UserId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?),
            name,
            email,
            groups,
            attributes,
            status: UserStatus::Active,
            created_at: self.clock.now(),
            password_hash,
            scim_groups: Vec::new(),
        };
        let mut event = self.admin_event(kind::USER_CREATED, caller);
        event.subject = Some(user.id.to_string());
        self.store
            .commit(Change::new().with(Mutation::InsertUser(user.clone())).with(AuditRecord::new(event).mutation()))
            .await?;
        Ok(user)
    }

    /// Refuses, and records the refusal of, a call this caller may not make.
    async fn forbid<T>(&self, caller: Caller, why: &str) -> Result<T, Error> {
        self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), why).await?;
        Err(Error::Forbidden(why.into()))
    }

    /// argon2id of `password`, computed off the async workers (it takes a
    /// core and 19 MiB for tens of milliseconds), two at a time with the
    /// sign-in checks.
    async fn hash_password(&self, password: &str) -> Result<String, Error> {
        let mut salt = [0u8; 16];
        self.rng.fill(&mut salt)?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Unavailable(e.to_string()))?;
        let _permit = self.sign_in_failures.password_checks().await?;
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            argon2::Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::Unavailable(e.to_string()))
        })
        .await
        .map_err(|e| Error::Unavailable(format!("the password hash stopped: {e}")))?
    }

    pub async fn get_user(&self, caller: Caller, id: UserId) -> Result<User, Error> {
        match caller {
            Caller::Admin => {}
            Caller::User(me) | Caller::ConsoleAdmin(me) if me == id => {}
            Caller::User(_) | Caller::ConsoleAdmin(_) => {
                return self.forbid(caller, "a user may read only their own record").await;
            }
        }
        self.store.user(id).await?.ok_or_else(|| Error::NotFound(format!("user {id}")))
    }

    /// Changes take effect on the next decision. Disabling a user revokes
    /// every token issued on their behalf.
    pub async fn update_user(&self, caller: Caller, id: UserId, patch: UserPatch) -> Result<User, Error> {
        self.require_admin(caller).await?;
        let mut user = self.store.user(id).await?.ok_or_else(|| Error::NotFound(format!("user {id}")))?;
        let groups_before = user.groups.clone();
        if let Some(groups) = &patch.groups {
            user.groups = validate_groups(groups)?;
        }
        if let Some(attributes) = &patch.attributes {
            user.attributes = validate_attributes(attributes)?;
        }
        let mut changed: Vec<String> = Vec::new();
        if patch.groups.is_some() {
            changed.push("groups".into());
        }
        if patch.attributes.is_some() {
            changed.push("attributes".into());
        }
        let now = self.clock.now();
        let links = match &patch.links {
            None => Vec::new(),
            Some(l) => validate_links(l, id, now)?,
        };
        for l in &links {
            changed.push(format!("linked to {} at {}", crate::request::bounded_input(&l.subject), l.issuer));
        }
        let disabling = patch.status == Some(UserStatus::Disabled) && user.status != UserStatus::Disabled;
        if let Some(status) = patch.status {
            changed.push(if status == UserStatus::Disabled { "status: disabled" } else { "status: active" }.into());
            user.status = status;
        }
        let mut change = Change::new().with(Mutation::UpdateUser(user.clone()));
        // A link another person holds already is a conflict: nothing is written.
        for l in links {
            change.push(Mutation::InsertUpstreamLink(l));
        }
        let mut counted = Vec::new();
        if disabling {
            counted.push(change.push(Mutation::RevokeTokensOfSubject { subject: id.to_string(), at: now }));
            // The agents they are accountable for stop too (OWASP NHI1).
            counted.push(change.push(Mutation::RevokeTokensOfOwnedAgents { owner: id, at: now }));
            change.push(Mutation::RevokeGrantsOfUser { user: id, at: now });
            Mandate::signal_revocations(
                &mut change,
                now,
                Cause::new(InitiatingEntity::Admin, "the person was disabled"),
            );
        }
        // A group taken away narrows what the person's live tokens may do
        // (policies decide by group): CAEP token-claims-change.
        let removed: Vec<&String> = groups_before.iter().filter(|g| !user.groups.contains(g)).collect();
        if !disabling && !removed.is_empty() {
            let detail = serde_json::json!({ "claims": { "groups": user.groups } }).to_string();
            change.push(Mutation::SignalHolders {
                holder: id.to_string(),
                signal: Signal {
                    kind: EventKind::TokenClaimsChange,
                    subject: id.to_string(),
                    principal: None,
                    at: now,
                    cause: Cause::new(
                        InitiatingEntity::Admin,
                        format!(
                            "groups removed: {}",
                            removed.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    ),
                    detail: Some(detail),
                },
            });
        }
        let mut event = self.admin_event(kind::USER_UPDATED, caller);
        event.subject = Some(id.to_string());
        event.reason = Some(if changed.is_empty() { "no change".into() } else { changed.join(", ") });
        change.push(AuditRecord::counting(event, &counted).mutation());
        self.commit_signalling(change).await?;
        Ok(user)
    }

    /// A user's own API token; the secret is returned once and stored
    /// hashed. It expires after `ttl_seconds` (default 30 days, at most a
    /// year) and can be listed and revoked. Only the admin makes them: a
    /// token cannot mint its own successors.
    pub async fn create_user_token(
        &self,
        caller: Caller,
        id: UserId,
        new: NewUserToken,
    ) -> Result<(String, UserToken), Error> {
        self.require_admin(caller).await?;
        let ttl = new.ttl_seconds.unwrap_or(self.config.user_token_ttl);
        if !(60..=self.config.max_user_token_ttl).contains(&ttl) {
            return Err(Error::BadInput(format!(
                "ttl_seconds must be 60 to {} (a year)",
                self.config.max_user_token_ttl
            )));
        }
        let user = self.store.user(id).await?.ok_or_else(|| Error::NotFound(format!("user {id}")))?;
        if user.status != UserStatus::Active {
            return Err(Error::Conflict("the user is disabled".into()));
        }
        let secret = secrets::generate(secrets::USER_TOKEN_PREFIX, self.rng.as_ref())?;
        let now = self.clock.now();
        let token = UserToken {
            id: UserTokenId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?),
            user: id,
            created_at: now,
            expires_at: now + Duration::seconds(ttl),
            revoked_at: None,
        };
        let mut event = self.admin_event(kind::USER_TOKEN_CREATED, caller);
        event.subject = Some(id.to_string());
        event.reason = Some(format!("{} until {}", token.id, crate::audit::event_time(token.expires_at)));
        self.store
            .commit(
                Change::new()
                    .with(Mutation::InsertUserToken { token: token.clone(), hash: secrets::hash(&secret) })
                    .with(AuditRecord::new(event).mutation()),
            )
            .await?;
        Ok((secret, token))
    }

    /// A person's API tokens (never their secrets), for the admin and for
    /// the person.
    pub async fn list_user_tokens(&self, caller: Caller, id: UserId) -> Result<Vec<UserToken>, Error> {
        match caller {
            Caller::Admin => {}
            Caller::User(me) | Caller::ConsoleAdmin(me) if me == id => {}
            Caller::User(_) | Caller::ConsoleAdmin(_) => {
                return self.forbid(caller, "a person may list only their own API tokens").await;
            }
        }
        self.store.user(id).await?.ok_or_else(|| Error::NotFound(format!("user {id}")))?;
        Ok(self.store.user_tokens(id).await?)
    }

    /// Revokes one of a person's API tokens, for the admin and for the
    /// person; it stops working at once, on every node.
    pub async fn revoke_user_token(&self, caller: Caller, id: UserId, token: UserTokenId) -> Result<UserToken, Error> {
        match caller {
            Caller::Admin => {}
            Caller::User(me) | Caller::ConsoleAdmin(me) if me == id => {}
            Caller::User(_) | Caller::ConsoleAdmin(_) => {
                return self.forbid(caller, "a person may revoke only their own API tokens").await;
            }
        }
        let mut found = self
            .store
            .user_tokens(id)
            .await?
            .into_iter()
            .find(|t| t.id == token)
            .ok_or_else(|| Error::NotFound(format!("API token {token}")))?;
        if found.revoked_at.is_some() {
            return Err(Error::Conflict(format!("API token {token} is already revoked")));
        }
        let now = self.clock.now();
        let mut event = self.admin_event(kind::USER_TOKEN_REVOKED, caller);
        event.subject = Some(id.to_string());
        event.reason = Some(token.to_string());
        let mut change = Change::new();
        let revoked = change.push(Mutation::RevokeUserToken { id: token, user: id, at: now });
        change.push(AuditRecord::counting(event, &[revoked]).mutation());
        self.store.commit(change).await?;
        found.revoked_at = Some(now);
        Ok(found)
    }

    /// Registers an agent. Returns a client secret only when no `jwks` was
    /// given and development secrets are enabled.
    pub async fn create_agent(&self, caller: Caller, new: NewAgent) -> Result<(Agent, Option<String>), Error> {
        self.require_admin(caller).await?;
        let event = self.admin_event(kind::AGENT_CREATED, caller);
        match self.register_agent(new, event).await {
            // A registration its limits refuse is recorded, and stores
            // nothing (other bad input is only answered, as before).
            Err(e) if crate::limits::is_limit_refusal(&e) => {
                self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), &format!("agent: {e}")).await?;
                Err(e)
            }
            other => other,
        }
    }

    /// An agent spawns an ephemeral child of itself (DESIGN §7) with an
    /// access token it got by `client_credentials` for `mandate:spawn` on
    /// the issuer. The child has its parent's owner, a ceiling within its
    /// parent's, and a capped lifetime.
    /// `proof` is the request's `DPoP` header when the token was presented
    /// under the `DPoP` scheme (`None` for `Bearer`).
    pub async fn spawn_agent(
        &self,
        token: &str,
        proof: Option<&str>,
        mut new: NewAgent,
    ) -> Result<(Agent, Option<String>), Error> {
        let live = match self.live_chain(token).await? {
            Ok(l) => l,
            Err(why) => {
                self.record_admin_refusal(kind::ADMIN_AUTH_FAILED, None, &format!("spawn: {why}")).await?;
                return Err(Error::Unauthenticated);
            }
        };
        if let Err(why) = self.sender_constrained(token, live.claims.cnf.as_ref(), proof, "/v1/agents").await {
            self.record_admin_refusal(kind::ADMIN_AUTH_FAILED, None, &format!("spawn: {why}")).await?;
            return Err(Error::Unauthenticated);
        }
        let parent = match (&live.chain, live.current()) {
            (Some(c), Some(agent)) if c.user().is_none() && c.depth() == 1 => agent.clone(),
            _ => return self.refuse_spawn(&live, "spawning needs the agent's own client_credentials token").await,
        };
        if live.record.audience != self.config.issuer
            || !live.record.scopes.iter().any(|s| s.as_str() == "mandate:spawn")
        {
            return self.refuse_spawn(&live, "the token does not carry mandate:spawn on the issuer").await;
        }
        let related = self.related(&[&parent], &[]).await?;
        let facts = self.facts(None, &[&parent], live.record.cnf_jkt.is_some());
        let d = self.fresh_engine().await?.decide_with(
            mandate_policy::Principal::Agent(&parent),
            "mandate:spawn",
            mandate_policy::Target::Api(&self.config.issuer),
            &related,
            &facts,
        );
        if !d.allowed {
            return self.refuse_spawn(&live, "policy does not allow mandate:spawn").await;
        }
        if new.kind.is_some_and(|k| k != AgentKind::Ephemeral) || new.parent.is_some_and(|p| p != parent.id) {
            return self.refuse_spawn(&live, "an agent may spawn only ephemeral children of itself").await;
        }
        if new.owner != parent.owner {
            return self.refuse_spawn(&live, "a spawned agent has its parent's owner").await;
        }
        if !new.redirect_uris.is_empty() {
            return Err(Error::BadInput("a spawned agent has no redirect URIs".into()));
        }
        new.kind = Some(AgentKind::Ephemeral);
        new.parent = Some(parent.id);
        let mut event = self.event(kind::AGENT_CREATED);
        event.decision = Some(crate::audit::ALLOW.into());
        event.actor = Some(parent.id.to_string());
        event.client_id = Some(parent.id.to_string());
        event.jti = Some(live.record.jti.to_string());
        match self.register_agent(new, event).await {
            // A spawn its parent's limits refuse is recorded, and stores nothing.
            Err(e) if crate::limits::is_limit_refusal(&e) => {
                self.record_spawn_refusal(&live, &e.to_string()).await?;
                Err(e)
            }
            other => other,
        }
    }

    async fn refuse_spawn<T>(&self, live: &crate::chain::LiveToken, why: &str) -> Result<T, Error> {
        self.record_spawn_refusal(live, why).await?;
        Err(Error::Forbidden(why.into()))
    }

    async fn record_spawn_refusal(&self, live: &crate::chain::LiveToken, why: &str) -> Result<(), Error> {
        let mut event = self.event(kind::ADMIN_DENIED);
        event.decision = Some(crate::audit::DENY.into());
        event.actor = Some(live.record.client_id.to_string());
        event.jti = Some(live.record.jti.to_string());
        event.reason = Some(format!("spawn: {why}"));
        self.record(event).await
    }

    /// Validates and registers one agent. (Long on purpose: it is the
    /// contract's list of registration rules (DESIGN §1 and §7) in its order,
    /// each a few lines, and every rule reads the same validated values.)
    async fn register_agent(
        &self,
        new: NewAgent,
        mut event: mandate_audit::Event,
    ) -> Result<(Agent, Option<String>), Error> {
        let now = self.clock.now();
        let name = name::validate_name(&new.name)?;
        let description = new
            .description
            .as_deref()
            .map(|d| name::validate_text("description", d, MAX_DESCRIPTION_CHARS))
            .transpose()?;
        if new.redirect_uris.len() > MAX_REDIRECT_URIS {
            return Err(Error::BadInput(format!("at most {MAX_REDIRECT_URIS} redirect URIs")));
        }
        for uri in &new.redirect_uris {
            validate_redirect_uri(uri)?;
        }
        let owner = self
            .store
            .user(new.owner)
            .await?
            .ok_or_else(|| Error::BadInput(format!("owner {} does not exist", new.owner)))?;
        if owner.status != UserStatus::Active {
            return Err(Error::BadInput(format!("owner {} is disabled", new.owner)));
        }
        let mut scopes = match &new.scopes {
            None => None,
            Some(list) => Some(ScopeSet::from_iter_checked(list.iter().map(|s| Scope::parse(s)))?),
        };
        let backchannel =
            match (new.backchannel_token_delivery_mode, new.backchannel_client_notification_endpoint.as_deref()) {
                (None, None) => None,
                (mode, endpoint) => Some(self.check_backchannel(mode.unwrap_or_default(), endpoint)?),
            };
        let kind = new.kind.unwrap_or(AgentKind::Persistent);
        let asked_limits = new.limits.clone().unwrap_or_default();
        let (parent, expires_at, limits) = match kind {
            AgentKind::Persistent => {
                if new.parent.is_some() || new.ttl_seconds.is_some() {
                    return Err(Error::BadInput("parent and ttl_seconds are for ephemeral agents".into()));
                }
                asked_limits.check_within(&self.config.default_limits())?;
                (None, None, asked_limits)
            }
            AgentKind::Ephemeral => {
                let parent_id =
                    new.parent.ok_or_else(|| Error::BadInput("an ephemeral agent needs a parent".into()))?;
                let parent = self
                    .store
                    .agent(parent_id)
                    .await?
                    .ok_or_else(|| Error::BadInput(format!("parent {parent_id} does not exist")))?;
                if !parent.is_live(now) {
                    return Err(Error::BadInput(format!("parent {parent_id} is not active")));
                }
                if parent.owner != new.owner {
                    return Err(Error::BadInput(format!(
                        "an ephemeral agent has its parent's owner ({})",
                        parent.owner
                    )));
                }
                // The parent's limits bound the child's (DESIGN §13): it
                // inherits them, and may only tighten them.
                let in_force = self.limits_of(&parent).await?;
                asked_limits.check_within(&in_force)?;
                let max_ttl = in_force.max_ephemeral_ttl;
                let ttl = new.ttl_seconds.unwrap_or(max_ttl);
                if ttl <= 0 || ttl > max_ttl {
                    return Err(Error::BadInput(format!(
                        "ttl_seconds must be 1 to {max_ttl} (limits.max_ephemeral_ttl of {parent_id})"
                    )));
                }
                // Counted before the child is stored: spawns at the same
                // instant can pass the limit by as many as arrive together.
                let live = self.store.agent_children(parent_id).await?.iter().filter(|c| c.is_live(now)).count();
                if u64::try_from(live).unwrap_or(u64::MAX) >= in_force.max_ephemeral_children {
                    return Err(Error::Forbidden(format!(
                        "limits.max_ephemeral_children: {parent_id} already has {live} live ephemeral children, at most {}",
                        in_force.max_ephemeral_children
                    )));
                }
                let mut expires = now + Duration::seconds(ttl);
                if let Some(pe) = parent.expires_at {
                    expires = expires.min(pe);
                }
                // The child's ceiling is its parent's, narrowed.
                if let Some(parent_scopes) = &parent.scopes {
                    scopes = Some(match scopes {
                        Some(s) => s.narrow_to(parent_scopes),
                        None => parent_scopes.clone(),
                    });
                }
                (Some(parent_id), Some(expires), parent.limits.tightest(&asked_limits))
            }
        };
        let jwks = match &new.jwks {
            Some(v) => {
                JwkSet::from_json(v).map_err(|e| Error::BadInput(format!("jwks: {e}")))?;
                Some(v.clone())
            }
            None => None,
        };
        let public = new.token_endpoint_auth_method == Some(ClientAuthMethod::None);
        crate::trust::validate_rules(&new.federated_credentials, &self.config.trusted_issuers)?;
        let federated = !new.federated_credentials.is_empty();
        if public && federated {
            return Err(Error::BadInput("a public client holds no credential: no federated_credentials".into()));
        }
        if public && (jwks.is_some() || kind == AgentKind::Ephemeral) {
            return Err(Error::BadInput(
                "a public client (token_endpoint_auth_method none) has no jwks and is not ephemeral".into(),
            ));
        }
        if public && new.redirect_uris.is_empty() {
            return Err(Error::BadInput("a public client needs redirect_uris: it may only use the code flow".into()));
        }
        let secret = match jwks {
            _ if public || federated => None,
            Some(_) => None,
            None if self.config.allow_client_secrets => {
                Some(secrets::generate(secrets::CLIENT_SECRET_PREFIX, self.rng.as_ref())?)
            }
            None => {
                return Err(Error::BadInput(
                    "jwks or federated_credentials is required: register the agent's public keys for \
                     private_key_jwt, or the workload identity it authenticates with"
                        .into(),
                ));
            }
        };
        let agent = Agent {
            id: AgentId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?),
            name,
            owner: new.owner,
            kind,
            parent,
            status: AgentStatus::Active,
            expires_at,
            description,
            scopes,
            jwks,
            redirect_uris: new.redirect_uris,
            created_at: now,
            secret_hash: secret.as_deref().map(secrets::hash),
            suspended_by: None,
            origin: if kind == AgentKind::Ephemeral { AgentOrigin::Spawned } else { AgentOrigin::Admin },
            metadata_url: None,
            public,
            federated_credentials: new.federated_credentials,
            limits,
        };
        event.subject = Some(agent.owner.to_string());
        event.resource = Some(agent.id.to_string());
        event.scope = agent.scopes.as_ref().map(ScopeSet::to_claim);
        event.reason = Some(match agent.parent {
            Some(p) => format!("ephemeral child of {p}"),
            None => "persistent".into(),
        });
        let mut change = Change::new().with(Mutation::InsertAgent(agent.clone()));
        if let Some(backchannel) = backchannel {
            change.push(Mutation::SetBackchannel { agent: agent.id, backchannel });
        }
        self.store.commit(change.with(AuditRecord::new(event).mutation())).await?;
        Ok((agent, secret))
    }

    /// Replaces an agent's workload identity rules (admin). Takes effect
    /// at the next authentication, on every node (the store epoch moves).
    pub async fn update_agent(&self, caller: Caller, id: AgentId, patch: AgentPatch) -> Result<Agent, Error> {
        self.require_admin(caller).await?;
        let agent = self.store.agent(id).await?.ok_or_else(|| Error::NotFound(format!("agent {id}")))?;
        match self.patch_agent(caller, agent, patch).await {
            // A change its limits refuse is recorded, and changes nothing.
            Err(e) if crate::limits::is_limit_refusal(&e) => {
                self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), &format!("agent {id}: {e}")).await?;
                Err(e)
            }
            other => other,
        }
    }

    async fn patch_agent(&self, caller: Caller, mut agent: Agent, patch: AgentPatch) -> Result<Agent, Error> {
        let id = agent.id;
        let mut change = Change::new();
        let mut said = Vec::new();
        let now = self.clock.now();
        if let Some(rules) = patch.federated_credentials {
            crate::trust::validate_rules(&rules, &self.config.trusted_issuers)?;
            if agent.public && !rules.is_empty() {
                return Err(Error::BadInput("a public client holds no credential: no federated_credentials".into()));
            }
            if rules.is_empty() && agent.jwks.is_none() && agent.secret_hash.is_none() && !agent.public {
                return Err(Error::BadInput(
                    "the agent would have no credential left: it has no jwks, so keep a federated credential".into(),
                ));
            }
            said.push(format!(
                "federated_credentials: {}",
                if rules.is_empty() {
                    "none".to_owned()
                } else {
                    rules.iter().map(|r| r.issuer.as_str()).collect::<Vec<_>>().join(", ")
                }
            ));
            change.push(Mutation::SetFederatedCredentials { id, credentials: rules.clone(), at: now });
            let entity = match caller {
                Caller::Admin => InitiatingEntity::Admin,
                Caller::User(_) | Caller::ConsoleAdmin(_) => InitiatingEntity::User,
            };
            change.push(crate::ssf::credential_change(
                id,
                now,
                Cause::new(entity, "the agent's workload identity rules changed"),
            ));
            agent.federated_credentials = rules;
        }
        if let Some(limits) = patch.limits {
            // Only tighter than what is in force above the agent: the
            // server's defaults, and an ephemeral agent's parent's limits.
            let bound = match agent.parent {
                Some(p) => {
                    let parent = self
                        .store
                        .agent(p)
                        .await?
                        .ok_or_else(|| Error::Unavailable(format!("parent {p} is missing")))?;
                    self.limits_of(&parent).await?
                }
                None => self.config.default_limits(),
            };
            limits.check_within(&bound)?;
            let shown = serde_json::to_string(&limits).map_err(|e| Error::Unavailable(e.to_string()))?;
            said.push(format!("limits: {shown}"));
            change.push(Mutation::SetAgentLimits { id, limits: limits.clone(), at: now });
            agent.limits = limits;
        }
        if patch.backchannel_token_delivery_mode.is_some() || patch.backchannel_client_notification_endpoint.is_some() {
            let backchannel = self.check_backchannel(
                patch.backchannel_token_delivery_mode.unwrap_or_default(),
                patch.backchannel_client_notification_endpoint.as_deref(),
            )?;
            said.push(format!(
                "backchannel_token_delivery_mode: {}{}",
                backchannel.mode.as_str(),
                backchannel.endpoint.as_deref().map(|e| format!(" to {e}")).unwrap_or_default()
            ));
            change.push(Mutation::SetBackchannel { agent: id, backchannel });
        }
        if said.is_empty() {
            return Ok(agent);
        }
        let mut event = self.admin_event(kind::AGENT_UPDATED, caller);
        event.subject = Some(agent.owner.to_string());
        event.resource = Some(id.to_string());
        event.reason = Some(said.join("; "));
        change.push(AuditRecord::new(event).mutation());
        self.commit_signalling(change).await?;
        Ok(agent)
    }

    pub async fn get_agent(&self, caller: Caller, id: AgentId) -> Result<Agent, Error> {
        let agent = self.store.agent(id).await?.ok_or_else(|| Error::NotFound(format!("agent {id}")))?;
        match caller {
            Caller::Admin => Ok(agent),
            Caller::User(u) | Caller::ConsoleAdmin(u) if u == agent.owner => Ok(agent),
            Caller::User(_) | Caller::ConsoleAdmin(_) => {
                self.forbid(caller, "only the owner or an admin may read or change an agent").await
            }
        }
    }

    /// Display names of agents, for pages that show a chain to the person
    /// it acts for (unknown ids are left out).
    pub async fn agent_names(&self, ids: &[AgentId]) -> Result<std::collections::HashMap<AgentId, String>, Error> {
        let mut out = std::collections::HashMap::new();
        for id in ids {
            if !out.contains_key(id)
                && let Some(a) = self.store.agent(*id).await?
            {
                out.insert(*id, a.name);
            }
        }
        Ok(out)
    }

    /// The names of users, by id, for showing (a group approval's card
    /// names the person it is for); unknown ids are left out.
    pub async fn user_names(&self, ids: &[UserId]) -> Result<std::collections::HashMap<UserId, String>, Error> {
        let mut out = std::collections::HashMap::new();
        for id in ids {
            if !out.contains_key(id)
                && let Some(u) = self.store.user(*id).await?
            {
                out.insert(*id, u.name);
            }
        }
        Ok(out)
    }

    /// The agents a person is accountable for (the web's "My agents").
    pub async fn agents_owned_by(&self, caller: Caller, owner: UserId) -> Result<Vec<Agent>, Error> {
        match caller {
            Caller::Admin => {}
            Caller::User(u) | Caller::ConsoleAdmin(u) if u == owner => {}
            Caller::User(_) | Caller::ConsoleAdmin(_) => {
                return self.forbid(caller, "a person may list only the agents they own").await;
            }
        }
        Ok(self.store.agents_owned_by(owner).await?)
    }

    /// The admin suspends an agent its owner had suspended: it stays
    /// suspended (its tokens died then), but now only the admin resumes it.
    async fn take_over_suspension(&self, caller: Caller, mut agent: Agent) -> Result<(Agent, Cascade), Error> {
        let now = self.clock.now();
        let mut event = self.admin_event(kind::AGENT_SUSPENDED, caller);
        event.subject = Some(agent.owner.to_string());
        event.resource = Some(agent.id.to_string());
        event.reason = Some("suspended -> suspended; the admin now holds the suspension".into());
        let change = Change::new()
            .with(Mutation::SetAgentStatus {
                id: agent.id,
                from: AgentStatus::Suspended,
                to: AgentStatus::Suspended,
                at: now,
                by: Some(SuspendedBy::Admin),
            })
            .with(AuditRecord::new(event).mutation());
        self.store.commit(change).await?;
        agent.suspended_by = Some(SuspendedBy::Admin);
        Ok((agent, Cascade { tokens: 0, grants: 0, retired: Vec::new() }))
    }

    /// When each agent `owner` owns was last used (the latest use of any
    /// grant it holds); agents never used are missing.
    pub async fn last_use_of_owned_agents(
        &self,
        caller: Caller,
        owner: UserId,
    ) -> Result<std::collections::HashMap<AgentId, time::OffsetDateTime>, Error> {
        match caller {
            Caller::Admin => {}
            Caller::User(u) | Caller::ConsoleAdmin(u) if u == owner => {}
            Caller::User(_) | Caller::ConsoleAdmin(_) => {
                return self.forbid(caller, "a person may see only the agents they own").await;
            }
        }
        Ok(self.store.last_use_of_owned_agents(owner).await?.into_iter().collect())
    }

    /// Suspends, resumes or retires an agent. Suspension and retirement
    /// revoke every token it holds and cascade to the ephemeral agents it
    /// spawned; retirement is final.
    pub async fn agent_lifecycle(&self, caller: Caller, id: AgentId, op: Lifecycle) -> Result<(Agent, Cascade), Error> {
        let mut agent = self.get_agent(caller, id).await?;
        // Only the level that suspended an agent, or a higher one, resumes
        // it (SECURITY row 44): an owner cannot undo the admin. A suspension
        // whose level is not known counts as the admin's.
        let level = match caller {
            Caller::Admin => SuspendedBy::Admin,
            Caller::User(_) | Caller::ConsoleAdmin(_) => SuspendedBy::Owner,
        };
        let suspended_by = agent.suspended_by.unwrap_or(SuspendedBy::Admin);
        if op == Lifecycle::Suspend && agent.status == AgentStatus::Suspended && level > suspended_by {
            return self.take_over_suspension(caller, agent).await;
        }
        let to = op.apply(agent.status).ok_or_else(|| {
            Error::Conflict(format!("cannot {} an agent that is {}", op.as_str(), agent.status.as_str()))
        })?;
        if op == Lifecycle::Resume && suspended_by > level {
            return self.forbid(caller, "the admin suspended this agent; only the admin may resume it").await;
        }
        let now = self.clock.now();
        let mut change =
            Change::new().with(Mutation::SetAgentStatus { id, from: agent.status, to, at: now, by: Some(level) });
        let mut event = self.admin_event(
            match op {
                Lifecycle::Suspend => kind::AGENT_SUSPENDED,
                Lifecycle::Resume => kind::AGENT_RESUMED,
                Lifecycle::Retire => kind::AGENT_RETIRED,
            },
            caller,
        );
        event.subject = Some(agent.owner.to_string());
        event.resource = Some(id.to_string());
        let Deactivation { revocations, grant_revocations, children } = if to != AgentStatus::Active {
            self.deactivation(&mut change, id, now).await?
        } else {
            Deactivation::default()
        };
        event.reason = Some(match children.len() {
            0 => format!("{} -> {}", agent.status.as_str(), to.as_str()),
            n => format!("{} -> {}; {n} ephemeral descendants retired", agent.status.as_str(), to.as_str()),
        });
        if to != AgentStatus::Active {
            let entity = match level {
                SuspendedBy::Admin => InitiatingEntity::Admin,
                _ => InitiatingEntity::User,
            };
            let reason = format!("the agent {id} was {}", to.as_str());
            Mandate::signal_revocations(&mut change, now, Cause::new(entity, reason));
        }
        change.push(AuditRecord::counting(event, &revocations).mutation());
        let retired_children: Vec<AgentId> = children.iter().map(|(c, _)| c.id).collect();
        for (child, revoke_at) in children {
            let mut e = self.admin_event(kind::AGENT_RETIRED, caller);
            e.subject = Some(child.owner.to_string());
            e.resource = Some(child.id.to_string());
            e.reason = Some(format!("its ancestor {id} was {}", to.as_str()));
            change.push(AuditRecord::counting(e, &[revoke_at]).mutation());
        }
        let receipt = self.commit_signalling(change).await?;
        let sum = |handles: &[crate::store::Handle]| -> Result<u64, Error> {
            handles.iter().try_fold(0u64, |n, &h| {
                n.checked_add(receipt.affected(h)?)
                    .ok_or_else(|| Error::Unavailable("a revocation count overflows".into()))
            })
        };
        let cascade =
            Cascade { tokens: sum(&revocations)?, grants: sum(&grant_revocations)?, retired: retired_children };
        agent.status = to;
        agent.suspended_by = (to == AgentStatus::Suspended).then_some(level);
        Ok((agent, cascade))
    }

    /// What stopping an agent (suspending or retiring it) takes besides
    /// its own status: every token it holds and every grant given to it
    /// are revoked, and its ephemeral descendants are retired with theirs,
    /// transitively. Pushed onto `change`.
    pub(crate) async fn deactivation(
        &self,
        change: &mut Change,
        id: AgentId,
        now: time::OffsetDateTime,
    ) -> Result<Deactivation, Error> {
        let mut out = Deactivation::default();
        out.revocations.push(change.push(Mutation::RevokeTokensOfAgent { agent: id, at: now }));
        out.grant_revocations.push(change.push(Mutation::RevokeGrantsOfAgent { agent: id, at: now }));
        // Ephemeral descendants die with their parent, transitively.
        let mut stack = vec![id];
        let mut seen = BTreeSet::from([id]);
        while let Some(parent) = stack.pop() {
            for child in self.store.agent_children(parent).await? {
                if !seen.insert(child.id) {
                    continue;
                }
                stack.push(child.id);
                if child.kind == AgentKind::Ephemeral && child.status != AgentStatus::Retired {
                    change.push(Mutation::SetAgentStatus {
                        id: child.id,
                        from: child.status,
                        to: AgentStatus::Retired,
                        at: now,
                        by: None,
                    });
                    let revoked = change.push(Mutation::RevokeTokensOfAgent { agent: child.id, at: now });
                    out.revocations.push(revoked);
                    out.grant_revocations.push(change.push(Mutation::RevokeGrantsOfAgent { agent: child.id, at: now }));
                    out.children.push((child, revoked));
                }
            }
        }
        Ok(out)
    }

    pub async fn create_resource(&self, caller: Caller, new: NewResource) -> Result<Resource, Error> {
        self.require_admin(caller).await?;
        let identifier = name::validate_resource_identifier(&new.identifier)?;
        if identifier == self.config.issuer {
            return Err(Error::BadInput("the issuer is Mandate's own resource identifier".into()));
        }
        let name = name::validate_name(&new.name)?;
        if new.scopes.is_empty() || new.scopes.len() > mandate_model::scope::MAX_SCOPES {
            return Err(Error::BadInput("a resource declares 1 to 64 scopes".into()));
        }
        for (scope, actions) in &new.scopes {
            Scope::parse(scope)?;
            if actions.is_empty() {
                validate_action(scope)?;
            }
            if actions.len() > 64 {
                return Err(Error::BadInput(format!("scope {scope} lists more than 64 actions")));
            }
            for a in actions {
                validate_action(a)?;
            }
        }
        if let Some(jwks) = &new.jwks {
            JwkSet::from_json(jwks).map_err(|e| Error::BadInput(format!("jwks: {e}")))?;
        }
        if let Some(gw) = new.gateway {
            let agent =
                self.store.agent(gw).await?.ok_or_else(|| Error::BadInput(format!("gateway {gw} does not exist")))?;
            if agent.kind != AgentKind::Persistent || agent.public || agent.origin.is_self_registered() {
                return Err(Error::BadInput(
                    "a gateway is a persistent, confidential agent that an admin or owner registered".into(),
                ));
            }
        }
        if new.exchange_to.len() > MAX_EXCHANGE_TO {
            return Err(Error::BadInput(format!("exchange_to lists at most {MAX_EXCHANGE_TO} audiences")));
        }
        if !new.exchange_to.is_empty() && new.gateway.is_none() {
            return Err(Error::BadInput("exchange_to needs a gateway: only the gateway exchanges".into()));
        }
        let mut exchange_to = Vec::with_capacity(new.exchange_to.len());
        for aud in &new.exchange_to {
            let aud = name::validate_resource_identifier(aud)?;
            if aud == identifier || aud == self.config.issuer || exchange_to.contains(&aud) {
                return Err(Error::BadInput(format!("exchange_to: {aud} is this resource, the issuer or repeated")));
            }
            exchange_to.push(aud);
        }
        if new.context.len() > MAX_CONTEXT_KEYS {
            return Err(Error::BadInput(format!("context declares at most {MAX_CONTEXT_KEYS} keys")));
        }
        for key in new.context.keys() {
            validate_context_key(key)?;
        }
        // The policy schema has one type per key, across resources.
        let declared = self.context_catalog().await?;
        for (key, ty) in &new.context {
            if let Some(other) = declared.get(key)
                && other != ty
            {
                return Err(Error::BadInput(format!(
                    "context key {key} is declared as {} by another resource",
                    other.as_str()
                )));
            }
        }
        crate::details::validate_types(&new.authorization_details_types)?;
        // …and one Cedar type per detail field across resources.
        for (field, ty) in crate::details::field_types(&new.authorization_details_types).unwrap_or_default() {
            if let Some(other) = declared.get(&format!("{}{field}", mandate_policy::DETAIL_PREFIX))
                && *other != ty
            {
                return Err(Error::BadInput(format!(
                    "authorization detail field {field} is {} in another resource's types",
                    other.as_str()
                )));
            }
        }
        if self.store.resource_by_identifier(&identifier).await?.is_some() {
            return Err(Error::Conflict(format!("a resource with identifier {identifier} exists")));
        }
        let resource = Resource {
            id: ResourceId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?),
            identifier,
            name,
            scopes: new.scopes,
            jwks: new.jwks,
            created_at: self.clock.now(),
            gateway: new.gateway,
            exchange_to,
            context: new.context,
            authorization_details_types: new.authorization_details_types,
        };
        let mut event = self.admin_event(kind::RESOURCE_CREATED, caller);
        event.resource = Some(resource.identifier.clone());
        event.scope = Some(resource.scopes.keys().cloned().collect::<Vec<_>>().join(" "));
        event.reason = Some(resource.id.to_string());
        self.store
            .commit(
                Change::new().with(Mutation::InsertResource(resource.clone())).with(AuditRecord::new(event).mutation()),
            )
            .await?;
        Ok(resource)
    }

    pub async fn get_resource(&self, caller: Caller, id: ResourceId) -> Result<Resource, Error> {
        self.require_admin(caller).await?;
        self.store.resource(id).await?.ok_or_else(|| Error::NotFound(format!("resource {id}")))
    }

    /// The action names reserved by Mandate.
    pub fn builtin_actions() -> &'static [&'static str] {
        BUILTIN_ACTIONS
    }
}

/// Compiles a policy text off the async workers: parsing a large set takes
/// a while, and runs on a thread of its own with a large stack.
pub(crate) async fn compile_off_the_workers(
    text: &str,
    actions: std::collections::BTreeSet<String>,
    context: std::collections::BTreeMap<String, mandate_model::records::ContextType>,
) -> Result<Result<PolicyEngine, mandate_policy::PolicyError>, Error> {
    let text = text.to_owned();
    tokio::task::spawn_blocking(move || PolicyEngine::compile_with(&text, &actions, &context))
        .await
        .map_err(|e| Error::Unavailable(format!("the policy compiler stopped: {e}")))
}

#[cfg(test)]
mod redirect_tests {
    use super::validate_redirect_uri;

    #[test]
    fn loopback_is_the_host_exactly() {
        for ok in ["https://app.example/cb", "http://127.0.0.1:8080/cb", "http://localhost/cb", "http://[::1]:9/cb"] {
            assert!(validate_redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://localhost.evil.example/cb",
            "http://127.0.0.1.nip.io/cb",
            "http://app.example/cb",
            "https://app.example/cb#f",
            "https://app.example/cb;script-src",
            "https://app.example/c\"b",
            "http://127.0.0.1@evil.example/cb",
            "https:app.example/cb",
            "https://user@app.example/cb",
        ] {
            assert!(validate_redirect_uri(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod lifecycle_tests {
    //! Agents' lifecycle and people's status on a memory store: what a
    //! suspension, a retirement or a disabled owner reaches, and what a
    //! refused call leaves behind (nothing but its record).

    use mandate_model::records::{AgentStatus, GrantStatus, Lifecycle, SuspendedBy, UserStatus};
    use time::Duration;

    use super::{NewAgent, UserPatch};
    use crate::audit::kind;
    use crate::store::Store;
    use crate::testing::{CAL, World};
    use crate::{Caller, Error};

    #[tokio::test]
    async fn suspending_an_agent_revokes_its_tokens_its_hops_and_its_ephemeral_descendants() {
        let w = World::new().await;
        let granted = w.granted(&w.planner, "read").await;
        let hop = w.exchange(&w.helper, &granted.access_token, None).await.unwrap();
        let grandchild = w.agent(w.alice.id, Some(w.helper.id())).await.unwrap();
        let leaf = w.exchange(&grandchild, &hop.access_token, None).await.unwrap();
        let helpers_own = w.client_credentials(&w.helper, CAL, "read").await.unwrap();
        let bystander = w.agent(w.alice.id, None).await.unwrap();
        let untouched = w.client_credentials(&bystander, CAL, "read").await.unwrap();
        let (agent, cascade) = w.m.agent_lifecycle(Caller::Admin, w.planner.id(), Lifecycle::Suspend).await.unwrap();
        assert_eq!((agent.status, agent.suspended_by), (AgentStatus::Suspended, Some(SuspendedBy::Admin)));
        // Its grant token and the two hops below it, and the helper's own.
        assert_eq!(cascade.tokens, 4);
        assert_eq!(cascade.grants, 1);
        let mut retired = cascade.retired.clone();
        retired.sort();
        let mut expected = vec![w.helper.id(), grandchild.id()];
        expected.sort();
        assert_eq!(retired, expected);
        for t in [&granted, &hop, &leaf, &helpers_own] {
            assert!(w.record(t).await.revoked_at.is_some(), "a token of the suspended tree is unrevoked");
            assert!(!w.is_live(&t.access_token).await);
        }
        assert!(w.is_live(&untouched.access_token).await, "an unrelated agent's token was revoked");
        for id in [w.helper.id(), grandchild.id()] {
            assert_eq!(w.store.agent(id).await.unwrap().map(|a| a.status), Some(AgentStatus::Retired));
        }
        let grant = w.store.grant(w.record(&granted).await.grant.unwrap()).await.unwrap().unwrap();
        assert_eq!(grant.status, GrantStatus::Revoked);
        let suspended = w.events(kind::AGENT_SUSPENDED).await;
        assert_eq!(suspended.last().and_then(|e| e.count), Some(4));
        assert_eq!(w.events(kind::AGENT_RETIRED).await.len(), 2);
        // The refresh token of the revoked grant is no use any more.
        let refresh = crate::GrantRequest::Refresh {
            refresh_token: granted.refresh_token.unwrap(),
            scope: None,
            resources: vec![],
        };
        assert!(w.grant(&w.planner, refresh).await.is_err());
    }

    #[tokio::test]
    async fn only_the_suspending_level_or_a_higher_one_resumes() {
        let w = World::new().await;
        let owner = Caller::User(w.alice.id);
        w.m.agent_lifecycle(Caller::Admin, w.planner.id(), Lifecycle::Suspend).await.unwrap();
        let resumed = w.m.agent_lifecycle(owner, w.planner.id(), Lifecycle::Resume).await;
        assert!(matches!(resumed, Err(Error::Forbidden(_))), "{resumed:?}");
        assert_eq!(w.store.agent(w.planner.id()).await.unwrap().map(|a| a.status), Some(AgentStatus::Suspended));
        w.m.agent_lifecycle(Caller::Admin, w.planner.id(), Lifecycle::Resume).await.unwrap();
        w.m.agent_lifecycle(owner, w.planner.id(), Lifecycle::Suspend).await.unwrap();
        let (agent, _) = w.m.agent_lifecycle(owner, w.planner.id(), Lifecycle::Resume).await.unwrap();
        assert_eq!((agent.status, agent.suspended_by), (AgentStatus::Active, None));
        // Someone else's agent is not Bob's to touch.
        let bobs = w.m.agent_lifecycle(Caller::User(w.bob.id), w.planner.id(), Lifecycle::Suspend).await;
        assert!(matches!(bobs, Err(Error::Forbidden(_))), "{bobs:?}");
        // Retirement is final.
        w.m.agent_lifecycle(Caller::Admin, w.planner.id(), Lifecycle::Retire).await.unwrap();
        let back = w.m.agent_lifecycle(Caller::Admin, w.planner.id(), Lifecycle::Resume).await;
        assert!(matches!(back, Err(Error::Conflict(_))), "{back:?}");
    }

    #[tokio::test]
    async fn disabling_a_person_stops_their_grants_tokens_and_agents() {
        let w = World::new().await;
        let granted = w.granted(&w.planner, "read").await;
        let own = w.client_credentials(&w.planner, CAL, "read").await.unwrap();
        let bobs_agent = w.agent(w.bob.id, None).await.unwrap();
        let bobs = w.client_credentials(&bobs_agent, CAL, "read").await.unwrap();
        let patch = UserPatch { status: Some(UserStatus::Disabled), ..UserPatch::default() };
        let alice = w.m.update_user(Caller::Admin, w.alice.id, patch).await.unwrap();
        assert_eq!(alice.status, UserStatus::Disabled);
        assert!(w.record(&granted).await.revoked_at.is_some() && w.record(&own).await.revoked_at.is_some());
        let grant = w.store.grant(w.record(&granted).await.grant.unwrap()).await.unwrap().unwrap();
        assert_eq!(grant.status, GrantStatus::Revoked);
        assert!(w.is_live(&bobs.access_token).await, "another person's agent was stopped");
        let updated = w.events(kind::USER_UPDATED).await;
        assert_eq!(updated.last().and_then(|e| e.count), Some(2));
        assert!(matches!(w.client_credentials(&w.planner, CAL, "read").await, Err(Error::InvalidClient(_))));
    }

    #[tokio::test]
    async fn a_refused_registration_writes_only_its_refusal() {
        let w = World::new().await;
        let trail = w.trail_len().await;
        let new = |owner, redirect: &str| NewAgent {
            name: "Agent".into(),
            owner,
            kind: None,
            parent: None,
            ttl_seconds: None,
            scopes: None,
            jwks: Some(serde_json::json!({"keys": [w.planner.key.public().to_json()]})),
            redirect_uris: vec![redirect.into()],
            description: None,
            token_endpoint_auth_method: None,
            federated_credentials: Vec::new(),
            limits: Default::default(),
            backchannel_token_delivery_mode: None,
            backchannel_client_notification_endpoint: None,
        };
        let bad = w.m.create_agent(Caller::Admin, new(w.bob.id, "http://app.example/cb")).await;
        assert!(matches!(bad, Err(Error::BadInput(_))), "{bad:?}");
        let nobody = mandate_model::UserId::from_ulid(ulid::Ulid::from_parts(1, 1));
        let orphan = w.m.create_agent(Caller::Admin, new(nobody, "https://app.example/cb")).await;
        assert!(matches!(orphan, Err(Error::BadInput(_))), "{orphan:?}");
        assert_eq!(w.trail_len().await, trail, "a refused registration wrote");
        assert!(w.store.agents_owned_by(w.bob.id).await.unwrap().is_empty());
        // A person may not register agents at all: that refusal is recorded.
        let by_bob = w.m.create_agent(Caller::User(w.bob.id), new(w.bob.id, "https://app.example/cb")).await;
        assert!(matches!(by_bob, Err(Error::Forbidden(_))), "{by_bob:?}");
        assert_eq!(w.trail_len().await, trail + 1);
        assert_eq!(w.events(kind::ADMIN_DENIED).await.len(), 1);
        assert!(w.store.agents_owned_by(w.bob.id).await.unwrap().is_empty());
        assert!(w.m.create_agent(Caller::Admin, new(w.bob.id, "https://app.example/cb")).await.is_ok());
    }

    #[tokio::test]
    async fn an_ephemeral_agent_expires_with_its_tokens() {
        let w = World::new().await;
        let kid = w.agent(w.alice.id, Some(w.planner.id())).await.unwrap();
        assert_eq!(kid.agent.expires_at, Some(crate::testing::start() + Duration::hours(1)));
        let token = w.client_credentials(&kid, CAL, "read").await.unwrap();
        w.clock.advance(Duration::minutes(59));
        w.m.housekeeping().await.unwrap();
        assert_eq!(w.store.agent(kid.id()).await.unwrap().map(|a| a.status), Some(AgentStatus::Active));
        w.clock.advance(Duration::minutes(1));
        w.m.housekeeping().await.unwrap();
        assert_eq!(w.store.agent(kid.id()).await.unwrap().map(|a| a.status), Some(AgentStatus::Retired));
        // The world's helper was spawned at the same moment, for as long.
        let mut expired: Vec<_> = w.events(kind::AGENT_EXPIRED).await.into_iter().filter_map(|e| e.resource).collect();
        expired.sort();
        let mut expected = vec![kid.id().to_string(), w.helper.id().to_string()];
        expected.sort();
        assert_eq!(expired, expected);
        // Its token had run out already (it cannot outlive the agent).
        assert_eq!(w.record(&token).await.expires_at, crate::testing::start() + Duration::minutes(5));
        assert!(matches!(w.client_credentials(&kid, CAL, "read").await, Err(Error::InvalidClient(_))));
    }
}
