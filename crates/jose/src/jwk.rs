//! Public JWKs (RFC 7517), parsed strictly: clients register only Ed25519
//! (`OKP`) and P-256 (`EC`) public keys, no private parts. The key sets of
//! trusted issuers (workload identity, ID-JAG) may also hold RSA keys
//! (RS256, 2048 to 8192 bits), which Mandate only verifies with.

use std::sync::Arc;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
};
use base64::Engine;
use serde_json::{Map, Value, json};

use crate::{JoseError, KeyAlg, b64, sha256_b64};

pub const MAX_KEYS: usize = 10;
/// Most keys kept from a trusted issuer's key set.
pub const MAX_EXTERNAL_KEYS: usize = 32;
const MAX_KID_LEN: usize = 128;
/// RSA moduli Mandate verifies with, in bytes (2048 to 8192 bits).
const RSA_MODULUS_BYTES: std::ops::RangeInclusive<usize> = 256..=1024;
/// Longest RSA public exponent accepted, in bytes.
const RSA_MAX_EXPONENT_BYTES: usize = 4;

/// A registered public key, ready to verify.
#[derive(Clone)]
pub struct PublicJwk {
    pub alg: KeyAlg,
    pub kid: Option<String>,
    /// x (and y) coordinates as published; for RSA, `n` and `e`.
    x: Vec<u8>,
    y: Option<Vec<u8>>,
    parsed: Arc<ParsedPublicKey>,
}

impl std::fmt::Debug for PublicJwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicJwk").field("alg", &self.alg).field("kid", &self.kid).finish()
    }
}

impl PublicJwk {
    /// From raw public key bytes (32-byte Ed25519 key, or a 65-byte
    /// uncompressed P-256 point).
    pub fn from_public_bytes(alg: KeyAlg, bytes: &[u8], kid: Option<String>) -> Result<Self, JoseError> {
        let (x, y) = match alg {
            KeyAlg::EdDSA => {
                if bytes.len() != 32 {
                    return Err(JoseError::Key("an Ed25519 key has 32 bytes".into()));
                }
                (bytes.to_vec(), None)
            }
            KeyAlg::ES256 => match bytes {
                [0x04, rest @ ..] if rest.len() == 64 => {
                    let (x, y) = rest.split_at(32);
                    (x.to_vec(), Some(y.to_vec()))
                }
                _ => {
                    return Err(JoseError::Key("a P-256 key is an uncompressed 65-byte point".into()));
                }
            },
            KeyAlg::RS256 => return Err(JoseError::Key("an RSA key is read from its JWK".into())),
        };
        let parsed = match alg {
            KeyAlg::EdDSA => ParsedPublicKey::new(&ED25519, bytes),
            KeyAlg::ES256 => ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, bytes),
            KeyAlg::RS256 => return Err(JoseError::Key("an RSA key is read from its JWK".into())),
        }
        .map_err(|_| JoseError::Key("public key rejected".into()))?;
        Ok(Self { alg, kid, x, y, parsed: Arc::new(parsed) })
    }

    /// An RSA public key from its big-endian modulus and exponent.
    pub(crate) fn from_rsa(n: Vec<u8>, e: Vec<u8>, kid: Option<String>) -> Result<Self, JoseError> {
        if !RSA_MODULUS_BYTES.contains(&n.len()) || n.first().is_none_or(|b| *b == 0) {
            return Err(JoseError::Key("an RSA modulus has 2048 to 8192 bits, without leading zeros".into()));
        }
        if e.is_empty() || e.len() > RSA_MAX_EXPONENT_BYTES || e.first().is_none_or(|b| *b == 0) {
            return Err(JoseError::Key("unusable RSA exponent".into()));
        }
        let parsed = RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }
            .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
            .map_err(|_| JoseError::Key("public key rejected".into()))?;
        Ok(Self { alg: KeyAlg::RS256, kid, x: n, y: Some(e), parsed: Arc::new(parsed) })
    }

    /// Parses one JWK object, refusing anything but a public Ed25519 or
    /// P-256 signing key: what clients register and DPoP proofs carry.
    pub fn from_json(v: &Value) -> Result<Self, JoseError> {
        Self::parse(v, false)
    }

    /// Parses one key of a trusted issuer's set: also RSA (RS256), and a
    /// SPIFFE bundle's `use: "jwt-svid"`.
    pub fn from_json_external(v: &Value) -> Result<Self, JoseError> {
        Self::parse(v, true)
    }

    fn parse(v: &Value, external: bool) -> Result<Self, JoseError> {
        let obj = v.as_object().ok_or_else(|| JoseError::Key("a JWK is a JSON object".into()))?;
        for private in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
            if obj.contains_key(private) {
                return Err(JoseError::Key(format!(
                    "member {private:?} is private key material; register public keys only"
                )));
            }
        }
        if let Some(u) = obj.get("use")
            && u != "sig"
            && !(external && u == "jwt-svid")
        {
            return Err(JoseError::Key("\"use\" must be \"sig\"".into()));
        }
        if let Some(ops) = obj.get("key_ops") {
            let ok = ops.as_array().is_some_and(|a| a.iter().all(|o| o == "verify"));
            if !ok {
                return Err(JoseError::Key("\"key_ops\" may only list \"verify\"".into()));
            }
        }
        for url in ["x5u", "jku"] {
            if obj.contains_key(url) {
                return Err(JoseError::Key(format!("member {url:?} is not accepted; register the key itself")));
            }
        }
        let kid = match obj.get("kid") {
            None => None,
            Some(Value::String(k)) if valid_kid(k) => Some(k.clone()),
            Some(_) => {
                return Err(JoseError::Key("\"kid\" must be 1-128 printable ASCII characters".into()));
            }
        };
        let text = |name: &str| -> Result<&str, JoseError> {
            obj.get(name).and_then(Value::as_str).ok_or_else(|| JoseError::Key(format!("missing {name:?}")))
        };
        let coord = |name: &str| -> Result<Vec<u8>, JoseError> {
            let s = text(name)?;
            let bytes = b64().decode(s).map_err(|_| JoseError::Key(format!("{name:?} is not base64url")))?;
            if bytes.len() != 32 {
                return Err(JoseError::Key(format!("{name:?} must encode 32 bytes")));
            }
            Ok(bytes)
        };
        if external && text("kty")? == "RSA" {
            let big = |name: &str| -> Result<Vec<u8>, JoseError> {
                b64().decode(text(name)?).map_err(|_| JoseError::Key(format!("{name:?} is not base64url")))
            };
            if let Some(a) = obj.get("alg")
                && a != "RS256"
            {
                return Err(JoseError::Key("an RSA key is accepted for RS256 only".into()));
            }
            return Self::from_rsa(big("n")?, big("e")?, kid);
        }
        let (alg, raw) = match (text("kty")?, text("crv")?) {
            ("OKP", "Ed25519") => (KeyAlg::EdDSA, coord("x")?),
            ("EC", "P-256") => {
                let mut point = vec![0x04];
                point.extend(coord("x")?);
                point.extend(coord("y")?);
                (KeyAlg::ES256, point)
            }
            (kty, crv) => {
                return Err(JoseError::Key(format!("unsupported key type {kty}/{crv}; use OKP/Ed25519 or EC/P-256")));
            }
        };
        if let Some(a) = obj.get("alg") {
            let a = a.as_str().unwrap_or_default();
            if !alg.accepts(a) {
                return Err(JoseError::Key(format!("\"alg\" {a:?} does not fit the key type")));
            }
        }
        Self::from_public_bytes(alg, &raw, kid)
    }

    /// RFC 7638 thumbprint, base64url(SHA-256) of the required members in
    /// lexicographic order.
    pub fn thumbprint(&self) -> String {
        // SAFETY-FALLBACK: `y` is set for every P-256 key by the only
        // constructor (`from_public_bytes`); the default is never taken.
        let canonical = match self.alg {
            KeyAlg::EdDSA => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64().encode(&self.x)),
            KeyAlg::ES256 => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                b64().encode(&self.x),
                b64().encode(self.y.as_deref().unwrap_or_default())
            ),
            // SAFETY-FALLBACK: `from_rsa`, the only constructor, sets `e`.
            KeyAlg::RS256 => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                b64().encode(self.y.as_deref().unwrap_or_default()),
                b64().encode(&self.x)
            ),
        };
        sha256_b64(canonical.as_bytes())
    }

    /// The public JWK as published in a JWKS.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        match self.alg {
            KeyAlg::EdDSA => {
                m.insert("kty".into(), json!("OKP"));
                m.insert("crv".into(), json!("Ed25519"));
                m.insert("x".into(), json!(b64().encode(&self.x)));
            }
            KeyAlg::ES256 => {
                m.insert("kty".into(), json!("EC"));
                m.insert("crv".into(), json!("P-256"));
                m.insert("x".into(), json!(b64().encode(&self.x)));
                m.insert("y".into(), json!(b64().encode(self.y.as_deref().unwrap_or_default())));
            }
            KeyAlg::RS256 => {
                m.insert("kty".into(), json!("RSA"));
                m.insert("n".into(), json!(b64().encode(&self.x)));
                m.insert("e".into(), json!(b64().encode(self.y.as_deref().unwrap_or_default())));
            }
        }
        if let Some(kid) = &self.kid {
            m.insert("kid".into(), json!(kid));
        }
        m.insert("alg".into(), json!(self.alg.name()));
        m.insert("use".into(), json!("sig"));
        Value::Object(m)
    }

    /// Verifies `signature` over `message`, refusing `alg` unless this key allows it.
    pub fn verify(&self, alg: &str, message: &[u8], signature: &[u8]) -> Result<(), JoseError> {
        if !self.alg.accepts(alg) {
            return Err(JoseError::AlgorithmNotAllowed(alg.to_owned()));
        }
        let expected_len = match self.alg {
            KeyAlg::EdDSA => 64,
            KeyAlg::ES256 => 64,
            KeyAlg::RS256 => self.x.len(),
        };
        if signature.len() != expected_len {
            return Err(JoseError::BadSignature);
        }
        self.parsed.verify_sig(message, signature).map_err(|_| JoseError::BadSignature)
    }
}

pub(crate) fn valid_kid(k: &str) -> bool {
    !k.is_empty() && k.len() <= MAX_KID_LEN && k.bytes().all(|b| b.is_ascii_graphic())
}

/// A client's registered key set.
#[derive(Clone, Debug, Default)]
pub struct JwkSet {
    pub keys: Vec<PublicJwk>,
}

impl JwkSet {
    /// Parses `{"keys": [...]}` with 1 to 10 public keys, unique `kid`s.
    pub fn from_json(v: &Value) -> Result<Self, JoseError> {
        let obj = v.as_object().ok_or_else(|| JoseError::Key("a JWK set is a JSON object".into()))?;
        if obj.keys().any(|k| k != "keys") {
            return Err(JoseError::Key("a JWK set has only \"keys\"".into()));
        }
        let keys =
            obj.get("keys").and_then(Value::as_array).ok_or_else(|| JoseError::Key("missing \"keys\" array".into()))?;
        if keys.is_empty() || keys.len() > MAX_KEYS {
            return Err(JoseError::Key(format!("a JWK set has 1 to {MAX_KEYS} keys")));
        }
        let keys = keys.iter().map(PublicJwk::from_json).collect::<Result<Vec<_>, _>>()?;
        let mut kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        kids.sort_unstable();
        if kids.windows(2).any(|w| w.first() == w.get(1)) {
            return Err(JoseError::Key("\"kid\" values must be unique".into()));
        }
        Ok(Self { keys })
    }

    /// Mandate's own published set (`/jwks.json`), as a resource server
    /// reads it to verify access tokens: the RS256 key that signs only
    /// Security Event Tokens (`--ssf-signing-alg RS256`) is skipped, and
    /// every other key is parsed as [`JwkSet::from_json`] does, so that an
    /// access token can never be accepted under RS256.
    pub fn from_issuer_json(v: &Value) -> Result<Self, JoseError> {
        let keys = v
            .as_object()
            .and_then(|o| o.get("keys"))
            .and_then(Value::as_array)
            .ok_or_else(|| JoseError::Key("a JWK set is an object with a \"keys\" array".into()))?;
        let token_keys: Vec<Value> =
            keys.iter().filter(|k| k.get("kty").and_then(Value::as_str) != Some("RSA")).cloned().collect();
        Self::from_json(&json!({ "keys": token_keys }))
    }

    /// A trusted issuer's published key set: the keys Mandate can verify
    /// with (Ed25519, P-256, RSA for RS256), unique `kid`s. Keys of other
    /// types or uses (encryption keys, other curves) are skipped, not
    /// refused, since issuers publish them beside their signing keys; a
    /// malformed key of a usable type refuses the set, and so does a set
    /// with no usable key.
    pub fn from_json_external(v: &Value) -> Result<Self, JoseError> {
        let keys = v
            .as_object()
            .and_then(|o| o.get("keys"))
            .and_then(Value::as_array)
            .ok_or_else(|| JoseError::Key("a JWK set is an object with a \"keys\" array".into()))?;
        let mut usable = Vec::new();
        for key in keys {
            let obj = key.as_object().ok_or_else(|| JoseError::Key("a JWK is a JSON object".into()))?;
            let kty = obj.get("kty").and_then(Value::as_str).unwrap_or_default();
            let crv = obj.get("crv").and_then(Value::as_str).unwrap_or_default();
            let for_signing = obj.get("use").is_none_or(|u| u == "sig" || u == "jwt-svid");
            let known = matches!((kty, crv), ("RSA", _) | ("OKP", "Ed25519") | ("EC", "P-256"));
            let alg_ok =
                obj.get("alg").is_none_or(|a| matches!(a.as_str(), Some("RS256" | "ES256" | "EdDSA" | "Ed25519")));
            if !(for_signing && known && alg_ok) {
                continue;
            }
            if usable.len() == MAX_EXTERNAL_KEYS {
                return Err(JoseError::Key(format!("a trusted key set has at most {MAX_EXTERNAL_KEYS} usable keys")));
            }
            usable.push(PublicJwk::from_json_external(key)?);
        }
        if usable.is_empty() {
            return Err(JoseError::Key("the key set has no usable signing key".into()));
        }
        let mut kids: Vec<&str> = usable.iter().filter_map(|k| k.kid.as_deref()).collect();
        kids.sort_unstable();
        if kids.windows(2).any(|w| w.first() == w.get(1)) {
            return Err(JoseError::Key("\"kid\" values must be unique".into()));
        }
        Ok(Self { keys: usable })
    }

    pub fn to_json(&self) -> Value {
        json!({ "keys": self.keys.iter().map(PublicJwk::to_json).collect::<Vec<_>>() })
    }

    /// Whether a key with this `kid` is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys a token with this header `kid` may be checked against: the
    /// one with that kid, or, when the token names none, every key.
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>) -> impl Iterator<Item = &'a PublicJwk> + 'a {
        self.keys.iter().filter(move |k| kid.is_none() || k.kid.as_deref() == kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8037_thumbprint() {
        // RFC 8037 Appendix A.3.
        let jwk = json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let key = PublicJwk::from_json(&jwk).unwrap();
        assert_eq!(key.thumbprint(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn refuses_private_and_foreign_keys() {
        for bad in [
            json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}),
            json!({"kty":"oct","k":"c2VjcmV0"}),
            json!({"kty":"RSA","n":"AQAB","e":"AQAB"}),
            json!({"kty":"OKP","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
            json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","alg":"HS256"}),
            json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","use":"enc"}),
            json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"../../etc/passwd\u{0}"}),
            json!({"kty":"OKP","crv":"Ed25519","x":"short"}),
        ] {
            assert!(PublicJwk::from_json(&bad).is_err(), "{bad}");
        }
    }
}
