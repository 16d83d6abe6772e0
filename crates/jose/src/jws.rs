//! JWS compact serialization (RFC 7515) with RFC 8725's rules.

use base64::Engine;
use serde::Serialize;
use serde_json::Value;

use crate::{JoseError, JwkSet, SigningKey, b64};

/// Largest token accepted, before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The header members Mandate reads. Members that point at keys (`jku`,
/// `x5u`, `x5c`, `jwk` outside DPoP) or demand processing (`crit`, `b64`,
/// `zip`, `enc`) are refused; other unregistered members are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: String,
    pub typ: Option<String>,
    pub kid: Option<String>,
    /// An embedded public key; only DPoP proofs may carry one.
    pub jwk: Option<Value>,
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub header: Header,
    signing_input: &'a str,
    pub payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> Unverified<'a> {
    /// Splits and decodes `token`. `allow_jwk` is true only for DPoP proofs.
    pub fn parse(token: &'a str, allow_jwk: bool) -> Result<Self, JoseError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JoseError::Malformed("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(JoseError::Malformed("a JWS has three parts"));
        };
        if s.is_empty() {
            return Err(JoseError::Malformed("missing signature"));
        }
        let header_bytes = b64().decode(h).map_err(|_| JoseError::Malformed("header is not base64url"))?;
        let payload = b64().decode(p).map_err(|_| JoseError::Malformed("payload is not base64url"))?;
        let signature = b64().decode(s).map_err(|_| JoseError::Malformed("signature is not base64url"))?;
        let header = parse_header(&header_bytes, allow_jwk)?;
        let signing_input = token.get(..h.len() + 1 + p.len()).ok_or(JoseError::Malformed("bad framing"))?;
        Ok(Self { header, signing_input, payload, signature })
    }

    /// Checks the signature against one of `keys`, chosen by `kid` only
    /// among registered keys; the algorithm must be one the key allows.
    pub fn verify(&self, keys: &JwkSet) -> Result<(), JoseError> {
        let mut any = false;
        for key in keys.candidates(self.header.kid.as_deref()) {
            if !key.alg.accepts(&self.header.alg) {
                continue;
            }
            any = true;
            if key.verify(&self.header.alg, self.signing_input.as_bytes(), &self.signature).is_ok() {
                return Ok(());
            }
        }
        if any { Err(JoseError::BadSignature) } else { Err(JoseError::UnknownKey) }
    }

    /// Verifies with one specific key.
    pub fn verify_with(&self, key: &crate::PublicJwk) -> Result<(), JoseError> {
        key.verify(&self.header.alg, self.signing_input.as_bytes(), &self.signature)
    }

    /// The part the signature covers: the header and payload segments as
    /// received (`BASE64URL(header) '.' BASE64URL(payload)`). Public so that
    /// the fuzz targets can check that an accepted token re-serialises to
    /// itself.
    pub fn signing_input(&self) -> &str {
        self.signing_input
    }

    /// The decoded signature, not yet checked.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// Parses the payload as a JSON object into `T` (strict serde types).
    pub fn claims<T: serde::de::DeserializeOwned>(&self) -> Result<T, JoseError> {
        serde_json::from_slice(&self.payload).map_err(|e| JoseError::Claims(short(&e.to_string())))
    }
}

fn short(s: &str) -> String {
    s.chars().take(160).collect()
}

fn parse_header(bytes: &[u8], allow_jwk: bool) -> Result<Header, JoseError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|_| JoseError::Malformed("header is not JSON"))?;
    let obj = v.as_object().ok_or(JoseError::Malformed("header is not a JSON object"))?;
    let mut header = Header { alg: String::new(), typ: None, kid: None, jwk: None };
    for (name, value) in obj {
        match name.as_str() {
            "alg" => header.alg = value.as_str().ok_or(JoseError::Malformed("alg is not a string"))?.to_owned(),
            "typ" => header.typ = Some(value.as_str().ok_or(JoseError::Malformed("typ is not a string"))?.to_owned()),
            "kid" => {
                let kid = value
                    .as_str()
                    .filter(|k| crate::jwk::valid_kid(k))
                    .ok_or(JoseError::Malformed("kid must be printable ASCII"))?;
                header.kid = Some(kid.to_owned());
            }
            "jwk" if allow_jwk => header.jwk = Some(value.clone()),
            // RFC 8725 §3.10: never follow key references; §3.1: no unknown processing.
            "jwk" => return Err(JoseError::ForbiddenHeader("jwk")),
            "jku" => return Err(JoseError::ForbiddenHeader("jku")),
            "x5u" => return Err(JoseError::ForbiddenHeader("x5u")),
            "x5c" => return Err(JoseError::ForbiddenHeader("x5c")),
            "x5t" | "x5t#S256" | "cty" => {}
            "crit" => return Err(JoseError::ForbiddenHeader("crit")),
            "b64" => return Err(JoseError::ForbiddenHeader("b64")),
            "zip" => return Err(JoseError::ForbiddenHeader("zip")),
            "enc" => return Err(JoseError::ForbiddenHeader("enc")),
            _ => {}
        }
    }
    if header.alg.is_empty() {
        return Err(JoseError::Malformed("missing alg"));
    }
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(JoseError::AlgorithmNotAllowed(header.alg));
    }
    Ok(header)
}

/// Compares a `typ` value with the expected media type, allowing the
/// `application/` prefix to be omitted or present (RFC 7515 §4.1.9).
pub fn typ_is(typ: Option<&str>, expected: &str) -> bool {
    let Some(t) = typ else { return false };
    let t = t.strip_prefix("application/").unwrap_or(t);
    t.eq_ignore_ascii_case(expected)
}

/// Signs `claims` as a compact JWS with `typ`.
pub fn sign<T: Serialize>(key: &SigningKey, typ: &str, claims: &T) -> Result<String, JoseError> {
    // A struct, not a JSON map: its member order is fixed whatever
    // serde_json features other crates switch on (test vectors depend on it).
    #[derive(Serialize)]
    struct OutHeader<'a> {
        alg: &'a str,
        kid: &'a str,
        typ: &'a str,
    }
    let header = OutHeader { alg: key.alg().name(), kid: key.kid(), typ };
    let header = serde_json::to_vec(&header).map_err(|_| JoseError::Crypto)?;
    let payload = serde_json::to_vec(claims).map_err(|_| JoseError::Crypto)?;
    let mut out = String::with_capacity((header.len() + payload.len()) * 4 / 3 + 100);
    b64().encode_string(&header, &mut out);
    out.push('.');
    b64().encode_string(&payload, &mut out);
    let signature = key.sign(out.as_bytes())?;
    out.push('.');
    b64().encode_string(&signature, &mut out);
    Ok(out)
}
