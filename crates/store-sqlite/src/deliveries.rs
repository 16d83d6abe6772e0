//! CIBA delivery modes and callbacks, and the outbox: items are claimed
//! for an attempt under a lease, by a conditional update, so that two
//! attempts of one item never overlap.

use mandate_core::store::{Mutation, StoreError};
use mandate_model::delivery::{CibaCallback, Delivery};
use mandate_store_sql::{CallbackRow, DeliveryRow, ts};
use rusqlite::{Connection, Row, params};

use crate::readers::Mapped;
use crate::writer::exec;

/// Applies one mutation of this family.
pub(crate) fn apply(conn: &Connection, m: &Mutation) -> Result<u64, StoreError> {
    match m {
        Mutation::SetBackchannel { agent, backchannel } => exec(
            conn,
            "INSERT INTO agent_backchannel (agent, mode, endpoint) VALUES (?1, ?2, ?3) \
             ON CONFLICT (agent) DO UPDATE SET mode = excluded.mode, endpoint = excluded.endpoint",
            params![agent.to_string(), backchannel.mode.as_str(), backchannel.endpoint],
            "backchannel",
        ),
        Mutation::InsertCibaCallback(c) => exec(
            conn,
            "INSERT INTO ciba_callbacks (approval, agent, mode, endpoint, sealed_token) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![c.approval.to_string(), c.agent.to_string(), c.mode.as_str(), c.endpoint, c.sealed_token],
            "CIBA callback",
        ),
        Mutation::InsertDelivery(d) => exec(
            conn,
            "INSERT INTO deliveries (id, channel, about, target, sealed, status, attempts, next_at, lease_holder, lease_until, created_at, last_error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                d.id,
                d.channel,
                d.about,
                d.target,
                d.sealed,
                d.status.as_str(),
                i64::from(d.attempts),
                ts(d.next_at)?,
                d.lease_holder,
                d.lease_until.map(ts).transpose()?,
                ts(d.created_at)?,
                d.last_error,
            ],
            "delivery",
        ),
        Mutation::LeaseDelivery { id, holder, now, until } => {
            let n = exec(
                conn,
                "UPDATE deliveries SET lease_holder = ?1, lease_until = ?2 WHERE id = ?3 AND status = 'pending' \
                 AND next_at <= ?4 AND (lease_until IS NULL OR lease_until <= ?4)",
                params![holder, ts(*until)?, id, ts(*now)?],
                "delivery",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("delivery {id} is not due or is leased")));
            }
            Ok(n)
        }
        Mutation::FinishDelivery { id, holder, status, attempts, next_at, error } => {
            let n = exec(
                conn,
                "UPDATE deliveries SET status = ?1, attempts = ?2, next_at = ?3, last_error = ?4, lease_holder = NULL, lease_until = NULL \
                 WHERE id = ?5 AND status = 'pending' AND lease_holder = ?6",
                params![status.as_str(), i64::from(*attempts), ts(*next_at)?, error, id, holder],
                "delivery",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("delivery {id} is not leased to {holder}")));
            }
            Ok(n)
        }
        other => Err(crate::writer::misrouted(other)),
    }
}

pub(crate) fn delivery_row(r: &Row<'_>) -> Mapped<Delivery> {
    Ok(Delivery::try_from(DeliveryRow {
        id: r.get("id")?,
        channel: r.get("channel")?,
        about: r.get("about")?,
        target: r.get("target")?,
        sealed: r.get("sealed")?,
        status: r.get("status")?,
        attempts: r.get("attempts")?,
        next_at: r.get("next_at")?,
        lease_holder: r.get("lease_holder")?,
        lease_until: r.get("lease_until")?,
        created_at: r.get("created_at")?,
        last_error: r.get("last_error")?,
    }))
}

pub(crate) fn callback_row(r: &Row<'_>) -> Mapped<CibaCallback> {
    Ok(CibaCallback::try_from(CallbackRow {
        approval: r.get("approval")?,
        agent: r.get("agent")?,
        mode: r.get("mode")?,
        endpoint: r.get("endpoint")?,
        sealed_token: r.get("sealed_token")?,
    }))
}

pub(crate) fn backchannel_row(r: &Row<'_>) -> Mapped<mandate_model::delivery::Backchannel> {
    Ok(mandate_store_sql::backchannel(&r.get::<_, String>("mode")?, r.get("endpoint")?))
}
