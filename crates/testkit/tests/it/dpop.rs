//! DPoP (RFC 9449) at the token endpoint and at Mandate's own API: the
//! positive cases for both key types and SECURITY rows 1, 8, 10 and 11.

use anyhow::Result;
use mandate_jose::dpop::{ProofClaims, sign_proof, sign_raw};
use mandate_jose::{KeyAlg, SigningKey};
use mandate_testkit::scenarios::{CAL, World, claims};
use mandate_testkit::{TestServer, fresh_jti};
use serde_json::{Value, json};

const CC: &[(&str, &str)] = &[("grant_type", "client_credentials"), ("resource", CAL), ("scope", "read")];

fn jwk_of(key: &SigningKey) -> Value {
    let mut jwk = key.public().to_json();
    if let Some(o) = jwk.as_object_mut() {
        o.remove("kid");
    }
    jwk
}

#[tokio::test]
async fn proofs_by_eddsa_and_es256_keys_bind_the_token() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    for alg in [KeyAlg::EdDSA, KeyAlg::ES256] {
        let key = SigningKey::generate(alg)?;
        let proof = w.s.dpop(&key, "POST", "/oauth/token", None);
        let (st, body) = w.grant_dpop(&w.planner, &proof, CC).await?;
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["token_type"], "DPoP");
        let c = claims(body["access_token"].as_str().unwrap_or_default());
        assert_eq!(c["cnf"]["jkt"], key.public().thumbprint());
        let intro = w.s.introspect(body["access_token"].as_str().unwrap_or_default()).await?;
        assert_eq!(intro["token_type"], "DPoP");
    }
    // Without a proof the token is a bearer token.
    let (st, body) = w.grant(&w.planner, CC).await?;
    assert_eq!(st, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert!(claims(body["access_token"].as_str().unwrap_or_default()).get("cnf").is_none());
    Ok(())
}

#[tokio::test]
async fn every_bad_proof_is_refused_and_issues_nothing() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let key = SigningKey::generate(KeyAlg::EdDSA)?;
    let htu = format!("{}/oauth/token", w.s.issuer);
    let now = w.s.now();
    let claims_with = |f: &dyn Fn(&mut Value)| {
        let mut c = json!({"jti": fresh_jti(), "htm": "POST", "htu": htu, "iat": now});
        f(&mut c);
        c
    };
    let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk_of(&key)});
    let with_header = |f: &dyn Fn(&mut Value)| {
        let mut h = header.clone();
        f(&mut h);
        sign_raw(&key, &h, &claims_with(&|_| {})).unwrap_or_default()
    };
    let other = SigningKey::generate(KeyAlg::EdDSA)?;
    let mut private = jwk_of(&key);
    private["d"] = json!("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A");
    let unsigned = {
        let valid = w.s.dpop(&key, "POST", "/oauth/token", None);
        let (signing_input, _) = valid.rsplit_once('.').unwrap_or_default();
        format!("{signing_input}.")
    };
    let cases: Vec<(&str, String)> = vec![
        ("no jwk", with_header(&|h| drop(h.as_object_mut().map(|o| o.remove("jwk"))))),
        ("a private jwk", with_header(&|h| h["jwk"] = private.clone())),
        ("alg none", with_header(&|h| h["alg"] = json!("none"))),
        ("an empty signature", unsigned),
        ("a symmetric alg", with_header(&|h| h["alg"] = json!("HS256"))),
        ("a wrong typ", with_header(&|h| h["typ"] = json!("JWT"))),
        ("an access token typ", with_header(&|h| h["typ"] = json!("at+jwt"))),
        ("another key's jwk (bad signature)", with_header(&|h| h["jwk"] = jwk_of(&other))),
        (
            "a missing htm",
            sign_raw(&key, &header, &claims_with(&|c| drop(c.as_object_mut().map(|o| o.remove("htm")))))
                .unwrap_or_default(),
        ),
        (
            "a missing jti",
            sign_raw(&key, &header, &claims_with(&|c| drop(c.as_object_mut().map(|o| o.remove("jti")))))
                .unwrap_or_default(),
        ),
        (
            "iat as a string",
            sign_raw(&key, &header, &claims_with(&|c| c["iat"] = json!(now.to_string()))).unwrap_or_default(),
        ),
        ("a stale iat", sign_raw(&key, &header, &claims_with(&|c| c["iat"] = json!(now - 120))).unwrap_or_default()),
        (
            "an iat in the future",
            sign_raw(&key, &header, &claims_with(&|c| c["iat"] = json!(now + 120))).unwrap_or_default(),
        ),
        ("an htm mismatch", sign_raw(&key, &header, &claims_with(&|c| c["htm"] = json!("GET"))).unwrap_or_default()),
        ("a lowercase htm", sign_raw(&key, &header, &claims_with(&|c| c["htm"] = json!("post"))).unwrap_or_default()),
        (
            "an htu mismatch",
            sign_raw(&key, &header, &claims_with(&|c| c["htu"] = json!(format!("{}/oauth/revoke", w.s.issuer))))
                .unwrap_or_default(),
        ),
        (
            "another host",
            sign_raw(&key, &header, &claims_with(&|c| c["htu"] = json!("https://evil.example/oauth/token")))
                .unwrap_or_default(),
        ),
        (
            "a 1 KB jti",
            sign_raw(&key, &header, &claims_with(&|c| c["jti"] = json!("x".repeat(1024)))).unwrap_or_default(),
        ),
        ("not a JWT", "not-a-jwt".into()),
    ];
    let issued_before = w.s.audit("type=token.issued").await?.len();
    let denied_before = w.s.audit("type=token.denied").await?.len();
    for (name, proof) in &cases {
        let (st, body) = w.grant_dpop(&w.planner, proof, CC).await?;
        assert_eq!((st, body["error"].as_str()), (400, Some("invalid_dpop_proof")), "{name}: {body}");
    }
    assert_eq!(w.s.audit("type=token.issued").await?.len(), issued_before, "nothing may be issued");
    assert_eq!(w.s.audit("type=token.denied").await?.len(), denied_before + cases.len(), "each refusal is audited");

    // Two DPoP headers.
    let a = w.s.assertion(&w.planner, json!({}));
    let p1 = w.s.dpop(&key, "POST", "/oauth/token", None);
    let p2 = w.s.dpop(&key, "POST", "/oauth/token", None);
    let mut form = vec![
        ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
        ("client_assertion", a.as_str()),
    ];
    form.extend_from_slice(CC);
    let (st, body, _) = w.s.form_headers("/oauth/token", &form, &[("DPoP", &p1), ("DPoP", &p2)]).await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_dpop_proof")), "{body}");
    assert_eq!(w.s.verify_audit().await?["valid"], true);
    Ok(())
}

#[tokio::test]
async fn a_proof_is_single_use_whatever_its_htu_spelling() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let key = SigningKey::generate(KeyAlg::ES256)?;
    let jti = fresh_jti();
    let now = w.s.now();
    let proof = |htm: &str, htu: String| {
        sign_proof(&key, &ProofClaims { jti: &jti, htm, htu: &htu, iat: now, ath: None, nonce: None })
            .unwrap_or_default()
    };
    let first = proof("POST", format!("{}/oauth/token", w.s.issuer));
    let (st, body) = w.grant_dpop(&w.planner, &first, CC).await?;
    assert_eq!(st, 200, "{body}");
    // The same proof again, and the same jti under query and case variants.
    let upper = w.s.issuer.replacen("http://", "HTTP://", 1);
    for replay in [
        first.clone(),
        proof("POST", format!("{}/oauth/token?again=1", w.s.issuer)),
        proof("POST", format!("{upper}/oauth/token#frag")),
    ] {
        let (st, body) = w.grant_dpop(&w.planner, &replay, CC).await?;
        assert_eq!((st, body["error"].as_str()), (400, Some("invalid_dpop_proof")), "{body}");
    }
    Ok(())
}

#[tokio::test]
async fn server_nonces_are_demanded_then_accepted() -> Result<()> {
    let s = TestServer::start_with(|c| c.dpop_nonces = true).await?;
    let w = World::new(s).await?;
    let key = SigningKey::generate(KeyAlg::EdDSA)?;
    let a = w.s.assertion(&w.planner, json!({}));
    let mut form = vec![
        ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
        ("client_assertion", a.as_str()),
    ];
    form.extend_from_slice(CC);
    let proof = w.s.dpop(&key, "POST", "/oauth/token", None);
    let (st, body, headers) = w.s.form_headers("/oauth/token", &form, &[("DPoP", &proof)]).await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("use_dpop_nonce")), "{body}");
    let nonce = headers.get("dpop-nonce").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(!nonce.is_empty(), "a DPoP-Nonce header comes with use_dpop_nonce");
    // A made-up nonce is refused the same way.
    let forged = w.s.dpop(&key, "POST", "/oauth/token", Some("bm9ub25jZQ"));
    let (st, body) = w.grant_dpop(&w.planner, &forged, CC).await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("use_dpop_nonce")), "{body}");
    // The retry with the nonce succeeds (a fresh assertion: the first was burned).
    let retry = w.s.dpop(&key, "POST", "/oauth/token", Some(&nonce));
    let (st, body) = w.grant_dpop(&w.planner, &retry, CC).await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    Ok(())
}

#[tokio::test]
async fn ciba_refresh_and_exchange_bind_each_hop_to_its_caller() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let planner_key = SigningKey::generate(KeyAlg::EdDSA)?;
    let (st, body) =
        w.ciba(&w.planner, &[("login_hint", "alice@example.com"), ("scope", "read"), ("resource", CAL)]).await?;
    assert_eq!(st, 200, "{body}");
    let id = body["auth_req_id"].as_str().unwrap_or_default().to_owned();
    let proof = w.s.dpop(&planner_key, "POST", "/oauth/token", None);
    let (st, tokens) = w
        .grant_dpop(&w.planner, &proof, &[("grant_type", "urn:openid:params:grant-type:ciba"), ("auth_req_id", &id)])
        .await?;
    assert_eq!(st, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "DPoP");
    let access = tokens["access_token"].as_str().unwrap_or_default().to_owned();
    assert_eq!(claims(&access)["cnf"]["jkt"], planner_key.public().thumbprint());
    let rt = tokens["refresh_token"].as_str().unwrap_or_default().to_owned();

    // The refresh family is bound: no proof, or another key's, is refused
    // and leaves the refresh token usable.
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", rt.as_str())];
    let (st, body) = w.grant(&w.planner, &refresh).await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_dpop_proof")), "{body}");
    let stranger = SigningKey::generate(KeyAlg::EdDSA)?;
    let (st, body) = w.grant_dpop(&w.planner, &w.s.dpop(&stranger, "POST", "/oauth/token", None), &refresh).await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_dpop_proof")), "{body}");
    let (st, renewed) =
        w.grant_dpop(&w.planner, &w.s.dpop(&planner_key, "POST", "/oauth/token", None), &refresh).await?;
    assert_eq!(st, 200, "{renewed}");
    assert_eq!(
        claims(renewed["access_token"].as_str().unwrap_or_default())["cnf"]["jkt"],
        planner_key.public().thumbprint()
    );

    // An exchange by a helper is bound to the helper's key, not the
    // planner's. The planner's token is bound: the planner hands it on
    // with a proof of its key (ADR 0024).
    let helper = w.spawn(&w.planner, json!({})).await?;
    let helper_key = SigningKey::generate(KeyAlg::ES256)?;
    let handed = |jti: &str| w.subject_proof(&planner_key, &access, jti);
    let (first, second) = (handed(&fresh_jti()), handed(&fresh_jti()));
    let exchange = |proof| {
        [
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", access.as_str()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ("subject_token_dpop", proof),
        ]
    };
    let (st, child) =
        w.grant_dpop(&helper, &w.s.dpop(&helper_key, "POST", "/oauth/token", None), &exchange(first.as_str())).await?;
    assert_eq!(st, 200, "{child}");
    assert_eq!(child["token_type"], "DPoP");
    assert_eq!(
        claims(child["access_token"].as_str().unwrap_or_default())["cnf"]["jkt"],
        helper_key.public().thumbprint()
    );
    // Without a DPoP header of the helper's own the hop is a bearer token:
    // nothing is inherited.
    let (st, child) = w.grant(&helper, &exchange(second.as_str())).await?;
    assert_eq!(st, 200, "{child}");
    assert!(claims(child["access_token"].as_str().unwrap_or_default()).get("cnf").is_none());
    Ok(())
}

#[tokio::test]
async fn a_bound_spawn_token_needs_its_proof_at_mandates_own_api() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let key = SigningKey::generate(KeyAlg::EdDSA)?;
    let spawn = [("grant_type", "client_credentials"), ("resource", w.s.issuer.as_str()), ("scope", "mandate:spawn")];
    let (st, body) = w.grant_dpop(&w.planner, &w.s.dpop(&key, "POST", "/oauth/token", None), &spawn).await?;
    assert_eq!(st, 200, "{body}");
    let token = body["access_token"].as_str().unwrap_or_default().to_owned();
    let child_key = SigningKey::generate(KeyAlg::EdDSA)?;
    let child = json!({"name": "summarizer", "owner": w.alice, "ttl_seconds": 300,
                       "jwks": {"keys": [child_key.public().to_json()]}});
    let post = |auth: String, proof: Option<String>| {
        let mut req =
            reqwest::Client::new().post(format!("{}/v1/agents", w.s.url)).header("authorization", auth).json(&child);
        if let Some(p) = proof {
            req = req.header("dpop", p);
        }
        req.send()
    };
    // As a bearer token (SECURITY row 11).
    assert_eq!(post(format!("Bearer {token}"), None).await?.status().as_u16(), 401);
    // Under DPoP without a proof, without ath, or by another key (row 9).
    assert_eq!(post(format!("DPoP {token}"), None).await?.status().as_u16(), 401);
    let htu = format!("{}/v1/agents", w.s.issuer);
    let make = |k: &SigningKey, ath: Option<String>| {
        let jti = fresh_jti();
        sign_proof(k, &ProofClaims { jti: &jti, htm: "POST", htu: &htu, iat: w.s.now(), ath, nonce: None })
            .unwrap_or_default()
    };
    let ath = mandate_jose::dpop::access_token_hash(&token);
    assert_eq!(post(format!("DPoP {token}"), Some(make(&key, None))).await?.status().as_u16(), 401);
    let other = SigningKey::generate(KeyAlg::EdDSA)?;
    assert_eq!(post(format!("DPoP {token}"), Some(make(&other, Some(ath.clone())))).await?.status().as_u16(), 401);
    // With its proof it spawns; the same proof again is a replay.
    let good = make(&key, Some(ath));
    let resp = post(format!("DPoP {token}"), Some(good.clone())).await?;
    assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().await?);
    assert_eq!(post(format!("DPoP {token}"), Some(good)).await?.status().as_u16(), 401);
    Ok(())
}

#[tokio::test]
async fn a_bound_check_token_needs_its_proof_at_the_check_api() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let key = SigningKey::generate(KeyAlg::ES256)?;
    let params = [("grant_type", "client_credentials"), ("resource", w.s.issuer.as_str()), ("scope", "mandate:check")];
    let (st, body) = w.grant_dpop(&w.calendar, &w.s.dpop(&key, "POST", "/oauth/token", None), &params).await?;
    assert_eq!(st, 200, "{body}");
    let checker = body["access_token"].as_str().unwrap_or_default().to_owned();
    let (_, agent) = w.grant(&w.planner, CC).await?;
    let check = json!({"token": agent["access_token"], "action": "list", "resource": {"type": "event", "id": "e1"}});
    let http = reqwest::Client::new();
    let url = format!("{}/v1/check", w.s.url);
    let send = |auth: String, proof: Option<String>| {
        let mut req = http.post(&url).header("authorization", auth).json(&check);
        if let Some(p) = proof {
            req = req.header("dpop", p);
        }
        req.send()
    };
    // Stolen and replayed as a bearer token: refused.
    assert_eq!(send(format!("Bearer {checker}"), None).await?.status(), 401);
    assert_eq!(send(format!("DPoP {checker}"), None).await?.status(), 401);
    let htu = format!("{}/v1/check", w.s.issuer);
    let jti = fresh_jti();
    let ath = Some(mandate_jose::dpop::access_token_hash(&checker));
    let proof = sign_proof(&key, &ProofClaims { jti: &jti, htm: "POST", htu: &htu, iat: w.s.now(), ath, nonce: None })?;
    let resp = send(format!("DPoP {checker}"), Some(proof.clone())).await?;
    assert_eq!(resp.status(), 200, "{}", resp.text().await?);
    // The same proof twice is a replay.
    assert_eq!(send(format!("DPoP {checker}"), Some(proof)).await?.status(), 401);
    Ok(())
}
