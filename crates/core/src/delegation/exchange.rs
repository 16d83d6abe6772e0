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
}
