//! RFC 9396 authorization details at the edge of the use cases: the types
//! a resource declares (checked when it is registered), the details a
//! request carries (checked against those types' JSON Schemas), and the
//! digest the audit trail keeps of them.

use std::collections::BTreeMap;

use mandate_model::details::{
    AuthorizationDetail, AuthorizationDetails, Bound, DetailType, MAX_SCHEMA_BYTES, MAX_TYPES,
};
use mandate_model::records::{ContextType, Resource};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Error;

/// The location a schema is compiled under; nothing is ever loaded from it.
const SCHEMA_LOC: &str = "urn:mandate:authorization-details-type";

/// A loader that loads nothing: a `$ref` to anything but the schema itself
/// (a file, a URL) is refused, so a schema never reaches the disk or the
/// network (SSRF).
struct NoLoader;

impl boon::UrlLoader for NoLoader {
    fn load(&self, url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err(format!("{url}: schemas may not refer to other documents").into())
    }
}

/// Compiles `schema` (draft 2020-12 unless it says otherwise), with no
/// loader.
fn compile(schema: &Value) -> Result<(boon::Schemas, boon::SchemaIndex), String> {
    let mut compiler = boon::Compiler::new();
    compiler.use_loader(Box::new(NoLoader));
    compiler.set_default_draft(boon::Draft::V2020_12);
    compiler.add_resource(SCHEMA_LOC, schema.clone()).map_err(|e| format!("{e}"))?;
    let mut schemas = boon::Schemas::new();
    let idx = compiler.compile(SCHEMA_LOC, &mut schemas).map_err(|e| format!("{e:#}"))?;
    Ok((schemas, idx))
}

/// The JSON types a schema's property may take (`type` as a string or a
/// list), empty when it does not say.
fn property_types(schema: &Value, field: &str) -> Option<Vec<String>> {
    let prop = schema.get("properties")?.get(field)?;
    Some(match prop.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    })
}

/// A resource's `authorization_details_types` (DESIGN §13): at most
/// [`MAX_TYPES`], each name short and printable, each schema an object of
/// bounded size that compiles, and each bound on a property the schema
/// declares (`max` only on numbers). Refused as 400.
pub fn validate_types(types: &BTreeMap<String, DetailType>) -> Result<(), Error> {
    if types.len() > MAX_TYPES {
        return Err(Error::BadInput(format!("authorization_details_types declares at most {MAX_TYPES} types")));
    }
    for (name, ty) in types {
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_graphic()) {
            return Err(Error::BadInput(format!(
                "authorization details type {name:?} must be 1 to 64 printable ASCII characters"
            )));
        }
        let bad = |why: String| Error::BadInput(format!("authorization details type {name}: {why}"));
        if !ty.schema.is_object() {
            return Err(bad("schema must be a JSON Schema object".into()));
        }
        let size = serde_json::to_string(&ty.schema).map_err(|e| bad(e.to_string()))?.len();
        if size > MAX_SCHEMA_BYTES {
            return Err(bad(format!("schema is longer than {MAX_SCHEMA_BYTES} bytes")));
        }
        compile(&ty.schema).map_err(|e| bad(format!("schema does not compile: {e}")))?;
        for (field, bound) in &ty.bounds {
            if field == "type" {
                return Err(bad("type cannot be bounded".into()));
            }
            let Some(types) = property_types(&ty.schema, field) else {
                return Err(bad(format!("bound field {field} is not a property of the schema")));
            };
            let numeric = !types.is_empty() && types.iter().all(|t| t == "number" || t == "integer");
            if *bound == Bound::Max && !numeric {
                return Err(bad(format!("bound field {field} is max, so the schema must type it number or integer")));
            }
        }
    }
    field_types(types).map_err(|e| Error::BadInput(format!("authorization_details_types: {e}")))?;
    Ok(())
}

/// One detail checked against the resource's types: its type is declared
/// and its schema accepts it. The `Err` says why not.
pub fn validate_detail(res: &Resource, detail: &AuthorizationDetail) -> Result<(), String> {
    let Some(ty) = res.authorization_details_types.get(detail.kind()) else {
        return Err(format!("type {} is not declared by {}", detail.kind(), crate::audit::bounded(&res.identifier)));
    };
    let (schemas, idx) = compile(&ty.schema).map_err(|e| format!("type {}: schema: {e}", detail.kind()))?;
    let value = detail.to_value();
    schemas.validate(&value, idx).map_err(|e| {
        let text = format!("{e}").replace('\n', " ");
        format!("type {}: {}", detail.kind(), crate::audit::bounded(&text))
    })
}

/// The `authorization_details` parameter of an OAuth request, parsed and
/// checked against `res`; absent is empty. Refused as
/// `invalid_authorization_details` (RFC 9396 §5).
pub fn accept(res: &Resource, raw: Option<&str>) -> Result<AuthorizationDetails, Error> {
    let Some(raw) = raw else {
        return Ok(AuthorizationDetails::default());
    };
    let details = AuthorizationDetails::parse(raw).map_err(Error::InvalidAuthorizationDetails)?;
    for d in details.iter() {
        validate_detail(res, d).map_err(Error::InvalidAuthorizationDetails)?;
    }
    Ok(details)
}

/// The bounds of a type `res` declares.
pub fn bounds_of<'r>(res: &'r Resource) -> impl Fn(&str) -> Option<&'r BTreeMap<String, Bound>> {
    |t| res.authorization_details_types.get(t).map(|ty| &ty.bounds)
}

/// The Cedar type of each top-level property the resource's detail
/// types declare with one scalar JSON type (`integer`/`number` → `Long`,
/// `string` → `String`, `boolean` → `Bool`): the fields policies see in
/// `context.authorization_detail`. Two types of one resource giving a
/// field two types is an `Err`.
pub fn field_types(types: &BTreeMap<String, DetailType>) -> Result<BTreeMap<String, ContextType>, String> {
    let mut out: BTreeMap<String, ContextType> = BTreeMap::new();
    for (name, ty) in types {
        let Some(props) = ty.schema.get("properties").and_then(Value::as_object) else {
            continue;
        };
        for field in props.keys() {
            let cedar = match property_types(&ty.schema, field).as_deref() {
                Some([t]) if t == "integer" || t == "number" => ContextType::Long,
                Some([t]) if t == "string" => ContextType::String,
                Some([t]) if t == "boolean" => ContextType::Bool,
                _ => continue,
            };
            if field == "type" && cedar != ContextType::String {
                return Err(format!("type {name}: the type field is a string"));
            }
            if !is_cedar_field(field) {
                continue;
            }
            match out.insert(field.clone(), cedar) {
                Some(other) if other != cedar => {
                    return Err(format!("field {field} is both {} and {}", other.as_str(), cedar.as_str()));
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// A field name policies can write as `context.authorization_detail.<f>`.
fn is_cedar_field(f: &str) -> bool {
    let mut chars = f.chars();
    f.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What policy sees of one detail (DESIGN §13): `type` and each field its
/// type declares as a scalar (see [`field_types`]), as fact keys under
/// [`mandate_policy::DETAIL_PREFIX`]. A number that is not an integer is
/// left out (Cedar has no such number): a policy that needs it must write
/// `has`, and so fails closed.
pub fn facts_of(res: &Resource, detail: &AuthorizationDetail) -> BTreeMap<String, mandate_policy::ContextValue> {
    use mandate_policy::{ContextValue, DETAIL_PREFIX};
    let mut out = BTreeMap::new();
    let Some(ty) = res.authorization_details_types.get(detail.kind()) else {
        return out;
    };
    let types = field_types(&BTreeMap::from([(detail.kind().to_owned(), ty.clone())])).unwrap_or_default();
    out.insert(format!("{DETAIL_PREFIX}type"), ContextValue::String(detail.kind().to_owned()));
    for (field, cedar) in types {
        let v = match (cedar, detail.fields().get(&field)) {
            (ContextType::Long, Some(Value::Number(n))) => n.as_i64().map(ContextValue::Long),
            (ContextType::String, Some(Value::String(s))) if field != "type" && s.len() <= 256 => {
                Some(ContextValue::String(s.clone()))
            }
            (ContextType::Bool, Some(Value::Bool(b))) => Some(ContextValue::Bool(*b)),
            _ => None,
        };
        if let Some(v) = v {
            out.insert(format!("{DETAIL_PREFIX}{field}"), v);
        }
    }
    out
}

/// `sha256:<hex>` of the details' JSON (keys sorted): what the audit trail
/// keeps, which the grant's stored details reproduce. Empty details have
/// no digest.
pub fn digest(details: &AuthorizationDetails) -> Option<String> {
    if details.is_empty() {
        return None;
    }
    let text = mandate_audit::canonical::to_canonical(&serde_json::to_value(details).ok()?).ok()?;
    let d = Sha256::digest(text.as_bytes());
    Some(format!("sha256:{}", d.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// `reason` with the details' digest appended, for an audit event.
pub fn with_digest(reason: Option<String>, details: &AuthorizationDetails) -> Option<String> {
    match (reason, digest(details)) {
        (r, None) => r,
        (None, Some(d)) => Some(format!("authorization_details {d}")),
        (Some(r), Some(d)) => Some(format!("{r}; authorization_details {d}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    pub(crate) fn payment_type() -> DetailType {
        serde_json::from_value(json!({
            "schema": {
                "type": "object",
                "required": ["type", "amount", "currency", "creditor"],
                "properties": {
                    "type": {"const": "payment_initiation"},
                    "amount": {"type": "number", "exclusiveMinimum": 0},
                    "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                    "creditor": {"type": "string", "maxLength": 64}
                }
            },
            "bounds": {"amount": "max", "currency": "equal", "creditor": "equal"}
        }))
        .unwrap()
    }

    fn types(ty: DetailType) -> BTreeMap<String, DetailType> {
        BTreeMap::from([("payment_initiation".to_owned(), ty)])
    }

    #[test]
    fn a_payment_type_is_accepted_and_bad_declarations_are_400() {
        assert!(validate_types(&types(payment_type())).is_ok());
        let mut max_on_text = payment_type();
        max_on_text.bounds.insert("currency".into(), Bound::Max);
        assert!(matches!(validate_types(&types(max_on_text)), Err(Error::BadInput(m)) if m.contains("number")));
        let mut undeclared = payment_type();
        undeclared.bounds.insert("iban".into(), Bound::Equal);
        assert!(matches!(validate_types(&types(undeclared)), Err(Error::BadInput(m)) if m.contains("not a property")));
        let mut broken = payment_type();
        broken.schema = json!({"type": "no-such-type"});
        assert!(matches!(validate_types(&types(broken)), Err(Error::BadInput(m)) if m.contains("compile")));
        // A schema may not reach a file or the network.
        for r in ["file:///etc/passwd", "http://169.254.169.254/latest"] {
            let mut remote = payment_type();
            remote.schema = json!({"$ref": r});
            assert!(validate_types(&types(remote)).is_err(), "{r}");
        }
        let mut huge = payment_type();
        huge.schema = json!({"description": "x".repeat(MAX_SCHEMA_BYTES)});
        assert!(matches!(validate_types(&types(huge)), Err(Error::BadInput(m)) if m.contains("longer")));
    }

    #[test]
    fn details_are_checked_against_their_schema() {
        let res = Resource {
            id: mandate_model::ResourceId::from_ulid(ulid::Ulid::from_parts(1, 1)),
            identifier: "https://pay.example".into(),
            name: "Payments".into(),
            scopes: BTreeMap::new(),
            jwks: None,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            gateway: None,
            exchange_to: Vec::new(),
            context: BTreeMap::new(),
            authorization_details_types: types(payment_type()),
        };
        let ok = r#"[{"type":"payment_initiation","amount":120,"currency":"EUR","creditor":"ACME"}]"#;
        assert_eq!(accept(&res, Some(ok)).unwrap().iter().count(), 1);
        assert!(accept(&res, None).unwrap().is_empty());
        for bad in [
            r#"[{"type":"payment_initiation","amount":-1,"currency":"EUR","creditor":"ACME"}]"#,
            r#"[{"type":"payment_initiation","amount":1,"currency":"euro","creditor":"ACME"}]"#,
            r#"[{"type":"payment_initiation","amount":1,"currency":"EUR"}]"#,
            r#"[{"type":"account_information"}]"#,
            r#"{"type":"payment_initiation"}"#,
        ] {
            assert!(matches!(accept(&res, Some(bad)), Err(Error::InvalidAuthorizationDetails(_))), "{bad}");
        }
    }

    #[test]
    fn the_digest_ignores_key_order_and_sees_every_value() {
        let a = AuthorizationDetails::parse(r#"[{"type":"p","amount":120,"currency":"EUR"}]"#).unwrap();
        let b = AuthorizationDetails::parse(r#"[{"currency":"EUR","type":"p","amount":120}]"#).unwrap();
        let c = AuthorizationDetails::parse(r#"[{"type":"p","amount":500,"currency":"EUR"}]"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&c));
        assert!(digest(&a).is_some_and(|d| d.starts_with("sha256:") && d.len() == 71));
        assert_eq!(digest(&AuthorizationDetails::default()), None);
    }
}
