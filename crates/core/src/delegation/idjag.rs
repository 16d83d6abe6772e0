//! Cross-app access (DESIGN §10, draft-ietf-oauth-identity-assertion-authz-grant):
//! an agent redeems an Identity Assertion JWT Authorization Grant that the
//! enterprise IdP issued for a person. Mandate is the resource
//! application's authorization server: it checks the ID-JAG, finds the
//! person by their link to the IdP, narrows the scopes to what the ID-JAG,
//! the request, the agent's ceiling and policy all allow, records a grant
//! approved by the IdP and issues one access token (`sub` the person, `act`
//! the agent), with no refresh token.

use std::sync::Arc;

use mandate_jose::federated::{self, ExternalRules, IdJag};
use mandate_model::ScopeSet;
use mandate_model::records::{Agent, Resource, User, UserStatus};
use time::{Duration, OffsetDateTime};

use crate::Error;
use crate::audit::{ALLOW, kind};
use crate::oauth::IssuedToken;
use crate::service::{AuthenticatedClient, Mandate};
use crate::store::{Change, Mutation};
use crate::trust::{IssuerUse, MAX_EXTERNAL_LIFETIME};

/// A grant approved by an IdP is recorded as approved by `idp:<issuer>`.
pub const IDP_APPROVER_PREFIX: &str = "idp:";

impl Mandate {
    /// The `jwt-bearer` grant with an ID-JAG, for an authenticated agent.
    pub(crate) async fn id_jag_token(
        &self,
        client: &AuthenticatedClient,
        assertion: &str,
        scope: Option<&str>,
        resources: &[String],
        jkt: Option<&str>,
    ) -> Result<(Change, mandate_audit::Event, IssuedToken), Error> {
        let agent = Self::agent_of(client, "an ID-JAG")?;
        let bad = |why: &str| Error::InvalidGrant(why.to_owned());
        let peeked = federated::peek(assertion).map_err(|e| bad(&format!("assertion: {e}")))?;
        if !peeked.is_id_jag() {
            return Err(bad("the assertion is not an ID-JAG (typ oauth-id-jag+jwt); a workload JWT as the assertion \
                 authenticates its agent and comes without other client authentication"));
        }
        let issuer = self
            .trusted_issuer(&peeked.iss, IssuerUse::IdJag)
            .ok_or_else(|| bad("the ID-JAG's issuer is not trusted for cross-app access"))?;
        let keys = self.issuer_keys(issuer, peeked.kid.as_deref()).await?;
        let audiences = [self.config.issuer.as_str()];
        let rules = ExternalRules {
            audiences: &audiences,
            now: self.clock.now().unix_timestamp(),
            max_lifetime: MAX_EXTERNAL_LIFETIME,
            leeway: self.config.leeway,
        };
        let jag = federated::verify_id_jag(assertion, &keys, &rules).map_err(|e| bad(&format!("ID-JAG: {e}")))?;
        // The grant was issued to this agent, as the IdP names it.
        let names_agent =
            jag.client_id == agent.id.to_string() || agent.metadata_url.as_deref() == Some(&jag.client_id);
        if !names_agent {
            return Err(bad("the ID-JAG was issued to another client"));
        }
        let user = self.id_jag_user(&jag, issuer.resolve_by_email).await?;
        let res = self.id_jag_resource(&jag, resources).await?;
        let scopes = self.id_jag_scopes(&jag, scope, &user, agent, &res).await?;
        let now = self.clock.now();
        let approved_by = format!("{IDP_APPROVER_PREFIX}{}", jag.iss);
        let mut grant = self.new_grant(&user, agent, &res, &scopes, None, &approved_by)?;
        // The permits that allow it may restrict who acts next (ADR 0024).
        grant.may_act = self.grant_may_act(&user, agent, &res, &scopes, None).await?;
        // No refresh token: the grant lives as long as its one token.
        grant.expires_at = grant.expires_at.min(now + Duration::seconds(self.config.access_token_ttl));
        let (mut change, event, issued) = self.grant_token(agent, &grant, &scopes, None, jkt).await?;
        let exp = OffsetDateTime::from_unix_timestamp(jag.exp).map_err(|_| bad("exp out of range"))?;
        let key = mandate_jose::sha256_b64(format!("{}\0{}", jag.iss, jag.jti).as_bytes());
        change.prepend(Mutation::InsertGrant(grant.clone()));
        change.prepend(Mutation::ConsumeGrantJti { key, expires_at: exp });
        let mut created = self.client_event(kind::GRANT_CREATED, client);
        created.decision = Some(ALLOW.into());
        created.subject = Some(user.id.to_string());
        created.chain = vec![user.id.to_string(), agent.id.to_string()];
        created.resource = Some(res.identifier.clone());
        created.scope = Some(scopes.to_claim());
        created.grant_id = Some(grant.id.to_string());
        created.reason = Some(format!("approved_by {approved_by} (ID-JAG {})", bounded(&jag.jti)));
        change.push(crate::AuditRecord::new(created).mutation());
        Ok((change, event, issued))
    }

    /// The person the ID-JAG speaks for: by their link to the issuer, or
    /// (where the issuer is so configured) by a verified email.
    async fn id_jag_user(&self, jag: &IdJag, by_email: bool) -> Result<User, Error> {
        let user = match self.store.upstream_link(&jag.iss, &jag.sub).await? {
            Some(link) => self.store.user(link.user).await?,
            None if by_email && jag.email_verified => {
                match jag.email.as_deref().map(mandate_model::name::validate_email) {
                    Some(Ok(email)) => self.store.user_by_email(&email).await?,
                    _ => None,
                }
            }
            None => None,
        };
        let user = user.ok_or_else(|| Error::InvalidGrant("the ID-JAG's subject is linked to no user".into()))?;
        if user.status != UserStatus::Active {
            return Err(Error::InvalidGrant("the user is disabled".into()));
        }
        Ok(user)
    }

    /// The audience: the ID-JAG's one resource; a `resource` in the request
    /// may only repeat it.
    async fn id_jag_resource(&self, jag: &IdJag, requested: &[String]) -> Result<Arc<Resource>, Error> {
        let resource = match jag.resources.as_slice() {
            [one] => one,
            [] => return Err(Error::InvalidGrant("the ID-JAG names no resource".into())),
            _ => return Err(Error::InvalidGrant("the ID-JAG names more than one resource".into())),
        };
        if requested.iter().any(|r| r != resource) {
            return Err(Error::InvalidTarget("resource may only repeat the ID-JAG's resource".into()));
        }
        match self.resource_by_identifier(resource).await {
            Ok(r) => Ok(r),
            Err(Error::InvalidTarget(_)) => Err(Error::InvalidGrant("the ID-JAG's resource is not registered".into())),
            Err(e) => Err(e),
        }
    }

    /// The ID-JAG's scopes, narrowed by the request (which may not widen
    /// them), then by the agent's ceiling and policy, scope by scope; a
    /// scope that needs a person's approval (`@approval`) is left out, since
    /// nobody is there to give it: CIBA asks them. Nothing left is
    /// `invalid_scope`.
    async fn id_jag_scopes(
        &self,
        jag: &IdJag,
        requested: Option<&str>,
        user: &User,
        agent: &Agent,
        res: &Resource,
    ) -> Result<ScopeSet, Error> {
        let granted = match jag.scope.as_deref() {
            Some(s) if !s.is_empty() => {
                ScopeSet::parse(s).map_err(|e| Error::InvalidGrant(format!("the ID-JAG's scope: {e}")))?
            }
            _ => return Err(Error::InvalidGrant("the ID-JAG grants no scope".into())),
        };
        let wanted = match requested {
            None | Some("") => granted,
            Some(s) => {
                let asked = ScopeSet::parse(s).map_err(|e| Error::InvalidScope(e.to_string()))?;
                if let Some(extra) = asked.iter().find(|s| !granted.contains(s)) {
                    return Err(Error::InvalidScope(format!("scope {extra} is beyond what the ID-JAG grants")));
                }
                asked
            }
        };
        let mut allowed = Vec::new();
        let mut left_out = Vec::new();
        for s in wanted.iter() {
            let one = ScopeSet::from_iter_checked([Ok(s.clone())]).map_err(|e| Error::InvalidScope(e.to_string()))?;
            // Narrowing only: the token is decided again, with its DPoP binding, when minted.
            match self.authorize_scopes(Some(user), &[agent], res, &one, false).await? {
                Ok(None) => allowed.push(s.clone()),
                Ok(Some(_)) | Err(_) => left_out.push(s.to_string()),
            }
        }
        if allowed.is_empty() {
            return Err(Error::InvalidScope(format!(
                "none of the ID-JAG's scopes is allowed for this agent now ({}): beyond its ceiling, denied by \
                 policy, or needing a person's approval",
                left_out.join(" ")
            )));
        }
        ScopeSet::from_iter_checked(allowed.into_iter().map(Ok)).map_err(|e| Error::InvalidScope(e.to_string()))
    }
}

fn bounded(s: &str) -> String {
    crate::request::bounded_input(s)
}
