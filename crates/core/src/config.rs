use mandate_jose::KeyAlg;

/// What the use cases need to know about the deployment.
#[derive(Debug, Clone)]
pub struct Config {
    /// The issuer URL, without a trailing slash; also Mandate's own resource identifier.
    pub issuer: String,
    /// Lifetime of access tokens, seconds (DESIGN §2: 5 minutes).
    pub access_token_ttl: i64,
    /// Longest a client assertion may live, seconds (RFC 7523; 60 minutes).
    pub assertion_max_lifetime: i64,
    /// Clock skew tolerated on incoming JWTs, seconds.
    pub leeway: i64,
    /// Whether `client_secret_basic` is accepted (development only).
    pub allow_client_secrets: bool,
    /// Algorithm for new signing keys.
    pub signing_alg: KeyAlg,
    /// Longest an ephemeral agent may live, seconds.
    pub max_ephemeral_ttl: i64,
    /// Most agents a delegation chain may hold (DESIGN §3.2: 4).
    pub max_delegation_depth: usize,
    /// Most live ephemeral children one agent may have at once.
    pub max_ephemeral_children: u64,
    /// Whether every token request must carry a DPoP proof (RFC 9449).
    pub require_dpop: bool,
    /// Lifetime of a grant, seconds; refresh tokens end with it.
    pub grant_ttl: i64,
    /// How long a CIBA request or an action approval waits by default, and
    /// at most, seconds.
    pub approval_ttl: i64,
    pub max_approval_ttl: i64,
    /// The CIBA polling interval, seconds; faster polls get `slow_down`.
    pub ciba_interval: i64,
    /// Most CIBA requests one agent may have waiting for a person, in all
    /// and for any one person (SECURITY row 45).
    pub max_pending_per_agent: u64,
    pub max_pending_per_agent_user: u64,
    /// How old a DPoP proof's `iat` may be, and how far ahead of the
    /// server's clock, seconds.
    pub dpop_max_age: i64,
    pub dpop_max_skew: i64,
    /// Whether DPoP proofs must carry a server nonce (RFC 9449 §8).
    pub dpop_nonces: bool,
    /// How long a web sign-in lasts, seconds.
    pub session_ttl: i64,
    /// Lifetime of a person's API token when none is asked for, and the
    /// longest one may be given, seconds (30 days and a year).
    pub user_token_ttl: i64,
    pub max_user_token_ttl: i64,
    /// Statuses per status list; a list rotates when it is full.
    pub status_list_size: u64,
    /// How long relying parties may cache a status list (`ttl`), seconds.
    pub status_list_ttl: i64,
    /// Status indexes a node reserves with one store write (ADR 0014). A
    /// node that stops leaves up to two blocks unused; each reservation
    /// is a write outside the token batches, so a small block costs the
    /// writer (on PostgreSQL, a batch the long way per block).
    pub status_block: u64,
    /// A checkpoint is signed once this many events have been appended
    /// since the last one…
    pub audit_checkpoint_events: u64,
    /// …or once this many seconds have passed with new events.
    pub audit_checkpoint_interval: i64,
    /// A page for developers about this server, advertised in metadata as
    /// `service_documentation` (RFC 8414 §2).
    pub service_documentation: Option<String>,
    /// The user accountable for self-registered clients (DESIGN §9);
    /// without one, clients cannot register themselves.
    pub registration_owner: Option<mandate_model::UserId>,
    /// RFC 7591 registration at `POST /oauth/register` (needs an owner).
    pub dynamic_registration: bool,
    /// Development only: client ids and documents on loopback over http.
    pub dev_loopback_fetch: bool,
    /// Whether Shared Signals SETs are signed with an RSA key (RS256, the
    /// CAEP interoperability profile) instead of the token signing key.
    pub ssf_rs256: bool,
    /// Longest an RFC 8936 long poll (`returnImmediately` false, the
    /// default) waits for an event, in seconds; 0 answers every poll at
    /// once.
    pub ssf_long_poll: u64,
    /// Upstream OpenID Connect providers people may sign in with (DESIGN §10).
    pub upstream_oidc: Vec<crate::federation::UpstreamIdp>,
    /// Whether the sign-in page offers the local email-and-password form
    /// (`--password-login off` hides it and refuses its posts).
    pub password_login: bool,
    /// Issuers whose JWTs are workload identity or ID-JAGs (DESIGN §10).
    pub trusted_issuers: Vec<crate::trust::TrustedIssuer>,
    /// Seconds between polls of the store for other nodes' policy and key
    /// changes while no change feed is listening (DESIGN §8); with one, the
    /// poll runs only every `SYNC_WHILE_LISTENING` seconds, as a safeguard.
    pub sync_interval: i64,
    /// The access review's default thresholds (DESIGN §12).
    pub review: crate::review::Thresholds,
    /// How many owners the inventory gauges name (the others are summed
    /// as `owner="other"`); 0: no owner gauges (ADR 0035).
    pub metrics_top_owners: u32,
}

/// Seconds between safeguard polls while a change feed listens: a feed on a
/// connection that died without a word (a half-open TCP connection) is
/// stale at most this long.
pub const SYNC_WHILE_LISTENING: i64 = 30;

impl Config {
    pub fn new(issuer: impl Into<String>) -> Self {
        let issuer: String = issuer.into();
        Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            access_token_ttl: 300,
            assertion_max_lifetime: 3600,
            leeway: 60,
            allow_client_secrets: false,
            signing_alg: KeyAlg::EdDSA,
            max_ephemeral_ttl: 3600,
            max_delegation_depth: mandate_model::delegation::DEFAULT_MAX_DEPTH,
            max_ephemeral_children: 100,
            require_dpop: false,
            grant_ttl: 24 * 3600,
            approval_ttl: 600,
            max_approval_ttl: 3600,
            ciba_interval: 5,
            max_pending_per_agent: 100,
            max_pending_per_agent_user: 5,
            dpop_max_age: 60,
            dpop_max_skew: 5,
            dpop_nonces: false,
            session_ttl: 8 * 3600,
            user_token_ttl: 30 * 24 * 3600,
            max_user_token_ttl: 365 * 24 * 3600,
            status_list_size: 1 << 20,
            status_list_ttl: 60,
            status_block: 4096,
            audit_checkpoint_events: 10_000,
            audit_checkpoint_interval: 60,
            service_documentation: None,
            registration_owner: None,
            dynamic_registration: false,
            dev_loopback_fetch: false,
            ssf_rs256: false,
            ssf_long_poll: 30,
            upstream_oidc: Vec::new(),
            password_login: true,
            trusted_issuers: Vec::new(),
            sync_interval: 1,
            review: crate::review::Thresholds::default(),
            metrics_top_owners: 10,
        }
    }

    /// The server's credential policy: what every agent's limits tighten
    /// (DESIGN §13). Any client authentication the server accepts is
    /// allowed (public clients included), until an agent narrows it.
    pub fn default_limits(&self) -> mandate_model::limits::Limits {
        mandate_model::limits::Limits {
            max_token_ttl: self.access_token_ttl,
            allowed_grant_types: None,
            max_delegation_depth: self.max_delegation_depth,
            allowed_resources: None,
            require_dpop: self.require_dpop,
            max_ephemeral_children: self.max_ephemeral_children,
            max_ephemeral_ttl: self.max_ephemeral_ttl,
            allowed_client_auth: None,
        }
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth/token", self.issuer)
    }

    /// The URI of status list `n`.
    pub fn status_list_uri(&self, n: u64) -> String {
        format!("{}/statuslists/{n}", self.issuer)
    }
}
