//! The verifier SDK against a live Mandate: key rotation, revocation through
//! the status list (with its cache), a wrong audience, and DPoP at the
//! resource (SECURITY rows 6, 9, 11 and 28).

use std::sync::Arc;

use anyhow::Result;
use axum::Router;
use axum::routing::get;
use mandate_jose::dpop::{ProofClaims, access_token_hash, sign_proof};
use mandate_jose::{KeyAlg, SigningKey};
use mandate_testkit::scenarios::{CAL, World};
use mandate_testkit::{ADMIN_TOKEN, TestServer, fresh_jti};
use mandate_verifier::{Authenticated, Verifier, VerifierConfig, VerifyError};
use reqwest::Method;
use time::Duration;

const CC: &[(&str, &str)] = &[("grant_type", "client_credentials"), ("resource", CAL), ("scope", "read")];

/// A verifier for the calendar on `w`'s server, on the server's clock.
fn verifier(w: &World, audience: &str, public_url: &str) -> Result<Verifier> {
    let mut config = VerifierConfig::new(&w.s.issuer, audience, public_url);
    let clock = w.s.clock.clone();
    config.clock = Arc::new(move || mandate_core::Clock::now(clock.as_ref()).unix_timestamp());
    Ok(Verifier::new(config)?)
}

async fn token(w: &World, dpop: Option<&SigningKey>) -> Result<String> {
    let (st, body) = match dpop {
        Some(k) => w.grant_dpop(&w.planner, &w.s.dpop(k, "POST", "/oauth/token", None), CC).await?,
        None => w.grant(&w.planner, CC).await?,
    };
    anyhow::ensure!(st == 200, "token: {st} {body}");
    Ok(body["access_token"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn keys_rotate_and_a_foreign_audience_is_refused() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let v = verifier(&w, CAL, "https://calendar.example")?;
    let before = token(&w, None).await?;
    assert_eq!(v.verify(&before).await?.aud, CAL);
    // A new key on the server: its tokens name a kid the verifier has not
    // seen; it refetches the JWKS (at most once per 10 s) and accepts them.
    let (st, _) = w.s.admin(Method::POST, "/v1/keys/rotate", None).await?;
    assert_eq!(st, 200);
    w.s.clock.advance(Duration::seconds(11));
    let after = token(&w, None).await?;
    assert_ne!(mandate_testkit::scenarios::claims(&before)["jti"], mandate_testkit::scenarios::claims(&after)["jti"]);
    assert!(v.verify(&after).await.is_ok(), "a token signed by the rotated-in key is refused");
    assert!(v.verify(&before).await.is_ok(), "the old key stays published until its tokens expire");
    // Another resource's verifier refuses the calendar's tokens.
    let other = verifier(&w, "https://mail.example", "https://mail.example")?;
    assert_eq!(other.verify(&after).await.err(), Some(VerifyError::Token(mandate_jose::JoseError::Audience)));
    Ok(())
}

#[tokio::test]
async fn a_revocation_reaches_the_sdk_through_the_status_list_within_its_ttl() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    let v = verifier(&w, CAL, "https://calendar.example")?;
    let t = token(&w, None).await?;
    assert!(v.verify(&t).await.is_ok());
    let (st, _, _) =
        w.s.form_headers("/oauth/revoke", &[("token", &t)], &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))])
            .await?;
    assert_eq!(st, 200);
    // The SDK honours the list's ttl (60 s): its cached copy still says
    // valid (the stale-cache window the list advertises)...
    assert!(v.verify(&t).await.is_ok(), "the cached list was refetched before its ttl");
    // ...and once the ttl has passed it fetches the list, where the bit is set.
    w.s.clock.advance(Duration::seconds(61));
    let refused = v.verify(&t).await;
    assert!(refused.as_ref().is_err_and(|e| e.to_string().contains("revoked")), "{refused:?}");
    // A fresh verifier (no cache) sees it at once.
    let fresh = verifier(&w, CAL, "https://calendar.example")?;
    assert!(fresh.verify(&t).await.is_err());
    Ok(())
}

/// Every `WWW-Authenticate` challenge of a response, one per line.
fn challenges(resp: &reqwest::Response) -> String {
    let all = resp.headers().get_all("www-authenticate").iter().filter_map(|v| v.to_str().ok());
    all.collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn dpop_at_the_resource_checks_the_key_ath_scheme_and_replays() -> Result<()> {
    let w = World::new(TestServer::start().await?).await?;
    // The resource's public URL is only known once it listens; the proofs
    // name it, so build the verifier for the address first.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let public = format!("http://{}", listener.local_addr()?);
    drop(listener);
    let v = verifier(&w, CAL, &public)?;
    let app = Router::new()
        .route(
            "/events",
            get(|auth: Authenticated| async move {
                auth.require_scope("read")?;
                Ok::<_, VerifyError>(format!("events for {}", auth.actor()))
            })
            .post(|auth: Authenticated| async move {
                auth.require_scope("write")?;
                Ok::<_, VerifyError>("created".to_owned())
            }),
        )
        .layer(v.layer());
    let listener = tokio::net::TcpListener::bind(public.trim_start_matches("http://")).await?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let key = SigningKey::generate(KeyAlg::EdDSA)?;
    let t = token(&w, Some(&key)).await?;
    let url = format!("{public}/events");
    let proof = |k: &SigningKey, htm: &str, ath: Option<String>| {
        let jti = fresh_jti();
        sign_proof(k, &ProofClaims { jti: &jti, htm, htu: &url, iat: w.s.now(), ath, nonce: None }).unwrap_or_default()
    };
    let http = reqwest::Client::new();
    let send = |method: Method, auth: String, proof: Option<String>| {
        let mut req = http.request(method, &url).header("authorization", auth);
        if let Some(p) = proof {
            req = req.header("dpop", p);
        }
        req.send()
    };
    let ath = Some(access_token_hash(&t));

    let good = proof(&key, "GET", ath.clone());
    let resp = send(Method::GET, format!("DPoP {t}"), Some(good.clone())).await?;
    assert_eq!(resp.status(), 200, "{}", resp.text().await?);

    let cases = [
        ("the same proof again", send(Method::GET, format!("DPoP {t}"), Some(good)).await?),
        ("a bound token as Bearer", send(Method::GET, format!("Bearer {t}"), None).await?),
        ("no proof", send(Method::GET, format!("DPoP {t}"), None).await?),
        ("no ath", send(Method::GET, format!("DPoP {t}"), Some(proof(&key, "GET", None))).await?),
        (
            "another key than cnf.jkt",
            send(
                Method::GET,
                format!("DPoP {t}"),
                Some(proof(&SigningKey::generate(KeyAlg::EdDSA)?, "GET", ath.clone())),
            )
            .await?,
        ),
        (
            "a POST proof on a GET",
            send(Method::GET, format!("DPoP {t}"), Some(proof(&key, "POST", ath.clone()))).await?,
        ),
    ];
    for (name, resp) in cases {
        assert_eq!(resp.status(), 401, "{name}");
        let challenge = challenges(&resp);
        assert!(challenge.contains("DPoP"), "{name}: {challenge}");
        assert!(challenge.contains("error=\"invalid_"), "{name}: {challenge}");
    }
    // No credentials: a challenge without an error code (RFC 6750 §3.1).
    let resp = http.get(&url).send().await?;
    assert_eq!(resp.status(), 401);
    let challenge = challenges(&resp);
    assert!(!challenge.contains("error="), "{challenge}");
    // A valid request beyond the token's scope: 403 insufficient_scope.
    let resp = send(Method::POST, format!("DPoP {t}"), Some(proof(&key, "POST", ath))).await?;
    assert_eq!(resp.status(), 403);
    let challenge = challenges(&resp);
    assert!(challenge.contains("insufficient_scope") && challenge.contains("scope=\"write\""), "{challenge}");
    Ok(())
}

/// A verifier for the calendar that may manage its own Shared Signals
/// streams (its `RemoteCheck` credentials are the calendar's client key).
fn subscribing_verifier(w: &World) -> Result<Verifier> {
    let mut config = VerifierConfig::new(&w.s.issuer, CAL, "https://calendar.example");
    let clock = w.s.clock.clone();
    config.clock = Arc::new(move || mandate_core::Clock::now(clock.as_ref()).unix_timestamp());
    let key = SigningKey::from_pkcs8(KeyAlg::EdDSA, w.calendar.key.pkcs8())?;
    config.remote_check = Some(mandate_verifier::RemoteCheck { client_id: w.calendar.id.clone(), key: Arc::new(key) });
    Ok(Verifier::new(config)?)
}

/// Issue 17 §3, end to end: the SDK subscribes to Mandate's Shared Signals
/// with a push stream (its RFC 8935 endpoint on a local listener) and with
/// a poll stream (its RFC 8936 poller), and a token revoked at Mandate is
/// refused by the SDK as soon as the event arrives. The server's clock
/// stands still, so the status list the SDK cached (ttl 60 s) still says
/// valid: only the signal can refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_the_sdk_at_once_through_shared_signals() -> Result<()> {
    use mandate_verifier::{Delivery, PollConfig, SsfReceiver};
    for push in [true, false] {
        let w = World::new(TestServer::start_with(|c| c.dev_loopback_fetch = true).await?).await?;
        let v = subscribing_verifier(&w)?;
        let secret = "Bearer calendar-push-secret-0123456789";
        let receiver = SsfReceiver::new(&v).with_push_authorization(secret);
        let poller = if push {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let endpoint_url = format!("http://127.0.0.1:{}/ssf/events", listener.local_addr()?.port());
            tokio::spawn(axum::serve(listener, receiver.push_router("/ssf/events")).into_future());
            let delivery = Delivery::Push { endpoint_url, authorization_header: Some(secret.into()) };
            receiver.create_stream(&delivery, "the calendar").await?;
            None
        } else {
            let stream = receiver.create_stream(&Delivery::Poll, "the calendar").await?;
            let mut config = PollConfig::new(stream.endpoint_url.clone().unwrap_or_default());
            config.idle_interval = std::time::Duration::from_millis(20);
            Some(receiver.spawn_poller(config))
        };
        let t = token(&w, None).await?;
        let jti = mandate_testkit::scenarios::claims(&t)["jti"].as_str().unwrap_or_default().to_owned();
        assert!(v.verify(&t).await.is_ok(), "a live token is refused");
        let revoke = [("authorization", format!("Bearer {ADMIN_TOKEN}"))];
        let revoke: Vec<(&str, &str)> = revoke.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (st, _, _) = w.s.form_headers("/oauth/revoke", &[("token", &t)], &revoke).await?;
        assert_eq!(st, 200);
        let mut refused = None;
        for _ in 0..250 {
            if v.is_revoked(&jti) {
                refused = Some(v.verify(&t).await);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let mode = if push { "push" } else { "poll" };
        let refused = refused.unwrap_or_else(|| panic!("{mode}: no session-revoked event reached the SDK in 5 s"));
        assert!(refused.as_ref().is_err_and(|e| e.to_string().contains("revoked")), "{mode}: {refused:?}");
        // Another token, not revoked, is still accepted.
        assert!(v.verify(&token(&w, None).await?).await.is_ok(), "{mode}: a live token is refused");
        if let Some(p) = poller {
            p.stop().await;
        }
    }
    Ok(())
}
