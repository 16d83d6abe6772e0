//! Sign-in sessions for the web pages (DESIGN §7): a person signs in with
//! email and password (argon2id), and gets a session whose secret only a
//! cookie holds. A session is never an access token, and an access token
//! never signs a person in.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use mandate_model::records::{SessionRecord, User, UserStatus};
use time::{Duration, OffsetDateTime};

use crate::audit::{ALLOW, AuditRecord, DENY, kind};
use crate::service::Mandate;
use crate::store::{Change, Mutation};
use crate::{Error, secrets};

pub const SESSION_PREFIX: &str = "mnd_ses_";
/// Failed sign-ins allowed per email within [`FAILURE_WINDOW`] before
/// further attempts are refused.
pub const MAX_FAILURES: u32 = 5;
/// The same per client address: higher, because many people may share one
/// (an office, or every client behind a reverse proxy).
pub const MAX_FAILURES_PER_ADDR: u32 = 50;
pub const FAILURE_WINDOW: i64 = 15 * 60;
/// Entries the failure counter keeps per node before it forgets the oldest.
const MAX_TRACKED: usize = 100_000;

/// A verified hash of a password nobody has, checked when the email is
/// unknown so that a wrong email takes as long as a wrong password.
const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$0LRAy6bFvBBu2eq3VZ1u1X4uAQQ0/lp0nMO9OBK8Bfs";

/// A live session and its person.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    /// The token every form of this session must echo.
    pub csrf: String,
    pub expires_at: OffsetDateTime,
}

/// Sign-in attempts per key (`email:…` and `addr:…`), per node. An attempt
/// is counted before its password is checked, so that parallel guesses
/// cannot all pass the limit; a success takes its own count back.
pub(crate) struct Failures {
    counts: Mutex<HashMap<String, (u32, i64)>>,
    /// Password checks running at once (argon2id takes 19 MiB and a core).
    checks: tokio::sync::Semaphore,
}

impl Default for Failures {
    fn default() -> Self {
        Self { counts: Mutex::new(HashMap::new()), checks: tokio::sync::Semaphore::new(2) }
    }
}

impl Failures {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, i64)>> {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts an attempt under every key, or refuses it (`Err`: seconds to
    /// wait) when a key is at the limit.
    fn attempt(&self, keys: &[String], now: i64) -> Result<(), i64> {
        let mut map = self.lock();
        let limit = |k: &str| if k.starts_with("addr:") { MAX_FAILURES_PER_ADDR } else { MAX_FAILURES };
        let wait = keys
            .iter()
            .filter_map(|k| map.get(k).map(|e| (limit(k), e)))
            .filter(|(max, (n, since))| n >= max && now - since < FAILURE_WINDOW)
            .map(|(_, (_, since))| since + FAILURE_WINDOW - now)
            .max();
        if let Some(w) = wait {
            return Err(w);
        }
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, since)| now - *since < FAILURE_WINDOW);
            // Still full of live entries: forget the oldest ones.
            while map.len() >= MAX_TRACKED {
                let Some(oldest) = map.iter().min_by_key(|(_, (_, since))| *since).map(|(k, _)| k.clone()) else {
                    break;
                };
                map.remove(&oldest);
            }
        }
        for k in keys {
            let e = map.entry(k.clone()).or_insert((0, now));
            if now - e.1 >= FAILURE_WINDOW {
                *e = (0, now);
            }
            e.0 += 1;
        }
        Ok(())
    }

    /// A successful sign-in: its email starts afresh, and its attempt no
    /// longer counts against its address.
    fn succeeded(&self, keys: &[String]) {
        let mut map = self.lock();
        for (i, k) in keys.iter().enumerate() {
            if i == 0 {
                map.remove(k);
            } else if let Some(e) = map.get_mut(k) {
                e.0 = e.0.saturating_sub(1);
            }
        }
    }
}

impl Mandate {
    /// Signs a person in. Returns the session secret (for the cookie) and
    /// the session. Every attempt is recorded; after [`MAX_FAILURES`]
    /// failures for the email or the client address within
    /// [`FAILURE_WINDOW`], attempts are refused without checking.
    pub async fn sign_in(&self, email: &str, password: &str, client_addr: &str) -> Result<(String, Session), Error> {
        let now = self.clock.now();
        // The one stored spelling of the address (anything that is not an
        // address finds nobody, and is checked against the decoy).
        let email = mandate_model::name::validate_email(email.trim()).unwrap_or_else(|_| email.trim().to_lowercase());
        let keys = [format!("email:{email}"), format!("addr:{client_addr}")];
        let mut event = self.event(kind::SIGN_IN_FAILED);
        event.decision = Some(DENY.into());
        if let Err(wait) = self.sign_in_failures.attempt(&keys, now.unix_timestamp()) {
            let minutes = (wait + 59) / 60;
            event.reason = Some("too many failed sign-ins".into());
            self.record(event).await?;
            return Err(Error::RateLimited {
                why: format!("too many failed sign-ins; try again in {minutes} min"),
                retry_after: u64::try_from(wait).unwrap_or(1).max(1),
            });
        }
        let user =
            if email.len() <= 254 && email.contains('@') { self.store.user_by_email(&email).await? } else { None };
        let stored = user.as_ref().and_then(|u| u.password_hash.clone());
        let ok = {
            // argon2id is CPU work: off the async workers, two at a time.
            let _permit =
                self.sign_in_failures.checks.acquire().await.map_err(|_| Error::Unavailable("shutting down".into()))?;
            let (password, hash) = (password.to_owned(), stored.clone().unwrap_or_else(|| DECOY_HASH.to_owned()));
            tokio::task::spawn_blocking(move || verify_password(&password, &hash))
                .await
                .map_err(|_| Error::Unavailable("the password check failed".into()))?
                && stored.is_some()
        };
        let user = match user {
            Some(u) if ok && u.status == UserStatus::Active => u,
            other => {
                event.subject = other.as_ref().map(|u| u.id.to_string());
                event.reason = Some(
                    match other {
                        Some(u) if ok && u.status != UserStatus::Active => "the user is disabled",
                        _ => "wrong email or password",
                    }
                    .into(),
                );
                self.record(event).await?;
                return Err(Error::Unauthenticated);
            }
        };
        self.sign_in_failures.succeeded(&keys);
        let secret = secrets::generate(SESSION_PREFIX, self.rng.as_ref())?;
        let csrf = secrets::generate("", self.rng.as_ref())?;
        let expires_at = now + Duration::seconds(self.config.session_ttl);
        let record = SessionRecord {
            hash: secrets::hash(&secret),
            user: user.id,
            csrf: csrf.clone(),
            created_at: now,
            expires_at,
            revoked_at: None,
        };
        let mut event = self.event(kind::SESSION_CREATED);
        event.decision = Some(ALLOW.into());
        event.subject = Some(user.id.to_string());
        event.actor = Some(user.id.to_string());
        self.store
            .commit(Change::new().with(Mutation::InsertSession(record)).with(AuditRecord::new(event).mutation()))
            .await?;
        Ok((secret, Session { user, csrf, expires_at }))
    }

    /// The live session a cookie secret names: unrevoked, unexpired, its
    /// person active. Anything else is `None`.
    pub async fn session(&self, secret: &str) -> Result<Option<Session>, Error> {
        if !secret.starts_with(SESSION_PREFIX) || secret.len() > 128 {
            return Ok(None);
        }
        let Some(record) = self.store.session(&secrets::hash(secret)).await? else { return Ok(None) };
        if record.revoked_at.is_some() || self.clock.now() >= record.expires_at {
            return Ok(None);
        }
        let user = self.store.user(record.user).await?.filter(|u| u.status == UserStatus::Active);
        Ok(user.map(|user| Session { user, csrf: record.csrf, expires_at: record.expires_at }))
    }

    /// Ends the session a cookie secret names, if it is live.
    pub async fn sign_out(&self, secret: &str) -> Result<(), Error> {
        let Some(session) = self.session(secret).await? else { return Ok(()) };
        let mut event = self.event(kind::SESSION_ENDED);
        event.decision = Some(ALLOW.into());
        event.subject = Some(session.user.id.to_string());
        event.actor = Some(session.user.id.to_string());
        let change = Change::new().with(Mutation::RevokeSession { hash: secrets::hash(secret), at: self.clock.now() });
        self.store.commit(change.with(AuditRecord::new(event).mutation())).await?;
        Ok(())
    }
}

fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoy_hash_parses_and_matches_nothing_likely() {
        assert!(PasswordHash::new(DECOY_HASH).is_ok());
        assert!(!verify_password("password", DECOY_HASH));
    }

    #[test]
    fn attempts_are_counted_first_and_block_after_the_limit() {
        let f = Failures::default();
        let keys = ["email:a@example.com".to_owned(), "addr:127.0.0.1".to_owned()];
        for _ in 0..MAX_FAILURES {
            assert_eq!(f.attempt(&keys, 100), Ok(()));
        }
        assert_eq!(f.attempt(&keys, 100), Err(FAILURE_WINDOW));
        // Another email from the same address is not, until the address
        // reaches its own, higher limit.
        let other = |n: u32| [format!("email:{n}@example.com"), keys[1].clone()];
        for n in 0..(MAX_FAILURES_PER_ADDR - MAX_FAILURES) {
            assert_eq!(f.attempt(&other(n), 200), Ok(()), "attempt {n}");
        }
        assert!(f.attempt(&other(999), 200).is_err(), "the address limit did not apply");
        assert_eq!(f.attempt(&keys, 100 + FAILURE_WINDOW), Ok(()));
    }

    #[test]
    fn a_success_gives_its_attempt_back() {
        let f = Failures::default();
        let keys = ["email:a@example.com".to_owned(), "addr:10.0.0.1".to_owned()];
        // Many people behind one address sign in successfully.
        for _ in 0..(MAX_FAILURES * 3) {
            assert_eq!(f.attempt(&keys, 100), Ok(()));
            f.succeeded(&keys);
        }
        assert_eq!(f.attempt(&keys, 100), Ok(()));
    }
}
