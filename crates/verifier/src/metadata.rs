//! OAuth 2.0 Protected Resource Metadata (RFC 9728): how a client finds
//! which authorization server issues tokens for this resource, and how to
//! present them.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::Verifier;

/// RFC 9728 §3: where the metadata is served, under the resource's base URL.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// RFC 9728 §2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedResourceMetadata {
    pub resource: String,
    pub authorization_servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    pub bearer_methods_supported: Vec<String>,
    pub dpop_signing_alg_values_supported: Vec<String>,
    pub dpop_bound_access_tokens_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
}

impl Verifier {
    /// This resource's metadata, from its configuration.
    pub fn metadata(&self) -> ProtectedResourceMetadata {
        let c = self.config();
        ProtectedResourceMetadata {
            resource: c.audience.clone(),
            authorization_servers: vec![c.issuer.clone()],
            scopes_supported: c.scopes_supported.clone(),
            bearer_methods_supported: vec!["header".into()],
            dpop_signing_alg_values_supported: vec!["EdDSA".into(), "ES256".into()],
            dpop_bound_access_tokens_required: c.require_dpop,
            resource_name: c.resource_name.clone(),
        }
    }

    /// The metadata's URL, as challenges name it (RFC 9728 §5.1).
    pub fn metadata_url(&self) -> String {
        format!("{}{METADATA_PATH}", self.config().public_base())
    }
}

/// A router serving the metadata at [`METADATA_PATH`]; merge it into the
/// application's router outside the authentication layer.
pub fn metadata_router(verifier: Verifier) -> Router {
    Router::new().route(METADATA_PATH, get(serve_metadata)).with_state(verifier)
}

async fn serve_metadata(State(verifier): State<Verifier>) -> Response {
    let mut resp = Json(verifier.metadata()).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    resp
}
