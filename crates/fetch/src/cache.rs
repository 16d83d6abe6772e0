//! What a response says about caching it: `Cache-Control`'s `max-age`,
//! `no-store` and `no-cache` (RFC 9111 §5.2.2), and nothing else
//! (`Expires`, `s-maxage`, `Age` are ignored).

use std::time::Duration;

/// The caching directives of one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age`, if sent. A value that is not a number, or several
    /// `max-age` directives, give zero: RFC 9111 §4.2.1 says to treat such a
    /// response as stale. Values beyond 2³¹ seconds are cut to 2³¹ (§1.2.2).
    pub max_age: Option<Duration>,
    /// `no-store`: the response should not be kept.
    pub no_store: bool,
    /// `no-cache`: the response should not be used again without asking the
    /// server (a field-name list after it is ignored: the whole response
    /// counts as `no-cache`).
    pub no_cache: bool,
}

/// RFC 9111 §1.2.2: delta-seconds too large to represent are 2³¹.
const MAX_DELTA_SECONDS: u64 = 1 << 31;

impl CacheControl {
    /// Parses every `Cache-Control` field value of a response (a response
    /// may send the field several times; they are read as one list).
    /// Unknown directives are ignored; directive names are case-insensitive.
    pub fn parse<'a, I>(values: I) -> Self
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut cache = Self::default();
        let mut max_ages = 0usize;
        for value in values {
            for directive in split_directives(value) {
                let (name, arg) = match directive.split_once('=') {
                    Some((name, arg)) => (name.trim(), Some(unquote(arg.trim()))),
                    None => (directive.trim(), None),
                };
                if name.eq_ignore_ascii_case("max-age") {
                    max_ages += 1;
                    cache.max_age = Some(arg.and_then(delta_seconds).unwrap_or(Duration::ZERO));
                } else if name.eq_ignore_ascii_case("no-store") {
                    cache.no_store = true;
                } else if name.eq_ignore_ascii_case("no-cache") {
                    cache.no_cache = true;
                }
            }
        }
        if max_ages > 1 {
            cache.max_age = Some(Duration::ZERO);
        }
        cache
    }
}

/// Splits a field value at the commas that are not inside a quoted string.
fn split_directives(value: &str) -> impl Iterator<Item = &str> {
    let mut in_quotes = false;
    let mut escaped = false;
    value
        .split(move |c: char| {
            if escaped {
                escaped = false;
                return false;
            }
            match c {
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                ',' if !in_quotes => return true,
                _ => {}
            }
            false
        })
        .map(str::trim)
        .filter(|d| !d.is_empty())
}

fn unquote(arg: &str) -> &str {
    arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')).unwrap_or(arg)
}

/// `delta-seconds = 1*DIGIT`; a longer number than fits is 2³¹.
fn delta_seconds(arg: &str) -> Option<Duration> {
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = arg.parse::<u64>().unwrap_or(MAX_DELTA_SECONDS).min(MAX_DELTA_SECONDS);
    Some(Duration::from_secs(secs))
}

/// How long to keep a document: `max_age` held between `min` and `max`,
/// and `min` when there is none. (Should `min` exceed `max`, `min` wins:
/// the floor protects the servers fetched from.)
///
/// The caller decides what `no-store` and `no-cache` mean for it; Mandate
/// keeps metadata for at least `min` (5 minutes) even then, so that a
/// client cannot make it fetch on every request.
#[must_use]
pub fn clamp_ttl(max_age: Option<Duration>, min: Duration, max: Duration) -> Duration {
    match max_age {
        Some(age) if age > max => max.max(min),
        Some(age) if age > min => age,
        _ => min,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(values: &[&str]) -> CacheControl {
        CacheControl::parse(values.iter().copied())
    }

    const fn secs(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    #[test]
    fn nothing_sent() {
        assert_eq!(cc(&[]), CacheControl::default());
        assert_eq!(cc(&[""]), CacheControl::default());
        assert_eq!(cc(&["public, must-revalidate"]), CacheControl::default());
    }

    #[test]
    fn max_age() {
        assert_eq!(cc(&["max-age=600"]).max_age, secs(600));
        assert_eq!(cc(&["public, max-age=60"]).max_age, secs(60));
        assert_eq!(cc(&["MAX-AGE=60"]).max_age, secs(60));
        assert_eq!(cc(&["max-age=\"60\""]).max_age, secs(60));
        assert_eq!(cc(&[" max-age = 60 "]).max_age, secs(60));
        assert_eq!(cc(&["max-age=0"]).max_age, secs(0));
        assert_eq!(cc(&["max-age=99999999999999999999999"]).max_age, secs(1 << 31));
        assert_eq!(cc(&["max-age=4294967296"]).max_age, secs(1 << 31));
        assert_eq!(cc(&["s-maxage=60"]).max_age, None);
    }

    #[test]
    fn invalid_or_repeated_max_age_is_stale() {
        for bad in ["max-age=-1", "max-age=1.5", "max-age=", "max-age", "max-age=abc", "max-age=+5", "max-age=0x10"] {
            assert_eq!(cc(&[bad]).max_age, secs(0), "{bad}");
        }
        assert_eq!(cc(&["max-age=60, max-age=120"]).max_age, secs(0));
        assert_eq!(cc(&["max-age=60", "max-age=60"]).max_age, secs(0));
    }

    #[test]
    fn no_store_and_no_cache() {
        let c = cc(&["no-store"]);
        assert!(c.no_store && !c.no_cache);
        let c = cc(&["No-Cache, max-age=30"]);
        assert!(c.no_cache && !c.no_store);
        assert_eq!(c.max_age, secs(30));
        let c = cc(&["private", "no-store, no-cache"]);
        assert!(c.no_store && c.no_cache);
        let c = cc(&["no-cache=\"set-cookie\""]);
        assert!(c.no_cache);
        assert!(!cc(&["no-storex, xno-cache"]).no_store);
    }

    #[test]
    fn commas_inside_quotes_do_not_split() {
        let c = cc(&[r#"no-cache="a, max-age=5", max-age=100"#]);
        assert!(c.no_cache);
        assert_eq!(c.max_age, secs(100));
        let c = cc(&[r#"ext="a\", no-store", max-age=7"#]);
        assert!(!c.no_store);
        assert_eq!(c.max_age, secs(7));
    }

    #[test]
    fn clamp() {
        let min = Duration::from_secs(300);
        let max = Duration::from_secs(86_400);
        assert_eq!(clamp_ttl(None, min, max), min);
        assert_eq!(clamp_ttl(secs(0), min, max), min);
        assert_eq!(clamp_ttl(secs(299), min, max), min);
        assert_eq!(clamp_ttl(secs(300), min, max), min);
        assert_eq!(clamp_ttl(secs(3600), min, max), Duration::from_secs(3600));
        assert_eq!(clamp_ttl(secs(86_400), min, max), max);
        assert_eq!(clamp_ttl(secs(1 << 31), min, max), max);
        // A floor above the ceiling: the floor wins, and nothing panics.
        assert_eq!(clamp_ttl(secs(10), max, min), max);
        assert_eq!(clamp_ttl(secs(100_000), max, min), max);
    }
}
