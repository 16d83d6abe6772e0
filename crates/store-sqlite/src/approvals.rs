//! Approval requests: CIBA grants and single actions, decided once.

use mandate_core::store::{Mutation, StoreError};
use mandate_model::records::Approval;
use mandate_store_sql::{self as codec, ApprovalRow, json, ts};
use rusqlite::{Connection, Row, params};

use crate::readers::Mapped;
use crate::writer::exec;

/// Applies one mutation of this family.
pub(crate) fn apply(conn: &Connection, m: &Mutation) -> Result<u64, StoreError> {
    match m {
        Mutation::InsertApproval(a) => exec(
            conn,
            "INSERT INTO approvals (id, agent, user_id, approver, resource, subject, binding, binding_message, status, decided_by, created_at, expires_at, decided_at, grant_id, polled_at, approver_group, required, approved_by) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            params![
                a.id.to_string(),
                a.agent.to_string(),
                a.user.to_string(),
                a.approver.to_string(),
                a.resource,
                json(&a.subject)?,
                codec::approval_binding(a),
                a.binding_message,
                a.status.as_str(),
                a.decided_by,
                ts(a.created_at)?,
                ts(a.expires_at)?,
                a.decided_at.map(ts).transpose()?,
                a.grant.map(|g| g.to_string()),
                a.polled_at.map(ts).transpose()?,
                a.group,
                i64::from(a.required),
                json(&a.approved_by)?,
            ],
            "approval",
        ),
        Mutation::DecideApproval { id, to, by, grant, at } => {
            let n = exec(
                conn,
                "UPDATE approvals SET status = ?1, decided_by = ?2, decided_at = ?3, grant_id = COALESCE(?4, grant_id) \
                 WHERE id = ?5 AND status = 'pending' AND expires_at > ?3",
                params![to.as_str(), by, ts(*at)?, grant.map(|g| g.to_string()), id.to_string()],
                "approval",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("approval {id} is no longer pending")));
            }
            Ok(n)
        }
        Mutation::CountApproval { id, seen, by, at } => {
            let mut after = seen.clone();
            after.push(*by);
            let n = exec(
                conn,
                "UPDATE approvals SET approved_by = ?1 \
                 WHERE id = ?2 AND status = 'pending' AND expires_at > ?3 AND approved_by = ?4 \
                 AND EXISTS (SELECT 1 FROM users WHERE id = ?5)",
                params![json(&after)?, id.to_string(), ts(*at)?, json(seen)?, by.to_string()],
                "approval",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("approval {id} was decided meanwhile")));
            }
            Ok(n)
        }
        Mutation::ConsumeApproval { id, at } => {
            let n = exec(
                conn,
                "UPDATE approvals SET status = 'consumed' WHERE id = ?1 AND status = 'approved' AND expires_at > ?2",
                params![id.to_string(), ts(*at)?],
                "approval",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("approval {id} was already used")));
            }
            Ok(n)
        }
        Mutation::PollApproval { id, at } => exec(
            conn,
            "UPDATE approvals SET polled_at = ?1 WHERE id = ?2",
            params![ts(*at)?, id.to_string()],
            "approval",
        ),
        other => Err(crate::writer::misrouted(other)),
    }
}

pub(crate) fn approval_row(r: &Row<'_>) -> Mapped<Approval> {
    Ok(Approval::try_from(ApprovalRow {
        id: r.get("id")?,
        agent: r.get("agent")?,
        user_id: r.get("user_id")?,
        approver: r.get("approver")?,
        resource: r.get("resource")?,
        subject: r.get("subject")?,
        binding_message: r.get("binding_message")?,
        status: r.get("status")?,
        decided_by: r.get("decided_by")?,
        created_at: r.get("created_at")?,
        expires_at: r.get("expires_at")?,
        decided_at: r.get("decided_at")?,
        grant_id: r.get("grant_id")?,
        polled_at: r.get("polled_at")?,
        approver_group: r.get("approver_group")?,
        required: r.get("required")?,
        approved_by: r.get("approved_by")?,
    }))
}
