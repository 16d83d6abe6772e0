//! Access review (DESIGN §12, ADR 0033): findings about the living
//! delegation records (agents and grants), each with its evidence and a
//! suggested action, computed from the records and the audit trail.
//!
//! Cost. The review walks the agents that are not retired a page at a time
//! (an index on the live ones), and for each reads its grants (by agent),
//! the children it spawned in the last day (a count by parent), and the
//! audit events it or its grants produced inside the window (by actor and
//! by grant, starting at the first event of the window, found once by a
//! binary search on `seq`). So it costs O(live agents + their grants +
//! their events in the window) indexed reads and holds one page of agents
//! plus the findings in memory; retired agents, revoked grants and events
//! before the window are never read. Per agent or grant at most
//! [`MAX_EVENTS_PER_SUBJECT`] events are read: past that it counts as used,
//! and no narrower set is suggested.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use mandate_audit::Event;
use mandate_model::UserId;
use mandate_model::actors::ActorName;
use mandate_model::records::{Agent, AgentKind, Grant, Resource, User, UserStatus};
use serde::Serialize;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::audit::{AuditQuery, event_time, kind};
use crate::service::{Caller, Mandate};
use crate::store::{AgentListQuery, GrantQuery};
use crate::{Error, secrets};

/// Agents read per page.
const AGENT_PAGE: u32 = 500;
/// Most grants of one agent the review reads.
const MAX_GRANTS_PER_AGENT: u32 = 1_000;
/// Most audit events read about one agent or grant inside the window.
pub const MAX_EVENTS_PER_SUBJECT: usize = 5_000;
/// Events read per audit query.
const EVENT_PAGE: u32 = 1_000;
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

impl Mandate {
    /// `GET /v1/review`: the admin and auditors only.
    pub async fn review(&self, caller: Caller, overrides: ThresholdOverrides) -> Result<Vec<Finding>, Error> {
        let thresholds = self.config().review.with(overrides)?;
        if let Some(u) = caller.person()
            && !self.is_auditor(u).await?
        {
            let why = "the access review is for the admin and auditors";
            self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), why).await?;
            return Err(Error::Forbidden(why.into()));
        }
        self.findings(thresholds).await
    }

    /// Every finding under `t`, newest agent first (each agent's own, then
    /// its grants').
    pub async fn findings(&self, t: Thresholds) -> Result<Vec<Finding>, Error> {
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
        let floor = self.first_seq_since(&windows.earliest).await?;
        let mut owners: HashMap<UserId, Option<User>> = HashMap::new();
        let mut resources: HashMap<String, Option<Resource>> = HashMap::new();
        let mut out = Vec::new();
        // Newest first, a page at a time, through the index of agents that
        // are not retired: retired history is never read.
        let mut before = None;
        loop {
            let q = AgentListQuery { not_retired: true, before, limit: AGENT_PAGE, ..AgentListQuery::default() };
            let page: Vec<Agent> = self.store.list_agents(&q).await?.into_iter().map(|a| a.agent).collect();
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            for agent in &page {
                if let Entry::Vacant(slot) = owners.entry(agent.owner) {
                    slot.insert(self.store.user(agent.owner).await?);
                }
                let owner = owners.get(&agent.owner).and_then(Option::as_ref);
                self.review_agent(agent, owner, &t, now, &windows, floor, &mut resources, &mut out).await?;
                let grants = self
                    .store
                    .grants(&GrantQuery { agent: Some(agent.id), limit: MAX_GRANTS_PER_AGENT, ..GrantQuery::default() })
                    .await?;
                for g in grants.iter().filter(|g| g.is_live(now)) {
                    self.review_grant(agent, g, expiring_before, &windows, floor, &mut resources, &mut out).await?;
                }
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn review_agent(
        &self,
        agent: &Agent,
        owner: Option<&User>,
        t: &Thresholds,
        now: OffsetDateTime,
        w: &Windows,
        floor: u64,
        resources: &mut HashMap<String, Option<Resource>>,
        out: &mut Vec<Finding>,
    ) -> Result<(), Error> {
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
        let spawned = self.store.spawned_since(agent.id, now - Duration::days(1)).await?;
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
            return Ok(());
        }
        let q = AuditQuery { actor: Some(subject.clone()), ..AuditQuery::default() };
        let used = self.usage(q, None, w, floor, resources).await?;
        let created = event_time(agent.created_at);
        if created <= w.stale && !used.used_recently {
            out.push(Finding::new(
                FindingKind::Stale,
                subject.clone(),
                agent.owner,
                json!({ "created_at": rfc3339(agent.created_at), "used_since": w.stale, "uses": 0 }),
                Suggestion::act("retire"),
            ));
            return Ok(());
        }
        if let Some(ceiling) = &agent.scopes
            && created <= w.unused
        {
            push_over_broad(out, subject, agent.owner, ceiling.iter().map(|s| s.as_str().to_owned()), &used, w);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn review_grant(
        &self,
        agent: &Agent,
        g: &Grant,
        expiring_before: OffsetDateTime,
        w: &Windows,
        floor: u64,
        resources: &mut HashMap<String, Option<Resource>>,
        out: &mut Vec<Finding>,
    ) -> Result<(), Error> {
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
        // DESIGN §12: a token counts as use only after the grant's first.
        let first = AuditQuery {
            grant: Some(subject.clone()),
            kind: Some(kind::TOKEN_ISSUED.into()),
            limit: 1,
            ..AuditQuery::default()
        };
        let first_jti = self.store.audit_events(&first).await?.into_iter().next().and_then(|e| e.jti);
        let q = AuditQuery { grant: Some(subject.clone()), ..AuditQuery::default() };
        let used = self.usage(q, first_jti.as_deref(), w, floor, resources).await?;
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
            return Ok(());
        }
        if created > w.unused {
            return Ok(());
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
                let keep: Vec<String> =
                    may_act.names().map(ToString::to_string).filter(|n| !unused.contains(n)).collect();
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
        Ok(())
    }

    /// Reads the events `q` selects inside the window (at most
    /// [`MAX_EVENTS_PER_SUBJECT`]) and sums up their use: tokens issued
    /// (but not `first_jti`) and allowed checks.
    async fn usage(
        &self,
        mut q: AuditQuery,
        first_jti: Option<&str>,
        w: &Windows,
        floor: u64,
        resources: &mut HashMap<String, Option<Resource>>,
    ) -> Result<Use, Error> {
        let mut used = Use::default();
        q.since = Some(w.earliest.clone());
        q.after = floor;
        q.limit = EVENT_PAGE;
        let mut read = 0usize;
        loop {
            let events = self.store.audit_events(&q).await?;
            let full = events.len() == EVENT_PAGE as usize;
            for e in &events {
                self.count_use(e, first_jti, w, resources, &mut used).await?;
            }
            read += events.len();
            match events.last() {
                Some(last) if full && read < MAX_EVENTS_PER_SUBJECT => q.after = last.seq,
                Some(_) if full => {
                    used.truncated = true;
                    used.used_recently = true;
                    break;
                }
                _ => break,
            }
        }
        Ok(used)
    }

    async fn count_use(
        &self,
        e: &Event,
        first_jti: Option<&str>,
        w: &Windows,
        resources: &mut HashMap<String, Option<Resource>>,
        used: &mut Use,
    ) -> Result<(), Error> {
        let allowed = e.decision.as_deref() == Some("allow");
        let scopes: Vec<String> = if e.kind == kind::TOKEN_ISSUED {
            if first_jti.is_some() && e.jti.as_deref() == first_jti {
                return Ok(());
            }
            e.scope.as_deref().unwrap_or_default().split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect()
        } else if e.kind == kind::CHECK && allowed {
            match (&e.resource, &e.action) {
                (Some(api), Some(action)) => {
                    if let Entry::Vacant(slot) = resources.entry(api.clone()) {
                        slot.insert(self.store.resource_by_identifier(api).await?);
                    }
                    resources.get(api).and_then(Option::as_ref).map(|r| covering(&r.scopes, action)).unwrap_or_default()
                }
                _ => Vec::new(),
            }
        } else {
            return Ok(());
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
        Ok(())
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
