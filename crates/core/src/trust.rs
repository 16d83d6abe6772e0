//! Trusted issuers (DESIGN §10 `[[trusted_issuer]]`): whose JWTs Mandate
//! accepts as workload identity for agents and as ID-JAGs, their key sets
//! (fetched through OIDC discovery or a configured `jwks_uri`, cached,
//! re-fetched on an unknown `kid` at most once a minute), and workload
//! identity authentication against an agent's `federated_credentials`.
//!
//! Only configured issuers are ever fetched; what is fetched goes through
//! the [`crate::ports::MetadataFetcher`] port, whose adapter applies the
//! SSRF guards of DESIGN §9. A key set that cannot be had fails closed: a
//! token from an issuer whose keys are unknown, or stale past their
//! lifetime, is never accepted.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use mandate_jose::JwkSet;
use mandate_jose::federated::{self, ExternalRules, Peeked, WorkloadToken};
use mandate_model::records::{Agent, ClientId, FederatedCredential};
use serde::Deserialize;
use time::{Duration, OffsetDateTime};

use crate::service::{AuthenticatedClient, Mandate};
use crate::{Error, oauth::Endpoint};

/// Longest a workload JWT may live (DESIGN §10: an hour), and an ID-JAG.
pub const MAX_EXTERNAL_LIFETIME: i64 = 3600;
/// An unknown `kid` re-fetches an issuer's keys at most this often.
const REFETCH_INTERVAL: Duration = Duration::seconds(60);
/// After a failed fetch, the next is tried no sooner than this.
const FAILURE_BACKOFF: Duration = Duration::seconds(5);
/// Key sets are kept for the issuer's `Cache-Control` lifetime, clamped.
const MIN_KEYS_TTL: Duration = Duration::seconds(60);
const MAX_KEYS_TTL: Duration = Duration::seconds(3600);
const DEFAULT_KEYS_TTL: Duration = Duration::seconds(300);
/// Most rules an agent may carry, and the longest string in one.
pub const MAX_RULES: usize = 16;
const MAX_RULE_TEXT: usize = 1024;
const MAX_RULE_CLAIMS: usize = 16;

/// What a trusted issuer's tokens may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum IssuerUse {
    /// Workload identity: agents authenticate with its JWTs.
    #[serde(rename = "workload")]
    Workload,
    /// Cross-app access: its ID-JAGs are redeemed at the token endpoint.
    #[serde(rename = "id-jag")]
    IdJag,
}

/// One `[[trusted_issuer]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    /// The `iss` its tokens carry, exactly.
    pub issuer: String,
    /// Where its keys are; else OIDC discovery at the issuer.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(rename = "use")]
    pub uses: BTreeSet<IssuerUse>,
    /// ID-JAGs: a verified `email` claim finds the user when no link does.
    #[serde(default)]
    pub resolve_by_email: bool,
}

impl TrustedIssuer {
    /// Checks the entry; `dev_loopback` admits `http://` on loopback.
    pub fn validate(&self, dev_loopback: bool) -> Result<(), String> {
        let url_ok = |what: &str, u: &str| -> Result<(), String> {
            let parsed = url::Url::parse(u).map_err(|_| format!("{what} {u:?} is not a URL"))?;
            let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
            match parsed.scheme() {
                "https" => {}
                "http" if dev_loopback && loopback => {}
                _ => return Err(format!("{what} {u:?} must be https (loopback http only with --dev-loopback-fetch)")),
            }
            if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
                return Err(format!("{what} {u:?} has a query, fragment or user"));
            }
            Ok(())
        };
        url_ok("trusted_issuer issuer", &self.issuer)?;
        if let Some(j) = &self.jwks_uri {
            url_ok("trusted_issuer jwks_uri", j)?;
        }
        if self.uses.is_empty() {
            return Err(format!("trusted_issuer {}: use lists \"workload\" and/or \"id-jag\"", self.issuer));
        }
        if self.resolve_by_email && !self.uses.contains(&IssuerUse::IdJag) {
            return Err(format!("trusted_issuer {}: resolve_by_email applies to id-jag only", self.issuer));
        }
        Ok(())
    }

    /// Where its discovery document is (OpenID Connect Discovery §4).
    fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'))
    }
}

/// Checks a list of issuers: each valid, none twice.
pub fn validate_issuers(issuers: &[TrustedIssuer], dev_loopback: bool) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for i in issuers {
        i.validate(dev_loopback)?;
        if !seen.insert(i.issuer.as_str()) {
            return Err(format!("trusted_issuer {} is listed twice", i.issuer));
        }
    }
    Ok(())
}

/// One issuer's keys as last fetched.
#[derive(Clone)]
struct Cached {
    keys: Arc<JwkSet>,
    fresh_until: OffsetDateTime,
}

/// Trusted issuers' key sets, and when each was last tried.
#[derive(Default)]
pub struct IssuerKeys {
    cached: Mutex<HashMap<String, Cached>>,
    failed_at: Mutex<HashMap<String, OffsetDateTime>>,
    /// When an unknown `kid` last made each issuer's keys be re-fetched.
    kid_refetched_at: Mutex<HashMap<String, OffsetDateTime>>,
    /// One fetch per node at a time: issuers are few, and a burst of
    /// tokens with an unknown `kid` must not become a burst of fetches.
    fetching: tokio::sync::Mutex<()>,
}

impl Mandate {
    /// Sets the fetcher for trusted issuers' discovery and keys (once).
    /// It is the metadata fetcher's guards without its host allow-list:
    /// the configured issuers are the allow-list.
    pub fn set_issuer_fetcher(&self, fetcher: Arc<dyn crate::ports::MetadataFetcher>) {
        let _ = self.issuer_fetcher.set(fetcher);
    }

    /// The trusted issuer named `iss`, for `use`.
    pub(crate) fn trusted_issuer(&self, iss: &str, purpose: IssuerUse) -> Option<&TrustedIssuer> {
        self.config.trusted_issuers.iter().find(|t| t.issuer == iss && t.uses.contains(&purpose))
    }

    /// Whether any trusted issuer serves `purpose` (discovery advertises
    /// the `jwt-bearer` grant and the ID-JAG profile only then).
    pub fn trusts_issuers_for(&self, purpose: IssuerUse) -> bool {
        self.config.trusted_issuers.iter().any(|t| t.uses.contains(&purpose))
    }

    /// The issuer's keys able to verify a token with `kid`: from the cache
    /// while fresh, re-fetched when stale or, at most once a minute, when
    /// the `kid` is unknown (the issuer rotated). Fails closed: no keys, or
    /// only stale ones and a failed fetch, is `Unavailable`.
    pub(crate) async fn issuer_keys(&self, issuer: &TrustedIssuer, kid: Option<&str>) -> Result<Arc<JwkSet>, Error> {
        let now = self.clock.now();
        // Fresh, and either the kid is known or an unknown kid already
        // made a re-fetch within the minute.
        let usable = |c: &Cached, now: OffsetDateTime| {
            let refetched = self
                .issuer_keys
                .kid_refetched_at
                .lock()
                .ok()
                .and_then(|r| r.get(&issuer.issuer).copied())
                .is_some_and(|at| now - at < REFETCH_INTERVAL);
            now < c.fresh_until && (kid.is_none_or(|k| c.keys.has_kid(k)) || refetched)
        };
        if let Some(c) = self.cached_keys(&issuer.issuer)
            && usable(&c, now)
        {
            return Ok(c.keys);
        }
        let _one = self.issuer_keys.fetching.lock().await;
        // Another request may have fetched while this one waited.
        let now = self.clock.now();
        let cached = self.cached_keys(&issuer.issuer);
        if let Some(c) = &cached
            && usable(c, now)
        {
            return Ok(c.keys.clone());
        }
        let recently_failed = self
            .issuer_keys
            .failed_at
            .lock()
            .ok()
            .and_then(|f| f.get(&issuer.issuer).copied())
            .is_some_and(|at| now - at < FAILURE_BACKOFF);
        if cached.as_ref().is_some_and(|c| now < c.fresh_until)
            && let Ok(mut r) = self.issuer_keys.kid_refetched_at.lock()
        {
            r.insert(issuer.issuer.clone(), now);
        }
        let fetched = if recently_failed {
            Err(Error::Unavailable(format!("the keys of {} could not be fetched a moment ago", issuer.issuer)))
        } else {
            self.fetch_issuer_keys(issuer).await
        };
        match fetched {
            Ok((keys, ttl)) => {
                let keys = Arc::new(keys);
                let entry = Cached { keys: keys.clone(), fresh_until: now + ttl };
                if let Ok(mut c) = self.issuer_keys.cached.lock() {
                    c.insert(issuer.issuer.clone(), entry);
                }
                if let Ok(mut f) = self.issuer_keys.failed_at.lock() {
                    f.remove(&issuer.issuer);
                }
                Ok(keys)
            }
            Err(e) => {
                if !recently_failed && let Ok(mut f) = self.issuer_keys.failed_at.lock() {
                    f.insert(issuer.issuer.clone(), now);
                }
                match cached {
                    // Still fresh, only the kid is unknown: the token fails
                    // verification against the keys there are.
                    Some(c) if now < c.fresh_until => Ok(c.keys),
                    _ => {
                        tracing::warn!(issuer = %issuer.issuer, error = %e, "a trusted issuer's keys are unavailable");
                        Err(e)
                    }
                }
            }
        }
    }

    fn cached_keys(&self, issuer: &str) -> Option<Cached> {
        self.issuer_keys.cached.lock().ok().and_then(|c| c.get(issuer).cloned())
    }

    /// Fetches the keys (through discovery unless a `jwks_uri` is
    /// configured) and how long to keep them.
    async fn fetch_issuer_keys(&self, issuer: &TrustedIssuer) -> Result<(JwkSet, Duration), Error> {
        let fetcher = self
            .issuer_fetcher
            .get()
            .ok_or_else(|| Error::Unavailable("no fetcher for trusted issuers is configured".into()))?;
        let get = |url: String| async move {
            fetcher.fetch(&url).await.map_err(|f| Error::Unavailable(format!("fetching {url}: {}", f.why)))
        };
        let jwks_uri = match &issuer.jwks_uri {
            Some(u) => u.clone(),
            None => {
                #[derive(Deserialize)]
                struct Discovery {
                    issuer: String,
                    jwks_uri: String,
                }
                let doc = get(issuer.discovery_url()).await?;
                let d: Discovery = serde_json::from_slice(&doc.body)
                    .map_err(|_| Error::Unavailable(format!("{}: unusable discovery document", issuer.issuer)))?;
                // OpenID Connect Discovery §4.3: the document speaks for
                // the issuer it was fetched for, or not at all.
                if d.issuer != issuer.issuer {
                    return Err(Error::Unavailable(format!(
                        "{}: the discovery document names another issuer",
                        issuer.issuer
                    )));
                }
                d.jwks_uri
            }
        };
        let doc = get(jwks_uri).await?;
        let value: serde_json::Value = serde_json::from_slice(&doc.body)
            .map_err(|_| Error::Unavailable(format!("{}: the key set is not JSON", issuer.issuer)))?;
        let keys = JwkSet::from_json_external(&value)
            .map_err(|e| Error::Unavailable(format!("{}: unusable key set: {e}", issuer.issuer)))?;
        let ttl = match (doc.no_store, doc.max_age) {
            (true, _) => MIN_KEYS_TTL,
            (false, Some(age)) => Duration::try_from(age).unwrap_or(MAX_KEYS_TTL).clamp(MIN_KEYS_TTL, MAX_KEYS_TTL),
            (false, None) => DEFAULT_KEYS_TTL,
        };
        Ok((keys, ttl))
    }

    /// The audiences a workload JWT may name by default: Mandate's issuer,
    /// its token endpoint, and the endpoint being called.
    fn default_audiences(&self, at: Endpoint) -> [String; 3] {
        [self.config.issuer.clone(), self.config.token_endpoint(), format!("{}{}", self.config.issuer, at.path())]
    }

    /// Authenticates an agent by a workload JWT from a trusted issuer
    /// (`client_assertion`, or the `jwt-bearer` grant's `assertion`). With
    /// `client_id`, that agent's rules must match; without, exactly one
    /// agent's must. A rule matches on `iss`, `sub` (exact or pattern),
    /// `aud` (its `audiences`, else the defaults) and every listed claim.
    pub(crate) async fn authenticate_workload(
        &self,
        token: &str,
        peeked: &Peeked,
        issuer: &TrustedIssuer,
        client_id: Option<&str>,
        at: Endpoint,
    ) -> Result<AuthenticatedClient, Error> {
        let bad = |why: &str| Error::InvalidClient(why.to_owned());
        let sub = peeked.sub.as_deref().ok_or_else(|| bad("the workload token has no sub"))?;
        let named = match client_id {
            None => None,
            Some(c) => match c.parse::<ClientId>() {
                Ok(ClientId::Agent(a)) => Some(a),
                _ => return Err(bad("unknown client")),
            },
        };
        let candidates: Vec<Agent> = self
            .store
            .agents_federated_by(&issuer.issuer, sub)
            .await?
            .into_iter()
            .filter(|a| named.is_none_or(|n| n == a.id))
            .collect();
        if candidates.is_empty() {
            return Err(bad("no agent has a federated credential for this issuer and subject"));
        }
        let defaults = self.default_audiences(at);
        let mut audiences: BTreeSet<&str> = defaults.iter().map(String::as_str).collect();
        for a in &candidates {
            for r in a.federated_credentials.iter().filter(|r| r.issuer == issuer.issuer) {
                audiences.extend(r.audiences.iter().map(String::as_str));
            }
        }
        let audiences: Vec<&str> = audiences.into_iter().collect();
        let keys = self.issuer_keys(issuer, peeked.kid.as_deref()).await?;
        let rules = ExternalRules {
            audiences: &audiences,
            now: self.clock.now().unix_timestamp(),
            max_lifetime: MAX_EXTERNAL_LIFETIME,
            leeway: self.config.leeway,
        };
        let verified = federated::verify_workload(token, &keys, &rules).map_err(|e| bad(&e.to_string()))?;
        let mut matching = candidates.into_iter().filter_map(|a| {
            let rule = a.federated_credentials.iter().find(|r| rule_matches(r, &verified, &defaults)).cloned();
            rule.map(|r| (a, r))
        });
        let (agent, rule) = matching.next().ok_or_else(|| bad("no federated credential matches the token"))?;
        if matching.next().is_some() {
            return Err(bad("the token matches more than one agent; send client_id"));
        }
        if agent.public {
            return Err(bad("a public client holds no credential"));
        }
        let (agent, _) = self.load_client(ClientId::Agent(agent.id)).await?;
        let agent = agent.ok_or_else(|| bad("unknown client"))?;
        // Workload tokens are reused within their lifetime (Kubernetes, CI)
        // unless the rule makes each one single-use.
        let assertion = if rule.single_use {
            let jti = verified.jti.as_deref().ok_or_else(|| bad("this federated credential needs a jti"))?;
            let exp = OffsetDateTime::from_unix_timestamp(verified.exp).map_err(|_| bad("exp out of range"))?;
            let key = format!("wl:{}", mandate_jose::sha256_b64(format!("{}\0{jti}", verified.iss).as_bytes()));
            Some((key, exp))
        } else {
            None
        };
        Ok(AuthenticatedClient {
            id: ClientId::Agent(agent.id),
            agent: Some(agent),
            resource: None,
            assertion,
            method: Some(mandate_model::limits::ClientAuth::Workload),
        })
    }
}

/// Whether `rule` accepts `token` (already verified against its issuer's
/// keys). `defaults` are the audiences a rule without its own accepts.
pub fn rule_matches(rule: &FederatedCredential, token: &WorkloadToken, defaults: &[String]) -> bool {
    if rule.issuer != token.iss || !rule.subject_matches(&token.sub) {
        return false;
    }
    let aud_ok = if rule.audiences.is_empty() {
        token.aud.iter().any(|a| defaults.contains(a))
    } else {
        token.aud.iter().any(|a| rule.audiences.contains(a))
    };
    aud_ok && rule.claims.iter().all(|(k, v)| token.claims.get(k) == Some(v))
}

/// Checks an agent's rules as registered: each names a trusted issuer
/// (for workload identity), exactly one of `subject` and `subject_pattern`,
/// bounded text; a pattern has some literal text besides `*`.
pub fn validate_rules(rules: &[FederatedCredential], trusted: &[TrustedIssuer]) -> Result<(), Error> {
    let bad = |m: String| Error::BadInput(format!("federated_credentials: {m}"));
    if rules.len() > MAX_RULES {
        return Err(bad(format!("at most {MAX_RULES} rules")));
    }
    let long = |s: &str| s.is_empty() || s.len() > MAX_RULE_TEXT || s.chars().any(char::is_control);
    for r in rules {
        if !trusted.iter().any(|t| t.issuer == r.issuer && t.uses.contains(&IssuerUse::Workload)) {
            return Err(bad(format!(
                "{:?} is not a trusted issuer for workload identity ([[trusted_issuer]] use = [\"workload\"])",
                r.issuer
            )));
        }
        match (&r.subject, &r.subject_pattern) {
            (Some(s), None) if !long(s) => {}
            (None, Some(p)) if !long(p) => {
                if p.chars().all(|c| c == '*') {
                    return Err(bad("subject_pattern needs literal text besides *".into()));
                }
            }
            _ => return Err(bad("each rule has exactly one of subject and subject_pattern, 1-1024 characters".into())),
        }
        if r.audiences.len() > MAX_RULE_CLAIMS || r.audiences.iter().any(|a| long(a)) {
            return Err(bad(format!("audiences: at most {MAX_RULE_CLAIMS}, each 1-1024 characters")));
        }
        if r.claims.len() > MAX_RULE_CLAIMS || r.claims.keys().any(|k| long(k)) {
            return Err(bad(format!("claims: at most {MAX_RULE_CLAIMS}")));
        }
        if r.claims.keys().any(|k| matches!(k.as_str(), "iss" | "sub" | "aud" | "exp" | "iat" | "nbf" | "jti")) {
            return Err(
                bad("claims may not name iss, sub, aud, exp, iat, nbf or jti: the rule's own fields do".into()),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn rule() -> FederatedCredential {
        FederatedCredential {
            issuer: "https://ci.example".into(),
            subject: Some("repo:acme/app".into()),
            subject_pattern: None,
            audiences: vec![],
            claims: BTreeMap::new(),
            single_use: false,
        }
    }

    fn token(sub: &str, aud: &str, claims: serde_json::Value) -> WorkloadToken {
        WorkloadToken {
            iss: "https://ci.example".into(),
            sub: sub.into(),
            aud: vec![aud.into()],
            exp: 0,
            jti: None,
            claims: claims.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn a_rule_matches_issuer_subject_audience_and_claims() {
        let defaults = vec!["https://mandate.example".to_owned()];
        let m = "https://mandate.example";
        assert!(rule_matches(&rule(), &token("repo:acme/app", m, json!({})), &defaults));
        assert!(!rule_matches(&rule(), &token("repo:acme/other", m, json!({})), &defaults));
        assert!(!rule_matches(&rule(), &token("repo:acme/app", "https://other.example", json!({})), &defaults));
        let mut own = rule();
        own.audiences = vec!["api://mandate".into()];
        assert!(rule_matches(&own, &token("repo:acme/app", "api://mandate", json!({})), &defaults));
        assert!(
            !rule_matches(&own, &token("repo:acme/app", m, json!({})), &defaults),
            "own audiences replace the defaults"
        );
        let mut pattern = rule();
        pattern.subject = None;
        pattern.subject_pattern = Some("repo:acme/*".into());
        assert!(rule_matches(&pattern, &token("repo:acme/x", m, json!({})), &defaults));
        assert!(!rule_matches(&pattern, &token("repo:evil/x", m, json!({})), &defaults));
        let mut claims = rule();
        claims.claims.insert("ref".into(), json!("refs/heads/main"));
        assert!(rule_matches(&claims, &token("repo:acme/app", m, json!({"ref": "refs/heads/main"})), &defaults));
        assert!(!rule_matches(&claims, &token("repo:acme/app", m, json!({"ref": "refs/heads/dev"})), &defaults));
        assert!(!rule_matches(&claims, &token("repo:acme/app", m, json!({"ref": ["refs/heads/main"]})), &defaults));
        assert!(!rule_matches(&claims, &token("repo:acme/app", m, json!({})), &defaults));
    }

    #[test]
    fn rules_are_checked_when_registered() {
        let trusted = vec![TrustedIssuer {
            issuer: "https://ci.example".into(),
            jwks_uri: None,
            uses: [IssuerUse::Workload].into(),
            resolve_by_email: false,
        }];
        assert!(validate_rules(&[rule()], &trusted).is_ok());
        let mut foreign = rule();
        foreign.issuer = "https://elsewhere.example".into();
        let mut both = rule();
        both.subject_pattern = Some("x*".into());
        let mut neither = rule();
        neither.subject = None;
        let mut star = rule();
        star.subject = None;
        star.subject_pattern = Some("**".into());
        let mut reserved = rule();
        reserved.claims.insert("sub".into(), json!("x"));
        for bad in [foreign, both, neither, star, reserved] {
            assert!(validate_rules(std::slice::from_ref(&bad), &trusted).is_err(), "{bad:?}");
        }
        let idjag_only = vec![TrustedIssuer { uses: [IssuerUse::IdJag].into(), ..trusted[0].clone() }];
        assert!(validate_rules(&[rule()], &idjag_only).is_err());
    }

    #[test]
    fn issuers_are_checked_at_start_up() {
        let ok = TrustedIssuer {
            issuer: "https://ci.example".into(),
            jwks_uri: None,
            uses: [IssuerUse::Workload].into(),
            resolve_by_email: false,
        };
        assert!(validate_issuers(std::slice::from_ref(&ok), false).is_ok());
        assert!(validate_issuers(&[ok.clone(), ok.clone()], false).is_err());
        let http = TrustedIssuer { issuer: "http://127.0.0.1:9".into(), ..ok.clone() };
        assert!(http.validate(false).is_err());
        assert!(http.validate(true).is_ok());
        assert!(TrustedIssuer { issuer: "http://ci.example".into(), ..ok.clone() }.validate(true).is_err());
        assert!(TrustedIssuer { uses: BTreeSet::new(), ..ok.clone() }.validate(false).is_err());
        assert!(TrustedIssuer { resolve_by_email: true, ..ok.clone() }.validate(false).is_err());
        let entry = |v: serde_json::Value| serde_json::from_value::<TrustedIssuer>(v);
        assert!(entry(json!({"issuer": "https://x.example", "use": ["everything"]})).is_err());
        assert!(entry(json!({"issuer": "https://x.example", "use": ["id-jag"], "resolve_by_email": true})).is_ok());
        assert!(entry(json!({"issuer": "https://x.example", "use": ["workload"], "jwks": {}})).is_err());
    }
}
