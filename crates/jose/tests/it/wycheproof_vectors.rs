//! Wycheproof's signature verification vectors, through Mandate's own
//! entry point: `PublicJwk::verify`, which every token and proof check
//! ends in (`Unverified::verify`, `verify_with`).
//!
//! Every `valid` vector must verify and every `invalid` one must be
//! refused; how the `acceptable` ones went is counted and pinned. The
//! counts are pinned too, so that a new version of the vectors, or a change
//! in what Mandate accepts, shows up here.
//!
//! ES256 is the P1363 set (`ecdsa_secp256r1_sha256_p1363`): JWS signatures
//! are the raw 64-byte `r || s` (RFC 7518 §3.4), not DER. The one departure
//! from common practice is decision 0002: a high S (`s > n/2`) is accepted.
//! Wycheproof's plain ECDSA sets agree (only its Bitcoin sets refuse high
//! S), so the high-S vectors are counted apart, and every valid signature's
//! twin `(r, n - s)` is checked to verify too. The DER set is checked to be
//! refused whole: Mandate takes no DER signature.

use mandate_jose::{KeyAlg, PublicJwk};
use wycheproof::TestResult;

/// The order of P-256 (SEC 2 §2.4.2).
const N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `floor(n / 2)`: a signature is high-S when `s` is above it.
const HALF_N: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xde, 0x73, 0x7d,
    0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// `a - b` for 32-byte big-endian numbers with `a >= b`.
fn sub(a: &[u8; 32], b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(a[i]) - i16::from(b[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    assert_eq!(borrow, 0, "a < b");
    out
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    valid: usize,
    invalid: usize,
    acceptable_accepted: usize,
    acceptable_refused: usize,
    /// Groups whose public key Mandate refuses to load (all their vectors
    /// then count as refused).
    keys_refused: usize,
}

impl Counts {
    fn record(&mut self, what: &str, tc: usize, result: TestResult, accepted: bool) {
        match result {
            TestResult::Valid => {
                assert!(accepted, "{what} #{tc}: a valid signature was refused");
                self.valid += 1;
            }
            TestResult::Invalid => {
                assert!(!accepted, "{what} #{tc}: an invalid signature was accepted");
                self.invalid += 1;
            }
            TestResult::Acceptable if accepted => self.acceptable_accepted += 1,
            TestResult::Acceptable => self.acceptable_refused += 1,
        }
    }
}

#[test]
fn wycheproof_ed25519() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap();
    let mut counts = Counts::default();
    for group in &set.test_groups {
        let key = match PublicJwk::from_public_bytes(KeyAlg::EdDSA, &group.key.pk, None) {
            Ok(k) => Some(k),
            Err(_) => {
                counts.keys_refused += 1;
                None
            }
        };
        for test in &group.tests {
            let accepted = key.as_ref().is_some_and(|k| {
                let by_eddsa = k.verify("EdDSA", &test.msg, &test.sig).is_ok();
                // RFC 9864's fully specified name must give the same answer.
                assert_eq!(by_eddsa, k.verify("Ed25519", &test.msg, &test.sig).is_ok(), "#{}", test.tc_id);
                // An Ed25519 key never verifies under another algorithm.
                assert!(k.verify("ES256", &test.msg, &test.sig).is_err(), "#{}", test.tc_id);
                by_eddsa
            });
            counts.record("Ed25519", test.tc_id, test.result, accepted);
        }
    }
    eprintln!("Wycheproof Ed25519: {counts:?}");
    assert_eq!(
        counts,
        Counts { valid: 88, invalid: 63, acceptable_accepted: 0, acceptable_refused: 0, keys_refused: 0 },
        "the Ed25519 counts moved"
    );
}

#[derive(Debug, Default, PartialEq, Eq)]
struct HighS {
    /// Valid vectors whose S is above n/2: accepted (decision 0002).
    valid_high: usize,
    valid_low: usize,
    /// Twins `(r, n - s)` of valid vectors, all accepted: how many of them
    /// are high-S.
    twins_high: usize,
    twins_low: usize,
}

#[test]
fn wycheproof_es256_p1363() {
    let set = wycheproof::ecdsa::TestSet::load(wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363).unwrap();
    let mut counts = Counts::default();
    let mut high = HighS::default();
    for group in &set.test_groups {
        let key = match PublicJwk::from_public_bytes(KeyAlg::ES256, &group.key.key, None) {
            Ok(k) => Some(k),
            Err(_) => {
                counts.keys_refused += 1;
                None
            }
        };
        for test in &group.tests {
            let accepted = key.as_ref().is_some_and(|k| {
                assert!(k.verify("EdDSA", &test.msg, &test.sig).is_err(), "#{}", test.tc_id);
                k.verify("ES256", &test.msg, &test.sig).is_ok()
            });
            counts.record("ES256", test.tc_id, test.result, accepted);
            let (Some(k), TestResult::Valid) = (&key, test.result) else { continue };
            assert_eq!(test.sig.len(), 64, "#{}: a valid P1363 signature has 64 bytes", test.tc_id);
            let (r, s) = test.sig.split_at(32);
            if s > HALF_N.as_slice() {
                high.valid_high += 1;
            } else {
                high.valid_low += 1;
            }
            let twin_s = sub(&N, s);
            let twin: Vec<u8> = r.iter().chain(twin_s.iter()).copied().collect();
            assert!(k.verify("ES256", &test.msg, &twin).is_ok(), "#{}: the (r, n - s) twin was refused", test.tc_id);
            if twin_s.as_slice() > HALF_N.as_slice() {
                high.twins_high += 1;
            } else {
                high.twins_low += 1;
            }
        }
    }
    eprintln!("Wycheproof ES256 (P1363): {counts:?}, {high:?}");
    assert_eq!(
        counts,
        Counts { valid: 173, invalid: 89, acceptable_accepted: 0, acceptable_refused: 0, keys_refused: 0 },
        "the ES256 counts moved"
    );
    assert_eq!(
        high,
        HighS { valid_high: 70, valid_low: 103, twins_high: 103, twins_low: 70 },
        "the high-S counts moved"
    );
}

/// Decision 0002: a DER-encoded signature is refused, whatever Wycheproof
/// thinks of it as DER.
#[test]
fn wycheproof_es256_der_signatures_are_all_refused() {
    let set = wycheproof::ecdsa::TestSet::load(wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256).unwrap();
    let mut refused = 0;
    for group in &set.test_groups {
        let Ok(key) = PublicJwk::from_public_bytes(KeyAlg::ES256, &group.key.key, None) else { continue };
        for test in &group.tests {
            assert!(
                key.verify("ES256", &test.msg, &test.sig).is_err(),
                "#{}: a DER signature was accepted",
                test.tc_id
            );
            refused += 1;
        }
    }
    eprintln!("Wycheproof ES256 (DER): {refused} signatures refused");
    assert_eq!(refused, 484, "the DER count moved");
}
