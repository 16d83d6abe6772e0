//! Grants, and the authorization codes that create them.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{GrantQuery, Mutation, Store, StoreError};
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
