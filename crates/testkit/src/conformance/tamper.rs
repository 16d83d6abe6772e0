//! Tampering with a SQL store's tables behind its back, as someone with
//! write access to the database would: edits, deletions, reorderings,
//! insertions, truncation and a whole rewritten chain are caught by the
//! verifier at the right `seq`, or against a stored or witnessed
//! checkpoint; an audit insert failing in the database fails its change.
//!
//! Each case starts from a fresh store with a 20-event trail and signed
//! checkpoints at seq 10 and 20.

use std::future::Future;
use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_audit::Checkpoint;
use mandate_core::TrailReport;
use mandate_core::audit::verify_trail;
use mandate_core::store::{Change, KeyUse, Mutation, Store, StoredKey};
use mandate_model::records::{ClientId, TokenRecord};

use super::fixtures::{agent, all_events, append, event, intact, one, t0, token, user};

/// Runs raw SQL against the database behind a store.
pub type Exec = Arc<dyn Fn(String) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send + Sync>;

/// A store and the means to tamper with it behind its back.
pub struct TamperRig {
    pub store: Arc<dyn Store>,
    pub exec: Exec,
    /// SQL that drops the append-only triggers (an attacker would).
    pub drop_guards: &'static str,
    /// SQL that makes every audit insert fail (a fault injected in the database).
    pub fail_appends: &'static str,
    /// SQL that undoes `fail_appends`.
    pub restore_appends: &'static str,
    /// SQL that leaves the checkpoint at seq 10 unreadable, where the
    /// store's column types allow it at all.
    pub garble_checkpoint: Option<&'static str>,
    /// Columns of `audit_events` after `hash`, each with a leading comma
    /// (`, lane` on PostgreSQL): what a copied row must carry to stay in its
    /// lane.
    pub extra_event_columns: &'static str,
}

/// Twenty events and checkpoints at seq 10 and 20, signed with an audit
/// key the store knows. Returns the checkpoint at 20 and the key.
async fn seeded_trail(rig: &TamperRig) -> Result<(Checkpoint, mandate_jose::SigningKey)> {
    let s = &rig.store;
    let key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
    one(s, Mutation::InsertSigningKey(audit_key_row(&key))).await?;
    let mut cp = None;
    for i in 0..20 {
        let mut e = event("token.issued", &format!("agt_{i}"));
        e.scope = Some("read".into());
        one(s, append(e)).await?;
        if i == 9 || i == 19 {
            let (seq, hash) = s.audit_head().await?.unwrap_or_default();
            let signed = mandate_audit::sign_checkpoint(&key, seq, &hash, "2026-11-23T10:00:00.000000Z")?;
            one(s, Mutation::InsertCheckpoint(signed.clone())).await?;
            cp = Some(signed);
        }
    }
    ensure!(intact(s).await? == 20);
    Ok((cp.ok_or_else(|| anyhow::anyhow!("no checkpoint"))?, key))
}

fn audit_key_row(key: &mandate_jose::SigningKey) -> StoredKey {
    StoredKey {
        kid: key.kid().into(),
        alg: "EdDSA".into(),
        purpose: KeyUse::Audit,
        wrapped_private: vec![0],
        public_jwk: Some(key.public().to_json().to_string()),
        created_at: t0(),
        retired_at: None,
    }
}

async fn broken_at(s: &Arc<dyn Store>, witnessed: &[Checkpoint]) -> Result<u64> {
    broken_against(s, witnessed, None).await
}

async fn broken_against(
    s: &Arc<dyn Store>,
    witnessed: &[Checkpoint],
    trusted: Option<&[mandate_jose::PublicJwk]>,
) -> Result<u64> {
    match verify_trail(s.as_ref(), witnessed, trusted).await? {
        TrailReport::Intact(v) => anyhow::bail!("tampering went unnoticed ({} events verify)", v.events),
        TrailReport::Broken(t) => Ok(t.seq),
    }
}

/// `sql`, refused by the append-only guards until they are dropped, then
/// caught by the verifier at `bad_seq`.
async fn caught_at(rig: &TamperRig, sql: &str, bad_seq: u64) -> Result<()> {
    seeded_trail(rig).await?;
    ensure!((rig.exec)(sql.to_owned()).await.is_err(), "the append-only guard let an edit through");
    (rig.exec)(rig.drop_guards.to_owned()).await?;
    (rig.exec)(sql.to_owned()).await?;
    match verify_trail(rig.store.as_ref(), &[], None).await? {
        TrailReport::Intact(v) => anyhow::bail!("tampering went unnoticed ({} events verify)", v.events),
        TrailReport::Broken(t) => ensure!(t.seq == bad_seq, "reported {t}, expected seq {bad_seq}"),
    }
    Ok(())
}

pub async fn an_edited_event_is_caught(rig: &TamperRig) -> Result<()> {
    caught_at(rig, "UPDATE audit_events SET scope = 'admin' WHERE seq = 5", 5).await
}

pub async fn a_deleted_event_is_caught(rig: &TamperRig) -> Result<()> {
    caught_at(rig, "DELETE FROM audit_events WHERE seq = 7", 7).await
}

pub async fn reordered_events_are_caught(rig: &TamperRig) -> Result<()> {
    let swap = "UPDATE audit_events SET seq = -1 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = 4; \
                UPDATE audit_events SET seq = 4 WHERE seq = -1";
    caught_at(rig, swap, 3).await
}

pub async fn an_inserted_event_is_caught(rig: &TamperRig) -> Result<()> {
    // The copy goes into the lane of the events around it.
    let insert = format!(
        "UPDATE audit_events SET seq = -seq - 1 WHERE seq >= 12; UPDATE audit_events SET seq = -seq WHERE seq < 0; \
         INSERT INTO audit_events SELECT 12, time, type, decision, subject, actor, chain, client_id, action, resource, \
         scope, jti, grant_id, parent, count, reason, request_id, prev_hash, hash{} FROM audit_events WHERE seq = 11",
        rig.extra_event_columns
    );
    caught_at(rig, &insert, 12).await
}

pub async fn a_truncated_tail_is_caught(rig: &TamperRig) -> Result<()> {
    caught_at(rig, "DELETE FROM audit_events WHERE seq > 15", 16).await
}

pub async fn an_edited_hash_is_caught(rig: &TamperRig) -> Result<()> {
    caught_at(rig, "UPDATE audit_events SET hash = prev_hash WHERE seq = 9", 9).await
}

/// Rows rewritten with their hashes recomputed, as someone without the
/// audit key would: a partial recomputation is caught at the first
/// checkpoint it contradicts; a whole one by the stored checkpoints; with
/// those deleted, only by a witness; and a key row of the forger's own
/// defeats the stored keys, but not keys pinned outside the database.
pub async fn a_rewritten_chain_is_caught_by_checkpoints_and_witnesses(rig: &TamperRig) -> Result<()> {
    let (witnessed, key) = seeded_trail(rig).await?;
    let original = all_events(&rig.store).await?;
    let rewrite = |upto: usize| -> Result<String> {
        let mut events = original.clone();
        if let Some(e) = events.get_mut(4) {
            e.scope = Some("admin".into());
        }
        let mut prev = mandate_audit::GENESIS.to_owned();
        let mut sql = String::from("DELETE FROM audit_events;");
        for (i, e) in events.into_iter().enumerate() {
            let e = if i < upto { mandate_audit::seal(e, i as u64 + 1, &prev)? } else { e };
            prev = e.hash.clone();
            let q =
                |v: &Option<String>| v.as_ref().map_or("NULL".to_owned(), |s| format!("'{}'", s.replace('\'', "''")));
            sql.push_str(&format!(
                "INSERT INTO audit_events (seq, time, type, decision, actor, chain, scope, prev_hash, hash) \
                 VALUES ({}, '{}', '{}', {}, {}, '{}', {}, '{}', '{}');",
                e.seq,
                e.time,
                e.kind,
                q(&e.decision),
                q(&e.actor),
                serde_json::to_string(&e.chain)?,
                q(&e.scope),
                e.prev_hash,
                e.hash
            ));
        }
        Ok(sql)
    };
    (rig.exec)(rig.drop_guards.to_owned()).await?;
    // Recomputed from the edit up to seq 15: the checkpoint at 10 disagrees
    // before the broken link at 16 is reached.
    (rig.exec)(rewrite(15)?).await?;
    ensure!(broken_at(&rig.store, &[]).await? == 10, "a partial rewrite was not caught at the first checkpoint");
    (rig.exec)(rewrite(20)?).await?;
    ensure!(broken_at(&rig.store, &[]).await? == 10, "the stored checkpoints did not catch the rewrite");
    (rig.exec)("DELETE FROM audit_checkpoints".to_owned()).await?;
    ensure!(intact(&rig.store).await? == 20, "the rewritten chain should verify on its own");
    ensure!(
        broken_at(&rig.store, std::slice::from_ref(&witnessed)).await? == 20,
        "the witness did not catch the rewrite"
    );
    // The forger adds an audit key of their own and re-signs.
    let forger = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
    one(&rig.store, Mutation::InsertSigningKey(audit_key_row(&forger))).await?;
    let (seq, hash) = rig.store.audit_head().await?.unwrap_or_default();
    let forged = mandate_audit::sign_checkpoint(&forger, seq, &hash, "2026-11-23T11:00:00.000000Z")?;
    one(&rig.store, Mutation::InsertCheckpoint(forged)).await?;
    ensure!(intact(&rig.store).await? == 20, "against the database's own keys the forgery verifies (documented)");
    let pinned = [key.public().clone()];
    ensure!(
        broken_against(&rig.store, &[], Some(&pinned)).await? == 20,
        "a pinned key did not reject the forged checkpoint"
    );
    Ok(())
}

/// A checkpoint row edited so that it no longer reads is tampering, not an
/// error to shrug off.
pub async fn an_edited_checkpoint_is_caught(rig: &TamperRig) -> Result<()> {
    seeded_trail(rig).await?;
    let signature = "UPDATE audit_checkpoints SET signature = 'AAAA' WHERE seq = 10";
    (rig.exec)(signature.to_owned()).await?;
    match verify_trail(rig.store.as_ref(), &[], None).await? {
        TrailReport::Broken(t) => ensure!(t.seq == 10 && t.reason.contains("signature"), "{t}"),
        TrailReport::Intact(_) => anyhow::bail!("an edited checkpoint signature went unnoticed"),
    }
    if let Some(garble) = rig.garble_checkpoint {
        (rig.exec)(garble.to_owned()).await?;
        match verify_trail(rig.store.as_ref(), &[], None).await? {
            TrailReport::Broken(t) => ensure!(t.reason.contains("cannot be read"), "{t}"),
            TrailReport::Intact(_) => anyhow::bail!("an unreadable checkpoint row went unnoticed"),
        }
    }
    Ok(())
}

fn change_again(burn: Mutation, t: TokenRecord) -> Change {
    Change::new().with(burn).with(Mutation::InsertToken(t)).with(append(event("token.issued", "agt_t")))
}

/// An audit insert that fails in the database takes its whole change with
/// it: no token, no burned jti, and the chain goes on without a gap.
pub async fn a_failed_audit_insert_fails_its_whole_change(rig: &TamperRig) -> Result<()> {
    let s = &rig.store;
    let u = user("fault@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    let a = agent(u.id, None);
    one(s, Mutation::InsertAgent(a.clone())).await?;
    one(s, append(event("token.issued", "before"))).await?;
    (rig.exec)(rig.fail_appends.to_owned()).await?;
    let t = token(a.id, "x");
    let burn = Mutation::ConsumeAssertionJti { client: ClientId::Agent(a.id), jti: "f".into(), expires_at: t0() };
    let change = change_again(burn.clone(), t.clone());
    let (failed, other) =
        tokio::join!(s.commit(change), s.commit(Change::new().with(Mutation::InsertToken(token(a.id, "y")))));
    ensure!(failed.is_err(), "a change whose audit event failed was committed");
    ensure!(other.is_ok(), "a neighbour without events failed: {other:?}");
    ensure!(s.token(t.jti).await?.is_none(), "the token outlived its failed audit event");
    // The jti was not burned either: the same change goes through once
    // appends work again, and the chain goes on without a gap.
    (rig.exec)(rig.restore_appends.to_owned()).await?;
    s.commit(change_again(burn, t.clone())).await?;
    ensure!(s.token(t.jti).await?.is_some());
    ensure!(intact(s).await? == 2);
    Ok(())
}

/// A trail written by several writers at once, on a store with a lane per
/// writer (PostgreSQL with more than one writer): at least two lanes, and
/// each lane's head vouched for by a checkpoint signed with an audit key
/// the store knows. Returns the events, in `seq` order.
async fn laned_trail(rig: &TamperRig) -> Result<Vec<mandate_audit::Event>> {
    let s = &rig.store;
    let key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
    one(s, Mutation::InsertSigningKey(audit_key_row(&key))).await?;
    // Commits in flight together are spread over the writers; a few rounds
    // make sure that at least two lanes hold events.
    for round in 0..20 {
        let mut commits = tokio::task::JoinSet::new();
        for i in 0..16 {
            let s = s.clone();
            commits.spawn(async move {
                let mut e = event("token.issued", &format!("agt_{round}_{i}"));
                e.scope = Some("read".into());
                one(&s, append(e)).await
            });
        }
        while let Some(done) = commits.join_next().await {
            done??;
        }
        if s.audit_lanes().await?.len() >= 2 {
            break;
        }
    }
    let heads = s.audit_lanes().await?;
    ensure!(heads.len() >= 2, "the writers wrote {} lane(s)", heads.len());
    for h in heads {
        let cp = mandate_audit::sign_checkpoint(&key, h.seq, &h.hash, "2026-11-23T10:00:00.000000Z")?;
        one(s, Mutation::InsertCheckpoint(cp)).await?;
    }
    let events = all_events(s).await?;
    ensure!(intact(s).await? == events.len() as u64);
    Ok(events)
}

/// The events of `lane`, in `seq` order.
fn of_lane(events: &[mandate_audit::Event], lane: u64) -> Vec<&mandate_audit::Event> {
    events.iter().filter(|e| e.lane == lane).collect()
}

/// An event moved to another lane no longer links in either: the lane it
/// left breaks after its predecessor, and the lane it joined breaks after
/// the event it lands behind; the earlier of the two is reported. Moved to
/// a lane of its own, even a lane's first event fails, since every lane
/// starts at a genesis of its own.
pub async fn an_event_moved_to_another_lane_is_caught(rig: &TamperRig) -> Result<()> {
    let events = laned_trail(rig).await?;
    // The lane holding the most events (the writers share the load
    // unevenly: one may hold a single event), and any other.
    let mut lanes: Vec<u64> = events.iter().map(|e| e.lane).collect();
    lanes.sort_unstable();
    lanes.dedup();
    let lane_a = lanes.iter().copied().max_by_key(|&l| of_lane(&events, l).len()).unwrap_or_default();
    let lane_b = lanes.iter().copied().find(|&l| l != lane_a).unwrap_or_default();
    let mine = of_lane(&events, lane_a);
    let (Some(before), Some(moved), Some(_after)) = (mine.first(), mine.get(1), mine.get(2)) else {
        anyhow::bail!("lane {lane_a} holds {} events, too few to move one from its middle", mine.len());
    };
    let behind = of_lane(&events, lane_b).iter().map(|e| e.seq).filter(|&s| s < moved.seq).max().unwrap_or(0);
    let sql = format!("UPDATE audit_events SET lane = {lane_b} WHERE seq = {}", moved.seq);
    ensure!((rig.exec)(sql.clone()).await.is_err(), "the append-only guard let an edit through");
    (rig.exec)(rig.drop_guards.to_owned()).await?;
    (rig.exec)(sql).await?;
    let seq = broken_at(&rig.store, &[]).await?;
    let expected = before.seq.min(behind) + 1;
    ensure!(seq == expected, "reported seq {seq}, expected {expected}");
    // Moved back, the trail verifies again.
    (rig.exec)(format!("UPDATE audit_events SET lane = {lane_a} WHERE seq = {}", moved.seq)).await?;
    ensure!(intact(&rig.store).await? == events.len() as u64);
    // A lane's first event, moved to a lane of its own.
    (rig.exec)(format!("UPDATE audit_events SET lane = 424242 WHERE seq = {}", before.seq)).await?;
    ensure!(broken_at(&rig.store, &[]).await? == 1, "a lane's first event moved to a new lane went unnoticed");
    Ok(())
}

/// A lane's tail deleted is caught by the checkpoint of that lane's head,
/// at one past the last event left below it; without that checkpoint the
/// shortened lane verifies, which is why every lane's head is signed.
pub async fn a_deleted_lane_tail_is_caught_by_its_checkpoint(rig: &TamperRig) -> Result<()> {
    let events = laned_trail(rig).await?;
    // The lane whose head is oldest: no other lane's events lie between its
    // new end and the checkpoint.
    let heads = rig.store.audit_lanes().await?;
    let head = heads.iter().min_by_key(|h| h.seq).ok_or_else(|| anyhow::anyhow!("no lanes"))?;
    let below = of_lane(&events, head.lane).iter().map(|e| e.seq).filter(|&s| s < head.seq).max().unwrap_or(0);
    (rig.exec)(rig.drop_guards.to_owned()).await?;
    (rig.exec)(format!("DELETE FROM audit_events WHERE seq = {}", head.seq)).await?;
    let seq = broken_at(&rig.store, &[]).await?;
    ensure!(seq == below + 1, "reported seq {seq}, expected {}", below + 1);
    (rig.exec)(format!("DELETE FROM audit_checkpoints WHERE seq = {}", head.seq)).await?;
    ensure!(intact(&rig.store).await? == events.len() as u64 - 1, "the shortened lane should verify on its own");
    Ok(())
}
