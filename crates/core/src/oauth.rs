//! OAuth use cases: the token endpoint (client credentials), introspection
//! (RFC 7662) and revocation (RFC 7009).

use mandate_jose::JoseError;
use mandate_model::claims::{AccessTokenClaims, Confirmation};
use mandate_model::records::{AgentKind, ClientId, TokenRecord};
use mandate_model::ssf::{Cause, InitiatingEntity};
use mandate_model::{Jti, ScopeSet};
use mandate_policy::{Principal, Target};

use time::Duration;

use mandate_audit::Event;

use crate::Error;
use crate::audit::{ALLOW, AuditRecord, DENY, kind, reason};
use crate::ports::new_ulid;
use crate::request::{BadGrant, GrantRequest, TokenRequest, bounded_input};
use crate::secrets;
use crate::service::{AuthenticatedClient, Mandate};
use crate::store::{Change, Handle, Mutation, Receipt, StoreError};

/// The endpoint a client authenticates at. A client assertion's `aud` may
/// be the issuer or the token endpoint anywhere (RFC 7523 §3, and the MCP
/// SDKs send the issuer), and also the URL of the endpoint being called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    BcAuthorize,
    Introspect,
    Revoke,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Self::Token => "/oauth/token",
            Self::BcAuthorize => "/oauth/bc-authorize",
            Self::Introspect => "/oauth/introspect",
            Self::Revoke => "/oauth/revoke",
        }
    }
}

/// How a client proved who it is.
#[derive(Debug, Clone)]
pub enum ClientCredentials {
    None,
    /// A public client names itself (`token_endpoint_auth_method: none`).
    Public {
        client_id: String,
    },
    /// `private_key_jwt` (RFC 7523 §2.2).
    Assertion {
        assertion_type: String,
        assertion: String,
        client_id: Option<String>,
    },
    /// `client_secret_basic`, development only.
    Secret {
        client_id: String,
        secret: String,
    },
}

impl ClientCredentials {
    /// The client id these credentials claim, when it is well formed (not
    /// yet authenticated): what per-client rate limits count.
    pub fn claimed_id(&self) -> Option<String> {
        claimed_client(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub scope: String,
    pub jti: Jti,
    pub client_id: ClientId,
    /// A rotating refresh token (grants only).
    pub refresh_token: Option<String>,
    /// RFC 8693 `issued_token_type` (token exchange only).
    pub issued_token_type: Option<&'static str>,
    /// RFC 9396 §7: the details the token carries.
    pub authorization_details: Option<mandate_model::details::AuthorizationDetails>,
}

/// An RFC 7662 answer: `{"active": false}`, or the token's claims.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Introspection {
    pub active: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub token: Option<Box<ActiveToken>>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<Box<ActiveRefresh>>,
}

/// What introspection tells of a live refresh token (RFC 7662 §2.2), to
/// the client holding it or the admin: whose grant, for what, until when.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ActiveRefresh {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub client_id: String,
    pub scope: String,
    pub grant_id: String,
    pub token_type: &'static str,
}

/// What introspection tells of a live token (RFC 7662 §2.2): its claims
/// (RFC 9068; `act`, `grant_id`, `purpose` and `cnf` when it has them; never
/// `may_act` or `status`) and its `token_type`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ActiveToken {
    #[serde(flatten)]
    pub claims: IntrospectedClaims,
    pub token_type: &'static str,
}

/// The claims introspection shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IntrospectedClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<mandate_model::claims::Actor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// RFC 9396 §9.2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<mandate_model::details::AuthorizationDetails>,
}

impl From<AccessTokenClaims> for IntrospectedClaims {
    fn from(c: AccessTokenClaims) -> Self {
        Self {
            iss: c.iss,
            sub: c.sub,
            aud: c.aud,
            exp: c.exp,
            iat: c.iat,
            nbf: c.nbf,
            jti: c.jti,
            client_id: c.client_id,
            scope: c.scope,
            act: c.act,
            grant_id: c.grant_id,
            purpose: c.purpose,
            cnf: c.cnf,
            authorization_details: c.authorization_details,
        }
    }
}

/// Who asks to introspect or revoke.
#[derive(Debug, Clone)]
pub enum TokenCaller {
    Admin,
    Client(Box<AuthenticatedClient>),
}

impl Mandate {
    /// The token endpoint. Every grant shares this path, and so shares the
    /// client authentication, the replay store and the audit trail.
    pub async fn token(&self, credentials: &ClientCredentials, req: TokenRequest) -> Result<IssuedToken, Error> {
        // A workload JWT as the jwt-bearer grant's assertion stands in for
        // client authentication: what would be `invalid_client` (a bad or
        // replayed token) is the grant's failure (RFC 7523 §3.1).
        let assertion_authenticates = match &req.grant {
            Ok(GrantRequest::JwtBearer { assertion, .. }) => {
                matches!(credentials, ClientCredentials::None)
                    && !mandate_jose::federated::peek(assertion).is_ok_and(|p| p.is_id_jag())
            }
            _ => false,
        };
        let out = self.token_once_decided(credentials, req).await;
        match out {
            Err(Error::InvalidClient(why)) if assertion_authenticates => Err(Error::InvalidGrant(why)),
            other => other,
        }
    }

    /// Runs the token endpoint at the newest epoch this node knows of,
    /// without reading it, where its change feed is listening: what it
    /// commits must find the epoch unmoved, and a run whose epoch moved
    /// runs again, reading it (decision 0042). Otherwise, one epoch read
    /// for the request's cached reads (the client, its owner, the agent it
    /// acts for), not one before each (decision 0043).
    async fn token_once_decided(
        &self,
        credentials: &ClientCredentials,
        req: TokenRequest,
    ) -> Result<IssuedToken, Error> {
        use crate::cache::{Phase, again, one_request, optimistic};
        let Some(epoch) = self.caching.decide_at() else {
            return one_request(self.token_endpoint(credentials, req)).await;
        };
        let (out, admitted, phase) = optimistic(epoch, self.token_endpoint(credentials, req.clone())).await;
        let stands = match phase {
            Phase::Confirmed | Phase::Reading => true,
            // The rate limit does not depend on the store.
            _ if matches!(out, Err(Error::RateLimited { .. })) => true,
            Phase::Moved => false,
            // Neither committed nor settled: it stands if the epoch has
            // not moved since.
            Phase::Optimistic(decided) => self.caching.still_at(decided).await?,
        };
        self.caching.count_optimistic(!stands);
        if stands {
            return out;
        }
        again(admitted, self.token_endpoint(credentials, req)).await
    }

    async fn token_endpoint(&self, credentials: &ClientCredentials, req: TokenRequest) -> Result<IssuedToken, Error> {
        let grant = match req.grant {
            Err(BadGrant::Unsupported(name)) => {
                let e = Error::UnsupportedGrantType(format!("grant_type {name:?} is not supported"));
                let mut event = self.event(kind::TOKEN_DENIED);
                event.decision = Some(DENY.into());
                event.client_id = claimed_client(credentials);
                event.reason = Some(reason(&e));
                self.record(event).await?;
                return Err(e);
            }
            Err(BadGrant::Malformed { grant, error }) => Err((grant, error)),
            Ok(g) => Ok(g),
        };
        // A workload JWT as the jwt-bearer grant's assertion authenticates
        // its agent (DESIGN §10): it stands in for client authentication,
        // and what fails there fails the grant.
        let workload_grant = match &grant {
            Ok(GrantRequest::JwtBearer { assertion, .. }) => self.is_workload_grant(assertion, credentials)?,
            _ => None,
        };
        let client = self.authenticate(workload_grant.as_ref().unwrap_or(credentials), Endpoint::Token).await?;
        let grant_type = match &grant {
            Ok(g) => g.grant_type(),
            Err((g, _)) => *g,
        };
        let proof = match req.dpop.as_slice() {
            [] => Ok(None),
            [one] => self.token_proof(Some(one)),
            _ => Err(Error::InvalidDpopProof("exactly one DPoP header is allowed".into())),
        };
        let outcome = match (proof, &grant) {
            (Err(e), _) => Err(Refusal::new(e)),
            (_, Err((_, e))) => Err(Refusal::new(e.clone())),
            // A public client holds no credential: the code flow with PKCE
            // (and its refresh tokens) only (DESIGN §9).
            (Ok(_), Ok(grant))
                if client.agent.as_ref().is_some_and(|a| a.public)
                    && !matches!(grant, GrantRequest::AuthorizationCode { .. } | GrantRequest::Refresh { .. }) =>
            {
                Err(Refusal::new(Error::UnauthorizedClient(format!(
                    "a public client may use only the authorization code grant, not {}",
                    grant.grant_type().as_str()
                ))))
            }
            (Ok(proof), Ok(grant)) => 'issue: {
                // The agent's credential policy (DESIGN §13), before anything is decided.
                if let Err(e) = self.request_within_limits(&client, grant, proof.is_some()).await {
                    break 'issue Err(Refusal::new(e));
                }
                let jkt = proof.as_ref().map(|p| p.jkt.as_str());
                let issued = match grant {
                    GrantRequest::ClientCredentials { scope, resources } => {
                        self.client_credentials(&client, scope.as_deref(), resources, jkt).await.map_err(Refusal::new)
                    }
                    GrantRequest::Ciba { auth_req_id } => self.ciba_token(&client, auth_req_id, jkt).await,
                    GrantRequest::AuthorizationCode { code, redirect_uri, code_verifier, resources } => {
                        let redemption = crate::authorize::Redemption {
                            code,
                            redirect_uri: redirect_uri.as_deref(),
                            verifier: code_verifier.as_deref(),
                            resources,
                        };
                        self.authorization_code_token(&client, redemption, jkt).await
                    }
                    GrantRequest::Refresh { refresh_token, scope, resources } => {
                        self.refresh_token(&client, refresh_token, scope.as_deref(), resources, jkt).await
                    }
                    GrantRequest::Exchange(x) => self.exchange(&client, x, jkt).await.map_err(Refusal::new),
                    // The agent the workload JWT named acts as itself.
                    GrantRequest::JwtBearer { scope, resources, .. } if workload_grant.is_some() => {
                        self.client_credentials(&client, scope.as_deref(), resources, jkt).await.map_err(Refusal::new)
                    }
                    GrantRequest::JwtBearer { assertion, scope, resources } => self
                        .id_jag_token(&client, assertion, scope.as_deref(), resources, jkt)
                        .await
                        .map_err(Refusal::new),
                };
                issued.map(|(mut change, event, token)| {
                    // The proof is burned with what it obtains.
                    if let Some(p) = proof {
                        change.prepend(p.burn);
                    }
                    (change, event, token)
                })
            }
        };
        let refusal = match outcome {
            Ok((change, event, token)) => match self.commit_or_replay(&client, change, event, &[]).await {
                Ok(_) => return Ok(token),
                Err(e @ Error::InvalidDpopProof(_)) => Refusal::new(e),
                // An ID-JAG used twice at once: the loser is refused.
                Err(e @ Error::InvalidGrant(_)) => Refusal::new(e),
                // A parent, grant, approval or refresh token changed
                // under this request: nothing was written.
                Err(Error::Conflict(why)) => self.lost_race(grant.as_ref().ok(), &why).await?,
                Err(e) => return Err(e),
            },
            // An internal failure is not a decision about the client: the
            // request fails closed and writes nothing (its assertion stays
            // usable for a retry); the log has the detail.
            Err(Refusal { error: e @ Error::Unavailable(_), .. }) => return Err(e),
            Err(refusal) => refusal,
        };
        let Refusal { change, counted, error: e } = refusal;
        let mut event = self.refusal_event(&client, grant_type.as_str(), &e);
        if let Ok(GrantRequest::ClientCredentials { scope, resources }) = &grant {
            event.resource = resources.first().map(|r| bounded_input(r));
            event.scope = scope.as_deref().map(bounded_input);
        }
        // A refused request still uses up its assertion.
        self.commit_or_replay(&client, change, event, &counted).await?;
        Err(e)
    }

    /// The credentials a `jwt-bearer` grant authenticates with when its
    /// assertion is not an ID-JAG: the assertion itself, as a workload JWT
    /// (RFC 7523 §2.1 lets the assertion identify the client). With other
    /// client authentication as well, such an assertion is refused rather
    /// than weighed against it.
    fn is_workload_grant(
        &self,
        assertion: &str,
        credentials: &ClientCredentials,
    ) -> Result<Option<ClientCredentials>, Error> {
        let peeked = mandate_jose::federated::peek(assertion).ok();
        if peeked.as_ref().is_some_and(|p| p.is_id_jag()) {
            return Ok(None);
        }
        if !matches!(credentials, ClientCredentials::None) {
            let trusted = peeked
                .as_ref()
                .is_some_and(|p| self.trusted_issuer(&p.iss, crate::trust::IssuerUse::Workload).is_some());
            if trusted {
                return Err(Error::InvalidRequest(
                    "a workload JWT as the assertion authenticates its agent: send no other client authentication"
                        .into(),
                ));
            }
            return Ok(None);
        }
        Ok(Some(ClientCredentials::Assertion {
            assertion_type: mandate_jose::assertion::CLIENT_ASSERTION_TYPE.to_owned(),
            assertion: assertion.to_owned(),
            client_id: None,
        }))
    }

    /// A token request whose commit lost a race: a refresh token or a code
    /// used twice at once revokes what it issued; any other loser is
    /// refused.
    async fn lost_race(&self, grant: Option<&GrantRequest>, why: &str) -> Result<Refusal, Error> {
        let lost = || Refusal::new(Error::InvalidGrant(format!("the request lost a race: {why}")));
        Ok(match grant {
            Some(GrantRequest::Refresh { refresh_token, .. }) => match self.refresh_raced(refresh_token).await? {
                Some(record) => self.reuse(&record),
                None => lost(),
            },
            // A code redeemed twice at once: the loser revokes.
            Some(GrantRequest::AuthorizationCode { code, .. }) => match self.code_raced(code).await? {
                Some(record) => self.code_replayed(&record),
                None => lost(),
            },
            _ => lost(),
        })
    }

    /// Authenticates a client at an OAuth endpoint, recording a failure.
    pub async fn authenticate(
        &self,
        credentials: &ClientCredentials,
        at: Endpoint,
    ) -> Result<AuthenticatedClient, Error> {
        match self.authenticate_client(credentials, at).await {
            Ok(c) => {
                // The per-client rate limit: nothing is written for a
                // client over its budget, its assertion stays unused. A
                // request run again (decision 0042) is counted once.
                if !crate::cache::admitted() {
                    self.admit_client(&c.id)?;
                    crate::cache::admit();
                }
                Ok(c)
            }
            Err(e @ Error::InvalidClient(_)) => {
                let mut event = self.event(kind::CLIENT_AUTH_FAILED);
                event.decision = Some(DENY.into());
                event.client_id = claimed_client(credentials);
                event.reason = Some(reason(&e));
                self.record(event).await?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// An event about something `client` asked for.
    pub(crate) fn client_event(&self, kind: &str, client: &AuthenticatedClient) -> Event {
        let mut e = self.event(kind);
        e.client_id = Some(client.id.to_string());
        e.actor = Some(client.id.to_string());
        e
    }

    /// Commits `change` with the client's assertion burned and `event`
    /// appended, all or nothing; the event counts the rows reached by the
    /// mutations `counted`. A replayed assertion writes nothing but the
    /// record of the replay, and fails the request.
    pub(crate) async fn commit_or_replay(
        &self,
        client: &AuthenticatedClient,
        mut change: Change,
        event: Event,
        counted: &[Handle],
    ) -> Result<Receipt, Error> {
        change.push(AuditRecord::counting(event, counted).mutation());
        self.commit_client(client, change).await
    }

    /// Commits `change` with the client's assertion burned first; a replayed
    /// assertion writes nothing but the record of the replay, and fails.
    pub(crate) async fn commit_client(
        &self,
        client: &AuthenticatedClient,
        mut change: Change,
    ) -> Result<Receipt, Error> {
        if let Some(burn) = client.burn() {
            change.prepend(burn);
        }
        match self.store.commit(change).await {
            Ok(a) => Ok(a),
            Err(StoreError::Replay) => {
                let e = Error::InvalidClient("client assertion jti was already used".into());
                let mut replay = self.client_event(kind::CLIENT_AUTH_FAILED, client);
                replay.decision = Some(DENY.into());
                replay.reason = Some(reason(&e));
                self.record(replay).await?;
                Err(e)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `client_credentials`: an agent acting as itself, or a resource server
    /// asking for `mandate:check` on Mandate's own API. Decides and mints;
    /// the caller commits the returned change and event.
    async fn client_credentials(
        &self,
        client: &AuthenticatedClient,
        scope: Option<&str>,
        resources: &[String],
        jkt: Option<&str>,
    ) -> Result<(Change, Event, IssuedToken), Error> {
        let resource = match resources {
            [] => {
                return Err(Error::InvalidTarget("resource is required: tokens are bound to one audience".into()));
            }
            [one] => one.as_str(),
            _ => {
                return Err(Error::InvalidTarget("exactly one resource per token".into()));
            }
        };
        let asked = match scope {
            None | Some("") => None,
            Some(s) => Some(ScopeSet::parse(s).map_err(|e| Error::InvalidScope(e.to_string()))?),
        };
        let now = self.clock.now();
        let issuer = self.config.issuer.as_str();
        let mut lifetime = self.config.access_token_ttl;
        let (subject, agent_expiry, scopes) = match (&client.agent, &client.resource) {
            (Some(agent), _) => {
                let limits = self.limits_of(agent).await?;
                crate::limits::audience_within(&limits, agent, resource)?;
                lifetime = lifetime.min(limits.max_token_ttl);
                let scopes = match asked {
                    Some(scopes) => {
                        if let Some(ceiling) = &agent.scopes
                            && let Some(s) = scopes.iter().find(|s| !ceiling.contains(s))
                        {
                            return Err(Error::InvalidScope(format!("scope {s} is beyond the agent's ceiling")));
                        }
                        self.agent_may_hold(agent, resource, &scopes, jkt.is_some()).await?;
                        scopes
                    }
                    None => self.default_scopes(agent, resource, jkt.is_some()).await?,
                };
                (agent.id.to_string(), agent.expires_at, scopes)
            }
            (None, Some(res)) => {
                let scopes = match asked {
                    Some(scopes) => scopes,
                    None => ScopeSet::parse("mandate:check").map_err(|e| Error::InvalidScope(e.to_string()))?,
                };
                // A resource server may ask only to check its own tokens and
                // to receive Shared Signals about them (DESIGN §11).
                let builtin =
                    |s: &str| matches!(s, "mandate:check" | crate::ssf::MANAGE_SCOPE | crate::ssf::READ_SCOPE);
                if resource != issuer || scopes.iter().any(|s| !builtin(s.as_str())) {
                    return Err(Error::UnauthorizedClient(
                        "a resource server may only obtain mandate:check, ssf.manage or ssf.read on the issuer".into(),
                    ));
                }
                (res.id.to_string(), None, scopes)
            }
            (None, None) => return Err(Error::InvalidClient("unknown client".into())),
        };
        let mut exp = now + Duration::seconds(lifetime);
        if let Some(agent_exp) = agent_expiry {
            exp = exp.min(agent_exp);
        }
        let jti = Jti::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?);
        let status_idx = self.status_index().await?;
        let claims = AccessTokenClaims {
            iss: issuer.to_owned(),
            sub: subject.clone(),
            aud: resource.to_owned(),
            exp: exp.unix_timestamp(),
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            jti: jti.to_string(),
            client_id: client.id.to_string(),
            scope: scopes.to_claim(),
            act: None,
            may_act: None,
            authorization_details: None,
            grant_id: None,
            purpose: None,
            cnf: jkt.map(|jkt| Confirmation { jkt: jkt.to_owned() }),
            status: Some(self.status_claim(status_idx)),
        };
        let ring = self.ring();
        let access_token =
            mandate_jose::access::mint(&ring.active, &claims).map_err(|e| Error::Unavailable(e.to_string()))?;
        let record = TokenRecord {
            jti,
            client_id: client.id,
            subject,
            audience: resource.to_owned(),
            scopes: scopes.clone(),
            grant: None,
            parent: None,
            chain: client.agent.as_ref().map(|a| vec![a.id]).unwrap_or_default(),
            issued_at: now,
            expires_at: exp,
            cnf_jkt: jkt.map(str::to_owned),
            status_idx: Some(status_idx),
            family: None,
            revoked_at: None,
        };
        let mut event = self.client_event(kind::TOKEN_ISSUED, client);
        event.decision = Some(ALLOW.into());
        event.subject = Some(record.subject.clone());
        event.chain = record.chain.iter().map(ToString::to_string).collect();
        if event.chain.is_empty() {
            event.chain.push(client.id.to_string());
        }
        event.resource = Some(record.audience.clone());
        event.scope = Some(scopes.to_claim());
        event.jti = Some(jti.to_string());
        let issued = IssuedToken {
            access_token,
            token_type: crate::delegation::token_type(&record),
            expires_in: (exp - now).whole_seconds(),
            scope: scopes.to_claim(),
            jti,
            client_id: client.id,
            refresh_token: None,
            issued_token_type: None,
            authorization_details: None,
        };
        Ok((Change::new().with(Mutation::InsertToken(record)), event, issued))
    }

    /// Without `scope` (RFC 6749 §3.3): every scope of the resource within
    /// the agent's ceiling that policy lets it hold. At the issuer a scope
    /// must be named; an empty default is `invalid_scope`.
    async fn default_scopes(
        &self,
        agent: &mandate_model::records::Agent,
        resource: &str,
        dpop_bound: bool,
    ) -> Result<ScopeSet, Error> {
        if resource == self.config.issuer {
            return Err(Error::InvalidScope("scope is required at the issuer (mandate:spawn)".into()));
        }
        let res = self.resource_by_identifier(resource).await?;
        let mut kept = Vec::new();
        for name in res.scopes.keys() {
            let scope = mandate_model::Scope::parse(name).map_err(|e| Error::Unavailable(e.to_string()))?;
            if agent.scopes.as_ref().is_some_and(|c| !c.contains(&scope)) {
                continue;
            }
            let one =
                ScopeSet::from_iter_checked([Ok(scope.clone())]).map_err(|e| Error::Unavailable(e.to_string()))?;
            match self.agent_may_hold(agent, resource, &one, dpop_bound).await {
                Ok(()) => kept.push(Ok(scope)),
                Err(Error::InvalidScope(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let scopes = ScopeSet::from_iter_checked(kept).map_err(|e| Error::Unavailable(e.to_string()))?;
        if scopes.is_empty() {
            return Err(Error::InvalidScope(format!("policy lets this agent hold no scope of {resource}")));
        }
        Ok(scopes)
    }

    /// Whether policy lets `agent`, acting as itself, hold `scopes` at
    /// `resource`: every action of every scope (or `mandate:spawn` at the
    /// issuer) must be permitted.
    async fn agent_may_hold(
        &self,
        agent: &mandate_model::records::Agent,
        resource: &str,
        scopes: &ScopeSet,
        dpop_bound: bool,
    ) -> Result<(), Error> {
        let issuer = self.config.issuer.as_str();
        let engine = self.fresh_engine().await?;
        let related = self.related(&[agent], &[]).await?;
        let facts = self.facts(None, &[agent], dpop_bound);
        if resource == issuer {
            for scope in scopes.iter() {
                // A gateway checks the tokens of the resources that name it.
                if scope.as_str() == "mandate:check" && !agent.public && agent.kind == AgentKind::Persistent {
                    if self.guarded_by(agent.id).await?.is_empty() {
                        return Err(Error::InvalidScope(format!(
                            "scope {scope} is only for the gateway of a resource, and no resource names {}",
                            agent.id
                        )));
                    }
                    continue;
                }
                if scope.as_str() != "mandate:spawn" {
                    return Err(Error::InvalidScope(format!("scope {scope} is not offered by {issuer}")));
                }
                let d =
                    engine.decide_with(Principal::Agent(agent), scope.as_str(), Target::Api(issuer), &related, &facts);
                if !d.allowed {
                    return Err(refused_by_policy(&d, &format!("{scope}")));
                }
            }
        } else {
            let res = self.resource_by_identifier(resource).await?;
            for scope in scopes.iter() {
                let actions = res
                    .actions_of(scope)
                    .ok_or_else(|| Error::InvalidScope(format!("scope {scope} is not offered by {resource}")))?;
                for action in actions {
                    let target = Target::Api(&res.identifier);
                    let d = self.caches.issuance(&engine, Principal::Agent(agent), &action, target, &related, &facts);
                    if !d.allowed {
                        return Err(refused_by_policy(&d, &format!("{scope} ({action}) on {resource}")));
                    }
                }
            }
        }
        Ok(())
    }

    /// A registered resource by identifier, from the cache or the store.
    pub(crate) async fn resource_by_identifier(
        &self,
        identifier: &str,
    ) -> Result<std::sync::Arc<mandate_model::records::Resource>, Error> {
        if let Ok(cache) = self.resources.read()
            && let Some(r) = cache.get(identifier)
        {
            return Ok(r.clone());
        }
        let r = self
            .store
            .resource_by_identifier(identifier)
            .await?
            .ok_or_else(|| Error::InvalidTarget(format!("{identifier} is not a registered resource")))?;
        let r = std::sync::Arc::new(r);
        if let Ok(mut cache) = self.resources.write() {
            cache.insert(identifier.to_owned(), r.clone());
        }
        Ok(r)
    }

    /// Verifies one of our access tokens and loads its record; `None` when
    /// the token is not live for any reason.
    /// Verifies one of our access tokens, reloading the keys once when it
    /// names a key this node has not loaded (another node may have rotated).
    pub(crate) async fn verify_ours(&self, token: &str) -> Result<Option<AccessTokenClaims>, Error> {
        let now = self.clock.now().unix_timestamp();
        let key = crate::chain::token_key(token);
        if let Some(claims) = self.caches.verified(&key, now) {
            return Ok(Some(claims));
        }
        let mut verified = self.ring().verifier.verify(token, now, None);
        if matches!(verified, Err(JoseError::UnknownKey)) {
            self.reload_keys_now().await?;
            verified = self.ring().verifier.verify(token, now, None);
        }
        let claims = verified.ok();
        if let Some(c) = &claims {
            self.caches.keep_verified(key, c.clone());
        }
        Ok(claims)
    }

    /// The claims and record of a token that is live as a whole (its
    /// ancestors, grant, agents and user included).
    async fn live_token(&self, token: &str) -> Result<Option<(AccessTokenClaims, TokenRecord)>, Error> {
        Ok(self.live_chain(token).await?.ok().map(|l| (l.claims.clone(), l.record.clone())))
    }

    /// RFC 7662. Only the admin, the client the token was issued to, or the
    /// resource named by its `aud` may see its claims; anyone else learns
    /// `{"active": false}`.
    pub async fn introspect(&self, caller: &TokenCaller, token: &str) -> Result<Introspection, Error> {
        // An opaque token is one of Mandate's refresh tokens or nothing.
        if token.split('.').count() != 3 {
            return self.introspect_refresh(caller, token).await;
        }
        let live = self.live_token(token).await?;
        let entitled = live.as_ref().is_some_and(|(_, record)| match caller {
            TokenCaller::Admin => true,
            TokenCaller::Client(c) => {
                c.id == record.client_id || c.resource.as_ref().is_some_and(|r| r.identifier == record.audience)
            }
        });
        let mut event = self.caller_event(kind::TOKEN_INTROSPECTED, caller);
        if let Some((_, record)) = &live {
            event.jti = Some(record.jti.to_string());
            event.subject = Some(record.subject.clone());
            event.resource = Some(record.audience.clone());
            event.grant_id = record.grant.map(|g| g.to_string());
        }
        event.decision = Some(if entitled { ALLOW } else { DENY }.into());
        if !entitled {
            event.reason = Some(
                if live.is_some() {
                    "the caller may not introspect this token"
                } else {
                    "not a live token of this issuer"
                }
                .into(),
            );
        }
        self.commit_caller(caller, Change::new(), event, &[]).await?;
        let Some((claims, _)) = live.filter(|_| entitled) else {
            return Ok(Introspection { active: false, token: None, refresh: None });
        };
        let token_type = if claims.cnf.is_some() { "DPoP" } else { "Bearer" };
        Ok(Introspection {
            active: true,
            token: Some(Box::new(ActiveToken { claims: claims.into(), token_type })),
            refresh: None,
        })
    }

    /// RFC 7662 for a refresh token: live while unused, unrevoked,
    /// unexpired and under a live grant; shown only to the client holding
    /// it and the admin.
    async fn introspect_refresh(&self, caller: &TokenCaller, token: &str) -> Result<Introspection, Error> {
        let now = self.clock.now();
        let record = match self.store.refresh(&secrets::hash(token)).await? {
            Some(r) if r.used_at.is_none() && r.revoked_at.is_none() && now < r.expires_at => Some(r),
            _ => None,
        };
        let grant = match &record {
            Some(r) => self.store.grant(r.grant).await?.filter(|g| g.is_live(now)),
            None => None,
        };
        let live = record.zip(grant);
        let entitled = live.as_ref().is_some_and(|(r, _)| match caller {
            TokenCaller::Admin => true,
            TokenCaller::Client(c) => c.id == ClientId::Agent(r.client_id),
        });
        let mut event = self.caller_event(kind::TOKEN_INTROSPECTED, caller);
        if let Some((r, g)) = &live {
            event.subject = Some(g.user.to_string());
            event.resource = Some(g.resource.clone());
            event.grant_id = Some(r.grant.to_string());
        }
        event.decision = Some(if entitled { ALLOW } else { DENY }.into());
        if !entitled {
            event.reason = Some(
                if live.is_some() {
                    "the caller may not introspect this token"
                } else {
                    "not a live token of this issuer"
                }
                .into(),
            );
        }
        self.commit_caller(caller, Change::new(), event, &[]).await?;
        let Some((r, g)) = live.filter(|_| entitled) else {
            return Ok(Introspection { active: false, token: None, refresh: None });
        };
        Ok(Introspection {
            active: true,
            token: None,
            refresh: Some(Box::new(ActiveRefresh {
                iss: self.config.issuer.clone(),
                sub: g.user.to_string(),
                aud: g.resource.clone(),
                exp: r.expires_at.unix_timestamp(),
                iat: r.issued_at.unix_timestamp(),
                client_id: r.client_id.to_string(),
                scope: r.scopes.to_claim(),
                grant_id: r.grant.to_string(),
                token_type: "refresh_token",
            })),
        })
    }

    /// An event about what the admin or a client asked of a token.
    fn caller_event(&self, kind: &str, caller: &TokenCaller) -> Event {
        match caller {
            TokenCaller::Admin => {
                let mut e = self.event(kind);
                e.actor = Some("admin".into());
                e
            }
            TokenCaller::Client(c) => self.client_event(kind, c),
        }
    }

    /// Commits `change` and `event`, burning a client caller's assertion.
    async fn commit_caller(
        &self,
        caller: &TokenCaller,
        mut change: Change,
        event: Event,
        counted: &[Handle],
    ) -> Result<Receipt, Error> {
        match caller {
            TokenCaller::Client(c) => self.commit_or_replay(c, change, event, counted).await,
            TokenCaller::Admin => {
                change.push(AuditRecord::counting(event, counted).mutation());
                Ok(self.store.commit(change).await?)
            }
        }
    }

    /// RFC 7009. Answers the same whether or not anything was revoked; a
    /// client may revoke only tokens issued to it. An access token revokes
    /// itself and everything exchanged from it; a refresh token revokes its
    /// whole family, refresh and access tokens alike (SECURITY row 40).
    /// `hint` (`token_type_hint`) only orders the search: when the token is
    /// not of the hinted type the other type is tried (RFC 7009 §2.1).
    /// Returns whether anything was revoked.
    pub async fn revoke(&self, caller: &TokenCaller, token: &str, hint: Option<&str>) -> Result<bool, Error> {
        let refresh_first = hint == Some("refresh_token");
        let found = if refresh_first {
            match self.revocable_refresh(caller, token).await? {
                Some(r) => Some(r),
                None => self.revocable_access(caller, token).await?,
            }
        } else {
            match self.revocable_access(caller, token).await? {
                Some(r) => Some(r),
                None => self.revocable_refresh(caller, token).await?,
            }
        };
        let mut event = self.caller_event(kind::TOKEN_REVOKED, caller);
        let (change, counted) = match found {
            None => {
                event.decision = Some(DENY.into());
                event.reason = Some("not a live token of this issuer".into());
                (Change::new(), vec![])
            }
            Some(Revocable { change, counted, event: about }) => {
                event.jti = about.jti;
                event.subject = about.subject;
                event.resource = about.resource;
                event.grant_id = about.grant_id;
                event.decision = about.decision;
                event.reason = about.reason;
                (change, counted)
            }
        };
        let receipt = self.commit_caller(caller, change, event, &counted).await?;
        self.wake_signal_readers();
        let mut revoked = false;
        for h in counted {
            revoked |= receipt.affected(h)? > 0;
        }
        Ok(revoked)
    }

    /// An access token of this issuer, as something to revoke (or refuse).
    async fn revocable_access(&self, caller: &TokenCaller, token: &str) -> Result<Option<Revocable>, Error> {
        // Expired tokens need no revocation; an unknown or forged one is ignored.
        let Some(jti) = self.verify_ours(token).await?.and_then(|claims| claims.jti.parse::<Jti>().ok()) else {
            return Ok(None);
        };
        let Some(record) = self.store.token(jti).await? else { return Ok(None) };
        let mut about = Event::new(kind::TOKEN_REVOKED, String::new());
        about.jti = Some(record.jti.to_string());
        about.subject = Some(record.subject.clone());
        about.resource = Some(record.audience.clone());
        about.grant_id = record.grant.map(|g| g.to_string());
        let entitled = match caller {
            TokenCaller::Admin => true,
            TokenCaller::Client(c) => c.id == record.client_id,
        };
        let mut change = Change::new();
        let mut counted = Vec::new();
        if !entitled {
            // RFC 7009 §2.1: the answer is the same, nothing changes.
            about.decision = Some(DENY.into());
            about.reason = Some("the token was issued to another client".into());
        } else if record.revoked_at.is_some() {
            about.decision = Some(DENY.into());
            about.reason = Some("already revoked".into());
        } else {
            about.decision = Some(ALLOW.into());
            let at = self.clock.now();
            counted.push(change.push(Mutation::RevokeToken { jti: record.jti, at }));
            Mandate::signal_revocations(&mut change, at, revoked_by(caller, "the token was revoked"));
        }
        Ok(Some(Revocable { change, counted, event: about }))
    }

    /// A refresh token, as something to revoke (or refuse): its whole
    /// family goes, with every access token the family issued.
    async fn revocable_refresh(&self, caller: &TokenCaller, token: &str) -> Result<Option<Revocable>, Error> {
        if !token.starts_with(crate::delegation::REFRESH_TOKEN_PREFIX) || token.len() > 256 {
            return Ok(None);
        }
        let Some(record) = self.store.refresh(&secrets::hash(token)).await? else { return Ok(None) };
        let mut about = Event::new(kind::TOKEN_REVOKED, String::new());
        about.grant_id = Some(record.grant.to_string());
        about.subject = Some(record.client_id.to_string());
        let entitled = match caller {
            TokenCaller::Admin => true,
            TokenCaller::Client(c) => c.id == ClientId::Agent(record.client_id),
        };
        let mut change = Change::new();
        let mut counted = Vec::new();
        if !entitled {
            about.decision = Some(DENY.into());
            about.reason = Some("the refresh token was issued to another client".into());
        } else if record.revoked_at.is_some() {
            about.decision = Some(DENY.into());
            about.reason = Some("the refresh token's family is already revoked".into());
        } else {
            let now = self.clock.now();
            about.decision = Some(ALLOW.into());
            about.reason = Some(format!("refresh token: its family {} is revoked", record.family));
            // The event counts the refresh and access tokens the family's
            // revocation reached.
            counted.push(change.push(Mutation::RevokeRefreshFamily { family: record.family.clone(), at: now }));
            counted.push(change.push(Mutation::RevokeTokensOfFamily { family: record.family.clone(), at: now }));
            Mandate::signal_revocations(&mut change, now, revoked_by(caller, "the refresh token's family was revoked"));
        }
        Ok(Some(Revocable { change, counted, event: about }))
    }
}

/// Who revoked a token by RFC 7009, as a SET says it: the admin, or the
/// client that holds it.
fn revoked_by(caller: &TokenCaller, reason: &str) -> Cause {
    match caller {
        TokenCaller::Admin => Cause::new(InitiatingEntity::Admin, reason),
        TokenCaller::Client(_) => Cause::new(InitiatingEntity::User, reason),
    }
}

/// What a revocation request found: the change to make, which of its
/// mutations the event counts, and what the event says about the token.
struct Revocable {
    change: Change,
    counted: Vec<Handle>,
    event: Event,
}

/// A refused token request, and what it still writes (a reused refresh
/// token or code revokes what it issued) besides its event, which counts
/// the rows the mutations `counted` reach.
pub(crate) struct Refusal {
    pub(crate) change: Change,
    pub(crate) counted: Vec<Handle>,
    pub(crate) error: Error,
}

impl Refusal {
    /// A refusal that writes nothing but its event.
    pub(crate) fn new(error: Error) -> Self {
        Self { change: Change::new(), counted: Vec::new(), error }
    }
}

/// A policy refusal. An evaluation error denies too (fail closed, SECURITY
/// row 34) and says `policy_error`, so the trail tells it from a plain
/// denial; Cedar's own messages go to the log, not to the client.
fn refused_by_policy(d: &mandate_policy::Decision, what: &str) -> Error {
    if d.errors.is_empty() {
        return Error::InvalidScope(format!("policy does not allow {what}"));
    }
    tracing::warn!(errors = ?d.errors, what, "policy evaluation failed; denied");
    Error::InvalidScope(format!("policy_error: the policy for {what} could not be evaluated, so it is denied"))
}

/// The client id a failed authentication claimed, when it is well formed;
/// never the raw input.
fn claimed_client(credentials: &ClientCredentials) -> Option<String> {
    let raw = match credentials {
        ClientCredentials::None => return None,
        ClientCredentials::Public { client_id } => client_id.clone(),
        ClientCredentials::Assertion { assertion, client_id, .. } => {
            client_id.clone().or_else(|| mandate_jose::assertion::peek_issuer(assertion).ok())?
        }
        ClientCredentials::Secret { client_id, .. } => client_id.clone(),
    };
    raw.parse::<ClientId>().ok().map(|c| c.to_string())
}

#[cfg(test)]
mod tests {
    //! The token endpoint's `client_credentials`, replay, introspection and
    //! revocation, on a memory store with a fixed clock.

    use super::Endpoint;
    use mandate_model::ScopeSet;
    use mandate_model::records::ClientId;
    use time::Duration;

    use super::TokenCaller;
    use crate::Error;
    use crate::audit::kind;
    use crate::testing::{CAL, ISSUER, World, start};

    #[tokio::test]
    async fn client_credentials_issue_within_the_ceiling_and_record_it() {
        let w = World::new().await;
        let issued = w.client_credentials(&w.planner, CAL, "read").await.unwrap();
        assert_eq!((issued.token_type, issued.expires_in, issued.scope.as_str()), ("Bearer", 300, "read"));
        let record = w.record(&issued).await;
        assert_eq!(record.client_id, ClientId::Agent(w.planner.id()));
        assert_eq!(record.subject, w.planner.id().to_string());
        assert_eq!(record.audience, CAL);
        assert_eq!(record.scopes, ScopeSet::parse("read").unwrap());
        assert_eq!(record.chain, vec![w.planner.id()]);
        assert_eq!((record.issued_at, record.expires_at), (start(), start() + Duration::minutes(5)));
        assert_eq!((record.grant, record.parent, record.revoked_at), (None, None, None));
        let recorded = w.events(kind::TOKEN_ISSUED).await;
        assert_eq!(recorded.last().and_then(|e| e.jti.clone()), Some(issued.jti.to_string()));
        assert!(w.is_live(&issued.access_token).await);
        // It expires with the clock, not before.
        w.clock.advance(Duration::seconds(299));
        assert!(w.is_live(&issued.access_token).await);
        w.clock.advance(Duration::seconds(1));
        assert!(!w.is_live(&issued.access_token).await);
    }

    #[tokio::test]
    async fn client_credentials_are_narrowed_to_the_ceiling_the_resource_and_policy() {
        let w = World::new().await;
        let reader = w.agent_with(w.alice.id, None, Some(&["read"])).await.unwrap();
        let open = w.agent_with(w.alice.id, None, None).await.unwrap();
        let mail = crate::NewResource {
            identifier: "https://mail.example".into(),
            name: "Mail".into(),
            scopes: [("send".to_owned(), vec![])].into(),
            jwks: None,
            gateway: None,
            exchange_to: Vec::new(),
            context: Default::default(),
            authorization_details_types: Default::default(),
        };
        w.m.create_resource(crate::Caller::Admin, mail).await.unwrap();
        // The schema now knows `send`; no policy permits it.
        w.m.put_policies(crate::Caller::Admin, crate::testing::POLICIES).await.unwrap();
        let cases: [(&crate::testing::Client, Vec<&str>, Option<&str>, &str); 7] = [
            (&reader, vec![CAL], Some("read write"), "beyond the agent's ceiling"),
            (&open, vec![CAL], Some("delete"), "not offered by"),
            (&open, vec!["https://mail.example"], Some("send"), "policy does not allow"),
            (&open, vec!["https://unknown.example"], Some("read"), "is not a registered resource"),
            (&open, vec![CAL, "https://mail.example"], Some("read"), "exactly one resource"),
            (&open, vec![], Some("read"), "resource is required"),
            (&open, vec![ISSUER], None, "scope is required at the issuer"),
        ];
        for (client, resources, scope, why) in cases {
            let issued_before = w.events(kind::TOKEN_ISSUED).await.len();
            let trail = w.trail_len().await;
            let assertion = w.assertion(client);
            let grant = crate::GrantRequest::ClientCredentials {
                scope: scope.map(str::to_owned),
                resources: resources.iter().map(|r| (*r).to_owned()).collect(),
            };
            let req = crate::TokenRequest { grant: Ok(grant), dpop: Vec::new() };
            let refused = w.m.token(&World::with_assertion(assertion.clone()), req.clone()).await;
            match &refused {
                Err(Error::InvalidScope(m) | Error::InvalidTarget(m)) if m.contains(why) => {}
                other => panic!("{why}: {other:?}"),
            }
            // The refusal is recorded, and nothing else is written.
            assert_eq!(w.trail_len().await, trail + 1, "{why}");
            let denied = w.events(kind::TOKEN_DENIED).await;
            assert!(denied.last().and_then(|e| e.reason.clone()).is_some_and(|r| r.contains(why)), "{why}");
            assert_eq!(w.events(kind::TOKEN_ISSUED).await.len(), issued_before, "{why}");
            // A refused request still uses up its assertion.
            let again = w.m.token(&World::with_assertion(assertion), req).await;
            assert!(matches!(again, Err(Error::InvalidClient(_))), "{why}: {again:?}");
        }
        // Within every bound, the same agents are served.
        assert!(w.client_credentials(&reader, CAL, "read").await.is_ok());
        assert!(w.client_credentials(&open, CAL, "read").await.is_ok());
    }

    #[tokio::test]
    async fn an_assertion_is_used_once() {
        let w = World::new().await;
        let assertion = w.assertion(&w.planner);
        let grant = crate::GrantRequest::ClientCredentials { scope: Some("read".into()), resources: vec![CAL.into()] };
        let req = crate::TokenRequest { grant: Ok(grant), dpop: Vec::new() };
        assert!(w.m.token(&World::with_assertion(assertion.clone()), req.clone()).await.is_ok());
        let replay = w.m.token(&World::with_assertion(assertion), req).await;
        assert!(matches!(replay, Err(Error::InvalidClient(ref m)) if m.contains("already used")), "{replay:?}");
        assert_eq!(w.events(kind::TOKEN_ISSUED).await.len(), 1);
        let failed = w.events(kind::CLIENT_AUTH_FAILED).await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed.first().and_then(|e| e.client_id.clone()), Some(w.planner.id().to_string()));
    }

    #[tokio::test]
    async fn an_inactive_agent_or_a_disabled_owner_cannot_authenticate() {
        let w = World::new().await;
        w.m.agent_lifecycle(crate::Caller::Admin, w.planner.id(), mandate_model::records::Lifecycle::Suspend)
            .await
            .unwrap();
        let refused = w.client_credentials(&w.planner, CAL, "read").await;
        assert!(matches!(refused, Err(Error::InvalidClient(ref m)) if m.contains("not active")), "{refused:?}");
        let other = w.agent(w.alice.id, None).await.unwrap();
        assert!(w.client_credentials(&other, CAL, "read").await.is_ok());
        let patch =
            crate::UserPatch { status: Some(mandate_model::records::UserStatus::Disabled), ..Default::default() };
        w.m.update_user(crate::Caller::Admin, w.alice.id, patch).await.unwrap();
        let refused = w.client_credentials(&other, CAL, "read").await;
        assert!(matches!(refused, Err(Error::InvalidClient(_))), "{refused:?}");
        assert_eq!(w.events(kind::TOKEN_ISSUED).await.len(), 1);
    }

    #[tokio::test]
    async fn introspection_shows_a_live_token_to_those_entitled_only() {
        let w = World::new().await;
        let issued = w.client_credentials(&w.planner, CAL, "read").await.unwrap();
        let admin = w.m.introspect(&TokenCaller::Admin, &issued.access_token).await.unwrap();
        let claims = admin.token.as_ref().map(|t| t.claims.clone()).unwrap();
        assert!(admin.active);
        assert_eq!((claims.iss.as_str(), claims.aud.as_str(), claims.scope.as_str()), (ISSUER, CAL, "read"));
        assert_eq!(claims.jti, issued.jti.to_string());
        let planner = w.m.authenticate(&w.creds(&w.planner), Endpoint::Introspect).await.unwrap();
        let own = w.m.introspect(&TokenCaller::Client(Box::new(planner)), &issued.access_token).await.unwrap();
        assert!(own.active, "the client the token was issued to sees it");
        let helper = w.m.authenticate(&w.creds(&w.helper), Endpoint::Introspect).await.unwrap();
        let other = w.m.introspect(&TokenCaller::Client(Box::new(helper)), &issued.access_token).await.unwrap();
        assert!(!other.active && other.token.is_none(), "another client learns nothing");
        assert!(!w.m.introspect(&TokenCaller::Admin, "not.a.token").await.unwrap().active);
    }

    #[tokio::test]
    async fn only_the_admin_or_the_tokens_client_revokes_it() {
        let w = World::new().await;
        let issued = w.client_credentials(&w.planner, CAL, "read").await.unwrap();
        let helper = w.m.authenticate(&w.creds(&w.helper), Endpoint::Revoke).await.unwrap();
        let by_other = w.m.revoke(&TokenCaller::Client(Box::new(helper)), &issued.access_token, None).await.unwrap();
        assert!(!by_other, "another client revoked the token");
        assert!(w.is_live(&issued.access_token).await);
        let planner = w.m.authenticate(&w.creds(&w.planner), Endpoint::Revoke).await.unwrap();
        assert!(w.m.revoke(&TokenCaller::Client(Box::new(planner)), &issued.access_token, None).await.unwrap());
        assert!(!w.is_live(&issued.access_token).await);
        assert_eq!(w.record(&issued).await.revoked_at, Some(start()));
        assert!(!w.m.revoke(&TokenCaller::Admin, &issued.access_token, None).await.unwrap(), "revoked twice");
        let revoked = w.events(kind::TOKEN_REVOKED).await;
        let decisions: Vec<_> = revoked.iter().map(|e| (e.decision.clone(), e.count)).collect();
        assert_eq!(
            decisions,
            vec![(Some("deny".into()), None), (Some("allow".into()), Some(1)), (Some("deny".into()), None)]
        );
    }
}
