//! Approval requests (CIBA grants and single actions): decided once, handed
//! out once, counted while they wait, paged newest first.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{ApprovalQuery, Change, Mutation, Store, StoreError};
use mandate_model::records::{Agent, Approval, ApprovalStatus, ApprovalSubject, Grant, User};
use mandate_model::{ApprovalId, UserId};
use time::Duration;

use super::fixtures::{one, pending_grant_approval, people, t0, ulid, user};

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
        group: None,
        required: 1,
        approved_by: Vec::new(),
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
        context: [("amount".to_owned(), serde_json::json!(120)), ("urgent".to_owned(), serde_json::json!(true))].into(),
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
    let pending =
        ApprovalQuery { approver: Some(u.id), status: Some(ApprovalStatus::Pending), limit: 10, ..Default::default() };
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
        group: None,
        required: 1,
        approved_by: Vec::new(),
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
            context: BTreeMap::new(),
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

/// A group approval (`@approval("group:<name>")`, DESIGN §13) of `u`'s
/// request by `a`, needing `required` members of `group`.
fn group_approval(u: &User, a: &Agent, g: &Grant, group: &str, required: u32) -> Approval {
    Approval { group: Some(group.into()), required, ..pending_grant_approval(u, a, g) }
}

/// `N` members of a group, stored.
pub(crate) async fn members<const N: usize>(s: &Arc<dyn Store>, groups: &[&str]) -> Result<[UserId; N]> {
    let mut out = Vec::new();
    for i in 0..N {
        let mut m = user(&format!("member{i}-{}@example.com", ulid()));
        m.groups = groups.iter().map(|g| (*g).to_owned()).collect();
        one(s, Mutation::InsertUser(m.clone())).await?;
        out.push(m.id);
    }
    out.try_into().map_err(|_| anyhow::anyhow!("not {N} members"))
}

pub async fn group_approvals_count_distinct_members_and_list_to_them(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, _, g) = people(s, "group@example.com").await?;
    let ms: [UserId; 3] = members(s, &["finance"]).await?;
    let ap = group_approval(&u, &a, &g, "finance", 2);
    one(s, Mutation::InsertApproval(ap.clone())).await?;
    ensure!(s.approval(ap.id).await? == Some(ap.clone()), "a group approval did not round-trip");
    // The group's people: by their own groups, and by a SCIM group's name.
    let [scim_only] = members(s, &["sales"]).await?;
    let g = mandate_model::records::ScimGroup {
        id: mandate_model::GroupId::from_ulid(ulid()),
        display_name: "finance".into(),
        external_id: None,
        members: Vec::new(),
        revision: 1,
        created_at: t0(),
        updated_at: t0(),
    };
    let mut change = Change::new();
    change.push(Mutation::InsertScimGroup(g.clone()));
    change.push(Mutation::AddScimGroupMembers { group: g.id, users: vec![scim_only, ms[0]] });
    s.commit(change).await?;
    let mut expected = ms.to_vec();
    expected.push(scim_only);
    expected.sort();
    let found: Vec<UserId> = s.group_members("finance").await?.into_iter().map(|x| x.id).collect();
    ensure!(found == expected, "the members of finance: {found:?}, not {expected:?}");
    ensure!(s.group_members("nobody").await?.is_empty());
    // Listed to the group's members, not by the user it records.
    let of = |who: UserId, groups: &[&str]| ApprovalQuery {
        approver: Some(who),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        limit: 10,
        ..ApprovalQuery::default()
    };
    ensure!(s.approvals(&of(ms[0], &["finance"])).await?.into_iter().map(|x| x.id).collect::<Vec<_>>() == vec![ap.id]);
    ensure!(s.approvals(&of(ms[0], &["sales", "eng"])).await?.is_empty(), "listed to another group");
    ensure!(s.approvals(&of(u.id, &[])).await?.is_empty(), "listed to the user it is for");
    let count = |seen: Vec<UserId>, by| Mutation::CountApproval { id: ap.id, seen, by, at: t0() };
    one(s, count(vec![], ms[0])).await?;
    // A count from a stale read (what a concurrent decision saw) is refused.
    ensure!(matches!(one(s, count(vec![], ms[1])).await, Err(StoreError::Conflict(_))), "a stale count counted");
    ensure!(s.approval(ap.id).await?.map(|x| x.approved_by) == Some(vec![ms[0]]));
    ensure!(s.approval(ap.id).await?.map(|x| x.status) == Some(ApprovalStatus::Pending));
    let nobody = UserId::from_ulid(ulid());
    ensure!(one(s, count(vec![ms[0]], nobody)).await.is_err(), "counted a missing user");
    let mut change = Change::new();
    change.push(count(vec![ms[0]], ms[1]));
    change.push(Mutation::DecideApproval {
        id: ap.id,
        to: ApprovalStatus::Approved,
        by: ms[1].to_string(),
        grant: None,
        at: t0(),
    });
    s.commit(change).await?;
    let done = s.approval(ap.id).await?;
    ensure!(
        done.as_ref().map(|x| (x.status, x.approved_by.clone()))
            == Some((ApprovalStatus::Approved, vec![ms[0], ms[1]]))
    );
    ensure!(
        matches!(one(s, count(vec![ms[0], ms[1]], ms[2])).await, Err(StoreError::Conflict(_))),
        "counted on a decided approval"
    );
    Ok(())
}

/// Every member of the group decides at once: exactly one decision
/// changes the approval, whatever the interleaving, and the others fail
/// with `Conflict` (the API's 409).
pub async fn concurrent_group_decisions_make_one_transition(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, _, g) = people(s, "race@example.com").await?;
    let ms: [UserId; 12] = members(s, &["finance"]).await?;
    for required in [1u32, 2] {
        let ap = group_approval(&u, &a, &g, "finance", required);
        one(s, Mutation::InsertApproval(ap.clone())).await?;
        let mut seen = Vec::new();
        if required == 2 {
            one(s, Mutation::CountApproval { id: ap.id, seen: vec![], by: ms[0], at: t0() }).await?;
            seen.push(ms[0]);
        }
        let mut tasks = Vec::new();
        for (i, m) in ms.iter().copied().enumerate().skip(1) {
            let (s, seen) = (s.clone(), seen.clone());
            tasks.push(tokio::spawn(async move {
                let mut change = Change::new();
                // Every third member denies; the others approve and complete.
                let to = if i % 3 == 0 { ApprovalStatus::Denied } else { ApprovalStatus::Approved };
                if to == ApprovalStatus::Approved {
                    change.push(Mutation::CountApproval { id: ap.id, seen, by: m, at: t0() });
                }
                change.push(Mutation::DecideApproval { id: ap.id, to, by: m.to_string(), grant: None, at: t0() });
                s.commit(change).await.map(|_| (m, to))
            }));
        }
        let mut won = Vec::new();
        for t in tasks {
            match t.await? {
                Ok(w) => won.push(w),
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let &[(by, to)] = won.as_slice() else {
            anyhow::bail!("{} concurrent decisions of one approval succeeded", won.len());
        };
        let after = s.approval(ap.id).await?.ok_or_else(|| anyhow::anyhow!("the approval is gone"))?;
        ensure!(after.status == to && after.decided_by == Some(by.to_string()), "the winner's decision is not stored");
        let mut expected = seen.clone();
        if to == ApprovalStatus::Approved {
            expected.push(by);
        }
        ensure!(after.approved_by == expected, "approvals of losing decisions were counted: {:?}", after.approved_by);
    }
    Ok(())
}
