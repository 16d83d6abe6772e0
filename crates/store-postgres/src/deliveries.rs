//! CIBA delivery modes and callbacks, and the outbox: items are claimed
//! for an attempt under a lease, by a conditional update (a concurrent
//! claim waits on the row's lock and then finds it leased), so that two
//! nodes never attempt one item at once.

use mandate_core::store::{Mutation, StoreError};
use mandate_model::delivery::{Backchannel, CibaCallback, Delivery};
use mandate_store_sql::{CallbackRow, DeliveryRow, ts};
use sqlx::postgres::{PgConnection, PgRow};

use crate::get;
use crate::writer::{map_write_error, misrouted};

/// Applies one mutation of this family.
pub(crate) async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    let done = match m {
        Mutation::SetBackchannel { agent, backchannel } => sqlx::query(
            "INSERT INTO agent_backchannel (agent, mode, endpoint) VALUES ($1, $2, $3) \
             ON CONFLICT (agent) DO UPDATE SET mode = excluded.mode, endpoint = excluded.endpoint",
        )
        .bind(agent.to_string())
        .bind(backchannel.mode.as_str())
        .bind(&backchannel.endpoint)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "backchannel"))?,
        Mutation::InsertCibaCallback(c) => sqlx::query(
            "INSERT INTO ciba_callbacks (approval, agent, mode, endpoint, sealed_token) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(c.approval.to_string())
        .bind(c.agent.to_string())
        .bind(c.mode.as_str())
        .bind(&c.endpoint)
        .bind(&c.sealed_token)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "CIBA callback"))?,
        Mutation::InsertDelivery(d) => sqlx::query(
            "INSERT INTO deliveries (id, channel, about, target, sealed, status, attempts, next_at, lease_holder, lease_until, created_at, last_error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&d.id)
        .bind(&d.channel)
        .bind(&d.about)
        .bind(&d.target)
        .bind(&d.sealed)
        .bind(d.status.as_str())
        .bind(i64::from(d.attempts))
        .bind(ts(d.next_at)?)
        .bind(&d.lease_holder)
        .bind(d.lease_until.map(ts).transpose()?)
        .bind(ts(d.created_at)?)
        .bind(&d.last_error)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "delivery"))?,
        Mutation::LeaseDelivery { id, holder, now, until } => {
            let r = sqlx::query(
                "UPDATE deliveries SET lease_holder = $1, lease_until = $2 WHERE id = $3 AND status = 'pending' \
                 AND next_at <= $4 AND (lease_until IS NULL OR lease_until <= $4)",
            )
            .bind(holder)
            .bind(ts(*until)?)
            .bind(id)
            .bind(ts(*now)?)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "delivery"))?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("delivery {id} is not due or is leased")));
            }
            r
        }
        Mutation::FinishDelivery { id, holder, status, attempts, next_at, error } => {
            let r = sqlx::query(
                "UPDATE deliveries SET status = $1, attempts = $2, next_at = $3, last_error = $4, lease_holder = NULL, lease_until = NULL \
                 WHERE id = $5 AND status = 'pending' AND lease_holder = $6",
            )
            .bind(status.as_str())
            .bind(i64::from(*attempts))
            .bind(ts(*next_at)?)
            .bind(error)
            .bind(id)
            .bind(holder)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "delivery"))?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("delivery {id} is not leased to {holder}")));
            }
            r
        }
        other => return Err(misrouted(other)),
    };
    Ok(done.rows_affected())
}

pub(crate) fn delivery_row(r: &PgRow) -> Result<Delivery, StoreError> {
    Delivery::try_from(DeliveryRow {
        id: get(r, "id")?,
        channel: get(r, "channel")?,
        about: get(r, "about")?,
        target: get(r, "target")?,
        sealed: get(r, "sealed")?,
        status: get(r, "status")?,
        attempts: get(r, "attempts")?,
        next_at: get(r, "next_at")?,
        lease_holder: get(r, "lease_holder")?,
        lease_until: get(r, "lease_until")?,
        created_at: get(r, "created_at")?,
        last_error: get(r, "last_error")?,
    })
}

pub(crate) fn callback_row(r: &PgRow) -> Result<CibaCallback, StoreError> {
    CibaCallback::try_from(CallbackRow {
        approval: get(r, "approval")?,
        agent: get(r, "agent")?,
        mode: get(r, "mode")?,
        endpoint: get(r, "endpoint")?,
        sealed_token: get(r, "sealed_token")?,
    })
}

pub(crate) fn backchannel_row(r: &PgRow) -> Result<Backchannel, StoreError> {
    mandate_store_sql::backchannel(&get::<String>(r, "mode")?, get(r, "endpoint")?)
}
