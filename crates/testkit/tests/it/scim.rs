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
    assert_eq!(
        (r.body["Resources"][0]["schema"].as_str(), r.body["Resources"][1]["schema"].as_str()),
        (Some(USER), Some(GROUP))
    );
    let r = scim(&s, None, Method::GET, "/ResourceTypes/Group", None).await?;
    assert_eq!(r.body["endpoint"], "/Groups");
    let r = scim(&s, None, Method::GET, &format!("/Schemas/{GROUP}"), None).await?;
    assert_eq!(
        (r.body["attributes"][0]["name"].as_str(), r.body["attributes"][1]["name"].as_str()),
        (Some("displayName"), Some("members"))
    );
    let r = scim(&s, None, Method::GET, "/ServiceProviderConfig", None).await?;
    assert_eq!(
        [
            &r.body["filter"]["supported"],
            &r.body["etag"]["supported"],
            &r.body["sort"]["supported"],
            &r.body["changePassword"]["supported"]
        ],
        [&json!(true), &json!(true), &json!(false), &json!(false)]
    );
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
        (r.body["userName"].as_str(), r.body["name"]["givenName"].as_str(), r.body["externalId"].as_str()),
        (Some("alice@example.com"), Some("Alice"), Some("00u1"))
    );
    let (_, user) = s.admin(Method::GET, &format!("/v1/users/{id}"), None).await?;
    assert_eq!((user["name"].as_str(), user["email"].as_str()), (Some("Alice Liddell"), Some("alice@example.com")));
    assert_eq!(r.etag.as_ref(), r.body["meta"]["version"].as_str().map(str::to_owned).as_ref());
    let created = s.audit(&format!("type=user.created&subject={id}")).await?;
    assert_eq!(created.len(), 1);

    // A second create with the same userName (in any case) is refused and
    // changes nothing.
    let before = s.audit("").await?.len();
    let r = scim(&s, t, Method::POST, "/Users", Some(alice.clone())).await?;
    assert!(is_error(&r, 409, Some("uniqueness")), "{}", r.body);
    let mut shouting = alice.clone();
    shouting["userName"] = json!("ALICE@EXAMPLE.COM");
    shouting["emails"] = json!([{"value": "other@example.com"}]);
    let r = scim(&s, t, Method::POST, "/Users", Some(shouting)).await?;
    assert!(is_error(&r, 409, Some("uniqueness")), "{}", r.body);
    assert_eq!(s.audit("").await?.len(), before);
    for (bad, scim_type) in [
        (json!({"schemas": [USER], "userName": "not-an-email"}), "invalidValue"),
        (json!({"schemas": [USER], "userName": "x", "emails": [{"value": "nope", "primary": true}]}), "invalidValue"),
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

    // A new userName (a UPN, as Entra ID sends) is kept; the email stays
    // the one in emails; the User is found by its new userName, in any case,
    // and by its externalId.
    let r = scim(
        &s,
        t,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "userName", "value": "Alice.L@corp.example"}]})),
    )
    .await?;
    assert_eq!((r.status, r.body["userName"].as_str()), (200, Some("Alice.L@corp.example")), "{}", r.body);
    let r = scim(&s, t, Method::GET, "/Users?filter=userName%20eq%20%22alice.l%40CORP.example%22", None).await?;
    assert_eq!(r.body["Resources"][0]["id"].as_str(), Some(id.as_str()), "{}", r.body);
    let r = scim(&s, t, Method::GET, "/Users?filter=externalId%20eq%20%2200u1%22", None).await?;
    assert_eq!((r.body["totalResults"].as_u64(), r.body["Resources"][0]["id"].as_str()), (Some(1), Some(id.as_str())));
    let (_, user) = s.admin(Method::GET, &format!("/v1/users/{id}"), None).await?;
    assert_eq!(user["email"], "alice@example.com");

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

const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

fn patch(ops: Value) -> Option<Value> {
    Some(json!({"schemas": [PATCH], "Operations": ops}))
}

fn ids(members: &Value) -> Vec<String> {
    let mut v: Vec<String> =
        members.as_array().into_iter().flatten().filter_map(|m| m["value"].as_str().map(str::to_owned)).collect();
    v.sort();
    v
}

async fn scim_user(s: &TestServer, t: Option<&str>, user_name: &str, email: &str) -> anyhow::Result<String> {
    let body = json!({"schemas": [USER], "userName": user_name, "emails": [{"value": email, "primary": true}]});
    let r = scim(s, t, Method::POST, "/Users", Some(body)).await?;
    assert_eq!(r.status, 201, "{}", r.body);
    Ok(r.body["id"].as_str().unwrap_or_default().to_owned())
}

/// A Group's life as Entra ID and Okta drive it, and what its membership
/// does to Cedar decisions: `principal.owner in Group::"eng"` permits the
/// owner's agent after the member add and denies after the remove.
#[tokio::test]
async fn a_scim_group_membership_reaches_cedar_decisions() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let token = scim_token(&s).await?;
    let t = Some(token.as_str());
    let ada = scim_user(&s, t, "0f7c2a9e-ada", "ada@example.com").await?;
    let bob = scim_user(&s, t, "bob@corp.example", "bob@example.com").await?;
    s.create_resource(API, json!({"read": []})).await?;
    s.put_policies(
        r#"permit(principal is Agent, action == Action::"read", resource == Api::"https://api.example.com") when { principal.owner in Group::"eng" };"#,
    )
    .await?;
    let agent = s.create_agent(&ada, mandate_jose::KeyAlg::EdDSA).await?;
    let (st, _) = s.token(&agent, API, "read").await?;
    assert_ne!(st, 200, "permitted before any group");

    // Create: an empty group (Okta creates, then pushes members).
    let r = scim(
        &s,
        t,
        Method::POST,
        "/Groups",
        Some(json!({"schemas": [GROUP], "displayName": "eng", "externalId": "okta-1"})),
    )
    .await?;
    assert_eq!((r.status, r.content_type.as_str()), (201, "application/scim+json"), "{}", r.body);
    let gid = r.body["id"].as_str().unwrap_or_default().to_owned();
    assert!(gid.starts_with("grp_") && r.etag.is_some(), "{}", r.body);
    assert_eq!(s.audit(&format!("type=scim.group_created&resource={gid}")).await?.len(), 1);

    // Member add: the next decision sees it.
    let r = scim(
        &s,
        t,
        Method::PATCH,
        &format!("/Groups/{gid}"),
        patch(json!([{"op": "Add", "path": "members", "value": [{"value": ada}, {"value": bob}]}])),
    )
    .await?;
    assert_eq!(
        (r.status, ids(&r.body["members"])),
        (200, {
            let mut v = vec![ada.clone(), bob.clone()];
            v.sort();
            v
        }),
        "{}",
        r.body
    );
    assert_eq!(r.body["members"][0]["$ref"].as_str().map(|x| x.contains("/scim/v2/Users/usr_")), Some(true));
    let (st, body) = s.token(&agent, API, "read").await?;
    assert_eq!(st, 200, "the member add did not reach the decision: {body}");
    let (_, user) = s.admin(Method::GET, &format!("/v1/users/{ada}"), None).await?;
    assert_eq!(user["scim_groups"], json!(["eng"]), "{user}");
    assert_eq!(s.audit(&format!("type=scim.group_member_added&subject={ada}")).await?.len(), 1);

    // Read, filter and list.
    let r = scim(&s, t, Method::GET, &format!("/Groups/{gid}?attributes=members.display"), None).await?;
    assert!(r.body["members"].as_array().is_some_and(|m| m.iter().all(|m| m["display"].is_string())), "{}", r.body);
    for q in ["displayName%20eq%20%22ENG%22", "externalId%20eq%20%22okta-1%22"] {
        let r = scim(&s, t, Method::GET, &format!("/Groups?filter={q}"), None).await?;
        assert_eq!(
            (r.body["totalResults"].as_u64(), r.body["Resources"][0]["id"].as_str()),
            (Some(1), Some(gid.as_str()))
        );
    }
    let r = scim(&s, t, Method::GET, "/Groups?filter=displayName%20eq%20%22ops%22", None).await?;
    assert_eq!(r.body["totalResults"].as_u64(), Some(0));

    // Member remove by a value filter (Entra ID, Okta): the next decision denies.
    let r = scim(
        &s,
        t,
        Method::PATCH,
        &format!("/Groups/{gid}"),
        patch(json!([{"op": "remove", "path": format!("members[value eq \"{ada}\"]")}])),
    )
    .await?;
    assert_eq!((r.status, ids(&r.body["members"])), (200, vec![bob.clone()]), "{}", r.body);
    let (st, _) = s.token(&agent, API, "read").await?;
    assert_ne!(st, 200, "the member remove did not reach the decision");

    // PUT back with Ada, then rename: the Cedar group is renamed for members.
    let r = scim(
        &s,
        t,
        Method::PUT,
        &format!("/Groups/{gid}"),
        Some(json!({"schemas": [GROUP], "displayName": "eng", "members": [{"value": ada}]})),
    )
    .await?;
    assert_eq!((r.status, ids(&r.body["members"])), (200, vec![ada.clone()]), "{}", r.body);
    assert!(r.body.get("externalId").is_none(), "a PUT without externalId keeps it: {}", r.body);
    assert_eq!(s.token(&agent, API, "read").await?.0, 200);
    let r = scim(
        &s,
        t,
        Method::PATCH,
        &format!("/Groups/{gid}"),
        patch(json!([{"op": "replace", "path": "displayName", "value": "engineering"}])),
    )
    .await?;
    assert_eq!((r.status, r.body["displayName"].as_str()), (200, Some("engineering")), "{}", r.body);
    assert_ne!(s.token(&agent, API, "read").await?.0, 200, "the old group name still permits");

    // Refusals change nothing and write nothing.
    let before = s.audit("").await?.len();
    let other = scim(&s, t, Method::POST, "/Groups", Some(json!({"schemas": [GROUP], "displayName": "ops"}))).await?;
    let other_id = other.body["id"].as_str().unwrap_or_default().to_owned();
    let before_refusals = s.audit("").await?.len();
    assert_eq!(before_refusals, before + 1);
    for (method, path, body, status, scim_type) in [
        (
            Method::POST,
            "/Groups".to_owned(),
            json!({"schemas": [GROUP], "displayName": "Engineering"}),
            409,
            Some("uniqueness"),
        ),
        (
            Method::POST,
            "/Groups".to_owned(),
            json!({"schemas": [GROUP], "displayName": "has spaces"}),
            400,
            Some("invalidValue"),
        ),
        (Method::POST, "/Groups".to_owned(), json!({"schemas": [GROUP]}), 400, Some("invalidValue")),
        (
            Method::POST,
            "/Groups".to_owned(),
            json!({"schemas": [GROUP], "displayName": "x", "members": [{"value": "usr_01ARZ3NDEKTSV4RRFFQ69G5FAV"}]}),
            400,
            Some("invalidValue"),
        ),
        (
            Method::PATCH,
            format!("/Groups/{other_id}"),
            json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "displayName", "value": "engineering"}]}),
            409,
            Some("uniqueness"),
        ),
        (
            Method::PATCH,
            format!("/Groups/{other_id}"),
            json!({"schemas": [PATCH], "Operations": [{"op": "remove", "path": "displayName"}]}),
            400,
            Some("invalidValue"),
        ),
        (
            Method::PATCH,
            format!("/Groups/{other_id}"),
            json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": [{"value": "agt_01ARZ3NDEKTSV4RRFFQ69G5FAV"}]}]}),
            400,
            Some("invalidValue"),
        ),
        (Method::GET, "/Groups?filter=members%20eq%20%22x%22".to_owned(), Value::Null, 400, Some("invalidFilter")),
        (Method::GET, "/Groups/grp_01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned(), Value::Null, 404, None),
    ] {
        let body = (!body.is_null()).then_some(body);
        let r = scim(&s, t, method.clone(), &path, body).await?;
        assert!(is_error(&r, status, scim_type), "{method} {path}: {} {}", r.status, r.body);
    }
    assert_eq!(s.audit("").await?.len(), before_refusals, "a refusal wrote to the trail");
    let r = scim(&s, t, Method::GET, &format!("/Groups/{other_id}"), None).await?;
    assert_eq!((r.body["displayName"].as_str(), r.body["members"].as_array().map(Vec::len)), (Some("ops"), Some(0)));

    // Unfiltered, paged lists.
    let r = scim(&s, t, Method::GET, "/Groups?startIndex=2&count=1", None).await?;
    assert_eq!(
        (r.body["totalResults"].as_u64(), r.body["itemsPerPage"].as_u64(), r.body["startIndex"].as_u64()),
        (Some(2), Some(1), Some(2))
    );
    let r = scim(&s, t, Method::GET, "/Users?count=1", None).await?;
    assert_eq!((r.body["totalResults"].as_u64(), r.body["itemsPerPage"].as_u64()), (Some(2), Some(1)), "{}", r.body);

    // DELETE: the group is gone, and so is its Cedar group.
    let r = scim(&s, t, Method::DELETE, &format!("/Groups/{gid}"), None).await?;
    assert_eq!(r.status, 204);
    let r = scim(&s, t, Method::GET, &format!("/Groups/{gid}"), None).await?;
    assert!(is_error(&r, 404, None), "{}", r.body);
    let (_, user) = s.admin(Method::GET, &format!("/v1/users/{ada}"), None).await?;
    assert!(user.get("scim_groups").is_none(), "{user}");
    let deleted = s.audit(&format!("type=scim.group_deleted&resource={gid}")).await?;
    assert_eq!((deleted.len(), deleted[0]["count"].as_u64()), (1, Some(1)));
    s.stop().await?;
    Ok(())
}

/// ADR 0020: the sign-in source (`PATCH /v1/users {groups}`, an IdP's
/// groups claim) and the SCIM source are kept apart; each replaces only its
/// own, and the person has their union.
#[tokio::test]
async fn sign_in_groups_and_scim_groups_replace_only_their_own() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let token = scim_token(&s).await?;
    let t = Some(token.as_str());
    let ada = scim_user(&s, t, "ada", "ada@example.com").await?;
    s.create_resource(API, json!({"read": [], "write": []})).await?;
    s.put_policies(
        r#"permit(principal is Agent, action == Action::"read", resource) when { principal.owner in Group::"eng" };
           permit(principal is Agent, action == Action::"write", resource) when { principal.owner in Group::"ops" };"#,
    )
    .await?;
    let agent = s.create_agent(&ada, mandate_jose::KeyAlg::EdDSA).await?;
    let r = scim(
        &s,
        t,
        Method::POST,
        "/Groups",
        Some(json!({"schemas": [GROUP], "displayName": "eng", "members": [{"value": ada}]})),
    )
    .await?;
    let gid = r.body["id"].as_str().unwrap_or_default().to_owned();
    let (st, _) = s.admin(Method::PATCH, &format!("/v1/users/{ada}"), Some(json!({"groups": ["ops"]}))).await?;
    assert_eq!(st, 200);
    let (_, user) = s.admin(Method::GET, &format!("/v1/users/{ada}"), None).await?;
    assert_eq!((user["groups"].clone(), user["scim_groups"].clone()), (json!(["ops"]), json!(["eng"])), "{user}");
    assert_eq!((s.token(&agent, API, "read").await?.0, s.token(&agent, API, "write").await?.0), (200, 200));
    // The sign-in source replaced: SCIM's group stays.
    s.admin(Method::PATCH, &format!("/v1/users/{ada}"), Some(json!({"groups": []}))).await?;
    assert_eq!((s.token(&agent, API, "read").await?.0, s.token(&agent, API, "write").await?.0 == 200), (200, false));
    // SCIM's source replaced: the sign-in group stays.
    s.admin(Method::PATCH, &format!("/v1/users/{ada}"), Some(json!({"groups": ["ops", "eng"]}))).await?;
    let r = scim(&s, t, Method::PATCH, &format!("/Groups/{gid}"), patch(json!([{"op": "remove", "path": "members"}])))
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, user) = s.admin(Method::GET, &format!("/v1/users/{ada}"), None).await?;
    assert_eq!(user["groups"], json!(["ops", "eng"]), "{user}");
    assert_eq!((s.token(&agent, API, "read").await?.0, s.token(&agent, API, "write").await?.0), (200, 200));
    s.stop().await?;
    Ok(())
}

/// Sends every request at once; their statuses (0: no answer).
async fn all_at_once(requests: impl Iterator<Item = reqwest::RequestBuilder>) -> Vec<u16> {
    let mut set = tokio::task::JoinSet::new();
    for r in requests {
        set.spawn(async move { r.send().await.map_or(0, |r| r.status().as_u16()) });
    }
    let mut codes = Vec::new();
    while let Some(code) = set.join_next().await {
        codes.push(code.unwrap_or(0));
    }
    codes
}

/// RFC 7644 §3.14 under concurrency: writes that name the same `If-Match`
/// race; exactly one wins, the others are 412 and change nothing.
#[tokio::test]
async fn if_match_is_checked_under_the_write() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let token = scim_token(&s).await?;
    let t = Some(token.as_str());
    let ada = scim_user(&s, t, "ada", "ada@example.com").await?;
    let r = scim(&s, t, Method::POST, "/Groups", Some(json!({"schemas": [GROUP], "displayName": "eng"}))).await?;
    let (gid, group_tag) = (r.body["id"].as_str().unwrap_or_default().to_owned(), r.etag.clone().unwrap_or_default());
    let r = scim(&s, t, Method::GET, &format!("/Users/{ada}"), None).await?;
    let user_tag = r.etag.clone().unwrap_or_default();
    for (path, tag, op) in
        [(format!("/Users/{ada}"), user_tag, "displayName"), (format!("/Groups/{gid}"), group_tag, "externalId")]
    {
        let sends = (0..8).map(|n| {
            s.http
                .patch(format!("{}/scim/v2{path}", s.url))
                .bearer_auth(&token)
                .header("if-match", &tag)
                .header("content-type", "application/scim+json")
                .body(json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": op, "value": format!("v{n}")}]}).to_string())
        });
        let codes = all_at_once(sends).await;
        assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{path}: {codes:?}");
        assert!(codes.iter().all(|c| *c == 200 || *c == 412), "{path}: {codes:?}");
        // The stale tag stays stale.
        let r = s
            .http
            .patch(format!("{}/scim/v2{path}", s.url))
            .bearer_auth(&token)
            .header("if-match", &tag)
            .body(
                json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": op, "value": "late"}]}).to_string(),
            )
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 412);
        let r = scim(&s, t, Method::GET, &path, None).await?;
        assert_ne!(r.body[op].as_str(), Some("late"));
    }
    // Without If-Match, concurrent member adds all land (retried).
    let mut people = Vec::new();
    for n in 0..5 {
        people.push(scim_user(&s, t, &format!("p{n}"), &format!("p{n}@example.com")).await?);
    }
    let adds = people.iter().map(|p| {
        s.http.patch(format!("{}/scim/v2/Groups/{gid}", s.url)).bearer_auth(&token).body(
            json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": [{"value": p}]}]})
                .to_string(),
        )
    });
    let codes = all_at_once(adds).await;
    let r = scim(&s, t, Method::GET, &format!("/Groups/{gid}"), None).await?;
    let landed = ids(&r.body["members"]).len();
    assert!(codes.iter().all(|c| *c == 200 || *c == 412), "{codes:?}");
    assert_eq!(landed, codes.iter().filter(|c| **c == 200).count(), "a 200 whose member was lost: {codes:?}");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn scim_tokens_are_listed_and_deleted() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, a) = s.admin(Method::POST, "/v1/scim-tokens", None).await?;
    let (_, b) = s.admin(Method::POST, "/v1/scim-tokens", None).await?;
    let (st, list) = s.admin(Method::GET, "/v1/scim-tokens", None).await?;
    assert_eq!(st, 200);
    let listed = list["scim_tokens"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 2, "{list}");
    assert!(!list.to_string().contains("mnd_scim_"), "a secret is listed: {list}");
    let id = a["id"].as_str().unwrap_or_default();
    let (st, _) = s.admin(Method::DELETE, &format!("/v1/scim-tokens/{id}"), None).await?;
    assert_eq!(st, 200);
    let r = scim(&s, a["token"].as_str(), Method::GET, "/Users", None).await?;
    assert!(is_error(&r, 401, None), "{}", r.body);
    let r = scim(&s, b["token"].as_str(), Method::GET, "/Users", None).await?;
    assert_eq!(r.status, 200);
    let (_, list) = s.admin(Method::GET, "/v1/scim-tokens", None).await?;
    let status = |id: &str| {
        list["scim_tokens"].as_array().into_iter().flatten().find(|t| t["id"] == id).map(|t| t["status"].clone())
    };
    assert_eq!(status(id), Some(json!("revoked")));
    s.stop().await?;
    Ok(())
}
