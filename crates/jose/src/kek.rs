//! Wrapping of private keys at rest with a key-encryption key (AES-256-GCM).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::JoseError;

pub const KEK_LEN: usize = 32;

/// The key-encryption key shared by every node of a deployment.
pub struct Kek(LessSafeKey);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, JoseError> {
        if bytes.len() != KEK_LEN {
            return Err(JoseError::Key(format!("the master key must be {KEK_LEN} bytes")));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| JoseError::Crypto)?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// 32 fresh random bytes for a new master key.
    pub fn generate_bytes() -> Result<[u8; KEK_LEN], JoseError> {
        let mut out = [0u8; KEK_LEN];
        SystemRandom::new().fill(&mut out).map_err(|_| JoseError::Crypto)?;
        Ok(out)
    }

    /// `nonce || ciphertext || tag`, bound to `context` (the key id).
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, JoseError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| JoseError::Crypto)?;
        let mut buf = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut buf)
            .map_err(|_| JoseError::Crypto)?;
        let mut out = nonce.to_vec();
        out.extend(buf);
        Ok(out)
    }

    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, JoseError> {
        if sealed.len() < NONCE_LEN {
            return Err(JoseError::Key("wrapped key too short".into()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| JoseError::Crypto)?;
        let mut buf = ct.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(context), &mut buf)
            .map_err(|_| JoseError::Key("cannot unwrap the signing key: wrong master key?".into()))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
        let sealed = kek.seal(b"kid1", b"secret").unwrap();
        assert_eq!(kek.open(b"kid1", &sealed).unwrap(), b"secret");
        assert!(kek.open(b"kid2", &sealed).is_err());
        let mut t = sealed.clone();
        *t.last_mut().unwrap() ^= 1;
        assert!(kek.open(b"kid1", &t).is_err());
        assert!(Kek::from_bytes(&[7u8; 32]).unwrap().open(b"kid1", &sealed).is_ok());
        assert!(Kek::from_bytes(&[8u8; 32]).unwrap().open(b"kid1", &sealed).is_err());
    }
}
