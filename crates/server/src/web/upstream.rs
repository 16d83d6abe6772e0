//! Sign-in with an upstream OpenID Connect provider (DESIGN §10): the
//! authorization code flow with PKCE, `state` and `nonce`, run by the
//! `openidconnect` crate over the SSRF-guarded fetcher (`mandate-fetch`),
//! which carries discovery, the JWKS and the token request alike.
//!
//! - `GET /login/oidc/{id}` seals `state`, `nonce`, the PKCE verifier and
//!   the page to return to into a short-lived cookie, and redirects to the
//!   provider.
//! - `GET /login/oidc/{id}/callback` checks `state` against the cookie,
//!   burns it in the replay store (a replayed response is refused), redeems
//!   the code and validates the ID token fully (signature from the
//!   provider's JWKS, `iss`, `aud`, `azp`, `exp`, `nonce`), then hands the
//!   identity to `Mandate::sign_in_upstream`, which finds or provisions the
//!   person. Every refusal is a page, and is audited.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use mandate_core::Error;
use mandate_core::federation::{ClientAuth, UpstreamIdentity, UpstreamIdp};
use mandate_fetch::{FetchError, FetchPolicy, Fetcher};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, HttpRequest, HttpResponse, IssuerUrl, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};

use super::{cookie, cookie_name, expired_cookie, known_cookie_name, session_cookie};
use crate::AppState;

/// How long a started sign-in may take at the provider.
const PENDING_TTL: i64 = 600;
/// How long a provider's discovery document and JWKS are reused.
const METADATA_TTL: Duration = Duration::from_secs(300);

fn pending_cookie_name(secure: bool) -> &'static str {
    if secure { "__Host-mandate_upstream" } else { "mandate_upstream" }
}

/// The providers' HTTP client and their cached metadata.
pub struct Upstreams {
    fetcher: Fetcher,
    metadata: tokio::sync::Mutex<HashMap<String, (Instant, CoreProviderMetadata)>>,
    /// The `private_key_jwt` keys, by provider id.
    keys: HashMap<String, mandate_jose::SigningKey>,
}

impl Upstreams {
    /// `dev_loopback`: providers on loopback http too (development only).
    /// Reads the `private_key_jwt` keys of `idps`.
    pub fn new(dev_loopback: bool, idps: &[UpstreamIdp]) -> Result<Self, String> {
        let policy = FetchPolicy {
            dev_loopback,
            accept: "application/json".into(),
            max_bytes: 256 * 1024,
            ..FetchPolicy::default()
        };
        let mut keys = HashMap::new();
        for idp in idps {
            if let Some(key) = idp.client_key().map_err(|e| format!("upstream_oidc {}: {e}", idp.id))? {
                keys.insert(idp.id.clone(), key);
            }
        }
        let fetcher = Fetcher::new(policy).map_err(|e| e.to_string())?;
        Ok(Self { fetcher, metadata: tokio::sync::Mutex::new(HashMap::new()), keys })
    }

    /// The RFC 7523 client assertion that authenticates Mandate to the
    /// token endpoint `aud` for `private_key_jwt`: `iss` = `sub` = the
    /// client id, one minute to live, a unique `jti`.
    fn client_assertion(&self, idp: &UpstreamIdp, aud: &str, now: i64) -> Result<String, String> {
        #[derive(Serialize)]
        struct Assertion<'a> {
            iss: &'a str,
            sub: &'a str,
            aud: &'a str,
            iat: i64,
            exp: i64,
            jti: String,
        }
        let key = self.keys.get(&idp.id).ok_or_else(|| "no client_key_file key is loaded".to_owned())?;
        let claims = Assertion {
            iss: &idp.client_id,
            sub: &idp.client_id,
            aud,
            iat: now,
            exp: now + 60,
            jti: CsrfToken::new_random().secret().clone(),
        };
        mandate_jose::jws::sign(key, "JWT", &claims).map_err(|e| format!("signing the client assertion: {e}"))
    }

    /// The `openidconnect` HTTP client: every request through the guarded
    /// fetcher.
    fn http(&self) -> impl Fn(HttpRequest) -> HttpFuture + use<> {
        let fetcher = self.fetcher.clone();
        move |request| {
            let fetcher = fetcher.clone();
            Box::pin(async move { fetcher.send(request).await })
        }
    }

    /// The provider's metadata (with its JWKS), fetched through the guarded
    /// fetcher and kept for [`METADATA_TTL`]; `fresh` fetches anew.
    async fn metadata(&self, idp: &UpstreamIdp, fresh: bool) -> Result<CoreProviderMetadata, String> {
        let mut cache = self.metadata.lock().await;
        if !fresh
            && let Some((at, m)) = cache.get(&idp.id)
            && at.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        let issuer = IssuerUrl::new(idp.issuer.clone()).map_err(|e| format!("the issuer is not a URL: {e}"))?;
        let http = self.http();
        let m = CoreProviderMetadata::discover_async(issuer, &http).await.map_err(|e| {
            tracing::warn!(idp = %idp.id, error = %e, detail = ?std::error::Error::source(&e), "upstream discovery failed");
            format!("the identity provider could not be reached ({e})")
        })?;
        cache.insert(idp.id.clone(), (Instant::now(), m.clone()));
        Ok(m)
    }
}

type HttpFuture = std::pin::Pin<Box<dyn Future<Output = Result<HttpResponse, FetchError>> + Send>>;

/// What the browser carries, sealed, between the redirect and the callback.
#[derive(Serialize, Deserialize)]
struct Pending {
    idp: String,
    state: String,
    nonce: String,
    verifier: String,
    next: String,
    /// Unix seconds.
    exp: i64,
}

fn idp<'a>(s: &'a AppState, id: &str) -> Option<&'a UpstreamIdp> {
    s.mandate.config().upstream_oidc.iter().find(|i| i.id == id)
}

fn redirect_uri(s: &AppState, idp: &UpstreamIdp) -> String {
    format!("{}/login/oidc/{}/callback", s.mandate.config().issuer, idp.id)
}

fn client(s: &AppState, idp: &UpstreamIdp, metadata: CoreProviderMetadata) -> Result<OidcClient, String> {
    let redirect = RedirectUrl::new(redirect_uri(s, idp)).map_err(|e| e.to_string())?;
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(idp.client_id.clone()),
        // private_key_jwt: never a secret beside the assertion.
        idp.client_secret.clone().filter(|_| idp.client_auth != ClientAuth::PrivateKeyJwt).map(ClientSecret::new),
    )
    .set_redirect_uri(redirect)
    .set_auth_type(match idp.client_auth {
        // private_key_jwt: no secret, the client_id in the body beside the
        // assertion (RFC 7523 §3.1 allows it).
        ClientAuth::ClientSecretPost | ClientAuth::PrivateKeyJwt => AuthType::RequestBody,
        ClientAuth::ClientSecretBasic => AuthType::BasicAuth,
    });
    Ok(client)
}

type OidcClient = openidconnect::core::CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

fn refusal(status: StatusCode, text: String) -> Response {
    super::views::html(status, &super::views::ErrorPage { title: "Sign-in refused", who: None, text })
}

fn refused(e: &Error) -> Response {
    match e {
        Error::Forbidden(why) => refusal(StatusCode::FORBIDDEN, format!("{why}.")),
        other => super::pages::error_page(other),
    }
}

/// `GET /login/oidc/{id}`: off to the provider.
pub async fn start(State(s): State<AppState>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let Some(idp) = idp(&s, &id) else {
        return super::pages::error_page(&Error::NotFound(format!("identity provider {id}")));
    };
    let Some(upstreams) = s.upstreams.clone() else {
        return super::pages::error_page(&Error::NotFound(format!("identity provider {id}")));
    };
    let q = super::pages::query(raw.as_deref());
    let next = super::pages::local_next(q.iter().find(|(k, _)| k == "next").map(|(_, v)| v.as_str()));
    let metadata = match upstreams.metadata(idp, false).await {
        Ok(m) => m,
        Err(why) => return refused(&s.mandate.refuse_upstream(&idp.id, &why).await),
    };
    let client = match client(&s, idp, metadata) {
        Ok(c) => c,
        Err(why) => return refused(&s.mandate.refuse_upstream(&idp.id, &why).await),
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request =
        client.authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random);
    for scope in idp.scopes.iter().filter(|s| *s != "openid") {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
    let pending = Pending {
        idp: idp.id.clone(),
        state: state.secret().clone(),
        nonce: nonce.secret().clone(),
        verifier: verifier.secret().clone(),
        next,
        exp: s.mandate.now().unix_timestamp() + PENDING_TTL,
    };
    let sealed = match serde_json::to_vec(&pending)
        .map_err(|e| Error::Unavailable(e.to_string()))
        .and_then(|p| s.mandate.seal_pending(&p))
    {
        Ok(c) => c,
        Err(e) => return super::pages::error_page(&e),
    };
    let secure = super::https(&s);
    let jar = CookieJar::new().add(session_cookie(pending_cookie_name(secure), sealed, PENDING_TTL, secure));
    (jar, Redirect::to(url.as_str())).into_response()
}

/// `GET /login/oidc/{id}/callback`: the provider sent the browser back.
pub async fn callback(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let secure = super::https(&s);
    let clear = CookieJar::new().add(expired_cookie(pending_cookie_name(secure), secure));
    let outcome = finish(&s, &id, &headers, raw.as_deref()).await;
    match outcome {
        Ok((signed_in, next)) => {
            let ttl = (signed_in.session.expires_at - s.mandate.now()).whole_seconds();
            let jar =
                clear.add(session_cookie(cookie_name(secure), signed_in.secret, ttl, secure)).add(session_cookie(
                    known_cookie_name(secure),
                    signed_in.known_browser,
                    mandate_core::session::KNOWN_BROWSER_TTL,
                    secure,
                ));
            (jar, Redirect::to(&next)).into_response()
        }
        Err(e) => (clear, refused(&e)).into_response(),
    }
}

async fn finish(
    s: &AppState,
    id: &str,
    headers: &HeaderMap,
    raw: Option<&str>,
) -> Result<(mandate_core::session::SignedIn, String), Error> {
    let idp = idp(s, id).ok_or_else(|| Error::NotFound(format!("identity provider {id}")))?;
    let upstreams = s.upstreams.clone().ok_or_else(|| Error::NotFound(format!("identity provider {id}")))?;
    let refuse = |why: &str| {
        let why = why.to_owned();
        async move { s.mandate.refuse_upstream(&idp.id, &why).await }
    };
    let q = super::pages::query(raw);
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let secure = super::https(s);
    let pending: Option<Pending> = cookie(headers, pending_cookie_name(secure))
        .and_then(|c| s.mandate.open_pending(c))
        .and_then(|p| serde_json::from_slice(&p).ok());
    let Some(pending) = pending.filter(|p| p.idp == idp.id && p.exp > s.mandate.now().unix_timestamp()) else {
        return Err(refuse("the sign-in expired or was started in another browser; please start again").await);
    };
    let state = param("state").unwrap_or_default();
    if !mandate_jose::ct_eq(state.as_bytes(), pending.state.as_bytes()) {
        return Err(refuse("the response does not belong to this sign-in (state mismatch)").await);
    }
    let until =
        time::OffsetDateTime::from_unix_timestamp(pending.exp).map_err(|e| Error::Unavailable(e.to_string()))?;
    if !s.mandate.burn_upstream_state(state, until).await? {
        return Err(refuse("this sign-in response was used already (replayed state)").await);
    }
    if let Some(error) = param("error") {
        let why = format!("the identity provider refused the sign-in: {error}");
        return Err(refuse(&why.chars().take(200).collect::<String>()).await);
    }
    let Some(code) = param("code") else { return Err(refuse("the identity provider sent no code").await) };
    // RFC 9207: a provider that names itself must name the one we asked.
    if let Some(iss) = param("iss")
        && iss != idp.issuer
    {
        return Err(refuse("the response names another issuer (iss mismatch)").await);
    }
    let metadata = match upstreams.metadata(idp, false).await {
        Ok(m) => m,
        Err(why) => return Err(refuse(&why).await),
    };
    let token_endpoint = metadata.token_endpoint().map(|u| u.url().to_string());
    let client = match client(s, idp, metadata) {
        Ok(c) => c,
        Err(why) => return Err(refuse(&why).await),
    };
    let http = upstreams.http();
    let request = match client.exchange_code(AuthorizationCode::new(code.to_owned())) {
        Ok(r) => r,
        Err(e) => return Err(refuse(&format!("the identity provider has no token endpoint ({e})")).await),
    };
    let mut request = request.set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()));
    if idp.client_auth == ClientAuth::PrivateKeyJwt {
        let Some(aud) = token_endpoint else {
            return Err(refuse("the identity provider has no token endpoint").await);
        };
        let assertion = match upstreams.client_assertion(idp, &aud, s.mandate.now().unix_timestamp()) {
            Ok(a) => a,
            Err(why) => return Err(refuse(&why).await),
        };
        request = request
            .add_extra_param("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            .add_extra_param("client_assertion", assertion);
    }
    let tokens = match request.request_async(&http).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(idp = %idp.id, error = %e, "upstream code redemption failed");
            return Err(refuse(&format!("the code could not be redeemed at the identity provider ({e})")).await);
        }
    };
    let Some(id_token) = tokens.id_token() else {
        return Err(refuse("the identity provider sent no ID token").await);
    };
    // Signature (the provider's JWKS), iss, aud, azp, exp and nonce.
    if let Err(e) = id_token.claims(&client.id_token_verifier(), &Nonce::new(pending.nonce.clone())) {
        return Err(refuse(&format!("the ID token is not valid ({e})")).await);
    }
    // The raw claims of the token just verified, for the configured claim
    // names (the email, the groups, the mapped attributes).
    let claims = raw_claims(&id_token.to_string()).ok_or_else(|| Error::Unavailable("unreadable ID token".into()))?;
    let who = identity(idp, &claims);
    let signed_in = s.mandate.sign_in_upstream(idp, who).await?;
    Ok((signed_in, pending.next))
}

fn raw_claims(jwt: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The identity in the claims, by the provider's claim mapping.
fn identity(idp: &UpstreamIdp, claims: &serde_json::Map<String, serde_json::Value>) -> UpstreamIdentity {
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let groups = idp.groups_claim.as_ref().map(|g| match claims.get(g) {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    });
    let attributes = idp.attributes.iter().filter_map(|(claim, attr)| text(claim).map(|v| (attr.clone(), v))).collect();
    UpstreamIdentity {
        issuer: text("iss").unwrap_or_default(),
        subject: text("sub").unwrap_or_default(),
        email: text(&idp.email_claim),
        // OpenID Connect Core §5.1: a boolean (some providers send a
        // string), and only about `email`; another claim is verified only
        // on the operator's word (checked at start-up).
        email_verified: if idp.email_claim == "email" {
            matches!(claims.get("email_verified"), Some(serde_json::Value::Bool(true)))
                || text("email_verified").as_deref() == Some("true")
        } else {
            idp.email_claim_verified
        },
        name: text("name"),
        groups,
        attributes,
    }
}

/// For the sign-in page: each provider's route and button text.
pub fn buttons(s: &AppState, next: &str) -> Vec<(String, String)> {
    s.mandate
        .config()
        .upstream_oidc
        .iter()
        .map(|i| {
            (
                format!("/login/oidc/{}?next={}", i.id, super::html::url_encode(next)),
                format!("Sign in with {}", i.display_name),
            )
        })
        .collect()
}

pub type Shared = Arc<Upstreams>;
