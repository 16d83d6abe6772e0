//! Access review (DESIGN §12, ADR 0033): findings about the living
//! delegation records (agents and grants), each with its evidence and a
//! suggested action, computed from the records and the audit trail.
//!
//! Cost (ADR 0038). The review walks the agents that are not retired a
//! page at a time (an index on the live ones), newest first. For a page it
//! reads, with one query each: the owners, the children each agent
//! spawned in the last day, the live grants of the page's agents, the
//! audit events of its persistent agents and of those grants inside the
//! window (by actor and by grant, starting at the first event of the
//! window, found by a binary search on `seq`), and each grant's first
//! token. So a page costs a fixed number of reads, the whole review
//! O(live agents + their grants + their events in the window) rows, and
//! memory holds one page: `GET /v1/review` answers a page and a cursor.
//! Retired agents, revoked grants and events before the window are never
//! read. Per agent or grant at most [`MAX_EVENTS_PER_SUBJECT`] events are
//! counted: past that it counts as used, and no narrower set is suggested.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mandate_audit::Event;
use mandate_model::actors::ActorName;
use mandate_model::records::{Agent, AgentKind, Grant, Resource, User, UserStatus};
use mandate_model::{AgentId, UserId};
use serde::Serialize;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::audit::{AuditBatch, AuditKey, AuditQuery, event_time, kind};
use crate::service::{Caller, Mandate};
use crate::store::AgentListQuery;
use crate::{Error, secrets};

/// Agents per page when the whole review is walked inside the server
/// (campaigns, gauges).
const AGENT_PAGE: u32 = 500;
/// Most audit events counted about one agent or grant inside the window.
pub const MAX_EVENTS_PER_SUBJECT: usize = 5_000;
/// The longest window a threshold may name, days.
pub const MAX_DAYS: u32 = 3_650;
/// How far before the first event of the window, in `seq`, the reads
/// start: event times come from the nodes' clocks, so near the edge they
/// may be slightly out of `seq` order.
const SEQ_MARGIN: u64 = 10_000;

/// The thresholds of a review: `--review-*` flags, overridden per query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// An agent or grant unused this many days is `stale`.
    pub stale_days: u32,
    /// A scope or a delegation permission unused this many days is
    /// `over_broad` or `unused_delegation`.
    pub unused_days: u32,
    /// A grant that ends within this many days is `expiring`.
    pub expiring_days: u32,
    /// More children than this spawned by one parent in the last 24 hours
    /// is `sprawl`.
    pub spawn_rate: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { stale_days: 30, unused_days: 30, expiring_days: 7, spawn_rate: 100 }
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Stale,
    OverBroad,
    Orphaned,
    Sprawl,
    Expiring,
    UnusedDelegation,
}

impl FindingKind {
    pub const ALL: [FindingKind; 6] = [
        FindingKind::Stale,
        FindingKind::OverBroad,
        FindingKind::Orphaned,
        FindingKind::Sprawl,
        FindingKind::Expiring,
        FindingKind::UnusedDelegation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Stale => "stale",
            FindingKind::OverBroad => "over_broad",
            FindingKind::Orphaned => "orphaned",
            FindingKind::Sprawl => "sprawl",
            FindingKind::Expiring => "expiring",
            FindingKind::UnusedDelegation => "unused_delegation",
        }
    }
}

/// What a reviewer is advised to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    /// `retire` (an agent), `revoke` (a grant), `narrow` (to `scopes`, or
    /// `may_act`), `reassign` (an agent's owner), `reapprove` (a grant),
    /// or `limit` (a parent's spawning).
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub may_act: Option<Vec<String>>,
}

impl Suggestion {
    fn act(action: &'static str) -> Self {
        Self { action, scopes: None, may_act: None }
    }
}

/// One finding. `id` depends only on the kind and the subject, so that the
/// same finding keeps its id from one review to the next.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub id: String,
    pub kind: FindingKind,
    /// The agent (`agt_…`) or grant (`grt_…`) it is about.
    pub subject: String,
    /// The owner accountable for the subject (the agent's owner).
    pub owner: UserId,
    pub evidence: Value,
    pub suggestion: Suggestion,
}

impl Finding {
    fn new(kind: FindingKind, subject: String, owner: UserId, evidence: Value, suggestion: Suggestion) -> Self {
        Self { id: finding_id(kind, &subject), kind, subject, owner, evidence, suggestion }
    }
}

/// `fnd_` and the first 24 hex digits of SHA-256 over `kind:subject`.
pub fn finding_id(kind: FindingKind, subject: &str) -> String {
    let digest = secrets::hash(&format!("{}:{subject}", kind.as_str()));
    format!("fnd_{}", digest.get(..24).unwrap_or(&digest))
}

/// A review's thresholds given by a caller; `None` keeps the server's.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThresholdOverrides {
    pub stale_days: Option<u32>,
    pub unused_days: Option<u32>,
    pub expiring_days: Option<u32>,
}

impl Thresholds {
    /// The server's thresholds with the caller's overrides.
    pub fn with(self, o: ThresholdOverrides) -> Result<Self, Error> {
        let out = Self {
            stale_days: o.stale_days.unwrap_or(self.stale_days),
            unused_days: o.unused_days.unwrap_or(self.unused_days),
            expiring_days: o.expiring_days.unwrap_or(self.expiring_days),
            spawn_rate: self.spawn_rate,
        };
        for (name, v) in
            [("stale_days", out.stale_days), ("unused_days", out.unused_days), ("expiring_days", out.expiring_days)]
        {
            if v > MAX_DAYS {
                return Err(Error::BadInput(format!("{name} must be 0 to {MAX_DAYS}")));
            }
        }
        Ok(out)
    }
}

/// What the audit trail shows of one agent's or grant's use.
#[derive(Debug, Default)]
struct Use {
    /// Used at all inside the stale window.
    used_recently: bool,
    /// Scopes used inside the unused window.
    scopes: BTreeSet<String>,
    /// Agents that acted by exchange inside the unused window.
    exchanged_by: BTreeSet<String>,
    /// The cap on events was reached: treat everything as used.
    truncated: bool,
}

/// The window starts, as event times.
struct Windows {
    stale: String,
    unused: String,
    earliest: String,
    /// The `expiring` window's length.
    expiring: Duration,
}

/// One page of a review: the findings about a page of agents (each agent's
/// own, then its grants'), and the agent the next page starts below, if
/// another follows.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewPage {
    pub findings: Vec<Finding>,
    /// How many agents this page reviewed.
    pub agents: usize,
    /// The cursor: the last agent reviewed, when more follow.
    pub next: Option<AgentId>,
}

/// What one page's batched reads brought: everything the findings of its
/// agents and their live grants need, read with one query per kind.
struct PageReads {
    owners: HashMap<UserId, User>,
    spawned: HashMap<AgentId, u64>,
    grants: HashMap<AgentId, Vec<Grant>>,
    /// Events in the windows by actor (persistent agents) and by grant.
    by_actor: HashMap<String, Vec<Event>>,
    by_grant: HashMap<String, Vec<Event>>,
    /// Each grant's first token (its `jti`): the one that came with it.
    first_jti: HashMap<String, String>,
    resources: HashMap<String, Option<Resource>>,
}

impl Mandate {
    /// `GET /v1/review`: the admin and auditors only. One page of `limit`
    /// agents (newest first, below `before`) and their grants.
    pub async fn review(
        &self,
        caller: Caller,
        overrides: ThresholdOverrides,
        before: Option<AgentId>,
        limit: u32,
    ) -> Result<ReviewPage, Error> {
        let thresholds = self.config().review.with(overrides)?;
        if let Some(u) = caller.person()
            && !self.is_auditor(u).await?
        {
            let why = "the access review is for the admin and auditors";
            self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), why).await?;
            return Err(Error::Forbidden(why.into()));
        }
        self.findings_page(thresholds, before, limit).await
    }

    /// Every finding under `t`, newest agent first (each agent's own, then
    /// its grants'), a page at a time. Holds them all: for what needs the
    /// whole list (a campaign, which is capped, and tests).
    pub async fn findings(&self, t: Thresholds) -> Result<Vec<Finding>, Error> {
        let mut out = Vec::new();
        let mut before = None;
        loop {
            let page = self.findings_page(t, before, AGENT_PAGE).await?;
            out.extend(page.findings);
            match page.next {
                Some(next) => before = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// How many findings of each kind there are under `t`, a page at a
    /// time, holding one page's findings at once (the review gauges).
    pub async fn finding_counts(&self, t: Thresholds) -> Result<BTreeMap<FindingKind, u64>, Error> {
        let mut counts: BTreeMap<FindingKind, u64> = FindingKind::ALL.iter().map(|k| (*k, 0)).collect();
        let mut before = None;
        loop {
            let page = self.findings_page(t, before, AGENT_PAGE).await?;
            for f in &page.findings {
                *counts.entry(f.kind).or_default() += 1;
            }
            match page.next {
                Some(next) => before = Some(next),
                None => return Ok(counts),
            }
        }
    }

    /// The findings about the `limit` newest agents that are not retired
    /// below `before`, and their live grants. A page costs a fixed number
    /// of store reads (ADR 0038), whatever its size: the agents, their
    /// owners, spawn counts and live grants, the events of the persistent
    /// ones and of the grants inside the window, and each grant's first
    /// token; plus one read per resource a check event names.
    pub async fn findings_page(&self, t: Thresholds, before: Option<AgentId>, limit: u32) -> Result<ReviewPage, Error> {
        let now = self.clock.now();
        let stale_since = now - Duration::days(i64::from(t.stale_days));
        let unused_since = now - Duration::days(i64::from(t.unused_days));
        let expiring_before = now + Duration::days(i64::from(t.expiring_days));
        let earliest = stale_since.min(unused_since);
        let windows = Windows {
            stale: event_time(stale_since),
            unused: event_time(unused_since),
            earliest: event_time(earliest),
            expiring: Duration::days(i64::from(t.expiring_days)),
        };
        // Newest first, through the index of agents that are not retired:
        // retired history is never read.
        // One more than the page, to know whether another follows.
        let q =
            AgentListQuery { not_retired: true, before, limit: limit.saturating_add(1), ..AgentListQuery::default() };
        let mut page: Vec<Agent> = self.store.list_agents(&q).await?.into_iter().map(|a| a.agent).collect();
        let full = page.len() > limit as usize;
        page.truncate(limit as usize);
        let next = if full { page.last().map(|a| a.id) } else { None };
        if page.is_empty() {
            return Ok(ReviewPage { findings: Vec::new(), agents: 0, next });
        }
        let floor = self.first_seq_since(&windows.earliest).await?;
        let reads = self.page_reads(&page, now, &windows, floor).await?;
        let mut out = Vec::new();
        for agent in &page {
            let owner = reads.owners.get(&agent.owner);
            review_agent(agent, owner, &t, now, &windows, &reads, &mut out);
            for g in reads.grants.get(&agent.id).into_iter().flatten() {
                review_grant(agent, g, expiring_before, &windows, &reads, &mut out);
            }
        }
        Ok(ReviewPage { findings: out, agents: page.len(), next })
    }

    /// The batched reads of one page of agents.
    async fn page_reads(
        &self,
        page: &[Agent],
        now: OffsetDateTime,
        w: &Windows,
        floor: u64,
    ) -> Result<PageReads, Error> {
        let ids: Vec<AgentId> = page.iter().map(|a| a.id).collect();
        let owner_ids: Vec<UserId> = page.iter().map(|a| a.owner).collect::<BTreeSet<_>>().into_iter().collect();
        let owners = self.store.users_by_ids(&owner_ids).await?.into_iter().map(|u| (u.id, u)).collect();
        let spawned = self.store.spawn_counts(&ids, now - Duration::days(1)).await?.into_iter().collect();
        let mut grants: HashMap<AgentId, Vec<Grant>> = HashMap::new();
        for g in self.store.live_grants_of(&ids, now).await? {
            grants.entry(g.agent).or_default().push(g);
        }
        let grant_keys: Vec<String> = grants.values().flatten().map(|g| g.id.to_string()).collect();
        // Ephemeral agents are never stale, so only persistent ones' use is read.
        let persistent: Vec<String> =
            page.iter().filter(|a| a.kind == AgentKind::Persistent).map(|a| a.id.to_string()).collect();
        let in_window = |by: AuditKey, keys: Vec<String>| AuditBatch {
            by,
            keys,
            kind: None,
            after: floor,
            since: Some(w.earliest.clone()),
            // One more than is counted, to know the cap was passed.
            per_key: MAX_EVENTS_PER_SUBJECT as u32 + 1,
        };
        let by_actor = self.review_events(in_window(AuditKey::Actor, persistent)).await?;
        let by_grant = self.review_events(in_window(AuditKey::Grant, grant_keys.clone())).await?;
        // DESIGN §12: a token counts as use only after the grant's first.
        let first = AuditBatch {
            by: AuditKey::Grant,
            keys: grant_keys,
            kind: Some(kind::TOKEN_ISSUED.into()),
            after: 0,
            since: None,
            per_key: 1,
        };
        let first_jti = self
            .review_events(first)
            .await?
            .into_iter()
            .filter_map(|(grant, events)| events.into_iter().next().and_then(|e| e.jti).map(|jti| (grant, jti)))
            .collect();
        let apis: BTreeSet<String> = by_actor
            .values()
            .chain(by_grant.values())
            .flatten()
            .filter(|e| e.kind == kind::CHECK)
            .filter_map(|e| e.resource.clone())
            .collect();
        let mut resources: HashMap<String, Option<Resource>> = HashMap::new();
        for api in apis {
            let found = self.store.resource_by_identifier(&api).await?;
            resources.insert(api, found);
        }
        Ok(PageReads { owners, spawned, grants, by_actor, by_grant, first_jti, resources })
    }

    /// The events of a batch, by key. No read for no keys.
    async fn review_events(&self, batch: AuditBatch) -> Result<HashMap<String, Vec<Event>>, Error> {
        let mut out: HashMap<String, Vec<Event>> = HashMap::new();
        if batch.keys.is_empty() {
            return Ok(out);
        }
        for e in self.store.audit_events_of(&batch).await? {
            if let Some(key) = batch.key_of(&e) {
                out.entry(key.to_owned()).or_default().push(e);
            }
        }
        Ok(out)
    }

    /// The `after` cursor from which reads see every event at or after
    /// `since`: a binary search on `seq` (event times grow with it), less a
    /// margin.
    async fn first_seq_since(&self, since: &str) -> Result<u64, Error> {
        let Some((head, _)) = self.store.audit_head().await? else { return Ok(0) };
        // The smallest `after` whose next event is in the window.
        let (mut lo, mut hi) = (0u64, head);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let q = AuditQuery { after: mid, limit: 1, ..AuditQuery::default() };
            let inside = self.store.audit_events(&q).await?.first().is_none_or(|e| e.time.as_str() >= since);
            if inside {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo.saturating_sub(SEQ_MARGIN))
    }
}

fn review_agent(
    agent: &Agent,
    owner: Option<&User>,
    t: &Thresholds,
    now: OffsetDateTime,
    w: &Windows,
    reads: &PageReads,
    out: &mut Vec<Finding>,
) {
    let subject = agent.id.to_string();
    let owner_status = owner.map(|o| o.status);
    if owner_status != Some(UserStatus::Active) {
        let status = match owner_status {
            Some(UserStatus::Disabled) => "disabled",
            _ => "missing",
        };
        out.push(Finding::new(
            FindingKind::Orphaned,
            subject.clone(),
            agent.owner,
            json!({ "owner": agent.owner, "owner_status": status }),
            Suggestion::act("reassign"),
        ));
    }
    if agent.kind == AgentKind::Ephemeral
        && let Some(expired) = agent.expires_at.filter(|e| *e <= now)
    {
        out.push(Finding::new(
            FindingKind::Sprawl,
            subject.clone(),
            agent.owner,
            json!({ "reason": "alive past its TTL", "expires_at": rfc3339(expired), "parent": agent.parent }),
            Suggestion::act("retire"),
        ));
    }
    let spawned = reads.spawned.get(&agent.id).copied().unwrap_or(0);
    if spawned > t.spawn_rate {
        out.push(Finding::new(
            FindingKind::Sprawl,
            subject.clone(),
            agent.owner,
            json!({ "reason": "spawn rate", "spawned_24h": spawned, "threshold": t.spawn_rate }),
            Suggestion::act("limit"),
        ));
    }
    // Ephemeral agents end by themselves; only persistent ones go stale.
    if agent.kind != AgentKind::Persistent {
        return;
    }
    let used = usage(reads.by_actor.get(&subject), None, w, &reads.resources);
    let created = event_time(agent.created_at);
    if created <= w.stale && !used.used_recently {
        out.push(Finding::new(
            FindingKind::Stale,
            subject.clone(),
            agent.owner,
            json!({ "created_at": rfc3339(agent.created_at), "used_since": w.stale, "uses": 0 }),
            Suggestion::act("retire"),
        ));
        return;
    }
    if let Some(ceiling) = &agent.scopes
        && created <= w.unused
    {
        push_over_broad(out, subject, agent.owner, ceiling.iter().map(|s| s.as_str().to_owned()), &used, w);
    }
}

fn review_grant(
    agent: &Agent,
    g: &Grant,
    expiring_before: OffsetDateTime,
    w: &Windows,
    reads: &PageReads,
    out: &mut Vec<Finding>,
) {
    let subject = g.id.to_string();
    if is_expiring(g, expiring_before, w.expiring) {
        out.push(Finding::new(
            FindingKind::Expiring,
            subject.clone(),
            agent.owner,
            json!({ "expires_at": rfc3339(g.expires_at), "user": g.user, "agent": g.agent, "resource": g.resource }),
            Suggestion::act("reapprove"),
        ));
    }
    let first_jti = reads.first_jti.get(&subject).map(String::as_str);
    let used = usage(reads.by_grant.get(&subject), first_jti, w, &reads.resources);
    let created = event_time(g.created_at);
    if created <= w.stale && !used.used_recently {
        out.push(Finding::new(
            FindingKind::Stale,
            subject.clone(),
            agent.owner,
            json!({
                "created_at": rfc3339(g.created_at), "used_since": w.stale, "uses": 0,
                "user": g.user, "agent": g.agent, "resource": g.resource,
            }),
            Suggestion::act("revoke"),
        ));
        return;
    }
    if created > w.unused {
        return;
    }
    push_over_broad(out, subject.clone(), agent.owner, g.scopes.iter().map(|s| s.as_str().to_owned()), &used, w);
    if let Some(may_act) = &g.may_act
        && !used.truncated
    {
        let unused: Vec<String> = may_act
            .names()
            .filter(|n| match n {
                ActorName::Agent(a) => !used.exchanged_by.contains(&a.to_string()),
                // A group is used when anyone acted by exchange.
                ActorName::Group(_) => used.exchanged_by.is_empty(),
            })
            .map(ToString::to_string)
            .collect();
        if !unused.is_empty() {
            let keep: Vec<String> = may_act.names().map(ToString::to_string).filter(|n| !unused.contains(n)).collect();
            out.push(Finding::new(
                FindingKind::UnusedDelegation,
                subject,
                agent.owner,
                json!({ "may_act": may_act.names().map(ToString::to_string).collect::<Vec<_>>(),
                        "unused": unused, "used_since": w.unused }),
                if keep.is_empty() {
                    Suggestion::act("revoke")
                } else {
                    Suggestion { action: "narrow", scopes: None, may_act: Some(keep) }
                },
            ));
        }
    }
}

/// Sums up the use in one agent's or grant's events inside the window (at
/// most [`MAX_EVENTS_PER_SUBJECT`]; past that everything counts as used):
/// tokens issued (but not `first_jti`) and allowed checks.
fn usage(
    events: Option<&Vec<Event>>,
    first_jti: Option<&str>,
    w: &Windows,
    resources: &HashMap<String, Option<Resource>>,
) -> Use {
    let mut used = Use::default();
    let events = events.map(Vec::as_slice).unwrap_or_default();
    for e in events.iter().take(MAX_EVENTS_PER_SUBJECT) {
        count_use(e, first_jti, w, resources, &mut used);
    }
    if events.len() > MAX_EVENTS_PER_SUBJECT {
        used.truncated = true;
        used.used_recently = true;
    }
    used
}

fn count_use(
    e: &Event,
    first_jti: Option<&str>,
    w: &Windows,
    resources: &HashMap<String, Option<Resource>>,
    used: &mut Use,
) {
    let allowed = e.decision.as_deref() == Some("allow");
    let scopes: Vec<String> = if e.kind == kind::TOKEN_ISSUED {
        if first_jti.is_some() && e.jti.as_deref() == first_jti {
            return;
        }
        e.scope.as_deref().unwrap_or_default().split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect()
    } else if e.kind == kind::CHECK && allowed {
        match (&e.resource, &e.action) {
            (Some(api), Some(action)) => {
                resources.get(api).and_then(Option::as_ref).map(|r| covering(&r.scopes, action)).unwrap_or_default()
            }
            _ => Vec::new(),
        }
    } else {
        return;
    };
    if e.time >= w.stale {
        used.used_recently = true;
    }
    if e.time >= w.unused {
        if e.kind == kind::TOKEN_ISSUED
            && e.parent.is_some()
            && let Some(actor) = &e.actor
        {
            used.exchanged_by.insert(actor.clone());
        }
        used.scopes.extend(scopes);
    }
}

/// Whether a live grant is `expiring` (ADR 0036): it ends by
/// `expiring_before`, and either its lifetime is at least the window's
/// length or it was reapproved before. A grant whose whole life fits in the
/// window (the default day-long grant under the 7-day window) is short by
/// design, and flagging every one of them would bury the findings that
/// matter.
fn is_expiring(g: &Grant, expiring_before: OffsetDateTime, window: Duration) -> bool {
    g.expires_at <= expiring_before && (g.reapprovals > 0 || g.expires_at - g.created_at >= window)
}

/// The scopes of a resource's `scopes` map that cover `action`.
fn covering(scopes: &BTreeMap<String, Vec<String>>, action: &str) -> Vec<String> {
    scopes
        .iter()
        .filter(
            |(scope, actions)| {
                if actions.is_empty() { scope.as_str() == action } else { actions.iter().any(|a| a == action) }
            },
        )
        .map(|(scope, _)| scope.clone())
        .collect()
}

/// An `over_broad` finding when some of `held` went unused while others
/// were used (all unused is `stale`, not this).
fn push_over_broad(
    out: &mut Vec<Finding>,
    subject: String,
    owner: UserId,
    held: impl Iterator<Item = String>,
    used: &Use,
    w: &Windows,
) {
    if used.truncated {
        return;
    }
    let held: BTreeSet<String> = held.collect();
    let narrower: Vec<String> = held.intersection(&used.scopes).cloned().collect();
    let unused: Vec<String> = held.difference(&used.scopes).cloned().collect();
    if narrower.is_empty() || unused.is_empty() {
        return;
    }
    out.push(Finding::new(
        FindingKind::OverBroad,
        subject,
        owner,
        json!({ "held": held, "used": narrower, "unused": unused, "used_since": w.unused }),
        Suggestion { action: "narrow", scopes: Some(narrower), may_act: None },
    ));
}

fn rfc3339(t: OffsetDateTime) -> String {
    event_time(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_id_depends_on_its_kind_and_subject_only() {
        let id = finding_id(FindingKind::Stale, "agt_1");
        assert_eq!(id, finding_id(FindingKind::Stale, "agt_1"));
        assert_eq!(id.len(), 4 + 24);
        assert!(id.starts_with("fnd_"));
        assert_ne!(id, finding_id(FindingKind::OverBroad, "agt_1"));
        assert_ne!(id, finding_id(FindingKind::Stale, "agt_2"));
    }

    #[test]
    fn overrides_replace_the_defaults_within_bounds() -> Result<(), Error> {
        let t = Thresholds::default().with(ThresholdOverrides { stale_days: Some(0), ..Default::default() })?;
        assert_eq!((t.stale_days, t.unused_days, t.expiring_days, t.spawn_rate), (0, 30, 7, 100));
        let too_long = ThresholdOverrides { expiring_days: Some(MAX_DAYS + 1), ..Default::default() };
        assert!(matches!(Thresholds::default().with(too_long), Err(Error::BadInput(_))));
        Ok(())
    }

    #[test]
    fn a_grant_shorter_than_the_window_is_expiring_only_once_reapproved() -> Result<(), Error> {
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::days(1_000);
        let mut g = Grant {
            id: "grt_01J00000000000000000000000".parse().map_err(|_| Error::BadInput("id".into()))?,
            user: "usr_01J00000000000000000000000".parse().map_err(|_| Error::BadInput("id".into()))?,
            agent: "agt_01J00000000000000000000000".parse().map_err(|_| Error::BadInput("id".into()))?,
            resource: "https://api.example".into(),
            scopes: mandate_model::ScopeSet::parse("read").map_err(|e| Error::BadInput(e.to_string()))?,
            purpose: None,
            approved_by: "policy".into(),
            status: mandate_model::records::GrantStatus::Active,
            created_at: t0,
            expires_at: t0 + Duration::days(1),
            revoked_at: None,
            last_used_at: None,
            may_act: None,
            authorization_details: Default::default(),
            reapproved_at: None,
            reapprovals: 0,
            lapsed_at: None,
        };
        let week = Duration::days(7);
        let before = t0 + week;
        assert!(!is_expiring(&g, before, week), "a day-long grant under a week's window");
        g.reapprovals = 1;
        assert!(is_expiring(&g, before, week), "a renewed grant is reminded of");
        g.reapprovals = 0;
        g.expires_at = t0 + Duration::days(7);
        assert!(is_expiring(&g, before, week), "a grant as long as the window");
        g.expires_at = t0 + Duration::days(8);
        assert!(!is_expiring(&g, before, week), "ends after the window");
        Ok(())
    }

    #[test]
    fn a_scope_covers_its_actions_or_its_own_name() {
        let r = BTreeMap::from([
            ("read".to_owned(), vec!["list".to_owned(), "get".to_owned()]),
            ("write".to_owned(), Vec::new()),
        ]);
        assert_eq!(covering(&r, "get"), vec!["read".to_owned()]);
        assert_eq!(covering(&r, "write"), vec!["write".to_owned()]);
        assert!(covering(&r, "delete").is_empty());
    }
}
