//! Clients that register themselves (DESIGN §9): a `client_id` that is the
//! URL of a Client ID Metadata Document, fetched when it is used, and
//! RFC 7591 dynamic registration. Either way the client becomes an agent
//! (origin `metadata_document` or `dynamic`) owned by the operator-named
//! registration owner; without one, clients cannot register themselves.
//!
//! What a client says of itself is checked the same way for both: exact
//! redirect URIs (https, or loopback http), a name, and either no
//! credential (`none`: a public client, code flow with PKCE only) or
//! `private_key_jwt` with its keys (`jwks`, or a `jwks_uri` fetched once
//! with the document).

use mandate_jose::JwkSet;
use mandate_model::records::{Agent, AgentKind, AgentOrigin, AgentStatus};
use mandate_model::{AgentId, name};
use serde::Deserialize;

use crate::Error;
use crate::audit::{ALLOW, AuditRecord, DENY, kind, reason};
use crate::ports::new_ulid;
use crate::service::Mandate;
use crate::store::{Change, Mutation};

/// A document is fetched again after at least this long...
pub const MIN_METADATA_TTL: std::time::Duration = std::time::Duration::from_secs(300);
/// ...and at most this long, whatever its cache headers say.
pub const MAX_METADATA_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// A document that could not be used is not fetched again for this long.
const FAILURE_TTL: i64 = 30;
const MAX_URL: usize = 2048;
/// New self-registered clients a node takes per minute (documents and RFC
/// 7591 alike), so that a flood of made-up clients cannot grow the store
/// without bound (SECURITY row 45). Refreshing a known client is free.
pub const MAX_NEW_REGISTRATIONS_PER_MINUTE: u32 = 60;
const MAX_CACHED: usize = 10_000;

/// When each metadata document is next fetched, and recent failures.
pub struct MetadataCache {
    next_fetch: quick_cache::sync::Cache<String, i64>,
    failed: quick_cache::sync::Cache<String, (i64, String)>,
    /// New registrations in the current minute: (minute, count).
    new_this_minute: std::sync::Mutex<(i64, u32)>,
}

impl MetadataCache {
    /// Takes one new registration from this minute's budget, or says how
    /// long until the next minute.
    fn admit_new(&self, unix: i64) -> Result<(), u64> {
        let minute = unix.div_euclid(60);
        let mut w = self.new_this_minute.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.0 != minute {
            *w = (minute, 0);
        }
        if w.1 >= MAX_NEW_REGISTRATIONS_PER_MINUTE {
            return Err(u64::try_from(60 - unix.rem_euclid(60)).unwrap_or(60));
        }
        w.1 += 1;
        Ok(())
    }
}

impl Default for MetadataCache {
    fn default() -> Self {
        Self {
            next_fetch: quick_cache::sync::Cache::new(MAX_CACHED),
            failed: quick_cache::sync::Cache::new(MAX_CACHED),
            new_this_minute: std::sync::Mutex::new((0, 0)),
        }
    }
}

/// Client metadata (RFC 7591 §2; the metadata document's fields). Unknown
/// fields are ignored, as RFC 7591 §2 says.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClientMetadata {
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_name: Option<String>,
    #[serde(default)]
    pub redirect_uris: Option<Vec<String>>,
    #[serde(default)]
    pub token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    pub grant_types: Option<Vec<String>>,
    #[serde(default)]
    pub response_types: Option<Vec<String>>,
    #[serde(default)]
    pub application_type: Option<String>,
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub client_uri: Option<String>,
    #[serde(default)]
    pub logo_uri: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// What Mandate keeps of a client's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub jwks: Option<serde_json::Value>,
    pub public: bool,
    /// The grant types it registered (RFC 7591 §2).
    pub grant_types: Vec<String>,
}

/// A refusal of client metadata: RFC 7591's two errors.
fn bad_metadata(m: impl Into<String>) -> Error {
    Error::InvalidClientMetadata(m.into())
}

impl ClientMetadata {
    /// Checks what a client says of itself. `jwks_uri` is for the caller
    /// to fetch (a document may name one; registration may not).
    pub fn validate(&self, fetched_jwks: Option<serde_json::Value>) -> Result<Registration, Error> {
        let raw_name = self.client_name.as_deref().ok_or_else(|| bad_metadata("client_name is required"))?;
        let name = name::validate_name(raw_name).map_err(|e| bad_metadata(format!("client_name: {e}")))?;
        let uris = self.redirect_uris.clone().unwrap_or_default();
        if uris.is_empty() || uris.len() > crate::admin::MAX_REDIRECT_URIS {
            return Err(Error::InvalidRedirectUri(format!(
                "redirect_uris must list 1 to {} exact URIs",
                crate::admin::MAX_REDIRECT_URIS
            )));
        }
        for u in &uris {
            crate::admin::validate_redirect_uri(u).map_err(|e| Error::InvalidRedirectUri(e.to_string()))?;
        }
        let public = match self.token_endpoint_auth_method.as_deref() {
            None | Some("none") if self.jwks.is_none() && self.jwks_uri.is_none() => true,
            None | Some("private_key_jwt") => false,
            Some("none") => {
                return Err(bad_metadata("a client with keys authenticates with private_key_jwt, not none"));
            }
            Some(other) => {
                return Err(bad_metadata(format!(
                    "token_endpoint_auth_method {other:?} is not supported: use none or private_key_jwt"
                )));
            }
        };
        let jwks = match (public, self.jwks.clone(), fetched_jwks) {
            (true, _, _) => None,
            (false, Some(_), Some(_)) => return Err(bad_metadata("give jwks or jwks_uri, not both")),
            (false, Some(j), None) | (false, None, Some(j)) => {
                JwkSet::from_json(&j).map_err(|e| bad_metadata(format!("jwks: {e}")))?;
                Some(j)
            }
            (false, None, None) => return Err(bad_metadata("private_key_jwt needs jwks or jwks_uri")),
        };
        let grant_types = self.grant_types.clone().unwrap_or_else(|| vec!["authorization_code".into()]);
        let allowed: &[&str] = if public {
            &["authorization_code", "refresh_token"]
        } else {
            &[
                "authorization_code",
                "refresh_token",
                "client_credentials",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ]
        };
        if let Some(g) = grant_types.iter().find(|g| !allowed.contains(&g.as_str())) {
            return Err(bad_metadata(format!("grant type {g:?} is not available to this client")));
        }
        if let Some(r) = self.response_types.iter().flatten().find(|r| *r != "code") {
            return Err(bad_metadata(format!("response type {r:?} is not supported: use code")));
        }
        Ok(Registration { name, redirect_uris: uris, jwks, public, grant_types })
    }
}

/// Whether `client_id` names a metadata document rather than an agent id.
pub fn is_metadata_url(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

/// The clamped time until a document is fetched again.
pub fn metadata_ttl(max_age: Option<std::time::Duration>, no_store: bool) -> std::time::Duration {
    if no_store {
        return MIN_METADATA_TTL;
    }
    max_age.unwrap_or(MIN_METADATA_TTL).clamp(MIN_METADATA_TTL, MAX_METADATA_TTL)
}

impl Mandate {
    /// Whether clients may register themselves by a metadata document.
    pub fn metadata_documents_supported(&self) -> bool {
        self.config.registration_owner.is_some() && self.fetcher.get().is_some()
    }

    /// Refuses to go on unless the registration owner is an active user
    /// (DESIGN §9): self-registered clients need an accountable owner.
    pub async fn check_registration_owner(&self) -> Result<(), Error> {
        if let Some(owner) = self.config.registration_owner {
            let user = self.store.user(owner).await?;
            if !user.is_some_and(|u| u.status == mandate_model::records::UserStatus::Active) {
                return Err(Error::BadInput(format!("registration owner {owner} is not an active user")));
            }
        }
        Ok(())
    }

    /// Whether `POST /oauth/register` is open.
    pub fn dynamic_registration_enabled(&self) -> bool {
        self.config.dynamic_registration && self.config.registration_owner.is_some()
    }

    /// The agent a `client_id` names: an agent id, or the URL of a client
    /// metadata document (fetched, checked and registered as needed).
    /// `None` for an id that names nobody.
    pub async fn client_named(&self, client_id: &str) -> Result<Option<Agent>, Error> {
        if let Ok(id) = client_id.parse::<AgentId>() {
            return match self.store.agent(id).await? {
                Some(a) => self.current_registration(a).await.map(Some),
                None => Ok(None),
            };
        }
        if is_metadata_url(client_id) {
            return self.metadata_client(client_id).await.map(Some);
        }
        Ok(None)
    }

    /// An agent as its client metadata document says now: a client of
    /// origin `metadata_document` is read through its document (fetched
    /// again once its cache time has passed) whichever way it is named, so
    /// that keys or redirects the document dropped stop working.
    pub(crate) async fn current_registration(&self, agent: Agent) -> Result<Agent, Error> {
        match (&agent.origin, &agent.metadata_url) {
            (AgentOrigin::MetadataDocument, Some(url)) => self.metadata_client(&url.clone()).await,
            _ => Ok(agent),
        }
    }

    /// Checks the shape of a metadata document URL: https (loopback http
    /// under `--dev-loopback-fetch`), a path, no fragment or user info, and
    /// spelt exactly as the URL library writes it, so that it compares
    /// exactly.
    fn metadata_url(&self, raw: &str) -> Result<url::Url, Error> {
        let refuse = |why: &str| Error::InvalidClient(format!("client_id {why}"));
        if raw.len() > MAX_URL {
            return Err(refuse("is too long"));
        }
        let url = url::Url::parse(raw).map_err(|_| refuse("is not a URL"))?;
        let scheme_ok = url.scheme() == "https" || (self.config.dev_loopback_fetch && name::is_loopback_http(&url));
        if !scheme_ok {
            return Err(refuse("must be an https URL"));
        }
        if url.path().len() < 2 || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("must be an https URL with a path, without a fragment or credentials"));
        }
        if url.as_str() != raw || url.path().split('/').any(|s| s == "." || s == "..") {
            return Err(refuse("must be written in its normal form"));
        }
        Ok(url)
    }

    /// The agent registered by the metadata document at `url`, fetched
    /// again when its cache time has passed.
    async fn metadata_client(&self, url: &str) -> Result<Agent, Error> {
        let (Some(owner), Some(fetcher)) = (self.config.registration_owner, self.fetcher.get()) else {
            return Err(Error::InvalidClient("this server does not accept client metadata documents".into()));
        };
        self.metadata_url(url)?;
        let now = self.clock.now();
        let unix = now.unix_timestamp();
        let existing = self.store.agent_by_metadata_url(url).await?;
        if let Some(agent) = &existing
            && self.metadata.next_fetch.get(url).is_some_and(|at| unix < at)
        {
            return Ok(agent.clone());
        }
        if let Some((until, why)) = self.metadata.failed.get(url)
            && unix < until
        {
            return Err(Error::InvalidClient(why));
        }
        if existing.is_none() && self.metadata.admit_new(unix).is_err() {
            return Err(Error::InvalidClient("too many new clients are registering now; try again in a minute".into()));
        }
        let mut transient = false;
        let outcome = async {
            let doc = fetcher.fetch(url).await.map_err(|f| {
                transient = f.transient;
                Error::InvalidClient(format!("client metadata document: {}", f.why))
            })?;
            let meta: ClientMetadata = serde_json::from_slice(&doc.body).map_err(|_| {
                Error::InvalidClient("client metadata document is not a JSON object of client metadata".into())
            })?;
            if meta.client_id.as_deref() != Some(url) {
                return Err(Error::InvalidClient("client metadata document: its client_id is not its URL".into()));
            }
            let fetched_jwks = match &meta.jwks_uri {
                Some(u) => {
                    let keys = fetcher.fetch(u).await.map_err(|f| {
                        transient = f.transient;
                        Error::InvalidClient(format!("client jwks_uri: {}", f.why))
                    })?;
                    Some(
                        serde_json::from_slice(&keys.body)
                            .map_err(|_| Error::InvalidClient("client jwks_uri: not JSON".into()))?,
                    )
                }
                None => None,
            };
            let reg = meta.validate(fetched_jwks).map_err(|e| match e {
                Error::InvalidClientMetadata(m) | Error::InvalidRedirectUri(m) => {
                    Error::InvalidClient(format!("client metadata document: {m}"))
                }
                other => other,
            })?;
            Ok((reg, metadata_ttl(doc.max_age, doc.no_store)))
        }
        .await;
        let (reg, ttl) = match outcome {
            Ok(v) => v,
            Err(Error::InvalidClient(why)) => {
                if !transient {
                    self.metadata.failed.insert(url.to_owned(), (unix + FAILURE_TTL, why.clone()));
                }
                let mut event = self.event(kind::CLIENT_REGISTRATION_REFUSED);
                event.decision = Some(DENY.into());
                event.client_id = Some(crate::audit::bounded(url));
                event.reason = Some(crate::audit::bounded(&why));
                self.record(event).await?;
                return Err(Error::InvalidClient(why));
            }
            Err(e) => return Err(e),
        };
        let agent = match existing {
            Some(agent) => {
                let same = agent.name == reg.name
                    && agent.redirect_uris == reg.redirect_uris
                    && agent.jwks == reg.jwks
                    && agent.public == reg.public;
                if same {
                    agent
                } else {
                    let mut event = self.registration_event(&agent, url);
                    event.reason = Some("its client metadata document changed".into());
                    let mut change = Change::new();
                    if agent.jwks != reg.jwks {
                        change.push(crate::ssf::credential_change(
                            agent.id,
                            now,
                            mandate_model::ssf::Cause::new(
                                mandate_model::ssf::InitiatingEntity::System,
                                "the client's metadata document published other keys",
                            ),
                        ));
                    }
                    let change = change
                        .with(Mutation::UpdateAgentRegistration {
                            id: agent.id,
                            name: reg.name.clone(),
                            redirect_uris: reg.redirect_uris.clone(),
                            jwks: reg.jwks.clone(),
                            public: reg.public,
                            at: now,
                        })
                        .with(AuditRecord::new(event).mutation());
                    self.commit_signalling(change).await?;
                    Agent {
                        name: reg.name,
                        redirect_uris: reg.redirect_uris,
                        jwks: reg.jwks,
                        public: reg.public,
                        ..agent
                    }
                }
            }
            None => {
                let agent = self.self_registered(owner, reg, AgentOrigin::MetadataDocument, Some(url))?;
                let event = self.registration_event(&agent, url);
                let change =
                    Change::new().with(Mutation::InsertAgent(agent.clone())).with(AuditRecord::new(event).mutation());
                match self.store.commit(change).await {
                    Ok(_) => agent,
                    // Registered at the same moment by another request.
                    Err(crate::StoreError::Conflict(_)) => self
                        .store
                        .agent_by_metadata_url(url)
                        .await?
                        .ok_or_else(|| Error::Unavailable("a registration raced and vanished".into()))?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let next = unix.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        self.metadata.next_fetch.insert(url.to_owned(), next);
        self.metadata.failed.remove(url);
        Ok(agent)
    }

    /// A new self-registered agent, owned by the registration owner.
    fn self_registered(
        &self,
        owner: mandate_model::UserId,
        reg: Registration,
        origin: AgentOrigin,
        url: Option<&str>,
    ) -> Result<Agent, Error> {
        let now = self.clock.now();
        Ok(Agent {
            id: AgentId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?),
            name: reg.name,
            owner,
            kind: AgentKind::Persistent,
            parent: None,
            status: AgentStatus::Active,
            expires_at: None,
            description: Some(match url {
                Some(u) => format!("registered itself by its client metadata document {u}"),
                None => "registered itself (RFC 7591)".into(),
            }),
            scopes: None,
            jwks: reg.jwks,
            redirect_uris: reg.redirect_uris,
            created_at: now,
            secret_hash: None,
            suspended_by: None,
            origin,
            metadata_url: url.map(str::to_owned),
            public: reg.public,
            federated_credentials: Vec::new(),
            limits: Default::default(),
        })
    }

    fn registration_event(&self, agent: &Agent, how: &str) -> mandate_audit::Event {
        let mut event = self.event(kind::CLIENT_REGISTERED);
        event.decision = Some(ALLOW.into());
        event.client_id = Some(agent.id.to_string());
        event.subject = Some(agent.owner.to_string());
        event.resource = Some(agent.id.to_string());
        event.reason = Some(crate::audit::bounded(&format!("{}: {how}", agent.origin.as_str())));
        event
    }

    /// `POST /oauth/register` (RFC 7591): registers a client as an agent of
    /// origin `dynamic`. Its answer echoes the metadata Mandate kept.
    pub async fn register_client(&self, body: &[u8]) -> Result<RegisteredClient, Error> {
        let Some(owner) = self.config.registration_owner.filter(|_| self.config.dynamic_registration) else {
            return Err(Error::NotFound("dynamic client registration is off".into()));
        };
        let refused = |e: Error| async move {
            let mut event = self.event(kind::CLIENT_REGISTRATION_REFUSED);
            event.decision = Some(DENY.into());
            event.reason = Some(reason(&e));
            self.record(event).await?;
            Err(e)
        };
        let meta: ClientMetadata = match serde_json::from_slice(body) {
            Ok(m) => m,
            Err(_) => return refused(bad_metadata("the body must be a JSON object of client metadata")).await,
        };
        let checked = match meta.application_type.as_deref() {
            None => Err(bad_metadata("application_type is required (web or native)")),
            Some("web" | "native") if meta.jwks_uri.is_some() => {
                Err(bad_metadata("jwks_uri is not accepted at registration: send jwks"))
            }
            Some("web" | "native") if meta.client_id.is_some() => {
                Err(bad_metadata("client_id is assigned by the server"))
            }
            Some(app @ ("web" | "native")) => meta.validate(None).and_then(|reg| {
                // A web client's redirects are https; a native one's are
                // on its own machine (RFC 8252 §7.3).
                let web = app == "web";
                let ok = reg.redirect_uris.iter().all(|u| u.starts_with("https://") == web);
                if ok {
                    Ok(reg)
                } else {
                    Err(Error::InvalidRedirectUri(format!(
                        "a {app} client's redirect URIs must be {}",
                        if web { "https" } else { "loopback http" }
                    )))
                }
            }),
            Some(other) => Err(bad_metadata(format!("application_type {other:?} is not web or native"))),
        };
        let reg = match checked {
            Ok(r) => r,
            Err(e) => return refused(e).await,
        };
        if let Err(retry_after) = self.metadata.admit_new(self.clock.now().unix_timestamp()) {
            return Err(Error::RateLimited { why: "too many new clients are registering now".into(), retry_after });
        }
        let grant_types = reg.grant_types.clone();
        let agent = self.self_registered(owner, reg, AgentOrigin::Dynamic, None)?;
        let event = self.registration_event(&agent, "RFC 7591");
        self.store
            .commit(Change::new().with(Mutation::InsertAgent(agent.clone())).with(AuditRecord::new(event).mutation()))
            .await?;
        Ok(RegisteredClient {
            client_id: agent.id.to_string(),
            client_id_issued_at: agent.created_at.unix_timestamp(),
            client_name: agent.name,
            redirect_uris: agent.redirect_uris,
            token_endpoint_auth_method: if agent.public { "none" } else { "private_key_jwt" },
            grant_types,
            response_types: vec!["code"],
            application_type: meta.application_type.unwrap_or_default(),
            jwks: agent.jwks,
        })
    }
}

/// The RFC 7591 §3.2.1 answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegisteredClient {
    pub client_id: String,
    pub client_id_issued_at: i64,
    pub client_name: String,
    pub redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: &'static str,
    pub grant_types: Vec<String>,
    pub response_types: Vec<&'static str>,
    pub application_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(v: serde_json::Value) -> ClientMetadata {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_public_client_needs_a_name_and_exact_redirects() {
        let ok = meta(serde_json::json!({"client_name": "Inspector", "redirect_uris": ["http://localhost:6274/cb"]}));
        let reg = ok.validate(None).unwrap();
        assert!(reg.public);
        assert_eq!(reg.grant_types, ["authorization_code"]);
        for bad in [
            serde_json::json!({"redirect_uris": ["https://a.example/cb"]}),
            serde_json::json!({"client_name": "X", "redirect_uris": []}),
            serde_json::json!({"client_name": "X", "redirect_uris": ["http://a.example/cb"]}),
            serde_json::json!({"client_name": "X", "redirect_uris": ["https://a.example/cb#f"]}),
            serde_json::json!({"client_name": "X", "redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "client_secret_basic"}),
            serde_json::json!({"client_name": "X", "redirect_uris": ["https://a.example/cb"], "grant_types": ["client_credentials"]}),
            serde_json::json!({"client_name": "X", "redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}),
            serde_json::json!({"client_name": "X", "redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
        ] {
            assert!(meta(bad.clone()).validate(None).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_confidential_client_brings_its_keys() {
        let key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA).unwrap();
        let jwks = serde_json::json!({"keys": [key.public().to_json()]});
        let m = meta(serde_json::json!({"client_name": "Bot", "redirect_uris": ["https://a.example/cb"],
            "token_endpoint_auth_method": "private_key_jwt", "jwks": jwks,
            "grant_types": ["authorization_code", "client_credentials"]}));
        let reg = m.validate(None).unwrap();
        assert!(!reg.public);
        assert_eq!(reg.jwks.as_ref(), Some(&jwks));
        let both = meta(serde_json::json!({"client_name": "Bot", "redirect_uris": ["https://a.example/cb"],
            "jwks": jwks, "jwks_uri": "https://a.example/jwks"}));
        assert!(both.validate(Some(jwks.clone())).is_err());
    }

    #[test]
    fn new_registrations_are_counted_per_minute() {
        let c = MetadataCache::default();
        let t = 1_800_000_000; // a whole minute
        for _ in 0..MAX_NEW_REGISTRATIONS_PER_MINUTE {
            assert!(c.admit_new(t + 5).is_ok());
        }
        assert_eq!(c.admit_new(t + 10), Err(50));
        assert!(c.admit_new(t + 60).is_ok(), "a new minute, a new budget");
    }

    #[test]
    fn cache_times_are_clamped() {
        use std::time::Duration as D;
        assert_eq!(metadata_ttl(None, false), MIN_METADATA_TTL);
        assert_eq!(metadata_ttl(Some(D::from_secs(10)), false), MIN_METADATA_TTL);
        assert_eq!(metadata_ttl(Some(D::from_secs(3600)), false), D::from_secs(3600));
        assert_eq!(metadata_ttl(Some(D::from_secs(10 * 86_400)), false), MAX_METADATA_TTL);
        assert_eq!(metadata_ttl(Some(D::from_secs(3600)), true), MIN_METADATA_TTL);
    }
}
