//! Writes the corpus seeds that must be signed (`jws_compact`,
//! `dpop_proof`) with the fixed keys of `common`: run
//! `cargo test -p mandate-fuzz --test fuzz -- --ignored write_signed_seeds`.
//! Ed25519 signatures are deterministic, so those files come out the same
//! every time; ES256 ones differ in their signature only. The other
//! corpora are written by hand.

use std::path::Path;

use mandate_jose::dpop::access_token_hash;
use serde_json::{Value, json};

use crate::common::{ED25519, NOW, P256, STRANGER, b64, object_text, sign_text};
use crate::dpop_proof::ACCESS_TOKEN;
use crate::jws_compact::claims;
use crate::ssf_set;
use mandate_verifier::ssf::set as ssf_set_events;

fn write(target: &str, name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target).join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn members(pairs: &[(&str, Value)]) -> String {
    object_text(&pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect::<Vec<_>>())
}

fn public_jwk(key: &mandate_jose::SigningKey) -> Value {
    let mut jwk = key.public().to_json();
    if let Some(o) = jwk.as_object_mut() {
        for m in ["kid", "alg", "use"] {
            o.remove(m);
        }
    }
    jwk
}

#[test]
#[ignore = "writes the signed seeds into the corpus"]
fn write_signed_seeds() {
    let payload = serde_json::to_string(&claims()).unwrap();
    let ed = ED25519.kid();
    let ec = P256.kid();
    let t = "jws_compact";
    let at = |alg: &str, kid: &str| members(&[("alg", json!(alg)), ("kid", json!(kid)), ("typ", json!("at+jwt"))]);
    let good = sign_text(&ED25519, &at("EdDSA", ed), &payload);
    write(t, "accept-ed25519.jwt", &good);
    write(t, "accept-ed25519-alg-name.jwt", &sign_text(&ED25519, &at("Ed25519", ed), &payload));
    write(t, "accept-es256.jwt", &sign_text(&P256, &at("ES256", ec), &payload));
    let typ = |typ: &str| members(&[("alg", json!("EdDSA")), ("kid", json!(ed)), ("typ", json!(typ))]);
    write(t, "accept-typ-with-prefix.jwt", &sign_text(&ED25519, &typ("application/at+jwt"), &payload));
    write(t, "refuse-typ-jwt.jwt", &sign_text(&ED25519, &typ("JWT"), &payload));
    write(t, "refuse-alg-none.jwt", &sign_text(&ED25519, &at("none", ed), &payload));
    write(t, "refuse-alg-hs256.jwt", &sign_text(&ED25519, &at("HS256", ed), &payload));
    write(t, "refuse-es256-header-ed25519-key.jwt", &sign_text(&P256, &at("ES256", ed), &payload));
    write(t, "refuse-stranger.jwt", &sign_text(&STRANGER, &at("EdDSA", ed), &payload));
    write(t, "refuse-kid-unknown.jwt", &sign_text(&ED25519, &at("EdDSA", "unknown"), &payload));
    let with =
        |extra: (&str, Value)| members(&[("alg", json!("EdDSA")), ("kid", json!(ed)), ("typ", json!("at+jwt")), extra]);
    write(t, "refuse-crit.jwt", &sign_text(&ED25519, &with(("crit", json!(["exp"]))), &payload));
    write(t, "refuse-jku.jwt", &sign_text(&ED25519, &with(("jku", json!("https://evil.example/jwks"))), &payload));
    write(t, "refuse-jwk.jwt", &sign_text(&ED25519, &with(("jwk", public_jwk(&ED25519))), &payload));
    write(t, "refuse-b64-false.jwt", &sign_text(&ED25519, &with(("b64", json!(false))), &payload));
    // A repeated alg: the last one counts (RFC 7515 §4), and it is none.
    let repeated = format!(r#"{{"alg":"EdDSA","kid":"{ed}","typ":"at+jwt","alg":"none"}}"#);
    write(t, "refuse-repeated-alg.jwt", &sign_text(&ED25519, &repeated, &payload));
    let (input, sig) = good.rsplit_once('.').unwrap();
    write(t, "refuse-padded-signature.jwt", &format!("{input}.{sig}=="));
    // The last character of a 64-byte signature carries 2 bits of it and 4
    // spare bits, which must be zero: set the lowest.
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut stray = sig.to_owned();
    let last = ALPHABET.find(stray.pop().unwrap()).unwrap();
    stray.push(char::from(ALPHABET.as_bytes()[last | 1]));
    write(t, "refuse-stray-bits.jwt", &format!("{input}.{stray}"));
    write(t, "refuse-four-parts.jwt", &format!("{good}.{}", b64("x")));
    write(t, "refuse-unsigned.jwt", &format!("{input}."));

    let t = "ssf_set";
    let set = |members: &[(String, Value)]| object_text(members);
    let good = set(&ssf_set::good_members());
    let h = |typ: &str, alg: &str, kid: &str| ssf_set::header(typ, alg, kid);
    write(t, "accept-session-revoked.jwt", &sign_text(&ED25519, &h("secevent+jwt", "EdDSA", ed), &good));
    write(t, "accept-es256.jwt", &sign_text(&P256, &h("secevent+jwt", "ES256", ec), &good));
    let edited = |name: &str, v: Option<Value>| {
        let mut m = ssf_set::good_members();
        match v {
            Some(v) => m.push((name.to_owned(), v)),
            None => m.retain(|(n, _)| n != name),
        }
        sign_text(&ED25519, &h("secevent+jwt", "EdDSA", ed), &set(&m))
    };
    write(t, "refuse-sub.jwt", &edited("sub", Some(json!("usr_1"))));
    write(t, "refuse-exp.jwt", &edited("exp", Some(json!(NOW + 60))));
    write(t, "refuse-no-jti.jwt", &edited("jti", None));
    write(t, "refuse-typ-at-jwt.jwt", &sign_text(&ED25519, &h("at+jwt", "EdDSA", ed), &good));
    write(t, "refuse-alg-none.jwt", &sign_text(&ED25519, &h("secevent+jwt", "none", ed), &good));
    write(t, "refuse-alg-hs256.jwt", &sign_text(&ED25519, &h("secevent+jwt", "HS256", ed), &good));
    write(t, "refuse-stranger.jwt", &sign_text(&STRANGER, &h("secevent+jwt", "EdDSA", ed), &good));
    let mut two = ssf_set::good_members();
    two.retain(|(n, _)| n != "events");
    two.push((
        "events".into(),
        json!({ssf_set_events::SESSION_REVOKED: {}, ssf_set_events::VERIFICATION: {"state": "s"}}),
    ));
    write(t, "refuse-two-events.jwt", &sign_text(&ED25519, &h("secevent+jwt", "EdDSA", ed), &set(&two)));

    let t = "dpop_proof";
    let proof = |key: &mandate_jose::SigningKey, header: &[(&str, Value)], claims: &[(&str, Value)]| {
        sign_text(key, &members(header), &members(claims))
    };
    let header = |key: &mandate_jose::SigningKey| {
        vec![("typ", json!("dpop+jwt")), ("alg", json!(key.alg().name())), ("jwk", public_jwk(key))]
    };
    let post = vec![
        ("jti", json!("j-1")),
        ("htm", json!("POST")),
        ("htu", json!("https://as.example/oauth/token")),
        ("iat", json!(NOW)),
    ];
    write(t, "accept-token-endpoint-ed25519.jwt", &proof(&ED25519, &header(&ED25519), &post));
    write(t, "accept-token-endpoint-es256.jwt", &proof(&P256, &header(&P256), &post));
    write(t, "accept-stranger-key.jwt", &proof(&STRANGER, &header(&STRANGER), &post));
    let get = vec![
        ("jti", json!("j-2")),
        ("htm", json!("GET")),
        ("htu", json!("https://RS.example:8443/api/%69tems?page=2")),
        ("iat", json!(NOW - 60)),
        ("ath", json!(access_token_hash(ACCESS_TOKEN))),
        ("nonce", json!("n-1")),
    ];
    write(t, "accept-resource-es256.jwt", &proof(&P256, &header(&P256), &get));
    let mut stale = post.clone();
    stale[3] = ("iat", json!(NOW - 61));
    write(t, "refuse-stale.jwt", &proof(&ED25519, &header(&ED25519), &stale));
    let mut lower = post.clone();
    lower[1] = ("htm", json!("post"));
    write(t, "refuse-htm-lowercase.jwt", &proof(&ED25519, &header(&ED25519), &lower));
    let mut other_url = post.clone();
    other_url[2] = ("htu", json!("https://as.example/oauth/token/"));
    write(t, "refuse-htu-trailing-slash.jwt", &proof(&ED25519, &header(&ED25519), &other_url));
    let mut no_ath = get.clone();
    no_ath.remove(4);
    write(t, "refuse-resource-without-ath.jwt", &proof(&P256, &header(&P256), &no_ath));
    let mut wrong = header(&ED25519);
    wrong[2] = ("jwk", public_jwk(&STRANGER));
    write(t, "refuse-jwk-of-another-key.jwt", &proof(&ED25519, &wrong, &post));
    let mut private = public_jwk(&ED25519);
    private["d"] = json!("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A");
    let mut with_private = header(&ED25519);
    with_private[2] = ("jwk", private);
    write(t, "refuse-private-jwk.jwt", &proof(&ED25519, &with_private, &post));
    let mut hs = header(&ED25519);
    hs[1] = ("alg", json!("HS256"));
    write(t, "refuse-alg-hs256.jwt", &proof(&ED25519, &hs, &post));
    let mut es_on_ed = header(&ED25519);
    es_on_ed[1] = ("alg", json!("ES256"));
    write(t, "refuse-es256-alg-ed25519-jwk.jwt", &proof(&P256, &es_on_ed, &post));
    let mut typ = header(&ED25519);
    typ[0] = ("typ", json!("JWT"));
    write(t, "refuse-typ-jwt.jwt", &proof(&ED25519, &typ, &post));
    let mut jku = header(&ED25519);
    jku.push(("jku", json!("https://evil.example/jwks")));
    write(t, "refuse-jku.jwt", &proof(&ED25519, &jku, &post));
    let mut long_jti = post.clone();
    long_jti[0] = ("jti", json!("x".repeat(129)));
    write(t, "refuse-long-jti.jwt", &proof(&ED25519, &header(&ED25519), &long_jti));
    let mut iat_text = post.clone();
    iat_text[3] = ("iat", json!(NOW.to_string()));
    write(t, "refuse-iat-string.jwt", &proof(&ED25519, &header(&ED25519), &iat_text));
    let mut repeated = post.clone();
    repeated.push(("jti", json!("j-3")));
    write(t, "refuse-repeated-jti.jwt", &proof(&ED25519, &header(&ED25519), &repeated));
}
