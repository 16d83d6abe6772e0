//! Grants, and the authorization codes that create them.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{GrantQuery, LapsedQuery, Mutation, Store, StoreError};
use mandate_model::records::GrantStatus;
use time::Duration;

use super::fixtures::{auth_code, grant, one, people, t0, user};

pub async fn grants_revoke_once_and_list_by_person(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(s, "g@example.com").await?;
    let other = user("g2@example.com");
    one(s, Mutation::InsertUser(other.clone())).await?;
    ensure!(s.grant(g.id).await? == Some(g.clone()), "grant did not round-trip");
    ensure!(
        !g.authorization_details.is_empty()
            && s.grant(g.id).await?.map(|x| x.authorization_details) == Some(g.authorization_details.clone()),
        "the grant's RFC 9396 details did not round-trip"
    );
    ensure!(
        matches!(one(s, Mutation::InsertGrant(g.clone())).await, Err(StoreError::Conflict(_))),
        "a duplicate grant"
    );
    ensure!(one(s, Mutation::TouchGrant { id: g.id, at: t0() + Duration::seconds(5) }).await? == 1);
    ensure!(s.grant(g.id).await?.and_then(|x| x.last_used_at) == Some(t0() + Duration::seconds(5)));
    // A grant the other user gave to one of u's agents: u sees it as the
    // agent's owner, the other user as its giver.
    let mut given = grant(other.id, b.id);
    // Who may act next (ADR 0024) round-trips, groups and order included.
    let may_act = format!("group:ops {a} group:dev.team", a = a.id);
    given.may_act = Some(mandate_model::actors::MayAct::parse(&may_act)?);
    one(s, Mutation::InsertGrant(given.clone())).await?;
    ensure!(s.grant(given.id).await? == Some(given.clone()), "a grant's may_act did not round-trip");
    let q = |user, agent, user_or_owner| GrantQuery { user, agent, user_or_owner, limit: 10, ..GrantQuery::default() };
    let ids = |v: Vec<mandate_model::records::Grant>| v.into_iter().map(|x| x.id).collect::<Vec<_>>();
    ensure!(ids(s.grants(&q(Some(u.id), None, None)).await?) == vec![g.id]);
    ensure!(ids(s.grants(&q(None, Some(a.id), None)).await?) == vec![g.id]);
    let mut both = vec![g.id, given.id];
    both.sort();
    both.reverse();
    ensure!(ids(s.grants(&q(None, None, Some(u.id))).await?) == both, "the owner sees grants to their agents");
    ensure!(ids(s.grants(&q(None, None, Some(other.id))).await?) == vec![given.id], "the giver sees theirs");
    ensure!(ids(s.grants(&q(Some(other.id), Some(a.id), None)).await?).is_empty(), "every filter must match");
    ensure!(
        ids(s.grants(&GrantQuery { limit: 1, ..q(None, None, Some(u.id)) }).await?) == vec![given.id],
        "newest first, at most the limit"
    );
    ensure!(one(s, Mutation::RevokeGrant { id: g.id, at: t0() }).await? == 1);
    ensure!(one(s, Mutation::RevokeGrant { id: g.id, at: t0() }).await? == 0, "revoked twice");
    ensure!(s.grant(g.id).await?.map(|x| (x.status, x.revoked_at)) == Some((GrantStatus::Revoked, Some(t0()))));
    let g2 = grant(u.id, a.id);
    one(s, Mutation::InsertGrant(g2.clone())).await?;
    ensure!(one(s, Mutation::RevokeGrantsOfAgent { agent: a.id, at: t0() }).await? == 1);
    let g3 = grant(u.id, a.id);
    one(s, Mutation::InsertGrant(g3.clone())).await?;
    ensure!(one(s, Mutation::RevokeGrantsOfUser { user: u.id, at: t0() }).await? == 1);
    ensure!(s.grant(g3.id).await?.map(|x| x.status) == Some(GrantStatus::Revoked));
    ensure!(s.grant(given.id).await?.map(|x| x.status) == Some(GrantStatus::Active), "another user's grant");
    Ok(())
}

pub async fn an_authorization_code_is_used_once(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, _, g) = people(s, "code@example.com").await?;
    let c = auth_code("code-hash", &u, &a, &g);
    one(s, Mutation::InsertAuthCode(c.clone())).await?;
    ensure!(s.auth_code("code-hash").await? == Some(c.clone()), "code did not round-trip");
    ensure!(s.auth_code("other").await?.is_none());
    ensure!(
        matches!(one(s, Mutation::InsertAuthCode(c)).await, Err(StoreError::Conflict(_))),
        "a duplicate code was accepted"
    );
    ensure!(one(s, Mutation::UseAuthCode { hash: "code-hash".into(), at: t0() }).await? == 1);
    ensure!(s.auth_code("code-hash").await?.and_then(|x| x.used_at) == Some(t0()));
    let again = one(s, Mutation::UseAuthCode { hash: "code-hash".into(), at: t0() + Duration::seconds(1) }).await;
    ensure!(matches!(again, Err(StoreError::Conflict(_))), "a code was used twice: {again:?}");
    ensure!(s.auth_code("code-hash").await?.and_then(|x| x.used_at) == Some(t0()), "the first use was overwritten");
    let unknown = one(s, Mutation::UseAuthCode { hash: "nope".into(), at: t0() }).await;
    ensure!(matches!(unknown, Err(StoreError::Conflict(_))), "an unknown code was used");
    Ok(())
}

/// A reapproval moves a live grant's expiry forward once (ADR 0036): only
/// from the expiry it was read with, never for a revoked or lapsed grant.
pub async fn a_reapproval_extends_a_live_grant_once(s: &Arc<dyn Store>) -> Result<()> {
    let (_, _, _, g) = people(s, "renew@example.com").await?;
    let at = t0() + Duration::hours(7);
    let to = at + Duration::hours(24);
    let extend = |from, to, purpose: Option<&str>| Mutation::ExtendGrant {
        id: g.id,
        from,
        to,
        at,
        purpose: purpose.map(str::to_owned),
    };
    ensure!(one(s, extend(g.expires_at, to, None)).await? == 1);
    let renewed = s.grant(g.id).await?.ok_or_else(|| anyhow::anyhow!("the grant is gone"))?;
    ensure!(
        (renewed.expires_at, renewed.reapproved_at, renewed.reapprovals, renewed.purpose.as_deref())
            == (to, Some(at), 1, g.purpose.as_deref()),
        "extended: {renewed:?}"
    );
    ensure!(renewed.id == g.id && renewed.scopes == g.scopes && renewed.created_at == g.created_at);
    // A second renewal from the expiry read before the first loses.
    let stale = one(s, extend(g.expires_at, to + Duration::hours(1), None)).await;
    ensure!(matches!(stale, Err(StoreError::Conflict(_))), "a renewal from a stale expiry: {stale:?}");
    ensure!(one(s, extend(to, to + Duration::hours(1), Some("renewed"))).await? == 1);
    let twice = s.grant(g.id).await?.ok_or_else(|| anyhow::anyhow!("the grant is gone"))?;
    ensure!((twice.reapprovals, twice.purpose.as_deref()) == (2, Some("renewed")), "{twice:?}");
    // A lapsed grant is not renewed: its expiry is not after `at`.
    let (_, _, _, old) = people(s, "lapsed-renew@example.com").await?;
    let late = Mutation::ExtendGrant { id: old.id, from: old.expires_at, to, at: old.expires_at, purpose: None };
    ensure!(matches!(one(s, late).await, Err(StoreError::Conflict(_))), "a lapsed grant was renewed");
    ensure!(one(s, Mutation::RevokeGrant { id: old.id, at: t0() }).await? == 1);
    let revoked = Mutation::ExtendGrant { id: old.id, from: old.expires_at, to, at: t0(), purpose: None };
    ensure!(matches!(one(s, revoked).await, Err(StoreError::Conflict(_))), "a revoked grant was renewed");
    ensure!(s.grant(old.id).await?.map(|x| (x.expires_at, x.reapprovals)) == Some((old.expires_at, 0)));
    Ok(())
}

/// Housekeeping's lapse report (ADR 0036): the grants due are exactly the
/// active, expired, unreported ones, earliest expiry first; each is stamped
/// once; the stamped ones list newest report first, page by page.
pub async fn lapses_are_reported_once_and_listed(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, _, first) = people(s, "lapse@example.com").await?;
    let mut later = grant(u.id, a.id);
    later.expires_at = first.expires_at + Duration::hours(1);
    let mut revoked = grant(u.id, a.id);
    revoked.expires_at = first.expires_at - Duration::hours(1);
    let mut live = grant(u.id, a.id);
    live.expires_at = first.expires_at + Duration::days(30);
    for g in [&later, &revoked, &live] {
        one(s, Mutation::InsertGrant(g.clone())).await?;
    }
    one(s, Mutation::RevokeGrant { id: revoked.id, at: t0() }).await?;
    let now = later.expires_at + Duration::minutes(1);
    let ids = |v: Vec<mandate_model::records::Grant>| v.into_iter().map(|x| x.id).collect::<Vec<_>>();
    ensure!(s.lapse_due(first.expires_at - Duration::seconds(1), 10).await?.is_empty(), "nothing expired yet");
    ensure!(ids(s.lapse_due(now, 10).await?) == vec![first.id, later.id], "due: earliest expiry first");
    ensure!(ids(s.lapse_due(now, 1).await?) == vec![first.id], "at most the limit");
    let early = one(s, Mutation::MarkGrantLapsed { id: live.id, at: now }).await;
    ensure!(matches!(early, Err(StoreError::Conflict(_))), "an unexpired grant was reported: {early:?}");
    let gone = one(s, Mutation::MarkGrantLapsed { id: revoked.id, at: now }).await;
    ensure!(matches!(gone, Err(StoreError::Conflict(_))), "a revoked grant was reported: {gone:?}");
    ensure!(one(s, Mutation::MarkGrantLapsed { id: first.id, at: now }).await? == 1);
    let again = one(s, Mutation::MarkGrantLapsed { id: first.id, at: now + Duration::minutes(1) }).await;
    ensure!(matches!(again, Err(StoreError::Conflict(_))), "a lapse reported twice: {again:?}");
    ensure!(s.grant(first.id).await?.and_then(|x| x.lapsed_at) == Some(now), "the first report stays");
    ensure!(ids(s.lapse_due(now, 10).await?) == vec![later.id], "a reported grant is no longer due");
    let next = now + Duration::minutes(5);
    ensure!(one(s, Mutation::MarkGrantLapsed { id: later.id, at: next }).await? == 1);
    ensure!(s.lapse_due(next, 10).await?.is_empty());
    let q = |since, before, limit| LapsedQuery { since, before, limit };
    ensure!(ids(s.lapsed_grants(&q(None, None, 10)).await?) == vec![later.id, first.id], "newest report first");
    ensure!(ids(s.lapsed_grants(&q(Some(next), None, 10)).await?) == vec![later.id], "since");
    let page = s.lapsed_grants(&q(None, None, 1)).await?;
    let cursor = page.last().and_then(|g| g.lapsed_at.map(|at| (at, g.id)));
    ensure!(ids(page) == vec![later.id]);
    ensure!(ids(s.lapsed_grants(&q(None, cursor, 10)).await?) == vec![first.id], "the next page");
    // Two grants reported at the same instant page by id.
    let (u2, a2, _, _) = people(s, "lapse2@example.com").await?;
    let mut pair = [grant(u2.id, a2.id), grant(u2.id, a2.id)];
    pair.sort_by_key(|g| g.id);
    for g in &pair {
        one(s, Mutation::InsertGrant(g.clone())).await?;
        one(s, Mutation::MarkGrantLapsed { id: g.id, at: next + Duration::hours(1) }).await?;
    }
    let top = s.lapsed_grants(&q(None, None, 1)).await?;
    let cursor = top.last().and_then(|g| g.lapsed_at.map(|at| (at, g.id)));
    ensure!(ids(top) == vec![pair[1].id], "ties: the larger id first");
    ensure!(ids(s.lapsed_grants(&q(None, cursor, 1)).await?) == vec![pair[0].id], "then the smaller");
    Ok(())
}
