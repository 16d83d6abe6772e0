//! SCIM 2.0 under `/scim/v2` (RFC 7643, RFC 7644; DESIGN §10): Users and
//! the discovery resources, as `application/scim+json`, with SCIM error
//! bodies for every refusal.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_core::Error;
use mandate_core::scim::{ScimGroupSpec, ScimPerson, ScimUser, group_version};
use mandate_core::store::{ScimGroupQuery, ScimUserQuery};
use mandate_model::records::{ScimGroup, UserStatus};
use mandate_model::{GroupId, UserId};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::extract::bearer;

mod patch;

use patch::Resource;

pub const CONTENT_TYPE: &str = "application/scim+json";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
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
            // RFC 7644 §3.14: the resource changed since it was read.
            Error::PreconditionFailed(m) => Self::new(S::PRECONDITION_FAILED, None, m),
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

fn created(t: time::OffsetDateTime) -> String {
    // An unformattable time is left out rather than replaced.
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn location(s: &AppState, kind: &str, id: &str) -> String {
    format!("{}/{kind}/{id}", base(s))
}

fn user_json(s: &AppState, p: &ScimPerson) -> Value {
    let mut doc = p.profile();
    doc.insert("schemas".into(), json!([USER_SCHEMA]));
    doc.insert("id".into(), json!(p.user.id.to_string()));
    if let Some(x) = p.external_id() {
        doc.insert("externalId".into(), json!(x));
    }
    doc.insert("userName".into(), json!(p.user_name()));
    doc.insert("active".into(), json!(p.user.status == UserStatus::Active));
    let created = created(p.user.created_at);
    doc.insert(
        "meta".into(),
        json!({
            "resourceType": "User",
            "created": created,
            "lastModified": created,
            "location": location(s, "Users", &p.user.id.to_string()),
            "version": p.version(),
        }),
    );
    Value::Object(doc)
}

/// A Group; with `display`, each member's `display` is their name (it is
/// returned on request only, RFC 7643 §7 `returned: request`, so that a
/// large group is not a read per member).
async fn group_json(s: &AppState, g: &ScimGroup, display: bool) -> Result<Value, ScimError> {
    let mut members = Vec::with_capacity(g.members.len());
    for m in &g.members {
        let display = match display {
            true => s.mandate.scim_person(*m).await.ok().map(|p| p.user.name),
            false => None,
        };
        let mut member = json!({"value": m.to_string(), "$ref": location(s, "Users", &m.to_string()), "type": "User"});
        if let Some(d) = display {
            member = with(member, "display", json!(d));
        }
        members.push(member);
    }
    let mut doc = json!({
        "schemas": [GROUP_SCHEMA],
        "id": g.id.to_string(),
        "displayName": g.display_name,
        "members": members,
        "meta": {
            "resourceType": "Group",
            "created": created(g.created_at),
            "lastModified": created(g.updated_at),
            "location": location(s, "Groups", &g.id.to_string()),
            "version": group_version(g),
        },
    });
    if let Some(x) = &g.external_id {
        doc = with(doc, "externalId", json!(x));
    }
    Ok(doc)
}

/// RFC 7644 §3.14: an `If-Match` that names neither `*` nor `current`
/// is refused with 412. The write that follows is a compare-and-swap
/// against what was read, so a change in between is a 412 too.
fn precondition(headers: &HeaderMap, current: &str) -> Result<(), ScimError> {
    let Some(wanted) = headers.get(header::IF_MATCH) else { return Ok(()) };
    let matches = wanted.to_str().is_ok_and(|w| {
        w.split(',').map(str::trim).any(|tag| tag == "*" || tag == current || format!("W/{tag}") == current)
    });
    if matches { Ok(()) } else { Err(stale("If-Match names another version of the resource")) }
}

fn stale(detail: &str) -> ScimError {
    ScimError::new(StatusCode::PRECONDITION_FAILED, None, detail)
}

/// Writes without `If-Match` are retried this often when a concurrent
/// change wins the compare-and-swap; with `If-Match` the client decides.
const WRITE_ATTEMPTS: usize = 3;

/// Runs `attempt` (read, check `If-Match`, write) until it does not lose a
/// compare-and-swap, or gives up with 412.
async fn retrying<T, F, Fut>(headers: &HeaderMap, mut attempt: F) -> Result<T, ScimError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ScimError>>,
{
    let tries = if headers.contains_key(header::IF_MATCH) { 1 } else { WRITE_ATTEMPTS };
    let mut last = stale("the resource kept changing");
    for _ in 0..tries {
        match attempt().await {
            Err(e) if e.status == StatusCode::PRECONDITION_FAILED => last = e,
            other => return other,
        }
    }
    Err(last)
}

fn tagged(status: StatusCode, body: &Value, version: &str) -> Response {
    let mut r = scim(status, body);
    if let Ok(v) = HeaderValue::from_str(version) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn user_response(s: &AppState, status: StatusCode, p: &ScimPerson) -> Response {
    tagged(status, &user_json(s, p), &p.version())
}

async fn group_response(s: &AppState, status: StatusCode, g: &ScimGroup) -> Result<Response, ScimError> {
    Ok(tagged(status, &group_json(s, g, false).await?, &group_version(g)))
}

fn string(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

fn text(o: &Map<String, Value>, name: &str) -> Result<Option<String>, ScimError> {
    match attr(o, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ScimError::invalid("invalidValue", format!("{name} must be a string"))),
    }
}

/// `value` with only the sub-attributes the schema declares, each of the
/// declared type; `None` when nothing is left.
fn complex(name: &str, value: &Value, subs: &[(&str, bool)]) -> Result<Option<Map<String, Value>>, ScimError> {
    let o = value.as_object().ok_or_else(|| ScimError::invalid("invalidValue", format!("{name} must be an object")))?;
    let mut kept = Map::new();
    for (sub, is_bool) in subs {
        match (attr(o, sub), is_bool) {
            (None, _) => {}
            (Some(Value::String(v)), false) => {
                kept.insert((*sub).to_owned(), json!(v));
            }
            (Some(v), true) => {
                let b = boolean(v)
                    .ok_or_else(|| ScimError::invalid("invalidValue", format!("{name}.{sub} must be a boolean")))?;
                kept.insert((*sub).to_owned(), json!(b));
            }
            (Some(_), false) => {
                return Err(ScimError::invalid("invalidValue", format!("{name}.{sub} must be a string")));
            }
        }
    }
    Ok((!kept.is_empty()).then_some(kept))
}

/// What a SCIM User body asks for. `userName` is any string; the email is
/// the primary (else the first) of `emails`, else `userName`; the name is
/// `displayName`, else `name.formatted`, else the given and family names.
fn scim_user(o: &Map<String, Value>) -> Result<ScimUser, ScimError> {
    let user_name = text(o, "userName")?.ok_or_else(|| ScimError::invalid("invalidValue", "userName is required"))?;
    let external_id = text(o, "externalId")?;
    let mut profile = Map::new();
    let display_name = text(o, "displayName")?;
    if let Some(d) = &display_name {
        profile.insert("displayName".into(), json!(d));
    }
    let name = match attr(o, "name") {
        None => None,
        Some(n) => complex("name", n, &[("formatted", false), ("givenName", false), ("familyName", false)])?,
    };
    if let Some(n) = &name {
        profile.insert("name".into(), Value::Object(n.clone()));
    }
    let emails = match attr(o, "emails") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| complex("emails", e, &[("value", false), ("type", false), ("primary", true)]))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect(),
        Some(_) => return Err(ScimError::invalid("invalidValue", "emails must be an array")),
    };
    if !emails.is_empty() {
        profile.insert("emails".into(), Value::Array(emails.iter().cloned().map(Value::Object).collect()));
    }
    let email = emails
        .iter()
        .find(|e| e.get("primary") == Some(&json!(true)))
        .or_else(|| emails.first())
        .map(|e| string(e.get("value")).map(str::to_owned))
        .unwrap_or_else(|| Some(user_name.clone()));
    let person_name = display_name.map(|d| d.trim().to_owned()).filter(|d| !d.is_empty()).or_else(|| {
        let n = name.as_ref()?;
        string(n.get("formatted")).map(str::to_owned).or_else(|| {
            let parts: Vec<&str> =
                [string(n.get("givenName")), string(n.get("familyName"))].into_iter().flatten().collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        })
    });
    let active = match attr(o, "active") {
        None => None,
        Some(v) => Some(boolean(v).ok_or_else(|| ScimError::invalid("invalidValue", "active must be a boolean"))?),
    };
    Ok(ScimUser { user_name, external_id, profile, name: person_name, email, active })
}

/// What a SCIM Group body asks for: members are Users, by their `usr_…` id.
fn scim_group(o: &Map<String, Value>) -> Result<ScimGroupSpec, ScimError> {
    let display_name =
        text(o, "displayName")?.ok_or_else(|| ScimError::invalid("invalidValue", "displayName is required"))?;
    let members = match attr(o, "members") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|m| {
                let v = m.as_object().and_then(|m| string(attr(m, "value")));
                let v = v.ok_or_else(|| ScimError::invalid("invalidValue", "each member needs a value"))?;
                v.parse::<UserId>()
                    .map_err(|_| ScimError::invalid("invalidValue", format!("member {v:?} is not a User id (usr_…)")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(ScimError::invalid("invalidValue", "members must be an array")),
    };
    Ok(ScimGroupSpec { display_name, external_id: text(o, "externalId")?, members })
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

fn group_id(raw: &str) -> Result<GroupId, ScimError> {
    raw.parse().map_err(|_| ScimError::new(StatusCode::NOT_FOUND, None, format!("Group {raw}")))
}

pub async fn create_user(
    State(s): State<AppState>,
    ScimClient(c): ScimClient,
    body: Bytes,
) -> Result<Response, ScimError> {
    let want = scim_user(&body_json(&body)?)?;
    let person = s.mandate.scim_create_user(&c, want).await?;
    Ok(user_response(&s, StatusCode::CREATED, &person))
}

pub async fn get_user(
    State(s): State<AppState>,
    ScimClient(_): ScimClient,
    Path(raw): Path<String>,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ScimError> {
    let shape = list_query(raw_query.as_deref())?.shape;
    let person = s.mandate.scim_person(user_id(&raw)?).await?;
    Ok(tagged(StatusCode::OK, &shape.apply(user_json(&s, &person)), &person.version()))
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
    let person = retrying(&headers, || async {
        let read = s.mandate.scim_person(id).await?;
        precondition(&headers, &read.version())?;
        Ok(s.mandate.scim_update_user(&c, &read, want.clone()).await?)
    })
    .await?;
    Ok(user_response(&s, StatusCode::OK, &person))
}

/// The operations of a PATCH body (RFC 7644 §3.5.2).
fn patch_ops(bytes: &Bytes) -> Result<Vec<Value>, ScimError> {
    let body = body_json(bytes)?;
    let ok_schema =
        attr(&body, "schemas").and_then(Value::as_array).is_some_and(|a| a.iter().any(|v| v == PATCH_SCHEMA));
    if !ok_schema {
        return Err(ScimError::invalid("invalidSyntax", format!("schemas must name {PATCH_SCHEMA}")));
    }
    attr(&body, "Operations")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| ScimError::invalid("invalidSyntax", "Operations must be an array"))
}

fn object(v: Value) -> Result<Map<String, Value>, ScimError> {
    match v {
        Value::Object(o) => Ok(o),
        _ => Err(ScimError::from(Error::Unavailable("a resource is not an object".into()))),
    }
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
    let ops = patch_ops(&body)?;
    let person = retrying(&headers, || async {
        let read = s.mandate.scim_person(id).await?;
        precondition(&headers, &read.version())?;
        let mut doc = object(user_json(&s, &read))?;
        for op in &ops {
            patch::apply(&mut doc, op, Resource::User)?;
        }
        Ok(s.mandate.scim_update_user(&c, &read, scim_user(&doc)?).await?)
    })
    .await?;
    Ok(user_response(&s, StatusCode::OK, &person))
}

pub async fn delete_user(
    State(s): State<AppState>,
    ScimClient(c): ScimClient,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ScimError> {
    let id = user_id(&raw)?;
    retrying(&headers, || async {
        let read = s.mandate.scim_person(id).await?;
        precondition(&headers, &read.version())?;
        Ok(s.mandate.scim_delete_user(&c, &read).await?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn create_group(
    State(s): State<AppState>,
    ScimClient(c): ScimClient,
    body: Bytes,
) -> Result<Response, ScimError> {
    let want = scim_group(&body_json(&body)?)?;
    let group = s.mandate.scim_create_group(&c, want).await?;
    group_response(&s, StatusCode::CREATED, &group).await
}

pub async fn get_group(
    State(s): State<AppState>,
    ScimClient(_): ScimClient,
    Path(raw): Path<String>,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ScimError> {
    let shape = list_query(raw_query.as_deref())?.shape;
    let group = s.mandate.scim_group(group_id(&raw)?).await?;
    let doc = group_json(&s, &group, shape.wants_display()).await?;
    Ok(tagged(StatusCode::OK, &shape.apply(doc), &group_version(&group)))
}

pub async fn replace_group(
    State(s): State<AppState>,
    ScimClient(c): ScimClient,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ScimError> {
    let id = group_id(&raw)?;
    let want = scim_group(&body_json(&body)?)?;
    let group = retrying(&headers, || async {
        let read = s.mandate.scim_group(id).await?;
        precondition(&headers, &group_version(&read))?;
        Ok(s.mandate.scim_update_group(&c, &read, want.clone()).await?)
    })
    .await?;
    group_response(&s, StatusCode::OK, &group).await
}

/// As for Users: the operations are applied to the Group as SCIM shows it,
/// and the result taken as a replacement; `members` add and remove (also
/// `members[value eq "usr_…"]`, as Entra ID and Okta send) change only the
/// members named.
pub async fn patch_group(
    State(s): State<AppState>,
    ScimClient(c): ScimClient,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ScimError> {
    let id = group_id(&raw)?;
    let ops = patch_ops(&body)?;
    let group = retrying(&headers, || async {
        let read = s.mandate.scim_group(id).await?;
        precondition(&headers, &group_version(&read))?;
        let mut doc = object(group_json(&s, &read, false).await?)?;
        for op in &ops {
            patch::apply(&mut doc, op, Resource::Group)?;
        }
        Ok(s.mandate.scim_update_group(&c, &read, scim_group(&doc)?).await?)
    })
    .await?;
    group_response(&s, StatusCode::OK, &group).await
}

pub async fn delete_group(
    State(s): State<AppState>,
    ScimClient(c): ScimClient,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ScimError> {
    let id = group_id(&raw)?;
    retrying(&headers, || async {
        let read = s.mandate.scim_group(id).await?;
        precondition(&headers, &group_version(&read))?;
        Ok(s.mandate.scim_delete_group(&c, &read).await?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `attributes` and `excludedAttributes` (RFC 7644 §3.9), on top-level
/// attributes (a sub-attribute names its parent); `id` and `schemas` are
/// always returned. `members.display` is returned only when asked for.
#[derive(Debug, Default, Clone)]
struct Shape {
    only: Vec<String>,
    excluded: Vec<String>,
}

/// Lower-cased attribute paths, without a schema URN.
fn names(v: &str) -> Vec<String> {
    v.split(',').map(|n| patch::without_urn(n.trim()).to_ascii_lowercase()).filter(|n| !n.is_empty()).collect()
}

fn top(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

impl Shape {
    /// Whether members' `display` was asked for.
    fn wants_display(&self) -> bool {
        self.only.iter().any(|p| p == "members.display")
    }

    fn apply(&self, v: Value) -> Value {
        let Value::Object(o) = v else { return v };
        let always = |k: &str| k == "id" || k == "schemas";
        let display = self.wants_display();
        let kept = o.into_iter().filter_map(|(k, v)| {
            let k_l = k.to_ascii_lowercase();
            let shown = always(&k)
                || ((self.only.is_empty() || self.only.iter().any(|p| top(p) == k_l)) && !self.excluded.contains(&k_l));
            if !shown {
                return None;
            }
            match (k_l.as_str(), v) {
                ("members", Value::Array(members)) if !display => {
                    let members = members
                        .into_iter()
                        .map(|m| match m {
                            Value::Object(mut m) => {
                                m.remove("display");
                                Value::Object(m)
                            }
                            other => other,
                        })
                        .collect();
                    Some((k, Value::Array(members)))
                }
                (_, v) => Some((k, v)),
            }
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

/// A `/.search` body (RFC 7644 §3.4.3) as the query it stands for.
fn search_query(bytes: &Bytes) -> Result<ListQuery, ScimError> {
    let o = body_json(bytes)?;
    let list = |name: &str| -> Result<Vec<String>, ScimError> {
        match attr(&o, name) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => Ok(a.iter().filter_map(Value::as_str).flat_map(names).collect()),
            Some(_) => Err(ScimError::invalid("invalidValue", format!("{name} must be an array"))),
        }
    };
    let number = |name: &str| -> Result<Option<i64>, ScimError> {
        match attr(&o, name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| ScimError::invalid("invalidValue", format!("{name} must be an integer"))),
        }
    };
    Ok(ListQuery {
        filter: text(&o, "filter")?,
        shape: Shape { only: list("attributes")?, excluded: list("excludedAttributes")? },
        start_index: number("startIndex")?.map(|n| usize::try_from(n.max(1)).unwrap_or(1)),
        count: number("count")?.map(|n| usize::try_from(n.max(0)).unwrap_or(0)),
    })
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
    Ok((patch::without_urn(a).to_owned(), v))
}

/// The page a list asks for: `startIndex` is 1-based (RFC 7644 §3.4.2.4).
fn paging(q: &ListQuery) -> (usize, u64, u32) {
    let start = q.start_index.unwrap_or(1).max(1);
    let count = q.count.unwrap_or(MAX_COUNT).min(MAX_COUNT);
    (start, (start - 1) as u64, u32::try_from(count).unwrap_or(0))
}

fn list_body(total: u64, start: usize, page: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": page.len(),
        "Resources": page,
    })
}

async fn users_page(s: &AppState, q: &ListQuery) -> Result<Response, ScimError> {
    let (start, offset, limit) = paging(q);
    let mut query = ScimUserQuery { offset, limit, ..Default::default() };
    if let Some(filter) = q.filter.as_deref() {
        let (a, v) = parse_filter(filter)?;
        match a.to_ascii_lowercase().as_str() {
            "username" => query.user_name = Some(v),
            "externalid" => query.external_id = Some(v),
            "emails.value" | "emails" => match mandate_model::name::validate_email(&v) {
                Ok(e) => query.email = Some(e),
                // No one has an email that is not one.
                Err(_) => return Ok(scim(StatusCode::OK, &list_body(0, start, Vec::new()))),
            },
            _ => return Err(ScimError::invalid("invalidFilter", format!("cannot filter Users on {a}"))),
        }
    }
    let found = s.mandate.scim_people(&query).await?;
    let page = found.items.iter().map(|p| q.shape.apply(user_json(s, p))).collect();
    Ok(scim(StatusCode::OK, &list_body(found.total, start, page)))
}

/// `GET /Users`: every User SCIM shows, or those a filter (`userName`,
/// `externalId` or `emails.value` `eq`) picks, paged.
pub async fn list_users(
    State(s): State<AppState>,
    ScimClient(_): ScimClient,
    RawQuery(raw): RawQuery,
) -> Result<Response, ScimError> {
    users_page(&s, &list_query(raw.as_deref())?).await
}

/// `POST /Users/.search` (RFC 7644 §3.4.3).
pub async fn search_users(
    State(s): State<AppState>,
    ScimClient(_): ScimClient,
    body: Bytes,
) -> Result<Response, ScimError> {
    users_page(&s, &search_query(&body)?).await
}

async fn groups_page(s: &AppState, q: &ListQuery) -> Result<Response, ScimError> {
    let (start, offset, limit) = paging(q);
    let mut query = ScimGroupQuery { offset, limit, ..Default::default() };
    if let Some(filter) = q.filter.as_deref() {
        let (a, v) = parse_filter(filter)?;
        match a.to_ascii_lowercase().as_str() {
            "displayname" => query.display_name = Some(v),
            "externalid" => query.external_id = Some(v),
            _ => return Err(ScimError::invalid("invalidFilter", format!("cannot filter Groups on {a}"))),
        }
    }
    let found = s.mandate.scim_groups(&query).await?;
    let mut page = Vec::with_capacity(found.items.len());
    for g in &found.items {
        page.push(q.shape.apply(group_json(s, g, q.shape.wants_display()).await?));
    }
    Ok(scim(StatusCode::OK, &list_body(found.total, start, page)))
}

/// `GET /Groups`: every Group, or those a filter (`displayName` or
/// `externalId` `eq`) picks, paged.
pub async fn list_groups(
    State(s): State<AppState>,
    ScimClient(_): ScimClient,
    RawQuery(raw): RawQuery,
) -> Result<Response, ScimError> {
    groups_page(&s, &list_query(raw.as_deref())?).await
}

/// `POST /Groups/.search` (RFC 7644 §3.4.3).
pub async fn search_groups(
    State(s): State<AppState>,
    ScimClient(_): ScimClient,
    body: Bytes,
) -> Result<Response, ScimError> {
    groups_page(&s, &search_query(&body)?).await
}

/// `POST /.search` across resource types is not served (RFC 7644 §3.12:
/// 501); search each type at its own endpoint.
pub async fn search_all(ScimClient(_): ScimClient) -> ScimError {
    ScimError::new(StatusCode::NOT_IMPLEMENTED, None, "search Users and Groups at /Users/.search and /Groups/.search")
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

fn resource_type_json(s: &AppState, id: &str) -> Option<Value> {
    let (endpoint, description, schema) = match id {
        "User" => ("/Users", "A person", USER_SCHEMA),
        "Group" => ("/Groups", "A group of people; its displayName is a Cedar group name", GROUP_SCHEMA),
        _ => return None,
    };
    Some(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": id,
        "name": id,
        "endpoint": endpoint,
        "description": description,
        "schema": schema,
        "schemaExtensions": [],
        "meta": {"resourceType": "ResourceType", "location": format!("{}/ResourceTypes/{id}", base(s))},
    }))
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
    // Mandate needs an email for every person: `emails` is required (an
    // email as userName also does, without emails).
    let emails = with(attribute("emails", "complex", true, "readWrite", "none"), "multiValued", json!(true));
    let emails = with(
        emails,
        "subAttributes",
        json!([
            attribute("value", "string", true, "readWrite", "none"),
            with(
                attribute("type", "string", false, "readWrite", "none"),
                "canonicalValues",
                json!(["work", "home", "other"])
            ),
            attribute("primary", "boolean", false, "readWrite", "none"),
        ]),
    );
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": USER_SCHEMA,
        "name": "User",
        "description": "A person; the email is the primary of emails (else userName)",
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

fn group_schema(s: &AppState) -> Value {
    let reference = |name: &str| {
        with(
            with(attribute(name, "reference", false, "immutable", "none"), "referenceTypes", json!(["User"])),
            "caseExact",
            json!(true),
        )
    };
    let members = with(attribute("members", "complex", false, "readWrite", "none"), "multiValued", json!(true));
    let members = with(
        members,
        "subAttributes",
        json!([
            with(attribute("value", "string", false, "immutable", "none"), "caseExact", json!(true)),
            reference("$ref"),
            with(attribute("type", "string", false, "immutable", "none"), "canonicalValues", json!(["User"])),
            with(attribute("display", "string", false, "readOnly", "none"), "returned", json!("request")),
        ]),
    );
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": GROUP_SCHEMA,
        "name": "Group",
        "description": "A group of people; displayName is the Cedar group name its members get",
        "attributes": [attribute("displayName", "string", true, "readWrite", "server"), members],
        "meta": {"resourceType": "Schema", "location": format!("{}/Schemas/{GROUP_SCHEMA}", base(s))},
    })
}

fn list(resources: Vec<Value>) -> Value {
    json!({"schemas": [LIST_SCHEMA], "totalResults": resources.len(), "startIndex": 1, "itemsPerPage": resources.len(), "Resources": resources})
}

pub async fn resource_types(State(s): State<AppState>) -> Response {
    let all = ["User", "Group"].into_iter().filter_map(|id| resource_type_json(&s, id)).collect();
    scim(StatusCode::OK, &list(all))
}

pub async fn resource_type(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ScimError> {
    let found = resource_type_json(&s, &id)
        .ok_or_else(|| ScimError::new(StatusCode::NOT_FOUND, None, format!("ResourceType {id}")))?;
    Ok(scim(StatusCode::OK, &found))
}

pub async fn schemas(State(s): State<AppState>) -> Response {
    scim(StatusCode::OK, &list(vec![user_schema(&s), group_schema(&s)]))
}

pub async fn schema(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ScimError> {
    match id.as_str() {
        USER_SCHEMA => Ok(scim(StatusCode::OK, &user_schema(&s))),
        GROUP_SCHEMA => Ok(scim(StatusCode::OK, &group_schema(&s))),
        _ => Err(ScimError::new(StatusCode::NOT_FOUND, None, format!("Schema {id}"))),
    }
}

/// Any other path under `/scim/v2`.
pub async fn not_found() -> ScimError {
    ScimError::new(StatusCode::NOT_FOUND, None, "no such SCIM endpoint")
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
            patch::apply(doc, op, Resource::User)?;
        }
        scim_user(doc)
    }

    const A: &str = "usr_01ARZ3NDEKTSV4RRFFQ69G5FAV";
    const B: &str = "usr_01BX5ZZKBKACTAV9WEVGEMMVRZ";
    const C: &str = "usr_01BX5ZZKBKACTAV9WEVGEMMVS0";

    fn group() -> Map<String, Value> {
        let Value::Object(o) = json!({
            "displayName": "eng", "externalId": "g-1",
            "members": [{"value": A, "display": "A", "type": "User"}, {"value": B}],
        }) else {
            unreachable!()
        };
        o
    }

    fn group_ops(ops: Value) -> Result<ScimGroupSpec, ScimError> {
        let mut doc = group();
        for op in ops.as_array().into_iter().flatten() {
            patch::apply(&mut doc, op, Resource::Group)?;
        }
        scim_group(&doc)
    }

    fn members(g: Result<ScimGroupSpec, ScimError>) -> Vec<String> {
        g.map(|g| g.members.iter().map(ToString::to_string).collect()).unwrap_or_default()
    }

    /// RFC 7644 §3.5.2 as Entra ID and Okta send it to Groups.
    #[test]
    fn group_patches_add_and_remove_only_the_members_named() {
        // add appends what is not there yet.
        let g = group_ops(json!([{"op": "add", "path": "members", "value": [{"value": C}, {"value": A}]}]));
        assert_eq!(members(g), [A, B, C]);
        // remove by a value filter (Okta, Entra ID).
        let g = group_ops(json!([{"op": "remove", "path": format!("members[value eq \"{A}\"]")}]));
        assert_eq!(members(g), [B]);
        // remove with the members in the value (Entra ID).
        let g = group_ops(json!([{"op": "Remove", "path": "members", "value": [{"value": B}]}]));
        assert_eq!(members(g), [A]);
        // remove of the attribute: no members.
        let g = group_ops(json!([{"op": "remove", "path": "members"}]));
        assert!(members(g).is_empty());
        // replace sets them all.
        let g = group_ops(json!([{"op": "replace", "path": "members", "value": [{"value": C}]}]));
        assert_eq!(members(g), [C]);
        // A no-path add of members adds; a no-path replace of displayName renames.
        let g = group_ops(json!([
            {"op": "add", "value": {"members": [{"value": C}]}},
            {"op": "replace", "value": {"displayName": "sre", "externalId": "g-2"}},
        ]));
        let g = g.ok();
        assert_eq!(g.as_ref().map(|g| (g.display_name.as_str(), g.external_id.as_deref())), Some(("sre", Some("g-2"))));
        assert_eq!(g.map(|g| g.members.len()), Some(3));
        // With the schema URN.
        let g = group_ops(
            json!([{"op": "replace", "path": "urn:ietf:params:scim:schemas:core:2.0:Group:displayName", "value": "ops"}]),
        );
        assert_eq!(g.map(|g| g.display_name).ok().as_deref(), Some("ops"));
        let g = group_ops(json!([{"op": "remove", "path": "externalId"}]));
        assert_eq!(g.map(|g| g.external_id).ok(), Some(None));
    }

    #[test]
    fn group_patch_refusals_name_their_scim_type() {
        let cases = [
            (json!([{"op": "remove", "path": "displayName"}]), "invalidValue"),
            (
                json!([{"op": "add", "path": "members", "value": [{"value": "agt_01ARZ3NDEKTSV4RRFFQ69G5FAV"}]}]),
                "invalidValue",
            ),
            (json!([{"op": "add", "path": "members", "value": [{"display": "no value"}]}]), "invalidValue"),
            (json!([{"op": "remove", "path": "members[value co \"usr\"]"}]), "invalidFilter"),
            (json!([{"op": "remove", "path": "members[value eq \"x\""}]), "invalidPath"),
            (json!([{"op": "replace", "path": "members", "value": {"value": "x"}}]), "invalidValue"),
        ];
        for (o, t) in cases {
            let got = group_ops(o.clone()).err().and_then(|e| e.scim_type);
            assert_eq!(got, Some(t), "{o}");
        }
    }

    #[test]
    fn member_display_is_returned_only_on_request() {
        let g = Value::Object(group());
        let shown = Shape::default().apply(g.clone());
        assert!(shown["members"][0].get("display").is_none() && shown["members"][0]["value"] == A, "{shown}");
        let q = list_query(Some("attributes=members.display")).ok().unwrap_or_default();
        let shown = q.shape.apply(g);
        assert_eq!(shown["members"][0]["display"], "A");
        assert!(shown.get("displayName").is_none(), "{shown}");
    }

    #[test]
    fn the_email_is_the_primary_of_emails_else_the_first_else_user_name() {
        let user = |v: Value| match v {
            Value::Object(o) => scim_user(&o).ok(),
            _ => None,
        };
        let u = user(json!({"userName": "6a1f-uuid", "emails": [
            {"value": "a@example.com"}, {"value": "b@example.com", "primary": true}]}));
        assert_eq!(u.and_then(|u| u.email), Some("b@example.com".into()));
        let u = user(json!({"userName": "6a1f-uuid", "emails": [{"value": "a@example.com", "type": "work"}]}));
        assert_eq!(u.and_then(|u| u.email), Some("a@example.com".into()));
        let u = user(json!({"userName": "Alice@Example.com"}));
        assert_eq!(u.as_ref().and_then(|u| u.email.clone()), Some("Alice@Example.com".into()));
        assert_eq!(u.map(|u| (u.user_name, u.name)), Some(("Alice@Example.com".into(), None)));
        // The name: displayName, else name.formatted, else given and family.
        let u = user(json!({"userName": "x", "name": {"givenName": "Ada", "familyName": "Lovelace"}}));
        assert_eq!(u.and_then(|u| u.name), Some("Ada Lovelace".into()));
        let u = user(json!({"userName": "x", "displayName": "Ada", "name": {"formatted": "Ada L."}}));
        assert_eq!(u.and_then(|u| u.name), Some("Ada".into()));
    }

    /// Entra ID's default mapping writes the work email through a filter.
    #[test]
    fn user_patch_follows_value_filters() {
        let mut d = doc();
        d.insert("emails".into(), json!([{"value": "a@example.com", "type": "work", "primary": true}]));
        let u =
            ops(&mut d, json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "c@example.com"}]));
        assert_eq!(u.ok().and_then(|u| u.email), Some("c@example.com".into()));
        let u = ops(&mut d, json!([{"op": "add", "path": "emails[type eq \"home\"].value", "value": "h@example.com"}]));
        assert_eq!(u.ok().map(|u| u.profile["emails"].as_array().map(Vec::len)), Some(Some(2)));
        let u = ops(&mut d, json!([{"op": "replace", "value": {"name.givenName": "Ada", "displayName": "Ada L"}}]));
        assert_eq!(
            u.ok().map(|u| (u.name, u.profile["name"]["givenName"].clone())),
            Some((Some("Ada L".into()), json!("Ada")))
        );
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
        assert_eq!(u.map(|u| u.name), Some(Some("A".to_owned())));
    }

    #[test]
    fn patch_refusals_name_their_scim_type() {
        let cases = [
            (json!([{"op": "remove", "path": "active"}]), "mutability"),
            (
                json!([{"op": "replace", "path": "emails[type co \"work\"].value", "value": "b@example.com"}]),
                "invalidFilter",
            ),
            (
                json!([{"op": "replace", "path": "emails[type eq \"work\"]value", "value": "b@example.com"}]),
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
