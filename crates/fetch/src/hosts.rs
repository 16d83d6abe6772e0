//! The host allow-list ([`HostPatterns`]).

use std::fmt;
use std::str::FromStr;

/// Why a host pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    /// `*.` followed by `name`.
    wildcard: bool,
    /// Lower case, ASCII (`xn--` for IDNs), no trailing dot.
    name: String,
}

impl HostPattern {
    fn parse(pattern: &str) -> Result<Self, PatternError> {
        let fail = |reason| PatternError { pattern: pattern.to_owned(), reason };
        let trimmed = pattern.trim();
        let (wildcard, rest) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        if rest.contains('*') {
            return Err(fail("`*` may only be the whole leftmost label, as in *.example.com"));
        }
        let rest = rest.strip_suffix('.').unwrap_or(rest);
        if rest.is_empty() {
            return Err(fail("empty host name"));
        }
        let name = match url::Host::parse(rest) {
            Ok(url::Host::Domain(name)) => name.to_ascii_lowercase(),
            Ok(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => {
                return Err(fail("an IP address is not a host pattern"));
            }
            Err(_) => return Err(fail("not a valid host name")),
        };
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(fail("not a valid host name"));
        }
        Ok(Self { wildcard, name })
    }

    /// `host` is already lower case without a trailing dot.
    fn matches(&self, host: &str) -> bool {
        if !self.wildcard {
            return host == self.name;
        }
        let Some(prefix) = host.strip_suffix(self.name.as_str()).and_then(|p| p.strip_suffix('.')) else {
            return false;
        };
        !prefix.is_empty() && prefix.split('.').all(|label| !label.is_empty())
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

/// The host allow-list: a non-empty list of glob patterns such as
/// `mcp.example.org` or `*.example.com`; a host is allowed when it matches
/// one.
///
/// The grammar is deliberately small:
///
/// - a pattern is a DNS name, compared without regard to ASCII case and to
///   one trailing dot; internationalised names are turned into their
///   `xn--` form, as the URL parser does for a URL's host;
/// - `*` may only be the whole leftmost label, and then matches **one or
///   more** labels: `*.example.com` matches `a.example.com` and
///   `a.b.example.com`, but not `example.com` itself (list it too if it is
///   wanted) nor `badexample.com`;
/// - there are no other metacharacters, and a bare `*` is refused: to allow
///   every host, set no allow-list;
/// - an IP address is not a pattern, and a URL whose host is an IP literal
///   matches no pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPatterns(Vec<HostPattern>);

impl HostPatterns {
    /// Parses each pattern; refuses an empty list.
    pub fn new<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let parsed = patterns.into_iter().map(|p| HostPattern::parse(p.as_ref())).collect::<Result<Vec<_>, _>>()?;
        if parsed.is_empty() {
            return Err(PatternError { pattern: String::new(), reason: "the list of host patterns is empty" });
        }
        Ok(Self(parsed))
    }

    /// Whether `host` (a DNS name, as in a URL) matches one of the patterns.
    /// An IP address, bracketed or not, matches none.
    #[must_use]
    pub fn matches(&self, host: &str) -> bool {
        if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
            return false;
        }
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        self.0.iter().any(|pattern| pattern.matches(&host))
    }
}

/// A comma-separated list, as given to `--client-metadata-hosts`:
/// `*.example.com, mcp.example.org`. Empty items are skipped.
impl FromStr for HostPatterns {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s.split(',').map(str::trim).filter(|p| !p.is_empty()))
    }
}

impl fmt::Display for HostPatterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pattern) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{pattern}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &str) -> HostPatterns {
        list.parse().unwrap()
    }

    #[test]
    fn exact_names_match_exactly_and_ignore_case_and_a_trailing_dot() {
        let p = patterns("mcp.example.org");
        assert!(p.matches("mcp.example.org"));
        assert!(p.matches("MCP.Example.ORG"));
        assert!(p.matches("mcp.example.org."));
        assert!(!p.matches("example.org"));
        assert!(!p.matches("a.mcp.example.org"));
        assert!(!p.matches("mcp.example.org.evil.com"));
        assert!(!p.matches("xmcp.example.org"));
        assert!(!p.matches(""));
    }

    #[test]
    fn a_wildcard_matches_one_or_more_labels_but_not_the_apex() {
        let p = patterns("*.example.com");
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(p.matches("A.B.EXAMPLE.COM."));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        assert!(!p.matches("a.badexample.com"));
        assert!(!p.matches(".example.com"));
        assert!(!p.matches("a..example.com"));
        assert!(!p.matches("example.com.evil.net"));
        assert!(!p.matches("a.example.co"));
    }

    #[test]
    fn several_patterns_allow_the_union() {
        let p = patterns(" *.example.com , mcp.example.org,,");
        assert!(p.matches("x.example.com"));
        assert!(p.matches("mcp.example.org"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("other.example.org"));
        assert_eq!(p.to_string(), "*.example.com,mcp.example.org");
    }

    #[test]
    fn patterns_are_normalised() {
        let p = patterns("MCP.Example.ORG.");
        assert_eq!(p.to_string(), "mcp.example.org");
        assert!(p.matches("mcp.example.org"));
        // An internationalised name is compared in its xn-- form, which is
        // how the URL parser hands the host over.
        let p = patterns("*.bücher.example");
        assert_eq!(p.to_string(), "*.xn--bcher-kva.example");
        let url = url::Url::parse("https://shop.bücher.example/x").unwrap();
        assert!(p.matches(url.host_str().unwrap()));
    }

    #[test]
    fn ip_addresses_match_no_pattern() {
        let p = patterns("*.example.com,localhost");
        for host in ["127.0.0.1", "[::1]", "::1", "10.0.0.1"] {
            assert!(!p.matches(host), "{host}");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            " , ",
            "*",
            "*.",
            "**.example.com",
            "a.*.example.com",
            "*example.com",
            "ex*ample.com",
            "example.*",
            "*.*.example.com",
            "127.0.0.1",
            "[::1]",
            "exa mple.com",
            "a..b",
            ".example.com",
            "exa$mple.com",
            "user@example.com",
            "example.com:443",
            "example.com/path",
            "?.example.com",
        ] {
            assert!(bad.parse::<HostPatterns>().is_err(), "{bad:?} should be refused");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(long_label.parse::<HostPatterns>().is_err());
        assert!(HostPatterns::new(Vec::<String>::new()).is_err());
    }

    #[test]
    fn error_names_the_pattern() {
        let err = "a.*.b".parse::<HostPatterns>().unwrap_err();
        assert_eq!(err.pattern, "a.*.b");
        assert!(err.to_string().contains("a.*.b"));
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parsing_and_matching_never_panic(pattern in "\\PC{0,40}", host in "\\PC{0,40}") {
                if let Ok(p) = pattern.parse::<HostPatterns>() {
                    let _ = p.matches(&host);
                    // What a pattern prints parses back to the same patterns.
                    prop_assert_eq!(p.to_string().parse::<HostPatterns>().ok(), Some(p));
                }
            }

            #[test]
            fn a_wildcard_matches_exactly_the_subdomains(
                labels in proptest::collection::vec("[a-z0-9]{1,8}", 1..4),
                base in "[a-z]{1,8}\\.[a-z]{2,4}",
            ) {
                let p: HostPatterns = format!("*.{base}").parse().unwrap();
                let sub = format!("{}.{base}", labels.join("."));
                prop_assert!(p.matches(&sub));
                prop_assert!(!p.matches(&base));
                let glued = format!("{}{base}", labels.join("."));
                prop_assert!(!p.matches(&glued));
            }
        }
    }
}
