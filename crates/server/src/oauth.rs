//! OAuth endpoints: discovery (RFC 8414), JWKS, token, introspection
//! (RFC 7662) and revocation (RFC 7009).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use mandate_core::{Caller, Endpoint, Error, TokenCaller};
use serde::Serialize;

use crate::AppState;
use crate::error::OAuthError;
use crate::extract::{OAuthForm, bearer, client_credentials};
use crate::grant;

const SIGNING_ALGS: &[&str] = &["EdDSA", "Ed25519", "ES256"];

/// RFC 8414 server metadata, with what MCP clients read (MCP
/// basic/authorization): PKCE S256, the `iss` response parameter, the
/// scopes offered, and the client authentication methods with their
/// algorithms. Mandate issues no ID tokens, so it serves no OpenID
/// configuration document.
#[derive(Serialize)]
struct Metadata<'a> {
    issuer: &'a str,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    introspection_endpoint: String,
    revocation_endpoint: String,
    backchannel_authentication_endpoint: String,
    scopes_supported: Vec<String>,
    /// RFC 9396 §10: the detail types the registered resources declare.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    authorization_details_types_supported: Vec<String>,
    grant_types_supported: Vec<&'static str>,
    backchannel_token_delivery_modes_supported: Vec<&'static str>,
    backchannel_user_code_parameter_supported: bool,
    response_types_supported: [&'static str; 1],
    response_modes_supported: [&'static str; 1],
    code_challenge_methods_supported: [&'static str; 1],
    authorization_response_iss_parameter_supported: bool,
    token_endpoint_auth_methods_supported: &'a [&'static str],
    token_endpoint_auth_signing_alg_values_supported: &'a [&'static str],
    introspection_endpoint_auth_methods_supported: &'a [&'static str],
    introspection_endpoint_auth_signing_alg_values_supported: &'static [&'static str],
    revocation_endpoint_auth_methods_supported: &'a [&'static str],
    revocation_endpoint_auth_signing_alg_values_supported: &'static [&'static str],
    dpop_signing_alg_values_supported: &'static [&'static str],
    #[serde(skip_serializing_if = "Option::is_none")]
    service_documentation: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registration_endpoint: Option<String>,
    client_id_metadata_document_supported: bool,
    /// draft-ietf-oauth-identity-assertion-authz-grant §5.1, when an issuer
    /// is trusted for ID-JAGs.
    #[serde(skip_serializing_if = "Option::is_none")]
    authorization_grant_profiles_supported: Option<[&'static str; 1]>,
}

pub async fn metadata(State(state): State<AppState>) -> Result<Response, OAuthError> {
    let c = state.mandate.config();
    let iss = c.issuer.as_str();
    let mut methods = vec!["private_key_jwt"];
    if c.allow_client_secrets {
        methods.push("client_secret_basic");
    }
    // Public clients name themselves at the token and revocation endpoints.
    let mut public = methods.clone();
    public.push("none");
    use mandate_core::trust::IssuerUse;
    let workload = state.mandate.trusts_issuers_for(IssuerUse::Workload);
    let id_jag = state.mandate.trusts_issuers_for(IssuerUse::IdJag);
    // The jwt-bearer grant is served only when some issuer is trusted.
    let grant_types = mandate_core::GrantType::ALL
        .into_iter()
        .filter(|g| *g != mandate_core::GrantType::JwtBearer || workload || id_jag)
        .map(|g| g.as_str())
        .collect();
    // Workload JWTs are client assertions too, and often RS256.
    let mut assertion_algs = SIGNING_ALGS.to_vec();
    if workload {
        assertion_algs.push("RS256");
    }
    let body = Metadata {
        issuer: iss,
        authorization_endpoint: format!("{iss}/oauth/authorize"),
        token_endpoint: format!("{iss}/oauth/token"),
        jwks_uri: format!("{iss}/jwks.json"),
        introspection_endpoint: format!("{iss}/oauth/introspect"),
        revocation_endpoint: format!("{iss}/oauth/revoke"),
        backchannel_authentication_endpoint: format!("{iss}/oauth/bc-authorize"),
        scopes_supported: state.mandate.scopes_supported().await?.into_iter().collect(),
        authorization_details_types_supported: state
            .mandate
            .authorization_details_types_supported()
            .await?
            .into_iter()
            .collect(),
        grant_types_supported: grant_types,
        backchannel_token_delivery_modes_supported: state.mandate.delivery_modes(),
        backchannel_user_code_parameter_supported: false,
        response_types_supported: ["code"],
        response_modes_supported: ["query"],
        code_challenge_methods_supported: ["S256"],
        authorization_response_iss_parameter_supported: true,
        token_endpoint_auth_methods_supported: &public,
        token_endpoint_auth_signing_alg_values_supported: &assertion_algs,
        introspection_endpoint_auth_methods_supported: &methods,
        introspection_endpoint_auth_signing_alg_values_supported: SIGNING_ALGS,
        revocation_endpoint_auth_methods_supported: &public,
        revocation_endpoint_auth_signing_alg_values_supported: SIGNING_ALGS,
        dpop_signing_alg_values_supported: mandate_jose::dpop::DPOP_ALGS,
        service_documentation: c.service_documentation.as_deref(),
        registration_endpoint: state.mandate.dynamic_registration_enabled().then(|| format!("{iss}/oauth/register")),
        client_id_metadata_document_supported: state.mandate.metadata_documents_supported(),
        authorization_grant_profiles_supported: id_jag.then_some([mandate_jose::federated::ID_JAG_PROFILE]),
    };
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    Ok(resp)
}

pub async fn jwks(State(state): State<AppState>) -> Response {
    let mut resp = Json(state.mandate.jwks()).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    resp
}

fn no_store(body: impl Serialize) -> Response {
    let mut resp = Json(body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// RFC 6749 §5.1, with RFC 8693 §2.2.1's `issued_token_type`.
#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_token_type: Option<&'static str>,
    /// RFC 9396 §7.
    #[serde(skip_serializing_if = "Option::is_none")]
    authorization_details: Option<mandate_model::details::AuthorizationDetails>,
}

/// OpenID CIBA §7.3.
#[derive(Serialize)]
struct BcAuthorizeResponse {
    auth_req_id: String,
    expires_in: i64,
    interval: i64,
}

pub async fn token(State(state): State<AppState>, headers: HeaderMap, form: OAuthForm) -> Result<Response, OAuthError> {
    let credentials = client_credentials(&headers, &form)?;
    let grant_type =
        form.get("grant_type").ok_or_else(|| OAuthError(Error::InvalidRequest("grant_type is required".into())))?;
    let request = grant::token_request(&form, grant_type, dpop_header(&headers));
    let label = match &request.grant {
        Ok(g) => g.grant_type().label(),
        Err(_) => "refused",
    };
    let issued = state.mandate.token(&credentials, request).await?;
    metrics::counter!("mandate_tokens_issued_total", "grant_type" => label).increment(1);
    let mut resp = no_store(TokenResponse {
        access_token: issued.access_token,
        token_type: issued.token_type,
        expires_in: issued.expires_in,
        scope: issued.scope,
        refresh_token: issued.refresh_token,
        issued_token_type: issued.issued_token_type,
        authorization_details: issued.authorization_details,
    });
    if let Some(nonce) = state.mandate.dpop_nonce().and_then(|n| HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert("dpop-nonce", nonce);
    }
    Ok(resp)
}

/// `POST /oauth/register` (RFC 7591), routed only when it is on.
pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, OAuthError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(OAuthError(Error::InvalidClientMetadata("send the client metadata as application/json".into())));
    }
    let registered = state.mandate.register_client(&body).await?;
    let mut resp = no_store(registered);
    *resp.status_mut() = axum::http::StatusCode::CREATED;
    Ok(resp)
}

/// Every `DPoP` header of a request; the use case refuses (and records)
/// anything but at most one (RFC 9449 §4.3).
fn dpop_header(headers: &HeaderMap) -> Vec<String> {
    headers.get_all("dpop").iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
}

/// `GET /statuslists/{n}`: a signed Token Status List.
pub async fn status_list(
    State(state): State<AppState>,
    axum::extract::Path(n): axum::extract::Path<String>,
) -> Result<Response, crate::error::Problem> {
    let not_found = || {
        crate::error::Problem::new(axum::http::StatusCode::NOT_FOUND, "not-found", "Not found", "no such status list")
    };
    let n: u64 = n.parse().map_err(|_| not_found())?;
    let list = state.mandate.status_list(n).await?.ok_or_else(not_found)?;
    let mut resp = list.token.clone().into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mandate_jose::statuslist::STATUSLIST_MEDIA_TYPE));
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}", list.ttl)) {
        h.insert(header::CACHE_CONTROL, v);
    }
    Ok(resp)
}

/// `POST /oauth/bc-authorize` (OpenID CIBA, poll mode).
pub async fn bc_authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: OAuthForm,
) -> Result<Response, OAuthError> {
    let credentials = client_credentials(&headers, &form)?;
    let answer = state.mandate.bc_authorize(&credentials, grant::bc_authorize_request(&form)).await?;
    Ok(no_store(BcAuthorizeResponse {
        auth_req_id: answer.auth_req_id,
        expires_in: answer.expires_in,
        interval: answer.interval,
    }))
}

/// The admin token, or a client authenticated like at the token endpoint.
async fn token_caller(
    state: &AppState,
    headers: &HeaderMap,
    form: &OAuthForm,
    at: Endpoint,
) -> Result<TokenCaller, OAuthError> {
    if let Some(b) = bearer(headers) {
        return match state.mandate.authenticate_caller(b).await {
            Ok(Caller::Admin) => Ok(TokenCaller::Admin),
            Ok(Caller::User(_) | Caller::ConsoleAdmin(_)) | Err(Error::Unauthenticated) => {
                let e = Error::InvalidClient("not a client".into());
                state
                    .mandate
                    .record_admin_refusal(mandate_core::audit::kind::CLIENT_AUTH_FAILED, None, &e.to_string())
                    .await?;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        };
    }
    let credentials = client_credentials(headers, form)?;
    Ok(TokenCaller::Client(Box::new(state.mandate.authenticate(&credentials, at).await?)))
}

pub async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: OAuthForm,
) -> Result<Response, OAuthError> {
    let caller = token_caller(&state, &headers, &form, Endpoint::Introspect).await?;
    let token = form.get("token").ok_or_else(|| OAuthError(Error::InvalidRequest("token is required".into())))?;
    let answer = state.mandate.introspect(&caller, token).await?;
    Ok(no_store(answer))
}

pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: OAuthForm,
) -> Result<Response, OAuthError> {
    let caller = token_caller(&state, &headers, &form, Endpoint::Revoke).await?;
    let token = form.get("token").ok_or_else(|| OAuthError(Error::InvalidRequest("token is required".into())))?;
    // RFC 7009 §2.1: the hint orders the search and is never trusted.
    let hint = form.get("token_type_hint");
    if state.mandate.revoke(&caller, token, hint).await? {
        metrics::counter!("mandate_tokens_revoked_total").increment(1);
    }
    // RFC 7009 §2.2: an empty body would do; an empty object is what
    // clients parse.
    Ok(no_store(serde_json::Map::new()))
}
