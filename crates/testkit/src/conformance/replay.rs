//! The replay store: client-assertion and DPoP proof `jti`s, each burned
//! once until it expires.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{AttemptCounter, Change, Mutation, Store, StoreError};
use mandate_model::AgentId;
use mandate_model::records::ClientId;
use time::{Duration, OffsetDateTime};

use super::fixtures::{one, people, t0, token, ulid};

pub async fn replay_store_burns_each_jti_once(s: &Arc<dyn Store>) -> Result<()> {
    let a = ClientId::Agent(AgentId::from_ulid(ulid()));
    let b = ClientId::Agent(AgentId::from_ulid(ulid()));
    let burn = |c: ClientId, exp: OffsetDateTime| Mutation::ConsumeAssertionJti {
        client: c,
        jti: "j-1".into(),
        expires_at: exp,
    };
    ensure!(one(s, burn(a, t0())).await? == 1);
    ensure!(matches!(one(s, burn(a, t0())).await, Err(StoreError::Replay)), "replayed jti accepted");
    // Per client: another client's identical jti is its own.
    one(s, burn(b, t0())).await?;
    ensure!(one(s, Mutation::PurgeExpiredJtis { before: t0() - Duration::seconds(1) }).await? == 0);
    ensure!(matches!(one(s, burn(a, t0())).await, Err(StoreError::Replay)), "unexpired jti purged");
    ensure!(one(s, Mutation::PurgeExpiredJtis { before: t0() + Duration::seconds(1) }).await? == 2, "two expired");
    one(s, burn(a, t0() + Duration::hours(1))).await?;
    Ok(())
}

pub async fn grant_assertions_are_single_use(s: &Arc<dyn Store>) -> Result<()> {
    let burn = |key: &str| Mutation::ConsumeGrantJti { key: key.into(), expires_at: t0() + Duration::minutes(1) };
    one(s, burn("jag-1")).await?;
    ensure!(matches!(one(s, burn("jag-1")).await, Err(StoreError::GrantReplay)), "a replayed ID-JAG was accepted");
    // Its own namespace: a DPoP proof with the same key is another thing.
    one(s, Mutation::ConsumeDpopJti { key: "jag-1".into(), expires_at: t0() + Duration::minutes(1) }).await?;
    let (_, a, _, _) = people(s, "jag@example.com").await?;
    let t = token(a.id, &a.id.to_string());
    let refused = s.commit(Change::new().with(burn("jag-1")).with(Mutation::InsertToken(t.clone()))).await;
    ensure!(matches!(refused, Err(StoreError::GrantReplay)), "expected a replay, got {refused:?}");
    ensure!(s.token(t.jti).await?.is_none(), "a token was written with a replayed ID-JAG");
    one(s, Mutation::PurgeExpiredJtis { before: t0() + Duration::minutes(2) }).await?;
    one(s, burn("jag-1")).await?;
    Ok(())
}

pub async fn dpop_proofs_are_single_use(s: &Arc<dyn Store>) -> Result<()> {
    let burn = |key: &str| Mutation::ConsumeDpopJti { key: key.into(), expires_at: t0() + Duration::minutes(1) };
    one(s, burn("proof-1")).await?;
    ensure!(matches!(one(s, burn("proof-1")).await, Err(StoreError::DpopReplay)), "a replayed proof was accepted");
    // The replay wrote nothing: a change holding it and a token is refused whole.
    let (_, a, _, _) = people(s, "dpop@example.com").await?;
    let t = token(a.id, &a.id.to_string());
    let refused = s.commit(Change::new().with(burn("proof-1")).with(Mutation::InsertToken(t.clone()))).await;
    ensure!(matches!(refused, Err(StoreError::DpopReplay)), "expected a replay, got {refused:?}");
    ensure!(s.token(t.jti).await?.is_none(), "a token was written with a replayed proof");
    one(s, burn("proof-2")).await?;
    // Forgotten once too old to be accepted anyway.
    one(s, Mutation::PurgeExpiredJtis { before: t0() + Duration::minutes(2) }).await?;
    one(s, burn("proof-1")).await?;
    Ok(())
}

/// The sign-in attempt counters every node shares: a counter moves only
/// from the value its writer read, so that two nodes counting at once
/// cannot both count from the same value; a change whose swap fails writes
/// nothing.
pub async fn attempt_counters_move_only_from_what_was_read(s: &Arc<dyn Store>) -> Result<()> {
    let keys = ["email:a@example.com".to_owned(), "addr:192.0.2.1".to_owned(), "email:none@example.com".to_owned()];
    let at = |secs: i64, count: u32| AttemptCounter { count, last: t0() + Duration::seconds(secs) };
    let swap = |key: &str, expected: Option<AttemptCounter>, new: AttemptCounter| Mutation::SwapAttemptCounter {
        key: key.into(),
        expected,
        new,
    };
    ensure!(s.attempt_counters(&keys).await?.is_empty());
    ensure!(one(s, swap(&keys[0], None, at(0, 1))).await? == 1);
    // A second first count of the same key lost the race.
    ensure!(matches!(one(s, swap(&keys[0], None, at(0, 1))).await, Err(StoreError::Conflict(_))), "counted twice");
    ensure!(one(s, swap(&keys[0], Some(at(0, 1)), at(1, 2))).await? == 1);
    // From a value that is no longer stored: refused, and the change's
    // other swap is undone with it.
    let both = Change::new().with(swap(&keys[1], None, at(1, 1))).with(swap(&keys[0], Some(at(0, 1)), at(2, 2)));
    ensure!(matches!(s.commit(both).await, Err(StoreError::Conflict(_))), "a stale swap went in");
    ensure!(s.attempt_counters(&keys).await? == vec![(keys[0].clone(), at(1, 2))], "a refused change wrote");
    one(s, swap(&keys[1], None, at(1, 1))).await?;
    // Taken back one at a time, never below zero; forgotten; purged by age.
    ensure!(one(s, Mutation::DecrementAttemptCounter { key: keys[1].clone() }).await? == 1);
    ensure!(one(s, Mutation::DecrementAttemptCounter { key: keys[1].clone() }).await? == 1);
    ensure!(one(s, Mutation::DecrementAttemptCounter { key: keys[2].clone() }).await? == 0);
    let mut read = s.attempt_counters(&keys).await?;
    read.sort_by(|a, b| a.0.cmp(&b.0));
    ensure!(read == vec![(keys[1].clone(), at(1, 0)), (keys[0].clone(), at(1, 2))], "{read:?}");
    ensure!(one(s, Mutation::ForgetAttemptCounter { key: keys[1].clone() }).await? == 1);
    ensure!(one(s, Mutation::ForgetAttemptCounter { key: keys[1].clone() }).await? == 0);
    ensure!(one(s, Mutation::PurgeAttemptCounters { before: t0() + Duration::seconds(1) }).await? == 0);
    ensure!(one(s, Mutation::PurgeAttemptCounters { before: t0() + Duration::seconds(2) }).await? == 1);
    ensure!(s.attempt_counters(&keys).await?.is_empty());
    Ok(())
}
