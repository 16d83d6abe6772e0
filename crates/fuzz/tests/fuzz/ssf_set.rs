//! Security Event Tokens as the resource server's Shared Signals receiver
//! reads them (`mandate_verifier::ssf::set::verify`).
//!
//! - Verification never panics, and a refusal always carries an RFC 8935
//!   error code (`verify` itself never answers "try again later").
//! - A SET accepted satisfies the rules, checked here on its payload by an
//!   oracle written from RFC 8417 and SSF 1.0, not from the code: `iss`
//!   and `aud`, `iat` not in the future, a `jti`, no `sub` or `exp`,
//!   exactly one event, an object; and the event handed out is that one.
//! - Claims built from members and signed by a trusted key are accepted
//!   whenever the oracle says they should be (names unique, `sub_id`
//!   absent or an `opaque` identifier, the SET no longer than
//!   `MAX_SET_BYTES`).

use mandate_fuzz::{Target, Verdict, ensure, mutated_text};
use mandate_jose::jws::Unverified;
use mandate_verifier::ssf::set::{MAX_SET_BYTES, SESSION_REVOKED, SetRules, VERIFICATION, verify};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};

use crate::common::{ED25519, NOW, last_wins, nasty_string, object_text, sign_text, trusted};

pub const ISSUER: &str = "https://mandate.example";
pub const AUDIENCE: &str = "https://calendar.example";
const LEEWAY: i64 = 60;

const RULES: SetRules<'static> = SetRules { issuer: ISSUER, audience: AUDIENCE, now: NOW, leeway: LEEWAY };

#[derive(Debug, Clone)]
pub enum Input {
    /// A SET as received.
    Token(String),
    /// Claims written member by member, signed by a trusted key under a
    /// good header.
    Claims(Vec<(String, Value)>),
}

/// A good `session-revoked` SET's claims, member by member.
pub fn good_members() -> Vec<(String, Value)> {
    vec![
        ("iss".into(), json!(ISSUER)),
        ("aud".into(), json!(AUDIENCE)),
        ("iat".into(), json!(NOW)),
        ("jti".into(), json!("set_01JABCDEFGHJKMNPQRSTVWXYZ0")),
        ("sub_id".into(), json!({"format": "opaque", "id": "tok_01JABCDEFGHJKMNPQRSTVWXYZ0"})),
        (
            "events".into(),
            json!({SESSION_REVOKED: {"event_timestamp": NOW, "initiating_entity": "admin", "reason_admin": {"en": "r"}}}),
        ),
    ]
}

pub fn header(typ: &str, alg: &str, kid: &str) -> String {
    format!(r#"{{"typ":"{typ}","alg":"{alg}","kid":"{kid}"}}"#)
}

#[derive(Debug, Clone)]
enum Edit {
    Set(&'static str, Value),
    Remove(&'static str),
    Append(&'static str, Value),
}

fn values() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(ISSUER)),
        Just(json!(AUDIENCE)),
        Just(json!([AUDIENCE, "https://other.example"])),
        Just(json!(["https://other.example"])),
        Just(json!([])),
        (NOW - 100..NOW + 200).prop_map(|n| json!(n)),
        Just(json!(1.5)),
        Just(json!("")),
        nasty_string().prop_map(Value::String),
        Just(json!({})),
        Just(json!({SESSION_REVOKED: {}})),
        Just(json!({VERIFICATION: {"state": "s"}})),
        Just(json!({SESSION_REVOKED: {}, VERIFICATION: {"state": "s"}})),
        Just(json!({VERIFICATION: "x"})),
        Just(json!({"format": "opaque", "id": "tok_1"})),
        Just(json!({"format": "opaque"})),
        Just(json!({"format": "email", "email": "a@example.com"})),
        Just(json!({"user": {"format": "opaque", "id": "usr_1"}})),
        Just(json!({
            "format": "complex",
            "session": {"format": "opaque", "id": "tok_1"},
            "user": {"format": "iss_sub", "iss": ISSUER, "sub": "usr_1"},
        })),
        Just(json!({"format": "complex", "session": {"format": "opaque", "id": "tok_1"}, "user": "usr_1"})),
        Just(json!({"format": "iss_sub", "iss": ISSUER, "sub": "usr_1"})),
    ]
    .boxed()
}

fn apply(mut members: Vec<(String, Value)>, edits: Vec<Edit>) -> Vec<(String, Value)> {
    for edit in edits {
        match edit {
            Edit::Set(name, v) => match members.iter_mut().find(|(n, _)| n == name) {
                Some(m) => m.1 = v,
                None => members.push((name.into(), v)),
            },
            Edit::Remove(name) => members.retain(|(n, _)| n != name),
            Edit::Append(name, v) => members.push((name.into(), v)),
        }
    }
    members
}

pub struct SsfSet;

impl Target for SsfSet {
    const NAME: &'static str = "ssf_set";
    type Input = Input;

    fn from_seed(bytes: &[u8]) -> Result<Input, String> {
        Ok(Input::Token(String::from_utf8_lossy(bytes).trim_end().to_owned()))
    }

    fn strategy(seeds: Vec<Input>) -> BoxedStrategy<Input> {
        let texts: Vec<String> = seeds
            .into_iter()
            .filter_map(|s| match s {
                Input::Token(t) => Some(t),
                Input::Claims(_) => None,
            })
            .collect();
        let names = select(vec!["iss", "aud", "iat", "jti", "sub", "exp", "txn", "sub_id", "events", "other"]);
        let edit = prop_oneof![
            (names.clone(), values()).prop_map(|(n, v)| Edit::Set(n, v)),
            names.clone().prop_map(Edit::Remove),
            (names, values()).prop_map(|(n, v)| Edit::Append(n, v)),
        ];
        prop_oneof![
            1 => any::<String>().prop_map(Input::Token),
            3 => mutated_text(texts, &[".", "eyJ", "secevent+jwt", "RS256", "none", "=", "_"]).prop_map(Input::Token),
            4 => proptest::collection::vec(edit, 0..4).prop_map(|e| Input::Claims(apply(good_members(), e))),
        ]
        .boxed()
    }

    fn check(input: &Input) -> Result<Verdict, TestCaseError> {
        match input {
            Input::Token(token) => check_token(token),
            Input::Claims(members) => {
                let token = sign_text(&ED25519, &header("secevent+jwt", "EdDSA", ED25519.kid()), &object_text(members));
                let verdict = check_token(&token)?;
                let names_unique =
                    members.iter().enumerate().all(|(i, (n, _))| !members[..i].iter().any(|(m, _)| m == n));
                let claims = last_wins(members);
                let text = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
                let opaque = |v: &Value| {
                    v["format"] == "opaque" && text(&v["id"]) && v.as_object().is_some_and(|o| o.len() == 2)
                };
                let iss_sub = |v: &Value| {
                    v["format"] == "iss_sub"
                        && text(&v["iss"])
                        && text(&v["sub"])
                        && v.as_object().is_some_and(|o| o.len() == 3)
                };
                // The shapes Mandate sends (ADR 0039): a simple opaque or
                // iss_sub subject, or a complex one of a session and a user.
                let opaque_or_none = match claims.get("sub_id") {
                    None | Some(Value::Null) => true,
                    Some(v) => {
                        opaque(v)
                            || iss_sub(v)
                            || (v["format"] == "complex"
                                && opaque(&v["session"])
                                && iss_sub(&v["user"])
                                && v.as_object().is_some_and(|o| o.len() == 3))
                    }
                };
                // A receiver bounds what it reads: a SET longer than the
                // limit is refused whatever it says.
                let short_enough = token.len() <= MAX_SET_BYTES;
                if names_unique && opaque_or_none && short_enough && rules_hold(&claims) {
                    ensure(verdict == Verdict::Accepted, || format!("{members:?}: refused, though the rules hold"))?;
                }
                Ok(verdict)
            }
        }
    }
}

#[test]
fn ssf_set() -> Result<(), String> {
    mandate_fuzz::run::<SsfSet>().map(|_| ())
}

/// Found by the fuzzer (CI, 2026-12-06): good claims carrying a long `txn`
/// make a SET longer than the receiver reads, which it refuses.
#[test]
fn a_set_longer_than_the_limit_is_refused_whatever_its_claims() -> Result<(), TestCaseError> {
    let long = apply(good_members(), vec![Edit::Set("txn", json!("\"; permit(principal);".repeat(900)))]);
    assert_eq!(SsfSet::check(&Input::Claims(long))?, Verdict::Refused);
    let short = apply(good_members(), vec![Edit::Set("txn", json!("t".repeat(64)))]);
    assert_eq!(SsfSet::check(&Input::Claims(short))?, Verdict::Accepted);
    Ok(())
}

fn check_token(token: &str) -> Result<Verdict, TestCaseError> {
    match verify(token, &trusted(), &RULES) {
        Ok(event) => {
            let payload = Unverified::parse(token, false)
                .map_err(|e| TestCaseError::fail(format!("{token:?}: accepted, but does not parse: {e}")))?
                .payload;
            let claims: Map<String, Value> = serde_json::from_slice(&payload)
                .map_err(|e| TestCaseError::fail(format!("{token:?}: accepted, claims not an object: {e}")))?;
            ensure(rules_hold(&claims), || format!("{token:?}: accepted against the rules"))?;
            ensure(token.len() <= MAX_SET_BYTES, || format!("{token:?}: accepted, though longer than the limit"))?;
            ensure(claims.get("jti") == Some(&json!(event.jti)), || format!("{token:?}: another jti"))?;
            let events = claims.get("events").and_then(Value::as_object);
            ensure(events.is_some_and(|e| e.contains_key(&event.event_type)), || format!("{token:?}: another event"))?;
            ensure(
                events.and_then(|e| e.get(&event.event_type)) == Some(&Value::Object(event.payload.clone())),
                || format!("{token:?}: another payload"),
            )?;
            Ok(Verdict::Accepted)
        }
        Err(e) => {
            ensure(e.code().is_some(), || format!("{token:?}: refused without an RFC 8935 code: {e:?}"))?;
            Ok(Verdict::Refused)
        }
    }
}

/// RFC 8417 §2.2 and SSF 1.0 §4.1, as the receiver must apply them.
fn rules_hold(c: &Map<String, Value>) -> bool {
    let absent = |name: &str| c.get(name).is_none_or(Value::is_null);
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(all)) => all.iter().all(Value::is_string) && all.iter().any(|a| a == AUDIENCE),
        _ => false,
    };
    let iat_ok = c.get("iat").and_then(Value::as_i64).is_some_and(|iat| iat <= NOW + LEEWAY);
    let jti_ok = c.get("jti").and_then(Value::as_str).is_some_and(|j| !j.is_empty() && j.len() <= 256);
    let txn_ok = c.get("txn").is_none_or(|t| t.is_null() || t.is_string());
    let events = c.get("events").and_then(Value::as_object);
    let one_event = events.is_some_and(|e| e.len() == 1 && e.values().all(Value::is_object));
    let subject_if_revoked = events.is_none_or(|e| !e.contains_key(SESSION_REVOKED)) || !absent("sub_id");
    c.get("iss") == Some(&json!(ISSUER))
        && aud_ok
        && iat_ok
        && jti_ok
        && txn_ok
        && absent("sub")
        && absent("exp")
        && one_event
        && subject_if_revoked
}
