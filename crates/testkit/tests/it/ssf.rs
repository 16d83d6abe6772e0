//! The Shared Signals transmitter over HTTP (SSF 1.0, CAEP 1.0, RFC 8935,
//! RFC 8936; DESIGN §11): the calendar of `World` is the receiver. Its
//! streams, who may manage them, every event kind, polling with
//! acknowledgement and redelivery, and pushing to a local receiver that
//! goes down, pauses the stream, and gets every event in order on resume.
// Test code indexes JSON freely: a missing member reads as null and fails
// the comparison that follows.
#![allow(clippy::indexing_slicing, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mandate_jose::JwkSet;
use mandate_jose::jws::Unverified;
use mandate_testkit::TestServer;
use mandate_testkit::scenarios::{CAL, World, claims};
use reqwest::Method;
use serde_json::{Value, json};

const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const CREDENTIAL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
const CLAIMS_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/token-claims-change";
const STREAM_UPDATED: &str = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated";
const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
const POLL: &str = "urn:ietf:rfc:8936";
const PUSH: &str = "urn:ietf:rfc:8935";

async fn world() -> Result<World> {
    World::new(TestServer::start_with(|c| c.dev_loopback_fetch = true).await?).await
}

/// The calendar's token for `scope` on the issuer.
async fn receiver_token(w: &World, scope: &str) -> Result<String> {
    let (st, body) = w.s.token(&w.calendar, &w.s.issuer, scope).await?;
    ensure!(st == 200, "{scope} token: {st} {body}");
    Ok(body["access_token"].as_str().context("access_token")?.to_owned())
}

async fn create(w: &World, token: &str, body: Value) -> Result<Value> {
    let (st, out) = w.s.call(Method::POST, "/ssf/streams", Some(token), Some(body)).await?;
    ensure!(st == 201, "create: {st} {out}");
    Ok(out)
}

/// An RFC 8936 poll; short (`returnImmediately` true) unless `body` says.
async fn poll(w: &World, token: &str, stream: &Value, mut body: Value) -> Result<Value> {
    if let Some(m) = body.as_object_mut() {
        m.entry("returnImmediately").or_insert(json!(true));
    }
    let url = stream["delivery"]["endpoint_url"].as_str().context("endpoint_url")?;
    let path = url.strip_prefix(&w.s.issuer).context("the poll URL is the issuer's")?;
    let (st, out) = w.s.call(Method::POST, path, Some(token), Some(body)).await?;
    ensure!(st == 200, "poll: {st} {out}");
    Ok(out)
}

/// Checks a SET's signature against `/jwks.json` and its RFC 8417 shape;
/// its header and claims.
async fn verified(w: &World, set: &str) -> Result<(Value, Value)> {
    let (_, jwks) = w.s.call(Method::GET, "/jwks.json", None, None).await?;
    let keys = JwkSet::from_json_external(&jwks)?;
    let jws = Unverified::parse(set, false)?;
    jws.verify(&keys)?;
    ensure!(jws.header.typ.as_deref() == Some("secevent+jwt"), "typ: {:?}", jws.header.typ);
    let header = json!({"alg": jws.header.alg, "kid": jws.header.kid, "typ": jws.header.typ});
    let c = claims(set);
    ensure!(c["iss"] == w.s.issuer.as_str() && c["aud"] == CAL, "iss and aud: {c}");
    ensure!(c.get("sub").is_none() && c.get("exp").is_none(), "a SET has no sub or exp: {c}");
    ensure!(c["iat"].is_i64() && c["jti"].is_string(), "{c}");
    ensure!(c["events"].as_object().is_some_and(|e| e.len() == 1), "exactly one event: {c}");
    // The CAEP interoperability profile's formats (ADR 0039): opaque for
    // the stream's own events, iss_sub (in a complex subject for a
    // session) for the others.
    let (uri, _) = c["events"].as_object().and_then(|m| m.iter().next()).context("an event")?;
    let sub = &c["sub_id"];
    let shaped = match uri.as_str() {
        SESSION_REVOKED => {
            sub["format"] == "complex"
                && sub["session"]["format"] == "opaque"
                && sub["session"]["id"].is_string()
                && sub["user"]["format"] == "iss_sub"
                && sub["user"]["iss"] == w.s.issuer.as_str()
                && sub["user"]["sub"].is_string()
                && sub.as_object().is_some_and(|o| o.len() == 3)
        }
        CREDENTIAL_CHANGE | CLAIMS_CHANGE => {
            sub["format"] == "iss_sub"
                && sub["iss"] == w.s.issuer.as_str()
                && sub["sub"].is_string()
                && sub.as_object().is_some_and(|o| o.len() == 3)
        }
        _ => sub["format"] == "opaque" && sub["id"].is_string() && sub.as_object().is_some_and(|o| o.len() == 2),
    };
    ensure!(shaped, "sub_id: {c}");
    Ok((header, c))
}

/// Mandate's id of what a SET is about: the session (a token's `jti`) of a
/// complex subject, the `sub` of an `iss_sub` one, an `opaque` id.
fn subject_of(c: &Value) -> String {
    let sub = &c["sub_id"];
    let id = match sub["format"].as_str() {
        Some("complex") => &sub["session"]["id"],
        Some("iss_sub") => &sub["sub"],
        _ => &sub["id"],
    };
    id.as_str().unwrap_or_default().to_owned()
}

/// The SETs of a poll, verified, in `seq` order.
async fn polled(w: &World, token: &str, stream: &Value, body: Value) -> Result<(Vec<(String, Value)>, Value)> {
    let out = poll(w, token, stream, body).await?;
    let mut sets = Vec::new();
    for (jti, set) in out["sets"].as_object().context("sets")? {
        let (_, c) = verified(w, set.as_str().context("a SET")?).await?;
        ensure!(c["jti"] == jti.as_str(), "the key is the SET's jti");
        sets.push((jti.clone(), c));
    }
    sets.sort_by_key(|(jti, _)| jti.rsplit('.').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(u64::MAX));
    Ok((sets, out))
}

/// The planner's first tokens under a self-authorised grant of `read`.
async fn planner_tokens(w: &World) -> Result<Value> {
    w.granted(&w.planner, "read").await
}

fn jti_of(token: &Value) -> String {
    claims(token["access_token"].as_str().unwrap_or_default())["jti"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn configuration_names_every_endpoint() -> Result<()> {
    let w = world().await?;
    let (st, c) = w.s.call(Method::GET, "/.well-known/ssf-configuration", None, None).await?;
    ensure!(st == 200, "{st} {c}");
    let iss = w.s.issuer.as_str();
    ensure!(c["spec_version"] == "1_0" && c["issuer"] == iss, "{c}");
    ensure!(c["jwks_uri"] == format!("{iss}/jwks.json"));
    ensure!(c["delivery_methods_supported"] == json!([PUSH, POLL]));
    for (k, path) in [
        ("configuration_endpoint", "/ssf/streams"),
        ("status_endpoint", "/ssf/status"),
        ("verification_endpoint", "/ssf/verify"),
        ("add_subject_endpoint", "/ssf/subjects:add"),
        ("remove_subject_endpoint", "/ssf/subjects:remove"),
    ] {
        ensure!(c[k] == format!("{iss}{path}"), "{k}: {c}");
    }
    ensure!(c["authorization_schemes"] == json!([{"spec_urn": "urn:ietf:rfc:6749"}]));
    ensure!(c["default_subjects"] == "ALL");
    Ok(())
}

#[tokio::test]
async fn a_stream_is_created_read_changed_and_deleted() -> Result<()> {
    let w = world().await?;
    let manage = receiver_token(&w, "ssf.manage").await?;
    let s = create(&w, &manage, json!({"delivery": {"method": POLL}, "description": "calendar"})).await?;
    let id = s["stream_id"].as_str().context("stream_id")?.to_owned();
    ensure!(s["iss"] == w.s.issuer.as_str() && s["aud"] == CAL, "{s}");
    ensure!(s["delivery"]["endpoint_url"] == format!("{}/ssf/poll/{id}", w.s.issuer), "{s}");
    ensure!(s["events_delivered"].as_array().is_some_and(|e| e.len() == 3), "every CAEP event by default: {s}");
    ensure!(s["description"] == "calendar");
    let (st, one) = w.s.call(Method::GET, &format!("/ssf/streams?stream_id={id}"), Some(&manage), None).await?;
    ensure!(st == 200 && one == s, "{st} {one}");
    let (st, all) = w.s.call(Method::GET, "/ssf/streams", Some(&manage), None).await?;
    ensure!(st == 200 && all == json!([s]), "{st} {all}");
    // PATCH changes what is sent.
    let patch = json!({"stream_id": id, "events_requested": [SESSION_REVOKED]});
    let (st, patched) = w.s.call(Method::PATCH, "/ssf/streams", Some(&manage), Some(patch)).await?;
    ensure!(st == 200 && patched["events_delivered"] == json!([SESSION_REVOKED]), "{st} {patched}");
    ensure!(patched["description"] == "calendar", "PATCH kept the description");
    // PUT replaces: what is not sent goes back to its default.
    let put = json!({"stream_id": id, "delivery": {"method": POLL}, "events_requested": [SESSION_REVOKED, CREDENTIAL_CHANGE]});
    let (st, put) = w.s.call(Method::PUT, "/ssf/streams", Some(&manage), Some(put)).await?;
    ensure!(st == 200 && put["events_delivered"].as_array().is_some_and(|e| e.len() == 2), "{st} {put}");
    ensure!(put.get("description").is_none(), "PUT dropped the description: {put}");
    // Status.
    let (st, status) = w.s.call(Method::GET, &format!("/ssf/status?stream_id={id}"), Some(&manage), None).await?;
    ensure!(st == 200 && status == json!({"stream_id": id, "status": "enabled"}), "{st} {status}");
    let paused = json!({"stream_id": id, "status": "paused", "reason": "maintenance"});
    let (st, out) = w.s.call(Method::POST, "/ssf/status", Some(&manage), Some(paused.clone())).await?;
    ensure!(st == 200 && out == paused, "{st} {out}");
    let (_, status) = w.s.call(Method::GET, &format!("/ssf/status?stream_id={id}"), Some(&manage), None).await?;
    ensure!(status == paused, "{status}");
    let audited = w.s.audit("type=ssf.stream_status").await?;
    ensure!(audited.len() == 1 && audited[0]["reason"] == "enabled -> paused by the receiver", "{audited:?}");
    ensure!(w.s.audit("type=ssf.stream_created").await?.len() == 1);
    ensure!(w.s.audit("type=ssf.stream_updated").await?.len() == 2);
    // Delete.
    let (st, _) = w.s.call(Method::DELETE, &format!("/ssf/streams?stream_id={id}"), Some(&manage), None).await?;
    ensure!(st == 204, "delete: {st}");
    let (st, _) = w.s.call(Method::GET, &format!("/ssf/streams?stream_id={id}"), Some(&manage), None).await?;
    ensure!(st == 404, "a deleted stream: {st}");
    ensure!(w.s.audit("type=ssf.stream_deleted").await?.len() == 1);
    Ok(())
}

#[tokio::test]
async fn only_the_receiver_with_its_scope_manages_its_streams() -> Result<()> {
    let w = world().await?;
    let manage = receiver_token(&w, "ssf.manage").await?;
    let read = receiver_token(&w, "ssf.read").await?;
    let s = create(&w, &manage, json!({"delivery": {"method": POLL}})).await?;
    let id = s["stream_id"].as_str().context("stream_id")?.to_owned();
    let get = format!("/ssf/streams?stream_id={id}");
    // No token, a token that is not a receiver's, a token without an SSF scope.
    let (st, body) = w.s.call(Method::GET, &get, None, None).await?;
    ensure!(st == 401 && body["err"] == "authentication_failed", "{st} {body}");
    let (st, _) = w.s.call(Method::GET, &get, Some("not.a.token"), None).await?;
    ensure!(st == 401, "a forged token: {st}");
    let (st, body) = w.s.call(Method::GET, &get, Some(&w.checker), None).await?;
    ensure!(st == 403 && body["err"] == "access_denied", "mandate:check: {st} {body}");
    let agent_token = w.granted(&w.planner, "read").await?;
    let (st, _) = w.s.call(Method::GET, &get, agent_token["access_token"].as_str(), None).await?;
    ensure!(st == 403, "an agent's token: {st}");
    // ssf.read reads and polls, but does not manage.
    let (st, _) = w.s.call(Method::GET, &get, Some(&read), None).await?;
    ensure!(st == 200, "read with ssf.read: {st}");
    poll(&w, &read, &s, json!({})).await?;
    let (st, _) = w.s.call(Method::POST, "/ssf/streams", Some(&read), Some(json!({}))).await?;
    ensure!(st == 403, "create with ssf.read: {st}");
    let (st, _) = w.s.call(Method::DELETE, &get, Some(&read), None).await?;
    ensure!(st == 403, "delete with ssf.read: {st}");
    // Another resource sees none of the calendar's streams.
    let other_key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
    let other =
        w.s.admin(
            Method::POST,
            "/v1/resources",
            Some(json!({"identifier": "https://mail.example", "name": "Mail", "scopes": {"read": ["list"]},
                         "jwks": {"keys": [other_key.public().to_json()]}})),
        )
        .await?
        .1;
    let mail = mandate_testkit::TestAgent { id: other["id"].as_str().context("id")?.to_owned(), key: other_key };
    let (st, body) = w.s.token(&mail, &w.s.issuer, "ssf.manage").await?;
    ensure!(st == 200, "{st} {body}");
    let mail_token = body["access_token"].as_str().context("token")?.to_owned();
    let (st, _) = w.s.call(Method::GET, &get, Some(&mail_token), None).await?;
    ensure!(st == 404, "another resource's stream: {st}");
    let (st, all) = w.s.call(Method::GET, "/ssf/streams", Some(&mail_token), None).await?;
    ensure!(st == 200 && all == json!([]), "{st} {all}");
    let (st, _) = w.s.call(Method::DELETE, &get, Some(&mail_token), None).await?;
    ensure!(st == 404, "another resource deleted the stream: {st}");
    let (st, _) =
        w.s.call(Method::POST, &format!("/ssf/poll/{id}"), Some(&mail_token), Some(json!({"returnImmediately": true})))
            .await?;
    ensure!(st == 404, "another resource polled the stream: {st}");
    let (st, _) = w.s.call(Method::GET, &get, Some(&manage), None).await?;
    ensure!(st == 200, "the stream is still there");
    // Only the built-in scopes on the issuer: a resource cannot get others.
    let (st, _) = w.s.token(&w.calendar, &w.s.issuer, "ssf.manage read").await?;
    ensure!(st != 200, "a resource got a scope beyond the built-in ones");
    Ok(())
}

#[tokio::test]
async fn bad_inputs_change_nothing() -> Result<()> {
    let w = world().await?;
    let manage = receiver_token(&w, "ssf.manage").await?;
    let s = create(&w, &manage, json!({"delivery": {"method": POLL}})).await?;
    let id = s["stream_id"].as_str().context("stream_id")?.to_owned();
    let bad: Vec<(Method, &str, Value, u16)> = vec![
        (Method::POST, "/ssf/streams", json!({"delivery": {"method": "urn:example:carrier-pigeon"}}), 400),
        (Method::POST, "/ssf/streams", json!({"delivery": {"method": PUSH}}), 400),
        (
            Method::POST,
            "/ssf/streams",
            json!({"delivery": {"method": PUSH, "endpoint_url": "http://example.com/x"}}),
            400,
        ),
        (
            Method::POST,
            "/ssf/streams",
            json!({"delivery": {"method": PUSH, "endpoint_url": "https://10.0.0.1/x"}}),
            400,
        ),
        (Method::POST, "/ssf/streams", json!({"stream_id": id, "delivery": {"method": POLL}}), 400),
        (Method::POST, "/ssf/streams", json!({"description": "x".repeat(300)}), 400),
        (Method::PATCH, "/ssf/streams", json!({"description": "no id"}), 400),
        (Method::PATCH, "/ssf/streams", json!({"stream_id": "sst_01ARZ3NDEKTSV4RRFFQ69G5FAV"}), 404),
        (Method::POST, "/ssf/status", json!({"stream_id": id, "status": "sleeping"}), 400),
        (Method::POST, "/ssf/verify", json!({"stream_id": id, "state": "s", "extra": 1}), 400),
        (Method::POST, "/ssf/subjects:add", json!({"stream_id": id, "subject": "alice"}), 400),
        (
            Method::POST,
            "/ssf/subjects:remove",
            json!({"stream_id": id, "subject": {"format": "opaque", "id": "x", "extra": 1}}),
            400,
        ),
        (
            Method::POST,
            "/ssf/subjects:remove",
            json!({"stream_id": id, "subject": {"format": "opaque", "id": ""}}),
            400,
        ),
        (Method::POST, "/ssf/subjects:remove", json!({"stream_id": id, "subject": {"format": "opaque"}}), 400),
        (Method::POST, "/ssf/subjects:remove", json!({"stream_id": id, "subject": {"id": "x"}}), 400),
        (
            Method::POST,
            "/ssf/subjects:remove",
            json!({"stream_id": "sst_01ARZ3NDEKTSV4RRFFQ69G5FAV", "subject": {"format": "opaque", "id": "x"}}),
            404,
        ),
        // RFC 9493 shapes, exactly; an RFC 5322 address; an issuer URL.
        (
            Method::POST,
            "/ssf/subjects:remove",
            json!({"stream_id": id, "subject": {"format": "email", "email": "alice at example.com"}}),
            400,
        ),
        (
            Method::POST,
            "/ssf/subjects:remove",
            json!({"stream_id": id, "subject": {"format": "email", "email": "Alice <alice@example.com>"}}),
            400,
        ),
        (
            Method::POST,
            "/ssf/subjects:add",
            json!({"stream_id": id, "subject": {"format": "email", "email": "alice@example.com", "id": "x"}}),
            400,
        ),
        (
            Method::POST,
            "/ssf/subjects:remove",
            json!({"stream_id": id, "subject": {"format": "iss_sub", "iss": "mandate", "sub": "usr_x"}}),
            400,
        ),
        (
            Method::POST,
            "/ssf/subjects:remove",
            json!({"stream_id": id, "subject": {"format": "iss_sub", "iss": "https://idp.example"}}),
            400,
        ),
        (Method::POST, "/ssf/subjects:remove", json!({"stream_id": id, "subject": {"format": "complex"}}), 400),
        (
            Method::POST,
            "/ssf/subjects:remove",
            json!({"stream_id": id, "subject": {"format": "complex", "user": "alice@example.com"}}),
            400,
        ),
        // Well formed, naming nobody: not recognized (SSF §8.1.3).
        (
            Method::POST,
            "/ssf/subjects:remove",
            json!({"stream_id": id, "subject": {"format": "email", "email": "carol@example.com"}}),
            404,
        ),
        (
            Method::POST,
            "/ssf/subjects:add",
            json!({"stream_id": id, "subject": {"format": "iss_sub", "iss": "https://idp.example", "sub": "carol"}}),
            404,
        ),
    ];
    for (method, path, body, expected) in bad {
        let (st, out) = w.s.call(method.clone(), path, Some(&manage), Some(body.clone())).await?;
        ensure!(st == expected, "{method} {path} {body}: {st} {out}");
        ensure!(out["err"].is_string() && out["description"].is_string(), "an SSF error body: {out}");
    }
    // Adding a subject that was never removed changes nothing (every
    // subject is in already).
    let add = json!({"stream_id": id, "subject": {"format": "opaque", "id": "tok_x"}});
    let (st, _) = w.s.call(Method::POST, "/ssf/subjects:add", Some(&manage), Some(add)).await?;
    ensure!(st == 200, "add subject: {st}");
    let (_, all) = w.s.call(Method::GET, "/ssf/streams", Some(&manage), None).await?;
    ensure!(all == json!([s]), "the stream changed: {all}");
    let (_, status) = w.s.call(Method::GET, &format!("/ssf/status?stream_id={id}"), Some(&manage), None).await?;
    ensure!(status["status"] == "enabled", "{status}");
    ensure!(w.s.audit("type=ssf.stream_created").await?.len() == 1, "one stream was created");
    ensure!(w.s.audit("type=ssf.stream_status").await?.is_empty(), "no status change");
    let (sets, _) = polled(&w, &manage, &s, json!({})).await?;
    ensure!(sets.is_empty(), "no event was queued: {sets:?}");
    Ok(())
}

#[tokio::test]
async fn revocations_are_polled_and_redelivered_until_acknowledged() -> Result<()> {
    let w = world().await?;
    let manage = receiver_token(&w, "ssf.manage").await?;
    let s = create(&w, &manage, json!({"delivery": {"method": POLL}})).await?;
    let tokens = planner_tokens(&w).await?;
    let jti = jti_of(&tokens);
    let grant =
        claims(tokens["access_token"].as_str().context("token")?)["grant_id"].as_str().context("grant")?.to_owned();
    let (st, body) = w.s.admin(Method::POST, &format!("/v1/grants/{grant}/revoke"), None).await?;
    ensure!(st == 200, "revoke: {st} {body}");
    let (sets, out) = polled(&w, &manage, &s, json!({"returnImmediately": true})).await?;
    ensure!(out["moreAvailable"] == false);
    // The calendar's own checker token is for the issuer, not the calendar:
    // one SET, for the planner's token.
    ensure!(sets.len() == 1, "{sets:?}");
    let (set_jti, c) = &sets[0];
    // The session is the token; the user the person it was issued for, as
    // the token's own iss and sub name her.
    let expected = json!({
        "format": "complex",
        "session": {"format": "opaque", "id": jti},
        "user": {"format": "iss_sub", "iss": w.s.issuer, "sub": w.alice},
    });
    ensure!(c["sub_id"] == expected, "{c}");
    let e = &c["events"][SESSION_REVOKED];
    ensure!(e["initiating_entity"] == "admin" && e["reason_admin"]["en"] == "the grant was revoked", "{e}");
    ensure!(e["event_timestamp"] == w.s.now(), "{e}");
    // Not acknowledged: returned again.
    let (again, _) = polled(&w, &manage, &s, json!({})).await?;
    ensure!(again.iter().map(|(j, _)| j).collect::<Vec<_>>() == vec![set_jti], "redelivered: {again:?}");
    // Acknowledged: gone; an unknown jti in ack changes nothing.
    let (after, _) = polled(&w, &manage, &s, json!({"ack": [set_jti, "sst_x.1"], "returnImmediately": true})).await?;
    ensure!(after.is_empty(), "acknowledged SETs came back: {after:?}");
    // maxEvents bounds a poll; moreAvailable says more wait.
    let more = planner_tokens(&w).await?;
    let more2 = planner_tokens(&w).await?;
    for t in [&more, &more2] {
        let g = claims(t["access_token"].as_str().context("token")?)["grant_id"].as_str().context("grant")?.to_owned();
        w.s.admin(Method::POST, &format!("/v1/grants/{g}/revoke"), None).await?;
    }
    let (first, out) = polled(&w, &manage, &s, json!({"maxEvents": 1})).await?;
    ensure!(first.len() == 1 && out["moreAvailable"] == true, "{out}");
    ensure!(subject_of(&first[0].1) == jti_of(&more), "the oldest first: {first:?}");
    let acked = first[0].0.clone();
    let (second, out) = polled(&w, &manage, &s, json!({"maxEvents": 5, "ack": [acked]})).await?;
    ensure!(second.len() == 1 && out["moreAvailable"] == false, "{out}");
    ensure!(subject_of(&second[0].1) == jti_of(&more2));
    // A disabled stream drops what waits and takes nothing more.
    let disable = json!({"stream_id": s["stream_id"], "status": "disabled"});
    w.s.call(Method::POST, "/ssf/status", Some(&manage), Some(disable)).await?;
    let enable = json!({"stream_id": s["stream_id"], "status": "enabled"});
    w.s.call(Method::POST, "/ssf/status", Some(&manage), Some(enable)).await?;
    let (none, _) = polled(&w, &manage, &s, json!({})).await?;
    ensure!(none.is_empty(), "a disabled stream kept events: {none:?}");
    Ok(())
}

#[tokio::test]
async fn every_revocation_path_and_event_kind_reaches_the_stream() -> Result<()> {
    let w = world().await?;
    let manage = receiver_token(&w, "ssf.manage").await?;
    let s = create(&w, &manage, json!({"delivery": {"method": POLL}})).await?;
    // RFC 7009 revocation by the holder: initiating_entity user.
    let t1 = planner_tokens(&w).await?;
    let a = w.s.assertion(&w.planner, json!({}));
    let (st, _) =
        w.s.form_asserted(&a, "/oauth/revoke", &[("token", t1["access_token"].as_str().context("token")?)]).await?;
    ensure!(st == 200, "revoke: {st}");
    // The refresh token's family: the second token of t2's family.
    let t2 = planner_tokens(&w).await?;
    let a = w.s.assertion(&w.planner, json!({}));
    let (st, _) =
        w.s.form_asserted(&a, "/oauth/revoke", &[("token", t2["refresh_token"].as_str().context("refresh")?)]).await?;
    ensure!(st == 200, "revoke refresh: {st}");
    // A group taken from Alice while her planner holds a live token.
    let t3 = planner_tokens(&w).await?;
    let (st, _) = w.s.admin(Method::PATCH, &format!("/v1/users/{}", w.alice), Some(json!({"groups": []}))).await?;
    ensure!(st == 200);
    // The planner's workload identity rules change: credential-change.
    let (st, body) =
        w.s.admin(Method::PATCH, &format!("/v1/agents/{}", w.planner.id), Some(json!({"federated_credentials": []})))
            .await?;
    ensure!(st == 200, "{st} {body}");
    // The admin suspends the planner: its live token is revoked.
    let (st, _) = w.s.admin(Method::POST, &format!("/v1/agents/{}/suspend", w.planner.id), None).await?;
    ensure!(st == 200);
    // A verification.
    let (st, _) = w
        .s
        .call(Method::POST, "/ssf/verify", Some(&manage), Some(json!({"stream_id": s["stream_id"], "state": "abc"})))
        .await?;
    ensure!(st == 204);
    let (sets, _) = polled(&w, &manage, &s, json!({})).await?;
    let kinds: Vec<(String, String, String)> = sets
        .iter()
        .map(|(_, c)| {
            let (uri, e) = c["events"].as_object().and_then(|m| m.iter().next()).unwrap();
            (uri.clone(), subject_of(c), e["initiating_entity"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    let expected = vec![
        (SESSION_REVOKED.to_owned(), jti_of(&t1), "user".to_owned()),
        (SESSION_REVOKED.to_owned(), jti_of(&t2), "user".to_owned()),
        (CLAIMS_CHANGE.to_owned(), w.alice.clone(), "admin".to_owned()),
        (CREDENTIAL_CHANGE.to_owned(), w.planner.id.clone(), "admin".to_owned()),
        (SESSION_REVOKED.to_owned(), jti_of(&t3), "admin".to_owned()),
        (VERIFICATION.to_owned(), s["stream_id"].as_str().unwrap_or_default().to_owned(), String::new()),
    ];
    ensure!(kinds == expected, "in order:\n{kinds:#?}\nexpected:\n{expected:#?}");
    let claims_change = &sets[2].1["events"][CLAIMS_CHANGE];
    ensure!(claims_change["claims"] == json!({"groups": []}), "{claims_change}");
    ensure!(claims_change["reason_admin"]["en"] == "groups removed: staff", "{claims_change}");
    let cred = &sets[3].1["events"][CREDENTIAL_CHANGE];
    ensure!(cred["change_type"] == "update" && cred["credential_type"] == "x509", "{cred}");
    ensure!(sets[5].1["events"][VERIFICATION] == json!({"state": "abc"}), "{:?}", sets[5]);
    Ok(())
}

/// An RFC 8935 receiver on loopback: records every SET and answers with
/// the next scripted status (then 202).
#[derive(Clone, Default)]
struct PushReceiver {
    got: Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
    url: String,
}

impl PushReceiver {
    async fn start(statuses: &[u16]) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://127.0.0.1:{}/events", listener.local_addr()?.port());
        let r = PushReceiver {
            url,
            statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())),
            ..Default::default()
        };
        let state = r.clone();
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(
                |axum::extract::State(s): axum::extract::State<PushReceiver>,
                 headers: axum::http::HeaderMap,
                 body: String| async move {
                    let status = s.statuses.lock().unwrap().pop_front().unwrap_or(202);
                    if status == 202 {
                        s.got.lock().unwrap().push((headers, body));
                    }
                    axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::ACCEPTED)
                },
            ),
        );
        tokio::spawn(axum::serve(listener, app.with_state(state)).into_future());
        Ok(r)
    }

    fn got(&self) -> Vec<(axum::http::HeaderMap, String)> {
        self.got.lock().unwrap().clone()
    }

    fn attempts_left(&self) -> usize {
        self.statuses.lock().unwrap().len()
    }
}

#[tokio::test]
async fn a_receiver_that_is_down_pauses_its_stream_and_gets_every_event_in_order_on_resume() -> Result<()> {
    let w = world().await?;
    let manage = receiver_token(&w, "ssf.manage").await?;
    // Down for five attempts (the bound), then up.
    let rx = PushReceiver::start(&[503, 503, 503, 503, 503]).await?;
    let s = create(
        &w,
        &manage,
        json!({"delivery": {"method": PUSH, "endpoint_url": rx.url, "authorization_header": "Bearer rx-secret"}}),
    )
    .await?;
    ensure!(s["delivery"] == json!({"method": PUSH, "endpoint_url": rx.url}), "no authorization_header echoed: {s}");
    let id = s["stream_id"].as_str().context("stream_id")?.to_owned();
    let first = planner_tokens(&w).await?;
    let g = claims(first["access_token"].as_str().context("token")?)["grant_id"].as_str().context("grant")?.to_owned();
    w.s.admin(Method::POST, &format!("/v1/grants/{g}/revoke"), None).await?;
    // The worker retries with backoff; the clock is moved on until the
    // receiver has refused every attempt and the stream is paused.
    let mut paused = false;
    for _ in 0..200 {
        w.s.clock.advance(time::Duration::seconds(5));
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (_, st) = w.s.call(Method::GET, &format!("/ssf/status?stream_id={id}"), Some(&manage), None).await?;
        if st["status"] == "paused" {
            paused = true;
            ensure!(st["reason"].as_str().is_some_and(|r| r.starts_with("5 failed pushes in a row")), "{st}");
            break;
        }
    }
    ensure!(paused, "the stream was not paused; {} attempts were not made", rx.attempts_left());
    ensure!(rx.attempts_left() == 0 && rx.got().is_empty());
    let audited = w.s.audit("type=ssf.stream_status").await?;
    ensure!(audited.len() == 1 && audited[0]["actor"] == "mandate", "{audited:?}");
    // Paused: events wait.
    let mut later = Vec::new();
    for _ in 0..3 {
        let t = planner_tokens(&w).await?;
        let g = claims(t["access_token"].as_str().context("token")?)["grant_id"].as_str().context("grant")?.to_owned();
        w.s.admin(Method::POST, &format!("/v1/grants/{g}/revoke"), None).await?;
        later.push(jti_of(&t));
    }
    w.s.clock.advance(time::Duration::seconds(60));
    tokio::time::sleep(Duration::from_millis(600)).await;
    ensure!(rx.got().is_empty(), "a paused stream pushed");
    // Enabled by the receiver: everything, in order, from where it stopped.
    let (st, _) =
        w.s.call(Method::POST, "/ssf/status", Some(&manage), Some(json!({"stream_id": id, "status": "enabled"})))
            .await?;
    ensure!(st == 200);
    let mut got = Vec::new();
    for _ in 0..100 {
        got = rx.got();
        if got.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(got.len() == 5, "{} SETs arrived", got.len());
    let mut subjects = Vec::new();
    for (headers, set) in &got {
        ensure!(headers.get("content-type").is_some_and(|v| v == "application/secevent+jwt"));
        ensure!(headers.get("authorization").is_some_and(|v| v == "Bearer rx-secret"));
        let (_, c) = verified(&w, set).await?;
        let (uri, _) = c["events"].as_object().and_then(|m| m.iter().next()).context("event")?;
        subjects.push((uri.clone(), subject_of(&c)));
    }
    let mut expected = vec![(SESSION_REVOKED.to_owned(), jti_of(&first))];
    // The pause itself, queued when it happened.
    expected.push((STREAM_UPDATED.to_owned(), id.clone()));
    expected.extend(later.iter().map(|j| (SESSION_REVOKED.to_owned(), j.clone())));
    ensure!(subjects == expected, "in order:\n{subjects:#?}\nexpected:\n{expected:#?}");
    let updated = claims(&got[1].1);
    ensure!(updated["events"][STREAM_UPDATED]["status"] == "paused", "{updated}");
    let (_, st) = w.s.call(Method::GET, &format!("/ssf/status?stream_id={id}"), Some(&manage), None).await?;
    ensure!(st["status"] == "enabled");
    Ok(())
}

#[tokio::test]
async fn a_set_the_receiver_refuses_is_dropped_and_the_stream_goes_on() -> Result<()> {
    let w = world().await?;
    let manage = receiver_token(&w, "ssf.manage").await?;
    let rx = PushReceiver::start(&[400]).await?;
    let s = create(&w, &manage, json!({"delivery": {"method": PUSH, "endpoint_url": rx.url}})).await?;
    let (st, _) = w
        .s
        .call(Method::POST, "/ssf/verify", Some(&manage), Some(json!({"stream_id": s["stream_id"], "state": "one"})))
        .await?;
    ensure!(st == 204);
    // min_verification_interval apart.
    w.s.clock.advance(time::Duration::seconds(15));
    let (st, _) = w
        .s
        .call(Method::POST, "/ssf/verify", Some(&manage), Some(json!({"stream_id": s["stream_id"], "state": "two"})))
        .await?;
    ensure!(st == 204);
    let mut got = Vec::new();
    for _ in 0..100 {
        got = rx.got();
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(got.len() == 1, "{got:?}");
    let c = claims(&got[0].1);
    ensure!(c["events"][VERIFICATION]["state"] == "two", "the refused SET was not sent again: {c}");
    let (_, st) =
        w.s.call(
            Method::GET,
            &format!("/ssf/status?stream_id={}", s["stream_id"].as_str().unwrap_or_default()),
            Some(&manage),
            None,
        )
        .await?;
    ensure!(st["status"] == "enabled", "{st}");
    Ok(())
}

#[tokio::test]
async fn sets_are_signed_with_rs256_when_asked_and_access_tokens_are_not() -> Result<()> {
    let w = World::new(
        TestServer::start_with(|c| {
            c.dev_loopback_fetch = true;
            c.ssf_rs256 = true;
        })
        .await?,
    )
    .await?;
    let manage = receiver_token(&w, "ssf.manage").await?;
    let s = create(&w, &manage, json!({"delivery": {"method": POLL}})).await?;
    w.s.call(Method::POST, "/ssf/verify", Some(&manage), Some(json!({"stream_id": s["stream_id"], "state": "r"})))
        .await?;
    let out = poll(&w, &manage, &s, json!({})).await?;
    let set = out["sets"].as_object().and_then(|m| m.values().next()).and_then(Value::as_str).context("a SET")?;
    let (header, _) = verified(&w, set).await?;
    ensure!(header["alg"] == "RS256", "{header}");
    let (_, jwks) = w.s.call(Method::GET, "/jwks.json", None, None).await?;
    let rsa: Vec<&Value> = jwks["keys"].as_array().context("keys")?.iter().filter(|k| k["kty"] == "RSA").collect();
    ensure!(rsa.len() == 1 && rsa[0]["alg"] == "RS256" && rsa[0]["kid"] == header["kid"], "{jwks}");
    // Resource servers read the set without it: no access token verifies
    // under RS256.
    let token_keys = JwkSet::from_issuer_json(&jwks)?;
    ensure!(token_keys.keys.iter().all(|k| k.alg != mandate_jose::KeyAlg::RS256));
    ensure!(JwkSet::from_json(&jwks).is_err(), "the strict parser refuses the RSA key");
    let tokens = planner_tokens(&w).await?;
    let access = tokens["access_token"].as_str().context("token")?;
    ensure!(Unverified::parse(access, false)?.header.alg == "EdDSA");
    // A token signed with the SET key is refused everywhere.
    let introspected = w.s.introspect(access).await?;
    ensure!(introspected["active"] == true);
    // Rotation replaces the RSA key too.
    let (st, _) = w.s.admin(Method::POST, "/v1/keys/rotate", None).await?;
    ensure!(st == 200);
    let (_, rotated) = w.s.call(Method::GET, "/jwks.json", None, None).await?;
    let rsa_kids = |set: &Value| -> Vec<Value> {
        set["keys"].as_array().into_iter().flatten().filter(|k| k["kty"] == "RSA").map(|k| k["kid"].clone()).collect()
    };
    // The new key signs; the retired one stays published through the grace
    // period (token lifetime and leeway), for a SET signed just before.
    let kids = rsa_kids(&rotated);
    ensure!(kids.len() == 2 && kids[0] != rsa[0]["kid"] && kids[1] == rsa[0]["kid"], "{rotated}");
    w.s.clock.advance(time::Duration::seconds(15));
    let (st, _) =
        w.s.call(Method::POST, "/ssf/verify", Some(&manage), Some(json!({"stream_id": s["stream_id"], "state": "r2"})))
            .await?;
    ensure!(st == 204);
    let out = poll(&w, &manage, &s, json!({})).await?;
    let mut signed_by = None;
    for set in out["sets"].as_object().context("sets")?.values() {
        let (header, c) = verified(&w, set.as_str().context("a SET")?).await?;
        if c["events"][VERIFICATION]["state"] == "r2" {
            signed_by = Some(header["kid"].clone());
        }
    }
    ensure!(signed_by.as_ref() == Some(&kids[0]), "the SET after the rotation was signed by {signed_by:?}");
    // Past the grace period, the retired key is gone.
    w.s.clock.advance(time::Duration::seconds(w.s.mandate.config().access_token_ttl + 120));
    w.s.mandate.sync_from_store().await?;
    let (_, later) = w.s.call(Method::GET, "/jwks.json", None, None).await?;
    ensure!(rsa_kids(&later) == vec![kids[0].clone()], "{later}");
    Ok(())
}

/// The planner revokes its own access token (RFC 7009).
async fn revoke_as_planner(w: &World, tokens: &Value) -> Result<()> {
    let a = w.s.assertion(&w.planner, json!({}));
    let token = tokens["access_token"].as_str().context("token")?;
    let (st, _) = w.s.form_asserted(&a, "/oauth/revoke", &[("token", token)]).await?;
    ensure!(st == 200, "revoke: {st}");
    Ok(())
}

#[tokio::test]
async fn subjects_removed_from_a_stream_stop_their_events_until_added_back() -> Result<()> {
    let w = world().await?;
    let manage = receiver_token(&w, "ssf.manage").await?;
    let s = create(&w, &manage, json!({"delivery": {"method": POLL}})).await?;
    let id = s["stream_id"].as_str().context("stream_id")?.to_owned();
    // A second stream of the calendar keeps every subject.
    let all = create(&w, &manage, json!({"delivery": {"method": POLL}})).await?;
    let subject = |v: &str| json!({"stream_id": id, "subject": {"format": "opaque", "id": v}});
    let call = |path: &'static str, body: Value| {
        let manage = manage.clone();
        let w = &w;
        async move { w.s.call(Method::POST, path, Some(&manage), Some(body)).await }
    };
    // SSF §8.1.3.3: 204, and again for a subject removed already.
    for _ in 0..2 {
        let (st, out) = call("/ssf/subjects:remove", subject(&w.planner.id)).await?;
        ensure!(st == 204, "remove: {st} {out}");
    }
    // Neither the planner's revoked token nor its credential change
    // reaches the stream; the other stream gets both.
    let t1 = planner_tokens(&w).await?;
    let (st, body) =
        w.s.admin(Method::PATCH, &format!("/v1/agents/{}", w.planner.id), Some(json!({"federated_credentials": []})))
            .await?;
    ensure!(st == 200, "{st} {body}");
    revoke_as_planner(&w, &t1).await?;
    let (sets, _) = polled(&w, &manage, &s, json!({})).await?;
    ensure!(sets.is_empty(), "events about a removed subject: {sets:?}");
    let (others, _) = polled(&w, &manage, &all, json!({})).await?;
    let kinds: Vec<&str> =
        others.iter().filter_map(|(_, c)| c["events"].as_object()?.keys().next().map(String::as_str)).collect();
    ensure!(kinds == vec![CREDENTIAL_CHANGE, SESSION_REVOKED], "the stream that kept every subject: {kinds:?}");
    // Added back (200): the planner's next revocation arrives.
    let (st, _) = call("/ssf/subjects:add", subject(&w.planner.id)).await?;
    ensure!(st == 200, "add: {st}");
    let t2 = planner_tokens(&w).await?;
    revoke_as_planner(&w, &t2).await?;
    let (sets, _) = polled(&w, &manage, &s, json!({})).await?;
    ensure!(sets.len() == 1 && subject_of(&sets[0].1) == jti_of(&t2), "after the subject was added back: {sets:?}");
    let seen: Vec<String> = sets.iter().map(|(j, _)| j.clone()).collect();
    polled(&w, &manage, &s, json!({"ack": seen})).await?;
    // The person behind the token, or its grant, stops it too.
    let (st, _) = call("/ssf/subjects:remove", subject(&w.alice)).await?;
    ensure!(st == 204);
    let t3 = planner_tokens(&w).await?;
    revoke_as_planner(&w, &t3).await?;
    let t4 = planner_tokens(&w).await?;
    let grant = claims(t4["access_token"].as_str().context("token")?)["grant_id"].as_str().context("grant")?.to_owned();
    let (st, _) = call("/ssf/subjects:add", subject(&w.alice)).await?;
    ensure!(st == 200);
    let (st, _) = call("/ssf/subjects:remove", subject(&grant)).await?;
    ensure!(st == 204);
    revoke_as_planner(&w, &t4).await?;
    let (sets, _) = polled(&w, &manage, &s, json!({})).await?;
    ensure!(sets.is_empty(), "events about a removed person or grant: {sets:?}");
    // Formats Mandate does not name subjects by: every subject of them is
    // in already (200); removing one is not recognized (404).
    let phone = json!({"stream_id": id, "subject": {"format": "phone_number", "phone_number": "+12065550100"}});
    let (st, _) = call("/ssf/subjects:add", phone.clone()).await?;
    ensure!(st == 200, "add a phone_number subject: {st}");
    let (st, out) = call("/ssf/subjects:remove", phone).await?;
    ensure!(st == 404 && out["err"] == "not_found", "remove a phone_number subject: {st} {out}");
    // The stream's own subject stays (SSF §8.1.4.1): 403.
    let (st, out) = call("/ssf/subjects:remove", subject(&id)).await?;
    ensure!(st == 403 && out["err"] == "access_denied", "{st} {out}");
    // ssf.read does not change subjects; another receiver's stream is not found.
    let read = receiver_token(&w, "ssf.read").await?;
    let (st, _) = w.s.call(Method::POST, "/ssf/subjects:remove", Some(&read), Some(subject("x"))).await?;
    ensure!(st == 403, "ssf.read removed a subject: {st}");
    // Audited.
    let audited: Vec<String> =
        w.s.audit("type=ssf.stream_updated")
            .await?
            .iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
            .collect();
    let removed_planner = format!("subject removed: opaque {}", w.planner.id);
    ensure!(audited.iter().filter(|r| **r == removed_planner).count() == 2, "{audited:?}");
    ensure!(audited.contains(&format!("subject added: opaque {}", w.planner.id)), "{audited:?}");
    Ok(())
}

#[tokio::test]
async fn people_are_removed_and_added_back_by_email_and_iss_sub_as_sets_name_them() -> Result<()> {
    let w = world().await?;
    let manage = receiver_token(&w, "ssf.manage").await?;
    let s = create(&w, &manage, json!({"delivery": {"method": POLL}})).await?;
    let id = s["stream_id"].as_str().context("stream_id")?.to_owned();
    let all = create(&w, &manage, json!({"delivery": {"method": POLL}})).await?;
    let body = |subject: Value| json!({"stream_id": id, "subject": subject});
    let call = |path: &'static str, subject: Value| {
        let manage = manage.clone();
        let w = &w;
        let b = body(subject);
        async move { w.s.call(Method::POST, path, Some(&manage), Some(b)).await }
    };
    let drain = |stream: Value| {
        let manage = manage.clone();
        let w = &w;
        async move {
            let (sets, _) = polled(w, &manage, &stream, json!({})).await?;
            let seen: Vec<String> = sets.iter().map(|(j, _)| j.clone()).collect();
            polled(w, &manage, &stream, json!({"ack": seen, "maxEvents": 0})).await?;
            anyhow::Ok(sets)
        }
    };
    let alice = json!({"format": "iss_sub", "iss": w.s.issuer, "sub": w.alice});
    // Removed by her address (any case): neither her token's revocation
    // nor the groups taken from her reach the stream; the other stream
    // gets both, naming her by iss_sub.
    let (st, out) = call("/ssf/subjects:remove", json!({"format": "email", "email": "Alice@Example.com"})).await?;
    ensure!(st == 204, "remove by email: {st} {out}");
    let t1 = planner_tokens(&w).await?;
    let (st, _) = w.s.admin(Method::PATCH, &format!("/v1/users/{}", w.alice), Some(json!({"groups": []}))).await?;
    ensure!(st == 200);
    revoke_as_planner(&w, &t1).await?;
    ensure!(drain(s.clone()).await?.is_empty(), "events about a person removed by email");
    let others = drain(all.clone()).await?;
    let subs: Vec<&Value> = others.iter().map(|(_, c)| &c["sub_id"]).collect();
    let expected_session = json!({
        "format": "complex",
        "session": {"format": "opaque", "id": jti_of(&t1)},
        "user": alice,
    });
    ensure!(subs == vec![&alice, &expected_session], "token-claims-change, then session-revoked: {subs:#?}");
    // Staff again, so that policy lets her planner have tokens.
    let (st, _) =
        w.s.admin(Method::PATCH, &format!("/v1/users/{}", w.alice), Some(json!({"groups": ["staff"]}))).await?;
    ensure!(st == 200);
    ensure!(drain(all.clone()).await?.is_empty(), "giving a group back is not signalled");
    // Added back by the iss_sub the SETs name her by: her next revocation
    // arrives.
    let (st, _) = call("/ssf/subjects:add", alice.clone()).await?;
    ensure!(st == 200, "add by iss_sub: {st}");
    let t2 = planner_tokens(&w).await?;
    revoke_as_planner(&w, &t2).await?;
    let sets = drain(s.clone()).await?;
    ensure!(sets.len() == 1 && subject_of(&sets[0].1) == jti_of(&t2), "{sets:?}");
    drain(all.clone()).await?;
    // Removed as a complex subject's user, as session-revoked names her;
    // added back by email.
    let (st, _) = call("/ssf/subjects:remove", json!({"format": "complex", "user": alice})).await?;
    ensure!(st == 204, "remove by complex user: {st}");
    let t3 = planner_tokens(&w).await?;
    revoke_as_planner(&w, &t3).await?;
    ensure!(drain(s.clone()).await?.is_empty(), "events about a person removed as a complex user");
    let (st, _) = call("/ssf/subjects:add", json!({"format": "email", "email": "alice@example.com"})).await?;
    ensure!(st == 200);
    // One session, as session-revoked names it: that token alone.
    let t4 = planner_tokens(&w).await?;
    let t5 = planner_tokens(&w).await?;
    let session = json!({"format": "complex", "session": {"format": "opaque", "id": jti_of(&t4)}, "user": alice});
    let (st, _) = call("/ssf/subjects:remove", session).await?;
    ensure!(st == 204, "remove a session: {st}");
    revoke_as_planner(&w, &t4).await?;
    revoke_as_planner(&w, &t5).await?;
    let sets = drain(s.clone()).await?;
    ensure!(sets.len() == 1 && subject_of(&sets[0].1) == jti_of(&t5), "only the other session: {sets:?}");
    // The agent by the iss_sub credential-change names it by.
    let planner = json!({"format": "iss_sub", "iss": w.s.issuer, "sub": w.planner.id});
    let (st, _) = call("/ssf/subjects:remove", planner.clone()).await?;
    ensure!(st == 204, "remove an agent by iss_sub: {st}");
    let _live = planner_tokens(&w).await?;
    let (st, body) =
        w.s.admin(Method::PATCH, &format!("/v1/agents/{}", w.planner.id), Some(json!({"federated_credentials": []})))
            .await?;
    ensure!(st == 200, "{st} {body}");
    ensure!(drain(s.clone()).await?.is_empty(), "a credential change of an agent removed by iss_sub");
    let others = drain(all.clone()).await?;
    let changed: Vec<&Value> = others
        .iter()
        .filter(|(_, c)| c["events"].get(CREDENTIAL_CHANGE).is_some())
        .map(|(_, c)| &c["sub_id"])
        .collect();
    ensure!(changed == vec![&planner], "{others:?}");
    // Nobody by that address, or at that issuer: not recognized.
    let (st, out) = call("/ssf/subjects:remove", json!({"format": "email", "email": "carol@example.com"})).await?;
    ensure!(st == 404 && out["err"] == "not_found", "{st} {out}");
    let ghost = json!({"format": "iss_sub", "iss": w.s.issuer, "sub": "usr_01ARZ3NDEKTSV4RRFFQ69G5FAV"});
    let (st, _) = call("/ssf/subjects:remove", ghost).await?;
    ensure!(st == 404);
    // Audited with the person each subject named.
    let audited: Vec<String> =
        w.s.audit("type=ssf.stream_updated")
            .await?
            .iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
            .collect();
    ensure!(audited.contains(&format!("subject removed: email alice@example.com ({})", w.alice)), "{audited:?}");
    let by_iss_sub = format!("subject added: iss_sub {} {} ({})", w.s.issuer, w.alice, w.alice);
    ensure!(audited.contains(&by_iss_sub), "{audited:?}");
    Ok(())
}

#[tokio::test]
async fn verification_requests_are_paced_by_min_verification_interval() -> Result<()> {
    let w = world().await?;
    let manage = receiver_token(&w, "ssf.manage").await?;
    let s = create(&w, &manage, json!({"delivery": {"method": POLL}})).await?;
    ensure!(s["min_verification_interval"] == 15, "{s}");
    let other = create(&w, &manage, json!({"delivery": {"method": POLL}})).await?;
    let verify = |stream: &Value, state: &str| {
        let req =
            w.s.http
                .post(format!("{}/ssf/verify", w.s.url))
                .bearer_auth(&manage)
                .json(&json!({"stream_id": stream["stream_id"], "state": state}));
        async move {
            let r = req.send().await?;
            let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let status = r.status().as_u16();
            let body: Value = serde_json::from_str(&r.text().await?).unwrap_or(Value::Null);
            anyhow::Ok((status, retry, body))
        }
    };
    let (st, _, _) = verify(&s, "one").await?;
    ensure!(st == 204);
    // SSF §8.1.4.2: 429 within the interval, with how long to wait.
    let (st, retry, body) = verify(&s, "two").await?;
    ensure!(st == 429 && retry.as_deref() == Some("15") && body["err"].is_string(), "{st} {retry:?} {body}");
    w.s.clock.advance(time::Duration::seconds(14));
    let (st, retry, _) = verify(&s, "three").await?;
    ensure!(st == 429 && retry.as_deref() == Some("1"), "{st} {retry:?}");
    // Another stream is paced on its own.
    let (st, _, _) = verify(&other, "elsewhere").await?;
    ensure!(st == 204);
    w.s.clock.advance(time::Duration::seconds(1));
    let (st, _, _) = verify(&s, "four").await?;
    ensure!(st == 204, "once the interval passed: {st}");
    // The refused requests queued nothing.
    let (sets, _) = polled(&w, &manage, &s, json!({})).await?;
    let states: Vec<&str> = sets.iter().filter_map(|(_, c)| c["events"][VERIFICATION]["state"].as_str()).collect();
    ensure!(states == vec!["one", "four"], "{states:?}");
    Ok(())
}

#[tokio::test]
async fn a_long_poll_waits_for_an_event_up_to_its_bound() -> Result<()> {
    let w = World::new(
        TestServer::start_with(|c| {
            c.dev_loopback_fetch = true;
            c.ssf_long_poll = 2;
        })
        .await?,
    )
    .await?;
    let manage = receiver_token(&w, "ssf.manage").await?;
    let s = create(&w, &manage, json!({"delivery": {"method": POLL}})).await?;
    let path = format!("/ssf/poll/{}", s["stream_id"].as_str().context("stream_id")?);
    let timed = |body: Value| {
        let (w, manage, path) = (&w, manage.clone(), path.clone());
        async move {
            let started = std::time::Instant::now();
            let (st, out) = w.s.call(Method::POST, &path, Some(&manage), Some(body)).await?;
            ensure!(st == 200, "poll: {st} {out}");
            anyhow::Ok((out, started.elapsed()))
        }
    };
    // RFC 8936 §2.4.1: without returnImmediately, a poll with nothing to
    // return waits for the bound, then answers empty.
    let (out, took) = timed(json!({})).await?;
    ensure!(out == json!({"sets": {}, "moreAvailable": false}) && took >= Duration::from_millis(1900), "{took:?}");
    // returnImmediately, or maxEvents 0 (acknowledgement only), answer at once.
    let (_, took) = timed(json!({"returnImmediately": true})).await?;
    ensure!(took < Duration::from_secs(1), "{took:?}");
    let (_, took) = timed(json!({"maxEvents": 0})).await?;
    ensure!(took < Duration::from_secs(1), "{took:?}");
    // An event queued while the poll waits answers it at once.
    let verify = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        w.s.call(Method::POST, "/ssf/verify", Some(&manage), Some(json!({"stream_id": s["stream_id"], "state": "w"})))
            .await
    };
    let (polled, verified) = tokio::join!(timed(json!({"returnImmediately": false})), verify);
    ensure!(verified?.0 == 204);
    let (out, took) = polled?;
    ensure!(out["sets"].as_object().is_some_and(|m| m.len() == 1), "{out}");
    ensure!(took < Duration::from_millis(1500), "the poll waited for its bound: {took:?}");
    Ok(())
}
