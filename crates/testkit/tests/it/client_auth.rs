//! `private_key_jwt` faults: each is `invalid_client` (401) and issues nothing.

use base64::Engine;
use mandate_jose::{KeyAlg, SigningKey};
use mandate_testkit::TestServer;
use serde_json::json;

const API: &str = "https://api.example.com";

fn b64(v: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

fn raw_jws(header: serde_json::Value, claims: &serde_json::Value, key: Option<&SigningKey>) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let sig = key.map(|k| k.sign(input.as_bytes()).unwrap_or_default()).unwrap_or_default();
    format!("{input}.{}", b64(sig))
}

async fn assert_invalid_client(s: &TestServer, name: &str, assertion: &str) -> anyhow::Result<()> {
    let (st, body) = s.token_with(assertion, API, "read").await?;
    assert_eq!(st, 401, "{name}: {body}");
    assert_eq!(body["error"], "invalid_client", "{name}: {body}");
    Ok(())
}

#[tokio::test]
async fn every_client_assertion_fault_is_invalid_client() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, agent) = s.seed().await?;
    let now = s.now();
    let id = agent.id.clone();
    let claims = |extra: serde_json::Value| {
        let mut c = json!({"iss": id, "sub": id, "aud": s.url, "exp": now + 60, "jti": mandate_testkit::fresh_jti()});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if v.is_null() {
                    c.remove(k);
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        c
    };
    let foreign = SigningKey::generate(KeyAlg::EdDSA)?;
    let cases: Vec<(&str, String)> = vec![
        ("alg none", raw_jws(json!({"alg": "none"}), &claims(json!({})), None)),
        ("alg none, upper case", raw_jws(json!({"alg": "NONE"}), &claims(json!({})), None)),
        ("empty signature", raw_jws(json!({"alg": "EdDSA", "kid": agent.key.kid()}), &claims(json!({})), None)),
        ("HS256 keyed with the public key", {
            let input = format!("{}.{}", b64(json!({"alg":"HS256"}).to_string()), b64(claims(json!({})).to_string()));
            let k = aws_lc_rs::hmac::Key::new(
                aws_lc_rs::hmac::HMAC_SHA256,
                agent.key.public().to_json()["x"].as_str().unwrap_or_default().as_bytes(),
            );
            format!("{input}.{}", b64(aws_lc_rs::hmac::sign(&k, input.as_bytes())))
        }),
        ("foreign key", mandate_jose::jws::sign(&foreign, "JWT", &claims(json!({})))?),
        (
            "foreign key in jwk header",
            raw_jws(json!({"alg": "EdDSA", "jwk": foreign.public().to_json()}), &claims(json!({})), Some(&foreign)),
        ),
        (
            "jku header",
            raw_jws(json!({"alg": "EdDSA", "jku": "https://evil.example/jwks"}), &claims(json!({})), Some(&agent.key)),
        ),
        (
            "x5u header",
            raw_jws(json!({"alg": "EdDSA", "x5u": "https://evil.example/c"}), &claims(json!({})), Some(&agent.key)),
        ),
        (
            "crit header",
            raw_jws(json!({"alg": "EdDSA", "crit": ["foo"], "foo": 1}), &claims(json!({})), Some(&agent.key)),
        ),
        ("kid with SQL", raw_jws(json!({"alg": "EdDSA", "kid": "x' OR '1'='1"}), &claims(json!({})), Some(&agent.key))),
        (
            "kid with traversal",
            raw_jws(json!({"alg": "EdDSA", "kid": "../../../../dev/null"}), &claims(json!({})), Some(&agent.key)),
        ),
        ("ES256 header on an Ed25519 key", raw_jws(json!({"alg": "ES256"}), &claims(json!({})), Some(&agent.key))),
        ("expired", s.assertion(&agent, json!({"exp": now - 120}))),
        ("exp as a string", s.assertion(&agent, json!({"exp": (now + 60).to_string()}))),
        ("missing exp", s.assertion(&agent, json!({"exp": null}))),
        ("exp too far ahead", s.assertion(&agent, json!({"exp": now + 2 * 3600}))),
        ("nbf in the future", s.assertion(&agent, json!({"nbf": now + 600}))),
        ("wrong aud", s.assertion(&agent, json!({"aud": "https://other-as.example"}))),
        ("aud is the resource", s.assertion(&agent, json!({"aud": API}))),
        ("iss is not the client", s.assertion(&agent, json!({"iss": "agt_01JZZZZZZZZZZZZZZZZZZZZZZZ"}))),
        ("sub is not the client", s.assertion(&agent, json!({"sub": "agt_01JZZZZZZZZZZZZZZZZZZZZZZZ"}))),
        ("missing jti", s.assertion(&agent, json!({"jti": null}))),
        ("access-token typ", mandate_jose::jws::sign(&agent.key, "at+jwt", &claims(json!({})))?),
        ("dpop typ", mandate_jose::jws::sign(&agent.key, "dpop+jwt", &claims(json!({})))?),
        ("garbage", "not.a.jwt".into()),
        ("two parts", "eyJhbGciOiJFZERTQSJ9.e30".into()),
    ];
    for (name, assertion) in cases {
        assert_invalid_client(&s, name, &assertion).await?;
    }
    // A replayed jti.
    let once = s.assertion(&agent, json!({}));
    let (st, _) = s.token_with(&once, API, "read").await?;
    assert_eq!(st, 200);
    assert_invalid_client(&s, "replayed jti", &once).await?;
    // A refused request still burns its assertion.
    let refused = s.assertion(&agent, json!({}));
    let (st, body) = s.token_with(&refused, API, "write").await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_scope")));
    assert_invalid_client(&s, "jti of a refused request", &refused).await?;
    // client_id in the body is optional, but must match when present.
    let a = s.assertion(&agent, json!({}));
    let (st, body) = s
        .form_asserted(
            &a,
            "/oauth/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "agt_01JZZZZZZZZZZZZZZZZZZZZZZZ"),
                ("resource", API),
                ("scope", "read"),
            ],
        )
        .await?;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")));
    let a = s.assertion(&agent, json!({}));
    let (st, _) = s
        .form_asserted(
            &a,
            "/oauth/token",
            &[("grant_type", "client_credentials"), ("client_id", &agent.id), ("resource", API), ("scope", "read")],
        )
        .await?;
    assert_eq!(st, 200);
    // Wrong assertion type; no authentication at all; secrets disabled.
    let a = s.assertion(&agent, json!({}));
    let (st, _) = s
        .form(
            "/oauth/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", "urn:x"),
                ("client_assertion", &a),
                ("resource", API),
                ("scope", "read"),
            ],
        )
        .await?;
    assert_eq!(st, 401);
    let (st, _) =
        s.form("/oauth/token", &[("grant_type", "client_credentials"), ("resource", API), ("scope", "read")]).await?;
    assert_eq!(st, 401);
    let resp = s
        .http
        .post(format!("{}/oauth/token", s.url))
        .basic_auth(&agent.id, Some("guess"))
        .form(&[("grant_type", "client_credentials"), ("resource", API), ("scope", "read")])
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn both_ed25519_names_and_es256_keys_authenticate() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (owner, agent) = s.seed().await?;
    let now = s.now();
    // RFC 9864 "Ed25519".
    let claims = json!({"iss": agent.id, "sub": agent.id, "aud": format!("{}/oauth/token", s.url), "exp": now + 60, "jti": "rfc9864"});
    let a = raw_jws(json!({"alg": "Ed25519", "kid": agent.key.kid()}), &claims, Some(&agent.key));
    let (st, body) = s.token_with(&a, API, "read").await?;
    assert_eq!(st, 200, "{body}");
    // P-256.
    let ec = s.create_agent(&owner, KeyAlg::ES256).await?;
    let (st, body) = s.token(&ec, API, "read").await?;
    assert_eq!(st, 200, "{body}");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn concurrent_replays_of_one_assertion_issue_one_token() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, agent) = s.seed().await?;
    let a = s.assertion(&agent, json!({}));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let http = s.http.clone();
        let url = format!("{}/oauth/token", s.url);
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
                    ("client_assertion", &a),
                    ("resource", API),
                    ("scope", "read"),
                ])
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await?? == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
    s.stop().await?;
    Ok(())
}

/// An assertion's `aud` may be the issuer or the token endpoint anywhere,
/// and the URL of the endpoint being called; another endpoint's URL is not
/// an audience of this one.
#[tokio::test]
async fn an_assertion_may_name_the_endpoint_it_is_sent_to() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, agent) = s.seed().await?;
    let (st, body) = s.token(&agent, API, "read").await?;
    assert_eq!(st, 200, "{body}");
    let token = body["access_token"].as_str().unwrap_or_default().to_owned();
    let at = |path: &str| s.assertion(&agent, json!({"aud": format!("{}{path}", s.issuer)}));
    let (st, body) = s.form_asserted(&at("/oauth/introspect"), "/oauth/introspect", &[("token", &token)]).await?;
    assert_eq!((st, body["active"].as_bool()), (200, Some(true)), "{body}");
    let (st, body) = s.form_asserted(&at("/oauth/token"), "/oauth/introspect", &[("token", &token)]).await?;
    assert_eq!(st, 200, "the token endpoint is an audience everywhere: {body}");
    let (st, body) = s.form_asserted(&at("/oauth/revoke"), "/oauth/introspect", &[("token", &token)]).await?;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
    assert_invalid_client(&s, "the introspection endpoint at the token endpoint", &at("/oauth/introspect")).await?;
    let (st, body) = s.form_asserted(&at("/oauth/revoke"), "/oauth/revoke", &[("token", &token)]).await?;
    assert_eq!(st, 200, "{body}");
    s.stop().await?;
    Ok(())
}

/// Without `scope`, a client gets the resource's scopes that its ceiling
/// and policy allow (RFC 6749 §3.3); MCP clients often name none.
#[tokio::test]
async fn client_credentials_without_scope_gets_what_policy_allows() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let (_, agent) = s.seed().await?;
    let a = s.assertion(&agent, json!({}));
    let (st, body) =
        s.form_asserted(&a, "/oauth/token", &[("grant_type", "client_credentials"), ("resource", API)]).await?;
    // The API offers read and write; policy permits read only.
    assert_eq!((st, body["scope"].as_str()), (200, Some("read")), "{body}");
    // At the issuer a scope must be named.
    let a = s.assertion(&agent, json!({}));
    let (st, body) =
        s.form_asserted(&a, "/oauth/token", &[("grant_type", "client_credentials"), ("resource", &s.issuer)]).await?;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_scope")), "{body}");
    s.stop().await?;
    Ok(())
}
