//! The audit trail: events numbered, linked and hashed in commit order,
//! landing with their change or not at all, counting what their change
//! reached; checkpoints; query filters.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_audit::{Checkpoint, Event};
use mandate_core::audit::{AuditQuery, AuditRecord};
use mandate_core::store::{Change, Mutation, Store, StoreError};
use mandate_model::records::ClientId;

use super::fixtures::{agent, all_events, append, event, intact, one, t0, token, user};

pub async fn audit_events_chain_in_commit_order(s: &Arc<dyn Store>) -> Result<()> {
    ensure!(s.audit_head().await?.is_none());
    ensure!(intact(s).await? == 0);
    let mut full = event("token.issued", "agt_x");
    full.subject = Some("usr_x".into());
    full.client_id = Some("agt_x".into());
    full.action = Some("read".into());
    full.resource = Some("https://api.example".into());
    full.scope = Some("read write".into());
    full.jti = Some("tok_x".into());
    full.grant_id = Some("grt_x".into());
    full.parent = Some("tok_p".into());
    full.reason = Some("quotes ' \" and \u{e9}\u{1F600} survive".into());
    full.request_id = Some("req-1".into());
    full.chain = vec!["usr_x".into(), "agt_a".into(), "agt_x".into()];
    for i in 0..5 {
        let mut e = full.clone();
        e.jti = Some(format!("tok_{i}"));
        one(s, append(e)).await?;
    }
    let events = all_events(s).await?;
    ensure!(events.iter().map(|e| e.seq).collect::<Vec<_>>() == vec![1, 2, 3, 4, 5], "seqs are not 1..5");
    let mut expected = full.clone();
    expected.jti = Some("tok_0".into());
    let first = events.first().cloned().unwrap_or_else(|| event("?", "?"));
    expected.lane = first.lane;
    ensure!(
        Event { seq: 0, prev_hash: String::new(), hash: String::new(), ..first.clone() } == expected,
        "event did not round-trip: {first:?}"
    );
    // Each lane (one per writer; a single-writer store has only lane 0)
    // starts at its genesis and links event to event in seq order.
    let mut lanes: std::collections::BTreeMap<u64, String> = std::collections::BTreeMap::new();
    for e in &events {
        let prev = lanes.entry(e.lane).or_insert_with(|| mandate_audit::lane_genesis(e.lane));
        ensure!(e.prev_hash == *prev, "seq {} does not link to the previous event of lane {}", e.seq, e.lane);
        prev.clone_from(&e.hash);
    }
    let heads = s.audit_lanes().await?;
    ensure!(heads.len() == lanes.len(), "audit_lanes lists {} lanes, the events have {}", heads.len(), lanes.len());
    for h in &heads {
        ensure!(lanes.get(&h.lane) == Some(&h.hash) && !h.checkpointed, "lane head {h:?}");
    }
    ensure!(s.audit_head().await? == events.last().map(|e| (e.seq, e.hash.clone())));
    ensure!(intact(s).await? == 5);
    // A lane's events, and no other's, by the lane filter.
    for &lane in lanes.keys() {
        let mine = s.audit_events(&AuditQuery { lane: Some(lane), ..AuditQuery::page(0) }).await?;
        let expected: Vec<u64> = events.iter().filter(|e| e.lane == lane).map(|e| e.seq).collect();
        ensure!(mine.iter().map(|e| e.seq).collect::<Vec<_>>() == expected, "lane {lane} reads {mine:?}");
    }
    ensure!(s.audit_events(&AuditQuery { lane: Some(1 << 40), ..AuditQuery::page(0) }).await?.is_empty());
    // A checkpoint at a lane's head marks it vouched for.
    for h in &heads {
        let cp =
            Checkpoint { seq: h.seq, hash: h.hash.clone(), time: "t".into(), kid: "k".into(), signature: "s".into() };
        one(s, Mutation::InsertCheckpoint(cp)).await?;
    }
    ensure!(s.audit_lanes().await?.iter().all(|h| h.checkpointed), "a checkpointed head is not marked");
    Ok(())
}

pub async fn an_audit_event_lands_with_its_change_or_not_at_all(s: &Arc<dyn Store>) -> Result<()> {
    let u = user("audit@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    let a = agent(u.id, None);
    one(s, Mutation::InsertAgent(a.clone())).await?;
    let client = ClientId::Agent(a.id);
    let burn = || Mutation::ConsumeAssertionJti { client, jti: "once".into(), expires_at: t0() };
    s.commit(Change::new().with(burn()).with(append(event("token.issued", "agt_1")))).await?;
    // Refused on its first write: nothing, not even the event, is kept.
    let refused = s.commit(Change::new().with(burn()).with(append(event("token.issued", "agt_2")))).await;
    ensure!(matches!(refused, Err(StoreError::Replay)), "replay accepted: {refused:?}");
    // Refused after writing: the token and the event are undone together.
    let t = token(a.id, "x");
    let late = s
        .commit(
            Change::new()
                .with(Mutation::InsertToken(t.clone()))
                .with(append(event("token.issued", "agt_3")))
                .with(burn()),
        )
        .await;
    ensure!(matches!(late, Err(StoreError::Replay)), "late replay accepted: {late:?}");
    ensure!(s.token(t.jti).await?.is_none(), "a token from a refused change was written");
    // The same, batched with changes that succeed: they keep their events
    // and the chain has no gap.
    let good = token(a.id, "y");
    let (r1, r2, r3) = tokio::join!(
        s.commit(
            Change::new()
                .with(Mutation::InsertToken(token(a.id, "z")))
                .with(append(event("token.issued", "agt_4")))
                .with(burn())
        ),
        s.commit(Change::new().with(Mutation::InsertToken(good.clone())).with(append(event("token.issued", "agt_5")))),
        s.commit(Change::new().with(append(event("token.denied", "agt_6")))),
    );
    ensure!(matches!(r1, Err(StoreError::Replay)) && r2.is_ok() && r3.is_ok(), "{r1:?} {r2:?} {r3:?}");
    let actors: Vec<String> = all_events(s).await?.into_iter().filter_map(|e| e.actor).collect();
    let mut sorted = actors.clone();
    sorted.sort();
    ensure!(sorted == ["agt_1", "agt_5", "agt_6"], "events kept: {actors:?}");
    ensure!(intact(s).await? == 3);
    Ok(())
}

pub async fn audit_events_count_what_their_change_reached(s: &Arc<dyn Store>) -> Result<()> {
    let u = user("count@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    let a = agent(u.id, None);
    one(s, Mutation::InsertAgent(a.clone())).await?;
    for _ in 0..3 {
        one(s, Mutation::InsertToken(token(a.id, "x"))).await?;
    }
    // The record counts the second revocation, which reaches nothing, and
    // the first, put first after the record was written: handles, not
    // positions, say what is counted.
    let mut change = Change::new();
    let second = change.push(Mutation::RevokeTokensOfAgent { agent: a.id, at: t0() });
    change.push(AuditRecord::counting(event("agent.suspended", "admin"), &[second]).mutation());
    let first = change.prepend(Mutation::RevokeTokensOfAgent { agent: a.id, at: t0() });
    let both = change.push(AuditRecord::counting(event("agent.suspended", "admin"), &[first, second]).mutation());
    // A record that counts nothing keeps the count its event carries.
    let mut preset = event("token.denied", "agt_x");
    preset.count = Some(7);
    change.push(AuditRecord::new(preset).mutation());
    let receipt = s.commit(change).await?;
    ensure!(receipt.affected(first)? == 3 && receipt.affected(second)? == 0, "{receipt:?}");
    let events = all_events(s).await?;
    let counts: Vec<Option<u64>> = events.iter().map(|e| e.count).collect();
    ensure!(counts == vec![Some(0), Some(3), Some(7)], "counts: {counts:?}");
    ensure!(receipt.affected(both)? == 2, "the second event's seq");
    ensure!(intact(s).await? == 3);
    Ok(())
}

/// A record that counts the mutation after it (the second of its change,
/// named by a handle from a change built the same way): the change fails
/// and writes nothing, rather than count what it cannot. The same
/// mutations with the record last commit, so the refusal is about the
/// order and nothing else.
pub async fn a_count_of_a_later_mutation_fails_its_change(s: &Arc<dyn Store>) -> Result<()> {
    let u = user("later@example.com");
    let mut shape = Change::new();
    shape.push(Mutation::PurgeExpiredJtis { before: t0() });
    let second = shape.push(Mutation::PurgeExpiredJtis { before: t0() });
    let mut bad = Change::new();
    bad.push(AuditRecord::counting(event("user.created", "admin"), &[second]).mutation());
    bad.push(Mutation::InsertUser(u.clone()));
    let before = all_events(s).await?.len();
    ensure!(s.commit(bad).await.is_err(), "an event counting what comes after it was kept");
    ensure!(s.user(u.id).await?.is_none(), "the failed change wrote its user");
    ensure!(all_events(s).await?.len() == before, "the failed change wrote its event");
    let mut good = Change::new();
    let inserted = good.push(Mutation::InsertUser(u.clone()));
    good.push(AuditRecord::counting(event("user.created", "admin"), &[inserted]).mutation());
    s.commit(good).await?;
    ensure!(s.user(u.id).await?.is_some(), "the well-ordered change did not write its user");
    ensure!(all_events(s).await?.last().and_then(|e| e.count) == Some(1), "the well-ordered change's count");
    Ok(())
}

pub async fn appends_report_their_seq(s: &Arc<dyn Store>) -> Result<()> {
    let before = s.audit_head().await?.map(|(seq, _)| seq).unwrap_or(0);
    let event = Event::new("test.seq", "2026-01-01T00:00:00.000000000Z");
    let appended = one(s, AuditRecord::new(event.clone()).mutation()).await?;
    ensure!(appended == before + 1, "append reported {appended}");
    let (r1, r2) =
        tokio::join!(one(s, AuditRecord::new(event.clone()).mutation()), one(s, AuditRecord::new(event).mutation()));
    let mut seqs: Vec<u64> = vec![r1?, r2?];
    seqs.sort_unstable();
    ensure!(seqs == vec![before + 2, before + 3], "concurrent appends reported {seqs:?}");
    Ok(())
}

pub async fn checkpoints_are_kept_once_per_seq(s: &Arc<dyn Store>) -> Result<()> {
    ensure!(s.last_audit_checkpoint().await?.is_none());
    let cp = |seq: u64, sig: &str| Checkpoint {
        seq,
        hash: format!("{seq:064x}"),
        time: "2026-11-23T10:00:00.000000Z".into(),
        kid: "a1".into(),
        signature: sig.into(),
    };
    for seq in [20, 10, 30] {
        ensure!(one(s, Mutation::InsertCheckpoint(cp(seq, "first"))).await? == 1);
    }
    ensure!(one(s, Mutation::InsertCheckpoint(cp(20, "second"))).await? == 0, "a second checkpoint at one seq");
    ensure!(s.audit_checkpoints(10, 1).await? == vec![cp(20, "first")]);
    ensure!(s.audit_checkpoints(0, 10).await?.iter().map(|c| c.seq).collect::<Vec<_>>() == vec![10, 20, 30]);
    ensure!(s.audit_checkpoints(30, 10).await?.is_empty());
    ensure!(s.last_audit_checkpoint().await? == Some(cp(30, "first")));
    Ok(())
}

pub async fn audit_queries_filter_and_page(s: &Arc<dyn Store>) -> Result<()> {
    for i in 0..30u32 {
        let mut e = event(if i % 3 == 0 { "token.denied" } else { "token.issued" }, &format!("agt_{}", i % 2));
        e.subject = Some(format!("usr_{}", i % 5));
        e.jti = Some(format!("tok_{i}"));
        e.grant_id = (i < 10).then(|| "grt_a".to_owned());
        e.parent = (i == 7).then(|| "tok_3".to_owned());
        e.resource = Some(if i == 9 { "https://b.example".into() } else { "https://a.example".into() });
        e.time = format!("2026-11-23T10:00:{i:02}.000000Z");
        one(s, append(e)).await?;
    }
    let q = |f: fn(&mut AuditQuery)| {
        let mut q = AuditQuery::page(0);
        f(&mut q);
        q
    };
    let seqs = |v: Vec<Event>| v.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    ensure!(seqs(s.audit_events(&q(|q| q.actor = Some("agt_1".into()))).await?).len() == 15);
    ensure!(seqs(s.audit_events(&q(|q| q.subject = Some("usr_4".into()))).await?) == vec![5, 10, 15, 20, 25, 30]);
    ensure!(seqs(s.audit_events(&q(|q| q.jti = Some("tok_12".into()))).await?) == vec![13]);
    ensure!(s.audit_events(&q(|q| q.grant = Some("grt_a".into()))).await?.len() == 10);
    ensure!(s.audit_events(&q(|q| q.kind = Some("token.denied".into()))).await?.len() == 10);
    ensure!(seqs(s.audit_events(&q(|q| q.parent = Some("tok_3".into()))).await?) == vec![8]);
    ensure!(seqs(s.audit_events(&q(|q| q.resource = Some("https://b.example".into()))).await?) == vec![10]);
    ensure!(
        seqs(s.audit_events(&q(|q| q.since = Some("2026-11-23T10:00:27.000000Z".into()))).await?) == vec![28, 29, 30]
    );
    let both = q(|q| {
        q.actor = Some("agt_0".into());
        q.kind = Some("token.denied".into());
        q.after = 10;
        q.limit = 2;
    });
    ensure!(seqs(s.audit_events(&both).await?) == vec![13, 19]);
    ensure!(seqs(s.audit_events(&q(|q| q.after = 28)).await?) == vec![29, 30]);
    ensure!(s.audit_events(&q(|q| q.limit = 0)).await?.is_empty(), "a limit of 0 returns nothing");
    // Hostile filter values are only ever bound, never spliced.
    let hostile = q(|q| q.actor = Some("x' OR '1'='1".into()));
    ensure!(s.audit_events(&hostile).await?.is_empty());
    Ok(())
}
