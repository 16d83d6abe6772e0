use mandate_testkit::TestServer;
use reqwest::Method;
use serde_json::json;

fn is_problem(body: &serde_json::Value, kind: &str) -> bool {
    body["type"] == format!("urn:mandate:problem:{kind}") && body["status"].is_u64() && body["detail"].is_string()
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_token() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (st, body) =
        s.call(Method::POST, "/v1/users", None, Some(json!({"name": "A", "email": "a@example.com"}))).await?;
    assert_eq!(st, 401);
    assert!(is_problem(&body, "unauthenticated"), "{body}");
    let (st, _) = s
        .call(
            Method::POST,
            "/v1/users",
            Some("wrong-token-wrong-token"),
            Some(json!({"name": "A", "email": "a@example.com"})),
        )
        .await?;
    assert_eq!(st, 401);
    // A user's own token cannot administer.
    let user = s.create_user("u@example.com").await?;
    let (st, body) = s.admin(Method::POST, &format!("/v1/users/{user}/tokens"), None).await?;
    assert_eq!(st, 201);
    let user_token = body["token"].as_str().unwrap_or_default().to_owned();
    let (st, body) = s
        .call(Method::POST, "/v1/users", Some(&user_token), Some(json!({"name": "B", "email": "b@example.com"})))
        .await?;
    assert_eq!(st, 403, "{body}");
    // ... but reads its own record.
    let (st, body) = s.call(Method::GET, &format!("/v1/users/{user}"), Some(&user_token), None).await?;
    assert_eq!((st, body["id"].as_str()), (200, Some(user.as_str())));
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bad_input_is_refused_with_problem_json_and_changes_nothing() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let owner = s.create_user("owner@example.com").await?;
    let cases = vec![
        ("unknown field", "/v1/users", json!({"name": "A", "email": "a@example.com", "role": "admin"})),
        ("confusable name", "/v1/users", json!({"name": "p\u{0430}ypal", "email": "p@example.com"})),
        ("zero-width name", "/v1/users", json!({"name": "pay\u{200B}pal", "email": "p@example.com"})),
        ("bidi name", "/v1/users", json!({"name": "evil\u{202E}gpj", "email": "p@example.com"})),
        ("bad email", "/v1/users", json!({"name": "A", "email": "not-an-email"})),
        ("wrong type", "/v1/users", json!({"name": 7, "email": "a@example.com"})),
        (
            "sql in group",
            "/v1/users",
            json!({"name": "A", "email": "a@example.com", "groups": ["x'; DROP TABLE users;--"]}),
        ),
        ("agent without owner", "/v1/agents", json!({"name": "A"})),
        (
            "agent with unknown owner",
            "/v1/agents",
            json!({"name": "A", "owner": "usr_01JZZZZZZZZZZZZZZZZZZZZZZZ", "jwks": {"keys": []}}),
        ),
        (
            "agent with a user id as owner of wrong kind",
            "/v1/agents",
            json!({"name": "A", "owner": "agt_01JZZZZZZZZZZZZZZZZZZZZZZZ"}),
        ),
        (
            "agent with a private key",
            "/v1/agents",
            json!({"name": "A", "owner": owner, "jwks": {"keys": [{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}]}}),
        ),
        (
            "agent with a symmetric key",
            "/v1/agents",
            json!({"name": "A", "owner": owner, "jwks": {"keys": [{"kty":"oct","k":"c2VjcmV0"}]}}),
        ),
        ("agent without keys (secrets off)", "/v1/agents", json!({"name": "A", "owner": owner})),
        (
            "persistent agent with ttl",
            "/v1/agents",
            json!({"name": "A", "owner": owner, "ttl_seconds": 60, "jwks": {"keys": [{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}),
        ),
        (
            "resource without https",
            "/v1/resources",
            json!({"identifier": "ftp://x", "name": "X", "scopes": {"read": []}}),
        ),
        (
            "resource with fragment",
            "/v1/resources",
            json!({"identifier": "https://x.example#f", "name": "X", "scopes": {"read": []}}),
        ),
        (
            "resource without scopes",
            "/v1/resources",
            json!({"identifier": "https://x.example", "name": "X", "scopes": {}}),
        ),
        (
            "resource with a bad scope",
            "/v1/resources",
            json!({"identifier": "https://x.example", "name": "X", "scopes": {"re\"ad": []}}),
        ),
        (
            "resource reserving mandate:",
            "/v1/resources",
            json!({"identifier": "https://x.example", "name": "X", "scopes": {"s": ["mandate:spawn"]}}),
        ),
        (
            "resource named like the issuer",
            "/v1/resources",
            json!({"identifier": s.url, "name": "X", "scopes": {"read": []}}),
        ),
    ];
    for (name, path, body) in cases {
        let (st, resp) = s.admin(Method::POST, path, Some(body)).await?;
        assert_eq!(st, 400, "{name}: {resp}");
        assert!(is_problem(&resp, "invalid-input"), "{name}: {resp}");
    }
    // Raw bodies: duplicate keys, depth, size, media type, not JSON.
    let raw = |body: Vec<u8>, ct: &'static str| {
        s.http
            .post(format!("{}/v1/users", s.url))
            .bearer_auth(mandate_testkit::server_admin_token())
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let deep = format!("{{\"name\":{}1{}}}", "[".repeat(100), "]".repeat(100));
    for (name, body, ct, want) in [
        ("duplicate keys", br#"{"name":"A","name":"B","email":"a@example.com"}"#.to_vec(), "application/json", 400),
        ("deep nesting", deep.into_bytes(), "application/json", 400),
        ("not json", b"name=A".to_vec(), "application/json", 400),
        ("non-utf8", vec![b'{', 0xff, b'}'], "application/json", 400),
        ("form body", br#"{"name":"A","email":"a@example.com"}"#.to_vec(), "text/plain", 415),
        ("oversized", vec![b' '; 200_000], "application/json", 413),
    ] {
        let resp = raw(body, ct).await?;
        assert_eq!(resp.status().as_u16(), want, "{name}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json", "{name}");
    }
    // Ids of the wrong shape in paths.
    let (st, _) = s.admin(Method::GET, "/v1/users/usr_1'%20OR%201=1", None).await?;
    assert_eq!(st, 400);
    let (st, body) = s.admin(Method::GET, "/v1/users/usr_01JZZZZZZZZZZZZZZZZZZZZZZZ", None).await?;
    assert_eq!(st, 404, "{body}");
    // Nothing was created by any of it: only the owner exists.
    let (st, _) = s.admin(Method::POST, "/v1/users", Some(json!({"name": "A", "email": "a@example.com"}))).await?;
    assert_eq!(st, 201, "a refused request left a user behind");
    let (st, body) = s.admin(Method::POST, "/v1/users", Some(json!({"name": "A", "email": "a@example.com"}))).await?;
    assert_eq!(st, 409, "{body}");
    assert!(is_problem(&body, "conflict"));
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn policies_are_validated_versioned_and_replaced_atomically() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    s.create_resource("https://api.example.com", json!({"read": [], "mail": ["send", "list"]})).await?;
    let (st, body) = s
        .admin(
            Method::PUT,
            "/v1/policies",
            Some(json!({"policies": "permit(principal, action == Action::\"send\", resource);"})),
        )
        .await?;
    assert_eq!(st, 200);
    let v1 = body["version"].as_str().unwrap_or_default().to_owned();
    assert!(v1.starts_with("sha256:"));
    for bad in [
        "permit(principal, action == Action::\"delete\", resource);",
        "permit(principal is Agent, action, resource) when { principal.colour == \"red\" };",
        "permit(principal, action, resource",
    ] {
        let (st, body) = s.admin(Method::PUT, "/v1/policies", Some(json!({"policies": bad}))).await?;
        assert_eq!(st, 400, "{bad}: {body}");
    }
    let (st, body) = s.admin(Method::GET, "/v1/policies", None).await?;
    assert_eq!(st, 200);
    assert_eq!(body["version"], v1.as_str(), "a refused set replaced the current one");
    assert!(body["schema"].as_str().unwrap_or_default().contains("action \"send\""));
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn agents_can_use_dev_secrets_only_when_enabled() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| c.allow_client_secrets = true).await?;
    let owner = s.create_user("o@example.com").await?;
    s.create_resource("https://api.example.com", json!({"read": []})).await?;
    s.put_policies(r#"permit(principal is Agent, action == Action::"read", resource);"#).await?;
    let (st, body) = s.admin(Method::POST, "/v1/agents", Some(json!({"name": "Dev agent", "owner": owner}))).await?;
    assert_eq!(st, 201);
    let id = body["client_id"].as_str().unwrap_or_default().to_owned();
    let secret = body["client_secret"].as_str().unwrap_or_default().to_owned();
    assert!(secret.starts_with("mnd_secret_"));
    let (st, agent) = s.admin(Method::GET, &format!("/v1/agents/{id}"), None).await?;
    assert_eq!(st, 200);
    assert!(agent.get("client_secret").is_none() && agent.get("secret_hash").is_none(), "secret readable: {agent}");
    let ok = s
        .http
        .post(format!("{}/oauth/token", s.url))
        .basic_auth(&id, Some(&secret))
        .form(&[("grant_type", "client_credentials"), ("resource", "https://api.example.com"), ("scope", "read")])
        .send()
        .await?;
    assert_eq!(ok.status(), 200);
    let bad = s
        .http
        .post(format!("{}/oauth/token", s.url))
        .basic_auth(&id, Some("mnd_secret_wrong"))
        .form(&[("grant_type", "client_credentials"), ("resource", "https://api.example.com"), ("scope", "read")])
        .send()
        .await?;
    assert_eq!(bad.status(), 401);
    let body: serde_json::Value = bad.json().await?;
    assert_eq!(body["error"], "invalid_client");
    s.stop().await?;
    Ok(())
}

/// A policy set for thousands of agents fits the policies route (its body
/// limit is the policy-text limit, not the 64 KiB of other calls); a body
/// past that limit is 413.
#[tokio::test]
async fn large_policy_sets_are_accepted_and_oversized_ones_refused() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    s.create_resource("https://api.example.com", json!({"read": [], "write": []})).await?;
    let text: String = (0..2_000)
        .map(|i| {
            format!(
                "permit(principal == Agent::\"agt_01KQ{i:022}\", action == Action::\"read\", resource == Api::\"https://api.example.com\");\n"
            )
        })
        .collect();
    assert!(text.len() > 200_000);
    let (st, body) = s.admin(Method::PUT, "/v1/policies", Some(json!({"policies": text}))).await?;
    assert_eq!(st, 200, "{body}");
    let huge = "x".repeat(mandate_policy::MAX_POLICY_TEXT + 2 * 1024 * 1024);
    let (st, _) = s.admin(Method::PUT, "/v1/policies", Some(json!({"policies": huge}))).await?;
    assert_eq!(st, 413);
    // Other calls keep the small limit.
    let (st, _) =
        s.admin(Method::POST, "/v1/users", Some(json!({"name": "x".repeat(100_000), "email": "a@b.c"}))).await?;
    assert_eq!(st, 413);
    s.stop().await?;
    Ok(())
}

/// SECURITY row 41: a policy text nested hundreds of levels deep, or far
/// past any sane length of one statement, is refused with 400 before Cedar
/// parses it, and the server goes on serving (it used to overflow a worker's
/// stack and abort).
#[tokio::test]
async fn deeply_nested_policies_are_refused_and_the_server_survives() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, agent) = s.seed().await?;
    let before = s.admin(Method::GET, "/v1/policies", None).await?.1;
    let texts = [
        format!("permit(principal, action, resource) when {{ {}true{} }};", "(".repeat(150), ")".repeat(150)),
        format!("permit(principal, action, resource) when {{ {}true{} }};", "(".repeat(200_000), ")".repeat(200_000)),
        format!("permit(principal, action, resource) when {{ {}true }};", "[".repeat(5_000)),
        format!("permit(principal, action, resource) when {{ {} }};", vec!["true"; 100_000].join(" && ")),
        format!(
            "permit(principal, action, resource) when {{ {}true{} }};",
            "if true then ".repeat(500),
            " else false".repeat(500)
        ),
    ];
    for text in texts {
        let (st, body) = s.admin(Method::PUT, "/v1/policies", Some(json!({"policies": text}))).await?;
        assert_eq!((st, body["type"].as_str()), (400, Some("urn:mandate:problem:invalid-input")), "{body}");
        assert!(body["detail"].as_str().unwrap_or_default().contains("split it up"), "{body}");
    }
    // Still serving, and the set in force did not change.
    assert_eq!(s.admin(Method::GET, "/v1/policies", None).await?.1, before);
    let (st, body) = s.token(&agent, "https://api.example.com", "read").await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(s.http.get(format!("{}/readyz", s.url)).send().await?.status(), 200);
    s.stop().await?;
    Ok(())
}
