//! Access tokens and their revocation trees, refresh families and
//! status-list indexes.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{Mutation, Store, StoreError};
use mandate_model::records::{AgentStatus, TokenRecord};
use mandate_model::{GrantId, Jti};
use time::Duration;

use super::fixtures::{agent, child_of, live, one, people, refresh, t0, token, ulid, user};

pub async fn tokens_round_trip_and_revoke(s: &Arc<dyn Store>) -> Result<()> {
    let u = user("t@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    let a = agent(u.id, None);
    one(s, Mutation::InsertAgent(a.clone())).await?;
    let t1 = token(a.id, &a.id.to_string());
    let t2 = token(a.id, &u.id.to_string());
    let t3 = token(a.id, &u.id.to_string());
    for t in [&t1, &t2, &t3] {
        one(s, Mutation::InsertToken(t.clone())).await?;
    }
    ensure!(s.token(t1.jti).await? == Some(t1.clone()), "token did not round-trip");
    ensure!(
        matches!(one(s, Mutation::InsertToken(t1.clone())).await, Err(StoreError::Conflict(_))),
        "a duplicate jti was accepted"
    );
    ensure!(one(s, Mutation::RevokeToken { jti: t1.jti, at: t0() }).await? == 1);
    ensure!(
        one(s, Mutation::RevokeToken { jti: t1.jti, at: t0() + Duration::seconds(9) }).await? == 0,
        "revoked twice"
    );
    ensure!(s.token(t1.jti).await?.and_then(|t| t.revoked_at) == Some(t0()), "first revocation time lost");
    ensure!(one(s, Mutation::RevokeTokensOfSubject { subject: u.id.to_string(), at: t0() }).await? == 2);
    // By agent: only live roots count; a token that has expired is left.
    let t4 = token(a.id, &a.id.to_string());
    let mut old = token(a.id, &a.id.to_string());
    old.expires_at = t0() - Duration::seconds(1);
    one(s, Mutation::InsertToken(t4.clone())).await?;
    one(s, Mutation::InsertToken(old.clone())).await?;
    ensure!(
        one(s, Mutation::RevokeTokensOfAgent { agent: a.id, at: t0() }).await? == 1,
        "only the live token is revoked"
    );
    ensure!(s.token(old.jti).await?.is_some_and(|t| t.revoked_at.is_none()), "an expired token was revoked");
    ensure!(s.token(Jti::from_ulid(ulid())).await?.is_none());
    ensure!(one(s, Mutation::RevokeToken { jti: Jti::from_ulid(ulid()), at: t0() }).await? == 0);
    Ok(())
}

pub async fn owners_and_expiry_revoke_agent_tokens(s: &Arc<dyn Store>) -> Result<()> {
    let u = user("o@example.com");
    let other = user("other@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    one(s, Mutation::InsertUser(other.clone())).await?;
    let mine = agent(u.id, None);
    let theirs = agent(other.id, None);
    let child = agent(u.id, Some(mine.id)); // ephemeral, expires at t0 + 1 h
    for a in [&mine, &theirs, &child] {
        one(s, Mutation::InsertAgent(a.clone())).await?;
    }
    let (t_mine, t_theirs, t_child) = (token(mine.id, "x"), token(theirs.id, "x"), token(child.id, "x"));
    for t in [&t_mine, &t_theirs, &t_child] {
        one(s, Mutation::InsertToken(t.clone())).await?;
    }
    ensure!(one(s, Mutation::RevokeTokensOfOwnedAgents { owner: u.id, at: t0() }).await? == 2);
    ensure!(!live(s, t_mine.jti).await? && !live(s, t_child.jti).await?, "an owned agent's token is live");
    ensure!(live(s, t_theirs.jti).await?, "another owner's token was revoked");
    ensure!(s.expired_agents(t0() + Duration::minutes(59)).await?.is_empty(), "expired before its time");
    let expired: Vec<_> = s.expired_agents(t0() + Duration::hours(1)).await?.iter().map(|a| a.id).collect();
    ensure!(expired == vec![child.id], "expired agents: {expired:?}");
    one(
        s,
        Mutation::SetAgentStatus {
            id: child.id,
            from: AgentStatus::Active,
            to: AgentStatus::Retired,
            at: t0() + Duration::hours(1),
            by: None,
        },
    )
    .await?;
    ensure!(s.expired_agents(t0() + Duration::hours(2)).await?.is_empty(), "a retired agent is listed as expiring");
    Ok(())
}

pub async fn delegated_tokens_need_a_live_parent_and_grant(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(s, "d@example.com").await?;
    let mut parent = token(a.id, &u.id.to_string());
    parent.grant = Some(g.id);
    one(s, Mutation::InsertToken(parent.clone())).await?;
    let child = child_of(&parent, b.id);
    one(s, Mutation::InsertToken(child.clone())).await?;
    ensure!(s.token(child.jti).await? == Some(child.clone()), "child did not round-trip");
    let refused = |t: TokenRecord| async move {
        let r = one(s, Mutation::InsertToken(t.clone())).await;
        ensure!(matches!(r, Err(StoreError::Conflict(_))), "expected a conflict, got {r:?}");
        ensure!(s.token(t.jti).await?.is_none(), "a refused token was written");
        Ok::<_, anyhow::Error>(())
    };
    // Issued when its parent had expired: refused.
    let mut late_child = child_of(&parent, b.id);
    late_child.issued_at = parent.expires_at;
    refused(late_child).await?;
    // Under a revoked parent: refused.
    one(s, Mutation::RevokeToken { jti: parent.jti, at: t0() }).await?;
    refused(child_of(&parent, b.id)).await?;
    // Under an unknown parent: refused.
    let mut stray = child_of(&parent, b.id);
    stray.parent = Some(Jti::from_ulid(ulid()));
    refused(stray).await?;
    // Under an unknown grant: refused.
    let mut unknown = token(a.id, &u.id.to_string());
    unknown.grant = Some(GrantId::from_ulid(ulid()));
    refused(unknown).await?;
    // Under a grant that has expired: refused.
    let mut after = token(a.id, &u.id.to_string());
    after.grant = Some(g.id);
    after.issued_at = g.expires_at;
    after.expires_at = g.expires_at + Duration::minutes(5);
    refused(after).await?;
    // Under a revoked grant: refused.
    one(s, Mutation::RevokeGrant { id: g.id, at: t0() }).await?;
    let mut late = token(a.id, &u.id.to_string());
    late.grant = Some(g.id);
    refused(late).await?;
    Ok(())
}

pub async fn revocation_reaches_every_descendant(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(s, "r@example.com").await?;
    let c = agent(u.id, Some(b.id));
    one(s, Mutation::InsertAgent(c.clone())).await?;
    // root (a) → mid (b) → leaf (c), and a sibling of mid.
    let tree = |family: Option<&str>| {
        let mut root = token(a.id, &u.id.to_string());
        root.grant = Some(g.id);
        root.family = family.map(str::to_owned);
        let mid = child_of(&root, b.id);
        let leaf = child_of(&mid, c.id);
        let sibling = child_of(&root, b.id);
        [root, mid, leaf, sibling]
    };
    let insert = |ts: [TokenRecord; 4]| async move {
        for t in ts {
            one(s, Mutation::InsertToken(t)).await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    // A token: itself and everything below it.
    let [root, mid, leaf, sibling] = tree(None);
    insert([root.clone(), mid.clone(), leaf.clone(), sibling.clone()]).await?;
    ensure!(one(s, Mutation::RevokeToken { jti: mid.jti, at: t0() }).await? == 2, "mid and leaf");
    ensure!(!live(s, leaf.jti).await? && live(s, root.jti).await? && live(s, sibling.jti).await?);
    ensure!(one(s, Mutation::RevokeToken { jti: root.jti, at: t0() }).await? == 2, "root and sibling");
    // An agent: every token whose chain contains it.
    let [root, mid, leaf, sibling] = tree(None);
    insert([root.clone(), mid.clone(), leaf.clone(), sibling.clone()]).await?;
    ensure!(one(s, Mutation::RevokeTokensOfAgent { agent: b.id, at: t0() }).await? == 3, "mid, leaf, sibling");
    ensure!(live(s, root.jti).await? && !live(s, leaf.jti).await?);
    one(s, Mutation::RevokeToken { jti: root.jti, at: t0() }).await?;
    // A refresh family: its access tokens and their descendants.
    let [root, mid, leaf, sibling] = tree(Some("fam-1"));
    insert([root.clone(), mid.clone(), leaf.clone(), sibling.clone()]).await?;
    ensure!(one(s, Mutation::RevokeTokensOfFamily { family: "fam-1".into(), at: t0() }).await? == 4);
    // A grant: every token under it.
    let [root, mid, leaf, sibling] = tree(None);
    insert([root, mid, leaf.clone(), sibling]).await?;
    ensure!(one(s, Mutation::RevokeTokensOfGrant { grant: g.id, at: t0() }).await? == 4);
    // An owner: every token of their agents and below.
    let [root, mid, leaf, sibling] = tree(None);
    insert([root, mid, leaf.clone(), sibling]).await?;
    ensure!(one(s, Mutation::RevokeTokensOfOwnedAgents { owner: u.id, at: t0() }).await? == 4);
    ensure!(!live(s, leaf.jti).await?);
    Ok(())
}

pub async fn refresh_tokens_rotate_once_and_die_with_their_family(s: &Arc<dyn Store>) -> Result<()> {
    let (_, a, _, g) = people(s, "rt@example.com").await?;
    one(s, Mutation::InsertRefresh(refresh("h1", &g, a.id))).await?;
    ensure!(s.refresh("h1").await? == Some(refresh("h1", &g, a.id)), "refresh token did not round-trip");
    ensure!(
        matches!(one(s, Mutation::InsertRefresh(refresh("h1", &g, a.id))).await, Err(StoreError::Conflict(_))),
        "a duplicate refresh token"
    );
    one(s, Mutation::UseRefresh { hash: "h1".into(), at: t0() }).await?;
    ensure!(s.refresh("h1").await?.and_then(|r| r.used_at) == Some(t0()));
    ensure!(
        matches!(one(s, Mutation::UseRefresh { hash: "h1".into(), at: t0() }).await, Err(StoreError::Conflict(_))),
        "a refresh token was used twice"
    );
    ensure!(
        matches!(one(s, Mutation::UseRefresh { hash: "nope".into(), at: t0() }).await, Err(StoreError::Conflict(_))),
        "an unknown refresh token was used"
    );
    one(s, Mutation::InsertRefresh(refresh("h2", &g, a.id))).await?;
    let mut elsewhere = refresh("h3", &g, a.id);
    elsewhere.family = "fam-other".into();
    one(s, Mutation::InsertRefresh(elsewhere)).await?;
    ensure!(one(s, Mutation::RevokeRefreshFamily { family: "fam-r".into(), at: t0() }).await? == 2);
    ensure!(one(s, Mutation::RevokeRefreshFamily { family: "fam-r".into(), at: t0() }).await? == 0, "twice");
    ensure!(
        matches!(one(s, Mutation::UseRefresh { hash: "h2".into(), at: t0() }).await, Err(StoreError::Conflict(_))),
        "a revoked refresh token was used"
    );
    ensure!(s.refresh("h3").await?.is_some_and(|r| r.revoked_at.is_none()), "another family was revoked");
    Ok(())
}

pub async fn status_indexes_never_repeat(s: &Arc<dyn Store>) -> Result<()> {
    let before = s.status_indexes_reserved().await?;
    let first = one(s, Mutation::ReserveStatusIndexes { count: 100 }).await?;
    let second = one(s, Mutation::ReserveStatusIndexes { count: 3 }).await?;
    ensure!((first, second) == (before, before + 100), "blocks at {first} and {second} after {before}");
    ensure!(s.status_indexes_reserved().await? == before + 103);
    Ok(())
}

pub async fn revoked_tokens_show_in_their_status_list(s: &Arc<dyn Store>) -> Result<()> {
    let (_, a, _, _) = people(s, "status@example.com").await?;
    let base = one(s, Mutation::ReserveStatusIndexes { count: 4 }).await?;
    let mut parent = token(a.id, &a.id.to_string());
    parent.status_idx = Some(base);
    let mut child = token(a.id, &a.id.to_string());
    child.parent = Some(parent.jti);
    child.status_idx = Some(base + 1);
    let mut other = token(a.id, &a.id.to_string());
    other.status_idx = Some(base + 2);
    for t in [&parent, &child, &other] {
        one(s, Mutation::InsertToken(t.clone())).await?;
    }
    ensure!(s.token(child.jti).await?.and_then(|t| t.status_idx) == Some(base + 1), "status_idx did not round-trip");
    ensure!(s.revoked_status_indexes(base, base + 4).await?.is_empty(), "nothing is revoked yet");
    one(s, Mutation::RevokeToken { jti: parent.jti, at: t0() }).await?;
    let mut revoked = s.revoked_status_indexes(base, base + 4).await?;
    revoked.sort_unstable();
    ensure!(revoked == vec![base, base + 1], "the cascade must show in the list: {revoked:?}");
    ensure!(s.revoked_status_indexes(base + 2, base + 4).await?.is_empty(), "ranges are half-open");
    ensure!(s.revoked_status_indexes(base + 1, base + 2).await? == vec![base + 1], "ranges include their start");
    Ok(())
}
