//! DPoP (RFC 9449) at the token endpoint: the proof binds what is issued to
//! the caller's key. Replays are refused through the store, so every node
//! sees every proof; nonces, when configured, are sealed with the
//! deployment's key-encryption key, so every node accepts every node's.

use base64::Engine;
use mandate_jose::dpop::{self, ProofRules};
use time::OffsetDateTime;

use crate::Error;
use crate::service::Mandate;
use crate::store::Mutation;

/// A nonce lives for one window and the next.
const NONCE_WINDOW: i64 = 60;
const NONCE_CONTEXT: &[u8] = b"mandate/dpop-nonce/v1";

/// A verified proof at the token endpoint.
#[derive(Debug, Clone)]
pub struct TokenProof {
    /// The key thumbprint the issued tokens are bound to (`cnf.jkt`).
    pub jkt: String,
    /// Burns the proof's `jti` in the same change as what it obtains.
    pub(crate) burn: Mutation,
}

impl Mandate {
    /// Checks the `DPoP` header of a token request, if any.
    pub(crate) fn token_proof(&self, proof: Option<&str>) -> Result<Option<TokenProof>, Error> {
        let Some(proof) = proof else { return Ok(None) };
        if !proof.is_ascii() {
            return Err(Error::InvalidDpopProof("the DPoP header is not ASCII".into()));
        }
        let now = self.clock.now().unix_timestamp();
        let htu = self.config.token_endpoint();
        let rules = ProofRules {
            htm: "POST",
            htu: &htu,
            now,
            max_age: self.config.dpop_max_age,
            max_skew: self.config.dpop_max_skew,
            access_token: None,
        };
        let verified = dpop::verify_proof(proof, &rules).map_err(|e| Error::InvalidDpopProof(e.to_string()))?;
        if self.config.dpop_nonces && !verified.nonce.as_deref().is_some_and(|n| self.nonce_is_current(n, now)) {
            // A nonce that cannot be sealed fails the request: never an empty one.
            let nonce =
                self.dpop_nonce().ok_or_else(|| Error::Unavailable("a DPoP nonce could not be sealed".into()))?;
            return Err(Error::UseDpopNonce { nonce });
        }
        // Kept until the proof would be too old to accept anyway.
        let until = verified.iat.max(now) + self.config.dpop_max_age + self.config.dpop_max_skew + 1;
        let expires_at = OffsetDateTime::from_unix_timestamp(until)
            .map_err(|_| Error::InvalidDpopProof("iat out of range".into()))?;
        Ok(Some(TokenProof {
            jkt: verified.jkt,
            burn: Mutation::ConsumeDpopJti { key: verified.replay_key, expires_at },
        }))
    }

    /// RFC 9449 §7 at Mandate's own API: a DPoP-bound token must come with
    /// a proof by its key for this request (`ath` included), burned once;
    /// a bound token under `Bearer`, or an unbound one under `DPoP`, is
    /// refused. `Err` says why.
    pub(crate) async fn sender_constrained(
        &self,
        token: &str,
        cnf: Option<&mandate_model::claims::Confirmation>,
        proof: Option<&str>,
        path: &str,
    ) -> Result<(), String> {
        let (cnf, proof) = match (cnf, proof) {
            (None, None) => return Ok(()),
            (Some(_), None) => return Err("a DPoP-bound token was presented as a bearer token".into()),
            (None, Some(_)) => return Err("the token is not DPoP-bound; present it as a bearer token".into()),
            (Some(c), Some(p)) => (c, p),
        };
        let now = self.clock.now().unix_timestamp();
        let htu = format!("{}{path}", self.config.issuer);
        let rules = ProofRules {
            htm: "POST",
            htu: &htu,
            now,
            max_age: self.config.dpop_max_age,
            max_skew: self.config.dpop_max_skew,
            access_token: Some(token),
        };
        let verified = dpop::verify_proof(proof, &rules).map_err(|e| e.to_string())?;
        if self.config.dpop_nonces && !verified.nonce.as_deref().is_some_and(|n| self.nonce_is_current(n, now)) {
            return Err("the DPoP proof must carry the server's current nonce".into());
        }
        if !mandate_jose::ct_eq(verified.jkt.as_bytes(), cnf.jkt.as_bytes()) {
            return Err("the DPoP proof is signed by another key than the token's cnf.jkt".into());
        }
        let until = verified.iat.max(now) + self.config.dpop_max_age + self.config.dpop_max_skew + 1;
        let expires_at = OffsetDateTime::from_unix_timestamp(until).map_err(|_| "iat out of range".to_owned())?;
        let burn = crate::store::Change::new().with(Mutation::ConsumeDpopJti { key: verified.replay_key, expires_at });
        match self.store.commit(burn).await {
            Ok(_) => Ok(()),
            Err(crate::store::StoreError::DpopReplay) => Err("the DPoP proof was already used".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A fresh server nonce when nonces are required (for the `DPoP-Nonce`
    /// header), `None` otherwise.
    pub fn dpop_nonce(&self) -> Option<String> {
        if !self.config.dpop_nonces {
            return None;
        }
        let window = self.clock.now().unix_timestamp().div_euclid(NONCE_WINDOW);
        let sealed = self.kek.seal(NONCE_CONTEXT, &window.to_be_bytes()).ok()?;
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
    }

    pub(crate) fn nonce_is_current(&self, nonce: &str, now: i64) -> bool {
        let Ok(sealed) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(nonce) else { return false };
        let Ok(plain) = self.kek.open(NONCE_CONTEXT, &sealed) else { return false };
        let Ok(bytes) = <[u8; 8]>::try_from(plain.as_slice()) else { return false };
        let window = i64::from_be_bytes(bytes);
        let current = now.div_euclid(NONCE_WINDOW);
        window == current || window == current - 1
    }
}
