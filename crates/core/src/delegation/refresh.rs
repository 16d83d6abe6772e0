//! Rotating refresh tokens: each is used once; a second use revokes its whole family.

use mandate_audit::Event;
use mandate_model::records::RefreshRecord;
use mandate_model::ssf::{Cause, InitiatingEntity};

use super::parse_scopes;
use crate::oauth::IssuedToken;
use crate::oauth::Refusal;
use crate::service::{AuthenticatedClient, Mandate};
use crate::store::{Change, Mutation};
use crate::{Error, secrets};

impl Mandate {
    /// `refresh_token`: rotates the refresh token, re-checks policy and the
    /// grant, and issues a new access token. A refresh token used twice
    /// revokes its whole family, refresh and access tokens alike.
    pub(crate) async fn refresh_token(
        &self,
        client: &AuthenticatedClient,
        presented: &str,
        scope: Option<&str>,
        resources: &[String],
        jkt: Option<&str>,
    ) -> Result<(Change, Event, IssuedToken), Refusal> {
        let refuse = Refusal::new;
        let agent = Self::agent_of(client, "refresh tokens").map_err(refuse)?;
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
        // `offline_access` is what brought this refresh token, so a client
        // that names it again (as the code request did) asks for nothing
        // more (RFC 6749 §6).
        let kept: Option<String> = scope
            .map(|s| s.split(' ').filter(|x| *x != crate::authorize::OFFLINE_ACCESS).collect::<Vec<_>>().join(" "));
        let scope = kept.as_deref().filter(|s| !s.is_empty());
        let scopes = match scope {
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
        crate::authorize::same_resource(resources, &grant.resource).map_err(refuse)?;
        // A grant narrowed since (an access review) narrows its refresh
        // tokens too: nothing is issued beyond what the grant holds now.
        let scopes = scopes.narrow_to(&grant.scopes);
        if scopes.is_empty() {
            return Err(refuse(Error::InvalidScope("the grant no longer holds these scopes".into())));
        }
        let (mut change, event, mut issued) =
            self.grant_token(agent, &grant, &scopes, Some(&record.family), jkt).await.map_err(refuse)?;
        change.prepend(Mutation::UseRefresh { hash: record.hash.clone(), at: now });
        let (refresh, next) = self
            .new_refresh(
                &grant,
                agent.id,
                &record.scopes.narrow_to(&grant.scopes),
                &record.family,
                record.cnf_jkt.as_deref(),
            )
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
        Mandate::signal_revocations(
            &mut change,
            now,
            Cause::new(InitiatingEntity::Policy, "a used refresh token came back; its family is revoked"),
        );
        Refusal {
            change,
            counted: vec![tokens],
            error: Error::InvalidGrant("the refresh token was already used; its family is revoked".into()),
        }
    }

    /// Whether a failed refresh commit lost a race to another use of the
    /// same refresh token (then the family is revoked).
    pub(crate) async fn refresh_raced(&self, presented: &str) -> Result<Option<RefreshRecord>, Error> {
        Ok(self.store.refresh(&secrets::hash(presented)).await?.filter(|r| r.used_at.is_some()))
    }
}

#[cfg(test)]
mod tests {
    //! Rotating refresh tokens on a memory store.

    use mandate_model::ScopeSet;

    use crate::audit::kind;
    use crate::testing::World;
    use crate::{Error, GrantRequest};

    fn refresh(token: &str, scope: Option<&str>) -> GrantRequest {
        GrantRequest::Refresh { refresh_token: token.into(), scope: scope.map(str::to_owned), resources: vec![] }
    }

    #[tokio::test]
    async fn a_refresh_token_rotates_and_its_reuse_revokes_the_family() {
        let w = World::new().await;
        let first = w.granted(&w.planner, "read").await;
        let first_refresh = first.refresh_token.clone().unwrap();
        let second = w.grant(&w.planner, refresh(&first_refresh, None)).await.unwrap();
        let second_refresh = second.refresh_token.clone().unwrap();
        assert_ne!(first_refresh, second_refresh, "the refresh token did not rotate");
        let (a, b) = (w.record(&first).await, w.record(&second).await);
        assert_eq!((b.grant, b.family.clone(), b.scopes.clone()), (a.grant, a.family.clone(), a.scopes.clone()));
        assert!(w.is_live(&second.access_token).await);
        // The rotated one comes back: the whole family dies.
        let reused = w.grant(&w.planner, refresh(&first_refresh, None)).await;
        assert!(matches!(reused, Err(Error::InvalidGrant(ref m)) if m.contains("family is revoked")), "{reused:?}");
        assert!(!w.is_live(&first.access_token).await && !w.is_live(&second.access_token).await);
        let after = w.grant(&w.planner, refresh(&second_refresh, None)).await;
        assert!(matches!(after, Err(Error::InvalidGrant(_))), "{after:?}");
        let reuse = w.events(kind::REFRESH_REUSED).await;
        assert_eq!(reuse.len(), 1);
        assert_eq!(reuse.first().and_then(|e| e.count), Some(2), "both access tokens of the family");
    }

    #[tokio::test]
    async fn a_refresh_narrows_but_never_widens_and_belongs_to_its_client() {
        let w = World::new().await;
        let first = w.granted(&w.planner, "read").await;
        let token = first.refresh_token.clone().unwrap();
        let wider = w.grant(&w.planner, refresh(&token, Some("read write"))).await;
        assert!(matches!(wider, Err(Error::InvalidScope(_))), "{wider:?}");
        // Another client presenting it learns nothing and revokes nothing.
        let stolen = w.grant(&w.helper, refresh(&token, None)).await;
        assert!(matches!(stolen, Err(Error::InvalidGrant(ref m)) if m.contains("invalid")), "{stolen:?}");
        assert!(w.is_live(&first.access_token).await);
        // Refused requests did not use it up.
        let narrowed = w.grant(&w.planner, refresh(&token, Some("read"))).await.unwrap();
        assert_eq!(w.record(&narrowed).await.scopes, ScopeSet::parse("read").unwrap());
    }
}
