use mandate_testkit::TestServer;
use reqwest::Method;
use serde_json::json;

const API: &str = "https://api.example.com";

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap_or_default();
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    v["kid"].as_str().unwrap_or_default().to_owned()
}

async fn kids(s: &TestServer) -> anyhow::Result<Vec<String>> {
    let jwks: serde_json::Value = s.http.get(format!("{}/jwks.json", s.url)).send().await?.json().await?;
    Ok(jwks["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or_default().to_owned())
        .collect())
}

#[tokio::test]
async fn rotation_keeps_the_old_key_until_its_tokens_expire() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, agent) = s.seed().await?;
    let (_, body) = s.token(&agent, API, "read").await?;
    let old_token = body["access_token"].as_str().unwrap_or_default().to_owned();
    let old_kid = kid_of(&old_token);
    assert_eq!(kids(&s).await?, vec![old_kid.clone()]);

    let (st, body) = s.admin(Method::POST, "/v1/keys/rotate", Some(json!({"alg": "ES256"}))).await?;
    assert_eq!(st, 200, "{body}");
    let new_kid = body["kid"].as_str().unwrap_or_default().to_owned();
    let published = kids(&s).await?;
    assert!(published.contains(&old_kid) && published.contains(&new_kid), "{published:?}");

    let (_, body) = s.token(&agent, API, "read").await?;
    let new_token = body["access_token"].as_str().unwrap_or_default().to_owned();
    assert_eq!(kid_of(&new_token), new_kid);
    let header: serde_json::Value = serde_json::from_slice(&base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        new_token.split('.').next().unwrap_or_default(),
    )?)?;
    assert_eq!(header["alg"], "ES256");
    assert_eq!(s.introspect(&old_token).await?["active"], true, "a token of the old key died at rotation");
    assert_eq!(s.introspect(&new_token).await?["active"], true);

    // Once every token of the old key has expired, it is withdrawn.
    s.clock.advance(time::Duration::seconds(300 + 61));
    s.mandate.sync_from_store().await?;
    assert_eq!(kids(&s).await?, vec![new_kid]);

    // Only the admin rotates; unknown algorithms are refused.
    let (st, _) = s.call(Method::POST, "/v1/keys/rotate", None, None).await?;
    assert_eq!(st, 401);
    let (st, _) = s.admin(Method::POST, "/v1/keys/rotate", Some(json!({"alg": "HS256"}))).await?;
    assert_eq!(st, 400);
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn es256_can_be_the_default_signing_algorithm() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| c.signing_alg = mandate_jose::KeyAlg::ES256).await?;
    let jwks: serde_json::Value = s.http.get(format!("{}/jwks.json", s.url)).send().await?.json().await?;
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    s.stop().await?;
    Ok(())
}
