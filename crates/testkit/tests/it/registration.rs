//! Clients that register themselves (DESIGN §9, SECURITY row 48): a client
//! metadata document fetched with the SSRF guards and used as a public
//! client through the code flow; what is refused on the way; RFC 7591
//! registration; a public client held to the code flow.

use std::time::Duration;

use anyhow::Result;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use mandate_testkit::TestServer;
use mandate_testkit::scenarios::CAL;
use reqwest::Method;
use serde_json::{Value, json};

use crate::authorize::{VERIFIER, challenge, client, flow_on, param};

type Doc = std::sync::Arc<std::sync::Mutex<Value>>;

/// Serves client metadata documents on a random loopback port; the good
/// one (`/clients/app.json`) may be changed through the handle.
async fn documents() -> Result<(String, Doc)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let b = base.clone();
    let good = json!({"client_id": format!("{b}/clients/app.json"), "client_name": "Notes MCP client",
                      "redirect_uris": [format!("{b}/cb")], "token_endpoint_auth_method": "none"});
    let good: Doc = std::sync::Arc::new(std::sync::Mutex::new(good));
    let handle = good.clone();
    let mismatch = json!({"client_id": format!("{b}/clients/other.json"), "client_name": "X", "redirect_uris": [format!("{b}/cb")]});
    let app = Router::new()
        .route(
            "/clients/app.json",
            get(move || {
                let g = good.lock().map(|g| g.clone()).unwrap_or(Value::Null);
                async move { ([(header::CACHE_CONTROL, "max-age=600")], axum::Json(g)) }
            }),
        )
        .route("/clients/mismatch.json", get(move || async move { axum::Json(mismatch) }))
        .route(
            "/clients/big.json",
            get(|| async {
                ([(header::CONTENT_TYPE, "application/json")], format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000)))
            }),
        )
        .route(
            "/clients/redirect.json",
            get(|| async {
                (StatusCode::FOUND, [(header::LOCATION, "http://10.255.255.1/client.json")]).into_response()
            }),
        )
        .route(
            "/clients/slow.json",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(8)).await;
                axum::Json(json!({}))
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, handle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_metadata_document_registers_a_public_client_for_the_code_flow() -> Result<()> {
    let (s, owner) = TestServer::start_registering(|_| {}).await?;
    let (docs, doc) = documents().await?;
    let f = flow_on(s).await?;
    let (_, meta) = f.w.s.call(Method::GET, "/.well-known/oauth-authorization-server", None, None).await?;
    assert_eq!(meta["client_id_metadata_document_supported"], json!(true), "{meta}");
    assert_eq!(meta["registration_endpoint"].as_str(), Some(format!("{}/oauth/register", f.w.s.url).as_str()));
    assert!(meta["token_endpoint_auth_methods_supported"].as_array().is_some_and(|m| m.contains(&json!("none"))));

    let client_id = format!("{docs}/clients/app.json");
    let redirect = format!("{docs}/cb");
    let ch = challenge(VERIFIER);
    let url_for = |id: &str| {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("response_type", "code"),
                ("client_id", id),
                ("redirect_uri", redirect.as_str()),
                ("scope", "read"),
                ("resource", CAL),
                ("state", "s1"),
                ("code_challenge", ch.as_str()),
                ("code_challenge_method", "S256"),
            ])
            .finish();
        format!("{}/oauth/authorize?{q}", f.w.s.url)
    };
    // Refused before or during the fetch, with a page and no redirect.
    for (bad, why) in [
        (format!("{docs}/clients/mismatch.json"), "client_id is not its url"),
        (format!("{docs}/clients/big.json"), "large"),
        (format!("{docs}/clients/redirect.json"), "private"),
        (format!("{docs}/clients/slow.json"), "time"),
        ("https://10.0.0.1/client.json".to_owned(), "private"),
        ("http://example.com/client.json".to_owned(), "https"),
        (format!("{docs}/"), "path"),
    ] {
        let resp = f.get(&url_for(&bad)).await?;
        let st = resp.status().as_u16();
        let body = resp.text().await?;
        assert_eq!(st, 400, "{bad}: {body}");
        assert!(body.to_lowercase().contains(why), "{bad}: expected {why:?} in {body}");
    }
    let refused = f.w.s.audit("type=client.registration_refused").await?;
    assert!(refused.len() >= 4, "{refused:?}");

    // The good document: the consent page says who could be lying.
    let (to, html) = f.consent_to(&url_for(&client_id), "allow", &docs).await?;
    assert!(html.contains("unverified") && html.contains(&client_id), "{html}");
    assert!(html.contains(&docs.trim_start_matches("http://").to_owned()), "the redirect host is shown");
    assert!(to.starts_with(&redirect), "{to}");
    let code = param(&to, "code").unwrap_or_default();
    let registered = f.w.s.audit("type=client.registered").await?;
    assert_eq!(registered.len(), 1, "{registered:?}");
    assert_eq!(registered[0]["subject"].as_str(), Some(owner.as_str()), "owned by the registration owner");

    // The public client redeems the code naming itself; no credential.
    let http = client()?;
    let token = |params: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = format!("{}/oauth/token", f.w.s.url);
        async move {
            let r = http.post(url).form(&params).send().await?;
            Ok::<_, anyhow::Error>((r.status().as_u16(), r.json::<Value>().await?))
        }
    };
    let (st, body) = token(vec![
        ("grant_type", "authorization_code".into()),
        ("client_id", client_id.clone()),
        ("code", code),
        ("redirect_uri", redirect.clone()),
        ("code_verifier", VERIFIER.into()),
        ("resource", CAL.into()),
    ])
    .await?;
    assert_eq!(st, 200, "{body}");
    assert!(body["refresh_token"].is_null(), "no offline_access, no refresh token: {body}");
    // The document drops that redirect: once its cache time has passed,
    // the agent's id (not only its URL) stops taking it.
    let agent_id = registered[0]["client_id"].as_str().unwrap_or_default().to_owned();
    if let Ok(mut d) = doc.lock() {
        d["redirect_uris"] = json!([format!("{docs}/elsewhere")]);
    }
    f.w.s.clock.advance(time::Duration::minutes(11));
    let resp = f.get(&url_for(&agent_id)).await?;
    assert_eq!(resp.status(), 400, "the old redirect still works by agent id");
    assert!(resp.text().await?.contains("redirect_uri is not registered"));
    if let Ok(mut d) = doc.lock() {
        d["redirect_uris"] = json!([redirect.clone()]);
    }
    f.w.s.clock.advance(time::Duration::minutes(11));

    // Everything but the code flow needs a confidential client.
    let (st, body) = token(vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", client_id.clone()),
        ("resource", CAL.into()),
    ])
    .await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("unauthorized_client")), "{body}");
    let (st, body) = token(vec![
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".into()),
        ("client_id", client_id.clone()),
        ("subject_token", "x.y.z".into()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token".into()),
    ])
    .await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("unauthorized_client")), "{body}");
    let r = http
        .post(format!("{}/oauth/introspect", f.w.s.url))
        .form(&[("client_id", client_id.as_str()), ("token", "x")])
        .send()
        .await?;
    assert_eq!(r.status(), 401, "a public client cannot introspect");
    // An admin-registered confidential agent naming itself is not public.
    let (st, body) = token(vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", f.w.planner.id.clone()),
        ("resource", CAL.into()),
    ])
    .await?;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_registration_checks_what_a_client_says_and_writes_nothing_it_refuses() -> Result<()> {
    let (s, owner) = TestServer::start_registering(|_| {}).await?;
    let http = client()?;
    let register = |body: String, ct: &'static str| {
        let http = http.clone();
        let url = format!("{}/oauth/register", s.url);
        async move {
            let r = http.post(url).header("content-type", ct).body(body).send().await?;
            Ok::<_, anyhow::Error>((r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null)))
        }
    };
    let good = json!({"client_name": "Desktop agent", "application_type": "native",
                      "redirect_uris": ["http://127.0.0.1:33418/callback"], "token_endpoint_auth_method": "none",
                      "grant_types": ["authorization_code", "refresh_token"]});
    for (body, ct, error) in [
        (json!({"client_name": "X", "redirect_uris": ["http://127.0.0.1:1/cb"]}).to_string(), "application/json", "invalid_client_metadata"),
        (json!({"client_name": "X", "application_type": "web", "redirect_uris": ["http://127.0.0.1:1/cb"]}).to_string(), "application/json", "invalid_redirect_uri"),
        (json!({"client_name": "X", "application_type": "native", "redirect_uris": ["http://evil.example/cb"]}).to_string(), "application/json", "invalid_redirect_uri"),
        (json!({"client_name": "X", "application_type": "native", "redirect_uris": []}).to_string(), "application/json", "invalid_redirect_uri"),
        (json!({"client_name": "X", "application_type": "native", "redirect_uris": ["http://127.0.0.1:1/cb"], "token_endpoint_auth_method": "client_secret_basic"}).to_string(), "application/json", "invalid_client_metadata"),
        (json!({"client_name": "X", "application_type": "native", "redirect_uris": ["http://127.0.0.1:1/cb"], "grant_types": ["client_credentials"]}).to_string(), "application/json", "invalid_client_metadata"),
        ("{not json".to_owned(), "application/json", "invalid_client_metadata"),
        (good.to_string(), "text/plain", "invalid_client_metadata"),
    ] {
        let (st, out) = register(body.clone(), ct).await?;
        assert_eq!((st, out["error"].as_str()), (400, Some(error)), "{body}: {out}");
    }
    assert!(s.audit("type=client.registered").await?.is_empty(), "a refusal registers nothing");
    assert!(s.audit("type=client.registration_refused").await?.len() >= 7);
    let (st, out) = register(good.to_string(), "application/json").await?;
    assert_eq!(st, 201, "{out}");
    let id = out["client_id"].as_str().unwrap_or_default();
    assert!(id.starts_with("agt_"), "{out}");
    assert_eq!(out["token_endpoint_auth_method"].as_str(), Some("none"));
    let (st, agent) = s.admin(Method::GET, &format!("/v1/agents/{id}"), None).await?;
    assert_eq!(st, 200, "{agent}");
    assert_eq!(
        (agent["origin"].as_str(), agent["owner"].as_str(), agent["public"].as_bool()),
        (Some("dynamic"), Some(owner.as_str()), Some(true)),
        "{agent}"
    );
    Ok(())
}

#[tokio::test]
async fn without_an_owner_clients_cannot_register_themselves() -> Result<()> {
    let s = TestServer::start().await?;
    let (_, meta) = s.call(Method::GET, "/.well-known/oauth-authorization-server", None, None).await?;
    assert_eq!(meta["client_id_metadata_document_supported"], json!(false), "{meta}");
    assert!(meta.get("registration_endpoint").is_none(), "{meta}");
    let r = client()?.post(format!("{}/oauth/register", s.url)).json(&json!({})).send().await?;
    assert_eq!(r.status(), 404);
    Ok(())
}
