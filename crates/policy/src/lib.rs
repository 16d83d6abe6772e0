//! Cedar policies for Mandate: the schema generated from the registered
//! resources, entities built from domain records, and decisions.
//!
//! Every decision fails closed: an evaluation error in any policy, a
//! request the engine cannot build, or a missing entity is a denial.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, Request, ResourceConstraint, RestrictedExpression,
    Schema, ValidationMode, Validator,
};
use mandate_model::records::{Agent, AgentKind, ContextType, User, UserStatus};
use mandate_model::{AgentId, UserId};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub mod bounds;

/// The stack of the thread that parses and validates a policy text: ample
/// for the nesting [`bounds`] admits, even in a debug build.
const COMPILE_STACK: usize = 64 * 1024 * 1024;

/// Actions Mandate itself defines, besides those the resources declare.
pub const BUILTIN_ACTIONS: &[&str] = &["mandate:delegate", "mandate:spawn", "mandate:check"];

/// Policies Mandate always installs beside the administrator's: an agent
/// may delegate to the ephemeral agents it spawned (DESIGN §3.2). A
/// `forbid` in the administrator's set still overrides them.
pub const DEFAULT_POLICIES: &[(&str, &str)] = &[(
    "mandate:default:delegate-to-own-ephemeral",
    "permit (principal, action == Action::\"mandate:delegate\", resource) \
     when { resource.kind == \"ephemeral\" && resource has parent && resource.parent == principal };",
)];

/// The annotation that makes an allow wait for a person: `@approval("user")`
/// (the user the agent acts for) or `@approval("owner")` (the agent's owner).
pub const APPROVAL_ANNOTATION: &str = "approval";

/// The annotation that restricts who may act next for the user with what
/// an allowing permit issues: `@may_act("agt_… group:ops")`, agent ids and
/// `group:<name>`s separated by spaces (RFC 8693 §4.4, ADR 0024).
pub const MAY_ACT_ANNOTATION: &str = "may_act";

/// The annotation that lets an action approval be used again within a
/// window after it was given: `@approval_reuse("5m")` (seconds `s`,
/// minutes `m` or hours `h`, at most a day). Without it an action approval
/// covers one check (SECURITY row 43).
pub const APPROVAL_REUSE_ANNOTATION: &str = "approval_reuse";
/// The longest reuse window a policy may give.
pub const MAX_APPROVAL_REUSE: i64 = 24 * 3600;

/// Parses an `@approval_reuse` value: `30s`, `5m`, `2h`.
pub fn parse_reuse_window(v: &str) -> Option<i64> {
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    if n.is_empty() || n.len() > 6 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    (1..=MAX_APPROVAL_REUSE).contains(&secs).then_some(secs)
}

/// The annotation that asks for more than one approval of a group:
/// `@approvals("2")` (Cedar annotation values are strings). Valid only
/// beside `@approval("group:<name>")` (DESIGN §13).
pub const APPROVALS_ANNOTATION: &str = "approvals";
/// The most approvals `@approvals` may ask for.
pub const MAX_APPROVALS: u32 = 5;

/// The annotation that limits a permit to a time window:
/// `@window("09:00-18:00 Europe/Paris")` or
/// `@window("Mon-Fri 09:00-18:00 Europe/Paris")`.
pub const WINDOW_ANNOTATION: &str = "window";

/// Who must approve an allow that policy marks with `@approval`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Approver {
    /// The user the agent acts for.
    User,
    /// The agent's owner.
    Owner,
    /// Any member of the group (`@approval("group:<name>")`), `required`
    /// distinct members of it (`@approvals("N")`).
    Group { name: String, required: u32 },
}

impl Approver {
    /// `user`, `owner` or `group:<name>`, as the annotation writes it.
    pub fn label(&self) -> String {
        match self {
            Approver::User => "user".into(),
            Approver::Owner => "owner".into(),
            Approver::Group { name, .. } => format!("group:{name}"),
        }
    }

    /// How many distinct people must approve.
    pub fn required(&self) -> u32 {
        match self {
            Approver::Group { required, .. } => *required,
            Approver::User | Approver::Owner => 1,
        }
    }

    /// The stricter of two requirements, when determining permits (or the
    /// principals of a chain) disagree: the one needing more approvals;
    /// at equal counts a group over the user over the owner; between two
    /// groups, the first by name (so the choice does not depend on order).
    pub fn stricter(a: Option<Approver>, b: Option<Approver>) -> Option<Approver> {
        fn rank(a: &Approver) -> (u32, u8) {
            match a {
                Approver::Group { required, .. } => (*required, 2),
                Approver::User => (1, 1),
                Approver::Owner => (1, 0),
            }
        }
        match (a, b) {
            (None, x) | (x, None) => x,
            (Some(a), Some(b)) => {
                let (ra, rb) = (rank(&a), rank(&b));
                if ra != rb {
                    return Some(if ra > rb { a } else { b });
                }
                match (&a, &b) {
                    (Approver::Group { name: na, .. }, Approver::Group { name: nb, .. }) if nb < na => Some(b),
                    _ => Some(a),
                }
            }
        }
    }
}

/// Parses an `@approval` value: `user`, `owner` or `group:<name>`.
pub fn parse_approver(v: &str) -> Option<Approver> {
    match v {
        "user" => Some(Approver::User),
        "owner" => Some(Approver::Owner),
        _ => {
            let name = v.strip_prefix("group:")?;
            let ok =
                !name.is_empty() && name.len() <= 256 && name.trim() == name && !name.chars().any(char::is_control);
            ok.then(|| Approver::Group { name: name.to_owned(), required: 1 })
        }
    }
}

/// A time window a permit applies in (`@window`): minutes of the day
/// `[start, end)` in a time zone, on some days of the week.
#[derive(Debug, Clone)]
pub struct Window {
    /// The annotation's text, to name the window in reasons.
    pub text: String,
    /// First and last day, Monday = 0 (inclusive); `None`: every day.
    days: Option<(u8, u8)>,
    start: u16,
    end: u16,
    tz: jiff::tz::TimeZone,
}

const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

impl Window {
    /// Parses `HH:MM-HH:MM <IANA zone>`, optionally after `Mon-Fri` (or
    /// one day, `Sat`). The end is after the start (`24:00` ends at
    /// midnight); a window does not run past midnight. Zones come from the
    /// time-zone database compiled into the binary.
    pub fn parse(v: &str) -> Result<Window, String> {
        let parts: Vec<&str> = v.split(' ').collect();
        let (days, hours, zone) = match parts.as_slice() {
            [hours, zone] => (None, *hours, *zone),
            [days, hours, zone] => (Some(parse_days(days)?), *hours, *zone),
            _ => {
                return Err("must be like \"09:00-18:00 Europe/Paris\" or \"Mon-Fri 09:00-18:00 Europe/Paris\"".into());
            }
        };
        let (start, end) = hours.split_once('-').ok_or_else(|| format!("{hours:?} is not HH:MM-HH:MM"))?;
        let (start, end) = (parse_minute(start)?, parse_minute(end)?);
        if start >= end {
            return Err(format!("{hours:?} must end after it starts (a window does not run past midnight)"));
        }
        let tz = jiff::tz::TimeZone::get(zone).map_err(|_| format!("{zone:?} is not a known IANA time zone"))?;
        Ok(Window { text: v.to_owned(), days, start, end, tz })
    }

    /// Whether `now` (Unix seconds) falls inside the window.
    pub fn contains(&self, now: i64) -> bool {
        let Ok(t) = jiff::Timestamp::from_second(now) else { return false };
        let local = t.to_zoned(self.tz.clone());
        let minute = u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).unwrap_or(u16::MAX);
        let day = u8::try_from(local.weekday().to_monday_zero_offset()).unwrap_or(u8::MAX);
        let on_day = self
            .days
            .is_none_or(|(from, to)| if from <= to { (from..=to).contains(&day) } else { day >= from || day <= to });
        on_day && (self.start..self.end).contains(&minute)
    }
}

fn parse_days(v: &str) -> Result<(u8, u8), String> {
    let day = |d: &str| {
        WEEKDAYS
            .iter()
            .position(|w| *w == d)
            .and_then(|i| u8::try_from(i).ok())
            .ok_or_else(|| format!("{d:?} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
    };
    match v.split_once('-') {
        Some((a, b)) => Ok((day(a)?, day(b)?)),
        None => day(v).map(|d| (d, d)),
    }
}

fn parse_minute(v: &str) -> Result<u16, String> {
    let bad = || format!("{v:?} is not a time HH:MM");
    let (h, m) = v.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Largest policy text accepted: room for tens of thousands of per-agent
/// policies (10,000 of about 150 bytes take 1.5 MB).
pub const MAX_POLICY_TEXT: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("policies are invalid: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("the generated schema is invalid: {0}")]
    Schema(String),
    /// The policies could not be compiled for a reason of the server's
    /// own (no thread to parse on): not the text's fault.
    #[error("the policy compiler is unavailable: {0}")]
    Unavailable(String),
}

/// The content hash that versions a policy set.
pub fn version_of(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(71);
    hex.push_str("sha256:");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// The Cedar schema for a set of declared actions (DESIGN §7), with no
/// context declared by any resource.
pub fn schema_text(actions: &BTreeSet<String>) -> String {
    schema_text_with(actions, &BTreeMap::new())
}

/// The `context` keys Mandate sets itself on every decision (DESIGN §13);
/// a resource cannot declare them.
pub const RESERVED_CONTEXT_KEYS: &[&str] =
    &["user", "chain", "now", "dpop_bound", "client_address", "authorization_detail"];

/// The prefix of the catalog and fact keys that are fields of
/// `context.authorization_detail` (RFC 9396, DESIGN §13): the detail a
/// check carries, or each detail asked for at issuance in turn. A
/// declared context key has no `.`, so the two never meet.
pub const DETAIL_PREFIX: &str = "authorization_detail.";

/// The Cedar schema for a set of declared actions and the `context` keys
/// the resources declare (each optional: a policy writes `context has k`).
/// An ephemeral agent is `in` its parent (DESIGN §13).
pub fn schema_text_with(actions: &BTreeSet<String>, context: &BTreeMap<String, ContextType>) -> String {
    let mut ctx = String::from(
        "type MandateContext = { user?: User, chain: Set<Agent>, now: Long, dpop_bound: Bool, client_address?: ipaddr",
    );
    let mut detail = String::from("\"type\": String");
    for (key, ty) in context {
        if let Some(field) = key.strip_prefix(DETAIL_PREFIX) {
            if field != "type" {
                detail.push_str(&format!(", {}?: {}", cedar_string(field), ty.as_str()));
            }
            continue;
        }
        if RESERVED_CONTEXT_KEYS.contains(&key.as_str()) {
            continue;
        }
        ctx.push_str(&format!(", {}?: {}", cedar_string(key), ty.as_str()));
    }
    ctx.push_str(&format!(", authorization_detail?: {{ {detail} }}"));
    ctx.push_str(" };\n");
    let mut s = ctx;
    s.push_str(
        "entity Group;\n\
         entity User in [Group] { name: String, email: String, status: String } tags String;\n\
         entity Agent in [Agent] { name: String, owner: User, kind: String, status: String, origin: String, parent?: Agent };\n\
         entity Api;\n\
         entity Resource in [Api] tags String;\n\
         action \"mandate:delegate\" appliesTo { principal: [Agent], resource: [Agent], context: MandateContext };\n\
         action \"mandate:spawn\" appliesTo { principal: [Agent], resource: [Api], context: MandateContext };\n\
         action \"mandate:check\" appliesTo { principal: [Agent], resource: [Api], context: MandateContext };\n",
    );
    for action in actions {
        if BUILTIN_ACTIONS.contains(&action.as_str()) {
            continue;
        }
        s.push_str(&format!(
            "action {} appliesTo {{ principal: [User, Agent], resource: [Api, Resource], context: MandateContext }};\n",
            cedar_string(action)
        ));
    }
    s
}

/// A value of a resource-declared `context` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextValue {
    Long(i64),
    String(String),
    Bool(bool),
}

/// What a decision knows about the request besides principal, action and
/// resource: Cedar's `context` record (DESIGN §13). `context.user` is the
/// user the agents act for (its record must be in [`Related`]),
/// `context.chain` the agents of the delegation chain, `context.now` the
/// time in Unix seconds, `context.dpop_bound` whether the token is (or
/// will be) bound to a DPoP key, `context.client_address` (a Cedar
/// `ipaddr`, so that policies can write `isInRange(ip("10.0.0.0/8"))`)
/// the address the agent called from, when known; `declared` holds the
/// keys the resource declares, already checked against its declaration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub user: Option<UserId>,
    pub chain: Vec<AgentId>,
    pub now: i64,
    pub dpop_bound: bool,
    pub client_address: Option<std::net::IpAddr>,
    pub declared: BTreeMap<String, ContextValue>,
}

impl Facts {
    fn context(&self) -> Result<Context, String> {
        let mut pairs: Vec<(String, RestrictedExpression)> = Vec::with_capacity(5 + self.declared.len());
        let value = |v: &ContextValue| match v {
            ContextValue::Long(n) => RestrictedExpression::new_long(*n),
            ContextValue::String(v) => s(v),
            ContextValue::Bool(b) => RestrictedExpression::new_bool(*b),
        };
        let mut detail: Vec<(String, RestrictedExpression)> = Vec::new();
        for (k, v) in &self.declared {
            if let Some(field) = k.strip_prefix(DETAIL_PREFIX) {
                detail.push((field.to_owned(), value(v)));
                continue;
            }
            if RESERVED_CONTEXT_KEYS.contains(&k.as_str()) {
                return Err(format!("context key {k} is set by Mandate"));
            }
            pairs.push((k.clone(), value(v)));
        }
        if !detail.is_empty() {
            let record = RestrictedExpression::new_record(detail).map_err(|e| e.to_string())?;
            pairs.push(("authorization_detail".into(), record));
        }
        if let Some(u) = self.user {
            pairs.push(("user".into(), RestrictedExpression::new_entity_uid(uid("User", &u.to_string())?)));
        }
        let chain = self
            .chain
            .iter()
            .map(|a| uid("Agent", &a.to_string()).map(RestrictedExpression::new_entity_uid))
            .collect::<Result<Vec<_>, _>>()?;
        pairs.push(("chain".into(), RestrictedExpression::new_set(chain)));
        pairs.push(("now".into(), RestrictedExpression::new_long(self.now)));
        pairs.push(("dpop_bound".into(), RestrictedExpression::new_bool(self.dpop_bound)));
        if let Some(a) = &self.client_address {
            pairs.push(("client_address".into(), RestrictedExpression::new_ip(a.to_string())));
        }
        Context::from_pairs(pairs).map_err(|e| e.to_string())
    }
}

fn cedar_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// A compiled, validated policy set with its schema.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<Compiled>,
}

struct Compiled {
    /// The policies that can apply to each action: those naming it in their
    /// scope plus those with an unconstrained action, split further by an
    /// exact principal or resource. Evaluating only the candidates is exact
    /// (a policy whose scope excludes the request never applies) and keeps
    /// a decision's cost independent of the size of the whole set.
    by_action: HashMap<String, ScopeIndex>,
    /// Policies with an unconstrained action, for actions no policy names.
    any_action: ScopeIndex,
    text: String,
    version: String,
    authorizer: Authorizer,
    /// Who each `@approval` policy names, by policy id (read once here:
    /// Cedar's annotation lookup parses its key on every call).
    approvals: HashMap<PolicyId, Approver>,
    /// The `@approval_reuse` window of each `@approval` policy that has one.
    reuse: HashMap<PolicyId, i64>,
    /// Who may act next, by each `@may_act` policy.
    may_act: HashMap<PolicyId, mandate_model::actors::MayAct>,
    /// The `@window` of each permit that has one.
    windows: HashMap<PolicyId, Window>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine").field("version", &self.inner.version).finish_non_exhaustive()
    }
}

/// The policies of one action, by the exact principal or resource their
/// scope names. A policy with `principal == P` goes under P; otherwise one
/// with `resource == R` goes under R; any other goes in `general`. For a
/// request (P, R) only `general`, the set under P and the set under R can
/// apply.
#[derive(Default)]
struct ScopeIndex {
    general: PolicySet,
    by_principal: HashMap<EntityUid, PolicySet>,
    by_resource: HashMap<EntityUid, PolicySet>,
}

impl ScopeIndex {
    fn build<'a>(policies: impl IntoIterator<Item = &'a cedar_policy::Policy>) -> Result<Self, String> {
        let mut index = ScopeIndex::default();
        for p in policies {
            let set = match (p.principal_constraint(), p.resource_constraint()) {
                (PrincipalConstraint::Eq(uid), _) => index.by_principal.entry(uid).or_default(),
                (_, ResourceConstraint::Eq(uid)) => index.by_resource.entry(uid).or_default(),
                _ => &mut index.general,
            };
            // `action in [A, A]` lists a policy twice under A.
            if set.policy(p.id()).is_none() {
                set.add(p.clone()).map_err(|e| e.to_string())?;
            }
        }
        Ok(index)
    }

    /// The sets that can apply to a request by `principal` on `resource`.
    fn candidates<'s>(&'s self, principal: &EntityUid, resource: &EntityUid) -> impl Iterator<Item = &'s PolicySet> {
        [Some(&self.general), self.by_principal.get(principal), self.by_resource.get(resource)]
            .into_iter()
            .flatten()
            .filter(|set| set.policies().next().is_some())
    }
}

/// Who asks.
#[derive(Debug, Clone, Copy)]
pub enum Principal<'a> {
    User(&'a User),
    Agent(&'a Agent),
}

/// What the action is done to.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A whole API, by its resource identifier (issuance time).
    Api(&'a str),
    /// The agent receiving a delegation (`mandate:delegate`).
    Agent(&'a Agent),
    /// One resource checked at `/v1/check`: `Resource::"<type>/<id>"`, in
    /// `Api::"<api>"`, with its properties as tags.
    Resource { api: &'a str, id: &'a str, properties: &'a BTreeMap<String, String> },
}

/// The records a decision can reach through attributes (SECURITY row 38):
/// the owner of every agent involved (`principal.owner`, `resource.owner`
/// for `mandate:delegate`), each agent's parent, transitively, and the
/// parents' owners. Users carry their groups (as parents) and attributes
/// (as tags). A reference that does not resolve here makes the decision a
/// denial, never "attribute absent".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Related {
    users: BTreeMap<UserId, User>,
    agents: BTreeMap<AgentId, Agent>,
}

/// Longest parent chain followed from one agent.
pub const MAX_PARENTS: usize = 32;

impl Related {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_user(&mut self, u: User) {
        self.users.insert(u.id, u);
    }

    pub fn add_agent(&mut self, a: Agent) {
        self.agents.insert(a.id, a);
    }

    pub fn user(&self, id: UserId) -> Option<&User> {
        self.users.get(&id)
    }

    pub fn agent(&self, id: AgentId) -> Option<&Agent> {
        self.agents.get(&id)
    }

    /// Visits every record reachable from `agents` through `owner` and
    /// `parent`, each once, in a fixed order. `Err` names the first
    /// reference that does not resolve.
    fn walk<'s>(
        &'s self,
        agents: impl IntoIterator<Item = &'s Agent>,
        mut visit: impl FnMut(Reached<'s>) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut seen_agents = BTreeSet::new();
        let mut seen_users = BTreeSet::new();
        let mut stack: Vec<(&Agent, usize)> = agents.into_iter().map(|a| (a, 0)).collect();
        stack.reverse();
        while let Some((agent, depth)) = stack.pop() {
            if !seen_agents.insert(agent.id) {
                continue;
            }
            if depth > MAX_PARENTS {
                return Err(format!("agent {} has more than {MAX_PARENTS} ancestors", agent.id));
            }
            visit(Reached::Agent(agent))?;
            if seen_users.insert(agent.owner) {
                let owner = self.users.get(&agent.owner).ok_or_else(|| {
                    format!("user {} (the owner of agent {}) could not be loaded", agent.owner, agent.id)
                })?;
                visit(Reached::User(owner))?;
            }
            if let Some(parent) = agent.parent {
                let p = self
                    .agents
                    .get(&parent)
                    .ok_or_else(|| format!("agent {parent} (the parent of agent {}) could not be loaded", agent.id))?;
                stack.push((p, depth + 1));
            }
        }
        Ok(())
    }
}

/// A record a decision reaches.
#[derive(Debug, Clone, Copy)]
enum Reached<'a> {
    User(&'a User),
    Agent(&'a Agent),
}

/// The agents a decision starts from: the principal and the target, if
/// they are agents.
fn agents_of<'a>(principal: Principal<'a>, target: Target<'a>) -> impl Iterator<Item = &'a Agent> {
    let p = match principal {
        Principal::Agent(a) => Some(a),
        Principal::User(_) => None,
    };
    let t = match target {
        Target::Agent(a) => Some(a),
        Target::Api(_) | Target::Resource { .. } => None,
    };
    p.into_iter().chain(t)
}

/// The answer, with the policies that determined it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Ids of the determining policies. A denial no `forbid` explains
    /// names the permits that would have applied but for their `@window`
    /// (`policy3 applies only Mon-Fri 09:00-18:00 Europe/Paris`).
    pub reasons: Vec<String>,
    /// Evaluation errors; any error makes the answer a denial.
    pub errors: Vec<String>,
    /// Set on an allow when a determining permit carries `@approval`: the
    /// allow holds only once that person (or that many members of the
    /// group) approves. When several determining permits ask, the
    /// strictest wins ([`Approver::stricter`]).
    pub approval: Option<Approver>,
    /// With `approval`: how long, in seconds, an action approval may be
    /// used again after it was given. `None` makes it single-use; every
    /// determining `@approval` permit must allow reuse, and the shortest
    /// window applies.
    pub approval_reuse: Option<i64>,
    /// On an allow: the `@may_act` of each determining permit that carries
    /// one. All of them restrict what is issued (ADR 0024).
    pub may_act: Vec<mandate_model::actors::MayAct>,
}

impl PolicyEngine {
    /// Parses and validates `text` against the schema for `actions`. The
    /// text is bounded first ([`bounds`]), then parsed on a thread of its
    /// own with a stack sized for those bounds, so that no policy text can
    /// overflow a caller's stack (SECURITY row 41). Blocks the caller for
    /// as long as parsing takes: async callers run it off their workers.
    pub fn compile(text: &str, actions: &BTreeSet<String>) -> Result<Self, PolicyError> {
        Self::compile_with(text, actions, &BTreeMap::new())
    }

    /// [`PolicyEngine::compile`], with the `context` keys the resources
    /// declare.
    pub fn compile_with(
        text: &str,
        actions: &BTreeSet<String>,
        context: &BTreeMap<String, ContextType>,
    ) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_TEXT {
            return Err(PolicyError::Invalid(vec![format!("policy text is larger than {MAX_POLICY_TEXT} bytes")]));
        }
        bounds::check(text).map_err(|e| PolicyError::Invalid(vec![e]))?;
        let (text, actions, context) = (text.to_owned(), actions.clone(), context.clone());
        std::thread::Builder::new()
            .name("mandate-policy-compile".into())
            .stack_size(COMPILE_STACK)
            .spawn(move || Self::compile_here(&text, &actions, &context))
            .map_err(|e| PolicyError::Unavailable(format!("no thread to parse on: {e}")))?
            .join()
            .map_err(|_| PolicyError::Unavailable("the parsing thread stopped".into()))?
    }

    fn compile_here(
        text: &str,
        actions: &BTreeSet<String>,
        context: &BTreeMap<String, ContextType>,
    ) -> Result<Self, PolicyError> {
        let (schema, _warnings) = Schema::from_cedarschema_str(&schema_text_with(actions, context))
            .map_err(|e| PolicyError::Schema(e.to_string()))?;
        let mut policies = PolicySet::from_str(text).map_err(|e| PolicyError::Invalid(parse_messages(&e)))?;
        for (id, src) in DEFAULT_POLICIES {
            let p =
                Policy::parse(Some(PolicyId::new(*id)), *src).map_err(|e| PolicyError::Invalid(parse_messages(&e)))?;
            policies.add(p).map_err(|e| PolicyError::Invalid(vec![e.to_string()]))?;
        }
        let mut approvals = HashMap::new();
        let mut reuse = HashMap::new();
        let mut may_act = HashMap::new();
        let mut windows = HashMap::new();
        for p in policies.policies() {
            if let Some(v) = p.annotation(MAY_ACT_ANNOTATION) {
                if p.effect() != cedar_policy::Effect::Permit {
                    return Err(PolicyError::Invalid(vec![format!(
                        "policy {}: @may_act restricts what a permit issues; a forbid cannot carry it",
                        p.id()
                    )]));
                }
                let names = mandate_model::actors::MayAct::parse(v)
                    .map_err(|e| PolicyError::Invalid(vec![format!("policy {}: @may_act: {e}", p.id())]))?;
                may_act.insert(p.id().clone(), names);
            }
            if let Some(v) = p.annotation(APPROVAL_REUSE_ANNOTATION) {
                if p.annotation(APPROVAL_ANNOTATION).is_none() {
                    return Err(PolicyError::Invalid(vec![format!(
                        "policy {}: @approval_reuse needs @approval on the same policy",
                        p.id()
                    )]));
                }
                let secs = parse_reuse_window(v).ok_or_else(|| {
                    PolicyError::Invalid(vec![format!(
                        "policy {}: @approval_reuse must be like \"30s\", \"5m\" or \"2h\", at most a day, not {v:?}",
                        p.id()
                    )])
                })?;
                reuse.insert(p.id().clone(), secs);
            }
            let invalid = |why: String| PolicyError::Invalid(vec![format!("policy {}: {why}", p.id())]);
            let approver = match p.annotation(APPROVAL_ANNOTATION) {
                None => None,
                Some(v) => Some(parse_approver(v).ok_or_else(|| {
                    invalid(format!("@approval must be \"user\", \"owner\" or \"group:<name>\", not {v:?}"))
                })?),
            };
            let approver = match (approver, p.annotation(APPROVALS_ANNOTATION)) {
                (a, None) => a,
                (Some(Approver::Group { name, .. }), Some(n)) => {
                    let required = Some(n)
                        .filter(|n| n.len() <= 2 && n.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|n| n.parse::<u32>().ok())
                        .filter(|n| (2..=MAX_APPROVALS).contains(n))
                        .ok_or_else(|| {
                            invalid(format!("@approvals must be \"2\" to \"{MAX_APPROVALS}\", not {n:?}"))
                        })?;
                    Some(Approver::Group { name, required })
                }
                (_, Some(_)) => {
                    return Err(invalid("@approvals needs @approval(\"group:<name>\") on the same policy".into()));
                }
            };
            if let Some(a) = approver {
                if p.effect() == cedar_policy::Effect::Forbid {
                    return Err(invalid("@approval applies to permits only".into()));
                }
                approvals.insert(p.id().clone(), a);
            }
            if let Some(v) = p.annotation(WINDOW_ANNOTATION) {
                if p.effect() == cedar_policy::Effect::Forbid {
                    return Err(invalid("@window applies to permits only".into()));
                }
                let w = Window::parse(v).map_err(|e| invalid(format!("@window {e}")))?;
                windows.insert(p.id().clone(), w);
            }
        }
        let result = Validator::new(schema).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            return Err(PolicyError::Invalid(result.validation_errors().map(|e| e.to_string()).collect()));
        }
        let (by_action, any_action) = index(&policies).map_err(|e| PolicyError::Invalid(vec![e]))?;
        Ok(Self {
            inner: Arc::new(Compiled {
                by_action,
                any_action,
                text: text.to_owned(),
                version: version_of(text),
                authorizer: Authorizer::new(),
                approvals,
                reuse,
                may_act,
                windows,
            }),
        })
    }

    /// No policies: nothing is allowed.
    pub fn empty() -> Self {
        Self {
            inner: Arc::new(Compiled {
                by_action: HashMap::new(),
                any_action: ScopeIndex::default(),
                text: String::new(),
                version: version_of(""),
                authorizer: Authorizer::new(),
                approvals: HashMap::new(),
                reuse: HashMap::new(),
                may_act: HashMap::new(),
                windows: HashMap::new(),
            }),
        }
    }

    pub fn version(&self) -> &str {
        &self.inner.version
    }

    pub fn text(&self) -> &str {
        &self.inner.text
    }

    /// Decides whether `principal` may do `action` on `target`, with every
    /// record the policies can reach through attributes taken from
    /// `related`; one that is missing there makes the answer a denial.
    /// The context holds no request facts (the time is 0): Mandate's own
    /// decisions use [`PolicyEngine::decide_with`].
    pub fn decide(&self, principal: Principal<'_>, action: &str, target: Target<'_>, related: &Related) -> Decision {
        self.decide_with(principal, action, target, related, &Facts::default())
    }

    /// Decides whether `principal` may do `action` on `target` with
    /// `facts` as the context.
    ///
    /// An ephemeral agent that no policy decides (no permit and no forbid
    /// applies to it) is decided as its parent, recursively (DESIGN §13):
    /// its own `forbid` always wins, its own `permit` suffices, and
    /// otherwise it has its parent's answer, approvals included. Its
    /// ceiling (the spawn `scopes`) is the caller's to apply.
    pub fn decide_with(
        &self,
        principal: Principal<'_>,
        action: &str,
        target: Target<'_>,
        related: &Related,
        facts: &Facts,
    ) -> Decision {
        let mut principal = principal;
        let mut inherited: Vec<String> = Vec::new();
        loop {
            let d = match self.try_decide(principal, action, target, related, facts) {
                Ok(d) => d,
                Err(e) => {
                    return Decision {
                        allowed: false,
                        reasons: vec![],
                        errors: vec![e],
                        approval: None,
                        approval_reuse: None,
                        may_act: Vec::new(),
                    };
                }
            };
            let undecided = !d.allowed && d.reasons.is_empty() && d.errors.is_empty();
            let parent = match principal {
                Principal::Agent(a) if undecided && a.kind == AgentKind::Ephemeral => a.parent,
                _ => None,
            };
            let Some(parent) = parent else {
                return if inherited.is_empty() || !d.allowed {
                    d
                } else {
                    let reasons = d.reasons.iter().map(|r| format!("{r} (as {})", inherited.join(" < "))).collect();
                    Decision { reasons, ..d }
                };
            };
            if inherited.len() > MAX_PARENTS {
                return Decision {
                    allowed: false,
                    reasons: vec![],
                    errors: vec![format!("agent has more than {MAX_PARENTS} ancestors")],
                    approval: None,
                    approval_reuse: None,
                    may_act: Vec::new(),
                };
            }
            let Some(p) = related.agent(parent) else {
                return Decision {
                    allowed: false,
                    reasons: vec![],
                    errors: vec![format!("agent {parent} (a parent) could not be loaded")],
                    approval: None,
                    approval_reuse: None,
                    may_act: Vec::new(),
                };
            };
            if let Principal::Agent(a) = principal {
                inherited.push(format!("parent of {}", a.id));
            }
            principal = Principal::Agent(p);
        }
    }

    fn try_decide(
        &self,
        principal: Principal<'_>,
        action: &str,
        target: Target<'_>,
        related: &Related,
        facts: &Facts,
    ) -> Result<Decision, String> {
        let (principal_uid, resource_uid, entities) = scene_with(principal, target, related, facts)?;
        let action_uid = uid("Action", action)?;
        let index = self.inner.by_action.get(action).unwrap_or(&self.inner.any_action);
        let sets: Vec<&PolicySet> = index.candidates(&principal_uid, &resource_uid).collect();
        let request =
            Request::new(principal_uid, action_uid, resource_uid, facts.context()?, None).map_err(|e| e.to_string())?;
        // Cedar's rule over the union of the candidate sets: allowed when a
        // permit applies and no forbid does; a forbid that applies is the
        // reason of a denial in whichever set it sits.
        let (mut permitted, mut permits, mut forbids, mut errors) = (false, Vec::new(), Vec::new(), Vec::new());
        let mut approval: Option<Approver> = None;
        let mut approving = false;
        let mut may_act = Vec::new();
        // Each determining @approval permit's reuse window (None: single use).
        let mut windows: Vec<Option<i64>> = Vec::new();
        // Permits that would apply but for their @window.
        let mut closed: Vec<String> = Vec::new();
        for set in sets {
            let response = self.inner.authorizer.is_authorized(&request, set, &entities);
            errors.extend(response.diagnostics().errors().map(|e| e.to_string()));
            if response.decision() == CedarDecision::Allow {
                for id in response.diagnostics().reason() {
                    // A permit applies only inside its @window.
                    if let Some(w) = self.inner.windows.get(id)
                        && !w.contains(facts.now)
                    {
                        closed.push(format!("{id} applies only {}", w.text));
                        continue;
                    }
                    permitted = true;
                    permits.push(id.to_string());
                    if let Some(m) = self.inner.may_act.get(id) {
                        may_act.push(m.clone());
                    }
                    if let Some(a) = self.inner.approvals.get(id) {
                        approval = Approver::stricter(approval, Some(a.clone()));
                        approving = true;
                        windows.push(self.inner.reuse.get(id).copied());
                    }
                }
            } else {
                forbids.extend(response.diagnostics().reason().map(|p| p.to_string()));
            }
        }
        // Fail closed: an erroring policy might have been a forbid.
        let allowed = permitted && forbids.is_empty() && errors.is_empty();
        let approval = if allowed && approving { approval } else { None };
        let reasons = if allowed {
            permits
        } else if forbids.is_empty() {
            closed
        } else {
            forbids
        };
        let approval_reuse = match approval {
            None => None,
            Some(_) => windows.iter().copied().collect::<Option<Vec<i64>>>().and_then(|w| w.into_iter().min()),
        };
        if !allowed {
            may_act.clear();
        }
        Ok(Decision { allowed, reasons, errors, approval, approval_reuse, may_act })
    }

    /// The same decision over the whole set, unindexed: what the index must
    /// always agree with.
    #[cfg(test)]
    fn decide_unindexed(&self, principal: Principal<'_>, action: &str, target: Target<'_>, related: &Related) -> bool {
        let Ok(all) = PolicySet::from_str(&self.inner.text) else { return false };
        let (Ok((p, r, entities)), Ok(a)) = (scene(principal, target, related), uid("Action", action)) else {
            return false;
        };
        let Ok(request) = Request::new(p, a, r, Context::empty(), None) else {
            return false;
        };
        let response = self.inner.authorizer.is_authorized(&request, &all, &entities);
        response.decision() == CedarDecision::Allow && response.diagnostics().errors().next().is_none()
    }
}

/// Splits `policies` by the actions their scopes name, then each action's
/// by exact principal and resource.
fn index(policies: &PolicySet) -> Result<(HashMap<String, ScopeIndex>, ScopeIndex), String> {
    let mut any: Vec<&cedar_policy::Policy> = Vec::new();
    let mut named: HashMap<String, Vec<&cedar_policy::Policy>> = HashMap::new();
    for p in policies.policies() {
        match p.action_constraint() {
            ActionConstraint::Any => any.push(p),
            ActionConstraint::Eq(uid) => named.entry(uid.id().unescaped().to_owned()).or_default().push(p),
            ActionConstraint::In(uids) => {
                for uid in uids {
                    named.entry(uid.id().unescaped().to_owned()).or_default().push(p);
                }
            }
        }
    }
    let mut by_action = HashMap::with_capacity(named.len());
    for (action, list) in named {
        by_action.insert(action, ScopeIndex::build(any.iter().copied().chain(list))?);
    }
    Ok((by_action, ScopeIndex::build(any)?))
}

/// Everything a decision of `principal` on `target` can read, as one
/// string: the principal, the target and every record reachable from them
/// through attributes. Two requests with the same key get the same
/// decisions under one policy set. It must cover every field
/// `user_entity` and `agent_entity` use. `Err` when a reference does not
/// resolve (such a decision is a denial, and is not cached).
pub fn decision_key(principal: Principal<'_>, target: Target<'_>, related: &Related) -> Result<String, String> {
    decision_key_with(principal, target, related, &Facts::default())
}

/// [`decision_key`] for a decision with `facts` as its context: the facts,
/// the context user's record and the records the principal's ancestors
/// reach are part of it.
pub fn decision_key_with(
    principal: Principal<'_>,
    target: Target<'_>,
    related: &Related,
    facts: &Facts,
) -> Result<String, String> {
    let mut key = format!("{facts:?}#");
    if let Some(u) = facts.user {
        let u = related.user(u).ok_or_else(|| format!("user {u} (the context user) could not be loaded"))?;
        key.push_str(&user_key(u));
        key.push('#');
    }
    key.push_str(&match principal {
        Principal::User(u) => user_key(u),
        Principal::Agent(a) => agent_key(a),
    });
    key.push('#');
    key.push_str(&match target {
        Target::Api(identifier) => format!("Api|{identifier}"),
        Target::Agent(a) => agent_key(a),
        Target::Resource { api, id, properties } => format!("Resource|{api}|{id}|{properties:?}"),
    });
    related.walk(agents_of(principal, target), |r| {
        key.push('#');
        key.push_str(&match r {
            Reached::User(u) => user_key(u),
            Reached::Agent(a) => agent_key(a),
        });
        Ok(())
    })?;
    Ok(key)
}

fn user_key(u: &User) -> String {
    format!(
        "User|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        u.id, u.name, u.email, u.status, u.groups, u.scim_groups, u.attributes
    )
}

fn agent_key(a: &Agent) -> String {
    format!(
        "Agent|{}|{:?}|{}|{:?}|{}|{}|{:?}",
        a.id,
        a.name,
        a.owner,
        a.kind,
        a.status.as_str(),
        a.origin.as_str(),
        a.parent
    )
}

/// The principal's and the resource's uids, and every entity the request
/// can reach: the principal, the target, and (through `related`) each
/// agent's owner and parents, once each. `Err` when a reference does not
/// resolve or an entity cannot be built. Public so that the fuzz targets
/// (`crates/fuzz`) can check the entities built from arbitrary records;
/// [`PolicyEngine::decide`] is the way to use them.
pub fn scene(
    principal: Principal<'_>,
    target: Target<'_>,
    related: &Related,
) -> Result<(EntityUid, EntityUid, Entities), String> {
    scene_with(principal, target, related, &Facts::default())
}

/// [`scene`], with the entity `facts` name as `context.user` included.
fn scene_with(
    principal: Principal<'_>,
    target: Target<'_>,
    related: &Related,
    facts: &Facts,
) -> Result<(EntityUid, EntityUid, Entities), String> {
    let mut entities = Vec::with_capacity(4);
    let mut have: HashSet<EntityUid> = HashSet::new();
    let principal_uid = match principal {
        Principal::User(u) => {
            entities.push(user_entity(u)?);
            uid("User", &u.id.to_string())?
        }
        Principal::Agent(a) => {
            entities.push(agent_entity(a)?);
            uid("Agent", &a.id.to_string())?
        }
    };
    have.insert(principal_uid.clone());
    let mut target_entities = Vec::with_capacity(2);
    let resource_uid = target_entity(target, &mut target_entities)?;
    for e in target_entities {
        if have.insert(e.uid()) {
            entities.push(e);
        }
    }
    related.walk(agents_of(principal, target), |r| {
        let e = match r {
            Reached::User(u) => user_entity(u)?,
            Reached::Agent(a) => agent_entity(a)?,
        };
        if have.insert(e.uid()) {
            entities.push(e);
        }
        Ok(())
    })?;
    if let Some(id) = facts.user {
        let u = related.user(id).ok_or_else(|| format!("user {id} (the context user) could not be loaded"))?;
        let e = user_entity(u)?;
        if have.insert(e.uid()) {
            entities.push(e);
        }
    }
    let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
    Ok((principal_uid, resource_uid, entities))
}

/// The resource's uid, with the entities it needs pushed to `entities`.
fn target_entity(target: Target<'_>, entities: &mut Vec<Entity>) -> Result<EntityUid, String> {
    Ok(match target {
        Target::Api(identifier) => {
            let u = uid("Api", identifier)?;
            entities.push(Entity::new_no_attrs(u.clone(), HashSet::new()));
            u
        }
        Target::Agent(agent) => {
            let e = agent_entity(agent)?;
            let u = e.uid();
            entities.push(e);
            u
        }
        Target::Resource { api, id, properties } => {
            let api_uid = uid("Api", api)?;
            let u = uid("Resource", id)?;
            let tags = properties.iter().map(|(k, v)| (k.clone(), s(v)));
            entities.push(
                Entity::new_with_tags(u.clone(), HashMap::new(), [api_uid.clone()], tags).map_err(|e| e.to_string())?,
            );
            entities.push(Entity::new_no_attrs(api_uid, HashSet::new()));
            u
        }
    })
}

fn parse_messages(e: &cedar_policy::ParseErrors) -> Vec<String> {
    e.iter().map(|e| e.to_string()).collect()
}

/// The entity types Mandate uses, parsed once (Cedar parses a type name
/// with its full lexer on every `from_str`).
fn type_name(ty: &str) -> Result<EntityTypeName, String> {
    static TYPES: std::sync::OnceLock<HashMap<&'static str, EntityTypeName>> = std::sync::OnceLock::new();
    let types = TYPES.get_or_init(|| {
        ["User", "Agent", "Api", "Resource", "Group", "Action"]
            .into_iter()
            .filter_map(|t| EntityTypeName::from_str(t).ok().map(|n| (t, n)))
            .collect()
    });
    match types.get(ty) {
        Some(t) => Ok(t.clone()),
        None => EntityTypeName::from_str(ty).map_err(|e| e.to_string()),
    }
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    Ok(EntityUid::from_type_name_and_id(type_name(ty)?, EntityId::new(id)))
}

fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_owned())
}

fn user_entity(u: &User) -> Result<Entity, String> {
    let attrs: HashMap<String, RestrictedExpression> = [
        ("name".to_owned(), s(&u.name)),
        ("email".to_owned(), s(&u.email)),
        (
            "status".to_owned(),
            s(match u.status {
                UserStatus::Active => "active",
                UserStatus::Disabled => "disabled",
            }),
        ),
    ]
    .into();
    // ADR 0020: the person's groups are the union of the sign-in source
    // and the SCIM source; a name both give is one Cedar group.
    let names: std::collections::BTreeSet<&String> = u.groups.iter().chain(&u.scim_groups).collect();
    let parents = names.into_iter().map(|g| uid("Group", g)).collect::<Result<Vec<_>, _>>()?;
    let tags = u.attributes.iter().map(|(k, v)| (k.clone(), s(v)));
    Entity::new_with_tags(uid("User", &u.id.to_string())?, attrs, parents, tags).map_err(|e| e.to_string())
}

fn agent_entity(a: &Agent) -> Result<Entity, String> {
    let mut attrs: HashMap<String, RestrictedExpression> = [
        ("name".to_owned(), s(&a.name)),
        ("owner".to_owned(), RestrictedExpression::new_entity_uid(uid("User", &a.owner.to_string())?)),
        (
            "kind".to_owned(),
            s(match a.kind {
                AgentKind::Persistent => "persistent",
                AgentKind::Ephemeral => "ephemeral",
            }),
        ),
        ("status".to_owned(), s(a.status.as_str())),
        ("origin".to_owned(), s(a.origin.as_str())),
    ]
    .into();
    // DESIGN §13: an agent is `in` its parent, and so (the parents being
    // loaded too) in every ancestor.
    let mut ancestors = HashSet::new();
    if let Some(parent) = a.parent {
        let p = uid("Agent", &parent.to_string())?;
        attrs.insert("parent".to_owned(), RestrictedExpression::new_entity_uid(p.clone()));
        ancestors.insert(p);
    }
    Entity::new(uid("Agent", &a.id.to_string())?, attrs, ancestors).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
