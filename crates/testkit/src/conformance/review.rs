//! Review campaigns and their items (DESIGN §12, ADR 0033), and the
//! narrowings a decision applies.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::audit::{AuditBatch, AuditKey};
use mandate_core::store::{CampaignQuery, Change, Mutation, ReviewItemQuery, Store, StoreError};
use mandate_model::records::GrantStatus;
use mandate_model::review::{
    Campaign, CampaignDefault, CampaignScope, CampaignStatus, Decision, FindingSnapshot, Outcome, ReviewItem,
    SuggestionSnapshot,
};
use mandate_model::{CampaignId, ReviewItemId, ScopeSet, UserId};
use time::Duration;

use super::fixtures::{agent, all_events, append, event, grant, one, people, t0, ulid, user};

fn campaign(scope: CampaignScope, days: i64) -> Campaign {
    Campaign {
        id: CampaignId::from_ulid(ulid()),
        scope,
        deadline: t0() + Duration::days(days),
        default: CampaignDefault::Revoke,
        created_by: "admin".into(),
        created_at: t0(),
        status: CampaignStatus::Open,
        closed_at: None,
    }
}

fn item(campaign: CampaignId, assignee: UserId, subject: &str) -> ReviewItem {
    ReviewItem {
        id: ReviewItemId::from_ulid(ulid()),
        campaign,
        finding: FindingSnapshot {
            id: "fnd_0123456789abcdef01234567".into(),
            kind: "over_broad".into(),
            subject: subject.into(),
            evidence: serde_json::json!({ "held": ["read", "write"], "used": ["read"] }),
            suggestion: SuggestionSnapshot {
                action: "narrow".into(),
                scopes: Some(vec!["read".into()]),
                may_act: None,
            },
        },
        assignee,
        decision: None,
        decided_by: None,
        decided_at: None,
        outcome: None,
    }
}

fn decide(id: ReviewItemId, decision: Decision, by: &str) -> Mutation {
    Mutation::DecideReviewItem {
        id,
        decision,
        by: by.into(),
        at: t0() + Duration::hours(1),
        outcome: Outcome { applied: "kept".into(), ..Outcome::default() },
    }
}

pub async fn campaigns_and_items_round_trip_and_are_decided_once(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, _, g) = people(s, "review@example.com").await?;
    let c = campaign(CampaignScope { owner: Some(u.id), resource: Some("https://api.example".into()) }, 7);
    let i1 = item(c.id, u.id, &g.id.to_string());
    let i2 = item(c.id, u.id, &a.id.to_string());
    // A campaign and its items land together, or not at all.
    let dup = Change::new()
        .with(Mutation::InsertCampaign(c.clone()))
        .with(Mutation::InsertReviewItem(i1.clone()))
        .with(Mutation::InsertReviewItem(i1.clone()));
    ensure!(matches!(s.commit(dup).await, Err(StoreError::Conflict(_))), "a duplicate item");
    ensure!(s.campaign(c.id).await?.is_none(), "a campaign without its items was kept");
    s.commit(
        Change::new()
            .with(Mutation::InsertCampaign(c.clone()))
            .with(Mutation::InsertReviewItem(i1.clone()))
            .with(Mutation::InsertReviewItem(i2.clone())),
    )
    .await?;
    ensure!(s.campaign(c.id).await? == Some(c.clone()), "the campaign did not round-trip");
    ensure!(s.review_item(i1.id).await? == Some(i1.clone()), "the item did not round-trip");
    let p = s.campaign_progress(c.id).await?;
    ensure!((p.items, p.decided) == (2, 0), "progress {p:?}");
    // An item of a missing campaign is refused.
    let stray = item(CampaignId::from_ulid(ulid()), u.id, "agt_x");
    ensure!(matches!(one(s, Mutation::InsertReviewItem(stray)).await, Err(StoreError::Conflict(_))), "a stray item");

    ensure!(one(s, decide(i1.id, Decision::Keep, &u.id.to_string())).await? == 1);
    let again = one(s, decide(i1.id, Decision::Revoke, "admin")).await;
    ensure!(matches!(again, Err(StoreError::Conflict(_))), "decided twice: {again:?}");
    let stored = s.review_item(i1.id).await?.ok_or_else(|| anyhow::anyhow!("item gone"))?;
    ensure!(
        stored.decision == Some(Decision::Keep)
            && stored.decided_by.as_deref() == Some(u.id.to_string().as_str())
            && stored.decided_at == Some(t0() + Duration::hours(1))
            && stored.outcome.as_ref().map(|o| o.applied.as_str()) == Some("kept"),
        "the first decision was not kept: {stored:?}"
    );
    let p = s.campaign_progress(c.id).await?;
    ensure!((p.items, p.decided) == (2, 1), "progress {p:?}");

    // Lists: by campaign, by assignee, undecided only, paged in id order.
    let all = |q: ReviewItemQuery| async move { s.review_items(&q).await };
    let q = ReviewItemQuery { campaign: Some(c.id), limit: 10, ..ReviewItemQuery::default() };
    let (lo, hi) = (i1.id.min(i2.id), i1.id.max(i2.id));
    let ids = vec![lo, hi];
    ensure!(all(q.clone()).await?.iter().map(|i| i.id).collect::<Vec<_>>() == ids, "a campaign's items in id order");
    let first = all(ReviewItemQuery { limit: 1, ..q.clone() }).await?;
    ensure!(first.iter().map(|i| i.id).collect::<Vec<_>>() == vec![lo], "at most the limit");
    let rest = all(ReviewItemQuery { after: Some(lo), ..q.clone() }).await?;
    ensure!(rest.iter().map(|i| i.id).collect::<Vec<_>>() == vec![hi], "after the cursor");
    let open = ReviewItemQuery { assignee: Some(u.id), undecided: true, open: true, limit: 10, ..Default::default() };
    ensure!(all(open.clone()).await?.iter().map(|i| i.id).collect::<Vec<_>>() == vec![i2.id], "undecided only");
    let nobody = ReviewItemQuery { assignee: Some(UserId::from_ulid(ulid())), limit: 10, ..Default::default() };
    ensure!(all(nobody).await?.is_empty(), "another assignee's items");

    // Due campaigns, closing once, and no decision after the close.
    let later = campaign(CampaignScope::default(), 30);
    one(s, Mutation::InsertCampaign(later.clone())).await?;
    let due = s.campaigns_due(t0() + Duration::days(8), 10).await?;
    ensure!(due.iter().map(|c| c.id).collect::<Vec<_>>() == vec![c.id], "due: {due:?}");
    ensure!(s.campaigns_due(t0() + Duration::days(1), 10).await?.is_empty(), "none due before the deadline");
    let close = |at| Mutation::CloseCampaign { id: c.id, at };
    ensure!(one(s, close(t0() + Duration::days(8))).await? == 1);
    ensure!(matches!(one(s, close(t0() + Duration::days(9))).await, Err(StoreError::Conflict(_))), "closed twice");
    let closed = s.campaign(c.id).await?.ok_or_else(|| anyhow::anyhow!("campaign gone"))?;
    ensure!(closed.status == CampaignStatus::Closed && closed.closed_at == Some(t0() + Duration::days(8)));
    let late = one(s, decide(i2.id, Decision::Revoke, "deadline")).await;
    ensure!(matches!(late, Err(StoreError::Conflict(_))), "decided after the close: {late:?}");
    ensure!(all(open).await?.is_empty(), "items of a closed campaign are not open");
    ensure!(s.campaigns_due(t0() + Duration::days(40), 10).await?.iter().all(|x| x.id == later.id));

    // Campaign lists: newest first, by status, paged.
    let cq = |status, before| CampaignQuery { status, before, limit: 10 };
    let (older, newer) = (c.id.min(later.id), c.id.max(later.id));
    let newest = vec![newer, older];
    ensure!(s.campaigns(&cq(None, None)).await?.iter().map(|x| x.id).collect::<Vec<_>>() == newest);
    ensure!(
        s.campaigns(&cq(Some(CampaignStatus::Open), None)).await?.iter().map(|x| x.id).collect::<Vec<_>>()
            == vec![later.id]
    );
    ensure!(
        s.campaigns(&cq(None, Some(newer))).await?.iter().map(|x| x.id).collect::<Vec<_>>() == vec![older],
        "below the cursor"
    );
    Ok(())
}

pub async fn grants_and_agents_are_narrowed_while_live(s: &Arc<dyn Store>) -> Result<()> {
    let (_, a, _, g) = people(s, "narrow@example.com").await?;
    let read = ScopeSet::parse("read")?;
    ensure!(one(s, Mutation::NarrowGrantScopes { id: g.id, scopes: read.clone() }).await? == 1);
    ensure!(s.grant(g.id).await?.map(|x| x.scopes) == Some(read.clone()), "the grant was not narrowed");
    ensure!(one(s, Mutation::NarrowAgentScopes { id: a.id, scopes: read.clone() }).await? == 1);
    ensure!(s.agent(a.id).await?.and_then(|x| x.scopes) == Some(read.clone()), "the agent was not narrowed");
    one(s, Mutation::RevokeGrant { id: g.id, at: t0() }).await?;
    let revoked = one(s, Mutation::NarrowGrantScopes { id: g.id, scopes: read.clone() }).await;
    ensure!(matches!(revoked, Err(StoreError::Conflict(_))), "a revoked grant was narrowed: {revoked:?}");
    let retire = Mutation::SetAgentStatus {
        id: a.id,
        from: a.status,
        to: mandate_model::records::AgentStatus::Retired,
        at: t0(),
        by: None,
    };
    one(s, retire).await?;
    let retired = one(s, Mutation::NarrowAgentScopes { id: a.id, scopes: read }).await;
    ensure!(matches!(retired, Err(StoreError::Conflict(_))), "a retired agent was narrowed: {retired:?}");
    Ok(())
}

/// The access review's reads for a page of agents (ADR 0038): one query
/// each for their spawn counts, their live grants, their owners and the
/// events of many actors or grants, each key's first `per_key`.
pub async fn the_reviews_page_reads_answer_for_many_agents_at_once(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(s, "batch@example.com").await?;
    let u2 = user("batch2@example.com");
    one(s, Mutation::InsertUser(u2.clone())).await?;
    let a2 = agent(u2.id, None);
    one(s, Mutation::InsertAgent(a2.clone())).await?;
    let mut revoked = grant(u2.id, a2.id);
    revoked.status = GrantStatus::Revoked;
    revoked.revoked_at = Some(t0());
    one(s, Mutation::InsertGrant(revoked.clone())).await?;
    let mut g3 = grant(u2.id, a2.id);
    g3.expires_at = t0() + Duration::days(30);
    one(s, Mutation::InsertGrant(g3.clone())).await?;

    // Spawn counts: `b` was spawned by `a` at t0; `since` is inclusive.
    let counts = s.spawn_counts(&[a.id, a2.id, b.id], t0()).await?;
    ensure!(counts == vec![(a.id, 1)], "spawn counts since t0: {counts:?}");
    let later = s.spawn_counts(&[a.id, a2.id], t0() + Duration::seconds(1)).await?;
    ensure!(later.is_empty(), "no child after t0: {later:?}");
    ensure!(s.spawn_counts(&[], t0()).await?.is_empty(), "no parents, no counts");

    // Live grants: active and unexpired, newest first; revoked ones never.
    let ids = |gs: Vec<mandate_model::records::Grant>| gs.into_iter().map(|g| g.id).collect::<Vec<_>>();
    let live = ids(s.live_grants_of(&[a.id, a2.id], t0()).await?);
    ensure!(live == vec![g3.id, g.id], "live grants at t0: {live:?}");
    let live = ids(s.live_grants_of(&[a.id, a2.id], g.expires_at).await?);
    ensure!(live == vec![g3.id], "a grant is not live at its expiry: {live:?}");
    ensure!(s.live_grants_of(&[b.id], t0()).await?.is_empty(), "an agent with no grants");

    // Owners by id; a missing one is left out.
    let missing = UserId::from_ulid(ulid());
    let users = s.users_by_ids(&[u2.id, missing, u.id]).await?;
    ensure!(users.iter().map(|u| u.id).collect::<Vec<_>>() == vec![u.id, u2.id], "users by id: {users:?}");
    ensure!(users.first().is_some_and(|x| x.email == u.email && x.groups == u.groups), "a user round-trips");

    // Events: three tokens by `a` under `g`, a check by `a2` under `g3`,
    // one by someone else; the last of `a`'s is later.
    let (sa, sa2) = (a.id.to_string(), a2.id.to_string());
    let mut change = Change::new();
    for (i, (kind, actor, grant_id)) in [
        ("token.issued", sa.as_str(), g.id.to_string()),
        ("check.decided", sa2.as_str(), g3.id.to_string()),
        ("token.issued", sa.as_str(), g.id.to_string()),
        ("token.issued", "agt_someone_else", g3.id.to_string()),
        ("token.issued", sa.as_str(), g.id.to_string()),
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = event(kind, actor);
        e.grant_id = Some(grant_id);
        e.jti = Some(format!("tok_{i}"));
        if i == 4 {
            e.time = "2026-11-24T10:00:00.000000Z".into();
        }
        change.push(append(e));
    }
    s.commit(change).await?;
    let trail = all_events(s).await?;
    // Each event as its place among the five (1 to 5): stores need not
    // number them without gaps.
    let ours: Vec<u64> = trail.iter().rev().take(5).rev().map(|e| e.seq).collect();
    let place = |seq: u64| ours.iter().position(|s| *s == seq).map_or(0, |i| i + 1);
    let seqs = |es: &[mandate_audit::Event]| es.iter().map(|e| place(e.seq)).collect::<Vec<_>>();
    let first_seq = ours.first().copied().unwrap_or_default();
    let batch = |by, keys: Vec<String>| AuditBatch { by, keys, kind: None, after: 0, since: None, per_key: 10 };

    // By actor: key order, then seq; each key's first `per_key`.
    let both = if sa < sa2 { vec![1, 3, 5, 2] } else { vec![2, 1, 3, 5] };
    let got = s.audit_events_of(&batch(AuditKey::Actor, vec![sa.clone(), sa2.clone()])).await?;
    ensure!(seqs(&got) == both, "by actor: {:?}", seqs(&got));
    let got = s.audit_events_of(&AuditBatch { per_key: 2, ..batch(AuditKey::Actor, vec![sa.clone()]) }).await?;
    ensure!(seqs(&got) == vec![1, 3], "the first two: {:?}", seqs(&got));
    // The cursor, the time and the type.
    let got = s.audit_events_of(&AuditBatch { after: first_seq, ..batch(AuditKey::Actor, vec![sa.clone()]) }).await?;
    ensure!(seqs(&got) == vec![3, 5], "after the cursor: {:?}", seqs(&got));
    let since = Some("2026-11-24T00:00:00.000000Z".to_owned());
    let got = s.audit_events_of(&AuditBatch { since, ..batch(AuditKey::Actor, vec![sa.clone()]) }).await?;
    ensure!(seqs(&got) == vec![5], "since a time: {:?}", seqs(&got));
    let tokens = Some("token.issued".to_owned());
    let got = s
        .audit_events_of(&AuditBatch { kind: tokens.clone(), ..batch(AuditKey::Actor, vec![sa.clone(), sa2.clone()]) })
        .await?;
    ensure!(seqs(&got) == vec![1, 3, 5], "of a type: {:?}", seqs(&got));
    // By grant: each grant's first token.
    let (sg, sg3) = (g.id.to_string(), g3.id.to_string());
    let first = AuditBatch { kind: tokens, per_key: 1, ..batch(AuditKey::Grant, vec![sg.clone(), sg3.clone()]) };
    let got = s.audit_events_of(&first).await?;
    let firsts = if sg < sg3 { vec![1, 4] } else { vec![4, 1] };
    ensure!(seqs(&got) == firsts, "each grant's first token: {:?}", seqs(&got));
    ensure!(s.audit_events_of(&batch(AuditKey::Grant, Vec::new())).await?.is_empty(), "no keys, no events");
    Ok(())
}
