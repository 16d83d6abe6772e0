use mandate_jose::access::AccessTokenVerifier;
use mandate_jose::{JwkSet, PublicJwk};
use mandate_testkit::TestServer;
use reqwest::Method;
use serde_json::json;

const API: &str = "https://api.example.com";

#[tokio::test]
async fn client_credentials_issues_an_rfc9068_token() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, agent) = s.seed().await?;
    let resp = s
        .http
        .post(format!("{}/oauth/token", s.url))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
            ("client_assertion", &s.assertion(&agent, json!({}))),
            ("resource", API),
            ("scope", "read"),
        ])
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: serde_json::Value = resp.json().await?;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "read");
    let token = body["access_token"].as_str().unwrap_or_default();
    // Verify it the way a resource server would, from the published JWKS.
    let jwks: serde_json::Value = s.http.get(format!("{}/jwks.json", s.url)).send().await?.json().await?;
    let keys = jwks["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(PublicJwk::from_json)
        .collect::<Result<Vec<_>, _>>()?;
    let verifier = AccessTokenVerifier { issuer: s.url.clone(), keys: JwkSet { keys }, leeway: 60 };
    let claims = verifier.verify(token, s.now(), Some(API))?;
    assert_eq!(claims.sub, agent.id);
    assert_eq!(claims.client_id, agent.id);
    assert_eq!(claims.aud, API);
    assert_eq!(claims.exp - claims.iat, 300);
    assert!(claims.jti.starts_with("tok_"));
    let header: serde_json::Value = serde_json::from_slice(&base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        token.split('.').next().unwrap_or_default(),
    )?)?;
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    // The token is recorded, so it introspects as active.
    let intro = s.introspect(token).await?;
    assert_eq!(intro["active"], true);
    assert_eq!(intro["jti"], claims.jti.as_str());
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn token_requests_are_checked_against_resources_and_policy() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, agent) = s.seed().await?;
    let cases = [
        ("unknown resource", vec![("resource", "https://unknown.example"), ("scope", "read")], "invalid_target"),
        ("no resource", vec![("scope", "read")], "invalid_target"),
        (
            "two resources",
            vec![("resource", API), ("resource", "https://b.example"), ("scope", "read")],
            "invalid_target",
        ),
        ("scope the resource lacks", vec![("resource", API), ("scope", "admin")], "invalid_scope"),
        ("scope policy does not allow", vec![("resource", API), ("scope", "read write")], "invalid_scope"),
        ("malformed scope", vec![("resource", API), ("scope", "read  write")], "invalid_scope"),
        ("huge scope", vec![("resource", API), ("scope", "")], "invalid_scope"),
        ("spawn on the issuer without policy", vec![("resource", ""), ("scope", "mandate:spawn")], "invalid_scope"),
    ];
    let huge = "a".repeat(60_000);
    for (name, mut params, want) in cases {
        let a = s.assertion(&agent, json!({}));
        for p in params.iter_mut() {
            if name == "huge scope" && p.0 == "scope" {
                p.1 = &huge;
            }
            if p.0 == "resource" && p.1.is_empty() {
                p.1 = &s.url;
            }
        }
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
            ("client_assertion", a.as_str()),
        ];
        form.extend(params);
        let (st, body) = s.form("/oauth/token", &form).await?;
        assert_eq!((st, body["error"].as_str()), (400, Some(want)), "{name}: {body}");
        assert!(body["error_description"].is_string());
    }
    // Other grant types, repeated parameters, wrong media type.
    let a = s.assertion(&agent, json!({}));
    let (st, body) = s
        .form_asserted(&a, "/oauth/token", &[("grant_type", "password"), ("username", "u"), ("password", "p")])
        .await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("unsupported_grant_type")));
    let (st, body) =
        s.form("/oauth/token", &[("grant_type", "client_credentials"), ("grant_type", "client_credentials")]).await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_request")));
    let resp =
        s.http.post(format!("{}/oauth/token", s.url)).json(&json!({"grant_type": "client_credentials"})).send().await?;
    assert_eq!(resp.status(), 400);
    // Nothing was issued by any of it: suspending the agent finds no token to revoke.
    let (st, body) = s.admin(Method::POST, &format!("/v1/agents/{}/suspend", agent.id), None).await?;
    assert_eq!((st, body["revoked_tokens"].as_u64()), (200, Some(0)), "a refused request issued a token");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn introspection_and_revocation_follow_the_caller_rules() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (owner, agent) = s.seed().await?;
    let other = s.create_agent(&owner, mandate_jose::KeyAlg::EdDSA).await?;
    let (_, body) = s.token(&agent, API, "read").await?;
    let token = body["access_token"].as_str().unwrap_or_default().to_owned();
    // The agent the token was issued to sees it.
    let (st, body) = intro(&s, &agent, &token).await?;
    assert_eq!((st, body["active"].as_bool()), (200, Some(true)), "{body}");
    // Another agent learns nothing.
    let (st, body) = intro(&s, &other, &token).await?;
    assert_eq!(st, 200);
    assert_eq!(body, json!({"active": false}));
    // Unauthenticated callers are refused.
    let (st, body) = s.form("/oauth/introspect", &[("token", &token)]).await?;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")));
    // Garbage, unknown and forged tokens are exactly {"active": false}.
    for t in ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", &token[..token.len() - 2]] {
        let (st, body) = intro(&s, &agent, t).await?;
        assert_eq!((st, body), (200, json!({"active": false})), "{t}");
    }
    // A resource server authenticates with its own keys, and sees tokens for its aud.
    let rs_key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
    let (st, rs) = s
        .admin(Method::POST, "/v1/resources", Some(json!({"identifier": "https://rs.example.com", "name": "RS", "scopes": {"read": []}, "jwks": {"keys": [rs_key.public().to_json()]}})))
        .await?;
    assert_eq!(st, 201);
    let rs_agent = mandate_testkit::TestAgent { id: rs["id"].as_str().unwrap_or_default().to_owned(), key: rs_key };
    let (st, body) = intro(&s, &rs_agent, &token).await?;
    assert_eq!((st, body), (200, json!({"active": false})), "a resource outside the token's aud saw it");
    // Revocation by another client: 200, nothing revoked.
    let a = s.assertion(&other, json!({}));
    let (st, _) = s.form_asserted(&a, "/oauth/revoke", &[("token", &token)]).await?;
    assert_eq!(st, 200);
    assert_eq!(s.introspect(&token).await?["active"], true);
    // Revocation of unknown tokens: 200.
    let a = s.assertion(&agent, json!({}));
    let (st, _) = s.form_asserted(&a, "/oauth/revoke", &[("token", "unknown")]).await?;
    assert_eq!(st, 200);
    // The holder revokes it.
    let a = s.assertion(&agent, json!({}));
    let (st, _) = s.form_asserted(&a, "/oauth/revoke", &[("token", &token)]).await?;
    assert_eq!(st, 200);
    assert_eq!(s.introspect(&token).await?, json!({"active": false}));
    // Expiry without sleeping: move the clock.
    let (_, body) = s.token(&agent, API, "read").await?;
    let t2 = body["access_token"].as_str().unwrap_or_default().to_owned();
    assert_eq!(s.introspect(&t2).await?["active"], true);
    s.clock.advance(time::Duration::seconds(301));
    assert_eq!(s.introspect(&t2).await?, json!({"active": false}));
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_resource_server_gets_only_mandate_check() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    s.seed().await?;
    let rs_key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
    let (_, rs) = s
        .admin(Method::POST, "/v1/resources", Some(json!({"identifier": "https://rs.example.com", "name": "RS", "scopes": {"read": []}, "jwks": {"keys": [rs_key.public().to_json()]}})))
        .await?;
    let rs = mandate_testkit::TestAgent { id: rs["id"].as_str().unwrap_or_default().to_owned(), key: rs_key };
    let url = s.url.clone();
    let (st, body) = s.token(&rs, &url, "mandate:check").await?;
    assert_eq!(st, 200, "{body}");
    let (st, body) = s.token(&rs, API, "read").await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("unauthorized_client")));
    s.stop().await?;
    Ok(())
}

/// Introspects `t` authenticating as `who` with `private_key_jwt`.
async fn intro(s: &TestServer, who: &mandate_testkit::TestAgent, t: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let a = s.assertion(who, json!({}));
    s.form_asserted(&a, "/oauth/introspect", &[("token", t)]).await
}

#[tokio::test]
async fn oversized_and_hostile_forms_are_refused() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, agent) = s.seed().await?;
    // A 1 MB scope: refused before it is parsed.
    let a = s.assertion(&agent, json!({}));
    let big = "s ".repeat(500_000);
    let (st, _) = s
        .form_asserted(&a, "/oauth/token", &[("grant_type", "client_credentials"), ("resource", API), ("scope", &big)])
        .await?;
    assert!(st == 413 || st == 400, "{st}");
    // SQL metacharacters in client_id and an iss that is not an id.
    let a = s.assertion(&agent, json!({}));
    let (st, body) = s
        .form_asserted(
            &a,
            "/oauth/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "agt_x' OR '1'='1"),
                ("resource", API),
                ("scope", "read"),
            ],
        )
        .await?;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")));
    let a = s.assertion(&agent, json!({"iss": "x' OR '1'='1", "sub": "x' OR '1'='1"}));
    let (st, body) = s.token_with(&a, API, "read").await?;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")));
    // A non-UTF-8 body.
    let resp = s
        .http
        .post(format!("{}/oauth/token", s.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a', b'=', 0xff, 0xfe])
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    // The agent is unharmed and nothing was issued.
    let (st, body) = s.admin(Method::POST, &format!("/v1/agents/{}/suspend", agent.id), None).await?;
    assert_eq!((st, body["revoked_tokens"].as_u64()), (200, Some(0)));
    s.stop().await?;
    Ok(())
}
