//! Review campaigns and their items (DESIGN §12, ADR 0033), and the
//! narrowings a decision applies.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{CampaignQuery, Change, Mutation, ReviewItemQuery, Store, StoreError};
use mandate_model::review::{
    Campaign, CampaignDefault, CampaignScope, CampaignStatus, Decision, FindingSnapshot, Outcome, ReviewItem,
    SuggestionSnapshot,
};
use mandate_model::{CampaignId, ReviewItemId, ScopeSet, UserId};
use time::Duration;

use super::fixtures::{one, people, t0, ulid};

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
