//! Sign-in sessions for the web pages (DESIGN §7): a person signs in with
//! email and password (argon2id), and gets a session whose secret only a
//! cookie holds. A session is never an access token, and an access token
//! never signs a person in.

use std::collections::HashMap;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use mandate_model::records::{SessionRecord, User, UserStatus};
use time::{Duration, OffsetDateTime};

use crate::audit::{ALLOW, AuditRecord, DENY, kind};
use crate::service::Mandate;
use crate::store::{AttemptCounter, Change, Mutation, StoreError};
use crate::{Error, secrets};

pub const SESSION_PREFIX: &str = "mnd_ses_";
/// Failures of one email from one address (or one known browser) before
/// each further attempt must wait: 1 s, then 2 s, 4 s … up to
/// [`MAX_DELAY`].
pub const FREE_FAILURES: u32 = 3;
/// The longest wait between attempts of one email from one address.
pub const MAX_DELAY: i64 = 15 * 60;
/// Failures of one email, from anywhere, after which its attempts are
/// slowed to one every [`EMAIL_PACE`] seconds. This only slows: it never
/// locks the person out, and a browser they signed in with before is not
/// slowed at all.
pub const EMAIL_CEILING: u32 = 20;
pub const EMAIL_PACE: i64 = 2;
/// Failures from one address, whatever the emails (password spraying),
/// after which its attempts are slowed to one every [`EMAIL_PACE`] seconds.
/// High, because many people may share an address; it only slows too.
pub const ADDRESS_CEILING: u32 = 50;
/// How long failures are remembered after the last one.
pub const FAILURE_WINDOW: i64 = 15 * 60;
/// How long a browser stays known after a successful sign-in.
pub const KNOWN_BROWSER_TTL: i64 = 90 * 24 * 3600;
/// The context a known-browser cookie is sealed under.
const KNOWN_CONTEXT: &[u8] = b"mandate:known-browser:v1";

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
    /// When the person signed in (for `prompt=login`).
    pub signed_in_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A successful sign-in: the session's secret (for its cookie), the
/// session, and the sealed value that marks this browser as known to this
/// person (for a cookie of its own).
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub secret: String,
    pub session: Session,
    pub known_browser: String,
}

/// Where a sign-in attempt comes from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Source<'a> {
    /// The client's address, if known.
    pub address: Option<std::net::IpAddr>,
    /// The browser's known-browser mark, if it sent one.
    pub known: Option<&'a str>,
}

/// Failed sign-ins (SECURITY row 45, docs/web.md): per (email, source) with
/// growing waits, and per email a ceiling that only slows. The counters are
/// kept in the store, so that every node paces the same attempts (issue 17,
/// ADR 0029). An attempt is counted before its password is checked, by a
/// compare-and-swap of the counters read, so that parallel guesses, on one
/// node or many, cannot all slip through; a success takes its count back.
pub(crate) struct Failures {
    /// Password checks running at once (argon2id takes 19 MiB and a core).
    checks: tokio::sync::Semaphore,
}

impl Default for Failures {
    fn default() -> Self {
        Self { checks: tokio::sync::Semaphore::new(2) }
    }
}

/// How many times an attempt is counted again after another attempt moved
/// one of its counters first; past it, the attempt is refused for now.
const MAX_SWAPS: usize = 8;

/// Seconds to wait after `count` failures of one email from one source.
fn delay_after(count: u32) -> i64 {
    match count.checked_sub(FREE_FAILURES) {
        None => 0,
        Some(n) => 1i64.checked_shl(n.min(20)).unwrap_or(MAX_DELAY).min(MAX_DELAY),
    }
}

impl Failures {
    /// A turn at the password hasher (two at a time).
    pub(crate) async fn password_checks(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        self.checks.acquire().await.map_err(|_| Error::Unavailable("shutting down".into()))
    }
}

/// Counts an attempt for `pair` (email and source) and, unless the browser
/// is known, for the email's and the address's ceilings (`ceilings`), from
/// the counters `read`: the swaps that count it, or `Err` with the seconds
/// to wait. Failures are remembered for [`FAILURE_WINDOW`] after the last
/// one, so that an attack that keeps failing keeps waiting.
fn count_attempt(
    read: &HashMap<String, AttemptCounter>,
    pair: &str,
    ceilings: &[(&str, u32)],
    now: OffsetDateTime,
) -> Result<Vec<Mutation>, i64> {
    let secs = now.unix_timestamp();
    let live = |c: &AttemptCounter| secs - c.last.unix_timestamp() < FAILURE_WINDOW;
    let pair_wait = read.get(pair).filter(|c| live(c)).map(|c| c.last.unix_timestamp() + delay_after(c.count) - secs);
    let ceiling_waits = ceilings
        .iter()
        .filter_map(|(k, max)| read.get(*k).filter(|c| live(c) && c.count >= *max))
        .map(|c| c.last.unix_timestamp() + EMAIL_PACE - secs);
    if let Some(w) = pair_wait.into_iter().chain(ceiling_waits).filter(|w| *w > 0).max() {
        return Err(w);
    }
    // Whole seconds, as the waits are counted in.
    let at = now.replace_nanosecond(0).unwrap_or(now);
    Ok(std::iter::once(pair)
        .chain(ceilings.iter().map(|(k, _)| *k))
        .map(|k| {
            let expected = read.get(k).copied();
            let count = expected.filter(|c| live(c)).map_or(0, |c| c.count);
            Mutation::SwapAttemptCounter {
                key: k.to_owned(),
                expected,
                new: AttemptCounter { count: count.saturating_add(1), last: at },
            }
        })
        .collect())
}

/// A successful sign-in: its pair starts afresh, and its attempt no longer
/// counts against the ceilings.
fn give_back(pair: &str, ceilings: &[(&str, u32)]) -> Change {
    let mut change = Change::new().with(Mutation::ForgetAttemptCounter { key: pair.to_owned() });
    for (k, _) in ceilings {
        change.push(Mutation::DecrementAttemptCounter { key: (*k).to_owned() });
    }
    change
}

impl Mandate {
    /// Signs a person in. Every attempt is recorded. Attempts are paced
    /// (see [`Failures`]): per email and source, failures beyond
    /// [`FREE_FAILURES`] make the next attempt wait, doubling up to
    /// [`MAX_DELAY`]; per email, past [`EMAIL_CEILING`] failures from
    /// anywhere, attempts are slowed to one every [`EMAIL_PACE`] seconds,
    /// except from a browser the person signed in with before, which no one
    /// else can slow down.
    pub async fn sign_in(&self, email: &str, password: &str, source: Source<'_>) -> Result<SignedIn, Error> {
        let now = self.clock.now();
        // The one stored spelling of the address (anything that is not an
        // address finds nobody, and is checked against the decoy).
        let canonical = mandate_model::name::validate_email(email.trim()).ok();
        let email = canonical.clone().unwrap_or_else(|| email.trim().chars().take(254).collect());
        // A mark that is forged, expired or for someone else is no mark.
        let known = source.known.and_then(|mark| self.known_browser(mark, &email, now));
        let address = source.address.map(crate::refusals::address_bucket);
        let pair = match (&known, address) {
            (Some(browser), _) => format!("known:{browser}|{email}"),
            (None, Some(ip)) => format!("addr:{ip}|{email}"),
            (None, None) => format!("addr:unknown|{email}"),
        };
        let (email_key, address_key) =
            (format!("email:{email}"), format!("addr:{}", address.map_or_else(|| "unknown".into(), |a| a.to_string())));
        // A known browser is held by neither ceiling: nobody else's
        // failures can slow the person down there.
        let ceilings: Vec<(&str, u32)> = if known.is_some() {
            Vec::new()
        } else {
            vec![(email_key.as_str(), EMAIL_CEILING), (address_key.as_str(), ADDRESS_CEILING)]
        };
        let mut event = self.event(kind::SIGN_IN_FAILED);
        event.decision = Some(DENY.into());
        if let Err(wait) = self.count_sign_in(&pair, &ceilings, now).await? {
            event.reason = Some("too many failed sign-ins; the attempt must wait".into());
            self.record(event).await?;
            return Err(Error::RateLimited {
                why: format!("too many failed sign-ins; try again in {wait} s"),
                retry_after: u64::try_from(wait).unwrap_or(1).max(1),
            });
        }
        let user = match &canonical {
            Some(e) => self.store.user_by_email(e).await?,
            None => None,
        };
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
        self.open_session(user, give_back(&pair, &ceilings), None).await
    }

    /// Counts a sign-in attempt in the store's counters, or says how many
    /// seconds it must wait (`Ok(Err(_))`). When other attempts keep moving
    /// the counters first, it waits a second rather than go uncounted.
    async fn count_sign_in(
        &self,
        pair: &str,
        ceilings: &[(&str, u32)],
        now: OffsetDateTime,
    ) -> Result<Result<(), i64>, Error> {
        let keys: Vec<String> =
            std::iter::once(pair).chain(ceilings.iter().map(|(k, _)| *k)).map(str::to_owned).collect();
        for _ in 0..MAX_SWAPS {
            let read: HashMap<String, AttemptCounter> = self.store.attempt_counters(&keys).await?.into_iter().collect();
            let swaps = match count_attempt(&read, pair, ceilings, now) {
                Ok(swaps) => swaps,
                Err(wait) => return Ok(Err(wait)),
            };
            let mut change = Change::new();
            for m in swaps {
                change.push(m);
            }
            match self.store.commit(change).await {
                Ok(_) => return Ok(Ok(())),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Err(1))
    }

    /// Opens a session for `user`, who has just proved who they are, in one
    /// commit with `change` (what the sign-in changed of the person) and the
    /// `session.created` event; `how` says how they signed in, when not by
    /// password.
    pub(crate) async fn open_session(
        &self,
        user: User,
        change: Change,
        how: Option<String>,
    ) -> Result<SignedIn, Error> {
        let now = self.clock.now();
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
        let known_browser = self.seal_known_browser(&user.email, now)?;
        let mut event = self.event(kind::SESSION_CREATED);
        event.decision = Some(ALLOW.into());
        event.subject = Some(user.id.to_string());
        event.actor = Some(user.id.to_string());
        event.reason = how;
        self.store
            .commit(change.with(Mutation::InsertSession(record)).with(AuditRecord::new(event).mutation()))
            .await?;
        Ok(SignedIn { secret, session: Session { user, csrf, signed_in_at: now, expires_at }, known_browser })
    }

    /// The sealed mark of a browser that signed in as `email`: the email and
    /// an expiry, encrypted and authenticated under the master key, so that
    /// every node reads it and nobody can forge one.
    fn seal_known_browser(&self, email: &str, now: OffsetDateTime) -> Result<String, Error> {
        use base64::Engine;
        let until = (now + Duration::seconds(KNOWN_BROWSER_TTL)).unix_timestamp();
        let sealed = self
            .kek
            .seal(KNOWN_CONTEXT, format!("{until}\n{email}").as_bytes())
            .map_err(|e| Error::Unavailable(format!("sealing a known-browser mark: {e}")))?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
    }

    /// A stable name for a known browser's mark when it is valid for
    /// `email` now (its hash, so that logs and keys never hold the mark).
    fn known_browser(&self, cookie: &str, email: &str, now: OffsetDateTime) -> Option<String> {
        use base64::Engine;
        if cookie.len() > 512 {
            return None;
        }
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cookie).ok()?;
        let plain = self.kek.open(KNOWN_CONTEXT, &sealed).ok()?;
        let text = String::from_utf8(plain).ok()?;
        let (until, marked) = text.split_once('\n')?;
        let until: i64 = until.parse().ok()?;
        (marked == email && now.unix_timestamp() < until).then(|| secrets::hash(cookie))
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
        Ok(user.map(|user| Session {
            user,
            csrf: record.csrf,
            signed_in_at: record.created_at,
            expires_at: record.expires_at,
        }))
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

    /// The counters as a store keeps them, counted by [`count_attempt`]'s
    /// swaps and given back by [`give_back`]'s change.
    #[derive(Default)]
    struct Counters(std::sync::Mutex<HashMap<String, AttemptCounter>>);

    impl Counters {
        fn attempt(&self, pair: &str, ceilings: &[(&str, u32)], secs: i64) -> Result<(), i64> {
            let mut map = self.0.lock().unwrap();
            let now = OffsetDateTime::from_unix_timestamp(secs).unwrap();
            for m in count_attempt(&map, pair, ceilings, now)? {
                let Mutation::SwapAttemptCounter { key, expected, new } = m else { panic!("{m:?}") };
                assert_eq!(map.get(&key), expected.as_ref());
                map.insert(key, new);
            }
            Ok(())
        }

        fn succeeded(&self, pair: &str, ceilings: &[(&str, u32)]) {
            let mut map = self.0.lock().unwrap();
            for (_, m) in give_back(pair, ceilings).iter() {
                match m {
                    Mutation::ForgetAttemptCounter { key } => {
                        map.remove(key);
                    }
                    Mutation::DecrementAttemptCounter { key } => {
                        if let Some(c) = map.get_mut(key) {
                            c.count = c.count.saturating_sub(1);
                        }
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    fn ceilings<'a>(email: &'a str, addr: &'a str) -> Vec<(&'a str, u32)> {
        vec![(email, EMAIL_CEILING), (addr, ADDRESS_CEILING)]
    }

    #[test]
    fn failures_of_one_source_wait_longer_and_longer() {
        let f = Counters::default();
        let pair = "addr:10.0.0.1|a@example.com";
        let c = ceilings("email:a@example.com", "addr:10.0.0.1");
        for _ in 0..FREE_FAILURES {
            assert_eq!(f.attempt(pair, &c, 100), Ok(()));
        }
        // The fourth waits a second, the next two, then four…
        assert_eq!(f.attempt(pair, &c, 100), Err(1));
        assert_eq!(f.attempt(pair, &c, 101), Ok(()));
        assert_eq!(f.attempt(pair, &c, 101), Err(2));
        assert_eq!(f.attempt(pair, &c, 103), Ok(()));
        assert_eq!(f.attempt(pair, &c, 103), Err(4));
        // Another source for the same email is not held up by this one.
        assert_eq!(
            f.attempt("addr:10.0.0.2|a@example.com", &ceilings("email:a@example.com", "addr:10.0.0.2"), 103),
            Ok(())
        );
        // The wait is capped; it is forgotten only a window after the last
        // failure, however long ago the first was.
        assert_eq!(delay_after(100), MAX_DELAY);
        assert_eq!(f.attempt(pair, &c, 103 + FAILURE_WINDOW - 1), Ok(()));
        assert!(f.attempt(pair, &c, 103 + FAILURE_WINDOW).is_err(), "a persistent attack had its count reset");
        assert_eq!(f.attempt(pair, &c, 103 + 2 * FAILURE_WINDOW), Ok(()));
    }

    #[test]
    fn the_ceilings_slow_and_a_known_browser_is_not_slowed() {
        let f = Counters::default();
        // Failures for one email from many addresses (each under its own
        // free count).
        for n in 0..EMAIL_CEILING {
            let (pair, addr) = (format!("addr:10.0.{n}.1|b@example.com"), format!("addr:10.0.{n}.1"));
            assert_eq!(f.attempt(&pair, &ceilings("email:b@example.com", &addr), 100), Ok(()), "attempt {n}");
        }
        // Past the email's ceiling, any new address is paced, never locked.
        let c = ceilings("email:b@example.com", "addr:192.0.2.1");
        assert_eq!(f.attempt("addr:192.0.2.1|b@example.com", &c, 100), Err(EMAIL_PACE));
        assert_eq!(f.attempt("addr:192.0.2.1|b@example.com", &c, 100 + EMAIL_PACE), Ok(()));
        // The person's own browser is held by neither ceiling.
        assert_eq!(f.attempt("known:abc|b@example.com", &[], 100 + EMAIL_PACE), Ok(()));
        // Password spraying: one address, many emails, each under its own
        // free count: past the address's ceiling, it is paced.
        for n in 0..ADDRESS_CEILING {
            let (pair, email) = (format!("addr:198.51.100.9|u{n}@example.com"), format!("email:u{n}@example.com"));
            assert_eq!(f.attempt(&pair, &ceilings(&email, "addr:198.51.100.9"), 200), Ok(()), "spray {n}");
        }
        let c = ceilings("email:last@example.com", "addr:198.51.100.9");
        assert_eq!(f.attempt("addr:198.51.100.9|last@example.com", &c, 200), Err(EMAIL_PACE));
    }

    #[test]
    fn parallel_guesses_are_counted_one_by_one() {
        let f = Counters::default();
        let c = ceilings("email:c@example.com", "addr:10.0.0.1");
        let passed = (0..20).filter(|_| f.attempt("addr:10.0.0.1|c@example.com", &c, 100).is_ok()).count();
        assert_eq!(passed, FREE_FAILURES as usize);
    }

    #[tokio::test]
    async fn an_attempt_counted_from_a_stale_read_is_refused_by_the_store() {
        use crate::store::{MemoryStore, Store};
        let store = MemoryStore::default();
        let (pair, c) = ("addr:10.0.0.1|e@example.com", ceilings("email:e@example.com", "addr:10.0.0.1"));
        let now = OffsetDateTime::from_unix_timestamp(100).unwrap();
        // Two nodes read the same (no) counters; the first to commit counts.
        let read = HashMap::new();
        let commit = |swaps: Vec<Mutation>| {
            let mut change = Change::new();
            for m in swaps {
                change.push(m);
            }
            store.commit(change)
        };
        commit(count_attempt(&read, pair, &c, now).unwrap()).await.unwrap();
        let stale = commit(count_attempt(&read, pair, &c, now).unwrap()).await;
        assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
        // Counted again from what is stored now, it goes in.
        let keys: Vec<String> = [pair, "email:e@example.com", "addr:10.0.0.1"].map(str::to_owned).to_vec();
        let read: HashMap<_, _> = store.attempt_counters(&keys).await.unwrap().into_iter().collect();
        assert_eq!(read.get(pair).map(|c| c.count), Some(1));
        commit(count_attempt(&read, pair, &c, now).unwrap()).await.unwrap();
        let read: HashMap<_, _> = store.attempt_counters(&keys).await.unwrap().into_iter().collect();
        assert!(keys.iter().all(|k| read.get(k).map(|c| c.count) == Some(2)), "{read:?}");
    }

    #[test]
    fn a_success_gives_its_attempt_back() {
        let f = Counters::default();
        let pair = "addr:10.0.0.1|d@example.com";
        let c = ceilings("email:d@example.com", "addr:10.0.0.1");
        // Many sign-ins behind one address succeed.
        for _ in 0..(FREE_FAILURES * 3) {
            assert_eq!(f.attempt(pair, &c, 100), Ok(()));
            f.succeeded(pair, &c);
        }
        assert_eq!(f.attempt(pair, &c, 100), Ok(()));
    }
}
