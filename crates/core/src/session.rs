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
/// Failed sign-ins allowed per email, and per client address, within
/// [`FAILURE_WINDOW`], before further attempts are refused.
pub const MAX_FAILURES: u32 = 5;
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

/// Failed sign-ins per key (`email:…` and `addr:…`), per node.
#[derive(Default)]
pub(crate) struct Failures(Mutex<HashMap<String, (u32, i64)>>);

impl Failures {
    fn blocked(&self, keys: &[String], now: i64) -> Option<i64> {
        let map = self.0.lock().ok()?;
        keys.iter()
            .filter_map(|k| map.get(k))
            .filter(|(n, since)| *n >= MAX_FAILURES && now - since < FAILURE_WINDOW)
            .map(|(_, since)| since + FAILURE_WINDOW - now)
            .max()
    }

    fn fail(&self, keys: &[String], now: i64) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= MAX_TRACKED {
                map.retain(|_, (_, since)| now - *since < FAILURE_WINDOW);
            }
            for k in keys {
                let e = map.entry(k.clone()).or_insert((0, now));
                if now - e.1 >= FAILURE_WINDOW {
                    *e = (0, now);
                }
                e.0 += 1;
            }
        }
    }

    fn clear(&self, key: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(key);
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
        let email = email.trim().to_lowercase();
        let keys = [format!("email:{email}"), format!("addr:{client_addr}")];
        let mut event = self.event(kind::SIGN_IN_FAILED);
        event.decision = Some(DENY.into());
        if let Some(wait) = self.sign_in_failures.blocked(&keys, now.unix_timestamp()) {
            let minutes = (wait + 59) / 60;
            event.reason = Some("too many failed sign-ins".into());
            self.record(event).await?;
            return Err(Error::RateLimited(format!("too many failed sign-ins; try again in {minutes} min")));
        }
        let user = if email.len() <= 254 { self.store.user_by_email(&email).await? } else { None };
        let stored = user.as_ref().and_then(|u| u.password_hash.clone());
        let ok = verify_password(password, stored.as_deref().unwrap_or(DECOY_HASH)) && stored.is_some();
        let user = match user {
            Some(u) if ok && u.status == UserStatus::Active => u,
            other => {
                self.sign_in_failures.fail(&keys, now.unix_timestamp());
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
        self.sign_in_failures.clear(&keys[0]);
        let secret = secrets::generate(SESSION_PREFIX, self.rng.as_ref());
        let csrf = secrets::generate("", self.rng.as_ref());
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
    fn failures_block_after_the_limit_and_expire() {
        let f = Failures::default();
        let keys = ["email:a@example.com".to_owned(), "addr:127.0.0.1".to_owned()];
        for _ in 0..MAX_FAILURES {
            assert_eq!(f.blocked(&keys, 100), None);
            f.fail(&keys, 100);
        }
        assert_eq!(f.blocked(&keys, 100), Some(FAILURE_WINDOW));
        // Another email from the same address is blocked too.
        assert!(f.blocked(&["email:b@example.com".to_owned(), keys[1].clone()], 200).is_some());
        assert_eq!(f.blocked(&keys, 100 + FAILURE_WINDOW), None);
    }
}
