//! DPoP proofs (RFC 9449): checked the same way at the token endpoint and at
//! resource servers. What this module cannot know (whether the `jti` was
//! seen before, whether a server nonce is current) it returns to the caller.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::jws::{Unverified, typ_is};
use crate::{JoseError, PublicJwk, SigningKey, b64, sha256_b64};

pub const DPOP_TYP: &str = "dpop+jwt";
/// The algorithms a proof may use; all asymmetric (RFC 9449 §4.2).
pub const DPOP_ALGS: &[&str] = &["EdDSA", "Ed25519", "ES256"];
/// Longest `jti` accepted: a replay store must not be made to hold megabytes.
pub const MAX_JTI_LEN: usize = 128;
/// Longest `nonce` accepted.
pub const MAX_NONCE_LEN: usize = 256;

/// Why a proof was refused. Every variant is `invalid_dpop_proof` at the
/// token endpoint and `invalid_token`/`invalid_dpop_proof` at a resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error("DPoP proof: {0}")]
    Jose(#[from] JoseError),
    #[error("DPoP proof: typ must be dpop+jwt")]
    Type,
    #[error("DPoP proof: alg {0:?} is not allowed (asymmetric EdDSA, Ed25519 or ES256 only)")]
    Algorithm(String),
    #[error("DPoP proof: the header must carry the public jwk")]
    MissingJwk,
    #[error("DPoP proof: {0}")]
    Claim(String),
    #[error("DPoP proof: htm does not match the request method")]
    Method,
    #[error("DPoP proof: htu does not match the request URL")]
    Url,
    #[error("DPoP proof: iat is outside the accepted window")]
    Stale,
    #[error("DPoP proof: ath is required with an access token")]
    MissingAth,
    #[error("DPoP proof: ath does not match the access token")]
    Ath,
}

/// What a proof must match.
#[derive(Debug, Clone)]
pub struct ProofRules<'a> {
    /// The request method.
    pub htm: &'a str,
    /// The URL the request was sent to (normalised before comparing).
    pub htu: &'a str,
    pub now: i64,
    /// How old `iat` may be, in seconds.
    pub max_age: i64,
    /// How far ahead of `now` `iat` may be (clock skew), in seconds.
    pub max_skew: i64,
    /// At a resource server: the access token the proof must be bound to
    /// through `ath`.
    pub access_token: Option<&'a str>,
}

/// A proof whose signature, type, method, URL, age and `ath` check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// RFC 7638 thumbprint of the proof key: what `cnf.jkt` binds.
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
    pub nonce: Option<String>,
    /// The key under which this proof's `jti` must be remembered: built from
    /// the key, the normalised method and URL, and the `jti`, so variants
    /// of case or query never make a replay look new.
    pub replay_key: String,
}

#[derive(Deserialize)]
struct Claims {
    jti: String,
    htm: String,
    htu: String,
    iat: i64,
    #[serde(default)]
    ath: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

/// Verifies a DPoP proof JWT against `rules`.
pub fn verify_proof(proof: &str, rules: &ProofRules<'_>) -> Result<VerifiedProof, DpopError> {
    let unverified = Unverified::parse(proof, true)?;
    let header = &unverified.header;
    if header.typ.as_deref().is_none_or(|t| !typ_is(Some(t), DPOP_TYP)) {
        return Err(DpopError::Type);
    }
    if !DPOP_ALGS.contains(&header.alg.as_str()) {
        return Err(DpopError::Algorithm(header.alg.chars().take(32).collect()));
    }
    let jwk = header.jwk.as_ref().ok_or(DpopError::MissingJwk)?;
    let key = PublicJwk::from_json(jwk)?;
    unverified.verify_with(&key)?;
    let claims: Claims = unverified.claims().map_err(|e| DpopError::Claim(e.to_string()))?;
    if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_LEN {
        return Err(DpopError::Claim(format!("jti must be 1 to {MAX_JTI_LEN} characters")));
    }
    if claims.nonce.as_ref().is_some_and(|n| n.is_empty() || n.len() > MAX_NONCE_LEN) {
        return Err(DpopError::Claim("nonce is too long".into()));
    }
    if !claims.htm.eq_ignore_ascii_case(rules.htm) || claims.htm != claims.htm.to_ascii_uppercase() {
        return Err(DpopError::Method);
    }
    let htu = normalize_htu(&claims.htu).ok_or(DpopError::Url)?;
    if Some(&htu) != normalize_htu(rules.htu).as_ref() {
        return Err(DpopError::Url);
    }
    if claims.iat < rules.now - rules.max_age || claims.iat > rules.now + rules.max_skew {
        return Err(DpopError::Stale);
    }
    if let Some(token) = rules.access_token {
        let ath = claims.ath.as_deref().ok_or(DpopError::MissingAth)?;
        if !crate::ct_eq(ath.as_bytes(), access_token_hash(token).as_bytes()) {
            return Err(DpopError::Ath);
        }
    }
    let jkt = key.thumbprint();
    let replay_key = sha256_b64(format!("{jkt}\n{}\n{htu}\n{}", claims.htm, claims.jti).as_bytes());
    Ok(VerifiedProof { jkt, jti: claims.jti, iat: claims.iat, nonce: claims.nonce, replay_key })
}

/// `ath`: base64url(SHA-256(access token)).
pub fn access_token_hash(access_token: &str) -> String {
    sha256_b64(access_token.as_bytes())
}

/// RFC 9449 §4.3: `htu` is compared without query and fragment, after
/// RFC 3986 §6.2.2/§6.2.3 normalisation: the `url` crate's parse (scheme
/// and host lowercased, the default port dropped, an empty path made `/`,
/// dot segments resolved), then percent-encodings of unreserved characters
/// decoded and the others uppercased. `None` for anything that is not an
/// absolute http(s) URL with a host and no user info.
pub fn normalize_htu(raw: &str) -> Option<String> {
    let mut url = url::Url::parse(raw).ok()?;
    if !matches!(url.scheme(), "https" | "http")
        || url.host_str().is_none_or(str::is_empty)
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    let path = normalize_percent_encoding(url.path());
    url.set_path(&path);
    Some(url.into())
}

/// Percent-encodings of unreserved characters decoded (RFC 3986
/// §6.2.2.2), the others uppercased (§6.2.2.1). A `%` that does not start
/// a percent-encoding (the `url` crate lets one through) is itself encoded
/// as `%25`: left alone, it could meet the digits that a decoding puts
/// after it and become a new encoding (`%%32%65` would give `%2e`), so
/// that normalising twice would not give the same URL.
fn normalize_percent_encoding(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let (Some(h), Some(l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && h.is_ascii_hexdigit()
            && l.is_ascii_hexdigit()
        {
            let byte = (hex(*h) << 4) | hex(*l);
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                out.push(char::from(byte));
            } else {
                out.push('%');
                out.push(char::from(h.to_ascii_uppercase()));
                out.push(char::from(l.to_ascii_uppercase()));
            }
            i += 3;
            continue;
        }
        if b == b'%' {
            out.push_str("%25");
        } else {
            out.push(char::from(b));
        }
        i += 1;
    }
    out
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

/// What a client puts in a proof.
#[derive(Debug, Clone, Serialize)]
pub struct ProofClaims<'a> {
    pub jti: &'a str,
    pub htm: &'a str,
    pub htu: &'a str,
    pub iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ath: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<&'a str>,
}

/// Signs a proof with `key`, its public half in the header (for clients,
/// the SDK's tests and `mandate demo`).
pub fn sign_proof(key: &SigningKey, claims: &ProofClaims<'_>) -> Result<String, JoseError> {
    let mut jwk = key.public().to_json();
    if let Some(obj) = jwk.as_object_mut() {
        for member in ["kid", "alg", "use"] {
            obj.remove(member);
        }
    }
    let mut header = Map::new();
    header.insert("typ".into(), Value::from(DPOP_TYP));
    header.insert("alg".into(), Value::from(key.alg().name()));
    header.insert("jwk".into(), jwk);
    sign_raw(key, &Value::Object(header), claims)
}

/// Signs `payload` under an arbitrary header: for proofs and for tests that
/// need a malformed one.
pub fn sign_raw<T: Serialize>(key: &SigningKey, header: &Value, payload: &T) -> Result<String, JoseError> {
    let header = serde_json::to_vec(header).map_err(|_| JoseError::Crypto)?;
    let payload = serde_json::to_vec(payload).map_err(|_| JoseError::Crypto)?;
    let mut out = b64().encode(header);
    out.push('.');
    b64().encode_string(payload, &mut out);
    let signature = key.sign(out.as_bytes())?;
    out.push('.');
    b64().encode_string(signature, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyAlg;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const HTU: &str = "https://as.example/oauth/token";

    fn rules() -> ProofRules<'static> {
        ProofRules { htm: "POST", htu: HTU, now: NOW, max_age: 60, max_skew: 5, access_token: None }
    }

    fn proof(key: &SigningKey, htm: &str, htu: &str, iat: i64) -> String {
        sign_proof(key, &ProofClaims { jti: "j1", htm, htu, iat, ath: None, nonce: None }).unwrap()
    }

    #[test]
    fn eddsa_and_es256_proofs_bind_their_key() {
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256] {
            let key = SigningKey::generate(alg).unwrap();
            let p = verify_proof(&proof(&key, "POST", HTU, NOW), &rules()).unwrap();
            assert_eq!(p.jkt, key.public().thumbprint());
            assert_eq!(p.jti, "j1");
        }
    }

    #[test]
    fn htu_is_normalised_and_query_ignored() {
        let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let a = verify_proof(&proof(&key, "POST", "HTTPS://AS.example:443/oauth/token?x=1", NOW), &rules()).unwrap();
        let b = verify_proof(&proof(&key, "POST", HTU, NOW), &rules()).unwrap();
        assert_eq!(a.replay_key, b.replay_key, "variants share one replay key");
        assert_eq!(normalize_htu("http://h"), Some("http://h/".into()));
        assert_eq!(normalize_htu("http://h:8080/a%7e%2f"), Some("http://h:8080/a~%2F".into()));
        assert_eq!(normalize_htu("ftp://h/"), None);
        assert_eq!(normalize_htu("https://user@h/"), None);
        assert_eq!(normalize_htu("https://h/a/./b/../c#f"), Some("https://h/a/c".into()));
        assert_eq!(normalize_htu("https://H.example:8443"), Some("https://h.example:8443/".into()));
        assert_eq!(normalize_htu("/oauth/token"), None, "a relative URL");
        assert_eq!(normalize_htu("https://"), None, "no host");
    }

    #[test]
    fn htu_normalisation_is_idempotent_with_stray_percent_signs() {
        // Found by the dpop_htu fuzz target: the stray `%` and the decoded
        // `2` and `e` made `%2e` on the first pass, `.` on the second.
        let once = normalize_htu("https://as.example/%%32%65x");
        assert_eq!(once.as_deref(), Some("https://as.example/%252ex"));
        assert_eq!(once.as_deref().and_then(normalize_htu), once);
        assert_eq!(normalize_htu("https://as.example/a%zz%"), Some("https://as.example/a%25zz%25".into()));
        // A stray `%` and its encoding name the same URL.
        assert_eq!(normalize_htu("https://as.example/a%zz"), normalize_htu("https://as.example/a%25zz"));
    }

    #[test]
    fn refusals() {
        let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let r = rules();
        assert_eq!(verify_proof(&proof(&key, "GET", HTU, NOW), &r), Err(DpopError::Method));
        assert_eq!(verify_proof(&proof(&key, "post", HTU, NOW), &r), Err(DpopError::Method));
        assert_eq!(verify_proof(&proof(&key, "POST", "https://as.example/other", NOW), &r), Err(DpopError::Url));
        assert_eq!(verify_proof(&proof(&key, "POST", HTU, NOW - 61), &r), Err(DpopError::Stale));
        assert_eq!(verify_proof(&proof(&key, "POST", HTU, NOW + 6), &r), Err(DpopError::Stale));
        let claims = json!({"jti":"j","htm":"POST","htu":HTU,"iat":NOW});
        let mut pub_jwk = key.public().to_json();
        pub_jwk.as_object_mut().unwrap().remove("kid");
        let header = |h: Value| sign_raw(&key, &h, &claims).unwrap();
        // No jwk.
        assert_eq!(verify_proof(&header(json!({"typ":"dpop+jwt","alg":"EdDSA"})), &r), Err(DpopError::MissingJwk));
        // Wrong typ.
        assert_eq!(verify_proof(&header(json!({"typ":"JWT","alg":"EdDSA","jwk":pub_jwk})), &r), Err(DpopError::Type));
        // Symmetric alg.
        let hs = header(json!({"typ":"dpop+jwt","alg":"HS256","jwk":pub_jwk}));
        assert!(matches!(verify_proof(&hs, &r), Err(DpopError::Algorithm(_))));
        // alg none.
        let none = header(json!({"typ":"dpop+jwt","alg":"none","jwk":pub_jwk}));
        assert!(verify_proof(&none, &r).is_err());
        // A private jwk.
        let mut private = pub_jwk.clone();
        private["d"] = json!("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A");
        let p = header(json!({"typ":"dpop+jwt","alg":"EdDSA","jwk":private}));
        assert!(matches!(verify_proof(&p, &r), Err(DpopError::Jose(JoseError::Key(_)))));
        // Another key's jwk in the header: bad signature.
        let other = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let mut other_jwk = other.public().to_json();
        other_jwk.as_object_mut().unwrap().remove("kid");
        let p = header(json!({"typ":"dpop+jwt","alg":"EdDSA","jwk":other_jwk}));
        assert_eq!(verify_proof(&p, &r), Err(DpopError::Jose(JoseError::BadSignature)));
        // A missing claim, and iat as a string.
        for bad in [json!({"htm":"POST","htu":HTU,"iat":NOW}), json!({"jti":"j","htm":"POST","htu":HTU,"iat":"1"})] {
            let p = sign_raw(&key, &json!({"typ":"dpop+jwt","alg":"EdDSA","jwk":pub_jwk}), &bad).unwrap();
            assert!(matches!(verify_proof(&p, &r), Err(DpopError::Claim(_))), "{bad}");
        }
        // An oversized jti.
        let long = "x".repeat(MAX_JTI_LEN + 1);
        let p = sign_proof(&key, &ProofClaims { jti: &long, htm: "POST", htu: HTU, iat: NOW, ath: None, nonce: None })
            .unwrap();
        assert!(matches!(verify_proof(&p, &r), Err(DpopError::Claim(_))));
    }

    #[test]
    fn ath_binds_the_access_token() {
        let key = SigningKey::generate(KeyAlg::ES256).unwrap();
        let mut r = rules();
        r.htm = "GET";
        r.access_token = Some("the-token");
        let with = |ath: Option<String>| {
            sign_proof(&key, &ProofClaims { jti: "j", htm: "GET", htu: HTU, iat: NOW, ath, nonce: None }).unwrap()
        };
        assert!(verify_proof(&with(Some(access_token_hash("the-token"))), &r).is_ok());
        assert_eq!(verify_proof(&with(None), &r), Err(DpopError::MissingAth));
        assert_eq!(verify_proof(&with(Some(access_token_hash("other"))), &r), Err(DpopError::Ath));
    }
}
