//! Fuzz targets for every parser of untrusted input, on the stable
//! toolchain, as ordinary tests (`tests/fuzz/`).
//!
//! cargo-fuzz and cargo-afl need a nightly compiler or their own build of
//! the crates; these targets need neither. Each target is a [`Target`]:
//! a `#[test]` replays every file of its committed corpus
//! (`corpus/<target>/`), then runs random inputs from proptest (bytes,
//! strings, grammar-shaped inputs and mutations of the corpus seeds) until
//! its time budget runs out. The budget is `MANDATE_FUZZ_SECS` seconds per
//! target (default 0.3, so that `cargo test` stays fast; CI gives more).
//!
//! A target checks a property, not only the absence of panics: a parser
//! answers `Ok` or a typed error, an encoding round-trips, a normalisation
//! is idempotent. A panic inside the code under test is caught by proptest
//! and fails the target like a broken property, with the smallest input
//! proptest could shrink it to and the seed that reproduces the run
//! (`MANDATE_FUZZ_SEED`).
//!
//! A corpus file whose name starts with `accept-` must be accepted by its
//! target, one that starts with `refuse-` must be refused; others may go
//! either way.

use std::cell::Cell;
use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

/// The environment variable that sets each target's budget, in seconds.
pub const SECS_VAR: &str = "MANDATE_FUZZ_SECS";
/// The environment variable that fixes the first proptest seed.
pub const SEED_VAR: &str = "MANDATE_FUZZ_SEED";
/// The budget per target when [`SECS_VAR`] is not set.
pub const DEFAULT_SECS: f64 = 0.3;
/// Cases per proptest run; the budget is checked between runs.
const CASES_PER_RUN: u32 = 32;

/// What the code under test made of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Refused,
}

/// One fuzz target.
pub trait Target {
    /// The corpus directory's name, under `corpus/`.
    const NAME: &'static str;
    /// What the target feeds the code under test.
    type Input: Clone + Debug + 'static;

    /// A corpus file as an input; `Err` for a file that is not a seed of
    /// this target.
    fn from_seed(bytes: &[u8]) -> Result<Self::Input, String>;

    /// Random inputs, given the corpus seeds to mutate (never empty).
    fn strategy(seeds: Vec<Self::Input>) -> BoxedStrategy<Self::Input>;

    /// Runs the code under test on `input` and checks the target's
    /// properties; `Err` when one does not hold.
    fn check(input: &Self::Input) -> Result<Verdict, TestCaseError>;
}

/// What a target did in its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub seeds: usize,
    pub cases: u64,
    /// How many of the random cases the code under test accepted (shrinking
    /// runs included).
    pub accepted: u64,
    pub elapsed: Duration,
}

/// The budget per target, from [`SECS_VAR`].
pub fn budget() -> Result<Duration, String> {
    match std::env::var(SECS_VAR) {
        Err(_) => Ok(Duration::from_secs_f64(DEFAULT_SECS)),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("{SECS_VAR}={v:?} is not a number of seconds")),
    }
}

/// The directory of `target`'s corpus.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

/// Every file of `target`'s corpus, by name, in name order.
pub fn corpus(target: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        if !entry.file_type().map_err(|e| e.to_string())?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(entry.path()).map_err(|e| format!("{name}: {e}"))?;
        files.push((name, bytes));
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("{} holds no seeds", dir.display()));
    }
    Ok(files)
}

/// Replays `T`'s corpus, then fuzzes it for [`budget`].
pub fn run<T: Target>() -> Result<Report, String> {
    let started = Instant::now();
    let files = corpus(T::NAME)?;
    let mut seeds = Vec::with_capacity(files.len());
    for (name, bytes) in &files {
        let input = T::from_seed(bytes).map_err(|e| format!("{}/{name}: {e}", T::NAME))?;
        let verdict = catch_unwind(AssertUnwindSafe(|| T::check(&input)))
            .map_err(|p| format!("{}/{name}: panicked: {}", T::NAME, panic_text(p.as_ref())))?
            .map_err(|e| format!("{}/{name}: {e}", T::NAME))?;
        let expected = if name.starts_with("accept-") {
            Some(Verdict::Accepted)
        } else if name.starts_with("refuse-") {
            Some(Verdict::Refused)
        } else {
            None
        };
        if expected.is_some_and(|e| e != verdict) {
            return Err(format!("{}/{name}: {verdict:?}, its name says otherwise", T::NAME));
        }
        seeds.push(input);
    }
    let strategy = T::strategy(seeds);
    let deadline = Instant::now() + budget()?;
    let mut seed = first_seed()?;
    let mut cases = 0u64;
    let accepted = Cell::new(0u64);
    // At least one run, however small the budget.
    loop {
        let mut config = Config::with_cases(CASES_PER_RUN);
        config.rng_seed = RngSeed::Fixed(seed);
        config.failure_persistence = None;
        config.max_shrink_time = 30_000;
        let mut runner = TestRunner::new(config);
        let check = |input: T::Input| {
            if T::check(&input)? == Verdict::Accepted {
                accepted.set(accepted.get() + 1);
            }
            Ok(())
        };
        runner.run(&strategy, check).map_err(|e| format!("{}: {e}\nreproduce with {SEED_VAR}={seed}", T::NAME))?;
        cases += u64::from(CASES_PER_RUN);
        seed = next_seed(seed);
        if Instant::now() >= deadline {
            break;
        }
    }
    let report = Report { seeds: files.len(), cases, accepted: accepted.get(), elapsed: started.elapsed() };
    eprintln!(
        "fuzz {}: {} seeds, then {} cases ({} accepted) in {:.1?}",
        T::NAME,
        report.seeds,
        report.cases,
        report.accepted,
        report.elapsed
    );
    Ok(report)
}

fn first_seed() -> Result<u64, String> {
    match std::env::var(SEED_VAR) {
        Ok(v) => v.trim().parse().map_err(|_| format!("{SEED_VAR}={v:?} is not a u64")),
        // Wall-clock time only picks where the search starts; a failure
        // prints the seed that reproduces it.
        Err(_) => Ok(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)),
    }
}

/// SplitMix64: the seed of the next run.
fn next_seed(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned())
}

/// One byte-level edit of a seed, as fuzzers make them.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit {
        at: Index,
        bit: u8,
    },
    SetByte {
        at: Index,
        byte: u8,
    },
    Insert {
        at: Index,
        byte: u8,
    },
    /// Inserts one of the target's tokens (`dictionary`).
    InsertToken {
        at: Index,
        token: Index,
    },
    Delete {
        at: Index,
        len: u8,
    },
    /// Copies a run of bytes to another place.
    Duplicate {
        from: Index,
        len: u8,
        to: Index,
    },
    Truncate {
        at: Index,
    },
    /// Replaces the tail with the tail of another seed.
    Splice {
        at: Index,
        other: Index,
        from: Index,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(at, token)| Mutation::InsertToken { at, token }),
        1 => (any::<Index>(), 1u8..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (any::<Index>(), 1u8..32, any::<Index>()).prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<Index>(), any::<Index>(), any::<Index>()).prop_map(|(at, other, from)| Mutation::Splice {
            at,
            other,
            from
        }),
    ]
}

/// A position in `0..=len`.
fn position(i: &Index, len: usize) -> usize {
    i.index(len + 1)
}

/// Applies `edits` to `seed`; `seeds` (for splicing) and `dictionary` may
/// be empty.
pub fn apply(seed: &[u8], edits: &[Mutation], seeds: &[Vec<u8>], dictionary: &[&str]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for edit in edits {
        match edit {
            Mutation::FlipBit { at, bit } => {
                if !out.is_empty() {
                    let i = at.index(out.len());
                    if let Some(b) = out.get_mut(i) {
                        *b ^= 1 << (bit % 8);
                    }
                }
            }
            Mutation::SetByte { at, byte } => {
                if !out.is_empty() {
                    let i = at.index(out.len());
                    if let Some(b) = out.get_mut(i) {
                        *b = *byte;
                    }
                }
            }
            Mutation::Insert { at, byte } => {
                let i = position(at, out.len());
                out.insert(i, *byte);
            }
            Mutation::InsertToken { at, token } => {
                if !dictionary.is_empty() {
                    let t = dictionary.get(token.index(dictionary.len())).copied().unwrap_or_default();
                    let i = position(at, out.len());
                    out.splice(i..i, t.bytes());
                }
            }
            Mutation::Delete { at, len } => {
                let i = position(at, out.len());
                let end = (i + usize::from(*len)).min(out.len());
                out.drain(i..end);
            }
            Mutation::Duplicate { from, len, to } => {
                let i = position(from, out.len());
                let end = (i + usize::from(*len)).min(out.len());
                let run: Vec<u8> = out.get(i..end).map(<[u8]>::to_vec).unwrap_or_default();
                let j = position(to, out.len());
                out.splice(j..j, run);
            }
            Mutation::Truncate { at } => {
                let i = position(at, out.len());
                out.truncate(i);
            }
            Mutation::Splice { at, other, from } => {
                if !seeds.is_empty() {
                    let o = seeds.get(other.index(seeds.len())).map(Vec::as_slice).unwrap_or_default();
                    let i = position(at, out.len());
                    let f = position(from, o.len());
                    out.truncate(i);
                    out.extend_from_slice(o.get(f..).unwrap_or_default());
                }
            }
        }
    }
    out
}

/// Byte-level mutations of the seeds: one to six edits of one seed,
/// splicing from the others and inserting `dictionary` tokens.
pub fn mutated_bytes(seeds: Vec<Vec<u8>>, dictionary: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    if seeds.is_empty() {
        return proptest::collection::vec(any::<u8>(), 0..64).boxed();
    }
    let pick = seeds.clone();
    (any::<Index>(), proptest::collection::vec(mutation(), 1..6))
        .prop_map(move |(which, edits)| {
            let seed = pick.get(which.index(pick.len())).map(Vec::as_slice).unwrap_or_default();
            apply(seed, &edits, &pick, dictionary)
        })
        .boxed()
}

/// Like [`mutated_bytes`], as text (invalid UTF-8 replaced), for parsers
/// that take `&str`.
pub fn mutated_text(seeds: Vec<String>, dictionary: &'static [&'static str]) -> BoxedStrategy<String> {
    mutated_bytes(seeds.into_iter().map(String::into_bytes).collect(), dictionary)
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
        .boxed()
}

/// Fails the case with `msg` unless `cond`.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if cond { Ok(()) } else { Err(TestCaseError::fail(msg())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_stay_in_bounds() {
        let mut runner = TestRunner::deterministic();
        let strategy = (proptest::collection::vec(any::<u8>(), 0..8), proptest::collection::vec(mutation(), 0..10));
        runner
            .run(&strategy, |(seed, edits)| {
                let out = apply(&seed, &edits, &[b"abc".to_vec(), vec![]], &["tok"]);
                prop_assert!(out.len() <= seed.len() + 10 * 32 + 3 * 10);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn the_seed_sequence_moves() {
        assert_ne!(next_seed(1), next_seed(2));
        assert_ne!(next_seed(1), 1);
    }
}
