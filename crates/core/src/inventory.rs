//! The inventory (DESIGN §12, ADR 0032): people, agents, resources and
//! grants, listed page by page for the admin and auditors.
//!
//! Every list is newest first and paged by keyset on the id (ids are
//! ULIDs, so they sort by creation to the millisecond): a page asks for the
//! records below the last id of the previous one. Nothing listed moves, so
//! each record that existed when the listing began is seen exactly once; a
//! record created meanwhile sorts above the cursor (unless made in the same
//! millisecond as the cursor's record) and does not show. The edge turns
//! the last id into an opaque cursor.

use std::collections::BTreeMap;

use mandate_model::records::{Agent, AgentStatus, Grant, Resource, User};
use mandate_model::{AgentId, GrantId, ResourceId, UserId};
use mandate_policy::{Principal, Target};

use crate::Error;
use crate::audit::{AuditQuery, event_time, kind};
use crate::service::{Caller, Mandate};
use crate::store::{AgentActivity, AgentListQuery, GrantQuery, ListedAgent, ResourceListQuery, UserListQuery};

/// How many records a page holds when the caller does not say.
pub const DEFAULT_PAGE: u32 = 100;
/// The most records a page holds.
pub const MAX_PAGE: u32 = 1_000;

/// The most agents an agent's inventory view asks policy about: the
/// newest active agents, then its own children, each at most this many.
pub const MAX_DELEGATION_CANDIDATES: u32 = 200;
/// The most `token.issued` events an agent's inventory view reads to find
/// whom it delegated to.
pub const MAX_DELEGATION_EVENTS: u32 = 10_000;
/// The window of delegations the inventory view shows by default, in days.
pub const DEFAULT_DAYS: u32 = 30;
/// The widest window, in days.
pub const MAX_DAYS: u32 = 366;

/// `GET /v1/agents/{id}/inventory`: one agent as an operator reviews it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInventory {
    pub agent: Agent,
    pub activity: AgentActivity,
    /// The candidates policy lets it delegate to (`mandate:delegate`),
    /// newest first.
    pub may_delegate_to: Vec<AgentId>,
    /// How many candidates were asked about.
    pub candidates: usize,
    /// Whom it delegated to (token exchanges it was the last actor of the
    /// subject token for) in the window, most recent first.
    pub delegated_to: Vec<Delegation>,
    /// The window, in days.
    pub days: u32,
    /// How many `token.issued` events were read.
    pub events_read: u64,
    /// Whether every event of the window was read (false once
    /// [`MAX_DELEGATION_EVENTS`] is reached).
    pub complete: bool,
}

/// One delegation edge seen in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    pub agent: AgentId,
    pub count: u64,
    /// The event time of the latest one.
    pub last: String,
}

/// `days`, or the default; 400 outside 1 to [`MAX_DAYS`].
pub fn window_days(days: Option<u32>) -> Result<u32, Error> {
    match days {
        None => Ok(DEFAULT_DAYS),
        Some(n) if (1..=MAX_DAYS).contains(&n) => Ok(n),
        Some(_) => Err(Error::BadInput(format!("days must be 1 to {MAX_DAYS}"))),
    }
}

/// The agents `agent` handed a token to: for each exchange event (one with
/// a `parent`), the chain member right after `agent`.
fn delegations_in(agent: AgentId, events: &[mandate_audit::Event], into: &mut BTreeMap<AgentId, (u64, String)>) {
    let me = agent.to_string();
    for e in events.iter().filter(|e| e.parent.is_some()) {
        let next = e.chain.iter().skip_while(|c| **c != me).nth(1);
        if let Some(to) = next.and_then(|n| n.parse::<AgentId>().ok()) {
            let entry = into.entry(to).or_insert((0, String::new()));
            entry.0 += 1;
            if e.time > entry.1 {
                entry.1 = e.time.clone();
            }
        }
    }
}

/// One page of a list: its records and, when more may follow, the id the
/// next page starts below.
#[derive(Debug, Clone, PartialEq)]
pub struct Paged<T, Id> {
    pub items: Vec<T>,
    pub next: Option<Id>,
}

/// `limit`, or the default; 400 outside 1 to [`MAX_PAGE`].
pub fn page_size(limit: Option<u32>) -> Result<u32, Error> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(Error::BadInput(format!("limit must be 1 to {MAX_PAGE}"))),
    }
}

/// Cuts `rows` (asked for with one more than `limit`) to a page: the extra
/// row only says that another page follows.
pub(crate) fn paged<T, Id>(mut rows: Vec<T>, limit: u32, id: impl Fn(&T) -> Id) -> Paged<T, Id> {
    let full = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if full { rows.last().map(id) } else { None };
    Paged { items: rows, next }
}

impl Mandate {
    /// The admin, or an active auditor; anyone else is refused (and the
    /// refusal audited).
    pub(crate) async fn inventory_reader(&self, caller: Caller, what: &str) -> Result<(), Error> {
        match caller {
            Caller::Admin => Ok(()),
            Caller::ConsoleAdmin(u) if self.is_console_admin(u).await? => Ok(()),
            Caller::User(u) | Caller::ConsoleAdmin(u) if self.is_auditor(u).await? => Ok(()),
            Caller::User(_) | Caller::ConsoleAdmin(_) => {
                let why = format!("only the admin and auditors may list {what}");
                self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), &why).await?;
                Err(Error::Forbidden(why))
            }
        }
    }

    /// `GET /v1/users`.
    pub async fn list_users(&self, caller: Caller, mut q: UserListQuery) -> Result<Paged<User, UserId>, Error> {
        self.inventory_reader(caller, "people").await?;
        let limit = q.limit;
        q.limit = limit.saturating_add(1);
        Ok(paged(self.store.list_users(&q).await?, limit, |u| u.id))
    }

    /// `GET /v1/agents`.
    pub async fn list_agents(
        &self,
        caller: Caller,
        mut q: AgentListQuery,
    ) -> Result<Paged<ListedAgent, AgentId>, Error> {
        self.inventory_reader(caller, "agents").await?;
        let limit = q.limit;
        q.limit = limit.saturating_add(1);
        Ok(paged(self.store.list_agents(&q).await?, limit, |a| a.agent.id))
    }

    /// `GET /v1/resources`.
    pub async fn list_resources(
        &self,
        caller: Caller,
        mut q: ResourceListQuery,
    ) -> Result<Paged<Resource, ResourceId>, Error> {
        self.inventory_reader(caller, "resources").await?;
        let limit = q.limit;
        q.limit = limit.saturating_add(1);
        Ok(paged(self.store.list_resources(&q).await?, limit, |r| r.id))
    }

    /// `GET /v1/grants`: the admin and auditors see every grant; anyone
    /// else the grants they gave and those given to agents they own, with
    /// the same filters.
    pub async fn list_grants(&self, caller: Caller, mut q: GrantQuery) -> Result<Paged<Grant, GrantId>, Error> {
        q.user_or_owner = match caller {
            Caller::Admin => None,
            Caller::ConsoleAdmin(u) if self.is_console_admin(u).await? => None,
            Caller::User(u) | Caller::ConsoleAdmin(u) if self.is_auditor(u).await? => None,
            Caller::User(u) | Caller::ConsoleAdmin(u) => Some(u),
        };
        let limit = q.limit;
        q.limit = limit.saturating_add(1);
        Ok(paged(self.store.grants(&q).await?, limit, |g| g.id))
    }

    /// `GET /v1/agents/{id}/inventory?days=`: the agent, what it holds,
    /// whom policy lets it delegate to (among at most
    /// [`MAX_DELEGATION_CANDIDATES`] newest active agents and as many of
    /// its children, asked without a person in the context) and whom it
    /// delegated to in the last `days` (from at most
    /// [`MAX_DELEGATION_EVENTS`] events).
    pub async fn agent_inventory(&self, caller: Caller, id: AgentId, days: u32) -> Result<AgentInventory, Error> {
        self.inventory_reader(caller, "agents").await?;
        let now = self.clock.now();
        let agent = self.store.agent(id).await?.ok_or_else(|| Error::NotFound(format!("agent {id}")))?;
        let activity =
            self.store.agent_activity(id, now).await?.ok_or_else(|| Error::NotFound(format!("agent {id}")))?;
        // Candidates: the newest active agents, then its own children.
        let newest = AgentListQuery {
            status: Some(AgentStatus::Active),
            limit: MAX_DELEGATION_CANDIDATES,
            ..AgentListQuery::default()
        };
        let mut candidates: Vec<Agent> = self.store.list_agents(&newest).await?.into_iter().map(|a| a.agent).collect();
        let children = self.store.agent_children(id).await?;
        candidates.extend(children.into_iter().take(MAX_DELEGATION_CANDIDATES as usize));
        let mut seen = std::collections::BTreeSet::new();
        candidates.retain(|c| c.id != id && seen.insert(c.id));
        let engine = self.fresh_engine().await?;
        let mut may_delegate_to = Vec::new();
        for c in &candidates {
            let related = self.related(&[&agent, c], &[]).await?;
            let facts = self.facts(None, &[&agent, c], false);
            if engine
                .decide_with(Principal::Agent(&agent), "mandate:delegate", Target::Agent(c), &related, &facts)
                .allowed
            {
                may_delegate_to.push(c.id);
            }
        }
        // Delegations: token exchanges in the window.
        let since = event_time(now - time::Duration::days(i64::from(days)));
        let mut q = AuditQuery {
            kind: Some(kind::TOKEN_ISSUED.into()),
            since: Some(since),
            limit: crate::audit::MAX_QUERY_LIMIT,
            ..AuditQuery::default()
        };
        let mut edges = BTreeMap::new();
        let (mut read, mut complete) = (0u64, false);
        while read < u64::from(MAX_DELEGATION_EVENTS) {
            let page = self.store.audit_events(&q).await?;
            read += page.len() as u64;
            delegations_in(id, &page, &mut edges);
            match page.last() {
                Some(last) if page.len() == q.limit as usize => q.after = last.seq,
                _ => {
                    complete = true;
                    break;
                }
            }
        }
        let mut delegated_to: Vec<Delegation> =
            edges.into_iter().map(|(agent, (count, last))| Delegation { agent, count, last }).collect();
        delegated_to.sort_by(|a, b| b.last.cmp(&a.last).then(a.agent.cmp(&b.agent)));
        Ok(AgentInventory {
            agent,
            activity,
            may_delegate_to,
            candidates: candidates.len(),
            delegated_to,
            days,
            events_read: read,
            complete,
        })
    }

    /// The grants `me` gave or that were given to agents `me` owns, newest
    /// first, at most `limit` (the `/grants` page: an auditor sees their
    /// own there too).
    pub async fn own_grants(&self, me: UserId, limit: u32) -> Result<Vec<Grant>, Error> {
        let q = GrantQuery { user_or_owner: Some(me), limit: limit.min(MAX_PAGE), ..GrantQuery::default() };
        Ok(self.store.grants(&q).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_says_whether_another_follows() {
        let p = paged(vec![5, 4, 3], 2, |n| *n);
        assert_eq!(p, Paged { items: vec![5, 4], next: Some(4) });
        let p = paged(vec![5, 4], 2, |n| *n);
        assert_eq!(p, Paged { items: vec![5, 4], next: None }, "a page that ends the list has no cursor");
        let p: Paged<u32, u32> = paged(vec![], 2, |n| *n);
        assert_eq!(p.next, None);
    }

    #[test]
    fn delegations_are_the_next_hop_of_exchanges() {
        let a: AgentId = AgentId::from_ulid(ulid::Ulid::from_parts(1, 1));
        let (b, c) =
            (AgentId::from_ulid(ulid::Ulid::from_parts(2, 2)), AgentId::from_ulid(ulid::Ulid::from_parts(3, 3)));
        let hop = |chain: Vec<AgentId>, time: &str, exchanged: bool| {
            let mut e = mandate_audit::Event::new(kind::TOKEN_ISSUED, time);
            e.chain = chain.iter().map(ToString::to_string).collect();
            e.parent = exchanged.then(|| "tok_x".to_owned());
            e
        };
        let events = vec![
            hop(vec![a, b], "2026-01-01T00:00:00.000000Z", true),
            hop(vec![a, b, c], "2026-01-02T00:00:00.000000Z", true),
            hop(vec![a], "2026-01-03T00:00:00.000000Z", false),
            hop(vec![c, a], "2026-01-04T00:00:00.000000Z", true),
            hop(vec![a, c], "2026-01-05T00:00:00.000000Z", false),
        ];
        let mut edges = BTreeMap::new();
        delegations_in(a, &events, &mut edges);
        assert_eq!(edges, BTreeMap::from([(b, (2, "2026-01-02T00:00:00.000000Z".to_owned()))]));
    }

    #[test]
    fn windows_are_bounded() {
        assert!(matches!(window_days(None), Ok(DEFAULT_DAYS)));
        assert!(matches!(window_days(Some(0)), Err(Error::BadInput(_))));
        assert!(matches!(window_days(Some(MAX_DAYS + 1)), Err(Error::BadInput(_))));
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert!(matches!(page_size(None), Ok(DEFAULT_PAGE)));
        assert!(matches!(page_size(Some(1)), Ok(1)));
        assert!(matches!(page_size(Some(MAX_PAGE)), Ok(MAX_PAGE)));
        assert!(matches!(page_size(Some(0)), Err(Error::BadInput(_))));
        assert!(matches!(page_size(Some(MAX_PAGE + 1)), Err(Error::BadInput(_))));
    }
}
