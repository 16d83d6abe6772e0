//! The `mandate` binary as operators run it: real processes, killed and
//! restarted, on SQLite and on a shared PostgreSQL.
// Test helpers index JSON freely; a missing member fails the test.
#![allow(clippy::indexing_slicing)]

mod admin_cli;
mod crash;
mod demo;
mod gateway;
mod nodes;
mod policies;
mod review;
mod support;
