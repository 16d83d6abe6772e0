//! Reapproval and lapses (DESIGN §12, ADR 0036): a grant about to expire is
//! renewed only by a reapproval, which re-runs the policy that issuing it
//! runs and, where policy says so, asks a person; housekeeping reports each
//! grant that expired without being revoked, once.

use mandate_model::records::{Agent, AgentStatus, Approval, ApprovalStatus, ApprovalSubject, Grant, UserStatus};
use mandate_model::{ApprovalId, GrantId};
use mandate_policy::Approver;
use time::{Duration, OffsetDateTime};

use crate::Error;
use crate::audit::{ALLOW, AuditRecord, DENY, event_time, kind};
use crate::ports::new_ulid;
use crate::service::{Caller, Mandate};
use crate::store::{Change, LapsedQuery, Mutation, StoreError};

/// The longest purpose a reapproval may give (as the consent page's).
const MAX_PURPOSE: usize = 200;
/// Grants read per query while reporting lapses.
const LAPSE_PAGE: u32 = 200;
/// Most lapses one housekeeping pass reports; the rest wait for the next.
const MAX_LAPSES_PER_PASS: usize = 2_000;

/// What `POST /v1/grants/{id}/reapprove` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Reapproved {
    /// Renewed at once (policy asked nobody, or the caller is the person
    /// it names): the grant with its new expiry.
    Renewed(Box<Grant>),
    /// Waiting for the person (or group) policy names: nothing changed yet.
    Waiting { grant: Box<Grant>, approval: Box<Approval> },
}

/// One page of lapsed grants, and the cursor of the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Lapsed {
    pub items: Vec<Grant>,
    pub next: Option<(OffsetDateTime, GrantId)>,
}

impl Mandate {
    /// Whether `grant` may be reapproved at `now`: live, and ending within
    /// the review's `expiring_days` (`--review-expiring-days`).
    pub fn reapproval_due(&self, grant: &Grant, now: OffsetDateTime) -> bool {
        grant.is_live(now) && grant.expires_at <= now + Duration::days(i64::from(self.config.review.expiring_days))
    }

    /// `POST /v1/grants/{id}/reapprove`, by the admin, the user who gave
    /// the grant or the agent's owner (those who may revoke it). A live
    /// grant inside the window is decided again by policy, as issuing it
    /// is, with the user's current rights and the agent's current ceiling
    /// and limits: denied, it is left to lapse (403); allowed without a
    /// person, or when the caller is the person policy names, its expiry
    /// moves to one grant lifetime from now; otherwise an approval of kind
    /// `reapproval` waits for the person or group policy names. Its id,
    /// scopes and resource never change.
    pub async fn reapprove_grant(
        &self,
        caller: Caller,
        id: GrantId,
        purpose: Option<String>,
    ) -> Result<Reapproved, Error> {
        let grant = self.store.grant(id).await?.ok_or_else(|| Error::NotFound(format!("grant {id}")))?;
        let agent = self.store.agent(grant.agent).await?;
        if let Some(me) = caller.person()
            && me != grant.user
            && agent.as_ref().map(|a| a.owner) != Some(me)
        {
            self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), "not this user's grant").await?;
            return Err(Error::Forbidden(
                "only the user who gave a grant or the agent's owner may ask to renew it".into(),
            ));
        }
        let purpose = purpose
            .map(|p| mandate_model::name::validate_text("purpose", &p, MAX_PURPOSE))
            .transpose()
            .map_err(|e| Error::BadInput(e.to_string()))?;
        let now = self.clock.now();
        if grant.status == mandate_model::records::GrantStatus::Revoked {
            return Err(Error::Conflict(format!("grant {id} is revoked")));
        }
        if now >= grant.expires_at {
            return Err(Error::Conflict(format!(
                "grant {id} has lapsed (it ended at {}): the agent must ask for a new grant",
                event_time(grant.expires_at)
            )));
        }
        if !self.reapproval_due(&grant, now) {
            return Err(Error::Conflict(format!(
                "grant {id} is not due for reapproval: it ends at {}, more than {} days from now",
                event_time(grant.expires_at),
                self.config.review.expiring_days
            )));
        }
        let agent = agent.ok_or_else(|| Error::Conflict(format!("grant {id}: its agent is gone")))?;
        let to = self.grant_expiry(&agent, now);
        if to <= grant.expires_at {
            return Err(Error::Conflict(format!(
                "grant {id} is not due for reapproval: renewing it now would not extend it (it ends at {})",
                event_time(grant.expires_at)
            )));
        }
        let decided = self.reapproval_policy(&grant, &agent).await?;
        let approver = match decided {
            Ok(a) => a,
            Err(why) => {
                let mut event = self.grant_event(kind::GRANT_REAPPROVAL_DENIED, caller, &grant);
                event.decision = Some(DENY.into());
                event.reason = Some(crate::audit::bounded(&why));
                self.store.commit(Change::new().with(AuditRecord::new(event).mutation())).await?;
                return Err(Error::Forbidden(format!("policy does not renew grant {id}, which will lapse: {why}")));
            }
        };
        // The person policy names asks for it themselves: their request is
        // their approval, as on the consent page.
        let by = match (&approver, caller) {
            (None, _) => Some("policy".to_owned()),
            (Some(Approver::User), Caller::User(me) | Caller::ConsoleAdmin(me)) if me == grant.user => {
                Some(me.to_string())
            }
            (Some(Approver::Owner), Caller::User(me) | Caller::ConsoleAdmin(me)) if me == agent.owner => {
                Some(me.to_string())
            }
            _ => None,
        };
        if let Some(by) = by {
            let mut change = Change::new();
            let event = self.push_extension(&mut change, caller, &grant, to, purpose.clone(), &by, now);
            change.push(AuditRecord::new(event).mutation());
            self.commit_extension(change, id).await?;
            return Ok(Reapproved::Renewed(Box::new(extended(grant, to, purpose, now))));
        }
        let Some(who) = approver else {
            return Err(Error::Unavailable("a reapproval with no one to ask".into()));
        };
        let pending = self.store.pending_requests(agent.id, Some(grant.user), now).await?;
        if pending >= self.config.max_pending_per_agent_user {
            return Err(Error::RateLimited {
                why: format!(
                    "the agent has {pending} requests waiting for this person (at most {}); wait for a decision",
                    self.config.max_pending_per_agent_user
                ),
                retry_after: u64::try_from(self.config.ciba_interval).unwrap_or(5).max(1),
            });
        }
        let approval_id = ApprovalId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?);
        let approval = Approval {
            id: approval_id,
            agent: agent.id,
            user: grant.user,
            approver: match who {
                Approver::Owner => agent.owner,
                _ => grant.user,
            },
            resource: grant.resource.clone(),
            subject: ApprovalSubject::Reapproval { scopes: grant.scopes.clone(), purpose: purpose.clone() },
            binding_message: purpose.clone().or_else(|| grant.purpose.clone()),
            status: ApprovalStatus::Pending,
            decided_by: None,
            created_at: now,
            // Nothing is left to renew once the grant has ended.
            expires_at: (now + Duration::seconds(self.config.max_approval_ttl)).min(grant.expires_at),
            decided_at: None,
            grant: Some(id),
            polled_at: None,
            group: match &who {
                Approver::Group { name, .. } => Some(name.clone()),
                _ => None,
            },
            required: who.required(),
            approved_by: Vec::new(),
        };
        let mut event = self.grant_event(kind::GRANT_REAPPROVAL_REQUESTED, caller, &grant);
        event.reason = Some(match &who {
            Approver::Group { name, required } => format!("{approval_id}: waits for {required} of group {name}"),
            other => format!("{approval_id}: waits for the {} ({})", other.label(), approval.approver),
        });
        let mut change = Change::new();
        self.notify_approvers(&mut change, &approval).await?;
        change.push(Mutation::InsertApproval(approval.clone()));
        change.push(AuditRecord::new(event).mutation());
        self.store.commit(change).await?;
        Ok(Reapproved::Waiting { grant: Box::new(grant), approval: Box::new(approval) })
    }

    /// Policy on renewing `grant`, decided as issuing it is: the user's
    /// current rights, the agent's status, ceiling and audience limit,
    /// each scope and detail, and who may act next. The inner `Err` is why
    /// it is denied; the inner `Ok` says who, if anyone, must approve.
    async fn reapproval_policy(&self, grant: &Grant, agent: &Agent) -> Result<Result<Option<Approver>, String>, Error> {
        let Some(user) = self.store.user(grant.user).await?.filter(|u| u.status == UserStatus::Active) else {
            return Ok(Err("the user who gave the grant is disabled".into()));
        };
        if agent.status != AgentStatus::Active {
            return Ok(Err(format!("agent {} is {}", agent.id, agent.status.as_str())));
        }
        let limits = self.limits_of(agent).await?;
        if !limits.allows_resource(&grant.resource) {
            return Ok(Err(format!("limits.allowed_resources: agent {} may not use {}", agent.id, grant.resource)));
        }
        let res = self.resource_by_identifier(&grant.resource).await?;
        let scopes = match self.authorize_scopes(Some(&user), &[agent], &res, &grant.scopes, false).await? {
            Ok(a) => a,
            Err(why) => return Ok(Err(why)),
        };
        let details = match self
            .authorize_details(Some(&user), &[agent], (&res, &grant.scopes), &grant.authorization_details, false)
            .await?
        {
            Ok(a) => a,
            Err(why) => return Ok(Err(why)),
        };
        // Who may act next: what the grant holds must still lie within
        // what policy names, and a grant without a limit cannot be renewed
        // past a policy that now sets one.
        let asked = grant.may_act.as_ref().map(ToString::to_string);
        match self.grant_may_act(&user, agent, &res, &grant.scopes, asked.as_deref()).await {
            Ok(Some(m)) if grant.may_act.is_none() => {
                return Ok(Err(format!("policy now lets only {m} act next with this grant: ask for a new one")));
            }
            Ok(_) => {}
            Err(Error::AccessDenied(why) | Error::InvalidRequest(why)) => return Ok(Err(why)),
            Err(e) => return Err(e),
        }
        Ok(Ok(match (scopes, details) {
            (Some(Approver::User), _) | (_, Some(Approver::User)) => Some(Approver::User),
            (a, b) => a.or(b),
        }))
    }

    /// An event about `grant`, by `caller`.
    fn grant_event(&self, kind: &str, caller: Caller, grant: &Grant) -> mandate_audit::Event {
        let mut event = self.admin_event(kind, caller);
        event.subject = Some(grant.user.to_string());
        event.grant_id = Some(grant.id.to_string());
        event.resource = Some(grant.resource.clone());
        event.scope = Some(grant.scopes.to_claim());
        event.chain = vec![grant.user.to_string(), grant.agent.to_string()];
        event
    }

    /// Adds the extension of `grant` to `to` to `change`, and returns its
    /// `grant.reapproved` event.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_extension(
        &self,
        change: &mut Change,
        caller: Caller,
        grant: &Grant,
        to: OffsetDateTime,
        purpose: Option<String>,
        by: &str,
        now: OffsetDateTime,
    ) -> mandate_audit::Event {
        change.push(Mutation::ExtendGrant { id: grant.id, from: grant.expires_at, to, at: now, purpose });
        let mut event = self.grant_event(kind::GRANT_REAPPROVED, caller, grant);
        event.decision = Some(ALLOW.into());
        event.reason =
            Some(format!("approved_by {by}; ends at {} instead of {}", event_time(to), event_time(grant.expires_at)));
        event
    }

    /// Commits an extension: a grant that changed meanwhile (revoked,
    /// lapsed, or renewed by someone else) is 409, nothing written.
    async fn commit_extension(&self, change: Change, id: GrantId) -> Result<(), Error> {
        match self.store.commit(change).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict(_)) => {
                Err(Error::Conflict(format!("grant {id} changed meanwhile (revoked, lapsed or renewed)")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The approved reapproval `approval`: its grant, still live, is
    /// extended in `change`; returns the `grant.reapproved` event.
    pub(crate) async fn reapproval_approved(
        &self,
        change: &mut Change,
        caller: Caller,
        approval: &Approval,
        purpose: Option<String>,
        now: OffsetDateTime,
    ) -> Result<mandate_audit::Event, Error> {
        let id = approval.id;
        let gone = |g: GrantId| Error::Conflict(format!("approval {id}: its grant {g} is revoked or lapsed"));
        let g = approval.grant.ok_or_else(|| Error::Conflict(format!("approval {id} names no grant")))?;
        let grant = self.store.grant(g).await?.filter(|x| x.is_live(now)).ok_or_else(|| gone(g))?;
        let agent = self.store.agent(grant.agent).await?.ok_or_else(|| gone(g))?;
        let to = self.grant_expiry(&agent, now);
        if to <= grant.expires_at {
            return Err(Error::Conflict(format!("approval {id}: renewing grant {g} now would not extend it")));
        }
        let by = match caller {
            Caller::User(me) | Caller::ConsoleAdmin(me) => me.to_string(),
            Caller::Admin => "admin".into(),
        };
        Ok(self.push_extension(change, caller, &grant, to, purpose, &by, now))
    }

    /// The `grant.reapproval_denied` event of a denied reapproval.
    pub(crate) async fn reapproval_denied(
        &self,
        caller: Caller,
        approval: &Approval,
    ) -> Result<mandate_audit::Event, Error> {
        let grant = match approval.grant {
            Some(g) => self.store.grant(g).await?,
            None => None,
        };
        let mut event = match &grant {
            Some(g) => self.grant_event(kind::GRANT_REAPPROVAL_DENIED, caller, g),
            None => self.admin_event(kind::GRANT_REAPPROVAL_DENIED, caller),
        };
        event.decision = Some(DENY.into());
        event.reason = Some(format!("{}: the person asked denied it; the grant will lapse", approval.id));
        Ok(event)
    }

    /// Housekeeping: stamps each grant that expired at or before `now`
    /// without being revoked as lapsed, with a `grant.lapsed` event, once
    /// (a conditional update: of several nodes one reports it). Reads only
    /// unreported active grants, by expiry; at most
    /// [`MAX_LAPSES_PER_PASS`] a pass. Returns how many it reported.
    pub async fn report_lapses(&self, now: OffsetDateTime) -> Result<usize, Error> {
        let mut reported = 0usize;
        let mut seen = 0usize;
        while seen < MAX_LAPSES_PER_PASS {
            let due = self.store.lapse_due(now, LAPSE_PAGE).await?;
            if due.is_empty() {
                break;
            }
            let full = due.len() == LAPSE_PAGE as usize;
            let mut progressed = false;
            for g in &due {
                seen += 1;
                let mut event = self.event(kind::GRANT_LAPSED);
                event.decision = Some(ALLOW.into());
                event.actor = Some("mandate".into());
                event.subject = Some(g.user.to_string());
                event.grant_id = Some(g.id.to_string());
                event.resource = Some(g.resource.clone());
                event.scope = Some(g.scopes.to_claim());
                event.chain = vec![g.user.to_string(), g.agent.to_string()];
                event.reason = Some(format!("ended at {} without being revoked or renewed", event_time(g.expires_at)));
                let change = Change::new()
                    .with(Mutation::MarkGrantLapsed { id: g.id, at: now })
                    .with(AuditRecord::new(event).mutation());
                match self.store.commit(change).await {
                    Ok(_) => {
                        reported += 1;
                        progressed = true;
                    }
                    // Another node reported it, or it was revoked meanwhile.
                    Err(StoreError::Conflict(_)) => progressed = true,
                    Err(e) => return Err(e.into()),
                }
            }
            if !full || !progressed {
                break;
            }
        }
        Ok(reported)
    }

    /// `GET /v1/review/lapsed`: the admin and auditors only.
    pub async fn lapsed_grants(&self, caller: Caller, query: LapsedQuery) -> Result<Lapsed, Error> {
        if let Some(u) = caller.person()
            && !self.is_auditor(u).await?
        {
            let why = "the lapse report is for the admin and auditors";
            self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), why).await?;
            return Err(Error::Forbidden(why.into()));
        }
        let limit = query.limit as usize;
        // One more than a page tells whether another follows.
        let mut items =
            self.store.lapsed_grants(&LapsedQuery { limit: query.limit.saturating_add(1), ..query }).await?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().and_then(|g| g.lapsed_at.map(|at| (at, g.id)))
        } else {
            None
        };
        Ok(Lapsed { items, next })
    }
}

/// `grant` as an extension to `to` at `now` leaves it.
fn extended(mut grant: Grant, to: OffsetDateTime, purpose: Option<String>, now: OffsetDateTime) -> Grant {
    grant.expires_at = to;
    grant.reapproved_at = Some(now);
    grant.reapprovals = grant.reapprovals.saturating_add(1);
    if purpose.is_some() {
        grant.purpose = purpose;
    }
    grant
}
