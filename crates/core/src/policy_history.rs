//! The policy set's history (ADR 0034): every version is kept, numbered,
//! readable, diffable against another and restorable; a change may name
//! the version it was made from, so that two editors cannot overwrite
//! each other (409).

use mandate_policy::version_of;
use serde::Serialize;

use crate::Error;
use crate::audit::{AuditRecord, kind};
use crate::service::{Caller, Mandate};
use crate::store::{Change, MAX_POLICY_VERSIONS_PAGE, Mutation, PolicyVersion, StoredPolicy};

/// Longest a diff may take to compute; past it the diff is coarser (whole
/// blocks replaced), never wrong.
const DIFF_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

/// The current policy set as `GET /v1/policies` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentPolicies {
    /// The content hash: the value `expected_version` names.
    pub version: String,
    /// Its history number; `None` before any set was stored.
    pub number: Option<u64>,
    pub text: String,
    pub schema: String,
}

/// A line diff between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    /// The older side (`None`: the empty set before the first version).
    pub from: Option<u64>,
    pub to: u64,
    pub inserted: usize,
    pub deleted: usize,
    /// Unified diff text.
    pub diff: String,
}

impl Mandate {
    /// Validates `text` against the schema of the registered resources and
    /// replaces the policy set atomically. Returns the new version.
    pub async fn put_policies(&self, caller: Caller, text: &str) -> Result<StoredPolicy, Error> {
        self.replace_policies(caller, text, None, None).await
    }

    /// [`Mandate::put_policies`] only over the set whose content hash is
    /// `expected` (409 `Conflict` otherwise, and nothing changes), when
    /// given; `restored_from` names the history entry the text comes from.
    pub async fn replace_policies(
        &self,
        caller: Caller,
        text: &str,
        expected: Option<&str>,
        restored_from: Option<u64>,
    ) -> Result<StoredPolicy, Error> {
        self.require_console(caller).await?;
        let actions = self.action_catalog().await?;
        let context = self.context_catalog().await?;
        let engine = crate::admin::compile_off_the_workers(text, actions, context).await?.map_err(|e| match e {
            mandate_policy::PolicyError::Unavailable(why) => Error::Unavailable(why),
            invalid => Error::BadInput(invalid.to_string()),
        })?;
        let mut change = Change::new();
        if let Some(expected) = expected {
            // Before any set is stored, the current set is the empty one
            // (its hash is what GET /v1/policies shows). Should one be
            // stored meanwhile, the store refuses `None`.
            let stored = self.store.current_policy().await?;
            let expect = match stored {
                None if expected == version_of("") => None,
                _ => Some(expected.to_owned()),
            };
            change.push(Mutation::ExpectPolicyVersion(expect));
        }
        let mut event = self.admin_event(kind::POLICY_UPDATED, caller);
        let record = StoredPolicy {
            version: engine.version().to_owned(),
            text: text.to_owned(),
            created_at: self.clock.now(),
            author: event.actor.clone(),
        };
        let restored = restored_from.map(|n| format!(", restored from history entry {n}")).unwrap_or_default();
        event.reason = Some(format!("policy set version {} ({} bytes){restored}", record.version, record.text.len()));
        change.push(Mutation::PutPolicy(record.clone()));
        change.push(AuditRecord::new(event).mutation());
        self.store.commit(change).await.map_err(|e| match Error::from(e) {
            Error::Conflict(_) => Error::Conflict(
                "the policy set changed since expected_version: read it again (GET /v1/policies) and retry".into(),
            ),
            other => other,
        })?;
        // Installed under the gate every load of policies holds, and only
        // if the store still holds this set: another node may have put a
        // newer one since, which this node may have loaded already. The
        // set is stored by now, so what fails here is logged, not
        // answered: a node that could not look installs its own set (as
        // it did before it looked), and on a shared store it reloads at
        // the next epoch it sees ahead of its own.
        let _one = self.sync_gate.lock().await;
        match self.store.current_policy().await.map(|p| p.is_some_and(|p| p.version != record.version)) {
            Ok(true) => {
                if let Err(e) = self.reload_policy().await {
                    tracing::warn!(error = %e, "a newer policy set than the one just put could not be loaded");
                }
            }
            Ok(false) => self.set_engine(engine),
            Err(e) => {
                tracing::warn!(error = %e, "could not check the policy set just put against the store's");
                self.set_engine(engine);
            }
        }
        Ok(record)
    }

    pub async fn get_policies(&self, caller: Caller) -> Result<CurrentPolicies, Error> {
        self.require_console(caller).await?;
        let actions = self.action_catalog().await?;
        let context = self.context_catalog().await?;
        let engine = self.fresh_engine().await?;
        let latest = self.store.policy_versions(None, 1).await?.into_iter().next();
        // The engine may be a moment older than the history: name the entry
        // only when it is the one the engine runs.
        let number = latest.filter(|v| v.version == engine.version()).map(|v| v.number);
        Ok(CurrentPolicies {
            version: engine.version().to_owned(),
            number,
            text: engine.text().to_owned(),
            schema: mandate_policy::schema_text_with(&actions, &context),
        })
    }

    /// `GET /v1/policies/versions`: newest first, entries numbered below
    /// `before`; the next page's cursor.
    pub async fn policy_versions(
        &self,
        caller: Caller,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<(Vec<PolicyVersion>, Option<u64>), Error> {
        self.require_admin_or_auditor(caller).await?;
        let limit = limit.unwrap_or(50);
        if limit == 0 || limit > MAX_POLICY_VERSIONS_PAGE {
            return Err(Error::BadInput(format!("limit must be 1 to {MAX_POLICY_VERSIONS_PAGE}")));
        }
        let items = self.store.policy_versions(before, limit).await?;
        let next = if items.len() == limit as usize { items.last().map(|v| v.number) } else { None };
        Ok((items, next.filter(|n| *n > 1)))
    }

    /// `GET /v1/policies/versions/{n}`.
    pub async fn policy_version(&self, caller: Caller, number: u64) -> Result<(PolicyVersion, String), Error> {
        self.require_admin_or_auditor(caller).await?;
        let (entry, policy) = self
            .store
            .policy_version(number)
            .await?
            .ok_or_else(|| Error::NotFound(format!("policy version {number}")))?;
        Ok((entry, policy.text))
    }

    /// `GET /v1/policies/versions/{n}/diff?against=m`: what changes from
    /// `m` (by default the entry before `n`) to `n`.
    pub async fn policy_diff(&self, caller: Caller, number: u64, against: Option<u64>) -> Result<PolicyDiff, Error> {
        let (_, new) = self.policy_version(caller, number).await?;
        let from = match against {
            Some(m) => Some(m),
            None => number.checked_sub(1).filter(|m| *m > 0),
        };
        let old = match from {
            Some(m) => self.policy_version(caller, m).await?.1,
            None => String::new(),
        };
        let header = (
            from.map(|m| format!("version {m}")).unwrap_or_else(|| "(no policies)".into()),
            format!("version {number}"),
        );
        let (inserted, deleted, diff) = tokio::task::spawn_blocking(move || line_diff(&old, &new, header))
            .await
            .map_err(|e| Error::Unavailable(format!("the diff stopped: {e}")))?;
        Ok(PolicyDiff { from, to: number, inserted, deleted, diff })
    }

    /// `POST /v1/policies/versions/{n}/restore`: installs that text again
    /// as a new version (validated against today's schema), audited.
    pub async fn restore_policy_version(
        &self,
        caller: Caller,
        number: u64,
        expected: Option<&str>,
    ) -> Result<StoredPolicy, Error> {
        self.require_console(caller).await?;
        let (_, policy) = self
            .store
            .policy_version(number)
            .await?
            .ok_or_else(|| Error::NotFound(format!("policy version {number}")))?;
        self.replace_policies(caller, &policy.text, expected, Some(number)).await
    }
}

/// Lines inserted, lines deleted and the unified diff from `old` to `new`.
fn line_diff(old: &str, new: &str, (from, to): (String, String)) -> (usize, usize, String) {
    let diff = similar::TextDiff::configure().timeout(DIFF_BUDGET).diff_lines(old, new);
    let mut inserted = 0;
    let mut deleted = 0;
    for change in diff.iter_all_changes() {
        match change.tag() {
            similar::ChangeTag::Insert => inserted += 1,
            similar::ChangeTag::Delete => deleted += 1,
            similar::ChangeTag::Equal => {}
        }
    }
    let text = diff.unified_diff().context_radius(3).header(&from, &to).to_string();
    (inserted, deleted, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_counts_and_shows_the_changed_lines() {
        let (ins, del, text) = line_diff("a\nb\nc\n", "a\nB\nc\nd\n", ("version 1".into(), "version 2".into()));
        assert_eq!((ins, del), (2, 1));
        assert!(text.contains("--- version 1") && text.contains("+++ version 2"), "{text}");
        assert!(text.contains("-b\n") && text.contains("+B\n") && text.contains("+d\n"), "{text}");
    }
}
