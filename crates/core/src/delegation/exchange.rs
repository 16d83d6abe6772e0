//! Token exchange (RFC 8693): one delegation hop, which only narrows.

use mandate_audit::Event;
use mandate_model::delegation::{self, Authority, HopRequest};
use mandate_model::records::Agent;
use mandate_policy::{Principal, Target};
use time::{Duration, OffsetDateTime};

use super::{Mint, parse_scopes};
use crate::Error;
use crate::oauth::IssuedToken;
use crate::request::{ExchangeRequest, TOKEN_TYPE_ACCESS};
use crate::service::{AuthenticatedClient, Mandate};
use crate::store::{Change, Mutation};

impl Mandate {
    /// One delegation hop (DESIGN §3.2): the calling agent B receives a
    /// narrower token for the chain of `subject_token` extended by B.
    /// (Long on purpose: the RFC 8693 checks of one hop, in the order the
    /// contract lists them (DESIGN §3.2), over the same subject token, actor
    /// and narrowed claims; split apart they would pass all of them along.)
    pub(crate) async fn exchange(
        &self,
        client: &AuthenticatedClient,
        req: &ExchangeRequest,
        jkt: Option<&str>,
    ) -> Result<(Change, Event, IssuedToken), Error> {
        let next = Self::agent_of(client, "token exchange")?;
        let subject_token = req.subject_token.as_str();
        // The actor is the authenticated client. An actor token may only
        // confirm that; `act` is never taken from input.
        if let Some(t) = &req.actor_token {
            let confirms = self.verify_ours(t).await?.is_some_and(|c| c.client_id == next.id.to_string());
            if !confirms {
                return Err(Error::InvalidRequest("actor_token does not name the authenticated client".into()));
            }
        }
        let audience = match (req.resources.as_slice(), req.audiences.as_slice()) {
            ([], []) => None,
            ([r], []) | ([], [r]) => Some(r.clone()),
            ([r], [a]) if r == a => Some(r.clone()),
            _ => return Err(Error::InvalidTarget("give at most one resource (or the same audience)".into())),
        };
        let scopes = match req.scope.as_deref() {
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
        // …and no deeper than any agent of the new chain's own limit (DESIGN §13).
        let in_chain: Vec<&Agent> = parent.agents.iter().chain(std::iter::once(next)).collect();
        self.chain_within_limits(&in_chain).await?;
        // A may delegate to B: may_act when present (ADR 0024), and policy.
        if let Some(may) = &parent.claims.may_act
            && !self.may_act_covers(may, next).await?
        {
            return Err(Error::InvalidGrant(format!(
                "{} is not named by the subject token's may_act ({may})",
                next.id
            )));
        }
        // The gateway of the token's audience exchanges it for one of the
        // audiences the resource lists (DESIGN §9): the resource naming
        // its gateway is the delegation, and the token keeps only the
        // scopes the upstream declares too.
        let gateway_to = self.gateway_hop(&parent.record.audience, next, audience.as_deref()).await?;
        // A DPoP-bound subject token is exchanged by its holder only: the
        // caller proves its key (its own DPoP proof, or subject_token_dpop),
        // or the token's may_act names the caller, or the caller is the
        // gateway the token was presented to, with its holder's proof
        // (ADR 0024).
        let subject_burn = self.holder_of(
            &parent.claims,
            subject_token,
            req.subject_token_dpop.as_deref(),
            jkt,
            gateway_to.is_some(),
        )?;
        if gateway_to.is_none() {
            let related = self.related(&[from, next], parent.user.as_ref().as_slice()).await?;
            let mut chain_agents: Vec<&Agent> = parent.agents.iter().collect();
            chain_agents.push(next);
            let facts = self.facts(parent.user.as_ref(), &chain_agents, jkt.is_some());
            let engine = self.fresh_engine().await?;
            let d = self.caches.issuance(
                &engine,
                Principal::Agent(from),
                "mandate:delegate",
                Target::Agent(next),
                &related,
                &facts,
            );
            if !d.allowed {
                return Err(Error::InvalidRequest(format!(
                    "policy does not allow {} to delegate to {}",
                    from.id, next.id
                )));
            }
        }
        let now = self.clock.now();
        let authority = match &gateway_to {
            None => Authority {
                scopes: parent.record.scopes.clone(),
                audience: parent.record.audience.clone(),
                expires_at: parent.record.expires_at,
            },
            Some(upstream) => {
                let declared = parent.record.scopes.iter().filter(|s| upstream.scopes.contains_key(s.as_str()));
                let scopes = mandate_model::ScopeSet::from_iter_checked(declared.cloned().map(Ok))
                    .map_err(|e| Error::Unavailable(e.to_string()))?;
                if scopes.is_empty() {
                    return Err(Error::InvalidScope(format!(
                        "none of the token's scopes is declared by {}",
                        upstream.identifier
                    )));
                }
                Authority { scopes, audience: upstream.identifier.clone(), expires_at: parent.record.expires_at }
            }
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
        self.authorize_scopes(parent.user.as_ref(), &agents, &res, &narrowed.scopes, jkt.is_some())
            .await?
            .map_err(Error::InvalidScope)?;
        // RFC 9396 down a chain (DESIGN §13): each detail asked for is one
        // the resource declares and the subject token's details cover;
        // none asked inherits them. Details are typed by their resource,
        // so they do not travel to another audience.
        let asked =
            req.authorization_details.as_deref().map(|raw| crate::details::accept(&res, Some(raw))).transpose()?;
        let inherited = parent.claims.authorization_details.clone().unwrap_or_default();
        let details = if res.identifier == parent.record.audience {
            inherited
                .narrow_to(asked.as_ref(), crate::details::bounds_of(&res))
                .map_err(Error::InvalidAuthorizationDetails)?
        } else if asked.is_some() {
            return Err(Error::InvalidAuthorizationDetails(format!(
                "the subject token's details are for {}, not {}",
                parent.record.audience, res.identifier
            )));
        } else {
            mandate_model::details::AuthorizationDetails::default()
        };
        self.authorize_details(parent.user.as_ref(), &agents, (&res, &narrowed.scopes), &details, jkt.is_some())
            .await?
            .map_err(Error::InvalidAuthorizationDetails)?;
        let not_after = agents.iter().filter_map(|a| a.expires_at).fold(narrowed.expires_at, OffsetDateTime::min);
        let limits = self.limits_of(next).await?;
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
                limits: &limits,
                agent: next,
                // The constraint holds all the way down the chain.
                may_act: parent.claims.may_act.as_ref(),
                details: details.clone(),
            })
            .await?;
        let mut event = self.issued_event(&record, &chain);
        event.reason = crate::details::with_digest(event.reason.take(), &details);
        let mut issued = self.issued(&record, jwt);
        issued.authorization_details = (!details.is_empty()).then_some(details);
        issued.issued_token_type = Some(TOKEN_TYPE_ACCESS);
        let mut change = Change::new().with(Mutation::InsertToken(record));
        if let Some(burn) = subject_burn {
            change.push(burn);
        }
        if let Some(g) = &grant {
            change.push(Mutation::TouchGrant { id: g.id, at: now });
        }
        Ok((change, event, issued))
    }
}

impl Mandate {
    /// When `next` is the gateway of the resource `audience` and asks for
    /// one of the audiences that resource lets it exchange for: that
    /// upstream resource.
    async fn gateway_hop(
        &self,
        audience: &str,
        next: &Agent,
        asked: Option<&str>,
    ) -> Result<Option<std::sync::Arc<mandate_model::records::Resource>>, Error> {
        let Some(target) = asked.filter(|t| *t != audience) else {
            return Ok(None);
        };
        if audience == self.config.issuer {
            return Ok(None);
        }
        let guarded = match self.resource_by_identifier(audience).await {
            Ok(r) => r,
            Err(Error::InvalidTarget(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if guarded.gateway != Some(next.id) {
            return Ok(None);
        }
        if !guarded.exchange_to.iter().any(|a| a == target) {
            return Err(Error::InvalidTarget(format!("{audience} does not let its gateway exchange for {target}")));
        }
        self.resource_by_identifier(target).await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    //! Token exchange on a memory store: a hop only narrows, never outlives
    //! its parent, and needs a live parent.

    use mandate_model::ScopeSet;
    use time::Duration;

    use crate::Error;
    use crate::audit::kind;
    use crate::oauth::TokenCaller;
    use crate::testing::World;

    #[tokio::test]
    async fn an_exchange_extends_the_chain_and_only_narrows() {
        let w = World::new().await;
        let parent = w.granted(&w.planner, "read").await;
        let parent_record = w.record(&parent).await;
        w.clock.advance(Duration::seconds(60));
        let hop = w.exchange(&w.helper, &parent.access_token, None).await.unwrap();
        let record = w.record(&hop).await;
        assert_eq!(record.chain, vec![w.planner.id(), w.helper.id()]);
        assert_eq!((record.parent, record.grant), (Some(parent.jti), parent_record.grant));
        assert_eq!((record.subject.clone(), record.audience.clone()), (w.alice.id.to_string(), parent_record.audience));
        assert_eq!(record.scopes, ScopeSet::parse("read").unwrap());
        // Five minutes from now would outlive the parent: it ends with it.
        assert_eq!(record.expires_at, parent_record.expires_at);
        assert_eq!(hop.issued_token_type, Some(crate::request::TOKEN_TYPE_ACCESS));
        let recorded = w.events(kind::TOKEN_ISSUED).await;
        assert_eq!(recorded.last().and_then(|e| e.parent.clone()), Some(parent.jti.to_string()));
        // Wider than the parent, or elsewhere: refused, and nothing issued.
        let issued = w.events(kind::TOKEN_ISSUED).await.len();
        let wider = w.exchange(&w.helper, &parent.access_token, Some("read write")).await;
        assert!(matches!(wider, Err(Error::InvalidScope(_))), "{wider:?}");
        let x = crate::request::ExchangeRequest {
            subject_token: parent.access_token.clone(),
            actor_token: None,
            resources: vec!["https://elsewhere.example".into()],
            audiences: Vec::new(),
            scope: None,
            subject_token_dpop: None,
            authorization_details: None,
        };
        let elsewhere = w.grant(&w.helper, crate::GrantRequest::Exchange(x)).await;
        assert!(matches!(elsewhere, Err(Error::InvalidTarget(_))), "{elsewhere:?}");
        assert_eq!(w.events(kind::TOKEN_ISSUED).await.len(), issued);
        assert_eq!(w.events(kind::TOKEN_DENIED).await.len(), 2);
    }

    #[tokio::test]
    async fn no_agent_appears_twice_in_a_chain() {
        let w = World::new().await;
        let parent = w.granted(&w.planner, "read").await;
        let hop = w.exchange(&w.helper, &parent.access_token, None).await.unwrap();
        for (who, token) in
            [(&w.planner, &hop.access_token), (&w.helper, &hop.access_token), (&w.planner, &parent.access_token)]
        {
            let again = w.exchange(who, token, None).await;
            assert!(matches!(again, Err(Error::InvalidRequest(_))), "{again:?}");
        }
    }

    #[tokio::test]
    async fn a_revoked_parent_can_no_longer_be_exchanged_and_takes_its_hops_along() {
        let w = World::new().await;
        let parent = w.granted(&w.planner, "read").await;
        let hop = w.exchange(&w.helper, &parent.access_token, None).await.unwrap();
        let third = w.agent(w.alice.id, Some(w.helper.id())).await.unwrap();
        let leaf = w.exchange(&third, &hop.access_token, None).await.unwrap();
        assert_eq!(w.record(&leaf).await.chain.len(), 3);
        assert!(w.m.revoke(&TokenCaller::Admin, &parent.access_token, None).await.unwrap());
        for t in [&parent, &hop, &leaf] {
            assert!(!w.is_live(&t.access_token).await, "a token below a revoked parent is live");
            assert!(w.record(t).await.revoked_at.is_some(), "the revocation did not reach every hop");
        }
        let revoked = w.events(kind::TOKEN_REVOKED).await;
        assert_eq!(revoked.last().and_then(|e| e.count), Some(3), "the event counts the whole tree");
        let refused = w.exchange(&w.helper, &parent.access_token, None).await;
        assert!(matches!(refused, Err(Error::InvalidRequest(ref m)) if m.contains("not usable")), "{refused:?}");
    }

    #[tokio::test]
    async fn policy_decides_who_may_receive_a_hop() {
        let w = World::new().await;
        let parent = w.granted(&w.planner, "read").await;
        // Mandate's default lets an agent delegate only to the ephemeral
        // agents it spawned; Alice's other agent is not one.
        let stranger = w.agent(w.alice.id, None).await.unwrap();
        let refused = w.exchange(&stranger, &parent.access_token, None).await;
        assert!(
            matches!(refused, Err(Error::InvalidRequest(ref m)) if m.contains("policy does not allow")),
            "{refused:?}"
        );
        assert!(w.exchange(&w.helper, &parent.access_token, None).await.is_ok());
        assert_eq!(w.events(kind::TOKEN_ISSUED).await.len(), 2);
    }
}
