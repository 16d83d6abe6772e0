//! `htu` normalisation (`dpop::normalize_htu`, RFC 9449 §4.3 with RFC
//! 3986 §6.2.2 and §6.2.3).
//!
//! - It never panics, and is idempotent: a normalised URL normalises to
//!   itself.
//! - What it returns is an absolute http(s) URL with a host, no user info,
//!   no query and no fragment, whose percent-encodings are uppercase and
//!   never of an unreserved character.
//! - A query or a fragment appended to the input changes nothing.
//! - Changing the case of the scheme and host, or spelling out the default
//!   port, changes nothing.

use mandate_fuzz::{Target, Verdict, ensure, mutated_text};
use mandate_jose::dpop::normalize_htu;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;

pub struct DpopHtu;

impl Target for DpopHtu {
    const NAME: &'static str = "dpop_htu";
    type Input = String;

    fn from_seed(bytes: &[u8]) -> Result<String, String> {
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn strategy(seeds: Vec<String>) -> BoxedStrategy<String> {
        prop_oneof![
            1 => any::<String>(),
            4 => url(),
            4 => mutated_text(seeds, DICTIONARY),
        ]
        .boxed()
    }

    fn check(input: &String) -> Result<Verdict, TestCaseError> {
        let Some(n) = normalize_htu(input) else { return Ok(Verdict::Refused) };
        let again = normalize_htu(&n);
        ensure(again.as_deref() == Some(n.as_str()), || format!("{input:?} -> {n:?} -> {again:?}"))?;
        ensure(n.starts_with("https://") || n.starts_with("http://"), || format!("{input:?} -> {n:?}: scheme"))?;
        ensure(!n.contains('?') && !n.contains('#'), || format!("{input:?} -> {n:?}: query or fragment"))?;
        let after_scheme = n.split_once("://").map(|(_, rest)| rest).unwrap_or_default();
        let authority = after_scheme.split('/').next().unwrap_or_default();
        ensure(!authority.is_empty() && !authority.contains('@'), || format!("{input:?} -> {n:?}: authority"))?;
        ensure(authority.len() < after_scheme.len(), || format!("{input:?} -> {n:?}: no path"))?;
        let path = after_scheme.get(authority.len()..).unwrap_or_default();
        check_percent_encodings(input, &n, path)?;
        // The URL Standard strips trailing C0 controls and spaces: append
        // after what it keeps.
        let kept = input.trim_end_matches(|c: char| c <= ' ');
        if !kept.contains('#') {
            let with_query = normalize_htu(&format!("{kept}?a=1&b=%41"));
            ensure(with_query.as_deref() == Some(n.as_str()), || format!("{input:?}: a query changes it"))?;
        }
        let with_fragment = normalize_htu(&format!("{kept}#x?y"));
        ensure(with_fragment.as_deref() == Some(n.as_str()), || format!("{input:?}: a fragment changes it"))?;
        // The normalised form: lowercase scheme and host, so an uppercased
        // scheme and host must come back to it.
        let scheme = n.split_once("://").map(|(s, _)| s).unwrap_or_default();
        let upper = format!("{}://{}{}", scheme.to_ascii_uppercase(), authority.to_ascii_uppercase(), path);
        ensure(normalize_htu(&upper).as_deref() == Some(n.as_str()), || format!("{input:?}: {upper:?} differs"))?;
        if !authority.contains(':') && !authority.ends_with(']') {
            let port = if scheme == "https" { 443 } else { 80 };
            let explicit = format!("{scheme}://{authority}:{port}{path}");
            ensure(normalize_htu(&explicit).as_deref() == Some(n.as_str()), || {
                format!("{input:?}: {explicit:?} (the default port) differs")
            })?;
        }
        Ok(Verdict::Accepted)
    }
}

#[test]
fn dpop_htu() -> Result<(), String> {
    mandate_fuzz::run::<DpopHtu>().map(|_| ())
}

/// RFC 3986 §6.2.2.1 and §6.2.2.2 in the path.
fn check_percent_encodings(input: &str, n: &str, path: &str) -> Result<(), TestCaseError> {
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b != b'%' {
            continue;
        }
        let (Some(h), Some(l)) = (bytes.get(i + 1), bytes.get(i + 2)) else { continue };
        if !(h.is_ascii_hexdigit() && l.is_ascii_hexdigit()) {
            continue;
        }
        ensure(!h.is_ascii_lowercase() && !l.is_ascii_lowercase(), || format!("{input:?} -> {n:?}: lowercase hex"))?;
        let decoded = u8::from_str_radix(&format!("{}{}", char::from(*h), char::from(*l)), 16).unwrap_or(0);
        let unreserved = decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded);
        ensure(!unreserved, || format!("{input:?} -> {n:?}: %{} left encoded", char::from(decoded)))?;
    }
    Ok(())
}

const DICTIONARY: &[&str] = &[
    "%", "%2e", "%2E", "%2f", "%7e", "%41", "%25", "%00", "%zz", "/", "//", "./", "../", "?", "#", "@", ":", ":443",
    ":80", "[", "]", "\\", " ", "\t", "HTTPS://", "xn--", "\u{e9}", "\u{ff0e}",
];

/// URL-shaped strings from parts that stress normalisation.
fn url() -> impl Strategy<Value = String> {
    let scheme = select(vec!["https", "http", "HTTPS", "HtTp", "ftp", "file", "wss", ""]);
    let sep = select(vec!["://", ":/", ":", "://\\", ":///", "//"]);
    let userinfo = select(vec!["", "", "", "user@", "user:pw@", ":@", "@"]);
    let host = select(vec![
        "as.example",
        "AS.Example",
        "as.example.",
        "127.0.0.1",
        "0x7f.1",
        "2130706433",
        "[::1]",
        "[0:0::1]",
        "[::ffff:127.0.0.1]",
        "xn--bcher-kva.example",
        "b\u{fc}cher.example",
        "EXAMPLE\u{3002}com",
        "%41.example",
        "a..b",
        "",
        "localhost",
        "h",
    ]);
    let port = select(vec!["", "", ":", ":443", ":80", ":8443", ":0", ":65535", ":65536", ":-1", ":0443"]);
    let segment = select(vec![
        "a",
        "A",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        ".%2e",
        "%7e",
        "%7E",
        "~",
        "%2f",
        "%2F",
        "%25",
        "%25%32%65",
        "%zz",
        "%",
        "%4",
        "%41%42",
        "%c3%a4",
        "\u{e4}",
        " ",
        "%20",
        "",
        "a;b",
        "a=b",
        "@",
        ":",
        "\\",
        "%5C",
    ]);
    let path = proptest::collection::vec(segment, 0..5).prop_map(|s| s.iter().map(|x| format!("/{x}")).collect());
    let tail = select(vec!["", "", "?", "?x=1", "#", "#f", "?a#b", "#a?b"]);
    (scheme, sep, userinfo, host, port, path, tail)
        .prop_map(|(s, sep, u, h, p, path, t): (_, _, _, _, _, String, _)| format!("{s}{sep}{u}{h}{p}{path}{t}"))
}
