//! Cedar entities built from records (`policy::scene`), the decision cache
//! key over the same records (`policy::decision_key`) and decisions on
//! them (`PolicyEngine::decide`), for users, agents and resources whose
//! names, emails, groups, attributes and properties are arbitrary strings.
//!
//! - Building never panics. It succeeds whenever every owner and parent
//!   reachable from the principal and the target is among the related
//!   records (and no chain is longer than `MAX_PARENTS`), and fails when
//!   one is missing.
//! - The entities hold exactly the records' values, strings verbatim, as
//!   written out by Cedar and compared with what this target expects.
//! - The decision key covers the entities: after changing one field of
//!   one record, if the entities differ then so does the key (else a
//!   cached decision would outlive a change that matters).
//! - Decisions under fixed policies (a group, a tag, an owner's name) are
//!   what the records say, and a scene that cannot be built is a denial.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use mandate_fuzz::{Target, Verdict, ensure};
use mandate_model::records::{Agent, AgentKind, AgentStatus, User, UserStatus};
use mandate_model::{AgentId, UserId};
use mandate_policy::{MAX_PARENTS, PolicyEngine, Principal, Related, Target as Aimed, decision_key, scene};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use ulid::Ulid;

use crate::common::nasty_string;

pub const OWNER_NAME: &str = "Alice \"the\" admin";

static ENGINE: LazyLock<PolicyEngine> = LazyLock::new(|| {
    let text = format!(
        r#"@id("eng-read") permit(principal in Group::"eng", action == Action::"read", resource);
           @id("dept-write") permit(principal is User, action == Action::"write", resource)
             when {{ principal.hasTag("dept") && principal.getTag("dept") == "r&d" }};
           @id("owner-read") permit(principal is Agent, action == Action::"read", resource)
             when {{ principal.owner.name == {} }};"#,
        serde_json::Value::String(OWNER_NAME.to_owned())
    );
    let actions: BTreeSet<String> = ["read", "write"].into_iter().map(String::from).collect();
    PolicyEngine::compile(&text, &actions).unwrap()
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserSpec {
    pub id: u8,
    pub name: String,
    pub email: String,
    pub groups: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub id: u8,
    pub name: String,
    pub owner: u8,
    pub ephemeral: bool,
    pub parent: Option<u8>,
    /// 0 active, 1 suspended, anything else retired.
    pub status: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Who {
    /// The n-th user (modulo their number).
    User(u8),
    /// The n-th agent (modulo their number), or the first user if none.
    Agent(u8),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Aim {
    Api(String),
    /// The n-th agent (modulo their number), or an API if none.
    Agent(u8),
    Resource {
        api: String,
        id: String,
        properties: BTreeMap<String, String>,
    },
}

/// One field of one record changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Tweak {
    UserName(u8, String),
    UserEmail(u8, String),
    UserStatus(u8),
    UserGroup(u8, String),
    UserAttribute(u8, String, String),
    AgentName(u8, String),
    AgentOwner(u8, u8),
    AgentKind(u8),
    AgentStatus(u8, u8),
    AgentParent(u8, Option<u8>),
}

/// Records, which of them ask and are asked about, and which of them the
/// decision cannot see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub users: Vec<UserSpec>,
    pub agents: Vec<AgentSpec>,
    pub principal: Who,
    pub target: Aim,
    #[serde(default)]
    pub withheld_users: Vec<u8>,
    #[serde(default)]
    pub withheld_agents: Vec<u8>,
    #[serde(default)]
    pub tweak: Option<Tweak>,
}

fn user_id(n: u8) -> UserId {
    UserId::from_ulid(Ulid::from_parts(1, u128::from(n)))
}

fn agent_id(n: u8) -> AgentId {
    AgentId::from_ulid(Ulid::from_parts(2, u128::from(n)))
}

fn user(s: &UserSpec) -> User {
    User {
        id: user_id(s.id),
        name: s.name.clone(),
        email: s.email.clone(),
        groups: s.groups.clone(),
        attributes: s.attributes.clone(),
        status: if s.disabled { UserStatus::Disabled } else { UserStatus::Active },
        created_at: OffsetDateTime::UNIX_EPOCH,
        password_hash: None,
        scim_groups: Vec::new(),
    }
}

fn agent(s: &AgentSpec) -> Agent {
    Agent {
        id: agent_id(s.id),
        name: s.name.clone(),
        owner: user_id(s.owner),
        kind: if s.ephemeral { AgentKind::Ephemeral } else { AgentKind::Persistent },
        parent: s.parent.map(agent_id),
        status: match s.status {
            0 => AgentStatus::Active,
            1 => AgentStatus::Suspended,
            _ => AgentStatus::Retired,
        },
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

/// The scene with one record per id (the first), the tweak applied.
fn normalised(scene: &Scene, tweaked: bool) -> Scene {
    let mut s = scene.clone();
    let mut seen = BTreeSet::new();
    s.users.retain(|u| seen.insert(u.id));
    let mut seen = BTreeSet::new();
    s.agents.retain(|a| seen.insert(a.id));
    if tweaked && let Some(t) = &scene.tweak {
        match t.clone() {
            Tweak::UserName(i, v) => nth(&mut s.users, i).into_iter().for_each(|u| u.name = v.clone()),
            Tweak::UserEmail(i, v) => nth(&mut s.users, i).into_iter().for_each(|u| u.email = v.clone()),
            Tweak::UserStatus(i) => nth(&mut s.users, i).into_iter().for_each(|u| u.disabled = !u.disabled),
            Tweak::UserGroup(i, g) => nth(&mut s.users, i).into_iter().for_each(|u| u.groups.push(g.clone())),
            Tweak::UserAttribute(i, k, v) => {
                nth(&mut s.users, i).into_iter().for_each(|u| {
                    u.attributes.insert(k.clone(), v.clone());
                });
            }
            Tweak::AgentName(i, v) => nth(&mut s.agents, i).into_iter().for_each(|a| a.name = v.clone()),
            Tweak::AgentOwner(i, o) => nth(&mut s.agents, i).into_iter().for_each(|a| a.owner = o),
            Tweak::AgentKind(i) => nth(&mut s.agents, i).into_iter().for_each(|a| a.ephemeral = !a.ephemeral),
            Tweak::AgentStatus(i, v) => nth(&mut s.agents, i).into_iter().for_each(|a| a.status = v),
            Tweak::AgentParent(i, p) => nth(&mut s.agents, i).into_iter().for_each(|a| a.parent = p),
        }
    }
    s
}

/// The `i`-th element, modulo the length.
fn nth<T>(v: &mut [T], i: u8) -> Option<&mut T> {
    let n = v.len();
    v.get_mut(usize::from(i) % n.max(1))
}

/// The records of a normalised scene.
struct Built {
    related: Related,
    principal: PrincipalRecord,
    target: TargetRecord,
}

#[allow(clippy::large_enum_variant)] // a test fixture, built a few times per case
enum PrincipalRecord {
    User(User),
    Agent(Agent),
}

enum TargetRecord {
    Api(String),
    Agent(Box<Agent>),
    Resource { api: String, id: String, properties: BTreeMap<String, String> },
}

fn build(s: &Scene) -> Option<Built> {
    let mut related = Related::new();
    for u in &s.users {
        if !s.withheld_users.contains(&u.id) {
            related.add_user(user(u));
        }
    }
    for a in &s.agents {
        if !s.withheld_agents.contains(&a.id) {
            related.add_agent(agent(a));
        }
    }
    let nth_agent = |i: u8| s.agents.get(usize::from(i) % s.agents.len().max(1)).map(agent);
    let principal = match s.principal {
        Who::Agent(i) if !s.agents.is_empty() => PrincipalRecord::Agent(nth_agent(i)?),
        Who::User(i) | Who::Agent(i) => {
            PrincipalRecord::User(user(s.users.get(usize::from(i) % s.users.len().max(1))?))
        }
    };
    let target = match &s.target {
        Aim::Agent(i) if !s.agents.is_empty() => TargetRecord::Agent(Box::new(nth_agent(*i)?)),
        Aim::Agent(_) => TargetRecord::Api("https://api.example".into()),
        Aim::Api(a) => TargetRecord::Api(a.clone()),
        Aim::Resource { api, id, properties } => {
            TargetRecord::Resource { api: api.clone(), id: id.clone(), properties: properties.clone() }
        }
    };
    Some(Built { related, principal, target })
}

impl Built {
    fn principal(&self) -> Principal<'_> {
        match &self.principal {
            PrincipalRecord::User(u) => Principal::User(u),
            PrincipalRecord::Agent(a) => Principal::Agent(a),
        }
    }

    fn target(&self) -> Aimed<'_> {
        match &self.target {
            TargetRecord::Api(a) => Aimed::Api(a),
            TargetRecord::Agent(a) => Aimed::Agent(a),
            TargetRecord::Resource { api, id, properties } => Aimed::Resource { api, id, properties },
        }
    }

    /// The agents a decision starts from.
    fn start_agents(&self) -> Vec<&Agent> {
        let mut v = Vec::new();
        if let PrincipalRecord::Agent(a) = &self.principal {
            v.push(a);
        }
        if let TargetRecord::Agent(a) = &self.target {
            v.push(a);
        }
        v
    }

    /// Walks owners and parents from the start agents: the records reached,
    /// whether a reference is missing, and the longest chain.
    fn reach(&self) -> (Vec<&Agent>, Vec<&User>, bool, usize) {
        let (mut agents, mut users, mut missing, mut longest) = (Vec::new(), Vec::new(), false, 0);
        for start in self.start_agents() {
            let mut cur = start;
            let mut depth = 0;
            let mut chain = BTreeSet::new();
            loop {
                if !chain.insert(cur.id) {
                    break;
                }
                longest = longest.max(depth);
                if !agents.iter().any(|a: &&Agent| a.id == cur.id) {
                    agents.push(cur);
                }
                match self.related.user(cur.owner) {
                    Some(u) => {
                        if !users.iter().any(|x: &&User| x.id == u.id) {
                            users.push(u);
                        }
                    }
                    None => missing = true,
                }
                let Some(p) = cur.parent else { break };
                match self.related.agent(p) {
                    Some(parent) => cur = parent,
                    None => {
                        missing = true;
                        break;
                    }
                }
                depth += 1;
            }
        }
        (agents, users, missing, longest)
    }

    /// The entities Cedar must hold, by uid, in Cedar's JSON form.
    /// DESIGN §13: an agent is `in` its parent and, through the loaded
    /// records, every ancestor (Cedar's transitive closure of `parents`).
    fn ancestors(&self, a: &Agent) -> Vec<String> {
        let (mut out, mut seen, mut cur) = (Vec::new(), BTreeSet::new(), a.parent);
        while let Some(p) = cur {
            if !seen.insert(p) {
                break;
            }
            out.push(p.to_string());
            cur = self.related.agent(p).and_then(|x| x.parent);
        }
        out
    }

    /// Whether walking parents from a start agent comes back to an agent
    /// already passed.
    fn has_parent_cycle(&self) -> bool {
        self.start_agents().into_iter().any(|start| {
            let (mut seen, mut cur) = (BTreeSet::from([start.id]), start.parent);
            while let Some(p) = cur {
                if !seen.insert(p) {
                    return true;
                }
                cur = self.related.agent(p).and_then(|x| x.parent);
            }
            false
        })
    }

    fn expected_entities(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        let mut put = |e: Value| {
            let key = e["uid"].to_string();
            out.entry(key).or_insert(e);
        };
        match &self.principal {
            PrincipalRecord::User(u) => put(user_json(u)),
            PrincipalRecord::Agent(a) => put(agent_json(a, &self.ancestors(a))),
        }
        match &self.target {
            TargetRecord::Api(a) => put(plain("Api", a, json!([]), json!({}))),
            TargetRecord::Agent(a) => put(agent_json(a, &self.ancestors(a))),
            TargetRecord::Resource { api, id, properties } => {
                put(plain("Resource", id, json!([{"type": "Api", "id": api}]), json!(properties)));
                put(plain("Api", api, json!([]), json!({})));
            }
        }
        let (agents, users, _, _) = self.reach();
        for a in agents {
            put(agent_json(a, &self.ancestors(a)));
        }
        for u in users {
            put(user_json(u));
        }
        out
    }
}

fn uid(ty: &str, id: &str) -> Value {
    json!({"type": ty, "id": id})
}

fn plain(ty: &str, id: &str, parents: Value, tags: Value) -> Value {
    json!({"uid": uid(ty, id), "attrs": {}, "parents": parents, "tags": tags})
}

fn user_json(u: &User) -> Value {
    let groups: BTreeSet<&String> = u.groups.iter().collect();
    json!({
        "uid": uid("User", &u.id.to_string()),
        "attrs": {
            "name": u.name,
            "email": u.email,
            "status": match u.status { UserStatus::Active => "active", UserStatus::Disabled => "disabled" },
        },
        "parents": groups.into_iter().map(|g| uid("Group", g)).collect::<Vec<_>>(),
        "tags": u.attributes,
    })
}

fn agent_json(a: &Agent, ancestors: &[String]) -> Value {
    let mut attrs = json!({
        "name": a.name,
        "owner": {"__entity": uid("User", &a.owner.to_string())},
        "kind": match a.kind { AgentKind::Persistent => "persistent", AgentKind::Ephemeral => "ephemeral" },
        "status": a.status.as_str(),
        "origin": a.origin.as_str(),
    });
    if let Some(p) = a.parent {
        attrs["parent"] = json!({"__entity": uid("Agent", &p.to_string())});
    }
    let parents: Vec<Value> = ancestors.iter().map(|p| uid("Agent", p)).collect();
    json!({"uid": uid("Agent", &a.id.to_string()), "attrs": attrs, "parents": parents, "tags": {}})
}

/// Cedar's JSON for a set of entities, keyed like `expected_entities`,
/// parents sorted and absent tags empty.
fn actual_entities(entities: &cedar_policy::Entities) -> Result<BTreeMap<String, Value>, String> {
    let v = entities.to_json_value().map_err(|e| e.to_string())?;
    let list = v.as_array().ok_or("entities are not a JSON array")?;
    let mut out = BTreeMap::new();
    for e in list {
        let mut e = e.clone();
        if let Some(parents) = e.get_mut("parents").and_then(Value::as_array_mut) {
            parents.sort_by_key(|p| p.to_string());
        }
        if e.get("tags").is_none() {
            e["tags"] = json!({});
        }
        out.insert(e["uid"].to_string(), e);
    }
    Ok(out)
}

/// Parents in one order, so that two entity maps compare as sets.
fn sorted_parents(mut m: BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    for e in m.values_mut() {
        if let Some(parents) = e.get_mut("parents").and_then(Value::as_array_mut) {
            parents.sort_by_key(|p| p.to_string());
        }
    }
    m
}

pub struct CedarEntities;

impl Target for CedarEntities {
    const NAME: &'static str = "cedar_entities";
    type Input = Scene;

    fn from_seed(bytes: &[u8]) -> Result<Scene, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("a cedar_entities seed is a Scene in JSON: {e}"))
    }

    fn strategy(seeds: Vec<Scene>) -> BoxedStrategy<Scene> {
        prop_oneof![
            3 => scene_strategy(),
            2 => (select(seeds), tweak(), proptest::collection::vec(any::<u8>(), 0..2))
                .prop_map(|(mut s, t, withheld)| {
                    s.tweak = Some(t);
                    s.withheld_agents.extend(withheld);
                    s
                }),
        ]
        .boxed()
    }

    fn check(input: &Scene) -> Result<Verdict, TestCaseError> {
        let s = normalised(input, false);
        let Some(b) = build(&s) else { return Ok(Verdict::Refused) };
        let built = scene(b.principal(), b.target(), &b.related);
        let (_, _, missing, longest) = b.reach();
        // Parents are ancestors (DESIGN §13): a cycle of parents, which no
        // store can hold (a parent exists before its child), cannot form a
        // hierarchy and is refused, which fails closed.
        let cyclic = b.has_parent_cycle();
        ensure(!(missing && built.is_ok()), || format!("{s:?}: built with a missing reference"))?;
        ensure(missing || cyclic || longest > MAX_PARENTS || built.is_ok(), || {
            format!("{s:?}: refused: {:?}", built.as_ref().err())
        })?;
        let key = decision_key(b.principal(), b.target(), &b.related);
        ensure(key.is_ok() == built.is_ok() || cyclic || longest > MAX_PARENTS, || format!("{s:?}: key {key:?}"))?;
        check_decisions(&s, &b, built.is_ok())?;
        let Ok((_, _, entities)) = &built else { return Ok(Verdict::Refused) };
        let actual = actual_entities(entities).map_err(TestCaseError::fail)?;
        let expected = sorted_parents(b.expected_entities());
        ensure(actual == expected, || format!("{s:?}:\n entities {actual:#?}\n expected {expected:#?}"))?;
        if input.tweak.is_some() {
            let t = normalised(input, true);
            if let Some(tb) = build(&t)
                && let (Ok((_, _, te)), Ok(tkey), Ok(key)) = (
                    scene(tb.principal(), tb.target(), &tb.related),
                    decision_key(tb.principal(), tb.target(), &tb.related),
                    &key,
                )
            {
                ensure(te == *entities || tkey != *key, || {
                    format!("{s:?} tweaked by {:?}: the entities changed, the decision key did not", input.tweak)
                })?;
            }
        }
        Ok(Verdict::Accepted)
    }
}

#[test]
fn cedar_entities() -> Result<(), String> {
    mandate_fuzz::run::<CedarEntities>().map(|_| ())
}

fn check_decisions(s: &Scene, b: &Built, buildable: bool) -> Result<(), TestCaseError> {
    let read = ENGINE.decide(b.principal(), "read", b.target(), &b.related);
    let write = ENGINE.decide(b.principal(), "write", b.target(), &b.related);
    let (expect_read, expect_write) = if !buildable {
        (false, false)
    } else {
        match &b.principal {
            PrincipalRecord::User(u) => {
                (u.groups.iter().any(|g| g == "eng"), u.attributes.get("dept").is_some_and(|v| v == "r&d"))
            }
            // An ephemeral agent no policy decides is decided as its
            // parent, recursively (DESIGN §13).
            PrincipalRecord::Agent(a) => {
                let (mut cur, mut seen, mut allowed) = (Some(a), BTreeSet::new(), false);
                while let Some(x) = cur.filter(|x| seen.insert(x.id)) {
                    if b.related.user(x.owner).is_some_and(|o| o.name == OWNER_NAME) {
                        allowed = true;
                        break;
                    }
                    cur = match (x.kind, x.parent) {
                        (AgentKind::Ephemeral, Some(p)) => b.related.agent(p),
                        _ => None,
                    };
                }
                (allowed, false)
            }
        }
    };
    ensure(read.allowed == expect_read && write.allowed == expect_write, || {
        format!("{s:?}: read {read:?} (expected {expect_read}), write {write:?} (expected {expect_write})")
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => select(vec!["eng", "dept", "r&d", OWNER_NAME, "a", "Group::\"eng\"", "eng ", "ENG"]).prop_map(str::to_owned),
        3 => nasty_string(),
    ]
}

fn user_spec() -> impl Strategy<Value = UserSpec> {
    (
        0u8..6,
        text(),
        text(),
        proptest::collection::vec(text(), 0..3),
        proptest::collection::btree_map(text(), text(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(id, name, email, groups, attributes, disabled)| UserSpec {
            id,
            name,
            email,
            groups,
            attributes,
            disabled,
        })
}

fn agent_spec() -> impl Strategy<Value = AgentSpec> {
    (0u8..8, text(), 0u8..7, any::<bool>(), proptest::option::weighted(0.6, 0u8..9), 0u8..3).prop_map(
        |(id, name, owner, ephemeral, parent, status)| AgentSpec { id, name, owner, ephemeral, parent, status },
    )
}

fn tweak() -> impl Strategy<Value = Tweak> {
    prop_oneof![
        (any::<u8>(), text()).prop_map(|(i, v)| Tweak::UserName(i, v)),
        (any::<u8>(), text()).prop_map(|(i, v)| Tweak::UserEmail(i, v)),
        any::<u8>().prop_map(Tweak::UserStatus),
        (any::<u8>(), text()).prop_map(|(i, v)| Tweak::UserGroup(i, v)),
        (any::<u8>(), text(), text()).prop_map(|(i, k, v)| Tweak::UserAttribute(i, k, v)),
        (any::<u8>(), text()).prop_map(|(i, v)| Tweak::AgentName(i, v)),
        (any::<u8>(), 0u8..7).prop_map(|(i, o)| Tweak::AgentOwner(i, o)),
        any::<u8>().prop_map(Tweak::AgentKind),
        (any::<u8>(), 0u8..3).prop_map(|(i, v)| Tweak::AgentStatus(i, v)),
        (any::<u8>(), proptest::option::of(0u8..9)).prop_map(|(i, p)| Tweak::AgentParent(i, p)),
    ]
}

fn scene_strategy() -> impl Strategy<Value = Scene> {
    (
        proptest::collection::vec(user_spec(), 1..5),
        proptest::collection::vec(agent_spec(), 0..6),
        prop_oneof![any::<u8>().prop_map(Who::User), any::<u8>().prop_map(Who::Agent)],
        prop_oneof![
            text().prop_map(Aim::Api),
            any::<u8>().prop_map(Aim::Agent),
            (text(), text(), proptest::collection::btree_map(text(), text(), 0..3))
                .prop_map(|(api, id, properties)| Aim::Resource { api, id, properties }),
        ],
        proptest::collection::vec(0u8..6, 0..2),
        proptest::collection::vec(0u8..8, 0..2),
        proptest::option::weighted(0.7, tweak()),
    )
        .prop_map(|(users, agents, principal, target, withheld_users, withheld_agents, tweak)| Scene {
            users,
            agents,
            principal,
            target,
            withheld_users,
            withheld_agents,
            tweak,
        })
}
