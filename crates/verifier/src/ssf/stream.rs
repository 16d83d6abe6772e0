//! Stream management (SSF 1.0 §8.1.1) from the receiver's side: create a
//! stream for this resource, delete it, ask for a verification event. The
//! calls are authorized with an `ssf.manage` token the resource gets by
//! `client_credentials` with its [`RemoteCheck`](crate::RemoteCheck)
//! credentials; the endpoints are read from the issuer's
//! `/.well-known/ssf-configuration` and must lie under the issuer's URL.

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::SsfReceiver;
use super::set::{
    ASSURANCE_LEVEL_CHANGE, CREDENTIAL_CHANGE, SESSION_REVOKED, STREAM_UPDATED, TOKEN_CLAIMS_CHANGE, VERIFICATION,
};
use crate::fetch;

/// SSF 1.0 §8.1.1: the delivery method URNs.
pub const PUSH_METHOD: &str = "urn:ietf:rfc:8935";
pub const POLL_METHOD: &str = "urn:ietf:rfc:8936";
/// The scope of the token stream calls present.
pub const MANAGE_SCOPE: &str = "ssf.manage";
const METADATA_PATH: &str = "/.well-known/ssf-configuration";
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How the transmitter delivers a new stream's SETs.
#[derive(Clone, PartialEq, Eq)]
pub enum Delivery {
    /// RFC 8936: this receiver polls the `endpoint_url` the transmitter
    /// returns ([`SsfReceiver::spawn_poller`]).
    Poll,
    /// RFC 8935: the transmitter POSTs to `endpoint_url`
    /// ([`SsfReceiver::push_router`]), with `authorization_header` as the
    /// `Authorization` header when given.
    Push { endpoint_url: String, authorization_header: Option<String> },
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Poll => f.write_str("Poll"),
            Self::Push { endpoint_url, authorization_header } => f
                .debug_struct("Push")
                .field("endpoint_url", endpoint_url)
                .field("authorization_header", &authorization_header.as_ref().map(|_| "…"))
                .finish(),
        }
    }
}

/// A stream as the transmitter describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    pub stream_id: String,
    /// `delivery.method`.
    pub method: String,
    /// `delivery.endpoint_url`: where to poll, for a poll stream.
    pub endpoint_url: Option<String>,
    /// The whole stream configuration as returned.
    pub raw: Value,
}

/// Why a stream call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The issuer could not be reached, or gave no token.
    #[error("{0}")]
    Unavailable(String),
    /// The transmitter answered with an error status.
    #[error("the transmitter answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("{0}")]
    Config(String),
}

#[derive(Deserialize)]
struct Metadata {
    configuration_endpoint: String,
    #[serde(default)]
    verification_endpoint: Option<String>,
}

impl SsfReceiver {
    /// Creates a stream for this resource (`POST` at the transmitter's
    /// `configuration_endpoint`), asking for the CAEP and SSF events this
    /// SDK knows.
    pub async fn create_stream(&self, delivery: &Delivery, description: &str) -> Result<StreamConfig, StreamError> {
        let delivery = match delivery {
            Delivery::Poll => json!({ "method": POLL_METHOD }),
            Delivery::Push { endpoint_url, authorization_header } => {
                let mut d = json!({ "method": PUSH_METHOD, "endpoint_url": endpoint_url });
                if let (Some(h), Some(obj)) = (authorization_header, d.as_object_mut()) {
                    obj.insert("authorization_header".into(), json!(h));
                }
                d
            }
        };
        let body = json!({
            "delivery": delivery,
            "events_requested": [
                SESSION_REVOKED, CREDENTIAL_CHANGE, TOKEN_CLAIMS_CHANGE, ASSURANCE_LEVEL_CHANGE,
                STREAM_UPDATED, VERIFICATION,
            ],
            "description": description,
        });
        let endpoints = self.endpoints().await?;
        let answer = self.call(Method::POST, &endpoints.configuration_endpoint, Some(&body)).await?;
        stream_config(answer)
    }

    /// Reads a stream's configuration.
    pub async fn get_stream(&self, stream_id: &str) -> Result<StreamConfig, StreamError> {
        let endpoints = self.endpoints().await?;
        let url = with_stream_id(&endpoints.configuration_endpoint, stream_id)?;
        stream_config(self.call(Method::GET, &url, None).await?)
    }

    /// Deletes a stream.
    pub async fn delete_stream(&self, stream_id: &str) -> Result<(), StreamError> {
        let endpoints = self.endpoints().await?;
        let url = with_stream_id(&endpoints.configuration_endpoint, stream_id)?;
        self.call(Method::DELETE, &url, None).await.map(|_| ())
    }

    /// Asks the transmitter for a verification event carrying `state`
    /// (SSF 1.0 §8.1.4.2); [`SsfReceiver::verified`] says when it came.
    pub async fn request_verification(&self, stream_id: &str, state: &str) -> Result<(), StreamError> {
        let endpoints = self.endpoints().await?;
        let url = endpoints
            .verification_endpoint
            .ok_or_else(|| StreamError::Config("the transmitter has no verification endpoint".into()))?;
        let body = json!({ "stream_id": stream_id, "state": state });
        self.call(Method::POST, &url, Some(&body)).await.map(|_| ())
    }

    /// The transmitter's endpoints, from its metadata, each under the
    /// issuer's URL.
    async fn endpoints(&self) -> Result<Metadata, StreamError> {
        let v = self.verifier();
        let base = v.config().issuer_base().to_owned();
        let fetched = fetch::get(v.http(), &format!("{base}{METADATA_PATH}"), "application/json", MAX_ANSWER_BYTES)
            .await
            .map_err(|e| StreamError::Unavailable(format!("reading the transmitter's metadata: {e}")))?;
        let m: Metadata = serde_json::from_slice(&fetched.body)
            .map_err(|e| StreamError::Unavailable(format!("the transmitter's metadata: {e}")))?;
        let under = |u: &str| u.strip_prefix(&base).is_some_and(|rest| rest.starts_with('/'));
        if !under(&m.configuration_endpoint) || m.verification_endpoint.as_deref().is_some_and(|u| !under(u)) {
            return Err(StreamError::Config("the transmitter's endpoints are not under its issuer URL".into()));
        }
        Ok(m)
    }

    /// One authorized call; a 401 gets a new token and one more try.
    async fn call(&self, method: Method, url: &str, body: Option<&Value>) -> Result<Value, StreamError> {
        let v = self.verifier();
        let client = v
            .check_client()
            .ok_or_else(|| StreamError::Config("stream calls need the verifier's client credentials".into()))?;
        let mut stale: Option<String> = None;
        loop {
            let token = client
                .scoped_token(v.http(), v.now(), MANAGE_SCOPE, stale.as_deref())
                .await
                .map_err(|e| StreamError::Unavailable(e.to_string()))?;
            let mut req = v.http().request(method.clone(), url).bearer_auth(&token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| StreamError::Unavailable(e.to_string()))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && stale.is_none() {
                stale = Some(token);
                continue;
            }
            let bytes = fetch::read_limited(resp, MAX_ANSWER_BYTES).await.map_err(StreamError::Unavailable)?;
            if !status.is_success() {
                let body = String::from_utf8_lossy(&bytes).chars().take(300).collect();
                return Err(StreamError::Refused { status: status.as_u16(), body });
            }
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes)
                .map_err(|e| StreamError::Unavailable(format!("the transmitter's answer is not JSON: {e}")));
        }
    }
}

fn with_stream_id(endpoint: &str, stream_id: &str) -> Result<String, StreamError> {
    let mut url =
        url::Url::parse(endpoint).map_err(|_| StreamError::Config("the configuration endpoint is not a URL".into()))?;
    url.query_pairs_mut().append_pair("stream_id", stream_id);
    Ok(url.into())
}

fn stream_config(raw: Value) -> Result<StreamConfig, StreamError> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let stream_id = text(raw.get("stream_id"))
        .ok_or_else(|| StreamError::Unavailable("the transmitter's answer has no stream_id".into()))?;
    let delivery = raw.get("delivery");
    let method = text(delivery.and_then(|d| d.get("method")))
        .ok_or_else(|| StreamError::Unavailable("the transmitter's answer has no delivery method".into()))?;
    let endpoint_url = text(delivery.and_then(|d| d.get("endpoint_url")));
    Ok(StreamConfig { stream_id, method, endpoint_url, raw })
}
