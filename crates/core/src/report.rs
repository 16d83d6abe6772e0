//! The inventory report and the inventory gauges (DESIGN §12, issue 18 §1
//! and §2, ADR 0035).
//!
//! A report counts, per owner, resource or scope, the live grants, tokens
//! and ephemeral agents now, their peaks over 24 hours and 7 days, and
//! their churn (created, ended) over the same windows.
//!
//! - **Live** and **churn** come from one pass over the records that can
//!   count: the live ones, and those created or ended since the wider
//!   window began (stores read them through indexes on their end times,
//!   never the retired or revoked history before the window). The store
//!   feeds each record to an [`InventoryTally`], which knows the windows
//!   and the dimensions, so the rules are written once, here.
//! - **Peaks** come from samples: housekeeping tallies the live counts
//!   every few minutes and keeps the largest per key and hour
//!   ([`Mutation::RecordInventorySamples`], an upsert with `max`, so several
//!   nodes sampling at once agree), for [`SAMPLE_RETENTION`].
//!
//! What each count means under each dimension:
//!
//! - by **owner** (the person accountable for the agent): grants given to
//!   the owner's agents, tokens issued to them, and the owner's ephemeral
//!   agents (live: not retired and not expired).
//! - by **resource** (a grant's resource, a token's audience) and by
//!   **scope** (each scope of a grant or token counts it once):
//!   `ephemeral_agents` counts the tokens held by ephemeral agents there,
//!   a subset of `tokens` (an ephemeral agent has no resource or scope of
//!   its own; what it holds there is its tokens).

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};

use crate::Error;
use crate::service::{Caller, Mandate};
use crate::store::{Change, Mutation, StoreError};

/// The short window.
pub const DAY: Duration = Duration::days(1);
/// The long window.
pub const WEEK: Duration = Duration::days(7);
/// How long samples are kept: the long window, and a day to spare.
pub const SAMPLE_RETENTION: Duration = Duration::days(8);
/// The width of a sample bucket.
pub const BUCKET: Duration = Duration::hours(1);
/// The most keys a report page holds when the caller does not say.
pub const DEFAULT_PAGE: u32 = 100;
/// The most keys a report page holds.
pub const MAX_PAGE: u32 = 1_000;

/// What a report is by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReportBy {
    Owner,
    Resource,
    Scope,
}

impl ReportBy {
    pub const ALL: [ReportBy; 3] = [ReportBy::Owner, ReportBy::Resource, ReportBy::Scope];

    pub fn as_str(self) -> &'static str {
        match self {
            ReportBy::Owner => "owner",
            ReportBy::Resource => "resource",
            ReportBy::Scope => "scope",
        }
    }
}

impl std::str::FromStr for ReportBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "owner" => Ok(ReportBy::Owner),
            "resource" => Ok(ReportBy::Resource),
            "scope" => Ok(ReportBy::Scope),
            _ => Err("by must be one of owner, resource, scope".into()),
        }
    }
}

/// Counts of one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub grants: u64,
    pub tokens: u64,
    pub ephemeral_agents: u64,
}

impl Counts {
    /// Each count the larger of the two.
    pub fn max(self, o: Counts) -> Counts {
        Counts {
            grants: self.grants.max(o.grants),
            tokens: self.tokens.max(o.tokens),
            ephemeral_agents: self.ephemeral_agents.max(o.ephemeral_agents),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// Records created and ended inside a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Churn {
    pub created: Counts,
    pub ended: Counts,
}

/// What the tally knows of one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyTally {
    pub live: Counts,
    pub churn_24h: Churn,
    pub churn_7d: Churn,
    /// Live agents of every kind (by owner only: the gauges').
    pub agents: u64,
}

/// A grant as the tally reads it.
#[derive(Debug, Clone)]
pub struct GrantFact {
    /// The owner of the agent it was given to.
    pub owner: String,
    pub resource: String,
    /// The stored scope set (JSON), parsed only when the report is by scope.
    pub scopes: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// A token as the tally reads it.
#[derive(Debug, Clone)]
pub struct TokenFact {
    /// The owner of the agent it was issued to; `None` when its client is
    /// not an agent.
    pub owner: Option<String>,
    /// Whether it was issued to an ephemeral agent.
    pub ephemeral: bool,
    pub audience: String,
    /// The stored scope set (JSON).
    pub scopes: String,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// An agent as the tally reads it.
#[derive(Debug, Clone)]
pub struct AgentFact {
    pub owner: String,
    pub ephemeral: bool,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    /// When it was retired, if it is (`retired` says so even when the time
    /// predates its recording).
    pub retired: bool,
    pub retired_at: Option<OffsetDateTime>,
}

/// Which count a record adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Grants,
    Tokens,
    EphemeralAgents,
}

impl Counts {
    fn bump(&mut self, f: Field) {
        let slot = match f {
            Field::Grants => &mut self.grants,
            Field::Tokens => &mut self.tokens,
            Field::EphemeralAgents => &mut self.ephemeral_agents,
        };
        *slot = slot.saturating_add(1);
    }
}

/// A record's life as the windows see it.
#[derive(Debug, Clone, Copy)]
struct Life {
    live: bool,
    created_at: OffsetDateTime,
    /// When it ended (revoked, expired or retired), if it has by now.
    ended_at: Option<OffsetDateTime>,
}

/// The earlier of an optional end and another optional one.
fn earliest(a: Option<OffsetDateTime>, b: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Live counts and churn per key, filled by a store from the records that
/// can count (see [`crate::store::Store::inventory_tally`]). Any superset of
/// those records gives the same tally: a record that is not live and was
/// neither created nor ended in the windows counts nowhere.
#[derive(Debug, Clone)]
pub struct InventoryTally {
    now: OffsetDateTime,
    since_24h: OffsetDateTime,
    since_7d: OffsetDateTime,
    dims: Vec<ReportBy>,
    keys: BTreeMap<ReportBy, BTreeMap<String, KeyTally>>,
}

impl InventoryTally {
    /// Live counts and churn at `now`, by each of `dims`.
    pub fn new(now: OffsetDateTime, dims: &[ReportBy]) -> Self {
        Self { now, since_24h: now - DAY, since_7d: now - WEEK, dims: dims.to_vec(), keys: BTreeMap::new() }
    }

    /// Live counts only (the samples'): no window, so the store reads only
    /// what is live.
    pub fn live_only(now: OffsetDateTime, dims: &[ReportBy]) -> Self {
        Self { now, since_24h: now, since_7d: now, dims: dims.to_vec(), keys: BTreeMap::new() }
    }

    pub fn now(&self) -> OffsetDateTime {
        self.now
    }

    /// The start of the widest window: a record that ended before it
    /// counts nowhere, so stores need not read it.
    pub fn since(&self) -> OffsetDateTime {
        self.since_7d
    }

    /// The tally of each key of `by`, in key order.
    pub fn keys(&self, by: ReportBy) -> Option<&BTreeMap<String, KeyTally>> {
        self.keys.get(&by)
    }

    /// Whether agents count (by owner only): when not, stores need not read
    /// them.
    pub fn counts_agents(&self) -> bool {
        self.wants(ReportBy::Owner)
    }

    fn wants(&self, by: ReportBy) -> bool {
        self.dims.contains(&by)
    }

    fn count(&mut self, by: ReportBy, key: &str, life: Life, field: Field) {
        let (now, s24, s7) = (self.now, self.since_24h, self.since_7d);
        let touches = life.live || life.created_at >= s7 || life.ended_at.is_some_and(|e| e >= s7 && e <= now);
        if !touches {
            return;
        }
        let t = self.keys.entry(by).or_default().entry(key.to_owned()).or_default();
        if life.live {
            t.live.bump(field);
        }
        for (since, churn) in [(s24, &mut t.churn_24h), (s7, &mut t.churn_7d)] {
            if life.created_at >= since && life.created_at <= now {
                churn.created.bump(field);
            }
            if life.ended_at.is_some_and(|e| e >= since && e <= now) {
                churn.ended.bump(field);
            }
        }
    }

    fn scopes(raw: &str) -> Result<Vec<String>, StoreError> {
        // Stored as a JSON array of scope tokens (`ScopeSet`'s form).
        serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(format!("a stored scope set: {e}")))
    }

    /// Counts a grant.
    pub fn grant(&mut self, g: &GrantFact) -> Result<(), StoreError> {
        let ended_at = Some(g.revoked_at.map_or(g.expires_at, |r| r.min(g.expires_at))).filter(|e| *e <= self.now);
        let life = Life { live: ended_at.is_none(), created_at: g.created_at, ended_at };
        if self.wants(ReportBy::Owner) {
            self.count(ReportBy::Owner, &g.owner, life, Field::Grants);
        }
        if self.wants(ReportBy::Resource) {
            self.count(ReportBy::Resource, &g.resource, life, Field::Grants);
        }
        if self.wants(ReportBy::Scope) {
            for s in Self::scopes(&g.scopes)? {
                self.count(ReportBy::Scope, &s, life, Field::Grants);
            }
        }
        Ok(())
    }

    /// Counts a token.
    pub fn token(&mut self, t: &TokenFact) -> Result<(), StoreError> {
        let ended_at = Some(t.revoked_at.map_or(t.expires_at, |r| r.min(t.expires_at))).filter(|e| *e <= self.now);
        let life = Life { live: ended_at.is_none(), created_at: t.issued_at, ended_at };
        if self.wants(ReportBy::Owner)
            && let Some(owner) = &t.owner
        {
            self.count(ReportBy::Owner, owner, life, Field::Tokens);
        }
        let mut fields = vec![Field::Tokens];
        if t.ephemeral {
            fields.push(Field::EphemeralAgents);
        }
        if self.wants(ReportBy::Resource) {
            for f in &fields {
                self.count(ReportBy::Resource, &t.audience, life, *f);
            }
        }
        if self.wants(ReportBy::Scope) {
            for s in Self::scopes(&t.scopes)? {
                for f in &fields {
                    self.count(ReportBy::Scope, &s, life, *f);
                }
            }
        }
        Ok(())
    }

    /// Counts an agent (by owner only: an agent has no resource or scope).
    pub fn agent(&mut self, a: &AgentFact) -> Result<(), StoreError> {
        if !self.wants(ReportBy::Owner) {
            return Ok(());
        }
        // A retired agent whose retirement time was never recorded (retired
        // before it was) is not live, and ended at no known time.
        let ended_at = earliest(a.retired_at, a.expires_at).filter(|e| *e <= self.now);
        let life = Life { live: ended_at.is_none() && !a.retired, created_at: a.created_at, ended_at };
        if life.live {
            let t = self.keys.entry(ReportBy::Owner).or_default().entry(a.owner.clone()).or_default();
            t.agents = t.agents.saturating_add(1);
        }
        if a.ephemeral {
            self.count(ReportBy::Owner, &a.owner, life, Field::EphemeralAgents);
        }
        Ok(())
    }
}

/// The largest live counts of one key seen in one hour (by any node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventorySample {
    pub by: ReportBy,
    pub key: String,
    pub counts: Counts,
}

/// The peaks of one key: the largest sampled counts over each window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peaks {
    pub key: String,
    pub peak_24h: Counts,
    pub peak_7d: Counts,
}

/// The start of the hour bucket holding `t`.
pub fn bucket_of(t: OffsetDateTime) -> OffsetDateTime {
    let secs = t.unix_timestamp();
    let hour = BUCKET.whole_seconds();
    OffsetDateTime::from_unix_timestamp(secs - secs.rem_euclid(hour)).unwrap_or(t)
}

/// One line of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportItem {
    pub key: String,
    pub live: Counts,
    pub peak_24h: Counts,
    pub peak_7d: Counts,
    pub churn_24h: Churn,
    pub churn_7d: Churn,
}

/// A page of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub by: ReportBy,
    pub generated_at: OffsetDateTime,
    pub items: Vec<ReportItem>,
    /// The last key of the page, when more follow.
    pub next: Option<String>,
}

/// `limit`, or the default; 400 outside 1 to [`MAX_PAGE`].
pub fn page_size(limit: Option<u32>) -> Result<u32, Error> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(Error::BadInput(format!("limit must be 1 to {MAX_PAGE}"))),
    }
}

/// One owner's series of the inventory gauges, or `other` for the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerGauge {
    /// The owner's user id, or `other`.
    pub owner: String,
    pub agents: u64,
    pub grants: u64,
    pub tokens: u64,
}

/// The `n` owners holding the most (live agents, grants and tokens
/// together; ties by id), then one `other` series with the rest. No series
/// at all when `n` is 0.
pub fn top_owners(tally: &InventoryTally, n: u32) -> Vec<OwnerGauge> {
    if n == 0 {
        return Vec::new();
    }
    let mut owners: Vec<OwnerGauge> = tally
        .keys(ReportBy::Owner)
        .into_iter()
        .flatten()
        .map(|(k, t)| OwnerGauge { owner: k.clone(), agents: t.agents, grants: t.live.grants, tokens: t.live.tokens })
        .filter(|g| g.agents + g.grants + g.tokens > 0)
        .collect();
    owners.sort_by(|a, b| {
        let size = |g: &OwnerGauge| g.agents.saturating_add(g.grants).saturating_add(g.tokens);
        size(b).cmp(&size(a)).then_with(|| a.owner.cmp(&b.owner))
    });
    let rest = owners.split_off(owners.len().min(n as usize));
    let mut other = OwnerGauge { owner: "other".into(), agents: 0, grants: 0, tokens: 0 };
    for g in rest {
        other.agents = other.agents.saturating_add(g.agents);
        other.grants = other.grants.saturating_add(g.grants);
        other.tokens = other.tokens.saturating_add(g.tokens);
    }
    owners.push(other);
    owners
}

impl Mandate {
    /// `GET /v1/inventory/report?by=&limit=&cursor=`: the admin and
    /// auditors; keys after `after`, in key order, at most `limit`.
    pub async fn inventory_report(
        &self,
        caller: Caller,
        by: ReportBy,
        after: Option<String>,
        limit: u32,
    ) -> Result<Report, Error> {
        self.inventory_reader(caller, "the inventory report").await?;
        let now = self.clock.now();
        let tally = self.store.inventory_tally(InventoryTally::new(now, &[by])).await?;
        let empty = BTreeMap::new();
        let keys = tally.keys(by).unwrap_or(&empty);
        let from = match &after {
            Some(a) => std::ops::Bound::Excluded(a.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut page: Vec<(&String, &KeyTally)> =
            keys.range((from, std::ops::Bound::Unbounded)).take(limit.saturating_add(1) as usize).collect();
        let full = page.len() > limit as usize;
        page.truncate(limit as usize);
        let peaks = match (page.first(), page.last()) {
            (Some((first, _)), Some((last, _))) => {
                self.store.inventory_peaks(by, first, last, bucket_of(now - DAY), bucket_of(now - WEEK)).await?
            }
            _ => Vec::new(),
        };
        let peaks: BTreeMap<String, Peaks> = peaks.into_iter().map(|p| (p.key.clone(), p)).collect();
        let items: Vec<ReportItem> = page
            .iter()
            .map(|(k, t)| {
                let p = peaks.get(*k);
                ReportItem {
                    key: (*k).clone(),
                    live: t.live,
                    peak_24h: p.map_or(t.live, |p| p.peak_24h.max(t.live)),
                    peak_7d: p.map_or(t.live, |p| p.peak_7d.max(t.live)),
                    churn_24h: t.churn_24h,
                    churn_7d: t.churn_7d,
                }
            })
            .collect();
        let next = if full { items.last().map(|i| i.key.clone()) } else { None };
        Ok(Report { by, generated_at: now, items, next })
    }

    /// Samples the live counts by every dimension into this hour's bucket
    /// (keeping the larger of this and any earlier sample), forgets
    /// buckets older than [`SAMPLE_RETENTION`], and answers the owner
    /// gauges (the top `metrics_top_owners`).
    pub async fn sample_inventory(&self) -> Result<Vec<OwnerGauge>, Error> {
        let now = self.clock.now();
        let tally = self.store.inventory_tally(InventoryTally::live_only(now, &ReportBy::ALL)).await?;
        let mut samples = Vec::new();
        for by in ReportBy::ALL {
            for (key, t) in tally.keys(by).into_iter().flatten() {
                if !t.live.is_zero() {
                    samples.push(InventorySample { by, key: key.clone(), counts: t.live });
                }
            }
        }
        let change = Change::new()
            .with(Mutation::RecordInventorySamples { hour: bucket_of(now), samples })
            .with(Mutation::PruneInventorySamples { before: bucket_of(now - SAMPLE_RETENTION) });
        self.store.commit(change).await?;
        Ok(top_owners(&tally, self.config.metrics_top_owners))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(30) + Duration::hours(h)
    }

    fn grant(owner: &str, created: i64, expires: i64, revoked: Option<i64>) -> GrantFact {
        GrantFact {
            owner: owner.into(),
            resource: "https://api".into(),
            scopes: r#"["read","write"]"#.into(),
            created_at: at(created),
            expires_at: at(expires),
            revoked_at: revoked.map(at),
        }
    }

    #[test]
    fn live_and_churn_follow_the_windows() -> Result<(), StoreError> {
        let mut t = InventoryTally::new(at(0), &ReportBy::ALL);
        t.grant(&grant("a", -1, 10, None))?; // live, created in both windows
        t.grant(&grant("a", -100, 10, Some(-2)))?; // revoked 2 h ago: ended in both
        t.grant(&grant("a", -100, -30, None))?; // expired 30 h ago: ended in 7 d only
        t.grant(&grant("a", -1000, -500, None))?; // ended before both windows
        let a = t.keys(ReportBy::Owner).and_then(|k| k.get("a")).copied().unwrap_or_default();
        assert_eq!(a.live.grants, 1);
        assert_eq!((a.churn_24h.created.grants, a.churn_7d.created.grants), (1, 3));
        assert_eq!((a.churn_24h.ended.grants, a.churn_7d.ended.grants), (1, 2));
        let read = t.keys(ReportBy::Scope).and_then(|k| k.get("read")).copied().unwrap_or_default();
        assert_eq!(read.live.grants, 1, "each scope counts the grant");
        Ok(())
    }

    #[test]
    fn ephemeral_tokens_count_under_resource_and_scope() -> Result<(), StoreError> {
        let mut t = InventoryTally::new(at(0), &ReportBy::ALL);
        let token = TokenFact {
            owner: Some("a".into()),
            ephemeral: true,
            audience: "https://api".into(),
            scopes: r#"["read"]"#.into(),
            issued_at: at(-1),
            expires_at: at(1),
            revoked_at: None,
        };
        t.token(&token)?;
        t.token(&TokenFact { ephemeral: false, owner: None, ..token })?;
        let r = t.keys(ReportBy::Resource).and_then(|k| k.get("https://api")).copied().unwrap_or_default();
        assert_eq!((r.live.tokens, r.live.ephemeral_agents), (2, 1));
        let o = t.keys(ReportBy::Owner).and_then(|k| k.get("a")).copied().unwrap_or_default();
        assert_eq!((o.live.tokens, o.live.ephemeral_agents), (1, 0), "a token is not an agent by owner");
        Ok(())
    }

    #[test]
    fn agents_count_by_owner_until_retired_or_expired() -> Result<(), StoreError> {
        let mut t = InventoryTally::new(at(0), &[ReportBy::Owner]);
        let agent = AgentFact {
            owner: "a".into(),
            ephemeral: true,
            created_at: at(-3),
            expires_at: Some(at(1)),
            retired: false,
            retired_at: None,
        };
        t.agent(&agent)?;
        t.agent(&AgentFact { retired: true, retired_at: Some(at(-1)), ..agent.clone() })?;
        t.agent(&AgentFact { expires_at: Some(at(-2)), ..agent.clone() })?;
        t.agent(&AgentFact { ephemeral: false, expires_at: None, ..agent })?;
        let o = t.keys(ReportBy::Owner).and_then(|k| k.get("a")).copied().unwrap_or_default();
        assert_eq!((o.live.ephemeral_agents, o.agents), (1, 2));
        assert_eq!((o.churn_24h.created.ephemeral_agents, o.churn_24h.ended.ephemeral_agents), (3, 2));
        Ok(())
    }

    #[test]
    fn the_top_owners_then_the_rest() -> Result<(), StoreError> {
        let mut t = InventoryTally::live_only(at(0), &[ReportBy::Owner]);
        for (owner, n) in [("a", 1), ("b", 3), ("c", 2)] {
            for _ in 0..n {
                t.grant(&grant(owner, -1, 10, None))?;
            }
        }
        let top = top_owners(&t, 2);
        let names: Vec<&str> = top.iter().map(|g| g.owner.as_str()).collect();
        assert_eq!(names, ["b", "c", "other"]);
        assert_eq!(top.last().map(|g| g.grants), Some(1));
        assert!(top_owners(&t, 0).is_empty());
        Ok(())
    }

    #[test]
    fn buckets_start_on_the_hour() {
        let t = at(5) + Duration::minutes(42);
        assert_eq!(bucket_of(t), at(5));
        assert!(matches!(page_size(Some(0)), Err(Error::BadInput(_))));
        assert!(matches!(page_size(None), Ok(DEFAULT_PAGE)));
    }
}
