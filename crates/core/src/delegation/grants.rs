//! Grants: revoking one with every token issued under it.

use mandate_model::GrantId;
use mandate_model::records::{Grant, GrantStatus};
use mandate_model::ssf::{Cause, InitiatingEntity};

use crate::Error;
use crate::audit::{AuditRecord, kind};
use crate::service::{Caller, Mandate};
use crate::store::{Change, Mutation};

impl Mandate {
    /// `POST /v1/grants/{id}/revoke`, by the admin, the user who gave it or
    /// the agent's owner. Every token under it dies, exchanged ones too.
    /// Returns the grant and how many tokens were revoked.
    pub async fn revoke_grant(&self, caller: Caller, id: GrantId) -> Result<(Grant, u64), Error> {
        let mut grant = self.store.grant(id).await?.ok_or_else(|| Error::NotFound(format!("grant {id}")))?;
        if let Some(me) = caller.person()
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
        let entity = match caller {
            Caller::Admin => InitiatingEntity::Admin,
            Caller::User(_) | Caller::ConsoleAdmin(_) => InitiatingEntity::User,
        };
        Mandate::signal_revocations(&mut change, now, Cause::new(entity, "the grant was revoked"));
        change.push(AuditRecord::counting(event, &[tokens]).mutation());
        let receipt = self.commit_signalling(change).await?;
        if receipt.affected(revoked)? == 0 {
            return Err(Error::Conflict(format!("grant {id} is already revoked")));
        }
        grant.status = GrantStatus::Revoked;
        grant.revoked_at = Some(now);
        Ok((grant, receipt.affected(tokens)?))
    }
}

#[cfg(test)]
mod tests {
    //! Revoking a grant, on a memory store.

    use mandate_model::GrantId;
    use mandate_model::records::GrantStatus;

    use crate::audit::kind;
    use crate::store::GrantQuery;
    use crate::testing::World;
    use crate::{Caller, Error};

    #[tokio::test]
    async fn revoking_a_grant_revokes_every_token_under_it_once() {
        let w = World::new().await;
        let granted = w.granted(&w.planner, "read").await;
        let hop = w.exchange(&w.helper, &granted.access_token, None).await.unwrap();
        let id = w.record(&granted).await.grant.unwrap();
        // Bob neither gave it nor owns the agent.
        let bobs = w.m.revoke_grant(Caller::User(w.bob.id), id).await;
        assert!(matches!(bobs, Err(Error::Forbidden(_))), "{bobs:?}");
        assert!(w.is_live(&hop.access_token).await);
        assert_eq!(w.events(kind::ADMIN_DENIED).await.len(), 1);
        let (grant, tokens) = w.m.revoke_grant(Caller::User(w.alice.id), id).await.unwrap();
        assert_eq!((grant.status, tokens), (GrantStatus::Revoked, 2));
        assert!(!w.is_live(&granted.access_token).await && !w.is_live(&hop.access_token).await);
        let again = w.m.revoke_grant(Caller::Admin, id).await;
        assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
        assert_eq!(w.events(kind::GRANT_REVOKED).await.len(), 1);
        // Its refresh tokens are no use either.
        let refresh = crate::GrantRequest::Refresh {
            refresh_token: granted.refresh_token.unwrap(),
            scope: None,
            resources: vec![],
        };
        let refused = w.grant(&w.planner, refresh).await;
        assert!(matches!(refused, Err(Error::InvalidGrant(ref m)) if m.contains("revoked")), "{refused:?}");
    }

    #[tokio::test]
    async fn people_list_the_grants_they_gave_or_whose_agent_they_own() {
        let w = World::new().await;
        let granted = w.granted(&w.planner, "read").await;
        let id = w.record(&granted).await.grant.unwrap();
        let ids = |p: crate::inventory::Paged<mandate_model::records::Grant, GrantId>| {
            p.items.into_iter().map(|g| g.id).collect::<Vec<_>>()
        };
        let q = |agent| GrantQuery { agent, limit: 10, ..GrantQuery::default() };
        assert_eq!(ids(w.m.list_grants(Caller::User(w.alice.id), q(None)).await.unwrap()), vec![id]);
        assert!(w.m.list_grants(Caller::User(w.bob.id), q(None)).await.unwrap().items.is_empty());
        assert_eq!(ids(w.m.list_grants(Caller::Admin, q(Some(w.planner.id()))).await.unwrap()), vec![id]);
        assert_eq!(w.m.own_grants(w.alice.id, 10).await.unwrap().iter().map(|g| g.id).collect::<Vec<_>>(), vec![id]);
        assert!(w.m.own_grants(w.bob.id, 10).await.unwrap().is_empty());
    }
}
