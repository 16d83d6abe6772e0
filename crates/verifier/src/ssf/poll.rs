//! Poll delivery (RFC 8936): a background task POSTs
//! `{"maxEvents", "returnImmediately", "ack", "setErrs"}` to the stream's
//! endpoint and gets `{"sets": {jti: SET}, "moreAvailable"}`. Each SET is
//! received; the ones accepted (or already accepted before) are
//! acknowledged in the next request, the ones refused are reported in
//! `setErrs` with their RFC 8935 code, and the ones the receiver could not
//! decide on now are left unacknowledged, so that the transmitter delivers
//! them again.
//!
//! A failed request is retried after a backoff that doubles from one
//! second up to a minute; the acknowledgements it carried are sent again.
//! [`Poller::stop`] ends the task between requests, after sending the
//! acknowledgements still owed.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{SetError, SsfReceiver};
use crate::fetch;

/// The scope of the token the poller presents, by `client_credentials`.
pub const POLL_SCOPE: &str = "ssf.read";
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Most SETs asked for per request.
const MAX_EVENTS: u32 = 100;

/// How to poll one stream.
#[derive(Clone)]
pub struct PollConfig {
    /// The stream's `delivery.endpoint_url`, as its creation returned it.
    pub endpoint_url: String,
    /// A bearer token to present. When `None`, the poller gets an
    /// `ssf.read` token by `client_credentials` with the verifier's
    /// [`RemoteCheck`](crate::RemoteCheck) credentials, and a new one when
    /// the transmitter answers 401.
    pub token: Option<String>,
    /// SETs asked for per request (1 to 100; default 50).
    pub max_events: u32,
    /// RFC 8936 `returnImmediately`: `false` (the default) lets the
    /// transmitter hold the request until events are available.
    pub return_immediately: bool,
    /// Pause after an answer with no SETs (default 1 s).
    pub idle_interval: Duration,
    /// Longest a request may take, long-polls included (default 60 s).
    pub request_timeout: Duration,
}

impl std::fmt::Debug for PollConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollConfig")
            .field("endpoint_url", &self.endpoint_url)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("max_events", &self.max_events)
            .field("return_immediately", &self.return_immediately)
            .field("idle_interval", &self.idle_interval)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl PollConfig {
    pub fn new(endpoint_url: impl Into<String>) -> Self {
        Self {
            endpoint_url: endpoint_url.into(),
            token: None,
            max_events: 50,
            return_immediately: false,
            idle_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// RFC 8936 §2.4 request.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PollRequest<'a> {
    max_events: u32,
    return_immediately: bool,
    ack: &'a [String],
    #[serde(skip_serializing_if = "no_errors")]
    set_errs: &'a BTreeMap<String, Value>,
}

fn no_errors(errs: &&BTreeMap<String, Value>) -> bool {
    errs.is_empty()
}

/// RFC 8936 §2.5 response.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PollResponse {
    sets: Map<String, Value>,
    #[serde(default)]
    more_available: bool,
}

/// The running poll task.
#[derive(Debug)]
pub struct Poller {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Poller {
    /// Stops polling: the request under way is abandoned, the
    /// acknowledgements owed are sent, and the task has ended when this
    /// returns.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the SET poller ended abnormally");
        }
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl SsfReceiver {
    /// Starts polling the stream at `config.endpoint_url` in the
    /// background, on the current Tokio runtime.
    pub fn spawn_poller(&self, config: PollConfig) -> Poller {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(poll_loop(self.clone(), config, stopped));
        Poller { stop, task }
    }
}

/// Waits `d` or until told to stop; `true` when told to stop.
async fn pause(d: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped.wait_for(|s| *s) => true,
    }
}

struct Owed {
    ack: Vec<String>,
    set_errs: BTreeMap<String, Value>,
}

async fn poll_loop(receiver: SsfReceiver, config: PollConfig, mut stopped: watch::Receiver<bool>) {
    let mut owed = Owed { ack: Vec::new(), set_errs: BTreeMap::new() };
    let mut backoff = MIN_BACKOFF;
    let max_events = config.max_events.clamp(1, MAX_EVENTS);
    let mut stale: Option<String> = None;
    loop {
        if *stopped.borrow() {
            break;
        }
        let request = PollRequest {
            max_events,
            return_immediately: config.return_immediately,
            ack: &owed.ack,
            set_errs: &owed.set_errs,
        };
        let answer = tokio::select! {
            a = poll_once(&receiver, &config, &request, stale.as_deref()) => a,
            _ = stopped.wait_for(|s| *s) => break,
        };
        match answer {
            Ok(resp) => {
                backoff = MIN_BACKOFF;
                stale = None;
                owed.ack.clear();
                owed.set_errs.clear();
                let empty = resp.sets.is_empty();
                handle(&receiver, resp.sets, &mut owed).await;
                if empty && !resp.more_available && pause(config.idle_interval, &mut stopped).await {
                    break;
                }
            }
            Err(PollFailure::Unauthorized(token)) => {
                tracing::warn!("the transmitter refused the poll token; getting another");
                stale = token;
                if pause(backoff, &mut stopped).await {
                    break;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(PollFailure::Other(e)) => {
                tracing::warn!(endpoint = %config.endpoint_url, error = %e, ?backoff, "polling for SETs failed");
                if pause(backoff, &mut stopped).await {
                    break;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    // Send what is owed, without waiting for events.
    if !owed.ack.is_empty() || !owed.set_errs.is_empty() {
        let request = PollRequest { max_events: 0, return_immediately: true, ack: &owed.ack, set_errs: &owed.set_errs };
        match tokio::time::timeout(Duration::from_secs(5), poll_once(&receiver, &config, &request, None)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the last acknowledgements were not delivered"),
            Err(_) => tracing::warn!("the last acknowledgements timed out"),
        }
    }
    tracing::debug!(endpoint = %config.endpoint_url, "stopped polling for SETs");
}

async fn handle(receiver: &SsfReceiver, sets: Map<String, Value>, owed: &mut Owed) {
    for (jti, set) in sets {
        let Some(token) = set.as_str() else {
            owed.set_errs.insert(jti, set_err(&SetError::InvalidRequest("the SET is not a string".into())));
            continue;
        };
        match receiver.receive_as(token, Some(&jti)).await {
            Ok(_) => owed.ack.push(jti),
            Err(e @ SetError::Unavailable(_)) => {
                tracing::warn!(%jti, error = %e, "a polled SET is left for later");
            }
            Err(e) => {
                tracing::info!(%jti, error = %e, "refused a polled SET");
                owed.set_errs.insert(jti, set_err(&e));
            }
        }
    }
}

fn set_err(e: &SetError) -> Value {
    serde_json::json!({ "err": e.code().unwrap_or("invalid_request"), "description": e.to_string() })
}

#[derive(Debug)]
enum PollFailure {
    /// 401 with this token: get another.
    Unauthorized(Option<String>),
    Other(String),
}

impl std::fmt::Display for PollFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unauthorized(_) => f.write_str("the poll token was refused"),
            Self::Other(e) => f.write_str(e),
        }
    }
}

async fn poll_once(
    receiver: &SsfReceiver,
    config: &PollConfig,
    request: &PollRequest<'_>,
    stale: Option<&str>,
) -> Result<PollResponse, PollFailure> {
    let v = receiver.verifier();
    let token = match (&config.token, v.check_client()) {
        (Some(t), _) => t.clone(),
        (None, Some(client)) => client
            .scoped_token(v.http(), v.now(), POLL_SCOPE, stale)
            .await
            .map_err(|e| PollFailure::Other(e.to_string()))?,
        (None, None) => return Err(PollFailure::Other("no poll token and no client credentials configured".into())),
    };
    let resp = v
        .http()
        .post(&config.endpoint_url)
        .bearer_auth(&token)
        .timeout(config.request_timeout)
        .json(request)
        .send()
        .await
        .map_err(|e| PollFailure::Other(e.to_string()))?;
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED && config.token.is_none() {
        return Err(PollFailure::Unauthorized(Some(token)));
    }
    if status != StatusCode::OK {
        return Err(PollFailure::Other(format!("status {status}")));
    }
    let limit = usize::try_from(request.max_events.max(1)).unwrap_or(1).saturating_mul(super::set::MAX_SET_BYTES + 512);
    let body = fetch::read_limited(resp, limit.saturating_add(4096)).await.map_err(PollFailure::Other)?;
    serde_json::from_slice(&body).map_err(|e| PollFailure::Other(format!("the answer is not a poll response: {e}")))
}
