//! Time and randomness are passed in, so that expiry and revocation are
//! tested without sleeping.

use std::sync::Mutex;

use time::{Duration, OffsetDateTime};
use ulid::Ulid;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The one place the wall clock is read.
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock tests move by hand.
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    pub fn new(at: OffsetDateTime) -> Self {
        Self(Mutex::new(at))
    }

    pub fn advance(&self, by: Duration) {
        if let Ok(mut t) = self.0.lock() {
            *t += by;
        }
    }

    pub fn set(&self, at: OffsetDateTime) {
        if let Ok(mut t) = self.0.lock() {
            *t = at;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        match self.0.lock() {
            Ok(t) => *t,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

/// The random source could not fill a buffer. Nothing that needed the
/// bytes may go ahead: the request fails (SECURITY row 46).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the random source failed")]
pub struct RandomError;

/// A source of secure randomness. A failure is an error the caller must
/// handle, never a buffer of predictable bytes.
pub trait Random: Send + Sync + 'static {
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError>;
}

/// The operating system's CSPRNG, through aws-lc-rs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRandom;

impl Random for SystemRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError> {
        use aws_lc_rs::rand::SecureRandom;
        aws_lc_rs::rand::SystemRandom::new().fill(buf).map_err(|_| {
            tracing::error!("the system random source failed");
            RandomError
        })
    }
}

/// A new ULID from the injected clock and randomness.
pub fn new_ulid(clock: &dyn Clock, rng: &dyn Random) -> Result<Ulid, crate::Error> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes)?;
    // A clock before 1970 is not a time an id can carry: fail, never clamp.
    let ms = u64::try_from(clock.now().unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| crate::Error::Unavailable("the clock reads before 1970".into()))?;
    Ok(Ulid::from_parts(ms, u128::from_le_bytes(bytes)))
}

/// Admits a client that has just authenticated, or refuses it (the edge's
/// per-client rate limit). Charged only after authentication, so that
/// nobody can use up another client's budget by naming its id.
pub trait ClientGate: Send + Sync + 'static {
    fn admit(&self, client: &mandate_model::records::ClientId) -> Result<(), crate::Error>;
}

/// A document fetched for Mandate from a URL a client named (a client
/// metadata document, a `jwks_uri`).
#[derive(Debug, Clone)]
pub struct FetchedDocument {
    pub body: Vec<u8>,
    /// The lifetime its HTTP cache headers give; `None` when they give none.
    pub max_age: Option<std::time::Duration>,
    /// `Cache-Control: no-store` or `no-cache`.
    pub no_store: bool,
}

/// Fetches what clients name, with the SSRF guards of DESIGN §9: https
/// only, no private or loopback addresses (each DNS answer and each
/// redirect checked), bounded size, time and redirects. The error is a
/// description that may be shown to the client.
#[async_trait::async_trait]
pub trait MetadataFetcher: Send + Sync + 'static {
    async fn fetch(&self, url: &str) -> Result<FetchedDocument, FetchFailure>;
}

/// Why a document could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFailure {
    /// Safe to show to the client.
    pub why: String,
    /// Busy, timed out or unreachable: worth trying again at once, so not
    /// remembered against the URL (anyone could cause it).
    pub transient: bool,
}

/// Why a message could not be sent. Never holds what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    /// For the audit trail and logs.
    pub why: String,
    /// Worth trying again later (a timeout, a 5xx); `false` gives up at
    /// once (the endpoint is not allowed, the address is refused).
    pub retry: bool,
}

/// Sends CIBA ping and push callbacks (OpenID CIBA §10.2, §10.3) through
/// the SSRF guards of DESIGN §9: https only, public addresses only (each
/// DNS answer checked), bounded size and time, no redirects followed.
#[async_trait::async_trait]
pub trait CallbackSender: Send + Sync + 'static {
    /// The checks made before any I/O (scheme, credentials, fragment, an
    /// IP-literal host), used when an agent registers its endpoint. The
    /// error is a description that may be shown to the client.
    fn check_url(&self, url: &str) -> Result<(), String>;
    /// POSTs the JSON `body` to `url` with `Authorization: Bearer
    /// <bearer>`; any 2xx answer is a delivery.
    async fn post_json(&self, url: &str, bearer: &str, body: &[u8]) -> Result<(), SendFailure>;
}

/// Tells the people asked to decide an approval that it waits for them
/// (a webhook, an email). Called from the outbox, so a failure is retried.
#[async_trait::async_trait]
pub trait ApproverNotifier: Send + Sync + 'static {
    /// The outbox channel of this notifier (`webhook`, `email`): unique.
    fn channel(&self) -> &'static str;
    async fn notify(&self, notice: &crate::delivery::ApprovalNotice) -> Result<(), SendFailure>;
}
