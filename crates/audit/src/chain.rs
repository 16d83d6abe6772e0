//! Events, the hash chain and signed checkpoints.

use std::collections::BTreeMap;

use base64::Engine;
use mandate_jose::{PublicJwk, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::canonical::{CanonicalError, to_canonical, write_string};

/// `prev_hash` of the first event: 32 zero bytes, hex.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One append-only audit entry (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub decision: Option<String>,
    /// The user the action was for.
    pub subject: Option<String>,
    /// The current agent.
    pub actor: Option<String>,
    /// User → … → actor.
    pub chain: Vec<String>,
    pub client_id: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub scope: Option<String>,
    pub jti: Option<String>,
    pub grant_id: Option<String>,
    /// The `jti` this token was exchanged from (a delegation hop).
    pub parent: Option<String>,
    /// How many records the change reached (tokens a revocation cascaded
    /// to, agents retired).
    pub count: Option<u64>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
    /// The chain (lane) the event links into: 0 for a store with one
    /// writer; one per writer task on PostgreSQL. Not hashed: moving an
    /// event to another lane breaks the links instead (see
    /// [`lane_genesis`]). Left out of the JSON when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lane: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Event {
    /// An unsealed event of `kind` at `time` with every optional field
    /// empty; the store fills in `seq`, `prev_hash` and `hash`.
    pub fn new(kind: impl Into<String>, time: impl Into<String>) -> Self {
        Self {
            seq: 0,
            time: time.into(),
            kind: kind.into(),
            decision: None,
            subject: None,
            actor: None,
            chain: Vec::new(),
            client_id: None,
            action: None,
            resource: None,
            scope: None,
            jti: None,
            grant_id: None,
            parent: None,
            count: None,
            reason: None,
            request_id: None,
            prev_hash: String::new(),
            hash: String::new(),
            lane: 0,
        }
    }

    /// `SHA-256(prev_hash || canonical JSON of the event without "hash")`,
    /// hex. `prev_hash` enters as its 32 raw bytes.
    pub fn compute_hash(&self) -> Result<String, CanonicalError> {
        let mut buf = String::with_capacity(512);
        Ok(hex(&self.digest(&mut buf)))
    }

    /// The raw SHA-256 behind [`Event::compute_hash`], reusing `buf`.
    fn digest(&self, buf: &mut String) -> [u8; 32] {
        self.digest_as(buf, self.seq, &self.prev_hash, self.count)
    }

    /// The hash this event would have with `seq`, `prev_hash` and `count`
    /// in place of its own: what [`seal`] computes, without a copy of the
    /// event (stores hash every event while they hold the chain's head).
    pub fn hash_as(&self, seq: u64, prev_hash: &str, count: Option<u64>) -> String {
        let mut buf = String::with_capacity(512);
        hex(&self.digest_as(&mut buf, seq, prev_hash, count))
    }

    fn digest_as(&self, buf: &mut String, seq: u64, prev_hash: &str, count: Option<u64>) -> [u8; 32] {
        self.digest_linked(buf, seq, prev_hash, hex_32(prev_hash).as_ref(), count)
    }

    /// The digest given `prev_hash` both as text (as the canonical form
    /// holds it) and, when it is well formed, as its 32 raw bytes (as the
    /// link hashes it); the verifier passes the bytes it just computed.
    fn digest_linked(
        &self,
        buf: &mut String,
        seq: u64,
        prev_hash: &str,
        prev_raw: Option<&[u8; 32]>,
        count: Option<u64>,
    ) -> [u8; 32] {
        buf.clear();
        self.write_canonical_as(buf, seq, prev_hash, count);
        let mut h = Sha256::new();
        match prev_raw {
            Some(bytes) => h.update(bytes),
            // Malformed: hash the text itself, which no real chain produces.
            None => h.update(prev_hash.as_bytes()),
        }
        h.update(buf.as_bytes());
        h.finalize().into()
    }

    /// The RFC 8785 form of the event without `hash`, written directly:
    /// members in sorted order, the same bytes as
    /// `to_canonical(&to_value(event) minus "hash")` (a property test checks
    /// it) without building a JSON tree, which triples verification speed.
    pub fn write_canonical(&self, out: &mut String) {
        self.write_canonical_as(out, self.seq, &self.prev_hash, self.count);
    }

    fn write_canonical_as(&self, out: &mut String, seq: u64, prev_hash: &str, count: Option<u64>) {
        fn opt(out: &mut String, name: &str, v: &Option<String>) {
            out.push_str(name);
            match v {
                Some(s) => write_string(out, s),
                None => out.push_str("null"),
            }
        }
        opt(out, "{\"action\":", &self.action);
        opt(out, ",\"actor\":", &self.actor);
        out.push_str(",\"chain\":[");
        for (i, c) in self.chain.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_string(out, c);
        }
        out.push(']');
        opt(out, ",\"client_id\":", &self.client_id);
        out.push_str(",\"count\":");
        match count {
            Some(n) => write_u64(out, n),
            None => out.push_str("null"),
        }
        opt(out, ",\"decision\":", &self.decision);
        opt(out, ",\"grant_id\":", &self.grant_id);
        opt(out, ",\"jti\":", &self.jti);
        opt(out, ",\"parent\":", &self.parent);
        out.push_str(",\"prev_hash\":");
        write_string(out, prev_hash);
        opt(out, ",\"reason\":", &self.reason);
        opt(out, ",\"request_id\":", &self.request_id);
        opt(out, ",\"resource\":", &self.resource);
        opt(out, ",\"scope\":", &self.scope);
        out.push_str(",\"seq\":");
        write_u64(out, seq);
        opt(out, ",\"subject\":", &self.subject);
        out.push_str(",\"time\":");
        write_string(out, &self.time);
        out.push_str(",\"type\":");
        write_string(out, &self.kind);
        out.push('}');
    }

    /// The generic route to the same bytes, kept to check the fast one.
    pub fn canonical_via_value(&self) -> Result<String, CanonicalError> {
        let mut value = serde_json::to_value(self).map_err(|e| CanonicalError::Encode(e.to_string()))?;
        if let Some(obj) = value.as_object_mut() {
            obj.remove("hash");
            obj.remove("lane");
        }
        to_canonical(&value)
    }
}

/// Links `event` after `prev_hash` with sequence number `seq` and fills in
/// its hash.
pub fn seal(mut event: Event, seq: u64, prev_hash: &str) -> Result<Event, CanonicalError> {
    event.seq = seq;
    event.prev_hash = prev_hash.to_owned();
    event.hash = event.compute_hash()?;
    Ok(event)
}

/// A signed statement that the chain had `hash` at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub time: String,
    pub kid: String,
    /// base64url Ed25519 (or ES256) signature over the canonical JSON of
    /// `{seq, hash, time, kid}`.
    pub signature: String,
}

fn checkpoint_message(seq: u64, hash: &str, time: &str, kid: &str) -> Result<String, CanonicalError> {
    to_canonical(&serde_json::json!({ "seq": seq, "hash": hash, "time": time, "kid": kid }))
}

/// Signs a checkpoint of the chain at `seq`/`hash`.
pub fn sign_checkpoint(key: &SigningKey, seq: u64, hash: &str, time: &str) -> Result<Checkpoint, Tamper> {
    let msg = checkpoint_message(seq, hash, time, key.kid())
        .map_err(|_| Tamper::new(seq, "checkpoint is not canonicalizable"))?;
    let sig = key.sign(msg.as_bytes()).map_err(|_| Tamper::new(seq, "signing failed"))?;
    Ok(Checkpoint {
        seq,
        hash: hash.to_owned(),
        time: time.to_owned(),
        kid: key.kid().to_owned(),
        signature: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
    })
}

/// Where and why verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at seq {seq}: {reason}")]
pub struct Tamper {
    /// The first entry that does not verify.
    pub seq: u64,
    pub reason: String,
}

impl Tamper {
    pub fn new(seq: u64, reason: impl Into<String>) -> Self {
        Self { seq, reason: reason.into() }
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Events checked, in every lane.
    pub events: u64,
    /// The hash of the event with the highest `seq` (`GENESIS` for an
    /// empty trail).
    pub head: String,
    /// Checkpoints whose signature and hash were checked.
    pub checkpoints: usize,
    /// Lanes that held events.
    pub lanes: usize,
}

/// The `prev_hash` of a lane's first event. Lane 0 (the one lane of a
/// store with a single writer, and the chain written before lanes existed)
/// starts at [`GENESIS`]; lane `n` starts at the hex SHA-256 of
/// `mandate audit lane n`, so that an event moved to another lane no
/// longer links there, even as that lane's first event.
pub fn lane_genesis(lane: u64) -> String {
    if lane == 0 {
        return GENESIS.to_owned();
    }
    let mut label = String::from("mandate audit lane ");
    write_u64(&mut label, lane);
    hex(&Sha256::digest(label.as_bytes()))
}

/// Where verification stands in one lane.
#[derive(Debug)]
struct LaneState {
    /// The `seq` of the lane's last verified event (0 before the first).
    last_seq: u64,
    /// Its hash: what the lane's next event must link to.
    prev: String,
    /// A failure was found in this lane: its later events are not fed.
    broken: bool,
}

/// Verifies a trail of one or more lanes (hash chains), each fed in `seq`
/// order a page at a time, so that a store of any size is checked in
/// bounded memory.
///
/// Every checkpoint's signature is checked up front, and its hash is
/// compared with the event of the same `seq` when a lane reaches it. Edits,
/// deletions, insertions, reorderings and events moved between lanes break
/// their lane at the first affected entry. Truncating a lane's tail, or
/// replacing it whole, is caught only against a checkpoint: one vouching
/// for a `seq` no lane holds, or one whose hash differs.
///
/// Within a lane `seq` only increases; lanes written concurrently leave
/// gaps in each other's numbering. A failure is reported at one past the
/// last good event of its lane (for a single gapless lane, exactly the
/// first bad entry), and across lanes the earliest failure wins.
#[derive(Debug)]
pub struct ChainVerifier {
    lanes: BTreeMap<u64, LaneState>,
    /// Checkpoint seq → the hash the event there must have.
    expected: BTreeMap<u64, String>,
    /// Checkpoints an event has met.
    matched: std::collections::BTreeSet<u64>,
    /// The earliest checkpoint that is itself invalid.
    bad_checkpoint: Option<Tamper>,
    /// The earliest failure found in any lane.
    broken: Option<Tamper>,
    events: u64,
    /// The highest seq verified and its hash.
    head: (u64, String),
}

impl ChainVerifier {
    /// Starts a verification against `checkpoints`, whose signatures are
    /// checked with `keys` (matched by `kid` only: a checkpoint names no key
    /// material of its own).
    pub fn new(checkpoints: &[Checkpoint], keys: &[PublicJwk]) -> Self {
        let mut expected = BTreeMap::new();
        let mut bad: Option<Tamper> = None;
        for cp in checkpoints {
            match check_checkpoint(cp, keys) {
                Ok(()) => {
                    // Two valid checkpoints that disagree about one seq
                    // cannot both describe this trail.
                    if let Some(other) = expected.insert(cp.seq, cp.hash.clone())
                        && other != cp.hash
                    {
                        bad = Some(earliest(bad, Tamper::new(cp.seq, "two signed checkpoints disagree")));
                    }
                }
                Err(t) => bad = Some(earliest(bad, t)),
            }
        }
        Self {
            lanes: BTreeMap::new(),
            expected,
            matched: std::collections::BTreeSet::new(),
            bad_checkpoint: bad,
            broken: None,
            events: 0,
            head: (0, GENESIS.to_owned()),
        }
    }

    /// Checks the next `events` of lane 0, the only lane of a single chain.
    pub fn feed(&mut self, events: &[Event]) -> Result<(), Tamper> {
        self.feed_lane(0, events)
    }

    /// Checks the next `events` of `lane`, which must continue what was
    /// fed of that lane so far. On a failure the lane is closed (later
    /// pages of it are ignored) and the earliest failure found so far is
    /// returned; other lanes may still be fed, and [`finish`](Self::finish)
    /// reports the earliest of all.
    pub fn feed_lane(&mut self, lane: u64, events: &[Event]) -> Result<(), Tamper> {
        let state = self.lanes.entry(lane).or_insert_with(|| LaneState {
            last_seq: 0,
            prev: lane_genesis(lane),
            broken: false,
        });
        if events.is_empty() || state.broken {
            return Ok(());
        }
        let failure = match verify_links(events, lane, state.last_seq, &state.prev) {
            Err((at, t)) => {
                // A checkpoint before the break may already disagree: a lane
                // recomputed from an edit on is consistent up to where the
                // recomputation stopped.
                let good = events.get(..at).unwrap_or_default();
                let mismatch = first_checkpoint_mismatch(&self.expected, good);
                if mismatch.is_none() {
                    // The checkpoints the good entries met are met.
                    for e in good {
                        if self.expected.get(&e.seq) == Some(&e.hash) {
                            self.matched.insert(e.seq);
                        }
                    }
                }
                Some(mismatch.unwrap_or(t))
            }
            Ok(()) => first_checkpoint_mismatch(&self.expected, events),
        };
        if let Some(t) = failure {
            state.broken = true;
            // Nothing of the lane past the failure counts as verified.
            state.last_seq = state.last_seq.max(t.seq.saturating_sub(1));
            let worst = earliest(self.broken.take(), t);
            self.broken = Some(worst.clone());
            return Err(self.with_checkpoint_errors(worst));
        }
        if let Some(last) = events.last() {
            state.last_seq = last.seq;
            state.prev.clone_from(&last.hash);
            if last.seq > self.head.0 {
                self.head = (last.seq, last.hash.clone());
            }
        }
        self.events += events.len() as u64;
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            let met: Vec<u64> = self.expected.range(first.seq..=last.seq).map(|(s, _)| *s).collect();
            for seq in met {
                if events.binary_search_by_key(&seq, |e| e.seq).is_ok() {
                    self.matched.insert(seq);
                }
            }
        }
        Ok(())
    }

    /// Ends the verification: every checkpoint must have met its event.
    pub fn finish(self) -> Result<Verified, Tamper> {
        let mut failure = self.broken.clone();
        if let Some(t) = self.bad_checkpoint.clone() {
            failure = Some(earliest(failure, t));
        }
        if let Some((&seq, _)) = self.expected.iter().find(|(seq, _)| !self.matched.contains(seq)) {
            // The first seq that may be missing: one past the last event
            // below the checkpoint in any lane.
            let last = self.lanes.values().map(|l| l.last_seq).filter(|&s| s < seq).max().unwrap_or(0);
            let reason = format!("the trail ends at {last} below seq {seq}, which a checkpoint vouches for");
            failure = Some(earliest(failure, Tamper::new(last + 1, reason)));
        }
        if let Some(t) = failure {
            return Err(t);
        }
        Ok(Verified {
            events: self.events,
            head: self.head.1,
            checkpoints: self.expected.len(),
            lanes: self.lanes.len(),
        })
    }

    /// The `seq` of the last event fed of `lane` (0 before its first): the
    /// cursor of its next page.
    pub fn lane_cursor(&self, lane: u64) -> u64 {
        self.lanes.get(&lane).map_or(0, |l| l.last_seq)
    }

    /// Closes `lane` with a failure the caller found (an event that could
    /// not be read): the lane is fed no more, and `t` counts towards the
    /// earliest failure.
    pub fn close_lane(&mut self, lane: u64, t: Tamper) {
        if let Some(state) = self.lanes.get_mut(&lane) {
            state.broken = true;
        } else {
            self.lanes.insert(lane, LaneState { last_seq: 0, prev: lane_genesis(lane), broken: true });
        }
        self.broken = Some(earliest(self.broken.take(), t));
    }

    /// The seq the next fed event of lane 0 may carry at the earliest.
    pub fn next_seq(&self) -> u64 {
        self.lane_cursor(0) + 1
    }

    /// `t`, or an earlier failure found already: the earliest failure, for
    /// callers that find one of their own.
    pub fn fail(&self, t: Tamper) -> Tamper {
        self.with_checkpoint_errors(earliest(self.broken.clone(), t))
    }

    fn with_checkpoint_errors(&self, t: Tamper) -> Tamper {
        earliest(self.bad_checkpoint.clone(), t)
    }
}

/// The first checkpoint among `events` (sorted by seq) whose hash differs
/// from the event's.
fn first_checkpoint_mismatch(expected: &BTreeMap<u64, String>, events: &[Event]) -> Option<Tamper> {
    let (first, last) = (events.first()?, events.last()?);
    expected.range(first.seq..=last.seq).find_map(|(seq, hash)| {
        let i = events.binary_search_by_key(seq, |e| e.seq).ok()?;
        (events.get(i).map(|e| &e.hash) != Some(hash))
            .then(|| Tamper::new(*seq, "the trail differs from a signed checkpoint"))
    })
}

fn earliest(a: Option<Tamper>, b: Tamper) -> Tamper {
    match a {
        Some(a) if a.seq <= b.seq => a,
        _ => b,
    }
}

/// A checkpoint's own validity: a known key and a good signature.
fn check_checkpoint(cp: &Checkpoint, keys: &[PublicJwk]) -> Result<(), Tamper> {
    if cp.seq == 0 {
        return Err(Tamper::new(0, "a checkpoint at seq 0"));
    }
    // A checkpoint's kid is its key's RFC 7638 thumbprint: a key published
    // under someone else's kid does not match.
    let key = keys
        .iter()
        .find(|k| k.kid.as_deref() == Some(cp.kid.as_str()) && k.thumbprint() == cp.kid)
        .ok_or_else(|| Tamper::new(cp.seq, "checkpoint signed by an unknown key"))?;
    let msg = checkpoint_message(cp.seq, &cp.hash, &cp.time, &cp.kid)
        .map_err(|_| Tamper::new(cp.seq, "checkpoint is not canonicalizable"))?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&cp.signature)
        .map_err(|_| Tamper::new(cp.seq, "checkpoint signature is not base64url"))?;
    key.verify(key.alg.name(), msg.as_bytes(), &sig)
        .map_err(|_| Tamper::new(cp.seq, "checkpoint signature does not verify"))
}

/// Verifies a trail held in memory (in `seq` order, as exported) and every
/// checkpoint against `keys`: each lane's events are checked as one chain.
/// Returns the number of events verified.
pub fn verify(events: &[Event], checkpoints: &[Checkpoint], keys: &[PublicJwk]) -> Result<u64, Tamper> {
    let mut v = ChainVerifier::new(checkpoints, keys);
    // A failure is kept by the verifier; `finish` reports the earliest.
    if events.iter().all(|e| e.lane == 0) {
        let _ = v.feed(events);
    } else {
        let mut lanes: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
        for e in events {
            lanes.entry(e.lane).or_default().push(e.clone());
        }
        for (lane, events) in &lanes {
            let _ = v.feed_lane(*lane, events);
        }
    }
    v.finish().map(|done| done.events)
}

/// Checks ordering, links and hashes of `events` of `lane`, which must
/// follow the event at `after_seq` whose hash is `prev`. Each entry's hash
/// depends only on its own stored contents, so long runs are checked in
/// parallel chunks; the earliest failure across chunks is the one reported,
/// with its index.
fn verify_links(events: &[Event], lane: u64, after_seq: u64, prev: &str) -> Result<(), (usize, Tamper)> {
    let threads =
        if events.len() >= 8192 { std::thread::available_parallelism().map_or(1, |n| n.get().min(8)) } else { 1 };
    if threads <= 1 {
        return check_range(events, lane, after_seq, prev);
    }
    let chunk = events.len().div_ceil(threads);
    let results: Vec<Result<(), (usize, Tamper)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = events
            .chunks(chunk)
            .enumerate()
            .map(|(k, part)| {
                let start = k * chunk;
                let (after, prev) = match start.checked_sub(1).and_then(|i| events.get(i)) {
                    Some(e) => (e.seq, e.hash.as_str()),
                    None => (after_seq, prev),
                };
                scope.spawn(move || check_range(part, lane, after, prev).map_err(|(i, t)| (start + i, t)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err((0, Tamper::new(after_seq + 1, "verifier thread failed")))))
            .collect()
    });
    match results.into_iter().filter_map(Result::err).min_by_key(|(i, _)| *i) {
        Some(first) => Err(first),
        None => Ok(()),
    }
}

/// Verifies `part` of `lane`, whose first entry must follow the event at
/// `after` with hash `prev`. A failure is reported at one past the last
/// good event, with the index of the entry that failed.
fn check_range<'a>(part: &'a [Event], lane: u64, mut after: u64, mut prev: &'a str) -> Result<(), (usize, Tamper)> {
    let mut buf = String::with_capacity(1024);
    // The previous entry's digest, as bytes: once `prev_hash` is known to
    // equal its text, it need not be decoded again.
    let mut prev_raw = hex_32(prev);
    let lane_note = |why: String| if lane == 0 { why } else { format!("lane {lane}: {why}") };
    for (i, e) in part.iter().enumerate() {
        let bad = |why: String| Err((i, Tamper::new(after + 1, lane_note(why))));
        if e.seq <= after {
            return bad(format!("found seq {} where a seq after {after} belongs", e.seq));
        }
        if e.prev_hash != prev {
            return bad(format!("prev_hash of seq {} does not match the previous entry of its lane", e.seq));
        }
        let digest = e.digest_linked(&mut buf, e.seq, &e.prev_hash, prev_raw.as_ref(), e.count);
        // The stored hash must be exactly the lower-case hex of the digest.
        if hex_32_lower(&e.hash) != Some(digest) {
            return bad(format!("hash of seq {} does not match the entry's contents", e.seq));
        }
        prev_raw = Some(digest);
        prev = &e.hash;
        after = e.seq;
    }
    Ok(())
}

/// Decimal digits of `n`, without the formatting machinery.
fn write_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in digits.get(at..).unwrap_or_default() {
        out.push(char::from(d));
    }
}

/// A lower-case hex digit's value; 0xff for anything else.
fn nibble_of(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => 0xff,
    }
}

/// Decodes exactly 64 lower-case hex digits.
fn hex_32_lower(s: &str) -> Option<[u8; 32]> {
    let bytes: &[u8; 64] = s.as_bytes().try_into().ok()?;
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let (hi, lo) = match pair {
            [h, l] => (nibble_of(*h), nibble_of(*l)),
            _ => (0xff, 0xff),
        };
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0xf0 == 0).then_some(out)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Whether `s` is a chain hash as the trail writes them: 64 lowercase hex
/// digits. A head that is not one cannot be linked to.
pub fn is_chain_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Decodes 64 hex digits (either case) into 32 bytes.
fn hex_32(s: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let (hi, lo) = (nibble(*pair.first()?)?, nibble(*pair.get(1)?)?);
        *out.get_mut(i)? = (hi << 4) | lo;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
