//! Shared Signals streams and their events: events are queued by the
//! mutations of the change that causes them, only on streams of the
//! tokens' audience that take them, in `seq` order; acknowledged and
//! delivered events are forgotten; a push stream is leased to one holder
//! at a time and paused by its holder.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{Change, Mutation, Store, StoreError};
use mandate_model::ssf::{Cause, EventKind, EventSet, InitiatingEntity, Signal, Stream, StreamDelivery, StreamStatus};
use mandate_model::{ResourceId, StreamId};
use time::{Duration, OffsetDateTime};

use super::fixtures::{one, people, resource, t0, token, ulid};

fn stream(resource: ResourceId, audience: &str, delivery: StreamDelivery) -> Stream {
    Stream {
        id: StreamId::from_ulid(ulid()),
        resource,
        audience: audience.into(),
        status: StreamStatus::Enabled,
        status_reason: None,
        delivery,
        events: EventSet::all(),
        description: Some("a receiver".into()),
        created_at: t0(),
        updated_at: t0(),
        failures: 0,
        next_at: t0(),
        lease_holder: None,
        lease_until: None,
        verified_at: None,
    }
}

fn push() -> StreamDelivery {
    StreamDelivery::Push { endpoint_url: "https://rs.example/events".into(), sealed_authorization: Some(vec![1, 2]) }
}

fn cause() -> Cause {
    Cause::new(InitiatingEntity::Admin, "revoked by the admin")
}

fn signal(kind: EventKind, subject: &str, at: OffsetDateTime) -> Signal {
    Signal {
        kind,
        subject: subject.into(),
        principal: None,
        at,
        cause: cause(),
        detail: Some(r#"{"state":"s1"}"#.into()),
    }
}

/// A resource at `identifier` with a stream of `delivery`.
async fn receiver(s: &Arc<dyn Store>, identifier: &str, delivery: StreamDelivery) -> Result<Stream> {
    let r = resource(identifier);
    one(s, Mutation::InsertResource(r.clone())).await?;
    let st = stream(r.id, identifier, delivery);
    one(s, Mutation::InsertStream(st.clone())).await?;
    Ok(st)
}

pub async fn streams_round_trip_and_belong_to_their_resource(s: &Arc<dyn Store>) -> Result<()> {
    let st = receiver(s, "https://rs.example", push()).await?;
    ensure!(s.stream(st.id).await?.as_ref() == Some(&st), "the stream did not round-trip");
    ensure!(s.streams_of(st.resource).await? == vec![st.clone()], "the resource's streams");
    ensure!(
        matches!(one(s, Mutation::InsertStream(st.clone())).await, Err(StoreError::Conflict(_))),
        "a stream id twice"
    );
    let orphan = stream(ResourceId::from_ulid(ulid()), "https://nobody.example", StreamDelivery::Poll);
    ensure!(
        matches!(one(s, Mutation::InsertStream(orphan)).await, Err(StoreError::Conflict(_))),
        "a stream of a missing resource"
    );
    let mut changed = st.clone();
    changed.delivery = StreamDelivery::Poll;
    changed.events = EventSet::of([EventKind::SessionRevoked]);
    changed.description = None;
    changed.updated_at = t0() + Duration::seconds(5);
    // Status and push state are not UpdateStream's to change.
    changed.status = StreamStatus::Disabled;
    one(s, Mutation::UpdateStream(changed.clone())).await?;
    let read = s.stream(st.id).await?.ok_or_else(|| anyhow::anyhow!("the stream is gone"))?;
    ensure!(read.delivery == StreamDelivery::Poll && read.events == changed.events && read.description.is_none());
    ensure!(read.status == StreamStatus::Enabled, "UpdateStream changed the status");
    let mut other = changed.clone();
    other.resource = ResourceId::from_ulid(ulid());
    ensure!(
        matches!(one(s, Mutation::UpdateStream(other)).await, Err(StoreError::Conflict(_))),
        "another resource updated the stream"
    );
    ensure!(one(s, Mutation::DeleteStream { id: st.id }).await? == 1);
    ensure!(s.stream(st.id).await?.is_none() && s.streams_of(st.resource).await?.is_empty());
    ensure!(one(s, Mutation::DeleteStream { id: st.id }).await? == 0, "a stream deleted twice");
    Ok(())
}

pub async fn revocations_queue_session_revoked_for_their_audience(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, _, _) = people(s, "ssf@example.com").await?;
    // The fixture's tokens are for https://api.example.
    let api = receiver(s, "https://api.example", StreamDelivery::Poll).await?;
    let mut narrow = stream(api.resource, "https://api.example", StreamDelivery::Poll);
    narrow.events = EventSet::of([EventKind::CredentialChange]);
    one(s, Mutation::InsertStream(narrow.clone())).await?;
    let other = receiver(s, "https://other.example", StreamDelivery::Poll).await?;
    let t1 = token(a.id, &u.id.to_string());
    let t2 = token(a.id, &u.id.to_string());
    let mut elsewhere = token(a.id, &u.id.to_string());
    elsewhere.audience = "https://third.example".into();
    for t in [&t1, &t2, &elsewhere] {
        one(s, Mutation::InsertToken(t.clone())).await?;
    }
    let at = t0() + Duration::seconds(30);
    let mut change = Change::new();
    change.push(Mutation::RevokeTokensOfAgent { agent: a.id, at });
    let signalled = change.push(Mutation::SignalRevocations { at, cause: cause() });
    let receipt = s.commit(change).await?;
    ensure!(receipt.affected(signalled)? == 2, "two tokens of the stream's audience were revoked");
    let events = s.queued_events(api.id, 10).await?;
    ensure!(events.len() == 2, "events: {events:?}");
    let mut subjects: Vec<String> = events.iter().map(|e| e.signal.subject.clone()).collect();
    subjects.sort();
    let mut expected = vec![t1.jti.to_string(), t2.jti.to_string()];
    expected.sort();
    ensure!(subjects == expected, "the subjects are the revoked jtis");
    ensure!(events.iter().all(|e| e.signal.kind == EventKind::SessionRevoked && e.signal.at == at));
    ensure!(events.iter().all(|e| e.signal.cause == cause() && e.signal.detail.is_none()));
    // The token's `sub` is kept with the event: its SET names the person.
    let person = u.id.to_string();
    ensure!(
        events.iter().all(|e| e.signal.principal.as_deref() == Some(person.as_str())),
        "the principal is the tokens' sub: {events:?}"
    );
    ensure!(events.first().map(|e| e.seq) < events.get(1).map(|e| e.seq), "in seq order");
    ensure!(s.queued_events(narrow.id, 10).await?.is_empty(), "a stream that did not ask for session-revoked");
    ensure!(s.queued_events(other.id, 10).await?.is_empty(), "another audience's stream");
    // Signalled again, the same revocations queue nothing twice, even once
    // their events are acknowledged and gone.
    ensure!(one(s, Mutation::SignalRevocations { at, cause: cause() }).await? == 0, "an event twice");
    let seqs = events.iter().map(|e| e.seq).collect();
    ensure!(one(s, Mutation::AckEvents { stream: api.id, seqs }).await? == 2);
    ensure!(one(s, Mutation::SignalRevocations { at, cause: cause() }).await? == 0, "an acknowledged event again");
    // A token revoked later at the same time is signalled.
    let t3 = token(a.id, &u.id.to_string());
    one(s, Mutation::InsertToken(t3.clone())).await?;
    let mut change = Change::new();
    change.push(Mutation::RevokeToken { jti: t3.jti, at });
    let signalled = change.push(Mutation::SignalRevocations { at, cause: cause() });
    ensure!(s.commit(change).await?.affected(signalled)? == 1, "the later revocation at the same time");
    // A revocation at another time is not this change's.
    ensure!(one(s, Mutation::SignalRevocations { at: at + Duration::seconds(1), cause: cause() }).await? == 0);
    Ok(())
}

pub async fn events_wait_in_order_until_acknowledged(s: &Arc<dyn Store>) -> Result<()> {
    let st = receiver(s, "https://rs.example", StreamDelivery::Poll).await?;
    let other = receiver(s, "https://other.example", StreamDelivery::Poll).await?;
    for i in 0..5 {
        let sig = signal(EventKind::Verification, &format!("s{i}"), t0() + Duration::seconds(i));
        ensure!(one(s, Mutation::SignalStream { stream: st.id, signal: sig }).await? == 1);
    }
    let events = s.queued_events(st.id, 10).await?;
    ensure!(events.len() == 5 && events.windows(2).all(|w| w.first().map(|e| e.seq) < w.get(1).map(|e| e.seq)));
    ensure!(events.first().is_some_and(|e| e.signal == signal(EventKind::Verification, "s0", t0())));
    ensure!(s.queued_events(st.id, 2).await?.len() == 2, "the limit");
    // A principal round-trips, as absent ones do.
    let mut with_principal = signal(EventKind::StreamUpdated, "s5", t0());
    with_principal.principal = Some("usr_principal".into());
    ensure!(one(s, Mutation::SignalStream { stream: other.id, signal: with_principal.clone() }).await? == 1);
    let read = s.queued_events(other.id, 10).await?;
    ensure!(read.len() == 1 && read.first().map(|e| &e.signal) == Some(&with_principal), "{read:?}");
    let seqs: Vec<u64> = events.iter().take(2).map(|e| e.seq).collect();
    // Another stream cannot acknowledge them.
    ensure!(one(s, Mutation::AckEvents { stream: other.id, seqs: seqs.clone() }).await? == 0);
    ensure!(one(s, Mutation::AckEvents { stream: st.id, seqs: seqs.clone() }).await? == 2);
    ensure!(one(s, Mutation::AckEvents { stream: st.id, seqs }).await? == 0, "acknowledged twice");
    let left = s.queued_events(st.id, 10).await?;
    ensure!(left.len() == 3 && left.first().is_some_and(|e| e.signal.subject == "s2"), "the oldest left first");
    // Paused, a stream keeps its events and takes new ones; disabled, it
    // drops them and takes none.
    let pause =
        Mutation::SetStreamStatus { id: st.id, status: StreamStatus::Paused, reason: Some("r".into()), at: t0() };
    ensure!(one(s, pause).await? == 1);
    ensure!(
        one(s, Mutation::SignalStream { stream: st.id, signal: signal(EventKind::Verification, "p", t0()) }).await?
            == 1
    );
    ensure!(s.queued_events(st.id, 10).await?.len() == 4, "a paused stream lost events");
    let read = s.stream(st.id).await?.ok_or_else(|| anyhow::anyhow!("gone"))?;
    ensure!(read.status == StreamStatus::Paused && read.status_reason.as_deref() == Some("r"));
    let disable = Mutation::SetStreamStatus { id: st.id, status: StreamStatus::Disabled, reason: None, at: t0() };
    one(s, disable).await?;
    ensure!(s.queued_events(st.id, 10).await?.is_empty(), "a disabled stream kept events");
    ensure!(
        one(s, Mutation::SignalStream { stream: st.id, signal: signal(EventKind::Verification, "d", t0()) }).await?
            == 0
    );
    Ok(())
}

pub async fn holders_signals_reach_streams_of_their_live_tokens(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, b, _) = people(s, "holders@example.com").await?;
    let api = receiver(s, "https://api.example", StreamDelivery::Poll).await?;
    let quiet = receiver(s, "https://quiet.example", StreamDelivery::Poll).await?;
    let t = token(a.id, &u.id.to_string());
    one(s, Mutation::InsertToken(t.clone())).await?;
    let now = t0() + Duration::seconds(1);
    let change = signal(EventKind::CredentialChange, &a.id.to_string(), now);
    ensure!(one(s, Mutation::SignalHolders { holder: a.id.to_string(), signal: change.clone() }).await? == 1);
    // By subject, too: the person behind the token.
    let claims = signal(EventKind::TokenClaimsChange, &u.id.to_string(), now);
    ensure!(one(s, Mutation::SignalHolders { holder: u.id.to_string(), signal: claims }).await? == 1);
    ensure!(s.queued_events(api.id, 10).await?.len() == 2);
    ensure!(s.queued_events(quiet.id, 10).await?.is_empty(), "a stream of an audience the agent holds no token for");
    // An agent without live tokens reaches nobody; nor do expired tokens.
    ensure!(one(s, Mutation::SignalHolders { holder: b.id.to_string(), signal: change.clone() }).await? == 0);
    let late = signal(EventKind::CredentialChange, &a.id.to_string(), t.expires_at + Duration::seconds(1));
    ensure!(one(s, Mutation::SignalHolders { holder: a.id.to_string(), signal: late }).await? == 0);
    Ok(())
}

pub async fn push_streams_are_leased_to_one_holder_and_paused_by_it(s: &Arc<dyn Store>) -> Result<()> {
    let st = receiver(s, "https://rs.example", push()).await?;
    let poll = receiver(s, "https://poll.example", StreamDelivery::Poll).await?;
    ensure!(s.due_streams(t0(), 10).await?.is_empty(), "a stream with nothing waiting is not due");
    for id in [st.id, poll.id] {
        one(s, Mutation::SignalStream { stream: id, signal: signal(EventKind::Verification, "v", t0()) }).await?;
    }
    let due = s.due_streams(t0(), 10).await?;
    ensure!(due.iter().map(|d| d.id).collect::<Vec<_>>() == vec![st.id], "only the push stream is due: {due:?}");
    let lease = |holder: &str, now: i64| Mutation::LeaseStream {
        id: st.id,
        holder: holder.into(),
        now: t0() + Duration::seconds(now),
        until: t0() + Duration::seconds(now + 30),
    };
    one(s, lease("n1", 0)).await?;
    ensure!(matches!(one(s, lease("n2", 1)).await, Err(StoreError::Conflict(_))), "a second holder");
    ensure!(s.due_streams(t0() + Duration::seconds(1), 10).await?.is_empty(), "a leased stream is not due");
    let seq = s.queued_events(st.id, 1).await?.first().map(|e| e.seq).ok_or_else(|| anyhow::anyhow!("no event"))?;
    let finish = |holder: &str, delivered: Option<u64>, failures: u32, pause: Option<String>| Mutation::FinishPush {
        id: st.id,
        holder: holder.into(),
        delivered,
        failures,
        next_at: t0() + Duration::seconds(10),
        pause,
    };
    ensure!(
        matches!(one(s, finish("n2", Some(seq), 0, None)).await, Err(StoreError::Conflict(_))),
        "a holder without the lease finished"
    );
    one(s, finish("n1", None, 1, None)).await?;
    let read = s.stream(st.id).await?.ok_or_else(|| anyhow::anyhow!("gone"))?;
    ensure!(read.failures == 1 && read.lease_holder.is_none() && read.next_at == t0() + Duration::seconds(10));
    ensure!(s.due_streams(t0() + Duration::seconds(9), 10).await?.is_empty(), "due before its backoff passed");
    ensure!(matches!(one(s, lease("n2", 9)).await, Err(StoreError::Conflict(_))), "leased before it was due");
    // The lease expires: another holder takes over.
    one(s, lease("n2", 10)).await?;
    one(s, finish("n2", None, 5, Some("5 failed pushes".into()))).await?;
    let read = s.stream(st.id).await?.ok_or_else(|| anyhow::anyhow!("gone"))?;
    ensure!(read.status == StreamStatus::Paused && read.status_reason.as_deref() == Some("5 failed pushes"));
    ensure!(s.queued_events(st.id, 10).await?.len() == 1, "a paused stream keeps its events");
    ensure!(s.due_streams(t0() + Duration::seconds(60), 10).await?.is_empty(), "a paused stream is not due");
    ensure!(matches!(one(s, lease("n1", 60)).await, Err(StoreError::Conflict(_))), "a paused stream leased");
    // Enabled again, it is due at once, with its failures cleared.
    let at = t0() + Duration::seconds(61);
    one(s, Mutation::SetStreamStatus { id: st.id, status: StreamStatus::Enabled, reason: None, at }).await?;
    let read = s.stream(st.id).await?.ok_or_else(|| anyhow::anyhow!("gone"))?;
    ensure!(read.failures == 0 && read.next_at == at);
    ensure!(s.due_streams(at, 10).await?.len() == 1);
    one(s, lease("n1", 61)).await?;
    one(s, finish("n1", Some(seq), 0, None)).await?;
    ensure!(s.queued_events(st.id, 10).await?.is_empty(), "the delivered event is forgotten");
    Ok(())
}

pub async fn removed_subjects_stop_their_events_until_added_back(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(s, "subjects@example.com").await?;
    let api = receiver(s, "https://api.example", StreamDelivery::Poll).await?;
    // A second stream of the same audience keeps every subject.
    let all = stream(api.resource, "https://api.example", StreamDelivery::Poll);
    one(s, Mutation::InsertStream(all.clone())).await?;
    let remove = |stream: StreamId, subject: String| Mutation::RemoveStreamSubject { stream, subject };
    let add = |stream: StreamId, subject: String| Mutation::AddStreamSubject { stream, subject };
    ensure!(one(s, remove(api.id, a.id.to_string())).await? == 1);
    ensure!(one(s, remove(api.id, a.id.to_string())).await? == 0, "removed twice");
    ensure!(s.removed_subjects(api.id).await? == vec![a.id.to_string()]);
    ensure!(s.removed_subjects(all.id).await?.is_empty());
    ensure!(
        matches!(one(s, remove(StreamId::from_ulid(ulid()), "x".into())).await, Err(StoreError::Conflict(_))),
        "a subject removed from a missing stream"
    );
    // The agent's revoked token, and its credential change, reach only the
    // stream that kept the agent.
    let t1 = token(a.id, &u.id.to_string());
    one(s, Mutation::InsertToken(t1.clone())).await?;
    let at = t0() + Duration::seconds(10);
    let change = signal(EventKind::CredentialChange, &a.id.to_string(), at);
    ensure!(one(s, Mutation::SignalHolders { holder: a.id.to_string(), signal: change.clone() }).await? == 1);
    let mut revoke = Change::new();
    revoke.push(Mutation::RevokeToken { jti: t1.jti, at });
    let signalled = revoke.push(Mutation::SignalRevocations { at, cause: cause() });
    ensure!(s.commit(revoke).await?.affected(signalled)? == 1, "only the stream that kept the agent");
    ensure!(s.queued_events(api.id, 10).await?.is_empty(), "events about a removed subject were queued");
    ensure!(s.queued_events(all.id, 10).await?.len() == 2);
    // The person, the grant or the jti behind a token each stop its event.
    ensure!(one(s, add(api.id, a.id.to_string())).await? == 1);
    ensure!(one(s, add(api.id, a.id.to_string())).await? == 0, "added back twice");
    ensure!(s.removed_subjects(api.id).await?.is_empty());
    let by_person = token(b.id, &u.id.to_string());
    let mut by_grant = token(a.id, &a.id.to_string());
    by_grant.grant = Some(g.id);
    let by_jti = token(a.id, &a.id.to_string());
    let kept = token(a.id, &a.id.to_string());
    for t in [&by_person, &by_grant, &by_jti, &kept] {
        one(s, Mutation::InsertToken(t.clone())).await?;
    }
    for subject in [u.id.to_string(), g.id.to_string(), by_jti.jti.to_string()] {
        ensure!(one(s, remove(api.id, subject)).await? == 1);
    }
    let at = t0() + Duration::seconds(20);
    let mut revoke = Change::new();
    for t in [&by_person, &by_grant, &by_jti, &kept] {
        revoke.push(Mutation::RevokeToken { jti: t.jti, at });
    }
    revoke.push(Mutation::SignalRevocations { at, cause: cause() });
    s.commit(revoke).await?;
    let subjects: Vec<String> = s.queued_events(api.id, 10).await?.into_iter().map(|e| e.signal.subject).collect();
    ensure!(subjects == vec![kept.jti.to_string()], "only the token nothing was removed for: {subjects:?}");
    ensure!(s.queued_events(all.id, 10).await?.len() == 6, "the other stream took every event");
    // A stream's own events are not filtered, and the person's holder
    // signal is.
    let claims = signal(EventKind::TokenClaimsChange, &u.id.to_string(), t0());
    let t2 = token(a.id, &u.id.to_string());
    one(s, Mutation::InsertToken(t2)).await?;
    ensure!(one(s, Mutation::SignalHolders { holder: u.id.to_string(), signal: claims }).await? == 1);
    ensure!(
        one(s, Mutation::SignalStream { stream: api.id, signal: signal(EventKind::Verification, "v", t0()) }).await?
            == 1
    );
    // Deleted with the stream.
    one(s, Mutation::DeleteStream { id: api.id }).await?;
    ensure!(s.removed_subjects(api.id).await?.is_empty(), "a deleted stream kept its subjects");
    Ok(())
}

pub async fn verification_requests_are_claimed_once_per_interval(s: &Arc<dyn Store>) -> Result<()> {
    let st = receiver(s, "https://rs.example", StreamDelivery::Poll).await?;
    let claim = |at: i64| Mutation::ClaimVerification {
        stream: st.id,
        at: t0() + Duration::seconds(at),
        not_before: t0() + Duration::seconds(at - 15),
    };
    ensure!(s.stream(st.id).await?.and_then(|x| x.verified_at).is_none());
    ensure!(one(s, claim(0)).await? == 1);
    ensure!(s.stream(st.id).await?.and_then(|x| x.verified_at) == Some(t0()));
    // Too soon: the claim fails and takes the change's other writes with it.
    let mut change = Change::new();
    change.push(claim(14));
    change.push(Mutation::SignalStream { stream: st.id, signal: signal(EventKind::Verification, "v", t0()) });
    ensure!(matches!(s.commit(change).await, Err(StoreError::Conflict(_))), "a claim too soon");
    ensure!(s.queued_events(st.id, 10).await?.is_empty(), "the refused claim's event was queued");
    ensure!(s.stream(st.id).await?.and_then(|x| x.verified_at) == Some(t0()), "a refused claim moved the time");
    ensure!(one(s, claim(15)).await? == 1, "a claim once the interval passed");
    ensure!(s.stream(st.id).await?.and_then(|x| x.verified_at) == Some(t0() + Duration::seconds(15)));
    let missing = Mutation::ClaimVerification { stream: StreamId::from_ulid(ulid()), at: t0(), not_before: t0() };
    ensure!(matches!(one(s, missing).await, Err(StoreError::Conflict(_))), "a claim on a missing stream");
    Ok(())
}
