//! `GET /openapi.json`: the administration API (DESIGN §7, §12) as an
//! OpenAPI 3.1 document.
//!
//! The routes of the admin API are registered from [`admin_routes`] and
//! [`check_routes`], and the document is built from [`OPERATIONS`] into
//! utoipa's typed OpenAPI model. A test (`openapi_matches_the_routes`)
//! fails when the two disagree: a path in one and not the other, or a
//! method the router answers that the document does not list, or back.

use std::collections::BTreeMap;

use axum::Json;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::Problem;

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// The admin token.
    Admin,
    /// The admin token, or a person's own API token for what is theirs.
    AdminOrUser,
    /// The admin token, or a resource server's `mandate:check` token.
    Checker,
    /// No credentials.
    Public,
}

/// One operation of the document.
#[derive(Debug)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub auth: Auth,
    /// Query parameters: name and description.
    pub query: &'static [(&'static str, &'static str)],
    /// The request body's schema (a component name).
    pub body: Option<&'static str>,
    /// The success status and its body's schema (a component name).
    pub ok: (u16, &'static str),
}

const fn op(method: &'static str, path: &'static str, tag: &'static str, summary: &'static str) -> Operation {
    Operation { method, path, tag, summary, auth: Auth::Admin, query: &[], body: None, ok: (200, "Object") }
}

impl Operation {
    const fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }
    const fn query(mut self, query: &'static [(&'static str, &'static str)]) -> Self {
        self.query = query;
        self
    }
    const fn body(mut self, schema: &'static str) -> Self {
        self.body = Some(schema);
        self
    }
    const fn ok(mut self, status: u16, schema: &'static str) -> Self {
        self.ok = (status, schema);
        self
    }
}

const LIMIT: (&str, &str) = ("limit", "items per page (default 100, at most 1,000)");
const CURSOR: (&str, &str) = ("cursor", "the previous page's next_cursor");

/// Every documented operation.
pub const OPERATIONS: &[Operation] = &[
    op("post", "/v1/users", "users", "Create a user").body("NewUser").ok(201, "User"),
    op("get", "/v1/users", "users", "List users, newest first (admin, auditors)")
        .query(&[("status", "active or disabled"), ("group", "a group the user is in"), LIMIT, CURSOR])
        .ok(200, "Page"),
    op("get", "/v1/users/{id}", "users", "Show a user").ok(200, "User"),
    op("patch", "/v1/users/{id}", "users", "Change a user's groups, attributes, links or status")
        .body("UserPatch")
        .ok(200, "User"),
    op("post", "/v1/users/{id}/tokens", "users", "Issue a person's own API token (shown once)")
        .body("NewUserToken")
        .ok(201, "Object"),
    op("get", "/v1/users/{id}/tokens", "users", "List a person's API tokens (never the secrets)")
        .auth(Auth::AdminOrUser),
    op("post", "/v1/users/{id}/tokens/{token}/revoke", "users", "Revoke a person's API token").auth(Auth::AdminOrUser),
    op("post", "/v1/agents", "agents", "Register an agent, or spawn an ephemeral child with a mandate:spawn token")
        .body("NewAgent")
        .ok(201, "Agent"),
    op("get", "/v1/agents", "agents", "List agents, newest first, filtered (admin, auditors)")
        .query(&[
            ("owner", "the owner's user id"),
            ("kind", "persistent or ephemeral"),
            ("origin", "how it was registered"),
            ("status", "active, suspended or retired"),
            ("parent", "the parent agent's id"),
            ("used_before", "RFC 3339: last used before (or never)"),
            ("used_after", "RFC 3339: last used after"),
            ("expires_before", "RFC 3339: expiring before"),
            LIMIT,
            CURSOR,
        ])
        .ok(200, "Page"),
    op(
        "get",
        "/v1/agents/{id}/inventory",
        "agents",
        "An agent's inventory: credentials, ceiling, limits and limits in force, live grants and tokens, delegation \
         edges, last use",
    )
    .query(&[("days", "the window of actual delegations, in days (default 30)")]),
    op("get", "/v1/agents/{id}", "agents", "Show an agent").auth(Auth::AdminOrUser).ok(200, "Agent"),
    op("patch", "/v1/agents/{id}", "agents", "Change an agent's description, ceiling, owner, limits or credentials")
        .auth(Auth::AdminOrUser)
        .body("AgentPatch")
        .ok(200, "Agent"),
    op("post", "/v1/agents/{id}/{op}", "agents", "Suspend, resume or retire an agent (op), with its cascade")
        .auth(Auth::AdminOrUser)
        .ok(200, "Agent"),
    op("post", "/v1/resources", "resources", "Register a resource and its scopes")
        .body("NewResource")
        .ok(201, "Resource"),
    op("get", "/v1/resources", "resources", "List resources, newest first (admin, auditors)")
        .query(&[LIMIT, CURSOR])
        .ok(200, "Page"),
    op("get", "/v1/resources/{id}", "resources", "Show a resource").ok(200, "Resource"),
    op("get", "/v1/policies", "policies", "The policy set, its version and the generated schema"),
    op(
        "put",
        "/v1/policies",
        "policies",
        "Replace the policy set atomically (validated; expected_version: 409 on a mismatch)",
    )
    .body("PolicySet"),
    op(
        "post",
        "/v1/policies/test",
        "policies",
        "Decide cases, and replay recorded decisions, under a candidate set (admin, auditors)",
    )
    .body("PolicyTest"),
    op("get", "/v1/policies/versions", "policies", "The policy set's versions, newest first (admin, auditors)")
        .query(&[LIMIT, CURSOR]),
    op("get", "/v1/policies/versions/{n}", "policies", "One version of the policy set"),
    op("get", "/v1/policies/versions/{n}/diff", "policies", "A line diff of a version against another")
        .query(&[("against", "the version number to compare with (default: the current one)")]),
    op("post", "/v1/policies/versions/{n}/restore", "policies", "Restore a version (expected_version honoured)")
        .body("Object"),
    op("post", "/v1/keys/rotate", "keys", "Add a new signing key").body("Object"),
    op("post", "/v1/scim-tokens", "scim", "Issue a SCIM bearer token (shown once)").ok(201, "Object"),
    op("get", "/v1/scim-tokens", "scim", "List SCIM tokens"),
    op("delete", "/v1/scim-tokens/{id}", "scim", "Revoke a SCIM token"),
    op("post", "/v1/scim-tokens/{id}/revoke", "scim", "Revoke a SCIM token"),
    op("get", "/v1/grants", "grants", "List grants: all for the admin, a person's own otherwise")
        .auth(Auth::AdminOrUser)
        .query(&[
            ("user", "a user id"),
            ("agent", "an agent id"),
            ("resource", "a resource identifier"),
            ("status", "active, expired or revoked"),
            ("expires_before", "RFC 3339"),
            ("used_before", "RFC 3339: last used before (or never)"),
            LIMIT,
            CURSOR,
        ])
        .ok(200, "Page"),
    op("post", "/v1/grants/{id}/revoke", "grants", "Revoke a grant and every token under it").auth(Auth::AdminOrUser),
    op(
        "post",
        "/v1/grants/{id}/reapprove",
        "grants",
        "Renew a grant ending within the review window: policy decides again; 202 when a person must approve",
    )
    .auth(Auth::AdminOrUser)
    .body("Object"),
    op("get", "/v1/approvals", "approvals", "List approvals the caller may decide").auth(Auth::AdminOrUser).query(&[
        ("status", "pending, approved, denied or expired"),
        ("limit", "at most this many"),
        ("before", "the page before this approval id"),
    ]),
    op("post", "/v1/approvals/{id}/{decision}", "approvals", "Approve or deny (decision) a request")
        .auth(Auth::AdminOrUser),
    op("get", "/v1/audit", "audit", "Query the audit trail").auth(Auth::AdminOrUser).query(&[
        ("actor", "the acting principal"),
        ("subject", "the subject"),
        ("jti", "a token id"),
        ("grant", "a grant id"),
        ("type", "an event type"),
        ("resource", "a resource identifier"),
        ("parent", "the token a token was exchanged from"),
        ("since", "RFC 3339; events at or after"),
        ("after", "events after this seq"),
        ("limit", "at most this many"),
    ]),
    op(
        "get",
        "/v1/inventory/report",
        "inventory",
        "Live grants, tokens and ephemeral agents per owner, resource or scope, their 24 h and 7 d peaks and churn (admin, auditors)",
    )
    .query(&[("by", "owner, resource or scope (required)"), ("limit", "keys per page (default 100, at most 1,000)"), CURSOR]),
    op(
        "get",
        "/v1/review",
        "review",
        "Access review findings about a page of agents and their grants: stale, over_broad, orphaned, sprawl, expiring, unused_delegation; {findings, agents_reviewed, next_cursor} (admin, auditors)",
    )
    .query(&[
        ("stale_days", "days without use before stale (default 30; 0 = now)"),
        ("unused_days", "days a scope or delegation may go unused (default 30)"),
        ("expiring_days", "days ahead an ending grant is expiring (default 7)"),
        ("limit", "agents per page, newest first (default 100, at most 1,000)"),
        CURSOR,
    ]),
    op(
        "get",
        "/v1/review/lapsed",
        "review",
        "Grants that expired without being revoked, as housekeeping reported them (admin, auditors)",
    )
    .query(&[("since", "RFC 3339: reported at or after"), LIMIT, CURSOR])
    .ok(200, "Page"),
    op(
        "post",
        "/v1/review/campaigns",
        "review",
        "Start a review campaign: {scope: {owner?, resource?}, deadline (RFC 3339), default: keep|revoke} (admin, auditors)",
    )
    .body("Object")
    .ok(201, "Object"),
    op("get", "/v1/review/campaigns", "review", "List review campaigns with their progress, newest first")
        .query(&[("status", "open or closed"), LIMIT, CURSOR])
        .ok(200, "Page"),
    op("get", "/v1/review/campaigns/{id}", "review", "One campaign and a page of its items {id, finding, assignee, decision}")
        .query(&[LIMIT, CURSOR]),
    op("get", "/v1/review/items", "review", "Review items: a person's own (assignee=me), any for the admin and auditors")
        .auth(Auth::AdminOrUser)
        .query(&[
            ("assignee", "me, or a user id"),
            ("campaign", "a campaign id"),
            ("status", "open (undecided items of open campaigns; the default) or all"),
            LIMIT,
            CURSOR,
        ])
        .ok(200, "Page"),
    op(
        "post",
        "/v1/review/items/{id}/decide",
        "review",
        "Decide an item: {decision: keep|narrow|revoke, scopes?}; applied at once with its cascade (assignee, admin, auditors)",
    )
    .auth(Auth::AdminOrUser)
    .body("Object"),
    op("get", "/v1/audit/verify", "audit", "Verify the chain and the checkpoints"),
    op("get", "/v1/audit/checkpoints", "audit", "The signed checkpoints"),
    op("get", "/v1/audit/keys", "audit", "The audit keys that sign checkpoints").auth(Auth::Public),
    op("get", "/v1/audit/trace/{id}", "audit", "The delegation tree of a token or grant").auth(Auth::AdminOrUser),
    op("post", "/v1/check", "decisions", "Decide one action of a token's holder")
        .auth(Auth::Checker)
        .body("CheckRequest"),
    op("post", "/access/v1/evaluation", "decisions", "AuthZEN evaluation").auth(Auth::Checker).body("Object"),
    op("get", "/openapi.json", "meta", "This document").auth(Auth::Public),
];

/// The admin API's routes; the document lists exactly these.
pub fn admin_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    use crate::{admin, audit, delegation, inventory, policies, review};
    use axum::extract::DefaultBodyLimit;
    use axum::routing::{delete, get, post, put};
    vec![
        ("/v1/users", post(admin::create_user).get(inventory::list_users)),
        ("/v1/users/{id}", get(admin::get_user).patch(admin::update_user)),
        ("/v1/users/{id}/tokens", post(admin::create_user_token).get(admin::list_user_tokens)),
        ("/v1/users/{id}/tokens/{token}/revoke", post(admin::revoke_user_token)),
        ("/v1/agents", post(admin::create_agent).get(inventory::list_agents)),
        ("/v1/agents/{id}", get(admin::get_agent).patch(admin::update_agent)),
        ("/v1/agents/{id}/inventory", get(inventory::agent_inventory)),
        ("/v1/agents/{id}/{op}", post(admin::agent_lifecycle)),
        ("/v1/resources", post(admin::create_resource).get(inventory::list_resources)),
        ("/v1/resources/{id}", get(admin::get_resource)),
        // Policy sets grow with the agents they govern: this one route takes
        // up to the policy text limit (plus JSON quoting).
        (
            "/v1/policies",
            put(policies::put_policies)
                .layer(DefaultBodyLimit::max(crate::MAX_POLICY_BODY))
                .get(policies::get_policies),
        ),
        // A candidate set plus its cases: the same limit.
        ("/v1/policies/test", post(policies::test_policies).layer(DefaultBodyLimit::max(crate::MAX_POLICY_BODY))),
        ("/v1/policies/versions", get(policies::list_versions)),
        ("/v1/policies/versions/{n}", get(policies::get_version)),
        ("/v1/policies/versions/{n}/diff", get(policies::diff_version)),
        ("/v1/policies/versions/{n}/restore", post(policies::restore_version)),
        ("/v1/keys/rotate", post(admin::rotate_keys)),
        ("/v1/scim-tokens", post(admin::create_scim_token).get(admin::list_scim_tokens)),
        ("/v1/scim-tokens/{id}", delete(admin::revoke_scim_token)),
        ("/v1/scim-tokens/{id}/revoke", post(admin::revoke_scim_token)),
        ("/v1/grants", get(inventory::list_grants)),
        ("/v1/grants/{id}/revoke", post(delegation::revoke_grant)),
        ("/v1/grants/{id}/reapprove", post(delegation::reapprove_grant)),
        ("/v1/approvals", get(delegation::list_approvals)),
        ("/v1/approvals/{id}/{decision}", post(delegation::decide_approval)),
        ("/v1/audit", get(audit::query)),
        ("/v1/audit/verify", get(audit::verify)),
        ("/v1/audit/checkpoints", get(audit::checkpoints)),
        ("/v1/audit/keys", get(audit::keys)),
        ("/v1/audit/trace/{id}", get(audit::trace)),
        ("/v1/inventory/report", get(inventory::report)),
        ("/v1/review", get(review::findings)),
        ("/v1/review/lapsed", get(review::lapsed)),
        ("/v1/review/campaigns", post(review::create_campaign).get(review::list_campaigns)),
        ("/v1/review/campaigns/{id}", get(review::get_campaign)),
        ("/v1/review/items", get(review::list_items)),
        ("/v1/review/items/{id}/decide", post(review::decide_item)),
    ]
}

/// Resource servers' decisions: authenticated, high volume by design.
pub fn check_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    use crate::delegation;
    use axum::routing::post;
    vec![("/v1/check", post(delegation::check)), ("/access/v1/evaluation", post(delegation::evaluation))]
}

/// `GET /openapi.json`: public, like the metadata documents.
pub async fn serve() -> Result<Response, Problem> {
    let doc = document().map_err(|e| Problem::from(mandate_core::Error::Unavailable(format!("openapi: {e}"))))?;
    Ok(Json(doc).into_response())
}

/// The document, through utoipa's typed model: a member the model does
/// not know, or one missing where OpenAPI requires it, fails here.
pub fn document() -> Result<Value, serde_json::Error> {
    let doc: utoipa::openapi::OpenApi = serde_json::from_value(raw_document())?;
    serde_json::to_value(&doc)
}

fn raw_document() -> Value {
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for o in OPERATIONS {
        paths.entry(o.path).or_default().insert(o.method.to_owned(), operation(o));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Mandate administration API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Identity and authorization for AI agents: users, agents, resources, policies, grants, approvals, the audit trail and decisions (DESIGN §7, §12). Errors are RFC 9457 problem JSON.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" }
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "The admin token, a person's API token, or (for decisions) a resource server's mandate:check access token" }
            },
            "schemas": schemas(),
            "responses": {
                "Problem": {
                    "description": "The request was refused and changed nothing",
                    "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
                }
            }
        }
    })
}

fn operation(o: &Operation) -> Value {
    let mut params: Vec<Value> = o
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    params.extend(
        o.query
            .iter()
            .map(|(name, d)| json!({"name": name, "in": "query", "required": false, "description": d, "schema": {"type": "string"}})),
    );
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let mut responses = Map::new();
    responses.insert(
        o.ok.0.to_string(),
        json!({"description": "Success", "content": {"application/json": {"schema": schema(o.ok.1)}}}),
    );
    let problem = json!({ "$ref": "#/components/responses/Problem" });
    let refusals: &[u16] = match o.auth {
        Auth::Public => &[400, 404],
        _ => &[400, 401, 403, 404, 409],
    };
    for code in refusals {
        responses.insert(code.to_string(), problem.clone());
    }
    let mut out = json!({
        "operationId": format!("{}{}", o.method, o.path.replace(['/', '{', '}', '.', '-'], "_")),
        "tags": [o.tag],
        "summary": o.summary,
        "parameters": params,
        "responses": responses,
    });
    if let Some(obj) = out.as_object_mut() {
        if o.auth != Auth::Public {
            obj.insert("security".into(), json!([{ "bearer": [] }]));
        }
        if let Some(body) = o.body {
            obj.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": schema(body)}}}),
            );
        }
    }
    out
}

fn schemas() -> Value {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    let string_map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let jwks = json!({"type": "object", "required": ["keys"], "properties": {"keys": {"type": "array", "items": {"type": "object"}}}});
    json!({
        "Object": { "type": "object" },
        "Page": {
            "type": "object", "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": {"type": "object"}},
                "next_cursor": {"type": ["string", "null"], "description": "null on the last page"}
            }
        },
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}, "request_id": {"type": "string"}
            }
        },
        "NewUser": {
            "type": "object", "additionalProperties": false, "required": ["name", "email"],
            "properties": {
                "name": {"type": "string"}, "email": {"type": "string", "format": "email"},
                "groups": strings, "attributes": string_map,
                "password": {"type": "string", "description": "stored as argon2id, for the web sign-in"}
            }
        },
        "UserPatch": {
            "type": "object", "additionalProperties": false,
            "properties": {
                "groups": strings, "attributes": string_map,
                "status": {"type": "string", "enum": ["active", "disabled"]},
                "links": {"type": "array", "items": {"type": "object", "required": ["issuer", "sub"],
                    "properties": {"issuer": {"type": "string"}, "sub": {"type": "string"}}}}
            }
        },
        "NewUserToken": { "type": "object", "additionalProperties": false, "properties": {"ttl_seconds": {"type": "integer"}} },
        "User": {
            "type": "object", "required": ["id", "name", "email", "status"],
            "properties": {
                "id": {"type": "string", "pattern": "^usr_"}, "name": {"type": "string"}, "email": {"type": "string"},
                "groups": strings, "attributes": string_map, "status": {"type": "string", "enum": ["active", "disabled"]},
                "created_at": {"type": "string", "format": "date-time"}
            }
        },
        "NewAgent": {
            "type": "object", "required": ["name", "owner"],
            "properties": {
                "name": {"type": "string"}, "owner": {"type": "string", "pattern": "^usr_"},
                "kind": {"type": "string", "enum": ["persistent", "ephemeral"]}, "parent": {"type": "string", "pattern": "^agt_"},
                "ttl_seconds": {"type": "integer"}, "scopes": strings, "jwks": jwks,
                "redirect_uris": strings, "description": {"type": "string"},
                "token_endpoint_auth_method": {"type": "string"},
                "federated_credentials": {"type": "array", "items": {"type": "object"}},
                "limits": {"$ref": "#/components/schemas/AgentLimits"},
                "backchannel_token_delivery_mode": {"type": "string", "enum": ["poll", "ping", "push"]},
                "backchannel_client_notification_endpoint": {"type": "string", "format": "uri"}
            }
        },
        "AgentPatch": {
            "type": "object", "additionalProperties": false,
            "properties": {
                "description": {"type": "string"}, "scopes": strings, "owner": {"type": "string", "pattern": "^usr_"},
                "federated_credentials": {"type": "array", "items": {"type": "object"}},
                "limits": {"$ref": "#/components/schemas/AgentLimits"},
                "backchannel_token_delivery_mode": {"type": "string", "enum": ["poll", "ping", "push"]},
                "backchannel_client_notification_endpoint": {"type": "string", "format": "uri"}
            }
        },
        "AgentLimits": {
            "type": "object", "description": "DESIGN §13: an agent may only tighten the server's defaults",
            "properties": {
                "max_token_ttl": {"type": "integer"}, "allowed_grant_types": strings,
                "max_delegation_depth": {"type": "integer"}, "allowed_resources": strings,
                "require_dpop": {"type": "boolean"}, "max_ephemeral_children": {"type": "integer"},
                "max_ephemeral_ttl": {"type": "integer"}, "allowed_client_auth": strings
            }
        },
        "LimitsInForce": {
            "type": "object", "description": "the server's defaults narrowed by the agent's ancestors' limits and its own; a null set allows any",
            "properties": {
                "max_token_ttl": {"type": "integer"}, "allowed_grant_types": {"type": ["array", "null"], "items": {"type": "string"}},
                "max_delegation_depth": {"type": "integer"}, "allowed_resources": {"type": ["array", "null"], "items": {"type": "string"}},
                "require_dpop": {"type": "boolean"}, "max_ephemeral_children": {"type": "integer"},
                "max_ephemeral_ttl": {"type": "integer"}, "allowed_client_auth": {"type": ["array", "null"], "items": {"type": "string"}}
            }
        },
        "Agent": {
            "type": "object", "required": ["id", "name", "owner", "kind", "status"],
            "properties": {
                "id": {"type": "string", "pattern": "^agt_"}, "client_id": {"type": "string"},
                "client_secret": {"type": "string", "description": "only when created without jwks (development only), shown once"},
                "name": {"type": "string"}, "owner": {"type": "string"}, "kind": {"type": "string", "enum": ["persistent", "ephemeral"]},
                "parent": {"type": ["string", "null"]}, "status": {"type": "string", "enum": ["active", "suspended", "retired"]},
                "expires_at": {"type": ["string", "null"], "format": "date-time"}, "scopes": {"type": ["array", "null"], "items": {"type": "string"}},
                "description": {"type": ["string", "null"]}, "origin": {"type": "string"},
                "limits": {"$ref": "#/components/schemas/AgentLimits"},
                "limits_in_force": {"$ref": "#/components/schemas/LimitsInForce"},
                "backchannel_token_delivery_mode": {"type": "string", "enum": ["poll", "ping", "push"]},
                "backchannel_client_notification_endpoint": {"type": "string", "format": "uri"}
            }
        },
        "NewResource": {
            "type": "object", "additionalProperties": false, "required": ["identifier", "name", "scopes"],
            "properties": {
                "identifier": {"type": "string", "format": "uri"}, "name": {"type": "string"},
                "scopes": {"type": "object", "additionalProperties": strings,
                    "description": "scope → the actions it covers; an empty list covers the action of its own name"},
                "jwks": jwks, "gateway": {"type": "string", "pattern": "^agt_"}, "exchange_to": strings,
                "context": {"type": "object"}, "authorization_details_types": {"type": "object"}
            }
        },
        "Resource": {
            "type": "object", "required": ["id", "identifier", "name", "scopes"],
            "properties": {
                "id": {"type": "string", "pattern": "^res_"}, "identifier": {"type": "string"}, "name": {"type": "string"},
                "scopes": {"type": "object", "additionalProperties": strings},
                "context": {"type": "object", "additionalProperties": {"type": "string", "enum": ["Long", "String", "Bool"]},
                    "description": "the context keys a check may send, and their Cedar types"},
                "authorization_details_types": {"type": "object",
                    "description": "RFC 9396 type → its JSON Schema (`schema`) and field bounds (`bounds`)"}
            }
        },
        "PolicySet": {
            "type": "object", "additionalProperties": false, "required": ["policies"],
            "properties": {
                "policies": {"type": "string", "description": "Cedar policy text"},
                "expected_version": {"type": "string", "description": "refuse (409) unless the stored set is this version"}
            }
        },
        "PolicyTest": {
            "type": "object", "required": ["policies"],
            "properties": {
                "policies": {"type": "string", "description": "the candidate set (Cedar text)"},
                "cases": {"type": "array", "items": {"type": "object", "required": ["principal", "action", "resource"],
                    "properties": {
                        "principal": {"type": "string"}, "chain": {"type": "array", "items": {"type": "string"}},
                        "action": {"type": "string"}, "resource": {"type": ["object", "string"]},
                        "context": {"type": "object"}, "expected": {"type": "string", "enum": ["allow", "deny"]}
                    }}},
                "replay": {"type": "object", "properties": {"since": {"type": "string"}, "limit": {"type": "integer"}}}
            }
        },
        "CheckRequest": {
            "type": "object", "required": ["token", "action", "resource"],
            "properties": {
                "token": {"type": "string"}, "action": {"type": "string"},
                "resource": {"type": "object", "required": ["type", "id"], "properties": {"type": {"type": "string"}, "id": {"type": "string"}}},
                "context": {"type": "object"}, "client_address": {"type": "string"},
                "authorization_details": {"type": ["object", "array"]}, "probe": {"type": "boolean"}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_every_reference_resolves() -> Result<(), serde_json::Error> {
        let doc = document()?;
        assert_eq!(doc["openapi"], "3.1.0");
        let text = doc.to_string();
        for (i, _) in text.match_indices("\"$ref\":\"#/components/") {
            let rest = &text[i + "\"$ref\":\"".len()..];
            let end = rest.find('"').unwrap_or(rest.len());
            let pointer = &rest[1..end]; // after the `#`
            assert!(doc.pointer(pointer).is_some(), "{pointer} does not resolve");
        }
        let ids: Vec<_> = OPERATIONS.iter().map(|o| (o.method, o.path)).collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(ids.len(), unique.len(), "an operation is listed twice");
        Ok(())
    }
}
