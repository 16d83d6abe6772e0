//! Token mint and verify, client-assertion verify, and workload identity
//! JWT verify (RS256 2048-bit, ES256, EdDSA, as a trusted issuer signs
//! them): the crypto on the token endpoint's hot path.
//! `cargo bench -p mandate-jose`.
// Benchmarks may panic on set-up failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use mandate_jose::access::{AccessTokenVerifier, mint};
use mandate_jose::assertion::{AssertionRules, verify_client_assertion};
use mandate_jose::dpop::{ProofClaims, ProofRules, access_token_hash, sign_proof, verify_proof};
use mandate_jose::federated::{ExternalRules, verify_workload};
use mandate_jose::{JwkSet, KeyAlg, SigningKey, jws};
use mandate_model::claims::AccessTokenClaims;
use serde_json::{Value, json};

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
        authorization_details: None,
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

/// A workload JWT's claims, as a CI runner or Kubernetes sends them (the
/// registered ones; real tokens carry more, which only JSON parsing sees).
fn workload_claims() -> Value {
    json!({
        "iss": "https://ci.example", "sub": "system:serviceaccount:payments:worker",
        "aud": "https://mandate.example", "iat": NOW, "exp": NOW + 600, "jti": "w-1",
    })
}

/// An RS256 JWT and the issuer's key set: Mandate never signs with RSA, so
/// the bench signs with aws-lc-rs directly.
fn rs256_workload() -> (String, JwkSet) {
    let kp = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(kp.public_key());
    let e = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "RSA", "n": e(&public.n), "e": e(&public.e), "kid": "rsa-1", "alg": "RS256", "use": "sig"});
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"});
    let input = format!("{}.{}", e(header.to_string().as_bytes()), e(workload_claims().to_string().as_bytes()));
    let mut sig = vec![0; kp.public_modulus_len()];
    kp.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig).unwrap();
    (format!("{input}.{}", e(&sig)), JwkSet::from_json_external(&json!({"keys": [jwk]})).unwrap())
}

/// A workload JWT verified as the token endpoint does (`verify_workload`;
/// the `peek` before it is the same for a `private_key_jwt` assertion),
/// against a set holding the issuer's keys of every algorithm, as a real
/// issuer publishes them. Compare with `client_assertion/verify/*`.
fn workload(c: &mut Criterion) {
    let rules = ExternalRules { audiences: &["https://mandate.example"], now: NOW, max_lifetime: 3600, leeway: 60 };
    let (rs_token, rs_keys) = rs256_workload();
    let mut tokens = vec![("RS256", rs_token)];
    let mut keys = rs_keys.keys;
    for alg in [KeyAlg::ES256, KeyAlg::EdDSA] {
        let key = SigningKey::generate(alg).unwrap();
        tokens.push((alg.name(), jws::sign(&key, "JWT", &workload_claims()).unwrap()));
        keys.push(key.public().clone());
    }
    let set =
        JwkSet::from_json_external(&json!({"keys": keys.iter().map(|k| k.to_json()).collect::<Vec<_>>()})).unwrap();
    for (alg, token) in &tokens {
        c.bench_function(&format!("workload_jwt/verify/{alg}"), |b| {
            b.iter(|| verify_workload(std::hint::black_box(token), &set, &rules).unwrap())
        });
    }
}

criterion_group!(benches, bench, workload);
criterion_main!(benches);
