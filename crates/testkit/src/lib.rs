//! Test support: the real server in process on a random port, over a
//! temporary SQLite store and a hand-moved clock, plus the store
//! conformance suite that every [`mandate_core::Store`] must pass.

pub mod conformance;
pub mod faulty;
pub mod load;
pub mod scenarios;
mod server;

pub use server::{ADMIN_TOKEN, TestAgent, TestServer, fresh_jti, test_edge};

/// The admin token every test server is seeded with.
pub fn server_admin_token() -> &'static str {
    ADMIN_TOKEN
}
