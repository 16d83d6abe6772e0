//! The delegation scenarios (DESIGN §3) on SQLite; the PostgreSQL suite runs
//! the same ones. Plus two invariants, property-tested.

use std::sync::Arc;

use mandate_core::store::{Change, Mutation, Store};
use mandate_testkit::TestServer;
use mandate_testkit::conformance::{agent, child_of, grant, token, user};
use mandate_testkit::scenarios::World;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_delegation_scenarios() -> anyhow::Result<()> {
    mandate_testkit::scenarios::run_all(|| TestServer::start_with(|c| c.dev_loopback_fetch = true)).await
}

/// What policy says about one principal of the chain.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stance {
    /// Permits every calendar action.
    Permit,
    /// No policy names it.
    Silent,
    /// Permits, but a forbid names this action.
    Forbid(usize),
}

const ACTIONS: [&str; 3] = ["list", "get", "create"];

fn stance() -> impl Strategy<Value = Stance> {
    prop_oneof![Just(Stance::Permit), Just(Stance::Silent), (0..3usize).prop_map(Stance::Forbid)]
}

/// A decision never allows what the user or any agent of the chain is
/// denied: for random policies over Alice and the three agents of a 3-hop
/// chain, `/v1/check` allows exactly when each of them alone is allowed and
/// a scope of the token covers the action. The two spawned agents, when no
/// policy names them, are each decided as their parent.
#[test]
fn a_decision_is_the_intersection_of_the_whole_chain() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (w, leaf, principals) = rt.block_on(async {
        let w = World::new(TestServer::start().await?).await?;
        let parent = w.granted(&w.planner, "read").await?["access_token"].as_str().unwrap_or_default().to_owned();
        let child = w.spawn(&w.planner, json!({})).await?;
        let (_, hop) = w.exchange(&child, &parent, &[]).await?;
        let grandchild = w.spawn(&child, json!({})).await?;
        let (_, leaf) = w.exchange(&grandchild, hop["access_token"].as_str().unwrap_or_default(), &[]).await?;
        let principals = vec![
            format!("User::\"{}\"", w.alice),
            format!("Agent::\"{}\"", w.planner.id),
            format!("Agent::\"{}\"", child.id),
            format!("Agent::\"{}\"", grandchild.id),
        ];
        Ok::<_, anyhow::Error>((w, leaf["access_token"].as_str().unwrap_or_default().to_owned(), principals))
    })?;
    let mut runner = TestRunner::new(Config { cases: 48, ..Config::default() });
    let strategy = (proptest::collection::vec(stance(), 4), 0..3usize);
    runner
        .run(&strategy, |(stances, action)| {
            let mut text = String::new();
            for (p, s) in principals.iter().zip(&stances) {
                if *s != Stance::Silent {
                    text.push_str(&format!(
                        "permit (principal == {p}, action in [Action::\"list\", Action::\"get\", Action::\"create\"], resource);\n"
                    ));
                }
                if let Stance::Forbid(a) = s {
                    text.push_str(&format!("forbid (principal == {p}, action == Action::\"{}\", resource);\n", ACTIONS[*a]));
                }
            }
            let answer = rt
                .block_on(async {
                    w.s.put_policies(&text).await?;
                    w.check(&leaf, ACTIONS[action], "e1", json!({})).await
                })
                .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            let own = |s: &Stance| match s {
                Stance::Permit => Some(true),
                Stance::Silent => None,
                Stance::Forbid(a) => Some(*a != action),
            };
            // The child and the grandchild are ephemeral: one no policy
            // names is decided as its parent, recursively (DESIGN §13).
            let mut each = Vec::with_capacity(4);
            for (i, s) in stances.iter().enumerate() {
                let inherited = if i >= 2 { each.last().copied().flatten() } else { None };
                each.push(own(s).or(inherited));
            }
            let each_allowed = each.iter().all(|d| *d == Some(true));
            // The token holds `read`: list and get, never create.
            let expected = each_allowed && action < 2;
            prop_assert_eq!(answer["decision"] == "allow", expected, "{:?} {} -> {}", stances, ACTIONS[action], answer);
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Any revoked ancestor means every descendant is dead: random forests of
/// exchanged tokens, random revocations, and a token is revoked exactly
/// when it or one of its ancestors was.
#[test]
fn a_revoked_ancestor_kills_every_descendant() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> =
        rt.block_on(mandate_store_sqlite::SqliteStore::open(&dir.path().join("m.db"))).map(Arc::new)?;
    let (u, a, b) = rt.block_on(async {
        let u = user("forest@example.com");
        store.commit(Change::new().with(Mutation::InsertUser(u.clone()))).await?;
        let a = agent(u.id, None);
        let b = agent(u.id, Some(a.id));
        store
            .commit(Change::new().with(Mutation::InsertAgent(a.clone())).with(Mutation::InsertAgent(b.clone())))
            .await?;
        Ok::<_, anyhow::Error>((u, a, b))
    })?;
    let mut runner = TestRunner::new(Config { cases: 64, ..Config::default() });
    // Node i's parent is one of nodes 0..i (or none); some nodes are revoked.
    let strategy =
        proptest::collection::vec((proptest::option::of(any::<prop::sample::Index>()), any::<bool>()), 1..24);
    runner
        .run(&strategy, |nodes| {
            rt.block_on(async {
                let g = grant(u.id, a.id);
                store.commit(Change::new().with(Mutation::InsertGrant(g.clone()))).await?;
                let mut tokens = Vec::new();
                let mut parents: Vec<Option<usize>> = Vec::new();
                for (i, (parent, _)) in nodes.iter().enumerate() {
                    let p = if i == 0 { None } else { parent.map(|ix| ix.index(i)) };
                    let t = match p {
                        None => {
                            let mut t = token(a.id, &u.id.to_string());
                            t.grant = Some(g.id);
                            t
                        }
                        Some(p) => {
                            let mut t = child_of(&tokens[p], b.id);
                            t.chain = vec![a.id, b.id];
                            t
                        }
                    };
                    store.commit(Change::new().with(Mutation::InsertToken(t.clone()))).await?;
                    tokens.push(t);
                    parents.push(p);
                }
                for (i, (_, revoke)) in nodes.iter().enumerate() {
                    if *revoke {
                        store
                            .commit(
                                Change::new()
                                    .with(Mutation::RevokeToken { jti: tokens[i].jti, at: tokens[i].issued_at }),
                            )
                            .await?;
                    }
                }
                for i in 0..tokens.len() {
                    let mut dead = false;
                    let mut cur = Some(i);
                    while let Some(c) = cur {
                        dead |= nodes[c].1;
                        cur = parents[c];
                    }
                    let stored = store.token(tokens[i].jti).await?.ok_or_else(|| anyhow::anyhow!("lost token"))?;
                    anyhow::ensure!(
                        stored.revoked_at.is_some() == dead,
                        "token {i} (parent {:?}) revoked={} expected {dead}",
                        parents[i],
                        stored.revoked_at.is_some()
                    );
                }
                Ok::<_, anyhow::Error>(())
            })
            .map_err(|e| TestCaseError::fail(format!("{e:#}")))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// SECURITY row 45: one agent may keep only so many CIBA requests waiting
/// in all (here 3, across people); more get 429 and nothing is stored.
#[tokio::test]
async fn ciba_requests_waiting_per_agent_are_capped() -> anyhow::Result<()> {
    use mandate_testkit::scenarios::CAL;
    let s = TestServer::start_with(|c| c.max_pending_per_agent = 3).await?;
    let w = World::new(s).await?;
    let (st, _) =
        w.s.admin(reqwest::Method::PATCH, &format!("/v1/users/{}", w.bob), Some(json!({"groups": ["staff"]}))).await?;
    assert_eq!(st, 200);
    let w = &w;
    let ask = |who: &'static str| async move {
        w.ciba(&w.planner, &[("login_hint", who), ("scope", "write"), ("resource", CAL)]).await
    };
    for who in ["alice@example.com", "alice@example.com", "bob@example.com"] {
        let (st, body) = ask(who).await?;
        assert_eq!(st, 200, "{body}");
    }
    let (st, body) = ask("bob@example.com").await?;
    assert_eq!((st, body["error"].as_str()), (429, Some("slow_down")), "{body}");
    let pending = |token: &str| {
        let token = token.to_owned();
        let s = &w.s;
        async move {
            // Bob and Alice see the requests that wait for them.
            let (_, l) = s.call(reqwest::Method::GET, "/v1/approvals?status=pending", Some(&token), None).await?;
            Ok::<_, anyhow::Error>(l["approvals"].as_array().map(Vec::len).unwrap_or(0))
        }
    };
    assert_eq!(pending(&w.bob_token).await?, 1, "the refused request was stored");
    assert_eq!(pending(&w.alice_token).await?, 2);
    Ok(())
}

/// Emails are stored in one spelling and looked up in it: a person whose
/// address was given in capitals signs in, and is found by CIBA, whatever
/// case they type.
#[tokio::test]
async fn emails_match_whatever_their_case() -> anyhow::Result<()> {
    use mandate_testkit::scenarios::CAL;
    let w = World::new(TestServer::start().await?).await?;
    let (st, u) = w
        .s
        .admin(
            reqwest::Method::POST,
            "/v1/users",
            Some(json!({"name": "Ada", "email": "Ada.Lovelace@Example.COM", "groups": ["staff"], "password": "correct horse battery"})),
        )
        .await?;
    assert_eq!((st, u["email"].as_str()), (201, Some("ada.lovelace@example.com")), "{u}");
    let (st, _) = w
        .s
        .admin(reqwest::Method::POST, "/v1/users", Some(json!({"name": "Twin", "email": "ADA.LOVELACE@example.com"})))
        .await?;
    assert_eq!(st, 409, "the same address in other capitals made a second user");
    let (st, body) =
        w.ciba(&w.planner, &[("login_hint", "ADA.Lovelace@EXAMPLE.com"), ("scope", "read"), ("resource", CAL)]).await?;
    assert_eq!(st, 200, "{body}");
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let login = client.get(format!("{}/login", w.s.url)).send().await?;
    let cookie = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.split(';').next().filter(|p| p.starts_with("mandate_login=")).map(str::to_owned))
        .unwrap_or_default();
    let html = login.text().await?;
    let csrf = html.split(r#"name="csrf" value=""#).nth(1).and_then(|r| r.split('"').next()).unwrap_or_default();
    let resp = client
        .post(format!("{}/login", w.s.url))
        .header("cookie", cookie)
        .form(&[
            ("csrf", csrf),
            ("next", "/grants"),
            ("email", "ADA.LOVELACE@Example.com"),
            ("password", "correct horse battery"),
        ])
        .send()
        .await?;
    assert_eq!(resp.status(), 303, "a capitalised email could not sign in");
    Ok(())
}
