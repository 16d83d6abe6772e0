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
        suspended_by: None,
        origin: mandate_model::records::AgentOrigin::Admin,
        metadata_url: None,
        public: false,
        federated_credentials: Vec::new(),
        limits: Default::default(),
    }
}

/// The records the test agents reach: their owner.
fn rel() -> Related {
    let mut r = Related::new();
    r.add_user(user());
    r
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
        scim_groups: Vec::new(),
    }
}

#[test]
fn nothing_is_allowed_without_policies() {
    let d =
        PolicyEngine::empty().decide(Principal::Agent(&agent()), "read", Target::Api("https://api.example"), &rel());
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
    assert!(e.decide(Principal::Agent(&agent()), "read", Target::Api("https://api.example"), &rel()).allowed);
    assert!(!e.decide(Principal::Agent(&agent()), "read", Target::Api("https://other.example"), &rel()).allowed);
    assert!(!e.decide(Principal::Agent(&agent()), "write", Target::Api("https://api.example"), &rel()).allowed);
    assert!(e.decide(Principal::User(&user()), "write", Target::Api("https://api.example"), &rel()).allowed);
    assert!(!e.decide(Principal::User(&user()), "write", Target::Api("https://locked.example"), &rel()).allowed);
    let mut other = user();
    other.attributes.clear();
    assert!(!e.decide(Principal::User(&other), "write", Target::Api("https://api.example"), &rel()).allowed);
}

#[test]
fn an_erroring_policy_denies() {
    // `owner` is a reference; with the owner not loaded the decision is an
    // error, and the error must deny, even though the other permit matches.
    let e = PolicyEngine::compile(
        r#"permit(principal is Agent, action == Action::"read", resource);
           forbid(principal is Agent, action, resource) unless { principal.owner.email == "boss@example.com" };"#,
        &actions(),
    )
    .unwrap();
    let d = e.decide(Principal::Agent(&agent()), "read", Target::Api("https://api.example"), &Related::new());
    assert!(!d.allowed && !d.errors.is_empty(), "{d:?}");
    // With the owner loaded, the same policy decides on the owner's email.
    assert!(!e.decide(Principal::Agent(&agent()), "read", Target::Api("https://api.example"), &rel()).allowed);
    let mut boss = rel();
    boss.add_user(User { email: "boss@example.com".into(), ..user() });
    assert!(e.decide(Principal::Agent(&agent()), "read", Target::Api("https://api.example"), &boss).allowed);
}

/// SECURITY row 38: policies that look through an attribute see the
/// entity behind it, for `forbid` and `permit`, with `in`, `hasTag` and
/// `getTag`; an entity that cannot be loaded denies.
#[test]
fn policies_see_through_owner_parent_and_the_receiving_agent() {
    let api = Target::Api("https://api.example");
    let contractor = User {
        id: UserId::from_ulid(Ulid::from_parts(1, 7)),
        groups: vec!["contractors".into()],
        attributes: BTreeMap::new(),
        ..user()
    };
    let theirs = Agent { id: AgentId::from_ulid(Ulid::from_parts(1, 8)), owner: contractor.id, ..agent() };
    let child = Agent {
        id: AgentId::from_ulid(Ulid::from_parts(1, 9)),
        kind: AgentKind::Ephemeral,
        parent: Some(theirs.id),
        owner: user().id,
        ..agent()
    };
    let mut r = rel();
    r.add_user(contractor.clone());
    r.add_agent(theirs.clone());
    let forbid = PolicyEngine::compile(
        r#"permit(principal is Agent, action, resource);
           forbid(principal is Agent, action, resource) when { principal.owner in Group::"contractors" };
           forbid(principal is Agent, action, resource) when { principal has parent && principal.parent.owner in Group::"contractors" };
           forbid(principal is Agent, action == Action::"mandate:delegate", resource is Agent) when { resource.owner in Group::"contractors" };
           forbid(principal is Agent, action == Action::"write", resource) when { principal.owner.hasTag("dept") && principal.owner.getTag("dept") == "r&d" };"#,
        &actions(),
    )
    .unwrap();
    assert!(forbid.decide(Principal::Agent(&agent()), "read", api, &r).allowed);
    let d = forbid.decide(Principal::Agent(&theirs), "read", api, &r);
    assert!(!d.allowed && d.errors.is_empty(), "the owner's group was not seen: {d:?}");
    assert!(!forbid.decide(Principal::Agent(&child), "read", api, &r).allowed, "the parent's owner was not seen");
    assert!(!forbid.decide(Principal::Agent(&agent()), "mandate:delegate", Target::Agent(&theirs), &r).allowed);
    assert!(
        !forbid
            .decide(Principal::Agent(&theirs), "mandate:delegate", Target::Agent(&agent()), &Related::new())
            .errors
            .is_empty()
    );
    assert!(!forbid.decide(Principal::Agent(&agent()), "write", api, &r).allowed, "the owner's tag was not seen");
    // Until an entity can be loaded, the answer is deny, never "absent".
    let mut no_parent = r.clone();
    no_parent.agents.remove(&theirs.id);
    let d = forbid.decide(Principal::Agent(&child), "read", api, &no_parent);
    assert!(!d.allowed && !d.errors.is_empty(), "{d:?}");
    let d = forbid.decide(Principal::Agent(&theirs), "read", api, &rel());
    assert!(!d.allowed && !d.errors.is_empty(), "{d:?}");

    let permit = PolicyEngine::compile(
        r#"permit(principal is Agent, action == Action::"read", resource) when { principal.owner in Group::"eng" };
           permit(principal is Agent, action == Action::"write", resource) when { principal.owner.hasTag("dept") && principal.owner.getTag("dept") == "r&d" };
           permit(principal is Agent, action == Action::"mandate:delegate", resource is Agent) when { resource.owner == principal.owner };"#,
        &actions(),
    )
    .unwrap();
    assert!(permit.decide(Principal::Agent(&agent()), "read", api, &r).allowed);
    assert!(permit.decide(Principal::Agent(&agent()), "write", api, &r).allowed);
    assert!(!permit.decide(Principal::Agent(&theirs), "read", api, &r).allowed);
    assert!(!permit.decide(Principal::Agent(&theirs), "write", api, &r).allowed);
    assert!(permit.decide(Principal::Agent(&agent()), "mandate:delegate", Target::Agent(&child), &r).allowed);
    assert!(!permit.decide(Principal::Agent(&agent()), "mandate:delegate", Target::Agent(&theirs), &r).allowed);
}

/// ADR 0020: a person's Cedar groups are the union of the sign-in source
/// (`groups`) and the SCIM source (`scim_groups`); either one alone puts
/// them in the group, and a name in both is one group.
#[test]
fn groups_from_sign_in_and_from_scim_are_one_union() {
    let e = PolicyEngine::compile(
        r#"permit(principal in Group::"eng", action == Action::"read", resource);
           permit(principal in Group::"ops", action == Action::"write", resource);"#,
        &actions(),
    )
    .unwrap();
    let api = Target::Api("https://api.example");
    let decide = |u: &User, action: &str| e.decide(Principal::User(u), action, api, &rel()).allowed;
    let nobody = User { groups: Vec::new(), scim_groups: Vec::new(), ..user() };
    assert!(!decide(&nobody, "read") && !decide(&nobody, "write"));
    let signed_in = User { groups: vec!["eng".into()], ..nobody.clone() };
    assert!(decide(&signed_in, "read") && !decide(&signed_in, "write"));
    let provisioned = User { scim_groups: vec!["ops".into()], ..nobody.clone() };
    assert!(!decide(&provisioned, "read") && decide(&provisioned, "write"));
    let both = User { groups: vec!["eng".into()], scim_groups: vec!["eng".into(), "ops".into()], ..nobody };
    assert!(decide(&both, "read") && decide(&both, "write"));
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
    assert!(e.decide(Principal::Agent(&a), "read", Target::Api("https://a.example"), &rel()).allowed);
    assert!(e.decide(Principal::Agent(&a), "write", Target::Api("https://a.example"), &rel()).allowed);
    // Unconstrained-action policies apply to named and unnamed actions alike.
    assert!(e.decide(Principal::Agent(&a), "read", Target::Api("https://open.example"), &rel()).allowed);
    assert!(e.decide(Principal::Agent(&a), "mandate:spawn", Target::Api("https://open.example"), &rel()).allowed);
    assert!(!e.decide(Principal::Agent(&a), "read", Target::Api("https://locked.example"), &rel()).allowed);
    assert!(!e.decide(Principal::Agent(&a), "mandate:spawn", Target::Api("https://a.example"), &rel()).allowed);
}

mod index_is_exact {
    use proptest::prelude::*;

    use super::*;

    fn agent_n(n: u128) -> Agent {
        Agent { id: AgentId::from_ulid(Ulid::from_parts(1, n)), ..agent() }
    }

    fn user_n(n: u128, group: &str) -> User {
        User { id: UserId::from_ulid(Ulid::from_parts(2, n)), groups: vec![group.into()], ..user() }
    }

    /// A random policy over two agents, two users, two groups, two actions
    /// and two APIs, with every kind of scope constraint the index splits on.
    fn policy() -> impl Strategy<Value = String> {
        let principal = prop_oneof![
            Just("principal".to_owned()),
            (1u128..3).prop_map(|n| format!("principal == Agent::\"{}\"", agent_n(n).id)),
            (1u128..3).prop_map(|n| format!("principal == User::\"{}\"", user_n(n, "eng").id)),
            Just("principal is Agent".to_owned()),
            Just("principal is User".to_owned()),
            prop_oneof![Just("eng"), Just("ops")].prop_map(|g| format!("principal in Group::\"{g}\"")),
        ];
        let action = prop_oneof![
            Just("action".to_owned()),
            Just("action == Action::\"read\"".to_owned()),
            Just("action == Action::\"write\"".to_owned()),
            Just("action in [Action::\"read\", Action::\"write\"]".to_owned()),
        ];
        let resource = prop_oneof![
            Just("resource".to_owned()),
            Just("resource == Api::\"https://a.example\"".to_owned()),
            Just("resource == Api::\"https://b.example\"".to_owned()),
            Just("resource is Api".to_owned()),
        ];
        (any::<bool>(), principal, action, resource)
            .prop_map(|(permit, p, a, r)| format!("{}({p}, {a}, {r});", if permit { "permit" } else { "forbid" }))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the policies, the indexed decision is the decision over
        /// the whole set.
        #[test]
        fn indexed_decisions_equal_unindexed_ones(
            policies in proptest::collection::vec(policy(), 0..12),
            who in 0usize..4,
            action in prop_oneof![Just("read"), Just("write")],
            api in prop_oneof![Just("https://a.example"), Just("https://b.example")],
        ) {
            let engine = PolicyEngine::compile(&policies.join("\n"), &actions()).unwrap();
            let (a1, a2, u1, u2) = (agent_n(1), agent_n(2), user_n(1, "eng"), user_n(2, "ops"));
            let principal = match who {
                0 => Principal::Agent(&a1),
                1 => Principal::Agent(&a2),
                2 => Principal::User(&u1),
                _ => Principal::User(&u2),
            };
            let indexed = engine.decide(principal, action, Target::Api(api), &rel());
            prop_assert_eq!(indexed.allowed, engine.decide_unindexed(principal, action, Target::Api(api), &rel()), "{:?}", policies);
            prop_assert!(indexed.errors.is_empty());
        }
    }
}

/// The cache keys of principals change with every field a decision reads,
/// so a cached decision is never reused for a principal that changed.
#[test]
fn principal_keys_cover_every_entity_field() {
    let base = user();
    type Edit<T> = Box<dyn Fn(&mut T)>;
    let variants: Vec<Edit<User>> = vec![
        Box::new(|u| u.name = "Bob".into()),
        Box::new(|u| u.email = "bob@example.com".into()),
        Box::new(|u| u.status = UserStatus::Disabled),
        Box::new(|u| u.groups = vec!["ops".into()]),
        Box::new(|u| u.scim_groups = vec!["ops".into()]),
        Box::new(|u| {
            u.attributes.insert("level".into(), "2".into());
        }),
        Box::new(|u| u.id = UserId::from_ulid(Ulid::from_parts(1, 9))),
    ];
    for change in variants {
        let mut u = base.clone();
        change(&mut u);
        let key = |u: &User| decision_key(Principal::User(u), Target::Api("https://a.example"), &rel()).unwrap();
        assert_ne!(key(&u), key(&base), "{u:?}");
    }
    let a = agent();
    let agents: Vec<Edit<Agent>> = vec![
        Box::new(|a| a.name = "b".into()),
        Box::new(|a| a.owner = UserId::from_ulid(Ulid::from_parts(1, 3))),
        Box::new(|a| a.kind = AgentKind::Ephemeral),
        Box::new(|a| a.status = AgentStatus::Suspended),
        Box::new(|a| a.parent = Some(AgentId::from_ulid(Ulid::from_parts(1, 4)))),
        Box::new(|a| a.id = AgentId::from_ulid(Ulid::from_parts(1, 5))),
    ];
    // Every record a changed agent reaches is loaded, so that the key can be built.
    let mut everything = rel();
    everything.add_user(User { id: UserId::from_ulid(Ulid::from_parts(1, 3)), ..user() });
    everything.add_agent(Agent { id: AgentId::from_ulid(Ulid::from_parts(1, 4)), ..agent() });
    let api = Target::Api("https://a.example");
    for change in agents {
        let mut b = a.clone();
        change(&mut b);
        let as_principal = |x: &Agent| decision_key(Principal::Agent(x), api, &everything).unwrap();
        assert_ne!(as_principal(&b), as_principal(&a), "{b:?}");
        let as_target = |x: &Agent| decision_key(Principal::User(&base), Target::Agent(x), &everything).unwrap();
        assert_ne!(as_target(&b), as_target(&a));
    }
    // A change to a record reached through an attribute changes the key too:
    // the owner's groups and tags, and the parent's owner.
    let child = Agent { parent: Some(AgentId::from_ulid(Ulid::from_parts(1, 4))), ..agent() };
    let key_with = |r: &Related| decision_key(Principal::Agent(&child), api, r).unwrap();
    let before = key_with(&everything);
    for change in [
        Box::new(|u: &mut User| u.groups.push("contractors".into())) as Edit<User>,
        Box::new(|u: &mut User| {
            u.attributes.insert("clearance".into(), "low".into());
        }),
    ] {
        let mut r = everything.clone();
        let mut owner = user();
        change(&mut owner);
        r.add_user(owner);
        assert_ne!(key_with(&r), before);
    }
    let mut r = everything.clone();
    r.add_agent(Agent { id: AgentId::from_ulid(Ulid::from_parts(1, 4)), status: AgentStatus::Suspended, ..agent() });
    assert_ne!(key_with(&r), before, "the parent's status is reachable");
    // An unresolved reference has no key: such a decision is not cached.
    assert!(decision_key(Principal::Agent(&child), api, &rel()).is_err());
}

/// SECURITY row 41: the deepest and longest text the bounds admit parses
/// without overflowing, and is evaluated and dropped on a thread with a
/// Tokio worker's 2 MiB stack; anything deeper is refused before parsing.
#[test]
fn the_worst_admitted_policy_neither_crashes_parsing_nor_deciding() {
    let open = "(".repeat(bounds::MAX_BRACKET_DEPTH - 2);
    let close = ")".repeat(bounds::MAX_BRACKET_DEPTH - 2);
    let chain = vec!["principal has parent"; bounds::MAX_OPERATORS / 2 - 60].join(" || ");
    let ifs = "if true then ".repeat(bounds::MAX_IFS - 1);
    let elses = " else false".repeat(bounds::MAX_IFS - 1);
    let worst = format!("permit (principal is Agent, action, resource) when {{ {open}{ifs}({chain}){elses}{close} }};");
    assert_eq!(bounds::check(&worst), Ok(()), "the test policy must sit within the bounds");
    let text = format!("{worst}\n").repeat(20);
    let engine = PolicyEngine::compile(&text, &actions()).expect("compiles");
    let worker = std::thread::Builder::new().stack_size(2 * 1024 * 1024);
    let handle = worker
        .spawn(move || {
            let d = engine.decide(Principal::Agent(&agent()), "read", Target::Api("https://a.example"), &rel());
            drop(engine);
            d
        })
        .unwrap();
    let d = handle.join().expect("no overflow while deciding or dropping");
    // No parent: every disjunct is false, so nothing permits it (or the
    // evaluator's own depth guard refused): a denial either way.
    assert!(!d.allowed, "{d:?}");

    for deeper in [
        format!("permit (principal, action, resource) when {{ {}true{} }};", "(".repeat(150), ")".repeat(150)),
        format!("permit (principal, action, resource) when {{ {}true{} }};", "(".repeat(100_000), ")".repeat(100_000)),
        format!("permit (principal, action, resource) when {{ {} }};", vec!["true"; 200_000].join(" && ")),
    ] {
        match PolicyEngine::compile(&deeper, &actions()) {
            Err(PolicyError::Invalid(m)) => assert!(m.join(" ").contains("split it up"), "{m:?}"),
            other => panic!("a text beyond the bounds was not refused before parsing: {other:?}"),
        }
    }
}

#[test]
fn approval_reuse_windows_are_parsed_and_the_shortest_applies() {
    assert_eq!(parse_reuse_window("30s"), Some(30));
    assert_eq!(parse_reuse_window("5m"), Some(300));
    assert_eq!(parse_reuse_window("24h"), Some(86_400));
    for bad in ["", "m", "0s", "25h", "5", "-5m", "5d", "1.5h", "９m", "99999999h"] {
        assert_eq!(parse_reuse_window(bad), None, "{bad:?}");
    }
    let e = PolicyEngine::compile(
        r#"@approval("user") @approval_reuse("10m") permit(principal is Agent, action == Action::"read", resource);
           @approval("owner") @approval_reuse("2m") permit(principal is Agent, action == Action::"read", resource);
           @approval("user") permit(principal is Agent, action == Action::"write", resource);
           @approval("user") @approval_reuse("1h") permit(principal is Agent, action == Action::"write", resource);"#,
        &actions(),
    )
    .unwrap();
    let api = Target::Api("https://a.example");
    let read = e.decide(Principal::Agent(&agent()), "read", api, &rel());
    assert_eq!((read.approval, read.approval_reuse), (Some(Approver::User), Some(120)));
    let write = e.decide(Principal::Agent(&agent()), "write", api, &rel());
    assert_eq!(write.approval_reuse, None, "one single-use @approval permit makes it single use");
    assert!(
        PolicyEngine::compile(r#"@approval_reuse("5m") permit(principal, action, resource);"#, &actions()).is_err(),
        "reuse without @approval"
    );
}

#[test]
fn policy_sees_how_an_agent_came_to_be() {
    let e = PolicyEngine::compile(
        r#"permit (principal is Agent, action == Action::"read", resource);
           forbid (principal is Agent, action, resource) when { principal.origin == "dynamic" };"#,
        &actions(),
    )
    .unwrap();
    let mut a = agent();
    assert!(e.decide(Principal::Agent(&a), "read", Target::Api("https://api.example"), &rel()).allowed);
    a.origin = mandate_model::records::AgentOrigin::Dynamic;
    assert!(!e.decide(Principal::Agent(&a), "read", Target::Api("https://api.example"), &rel()).allowed);
}

/// DESIGN §13: an ephemeral agent is `in` its parent, transitively, and
/// one that no policy names is decided as its parent; its own `forbid`
/// wins and its parent's `forbid` reaches it.
#[test]
fn an_ephemeral_agent_is_decided_as_its_parent() {
    let api = Target::Api("https://api.example");
    let parent = agent();
    let child = Agent {
        id: AgentId::from_ulid(Ulid::from_parts(1, 20)),
        kind: AgentKind::Ephemeral,
        parent: Some(parent.id),
        ..agent()
    };
    let grandchild = Agent { id: AgentId::from_ulid(Ulid::from_parts(1, 21)), parent: Some(child.id), ..child.clone() };
    let mut r = rel();
    r.add_agent(parent.clone());
    r.add_agent(child.clone());
    let named = format!(
        r#"permit(principal == Agent::"{p}", action == Action::"read", resource);
           permit(principal in Agent::"{p}", action == Action::"write", resource) when {{ principal != Agent::"{p}" }};"#,
        p = parent.id
    );
    let e = PolicyEngine::compile(&named, &actions()).unwrap();
    // No policy names the descendants for read: they have the parent's.
    for who in [&parent, &child, &grandchild] {
        let d = e.decide(Principal::Agent(who), "read", api, &r);
        assert!(d.allowed, "{} {d:?}", who.id);
    }
    assert!(e.decide(Principal::Agent(&child), "read", api, &r).reasons[0].contains("as parent of"));
    // `principal in Agent::"<parent>"` covers the child and the grandchild.
    assert!(!e.decide(Principal::Agent(&parent), "write", api, &r).allowed);
    assert!(e.decide(Principal::Agent(&child), "write", api, &r).allowed);
    assert!(e.decide(Principal::Agent(&grandchild), "write", api, &r).allowed);
    // A persistent agent with a parent field gets nothing from it.
    let persistent = Agent { kind: AgentKind::Persistent, ..child.clone() };
    assert!(!e.decide(Principal::Agent(&persistent), "read", api, &r).allowed);
    // A forbid on the child wins over the parent's permit.
    let forbid_children = format!(
        r#"{named}
           forbid(principal is Agent, action, resource) when {{ principal.kind == "ephemeral" }};"#
    );
    let e = PolicyEngine::compile(&forbid_children, &actions()).unwrap();
    assert!(e.decide(Principal::Agent(&parent), "read", api, &r).allowed);
    assert!(!e.decide(Principal::Agent(&child), "read", api, &r).allowed);
    // A forbid on the parent reaches the child that inherits.
    let forbid_parent = format!(
        r#"{named}
           forbid(principal == Agent::"{p}", action == Action::"read", resource);"#,
        p = parent.id
    );
    let e = PolicyEngine::compile(&forbid_parent, &actions()).unwrap();
    assert!(!e.decide(Principal::Agent(&child), "read", api, &r).allowed);
    assert!(!e.decide(Principal::Agent(&grandchild), "read", api, &r).allowed);
}

/// DESIGN §13: the context record carries the user, the chain, the time,
/// the DPoP binding and the keys a resource declares.
#[test]
fn policies_decide_on_the_context() {
    let api = Target::Api("https://api.example");
    let declared = BTreeMap::from([("amount".to_owned(), ContextType::Long)]);
    let text = r#"permit(principal is Agent, action == Action::"read", resource)
                    when { context has user && principal.owner == context.user && context.chain.contains(principal) };
                  permit(principal is Agent, action == Action::"write", resource)
                    when { context has amount && context.amount < 100 && context.dpop_bound && context.now > 0 };"#;
    // Undeclared, `context.amount` without `has` does not validate.
    assert!(
        PolicyEngine::compile(r#"permit(principal, action, resource) when { context.amount < 1 };"#, &actions())
            .is_err()
    );
    let e = PolicyEngine::compile_with(text, &actions(), &declared).unwrap();
    let a = agent();
    let facts = |user: Option<UserId>, amount: i64| Facts {
        user,
        chain: vec![a.id],
        now: 1_700_000_000,
        dpop_bound: true,
        client_address: None,
        declared: BTreeMap::from([("amount".to_owned(), ContextValue::Long(amount))]),
    };
    let decide = |action, f: &Facts| e.decide_with(Principal::Agent(&a), action, api, &rel(), f).allowed;
    assert!(decide("read", &facts(Some(user().id), 0)));
    assert!(!decide("read", &facts(None, 0)));
    let stranger = UserId::from_ulid(Ulid::from_parts(1, 30));
    let mut with_stranger = rel();
    with_stranger.add_user(User { id: stranger, ..user() });
    assert!(!e.decide_with(Principal::Agent(&a), "read", api, &with_stranger, &facts(Some(stranger), 0)).allowed);
    // A context user whose record is not loaded denies.
    let d = e.decide_with(Principal::Agent(&a), "read", api, &rel(), &facts(Some(stranger), 0));
    assert!(!d.allowed && !d.errors.is_empty(), "{d:?}");
    assert!(decide("write", &facts(None, 99)));
    assert!(!decide("write", &facts(None, 100)));
    assert!(!decide("write", &Facts { dpop_bound: false, ..facts(None, 5) }));
    // The facts are part of the decision key.
    let k = |f: &Facts| decision_key_with(Principal::Agent(&a), api, &rel(), f).unwrap();
    assert_ne!(k(&facts(None, 99)), k(&facts(None, 100)));
    // Mandate's own keys cannot be declared.
    let reserved =
        Facts { declared: BTreeMap::from([("user".to_owned(), ContextValue::Bool(true))]), ..facts(None, 1) };
    assert!(!decide("write", &reserved));
}

/// `context.client_address` is an `ipaddr`: a policy can confine an agent
/// to a network, and a decision without a known address does not match.
#[test]
fn policies_decide_on_the_client_address() {
    let api = Target::Api("https://api.example");
    let text = r#"permit(principal is Agent, action == Action::"read", resource)
                    when { context has client_address && context.client_address.isInRange(ip("10.0.0.0/8")) };"#;
    let e = PolicyEngine::compile(text, &actions()).unwrap();
    let a = agent();
    let at = |addr: Option<&str>| Facts {
        chain: vec![a.id],
        now: 1_700_000_000,
        client_address: addr.map(|s| s.parse().unwrap()),
        ..Facts::default()
    };
    let decide = |f: &Facts| e.decide_with(Principal::Agent(&a), "read", api, &rel(), f).allowed;
    assert!(decide(&at(Some("10.1.2.3"))));
    assert!(!decide(&at(Some("192.0.2.7"))));
    assert!(!decide(&at(Some("::1"))));
    assert!(!decide(&at(None)));
    // The address is part of the decision key.
    let k = |f: &Facts| decision_key_with(Principal::Agent(&a), api, &rel(), f).unwrap();
    assert_ne!(k(&at(Some("10.1.2.3"))), k(&at(Some("10.1.2.4"))));
}

#[test]
fn may_act_is_read_from_the_permits_that_allow_and_checked_at_load() {
    let b = AgentId::from_ulid(Ulid::from_parts(1_700_000_000_000, 77));
    let e = PolicyEngine::compile(
        &format!(
            r#"@may_act("{b} group:ops") permit(principal is Agent, action == Action::"read", resource);
               permit(principal is Agent, action == Action::"write", resource);
               @may_act("group:ops") permit(principal is Agent, action == Action::"write", resource)
                 when {{ false }};"#
        ),
        &actions(),
    )
    .unwrap();
    let api = Target::Api("https://a.example");
    let read = e.decide(Principal::Agent(&agent()), "read", api, &rel());
    assert!(read.allowed);
    assert_eq!(read.may_act.iter().map(|m| m.to_list()).collect::<Vec<_>>(), vec![format!("{b} group:ops")]);
    // A permit that does not apply restricts nothing.
    let write = e.decide(Principal::Agent(&agent()), "write", api, &rel());
    assert!(write.allowed && write.may_act.is_empty(), "{write:?}");
    for bad in [
        r#"@may_act("") permit(principal, action, resource);"#,
        r#"@may_act("usr_01HZZZZZZZZZZZZZZZZZZZZZZZ") permit(principal, action, resource);"#,
        r#"@may_act("ops") permit(principal, action, resource);"#,
        r#"@may_act("group:ops") forbid(principal, action, resource);"#,
    ] {
        match PolicyEngine::compile(bad, &actions()) {
            Err(PolicyError::Invalid(m)) => assert!(m.join(" ").contains("@may_act"), "{m:?}"),
            other => panic!("{bad} was not refused: {other:?}"),
        }
    }
}

#[test]
fn group_approvals_are_parsed_and_the_strictest_applies() {
    let e = PolicyEngine::compile(
        r#"@approval("group:finance") @approvals("2") permit(principal is Agent, action == Action::"read", resource);
           @approval("user") permit(principal is Agent, action == Action::"read", resource);
           @approval("group:ops") permit(principal is Agent, action == Action::"write", resource);
           @approval("group:eng") permit(principal is Agent, action == Action::"write", resource);
           @approval("owner") permit(principal is Agent, action == Action::"write", resource);"#,
        &actions(),
    )
    .unwrap();
    let api = Target::Api("https://a.example");
    let read = e.decide(Principal::Agent(&agent()), "read", api, &rel());
    assert_eq!(read.approval, Some(Approver::Group { name: "finance".into(), required: 2 }));
    let write = e.decide(Principal::Agent(&agent()), "write", api, &rel());
    assert_eq!(write.approval, Some(Approver::Group { name: "eng".into(), required: 1 }), "a group, first by name");
    assert_eq!(
        Approver::stricter(Some(Approver::User), Some(Approver::Owner)),
        Some(Approver::User),
        "the user over the owner, as before"
    );
    assert_eq!(parse_approver("group:"), None);
    assert_eq!(parse_approver("group: x"), None);
    assert_eq!(parse_approver("team:x"), None);
}

#[test]
fn invalid_approval_annotations_refuse_the_set() {
    for (bad, why) in [
        (r#"@approvals("2") @approval("user") permit(principal, action, resource);"#, "@approvals needs"),
        (r#"@approvals("2") permit(principal, action, resource);"#, "@approvals needs"),
        (r#"@approval("group:x") @approvals("1") permit(principal, action, resource);"#, "@approvals must be"),
        (r#"@approval("group:x") @approvals("6") permit(principal, action, resource);"#, "@approvals must be"),
        (r#"@approval("group:x") @approvals("+2") permit(principal, action, resource);"#, "@approvals must be"),
        (r#"@approval("group:x") @approvals("two") permit(principal, action, resource);"#, "@approvals must be"),
        (r#"@approval("group:") permit(principal, action, resource);"#, "@approval must be"),
        (r#"@approval("group:x") forbid(principal, action, resource);"#, "permits only"),
        (r#"@window("09:00-18:00 Europe/Paris") forbid(principal, action, resource);"#, "permits only"),
        (r#"@window("09:00-18:00") permit(principal, action, resource);"#, "@window must be like"),
        (r#"@window("18:00-09:00 Europe/Paris") permit(principal, action, resource);"#, "must end after"),
        (r#"@window("09:00-18:00 Mars/Olympus") permit(principal, action, resource);"#, "not a known IANA"),
        (r#"@window("9:00-18:00 Europe/Paris") permit(principal, action, resource);"#, "not a time"),
        (r#"@window("09:60-18:00 Europe/Paris") permit(principal, action, resource);"#, "not a time"),
        (r#"@window("Mon-Fry 09:00-18:00 Europe/Paris") permit(principal, action, resource);"#, "not a day"),
    ] {
        match PolicyEngine::compile(bad, &actions()) {
            Err(PolicyError::Invalid(m)) => assert!(m.join(" ").contains(why), "{bad}: {m:?}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

/// Unix seconds of a UTC date and time.
fn at(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> i64 {
    jiff::civil::date(y, mo, d).at(h, mi, 0, 0).to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp().as_second()
}

#[test]
fn windows_follow_the_zone_across_daylight_saving() {
    let w = Window::parse("09:00-18:00 Europe/Paris").unwrap();
    // Winter: Paris is UTC+1. 2026-01-15 is a Thursday.
    assert!(!w.contains(at(2026, 1, 15, 7, 59)), "08:59 in Paris");
    assert!(w.contains(at(2026, 1, 15, 8, 0)), "09:00 in Paris");
    assert!(w.contains(at(2026, 1, 15, 16, 59)), "17:59 in Paris");
    assert!(!w.contains(at(2026, 1, 15, 17, 0)), "18:00 in Paris: the end is outside");
    // Summer: UTC+2, the same UTC hour is now inside.
    assert!(w.contains(at(2026, 7, 15, 7, 0)), "09:00 in Paris in July");
    assert!(!w.contains(at(2026, 7, 15, 16, 0)), "18:00 in Paris in July");
    // The spring-forward day (2026-03-29): 09:00 local is 07:00 UTC.
    assert!(!w.contains(at(2026, 3, 29, 6, 59)));
    assert!(w.contains(at(2026, 3, 29, 7, 0)));
    let weekdays = Window::parse("Mon-Fri 09:00-18:00 Europe/Paris").unwrap();
    assert!(weekdays.contains(at(2026, 1, 16, 10, 0)), "Friday");
    assert!(!weekdays.contains(at(2026, 1, 17, 10, 0)), "Saturday");
    // Sunday 23:30 UTC is Monday 00:30 in Paris.
    let monday = Window::parse("Mon 00:00-24:00 Europe/Paris").unwrap();
    assert!(monday.contains(at(2026, 1, 18, 23, 30)));
    assert!(!monday.contains(at(2026, 1, 18, 22, 30)));
    let wrap = Window::parse("Sat-Mon 00:00-24:00 UTC").unwrap();
    assert!(wrap.contains(at(2026, 1, 18, 12, 0)) && !wrap.contains(at(2026, 1, 20, 12, 0)));
}

#[test]
fn a_permit_applies_only_inside_its_window() {
    let e = PolicyEngine::compile(
        r#"@window("Mon-Fri 09:00-18:00 Europe/Paris")
           permit(principal is Agent, action == Action::"read", resource);
           @window("09:00-18:00 Europe/Paris") @approval("group:finance") @approvals("2")
           permit(principal is Agent, action == Action::"write", resource);"#,
        &actions(),
    )
    .unwrap();
    let api = Target::Api("https://a.example");
    let facts = |now| Facts { now, ..Facts::default() };
    let inside = e.decide_with(Principal::Agent(&agent()), "read", api, &rel(), &facts(at(2026, 1, 15, 9, 0)));
    assert!(inside.allowed, "{inside:?}");
    let outside = e.decide_with(Principal::Agent(&agent()), "read", api, &rel(), &facts(at(2026, 1, 15, 20, 0)));
    assert!(!outside.allowed);
    assert_eq!(outside.reasons, vec!["policy0 applies only Mon-Fri 09:00-18:00 Europe/Paris".to_owned()]);
    let write = e.decide_with(Principal::Agent(&agent()), "write", api, &rel(), &facts(at(2026, 1, 15, 9, 0)));
    assert_eq!(write.approval, Some(Approver::Group { name: "finance".into(), required: 2 }));
    let late = e.decide_with(Principal::Agent(&agent()), "write", api, &rel(), &facts(at(2026, 1, 15, 19, 0)));
    assert!(!late.allowed && late.approval.is_none(), "an approval under a closed window gives nothing: {late:?}");
}
