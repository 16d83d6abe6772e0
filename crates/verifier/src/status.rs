//! Token Status List (draft-ietf-oauth-status-list) at the resource server:
//! whether a token was revoked, read from the signed list its `status`
//! claim names. Only lists under `{issuer}/statuslists/` are fetched, so a
//! token cannot make the resource server request an arbitrary URL. Any
//! failure to read a list refuses the request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mandate_jose::JoseError;
use mandate_jose::statuslist::{self, STATUSLIST_MEDIA_TYPE, StatusBits};
use mandate_model::claims::StatusListRef;
use reqwest::Client;

use crate::keys::KeyCache;
use crate::{VerifyError, fetch};

/// Most lists cached; Mandate has one per few million tokens.
const MAX_LISTS: usize = 64;
/// After a failed fetch, requests naming that list are refused for this
/// many seconds without asking the issuer again.
const FAILURE_BACKOFF: i64 = 2;
/// Largest status list response read (a list of 16 M statuses is 2 MiB
/// before compression).
const MAX_LIST_RESPONSE: usize = 4 << 20;
const MAX_LIST_NAME: usize = 64;

struct Entry {
    /// `None` after a failed fetch.
    bits: Option<Arc<StatusBits>>,
    until: i64,
}

pub(crate) struct StatusCache {
    prefix: String,
    max_ttl: i64,
    lists: Mutex<HashMap<String, Entry>>,
    fetching: tokio::sync::Mutex<()>,
}

impl StatusCache {
    pub(crate) fn new(issuer_base: &str, max_ttl: u64) -> Self {
        Self {
            prefix: format!("{issuer_base}/statuslists/"),
            max_ttl: i64::try_from(max_ttl).unwrap_or(i64::MAX),
            lists: Mutex::new(HashMap::new()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether `uri` is one of the issuer's lists: a URL in its canonical
    /// spelling (as the `url` crate writes it) with no user info, query or
    /// fragment, made of the prefix and one plain path segment (no dot
    /// segment or escape).
    pub(crate) fn is_issuers(&self, uri: &str) -> bool {
        let canonical = url::Url::parse(uri).is_ok_and(|u| {
            u.as_str() == uri
                && u.username().is_empty()
                && u.password().is_none()
                && u.query().is_none()
                && u.fragment().is_none()
        });
        canonical
            && uri.strip_prefix(&self.prefix).is_some_and(|name| {
                !name.is_empty()
                    && name.len() <= MAX_LIST_NAME
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.lists.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cached(&self, uri: &str, now: i64) -> Option<Result<Arc<StatusBits>, VerifyError>> {
        let lists = self.lock();
        let e = lists.get(uri).filter(|e| now < e.until)?;
        Some(e.bits.clone().ok_or(VerifyError::Unavailable("the token's status could not be read")))
    }

    /// Refuses the token if its status list marks it invalid.
    pub(crate) async fn check(
        &self,
        status: &StatusListRef,
        http: &Client,
        keys: &KeyCache,
        now: i64,
    ) -> Result<(), VerifyError> {
        if !self.is_issuers(&status.uri) {
            return Err(VerifyError::InvalidToken("the token's status list is not the issuer's".into()));
        }
        let bits = self.list(&status.uri, http, keys, now).await?;
        match bits.is_invalid(status.idx) {
            Some(false) => Ok(()),
            Some(true) => Err(VerifyError::InvalidToken("token revoked".into())),
            None => Err(VerifyError::InvalidToken("the token's status index is outside its list".into())),
        }
    }

    async fn list(&self, uri: &str, http: &Client, keys: &KeyCache, now: i64) -> Result<Arc<StatusBits>, VerifyError> {
        if let Some(hit) = self.cached(uri, now) {
            return hit;
        }
        let _one = self.fetching.lock().await;
        if let Some(hit) = self.cached(uri, now) {
            return hit;
        }
        let entry = match self.fetch(uri, http, keys, now).await {
            Ok((bits, ttl)) => Entry { bits: Some(Arc::new(bits)), until: now.saturating_add(ttl) },
            Err(error) => {
                tracing::warn!(uri, %error, "reading a token status list failed");
                Entry { bits: None, until: now.saturating_add(FAILURE_BACKOFF) }
            }
        };
        let result = entry.bits.clone().ok_or(VerifyError::Unavailable("the token's status could not be read"));
        let mut lists = self.lock();
        if lists.len() >= MAX_LISTS && !lists.contains_key(uri) {
            lists.retain(|_, e| now < e.until);
            if lists.len() >= MAX_LISTS
                && let Some(oldest) = lists.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| k.clone())
            {
                lists.remove(&oldest);
            }
        }
        lists.insert(uri.to_owned(), entry);
        result
    }

    /// Fetches and verifies a list; the bits and how long to cache them.
    async fn fetch(&self, uri: &str, http: &Client, keys: &KeyCache, now: i64) -> Result<(StatusBits, i64), String> {
        let fetched = fetch::get(http, uri, STATUSLIST_MEDIA_TYPE, MAX_LIST_RESPONSE).await?;
        let token = std::str::from_utf8(&fetched.body).map_err(|_| "the list is not text".to_owned())?.trim();
        let current = keys.get(http, now).await.map_err(|e| e.to_string())?;
        let verified = match statuslist::verify(token, current.set(), uri, now) {
            Err(JoseError::UnknownKey) => match keys.after_unknown_kid(http, now, &current).await {
                Some(newer) => statuslist::verify(token, newer.set(), uri, now),
                None => Err(JoseError::UnknownKey),
            },
            other => other,
        };
        let (claims, bits) = verified.map_err(|e| e.to_string())?;
        let ttl = claims.ttl.clamp(0, self.max_ttl).min(claims.exp.saturating_sub(now));
        Ok((bits, ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_issuers_lists_are_fetched() {
        let c = StatusCache::new("https://mandate.example", 300);
        assert!(c.is_issuers("https://mandate.example/statuslists/0"));
        assert!(c.is_issuers("https://mandate.example/statuslists/list-7_b"));
        for bad in [
            "https://mandate.example/statuslists/",
            "https://mandate.example/statuslists/0/../../admin",
            "https://mandate.example/statuslists/..",
            "https://mandate.example/statuslists/0?x=1",
            "https://mandate.example/statuslists/0#f",
            "https://mandate.example/statuslists/%2e%2e",
            "https://mandate.example.evil/statuslists/0",
            "https://mandate.example@evil.example/statuslists/0",
            "http://169.254.169.254/latest/meta-data",
            "https://evil.example/?https://mandate.example/statuslists/0",
            "HTTPS://MANDATE.EXAMPLE/statuslists/0",
        ] {
            assert!(!c.is_issuers(bad), "{bad}");
        }
    }
}
