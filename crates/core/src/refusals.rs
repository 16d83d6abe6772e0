//! Aggregation of repeated refusals (SECURITY row 45). A flood of bad
//! credentials from one source would otherwise append one durable audit
//! event per request. Refusals are grouped by source (an IPv4 address, or
//! an IPv6 /64) and kind. Within a group, the first refusal of each variant
//! (its client, subject and reason) is written at once, whole; identical
//! ones in the next [`WINDOW`] are only counted, and written as one event
//! whose `count` says how many there were when the window closes. A group
//! keeps at most [`MAX_VARIANTS`] variants apart: past that, whatever the
//! caller varies (a client id, a header that lands in the reason) counts
//! into one catch-all window. The trail still shows every refusal, in
//! number, and the disk grows by a bounded number of rows per source and
//! kind per window. Past [`MAX_OPEN`] windows, the rest share one window
//! per kind.

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

/// The source refusals are counted under: an IPv4 address, or the /64 of
/// an IPv6 one (a host can walk through the addresses of its /64).
pub fn address_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            for s in seg.iter_mut().skip(4) {
                *s = 0;
            }
            IpAddr::V6(seg.into())
        }
    }
}

/// Variants of refusal kept apart per source and kind in one window.
pub const MAX_VARIANTS: usize = 8;

/// The group a refusal counts in (its source and kind) and its variant
/// (what it says), or `None` for an event that is never aggregated.
pub(crate) fn key_of(e: &Event, source: Option<IpAddr>) -> Option<Key> {
    if e.decision.as_deref() != Some(crate::audit::DENY) || !AGGREGATED.contains(&e.kind.as_str()) {
        return None;
    }
    let source = address_bucket(source?);
    Some(Key {
        group: format!("{source}|{}", e.kind),
        variant: format!("{:?}|{:?}|{:?}|{:?}", e.client_id, e.subject, e.actor, e.reason),
    })
}

/// Where a refusal is counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    group: String,
    variant: String,
}

struct Open {
    since: OffsetDateTime,
    /// A group's catch-all window (its refusals said different things).
    catch_all: bool,
    /// Refusals counted but not written.
    more: u64,
    /// The first refusal, to write the count as.
    first: Event,
    source: String,
}

#[derive(Default)]
pub(crate) struct Refusals {
    /// Windows by group, then by variant (`*` for a group's catch-all).
    open: Mutex<HashMap<String, HashMap<String, Open>>>,
    /// Count events of windows that closed but were not written yet
    /// (replaced by a new window, or put back after a failed write).
    ready: Mutex<Vec<Event>>,
}

impl Refusals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Open>>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `event` repeats one written within its window (then it is
    /// only counted). Otherwise it opens a window and must be written.
    pub(crate) fn suppress(&self, key: Key, event: &Event, now: OffsetDateTime) -> bool {
        let mut open = self.lock();
        let live = |o: &Open| now - o.since < WINDOW;
        // Too many sources at once: the rest share one group per kind.
        let group = if open.len() >= MAX_OPEN && !open.contains_key(&key.group) {
            format!("*|{}", event.kind)
        } else {
            key.group
        };
        let windows = open.entry(group.clone()).or_default();
        if let Some(o) = windows.get_mut(&key.variant)
            && live(o)
        {
            o.more += 1;
            return true;
        }
        // A group keeps only so many variants apart.
        let kept = windows.iter().filter(|(v, o)| v.as_str() != "*" && live(o)).count();
        let variant = if kept >= MAX_VARIANTS || group.starts_with('*') { "*".to_owned() } else { key.variant };
        if let Some(o) = windows.get_mut(&variant)
            && live(o)
        {
            o.more += 1;
            return true;
        }
        let source = group.split('|').next().unwrap_or_default().to_owned();
        let catch_all = variant == "*";
        let replaced = windows.insert(variant, Open { since: now, catch_all, more: 0, first: event.clone(), source });
        // A window that closed before its flush keeps its count.
        if let Some(old) = replaced.and_then(|o| count_event(o, now))
            && let Ok(mut ready) = self.ready.lock()
        {
            ready.push(old);
        }
        false
    }

    /// The count events of windows closed at `now` (all windows if `all`),
    /// taken out to be written; [`Refusals::put_back`] returns them if the
    /// write fails.
    pub(crate) fn due(&self, now: OffsetDateTime, all: bool) -> Vec<Event> {
        let mut out: Vec<Event> = self.ready.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
        let mut open = self.lock();
        for windows in open.values_mut() {
            let closed: Vec<String> =
                windows.iter().filter(|(_, o)| all || now - o.since >= WINDOW).map(|(k, _)| k.clone()).collect();
            for k in closed {
                if let Some(e) = windows.remove(&k).and_then(|o| count_event(o, now)) {
                    out.push(e);
                }
            }
        }
        open.retain(|_, windows| !windows.is_empty());
        out
    }

    /// Count events whose write failed: kept for the next flush.
    pub(crate) fn put_back(&self, events: Vec<Event>) {
        if let Ok(mut ready) = self.ready.lock() {
            ready.extend(events);
        }
    }
}

/// The event that records a window's count, if it counted anything.
fn count_event(o: Open, now: OffsetDateTime) -> Option<Event> {
    if o.more == 0 {
        return None;
    }
    let mut e = o.first;
    e.time = crate::audit::event_time(now);
    e.count = Some(o.more);
    e.request_id = None;
    let said = e.reason.take().unwrap_or_default();
    let from = if o.source == "*" { "many sources".to_owned() } else { o.source };
    e.reason = Some(crate::audit::bounded(&format!(
        "{said} (and {} more refusal(s) of this kind from {from} within {} s{})",
        o.more,
        WINDOW.whole_seconds(),
        if o.catch_all { "; their clients and reasons varied" } else { ", the same" }
    )));
    Some(e)
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
        // Another source is another window.
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
        // The addresses of one IPv6 /64 are one source.
        let (a, b): (IpAddr, IpAddr) = ("2001:db8:1:2::1".parse().unwrap(), "2001:db8:1:2:ffff::9".parse().unwrap());
        assert_eq!(key_of(&e, Some(a)).map(|k| k.group), key_of(&e, Some(b)).map(|k| k.group));
    }

    #[test]
    fn varying_what_a_refusal_says_does_not_escape_the_count() {
        let r = Refusals::default();
        let t = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let ip: IpAddr = [198, 51, 100, 1].into();
        let mut written = 0;
        for n in 0..1_000 {
            let mut e = refusal("unknown client");
            e.client_id = Some(format!("agt_{n}"));
            if !r.suppress(key_of(&e, Some(ip)).unwrap(), &e, t) {
                written += 1;
            }
        }
        // The first variants are kept apart, then one catch-all.
        assert_eq!(written, MAX_VARIANTS + 1);
        let due = r.due(t + WINDOW, false);
        let counted: u64 = due.iter().filter_map(|e| e.count).sum();
        assert_eq!(counted, 1_000 - (MAX_VARIANTS as u64 + 1));
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn a_count_survives_a_failed_write_and_a_late_flush() {
        let r = Refusals::default();
        let t = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let mut e = Event::new(kind::ADMIN_AUTH_FAILED, "2026-12-06T00:00:00.000000Z");
        e.decision = Some("deny".into());
        let key = key_of(&e, Some([192, 0, 2, 1].into())).unwrap();
        assert!(!r.suppress(key.clone(), &e, t));
        assert!(r.suppress(key.clone(), &e, t));
        // The flush did not run in time: the next refusal opens a new
        // window, and the old count waits to be written.
        assert!(!r.suppress(key.clone(), &e, t + WINDOW + Duration::seconds(5)));
        let due = r.due(t + WINDOW + Duration::seconds(5), false);
        assert_eq!(due.iter().map(|e| e.count).collect::<Vec<_>>(), vec![Some(1)]);
        // Its write failed: it is put back and written next time.
        r.put_back(due);
        assert_eq!(r.due(t + WINDOW + Duration::seconds(6), false).len(), 1);
    }
}
