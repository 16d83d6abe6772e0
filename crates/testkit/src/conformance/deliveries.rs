//! CIBA delivery registrations and callbacks, and the outbox: an item is
//! attempted under a lease by one holder at a time, its outcome recorded
//! only by that holder, and it is never due again once delivered or
//! failed.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{Mutation, Store, StoreError};
use mandate_model::ApprovalId;
use mandate_model::delivery::{Backchannel, CibaCallback, Delivery, DeliveryMode, DeliveryStatus};
use time::Duration;

use super::fixtures::{agent, one, pending_grant_approval, people, t0, ulid};

fn delivery(about: &str, due_in: i64) -> Delivery {
    Delivery {
        id: format!("dlv_{}", ulid()),
        channel: "ciba.ping".into(),
        about: about.into(),
        target: "https://agent.example/cb".into(),
        sealed: vec![0, 1, 2, 255],
        status: DeliveryStatus::Pending,
        attempts: 0,
        next_at: t0() + Duration::seconds(due_in),
        lease_holder: None,
        lease_until: None,
        created_at: t0(),
        last_error: None,
    }
}

fn lease(id: &str, holder: &str, now: i64) -> Mutation {
    Mutation::LeaseDelivery {
        id: id.into(),
        holder: holder.into(),
        now: t0() + Duration::seconds(now),
        until: t0() + Duration::seconds(now + 60),
    }
}

fn finish(id: &str, holder: &str, status: DeliveryStatus, attempts: u32, next_in: i64) -> Mutation {
    Mutation::FinishDelivery {
        id: id.into(),
        holder: holder.into(),
        status,
        attempts,
        next_at: t0() + Duration::seconds(next_in),
        error: (status != DeliveryStatus::Delivered).then(|| "HTTP 500".to_owned()),
    }
}

pub async fn backchannels_and_callbacks_round_trip(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(s, "bc@example.com").await?;
    let ping = Backchannel { mode: DeliveryMode::Ping, endpoint: Some("https://a.example/cb".into()) };
    ensure!(s.backchannel(a.id).await?.is_none());
    one(s, Mutation::SetBackchannel { agent: a.id, backchannel: ping.clone() }).await?;
    ensure!(s.backchannel(a.id).await? == Some(ping), "the backchannel did not round-trip");
    let poll = Backchannel { mode: DeliveryMode::Poll, endpoint: None };
    one(s, Mutation::SetBackchannel { agent: a.id, backchannel: poll.clone() }).await?;
    ensure!(s.backchannel(a.id).await? == Some(poll), "the backchannel was not replaced");
    ensure!(s.backchannel(b.id).await?.is_none(), "another agent's backchannel");
    let stranger = agent(u.id, None);
    let missing = Mutation::SetBackchannel { agent: stranger.id, backchannel: Backchannel::default() };
    ensure!(matches!(one(s, missing).await, Err(StoreError::Conflict(_))), "a backchannel for a missing agent");
    let approval = pending_grant_approval(&u, &a, &g);
    let callback = CibaCallback {
        approval: approval.id,
        agent: a.id,
        mode: DeliveryMode::Push,
        endpoint: "https://a.example/cb".into(),
        sealed_token: vec![9, 0, 8, 7],
    };
    ensure!(
        matches!(one(s, Mutation::InsertCibaCallback(callback.clone())).await, Err(StoreError::Conflict(_))),
        "a callback for a missing approval"
    );
    one(s, Mutation::InsertApproval(approval.clone())).await?;
    one(s, Mutation::InsertCibaCallback(callback.clone())).await?;
    ensure!(s.ciba_callback(approval.id).await? == Some(callback.clone()), "the callback did not round-trip");
    ensure!(
        matches!(one(s, Mutation::InsertCibaCallback(callback)).await, Err(StoreError::Conflict(_))),
        "a second callback for one request"
    );
    ensure!(s.ciba_callback(ApprovalId::from_ulid(ulid())).await?.is_none());
    Ok(())
}

pub async fn deliveries_are_leased_to_one_holder_at_a_time(s: &Arc<dyn Store>) -> Result<()> {
    let first = delivery("apr_x", 0);
    let later = delivery("apr_x", 30);
    let other = delivery("apr_y", 5);
    for d in [&first, &later, &other] {
        one(s, Mutation::InsertDelivery(d.clone())).await?;
    }
    ensure!(
        matches!(one(s, Mutation::InsertDelivery(first.clone())).await, Err(StoreError::Conflict(_))),
        "a duplicate delivery"
    );
    let due = |at: i64| async move {
        s.due_deliveries(t0() + Duration::seconds(at), 10)
            .await
            .map(|v| v.into_iter().map(|d| d.id).collect::<Vec<_>>())
    };
    ensure!(due(0).await? == vec![first.id.clone()], "only what is due, at its time");
    ensure!(due(10).await? == vec![first.id.clone(), other.id.clone()], "oldest due first");
    ensure!(s.due_deliveries(t0() + Duration::seconds(10), 1).await?.len() == 1, "the limit");
    ensure!(s.deliveries_about("apr_x").await? == vec![first.clone(), later.clone()], "deliveries did not round-trip");
    // Not before it is due; then one holder at a time.
    ensure!(matches!(one(s, lease(&later.id, "n1", 0)).await, Err(StoreError::Conflict(_))), "leased before due");
    one(s, lease(&first.id, "n1", 0)).await?;
    ensure!(matches!(one(s, lease(&first.id, "n2", 1)).await, Err(StoreError::Conflict(_))), "leased twice");
    ensure!(due(10).await? == vec![other.id.clone()], "a leased item is not due");
    ensure!(
        matches!(one(s, finish(&first.id, "n2", DeliveryStatus::Delivered, 1, 0)).await, Err(StoreError::Conflict(_))),
        "finished by a node that does not hold the lease"
    );
    // A retry: pending again, due later, lease released.
    one(s, finish(&first.id, "n1", DeliveryStatus::Pending, 1, 20)).await?;
    let got = s.deliveries_about("apr_x").await?;
    let again = got.iter().find(|d| d.id == first.id);
    ensure!(
        again.map(|d| (d.status, d.attempts, d.next_at, d.lease_holder.clone(), d.last_error.clone()))
            == Some((DeliveryStatus::Pending, 1, t0() + Duration::seconds(20), None, Some("HTTP 500".into()))),
        "the retry did not round-trip: {again:?}"
    );
    ensure!(matches!(one(s, lease(&first.id, "n1", 19)).await, Err(StoreError::Conflict(_))), "leased before retry");
    // A lease that ran out passes to another node, and the first can no
    // longer record an outcome.
    one(s, lease(&first.id, "n1", 20)).await?;
    one(s, lease(&first.id, "n2", 80)).await?;
    ensure!(
        matches!(one(s, finish(&first.id, "n1", DeliveryStatus::Delivered, 2, 0)).await, Err(StoreError::Conflict(_))),
        "an expired lease's holder recorded an outcome"
    );
    one(s, finish(&first.id, "n2", DeliveryStatus::Delivered, 2, 80)).await?;
    ensure!(matches!(one(s, lease(&first.id, "n1", 500)).await, Err(StoreError::Conflict(_))), "delivered twice");
    ensure!(
        matches!(one(s, finish(&first.id, "n2", DeliveryStatus::Failed, 3, 0)).await, Err(StoreError::Conflict(_))),
        "a finished item changed"
    );
    // A failed item is never due again.
    one(s, lease(&other.id, "n1", 5)).await?;
    one(s, finish(&other.id, "n1", DeliveryStatus::Failed, 6, 5)).await?;
    ensure!(due(1000).await? == vec![later.id.clone()], "a delivered or failed item is due");
    let done = s.deliveries_about("apr_y").await?;
    ensure!(done.first().map(|d| (d.status, d.attempts)) == Some((DeliveryStatus::Failed, 6)));
    Ok(())
}

/// Nodes racing for one item: exactly one gets the lease.
pub async fn concurrent_leases_admit_one(s: &Arc<dyn Store>) -> Result<()> {
    let d = delivery("apr_race", 0);
    one(s, Mutation::InsertDelivery(d.clone())).await?;
    let mut tasks = Vec::new();
    for n in 0..8 {
        let (s, id) = (s.clone(), d.id.clone());
        tasks.push(tokio::spawn(async move { one(&s, lease(&id, &format!("node{n}"), 1)).await }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await? {
            Ok(_) => won += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    ensure!(won == 1, "{won} nodes leased one item");
    Ok(())
}
