//! OAuth scopes (RFC 6749 §3.3) and sets of them that can only shrink.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ModelError;

/// Longest scope token accepted.
pub const MAX_SCOPE_LEN: usize = 128;
/// Most scopes in one request or grant.
pub const MAX_SCOPES: usize = 64;

/// One scope token: `1*( %x21 / %x23-5B / %x5D-7E )` (RFC 6749 §3.3).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(String);

impl Scope {
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        if s.is_empty() {
            return Err(ModelError::InvalidScope("empty scope".into()));
        }
        if s.len() > MAX_SCOPE_LEN {
            return Err(ModelError::InvalidScope(format!("a scope is longer than {MAX_SCOPE_LEN} bytes")));
        }
        if !s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)) {
            return Err(ModelError::InvalidScope("a scope has a character RFC 6749 §3.3 forbids".into()));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({})", self.0)
    }
}

/// An ordered set of scopes. It has no operation that adds a scope to an
/// existing set: authority only narrows.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses the space-separated `scope` parameter. Repeated or doubled
    /// spaces are refused rather than guessed at.
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        if s.len() > MAX_SCOPES * (MAX_SCOPE_LEN + 1) {
            return Err(ModelError::InvalidScope("scope parameter too long".into()));
        }
        if s.is_empty() {
            return Ok(Self::default());
        }
        Self::from_iter_checked(s.split(' ').map(Scope::parse))
    }

    /// Builds a set from individual tokens, refusing duplicates and overlong sets.
    pub fn from_iter_checked(items: impl IntoIterator<Item = Result<Scope, ModelError>>) -> Result<Self, ModelError> {
        let mut set = BTreeSet::new();
        for item in items {
            let scope = item?;
            if !set.insert(scope.clone()) {
                return Err(ModelError::InvalidScope(format!("scope {scope} is repeated")));
            }
            if set.len() > MAX_SCOPES {
                return Err(ModelError::InvalidScope(format!("more than {MAX_SCOPES} scopes")));
            }
        }
        Ok(Self(set))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.contains(scope)
    }

    pub fn is_subset_of(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The scopes of `self` that `limit` also holds: never more than either.
    pub fn narrow_to(&self, limit: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.intersection(&limit.0).cloned().collect())
    }

    /// The space-separated form used in the `scope` claim.
    pub fn to_claim(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(s.as_str());
        }
        out
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopeSet({})", self.to_claim())
    }
}

impl Serialize for ScopeSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Scope::as_str))
    }
}

impl<'de> Deserialize<'de> for ScopeSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<String>::deserialize(d)?;
        ScopeSet::from_iter_checked(items.iter().map(|s| Scope::parse(s))).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_rfc6749_scopes() {
        let s = ScopeSet::parse("read write:files").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.to_claim(), "read write:files");
        assert!(ScopeSet::parse("read  write").is_err());
        assert!(ScopeSet::parse("read read").is_err());
        assert!(ScopeSet::parse("re\"ad").is_err());
        assert!(ScopeSet::parse("caf\u{e9}").is_err());
        assert!(ScopeSet::parse(&"a".repeat(1_000_000)).is_err());
    }

    fn scope_set() -> impl Strategy<Value = ScopeSet> {
        proptest::collection::btree_set("[a-z:]{1,8}", 0..8)
            .prop_map(|v| ScopeSet::from_iter_checked(v.iter().map(|s| Scope::parse(s))).unwrap())
    }

    proptest! {
        #[test]
        fn narrowing_never_widens(a in scope_set(), b in scope_set()) {
            let n = a.narrow_to(&b);
            prop_assert!(n.is_subset_of(&a));
            prop_assert!(n.is_subset_of(&b));
            prop_assert_eq!(n.narrow_to(&b), n.clone());
        }

        #[test]
        fn claim_round_trips(a in scope_set()) {
            prop_assert_eq!(ScopeSet::parse(&a.to_claim()).unwrap(), a);
        }
    }
}
