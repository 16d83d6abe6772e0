//! Approval requests (CIBA grants and single actions): decided once, handed
//! out once, counted while they wait, paged newest first.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{ApprovalQuery, Mutation, Store, StoreError};
use mandate_model::records::{Approval, ApprovalStatus, ApprovalSubject};
use mandate_model::{ApprovalId, UserId};
use time::Duration;

use super::fixtures::{one, people, t0, ulid, user};

pub async fn approvals_are_decided_and_used_once(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, _, g) = people(s, "ap@example.com").await?;
    let approval = |subject| Approval {
        id: ApprovalId::from_ulid(ulid()),
        agent: a.id,
        user: u.id,
        approver: u.id,
        resource: "https://api.example".into(),
        subject,
        binding_message: Some("book the trip".into()),
        status: ApprovalStatus::Pending,
        decided_by: None,
        created_at: t0(),
        expires_at: t0() + Duration::minutes(10),
        decided_at: None,
        grant: None,
        polled_at: None,
    };
    let ciba = approval(ApprovalSubject::Grant {
        scopes: g.scopes.clone(),
        requested_expiry: 600,
        may_act: None,
        authorization_details: g.authorization_details.clone(),
    });
    let action = approval(ApprovalSubject::Action {
        action: "send".into(),
        target: "mail/1".into(),
        chain: vec![a.id],
        binding: "b1".into(),
        properties: [("amount".to_owned(), "120 EUR".to_owned())].into(),
        authorization_detail: g.authorization_details.iter().next().cloned(),
    });
    one(s, Mutation::InsertApproval(ciba.clone())).await?;
    one(s, Mutation::InsertApproval(action.clone())).await?;
    ensure!(s.approval(ciba.id).await? == Some(ciba.clone()), "approval did not round-trip");
    ensure!(
        matches!(s.approval(ciba.id).await?.map(|x| x.subject),
            Some(ApprovalSubject::Grant { authorization_details, .. }) if !authorization_details.is_empty()),
        "the RFC 9396 details to approve did not round-trip"
    );
    ensure!(s.approval(action.id).await? == Some(action.clone()), "action approval did not round-trip");
    ensure!(
        matches!(one(s, Mutation::InsertApproval(ciba.clone())).await, Err(StoreError::Conflict(_))),
        "a duplicate approval"
    );
    let pending = ApprovalQuery {
        approver: Some(u.id),
        status: Some(ApprovalStatus::Pending),
        binding: None,
        before: None,
        limit: 10,
    };
    ensure!(s.approvals(&pending).await?.len() == 2);
    let bound = ApprovalQuery { binding: Some("b1".into()), limit: 10, ..ApprovalQuery::default() };
    ensure!(s.approvals(&bound).await?.into_iter().map(|x| x.id).collect::<Vec<_>>() == vec![action.id]);
    // Nothing can be handed out before a decision.
    ensure!(matches!(one(s, Mutation::ConsumeApproval { id: ciba.id, at: t0() }).await, Err(StoreError::Conflict(_))));
    let decide = |id, to| Mutation::DecideApproval { id, to, by: u.id.to_string(), grant: Some(g.id), at: t0() };
    one(s, decide(ciba.id, ApprovalStatus::Approved)).await?;
    ensure!(
        matches!(one(s, decide(ciba.id, ApprovalStatus::Denied)).await, Err(StoreError::Conflict(_))),
        "decided twice"
    );
    let decided = s.approval(ciba.id).await?;
    ensure!(
        decided.as_ref().map(|x| (x.status, x.grant, x.decided_by.clone(), x.decided_at))
            == Some((ApprovalStatus::Approved, Some(g.id), Some(u.id.to_string()), Some(t0()))),
        "the decision did not round-trip: {decided:?}"
    );
    ensure!(one(s, Mutation::PollApproval { id: ciba.id, at: t0() + Duration::seconds(3) }).await? == 1);
    ensure!(s.approval(ciba.id).await?.and_then(|x| x.polled_at) == Some(t0() + Duration::seconds(3)));
    // Once it has expired, an approved request cannot be handed out.
    let late = t0() + Duration::minutes(11);
    ensure!(matches!(one(s, Mutation::ConsumeApproval { id: ciba.id, at: late }).await, Err(StoreError::Conflict(_))));
    one(s, Mutation::ConsumeApproval { id: ciba.id, at: t0() }).await?;
    ensure!(s.approval(ciba.id).await?.map(|x| x.status) == Some(ApprovalStatus::Consumed));
    ensure!(
        matches!(one(s, Mutation::ConsumeApproval { id: ciba.id, at: t0() }).await, Err(StoreError::Conflict(_))),
        "an approval was handed out twice"
    );
    // An expired request cannot be decided.
    let expired =
        Mutation::DecideApproval { id: action.id, to: ApprovalStatus::Approved, by: "x".into(), grant: None, at: late };
    ensure!(matches!(one(s, expired).await, Err(StoreError::Conflict(_))));
    ensure!(s.approval(action.id).await?.map(|x| x.status) == Some(ApprovalStatus::Pending));
    Ok(())
}

/// Approvals pending per agent and per agent and user (CIBA requests and
/// action approvals alike) are counted (the caps of SECURITY row 45); the
/// inbox pages by id; an agent's last use is read by one grouped query;
/// deciding an action approval keeps its grant.
pub async fn pending_requests_are_counted_and_approvals_paged(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(s, "pr@example.com").await?;
    let v = user("pr2@example.com");
    one(s, Mutation::InsertUser(v.clone())).await?;
    let request = |user: UserId, minutes: i64| Approval {
        id: ApprovalId::from_ulid(ulid()),
        agent: a.id,
        user,
        approver: u.id,
        resource: "https://api.example".into(),
        subject: ApprovalSubject::Grant {
            scopes: g.scopes.clone(),
            requested_expiry: 600,
            may_act: None,
            authorization_details: g.authorization_details.clone(),
        },
        binding_message: None,
        status: ApprovalStatus::Pending,
        decided_by: None,
        created_at: t0(),
        expires_at: t0() + Duration::minutes(minutes),
        decided_at: None,
        grant: None,
        polled_at: None,
    };
    let mut ids = Vec::new();
    for (who, minutes) in [(u.id, 10), (u.id, 10), (v.id, 10), (u.id, 1)] {
        let r = request(who, minutes);
        ids.push(r.id);
        one(s, Mutation::InsertApproval(r)).await?;
    }
    let now = t0() + Duration::minutes(5);
    ensure!(s.pending_requests(a.id, None, t0()).await? == 4);
    ensure!(s.pending_requests(a.id, None, now).await? == 3, "an expired request was counted");
    ensure!(s.pending_requests(a.id, Some(u.id), now).await? == 2);
    ensure!(s.pending_requests(a.id, Some(v.id), now).await? == 1);
    ensure!(s.pending_requests(b.id, None, now).await? == 0);
    // An action approval waits for a person too and counts; a decided one
    // no longer does.
    let action = Approval {
        subject: ApprovalSubject::Action {
            action: "send".into(),
            target: "mail/1".into(),
            chain: vec![a.id],
            binding: "b9".into(),
            properties: BTreeMap::new(),
            authorization_detail: None,
        },
        grant: Some(g.id),
        ..request(u.id, 10)
    };
    one(s, Mutation::InsertApproval(action.clone())).await?;
    let first = ids.first().copied().ok_or_else(|| anyhow::anyhow!("no request"))?;
    one(
        s,
        Mutation::DecideApproval { id: first, to: ApprovalStatus::Denied, by: u.id.to_string(), grant: None, at: now },
    )
    .await?;
    ensure!(s.pending_requests(a.id, Some(u.id), now).await? == 2, "the action approval was not counted");
    ensure!(s.pending_requests(a.id, None, now).await? == 3);
    // Deciding an action approval keeps the grant it was asked under.
    one(
        s,
        Mutation::DecideApproval {
            id: action.id,
            to: ApprovalStatus::Approved,
            by: u.id.to_string(),
            grant: None,
            at: now,
        },
    )
    .await?;
    ensure!(s.approval(action.id).await?.and_then(|x| x.grant) == Some(g.id), "the grant link was erased");
    // Paging, newest first: two pages of two, then one, then none.
    let page = |before| ApprovalQuery { approver: Some(u.id), before, limit: 2, ..ApprovalQuery::default() };
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let p = s.approvals(&page(before)).await?;
        if p.is_empty() {
            break;
        }
        ensure!(p.len() <= 2);
        before = p.last().map(|x| x.id);
        seen.extend(p.into_iter().map(|x| x.id));
    }
    let mut all = ids.clone();
    all.push(action.id);
    all.sort();
    all.reverse();
    ensure!(seen == all, "paging missed or repeated: {seen:?} vs {all:?}");
    let denied = ApprovalQuery { status: Some(ApprovalStatus::Denied), limit: 10, ..ApprovalQuery::default() };
    ensure!(s.approvals(&denied).await?.into_iter().map(|x| x.id).collect::<Vec<_>>() == vec![first]);
    ensure!(
        s.approvals(&ApprovalQuery { approver: Some(v.id), limit: 10, ..ApprovalQuery::default() }).await?.is_empty()
    );
    // Last use per agent of an owner, in one read.
    ensure!(s.last_use_of_owned_agents(u.id).await?.is_empty());
    one(s, Mutation::TouchGrant { id: g.id, at: t0() + Duration::seconds(7) }).await?;
    ensure!(s.last_use_of_owned_agents(u.id).await? == vec![(a.id, t0() + Duration::seconds(7))]);
    ensure!(s.last_use_of_owned_agents(v.id).await?.is_empty());
    Ok(())
}
