//! Policy you can test before it ships (DESIGN §12, ADR 0034): the dry run
//! decides as `/v1/check` does, shows what flips, replays recorded
//! decisions; edits from a stale version are refused; every version is
//! kept, diffable and restorable.

use mandate_testkit::{TestAgent, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

const API: &str = "https://api.example.com";
/// Agents may read and write anything of the API.
const CURRENT: &str = r#"permit(principal is Agent, action in [Action::"read", Action::"write"], resource in Api::"https://api.example.com");"#;
/// ... and then not write.
const NO_WRITES: &str = r#"forbid(principal, action == Action::"write", resource);"#;

fn candidate() -> String {
    format!("{CURRENT}\n{NO_WRITES}")
}

async fn world() -> anyhow::Result<(TestServer, String, TestAgent)> {
    let s = TestServer::start().await?;
    let user = s.create_user("owner@example.com").await?;
    s.create_resource(API, json!({"read": [], "write": []})).await?;
    s.put_policies(CURRENT).await?;
    let agent = s.create_agent(&user, mandate_jose::KeyAlg::EdDSA).await?;
    Ok((s, user, agent))
}

async fn check(s: &TestServer, token: &str, action: &str, id: &str) -> anyhow::Result<Value> {
    let (st, body) = s
        .admin(
            Method::POST,
            "/v1/check",
            Some(json!({"token": token, "action": action, "resource": {"type": "doc", "id": id}})),
        )
        .await?;
    anyhow::ensure!(st == 200, "check: {st} {body}");
    Ok(body)
}

async fn current(s: &TestServer) -> anyhow::Result<Value> {
    let (st, body) = s.admin(Method::GET, "/v1/policies", None).await?;
    anyhow::ensure!(st == 200, "{st} {body}");
    Ok(body)
}

#[tokio::test]
async fn a_dry_run_decides_as_the_check_api_and_shows_what_flips() -> anyhow::Result<()> {
    let (s, _, agent) = world().await?;
    let (st, tok) = s.token(&agent, API, "read write").await?;
    assert_eq!(st, 200, "{tok}");
    let token = tok["access_token"].as_str().unwrap_or_default().to_owned();
    let case = |action: &str, expected: &str| {
        json!({"principal": agent.id, "action": action, "resource": {"type": "doc", "id": "7", "api": API},
               "expected": expected})
    };
    let cases = json!([
        case("read", "allow"),
        case("write", "allow"),
        // The whole API, as issuance decides.
        {"principal": agent.id, "action": "write", "resource": API, "expected": "deny"},
    ]);
    let (st, body) =
        s.admin(Method::POST, "/v1/policies/test", Some(json!({"policies": candidate(), "cases": cases}))).await?;
    assert_eq!(st, 200, "{body}");
    let results = body["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 3, "{body}");
    // Under the current set, each case is what a real check answers.
    for (i, action) in [(0, "read"), (1, "write")] {
        let real = check(&s, &token, action, "7").await?;
        assert_eq!(results[i]["current"]["decision"], real["decision"], "case {i}: {body} vs {real}");
        assert_eq!(real["decision"], "allow");
    }
    // Under the candidate, writes are denied by the new forbid.
    assert_eq!(results[0]["decision"], "allow");
    assert_eq!(results[0]["matches"], true);
    assert_eq!(results[0]["determining"], json!(["policy0"]), "{body}");
    assert_eq!(results[1]["decision"], "deny");
    assert_eq!(results[1]["matches"], false);
    assert_eq!(results[1]["determining"], json!(["policy1"]), "{body}");
    assert!(results[1]["reasons"][0].as_str().is_some_and(|r| r.starts_with("policy:")), "{body}");
    assert_eq!(results[2]["decision"], "deny");
    assert_eq!(results[2]["matches"], true);
    assert_eq!(body["mismatched"], 1);
    assert_eq!(
        body["diff"],
        json!([{"case": 1, "from": "allow", "to": "deny"}, {"case": 2, "from": "allow", "to": "deny"}])
    );
    // Nothing was installed: the real check still allows writes.
    assert_eq!(check(&s, &token, "write", "8").await?["decision"], "allow");
    assert_eq!(current(&s).await?["policies"], CURRENT);
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_chain_is_decided_by_every_party_with_the_users_rights() -> anyhow::Result<()> {
    let (s, user, agent) = world().await?;
    // The user may only read; the agent may read and write.
    let policies = format!("{CURRENT}\npermit(principal is User, action == Action::\"read\", resource);");
    let case = |action: &str, expected: &str| {
        json!({"principal": agent.id, "chain": [user, agent.id], "action": action,
               "resource": {"type": "doc", "id": "1", "api": API}, "expected": expected})
    };
    let (st, body) = s
        .admin(
            Method::POST,
            "/v1/policies/test",
            Some(json!({"policies": policies, "cases": [case("read", "allow"), case("write", "deny")]})),
        )
        .await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["mismatched"], 0, "{body}");
    assert!(body["results"][1]["reasons"][0].as_str().is_some_and(|r| r.contains(&user)), "{body}");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_replay_finds_the_recorded_decisions_that_would_flip() -> anyhow::Result<()> {
    let (s, _, agent) = world().await?;
    let (st, tok) = s.token(&agent, API, "read write").await?;
    assert_eq!(st, 200, "{tok}");
    let token = tok["access_token"].as_str().unwrap_or_default().to_owned();
    check(&s, &token, "read", "1").await?;
    check(&s, &token, "write", "2").await?;
    let (st, body) = s
        .admin(Method::POST, "/v1/policies/test", Some(json!({"policies": candidate(), "replay": {"limit": 100}})))
        .await?;
    assert_eq!(st, 200, "{body}");
    let replay = &body["replay"];
    // The issuance of "read write" and the write check would be denied;
    // the read check would not change.
    assert_eq!(replay["replayed"], 3, "{body}");
    assert_eq!(replay["allow_to_deny"], 2, "{body}");
    assert_eq!(replay["deny_to_allow"], 0, "{body}");
    let samples = replay["samples"].as_array().cloned().unwrap_or_default();
    assert!(samples.iter().all(|f| f["action"] == "write" && f["candidate"]["decision"] == "deny"), "{body}");
    assert!(samples.iter().any(|f| f["type"] == "check.decided"), "{body}");
    // And back: the current set replayed against the stricter one.
    s.put_policies(&candidate()).await?;
    let (st, body) = s
        .admin(Method::POST, "/v1/policies/test", Some(json!({"policies": CURRENT, "replay": {"limit": 100}})))
        .await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["replay"]["deny_to_allow"], 2, "{body}");
    let (st, body) = s
        .admin(Method::POST, "/v1/policies/test", Some(json!({"policies": CURRENT, "replay": {"limit": 100000}})))
        .await?;
    assert_eq!(st, 400, "{body}");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bad_candidates_and_cases_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let (s, _, agent) = world().await?;
    let before = current(&s).await?;
    let case = json!({"principal": agent.id, "action": "read", "resource": API, "expected": "allow"});
    let bad = [
        json!({"policies": "permit(principal, action == Action::\"fly\", resource);", "cases": [case]}),
        json!({"policies": "permit(", "cases": [case]}),
        json!({"policies": CURRENT, "cases": [{"principal": "agt_01JZZZZZZZZZZZZZZZZZZZZZZZ", "action": "read",
                                                "resource": API, "expected": "allow"}]}),
        json!({"policies": CURRENT, "cases": [{"principal": agent.id, "action": "read", "resource": API,
                                                "expected": "maybe"}]}),
        json!({"policies": CURRENT, "cases": [{"principal": agent.id, "chain": ["agt_01JZZZZZZZZZZZZZZZZZZZZZZZ"],
                                                "action": "read", "resource": API, "expected": "allow"}]}),
        json!({"policies": CURRENT, "cases": [{"principal": agent.id, "action": "read", "resource": API,
                                                "context": {"amount": 3}, "expected": "allow"}]}),
        json!({"policies": CURRENT}),
        json!({"policies": CURRENT, "cases": [case], "extra": 1}),
    ];
    for body in bad {
        let (st, answer) = s.admin(Method::POST, "/v1/policies/test", Some(body.clone())).await?;
        assert_eq!(st, 400, "{body} -> {answer}");
        assert_eq!(answer["type"], "urn:mandate:problem:invalid-input", "{answer}");
    }
    // The validator's message reaches the caller.
    let (_, answer) = s
        .admin(
            Method::POST,
            "/v1/policies/test",
            Some(json!({"policies": "permit(principal, action == Action::\"fly\", resource);", "cases": [case]})),
        )
        .await?;
    assert!(answer["detail"].as_str().is_some_and(|d| d.contains("fly")), "{answer}");
    assert_eq!(current(&s).await?, before);
    let (_, versions) = s.admin(Method::GET, "/v1/policies/versions", None).await?;
    assert_eq!(versions["items"].as_array().map(Vec::len), Some(1), "{versions}");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_edit_from_a_stale_version_is_refused_with_409() -> anyhow::Result<()> {
    let (s, _, _) = world().await?;
    let read = current(&s).await?;
    let v = read["version"].as_str().unwrap_or_default().to_owned();
    assert_eq!(read["number"], 1, "{read}");
    // Two editors start from the same version; the first wins.
    let (st, first) =
        s.admin(Method::PUT, "/v1/policies", Some(json!({"policies": candidate(), "expected_version": v}))).await?;
    assert_eq!(st, 200, "{first}");
    let (st, second) = s
        .admin(
            Method::PUT,
            "/v1/policies",
            Some(json!({"policies": format!("{CURRENT}\n// mine"), "expected_version": v})),
        )
        .await?;
    assert_eq!(st, 409, "{second}");
    assert_eq!(second["type"], "urn:mandate:problem:conflict", "{second}");
    let now = current(&s).await?;
    assert_eq!(now["policies"], candidate().as_str());
    assert_eq!(now["version"], first["version"]);
    assert_eq!(now["number"], 2);
    // A restore honours it too.
    let (st, body) =
        s.admin(Method::POST, "/v1/policies/versions/1/restore", Some(json!({"expected_version": v}))).await?;
    assert_eq!(st, 409, "{body}");
    let (_, versions) = s.admin(Method::GET, "/v1/policies/versions", None).await?;
    assert_eq!(versions["items"].as_array().map(Vec::len), Some(2), "{versions}");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn every_version_is_kept_diffable_and_restorable() -> anyhow::Result<()> {
    let (s, _, agent) = world().await?;
    s.put_policies(&candidate()).await?;
    let (st, list) = s.admin(Method::GET, "/v1/policies/versions?limit=1", None).await?;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["items"][0]["number"], 2, "{list}");
    assert_eq!(list["items"][0]["author"], "admin", "{list}");
    assert_eq!(list["next_cursor"], "2", "{list}");
    let (_, rest) = s.admin(Method::GET, "/v1/policies/versions?limit=1&cursor=2", None).await?;
    assert_eq!(rest["items"][0]["number"], 1, "{rest}");
    assert_eq!(rest["next_cursor"], Value::Null, "{rest}");
    let (st, one) = s.admin(Method::GET, "/v1/policies/versions/1", None).await?;
    assert_eq!(st, 200);
    assert_eq!(one["policies"], CURRENT);
    let (st, diff) = s.admin(Method::GET, "/v1/policies/versions/2/diff", None).await?;
    assert_eq!(st, 200, "{diff}");
    assert_eq!(
        (diff["from"].clone(), diff["inserted"].clone(), diff["deleted"].clone()),
        (json!(1), json!(2), json!(1))
    );
    assert!(diff["diff"].as_str().is_some_and(|d| d.contains(&format!("+{NO_WRITES}"))), "{diff}");
    let (_, back) = s.admin(Method::GET, "/v1/policies/versions/1/diff?against=2", None).await?;
    assert!(back["diff"].as_str().is_some_and(|d| d.contains(&format!("-{NO_WRITES}"))), "{back}");
    let (st, _) = s.admin(Method::GET, "/v1/policies/versions/9", None).await?;
    assert_eq!(st, 404);
    let (st, _) = s.admin(Method::GET, "/v1/policies/versions/0", None).await?;
    assert_eq!(st, 400);

    // Restore version 1: a new version 3 with its text, in force at once.
    let v2 = current(&s).await?["version"].clone();
    let (st, restored) =
        s.admin(Method::POST, "/v1/policies/versions/1/restore", Some(json!({"expected_version": v2}))).await?;
    assert_eq!(st, 200, "{restored}");
    let now = current(&s).await?;
    assert_eq!((now["policies"].clone(), now["number"].clone()), (json!(CURRENT), json!(3)));
    let (st, tok) = s.token(&agent, API, "write").await?;
    assert_eq!(st, 200, "the restored set is not in force: {tok}");
    let events = s.audit("type=policy.updated").await?;
    let last = events.last().cloned().unwrap_or_default();
    assert_eq!(last["actor"], "admin");
    assert!(last["reason"].as_str().is_some_and(|r| r.contains("restored from history entry 1")), "{last}");
    s.stop().await?;
    Ok(())
}

#[tokio::test]
async fn auditors_may_test_and_read_the_history_but_not_change_it() -> anyhow::Result<()> {
    let (s, _, agent) = world().await?;
    let (st, auditor) = s
        .admin(
            Method::POST,
            "/v1/users",
            Some(json!({"name": "Aud", "email": "aud@example.com", "groups": ["mandate-auditors"]})),
        )
        .await?;
    assert_eq!(st, 201);
    let plain = s.create_user("plain@example.com").await?;
    let token_of = |id: String| {
        let s = &s;
        async move {
            let (_, t) = s.admin(Method::POST, &format!("/v1/users/{id}/tokens"), None).await?;
            anyhow::Ok(t["token"].as_str().unwrap_or_default().to_owned())
        }
    };
    let aud = token_of(auditor["id"].as_str().unwrap_or_default().to_owned()).await?;
    let nobody = token_of(plain).await?;
    let body = json!({"policies": CURRENT, "cases": [{"principal": agent.id, "action": "read", "resource": API,
                                                      "expected": "allow"}]});
    let (st, answer) = s.call(Method::POST, "/v1/policies/test", Some(&aud), Some(body.clone())).await?;
    assert_eq!(st, 200, "{answer}");
    let (st, _) = s.call(Method::GET, "/v1/policies/versions", Some(&aud), None).await?;
    assert_eq!(st, 200);
    let (st, _) = s.call(Method::POST, "/v1/policies/test", Some(&nobody), Some(body)).await?;
    assert_eq!(st, 403);
    let (st, _) = s.call(Method::PUT, "/v1/policies", Some(&aud), Some(json!({"policies": CURRENT}))).await?;
    assert_eq!(st, 403);
    let (st, _) = s.call(Method::POST, "/v1/policies/versions/1/restore", Some(&aud), None).await?;
    assert_eq!(st, 403);
    s.stop().await?;
    Ok(())
}
