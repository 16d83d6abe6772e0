//! The delegation scenarios (issue 4) on SQLite; the PostgreSQL suite runs
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
    mandate_testkit::scenarios::run_all(TestServer::start).await
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
/// a scope of the token covers the action.
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
            let each_allowed = stances.iter().all(|s| match s {
                Stance::Permit => true,
                Stance::Silent => false,
                Stance::Forbid(a) => *a != action,
            });
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
