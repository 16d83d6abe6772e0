//! Token Status List (draft-ietf-oauth-status-list): a signed JWT of type
//! `statuslist+jwt` whose `status_list.lst` is the ZLIB-compressed,
//! base64url-encoded bit array of the tokens' statuses, one bit each
//! (0 valid, 1 invalid), least significant bit first.

use std::io::{Read, Write};

use base64::Engine;
use flate2::Compression;
use serde::{Deserialize, Serialize};

use crate::jws::{Unverified, typ_is};
use crate::{JoseError, JwkSet, SigningKey, b64, jws};

pub const STATUSLIST_TYP: &str = "statuslist+jwt";
pub const STATUSLIST_MEDIA_TYPE: &str = "application/statuslist+jwt";
/// The largest decompressed list a verifier accepts (a ZLIB bomb stops here).
pub const MAX_LIST_BYTES: usize = 16 << 20;

/// A list of one-bit statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusBits {
    bytes: Vec<u8>,
}

impl StatusBits {
    /// `size` valid statuses.
    pub fn new(size: usize) -> Self {
        Self { bytes: vec![0; size.div_ceil(8)] }
    }

    /// A list of `size` statuses with the given indexes invalid; indexes
    /// beyond `size` are ignored.
    pub fn with_invalid(size: usize, invalid: impl IntoIterator<Item = usize>) -> Self {
        let mut list = Self::new(size);
        // Not the padding up to a whole byte either: that is beyond `size`.
        for i in invalid.into_iter().filter(|i| *i < size) {
            list.set_invalid(i);
        }
        list
    }

    /// Marks `idx` invalid; false when it lies beyond the list.
    pub fn set_invalid(&mut self, idx: usize) -> bool {
        match self.bytes.get_mut(idx / 8) {
            Some(b) => {
                *b |= 1 << (idx % 8);
                true
            }
            None => false,
        }
    }

    /// Whether `idx` is invalid; `None` beyond the list.
    pub fn is_invalid(&self, idx: u64) -> Option<bool> {
        let i = usize::try_from(idx).ok()?;
        self.bytes.get(i / 8).map(|b| b & (1 << (i % 8)) != 0)
    }

    /// How many statuses the list holds.
    pub fn len(&self) -> usize {
        self.bytes.len() * 8
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `lst`: ZLIB-compressed and base64url-encoded. Small lists are
    /// compressed hardest; large ones at a fast level, so that a list of a
    /// million statuses is rebuilt in a few milliseconds (BENCHMARKS.md).
    /// A compression failure is an error: an empty `lst` would read as
    /// "every token valid".
    pub fn encode(&self) -> Result<String, JoseError> {
        let level = if self.bytes.len() <= 16 * 1024 { Compression::best() } else { Compression::fast() };
        let mut z = flate2::write::ZlibEncoder::new(Vec::with_capacity(self.bytes.len() / 8 + 64), level);
        let compressed = z.write_all(&self.bytes).and_then(|()| z.finish()).map_err(|_| JoseError::Crypto)?;
        Ok(b64().encode(compressed))
    }

    /// Decodes `lst`, refusing lists that inflate beyond [`MAX_LIST_BYTES`].
    pub fn decode(lst: &str) -> Result<Self, JoseError> {
        let compressed = b64().decode(lst).map_err(|_| JoseError::Claims("lst is not base64url".into()))?;
        let mut out = Vec::new();
        let limit = u64::try_from(MAX_LIST_BYTES).unwrap_or(u64::MAX) + 1;
        flate2::read::ZlibDecoder::new(compressed.as_slice())
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|_| JoseError::Claims("lst is not ZLIB data".into()))?;
        if out.len() > MAX_LIST_BYTES {
            return Err(JoseError::Claims("status list too large".into()));
        }
        Ok(Self { bytes: out })
    }
}

/// `status_list` of a status list token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedList {
    pub bits: u8,
    pub lst: String,
}

/// The claims of a status list token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusListClaims {
    /// The list's URI: what referenced tokens name in `status.status_list.uri`.
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    /// Seconds a relying party may cache the list.
    pub ttl: i64,
    pub status_list: EncodedList,
}

/// Signs a status list token.
pub fn mint(key: &SigningKey, claims: &StatusListClaims) -> Result<String, JoseError> {
    jws::sign(key, STATUSLIST_TYP, claims)
}

/// Verifies a status list token fetched from `uri`: type, key (by `kid`,
/// among `keys` only), `sub` = `uri`, `exp`; returns the claims and the
/// decoded list.
pub fn verify(token: &str, keys: &JwkSet, uri: &str, now: i64) -> Result<(StatusListClaims, StatusBits), JoseError> {
    let unverified = Unverified::parse(token, false)?;
    if !typ_is(unverified.header.typ.as_deref(), STATUSLIST_TYP) {
        return Err(JoseError::WrongType(unverified.header.typ.clone().unwrap_or_default()));
    }
    let kid = unverified.header.kid.as_deref().ok_or(JoseError::UnknownKey)?;
    let key = keys.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).ok_or(JoseError::UnknownKey)?;
    unverified.verify_with(key)?;
    let claims: StatusListClaims = unverified.claims()?;
    if claims.sub != uri {
        return Err(JoseError::Claims("the list's sub is not the URI it was fetched from".into()));
    }
    if claims.exp <= now {
        return Err(JoseError::Expired);
    }
    if claims.status_list.bits != 1 {
        return Err(JoseError::Claims("only 1-bit status lists are read".into()));
    }
    let list = StatusBits::decode(&claims.status_list.lst)?;
    Ok((claims, list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyAlg;

    #[test]
    fn draft_example_decodes() {
        // draft-ietf-oauth-status-list §4.1: 16 one-bit statuses.
        let list = StatusBits::decode("eNrbuRgAAhcBXQ").unwrap();
        assert_eq!(list.as_bytes(), &[0xb9, 0xa3]);
        let built = StatusBits::with_invalid(16, [0, 3, 4, 5, 7, 8, 9, 13, 15]);
        assert_eq!(built, list);
        assert_eq!(StatusBits::decode(&built.encode().unwrap()).unwrap(), built);
        assert_eq!(list.is_invalid(1), Some(false));
        assert_eq!(list.is_invalid(15), Some(true));
        assert_eq!(list.is_invalid(16), None);
    }

    #[test]
    fn signed_round_trip_and_refusals() {
        let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let keys = JwkSet { keys: vec![key.public().clone()] };
        let list = StatusBits::with_invalid(1 << 20, [7, 999_999]);
        let claims = StatusListClaims {
            sub: "https://as.example/statuslists/0".into(),
            iat: 100,
            exp: 200,
            ttl: 30,
            status_list: EncodedList { bits: 1, lst: list.encode().unwrap() },
        };
        let token = mint(&key, &claims).unwrap();
        let (got, bits) = verify(&token, &keys, "https://as.example/statuslists/0", 150).unwrap();
        assert_eq!(got, claims);
        assert_eq!(bits.is_invalid(999_999), Some(true));
        assert_eq!(bits.is_invalid(8), Some(false));
        assert!(verify(&token, &keys, "https://as.example/statuslists/1", 150).is_err());
        assert_eq!(verify(&token, &keys, "https://as.example/statuslists/0", 200), Err(JoseError::Expired));
        let at = jws::sign(&key, "at+jwt", &claims).unwrap();
        assert!(matches!(verify(&at, &keys, "https://as.example/statuslists/0", 150), Err(JoseError::WrongType(_))));
    }

    #[test]
    fn indexes_beyond_the_size_are_ignored_padding_included() {
        // Found by the statuslist fuzz target: index 3 of a 3-status list
        // lies in the padding of its one byte, and was set.
        let list = StatusBits::with_invalid(3, [0, 3, 7, 8]);
        assert_eq!(list.as_bytes(), &[0b0000_0001]);
        assert_eq!(list.is_invalid(3), Some(false));
        assert_eq!(list.is_invalid(8), None);
    }

    #[test]
    fn zlib_bombs_are_refused() {
        let huge = StatusBits::new((MAX_LIST_BYTES + 1) * 8);
        assert!(StatusBits::decode(&huge.encode().unwrap()).is_err());
    }
}
