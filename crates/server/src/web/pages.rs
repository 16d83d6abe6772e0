//! The pages. Each list page renders its live region with one function,
//! used by the page itself and by the form posts that change it: a post
//! from the script gets the region back, a plain post the whole page.

use std::fmt::Write;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use mandate_core::session::{Session, Source};
use mandate_core::{AuditQuery, Caller, Error};
use mandate_model::records::{ApprovalStatus, ApprovalSubject, Lifecycle};
use mandate_model::{AgentId, ApprovalId, GrantId};

use super::html::{button_form, esc, layout, notice, url_encode, when};
use super::{Signed, cookie, cookie_name, known_cookie_name, login_cookie_name, page, set_cookie};
use crate::AppState;
use crate::extract::OAuthForm;

type PageResult = Result<Response, Response>;

/// An error as a page, never as JSON: people read these. The status and
/// wording come from the one mapping in `error.rs`.
pub(crate) fn error_page(e: &Error) -> Response {
    let p = crate::error::Problem::from(e.clone());
    let text = match p.status {
        StatusCode::UNAUTHORIZED => "Please sign in.".to_owned(),
        // For a 503 this is the fixed sentence and the request id: the
        // internal detail went to the log.
        _ => p.detail,
    };
    page(p.status, layout(p.title, None, "", &format!(r#"<p role="alert">{}</p>"#, esc(&text))))
}

fn fail(e: Error) -> Response {
    error_page(&e)
}

fn is_live(headers: &HeaderMap) -> bool {
    headers.get("x-requested-with").and_then(|v| v.to_str().ok()) == Some("fetch")
}

/// The reply to a form post: the live region for the script, the whole
/// page otherwise.
fn reply(headers: &HeaderMap, s: &Session, title: &str, current: &str, live: String) -> Response {
    if is_live(headers) {
        return page(StatusCode::OK, live);
    }
    page(StatusCode::OK, layout(title, Some((&s.user, &s.csrf)), current, &wrap_live(&live)))
}

fn wrap_live(live: &str) -> String {
    format!(r#"<div id="live">{live}</div>"#)
}

/// Refuses a post whose CSRF token is not the session's.
fn csrf_refusal(signed: &Signed, form: &OAuthForm) -> Option<Response> {
    let sent = form.get("csrf").unwrap_or_default();
    if mandate_jose::ct_eq(sent.as_bytes(), signed.session.csrf.as_bytes()) {
        None
    } else {
        Some(error_page(&Error::Forbidden("the form is stale or forged (CSRF token mismatch); reload the page".into())))
    }
}

fn query(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

/// A local path to return to after signing in; anything else is
/// `/approvals`. Browsers drop tabs and newlines from URLs and read `\` as
/// `/`, so `/\t/evil.example` would become `//evil.example`: such paths are
/// refused whole, and what is left must resolve (by the `url` crate, as a
/// browser would) to this origin.
fn local_next(next: Option<&str>) -> String {
    const HOME: &str = "https://mandate.invalid/";
    let local = |n: &str| {
        n.starts_with('/')
            && n.len() < 2048
            && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
            && url::Url::parse(HOME)
                .and_then(|home| home.join(n).map(|to| to.origin() == home.origin()))
                .unwrap_or(false)
    };
    match next {
        Some(n) if local(n) => n.to_owned(),
        _ => "/approvals".into(),
    }
}

// ----- sign-in -----

pub async fn login_page(State(s): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let q = query(raw.as_deref());
    let next = local_next(q.iter().find(|(k, _)| k == "next").map(|(_, v)| v.as_str()));
    let secure = s.mandate.config().issuer.starts_with("https://");
    if let Some(secret) = cookie(&headers, cookie_name(secure))
        && let Ok(Some(_)) = s.mandate.session(secret).await
    {
        return Redirect::to(&next).into_response();
    }
    login_form(&s, StatusCode::OK, &next, "", "")
}

fn login_form(s: &AppState, status: StatusCode, next: &str, email: &str, error: &str) -> Response {
    let secure = s.mandate.config().issuer.starts_with("https://");
    let token = match mandate_core::secrets::generate("", s.mandate.rng()) {
        Ok(t) => t,
        Err(e) => return fail(e.into()),
    };
    let alert =
        if error.is_empty() { String::new() } else { format!(r#"<p role="alert" class="error">{}</p>"#, esc(error)) };
    let main = format!(
        r#"{alert}<form method="post" action="/login" class="login">
<input type="hidden" name="csrf" value="{token}">
<input type="hidden" name="next" value="{next}">
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required value="{email}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>"#,
        token = esc(&token),
        next = esc(next),
        email = esc(email),
    );
    let mut resp = page(status, layout("Sign in", None, "", &main));
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(login_cookie_name(secure), &token, 600, secure));
    resp
}

pub async fn login(
    State(s): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    form: OAuthForm,
) -> Response {
    let secure = s.mandate.config().issuer.starts_with("https://");
    let next = local_next(form.get("next"));
    let email = form.get("email").unwrap_or_default();
    // Double submit: the form's token must be the one its cookie carries.
    let sent = form.get("csrf").unwrap_or_default();
    let expected = cookie(&headers, login_cookie_name(secure)).unwrap_or_default();
    if expected.is_empty() || !mandate_jose::ct_eq(sent.as_bytes(), expected.as_bytes()) {
        return login_form(&s, StatusCode::FORBIDDEN, &next, email, "The form expired. Please sign in again.");
    }
    let password = form.get("password").unwrap_or_default();
    // A browser this person signed in with before is paced on its own, and
    // no one else's failures slow it down (docs/web.md).
    let source =
        Source { address: super::client_addr(&extensions), known: cookie(&headers, known_cookie_name(secure)) };
    match s.mandate.sign_in(email, password, source).await {
        Ok(signed_in) => {
            let ttl = (signed_in.session.expires_at - s.mandate.now()).whole_seconds();
            let mut resp = Redirect::to(&next).into_response();
            let h = resp.headers_mut();
            h.append(header::SET_COOKIE, set_cookie(cookie_name(secure), &signed_in.secret, ttl, secure));
            h.append(header::SET_COOKIE, set_cookie(login_cookie_name(secure), "", 0, secure));
            h.append(
                header::SET_COOKIE,
                set_cookie(
                    known_cookie_name(secure),
                    &signed_in.known_browser,
                    mandate_core::session::KNOWN_BROWSER_TTL,
                    secure,
                ),
            );
            resp
        }
        Err(Error::Unauthenticated) => {
            login_form(&s, StatusCode::UNAUTHORIZED, &next, email, "Wrong email or password.")
        }
        Err(Error::RateLimited { why, retry_after }) => {
            let mut resp = login_form(&s, StatusCode::TOO_MANY_REQUESTS, &next, email, &why);
            resp.headers_mut().insert(header::RETRY_AFTER, retry_after.into());
            resp
        }
        Err(e) => error_page(&e),
    }
}

pub async fn logout(State(s): State<AppState>, signed: Signed, form: OAuthForm) -> PageResult {
    if let Some(refused) = csrf_refusal(&signed, &form) {
        return Err(refused);
    }
    s.mandate.sign_out(&signed.secret).await.map_err(fail)?;
    let secure = s.mandate.config().issuer.starts_with("https://");
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(cookie_name(secure), "", 0, secure));
    Ok(resp)
}

// ----- approvals -----

/// Pending requests shown per page of the inbox.
const INBOX_PAGE: u32 = 50;

async fn approvals_live(
    s: &AppState,
    session: &Session,
    done: &str,
    before: Option<ApprovalId>,
) -> Result<String, Response> {
    let me = Caller::User(session.user.id);
    let list = s.mandate.list_approvals(me, Some(ApprovalStatus::Pending), before, INBOX_PAGE).await.map_err(fail)?;
    // The cursor for older requests, when this page is full.
    let older = (list.len() == INBOX_PAGE as usize).then(|| list.last().map(|a| a.id)).flatten();
    let now = s.mandate.now();
    let list: Vec<_> = list.into_iter().filter(|a| a.expires_at > now).collect();
    let mut ids: Vec<AgentId> = list.iter().map(|a| a.agent).collect();
    for a in &list {
        if let ApprovalSubject::Action { chain, .. } = &a.subject {
            ids.extend(chain.iter().copied());
        }
    }
    let names = s.mandate.agent_names(&ids).await.map_err(fail)?;
    let name = |id: &AgentId| names.get(id).map_or_else(|| id.to_string(), |n| format!("{n} ({id})"));
    let mut out = notice(done, "ok");
    let paging = {
        let mut links = Vec::new();
        if before.is_some() {
            links.push(r#"<a href="/approvals">Newest requests</a>"#.to_owned());
        }
        if let Some(id) = older {
            links.push(format!(r#"<a href="/approvals?before={}">Older requests</a>"#, url_encode(&id.to_string())));
        }
        if links.is_empty() {
            String::new()
        } else {
            format!(r#"<nav aria-label="Pages">{}</nav>"#, links.join(" · "))
        }
    };
    if list.is_empty() {
        out.push_str(r#"<p>Nothing waits for you.</p>"#);
        out.push_str(&paging);
        return Ok(out);
    }
    out.push_str(r#"<ul class="cards" aria-label="Pending approvals">"#);
    for a in &list {
        let (what, chain) = match &a.subject {
            ApprovalSubject::Grant { scopes, .. } => (
                format!("a grant of <strong>{}</strong> on <code>{}</code>", esc(&scopes.to_claim()), esc(&a.resource)),
                vec![a.agent],
            ),
            ApprovalSubject::Action { action, target, chain, properties, .. } => {
                let mut what = format!(
                    "<strong>{}</strong> on <code>{}</code> at <code>{}</code>",
                    esc(action),
                    esc(target),
                    esc(&a.resource)
                );
                if !properties.is_empty() {
                    let items: Vec<String> = properties
                        .iter()
                        .map(|(k, v)| format!("<code>{}</code> = <code>{}</code>", esc(k), esc(v)))
                        .collect();
                    let _ = write!(what, " with {}", items.join(", "));
                }
                (what, chain.clone())
            }
        };
        let shown = format!(r#"<input type="hidden" name="shown" value="{}">"#, shown_digest(a));
        let chain_html = chain.iter().map(|id| format!("<li>{}</li>", esc(&name(id)))).collect::<Vec<_>>().join("");
        let message = a
            .binding_message
            .as_deref()
            .map_or_else(String::new, |m| format!(r#"<p class="binding">“{}”</p>"#, esc(m)));
        let _ = write!(
            out,
            r#"<li class="card" id="{id}"><h2>{agent} asks for {what}</h2>{message}
<p>On behalf of you, through the chain:</p><ol class="chain"><li>{me}</li>{chain_html}</ol>
<p class="meta">Asked {asked} · expires {expires} · <code>{id}</code></p>
<div class="actions">{approve}{deny}</div></li>"#,
            id = esc(&a.id.to_string()),
            agent = esc(&name(&a.agent)),
            me = esc(&session.user.name),
            asked = when(a.created_at),
            expires = when(a.expires_at),
            approve = button_form(&format!("/approvals/{}/approve", a.id), &session.csrf, "Approve", &shown, "primary"),
            deny = button_form(&format!("/approvals/{}/deny", a.id), &session.csrf, "Deny", &shown, "danger"),
        );
    }
    out.push_str("</ul>");
    out.push_str(&paging);
    Ok(out)
}

/// What the person saw of an approval: its agent, resource, subject and
/// message. A decision applies only if it still names exactly that.
fn shown_digest(a: &mandate_model::records::Approval) -> String {
    let seen = serde_json::json!([a.id, a.agent, a.resource, a.subject, a.binding_message]);
    mandate_jose::sha256_b64(seen.to_string().as_bytes())
}

pub async fn approvals(
    State(s): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let before = match query(raw.as_deref()).into_iter().find(|(k, _)| k == "before") {
        None => None,
        Some((_, v)) => match v.parse::<ApprovalId>() {
            Ok(id) => Some(id),
            Err(_) => return Err(fail(Error::BadInput("before is not an approval id".into()))),
        },
    };
    let live = approvals_live(&s, &signed.session, "", before).await?;
    if is_live(&headers) {
        return Ok(page(StatusCode::OK, live));
    }
    let main = format!(r#"<p>Requests from agents that wait for your decision.</p>{}"#, wrap_live(&live));
    Ok(page(
        StatusCode::OK,
        layout("Approvals", Some((&signed.session.user, &signed.session.csrf)), "/approvals", &main),
    ))
}

pub async fn decide(
    State(s): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    Path((id, decision)): Path<(String, String)>,
    form: OAuthForm,
) -> PageResult {
    if let Some(refused) = csrf_refusal(&signed, &form) {
        return Err(refused);
    }
    let id: ApprovalId = id.parse().map_err(|_| fail(Error::NotFound("no such approval".into())))?;
    let approve = match decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return Err(fail(Error::NotFound("no such decision".into()))),
    };
    let me = Caller::User(signed.session.user.id);
    // A keyed read: the request decided is the one shown, however many
    // others wait.
    let stale = || {
        fail(Error::Conflict(
            "this request is no longer the one shown (decided, expired or changed); nothing was decided".into(),
        ))
    };
    let current = match s.mandate.approval_for(me, id).await {
        Ok(a) => a,
        Err(Error::NotFound(_)) => return Err(stale()),
        Err(e) => return Err(fail(e)),
    };
    let seen = form.get("shown").unwrap_or_default();
    let shown_now = current.status == ApprovalStatus::Pending
        && current.expires_at > s.mandate.now()
        && mandate_jose::ct_eq(shown_digest(&current).as_bytes(), seen.as_bytes());
    if !shown_now {
        return Err(stale());
    }
    let a = s.mandate.decide_approval(me, id, approve).await.map_err(fail)?;
    let done = format!("{} {}.", if approve { "Approved" } else { "Denied" }, a.id);
    let live = approvals_live(&s, &signed.session, &done, None).await?;
    Ok(reply(&headers, &signed.session, "Approvals", "/approvals", live))
}

// ----- grants -----

async fn grants_live(s: &AppState, session: &Session, done: &str) -> Result<String, Response> {
    let me = session.user.id;
    let grants = s.mandate.list_grants(Caller::User(me), None, None, 200).await.map_err(fail)?;
    let names = s.mandate.agent_names(&grants.iter().map(|g| g.agent).collect::<Vec<_>>()).await.map_err(fail)?;
    let now = s.mandate.now();
    let mut out = notice(done, "ok");
    if grants.is_empty() {
        out.push_str("<p>You have given no grants.</p>");
        return Ok(out);
    }
    out.push_str(
        r#"<table><caption>Grants you gave, or that agents you own hold</caption><thead><tr>
<th scope="col">Agent</th><th scope="col">Purpose</th><th scope="col">Scopes</th><th scope="col">Resource</th>
<th scope="col">Expires</th><th scope="col">Last used</th><th scope="col">Status</th><th scope="col"><span class="sr">Action</span></th>
</tr></thead><tbody>"#,
    );
    for g in &grants {
        let live = g.is_live(now);
        let status = if live {
            "active"
        } else if g.revoked_at.is_some() {
            "revoked"
        } else {
            "expired"
        };
        let action = if live {
            button_form(&format!("/grants/{}/revoke", g.id), &session.csrf, "Revoke", "", "danger")
        } else {
            String::new()
        };
        let _ = write!(
            out,
            r#"<tr id="{id}"><td>{agent}</td><td>{purpose}</td><td>{scopes}</td><td><code>{res}</code></td><td>{exp}</td><td>{last}</td><td>{status}</td><td>{action} <a href="/audit/trace/{id}">Trace</a></td></tr>"#,
            id = esc(&g.id.to_string()),
            agent = esc(names.get(&g.agent).map_or("?", String::as_str)),
            purpose = esc(g.purpose.as_deref().unwrap_or("—")),
            scopes = esc(&g.scopes.to_claim()),
            res = esc(&g.resource),
            exp = when(g.expires_at),
            last = g.last_used_at.map_or_else(|| "never".into(), when),
        );
    }
    out.push_str("</tbody></table>");
    Ok(out)
}

pub async fn grants(State(s): State<AppState>, signed: Signed) -> PageResult {
    let live = grants_live(&s, &signed.session, "").await?;
    let main = format!(
        "<p>Revoking a grant ends every token issued under it, and every token exchanged from those, at once.</p>{}",
        wrap_live(&live)
    );
    Ok(page(StatusCode::OK, layout("Grants", Some((&signed.session.user, &signed.session.csrf)), "/grants", &main)))
}

pub async fn revoke_grant(
    State(s): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: OAuthForm,
) -> PageResult {
    if let Some(refused) = csrf_refusal(&signed, &form) {
        return Err(refused);
    }
    let id: GrantId = id.parse().map_err(|_| fail(Error::NotFound("no such grant".into())))?;
    let (g, reached) = s.mandate.revoke_grant(Caller::User(signed.session.user.id), id).await.map_err(fail)?;
    let done = format!("Revoked {}: {reached} token(s) revoked with it, exchanged ones included.", g.id);
    let live = grants_live(&s, &signed.session, &done).await?;
    Ok(reply(&headers, &signed.session, "Grants", "/grants", live))
}

// ----- agents -----

async fn agents_live(s: &AppState, session: &Session, done: &str) -> Result<String, Response> {
    let me = session.user.id;
    let agents = s.mandate.agents_owned_by(Caller::User(me), me).await.map_err(fail)?;
    // An agent's last use: the latest use of any grant it holds, read in
    // one query (never from a capped list of grants).
    let last_used = s.mandate.last_use_of_owned_agents(Caller::User(me), me).await.map_err(fail)?;
    let mut out = notice(done, "ok");
    if agents.is_empty() {
        out.push_str("<p>You own no agents.</p>");
        return Ok(out);
    }
    out.push_str(
        r#"<table><caption>Agents you are accountable for</caption><thead><tr>
<th scope="col">Name</th><th scope="col">Kind</th><th scope="col">Description</th><th scope="col">Scopes it may hold</th><th scope="col">Status</th><th scope="col">Last used</th>
<th scope="col">Expires</th><th scope="col"><span class="sr">Actions</span></th></tr></thead><tbody>"#,
    );
    for a in &agents {
        let status = a.status.as_str();
        let mut actions = String::new();
        let ops: &[(&str, &str)] = match status {
            "active" => &[("suspend", "Suspend"), ("retire", "Retire")],
            "suspended" => &[("resume", "Resume"), ("retire", "Retire")],
            _ => &[],
        };
        for (op, label) in ops {
            let class = if *op == "resume" { "primary" } else { "danger" };
            actions.push_str(&button_form(&format!("/agents/{}/{op}", a.id), &session.csrf, label, "", class));
        }
        let kind = match &a.parent {
            Some(p) => format!("ephemeral, spawned by <code>{}</code>", esc(&p.to_string())),
            None => format!("{:?}", a.kind).to_lowercase(),
        };
        let _ = write!(
            out,
            r#"<tr id="{id}"><th scope="row">{name} <code>{id}</code></th><td>{kind}</td><td>{desc}</td><td>{scopes}</td><td>{status}</td><td>{last}</td><td>{exp}</td><td><div class="actions">{actions}</div></td></tr>"#,
            id = esc(&a.id.to_string()),
            name = esc(&a.name),
            desc = esc(a.description.as_deref().unwrap_or("—")),
            scopes = esc(&a.scopes.as_ref().map_or_else(|| "any, as policy allows".to_owned(), |s| s.to_claim())),
            last = last_used.get(&a.id).map_or_else(|| "never".into(), |t| when(*t)),
            exp = a.expires_at.map_or_else(|| "—".into(), when),
        );
    }
    out.push_str("</tbody></table>");
    Ok(out)
}

pub async fn agents(State(s): State<AppState>, signed: Signed) -> PageResult {
    let live = agents_live(&s, &signed.session, "").await?;
    let main = format!(
        "<p>Suspending or retiring an agent revokes every token whose chain holds it, its grants, and the ephemeral agents it spawned.</p>{}",
        wrap_live(&live)
    );
    Ok(page(StatusCode::OK, layout("Agents", Some((&signed.session.user, &signed.session.csrf)), "/agents", &main)))
}

pub async fn agent_op(
    State(s): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    Path((id, op)): Path<(String, String)>,
    form: OAuthForm,
) -> PageResult {
    if let Some(refused) = csrf_refusal(&signed, &form) {
        return Err(refused);
    }
    let id: AgentId = id.parse().map_err(|_| fail(Error::NotFound("no such agent".into())))?;
    let op = match op.as_str() {
        "suspend" => Lifecycle::Suspend,
        "resume" => Lifecycle::Resume,
        "retire" => Lifecycle::Retire,
        _ => return Err(fail(Error::NotFound("no such operation".into()))),
    };
    let (a, cascade) = s.mandate.agent_lifecycle(Caller::User(signed.session.user.id), id, op).await.map_err(fail)?;
    let done = match op {
        Lifecycle::Resume => format!("Resumed {}.", a.name),
        _ => format!(
            "{} {}: {} token(s) and {} grant(s) revoked; {} spawned agent(s) retired{}.",
            if op == Lifecycle::Suspend { "Suspended" } else { "Retired" },
            a.name,
            cascade.tokens,
            cascade.grants,
            cascade.retired.len(),
            if cascade.retired.is_empty() {
                String::new()
            } else {
                format!(" ({})", cascade.retired.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
            },
        ),
    };
    let live = agents_live(&s, &signed.session, &done).await?;
    Ok(reply(&headers, &signed.session, "Agents", "/agents", live))
}

// ----- audit -----

pub async fn audit(State(s): State<AppState>, signed: Signed, RawQuery(raw): RawQuery) -> PageResult {
    let q = query(raw.as_deref());
    let get = |k: &str| q.iter().find(|(n, v)| n == k && !v.is_empty()).map(|(_, v)| v.clone());
    let mut filter = AuditQuery { limit: 200, ..AuditQuery::default() };
    filter.actor = get("agent");
    filter.grant = get("grant");
    filter.jti = get("token");
    filter.kind = get("type");
    filter.subject = get("user");
    let me = signed.session.user.id;
    let everything = s.mandate.is_auditor(me).await.map_err(fail)?;
    if !everything {
        filter.subject = None;
    }
    let events = s.mandate.audit_query(Caller::User(me), filter).await.map_err(fail)?;
    let field = |name: &str, label: &str| {
        format!(
            r#"<label for="f-{name}">{label}</label><input id="f-{name}" name="{name}" value="{}">"#,
            esc(&get(name).unwrap_or_default())
        )
    };
    let mut main = format!(
        r#"<p>{}, oldest first. Each is hash-chained to the one before it.</p>
<form method="get" action="/audit" class="filters">{}{}{}{}{}<button type="submit">Filter</button></form>"#,
        if everything { "Every event (you are an auditor)" } else { "The events that concern you" },
        if everything { field("user", "User") } else { String::new() },
        field("agent", "Agent"),
        field("grant", "Grant"),
        field("token", "Token"),
        field("type", "Event type"),
    );
    if events.is_empty() {
        main.push_str("<p>No events match.</p>");
    } else {
        main.push_str(
            r#"<table><caption>Audit events</caption><thead><tr><th scope="col">#</th><th scope="col">Time</th><th scope="col">Event</th><th scope="col">Decision</th><th scope="col">By</th><th scope="col">On</th><th scope="col">Why</th><th scope="col">Trace</th></tr></thead><tbody>"#,
        );
        for e in &events {
            let trace =
                e.grant_id.as_deref().or(e.jti.as_deref()).map_or_else(String::new, |id| {
                    format!(r#"<a href="/audit/trace/{}">{}</a>"#, url_encode(id), esc(id))
                });
            let _ = write!(
                main,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{trace}</td></tr>",
                e.seq,
                esc(&e.time),
                esc(&e.kind),
                esc(e.decision.as_deref().unwrap_or("")),
                esc(e.actor.as_deref().unwrap_or("")),
                esc(e.resource.as_deref().unwrap_or("")),
                esc(e.reason.as_deref().unwrap_or("")),
            );
        }
        main.push_str("</tbody></table>");
    }
    Ok(page(StatusCode::OK, layout("Audit trail", Some((&signed.session.user, &signed.session.csrf)), "/audit", &main)))
}

pub async fn trace(State(s): State<AppState>, signed: Signed, Path(id): Path<String>) -> PageResult {
    let me = &signed.session.user;
    let t = s.mandate.audit_trace(Caller::User(me.id), &id).await.map_err(fail)?;
    let mut ids = Vec::new();
    collect_agents(&t.roots, &mut ids);
    let names = s.mandate.agent_names(&ids).await.map_err(fail)?;
    let mut main = format!(
        r#"<p>The delegation tree of <code>{}</code>, rebuilt from the audit trail: from you, through each agent that held a token, to the resource, with the decisions taken on the way.</p>"#,
        esc(&id)
    );
    if !t.grant_events.is_empty() {
        main.push_str(r#"<h2>The grant</h2><ul class="events">"#);
        for e in &t.grant_events {
            main.push_str(&event_item(e));
        }
        main.push_str("</ul>");
    }
    // The person the tree acts for: the caller, or (for a branch of
    // someone else's tree the caller's agent holds) that person's id only.
    let subject = t.roots.first().and_then(|r| r.issued.subject.clone()).unwrap_or_else(|| me.id.to_string());
    let who = if subject == me.id.to_string() { me.name.clone() } else { "another person".to_owned() };
    let _ = write!(
        main,
        r#"<h2>Tokens</h2><ul class="tree" aria-label="Delegation tree"><li><span class="node user">{} <code>{}</code></span>"#,
        esc(&who),
        esc(&subject)
    );
    main.push_str("<ul>");
    for n in &t.roots {
        node(&mut main, n, &names);
    }
    if t.hidden > 0 {
        let _ =
            write!(main, r#"<li class="hidden">{} more token(s) under other roots, not yours to see</li>"#, t.hidden);
    }
    main.push_str("</ul></li></ul>");
    if t.truncated {
        main.push_str(r#"<p role="note">The tree was cut at a limit; some tokens or events may be missing.</p>"#);
    }
    Ok(page(StatusCode::OK, layout("Delegation tree", Some((me, &signed.session.csrf)), "/audit", &main)))
}

type Names = std::collections::HashMap<AgentId, String>;

fn collect_agents(nodes: &[mandate_audit::trace::TraceNode], out: &mut Vec<AgentId>) {
    for n in nodes {
        out.extend(n.issued.chain.iter().filter_map(|a| a.parse::<AgentId>().ok()));
        collect_agents(&n.children, out);
    }
}

fn node(out: &mut String, n: &mandate_audit::trace::TraceNode, names: &Names) {
    let e = &n.issued;
    let id = e.chain.last().or(e.actor.as_ref()).map_or("?", String::as_str);
    let actor = match id.parse::<AgentId>().ok().and_then(|a| names.get(&a)) {
        Some(name) => format!("{name} ({id})"),
        None => id.to_owned(),
    };
    let _ = write!(
        out,
        r#"<li><span class="node agent">{actor}</span> → <code>{res}</code> <span class="scopes">[{scope}]</span> <span class="meta">token <code>{jti}</code>, {time}</span>"#,
        actor = esc(&actor),
        res = esc(e.resource.as_deref().unwrap_or("?")),
        scope = esc(e.scope.as_deref().unwrap_or("")),
        jti = esc(e.jti.as_deref().unwrap_or("?")),
        time = esc(&e.time),
    );
    if !n.events.is_empty() {
        out.push_str(r#"<ul class="events">"#);
        for ev in &n.events {
            out.push_str(&event_item(ev));
        }
        out.push_str("</ul>");
    }
    if !n.children.is_empty() || n.hidden > 0 {
        out.push_str("<ul>");
        for c in &n.children {
            node(out, c, names);
        }
        if n.hidden > 0 {
            let _ = write!(out, r#"<li class="hidden">{} more token(s) in branches not yours to see</li>"#, n.hidden);
        }
        out.push_str("</ul>");
    }
    out.push_str("</li>");
}

fn event_item(e: &mandate_audit::Event) -> String {
    let decision = e.decision.as_deref().unwrap_or("");
    format!(
        r#"<li class="event {cls}"><span class="decision">{decision}</span> {kind} {action} <span class="meta">#{seq} {time}</span> {reason}</li>"#,
        cls = if decision == "deny" { "deny" } else { "allow" },
        decision = esc(decision),
        kind = esc(&e.kind),
        action = esc(e.action.as_deref().unwrap_or("")),
        seq = e.seq,
        time = esc(&e.time),
        reason = esc(e.reason.as_deref().unwrap_or("")),
    )
}

#[cfg(test)]
mod tests {
    use super::local_next;

    #[test]
    fn only_plain_local_paths_are_returned_to() {
        for ok in ["/grants?x=1", "/audit/trace/jti_1", "/%2F%2Fevil.example"] {
            assert_eq!(local_next(Some(ok)), ok, "{ok}");
        }
        for bad in
            ["//evil.example", "/\t/evil.example", "/\\evil.example", "https://evil.example", "/a b", "/\n/x", ""]
        {
            assert_eq!(local_next(Some(bad)), "/approvals", "{bad:?}");
        }
        assert_eq!(local_next(None), "/approvals");
    }
}
