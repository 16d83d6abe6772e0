//! Status-list decoding (`statuslist::StatusBits::decode`, the `lst` of
//! draft-ietf-oauth-status-list) and the signed list token around it
//! (`statuslist::verify`).
//!
//! - Decoding never panics; it answers a list or `JoseError::Claims`, and
//!   never a list larger than `MAX_LIST_BYTES`.
//! - A decoded list encodes and decodes to itself.
//! - A built list (size, invalid indexes) decodes from its encoding to the
//!   same list, with exactly those indexes below `size` invalid (the
//!   padding up to a whole byte stays valid), and nothing beyond it.
//! - A list's encoding with its end cut off never decodes to another list.
//! - A signed list token with a mutated `lst` is still checked strictly:
//!   verification never panics, and never answers a list other than the
//!   one its `lst` decodes to.

use mandate_fuzz::{Target, Verdict, ensure, mutated_text};
use mandate_jose::JoseError;
use mandate_jose::jws::MAX_TOKEN_LEN;
use mandate_jose::statuslist::{EncodedList, MAX_LIST_BYTES, StatusBits, StatusListClaims, mint, verify};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::common::{ED25519, NOW, trusted};

pub const URI: &str = "https://mandate.example/statuslists/0";

#[derive(Debug, Clone)]
pub enum Input {
    /// An `lst` value as a status list token carries it.
    Lst(String),
    /// A list of `size` statuses with these indexes invalid, and how many
    /// characters to cut off the end of its encoding.
    Built { size: usize, invalid: Vec<usize>, cut: usize },
}

pub struct Statuslist;

impl Target for Statuslist {
    const NAME: &'static str = "statuslist";
    type Input = Input;

    fn from_seed(bytes: &[u8]) -> Result<Input, String> {
        Ok(Input::Lst(String::from_utf8_lossy(bytes).trim_end().to_owned()))
    }

    fn strategy(seeds: Vec<Input>) -> BoxedStrategy<Input> {
        let texts: Vec<String> = seeds
            .into_iter()
            .filter_map(|s| match s {
                Input::Lst(t) => Some(t),
                Input::Built { .. } => None,
            })
            .collect();
        prop_oneof![
            1 => any::<String>().prop_map(Input::Lst),
            1 => "[A-Za-z0-9_-]{0,64}".prop_map(Input::Lst),
            1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| Input::Lst(crate::common::b64(b))),
            3 => mutated_text(texts, &["eN", "eJ", "AA", "_", "-", "=", "A"]).prop_map(Input::Lst),
            3 => (0usize..4096)
                .prop_flat_map(|size| (Just(size), proptest::collection::vec(0..size.max(1) + 16, 0..32), 0usize..8))
                .prop_map(|(size, invalid, cut)| Input::Built { size, invalid, cut }),
        ]
        .boxed()
    }

    fn check(input: &Input) -> Result<Verdict, TestCaseError> {
        match input {
            Input::Lst(lst) => check_lst(lst),
            Input::Built { size, invalid, cut } => check_built(*size, invalid, *cut),
        }
    }
}

#[test]
fn statuslist() -> Result<(), String> {
    mandate_fuzz::run::<Statuslist>().map(|_| ())
}

fn check_lst(lst: &str) -> Result<Verdict, TestCaseError> {
    let decoded = match StatusBits::decode(lst) {
        Ok(bits) => bits,
        Err(JoseError::Claims(_)) => {
            check_token(lst, None)?;
            return Ok(Verdict::Refused);
        }
        Err(e) => return Err(TestCaseError::fail(format!("{lst:?}: refused with {e:?}"))),
    };
    ensure(decoded.as_bytes().len() <= MAX_LIST_BYTES, || format!("{lst:?}: {} bytes", decoded.as_bytes().len()))?;
    ensure(decoded.len() == decoded.as_bytes().len() * 8, || format!("{lst:?}: len"))?;
    let again = StatusBits::decode(&decoded.encode().map_err(|e| TestCaseError::fail(e.to_string()))?)
        .map_err(|e| TestCaseError::fail(format!("{lst:?}: its re-encoding is refused: {e}")))?;
    ensure(again == decoded, || format!("{lst:?}: does not round-trip"))?;
    check_token(lst, Some(&decoded))?;
    Ok(Verdict::Accepted)
}

/// `lst` inside a list token signed by a trusted key: verified exactly
/// when `lst` decodes, to the same list.
fn check_token(lst: &str, decoded: Option<&StatusBits>) -> Result<(), TestCaseError> {
    let claims = StatusListClaims {
        sub: URI.into(),
        iat: NOW,
        exp: NOW + 60,
        ttl: 30,
        status_list: EncodedList { bits: 1, lst: lst.into() },
    };
    let token = mint(&ED25519, &claims).map_err(|e| TestCaseError::fail(e.to_string()))?;
    if token.len() > MAX_TOKEN_LEN {
        let got = verify(&token, &trusted(), URI, NOW);
        return ensure(matches!(got, Err(JoseError::Malformed(_))), || format!("{lst:?}: a long token gives {got:?}"));
    }
    match (verify(&token, &trusted(), URI, NOW), decoded) {
        (Ok((c, bits)), Some(d)) => ensure(c == claims && &bits == d, || format!("{lst:?}: the token's list differs")),
        (Err(JoseError::Claims(_)), None) => Ok(()),
        (got, _) => Err(TestCaseError::fail(format!("{lst:?}: the signed list gives {got:?}"))),
    }
}

fn check_built(size: usize, invalid: &[usize], cut: usize) -> Result<Verdict, TestCaseError> {
    let list = StatusBits::with_invalid(size, invalid.iter().copied());
    ensure(list.len() == size.div_ceil(8) * 8, || format!("{size}: len {}", list.len()))?;
    let lst = list.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let decoded = StatusBits::decode(&lst).map_err(|e| TestCaseError::fail(format!("{size}: {e}")))?;
    ensure(decoded == list, || format!("{size} {invalid:?}: does not round-trip"))?;
    for i in 0..list.len() as u64 {
        // "Indexes beyond `size` are ignored", padding bits included.
        let expected = invalid.contains(&(i as usize)) && (i as usize) < size;
        ensure(decoded.is_invalid(i) == Some(expected), || format!("{size} {invalid:?}: index {i}"))?;
    }
    ensure(decoded.is_invalid(list.len() as u64).is_none(), || format!("{size}: an index beyond the list"))?;
    ensure(decoded.is_invalid(u64::MAX).is_none(), || format!("{size}: u64::MAX"))?;
    if cut > 0 && cut <= lst.len() {
        let short = &lst[..lst.len() - cut];
        if let Ok(other) = StatusBits::decode(short) {
            ensure(other == list, || format!("{size} {invalid:?}: {lst:?} cut by {cut} decodes to another list"))?;
        }
    }
    Ok(Verdict::Accepted)
}
