//! Review campaigns and their items (DESIGN §12, ADR 0033). A decision is
//! written once: the update names the undecided item of an open campaign,
//! so that of two writers one wins and the other's change fails whole.

use mandate_core::store::{Mutation, StoreError};
use mandate_model::review::{Campaign, ReviewItem};
use mandate_store_sql::{CampaignRow, ReviewItemRow, json, ts};
use rusqlite::{Connection, Row, params};

use crate::readers::Mapped;
use crate::writer::exec;

/// Applies one mutation of this family.
pub(crate) fn apply(conn: &Connection, m: &Mutation) -> Result<u64, StoreError> {
    match m {
        Mutation::InsertCampaign(c) => exec(
            conn,
            "INSERT INTO review_campaigns (id, scope, deadline, default_decision, created_by, created_at, status, closed_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                c.id.to_string(),
                json(&c.scope)?,
                ts(c.deadline)?,
                c.default.as_str(),
                c.created_by,
                ts(c.created_at)?,
                c.status.as_str(),
                c.closed_at.map(ts).transpose()?,
            ],
            "review campaign",
        ),
        Mutation::InsertReviewItem(i) => exec(
            conn,
            "INSERT INTO review_items (id, campaign, finding, assignee, decision, decided_by, decided_at, outcome) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                i.id.to_string(),
                i.campaign.to_string(),
                json(&i.finding)?,
                i.assignee.to_string(),
                i.decision.map(|d| d.as_str()),
                i.decided_by,
                i.decided_at.map(ts).transpose()?,
                i.outcome.as_ref().map(json).transpose()?,
            ],
            "review item",
        ),
        Mutation::DecideReviewItem { id, decision, by, at, outcome } => {
            let n = exec(
                conn,
                "UPDATE review_items SET decision = ?1, decided_by = ?2, decided_at = ?3, outcome = ?4 \
                 WHERE id = ?5 AND decision IS NULL AND EXISTS (SELECT 1 FROM review_campaigns c \
                 WHERE c.id = review_items.campaign AND c.status = 'open')",
                params![decision.as_str(), by, ts(*at)?, json(outcome)?, id.to_string()],
                "review item",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("review item {id} is decided, closed or missing")));
            }
            Ok(n)
        }
        Mutation::CloseCampaign { id, at } => {
            let n = exec(
                conn,
                "UPDATE review_campaigns SET status = 'closed', closed_at = ?1 WHERE id = ?2 AND status = 'open'",
                params![ts(*at)?, id.to_string()],
                "review campaign",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("campaign {id} is not open")));
            }
            Ok(n)
        }
        other => Err(crate::writer::misrouted(other)),
    }
}

pub(crate) fn campaign_row(r: &Row<'_>) -> Mapped<Campaign> {
    Ok(Campaign::try_from(CampaignRow {
        id: r.get("id")?,
        scope: r.get("scope")?,
        deadline: r.get("deadline")?,
        default_decision: r.get("default_decision")?,
        created_by: r.get("created_by")?,
        created_at: r.get("created_at")?,
        status: r.get("status")?,
        closed_at: r.get("closed_at")?,
    }))
}

pub(crate) fn item_row(r: &Row<'_>) -> Mapped<ReviewItem> {
    Ok(ReviewItem::try_from(ReviewItemRow {
        id: r.get("id")?,
        campaign: r.get("campaign")?,
        finding: r.get("finding")?,
        assignee: r.get("assignee")?,
        decision: r.get("decision")?,
        decided_by: r.get("decided_by")?,
        decided_at: r.get("decided_at")?,
        outcome: r.get("outcome")?,
    }))
}
