//! Access tokens in the RFC 9068 profile (`typ: at+jwt`).

use mandate_model::claims::{AccessTokenClaims, MAX_ACT_DEPTH};

use crate::jws::{Unverified, typ_is};
use crate::{JoseError, JwkSet, SigningKey, jws};

pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Signs access-token claims with `typ: at+jwt` and the key's `kid`.
pub fn mint(key: &SigningKey, claims: &AccessTokenClaims) -> Result<String, JoseError> {
    jws::sign(key, ACCESS_TOKEN_TYP, claims)
}

/// Verifies Mandate access tokens against the published keys.
#[derive(Debug, Clone)]
pub struct AccessTokenVerifier {
    pub issuer: String,
    pub keys: JwkSet,
    pub leeway: i64,
}

impl AccessTokenVerifier {
    /// Verifies signature, type, issuer, lifetime and (when given) audience.
    /// The key is found by `kid` among `keys` only; a token without a `kid`
    /// is refused.
    pub fn verify(&self, token: &str, now: i64, audience: Option<&str>) -> Result<AccessTokenClaims, JoseError> {
        let unverified = Unverified::parse(token, false)?;
        if !typ_is(unverified.header.typ.as_deref(), ACCESS_TOKEN_TYP) {
            return Err(JoseError::WrongType(unverified.header.typ.clone().unwrap_or_default()));
        }
        let kid = unverified.header.kid.as_deref().ok_or(JoseError::UnknownKey)?;
        let key = self.keys.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).ok_or(JoseError::UnknownKey)?;
        unverified.verify_with(key)?;
        let claims: AccessTokenClaims = unverified.claims()?;
        if claims.iss != self.issuer {
            return Err(JoseError::Issuer);
        }
        if let Some(aud) = audience
            && claims.aud != aud
        {
            return Err(JoseError::Audience);
        }
        if claims.exp <= now {
            return Err(JoseError::Expired);
        }
        if claims.nbf > now + self.leeway || claims.iat > now + self.leeway {
            return Err(JoseError::NotYetValid);
        }
        if claims.act.as_ref().is_some_and(|a| a.depth() > MAX_ACT_DEPTH) {
            return Err(JoseError::Claims("delegation chain too deep".into()));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyAlg;

    fn claims(now: i64) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: "https://mandate.example".into(),
            sub: "agt_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
            aud: "https://api.example".into(),
            exp: now + 300,
            iat: now,
            nbf: now,
            jti: "tok_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
            client_id: "agt_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
            scope: "read".into(),
            act: None,
            may_act: None,
            authorization_details: None,
            grant_id: None,
            purpose: None,
            cnf: None,
            status: None,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let now = 1_800_000_000;
        let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let v = AccessTokenVerifier {
            issuer: "https://mandate.example".into(),
            keys: JwkSet { keys: vec![key.public().clone()] },
            leeway: 60,
        };
        let token = mint(&key, &claims(now)).unwrap();
        assert_eq!(v.verify(&token, now, Some("https://api.example")).unwrap(), claims(now));
        assert_eq!(v.verify(&token, now, Some("https://other.example")), Err(JoseError::Audience));
        assert_eq!(v.verify(&token, now + 300, None), Err(JoseError::Expired));
        // A client assertion signed by the same key is not an access token.
        let other_typ = jws::sign(&key, "JWT", &claims(now)).unwrap();
        assert!(matches!(v.verify(&other_typ, now, None), Err(JoseError::WrongType(_))));
        // Another issuer's token.
        let mut foreign = claims(now);
        foreign.iss = "https://evil.example".into();
        assert_eq!(v.verify(&mint(&key, &foreign).unwrap(), now, None), Err(JoseError::Issuer));
        // A rotated-out key.
        let old = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        assert_eq!(v.verify(&mint(&old, &claims(now)).unwrap(), now, None), Err(JoseError::UnknownKey));
    }

    #[test]
    fn deep_act_nesting_is_refused_by_the_parser() {
        let now = 1_800_000_000;
        let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let v = AccessTokenVerifier {
            issuer: "https://mandate.example".into(),
            keys: JwkSet { keys: vec![key.public().clone()] },
            leeway: 60,
        };
        let mut act = String::from("{\"sub\":\"x\"}");
        for _ in 0..10_000 {
            act = format!("{{\"sub\":\"x\",\"act\":{act}}}");
        }
        let mut c = serde_json::to_value(claims(now)).unwrap();
        c["act"] = serde_json::Value::Null;
        let text = c.to_string().replace("\"act\":null", &format!("\"act\":{act}"));
        let raw: serde_json::Value = serde_json::from_str("{}").unwrap();
        let _ = raw;
        let token = {
            use base64::Engine;
            let h = crate::b64().encode(format!("{{\"alg\":\"EdDSA\",\"typ\":\"at+jwt\",\"kid\":\"{}\"}}", key.kid()));
            let p = crate::b64().encode(text);
            let input = format!("{h}.{p}");
            let sig = key.sign(input.as_bytes()).unwrap();
            format!("{input}.{}", crate::b64().encode(sig))
        };
        assert!(v.verify(&token, now, None).is_err());
    }
}
