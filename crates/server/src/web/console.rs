//! The admin console (DESIGN §12, ADR 0037): the inventory, the policy
//! editor and key rotation, as pages for people in the group
//! `mandate-admins`, which only the admin token gives.
//!
//! A console page acts as [`Caller::ConsoleAdmin`]: only the operations
//! the console offers accept it, each checks the membership again, and the
//! audit trail names the person. Membership is read on every request (the
//! session's person is read from the store each time), so leaving the
//! group, or being disabled, closes the console at once. Every form
//! carries the session's CSRF token, as on the other pages.

use std::collections::BTreeMap;

use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use mandate_core::audit::{kind, opens_console};
use mandate_core::policy_test::{PolicyCase, PolicyTestAnswer, PolicyTestRequest, ReplayRequest};
use mandate_core::{Caller, Error};
use mandate_model::AgentId;
use mandate_model::records::UserStatus;
use time::OffsetDateTime;

use super::Signed;
use super::html::{url_encode, when};
use super::pages::{csrf_refusal, error_page};
use super::views::{self, Cell, Field, Tab, Who, console_nav, html};
use crate::AppState;
use crate::error::Problem;
use crate::extract::OAuthForm;

type PageResult = Result<Response, Response>;

fn fail(e: Error) -> Response {
    error_page(&e)
}

/// A signed-in person who opens the console, acting as
/// [`Caller::ConsoleAdmin`]. Anyone else signed in gets 403 (audited as
/// `admin.denied`); without a session, the sign-in page.
pub(crate) struct ConsoleAdmin {
    pub signed: Signed,
    pub caller: Caller,
}

impl FromRequestParts<AppState> for ConsoleAdmin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let signed = Signed::from_request_parts(parts, state).await?;
        let user = &signed.session.user;
        if !opens_console(user) {
            let why = "the console is for people in the group mandate-admins, which only the admin gives";
            state
                .mandate
                .record_admin_refusal(kind::ADMIN_DENIED, Some(Caller::User(user.id)), why)
                .await
                .map_err(fail)?;
            return Err(fail(Error::Forbidden(why.into())));
        }
        let caller = Caller::ConsoleAdmin(user.id);
        Ok(ConsoleAdmin { signed, caller })
    }
}

impl ConsoleAdmin {
    fn who(&self) -> Option<Who> {
        Who::of(&self.signed.session, "/console")
    }
}

pub async fn index(admin: ConsoleAdmin) -> Response {
    html(StatusCode::OK, &views::ConsolePage { title: "Console", who: admin.who(), console: console_nav("") })
}

// ----- inventory -----

/// One inventory list: its name (in the path and the cursor), tab label,
/// the API's parameters and the labels of the filter fields.
struct List {
    name: &'static str,
    label: &'static str,
    caption: &'static str,
    known: &'static [&'static str],
    fields: &'static [(&'static str, &'static str)],
}

const LISTS: [List; 4] = [
    List {
        name: "agents",
        label: "Agents",
        caption: "Agents, newest first",
        known: crate::inventory::AGENT_FILTERS,
        fields: &[
            ("owner", "Owner (usr_…)"),
            ("kind", "Kind"),
            ("origin", "Origin"),
            ("status", "Status"),
            ("parent", "Parent (agt_…)"),
            ("used_before", "Used before"),
            ("used_after", "Used after"),
            ("expires_before", "Expires before"),
            ("limit", "Per page"),
        ],
    },
    List {
        name: "users",
        label: "People",
        caption: "People, newest first",
        known: crate::inventory::USER_FILTERS,
        fields: &[("status", "Status"), ("group", "Group"), ("limit", "Per page")],
    },
    List {
        name: "resources",
        label: "Resources",
        caption: "Resources, newest first",
        known: crate::inventory::RESOURCE_FILTERS,
        fields: &[("limit", "Per page")],
    },
    List {
        name: "grants",
        label: "Grants",
        caption: "Grants, newest first",
        known: crate::inventory::GRANT_FILTERS,
        fields: &[
            ("user", "Person (usr_…)"),
            ("agent", "Agent (agt_…)"),
            ("resource", "Resource"),
            ("status", "Status"),
            ("expires_before", "Expires before"),
            ("used_before", "Used before"),
            ("limit", "Per page"),
        ],
    },
];

/// A page of one list: columns, rows and the next page's cursor.
struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
    next: Option<String>,
}

fn agent_link(id: AgentId, text: String) -> Cell {
    Cell { text, href: Some(format!("/console/agents/{id}")) }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn or_never(t: Option<OffsetDateTime>) -> String {
    t.map_or_else(|| "never".into(), when)
}

/// Reads the list's filters exactly as the API does (the same parameter
/// names, parsing and bounds) and asks the same core list.
async fn table(s: &AppState, caller: Caller, list: &str, q: &BTreeMap<String, String>) -> Result<Table, Problem> {
    use crate::inventory::{agents_query, cursor, grants_query, resources_query, users_query};
    let next = |id: Option<String>| id.map(|id| cursor(list, id));
    match list {
        "users" => {
            let page = s.mandate.list_users(caller, users_query(q)?).await?;
            let rows = page
                .items
                .iter()
                .map(|u| {
                    vec![
                        Cell::text(&u.name),
                        Cell::text(&u.email),
                        Cell::text(u.groups.iter().chain(&u.scim_groups).cloned().collect::<Vec<_>>().join(", ")),
                        Cell::text(match u.status {
                            UserStatus::Active => "active",
                            UserStatus::Disabled => "disabled",
                        }),
                        Cell::text(when(u.created_at)),
                        Cell::text(u.id.to_string()),
                    ]
                })
                .collect();
            let columns = vec!["Name", "Email", "Groups", "Status", "Created", "Id"];
            Ok(Table { columns, rows, next: next(page.next.map(|id| id.to_string())) })
        }
        "agents" => {
            let page = s.mandate.list_agents(caller, agents_query(q)?).await?;
            let rows = page
                .items
                .iter()
                .map(|l| {
                    let a = &l.agent;
                    vec![
                        agent_link(a.id, a.name.clone()),
                        Cell::text(a.owner.to_string()),
                        Cell::text(format!("{:?}", a.kind).to_lowercase()),
                        Cell::text(a.origin.as_str()),
                        Cell::text(a.status.as_str()),
                        Cell::text(or_never(l.last_used_at)),
                        Cell::text(a.expires_at.map_or_else(|| "—".into(), when)),
                        Cell::text(a.id.to_string()),
                    ]
                })
                .collect();
            let columns = vec!["Name", "Owner", "Kind", "Origin", "Status", "Last used", "Expires", "Id"];
            Ok(Table { columns, rows, next: next(page.next.map(|id| id.to_string())) })
        }
        "resources" => {
            let page = s.mandate.list_resources(caller, resources_query(q)?).await?;
            let rows = page
                .items
                .iter()
                .map(|r| {
                    vec![
                        Cell::text(&r.name),
                        Cell::text(&r.identifier),
                        Cell::text(r.scopes.keys().cloned().collect::<Vec<_>>().join(" ")),
                        Cell::text(when(r.created_at)),
                        Cell::text(r.id.to_string()),
                    ]
                })
                .collect();
            let columns = vec!["Name", "Identifier", "Scopes", "Created", "Id"];
            Ok(Table { columns, rows, next: next(page.next.map(|id| id.to_string())) })
        }
        _ => {
            let now = s.mandate.now();
            let page = s.mandate.list_grants(caller, grants_query(q, now)?).await?;
            let rows = page
                .items
                .iter()
                .map(|g| {
                    vec![
                        agent_link(g.agent, g.agent.to_string()),
                        Cell::text(g.user.to_string()),
                        Cell::text(&g.resource),
                        Cell::text(g.scopes.to_claim()),
                        Cell::text(g.status_at(now)),
                        Cell::text(when(g.expires_at)),
                        Cell::text(or_never(g.last_used_at)),
                        Cell::text(g.id.to_string()),
                    ]
                })
                .collect();
            let columns = vec!["Agent", "Person", "Resource", "Scopes", "Status", "Expires", "Last used", "Id"];
            Ok(Table { columns, rows, next: next(page.next.map(|id| id.to_string())) })
        }
    }
}

pub async fn inventory(State(s): State<AppState>, admin: ConsoleAdmin, RawQuery(raw): RawQuery) -> PageResult {
    list_page(&s, &admin, "agents", raw.as_deref()).await
}

pub async fn inventory_list(
    State(s): State<AppState>,
    admin: ConsoleAdmin,
    Path(list): Path<String>,
    RawQuery(raw): RawQuery,
) -> PageResult {
    list_page(&s, &admin, &list, raw.as_deref()).await
}

async fn list_page(s: &AppState, admin: &ConsoleAdmin, list: &str, raw: Option<&str>) -> PageResult {
    let Some(spec) = LISTS.iter().find(|l| l.name == list) else {
        return Err(fail(Error::NotFound("no such list".into())));
    };
    let action = format!("/console/inventory/{}", spec.name);
    // The filter form sends every field, empty ones too: an empty field
    // is no filter. What is left is read as the API reads it.
    let (status, alert, table, q) = match crate::delegation::query(raw, spec.known) {
        Err(p) => (p.status, p.detail, None, BTreeMap::new()),
        Ok(mut q) => {
            q.retain(|_, v| !v.is_empty());
            match table(s, admin.caller, spec.name, &q).await {
                Ok(t) => (StatusCode::OK, String::new(), Some(t), q),
                Err(p) if p.status == StatusCode::BAD_REQUEST => (p.status, p.detail, None, q),
                Err(p) => return Err(problem_page(p)),
            }
        }
    };
    let fields = spec
        .fields
        .iter()
        .map(|&(name, label)| Field { name, label, value: q.get(name).cloned().unwrap_or_default() })
        .collect();
    let tabs = LISTS
        .iter()
        .map(|l| Tab { href: format!("/console/inventory/{}", l.name), label: l.label, here: l.name == spec.name })
        .collect();
    let (columns, rows, next) = match table {
        Some(t) => {
            let next = t.next.map(|c| {
                let mut params: Vec<(&str, &str)> =
                    q.iter().filter(|(k, _)| *k != "cursor").map(|(k, v)| (k.as_str(), v.as_str())).collect();
                params.push(("cursor", c.as_str()));
                let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", url_encode(v))).collect();
                format!("{action}?{}", query.join("&"))
            });
            (t.columns, t.rows, next)
        }
        None => (Vec::new(), Vec::new(), None),
    };
    let view = views::InventoryPage {
        title: "Inventory",
        who: admin.who(),
        console: console_nav("/console/inventory"),
        tabs,
        action,
        caption: spec.caption,
        fields,
        alert,
        columns,
        rows,
        next,
    };
    Ok(html(status, &view))
}

/// A problem from the API's shared code, as a page.
fn problem_page(p: Problem) -> Response {
    let who = None;
    html(p.status, &views::ErrorPage { title: p.title, who, text: p.detail })
}

pub async fn agent(
    State(s): State<AppState>,
    admin: ConsoleAdmin,
    Path(raw): Path<String>,
    RawQuery(rawq): RawQuery,
) -> PageResult {
    let q = crate::delegation::query(rawq.as_deref(), &["days"]).map_err(problem_page)?;
    let days = crate::delegation::parsed::<u32>("days", q.get("days")).map_err(problem_page)?;
    let days = mandate_core::inventory::window_days(days).map_err(fail)?;
    let id: AgentId = raw.parse().map_err(|_| fail(Error::NotFound("no such agent".into())))?;
    let inv = s.mandate.agent_inventory(admin.caller, id, days).await.map_err(fail)?;
    let a = &inv.agent;
    let facts = vec![
        ("Id", a.id.to_string()),
        ("Owner", a.owner.to_string()),
        ("Purpose", a.description.clone().unwrap_or_else(|| "—".into())),
        ("Origin", a.origin.as_str().to_owned()),
        ("Kind", format!("{:?}", a.kind).to_lowercase()),
        ("Status", a.status.as_str().to_owned()),
        ("Parent", a.parent.map_or_else(|| "—".into(), |p| p.to_string())),
        ("Created", when(a.created_at)),
        ("Expires", a.expires_at.map_or_else(|| "—".into(), when)),
        ("Last used", or_never(inv.activity.last_used_at)),
        ("Scope ceiling", a.scopes.as_ref().map_or_else(|| "any, as policy allows".to_owned(), |s| s.to_claim())),
        ("Live grants", inv.activity.live_grants.to_string()),
        ("Live tokens", inv.activity.live_tokens.to_string()),
        ("Client secret", yes_no(a.secret_hash.is_some()).to_owned()),
        ("Public client", yes_no(a.public).to_owned()),
        ("Metadata document", a.metadata_url.clone().unwrap_or_else(|| "—".into())),
        // The server's defaults narrowed by its ancestors' limits and its own.
        ("Limits in force", super::pages::describe_limits(&s.mandate.limits_of(a).await.map_err(fail)?).join("; ")),
    ];
    let text = |k: &serde_json::Value, f: &str| k.get(f).and_then(serde_json::Value::as_str).unwrap_or("—").to_owned();
    let keys = a
        .jwks
        .as_ref()
        .and_then(|j| j.get("keys"))
        .and_then(serde_json::Value::as_array)
        .map(|keys| keys.iter().map(|k| (text(k, "kid"), text(k, "kty"), text(k, "alg"))).collect())
        .unwrap_or_default();
    let view = views::AgentDetailPage {
        title: "Agent",
        who: admin.who(),
        console: console_nav("/console/inventory"),
        name: a.name.clone(),
        facts,
        keys,
        may_delegate_to: inv.may_delegate_to.iter().map(ToString::to_string).collect(),
        candidates: inv.candidates,
        delegated_to: inv.delegated_to.iter().map(|d| (d.agent.to_string(), d.count, d.last.clone())).collect(),
        days: inv.days,
        events_read: inv.events_read,
        complete: inv.complete,
    };
    Ok(html(StatusCode::OK, &view))
}

// ----- policies -----

/// What the editor shows besides the running set: the text being edited,
/// the version it was made from, the cases and the last action's outcome.
#[derive(Default)]
struct Editor {
    text: Option<String>,
    expected: Option<String>,
    cases: String,
    replay: bool,
    since: String,
    notice: String,
    alert: String,
    results: Option<views::TestView>,
    /// The history page: entries numbered below this.
    before: Option<u64>,
}

async fn policies_page(s: &AppState, admin: &ConsoleAdmin, status: StatusCode, ed: Editor) -> PageResult {
    let current = s.mandate.get_policies(admin.caller).await.map_err(fail)?;
    let (entries, next) = s.mandate.policy_versions(admin.caller, ed.before, Some(20)).await.map_err(fail)?;
    let number = current.number;
    let versions = entries
        .iter()
        .map(|v| views::VersionRow {
            number: v.number,
            version: v.version.clone(),
            author: v.author.clone().unwrap_or_else(|| "—".into()),
            created: when(v.created_at),
            bytes: v.bytes,
            current: Some(v.number) == number,
            diff: format!("/console/policies/versions/{}/diff", v.number),
            restore: format!("/console/policies/versions/{}/restore", v.number),
        })
        .collect();
    let view = views::PoliciesPage {
        title: "Policies",
        who: admin.who(),
        console: console_nav("/console/policies"),
        csrf: admin.signed.session.csrf.clone(),
        notice: ed.notice,
        alert: ed.alert,
        text: ed.text.unwrap_or_else(|| current.text.clone()),
        expected: ed.expected.unwrap_or_else(|| current.version.clone()),
        version: current.version,
        number: number.map(|n| n.to_string()).unwrap_or_default(),
        cases: ed.cases,
        replay: ed.replay,
        since: ed.since,
        results: ed.results,
        versions,
        older: next.map(|n| format!("/console/policies?before={n}")),
    };
    Ok(html(status, &view))
}

pub async fn policies(State(s): State<AppState>, admin: ConsoleAdmin, RawQuery(raw): RawQuery) -> PageResult {
    let q = crate::delegation::query(raw.as_deref(), &["before"]).map_err(problem_page)?;
    let before = crate::delegation::parsed::<u64>("before", q.get("before")).map_err(problem_page)?;
    policies_page(&s, &admin, StatusCode::OK, Editor { before, ..Editor::default() }).await
}

/// **Test** (the dry run, and a replay when asked) or **Save** (only over
/// the version the editor was opened on: a conflict keeps the text).
pub async fn policies_post(State(s): State<AppState>, admin: ConsoleAdmin, form: OAuthForm) -> PageResult {
    if let Some(refused) = csrf_refusal(&admin.signed, &form) {
        return Err(refused);
    }
    // Browsers send a textarea's lines ending in CRLF (HTML's form
    // encoding); the set is stored as typed, with LF.
    let lines = |name: &str| form.raw(name).unwrap_or_default().replace("\r\n", "\n");
    let text = lines("policies");
    let mut ed = Editor {
        text: Some(text.clone()),
        expected: form.raw("expected_version").map(str::to_owned),
        cases: lines("cases"),
        replay: form.get("replay").is_some(),
        since: form.raw("since").unwrap_or_default().to_owned(),
        ..Editor::default()
    };
    let outcome = match form.get("op") {
        Some("test") => match test_request(&ed, text) {
            Ok(req) => s.mandate.test_policies(admin.caller, &req).await.map(|a| {
                ed.results = Some(test_view(&a));
                "Tested; nothing was saved.".to_owned()
            }),
            Err(e) => Err(e),
        },
        Some("save") => {
            let expected = ed.expected.clone().filter(|v| !v.is_empty());
            s.mandate.replace_policies(admin.caller, &text, expected.as_deref(), None).await.map(|p| {
                // The editor now edits the saved set.
                ed.expected = Some(p.version.clone());
                format!("Saved: version {}.", p.version)
            })
        }
        _ => Err(Error::BadInput("choose Test or Save".into())),
    };
    match outcome {
        Ok(notice) => {
            ed.notice = notice;
            policies_page(&s, &admin, StatusCode::OK, ed).await
        }
        // Refused: the page again, the editor's text kept, and why.
        Err(e @ (Error::BadInput(_) | Error::Conflict(_))) => {
            let p = Problem::from(e);
            ed.alert = match p.status {
                StatusCode::CONFLICT => format!("{} Your text is kept below; nothing was saved.", p.detail),
                _ => p.detail,
            };
            policies_page(&s, &admin, p.status, ed).await
        }
        Err(e) => Err(fail(e)),
    }
}

/// The dry run the editor asks for: its text, the cases (a JSON array) and
/// a replay since a time, when asked.
fn test_request(ed: &Editor, policies: String) -> Result<PolicyTestRequest, Error> {
    let cases: Vec<PolicyCase> = if ed.cases.trim().is_empty() {
        Vec::new()
    } else {
        crate::extract::check_json_shape(ed.cases.as_bytes())
            .map_err(|e| Error::BadInput(format!("the cases are not JSON: {e}")))?;
        serde_json::from_str(&ed.cases).map_err(|e| Error::BadInput(format!("the cases are not valid: {e}")))?
    };
    let since = match ed.since.trim() {
        "" => None,
        t => Some(
            OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|_| Error::BadInput("since must be an RFC 3339 time, such as 2026-11-23T10:00:00Z".into()))?,
        ),
    };
    let replay = (ed.replay || since.is_some()).then_some(ReplayRequest { since, limit: None });
    Ok(PolicyTestRequest { policies, cases, replay })
}

fn test_view(a: &PolicyTestAnswer) -> views::TestView {
    views::TestView {
        candidate_version: a.candidate_version.clone(),
        current_version: a.current_version.clone(),
        matched: a.matched,
        mismatched: a.mismatched,
        cases: a
            .results
            .iter()
            .enumerate()
            .map(|(n, r)| views::CaseRow {
                n,
                decision: r.decision.to_owned(),
                expected: r.expected.to_owned(),
                matches: yes_no(r.matches),
                current: r.current.decision.to_owned(),
                flipped: yes_no(r.flipped),
                reasons: r.reasons.join("; "),
            })
            .collect(),
        flips: a.diff.iter().map(|d| format!("case {}: {} → {}", d.case, d.from, d.to)).collect(),
        replay: a.replay.as_ref().map(|r| views::ReplayView {
            since: r.since.clone(),
            replayed: r.replayed,
            skipped: r.skipped,
            truncated: r.truncated,
            allow_to_deny: r.allow_to_deny,
            deny_to_allow: r.deny_to_allow,
            other_changes: r.other_changes,
            samples: r
                .samples
                .iter()
                .map(|f| views::FlipRow {
                    seq: f.seq,
                    time: f.time.clone(),
                    action: f.action.clone(),
                    resource: f.resource.clone(),
                    chain: f.chain.join(" → "),
                    current: f.current.decision.to_owned(),
                    candidate: f.candidate.decision.to_owned(),
                })
                .collect(),
        }),
    }
}

fn version_number(raw: &str) -> Result<u64, Error> {
    raw.parse().ok().filter(|n| *n > 0).ok_or_else(|| Error::NotFound("no such policy version".into()))
}

pub async fn diff(State(s): State<AppState>, admin: ConsoleAdmin, Path(raw): Path<String>) -> PageResult {
    let n = version_number(&raw).map_err(fail)?;
    let d = s.mandate.policy_diff(admin.caller, n, None).await.map_err(fail)?;
    let lines = d
        .diff
        .lines()
        .map(|l| views::DiffLine {
            class: match l.as_bytes().first() {
                Some(b'+') if !l.starts_with("+++") => "add",
                Some(b'-') if !l.starts_with("---") => "del",
                Some(b'@') => "hunk",
                _ => "same",
            },
            text: l.to_owned(),
        })
        .collect();
    let view = views::DiffPage {
        title: "Policy diff",
        who: admin.who(),
        console: console_nav("/console/policies"),
        from: d.from.map_or_else(|| "no policies".into(), |m| format!("version {m}")),
        to: d.to,
        inserted: d.inserted,
        deleted: d.deleted,
        lines,
    };
    Ok(html(StatusCode::OK, &view))
}

pub async fn restore(
    State(s): State<AppState>,
    admin: ConsoleAdmin,
    Path(raw): Path<String>,
    form: OAuthForm,
) -> PageResult {
    if let Some(refused) = csrf_refusal(&admin.signed, &form) {
        return Err(refused);
    }
    let n = version_number(&raw).map_err(fail)?;
    let expected = form.get("expected_version");
    let mut ed = Editor::default();
    let status = match s.mandate.restore_policy_version(admin.caller, n, expected).await {
        Ok(p) => {
            ed.notice = format!("Restored history entry {n}: now version {}.", p.version);
            StatusCode::OK
        }
        Err(e @ (Error::BadInput(_) | Error::Conflict(_))) => {
            let p = Problem::from(e);
            ed.alert = format!("Entry {n} was not restored: {}", p.detail);
            p.status
        }
        Err(e) => return Err(fail(e)),
    };
    policies_page(&s, &admin, status, ed).await
}

// ----- keys -----

async fn keys_page(s: &AppState, admin: &ConsoleAdmin, notice: String) -> PageResult {
    let keys = s.mandate.signing_key_list(admin.caller).await.map_err(fail)?;
    let rows = keys
        .iter()
        .map(|k| views::KeyRow {
            kid: k.kid.clone(),
            alg: k.alg.clone(),
            purpose: k.purpose.as_str(),
            state: if k.retired_at.is_some() { "retired" } else { "active" },
            created: when(k.created_at),
            retired: k.retired_at.map_or_else(|| "—".into(), when),
        })
        .collect();
    let view = views::KeysPage {
        title: "Signing keys",
        who: admin.who(),
        console: console_nav("/console/keys"),
        csrf: admin.signed.session.csrf.clone(),
        notice,
        rows,
    };
    Ok(html(StatusCode::OK, &view))
}

pub async fn keys(State(s): State<AppState>, admin: ConsoleAdmin) -> PageResult {
    keys_page(&s, &admin, String::new()).await
}

pub async fn rotate(State(s): State<AppState>, admin: ConsoleAdmin, form: OAuthForm) -> PageResult {
    if let Some(refused) = csrf_refusal(&admin.signed, &form) {
        return Err(refused);
    }
    let kid = s.mandate.rotate_keys(admin.caller, None).await.map_err(fail)?;
    keys_page(&s, &admin, format!("Rotated: the new signing key is {kid}.")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_list_offers_the_apis_filters() {
        for l in &LISTS {
            let shown: Vec<&str> = l.fields.iter().map(|(n, _)| *n).chain(["cursor"]).collect();
            let mut known = l.known.to_vec();
            known.sort_unstable();
            let mut shown_sorted = shown.clone();
            shown_sorted.sort_unstable();
            assert_eq!(shown_sorted, known, "{}", l.name);
        }
    }

    #[test]
    fn the_cases_and_since_are_read_or_refused() {
        let ed = |cases: &str, since: &str| Editor { cases: cases.into(), since: since.into(), ..Editor::default() };
        let ok = test_request(&ed("", "2026-11-23T10:00:00Z"), "p".into());
        assert!(ok.is_ok_and(|r| r.cases.is_empty() && r.replay.is_some_and(|r| r.since.is_some())));
        for (cases, since) in [("{", ""), ("[{\"nope\": 1}]", ""), ("", "yesterday")] {
            assert!(matches!(test_request(&ed(cases, since), "p".into()), Err(Error::BadInput(_))), "{cases} {since}");
        }
        assert!(test_request(&ed("[]", ""), "p".into()).is_ok_and(|r| r.replay.is_none()));
    }
}
