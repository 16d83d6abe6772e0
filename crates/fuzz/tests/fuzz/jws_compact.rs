//! JWS compact parsing (`jws::Unverified::parse`) and the access-token
//! verifier built on it (`access::AccessTokenVerifier`).
//!
//! - Parsing never panics and fails only with a parse-stage error
//!   (`Malformed`, `ForbiddenHeader`, `AlgorithmNotAllowed`).
//! - An accepted token re-serialises to exactly the input: its decoding is
//!   canonical (no padding, no stray bits, nothing skipped), so one token
//!   has one meaning.
//! - An accepted header has a usable `alg` and none of the refused members.
//! - A string the target did not sign itself verifies only if it is, byte
//!   for byte, a seed: no mutation of a signed token keeps its signature.
//! - Tokens signed by the trusted keys under generated headers are
//!   accepted exactly when the header obeys RFC 8725 as Mandate reads it
//!   (an oracle written here from the rules, not from the code).

use std::collections::BTreeSet;
use std::sync::LazyLock;

use mandate_fuzz::{Target, Verdict, ensure, mutated_text};
use mandate_jose::JoseError;
use mandate_jose::access::AccessTokenVerifier;
use mandate_jose::jws::{MAX_TOKEN_LEN, Unverified};
use mandate_model::claims::AccessTokenClaims;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};

use crate::common::{ED25519, NOW, P256, Signer, b64, last_wins, object_text, sign_text, signer, trusted, unb64};

pub const NAME: &str = "jws_compact";
pub const ISSUER: &str = "https://mandate.example";
pub const AUDIENCE: &str = "https://api.example.com";

/// Header members an access token must never carry (RFC 8725 §3.10,
/// §3.1; RFC 7797; RFC 7516).
const FORBIDDEN: &[&str] = &["jwk", "jku", "x5u", "x5c", "crit", "b64", "zip", "enc"];

/// The claims every signed input carries: valid at [`NOW`] for
/// [`AUDIENCE`], so that only the header decides.
pub fn claims() -> AccessTokenClaims {
    AccessTokenClaims {
        iss: ISSUER.into(),
        sub: "agt_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        aud: AUDIENCE.into(),
        exp: 1_800_000_300,
        iat: 1_800_000_000,
        nbf: 1_800_000_000,
        jti: "tok_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        client_id: "agt_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        scope: "mail.read".into(),
        act: None,
        may_act: None,
        authorization_details: None,
        grant_id: None,
        purpose: None,
        cnf: None,
        status: None,
    }
}

pub static VERIFIER: LazyLock<AccessTokenVerifier> =
    LazyLock::new(|| AccessTokenVerifier { issuer: ISSUER.into(), keys: trusted(), leeway: 60 });

static SEEDS: LazyLock<BTreeSet<Vec<u8>>> =
    LazyLock::new(|| mandate_fuzz::corpus(NAME).unwrap().into_iter().map(|(_, bytes)| bytes).collect());

#[derive(Debug, Clone)]
pub enum Input {
    /// A string as a client or resource server would receive it.
    Raw(String),
    /// The fixed claims signed by `signer` under a header of these members,
    /// in this order, repeats kept.
    Signed { header: Vec<(String, Value)>, signer: Signer },
}

pub struct JwsCompact;

impl Target for JwsCompact {
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
                Input::Signed { .. } => None,
            })
            .collect();
        prop_oneof![
            1 => any::<String>().prop_map(Input::Raw),
            1 => "[A-Za-z0-9_=.-]{0,200}".prop_map(Input::Raw),
            2 => (header_text(), header_text(), proptest::collection::vec(any::<u8>(), 0..80))
                .prop_map(|(h, p, s)| Input::Raw(format!("{}.{}.{}", b64(h), b64(p), b64(s)))),
            4 => mutated_text(texts, DICTIONARY).prop_map(Input::Raw),
            4 => signed(),
        ]
        .boxed()
    }

    fn check(input: &Input) -> Result<Verdict, TestCaseError> {
        match input {
            Input::Raw(token) => check_raw(token),
            Input::Signed { header, signer } => check_signed(header, *signer),
        }
    }
}

#[test]
fn jws_compact() -> Result<(), String> {
    mandate_fuzz::run::<JwsCompact>().map(|_| ())
}

const DICTIONARY: &[&str] = &[".", "..", "=", "==", "-", "_", "+", "/", " ", "\n", "eyJ", "e30", "AA", "A", "%"];

fn check_raw(token: &str) -> Result<Verdict, TestCaseError> {
    check_parse(token)?;
    if let Ok(u) = Unverified::parse(token, false)
        && u.verify(&trusted()).is_ok()
    {
        ensure(SEEDS.contains(token.as_bytes()), || format!("{token:?} verifies but is no signed seed"))?;
    }
    let verdict = VERIFIER.verify(token, NOW, Some(AUDIENCE));
    if verdict.is_ok() {
        ensure(SEEDS.contains(token.as_bytes()), || format!("{token:?} is accepted but is no signed seed"))?;
    }
    Ok(if verdict.is_ok() { Verdict::Accepted } else { Verdict::Refused })
}

/// The properties of `Unverified::parse` alone.
fn check_parse(token: &str) -> Result<(), TestCaseError> {
    let strict = Unverified::parse(token, false);
    let dpop = Unverified::parse(token, true);
    for (allow_jwk, parsed) in [(false, &strict), (true, &dpop)] {
        match parsed {
            Ok(u) => {
                ensure(token.len() <= MAX_TOKEN_LEN, || format!("{} bytes accepted", token.len()))?;
                let rebuilt = format!("{}.{}", u.signing_input(), b64(u.signature()));
                ensure(rebuilt == token, || format!("{token:?} re-serialises as {rebuilt:?}"))?;
                let segments: Vec<&str> = token.split('.').collect();
                ensure(segments.len() == 3, || format!("{token:?} accepted with {} segments", segments.len()))?;
                ensure(b64(&u.payload) == segments[1], || format!("{token:?}: payload does not re-encode"))?;
                let header: Value = serde_json::from_slice(&unb64(segments[0]))
                    .map_err(|e| TestCaseError::fail(format!("{token:?}: accepted header is not JSON: {e}")))?;
                let header = header
                    .as_object()
                    .ok_or_else(|| TestCaseError::fail(format!("{token:?}: accepted header is no object")))?;
                for name in FORBIDDEN {
                    if *name == "jwk" && allow_jwk {
                        continue;
                    }
                    ensure(!header.contains_key(*name), || format!("{token:?}: accepted with {name}"))?;
                }
                ensure(header.get("alg") == Some(&Value::String(u.header.alg.clone())), || {
                    format!("{token:?}: alg read as {:?}", u.header.alg)
                })?;
                ensure(!u.header.alg.is_empty() && !u.header.alg.eq_ignore_ascii_case("none"), || {
                    format!("{token:?}: alg {:?} accepted", u.header.alg)
                })?;
                ensure(allow_jwk || u.header.jwk.is_none(), || format!("{token:?}: jwk kept outside DPoP"))?;
            }
            Err(JoseError::Malformed(_) | JoseError::ForbiddenHeader(_) | JoseError::AlgorithmNotAllowed(_)) => {}
            Err(other) => return Err(TestCaseError::fail(format!("{token:?}: parse failed with {other:?}"))),
        }
    }
    // Allowing `jwk` only ever adds `jwk`.
    match (&strict, &dpop) {
        (Ok(s), Ok(d)) => ensure(s.header.alg == d.header.alg && s.header.typ == d.header.typ, || {
            format!("{token:?}: the two parses disagree")
        }),
        (Ok(_), Err(e)) => Err(TestCaseError::fail(format!("{token:?}: only the DPoP parse refuses it: {e:?}"))),
        (Err(_), Ok(d)) => ensure(d.header.jwk.is_some(), || format!("{token:?}: only the strict parse refuses it")),
        (Err(_), Err(_)) => Ok(()),
    }
}

fn check_signed(members: &[(String, Value)], signer: Signer) -> Result<Verdict, TestCaseError> {
    let header = object_text(members);
    let payload = serde_json::to_string(&claims()).unwrap();
    let token = sign_text(signer.key(), &header, &payload);
    check_parse(&token)?;
    let effective = last_wins(members);
    let expected = oracle(&effective, signer);
    let got = VERIFIER.verify(&token, NOW, Some(AUDIENCE));
    match (&got, &expected) {
        (Ok(c), Ok(())) => ensure(*c == claims(), || format!("{header}: claims changed"))?,
        (Err(_), Err(Flaw::Other)) => {}
        (Err(e), Err(Flaw::Forbidden(names))) => {
            ensure(matches!(e, JoseError::ForbiddenHeader(n) if names.contains(n)), || {
                format!("{header}: refused with {e:?}, expected a forbidden-header error for one of {names:?}")
            })?;
        }
        (Ok(_), Err(flaw)) => return Err(TestCaseError::fail(format!("{header} by {signer:?}: accepted ({flaw:?})"))),
        (Err(e), Ok(())) => return Err(TestCaseError::fail(format!("{header} by {signer:?}: refused with {e:?}"))),
    }
    Ok(if got.is_ok() { Verdict::Accepted } else { Verdict::Refused })
}

#[derive(Debug)]
enum Flaw {
    /// Refused members, and no other fault.
    Forbidden(Vec<&'static str>),
    Other,
}

/// Whether an access token with this header, signed by `signer`, is
/// acceptable: RFC 8725 as Mandate applies it.
fn oracle(h: &Map<String, Value>, signer: Signer) -> Result<(), Flaw> {
    let string = |name: &str| -> Result<Option<&str>, Flaw> {
        match h.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Flaw::Other),
        }
    };
    let alg = string("alg")?.ok_or(Flaw::Other)?;
    let typ = string("typ")?;
    let kid = string("kid")?;
    if alg.is_empty() || alg.eq_ignore_ascii_case("none") {
        return Err(Flaw::Other);
    }
    if let Some(k) = kid
        && (k.is_empty() || k.len() > 128 || !k.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Flaw::Other);
    }
    let forbidden: Vec<&'static str> = FORBIDDEN.iter().copied().filter(|n| h.contains_key(*n)).collect();
    // `at+jwt`, with or without `application/`, in any case (RFC 9068 §4, RFC 7515 §4.1.9).
    let typ_ok = typ.is_some_and(|t| {
        let t = t.strip_prefix("application/").unwrap_or(t);
        t.eq_ignore_ascii_case("at+jwt")
    });
    let signed_right = kid == Some(signer.key().kid()) && signer != Signer::Stranger && signer.fits(alg);
    match (forbidden.is_empty(), typ_ok && signed_right) {
        (true, true) => Ok(()),
        (false, true) => Err(Flaw::Forbidden(forbidden)),
        _ => Err(Flaw::Other),
    }
}

/// A header member from a vocabulary of good, bad and odd values.
fn member() -> impl Strategy<Value = (String, Value)> {
    let ed = ED25519.kid().to_owned();
    let ec = P256.kid().to_owned();
    let jwk = {
        let mut j = ED25519.public().to_json();
        if let Some(o) = j.as_object_mut() {
            o.remove("kid");
        }
        j
    };
    prop_oneof![
        3 => select(vec![
            json!("EdDSA"), json!("Ed25519"), json!("ES256"), json!("none"), json!("None"), json!("NONE"),
            json!("HS256"), json!("RS256"), json!("ES384"), json!(""), json!("eddsa"), json!("EdDSA "), json!(5),
            json!(null), json!(["EdDSA"]),
        ]).prop_map(|v| ("alg".to_owned(), v)),
        3 => select(vec![
            json!("at+jwt"), json!("application/at+jwt"), json!("AT+JWT"), json!("Application/at+jwt"),
            json!("JWT"), json!("jwt"), json!("dpop+jwt"), json!("statuslist+jwt"), json!(""), json!("at+jwt "),
            json!("application/"), json!("at+JWT"), json!(1), json!(null),
        ]).prop_map(|v| ("typ".to_owned(), v)),
        3 => select(vec![
            json!(ed), json!(ec), json!("unknown"), json!(""), json!("a kid"), json!("k\u{e9}"), json!("x".repeat(129)),
            json!(7), json!(null),
        ]).prop_map(|v| ("kid".to_owned(), v)),
        2 => select(vec![
            ("jwk".to_owned(), jwk),
            ("jku".to_owned(), json!("https://evil.example/jwks.json")),
            ("x5u".to_owned(), json!("https://evil.example/cert.pem")),
            ("x5c".to_owned(), json!([])),
            ("crit".to_owned(), json!(["exp"])),
            ("crit".to_owned(), json!([])),
            ("b64".to_owned(), json!(false)),
            ("zip".to_owned(), json!("DEF")),
            ("enc".to_owned(), json!("A128GCM")),
        ]),
        1 => select(vec![
            ("cty".to_owned(), json!("JWT")),
            ("x5t".to_owned(), json!("abc")),
            ("x5t#S256".to_owned(), json!("abc")),
            ("nonce".to_owned(), json!(1)),
            ("Alg".to_owned(), json!("none")),
            ("JKU".to_owned(), json!("https://evil.example")),
            ("".to_owned(), json!(null)),
        ]),
    ]
}

/// A header: often the right one for the signer, with members added
/// (which may repeat and so override earlier ones).
fn signed() -> impl Strategy<Value = Input> {
    (signer(), proptest::bool::weighted(0.7), proptest::collection::vec(member(), 0..4)).prop_map(
        |(signer, base, extra)| {
            let mut header = Vec::new();
            if base {
                header.push(("alg".to_owned(), json!(signer.key().alg().name())));
                header.push(("kid".to_owned(), json!(signer.key().kid())));
                header.push(("typ".to_owned(), json!("at+jwt")));
            }
            header.extend(extra);
            Input::Signed { header, signer }
        },
    )
}

/// A header-like JSON text, or something that is not one.
fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::collection::vec(member(), 0..5).prop_map(|m| object_text(&m)),
        1 => select(vec!["", "{", "[]", "null", "\"x\"", "{}", "{\"alg\":\"EdDSA\"}x", " {\"alg\":\"EdDSA\"}"])
            .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}
