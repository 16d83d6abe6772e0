//! Bounded memories of the receiver: the access tokens revoked by
//! `session-revoked` events, and the SETs already accepted.
//!
//! Each entry is kept until a time after which it can no longer matter,
//! and the number of entries is capped. A full memory refuses new entries
//! (the SET is then answered "try again later" and stays with the
//! transmitter) rather than forgetting live ones.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Full,
}

/// Keys with an expiry and a value, bounded.
#[derive(Debug)]
pub(crate) struct Expiring<V> {
    capacity: usize,
    entries: HashMap<String, (i64, V)>,
    by_expiry: BTreeSet<(i64, String)>,
}

impl<V> Expiring<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity, entries: HashMap::new(), by_expiry: BTreeSet::new() }
    }

    fn forget_expired(&mut self, now: i64) {
        while let Some(first) = self.by_expiry.first()
            && first.0 <= now
        {
            if let Some((_, k)) = self.by_expiry.pop_first() {
                self.entries.remove(&k);
            }
        }
    }

    /// The value under `key`, unless it expired.
    pub(crate) fn get(&self, key: &str, now: i64) -> Option<&V> {
        self.entries.get(key).filter(|(until, _)| now < *until).map(|(_, v)| v)
    }

    /// Remembers `key` until `until` (or longer, if it was already
    /// remembered longer), with `value` if it is new.
    pub(crate) fn insert(&mut self, key: &str, until: i64, value: V, now: i64) -> Result<(), Full> {
        self.forget_expired(now);
        if let Some((old, _)) = self.entries.get(key).map(|(u, v)| (*u, v)) {
            if old < until {
                self.by_expiry.remove(&(old, key.to_owned()));
                self.by_expiry.insert((until, key.to_owned()));
                if let Some(e) = self.entries.get_mut(key) {
                    e.0 = until;
                }
            }
            return Ok(());
        }
        if self.entries.len() >= self.capacity {
            return Err(Full::Full);
        }
        self.entries.insert(key.to_owned(), (until, value));
        self.by_expiry.insert((until, key.to_owned()));
        Ok(())
    }

    /// Keeps `key`, if remembered, at least until `until`.
    pub(crate) fn extend(&mut self, key: &str, until: i64) {
        let Some(old) = self.entries.get(key).map(|(u, _)| *u) else { return };
        if old < until {
            self.by_expiry.remove(&(old, key.to_owned()));
            self.by_expiry.insert((until, key.to_owned()));
            if let Some(e) = self.entries.get_mut(key) {
                e.0 = until;
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &str) {
        if let Some((until, _)) = self.entries.remove(key) {
            self.by_expiry.remove(&(until, key.to_owned()));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_until_their_time_and_no_longer() {
        let mut m = Expiring::new(10);
        assert_eq!(m.insert("a", 100, 1, 0), Ok(()));
        assert_eq!(m.get("a", 99), Some(&1));
        assert_eq!(m.get("a", 100), None);
        m.extend("a", 200);
        assert_eq!(m.get("a", 150), Some(&1));
        // Extending never shortens.
        m.extend("a", 120);
        assert_eq!(m.get("a", 150), Some(&1));
        // An insert of a known key keeps its value and the later time.
        assert_eq!(m.insert("a", 50, 2, 10), Ok(()));
        assert_eq!(m.get("a", 150), Some(&1));
        assert_eq!(m.insert("b", 300, 3, 250), Ok(()));
        assert_eq!(m.len(), 1, "a expired at 200 and was dropped");
    }

    #[test]
    fn a_full_memory_refuses_instead_of_forgetting() {
        let mut m = Expiring::new(2);
        assert_eq!(m.insert("a", 100, (), 0), Ok(()));
        assert_eq!(m.insert("b", 150, (), 0), Ok(()));
        assert_eq!(m.insert("c", 200, (), 10), Err(Full::Full));
        assert!(m.get("a", 10).is_some() && m.get("b", 10).is_some());
        assert_eq!(m.insert("a", 120, (), 10), Ok(()), "a known key is no new entry");
        assert_eq!(m.insert("c", 200, (), 120), Ok(()), "room once one expired");
    }
}
