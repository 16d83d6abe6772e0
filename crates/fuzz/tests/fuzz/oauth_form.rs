//! The OAuth form parsers: `extract::OAuthForm::parse` (RFC 6749 §3.1,
//! `application/x-www-form-urlencoded`), then `grant::token_request` and
//! `grant::bc_authorize_request`, which turn the form into
//! `core::request` types.
//!
//! - The form is accepted exactly when the body is UTF-8 and no parameter
//!   but `resource` and `audience` appears twice, as decoded by an
//!   independent decoder written here; what it holds is what that decoder
//!   reads.
//! - An accepted form with one of its parameters repeated (the name spelt
//!   with percent-encodings) is refused: a duplicate is never accepted.
//! - Each grant's request is built exactly when an oracle of what each
//!   grant requires says so (names it does not read are ignored; an
//!   exchange refuses `act` and `may_act`), with the values sent; a refused
//!   grant keeps its grant type. The same for bc-authorize.

use mandate_core::request::{
    GRANT_AUTHORIZATION_CODE, GRANT_CIBA, GRANT_CLIENT_CREDENTIALS, GRANT_EXCHANGE, GRANT_REFRESH, TOKEN_TYPE_ACCESS,
};
use mandate_core::{BadGrant, BcAuthorizeRequest, ExchangeRequest, GrantRequest, GrantType};
use mandate_fuzz::{Target, Verdict, ensure, mutated_bytes};
use mandate_server::extract::OAuthForm;
use mandate_server::grant::{bc_authorize_request, token_request};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;

use crate::common::nasty_string;

const REPEATABLE: &[&str] = &["resource", "audience"];

pub struct OauthForm;

impl Target for OauthForm {
    const NAME: &'static str = "oauth_form";
    type Input = Vec<u8>;

    fn from_seed(bytes: &[u8]) -> Result<Vec<u8>, String> {
        Ok(bytes.to_vec())
    }

    fn strategy(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
        prop_oneof![
            1 => proptest::collection::vec(any::<u8>(), 0..64),
            1 => "[a-z_=&%+0-9A-F]{0,64}".prop_map(String::into_bytes),
            4 => mutated_bytes(seeds, DICTIONARY),
            6 => built(),
        ]
        .boxed()
    }

    fn check(body: &Vec<u8>) -> Result<Verdict, TestCaseError> {
        let parsed = OAuthForm::parse(body);
        let pairs = decode(body);
        let utf8 = std::str::from_utf8(body).is_ok();
        let repeated = first_repeated(&pairs);
        let form = match parsed {
            Err(e) => {
                ensure(!utf8 || repeated.is_some(), || format!("{body:?}: refused ({:?}) but valid", e.0))?;
                return Ok(Verdict::Refused);
            }
            Ok(form) => form,
        };
        ensure(utf8, || format!("{body:?}: accepted, not UTF-8"))?;
        ensure(repeated.is_none(), || format!("{body:?}: accepted with {repeated:?} repeated"))?;
        let mut sorted = pairs.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        ensure(form.pairs() == sorted, || format!("{body:?}: holds {:?}, expected {sorted:?}", form.pairs()))?;
        if let Some((name, _)) = pairs.iter().find(|(n, _)| !REPEATABLE.contains(&n.as_str())) {
            for hex in [upper_hex as fn(u8) -> String, lower_hex] {
                let mut twice = body.clone();
                twice.push(b'&');
                twice.extend(name.bytes().flat_map(|b| hex(b).into_bytes()));
                twice.extend(b"=x");
                ensure(OAuthForm::parse(&twice).is_err(), || format!("{twice:?}: {name:?} repeated, accepted"))?;
            }
        }
        check_token_request(&form, &pairs)?;
        check_bc_authorize(&form, &pairs)?;
        Ok(Verdict::Accepted)
    }
}

#[test]
fn oauth_form() -> Result<(), String> {
    mandate_fuzz::run::<OauthForm>().map(|_| ())
}

/// `application/x-www-form-urlencoded` as the URL Standard decodes it:
/// split on `&`, skip empty pieces, split at the first `=`, `+` is a
/// space, `%XX` a byte, then UTF-8 with replacement.
fn decode(body: &[u8]) -> Vec<(String, String)> {
    body.split(|b| *b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| match piece.iter().position(|b| *b == b'=') {
            Some(i) => (unescape(&piece[..i]), unescape(&piece[i + 1..])),
            None => (unescape(piece), String::new()),
        })
        .collect()
}

fn unescape(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%'
            && let (Some(h), Some(l)) = (s.get(i + 1).and_then(|c| hexval(*c)), s.get(i + 2).and_then(|c| hexval(*c)))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hexval(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn upper_hex(b: u8) -> String {
    format!("%{b:02X}")
}

fn lower_hex(b: u8) -> String {
    format!("%{b:02x}")
}

fn first_repeated(pairs: &[(String, String)]) -> Option<String> {
    pairs.iter().enumerate().find_map(|(i, (n, _))| {
        (!REPEATABLE.contains(&n.as_str()) && pairs[..i].iter().any(|(m, _)| m == n)).then(|| n.clone())
    })
}

fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn all(pairs: &[(String, String)], name: &str) -> Vec<String> {
    pairs.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect()
}

/// The `required` ones present and not empty; any other name is ignored
/// (RFC 6749 §3.2).
fn shape_ok(pairs: &[(String, String)], required: &[&str]) -> bool {
    required.iter().all(|r| first(pairs, r).is_some_and(|v| !v.is_empty()))
}

/// What the token endpoint must make of these parameters.
fn expected_grant(pairs: &[(String, String)]) -> Result<GrantRequest, Option<GrantType>> {
    let grant_type = first(pairs, "grant_type").unwrap_or_default();
    let owned = |name: &str| first(pairs, name).map(str::to_owned);
    let required = |name: &str| owned(name).unwrap_or_default();
    match grant_type {
        GRANT_CLIENT_CREDENTIALS => Ok(GrantRequest::ClientCredentials {
            scope: first(pairs, "scope").filter(|s| !s.is_empty()).map(str::to_owned),
            resources: all(pairs, "resource"),
        }),
        GRANT_AUTHORIZATION_CODE if shape_ok(pairs, &["code"]) => Ok(GrantRequest::AuthorizationCode {
            code: required("code"),
            redirect_uri: owned("redirect_uri"),
            code_verifier: owned("code_verifier"),
            resources: all(pairs, "resource"),
        }),
        GRANT_AUTHORIZATION_CODE => Err(Some(GrantType::AuthorizationCode)),
        GRANT_CIBA if shape_ok(pairs, &["auth_req_id"]) => {
            Ok(GrantRequest::Ciba { auth_req_id: required("auth_req_id") })
        }
        GRANT_CIBA => Err(Some(GrantType::Ciba)),
        GRANT_REFRESH if shape_ok(pairs, &["refresh_token"]) => Ok(GrantRequest::Refresh {
            refresh_token: required("refresh_token"),
            scope: owned("scope"),
            resources: all(pairs, "resource"),
        }),
        GRANT_REFRESH => Err(Some(GrantType::Refresh)),
        GRANT_EXCHANGE => {
            // `act` and `may_act` are Mandate's to build (SECURITY row 21).
            let smuggled = first(pairs, "act").is_some() || first(pairs, "may_act").is_some();
            let actor = match (first(pairs, "actor_token"), first(pairs, "actor_token_type")) {
                (None, None) => Some(None),
                (Some(t), Some(TOKEN_TYPE_ACCESS)) => Some(Some(t.to_owned())),
                _ => None,
            };
            match actor {
                Some(actor_token)
                    if !smuggled
                        && shape_ok(pairs, &["subject_token", "subject_token_type"])
                        && first(pairs, "subject_token_type") == Some(TOKEN_TYPE_ACCESS)
                        && first(pairs, "requested_token_type").is_none_or(|t| t == TOKEN_TYPE_ACCESS) =>
                {
                    Ok(GrantRequest::Exchange(ExchangeRequest {
                        subject_token: required("subject_token"),
                        actor_token,
                        resources: all(pairs, "resource"),
                        audiences: all(pairs, "audience"),
                        scope: owned("scope"),
                        subject_token_dpop: owned("subject_token_dpop"),
                        authorization_details: owned("authorization_details"),
                    }))
                }
                _ => Err(Some(GrantType::Exchange)),
            }
        }
        _ => Err(None),
    }
}

fn check_token_request(form: &OAuthForm, pairs: &[(String, String)]) -> Result<(), TestCaseError> {
    let grant_type = form.get("grant_type").unwrap_or_default();
    let got = token_request(form, grant_type, vec![]).grant;
    let expected = expected_grant(pairs);
    let ok = match (&got, &expected) {
        (Ok(g), Ok(e)) => g == e,
        (Err(BadGrant::Malformed { grant, .. }), Err(Some(e))) => grant == e,
        (Err(BadGrant::Unsupported(t)), Err(None)) => t == grant_type,
        _ => false,
    };
    ensure(ok, || format!("{pairs:?}: token request {got:?}, expected {expected:?}"))
}

fn check_bc_authorize(form: &OAuthForm, pairs: &[(String, String)]) -> Result<(), TestCaseError> {
    let got = bc_authorize_request(form);
    let owned = |name: &str| first(pairs, name).map(str::to_owned);
    let ok = match &got {
        Ok(r) => {
            shape_ok(pairs, &["login_hint"])
                && *r
                    == BcAuthorizeRequest {
                        login_hint: owned("login_hint").unwrap_or_default(),
                        scope: owned("scope"),
                        resources: all(pairs, "resource"),
                        binding_message: owned("binding_message"),
                        requested_expiry: owned("requested_expiry"),
                        allowed_actors: owned("allowed_actors"),
                        client_notification_token: owned("client_notification_token"),
                        authorization_details: owned("authorization_details"),
                    }
        }
        Err(m) => {
            !shape_ok(pairs, &["login_hint"])
                && m.resource == all(pairs, "resource").into_iter().next()
                && m.scope == owned("scope")
        }
    };
    ensure(ok, || format!("{pairs:?}: bc-authorize {got:?}"))
}

const DICTIONARY: &[&str] = &[
    "&",
    "=",
    "&&",
    "%",
    "%2",
    "%25",
    "%26",
    "%3D",
    "%3d",
    "+",
    "%2B",
    "%FF",
    "%C3%A4",
    "\u{e4}",
    "grant_type",
    "resource",
    "audience",
    "scope",
    "client_assertion",
    "login_hint",
    "=urn:ietf:params:oauth:token-type:access_token",
];

/// A parameter name, or something like one.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(vec![
            "grant_type", "client_id", "client_assertion", "client_assertion_type", "scope", "resource", "audience",
            "code", "redirect_uri", "code_verifier", "auth_req_id", "refresh_token", "subject_token",
            "subject_token_type", "requested_token_type", "actor_token", "actor_token_type", "login_hint",
            "binding_message", "requested_expiry", "allowed_actors", "subject_token_dpop", "authorization_details", "client_secret", "act", "may_act", "Scope", "scope ", "",
            "gr\u{e4}nt",
        ])
        .prop_map(str::to_owned),
        1 => nasty_string(),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec![
            GRANT_CLIENT_CREDENTIALS, GRANT_AUTHORIZATION_CODE, GRANT_CIBA, GRANT_REFRESH, GRANT_EXCHANGE,
            TOKEN_TYPE_ACCESS, TOKEN_TYPE_ACCESS, "urn:ietf:params:oauth:token-type:jwt", "password", "", "x",
            "https://api.example.com", "read write",
        ])
        .prop_map(str::to_owned),
        1 => nasty_string(),
    ]
}

/// How a built form spells one name or value.
#[derive(Debug, Clone, Copy)]
enum Spelling {
    /// Unreserved bytes as they are, spaces as `+`, the rest `%XX`.
    Standard,
    /// Every byte `%XX`, in upper or lower case.
    AllEscaped(bool),
    /// The text as it is: `&`, `=`, `+` and `%` keep their meaning.
    Raw,
}

fn spell(s: &str, how: Spelling) -> String {
    match how {
        Spelling::Raw => s.to_owned(),
        Spelling::AllEscaped(upper) => s.bytes().map(if upper { upper_hex } else { lower_hex }).collect(),
        Spelling::Standard => s
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => char::from(b).to_string(),
                b' ' => "+".to_owned(),
                _ => upper_hex(b),
            })
            .collect(),
    }
}

fn spelling() -> impl Strategy<Value = Spelling> {
    prop_oneof![
        8 => Just(Spelling::Standard),
        1 => any::<bool>().prop_map(Spelling::AllEscaped),
        1 => Just(Spelling::Raw),
    ]
}

/// A form of parameters from the vocabularies, each spelt its own way,
/// sometimes with empty pieces.
fn built() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((name(), spelling(), value(), spelling(), 0u8..10), 0..8).prop_map(|params| {
        let mut body = String::new();
        for (name, ns, value, vs, extra) in params {
            if !body.is_empty() {
                body.push('&');
            }
            if extra == 0 {
                body.push('&');
            }
            body.push_str(&spell(&name, ns));
            if extra != 1 || !value.is_empty() {
                body.push('=');
                body.push_str(&spell(&value, vs));
            }
        }
        body.into_bytes()
    })
}
