//! The verifier: one per resource server, shared by every request.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::OriginalUri;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use axum::response::Response;
use mandate_jose::dpop::{self, ProofRules};
use mandate_jose::{JoseError, JwkSet, ct_eq};
use mandate_model::claims::AccessTokenClaims;
use reqwest::Client;

use crate::check::CheckClient;
use crate::error::{Challenges, respond};
use crate::keys::KeyCache;
use crate::replay::{Refused, ReplayCache};
use crate::ssf::SetError;
use crate::ssf::memory::{Expiring, Full};
use crate::status::StatusCache;
use crate::{
    Authenticated, CheckAnswer, CheckResource, ExchangeError, ExchangedToken, MandateAuthLayer, Scheme, VerifierConfig,
    VerifyError,
};

/// RFC 9449 §4.1: the request header carrying the proof.
pub const DPOP_HEADER: HeaderName = HeaderName::from_static("dpop");

/// Verifies Mandate access tokens for one resource server. Cheap to clone:
/// clones share keys, caches and the replay memory.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    config: VerifierConfig,
    http: Client,
    /// Shared with the verifiers made by [`Verifier::for_audience`]: they
    /// trust the same issuer, so one key set, one set of status lists, one
    /// replay memory and one `mandate:check` token serve them all.
    keys: Arc<KeyCache>,
    status: Arc<StatusCache>,
    replay: Arc<Mutex<ReplayCache>>,
    /// Token `jti`s revoked by Shared Signals events (crate::ssf).
    revoked: Arc<Mutex<Expiring<()>>>,
    check: Option<Arc<CheckClient>>,
    challenges: Challenges,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier that fetches the issuer's keys from its JWKS (by default
    /// `{issuer}/jwks.json`) on first use. Without the `rustls` feature only
    /// `http://` URLs can be fetched.
    pub fn new(config: VerifierConfig) -> Result<Self, VerifyError> {
        let keys = KeyCache::remote(&config.issuer, config.leeway, Some(config.jwks_url()));
        Self::build(config, keys)
    }

    /// A verifier with a fixed key set that never fetches keys (tests,
    /// examples, and deployments that pin the issuer's keys).
    pub fn with_static_keys(config: VerifierConfig, keys: JwkSet) -> Result<Self, VerifyError> {
        let keys = KeyCache::fixed(&config.issuer, config.leeway, keys);
        Self::build(config, keys)
    }

    fn build(config: VerifierConfig, keys: KeyCache) -> Result<Self, VerifyError> {
        for (name, url) in [("issuer", &config.issuer), ("public_url", &config.public_url)] {
            if dpop::normalize_htu(url).is_none() {
                return Err(VerifyError::Config(format!("{name} must be an absolute http(s) URL")));
            }
        }
        if config.audience.is_empty() {
            return Err(VerifyError::Config("audience must be this resource's identifier".into()));
        }
        if config.leeway < 0 || config.dpop_max_age <= 0 {
            return Err(VerifyError::Config("leeway must not be negative, dpop_max_age must be positive".into()));
        }
        if config.revocation_retention <= 0 || config.max_revocations == 0 {
            return Err(VerifyError::Config("revocation_retention and max_revocations must be positive".into()));
        }
        let http = crate::fetch::client().map_err(|e| VerifyError::Config(e.to_string()))?;
        let status = Arc::new(StatusCache::new(config.issuer_base(), config.max_status_ttl));
        let check =
            config.remote_check.clone().map(|r| Arc::new(CheckClient::new(r, &config.issuer, config.issuer_base())));
        let challenges = challenges(&config);
        let replay = Arc::new(Mutex::new(ReplayCache::new(config.replay_capacity)));
        let revoked = Arc::new(Mutex::new(Expiring::new(config.max_revocations)));
        let keys = Arc::new(keys);
        Ok(Self { inner: Arc::new(Inner { config, http, keys, status, replay, revoked, check, challenges }) })
    }

    /// A verifier for another resource of the same issuer: tokens must carry
    /// `audience`, and the metadata advertises `scopes_supported`. It shares
    /// this verifier's HTTP connections, the issuer's keys, the status lists,
    /// the DPoP replay memory and the check credentials (with their cached
    /// `mandate:check` token), so a gateway in front of many resources
    /// fetches each of those once. It also shares the memory of tokens
    /// revoked by Shared Signals events.
    pub fn for_audience(
        &self,
        audience: impl Into<String>,
        scopes_supported: Vec<String>,
    ) -> Result<Self, VerifyError> {
        let i = &self.inner;
        let mut config = i.config.clone();
        config.audience = audience.into();
        config.scopes_supported = scopes_supported;
        config.resource_name = None;
        if config.audience.is_empty() {
            return Err(VerifyError::Config("audience must be this resource's identifier".into()));
        }
        let challenges = challenges(&config);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                http: i.http.clone(),
                keys: i.keys.clone(),
                status: i.status.clone(),
                replay: i.replay.clone(),
                revoked: i.revoked.clone(),
                check: i.check.clone(),
                challenges,
            }),
        })
    }

    pub fn config(&self) -> &VerifierConfig {
        &self.inner.config
    }

    /// A tower layer that authenticates every request with this verifier.
    pub fn layer(&self) -> MandateAuthLayer {
        MandateAuthLayer::new(self.clone())
    }

    pub(crate) fn now(&self) -> i64 {
        self.inner.config.clock.now()
    }

    pub(crate) fn http(&self) -> &Client {
        &self.inner.http
    }

    pub(crate) fn check_client(&self) -> Option<&CheckClient> {
        self.inner.check.as_deref()
    }

    /// The issuer's keys for verifying a SET signed with `kid`, RSA keys
    /// included, fetched again (within the refetch limit) when `kid` is
    /// not among the cached ones.
    pub(crate) async fn set_keys(&self, now: i64, kid: &str) -> Result<JwkSet, SetError> {
        let i = &self.inner;
        let unavailable = |_| SetError::Unavailable("the issuer's keys could not be fetched");
        let keys = i.keys.get(&i.http, now).await.map_err(unavailable)?;
        if keys.with_rsa().has_kid(kid) {
            return Ok(keys.with_rsa().clone());
        }
        match i.keys.after_unknown_kid(&i.http, now, &keys).await {
            Some(newer) => Ok(newer.with_rsa().clone()),
            None => Ok(keys.with_rsa().clone()),
        }
    }

    fn revoked(&self) -> MutexGuard<'_, Expiring<()>> {
        self.inner.revoked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses tokens with `jti` from now until `until`.
    pub(crate) fn revoke_jti(&self, jti: &str, until: i64, now: i64) -> Result<(), Full> {
        self.revoked().insert(jti, until, (), now)
    }

    /// Whether a Shared Signals event revoked the token with this `jti`.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked().get(jti, self.now()).is_some()
    }

    /// Refuses a token a Shared Signals event revoked, and keeps its `jti`
    /// remembered until the token expires.
    fn check_revoked(&self, claims: &AccessTokenClaims, now: i64) -> Result<(), VerifyError> {
        let mut revoked = self.revoked();
        if revoked.get(&claims.jti, now).is_none() {
            return Ok(());
        }
        revoked.extend(&claims.jti, claims.exp);
        Err(VerifyError::InvalidToken("token revoked".into()))
    }

    /// Verifies an access token: signature by one of the issuer's keys,
    /// `typ`, `iss`, `aud` (this resource), lifetime and, when configured,
    /// its status list. Says nothing about how it was presented; use
    /// [`Verifier::authenticate`] for requests.
    pub async fn verify(&self, token: &str) -> Result<AccessTokenClaims, VerifyError> {
        let now = self.now();
        let claims = self.verify_signed(token, now).await?;
        self.check_revoked(&claims, now)?;
        self.check_status(&claims, now).await?;
        Ok(claims)
    }

    async fn verify_signed(&self, token: &str, now: i64) -> Result<AccessTokenClaims, VerifyError> {
        let i = &self.inner;
        let keys = i.keys.get(&i.http, now).await?;
        match keys.verify_access(token, now, &i.config.audience) {
            Err(JoseError::UnknownKey) => match i.keys.after_unknown_kid(&i.http, now, &keys).await {
                Some(newer) => Ok(newer.verify_access(token, now, &i.config.audience)?),
                None => Err(JoseError::UnknownKey.into()),
            },
            other => Ok(other?),
        }
    }

    async fn check_status(&self, claims: &AccessTokenClaims, now: i64) -> Result<(), VerifyError> {
        let i = &self.inner;
        match &claims.status {
            Some(s) if i.config.check_status => i.status.check(&s.status_list, &i.http, &i.keys, now).await,
            _ => Ok(()),
        }
    }

    /// Authenticates a request: exactly one `Authorization` header with a
    /// `Bearer` or `DPoP` token, at most one `DPoP` proof; the token
    /// verified; a DPoP-bound token (`cnf.jkt`) only with the DPoP scheme
    /// and a fresh, unreplayed proof by the bound key for this method, URL
    /// and token (RFC 9449 §7); an unbound token only with `Bearer`, and
    /// only when DPoP is not required.
    pub async fn authenticate(&self, parts: &Parts) -> Result<Authenticated, VerifyError> {
        let i = &self.inner;
        let now = self.now();
        let (scheme, token) = credentials(&parts.headers)?;
        let mut proofs = parts.headers.get_all(DPOP_HEADER).into_iter();
        let proof = proofs.next();
        if proofs.next().is_some() {
            return Err(VerifyError::InvalidProof("send at most one DPoP header"));
        }
        if scheme == Scheme::Bearer && i.config.require_dpop {
            return Err(VerifyError::InvalidToken("this resource accepts DPoP-bound tokens only".into()));
        }
        let claims = self.verify_signed(token, now).await?;
        self.check_revoked(&claims, now)?;
        let dpop_jkt = match (scheme, &claims.cnf) {
            (Scheme::Bearer, None) => None,
            (Scheme::Bearer, Some(_)) => {
                return Err(VerifyError::InvalidToken("a DPoP-bound token must be sent with the DPoP scheme".into()));
            }
            (Scheme::Dpop, None) => {
                return Err(VerifyError::InvalidToken("the token is not DPoP-bound; send it as Bearer".into()));
            }
            (Scheme::Dpop, Some(cnf)) => {
                let proof = proof.ok_or(VerifyError::InvalidProof("missing DPoP header"))?;
                let proof = proof.to_str().map_err(|_| VerifyError::InvalidProof("the DPoP header is not ASCII"))?;
                let path = parts.extensions.get::<OriginalUri>().map_or(&parts.uri, |o| &o.0).path();
                let htu = format!("{}{path}", i.config.public_base());
                let rules = ProofRules {
                    htm: parts.method.as_str(),
                    htu: &htu,
                    now,
                    max_age: i.config.dpop_max_age,
                    max_skew: i.config.leeway,
                    access_token: Some(token),
                };
                let verified = dpop::verify_proof(proof, &rules)?;
                if !ct_eq(verified.jkt.as_bytes(), cnf.jkt.as_bytes()) {
                    return Err(VerifyError::InvalidProof("the proof is not signed by the token's key"));
                }
                let expires = verified.iat.saturating_add(i.config.dpop_max_age).saturating_add(i.config.leeway);
                let remembered =
                    i.replay.lock().unwrap_or_else(PoisonError::into_inner).insert(&verified.replay_key, expires, now);
                match remembered {
                    Ok(()) => {}
                    Err(Refused::Replayed) => return Err(VerifyError::InvalidProof("the proof was already used")),
                    Err(Refused::Full) => {
                        tracing::warn!("the DPoP replay memory is full; refusing proofs until entries expire");
                        return Err(VerifyError::Unavailable("too many recent DPoP proofs"));
                    }
                }
                Some(verified.jkt)
            }
        };
        self.check_status(&claims, now).await?;
        Ok(Authenticated { claims, token: token.to_owned(), dpop_jkt })
    }

    /// Whether [`Verifier::check`] is configured.
    pub fn has_remote_check(&self) -> bool {
        self.inner.check.is_some()
    }

    /// Asks Mandate's check API whether the agent presenting `token` may do
    /// `action` on `resource` now (DESIGN §4). The answer may be a deny or
    /// `approval_required`; an error means no decision could be had, and the
    /// request must be refused.
    pub async fn check(&self, token: &str, action: &str, resource: &CheckResource) -> Result<CheckAnswer, VerifyError> {
        self.check_with_context(token, action, resource, None).await
    }

    /// [`Verifier::check`] with the request's `context` (DESIGN §4): what
    /// the action is asked with, such as a tool call's arguments.
    pub async fn check_with_context(
        &self,
        token: &str,
        action: &str,
        resource: &CheckResource,
        context: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<CheckAnswer, VerifyError> {
        let i = &self.inner;
        let client = i.check.as_ref().ok_or(VerifyError::Config("no remote check configured".into()))?;
        let ask = crate::check::Ask { token, action, resource, context, probe: false };
        client.check(&i.http, self.now(), ask).await
    }

    /// Whether `action` would be allowed, without acting on the answer
    /// (DESIGN §4, `probe`): for showing what may be done, such as the
    /// tools a token may call. Mandate records the decision but opens no
    /// approval request and uses none up; an `approval_required` answer
    /// carries no request id.
    pub async fn probe(&self, token: &str, action: &str, resource: &CheckResource) -> Result<CheckAnswer, VerifyError> {
        let i = &self.inner;
        let client = i.check.as_ref().ok_or(VerifyError::Config("no remote check configured".into()))?;
        let ask = crate::check::Ask { token, action, resource, context: None, probe: true };
        client.check(&i.http, self.now(), ask).await
    }

    /// Exchanges `subject_token` (an access token this resource accepted)
    /// for one whose audience is `resource` (RFC 8693), authenticated with
    /// the check credentials' `private_key_jwt`: how a gateway or an API
    /// calls further without passing the caller's token on (SECURITY row
    /// 36). Mandate narrows the scopes to what `resource` declares and adds
    /// this client to the token's `act` chain.
    pub async fn exchange(&self, subject_token: &str, resource: &str) -> Result<ExchangedToken, ExchangeError> {
        let i = &self.inner;
        let client = i.check.as_ref().ok_or(ExchangeError::Config("no client credentials configured".into()))?;
        client.exchange(&i.http, self.now(), subject_token, resource).await
    }

    /// The response refusing a request: status, OAuth error body, and the
    /// challenges for every scheme this resource accepts, the error on the
    /// one the request `used`.
    pub fn reject(&self, err: &VerifyError, used: Option<Scheme>) -> Response {
        respond(err, &self.inner.challenges.render(err, used))
    }
}

fn challenges(config: &VerifierConfig) -> Challenges {
    Challenges {
        realm: config.audience.clone(),
        resource_metadata: Some(format!("{}{}", config.public_base(), crate::METADATA_PATH)),
        bearer: !config.require_dpop,
        dpop: true,
    }
}

/// The scheme and token of the one `Authorization` header.
fn credentials(headers: &HeaderMap) -> Result<(Scheme, &str), VerifyError> {
    let mut all = headers.get_all(AUTHORIZATION).into_iter();
    let value = all.next().ok_or(VerifyError::MissingToken)?;
    if all.next().is_some() {
        return Err(VerifyError::InvalidRequest("send exactly one Authorization header"));
    }
    let value = value.to_str().map_err(|_| VerifyError::InvalidRequest("the Authorization header is not ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    // Another scheme (Basic, say) is no credentials of ours (RFC 6750 §3.1).
    let scheme = Scheme::parse(scheme).ok_or(VerifyError::MissingToken)?;
    let token = token.trim_matches(' ');
    // RFC 6750 §2.1: b64token.
    let b64token = !token.is_empty()
        && token.trim_end_matches('=').bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if !b64token {
        return Err(VerifyError::InvalidRequest("the Authorization header does not carry a token"));
    }
    Ok((scheme, token))
}
