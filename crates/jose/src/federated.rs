//! JWTs from trusted issuers (DESIGN §10): workload identity tokens (a CI
//! runner's OIDC token, a Kubernetes service-account token, a SPIFFE
//! JWT-SVID) and Identity Assertion JWT Authorization Grants
//! (draft-ietf-oauth-identity-assertion-authz-grant, "ID-JAG").
//!
//! The keys come from the issuer's published set, never from the token;
//! the algorithm must be the one the key allows (RS256, ES256, EdDSA); the
//! `typ` tells the two kinds apart, and neither passes as the other.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::jws::{Unverified, typ_is};
use crate::{JoseError, JwkSet};

/// RFC 7523 §2.1: the grant whose `assertion` is a JWT.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The ID-JAG's media type, in its `typ` header.
pub const ID_JAG_TYP: &str = "oauth-id-jag+jwt";
/// The profile discovery advertises in `authorization_grant_profiles_supported`.
pub const ID_JAG_PROFILE: &str = "urn:ietf:params:oauth:grant-profile:id-jag";
const MAX_JTI_LEN: usize = 256;
const MAX_SUB_LEN: usize = 1024;

/// What a JWT from a trusted issuer is checked against.
#[derive(Debug, Clone)]
pub struct ExternalRules<'a> {
    /// Values `aud` may hold (a workload JWT needs one of them in its `aud`;
    /// an ID-JAG's `aud` must be exactly one of them).
    pub audiences: &'a [&'a str],
    /// Seconds since the epoch.
    pub now: i64,
    /// Longest lifetime: `exp - iat`, and `exp - now`.
    pub max_lifetime: i64,
    /// Clock skew tolerated for `iat`/`nbf`/`exp`.
    pub leeway: i64,
}

/// The unverified `iss` and `typ`: which issuer's keys to verify with, and
/// which kind of token this claims to be. Nothing is trusted until a
/// `verify_*` function returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    pub iss: String,
    pub sub: Option<String>,
    pub typ: Option<String>,
    pub kid: Option<String>,
}

impl Peeked {
    /// Whether the token says it is an ID-JAG.
    pub fn is_id_jag(&self) -> bool {
        typ_is(self.typ.as_deref(), ID_JAG_TYP)
    }
}

#[derive(Deserialize)]
struct IssuerOnly {
    iss: String,
    #[serde(default)]
    sub: Option<String>,
}

/// Reads the header and `iss` of a token without verifying it.
pub fn peek(token: &str) -> Result<Peeked, JoseError> {
    let unverified = Unverified::parse(token, false)?;
    let claims: IssuerOnly = unverified.claims()?;
    Ok(Peeked {
        iss: claims.iss,
        sub: claims.sub,
        typ: unverified.header.typ.clone(),
        kid: unverified.header.kid.clone(),
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn into_vec(self) -> Vec<String> {
        match self {
            Audience::One(a) => vec![a],
            Audience::Many(list) => list,
        }
    }
}

/// The registered claims, strictly typed: `exp` as a string, a missing
/// `sub` or a non-string `jti` fail to parse.
#[derive(Deserialize)]
struct Registered {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
}

/// A verified workload identity token.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadToken {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub jti: Option<String>,
    /// Every claim, for rules that match on more than `sub`.
    pub claims: Map<String, Value>,
}

/// A verified ID-JAG.
#[derive(Debug, Clone, PartialEq)]
pub struct IdJag {
    pub iss: String,
    /// The user's subject at the issuer.
    pub sub: String,
    /// The client the grant was issued to, as the issuer names it.
    pub client_id: String,
    pub jti: String,
    pub exp: i64,
    /// RFC 8707 resource indicators the grant is for.
    pub resources: Vec<String>,
    /// Space-separated scopes, as granted.
    pub scope: Option<String>,
    pub email: Option<String>,
    pub email_verified: bool,
}

/// Verifies a workload identity token signed by one of `keys`. Its `typ`,
/// if any, must be `JWT` or `JOSE` (Kubernetes sends none, GitHub `JWT`,
/// SPIFFE `JWT` or `JOSE`): an access token, a DPoP proof or an ID-JAG is
/// refused. `aud` must name one of `rules.audiences`.
pub fn verify_workload(token: &str, keys: &JwkSet, rules: &ExternalRules<'_>) -> Result<WorkloadToken, JoseError> {
    let unverified = Unverified::parse(token, false)?;
    if let Some(typ) = unverified.header.typ.as_deref()
        && !(typ_is(Some(typ), "jwt") || typ_is(Some(typ), "jose"))
    {
        return Err(JoseError::WrongType(typ.to_owned()));
    }
    unverified.verify(keys)?;
    let all: Map<String, Value> = unverified.claims()?;
    let reg: Registered = unverified.claims()?;
    check_times(&reg, rules)?;
    check_subject(&reg.sub)?;
    let aud = reg.aud.into_vec();
    if aud.is_empty() || !aud.iter().any(|a| rules.audiences.contains(&a.as_str())) {
        return Err(JoseError::Audience);
    }
    if let Some(jti) = &reg.jti {
        check_jti(jti)?;
    }
    Ok(WorkloadToken { iss: reg.iss, sub: reg.sub, aud, exp: reg.exp, jti: reg.jti, claims: all })
}

#[derive(Deserialize)]
struct IdJagClaims {
    client_id: String,
    #[serde(default)]
    resource: Option<Audience>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
}

/// Verifies an ID-JAG signed by one of `keys`: `typ` is
/// `oauth-id-jag+jwt`, `aud` is exactly one of `rules.audiences` (a string
/// or an array of one), and `client_id`, `jti`, `exp` and `iat` are there.
pub fn verify_id_jag(token: &str, keys: &JwkSet, rules: &ExternalRules<'_>) -> Result<IdJag, JoseError> {
    let unverified = Unverified::parse(token, false)?;
    if !typ_is(unverified.header.typ.as_deref(), ID_JAG_TYP) {
        return Err(JoseError::WrongType(unverified.header.typ.clone().unwrap_or_default()));
    }
    unverified.verify(keys)?;
    let reg: Registered = unverified.claims()?;
    let extra: IdJagClaims = unverified.claims()?;
    if reg.iat.is_none() {
        return Err(JoseError::Claims("an ID-JAG has iat".into()));
    }
    check_times(&reg, rules)?;
    check_subject(&reg.sub)?;
    match reg.aud.into_vec().as_slice() {
        [one] if rules.audiences.contains(&one.as_str()) => {}
        _ => return Err(JoseError::Audience),
    }
    let jti = reg.jti.ok_or_else(|| JoseError::Claims("an ID-JAG has jti".into()))?;
    check_jti(&jti)?;
    if extra.client_id.is_empty() {
        return Err(JoseError::Claims("client_id is empty".into()));
    }
    let resources = extra.resource.map(Audience::into_vec).unwrap_or_default();
    Ok(IdJag {
        iss: reg.iss,
        sub: reg.sub,
        client_id: extra.client_id,
        jti,
        exp: reg.exp,
        resources,
        scope: extra.scope,
        email: extra.email,
        email_verified: extra.email_verified == Some(true),
    })
}

fn check_times(reg: &Registered, rules: &ExternalRules<'_>) -> Result<(), JoseError> {
    if reg.exp <= rules.now - rules.leeway {
        return Err(JoseError::Expired);
    }
    // Lifetime from issue, and what is left of it: a token minted to live
    // a day is refused even in its last hour.
    if reg.exp > rules.now + rules.max_lifetime + rules.leeway
        || reg.iat.is_some_and(|iat| reg.exp.saturating_sub(iat) > rules.max_lifetime)
    {
        return Err(JoseError::LifetimeTooLong);
    }
    if reg.nbf.is_some_and(|nbf| nbf > rules.now + rules.leeway)
        || reg.iat.is_some_and(|iat| iat > rules.now + rules.leeway)
    {
        return Err(JoseError::NotYetValid);
    }
    Ok(())
}

fn check_subject(sub: &str) -> Result<(), JoseError> {
    if sub.is_empty() || sub.len() > MAX_SUB_LEN || sub.chars().any(char::is_control) {
        return Err(JoseError::Claims("sub must be 1-1024 characters, none of them control characters".into()));
    }
    Ok(())
}

fn check_jti(jti: &str) -> Result<(), JoseError> {
    if jti.is_empty() || jti.len() > MAX_JTI_LEN || !jti.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(JoseError::Claims("jti must be 1-256 printable ASCII characters".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use serde_json::json;

    use super::*;
    use crate::{KeyAlg, PublicJwk, SigningKey, b64, jws};

    const ISS: &str = "https://ci.example";
    const MANDATE: &str = "https://mandate.example";
    const NOW: i64 = 1_800_000_000;

    fn rules() -> ExternalRules<'static> {
        ExternalRules { audiences: &[MANDATE], now: NOW, max_lifetime: 3600, leeway: 30 }
    }

    fn keyset(key: &SigningKey) -> JwkSet {
        JwkSet::from_json_external(&json!({"keys": [key.public().to_json()]})).unwrap()
    }

    fn workload(now: i64) -> Value {
        json!({"iss": ISS, "sub": "repo:acme/app:ref:refs/heads/main", "aud": MANDATE, "iat": now, "exp": now + 300, "jti": "w-1"})
    }

    fn jag(now: i64) -> Value {
        json!({"iss": ISS, "sub": "u-1", "aud": MANDATE, "client_id": "agt_1", "jti": "j-1", "iat": now, "exp": now + 300,
               "resource": "https://cal.example", "scope": "calendar:read"})
    }

    fn raw(header: Value, claims: &Value, sig: &[u8]) -> String {
        let e = |v: &[u8]| b64().encode(v);
        format!("{}.{}.{}", e(header.to_string().as_bytes()), e(claims.to_string().as_bytes()), e(sig))
    }

    #[test]
    fn a_workload_token_verifies_and_keeps_its_claims() {
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256] {
            let key = SigningKey::generate(alg).unwrap();
            let token = jws::sign(&key, "JWT", &workload(NOW)).unwrap();
            let got = verify_workload(&token, &keyset(&key), &rules()).unwrap();
            assert_eq!(got.sub, "repo:acme/app:ref:refs/heads/main");
            assert_eq!(got.jti.as_deref(), Some("w-1"));
            assert_eq!(got.claims.get("iss"), Some(&json!(ISS)));
        }
    }

    #[test]
    fn a_workload_token_is_refused_for_every_fault() {
        let key = SigningKey::generate(KeyAlg::ES256).unwrap();
        let keys = keyset(&key);
        let signed = |claims: &Value, typ: &str| jws::sign(&key, typ, claims).unwrap();
        let with = |k: &str, v: Value| {
            let mut c = workload(NOW);
            c[k] = v;
            c
        };
        let cases = [
            (signed(&with("aud", json!("https://other.example")), "JWT"), JoseError::Audience),
            (signed(&with("aud", json!([])), "JWT"), JoseError::Audience),
            (signed(&with("exp", json!(NOW - 60)), "JWT"), JoseError::Expired),
            (signed(&with("exp", json!(NOW + 7200)), "JWT"), JoseError::LifetimeTooLong),
            (
                signed(&json!({"iss": ISS, "sub": "s", "aud": MANDATE, "iat": NOW - 3000, "exp": NOW + 1000}), "JWT"),
                JoseError::LifetimeTooLong,
            ),
            (signed(&with("nbf", json!(NOW + 600)), "JWT"), JoseError::NotYetValid),
            (signed(&with("iat", json!(NOW + 600)), "JWT"), JoseError::NotYetValid),
            (signed(&workload(NOW), "at+jwt"), JoseError::WrongType("at+jwt".into())),
            (signed(&workload(NOW), ID_JAG_TYP), JoseError::WrongType(ID_JAG_TYP.into())),
        ];
        for (token, want) in cases {
            assert_eq!(verify_workload(&token, &keys, &rules()).unwrap_err(), want);
        }
        for bad in [with("exp", json!("soon")), with("sub", json!("")), with("jti", json!(7))] {
            assert!(matches!(verify_workload(&signed(&bad, "JWT"), &keys, &rules()), Err(JoseError::Claims(_))));
        }
        // Another key, no key, alg none, HS256 keyed with the public key.
        let other = SigningKey::generate(KeyAlg::ES256).unwrap();
        let foreign = jws::sign(&other, "JWT", &workload(NOW)).unwrap();
        assert!(verify_workload(&foreign, &keys, &rules()).is_err());
        let none = raw(json!({"alg": "none"}), &workload(NOW), b"x");
        assert!(verify_workload(&none, &keys, &rules()).is_err());
        let public = key.public().to_json().to_string();
        let h = raw(json!({"alg": "HS256", "kid": key.kid()}), &workload(NOW), public.as_bytes());
        assert_eq!(verify_workload(&h, &keys, &rules()).unwrap_err(), JoseError::UnknownKey);
    }

    #[test]
    fn an_id_jag_verifies() {
        let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let token = jws::sign(&key, ID_JAG_TYP, &jag(NOW)).unwrap();
        let got = verify_id_jag(&token, &keyset(&key), &rules()).unwrap();
        assert_eq!((got.sub.as_str(), got.client_id.as_str(), got.jti.as_str()), ("u-1", "agt_1", "j-1"));
        assert_eq!(got.resources, vec!["https://cal.example".to_owned()]);
        assert_eq!(got.scope.as_deref(), Some("calendar:read"));
        let mut one = jag(NOW);
        one["aud"] = json!([MANDATE]);
        assert!(verify_id_jag(&jws::sign(&key, ID_JAG_TYP, &one).unwrap(), &keyset(&key), &rules()).is_ok());
    }

    #[test]
    fn an_id_jag_is_refused_for_every_fault() {
        let key = SigningKey::generate(KeyAlg::ES256).unwrap();
        let keys = keyset(&key);
        let with = |k: &str, v: Value| {
            let mut c = jag(NOW);
            c[k] = v;
            jws::sign(&key, ID_JAG_TYP, &c).unwrap()
        };
        let without = |k: &str| {
            let mut c = jag(NOW);
            c.as_object_mut().unwrap().remove(k);
            jws::sign(&key, ID_JAG_TYP, &c).unwrap()
        };
        assert_eq!(
            verify_id_jag(&jws::sign(&key, "JWT", &jag(NOW)).unwrap(), &keys, &rules()).unwrap_err(),
            JoseError::WrongType("JWT".into())
        );
        assert_eq!(
            verify_id_jag(&with("aud", json!("https://other.example")), &keys, &rules()).unwrap_err(),
            JoseError::Audience
        );
        assert_eq!(
            verify_id_jag(&with("aud", json!([MANDATE, "https://other.example"])), &keys, &rules()).unwrap_err(),
            JoseError::Audience
        );
        assert_eq!(verify_id_jag(&with("exp", json!(NOW - 100)), &keys, &rules()).unwrap_err(), JoseError::Expired);
        for missing in ["client_id", "jti", "iat", "sub", "exp"] {
            assert!(
                matches!(verify_id_jag(&without(missing), &keys, &rules()), Err(JoseError::Claims(_))),
                "{missing}"
            );
        }
        // A workload JWT's verifier never takes an ID-JAG, and no ID-JAG
        // is accepted without its typ.
        let untyped = raw(json!({"alg": "ES256", "kid": key.kid()}), &jag(NOW), &[0; 64]);
        assert!(matches!(verify_id_jag(&untyped, &keys, &rules()), Err(JoseError::WrongType(_))));
    }

    #[test]
    fn rsa_keys_verify_rs256_only_and_only_from_a_trusted_set() {
        // RFC 7515 Appendix A.2's RSA key and token (RS256).
        let jwk = json!({"kty":"RSA","n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ","e":"AQAB"});
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
        let key = PublicJwk::from_json_external(&jwk).unwrap();
        let set = JwkSet { keys: vec![key.clone()] };
        let unverified = Unverified::parse(token, false).unwrap();
        unverified.verify(&set).unwrap();
        assert_eq!(key.to_json()["kty"], "RSA");
        // The same key is no client key and no DPoP key.
        assert!(PublicJwk::from_json(&jwk).is_err());
        // RS256 only: a header claiming PS256 or HS256 never reaches it.
        assert!(key.verify("PS256", b"x", &[0; 256]).is_err());
        assert!(key.verify("HS256", b"x", &[0; 256]).is_err());
        // Short moduli and other algs are refused.
        let short = json!({"kty":"RSA","n":"AQAB","e":"AQAB"});
        assert!(PublicJwk::from_json_external(&short).is_err());
        let mut rs384 = jwk.clone();
        rs384["alg"] = json!("RS384");
        assert!(PublicJwk::from_json_external(&rs384).is_err());
        // Mandate never signs with RS256.
        assert!(SigningKey::generate(KeyAlg::RS256).is_err());
    }

    #[test]
    fn a_trusted_set_skips_keys_it_cannot_use() {
        let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let set = json!({"keys": [
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "enc"},
            {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "p384"},
            {"kty": "oct", "k": "c2VjcmV0"},
            key.public().to_json(),
        ]});
        let parsed = JwkSet::from_json_external(&set).unwrap();
        assert_eq!(parsed.keys.len(), 1);
        assert!(parsed.has_kid(key.kid()));
        assert!(JwkSet::from_json_external(&json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})).is_err());
        assert!(
            JwkSet::from_json_external(&json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "short"}]})).is_err()
        );
        let twice = json!({"keys": [key.public().to_json(), key.public().to_json()]});
        assert!(JwkSet::from_json_external(&twice).is_err());
    }
}
