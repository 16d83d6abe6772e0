//! End-to-end tests: the real server on a random port, spoken to over HTTP.

mod admin;
mod client_auth;
mod discovery;
mod keys;
mod lifecycle;
mod restart;
mod tokens;
