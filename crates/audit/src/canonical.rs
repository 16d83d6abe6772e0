//! RFC 8785 JSON Canonicalization Scheme, for the values audit events hold:
//! objects, arrays, strings, booleans, null and integers. Floating-point
//! numbers are refused rather than canonicalized, so that no event ever
//! depends on ECMAScript number formatting.

use std::fmt::Write;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("floating-point numbers are not allowed in audit events")]
    Float,
    #[error("the event cannot be encoded: {0}")]
    Encode(String),
}

/// The canonical form of `value`.
pub fn to_canonical(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::new();
    write_value(&mut out, value)?;
    Ok(out)
}

fn write_value(out: &mut String, value: &Value) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                return Err(CanonicalError::Float);
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            // RFC 8785 §3.2.3: members sorted by the UTF-16 code units of their names.
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_value(out, v)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Whether any byte of `s` must be escaped in a JSON string. Branch-free,
/// so that the compiler vectorizes it: verification spends a third of its
/// time here.
fn needs_escape(s: &[u8]) -> bool {
    let mut any = false;
    for &b in s {
        any |= (b < 0x20) | (b == b'"') | (b == b'\\');
    }
    any
}

/// RFC 8785 §3.2.2.2: ECMAScript `JSON.stringify` string escaping.
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    // Most audit strings need no escaping: copy them whole.
    if !needs_escape(s.as_bytes()) {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sorts_members_and_escapes_like_jcs() {
        let v =
            json!({"b": [1, "x\n\u{1}é\"\\"], "a": null, "\u{20ac}": true, "\u{1f600}": false, "c": {"z": 1, "y": -2}});
        // Sorted by UTF-16 units: "a" < "b" < "c" < U+20AC < U+1F600 (surrogate D83D).
        assert_eq!(
            to_canonical(&v).unwrap(),
            "{\"a\":null,\"b\":[1,\"x\\n\\u0001é\\\"\\\\\"],\"c\":{\"y\":-2,\"z\":1},\"\u{20ac}\":true,\"\u{1f600}\":false}"
        );
        assert_eq!(to_canonical(&json!(1.5)), Err(CanonicalError::Float));
    }
}
