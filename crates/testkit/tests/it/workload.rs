//! Workload identity over HTTP, for what the third-party suite in
//! `tests/federation` cannot reach from loopback: trusted issuers on
//! private addresses (SECURITY row 48) and the registration rules. The
//! good paths and every token fault are in `tests/federation`.

use anyhow::Result;
use mandate_core::trust::{IssuerUse, TrustedIssuer};
use mandate_jose::{KeyAlg, SigningKey, jws};
use mandate_testkit::TestServer;
use reqwest::Method;
use serde_json::json;

const CI: &str = "https://ci.example.com";
const PRIVATE: [&str; 3] = ["https://10.0.0.7", "https://169.254.169.254", "https://[fd00::1]"];

fn trusted(issuer: &str) -> TrustedIssuer {
    TrustedIssuer { issuer: issuer.into(), jwks_uri: None, uses: [IssuerUse::Workload].into(), resolve_by_email: false }
}

async fn server() -> Result<TestServer> {
    TestServer::start_with(|c| {
        c.trusted_issuers = std::iter::once(CI).chain(PRIVATE).map(trusted).collect();
    })
    .await
}

#[tokio::test]
async fn a_trusted_issuer_on_a_private_address_is_never_fetched_and_nothing_is_issued() -> Result<()> {
    let s = server().await?;
    let owner = s.create_user("ops@example.com").await?;
    let key = SigningKey::generate(KeyAlg::ES256)?;
    for issuer in PRIVATE {
        let (st, agent) = s
            .admin(
                Method::POST,
                "/v1/agents",
                Some(json!({"name": "job", "owner": owner,
                            "federated_credentials": [{"issuer": issuer, "subject": "job-1"}]})),
            )
            .await?;
        anyhow::ensure!(st == 201, "register: {st} {agent}");
        let now = s.now();
        let jwt = jws::sign(
            &key,
            "JWT",
            &json!({"iss": issuer, "sub": "job-1", "aud": s.issuer, "iat": now, "exp": now + 300, "jti": "j"}),
        )?;
        let before = s.audit("type=token.issued").await?.len();
        let (st, body) = s
            .form(
                "/oauth/token",
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", &jwt),
                    ("resource", &s.issuer),
                    ("scope", "mandate:check"),
                ],
            )
            .await?;
        // The fetch is refused by the guard before any connection: the
        // keys cannot be had, so the request fails closed.
        assert_eq!((st, body["error"].as_str()), (503, Some("temporarily_unavailable")), "{issuer}: {body}");
        assert!(body.get("access_token").is_none());
        assert_eq!(s.audit("type=token.issued").await?.len(), before, "{issuer}: something was issued");
    }
    Ok(())
}

#[tokio::test]
async fn rules_name_trusted_issuers_and_an_agent_keeps_a_credential() -> Result<()> {
    let s = server().await?;
    let owner = s.create_user("ops@example.com").await?;
    let register = |rules: serde_json::Value| {
        s.admin(
            Method::POST,
            "/v1/agents",
            Some(json!({"name": "job", "owner": owner, "federated_credentials": rules})),
        )
    };
    for bad in [
        json!([{"issuer": "https://untrusted.example", "subject": "x"}]),
        json!([{"issuer": CI, "subject": "x", "subject_pattern": "x*"}]),
        json!([{"issuer": CI}]),
        json!([{"issuer": CI, "subject_pattern": "*"}]),
        json!([{"issuer": CI, "subject": "x", "claims": {"aud": "y"}}]),
        json!([{"issuer": CI, "subject": "x", "bogus": true}]),
    ] {
        let before = s.audit("type=agent.created").await?.len();
        let (st, body) = register(bad.clone()).await?;
        assert_eq!(st, 400, "{bad}: {body}");
        assert_eq!(s.audit("type=agent.created").await?.len(), before, "{bad}: an agent was created");
    }
    let (st, agent) = register(json!([{"issuer": CI, "subject_pattern": "repo:acme/*"}])).await?;
    assert_eq!(st, 201, "{agent}");
    assert!(agent.get("client_secret").is_none(), "a federated agent got a secret: {agent}");
    let id = agent["id"].as_str().unwrap_or_default().to_owned();
    // Removing its only credential is refused; replacing it is audited.
    let (st, body) =
        s.admin(Method::PATCH, &format!("/v1/agents/{id}"), Some(json!({"federated_credentials": []}))).await?;
    assert_eq!(st, 400, "{body}");
    let (st, body) = s
        .admin(
            Method::PATCH,
            &format!("/v1/agents/{id}"),
            Some(json!({"federated_credentials": [{"issuer": CI, "subject": "repo:acme/app"}]})),
        )
        .await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["federated_credentials"][0]["subject"], "repo:acme/app");
    let updated = s.audit("type=agent.updated").await?;
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0]["resource"], id.as_str());
    Ok(())
}
