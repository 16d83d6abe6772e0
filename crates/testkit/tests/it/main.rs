//! End-to-end tests: the real server on a random port, spoken to over HTTP.
// Test helpers index JSON freely; a missing member fails the test.
#![allow(clippy::indexing_slicing)]

mod admin;
mod audit;
mod authorize;
mod campaigns;
mod client_auth;
mod console;
mod delegation;
mod discovery;
mod dpop;
mod edge;
mod failclosed;
mod gateway;
mod gateway_proxy;
mod golden;
mod group_approvals;
mod inventory;
mod keys;
mod lifecycle;
mod memory_store;
mod notify;
mod openapi;
mod policy_test;
mod reapproval;
mod registration;
mod restart;
mod review;
mod scim;
mod ssf;
mod status;
mod tokens;
mod upstream;
mod verifier;
mod web;
mod workload;
