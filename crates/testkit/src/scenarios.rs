//! End-to-end delegation scenarios over HTTP (DESIGN §3): CIBA grants decided
//! by policy, approvals, refresh rotation, token exchange chains, the check
//! API and cascading revocation. Each runs on a fresh server; the SQLite and
//! the PostgreSQL test suites both run every one.
// Scenario code indexes JSON freely: a missing member reads as null and
// fails the comparison that follows.
#![allow(clippy::indexing_slicing)]

use std::future::Future;
use std::pin::Pin;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use mandate_jose::{KeyAlg, SigningKey};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{TestAgent, TestServer};

mod action_context;
pub mod details;
mod limits;
mod may_act;
pub mod reach;
use action_context::{
    an_action_approval_for_120_eur_does_not_cover_500, an_action_approval_is_bound_to_the_checked_context,
};
use details::a_payment_approval_covers_only_what_was_approved;
use limits::{limits_only_tighten_and_are_audited, spawn_and_exchange_limits, token_limits_refuse_and_pass};
use may_act::{
    a_bound_subject_token_is_exchanged_by_its_holder, allowed_actors_at_the_token_endpoint_are_ignored,
    may_act_from_policy, may_act_from_the_grant_request,
};
use reach::{
    a_ciba_grant_needs_two_members_of_the_group, a_group_action_approval_at_check,
    a_permit_applies_only_inside_its_window, an_action_approval_is_usable_only_inside_its_window,
    ciba_ping_and_push_reach_the_agent,
};

pub const CAL: &str = "https://calendar.example";

const POLICIES: &str = r#"
// Staff hold every calendar right.
permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
// Agents may read.
permit (principal is Agent, action in [Action::"list", Action::"get"], resource);
// Agents may be granted write, once the user approves the grant.
@approval("user")
permit (principal is Agent, action == Action::"create", resource is Api);
// Writing a sensitive event needs the user's approval each time.
@approval("user")
permit (principal is Agent, action == Action::"create", resource is Resource) when { resource.hasTag("sensitive") };
permit (principal is Agent, action == Action::"create", resource is Resource) unless { resource.hasTag("sensitive") };
// Agents may spawn helpers.
permit (principal is Agent, action == Action::"mandate:spawn", resource);
// Nobody may touch the board's calendar.
forbid (principal, action, resource is Resource) when { resource.hasTag("owner") && resource.getTag("owner") == "board" };
"#;

/// A server with Alice (staff), Bob (not staff), a calendar API, the
/// policies above, Alice's planner agent, and a resource-server checker.
pub struct World {
    pub s: TestServer,
    pub alice: String,
    pub alice_token: String,
    pub bob: String,
    pub bob_token: String,
    pub planner: TestAgent,
    /// The calendar as a client, and its `mandate:check` token.
    pub calendar: TestAgent,
    pub checker: String,
}

async fn created(s: &TestServer, path: &str, body: Value) -> Result<Value> {
    let (st, out) = s.admin(Method::POST, path, Some(body)).await?;
    ensure!(st == 201, "POST {path}: {st} {out}");
    Ok(out)
}

fn text(v: &Value, key: &str) -> Result<String> {
    v[key].as_str().map(str::to_owned).with_context(|| format!("{key} missing in {v}"))
}

impl World {
    pub async fn new(s: TestServer) -> Result<Self> {
        let alice = text(
            &created(&s, "/v1/users", json!({"name": "Alice", "email": "alice@example.com", "groups": ["staff"]}))
                .await?,
            "id",
        )?;
        let bob = text(&created(&s, "/v1/users", json!({"name": "Bob", "email": "bob@example.com"})).await?, "id")?;
        let alice_token = text(&created(&s, &format!("/v1/users/{alice}/tokens"), json!({})).await?, "token")?;
        let bob_token = text(&created(&s, &format!("/v1/users/{bob}/tokens"), json!({})).await?, "token")?;
        let cal_key = SigningKey::generate(KeyAlg::EdDSA)?;
        let cal = created(
            &s,
            "/v1/resources",
            json!({"identifier": CAL, "name": "Calendar", "scopes": {"read": ["list", "get"], "write": ["create"]},
                   "jwks": {"keys": [cal_key.public().to_json()]}}),
        )
        .await?;
        s.put_policies(POLICIES).await?;
        let planner = s.create_agent(&alice, KeyAlg::EdDSA).await?;
        let calendar = TestAgent { id: text(&cal, "id")?, key: cal_key };
        let (st, body) = s.token(&calendar, &s.issuer, "mandate:check").await?;
        ensure!(st == 200, "checker token: {st} {body}");
        let checker = text(&body, "access_token")?;
        Ok(Self { s, alice, alice_token, bob, bob_token, planner, calendar, checker })
    }

    /// `POST /oauth/bc-authorize` by `agent`.
    pub async fn ciba(&self, agent: &TestAgent, params: &[(&str, &str)]) -> Result<(u16, Value)> {
        let a = self.s.assertion(agent, json!({}));
        self.s.form_asserted(&a, "/oauth/bc-authorize", params).await
    }

    /// A CIBA poll by `agent`.
    pub async fn poll(&self, agent: &TestAgent, id: &str) -> Result<(u16, Value)> {
        self.grant(agent, &[("grant_type", "urn:openid:params:grant-type:ciba"), ("auth_req_id", id)]).await
    }

    /// Any grant at the token endpoint, authenticated as `agent`.
    pub async fn grant(&self, agent: &TestAgent, params: &[(&str, &str)]) -> Result<(u16, Value)> {
        let a = self.s.assertion(agent, json!({}));
        self.s.form_asserted(&a, "/oauth/token", params).await
    }

    /// Any grant at the token endpoint with a `DPoP` header.
    pub async fn grant_dpop(&self, agent: &TestAgent, proof: &str, params: &[(&str, &str)]) -> Result<(u16, Value)> {
        let a = self.s.assertion(agent, json!({}));
        let mut all = vec![
            ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
            ("client_assertion", a.as_str()),
        ];
        all.extend_from_slice(params);
        let (st, body, _) = self.s.form_headers("/oauth/token", &all, &[("DPoP", proof)]).await?;
        Ok((st, body))
    }

    /// A self-authorised grant of `scope` from Alice to `agent`, and its
    /// first tokens.
    pub async fn granted(&self, agent: &TestAgent, scope: &str) -> Result<Value> {
        let (st, body) = self
            .ciba(
                agent,
                &[
                    ("login_hint", "alice@example.com"),
                    ("scope", scope),
                    ("resource", CAL),
                    ("binding_message", "plan the offsite"),
                ],
            )
            .await?;
        ensure!(st == 200, "bc-authorize: {st} {body}");
        let (st, tokens) = self.poll(agent, &text(&body, "auth_req_id")?).await?;
        ensure!(st == 200, "poll: {st} {tokens}");
        Ok(tokens)
    }

    /// Token exchange by `agent` of `subject`, with `extra` parameters.
    pub async fn exchange(&self, agent: &TestAgent, subject: &str, extra: &[(&str, &str)]) -> Result<(u16, Value)> {
        let mut params = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", subject),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
        ];
        params.extend_from_slice(extra);
        self.grant(agent, &params).await
    }

    /// `POST /v1/check` as the calendar.
    pub async fn check(&self, token: &str, action: &str, id: &str, properties: Value) -> Result<Value> {
        let (st, body) = self
            .s
            .call(
                Method::POST,
                "/v1/check",
                Some(&self.checker),
                Some(json!({"token": token, "action": action, "resource": {"type": "event", "id": id, "properties": properties}})),
            )
            .await?;
        ensure!(st == 200, "check: {st} {body}");
        Ok(body)
    }

    /// An ephemeral child spawned by `parent` with its own `mandate:spawn` token.
    pub async fn spawn(&self, parent: &TestAgent, extra: Value) -> Result<TestAgent> {
        let (st, body) = self.s.token(parent, &self.s.issuer, "mandate:spawn").await?;
        ensure!(st == 200, "spawn token: {st} {body}");
        let spawn_token = text(&body, "access_token")?;
        let key = SigningKey::generate(KeyAlg::EdDSA)?;
        let mut req = json!({"name": "Summarizer", "owner": self.alice, "ttl_seconds": 600, "jwks": {"keys": [key.public().to_json()]}});
        if let (Some(r), Some(e)) = (req.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        let (st, body) = self.s.call(Method::POST, "/v1/agents", Some(&spawn_token), Some(req)).await?;
        ensure!(st == 201, "spawn: {st} {body}");
        ensure!(body["kind"] == "ephemeral" && body["parent"] == parent.id.as_str(), "{body}");
        Ok(TestAgent { id: text(&body, "client_id")?, key })
    }
}

/// The claims of a JWT, unverified (the tests verify through the server).
pub fn claims(jwt: &str) -> Value {
    part(jwt, 1)
}

/// The protected header of a JWT, unverified.
pub fn header(jwt: &str) -> Value {
    part(jwt, 0)
}

fn part(jwt: &str, n: usize) -> Value {
    jwt.split('.')
        .nth(n)
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

type Scenario = fn(World) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), |w| Box::pin($name(w)))),*]
    };
}

pub const SCENARIOS: &[(&str, Scenario)] = scenarios![
    ciba_self_authorises_by_policy,
    ciba_waits_for_the_approver,
    ciba_refusals,
    refresh_tokens_rotate_and_reuse_revokes_the_family,
    exchange_builds_a_narrowing_chain,
    exchange_refusals,
    check_decides_the_intersection_with_a_receipt,
    action_approvals_bind_to_what_was_shown,
    revocation_cascades_down_the_chain,
    ephemeral_agents_expire_at_use,
    policies_see_through_attributes,
    refresh_tokens_are_revocable,
    traces_show_only_the_callers_branch,
    action_approvals_are_single_use_and_die_with_their_grant,
    only_the_suspending_level_resumes,
    user_api_tokens_expire_and_are_revocable,
    ciba_requests_waiting_for_a_person_are_capped,
    allowed_checks_are_recorded_per_resource,
    an_ephemeral_child_without_a_policy_has_its_parents_rights,
    an_agent_asking_for_someone_else_waits_for_them,
    check_context_reaches_policy_under_the_declared_schema,
    the_client_address_reaches_policy,
    dpop_bound_reaches_policy_at_check,
    limits_only_tighten_and_are_audited,
    token_limits_refuse_and_pass,
    spawn_and_exchange_limits,
    may_act_from_the_grant_request,
    may_act_from_policy,
    a_bound_subject_token_is_exchanged_by_its_holder,
    allowed_actors_at_the_token_endpoint_are_ignored,
    a_payment_approval_covers_only_what_was_approved,
    an_action_approval_is_bound_to_the_checked_context,
    an_action_approval_for_120_eur_does_not_cover_500,
    a_ciba_grant_needs_two_members_of_the_group,
    a_permit_applies_only_inside_its_window,
    ciba_ping_and_push_reach_the_agent,
    a_group_action_approval_at_check,
    an_action_approval_is_usable_only_inside_its_window,
];

/// Runs every scenario on a fresh server from `factory`, which must allow
/// loopback callbacks (`dev_loopback_fetch`: the CIBA ping and push
/// scenario calls a receiver on 127.0.0.1).
pub async fn run_all<F, Fut>(factory: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<TestServer>>,
{
    let mut failures = Vec::new();
    for (name, scenario) in SCENARIOS {
        let world = World::new(factory().await?).await?;
        if let Err(e) = scenario(world).await {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    ensure!(failures.is_empty(), "delegation scenario failures:\n{}", failures.join("\n"));
    Ok(())
}

async fn ciba_self_authorises_by_policy(w: World) -> Result<()> {
    let (st, body) = w
        .ciba(
            &w.planner,
            &[
                ("login_hint", "alice@example.com"),
                ("scope", "read"),
                ("resource", CAL),
                ("binding_message", "plan the offsite"),
            ],
        )
        .await?;
    ensure!(st == 200 && body["interval"] == 5 && body["expires_in"] == 600, "{st} {body}");
    let id = text(&body, "auth_req_id")?;
    let (st, tokens) = w.poll(&w.planner, &id).await?;
    ensure!(st == 200, "{st} {tokens}");
    let c = claims(&text(&tokens, "access_token")?);
    ensure!(c["sub"] == w.alice.as_str() && c["act"]["sub"] == w.planner.id.as_str(), "{c}");
    ensure!(c["act"].get("act").is_none() && c["client_id"] == w.planner.id.as_str(), "{c}");
    ensure!(c["purpose"] == "plan the offsite" && c["scope"] == "read" && c["aud"] == CAL, "{c}");
    ensure!(text(&tokens, "refresh_token")?.starts_with("mnd_rt_"), "{tokens}");
    // The grant is a living record with its last use.
    let (st, list) = w.s.call(Method::GET, "/v1/grants", Some(&w.alice_token), None).await?;
    ensure!(st == 200 && list["items"].as_array().map(Vec::len) == Some(1), "{list}");
    let g = &list["items"][0];
    ensure!(g["approved_by"] == "policy" && g["status"] == "active" && g["id"] == c["grant_id"], "{g}");
    ensure!(g["last_used_at"].is_string(), "{g}");
    // Bob sees none of it; the request is single-use.
    let (_, list) = w.s.call(Method::GET, "/v1/grants", Some(&w.bob_token), None).await?;
    ensure!(list["items"].as_array().is_some_and(Vec::is_empty), "{list}");
    let (st, again) = w.poll(&w.planner, &id).await?;
    ensure!(st == 400 && again["error"] == "invalid_grant", "{st} {again}");
    // Another agent cannot collect it.
    let other = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    let (st, stolen) = w.poll(&other, &id).await?;
    ensure!(st == 400 && stolen["error"] == "invalid_grant", "{st} {stolen}");
    let events = w.s.audit("type=grant.created").await?;
    ensure!(events.len() == 1 && events[0]["reason"] == "approved_by policy", "{events:?}");
    Ok(())
}

async fn ciba_waits_for_the_approver(w: World) -> Result<()> {
    let ask = |hint: &'static str| {
        [("login_hint", hint), ("scope", "read write"), ("resource", CAL), ("binding_message", "book the venue")]
    };
    let (st, body) = w.ciba(&w.planner, &ask("alice@example.com")).await?;
    ensure!(st == 200, "{st} {body}");
    let id = text(&body, "auth_req_id")?;
    let (st, p) = w.poll(&w.planner, &id).await?;
    ensure!(st == 400 && p["error"] == "authorization_pending", "{st} {p}");
    let (st, p) = w.poll(&w.planner, &id).await?;
    ensure!(st == 400 && p["error"] == "slow_down", "{st} {p}");
    // Alice sees it; Bob does not; the agent's token is refused outright.
    let (st, list) = w.s.call(Method::GET, "/v1/approvals?status=pending", Some(&w.alice_token), None).await?;
    ensure!(st == 200 && list["approvals"][0]["id"] == id.as_str(), "{list}");
    ensure!(list["approvals"][0]["binding_message"] == "book the venue", "{list}");
    let (_, list) = w.s.call(Method::GET, "/v1/approvals", Some(&w.bob_token), None).await?;
    ensure!(list["approvals"].as_array().is_some_and(Vec::is_empty), "{list}");
    let (_, t) = w.s.token(&w.planner, CAL, "read").await?;
    let agent_token = text(&t, "access_token")?;
    let (st, _) = w.s.call(Method::GET, "/v1/approvals", Some(&agent_token), None).await?;
    ensure!(st == 401, "an agent's token listed approvals: {st}");
    let path = format!("/v1/approvals/{id}/approve");
    let (st, _) = w.s.call(Method::POST, &path, Some(&agent_token), None).await?;
    ensure!(st == 401, "an agent's token approved: {st}");
    let (st, _) = w.s.call(Method::POST, &path, Some(&w.bob_token), None).await?;
    ensure!(st == 403, "Bob approved Alice's request: {st}");
    let (st, _) = w.s.admin(Method::POST, &path, None).await?;
    ensure!(st == 403, "the admin approved for Alice: {st}");
    let (st, body) = w.s.call(Method::POST, &path, Some(&w.alice_token), None).await?;
    ensure!(st == 200 && body["status"] == "approved" && body["decided_by"] == w.alice.as_str(), "{st} {body}");
    let (st, _) = w.s.call(Method::POST, &format!("/v1/approvals/{id}/deny"), Some(&w.alice_token), None).await?;
    ensure!(st == 409, "decided twice: {st}");
    w.s.clock.advance(time::Duration::seconds(6));
    let (st, tokens) = w.poll(&w.planner, &id).await?;
    ensure!(st == 200 && tokens["scope"] == "read write", "{st} {tokens}");
    let (_, list) = w.s.call(Method::GET, "/v1/grants", Some(&w.alice_token), None).await?;
    ensure!(list["items"][0]["approved_by"] == w.alice.as_str(), "{list}");
    // A denial is access_denied; an unanswered request expires.
    let (_, body) = w.ciba(&w.planner, &ask("alice@example.com")).await?;
    let denied = text(&body, "auth_req_id")?;
    let (st, _) = w.s.call(Method::POST, &format!("/v1/approvals/{denied}/deny"), Some(&w.alice_token), None).await?;
    ensure!(st == 200);
    let (st, p) = w.poll(&w.planner, &denied).await?;
    ensure!(st == 400 && p["error"] == "access_denied", "{st} {p}");
    let (_, body) = w
        .ciba(
            &w.planner,
            &[("login_hint", w.alice.as_str()), ("scope", "write"), ("resource", CAL), ("requested_expiry", "60")],
        )
        .await?;
    let lapsed = text(&body, "auth_req_id")?;
    w.s.clock.advance(time::Duration::seconds(61));
    let (st, p) = w.poll(&w.planner, &lapsed).await?;
    ensure!(st == 400 && p["error"] == "expired_token", "{st} {p}");
    let (st, _) =
        w.s.call(Method::POST, &format!("/v1/approvals/{lapsed}/approve"), Some(&w.alice_token), None).await?;
    ensure!(st == 409, "an expired request was approved: {st}");
    Ok(())
}

async fn ciba_refusals(w: World) -> Result<()> {
    type Case<'a> = (&'a [(&'a str, &'a str)], u16, &'a str);
    let cases: &[Case<'_>] = &[
        // Bob does not hold write: the user must hold the right now.
        (&[("login_hint", "bob@example.com"), ("scope", "write"), ("resource", CAL)], 400, "access_denied"),
        (&[("login_hint", "nobody@example.com"), ("scope", "read"), ("resource", CAL)], 400, "unknown_user_id"),
        (&[("login_hint", "alice@example.com"), ("scope", "read")], 400, "invalid_target"),
        (&[("login_hint", "alice@example.com"), ("resource", CAL)], 400, "invalid_scope"),
        (&[("scope", "read"), ("resource", CAL)], 400, "invalid_request"),
        (
            &[("login_hint", "alice@example.com"), ("scope", "read"), ("resource", CAL), ("requested_expiry", "0")],
            400,
            "invalid_request",
        ),
        (&[("login_hint", "alice@example.com"), ("scope", "admin"), ("resource", CAL)], 400, "invalid_scope"),
    ];
    for (params, status, error) in cases {
        let (st, body) = w.ciba(&w.planner, params).await?;
        ensure!(st == *status && body["error"] == *error, "{params:?}: {st} {body}");
    }
    // The agent's ceiling binds too.
    let key = SigningKey::generate(KeyAlg::EdDSA)?;
    let capped = created(
        &w.s,
        "/v1/agents",
        json!({"name": "Reader", "owner": w.alice, "scopes": ["read"], "jwks": {"keys": [key.public().to_json()]}}),
    )
    .await?;
    let capped = TestAgent { id: text(&capped, "client_id")?, key };
    let (st, body) =
        w.ciba(&capped, &[("login_hint", "alice@example.com"), ("scope", "write"), ("resource", CAL)]).await?;
    ensure!(st == 400 && body["error"] == "access_denied", "{st} {body}");
    // Nothing was granted, and every refusal is in the trail.
    let (_, list) = w.s.admin(Method::GET, "/v1/grants", None).await?;
    ensure!(list["items"].as_array().is_some_and(Vec::is_empty), "{list}");
    let refused = w.s.audit("type=approval.requested").await?;
    ensure!(refused.iter().filter(|e| e["decision"] == "deny").count() == cases.len() + 1, "{refused:?}");
    Ok(())
}

async fn refresh_tokens_rotate_and_reuse_revokes_the_family(w: World) -> Result<()> {
    let first = w.granted(&w.planner, "read").await?;
    let r1 = text(&first, "refresh_token")?;
    let refresh = |rt: String| {
        let w = &w;
        async move { w.grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &rt)]).await }
    };
    let (st, second) = refresh(r1.clone()).await?;
    ensure!(st == 200, "{st} {second}");
    let r2 = text(&second, "refresh_token")?;
    ensure!(r2 != r1);
    let a2 = text(&second, "access_token")?;
    ensure!(w.s.introspect(&a2).await?["active"] == true);
    // Reuse of the rotated one: refused, and the whole family dies.
    let (st, reuse) = refresh(r1).await?;
    ensure!(st == 400 && reuse["error"] == "invalid_grant", "{st} {reuse}");
    ensure!(w.s.introspect(&a2).await?["active"] == false, "the family's access token survived a reuse");
    let a1 = text(&first, "access_token")?;
    ensure!(w.s.introspect(&a1).await?["active"] == false, "the family's first access token survived a reuse");
    let (st, body) = refresh(r2).await?;
    ensure!(st == 400 && body["error"] == "invalid_grant", "the family's newest refresh token survived: {st} {body}");
    ensure!(w.s.audit("type=refresh.reused").await?.len() == 1);
    // Concurrent uses of one refresh token: at most one succeeds, and the
    // family is revoked.
    let fresh = w.granted(&w.planner, "read").await?;
    let rt = text(&fresh, "refresh_token")?;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let a = w.s.assertion(&w.planner, json!({}));
        let (http, url, rt) = (w.s.http.clone(), format!("{}/oauth/token", w.s.url), rt.clone());
        tasks.push(tokio::spawn(async move {
            let form = [
                ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
                ("client_assertion", a.as_str()),
                ("grant_type", "refresh_token"),
                ("refresh_token", rt.as_str()),
            ];
            let resp = http.post(url).form(&form).send().await?;
            Ok::<_, anyhow::Error>((resp.status().as_u16(), resp.json::<Value>().await?))
        }));
    }
    let mut issued = Vec::new();
    for t in tasks {
        let (st, body) = t.await??;
        if st == 200 {
            issued.push(text(&body, "access_token")?);
        }
    }
    ensure!(issued.len() <= 1, "{} concurrent refreshes succeeded", issued.len());
    for a in &issued {
        ensure!(w.s.introspect(a).await?["active"] == false, "a raced refresh left a live token");
    }
    // Policy is re-checked on every refresh (SECURITY row 37).
    let third = w.granted(&w.planner, "read").await?;
    w.s.put_policies(
        &POLICIES.replace(
            "action in [Action::\"list\", Action::\"get\"], resource);",
            "action == Action::\"get\", resource);",
        ),
    )
    .await?;
    let (st, body) = refresh(text(&third, "refresh_token")?).await?;
    ensure!(st == 400 && body["error"] == "invalid_grant", "refresh survived a policy change: {st} {body}");
    w.s.put_policies(POLICIES).await?;
    // A revoked grant ends its refresh tokens.
    let fourth = w.granted(&w.planner, "read").await?;
    let grant_id = claims(&text(&fourth, "access_token")?)["grant_id"].as_str().unwrap_or_default().to_owned();
    let (st, g) = w.s.call(Method::POST, &format!("/v1/grants/{grant_id}/revoke"), Some(&w.alice_token), None).await?;
    ensure!(st == 200 && g["status"] == "revoked" && g["tokens_revoked"] == 1, "{st} {g}");
    let (st, body) = refresh(text(&fourth, "refresh_token")?).await?;
    ensure!(st == 400 && body["error"] == "invalid_grant", "{st} {body}");
    Ok(())
}

async fn exchange_builds_a_narrowing_chain(w: World) -> Result<()> {
    let tokens = w.granted(&w.planner, "read write").await;
    // write waits for approval: take read alone for the chain.
    ensure!(tokens.is_err(), "write self-authorised");
    let tokens = w.granted(&w.planner, "read").await?;
    let parent = text(&tokens, "access_token")?;
    let pc = claims(&parent);
    let child = w.spawn(&w.planner, json!({})).await?;
    let (st, body) = w.exchange(&child, &parent, &[("scope", "read")]).await?;
    ensure!(st == 200, "{st} {body}");
    ensure!(body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token", "{body}");
    ensure!(body.get("refresh_token").is_none(), "{body}");
    let hop = text(&body, "access_token")?;
    let c = claims(&hop);
    ensure!(c["sub"] == w.alice.as_str() && c["client_id"] == child.id.as_str(), "{c}");
    ensure!(c["act"]["sub"] == child.id.as_str() && c["act"]["act"]["sub"] == w.planner.id.as_str(), "{c}");
    ensure!(c["exp"].as_i64() <= pc["exp"].as_i64() && c["grant_id"] == pc["grant_id"], "{c}");
    ensure!(c["purpose"] == "plan the offsite", "{c}");
    let i = w.s.introspect(&hop).await?;
    ensure!(i["active"] == true && i["act"] == c["act"], "{i}");
    // The child's decisions are the chain's.
    let d = w.check(&hop, "list", "e1", json!({})).await?;
    ensure!(d["decision"] == "allow", "{d}");
    ensure!(d["chain"] == json!([w.alice, w.planner.id, child.id]), "{d}");
    // The trail draws the tree.
    let (st, tree) =
        w.s.admin(Method::GET, &format!("/v1/audit/trace/{}", pc["jti"].as_str().unwrap_or_default()), None).await?;
    ensure!(st == 200 && tree.to_string().contains(c["jti"].as_str().unwrap_or("?")), "{st} {tree}");
    Ok(())
}

async fn exchange_refusals(w: World) -> Result<()> {
    let tokens = w.granted(&w.planner, "read").await?;
    let parent = text(&tokens, "access_token")?;
    let child = w.spawn(&w.planner, json!({})).await?;
    let at = "urn:ietf:params:oauth:token-type:access_token";
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("scope", "read write")], "invalid_scope"),
        (vec![("resource", "https://other.example")], "invalid_target"),
        (vec![("audience", "https://other.example")], "invalid_target"),
        (vec![("act", "{\"sub\":\"agt_x\"}")], "invalid_request"),
        (vec![("may_act", "{\"sub\":\"agt_x\"}")], "invalid_request"),
        (vec![("requested_token_type", "urn:ietf:params:oauth:token-type:refresh_token")], "invalid_request"),
        (vec![("actor_token", parent.as_str()), ("actor_token_type", at)], "invalid_request"),
        (vec![("actor_token", parent.as_str())], "invalid_request"),
    ];
    for (extra, error) in &cases {
        let (st, body) = w.exchange(&child, &parent, extra).await?;
        ensure!(st == 400 && body["error"] == *error, "{extra:?}: {st} {body}");
    }
    // Other parameters the exchange does not read are ignored (RFC 6749
    // §3.2), and change nothing.
    let (st, body) = w.exchange(&child, &parent, &[("nonce", "n-1")]).await?;
    ensure!(st == 200, "{st} {body}");
    let c = claims(&text(&body, "access_token")?);
    ensure!(c["act"]["sub"] == child.id.as_str(), "{c}");
    // A missing or wrong subject token is an error, never a default.
    let (st, body) = w
        .grant(&child, &[("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"), ("subject_token_type", at)])
        .await?;
    ensure!(st == 400 && body["error"] == "invalid_request", "{st} {body}");
    let (st, body) = w.exchange(&child, "not.a.token", &[]).await?;
    ensure!(st == 400 && body["error"] == "invalid_request", "{st} {body}");
    // Delegation needs policy: Alice's other persistent agent is not the
    // planner's child, and no policy lets the planner delegate to it.
    let stranger = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    let (st, body) = w.exchange(&stranger, &parent, &[]).await?;
    ensure!(st == 400 && body["error"] == "invalid_request", "{st} {body}");
    // No agent twice; depth at most 4.
    let (_, hop) = w.exchange(&child, &parent, &[]).await?;
    let hop = text(&hop, "access_token")?;
    let (st, body) = w.exchange(&w.planner, &hop, &[]).await?;
    ensure!(st == 400 && body["error"] == "invalid_request", "planner twice: {st} {body}");
    let mut token = hop;
    let mut holder = child;
    for depth in 3..=5 {
        let next = w.spawn(&holder, json!({})).await?;
        let (st, body) = w.exchange(&next, &token, &[]).await?;
        if depth <= 4 {
            ensure!(st == 200, "depth {depth}: {st} {body}");
            token = text(&body, "access_token")?;
            holder = next;
        } else {
            ensure!(st == 400 && body["error"] == "invalid_request", "depth {depth}: {st} {body}");
        }
    }
    // A revoked subject token cannot be exchanged.
    let (st, _) = w.s.admin(Method::POST, &format!("/v1/agents/{}/suspend", w.planner.id), None).await?;
    ensure!(st == 200);
    let third = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    let (st, body) = w.exchange(&third, &parent, &[]).await?;
    ensure!(st == 400 && body["error"] == "invalid_request", "{st} {body}");
    let denied = w.s.audit("type=token.denied").await?;
    ensure!(denied.len() >= cases.len() + 5, "refusals are audited: {}", denied.len());
    Ok(())
}

async fn check_decides_the_intersection_with_a_receipt(w: World) -> Result<()> {
    let tokens = w.granted(&w.planner, "read").await?;
    let token = text(&tokens, "access_token")?;
    let d = w.check(&token, "get", "e1", json!({})).await?;
    ensure!(d["decision"] == "allow" && d["audit_seq"].as_u64().is_some_and(|s| s > 0), "{d}");
    ensure!(d["policy_version"].as_str().is_some_and(|v| v.starts_with("sha256:")), "{d}");
    ensure!(d["reasons"].as_array().is_some_and(|r| r.len() == 2), "user and agent reasons: {d}");
    // The same allow again (same resource) is recorded once: the receipt
    // points at it.
    let again = w.check(&token, "get", "e1", json!({})).await?;
    ensure!(again["audit_seq"] == d["audit_seq"], "{again}");
    // Not covered by the token's scopes.
    let d = w.check(&token, "create", "e1", json!({})).await?;
    ensure!(d["decision"] == "deny" && d["reasons"][0].as_str().is_some_and(|r| r.starts_with("scope")), "{d}");
    // A forbid wins.
    let d = w.check(&token, "get", "e3", json!({"owner": "board"})).await?;
    ensure!(d["decision"] == "deny" && d["reasons"][0].as_str().is_some_and(|r| r.contains("policy")), "{d}");
    // The user's current rights: Alice leaves staff, and her agent can do
    // no more than she can.
    let (st, _) = w.s.admin(Method::PATCH, &format!("/v1/users/{}", w.alice), Some(json!({"groups": []}))).await?;
    ensure!(st == 200);
    let d = w.check(&token, "get", "e1", json!({})).await?;
    ensure!(d["decision"] == "deny" && d["reasons"][0].as_str().is_some_and(|r| r.contains(w.alice.as_str())), "{d}");
    let (st, _) =
        w.s.admin(Method::PATCH, &format!("/v1/users/{}", w.alice), Some(json!({"groups": ["staff"]}))).await?;
    ensure!(st == 200);
    ensure!(w.check(&token, "get", "e1", json!({})).await?["decision"] == "allow");
    // Every agent of the chain must be allowed: policy denies the planner.
    w.s.put_policies(&format!("{POLICIES}\nforbid (principal == Agent::\"{}\", action, resource);", w.planner.id))
        .await?;
    let d = w.check(&token, "get", "e1", json!({})).await?;
    ensure!(d["decision"] == "deny", "{d}");
    w.s.put_policies(POLICIES).await?;
    // A resource server answers only for its own audience; other callers get 401.
    let (_, other) = w.s.token(&w.planner, CAL, "read").await?;
    let (st, _) =
        w.s.call(
            Method::POST,
            "/v1/check",
            Some(&text(&other, "access_token")?),
            Some(json!({"token": token, "action": "get", "resource": {"type": "event", "id": "1"}})),
        )
        .await?;
    ensure!(st == 403, "an agent's token called the check API: {st}");
    // Another resource server learns nothing of a token for the calendar:
    // a deny, and no chain (who acts for whom is the calendar's to know).
    let mail_key = SigningKey::generate(KeyAlg::EdDSA)?;
    let mail = created(
        &w.s,
        "/v1/resources",
        json!({"identifier": "https://mail.example", "name": "Mail", "scopes": {"read": ["list"]},
               "jwks": {"keys": [mail_key.public().to_json()]}}),
    )
    .await?;
    let mail = TestAgent { id: text(&mail, "id")?, key: mail_key };
    let (st, body) = w.s.token(&mail, &w.s.issuer, "mandate:check").await?;
    ensure!(st == 200, "{st} {body}");
    let (st, d) =
        w.s.call(
            Method::POST,
            "/v1/check",
            Some(&text(&body, "access_token")?),
            Some(json!({"token": token, "action": "get", "resource": {"type": "event", "id": "e1"}})),
        )
        .await?;
    ensure!(st == 200 && d["decision"] == "deny", "{st} {d}");
    ensure!(d["chain"].as_array().is_some_and(Vec::is_empty), "a foreign audience saw the chain: {d}");
    let (st, _) = w.s.call(Method::POST, "/v1/check", None, Some(json!({}))).await?;
    ensure!(st == 401);
    let (st, body) =
        w.s.call(
            Method::POST,
            "/v1/check",
            Some(&w.checker),
            Some(json!({"token": token, "action": "", "resource": {"type": "event", "id": "1"}})),
        )
        .await?;
    ensure!(st == 400, "{st} {body}");
    let (st, body) =
        w.s.call(
            Method::POST,
            "/v1/check",
            Some(&w.checker),
            Some(json!({"token": token, "action": "get", "resource": {"type": "event", "id": "1"}, "extra": 1})),
        )
        .await?;
    ensure!(st == 400, "{st} {body}");
    // AuthZEN says the same.
    let eval = |action: &str| json!({"subject": {"type": "token", "id": token}, "action": {"name": action}, "resource": {"type": "event", "id": "e1"}});
    let (st, body) = w.s.call(Method::POST, "/access/v1/evaluation", Some(&w.checker), Some(eval("get"))).await?;
    ensure!(st == 200 && body["decision"] == true && body["context"]["decision"] == "allow", "{st} {body}");
    let (st, body) = w.s.call(Method::POST, "/access/v1/evaluation", Some(&w.checker), Some(eval("create"))).await?;
    ensure!(st == 200 && body["decision"] == false, "{st} {body}");
    let denies = w.s.audit("type=check.decided").await?;
    ensure!(denies.iter().filter(|e| e["decision"] == "deny").count() >= 5, "{denies:?}");
    Ok(())
}

async fn action_approvals_bind_to_what_was_shown(w: World) -> Result<()> {
    // A write grant, approved by Alice.
    let (_, body) =
        w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "read write"), ("resource", CAL)]).await?;
    let id = text(&body, "auth_req_id")?;
    let (st, _) = w.s.call(Method::POST, &format!("/v1/approvals/{id}/approve"), Some(&w.alice_token), None).await?;
    ensure!(st == 200);
    let (st, tokens) = w.poll(&w.planner, &id).await?;
    ensure!(st == 200, "{st} {tokens}");
    let token = text(&tokens, "access_token")?;
    // An ordinary write is allowed; a sensitive one waits for Alice.
    ensure!(w.check(&token, "create", "e1", json!({})).await?["decision"] == "allow");
    let d = w.check(&token, "create", "e2", json!({"sensitive": "yes"})).await?;
    ensure!(d["decision"] == "approval_required", "{d}");
    let apr = text(&d, "approval_request")?;
    // Asking again points at the same request.
    let d = w.check(&token, "create", "e2", json!({"sensitive": "yes"})).await?;
    ensure!(d["approval_request"] == apr.as_str(), "{d}");
    let (_, list) = w.s.call(Method::GET, "/v1/approvals?status=pending", Some(&w.alice_token), None).await?;
    let shown = list["approvals"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["id"] == apr.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    ensure!(shown["subject"]["action"] == "create" && shown["subject"]["target"] == "event/e2", "{shown}");
    ensure!(shown["subject"]["chain"] == json!([w.planner.id]), "{shown}");
    let (st, _) = w.s.call(Method::POST, &format!("/v1/approvals/{apr}/approve"), Some(&w.alice_token), None).await?;
    ensure!(st == 200);
    ensure!(w.check(&token, "create", "e2", json!({"sensitive": "yes"})).await?["decision"] == "allow");
    // The approval covers only what was shown.
    let d = w.check(&token, "create", "e3", json!({"sensitive": "yes"})).await?;
    ensure!(d["decision"] == "approval_required" && d["approval_request"] != apr.as_str(), "{d}");
    let d = w.check(&token, "create", "e2", json!({"sensitive": "very"})).await?;
    ensure!(d["decision"] == "approval_required", "{d}");
    // Nor does it outlive its window.
    let mut w = w;
    w.s.clock.advance(time::Duration::seconds(601));
    let (_, renewed) = w.s.token(&w.calendar, &w.s.issuer, "mandate:check").await?;
    w.checker = text(&renewed, "access_token")?;
    let (_, fresh) = w
        .grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &text(&tokens, "refresh_token")?)])
        .await?;
    let d = w.check(&text(&fresh, "access_token")?, "create", "e2", json!({"sensitive": "yes"})).await?;
    ensure!(d["decision"] == "approval_required", "{d}");
    Ok(())
}

async fn revocation_cascades_down_the_chain(w: World) -> Result<()> {
    let dead = |t: String| {
        let w = &w;
        async move { Ok::<_, anyhow::Error>(w.s.introspect(&t).await?["active"] == false) }
    };
    // Revoking a token reaches its descendants, transitively.
    let (parent, _, hop, leaf) = make_chain(&w).await?;
    let resp =
        w.s.http
            .post(format!("{}/oauth/revoke", w.s.url))
            .bearer_auth(crate::server::ADMIN_TOKEN)
            .form(&[("token", hop.as_str())])
            .send()
            .await?;
    ensure!(resp.status() == 200);
    ensure!(dead(hop.clone()).await? && dead(leaf.clone()).await? && !dead(parent.clone()).await?, "token cascade");
    ensure!(w.check(&leaf, "get", "e1", json!({})).await?["decision"] == "deny");
    let revoked = w.s.audit("type=token.revoked").await?;
    ensure!(revoked.last().is_some_and(|e| e["count"] == 2), "{revoked:?}");
    // Revoking the grant reaches everything under it.
    let (parent, _, hop, leaf) = make_chain(&w).await?;
    let grant_id = claims(&parent)["grant_id"].as_str().unwrap_or_default().to_owned();
    let (st, g) = w.s.call(Method::POST, &format!("/v1/grants/{grant_id}/revoke"), Some(&w.alice_token), None).await?;
    ensure!(st == 200 && g["tokens_revoked"] == 3, "{st} {g}");
    for t in [parent, hop, leaf] {
        ensure!(dead(t).await?, "grant cascade");
    }
    // Suspending the middle agent reaches every token whose chain holds it.
    let (parent, child, hop, leaf) = make_chain(&w).await?;
    let (st, _) = w.s.admin(Method::POST, &format!("/v1/agents/{}/suspend", child.id), None).await?;
    ensure!(st == 200);
    ensure!(dead(hop).await? && dead(leaf).await? && !dead(parent.clone()).await?, "agent cascade");
    // Disabling the user revokes every grant and token she gave.
    let (st, _) =
        w.s.admin(Method::PATCH, &format!("/v1/users/{}", w.alice), Some(json!({"status": "disabled"}))).await?;
    ensure!(st == 200);
    ensure!(dead(parent).await?);
    let (_, list) = w.s.admin(Method::GET, &format!("/v1/grants?user={}", w.alice), None).await?;
    ensure!(list["items"].as_array().is_some_and(|g| g.iter().all(|g| g["status"] == "revoked")), "{list}");
    Ok(())
}

/// Alice → planner → child → grandchild: the grant's token, the child's
/// hop and the grandchild's leaf.
async fn make_chain(w: &World) -> Result<(String, TestAgent, String, String)> {
    let parent = text(&w.granted(&w.planner, "read").await?, "access_token")?;
    let child = w.spawn(&w.planner, json!({})).await?;
    let (_, hop) = w.exchange(&child, &parent, &[]).await?;
    let hop = text(&hop, "access_token")?;
    let grandchild = w.spawn(&child, json!({})).await?;
    let (_, leaf) = w.exchange(&grandchild, &hop, &[]).await?;
    Ok((parent, child, hop, text(&leaf, "access_token")?))
}

async fn ephemeral_agents_expire_at_use(w: World) -> Result<()> {
    let parent = text(&w.granted(&w.planner, "read").await?, "access_token")?;
    let child = w.spawn(&w.planner, json!({"ttl_seconds": 120})).await?;
    let (st, hop) = w.exchange(&child, &parent, &[]).await?;
    ensure!(st == 200, "{st} {hop}");
    let hop = text(&hop, "access_token")?;
    ensure!(claims(&hop)["exp"].as_i64() <= Some(w.s.now() + 120), "a child's token outlives the child");
    // A spawned agent's ceiling is its parent's, narrowed; its owner is its
    // parent's; it cannot be spawned by a token without mandate:spawn.
    let (_, t) = w.s.token(&w.planner, CAL, "read").await?;
    let (st, body) =
        w.s.call(
            Method::POST,
            "/v1/agents",
            Some(&text(&t, "access_token")?),
            Some(json!({"name": "X", "owner": w.alice})),
        )
        .await?;
    ensure!(st == 403, "{st} {body}");
    let (_, spawn) = w.s.token(&w.planner, &w.s.issuer, "mandate:spawn").await?;
    let (st, body) =
        w.s.call(
            Method::POST,
            "/v1/agents",
            Some(&text(&spawn, "access_token")?),
            Some(json!({"name": "X", "owner": w.bob, "jwks": {"keys": [child.key.public().to_json()]}})),
        )
        .await?;
    ensure!(st == 403, "{st} {body}");
    // Past its expiry, before any sweeper runs, the child can do nothing.
    w.s.clock.advance(time::Duration::seconds(121));
    let d = w.check(&hop, "get", "e1", json!({})).await?;
    ensure!(d["decision"] == "deny", "{d}");
    let fresh = text(&w.granted(&w.planner, "read").await?, "access_token")?;
    let (st, body) = w.exchange(&child, &fresh, &[]).await?;
    ensure!(st == 401 && body["error"] == "invalid_client", "an expired agent exchanged: {st} {body}");
    Ok(())
}

/// The base policies of [`POLICIES`] with the agent read permit and the
/// spawn permit, plus `extra`.
fn policies_with(extra: &str) -> String {
    format!("{POLICIES}\n{extra}")
}

/// SECURITY row 38: a policy that looks through an attribute (the agent's
/// owner and the owner's groups and tags, the parent, the receiving agent's
/// owner) applies at issuance, at exchange and at check, for `forbid` and
/// for `permit`.
async fn policies_see_through_attributes(w: World) -> Result<()> {
    let patch_alice = |body: Value| {
        let s = &w.s;
        let path = format!("/v1/users/{}", w.alice);
        async move {
            let (st, out) = s.admin(Method::PATCH, &path, Some(body)).await?;
            ensure!(st == 200, "patch alice: {st} {out}");
            Ok::<_, anyhow::Error>(())
        }
    };
    let ciba_read = || async {
        let (st, body) =
            w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "read"), ("resource", CAL)]).await?;
        Ok::<_, anyhow::Error>((st, body))
    };
    // Before any such policy: a grant, a check and a hop to a child work.
    let parent = text(&w.granted(&w.planner, "read").await?, "access_token")?;
    let child = w.spawn(&w.planner, json!({})).await?;
    let (st, hop) = w.exchange(&child, &parent, &[]).await?;
    ensure!(st == 200, "{st} {hop}");
    let hop = text(&hop, "access_token")?;
    ensure!(w.check(&parent, "get", "e1", json!({})).await?["decision"] == "allow");

    // forbid ... principal.owner in Group: issuance, check and exchange.
    w.s.put_policies(&policies_with(
        r#"forbid (principal is Agent, action, resource) when { principal.owner in Group::"contractors" };"#,
    ))
    .await?;
    ensure!(ciba_read().await?.0 == 200, "the forbid matched before Alice was a contractor");
    patch_alice(json!({"groups": ["staff", "contractors"]})).await?;
    let (st, body) = ciba_read().await?;
    ensure!(st == 400 && body["error"] == "access_denied", "owner in group, at issuance: {st} {body}");
    let d = w.check(&parent, "get", "e1", json!({})).await?;
    ensure!(d["decision"] == "deny", "owner in group, at check: {d}");
    let (st, body) = w.exchange(&child, &parent, &[]).await?;
    ensure!(st == 400, "owner in group, at exchange: {st} {body}");
    let (st, body) = w.s.token(&w.planner, CAL, "read").await?;
    ensure!(st == 400 && body["error"] == "invalid_scope", "owner in group, client_credentials: {st} {body}");
    patch_alice(json!({"groups": ["staff"]})).await?;
    ensure!(w.check(&parent, "get", "e1", json!({})).await?["decision"] == "allow", "the group change was not seen");

    // forbid ... hasTag/getTag on the owner.
    w.s.put_policies(&policies_with(
        r#"forbid (principal is Agent, action, resource) when { principal.owner.hasTag("clearance") && principal.owner.getTag("clearance") == "low" };"#,
    ))
    .await?;
    patch_alice(json!({"attributes": {"clearance": "low"}})).await?;
    let (st, body) = ciba_read().await?;
    ensure!(st == 400 && body["error"] == "access_denied", "owner tag, at issuance: {st} {body}");
    ensure!(w.check(&parent, "get", "e1", json!({})).await?["decision"] == "deny", "owner tag, at check");
    let (st, body) = w.exchange(&child, &parent, &[]).await?;
    ensure!(st == 400, "owner tag, at exchange: {st} {body}");

    // forbid ... through the parent: the planner is unaffected, its child is.
    w.s.put_policies(&policies_with(
        r#"forbid (principal is Agent, action, resource) when { principal has parent && principal.parent.owner.hasTag("clearance") && principal.parent.owner.getTag("clearance") == "low" };"#,
    ))
    .await?;
    ensure!(ciba_read().await?.0 == 200, "the planner has no parent");
    ensure!(w.check(&parent, "get", "e1", json!({})).await?["decision"] == "allow");
    let d = w.check(&hop, "get", "e1", json!({})).await?;
    ensure!(d["decision"] == "deny", "parent's owner tag, at check: {d}");
    let (st, body) = w.exchange(&child, &parent, &[]).await?;
    ensure!(st == 400 && body["error"] == "invalid_scope", "parent's owner tag, at exchange: {st} {body}");

    // forbid mandate:delegate by the receiving agent's owner.
    w.s.put_policies(&policies_with(
        r#"forbid (principal, action == Action::"mandate:delegate", resource) when { resource.owner in Group::"staff" && resource.owner.hasTag("clearance") };"#,
    ))
    .await?;
    let (st, body) = w.exchange(&child, &parent, &[]).await?;
    ensure!(st == 400 && body["error"] == "invalid_request", "receiving agent's owner, at exchange: {st} {body}");
    ensure!(w.check(&hop, "get", "e1", json!({})).await?["decision"] == "allow", "the existing hop is unaffected");

    // permit ... only agents whose owner is staff: Bob's agent is refused.
    let staff_only = POLICIES.replace(
        "permit (principal is Agent, action in [Action::\"list\", Action::\"get\"], resource);",
        "permit (principal is Agent, action in [Action::\"list\", Action::\"get\"], resource) when { principal.owner in Group::\"staff\" };",
    );
    ensure!(staff_only != POLICIES, "the permit to replace was not found");
    w.s.put_policies(&staff_only).await?;
    let bobs = w.s.create_agent(&w.bob, KeyAlg::EdDSA).await?;
    let (st, body) =
        w.ciba(&bobs, &[("login_hint", "alice@example.com"), ("scope", "read"), ("resource", CAL)]).await?;
    ensure!(st == 400 && body["error"] == "access_denied", "owner not staff, at issuance: {st} {body}");
    ensure!(ciba_read().await?.0 == 200, "the staff owner's agent was refused");
    ensure!(w.check(&parent, "get", "e1", json!({})).await?["decision"] == "allow");
    patch_alice(json!({"groups": []})).await?;
    let d = w.check(&parent, "get", "e1", json!({})).await?;
    ensure!(d["decision"] == "deny", "permit through the owner's group, at check, after she left it: {d}");
    Ok(())
}

/// SECURITY row 40 (RFC 7009): a refresh token is revocable, and takes its
/// whole family with it; `token_type_hint` orders the search but a wrong
/// hint does not stop it; another client's revocation changes nothing.
async fn revoke_as(w: &World, agent: &TestAgent, token: &str, hint: Option<&str>) -> Result<(u16, Value)> {
    let mut params = vec![("token", token)];
    if let Some(h) = hint {
        params.push(("token_type_hint", h));
    }
    let a = w.s.assertion(agent, json!({}));
    w.s.form_asserted(&a, "/oauth/revoke", &params).await
}

async fn refresh_as_planner(w: &World, rt: &str) -> Result<(u16, Value)> {
    w.grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", rt)]).await
}

async fn refresh_tokens_are_revocable(w: World) -> Result<()> {
    let bobs = w.s.create_agent(&w.bob, KeyAlg::EdDSA).await?;
    for hint in [None, Some("refresh_token"), Some("access_token"), Some("nonsense")] {
        let tokens = w.granted(&w.planner, "read").await?;
        let (access, rt) = (text(&tokens, "access_token")?, text(&tokens, "refresh_token")?);
        // Another client's revocation: 200, and nothing changes.
        let (st, body) = revoke_as(&w, &bobs, &rt, hint).await?;
        ensure!(st == 200 && body == json!({}), "{hint:?}: {st} {body}");
        let (st, next) = refresh_as_planner(&w, &rt).await?;
        ensure!(st == 200, "{hint:?}: another client's revocation took effect: {st} {next}");
        let rt = text(&next, "refresh_token")?;
        let second_access = text(&next, "access_token")?;
        // The holder's revocation revokes the family.
        let (st, body) = revoke_as(&w, &w.planner, &rt, hint).await?;
        ensure!(st == 200 && body == json!({}), "{hint:?}: {st} {body}");
        let (st, body) = refresh_as_planner(&w, &rt).await?;
        ensure!(st == 400 && body["error"] == "invalid_grant", "{hint:?}: a revoked refresh token worked: {body}");
        for a in [&access, &second_access] {
            ensure!(w.s.introspect(a).await? == json!({"active": false}), "{hint:?}: the family's access token lives");
        }
    }
    // An access token revoked under a refresh-token hint is revoked all the same.
    let tokens = w.granted(&w.planner, "read").await?;
    let access = text(&tokens, "access_token")?;
    let (st, _) = revoke_as(&w, &w.planner, &access, Some("refresh_token")).await?;
    ensure!(st == 200);
    ensure!(w.s.introspect(&access).await? == json!({"active": false}), "a wrong hint stopped an access revocation");
    // Every revocation is in the trail.
    let events = w.s.audit("type=token.revoked").await?;
    let family = events.iter().filter(|e| e["reason"].as_str().is_some_and(|r| r.contains("family"))).count();
    ensure!(family >= 4, "{events:?}");
    Ok(())
}

/// SECURITY row 42: a person who traces a token held by their agent, in a
/// tree that acts for someone else, sees that token's subtree and the path
/// up to its root, with every other branch reduced to a count; the person
/// the tree acts for, the admin and auditors see all of it.
async fn traces_show_only_the_callers_branch(w: World) -> Result<()> {
    w.s.put_policies(&policies_with(r#"permit (principal, action == Action::"mandate:delegate", resource);"#)).await?;
    let bobs = w.s.create_agent(&w.bob, KeyAlg::EdDSA).await?;
    let root = text(&w.granted(&w.planner, "read").await?, "access_token")?;
    let child = w.spawn(&w.planner, json!({})).await?;
    let (st, h1) = w.exchange(&child, &root, &[]).await?;
    ensure!(st == 200, "{st} {h1}");
    let h1 = text(&h1, "access_token")?;
    let grandchild = w.spawn(&child, json!({})).await?;
    let (st, leaf) = w.exchange(&grandchild, &h1, &[]).await?;
    ensure!(st == 200, "{st} {leaf}");
    let (st, h2) = w.exchange(&bobs, &root, &[]).await?;
    ensure!(st == 200, "{st} {h2}");
    let h2 = text(&h2, "access_token")?;
    let jti = |t: &str| claims(t)["jti"].as_str().unwrap_or_default().to_owned();
    let (root_jti, h1_jti, leaf_jti, h2_jti) = (jti(&root), jti(&h1), jti(&text(&leaf, "access_token")?), jti(&h2));
    let path = format!("/v1/audit/trace/{h2_jti}");
    // A check under the root token: Alice's business, not Bob's.
    ensure!(w.check(&root, "get", "private-e9", json!({})).await?["decision"] == "allow");

    // Bob: his agent's token, the path up to the root, and counts only.
    let (st, t) = w.s.call(Method::GET, &path, Some(&w.bob_token), None).await?;
    ensure!(st == 200, "{st} {t}");
    let body = t.to_string();
    for hidden in [&h1_jti, &leaf_jti, &child.id, &grandchild.id, &"private-e9".to_owned()] {
        ensure!(!body.contains(hidden.as_str()), "Bob sees {hidden} of another branch: {t}");
    }
    ensure!(!body.contains("grant.created") && !body.contains("plan the offsite"), "Bob sees the grant: {t}");
    let roots = t["tree"]["roots"].as_array().cloned().unwrap_or_default();
    ensure!(roots.len() == 1 && roots[0]["issued"]["jti"] == root_jti.as_str(), "{t}");
    ensure!(roots[0]["hidden"] == 2, "the other branch (two tokens) is counted: {t}");
    let kids = roots[0]["children"].as_array().cloned().unwrap_or_default();
    ensure!(kids.len() == 1 && kids[0]["issued"]["jti"] == h2_jti.as_str(), "{t}");
    // Bob may not trace the root or the other branch at all.
    for other in [&root_jti, &h1_jti] {
        let (st, _) = w.s.call(Method::GET, &format!("/v1/audit/trace/{other}"), Some(&w.bob_token), None).await?;
        ensure!(st == 403, "Bob traced {other}: {st}");
    }
    // Alice, for whom the whole tree acts, and the admin see all of it.
    for (who, token) in [("alice", w.alice_token.as_str()), ("admin", crate::ADMIN_TOKEN)] {
        let (st, t) = w.s.call(Method::GET, &path, Some(token), None).await?;
        ensure!(st == 200, "{who}: {st} {t}");
        let body = t.to_string();
        for seen in [&root_jti, &h1_jti, &leaf_jti, &h2_jti] {
            ensure!(body.contains(seen.as_str()), "{who} misses {seen}: {t}");
        }
        ensure!(!body.contains("\"hidden\"") && !body.contains("not shown"), "{who}: {t}");
    }
    Ok(())
}

/// A write grant from Alice to the planner, approved by her, and its tokens.
async fn approved_write_grant(w: &World) -> Result<Value> {
    let (_, body) =
        w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "read write"), ("resource", CAL)]).await?;
    let id = text(&body, "auth_req_id")?;
    let (st, _) = w.s.call(Method::POST, &format!("/v1/approvals/{id}/approve"), Some(&w.alice_token), None).await?;
    ensure!(st == 200);
    let (st, tokens) = w.poll(&w.planner, &id).await?;
    ensure!(st == 200, "{st} {tokens}");
    Ok(tokens)
}

/// A sensitive write approved by Alice: the approval request's id.
async fn approve_sensitive(w: &World, token: &str, id: &str) -> Result<String> {
    let d = w.check(token, "create", id, json!({"sensitive": "yes"})).await?;
    ensure!(d["decision"] == "approval_required", "{d}");
    let apr = text(&d, "approval_request")?;
    let (st, b) = w.s.call(Method::POST, &format!("/v1/approvals/{apr}/approve"), Some(&w.alice_token), None).await?;
    ensure!(st == 200, "{st} {b}");
    Ok(apr)
}

/// SECURITY row 43: an action approval covers one check, unless policy
/// allows reuse for a window (`@approval_reuse`); it is bound to its grant,
/// so it dies when the grant is revoked, and another grant's identical
/// check needs its own approval.
async fn action_approvals_are_single_use_and_die_with_their_grant(w: World) -> Result<()> {
    let tokens = approved_write_grant(&w).await?;
    let token = text(&tokens, "access_token")?;
    approve_sensitive(&w, &token, "e2").await?;
    let d = w.check(&token, "create", "e2", json!({"sensitive": "yes"})).await?;
    ensure!(d["decision"] == "allow", "{d}");
    // Used up: the identical check asks again, with a new request.
    let d = w.check(&token, "create", "e2", json!({"sensitive": "yes"})).await?;
    ensure!(d["decision"] == "approval_required", "the approval was reused: {d}");
    // Another grant with the same chain needs its own approval.
    approve_sensitive(&w, &token, "e4").await?;
    let other = approved_write_grant(&w).await?;
    let d = w.check(&text(&other, "access_token")?, "create", "e4", json!({"sensitive": "yes"})).await?;
    ensure!(d["decision"] == "approval_required", "an approval crossed grants: {d}");
    // A refreshed token of the same grant may use it (once).
    let (st, fresh) = w
        .grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &text(&tokens, "refresh_token")?)])
        .await?;
    ensure!(st == 200, "{st} {fresh}");
    let fresh = text(&fresh, "access_token")?;
    ensure!(w.check(&fresh, "create", "e4", json!({"sensitive": "yes"})).await?["decision"] == "allow");
    // Concurrent uses of one single-use approval: exactly one allow.
    approve_sensitive(&w, &fresh, "e5").await?;
    let one = || w.check(&fresh, "create", "e5", json!({"sensitive": "yes"}));
    let (a, b, c, d, e, f) = tokio::join!(one(), one(), one(), one(), one(), one());
    let answers = [a, b, c, d, e, f];
    let allows = answers.iter().filter(|d| d.as_ref().is_ok_and(|d| d["decision"] == "allow")).count();
    ensure!(allows == 1, "{allows} concurrent allows from one approval: {answers:?}");
    // The losers asked for new approvals (concurrently, perhaps several):
    // Alice turns them down, which also leaves room under the caps.
    let (_, pending) = w.s.call(Method::GET, "/v1/approvals?status=pending", Some(&w.alice_token), None).await?;
    for a in pending["approvals"].as_array().cloned().unwrap_or_default() {
        let id = a["id"].as_str().unwrap_or_default();
        let (st, _) = w.s.call(Method::POST, &format!("/v1/approvals/{id}/deny"), Some(&w.alice_token), None).await?;
        ensure!(st == 200);
    }
    // An approval whose grant is revoked is dead: pending, it cannot be
    // approved; approved, it allows nothing.
    let d = w.check(&fresh, "create", "e6", json!({"sensitive": "yes"})).await?;
    let pending = text(&d, "approval_request")?;
    approve_sensitive(&w, &fresh, "e7").await?;
    let grant = claims(&fresh)["grant_id"].as_str().unwrap_or_default().to_owned();
    let (st, _) = w.s.call(Method::POST, &format!("/v1/grants/{grant}/revoke"), Some(&w.alice_token), None).await?;
    ensure!(st == 200);
    let (st, b) =
        w.s.call(Method::POST, &format!("/v1/approvals/{pending}/approve"), Some(&w.alice_token), None).await?;
    ensure!(st == 409, "an approval under a revoked grant was approved: {st} {b}");
    ensure!(w.check(&fresh, "create", "e7", json!({"sensitive": "yes"})).await?["decision"] == "deny");

    // @approval_reuse("5m"): reusable for five minutes after it was given.
    let reusable = POLICIES.replace(
        "@approval(\"user\")\npermit (principal is Agent, action == Action::\"create\", resource is Resource)",
        "@approval(\"user\")\n@approval_reuse(\"5m\")\npermit (principal is Agent, action == Action::\"create\", resource is Resource)",
    );
    ensure!(reusable != POLICIES, "the approval policy to annotate was not found");
    w.s.put_policies(&reusable).await?;
    let tokens = approved_write_grant(&w).await?;
    let token = text(&tokens, "access_token")?;
    approve_sensitive(&w, &token, "e8").await?;
    for _ in 0..3 {
        let d = w.check(&token, "create", "e8", json!({"sensitive": "yes"})).await?;
        ensure!(d["decision"] == "allow", "{d}");
    }
    w.s.clock.advance(time::Duration::seconds(301));
    let (st, fresh) = w
        .grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &text(&tokens, "refresh_token")?)])
        .await?;
    ensure!(st == 200, "{st} {fresh}");
    let mut w = w;
    let (_, renewed) = w.s.token(&w.calendar, &w.s.issuer, "mandate:check").await?;
    w.checker = text(&renewed, "access_token")?;
    let d = w.check(&text(&fresh, "access_token")?, "create", "e8", json!({"sensitive": "yes"})).await?;
    ensure!(d["decision"] == "approval_required", "the reuse window did not end: {d}");
    // A malformed window is refused when the policy is written.
    let (st, _) = w
        .s
        .admin(
            Method::PUT,
            "/v1/policies",
            Some(json!({"policies": "@approval(\"user\")\n@approval_reuse(\"forever\")\npermit (principal, action, resource);"})),
        )
        .await?;
    ensure!(st == 400);
    Ok(())
}

/// SECURITY row 44: only the level that suspended an agent, or a higher
/// one, resumes it: the owner cannot undo the admin.
async fn only_the_suspending_level_resumes(w: World) -> Result<()> {
    let w = &w;
    let path = |op: &str| format!("/v1/agents/{}/{op}", w.planner.id);
    let as_alice = |op: &'static str| {
        let p = path(op);
        async move { w.s.call(Method::POST, &p, Some(&w.alice_token), None).await }
    };
    let as_admin = |op: &'static str| {
        let p = path(op);
        async move { w.s.admin(Method::POST, &p, None).await }
    };
    let (st, body) = as_admin("suspend").await?;
    ensure!(st == 200, "{st} {body}");
    let (st, body) = as_alice("resume").await?;
    ensure!(st == 403, "the owner undid the admin's suspension: {st} {body}");
    let (_, agent) = w.s.admin(Method::GET, &format!("/v1/agents/{}", w.planner.id), None).await?;
    ensure!(agent["status"] == "suspended" && agent["suspended_by"] == "admin", "{agent}");
    let denied = w.s.audit("type=admin.denied").await?;
    ensure!(denied.iter().any(|e| e["reason"].as_str().is_some_and(|r| r.contains("only the admin"))), "{denied:?}");
    let (st, _) = as_admin("resume").await?;
    ensure!(st == 200);
    // The owner's own suspension: the owner or the admin may lift it.
    let (st, _) = as_alice("suspend").await?;
    ensure!(st == 200);
    let (_, agent) = w.s.admin(Method::GET, &format!("/v1/agents/{}", w.planner.id), None).await?;
    ensure!(agent["suspended_by"] == "owner", "{agent}");
    let (st, _) = as_alice("resume").await?;
    ensure!(st == 200);
    let (st, _) = as_alice("suspend").await?;
    ensure!(st == 200);
    let (st, _) = as_admin("resume").await?;
    ensure!(st == 200, "the admin could not lift the owner's suspension");
    // The admin takes over a suspension the owner made: from then on only
    // the admin resumes it.
    let (st, _) = as_alice("suspend").await?;
    ensure!(st == 200);
    let (st, body) = as_admin("suspend").await?;
    ensure!(st == 200, "the admin could not take over the suspension: {st} {body}");
    let (st, _) = as_alice("resume").await?;
    ensure!(st == 403, "the owner undid the suspension the admin took over");
    let (st, _) = as_admin("resume").await?;
    ensure!(st == 200);
    let (_, agent) = w.s.admin(Method::GET, &format!("/v1/agents/{}", w.planner.id), None).await?;
    ensure!(agent["status"] == "active" && agent.get("suspended_by").is_none(), "{agent}");
    Ok(())
}

/// A person's API tokens expire (30 days unless asked), are listed without
/// their secrets, and are revoked by the person or the admin, at once.
async fn user_api_tokens_expire_and_are_revocable(w: World) -> Result<()> {
    let w = &w;
    let path = format!("/v1/users/{}/tokens", w.alice);
    let (st, t) = w.s.admin(Method::POST, &path, Some(json!({"ttl_seconds": 120}))).await?;
    ensure!(st == 201 && t["status"] == "active", "{st} {t}");
    let (short, short_id) = (text(&t, "token")?, text(&t, "id")?);
    ensure!(short_id.starts_with("utk_"), "{t}");
    let (st, t) = w.s.admin(Method::POST, &path, None).await?;
    ensure!(st == 201, "{st} {t}");
    let (long, long_id) = (text(&t, "token")?, text(&t, "id")?);
    let expires =
        time::OffsetDateTime::parse(&text(&t, "expires_at")?, &time::format_description::well_known::Rfc3339)?;
    let days = (expires.unix_timestamp() - w.s.now()) / 86_400;
    ensure!((29..=30).contains(&days), "default lifetime {days} days");
    for bad in [json!({"ttl_seconds": 10}), json!({"ttl_seconds": 400 * 86_400}), json!({"ttl": 5})] {
        let (st, b) = w.s.admin(Method::POST, &path, Some(bad.clone())).await?;
        ensure!(st == 400, "{bad}: {st} {b}");
    }
    // Only the admin mints them.
    let (st, _) = w.s.call(Method::POST, &path, Some(&w.alice_token), Some(json!({}))).await?;
    ensure!(st == 403, "a person minted their own token");
    let works = |token: String| async move {
        let (st, _) = w.s.call(Method::GET, "/v1/approvals", Some(&token), None).await?;
        Ok::<_, anyhow::Error>(st == 200)
    };
    ensure!(works(short.clone()).await? && works(long.clone()).await?);
    // Listed for the person and the admin, never with a secret; not for others.
    let (st, list) = w.s.call(Method::GET, &path, Some(&w.alice_token), None).await?;
    ensure!(st == 200 && list["tokens"].as_array().map(Vec::len) == Some(3), "{st} {list}");
    ensure!(!list.to_string().contains(&short) && !list.to_string().contains("mnd_user_"), "{list}");
    let (st, _) = w.s.call(Method::GET, &path, Some(&w.bob_token), None).await?;
    ensure!(st == 403);
    // Expiry: past its two minutes the short one authenticates nobody.
    w.s.clock.advance(time::Duration::seconds(121));
    ensure!(!works(short.clone()).await?, "an expired token worked");
    ensure!(works(long.clone()).await?);
    let (_, list) = w.s.admin(Method::GET, &path, None).await?;
    let status = |id: &str| {
        list["tokens"].as_array().and_then(|a| a.iter().find(|t| t["id"] == id)).map(|t| t["status"].clone())
    };
    ensure!(status(&short_id) == Some(json!("expired")), "{list}");
    // Revocation by the person (Bob cannot), at once.
    let revoke = format!("{path}/{long_id}/revoke");
    let (st, _) = w.s.call(Method::POST, &revoke, Some(&w.bob_token), None).await?;
    ensure!(st == 403);
    let (st, b) = w.s.call(Method::POST, &revoke, Some(&w.alice_token), None).await?;
    ensure!(st == 200 && b["status"] == "revoked", "{st} {b}");
    ensure!(!works(long.clone()).await?, "a revoked token worked");
    let (st, _) = w.s.admin(Method::POST, &revoke, None).await?;
    ensure!(st == 409, "revoked twice");
    let (st, _) = w.s.admin(Method::POST, &format!("{path}/utk_01JZZZZZZZZZZZZZZZZZZZZZZZ/revoke"), None).await?;
    ensure!(st == 404);
    ensure!(w.s.audit("type=user.token_revoked").await?.len() == 1);
    Ok(())
}

/// SECURITY row 45: one agent may keep only so many CIBA requests waiting
/// for one person (5); more are refused with 429 and `Retry-After`, and a
/// decision makes room.
async fn ciba_requests_waiting_for_a_person_are_capped(w: World) -> Result<()> {
    let ask = || w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "write"), ("resource", CAL)]);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (st, body) = ask().await?;
        ensure!(st == 200, "{st} {body}");
        ids.push(text(&body, "auth_req_id")?);
    }
    let a = w.s.assertion(&w.planner, json!({}));
    let resp =
        w.s.http
            .post(format!("{}/oauth/bc-authorize", w.s.url))
            .form(&[
                ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
                ("client_assertion", a.as_str()),
                ("login_hint", "alice@example.com"),
                ("scope", "write"),
                ("resource", CAL),
            ])
            .send()
            .await?;
    ensure!(resp.status() == 429, "{}", resp.status());
    ensure!(resp.headers().get("retry-after").is_some(), "no Retry-After");
    let body: Value = resp.json().await?;
    ensure!(body["error"] == "slow_down", "{body}");
    // A self-authorised request waits for nobody and is not capped.
    let (st, body) =
        w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "read"), ("resource", CAL)]).await?;
    ensure!(st == 200, "{st} {body}");
    // A decision makes room.
    let (st, _) = w.s.call(Method::POST, &format!("/v1/approvals/{}/deny", ids[0]), Some(&w.alice_token), None).await?;
    ensure!(st == 200);
    let (st, body) = ask().await?;
    ensure!(st == 200, "{st} {body}");
    // Approvals asked for by checks count against the same caps. Alice
    // approves one write grant (four requests wait), a sensitive write asks
    // her again (five), and the next one is denied rather than queued.
    let (st, _) =
        w.s.call(Method::POST, &format!("/v1/approvals/{}/approve", ids[1]), Some(&w.alice_token), None).await?;
    ensure!(st == 200);
    let (st, tokens) = w.poll(&w.planner, &ids[1]).await?;
    ensure!(st == 200, "{st} {tokens}");
    let token = text(&tokens, "access_token")?;
    let d = w.check(&token, "create", "s1", json!({"sensitive": "yes"})).await?;
    ensure!(d["decision"] == "approval_required", "{d}");
    let d = w.check(&token, "create", "s2", json!({"sensitive": "yes"})).await?;
    ensure!(
        d["decision"] == "deny" && d["reasons"][0].as_str().is_some_and(|r| r.contains("too many requests waiting")),
        "a check queued past the cap: {d}"
    );
    let (st, body) = ask().await?;
    ensure!(st == 429, "the cap is full again: {st} {body}");
    let refused = w.s.audit("type=approval.requested").await?;
    ensure!(
        refused.iter().any(|e| e["decision"] == "deny" && e["reason"].as_str().is_some_and(|r| r.contains("waiting")))
    );
    Ok(())
}

/// The trail shows every resource a token touched: the first allow per
/// token, action and resource is recorded (later identical ones answer with
/// its seq), so two events show two resources.
async fn allowed_checks_are_recorded_per_resource(w: World) -> Result<()> {
    let token = text(&w.granted(&w.planner, "read").await?, "access_token")?;
    let jti = claims(&token)["jti"].as_str().unwrap_or_default().to_owned();
    let first = w.check(&token, "get", "e1", json!({})).await?;
    let again = w.check(&token, "get", "e1", json!({})).await?;
    ensure!(first["decision"] == "allow" && again["audit_seq"] == first["audit_seq"], "{first} {again}");
    let other = w.check(&token, "get", "e2", json!({})).await?;
    ensure!(other["decision"] == "allow" && other["audit_seq"] != first["audit_seq"], "{other}");
    let events = w.s.audit(&format!("type=check.decided&jti={jti}")).await?;
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    ensure!(events.len() == 2, "{reasons:?}");
    ensure!(reasons.iter().any(|r| r.starts_with("event/e1")) && reasons.iter().any(|r| r.starts_with("event/e2")));
    Ok(())
}

/// Issue 16 §1: a child spawned with no policy of its own is decided as
/// its parent, narrowed by its ceiling; forbidding children stops it.
async fn an_ephemeral_child_without_a_policy_has_its_parents_rights(w: World) -> Result<()> {
    let p = &w.planner.id;
    let named = format!(
        r#"permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
           permit (principal == Agent::"{p}", action in [Action::"list", Action::"get", Action::"create", Action::"mandate:spawn"], resource);"#
    );
    w.s.put_policies(&named).await?;
    let child = w.spawn(&w.planner, json!({"scopes": ["read"]})).await?;
    let tokens = w.granted(&w.planner, "read write").await?;
    let subject = text(&tokens, "access_token")?;
    let (st, body) = w.exchange(&child, &subject, &[("scope", "read")]).await?;
    ensure!(st == 200, "delegating to a child with no policy of its own: {st} {body}");
    let narrower = text(&body, "access_token")?;
    let d = w.check(&narrower, "get", "e1", json!({})).await?;
    ensure!(d["decision"] == "allow", "{d}");
    ensure!(d["reasons"][2].as_str().is_some_and(|r| r.contains("as parent of")), "{d}");
    // Its own ceiling still narrows it.
    let (st, body) = w.exchange(&child, &subject, &[("scope", "write")]).await?;
    ensure!(st == 400 && body["error"] == "invalid_scope", "{st} {body}");
    // Forbidding ephemeral agents stops it, at exchange and at check.
    w.s.put_policies(&format!(
        r#"{named}
           forbid (principal is Agent, action, resource) when {{ principal.kind == "ephemeral" }};"#
    ))
    .await?;
    let (st, body) = w.exchange(&child, &subject, &[("scope", "read")]).await?;
    ensure!(st == 400 && body["error"] == "invalid_scope", "{st} {body}");
    let d = w.check(&narrower, "get", "e1", json!({})).await?;
    ensure!(d["decision"] == "deny", "{d}");
    let denied = w.s.audit("type=token.denied").await?;
    ensure!(!denied.is_empty(), "the refused exchanges are recorded");
    Ok(())
}

/// The defaults shipped in docs/delegation.md: an agent acts for its owner
/// by policy, and for anyone else only once that person approves.
pub const OWNER_DEFAULTS: &str = r#"
permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
permit (principal is Agent, action in [Action::"list", Action::"get"], resource)
  when { context has user && principal.owner == context.user };
@approval("user")
permit (principal is Agent, action in [Action::"list", Action::"get"], resource)
  when { context has user && principal.owner != context.user };
"#;

/// Issue 16 §6, SECURITY row 47: Bob's agent asking for Alice waits for
/// Alice under the documented defaults; Alice's own agent does not.
async fn an_agent_asking_for_someone_else_waits_for_them(w: World) -> Result<()> {
    w.s.put_policies(OWNER_DEFAULTS).await?;
    let bobs = w.s.create_agent(&w.bob, KeyAlg::EdDSA).await?;
    let ask = [("login_hint", "alice@example.com"), ("scope", "read"), ("resource", CAL), ("binding_message", "b")];
    let (st, body) = w.ciba(&bobs, &ask).await?;
    ensure!(st == 200, "{st} {body}");
    let id = text(&body, "auth_req_id")?;
    let (st, p) = w.poll(&bobs, &id).await?;
    ensure!(st == 400 && p["error"] == "authorization_pending", "Bob's agent got Alice's grant: {st} {p}");
    let (_, list) = w.s.call(Method::GET, "/v1/approvals?status=pending", Some(&w.alice_token), None).await?;
    ensure!(list["approvals"][0]["id"] == id.as_str(), "Alice is asked: {list}");
    // Alice's own planner self-authorises.
    w.granted(&w.planner, "read").await?;
    Ok(())
}

/// Issue 16 §6: the request's address reaches Cedar as
/// `context.client_address` (an `ipaddr`): the agent's own at the token
/// and CIBA endpoints, the one the resource server states at a check.
async fn the_client_address_reaches_policy(w: World) -> Result<()> {
    let policy = |range: &str| {
        format!(
            r#"permit (principal in Group::"staff", action in [Action::"list", Action::"get"], resource);
               permit (principal is Agent, action in [Action::"list", Action::"get"], resource)
                 when {{ context has user && principal.owner == context.user
                         && context has client_address && context.client_address.isInRange(ip("{range}")) }};"#
        )
    };
    // The test client calls from loopback.
    w.s.put_policies(&policy("127.0.0.0/8")).await?;
    let tokens = w.granted(&w.planner, "read").await?;
    let token = text(&tokens, "access_token")?;
    w.s.put_policies(&policy("10.0.0.0/8")).await?;
    let (st, body) = w
        .ciba(
            &w.planner,
            &[("login_hint", "alice@example.com"), ("scope", "read"), ("resource", CAL), ("binding_message", "b")],
        )
        .await?;
    ensure!(st == 400 && body["error"] == "access_denied", "a loopback caller outside 10/8: {st} {body}");
    // At a check, the resource server states the agent's address.
    let s = &w.s;
    let token = &token;
    let check = |extra: Value| async move {
        let mut req = json!({"token": token, "action": "get", "resource": {"type": "event", "id": "e1"}});
        if let (Some(r), Some(x)) = (req.as_object_mut(), extra.as_object()) {
            r.extend(x.clone());
        }
        s.admin(Method::POST, "/v1/check", Some(req)).await
    };
    let (st, d) = check(json!({"client_address": "10.1.2.3"})).await?;
    ensure!(st == 200 && d["decision"] == "allow", "{st} {d}");
    let (st, d) = check(json!({"client_address": "192.0.2.7"})).await?;
    ensure!(st == 200 && d["decision"] == "deny", "{st} {d}");
    let (st, d) = check(json!({})).await?;
    ensure!(st == 200 && d["decision"] == "deny", "no address stated: {st} {d}");
    let (st, d) = check(json!({"client_address": "not an address"})).await?;
    ensure!(st == 400, "{st} {d}");
    // AuthZEN carries it in `context`.
    let eval = |addr: Value| async move {
        s.admin(
            Method::POST,
            "/access/v1/evaluation",
            Some(json!({"subject": {"type": "token", "id": token}, "action": {"name": "get"},
                        "resource": {"type": "event", "id": "e1"}, "context": {"client_address": addr}})),
        )
        .await
    };
    let (st, d) = eval(json!("10.9.8.7")).await?;
    ensure!(st == 200 && d["decision"] == true, "{st} {d}");
    let (st, d) = eval(json!("203.0.113.1")).await?;
    ensure!(st == 200 && d["decision"] == false, "{st} {d}");
    let (st, d) = eval(json!(7)).await?;
    ensure!(st == 400, "{st} {d}");
    Ok(())
}

/// Issue 16 §6: a check's `context` reaches Cedar under the schema the
/// resource declares; an undeclared key is 400 and recorded.
async fn check_context_reaches_policy_under_the_declared_schema(w: World) -> Result<()> {
    const PAY: &str = "https://pay.example";
    created(
        &w.s,
        "/v1/resources",
        json!({"identifier": PAY, "name": "Payments", "scopes": {"pay": ["pay"]}, "context": {"amount": "Long"}}),
    )
    .await?;
    // Mandate's own context keys cannot be declared.
    let (st, body) = w
        .s
        .admin(Method::POST, "/v1/resources", Some(json!({"identifier": "https://x.example", "name": "X", "scopes": {"x": []}, "context": {"user": "String"}})))
        .await?;
    ensure!(st == 400, "{st} {body}");
    w.s.put_policies(
        r#"permit (principal in Group::"staff", action == Action::"pay", resource);
           permit (principal is Agent, action == Action::"pay", resource is Api) when { context has user && context.user == principal.owner };
           permit (principal is Agent, action == Action::"pay", resource is Resource)
             when { context has amount && context.amount < 100 && context has user && !context.dpop_bound };"#,
    )
    .await?;
    let (st, body) = w
        .ciba(
            &w.planner,
            &[("login_hint", "alice@example.com"), ("scope", "pay"), ("resource", PAY), ("binding_message", "pay")],
        )
        .await?;
    ensure!(st == 200, "{st} {body}");
    let (st, tokens) = w.poll(&w.planner, &text(&body, "auth_req_id")?).await?;
    ensure!(st == 200, "{st} {tokens}");
    let token = text(&tokens, "access_token")?;
    let s = &w.s;
    let token = &token;
    let check = |context: Value| async move {
        s.admin(
            Method::POST,
            "/v1/check",
            Some(json!({"token": token, "action": "pay", "resource": {"type": "payment", "id": "p1"}, "context": context})),
        )
        .await
    };
    let (st, d) = check(json!({"amount": 50})).await?;
    ensure!(st == 200 && d["decision"] == "allow", "{st} {d}");
    let (st, d) = check(json!({"amount": 500})).await?;
    ensure!(st == 200 && d["decision"] == "deny", "{st} {d}");
    let (st, d) = check(json!({})).await?;
    ensure!(st == 200 && d["decision"] == "deny", "{st} {d}");
    for bad in [json!({"currency": "EUR"}), json!({"amount": "50"}), json!({"user": "x"})] {
        let (st, d) = check(bad.clone()).await?;
        ensure!(st == 400, "{bad}: {st} {d}");
    }
    let denied = w.s.audit("type=check.decided").await?;
    ensure!(
        denied.iter().any(|e| e["reason"].as_str().is_some_and(|r| r.contains("context: context key \"currency\""))),
        "the refusal is recorded: {denied:?}"
    );
    Ok(())
}

/// `context.dpop_bound` at a check is whether the checked token is bound
/// (`cnf.jkt`): a policy that asks for it allows a DPoP-bound token and
/// denies a bearer one (issue 16 §6).
async fn dpop_bound_reaches_policy_at_check(w: World) -> Result<()> {
    w.s.put_policies(
        r#"permit (principal in Group::"staff", action in [Action::"list", Action::"get"], resource);
           permit (principal is Agent, action in [Action::"list", Action::"get"], resource is Api)
             when { context has user && principal.owner == context.user };
           permit (principal is Agent, action == Action::"get", resource is Resource) when { context.dpop_bound };"#,
    )
    .await?;
    let key = SigningKey::generate(KeyAlg::EdDSA)?;
    let bound = w.granted_with(&[], Some(&key)).await?;
    let bound = text(&bound, "access_token")?;
    ensure!(claims(&bound)["cnf"]["jkt"] == key.public().thumbprint().as_str(), "{}", claims(&bound));
    let bearer = text(&w.granted_with(&[], None).await?, "access_token")?;
    ensure!(claims(&bearer).get("cnf").is_none(), "{}", claims(&bearer));
    let d = w.check(&bound, "get", "e1", json!({})).await?;
    ensure!(d["decision"] == "allow", "a bound token: {d}");
    let d = w.check(&bearer, "get", "e1", json!({})).await?;
    ensure!(d["decision"] == "deny", "a bearer token: {d}");
    ensure!(d["reasons"][0].as_str().is_some_and(|r| r.starts_with(&format!("policy: {}", w.planner.id))), "{d}");
    Ok(())
}
