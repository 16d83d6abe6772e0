//! The issuer's signing keys: fetched from its JWKS only (never from a
//! token's header), cached for the `max-age` the issuer gives, refreshed when
//! stale or when a token names a key not seen yet, and at most once per
//! [`MIN_REFETCH_INTERVAL`] whatever asks for it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mandate_jose::access::AccessTokenVerifier;
use mandate_jose::{JoseError, JwkSet};
use mandate_model::claims::AccessTokenClaims;
use reqwest::Client;

use crate::{VerifyError, fetch};

/// Fewest seconds between two fetches of the key set: tokens naming
/// unknown keys cannot make the verifier hammer the issuer.
pub const MIN_REFETCH_INTERVAL: i64 = 10;
/// How long a key set is fresh when the issuer sends no `max-age`.
const DEFAULT_MAX_AGE: i64 = 300;
const MAX_MAX_AGE: i64 = 86_400;
/// How long past freshness a key set is still used while the issuer cannot
/// be reached; after that, requests are refused.
const STALE_GRACE: i64 = 3_600;
const MAX_JWKS_BYTES: usize = 64 * 1024;

/// One version of the issuer's key set.
#[derive(Clone)]
pub(crate) struct Keys {
    tokens: Arc<AccessTokenVerifier>,
    generation: u64,
    fresh_until: i64,
    usable_until: i64,
}

impl Keys {
    pub(crate) fn set(&self) -> &JwkSet {
        &self.tokens.keys
    }

    /// Verifies an access token for `audience`: `exp` strictly (SECURITY
    /// row 5: a past `exp` is refused), `nbf`/`iat` with the leeway.
    pub(crate) fn verify_access(&self, token: &str, now: i64, audience: &str) -> Result<AccessTokenClaims, JoseError> {
        self.tokens.verify(token, now, Some(audience))
    }
}

#[derive(Default)]
struct State {
    keys: Option<Keys>,
    last_fetch: Option<i64>,
    generation: u64,
}

pub(crate) struct KeyCache {
    issuer: String,
    leeway: i64,
    /// `None` for a fixed key set.
    uri: Option<String>,
    state: Mutex<State>,
    /// One fetch at a time; the others wait for its result.
    fetching: tokio::sync::Mutex<()>,
}

impl KeyCache {
    pub(crate) fn fixed(issuer: &str, leeway: i64, set: JwkSet) -> Self {
        let cache = Self::remote(issuer, leeway, None);
        let keys = cache.keys(set, i64::MAX, i64::MAX, 0);
        cache.lock().keys = Some(keys);
        cache
    }

    pub(crate) fn remote(issuer: &str, leeway: i64, uri: Option<String>) -> Self {
        Self {
            issuer: issuer.to_owned(),
            leeway,
            uri,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn keys(&self, set: JwkSet, fresh_until: i64, usable_until: i64, generation: u64) -> Keys {
        let tokens = AccessTokenVerifier { issuer: self.issuer.clone(), keys: set, leeway: self.leeway };
        Keys { tokens: Arc::new(tokens), generation, fresh_until, usable_until }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached keys, and whether a fetch is allowed now.
    fn snapshot(&self, now: i64) -> (Option<Keys>, bool) {
        let s = self.lock();
        (s.keys.clone(), s.last_fetch.is_none_or(|t| now.saturating_sub(t) >= MIN_REFETCH_INTERVAL))
    }

    /// The current keys, fetched first when there are none or they are
    /// stale. Stale keys serve for [`STALE_GRACE`] while the issuer cannot
    /// be reached.
    pub(crate) async fn get(&self, http: &Client, now: i64) -> Result<Keys, VerifyError> {
        let (current, _) = self.snapshot(now);
        let Some(uri) = &self.uri else {
            return current.ok_or(VerifyError::Config("no keys".into()));
        };
        if let Some(k) = current
            && now < k.fresh_until
        {
            return Ok(k);
        }
        let _one = self.fetching.lock().await;
        let (current, may_fetch) = self.snapshot(now);
        if let Some(k) = &current
            && now < k.fresh_until
        {
            return Ok(k.clone());
        }
        let fetched = if may_fetch { self.fetch(http, uri, now).await } else { None };
        match (fetched, current) {
            (Some(k), _) => Ok(k),
            (None, Some(k)) if now < k.usable_until => Ok(k),
            (None, _) => Err(VerifyError::Unavailable("the issuer's keys could not be fetched")),
        }
    }

    /// After a token named a key that `seen` lacks: the keys another task
    /// fetched meanwhile, or freshly fetched ones if the rate limit allows.
    /// `None` when nothing newer can be had; the token is then refused.
    pub(crate) async fn after_unknown_kid(&self, http: &Client, now: i64, seen: &Keys) -> Option<Keys> {
        let uri = self.uri.as_ref()?;
        let _one = self.fetching.lock().await;
        let (current, may_fetch) = self.snapshot(now);
        if let Some(k) = current
            && k.generation != seen.generation
        {
            return Some(k);
        }
        if !may_fetch {
            return None;
        }
        self.fetch(http, uri, now).await
    }

    async fn fetch(&self, http: &Client, uri: &str, now: i64) -> Option<Keys> {
        self.lock().last_fetch = Some(now);
        let parsed =
            fetch::get(http, uri, "application/jwk-set+json, application/json", MAX_JWKS_BYTES).await.and_then(|f| {
                let v: serde_json::Value = serde_json::from_slice(&f.body).map_err(|e| e.to_string())?;
                Ok((JwkSet::from_issuer_json(&v).map_err(|e| e.to_string())?, f.max_age))
            });
        let (set, max_age) = match parsed {
            Ok(p) => p,
            Err(error) => {
                tracing::warn!(jwks_uri = uri, %error, "fetching the issuer's keys failed");
                return None;
            }
        };
        let max_age = max_age
            .map_or(DEFAULT_MAX_AGE, |a| i64::try_from(a).unwrap_or(MAX_MAX_AGE))
            .clamp(MIN_REFETCH_INTERVAL, MAX_MAX_AGE);
        let mut s = self.lock();
        s.generation += 1;
        let fresh_until = now.saturating_add(max_age);
        let keys = self.keys(set, fresh_until, fresh_until.saturating_add(STALE_GRACE), s.generation);
        tracing::debug!(jwks_uri = uri, keys = keys.set().keys.len(), max_age, "fetched the issuer's keys");
        s.keys = Some(keys.clone());
        Some(keys)
    }
}
