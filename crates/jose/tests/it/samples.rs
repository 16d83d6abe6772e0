//! Negative test vectors (`samples/negative/`): access tokens that carry one
//! flaw each, signed with committed test keys so that nothing but that flaw
//! makes them invalid. Each must be refused by the access-token verifier
//! (`access::AccessTokenVerifier`, which the resource-server SDK uses) with
//! the error its manifest names.
//!
//! The samples come from `cases()` below: run
//! `cargo test -p mandate-jose --test it -- --ignored write_negative_samples`
//! to write them again. Ed25519 and HMAC signatures are deterministic, so
//! those files come out byte for byte the same (checked here); ES256
//! signatures are randomized, so for those the header and payload are
//! checked instead.

use std::path::{Path, PathBuf};

use base64::Engine;
use mandate_jose::access::AccessTokenVerifier;
use mandate_jose::{JwkSet, KeyAlg, SigningKey};
use mandate_model::claims::AccessTokenClaims;
use serde_json::{Value, json};

use crate::vectors::{b64, rfc8037_key};

const ISSUER: &str = "https://mandate.example";
const AUDIENCE: &str = "https://api.example.com";
const NOW: i64 = 1_800_000_100;

fn enc(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7515 Appendix A.3: the P-256 test key, as PKCS#8 v1.
fn rfc7515_p256_key() -> SigningKey {
    let mut der = vec![
        0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
        0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02, 0x01, 0x01, 0x04, 0x20,
    ];
    der.extend(b64("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"));
    der.extend([0xa1, 0x44, 0x03, 0x42, 0x00, 0x04]);
    der.extend(b64("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"));
    der.extend(b64("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"));
    SigningKey::from_pkcs8(KeyAlg::ES256, &der).unwrap()
}

/// RFC 8032 §7.1 TEST 2: an Ed25519 key the verifier does not trust.
fn rfc8032_test2_key() -> SigningKey {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let seed = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
    der.extend((0..32).map(|i| u8::from_str_radix(&seed[2 * i..2 * i + 2], 16).unwrap()));
    SigningKey::from_pkcs8(KeyAlg::EdDSA, &der).unwrap()
}

fn claims() -> AccessTokenClaims {
    AccessTokenClaims {
        iss: ISSUER.into(),
        sub: "agt_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        aud: AUDIENCE.into(),
        exp: 1_800_000_300,
        iat: 1_800_000_000,
        nbf: 1_800_000_000,
        jti: "tok_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        client_id: "agt_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        scope: "mail.read".into(),
        act: None,
        may_act: None,
        authorization_details: None,
        grant_id: None,
        purpose: None,
        cnf: None,
        status: None,
    }
}

fn verifier(ed: &SigningKey, ec: &SigningKey) -> AccessTokenVerifier {
    AccessTokenVerifier {
        issuer: ISSUER.into(),
        keys: JwkSet { keys: vec![ed.public().clone(), ec.public().clone()] },
        leeway: 60,
    }
}

/// A header written member by member, in order (repeats kept).
fn header(members: &[(&str, Value)]) -> String {
    let body: Vec<String> = members.iter().map(|(k, v)| format!("{}:{v}", Value::String((*k).to_owned()))).collect();
    format!("{{{}}}", body.join(","))
}

fn signing_input(header: &str) -> String {
    format!("{}.{}", enc(header), enc(serde_json::to_vec(&claims()).unwrap()))
}

fn signed(key: &SigningKey, header: &str) -> String {
    let input = signing_input(header);
    let sig = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", enc(sig))
}

/// `r || s` as an ASN.1 DER `ECDSA-Sig-Value` (RFC 3279 §2.2.3).
fn der(raw: &[u8]) -> Vec<u8> {
    let int = |x: &[u8]| {
        let x: Vec<u8> = x.iter().copied().skip_while(|b| *b == 0).collect();
        let mut out = vec![0x02];
        if x.first().is_none_or(|b| b & 0x80 != 0) {
            out.push(x.len() as u8 + 1);
            out.push(0);
        } else {
            out.push(x.len() as u8);
        }
        out.extend(x);
        out
    };
    let (r, s) = raw.split_at(32);
    let body: Vec<u8> = int(r).into_iter().chain(int(s)).collect();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

/// One negative sample: its file name, its one flaw, the error the
/// verifier must answer (Rust `Debug` of `JoseError`), whether its bytes
/// are reproducible, and the token.
struct Case {
    name: &'static str,
    flaw: String,
    error: &'static str,
    deterministic: bool,
    token: String,
}

fn cases() -> Vec<Case> {
    let ed = rfc8037_key();
    let ec = rfc7515_p256_key();
    let stranger = rfc8032_test2_key();
    let (ed_kid, ec_kid) = (ed.kid().to_owned(), ec.kid().to_owned());
    let good = |extra: &[(&str, Value)]| {
        let mut m = vec![("alg", json!("EdDSA")), ("kid", json!(ed_kid)), ("typ", json!("at+jwt"))];
        m.extend(extra.iter().cloned());
        header(&m)
    };
    let with_alg = |alg: &str, kid: &str| header(&[("alg", json!(alg)), ("kid", json!(kid)), ("typ", json!("at+jwt"))]);
    let valid = signed(&ed, &good(&[]));
    let (valid_input, valid_sig) = valid.rsplit_once('.').unwrap();
    let c = |name, flaw: &str, error, deterministic, token| Case {
        name,
        flaw: flaw.to_owned(),
        error,
        deterministic,
        token,
    };
    let mut out = Vec::new();

    out.push(c(
        "alg-none.jwt",
        "alg none, with an Ed25519 signature present",
        "AlgorithmNotAllowed(\"none\")",
        true,
        signed(&ed, &with_alg("none", &ed_kid)),
    ));
    out.push(c(
        "alg-none-unsigned.jwt",
        "alg none and an empty signature (the classic unsigned token)",
        "Malformed(\"missing signature\")",
        true,
        format!("{}.", signing_input(&with_alg("none", &ed_kid))),
    ));
    out.push(c(
        "alg-none-uppercase.jwt",
        "alg NONE",
        "AlgorithmNotAllowed(\"NONE\")",
        true,
        signed(&ed, &with_alg("NONE", &ed_kid)),
    ));
    let hs_header = with_alg("HS256", &ed_kid);
    let hs_input = signing_input(&hs_header);
    let hs_key =
        aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &b64(ed.public().to_json()["x"].as_str().unwrap()));
    let hs_tag = aws_lc_rs::hmac::sign(&hs_key, hs_input.as_bytes());
    out.push(c(
        "alg-hs256-public-key-as-secret.jwt",
        "HS256, MACed with the Ed25519 public key's bytes as the secret (key confusion)",
        "AlgorithmNotAllowed(\"HS256\")",
        true,
        format!("{hs_input}.{}", enc(hs_tag)),
    ));
    out.push(c(
        "alg-es256-with-ed25519-kid.jwt",
        "alg ES256, signed by the P-256 key, but kid names the Ed25519 key",
        "AlgorithmNotAllowed(\"ES256\")",
        false,
        signed(&ec, &with_alg("ES256", &ed_kid)),
    ));
    out.push(c(
        "alg-eddsa-with-p256-kid.jwt",
        "alg EdDSA, signed by the Ed25519 key, but kid names the P-256 key",
        "AlgorithmNotAllowed(\"EdDSA\")",
        true,
        signed(&ed, &with_alg("EdDSA", &ec_kid)),
    ));
    out.push(c(
        "alg-repeated-last-none.jwt",
        "alg EdDSA, then alg none again in the same header (the last one counts)",
        "AlgorithmNotAllowed(\"none\")",
        true,
        signed(
            &ed,
            &header(&[
                ("alg", json!("EdDSA")),
                ("kid", json!(ed_kid)),
                ("typ", json!("at+jwt")),
                ("alg", json!("none")),
            ]),
        ),
    ));

    let mut sig = b64(valid_sig);
    sig[10] ^= 0x01;
    out.push(c(
        "bad-signature.jwt",
        "one bit of a valid Ed25519 signature flipped",
        "BadSignature",
        true,
        format!("{valid_input}.{}", enc(&sig)),
    ));
    out.push(c(
        "signed-by-unknown-key.jwt",
        "kid names the trusted Ed25519 key, but another Ed25519 key signed",
        "BadSignature",
        true,
        signed(&stranger, &good(&[])),
    ));
    let es_header = with_alg("ES256", &ec_kid);
    let es_input = signing_input(&es_header);
    let es_sig = ec.sign(es_input.as_bytes()).unwrap();
    out.push(c(
        "es256-der-signature.jwt",
        "a valid ES256 signature, DER-encoded instead of the raw 64-byte R and S",
        "BadSignature",
        false,
        format!("{es_input}.{}", enc(der(&es_sig))),
    ));
    out.push(c(
        "es256-truncated-signature.jwt",
        "a valid ES256 signature without its last byte",
        "BadSignature",
        false,
        format!("{es_input}.{}", enc(&es_sig[..63])),
    ));
    out.push(c(
        "padded-signature.jwt",
        "a valid token whose signature has base64 padding",
        "Malformed(\"signature is not base64url\")",
        true,
        format!("{valid}=="),
    ));

    let mut embedded = ed.public().to_json();
    embedded.as_object_mut().unwrap().remove("kid");
    for (name, member, value, flaw, error) in [
        (
            "crit.jwt",
            "crit",
            json!(["exp"]),
            "crit [\"exp\"] (processing the verifier does not know)",
            "ForbiddenHeader(\"crit\")",
        ),
        (
            "jku.jwt",
            "jku",
            json!("https://evil.example/jwks.json"),
            "jku, a URL to fetch keys from",
            "ForbiddenHeader(\"jku\")",
        ),
        (
            "x5u.jwt",
            "x5u",
            json!("https://evil.example/cert.pem"),
            "x5u, a URL to fetch a certificate from",
            "ForbiddenHeader(\"x5u\")",
        ),
        ("x5c.jwt", "x5c", json!(["MIIB"]), "x5c, an embedded certificate chain", "ForbiddenHeader(\"x5c\")"),
        (
            "jwk-embedded.jwt",
            "jwk",
            embedded,
            "jwk, the signing key's own public key embedded in the header",
            "ForbiddenHeader(\"jwk\")",
        ),
        ("b64-false.jwt", "b64", json!(false), "b64 false (RFC 7797 unencoded payload)", "ForbiddenHeader(\"b64\")"),
        ("zip.jwt", "zip", json!("DEF"), "zip (a compressed payload)", "ForbiddenHeader(\"zip\")"),
    ] {
        let flaw = format!("an otherwise valid token whose header carries {flaw}");
        out.push(c(name, &flaw, error, true, signed(&ed, &good(&[(member, value)]))));
    }

    let typed = |typ: Option<&str>| {
        let mut m = vec![("alg", json!("EdDSA")), ("kid", json!(ed_kid))];
        if let Some(t) = typ {
            m.push(("typ", json!(t)));
        }
        signed(&ed, &header(&m))
    };
    out.push(c("typ-jwt.jwt", "typ JWT (a client assertion's type)", "WrongType(\"JWT\")", true, typed(Some("JWT"))));
    out.push(c("typ-missing.jwt", "no typ", "WrongType(\"\")", true, typed(None)));
    out.push(c(
        "typ-dpop.jwt",
        "typ dpop+jwt (a DPoP proof's type)",
        "WrongType(\"dpop+jwt\")",
        true,
        typed(Some("dpop+jwt")),
    ));
    out.push(c(
        "kid-unknown.jwt",
        "a kid that names no trusted key",
        "UnknownKey",
        true,
        signed(&ed, &with_alg("EdDSA", "kid-that-is-not-there")),
    ));
    out.push(c(
        "kid-missing.jwt",
        "no kid (an access token must name its key)",
        "UnknownKey",
        true,
        signed(&ed, &header(&[("alg", json!("EdDSA")), ("typ", json!("at+jwt"))])),
    ));
    out
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples").join("negative")
}

fn manifest(cases: &[Case]) -> Value {
    let ed = rfc8037_key();
    let ec = rfc7515_p256_key();
    json!({
        "verifier": {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "now": NOW,
            "leeway": 60,
            "keys": {"keys": [ed.public().to_json(), ec.public().to_json()]},
        },
        "cases": cases.iter().map(|c| json!({"file": c.name, "flaw": c.flaw, "error": c.error})).collect::<Vec<_>>(),
    })
}

fn readme(cases: &[Case]) -> String {
    let mut s = String::from(
        "# Negative samples\n\n\
         Access tokens that must be refused, one flaw each, written by `tests/it/samples.rs`\n\
         (`cargo test -p mandate-jose --test it -- --ignored write_negative_samples`) and checked by the\n\
         same file. `manifest.json` gives the verifier's settings (issuer, audience, time, trusted keys)\n\
         and, for each file, its flaw and the `JoseError` Mandate answers.\n\n\
         The trusted keys are test keys from the RFCs: Ed25519 from RFC 8037 Appendix A.1 (which is\n\
         RFC 8032 §7.1 TEST 1) and P-256 from RFC 7515 Appendix A.3. `signed-by-unknown-key.jwt` is\n\
         signed by RFC 8032 §7.1 TEST 2's key. The claims are those of `../access_token_ed25519.jwt`,\n\
         valid at `now`, so each token fails for its flaw alone. Ed25519 and HMAC samples are\n\
         reproducible byte for byte; ES256 signatures are randomized.\n\n\
         | file | flaw | error |\n|---|---|---|\n",
    );
    for c in cases {
        s.push_str(&format!("| `{}` | {} | `{}` |\n", c.name, c.flaw, c.error));
    }
    s
}

#[test]
#[ignore = "writes samples/negative/"]
fn write_negative_samples() {
    let cases = cases();
    std::fs::create_dir_all(dir()).unwrap();
    for c in &cases {
        std::fs::write(dir().join(c.name), &c.token).unwrap();
    }
    std::fs::write(dir().join("manifest.json"), format!("{:#}\n", manifest(&cases))).unwrap();
    std::fs::write(dir().join("README.md"), readme(&cases)).unwrap();
}

#[test]
fn negative_samples_are_refused_for_their_flaw() {
    let (ed, ec) = (rfc8037_key(), rfc7515_p256_key());
    let v = verifier(&ed, &ec);
    // The controls: the same claims, signed properly by each trusted key.
    let payload_ok = |key: &SigningKey| {
        let h = header(&[("alg", json!(key.alg().name())), ("kid", json!(key.kid())), ("typ", json!("at+jwt"))]);
        v.verify(&signed(key, &h), NOW, Some(AUDIENCE)).map(|_| ())
    };
    assert_eq!(payload_ok(&ed), Ok(()));
    assert_eq!(payload_ok(&ec), Ok(()));

    let cases = cases();
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(committed, manifest(&cases), "manifest.json is not what the generator writes");
    assert_eq!(std::fs::read_to_string(dir().join("README.md")).unwrap(), readme(&cases), "README.md is stale");
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jwt"))
        .collect();
    files.sort();
    let mut named: Vec<String> = cases.iter().map(|c| c.name.to_owned()).collect();
    named.sort();
    assert_eq!(files, named, "every sample file is in the manifest, and only those");

    for c in &cases {
        let token = std::fs::read_to_string(dir().join(c.name)).unwrap();
        let got = v.verify(&token, NOW, Some(AUDIENCE));
        assert_eq!(got.as_ref().map(|_| ()).map_err(|e| format!("{e:?}")), Err(c.error.to_owned()), "{}", c.name);
        if c.deterministic {
            assert_eq!(token, c.token, "{}: not what the generator writes", c.name);
        } else {
            let input = |t: &str| t.rsplit_once('.').map(|(i, _)| i.to_owned());
            assert_eq!(input(&token), input(&c.token), "{}: header or payload differ from the generator's", c.name);
        }
    }
}
