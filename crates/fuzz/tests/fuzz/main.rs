//! The fuzz targets, one module and one `#[test]` each (see the crate's
//! documentation for how they run). This binary is named `fuzz` rather than
//! `it` so that `.ci/run` can run it alone, with a longer budget, as
//! `cargo test --workspace --test fuzz`, reusing the workspace's build.
// Helpers outside #[test] functions: a failed unwrap fails the target.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

mod audit_canonical;
mod cedar_entities;
mod dpop_htu;
mod dpop_proof;
mod json_body;
mod jws_compact;
mod oauth_form;
mod seeds;
mod ssf_set;
mod statuslist;
