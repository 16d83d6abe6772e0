//! The web pages over plain HTTP: sign-in, cookies, CSRF, the rate limit,
//! and the separation of sessions from access tokens. (The browser tests in
//! tests/browser drive the same pages in Chromium.)

use anyhow::Result;
use mandate_testkit::scenarios::{CAL, World, claims};
use mandate_testkit::{ADMIN_TOKEN, TestServer};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::json;

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?)
}

/// `name=value` of the cookie `name` set by `headers`, and the whole header.
fn set_cookie(headers: &HeaderMap, name: &str) -> Option<(String, String)> {
    headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
        let pair = c.split(';').next()?.trim();
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| (v.to_owned(), c.to_owned()))
    })
}

fn csrf_in(html: &str) -> String {
    field_in(html, "csrf")
}

/// The digest of what an approvals page showed (its first card's).
fn shown_in(html: &str) -> String {
    field_in(html, "shown")
}

fn field_in(html: &str, name: &str) -> String {
    let marker = format!(r#"name="{name}" value=""#);
    html.split(marker.as_str()).nth(1).and_then(|r| r.split('"').next()).unwrap_or_default().to_owned()
}

struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    async fn sign_in(&self, email: &str, password: &str) -> Result<(u16, Option<String>, String)> {
        let page = self.http.get(format!("{}/login?next=/grants", self.base)).send().await?;
        let (login, _) = set_cookie(page.headers(), "mandate_login").unwrap_or_default();
        let html = page.text().await?;
        let resp = self
            .http
            .post(format!("{}/login", self.base))
            .header("cookie", format!("mandate_login={login}"))
            .form(&[("csrf", csrf_in(&html).as_str()), ("next", "/grants"), ("email", email), ("password", password)])
            .send()
            .await?;
        let status = resp.status().as_u16();
        let session = set_cookie(resp.headers(), "mandate_session").map(|(v, whole)| {
            assert!(whole.contains("HttpOnly") && whole.contains("SameSite=Lax"), "{whole}");
            v
        });
        let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        Ok((status, session.filter(|s| !s.is_empty()), location))
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

    async fn post(&self, path: &str, session: &str, csrf: &str) -> Result<(u16, String)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", format!("mandate_session={session}"))
            .form(&[("csrf", csrf)])
            .send()
            .await?;
        Ok((resp.status().as_u16(), resp.text().await?))
    }

    /// Approves `id` from the approvals page `html` showed, with what it showed.
    async fn approve_shown(&self, id: &str, session: &str, html: &str) -> Result<u16> {
        let resp = self
            .http
            .post(format!("{}/approvals/{id}/approve", self.base))
            .header("cookie", format!("mandate_session={session}"))
            .form(&[("csrf", csrf_in(html)), ("shown", shown_in(html))])
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }
}

async fn world_with_password() -> Result<(World, Browser)> {
    let w = World::new(TestServer::start().await?).await?;
    let (st, body) =
        w.s.admin(
            Method::POST,
            "/v1/users",
            Some(json!({"name": "Carol", "email": "carol@example.com", "password": "correct horse battery"})),
        )
        .await?;
    assert_eq!(st, 201, "{body}");
    assert!(body.get("password").is_none() && body.get("password_hash").is_none());
    let b = Browser { http: client()?, base: w.s.url.clone() };
    Ok((w, b))
}

#[tokio::test]
async fn sign_in_sets_a_strict_cookie_that_is_never_an_access_token() -> Result<()> {
    let (w, b) = world_with_password().await?;
    let page = b.http.get(format!("{}/login", b.base)).send().await?;
    let csp =
        page.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.headers().get("referrer-policy").and_then(|v| v.to_str().ok()), Some("no-referrer"));
    let html = page.text().await?;
    assert!(html.contains(r#"<label for="email">Email</label>"#) && html.contains("Sign in"));

    let (st, session, _) = b.sign_in("carol@example.com", "wrong password").await?;
    assert_eq!((st, session), (401, None));
    let (st, session, location) = b.sign_in("carol@example.com", "correct horse battery").await?;
    assert_eq!((st, location.as_str()), (303, "/grants"));
    let session = session.unwrap_or_default();
    let (st, html) = b.get("/grants", &session).await?;
    assert_eq!(st, 200);
    assert!(html.contains("Sign out") && html.contains("carol@example.com"));

    // The cookie is not an API credential, as a cookie or as a bearer token.
    let resp = b
        .http
        .get(format!("{}/v1/grants", b.base))
        .header("cookie", format!("mandate_session={session}"))
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    let (st, _) = w.s.call(Method::GET, "/v1/grants", Some(&session), None).await?;
    assert_eq!(st, 401);
    // An access token (user API token) does not sign anyone in.
    let resp = b.http.get(format!("{}/grants", b.base)).bearer_auth(&w.alice_token).send().await?;
    assert_eq!(resp.status(), 303, "a bearer token opened a page");
    let resp = b
        .http
        .get(format!("{}/grants", b.base))
        .header("cookie", format!("mandate_session={ADMIN_TOKEN}"))
        .send()
        .await?;
    assert_eq!(resp.status(), 303, "the admin token opened a page");

    // Forms need the session's CSRF token.
    let (st, _) = b.post("/logout", &session, "forged").await?;
    assert_eq!(st, 403);
    let (st, html) = b.get("/grants", &session).await?;
    assert_eq!(st, 200);
    let (st, _) = b.post("/logout", &session, &csrf_in(&html)).await?;
    assert_eq!(st, 303);
    let (st, _) = b.get("/grants", &session).await?;
    assert_eq!(st, 303, "a signed-out session still opens pages");
    Ok(())
}

#[tokio::test]
async fn a_login_form_without_its_cookie_is_refused() -> Result<()> {
    let (_w, b) = world_with_password().await?;
    let resp = b
        .http
        .post(format!("{}/login", b.base))
        .form(&[("csrf", "x"), ("email", "carol@example.com"), ("password", "correct horse battery")])
        .send()
        .await?;
    assert_eq!(resp.status(), 403);
    assert!(set_cookie(resp.headers(), "mandate_session").is_none());
    Ok(())
}

/// A sign-in attempt from `from` (an address a trusted proxy forwards),
/// with a known-browser mark if given: (status, Retry-After, the mark set).
async fn attempt(
    w: &World,
    from: &str,
    email: &str,
    password: &str,
    known: Option<&str>,
) -> Result<(u16, Option<String>, Option<String>)> {
    let http = client()?;
    let page = http.get(format!("{}/login", w.s.url)).header("x-forwarded-for", from).send().await?;
    let (login, _) = set_cookie(page.headers(), "mandate_login").unwrap_or_default();
    let html = page.text().await?;
    let mut cookies = format!("mandate_login={login}");
    if let Some(k) = known {
        cookies.push_str(&format!("; mandate_known={k}"));
    }
    let resp = http
        .post(format!("{}/login", w.s.url))
        .header("x-forwarded-for", from)
        .header("cookie", cookies)
        .form(&[("csrf", csrf_in(&html).as_str()), ("next", "/grants"), ("email", email), ("password", password)])
        .send()
        .await?;
    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mark = set_cookie(resp.headers(), "mandate_known").map(|(v, _)| v);
    Ok((resp.status().as_u16(), retry, mark))
}

/// Failed sign-ins are paced, never locked (SECURITY row 45, docs/web.md):
/// one email from one address waits longer after each failure past three;
/// failures from everywhere only slow the email down; the person's own
/// browser, known from an earlier sign-in, is not held up by anyone else;
/// every attempt is audited, never a password.
#[tokio::test]
async fn failed_sign_ins_are_paced_never_locked_and_audited() -> Result<()> {
    let edge = mandate_server::edge::EdgeConfig {
        trusted_proxies: vec!["127.0.0.1/32".parse()?],
        ..mandate_testkit::test_edge()
    };
    let w = World::new(TestServer::start_with_edge(edge).await?).await?;
    let (st, _) =
        w.s.admin(
            Method::POST,
            "/v1/users",
            Some(json!({"name": "Carol", "email": "carol@example.com", "password": "correct horse battery"})),
        )
        .await?;
    assert_eq!(st, 201);
    let (good, bad) = ("correct horse battery", "nope nope nope");
    // Her own browser signs in once and is known from then on.
    let (st, _, mark) = attempt(&w, "192.0.2.10", "carol@example.com", good, None).await?;
    assert_eq!(st, 303);
    let mark = mark.expect("a known-browser mark");
    // From one address: three free failures, then 1 s, 2 s, … between attempts.
    for _ in 0..3 {
        assert_eq!(attempt(&w, "203.0.113.1", "carol@example.com", bad, None).await?.0, 401);
    }
    let (st, retry, _) = attempt(&w, "203.0.113.1", "carol@example.com", good, None).await?;
    assert_eq!((st, retry.as_deref()), (429, Some("1")), "the fourth attempt did not wait");
    w.s.clock.advance(time::Duration::seconds(1));
    assert_eq!(attempt(&w, "203.0.113.1", "carol@example.com", bad, None).await?.0, 401);
    assert_eq!(attempt(&w, "203.0.113.1", "carol@example.com", good, None).await?.1.as_deref(), Some("2"));
    // Another address is not held up by that one.
    assert_eq!(attempt(&w, "203.0.113.2", "carol@example.com", good, None).await?.0, 303);
    // Failures from many addresses: past the email's ceiling, attempts from
    // anywhere are slowed (2 s), never locked.
    let mut slowed_at = None;
    for n in 0..40 {
        match attempt(&w, &format!("198.51.100.{n}"), "carol@example.com", bad, None).await? {
            (401, _, _) => {}
            (429, retry, _) => {
                assert_eq!(retry.as_deref(), Some("2"), "slowed, not locked");
                slowed_at = Some(n);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(slowed_at.is_some_and(|n| n >= 10), "the ceiling applied at {slowed_at:?}");
    let (st, retry, _) = attempt(&w, "198.51.100.200", "carol@example.com", good, None).await?;
    assert_eq!((st, retry.as_deref()), (429, Some("2")));
    w.s.clock.advance(time::Duration::seconds(2));
    assert_eq!(attempt(&w, "198.51.100.200", "carol@example.com", good, None).await?.0, 303, "the email was locked");
    // Her known browser is not slowed by the attack at all, from anywhere.
    for _ in 0..20 {
        assert_eq!(attempt(&w, &format!("198.51.100.{}", 30), "carol@example.com", bad, None).await?.0 / 100, 4);
    }
    assert_eq!(attempt(&w, "192.0.2.99", "carol@example.com", good, Some(&mark)).await?.0, 303);
    // A mark for another person, or a forged one, is no mark.
    assert_eq!(attempt(&w, "192.0.2.99", "carol@example.com", good, Some("forged")).await?.0 / 100, 3 + 1);
    // Every attempt is in the trail, as events and counts; no password is.
    w.s.clock.advance(time::Duration::seconds(61));
    w.s.mandate.flush_refusals(false).await?;
    let failed = w.s.audit("type=session.sign_in_failed").await?;
    let counted: u64 = failed.iter().map(|e| e["count"].as_u64().unwrap_or(1)).sum();
    assert!(counted >= 40, "{counted} failures recorded: {failed:?}");
    assert!(
        failed
            .iter()
            .any(|e| e["count"].as_u64() > Some(1) && e["reason"].as_str().is_some_and(|r| r.contains("more refusal"))),
        "repeated refusals were not counted into one event"
    );
    assert!(failed.iter().all(|e| !e.to_string().contains("nope")), "a password reached the audit trail");
    Ok(())
}

#[tokio::test]
async fn revoking_a_grant_on_its_page_ends_the_agents_access() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let (st, _) =
        w.s.admin(Method::PATCH, &format!("/v1/users/{}", w.alice), Some(json!({"groups": ["staff"]}))).await?;
    assert_eq!(st, 200);
    // Alice gets a password through a fresh user (PATCH has no password).
    let (st, carol) = w
        .s
        .admin(Method::POST, "/v1/users", Some(json!({"name": "Dana", "email": "dana@example.com", "groups": ["staff"], "password": "correct horse battery"})))
        .await?;
    assert_eq!(st, 201);
    let dana = carol["id"].as_str().unwrap_or_default().to_owned();
    let (st, body) =
        w.ciba(&w.planner, &[("login_hint", "dana@example.com"), ("scope", "read"), ("resource", CAL)]).await?;
    assert_eq!(st, 200, "{body}");
    let (st, tokens) = w.poll(&w.planner, body["auth_req_id"].as_str().unwrap_or_default()).await?;
    assert_eq!(st, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap_or_default().to_owned();
    let grant = claims(&access)["grant_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(claims(&access)["sub"], dana);
    assert_eq!(w.check(&access, "list", "e1", json!({})).await?["decision"], "allow");

    let b = Browser { http: client()?, base: w.s.url.clone() };
    let (_, session, _) = b.sign_in("dana@example.com", "correct horse battery").await?;
    let session = session.unwrap_or_default();
    let (st, html) = b.get("/grants", &session).await?;
    assert_eq!(st, 200);
    assert!(html.contains(&grant) && html.contains("Revoke"));
    let (st, html) = b.post(&format!("/grants/{grant}/revoke"), &session, &csrf_in(&html)).await?;
    assert_eq!(st, 200, "{html}");
    assert!(html.contains("1 token(s) revoked"), "{html}");
    assert_eq!(w.check(&access, "list", "e1", json!({})).await?["decision"], "deny");
    // The tree of the grant is hers to see; another's is not.
    let (st, html) = b.get(&format!("/audit/trace/{grant}"), &session).await?;
    assert_eq!(st, 200);
    assert!(html.contains(&w.planner.id) && html.contains("Delegation tree"));
    let other = w.granted(&w.planner, "read").await?;
    let alices =
        claims(other["access_token"].as_str().unwrap_or_default())["grant_id"].as_str().unwrap_or_default().to_owned();
    let (st, _) = b.get(&format!("/audit/trace/{alices}"), &session).await?;
    assert_eq!(st, 403);
    Ok(())
}

#[tokio::test]
async fn an_approval_applies_only_to_what_was_shown() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let (st, _) = w
        .s
        .admin(Method::POST, "/v1/users", Some(json!({"name": "Dana", "email": "dana@example.com", "groups": ["staff"], "password": "correct horse battery"})))
        .await?;
    assert_eq!(st, 201);
    // Write grants wait for the user (scenario policies).
    let (st, req) = w
        .ciba(
            &w.planner,
            &[
                ("login_hint", "dana@example.com"),
                ("scope", "write"),
                ("resource", CAL),
                ("binding_message", "book the venue"),
            ],
        )
        .await?;
    assert_eq!(st, 200, "{req}");
    let id = req["auth_req_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(w.poll(&w.planner, &id).await?.1["error"], "authorization_pending");

    let b = Browser { http: client()?, base: w.s.url.clone() };
    let (_, session, _) = b.sign_in("dana@example.com", "correct horse battery").await?;
    let session = session.unwrap_or_default();
    let (st, html) = b.get("/approvals", &session).await?;
    assert_eq!(st, 200);
    assert!(html.contains(&id) && html.contains("book the venue") && html.contains(&w.planner.id), "{html}");
    let csrf = csrf_in(&html);
    let shown = shown_in(&html);
    // A decision naming something else than what was shown changes nothing.
    let post = |shown: String| {
        b.http
            .post(format!("{}/approvals/{id}/approve", b.base))
            .header("cookie", format!("mandate_session={session}"))
            .header("x-requested-with", "fetch")
            .form(&[("csrf", csrf.clone()), ("shown", shown)])
            .send()
    };
    assert_eq!(post("forged".into()).await?.status(), 409);
    assert_eq!(w.poll(&w.planner, &id).await?.1["error"], "slow_down");
    // What was shown: approved, and the live region comes back without it.
    let resp = post(shown.clone()).await?;
    assert_eq!(resp.status(), 200);
    let region = resp.text().await?;
    assert!(region.contains("Approved") && !region.contains("<html"), "{region}");
    w.s.clock.advance(time::Duration::seconds(6));
    let (st, tokens) = w.poll(&w.planner, &id).await?;
    assert_eq!(st, 200, "{tokens}");
    // Deciding again is refused.
    assert_eq!(post(shown).await?.status(), 409);
    Ok(())
}

#[tokio::test]
async fn auditors_see_the_whole_trail_and_every_tree() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    for (name, email, groups) in
        [("Dana", "dana@example.com", json!([])), ("Olga", "olga@example.com", json!(["mandate-auditors"]))]
    {
        let (st, _) =
            w.s.admin(
                Method::POST,
                "/v1/users",
                Some(json!({"name": name, "email": email, "groups": groups, "password": "correct horse battery"})),
            )
            .await?;
        assert_eq!(st, 201);
    }
    let tokens = w.granted(&w.planner, "read").await?;
    let grant =
        claims(tokens["access_token"].as_str().unwrap_or_default())["grant_id"].as_str().unwrap_or_default().to_owned();
    let b = Browser { http: client()?, base: w.s.url.clone() };
    for (email, sees) in [("dana@example.com", false), ("olga@example.com", true)] {
        let (_, session, _) = b.sign_in(email, "correct horse battery").await?;
        let session = session.unwrap_or_default();
        let (st, html) = b.get(&format!("/audit?user={}", w.alice), &session).await?;
        assert_eq!(st, 200);
        assert_eq!(html.contains("grant.created"), sees, "{email}: {html}");
        let (st, _) = b.get(&format!("/audit/trace/{grant}"), &session).await?;
        assert_eq!(st, if sees { 200 } else { 403 }, "{email}");
    }
    Ok(())
}

#[tokio::test]
async fn an_action_approval_shows_the_checked_properties() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let (st, _) = w
        .s
        .admin(Method::POST, "/v1/users", Some(json!({"name": "Dana", "email": "dana@example.com", "groups": ["staff"], "password": "correct horse battery"})))
        .await?;
    assert_eq!(st, 201);
    // A write grant: it waits for Dana, who approves it through the API.
    let (_, req) =
        w.ciba(&w.planner, &[("login_hint", "dana@example.com"), ("scope", "write"), ("resource", CAL)]).await?;
    let id = req["auth_req_id"].as_str().unwrap_or_default().to_owned();
    let b = Browser { http: client()?, base: w.s.url.clone() };
    let (_, session, _) = b.sign_in("dana@example.com", "correct horse battery").await?;
    let session = session.unwrap_or_default();
    let (_, html) = b.get("/approvals", &session).await?;
    assert_eq!(b.approve_shown(&id, &session, &html).await?, 200);
    w.s.clock.advance(time::Duration::seconds(6));
    let (st, tokens) = w.poll(&w.planner, &id).await?;
    assert_eq!(st, 200, "{tokens}");
    // A sensitive create waits for her, and her inbox shows what exactly.
    let token = tokens["access_token"].as_str().unwrap_or_default();
    let answer = w.check(token, "create", "e9", json!({"sensitive": "true", "amount": "120 EUR"})).await?;
    assert_eq!(answer["decision"], "approval_required", "{answer}");
    let (_, html) = b.get("/approvals", &session).await?;
    assert!(html.contains("<code>amount</code> = <code>120 EUR</code>"), "{html}");
    assert!(html.contains("<code>sensitive</code> = <code>true</code>"), "{html}");
    Ok(())
}

/// `(before cursor, (approval id, shown digest) per card)` of one page of
/// the inbox.
fn inbox_page(html: &str) -> (Option<String>, Vec<(String, String)>) {
    let before = html.split(r#"href="/approvals?before="#).nth(1).and_then(|r| r.split('"').next()).map(str::to_owned);
    let cards = html
        .split(r#"<li class="card" id=""#)
        .skip(1)
        .filter_map(|card| {
            let id = card.split('"').next()?.to_owned();
            let shown = card.split(r#"name="shown" value=""#).nth(1)?.split('"').next()?.to_owned();
            Some((id, shown))
        })
        .collect();
    (before, cards)
}

/// Pages never scan a capped list to find one record: with more pending
/// approvals and grants than any page or cap holds, the inbox pages through
/// all of them, the oldest request can still be decided, and an agent's last
/// use comes from its oldest grant.
#[tokio::test]
async fn the_inbox_pages_and_every_decision_reads_its_own_record() -> Result<()> {
    use mandate_core::store::{Change, Mutation};
    use mandate_model::records::{Approval, ApprovalStatus, ApprovalSubject, Grant, GrantStatus};
    let dir = tempfile::tempdir()?;
    let clock =
        std::sync::Arc::new(mandate_core::ManualClock::new(mandate_core::Clock::now(&mandate_core::SystemClock)));
    let store: std::sync::Arc<dyn mandate_core::Store> =
        std::sync::Arc::new(mandate_store_sqlite::SqliteStore::open(&dir.path().join("mandate.db")).await?);
    let s = TestServer::start_on(store.clone(), dir.path(), clock, |_| {}).await?;
    let w = World::new(s).await?;
    let (st, carol) =
        w.s.admin(
            Method::POST,
            "/v1/users",
            Some(json!({"name": "Carol", "email": "carol@example.com", "password": "correct horse battery"})),
        )
        .await?;
    assert_eq!(st, 201);
    let carol_id: mandate_model::UserId = carol["id"].as_str().unwrap_or_default().parse()?;
    let carols_agent = w.s.create_agent(&carol_id.to_string(), mandate_jose::KeyAlg::EdDSA).await?;
    let agent_id: mandate_model::AgentId = carols_agent.id.parse()?;
    let now = w.s.mandate.now();
    let id_at = |n: u64| ulid::Ulid::from_parts(1_800_000_000_000 + n, u128::from(n));
    let (mut approvals, mut grants) = (Vec::new(), Vec::new());
    for n in 0..1_100u64 {
        approvals.push(Mutation::InsertApproval(Approval {
            id: mandate_model::ApprovalId::from_ulid(id_at(n)),
            agent: agent_id,
            user: carol_id,
            approver: carol_id,
            resource: CAL.into(),
            subject: ApprovalSubject::Grant {
                scopes: mandate_model::ScopeSet::parse("read")?,
                requested_expiry: 600,
                may_act: None,
                authorization_details: Default::default(),
            },
            binding_message: Some(format!("request {n}")),
            status: ApprovalStatus::Pending,
            decided_by: None,
            created_at: now,
            expires_at: now + time::Duration::minutes(10),
            decided_at: None,
            grant: None,
            polled_at: None,
            group: None,
            required: 1,
            approved_by: Vec::new(),
        }));
    }
    for n in 0..1_001u64 {
        grants.push(Mutation::InsertGrant(Grant {
            id: mandate_model::GrantId::from_ulid(id_at(n)),
            user: carol_id,
            agent: agent_id,
            resource: CAL.into(),
            scopes: mandate_model::ScopeSet::parse("read")?,
            purpose: None,
            approved_by: "policy".into(),
            status: GrantStatus::Active,
            created_at: now,
            expires_at: now + time::Duration::days(1),
            revoked_at: None,
            last_used_at: None,
            may_act: None,
            authorization_details: Default::default(),
            reapproved_at: None,
            reapprovals: 0,
            lapsed_at: None,
        }));
    }
    for chunk in approvals.chunks(200).chain(grants.chunks(200)) {
        store.commit(chunk.iter().cloned().collect()).await?;
    }
    // Only the oldest grant was ever used.
    let used_at = now - time::Duration::hours(3);
    let oldest_grant = mandate_model::GrantId::from_ulid(id_at(0));
    store.commit(Change::new().with(Mutation::TouchGrant { id: oldest_grant, at: used_at })).await?;

    let b = Browser { http: client()?, base: w.s.url.clone() };
    let (_, session, _) = b.sign_in("carol@example.com", "correct horse battery").await?;
    let session = session.unwrap_or_default();
    let (mut path, mut seen, mut last) = ("/approvals".to_owned(), Vec::new(), None);
    let mut csrf = String::new();
    loop {
        let (st, html) = b.get(&path, &session).await?;
        assert_eq!(st, 200);
        csrf = if csrf.is_empty() { csrf_in(&html) } else { csrf };
        let (before, cards) = inbox_page(&html);
        assert!(cards.len() <= 50, "a page of {}", cards.len());
        last = cards.last().cloned().or(last);
        seen.extend(cards.into_iter().map(|(id, _)| id));
        match before {
            Some(b) => path = format!("/approvals?before={b}"),
            None => break,
        }
    }
    let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!((seen.len(), distinct.len()), (1_100, 1_100), "the inbox did not page through every request");
    // The oldest request, far past any cap, is decided from its own record.
    let (oldest, shown) = last.unwrap_or_default();
    assert_eq!(oldest, mandate_model::ApprovalId::from_ulid(id_at(0)).to_string());
    let resp = b
        .http
        .post(format!("{}/approvals/{oldest}/deny", b.base))
        .header("cookie", format!("mandate_session={session}"))
        .form(&[("csrf", csrf.as_str()), ("shown", shown.as_str())])
        .send()
        .await?;
    assert_eq!(resp.status(), 200, "{}", resp.text().await?);
    let decided = store.approval(oldest.parse()?).await?.map(|a| a.status);
    assert_eq!(decided, Some(ApprovalStatus::Denied));
    // The agent's last use comes from its oldest grant, past 1,000 newer ones.
    let (st, html) = b.get("/agents", &session).await?;
    assert_eq!(st, 200);
    let row = html.split(&format!(r#"<tr id="{}">"#, carols_agent.id)).nth(1).unwrap_or_default();
    let row = row.split("</tr>").next().unwrap_or_default();
    assert!(!row.contains("never"), "the last use was lost past the cap: {row}");
    Ok(())
}

#[tokio::test]
async fn a_payment_approval_shows_its_details_and_binds_them() -> Result<()> {
    use mandate_testkit::scenarios::details::{PAY, pay, payment_resource};
    let w = World::new(TestServer::start().await?).await?;
    let (st, _) = w
        .s
        .admin(Method::POST, "/v1/users", Some(json!({"name": "Dana", "email": "dana@example.com", "groups": ["staff"], "password": "correct horse battery"})))
        .await?;
    assert_eq!(st, 201);
    payment_resource(&w).await?;
    let details = pay(120, "EUR").replace("ACME Corp", "<b>ACME</b> & Co");
    let (st, req) = w
        .ciba(
            &w.planner,
            &[
                ("login_hint", "dana@example.com"),
                ("scope", "pay"),
                ("resource", PAY),
                ("binding_message", "pay the caterer"),
                ("authorization_details", &details),
            ],
        )
        .await?;
    assert_eq!(st, 200, "{req}");
    let id = req["auth_req_id"].as_str().unwrap_or_default().to_owned();
    let b = Browser { http: client()?, base: w.s.url.clone() };
    let (_, session, _) = b.sign_in("dana@example.com", "correct horse battery").await?;
    let session = session.unwrap_or_default();
    let (_, html) = b.get("/approvals", &session).await?;
    // Each field on a row of its own, escaped.
    assert!(html.contains("<caption>payment_initiation</caption>"), "{html}");
    assert!(html.contains(r#"<th scope="row">amount</th><td>120</td>"#), "{html}");
    assert!(html.contains(r#"<th scope="row">currency</th><td>EUR</td>"#), "{html}");
    assert!(html.contains("&#60;b&#62;ACME&#60;/b&#62; &#38; Co") && !html.contains("<b>ACME</b>"), "{html}");
    assert_eq!(b.approve_shown(&id, &session, &html).await?, 200);
    w.s.clock.advance(time::Duration::seconds(6));
    let (st, tokens) = w.poll(&w.planner, &id).await?;
    assert_eq!(st, 200, "{tokens}");
    let token = tokens["access_token"].as_str().unwrap_or_default();
    assert_eq!(claims(token)["authorization_details"][0]["amount"], 120);
    Ok(())
}

#[tokio::test]
async fn an_action_approval_shows_the_checked_context_escaped() -> Result<()> {
    // SECURITY row 33: the person sees the declared context the approval is
    // bound to, and a value is text, never markup.
    use mandate_testkit::scenarios::details::PAY;
    let w = World::new(TestServer::start().await?).await?;
    let (st, dana) = w
        .s
        .admin(Method::POST, "/v1/users", Some(json!({"name": "Dana", "email": "dana@example.com", "groups": ["staff"], "password": "correct horse battery"})))
        .await?;
    assert_eq!(st, 201, "{dana}");
    let dana = dana["id"].as_str().unwrap_or_default().to_owned();
    let (st, _) =
        w.s.admin(
            Method::POST,
            "/v1/resources",
            Some(json!({"identifier": PAY, "name": "Payments", "scopes": {"pay": ["pay"]},
                        "context": {"amount": "Long", "memo": "String"}})),
        )
        .await?;
    assert_eq!(st, 201);
    w.s.put_policies(
        r#"permit (principal in Group::"staff", action == Action::"pay", resource);
           permit (principal is Agent, action == Action::"pay", resource is Api);
           @approval("user")
           permit (principal is Agent, action == Action::"pay", resource is Resource) when { context has amount };"#,
    )
    .await?;
    let agent = w.s.create_agent(&dana, mandate_jose::KeyAlg::EdDSA).await?;
    let (st, req) = w.ciba(&agent, &[("login_hint", "dana@example.com"), ("scope", "pay"), ("resource", PAY)]).await?;
    assert_eq!(st, 200, "{req}");
    let (st, tokens) = w.poll(&agent, req["auth_req_id"].as_str().unwrap_or_default()).await?;
    assert_eq!(st, 200, "{tokens}");
    let token = tokens["access_token"].as_str().unwrap_or_default().to_owned();
    let check = |amount: i64| {
        json!({"token": token, "action": "pay", "resource": {"type": "payment", "id": "p1"},
               "context": {"amount": amount, "memo": "<b>rent</b> & more"}})
    };
    let (st, d) = w.s.admin(Method::POST, "/v1/check", Some(check(50))).await?;
    assert_eq!((st, d["decision"].as_str()), (200, Some("approval_required")), "{d}");
    let id = d["approval_request"].as_str().unwrap_or_default().to_owned();
    let b = Browser { http: client()?, base: w.s.url.clone() };
    let (_, session, _) = b.sign_in("dana@example.com", "correct horse battery").await?;
    let session = session.unwrap_or_default();
    let (_, html) = b.get("/approvals", &session).await?;
    assert!(html.contains(r#"aria-label="Context of the check"><caption>context</caption>"#), "{html}");
    assert!(html.contains(r#"<th scope="row">amount</th><td>50</td>"#), "{html}");
    assert!(html.contains("&#60;b&#62;rent&#60;/b&#62; &#38; more") && !html.contains("<b>rent</b>"), "{html}");
    assert_eq!(b.approve_shown(&id, &session, &html).await?, 200);
    // Approved for 50: 500 asks again; 50 is allowed.
    let (_, d) = w.s.admin(Method::POST, "/v1/check", Some(check(500))).await?;
    assert_eq!(d["decision"], "approval_required", "{d}");
    assert_ne!(d["approval_request"], id.as_str());
    let (_, d) = w.s.admin(Method::POST, "/v1/check", Some(check(50))).await?;
    assert_eq!(d["decision"], "allow", "{d}");
    Ok(())
}

#[tokio::test]
async fn the_review_page_decides_an_owners_items_and_auditors_start_campaigns() -> Result<()> {
    // A day-long grant is `expiring` in a window of one day (ADR 0036).
    let w = World::new(TestServer::start_with(|c| c.review.expiring_days = 1).await?).await?;
    let (st, dana) = w
        .s
        .admin(Method::POST, "/v1/users", Some(json!({"name": "Dana", "email": "dana@example.com", "groups": ["staff"], "password": "correct horse battery"})))
        .await?;
    assert_eq!(st, 201, "{dana}");
    let dana = dana["id"].as_str().unwrap_or_default().to_owned();
    // Dana's agent holds a grant that ends within the day: `expiring`.
    let agent = w.s.create_agent(&dana, mandate_jose::KeyAlg::EdDSA).await?;
    let tokens = w.granted(&agent, "read").await?;
    let access = tokens["access_token"].as_str().unwrap_or_default().to_owned();
    let grant = claims(&access)["grant_id"].as_str().unwrap_or_default().to_owned();
    let deadline = time::OffsetDateTime::from_unix_timestamp(w.s.now() + 7 * 86_400)?
        .format(&time::format_description::well_known::Rfc3339)?;
    let (st, campaign) =
        w.s.admin(
            Method::POST,
            "/v1/review/campaigns",
            Some(json!({"scope": {"owner": dana}, "deadline": deadline, "default": "keep"})),
        )
        .await?;
    assert_eq!(st, 201, "{campaign}");
    let (_, campaign) =
        w.s.admin(Method::GET, &format!("/v1/review/campaigns/{}", campaign["id"].as_str().unwrap_or_default()), None)
            .await?;
    let item = campaign["items"][0]["id"].as_str().unwrap_or_default().to_owned();
    assert!(item.starts_with("rvi_"), "{campaign}");

    let b = Browser { http: client()?, base: w.s.url.clone() };
    let (_, session, _) = b.sign_in("dana@example.com", "correct horse battery").await?;
    let session = session.unwrap_or_default();
    let (st, html) = b.get("/review", &session).await?;
    assert_eq!(st, 200);
    assert!(html.contains(&grant) && html.contains(">Keep<") && html.contains(">Narrow<") && html.contains(">Revoke<"));
    assert!(html.contains(r#"href="/review" aria-current="page""#), "the nav links the page");
    assert!(!html.contains("Start a campaign"), "a person who is no auditor starts no campaign");
    let decide = |csrf: String, decision: &'static str| {
        b.http
            .post(format!("{}/review/items/{item}/decide", b.base))
            .header("cookie", format!("mandate_session={session}"))
            .form(&[("csrf", csrf), ("decision", decision.to_owned())])
            .send()
    };
    // A forged form changes nothing.
    assert_eq!(decide("forged".into(), "revoke").await?.status().as_u16(), 403);
    assert_eq!(w.s.introspect(&access).await?["active"], true);
    let resp = decide(csrf_in(&html), "revoke").await?;
    assert_eq!(resp.status().as_u16(), 200);
    let html = resp.text().await?;
    assert!(html.contains("1 token(s) and 0 grant(s) revoked"), "{html}");
    assert_eq!(w.s.introspect(&access).await?["active"], false);
    assert_eq!(decide(csrf_in(&html), "keep").await?.status().as_u16(), 409, "decided twice");

    // An auditor sees the open campaigns and starts one.
    let (st, _) =
        w.s.admin(Method::PATCH, &format!("/v1/users/{dana}"), Some(json!({"groups": ["staff", "mandate-auditors"]})))
            .await?;
    assert_eq!(st, 200);
    let (_, html) = b.get("/review", &session).await?;
    assert!(html.contains("Start a campaign") && html.contains("1 of "), "{html}");
    let soon = deadline.get(..16).unwrap_or_default().to_owned();
    let resp = b
        .http
        .post(format!("{}/review/campaigns", b.base))
        .header("cookie", format!("mandate_session={session}"))
        .form(&[("csrf", csrf_in(&html)), ("owner", String::new()), ("deadline", soon), ("default", "revoke".into())])
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let html = resp.text().await?;
    assert!(html.contains("Started campaign rvc_"), "{html}");
    let (_, list) = w.s.admin(Method::GET, "/v1/review/campaigns", None).await?;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");
    // (Both were made in the same millisecond of the test clock: their order is the ids' random part.)
    let by_dana = list["items"].as_array().is_some_and(|a| a.iter().any(|c| c["created_by"] == dana.as_str()));
    assert!(by_dana, "{list}");
    Ok(())
}
