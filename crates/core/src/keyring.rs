//! The signing keys in use: one active key signs, and every key whose
//! tokens may still be alive stays published and accepted.

use std::sync::Arc;

use mandate_jose::access::AccessTokenVerifier;
use mandate_jose::kek::Kek;
use mandate_jose::{JwkSet, KeyAlg, SigningKey};
use time::{Duration, OffsetDateTime};

use crate::Error;
use crate::store::{KeyUse, StoredKey};

pub(crate) struct KeyRing {
    pub active: Arc<SigningKey>,
    pub verifier: AccessTokenVerifier,
    /// The kids loaded, newest first, to notice changes made by other nodes.
    pub kids: Vec<String>,
}

impl KeyRing {
    /// Builds the ring from stored keys. A retired key stays published for
    /// `grace` after retirement (the longest a token it signed can live).
    pub fn from_stored(
        stored: &[StoredKey],
        kek: &Kek,
        issuer: &str,
        leeway: i64,
        now: OffsetDateTime,
        grace: Duration,
    ) -> Result<Option<Self>, Error> {
        let mut sorted: Vec<&StoredKey> = stored.iter().filter(|k| k.purpose == KeyUse::Token).collect();
        sorted.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.kid.cmp(&a.kid)));
        let mut active = None;
        let mut published = Vec::new();
        let mut kids = Vec::new();
        for k in sorted {
            kids.push(k.kid.clone());
            let live = match k.retired_at {
                None => true,
                Some(at) => at + grace > now,
            };
            if !live {
                continue;
            }
            let key = unwrap_key(k, kek)?;
            published.push(key.public().clone());
            if k.retired_at.is_none() && active.is_none() {
                active = Some(Arc::new(key));
            }
        }
        Ok(active.map(|active| KeyRing {
            active,
            verifier: AccessTokenVerifier { issuer: issuer.to_owned(), keys: JwkSet { keys: published }, leeway },
            kids,
        }))
    }

    /// Wraps a fresh key for storage.
    pub fn wrap(key: &SigningKey, purpose: KeyUse, kek: &Kek, now: OffsetDateTime) -> Result<StoredKey, Error> {
        let wrapped = kek.seal(key.kid().as_bytes(), key.pkcs8()).map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(StoredKey {
            kid: key.kid().to_owned(),
            alg: key.alg().name().to_owned(),
            purpose,
            wrapped_private: wrapped,
            public_jwk: Some(key.public().to_json().to_string()),
            created_at: now,
            retired_at: None,
        })
    }
}

/// Opens a stored key with the master key and checks it is the one named.
pub(crate) fn unwrap_key(k: &StoredKey, kek: &Kek) -> Result<SigningKey, Error> {
    let alg = KeyAlg::parse(&k.alg).map_err(|e| Error::Unavailable(format!("stored key {}: {e}", k.kid)))?;
    let der = kek.open(k.kid.as_bytes(), &k.wrapped_private).map_err(|e| Error::Unavailable(e.to_string()))?;
    let key = SigningKey::from_pkcs8(alg, &der).map_err(|e| Error::Unavailable(e.to_string()))?;
    if key.kid() != k.kid {
        return Err(Error::Unavailable(format!("stored key {} does not match its kid", k.kid)));
    }
    Ok(key)
}
