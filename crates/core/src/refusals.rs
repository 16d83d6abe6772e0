//! Aggregation of repeated refusals (SECURITY row 45). A flood of bad
//! credentials from one source would otherwise append one durable audit
//! event per request. The first refusal of a kind from a source is written
//! at once; identical ones in the next [`WINDOW`] are only counted, and
//! written as one event whose `count` says how many there were and whose
//! reason names the source, when the window closes. The trail still shows
//! every refusal, in number, and the disk grows by one row per source and
//! kind per window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use mandate_audit::Event;
use time::{Duration, OffsetDateTime};

use crate::audit::kind;

/// How long identical refusals are counted before their count is written.
pub const WINDOW: Duration = Duration::seconds(60);
/// Most sources and kinds counted at once; past it, refusals are written
/// one by one again (the rate limits bound how fast that can be).
const MAX_OPEN: usize = 100_000;

/// The kinds aggregated: refusals of callers that did not authenticate.
const AGGREGATED: &[&str] =
    &[kind::CLIENT_AUTH_FAILED, kind::ADMIN_AUTH_FAILED, kind::SIGN_IN_FAILED, kind::TOKEN_DENIED];

/// What makes two refusals the same: the source and everything the event says.
pub(crate) fn key_of(e: &Event, source: Option<IpAddr>) -> Option<String> {
    if e.decision.as_deref() != Some(crate::audit::DENY) || !AGGREGATED.contains(&e.kind.as_str()) {
        return None;
    }
    let source = source?;
    Some(format!(
        "{source}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        e.kind, e.client_id, e.subject, e.actor, e.resource, e.scope, e.reason
    ))
}

struct Open {
    since: OffsetDateTime,
    /// Refusals counted but not written.
    more: u64,
    /// The first refusal, to write the count as.
    first: Event,
    source: String,
}

#[derive(Default)]
pub(crate) struct Refusals {
    open: Mutex<HashMap<String, Open>>,
}

impl Refusals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Open>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `event` repeats one written within the window (then it is
    /// only counted). Otherwise it opens a window and must be written.
    pub(crate) fn suppress(&self, key: String, event: &Event, now: OffsetDateTime) -> bool {
        let mut open = self.lock();
        if let Some(o) = open.get_mut(&key)
            && now - o.since < WINDOW
        {
            o.more += 1;
            return true;
        }
        if open.len() < MAX_OPEN || open.contains_key(&key) {
            let source = key.split('|').next().unwrap_or_default().to_owned();
            // A window that closed unflushed is replaced; its count is lost
            // only if the flush did not run for a whole window, which the
            // server's once-a-second flush prevents.
            open.insert(key, Open { since: now, more: 0, first: event.clone(), source });
        }
        false
    }

    /// The count events of windows closed at `now` (all windows if `all`).
    pub(crate) fn due(&self, now: OffsetDateTime, all: bool) -> Vec<Event> {
        let mut open = self.lock();
        let closed: Vec<String> =
            open.iter().filter(|(_, o)| all || now - o.since >= WINDOW).map(|(k, _)| k.clone()).collect();
        let mut out = Vec::new();
        for k in closed {
            let Some(o) = open.remove(&k) else { continue };
            if o.more == 0 {
                continue;
            }
            let mut e = o.first;
            e.time = crate::audit::event_time(now);
            e.count = Some(o.more);
            e.request_id = None;
            let said = e.reason.take().unwrap_or_default();
            e.reason = Some(crate::audit::bounded(&format!(
                "{said} (repeated {} more time(s) from {} within {} s)",
                o.more,
                o.source,
                WINDOW.whole_seconds()
            )));
            out.push(e);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(reason: &str) -> Event {
        let mut e = Event::new(kind::CLIENT_AUTH_FAILED, "2026-12-06T00:00:00.000000Z");
        e.decision = Some("deny".into());
        e.reason = Some(reason.into());
        e
    }

    #[test]
    fn identical_refusals_from_one_source_are_counted_once_per_window() {
        let r = Refusals::default();
        let t = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let ip: IpAddr = [203, 0, 113, 9].into();
        let e = refusal("bad assertion");
        let key = key_of(&e, Some(ip)).unwrap();
        assert!(!r.suppress(key.clone(), &e, t), "the first is written");
        for i in 1..=5 {
            assert!(r.suppress(key.clone(), &e, t + Duration::seconds(i)), "repeat {i} was not counted");
        }
        // Another reason, or another source, is another window.
        let other = refusal("unknown client");
        assert!(!r.suppress(key_of(&other, Some(ip)).unwrap(), &other, t));
        assert!(!r.suppress(key_of(&e, Some([203, 0, 113, 10].into())).unwrap(), &e, t));
        assert!(r.due(t + Duration::seconds(30), false).is_empty(), "written before the window closed");
        let due = r.due(t + WINDOW, false);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].count, Some(5));
        assert!(due[0].reason.as_deref().is_some_and(|s| s.contains("203.0.113.9") && s.contains("5 more")));
        // After the window, the next one is written again.
        assert!(!r.suppress(key, &e, t + WINDOW + Duration::seconds(1)));
        // Allows, other kinds and unknown sources are never aggregated.
        let mut allow = refusal("x");
        allow.decision = Some("allow".into());
        assert!(key_of(&allow, Some(ip)).is_none());
        assert!(key_of(&Event::new(kind::TOKEN_ISSUED, ""), Some(ip)).is_none());
        assert!(key_of(&e, None).is_none());
    }
}
