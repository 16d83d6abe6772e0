//! Mandate's decisions on MCP traffic (DESIGN §9): each `tools/call` is
//! checked before it is forwarded, and each `tools/list` result is cut to
//! the tools whose check is not `deny`.
//!
//! A tool is checked as action = its name on `Resource::"tool/<name>"`
//! (resource `{type: "tool", id: "<name>"}`), which Mandate places under
//! `Api::"<the token's aud>"`, the route's resource; a call's `arguments`
//! go as the check's `context`.

use std::sync::Arc;

use mandate_verifier::{CheckAnswer, CheckResource, Decision, Verifier, VerifyError};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::{CallRefusal, GatewayError, rpc_error};
use crate::jsonrpc::ToolCall;

/// Checks asked at once while filtering one `tools/list` result.
const LIST_CONCURRENCY: usize = 8;
/// Longest `tools/list` result filtered (tools beyond it are dropped, and
/// the drop logged).
const MAX_LISTED_TOOLS: usize = 1024;

/// The check API's resource for a tool.
pub fn tool_resource(name: &str) -> CheckResource {
    CheckResource::new("tool", name)
}

/// What Mandate said about one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallDecision {
    Allow,
    /// Denied because no scope of the token covers the tool; these scopes
    /// would.
    NeedsScope(Vec<String>),
    Refused(CallRefusal),
}

/// Turns a check answer into what the gateway does with the call.
pub fn call_decision(answer: &CheckAnswer, approval_url: &str) -> CallDecision {
    match answer.decision {
        Decision::Allow => CallDecision::Allow,
        Decision::Deny if !answer.scopes_needed.is_empty() => CallDecision::NeedsScope(answer.scopes_needed.clone()),
        Decision::Deny => CallDecision::Refused(CallRefusal::Denied { audit_seq: answer.audit_seq }),
        Decision::ApprovalRequired => CallDecision::Refused(CallRefusal::ApprovalRequired {
            approval_request: answer.approval_request.clone(),
            approval_url: approval_url.to_owned(),
            audit_seq: answer.audit_seq,
        }),
    }
}

/// Asks Mandate about one call. No decision (Mandate unreachable, or its
/// answer unreadable) is an error: the call is not forwarded.
pub async fn decide_call(
    verifier: &Verifier,
    token: &str,
    call: &ToolCall<'_>,
    approval_url: &str,
) -> Result<CallDecision, GatewayError> {
    let answer = verifier
        .check_with_context(token, call.name, &tool_resource(call.name), call.arguments)
        .await
        .map_err(check_failed)?;
    let decision = call_decision(&answer, approval_url);
    tracing::info!(
        tool = call.name, decision = ?answer.decision, audit_seq = answer.audit_seq,
        reasons = ?answer.reasons, "tools/call decided"
    );
    Ok(decision)
}

fn check_failed(e: VerifyError) -> GatewayError {
    GatewayError::MandateUnavailable(format!("check API: {e}"))
}

/// Filters `tools/list` results for one client token.
#[derive(Clone)]
pub struct ToolFilter {
    pub verifier: Verifier,
    pub token: Arc<str>,
}

impl ToolFilter {
    /// If `message` is a response carrying a `tools` list, the same with
    /// only the tools the token may call (or that need approval); a tool
    /// without a string name is dropped. When Mandate cannot be asked, the
    /// result becomes a JSON-RPC error: no unfiltered list goes out.
    pub async fn filter_message(&self, mut message: Value) -> Value {
        let Some(tools) = message.pointer_mut("/result/tools").and_then(Value::as_array_mut) else {
            return message;
        };
        let listed = std::mem::take(tools);
        match self.keep_callable(listed).await {
            Ok(kept) => {
                if let Some(tools) = message.pointer_mut("/result/tools") {
                    *tools = Value::Array(kept);
                }
                message
            }
            Err(e) => {
                tracing::warn!(error = %e, "a tools/list result could not be filtered; answering an error");
                let id = message.get("id").cloned().unwrap_or(Value::Null);
                rpc_error(
                    &id,
                    crate::error::code::AUTHORIZATION_UNAVAILABLE,
                    "authorization is temporarily unavailable; try again",
                    Some(serde_json::json!({ "error": "temporarily_unavailable" })),
                )
            }
        }
    }

    async fn keep_callable(&self, mut tools: Vec<Value>) -> Result<Vec<Value>, GatewayError> {
        if tools.len() > MAX_LISTED_TOOLS {
            tracing::warn!(listed = tools.len(), kept = MAX_LISTED_TOOLS, "tools/list result too long; cut");
            tools.truncate(MAX_LISTED_TOOLS);
        }
        let gate = Arc::new(Semaphore::new(LIST_CONCURRENCY));
        let mut checks = JoinSet::new();
        for (i, tool) in tools.iter().enumerate() {
            let Some(name) = tool.get("name").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let (verifier, token, gate) = (self.verifier.clone(), self.token.clone(), gate.clone());
            checks.spawn(async move {
                let _permit = gate.acquire_owned().await;
                // A probe: listing a tool opens no approval request.
                let answer = verifier.probe(&token, &name, &tool_resource(&name)).await;
                (i, name, answer)
            });
        }
        let mut keep = vec![false; tools.len()];
        while let Some(joined) = checks.join_next().await {
            let (i, name, answer) = joined.map_err(|e| GatewayError::Internal(format!("a check task failed: {e}")))?;
            let answer = answer.map_err(check_failed)?;
            let shown = answer.decision != Decision::Deny;
            tracing::debug!(tool = %name, decision = ?answer.decision, shown, "tools/list entry decided");
            if let Some(k) = keep.get_mut(i) {
                *k = shown;
            }
        }
        Ok(tools.into_iter().zip(keep).filter_map(|(t, k)| k.then_some(t)).collect())
    }
}

/// A body is a JSON-RPC response to filter when its id is one of `ids`,
/// or, with `ids` = `None` (a stream not tied to a request), when it has a
/// `result.tools` list.
pub fn is_tool_list_result(message: &Value, ids: Option<&std::collections::HashSet<String>>) -> bool {
    let Some(obj) = message.as_object() else {
        return false;
    };
    if obj.contains_key("method") || !obj.contains_key("result") {
        return false;
    }
    match ids {
        Some(ids) => obj.get("id").is_some_and(|id| ids.contains(&crate::jsonrpc::id_key(id))),
        None => message.pointer("/result/tools").is_some_and(Value::is_array),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(v: Value) -> CheckAnswer {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn answers_become_what_happens_to_the_call() {
        let url = "http://mandate.example/approvals";
        assert_eq!(call_decision(&answer(json!({"decision": "allow", "audit_seq": 1})), url), CallDecision::Allow);
        assert_eq!(
            call_decision(&answer(json!({"decision": "deny", "scopes_needed": ["files.write"], "audit_seq": 2})), url),
            CallDecision::NeedsScope(vec!["files.write".into()])
        );
        assert_eq!(
            call_decision(&answer(json!({"decision": "deny", "reasons": ["policy: no"], "audit_seq": 3})), url),
            CallDecision::Refused(CallRefusal::Denied { audit_seq: 3 })
        );
        assert_eq!(
            call_decision(
                &answer(json!({"decision": "approval_required", "approval_request": "apr_9", "audit_seq": 4})),
                url
            ),
            CallDecision::Refused(CallRefusal::ApprovalRequired {
                approval_request: Some("apr_9".into()),
                approval_url: url.into(),
                audit_seq: 4
            })
        );
        assert_eq!(tool_resource("send_mail"), CheckResource::new("tool", "send_mail"));
    }

    #[test]
    fn which_messages_are_tool_lists() {
        let ids = std::collections::HashSet::from(["1".to_owned(), "\"a\"".to_owned()]);
        let list = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}});
        assert!(is_tool_list_result(&list, Some(&ids)));
        assert!(is_tool_list_result(&json!({"jsonrpc": "2.0", "id": "a", "result": {}}), Some(&ids)));
        assert!(!is_tool_list_result(&json!({"jsonrpc": "2.0", "id": "1", "result": {"tools": []}}), Some(&ids)));
        assert!(!is_tool_list_result(&json!({"jsonrpc": "2.0", "id": 1, "error": {}}), Some(&ids)));
        assert!(!is_tool_list_result(&json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}), None));
        assert!(is_tool_list_result(&json!({"jsonrpc": "2.0", "id": 5, "result": {"tools": []}}), None));
        assert!(!is_tool_list_result(&json!({"jsonrpc": "2.0", "id": 5, "result": {"content": []}}), None));
        assert!(!is_tool_list_result(&json!([list]), Some(&ids)));
    }
}
