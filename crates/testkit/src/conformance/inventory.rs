//! The inventory's lists (ADR 0032): newest first, paged by keyset on the
//! id, every filter, and an agent's recorded last use.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{
    AgentListQuery, GrantQuery, GrantState, LAST_USE_RESOLUTION, ListedAgent, Mutation, ResourceListQuery, Store,
    UserListQuery,
};
use mandate_model::records::{AgentKind, AgentOrigin, AgentStatus, ClientId, UserStatus};
use mandate_model::{AgentId, ResourceId};
use time::Duration;

use super::fixtures::{agent, grant, one, resource, t0, token, user};

/// Every page of a list, following its cursor until a short page.
async fn all_pages<T, Id: Copy, F, Fut>(limit: u32, id: impl Fn(&T) -> Id, mut page: F) -> Result<Vec<Vec<T>>>
where
    F: FnMut(Option<Id>, u32) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>>>,
{
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let rows = page(before, limit).await?;
        let full = rows.len() == limit as usize;
        before = rows.last().map(&id);
        pages.push(rows);
        if !full || pages.len() > 100 {
            return Ok(pages);
        }
    }
}

pub async fn users_are_listed_newest_first_page_by_page(s: &Arc<dyn Store>) -> Result<()> {
    let mut ids = Vec::new();
    let (mut disabled, mut auditor) = (None, None);
    for i in 0..5 {
        let mut u = user(&format!("list{i}@example.com"));
        if i == 1 {
            u.status = UserStatus::Disabled;
            disabled = Some(u.id);
        }
        if i == 3 {
            u.groups = vec!["auditors".into()];
            auditor = Some(u.id);
        }
        one(s, Mutation::InsertUser(u.clone())).await?;
        ids.push(u.id);
    }
    let (disabled, auditor) = (disabled.into_iter().collect::<Vec<_>>(), auditor.into_iter().collect::<Vec<_>>());
    ids.reverse();
    let pages = all_pages(
        2,
        |u: &mandate_model::records::User| u.id,
        |before, limit| {
            let s = s.clone();
            async move { Ok(s.list_users(&UserListQuery { before, limit, ..UserListQuery::default() }).await?) }
        },
    )
    .await?;
    ensure!(pages.iter().map(Vec::len).collect::<Vec<_>>() == vec![2, 2, 1], "pages of 2: {pages:?}");
    let seen: Vec<_> = pages.iter().flatten().map(|u| u.id).collect();
    ensure!(seen == ids, "newest first, each once");
    ensure!(pages.iter().flatten().all(|u| u.password_hash.is_some() || u.email.is_empty()), "whole records");
    let q = |status, group: Option<&str>| UserListQuery {
        status,
        group: group.map(str::to_owned),
        limit: 10,
        ..UserListQuery::default()
    };
    let found = |v: Vec<mandate_model::records::User>| v.into_iter().map(|u| u.id).collect::<Vec<_>>();
    ensure!(found(s.list_users(&q(Some(UserStatus::Disabled), None)).await?) == disabled, "by status");
    ensure!(found(s.list_users(&q(Some(UserStatus::Active), None)).await?).len() == 4);
    ensure!(found(s.list_users(&q(None, Some("auditors"))).await?) == auditor, "by group");
    ensure!(found(s.list_users(&q(None, Some("ops"))).await?).len() == 4, "by group, every source");
    ensure!(found(s.list_users(&q(Some(UserStatus::Disabled), Some("auditors"))).await?).is_empty(), "every filter");
    ensure!(found(s.list_users(&q(None, Some("nobody"))).await?).is_empty());
    Ok(())
}

pub async fn agents_are_listed_by_every_filter(s: &Arc<dyn Store>) -> Result<()> {
    let (u, v) = (user("owner1@example.com"), user("owner2@example.com"));
    one(s, Mutation::InsertUser(u.clone())).await?;
    one(s, Mutation::InsertUser(v.clone())).await?;
    let parent = agent(u.id, None);
    one(s, Mutation::InsertAgent(parent.clone())).await?;
    // Two ephemeral children (expiring in an hour), one persistent agent of
    // v's, suspended, registered by a metadata document.
    let kids = [agent(u.id, Some(parent.id)), agent(u.id, Some(parent.id))];
    for k in &kids {
        one(s, Mutation::InsertAgent(k.clone())).await?;
    }
    let mut other = agent(v.id, None);
    other.origin = AgentOrigin::MetadataDocument;
    other.metadata_url = Some("https://app.example/client.json".into());
    one(s, Mutation::InsertAgent(other.clone())).await?;
    one(
        s,
        Mutation::SetAgentStatus {
            id: other.id,
            from: AgentStatus::Active,
            to: AgentStatus::Suspended,
            at: t0(),
            by: Some(mandate_model::records::SuspendedBy::Admin),
        },
    )
    .await?;
    // The parent was used at t0 + 1 h, the first child at t0.
    let mut used = token(parent.id, &u.id.to_string());
    used.issued_at = t0() + Duration::hours(1);
    used.expires_at = used.issued_at + Duration::minutes(5);
    one(s, Mutation::InsertToken(used)).await?;
    one(s, Mutation::InsertToken(token(kids[0].id, &u.id.to_string()))).await?;

    let every = [other.id, kids[1].id, kids[0].id, parent.id];
    let pages = all_pages(
        3,
        |a: &ListedAgent| a.agent.id,
        |before, limit| {
            let s = s.clone();
            async move { Ok(s.list_agents(&AgentListQuery { before, limit, ..AgentListQuery::default() }).await?) }
        },
    )
    .await?;
    let seen: Vec<AgentId> = pages.iter().flatten().map(|a| a.agent.id).collect();
    ensure!(seen == every, "newest first, each once: {seen:?}");
    ensure!(pages.len() == 2, "4 agents in pages of 3");
    let listed = pages.iter().flatten().find(|a| a.agent.id == other.id).map(|a| a.agent.status);
    ensure!(listed == Some(AgentStatus::Suspended), "the record as stored");

    let ids = |v: Vec<ListedAgent>| v.into_iter().map(|a| a.agent.id).collect::<Vec<_>>();
    let q = |f: fn(&mut AgentListQuery)| {
        let mut q = AgentListQuery { limit: 10, ..AgentListQuery::default() };
        f(&mut q);
        q
    };
    let mut by_owner = q(|_| {});
    by_owner.owner = Some(v.id);
    ensure!(ids(s.list_agents(&by_owner).await?) == vec![other.id], "by owner");
    let kids_newest = vec![kids[1].id, kids[0].id];
    ensure!(ids(s.list_agents(&q(|q| q.kind = Some(AgentKind::Ephemeral))).await?) == kids_newest, "by kind");
    ensure!(ids(s.list_agents(&q(|q| q.origin = Some(AgentOrigin::Spawned))).await?) == kids_newest, "by origin");
    ensure!(
        ids(s.list_agents(&q(|q| q.origin = Some(AgentOrigin::MetadataDocument))).await?) == vec![other.id],
        "by origin"
    );
    ensure!(ids(s.list_agents(&q(|q| q.status = Some(AgentStatus::Suspended))).await?) == vec![other.id], "by status");
    let mut by_parent = q(|_| {});
    by_parent.parent = Some(parent.id);
    ensure!(ids(s.list_agents(&by_parent).await?) == kids_newest, "by parent");
    let mut expiring = q(|_| {});
    expiring.expires_before = Some(t0() + Duration::hours(2));
    ensure!(ids(s.list_agents(&expiring).await?) == kids_newest, "expiring before");
    expiring.expires_before = Some(t0());
    ensure!(ids(s.list_agents(&expiring).await?).is_empty(), "strictly before");
    let mut recent = q(|_| {});
    recent.used_after = Some(t0() + Duration::minutes(30));
    ensure!(ids(s.list_agents(&recent).await?) == vec![parent.id], "used after");
    recent.used_after = Some(t0());
    ensure!(ids(s.list_agents(&recent).await?) == vec![kids[0].id, parent.id], "used at or after");
    let mut stale = q(|_| {});
    stale.used_before = Some(t0() + Duration::minutes(30));
    ensure!(ids(s.list_agents(&stale).await?) == vec![other.id, kids[1].id, kids[0].id], "never used counts as stale");
    stale.owner = Some(u.id);
    stale.kind = Some(AgentKind::Ephemeral);
    stale.before = Some(kids[1].id);
    ensure!(ids(s.list_agents(&stale).await?) == vec![kids[0].id], "every filter, below the cursor");
    Ok(())
}

pub async fn an_agents_last_use_is_recorded_at_most_once_a_minute(s: &Arc<dyn Store>) -> Result<()> {
    let u = user("lastuse@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    let a = agent(u.id, None);
    one(s, Mutation::InsertAgent(a.clone())).await?;
    let last = |s: Arc<dyn Store>| async move {
        let listed = s.list_agents(&AgentListQuery { limit: 10, ..AgentListQuery::default() }).await?;
        anyhow::Ok(listed.into_iter().find(|x| x.agent.id == a.id).and_then(|x| x.last_used_at))
    };
    ensure!(last(s.clone()).await?.is_none(), "a new agent has no last use");
    let at = |d: Duration| {
        let mut t = token(a.id, &u.id.to_string());
        t.issued_at = t0() + d;
        t.expires_at = t.issued_at + Duration::minutes(5);
        t
    };
    ensure!(one(s, Mutation::InsertToken(at(Duration::ZERO))).await? == 1, "a token insert counts its token only");
    ensure!(last(s.clone()).await? == Some(t0()));
    one(s, Mutation::InsertToken(at(LAST_USE_RESOLUTION - Duration::seconds(1)))).await?;
    ensure!(last(s.clone()).await? == Some(t0()), "within the resolution: not written");
    let later = LAST_USE_RESOLUTION + Duration::seconds(1);
    one(s, Mutation::InsertToken(at(later))).await?;
    ensure!(last(s.clone()).await? == Some(t0() + later), "past the resolution: written");
    // A token issued to a resource server is no agent's use.
    let r = resource("https://lastuse.example");
    one(s, Mutation::InsertResource(r.clone())).await?;
    let mut theirs = at(Duration::hours(1));
    theirs.client_id = ClientId::Resource(r.id);
    theirs.chain = Vec::new();
    one(s, Mutation::InsertToken(theirs)).await?;
    ensure!(last(s.clone()).await? == Some(t0() + later));
    Ok(())
}

pub async fn resources_are_listed_newest_first_page_by_page(s: &Arc<dyn Store>) -> Result<()> {
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = resource(&format!("https://r{i}.example"));
        one(s, Mutation::InsertResource(r.clone())).await?;
        ids.push(r.id);
    }
    ids.reverse();
    let pages = all_pages(
        2,
        |r: &mandate_model::records::Resource| r.id,
        |before, limit| {
            let s = s.clone();
            async move { Ok(s.list_resources(&ResourceListQuery { before, limit }).await?) }
        },
    )
    .await?;
    let seen: Vec<ResourceId> = pages.iter().flatten().map(|r| r.id).collect();
    ensure!(seen == ids && pages.len() == 2, "newest first, each once: {seen:?}");
    Ok(())
}

pub async fn grants_are_listed_by_every_filter(s: &Arc<dyn Store>) -> Result<()> {
    let u = user("grants-inv@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    let a = agent(u.id, None);
    one(s, Mutation::InsertAgent(a.clone())).await?;
    // g1 expires at t0 + 8 h and was used at t0 + 1 h; g2 is for another
    // resource, expires at t0 + 1 h and was never used; g3 is revoked.
    let g1 = grant(u.id, a.id);
    one(s, Mutation::InsertGrant(g1.clone())).await?;
    one(s, Mutation::TouchGrant { id: g1.id, at: t0() + Duration::hours(1) }).await?;
    let mut g2 = grant(u.id, a.id);
    g2.resource = "https://other.example".into();
    g2.expires_at = t0() + Duration::hours(1);
    one(s, Mutation::InsertGrant(g2.clone())).await?;
    let g3 = grant(u.id, a.id);
    one(s, Mutation::InsertGrant(g3.clone())).await?;
    one(s, Mutation::RevokeGrant { id: g3.id, at: t0() }).await?;

    let ids = |v: Vec<mandate_model::records::Grant>| v.into_iter().map(|g| g.id).collect::<Vec<_>>();
    let base = GrantQuery { limit: 10, ..GrantQuery::default() };
    ensure!(ids(s.grants(&base).await?) == vec![g3.id, g2.id, g1.id], "newest first");
    let page2 = GrantQuery { before: Some(g3.id), limit: 1, ..base.clone() };
    ensure!(ids(s.grants(&page2).await?) == vec![g2.id], "below the cursor, at most the limit");
    let by_resource = GrantQuery { resource: Some("https://other.example".into()), ..base.clone() };
    ensure!(ids(s.grants(&by_resource).await?) == vec![g2.id], "by resource");
    let at = t0() + Duration::hours(2);
    let status = |st| GrantQuery { status: Some((st, at)), ..base.clone() };
    ensure!(ids(s.grants(&status(GrantState::Active)).await?) == vec![g1.id], "active at the time");
    ensure!(ids(s.grants(&status(GrantState::Expired)).await?) == vec![g2.id], "expired at the time");
    ensure!(ids(s.grants(&status(GrantState::Revoked)).await?) == vec![g3.id], "revoked");
    let expiring = GrantQuery { expires_before: Some(t0() + Duration::hours(2)), ..base.clone() };
    ensure!(ids(s.grants(&expiring).await?) == vec![g2.id], "expiring before");
    let unused = GrantQuery { used_before: Some(t0() + Duration::minutes(30)), ..base.clone() };
    ensure!(ids(s.grants(&unused).await?) == vec![g3.id, g2.id], "never used, or used before");
    let both =
        GrantQuery { used_before: Some(t0() + Duration::hours(2)), status: Some((GrantState::Active, at)), ..base };
    ensure!(ids(s.grants(&both).await?) == vec![g1.id], "every filter");
    Ok(())
}

pub async fn an_agents_activity_counts_what_is_live(s: &Arc<dyn Store>) -> Result<()> {
    let u = user("activity@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    let a = agent(u.id, None);
    one(s, Mutation::InsertAgent(a.clone())).await?;
    ensure!(s.agent_activity(AgentId::from_ulid(super::fixtures::ulid()), t0()).await?.is_none(), "no such agent");
    let none = s.agent_activity(a.id, t0()).await?;
    ensure!(
        none == Some(mandate_core::store::AgentActivity { live_grants: 0, live_tokens: 0, last_used_at: None }),
        "{none:?}"
    );
    // Two grants (one revoked), three tokens (one revoked, one expired at
    // the time asked).
    let (g1, g2) = (grant(u.id, a.id), grant(u.id, a.id));
    one(s, Mutation::InsertGrant(g1)).await?;
    one(s, Mutation::InsertGrant(g2.clone())).await?;
    one(s, Mutation::RevokeGrant { id: g2.id, at: t0() }).await?;
    let live = token(a.id, &u.id.to_string());
    let revoked = token(a.id, &u.id.to_string());
    let mut short = token(a.id, &u.id.to_string());
    short.expires_at = t0() + Duration::seconds(30);
    for t in [&live, &revoked, &short] {
        one(s, Mutation::InsertToken(t.clone())).await?;
    }
    one(s, Mutation::RevokeToken { jti: revoked.jti, at: t0() }).await?;
    let got = s.agent_activity(a.id, t0() + Duration::minutes(1)).await?;
    ensure!(
        got == Some(mandate_core::store::AgentActivity { live_grants: 1, live_tokens: 1, last_used_at: Some(t0()) }),
        "{got:?}"
    );
    Ok(())
}

/// The inventory report's tally (ADR 0035): what is live at `now`, and what
/// was created or ended in the last day and week, by owner, resource and
/// scope; what ended before the week counts nowhere.
pub async fn the_tally_counts_what_is_live_and_what_ended_in_its_windows(s: &Arc<dyn Store>) -> Result<()> {
    use mandate_core::report::{InventoryTally, KeyTally, ReportBy};
    let u = user("tally@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    let p = agent(u.id, None);
    one(s, Mutation::InsertAgent(p.clone())).await?;
    // A live ephemeral child, one retired 30 minutes in, one retired 9 days ago.
    let e1 = agent(u.id, Some(p.id));
    one(s, Mutation::InsertAgent(e1.clone())).await?;
    let e2 = agent(u.id, Some(p.id));
    one(s, Mutation::InsertAgent(e2.clone())).await?;
    let retire =
        |id, at| Mutation::SetAgentStatus { id, from: AgentStatus::Active, to: AgentStatus::Retired, at, by: None };
    one(s, retire(e2.id, t0() + Duration::minutes(30))).await?;
    let mut e3 = agent(u.id, Some(p.id));
    e3.created_at = t0() - Duration::days(10);
    e3.expires_at = Some(t0() - Duration::days(9));
    one(s, Mutation::InsertAgent(e3.clone())).await?;
    one(s, retire(e3.id, t0() - Duration::days(9))).await?;
    // Grants: live, revoked 10 minutes in, ended 9 days ago.
    let g1 = grant(u.id, p.id);
    one(s, Mutation::InsertGrant(g1.clone())).await?;
    let g2 = grant(u.id, p.id);
    one(s, Mutation::InsertGrant(g2.clone())).await?;
    one(s, Mutation::RevokeGrant { id: g2.id, at: t0() + Duration::minutes(10) }).await?;
    let mut g3 = grant(u.id, p.id);
    g3.created_at = t0() - Duration::days(10);
    g3.expires_at = t0() - Duration::days(9);
    one(s, Mutation::InsertGrant(g3)).await?;
    // Tokens: to the persistent agent and to the live child, and one revoked.
    let mut t1 = token(p.id, &u.id.to_string());
    t1.expires_at = t0() + Duration::hours(2);
    let mut t2 = token(e1.id, &u.id.to_string());
    t2.expires_at = t0() + Duration::hours(2);
    let t3 = token(p.id, &u.id.to_string());
    for t in [&t1, &t2, &t3] {
        one(s, Mutation::InsertToken(t.clone())).await?;
    }
    one(s, Mutation::RevokeToken { jti: t3.jti, at: t0() + Duration::seconds(30) }).await?;

    let now = t0() + Duration::minutes(40);
    let tally = s.inventory_tally(InventoryTally::new(now, &ReportBy::ALL)).await?;
    let of = |by, key: &str| tally.keys(by).and_then(|k| k.get(key)).copied().unwrap_or_default();
    let owner: KeyTally = of(ReportBy::Owner, &u.id.to_string());
    let live = owner.live;
    ensure!(
        (live.grants, live.tokens, live.ephemeral_agents, owner.agents) == (1, 2, 1, 2),
        "live by owner: {owner:?}"
    );
    let (day, week) = (owner.churn_24h, owner.churn_7d);
    ensure!(
        (day.created.grants, day.ended.grants, week.ended.grants) == (2, 1, 1),
        "grants created and ended (not the one ended 9 days ago): {owner:?}"
    );
    ensure!((day.created.tokens, day.ended.tokens) == (3, 1), "tokens created and revoked: {owner:?}");
    ensure!(
        (day.created.ephemeral_agents, day.ended.ephemeral_agents, week.ended.ephemeral_agents) == (2, 1, 1),
        "ephemeral agents created and retired (retirement time recorded): {owner:?}"
    );
    let api = of(ReportBy::Resource, "https://api.example");
    ensure!(
        (api.live.grants, api.live.tokens, api.live.ephemeral_agents) == (1, 2, 1),
        "by resource, ephemeral agents count their tokens: {api:?}"
    );
    let read = of(ReportBy::Scope, "read");
    ensure!((read.live.grants, read.live.tokens) == (1, 2), "by scope: {read:?}");
    ensure!(of(ReportBy::Scope, "mail").live.tokens == 0, "tokens have only read");
    // Live only: the same live counts, no churn.
    let live_only = s.inventory_tally(InventoryTally::live_only(now, &[ReportBy::Owner])).await?;
    let o = live_only.keys(ReportBy::Owner).and_then(|k| k.get(&u.id.to_string())).copied().unwrap_or_default();
    ensure!(o.live == owner.live && o.agents == 2, "live only: {o:?}");
    ensure!(live_only.keys(ReportBy::Resource).is_none(), "only the dimensions asked for");
    Ok(())
}

/// The peaks' samples (ADR 0035): per key and hour the largest count any
/// sample gave, read over two windows and a range of keys; old hours pruned.
pub async fn samples_keep_the_largest_count_per_hour_and_are_pruned(s: &Arc<dyn Store>) -> Result<()> {
    use mandate_core::report::{Counts, InventorySample, ReportBy};
    let c = |grants, tokens| Counts { grants, tokens, ephemeral_agents: 0 };
    let sample = |key: &str, counts| InventorySample { by: ReportBy::Owner, key: key.into(), counts };
    let record = |hour, samples| Mutation::RecordInventorySamples { hour, samples };
    let h0 = t0();
    one(s, record(h0, vec![sample("a", c(3, 0)), sample("b", c(1, 1))])).await?;
    one(s, record(h0, vec![sample("a", c(1, 5))])).await?;
    one(s, record(h0 - Duration::days(2), vec![sample("a", c(9, 0))])).await?;
    one(s, record(h0 - Duration::days(10), vec![sample("a", c(50, 0))])).await?;
    let resource = InventorySample { by: ReportBy::Resource, key: "a".into(), counts: c(70, 70) };
    one(s, record(h0, vec![resource])).await?;
    let peaks = s.inventory_peaks(ReportBy::Owner, "a", "a", h0 - Duration::days(1), h0 - Duration::days(7)).await?;
    ensure!(peaks.len() == 1, "one key in the range: {peaks:?}");
    let a = peaks.first().cloned().ok_or_else(|| anyhow::anyhow!("no peaks"))?;
    ensure!(a.peak_24h == c(3, 5), "each count's largest in the last day: {a:?}");
    ensure!(a.peak_7d == c(9, 5), "and in the week (not the sample of 10 days ago): {a:?}");
    let both = s.inventory_peaks(ReportBy::Owner, "a", "b", h0 - Duration::days(1), h0 - Duration::days(7)).await?;
    ensure!(both.iter().map(|p| p.key.as_str()).collect::<Vec<_>>() == ["a", "b"], "{both:?}");
    let pruned = one(s, Mutation::PruneInventorySamples { before: h0 - Duration::days(8) }).await?;
    ensure!(pruned == 1, "the sample of 10 days ago: {pruned}");
    let all = s.inventory_peaks(ReportBy::Owner, "a", "a", h0 - Duration::days(1), h0 - Duration::days(30)).await?;
    ensure!(all.first().map(|p| p.peak_7d) == Some(c(9, 5)), "pruned: {all:?}");
    Ok(())
}
