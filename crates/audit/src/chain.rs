//! Events, the hash chain and signed checkpoints.

use base64::Engine;
use mandate_jose::{PublicJwk, SigningKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::canonical::{CanonicalError, to_canonical};

/// `prev_hash` of the first event: 32 zero bytes, hex.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One append-only audit entry (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub decision: Option<String>,
    /// The user the action was for.
    pub subject: Option<String>,
    /// The current agent.
    pub actor: Option<String>,
    /// User → … → actor.
    pub chain: Vec<String>,
    pub client_id: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub scope: Option<String>,
    pub jti: Option<String>,
    pub grant_id: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl Event {
    /// `SHA-256(prev_hash || canonical JSON of the event without "hash")`,
    /// hex. `prev_hash` enters as its 32 raw bytes.
    pub fn compute_hash(&self) -> Result<String, CanonicalError> {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(obj) = value.as_object_mut() {
            obj.remove("hash");
        }
        let canonical = to_canonical(&value)?;
        let mut h = Sha256::new();
        h.update(hex_bytes(&self.prev_hash));
        h.update(canonical.as_bytes());
        Ok(hex(&h.finalize()))
    }
}

/// Links `event` after `prev_hash` with sequence number `seq` and fills in
/// its hash.
pub fn seal(mut event: Event, seq: u64, prev_hash: &str) -> Result<Event, CanonicalError> {
    event.seq = seq;
    event.prev_hash = prev_hash.to_owned();
    event.hash = event.compute_hash()?;
    Ok(event)
}

/// A signed statement that the chain had `hash` at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub time: String,
    pub kid: String,
    /// base64url Ed25519 (or ES256) signature over the canonical JSON of
    /// `{seq, hash, time, kid}`.
    pub signature: String,
}

fn checkpoint_message(seq: u64, hash: &str, time: &str, kid: &str) -> Result<String, CanonicalError> {
    to_canonical(&serde_json::json!({ "seq": seq, "hash": hash, "time": time, "kid": kid }))
}

/// Signs a checkpoint of the chain at `seq`/`hash`.
pub fn sign_checkpoint(key: &SigningKey, seq: u64, hash: &str, time: &str) -> Result<Checkpoint, Tamper> {
    let msg = checkpoint_message(seq, hash, time, key.kid())
        .map_err(|_| Tamper::new(seq, "checkpoint is not canonicalizable"))?;
    let sig = key.sign(msg.as_bytes()).map_err(|_| Tamper::new(seq, "signing failed"))?;
    Ok(Checkpoint {
        seq,
        hash: hash.to_owned(),
        time: time.to_owned(),
        kid: key.kid().to_owned(),
        signature: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
    })
}

/// Where and why verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at seq {seq}: {reason}")]
pub struct Tamper {
    /// The first entry that does not verify.
    pub seq: u64,
    pub reason: String,
}

impl Tamper {
    fn new(seq: u64, reason: impl Into<String>) -> Self {
        Self { seq, reason: reason.into() }
    }
}

/// Verifies `events` (in stored order, starting at seq 1) and every
/// checkpoint against `keys`. Returns the number of events verified.
///
/// Edits, deletions and reorderings break the chain at the first affected
/// entry. Truncating the tail, or replacing the whole chain, is caught only
/// against a checkpoint whose seq is beyond the end or whose hash differs.
pub fn verify(events: &[Event], checkpoints: &[Checkpoint], keys: &[PublicJwk]) -> Result<u64, Tamper> {
    let mut prev = GENESIS.to_owned();
    for (i, e) in events.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        if e.seq != expected_seq {
            return Err(Tamper::new(expected_seq, format!("found seq {} where {expected_seq} belongs", e.seq)));
        }
        if e.prev_hash != prev {
            return Err(Tamper::new(e.seq, "prev_hash does not match the previous entry"));
        }
        match e.compute_hash() {
            Ok(h) if h == e.hash => {}
            _ => {
                return Err(Tamper::new(e.seq, "hash does not match the entry's contents"));
            }
        }
        prev = e.hash.clone();
    }
    let last = events.len() as u64;
    for cp in checkpoints {
        let key = keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(cp.kid.as_str()))
            .ok_or_else(|| Tamper::new(cp.seq, "checkpoint signed by an unknown key"))?;
        let msg = checkpoint_message(cp.seq, &cp.hash, &cp.time, &cp.kid)
            .map_err(|_| Tamper::new(cp.seq, "checkpoint is not canonicalizable"))?;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&cp.signature)
            .map_err(|_| Tamper::new(cp.seq, "checkpoint signature is not base64url"))?;
        key.verify(key.alg.name(), msg.as_bytes(), &sig)
            .map_err(|_| Tamper::new(cp.seq, "checkpoint signature does not verify"))?;
        if cp.seq > last {
            return Err(Tamper::new(
                last + 1,
                format!("the chain ends at {last} but a checkpoint vouches for {}", cp.seq),
            ));
        }
        let at = events.get((cp.seq as usize).saturating_sub(1)).map(|e| e.hash.as_str());
        if cp.seq == 0 || at != Some(cp.hash.as_str()) {
            return Err(Tamper::new(cp.seq, "the chain differs from a signed checkpoint"));
        }
    }
    Ok(last)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Decodes hex; anything malformed decodes to a value no real hash has.
fn hex_bytes(s: &str) -> Vec<u8> {
    if !s.len().is_multiple_of(2) {
        return s.as_bytes().to_vec();
    }
    (0..s.len() / 2)
        .map(|i| s.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| s.as_bytes().to_vec())
}

#[cfg(test)]
mod tests;
