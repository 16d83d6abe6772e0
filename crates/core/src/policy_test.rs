//! Policy you can test before it ships (DESIGN §12, ADR 0034): a candidate
//! policy set decides a list of cases and replays recorded decisions, each
//! also under the current set, so that the answer shows what would flip.
//! Nothing is stored; the candidate is compiled and validated exactly as
//! `PUT /v1/policies` would.

use std::collections::{BTreeMap, VecDeque};

use mandate_model::records::{Agent, ContextType, User};
use mandate_model::{AgentId, ScopeSet, UserId};
use mandate_policy::{Approver, ContextValue, Facts, PolicyEngine, Principal, Related, Target};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::Error;
use crate::audit::{ALLOW, AuditQuery, DENY, event_time, kind};
use crate::check::APPROVAL_REQUIRED;
use crate::service::{Caller, Mandate};

/// Most cases one request decides.
pub const MAX_CASES: usize = 1000;
/// Most recorded decisions one replay re-decides, and the default.
pub const MAX_REPLAY: u32 = 10_000;
pub const DEFAULT_REPLAY: u32 = 1000;
/// Oldest `since` a replay accepts, and the window without one.
pub const MAX_REPLAY_DAYS: i64 = 90;
pub const DEFAULT_REPLAY_DAYS: i64 = 7;
/// Most events of each kind a replay reads to find the last `limit`: the
/// bound on its work, whatever the window holds.
pub const MAX_REPLAY_SCAN: usize = 100_000;
/// Most flips of each direction the answer lists.
pub const MAX_SAMPLES: usize = 20;
/// Most entries (chain, context, properties) in one case.
const MAX_CASE_ENTRIES: usize = 64;
/// Events read per page while replaying.
const REPLAY_PAGE: u32 = 1000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyTestRequest {
    /// The candidate policy set (Cedar text).
    pub policies: String,
    #[serde(default)]
    pub cases: Vec<PolicyCase>,
    #[serde(default)]
    pub replay: Option<ReplayRequest>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCase {
    /// `agt_…` or `usr_…`: who asks.
    pub principal: String,
    /// `["usr_…", "agt_…", …]`: the delegation chain the principal acts
    /// at the end of; every party must allow (DESIGN §4). Without it the
    /// principal alone decides.
    #[serde(default)]
    pub chain: Option<Vec<String>>,
    pub action: String,
    pub resource: CaseResource,
    /// Keys the API declares (DESIGN §13), as a check passes them.
    #[serde(default)]
    pub context: Option<serde_json::Map<String, serde_json::Value>>,
    pub expected: Expected,
}

/// What the action is done to: one resource at an API (as `/v1/check`
/// decides), or a whole API by its identifier (as issuance decides), or
/// an agent (`agt_…`, for `mandate:delegate`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CaseResource {
    Resource(CaseTarget),
    Named(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseTarget {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub api: String,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    Allow,
    Deny,
    ApprovalRequired,
}

impl Expected {
    fn as_str(self) -> &'static str {
        match self {
            Expected::Allow => ALLOW,
            Expected::Deny => DENY,
            Expected::ApprovalRequired => APPROVAL_REQUIRED,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// RFC 3339; default [`DEFAULT_REPLAY_DAYS`] ago, at most
    /// [`MAX_REPLAY_DAYS`] ago.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// How many of the latest recorded decisions (default
    /// [`DEFAULT_REPLAY`], at most [`MAX_REPLAY`]).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One party's answer along a chain: the decision, the determining
/// policies and the reasons, as `/v1/check` words them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub decision: &'static str,
    pub determining: Vec<String>,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub decision: &'static str,
    pub expected: &'static str,
    pub matches: bool,
    pub determining: Vec<String>,
    pub reasons: Vec<String>,
    /// The same case under the current policy set.
    pub current: Verdict,
    /// Whether the candidate decides differently from the current set.
    pub flipped: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseDiff {
    pub case: usize,
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyTestAnswer {
    /// The content hash the candidate would have.
    pub candidate_version: String,
    pub current_version: String,
    pub results: Vec<CaseResult>,
    /// The cases the candidate decides differently from the current set.
    pub diff: Vec<CaseDiff>,
    /// How many results match their `expected`.
    pub matched: usize,
    pub mismatched: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayAnswer>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayAnswer {
    pub since: String,
    pub limit: u32,
    /// Recorded decisions re-decided.
    pub replayed: usize,
    /// Recorded decisions left out: not decided by policy (a dead token,
    /// a missing scope), or about records since removed, or too short to
    /// re-decide (see `docs/governance.md`).
    pub skipped: usize,
    /// Whether the window held more than the events read.
    pub truncated: bool,
    pub allow_to_deny: usize,
    pub deny_to_allow: usize,
    /// Allows that would need an approval, and back.
    pub other_changes: usize,
    pub samples: Vec<ReplayFlip>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayFlip {
    pub seq: u64,
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub chain: Vec<String>,
    pub action: String,
    pub resource: String,
    pub recorded: Option<String>,
    pub current: Verdict,
    pub candidate: Verdict,
}

/// Who decides, in chain order: the user (if any), then each agent.
struct Parties {
    user: Option<User>,
    agents: Vec<Agent>,
}

impl Parties {
    fn principals(&self) -> Vec<(String, Principal<'_>)> {
        let mut v: Vec<(String, Principal<'_>)> = Vec::with_capacity(self.agents.len() + 1);
        if let Some(u) = &self.user {
            v.push((u.id.to_string(), Principal::User(u)));
        }
        v.extend(self.agents.iter().map(|a| (a.id.to_string(), Principal::Agent(a))));
        v
    }
}

/// Decides `action` on `target` for every party, as `/v1/check` does: the
/// first denial answers; all allowing answers allow, or
/// `approval_required` when a determining permit carries `@approval`.
pub fn decide_along(
    engine: &PolicyEngine,
    principals: &[(String, Principal<'_>)],
    action: &str,
    target: Target<'_>,
    related: &Related,
    facts: &Facts,
) -> Verdict {
    let mut determining = Vec::new();
    let mut reasons = Vec::new();
    let mut approver: Option<Approver> = None;
    for (who, principal) in principals {
        let d = engine.decide_with(*principal, action, target, related, facts);
        if !d.allowed {
            if !d.errors.is_empty() {
                return Verdict {
                    decision: DENY,
                    determining: Vec::new(),
                    reasons: vec![format!("policy_error: the policy for {who} could not be evaluated")],
                };
            }
            let by = if d.reasons.is_empty() { "no policy permits it".into() } else { d.reasons.join(", ") };
            return Verdict {
                decision: DENY,
                determining: d.reasons,
                reasons: vec![format!("policy: {who} is denied ({by})")],
            };
        }
        reasons.push(format!("{who}: {}", d.reasons.join(", ")));
        for r in d.reasons {
            if !determining.contains(&r) {
                determining.push(r);
            }
        }
        approver = Approver::stricter(approver, d.approval);
    }
    if principals.is_empty() {
        return Verdict { decision: DENY, determining, reasons: vec!["nobody to decide for".into()] };
    }
    let decision = if let Some(a) = approver {
        reasons.push(format!("approval: {} must approve", a.label()));
        APPROVAL_REQUIRED
    } else {
        ALLOW
    };
    Verdict { decision, determining, reasons }
}

/// A case's context, typed by what `api` declares (as a check types it).
fn typed_context(
    declared: &BTreeMap<String, ContextType>,
    context: &serde_json::Map<String, serde_json::Value>,
    api: &str,
) -> Result<BTreeMap<String, ContextValue>, String> {
    let mut values = BTreeMap::new();
    for (key, value) in context {
        let Some(ty) = declared.get(key) else {
            return Err(format!("context key {key:?} is not declared by {api}"));
        };
        let v = match (ty, value) {
            (ContextType::Long, serde_json::Value::Number(n)) => n.as_i64().map(ContextValue::Long),
            (ContextType::String, serde_json::Value::String(s)) => Some(ContextValue::String(s.clone())),
            (ContextType::Bool, serde_json::Value::Bool(b)) => Some(ContextValue::Bool(*b)),
            _ => None,
        };
        let Some(v) = v else {
            return Err(format!("context key {key} must be a {}", ty.as_str()));
        };
        values.insert(key.clone(), v);
    }
    Ok(values)
}

/// A case ready to decide: its parties, target and facts.
struct Scene {
    parties: Parties,
    /// The agent receiving a delegation, for `mandate:delegate`.
    target_agent: Option<Agent>,
    api: String,
    resource: Option<(String, BTreeMap<String, String>)>,
    declared: BTreeMap<String, ContextValue>,
}

impl Mandate {
    /// `POST /v1/policies/test`: the admin and auditors may ask.
    pub async fn test_policies(&self, caller: Caller, req: &PolicyTestRequest) -> Result<PolicyTestAnswer, Error> {
        self.require_admin_or_auditor(caller).await?;
        if req.cases.len() > MAX_CASES {
            return Err(Error::BadInput(format!("at most {MAX_CASES} cases")));
        }
        if req.cases.is_empty() && req.replay.is_none() {
            return Err(Error::BadInput("give cases, a replay, or both".into()));
        }
        let actions = self.action_catalog().await?;
        let context = self.context_catalog().await?;
        let candidate =
            crate::admin::compile_off_the_workers(&req.policies, actions, context).await?.map_err(|e| match e {
                mandate_policy::PolicyError::Unavailable(why) => Error::Unavailable(why),
                invalid => Error::BadInput(invalid.to_string()),
            })?;
        let current = self.fresh_engine().await?;
        // Every case is read before any is decided: a bad one is refused
        // whole.
        let mut scenes = Vec::with_capacity(req.cases.len());
        for (i, case) in req.cases.iter().enumerate() {
            scenes.push(self.scene(case).await.map_err(|e| match e {
                Error::BadInput(m) => Error::BadInput(format!("case {i}: {m}")),
                other => other,
            })?);
        }
        let replay = match &req.replay {
            Some(r) => Some(self.replay(&current, &candidate, r).await?),
            None => None,
        };
        let mut results = Vec::with_capacity(scenes.len());
        let mut diff = Vec::new();
        for (i, (case, scene)) in req.cases.iter().zip(&scenes).enumerate() {
            let agents: Vec<&Agent> = scene.parties.agents.iter().chain(scene.target_agent.as_ref()).collect();
            let related = self.related(&agents, scene.parties.user.as_ref().as_slice()).await?;
            let chain_agents: Vec<&Agent> = scene.parties.agents.iter().collect();
            let facts = Facts {
                declared: scene.declared.clone(),
                ..self.facts(scene.parties.user.as_ref(), &chain_agents, false)
            };
            let principals = scene.parties.principals();
            let target = match (&scene.target_agent, &scene.resource) {
                (Some(a), _) => Target::Agent(a),
                (None, Some((id, properties))) => Target::Resource { api: &scene.api, id, properties },
                (None, None) => Target::Api(&scene.api),
            };
            let now = decide_along(&current, &principals, &case.action, target, &related, &facts);
            let then = decide_along(&candidate, &principals, &case.action, target, &related, &facts);
            let flipped = now.decision != then.decision;
            if flipped {
                diff.push(CaseDiff { case: i, from: now.decision, to: then.decision });
            }
            let expected = case.expected.as_str();
            results.push(CaseResult {
                decision: then.decision,
                expected,
                matches: then.decision == expected,
                determining: then.determining,
                reasons: then.reasons,
                current: now,
                flipped,
            });
        }
        let matched = results.iter().filter(|r| r.matches).count();
        Ok(PolicyTestAnswer {
            candidate_version: candidate.version().to_owned(),
            current_version: current.version().to_owned(),
            mismatched: results.len() - matched,
            matched,
            results,
            diff,
            replay,
        })
    }

    /// Refuses, and records the refusal of, a call for the admin and
    /// auditors only.
    pub(crate) async fn require_admin_or_auditor(&self, caller: Caller) -> Result<(), Error> {
        match caller {
            Caller::User(u) | Caller::ConsoleAdmin(u) if self.is_auditor(u).await? => Ok(()),
            other => self.require_console(other).await,
        }
    }

    /// Loads what a case names; `BadInput` says what is wrong with it.
    async fn scene(&self, case: &PolicyCase) -> Result<Scene, Error> {
        let bad = |m: String| Error::BadInput(m);
        if case.action.is_empty() || case.action.len() > 256 {
            return Err(bad("action must be 1 to 256 bytes".into()));
        }
        let chain = case.chain.clone().unwrap_or_else(|| vec![case.principal.clone()]);
        if chain.len() > MAX_CASE_ENTRIES {
            return Err(bad(format!("a chain has at most {MAX_CASE_ENTRIES} entries")));
        }
        if chain.last() != Some(&case.principal) {
            return Err(bad("the principal must be the last entry of the chain".into()));
        }
        let mut user = None;
        let mut agents = Vec::new();
        for (i, name) in chain.iter().enumerate() {
            if name.starts_with("usr_") {
                if i != 0 {
                    return Err(bad(format!("{name}: a user can only start a chain")));
                }
                let id: UserId = name.parse().map_err(|e: mandate_model::ModelError| bad(e.to_string()))?;
                user = Some(self.store.user(id).await?.ok_or_else(|| bad(format!("user {id} is unknown")))?);
            } else {
                let id: AgentId = name.parse().map_err(|e: mandate_model::ModelError| bad(e.to_string()))?;
                agents.push(self.store.agent(id).await?.ok_or_else(|| bad(format!("agent {id} is unknown")))?);
            }
        }
        let context = case.context.as_ref().filter(|c| !c.is_empty());
        if context.is_some_and(|c| c.len() > MAX_CASE_ENTRIES) {
            return Err(bad(format!("at most {MAX_CASE_ENTRIES} context entries")));
        }
        let (api, resource, target_agent) = match &case.resource {
            CaseResource::Named(name) if name.starts_with("agt_") => {
                let id: AgentId = name.parse().map_err(|e: mandate_model::ModelError| bad(e.to_string()))?;
                let a = self.store.agent(id).await?.ok_or_else(|| bad(format!("agent {id} is unknown")))?;
                (self.config.issuer.clone(), None, Some(a))
            }
            CaseResource::Named(api) => (api.clone(), None, None),
            CaseResource::Resource(t) => {
                if t.properties.len() > MAX_CASE_ENTRIES {
                    return Err(bad(format!("at most {MAX_CASE_ENTRIES} resource properties")));
                }
                (t.api.clone(), Some((format!("{}/{}", t.kind, t.id), t.properties.clone())), None)
            }
        };
        let declared = match context {
            None => BTreeMap::new(),
            Some(c) => {
                let declared = match self.resource_by_identifier(&api).await {
                    Ok(r) => r.context.clone(),
                    Err(Error::InvalidTarget(_)) => BTreeMap::new(),
                    Err(e) => return Err(e),
                };
                // A check drops the context of an API that declares none;
                // a test says so instead of deciding without it.
                if declared.is_empty() {
                    return Err(bad(format!("context: {api} declares no context keys, so policies never see them")));
                }
                typed_context(&declared, c, &api).map_err(bad)?
            }
        };
        Ok(Scene { parties: Parties { user, agents }, target_agent, api, resource, declared })
    }

    /// Re-decides the latest recorded checks and issuances in the window
    /// under both sets.
    async fn replay(
        &self,
        current: &PolicyEngine,
        candidate: &PolicyEngine,
        r: &ReplayRequest,
    ) -> Result<ReplayAnswer, Error> {
        let now = self.clock.now();
        let limit = r.limit.unwrap_or(DEFAULT_REPLAY);
        if limit == 0 || limit > MAX_REPLAY {
            return Err(Error::BadInput(format!("replay.limit must be 1 to {MAX_REPLAY}")));
        }
        let since = r.since.unwrap_or(now - time::Duration::days(DEFAULT_REPLAY_DAYS));
        if since < now - time::Duration::days(MAX_REPLAY_DAYS) {
            return Err(Error::BadInput(format!("replay.since must be within the last {MAX_REPLAY_DAYS} days")));
        }
        let since = event_time(since);
        let (checks, checks_cut) = self.latest_events(kind::CHECK, &since, limit).await?;
        let (issued, issued_cut) = self.latest_events(kind::TOKEN_ISSUED, &since, limit).await?;
        // The latest `limit` of both kinds together.
        let mut events: Vec<mandate_audit::Event> = checks.into_iter().chain(issued).collect();
        events.sort_by_key(|e| std::cmp::Reverse(e.seq));
        let truncated = checks_cut || issued_cut || events.len() > limit as usize;
        events.truncate(limit as usize);
        let mut answer = ReplayAnswer {
            since,
            limit,
            replayed: 0,
            skipped: 0,
            truncated,
            allow_to_deny: 0,
            deny_to_allow: 0,
            other_changes: 0,
            samples: Vec::new(),
        };
        for e in events {
            let Some((now_verdict, then_verdict, action)) = self.redecide(current, candidate, &e).await? else {
                answer.skipped += 1;
                continue;
            };
            answer.replayed += 1;
            let (from, to) = (now_verdict.decision, then_verdict.decision);
            if from == to {
                continue;
            }
            let (sample, counter) = match (from == DENY, to == DENY) {
                (false, true) => (answer.allow_to_deny < MAX_SAMPLES, &mut answer.allow_to_deny),
                (true, false) => (answer.deny_to_allow < MAX_SAMPLES, &mut answer.deny_to_allow),
                _ => (answer.other_changes < MAX_SAMPLES, &mut answer.other_changes),
            };
            *counter += 1;
            if sample {
                answer.samples.push(ReplayFlip {
                    seq: e.seq,
                    time: e.time.clone(),
                    kind: e.kind.clone(),
                    chain: e.chain.clone(),
                    action,
                    resource: e.resource.clone().unwrap_or_default(),
                    recorded: e.decision.clone(),
                    current: now_verdict,
                    candidate: then_verdict,
                });
            }
        }
        Ok(answer)
    }

    /// The last `limit` events of `kind` at or after `since`, reading at
    /// most [`MAX_REPLAY_SCAN`]; whether the read stopped short.
    async fn latest_events(
        &self,
        kind: &str,
        since: &str,
        limit: u32,
    ) -> Result<(Vec<mandate_audit::Event>, bool), Error> {
        let mut kept: VecDeque<mandate_audit::Event> = VecDeque::with_capacity(limit as usize);
        let mut after = 0;
        let mut read = 0usize;
        loop {
            let q = AuditQuery {
                after,
                limit: REPLAY_PAGE,
                kind: Some(kind.to_owned()),
                since: Some(since.to_owned()),
                ..AuditQuery::default()
            };
            let page = self.store.audit_events(&q).await?;
            let full = page.len() == REPLAY_PAGE as usize;
            for e in page {
                after = after.max(e.seq);
                read += 1;
                if kept.len() == limit as usize {
                    kept.pop_front();
                }
                kept.push_back(e);
            }
            if !full {
                return Ok((kept.into(), false));
            }
            if read >= MAX_REPLAY_SCAN {
                return Ok((kept.into(), true));
            }
        }
    }

    /// One recorded decision re-decided under both sets, with the action
    /// it names; `None` when it cannot be (see [`ReplayAnswer::skipped`]).
    async fn redecide(
        &self,
        current: &PolicyEngine,
        candidate: &PolicyEngine,
        e: &mandate_audit::Event,
    ) -> Result<Option<(Verdict, Verdict, String)>, Error> {
        let Some(parties) = self.recorded_parties(&e.chain).await? else {
            return Ok(None);
        };
        let Some(api) = e.resource.as_deref() else { return Ok(None) };
        let agents: Vec<&Agent> = parties.agents.iter().collect();
        let related = self.related(&agents, parties.user.as_ref().as_slice()).await?;
        // Decided at the time it was recorded (a `@window` or `context.now`
        // sees that time, not this one).
        let Ok(at) = OffsetDateTime::parse(&e.time, &time::format_description::well_known::Rfc3339) else {
            return Ok(None);
        };
        let facts = Facts { now: at.unix_timestamp(), ..self.facts(parties.user.as_ref(), &agents, false) };
        let principals = parties.principals();
        if e.kind == kind::CHECK {
            let (Some(action), Some(target)) = (e.action.as_deref(), e.reason.as_deref().and_then(checked_target))
            else {
                return Ok(None);
            };
            // Only a decision policy made can flip with the policy.
            if !reached_policy(e) {
                return Ok(None);
            }
            let Some(res) = self.registered(api).await? else { return Ok(None) };
            let properties = BTreeMap::new();
            let t = Target::Resource { api: &res.identifier, id: &target, properties: &properties };
            let now = decide_along(current, &principals, action, t, &related, &facts);
            let then = decide_along(candidate, &principals, action, t, &related, &facts);
            return Ok(Some((now, then, action.to_owned())));
        }
        // An issuance: every action its scopes cover, at the whole API.
        let Some(scopes) = e.scope.as_deref().and_then(|s| ScopeSet::parse(s).ok()) else {
            return Ok(None);
        };
        let mut actions = Vec::new();
        if api == self.config.issuer {
            actions.extend(scopes.iter().filter(|s| s.as_str() == "mandate:spawn").map(|s| s.as_str().to_owned()));
        } else {
            let Some(res) = self.registered(api).await? else { return Ok(None) };
            for s in scopes.iter() {
                actions.extend(res.actions_of(s).unwrap_or_default());
            }
        }
        if actions.is_empty() {
            return Ok(None);
        }
        let decide_all = |engine: &PolicyEngine| -> (Verdict, String) {
            // The first denial answers; else an approval, else an allow.
            let mut answer: Option<(Verdict, String)> = None;
            for action in &actions {
                let v = decide_along(engine, &principals, action, Target::Api(api), &related, &facts);
                if v.decision == DENY {
                    return (v, action.clone());
                }
                if answer.as_ref().is_none_or(|(a, _)| a.decision == ALLOW && v.decision != ALLOW) {
                    answer = Some((v, action.clone()));
                }
            }
            answer.unwrap_or_else(|| (Verdict { decision: DENY, determining: vec![], reasons: vec![] }, String::new()))
        };
        let (now, now_action) = decide_all(current);
        let (then, then_action) = decide_all(candidate);
        let action = if then.decision == DENY { then_action } else { now_action };
        Ok(Some((now, then, action)))
    }

    /// The resource registered as `api`, if one still is.
    async fn registered(&self, api: &str) -> Result<Option<std::sync::Arc<mandate_model::records::Resource>>, Error> {
        match self.resource_by_identifier(api).await {
            Ok(r) => Ok(Some(r)),
            Err(Error::InvalidTarget(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The user and agents a recorded chain names, as they are now; `None`
    /// when the chain is empty or names a record that is gone.
    async fn recorded_parties(&self, chain: &[String]) -> Result<Option<Parties>, Error> {
        let mut user = None;
        let mut agents = Vec::new();
        for (i, name) in chain.iter().enumerate() {
            if i == 0
                && let Ok(id) = name.parse::<UserId>()
            {
                match self.store.user(id).await? {
                    Some(u) => user = Some(u),
                    None => return Ok(None),
                }
                continue;
            }
            let Ok(id) = name.parse::<AgentId>() else { return Ok(None) };
            match self.store.agent(id).await? {
                Some(a) => agents.push(a),
                None => return Ok(None),
            }
        }
        if agents.is_empty() {
            return Ok(None);
        }
        Ok(Some(Parties { user, agents }))
    }
}

/// The checked `type/id` of a recorded check, from its reason: an optional
/// `authorization_details <digest>; `, an optional `probe: `, then
/// `<type>/<id>: <reasons>`.
fn checked_target(reason: &str) -> Option<String> {
    let mut rest = reason;
    if let Some(r) = rest.strip_prefix("authorization_details ") {
        rest = r.split_once("; ")?.1;
    }
    rest = rest.strip_prefix("probe: ").unwrap_or(rest);
    let (target, _) = rest.split_once(": ")?;
    target.contains('/').then(|| target.to_owned())
}

/// Whether a recorded check was decided by policy: an allow, an approval,
/// or a denial a policy gave (not a dead token, a scope or a ceiling).
fn reached_policy(e: &mandate_audit::Event) -> bool {
    match e.decision.as_deref() {
        Some(DENY) => e.reason.as_deref().is_some_and(|r| r.contains(": policy: ") || r.contains(": policy_error: ")),
        Some(_) => true,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_check_names_its_target() {
        assert_eq!(checked_target("doc/1: usr_a: policy0").as_deref(), Some("doc/1"));
        assert_eq!(checked_target("probe: doc/1: policy: x is denied").as_deref(), Some("doc/1"));
        assert_eq!(checked_target("authorization_details abc; doc/2: ok").as_deref(), Some("doc/2"));
        assert_eq!(checked_target("no target here"), None);
    }

    #[test]
    fn only_denials_policy_gave_are_replayed() {
        let mut e = mandate_audit::Event::new(kind::CHECK, "t");
        e.decision = Some(DENY.into());
        e.reason = Some("doc/1: scope: no scope of the token covers read".into());
        assert!(!reached_policy(&e));
        e.reason = Some("doc/1: policy: agt_x is denied (no policy permits it)".into());
        assert!(reached_policy(&e));
        e.decision = Some(ALLOW.into());
        assert!(reached_policy(&e));
    }
}
