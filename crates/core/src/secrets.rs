//! Bearer secrets: generated from injected randomness, stored only as
//! SHA-256 hashes, compared in constant time.

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ports::{Random, RandomError};

pub const ADMIN_TOKEN_PREFIX: &str = "mnd_admin_";
pub const USER_TOKEN_PREFIX: &str = "mnd_user_";
pub const SCIM_TOKEN_PREFIX: &str = "mnd_scim_";
pub const CLIENT_SECRET_PREFIX: &str = "mnd_secret_";

/// `prefix` followed by 256 random bits, base64url.
pub fn generate(prefix: &str, rng: &dyn Random) -> Result<String, RandomError> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes)?;
    Ok(format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// Hex SHA-256: secrets here carry 256 bits of entropy, so a fast hash is
/// enough to make a leaked database useless for authentication.
pub fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether `presented` hashes to `stored_hash`, in constant time.
pub fn matches(presented: &str, stored_hash: &str) -> bool {
    hash(presented).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::SystemRandom;

    #[test]
    fn generated_secrets_match_only_their_hash() {
        let a = generate(USER_TOKEN_PREFIX, &SystemRandom).unwrap();
        let b = generate(USER_TOKEN_PREFIX, &SystemRandom).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(USER_TOKEN_PREFIX));
        assert!(matches(&a, &hash(&a)));
        assert!(!matches(&b, &hash(&a)));
        assert!(!matches("", &hash(&a)));
    }
}
