//! The authorization code grant (OAuth 2.1 §4.1) for an agent acting for a
//! person who is present: `GET /oauth/authorize` validates the request, the
//! person signs in and sees the consent page, policy decides what may be
//! granted (the same rules as CIBA), and an allowed request becomes a grant
//! and a single-use code, redeemed at the token endpoint with PKCE (S256
//! only) and `private_key_jwt`.

use base64::Engine;
use mandate_audit::Event;
use mandate_model::ScopeSet;
use mandate_model::records::{Agent, AgentStatus, AuthCodeRecord, Resource, User};
use mandate_model::ssf::{Cause, InitiatingEntity};
use sha2::{Digest, Sha256};
use time::Duration;

use crate::audit::{ALLOW, AuditRecord, DENY, kind};
use crate::delegation::parse_scopes;
use crate::oauth::IssuedToken;
use crate::oauth::Refusal;
use crate::service::{AuthenticatedClient, Mandate};
use crate::store::{Change, Mutation};
use crate::{Error, secrets};

const CODE_PREFIX: &str = "mnd_ac_";
/// The scope that asks for a refresh token (OpenID Connect Core §11); it is
/// built in: no resource declares it and no policy allows it.
pub const OFFLINE_ACCESS: &str = "offline_access";

/// The `prompt` parameter (OpenID Connect Core §3.1.2.1), as Mandate
/// honours it: `none` (no page: an error goes back at once), `consent`
/// (the consent page is always shown anyway), `login` (sign in again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prompt {
    pub none: bool,
    pub login: bool,
}

impl Prompt {
    fn parse(v: Option<&str>) -> Result<Self, &'static str> {
        let mut p = Prompt::default();
        for value in v.unwrap_or_default().split(' ').filter(|x| !x.is_empty()) {
            match value {
                "none" => p.none = true,
                "login" => p.login = true,
                "consent" | "select_account" => {}
                _ => return Err("prompt must be none, login, consent or select_account"),
            }
        }
        if p.none && v.is_some_and(|v| v.split(' ').filter(|x| !x.is_empty()).count() > 1) {
            return Err("prompt=none cannot be combined with other values");
        }
        Ok(p)
    }
}
/// How long a code may wait to be redeemed.
pub const CODE_TTL: i64 = 60;
const MAX_STATE: usize = 512;
const MAX_PURPOSE: usize = 200;

/// Why an authorization request fails. RFC 6749 §4.1.2.1: with an unknown
/// client or a redirect URI that is not registered, the person sees an
/// error page and is never redirected; other errors go back to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    NoRedirect(String),
    Redirect { url: String },
}

/// An authorization request that passed validation.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest {
    pub agent: Agent,
    pub owner: Option<User>,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub resource: std::sync::Arc<Resource>,
    pub scopes: ScopeSet,
    pub code_challenge: String,
    pub purpose: Option<String>,
    pub prompt: Prompt,
    /// The DPoP key the code is bound to (RFC 9449 §10).
    pub dpop_jkt: Option<String>,
    /// Whether the client asked for `offline_access`: only then does the
    /// code bring a refresh token.
    pub offline: bool,
    /// Whether `scope` was left out, so the scopes are the resource's within
    /// the agent's ceiling, and policy narrows them rather than refusing.
    pub defaulted: bool,
    /// The query to carry through the sign-in and the consent form.
    pub params: Vec<(String, String)>,
    /// Who may act next for the person with the grant's tokens
    /// (`allowed_actors`, ADR 0024), checked to name existing agents.
    pub allowed_actors: Option<mandate_model::actors::MayAct>,
    /// RFC 9396 details the person is asked to approve (shown on the
    /// consent page; the grant keeps them).
    pub authorization_details: mandate_model::details::AuthorizationDetails,
}

impl AuthorizeRequest {
    /// Each scope with the actions it covers at the resource, for the
    /// consent page.
    pub fn scope_actions(&self) -> Vec<(String, Vec<String>)> {
        self.scopes.iter().map(|s| (s.as_str().to_owned(), self.resource.actions_of(s).unwrap_or_default())).collect()
    }

    /// Whether every redirect URI the client registered is on the person's
    /// own machine: any local program could be that client, so the consent
    /// page warns.
    pub fn loopback_only(&self) -> bool {
        self.agent.redirect_uris.iter().all(|u| {
            url::Url::parse(u)
                .ok()
                .and_then(|u| u.host_str().map(|h| matches!(h, "127.0.0.1" | "[::1]" | "localhost")))
                .unwrap_or(false)
        })
    }

    /// The redirect URI's host, shown prominently on the consent page.
    pub fn redirect_host(&self) -> Option<String> {
        url::Url::parse(&self.redirect_uri).ok()?.host_str().map(str::to_owned)
    }

    /// The origin of the redirect URI (for the consent page's CSP), or
    /// `None` if it has none (never: registered URIs are absolute http(s)).
    pub fn redirect_origin(&self) -> Option<String> {
        let origin = url::Url::parse(&self.redirect_uri).ok()?.origin();
        origin.is_tuple().then(|| origin.ascii_serialization())
    }
}

/// A code presented at the token endpoint.
pub(crate) struct Redemption<'a> {
    pub code: &'a str,
    pub redirect_uri: Option<&'a str>,
    pub verifier: Option<&'a str>,
    pub resources: &'a [String],
}

/// RFC 8707 §2.2: a `resource` sent with a code or a refresh token may only
/// name the audience of the grant it comes from (MCP clients send it on
/// both); any other is `invalid_target`.
pub(crate) fn same_resource(resources: &[String], granted: &str) -> Result<(), Error> {
    match resources.iter().find(|r| r.as_str() != granted) {
        Some(other) => Err(Error::InvalidTarget(format!(
            "resource {} is not the grant's resource",
            crate::request::bounded_input(other)
        ))),
        None => Ok(()),
    }
}

/// `url` with `params` appended to its query.
pub fn with_query(url: &str, params: &[(&str, &str)]) -> String {
    let mut out = url.to_owned();
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    out.push(if url.contains('?') { '&' } else { '?' });
    out.push_str(&ser.finish());
    out
}

fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn is_pkce_value(v: &str, min: usize) -> bool {
    (min..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

impl Mandate {
    /// Validates `GET/POST /oauth/authorize` parameters.
    pub async fn authorize_request(&self, raw: &[(String, String)]) -> Result<AuthorizeRequest, AuthorizeError> {
        let no_redirect = |m: &str| AuthorizeError::NoRedirect(m.to_owned());
        let one = |k: &str| -> Result<Option<&str>, AuthorizeError> {
            let mut it = raw.iter().filter(|(n, _)| n == k);
            let first = it.next().map(|(_, v)| v.as_str());
            if it.next().is_some() {
                return Err(AuthorizeError::NoRedirect(format!("{k} is repeated")));
            }
            Ok(first)
        };
        let client_id = one("client_id")?.ok_or_else(|| no_redirect("client_id is required"))?;
        let agent = self
            .client_named(client_id)
            .await
            .map_err(|e| match e {
                Error::InvalidClient(why) => AuthorizeError::NoRedirect(why),
                _ => no_redirect("Mandate cannot answer now"),
            })?
            .filter(|a| a.status == AgentStatus::Active && a.expires_at.is_none_or(|e| e > self.clock.now()))
            .ok_or_else(|| no_redirect("unknown or inactive client_id"))?;
        // RFC 9700 §4.1: exact matching against the registered URIs, but
        // for a loopback redirect's port (RFC 8252 §7.3).
        let redirect_uri = one("redirect_uri")?.ok_or_else(|| no_redirect("redirect_uri is required"))?;
        if !agent.redirect_uris.iter().any(|r| mandate_model::name::redirect_matches(r, redirect_uri)) {
            return Err(no_redirect("redirect_uri is not registered for this client"));
        }
        let state = one("state")?.map(str::to_owned);
        let back = |error: &str, description: &str| AuthorizeError::Redirect {
            url: {
                let mut p = vec![("error", error), ("error_description", description)];
                if let Some(s) = state.as_deref() {
                    p.push(("state", s));
                }
                p.push(("iss", self.config.issuer.as_str()));
                with_query(redirect_uri, &p)
            },
        };
        if state.as_ref().is_some_and(|s| s.len() > MAX_STATE) {
            return Err(back("invalid_request", "state is too long"));
        }
        // Parameters Mandate does not know are ignored (RFC 6749 §3.1); the
        // ones it reads may not be repeated.
        let known = [
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "resource",
            "state",
            "code_challenge",
            "code_challenge_method",
            "purpose",
            "prompt",
            "dpop_jkt",
            "allowed_actors",
            "authorization_details",
        ];
        for k in known {
            one(k).map_err(|_| back("invalid_request", &format!("{k} is repeated")))?;
        }
        if one("response_type")? != Some("code") {
            return Err(back("unsupported_response_type", "response_type must be code"));
        }
        // PKCE, S256 only (SECURITY row 12).
        let challenge = one("code_challenge")?.unwrap_or_default();
        if one("code_challenge_method")? != Some("S256") || challenge.len() != 43 || !is_pkce_value(challenge, 43) {
            return Err(back(
                "invalid_request",
                "PKCE is required: code_challenge (43 characters) with code_challenge_method S256",
            ));
        }
        let prompt = Prompt::parse(one("prompt")?).map_err(|e| back("invalid_request", e))?;
        // RFC 9449 §10: the code is bound to this key's thumbprint.
        let dpop_jkt = match one("dpop_jkt")? {
            Some(j) if is_pkce_value(j, 43) && j.len() == 43 => Some(j.to_owned()),
            Some(_) => return Err(back("invalid_request", "dpop_jkt must be a base64url SHA-256 thumbprint")),
            None => None,
        };
        let identifier = one("resource")?.ok_or_else(|| back("invalid_target", "resource is required"))?;
        let resource =
            self.resource_by_identifier(identifier).await.map_err(|e| back("invalid_target", &e.to_string()))?;
        // `offline_access` asks for a refresh token; it is no resource's
        // scope. Without `scope`, the request is for the resource's scopes
        // within the agent's ceiling, narrowed by policy before consent
        // (RFC 6749 §3.3).
        let asked = one("scope")?.filter(|s| !s.is_empty());
        let offline = asked.is_some_and(|s| s.split(' ').any(|x| x == OFFLINE_ACCESS));
        let (scopes, defaulted) = match asked.map(|s| s.split(' ').filter(|x| *x != OFFLINE_ACCESS).collect::<Vec<_>>())
        {
            Some(named) if !named.is_empty() => {
                let scopes = parse_scopes(Some(&named.join(" "))).map_err(|e| back("invalid_scope", &e.to_string()))?;
                // Scopes the resource does not declare are left out (RFC 6749
                // §3.3): MCP clients that find no scope for the resource ask
                // for the server's whole `scopes_supported`. The consent page
                // and the token response say what is granted; a request with
                // none of the resource's scopes is refused.
                let offered: Vec<_> =
                    scopes.iter().filter(|s| resource.actions_of(s).is_some()).cloned().map(Ok).collect();
                let offered =
                    ScopeSet::from_iter_checked(offered).map_err(|e| back("invalid_scope", &e.to_string()))?;
                if offered.is_empty() {
                    let first = scopes.iter().next().map(ToString::to_string).unwrap_or_default();
                    return Err(back("invalid_scope", &format!("scope {first} is not offered by {identifier}")));
                }
                (offered, false)
            }
            _ => {
                let all = resource.scopes.keys().map(|s| mandate_model::Scope::parse(s));
                let all = ScopeSet::from_iter_checked(all).map_err(|e| back("invalid_scope", &e.to_string()))?;
                let scopes = match &agent.scopes {
                    Some(ceiling) => all.narrow_to(ceiling),
                    None => all,
                };
                if scopes.is_empty() {
                    return Err(back("invalid_scope", "the client may hold no scope of this resource"));
                }
                (scopes, true)
            }
        };
        // RFC 9396 §5: details of a type the resource declares, as its
        // schema allows, or `invalid_authorization_details`.
        let authorization_details =
            crate::details::accept(&resource, one("authorization_details")?).map_err(|e| match e {
                Error::InvalidAuthorizationDetails(why) => back("invalid_authorization_details", &why),
                other => back("invalid_request", &other.to_string()),
            })?;
        let purpose = match one("purpose")? {
            Some(p) => Some(
                mandate_model::name::validate_text("purpose", p, MAX_PURPOSE)
                    .map_err(|e| back("invalid_request", &e.to_string()))?,
            ),
            None => agent.description.clone(),
        };
        let allowed_actors = match one("allowed_actors")? {
            None => None,
            Some(list) => {
                let m = mandate_model::actors::MayAct::parse(list)
                    .map_err(|e| back("invalid_request", &format!("allowed_actors: {e}")))?;
                for id in m.agents() {
                    match self.store.agent(id).await {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            return Err(back(
                                "invalid_request",
                                &format!("allowed_actors names {id}, which is no agent"),
                            ));
                        }
                        Err(_) => return Err(back("temporarily_unavailable", "try again")),
                    }
                }
                Some(m)
            }
        };
        let owner = self.store.user(agent.owner).await.ok().flatten();
        Ok(AuthorizeRequest {
            allowed_actors,
            redirect_uri: redirect_uri.to_owned(),
            state,
            resource,
            scopes,
            code_challenge: challenge.to_owned(),
            purpose,
            prompt,
            dpop_jkt,
            offline,
            defaulted,
            params: raw.to_vec(),
            owner,
            agent,
            authorization_details,
        })
    }

    /// Whether policy lets `user` give this grant now (the CIBA rules); a
    /// refusal goes back to the client as `access_denied`, recorded. When
    /// the client named no scope, the request is first narrowed to the
    /// scopes policy lets this person give.
    pub async fn authorize_policy(&self, user: &User, req: &mut AuthorizeRequest) -> Result<(), AuthorizeError> {
        if req.defaulted {
            let mut kept = Vec::new();
            for scope in req.scopes.iter() {
                let one = ScopeSet::from_iter_checked([Ok(scope.clone())])
                    .map_err(|e| AuthorizeError::NoRedirect(e.to_string()))?;
                match self.authorize_scopes(Some(user), &[&req.agent], &req.resource, &one, false).await {
                    Ok(Ok(None | Some(mandate_policy::Approver::User))) => kept.push(Ok(scope.clone())),
                    Ok(Ok(Some(mandate_policy::Approver::Owner))) if req.agent.owner == user.id => {
                        kept.push(Ok(scope.clone()))
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "could not decide an authorization");
                        let url = self.back_to_client(
                            req,
                            &[("error", "temporarily_unavailable"), ("error_description", "try again")],
                        );
                        return Err(AuthorizeError::Redirect { url });
                    }
                }
            }
            let kept = ScopeSet::from_iter_checked(kept).map_err(|e| AuthorizeError::NoRedirect(e.to_string()))?;
            if kept.is_empty() {
                let url = self
                    .authorization_refused(
                        user,
                        req,
                        "access_denied",
                        "policy allows none of the resource's scopes to this client",
                    )
                    .await;
                return Err(AuthorizeError::Redirect { url });
            }
            req.scopes = kept;
            req.defaulted = false;
        }
        let decided = match self.authorize_scopes(Some(user), &[&req.agent], &req.resource, &req.scopes, false).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "could not decide an authorization");
                let url = self
                    .back_to_client(req, &[("error", "temporarily_unavailable"), ("error_description", "try again")]);
                return Err(AuthorizeError::Redirect { url });
            }
        };
        // Policy sees each RFC 9396 detail as `context.authorization_detail`.
        let decided = match decided {
            Ok(a) => {
                let details = &req.authorization_details;
                match self
                    .authorize_details(Some(user), &[&req.agent], (&req.resource, &req.scopes), details, false)
                    .await
                {
                    Ok(Ok(b)) => Ok(match (a, b) {
                        (Some(mandate_policy::Approver::User), _) | (_, Some(mandate_policy::Approver::User)) => {
                            Some(mandate_policy::Approver::User)
                        }
                        (a, b) => a.or(b),
                    }),
                    Ok(Err(why)) => Err(why),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not decide an authorization");
                        let url = self.back_to_client(
                            req,
                            &[("error", "temporarily_unavailable"), ("error_description", "try again")],
                        );
                        return Err(AuthorizeError::Redirect { url });
                    }
                }
            }
            Err(why) => Err(why),
        };
        match decided {
            // The person on the consent page is the user policy would ask.
            Ok(None | Some(mandate_policy::Approver::User)) => Ok(()),
            Ok(Some(mandate_policy::Approver::Owner)) if req.agent.owner == user.id => Ok(()),
            Ok(Some(mandate_policy::Approver::Owner)) => {
                let why = "policy asks the agent's owner to approve this grant; the agent must ask by CIBA";
                let url = self.authorization_refused(user, req, "access_denied", why).await;
                Err(AuthorizeError::Redirect { url })
            }
            Ok(Some(mandate_policy::Approver::Group { name, .. })) => {
                let why = format!("policy asks group {name} to approve this grant; the agent must ask by CIBA");
                let url = self.authorization_refused(user, req, "access_denied", &why).await;
                Err(AuthorizeError::Redirect { url })
            }
            Err(why) => {
                let url = self.authorization_refused(user, req, "access_denied", &why).await;
                Err(AuthorizeError::Redirect { url })
            }
        }
    }

    /// The person denied (or policy refused): recorded, and the URL to send
    /// them back to the client with `error`.
    pub async fn authorization_refused(&self, user: &User, req: &AuthorizeRequest, error: &str, why: &str) -> String {
        let mut event = self.authorize_event(kind::GRANT_DENIED, user, req);
        event.decision = Some(DENY.into());
        event.reason = Some(why.chars().take(256).collect());
        if let Err(e) = self.record(event).await {
            tracing::warn!(error = %e, "could not record a refused authorization");
        }
        self.back_to_client(req, &[("error", error), ("error_description", why)])
    }

    /// The URL that sends the person back to the client with `error`, when
    /// no page may be shown (`prompt=none`); nothing is recorded, since
    /// nothing was asked of anyone.
    pub fn authorization_error(&self, req: &AuthorizeRequest, error: &str, why: &str) -> String {
        self.back_to_client(req, &[("error", error), ("error_description", why)])
    }

    fn back_to_client(&self, req: &AuthorizeRequest, extra: &[(&str, &str)]) -> String {
        let mut p: Vec<(&str, &str)> = extra.to_vec();
        if let Some(s) = req.state.as_deref() {
            p.push(("state", s));
        }
        p.push(("iss", self.config.issuer.as_str()));
        with_query(&req.redirect_uri, &p)
    }

    fn authorize_event(&self, kind: &str, user: &User, req: &AuthorizeRequest) -> Event {
        let mut e = self.event(kind);
        e.actor = Some(user.id.to_string());
        e.subject = Some(user.id.to_string());
        e.client_id = Some(req.agent.id.to_string());
        e.chain = vec![req.agent.id.to_string()];
        e.resource = Some(req.resource.identifier.clone());
        e.scope = Some(req.scopes.to_claim());
        e
    }

    /// The person allowed: policy decides again, then a grant (approved by
    /// the person) and a code are stored. Returns the URL to send them to.
    pub async fn authorization_allowed(&self, user: &User, req: &AuthorizeRequest) -> Result<String, AuthorizeError> {
        let mut req = req.clone();
        self.authorize_policy(user, &mut req).await?;
        let req = &req;
        // A failed random source or store sends the person back to the
        // client with a standard error, nothing stored.
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "could not store an authorization");
            AuthorizeError::Redirect {
                url: self
                    .back_to_client(req, &[("error", "temporarily_unavailable"), ("error_description", "try again")]),
            }
        };
        let mut grant = self
            .new_grant(user, &req.agent, &req.resource, &req.scopes, req.purpose.clone(), &user.id.to_string())
            .map_err(|e| unavailable(&e))?;
        // Who may act next (ADR 0024): what the request names, within what
        // the allowing policies name.
        let asked = req.allowed_actors.as_ref().map(ToString::to_string);
        grant.may_act = match self.grant_may_act(user, &req.agent, &req.resource, &req.scopes, asked.as_deref()).await {
            Ok(m) => m,
            Err(Error::AccessDenied(why) | Error::InvalidRequest(why)) => {
                let url = self.authorization_refused(user, req, "access_denied", &why).await;
                return Err(AuthorizeError::Redirect { url });
            }
            Err(e) => return Err(unavailable(&e)),
        };
        grant.authorization_details = req.authorization_details.clone();
        let code = secrets::generate(CODE_PREFIX, self.rng.as_ref()).map_err(|e| unavailable(&e))?;
        let now = self.clock.now();
        let record = AuthCodeRecord {
            hash: secrets::hash(&code),
            agent: req.agent.id,
            user: user.id,
            grant: grant.id,
            redirect_uri: req.redirect_uri.clone(),
            code_challenge: req.code_challenge.clone(),
            dpop_jkt: req.dpop_jkt.clone(),
            offline: req.offline,
            created_at: now,
            expires_at: now + Duration::seconds(CODE_TTL),
            used_at: None,
        };
        let mut event = self.authorize_event(kind::GRANT_CREATED, user, req);
        event.decision = Some(ALLOW.into());
        event.grant_id = Some(grant.id.to_string());
        event.reason = crate::details::with_digest(
            Some(match &grant.may_act {
                None => format!("approved_by {} on the consent page", user.id),
                Some(m) => format!("approved_by {} on the consent page; may_act {m}", user.id),
            }),
            &req.authorization_details,
        );
        let change = Change::new()
            .with(Mutation::InsertGrant(grant))
            .with(Mutation::InsertAuthCode(record))
            .with(AuditRecord::new(event).mutation());
        self.store.commit(change).await.map_err(|e| unavailable(&e))?;
        Ok(self.back_to_client(req, &[("code", code.as_str())]))
    }

    /// `grant_type=authorization_code` at the token endpoint.
    pub(crate) async fn authorization_code_token(
        &self,
        client: &AuthenticatedClient,
        redemption: Redemption<'_>,
        jkt: Option<&str>,
    ) -> Result<(Change, Event, IssuedToken), Refusal> {
        let Redemption { code, redirect_uri, verifier, resources } = redemption;
        let refuse = Refusal::new;
        let agent = client
            .agent
            .as_ref()
            .ok_or_else(|| refuse(Error::UnauthorizedClient("only an agent may redeem a code".into())))?;
        let invalid = |m: &str| refuse(Error::InvalidGrant(m.to_owned()));
        let record = self
            .store
            .auth_code(&secrets::hash(code))
            .await
            .map_err(|e| refuse(e.into()))?
            .filter(|r| r.agent == agent.id)
            .ok_or_else(|| invalid("the code is invalid"))?;
        if record.used_at.is_some() {
            return Err(self.code_replayed(&record));
        }
        let now = self.clock.now();
        if now >= record.expires_at {
            return Err(invalid("the code has expired"));
        }
        if redirect_uri != Some(record.redirect_uri.as_str()) {
            return Err(invalid("redirect_uri does not match the authorization request"));
        }
        // SECURITY row 13: a verifier is needed, and must match.
        let verifier = verifier.unwrap_or_default();
        if !is_pkce_value(verifier, 43)
            || !mandate_jose::ct_eq(s256(verifier).as_bytes(), record.code_challenge.as_bytes())
        {
            return Err(invalid("code_verifier does not match the code_challenge"));
        }
        let grant = self
            .store
            .grant(record.grant)
            .await
            .map_err(|e| refuse(e.into()))?
            .filter(|g| g.is_live(now))
            .ok_or_else(|| invalid("the grant is revoked or expired"))?;
        same_resource(resources, &grant.resource).map_err(refuse)?;
        // RFC 9449 §10: a code bound to a key is redeemed only with a proof
        // by that key.
        if let Some(bound) = &record.dpop_jkt
            && !jkt.is_some_and(|k| mandate_jose::ct_eq(k.as_bytes(), bound.as_bytes()))
        {
            return Err(invalid("the code is bound to a DPoP key (dpop_jkt): prove possession of that key"));
        }
        let (mut change, event, issued) = if record.offline {
            self.first_tokens(agent, &grant, jkt).await
        } else {
            self.grant_token(agent, &grant, &grant.scopes, None, jkt).await
        }
        .map_err(refuse)?;
        change.prepend(Mutation::UseAuthCode { hash: record.hash, at: now });
        Ok((change, event, issued))
    }

    /// A code used twice (SECURITY row 15): what it issued is revoked.
    pub(crate) fn code_replayed(&self, record: &AuthCodeRecord) -> Refusal {
        let now = self.clock.now();
        let mut change = Change::new().with(Mutation::RevokeGrant { id: record.grant, at: now });
        let tokens = change.push(Mutation::RevokeTokensOfGrant { grant: record.grant, at: now });
        Mandate::signal_revocations(
            &mut change,
            now,
            Cause::new(InitiatingEntity::Policy, "an authorization code was used twice; what it issued is revoked"),
        );
        Refusal {
            change,
            counted: vec![tokens],
            error: Error::InvalidGrant("the code was already used; the tokens issued from it are revoked".into()),
        }
    }

    /// After a lost race on a code: its record, if it was used.
    pub(crate) async fn code_raced(&self, code: &str) -> Result<Option<AuthCodeRecord>, Error> {
        Ok(self.store.auth_code(&secrets::hash(code)).await?.filter(|r| r.used_at.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b() {
        assert_eq!(s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn query_is_appended() {
        assert_eq!(with_query("https://a.example/cb", &[("code", "x y")]), "https://a.example/cb?code=x+y");
        assert_eq!(with_query("https://a.example/cb?k=1", &[("state", "s&t")]), "https://a.example/cb?k=1&state=s%26t");
    }
}
