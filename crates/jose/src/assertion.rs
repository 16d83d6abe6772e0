//! Client assertions for `private_key_jwt` (RFC 7523 §3, RFC 7521 §4.2).

use serde::Deserialize;

use crate::jws::{Unverified, typ_is};
use crate::{JoseError, JwkSet};

pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const MAX_JTI_LEN: usize = 256;

/// What the server expects of an assertion.
#[derive(Debug, Clone)]
pub struct AssertionRules<'a> {
    /// Values `aud` may hold: the issuer and the token endpoint URL.
    pub audiences: &'a [&'a str],
    /// Seconds since the epoch.
    pub now: i64,
    /// Longest the assertion may still live, from `now`.
    pub max_lifetime: i64,
    /// Clock skew tolerated for `iat`/`nbf`/`exp`.
    pub leeway: i64,
}

/// A verified assertion: who signed it and the `jti` to burn until `exp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    pub client_id: String,
    pub jti: String,
    pub exp: i64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Claim types are strict: `exp` as a string, or missing, fails to parse.
#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
    jti: String,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
}

#[derive(Deserialize)]
struct IssuerOnly {
    iss: String,
}

/// Reads the unverified `iss`, to find which client's keys to verify with.
/// Nothing is trusted until [`verify_client_assertion`] returns.
pub fn peek_issuer(token: &str) -> Result<String, JoseError> {
    let unverified = Unverified::parse(token, false)?;
    let claims: IssuerOnly = unverified.claims()?;
    Ok(claims.iss)
}

/// Verifies a client assertion signed by one of `keys` for `client_id`.
pub fn verify_client_assertion(
    token: &str,
    keys: &JwkSet,
    client_id: &str,
    rules: &AssertionRules<'_>,
) -> Result<VerifiedAssertion, JoseError> {
    let unverified = Unverified::parse(token, false)?;
    // RFC 8725 §3.12: a token of another kind never passes as an assertion.
    if let Some(typ) = unverified.header.typ.as_deref()
        && !(typ_is(Some(typ), "jwt") || typ_is(Some(typ), "client-authentication+jwt"))
    {
        return Err(JoseError::WrongType(typ.to_owned()));
    }
    unverified.verify(keys)?;
    let claims: Claims = unverified.claims()?;
    if claims.iss != client_id || claims.sub != client_id {
        return Err(JoseError::Claims("iss and sub must both be the client_id".into()));
    }
    let aud_ok = match &claims.aud {
        Audience::One(a) => rules.audiences.contains(&a.as_str()),
        Audience::Many(list) => !list.is_empty() && list.iter().any(|a| rules.audiences.contains(&a.as_str())),
    };
    if !aud_ok {
        return Err(JoseError::Audience);
    }
    if claims.exp <= rules.now - rules.leeway {
        return Err(JoseError::Expired);
    }
    if claims.exp > rules.now + rules.max_lifetime + rules.leeway {
        return Err(JoseError::LifetimeTooLong);
    }
    if claims.nbf.is_some_and(|nbf| nbf > rules.now + rules.leeway)
        || claims.iat.is_some_and(|iat| iat > rules.now + rules.leeway)
    {
        return Err(JoseError::NotYetValid);
    }
    if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_LEN || !claims.jti.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(JoseError::Claims("jti must be 1-256 printable ASCII characters".into()));
    }
    Ok(VerifiedAssertion { client_id: claims.iss, jti: claims.jti, exp: claims.exp })
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use serde_json::json;

    use super::*;
    use crate::{KeyAlg, SigningKey, b64, jws};

    const CID: &str = "agt_01JABCDEFGHJKMNPQRSTVWXYZ0";
    const ISS: &str = "https://mandate.example";

    fn rules(now: i64) -> AssertionRules<'static> {
        AssertionRules { audiences: &[ISS, "https://mandate.example/oauth/token"], now, max_lifetime: 3600, leeway: 60 }
    }

    fn keyset(key: &SigningKey) -> JwkSet {
        JwkSet { keys: vec![key.public().clone()] }
    }

    fn claims(now: i64) -> serde_json::Value {
        json!({"iss": CID, "sub": CID, "aud": ISS, "exp": now + 300, "iat": now, "jti": "j1"})
    }

    fn raw(header: serde_json::Value, claims: &serde_json::Value, sig: &[u8]) -> String {
        format!("{}.{}.{}", b64().encode(header.to_string()), b64().encode(claims.to_string()), b64().encode(sig))
    }

    #[test]
    fn accepts_both_ed25519_names_and_es256() {
        let now = 1_800_000_000;
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256] {
            let key = SigningKey::generate(alg).unwrap();
            let token = jws::sign(&key, "JWT", &claims(now)).unwrap();
            let ok = verify_client_assertion(&token, &keyset(&key), CID, &rules(now)).unwrap();
            assert_eq!(ok.jti, "j1");
        }
        // RFC 9864 "Ed25519".
        let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let header = json!({"alg": "Ed25519", "kid": key.kid()});
        let mut token = format!("{}.{}", b64().encode(header.to_string()), b64().encode(claims(now).to_string()));
        let sig = key.sign(token.as_bytes()).unwrap();
        token = format!("{token}.{}", b64().encode(sig));
        assert!(verify_client_assertion(&token, &keyset(&key), CID, &rules(now)).is_ok());
    }

    #[test]
    fn refuses_every_fault() {
        let now = 1_800_000_000;
        let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let other = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let keys = keyset(&key);
        let good = jws::sign(&key, "JWT", &claims(now)).unwrap();
        let (signing_input, _) = good.rsplit_once('.').unwrap();
        let cases: Vec<(&str, String)> = vec![
            ("alg none", raw(json!({"alg":"none"}), &claims(now), b"")),
            ("alg none with empty sig", format!("{signing_input}.")),
            ("HS256 with public key", raw(json!({"alg":"HS256"}), &claims(now), &[0u8; 32])),
            ("foreign key", jws::sign(&other, "JWT", &claims(now)).unwrap()),
            (
                "expired",
                jws::sign(&key, "JWT", &json!({"iss":CID,"sub":CID,"aud":ISS,"exp":now-120,"jti":"j"})).unwrap(),
            ),
            (
                "exp as string",
                jws::sign(&key, "JWT", &json!({"iss":CID,"sub":CID,"aud":ISS,"exp":(now+60).to_string(),"jti":"j"}))
                    .unwrap(),
            ),
            ("missing exp", jws::sign(&key, "JWT", &json!({"iss":CID,"sub":CID,"aud":ISS,"jti":"j"})).unwrap()),
            (
                "too far ahead",
                jws::sign(&key, "JWT", &json!({"iss":CID,"sub":CID,"aud":ISS,"exp":now+7200,"jti":"j"})).unwrap(),
            ),
            (
                "wrong aud",
                jws::sign(
                    &key,
                    "JWT",
                    &json!({"iss":CID,"sub":CID,"aud":"https://evil.example","exp":now+60,"jti":"j"}),
                )
                .unwrap(),
            ),
            (
                "iss != sub",
                jws::sign(
                    &key,
                    "JWT",
                    &json!({"iss":CID,"sub":"agt_01JABCDEFGHJKMNPQRSTVWXYZ1","aud":ISS,"exp":now+60,"jti":"j"}),
                )
                .unwrap(),
            ),
            ("missing jti", jws::sign(&key, "JWT", &json!({"iss":CID,"sub":CID,"aud":ISS,"exp":now+60})).unwrap()),
            ("access token typ", jws::sign(&key, "at+jwt", &claims(now)).unwrap()),
            ("dpop typ", jws::sign(&key, "dpop+jwt", &claims(now)).unwrap()),
            (
                "nbf in future",
                jws::sign(&key, "JWT", &json!({"iss":CID,"sub":CID,"aud":ISS,"exp":now+600,"nbf":now+300,"jti":"j"}))
                    .unwrap(),
            ),
            ("truncated signature", good[..good.len() - 4].to_owned()),
            ("two parts", signing_input.to_owned()),
        ];
        for (name, token) in cases {
            assert!(verify_client_assertion(&token, &keys, CID, &rules(now)).is_err(), "{name} accepted");
        }
        // Header members that point at keys, or demand processing.
        for (member, value) in [
            ("jku", json!("https://evil.example/jwks")),
            ("x5u", json!("https://evil.example/cert")),
            ("jwk", other.public().to_json()),
            ("crit", json!(["exp"])),
            ("kid", json!("' OR 1=1 --\u{0}")),
        ] {
            let mut header = json!({"alg":"EdDSA"});
            header[member] = value;
            let mut token = format!("{}.{}", b64().encode(header.to_string()), b64().encode(claims(now).to_string()));
            let sig = key.sign(token.as_bytes()).unwrap();
            token = format!("{token}.{}", b64().encode(sig));
            assert!(verify_client_assertion(&token, &keys, CID, &rules(now)).is_err(), "{member} accepted");
        }
        // An EdDSA header against an ES256 key is refused, whatever the signature.
        let ec = SigningKey::generate(KeyAlg::ES256).unwrap();
        let token = jws::sign(&key, "JWT", &claims(now)).unwrap();
        assert!(verify_client_assertion(&token, &keyset(&ec), CID, &rules(now)).is_err());
    }

    #[test]
    fn es256_signature_malleations_are_refused() {
        let now = 1_800_000_000;
        let key = SigningKey::generate(KeyAlg::ES256).unwrap();
        let good = jws::sign(&key, "JWT", &claims(now)).unwrap();
        let (input, sig) = good.rsplit_once('.').unwrap();
        let sig = b64().decode(sig).unwrap();
        let zero_r: Vec<u8> = [vec![0u8; 32], sig[32..].to_vec()].concat();
        let zero_s: Vec<u8> = [sig[..32].to_vec(), vec![0u8; 32]].concat();
        for bad in [zero_r, zero_s, vec![0u8; 64], sig[..63].to_vec(), [vec![0x30, 0x44], sig.clone()].concat()] {
            let token = format!("{input}.{}", b64().encode(bad));
            assert!(verify_client_assertion(&token, &keyset(&key), CID, &rules(now)).is_err());
        }
    }
}
