//! OpenID CIBA in poll, ping and push modes: an agent asks a person for a grant; policy decides at once, self-authorises, or waits for the person it names.

use mandate_audit::Event;
use mandate_model::delivery::{Backchannel, CibaCallback, DeliveryMode};
use mandate_model::records::{
    Agent, Approval, ApprovalStatus, ApprovalSubject, Grant, GrantStatus, Resource, User, UserStatus,
};
use mandate_model::{ApprovalId, GrantId, ScopeSet, UserId};
use mandate_policy::Approver;
use time::Duration;

use super::{one_resource, parse_scopes};
use crate::Error;
use crate::audit::{ALLOW, AuditRecord, DENY, kind, reason};
use crate::delivery::Ended;
use crate::oauth::IssuedToken;
use crate::oauth::Refusal;
use crate::ports::new_ulid;
use crate::request::bounded_input;
use crate::request::{BcAuthorizeRequest, Malformed};
use crate::service::{AuthenticatedClient, Mandate};
use crate::store::{Change, Mutation};

/// The answer to `POST /oauth/bc-authorize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BcAuthorized {
    pub auth_req_id: String,
    pub expires_in: i64,
    pub interval: i64,
}

impl Mandate {
    /// `POST /oauth/bc-authorize`: an agent asks a user for a grant. Policy
    /// decides at once: a denial is `access_denied`; an allow without
    /// `@approval` self-authorises (a grant with `approved_by: policy`);
    /// otherwise an approval request waits for the person policy names.
    pub async fn bc_authorize(
        &self,
        credentials: &crate::ClientCredentials,
        request: Result<BcAuthorizeRequest, Malformed>,
    ) -> Result<BcAuthorized, Error> {
        let client = self.authenticate(credentials, crate::oauth::Endpoint::BcAuthorize).await?;
        let (resource, scope) = match &request {
            Ok(r) => (r.resources.first().cloned(), r.scope.clone()),
            Err(m) => (m.resource.clone(), m.scope.clone()),
        };
        let outcome = match request {
            Ok(r) => self.try_bc_authorize(&client, &r).await,
            Err(m) => Err(m.error),
        };
        match outcome {
            Ok((change, answer)) => {
                self.commit_client(&client, change).await?;
                Ok(answer)
            }
            Err(e) => {
                let mut event = self.client_event(kind::APPROVAL_REQUESTED, &client);
                event.decision = Some(DENY.into());
                event.resource = resource.as_deref().map(bounded_input);
                event.scope = scope.as_deref().map(bounded_input);
                event.reason = Some(reason(&e));
                self.commit_or_replay(&client, Change::new(), event, &[]).await?;
                Err(e)
            }
        }
    }

    /// (Long on purpose: the CIBA request's checks in the contract's order
    /// (DESIGN §3.1), each short, all reading the same parsed request, agent
    /// and person.)
    pub(crate) async fn try_bc_authorize(
        &self,
        client: &AuthenticatedClient,
        req: &BcAuthorizeRequest,
    ) -> Result<(Change, BcAuthorized), Error> {
        let agent = Self::agent_of(client, "CIBA")?;
        let resources: Vec<&str> = req.resources.iter().map(String::as_str).collect();
        let resource = one_resource(&resources)?;
        self.ciba_within_limits(client, &resource).await?;
        let backchannel = self.store.backchannel(agent.id).await?.unwrap_or_default();
        let notification_token = self.notification_token(agent, &backchannel, req).await?;
        let scopes = parse_scopes(req.scope.as_deref())?;
        let hint = req.login_hint.as_str();
        let binding_message = req
            .binding_message
            .as_deref()
            .map(|m| mandate_model::name::validate_text("binding_message", m, 256))
            .transpose()?;
        let wait = match req.requested_expiry.as_deref() {
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
        // RFC 9396: each detail of a type the resource declares, as its
        // schema allows; what the person is asked to approve.
        let details = crate::details::accept(&res, req.authorization_details.as_deref())?;
        let approver =
            self.authorize_scopes(Some(&user), &[agent], &res, &scopes, false).await?.map_err(Error::AccessDenied)?;
        // Who may act next with the grant's tokens (ADR 0024).
        let may_act = self.grant_may_act(&user, agent, &res, &scopes, req.allowed_actors.as_deref()).await?;
        // Policy sees each detail as `context.authorization_detail`.
        let for_details = self
            .authorize_details(Some(&user), &[agent], (&res, &scopes), &details, false)
            .await?
            .map_err(Error::AccessDenied)?;
        let approver = match (approver, for_details) {
            (Some(Approver::User), _) | (_, Some(Approver::User)) => Some(Approver::User),
            (a, b) => a.or(b),
        };
        let now = self.clock.now();
        let id = ApprovalId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?);
        let mut approval = Approval {
            id,
            agent: agent.id,
            user: user.id,
            // A group approval records the user it is for; only the
            // group's members decide it (ADR 0025).
            approver: match approver {
                Some(Approver::Owner) => agent.owner,
                _ => user.id,
            },
            resource: res.identifier.clone(),
            subject: ApprovalSubject::Grant {
                scopes: scopes.clone(),
                requested_expiry: wait,
                may_act: may_act.clone(),
                authorization_details: details.clone(),
            },
            binding_message: binding_message.clone(),
            status: ApprovalStatus::Pending,
            decided_by: None,
            created_at: now,
            expires_at: now + Duration::seconds(wait),
            decided_at: None,
            grant: None,
            polled_at: None,
            group: match &approver {
                Some(Approver::Group { name, .. }) => Some(name.clone()),
                _ => None,
            },
            required: approver.as_ref().map_or(1, Approver::required),
            approved_by: Vec::new(),
        };
        let callback = match (notification_token, &backchannel.endpoint) {
            (Some(token), Some(endpoint)) => Some(CibaCallback {
                approval: id,
                agent: agent.id,
                mode: backchannel.mode,
                endpoint: endpoint.clone(),
                sealed_token: self.seal_notification_token(&id.to_string(), token)?,
            }),
            _ => None,
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
                let mut grant = self.new_grant(&user, agent, &res, &scopes, binding_message, "policy")?;
                grant.may_act = may_act;
                grant.authorization_details = details.clone();
                approval.status = ApprovalStatus::Approved;
                approval.decided_by = Some("policy".into());
                approval.decided_at = Some(now);
                approval.grant = Some(grant.id);
                event.grant_id = Some(grant.id.to_string());
                event.reason = crate::details::with_digest(Some(format!("{id}: self-authorised by policy")), &details);
                let mut created = self.client_event(kind::GRANT_CREATED, client);
                created.decision = Some(ALLOW.into());
                created.subject = event.subject.clone();
                created.chain = event.chain.clone();
                created.resource = event.resource.clone();
                created.scope = event.scope.clone();
                created.grant_id = Some(grant.id.to_string());
                created.reason = crate::details::with_digest(
                    Some(match &grant.may_act {
                        None => "approved_by policy".into(),
                        Some(m) => format!("approved_by policy; may_act {m}"),
                    }),
                    &details,
                );
                change.push(Mutation::InsertGrant(grant.clone()));
                change.push(Mutation::InsertApproval(approval));
                change.push(AuditRecord::new(event).mutation());
                change.push(AuditRecord::new(created).mutation());
                if let Some(cb) = &callback {
                    change.push(Mutation::InsertCibaCallback(cb.clone()));
                    let after = self.ciba_decided(cb, agent, Some(&grant)).await?;
                    change.append(after);
                }
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
                event.reason = crate::details::with_digest(
                    Some(match &who {
                        Approver::Group { name, required } => format!("{id}: waits for {required} of group {name}"),
                        other => format!("{id}: waits for the {} ({})", other.label(), approval.approver),
                    }),
                    &details,
                );
                self.notify_approvers(&mut change, &approval).await?;
                let expires_at = approval.expires_at;
                change.push(Mutation::InsertApproval(approval));
                if let Some(cb) = callback {
                    // A ping or push agent hears of a request that expires
                    // undecided too (CIBA §12 `expired_token`).
                    self.enqueue_callback(&mut change, &cb, Ended::Expired(expires_at))?;
                    change.push(Mutation::InsertCibaCallback(cb));
                }
                change.push(AuditRecord::new(event).mutation());
            }
        }
        Ok((
            change,
            BcAuthorized { auth_req_id: id.to_string(), expires_in: wait, interval: self.config.ciba_interval },
        ))
    }

    /// The `client_notification_token` a ping or push agent must send
    /// (CIBA §7.1), checked; `None` for a poll agent (which may send one:
    /// it is not used).
    async fn notification_token<'r>(
        &self,
        agent: &Agent,
        backchannel: &Backchannel,
        req: &'r BcAuthorizeRequest,
    ) -> Result<Option<&'r str>, Error> {
        let mode = backchannel.mode;
        if mode == DeliveryMode::Poll {
            return Ok(None);
        }
        let token = req.client_notification_token.as_deref().ok_or_else(|| {
            Error::InvalidRequest(format!(
                "client_notification_token is required: the agent is registered for {} mode",
                mode.as_str()
            ))
        })?;
        crate::delivery::check_notification_token(token)?;
        // A pushed token carries no proof of possession: an agent that
        // must hold DPoP-bound tokens uses ping or poll.
        if mode == DeliveryMode::Push && self.limits_of(agent).await?.require_dpop {
            return Err(Error::InvalidRequest(
                "push mode cannot deliver DPoP-bound tokens, which the agent's limits require: register ping or poll"
                    .into(),
            ));
        }
        Ok(Some(token))
    }

    /// What a decided ping or push request adds to the decision's change
    /// (after the grant and the decision themselves): a ping; or for a
    /// push, the tokens issued now, the request marked handed out, and the
    /// token response (or the error, if it was denied or no token can be
    /// issued) in the outbox. `grant`: the grant an approval created.
    pub(crate) async fn ciba_decided(
        &self,
        cb: &CibaCallback,
        agent: &Agent,
        grant: Option<&Grant>,
    ) -> Result<Change, Error> {
        let mut change = Change::new();
        match (cb.mode, grant) {
            (DeliveryMode::Push, Some(grant)) => match self.first_tokens(agent, grant, None).await {
                Ok((tokens, event, issued)) => {
                    change.push(Mutation::ConsumeApproval { id: cb.approval, at: self.clock.now() });
                    change.append(tokens);
                    change.push(AuditRecord::new(event).mutation());
                    self.enqueue_callback(&mut change, cb, Ended::Approved(Some(&issued)))?;
                }
                Err(e) => {
                    let why = crate::audit::reason(&e);
                    self.enqueue_callback(&mut change, cb, Ended::Failed(why))?;
                }
            },
            (_, Some(_)) => self.enqueue_callback(&mut change, cb, Ended::Approved(None))?,
            (_, None) => self.enqueue_callback(&mut change, cb, Ended::Denied)?,
        }
        Ok(change)
    }

    /// When a grant given (or renewed) at `now` to `agent` ends: one grant
    /// lifetime on, and never after the agent itself.
    pub(crate) fn grant_expiry(&self, agent: &Agent, now: time::OffsetDateTime) -> time::OffsetDateTime {
        let expires_at = now + Duration::seconds(self.config.grant_ttl);
        agent.expires_at.map_or(expires_at, |e| expires_at.min(e))
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
        let expires_at = self.grant_expiry(agent, now);
        Ok(Grant {
            authorization_details: Default::default(),
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
            may_act: None,
            reapproved_at: None,
            reapprovals: 0,
            lapsed_at: None,
        })
    }

    /// The CIBA grant at the token endpoint: the agent polls with its
    /// `auth_req_id`. Returns the change to commit (or, for a refusal that
    /// changes state, the change and the error).
    pub(crate) async fn ciba_token(
        &self,
        client: &AuthenticatedClient,
        raw: &str,
        jkt: Option<&str>,
    ) -> Result<(Change, Event, IssuedToken), Refusal> {
        let refuse = Refusal::new;
        let agent = Self::agent_of(client, "CIBA").map_err(refuse)?;
        let unknown = || refuse(Error::InvalidGrant("unknown auth_req_id".into()));
        let id = raw.parse::<ApprovalId>().map_err(|_| unknown())?;
        let approval = self.store.approval(id).await.map_err(|e| refuse(e.into()))?.ok_or_else(unknown)?;
        if approval.agent != agent.id || !matches!(approval.subject, ApprovalSubject::Grant { .. }) {
            return Err(unknown());
        }
        // CIBA §11: a push agent's tokens are sent to it, never polled.
        if self
            .store
            .ciba_callback(id)
            .await
            .map_err(|e| refuse(e.into()))?
            .is_some_and(|c| c.mode == DeliveryMode::Push)
        {
            return Err(refuse(Error::UnauthorizedClient(
                "the agent is registered for push mode: the token is sent to its notification endpoint".into(),
            )));
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
}

#[cfg(test)]
mod tests {
    //! CIBA on a memory store: policy decides at once, self-authorises, or
    //! waits for the person it names; each request is handed out once.

    use mandate_model::records::{ApprovalStatus, GrantStatus};
    use mandate_model::{ApprovalId, ScopeSet};
    use time::Duration;

    use crate::audit::kind;
    use crate::store::Store;
    use crate::testing::{CAL, World, start};
    use crate::{Caller, Error};

    #[tokio::test]
    async fn policy_self_authorises_a_read_grant_and_its_tokens_are_handed_out_once() {
        let w = World::new().await;
        let asked = w.ciba(&w.planner, "read").await.unwrap();
        assert_eq!((asked.expires_in, asked.interval), (600, 5));
        let id: ApprovalId = asked.auth_req_id.parse().unwrap();
        let approval = w.store.approval(id).await.unwrap().unwrap();
        assert_eq!((approval.status, approval.decided_by.as_deref()), (ApprovalStatus::Approved, Some("policy")));
        let grant = w.store.grant(approval.grant.unwrap()).await.unwrap().unwrap();
        assert_eq!((grant.user, grant.agent, grant.status), (w.alice.id, w.planner.id(), GrantStatus::Active));
        assert_eq!((grant.resource.as_str(), grant.approved_by.as_str()), (CAL, "policy"));
        assert_eq!(grant.expires_at, start() + Duration::hours(24));
        let tokens = w.poll(&w.planner, &asked.auth_req_id).await.unwrap();
        let record = w.record(&tokens).await;
        assert_eq!((record.subject, record.grant), (w.alice.id.to_string(), Some(grant.id)));
        assert_eq!(record.chain, vec![w.planner.id()]);
        assert!(record.family.is_some() && tokens.refresh_token.as_deref().is_some_and(|r| r.starts_with("mnd_rt_")));
        assert_eq!(w.store.approval(id).await.unwrap().map(|a| a.status), Some(ApprovalStatus::Consumed));
        // Handed out once; and only to the agent that asked.
        let again = w.poll(&w.planner, &asked.auth_req_id).await;
        assert!(matches!(again, Err(Error::InvalidGrant(ref m)) if m.contains("already used")), "{again:?}");
        let other = w.poll(&w.helper, &asked.auth_req_id).await;
        assert!(matches!(other, Err(Error::InvalidGrant(ref m)) if m.contains("unknown")), "{other:?}");
        assert_eq!(w.events(kind::TOKEN_ISSUED).await.len(), 1);
    }

    #[tokio::test]
    async fn a_write_grant_waits_for_the_user_and_polls_are_paced() {
        let w = World::new().await;
        let asked = w.ciba(&w.planner, "read write").await.unwrap();
        let id: ApprovalId = asked.auth_req_id.parse().unwrap();
        let pending = w.store.approval(id).await.unwrap().unwrap();
        assert_eq!((pending.status, pending.approver, pending.grant), (ApprovalStatus::Pending, w.alice.id, None));
        assert!(matches!(w.poll(&w.planner, &asked.auth_req_id).await, Err(Error::AuthorizationPending)));
        assert!(matches!(w.poll(&w.planner, &asked.auth_req_id).await, Err(Error::SlowDown)));
        w.clock.advance(Duration::seconds(5));
        assert!(matches!(w.poll(&w.planner, &asked.auth_req_id).await, Err(Error::AuthorizationPending)));
        // Only the person named decides: not Bob, not the admin.
        assert!(matches!(w.m.decide_approval(Caller::User(w.bob.id), id, true).await, Err(Error::Forbidden(_))));
        assert!(matches!(w.m.decide_approval(Caller::Admin, id, true).await, Err(Error::Forbidden(_))));
        let decided = w.m.decide_approval(Caller::User(w.alice.id), id, true).await.unwrap();
        assert_eq!(decided.status, ApprovalStatus::Approved);
        let grant = w.store.grant(decided.grant.unwrap()).await.unwrap().unwrap();
        assert_eq!(grant.approved_by, w.alice.id.to_string());
        let tokens = w.poll(&w.planner, &asked.auth_req_id).await.unwrap();
        assert_eq!(w.record(&tokens).await.scopes, ScopeSet::parse("read write").unwrap());
    }

    #[tokio::test]
    async fn a_denied_or_expired_request_issues_nothing() {
        let w = World::new().await;
        let denied = w.ciba(&w.planner, "write").await.unwrap();
        let id: ApprovalId = denied.auth_req_id.parse().unwrap();
        w.m.decide_approval(Caller::User(w.alice.id), id, false).await.unwrap();
        let polled = w.poll(&w.planner, &denied.auth_req_id).await;
        assert!(matches!(polled, Err(Error::AccessDenied(_))), "{polled:?}");
        let late = w.ciba(&w.planner, "write").await.unwrap();
        w.clock.advance(Duration::seconds(600));
        let polled = w.poll(&w.planner, &late.auth_req_id).await;
        assert!(matches!(polled, Err(Error::ExpiredToken(_))), "{polled:?}");
        // Too late to decide, too: no grant is made.
        let id: ApprovalId = late.auth_req_id.parse().unwrap();
        assert!(matches!(w.m.decide_approval(Caller::User(w.alice.id), id, true).await, Err(Error::Conflict(_))));
        assert!(w.store.approval(id).await.unwrap().is_some_and(|a| a.grant.is_none()));
        assert!(w.events(kind::TOKEN_ISSUED).await.is_empty());
    }

    #[tokio::test]
    async fn a_request_policy_denies_is_refused_at_once_and_waits_for_nobody() {
        let w = World::new().await;
        // Bob is not staff: he holds no calendar right to give.
        let req = crate::BcAuthorizeRequest {
            login_hint: w.bob.id.to_string(),
            scope: Some("read".into()),
            resources: vec![CAL.into()],
            binding_message: None,
            requested_expiry: None,
            allowed_actors: None,
            client_notification_token: None,
            authorization_details: None,
        };
        let refused = w.m.bc_authorize(&w.creds(&w.planner), Ok(req)).await;
        assert!(
            matches!(refused, Err(Error::AccessDenied(ref m)) if m.contains("policy does not allow")),
            "{refused:?}"
        );
        assert_eq!(w.store.pending_requests(w.planner.id(), None, start()).await.unwrap(), 0);
        let q = crate::store::ApprovalQuery { limit: 10, ..Default::default() };
        assert!(w.store.approvals(&q).await.unwrap().is_empty(), "a refused request was kept");
        let recorded = w.events(kind::APPROVAL_REQUESTED).await;
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded.first().and_then(|e| e.decision.clone()).as_deref(), Some("deny"));
        // Nor does an unknown person, or a scope the API does not offer.
        let unknown = crate::BcAuthorizeRequest {
            login_hint: "nobody@example.com".into(),
            scope: Some("read".into()),
            resources: vec![CAL.into()],
            binding_message: None,
            requested_expiry: None,
            allowed_actors: None,
            client_notification_token: None,
            authorization_details: None,
        };
        assert!(matches!(w.m.bc_authorize(&w.creds(&w.planner), Ok(unknown)).await, Err(Error::UnknownUser(_))));
        assert!(matches!(w.ciba(&w.planner, "delete").await, Err(Error::InvalidScope(_))));
    }

    #[tokio::test]
    async fn requests_waiting_for_one_person_are_capped() {
        let w = World::with(|c| c.max_pending_per_agent_user = 2).await;
        w.ciba(&w.planner, "write").await.unwrap();
        w.ciba(&w.planner, "write").await.unwrap();
        let third = w.ciba(&w.planner, "write").await;
        assert!(matches!(third, Err(Error::RateLimited { .. })), "{third:?}");
        assert_eq!(w.store.pending_requests(w.planner.id(), Some(w.alice.id), start()).await.unwrap(), 2);
        // Another agent has its own allowance; a decision makes room.
        assert!(w.ciba(&w.helper, "write").await.is_ok());
        w.clock.advance(Duration::seconds(601));
        assert!(w.ciba(&w.planner, "write").await.is_ok(), "expired requests no longer count");
    }
}
