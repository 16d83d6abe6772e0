//! Mandate's own signing keys.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use serde::{Deserialize, Serialize};

use crate::{JoseError, PublicJwk};

/// The signature algorithms Mandate uses and accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlg {
    /// Ed25519. Tokens name it `EdDSA` (RFC 8037) or `Ed25519` (RFC 9864).
    EdDSA,
    /// ECDSA on P-256 with SHA-256, fixed-size `r || s` signatures.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048 to 8192 bits. Verify only, and
    /// only for keys a trusted issuer publishes (workload identity, ID-JAG):
    /// Mandate never signs with it, and clients cannot register it.
    RS256,
}

impl KeyAlg {
    /// The `alg` Mandate writes.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlg::EdDSA => "EdDSA",
            KeyAlg::ES256 => "ES256",
            KeyAlg::RS256 => "RS256",
        }
    }

    /// Whether a header `alg` may be verified with a key of this type.
    pub fn accepts(self, alg: &str) -> bool {
        match self {
            KeyAlg::EdDSA => alg == "EdDSA" || alg == "Ed25519",
            KeyAlg::ES256 => alg == "ES256",
            KeyAlg::RS256 => alg == "RS256",
        }
    }

    /// A signing algorithm by name: `RS256` is not one.
    pub fn parse(name: &str) -> Result<Self, JoseError> {
        match name {
            "EdDSA" | "Ed25519" => Ok(KeyAlg::EdDSA),
            "ES256" => Ok(KeyAlg::ES256),
            other => Err(JoseError::AlgorithmNotAllowed(other.to_owned())),
        }
    }
}

enum Pair {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
    /// Only for Security Event Tokens, under `--ssf-signing-alg RS256`
    /// (the CAEP interoperability profile): see [`SigningKey::generate_set_rsa`].
    Rsa(RsaKeyPair),
}

/// A private signing key with its public half. The key pair is parsed once
/// and reused for every signature.
pub struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    pair: Pair,
    public: PublicJwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("alg", &self.public.alg).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from the system's secure random source.
    pub fn generate(alg: KeyAlg) -> Result<Self, JoseError> {
        let rng = SystemRandom::new();
        let doc = match alg {
            KeyAlg::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| JoseError::Crypto)?,
            KeyAlg::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| JoseError::Crypto)?
            }
            KeyAlg::RS256 => return Err(JoseError::AlgorithmNotAllowed("RS256".into())),
        };
        Self::from_pkcs8(alg, doc.as_ref())
    }

    /// Loads a PKCS#8 key; its `kid` is its RFC 7638 thumbprint.
    pub fn from_pkcs8(alg: KeyAlg, der: &[u8]) -> Result<Self, JoseError> {
        let bad = |_| JoseError::Key("PKCS#8 key rejected".into());
        let (pair, public_bytes) = match alg {
            KeyAlg::EdDSA => {
                let p = Ed25519KeyPair::from_pkcs8(der).map_err(bad)?;
                let public = p.public_key().as_ref().to_vec();
                (Pair::Ed(p), public)
            }
            KeyAlg::ES256 => {
                let p = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(bad)?;
                let public = p.public_key().as_ref().to_vec();
                (Pair::Ec(p), public)
            }
            KeyAlg::RS256 => return Err(JoseError::AlgorithmNotAllowed("RS256".into())),
        };
        let anonymous = PublicJwk::from_public_bytes(alg, &public_bytes, None)?;
        let kid = anonymous.thumbprint();
        let public = PublicJwk::from_public_bytes(alg, &public_bytes, Some(kid.clone()))?;
        Ok(Self { kid, pkcs8: der.to_vec(), pair, public })
    }

    /// Loads a private key as a key file holds it: PKCS#8 as DER (what
    /// `mandate keys client-keygen` writes) or PEM (`-----BEGIN PRIVATE
    /// KEY-----`, its base64 wrapped or on one line), Ed25519 or P-256. The
    /// file is the operator's; the error is a sentence for them.
    pub fn from_key_file(bytes: &[u8]) -> Result<Self, String> {
        let der = if bytes.starts_with(b"-----BEGIN") { pem_pkcs8(bytes)? } else { bytes.to_vec() };
        Self::from_pkcs8(KeyAlg::EdDSA, &der)
            .or_else(|_| Self::from_pkcs8(KeyAlg::ES256, &der))
            .map_err(|_| "not an unencrypted PKCS#8 Ed25519 or P-256 key".to_owned())
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> KeyAlg {
        self.public.alg
    }

    /// A fresh RSA 2048 key for signing Security Event Tokens with RS256
    /// (RFC 8417; the CAEP interoperability profile requires RS256). It is
    /// never a token key: [`SigningKey::generate`] and
    /// [`SigningKey::from_pkcs8`] still refuse RS256, and [`KeyAlg::parse`]
    /// does not name it, so no access token can be signed with it.
    pub fn generate_set_rsa() -> Result<Self, JoseError> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| JoseError::Crypto)?;
        let der = pair.as_der().map_err(|_| JoseError::Crypto)?;
        Self::from_set_rsa_pkcs8(der.as_ref())
    }

    /// Loads the RSA key of [`SigningKey::generate_set_rsa`] from PKCS#8.
    pub fn from_set_rsa_pkcs8(der: &[u8]) -> Result<Self, JoseError> {
        let pair = RsaKeyPair::from_pkcs8(der).map_err(|_| JoseError::Key("PKCS#8 RSA key rejected".into()))?;
        let components = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let anonymous = PublicJwk::from_rsa(components.n.clone(), components.e.clone(), None)?;
        let kid = anonymous.thumbprint();
        let public = PublicJwk::from_rsa(components.n, components.e, Some(kid.clone()))?;
        Ok(Self { kid, pkcs8: der.to_vec(), pair: Pair::Rsa(pair), public })
    }

    /// The private key, PKCS#8 DER. Only for wrapping before storage.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn public(&self) -> &PublicJwk {
        &self.public
    }

    /// Raw signature over `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, JoseError> {
        match &self.pair {
            Pair::Ed(p) => Ok(p.sign(message).as_ref().to_vec()),
            Pair::Ec(p) => {
                p.sign(&SystemRandom::new(), message).map(|s| s.as_ref().to_vec()).map_err(|_| JoseError::Crypto)
            }
            Pair::Rsa(p) => {
                let mut sig = vec![0u8; p.public_modulus_len()];
                p.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig).map_err(|_| JoseError::Crypto)?;
                Ok(sig)
            }
        }
    }
}

/// The DER inside a `-----BEGIN PRIVATE KEY-----` block. Lenient about
/// line length (some tools write the base64 on one line), strict about
/// the label: an SEC 1 or PKCS#1 block is refused with how to convert it.
fn pem_pkcs8(pem: &[u8]) -> Result<Vec<u8>, String> {
    use base64::Engine;
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let text = std::str::from_utf8(pem).map_err(|_| "the PEM file is not text".to_owned())?;
    let start = text.find(BEGIN).ok_or_else(|| {
        "expected a PKCS#8 block (-----BEGIN PRIVATE KEY-----); convert with `openssl pkcs8 -topk8 -nocrypt`".to_owned()
    })?;
    let body = text.get(start + BEGIN.len()..).unwrap_or_default();
    let end = body.find(END).ok_or_else(|| "the PEM block has no END line".to_owned())?;
    let b64: String = body.get(..end).unwrap_or_default().chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| "the PEM block is not base64".to_owned())
}
