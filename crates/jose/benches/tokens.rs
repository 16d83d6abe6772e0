//! Token mint and verify, and client-assertion verify: the crypto on the
//! token endpoint's hot path. `cargo bench -p mandate-jose`.
// Benchmarks may panic on set-up failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use mandate_jose::access::{AccessTokenVerifier, mint};
use mandate_jose::assertion::{AssertionRules, verify_client_assertion};
use mandate_jose::dpop::{ProofClaims, ProofRules, access_token_hash, sign_proof, verify_proof};
use mandate_jose::{JwkSet, KeyAlg, SigningKey, jws};
use mandate_model::claims::AccessTokenClaims;

const NOW: i64 = 1_800_000_000;

fn claims() -> AccessTokenClaims {
    AccessTokenClaims {
        iss: "https://mandate.example".into(),
        sub: "agt_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        aud: "https://api.example.com".into(),
        exp: NOW + 300,
        iat: NOW,
        nbf: NOW,
        jti: "tok_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        client_id: "agt_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        scope: "mail.read mail.send".into(),
        act: None,
        may_act: None,
        grant_id: None,
        purpose: None,
        cnf: None,
        status: None,
    }
}

fn bench(c: &mut Criterion) {
    for alg in [KeyAlg::EdDSA, KeyAlg::ES256] {
        let key = SigningKey::generate(alg).unwrap();
        let verifier = AccessTokenVerifier {
            issuer: "https://mandate.example".into(),
            keys: JwkSet { keys: vec![key.public().clone()] },
            leeway: 60,
        };
        let claims = claims();
        let token = mint(&key, &claims).unwrap();
        c.bench_function(&format!("access_token/mint/{}", alg.name()), |b| {
            b.iter(|| mint(&key, std::hint::black_box(&claims)).unwrap())
        });
        c.bench_function(&format!("access_token/verify/{}", alg.name()), |b| {
            b.iter(|| verifier.verify(std::hint::black_box(&token), NOW, Some("https://api.example.com")).unwrap())
        });
        let cid = "agt_01JABCDEFGHJKMNPQRSTVWXYZ0";
        let assertion = jws::sign(
            &key,
            "JWT",
            &serde_json::json!({"iss": cid, "sub": cid, "aud": "https://mandate.example", "exp": NOW + 60, "jti": "j"}),
        )
        .unwrap();
        let keys = JwkSet { keys: vec![key.public().clone()] };
        let rules =
            AssertionRules { audiences: &["https://mandate.example"], now: NOW, max_lifetime: 3600, leeway: 60 };
        c.bench_function(&format!("client_assertion/verify/{}", alg.name()), |b| {
            b.iter(|| verify_client_assertion(std::hint::black_box(&assertion), &keys, cid, &rules).unwrap())
        });
        // A DPoP proof at a resource: the key parsed from the header, the
        // signature, the claims, `htu` normalised, `ath` compared.
        let htu = "https://api.example.com/events";
        let proof = sign_proof(
            &key,
            &ProofClaims { jti: "j", htm: "GET", htu, iat: NOW, ath: Some(access_token_hash(&token)), nonce: None },
        )
        .unwrap();
        let rules = ProofRules { htm: "GET", htu, now: NOW, max_age: 60, max_skew: 5, access_token: Some(&token) };
        c.bench_function(&format!("dpop_proof/verify/{}", alg.name()), |b| {
            b.iter(|| verify_proof(std::hint::black_box(&proof), &rules).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
