//! What each page shows, as the values its template renders: one struct per
//! template in `templates/`. Every value is text, escaped by the template
//! (`askama.toml`); nothing here builds markup.

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_core::session::Session;

use super::page;

/// Renders a page with the page headers. A template that cannot render
/// (a bug, never input) is logged and answered with a fixed plain-text
/// 500.
pub(crate) fn html(status: StatusCode, view: &impl Template) -> Response {
    match view.render() {
        Ok(body) => page(status, body),
        Err(e) => {
            tracing::error!(error = %e, "a page template failed to render");
            let mut resp = (StatusCode::INTERNAL_SERVER_ERROR, "The page could not be shown.").into_response();
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
    }
}

/// The signed-in person a page header shows: their email, the sign-out
/// form's CSRF token and the main navigation.
pub struct Who {
    pub email: String,
    pub csrf: String,
    pub nav: Vec<NavItem>,
}

pub struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub here: bool,
}

impl Who {
    /// The header of a page at `current` (a nav `href`, or "" for none).
    pub fn of(session: &Session, current: &str) -> Option<Self> {
        let mut nav: Vec<NavItem> = [
            ("/approvals", "Approvals"),
            ("/grants", "Grants"),
            ("/agents", "Agents"),
            ("/review", "Review"),
            ("/audit", "Audit"),
        ]
        .into_iter()
        .map(|(href, label)| NavItem { href, label, here: href == current })
        .collect();
        // The console's link, only for the people it opens to (ADR 0037);
        // `session.user` was read from the store for this request.
        if mandate_core::audit::opens_console(&session.user) {
            nav.push(NavItem { href: "/console", label: "Console", here: current == "/console" });
        }
        Some(Who { email: session.user.email.clone(), csrf: session.csrf.clone(), nav })
    }
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub text: String,
}

#[derive(Template)]
#[template(path = "invalid_link.html")]
pub struct InvalidLinkPage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub why: String,
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage<'a> {
    pub title: &'static str,
    pub who: Option<Who>,
    /// Why the last attempt failed; empty for none.
    pub alert: &'a str,
    pub token: &'a str,
    pub next: &'a str,
    pub email: &'a str,
    /// Each upstream provider's link and button text.
    pub providers: Vec<(String, String)>,
    /// Whether the email-and-password form is offered.
    pub password: bool,
}

// ----- approvals -----

/// A pending request, as its card shows it.
pub struct Card {
    pub id: String,
    pub agent: String,
    /// The scopes a grant request asks for; `None` for an action.
    pub scopes: Option<String>,
    /// A reapproval (ADR 0036): renewing the grant `scopes` names, and
    /// when it ends now.
    pub renewal: Option<String>,
    pub action: String,
    pub target: String,
    pub properties: Vec<(String, String)>,
    /// The check's declared `context` values an action approval is bound
    /// to (SECURITY row 33).
    pub context: Vec<(String, String)>,
    pub resource: String,
    pub message: Option<String>,
    /// The agents between the person and the asking agent, named.
    pub chain: Vec<String>,
    pub asked: String,
    pub expires: String,
    pub approve: String,
    pub deny: String,
    /// The digest of what the card shows (the decision's precondition).
    pub shown: String,
    /// RFC 9396 details asked for (a grant) or checked (an action).
    pub details: Vec<DetailView>,
    /// For a group approval: the group, the person it is for, and how
    /// many approvals it has of how many it needs.
    pub group: Option<GroupCard>,
}

/// What a group approval's card adds.
pub struct GroupCard {
    pub name: String,
    pub for_user: String,
    pub count: String,
    /// Whether the person looking has approved it already.
    pub mine: bool,
}

/// One RFC 9396 authorization detail as a person reads it: its type and
/// a row per field (text as it is, other values as JSON). The templates
/// escape every value.
pub struct DetailView {
    pub kind: String,
    pub rows: Vec<(String, String)>,
}

impl DetailView {
    pub fn of(d: &mandate_model::details::AuthorizationDetail) -> Self {
        let mut rows = Self::rows(d.fields());
        rows.retain(|(k, _)| k.as_str() != "type");
        Self { kind: d.kind().to_owned(), rows }
    }

    /// A row per member: text as it is, other values as JSON.
    pub fn rows<'a>(fields: impl IntoIterator<Item = (&'a String, &'a serde_json::Value)>) -> Vec<(String, String)> {
        fields
            .into_iter()
            .map(|(k, v)| {
                let shown = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), shown)
            })
            .collect()
    }

    pub fn all(ds: &mandate_model::details::AuthorizationDetails) -> Vec<Self> {
        ds.iter().map(Self::of).collect()
    }
}

/// The inbox's live region.
pub struct ApprovalsList {
    pub done: String,
    pub me: String,
    pub csrf: String,
    pub cards: Vec<Card>,
    /// A link back to the newest requests (when this is an older page).
    pub newest: bool,
    /// The cursor of the next older page, when this one is full.
    pub older: Option<String>,
}

#[derive(Template)]
#[template(path = "approvals.html")]
pub struct ApprovalsPage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub live: ApprovalsList,
}

#[derive(Template)]
#[template(path = "approvals_live.html")]
pub struct ApprovalsLive {
    pub live: ApprovalsList,
}

// ----- grants -----

pub struct GrantRow {
    pub id: String,
    pub agent: String,
    pub purpose: String,
    pub scopes: String,
    pub resource: String,
    pub expires: String,
    pub last_used: String,
    pub status: &'static str,
    pub live: bool,
    pub revoke: String,
    /// The Renew button's action, for a live grant inside the reapproval
    /// window (ADR 0036).
    pub renew: Option<String>,
}

pub struct GrantsList {
    pub done: String,
    pub csrf: String,
    pub rows: Vec<GrantRow>,
}

#[derive(Template)]
#[template(path = "grants.html")]
pub struct GrantsPage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub live: GrantsList,
}

#[derive(Template)]
#[template(path = "grants_live.html")]
pub struct GrantsLive {
    pub live: GrantsList,
}

// ----- review -----

/// An open review item assigned to the person, with its three decisions.
pub struct ReviewRow {
    pub id: String,
    pub kind: String,
    pub subject: String,
    /// The evidence, one `name: value` line per member.
    pub evidence: Vec<String>,
    pub suggestion: String,
    /// The scopes the Narrow field starts with: the suggested narrower set.
    pub narrow_to: String,
    pub deadline: String,
    pub decide: String,
}

/// An open campaign, for auditors.
pub struct CampaignRow {
    pub id: String,
    pub scope: String,
    pub deadline: String,
    pub default: &'static str,
    pub progress: String,
}

pub struct ReviewList {
    pub done: String,
    pub csrf: String,
    pub rows: Vec<ReviewRow>,
    /// Open campaigns; `None` for people who are not reviewers.
    pub campaigns: Option<Vec<CampaignRow>>,
}

#[derive(Template)]
#[template(path = "review.html")]
pub struct ReviewPage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub live: ReviewList,
}

#[derive(Template)]
#[template(path = "review_live.html")]
pub struct ReviewLive {
    pub live: ReviewList,
}

// ----- agents -----

/// A lifecycle button on an agent's row.
pub struct AgentOp {
    pub action: String,
    pub label: &'static str,
    pub class: &'static str,
}

pub struct AgentRow {
    pub id: String,
    pub name: String,
    /// The agent that spawned this ephemeral one.
    pub parent: Option<String>,
    pub kind: String,
    pub description: String,
    pub scopes: String,
    pub status: &'static str,
    pub last_used: String,
    pub expires: String,
    /// The credential policy in force, one line per limit.
    pub limits: Vec<String>,
    pub ops: Vec<AgentOp>,
}

pub struct AgentsList {
    pub done: String,
    pub csrf: String,
    pub rows: Vec<AgentRow>,
}

#[derive(Template)]
#[template(path = "agents.html")]
pub struct AgentsPage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub live: AgentsList,
}

#[derive(Template)]
#[template(path = "agents_live.html")]
pub struct AgentsLive {
    pub live: AgentsList,
}

// ----- audit -----

/// A filter field of the audit page.
pub struct Field {
    pub name: &'static str,
    pub label: &'static str,
    pub value: String,
}

pub struct EventRow {
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub decision: String,
    pub actor: String,
    pub resource: String,
    pub reason: String,
    /// The grant or token whose tree the event belongs to.
    pub trace: Option<String>,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub struct AuditPage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub everything: bool,
    pub fields: Vec<Field>,
    pub events: Vec<EventRow>,
}

/// An event in a delegation tree.
pub struct TraceEvent {
    pub decision: String,
    pub kind: String,
    pub action: String,
    pub seq: u64,
    pub time: String,
    pub reason: String,
}

impl From<&mandate_audit::Event> for TraceEvent {
    fn from(e: &mandate_audit::Event) -> Self {
        TraceEvent {
            decision: e.decision.clone().unwrap_or_default(),
            kind: e.kind.clone(),
            action: e.action.clone().unwrap_or_default(),
            seq: e.seq,
            time: e.time.clone(),
            reason: e.reason.clone().unwrap_or_default(),
        }
    }
}

/// A token in the tree.
pub struct TraceNode {
    pub actor: String,
    pub resource: String,
    pub scope: String,
    pub jti: String,
    pub time: String,
    pub events: Vec<TraceEvent>,
    /// Whether a list of children (or hidden ones) follows.
    pub opens: bool,
}

/// The tree, written depth first: a token, or a count of hidden ones, and
/// how many open lists end after it. Templates do not recurse, so the
/// nesting is carried by `opens` and `closes`.
pub struct TraceStep {
    pub node: Option<TraceNode>,
    pub hidden: usize,
    pub closes: usize,
}

#[derive(Template)]
#[template(path = "trace.html")]
pub struct TracePage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub id: String,
    pub grant_events: Vec<TraceEvent>,
    pub who_for: String,
    pub subject: String,
    pub steps: Vec<TraceStep>,
    pub hidden: usize,
    pub truncated: bool,
}

// ----- consent -----

#[derive(Template)]
#[template(path = "consent.html")]
pub struct ConsentPage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub agent: String,
    pub agent_id: String,
    pub owner: String,
    pub description: String,
    pub purpose: String,
    pub resource_name: String,
    pub resource: String,
    /// Each scope asked for, with the actions it allows.
    pub scopes: Vec<(String, String)>,
    /// Whether the client asked to keep access (a refresh token).
    pub offline: bool,
    pub hours: String,
    /// The host the code goes to, shown prominently.
    pub redirect_host: String,
    /// Whether every redirect the client registered is on this machine.
    pub loopback_only: bool,
    /// For a client that registered itself: nobody vouched for its name;
    /// its metadata document's URL, or `None` for dynamic registration.
    pub unverified: bool,
    pub metadata_url: Option<String>,
    pub redirect: String,
    pub csrf: String,
    /// The authorization request, carried to the decision.
    pub params: Vec<(String, String)>,
    /// RFC 9396 details the person is asked to approve.
    pub details: Vec<DetailView>,
    /// The only agents (or groups) the grant's tokens may be passed on to
    /// (`allowed_actors`, ADR 0024); empty when the request names none.
    pub actors: Vec<String>,
}

// ----- console (ADR 0037) -----

/// The console's own navigation, with the page at `current` marked.
pub fn console_nav(current: &str) -> Vec<NavItem> {
    [
        ("/console/inventory", "Inventory"),
        ("/console/policies", "Policies"),
        ("/console/keys", "Keys"),
        ("/review", "Review"),
    ]
    .into_iter()
    .map(|(href, label)| NavItem { href, label, here: href == current })
    .collect()
}

#[derive(Template)]
#[template(path = "console.html")]
pub struct ConsolePage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub console: Vec<NavItem>,
}

/// A tab of the inventory: one list.
pub struct Tab {
    pub href: String,
    pub label: &'static str,
    pub here: bool,
}

/// A table cell: text, linked when `href` is set.
pub struct Cell {
    pub text: String,
    pub href: Option<String>,
}

impl Cell {
    pub fn text(text: impl Into<String>) -> Self {
        Cell { text: text.into(), href: None }
    }
}

#[derive(Template)]
#[template(path = "console_inventory.html")]
pub struct InventoryPage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub console: Vec<NavItem>,
    pub tabs: Vec<Tab>,
    /// The list shown (`users`, `agents`, …): the filter form's action.
    pub action: String,
    pub caption: &'static str,
    pub fields: Vec<Field>,
    /// Why the filters were refused; empty when they were not.
    pub alert: String,
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Cell>>,
    /// The link to the next page, same filters.
    pub next: Option<String>,
}

#[derive(Template)]
#[template(path = "console_agent.html")]
pub struct AgentDetailPage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub console: Vec<NavItem>,
    pub name: String,
    /// Label and value, in order.
    pub facts: Vec<(&'static str, String)>,
    /// kid, key type, algorithm.
    pub keys: Vec<(String, String, String)>,
    pub may_delegate_to: Vec<String>,
    pub candidates: usize,
    /// Agent, count, last time.
    pub delegated_to: Vec<(String, u64, String)>,
    pub days: u32,
    pub events_read: u64,
    pub complete: bool,
}

/// One case's answer from the dry run.
pub struct CaseRow {
    pub n: usize,
    pub decision: String,
    pub expected: String,
    pub matches: &'static str,
    pub current: String,
    pub flipped: &'static str,
    pub reasons: String,
}

/// A recorded decision the candidate decides differently.
pub struct FlipRow {
    pub seq: u64,
    pub time: String,
    pub action: String,
    pub resource: String,
    pub chain: String,
    pub current: String,
    pub candidate: String,
}

pub struct ReplayView {
    pub since: String,
    pub replayed: usize,
    pub skipped: usize,
    pub truncated: bool,
    pub allow_to_deny: usize,
    pub deny_to_allow: usize,
    pub other_changes: usize,
    pub samples: Vec<FlipRow>,
}

pub struct TestView {
    pub candidate_version: String,
    pub current_version: String,
    pub matched: usize,
    pub mismatched: usize,
    pub cases: Vec<CaseRow>,
    /// "case 0: allow → deny", one per flipped case.
    pub flips: Vec<String>,
    pub replay: Option<ReplayView>,
}

/// A history entry with its Diff link and Restore form.
pub struct VersionRow {
    pub number: u64,
    pub version: String,
    pub author: String,
    pub created: String,
    pub bytes: u64,
    pub current: bool,
    pub diff: String,
    pub restore: String,
}

#[derive(Template)]
#[template(path = "console_policies.html")]
pub struct PoliciesPage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub console: Vec<NavItem>,
    pub csrf: String,
    /// What the last action did; empty for none.
    pub notice: String,
    /// Why it was refused; empty for none.
    pub alert: String,
    /// The editor's text: the current set, or what was submitted.
    pub text: String,
    /// The version the editor's text was made from (`expected_version`).
    pub expected: String,
    /// The running set's version and history number.
    pub version: String,
    pub number: String,
    pub cases: String,
    pub replay: bool,
    pub since: String,
    pub results: Option<TestView>,
    pub versions: Vec<VersionRow>,
    pub older: Option<String>,
}

/// A line of a diff and how it changed: `add`, `del`, `hunk` or `same`.
pub struct DiffLine {
    pub class: &'static str,
    pub text: String,
}

#[derive(Template)]
#[template(path = "console_diff.html")]
pub struct DiffPage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub console: Vec<NavItem>,
    pub from: String,
    pub to: u64,
    pub inserted: usize,
    pub deleted: usize,
    pub lines: Vec<DiffLine>,
}

pub struct KeyRow {
    pub kid: String,
    pub alg: String,
    pub purpose: &'static str,
    pub state: &'static str,
    pub created: String,
    pub retired: String,
}

#[derive(Template)]
#[template(path = "console_keys.html")]
pub struct KeysPage {
    pub title: &'static str,
    pub who: Option<Who>,
    pub console: Vec<NavItem>,
    pub csrf: String,
    pub notice: String,
    pub rows: Vec<KeyRow>,
}
