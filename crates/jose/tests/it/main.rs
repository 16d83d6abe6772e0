//! mandate-jose's integration tests, in one binary.
// Helpers outside #[test] functions: a failed unwrap fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod samples;
mod vectors;
mod wycheproof_vectors;
