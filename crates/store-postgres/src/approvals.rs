//! Approval requests: CIBA grants and single actions, decided once.

use mandate_core::store::{Mutation, StoreError};
use mandate_model::records::Approval;
use mandate_store_sql::{self as codec, ApprovalRow, json, ts};
use sqlx::postgres::{PgConnection, PgRow};

use crate::writer::{map_write_error, misrouted};
use crate::{get, unavailable};

/// Applies one mutation of this family.
pub(crate) async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    let done = match m {
        Mutation::InsertApproval(a) => sqlx::query(
            "INSERT INTO approvals (id, agent, user_id, approver, resource, subject, binding, binding_message, status, decided_by, created_at, expires_at, decided_at, grant_id, polled_at, approver_group, required, approved_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
        )
        .bind(a.id.to_string())
        .bind(a.agent.to_string())
        .bind(a.user.to_string())
        .bind(a.approver.to_string())
        .bind(&a.resource)
        .bind(json(&a.subject)?)
        .bind(codec::approval_binding(a))
        .bind(&a.binding_message)
        .bind(a.status.as_str())
        .bind(&a.decided_by)
        .bind(ts(a.created_at)?)
        .bind(ts(a.expires_at)?)
        .bind(a.decided_at.map(ts).transpose()?)
        .bind(a.grant.map(|g| g.to_string()))
        .bind(a.polled_at.map(ts).transpose()?)
        .bind(&a.group)
        .bind(i64::from(a.required))
        .bind(json(&a.approved_by)?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "approval"))?,
        Mutation::DecideApproval { id, to, by, grant, at } => {
            let r = sqlx::query(
                "UPDATE approvals SET status = $1, decided_by = $2, decided_at = $3, grant_id = COALESCE($4, grant_id) \
                 WHERE id = $5 AND status = 'pending' AND expires_at > $3",
            )
            .bind(to.as_str())
            .bind(by)
            .bind(ts(*at)?)
            .bind(grant.map(|g| g.to_string()))
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "approval"))?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("approval {id} is no longer pending")));
            }
            r
        }
        Mutation::CountApproval { id, seen, by, at } => {
            let mut after = seen.clone();
            after.push(*by);
            // Concurrent updates of the row wait for each other; the later
            // one re-reads `approved_by`, finds it changed, and counts nothing.
            let r = sqlx::query(
                "UPDATE approvals SET approved_by = $1 \
                 WHERE id = $2 AND status = 'pending' AND expires_at > $3 AND approved_by = $4 \
                 AND EXISTS (SELECT 1 FROM users WHERE id = $5)",
            )
            .bind(json(&after)?)
            .bind(id.to_string())
            .bind(ts(*at)?)
            .bind(json(seen)?)
            .bind(by.to_string())
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "approval"))?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("approval {id} was decided meanwhile")));
            }
            r
        }
        Mutation::ConsumeApproval { id, at } => {
            let r = sqlx::query(
                "UPDATE approvals SET status = 'consumed' WHERE id = $1 AND status = 'approved' AND expires_at > $2",
            )
            .bind(id.to_string())
            .bind(ts(*at)?)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("approval {id} was already used")));
            }
            r
        }
        Mutation::PollApproval { id, at } => sqlx::query("UPDATE approvals SET polled_at = $1 WHERE id = $2")
            .bind(ts(*at)?)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        other => return Err(misrouted(other)),
    };
    Ok(done.rows_affected())
}

pub(crate) fn approval_row(r: &PgRow) -> Result<Approval, StoreError> {
    Approval::try_from(ApprovalRow {
        id: get(r, "id")?,
        agent: get(r, "agent")?,
        user_id: get(r, "user_id")?,
        approver: get(r, "approver")?,
        resource: get(r, "resource")?,
        subject: get(r, "subject")?,
        binding_message: get(r, "binding_message")?,
        status: get(r, "status")?,
        decided_by: get(r, "decided_by")?,
        created_at: get(r, "created_at")?,
        expires_at: get(r, "expires_at")?,
        decided_at: get(r, "decided_at")?,
        grant_id: get(r, "grant_id")?,
        polled_at: get(r, "polled_at")?,
        approver_group: get(r, "approver_group")?,
        required: get(r, "required")?,
        approved_by: get(r, "approved_by")?,
    })
}
