//! The audit trail's format and its offline verifier (DESIGN §6).
//!
//! Each event is hashed over its canonical JSON (RFC 8785, JCS) together
//! with the previous event's hash, so that editing, deleting or reordering
//! any entry breaks the chain from that entry on. Signed checkpoints anchor
//! the chain, so that truncating its tail or replacing it whole is caught
//! too. This crate does no I/O: stores append, the verifier reads.

pub mod canonical;
mod chain;
pub mod trace;

pub use chain::{
    ChainVerifier, Checkpoint, Event, GENESIS, Tamper, Verified, is_chain_hash, lane_genesis, seal, sign_checkpoint,
    verify,
};
pub use trace::{Trace, TraceNode};
