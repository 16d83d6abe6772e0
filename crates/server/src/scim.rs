//! SCIM 2.0 under `/scim/v2` (RFC 7643, RFC 7644; DESIGN §10): Users and
//! the discovery resources, as `application/scim+json`, with SCIM error
//! bodies for every refusal.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_core::Error;
use mandate_core::scim::ScimUser;
use mandate_model::UserId;
use mandate_model::records::{User, UserStatus};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::extract::bearer;

pub const CONTENT_TYPE: &str = "application/scim+json";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// The most resources one list answers.
const MAX_COUNT: usize = 200;

/// A SCIM refusal (RFC 7644 §3.12).
#[derive(Debug)]
pub struct ScimError {
    status: StatusCode,
    scim_type: Option<&'static str>,
    detail: String,
}

impl ScimError {
    fn new(status: StatusCode, scim_type: Option<&'static str>, detail: impl Into<String>) -> Self {
        Self { status, scim_type, detail: detail.into() }
    }

    fn invalid(scim_type: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some(scim_type), detail)
    }
}

impl From<Error> for ScimError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        match e {
            Error::NotFound(m) => Self::new(S::NOT_FOUND, None, m),
            Error::Conflict(m) => Self::new(S::CONFLICT, Some("uniqueness"), m),
            // The SCIM operations refuse only changes of read-only values.
            Error::Forbidden(m) => Self::invalid("mutability", m),
            Error::Unauthenticated | Error::InvalidClient(_) => {
                Self::new(S::UNAUTHORIZED, None, "send Authorization: Bearer <SCIM token>")
            }
            Error::RateLimited { why, .. } => Self::new(S::TOO_MANY_REQUESTS, None, why),
            Error::Unavailable(detail) => {
                Self::new(S::SERVICE_UNAVAILABLE, None, crate::error::internal_failure(&detail))
            }
            other => Self::invalid("invalidValue", other.to_string()),
        }
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let mut body =
            json!({"schemas": [ERROR_SCHEMA], "status": self.status.as_u16().to_string(), "detail": self.detail});
        if let Some(t) = self.scim_type {
            body = with(body, "scimType", json!(t));
        }
        let mut r = scim(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// `v` with member `k` set.
fn with(mut v: Value, k: &str, x: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert(k.to_owned(), x);
    }
    v
}

fn scim(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

/// A SCIM client, by the id of its token.
pub struct ScimClient(String);

impl FromRequestParts<AppState> for ScimClient {
    type Rejection = ScimError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ScimError> {
        let result = match bearer(&parts.headers) {
            Some(token) => state.mandate.authenticate_scim(token).await,
            None => Err(Error::Unauthenticated),
        };
        match result {
            Ok(id) => Ok(ScimClient(id)),
            Err(Error::Unauthenticated) => {
                let why = if bearer(&parts.headers).is_some() {
                    "SCIM: unknown or revoked bearer token"
                } else {
                    "SCIM: no bearer token"
                };
                state.mandate.record_admin_refusal(mandate_core::audit::kind::ADMIN_AUTH_FAILED, None, why).await?;
                Err(Error::Unauthenticated.into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn body_json(bytes: &Bytes) -> Result<Map<String, Value>, ScimError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ScimError::invalid("invalidSyntax", "the body must be a JSON object")),
        Err(e) => Err(ScimError::invalid("invalidSyntax", format!("the body is not JSON: {e}"))),
    }
}

/// An attribute, by its case-insensitive name (RFC 7643 §2.1).
fn attr<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v).filter(|v| !v.is_null())
}

fn version(user: &User) -> String {
    let h = mandate_core::secrets::hash(&format!("{}\0{}\0{:?}", user.email, user.name, user.status));
    format!("W/\"{}\"", h.get(..16).unwrap_or(&h))
}

fn user_json(s: &AppState, user: &User) -> Value {
    let created = user.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    json!({
        "schemas": [USER_SCHEMA],
        "id": user.id.to_string(),
        "userName": user.email,
        "displayName": user.name,
        "name": {"formatted": user.name},
        "emails": [{"value": user.email, "type": "work", "primary": true}],
        "active": user.status == UserStatus::Active,
        "meta": {
            "resourceType": "User",
            "created": created,
            "lastModified": created,
            "location": format!("{}/scim/v2/Users/{}", s.mandate.config().issuer.as_str().trim_end_matches('/'), user.id),
            "version": version(user),
        },
    })
}

/// RFC 7644 §3.14: an `If-Match` that names neither `*` nor the current
/// version is refused with 412. It is compared with the version just read,
/// not under the store's write.
fn precondition(headers: &HeaderMap, user: &User) -> Result<(), ScimError> {
    let Some(wanted) = headers.get(header::IF_MATCH) else { return Ok(()) };
    let current = version(user);
    let matches = wanted.to_str().is_ok_and(|w| {
        w.split(',').map(str::trim).any(|tag| tag == "*" || tag == current || format!("W/{tag}") == current)
    });
    if matches {
        Ok(())
    } else {
        Err(ScimError::new(StatusCode::PRECONDITION_FAILED, None, "If-Match names another version of the User"))
    }
}

fn user_response(s: &AppState, status: StatusCode, user: &User) -> Response {
    let mut r = scim(status, &user_json(s, user));
    if let Ok(v) = HeaderValue::from_str(&version(user)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// What a SCIM User body asks for: `userName` is the email; the name is
/// `displayName`, else `name.formatted`, else given and family names, else
/// the email.
fn scim_user(o: &Map<String, Value>) -> Result<ScimUser, ScimError> {
    let email = match attr(o, "userName") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ScimError::invalid("invalidValue", "userName must be a string")),
        None => return Err(ScimError::invalid("invalidValue", "userName is required")),
    };
    let name_obj = attr(o, "name").and_then(Value::as_object);
    let name = string(attr(o, "displayName"))
        .map(str::to_owned)
        .or_else(|| name_obj.and_then(|n| string(attr(n, "formatted"))).map(str::to_owned))
        .or_else(|| {
            let n = name_obj?;
            let parts: Vec<&str> =
                [string(attr(n, "givenName")), string(attr(n, "familyName"))].into_iter().flatten().collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        })
        .unwrap_or_else(|| email.clone());
    let active = match attr(o, "active") {
        None => None,
        Some(v) => Some(boolean(v).ok_or_else(|| ScimError::invalid("invalidValue", "active must be a boolean"))?),
    };
    Ok(ScimUser { email, name, active })
}

fn string(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// A boolean, also as the strings some IdPs send (`"False"`).
fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn user_id(raw: &str) -> Result<UserId, ScimError> {
    raw.parse().map_err(|_| ScimError::new(StatusCode::NOT_FOUND, None, format!("User {raw}")))
}

pub async fn create_user(
    State(s): State<AppState>,
    ScimClient(c): ScimClient,
    body: Bytes,
) -> Result<Response, ScimError> {
    let want = scim_user(&body_json(&body)?)?;
    let user = s.mandate.scim_create_user(&c, want).await?;
    Ok(user_response(&s, StatusCode::CREATED, &user))
}

pub async fn get_user(
    State(s): State<AppState>,
    ScimClient(_): ScimClient,
    Path(raw): Path<String>,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ScimError> {
    let shape = list_query(raw_query.as_deref())?.shape;
    let user = s.mandate.scim_user(user_id(&raw)?).await?;
    let mut r = scim(StatusCode::OK, &shape.apply(user_json(&s, &user)));
    if let Ok(v) = HeaderValue::from_str(&version(&user)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    Ok(r)
}

pub async fn replace_user(
    State(s): State<AppState>,
    ScimClient(c): ScimClient,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ScimError> {
    let id = user_id(&raw)?;
    let want = scim_user(&body_json(&body)?)?;
    precondition(&headers, &s.mandate.scim_user(id).await?)?;
    let user = s.mandate.scim_update_user(&c, id, want).await?;
    Ok(user_response(&s, StatusCode::OK, &user))
}

/// RFC 7644 §3.5.2: the operations are applied to the User as SCIM shows
/// it, and the result is then taken as a replacement, so that a PATCH can
/// do nothing a PUT could not.
pub async fn patch_user(
    State(s): State<AppState>,
    ScimClient(c): ScimClient,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ScimError> {
    let id = user_id(&raw)?;
    let body = body_json(&body)?;
    let ok_schema =
        attr(&body, "schemas").and_then(Value::as_array).is_some_and(|a| a.iter().any(|v| v == PATCH_SCHEMA));
    if !ok_schema {
        return Err(ScimError::invalid("invalidSyntax", format!("schemas must name {PATCH_SCHEMA}")));
    }
    let ops = attr(&body, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::invalid("invalidSyntax", "Operations must be an array"))?;
    let user = s.mandate.scim_user(id).await?;
    precondition(&headers, &user)?;
    let Value::Object(mut doc) = user_json(&s, &user) else {
        return Err(ScimError::from(Error::Unavailable("a User is not an object".into())));
    };
    for op in ops {
        apply(&mut doc, op)?;
    }
    let user = s.mandate.scim_update_user(&c, id, scim_user(&doc)?).await?;
    Ok(user_response(&s, StatusCode::OK, &user))
}

/// One PATCH operation on `doc`. Paths are an attribute or
/// `attribute.subAttribute`; a value filter in a path is refused
/// (`invalidPath`).
fn apply(doc: &mut Map<String, Value>, op: &Value) -> Result<(), ScimError> {
    let op = op.as_object().ok_or_else(|| ScimError::invalid("invalidSyntax", "an operation must be an object"))?;
    let kind = attr(op, "op").and_then(Value::as_str).map(str::to_ascii_lowercase).unwrap_or_default();
    let path = attr(op, "path").and_then(Value::as_str).map(str::trim);
    let value = attr(op, "value").cloned();
    if path.is_some_and(|p| p.contains('[')) {
        return Err(ScimError::invalid("invalidPath", "value filters in a path are not supported on Users"));
    }
    let path = path.map(|p| p.strip_prefix(USER_SCHEMA).map(|r| r.trim_start_matches(':')).unwrap_or(p));
    match (kind.as_str(), path, value) {
        ("add" | "replace", None, Some(Value::Object(v))) => {
            for (k, v) in v {
                set(doc, &k, v);
            }
            Ok(())
        }
        ("add" | "replace", Some(p), Some(v)) => {
            set(doc, p, v);
            Ok(())
        }
        ("remove", Some(p), _) if p.eq_ignore_ascii_case("active") => {
            Err(ScimError::invalid("mutability", "active cannot be removed: replace it with true or false"))
        }
        ("remove", Some(p), _) => {
            remove(doc, p);
            Ok(())
        }
        ("remove", None, _) => Err(ScimError::invalid("noTarget", "remove needs a path")),
        ("add" | "replace", _, _) => Err(ScimError::invalid("invalidValue", "add and replace need a value")),
        _ => Err(ScimError::invalid("invalidSyntax", "op must be add, remove or replace")),
    }
}

fn key_of(doc: &Map<String, Value>, name: &str) -> String {
    doc.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned().unwrap_or_else(|| name.to_owned())
}

/// Sets `path` (`a` or `a.b`); an object value for a complex attribute
/// merges into it.
fn set(doc: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        Some((a, b)) => {
            let k = key_of(doc, a);
            let entry = doc.entry(k).or_insert_with(|| json!({}));
            if !entry.is_object() {
                *entry = json!({});
            }
            if let Value::Object(inner) = entry {
                let kb = key_of(inner, b);
                inner.insert(kb, value);
            }
        }
        None => {
            let k = key_of(doc, path);
            match (doc.get_mut(&k), value) {
                (Some(Value::Object(existing)), Value::Object(v)) => {
                    for (vk, vv) in v {
                        let kk = key_of(existing, &vk);
                        existing.insert(kk, vv);
                    }
                }
                (_, v) => {
                    doc.insert(k, v);
                }
            }
        }
    }
}

fn remove(doc: &mut Map<String, Value>, path: &str) {
    match path.split_once('.') {
        Some((a, b)) => {
            let k = key_of(doc, a);
            if let Some(Value::Object(inner)) = doc.get_mut(&k) {
                let kb = key_of(inner, b);
                inner.remove(&kb);
            }
        }
        None => {
            let k = key_of(doc, path);
            doc.remove(&k);
        }
    }
}

pub async fn delete_user(
    State(s): State<AppState>,
    ScimClient(c): ScimClient,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ScimError> {
    let id = user_id(&raw)?;
    precondition(&headers, &s.mandate.scim_user(id).await?)?;
    s.mandate.scim_delete_user(&c, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `attributes` and `excludedAttributes` (RFC 7644 §3.9), on top-level
/// attributes (a sub-attribute names its parent); `id` and `schemas` are
/// always returned.
#[derive(Debug, Default)]
struct Shape {
    only: Vec<String>,
    excluded: Vec<String>,
}

fn names(v: &str) -> Vec<String> {
    v.split(',')
        .map(|n| {
            let n = n.trim();
            let n = n.strip_prefix(USER_SCHEMA).map(|r| r.trim_start_matches(':')).unwrap_or(n);
            n.split('.').next().unwrap_or(n).to_ascii_lowercase()
        })
        .filter(|n| !n.is_empty())
        .collect()
}

impl Shape {
    fn apply(&self, v: Value) -> Value {
        let Value::Object(o) = v else { return v };
        let always = |k: &str| k == "id" || k == "schemas";
        let kept = o.into_iter().filter(|(k, _)| {
            let k_l = k.to_ascii_lowercase();
            always(k) || ((self.only.is_empty() || self.only.contains(&k_l)) && !self.excluded.contains(&k_l))
        });
        Value::Object(kept.collect())
    }
}

#[derive(Debug, Default)]
struct ListQuery {
    filter: Option<String>,
    shape: Shape,
    start_index: Option<usize>,
    count: Option<usize>,
}

fn list_query(raw: Option<&str>) -> Result<ListQuery, ScimError> {
    let mut q = ListQuery::default();
    let number = |k: &str, v: &str| {
        v.parse::<i64>().map_err(|_| ScimError::invalid("invalidValue", format!("{k} must be an integer")))
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "filter" => q.filter = Some(v.into_owned()),
            "attributes" => q.shape.only = names(&v),
            "excludedAttributes" => q.shape.excluded = names(&v),
            // RFC 7644 §3.4.2.4: below 1 is taken as 1, a negative count as 0.
            "startIndex" => q.start_index = Some(usize::try_from(number(&k, &v)?.max(1)).unwrap_or(1)),
            "count" => q.count = Some(usize::try_from(number(&k, &v)?.max(0)).unwrap_or(0)),
            _ => {}
        }
    }
    Ok(q)
}

/// `attribute eq "value"`, the one filter form served.
fn parse_filter(f: &str) -> Result<(String, String), ScimError> {
    let bad =
        || ScimError::invalid("invalidFilter", format!("unsupported filter {f:?}: only `attribute eq \"value\"`"));
    let mut it = f.trim().splitn(3, ' ');
    let (Some(a), Some(op), Some(v)) = (it.next(), it.next(), it.next()) else { return Err(bad()) };
    if !op.eq_ignore_ascii_case("eq") {
        return Err(bad());
    }
    let v: String = serde_json::from_str(v.trim()).map_err(|_| bad())?;
    Ok((a.to_owned(), v))
}

pub async fn list_users(
    State(s): State<AppState>,
    ScimClient(_): ScimClient,
    RawQuery(raw): RawQuery,
) -> Result<Response, ScimError> {
    let q = list_query(raw.as_deref())?;
    let Some(filter) = q.filter.as_deref() else {
        return Err(ScimError::invalid("tooMany", "list Users with a filter: userName eq \"…\""));
    };
    let (a, v) = parse_filter(filter)?;
    let found = match a.to_ascii_lowercase().as_str() {
        "username" | "emails.value" | "emails" => s.mandate.scim_user_by_email(&v).await?,
        // Mandate keeps no externalId yet, so none matches.
        "externalid" => None,
        _ => return Err(ScimError::invalid("invalidFilter", format!("cannot filter on {a}"))),
    };
    let all: Vec<Value> = found.iter().map(|u| q.shape.apply(user_json(&s, u))).collect();
    let start = q.start_index.unwrap_or(1).max(1);
    let count = q.count.unwrap_or(MAX_COUNT).min(MAX_COUNT);
    let page: Vec<Value> = all.iter().skip(start - 1).take(count).cloned().collect();
    let body = json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": all.len(),
        "startIndex": start,
        "itemsPerPage": page.len(),
        "Resources": page,
    });
    Ok(scim(StatusCode::OK, &body))
}

fn base(s: &AppState) -> String {
    format!("{}/scim/v2", s.mandate.config().issuer.as_str().trim_end_matches('/'))
}

pub async fn service_provider_config(State(s): State<AppState>) -> Response {
    scim(
        StatusCode::OK,
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "documentationUri": "https://github.com/mandate/mandate/blob/main/docs/federation.md",
            "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": MAX_COUNT},
            "changePassword": {"supported": false},
            "sort": {"supported": false},
            "etag": {"supported": true},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "A token the admin issues with POST /v1/scim-tokens",
                "primary": true,
            }],
            "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{}/ServiceProviderConfig", base(&s))},
        }),
    )
}

fn user_resource_type(s: &AppState) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": "User",
        "name": "User",
        "endpoint": "/Users",
        "description": "A person",
        "schema": USER_SCHEMA,
        "schemaExtensions": [],
        "meta": {"resourceType": "ResourceType", "location": format!("{}/ResourceTypes/User", base(s))},
    })
}

fn attribute(name: &str, kind: &str, required: bool, mutability: &str, uniqueness: &str) -> Value {
    json!({
        "name": name, "type": kind, "multiValued": false, "required": required, "caseExact": false,
        "mutability": mutability, "returned": "default", "uniqueness": uniqueness,
    })
}

fn user_schema(s: &AppState) -> Value {
    let name = attribute("name", "complex", false, "readWrite", "none");
    let name = with(
        name,
        "subAttributes",
        json!([
            attribute("formatted", "string", false, "readWrite", "none"),
            attribute("givenName", "string", false, "readWrite", "none"),
            attribute("familyName", "string", false, "readWrite", "none"),
        ]),
    );
    let emails = with(attribute("emails", "complex", false, "readWrite", "none"), "multiValued", json!(true));
    let emails = with(
        emails,
        "subAttributes",
        json!([
            attribute("value", "string", false, "readWrite", "none"),
            attribute("type", "string", false, "readWrite", "none"),
            attribute("primary", "boolean", false, "readWrite", "none"),
        ]),
    );
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": USER_SCHEMA,
        "name": "User",
        "description": "A person; userName is the email",
        "attributes": [
            attribute("userName", "string", true, "readWrite", "server"),
            name,
            attribute("displayName", "string", false, "readWrite", "none"),
            emails,
            attribute("active", "boolean", false, "readWrite", "none"),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{}/Schemas/{USER_SCHEMA}", base(s))},
    })
}

fn list(resources: Vec<Value>) -> Value {
    json!({"schemas": [LIST_SCHEMA], "totalResults": resources.len(), "startIndex": 1, "itemsPerPage": resources.len(), "Resources": resources})
}

pub async fn resource_types(State(s): State<AppState>) -> Response {
    scim(StatusCode::OK, &list(vec![user_resource_type(&s)]))
}

pub async fn resource_type(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ScimError> {
    if id != "User" {
        return Err(ScimError::new(StatusCode::NOT_FOUND, None, format!("ResourceType {id}")));
    }
    Ok(scim(StatusCode::OK, &user_resource_type(&s)))
}

pub async fn schemas(State(s): State<AppState>) -> Response {
    scim(StatusCode::OK, &list(vec![user_schema(&s)]))
}

pub async fn schema(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ScimError> {
    if id != USER_SCHEMA {
        return Err(ScimError::new(StatusCode::NOT_FOUND, None, format!("Schema {id}")));
    }
    Ok(scim(StatusCode::OK, &user_schema(&s)))
}

/// Any other path under `/scim/v2`, Groups included for now.
pub async fn not_found() -> ScimError {
    ScimError::new(StatusCode::NOT_FOUND, None, "no such SCIM endpoint (Groups are not served yet)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Map<String, Value> {
        let Value::Object(o) = json!({
            "userName": "a@example.com", "displayName": "A", "name": {"formatted": "A"}, "active": true,
        }) else {
            unreachable!()
        };
        o
    }

    fn ops(doc: &mut Map<String, Value>, ops: Value) -> Result<ScimUser, ScimError> {
        for op in ops.as_array().into_iter().flatten() {
            apply(doc, op)?;
        }
        scim_user(doc)
    }

    #[test]
    fn patch_paths_take_the_forms_idps_send() {
        let mut d = doc();
        let u = ops(&mut d, json!([{"op": "Replace", "path": "active", "value": "False"}])).ok();
        assert_eq!(u.map(|u| u.active), Some(Some(false)));
        let mut d = doc();
        let u = ops(&mut d, json!([{"op": "replace", "value": {"ACTIVE": false}}])).ok();
        assert_eq!(u.map(|u| u.active), Some(Some(false)));
        let mut d = doc();
        let u = ops(
            &mut d,
            json!([{"op": "replace", "path": "urn:ietf:params:scim:schemas:core:2.0:User:active", "value": false}]),
        )
        .ok();
        assert_eq!(u.map(|u| u.active), Some(Some(false)));
        let mut d = doc();
        let u = ops(
            &mut d,
            json!([{"op": "remove", "path": "displayName"}, {"op": "add", "path": "name.formatted", "value": "A"}]),
        )
        .ok();
        assert_eq!(u.map(|u| u.name), Some("A".to_owned()));
    }

    #[test]
    fn patch_refusals_name_their_scim_type() {
        let cases = [
            (json!([{"op": "remove", "path": "active"}]), "mutability"),
            (
                json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "b@example.com"}]),
                "invalidPath",
            ),
            (json!([{"op": "remove"}]), "noTarget"),
            (json!([{"op": "replace", "path": "active"}]), "invalidValue"),
            (json!([{"op": "move", "path": "active", "value": true}]), "invalidSyntax"),
            (json!([{"op": "replace", "path": "active", "value": "maybe"}]), "invalidValue"),
            (json!([{"op": "remove", "path": "userName"}]), "invalidValue"),
        ];
        for (o, t) in cases {
            let got = ops(&mut doc(), o.clone()).err().and_then(|e| e.scim_type);
            assert_eq!(got, Some(t), "{o}");
        }
    }

    #[test]
    fn attributes_and_excluded_attributes_shape_the_answer() {
        let user = Value::Object(doc());
        let q = list_query(Some("attributes=userName,name.givenName")).ok().unwrap_or_default();
        let keys: Vec<String> =
            q.shape.apply(user.clone()).as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, ["name", "userName"]);
        let q = list_query(Some("excludedAttributes=name,ACTIVE")).ok().unwrap_or_default();
        let keys: Vec<String> =
            q.shape.apply(user).as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, ["displayName", "userName"]);
    }

    #[test]
    fn filters_are_attribute_eq_quoted_value() {
        assert_eq!(
            parse_filter(r#"userName eq "a b@example.com""#).ok(),
            Some(("userName".into(), "a b@example.com".into()))
        );
        assert_eq!(parse_filter(r#"userName EQ "x""#).ok(), Some(("userName".into(), "x".into())));
        for bad in [r#"userName co "x""#, "userName eq x", "userName", r#"userName eq "x" and active eq true"#] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }
}
