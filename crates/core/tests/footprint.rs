//! The caches' weights (`mandate_core::footprint`) against the bytes an
//! allocator really hands out: a clone of a record allocates what the
//! record owns on the heap, counted by `stats_alloc` around the clone. One
//! test function, so that no other test allocates while it counts.
#![allow(clippy::unwrap_used)]

use std::alloc::System;
use std::collections::BTreeMap;

use mandate_core::footprint::Footprint;
use mandate_model::records::{Agent, AgentKind, AgentOrigin, AgentStatus, User, UserStatus};
use mandate_model::scope::ScopeSet;
use mandate_model::{AgentId, UserId};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use time::OffsetDateTime;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes a clone of `v` allocates: what `v` owns.
fn owned<T: Clone>(v: &T) -> usize {
    let region = Region::new(GLOBAL);
    let copy = v.clone();
    let bytes = region.change().bytes_allocated;
    drop(copy);
    bytes
}

fn agent(keys: usize) -> Agent {
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
        "kid": "k-2026-12-07-0123456789abcdef",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
    });
    Agent {
        id: AgentId::from_ulid(ulid::Ulid::from_parts(1, 2)),
        name: "invoice-reconciler for the finance team".into(),
        owner: UserId::from_ulid(ulid::Ulid::from_parts(1, 3)),
        kind: AgentKind::Persistent,
        parent: None,
        status: AgentStatus::Active,
        expires_at: None,
        description: Some("Reconciles the invoices of the month against the ledger".into()),
        scopes: Some(ScopeSet::parse("invoices:read ledger:read ledger:write").unwrap()),
        jwks: Some(serde_json::json!({ "keys": vec![jwk; keys] })),
        redirect_uris: vec!["https://agent.example.com/callback".into()],
        created_at: OffsetDateTime::UNIX_EPOCH,
        secret_hash: None,
        suspended_by: None,
        origin: AgentOrigin::Admin,
        metadata_url: None,
        public: false,
        federated_credentials: Vec::new(),
        limits: Default::default(),
    }
}

fn user(groups: usize) -> User {
    User {
        id: UserId::from_ulid(ulid::Ulid::from_parts(1, 3)),
        name: "Ada Lovelace".into(),
        email: "ada.lovelace@example.com".into(),
        groups: (0..groups).map(|i| format!("engineering-group-{i}")).collect(),
        scim_groups: Vec::new(),
        attributes: BTreeMap::from([("department".into(), "finance".into()), ("site".into(), "paris".into())]),
        status: UserStatus::Active,
        created_at: OffsetDateTime::UNIX_EPOCH,
        password_hash: None,
    }
}

/// The estimate must neither undercount a record by more than half (a
/// cache would then hold twice its budget) nor overcount it more than
/// threefold (it would keep a third of what it could).
fn within(what: &str, estimate: usize, real: usize) {
    assert!(
        estimate * 2 >= real && estimate <= real * 3,
        "{what}: estimated {estimate} heap bytes, an allocator handed out {real}"
    );
}

#[test]
fn weights_are_close_to_what_records_hold() {
    for keys in [0, 1, 2, 8] {
        let a = agent(keys);
        within(&format!("an agent with {keys} keys"), a.heap_bytes(), owned(&a));
    }
    for groups in [0, 3, 20] {
        let u = user(groups);
        within(&format!("a user in {groups} groups"), u.heap_bytes(), owned(&u));
    }
}
