//! Issuing under delegated authority: policy at issuance (the user and every agent of the chain), minting an access token and its record, refresh tokens, and the first tokens of a new grant.

use mandate_audit::Event;
use mandate_model::claims::{AccessTokenClaims, Confirmation};
use mandate_model::delegation::Chain;
use mandate_model::records::{Agent, ClientId, Grant, RefreshRecord, Resource, TokenRecord, User, UserStatus};
use mandate_model::{AgentId, Jti, ScopeSet};
use mandate_policy::{Approver, Principal, Target};
use time::{Duration, OffsetDateTime};

use super::{REFRESH_TOKEN_PREFIX, token_type};
use crate::audit::{ALLOW, kind};
use crate::chain::chain_names;
use crate::oauth::IssuedToken;
use crate::ports::new_ulid;
use crate::service::Mandate;
use crate::store::{Change, Mutation};
use crate::{Error, secrets};

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
    /// The limits in force for the agent it is issued to (DESIGN §13).
    pub limits: &'a mandate_model::limits::Limits,
    pub agent: &'a Agent,
    /// Who may act next (`may_act`): the grant's constraint, down the chain.
    pub may_act: Option<&'a mandate_model::actors::MayAct>,
    /// RFC 9396 details the token carries (the grant's, or narrower).
    pub details: mandate_model::details::AuthorizationDetails,
}

impl Mandate {
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
        dpop_bound: bool,
    ) -> Result<Result<Option<Approver>, String>, Error> {
        let related = self.related(agents, user.as_slice()).await?;
        let facts = self.facts(user, agents, dpop_bound);
        let engine = self.fresh_engine().await?;
        Ok(self.authorize_scopes_with(&engine, user, agents, resource, scopes, (&related, &facts)))
    }

    /// [`Mandate::authorize_scopes`] once per RFC 9396 detail asked for,
    /// each as `context.authorization_detail` (DESIGN §13): every one must
    /// be allowed; the approver is the strictest any asks for. Nothing to
    /// decide without details.
    pub(crate) async fn authorize_details(
        &self,
        user: Option<&User>,
        agents: &[&Agent],
        (resource, scopes): (&Resource, &ScopeSet),
        details: &mandate_model::details::AuthorizationDetails,
        dpop_bound: bool,
    ) -> Result<Result<Option<Approver>, String>, Error> {
        if details.is_empty() {
            return Ok(Ok(None));
        }
        let related = self.related(agents, user.as_slice()).await?;
        let engine = self.fresh_engine().await?;
        let mut approval: Option<Approver> = None;
        for d in details.iter() {
            let mut facts = self.facts(user, agents, dpop_bound);
            facts.declared.extend(crate::details::facts_of(resource, d));
            match self.authorize_scopes_with(&engine, user, agents, resource, scopes, (&related, &facts)) {
                Err(why) => return Ok(Err(format!("authorization detail of type {}: {why}", d.kind()))),
                Ok(a) => {
                    approval = match (approval, a) {
                        (Some(Approver::User), _) | (_, Some(Approver::User)) => Some(Approver::User),
                        (x, y) => x.or(y),
                    }
                }
            }
        }
        Ok(Ok(approval))
    }

    pub(crate) fn authorize_scopes_with(
        &self,
        engine: &mandate_policy::PolicyEngine,
        user: Option<&User>,
        agents: &[&Agent],
        resource: &Resource,
        scopes: &ScopeSet,
        (related, facts): (&mandate_policy::Related, &mandate_policy::Facts),
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
                        self.caches.issuance(engine, Principal::User(u), action, target, related, facts),
                    ));
                }
                for agent in agents {
                    let d = self.caches.issuance(engine, Principal::Agent(agent), action, target, related, facts);
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
                        // A permit closed by its @window names the window.
                        let why =
                            if d.reasons.is_empty() { String::new() } else { format!(" ({})", d.reasons.join(", ")) };
                        return Err(format!(
                            "policy does not allow {who} {scope} ({action}) on {}{why}",
                            resource.identifier
                        ));
                    }
                    approval = Approver::stricter(approval, d.approval);
                }
            }
        }
        Ok(approval)
    }

    /// Signs a token and builds its record; the caller commits both.
    pub(crate) async fn mint(&self, m: Mint<'_>) -> Result<(TokenRecord, String), Error> {
        let now = self.clock.now();
        crate::limits::audience_within(m.limits, m.agent, &m.audience)?;
        let mut exp = now + Duration::seconds(self.config.access_token_ttl.min(m.limits.max_token_ttl));
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
            may_act: m.may_act.cloned(),
            grant_id: m.grant.map(|g| g.id.to_string()),
            purpose: m.purpose.clone(),
            cnf: m.jkt.map(|jkt| Confirmation { jkt: jkt.to_owned() }),
            status: Some(self.status_claim(status_idx)),
            authorization_details: (!m.details.is_empty()).then(|| m.details.clone()),
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

    pub(crate) fn issued(&self, record: &TokenRecord, jwt: String) -> IssuedToken {
        IssuedToken {
            token_type: token_type(record),
            access_token: jwt,
            expires_in: (record.expires_at - self.clock.now()).whole_seconds(),
            scope: record.scopes.to_claim(),
            jti: record.jti,
            client_id: record.client_id,
            refresh_token: None,
            issued_token_type: None,
            authorization_details: None,
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
        self.authorize_scopes(Some(&user), &[agent], &res, scopes, jkt.is_some())
            .await?
            .map_err(Error::InvalidGrant)?;
        self.authorize_details(Some(&user), &[agent], (&res, scopes), &grant.authorization_details, jkt.is_some())
            .await?
            .map_err(Error::InvalidGrant)?;
        let chain = Chain::for_user(user.id, agent.id);
        let limits = self.limits_of(agent).await?;
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
                limits: &limits,
                agent,
                may_act: grant.may_act.as_ref(),
                details: grant.authorization_details.clone(),
            })
            .await?;
        let mut event = self.issued_event(&record, &chain);
        event.reason = crate::details::with_digest(event.reason.take(), &grant.authorization_details);
        let mut issued = self.issued(&record, jwt);
        issued.authorization_details =
            (!grant.authorization_details.is_empty()).then(|| grant.authorization_details.clone());
        let now = self.clock.now();
        let change =
            Change::new().with(Mutation::InsertToken(record)).with(Mutation::TouchGrant { id: grant.id, at: now });
        Ok((change, event, issued))
    }
}
