//! Changes committed at once, as concurrent requests do: every
//! compare-and-swap has exactly one winner, the chain stays one chain, and
//! a revocation racing an exchange never leaves a live child. Each case
//! asserts what must hold under every interleaving, not a particular one.

use std::future::Future;
use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{Change, Mutation, Store, StoreError};
use mandate_model::AgentId;
use mandate_model::records::ClientId;
use time::Duration;

use super::fixtures::{append, auth_code, child_of, event, intact, one, people, refresh, t0, token, ulid, user};

/// Runs `n` copies of `task` at once; how many succeeded. Any error but
/// the one a losing compare-and-swap gives (`lost`) fails the case.
async fn race<F, Fut>(n: usize, task: F, lost: fn(&StoreError) -> bool) -> Result<usize>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<u64, StoreError>> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(task())).collect();
    let mut won = 0;
    for t in tasks {
        match t.await? {
            Ok(_) => won += 1,
            Err(e) if lost(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(won)
}

pub async fn concurrent_replays_admit_one(s: &Arc<dyn Store>) -> Result<()> {
    let client = ClientId::Agent(AgentId::from_ulid(ulid()));
    let burn = || {
        let s = s.clone();
        async move { one(&s, Mutation::ConsumeAssertionJti { client, jti: "race".into(), expires_at: t0() }).await }
    };
    let won = race(32, burn, |e| *e == StoreError::Replay).await?;
    ensure!(won == 1, "{won} concurrent uses of one jti succeeded");
    Ok(())
}

pub async fn concurrent_policy_writers_from_one_version_admit_one(s: &Arc<dyn Store>) -> Result<()> {
    let policy = |v: String| mandate_core::store::StoredPolicy {
        text: format!("// {v}"),
        version: v,
        created_at: t0(),
        author: None,
    };
    s.commit(Change::new().with(Mutation::PutPolicy(policy("base".into())))).await?;
    let n = std::sync::atomic::AtomicUsize::new(0);
    let n = Arc::new(n);
    let put = || {
        let s = s.clone();
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            let change = Change::new()
                .with(Mutation::ExpectPolicyVersion(Some("base".into())))
                .with(Mutation::PutPolicy(policy(format!("edit{i}"))));
            s.commit(change).await.map(|_| 1)
        }
    };
    let won = race(16, put, |e| matches!(e, StoreError::Conflict(_))).await?;
    ensure!(won == 1, "{won} editors of one version overwrote each other");
    ensure!(s.policy_versions(None, 100).await?.len() == 2, "a losing editor's version was kept");
    Ok(())
}

pub async fn concurrent_appends_form_one_chain(s: &Arc<dyn Store>) -> Result<()> {
    let mut tasks = Vec::new();
    for t in 0..32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..16 {
                seqs.push(one(&s, append(event("token.issued", &format!("agt_{t}_{i}")))).await?);
            }
            Ok::<_, StoreError>(seqs)
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await??);
    }
    seqs.sort_unstable();
    ensure!(seqs == (1..=512).collect::<Vec<u64>>(), "appends reported seqs other than 1..=512");
    ensure!(intact(s).await? == 512);
    Ok(())
}

/// Token issuances committed at once, some replaying another's client
/// assertion (in flight with it, or stored before): each replay fails
/// alone, every other issuance stands with its token and its event, and
/// the trail is still one chain. (PostgreSQL writes such batches with one
/// statement and sends a batch holding a replay the long way.)
pub async fn concurrent_issuances_with_replays_stand_or_fall_alone(s: &Arc<dyn Store>) -> Result<()> {
    let (_, a, _, _) = people(s, "issue-race@example.com").await?;
    let client = ClientId::Agent(a.id);
    let before = intact(s).await?;
    let mut stood = 0;
    // Rounds 0-3: jtis 24-31 repeat 0-7 of their round. Round 4: jtis 0-7
    // repeat round 0's (stored by now), 8-31 are new.
    for round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..32 {
            let jti = match (round, i) {
                (4, 0..8) => format!("r0-{i}"),
                (_, 24..) if round < 4 => format!("r{round}-{}", i - 24),
                _ => format!("r{round}-{i}"),
            };
            let t = token(a.id, &format!("u{round}-{i}"));
            let change = Change::new()
                .with(Mutation::ConsumeAssertionJti { client, jti: jti.clone(), expires_at: t0() + Duration::hours(1) })
                .with(Mutation::InsertToken(t.clone()))
                .with(append(event("token.issued", &format!("agt_{round}_{i}"))));
            let s = s.clone();
            tasks.push(tokio::spawn(async move { (jti, t.jti, s.commit(change).await) }));
        }
        let mut won: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
        for task in tasks {
            let (jti, token_id, result) = task.await?;
            let kept = s.token(token_id).await?.is_some();
            match result {
                Ok(_) => {
                    ensure!(kept, "an issuance that stood left no token");
                    *won.entry(jti).or_default() += 1;
                    stood += 1;
                }
                Err(StoreError::Replay) => ensure!(!kept, "a replayed issuance left its token"),
                Err(e) => return Err(e.into()),
            }
        }
        ensure!(won.len() == 24, "round {round}: {} jtis stood, not 24", won.len());
        ensure!(won.values().all(|n| *n == 1), "round {round}: a jti stood twice: {won:?}");
        if round == 4 {
            ensure!((0..8).all(|i| !won.contains_key(&format!("r0-{i}"))), "a stored jti was burned again");
        }
    }
    ensure!(stood == 120, "{stood} issuances stood, not 120");
    ensure!(intact(s).await? == before + 120, "the trail does not hold one event per issuance");
    Ok(())
}

pub async fn concurrent_refresh_uses_admit_one(s: &Arc<dyn Store>) -> Result<()> {
    let (_, a, _, g) = people(s, "rt-race@example.com").await?;
    one(s, Mutation::InsertRefresh(refresh("h", &g, a.id))).await?;
    let use_it = || {
        let s = s.clone();
        async move { one(&s, Mutation::UseRefresh { hash: "h".into(), at: t0() }).await }
    };
    let won = race(16, use_it, |e| matches!(e, StoreError::Conflict(_))).await?;
    ensure!(won == 1, "{won} concurrent uses of one refresh token succeeded");
    Ok(())
}

pub async fn concurrent_code_redemptions_admit_one(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, _, g) = people(s, "code-race@example.com").await?;
    one(s, Mutation::InsertAuthCode(auth_code("code-hash", &u, &a, &g))).await?;
    let redeem = || {
        let s = s.clone();
        async move { one(&s, Mutation::UseAuthCode { hash: "code-hash".into(), at: t0() }).await }
    };
    let won = race(8, redeem, |e| matches!(e, StoreError::Conflict(_))).await?;
    ensure!(won == 1, "{won} redemptions of one code won");
    ensure!(s.auth_code("code-hash").await?.and_then(|x| x.used_at) == Some(t0()));
    Ok(())
}

/// Several nodes reporting one lapse, or renewing one grant from the
/// same expiry, make one change (ADR 0036).
pub async fn concurrent_lapse_reports_and_renewals_admit_one(s: &Arc<dyn Store>) -> Result<()> {
    let (_, _, _, g) = people(s, "lapse-race@example.com").await?;
    let at = g.expires_at + Duration::minutes(1);
    let report = || {
        let s = s.clone();
        async move { one(&s, Mutation::MarkGrantLapsed { id: g.id, at }).await }
    };
    let won = race(8, report, |e| matches!(e, StoreError::Conflict(_))).await?;
    ensure!(won == 1, "{won} reports of one lapse won");
    let (_, _, _, r) = people(s, "renew-race@example.com").await?;
    let now = r.expires_at - Duration::hours(1);
    let renew = || {
        let s = s.clone();
        async move {
            let m = Mutation::ExtendGrant {
                id: r.id,
                from: r.expires_at,
                to: now + Duration::days(1),
                at: now,
                purpose: None,
            };
            one(&s, m).await
        }
    };
    let won = race(8, renew, |e| matches!(e, StoreError::Conflict(_))).await?;
    ensure!(won == 1, "{won} renewals from one expiry won");
    ensure!(s.grant(r.id).await?.map(|x| x.reapprovals) == Some(1));
    Ok(())
}

pub async fn concurrent_reservations_never_overlap(s: &Arc<dyn Store>) -> Result<()> {
    let before = s.status_indexes_reserved().await?;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut firsts = Vec::new();
            for _ in 0..8 {
                firsts.push(one(&s, Mutation::ReserveStatusIndexes { count: 100 }).await?);
            }
            Ok::<_, StoreError>(firsts)
        }));
    }
    let mut firsts = Vec::new();
    for t in tasks {
        firsts.extend(t.await??);
    }
    firsts.sort_unstable();
    // Nothing is lost either: the blocks tile the range exactly.
    let expected: Vec<u64> = (0..128).map(|i| before + 100 * i).collect();
    ensure!(firsts == expected, "reserved blocks overlap or leave gaps: {firsts:?}");
    ensure!(s.status_indexes_reserved().await? == before + 12_800, "the counter did not advance by 12,800");
    Ok(())
}

/// SECURITY row 24: a revocation racing an exchange. Whichever commits
/// first, the outcome must be one of two, told apart by what each side
/// reports: the exchange was refused (`Conflict`), wrote nothing, and the
/// revocation reached the parent alone; or the child was inserted and the
/// revocation reached it too (it counts 2) — never a live child of a
/// revoked parent, never an insert reported but not written.
pub async fn revoking_a_parent_during_its_exchange_never_leaves_a_live_child(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(s, "race@example.com").await?;
    for _ in 0..300 {
        let mut parent = token(a.id, &u.id.to_string());
        parent.grant = Some(g.id);
        one(s, Mutation::InsertToken(parent.clone())).await?;
        let child = child_of(&parent, b.id);
        let (s1, s2) = (s.clone(), s.clone());
        let jti = parent.jti;
        let revoke = tokio::spawn(async move { one(&s1, Mutation::RevokeToken { jti, at: t0() }).await });
        let c = child.clone();
        let exchange = tokio::spawn(async move { s2.commit(Change::new().with(Mutation::InsertToken(c))).await });
        let (reached, inserted) = (revoke.await??, exchange.await?);
        let stored = s.token(child.jti).await?;
        match inserted {
            Ok(_) => {
                ensure!(stored.is_some_and(|t| t.revoked_at.is_some()), "an inserted child is live or missing");
                ensure!(reached == 2, "the revocation reached {reached} tokens, not the parent and its child");
            }
            Err(StoreError::Conflict(_)) => {
                ensure!(stored.is_none(), "a refused exchange wrote its child");
                ensure!(reached == 1, "the revocation reached {reached} tokens, not the parent alone");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Issuances decided at one epoch, committed at once with a suspension that
/// moves it, and with issuances that expect an epoch the store never had
/// (decision 0042). Whatever batches they fall into, each issuance stands
/// whole or fails alone with `Moved` and writes nothing: every one that
/// expects the wrong epoch fails, the suspension stands, and the trail
/// holds one event per issuance that stood. The `jti`s of those refused
/// were not burned: decided again at the new epoch, they all stand.
pub async fn issuances_expecting_an_epoch_stand_or_fall_alone(s: &Arc<dyn Store>) -> Result<()> {
    use super::change::issuance_at;
    use mandate_model::records::{AgentStatus, SuspendedBy};
    let (_, a, b, _) = people(s, "expect-race@example.com").await?;
    let before = intact(s).await?;
    let decided = s.epoch().await?;
    let never = decided + 1_000_000;
    let mut tasks = Vec::new();
    for i in 0..48 {
        let s = s.clone();
        if i == 16 {
            let (from, to, at) = (AgentStatus::Active, AgentStatus::Suspended, t0());
            let m = Mutation::SetAgentStatus { id: b.id, from, to, at, by: Some(SuspendedBy::Admin) };
            tasks.push(tokio::spawn(async move { (None, s.commit(Change::new().with(m)).await) }));
            continue;
        }
        let epoch = if i % 4 == 0 { never } else { decided };
        let t = token(a.id, &format!("x{i}"));
        let change = issuance_at(a.id, &format!("x{i}"), &t, epoch);
        tasks.push(tokio::spawn(async move { (Some((i, t, epoch)), s.commit(change).await) }));
    }
    let mut stood = 0;
    let mut refused = Vec::new();
    for task in tasks {
        match task.await? {
            (None, result) => ensure!(result.is_ok(), "the suspension failed: {result:?}"),
            (Some((i, t, epoch)), result) => {
                let kept = s.token(t.jti).await?.is_some();
                match result {
                    Ok(_) => {
                        ensure!(epoch == decided, "an issuance expecting an epoch the store never had stood");
                        ensure!(kept, "an issuance that stood left no token");
                        stood += 1;
                    }
                    Err(StoreError::Moved) => {
                        ensure!(!kept, "a refused issuance left its token");
                        refused.push((i, t));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    ensure!(refused.len() >= 11, "only {} issuances were refused", refused.len());
    ensure!(intact(s).await? == before + stood, "the trail does not hold one event per issuance that stood");
    let now = s.epoch().await?;
    ensure!(now != decided, "the suspension did not move the epoch");
    for (i, t) in &refused {
        s.commit(issuance_at(a.id, &format!("x{i}"), t, now)).await?;
    }
    ensure!(intact(s).await? == before + 47, "decided again, not every refused issuance stood");
    Ok(())
}

/// Plain issuances committed at once with changes that go another way (a
/// new user, audited), round after round, so that a busy writer's batches
/// of each kind follow one another. However they are batched, each lane of
/// the trail links in `seq` order: a writer that seals a batch with what
/// its last batch left (PostgreSQL's `seq`s reserved ahead, decision 0044)
/// never seals after a batch that took its `seq`s another way.
pub async fn issuances_between_other_changes_keep_each_lane_in_order(s: &Arc<dyn Store>) -> Result<()> {
    use super::change::issuance;
    let (_, a, _, _) = people(s, "ahead@example.com").await?;
    let before = intact(s).await?;
    let mut written = 0;
    for round in 0..8 {
        let mut tasks = Vec::new();
        for i in 0..40 {
            let s = s.clone();
            let change = if i % 10 == 9 {
                let u = user(&format!("ahead-{round}-{i}@example.com"));
                Change::new().with(Mutation::InsertUser(u)).with(append(event("user.created", "admin")))
            } else {
                let jti = format!("ahead-{round}-{i}");
                issuance(a.id, &jti, &token(a.id, &jti))
            };
            tasks.push(tokio::spawn(async move { s.commit(change).await }));
        }
        for t in tasks {
            t.await??;
            written += 1;
        }
        ensure!(intact(s).await? == before + written, "round {round}: the trail does not verify whole");
    }
    Ok(())
}
