//! DPoP proofs seen recently (RFC 9449 §11.1): each is accepted once until
//! it would be refused as stale anyway. The memory is bounded: when it is
//! full of unexpired proofs, new proofs are refused rather than old ones
//! forgotten, which would reopen them to replay.

use std::collections::{BTreeSet, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Replayed,
    Full,
}

#[derive(Debug, Default)]
pub(crate) struct ReplayCache {
    capacity: usize,
    seen: HashSet<String>,
    /// The same keys ordered by expiry, so eviction reads only what expired.
    by_expiry: BTreeSet<(i64, String)>,
}

impl ReplayCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity, ..Self::default() }
    }

    /// Remembers `key` until `expires`, unless it was seen before or the
    /// memory is full.
    pub(crate) fn insert(&mut self, key: &str, expires: i64, now: i64) -> Result<(), Refused> {
        while let Some(first) = self.by_expiry.first()
            && first.0 <= now
        {
            if let Some((_, k)) = self.by_expiry.pop_first() {
                self.seen.remove(&k);
            }
        }
        if self.seen.contains(key) {
            return Err(Refused::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(Refused::Full);
        }
        self.seen.insert(key.to_owned());
        self.by_expiry.insert((expires, key.to_owned()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_is_accepted_once_until_it_expires() {
        let mut c = ReplayCache::new(10);
        assert_eq!(c.insert("a", 100, 0), Ok(()));
        assert_eq!(c.insert("a", 100, 50), Err(Refused::Replayed));
        assert_eq!(c.insert("a", 200, 100), Ok(()), "expired entries are forgotten");
        assert_eq!(c.seen.len(), 1);
        assert_eq!(c.by_expiry.len(), 1);
    }

    #[test]
    fn a_full_memory_refuses_instead_of_forgetting() {
        let mut c = ReplayCache::new(2);
        assert_eq!(c.insert("a", 100, 0), Ok(()));
        assert_eq!(c.insert("b", 150, 0), Ok(()));
        assert_eq!(c.insert("c", 100, 10), Err(Refused::Full));
        assert_eq!(c.insert("a", 100, 10), Err(Refused::Replayed));
        // Once one expires there is room again.
        assert_eq!(c.insert("c", 200, 100), Ok(()));
        assert_eq!(c.insert("d", 200, 100), Err(Refused::Full));
    }
}
