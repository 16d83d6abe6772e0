//! Mandate's check API (DESIGN §4) from the resource server's side: the
//! resource server gets its own `mandate:check` token by `client_credentials`
//! with `private_key_jwt` (RFC 7523), keeps it until shortly before it
//! expires, and asks `POST {issuer}/v1/check` per action.

use std::collections::BTreeMap;
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

pub(crate) struct CheckClient {
    remote: RemoteCheck,
    issuer: String,
    token_endpoint: String,
    check_endpoint: String,
    /// The `mandate:check` token and when to stop using it.
    token: Mutex<Option<(String, i64)>>,
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
    pub(crate) async fn check(
        &self,
        http: &Client,
        now: i64,
        token: &str,
        action: &str,
        resource: &CheckResource,
    ) -> Result<CheckAnswer, VerifyError> {
        let body = json!({ "token": token, "action": action, "resource": resource });
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
        let unavailable = |what: &str, detail: String| {
            tracing::warn!(client_id = %self.remote.client_id, detail = %detail, "{what}");
            VerifyError::Unavailable("no token for the check API")
        };
        let assertion = self.assertion(now).map_err(|e| unavailable("signing a client assertion failed", e))?;
        let form = [
            ("grant_type", "client_credentials"),
            ("resource", self.issuer.as_str()),
            ("scope", CHECK_SCOPE),
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
            return Err(unavailable("the token endpoint refused a mandate:check token", body));
        }
        let t: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| unavailable("the token response is malformed", e.to_string()))?;
        let lifetime = t.expires_in.max(0);
        let keep = if lifetime > 2 * RENEW_BEFORE { lifetime - RENEW_BEFORE } else { lifetime / 2 };
        *self.lock() = Some((t.access_token.clone(), now.saturating_add(keep)));
        Ok(t.access_token)
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
