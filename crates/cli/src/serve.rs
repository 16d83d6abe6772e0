//! `mandate serve`: configuration, store wiring, start-up and shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Args, ValueEnum};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use mandate_core::{Config, Mandate, Store, SystemClock, SystemRandom};
use mandate_jose::kek::{KEK_LEN, Kek};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// The most owners the inventory gauges may name (ADR 0035).
const MAX_TOP_OWNERS: u32 = 100;
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Toggle {
    /// On when the issuer is a loopback http URL (development), else off.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    On,
    Off,
}

/// Flags override `MANDATE_*` environment variables, which override
/// `<data-dir>/mandate.toml`, which overrides the defaults.
#[derive(Debug, Args, Serialize)]
pub struct ServeArgs {
    /// A TOML configuration file (DESIGN §10: `[[upstream_oidc]]` and every
    /// setting below); flags and `MANDATE_*` override it.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// An upstream OpenID Connect provider people sign in with, as a TOML
    /// inline table with the keys of `[[upstream_oidc]]`, e.g.
    /// `{ id = "corp", display_name = "Corp SSO", issuer = "https://idp.example.com", client_id = "mandate",
    /// client_auth = "private_key_jwt", client_key_file = "/etc/mandate/idp.pk8" }`.
    /// Repeatable; added to the providers of the configuration file.
    #[arg(long = "upstream-oidc", value_name = "TABLE", value_parser = parse_upstream_oidc)]
    #[serde(skip)]
    upstream_oidc: Vec<mandate_core::federation::UpstreamIdp>,
    /// An issuer whose JWTs agents authenticate with (workload identity)
    /// or whose ID-JAGs they redeem, as a TOML inline table with the keys
    /// of `[[trusted_issuer]]`, e.g. `{ issuer = "https://token.actions.githubusercontent.com", use = ["workload"] }`.
    /// Repeatable; added to the issuers of the configuration file.
    #[arg(long = "trusted-issuer", value_name = "TABLE", value_parser = parse_trusted_issuer)]
    #[serde(skip)]
    trusted_issuer: Vec<mandate_core::trust::TrustedIssuer>,
    /// The local email-and-password form on the sign-in page (default on).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    password_login: Option<OnOff>,
    /// Where the embedded database and the local master key live.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Public issuer URL (default: http://<listen>).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    /// `postgres://…` to share one PostgreSQL between nodes; default: SQLite in the data dir.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
    /// PostgreSQL only: writer tasks per node, each committing a batch of
    /// changes at a time on a connection of its own (default 1, 1 to 8).
    /// Each writer commits on its own, so more writers make smaller
    /// batches with a commit each (ADR 0040).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_writers: Option<u32>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
    /// Accept `client_secret_basic` (development only).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secrets: Option<Toggle>,
    /// Access token lifetime in seconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token_ttl: Option<i64>,
    /// Longest a client assertion may live, seconds (RFC 7523; default 3600).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    assertion_max_lifetime: Option<i64>,
    /// Algorithm for new signing keys: EdDSA or ES256.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_alg: Option<String>,
    /// How Shared Signals SETs are signed: `token` (the token signing key,
    /// EdDSA by default) or `RS256` (an RSA key of its own, published in
    /// /jwks.json, for receivers that follow the CAEP interoperability
    /// profile; it never signs access tokens).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ssf_signing_alg: Option<String>,
    /// Longest an RFC 8936 long poll of a Shared Signals stream waits for
    /// an event, in seconds (default 30, at most 300; 0 answers at once).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ssf_long_poll: Option<u64>,
    /// Sign an audit checkpoint after this many new events (default 10000)…
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_checkpoint_events: Option<u64>,
    /// …or after this many seconds with new events (default 60).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_checkpoint_interval: Option<i64>,
    /// Most agents a delegation chain may hold (default 4).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_delegation_depth: Option<usize>,
    /// Longest an ephemeral agent may live, seconds (default 3600).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_ephemeral_ttl: Option<i64>,
    /// Most live ephemeral children one agent may have (default 100).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_ephemeral_children: Option<u64>,
    /// Every token request must carry a DPoP proof (RFC 9449).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    require_dpop: bool,
    /// Lifetime of a grant, seconds (default 86400); refresh tokens end with it.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grant_ttl: Option<i64>,
    /// How long a CIBA request or an action approval waits by default, seconds (default 600).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_ttl: Option<i64>,
    /// Require DPoP proofs to carry a server nonce (RFC 9449 §8).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dpop_nonces: bool,
    /// A developer page about this server, advertised in the metadata as
    /// `service_documentation` (default: not advertised).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    service_documentation: Option<String>,
    /// The user (`usr_…`) accountable for clients that register themselves
    /// (client metadata documents, dynamic registration). Without it,
    /// clients cannot register themselves. It must be an active user.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    registration_owner: Option<String>,
    /// RFC 7591 registration at `POST /oauth/register` (default off; needs
    /// `--registration-owner`).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dynamic_registration: Option<OnOff>,
    /// Development only: fetch client metadata documents from loopback
    /// `http://127.0.0.1`, `localhost` and `[::1]` too.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dev_loopback_fetch: bool,
    /// Only fetch client metadata documents from these hosts: comma-separated
    /// names or `*.example.com` patterns (default: any public host).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    client_metadata_hosts: Option<String>,
    /// How long resource servers may cache a status list, seconds (default 60).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    status_list_ttl: Option<i64>,
    /// Seconds between polls for other nodes' policy and key changes while
    /// the PostgreSQL change feed is not listening (default 1; with it
    /// listening, changes are pushed and the poll runs every 30 s).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    sync_interval: Option<i64>,
    /// Access review: days without use before an agent or grant is
    /// `stale` (default 30; 0 = now).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    review_stale_days: Option<u32>,
    /// Access review: days a scope or delegation permission may go unused
    /// before it is `over_broad` or `unused_delegation` (default 30).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    review_unused_days: Option<u32>,
    /// Access review: days ahead in which an ending grant is `expiring` (default 7).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    review_expiring_days: Option<u32>,
    /// Access review: more children than this spawned by one parent in
    /// 24 hours is `sprawl` (default 100).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    review_spawn_rate: Option<u64>,
    /// Serve Prometheus `/metrics` on this address (default: not served).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<SocketAddr>,
    /// Owners named by the inventory gauges `mandate_live_{agents,grants,tokens}{owner}`:
    /// the N holding the most, then one `owner="other"` series (default
    /// 10, at most 100; 0: no owner gauges).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_top_owners: Option<u32>,
    /// Most connections open at once (default 4096; at most the file
    /// descriptors the process may open, less 256).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
    /// Most connections one client address may hold (default 256; trusted proxies are exempt).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections_per_address: Option<usize>,
    /// Which header a trusted proxy records the client in: x-forwarded-for (default) or
    /// forwarded (RFC 7239). Only that one is read; the proxy must append to it.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    forwarded_header: Option<String>,
    /// Seconds a client may take to send a request head, from its first byte (default 10).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    header_timeout: Option<u64>,
    /// Seconds a kept-alive connection may wait for its next request (default 60).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout: Option<u64>,
    /// Seconds a client may take to send a whole request body (default 30).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    body_timeout: Option<u64>,
    /// Proxies whose Forwarded / X-Forwarded-For headers are believed: IPs or CIDRs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    trusted_proxies: Option<Vec<String>>,
    /// Requests a second per client address on the token, CIBA, introspection, revocation,
    /// sign-in and admin endpoints, bursts of twice that (default 100; 0 turns it off).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_per_address: Option<u32>,
    /// Requests a second per client id at the OAuth endpoints (default 50; 0 turns it off).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_per_client: Option<u32>,
    /// Most CIBA requests one agent may have waiting, in all (default 100).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_pending_per_agent: Option<u64>,
    /// …and for any one person (default 5).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_pending_per_agent_user: Option<u64>,
    /// Lifetime of a person's API token when none is asked for, seconds (default 30 days).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    user_token_ttl: Option<i64>,
    /// POST a signed notice to this URL when an approval waits for someone
    /// (https; needs --approval-webhook-secret-file).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_webhook: Option<String>,
    /// A file holding the webhook's HMAC-SHA256 secret (at least 16 bytes,
    /// or `whsec_` and base64).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_webhook_secret_file: Option<PathBuf>,
    /// Email approvers through this SMTP server: `smtp://host:port`
    /// (`?tls=required` for STARTTLS) or `smtps://host:port`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    smtp_url: Option<String>,
    /// The From address of approver emails (needed with --smtp-url).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    smtp_from: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
struct Settings {
    data_dir: PathBuf,
    listen: SocketAddr,
    issuer: Option<String>,
    database_url: Option<String>,
    database_writers: u32,
    log_format: LogFormat,
    client_secrets: Toggle,
    access_token_ttl: i64,
    assertion_max_lifetime: i64,
    signing_alg: String,
    ssf_signing_alg: String,
    ssf_long_poll: u64,
    audit_checkpoint_events: u64,
    audit_checkpoint_interval: i64,
    max_delegation_depth: usize,
    max_ephemeral_ttl: i64,
    max_ephemeral_children: u64,
    require_dpop: bool,
    grant_ttl: i64,
    approval_ttl: i64,
    dpop_nonces: bool,
    service_documentation: Option<String>,
    registration_owner: Option<String>,
    dynamic_registration: OnOff,
    dev_loopback_fetch: bool,
    client_metadata_hosts: Option<String>,
    status_list_ttl: i64,
    sync_interval: i64,
    review_stale_days: u32,
    review_unused_days: u32,
    review_expiring_days: u32,
    review_spawn_rate: u64,
    metrics_listen: Option<SocketAddr>,
    metrics_top_owners: u32,
    max_connections: usize,
    max_connections_per_address: usize,
    forwarded_header: String,
    header_timeout: u64,
    idle_timeout: u64,
    body_timeout: u64,
    trusted_proxies: Vec<String>,
    rate_limit_per_address: u32,
    rate_limit_per_client: u32,
    max_pending_per_agent: u64,
    max_pending_per_agent_user: u64,
    user_token_ttl: i64,
    approval_webhook: Option<String>,
    approval_webhook_secret_file: Option<PathBuf>,
    smtp_url: Option<String>,
    smtp_from: Option<String>,
    master_key: Option<String>,
    admin_token: Option<String>,
    password_login: OnOff,
    /// Upstream OpenID Connect providers people sign in with.
    #[serde(default, skip_serializing)]
    upstream_oidc: Vec<mandate_core::federation::UpstreamIdp>,
    /// Issuers of workload identity tokens and ID-JAGs.
    #[serde(default, skip_serializing)]
    trusted_issuer: Vec<mandate_core::trust::TrustedIssuer>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("mandate-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            issuer: None,
            database_url: None,
            database_writers: mandate_store_postgres::DEFAULT_WRITERS,
            log_format: LogFormat::Text,
            client_secrets: Toggle::Auto,
            access_token_ttl: 300,
            assertion_max_lifetime: 3600,
            signing_alg: "EdDSA".into(),
            ssf_signing_alg: "token".into(),
            ssf_long_poll: 30,
            audit_checkpoint_events: 10_000,
            audit_checkpoint_interval: 60,
            max_delegation_depth: mandate_model::delegation::DEFAULT_MAX_DEPTH,
            max_ephemeral_ttl: 3600,
            max_ephemeral_children: 100,
            require_dpop: false,
            grant_ttl: 86_400,
            approval_ttl: 600,
            dpop_nonces: false,
            service_documentation: None,
            registration_owner: None,
            dynamic_registration: OnOff::Off,
            dev_loopback_fetch: false,
            client_metadata_hosts: None,
            status_list_ttl: 60,
            sync_interval: 1,
            review_stale_days: 30,
            review_unused_days: 30,
            review_expiring_days: 7,
            review_spawn_rate: 100,
            metrics_listen: None,
            metrics_top_owners: 10,
            max_connections: 4_096,
            max_connections_per_address: 256,
            forwarded_header: "x-forwarded-for".into(),
            header_timeout: 10,
            idle_timeout: 60,
            body_timeout: 30,
            trusted_proxies: Vec::new(),
            rate_limit_per_address: 100,
            rate_limit_per_client: 50,
            max_pending_per_agent: 100,
            max_pending_per_agent_user: 5,
            user_token_ttl: 30 * 24 * 3600,
            approval_webhook: None,
            approval_webhook_secret_file: None,
            smtp_url: None,
            smtp_from: None,
            master_key: None,
            admin_token: None,
            password_login: OnOff::On,
            upstream_oidc: Vec::new(),
            trusted_issuer: Vec::new(),
        }
    }
}

/// The approver notifiers the flags ask for: a signed webhook, email.
fn notifiers(settings: &Settings, mandate: &Mandate) -> Result<Vec<Arc<dyn mandate_core::ports::ApproverNotifier>>> {
    let mut out: Vec<Arc<dyn mandate_core::ports::ApproverNotifier>> = Vec::new();
    match (&settings.approval_webhook, &settings.approval_webhook_secret_file) {
        (None, None) => {}
        (Some(url), Some(path)) => {
            let secret = std::fs::read_to_string(path)
                .with_context(|| format!("reading approval_webhook_secret_file {}", path.display()))?;
            let webhook = mandate_server::notify::WebhookNotifier::new(
                url,
                &secret,
                settings.dev_loopback_fetch,
                mandate.clock(),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            out.push(Arc::new(webhook));
        }
        _ => bail!("approval_webhook and approval_webhook_secret_file go together"),
    }
    match (&settings.smtp_url, &settings.smtp_from) {
        (None, None) => {}
        (Some(url), Some(from)) => {
            let smtp = mandate_server::notify::SmtpNotifier::new(url, from).map_err(|e| anyhow::anyhow!(e))?;
            out.push(Arc::new(smtp));
        }
        _ => bail!("smtp_url and smtp_from go together"),
    }
    Ok(out)
}

/// One `--trusted-issuer`: a TOML inline table, read as one
/// `[[trusted_issuer]]` of the file is.
fn parse_trusted_issuer(table: &str) -> Result<mandate_core::trust::TrustedIssuer, String> {
    #[derive(Deserialize)]
    struct One {
        trusted_issuer: mandate_core::trust::TrustedIssuer,
    }
    let one: One = Figment::from(Toml::string(&format!("trusted_issuer = {table}")))
        .extract()
        .map_err(|e| format!("--trusted-issuer takes a TOML inline table with the keys of [[trusted_issuer]]: {e}"))?;
    Ok(one.trusted_issuer)
}

/// One `--upstream-oidc`: a TOML inline table, read as one
/// `[[upstream_oidc]]` of the file is.
fn parse_upstream_oidc(table: &str) -> Result<mandate_core::federation::UpstreamIdp, String> {
    #[derive(Deserialize)]
    struct One {
        upstream_oidc: mandate_core::federation::UpstreamIdp,
    }
    let one: One = Figment::from(Toml::string(&format!("upstream_oidc = {table}")))
        .extract()
        .map_err(|e| format!("--upstream-oidc takes a TOML inline table with the keys of [[upstream_oidc]]: {e}"))?;
    Ok(one.upstream_oidc)
}

fn load_settings(args: &ServeArgs) -> Result<Settings> {
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| std::env::var_os("MANDATE_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("mandate-data"));
    let mut figment =
        Figment::from(Serialized::defaults(Settings::default())).merge(Toml::file(data_dir.join("mandate.toml")));
    if let Some(file) = &args.config {
        if !file.exists() {
            bail!("the configuration file {} does not exist", file.display());
        }
        figment = figment.merge(Toml::file(file));
    }
    let mut settings: Settings = figment
        .merge(Env::prefixed("MANDATE_"))
        .merge(Serialized::defaults(args))
        .extract()
        .context("reading the configuration")?;
    settings.upstream_oidc.extend(args.upstream_oidc.iter().cloned());
    settings.trusted_issuer.extend(args.trusted_issuer.iter().cloned());
    Ok(settings)
}

pub(crate) fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The key-encryption key: `MANDATE_MASTER_KEY`, or a 0600 file in the data dir.
fn master_key(settings: &Settings) -> Result<Kek> {
    if let Some(b64) = &settings.master_key {
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(b64.trim()).context("MANDATE_MASTER_KEY is not base64")?;
        if bytes.len() != KEK_LEN {
            bail!("MANDATE_MASTER_KEY must decode to {KEK_LEN} bytes");
        }
        return Ok(Kek::from_bytes(&bytes)?);
    }
    let path = settings.data_dir.join("master.key");
    if !path.exists() {
        crate::write_private(&path, &Kek::generate_bytes()?)?;
        tracing::info!(path = %path.display(), "created a local master key; set MANDATE_MASTER_KEY to share one between nodes");
    }
    check_private(&path)?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Kek::from_bytes(&bytes)?)
}

fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!("{} must not be readable by group or others (chmod 600)", path.display());
    }
    Ok(())
}

/// The one place a store is chosen: PostgreSQL for a `postgres://` URL,
/// otherwise SQLite (in the data dir by default).
pub(crate) async fn open_store(data_dir: &Path, database_url: Option<&str>) -> Result<Arc<dyn Store>> {
    open_store_with(data_dir, database_url, mandate_store_postgres::DEFAULT_WRITERS).await
}

/// [`open_store`], with `writers` writer tasks on PostgreSQL.
async fn open_store_with(data_dir: &Path, database_url: Option<&str>, writers: u32) -> Result<Arc<dyn Store>> {
    match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(mandate_store_postgres::PostgresStore::connect_with_writers(url, writers).await?))
        }
        Some(url) if url.starts_with("sqlite:") => Ok(Arc::new(mandate_store_sqlite::open_url(url).await?)),
        Some(other) => bail!("unsupported database URL {other:?}: use postgres://… or sqlite://…"),
        None => Ok(Arc::new(mandate_store_sqlite::SqliteStore::open(&data_dir.join("mandate.db")).await?)),
    }
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let settings = load_settings(&args)?;
    init_logging(settings.log_format);
    std::fs::create_dir_all(&settings.data_dir).with_context(|| format!("creating {}", settings.data_dir.display()))?;
    let issuer = settings.issuer.clone().unwrap_or_else(|| format!("http://{}", settings.listen));
    let mut config = Config::new(&issuer);
    if !(1..=3600).contains(&settings.access_token_ttl) {
        bail!("access_token_ttl must be 1 to 3600 seconds");
    }
    config.access_token_ttl = settings.access_token_ttl;
    if !(1..=86_400).contains(&settings.assertion_max_lifetime) {
        bail!("assertion_max_lifetime must be 1 to 86400 seconds");
    }
    config.assertion_max_lifetime = settings.assertion_max_lifetime;
    config.signing_alg = mandate_jose::KeyAlg::parse(&settings.signing_alg)?;
    config.ssf_rs256 = match settings.ssf_signing_alg.as_str() {
        "token" => false,
        "RS256" => true,
        other => bail!("ssf_signing_alg {other:?} is not token or RS256"),
    };
    if settings.ssf_long_poll > 300 {
        bail!("ssf_long_poll must be at most 300 seconds");
    }
    config.ssf_long_poll = settings.ssf_long_poll;
    if settings.audit_checkpoint_events == 0 || settings.audit_checkpoint_interval < 1 {
        bail!("audit_checkpoint_events and audit_checkpoint_interval must be at least 1");
    }
    config.audit_checkpoint_events = settings.audit_checkpoint_events;
    config.audit_checkpoint_interval = settings.audit_checkpoint_interval;
    if !(1..=16).contains(&settings.max_delegation_depth) {
        bail!("max_delegation_depth must be 1 to 16");
    }
    config.max_delegation_depth = settings.max_delegation_depth;
    if !(1..=86_400).contains(&settings.max_ephemeral_ttl) {
        bail!("max_ephemeral_ttl must be 1 to 86400 seconds");
    }
    config.max_ephemeral_ttl = settings.max_ephemeral_ttl;
    config.max_ephemeral_children = settings.max_ephemeral_children;
    config.require_dpop = settings.require_dpop;
    if !(60..=31_536_000).contains(&settings.grant_ttl) {
        bail!("grant_ttl must be 60 seconds to a year");
    }
    config.grant_ttl = settings.grant_ttl;
    if !(1..=config.max_approval_ttl).contains(&settings.approval_ttl) {
        bail!("approval_ttl must be 1 to {} seconds", config.max_approval_ttl);
    }
    config.approval_ttl = settings.approval_ttl;
    config.dpop_nonces = settings.dpop_nonces;
    config.service_documentation.clone_from(&settings.service_documentation);
    config.registration_owner = settings
        .registration_owner
        .as_deref()
        .map(|u| u.parse::<mandate_model::UserId>().map_err(|e| anyhow::anyhow!("registration_owner: {e}")))
        .transpose()?;
    config.dynamic_registration = settings.dynamic_registration == OnOff::On;
    if config.dynamic_registration && config.registration_owner.is_none() {
        bail!("dynamic_registration needs registration_owner: every client has an accountable owner");
    }
    config.dev_loopback_fetch = settings.dev_loopback_fetch;
    for idp in &settings.upstream_oidc {
        idp.validate().map_err(|e| anyhow::anyhow!(e))?;
        if settings.upstream_oidc.iter().filter(|o| o.id == idp.id).count() > 1 {
            bail!("upstream_oidc id {:?} is used twice", idp.id);
        }
    }
    config.upstream_oidc.clone_from(&settings.upstream_oidc);
    mandate_core::trust::validate_issuers(&settings.trusted_issuer, settings.dev_loopback_fetch)
        .map_err(|e| anyhow::anyhow!(e))?;
    config.trusted_issuers.clone_from(&settings.trusted_issuer);
    config.password_login = settings.password_login == OnOff::On;
    if !config.password_login && config.upstream_oidc.is_empty() {
        bail!("password_login = off needs at least one [[upstream_oidc]]: nobody could sign in");
    }
    let metadata_hosts = settings
        .client_metadata_hosts
        .as_deref()
        .map(|h| h.parse::<mandate_fetch::HostPatterns>().map_err(|e| anyhow::anyhow!("client_metadata_hosts: {e}")))
        .transpose()?;
    if !(1..=86_400).contains(&settings.status_list_ttl) {
        bail!("status_list_ttl must be 1 second to a day");
    }
    config.status_list_ttl = settings.status_list_ttl;
    if !(1..=mandate_store_postgres::MAX_WRITERS).contains(&settings.database_writers) {
        bail!("database_writers must be 1 to {}", mandate_store_postgres::MAX_WRITERS);
    }
    if !(1..=3_600).contains(&settings.sync_interval) {
        bail!("sync_interval must be 1 second to an hour");
    }
    config.sync_interval = settings.sync_interval;
    config.review = mandate_core::review::Thresholds {
        spawn_rate: settings.review_spawn_rate,
        ..mandate_core::review::Thresholds::default()
    }
    .with(mandate_core::review::ThresholdOverrides {
        stale_days: Some(settings.review_stale_days),
        unused_days: Some(settings.review_unused_days),
        expiring_days: Some(settings.review_expiring_days),
    })
    .map_err(|e| anyhow::anyhow!("review thresholds: {e}"))?;
    if settings.metrics_top_owners > MAX_TOP_OWNERS {
        bail!("metrics_top_owners must be 0 to {MAX_TOP_OWNERS}: each owner is a metrics series");
    }
    config.metrics_top_owners = settings.metrics_top_owners;
    let issuer = url::Url::parse(&config.issuer).map_err(|e| anyhow::anyhow!("the issuer is not a URL: {e}"))?;
    let loopback = mandate_model::name::is_loopback_http(&issuer);
    config.allow_client_secrets = match settings.client_secrets {
        Toggle::On => true,
        Toggle::Off => false,
        Toggle::Auto => loopback,
    };
    if config.allow_client_secrets && !loopback {
        tracing::warn!("client_secret_basic is enabled on a non-loopback issuer; it is meant for development only");
    }
    if !(issuer.scheme() == "https" || loopback) {
        bail!("the issuer must be an https URL (or loopback http for development)");
    }
    if !issuer.username().is_empty()
        || issuer.password().is_some()
        || issuer.query().is_some()
        || issuer.fragment().is_some()
    {
        bail!("the issuer must have no user info, query or fragment (RFC 8414 §2)");
    }
    if settings.max_pending_per_agent == 0 || settings.max_pending_per_agent_user == 0 {
        bail!("max_pending_per_agent and max_pending_per_agent_user must be at least 1");
    }
    config.max_pending_per_agent = settings.max_pending_per_agent;
    config.max_pending_per_agent_user = settings.max_pending_per_agent_user;
    if !(60..=config.max_user_token_ttl).contains(&settings.user_token_ttl) {
        bail!("user_token_ttl must be 60 seconds to a year");
    }
    config.user_token_ttl = settings.user_token_ttl;
    let edge = edge_config(&settings)?;
    let kek = master_key(&settings)?;
    let store =
        open_store_with(&settings.data_dir, settings.database_url.as_deref(), settings.database_writers).await?;
    let mandate = Arc::new(Mandate::open(store, Arc::new(SystemClock), Arc::new(SystemRandom), kek, config).await?);
    if !mandate.config().trusted_issuers.is_empty() {
        let fetcher = mandate_server::fetch::GuardedFetcher::for_issuers(settings.dev_loopback_fetch)?;
        mandate.set_issuer_fetcher(Arc::new(fetcher));
    }
    if mandate.config().registration_owner.is_some() {
        mandate.check_registration_owner().await?;
        let fetcher = mandate_server::fetch::GuardedFetcher::new(settings.dev_loopback_fetch, metadata_hosts)?;
        mandate.set_metadata_fetcher(Arc::new(fetcher));
    }
    mandate.set_notifiers(notifiers(&settings, &mandate)?);
    if let Some(token) = mandate.ensure_admin_token(settings.admin_token.as_deref()).await? {
        // Printed once, on the first start, so that the operator can keep it.
        eprintln!("admin token (shown once): {token}");
    }
    let listener =
        tokio::net::TcpListener::bind(settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        issuer = %mandate.config().issuer,
        max_connections = edge.connections.max_connections,
        "mandate is serving"
    );
    if let Some(addr) = settings.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        tracing::info!(listen = %metrics.local_addr()?, "serving /metrics");
        tokio::spawn(async move {
            if let Err(e) = mandate_server::serve_metrics(metrics, shutdown_signal()).await {
                tracing::warn!(error = %e, "the metrics listener stopped");
            }
        });
    }
    mandate_server::serve(listener, mandate_server::AppState::with_edge(mandate, edge), shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Connection limits, trusted proxies and rate limits from the settings.
/// Raises the soft file-descriptor limit to the hard one first, and keeps
/// the connection cap below it.
fn edge_config(settings: &Settings) -> Result<mandate_server::edge::EdgeConfig> {
    use mandate_server::edge::{EdgeConfig, ForwardedHeader, Rate};
    let fds = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the file-descriptor limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft).unwrap_or(1024)
        }
    };
    // Room for the store, the log and the listener's own descriptors.
    let most = usize::try_from(fds.saturating_sub(256)).unwrap_or(usize::MAX).max(64);
    if settings.max_connections == 0 || settings.max_connections_per_address == 0 {
        bail!("max_connections and max_connections_per_address must be at least 1");
    }
    if settings.max_connections > most {
        tracing::warn!(
            asked = settings.max_connections,
            most,
            "max_connections lowered to fit the file-descriptor limit"
        );
    }
    for (name, v) in [
        ("header_timeout", settings.header_timeout),
        ("idle_timeout", settings.idle_timeout),
        ("body_timeout", settings.body_timeout),
    ] {
        if !(1..=3600).contains(&v) {
            bail!("{name} must be 1 to 3600 seconds");
        }
    }
    let trusted_proxies = settings
        .trusted_proxies
        .iter()
        .map(|p| {
            let p = p.trim();
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .with_context(|| format!("trusted_proxies: {p:?} is not an IP address or CIDR"))
        })
        .collect::<Result<Vec<_>>>()?;
    let rate = |n: u32| (n > 0).then_some(Rate { per_second: n });
    Ok(EdgeConfig {
        connections: mandate_server::conn::Limits {
            max_connections: settings.max_connections.min(most),
            header_timeout: std::time::Duration::from_secs(settings.header_timeout),
            idle_timeout: std::time::Duration::from_secs(settings.idle_timeout),
            body_timeout: std::time::Duration::from_secs(settings.body_timeout),
            max_per_address: settings.max_connections_per_address,
        },
        trusted_proxies,
        forwarded_header: match settings.forwarded_header.as_str() {
            "x-forwarded-for" => ForwardedHeader::XForwardedFor,
            "forwarded" => ForwardedHeader::Forwarded,
            other => bail!("forwarded_header must be x-forwarded-for or forwarded, not {other:?}"),
        },
        per_address: rate(settings.rate_limit_per_address),
        per_client: rate(settings.rate_limit_per_client),
    })
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_oidc_flags_read_as_the_files_tables() {
        let idp = parse_upstream_oidc(
            r#"{ id = "corp", display_name = "Corp SSO", issuer = "https://idp.example.com", client_id = "mandate", client_secret = "s", allowed_email_domains = ["example.com"], jit_provisioning = true }"#,
        )
        .unwrap();
        assert_eq!((idp.id.as_str(), idp.client_id.as_str()), ("corp", "mandate"));
        assert_eq!(idp.scopes, vec!["openid", "email", "profile"]);
        assert!(idp.jit_provisioning);
        idp.validate().unwrap();
        for bad in [
            "corp",
            "{ id = \"corp\" }",
            "{ id = \"c\", display_name = \"C\", issuer = \"i\", client_id = \"c\", bogus = 1 }",
        ] {
            assert!(parse_upstream_oidc(bad).unwrap_err().contains("--upstream-oidc"), "{bad}");
        }
    }

    #[test]
    fn trusted_issuer_flags_read_as_the_files_tables() {
        let t = parse_trusted_issuer(r#"{ issuer = "https://ci.example", use = ["workload", "id-jag"] }"#).unwrap();
        assert_eq!(t.issuer, "https://ci.example");
        assert_eq!(t.uses.len(), 2);
        for bad in ["ci", r#"{ issuer = "https://ci.example" }"#, r#"{ issuer = "https://x", use = ["all"] }"#] {
            assert!(parse_trusted_issuer(bad).unwrap_err().contains("--trusted-issuer"), "{bad}");
        }
    }

    #[test]
    fn upstream_oidc_flags_add_to_the_file() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mandate.toml");
        std::fs::write(
            &file,
            "[[upstream_oidc]]\nid = \"file\"\ndisplay_name = \"F\"\nissuer = \"https://f.example.com\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "mandate",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--upstream-oidc",
            r#"{ id = "flag", display_name = "G", issuer = "https://g.example.com", client_id = "c", client_secret = "s" }"#,
        ])
        .unwrap();
        let settings = load_settings(&cli.serve).unwrap();
        let ids: Vec<&str> = settings.upstream_oidc.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, vec!["file", "flag"]);
    }
}
