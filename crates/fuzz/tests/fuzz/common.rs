//! Fixed keys and helpers shared by the targets.

use std::sync::LazyLock;

use base64::Engine;
use mandate_jose::{JwkSet, KeyAlg, SigningKey};
use proptest::prelude::*;

/// Seconds since the epoch at which every target checks tokens and proofs.
pub const NOW: i64 = 1_800_000_100;

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// RFC 8037 Appendix A.1: the Ed25519 test key, as PKCS#8 v1.
pub static ED25519: LazyLock<SigningKey> = LazyLock::new(|| {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend(unb64("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"));
    SigningKey::from_pkcs8(KeyAlg::EdDSA, &der).unwrap()
});

/// RFC 7515 Appendix A.3: the P-256 test key, as PKCS#8 v1 (RFC 5915
/// inside, with the public point).
pub static P256: LazyLock<SigningKey> = LazyLock::new(|| {
    let mut der = vec![
        0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
        0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02, 0x01, 0x01, 0x04, 0x20,
    ];
    der.extend(unb64("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"));
    der.extend([0xa1, 0x44, 0x03, 0x42, 0x00, 0x04]);
    der.extend(unb64("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"));
    der.extend(unb64("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"));
    SigningKey::from_pkcs8(KeyAlg::ES256, &der).unwrap()
});

/// RFC 8032 §7.1 TEST 2: an Ed25519 key the verifiers do not know.
pub static STRANGER: LazyLock<SigningKey> = LazyLock::new(|| {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend(hex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"));
    SigningKey::from_pkcs8(KeyAlg::EdDSA, &der).unwrap()
});

/// The keys the verifiers trust: [`ED25519`] and [`P256`], by their kids.
pub fn trusted() -> JwkSet {
    JwkSet { keys: vec![ED25519.public().clone(), P256.public().clone()] }
}

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Which fixed key signs a built input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Signer {
    Ed25519,
    P256,
    Stranger,
}

impl Signer {
    pub fn key(self) -> &'static SigningKey {
        match self {
            Signer::Ed25519 => &ED25519,
            Signer::P256 => &P256,
            Signer::Stranger => &STRANGER,
        }
    }

    /// Whether a header `alg` is the one this key's type signs with.
    pub fn fits(self, alg: &str) -> bool {
        self.key().alg().accepts(alg)
    }
}

pub fn signer() -> impl Strategy<Value = Signer> {
    prop_oneof![4 => Just(Signer::Ed25519), 3 => Just(Signer::P256), 1 => Just(Signer::Stranger)]
}

/// A JSON object written member by member, in order, repeats kept: what
/// an attacker can send, unlike a `serde_json::Map`.
pub fn object_text(members: &[(String, serde_json::Value)]) -> String {
    let body: Vec<String> =
        members.iter().map(|(k, v)| format!("{}:{}", serde_json::Value::String(k.clone()), v)).collect();
    format!("{{{}}}", body.join(","))
}

/// The members as a JSON parser that keeps the last of a repeated name
/// (RFC 7515 §4, serde_json) reads them.
pub fn last_wins(members: &[(String, serde_json::Value)]) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    for (k, v) in members {
        m.insert(k.clone(), v.clone());
    }
    m
}

/// Signs `payload` under the header text `header`, both taken verbatim.
pub fn sign_text(key: &SigningKey, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let sig = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64(sig))
}

/// Strings that break parsers: escapes, separators, controls, long runs,
/// non-ASCII, lookalikes.
pub const NASTY: &[&str] = &[
    "",
    " ",
    "\"",
    "\\",
    "\\\"",
    "\u{0}",
    "\n",
    "\r\n",
    "\t",
    "'",
    "::",
    "Group::\"eng\"",
    "\"; permit(principal, action, resource);",
    "%00",
    "%",
    "%%",
    "&",
    "=",
    "+",
    ".",
    "..",
    "/",
    "{}",
    "[]",
    "null",
    "\u{7f}",
    "\u{ff}",
    "\u{ffff}",
    "\u{fffd}",
    "\u{feff}",
    "\u{200b}",
    "\u{202e}",
    "\u{1f600}",
    "\u{10ffff}",
    "e\u{301}",
    "\u{e9}",
    "ﬃ",
    "İ",
    "K",
];

/// A string from [`NASTY`], plain text or any string.
pub fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(NASTY).prop_map(str::to_owned),
        2 => "[a-z0-9 ._-]{0,12}",
        2 => any::<String>(),
        1 => (proptest::sample::select(NASTY), 1usize..300).prop_map(|(s, n)| s.repeat(n)),
    ]
}
