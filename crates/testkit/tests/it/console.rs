//! The admin console over plain HTTP (ADR 0037): who it opens to, CSRF,
//! the inventory's filters, the policy editor's conflicts and key rotation
//! recorded under the person. (tests/browser/test/console.test.mjs drives
//! the same pages in Chromium.)

use anyhow::Result;
use mandate_testkit::TestServer;
use mandate_testkit::scenarios::{CAL, World};
use reqwest::Method;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

/// Every console page, for a world whose planner is `agent`.
fn pages(agent: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "/console",
        "/console/inventory",
        "/console/inventory/users",
        "/console/inventory/agents",
        "/console/inventory/resources",
        "/console/inventory/grants",
        "/console/policies",
        "/console/policies/versions/1/diff",
        "/console/keys",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    v.push(format!("/console/agents/{agent}"));
    v
}

struct Browser {
    http: reqwest::Client,
    base: String,
}

fn field_in(html: &str, name: &str) -> String {
    let marker = format!(r#"name="{name}" value=""#);
    html.split(marker.as_str()).nth(1).and_then(|r| r.split('"').next()).unwrap_or_default().to_owned()
}

impl Browser {
    fn new(w: &World) -> Result<Self> {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(Browser { http, base: w.s.url.clone() })
    }

    /// Signs in and returns the session cookie's value.
    async fn sign_in(&self, email: &str) -> Result<String> {
        let page = self.http.get(format!("{}/login", self.base)).send().await?;
        let login = page
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.split(';').next()?.trim().strip_prefix("mandate_login=").map(str::to_owned))
            .unwrap_or_default();
        let html = page.text().await?;
        let resp = self
            .http
            .post(format!("{}/login", self.base))
            .header("cookie", format!("mandate_login={login}"))
            .form(&[
                ("csrf", field_in(&html, "csrf").as_str()),
                ("next", "/"),
                ("email", email),
                ("password", PASSWORD),
            ])
            .send()
            .await?;
        let session = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.split(';').next()?.trim().strip_prefix("mandate_session=").map(str::to_owned))
            .unwrap_or_default();
        anyhow::ensure!(!session.is_empty(), "{email} did not sign in: {}", resp.status());
        Ok(session)
    }

    async fn get(&self, path: &str, session: &str) -> Result<(u16, String)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("mandate_session={session}"))
            .send()
            .await?;
        Ok((resp.status().as_u16(), resp.text().await?))
    }

    async fn post(&self, path: &str, session: &str, form: &[(&str, &str)]) -> Result<(u16, String)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", format!("mandate_session={session}"))
            .form(form)
            .send()
            .await?;
        Ok((resp.status().as_u16(), resp.text().await?))
    }
}

/// A person with a password and `groups`; their id.
async fn person(w: &World, name: &str, groups: &[&str]) -> Result<String> {
    let email = format!("{}@example.com", name.to_lowercase());
    let body = json!({"name": name, "email": email, "groups": groups, "password": PASSWORD});
    let (st, user) = w.s.admin(Method::POST, "/v1/users", Some(body)).await?;
    anyhow::ensure!(st == 201, "{user}");
    Ok(user["id"].as_str().unwrap_or_default().to_owned())
}

async fn set_user(w: &World, id: &str, patch: Value) -> Result<()> {
    let (st, body) = w.s.admin(Method::PATCH, &format!("/v1/users/{id}"), Some(patch)).await?;
    anyhow::ensure!(st == 200, "{body}");
    Ok(())
}

async fn trail_len(w: &World) -> Result<usize> {
    Ok(w.s.audit("").await?.len())
}

#[tokio::test]
async fn the_console_opens_only_to_active_members_of_mandate_admins() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let ada = person(&w, "Ada", &["mandate-admins"]).await?;
    let dana = person(&w, "Dana", &[]).await?;
    let olga = person(&w, "Olga", &["mandate-auditors"]).await?;
    let b = Browser::new(&w)?;
    let pages = pages(&w.planner.id);

    // A member: every page, and the console in the main navigation.
    let ada_session = b.sign_in("ada@example.com").await?;
    for p in &pages {
        let (st, html) = b.get(p, &ada_session).await?;
        assert_eq!(st, 200, "{p}: {html}");
    }
    let (_, inbox) = b.get("/approvals", &ada_session).await?;
    assert!(inbox.contains(r#"<a href="/console">Console</a>"#), "{inbox}");

    // Not members (an auditor neither): 403 on every page, each audited
    // as admin.denied under the person, and no console link.
    for (email, id) in [("dana@example.com", &dana), ("olga@example.com", &olga)] {
        let session = b.sign_in(email).await?;
        let denied_before = w.s.audit("type=admin.denied").await?.len();
        for p in &pages {
            let (st, _) = b.get(p, &session).await?;
            assert_eq!(st, 403, "{email} {p}");
        }
        for p in ["/console/keys/rotate", "/console/policies"] {
            let (st, _) = b.post(p, &session, &[("csrf", "x")]).await?;
            assert_eq!(st, 403, "{email} POST {p}");
        }
        let denied = w.s.audit("type=admin.denied").await?;
        let mine = denied.iter().skip(denied_before).filter(|e| e["actor"] == json!(id)).count();
        assert!(mine >= pages.len(), "{email}: {mine} refusals recorded for {} pages", pages.len());
        let (_, inbox) = b.get("/approvals", &session).await?;
        assert!(!inbox.contains("/console"), "{email} sees a console link");
    }

    // Membership is read on every request: the same session loses the
    // console when the admin takes the group, and gets it back with it.
    set_user(&w, &ada, json!({"groups": []})).await?;
    let (st, _) = b.get("/console/keys", &ada_session).await?;
    assert_eq!(st, 403, "a session without the group");
    set_user(&w, &ada, json!({"groups": ["mandate-admins"]})).await?;
    let (st, _) = b.get("/console/keys", &ada_session).await?;
    assert_eq!(st, 200);
    // Disabled: the session ends, the console with it.
    set_user(&w, &ada, json!({"status": "disabled"})).await?;
    let (st, _) = b.get("/console/keys", &ada_session).await?;
    assert_eq!(st, 303, "a disabled member is sent to sign in");

    // The group opens pages, not the API: a member's own API token is
    // still a person's token there. And the admin token opens no page.
    set_user(&w, &ada, json!({"status": "active"})).await?;
    let (_, t) = w.s.admin(Method::POST, &format!("/v1/users/{ada}/tokens"), None).await?;
    let token = t["token"].as_str().unwrap_or_default().to_owned();
    let (st, _) = w.s.call(Method::POST, "/v1/keys/rotate", Some(&token), None).await?;
    assert_eq!(st, 403, "a member's API token rotates nothing");
    let (st, _) = w.s.call(Method::GET, "/v1/users", Some(&token), None).await?;
    assert_eq!(st, 403, "a member's API token lists nothing");
    let resp = b.http.get(format!("{}/console", b.base)).bearer_auth(mandate_testkit::ADMIN_TOKEN).send().await?;
    assert_eq!(resp.status().as_u16(), 303, "the admin token never opens a page");
    Ok(())
}

#[tokio::test]
async fn console_forms_without_the_sessions_csrf_token_change_nothing() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    person(&w, "Ada", &["mandate-admins"]).await?;
    let b = Browser::new(&w)?;
    let session = b.sign_in("ada@example.com").await?;
    let (_, html) = b.get("/console/policies", &session).await?;
    let expected = field_in(&html, "expected_version");
    let before = w.s.admin(Method::GET, "/v1/policies", None).await?.1;
    let jwks = w.s.http.get(format!("{}/jwks.json", w.s.url)).send().await?.text().await?;
    let events = trail_len(&w).await?;
    for csrf in ["", "forged"] {
        let (st, _) = b.post("/console/keys/rotate", &session, &[("csrf", csrf)]).await?;
        assert_eq!(st, 403);
        let form = [("csrf", csrf), ("op", "save"), ("policies", ""), ("expected_version", expected.as_str())];
        let (st, _) = b.post("/console/policies", &session, &form).await?;
        assert_eq!(st, 403);
        let (st, _) = b.post("/console/policies/versions/1/restore", &session, &[("csrf", csrf)]).await?;
        assert_eq!(st, 403);
    }
    assert_eq!(w.s.admin(Method::GET, "/v1/policies", None).await?.1, before, "the policies changed");
    assert_eq!(w.s.http.get(format!("{}/jwks.json", w.s.url)).send().await?.text().await?, jwks, "a key was added");
    assert_eq!(trail_len(&w).await?, events, "something was recorded");
    Ok(())
}

#[tokio::test]
async fn the_inventory_reads_the_apis_filters_and_pages() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    person(&w, "Ada", &["mandate-admins"]).await?;
    let b = Browser::new(&w)?;
    let session = b.sign_in("ada@example.com").await?;
    let events = trail_len(&w).await?;
    for (bad, says) in [
        ("/console/inventory/agents?kind=robot", "kind must be one of"),
        ("/console/inventory/agents?owner=nobody", "owner is malformed"),
        ("/console/inventory/grants?status=sleeping", "status"),
        ("/console/inventory/users?cursor=not-a-cursor", "cursor is malformed"),
        ("/console/inventory/users?limit=0", "limit must be 1 to"),
        ("/console/inventory/resources?colour=red", "unknown parameter"),
    ] {
        let (st, html) = b.get(bad, &session).await?;
        assert_eq!(st, 400, "{bad}: {html}");
        assert!(html.contains(r#"role="alert""#) && html.contains(says), "{bad}: {html}");
    }
    assert_eq!(trail_len(&w).await?, events, "a refused filter recorded or changed something");
    let (st, _) = b.get("/console/inventory/secrets", &session).await?;
    assert_eq!(st, 404);

    // A filter, as the API reads it; empty fields are no filter.
    let (st, html) =
        b.get(&format!("/console/inventory/agents?owner={}&kind=&status=active", w.alice), &session).await?;
    assert_eq!(st, 200, "{html}");
    assert!(html.contains(&w.planner.id), "{html}");
    assert!(html.contains(&format!(r#"href="/console/agents/{}""#, w.planner.id)), "{html}");
    let (_, html) = b.get(&format!("/console/inventory/agents?owner={}", w.bob), &session).await?;
    assert!(!html.contains(&w.planner.id), "{html}");

    // Paging: one a page, every agent once, then no Next page.
    let mut seen = Vec::new();
    let mut next = Some("/console/inventory/agents?limit=1".to_owned());
    while let Some(path) = next.take() {
        let (st, html) = b.get(&path.replace("&#38;", "&"), &session).await?;
        assert_eq!(st, 200, "{path}: {html}");
        let ids: Vec<String> =
            html.split("<td>agt_").skip(1).filter_map(|r| r.split('<').next()).map(|id| format!("agt_{id}")).collect();
        assert_eq!(ids.len(), 1, "{html}");
        seen.extend(ids);
        next = html
            .split(r#"rel="next">Next page"#)
            .next()
            .filter(|_| html.contains("Next page"))
            .and_then(|h| h.rsplit(r#"href=""#).next().and_then(|r| r.split('"').next()).map(str::to_owned));
        assert!(seen.len() < 50, "paging does not end");
    }
    let (_, all) = w.s.admin(Method::GET, "/v1/agents", None).await?;
    let mut listed: Vec<String> =
        all["items"].as_array().into_iter().flatten().filter_map(|a| a["id"].as_str().map(str::to_owned)).collect();
    listed.sort();
    seen.sort();
    assert_eq!(seen, listed);

    // The agent's view: what GET /v1/agents/{id}/inventory answers.
    let (st, html) = b.get(&format!("/console/agents/{}", w.planner.id), &session).await?;
    assert_eq!(st, 200);
    assert!(html.contains(&w.alice) && html.contains("Live grants"), "{html}");
    // With the limits in force: the server's defaults, narrowed by the agent's.
    assert!(html.contains("<dt>Limits in force</dt><dd>tokens live at most 300 s;"), "{html}");
    let (st, body) =
        w.s.admin(
            Method::PATCH,
            &format!("/v1/agents/{}", w.planner.id),
            Some(json!({"limits": {"max_token_ttl": 60, "require_dpop": true}})),
        )
        .await?;
    assert_eq!(st, 200, "{body}");
    let (_, html) = b.get(&format!("/console/agents/{}", w.planner.id), &session).await?;
    assert!(
        html.contains("<dt>Limits in force</dt><dd>tokens live at most 60 s;") && html.contains("DPoP required"),
        "{html}"
    );
    Ok(())
}

#[tokio::test]
async fn a_stale_policy_save_is_409_keeps_the_text_and_changes_nothing() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let ada = person(&w, "Ada", &["mandate-admins"]).await?;
    let b = Browser::new(&w)?;
    let session = b.sign_in("ada@example.com").await?;
    let (_, html) = b.get("/console/policies", &session).await?;
    let csrf = field_in(&html, "csrf");
    let opened_on = field_in(&html, "expected_version");
    let (_, current) = w.s.admin(Method::GET, "/v1/policies", None).await?;
    assert_eq!(opened_on, current["version"].as_str().unwrap_or_default());
    let text = current["policies"].as_str().unwrap_or_default().to_owned();
    let draft = format!("{text}\n// console draft 42\n");

    // Test: the dry run, with a case; nothing saved.
    let cases =
        json!([{"principal": w.planner.id, "action": "read", "resource": CAL, "expected": "allow"}]).to_string();
    let form = [
        ("csrf", csrf.as_str()),
        ("op", "test"),
        ("policies", draft.as_str()),
        ("cases", cases.as_str()),
        ("expected_version", opened_on.as_str()),
    ];
    let (st, html) = b.post("/console/policies", &session, &form).await?;
    assert_eq!(st, 200, "{html}");
    assert!(html.contains("Test results") && html.contains("console draft 42"), "{html}");
    let (st, html) = b
        .post(
            "/console/policies",
            &session,
            &[("csrf", csrf.as_str()), ("op", "test"), ("policies", draft.as_str()), ("cases", "[{")],
        )
        .await?;
    assert_eq!(st, 400, "{html}");

    // Someone else saves meanwhile.
    let (st, body) =
        w.s.admin(Method::PUT, "/v1/policies", Some(json!({"policies": format!("{text}\n// admin edit\n")}))).await?;
    assert_eq!(st, 200, "{body}");
    let (_, theirs) = w.s.admin(Method::GET, "/v1/policies", None).await?;
    let events = trail_len(&w).await?;
    let save = |expected: String| {
        let (b, csrf, draft, session) = (&b, csrf.clone(), draft.clone(), session.clone());
        async move {
            let form = [
                ("csrf", csrf.as_str()),
                ("op", "save"),
                ("policies", draft.as_str()),
                ("expected_version", expected.as_str()),
            ];
            b.post("/console/policies", &session, &form).await
        }
    };
    let (st, html) = save(opened_on.clone()).await?;
    assert_eq!(st, 409, "{html}");
    assert!(html.contains("console draft 42"), "the editor lost the text: {html}");
    assert!(html.contains(r#"role="alert""#) && html.contains("changed since"), "{html}");
    assert_eq!(w.s.admin(Method::GET, "/v1/policies", None).await?.1, theirs, "the stale save changed the set");
    assert_eq!(trail_len(&w).await?, events, "the stale save recorded something");
    // An invalid set is 400, also keeping the text.
    let bad = "permit(principal, action, resource) when { nonsense };";
    let (st, html) = b
        .post(
            "/console/policies",
            &session,
            &[("csrf", csrf.as_str()), ("op", "save"), ("policies", bad), ("expected_version", "")],
        )
        .await?;
    assert_eq!(st, 400, "{html}");
    assert!(html.contains("nonsense"), "{html}");

    // Saved over the version it now shows: in force, recorded under Ada.
    let (st, html) = save(theirs["version"].as_str().unwrap_or_default().to_owned()).await?;
    assert_eq!(st, 200, "{html}");
    let (_, now) = w.s.admin(Method::GET, "/v1/policies", None).await?;
    assert_eq!(now["policies"], json!(draft));
    let last = w.s.audit("type=policy.updated").await?.pop().unwrap_or_default();
    assert_eq!(last["actor"], json!(ada), "{last}");
    let (_, versions) = w.s.admin(Method::GET, "/v1/policies/versions", None).await?;
    assert_eq!(versions["items"][0]["author"], json!(ada));

    // Restore the admin's edit from the history, by its Restore form.
    let n = versions["items"][1]["number"].as_u64().unwrap_or_default();
    let (_, html) = b.get("/console/policies", &session).await?;
    assert!(html.contains(&format!("/console/policies/versions/{n}/restore")), "{html}");
    let v = now["version"].as_str().unwrap_or_default();
    let (st, html) = b
        .post(
            &format!("/console/policies/versions/{n}/restore"),
            &session,
            &[("csrf", csrf.as_str()), ("expected_version", v)],
        )
        .await?;
    assert_eq!(st, 200, "{html}");
    assert_eq!(w.s.admin(Method::GET, "/v1/policies", None).await?.1["policies"], theirs["policies"]);
    let (st, html) = b.get(&format!("/console/policies/versions/{n}/diff"), &session).await?;
    assert_eq!(st, 200);
    assert!(html.contains("admin edit"), "{html}");
    Ok(())
}

#[tokio::test]
async fn a_rotation_on_the_console_is_recorded_under_the_person() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let ada = person(&w, "Ada", &["mandate-admins"]).await?;
    let b = Browser::new(&w)?;
    let session = b.sign_in("ada@example.com").await?;
    let (st, html) = b.get("/console/keys", &session).await?;
    assert_eq!(st, 200);
    assert!(html.contains("active") && !html.contains("retired</td>"), "{html}");
    let (st, html) = b.post("/console/keys/rotate", &session, &[("csrf", &field_in(&html, "csrf"))]).await?;
    assert_eq!(st, 200, "{html}");
    let kid = html
        .split("the new signing key is ")
        .nth(1)
        .and_then(|r| r.split(". ").next())
        .and_then(|r| r.split('.').next())
        .unwrap_or_default()
        .to_owned();
    assert!(!kid.is_empty(), "{html}");
    assert!(html.contains("retired</td>"), "the old key is not shown retired: {html}");
    let jwks = w.s.http.get(format!("{}/jwks.json", w.s.url)).send().await?.text().await?;
    assert!(jwks.contains(&kid), "{kid} is not published: {jwks}");
    let last = w.s.audit("type=key.rotated").await?.pop().unwrap_or_default();
    assert_eq!(last["actor"], json!(ada), "{last}");
    assert!(last["reason"].as_str().is_some_and(|r| r.contains(&kid)), "{last}");
    Ok(())
}
