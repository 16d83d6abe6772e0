//! Per-node caches bounded by the memory they hold, not only by how many
//! entries they have (issue 19). A count alone let a node at 100,000
//! agents hold about 6 KiB per agent in its caches; a cache of live
//! chains (each with its agents, user and grant) could hold far more.
//!
//! Each value is weighed once, when it is kept ([`Weighed`]); eviction
//! (S3-FIFO, quick_cache) reads that number and never measures again. The
//! weight is an estimate of the heap bytes the entry holds, key and value:
//! a record's JSON length doubled (the capacity slack, map nodes, string
//! headers and allocator rounding JSON does not show), plus the inline
//! size of the key and value. A test holds the estimate to within a
//! factor of the bytes an allocator really hands out for typical records.

use std::hash::Hash;
use std::io;
use std::mem::size_of;

use mandate_model::claims::AccessTokenClaims;
use mandate_model::records::{Agent, Grant, Resource, TokenRecord, User};
use serde::Serialize;

/// What a cache slot costs beyond its key and value: quick_cache's entry
/// state and hash table slot.
const ENTRY_OVERHEAD: usize = 48;

/// The weight given to a value that cannot be measured (a record that does
/// not serialise): large, so that it is among the first evicted.
const UNMEASURED: usize = 64 * 1024;

/// A cached value and the bytes it was estimated to hold when kept.
#[derive(Debug, Clone)]
pub struct Weighed<V> {
    bytes: u32,
    value: V,
}

impl<V> Weighed<V> {
    /// `value` kept under a key whose heap bytes are `key_heap`.
    pub fn new<K>(key_heap: usize, value: V) -> Self
    where
        V: Footprint,
    {
        let bytes = ENTRY_OVERHEAD + size_of::<K>() + size_of::<V>() + key_heap + value.heap_bytes();
        Self { bytes: u32::try_from(bytes).unwrap_or(u32::MAX), value }
    }

    pub fn value(&self) -> &V {
        &self.value
    }

    pub fn into_value(self) -> V {
        self.value
    }

    pub fn bytes(&self) -> u32 {
        self.bytes
    }
}

/// Weighs an entry by the bytes recorded when it was kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByBytes;

impl<K, V> quick_cache::Weighter<K, Weighed<V>> for ByBytes {
    fn weight(&self, _key: &K, val: &Weighed<V>) -> u64 {
        u64::from(val.bytes).max(1)
    }
}

/// A cache holding at most a budget of estimated bytes.
pub type Cache<K, V> = quick_cache::sync::Cache<K, Weighed<V>, ByBytes>;

/// A cache of at most `budget` bytes; `typical` (an entry's usual weight)
/// sizes its table.
pub fn bounded<K: Eq + Hash + Clone, V: Clone>(budget: u64, typical: u64) -> Cache<K, V> {
    let items = usize::try_from(budget / typical.max(1)).unwrap_or(usize::MAX).max(16);
    quick_cache::sync::Cache::with_weighter(items, budget, ByBytes)
}

/// One cache's fill, for the `mandate_cache_*` gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheFill {
    pub name: &'static str,
    pub entries: u64,
    pub bytes: u64,
    pub budget: u64,
}

impl CacheFill {
    pub fn of<K: Eq + Hash + Clone, V: Clone>(name: &'static str, cache: &Cache<K, V>) -> Self {
        Self { name, entries: cache.len() as u64, bytes: cache.weight(), budget: cache.capacity() }
    }
}

/// The heap bytes a value owns (not its inline size), estimated.
pub trait Footprint {
    fn heap_bytes(&self) -> usize;
}

/// A record's heap bytes estimated from its JSON form (see the module
/// documentation).
pub fn json_heap<T: Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => 2 * c.0,
        Err(_) => UNMEASURED,
    }
}

fn str_heap(s: &str) -> usize {
    s.len()
}

fn strings_heap<S: AsRef<str>>(v: &[S]) -> usize {
    std::mem::size_of_val(v) + v.iter().map(|s| s.as_ref().len()).sum::<usize>()
}

impl Footprint for String {
    fn heap_bytes(&self) -> usize {
        str_heap(self)
    }
}

impl Footprint for u64 {
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl<T: Footprint> Footprint for Option<T> {
    fn heap_bytes(&self) -> usize {
        self.as_ref().map_or(0, T::heap_bytes)
    }
}

impl<T: Footprint> Footprint for Vec<T> {
    fn heap_bytes(&self) -> usize {
        self.capacity() * size_of::<T>() + self.iter().map(T::heap_bytes).sum::<usize>()
    }
}

impl<T: Footprint> Footprint for std::sync::Arc<T> {
    /// The shared value counted in full: the cache may hold its only
    /// reference.
    fn heap_bytes(&self) -> usize {
        size_of::<T>() + 16 + T::heap_bytes(self)
    }
}

impl Footprint for time::OffsetDateTime {
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl<A: Footprint, B: Footprint> Footprint for (A, B) {
    fn heap_bytes(&self) -> usize {
        self.0.heap_bytes() + self.1.heap_bytes()
    }
}

macro_rules! by_json {
    ($($t:ty),*) => {$(
        impl Footprint for $t {
            fn heap_bytes(&self) -> usize {
                json_heap(self)
            }
        }
    )*};
}

by_json!(User, Resource, Grant, AccessTokenClaims);

/// What a JSON value holds beyond its text: a B-tree node per eleven
/// members of an object (about 630 bytes: eleven `String` keys and
/// `Value`s), and a `Value` slot per array element.
pub fn value_nodes(v: &serde_json::Value) -> usize {
    const NODE: usize = 632;
    match v {
        serde_json::Value::Array(a) => {
            a.capacity() * size_of::<serde_json::Value>() + a.iter().map(value_nodes).sum::<usize>()
        }
        serde_json::Value::Object(o) => o.len().div_ceil(11) * NODE + o.values().map(value_nodes).sum::<usize>(),
        _ => 0,
    }
}

impl Footprint for Agent {
    /// Its JSON, plus the nodes of its key set: a key is a JSON object of
    /// its own (about 1 KiB held for 200 bytes of text).
    fn heap_bytes(&self) -> usize {
        json_heap(self) + self.jwks.as_ref().map_or(0, value_nodes)
    }
}

impl Footprint for [u8; 32] {
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl Footprint for mandate_jose::JwkSet {
    /// Each parsed key holds its `kid`, its public bytes and the crypto
    /// library's key object: about 650 bytes, as heaptrack counted them.
    fn heap_bytes(&self) -> usize {
        self.keys.capacity() * size_of::<mandate_jose::jwk::PublicJwk>() + self.keys.len() * 650
    }
}

impl Footprint for TokenRecord {
    fn heap_bytes(&self) -> usize {
        str_heap(&self.subject)
            + str_heap(&self.audience)
            + json_heap(&self.scopes)
            + self.chain.capacity() * size_of::<mandate_model::AgentId>()
            + self.cnf_jkt.as_deref().map_or(0, str_heap)
            + self.family.as_deref().map_or(0, str_heap)
    }
}

impl Footprint for mandate_policy::Decision {
    fn heap_bytes(&self) -> usize {
        let approver = match &self.approval {
            Some(mandate_policy::Approver::Group { name, .. }) => name.len(),
            _ => 0,
        };
        // A `@may_act` is a small set of actor names (rare on issuance).
        strings_heap(&self.reasons) + strings_heap(&self.errors) + approver + self.may_act.len() * 512
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone)]
    struct Blob(Vec<u8>);

    impl Footprint for Blob {
        fn heap_bytes(&self) -> usize {
            self.0.capacity()
        }
    }

    #[test]
    fn a_cache_holds_its_byte_budget_however_large_its_entries() {
        let cache: Cache<u32, Blob> = bounded(1_000_000, 1_000);
        for i in 0..10_000u32 {
            cache.insert(i, Weighed::new::<u32>(0, Blob(vec![0; 10_000])));
        }
        // 10,000 entries of about 10 KB: a cache bounded by count (at
        // 1,000, its typical size) would hold 10 MB.
        assert!(cache.weight() <= 1_000_000, "{} bytes held", cache.weight());
        assert!(cache.len() >= 50, "only {} entries kept", cache.len());
        assert!(cache.len() <= 100, "{} entries kept", cache.len());
        let recent = (9_900..10_000).filter(|i| cache.get(i).is_some()).count();
        assert!(recent >= 50, "only {recent} of the last 100 kept");
    }

    #[test]
    fn small_entries_are_kept_by_the_thousand() {
        let cache: Cache<u32, Blob> = bounded(1_000_000, 1_000);
        for i in 0..5_000u32 {
            cache.insert(i, Weighed::new::<u32>(0, Blob(vec![0; 10])));
        }
        assert_eq!(cache.len(), 5_000);
    }

    #[test]
    fn json_heap_grows_with_the_record() {
        let small = json_heap(&serde_json::json!({"a": "b"}));
        let large = json_heap(&serde_json::json!({"a": "b".repeat(1_000)}));
        assert!(large >= small + 1_900, "{small} then {large}");
    }
}
