//! The gateway through real sockets: a mock Mandate and a mock MCP server
//! on loopback ports, and the gateway between them and a client.
// Test helpers unwrap and index JSON freely; a failure fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

mod discovery;
mod failclosed;
mod http_route;
mod tools;
