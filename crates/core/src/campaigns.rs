//! Access review campaigns (DESIGN §12, ADR 0033): the findings of a scope,
//! frozen into items when the campaign starts, each assigned to the owner
//! accountable for its subject. The owner (or an admin or auditor) decides
//! keep, narrow or revoke; the decision is applied at once, with the
//! cascades of a revocation or retirement, in the same change that marks
//! the item decided, so that it is applied exactly once. Items still
//! undecided at the deadline take the campaign's default, applied by
//! housekeeping.

use mandate_audit::Event;
use mandate_model::records::{AgentStatus, GrantStatus};
use mandate_model::review::{
    Campaign, CampaignDefault, CampaignScope, CampaignStatus, Decision, FindingSnapshot, Outcome, ReviewItem,
    SuggestionSnapshot,
};
use mandate_model::ssf::{Cause, InitiatingEntity};
use mandate_model::{AgentId, CampaignId, GrantId, ReviewItemId, Scope, ScopeSet, UserId};
use time::OffsetDateTime;

use crate::Error;
use crate::audit::{ALLOW, AuditRecord, event_time, kind};
use crate::inventory::{Paged, paged};
use crate::ports::new_ulid;
use crate::review::Finding;
use crate::service::{Caller, Mandate};
use crate::store::{CampaignProgress, CampaignQuery, Change, Handle, Mutation, ReviewItemQuery};

/// The most items one campaign holds: it is created in one transaction.
pub const MAX_CAMPAIGN_ITEMS: usize = 10_000;
/// Agents per page of the review a campaign walks.
const CAMPAIGN_REVIEW_PAGE: u32 = 500;
/// The furthest a deadline may be, in days.
pub const MAX_DEADLINE_DAYS: i64 = 366;
/// Campaigns, and items of each, that one housekeeping pass settles.
const DUE_PAGE: u32 = 20;
const ITEM_PAGE: u32 = 500;
/// `decided_by` of an item the deadline decided.
pub const DEADLINE: &str = "deadline";

/// Who applies a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decider {
    Caller(Caller),
    /// Housekeeping, applying the campaign's default.
    Deadline,
}

impl Decider {
    fn name(self) -> String {
        match self {
            Decider::Caller(Caller::Admin) => "admin".into(),
            Decider::Caller(Caller::User(u) | Caller::ConsoleAdmin(u)) => u.to_string(),
            Decider::Deadline => DEADLINE.into(),
        }
    }

    fn entity(self) -> InitiatingEntity {
        match self {
            Decider::Caller(Caller::Admin) => InitiatingEntity::Admin,
            Decider::Caller(Caller::User(_) | Caller::ConsoleAdmin(_)) => InitiatingEntity::User,
            Decider::Deadline => InitiatingEntity::System,
        }
    }
}

/// A campaign with how far it has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignView {
    pub campaign: Campaign,
    pub progress: CampaignProgress,
}

/// What deciding an item did: the item as now stored, and what the
/// cascade reached (counted by the store as it committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub item: ReviewItem,
    pub tokens: u64,
    pub grants: u64,
}

/// The findings a scope covers: `owner` matches the accountable owner;
/// `resource` keeps the findings about grants for that resource.
async fn in_scope(m: &Mandate, scope: &CampaignScope, f: &Finding) -> Result<bool, Error> {
    if scope.owner.is_some_and(|o| o != f.owner) {
        return Ok(false);
    }
    let Some(resource) = &scope.resource else { return Ok(true) };
    let Ok(grant) = f.subject.parse::<GrantId>() else { return Ok(false) };
    Ok(m.store.grant(grant).await?.is_some_and(|g| &g.resource == resource))
}

fn snapshot(f: &Finding) -> FindingSnapshot {
    FindingSnapshot {
        id: f.id.clone(),
        kind: f.kind.as_str().to_owned(),
        subject: f.subject.clone(),
        evidence: f.evidence.clone(),
        suggestion: SuggestionSnapshot {
            action: f.suggestion.action.to_owned(),
            scopes: f.suggestion.scopes.clone(),
            may_act: f.suggestion.may_act.clone(),
        },
    }
}

/// `scopes` as a set narrower than (or equal to) `current`: 400 if empty,
/// unparsable, or naming a scope `current` does not hold.
fn narrower(scopes: &[String], current: Option<&ScopeSet>) -> Result<ScopeSet, Error> {
    let set = ScopeSet::from_iter_checked(scopes.iter().map(|s| Scope::parse(s)))
        .map_err(|e| Error::BadInput(format!("scopes: {e}")))?;
    if set.is_empty() {
        return Err(Error::BadInput("scopes: narrowing keeps at least one scope; decide revoke to remove all".into()));
    }
    if let Some(current) = current
        && let Some(wider) = set.iter().find(|s| !current.contains(s))
    {
        return Err(Error::BadInput(format!(
            "scopes: {} is not held now; a narrowing names a subset of {}",
            wider.as_str(),
            current.to_claim()
        )));
    }
    Ok(set)
}

impl Mandate {
    /// Whether a person reviews like the admin: an auditor, or a member
    /// of the console's group.
    pub async fn is_reviewer(&self, u: UserId) -> Result<bool, Error> {
        Ok(self.is_auditor(u).await? || self.is_console_admin(u).await?)
    }

    async fn require_reviewer(&self, caller: Caller, what: &str) -> Result<(), Error> {
        match caller {
            Caller::Admin => Ok(()),
            Caller::User(u) | Caller::ConsoleAdmin(u) if self.is_reviewer(u).await? => Ok(()),
            Caller::User(_) | Caller::ConsoleAdmin(_) => {
                let why = format!("only the admin and auditors may {what}");
                self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), &why).await?;
                Err(Error::Forbidden(why))
            }
        }
    }

    /// `POST /v1/review/campaigns`: the findings of `scope`, computed now
    /// under the server's thresholds, become items, all written in one
    /// change with the campaign. Bad input writes nothing.
    pub async fn create_campaign(
        &self,
        caller: Caller,
        scope: CampaignScope,
        deadline: OffsetDateTime,
        default: CampaignDefault,
    ) -> Result<(Campaign, usize), Error> {
        self.require_reviewer(caller, "start a review campaign").await?;
        let now = self.clock.now();
        if deadline <= now {
            return Err(Error::BadInput("deadline must be in the future".into()));
        }
        if deadline > now + time::Duration::days(MAX_DEADLINE_DAYS) {
            return Err(Error::BadInput(format!("deadline must be within {MAX_DEADLINE_DAYS} days")));
        }
        if let Some(owner) = scope.owner
            && self.store.user(owner).await?.is_none()
        {
            return Err(Error::BadInput(format!("scope.owner: no user {owner}")));
        }
        if let Some(resource) = &scope.resource
            && self.store.resource_by_identifier(resource).await?.is_none()
        {
            return Err(Error::BadInput("scope.resource: no resource has this identifier".into()));
        }
        // A page of the review at a time, stopping as soon as the scope
        // holds too many: what is held is bounded by the cap.
        let mut findings = Vec::new();
        let mut before = None;
        loop {
            let page = self.findings_page(self.config().review, before, CAMPAIGN_REVIEW_PAGE).await?;
            for f in page.findings {
                if in_scope(self, &scope, &f).await? && self.store.user(f.owner).await?.is_some() {
                    findings.push(f);
                }
            }
            if findings.len() > MAX_CAMPAIGN_ITEMS {
                return Err(Error::BadInput(format!(
                    "the scope holds more than {MAX_CAMPAIGN_ITEMS} findings: narrow it by owner or resource"
                )));
            }
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        let campaign = Campaign {
            id: CampaignId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?),
            scope,
            deadline,
            default,
            created_by: Decider::Caller(caller).name(),
            created_at: now,
            status: CampaignStatus::Open,
            closed_at: None,
        };
        let mut change = Change::new().with(Mutation::InsertCampaign(campaign.clone()));
        for f in &findings {
            change.push(Mutation::InsertReviewItem(ReviewItem {
                id: ReviewItemId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?),
                campaign: campaign.id,
                finding: snapshot(f),
                assignee: f.owner,
                decision: None,
                decided_by: None,
                decided_at: None,
                outcome: None,
            }));
        }
        let mut event = self.admin_event(kind::REVIEW_CAMPAIGN_CREATED, caller);
        event.resource = Some(campaign.id.to_string());
        event.subject = campaign.scope.owner.map(|o| o.to_string());
        event.reason = Some(format!(
            "{} items; deadline {}; default {}{}",
            findings.len(),
            event_time(deadline),
            default.as_str(),
            campaign.scope.resource.as_deref().map(|r| format!("; resource {r}")).unwrap_or_default()
        ));
        change.push(AuditRecord::new(event).mutation());
        self.store.commit(change).await?;
        Ok((campaign, findings.len()))
    }

    /// `GET /v1/review/campaigns/{id}`: the admin and reviewers.
    pub async fn get_campaign(&self, caller: Caller, id: CampaignId) -> Result<CampaignView, Error> {
        self.require_reviewer(caller, "read review campaigns").await?;
        let campaign = self.store.campaign(id).await?.ok_or_else(|| Error::NotFound(format!("campaign {id}")))?;
        let progress = self.store.campaign_progress(id).await?;
        Ok(CampaignView { campaign, progress })
    }

    /// `GET /v1/review/campaigns`: newest first, a page at a time.
    pub async fn list_campaigns(
        &self,
        caller: Caller,
        mut q: CampaignQuery,
    ) -> Result<Paged<CampaignView, CampaignId>, Error> {
        self.require_reviewer(caller, "read review campaigns").await?;
        let limit = q.limit;
        q.limit = limit.saturating_add(1);
        let page = paged(self.store.campaigns(&q).await?, limit, |c| c.id);
        let mut items = Vec::with_capacity(page.items.len());
        for campaign in page.items {
            let progress = self.store.campaign_progress(campaign.id).await?;
            items.push(CampaignView { campaign, progress });
        }
        Ok(Paged { items, next: page.next })
    }

    /// `GET /v1/review/items` and a campaign's items. The admin and
    /// reviewers list any; anyone else only the items assigned to them
    /// (`q.assignee` is set to them, and naming another person is refused).
    pub async fn list_review_items(
        &self,
        caller: Caller,
        mut q: ReviewItemQuery,
    ) -> Result<Paged<ReviewItem, ReviewItemId>, Error> {
        if let Some(u) = caller.person()
            && !self.is_reviewer(u).await?
        {
            if q.assignee.is_some_and(|a| a != u) {
                let why = "a person may list only the review items assigned to them";
                self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), why).await?;
                return Err(Error::Forbidden(why.into()));
            }
            q.assignee = Some(u);
        }
        if let Some(c) = q.campaign
            && self.store.campaign(c).await?.is_none()
        {
            return Err(Error::NotFound(format!("campaign {c}")));
        }
        let limit = q.limit;
        q.limit = limit.saturating_add(1);
        Ok(paged(self.store.review_items(&q).await?, limit, |i| i.id))
    }

    /// A campaign by id, for pages that show an item's deadline.
    pub async fn campaigns_of(
        &self,
        items: &[ReviewItem],
    ) -> Result<std::collections::HashMap<CampaignId, Campaign>, Error> {
        let mut out = std::collections::HashMap::new();
        for i in items {
            if !out.contains_key(&i.campaign)
                && let Some(c) = self.store.campaign(i.campaign).await?
            {
                out.insert(c.id, c);
            }
        }
        Ok(out)
    }

    /// `POST /v1/review/items/{id}/decide`: by the assignee, the admin or
    /// a reviewer; anyone else is refused (and the refusal audited).
    /// Deciding twice, or after the campaign closed, is 409.
    pub async fn decide_review_item(
        &self,
        caller: Caller,
        id: ReviewItemId,
        decision: Decision,
        scopes: Option<Vec<String>>,
    ) -> Result<Decided, Error> {
        let item = self.store.review_item(id).await?.ok_or_else(|| Error::NotFound(format!("review item {id}")))?;
        if let Some(u) = caller.person()
            && u != item.assignee
            && !self.is_reviewer(u).await?
        {
            let why = "only the item's assignee, the admin or an auditor may decide it";
            self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), why).await?;
            return Err(Error::Forbidden(why.into()));
        }
        if scopes.is_some() && decision != Decision::Narrow {
            return Err(Error::BadInput("scopes go only with the decision narrow".into()));
        }
        self.decide(Decider::Caller(caller), item, decision, scopes).await
    }

    async fn decide(
        &self,
        by: Decider,
        item: ReviewItem,
        decision: Decision,
        scopes: Option<Vec<String>>,
    ) -> Result<Decided, Error> {
        if item.decision.is_some() {
            return Err(Error::Conflict(format!("review item {} is decided already", item.id)));
        }
        let campaign = self
            .store
            .campaign(item.campaign)
            .await?
            .ok_or_else(|| Error::Unavailable(format!("campaign {} is missing", item.campaign)))?;
        if campaign.status != CampaignStatus::Open {
            return Err(Error::Conflict(format!("campaign {} is closed", campaign.id)));
        }
        let now = self.clock.now();
        let mut change = Change::new();
        let (outcome, tokens, grants) = self.apply_decision(&mut change, by, &item, decision, scopes, now).await?;
        // The compare-and-set comes first: if the item was decided meanwhile
        // (another reviewer, another node), nothing of this change is written.
        change.prepend(Mutation::DecideReviewItem {
            id: item.id,
            decision,
            by: by.name(),
            at: now,
            outcome: outcome.clone(),
        });
        let mut event = self.decider_event(kind::REVIEW_ITEM_DECIDED, by);
        event.subject = Some(item.assignee.to_string());
        event.resource = Some(item.finding.subject.clone());
        if let Ok(g) = item.finding.subject.parse::<GrantId>() {
            event.grant_id = Some(g.to_string());
        }
        event.reason =
            Some(format!("{} {}: {} ({}); {}", item.campaign, item.id, decision, item.finding.kind, outcome.applied));
        change.push(AuditRecord::counting(event, &tokens).mutation());
        let receipt = self.commit_signalling(change).await?;
        let sum = |handles: &[Handle]| -> Result<u64, Error> {
            handles.iter().try_fold(0u64, |n, &h| {
                n.checked_add(receipt.affected(h)?).ok_or_else(|| Error::Unavailable("a count overflows".into()))
            })
        };
        let (tokens, grants) = (sum(&tokens)?, sum(&grants)?);
        let item = ReviewItem {
            decision: Some(decision),
            decided_by: Some(by.name()),
            decided_at: Some(now),
            outcome: Some(outcome),
            ..item
        };
        Ok(Decided { item, tokens, grants })
    }

    /// An event naming who decided.
    fn decider_event(&self, kind: &str, by: Decider) -> Event {
        match by {
            Decider::Caller(c) => self.admin_event(kind, c),
            Decider::Deadline => {
                let mut e = self.event(kind);
                e.decision = Some(ALLOW.into());
                e.actor = Some("mandate".into());
                e
            }
        }
    }

    /// Pushes onto `change` what `decision` does to the item's subject,
    /// with the cascade's own audit events; returns the outcome and the
    /// handles of the token and grant revocations.
    async fn apply_decision(
        &self,
        change: &mut Change,
        by: Decider,
        item: &ReviewItem,
        decision: Decision,
        scopes: Option<Vec<String>>,
        now: OffsetDateTime,
    ) -> Result<(Outcome, Vec<Handle>, Vec<Handle>), Error> {
        let subject = item.finding.subject.as_str();
        let suggested = || {
            item.finding.suggestion.scopes.clone().ok_or_else(|| {
                Error::BadInput(
                    "scopes: this finding suggests no narrower set of scopes; name the scopes to keep".into(),
                )
            })
        };
        let applied = |what: &str| Outcome { applied: what.to_owned(), ..Outcome::default() };
        if decision == Decision::Keep {
            return Ok((applied("kept: nothing changed"), Vec::new(), Vec::new()));
        }
        if let Ok(id) = subject.parse::<GrantId>() {
            let Some(grant) = self.store.grant(id).await?.filter(|g| g.status == GrantStatus::Active) else {
                return match decision {
                    Decision::Narrow => Err(Error::Conflict(format!("grant {id} is revoked or missing"))),
                    _ => Ok((applied("nothing to revoke: the grant was revoked already"), Vec::new(), Vec::new())),
                };
            };
            let revoking = decision == Decision::Revoke;
            let mut event = self.decider_event(if revoking { kind::GRANT_REVOKED } else { kind::GRANT_NARROWED }, by);
            event.subject = Some(grant.user.to_string());
            event.grant_id = Some(id.to_string());
            event.resource = Some(grant.resource.clone());
            event.chain = vec![grant.user.to_string(), grant.agent.to_string()];
            let mut outcome = if revoking {
                change.push(Mutation::RevokeGrant { id, at: now });
                event.reason = Some(format!("access review {}: revoked with every token issued under it", item.id));
                applied("grant revoked")
            } else {
                let keep = narrower(&scopes.map_or_else(suggested, Ok)?, Some(&grant.scopes))?;
                change.push(Mutation::NarrowGrantScopes { id, scopes: keep.clone() });
                event.scope = Some(keep.to_claim());
                event.reason = Some(format!(
                    "access review {}: scopes {} -> {}; its tokens are revoked",
                    item.id,
                    grant.scopes.to_claim(),
                    keep.to_claim()
                ));
                Outcome {
                    scopes: Some(keep.iter().map(|s| s.as_str().to_owned()).collect()),
                    ..applied("grant narrowed")
                }
            };
            let tokens = change.push(Mutation::RevokeTokensOfGrant { grant: id, at: now });
            let why = if revoking { "the grant was revoked" } else { "the grant was narrowed" };
            Mandate::signal_revocations(change, now, Cause::new(by.entity(), why));
            change.push(AuditRecord::counting(event, &[tokens]).mutation());
            outcome.applied = format!("{}; tokens beneath revoked", outcome.applied);
            return Ok((outcome, vec![tokens], Vec::new()));
        }
        let id: AgentId = subject
            .parse()
            .map_err(|_| Error::Unavailable(format!("review item {} names no agent or grant", item.id)))?;
        let Some(agent) = self.store.agent(id).await?.filter(|a| a.status != AgentStatus::Retired) else {
            return match decision {
                Decision::Narrow => Err(Error::Conflict(format!("agent {id} is retired or missing"))),
                _ => Ok((applied("nothing to retire: the agent was retired already"), Vec::new(), Vec::new())),
            };
        };
        if decision == Decision::Narrow {
            let keep = narrower(&scopes.map_or_else(suggested, Ok)?, agent.scopes.as_ref())?;
            change.push(Mutation::NarrowAgentScopes { id, scopes: keep.clone() });
            let tokens = change.push(Mutation::RevokeTokensOfAgent { agent: id, at: now });
            Mandate::signal_revocations(change, now, Cause::new(by.entity(), "the agent's scopes were narrowed"));
            let mut event = self.decider_event(kind::AGENT_UPDATED, by);
            event.subject = Some(agent.owner.to_string());
            event.resource = Some(id.to_string());
            event.scope = Some(keep.to_claim());
            event.reason = Some(format!(
                "access review {}: scopes {} -> {}; its tokens are revoked",
                item.id,
                agent.scopes.as_ref().map_or_else(|| "(any)".to_owned(), ScopeSet::to_claim),
                keep.to_claim()
            ));
            change.push(AuditRecord::counting(event, &[tokens]).mutation());
            let outcome = Outcome {
                scopes: Some(keep.iter().map(|s| s.as_str().to_owned()).collect()),
                ..applied("agent narrowed; its tokens revoked")
            };
            return Ok((outcome, vec![tokens], Vec::new()));
        }
        // Revoke: retire the agent, as `POST /v1/agents/{id}/retire` does.
        change.push(Mutation::SetAgentStatus { id, from: agent.status, to: AgentStatus::Retired, at: now, by: None });
        let d = self.deactivation(change, id, now).await?;
        Mandate::signal_revocations(change, now, Cause::new(by.entity(), format!("the agent {id} was retired")));
        let mut event = self.decider_event(kind::AGENT_RETIRED, by);
        event.subject = Some(agent.owner.to_string());
        event.resource = Some(id.to_string());
        event.reason = Some(match d.children.len() {
            0 => format!("access review {}: {} -> retired", item.id, agent.status.as_str()),
            n => format!(
                "access review {}: {} -> retired; {n} ephemeral descendants retired",
                item.id,
                agent.status.as_str()
            ),
        });
        change.push(AuditRecord::counting(event, &d.revocations).mutation());
        let mut retired = Vec::new();
        for (child, revoke_at) in &d.children {
            let mut e = self.decider_event(kind::AGENT_RETIRED, by);
            e.subject = Some(child.owner.to_string());
            e.resource = Some(child.id.to_string());
            e.reason = Some(format!("its ancestor {id} was retired"));
            change.push(AuditRecord::counting(e, &[*revoke_at]).mutation());
            retired.push(child.id.to_string());
        }
        let outcome = Outcome { retired, ..applied("agent retired; its tokens and grants revoked") };
        Ok((outcome, d.revocations, d.grant_revocations))
    }

    /// Housekeeping: every open campaign past its deadline gets its
    /// default applied to the items still undecided, then is closed. Each
    /// item is its own change guarded by the item's compare-and-set, and
    /// the close by the campaign's, so that two nodes doing this at once
    /// apply each item once and close each campaign once.
    pub async fn settle_due_campaigns(&self) -> Result<(), Error> {
        let now = self.clock.now();
        for campaign in self.store.campaigns_due(now, DUE_PAGE).await? {
            let mut applied = 0u64;
            let mut after = None;
            loop {
                let q = ReviewItemQuery {
                    campaign: Some(campaign.id),
                    undecided: true,
                    after,
                    limit: ITEM_PAGE,
                    ..ReviewItemQuery::default()
                };
                let page = self.store.review_items(&q).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id);
                for item in page {
                    let id = item.id;
                    match self.decide(Decider::Deadline, item, campaign.default.decision(), None).await {
                        Ok(_) => applied += 1,
                        // Decided meanwhile, by a person or another node.
                        Err(Error::Conflict(_)) => {}
                        Err(e) => {
                            tracing::warn!(item = %id, error = %e, "a review item's default could not be applied");
                        }
                    }
                }
            }
            let mut event = self.decider_event(kind::REVIEW_CAMPAIGN_CLOSED, Decider::Deadline);
            event.resource = Some(campaign.id.to_string());
            event.reason = Some(format!(
                "deadline {} passed; default {} applied to {applied} undecided items",
                event_time(campaign.deadline),
                campaign.default.as_str()
            ));
            let change = Change::new()
                .with(Mutation::CloseCampaign { id: campaign.id, at: now })
                .with(AuditRecord::new(event).mutation());
            match self.store.commit(change).await {
                Ok(_) | Err(crate::StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_narrowing_names_a_nonempty_subset() {
        let current = ScopeSet::parse("read write").ok();
        let keep = narrower(&["read".to_owned()], current.as_ref());
        assert_eq!(keep.ok().map(|k| k.to_claim()), Some("read".to_owned()));
        assert!(matches!(narrower(&["admin".to_owned()], current.as_ref()), Err(Error::BadInput(_))));
        assert!(matches!(narrower(&[], current.as_ref()), Err(Error::BadInput(_))));
        assert!(matches!(narrower(&["bad scope".to_owned()], current.as_ref()), Err(Error::BadInput(_))));
        // An agent with no ceiling may be given one.
        assert!(narrower(&["anything".to_owned()], None).is_ok());
    }
}
