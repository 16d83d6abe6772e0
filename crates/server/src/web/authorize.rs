//! `GET/POST /oauth/authorize`: the consent page of the authorization code
//! flow. The request is validated before anything else; a person who is not
//! signed in signs in first and comes back; the consent form carries the
//! request and the session's CSRF token, and is validated again on post.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_core::authorize::{AuthorizeError, AuthorizeRequest};

use super::Signed;
use super::pages::error_page;
use super::views::{self, Who, html};
use crate::AppState;
use crate::extract::OAuthForm;

/// How recent a sign-in must be to answer `prompt=login`, seconds.
const FRESH_SIGN_IN: i64 = 60;

fn refused(e: AuthorizeError) -> Response {
    match e {
        // RFC 6749 §4.1.2.1: never redirect to an unverified URI.
        AuthorizeError::NoRedirect(why) => html(
            StatusCode::BAD_REQUEST,
            &views::InvalidLinkPage { title: "This sign-in link is not valid", who: None, why },
        ),
        AuthorizeError::Redirect { url } => see_other(&url),
    }
}

/// A 303 (RFC 9700 §4.12: never 307 after a form post).
fn see_other(url: &str) -> Response {
    match HeaderValue::from_str(url) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => error_page(&mandate_core::Error::BadInput("the redirect URI is not a valid header value".into())),
    }
}

fn params(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

pub async fn authorize_page(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
    signed: Result<Signed, Response>,
) -> Response {
    let query = params(raw.as_deref());
    let req = match s.mandate.authorize_request(&query).await {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    let mut req = req;
    // prompt=none: no page may be shown, and the consent page always is.
    if req.prompt.none {
        let error = if signed.is_ok() { "consent_required" } else { "login_required" };
        return see_other(&s.mandate.authorization_error(&req, error, "prompt=none, and Mandate always asks"));
    }
    let signed = match signed {
        Ok(signed) => signed,
        // To the sign-in page, and back here afterwards.
        Err(to_login) => return to_login,
    };
    // prompt=login (OpenID Connect Core §3.1.2.1): a sign-in from the last
    // minute counts as the fresh one asked for; Mandate cannot make a person
    // who signed in earlier sign in again, so it says so.
    if req.prompt.login && s.mandate.now() - signed.session.signed_in_at > time::Duration::seconds(FRESH_SIGN_IN) {
        let why = "prompt=login: the person signed in earlier, and Mandate does not ask again";
        return see_other(&s.mandate.authorization_error(&req, "login_required", why));
    }
    if let Err(e) = s.mandate.authorize_policy(&signed.session.user, &mut req).await {
        return refused(e);
    }
    consent(&s, &signed, &req)
}

fn consent(s: &AppState, signed: &Signed, req: &AuthorizeRequest) -> Response {
    let owner = req.owner.as_ref().map_or_else(|| req.agent.owner.to_string(), |o| format!("{} ({})", o.name, o.email));
    let hours = s.mandate.config().grant_ttl as f64 / 3600.0;
    let view = views::ConsentPage {
        title: "Allow access?",
        who: Who::of(&signed.session, ""),
        agent: req.agent.name.clone(),
        agent_id: req.agent.id.to_string(),
        owner,
        description: req.agent.description.clone().unwrap_or_else(|| "—".into()),
        purpose: req.purpose.clone().unwrap_or_else(|| "—".into()),
        resource_name: req.resource.name.clone(),
        resource: req.resource.identifier.clone(),
        scopes: req.scope_actions().into_iter().map(|(scope, actions)| (scope, actions.join(", "))).collect(),
        offline: req.offline,
        redirect_host: req.redirect_host().unwrap_or_else(|| req.redirect_uri.clone()),
        loopback_only: req.loopback_only(),
        unverified: req.agent.origin.is_self_registered(),
        metadata_url: req.agent.metadata_url.clone(),
        hours: format!("{hours:.0}"),
        redirect: req.redirect_uri.clone(),
        csrf: signed.session.csrf.clone(),
        params: consent_params(req),
        details: views::DetailView::all(&req.authorization_details),
        actors: req.allowed_actors.as_ref().map(|m| m.to_strings()).unwrap_or_default(),
    };
    let mut resp = html(StatusCode::OK, &view);
    // The form's answer redirects to the client: let the form go there.
    let csp = match req.redirect_origin() {
        Some(origin) => super::PAGE_CSP.replace("form-action 'self'", &format!("form-action 'self' {origin}")),
        None => super::PAGE_CSP.to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&csp) {
        resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

/// The request the consent form carries to the decision: as sent, but with
/// the scopes the page showed named explicitly, so that what is granted is
/// what the person saw even if the client named none.
fn consent_params(req: &AuthorizeRequest) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = req.params.iter().filter(|(k, _)| k != "scope").cloned().collect();
    let mut scope = req.scopes.to_claim();
    if req.offline {
        scope.push(' ');
        scope.push_str(mandate_core::authorize::OFFLINE_ACCESS);
    }
    params.push(("scope".to_owned(), scope));
    params
}

pub async fn authorize_decision(State(s): State<AppState>, signed: Signed, form: OAuthForm) -> Response {
    if !mandate_jose::ct_eq(form.get("csrf").unwrap_or_default().as_bytes(), signed.session.csrf.as_bytes()) {
        return error_page(&mandate_core::Error::Forbidden(
            "the form is stale or forged; start again from the application".into(),
        ));
    }
    let decision = form.get("decision").unwrap_or_default().to_owned();
    let query: Vec<(String, String)> =
        form.pairs().into_iter().filter(|(k, _)| k != "csrf" && k != "decision").collect();
    let req = match s.mandate.authorize_request(&query).await {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    let user = &signed.session.user;
    match decision.as_str() {
        "allow" => match s.mandate.authorization_allowed(user, &req).await {
            Ok(url) => see_other(&url),
            Err(e) => refused(e),
        },
        _ => see_other(
            &s.mandate.authorization_refused(user, &req, "access_denied", "the person denied the request").await,
        ),
    }
}
