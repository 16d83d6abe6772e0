//! Credential policy per agent (DESIGN §13) over HTTP: limits set only
//! tighter and audited, and each one refusing with its error, writing
//! nothing but the refusal, and passing within the limit.

use anyhow::{Result, ensure};
use reqwest::Method;
use serde_json::{Value, json};

use super::{CAL, World, claims, text};

impl World {
    /// `PATCH /v1/agents/{id}` with `{"limits": limits}` as the admin.
    pub async fn set_limits(&self, agent: &str, limits: Value) -> Result<(u16, Value)> {
        self.s.admin(Method::PATCH, &format!("/v1/agents/{agent}"), Some(json!({ "limits": limits }))).await
    }

    async fn limited(&self, agent: &str, limits: Value) -> Result<()> {
        let (st, body) = self.set_limits(agent, limits).await?;
        ensure!(st == 200, "set limits: {st} {body}");
        Ok(())
    }

    async fn count(&self, query: &str) -> Result<usize> {
        Ok(self.s.audit(query).await?.len())
    }

    /// The last `token.denied` event names `limit`, and nothing was issued
    /// since `issued` events.
    async fn refused_by(&self, limit: &str, issued: usize) -> Result<()> {
        let denied = self.s.audit("type=token.denied").await?;
        let last = denied.last().cloned().unwrap_or(Value::Null);
        ensure!(last["reason"].as_str().is_some_and(|r| r.contains(limit)), "no refusal naming {limit}: {last}");
        ensure!(self.count("type=token.issued").await? == issued, "a token was issued past {limit}");
        Ok(())
    }
}

fn error_naming(body: &Value, error: &str, limit: &str) -> bool {
    body["error"] == error && body["error_description"].as_str().is_some_and(|d| d.contains(limit))
}

pub(super) async fn limits_only_tighten_and_are_audited(w: World) -> Result<()> {
    let a = w.planner.id.clone();
    // Looser than the server (access tokens live 300 s): refused by name, recorded, unchanged.
    let denied = w.count("type=admin.denied").await?;
    for (limits, name) in [
        (json!({"max_token_ttl": 301}), "limits.max_token_ttl"),
        (json!({"max_delegation_depth": 5}), "limits.max_delegation_depth"),
        (json!({"max_ephemeral_ttl": 3601}), "limits.max_ephemeral_ttl"),
        (json!({"max_ephemeral_children": 101}), "limits.max_ephemeral_children"),
    ] {
        let (st, body) = w.set_limits(&a, limits).await?;
        ensure!(st == 400 && body["detail"].as_str().is_some_and(|d| d.contains(name)), "{name}: {st} {body}");
    }
    let (st, body) = w.set_limits(&a, json!({"max_tokens": 5})).await?;
    ensure!(st == 400, "an unknown limit: {st} {body}");
    ensure!(w.count("type=admin.denied").await? == denied + 4, "limit refusals are recorded");
    let (_, got) = w.s.admin(Method::GET, &format!("/v1/agents/{a}"), None).await?;
    ensure!(got["limits"] == json!({}) && got["limits_in_force"]["max_token_ttl"] == 300, "{got}");
    // Tighter: stored, shown, recorded.
    let tight =
        json!({"max_token_ttl": 60, "allowed_grant_types": ["client_credentials", "ciba"], "require_dpop": true});
    w.limited(&a, tight.clone()).await?;
    let (_, got) = w.s.admin(Method::GET, &format!("/v1/agents/{a}"), None).await?;
    ensure!(got["limits"] == tight, "{got}");
    ensure!(got["limits_in_force"]["max_token_ttl"] == 60 && got["limits_in_force"]["require_dpop"] == true, "{got}");
    let updated = w.s.audit("type=agent.updated").await?;
    ensure!(
        updated.last().and_then(|e| e["reason"].as_str()).is_some_and(|r| r.contains("limits") && r.contains("60")),
        "{updated:?}"
    );
    // At creation too: looser is refused and stores nothing.
    // Every stored agent has its agent.created event, in the same change.
    let before = w.count("type=agent.created").await?;
    let key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
    let new = |limits: Value| json!({"name": "Limited", "owner": w.alice, "jwks": {"keys": [key.public().to_json()]}, "limits": limits});
    let (st, body) = w.s.admin(Method::POST, "/v1/agents", Some(new(json!({"max_token_ttl": 900})))).await?;
    ensure!(st == 400 && body["detail"].as_str().is_some_and(|d| d.contains("limits.max_token_ttl")), "{st} {body}");
    ensure!(w.count("type=agent.created").await? == before, "a refused agent was stored");
    let (st, body) = w.s.admin(Method::POST, "/v1/agents", Some(new(json!({"max_token_ttl": 90})))).await?;
    ensure!(st == 201 && body["limits"]["max_token_ttl"] == 90, "{st} {body}");
    Ok(())
}

pub(super) async fn token_limits_refuse_and_pass(w: World) -> Result<()> {
    let a = w.planner.id.clone();
    let cc = |resource: &'static str, scope: &'static str| {
        vec![("grant_type", "client_credentials"), ("resource", resource), ("scope", scope)]
    };
    // allowed_grant_types: client_credentials is not among them.
    w.limited(&a, json!({"allowed_grant_types": ["ciba", "refresh_token"]})).await?;
    let issued = w.count("type=token.issued").await?;
    let (st, body) = w.grant(&w.planner, &cc(CAL, "read")).await?;
    ensure!(st == 400 && error_naming(&body, "unauthorized_client", "limits.allowed_grant_types"), "{st} {body}");
    w.refused_by("limits.allowed_grant_types", issued).await?;
    // …and CIBA is, with tokens no longer-lived than max_token_ttl.
    w.limited(&a, json!({"allowed_grant_types": ["ciba"], "max_token_ttl": 60})).await?;
    let tokens = w.granted(&w.planner, "read").await?;
    ensure!(tokens["expires_in"] == 60, "max_token_ttl: {tokens}");
    let c = claims(&text(&tokens, "access_token")?);
    ensure!(c["exp"].as_i64().zip(c["iat"].as_i64()).is_some_and(|(e, i)| e - i == 60), "{c}");
    // …and a refresh is a grant type of its own.
    let rt = text(&tokens, "refresh_token")?;
    let issued = w.count("type=token.issued").await?;
    let (st, body) = w.grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &rt)]).await?;
    ensure!(st == 400 && error_naming(&body, "unauthorized_client", "limits.allowed_grant_types"), "{st} {body}");
    w.refused_by("limits.allowed_grant_types", issued).await?;

    // allowed_resources: the issuer is not among them.
    w.limited(&a, json!({"allowed_resources": [CAL]})).await?;
    let issued = w.count("type=token.issued").await?;
    let issuer: &'static str = Box::leak(w.s.issuer.clone().into_boxed_str());
    let (st, body) = w.grant(&w.planner, &cc(issuer, "mandate:spawn")).await?;
    ensure!(st == 400 && error_naming(&body, "invalid_target", "limits.allowed_resources"), "{st} {body}");
    w.refused_by("limits.allowed_resources", issued).await?;
    let (st, body) = w.grant(&w.planner, &cc(CAL, "read")).await?;
    ensure!(st == 200, "within allowed_resources: {st} {body}");

    // require_dpop: without a proof refused, with one bound.
    w.limited(&a, json!({"require_dpop": true})).await?;
    let issued = w.count("type=token.issued").await?;
    let (st, body) = w.grant(&w.planner, &cc(CAL, "read")).await?;
    ensure!(st == 400 && error_naming(&body, "invalid_request", "limits.require_dpop"), "{st} {body}");
    w.refused_by("limits.require_dpop", issued).await?;
    let dpop_key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::ES256)?;
    let proof = w.s.dpop(&dpop_key, "POST", "/oauth/token", None);
    let (st, body) = w.grant_dpop(&w.planner, &proof, &cc(CAL, "read")).await?;
    ensure!(st == 200 && body["token_type"] == "DPoP", "with a proof: {st} {body}");

    // allowed_client_auth: private_key_jwt is not among them.
    w.limited(&a, json!({"allowed_client_auth": ["workload"]})).await?;
    let issued = w.count("type=token.issued").await?;
    let (st, body) = w.grant(&w.planner, &cc(CAL, "read")).await?;
    ensure!(st == 400 && error_naming(&body, "unauthorized_client", "limits.allowed_client_auth"), "{st} {body}");
    w.refused_by("limits.allowed_client_auth", issued).await?;
    w.limited(&a, json!({"allowed_client_auth": ["private_key_jwt"]})).await?;
    let (st, body) = w.grant(&w.planner, &cc(CAL, "read")).await?;
    ensure!(st == 200, "within allowed_client_auth: {st} {body}");
    Ok(())
}

pub(super) async fn spawn_and_exchange_limits(w: World) -> Result<()> {
    let a = w.planner.id.clone();
    w.limited(&a, json!({"max_ephemeral_children": 1, "max_ephemeral_ttl": 100, "max_delegation_depth": 1})).await?;
    let (st, body) = w.s.token(&w.planner, &w.s.issuer, "mandate:spawn").await?;
    ensure!(st == 200, "{st} {body}");
    let spawn_token = text(&body, "access_token")?;
    let key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
    let spawn = |extra: Value| {
        let mut req = json!({"name": "Helper", "owner": w.alice, "jwks": {"keys": [key.public().to_json()]}});
        if let (Some(r), Some(e)) = (req.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        w.s.call(Method::POST, "/v1/agents", Some(&spawn_token), Some(req))
    };
    // Every stored agent has its agent.created event, in the same change.
    let created = w.count("type=agent.created").await?;
    let children = || async { Ok::<usize, anyhow::Error>(w.count("type=agent.created").await? - created) };
    // max_ephemeral_ttl, and a child asking for looser limits than its parent's.
    let denied = w.count("type=admin.denied").await?;
    let (st, body) = spawn(json!({"ttl_seconds": 600})).await?;
    ensure!(
        st == 400 && body["detail"].as_str().is_some_and(|d| d.contains("limits.max_ephemeral_ttl")),
        "{st} {body}"
    );
    let (st, body) = spawn(json!({"ttl_seconds": 100, "limits": {"max_ephemeral_children": 5}})).await?;
    ensure!(
        st == 400 && body["detail"].as_str().is_some_and(|d| d.contains("limits.max_ephemeral_children")),
        "{st} {body}"
    );
    ensure!(w.count("type=admin.denied").await? == denied + 2, "spawn refusals are recorded");
    ensure!(children().await? == 0, "a refused spawn stored a child");
    // Within: the child inherits its parent's limits, tightened by its own.
    let (st, child) = spawn(json!({"ttl_seconds": 100, "limits": {"max_token_ttl": 30}})).await?;
    ensure!(st == 201, "{st} {child}");
    ensure!(child["limits"]["max_ephemeral_ttl"] == 100 && child["limits"]["max_token_ttl"] == 30, "{child}");
    ensure!(child["limits"]["max_delegation_depth"] == 1, "{child}");
    // max_ephemeral_children: a second live child is one too many.
    let (st, body) = spawn(json!({"ttl_seconds": 50})).await?;
    ensure!(
        st == 403 && body["detail"].as_str().is_some_and(|d| d.contains("limits.max_ephemeral_children")),
        "{st} {body}"
    );
    ensure!(children().await? == 1 && w.count("type=admin.denied").await? == denied + 3, "second child");
    // A child's limits are never loosened past its parent's by the admin either.
    let child_id = text(&child, "client_id")?;
    let (st, body) = w.set_limits(&child_id, json!({"max_ephemeral_ttl": 200})).await?;
    ensure!(st == 400, "{st} {body}");

    // max_delegation_depth 1: the planner's token may not go one hop further.
    let child_agent = crate::TestAgent { id: child_id.clone(), key };
    w.limited(&a, json!({"max_delegation_depth": 1})).await?;
    let tokens = w.granted(&w.planner, "read").await?;
    let subject = text(&tokens, "access_token")?;
    let issued = w.count("type=token.issued").await?;
    let (st, body) = w.exchange(&child_agent, &subject, &[]).await?;
    ensure!(st == 400 && error_naming(&body, "invalid_request", "limits.max_delegation_depth"), "{st} {body}");
    w.refused_by("limits.max_delegation_depth", issued).await?;
    // Within the limit, the hop is issued, no longer-lived than the child's max_token_ttl.
    // (The child recorded its parent's depth of 1 when it was spawned: a
    // parent loosened later does not loosen it, the admin may, up to the
    // parent's.)
    w.limited(&a, json!({"max_delegation_depth": 2})).await?;
    let (st, body) = w.exchange(&child_agent, &subject, &[]).await?;
    ensure!(st == 400 && error_naming(&body, "invalid_request", "limits.max_delegation_depth"), "{st} {body}");
    w.limited(&child_id, json!({"max_delegation_depth": 2, "max_token_ttl": 30})).await?;
    let (st, body) = w.exchange(&child_agent, &subject, &[]).await?;
    ensure!(st == 200 && body["expires_in"].as_i64().is_some_and(|e| e <= 30), "{st} {body}");
    Ok(())
}
