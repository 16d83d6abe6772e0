//! Who may act next (RFC 8693 §4.4 `may_act`, ADR 0024) over HTTP: named
//! by the grant request or by policy, carried by every token under the
//! grant, honoured by the exchange; and the holder rule for DPoP-bound
//! subject tokens.

use anyhow::{Result, ensure};
use mandate_jose::{KeyAlg, SigningKey};
use reqwest::Method;
use serde_json::{Value, json};

use super::{CAL, POLICIES, World, claims, text};

const LOGIN: (&str, &str) = ("login_hint", "alice@example.com");

impl World {
    /// A self-authorised CIBA grant of `read` to the planner with `extra`
    /// parameters, and its first tokens, DPoP-bound to `key` when given.
    pub(super) async fn granted_with(&self, extra: &[(&str, &str)], key: Option<&SigningKey>) -> Result<Value> {
        let mut params = vec![LOGIN, ("scope", "read"), ("resource", CAL)];
        params.extend_from_slice(extra);
        let (st, body) = self.ciba(&self.planner, &params).await?;
        ensure!(st == 200, "bc-authorize: {st} {body}");
        let id = text(&body, "auth_req_id")?;
        let poll = [("grant_type", "urn:openid:params:grant-type:ciba"), ("auth_req_id", id.as_str())];
        let (st, tokens) = match key {
            None => self.grant(&self.planner, &poll).await?,
            Some(k) => self.grant_dpop(&self.planner, &self.s.dpop(k, "POST", "/oauth/token", None), &poll).await?,
        };
        ensure!(st == 200, "poll: {st} {tokens}");
        Ok(tokens)
    }

    /// A `subject_token_dpop` proof by `key` for `subject`: a DPoP proof of
    /// this token request whose `ath` is the subject token's hash.
    pub fn subject_proof(&self, key: &SigningKey, subject: &str, jti: &str) -> String {
        let htu = format!("{}/oauth/token", self.s.issuer);
        let claims = mandate_jose::dpop::ProofClaims {
            jti,
            htm: "POST",
            htu: &htu,
            iat: self.s.now(),
            ath: Some(mandate_jose::dpop::access_token_hash(subject)),
            nonce: None,
        };
        mandate_jose::dpop::sign_proof(key, &claims).unwrap_or_default()
    }

    /// The refusals of token requests recorded so far.
    async fn denied(&self) -> Result<Vec<Value>> {
        self.s.audit("type=token.denied").await
    }
}

fn refused(st: u16, body: &Value, error: &str, why: &str) -> Result<()> {
    ensure!(
        st == 400 && body["error"] == error && body["error_description"].as_str().is_some_and(|d| d.contains(why)),
        "expected {error} ({why}): {st} {body}"
    );
    Ok(())
}

pub(super) async fn may_act_from_the_grant_request(w: World) -> Result<()> {
    let named = w.spawn(&w.planner, json!({})).await?;
    let other = w.spawn(&w.planner, json!({})).await?;
    // Names that are no agent or group, or an agent that does not exist,
    // are invalid_request, and nothing is granted.
    for bad in ["agt_01HZZZZZZZZZZZZZZZZZZZZZZZ", "usr_01HZZZZZZZZZZZZZZZZZZZZZZZ", "ops", "group:"] {
        let (st, body) =
            w.ciba(&w.planner, &[LOGIN, ("scope", "read"), ("resource", CAL), ("allowed_actors", bad)]).await?;
        refused(st, &body, "invalid_request", "allowed_actors")?;
    }
    let (_, list) = w.s.admin(Method::GET, "/v1/grants", None).await?;
    ensure!(list["items"].as_array().is_some_and(Vec::is_empty), "{list}");

    let tokens = w.granted_with(&[("allowed_actors", named.id.as_str())], None).await?;
    let parent = text(&tokens, "access_token")?;
    ensure!(claims(&parent)["may_act"] == json!({"sub": named.id}), "{}", claims(&parent));
    let (_, list) = w.s.admin(Method::GET, "/v1/grants", None).await?;
    ensure!(list["items"][0]["may_act"] == json!([named.id]), "{list}");
    let created = w.s.audit("type=grant.created").await?;
    let said = format!("approved_by policy; may_act {}", named.id);
    ensure!(created.last().is_some_and(|e| e["reason"] == said.as_str()), "{created:?}");
    // A refreshed token carries it too.
    let rt = text(&tokens, "refresh_token")?;
    let (st, renewed) = w.grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &rt)]).await?;
    ensure!(st == 200, "{st} {renewed}");
    ensure!(claims(&text(&renewed, "access_token")?)["may_act"] == json!({"sub": named.id}), "{renewed}");
    // Another agent policy would let act is refused, audited, issued nothing.
    let before = w.denied().await?.len();
    let (st, body) = w.exchange(&other, &parent, &[]).await?;
    refused(st, &body, "invalid_grant", "may_act")?;
    let denied = w.denied().await?;
    ensure!(denied.len() == before + 1, "{denied:?}");
    ensure!(denied.last().is_some_and(|e| e["reason"].as_str().is_some_and(|r| r.contains("may_act"))), "{denied:?}");
    // The named agent's works, and its token carries the constraint on.
    let (st, hop) = w.exchange(&named, &parent, &[]).await?;
    ensure!(st == 200, "{st} {hop}");
    let c = claims(&text(&hop, "access_token")?);
    ensure!(c["may_act"] == json!({"sub": named.id}) && c["act"]["sub"] == named.id.as_str(), "{c}");
    // Introspection and the check API still read such a token.
    let i = w.s.introspect(&text(&hop, "access_token")?).await?;
    ensure!(i["active"] == true, "{i}");
    let d = w.check(&text(&hop, "access_token")?, "list", "e1", json!({})).await?;
    ensure!(d["decision"] == "allow", "{d}");
    Ok(())
}

pub(super) async fn may_act_from_policy(w: World) -> Result<()> {
    // Alice is in `reviewers`: her agents are.
    let (st, body) =
        w.s.admin(Method::PATCH, &format!("/v1/users/{}", w.alice), Some(json!({"groups": ["staff", "reviewers"]})))
            .await?;
    ensure!(st == 200, "{st} {body}");
    // An invalid @may_act makes the whole set refused.
    let (st, body) = w
        .s
        .admin(
            Method::PUT,
            "/v1/policies",
            Some(json!({"policies": format!("{POLICIES}\n@may_act(\"reviewers\") permit (principal, action, resource);")})),
        )
        .await?;
    ensure!(st == 400 && body.to_string().contains("@may_act"), "{st} {body}");
    w.s.put_policies(&format!(
        "{POLICIES}\n@may_act(\"group:reviewers\")\n\
         permit (principal is Agent, action in [Action::\"list\", Action::\"get\"], resource);"
    ))
    .await?;
    let child = w.spawn(&w.planner, json!({})).await?;
    let tokens = w.granted_with(&[], None).await?;
    let parent = text(&tokens, "access_token")?;
    ensure!(claims(&parent)["may_act"] == json!({"mandate_actors": ["group:reviewers"]}), "{}", claims(&parent));
    let (st, hop) = w.exchange(&child, &parent, &[]).await?;
    ensure!(st == 200, "{st} {hop}");
    // A request may narrow what policy names (an agent of the group), not
    // widen it (another group).
    let narrowed = w.granted_with(&[("allowed_actors", child.id.as_str())], None).await?;
    ensure!(claims(&text(&narrowed, "access_token")?)["may_act"] == json!({"sub": child.id}), "{narrowed}");
    let (st, body) =
        w.ciba(&w.planner, &[LOGIN, ("scope", "read"), ("resource", CAL), ("allowed_actors", "group:staff")]).await?;
    refused(st, &body, "access_denied", "policy lets only group:reviewers")?;
    // Membership is the owner's, when the agent acts: out of the group,
    // Alice's next agent may no longer act on the token.
    let (st, body) =
        w.s.admin(Method::PATCH, &format!("/v1/users/{}", w.alice), Some(json!({"groups": ["staff"]}))).await?;
    ensure!(st == 200, "{st} {body}");
    let late = w.spawn(&w.planner, json!({})).await?;
    let (st, body) = w.exchange(&late, &parent, &[]).await?;
    refused(st, &body, "invalid_grant", "may_act")?;
    Ok(())
}

pub(super) async fn a_bound_subject_token_is_exchanged_by_its_holder(w: World) -> Result<()> {
    let planner_key = SigningKey::generate(KeyAlg::EdDSA)?;
    let tokens = w.granted_with(&[], Some(&planner_key)).await?;
    let parent = text(&tokens, "access_token")?;
    ensure!(claims(&parent)["cnf"]["jkt"] == planner_key.public().thumbprint().as_str(), "{tokens}");
    let helper = w.spawn(&w.planner, json!({})).await?;
    let helper_key = SigningKey::generate(KeyAlg::ES256)?;
    let own = |k: &SigningKey| w.s.dpop(k, "POST", "/oauth/token", None);
    let jti = crate::fresh_jti;
    // Handed to another agent, with its own key or none: refused.
    let before = w.denied().await?.len();
    let (st, body) = w.grant_dpop(&helper, &own(&helper_key), &exchange(&parent, &[])).await?;
    refused(st, &body, "invalid_grant", "DPoP-bound to another key")?;
    let (st, body) = w.exchange(&helper, &parent, &[]).await?;
    refused(st, &body, "invalid_grant", "DPoP-bound to another key")?;
    // A second proof by a wrong key, for another token, or not for the
    // token endpoint: refused.
    let stranger = SigningKey::generate(KeyAlg::EdDSA)?;
    let wrong_key = w.subject_proof(&stranger, &parent, &jti());
    let wrong_ath = w.subject_proof(&planner_key, "another.token.entirely", &jti());
    let wrong_htu = {
        let htu = format!("{}/oauth/revoke", w.s.issuer);
        let ath = Some(mandate_jose::dpop::access_token_hash(&parent));
        let j = jti();
        let c = mandate_jose::dpop::ProofClaims { jti: &j, htm: "POST", htu: &htu, iat: w.s.now(), ath, nonce: None };
        mandate_jose::dpop::sign_proof(&planner_key, &c)?
    };
    for (proof, why) in
        [(&wrong_key, "another key"), (&wrong_ath, "subject_token_dpop"), (&wrong_htu, "subject_token_dpop")]
    {
        let (st, body) = w
            .grant_dpop(&helper, &own(&helper_key), &exchange(&parent, &[("subject_token_dpop", proof.as_str())]))
            .await?;
        refused(st, &body, "invalid_grant", why)?;
    }
    let denied = w.denied().await?;
    ensure!(denied.len() == before + 5, "every refusal is audited: {denied:?}");
    // A valid second proof by the planner's key: the helper may, and the
    // new token is bound to the helper's own key.
    let good = w.subject_proof(&planner_key, &parent, &jti());
    let (st, hop) =
        w.grant_dpop(&helper, &own(&helper_key), &exchange(&parent, &[("subject_token_dpop", good.as_str())])).await?;
    ensure!(st == 200, "{st} {hop}");
    let hop = text(&hop, "access_token")?;
    ensure!(claims(&hop)["cnf"]["jkt"] == helper_key.public().thumbprint().as_str(), "{}", claims(&hop));
    // The same proof again: its jti was burned with the token.
    let other = w.spawn(&w.planner, json!({})).await?;
    let (st, body) = w.grant(&other, &exchange(&parent, &[("subject_token_dpop", good.as_str())])).await?;
    refused(st, &body, "invalid_dpop_proof", "already used")?;
    // A proof on a token that is not bound is a mistake, said so.
    let unbound = text(&w.granted_with(&[], None).await?, "access_token")?;
    let unneeded = w.subject_proof(&helper_key, &unbound, &jti());
    let (st, body) = w.exchange(&other, &unbound, &[("subject_token_dpop", unneeded.as_str())]).await?;
    refused(st, &body, "invalid_request", "not bound")?;
    // The holder itself: an agent calling with the token's key (the
    // helper's key, held by the helper's child) needs no second proof.
    let grandchild = w.spawn(&helper, json!({})).await?;
    let (st, body) = w.grant_dpop(&grandchild, &own(&helper_key), &exchange(&hop, &[])).await?;
    ensure!(st == 200, "{st} {body}");

    // A may_act actor receives a bound token without any proof; anyone
    // else is refused.
    let tokens = w.granted_with(&[("allowed_actors", helper.id.as_str())], Some(&planner_key)).await?;
    let listed = text(&tokens, "access_token")?;
    let (st, body) = w.grant_dpop(&helper, &own(&helper_key), &exchange(&listed, &[])).await?;
    ensure!(st == 200, "{st} {body}");
    let (st, body) = w.exchange(&other, &listed, &[]).await?;
    refused(st, &body, "invalid_grant", "may_act")?;
    Ok(())
}

fn exchange<'a>(subject: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut p = vec![
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", subject),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
    ];
    p.extend_from_slice(extra);
    p
}

/// SECURITY row 21: who may act next is named by the grant request or by
/// policy, never by a token request. `allowed_actors` sent to the token
/// endpoint (a CIBA poll, `client_credentials`, an exchange) restricts
/// nothing and reaches no token; `may_act` is ignored by a poll and
/// `client_credentials`, and refused by an exchange.
pub(super) async fn allowed_actors_at_the_token_endpoint_are_ignored(w: World) -> Result<()> {
    let other = w.s.create_agent(&w.alice, KeyAlg::EdDSA).await?;
    let named = other.id.as_str();
    let may_act = json!({"sub": named}).to_string();
    let sent = [("allowed_actors", named), ("may_act", may_act.as_str())];
    let (st, body) = w.ciba(&w.planner, &[LOGIN, ("scope", "read"), ("resource", CAL)]).await?;
    ensure!(st == 200, "bc-authorize: {st} {body}");
    let id = text(&body, "auth_req_id")?;
    let mut poll = vec![("grant_type", "urn:openid:params:grant-type:ciba"), ("auth_req_id", id.as_str())];
    poll.extend_from_slice(&sent);
    let (st, tokens) = w.grant(&w.planner, &poll).await?;
    ensure!(st == 200, "poll: {st} {tokens}");
    let token = text(&tokens, "access_token")?;
    ensure!(claims(&token).get("may_act").is_none(), "{}", claims(&token));
    let mut cc = vec![("grant_type", "client_credentials"), ("resource", CAL), ("scope", "read")];
    cc.extend_from_slice(&sent);
    let (st, own) = w.grant(&w.planner, &cc).await?;
    ensure!(st == 200, "client_credentials: {st} {own}");
    ensure!(claims(&text(&own, "access_token")?).get("may_act").is_none(), "{own}");
    // At the exchange, `may_act` is refused by name (as `act` is); the
    // grant holds no restriction: another agent than the one named in
    // `allowed_actors` may exchange its token, which names nobody.
    let helper = w.spawn(&w.planner, json!({})).await?;
    let (st, body) = w.exchange(&helper, &token, &sent).await?;
    refused(st, &body, "invalid_request", "may_act is built by Mandate")?;
    let (st, hop) = w.exchange(&helper, &token, &sent[..1]).await?;
    ensure!(st == 200, "exchange: {st} {hop}");
    ensure!(claims(&text(&hop, "access_token")?).get("may_act").is_none(), "{hop}");
    let (_, grants) = w.s.call(Method::GET, "/v1/grants", Some(&w.alice_token), None).await?;
    ensure!(grants["items"].as_array().is_some_and(|g| g.iter().all(|g| g["may_act"].is_null())), "{grants}");
    Ok(())
}
