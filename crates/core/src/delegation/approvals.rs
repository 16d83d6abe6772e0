//! Approvals: what a person is asked to decide, and their decision, taken once.

use mandate_model::ApprovalId;
use mandate_model::records::{Approval, ApprovalStatus, ApprovalSubject};

use crate::Error;
use crate::audit::{ALLOW, AuditRecord, DENY, kind};
use crate::service::{Caller, Mandate};
use crate::store::{ApprovalQuery, Change, Mutation};

impl Mandate {
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
        let mut decided = None;
        if approve && let ApprovalSubject::Grant { scopes, may_act, authorization_details, .. } = &approval.subject {
            // The grant is created as approved; issuance re-checks policy.
            let user =
                self.store.user(approval.user).await?.ok_or_else(|| Error::Conflict("the user is gone".into()))?;
            let agent =
                self.store.agent(approval.agent).await?.ok_or_else(|| Error::Conflict("the agent is gone".into()))?;
            let res = self.resource_by_identifier(&approval.resource).await?;
            let mut grant =
                self.new_grant(&user, &agent, &res, scopes, approval.binding_message.clone(), &me.to_string())?;
            // Who may act next, as the request and policy named it (ADR 0024).
            grant.may_act = may_act.clone();
            // What the person saw and approved (RFC 9396), and its digest
            // in the trail.
            grant.authorization_details = authorization_details.clone();
            event.reason = crate::details::with_digest(event.reason.take(), authorization_details);
            event.grant_id = Some(grant.id.to_string());
            event.scope = Some(scopes.to_claim());
            grant_id = Some(grant.id);
            change.push(Mutation::InsertGrant(grant.clone()));
            decided = Some((agent, grant));
        }
        if let ApprovalSubject::Action { action, target, authorization_detail, .. } = &approval.subject {
            event.action = Some(action.clone());
            let detail = mandate_model::details::AuthorizationDetails(authorization_detail.iter().cloned().collect());
            event.reason = crate::details::with_digest(Some(format!("{id}: {action} on {target}")), &detail);
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
        // A ping or push agent is told in the same change (CIBA §10).
        if matches!(approval.subject, ApprovalSubject::Grant { .. })
            && let Some(cb) = self.store.ciba_callback(id).await?
        {
            let agent = match &decided {
                Some((agent, _)) => Some(agent.clone()),
                None => self.store.agent(approval.agent).await?,
            };
            if let Some(agent) = agent {
                change.append(self.ciba_decided(&cb, &agent, decided.as_ref().map(|(_, g)| g)).await?);
            }
        }
        self.store.commit(change).await?;
        approval.status = to;
        approval.decided_by = Some(me.to_string());
        approval.decided_at = Some(now);
        approval.grant = grant_id;
        Ok(approval)
    }
}

#[cfg(test)]
mod tests {
    //! Deciding approvals on a memory store: only the person named, once,
    //! in time.

    use mandate_model::ApprovalId;
    use mandate_model::records::{ApprovalStatus, GrantStatus};
    use time::Duration;

    use crate::audit::kind;
    use crate::store::Store;
    use crate::testing::World;
    use crate::{Caller, Error};

    #[tokio::test]
    async fn an_approval_is_decided_once_by_the_person_it_names() {
        let w = World::new().await;
        let asked = w.ciba(&w.planner, "write").await.unwrap();
        let id: ApprovalId = asked.auth_req_id.parse().unwrap();
        // Bob does not even see it.
        assert!(matches!(w.m.approval_for(Caller::User(w.bob.id), id).await, Err(Error::NotFound(_))));
        assert_eq!(w.m.approval_for(Caller::User(w.alice.id), id).await.unwrap().id, id);
        let inbox =
            w.m.list_approvals(Caller::User(w.alice.id), Some(ApprovalStatus::Pending), None, 10).await.unwrap();
        assert_eq!(inbox.iter().map(|a| a.id).collect::<Vec<_>>(), vec![id]);
        assert!(w.m.list_approvals(Caller::User(w.bob.id), None, None, 10).await.unwrap().is_empty());
        let trail = w.trail_len().await;
        assert!(matches!(w.m.decide_approval(Caller::User(w.bob.id), id, true).await, Err(Error::Forbidden(_))));
        assert_eq!(w.trail_len().await, trail + 1, "a refused decision is recorded, and nothing else");
        assert!(w.store.approval(id).await.unwrap().is_some_and(|a| a.status == ApprovalStatus::Pending));
        let approved = w.m.decide_approval(Caller::User(w.alice.id), id, true).await.unwrap();
        let grant = w.store.grant(approved.grant.unwrap()).await.unwrap().unwrap();
        assert_eq!((grant.status, grant.user, grant.agent), (GrantStatus::Active, w.alice.id, w.planner.id()));
        assert_eq!(grant.purpose.as_deref(), Some("plan the offsite"));
        let twice = w.m.decide_approval(Caller::User(w.alice.id), id, false).await;
        assert!(matches!(twice, Err(Error::Conflict(_))), "{twice:?}");
        assert_eq!(w.store.approval(id).await.unwrap().map(|a| a.status), Some(ApprovalStatus::Approved));
        assert_eq!(w.events(kind::APPROVAL_APPROVED).await.len(), 1);
        assert!(w.events(kind::APPROVAL_DENIED).await.is_empty());
    }

    #[tokio::test]
    async fn an_expired_request_cannot_be_decided() {
        let w = World::new().await;
        let asked = w.ciba(&w.planner, "write").await.unwrap();
        let id: ApprovalId = asked.auth_req_id.parse().unwrap();
        w.clock.advance(Duration::seconds(asked.expires_in));
        let late = w.m.decide_approval(Caller::User(w.alice.id), id, true).await;
        assert!(matches!(late, Err(Error::Conflict(ref m)) if m.contains("expired")), "{late:?}");
        let q = crate::store::GrantQuery { user: Some(w.alice.id), limit: 10, ..Default::default() };
        assert!(w.store.grants(&q).await.unwrap().is_empty(), "a grant was made for an expired request");
    }
}
