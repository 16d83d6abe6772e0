//! A resource's gateway (DESIGN §9): the agent a resource names may ask the
//! check API about that resource's tokens, learns which scope would cover
//! a denied action, and exchanges those tokens only for the audiences the
//! resource lists, with itself in `act`.

use anyhow::Result;
use mandate_jose::KeyAlg;
use mandate_testkit::TestServer;
use mandate_testkit::scenarios::{CAL, World, claims};
use reqwest::Method;
use serde_json::{Value, json};

const GW: &str = "https://gateway.example/mcp/calendar";

async fn check(w: &World, checker: &str, token: &str, action: &str) -> Result<(u16, Value)> {
    w.s.call(
        Method::POST,
        "/v1/check",
        Some(checker),
        Some(json!({"token": token, "action": action, "resource": {"type": "tool", "id": action}})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_checks_and_exchanges_only_its_resources_tokens() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let gw = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    // Only a registered, confidential, persistent agent can be a gateway.
    let (st, body) =
        w.s.admin(
            Method::POST,
            "/v1/resources",
            Some(json!({"identifier": GW, "name": "Gateway", "scopes": {"read": ["list"]}, "exchange_to": [CAL]})),
        )
        .await?;
    assert_eq!(st, 400, "exchange_to without a gateway: {body}");
    let (st, body) =
        w.s.admin(
            Method::POST,
            "/v1/resources",
            Some(json!({"identifier": GW, "name": "Gateway", "scopes": {"read": ["list", "get"], "write": ["create"]},
                        "gateway": gw.id, "exchange_to": [CAL]})),
        )
        .await?;
    assert_eq!(st, 201, "{body}");
    assert_eq!((body["gateway"].as_str(), body["exchange_to"][0].as_str()), (Some(gw.id.as_str()), Some(CAL)));

    // Alice lets the planner read through the gateway.
    let (st, body) = w
        .ciba(
            &w.planner,
            &[("login_hint", "alice@example.com"), ("scope", "read"), ("resource", GW), ("binding_message", "plan")],
        )
        .await?;
    assert_eq!(st, 200, "{body}");
    let (st, tokens) = w.poll(&w.planner, body["auth_req_id"].as_str().unwrap_or_default()).await?;
    assert_eq!(st, 200, "{tokens}");
    let client_token = tokens["access_token"].as_str().unwrap_or_default().to_owned();
    let cal_token = w.granted(&w.planner, "read").await?["access_token"].as_str().unwrap_or_default().to_owned();

    // The gateway's own mandate:check token; another agent gets none.
    let (st, body) = w.s.token(&gw, &w.s.issuer, "mandate:check").await?;
    assert_eq!(st, 200, "{body}");
    let checker = body["access_token"].as_str().unwrap_or_default().to_owned();
    let (st, body) = w.s.token(&w.planner, &w.s.issuer, "mandate:check").await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_scope")), "{body}");

    let (st, allowed) = check(&w, &checker, &client_token, "list").await?;
    assert_eq!((st, allowed["decision"].as_str()), (200, Some("allow")), "{allowed}");
    assert_eq!(allowed["chain"][1].as_str(), Some(w.planner.id.as_str()), "{allowed}");
    // A scope the token lacks: the answer names the scope that covers it.
    let (_, denied) = check(&w, &checker, &client_token, "create").await?;
    assert_eq!(denied["decision"].as_str(), Some("deny"), "{denied}");
    assert_eq!(denied["scopes_needed"], json!(["write"]), "{denied}");
    // A token for another audience is not the gateway's to ask about.
    let (_, foreign) = check(&w, &checker, &cal_token, "list").await?;
    assert_eq!(foreign["decision"].as_str(), Some("deny"), "{foreign}");
    assert_eq!(foreign["chain"], json!([]), "{foreign}");
    assert!(foreign.get("scopes_needed").is_none(), "{foreign}");

    // The exchange to the upstream: the gateway joins the chain.
    let (st, hop) = w.exchange(&gw, &client_token, &[("resource", CAL)]).await?;
    assert_eq!(st, 200, "{hop}");
    let c = claims(hop["access_token"].as_str().unwrap_or_default());
    assert_eq!(c["aud"].as_str(), Some(CAL));
    assert_eq!(c["scope"].as_str(), Some("read"));
    assert_eq!(c["act"]["sub"].as_str(), Some(gw.id.as_str()), "{c}");
    assert_eq!(c["act"]["act"]["sub"].as_str(), Some(w.planner.id.as_str()), "{c}");
    // Nowhere else, and nobody else.
    let (st, body) = w.exchange(&gw, &client_token, &[("resource", "https://elsewhere.example")]).await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_target")), "{body}");
    let other = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    let (st, body) = w.exchange(&other, &client_token, &[("resource", CAL)]).await?;
    assert_eq!(st, 400, "{body}");
    Ok(())
}
