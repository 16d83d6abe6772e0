//! The store conformance suite. Every store runs the same cases; a store
//! passes when each case does.
//!
//! A case is a plain `async fn(&Arc<dyn Store>) -> Result<()>` in the
//! module of its area. [`store_conformance!`](crate::store_conformance)
//! lists every case once and expands, in the crate that invokes it, to one
//! `#[tokio::test]` per case, each on a fresh store, so that one case can be
//! run, filtered and reported on its own:
//!
//! ```text
//! cargo test -p mandate-store-sqlite a_count_of_a_later_mutation
//! ```
//!
//! [`store_tamper_suite!`](crate::store_tamper_suite) does the same for the
//! cases that edit a SQL store's tables behind its back ([`tamper`]).

pub mod approvals;
pub mod audit;
pub mod change;
pub mod concurrency;
pub mod deliveries;
mod fixtures;
pub mod grants;
pub mod identity;
pub mod inventory;
pub mod keys;
pub mod replay;
pub mod review;
pub mod scim;
pub mod signals;
pub mod tamper;
pub mod tokens;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use mandate_core::store::Store;

pub use fixtures::{agent, child_of, event, grant, resource, t0, token, user};
pub use tamper::{Exec, TamperRig};

/// What a case returns, and what the generated tests return.
pub type Outcome = anyhow::Result<()>;

type Close = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send>;

/// A store for one case, with what must outlive it (a temporary directory)
/// and what must happen once the case is over (dropping its database).
pub struct Fresh {
    pub store: Arc<dyn Store>,
    keep: Vec<Box<dyn Any + Send + Sync>>,
    close: Option<Close>,
}

impl Fresh {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, keep: Vec::new(), close: None }
    }

    /// Keeps `guard` alive until the case is over, then drops it after the
    /// store.
    pub fn keeping(mut self, guard: impl Any + Send + Sync) -> Self {
        self.keep.push(Box::new(guard));
        self
    }

    /// Runs `f` once the case is over and the store is dropped.
    pub fn on_close<F, Fut>(mut self, f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.close = Some(Box::new(move || Box::pin(f())));
        self
    }

    /// Ends the case: drops the store, then what it kept, then runs the
    /// close step. The case's own failure is reported before a failure to
    /// clean up.
    pub async fn finish(self, outcome: Outcome) -> Outcome {
        let Fresh { store, keep, close } = self;
        drop(store);
        drop(keep);
        let closed = match close {
            Some(f) => f().await,
            None => Ok(()),
        };
        outcome.and(closed)
    }
}

/// One test per conformance case, each on a fresh store from `$open`: an
/// expression of type `impl Future<Output = anyhow::Result<Fresh>>`,
/// evaluated once per test. Items it names are looked up where the macro
/// is invoked. The tests are named `store_conformance::<area>::<case>`.
///
/// The list below is the only list of cases.
#[macro_export]
macro_rules! store_conformance {
    ($open:expr) => {
        $crate::store_conformance!(@areas $open;
            identity {
                settings_are_set_once,
                users_round_trip_and_stay_unique,
                user_tokens_expire_and_are_revoked_once,
                agents_round_trip_and_change_status_conditionally,
                agents_are_listed_by_owner,
                live_agents_are_paged_and_spawns_counted,
                resources_round_trip_and_stay_unique,
                policies_keep_every_version,
                policy_history_is_numbered_paged_and_read_back,
                a_policy_is_put_only_over_the_version_expected,
                sessions_round_trip_and_end,
                upstream_links_find_their_person,
                federated_credentials_find_their_agent,
                agent_limits_round_trip_and_change,
            }
            scim {
                scim_tokens_are_kept_hashed_and_revoked_once,
                scim_users_are_unique_by_user_name_and_written_by_revision,
                scim_users_are_listed_by_user_name_external_id_and_email,
                a_person_is_updated_only_from_what_was_read,
                scim_groups_keep_members_and_give_them_cedar_groups,
                membership_changes_move_the_epoch,
            }
            inventory {
                users_are_listed_newest_first_page_by_page,
                agents_are_listed_by_every_filter,
                an_agents_last_use_is_recorded_at_most_once_a_minute,
                resources_are_listed_newest_first_page_by_page,
                grants_are_listed_by_every_filter,
                an_agents_activity_counts_what_is_live,
                the_tally_counts_what_is_live_and_what_ended_in_its_windows,
                samples_keep_the_largest_count_per_hour_and_are_pruned,
            }
            keys {
                signing_keys_rotate,
            }
            replay {
                replay_store_burns_each_jti_once,
                dpop_proofs_are_single_use,
                grant_assertions_are_single_use,
                attempt_counters_move_only_from_what_was_read,
            }
            tokens {
                tokens_round_trip_and_revoke,
                owners_and_expiry_revoke_agent_tokens,
                delegated_tokens_need_a_live_parent_and_grant,
                revocation_reaches_every_descendant,
                refresh_tokens_rotate_once_and_die_with_their_family,
                status_indexes_never_repeat,
                revoked_tokens_show_in_their_status_list,
            }
            grants {
                grants_revoke_once_and_list_by_person,
                an_authorization_code_is_used_once,
                a_reapproval_extends_a_live_grant_once,
                lapses_are_reported_once_and_listed,
            }
            review {
                campaigns_and_items_round_trip_and_are_decided_once,
                grants_and_agents_are_narrowed_while_live,
                the_reviews_page_reads_answer_for_many_agents_at_once,
            }
            approvals {
                approvals_are_decided_and_used_once,
                pending_requests_are_counted_and_approvals_paged,
                group_approvals_count_distinct_members_and_list_to_them,
                concurrent_group_decisions_make_one_transition,
            }
            deliveries {
                backchannels_and_callbacks_round_trip,
                deliveries_are_leased_to_one_holder_at_a_time,
                concurrent_leases_admit_one,
            }
            signals {
                streams_round_trip_and_belong_to_their_resource,
                revocations_queue_session_revoked_for_their_audience,
                events_wait_in_order_until_acknowledged,
                holders_signals_reach_streams_of_their_live_tokens,
                push_streams_are_leased_to_one_holder_and_paused_by_it,
                removed_subjects_stop_their_events_until_added_back,
                verification_requests_are_claimed_once_per_interval,
            }
            audit {
                audit_events_chain_in_commit_order,
                an_audit_event_lands_with_its_change_or_not_at_all,
                audit_events_count_what_their_change_reached,
                a_count_of_a_later_mutation_fails_its_change,
                appends_report_their_seq,
                checkpoints_are_kept_once_per_seq,
                audit_queries_filter_and_page,
            }
            change {
                a_failed_change_writes_nothing,
                a_change_failing_late_undoes_every_kind_of_write,
                records_refer_only_to_records_that_exist,
                the_epoch_moves_with_every_invalidating_change,
                a_change_expecting_a_moved_epoch_writes_nothing,
            }
            concurrency {
                concurrent_replays_admit_one,
                concurrent_policy_writers_from_one_version_admit_one,
                concurrent_appends_form_one_chain,
                concurrent_issuances_with_replays_stand_or_fall_alone,
                issuances_expecting_an_epoch_stand_or_fall_alone,
                issuances_between_other_changes_keep_each_lane_in_order,
                concurrent_refresh_uses_admit_one,
                concurrent_code_redemptions_admit_one,
                concurrent_lapse_reports_and_renewals_admit_one,
                concurrent_reservations_never_overlap,
                revoking_a_parent_during_its_exchange_never_leaves_a_live_child,
            }
        );
    };
    (@areas $open:expr; $($area:ident { $($case:ident),* $(,)? })*) => {
        #[allow(unused_imports)]
        mod store_conformance {
            use super::*;
            $(
                mod $area {
                    #[allow(unused_imports)]
                    use super::*;
                    $(
                        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                        async fn $case() -> $crate::conformance::Outcome {
                            let fresh: $crate::conformance::Fresh = $open.await?;
                            let outcome = $crate::conformance::$area::$case(&fresh.store).await;
                            fresh.finish(outcome).await
                        }
                    )*
                }
            )*
        }
    };
}

/// One test per tamper case, each on a fresh [`TamperRig`] from `$open`:
/// an expression of type `impl Future<Output = anyhow::Result<(TamperRig,
/// Fresh)>>`, where the `Fresh` holds what outlives the case. The tests
/// are named `store_tamper::<case>`.
#[macro_export]
macro_rules! store_tamper_suite {
    ($open:expr) => {
        $crate::store_tamper_suite!(@cases $open;
            an_edited_event_is_caught,
            a_deleted_event_is_caught,
            reordered_events_are_caught,
            an_inserted_event_is_caught,
            a_truncated_tail_is_caught,
            an_edited_hash_is_caught,
            a_rewritten_chain_is_caught_by_checkpoints_and_witnesses,
            a_failed_audit_insert_fails_its_whole_change,
            an_edited_checkpoint_is_caught,
        );
    };
    (@cases $open:expr; $($case:ident),* $(,)?) => {
        #[allow(unused_imports)]
        mod store_tamper {
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> $crate::conformance::Outcome {
                    let (rig, fresh): ($crate::conformance::TamperRig, $crate::conformance::Fresh) = $open.await?;
                    let outcome = $crate::conformance::tamper::$case(&rig).await;
                    drop(rig);
                    fresh.finish(outcome).await
                }
            )*
        }
    };
}
