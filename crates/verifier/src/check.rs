//! Mandate's check API (DESIGN §4) from the resource server's side: the
//! resource server gets its own `mandate:check` token by `client_credentials`
//! with `private_key_jwt` (RFC 7523), keeps it until shortly before it
//! expires, and asks `POST {issuer}/v1/check` per action. The same
//! credentials exchange a caller's token for one to another audience
//! (RFC 8693), for calling further without passing the caller's token on.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use mandate_jose::assertion::CLIENT_ASSERTION_TYPE;
use mandate_jose::jws;
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::RemoteCheck;
use crate::{VerifyError, fetch};

const CHECK_SCOPE: &str = "mandate:check";
/// A check token is replaced this many seconds before it expires.
const RENEW_BEFORE: i64 = 30;
const ASSERTION_LIFETIME: i64 = 60;
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The resource an action is checked on: Cedar sees it as
/// `Resource::"<type>/<id>"`, its properties as tags (so a property's
/// presence, not its value, is what `hasTag` tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResource {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

impl CheckResource {
    pub fn new(kind: impl Into<String>, id: impl Into<String>) -> Self {
        Self { kind: kind.into(), id: id.into(), properties: BTreeMap::new() }
    }

    /// Adds a property (a Cedar tag).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    /// Policy allows it once a person approves; see
    /// [`CheckAnswer::approval_request`].
    ApprovalRequired,
}

/// The check API's decision receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckAnswer {
    pub decision: Decision,
    #[serde(default)]
    pub reasons: Vec<String>,
    /// The delegation chain, user first, current actor last.
    #[serde(default)]
    pub chain: Vec<String>,
    /// The approval request (`apr_…`) waiting for a person.
    #[serde(default)]
    pub approval_request: Option<String>,
    /// On a deny because no scope of the token covers the action: the
    /// resource's scopes that would, for a client to ask for (an
    /// `insufficient_scope` challenge). Empty otherwise, and from servers
    /// that do not send it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_needed: Vec<String>,
    #[serde(default)]
    pub policy_version: String,
    /// The audit event that records this decision.
    pub audit_seq: u64,
}

impl CheckAnswer {
    pub fn is_allowed(&self) -> bool {
        self.decision == Decision::Allow
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: i64,
}

/// RFC 8693 §3: the token type of an access token.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// A token got by [`Verifier::exchange`](crate::Verifier::exchange).
#[derive(Clone, PartialEq, Eq)]
pub struct ExchangedToken {
    pub access_token: String,
    /// Its lifetime in seconds from when it was issued, as the issuer said.
    pub expires_in: i64,
    /// The scopes it carries, when the issuer said (space-separated).
    pub scope: Option<String>,
}

impl std::fmt::Debug for ExchangedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangedToken")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ExchangeResponse {
    access_token: String,
    expires_in: i64,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Why a token exchange gave no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The issuer could not be reached or did not answer sensibly: no
    /// token, and no way to call further (fail closed).
    #[error("{0}")]
    Unavailable(&'static str),
    /// The issuer answered with an OAuth error (RFC 6749 §5.2), such as
    /// `invalid_grant` for a subject token that is no longer live or
    /// `invalid_target` for an audience this client may not exchange for.
    #[error("the issuer refused the exchange: {error}")]
    Refused { error: String, description: Option<String> },
    #[error("verifier misconfigured: {0}")]
    Config(String),
}

/// One question to the check API.
pub(crate) struct Ask<'a> {
    pub token: &'a str,
    pub action: &'a str,
    pub resource: &'a CheckResource,
    pub context: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// Decide without acting on it (no approval opened or used up).
    pub probe: bool,
}

pub(crate) struct CheckClient {
    remote: RemoteCheck,
    issuer: String,
    token_endpoint: String,
    check_endpoint: String,
    /// The `mandate:check` token and when to stop using it.
    token: Mutex<Option<(String, i64)>>,
    /// Tokens for other scopes (Shared Signals), by scope.
    scoped: Mutex<HashMap<String, (String, i64)>>,
    renewing: tokio::sync::Mutex<()>,
    assertions: AtomicU64,
}

impl CheckClient {
    pub(crate) fn new(remote: RemoteCheck, issuer: &str, issuer_base: &str) -> Self {
        Self {
            remote,
            issuer: issuer.to_owned(),
            token_endpoint: format!("{issuer_base}/oauth/token"),
            check_endpoint: format!("{issuer_base}/v1/check"),
            token: Mutex::new(None),
            scoped: Mutex::new(HashMap::new()),
            renewing: tokio::sync::Mutex::new(()),
            assertions: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<(String, i64)>> {
        self.token.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cached(&self, now: i64) -> Option<String> {
        self.lock().as_ref().filter(|(_, until)| now < *until).map(|(t, _)| t.clone())
    }

    /// Asks whether `token` may do `action` on `resource`. A refusal by the
    /// issuer to answer is [`VerifyError::Unavailable`]: fail closed.
    pub(crate) async fn check(&self, http: &Client, now: i64, ask: Ask<'_>) -> Result<CheckAnswer, VerifyError> {
        let Ask { token, action, resource, context, probe } = ask;
        let mut body = json!({ "token": token, "action": action, "resource": resource });
        if probe && let Some(obj) = body.as_object_mut() {
            obj.insert("probe".into(), serde_json::Value::Bool(true));
        }
        if let (Some(context), Some(obj)) = (context, body.as_object_mut()) {
            obj.insert("context".into(), serde_json::Value::Object(context.clone()));
        }
        let mut renewed = false;
        loop {
            let bearer = match self.cached(now) {
                Some(t) => t,
                None => {
                    renewed = true;
                    self.renew(http, now).await?
                }
            };
            let resp = http.post(&self.check_endpoint).bearer_auth(&bearer).json(&body).send().await.map_err(|e| {
                tracing::warn!(error = %e, "calling the check API failed");
                VerifyError::Unavailable("the check API could not be reached")
            })?;
            // A check token revoked or rotated out: get a new one, once.
            if resp.status() == StatusCode::UNAUTHORIZED && !renewed {
                self.lock().take_if(|(t, _)| *t == bearer);
                continue;
            }
            if resp.status() != StatusCode::OK {
                tracing::warn!(status = %resp.status(), "the check API refused to answer");
                return Err(VerifyError::Unavailable("the check API did not answer"));
            }
            let bytes = fetch::read_limited(resp, MAX_ANSWER_BYTES).await.map_err(|e| {
                tracing::warn!(error = %e, "reading the check API's answer failed");
                VerifyError::Unavailable("the check API did not answer")
            })?;
            return serde_json::from_slice(&bytes).map_err(|e| {
                tracing::warn!(error = %e, "the check API's answer is not a decision");
                VerifyError::Unavailable("the check API did not answer")
            });
        }
    }

    /// A fresh `mandate:check` token, fetched by one task at a time.
    async fn renew(&self, http: &Client, now: i64) -> Result<String, VerifyError> {
        let _one = self.renewing.lock().await;
        if let Some(t) = self.cached(now) {
            return Ok(t);
        }
        let (token, until) = self.request_token(http, now, CHECK_SCOPE).await?;
        *self.lock() = Some((token.clone(), until));
        Ok(token)
    }

    /// A token for the issuer with `scope` (such as `ssf.read` for polling
    /// a Shared Signals stream), kept until shortly before it expires.
    /// `stale` is a token the issuer just refused: it is not handed out again.
    pub(crate) async fn scoped_token(
        &self,
        http: &Client,
        now: i64,
        scope: &str,
        stale: Option<&str>,
    ) -> Result<String, VerifyError> {
        let cached = |c: &Self| {
            let map = c.scoped.lock().unwrap_or_else(PoisonError::into_inner);
            map.get(scope).filter(|(t, until)| now < *until && Some(t.as_str()) != stale).map(|(t, _)| t.clone())
        };
        if let Some(t) = cached(self) {
            return Ok(t);
        }
        let _one = self.renewing.lock().await;
        if let Some(t) = cached(self) {
            return Ok(t);
        }
        let (token, until) = self.request_token(http, now, scope).await?;
        self.scoped.lock().unwrap_or_else(PoisonError::into_inner).insert(scope.to_owned(), (token.clone(), until));
        Ok(token)
    }

    /// `client_credentials` with `private_key_jwt` for `resource` = the
    /// issuer and `scope`: the token and until when to use it.
    async fn request_token(&self, http: &Client, now: i64, scope: &str) -> Result<(String, i64), VerifyError> {
        let unavailable = |what: &str, detail: String| {
            tracing::warn!(client_id = %self.remote.client_id, scope, detail = %detail, "{what}");
            VerifyError::Unavailable("no token from the issuer")
        };
        let assertion = self.assertion(now).map_err(|e| unavailable("signing a client assertion failed", e))?;
        let form = [
            ("grant_type", "client_credentials"),
            ("resource", self.issuer.as_str()),
            ("scope", scope),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion.as_str()),
        ];
        let resp = http
            .post(&self.token_endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| unavailable("the token endpoint could not be reached", e.to_string()))?;
        let status = resp.status();
        let bytes = fetch::read_limited(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| unavailable("reading the token response failed", e))?;
        if status != StatusCode::OK {
            let body = String::from_utf8_lossy(&bytes).chars().take(300).collect();
            return Err(unavailable("the token endpoint refused a client_credentials token", body));
        }
        let t: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| unavailable("the token response is malformed", e.to_string()))?;
        let lifetime = t.expires_in.max(0);
        let keep = if lifetime > 2 * RENEW_BEFORE { lifetime - RENEW_BEFORE } else { lifetime / 2 };
        Ok((t.access_token, now.saturating_add(keep)))
    }

    /// RFC 8693 token exchange at the token endpoint: `subject_token` for
    /// one whose audience is `resource`, no `scope` (the issuer narrows to
    /// what `resource` declares), authenticated with a client assertion.
    pub(crate) async fn exchange(
        &self,
        http: &Client,
        now: i64,
        subject_token: &str,
        resource: &str,
    ) -> Result<ExchangedToken, ExchangeError> {
        let unavailable = |what: &str, detail: String| {
            tracing::warn!(client_id = %self.remote.client_id, resource, detail = %detail, "{what}");
            ExchangeError::Unavailable("the token exchange did not answer")
        };
        let assertion = self.assertion(now).map_err(|e| unavailable("signing a client assertion failed", e))?;
        let form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", subject_token),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("resource", resource),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion.as_str()),
        ];
        let resp = http
            .post(&self.token_endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| unavailable("the token endpoint could not be reached", e.to_string()))?;
        let status = resp.status();
        let bytes = fetch::read_limited(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| unavailable("reading the token response failed", e))?;
        if status == StatusCode::OK {
            let t: ExchangeResponse = serde_json::from_slice(&bytes)
                .map_err(|e| unavailable("the token response is malformed", e.to_string()))?;
            return Ok(ExchangedToken { access_token: t.access_token, expires_in: t.expires_in, scope: t.scope });
        }
        // RFC 6749 §5.2: a 400 with an error code refuses this exchange.
        // Anything else is no answer: a 401 (`invalid_client`) says this
        // client's own credentials are not accepted, which no caller can
        // fix, and 5xx or a proxy's page says nothing about the token.
        match serde_json::from_slice::<OAuthErrorBody>(&bytes) {
            Ok(e) if status == StatusCode::BAD_REQUEST => {
                tracing::info!(
                    client_id = %self.remote.client_id, resource, error = %e.error,
                    description = e.error_description.as_deref().unwrap_or(""), "the issuer refused a token exchange"
                );
                Err(ExchangeError::Refused { error: e.error, description: e.error_description })
            }
            _ => {
                let body: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
                Err(unavailable("the token endpoint did not answer the exchange", format!("status {status}: {body}")))
            }
        }
    }

    /// An RFC 7523 client assertion for the issuer.
    fn assertion(&self, now: i64) -> Result<String, String> {
        let id = &self.remote.client_id;
        let claims = json!({
            "iss": id, "sub": id, "aud": self.issuer,
            "iat": now, "exp": now + ASSERTION_LIFETIME, "jti": self.fresh_jti(now),
        });
        jws::sign(&self.remote.key, "JWT", &claims).map_err(|e| e.to_string())
    }

    /// A `jti` unique for this client: the issuer burns each one until the
    /// assertion expires, so it need not be secret, only never repeated.
    /// Time, a counter and a randomly keyed hash keep restarts and
    /// replicas apart.
    fn fresh_jti(&self, now: i64) -> String {
        let n = self.assertions.fetch_add(1, Ordering::Relaxed);
        let salt = std::collections::hash_map::RandomState::new().hash_one((now, n, std::process::id()));
        mandate_jose::sha256_b64(format!("{now}.{n}.{salt}").as_bytes())
    }
}
