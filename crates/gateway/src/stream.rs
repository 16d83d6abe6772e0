//! Upstream answers on their way back. Most pass through as they come
//! (the upstream's body is the client's body, chunk by chunk). An answer
//! to `tools/list` is filtered: as one JSON body (read whole, bounded) or,
//! in an event stream, event by event, every other event sent on as soon
//! as it is complete and untouched.

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::Frame;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::decide::{ToolFilter, is_tool_list_result};
use crate::error::GatewayError;
use crate::jsonrpc::id_key;
use crate::sse::{Event, Splitter};

/// Largest JSON answer read to filter a `tools/list` result.
pub const MAX_FILTERED_JSON: usize = 8 << 20;
/// Largest single event held while looking for a `tools/list` result.
pub const MAX_EVENT_BYTES: usize = 8 << 20;

/// A response body fed by a task through a channel.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx).map(|next| next.map(|r| r.map(Frame::data)))
    }
}

/// The upstream's body, passed through untouched and unbuffered.
pub fn passthrough(upstream: reqwest::Response) -> Body {
    Body::new(reqwest::Body::from(upstream))
}

/// An event stream with its `tools/list` results filtered. `ids` are the
/// `tools/list` requests this stream answers; `None` for a stream tied to
/// no request (GET), where any result with a `tools` list is filtered.
/// Once every id is answered, the rest streams through unsplit.
pub fn filtered_events(upstream: reqwest::Response, filter: ToolFilter, ids: Option<HashSet<String>>) -> Body {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(pump(upstream, filter, ids, tx));
    Body::new(ChannelBody { rx })
}

async fn pump(
    mut upstream: reqwest::Response,
    filter: ToolFilter,
    mut ids: Option<HashSet<String>>,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
) {
    let mut split = Splitter::default();
    let mut splitting = true;
    loop {
        let chunk = tokio::select! {
            chunk = upstream.chunk() => chunk,
            // The client went away: stop reading the upstream.
            () = tx.closed() => return,
        };
        let chunk = match chunk {
            Ok(Some(c)) => c,
            Ok(None) => {
                let rest = split.take_rest();
                if !rest.is_empty() {
                    let _ = tx.send(Ok(rest.into())).await;
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the upstream's event stream failed");
                let _ = tx.send(Err(io::Error::other("the upstream's event stream failed"))).await;
                return;
            }
        };
        if !splitting {
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            continue;
        }
        split.push(&chunk);
        while let Some(raw) = split.next_event() {
            let out = match tool_list_event(&raw, ids.as_ref()) {
                Some((event, message)) => {
                    if let (Some(ids), Some(id)) = (ids.as_mut(), message.get("id")) {
                        ids.remove(&id_key(id));
                    }
                    let filtered = filter.filter_message(message).await;
                    event.with_data(&filtered.to_string())
                }
                None => raw,
            };
            if tx.send(Ok(out.into())).await.is_err() {
                return;
            }
        }
        if ids.as_ref().is_some_and(HashSet::is_empty) {
            splitting = false;
            let rest = split.take_rest();
            if !rest.is_empty() && tx.send(Ok(rest.into())).await.is_err() {
                return;
            }
        } else if split.pending() > MAX_EVENT_BYTES {
            // It might be the list: never pass it on unfiltered.
            tracing::warn!(bytes = split.pending(), "an upstream event is too large to filter; stream ended");
            let _ = tx.send(Err(io::Error::other("an upstream event is too large"))).await;
            return;
        }
    }
}

/// The event and its message, when `raw` carries a `tools/list` result.
fn tool_list_event(raw: &[u8], ids: Option<&HashSet<String>>) -> Option<(Event, Value)> {
    let event = Event::parse(raw)?;
    let message: Value = serde_json::from_str(event.data.as_deref()?).ok()?;
    is_tool_list_result(&message, ids).then_some((event, message))
}

/// A JSON answer with its `tools/list` results filtered (a batch answer
/// is an array; each element is looked at).
pub async fn filtered_json(
    mut upstream: reqwest::Response,
    filter: &ToolFilter,
    ids: &HashSet<String>,
) -> Result<Bytes, GatewayError> {
    if upstream.content_length().is_some_and(|n| n > MAX_FILTERED_JSON as u64) {
        return Err(GatewayError::UpstreamAnswer("the tools/list answer is too large".into()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = upstream.chunk().await.map_err(|e| GatewayError::UpstreamUnavailable(e.to_string()))? {
        if body.len() + chunk.len() > MAX_FILTERED_JSON {
            return Err(GatewayError::UpstreamAnswer("the tools/list answer is too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    let answer: Value = serde_json::from_slice(&body)
        .map_err(|e| GatewayError::UpstreamAnswer(format!("the tools/list answer is not JSON: {e}")))?;
    let filtered = match answer {
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(if is_tool_list_result(&item, Some(ids)) { filter.filter_message(item).await } else { item });
            }
            Value::Array(out)
        }
        one if is_tool_list_result(&one, Some(ids)) => filter.filter_message(one).await,
        other => other,
    };
    serde_json::to_vec(&filtered).map(Bytes::from).map_err(|e| GatewayError::Internal(e.to_string()))
}
