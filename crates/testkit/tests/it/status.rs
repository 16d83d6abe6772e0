//! Token Status List over HTTP: every token names its entry, the list is
//! signed, and a revocation (direct or cascaded) shows at once (SECURITY
//! row 28).

use anyhow::{Result, ensure};
use mandate_jose::JwkSet;
use mandate_jose::statuslist::{self, StatusBits};
use mandate_testkit::scenarios::{CAL, World, claims};
use mandate_testkit::{ADMIN_TOKEN, TestServer};
use reqwest::Method;
use serde_json::Value;

const CC: &[(&str, &str)] = &[("grant_type", "client_credentials"), ("resource", CAL), ("scope", "read")];

/// Fetches and verifies the list a token names; returns the bit for it.
async fn bit_of(w: &World, token: &str) -> Result<bool> {
    let c = claims(token);
    let uri = c["status"]["status_list"]["uri"].as_str().unwrap_or_default().to_owned();
    let idx = c["status"]["status_list"]["idx"].as_u64().unwrap_or(u64::MAX);
    let (list, _) = fetch(w, &uri).await?;
    list.is_invalid(idx).ok_or_else(|| anyhow::anyhow!("index {idx} beyond the list"))
}

async fn fetch(w: &World, uri: &str) -> Result<(StatusBits, reqwest::header::HeaderMap)> {
    let resp = reqwest::get(uri).await?;
    ensure!(resp.status() == 200, "GET {uri}: {}", resp.status());
    let headers = resp.headers().clone();
    let text = resp.text().await?;
    let jwks: Value = reqwest::get(format!("{}/jwks.json", w.s.url)).await?.json().await?;
    let keys = JwkSet::from_json(&jwks)?;
    let (claims, list) = statuslist::verify(&text, &keys, uri, w.s.now())?;
    ensure!(claims.ttl == 60 && claims.exp > claims.iat, "ttl and exp: {claims:?}");
    ensure!(list.len() >= 1 << 20, "a list holds 2^20 statuses");
    Ok((list, headers))
}

fn token_of(body: &Value) -> String {
    body["access_token"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_revoked_token_is_invalid_in_the_signed_list_at_once() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let (st, body) = w.grant(&w.planner, CC).await?;
    assert_eq!(st, 200, "{body}");
    let token = token_of(&body);
    let status = &claims(&token)["status"]["status_list"];
    assert_eq!(status["uri"], format!("{}/statuslists/0", w.s.issuer));
    let (_, headers) = fetch(&w, status["uri"].as_str().unwrap_or_default()).await?;
    assert_eq!(headers["content-type"], "application/statuslist+jwt");
    assert_eq!(headers["cache-control"], "public, max-age=60");
    assert!(!bit_of(&w, &token).await?, "a live token is valid");

    let (st, _, _) =
        w.s.form_headers("/oauth/revoke", &[("token", &token)], &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))])
            .await?;
    assert_eq!(st, 200);
    assert!(bit_of(&w, &token).await?, "the revocation shows in the next fetch");

    // Unknown lists.
    for path in ["/statuslists/7", "/statuslists/abc", "/statuslists/18446744073709551615"] {
        let (st, _) = w.s.call(Method::GET, path, None, None).await?;
        assert_eq!(st, 404, "{path}");
    }
    Ok(())
}

#[tokio::test]
async fn indexes_are_never_reused_across_blocks() -> Result<()> {
    let w = World::new(TestServer::start_with(|c| c.status_block = 64).await?).await?;
    let mut seen = std::collections::HashSet::new();
    // More than four reserved blocks of 64.
    for _ in 0..300 {
        let (st, body) = w.grant(&w.planner, CC).await?;
        assert_eq!(st, 200, "{body}");
        let idx = claims(&token_of(&body))["status"]["status_list"]["idx"].as_u64().unwrap_or(u64::MAX);
        assert!(seen.insert(idx), "index {idx} handed out twice");
    }
    Ok(())
}

/// The next block is reserved while requests go on taking indexes from
/// the one in use: many requests at once, across several blocks, still
/// never share an index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_across_blocks_never_share_an_index() -> Result<()> {
    let w = World::new(TestServer::start_with(|c| c.status_block = 256).await?).await?;
    let issue = |n: usize| {
        let w = &w;
        async move {
            let mut idx = Vec::with_capacity(n);
            for _ in 0..n {
                let (st, body) = w.grant(&w.planner, CC).await?;
                ensure!(st == 200, "{body}");
                let claims = claims(&token_of(&body));
                let i = claims["status"]["status_list"]["idx"].as_u64();
                idx.push(i.ok_or_else(|| anyhow::anyhow!("a token without a status index: {claims}"))?);
            }
            anyhow::Ok(idx)
        }
    };
    // 8 × 80 = 640 tokens: two blocks of 256 used up, a third begun.
    let (a, b, c, d, e, f, g, h) =
        tokio::join!(issue(80), issue(80), issue(80), issue(80), issue(80), issue(80), issue(80), issue(80));
    let mut seen = std::collections::HashSet::new();
    for idx in [a?, b?, c?, d?, e?, f?, g?, h?].into_iter().flatten() {
        ensure!(seen.insert(idx), "index {idx} handed out twice");
    }
    ensure!(seen.len() == 640, "{} indexes", seen.len());
    Ok(())
}

#[tokio::test]
async fn revoking_a_grant_marks_every_token_beneath_it() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let tokens = w.granted(&w.planner, "read").await?;
    let access = token_of(&tokens);
    let helper = w.spawn(&w.planner, serde_json::json!({})).await?;
    let (st, child) = w.exchange(&helper, &access, &[]).await?;
    assert_eq!(st, 200, "{child}");
    let child = token_of(&child);
    assert!(!bit_of(&w, &access).await? && !bit_of(&w, &child).await?);
    let grant = claims(&access)["grant_id"].as_str().unwrap_or_default().to_owned();
    let (st, body) = w.s.call(Method::POST, &format!("/v1/grants/{grant}/revoke"), Some(&w.alice_token), None).await?;
    assert_eq!(st, 200, "{body}");
    assert!(bit_of(&w, &access).await?, "the grant's token is invalid");
    assert!(bit_of(&w, &child).await?, "the exchanged child is invalid too");
    Ok(())
}

#[tokio::test]
async fn a_store_keeps_the_list_size_it_started_with() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let clock =
        std::sync::Arc::new(mandate_core::ManualClock::new(mandate_core::Clock::now(&mandate_core::SystemClock)));
    let s = TestServer::start_in(dir.path(), clock.clone(), |_| {}).await?;
    s.stop().await?;
    // Another size on the same store would move every token's bit: refused.
    let other = TestServer::start_in(dir.path(), clock.clone(), |c| c.status_list_size = 1 << 16).await;
    assert!(other.is_err(), "a node started with another status-list size");
    let again = TestServer::start_in(dir.path(), clock, |_| {}).await?;
    again.stop().await?;
    Ok(())
}
