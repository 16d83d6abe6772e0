//! Test vectors: a fixed three-event chain with its canonical forms and
//! hashes, and a checkpoint signed by a fixed Ed25519 key, committed under
//! `samples/` so that another implementation can check its encoding
//! against Mandate's and a change in Mandate's format is caught.
//! `MANDATE_REGENERATE_VECTORS=1 cargo test -p mandate-audit --test vectors`
//! rewrites them after a deliberate format change.
// Helpers outside #[test] functions: a failed unwrap fails the test.
#![allow(clippy::unwrap_used)]

use base64::Engine;
use mandate_audit::{Checkpoint, Event, GENESIS, seal, sign_checkpoint, verify};
use mandate_jose::{KeyAlg, SigningKey};

/// RFC 8037 Appendix A.1: the Ed25519 test key, as PKCS#8 v1.
fn rfc8037_key() -> SigningKey {
    let seed =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A").unwrap();
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend(seed);
    SigningKey::from_pkcs8(KeyAlg::EdDSA, &der).unwrap()
}

fn events() -> Vec<Event> {
    let mut issued = Event::new("token.issued", "2026-11-23T10:00:00.000000Z");
    issued.decision = Some("allow".into());
    issued.subject = Some("usr_01JABCDEFGHJKMNPQRSTVWXYZ0".into());
    issued.actor = Some("agt_01JABCDEFGHJKMNPQRSTVWXYZ1".into());
    issued.chain = vec!["usr_01JABCDEFGHJKMNPQRSTVWXYZ0".into(), "agt_01JABCDEFGHJKMNPQRSTVWXYZ1".into()];
    issued.client_id = Some("agt_01JABCDEFGHJKMNPQRSTVWXYZ1".into());
    issued.resource = Some("https://api.example.com".into());
    issued.scope = Some("mail.read".into());
    issued.jti = Some("tok_01JABCDEFGHJKMNPQRSTVWXYZ2".into());
    issued.grant_id = Some("grt_01JABCDEFGHJKMNPQRSTVWXYZ3".into());
    issued.request_id = Some("req-1".into());

    let mut hop = issued.clone();
    hop.time = "2026-11-23T10:00:01.500000Z".into();
    hop.actor = Some("agt_01JABCDEFGHJKMNPQRSTVWXYZ4".into());
    hop.client_id = hop.actor.clone();
    hop.chain.push("agt_01JABCDEFGHJKMNPQRSTVWXYZ4".into());
    hop.parent = issued.jti.clone();
    hop.jti = Some("tok_01JABCDEFGHJKMNPQRSTVWXYZ5".into());
    hop.request_id = Some("req-2".into());

    let mut revoked = Event::new("agent.suspended", "2026-11-23T10:00:02.000000Z");
    revoked.decision = Some("allow".into());
    revoked.actor = Some("admin".into());
    revoked.subject = Some("usr_01JABCDEFGHJKMNPQRSTVWXYZ0".into());
    revoked.resource = Some("agt_01JABCDEFGHJKMNPQRSTVWXYZ1".into());
    revoked.count = Some(2);
    // Escapes, non-ASCII and an astral character, as JCS writes them.
    revoked.reason = Some("active -> suspended; \"quoted\" \\ tab\t é 😀".into());

    let mut out = Vec::new();
    let mut prev = GENESIS.to_owned();
    for (i, e) in [issued, hop, revoked].into_iter().enumerate() {
        let e = seal(e, i as u64 + 1, &prev).unwrap();
        prev = e.hash.clone();
        out.push(e);
    }
    out
}

fn check_or_write(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples").join(name);
    if std::env::var_os("MANDATE_REGENERATE_VECTORS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert_eq!(actual, expected, "{name} changed: the audit format is part of the contract");
}

#[test]
fn chain_canonical_forms_and_hashes() {
    let events = events();
    let mut canonical = String::new();
    let mut jsonl = String::new();
    for e in &events {
        e.write_canonical(&mut canonical);
        canonical.push('\n');
        jsonl.push_str(&serde_json::to_string(e).unwrap());
        jsonl.push('\n');
    }
    check_or_write("chain.canonical.txt", &canonical);
    check_or_write("chain.jsonl", &jsonl);
    // What is committed verifies, and parses back to the same events.
    let parsed: Vec<Event> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed, events);
    assert_eq!(verify(&parsed, &[], &[]), Ok(3));
}

#[test]
fn checkpoint_signed_by_a_fixed_key() {
    let key = rfc8037_key();
    let events = events();
    let cp = sign_checkpoint(&key, 3, &events[2].hash, "2026-11-23T10:00:03.000000Z").unwrap();
    check_or_write("checkpoint.json", &format!("{}\n", serde_json::to_string(&cp).unwrap()));
    let parsed: Checkpoint = serde_json::from_str(&serde_json::to_string(&cp).unwrap()).unwrap();
    assert_eq!(verify(&events, &[parsed], &[key.public().clone()]), Ok(3));
}
