use std::collections::BTreeMap;

use mandate_model::records::AgentStatus;
use mandate_model::{AgentId, UserId};
use time::OffsetDateTime;
use ulid::Ulid;

use super::*;

fn actions() -> BTreeSet<String> {
    ["read", "write"].into_iter().map(String::from).collect()
}

fn agent() -> Agent {
    Agent {
        id: AgentId::from_ulid(Ulid::from_parts(1, 1)),
        name: "a".into(),
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
    }
}

fn user() -> User {
    User {
        id: UserId::from_ulid(Ulid::from_parts(1, 2)),
        name: "Alice".into(),
        email: "alice@example.com".into(),
        groups: vec!["eng".into()],
        attributes: BTreeMap::from([("dept".into(), "r&d".into())]),
        status: UserStatus::Active,
        created_at: OffsetDateTime::UNIX_EPOCH,
        password_hash: None,
    }
}

#[test]
fn nothing_is_allowed_without_policies() {
    let d = PolicyEngine::empty().decide(Principal::Agent(&agent()), "read", Target::Api("https://api.example"));
    assert!(!d.allowed);
}

#[test]
fn permits_and_forbids() {
    let e = PolicyEngine::compile(
        r#"permit(principal is Agent, action == Action::"read", resource == Api::"https://api.example");
           permit(principal in Group::"eng", action == Action::"write", resource) when { principal.hasTag("dept") && principal.getTag("dept") == "r&d" };
           forbid(principal, action == Action::"write", resource == Api::"https://locked.example");"#,
        &actions(),
    )
    .unwrap();
    assert!(e.decide(Principal::Agent(&agent()), "read", Target::Api("https://api.example")).allowed);
    assert!(!e.decide(Principal::Agent(&agent()), "read", Target::Api("https://other.example")).allowed);
    assert!(!e.decide(Principal::Agent(&agent()), "write", Target::Api("https://api.example")).allowed);
    assert!(e.decide(Principal::User(&user()), "write", Target::Api("https://api.example")).allowed);
    assert!(!e.decide(Principal::User(&user()), "write", Target::Api("https://locked.example")).allowed);
    let mut other = user();
    other.attributes.clear();
    assert!(!e.decide(Principal::User(&other), "write", Target::Api("https://api.example")).allowed);
}

#[test]
fn an_erroring_policy_denies() {
    // `owner` is a reference; reading its attributes errors because the
    // owner entity is not loaded at issuance. The error must deny, even
    // though the other permit matches.
    let e = PolicyEngine::compile(
        r#"permit(principal is Agent, action == Action::"read", resource);
           forbid(principal is Agent, action, resource) unless { principal.owner.email == "boss@example.com" };"#,
        &actions(),
    )
    .unwrap();
    let d = e.decide(Principal::Agent(&agent()), "read", Target::Api("https://api.example"));
    assert!(!d.allowed, "{d:?}");
}

#[test]
fn validation_rejects_unknown_actions_and_attributes() {
    assert!(PolicyEngine::compile(r#"permit(principal, action == Action::"delete", resource);"#, &actions()).is_err());
    assert!(
        PolicyEngine::compile(
            r#"permit(principal is Agent, action, resource) when { principal.color == "red" };"#,
            &actions()
        )
        .is_err()
    );
    assert!(PolicyEngine::compile("permit(principal, action, resource", &actions()).is_err());
    assert!(PolicyEngine::compile("", &actions()).is_ok());
}

#[test]
fn versions_are_content_hashes() {
    assert_eq!(version_of("a"), version_of("a"));
    assert_ne!(version_of("a"), version_of("b"));
    assert!(version_of("").starts_with("sha256:e3b0c442"));
}

#[test]
fn the_action_index_keeps_every_policy_that_can_apply() {
    let e = PolicyEngine::compile(
        r#"permit(principal is Agent, action in [Action::"read", Action::"write"], resource == Api::"https://a.example");
           forbid(principal, action, resource == Api::"https://locked.example");
           permit(principal is Agent, action, resource == Api::"https://open.example");"#,
        &actions(),
    )
    .unwrap();
    let a = agent();
    assert!(e.decide(Principal::Agent(&a), "read", Target::Api("https://a.example")).allowed);
    assert!(e.decide(Principal::Agent(&a), "write", Target::Api("https://a.example")).allowed);
    // Unconstrained-action policies apply to named and unnamed actions alike.
    assert!(e.decide(Principal::Agent(&a), "read", Target::Api("https://open.example")).allowed);
    assert!(e.decide(Principal::Agent(&a), "mandate:spawn", Target::Api("https://open.example")).allowed);
    assert!(!e.decide(Principal::Agent(&a), "read", Target::Api("https://locked.example")).allowed);
    assert!(!e.decide(Principal::Agent(&a), "mandate:spawn", Target::Api("https://a.example")).allowed);
}
