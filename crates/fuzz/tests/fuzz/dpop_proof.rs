//! DPoP proof verification (`dpop::verify_proof`, RFC 9449 §4.3).
//!
//! - Any string: verification never panics; it is accepted only if it is,
//!   byte for byte, a signed seed.
//! - Proofs signed by fixed keys under generated headers and claims are
//!   accepted exactly when an oracle written from RFC 9449 says so: `typ`,
//!   an asymmetric `alg` that fits the embedded public `jwk`, which signed
//!   it; `jti`, `htm`, `htu` (against a truth table of URL variants, not
//!   the normaliser), `iat` in its window, `nonce` and `ath` well formed.
//! - An accepted proof names its key's thumbprint, and a proof that differs
//!   only by an equivalent `htu` has the same replay key.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use mandate_fuzz::{Target, Verdict, ensure, mutated_text};
use mandate_jose::PublicJwk;
use mandate_jose::dpop::{ProofRules, access_token_hash, verify_proof};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};

use crate::common::{ED25519, NOW, P256, STRANGER, Signer, last_wins, object_text, sign_text, signer};

pub const NAME: &str = "dpop_proof";
pub const ACCESS_TOKEN: &str = "the-token";

/// Where a proof is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// `POST https://as.example/oauth/token`, no access token.
    TokenEndpoint,
    /// `GET https://rs.example:8443/api/items`, bound to [`ACCESS_TOKEN`].
    Resource,
}

impl Place {
    pub fn rules(self) -> ProofRules<'static> {
        match self {
            Place::TokenEndpoint => ProofRules {
                htm: "POST",
                htu: "https://as.example/oauth/token",
                now: NOW,
                max_age: 60,
                max_skew: 5,
                access_token: None,
            },
            Place::Resource => ProofRules {
                htm: "GET",
                htu: "https://rs.example:8443/api/items",
                now: NOW,
                max_age: 60,
                max_skew: 5,
                access_token: Some(ACCESS_TOKEN),
            },
        }
    }
}

/// `htu` values with whether each one names each place's URL (RFC 9449
/// §4.3: query and fragment ignored, RFC 3986 §6.2.2/§6.2.3 equivalence).
pub const HTUS: &[(&str, bool, bool)] = &[
    ("https://as.example/oauth/token", true, false),
    ("HTTPS://AS.EXAMPLE/oauth/token", true, false),
    ("https://as.example:443/oauth/token", true, false),
    ("https://as.example/oauth/token?x=1", true, false),
    ("https://as.example/oauth/token#frag", true, false),
    ("https://as.example/oauth/./token", true, false),
    ("https://as.example/oauth/x/../token", true, false),
    ("https://as.example/%6Fauth/%74oken", true, false),
    ("https://as.example/oauth/token/", false, false),
    ("http://as.example/oauth/token", false, false),
    ("https://as.example/OAUTH/token", false, false),
    ("https://as.example:8443/oauth/token", false, false),
    ("https://as.example./oauth/token", false, false),
    ("https://as.example/oauth%2Ftoken", false, false),
    ("https://user@as.example/oauth/token", false, false),
    ("https://evil.example/oauth/token", false, false),
    ("/oauth/token", false, false),
    ("as.example/oauth/token", false, false),
    ("", false, false),
    ("https://rs.example:8443/api/items", false, true),
    ("https://RS.example:8443/api/items?page=2", false, true),
    ("https://rs.example:8443/api/%69tems", false, true),
    ("https://rs.example:8443/api/items/", false, false),
    ("https://rs.example/api/items", false, false),
    ("https://rs.example:8443/api/items%20", false, false),
];

static SEEDS: LazyLock<BTreeSet<Vec<u8>>> =
    LazyLock::new(|| mandate_fuzz::corpus(NAME).unwrap().into_iter().map(|(_, bytes)| bytes).collect());

#[derive(Debug, Clone)]
pub enum Input {
    /// A `DPoP` header value, checked at both places.
    Raw(String),
    /// A proof signed by `signer` with these header and claim members, in
    /// order, repeats kept.
    Built { header: Vec<(String, Value)>, claims: Vec<(String, Value)>, signer: Signer, place: Place },
}

pub struct DpopProof;

impl Target for DpopProof {
    const NAME: &'static str = NAME;
    type Input = Input;

    fn from_seed(bytes: &[u8]) -> Result<Input, String> {
        Ok(Input::Raw(String::from_utf8_lossy(bytes).into_owned()))
    }

    fn strategy(seeds: Vec<Input>) -> BoxedStrategy<Input> {
        let texts: Vec<String> = seeds
            .into_iter()
            .filter_map(|s| match s {
                Input::Raw(t) => Some(t),
                Input::Built { .. } => None,
            })
            .collect();
        prop_oneof![
            1 => any::<String>().prop_map(Input::Raw),
            3 => mutated_text(texts, &[".", "=", "-", "_", "eyJ", "%", " "]).prop_map(Input::Raw),
            8 => built(),
        ]
        .boxed()
    }

    fn check(input: &Input) -> Result<Verdict, TestCaseError> {
        match input {
            Input::Raw(proof) => {
                let mut verdict = Verdict::Refused;
                for place in [Place::TokenEndpoint, Place::Resource] {
                    if verify_proof(proof, &place.rules()).is_ok() {
                        ensure(SEEDS.contains(proof.as_bytes()), || format!("{proof:?} accepted, not a seed"))?;
                        verdict = Verdict::Accepted;
                    }
                }
                Ok(verdict)
            }
            Input::Built { header, claims, signer, place } => check_built(header, claims, *signer, *place),
        }
    }
}

#[test]
fn dpop_proof() -> Result<(), String> {
    mandate_fuzz::run::<DpopProof>().map(|_| ())
}

fn check_built(
    header: &[(String, Value)],
    claims: &[(String, Value)],
    signer: Signer,
    place: Place,
) -> Result<Verdict, TestCaseError> {
    let header_text = object_text(header);
    let proof = sign_text(signer.key(), &header_text, &object_text(claims));
    let rules = place.rules();
    let got = verify_proof(&proof, &rules);
    let expected = oracle(&last_wins(header), claims, signer, place);
    let described = || format!("{header_text} {} by {signer:?} at {place:?}", object_text(claims));
    match (&got, expected) {
        (Ok(p), Ok(())) => {
            ensure(p.jkt == signer.key().public().thumbprint(), || format!("{}: wrong jkt", described()))?;
            // The same proof with the place's own URL as `htu`: one replay key.
            let canonical: Vec<(String, Value)> = claims
                .iter()
                .map(|(k, v)| if k == "htu" { (k.clone(), json!(rules.htu)) } else { (k.clone(), v.clone()) })
                .collect();
            let twin = sign_text(signer.key(), &header_text, &object_text(&canonical));
            let twin = verify_proof(&twin, &rules)
                .map_err(|e| TestCaseError::fail(format!("{}: the canonical twin is refused: {e}", described())))?;
            ensure(twin.replay_key == p.replay_key, || format!("{}: equivalent htu, new replay key", described()))?;
            Ok(Verdict::Accepted)
        }
        (Err(_), Err(_)) => Ok(Verdict::Refused),
        (Ok(_), Err(why)) => Err(TestCaseError::fail(format!("{}: accepted, but {why}", described()))),
        (Err(e), Ok(())) => Err(TestCaseError::fail(format!("{}: refused with {e}", described()))),
    }
}

/// Whether the proof must be accepted, and if not, why.
fn oracle(h: &Map<String, Value>, claims: &[(String, Value)], signer: Signer, place: Place) -> Result<(), String> {
    let string = |name: &str| -> Result<Option<&str>, String> {
        match h.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("header {name} is not a string")),
        }
    };
    let alg = string("alg")?.ok_or("no alg")?;
    let typ = string("typ")?;
    if let Some(k) = string("kid")?
        && (k.is_empty() || k.len() > 128 || !k.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err("bad kid".into());
    }
    for name in ["jku", "x5u", "x5c", "crit", "b64", "zip", "enc"] {
        if h.contains_key(name) {
            return Err(format!("header {name}"));
        }
    }
    let typ_ok = typ.is_some_and(|t| t.strip_prefix("application/").unwrap_or(t).eq_ignore_ascii_case("dpop+jwt"));
    if !typ_ok {
        return Err("typ".into());
    }
    if !["EdDSA", "Ed25519", "ES256"].contains(&alg) {
        return Err(format!("alg {alg:?}"));
    }
    let jwk = h.get("jwk").ok_or("no jwk")?;
    let key = PublicJwk::from_json(jwk).map_err(|e| format!("jwk: {e}"))?;
    if key.thumbprint() != signer.key().public().thumbprint() || !signer.fits(alg) {
        return Err("not signed by the jwk's key with that alg".into());
    }
    // Claims: serde refuses a repeated known member and a wrong type.
    let known = ["jti", "htm", "htu", "iat", "ath", "nonce"];
    for name in known {
        if claims.iter().filter(|(k, _)| k == name).count() > 1 {
            return Err(format!("claim {name} repeated"));
        }
    }
    let c = last_wins(claims);
    let text = |name: &str, required: bool| -> Result<Option<&str>, String> {
        match c.get(name) {
            None | Some(Value::Null) if !required => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            _ => Err(format!("claim {name} missing or not a string")),
        }
    };
    let jti = text("jti", true)?.unwrap_or_default();
    let htm = text("htm", true)?.unwrap_or_default();
    let htu = text("htu", true)?.unwrap_or_default();
    let iat = c.get("iat").and_then(Value::as_i64).ok_or("iat missing or not an i64")?;
    let ath = text("ath", false)?;
    let nonce = text("nonce", false)?;
    if jti.is_empty() || jti.len() > 128 {
        return Err("jti length".into());
    }
    if nonce.is_some_and(|n| n.is_empty() || n.len() > 256) {
        return Err("nonce length".into());
    }
    let rules = place.rules();
    if htm != rules.htm {
        return Err("htm".into());
    }
    let matches = HTUS.iter().find(|(u, _, _)| *u == htu).is_some_and(|(_, token, resource)| match place {
        Place::TokenEndpoint => *token,
        Place::Resource => *resource,
    });
    if !matches {
        return Err("htu".into());
    }
    if iat < NOW - rules.max_age || iat > NOW + rules.max_skew {
        return Err("iat".into());
    }
    if let Some(token) = rules.access_token
        && ath != Some(access_token_hash(token).as_str())
    {
        return Err("ath".into());
    }
    Ok(())
}

fn public_jwk(signer: Signer) -> Value {
    let mut jwk = signer.key().public().to_json();
    if let Some(o) = jwk.as_object_mut() {
        for m in ["kid", "alg", "use"] {
            o.remove(m);
        }
    }
    jwk
}

fn header_member() -> impl Strategy<Value = (String, Value)> {
    let mut private = public_jwk(Signer::Ed25519);
    private["d"] = json!("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A");
    let mut hs = public_jwk(Signer::Ed25519);
    hs["alg"] = json!("HS256");
    prop_oneof![
        select(vec![
            json!("dpop+jwt"),
            json!("application/dpop+jwt"),
            json!("DPoP+JWT"),
            json!("jwt"),
            json!("at+jwt"),
            json!(""),
            json!(null),
            json!(3),
        ])
        .prop_map(|v| ("typ".to_owned(), v)),
        select(vec![
            json!("EdDSA"),
            json!("Ed25519"),
            json!("ES256"),
            json!("none"),
            json!("HS256"),
            json!("RS256"),
            json!(""),
            json!(null),
        ])
        .prop_map(|v| ("alg".to_owned(), v)),
        select(vec![
            public_jwk(Signer::Ed25519),
            public_jwk(Signer::P256),
            public_jwk(Signer::Stranger),
            ED25519.public().to_json(),
            P256.public().to_json(),
            STRANGER.public().to_json(),
            private,
            hs,
            json!({}),
            json!("jwk"),
            json!(null),
        ])
        .prop_map(|v| ("jwk".to_owned(), v)),
        select(vec![json!("k1"), json!(""), json!("a b"), json!(1)]).prop_map(|v| ("kid".to_owned(), v)),
        select(vec![
            ("jku".to_owned(), json!("https://evil.example/jwks")),
            ("x5c".to_owned(), json!([])),
            ("crit".to_owned(), json!(["htu"])),
            ("b64".to_owned(), json!(false)),
            ("cty".to_owned(), json!("x")),
        ]),
    ]
}

fn claim_member() -> impl Strategy<Value = (String, Value)> {
    let htus: Vec<Value> = HTUS.iter().map(|(u, _, _)| json!(u)).collect();
    prop_oneof![
        select(vec![
            json!("j"),
            json!(""),
            json!("x".repeat(128)),
            json!("x".repeat(129)),
            json!("\u{e9}".repeat(64)),
            json!("\u{e9}".repeat(65)),
            json!(null),
            json!(5),
        ])
        .prop_map(|v| ("jti".to_owned(), v)),
        select(vec![json!("POST"), json!("GET"), json!("post"), json!("Get"), json!("PUT"), json!(""), json!(null)])
            .prop_map(|v| ("htm".to_owned(), v)),
        select(htus.clone()).prop_map(|v| ("htu".to_owned(), v)),
        select(htus).prop_map(|v| ("htu".to_owned(), v)),
        select(vec![
            json!(NOW),
            json!(NOW - 60),
            json!(NOW - 61),
            json!(NOW + 5),
            json!(NOW + 6),
            json!(NOW.to_string()),
            json!(1.8e9),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(null),
        ])
        .prop_map(|v| ("iat".to_owned(), v)),
        select(vec![json!("n"), json!(""), json!("x".repeat(256)), json!("x".repeat(257)), json!(null), json!(3)])
            .prop_map(|v| ("nonce".to_owned(), v)),
        select(vec![
            json!(access_token_hash(ACCESS_TOKEN)),
            json!(access_token_hash("other")),
            json!(""),
            json!(null),
            json!(1),
        ])
        .prop_map(|v| ("ath".to_owned(), v)),
        select(vec![("exp".to_owned(), json!(0)), ("foo".to_owned(), json!({"a": [1]}))]),
    ]
}

fn built() -> impl Strategy<Value = Input> {
    (
        signer(),
        prop_oneof![Just(Place::TokenEndpoint), Just(Place::Resource)],
        proptest::bool::weighted(0.8),
        proptest::collection::vec(header_member(), 0..3),
        proptest::bool::weighted(0.8),
        proptest::collection::vec(claim_member(), 0..3),
    )
        .prop_map(|(signer, place, base_header, extra_header, base_claims, extra_claims)| {
            let mut header = Vec::new();
            if base_header {
                header.push(("typ".to_owned(), json!("dpop+jwt")));
                header.push(("alg".to_owned(), json!(signer.key().alg().name())));
                header.push(("jwk".to_owned(), public_jwk(signer)));
            }
            header.extend(extra_header);
            let rules = place.rules();
            let mut claims = Vec::new();
            if base_claims {
                claims.push(("jti".to_owned(), json!("j-1")));
                claims.push(("htm".to_owned(), json!(rules.htm)));
                claims.push(("htu".to_owned(), json!(rules.htu)));
                claims.push(("iat".to_owned(), json!(NOW)));
                if let Some(t) = rules.access_token {
                    claims.push(("ath".to_owned(), json!(access_token_hash(t))));
                }
            }
            // Extra claims replace a base claim of the same name rather
            // than repeat it; repeats come from two extras.
            for (k, v) in extra_claims {
                if let Some(slot) = claims.iter_mut().take(5).find(|(name, _)| *name == k) {
                    slot.1 = v;
                } else {
                    claims.push((k, v));
                }
            }
            Input::Built { header, claims, signer, place }
        })
}
