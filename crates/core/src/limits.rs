//! Credential policy per agent (DESIGN §13): the limits in force for an
//! agent, and their enforcement at the token endpoint. (Token lifetime and
//! audience are enforced where a token is minted, delegation depth at the
//! exchange, children and their lifetime at spawn.)

use mandate_model::limits::{AgentLimits, Limits};
use mandate_model::records::Agent;

use crate::Error;
use crate::request::GrantRequest;
use crate::service::{AuthenticatedClient, Mandate};

/// Most ancestors followed to find an agent's limits; ephemeral chains are
/// short, and a loop in stored records must not hang a request.
const MAX_ANCESTORS: usize = 32;

impl Mandate {
    /// The limits in force for `agent`: the server's defaults, narrowed by
    /// every ancestor's limits (a spawned child inherits its parent's) and
    /// then its own. A missing ancestor fails closed.
    pub async fn limits_of(&self, agent: &Agent) -> Result<Limits, Error> {
        let mut own: Vec<AgentLimits> = vec![agent.limits.clone()];
        let mut parent = agent.parent;
        while let Some(p) = parent {
            if own.len() > MAX_ANCESTORS {
                return Err(Error::Unavailable(format!("agent {} has too many ancestors", agent.id)));
            }
            let a = self
                .store
                .agent(p)
                .await?
                .ok_or_else(|| Error::Unavailable(format!("agent {}'s parent {p} is missing", agent.id)))?;
            own.push(a.limits);
            parent = a.parent;
        }
        Ok(own.iter().rev().fold(self.config.default_limits(), |l, o| l.narrowed_by(o)))
    }

    /// Refuses a token request its agent's limits do not allow, before
    /// anything is decided: its grant type (RFC 6749 §5.2
    /// `unauthorized_client`), how it authenticated (`unauthorized_client`:
    /// it is known, but not allowed this way) and a missing DPoP proof
    /// (RFC 6749 §5.2 `invalid_request`, a required header is missing).
    pub(crate) async fn request_within_limits(
        &self,
        client: &AuthenticatedClient,
        grant: &GrantRequest,
        with_proof: bool,
    ) -> Result<(), Error> {
        let Some(agent) = &client.agent else {
            return Ok(());
        };
        let limits = self.limits_of(agent).await?;
        let kind = grant.grant_type().kind();
        if !limits.allows_grant(kind) {
            return Err(Error::UnauthorizedClient(format!(
                "limits.allowed_grant_types: agent {} may not use the {} grant",
                agent.id,
                kind.as_str()
            )));
        }
        if !limits.allows_client_auth(client.method) {
            return Err(Error::UnauthorizedClient(format!(
                "limits.allowed_client_auth: agent {} may not authenticate with {}",
                agent.id,
                client.method.map_or("no credential", |m| m.as_str())
            )));
        }
        if limits.require_dpop && !with_proof {
            return Err(Error::InvalidRequest(format!(
                "limits.require_dpop: agent {} must send a DPoP proof (RFC 9449)",
                agent.id
            )));
        }
        Ok(())
    }

    /// Refuses a CIBA request its agent's limits do not allow, when it is
    /// made rather than only when its token is polled: the grant type, how
    /// it authenticated, and the resource. (DPoP belongs to the token
    /// request, and is checked at the poll.)
    pub(crate) async fn ciba_within_limits(&self, client: &AuthenticatedClient, resource: &str) -> Result<(), Error> {
        let Some(agent) = &client.agent else {
            return Ok(());
        };
        let limits = self.limits_of(agent).await?;
        if !limits.allows_grant(mandate_model::limits::GrantKind::Ciba) {
            return Err(Error::UnauthorizedClient(format!(
                "limits.allowed_grant_types: agent {} may not use the ciba grant",
                agent.id
            )));
        }
        if !limits.allows_client_auth(client.method) {
            return Err(Error::UnauthorizedClient(format!(
                "limits.allowed_client_auth: agent {} may not authenticate with {}",
                agent.id,
                client.method.map_or("no credential", |m| m.as_str())
            )));
        }
        audience_within(&limits, agent, resource)
    }

    /// Refuses a chain deeper than any of its agents' limits allow
    /// (RFC 8693 §2.2.2: a subject token unacceptable by policy is
    /// `invalid_request`, as the server-wide depth is).
    pub(crate) async fn chain_within_limits(&self, agents: &[&Agent]) -> Result<(), Error> {
        for a in agents {
            let max = self.limits_of(a).await?.max_delegation_depth;
            if agents.len() > max {
                return Err(Error::InvalidRequest(format!(
                    "limits.max_delegation_depth: agent {} may be in a chain of at most {max} agents, this one would hold {}",
                    a.id,
                    agents.len()
                )));
            }
        }
        Ok(())
    }
}

/// The audience limit, where a token is minted (RFC 8707 §2:
/// `invalid_target`).
pub(crate) fn audience_within(limits: &Limits, agent: &Agent, audience: &str) -> Result<(), Error> {
    if limits.allows_resource(audience) {
        Ok(())
    } else {
        Err(Error::InvalidTarget(format!(
            "limits.allowed_resources: agent {} may not be issued tokens for {audience}",
            agent.id
        )))
    }
}

/// Whether an administration error is a refusal by a limit (recorded;
/// other bad input is only answered).
pub(crate) fn is_limit_refusal(e: &Error) -> bool {
    matches!(e, Error::BadInput(m) | Error::Forbidden(m) if m.contains("limits."))
}

#[cfg(test)]
mod tests {
    use mandate_model::limits::{AgentLimits, GrantKind};

    use crate::admin::AgentPatch;
    use crate::service::Caller;
    use crate::store::Store;
    use crate::testing::World;

    fn patch(limits: AgentLimits) -> AgentPatch {
        AgentPatch { limits: Some(limits), ..Default::default() }
    }

    #[tokio::test]
    async fn a_child_is_held_by_its_parents_limits_set_later() {
        let w = World::new().await;
        let server = w.m.limits_of(&w.helper.agent).await.unwrap();
        assert_eq!(server, w.m.config().default_limits());
        let tighter = AgentLimits {
            max_token_ttl: Some(30),
            allowed_grant_types: Some([GrantKind::TokenExchange].into()),
            ..Default::default()
        };
        w.m.update_agent(Caller::Admin, w.planner.id(), patch(tighter)).await.unwrap();
        let child = w.m.limits_of(&w.helper.agent).await.unwrap();
        assert_eq!(child.max_token_ttl, 30);
        assert!(!child.allows_grant(GrantKind::ClientCredentials));
        // The child may not be loosened past it, by anyone.
        let looser = AgentLimits { max_token_ttl: Some(60), ..Default::default() };
        let trail = w.trail_len().await;
        let refused = w.m.update_agent(Caller::Admin, w.helper.id(), patch(looser)).await;
        assert!(
            matches!(&refused, Err(crate::Error::BadInput(m)) if m.contains("limits.max_token_ttl")),
            "{refused:?}"
        );
        assert_eq!(w.trail_len().await, trail + 1, "the refusal, and only it, is recorded");
        assert!(w.store.agent(w.helper.id()).await.unwrap().is_some_and(|a| a.limits.is_empty()));
    }

    #[tokio::test]
    async fn a_grant_type_outside_the_limits_is_refused_and_issues_nothing() {
        let w = World::new().await;
        let only = AgentLimits { allowed_grant_types: Some([GrantKind::Ciba].into()), ..Default::default() };
        w.m.update_agent(Caller::Admin, w.planner.id(), patch(only)).await.unwrap();
        let issued = w.events(crate::audit::kind::TOKEN_ISSUED).await.len();
        let got = w.client_credentials(&w.planner, crate::testing::CAL, "read").await;
        assert!(
            matches!(&got, Err(crate::Error::UnauthorizedClient(m)) if m.starts_with("limits.allowed_grant_types")),
            "{got:?}"
        );
        assert_eq!(w.events(crate::audit::kind::TOKEN_ISSUED).await.len(), issued);
        assert_eq!(w.events(crate::audit::kind::TOKEN_DENIED).await.len(), 1);
    }

    #[tokio::test]
    async fn a_ciba_request_outside_the_limits_is_refused_when_made() {
        let w = World::new().await;
        let cases = [
            (
                AgentLimits { allowed_grant_types: Some([GrantKind::ClientCredentials].into()), ..Default::default() },
                "limits.allowed_grant_types",
            ),
            (
                AgentLimits {
                    allowed_resources: Some(["https://elsewhere.example".to_owned()].into()),
                    ..Default::default()
                },
                "limits.allowed_resources",
            ),
        ];
        for (limits, name) in cases {
            w.m.update_agent(Caller::Admin, w.planner.id(), patch(limits)).await.unwrap();
            let approvals = w
                .store
                .approvals(&crate::store::ApprovalQuery { limit: 100, ..Default::default() })
                .await
                .unwrap()
                .len();
            let got = w.ciba(&w.planner, "read").await;
            assert!(
                matches!(&got, Err(crate::Error::UnauthorizedClient(m) | crate::Error::InvalidTarget(m)) if m.starts_with(name)),
                "{got:?}"
            );
            assert_eq!(
                w.store
                    .approvals(&crate::store::ApprovalQuery { limit: 100, ..Default::default() })
                    .await
                    .unwrap()
                    .len(),
                approvals,
                "nothing was asked"
            );
        }
        // Within them, the request is made.
        w.m.update_agent(Caller::Admin, w.planner.id(), patch(AgentLimits::default())).await.unwrap();
        assert!(w.ciba(&w.planner, "read").await.is_ok());
    }
}
