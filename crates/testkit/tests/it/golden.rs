//! Golden files for the contract: discovery, the JWKS shape and error
//! bodies. A change to any of them is a visible diff in `snapshots/`.

use mandate_testkit::TestServer;
use reqwest::Method;
use serde_json::{Value, json};

/// Replaces values that differ per run (issuer URL, key material, ids).
fn stable(mut v: Value, s: &TestServer) -> Value {
    fn walk(v: &mut Value, url: &str) {
        match v {
            Value::String(text) => *text = text.replace(url, "http://ISSUER"),
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, url)),
            Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    if matches!(k.as_str(), "x" | "y" | "kid" | "request_id") {
                        *val = json!("[redacted]");
                    } else {
                        walk(val, url);
                    }
                }
            }
            _ => {}
        }
    }
    walk(&mut v, &s.url);
    v
}

#[tokio::test]
async fn discovery_document() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let m: Value = s.http.get(format!("{}/.well-known/oauth-authorization-server", s.url)).send().await?.json().await?;
    insta::assert_json_snapshot!(stable(m, &s));
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn jwks_shape() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let jwks: Value = s.http.get(format!("{}/jwks.json", s.url)).send().await?.json().await?;
    insta::assert_json_snapshot!(stable(jwks, &s));
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn error_bodies() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, agent) = s.seed().await?;
    let (_, invalid_scope) = s.token(&agent, "https://api.example.com", "write").await?;
    let (_, invalid_target) = s.token(&agent, "https://unknown.example", "read").await?;
    let (_, invalid_client) = s.form("/oauth/token", &[("grant_type", "client_credentials")]).await?;
    let (_, unsupported) = s.form("/oauth/token", &[("grant_type", "password")]).await?;
    let (_, unauthenticated) = s.call(Method::POST, "/v1/users", None, Some(json!({}))).await?;
    let (_, invalid_input) =
        s.admin(Method::POST, "/v1/users", Some(json!({"name": "A", "email": "a@example.com", "role": "x"}))).await?;
    let (_, not_found) = s.admin(Method::GET, "/v1/agents/agt_01JZZZZZZZZZZZZZZZZZZZZZZZ", None).await?;
    insta::assert_json_snapshot!(stable(
        json!({
            "invalid_scope": invalid_scope,
            "invalid_target": invalid_target,
            "invalid_client": invalid_client,
            "unsupported_grant_type": unsupported,
            "unauthenticated": unauthenticated,
            "invalid_input": invalid_input,
            "not_found": not_found,
        }),
        &s
    ));
    s.stop().await?;
    Ok(())
}
