//! The authorization code flow over HTTP (SECURITY rows 12–15 and 18): PKCE
//! S256 only, exact redirect URIs, `iss` in the response, single-use codes
//! whose replay revokes what they issued. The browser test drives the same
//! flow in Chromium.

use anyhow::Result;
use base64::Engine;
use mandate_jose::{KeyAlg, SigningKey};
use mandate_testkit::scenarios::{CAL, World, claims};
use mandate_testkit::{TestAgent, TestServer};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const REDIRECT: &str = "https://app.example/callback";
pub(crate) const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

pub(crate) fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

pub(crate) fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?)
}

pub(crate) fn location(resp: &reqwest::Response) -> String {
    resp.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

fn query_of(url: &str) -> Vec<(String, String)> {
    let q = url.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// An attribute value as askama escapes it, read back.
fn unescape(value: &str) -> String {
    value.replace("&#60;", "<").replace("&#62;", ">").replace("&#39;", "'").replace("&#34;", "\"").replace("&#38;", "&")
}

pub(crate) fn param(url: &str, k: &str) -> Option<String> {
    query_of(url).into_iter().find(|(n, _)| n == k).map(|(_, v)| v)
}

pub(crate) struct Flow {
    pub(crate) w: World,
    erin: String,
    app: TestAgent,
    pub(crate) session: String,
    pub(crate) http: reqwest::Client,
}

fn authorize_url(f: &Flow, extra: &[(&str, &str)], drop: &[&str]) -> String {
    let ch = challenge(VERIFIER);
    let mut p: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", &f.app.id),
        ("redirect_uri", REDIRECT),
        ("scope", "read"),
        ("resource", CAL),
        ("state", "xyz-42"),
        ("code_challenge", &ch),
        ("code_challenge_method", "S256"),
    ];
    p.retain(|(k, _)| !drop.contains(k));
    for (k, v) in extra {
        p.retain(|(n, _)| n != k);
        p.push((k, v));
    }
    let q: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(p).finish();
    format!("{}/oauth/authorize?{q}", f.w.s.url)
}

async fn flow() -> Result<Flow> {
    flow_on(TestServer::start().await?).await
}

pub(crate) async fn flow_on(s: TestServer) -> Result<Flow> {
    let w = World::new(s).await?;
    let (st, u) = w
        .s
        .admin(Method::POST, "/v1/users", Some(json!({"name": "Erin", "email": "erin@example.com", "groups": ["staff"], "password": "correct horse battery"})))
        .await?;
    assert_eq!(st, 201, "{u}");
    let key = SigningKey::generate(KeyAlg::EdDSA)?;
    let (st, a) = w
        .s
        .admin(
            Method::POST,
            "/v1/agents",
            Some(json!({"name": "Travel app", "owner": w.alice, "description": "books trips", "redirect_uris": [REDIRECT],
                        "jwks": {"keys": [key.public().to_json()]}})),
        )
        .await?;
    assert_eq!(st, 201, "{a}");
    let app = TestAgent { id: a["id"].as_str().unwrap_or_default().to_owned(), key };
    let http = client()?;
    // Sign in.
    let page = http.get(format!("{}/login", w.s.url)).send().await?;
    let login = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("mandate_login=").and_then(|r| r.split(';').next()).map(str::to_owned))
        .unwrap_or_default();
    let resp = http
        .post(format!("{}/login", w.s.url))
        .header("cookie", format!("mandate_login={login}"))
        .form(&[("csrf", login.as_str()), ("email", "erin@example.com"), ("password", "correct horse battery")])
        .send()
        .await?;
    let session = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("mandate_session=").and_then(|r| r.split(';').next()).map(str::to_owned))
        .unwrap_or_default();
    assert!(!session.is_empty());
    let erin = u["id"].as_str().unwrap_or_default().to_owned();
    Ok(Flow { w, erin, app, session, http })
}

impl Flow {
    pub(crate) async fn get(&self, url: &str) -> Result<reqwest::Response> {
        Ok(self.http.get(url).header("cookie", format!("mandate_session={}", self.session)).send().await?)
    }

    /// Shows the consent page for `url` and answers it.
    pub(crate) async fn consent(&self, url: &str, decision: &str) -> Result<(String, String)> {
        self.consent_to(url, decision, "https://app.example").await
    }

    /// Answers the consent page for a client whose redirect is at `origin`.
    pub(crate) async fn consent_to(&self, url: &str, decision: &str, origin: &str) -> Result<(String, String)> {
        let resp = self.get(url).await?;
        assert_eq!(resp.status(), 200);
        let csp =
            resp.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert!(
            csp.contains(&format!("form-action 'self' {origin}")) && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        let html = resp.text().await?;
        let consent_form = html.split(r#"action="/oauth/authorize""#).nth(1).unwrap_or_default();
        let mut form: Vec<(String, String)> = consent_form
            .split(r#"<input type="hidden" name=""#)
            .skip(1)
            .filter_map(|r| {
                let (name, rest) = r.split_once(r#"" value=""#)?;
                let value = rest.split('"').next()?;
                Some((name.to_owned(), unescape(value)))
            })
            .collect();
        form.push(("decision".into(), decision.into()));
        let resp = self
            .http
            .post(format!("{}/oauth/authorize", self.w.s.url))
            .header("cookie", format!("mandate_session={}", self.session))
            .form(&form)
            .send()
            .await?;
        let st = resp.status().as_u16();
        let to = location(&resp);
        assert_eq!(st, 303, "{}", resp.text().await?);
        Ok((to, html))
    }

    async fn redeem(&self, code: &str, verifier: Option<&str>, redirect: &str) -> Result<(u16, Value)> {
        let mut p = vec![("grant_type", "authorization_code"), ("code", code), ("redirect_uri", redirect)];
        if let Some(v) = verifier {
            p.push(("code_verifier", v));
        }
        self.w.grant(&self.app, &p).await
    }
}

#[tokio::test]
async fn the_code_flow_issues_a_token_for_the_person_acted_for_by_the_agent() -> Result<()> {
    let f = flow().await?;
    // Not signed in: to the sign-in page, and back afterwards.
    let resp = f.http.get(authorize_url(&f, &[], &[])).send().await?;
    assert_eq!(resp.status(), 303);
    assert!(location(&resp).starts_with("/login?next=%2Foauth%2Fauthorize"), "{}", location(&resp));

    let (back, html) = f.consent(&authorize_url(&f, &[], &[]), "allow").await?;
    for shown in ["Travel app", "books trips", "Alice (alice@example.com)", "read", "list, get", CAL, REDIRECT] {
        assert!(html.contains(shown), "the consent page lacks {shown:?}");
    }
    assert!(back.starts_with(REDIRECT), "{back}");
    assert_eq!(param(&back, "state").as_deref(), Some("xyz-42"));
    assert_eq!(param(&back, "iss").as_deref(), Some(f.w.s.issuer.as_str()));
    let code = param(&back, "code").unwrap_or_default();

    let (st, tokens) = f.redeem(&code, Some(VERIFIER), REDIRECT).await?;
    assert_eq!(st, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap_or_default().to_owned();
    let c = claims(&access);
    assert_eq!(c["sub"], f.erin);
    assert_eq!(c["act"]["sub"], f.app.id);
    // No offline_access asked, so no refresh token.
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    assert_eq!(f.w.s.introspect(&access).await?["active"], true);

    // SECURITY row 15: the code again is refused, and what it issued dies.
    let (st, body) = f.redeem(&code, Some(VERIFIER), REDIRECT).await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    assert_eq!(f.w.s.introspect(&access).await?["active"], false);
    Ok(())
}

#[tokio::test]
async fn pkce_redirect_uris_and_denials_are_strict() -> Result<()> {
    let f = flow().await?;
    // Row 12: plain or missing PKCE goes back with invalid_request.
    for (extra, drop) in [
        (vec![("code_challenge_method", "plain")], vec![]),
        (vec![], vec!["code_challenge"]),
        (vec![], vec!["code_challenge_method"]),
        (vec![("code_challenge", "short")], vec![]),
    ] {
        let resp = f.get(&authorize_url(&f, &extra, &drop)).await?;
        assert_eq!(resp.status(), 303);
        let to = location(&resp);
        assert!(to.starts_with(REDIRECT), "{to}");
        assert_eq!(param(&to, "error").as_deref(), Some("invalid_request"), "{to}");
        assert_eq!(param(&to, "iss").as_deref(), Some(f.w.s.issuer.as_str()));
    }
    // Row 14: any variant of the redirect URI is an error page, no redirect.
    for bad in [
        "https://app.example/callback/",
        "https://APP.example/callback",
        "https://app.example/callback?x=1",
        "https://app.example/callback#f",
        "https://app.example@evil.example/callback",
        "https://app.example/callback/../callback",
        "https://app.example/%63allback",
        "https://evil.example/callback",
    ] {
        let resp = f.get(&authorize_url(&f, &[("redirect_uri", bad)], &[])).await?;
        assert_eq!(resp.status(), 400, "{bad}");
        assert!(resp.headers().get("location").is_none(), "{bad}");
    }
    let dup = format!("{}&redirect_uri={}", authorize_url(&f, &[], &[]), url_enc(REDIRECT));
    assert_eq!(f.get(&dup).await?.status(), 400, "a repeated redirect_uri");
    // The person denies: access_denied with state and iss.
    let (back, _) = f.consent(&authorize_url(&f, &[], &[]), "deny").await?;
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(&back, "state").as_deref(), Some("xyz-42"));

    // Row 13: a code redeemed without, or with a wrong, verifier or URI.
    let (back, _) = f.consent(&authorize_url(&f, &[], &[]), "allow").await?;
    let code = param(&back, "code").unwrap_or_default();
    for (verifier, redirect) in [
        (None, REDIRECT),
        (Some("wrong-verifier-wrong-verifier-wrong-verifier-0"), REDIRECT),
        (Some(VERIFIER), "https://app.example/other"),
    ] {
        let (st, body) = f.redeem(&code, verifier, redirect).await?;
        assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    }
    // Those refusals did not use the code up.
    let (st, body) = f.redeem(&code, Some(VERIFIER), REDIRECT).await?;
    assert_eq!(st, 200, "{body}");
    Ok(())
}

fn url_enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// What MCP clients and generic OAuth libraries send, found by running them
/// unmodified: `resource` on the code and refresh requests, no `scope`,
/// `prompt`, `offline_access` and `dpop_jkt`.
#[tokio::test]
async fn the_code_flow_takes_what_mcp_clients_send() -> Result<()> {
    let f = flow().await?;
    // Parameters Mandate does not know are ignored (RFC 6749 §3.1), and
    // prompt=consent shows the consent page as always.
    let url = authorize_url(&f, &[("prompt", "consent"), ("nonce", "n-1"), ("scope", "read offline_access")], &[]);
    let (back, html) = f.consent(&url, "allow").await?;
    assert!(html.contains("app.example") && html.contains("offline_access"), "the host or offline_access is not shown");
    let code = param(&back, "code").unwrap_or_default();
    // `resource` with the code: the grant's is accepted, another is not.
    let redeem = |code: String, resource: &'static str| {
        let f = &f;
        async move {
            let p = [
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
                ("resource", resource),
            ];
            f.w.grant(&f.app, &p).await
        }
    };
    let (st, body) = redeem(code.clone(), "https://other.example").await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_target")), "{body}");
    let (st, tokens) = redeem(code, CAL).await?;
    assert_eq!(st, 200, "{tokens}");
    let refresh = tokens["refresh_token"].as_str().unwrap_or_default().to_owned();
    assert!(!refresh.is_empty(), "offline_access was asked and shown: {tokens}");
    // And with the refresh token.
    let (st, body) =
        f.w.grant(
            &f.app,
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh), ("resource", "https://other.example")],
        )
        .await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_target")), "{body}");
    // Naming the scopes again, offline_access included (as authlib does),
    // asks for nothing more than was granted.
    let (st, body) =
        f.w.grant(
            &f.app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("resource", CAL),
                ("scope", "read offline_access"),
            ],
        )
        .await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["scope"].as_str(), Some("read"), "{body}");

    // No scope: the resource's scopes within the client's ceiling, narrowed
    // by policy before the consent page (Erin is staff: read and write).
    let (back, html) = f.consent(&authorize_url(&f, &[], &["scope"]), "allow").await?;
    assert!(html.contains("list, get"), "the defaulted scopes are not shown");
    // The form names the scopes shown, so the grant is what was seen.
    assert!(html.contains(r#"name="scope" value="read"#), "the consent form does not carry the scopes shown");
    let code = param(&back, "code").unwrap_or_default();
    let (st, tokens) = f.redeem(&code, Some(VERIFIER), REDIRECT).await?;
    assert_eq!(st, 200, "{tokens}");
    let scope = tokens["scope"].as_str().unwrap_or_default();
    assert!(scope.split(' ').any(|s| s == "read"), "{scope}");

    // Scopes the resource does not declare are left out (an MCP client
    // that fell back to the server's scopes_supported); none at all is
    // invalid_scope.
    let (back, html) = f.consent(&authorize_url(&f, &[("scope", "read mail:send other:thing")], &[]), "allow").await?;
    assert!(html.contains("list, get") && !html.contains("mail:send"), "undeclared scopes are shown");
    let code = param(&back, "code").unwrap_or_default();
    let (st, tokens) = f.redeem(&code, Some(VERIFIER), REDIRECT).await?;
    assert_eq!((st, tokens["scope"].as_str()), (200, Some("read")), "{tokens}");
    let resp = f.get(&authorize_url(&f, &[("scope", "mail:send")], &[])).await?;
    assert_eq!(param(&location(&resp), "error").as_deref(), Some("invalid_scope"), "{}", location(&resp));

    // prompt=none: no page may be shown, and consent always is.
    let resp = f.get(&authorize_url(&f, &[("prompt", "none")], &[])).await?;
    assert_eq!(resp.status(), 303);
    assert_eq!(param(&location(&resp), "error").as_deref(), Some("consent_required"));
    let resp = f.http.get(authorize_url(&f, &[("prompt", "none")], &[])).send().await?;
    assert_eq!(param(&location(&resp), "error").as_deref(), Some("login_required"), "{}", location(&resp));
    let resp = f.get(&authorize_url(&f, &[("prompt", "none consent")], &[])).await?;
    assert_eq!(param(&location(&resp), "error").as_deref(), Some("invalid_request"));
    // prompt=login: a sign-in from the last minute is fresh; an older one
    // cannot be asked again, and the client is told so.
    assert_eq!(f.get(&authorize_url(&f, &[("prompt", "login")], &[])).await?.status(), 200);
    f.w.s.clock.advance(time::Duration::seconds(120));
    let resp = f.get(&authorize_url(&f, &[("prompt", "login")], &[])).await?;
    assert_eq!(param(&location(&resp), "error").as_deref(), Some("login_required"), "{}", location(&resp));

    // dpop_jkt (RFC 9449 §10): the code is redeemed only with that key.
    let key = SigningKey::generate(KeyAlg::EdDSA)?;
    let jkt = key.public().thumbprint();
    let (back, _) = f.consent(&authorize_url(&f, &[("dpop_jkt", &jkt)], &[]), "allow").await?;
    let code = param(&back, "code").unwrap_or_default();
    let (st, body) = f.redeem(&code, Some(VERIFIER), REDIRECT).await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")), "no proof: {body}");
    let proof = f.w.s.dpop(&key, "POST", "/oauth/token", None);
    let p = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let (st, body) = f.w.grant_dpop(&f.app, &proof, &p).await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let resp = f.get(&authorize_url(&f, &[("dpop_jkt", "not-a-thumbprint")], &[])).await?;
    assert_eq!(param(&location(&resp), "error").as_deref(), Some("invalid_request"));
    Ok(())
}

/// `allowed_actors` (ADR 0024): names that are no agent go back to the
/// client; the ones the person allows are the grant's `may_act`.
#[tokio::test]
async fn allowed_actors_on_the_authorization_request_becomes_may_act() -> Result<()> {
    let f = flow().await?;
    for bad in ["agt_01HZZZZZZZZZZZZZZZZZZZZZZZ", "ops", "group:"] {
        let resp = f.get(&authorize_url(&f, &[("allowed_actors", bad)], &[])).await?;
        let back = location(&resp);
        assert_eq!(param(&back, "error").as_deref(), Some("invalid_request"), "{bad}: {back}");
        assert!(param(&back, "error_description").is_some_and(|d| d.contains("allowed_actors")), "{back}");
    }
    let named = f.w.planner.id.clone();
    let list = format!("group:ops {named}");
    let (back, page) = f.consent(&authorize_url(&f, &[("allowed_actors", &list)], &[]), "allow").await?;
    // The person sees to whom the access may be passed on.
    assert!(
        page.contains("<dt>Passed on only to</dt>")
            && page.contains(&format!("<li><code>{named}</code></li>"))
            && page.contains("<li><code>group:ops</code></li>"),
        "{page}"
    );
    let code = param(&back, "code").unwrap_or_default();
    let (st, tokens) = f.redeem(&code, Some(VERIFIER), REDIRECT).await?;
    assert_eq!(st, 200, "{tokens}");
    let c = claims(tokens["access_token"].as_str().unwrap_or_default());
    assert_eq!(c["may_act"], json!({"mandate_actors": [named, "group:ops"]}), "{c}");
    Ok(())
}

/// RFC 9396 at the authorization endpoint (issue 16 §5): a detail its
/// schema refuses goes back to the client as `invalid_authorization_details`,
/// one policy refuses as `access_denied`; the person sees each field of an
/// accepted one, and the code's token carries exactly it.
#[tokio::test]
async fn authorization_details_at_the_authorization_endpoint() -> Result<()> {
    use mandate_testkit::scenarios::details::{PAY, pay, payment_resource};
    let f = flow().await?;
    payment_resource(&f.w).await?;
    let ask = |details: &str| {
        authorize_url(&f, &[("resource", PAY), ("scope", "pay"), ("authorization_details", details)], &[])
    };
    for bad in [
        r#"[{"type":"payment_initiation","amount":120,"currency":"euro","creditor":"ACME Corp"}]"#.to_owned(),
        r#"[{"type":"account_information"}]"#.to_owned(),
        "not json".to_owned(),
    ] {
        let back = location(&f.get(&ask(&bad)).await?);
        assert!(back.starts_with(REDIRECT), "{bad}: {back}");
        assert_eq!(param(&back, "error").as_deref(), Some("invalid_authorization_details"), "{bad}: {back}");
        assert_eq!(param(&back, "state").as_deref(), Some("xyz-42"), "{back}");
    }
    // Policy decides on each detail: above 10 000 is refused before the
    // person is asked.
    let back = location(&f.get(&ask(&pay(20_000, "EUR"))).await?);
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"), "{back}");
    assert!(param(&back, "code").is_none(), "{back}");
    // 120 EUR: shown field by field, escaped; the token carries it.
    let details = pay(120, "EUR").replace("ACME Corp", "<i>ACME</i>");
    let (back, page) = f.consent(&ask(&details), "allow").await?;
    assert!(page.contains("<dt>Only for</dt>") && page.contains("<caption>payment_initiation</caption>"), "{page}");
    assert!(page.contains(r#"<th scope="row">amount</th><td>120</td>"#), "{page}");
    assert!(page.contains(r#"<th scope="row">currency</th><td>EUR</td>"#), "{page}");
    assert!(page.contains("&#60;i&#62;ACME&#60;/i&#62;") && !page.contains("<i>ACME</i>"), "{page}");
    let code = param(&back, "code").unwrap_or_default();
    assert!(!code.is_empty(), "{back}");
    let (st, tokens) = f.redeem(&code, Some(VERIFIER), REDIRECT).await?;
    assert_eq!(st, 200, "{tokens}");
    let expected: Value = serde_json::from_str(&details)?;
    assert_eq!(tokens["authorization_details"], expected, "{tokens}");
    let at = tokens["access_token"].as_str().unwrap_or_default();
    let c = claims(at);
    assert_eq!((c["aud"].as_str(), &c["authorization_details"]), (Some(PAY), &expected), "{c}");
    let seen = f.w.s.introspect(at).await?;
    assert_eq!(seen["authorization_details"], expected, "{seen}");
    // The grant holds it: a check is covered up to 120 EUR only.
    for (amount, decision) in [(100, "allow"), (500, "deny")] {
        let detail =
            json!([{"type": "payment_initiation", "amount": amount, "currency": "EUR", "creditor": "<i>ACME</i>"}]);
        let body = json!({"token": at, "action": "pay", "resource": {"type": "payment", "id": "p1"},
                          "authorization_details": detail});
        let (st, d) = f.w.s.admin(Method::POST, "/v1/check", Some(body)).await?;
        assert_eq!((st, d["decision"].as_str()), (200, Some(decision)), "{amount}: {d}");
    }
    Ok(())
}
