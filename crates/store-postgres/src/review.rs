//! Review campaigns and their items (DESIGN §12, ADR 0033). A decision is
//! written once: the update names the undecided item of an open campaign,
//! so that of two nodes one wins and the other's change fails whole.

use mandate_core::store::{Mutation, StoreError};
use mandate_model::review::{Campaign, ReviewItem};
use mandate_store_sql::{CampaignRow, ReviewItemRow, json, ts};
use sqlx::postgres::{PgConnection, PgRow};

use crate::writer::{map_write_error, misrouted};
use crate::{get, unavailable};

/// Applies one mutation of this family.
pub(crate) async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    let done = match m {
        Mutation::InsertCampaign(c) => sqlx::query(
            "INSERT INTO review_campaigns (id, scope, deadline, default_decision, created_by, created_at, status, closed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(c.id.to_string())
        .bind(json(&c.scope)?)
        .bind(ts(c.deadline)?)
        .bind(c.default.as_str())
        .bind(&c.created_by)
        .bind(ts(c.created_at)?)
        .bind(c.status.as_str())
        .bind(c.closed_at.map(ts).transpose()?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "review campaign"))?,
        Mutation::InsertReviewItem(i) => sqlx::query(
            "INSERT INTO review_items (id, campaign, finding, assignee, decision, decided_by, decided_at, outcome) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(i.id.to_string())
        .bind(i.campaign.to_string())
        .bind(json(&i.finding)?)
        .bind(i.assignee.to_string())
        .bind(i.decision.map(|d| d.as_str()))
        .bind(&i.decided_by)
        .bind(i.decided_at.map(ts).transpose()?)
        .bind(i.outcome.as_ref().map(json).transpose()?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "review item"))?,
        Mutation::DecideReviewItem { id, decision, by, at, outcome } => {
            let r = sqlx::query(
                "UPDATE review_items SET decision = $1, decided_by = $2, decided_at = $3, outcome = $4 \
                 WHERE id = $5 AND decision IS NULL AND EXISTS (SELECT 1 FROM review_campaigns c \
                 WHERE c.id = review_items.campaign AND c.status = 'open')",
            )
            .bind(decision.as_str())
            .bind(by)
            .bind(ts(*at)?)
            .bind(json(outcome)?)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("review item {id} is decided, closed or missing")));
            }
            r
        }
        Mutation::CloseCampaign { id, at } => {
            let r = sqlx::query(
                "UPDATE review_campaigns SET status = 'closed', closed_at = $1 WHERE id = $2 AND status = 'open'",
            )
            .bind(ts(*at)?)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("campaign {id} is not open")));
            }
            r
        }
        other => return Err(misrouted(other)),
    };
    Ok(done.rows_affected())
}

pub(crate) fn campaign_row(r: &PgRow) -> Result<Campaign, StoreError> {
    Campaign::try_from(CampaignRow {
        id: get(r, "id")?,
        scope: get(r, "scope")?,
        deadline: get(r, "deadline")?,
        default_decision: get(r, "default_decision")?,
        created_by: get(r, "created_by")?,
        created_at: get(r, "created_at")?,
        status: get(r, "status")?,
        closed_at: get(r, "closed_at")?,
    })
}

pub(crate) fn item_row(r: &PgRow) -> Result<ReviewItem, StoreError> {
    ReviewItem::try_from(ReviewItemRow {
        id: get(r, "id")?,
        campaign: get(r, "campaign")?,
        finding: get(r, "finding")?,
        assignee: get(r, "assignee")?,
        decision: get(r, "decision")?,
        decided_by: get(r, "decided_by")?,
        decided_at: get(r, "decided_at")?,
        outcome: get(r, "outcome")?,
    })
}
