//! PATCH operations (RFC 7644 §3.5.2) on a resource as SCIM shows it: a
//! path is `attr`, `attr.sub`, `attr[sub eq "v"]` or `attr[sub eq
//! "v"].sub`, with or without the resource's schema URN. The handlers then
//! take the patched document as a replacement.

use serde_json::{Map, Value};

use super::{GROUP_SCHEMA, ScimError, USER_SCHEMA, attr};

/// Which resource a document is: the rules differ a little.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    User,
    Group,
}

/// `path` without a leading core schema URN (`urn:…:User:active`).
pub fn without_urn(path: &str) -> &str {
    for urn in [USER_SCHEMA, GROUP_SCHEMA] {
        if let Some(head) = path.get(..urn.len())
            && head.eq_ignore_ascii_case(urn)
        {
            return path.get(urn.len()..).unwrap_or_default().trim_start_matches(':');
        }
    }
    path
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    attr: String,
    /// `[sub eq value]`: which values of a multi-valued attribute.
    filter: Option<(String, Value)>,
    sub: Option<String>,
}

fn invalid_path(p: &str) -> ScimError {
    ScimError::invalid("invalidPath", format!("cannot follow the path {p:?}"))
}

fn name_ok(n: &str) -> bool {
    !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '$' || c == '_' || c == '-')
}

fn parse(p: &str) -> Result<Target, ScimError> {
    let path = without_urn(p.trim());
    let (attr, filter, rest) = match path.split_once('[') {
        Some((attr, rest)) => {
            let (inner, after) = rest.split_once(']').ok_or_else(|| invalid_path(p))?;
            let mut it = inner.trim().splitn(3, ' ');
            let (Some(sub), Some(op), Some(v)) = (it.next(), it.next(), it.next()) else {
                return Err(ScimError::invalid("invalidFilter", format!("unsupported value filter {inner:?}")));
            };
            let value: Value = serde_json::from_str(v.trim())
                .map_err(|_| ScimError::invalid("invalidFilter", format!("unsupported value filter {inner:?}")))?;
            if !op.eq_ignore_ascii_case("eq") || !name_ok(sub) {
                return Err(ScimError::invalid("invalidFilter", format!("only `sub eq value` filters: {inner:?}")));
            }
            let rest = match after {
                "" => None,
                a => Some(a.strip_prefix('.').ok_or_else(|| invalid_path(p))?),
            };
            (attr, Some((sub.to_owned(), value)), rest)
        }
        None => match path.split_once('.') {
            Some((attr, sub)) => (attr, None, Some(sub)),
            None => (path, None, None),
        },
    };
    if !name_ok(attr) || rest.is_some_and(|s| !name_ok(s)) {
        return Err(invalid_path(p));
    }
    Ok(Target { attr: attr.to_owned(), filter, sub: rest.map(str::to_owned) })
}

fn key_of(doc: &Map<String, Value>, name: &str) -> String {
    doc.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned().unwrap_or_else(|| name.to_owned())
}

/// Whether a value of a multi-valued attribute is picked by `[sub eq v]`:
/// `value`s (ids, addresses) compare exactly, other strings without
/// regard to case (`type eq "Work"`).
fn picked(elem: &Value, (sub, v): &(String, Value)) -> bool {
    let Some(o) = elem.as_object() else { return false };
    match (attr(o, sub), v) {
        (Some(Value::String(a)), Value::String(b)) if !sub.eq_ignore_ascii_case("value") => a.eq_ignore_ascii_case(b),
        (Some(a), b) => a == b,
        (None, _) => false,
    }
}

/// The same value of a multi-valued attribute: by `value` when both have
/// one.
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_object().and_then(|o| attr(o, "value")), b.as_object().and_then(|o| attr(o, "value"))) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn set_sub(elem: &mut Value, sub: &str, value: Value) {
    if !elem.is_object() {
        *elem = Value::Object(Map::new());
    }
    if let Value::Object(o) = elem {
        let k = key_of(o, sub);
        o.insert(k, value);
    }
}

fn merge(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (k, v) in from {
        let k = key_of(into, &k);
        into.insert(k, v);
    }
}

/// `add` or `replace` of `value` at `t`.
fn put(doc: &mut Map<String, Value>, t: &Target, value: Value, add: bool) -> Result<(), ScimError> {
    let key = key_of(doc, &t.attr);
    match (&t.filter, &t.sub) {
        (None, None) => match (doc.get_mut(&key), value) {
            // RFC 7644 §3.5.2.1: adding to a multi-valued attribute adds
            // the values not there yet.
            (Some(Value::Array(have)), Value::Array(new)) if add => {
                for v in new {
                    if !have.iter().any(|h| same(h, &v)) {
                        have.push(v);
                    }
                }
            }
            (Some(Value::Array(have)), v) if add && v.is_object() => {
                if !have.iter().any(|h| same(h, &v)) {
                    have.push(v);
                }
            }
            (Some(Value::Object(have)), Value::Object(new)) => merge(have, new),
            (_, v) => {
                doc.insert(key, v);
            }
        },
        (None, Some(sub)) => match doc.entry(key).or_insert_with(|| Value::Object(Map::new())) {
            Value::Array(values) => values.iter_mut().for_each(|e| set_sub(e, sub, value.clone())),
            other => set_sub(other, sub, value),
        },
        (Some(filter), sub) => {
            let entry = doc.entry(key).or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(values) = entry else {
                return Err(ScimError::invalid("invalidPath", format!("{} is not multi-valued", t.attr)));
            };
            if !values.iter().any(|e| picked(e, filter)) {
                let mut fresh = Map::new();
                fresh.insert(filter.0.clone(), filter.1.clone());
                values.push(Value::Object(fresh));
            }
            for e in values.iter_mut().filter(|e| picked(e, filter)) {
                match (sub, &value) {
                    (Some(sub), v) => set_sub(e, sub, v.clone()),
                    (None, Value::Object(v)) => {
                        if let Value::Object(o) = e {
                            merge(o, v.clone());
                        }
                    }
                    (None, _) => {
                        return Err(ScimError::invalid("invalidValue", "a filtered path takes an object value"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// `remove` at `t`; with a value and no filter, only the values given
/// (as Entra ID removes members).
fn remove(doc: &mut Map<String, Value>, t: &Target, value: Option<Value>) {
    let key = key_of(doc, &t.attr);
    match (&t.filter, &t.sub, doc.get_mut(&key)) {
        (None, None, Some(Value::Array(have))) if value.is_some() => {
            let gone: Vec<Value> = match value {
                Some(Value::Array(a)) => a,
                Some(v) => vec![v],
                None => Vec::new(),
            };
            have.retain(|h| !gone.iter().any(|g| same(h, g)));
        }
        (None, None, _) => {
            doc.remove(&key);
        }
        (None, Some(sub), Some(Value::Array(values))) => {
            for e in values {
                if let Value::Object(o) = e {
                    let k = key_of(o, sub);
                    o.remove(&k);
                }
            }
        }
        (None, Some(sub), Some(Value::Object(o))) => {
            let k = key_of(o, sub);
            o.remove(&k);
        }
        (Some(filter), None, Some(Value::Array(values))) => values.retain(|e| !picked(e, filter)),
        (Some(filter), Some(sub), Some(Value::Array(values))) => {
            for e in values.iter_mut().filter(|e| picked(e, filter)) {
                if let Value::Object(o) = e {
                    let k = key_of(o, sub);
                    o.remove(&k);
                }
            }
        }
        _ => {}
    }
}

/// One PATCH operation on `doc`.
pub fn apply(doc: &mut Map<String, Value>, op: &Value, resource: Resource) -> Result<(), ScimError> {
    let op = op.as_object().ok_or_else(|| ScimError::invalid("invalidSyntax", "an operation must be an object"))?;
    let kind = attr(op, "op").and_then(Value::as_str).map(str::to_ascii_lowercase).unwrap_or_default();
    let path = attr(op, "path").and_then(Value::as_str).map(parse).transpose()?;
    let value = attr(op, "value").cloned();
    match (kind.as_str(), path, value) {
        // No path: each member of the object is an attribute (or, as Entra
        // ID sends, a path such as `name.givenName`).
        (k @ ("add" | "replace"), None, Some(Value::Object(v))) => {
            for (p, v) in v {
                put(doc, &parse(&p)?, v, k == "add")?;
            }
            Ok(())
        }
        (k @ ("add" | "replace"), Some(t), Some(v)) => put(doc, &t, v, k == "add"),
        ("remove", Some(t), _) if resource == Resource::User && t.attr.eq_ignore_ascii_case("active") => {
            Err(ScimError::invalid("mutability", "active cannot be removed: replace it with true or false"))
        }
        ("remove", Some(t), v) => {
            remove(doc, &t, v);
            Ok(())
        }
        ("remove", None, _) => Err(ScimError::invalid("noTarget", "remove needs a path")),
        ("add" | "replace", _, _) => Err(ScimError::invalid("invalidValue", "add and replace need a value")),
        _ => Err(ScimError::invalid("invalidSyntax", "op must be add, remove or replace")),
    }
}
