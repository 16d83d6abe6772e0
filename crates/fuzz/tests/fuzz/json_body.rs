//! The JSON request parser's shape check (`extract::check_json_shape`,
//! which `StrictJson` runs before parsing any admin API body).
//!
//! - Any bytes: accepted exactly when they are one JSON text nested at most
//!   64 deep in which no object repeats a member name (after unescaping),
//!   as measured on a tree this target builds itself.
//! - Generated JSON: accepted exactly when at most 64 deep; the same text
//!   with one object's first member repeated, its name spelt with `\u`
//!   escapes, is refused.

use std::fmt::Write;

use mandate_fuzz::{Target, Verdict, ensure, mutated_bytes};
use mandate_server::extract::{MAX_JSON_DEPTH, check_json_shape};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::common::nasty_string;

/// A JSON text as a tree that keeps every member, repeats included.
#[derive(Debug, Clone)]
pub enum J {
    /// A scalar, as JSON text.
    Scalar(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn depth(&self) -> usize {
        match self {
            J::Scalar(_) => 0,
            J::Arr(items) => 1 + items.iter().map(J::depth).max().unwrap_or(0),
            J::Obj(members) => 1 + members.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
        }
    }

    fn repeats_a_name(&self) -> bool {
        match self {
            J::Scalar(_) => false,
            J::Arr(items) => items.iter().any(J::repeats_a_name),
            J::Obj(members) => {
                members.iter().enumerate().any(|(i, (k, _))| members[..i].iter().any(|(m, _)| m == k))
                    || members.iter().any(|(_, v)| v.repeats_a_name())
            }
        }
    }

    fn objects(&self) -> usize {
        match self {
            J::Scalar(_) => 0,
            J::Arr(items) => items.iter().map(J::objects).sum(),
            J::Obj(members) => {
                usize::from(!members.is_empty()) + members.iter().map(|(_, v)| v.objects()).sum::<usize>()
            }
        }
    }

    /// Writes the text; the `dup`-th non-empty object (pre-order) gets its
    /// first member again, the name escaped.
    fn write(&self, out: &mut String, dup: Option<usize>, seen: &mut usize) {
        match self {
            J::Scalar(s) => out.push_str(s),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out, dup, seen);
                }
                out.push(']');
            }
            J::Obj(members) => {
                let this = *seen;
                if !members.is_empty() {
                    *seen += 1;
                }
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    v.write(out, dup, seen);
                }
                if dup == Some(this)
                    && let Some((k, _)) = members.first()
                {
                    out.push_str(",\"");
                    for unit in k.encode_utf16() {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                    out.push_str("\":0");
                }
                out.push('}');
            }
        }
    }
}

impl<'de> Deserialize<'de> for J {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<J, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = J;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<J, E> {
                Ok(J::Scalar(String::new()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<J, E> {
                Ok(J::Scalar(String::new()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<J, E> {
                Ok(J::Scalar(String::new()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<J, E> {
                Ok(J::Scalar(String::new()))
            }
            fn visit_str<E>(self, _: &str) -> Result<J, E> {
                Ok(J::Scalar(String::new()))
            }
            fn visit_unit<E>(self) -> Result<J, E> {
                Ok(J::Scalar(String::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(J::Arr(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, J>()? {
                    members.push((k, v));
                }
                Ok(J::Obj(members))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone)]
pub enum Input {
    Raw(Vec<u8>),
    /// A tree, and which of its non-empty objects to repeat a member of.
    Tree {
        tree: J,
        dup: usize,
    },
}

pub struct JsonBody;

impl Target for JsonBody {
    const NAME: &'static str = "json_body";
    type Input = Input;

    fn from_seed(bytes: &[u8]) -> Result<Input, String> {
        Ok(Input::Raw(bytes.to_vec()))
    }

    fn strategy(seeds: Vec<Input>) -> BoxedStrategy<Input> {
        let raw: Vec<Vec<u8>> = seeds
            .into_iter()
            .filter_map(|s| match s {
                Input::Raw(b) => Some(b),
                Input::Tree { .. } => None,
            })
            .collect();
        prop_oneof![
            1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Input::Raw),
            1 => "[\\[\\]{}\":,a0 ]{0,80}".prop_map(|s| Input::Raw(s.into_bytes())),
            4 => mutated_bytes(raw, DICTIONARY).prop_map(Input::Raw),
            5 => (tree(), any::<usize>()).prop_map(|(tree, dup)| Input::Tree { tree, dup }),
        ]
        .boxed()
    }

    fn check(input: &Input) -> Result<Verdict, TestCaseError> {
        match input {
            Input::Raw(bytes) => {
                let got = check_json_shape(bytes);
                let expected = serde_json::from_slice::<J>(bytes)
                    .is_ok_and(|j| j.depth() <= MAX_JSON_DEPTH && !j.repeats_a_name());
                ensure(got.is_ok() == expected, || {
                    format!("{:?}: {got:?}, expected {}", String::from_utf8_lossy(bytes), expected)
                })?;
                Ok(if expected { Verdict::Accepted } else { Verdict::Refused })
            }
            Input::Tree { tree, dup } => {
                let mut text = String::new();
                tree.write(&mut text, None, &mut 0);
                let got = check_json_shape(text.as_bytes());
                let expected = tree.depth() <= MAX_JSON_DEPTH;
                ensure(got.is_ok() == expected, || format!("{text}: {got:?}, depth {}", tree.depth()))?;
                let objects = tree.objects();
                if objects > 0 {
                    let mut twice = String::new();
                    tree.write(&mut twice, Some(dup % objects), &mut 0);
                    ensure(check_json_shape(twice.as_bytes()).is_err(), || format!("{twice}: a repeat accepted"))?;
                }
                Ok(if expected { Verdict::Accepted } else { Verdict::Refused })
            }
        }
    }
}

#[test]
fn json_body() -> Result<(), String> {
    mandate_fuzz::run::<JsonBody>().map(|_| ())
}

const DICTIONARY: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "\\",
    "\\u0000",
    "\\ud800",
    "\\u0061",
    "null",
    "1e400",
    "-0",
    "\"a\":1",
    "[[[[[[[[",
    "]]]]]]]]",
    "{\"a\":{\"a\":",
    "\u{feff}",
    " ",
    "\n",
];

fn scalar() -> impl Strategy<Value = J> {
    prop_oneof![
        select(vec!["null", "true", "false", "0", "-0", "1e300", "-1.5e-7", "18446744073709551616", "\"\""])
            .prop_map(|s| J::Scalar(s.to_owned())),
        any::<i64>().prop_map(|n| J::Scalar(n.to_string())),
        nasty_string().prop_map(|s| J::Scalar(serde_json::Value::String(s).to_string())),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![4 => select(vec!["a", "b", "name", "A", "\u{e9}", "e\u{301}", ""]).prop_map(str::to_owned), 1 => nasty_string()]
}

/// A small tree, members unique, under a spine of arrays or one-member
/// objects up to 80 deep (the limit is 64).
fn tree() -> impl Strategy<Value = J> {
    let small = scalar().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            proptest::collection::vec((key(), inner), 0..4).prop_map(|members| {
                let mut unique: Vec<(String, J)> = Vec::new();
                for (k, v) in members {
                    if !unique.iter().any(|(m, _)| *m == k) {
                        unique.push((k, v));
                    }
                }
                J::Obj(unique)
            }),
        ]
    });
    (small, proptest::collection::vec(any::<bool>(), 0..80)).prop_map(|(mut t, spine)| {
        for object in spine {
            t = if object { J::Obj(vec![("k".to_owned(), t)]) } else { J::Arr(vec![t]) };
        }
        t
    })
}
