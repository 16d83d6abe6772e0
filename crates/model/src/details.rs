//! RFC 9396 authorization details: typed by the resource, covered by what
//! was granted, and only narrowed down a delegation chain (DESIGN §13).
//!
//! One rule decides both a check and a hop: a `granted` detail covers an
//! `asked` one when they have the same `type` and, for every field the
//! granted detail holds, the asked detail holds a value within it: a
//! `max` field a number no larger, an `equal` field (and any other scalar
//! or object) the same value, an array (RFC 9396 §2.2's `locations`,
//! `actions`, `datatypes`, `privileges`) a subset. A field the granted
//! detail leaves out is not restricted by it, so an asked detail may carry
//! it; a field the granted detail holds cannot be dropped, which would
//! widen it. The rule is a preorder (reflexive and transitive), so a
//! chain of hops never widens (property tested below).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// At most this many entries in one `authorization_details` parameter.
pub const MAX_DETAILS: usize = 8;
/// At most this many bytes of JSON in one `authorization_details` parameter.
pub const MAX_DETAILS_BYTES: usize = 8 * 1024;
/// At most this many types per resource.
pub const MAX_TYPES: usize = 16;
/// At most this many bytes of JSON in one type's schema.
pub const MAX_SCHEMA_BYTES: usize = 16 * 1024;

/// How a field of a type bounds what a detail may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    /// A number: an asked value must be at most the granted one.
    Max,
    /// Any value: an asked value must equal the granted one.
    Equal,
}

/// A type a resource declares: the JSON Schema its details must satisfy
/// and how its fields bound a narrower detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetailType {
    pub schema: Value,
    #[serde(default)]
    pub bounds: BTreeMap<String, Bound>,
}

/// One authorization detail: a JSON object whose `type` is a string.
/// Parse, don't validate: the only way in is [`AuthorizationDetail::from_value`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct AuthorizationDetail(Map<String, Value>);

impl TryFrom<Value> for AuthorizationDetail {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        Self::from_value(v)
    }
}

impl From<AuthorizationDetail> for Value {
    fn from(d: AuthorizationDetail) -> Value {
        Value::Object(d.0)
    }
}

impl AuthorizationDetail {
    /// RFC 9396 §2: an object with a string `type`.
    pub fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Object(map) => match map.get("type") {
                Some(Value::String(t)) if !t.is_empty() => Ok(Self(map)),
                _ => Err("each authorization detail needs a string type".into()),
            },
            _ => Err("each authorization detail is a JSON object".into()),
        }
    }

    pub fn kind(&self) -> &str {
        self.0.get("type").and_then(Value::as_str).unwrap_or_default()
    }

    pub fn fields(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn to_value(&self) -> Value {
        Value::Object(self.0.clone())
    }

    /// Whether this (granted) detail covers `asked` under `bounds`; the
    /// `Err` says which field does not fit, for a deny's reason.
    pub fn covers(&self, asked: &AuthorizationDetail, bounds: &BTreeMap<String, Bound>) -> Result<(), String> {
        if self.kind() != asked.kind() {
            return Err(format!("type {} is not {}", asked.kind(), self.kind()));
        }
        for (field, granted) in &self.0 {
            if field == "type" {
                continue;
            }
            let Some(value) = asked.0.get(field) else {
                return Err(format!("{field} is missing (granted {granted})"));
            };
            let fits = match bounds.get(field) {
                Some(Bound::Max) => at_most(value, granted),
                Some(Bound::Equal) => value == granted,
                None => within(value, granted),
            };
            if !fits {
                let how = match bounds.get(field) {
                    Some(Bound::Max) => "at most",
                    _ => "within",
                };
                return Err(format!("{field} {value} is not {how} the granted {granted}"));
            }
        }
        Ok(())
    }
}

/// Numbers compared as integers when both are, else as floats.
fn at_most(value: &Value, granted: &Value) -> bool {
    match (value, granted) {
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => a <= b,
            _ => match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => a <= b,
                _ => false,
            },
        },
        _ => false,
    }
}

/// An array is within another when each of its elements is in it; any
/// other value only when equal.
fn within(value: &Value, granted: &Value) -> bool {
    match (value, granted) {
        (Value::Array(a), Value::Array(b)) => a.iter().all(|x| b.contains(x)),
        _ => value == granted,
    }
}

/// A list of details, as in a token's `authorization_details` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuthorizationDetails(pub Vec<AuthorizationDetail>);

impl AuthorizationDetails {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &AuthorizationDetail> {
        self.0.iter()
    }

    /// RFC 9396 §2: a JSON array of details, parsed from a request
    /// parameter, bounded in size and count.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_DETAILS_BYTES {
            return Err(format!("authorization_details is longer than {MAX_DETAILS_BYTES} bytes"));
        }
        let v: Value = serde_json::from_str(text).map_err(|e| format!("authorization_details is not JSON: {e}"))?;
        Self::from_value(v)
    }

    pub fn from_value(v: Value) -> Result<Self, String> {
        let Value::Array(items) = v else {
            return Err("authorization_details is a JSON array".into());
        };
        if items.is_empty() || items.len() > MAX_DETAILS {
            return Err(format!("authorization_details holds 1 to {MAX_DETAILS} entries"));
        }
        items.into_iter().map(AuthorizationDetail::from_value).collect::<Result<Vec<_>, _>>().map(Self)
    }

    /// The granted detail that covers `asked`, or why none does.
    pub fn covering(
        &self,
        asked: &AuthorizationDetail,
        bounds: &BTreeMap<String, Bound>,
    ) -> Result<&AuthorizationDetail, String> {
        let mut why = Vec::new();
        for granted in &self.0 {
            match granted.covers(asked, bounds) {
                Ok(()) => return Ok(granted),
                Err(e) => why.push(e),
            }
        }
        if why.is_empty() {
            return Err(format!("the token carries no authorization detail of type {}", asked.kind()));
        }
        Err(why.join("; "))
    }

    /// A hop's details (DESIGN §13): each one asked for must be covered
    /// by a detail of the parent; none asked inherits the parent's.
    /// `bounds_of` gives a type's bounds (None: the type is not declared).
    pub fn narrow_to<'b>(
        &self,
        asked: Option<&AuthorizationDetails>,
        bounds_of: impl Fn(&str) -> Option<&'b BTreeMap<String, Bound>>,
    ) -> Result<AuthorizationDetails, String> {
        let Some(asked) = asked else {
            return Ok(self.clone());
        };
        for a in asked.iter() {
            let bounds = bounds_of(a.kind()).ok_or_else(|| format!("type {} is not declared", a.kind()))?;
            self.covering(a, bounds)
                .map_err(|why| format!("authorization detail of type {} is wider than the token's: {why}", a.kind()))?;
        }
        Ok(asked.clone())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn bounds() -> BTreeMap<String, Bound> {
        BTreeMap::from([
            ("amount".into(), Bound::Max),
            ("currency".into(), Bound::Equal),
            ("creditor".into(), Bound::Equal),
        ])
    }

    fn pay(amount: i64, currency: &str) -> AuthorizationDetail {
        AuthorizationDetail::from_value(
            json!({"type": "payment_initiation", "amount": amount, "currency": currency, "creditor": "DE02100100109307118603"}),
        )
        .unwrap()
    }

    #[test]
    fn a_payment_approval_covers_smaller_amounts_in_its_currency_only() {
        let granted = pay(120, "EUR");
        assert!(granted.covers(&pay(100, "EUR"), &bounds()).is_ok());
        assert!(granted.covers(&pay(120, "EUR"), &bounds()).is_ok());
        let over = granted.covers(&pay(500, "EUR"), &bounds()).unwrap_err();
        assert!(over.contains("amount 500 is not at most the granted 120"), "{over}");
        assert!(granted.covers(&pay(100, "USD"), &bounds()).unwrap_err().contains("currency"));
        let mut other = pay(10, "EUR");
        other.0.insert("creditor".into(), json!("someone else"));
        assert!(granted.covers(&other, &bounds()).is_err());
        let mut untyped = pay(10, "EUR");
        untyped.0.insert("type".into(), json!("account_information"));
        assert!(granted.covers(&untyped, &bounds()).unwrap_err().contains("type"));
        // Leaving a granted field out would widen it.
        let mut no_amount = pay(10, "EUR");
        no_amount.0.remove("amount");
        assert!(granted.covers(&no_amount, &bounds()).unwrap_err().contains("amount is missing"));
        // A field the grant does not restrict may be added.
        let mut more = pay(10, "EUR");
        more.0.insert("remittance".into(), json!("invoice 7"));
        assert!(granted.covers(&more, &bounds()).is_ok());
    }

    #[test]
    fn arrays_narrow_to_subsets_and_numbers_compare_as_numbers() {
        let granted =
            AuthorizationDetail::from_value(json!({"type": "t", "actions": ["read", "write"], "limit": 2.5})).unwrap();
        let b = BTreeMap::from([("limit".to_owned(), Bound::Max)]);
        let ok = AuthorizationDetail::from_value(json!({"type": "t", "actions": ["read"], "limit": 2})).unwrap();
        assert!(granted.covers(&ok, &b).is_ok());
        let wide = AuthorizationDetail::from_value(json!({"type": "t", "actions": ["delete"], "limit": 2})).unwrap();
        assert!(granted.covers(&wide, &b).is_err());
        let text = AuthorizationDetail::from_value(json!({"type": "t", "actions": ["read"], "limit": "2"})).unwrap();
        assert!(granted.covers(&text, &b).is_err(), "a string is no number");
    }

    #[test]
    fn parsing_refuses_what_is_not_a_bounded_list_of_typed_objects() {
        assert!(AuthorizationDetails::parse(r#"[{"type":"a"}]"#).is_ok());
        for bad in ["{}", "[]", "[1]", r#"[{"amount":1}]"#, r#"[{"type":""}]"#, r#"[{"type":3}]"#, "nope"] {
            assert!(AuthorizationDetails::parse(bad).is_err(), "{bad}");
        }
        let many = format!("[{}]", [r#"{"type":"a"}"#; MAX_DETAILS + 1].join(","));
        assert!(AuthorizationDetails::parse(&many).unwrap_err().contains("1 to"));
        let long = format!(r#"[{{"type":"{}"}}]"#, "a".repeat(MAX_DETAILS_BYTES));
        assert!(AuthorizationDetails::parse(&long).unwrap_err().contains("longer"));
        // Claims round-trip through serde and refuse untyped entries.
        let d: AuthorizationDetails = serde_json::from_value(json!([{"type": "a", "x": 1}])).unwrap();
        assert_eq!(serde_json::to_value(&d).unwrap(), json!([{"type": "a", "x": 1}]));
        assert!(serde_json::from_value::<AuthorizationDetails>(json!([{"x": 1}])).is_err());
    }

    #[test]
    fn a_hop_inherits_or_narrows_and_never_widens() {
        let parent = AuthorizationDetails(vec![pay(120, "EUR")]);
        let b = bounds();
        let of = |t: &str| (t == "payment_initiation").then_some(&b);
        assert_eq!(parent.narrow_to(None, of).unwrap(), parent);
        let fifty = AuthorizationDetails(vec![pay(50, "EUR")]);
        assert_eq!(parent.narrow_to(Some(&fifty), of).unwrap(), fifty);
        let wider = AuthorizationDetails(vec![pay(500, "EUR")]);
        assert!(parent.narrow_to(Some(&wider), of).unwrap_err().contains("wider"));
        let unknown = AuthorizationDetails::parse(r#"[{"type":"other"}]"#).unwrap();
        assert!(parent.narrow_to(Some(&unknown), of).unwrap_err().contains("not declared"));
        // A token without details covers no detail at all.
        assert!(AuthorizationDetails::default().narrow_to(Some(&fifty), of).is_err());
    }

    fn arb_pay() -> impl Strategy<Value = AuthorizationDetail> {
        (0i64..1000, prop::sample::select(&["EUR", "USD"][..]), prop::bool::ANY, prop::bool::ANY).prop_map(
            |(amount, currency, with_amount, extra)| {
                let mut d = pay(amount, currency);
                if !with_amount {
                    d.0.remove("amount");
                }
                if extra {
                    d.0.insert("actions".into(), json!(["initiate"]));
                }
                d
            },
        )
    }

    proptest! {
        // Narrowing never widens: whatever a narrowed detail covers, the
        // detail it was narrowed from covers too (transitivity), and every
        // detail covers itself.
        #[test]
        fn narrowing_never_widens(a in arb_pay(), b in arb_pay(), c in arb_pay()) {
            let bounds = bounds();
            prop_assert!(a.covers(&a, &bounds).is_ok());
            if a.covers(&b, &bounds).is_ok() && b.covers(&c, &bounds).is_ok() {
                prop_assert!(a.covers(&c, &bounds).is_ok());
            }
            let parent = AuthorizationDetails(vec![a.clone()]);
            let of = |_: &str| Some(&bounds);
            if let Ok(child) = parent.narrow_to(Some(&AuthorizationDetails(vec![b.clone()])), of)
                && child.covering(&c, &bounds).is_ok()
            {
                prop_assert!(parent.covering(&c, &bounds).is_ok());
            }
        }
    }
}
