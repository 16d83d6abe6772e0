//! The pages. Each list page renders its live region with one function,
//! used by the page itself and by the form posts that change it: a post
//! from the script gets the region back, a plain post the whole page.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use mandate_core::session::{Session, Source};
use mandate_core::{AuditQuery, Caller, Error};
use mandate_model::records::{ApprovalStatus, ApprovalSubject, Lifecycle};
use mandate_model::{AgentId, ApprovalId, GrantId};

use super::html::when;
use super::views::{self, Who, html};
use super::{Signed, cookie, cookie_name, expired_cookie, known_cookie_name, login_cookie_name, session_cookie};
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
    html(p.status, &views::ErrorPage { title: p.title, who: None, text })
}

fn fail(e: Error) -> Response {
    error_page(&e)
}

fn is_live(headers: &HeaderMap) -> bool {
    headers.get("x-requested-with").and_then(|v| v.to_str().ok()) == Some("fetch")
}

/// Refuses a post whose CSRF token is not the session's.
pub(crate) fn csrf_refusal(signed: &Signed, form: &OAuthForm) -> Option<Response> {
    let sent = form.get("csrf").unwrap_or_default();
    if mandate_jose::ct_eq(sent.as_bytes(), signed.session.csrf.as_bytes()) {
        None
    } else {
        Some(error_page(&Error::Forbidden("the form is stale or forged (CSRF token mismatch); reload the page".into())))
    }
}

pub(crate) fn query(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

/// A local path to return to after signing in; anything else is
/// `/approvals`. Browsers drop tabs and newlines from URLs and read `\` as
/// `/`, so `/\t/evil.example` would become `//evil.example`: such paths are
/// refused whole, and what is left must resolve (by the `url` crate, as a
/// browser would) to this origin.
pub(crate) fn local_next(next: Option<&str>) -> String {
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
    let secure = super::https(&s);
    if let Some(secret) = cookie(&headers, cookie_name(secure))
        && let Ok(Some(_)) = s.mandate.session(secret).await
    {
        return Redirect::to(&next).into_response();
    }
    login_form(&s, StatusCode::OK, &next, "", "")
}

fn login_form(s: &AppState, status: StatusCode, next: &str, email: &str, alert: &str) -> Response {
    let secure = super::https(s);
    let token = match mandate_core::secrets::generate("", s.mandate.rng()) {
        Ok(t) => t,
        Err(e) => return fail(e.into()),
    };
    let providers = super::upstream::buttons(s, next);
    let password = s.mandate.config().password_login;
    let view = views::LoginPage { title: "Sign in", who: None, alert, token: &token, next, email, providers, password };
    let jar = CookieJar::new().add(session_cookie(login_cookie_name(secure), token.clone(), 600, secure));
    (jar, html(status, &view)).into_response()
}

pub async fn login(
    State(s): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    form: OAuthForm,
) -> Response {
    let secure = super::https(&s);
    let next = local_next(form.get("next"));
    if !s.mandate.config().password_login {
        return login_form(&s, StatusCode::FORBIDDEN, &next, "", "Sign-in with a password is switched off here.");
    }
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
            let jar = CookieJar::new()
                .add(session_cookie(cookie_name(secure), signed_in.secret, ttl, secure))
                .add(expired_cookie(login_cookie_name(secure), secure))
                .add(session_cookie(
                    known_cookie_name(secure),
                    signed_in.known_browser,
                    mandate_core::session::KNOWN_BROWSER_TTL,
                    secure,
                ));
            (jar, Redirect::to(&next)).into_response()
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
    let secure = super::https(&s);
    let jar = CookieJar::new().add(expired_cookie(cookie_name(secure), secure));
    Ok((jar, Redirect::to("/login")).into_response())
}

// ----- approvals -----

/// Pending requests shown per page of the inbox.
const INBOX_PAGE: u32 = 50;

async fn approvals_live(
    s: &AppState,
    session: &Session,
    done: String,
    before: Option<ApprovalId>,
) -> Result<views::ApprovalsList, Response> {
    let me = Caller::User(session.user.id);
    let list = s.mandate.list_approvals(me, Some(ApprovalStatus::Pending), before, INBOX_PAGE).await.map_err(fail)?;
    // The cursor for older requests, when this page is full.
    let older = (list.len() == INBOX_PAGE as usize).then(|| list.last().map(|a| a.id.to_string())).flatten();
    let now = s.mandate.now();
    let list: Vec<_> = list.into_iter().filter(|a| a.expires_at > now).collect();
    let mut ids: Vec<AgentId> = list.iter().map(|a| a.agent).collect();
    for a in &list {
        if let ApprovalSubject::Action { chain, .. } = &a.subject {
            ids.extend(chain.iter().copied());
        }
    }
    let names = s.mandate.agent_names(&ids).await.map_err(fail)?;
    let for_ids: Vec<_> = list.iter().filter(|a| a.group.is_some()).map(|a| a.user).collect();
    let people = s.mandate.user_names(&for_ids).await.map_err(fail)?;
    let name = |id: &AgentId| names.get(id).map_or_else(|| id.to_string(), |n| format!("{n} ({id})"));
    let cards = list
        .iter()
        .map(|a| {
            let mut card = views::Card {
                id: a.id.to_string(),
                agent: name(&a.agent),
                scopes: None,
                renewal: None,
                action: String::new(),
                target: String::new(),
                properties: Vec::new(),
                context: Vec::new(),
                resource: a.resource.clone(),
                message: a.binding_message.clone(),
                chain: vec![name(&a.agent)],
                asked: when(a.created_at),
                expires: when(a.expires_at),
                approve: format!("/approvals/{}/approve", a.id),
                deny: format!("/approvals/{}/deny", a.id),
                shown: shown_digest(a),
                details: Vec::new(),
                group: a.group.as_ref().map(|g| views::GroupCard {
                    name: g.clone(),
                    for_user: people.get(&a.user).map_or_else(|| a.user.to_string(), |n| format!("{n} ({})", a.user)),
                    count: format!("{} of {} approvals", a.approved_by.len(), a.required),
                    mine: a.approved_by.contains(&session.user.id),
                }),
            };
            match &a.subject {
                ApprovalSubject::Grant { scopes, authorization_details, .. } => {
                    card.scopes = Some(scopes.to_claim());
                    card.details = views::DetailView::all(authorization_details);
                }
                ApprovalSubject::Reapproval { scopes, .. } => {
                    card.scopes = Some(scopes.to_claim());
                    card.renewal = Some(a.grant.map_or_else(String::new, |g| g.to_string()));
                }
                ApprovalSubject::Action {
                    action, target, chain, properties, authorization_detail, context, ..
                } => {
                    card.details = authorization_detail.iter().map(views::DetailView::of).collect();
                    card.context = views::DetailView::rows(context);
                    card.action.clone_from(action);
                    card.target.clone_from(target);
                    card.properties = properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    card.chain = chain.iter().map(&name).collect();
                }
            }
            card
        })
        .collect();
    Ok(views::ApprovalsList {
        done,
        me: session.user.name.clone(),
        csrf: session.csrf.clone(),
        cards,
        newest: before.is_some(),
        older,
    })
}

/// What the person saw of an approval: its agent, resource, subject and
/// message. A decision applies only if it still names exactly that.
fn shown_digest(a: &mandate_model::records::Approval) -> String {
    let seen = serde_json::json!([a.id, a.agent, a.resource, a.subject, a.binding_message]);
    mandate_jose::sha256_b64(seen.to_string().as_bytes())
}

/// The inbox, or its live region alone for the script.
fn approvals_reply(headers: &HeaderMap, session: &Session, live: views::ApprovalsList) -> Response {
    if is_live(headers) {
        return html(StatusCode::OK, &views::ApprovalsLive { live });
    }
    html(StatusCode::OK, &views::ApprovalsPage { title: "Approvals", who: Who::of(session, "/approvals"), live })
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
    let live = approvals_live(&s, &signed.session, String::new(), before).await?;
    Ok(approvals_reply(&headers, &signed.session, live))
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
    let live = approvals_live(&s, &signed.session, done, None).await?;
    Ok(approvals_reply(&headers, &signed.session, live))
}

// ----- grants -----

async fn grants_live(s: &AppState, session: &Session, done: String) -> Result<views::GrantsList, Response> {
    let me = session.user.id;
    let grants = s.mandate.own_grants(me, 200).await.map_err(fail)?;
    let names = s.mandate.agent_names(&grants.iter().map(|g| g.agent).collect::<Vec<_>>()).await.map_err(fail)?;
    let now = s.mandate.now();
    let rows = grants
        .iter()
        .map(|g| {
            let live = g.is_live(now);
            views::GrantRow {
                id: g.id.to_string(),
                agent: names.get(&g.agent).map_or_else(|| "?".to_owned(), Clone::clone),
                purpose: g.purpose.clone().unwrap_or_else(|| "—".into()),
                scopes: g.scopes.to_claim(),
                resource: g.resource.clone(),
                expires: when(g.expires_at),
                last_used: g.last_used_at.map_or_else(|| "never".into(), when),
                status: match (live, g.revoked_at.is_some()) {
                    (true, _) => "active",
                    (false, true) => "revoked",
                    (false, false) => "expired",
                },
                live,
                revoke: format!("/grants/{}/revoke", g.id),
                renew: s.mandate.reapproval_due(g, now).then(|| format!("/grants/{}/reapprove", g.id)),
            }
        })
        .collect();
    Ok(views::GrantsList { done, csrf: session.csrf.clone(), rows })
}

fn grants_reply(headers: &HeaderMap, session: &Session, live: views::GrantsList) -> Response {
    if is_live(headers) {
        return html(StatusCode::OK, &views::GrantsLive { live });
    }
    html(StatusCode::OK, &views::GrantsPage { title: "Grants", who: Who::of(session, "/grants"), live })
}

pub async fn grants(State(s): State<AppState>, signed: Signed) -> PageResult {
    let live = grants_live(&s, &signed.session, String::new()).await?;
    Ok(html(StatusCode::OK, &views::GrantsPage { title: "Grants", who: Who::of(&signed.session, "/grants"), live }))
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
    let live = grants_live(&s, &signed.session, done).await?;
    Ok(grants_reply(&headers, &signed.session, live))
}

/// The Renew button (ADR 0036): policy decides again; the page says
/// whether the grant was renewed or waits for someone's approval.
pub async fn reapprove_grant(
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
    let done = match s.mandate.reapprove_grant(Caller::User(signed.session.user.id), id, None).await.map_err(fail)? {
        mandate_core::delegation::Reapproved::Renewed(g) => {
            format!("Renewed {}: it now expires {}.", g.id, when(g.expires_at))
        }
        mandate_core::delegation::Reapproved::Waiting { grant, approval } => format!(
            "Renewal of {} is waiting for approval ({}); the grant is unchanged until it is approved.",
            grant.id, approval.id
        ),
    };
    let live = grants_live(&s, &signed.session, done).await?;
    Ok(grants_reply(&headers, &signed.session, live))
}

// ----- review -----

/// A finding's evidence as lines: each member as `name: value`.
fn evidence_lines(v: &serde_json::Value) -> Vec<String> {
    match v.as_object() {
        Some(o) => o
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}: {s}"),
                serde_json::Value::Array(a) => format!(
                    "{k}: {}",
                    a.iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                other => format!("{k}: {other}"),
            })
            .collect(),
        None => vec![v.to_string()],
    }
}

async fn review_live(s: &AppState, session: &Session, done: String) -> Result<views::ReviewList, Response> {
    use mandate_core::store::{CampaignQuery, ReviewItemQuery};
    let me = session.user.id;
    let caller = Caller::User(me);
    let q = ReviewItemQuery { assignee: Some(me), undecided: true, open: true, limit: 200, ..Default::default() };
    let items = s.mandate.list_review_items(caller, q).await.map_err(fail)?.items;
    let campaigns = s.mandate.campaigns_of(&items).await.map_err(fail)?;
    let rows = items
        .iter()
        .map(|i| {
            let f = &i.finding;
            let mut suggestion = f.suggestion.action.clone();
            if let Some(scopes) = &f.suggestion.scopes {
                suggestion = format!("{suggestion} to {}", scopes.join(" "));
            }
            if let Some(actors) = &f.suggestion.may_act {
                suggestion = format!("{suggestion} (may act: {})", actors.join(" "));
            }
            views::ReviewRow {
                id: i.id.to_string(),
                kind: f.kind.replace('_', " "),
                subject: f.subject.clone(),
                evidence: evidence_lines(&f.evidence),
                suggestion,
                narrow_to: f.suggestion.scopes.as_ref().map(|s| s.join(" ")).unwrap_or_default(),
                deadline: campaigns.get(&i.campaign).map_or_else(|| "?".to_owned(), |c| when(c.deadline)),
                decide: format!("/review/items/{}/decide", i.id),
            }
        })
        .collect();
    let campaigns = if s.mandate.is_reviewer(me).await.map_err(fail)? {
        let q = CampaignQuery {
            status: Some(mandate_model::review::CampaignStatus::Open),
            limit: 100,
            ..CampaignQuery::default()
        };
        let open = s.mandate.list_campaigns(caller, q).await.map_err(fail)?.items;
        Some(
            open.iter()
                .map(|v| {
                    let c = &v.campaign;
                    let mut scope = Vec::new();
                    if let Some(o) = c.scope.owner {
                        scope.push(format!("owner {o}"));
                    }
                    if let Some(r) = &c.scope.resource {
                        scope.push(format!("resource {r}"));
                    }
                    views::CampaignRow {
                        id: c.id.to_string(),
                        scope: if scope.is_empty() { "everything".into() } else { scope.join(", ") },
                        deadline: when(c.deadline),
                        default: c.default.as_str(),
                        progress: format!("{} of {}", v.progress.decided, v.progress.items),
                    }
                })
                .collect(),
        )
    } else {
        None
    };
    Ok(views::ReviewList { done, csrf: session.csrf.clone(), rows, campaigns })
}

fn review_reply(headers: &HeaderMap, session: &Session, live: views::ReviewList) -> Response {
    if is_live(headers) {
        return html(StatusCode::OK, &views::ReviewLive { live });
    }
    html(StatusCode::OK, &views::ReviewPage { title: "Review", who: Who::of(session, "/review"), live })
}

pub async fn review(State(s): State<AppState>, signed: Signed, headers: HeaderMap) -> PageResult {
    let live = review_live(&s, &signed.session, String::new()).await?;
    Ok(review_reply(&headers, &signed.session, live))
}

pub async fn decide_review_item(
    State(s): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: OAuthForm,
) -> PageResult {
    use mandate_model::review::Decision;
    if let Some(refused) = csrf_refusal(&signed, &form) {
        return Err(refused);
    }
    let id: mandate_model::ReviewItemId =
        id.parse().map_err(|_| fail(Error::NotFound("no such review item".into())))?;
    let decision: Decision = form
        .get("decision")
        .unwrap_or_default()
        .parse()
        .map_err(|_| fail(Error::BadInput("decision must be keep, narrow or revoke".into())))?;
    let scopes = match (decision, form.get("scopes").map(str::trim)) {
        (Decision::Narrow, Some(text)) if !text.is_empty() => {
            Some(text.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        }
        _ => None,
    };
    let done =
        s.mandate.decide_review_item(Caller::User(signed.session.user.id), id, decision, scopes).await.map_err(fail)?;
    let outcome = done.item.outcome.as_ref().map_or("", |o| o.applied.as_str());
    let mut text = format!("{} {}: {outcome}.", decision.as_str(), done.item.finding.subject);
    if done.tokens > 0 || done.grants > 0 {
        text = format!("{text} {} token(s) and {} grant(s) revoked.", done.tokens, done.grants);
    }
    if let Some(retired) = done.item.outcome.as_ref().map(|o| o.retired.len()).filter(|n| *n > 0) {
        text = format!("{text} {retired} ephemeral descendant(s) retired.");
    }
    let live = review_live(&s, &signed.session, capitalized(&text)).await?;
    Ok(review_reply(&headers, &signed.session, live))
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// A deadline from the page: RFC 3339, or a `datetime-local` value
/// (minutes, or seconds) read as UTC.
fn page_deadline(v: &str) -> Result<time::OffsetDateTime, Error> {
    let rfc = &time::format_description::well_known::Rfc3339;
    [v.to_owned(), format!("{v}:00Z"), format!("{v}Z")]
        .iter()
        .find_map(|t| time::OffsetDateTime::parse(t, rfc).ok())
        .ok_or_else(|| Error::BadInput("the deadline must be a date and time".into()))
}

pub async fn start_campaign(
    State(s): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    form: OAuthForm,
) -> PageResult {
    use mandate_model::review::{CampaignDefault, CampaignScope};
    if let Some(refused) = csrf_refusal(&signed, &form) {
        return Err(refused);
    }
    let field = |name: &str| form.get(name).map(str::trim).filter(|v| !v.is_empty());
    let owner = field("owner")
        .map(|o| o.parse::<mandate_model::UserId>())
        .transpose()
        .map_err(|_| fail(Error::BadInput("the owner must be a user id (usr_…)".into())))?;
    let scope = CampaignScope { owner, resource: field("resource").map(str::to_owned) };
    let deadline = page_deadline(field("deadline").unwrap_or_default()).map_err(fail)?;
    let default: CampaignDefault = field("default")
        .unwrap_or_default()
        .parse()
        .map_err(|_| fail(Error::BadInput("the default must be keep or revoke".into())))?;
    let (campaign, items) = s
        .mandate
        .create_campaign(Caller::User(signed.session.user.id), scope, deadline, default)
        .await
        .map_err(fail)?;
    let done = format!("Started campaign {} with {items} item(s).", campaign.id);
    let live = review_live(&s, &signed.session, done).await?;
    Ok(review_reply(&headers, &signed.session, live))
}

// ----- agents -----

async fn agents_live(s: &AppState, session: &Session, done: String) -> Result<views::AgentsList, Response> {
    let me = session.user.id;
    let agents = s.mandate.agents_owned_by(Caller::User(me), me).await.map_err(fail)?;
    // An agent's last use: the latest use of any grant it holds, read in
    // one query (never from a capped list of grants).
    let last_used = s.mandate.last_use_of_owned_agents(Caller::User(me), me).await.map_err(fail)?;
    // The credential policy in force for each (DESIGN §13).
    let mut in_force = std::collections::HashMap::new();
    for a in &agents {
        in_force.insert(a.id, describe_limits(&s.mandate.limits_of(a).await.map_err(fail)?));
    }
    let rows = agents
        .iter()
        .map(|a| {
            let status = a.status.as_str();
            let ops: &[(&str, &'static str)] = match status {
                "active" => &[("suspend", "Suspend"), ("retire", "Retire")],
                "suspended" => &[("resume", "Resume"), ("retire", "Retire")],
                _ => &[],
            };
            views::AgentRow {
                id: a.id.to_string(),
                name: a.name.clone(),
                parent: a.parent.map(|p| p.to_string()),
                kind: format!("{:?}", a.kind).to_lowercase(),
                description: a.description.clone().unwrap_or_else(|| "—".into()),
                scopes: a.scopes.as_ref().map_or_else(|| "any, as policy allows".to_owned(), |s| s.to_claim()),
                status,
                last_used: last_used.get(&a.id).map_or_else(|| "never".into(), |t| when(*t)),
                expires: a.expires_at.map_or_else(|| "—".into(), when),
                limits: in_force.remove(&a.id).unwrap_or_default(),
                ops: ops
                    .iter()
                    .map(|(op, label)| views::AgentOp {
                        action: format!("/agents/{}/{op}", a.id),
                        label,
                        class: if *op == "resume" { "primary" } else { "danger" },
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(views::AgentsList { done, csrf: session.csrf.clone(), rows })
}

/// The limits in force for an agent, one line each.
pub(super) fn describe_limits(l: &mandate_model::limits::Limits) -> Vec<String> {
    fn list<T>(set: Option<&std::collections::BTreeSet<T>>, name: impl Fn(&T) -> &str) -> String {
        set.map_or_else(|| "any".to_owned(), |s| s.iter().map(name).collect::<Vec<_>>().join(", "))
    }
    vec![
        format!("tokens live at most {} s", l.max_token_ttl),
        format!("grants: {}", list(l.allowed_grant_types.as_ref(), |g| g.as_str())),
        format!("resources: {}", list(l.allowed_resources.as_ref(), String::as_str)),
        format!("chains of at most {} agents", l.max_delegation_depth),
        format!("DPoP {}", if l.require_dpop { "required" } else { "optional" }),
        format!("at most {} children, each living at most {} s", l.max_ephemeral_children, l.max_ephemeral_ttl),
        format!("authenticates by {}", list(l.allowed_client_auth.as_ref(), |m| m.as_str())),
    ]
}

fn agents_reply(headers: &HeaderMap, session: &Session, live: views::AgentsList) -> Response {
    if is_live(headers) {
        return html(StatusCode::OK, &views::AgentsLive { live });
    }
    html(StatusCode::OK, &views::AgentsPage { title: "Agents", who: Who::of(session, "/agents"), live })
}

pub async fn agents(State(s): State<AppState>, signed: Signed) -> PageResult {
    let live = agents_live(&s, &signed.session, String::new()).await?;
    Ok(html(StatusCode::OK, &views::AgentsPage { title: "Agents", who: Who::of(&signed.session, "/agents"), live }))
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
    let live = agents_live(&s, &signed.session, done).await?;
    Ok(agents_reply(&headers, &signed.session, live))
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
    let fields = [("user", "User"), ("agent", "Agent"), ("grant", "Grant"), ("token", "Token"), ("type", "Event type")]
        .into_iter()
        .filter(|(name, _)| everything || *name != "user")
        .map(|(name, label)| views::Field { name, label, value: get(name).unwrap_or_default() })
        .collect();
    let events = events
        .into_iter()
        .map(|e| views::EventRow {
            seq: e.seq,
            trace: e.grant_id.clone().or_else(|| e.jti.clone()),
            time: e.time,
            kind: e.kind,
            decision: e.decision.unwrap_or_default(),
            actor: e.actor.unwrap_or_default(),
            resource: e.resource.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
        })
        .collect();
    let view =
        views::AuditPage { title: "Audit trail", who: Who::of(&signed.session, "/audit"), everything, fields, events };
    Ok(html(StatusCode::OK, &view))
}

pub async fn trace(State(s): State<AppState>, signed: Signed, Path(id): Path<String>) -> PageResult {
    let me = &signed.session.user;
    let t = s.mandate.audit_trace(Caller::User(me.id), &id).await.map_err(fail)?;
    let mut ids = Vec::new();
    collect_agents(&t.roots, &mut ids);
    let names = s.mandate.agent_names(&ids).await.map_err(fail)?;
    // The person the tree acts for: the caller, or (for a branch of
    // someone else's tree the caller's agent holds) that person's id only.
    let subject = t.roots.first().and_then(|r| r.issued.subject.clone()).unwrap_or_else(|| me.id.to_string());
    let who_for = if subject == me.id.to_string() { me.name.clone() } else { "another person".to_owned() };
    let mut steps = Vec::new();
    for n in &t.roots {
        flatten(n, &names, &mut steps);
    }
    let view = views::TracePage {
        title: "Delegation tree",
        who: Who::of(&signed.session, "/audit"),
        grant_events: t.grant_events.iter().map(views::TraceEvent::from).collect(),
        id,
        who_for,
        subject,
        steps,
        hidden: t.hidden,
        truncated: t.truncated,
    };
    Ok(html(StatusCode::OK, &view))
}

type Names = std::collections::HashMap<AgentId, String>;

fn collect_agents(nodes: &[mandate_audit::trace::TraceNode], out: &mut Vec<AgentId>) {
    for n in nodes {
        out.extend(n.issued.chain.iter().filter_map(|a| a.parse::<AgentId>().ok()));
        collect_agents(&n.children, out);
    }
}

/// Writes the subtree of `n` depth first: its token, then (in a nested
/// list) its children and the count of hidden ones; the step written last
/// closes that list.
fn flatten(n: &mandate_audit::trace::TraceNode, names: &Names, steps: &mut Vec<views::TraceStep>) {
    let e = &n.issued;
    let id = e.chain.last().or(e.actor.as_ref()).map_or("?", String::as_str);
    let actor = match id.parse::<AgentId>().ok().and_then(|a| names.get(&a)) {
        Some(name) => format!("{name} ({id})"),
        None => id.to_owned(),
    };
    let opens = !n.children.is_empty() || n.hidden > 0;
    steps.push(views::TraceStep {
        node: Some(views::TraceNode {
            actor,
            resource: e.resource.clone().unwrap_or_else(|| "?".into()),
            scope: e.scope.clone().unwrap_or_default(),
            jti: e.jti.clone().unwrap_or_else(|| "?".into()),
            time: e.time.clone(),
            events: n.events.iter().map(views::TraceEvent::from).collect(),
            opens,
        }),
        hidden: 0,
        closes: 0,
    });
    if !opens {
        return;
    }
    for c in &n.children {
        flatten(c, names, steps);
    }
    if n.hidden > 0 {
        steps.push(views::TraceStep { node: None, hidden: n.hidden, closes: 0 });
    }
    if let Some(last) = steps.last_mut() {
        last.closes += 1;
    }
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
