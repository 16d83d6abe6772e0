//! Test vectors: fixed keys and inputs with their expected outputs, so that
//! other implementations can check themselves against Mandate and a change
//! in Mandate's output is caught. Ed25519 signatures are deterministic.
use base64::Engine;
use mandate_jose::access::{AccessTokenVerifier, mint};
use mandate_jose::jws::Unverified;
use mandate_jose::{JwkSet, KeyAlg, PublicJwk, SigningKey};
use mandate_model::claims::AccessTokenClaims;

pub fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// RFC 8037 Appendix A.1: the Ed25519 test key, as PKCS#8 v1.
pub fn rfc8037_key() -> SigningKey {
    let seed = b64("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A");
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend(seed);
    SigningKey::from_pkcs8(KeyAlg::EdDSA, &der).unwrap()
}

#[test]
fn rfc8037_a4_signature_is_reproduced_and_verified() {
    let key = rfc8037_key();
    assert_eq!(key.public().to_json()["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
    // RFC 8037 A.5: the RFC 7638 thumbprint.
    assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
    let expected = "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
    assert_eq!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).unwrap()), expected);
    let jws = format!("{input}.{expected}");
    let public = PublicJwk::from_json(
        &serde_json::json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
    )
    .unwrap();
    Unverified::parse(&jws, false).unwrap().verify_with(&public).unwrap();
}

/// Mandate's access token for fixed claims, byte for byte.
#[test]
fn access_token_vector() {
    let key = rfc8037_key();
    let claims = AccessTokenClaims {
        iss: "https://mandate.example".into(),
        sub: "agt_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        aud: "https://api.example.com".into(),
        exp: 1_800_000_300,
        iat: 1_800_000_000,
        nbf: 1_800_000_000,
        jti: "tok_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        client_id: "agt_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        scope: "mail.read".into(),
        act: None,
        may_act: None,
        authorization_details: None,
        grant_id: None,
        purpose: None,
        cnf: None,
        status: None,
    };
    let token = mint(&key, &claims).unwrap();
    assert_eq!(token, include_str!("../../samples/access_token_ed25519.jwt").trim());
    let verifier = AccessTokenVerifier {
        issuer: "https://mandate.example".into(),
        keys: JwkSet { keys: vec![key.public().clone()] },
        leeway: 60,
    };
    assert_eq!(verifier.verify(&token, 1_800_000_100, Some("https://api.example.com")).unwrap(), claims);
}
