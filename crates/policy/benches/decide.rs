//! Cedar decisions at issuance, with a small and a large policy set.
//! `cargo bench -p mandate-policy`.
// Benchmarks may panic on set-up failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use criterion::{Criterion, criterion_group, criterion_main};
use mandate_model::records::{Agent, AgentKind, AgentStatus, User, UserStatus};
use mandate_model::{AgentId, UserId};
use mandate_policy::{PolicyEngine, Principal, Related, Target};
use time::OffsetDateTime;
use ulid::Ulid;

/// An active persistent agent with the id built from `n`.
fn bench_agent(n: u128) -> Agent {
    Agent {
        id: AgentId::from_ulid(Ulid::from_parts(1, n)),
        name: "bench".into(),
        owner: UserId::from_ulid(Ulid::from_parts(1, 2)),
        kind: AgentKind::Persistent,
        parent: None,
        status: AgentStatus::Active,
        expires_at: None,
        description: None,
        scopes: None,
        jwks: None,
        redirect_uris: vec![],
        created_at: OffsetDateTime::UNIX_EPOCH,
        secret_hash: None,
        suspended_by: None,
        origin: mandate_model::records::AgentOrigin::Admin,
        metadata_url: None,
        public: false,
        federated_credentials: Vec::new(),
        limits: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let agent = bench_agent(1);
    let user = User {
        id: UserId::from_ulid(Ulid::from_parts(1, 2)),
        name: "Ada".into(),
        email: "ada@example.com".into(),
        groups: vec!["eng".into()],
        attributes: BTreeMap::from([("dept".into(), "r&d".into())]),
        status: UserStatus::Active,
        created_at: OffsetDateTime::UNIX_EPOCH,
        password_hash: None,
        scim_groups: Vec::new(),
    };
    // The agent's owner, as the server loads it for every agent decision.
    let mut related = Related::new();
    related.add_user(user.clone());
    for n in [2usize, 100, 1000] {
        let mut actions: BTreeSet<String> = BTreeSet::new();
        let mut text = String::new();
        for i in 0..n {
            actions.insert(format!("act{i}"));
            text.push_str(&format!(
                "permit(principal in Group::\"g{i}\", action == Action::\"act{i}\", resource == Api::\"https://api{i}.example\") when {{ principal.hasTag(\"dept\") }};\n"
            ));
        }
        actions.insert("read".into());
        text.push_str(
            "permit(principal is Agent, action == Action::\"read\", resource == Api::\"https://api.example\");\n",
        );
        let engine = PolicyEngine::compile(&text, &actions).unwrap();
        c.bench_function(&format!("decide/agent/{}_policies", n + 1), |b| {
            b.iter(|| {
                assert!(
                    engine
                        .decide(Principal::Agent(&agent), "read", Target::Api("https://api.example"), &related)
                        .allowed
                )
            })
        });
        c.bench_function(&format!("decide/user/{}_policies", n + 1), |b| {
            b.iter(|| {
                assert!(
                    !engine
                        .decide(Principal::User(&user), "read", Target::Api("https://api.example"), &related)
                        .allowed
                )
            })
        });
    }
}

/// 10,000 policies, one per agent (every tenth a forbid on another API), as
/// a deployment with thousands of agents has: the index by exact principal
/// keeps a decision to the few that can apply.
fn per_agent_policies(c: &mut Criterion) {
    let actions: BTreeSet<String> = ["read".to_owned()].into();
    let mut text = String::new();
    for i in 0..10_000u128 {
        let id = AgentId::from_ulid(Ulid::from_parts(1, i));
        // Written tight: 10,000 policies must fit the 1 MiB policy-text limit.
        let (effect, api) = if i % 10 == 9 { ("forbid", "https://b.x") } else { ("permit", "https://a.x") };
        text.push_str(&format!("{effect}(principal==Agent::\"{id}\",action,resource==Api::\"{api}\");\n"));
    }
    let engine = PolicyEngine::compile(&text, &actions).unwrap();
    let agent = bench_agent(4_321);
    let mut related = Related::new();
    related.add_user(User {
        id: agent.owner,
        name: "Ada".into(),
        email: "ada@example.com".into(),
        groups: vec!["eng".into()],
        attributes: BTreeMap::new(),
        status: UserStatus::Active,
        created_at: OffsetDateTime::UNIX_EPOCH,
        password_hash: None,
        scim_groups: Vec::new(),
    });
    c.bench_function("decide/agent/10000_per_agent_policies", |b| {
        b.iter(|| {
            assert!(engine.decide(Principal::Agent(&agent), "read", Target::Api("https://a.x"), &related).allowed)
        })
    });
}

criterion_group!(benches, bench, per_agent_policies);
criterion_main!(benches);
