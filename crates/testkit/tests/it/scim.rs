//! SCIM 2.0 provisioning of Users (DESIGN §10), over HTTP.

use mandate_testkit::TestServer;
use reqwest::Method;
use serde_json::{Value, json};

const API: &str = "https://api.example.com";
const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

struct Reply {
    status: u16,
    content_type: String,
    etag: Option<String>,
    body: Value,
}

async fn scim(
    s: &TestServer,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Reply> {
    let mut req = s.http.request(method, format!("{}/scim/v2{path}", s.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/scim+json").body(b.to_string());
    }
    let resp = req.send().await?;
    let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (status, content_type, etag) =
        (resp.status().as_u16(), header("content-type").unwrap_or_default(), header("etag"));
    let text = resp.text().await?;
    Ok(Reply { status, content_type, etag, body: serde_json::from_str(&text).unwrap_or(Value::Null) })
}

fn is_error(r: &Reply, status: u16, scim_type: Option<&str>) -> bool {
    r.status == status
        && r.content_type == "application/scim+json"
        && r.body["schemas"] == json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
        && r.body["status"] == json!(status.to_string())
        && r.body["scimType"].as_str() == scim_type
}

async fn scim_token(s: &TestServer) -> anyhow::Result<String> {
    let (st, body) = s.admin(Method::POST, "/v1/scim-tokens", None).await?;
    assert_eq!(st, 201, "{body}");
    Ok(body["token"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn scim_needs_a_live_scim_token_from_the_admin() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let r = scim(&s, None, Method::GET, "/Users?filter=userName%20eq%20%22a%40example.com%22", None).await?;
    assert!(is_error(&r, 401, None), "{}", r.body);
    // The admin token is not a SCIM token, nor is a person's.
    let r = scim(&s, Some(mandate_testkit::server_admin_token()), Method::GET, "/Users/x", None).await?;
    assert!(is_error(&r, 401, None), "{}", r.body);
    // Only the admin issues them.
    let user = s.create_user("u@example.com").await?;
    let (_, body) = s.admin(Method::POST, &format!("/v1/users/{user}/tokens"), None).await?;
    let user_token = body["token"].as_str().unwrap_or_default().to_owned();
    let (st, _) = s.call(Method::POST, "/v1/scim-tokens", Some(&user_token), None).await?;
    assert_eq!(st, 403);
    let (st, body) = s.admin(Method::POST, "/v1/scim-tokens", None).await?;
    assert_eq!(st, 201);
    let (id, token) = (body["id"].as_str().unwrap_or_default(), body["token"].as_str().unwrap_or_default());
    assert!(token.starts_with("mnd_scim_") && id.starts_with("scim_"), "{body}");
    let r = scim(&s, Some(token), Method::GET, &format!("/Users/{user}"), None).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let (st, _) = s.admin(Method::POST, &format!("/v1/scim-tokens/{id}/revoke"), None).await?;
    assert_eq!(st, 200);
    let r = scim(&s, Some(token), Method::GET, &format!("/Users/{user}"), None).await?;
    assert!(is_error(&r, 401, None), "{}", r.body);
    let (st, _) = s.admin(Method::POST, "/v1/scim-tokens/scim_0000000000000000/revoke", None).await?;
    assert_eq!(st, 404);
    assert_eq!(s.audit("type=scim.token_created").await?.len(), 1);
    assert_eq!(s.audit("type=scim.token_revoked").await?.len(), 1);
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_discovery_resources_describe_users() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let r = scim(&s, None, Method::GET, "/ServiceProviderConfig", None).await?;
    assert_eq!((r.status, r.content_type.as_str()), (200, "application/scim+json"));
    assert_eq!(
        (r.body["patch"]["supported"].as_bool(), r.body["bulk"]["supported"].as_bool()),
        (Some(true), Some(false))
    );
    let r = scim(&s, None, Method::GET, "/ResourceTypes", None).await?;
    assert_eq!(r.body["Resources"][0]["schema"], USER);
    let r = scim(&s, None, Method::GET, &format!("/Schemas/{USER}"), None).await?;
    assert_eq!(r.body["attributes"][0]["name"], "userName");
    let r = scim(&s, None, Method::GET, "/Schemas/urn:nothing", None).await?;
    assert!(is_error(&r, 404, None), "{}", r.body);
    s.stop().await?;
    Ok(())
}

/// What an enterprise IdP sends when a person joins, is renamed in its
/// directory, leaves, and is looked up again.
#[tokio::test]
async fn an_idp_provisions_disables_and_deletes_a_person() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let token = scim_token(&s).await?;
    let t = Some(token.as_str());
    let lookup = "/Users?filter=userName%20eq%20%22alice%40example.com%22&startIndex=1&count=100";
    let r = scim(&s, t, Method::GET, lookup, None).await?;
    assert_eq!((r.status, r.body["totalResults"].as_u64()), (200, Some(0)), "{}", r.body);

    let alice = json!({
        "schemas": [USER], "userName": "alice@example.com", "externalId": "00u1",
        "name": {"givenName": "Alice", "familyName": "Liddell"},
        "emails": [{"value": "alice@example.com", "type": "work", "primary": true}], "active": true,
    });
    let r = scim(&s, t, Method::POST, "/Users", Some(alice.clone())).await?;
    assert_eq!((r.status, r.content_type.as_str()), (201, "application/scim+json"), "{}", r.body);
    let id = r.body["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("usr_"));
    assert_eq!(
        (r.body["userName"].as_str(), r.body["displayName"].as_str()),
        (Some("alice@example.com"), Some("Alice Liddell"))
    );
    assert_eq!(r.etag.as_ref(), r.body["meta"]["version"].as_str().map(str::to_owned).as_ref());
    let created = s.audit(&format!("type=user.created&subject={id}")).await?;
    assert_eq!(created.len(), 1);

    // A second create with the same userName is refused and changes nothing.
    let before = s.audit("").await?.len();
    let r = scim(&s, t, Method::POST, "/Users", Some(alice)).await?;
    assert!(is_error(&r, 409, Some("uniqueness")), "{}", r.body);
    assert_eq!(s.audit("").await?.len(), before);
    for (bad, scim_type) in [
        (json!({"schemas": [USER], "userName": "not-an-email"}), "invalidValue"),
        (json!({"schemas": [USER], "displayName": "No Name"}), "invalidValue"),
    ] {
        let r = scim(&s, t, Method::POST, "/Users", Some(bad)).await?;
        assert!(is_error(&r, 400, Some(scim_type)), "{}", r.body);
    }
    let r = scim(&s, t, Method::GET, "/Users?filter=title%20co%20%22x%22", None).await?;
    assert!(is_error(&r, 400, Some("invalidFilter")), "{}", r.body);
    assert_eq!(s.audit("").await?.len(), before);

    let r = scim(&s, t, Method::GET, lookup, None).await?;
    assert_eq!((r.body["totalResults"].as_u64(), r.body["Resources"][0]["id"].as_str()), (Some(1), Some(id.as_str())));
    let r = scim(&s, t, Method::GET, "/Users?filter=emails.value%20eq%20%22alice%40example.com%22&startIndex=2", None)
        .await?;
    assert_eq!((r.body["totalResults"].as_u64(), r.body["itemsPerPage"].as_u64()), (Some(1), Some(0)));

    let r = scim(&s, t, Method::GET, &format!("/Users/{id}?attributes=userName"), None).await?;
    assert_eq!((r.body["id"].as_str(), r.body["userName"].as_str()), (Some(id.as_str()), Some("alice@example.com")));
    assert!(r.body.get("active").is_none(), "{}", r.body);
    let r = scim(&s, t, Method::GET, &format!("{lookup}&excludedAttributes=emails"), None).await?;
    assert!(r.body["Resources"][0].get("emails").is_none() && r.body["Resources"][0]["active"] == true, "{}", r.body);

    // Alice owns an agent holding a token.
    s.create_resource(API, json!({"read": []})).await?;
    s.put_policies(
        r#"permit(principal is Agent, action == Action::"read", resource == Api::"https://api.example.com");"#,
    )
    .await?;
    let agent = s.create_agent(&id, mandate_jose::KeyAlg::EdDSA).await?;
    let (st, body) = s.token(&agent, API, "read").await?;
    assert_eq!(st, 200, "{body}");
    let access = body["access_token"].as_str().unwrap_or_default().to_owned();

    // Changing the userName is refused: Mandate keys people by email.
    let r = scim(
        &s,
        t,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "userName", "value": "x@example.com"}]})),
    )
    .await?;
    assert!(is_error(&r, 400, Some("mutability")), "{}", r.body);

    // The way Entra ID deactivates: capitalised op, a string boolean.
    let r = scim(
        &s,
        t,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]})),
    )
    .await?;
    assert_eq!((r.status, r.body["active"].as_bool()), (200, Some(false)), "{}", r.body);
    assert_eq!(s.introspect(&access).await?, json!({"active": false}));
    let (st, _) = s.token(&agent, API, "read").await?;
    assert_eq!(st, 401);
    let (_, user) = s.admin(Method::GET, &format!("/v1/users/{id}"), None).await?;
    assert_eq!(user["status"], "disabled");

    // A sync that leaves `active` out, or nulls it, does not switch her on.
    for body in [
        json!({"schemas": [USER], "userName": "alice@example.com", "name": {"givenName": "Alice", "familyName": "Liddell"}}),
        json!({"schemas": [USER], "userName": "alice@example.com", "name": {"givenName": "Alice", "familyName": "Liddell"}, "active": null}),
    ] {
        let r = scim(&s, t, Method::PUT, &format!("/Users/{id}"), Some(body)).await?;
        assert_eq!((r.status, r.body["active"].as_bool()), (200, Some(false)), "{}", r.body);
    }
    let r = scim(
        &s,
        t,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "replace", "value": {"active": null}}]})),
    )
    .await?;
    assert_eq!((r.status, r.body["active"].as_bool()), (200, Some(false)), "{}", r.body);

    // A stale If-Match is refused with 412, and changes nothing.
    let r = scim(&s, t, Method::GET, &format!("/Users/{id}"), None).await?;
    let etag = r.etag.clone().unwrap_or_default();
    let resp = s
        .http
        .delete(format!("{}/scim/v2/Users/{id}", s.url))
        .bearer_auth(&token)
        .header("if-match", "W/\"0000000000000000\"")
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 412);
    let r = scim(&s, t, Method::GET, &format!("/Users/{id}"), None).await?;
    assert_eq!((r.status, r.etag.as_deref()), (200, Some(etag.as_str())));

    // The way Okta reactivates: a PUT of the whole User.
    let r = scim(
        &s,
        t,
        Method::PUT,
        &format!("/Users/{id}"),
        Some(json!({"schemas": [USER], "userName": "alice@example.com", "name": {"givenName": "Alice", "familyName": "Liddell"}, "active": true})),
    )
    .await?;
    assert_eq!((r.status, r.body["active"].as_bool()), (200, Some(true)), "{}", r.body);
    let etag = r.etag.clone().unwrap_or_default();
    let (st, _) = s.token(&agent, API, "read").await?;
    assert_eq!(st, 200);

    // DELETE (with the current ETag) disables and hides the resource; the
    // person stays, disabled.
    let resp = s
        .http
        .delete(format!("{}/scim/v2/Users/{id}", s.url))
        .bearer_auth(&token)
        .header("if-match", etag)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 204);
    let r = scim(&s, t, Method::GET, &format!("/Users/{id}"), None).await?;
    assert!(is_error(&r, 404, None), "{}", r.body);
    let r = scim(&s, t, Method::GET, lookup, None).await?;
    assert_eq!(r.body["totalResults"].as_u64(), Some(0));
    let r = scim(&s, t, Method::DELETE, &format!("/Users/{id}"), None).await?;
    assert!(is_error(&r, 404, None), "{}", r.body);
    let (_, user) = s.admin(Method::GET, &format!("/v1/users/{id}"), None).await?;
    assert_eq!(user["status"], "disabled");
    let (st, _) = s.token(&agent, API, "read").await?;
    assert_eq!(st, 401);
    let deleted = s.audit(&format!("type=scim.user_deleted&subject={id}")).await?;
    assert_eq!((deleted.len(), deleted[0]["count"].as_u64()), (1, Some(1)));
    s.stop().await?;
    Ok(())
}
