use mandate_testkit::TestServer;

#[tokio::test]
async fn metadata_is_true_to_what_is_implemented() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    // Mandate issues no ID tokens: no OpenID configuration, which OIDC
    // clients would read as a promise of them.
    let resp = s.http.get(format!("{}/.well-known/openid-configuration", s.url)).send().await?;
    assert_eq!(resp.status(), 404);
    for path in ["/.well-known/oauth-authorization-server"] {
        let resp = s.http.get(format!("{}{path}", s.url)).send().await?;
        assert_eq!(resp.status(), 200);
        let m: serde_json::Value = resp.json().await?;
        assert_eq!(m["issuer"], s.url.as_str());
        assert_eq!(m["token_endpoint"], format!("{}/oauth/token", s.url));
        assert_eq!(
            m["grant_types_supported"],
            serde_json::json!([
                "authorization_code",
                "client_credentials",
                "refresh_token",
                "urn:ietf:params:oauth:grant-type:token-exchange",
                "urn:openid:params:grant-type:ciba"
            ])
        );
        assert_eq!(m["authorization_endpoint"], format!("{}/oauth/authorize", s.url));
        assert_eq!(m["code_challenge_methods_supported"], serde_json::json!(["S256"]));
        assert_eq!(m["response_types_supported"], serde_json::json!(["code"]));
        assert!(m.get("resource_indicators_supported").is_none(), "an unregistered member");
        assert!(m.get("service_documentation").is_none(), "advertised without being configured");
        assert_eq!(m["scopes_supported"], serde_json::json!(["offline_access"]), "no resources yet");
        assert_eq!(m["authorization_response_iss_parameter_supported"], true);
        assert_eq!(m["dpop_signing_alg_values_supported"], serde_json::json!(["EdDSA", "Ed25519", "ES256"]));
        assert_eq!(m["backchannel_authentication_endpoint"], format!("{}/oauth/bc-authorize", s.url));
        assert_eq!(m["backchannel_token_delivery_modes_supported"], serde_json::json!(["poll", "ping", "push"]));
        assert_eq!(m["token_endpoint_auth_methods_supported"], serde_json::json!(["private_key_jwt", "none"]));
        assert_eq!(m["introspection_endpoint_auth_methods_supported"], serde_json::json!(["private_key_jwt"]));
        assert_eq!(m["client_id_metadata_document_supported"], false, "no registration owner");
        assert_eq!(
            m["token_endpoint_auth_signing_alg_values_supported"],
            serde_json::json!(["EdDSA", "Ed25519", "ES256"])
        );
        // Every advertised endpoint answers.
        for key in ["jwks_uri"] {
            let url = m[key].as_str().unwrap_or_default();
            assert_eq!(s.http.get(url).send().await?.status(), 200, "{key}");
        }
    }
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn jwks_publishes_the_signing_key_with_a_kid() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let jwks: serde_json::Value = s.http.get(format!("{}/jwks.json", s.url)).send().await?.json().await?;
    let keys = jwks["keys"].as_array().cloned().unwrap_or_default();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");
    assert_eq!(keys[0]["alg"], "EdDSA");
    assert!(keys[0]["kid"].as_str().is_some_and(|k| k.len() == 43));
    assert!(keys[0].get("d").is_none(), "private key published");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn health_readiness_and_metrics() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    assert_eq!(s.http.get(format!("{}/healthz", s.url)).send().await?.status(), 200);
    assert_eq!(s.http.get(format!("{}/readyz", s.url)).send().await?.status(), 200);
    let (_, agent) = s.seed().await?;
    let (st, _) = s.token(&agent, "https://api.example.com", "read").await?;
    assert_eq!(st, 200);
    let (st, _) = s.token(&agent, "https://api.example.com", "write").await?;
    assert_eq!(st, 400);
    // Metrics are never on the public listener: only on one of their own.
    assert_eq!(s.http.get(format!("{}/metrics", s.url)).send().await?.status(), 404);
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let metrics_url = format!("http://{}/metrics", metrics.local_addr()?);
    tokio::spawn(mandate_server::serve_metrics(metrics, std::future::pending()));
    let text = s.http.get(&metrics_url).send().await?.text().await?;
    assert!(text.contains("mandate_http_requests_total"), "{text}");
    assert!(text.contains("mandate_tokens_issued_total"));
    assert!(text.contains("mandate_oauth_errors_total"));
    assert!(text.contains("mandate_http_request_duration_seconds"));
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn security_headers_are_set() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let resp = s.http.get(format!("{}/jwks.json", s.url)).send().await?;
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert!(resp.headers()["content-security-policy"].to_str()?.contains("frame-ancestors 'none'"));
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_problem_json() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let resp = s.http.get(format!("{}/nope", s.url)).send().await?;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = s.http.delete(format!("{}/oauth/token", s.url)).send().await?;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn browser_clients_may_call_the_oauth_endpoints_across_origins_but_not_pages_or_the_admin_api()
-> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, agent) = s.seed().await?;
    let m: serde_json::Value =
        s.http.get(format!("{}/.well-known/oauth-authorization-server", s.url)).send().await?.json().await?;
    assert!(m["scopes_supported"].as_array().is_some_and(|a| a.contains(&"read".into())), "{m}");
    for path in
        ["/.well-known/oauth-authorization-server", "/jwks.json", "/oauth/token", "/oauth/revoke", "/oauth/introspect"]
    {
        // A preflight from a browser-based MCP client.
        let resp = s
            .http
            .request(reqwest::Method::OPTIONS, format!("{}{path}", s.url))
            .header("origin", "http://localhost:6274")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, dpop, mcp-protocol-version")
            .send()
            .await?;
        assert_eq!(resp.status(), 204, "{path}");
        assert_eq!(resp.headers()["access-control-allow-origin"], "*", "{path}");
        let allowed = resp.headers()["access-control-allow-headers"].to_str()?.to_ascii_lowercase();
        assert!(allowed.contains("dpop") && allowed.contains("mcp-protocol-version"), "{path}: {allowed}");
        assert!(resp.headers().get("access-control-allow-credentials").is_none(), "{path}");
        // A bare OPTIONS, too.
        let resp = s.http.request(reqwest::Method::OPTIONS, format!("{}{path}", s.url)).send().await?;
        assert_eq!(resp.status(), 204, "{path}");
    }
    // The answer itself carries the header, an error included.
    let (st, _) = s.token(&agent, "https://api.example.com", "read").await?;
    assert_eq!(st, 200);
    let resp = s
        .http
        .post(format!("{}/oauth/token", s.url))
        .header("origin", "http://localhost:6274")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let exposed = resp.headers()["access-control-expose-headers"].to_str()?.to_ascii_lowercase();
    assert!(exposed.contains("www-authenticate") && exposed.contains("dpop-nonce"), "{exposed}");
    // Without Origin, no CORS headers, but a Vary for shared caches.
    let resp = s.http.get(format!("{}/jwks.json", s.url)).send().await?;
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    assert!(resp.headers().get_all("vary").iter().any(|v| v.to_str().is_ok_and(|v| v.contains("origin"))));
    // Never on pages or the admin API.
    for path in ["/login", "/v1/users", "/v1/check", "/oauth/authorize"] {
        let resp = s
            .http
            .request(reqwest::Method::OPTIONS, format!("{}{path}", s.url))
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .send()
            .await?;
        assert!(resp.headers().get("access-control-allow-origin").is_none(), "{path}");
        let resp = s.http.get(format!("{}{path}", s.url)).header("origin", "https://evil.example").send().await?;
        assert!(resp.headers().get("access-control-allow-origin").is_none(), "{path}");
    }
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_issuer_with_a_path_serves_its_metadata_and_endpoints_under_it() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| {
        c.issuer = format!("{}/tenant", c.issuer);
        c.service_documentation = Some("https://docs.example/mandate".into());
    })
    .await?;
    // RFC 8414 §3.1: the well-known segment goes before the path.
    let resp = s.http.get(format!("{}/.well-known/oauth-authorization-server/tenant", s.url)).send().await?;
    assert_eq!(resp.status(), 200);
    let m: serde_json::Value = resp.json().await?;
    assert_eq!(m["issuer"], format!("{}/tenant", s.url));
    assert_eq!(m["service_documentation"], "https://docs.example/mandate");
    for key in ["jwks_uri", "token_endpoint", "introspection_endpoint", "revocation_endpoint", "authorization_endpoint"]
    {
        let url = m[key].as_str().unwrap_or_default();
        assert!(url.starts_with(&format!("{}/tenant/", s.url)), "{key}: {url}");
        let st = s.http.get(url).send().await?.status();
        assert_ne!(st, 404, "{key} is not served at {url}");
    }
    // A token from the advertised endpoint, with the issuer as audience.
    let (_, agent) = s.seed().await?;
    let a = s.assertion(&agent, serde_json::json!({}));
    let params = [("grant_type", "client_credentials"), ("resource", "https://api.example.com"), ("scope", "read")];
    let (st, body) = s.form_asserted(&a, "/tenant/oauth/token", &params).await?;
    assert_eq!(st, 200, "{body}");
    s.stop().await?;
    Ok(())
}
