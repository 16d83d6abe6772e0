//! How a client finds Mandate: 401 challenges naming the RFC 9728 metadata.

use axum::http::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_request_without_a_token_is_told_where_to_get_one() {
    let (m, u, gw) = world().await;
    let resp = gw.post(None, list(1).to_string()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let meta_url = format!("{}/.well-known/oauth-protected-resource{MCP_PREFIX}", gw.url);
    assert_eq!(
        www_authenticate(&resp),
        format!(r#"Bearer scope="tools.read tools.write", resource_metadata="{meta_url}""#)
    );
    let body = json_body(resp).await;
    assert_eq!(body["error"]["code"], mandate_gateway::code::UNAUTHORIZED);

    // The metadata names Mandate.
    let resp = gw.http.get(&meta_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let meta = json_body(resp).await;
    assert_eq!(meta["resource"], MCP_RESOURCE);
    assert_eq!(meta["authorization_servers"], json!([m.url]));
    assert_eq!(meta["scopes_supported"], json!(["tools.read", "tools.write"]));
    assert_eq!(meta["bearer_methods_supported"], json!(["header"]));

    // Each route has its own; others are 404.
    let api_meta = json_body(
        gw.http.get(format!("{}/.well-known/oauth-protected-resource{API_PREFIX}", gw.url)).send().await.unwrap(),
    )
    .await;
    assert_eq!(api_meta["resource"], API_RESOURCE);
    assert!(api_meta.get("scopes_supported").is_none());
    for missing in ["/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp", "/elsewhere"]
    {
        let resp = gw.http.get(format!("{}{missing}", gw.url)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{missing}");
    }
    // A GET without a token is challenged too.
    let resp = gw.http.get(gw.mcp_url()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(u.calls(), 0);
}

#[tokio::test]
async fn garbage_and_foreign_tokens_are_invalid_token() {
    let (m, u, gw) = world().await;
    let meta_url = format!("{}/.well-known/oauth-protected-resource{MCP_PREFIX}", gw.url);
    for token in [
        "not-a-jwt".to_owned(),
        // Valid, but for another resource (SECURITY row 36).
        m.token("https://elsewhere.example"),
        // The API route's audience is not the MCP route's.
        m.token(API_RESOURCE),
    ] {
        let resp = gw.rpc(&token, list(1)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let www = www_authenticate(&resp);
        assert!(www.starts_with(r#"Bearer error="invalid_token", error_description=""#), "{www}");
        assert!(www.ends_with(&format!(r#"scope="tools.read tools.write", resource_metadata="{meta_url}""#)), "{www}");
        assert_eq!(json_body(resp).await["error"]["data"]["error"], "invalid_token");
    }
    // A token signed by someone else.
    let stranger = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA).unwrap();
    let forged = mandate_jose::access::mint(&stranger, &m.claims(MCP_RESOURCE, "tools.read")).unwrap();
    assert_eq!(gw.rpc(&forged, list(1)).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(u.calls(), 0, "nothing reached the upstream");
    assert!(m.checks().is_empty());
}

#[tokio::test]
async fn dpop_bound_tokens_need_their_proof() {
    let (m, u, gw) = world().await;
    let (token, holder) = m.bound_token(MCP_RESOURCE);
    let htu = gw.mcp_url();
    let send = |proof: Option<String>| {
        let mut req = gw
            .http
            .post(gw.mcp_url())
            .header("content-type", "application/json")
            .header("authorization", format!("DPoP {token}"))
            .body(list(1).to_string());
        if let Some(p) = proof {
            req = req.header("dpop", p);
        }
        req.send()
    };
    let resp = send(None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let www = www_authenticate(&resp);
    assert!(www.starts_with(r#"DPoP algs="EdDSA ES256", error="invalid_dpop_proof""#), "{www}");
    assert_eq!(u.calls(), 0);

    let resp = send(Some(proof(&holder, "POST", &htu, &token, "p1"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = u.last();
    assert!(seen.headers.get("dpop").is_none(), "the proof is not forwarded");
    assert_ne!(seen.headers["authorization"].to_str().unwrap(), format!("DPoP {token}"));
    // A replayed proof is refused.
    let resp = send(Some(proof(&holder, "POST", &htu, &token, "p1"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}
