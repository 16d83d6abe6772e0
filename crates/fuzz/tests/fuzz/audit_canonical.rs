//! The audit trail's canonical JSON encoder (`canonical::to_canonical`,
//! RFC 8785) and the direct encoder of events (`Event::write_canonical`).
//!
//! - Encoding never panics. It refuses exactly the values that hold a
//!   non-integer number.
//! - It is deterministic and a fixed point: the encoding parses back
//!   (serde_json) to the same value, and that value encodes to the same
//!   text.
//! - Where member names sort the same by UTF-8 and by UTF-16, it equals
//!   serde_json's compact output over members in that order (the same
//!   escaping, no whitespace): an independent encoder.
//! - An event's direct encoding equals the generic one over its JSON value
//!   without `hash`, and an event read from JSON hashes the same twice.

use mandate_audit::Event;
use mandate_audit::canonical::{CanonicalError, to_canonical};
use mandate_fuzz::{Target, Verdict, ensure, mutated_bytes};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value};

use crate::common::nasty_string;

#[derive(Debug, Clone)]
pub enum Input {
    /// Bytes that may be JSON (and may be an event).
    Raw(Vec<u8>),
    Tree(Value),
    Event(Box<Event>),
}

pub struct AuditCanonical;

impl Target for AuditCanonical {
    const NAME: &'static str = "audit_canonical";
    type Input = Input;

    fn from_seed(bytes: &[u8]) -> Result<Input, String> {
        Ok(Input::Raw(bytes.to_vec()))
    }

    fn strategy(seeds: Vec<Input>) -> BoxedStrategy<Input> {
        let raw: Vec<Vec<u8>> = seeds
            .into_iter()
            .filter_map(|s| match s {
                Input::Raw(b) => Some(b),
                _ => None,
            })
            .collect();
        prop_oneof![
            3 => mutated_bytes(raw, DICTIONARY).prop_map(Input::Raw),
            4 => value().prop_map(Input::Tree),
            2 => event().prop_map(|e| Input::Event(Box::new(e))),
        ]
        .boxed()
    }

    fn check(input: &Input) -> Result<Verdict, TestCaseError> {
        match input {
            Input::Raw(bytes) => {
                if let Ok(e) = serde_json::from_slice::<Event>(bytes) {
                    check_event(&e)?;
                }
                match serde_json::from_slice::<Value>(bytes) {
                    Ok(v) => check_value(&v),
                    Err(_) => Ok(Verdict::Refused),
                }
            }
            Input::Tree(v) => check_value(v),
            Input::Event(e) => {
                check_event(e)?;
                check_value(&serde_json::to_value(e.as_ref()).map_err(|e| TestCaseError::fail(e.to_string()))?)
            }
        }
    }
}

#[test]
fn audit_canonical() -> Result<(), String> {
    mandate_fuzz::run::<AuditCanonical>().map(|_| ())
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_i64().is_none() && n.as_u64().is_none(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}

/// Whether every object's member names sort the same by UTF-8 bytes and
/// by UTF-16 code units.
fn orders_agree(v: &Value) -> bool {
    match v {
        Value::Array(items) => items.iter().all(orders_agree),
        Value::Object(m) => {
            let keys: Vec<&String> = m.keys().collect();
            keys.iter().enumerate().all(|(i, a)| {
                keys[..i].iter().all(|b| a.as_bytes().cmp(b.as_bytes()) == a.encode_utf16().cmp(b.encode_utf16()))
            }) && m.values().all(orders_agree)
        }
        _ => true,
    }
}

/// `v` with every object's members inserted in UTF-8 order.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        Value::Object(m) => {
            let mut members: Vec<(&String, &Value)> = m.iter().collect();
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            Value::Object(members.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect::<Map<_, _>>())
        }
        other => other.clone(),
    }
}

fn check_value(v: &Value) -> Result<Verdict, TestCaseError> {
    let c = match to_canonical(v) {
        Err(CanonicalError::Float) => {
            ensure(has_float(v), || format!("{v}: refused as a float"))?;
            return Ok(Verdict::Refused);
        }
        Err(e) => return Err(TestCaseError::fail(format!("{v}: {e}"))),
        Ok(c) => c,
    };
    ensure(!has_float(v), || format!("{v}: a float encoded as {c}"))?;
    ensure(to_canonical(v).as_ref() == Ok(&c), || format!("{v}: not deterministic"))?;
    let back: Value = serde_json::from_str(&c).map_err(|e| TestCaseError::fail(format!("{c}: does not parse: {e}")))?;
    ensure(back == *v, || format!("{v}: encodes as {c}, which parses as {back}"))?;
    ensure(to_canonical(&back).as_ref() == Ok(&c), || format!("{c}: not a fixed point"))?;
    if orders_agree(v) {
        let reference = serde_json::to_string(&sorted(v)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        ensure(reference == c, || format!("{v}: canonical {c}\n serde_json {reference}"))?;
    }
    Ok(Verdict::Accepted)
}

fn check_event(e: &Event) -> Result<(), TestCaseError> {
    let mut direct = String::new();
    e.write_canonical(&mut direct);
    let generic = e.canonical_via_value().map_err(|err| TestCaseError::fail(format!("{e:?}: {err}")))?;
    ensure(direct == generic, || format!("{e:?}:\n direct  {direct}\n generic {generic}"))?;
    let h = e.compute_hash().map_err(|err| TestCaseError::fail(err.to_string()))?;
    ensure(e.compute_hash().as_ref() == Ok(&h), || format!("{e:?}: the hash moves"))?;
    let text = serde_json::to_string(e).map_err(|err| TestCaseError::fail(err.to_string()))?;
    let back: Event = serde_json::from_str(&text).map_err(|err| TestCaseError::fail(format!("{text}: {err}")))?;
    ensure(back == *e, || format!("{text}: does not read back"))
}

const DICTIONARY: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "\\u0000",
    "\\ud83d\\ude00",
    "\\u20ac",
    "\\/",
    "-0",
    "1e2",
    "0.0",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "1E400",
    "\u{e000}",
    "\u{10000}",
    "\u{7f}",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec!["a", "b", "A", "aa", "", "\u{e9}", "\u{20ac}", "\u{e000}", "\u{ffff}", "\u{10000}", "\u{1f600}"])
            .prop_map(str::to_owned),
        2 => nasty_string(),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        select(vec![i64::MIN, i64::MAX, -1, 0]).prop_map(Value::from),
        select(vec![u64::MAX, 1 << 53, (1 << 53) + 1]).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn opt() -> impl Strategy<Value = Option<String>> {
    proptest::option::weighted(0.6, nasty_string())
}

fn event() -> impl Strategy<Value = Event> {
    (
        (any::<u64>(), nasty_string(), nasty_string(), opt(), opt(), opt()),
        (proptest::collection::vec(nasty_string(), 0..4), opt(), opt(), opt(), opt(), opt()),
        (opt(), opt(), proptest::option::of(any::<u64>()), opt(), opt(), nasty_string(), nasty_string()),
    )
        .prop_map(
            |(
                (seq, time, kind, decision, subject, actor),
                (chain, client_id, action, resource, scope, jti),
                (grant_id, parent, count, reason, request_id, prev_hash, hash),
            )| Event {
                seq,
                time,
                kind,
                decision,
                subject,
                actor,
                chain,
                client_id,
                action,
                resource,
                scope,
                jti,
                grant_id,
                parent,
                count,
                reason,
                request_id,
                prev_hash,
                hash,
                lane: 0,
            },
        )
}
