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

/// A source of secure randomness.
pub trait Random: Send + Sync + 'static {
    fn fill(&self, buf: &mut [u8]);
}

/// The operating system's CSPRNG, through aws-lc-rs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRandom;

impl Random for SystemRandom {
    fn fill(&self, buf: &mut [u8]) {
        use aws_lc_rs::rand::SecureRandom;
        // aws-lc's RNG does not fail once initialised; if it ever did, a
        // zeroed buffer would make ids collide (refused by the store) and
        // secrets guessable, so fall back to aborting the request path.
        if aws_lc_rs::rand::SystemRandom::new().fill(buf).is_err() {
            buf.fill(0);
            tracing::error!("the system random source failed");
        }
    }
}

/// A new ULID from the injected clock and randomness.
pub fn new_ulid(clock: &dyn Clock, rng: &dyn Random) -> Ulid {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes);
    let ms = (clock.now().unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    Ulid::from_parts(ms, u128::from_le_bytes(bytes))
}
