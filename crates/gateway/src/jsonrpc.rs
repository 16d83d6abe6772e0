//! JSON-RPC 2.0 messages as MCP sends them over streamable HTTP: one
//! request, notification or response, or a batch of them. The body is
//! checked strictly (no duplicate keys, bounded depth) so that the gateway
//! and the upstream cannot read two different calls from the same bytes;
//! the bytes forwarded are the bytes checked.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::error::GatewayError;

/// Most messages in one batch.
pub const MAX_BATCH: usize = 64;
/// Longest tool name sent to the check API (its bound on actions).
const MAX_TOOL_NAME: usize = 256;

/// One message of a POST body.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request {
        id: Value,
        method: String,
        params: Option<Value>,
    },
    Notification {
        method: String,
        params: Option<Value>,
    },
    /// The client's answer to a request the server sent it.
    Response {
        id: Value,
    },
}

impl Message {
    pub fn method(&self) -> Option<&str> {
        match self {
            Self::Request { method, .. } | Self::Notification { method, .. } => Some(method),
            Self::Response { .. } => None,
        }
    }

    pub fn params(&self) -> Option<&Value> {
        match self {
            Self::Request { params, .. } | Self::Notification { params, .. } => params.as_ref(),
            Self::Response { .. } => None,
        }
    }

    pub fn request_id(&self) -> Option<&Value> {
        match self {
            Self::Request { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// A POST body.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub messages: Vec<Message>,
    pub batch: bool,
}

/// A call's `arguments`.
pub type Arguments = Map<String, Value>;

/// A `tools/call` request, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall<'a> {
    pub id: &'a Value,
    pub name: &'a str,
    pub arguments: Option<&'a Arguments>,
}

impl Payload {
    /// Parses a body: `Parse` if it is not JSON (or has duplicate keys or
    /// is nested too deep), `InvalidRequest` if it is not JSON-RPC.
    pub fn parse(bytes: &[u8]) -> Result<Self, GatewayError> {
        // Duplicate keys and deep nesting are refused before parsing: a parser
        // keeping the first duplicate and one keeping the last would decide
        // and run different calls.
        mandate_model::json::check_json_shape(bytes).map_err(GatewayError::Parse)?;
        let value: Value = serde_json::from_slice(bytes).map_err(|e| GatewayError::Parse(e.to_string()))?;
        match value {
            Value::Array(items) => {
                if items.is_empty() || items.len() > MAX_BATCH {
                    return Err(GatewayError::InvalidRequest(format!("a batch holds 1 to {MAX_BATCH} messages")));
                }
                let messages = items.into_iter().map(message).collect::<Result<Vec<_>, _>>()?;
                Ok(Self { messages, batch: true })
            }
            v => Ok(Self { messages: vec![message(v)?], batch: false }),
        }
    }

    /// The id of a lone request, for the error answering it.
    pub fn single_id(&self) -> Option<&Value> {
        match self.messages.as_slice() {
            [m] if !self.batch => m.request_id(),
            _ => None,
        }
    }

    /// Every `tools/call` request. A `tools/call` without an id, or with
    /// params that name no tool, is refused: it could be neither decided
    /// nor answered.
    pub fn tool_calls(&self) -> Result<Vec<ToolCall<'_>>, GatewayError> {
        let mut calls = Vec::new();
        for m in &self.messages {
            match m {
                Message::Request { id, method, params } if method == "tools/call" => {
                    let (name, arguments) = tool_call_params(params.as_ref()).map_err(GatewayError::InvalidParams)?;
                    calls.push(ToolCall { id, name, arguments });
                }
                Message::Notification { method, .. } if method == "tools/call" => {
                    return Err(GatewayError::InvalidRequest("tools/call must be a request, with an id".into()));
                }
                _ => {}
            }
        }
        Ok(calls)
    }

    /// The ids of the `tools/list` requests, as [`id_key`]s.
    pub fn tool_list_ids(&self) -> HashSet<String> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                Message::Request { id, method, .. } if method == "tools/list" => Some(id_key(id)),
                _ => None,
            })
            .collect()
    }
}

/// A request id as a comparable key (its JSON text: `1` and `"1"` differ).
pub fn id_key(id: &Value) -> String {
    id.to_string()
}

fn message(v: Value) -> Result<Message, GatewayError> {
    let bad = |why: &str| GatewayError::InvalidRequest(why.to_owned());
    let Value::Object(mut obj) = v else {
        return Err(bad("a message is an object"));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(bad("jsonrpc must be \"2.0\""));
    }
    let id = obj.remove("id");
    // MCP: ids are strings or numbers, never null.
    if let Some(id) = &id
        && !(id.is_string() || id.is_i64() || id.is_u64())
    {
        // A fractional id (`1.0`) may come back as `1`, and then match no
        // request: a tools/list result would slip through unfiltered.
        return Err(bad("an id is a string or an integer"));
    }
    match obj.remove("method") {
        Some(Value::String(method)) if !method.is_empty() => {
            let params = obj.remove("params");
            if params.as_ref().is_some_and(|p| !(p.is_object() || p.is_array())) {
                return Err(bad("params is an object or an array"));
            }
            Ok(match id {
                Some(id) => Message::Request { id, method, params },
                None => Message::Notification { method, params },
            })
        }
        Some(_) => Err(bad("method is a non-empty string")),
        None => {
            let id = id.ok_or_else(|| bad("a message without a method is a response, with an id"))?;
            if obj.contains_key("result") == obj.contains_key("error") {
                return Err(bad("a response has a result or an error"));
            }
            Ok(Message::Response { id })
        }
    }
}

/// `params` of `tools/call`: `name` (a string the check API accepts as an
/// action) and optional `arguments` (an object).
fn tool_call_params(params: Option<&Value>) -> Result<(&str, Option<&Arguments>), String> {
    let params = params.and_then(Value::as_object).ok_or("tools/call params must be an object")?;
    let name = params.get("name").and_then(Value::as_str).ok_or("tools/call needs a string name")?;
    if name.is_empty() || name.len() > MAX_TOOL_NAME || name.chars().any(char::is_control) {
        return Err(format!("a tool name is 1 to {MAX_TOOL_NAME} bytes without control characters"));
    }
    let arguments = match params.get("arguments") {
        None | Some(Value::Null) => None,
        Some(Value::Object(a)) => Some(a),
        Some(_) => return Err("tools/call arguments must be an object".into()),
    };
    Ok((name, arguments))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: &str) -> Result<Payload, GatewayError> {
        Payload::parse(v.as_bytes())
    }

    #[test]
    fn the_three_kinds_of_message() {
        let p = parse(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#).unwrap();
        assert!(!p.batch);
        assert_eq!(
            p.messages,
            [Message::Request { id: json!(1), method: "tools/list".into(), params: Some(json!({})) }]
        );
        assert_eq!(p.single_id(), Some(&json!(1)));
        assert_eq!(p.tool_list_ids(), HashSet::from(["1".to_owned()]));

        let n = parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(n.messages, [Message::Notification { method: "notifications/initialized".into(), params: None }]);
        assert_eq!(n.single_id(), None);

        let r = parse(r#"{"jsonrpc":"2.0","id":"s-1","result":{"content":[]}}"#).unwrap();
        assert_eq!(r.messages, [Message::Response { id: json!("s-1") }]);
    }

    #[test]
    fn tool_calls_are_read_strictly() {
        let p = parse(
            r#"[{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"send","arguments":{"to":"x"}}},
                {"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"list"}},
                {"jsonrpc":"2.0","id":8,"method":"tools/list"}]"#,
        )
        .unwrap();
        assert!(p.batch);
        assert_eq!(p.single_id(), None);
        let calls = p.tool_calls().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!((calls[0].id, calls[0].name), (&json!("a"), "send"));
        assert_eq!(calls[0].arguments, json!({"to": "x"}).as_object());
        assert_eq!((calls[1].name, calls[1].arguments), ("list", None));
        // "8" as a string would be another id.
        assert_eq!(p.tool_list_ids(), HashSet::from(["8".to_owned()]));

        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":3}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":""}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\u0000b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":[1]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["a"]}"#,
        ] {
            assert!(matches!(parse(bad).unwrap().tool_calls(), Err(GatewayError::InvalidParams(_))), "{bad}");
        }
        let long =
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{}"}}}}"#, "a".repeat(257));
        assert!(matches!(parse(&long).unwrap().tool_calls(), Err(GatewayError::InvalidParams(_))));
        let notification = r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"send"}}"#;
        assert!(matches!(parse(notification).unwrap().tool_calls(), Err(GatewayError::InvalidRequest(_))));
    }

    #[test]
    fn what_is_not_json_rpc_is_refused() {
        for (bad, parse_error) in [
            ("", true),
            ("{", true),
            ("not json", true),
            (r#"{"jsonrpc":"2.0","id":1,"method":"a"} trailing"#, true),
            // Two readings of one body: refused before either is used.
            (r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","name":"rm"}}"#, true),
            (r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list"}"#, true),
            ("[]", false),
            ("3", false),
            (r#"{"id":1,"method":"a"}"#, false),
            (r#"{"jsonrpc":"1.0","id":1,"method":"a"}"#, false),
            (r#"{"jsonrpc":"2.0","id":null,"method":"a"}"#, false),
            (r#"{"jsonrpc":"2.0","id":{},"method":"a"}"#, false),
            // A fractional id may come back as an integer, matching nothing.
            (r#"{"jsonrpc":"2.0","id":1.0,"method":"tools/list"}"#, false),
            (r#"{"jsonrpc":"2.0","id":1e0,"method":"tools/list"}"#, false),
            (r#"{"jsonrpc":"2.0","id":1,"method":""}"#, false),
            (r#"{"jsonrpc":"2.0","id":1,"method":5}"#, false),
            (r#"{"jsonrpc":"2.0","id":1,"method":"a","params":"x"}"#, false),
            (r#"{"jsonrpc":"2.0","id":1}"#, false),
            (r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#, false),
            (r#"{"jsonrpc":"2.0","result":1}"#, false),
            (r#"[{"jsonrpc":"2.0","id":1,"method":"a"}, 5]"#, false),
        ] {
            let got = parse(bad);
            if parse_error {
                assert!(matches!(got, Err(GatewayError::Parse(_))), "{bad}: {got:?}");
            } else {
                assert!(matches!(got, Err(GatewayError::InvalidRequest(_))), "{bad}: {got:?}");
            }
        }
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(matches!(parse(&deep), Err(GatewayError::Parse(_))));
        let too_many: Vec<Value> =
            (0..=MAX_BATCH).map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "ping"})).collect();
        assert!(matches!(parse(&Value::Array(too_many).to_string()), Err(GatewayError::InvalidRequest(_))));
    }
}
