//! The check API (DESIGN §4): may the agent presenting this token do this
//! action on this resource, now? Allowed only if the token is live as a
//! whole, one of its scopes covers the action, the user's current rights
//! and every agent of the chain allow it, and no `forbid` matches. An allow
//! that policy marks `@approval` waits for a person, and an approval covers
//! exactly the chain, action and resource it was given for.

use std::collections::BTreeMap;

use mandate_model::details::AuthorizationDetail;
use mandate_model::records::{Approval, ApprovalStatus, ApprovalSubject};
use mandate_model::{ApprovalId, Jti};
use mandate_policy::{Approver, Principal, Target};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::Duration;

use crate::audit::{ALLOW, AuditRecord, DENY, kind};
use crate::chain::LiveToken;
use crate::ports::new_ulid;
use crate::service::Mandate;
use crate::store::{ApprovalQuery, Change, Mutation};
use crate::{Error, secrets};

pub const APPROVAL_REQUIRED: &str = "approval_required";
const MAX_FIELD: usize = 256;
const MAX_PROPERTIES: usize = 64;
/// Bytes the allows remembered per node may hold (estimated,
/// `crate::footprint`); past it the least useful are forgotten (and
/// recorded again at their next use).
pub(crate) const REMEMBERED_ALLOWS_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub token: String,
    pub action: String,
    pub resource: CheckedResource,
    /// Keys the token's resource declares (DESIGN §13), offered to
    /// policies as `context`; any other key is refused (400).
    #[serde(default)]
    pub context: Option<serde_json::Map<String, serde_json::Value>>,
    /// The address the agent called the resource server from, as the
    /// resource server saw it: policies see it as `context.client_address`
    /// (DESIGN §13). Mandate cannot see it itself at a check, whose caller
    /// is the resource server.
    #[serde(default)]
    pub client_address: Option<std::net::IpAddr>,
    /// RFC 9396: the one detail this action is (a list of one, or the
    /// object): allowed only if a detail of the token covers it (DESIGN
    /// §13).
    #[serde(default)]
    pub authorization_details: Option<serde_json::Value>,
    /// Decide without acting on it: for showing what may be done (a
    /// gateway's `tools/list`). The decision is recorded, but no approval
    /// request is opened and none is used up.
    #[serde(default)]
    pub probe: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckedResource {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Who asks: the admin, a resource server for tokens of its own audience,
/// or a gateway agent for the tokens of the resources that name it
/// (DESIGN §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checker {
    Admin,
    Resource { id: String, identifier: String },
    Gateway { agent: String, audiences: Vec<String> },
}

impl Checker {
    /// Whether this checker may learn decisions on tokens for `audience`.
    fn answers_for(&self, audience: &str) -> bool {
        match self {
            Checker::Admin => true,
            Checker::Resource { identifier, .. } => identifier == audience,
            Checker::Gateway { audiences, .. } => audiences.iter().any(|a| a == audience),
        }
    }

    fn name(&self) -> String {
        match self {
            Checker::Admin => "admin".into(),
            Checker::Resource { id, .. } => id.clone(),
            Checker::Gateway { agent, .. } => agent.clone(),
        }
    }
}

/// The decision receipt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckAnswer {
    pub decision: &'static str,
    pub reasons: Vec<String>,
    pub chain: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_request: Option<String>,
    pub policy_version: String,
    /// On a deny because no scope of the token covers the action: the
    /// audience's scopes that would (for a client to step up, RFC 6750
    /// §3.1 `insufficient_scope`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes_needed: Vec<String>,
    /// The event that records this decision (for an allow already recorded
    /// for this token and action, that first event).
    pub audit_seq: u64,
}

fn bounded_field(name: &str, v: &str) -> Result<(), Error> {
    if v.is_empty() || v.len() > MAX_FIELD || v.chars().any(char::is_control) {
        return Err(Error::BadInput(format!("{name} must be 1 to {MAX_FIELD} bytes without control characters")));
    }
    Ok(())
}

impl CheckRequest {
    fn validate(&self) -> Result<(), Error> {
        bounded_field("action", &self.action)?;
        bounded_field("resource.type", &self.resource.kind)?;
        bounded_field("resource.id", &self.resource.id)?;
        if self.resource.properties.len() > MAX_PROPERTIES {
            return Err(Error::BadInput(format!("at most {MAX_PROPERTIES} resource properties")));
        }
        for (k, v) in &self.resource.properties {
            bounded_field("resource property name", k)?;
            if v.len() > MAX_FIELD {
                return Err(Error::BadInput(format!("resource property {k} is longer than {MAX_FIELD} bytes")));
            }
        }
        if self.context.as_ref().is_some_and(|c| c.len() > MAX_PROPERTIES) {
            return Err(Error::BadInput(format!("at most {MAX_PROPERTIES} context entries")));
        }
        Ok(())
    }

    fn target(&self) -> String {
        format!("{}/{}", self.resource.kind, self.resource.id)
    }

    /// The checked detail, parsed (not yet checked against the type's
    /// schema). The `Err` says why it is not one detail.
    fn detail(&self) -> Result<Option<AuthorizationDetail>, String> {
        let one = match &self.authorization_details {
            None => return Ok(None),
            Some(serde_json::Value::Array(items)) => match items.as_slice() {
                [one] => one.clone(),
                _ => return Err("a check carries exactly one authorization detail".into()),
            },
            Some(other) => other.clone(),
        };
        let size = serde_json::to_string(&one).map_err(|e| e.to_string())?.len();
        if size > mandate_model::details::MAX_DETAILS_BYTES {
            return Err(format!("the detail is longer than {} bytes", mandate_model::details::MAX_DETAILS_BYTES));
        }
        AuthorizationDetail::from_value(one).map(Some)
    }
}

/// Every principal of a chain permitted an action, and at least one
/// permit asks a person to approve it.
struct Permitted {
    reasons: Vec<String>,
    approver: Approver,
    /// How long an approval may be reused (None: single use).
    reuse: Option<i64>,
}

/// What a decision came to before it is recorded.
struct Outcome {
    decision: &'static str,
    reasons: Vec<String>,
    approval: Option<Approval>,
    new_approval: bool,
    /// Whether the outcome depends only on the chain, the policies and the
    /// request (not on an approval's window), so it may be cached.
    cacheable: bool,
    /// A single-use action approval this allow uses up, in the same change
    /// as its record (SECURITY row 43).
    consume: Option<ApprovalId>,
}

impl Outcome {
    fn deny(why: impl Into<String>) -> Self {
        Self {
            decision: DENY,
            reasons: vec![why.into()],
            approval: None,
            new_approval: false,
            cacheable: true,
            consume: None,
        }
    }

    fn allow(reasons: Vec<String>) -> Self {
        Self { decision: ALLOW, reasons, approval: None, new_approval: false, cacheable: true, consume: None }
    }
}

impl Mandate {
    /// Authenticates the caller of the check API: the admin token, or an
    /// access token a resource server got by `client_credentials` for
    /// `mandate:check` on the issuer.
    /// `proof` is the `DPoP` header when the token came under the `DPoP`
    /// scheme; `path` is the endpoint, which the proof must name.
    pub async fn authenticate_checker(&self, bearer: &str, proof: Option<&str>, path: &str) -> Result<Checker, Error> {
        // Admin and user tokens are opaque (a seeded admin token may be any
        // string); access tokens are JWS compact serialisations.
        let jws = bearer.split('.').count() == 3 && !bearer.starts_with(secrets::USER_TOKEN_PREFIX);
        if !jws || bearer.starts_with(secrets::ADMIN_TOKEN_PREFIX) {
            if proof.is_some() {
                return Err(Error::Unauthenticated);
            }
            return match self.authenticate_caller(bearer).await {
                Ok(crate::Caller::Admin) => Ok(Checker::Admin),
                Ok(crate::Caller::User(_) | crate::Caller::ConsoleAdmin(_)) => {
                    Err(Error::Forbidden("a user token cannot call the check API".into()))
                }
                Err(e) => Err(e),
            };
        }
        let live = self.live_chain(bearer).await?.map_err(|_| Error::Unauthenticated)?;
        // A DPoP-bound mandate:check token needs its proof (SECURITY rows 9, 11).
        if let Err(why) = self.sender_constrained(bearer, live.claims.cnf.as_ref(), proof, path).await {
            self.record_admin_refusal(crate::audit::kind::ADMIN_AUTH_FAILED, None, &format!("check: {why}")).await?;
            return Err(Error::InvalidClient(why));
        }
        let on_issuer =
            live.claims.aud == self.config.issuer && live.record.scopes.iter().any(|s| s.as_str() == "mandate:check");
        match live.record.client_id {
            mandate_model::records::ClientId::Resource(rid) if on_issuer && live.chain.is_none() => {
                let res = self.store.resource(rid).await?.ok_or(Error::Unauthenticated)?;
                Ok(Checker::Resource { id: rid.to_string(), identifier: res.identifier })
            }
            // A gateway's own client_credentials token: its chain is itself.
            mandate_model::records::ClientId::Agent(aid)
                if on_issuer && live.record.grant.is_none() && live.record.chain == [aid] =>
            {
                let audiences = self.guarded_by(aid).await?;
                if audiences.is_empty() {
                    return Err(Error::Forbidden("no resource names this agent as its gateway".into()));
                }
                Ok(Checker::Gateway { agent: aid.to_string(), audiences })
            }
            mandate_model::records::ClientId::Resource(_) | mandate_model::records::ClientId::Agent(_)
                if !on_issuer =>
            {
                Err(Error::Forbidden("the token does not carry mandate:check on the issuer".into()))
            }
            _ => Err(Error::Forbidden(
                "only a resource server's or a gateway's mandate:check token may call the check API".into(),
            )),
        }
    }

    /// The identifiers of the resources that name `agent` as their gateway.
    pub(crate) async fn guarded_by(&self, agent: mandate_model::AgentId) -> Result<Vec<String>, Error> {
        Ok(self
            .store
            .resources()
            .await?
            .into_iter()
            .filter(|r| r.gateway == Some(agent))
            .map(|r| r.identifier)
            .collect())
    }

    /// `POST /v1/check` (and AuthZEN's evaluation, which maps onto it).
    pub async fn check(&self, checker: &Checker, req: &CheckRequest) -> Result<CheckAnswer, Error> {
        // Each attempt reads the epoch once, for all its cached reads.
        match crate::cache::one_request(self.check_once(checker, req)).await {
            // A single-use approval was used by a concurrent check: decide
            // again, which asks for a new approval.
            Err(Error::Conflict(_)) => crate::cache::one_request(self.check_once(checker, req)).await,
            other => other,
        }
    }

    async fn check_once(&self, checker: &Checker, req: &CheckRequest) -> Result<CheckAnswer, Error> {
        req.validate()?;
        // Read first: whatever is read below is at least this new, so a
        // decision cached under it is never staler than its stamp.
        let epoch = self.store.epoch().await?;
        let engine = self.fresh_engine().await?;
        let version = engine.version().to_owned();
        let live = self.live_chain(&req.token).await?;
        // A context key the resource does not declare is refused (400),
        // after the refusal is recorded.
        let mut bad_context = None;
        let (outcome, live) = match live {
            Err(why) => (Outcome::deny(format!("token: {why}")), None),
            Ok(live) => {
                let outcome = if checker.answers_for(&live.record.audience) {
                    match self.declared_context(&live, req).await? {
                        Ok(declared) => match self.checked_detail(&live, req).await? {
                            Ok(detail) => {
                                self.cached_decision(&live, req, (declared, detail.as_ref()), epoch, &version, &engine)
                                    .await?
                            }
                            Err(why) => {
                                let why = format!("authorization_details: {why}");
                                bad_context = Some(why.clone());
                                Outcome::deny(why)
                            }
                        },
                        Err(why) => {
                            let o = Outcome::deny(format!("context: {why}"));
                            bad_context = Some(why);
                            o
                        }
                    }
                } else {
                    Outcome::deny("token: it is for another audience")
                };
                (outcome, Some(live))
            }
        };
        let mut outcome = outcome;
        if req.probe {
            outcome.new_approval = false;
            outcome.approval = None;
            outcome.consume = None;
        }
        let chain = live.as_ref().map(|l| l.chain_names()).unwrap_or_default();
        // The chain is recorded, but answered only to the token's own
        // audience (or the admin): another resource server learns a deny.
        let foreign = live.as_ref().is_some_and(|l| !checker.answers_for(&l.record.audience));
        let answered = if foreign { Vec::new() } else { chain.clone() };
        let jti = live.as_ref().map(|l| l.record.jti);
        // Every deny and approval request is recorded; an allow once per
        // token, action and resource on each node (docs/delegation.md), so
        // the trail shows every resource a token touched.
        // A touch is the resource with the checked detail: an allow of
        // another payment on it is recorded again (its digest differs).
        let checked = req.detail().ok().flatten();
        let checked = mandate_model::details::AuthorizationDetails(checked.into_iter().collect());
        let (digest, touched) = match crate::details::digest(&checked) {
            Some(d) => (format!("authorization_details {d}; "), format!("{}#{d}", req.target())),
            None => (String::new(), req.target()),
        };
        if outcome.decision == ALLOW
            && outcome.consume.is_none()
            && let Some(jti) = jti
            && let Some(seq) = self.remembered_allow(jti, &req.action, &touched)
        {
            return Ok(CheckAnswer {
                decision: ALLOW,
                reasons: outcome.reasons,
                chain: answered,
                approval_request: None,
                policy_version: version,
                scopes_needed: Vec::new(),
                audit_seq: seq,
            });
        }
        let mut event = self.event(kind::CHECK);
        event.decision = Some(outcome.decision.into());
        event.client_id = Some(checker.name());
        event.action = Some(req.action.clone());
        if let Some(l) = &live {
            event.subject = Some(l.record.subject.clone());
            event.actor = Some(l.record.client_id.to_string());
            event.chain = chain;
            event.resource = Some(l.record.audience.clone());
            event.jti = Some(l.record.jti.to_string());
            event.grant_id = l.record.grant.map(|g| g.to_string());
            event.scope = Some(l.record.scopes.to_claim());
        }
        let probed = if req.probe { "probe: " } else { "" };
        // The checked detail's digest first, so that the bound on the
        // reason's length never cuts it off.
        event.reason =
            Some(crate::audit::bounded(&format!("{digest}{probed}{}: {}", req.target(), outcome.reasons.join("; "))));
        let mut change = Change::new();
        if outcome.new_approval
            && let Some(a) = &outcome.approval
        {
            self.notify_approvers(&mut change, a).await?;
            change.push(Mutation::InsertApproval(a.clone()));
        }
        if let Some(id) = outcome.consume {
            change.push(Mutation::ConsumeApproval { id, at: self.clock.now() });
        }
        let appended = change.push(AuditRecord::new(event).mutation());
        let seq = self.store.commit(change).await?.affected(appended)?;
        if let Some(why) = bad_context {
            return Err(Error::BadInput(why));
        }
        // A probe's allow is not a use: the next real check is recorded.
        if outcome.decision == ALLOW
            && !req.probe
            && let Some(jti) = jti
        {
            self.remember_allow(jti, &req.action, &touched, seq);
        }
        let scopes_needed = match &live {
            Some(l) if outcome.decision == DENY && !foreign => self.scopes_covering(l, &req.action).await?,
            _ => Vec::new(),
        };
        Ok(CheckAnswer {
            decision: outcome.decision,
            reasons: outcome.reasons,
            chain: answered,
            approval_request: outcome.approval.map(|a| a.id.to_string()),
            policy_version: version,
            scopes_needed,
            audit_seq: seq,
        })
    }

    /// When no scope of the token covers `action` at its audience: the
    /// audience's scopes that do. Empty otherwise.
    async fn scopes_covering(&self, live: &LiveToken, action: &str) -> Result<Vec<String>, Error> {
        let res = match self.resource_by_identifier(&live.record.audience).await {
            Ok(r) => r,
            Err(Error::InvalidTarget(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let covers = |s: &str| {
            mandate_model::Scope::parse(s)
                .ok()
                .and_then(|s| res.actions_of(&s))
                .is_some_and(|a| a.iter().any(|x| x == action))
        };
        if live.record.scopes.iter().any(|s| covers(s.as_str())) {
            return Ok(Vec::new());
        }
        Ok(res.scopes.keys().filter(|s| covers(s)).cloned().collect())
    }

    /// The check's RFC 9396 detail, of a type the token's resource declares
    /// and as its schema allows. The inner `Err` says why not (400).
    async fn checked_detail(
        &self,
        live: &LiveToken,
        req: &CheckRequest,
    ) -> Result<Result<Option<AuthorizationDetail>, String>, Error> {
        let detail = match req.detail() {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(Ok(None)),
            Err(why) => return Ok(Err(why)),
        };
        let res = match self.resource_by_identifier(&live.record.audience).await {
            Ok(r) => r,
            Err(Error::InvalidTarget(_)) => return Ok(Err("the token's audience declares no types".into())),
            Err(e) => return Err(e),
        };
        Ok(crate::details::validate_detail(&res, &detail).map(|()| Some(detail)))
    }

    /// The check's `context`, typed by the declaration of the token's
    /// resource (DESIGN §13). The inner `Err` names an undeclared key or a
    /// value of the wrong type.
    async fn declared_context(
        &self,
        live: &LiveToken,
        req: &CheckRequest,
    ) -> Result<Result<BTreeMap<String, mandate_policy::ContextValue>, String>, Error> {
        let Some(context) = req.context.as_ref().filter(|c| !c.is_empty()) else {
            return Ok(Ok(BTreeMap::new()));
        };
        let declared = match self.resource_by_identifier(&live.record.audience).await {
            Ok(r) => r.context.clone(),
            Err(Error::InvalidTarget(_)) => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        // A resource that declares no context schema keeps the behaviour
        // clients were built against: its context is recorded with the
        // decision but does not reach policy (the MCP gateway sends a
        // tool's arguments, whatever they are). Once it declares one, every
        // key must be declared (ADR 0022).
        if declared.is_empty() {
            return Ok(Ok(BTreeMap::new()));
        }
        let mut values = BTreeMap::new();
        for (key, value) in context {
            use mandate_model::records::ContextType;
            use mandate_policy::ContextValue;
            let Some(ty) = declared.get(key) else {
                return Ok(Err(format!(
                    "context key {key:?} is not declared by {}",
                    crate::audit::bounded(&live.record.audience)
                )));
            };
            let v = match (ty, value) {
                (ContextType::Long, serde_json::Value::Number(n)) if n.as_i64().is_some() => {
                    n.as_i64().map(ContextValue::Long)
                }
                (ContextType::String, serde_json::Value::String(s)) if s.len() <= MAX_FIELD => {
                    Some(ContextValue::String(s.clone()))
                }
                (ContextType::Bool, serde_json::Value::Bool(b)) => Some(ContextValue::Bool(*b)),
                _ => None,
            };
            let Some(v) = v else {
                return Ok(Err(format!("context key {key} must be a {}", ty.as_str())));
            };
            values.insert(key.clone(), v);
        }
        Ok(Ok(values))
    }

    /// The decision on `req` for this live token: from the per-node cache
    /// when one was kept under this epoch and policy version, else decided
    /// now (and kept when it depends only on the chain and the policies).
    async fn cached_decision(
        &self,
        live: &LiveToken,
        req: &CheckRequest,
        (declared, detail): (BTreeMap<String, mandate_policy::ContextValue>, Option<&AuthorizationDetail>),
        epoch: u64,
        version: &str,
        engine: &mandate_policy::PolicyEngine,
    ) -> Result<Outcome, Error> {
        let agents: Vec<&mandate_model::records::Agent> = live.agents.iter().collect();
        // What an approval is bound to and shows: the declared context as
        // sent, without the detail's facts (the detail is bound apart).
        let context = context_json(&declared);
        let mut declared = declared;
        // The checked detail is `context.authorization_detail` (DESIGN §13).
        if let Some(d) = detail {
            let res = self.resource_by_identifier(&live.record.audience).await?;
            declared.extend(crate::details::facts_of(&res, d));
        }
        let facts = mandate_policy::Facts {
            declared,
            client_address: req.client_address,
            ..self.facts(live.user.as_ref(), &agents, live.record.cnf_jkt.is_some())
        };
        // The facts (the time among them) are part of what is decided on.
        let key = (
            crate::chain::token_key(&req.token),
            req.action.clone(),
            req.target(),
            format!(
                "{}#{facts:?}#{}",
                serde_json::to_string(&req.resource.properties)
                    .map_err(|e| Error::Unavailable(format!("encoding properties: {e}")))?,
                serde_json::to_string(&detail).map_err(|e| Error::Unavailable(format!("encoding a detail: {e}")))?
            ),
        );
        if let Some(d) = self.caches.decision(&key, epoch, version) {
            return Ok(Outcome { decision: d.decision, reasons: d.reasons, ..Outcome::allow(vec![]) });
        }
        let o = self.decide_check(live, req, engine, &facts, (detail, &context)).await?;
        if o.cacheable {
            let d = crate::chain::CachedDecision { decision: o.decision, reasons: o.reasons.clone() };
            self.caches.keep_decision(key, epoch, version.to_owned(), d);
        }
        Ok(o)
    }

    async fn decide_check(
        &self,
        live: &LiveToken,
        req: &CheckRequest,
        engine: &mandate_policy::PolicyEngine,
        facts: &mandate_policy::Facts,
        (detail, context): (Option<&AuthorizationDetail>, &BTreeMap<String, serde_json::Value>),
    ) -> Result<Outcome, Error> {
        let Some(chain) = &live.chain else {
            return Ok(Outcome::deny("token: a resource server's own token acts for nobody"));
        };
        let res = match self.resource_by_identifier(&live.record.audience).await {
            Ok(r) => r,
            Err(Error::InvalidTarget(_)) => {
                return Ok(Outcome::deny("token: its audience is not a registered resource"));
            }
            Err(e) => return Err(e),
        };
        // Which of the token's scopes cover the action at its audience.
        let covering: Vec<_> =
            live.record.scopes.iter().filter(|s| res.actions_of(s).is_some_and(|a| a.contains(&req.action))).collect();
        if covering.is_empty() {
            return Ok(Outcome::deny(format!("scope: no scope of the token covers {}", req.action)));
        }
        for agent in &live.agents {
            if let Some(ceiling) = &agent.scopes
                && !covering.iter().any(|s| ceiling.contains(s))
            {
                return Ok(Outcome::deny(format!("ceiling: agent {} may not hold a scope covering it", agent.id)));
            }
        }
        // DESIGN §13: a detail of the token must cover the checked one
        // (same type, `equal` fields equal, `max` fields no larger).
        if let Some(asked) = detail {
            let bounds = res.authorization_details_types.get(asked.kind()).map(|t| &t.bounds);
            let granted = live.claims.authorization_details.clone().unwrap_or_default();
            let covered = match bounds {
                None => Err(format!("type {} is not declared", asked.kind())),
                Some(b) => granted.covering(asked, b).map(|_| ()),
            };
            if let Err(why) = covered {
                return Ok(Outcome::deny(format!("authorization_details: not covered by the token ({why})")));
            }
        }
        let target_id = req.target();
        let target = Target::Resource { api: &res.identifier, id: &target_id, properties: &req.resource.properties };
        let mut reasons = Vec::new();
        let mut approver: Option<Approver> = None;
        // The reuse window of every determining @approval permit (None:
        // single use).
        let mut windows: Vec<Option<i64>> = Vec::new();
        let mut principals: Vec<(String, Principal<'_>)> = Vec::new();
        if let Some(u) = &live.user {
            principals.push((u.id.to_string(), Principal::User(u)));
        }
        for a in &live.agents {
            principals.push((a.id.to_string(), Principal::Agent(a)));
        }
        let agents: Vec<&mandate_model::records::Agent> = live.agents.iter().collect();
        let related = self.related(&agents, live.user.as_ref().as_slice()).await?;
        for (who, principal) in principals {
            let d = engine.decide_with(principal, &req.action, target, &related, facts);
            if !d.allowed {
                if !d.errors.is_empty() {
                    tracing::warn!(errors = ?d.errors, action = %req.action, "policy evaluation failed; denied");
                    return Ok(Outcome::deny(format!("policy_error: the policy for {who} could not be evaluated")));
                }
                let by = if d.reasons.is_empty() { "no policy permits it".into() } else { d.reasons.join(", ") };
                return Ok(Outcome::deny(format!("policy: {who} is denied ({by})")));
            }
            reasons.push(format!("{who}: {}", d.reasons.join(", ")));
            if d.approval.is_some() {
                windows.push(d.approval_reuse);
            }
            approver = Approver::stricter(approver, d.approval);
        }
        let Some(approver) = approver else {
            return Ok(Outcome::allow(reasons));
        };
        let reuse = windows.into_iter().collect::<Option<Vec<i64>>>().and_then(|w| w.into_iter().min());
        self.approval_outcome(live, chain, req, (&res, detail, context), Permitted { reasons, approver, reuse }).await
    }

    /// @approval: allowed only with a matching approval in force, bound
    /// to this grant (or, without one, this delegation tree) as well as
    /// to the chain, the action and the resource. It is used up by the
    /// allow it gives, unless every @approval permit allows reuse.
    /// Otherwise the pending request for it, or a new one.
    async fn approval_outcome(
        &self,
        live: &LiveToken,
        chain: &mandate_model::delegation::Chain,
        req: &CheckRequest,
        (res, detail, context): (
            &mandate_model::records::Resource,
            Option<&AuthorizationDetail>,
            &BTreeMap<String, serde_json::Value>,
        ),
        permitted: Permitted,
    ) -> Result<Outcome, Error> {
        let Permitted { mut reasons, approver, reuse } = permitted;
        let target_id = req.target();
        let now = self.clock.now();
        let under = match live.record.grant {
            Some(g) => g.to_string(),
            None => live.root.to_string(),
        };
        let binding = binding(
            chain,
            &under,
            &req.action,
            &res.identifier,
            (&target_id, &req.resource.properties),
            (detail, context),
        )?;
        let q = ApprovalQuery { binding: Some(binding.clone()), limit: 20, ..ApprovalQuery::default() };
        let existing = self.store.approvals(&q).await?;
        // An approval asked under a laxer policy does not satisfy a
        // stricter one (another group, or fewer approvals).
        let group = match &approver {
            Approver::Group { name, .. } => Some(name.clone()),
            Approver::User | Approver::Owner => None,
        };
        let meets = |a: &Approval| a.group == group && a.required >= approver.required();
        let in_force = |a: &&Approval| {
            meets(a)
                && a.status == ApprovalStatus::Approved
                && a.grant == live.record.grant
                && match reuse {
                    None => now < a.expires_at,
                    Some(w) => a.decided_at.is_some_and(|d| now < d + Duration::seconds(w)),
                }
        };
        if let Some(a) = existing.iter().find(in_force) {
            let by = a.decided_by.as_deref().unwrap_or("?");
            reasons.push(match reuse {
                None => format!("approval {} by {by}, used up by this check", a.id),
                Some(w) => format!("approval {} by {by}, reusable for {w} s after it was given", a.id),
            });
            return Ok(Outcome {
                cacheable: false,
                consume: reuse.is_none().then_some(a.id),
                ..Outcome::allow(reasons)
            });
        }
        reasons.push(match &approver {
            Approver::Group { name, required } => format!("policy asks {required} of group {name} to approve"),
            other => format!("policy asks the {} to approve", other.label()),
        });
        if let Some(a) =
            existing.into_iter().find(|a| meets(a) && a.status == ApprovalStatus::Pending && now < a.expires_at)
        {
            return Ok(Outcome {
                decision: APPROVAL_REQUIRED,
                reasons,
                approval: Some(a),
                new_approval: false,
                cacheable: false,
                consume: None,
            });
        }
        let current = live.current().ok_or_else(|| Error::Unavailable("a live chain without an agent".into()))?;
        // A group approval records the user the request is for as its
        // `approver`: that gives no right to decide (ADR 0025).
        let person = match (&approver, chain.user()) {
            (Approver::User | Approver::Group { .. }, Some(u)) => u,
            _ => current.owner,
        };
        // One agent cannot flood a person's inbox through checks either
        // (SECURITY row 45): the caps of CIBA requests count these too.
        let user = chain.user().unwrap_or(current.owner);
        let all = self.store.pending_requests(current.id, None, now).await?;
        let theirs = self.store.pending_requests(current.id, Some(user), now).await?;
        if all >= self.config.max_pending_per_agent || theirs >= self.config.max_pending_per_agent_user {
            // Not cached: a decision or an expiry makes room.
            return Ok(Outcome {
                cacheable: false,
                ..Outcome::deny(format!(
                    "approval: agent {} has too many requests waiting for a decision ({all} in all, {theirs} for \
                     this person); decide those first",
                    current.id
                ))
            });
        }
        let approval = Approval {
            id: ApprovalId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?),
            agent: current.id,
            user: chain.user().unwrap_or(current.owner),
            approver: person,
            resource: res.identifier.clone(),
            subject: ApprovalSubject::Action {
                action: req.action.clone(),
                target: target_id,
                chain: chain.agents().to_vec(),
                binding,
                properties: req.resource.properties.clone(),
                authorization_detail: detail.cloned(),
                context: context.clone(),
            },
            binding_message: live.claims.purpose.clone(),
            status: ApprovalStatus::Pending,
            decided_by: None,
            created_at: now,
            expires_at: now + Duration::seconds(self.config.approval_ttl),
            decided_at: None,
            grant: live.record.grant,
            polled_at: None,
            required: approver.required(),
            group,
            approved_by: Vec::new(),
        };
        Ok(Outcome {
            decision: APPROVAL_REQUIRED,
            reasons,
            approval: Some(approval),
            new_approval: true,
            cacheable: false,
            consume: None,
        })
    }

    fn remembered_allow(&self, jti: Jti, action: &str, target: &str) -> Option<u64> {
        self.checked.get(&(jti, action.to_owned(), target.to_owned())).map(crate::footprint::Weighed::into_value)
    }

    fn remember_allow(&self, jti: Jti, action: &str, target: &str, seq: u64) {
        let key = (jti, action.to_owned(), target.to_owned());
        let key_heap = key.1.len() + key.2.len();
        self.checked.insert(key, crate::footprint::Weighed::new::<(Jti, String, String)>(key_heap, seq));
    }
}

/// What an action approval is bound to (SECURITY rows 33 and 43): the
/// grant (or, for a token under none, its delegation tree's root token),
/// the whole chain (and so its current actor), the action, and the
/// resource with its properties, the RFC 9396 detail checked, if any (an
/// approval for 120 EUR is not one for 500 EUR), and the check's declared
/// `context` values (an approval for `amount` 50 is not one for 500).
pub fn binding(
    chain: &mandate_model::delegation::Chain,
    under: &str,
    action: &str,
    api: &str,
    (target, properties): (&str, &BTreeMap<String, String>),
    (detail, context): (Option<&AuthorizationDetail>, &BTreeMap<String, serde_json::Value>),
) -> Result<String, Error> {
    #[derive(serde::Serialize)]
    struct Bound<'a> {
        under: &'a str,
        user: Option<String>,
        agents: Vec<String>,
        action: &'a str,
        api: &'a str,
        resource: &'a str,
        properties: &'a BTreeMap<String, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        authorization_detail: Option<String>,
        // Sorted by key (a BTreeMap); absent when empty, so a check
        // without context binds as it did before it was bound.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        context: &'a BTreeMap<String, serde_json::Value>,
    }
    let value = Bound {
        under,
        user: chain.user().map(|u| u.to_string()),
        agents: chain.agents().iter().map(ToString::to_string).collect(),
        action,
        api,
        resource: target,
        properties,
        // Canonical (sorted keys), so the same detail binds the same way.
        authorization_detail: detail
            .map(|d| mandate_audit::canonical::to_canonical(&d.to_value()))
            .transpose()
            .map_err(|e| Error::Unavailable(format!("encoding a detail: {e:?}")))?,
        context,
    };
    // Never the digest of an empty text: every approval would share it.
    let text = serde_json::to_string(&value).map_err(|e| Error::Unavailable(format!("encoding a binding: {e}")))?;
    let digest = Sha256::digest(text.as_bytes());
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// The declared context values as JSON (what an approval records and
/// shows).
fn context_json(declared: &BTreeMap<String, mandate_policy::ContextValue>) -> BTreeMap<String, serde_json::Value> {
    use mandate_policy::ContextValue;
    declared
        .iter()
        .map(|(k, v)| {
            let v = match v {
                ContextValue::Long(n) => serde_json::Value::from(*n),
                ContextValue::String(s) => serde_json::Value::from(s.clone()),
                ContextValue::Bool(b) => serde_json::Value::from(*b),
            };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The check API on a memory store: the decision is the intersection of
    //! the token, the user's rights, every agent and policy; an approval
    //! covers what it was given for, once.

    use mandate_model::ApprovalId;

    use super::APPROVAL_REQUIRED;
    use crate::audit::kind;
    use crate::oauth::TokenCaller;
    use crate::testing::World;
    use crate::{Caller, Error};

    #[test]
    fn an_approval_binding_covers_the_checked_detail() {
        // SECURITY row 33: an approval for 120 EUR is not one for 500 EUR.
        use mandate_model::details::AuthorizationDetail;
        let user = mandate_model::UserId::from_ulid(ulid::Ulid::from_parts(1, 1));
        let agent = mandate_model::AgentId::from_ulid(ulid::Ulid::from_parts(1, 2));
        let chain = mandate_model::delegation::Chain::for_user(user, agent);
        let pay = |amount: i64| {
            AuthorizationDetail::from_value(serde_json::json!({"type": "payment_initiation", "amount": amount}))
                .unwrap()
        };
        let props = std::collections::BTreeMap::new();
        let none = std::collections::BTreeMap::new();
        let bind = |d: Option<&AuthorizationDetail>| {
            super::binding(&chain, "grt_1", "pay", "https://pay.example", ("payment/p1", &props), (d, &none)).unwrap()
        };
        let (d120, d500) = (pay(120), pay(500));
        assert_ne!(bind(Some(&d120)), bind(Some(&d500)));
        assert_ne!(bind(Some(&d120)), bind(None));
        assert_eq!(bind(Some(&d120)), bind(Some(&pay(120))));
    }

    #[test]
    fn an_approval_binding_covers_the_declared_context() {
        // SECURITY row 33: an approval for amount 50 is not one for 500.
        use mandate_policy::ContextValue;
        let user = mandate_model::UserId::from_ulid(ulid::Ulid::from_parts(1, 1));
        let agent = mandate_model::AgentId::from_ulid(ulid::Ulid::from_parts(1, 2));
        let chain = mandate_model::delegation::Chain::for_user(user, agent);
        let props = std::collections::BTreeMap::new();
        let ctx = |pairs: &[(&str, ContextValue)]| {
            super::context_json(&pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect())
        };
        let bind = |c: &std::collections::BTreeMap<String, serde_json::Value>| {
            super::binding(&chain, "grt_1", "pay", "https://pay.example", ("payment/p1", &props), (None, c)).unwrap()
        };
        let c50 = ctx(&[("amount", ContextValue::Long(50))]);
        let c500 = ctx(&[("amount", ContextValue::Long(500))]);
        assert_ne!(bind(&c50), bind(&c500));
        assert_ne!(bind(&c50), bind(&ctx(&[])));
        assert_ne!(bind(&c50), bind(&ctx(&[("amount", ContextValue::String("50".into()))])));
        let both = ctx(&[("amount", ContextValue::Long(50)), ("urgent", ContextValue::Bool(true))]);
        assert_ne!(bind(&c50), bind(&both));
        assert_eq!(bind(&c50), bind(&ctx(&[("amount", ContextValue::Long(50))])));
        assert_eq!(c50.get("amount"), Some(&serde_json::json!(50)));
    }

    #[tokio::test]
    async fn a_check_allows_what_every_party_allows_and_nothing_else() {
        let w = World::new().await;
        let granted = w.granted(&w.planner, "read").await;
        let allowed = w.check(&granted.access_token, "get", "e1", &[]).await;
        assert_eq!(allowed.decision, "allow", "{allowed:?}");
        assert_eq!(allowed.chain, vec![w.alice.id.to_string(), w.planner.id().to_string()]);
        let write = w.check(&granted.access_token, "create", "e1", &[]).await;
        assert_eq!(write.decision, "deny");
        assert!(write.reasons.iter().any(|r| r.starts_with("scope:")), "{write:?}");
        let board = w.check(&granted.access_token, "get", "e2", &[("owner", "board")]).await;
        assert_eq!(board.decision, "deny");
        assert!(board.reasons.iter().any(|r| r.starts_with("policy:")), "{board:?}");
        let unknown = w.check(&granted.access_token, "delete", "e1", &[]).await;
        assert_eq!(unknown.decision, "deny");
        // Every deny is recorded; an allow once per token, action and resource.
        let again = w.check(&granted.access_token, "get", "e1", &[]).await;
        assert_eq!((again.decision, again.audit_seq), ("allow", allowed.audit_seq));
        let decided = w.events(kind::CHECK).await;
        let decisions: Vec<_> = decided.iter().filter_map(|e| e.decision.clone()).collect();
        assert_eq!(decisions, vec!["allow", "deny", "deny", "deny"]);
    }

    #[tokio::test]
    async fn a_revoked_or_expired_token_is_denied_at_once() {
        let w = World::new().await;
        let granted = w.granted(&w.planner, "read").await;
        assert_eq!(w.check(&granted.access_token, "get", "e1", &[]).await.decision, "allow");
        assert!(w.m.revoke(&TokenCaller::Admin, &granted.access_token, None).await.unwrap());
        let revoked = w.check(&granted.access_token, "get", "e1", &[]).await;
        assert_eq!(revoked.decision, "deny");
        assert_eq!(revoked.reasons, vec!["token: the token is revoked".to_owned()]);
        let other = w.granted(&w.planner, "read").await;
        w.clock.advance(time::Duration::minutes(5));
        let expired = w.check(&other.access_token, "get", "e1", &[]).await;
        assert_eq!(expired.decision, "deny", "{expired:?}");
        let garbage = w.check("not-a-token", "get", "e1", &[]).await;
        assert_eq!(garbage.reasons, vec!["token: the token does not verify".to_owned()]);
    }

    #[tokio::test]
    async fn an_action_approval_covers_what_was_shown_once() {
        let w = World::new().await;
        let asked = w.ciba(&w.planner, "read write").await.unwrap();
        let id: ApprovalId = asked.auth_req_id.parse().unwrap();
        w.m.decide_approval(Caller::User(w.alice.id), id, true).await.unwrap();
        let token = w.poll(&w.planner, &asked.auth_req_id).await.unwrap().access_token;
        assert_eq!(w.check(&token, "create", "e1", &[]).await.decision, "allow");
        let sensitive = [("sensitive", "yes")];
        let waits = w.check(&token, "create", "e2", &sensitive).await;
        assert_eq!(waits.decision, APPROVAL_REQUIRED);
        let request: ApprovalId = waits.approval_request.as_deref().unwrap().parse().unwrap();
        // Asking again points at the same request.
        let again = w.check(&token, "create", "e2", &sensitive).await;
        assert_eq!(again.approval_request, waits.approval_request);
        w.m.decide_approval(Caller::User(w.alice.id), request, true).await.unwrap();
        assert_eq!(w.check(&token, "create", "e2", &sensitive).await.decision, "allow");
        // Used up by that allow, and never valid for anything else.
        let after = w.check(&token, "create", "e2", &sensitive).await;
        assert_eq!(after.decision, APPROVAL_REQUIRED);
        assert_ne!(after.approval_request, waits.approval_request);
        let elsewhere = w.check(&token, "create", "e3", &sensitive).await;
        assert_eq!(elsewhere.decision, APPROVAL_REQUIRED);
        assert_ne!(elsewhere.approval_request, after.approval_request);
        // Only the admin or a resource server asks.
        let res = w.m.authenticate_checker("not-the-admin-token", None, "/v1/check").await;
        assert!(matches!(res, Err(Error::Unauthenticated)), "{res:?}");
    }
}
