//! Delegated authority (DESIGN §3.1, §3.2, §5, §7): CIBA requests decided
//! by policy, grants, approvals, rotating refresh tokens and token exchange.
//! Every path re-checks the whole chain and the user's current rights, and
//! records its outcome in the same change as the state it writes.

use mandate_audit::Event;
use mandate_model::claims::{AccessTokenClaims, Confirmation};
use mandate_model::delegation::{self, Authority, Chain, HopRequest};
use mandate_model::records::{
    Agent, Approval, ApprovalStatus, ApprovalSubject, ClientId, Grant, GrantStatus, RefreshRecord, Resource,
    TokenRecord, User, UserStatus,
};
use mandate_model::{AgentId, ApprovalId, GrantId, Jti, ScopeSet, UserId};
use mandate_policy::{Approver, Principal, Target};
use time::{Duration, OffsetDateTime};

use crate::audit::{ALLOW, AuditRecord, DENY, kind, reason};
use crate::chain::{LiveToken, NotLive, chain_names};
use crate::oauth::Refusal;
use crate::oauth::{IssuedToken, bounded_input};
use crate::ports::new_ulid;
use crate::service::{AuthenticatedClient, Caller, Mandate};
use crate::store::{ApprovalQuery, Change, GrantQuery, Mutation};
use crate::{Error, secrets};

pub const GRANT_CIBA: &str = "urn:openid:params:grant-type:ciba";
pub const GRANT_REFRESH: &str = "refresh_token";
pub const GRANT_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const REFRESH_TOKEN_PREFIX: &str = "mnd_rt_";

/// Form parameters every grant accepts: client authentication.
const CLIENT_PARAMS: &[&str] = &["grant_type", "client_id", "client_assertion", "client_assertion_type"];

/// A request's form parameters, checked against what its grant accepts: an
/// unknown or repeated parameter is an error, never ignored.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// Refuses parameters outside `allowed` (and client authentication) and
    /// repeats of any parameter but `resource`/`audience`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), Error> {
        let mut seen = std::collections::BTreeSet::new();
        for (k, _) in &self.0 {
            if !allowed.contains(&k.as_str()) && !CLIENT_PARAMS.contains(&k.as_str()) {
                return Err(Error::InvalidRequest(format!("parameter {} is not accepted here", bounded_input(k))));
            }
            if !seen.insert(k.as_str()) && k != "resource" && k != "audience" {
                return Err(Error::InvalidRequest(format!("parameter {k} is repeated")));
            }
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    pub(crate) fn require(&self, key: &str) -> Result<&str, Error> {
        match self.get(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Error::InvalidRequest(format!("{key} is required"))),
        }
    }
}

/// The answer to `POST /oauth/bc-authorize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BcAuthorized {
    pub auth_req_id: String,
    pub expires_in: i64,
    pub interval: i64,
}

/// What a token to be minted carries.
pub(crate) struct Mint<'a> {
    pub client: AgentId,
    pub chain: &'a Chain,
    pub audience: String,
    pub scopes: ScopeSet,
    pub grant: Option<&'a Grant>,
    pub purpose: Option<String>,
    pub parent: Option<Jti>,
    /// The latest expiry allowed besides the token lifetime (a parent's).
    pub not_after: Option<OffsetDateTime>,
    pub family: Option<String>,
    /// The DPoP key the token is bound to (`cnf.jkt`).
    pub jkt: Option<&'a str>,
}

/// The scopes `scope` names, required and non-empty.
pub(crate) fn parse_scopes(scope: Option<&str>) -> Result<ScopeSet, Error> {
    match scope {
        None | Some("") => Err(Error::InvalidScope("scope is required".into())),
        Some(s) => ScopeSet::parse(s).map_err(|e| Error::InvalidScope(e.to_string())),
    }
}

fn one_resource(resources: &[&str]) -> Result<String, Error> {
    match resources {
        [] => Err(Error::InvalidTarget("resource is required: tokens are bound to one audience".into())),
        [one] => Ok((*one).to_owned()),
        _ => Err(Error::InvalidTarget("exactly one resource per token".into())),
    }
}

impl Mandate {
    // ----- policy at issuance -----

    /// Decides, per scope and per action it covers at `resource`, that the
    /// user (if any) holds the right now and that every agent's ceiling and
    /// policy allow it, with every record the policies can reach loaded.
    /// The inner `Err` is the reason for a denial; the inner `Ok` says who,
    /// if anyone, must approve (`@approval`). The outer `Err` is a store
    /// that cannot answer.
    pub(crate) async fn authorize_scopes(
        &self,
        user: Option<&User>,
        agents: &[&Agent],
        resource: &Resource,
        scopes: &ScopeSet,
    ) -> Result<Result<Option<Approver>, String>, Error> {
        let related = self.related(agents, user.as_slice()).await?;
        Ok(self.authorize_scopes_with(&self.engine(), user, agents, resource, scopes, &related))
    }

    fn authorize_scopes_with(
        &self,
        engine: &mandate_policy::PolicyEngine,
        user: Option<&User>,
        agents: &[&Agent],
        resource: &Resource,
        scopes: &ScopeSet,
        related: &mandate_policy::Related,
    ) -> Result<Option<Approver>, String> {
        let mut approval: Option<Approver> = None;
        for scope in scopes.iter() {
            let actions = resource
                .actions_of(scope)
                .ok_or_else(|| format!("scope {scope} is not offered by {}", resource.identifier))?;
            for agent in agents {
                if let Some(ceiling) = &agent.scopes
                    && !ceiling.contains(scope)
                {
                    return Err(format!("scope {scope} is beyond the ceiling of agent {}", agent.id));
                }
            }
            for action in &actions {
                let target = Target::Api(&resource.identifier);
                let mut decisions = Vec::with_capacity(agents.len() + 1);
                if let Some(u) = user {
                    decisions.push((
                        u.id.to_string(),
                        self.caches.issuance(engine, Principal::User(u), action, target, related),
                    ));
                }
                for agent in agents {
                    let d = self.caches.issuance(engine, Principal::Agent(agent), action, target, related);
                    decisions.push((agent.id.to_string(), d));
                }
                for (who, d) in decisions {
                    if !d.allowed {
                        if !d.errors.is_empty() {
                            tracing::warn!(errors = ?d.errors, action, "policy evaluation failed; denied");
                            return Err(format!(
                                "policy_error: the policy for {action} could not be evaluated, so it is denied"
                            ));
                        }
                        return Err(format!(
                            "policy does not allow {who} {scope} ({action}) on {}",
                            resource.identifier
                        ));
                    }
                    approval = match (approval, d.approval) {
                        (Some(Approver::User), _) | (_, Some(Approver::User)) => Some(Approver::User),
                        (a, b) => a.or(b),
                    };
                }
            }
        }
        Ok(approval)
    }

    /// Signs a token and builds its record; the caller commits both.
    pub(crate) async fn mint(&self, m: Mint<'_>) -> Result<(TokenRecord, String), Error> {
        let now = self.clock.now();
        let mut exp = now + Duration::seconds(self.config.access_token_ttl);
        if let Some(limit) = m.not_after {
            exp = exp.min(limit);
        }
        if let Some(g) = m.grant {
            exp = exp.min(g.expires_at);
        }
        if exp <= now {
            return Err(Error::InvalidGrant("no lifetime is left to give".into()));
        }
        let jti = Jti::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?);
        let status_idx = self.status_index().await?;
        let claims = AccessTokenClaims {
            iss: self.config.issuer.clone(),
            sub: m.chain.subject(),
            aud: m.audience.clone(),
            exp: exp.unix_timestamp(),
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            jti: jti.to_string(),
            client_id: m.client.to_string(),
            scope: m.scopes.to_claim(),
            act: m.chain.to_act(),
            may_act: None,
            grant_id: m.grant.map(|g| g.id.to_string()),
            purpose: m.purpose.clone(),
            cnf: m.jkt.map(|jkt| Confirmation { jkt: jkt.to_owned() }),
            status: Some(self.status_claim(status_idx)),
        };
        let jwt =
            mandate_jose::access::mint(&self.ring().active, &claims).map_err(|e| Error::Unavailable(e.to_string()))?;
        let record = TokenRecord {
            jti,
            client_id: ClientId::Agent(m.client),
            subject: claims.sub,
            audience: m.audience,
            scopes: m.scopes,
            grant: m.grant.map(|g| g.id),
            parent: m.parent,
            chain: m.chain.agents().to_vec(),
            issued_at: now,
            expires_at: exp,
            cnf_jkt: m.jkt.map(str::to_owned),
            status_idx: Some(status_idx),
            family: m.family,
            revoked_at: None,
        };
        Ok((record, jwt))
    }

    /// The `token.issued` event for `record`.
    pub(crate) fn issued_event(&self, record: &TokenRecord, chain: &Chain) -> Event {
        let mut e = self.event(kind::TOKEN_ISSUED);
        e.decision = Some(ALLOW.into());
        e.client_id = Some(record.client_id.to_string());
        e.actor = Some(record.client_id.to_string());
        e.subject = Some(record.subject.clone());
        e.chain = chain_names(chain);
        e.resource = Some(record.audience.clone());
        e.scope = Some(record.scopes.to_claim());
        e.jti = Some(record.jti.to_string());
        e.grant_id = record.grant.map(|g| g.to_string());
        e.parent = record.parent.map(|p| p.to_string());
        e
    }

    fn issued(&self, record: &TokenRecord, jwt: String) -> IssuedToken {
        IssuedToken {
            token_type: token_type(record),
            access_token: jwt,
            expires_in: (record.expires_at - self.clock.now()).whole_seconds(),
            scope: record.scopes.to_claim(),
            jti: record.jti,
            client_id: record.client_id,
            refresh_token: None,
            issued_token_type: None,
        }
    }

    pub(crate) fn new_refresh(
        &self,
        grant: &Grant,
        client: AgentId,
        scopes: &ScopeSet,
        family: &str,
        jkt: Option<&str>,
    ) -> Result<(String, RefreshRecord), Error> {
        let token = secrets::generate(REFRESH_TOKEN_PREFIX, self.rng.as_ref())?;
        let record = RefreshRecord {
            hash: secrets::hash(&token),
            family: family.to_owned(),
            grant: grant.id,
            client_id: client,
            scopes: scopes.clone(),
            issued_at: self.clock.now(),
            expires_at: grant.expires_at,
            used_at: None,
            revoked_at: None,
            cnf_jkt: jkt.map(str::to_owned),
        };
        Ok((token, record))
    }

    /// The agent behind an authenticated client, or `unauthorized_client`.
    fn agent_of<'c>(client: &'c AuthenticatedClient, what: &str) -> Result<&'c Agent, Error> {
        client.agent.as_ref().ok_or_else(|| Error::UnauthorizedClient(format!("only an agent may use {what}")))
    }

    // ----- CIBA (poll mode) -----

    /// `POST /oauth/bc-authorize`: an agent asks a user for a grant. Policy
    /// decides at once: a denial is `access_denied`; an allow without
    /// `@approval` self-authorises (a grant with `approved_by: policy`);
    /// otherwise an approval request waits for the person policy names.
    pub async fn bc_authorize(
        &self,
        credentials: &crate::ClientCredentials,
        params: &Params,
    ) -> Result<BcAuthorized, Error> {
        let client = self.authenticate(credentials).await?;
        match self.try_bc_authorize(&client, params).await {
            Ok((change, answer)) => {
                self.commit_client(&client, change).await?;
                Ok(answer)
            }
            Err(e) => {
                let mut event = self.client_event(kind::APPROVAL_REQUESTED, &client);
                event.decision = Some(DENY.into());
                event.resource = params.get("resource").map(bounded_input);
                event.scope = params.get("scope").map(bounded_input);
                event.reason = Some(reason(&e));
                self.commit_or_replay(&client, Change::new(), event, &[]).await?;
                Err(e)
            }
        }
    }

    async fn try_bc_authorize(
        &self,
        client: &AuthenticatedClient,
        params: &Params,
    ) -> Result<(Change, BcAuthorized), Error> {
        let agent = Self::agent_of(client, "CIBA")?;
        params.only(&["scope", "resource", "login_hint", "binding_message", "requested_expiry"])?;
        let resource = one_resource(&params.all("resource"))?;
        let scopes = parse_scopes(params.get("scope"))?;
        let hint = params.require("login_hint")?;
        let binding_message = params
            .get("binding_message")
            .map(|m| mandate_model::name::validate_text("binding_message", m, 256))
            .transpose()?;
        let wait = match params.get("requested_expiry") {
            None => self.config.approval_ttl,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= 1 && n <= self.config.max_approval_ttl => n,
                _ => {
                    return Err(Error::InvalidRequest(format!(
                        "requested_expiry must be 1 to {} seconds",
                        self.config.max_approval_ttl
                    )));
                }
            },
        };
        let user = if hint.starts_with(UserId::PREFIX) {
            match hint.parse::<UserId>() {
                Ok(id) => self.store.user(id).await?,
                Err(_) => None,
            }
        } else {
            match mandate_model::name::validate_email(hint) {
                Ok(email) => self.store.user_by_email(&email).await?,
                Err(_) => None,
            }
        }
        .ok_or_else(|| Error::UnknownUser("login_hint names no user".into()))?;
        if user.status != UserStatus::Active {
            return Err(Error::AccessDenied("the user is disabled".into()));
        }
        let res = self.resource_by_identifier(&resource).await?;
        if let Some(s) = scopes.iter().find(|s| res.actions_of(s).is_none()) {
            return Err(Error::InvalidScope(format!("scope {s} is not offered by {}", res.identifier)));
        }
        let approver =
            self.authorize_scopes(Some(&user), &[agent], &res, &scopes).await?.map_err(Error::AccessDenied)?;
        let now = self.clock.now();
        let id = ApprovalId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?);
        let mut approval = Approval {
            id,
            agent: agent.id,
            user: user.id,
            approver: match approver {
                Some(Approver::Owner) => agent.owner,
                _ => user.id,
            },
            resource: res.identifier.clone(),
            subject: ApprovalSubject::Grant { scopes: scopes.clone(), requested_expiry: wait },
            binding_message: binding_message.clone(),
            status: ApprovalStatus::Pending,
            decided_by: None,
            created_at: now,
            expires_at: now + Duration::seconds(wait),
            decided_at: None,
            grant: None,
            polled_at: None,
        };
        let mut change = Change::new();
        let mut event = self.client_event(kind::APPROVAL_REQUESTED, client);
        event.decision = Some(ALLOW.into());
        event.subject = Some(user.id.to_string());
        event.chain = vec![user.id.to_string(), agent.id.to_string()];
        event.resource = Some(res.identifier.clone());
        event.scope = Some(scopes.to_claim());
        match approver {
            None => {
                let grant = self.new_grant(&user, agent, &res, &scopes, binding_message, "policy")?;
                approval.status = ApprovalStatus::Approved;
                approval.decided_by = Some("policy".into());
                approval.decided_at = Some(now);
                approval.grant = Some(grant.id);
                event.grant_id = Some(grant.id.to_string());
                event.reason = Some(format!("{id}: self-authorised by policy"));
                let mut created = self.client_event(kind::GRANT_CREATED, client);
                created.decision = Some(ALLOW.into());
                created.subject = event.subject.clone();
                created.chain = event.chain.clone();
                created.resource = event.resource.clone();
                created.scope = event.scope.clone();
                created.grant_id = Some(grant.id.to_string());
                created.reason = Some("approved_by policy".into());
                change.push(Mutation::InsertGrant(grant));
                change.push(Mutation::InsertApproval(approval));
                change.push(AuditRecord::new(event).mutation());
                change.push(AuditRecord::new(created).mutation());
            }
            Some(who) => {
                // One agent cannot flood a person's inbox, nor everyone's
                // (SECURITY row 45). Counted at the request: concurrent ones
                // may pass the cap by as many as arrive together.
                let waiting = |n: u64, max: u64, whom: &str| {
                    (n >= max).then(|| Error::RateLimited {
                        why: format!(
                            "the agent has {n} requests waiting for {whom} (at most {max}); wait for a decision"
                        ),
                        retry_after: u64::try_from(self.config.ciba_interval).unwrap_or(5).max(1),
                    })
                };
                let all = self.store.pending_requests(agent.id, None, now).await?;
                if let Some(e) = waiting(all, self.config.max_pending_per_agent, "people") {
                    return Err(e);
                }
                let theirs = self.store.pending_requests(agent.id, Some(user.id), now).await?;
                if let Some(e) = waiting(theirs, self.config.max_pending_per_agent_user, "this person") {
                    return Err(e);
                }
                event.reason = Some(format!("{id}: waits for the {} ({})", who.as_str(), approval.approver));
                change.push(Mutation::InsertApproval(approval));
                change.push(AuditRecord::new(event).mutation());
            }
        }
        Ok((
            change,
            BcAuthorized { auth_req_id: id.to_string(), expires_in: wait, interval: self.config.ciba_interval },
        ))
    }

    pub(crate) fn new_grant(
        &self,
        user: &User,
        agent: &Agent,
        res: &Resource,
        scopes: &ScopeSet,
        purpose: Option<String>,
        approved_by: &str,
    ) -> Result<Grant, Error> {
        let now = self.clock.now();
        let mut expires_at = now + Duration::seconds(self.config.grant_ttl);
        if let Some(e) = agent.expires_at {
            expires_at = expires_at.min(e);
        }
        Ok(Grant {
            id: GrantId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?),
            user: user.id,
            agent: agent.id,
            resource: res.identifier.clone(),
            scopes: scopes.clone(),
            purpose,
            approved_by: approved_by.to_owned(),
            status: GrantStatus::Active,
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
        })
    }

    /// The CIBA grant at the token endpoint: the agent polls with its
    /// `auth_req_id`. Returns the change to commit (or, for a refusal that
    /// changes state, the change and the error).
    pub(crate) async fn ciba_token(
        &self,
        client: &AuthenticatedClient,
        params: &Params,
        jkt: Option<&str>,
    ) -> Result<(Change, Event, IssuedToken), Refusal> {
        let refuse = Refusal::new;
        let agent = Self::agent_of(client, "CIBA").map_err(refuse)?;
        params.only(&["auth_req_id"]).map_err(refuse)?;
        let raw = params.require("auth_req_id").map_err(refuse)?;
        let unknown = || refuse(Error::InvalidGrant("unknown auth_req_id".into()));
        let id = raw.parse::<ApprovalId>().map_err(|_| unknown())?;
        let approval = self.store.approval(id).await.map_err(|e| refuse(e.into()))?.ok_or_else(unknown)?;
        if approval.agent != agent.id || !matches!(approval.subject, ApprovalSubject::Grant { .. }) {
            return Err(unknown());
        }
        let now = self.clock.now();
        match approval.status {
            ApprovalStatus::Denied => return Err(refuse(Error::AccessDenied("the user denied the request".into()))),
            ApprovalStatus::Consumed => {
                return Err(refuse(Error::InvalidGrant("the auth_req_id was already used".into())));
            }
            _ if now >= approval.expires_at => {
                return Err(refuse(Error::ExpiredToken("the auth_req_id has expired".into())));
            }
            ApprovalStatus::Pending => {
                let too_soon =
                    approval.polled_at.is_some_and(|p| now < p + Duration::seconds(self.config.ciba_interval));
                let poll = Change::new().with(Mutation::PollApproval { id, at: now });
                return Err(Refusal {
                    change: poll,
                    counted: Vec::new(),
                    error: if too_soon { Error::SlowDown } else { Error::AuthorizationPending },
                });
            }
            ApprovalStatus::Approved => {}
        }
        let grant_id =
            approval.grant.ok_or_else(|| refuse(Error::InvalidGrant("the approval holds no grant".into())))?;
        let grant = self
            .store
            .grant(grant_id)
            .await
            .map_err(|e| refuse(e.into()))?
            .filter(|g| g.is_live(now))
            .ok_or_else(|| refuse(Error::InvalidGrant("the grant is revoked or expired".into())))?;
        let (mut change, event, issued) = self.first_tokens(agent, &grant, jkt).await.map_err(refuse)?;
        change.prepend(Mutation::ConsumeApproval { id, at: now });
        Ok((change, event, issued))
    }

    /// The first access and refresh tokens under a new grant (CIBA, the
    /// authorization code): one refresh family, which the access token
    /// belongs to as well, so that a reused refresh token revokes it too.
    pub(crate) async fn first_tokens(
        &self,
        agent: &Agent,
        grant: &Grant,
        jkt: Option<&str>,
    ) -> Result<(Change, Event, IssuedToken), Error> {
        let family = new_ulid(self.clock.as_ref(), self.rng.as_ref())?.to_string();
        let (mut change, event, mut issued) = self.grant_token(agent, grant, &grant.scopes, Some(&family), jkt).await?;
        let (refresh, record) = self.new_refresh(grant, agent.id, &grant.scopes, &family, jkt)?;
        issued.refresh_token = Some(refresh);
        change.push(Mutation::InsertRefresh(record));
        Ok((change, event, issued))
    }

    /// An access token under `grant` for its agent, after re-checking the
    /// user's current rights and the agent's ceiling and policy.
    pub(crate) async fn grant_token(
        &self,
        agent: &Agent,
        grant: &Grant,
        scopes: &ScopeSet,
        family: Option<&str>,
        jkt: Option<&str>,
    ) -> Result<(Change, Event, IssuedToken), Error> {
        let user = self
            .store
            .user(grant.user)
            .await?
            .filter(|u| u.status == UserStatus::Active)
            .ok_or_else(|| Error::InvalidGrant("the user who gave the grant is disabled".into()))?;
        let res = self.resource_by_identifier(&grant.resource).await?;
        self.authorize_scopes(Some(&user), &[agent], &res, scopes).await?.map_err(Error::InvalidGrant)?;
        let chain = Chain::for_user(user.id, agent.id);
        let (record, jwt) = self
            .mint(Mint {
                client: agent.id,
                chain: &chain,
                audience: grant.resource.clone(),
                scopes: scopes.clone(),
                grant: Some(grant),
                purpose: grant.purpose.clone(),
                parent: None,
                not_after: agent.expires_at,
                family: family.map(str::to_owned),
                jkt,
            })
            .await?;
        let event = self.issued_event(&record, &chain);
        let issued = self.issued(&record, jwt);
        let now = self.clock.now();
        let change =
            Change::new().with(Mutation::InsertToken(record)).with(Mutation::TouchGrant { id: grant.id, at: now });
        Ok((change, event, issued))
    }

    // ----- refresh tokens -----

    /// `refresh_token`: rotates the refresh token, re-checks policy and the
    /// grant, and issues a new access token. A refresh token used twice
    /// revokes its whole family, refresh and access tokens alike.
    pub(crate) async fn refresh_token(
        &self,
        client: &AuthenticatedClient,
        params: &Params,
        jkt: Option<&str>,
    ) -> Result<(Change, Event, IssuedToken), Refusal> {
        let refuse = Refusal::new;
        let agent = Self::agent_of(client, "refresh tokens").map_err(refuse)?;
        params.only(&["refresh_token", "scope"]).map_err(refuse)?;
        let presented = params.require("refresh_token").map_err(refuse)?;
        let invalid = || refuse(Error::InvalidGrant("the refresh token is invalid".into()));
        let hash = secrets::hash(presented);
        let record = self.store.refresh(&hash).await.map_err(|e| refuse(e.into()))?.ok_or_else(invalid)?;
        if record.client_id != agent.id {
            return Err(invalid());
        }
        let now = self.clock.now();
        if record.used_at.is_some() {
            return Err(self.reuse(&record));
        }
        if record.revoked_at.is_some() || now >= record.expires_at {
            return Err(invalid());
        }
        // RFC 9449 §5: a bound family is used only with its key.
        if let Some(bound) = &record.cnf_jkt
            && !jkt.is_some_and(|k| mandate_jose::ct_eq(k.as_bytes(), bound.as_bytes()))
        {
            return Err(refuse(Error::InvalidDpopProof(
                "the refresh token is bound to a DPoP key: prove possession of that key".into(),
            )));
        }
        let scopes = match params.get("scope") {
            None => record.scopes.clone(),
            Some(s) => {
                let asked = parse_scopes(Some(s)).map_err(refuse)?;
                if let Some(wider) = asked.iter().find(|x| !record.scopes.contains(x)) {
                    return Err(refuse(Error::InvalidScope(format!("scope {wider} was not granted"))));
                }
                asked
            }
        };
        let grant = self
            .store
            .grant(record.grant)
            .await
            .map_err(|e| refuse(e.into()))?
            .filter(|g| g.is_live(now))
            .ok_or_else(|| refuse(Error::InvalidGrant("the grant is revoked or expired".into())))?;
        let (mut change, event, mut issued) =
            self.grant_token(agent, &grant, &scopes, Some(&record.family), jkt).await.map_err(refuse)?;
        change.prepend(Mutation::UseRefresh { hash: record.hash.clone(), at: now });
        let (refresh, next) = self
            .new_refresh(&grant, agent.id, &record.scopes, &record.family, record.cnf_jkt.as_deref())
            .map_err(refuse)?;
        issued.refresh_token = Some(refresh);
        change.push(Mutation::InsertRefresh(next));
        Ok((change, event, issued))
    }

    /// A rotated refresh token came back: revoke its family.
    pub(crate) fn reuse(&self, record: &RefreshRecord) -> Refusal {
        let now = self.clock.now();
        let mut change = Change::new().with(Mutation::RevokeRefreshFamily { family: record.family.clone(), at: now });
        let tokens = change.push(Mutation::RevokeTokensOfFamily { family: record.family.clone(), at: now });
        Refusal {
            change,
            counted: vec![tokens],
            error: Error::InvalidGrant("the refresh token was already used; its family is revoked".into()),
        }
    }

    /// Whether a failed refresh commit lost a race to another use of the
    /// same refresh token (then the family is revoked).
    pub(crate) async fn refresh_raced(&self, params: &Params) -> Result<Option<RefreshRecord>, Error> {
        let Some(presented) = params.get("refresh_token") else { return Ok(None) };
        Ok(self.store.refresh(&secrets::hash(presented)).await?.filter(|r| r.used_at.is_some()))
    }

    // ----- token exchange (RFC 8693) -----

    /// One delegation hop (DESIGN §3.2): the calling agent B receives a
    /// narrower token for the chain of `subject_token` extended by B.
    pub(crate) async fn exchange(
        &self,
        client: &AuthenticatedClient,
        params: &Params,
        jkt: Option<&str>,
    ) -> Result<(Change, Event, IssuedToken), Error> {
        let next = Self::agent_of(client, "token exchange")?;
        params.only(&[
            "subject_token",
            "subject_token_type",
            "scope",
            "resource",
            "audience",
            "requested_token_type",
            "actor_token",
            "actor_token_type",
        ])?;
        let subject_token = params.require("subject_token")?;
        if params.require("subject_token_type")? != TOKEN_TYPE_ACCESS {
            return Err(Error::InvalidRequest(format!("subject_token_type must be {TOKEN_TYPE_ACCESS}")));
        }
        if let Some(t) = params.get("requested_token_type")
            && t != TOKEN_TYPE_ACCESS
        {
            return Err(Error::InvalidRequest(format!("requested_token_type must be {TOKEN_TYPE_ACCESS}")));
        }
        // The actor is the authenticated client. An actor token may only
        // confirm that; `act` is never taken from input.
        match (params.get("actor_token"), params.get("actor_token_type")) {
            (None, None) => {}
            (Some(t), Some(ty)) if ty == TOKEN_TYPE_ACCESS => {
                let confirms = self.verify_ours(t).await?.is_some_and(|c| c.client_id == next.id.to_string());
                if !confirms {
                    return Err(Error::InvalidRequest("actor_token does not name the authenticated client".into()));
                }
            }
            _ => {
                return Err(Error::InvalidRequest(format!(
                    "actor_token and actor_token_type ({TOKEN_TYPE_ACCESS}) go together"
                )));
            }
        }
        let audience = match (params.all("resource").as_slice(), params.all("audience").as_slice()) {
            ([], []) => None,
            ([r], []) | ([], [r]) => Some((*r).to_owned()),
            ([r], [a]) if r == a => Some((*r).to_owned()),
            _ => return Err(Error::InvalidTarget("give at most one resource (or the same audience)".into())),
        };
        let scopes = match params.get("scope") {
            None => None,
            Some(s) => Some(parse_scopes(Some(s))?),
        };
        let parent = match self.live_chain(subject_token).await? {
            Ok(live) => live,
            Err(why) => return Err(Error::InvalidRequest(format!("subject_token is not usable: {why}"))),
        };
        let Some(parent_chain) = &parent.chain else {
            return Err(Error::InvalidRequest("a resource server's token cannot be delegated".into()));
        };
        let from = parent.current().ok_or_else(|| Error::InvalidRequest("subject_token has no actor".into()))?;
        // No agent twice, and no deeper than allowed (rule 5), said first:
        // it is the plainest reason.
        let chain = parent_chain
            .extend(next.id, self.config.max_delegation_depth)
            .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        // A may delegate to B: may_act when present, and policy.
        if let Some(may) = &parent.claims.may_act
            && may.sub != next.id.to_string()
        {
            return Err(Error::InvalidRequest(format!("{} is not named by the token's may_act", next.id)));
        }
        let related = self.related(&[from, next], &[]).await?;
        let d = self.caches.issuance(
            &self.engine(),
            Principal::Agent(from),
            "mandate:delegate",
            Target::Agent(next),
            &related,
        );
        if !d.allowed {
            return Err(Error::InvalidRequest(format!("policy does not allow {} to delegate to {}", from.id, next.id)));
        }
        let now = self.clock.now();
        let authority = Authority {
            scopes: parent.record.scopes.clone(),
            audience: parent.record.audience.clone(),
            expires_at: parent.record.expires_at,
        };
        let grant = parent.grant.clone();
        let request = HopRequest { scopes, audience, lifetime: Duration::seconds(self.config.access_token_ttl) };
        let narrowed = delegation::narrow(&authority, &request, now, &self.config.issuer, |aud, s| {
            grant.as_ref().is_some_and(|g| g.resource == aud && s.is_subset_of(&g.scopes))
        })
        .map_err(|e| match e {
            delegation::DelegationError::ScopeWidened(_) | delegation::DelegationError::NoScope => {
                Error::InvalidScope(e.to_string())
            }
            delegation::DelegationError::AudienceNotAllowed(_) => Error::InvalidTarget(e.to_string()),
            other => Error::InvalidRequest(other.to_string()),
        })?;
        // Every agent of the new chain, and the user, hold each scope now.
        let res = self.resource_by_identifier(&narrowed.audience).await?;
        let mut agents: Vec<&Agent> = parent.agents.iter().collect();
        agents.push(next);
        self.authorize_scopes(parent.user.as_ref(), &agents, &res, &narrowed.scopes)
            .await?
            .map_err(Error::InvalidScope)?;
        let not_after = agents.iter().filter_map(|a| a.expires_at).fold(narrowed.expires_at, OffsetDateTime::min);
        let (record, jwt) = self
            .mint(Mint {
                client: next.id,
                chain: &chain,
                audience: narrowed.audience,
                scopes: narrowed.scopes,
                grant: grant.as_ref(),
                purpose: parent.claims.purpose.clone(),
                parent: Some(parent.record.jti),
                not_after: Some(not_after),
                family: None,
                // Bound to the caller's own key, never the parent's.
                jkt,
            })
            .await?;
        let event = self.issued_event(&record, &chain);
        let mut issued = self.issued(&record, jwt);
        issued.issued_token_type = Some(TOKEN_TYPE_ACCESS);
        let mut change = Change::new().with(Mutation::InsertToken(record));
        if let Some(g) = &grant {
            change.push(Mutation::TouchGrant { id: g.id, at: now });
        }
        Ok((change, event, issued))
    }

    // ----- grants -----

    /// `GET /v1/grants`: the admin sees every grant; a user sees the grants
    /// they gave and those given to agents they own.
    pub async fn list_grants(
        &self,
        caller: Caller,
        user: Option<UserId>,
        agent: Option<AgentId>,
        limit: u32,
    ) -> Result<Vec<Grant>, Error> {
        if limit == 0 || limit > crate::audit::MAX_QUERY_LIMIT {
            return Err(Error::BadInput(format!("limit must be 1 to {}", crate::audit::MAX_QUERY_LIMIT)));
        }
        let mut q = GrantQuery { user, agent, user_or_owner: None, limit };
        if let Caller::User(me) = caller {
            q.user_or_owner = Some(me);
        }
        Ok(self.store.grants(&q).await?)
    }

    /// `POST /v1/grants/{id}/revoke`, by the admin, the user who gave it or
    /// the agent's owner. Every token under it dies, exchanged ones too.
    /// Returns the grant and how many tokens were revoked.
    pub async fn revoke_grant(&self, caller: Caller, id: GrantId) -> Result<(Grant, u64), Error> {
        let mut grant = self.store.grant(id).await?.ok_or_else(|| Error::NotFound(format!("grant {id}")))?;
        if let Caller::User(me) = caller
            && me != grant.user
        {
            let owner = self.store.agent(grant.agent).await?.map(|a| a.owner);
            if owner != Some(me) {
                self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), "not this user's grant").await?;
                return Err(Error::Forbidden(
                    "only the user who gave a grant or the agent's owner may revoke it".into(),
                ));
            }
        }
        if grant.status == GrantStatus::Revoked {
            return Err(Error::Conflict(format!("grant {id} is already revoked")));
        }
        let now = self.clock.now();
        let mut event = self.admin_event(kind::GRANT_REVOKED, caller);
        event.subject = Some(grant.user.to_string());
        event.grant_id = Some(id.to_string());
        event.resource = Some(grant.resource.clone());
        event.chain = vec![grant.user.to_string(), grant.agent.to_string()];
        event.reason = Some("revoked with every token issued under it".into());
        let mut change = Change::new();
        let revoked = change.push(Mutation::RevokeGrant { id, at: now });
        let tokens = change.push(Mutation::RevokeTokensOfGrant { grant: id, at: now });
        change.push(AuditRecord::counting(event, &[tokens]).mutation());
        let receipt = self.store.commit(change).await?;
        if receipt.affected(revoked)? == 0 {
            return Err(Error::Conflict(format!("grant {id} is already revoked")));
        }
        grant.status = GrantStatus::Revoked;
        grant.revoked_at = Some(now);
        Ok((grant, receipt.affected(tokens)?))
    }

    // ----- approvals -----

    /// `GET /v1/approvals`: a user sees the requests they are asked to decide.
    /// Approvals a person is asked to decide (all of them for the admin),
    /// newest first, `limit` at a time; `before` pages on from the last id
    /// of the previous page.
    pub async fn list_approvals(
        &self,
        caller: Caller,
        status: Option<ApprovalStatus>,
        before: Option<ApprovalId>,
        limit: u32,
    ) -> Result<Vec<Approval>, Error> {
        if limit == 0 || limit > crate::audit::MAX_QUERY_LIMIT {
            return Err(Error::BadInput(format!("limit must be 1 to {}", crate::audit::MAX_QUERY_LIMIT)));
        }
        let approver = match caller {
            Caller::Admin => None,
            Caller::User(me) => Some(me),
        };
        Ok(self.store.approvals(&ApprovalQuery { approver, status, binding: None, before, limit }).await?)
    }

    /// One approval the caller is asked to decide, by a keyed read (never
    /// found by scanning a list, which a cap would cut short).
    pub async fn approval_for(&self, caller: Caller, id: ApprovalId) -> Result<Approval, Error> {
        let approval = self.store.approval(id).await?.ok_or_else(|| Error::NotFound(format!("approval {id}")))?;
        match caller {
            Caller::Admin => Ok(approval),
            Caller::User(me) if me == approval.approver => Ok(approval),
            Caller::User(_) => Err(Error::NotFound(format!("approval {id}"))),
        }
    }

    /// `POST /v1/approvals/{id}/approve|deny`: only the person the request
    /// names decides, once, before it expires. The admin token cannot decide
    /// for them, and an agent's token is not accepted by this API at all.
    pub async fn decide_approval(&self, caller: Caller, id: ApprovalId, approve: bool) -> Result<Approval, Error> {
        let mut approval = self.store.approval(id).await?.ok_or_else(|| Error::NotFound(format!("approval {id}")))?;
        let Caller::User(me) = caller else {
            self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), "only the named person decides").await?;
            return Err(Error::Forbidden("only the person the request names may decide it".into()));
        };
        if me != approval.approver {
            self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), "not this user's approval").await?;
            return Err(Error::Forbidden("only the person the request names may decide it".into()));
        }
        let now = self.clock.now();
        if approval.status != ApprovalStatus::Pending {
            return Err(Error::Conflict(format!("approval {id} is already {}", approval.status.as_str())));
        }
        if now >= approval.expires_at {
            return Err(Error::Conflict(format!("approval {id} has expired")));
        }
        let mut event = self.admin_event(if approve { kind::APPROVAL_APPROVED } else { kind::APPROVAL_DENIED }, caller);
        event.decision = Some(if approve { ALLOW } else { DENY }.into());
        event.subject = Some(approval.user.to_string());
        event.resource = Some(approval.resource.clone());
        event.chain = vec![approval.user.to_string(), approval.agent.to_string()];
        event.reason = Some(id.to_string());
        let mut change = Change::new();
        let mut grant_id = None;
        if approve && let ApprovalSubject::Grant { scopes, .. } = &approval.subject {
            // The grant is created as approved; issuance re-checks policy.
            let user =
                self.store.user(approval.user).await?.ok_or_else(|| Error::Conflict("the user is gone".into()))?;
            let agent =
                self.store.agent(approval.agent).await?.ok_or_else(|| Error::Conflict("the agent is gone".into()))?;
            let res = self.resource_by_identifier(&approval.resource).await?;
            let grant =
                self.new_grant(&user, &agent, &res, scopes, approval.binding_message.clone(), &me.to_string())?;
            event.grant_id = Some(grant.id.to_string());
            event.scope = Some(scopes.to_claim());
            grant_id = Some(grant.id);
            change.push(Mutation::InsertGrant(grant));
        }
        if let ApprovalSubject::Action { action, target, .. } = &approval.subject {
            event.action = Some(action.clone());
            event.reason = Some(format!("{id}: {action} on {target}"));
            // An action approval dies with the grant it was asked under
            // (SECURITY row 43): there is nothing left to approve.
            if approve && let Some(g) = approval.grant {
                let live = self.store.grant(g).await?.is_some_and(|g| g.is_live(now));
                if !live {
                    return Err(Error::Conflict(format!("approval {id}: its grant {g} is revoked or expired")));
                }
            }
        }
        let to = if approve { ApprovalStatus::Approved } else { ApprovalStatus::Denied };
        change.push(Mutation::DecideApproval { id, to, by: me.to_string(), grant: grant_id, at: now });
        change.push(AuditRecord::new(event).mutation());
        self.store.commit(change).await?;
        approval.status = to;
        approval.decided_by = Some(me.to_string());
        approval.decided_at = Some(now);
        approval.grant = grant_id;
        Ok(approval)
    }

    /// Records how a token request that failed (or waits) ended, with what
    /// the refusal changes (a poll time, a revoked family).
    pub(crate) fn refusal_event(&self, client: &AuthenticatedClient, grant_type: &str, e: &Error) -> Event {
        let mut event = self.client_event(
            match e {
                Error::AuthorizationPending | Error::SlowDown => kind::CIBA_POLLED,
                Error::InvalidGrant(m) if m.contains("family is revoked") => kind::REFRESH_REUSED,
                _ => kind::TOKEN_DENIED,
            },
            client,
        );
        event.decision = Some(DENY.into());
        event.reason = Some(format!("{grant_type}: {}", reason(e)));
        event
    }

    /// For tests and the check API: the token is live as a whole.
    pub async fn token_status(&self, token: &str) -> Result<Result<std::sync::Arc<LiveToken>, NotLive>, Error> {
        self.live_chain(token).await
    }
}

/// `token_type`: `DPoP` for a bound token (RFC 9449 §5).
pub(crate) fn token_type(record: &TokenRecord) -> &'static str {
    if record.cnf_jkt.is_some() { "DPoP" } else { "Bearer" }
}
