//! Approvals: what a person is asked to decide, and their decision, taken once.

use mandate_model::records::{Approval, ApprovalStatus, ApprovalSubject, User, UserStatus};
use mandate_model::{ApprovalId, UserId};

use crate::Error;
use crate::audit::{ALLOW, AuditRecord, DENY, kind};
use crate::service::{Caller, Mandate};
use crate::store::{ApprovalQuery, Change, Mutation};

/// Who may decide an approval: the one person policy names, or any
/// member of a group (DESIGN §13). What a notifier (CIBA ping/push, mail)
/// asks to learn whom to tell; [`Mandate::approvers_of`] answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approvers {
    /// `@approval("user")` or `@approval("owner")`: this person.
    Person(UserId),
    /// `@approval("group:<name>")`: any member but the agent, `required`
    /// distinct ones. Membership is read when each decides.
    Group { name: String, required: u32 },
}

/// The groups a person is in: the sign-in source's and SCIM's, a union
/// (ADR 0020), as the Cedar `User` entity has them.
pub(crate) fn groups_of(u: &User) -> Vec<String> {
    let mut all: Vec<String> = u.groups.iter().chain(&u.scim_groups).cloned().collect();
    all.sort();
    all.dedup();
    all
}

/// Whether `u` may decide `approval` now: the person it names, or an
/// active member of its group. The user the request is for may help
/// decide a group approval only when it needs more than one approval, so
/// that they are never its sole approver (ADR 0025).
pub(crate) fn may_decide(u: &User, approval: &Approval) -> bool {
    match &approval.group {
        None => u.id == approval.approver,
        Some(g) => {
            u.status == UserStatus::Active
                && groups_of(u).contains(g)
                && (u.id != approval.user || approval.required > 1)
        }
    }
}

impl Mandate {
    /// Who may decide `approval` (for notifying them).
    pub fn approvers_of(&self, approval: &Approval) -> Approvers {
        match &approval.group {
            None => Approvers::Person(approval.approver),
            Some(name) => Approvers::Group { name: name.clone(), required: approval.required },
        }
    }

    /// The people to tell about `approval` (a notifier's question): the
    /// person it names, or the group's members who may decide it now and
    /// have not approved it yet. Read from the store at the call.
    pub async fn people_to_notify(&self, approval: &Approval) -> Result<Vec<User>, Error> {
        if approval.status != ApprovalStatus::Pending {
            return Ok(Vec::new());
        }
        Ok(match &approval.group {
            None => self.store.user(approval.approver).await?.into_iter().collect(),
            Some(g) => self
                .store
                .group_members(g)
                .await?
                .into_iter()
                .filter(|u| may_decide(u, approval) && !approval.approved_by.contains(&u.id))
                .collect(),
        })
    }

    /// `GET /v1/approvals`: a user sees the requests they are asked to decide.
    /// Approvals a person is asked to decide (all of them for the admin),
    /// newest first, `limit` at a time; `before` pages on from the last id
    /// of the previous page. A group approval is listed to every member of
    /// the group.
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
        let (approver, groups) = match caller {
            Caller::Admin => (None, Vec::new()),
            Caller::User(me) | Caller::ConsoleAdmin(me) => {
                let groups = match self.store.user(me).await? {
                    Some(u) if u.status == UserStatus::Active => groups_of(&u),
                    _ => Vec::new(),
                };
                (Some(me), groups)
            }
        };
        Ok(self.store.approvals(&ApprovalQuery { approver, groups, status, binding: None, before, limit }).await?)
    }

    /// One approval the caller is asked to decide, by a keyed read (never
    /// found by scanning a list, which a cap would cut short).
    pub async fn approval_for(&self, caller: Caller, id: ApprovalId) -> Result<Approval, Error> {
        let approval = self.store.approval(id).await?.ok_or_else(|| Error::NotFound(format!("approval {id}")))?;
        match caller {
            Caller::Admin => Ok(approval),
            Caller::User(me) | Caller::ConsoleAdmin(me) if me == approval.approver && approval.group.is_none() => {
                Ok(approval)
            }
            Caller::User(me) | Caller::ConsoleAdmin(me)
                if approval.group.is_some() && self.is_member(me, &approval).await? =>
            {
                Ok(approval)
            }
            Caller::User(_) | Caller::ConsoleAdmin(_) => Err(Error::NotFound(format!("approval {id}"))),
        }
    }

    /// Whether `me` is, now, an active member of the approval's group.
    async fn is_member(&self, me: UserId, approval: &Approval) -> Result<bool, Error> {
        let Some(g) = &approval.group else { return Ok(false) };
        Ok(self.store.user(me).await?.is_some_and(|u| u.status == UserStatus::Active && groups_of(&u).contains(g)))
    }

    /// `POST /v1/approvals/{id}/approve|deny`: only the person the request
    /// names (or a member of the group it names) decides, before it
    /// expires. The admin token cannot decide for them, and an agent's
    /// token is not accepted by this API at all. A group approval needing
    /// `required` approvals is approved by the decision that completes the
    /// count of distinct members; one member's deny denies it. Of
    /// concurrent decisions exactly one changes it; the others get 409.
    pub async fn decide_approval(&self, caller: Caller, id: ApprovalId, approve: bool) -> Result<Approval, Error> {
        let mut approval = self.store.approval(id).await?.ok_or_else(|| Error::NotFound(format!("approval {id}")))?;
        let Some(me) = caller.person() else {
            self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), "only the named person decides").await?;
            return Err(Error::Forbidden("only the person the request names may decide it".into()));
        };
        // Membership is read now: a person who left the group cannot decide.
        let person = self.store.user(me).await?;
        if !person.as_ref().is_some_and(|u| may_decide(u, &approval)) {
            let why = match &approval.group {
                Some(g) if me == approval.user && approval.required <= 1 => {
                    format!("the person the request is for cannot be the sole approver of a group:{g} approval")
                }
                Some(g) => format!("only a member of group {g} may decide it"),
                None => "only the person the request names may decide it".into(),
            };
            self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), "not this user's approval").await?;
            return Err(Error::Forbidden(why));
        }
        let now = self.clock.now();
        if approval.status != ApprovalStatus::Pending {
            return Err(Error::Conflict(format!("approval {id} is already {}", approval.status.as_str())));
        }
        if now >= approval.expires_at {
            return Err(Error::Conflict(format!("approval {id} has expired")));
        }
        if approval.approved_by.contains(&me) {
            return Err(Error::Conflict(format!(
                "approval {id}: you have approved it already; it needs another member of group {}",
                approval.group.as_deref().unwrap_or("")
            )));
        }
        let mut change = Change::new();
        let counted = approve && approval.group.is_some();
        if counted {
            change.push(Mutation::CountApproval { id, seen: approval.approved_by.clone(), by: me, at: now });
        }
        let have = approval.approved_by.len().saturating_add(usize::from(counted));
        let complete =
            !approve || approval.group.is_none() || have >= usize::try_from(approval.required).unwrap_or(usize::MAX);
        if !complete {
            // One more approval counted; the request stays pending.
            let mut event = self.admin_event(kind::APPROVAL_COUNTED, caller);
            event.decision = Some(ALLOW.into());
            event.subject = Some(approval.user.to_string());
            event.resource = Some(approval.resource.clone());
            event.chain = vec![approval.user.to_string(), approval.agent.to_string()];
            event.reason = Some(format!("{id}: {have} of {} approvals", approval.required));
            change.push(AuditRecord::new(event).mutation());
            self.store.commit(change).await?;
            approval.approved_by.push(me);
            return Ok(approval);
        }
        let mut event = self.admin_event(if approve { kind::APPROVAL_APPROVED } else { kind::APPROVAL_DENIED }, caller);
        event.decision = Some(if approve { ALLOW } else { DENY }.into());
        event.subject = Some(approval.user.to_string());
        event.resource = Some(approval.resource.clone());
        event.chain = vec![approval.user.to_string(), approval.agent.to_string()];
        event.reason = Some(id.to_string());
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
        // A reapproval (ADR 0036): approved, its grant is extended in the
        // same change; denied, it is left to lapse.
        let mut reapproval = None;
        if let ApprovalSubject::Reapproval { purpose, scopes } = &approval.subject {
            event.grant_id = approval.grant.map(|g| g.to_string());
            event.scope = Some(scopes.to_claim());
            reapproval = Some(if approve {
                self.reapproval_approved(&mut change, caller, &approval, purpose.clone(), now).await?
            } else {
                self.reapproval_denied(caller, &approval).await?
            });
        }
        let to = if approve { ApprovalStatus::Approved } else { ApprovalStatus::Denied };
        change.push(Mutation::DecideApproval { id, to, by: me.to_string(), grant: grant_id, at: now });
        change.push(AuditRecord::new(event).mutation());
        if let Some(e) = reapproval {
            change.push(AuditRecord::new(e).mutation());
        }
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
        // A reapproved grant that changed meanwhile fails it all (409).
        self.store.commit(change).await?;
        approval.status = to;
        approval.decided_by = Some(me.to_string());
        approval.decided_at = Some(now);
        approval.grant = grant_id;
        if counted {
            approval.approved_by.push(me);
        }
        Ok(approval)
    }
}

#[cfg(test)]
mod tests {
    //! Deciding approvals on a memory store: only the person named, once,
    //! in time.

    use mandate_model::ApprovalId;
    use mandate_model::records::{ApprovalStatus, GrantStatus, User};
    use time::Duration;

    use crate::audit::kind;
    use crate::store::Store;
    use crate::testing::World;
    use crate::{Caller, Error};

    use super::Approvers;

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

    /// The test policies, with writing under a group approval instead of
    /// the user's: `extra` annotations on that permit.
    fn group_policies(annotations: &str) -> String {
        crate::testing::POLICIES.replace(
            "// Agents may be granted write, once the user approves the grant.\n@approval(\"user\")",
            &format!("// Agents may be granted write, once the group approves the grant.\n{annotations}"),
        )
    }

    /// A world whose write grants need `annotations`, with Carol, Dave and
    /// Erin in the finance group.
    async fn finance(annotations: &str) -> (World, [User; 3]) {
        let w = World::new().await;
        let policies = group_policies(annotations);
        assert_ne!(policies, crate::testing::POLICIES, "the policies were rewritten");
        w.m.put_policies(Caller::Admin, &policies).await.unwrap();
        let mut people = Vec::new();
        for name in ["Carol", "Dave", "Erin"] {
            let new = crate::NewUser {
                name: name.into(),
                email: format!("{}@example.com", name.to_lowercase()),
                groups: vec!["finance".into()],
                attributes: Default::default(),
                password: None,
            };
            people.push(w.m.create_user(Caller::Admin, new).await.unwrap());
        }
        let people: [User; 3] = people.try_into().unwrap();
        (w, people)
    }

    #[tokio::test]
    async fn a_group_approval_needs_two_distinct_members() {
        let (w, [carol, dave, erin]) = finance("@approval(\"group:finance\") @approvals(\"2\")").await;
        let asked = w.ciba(&w.planner, "write").await.unwrap();
        let id: ApprovalId = asked.auth_req_id.parse().unwrap();
        let stored = w.store.approval(id).await.unwrap().unwrap();
        assert_eq!((stored.group.as_deref(), stored.required), (Some("finance"), 2));
        assert_eq!(w.m.approvers_of(&stored), Approvers::Group { name: "finance".into(), required: 2 });
        let m = &w.m;
        let told = |a| async move {
            let mut ids: Vec<_> = m.people_to_notify(&a).await.unwrap().into_iter().map(|u| u.id).collect();
            ids.sort();
            ids
        };
        let mut all = vec![carol.id, dave.id, erin.id];
        all.sort();
        assert_eq!(told(stored.clone()).await, all);
        // Every member sees it; nobody else does.
        for p in [&carol, &dave, &erin] {
            let inbox = w.m.list_approvals(Caller::User(p.id), Some(ApprovalStatus::Pending), None, 10).await.unwrap();
            assert_eq!(inbox.iter().map(|a| a.id).collect::<Vec<_>>(), vec![id], "{}", p.name);
            assert_eq!(w.m.approval_for(Caller::User(p.id), id).await.unwrap().id, id);
        }
        assert!(w.m.list_approvals(Caller::User(w.bob.id), None, None, 10).await.unwrap().is_empty());
        assert!(w.m.list_approvals(Caller::User(w.alice.id), None, None, 10).await.unwrap().is_empty());
        assert!(matches!(w.m.approval_for(Caller::User(w.bob.id), id).await, Err(Error::NotFound(_))));
        let bob = w.m.decide_approval(Caller::User(w.bob.id), id, true).await;
        assert!(matches!(bob, Err(Error::Forbidden(ref m)) if m.contains("finance")), "{bob:?}");
        let admin = w.m.decide_approval(Caller::Admin, id, true).await;
        assert!(matches!(admin, Err(Error::Forbidden(_))), "{admin:?}");
        // One approval counts; the request waits for a second person.
        let first = w.m.decide_approval(Caller::User(carol.id), id, true).await.unwrap();
        assert_eq!((first.status, first.approved_by.clone()), (ApprovalStatus::Pending, vec![carol.id]));
        assert!(first.grant.is_none());
        assert!(matches!(w.poll(&w.planner, &asked.auth_req_id).await, Err(Error::AuthorizationPending)));
        assert_eq!(w.events(kind::APPROVAL_COUNTED).await.len(), 1);
        let mut rest = vec![dave.id, erin.id];
        rest.sort();
        assert_eq!(told(w.store.approval(id).await.unwrap().unwrap()).await, rest, "Carol is not told again");
        // The same person twice counts once.
        let again = w.m.decide_approval(Caller::User(carol.id), id, true).await;
        assert!(matches!(again, Err(Error::Conflict(ref m)) if m.contains("already")), "{again:?}");
        assert_eq!(w.store.approval(id).await.unwrap().unwrap().approved_by, vec![carol.id]);
        // The second distinct member completes it.
        let done = w.m.decide_approval(Caller::User(dave.id), id, true).await.unwrap();
        assert_eq!(done.status, ApprovalStatus::Approved);
        assert_eq!(done.approved_by, vec![carol.id, dave.id]);
        assert_eq!(done.decided_by, Some(dave.id.to_string()));
        let grant = w.store.grant(done.grant.unwrap()).await.unwrap().unwrap();
        assert_eq!((grant.user, grant.agent), (w.alice.id, w.planner.id()));
        // Later decisions get 409.
        let late = w.m.decide_approval(Caller::User(erin.id), id, false).await;
        assert!(matches!(late, Err(Error::Conflict(_))), "{late:?}");
        assert!(w.poll(&w.planner, &asked.auth_req_id).await.is_ok());
        assert_eq!(w.events(kind::APPROVAL_APPROVED).await.len(), 1);
    }

    #[tokio::test]
    async fn one_members_deny_denies_a_group_approval() {
        let (w, [carol, dave, _]) = finance("@approval(\"group:finance\") @approvals(\"2\")").await;
        let asked = w.ciba(&w.planner, "write").await.unwrap();
        let id: ApprovalId = asked.auth_req_id.parse().unwrap();
        w.m.decide_approval(Caller::User(carol.id), id, true).await.unwrap();
        let denied = w.m.decide_approval(Caller::User(dave.id), id, false).await.unwrap();
        assert_eq!(denied.status, ApprovalStatus::Denied);
        assert!(denied.grant.is_none());
        assert!(matches!(w.poll(&w.planner, &asked.auth_req_id).await, Err(Error::AccessDenied(_))));
    }

    #[tokio::test]
    async fn membership_is_read_when_a_member_decides() {
        let (w, [carol, dave, _]) = finance("@approval(\"group:finance\")").await;
        let asked = w.ciba(&w.planner, "write").await.unwrap();
        let id: ApprovalId = asked.auth_req_id.parse().unwrap();
        let patch = crate::UserPatch { groups: Some(vec!["sales".into()]), ..Default::default() };
        w.m.update_user(Caller::Admin, carol.id, patch).await.unwrap();
        let gone = w.m.decide_approval(Caller::User(carol.id), id, true).await;
        assert!(matches!(gone, Err(Error::Forbidden(_))), "{gone:?}");
        assert!(w.m.list_approvals(Caller::User(carol.id), None, None, 10).await.unwrap().is_empty());
        // A group of one approval: the first decision wins.
        let done = w.m.decide_approval(Caller::User(dave.id), id, true).await.unwrap();
        assert_eq!(done.status, ApprovalStatus::Approved);
    }

    #[tokio::test]
    async fn the_user_a_request_is_for_is_never_its_sole_approver() {
        let (w, [carol, _, _]) = finance("@approval(\"group:staff\")").await;
        let asked = w.ciba(&w.planner, "write").await.unwrap();
        let id: ApprovalId = asked.auth_req_id.parse().unwrap();
        // Alice is in staff, but the request is hers.
        let own = w.m.decide_approval(Caller::User(w.alice.id), id, true).await;
        assert!(matches!(own, Err(Error::Forbidden(ref m)) if m.contains("sole approver")), "{own:?}");
        let patch = crate::UserPatch { groups: Some(vec!["staff".into()]), ..Default::default() };
        w.m.update_user(Caller::Admin, carol.id, patch).await.unwrap();
        assert_eq!(
            w.m.decide_approval(Caller::User(carol.id), id, true).await.unwrap().status,
            ApprovalStatus::Approved
        );
        // With two needed, her approval counts once, beside another's.
        let (w, [carol, _, _]) = finance("@approval(\"group:finance\") @approvals(\"2\")").await;
        let patch = crate::UserPatch { groups: Some(vec!["staff".into(), "finance".into()]), ..Default::default() };
        w.m.update_user(Caller::Admin, w.alice.id, patch).await.unwrap();
        let asked = w.ciba(&w.planner, "write").await.unwrap();
        let id: ApprovalId = asked.auth_req_id.parse().unwrap();
        let mine = w.m.decide_approval(Caller::User(w.alice.id), id, true).await.unwrap();
        assert_eq!(mine.status, ApprovalStatus::Pending);
        assert!(matches!(w.m.decide_approval(Caller::User(w.alice.id), id, true).await, Err(Error::Conflict(_))));
        assert_eq!(
            w.m.decide_approval(Caller::User(carol.id), id, true).await.unwrap().status,
            ApprovalStatus::Approved
        );
    }

    #[tokio::test]
    async fn a_window_closes_issuance_and_the_approval_with_it() {
        // The clock starts on Monday 2026-11-23 at 10:00 UTC, 11:00 in Paris.
        let (w, [carol, _, _]) =
            finance("@approval(\"group:finance\") @window(\"Mon-Fri 09:00-18:00 Europe/Paris\")").await;
        // 16:58 UTC, 17:58 in Paris: still inside.
        w.clock.advance(Duration::minutes(6 * 60 + 58));
        let asked = w.ciba(&w.planner, "write").await.unwrap();
        let id: ApprovalId = asked.auth_req_id.parse().unwrap();
        w.m.decide_approval(Caller::User(carol.id), id, true).await.unwrap();
        // 18:01 in Paris: the approval is not usable now.
        w.clock.advance(Duration::minutes(3));
        let closed = w.poll(&w.planner, &asked.auth_req_id).await;
        assert!(
            matches!(closed, Err(Error::InvalidGrant(ref m)) if m.contains("Mon-Fri 09:00-18:00 Europe/Paris")),
            "{closed:?}"
        );
        let asked_late = w.ciba(&w.planner, "write").await;
        assert!(
            matches!(asked_late, Err(Error::AccessDenied(ref m)) if m.contains("applies only Mon-Fri")),
            "{asked_late:?}"
        );
    }
}
