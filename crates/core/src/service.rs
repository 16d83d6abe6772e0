//! The service object: wiring of ports, start-up, and the authentication
//! of callers shared by every use case.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use mandate_jose::assertion::{self, AssertionRules};
use mandate_jose::kek::Kek;
use mandate_jose::{JwkSet, SigningKey};
use mandate_model::UserId;
use mandate_model::records::{Agent, ClientId, Resource};
use mandate_policy::PolicyEngine;
use time::{Duration, OffsetDateTime};

use crate::audit::{AuditKeys, AuditRecord, kind};
use crate::keyring::{KeyRing, unwrap_key};
use crate::ports::{Clock, Random};
use crate::store::{Change, KeyUse, Mutation, Store};
use crate::{Config, Error, secrets};
use mandate_model::ssf::{Cause, InitiatingEntity};

const ADMIN_TOKEN_SETTING: &str = "admin_token_sha256";

/// Bytes the parsed client key sets may hold (estimated): a one-key set
/// weighs about 800 bytes, so about 40,000 clients.
const CLIENT_KEYS_BYTES: u64 = 32 << 20;

/// Who called the administration API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Admin,
    User(UserId),
    /// A person in [`Mandate::ADMINS_GROUP`] acting on an admin console
    /// page (ADR 0037). Only the console's own operations accept it (each
    /// checks the membership again); everywhere else it is just that
    /// person. The trail names the person, never "admin".
    ConsoleAdmin(UserId),
}

impl Caller {
    /// The person calling, if it is not the admin token.
    pub fn person(self) -> Option<UserId> {
        match self {
            Caller::Admin => None,
            Caller::User(u) | Caller::ConsoleAdmin(u) => Some(u),
        }
    }
}

/// A signing key without its private part: what the console lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyInfo {
    pub kid: String,
    pub alg: String,
    pub purpose: KeyUse,
    pub created_at: OffsetDateTime,
    /// When a newer key replaced it; `None` for a key in use.
    pub retired_at: Option<OffsetDateTime>,
}

/// A client authenticated at an OAuth endpoint.
#[derive(Debug, Clone)]
pub struct AuthenticatedClient {
    pub id: ClientId,
    pub agent: Option<Agent>,
    pub resource: Option<Resource>,
    /// The assertion's `jti` and `exp`, burned in the same change as the
    /// request's own writes.
    pub assertion: Option<(String, OffsetDateTime)>,
    /// How it authenticated; `None` for a public client, which holds no
    /// credential (DESIGN §13 `allowed_client_auth`).
    pub method: Option<mandate_model::limits::ClientAuth>,
}

impl AuthenticatedClient {
    /// The mutation that makes the assertion single-use, if there was one.
    pub fn burn(&self) -> Option<Mutation> {
        self.assertion.as_ref().map(|(jti, exp)| Mutation::ConsumeAssertionJti {
            client: self.id,
            jti: jti.clone(),
            expires_at: *exp,
        })
    }
}

/// The setting that pins the status-list size of a store.
pub const STATUS_LIST_SIZE_SETTING: &str = "status_list_size";

/// Mandate's use cases over a store, a clock and a random source.
pub struct Mandate {
    pub(crate) store: Arc<dyn Store>,
    /// The same store, as the caching layer it is: for the newest epoch
    /// requests have read.
    pub(crate) caching: Arc<crate::cache::CachingStore>,
    /// Whether other nodes share the store (it has a change feed): only
    /// then can policies and keys change behind this node's back.
    shared: bool,
    /// The store epoch the policies and keys were last loaded at.
    synced_epoch: std::sync::atomic::AtomicU64,
    /// One reload at a time; the requests that wait for it then find it done.
    pub(crate) sync_gate: tokio::sync::Mutex<()>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: Arc<dyn Random>,
    pub(crate) config: Config,
    pub(crate) kek: Kek,
    pub(crate) keys: RwLock<Arc<KeyRing>>,
    pub(crate) policy: RwLock<PolicyEngine>,
    /// Resources by identifier. Resources are immutable once registered, so
    /// a cached entry is never stale; a miss falls through to the store.
    pub(crate) resources: RwLock<HashMap<String, Arc<Resource>>>,
    /// Parsed client key sets, with the SHA-256 of the registered JWKS each
    /// was parsed from: reused while it is unchanged. Bounded by bytes
    /// (`crate::footprint`): it held a set, and a copy of its JSON, for
    /// every client that ever authenticated.
    client_keys: crate::footprint::Cache<ClientId, ([u8; 32], Arc<JwkSet>)>,
    /// The key that signs audit checkpoints.
    pub(crate) audit_keys: RwLock<AuditKeys>,
    /// Allowed checks already recorded, by token, action and resource,
    /// with the seq of the event that recorded them (docs/delegation.md).
    pub(crate) checked: crate::footprint::Cache<(mandate_model::Jti, String, String), u64>,
    /// Verified tokens, live chains and decisions, by store epoch.
    pub(crate) caches: crate::chain::Caches,
    /// Status indexes reserved by this node, and the lists it has built.
    pub(crate) status: crate::status::StatusLists,
    /// Failed web sign-ins, per email and per client address.
    pub(crate) sign_in_failures: crate::session::Failures,
    /// Repeated refusals being counted before they are written.
    pub(crate) refusals: crate::refusals::Refusals,
    /// The per-client rate limit, set by the server.
    client_gate: std::sync::OnceLock<Arc<dyn crate::ports::ClientGate>>,
    /// Fetches client metadata documents, set by the server.
    pub(crate) fetcher: std::sync::OnceLock<Arc<dyn crate::ports::MetadataFetcher>>,
    /// Client metadata documents: when each URL is next fetched, and
    /// recent failures (so a bad URL is not fetched on every request).
    pub(crate) metadata: crate::registration::MetadataCache,
    /// Fetches trusted issuers' discovery documents and keys, set by the server.
    pub(crate) issuer_fetcher: std::sync::OnceLock<Arc<dyn crate::ports::MetadataFetcher>>,
    /// Trusted issuers' key sets.
    pub(crate) issuer_keys: crate::trust::IssuerKeys,
    /// Sends CIBA ping and push callbacks, set by the server.
    pub(crate) callbacks: std::sync::OnceLock<Arc<dyn crate::ports::CallbackSender>>,
    /// Tell approvers that a request waits for them, set by the server.
    pub(crate) notifiers: std::sync::OnceLock<Vec<Arc<dyn crate::ports::ApproverNotifier>>>,
    /// Pushes SETs to Shared Signals receivers, set by the server.
    pub(crate) set_pusher: std::sync::OnceLock<Arc<dyn crate::ssf::SetPusher>>,
    /// Woken when this node queued Shared Signals events.
    pub(crate) signals: tokio::sync::Notify,
    /// Wakes every RFC 8936 long poll waiting on this node when it queued
    /// Shared Signals events.
    pub(crate) polls: tokio::sync::Notify,
    /// The RSA key SETs are signed with under `--ssf-signing-alg RS256`.
    pub(crate) ssf_keys: RwLock<Option<Arc<SigningKey>>>,
    /// The public halves of the SET keys retired within the grace period,
    /// still published so that a receiver that refetches the key set after
    /// a rotation can verify a SET signed just before it.
    ssf_retired: RwLock<Vec<serde_json::Value>>,
}

impl std::fmt::Debug for Mandate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mandate").field("issuer", &self.config.issuer).finish_non_exhaustive()
    }
}

impl Mandate {
    /// Sets the gate every authenticated client passes (once; later calls
    /// change nothing).
    pub fn set_client_gate(&self, gate: Arc<dyn crate::ports::ClientGate>) {
        let _ = self.client_gate.set(gate);
    }

    /// Sets the fetcher for client metadata documents (once).
    pub fn set_metadata_fetcher(&self, fetcher: Arc<dyn crate::ports::MetadataFetcher>) {
        let _ = self.fetcher.set(fetcher);
    }

    /// Passes an authenticated client through the gate, if there is one.
    pub(crate) fn admit_client(&self, client: &ClientId) -> Result<(), Error> {
        match self.client_gate.get() {
            Some(gate) => gate.admit(client),
            None => Ok(()),
        }
    }

    /// The clock (for adapters that stamp what they send).
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The random source (for the web layer's one-off tokens).
    pub fn rng(&self) -> &dyn crate::Random {
        self.rng.as_ref()
    }

    /// Opens the service: loads (or on the first start, creates) the
    /// signing key and loads the current policy set.
    pub async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Random>,
        kek: Kek,
        config: Config,
    ) -> Result<Self, Error> {
        // Agents and users are read on every request; keep them per epoch.
        let caching = Arc::new(crate::cache::CachingStore::new(store));
        let store: Arc<dyn Store> = caching.clone();
        let shared = store.changes().is_some();
        // A token's status position depends on the list size: every node,
        // and every restart, must use the one the store started with.
        let size = config.status_list_size.to_string();
        let put = Mutation::PutSettingIfAbsent { key: STATUS_LIST_SIZE_SETTING.into(), value: size.clone() };
        store.commit(Change::new().with(put)).await?;
        if store.setting(STATUS_LIST_SIZE_SETTING).await?.as_deref() != Some(size.as_str()) {
            return Err(Error::Unavailable(format!(
                "this store's status lists hold a different number of entries than {size}; keep the size it started with"
            )));
        }
        let now = clock.now();
        let grace = Duration::seconds(config.access_token_ttl + config.leeway);
        // Read first: the keys and the policy loaded below are at least this new.
        let opened_at = store.epoch().await?;
        let stored = store.signing_keys().await?;
        let ring = match KeyRing::from_stored(&stored, &kek, &config.issuer, config.leeway, now, grace)? {
            Some(ring) => ring,
            None => {
                let key = SigningKey::generate(config.signing_alg).map_err(|e| Error::Unavailable(e.to_string()))?;
                store.commit(first_key_change(&key, KeyUse::Token, &kek, now)?).await?;
                tracing::info!(kid = key.kid(), alg = key.alg().name(), "generated the first signing key");
                let stored = store.signing_keys().await?;
                KeyRing::from_stored(&stored, &kek, &config.issuer, config.leeway, now, grace)?
                    .ok_or_else(|| Error::Unavailable("no signing key after creating one".into()))?
            }
        };
        let service = Self {
            store,
            caching,
            shared,
            synced_epoch: std::sync::atomic::AtomicU64::new(opened_at),
            sync_gate: tokio::sync::Mutex::new(()),
            clock,
            rng,
            config,
            kek,
            keys: RwLock::new(Arc::new(ring)),
            policy: RwLock::new(PolicyEngine::empty()),
            resources: RwLock::new(HashMap::new()),
            client_keys: crate::footprint::bounded(CLIENT_KEYS_BYTES, 1_024),
            audit_keys: RwLock::new(AuditKeys::default()),
            checked: crate::footprint::bounded(crate::check::REMEMBERED_ALLOWS_BYTES, 160),
            caches: crate::chain::Caches::default(),
            status: crate::status::StatusLists::default(),
            sign_in_failures: crate::session::Failures::default(),
            refusals: crate::refusals::Refusals::default(),
            client_gate: std::sync::OnceLock::new(),
            fetcher: std::sync::OnceLock::new(),
            metadata: crate::registration::MetadataCache::default(),
            issuer_fetcher: std::sync::OnceLock::new(),
            issuer_keys: crate::trust::IssuerKeys::default(),
            callbacks: std::sync::OnceLock::new(),
            notifiers: std::sync::OnceLock::new(),
            set_pusher: std::sync::OnceLock::new(),
            signals: tokio::sync::Notify::new(),
            polls: tokio::sync::Notify::new(),
            ssf_keys: RwLock::new(None),
            ssf_retired: RwLock::new(Vec::new()),
        };
        service.reload_policy().await?;
        service.load_audit_keys().await?;
        service.load_ssf_key().await?;
        Ok(service)
    }

    /// Under `--ssf-signing-alg RS256`: loads the newest unretired RSA key
    /// that signs SETs, creating it on the first start (sealed with the
    /// master key, as every signing key is).
    pub(crate) async fn load_ssf_key(&self) -> Result<(), Error> {
        if !self.config.ssf_rs256 {
            return Ok(());
        }
        let current = |all: &[crate::store::StoredKey]| {
            let mut live: Vec<_> =
                all.iter().filter(|k| k.purpose == KeyUse::Signals && k.retired_at.is_none()).cloned().collect();
            live.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.kid.cmp(&a.kid)));
            live.into_iter().next()
        };
        let mut all = self.store.signing_keys().await?;
        let stored = match current(&all) {
            Some(k) => k,
            None => {
                let key = SigningKey::generate_set_rsa().map_err(|e| Error::Unavailable(e.to_string()))?;
                self.store.commit(first_key_change(&key, KeyUse::Signals, &self.kek, self.clock.now())?).await?;
                tracing::info!(kid = key.kid(), "generated the RS256 key that signs Shared Signals");
                all = self.store.signing_keys().await?;
                current(&all).ok_or_else(|| Error::Unavailable("no SET key after creating one".into()))?
            }
        };
        // Retired keys stay published as long as retired token keys do.
        let grace = Duration::seconds(self.config.access_token_ttl + self.config.leeway);
        let now = self.clock.now();
        let mut retired = Vec::new();
        for k in all.iter().filter(|k| k.purpose == KeyUse::Signals && k.retired_at.is_some_and(|at| at + grace > now))
        {
            let text = k
                .public_jwk
                .as_deref()
                .ok_or_else(|| Error::Unavailable(format!("stored SET key {} has no public key", k.kid)))?;
            let jwk: serde_json::Value = serde_json::from_str(text)
                .map_err(|_| Error::Unavailable(format!("stored SET key {} has an unreadable public key", k.kid)))?;
            retired.push(jwk);
        }
        match self.ssf_retired.write() {
            Ok(mut g) => *g = retired,
            Err(p) => *p.into_inner() = retired,
        }
        if self.ssf_key().is_some_and(|k| k.kid() == stored.kid) {
            return Ok(());
        }
        let der = self
            .kek
            .open(stored.kid.as_bytes(), &stored.wrapped_private)
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let key = SigningKey::from_set_rsa_pkcs8(&der).map_err(|e| Error::Unavailable(e.to_string()))?;
        if key.kid() != stored.kid {
            return Err(Error::Unavailable(format!("stored key {} does not match its kid", stored.kid)));
        }
        match self.ssf_keys.write() {
            Ok(mut g) => *g = Some(Arc::new(key)),
            Err(p) => *p.into_inner() = Some(Arc::new(key)),
        }
        Ok(())
    }

    /// Loads the checkpoint key, creating it (Ed25519) on the first start.
    async fn load_audit_keys(&self) -> Result<(), Error> {
        let mut stored: Vec<_> =
            self.store.signing_keys().await?.into_iter().filter(|k| k.purpose == KeyUse::Audit).collect();
        if stored.iter().all(|k| k.retired_at.is_some()) {
            let key =
                SigningKey::generate(mandate_jose::KeyAlg::EdDSA).map_err(|e| Error::Unavailable(e.to_string()))?;
            self.store.commit(first_key_change(&key, KeyUse::Audit, &self.kek, self.clock.now())?).await?;
            tracing::info!(kid = key.kid(), "generated the audit checkpoint key");
            stored = self.store.signing_keys().await?.into_iter().filter(|k| k.purpose == KeyUse::Audit).collect();
        }
        stored.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.kid.cmp(&a.kid)));
        let mut keys = AuditKeys::default();
        for k in &stored {
            let key = unwrap_key(k, &self.kek)?;
            keys.public.push(key.public().clone());
            if k.retired_at.is_none() && keys.active.is_none() {
                keys.active = Some(Arc::new(key));
            }
        }
        match self.audit_keys.write() {
            Ok(mut g) => *g = keys,
            Err(p) => *p.into_inner() = keys,
        }
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store's change feed, when other nodes share the store.
    pub fn change_feed(&self) -> Option<tokio::sync::watch::Receiver<crate::store::ChangeFeed>> {
        self.store.changes()
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    pub(crate) fn ring(&self) -> Arc<KeyRing> {
        match self.keys.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn engine(&self) -> PolicyEngine {
        match self.policy.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn set_engine(&self, e: PolicyEngine) {
        match self.policy.write() {
            Ok(mut g) => *g = e,
            Err(p) => *p.into_inner() = e,
        }
    }

    /// Loads the current policy set from the store (another node may have
    /// replaced it).
    pub(crate) async fn reload_policy(&self) -> Result<(), Error> {
        let Some(current) = self.store.current_policy().await? else {
            return Ok(());
        };
        if current.version == self.engine().version() {
            return Ok(());
        }
        let actions = self.action_catalog().await?;
        let context = self.context_catalog().await?;
        let engine = crate::admin::compile_off_the_workers(&current.text, actions, context)
            .await?
            .map_err(|e| Error::Unavailable(format!("stored policy set does not compile: {e}")))?;
        self.set_engine(engine);
        Ok(())
    }

    /// Reloads keys when the store's set differs from the loaded one.
    pub(crate) async fn reload_keys(&self) -> Result<(), Error> {
        let all = self.store.signing_keys().await?;
        let audit_kids: Vec<&str> = all.iter().filter(|k| k.purpose == KeyUse::Audit).map(|k| k.kid.as_str()).collect();
        let audit_changed = match self.audit_keys.read() {
            Ok(loaded) => {
                audit_kids.len() != loaded.public.len()
                    || audit_kids.iter().any(|kid| !loaded.public.iter().any(|p| p.kid.as_deref() == Some(*kid)))
            }
            Err(_) => true,
        };
        if audit_changed && let Err(e) = self.load_audit_keys().await {
            // Another node created an audit key (a first-start race), or a
            // key row was planted: either way, token keys still reload.
            tracing::warn!(error = %e, "could not load the audit keys");
        }
        let stored: Vec<crate::store::StoredKey> = all.into_iter().filter(|k| k.purpose == KeyUse::Token).collect();
        let mut kids: Vec<&String> = stored.iter().map(|k| &k.kid).collect();
        kids.sort();
        let mut loaded: Vec<&String> = Vec::new();
        let ring = self.ring();
        loaded.extend(ring.kids.iter());
        loaded.sort();
        let grace = Duration::seconds(self.config.access_token_ttl + self.config.leeway);
        let now = self.clock.now();
        if kids == loaded && ring.verifier.keys.keys.len() == self.live_key_count(&stored, now, grace) {
            return Ok(());
        }
        if let Some(ring) =
            KeyRing::from_stored(&stored, &self.kek, &self.config.issuer, self.config.leeway, now, grace)?
        {
            match self.keys.write() {
                Ok(mut g) => *g = Arc::new(ring),
                Err(p) => *p.into_inner() = Arc::new(ring),
            }
        }
        Ok(())
    }

    fn live_key_count(&self, stored: &[crate::store::StoredKey], now: OffsetDateTime, grace: Duration) -> usize {
        stored.iter().filter(|k| k.retired_at.is_none_or(|at| at + grace > now)).count()
    }

    /// Picks up policy and key changes made by other nodes. Called
    /// periodically by the server.
    pub async fn sync_from_store(&self) -> Result<(), Error> {
        let _one = self.sync_gate.lock().await;
        self.sync_locked().await
    }

    /// Reloads the keys from the store, one load at a time, so that a load
    /// that read an older set never replaces a newer one.
    pub(crate) async fn reload_keys_now(&self) -> Result<(), Error> {
        let _one = self.sync_gate.lock().await;
        self.reload_keys().await
    }

    /// [`Mandate::sync_from_store`], under `sync_gate`: every load of
    /// policies and keys holds it, so they are loaded one at a time, each
    /// from what the store held when it began, and a load that read an
    /// older state never lands after one that read a newer.
    async fn sync_locked(&self) -> Result<(), Error> {
        // Read first: whatever is loaded below is at least this new.
        let epoch = self.store.epoch().await?;
        self.reload_policy().await?;
        self.reload_keys().await?;
        self.load_ssf_key().await?;
        self.synced_epoch.fetch_max(epoch, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Token requests this node decided at an epoch it did not read, and
    /// how many of them ran again because it had moved (decision 0042).
    pub fn optimistic_runs(&self) -> (u64, u64) {
        self.caching.optimistic_runs()
    }

    /// How full each of this node's caches is, against its byte budget
    /// (`crate::footprint`): the `mandate_cache_*` gauges.
    pub fn cache_fill(&self) -> Vec<crate::footprint::CacheFill> {
        self.caching
            .fill()
            .into_iter()
            .chain(self.caches.fill())
            .chain([
                crate::footprint::CacheFill::of("client_keys", &self.client_keys),
                crate::footprint::CacheFill::of("remembered_allows", &self.checked),
            ])
            .collect()
    }

    /// The policy engine to decide with. On a store other nodes share, a
    /// request has read the store epoch before it decides (authenticating
    /// its client, or finding its token's chain); if any request has seen
    /// an epoch newer than the one the policies and keys were loaded at,
    /// another node may have changed them, and they are reloaded first,
    /// whether or not its notification has arrived (decision 0030).
    pub(crate) async fn fresh_engine(&self) -> Result<PolicyEngine, Error> {
        use std::sync::atomic::Ordering;
        let seen = self.caching.seen_epoch();
        if self.shared && self.synced_epoch.load(Ordering::Acquire) < seen {
            let _one = self.sync_gate.lock().await;
            if self.synced_epoch.load(Ordering::Acquire) < seen {
                self.sync_locked().await?;
            }
        }
        Ok(self.engine())
    }

    /// The scopes a client may ask for, for discovery: every registered
    /// resource's, and `offline_access`.
    pub async fn scopes_supported(&self) -> Result<BTreeSet<String>, Error> {
        let mut scopes: BTreeSet<String> = BTreeSet::from([crate::authorize::OFFLINE_ACCESS.to_owned()]);
        for r in self.store.resources().await? {
            scopes.extend(r.scopes.keys().cloned());
        }
        Ok(scopes)
    }

    /// The RFC 9396 detail types the registered resources declare, for
    /// discovery.
    pub async fn authorization_details_types_supported(&self) -> Result<BTreeSet<String>, Error> {
        let mut types = BTreeSet::new();
        for r in self.store.resources().await? {
            types.extend(r.authorization_details_types.keys().cloned());
        }
        Ok(types)
    }

    /// Every action the registered resources declare, for the schema.
    pub(crate) async fn action_catalog(&self) -> Result<BTreeSet<String>, Error> {
        let mut actions = BTreeSet::new();
        for r in self.store.resources().await? {
            actions.extend(r.all_actions());
        }
        Ok(actions)
    }

    /// Every `context` key the registered resources declare, for the
    /// schema. Registration keeps one type per key across resources.
    pub(crate) async fn context_catalog(
        &self,
    ) -> Result<std::collections::BTreeMap<String, mandate_model::records::ContextType>, Error> {
        let mut context = std::collections::BTreeMap::new();
        for r in self.store.resources().await? {
            context.extend(r.context.iter().map(|(k, t)| (k.clone(), *t)));
            // The fields of `context.authorization_detail` (RFC 9396), under
            // their prefix; registration keeps one type per field.
            let fields = crate::details::field_types(&r.authorization_details_types).unwrap_or_default();
            context.extend(fields.into_iter().map(|(k, t)| (format!("{}{k}", mandate_policy::DETAIL_PREFIX), t)));
        }
        Ok(context)
    }

    // ----- administration credentials -----

    /// Makes sure an admin token exists. On the first start, `seed` (from
    /// `MANDATE_ADMIN_TOKEN`) becomes it; without a seed a token is generated
    /// and returned so that it can be printed once. Later starts return `None`.
    pub async fn ensure_admin_token(&self, seed: Option<&str>) -> Result<Option<String>, Error> {
        if let Some(existing) = self.store.setting(ADMIN_TOKEN_SETTING).await? {
            if let Some(seed) = seed
                && !secrets::matches(seed, &existing)
            {
                tracing::warn!(
                    "MANDATE_ADMIN_TOKEN differs from the admin token seeded on the first start; the stored one stays in force"
                );
            }
            return Ok(None);
        }
        let (token, generated) = match seed {
            Some(s) if s.len() >= 16 => (s.to_owned(), false),
            Some(_) => {
                return Err(Error::BadInput("MANDATE_ADMIN_TOKEN must be at least 16 characters".into()));
            }
            None => (secrets::generate(secrets::ADMIN_TOKEN_PREFIX, self.rng.as_ref())?, true),
        };
        let mut event = self.event(kind::ADMIN_TOKEN_SEEDED);
        event.decision = Some(crate::audit::ALLOW.into());
        // `count` says whether this node's seed took (1) or another node's
        // had already (0): nodes that start together race for it.
        event.reason = Some(
            if generated {
                "generated; count 0 means another node seeded it first"
            } else {
                "from MANDATE_ADMIN_TOKEN; count 0 means another node seeded it first"
            }
            .into(),
        );
        let mut change = Change::new();
        let seeded =
            change.push(Mutation::PutSettingIfAbsent { key: ADMIN_TOKEN_SETTING.into(), value: secrets::hash(&token) });
        change.push(AuditRecord::counting(event, &[seeded]).mutation());
        let receipt = self.store.commit(change).await?;
        // Another node may have seeded it first.
        Ok((generated && receipt.affected(seeded)? == 1).then_some(token))
    }

    /// Authenticates a bearer token on the administration API.
    pub async fn authenticate_caller(&self, bearer: &str) -> Result<Caller, Error> {
        if bearer.starts_with(secrets::USER_TOKEN_PREFIX) {
            // A token that expired or was revoked authenticates nobody.
            let token = self
                .store
                .user_token_by_hash(&secrets::hash(bearer))
                .await?
                .filter(|t| t.is_live(self.clock.now()))
                .ok_or(Error::Unauthenticated)?;
            let user = token.user;
            let record = self.store.user(user).await?.ok_or(Error::Unauthenticated)?;
            if record.status != mandate_model::records::UserStatus::Active {
                return Err(Error::Unauthenticated);
            }
            return Ok(Caller::User(user));
        }
        let stored = self.store.setting(ADMIN_TOKEN_SETTING).await?.ok_or(Error::Unauthenticated)?;
        if secrets::matches(bearer, &stored) { Ok(Caller::Admin) } else { Err(Error::Unauthenticated) }
    }

    /// Refuses, and records the refusal of, a call only the admin may make.
    pub(crate) async fn require_admin(&self, caller: Caller) -> Result<(), Error> {
        match caller {
            Caller::Admin => Ok(()),
            Caller::User(_) | Caller::ConsoleAdmin(_) => {
                let e = Error::Forbidden("this call needs the admin token".into());
                self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), &e.to_string()).await?;
                Err(e)
            }
        }
    }

    /// Refuses, and records the refusal of, a call the admin console
    /// offers (ADR 0037): the admin token, or a person acting on a console
    /// page who is, at this moment, an active member of
    /// [`Mandate::ADMINS_GROUP`]. A plain person (a user API token) is
    /// refused whatever their groups: the group opens pages, not the API.
    pub(crate) async fn require_console(&self, caller: Caller) -> Result<(), Error> {
        match caller {
            Caller::Admin => Ok(()),
            Caller::ConsoleAdmin(u) if self.is_console_admin(u).await? => Ok(()),
            Caller::ConsoleAdmin(_) | Caller::User(_) => {
                let e = Error::Forbidden("this call needs the admin token".into());
                self.record_admin_refusal(kind::ADMIN_DENIED, Some(caller), &e.to_string()).await?;
                Err(e)
            }
        }
    }

    // ----- OAuth client authentication -----

    /// Authenticates a client by `private_key_jwt` (RFC 7523) or, when
    /// enabled for development, `client_secret_basic`.
    pub async fn authenticate_client(
        &self,
        credentials: &crate::ClientCredentials,
        at: crate::oauth::Endpoint,
    ) -> Result<AuthenticatedClient, Error> {
        use crate::ClientCredentials as C;
        match credentials {
            C::None => Err(Error::InvalidClient("client authentication is required".into())),
            // A public client only names itself: at the token endpoint (the
            // code flow, checked there) and to revoke its own tokens.
            C::Public { client_id } => {
                if !matches!(at, crate::oauth::Endpoint::Token | crate::oauth::Endpoint::Revoke) {
                    return Err(Error::InvalidClient("client authentication is required".into()));
                }
                let agent =
                    self.client_named(client_id).await?.ok_or_else(|| Error::InvalidClient("unknown client".into()))?;
                if !agent.public {
                    return Err(Error::InvalidClient(
                        "client authentication is required: this client is confidential".into(),
                    ));
                }
                let (agent, _) = self.load_client(ClientId::Agent(agent.id)).await?;
                let agent = agent.ok_or_else(|| Error::InvalidClient("unknown client".into()))?;
                Ok(AuthenticatedClient {
                    id: ClientId::Agent(agent.id),
                    agent: Some(agent),
                    resource: None,
                    assertion: None,
                    method: None,
                })
            }
            C::Assertion { assertion_type, assertion, client_id } => {
                if assertion_type != mandate_jose::assertion::CLIENT_ASSERTION_TYPE {
                    return Err(Error::InvalidClient("unsupported client_assertion_type".into()));
                }
                // A JWT from a trusted issuer is workload identity (DESIGN
                // §10); anything else is the client's own private_key_jwt.
                let peeked =
                    mandate_jose::federated::peek(assertion).map_err(|e| Error::InvalidClient(e.to_string()))?;
                if let Some(issuer) = self.trusted_issuer(&peeked.iss, crate::trust::IssuerUse::Workload) {
                    if peeked.is_id_jag() {
                        return Err(Error::InvalidClient("an ID-JAG is a grant, not a client assertion".into()));
                    }
                    return self.authenticate_workload(assertion, &peeked, issuer, client_id.as_deref(), at).await;
                }
                let iss = peeked.iss;
                if client_id.as_deref().is_some_and(|c| c != iss) {
                    return Err(Error::InvalidClient("client_id does not match the assertion".into()));
                }
                // A client registered by its metadata document signs as
                // its URL; its agent id stands for it from here on.
                let id: ClientId = if crate::registration::is_metadata_url(&iss) {
                    let agent =
                        self.client_named(&iss).await?.ok_or_else(|| Error::InvalidClient("unknown client".into()))?;
                    ClientId::Agent(agent.id)
                } else {
                    iss.parse().map_err(|_| Error::InvalidClient("unknown client".into()))?
                };
                let (agent, resource) = self.load_client(id).await?;
                let jwks = agent
                    .as_ref()
                    .and_then(|a| a.jwks.as_ref())
                    .or_else(|| resource.as_ref().and_then(|r| r.jwks.as_ref()))
                    .ok_or_else(|| Error::InvalidClient("client has no registered keys".into()))?;
                let keys = self.client_keyset(id, jwks)?;
                let token_endpoint = self.config.token_endpoint();
                let called = format!("{}{}", self.config.issuer, at.path());
                let audiences = [self.config.issuer.as_str(), token_endpoint.as_str(), called.as_str()];
                let now = self.clock.now();
                let rules = AssertionRules {
                    audiences: &audiences,
                    now: now.unix_timestamp(),
                    max_lifetime: self.config.assertion_max_lifetime,
                    leeway: self.config.leeway,
                };
                let verified = assertion::verify_client_assertion(assertion, &keys, &iss, &rules)
                    .map_err(|e| Error::InvalidClient(e.to_string()))?;
                let exp = OffsetDateTime::from_unix_timestamp(verified.exp)
                    .map_err(|_| Error::InvalidClient("exp out of range".into()))?;
                Ok(AuthenticatedClient {
                    id,
                    agent,
                    resource,
                    assertion: Some((verified.jti, exp)),
                    method: Some(mandate_model::limits::ClientAuth::PrivateKeyJwt),
                })
            }
            C::Secret { client_id, secret } => {
                if !self.config.allow_client_secrets {
                    return Err(Error::InvalidClient("client secrets are disabled; use private_key_jwt".into()));
                }
                let Ok(ClientId::Agent(id)) = client_id.parse::<ClientId>() else {
                    return Err(Error::InvalidClient("unknown client".into()));
                };
                let (agent, _) = self.load_client(ClientId::Agent(id)).await?;
                let agent = agent.ok_or_else(|| Error::InvalidClient("unknown client".into()))?;
                let ok = agent.secret_hash.as_deref().is_some_and(|h| secrets::matches(secret, h));
                if !ok {
                    return Err(Error::InvalidClient("client authentication failed".into()));
                }
                Ok(AuthenticatedClient {
                    id: ClientId::Agent(id),
                    agent: Some(agent),
                    resource: None,
                    assertion: None,
                    method: Some(mandate_model::limits::ClientAuth::ClientSecret),
                })
            }
        }
    }

    /// The parsed key set for `jwks`, from the cache when it is unchanged.
    fn client_keyset(&self, id: ClientId, jwks: &serde_json::Value) -> Result<Arc<JwkSet>, Error> {
        let digest = jwks_digest(jwks)?;
        if let Some(hit) = self.client_keys.get(&id)
            && hit.value().0 == digest
        {
            return Ok(hit.value().1.clone());
        }
        let keys = Arc::new(
            JwkSet::from_json(jwks)
                .map_err(|_| Error::InvalidClient("client's registered keys are unusable".into()))?,
        );
        self.client_keys.insert(id, crate::footprint::Weighed::new::<ClientId>(0, (digest, keys.clone())));
        Ok(keys)
    }

    /// Whether `agent` may act now: it is active and unexpired, and its
    /// accountable owner is an active user (OWASP NHI1: offboarding a person
    /// stops the agents they own).
    pub(crate) async fn agent_may_act(&self, agent: &Agent) -> Result<bool, Error> {
        if !agent.is_live(self.clock.now()) {
            return Ok(false);
        }
        Ok(
            matches!(self.store.user(agent.owner).await?, Some(u) if u.status == mandate_model::records::UserStatus::Active),
        )
    }

    /// The client's keys and record; an inactive agent cannot authenticate.
    pub(crate) async fn load_client(&self, id: ClientId) -> Result<(Option<Agent>, Option<Resource>), Error> {
        match id {
            ClientId::Agent(a) => {
                let agent = self.store.agent(a).await?.ok_or_else(|| Error::InvalidClient("unknown client".into()))?;
                let agent = self.current_registration(agent).await?;
                if !self.agent_may_act(&agent).await? {
                    return Err(Error::InvalidClient("the agent is not active".into()));
                }
                Ok((Some(agent), None))
            }
            ClientId::Resource(r) => {
                let resource =
                    self.store.resource(r).await?.ok_or_else(|| Error::InvalidClient("unknown client".into()))?;
                Ok((None, Some(resource)))
            }
        }
    }

    /// The published JWK set.
    pub fn jwks(&self) -> serde_json::Value {
        let mut set = self.ring().verifier.keys.to_json();
        // The RS256 key of Shared Signals, beside the token keys (which
        // resource servers pick by skipping it: `JwkSet::from_issuer_json`).
        if let Some(k) = self.ssf_key()
            && let Some(keys) = set.get_mut("keys").and_then(serde_json::Value::as_array_mut)
        {
            keys.push(k.public().to_json());
            match self.ssf_retired.read() {
                Ok(g) => keys.extend(g.iter().cloned()),
                Err(p) => keys.extend(p.into_inner().iter().cloned()),
            }
        }
        set
    }

    /// The signing keys as the admin console shows them (ADR 0037): every
    /// stored key with its use, algorithm and dates, newest first; never
    /// any private material.
    pub async fn signing_key_list(&self, caller: Caller) -> Result<Vec<SigningKeyInfo>, Error> {
        self.require_console(caller).await?;
        let mut keys: Vec<SigningKeyInfo> = self
            .store
            .signing_keys()
            .await?
            .into_iter()
            .map(|k| SigningKeyInfo {
                kid: k.kid,
                alg: k.alg,
                purpose: k.purpose,
                created_at: k.created_at,
                retired_at: k.retired_at,
            })
            .collect();
        keys.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.kid.cmp(&b.kid)));
        Ok(keys)
    }

    /// Adds a new signing key and retires the current one, which stays
    /// published until the tokens it signed have expired.
    pub async fn rotate_keys(&self, caller: Caller, alg: Option<mandate_jose::KeyAlg>) -> Result<String, Error> {
        self.require_console(caller).await?;
        let key = SigningKey::generate(alg.unwrap_or(self.config.signing_alg))
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let now = self.clock.now();
        let mut event = self.admin_event(kind::KEY_ROTATED, caller);
        event.reason = Some(format!("new {} key {}", key.alg().name(), key.kid()));
        let mut change =
            Change::new().with(Mutation::InsertSigningKey(KeyRing::wrap(&key, KeyUse::Token, &self.kek, now)?));
        let retired =
            change.push(Mutation::RetireSigningKeys { purpose: KeyUse::Token, keep: key.kid().to_owned(), at: now });
        change.push(AuditRecord::counting(event, &[retired]).mutation());
        // The RSA key of Shared Signals rotates with the token key.
        if self.config.ssf_rs256 {
            let set_key = SigningKey::generate_set_rsa().map_err(|e| Error::Unavailable(e.to_string()))?;
            change.push(Mutation::InsertSigningKey(KeyRing::wrap(&set_key, KeyUse::Signals, &self.kek, now)?));
            change.push(Mutation::RetireSigningKeys {
                purpose: KeyUse::Signals,
                keep: set_key.kid().to_owned(),
                at: now,
            });
        }
        self.store.commit(change).await?;
        {
            let _one = self.sync_gate.lock().await;
            self.reload_keys().await?;
            self.load_ssf_key().await?;
        }
        tracing::info!(kid = key.kid(), "rotated the signing key");
        Ok(key.kid().to_owned())
    }

    /// Forgets expired replay-store entries and records as retired the
    /// ephemeral agents whose time is up, revoking their tokens. (An expired
    /// agent can do nothing even before this runs: every use compares its
    /// expiry with the clock.) Then applies the defaults of review
    /// campaigns past their deadline, and closes them.
    pub async fn housekeeping(&self) -> Result<(), Error> {
        let now = self.clock.now();
        let before = now - Duration::seconds(self.config.leeway);
        let forgotten = now - Duration::seconds(crate::session::FAILURE_WINDOW);
        self.store
            .commit(
                Change::new()
                    .with(Mutation::PurgeExpiredJtis { before })
                    .with(Mutation::PurgeAttemptCounters { before: forgotten }),
            )
            .await?;
        for agent in self.store.expired_agents(now).await? {
            let mut event = self.event(kind::AGENT_EXPIRED);
            event.decision = Some(crate::audit::ALLOW.into());
            event.actor = Some("mandate".into());
            event.subject = Some(agent.owner.to_string());
            event.resource = Some(agent.id.to_string());
            event.reason = Some("the ephemeral agent's time is up; it is retired".into());
            let mut change = Change::new().with(Mutation::SetAgentStatus {
                id: agent.id,
                from: agent.status,
                to: mandate_model::records::AgentStatus::Retired,
                at: now,
                by: None,
            });
            let tokens = change.push(Mutation::RevokeTokensOfAgent { agent: agent.id, at: now });
            change.push(Mutation::RevokeGrantsOfAgent { agent: agent.id, at: now });
            Mandate::signal_revocations(
                &mut change,
                now,
                Cause::new(InitiatingEntity::System, "the ephemeral agent's time is up"),
            );
            change.push(AuditRecord::counting(event, &[tokens]).mutation());
            match self.commit_signalling(change).await {
                // Another node or a lifecycle call got there first.
                Ok(_) | Err(crate::StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.report_lapses(now).await?;
        self.settle_due_campaigns().await
    }
}

/// The first key of a kind, with its creation recorded.
/// SHA-256 of a registered JWKS as serialised: which key set a parsed one
/// was parsed from. Serialised into the hash, without a copy.
fn jwks_digest(jwks: &serde_json::Value) -> Result<[u8; 32], Error> {
    use sha2::{Digest, Sha256};
    struct Hashing(Sha256);
    impl std::io::Write for Hashing {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.update(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(Sha256::new());
    serde_json::to_writer(&mut h, jwks).map_err(|e| Error::Unavailable(format!("a registered JWKS: {e}")))?;
    Ok(h.0.finalize().into())
}

fn first_key_change(key: &SigningKey, purpose: KeyUse, kek: &Kek, now: OffsetDateTime) -> Result<Change, Error> {
    let mut event = mandate_audit::Event::new(kind::KEY_CREATED, crate::audit::event_time(now));
    event.decision = Some(crate::audit::ALLOW.into());
    event.actor = Some("mandate".into());
    event.reason = Some(format!("first {} key {} ({})", purpose.as_str(), key.kid(), key.alg().name()));
    Ok(Change::new()
        .with(Mutation::InsertSigningKey(KeyRing::wrap(key, purpose, kek, now)?))
        .with(AuditRecord::new(event).mutation()))
}
