//! Cedar decisions at issuance, with a small and a large policy set.
//! `cargo bench -p mandate-policy`.
// Benchmarks may panic on set-up failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use criterion::{Criterion, criterion_group, criterion_main};
use mandate_model::records::{Agent, AgentKind, AgentStatus, User, UserStatus};
use mandate_model::{AgentId, UserId};
use mandate_policy::{PolicyEngine, Principal, Target};
use time::OffsetDateTime;
use ulid::Ulid;

fn bench(c: &mut Criterion) {
    let agent = Agent {
        id: AgentId::from_ulid(Ulid::from_parts(1, 1)),
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
    };
    let user = User {
        id: UserId::from_ulid(Ulid::from_parts(1, 2)),
        name: "Ada".into(),
        email: "ada@example.com".into(),
        groups: vec!["eng".into()],
        attributes: BTreeMap::from([("dept".into(), "r&d".into())]),
        status: UserStatus::Active,
        created_at: OffsetDateTime::UNIX_EPOCH,
        password_hash: None,
    };
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
                assert!(engine.decide(Principal::Agent(&agent), "read", Target::Api("https://api.example")).allowed)
            })
        });
        c.bench_function(&format!("decide/user/{}_policies", n + 1), |b| {
            b.iter(|| {
                assert!(!engine.decide(Principal::User(&user), "read", Target::Api("https://api.example")).allowed)
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
