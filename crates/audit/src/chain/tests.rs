use mandate_jose::KeyAlg;
use proptest::prelude::*;

use super::*;

fn event(kind: &str, actor: &str) -> Event {
    Event {
        seq: 0,
        time: "2026-11-22T09:00:00Z".into(),
        kind: kind.into(),
        decision: Some("allow".into()),
        subject: Some("usr_01JABCDEFGHJKMNPQRSTVWXYZ0".into()),
        actor: Some(actor.into()),
        chain: vec!["usr_01JABCDEFGHJKMNPQRSTVWXYZ0".into(), actor.into()],
        client_id: Some(actor.into()),
        action: None,
        resource: Some("https://api.example.com".into()),
        scope: Some("read".into()),
        jti: Some("tok_01JABCDEFGHJKMNPQRSTVWXYZ0".into()),
        grant_id: None,
        parent: None,
        count: None,
        reason: None,
        request_id: Some("req-1".into()),
        prev_hash: String::new(),
        hash: String::new(),
        lane: 0,
    }
}

fn chain(n: usize) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for i in 0..n {
        let prev = out.last().map(|e| e.hash.clone()).unwrap_or_else(|| GENESIS.to_owned());
        out.push(seal(event("token.issued", &format!("agt_{i}")), i as u64 + 1, &prev).unwrap());
    }
    out
}

#[test]
fn a_sealed_chain_verifies_with_its_checkpoints() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let events = chain(10);
    let cp = sign_checkpoint(&key, 10, &events[9].hash, "2026-11-22T09:00:01Z").unwrap();
    assert_eq!(verify(&events, &[cp], &[key.public().clone()]), Ok(10));
}

#[test]
fn deletion_reordering_truncation_and_replacement_are_caught() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let keys = [key.public().clone()];
    let events = chain(10);
    let cp = sign_checkpoint(&key, 10, &events[9].hash, "t").unwrap();
    let mut deleted = events.clone();
    deleted.remove(4);
    assert_eq!(verify(&deleted, &[], &keys).unwrap_err().seq, 5);
    let mut swapped = events.clone();
    swapped.swap(2, 3);
    assert_eq!(verify(&swapped, &[], &keys).unwrap_err().seq, 3);
    // Truncation verifies on its own, but not against the checkpoint.
    let truncated = &events[..7];
    assert_eq!(verify(truncated, &[], &keys), Ok(7));
    assert_eq!(verify(truncated, std::slice::from_ref(&cp), &keys).unwrap_err().seq, 8);
    // A whole replacement chain is self-consistent, but not with the checkpoint.
    let mut forged = Vec::new();
    for i in 0..10 {
        let prev = forged.last().map(|e: &Event| e.hash.clone()).unwrap_or_else(|| GENESIS.to_owned());
        forged.push(seal(event("token.issued", &format!("agt_forged_{i}")), i + 1, &prev).unwrap());
    }
    assert_eq!(verify(&forged, &[], &keys), Ok(10));
    assert!(verify(&forged, std::slice::from_ref(&cp), &keys).is_err());
    // A checkpoint with a bad signature, or from another key.
    let mut bad = cp.clone();
    bad.hash = events[8].hash.clone();
    assert!(verify(&events, &[bad], &keys).is_err());
    let other = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    assert!(verify(&events, &[cp], &[other.public().clone()]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any single-byte change to any stored entry is caught, at or before
    /// that entry.
    #[test]
    fn any_single_byte_edit_is_detected(idx in 0usize..8, pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let events = chain(8);
        let mut lines: Vec<Vec<u8>> = events.iter().map(|e| serde_json::to_vec(e).unwrap()).collect();
        let line = &mut lines[idx];
        let p = pos.index(line.len());
        prop_assume!(line[p] != byte);
        line[p] = byte;
        // An edit that no longer parses is detected by the reader; one that
        // parses must be detected by the verifier.
        let parsed: Result<Vec<Event>, _> = lines.iter().map(|l| serde_json::from_slice::<Event>(l)).collect();
        if let Ok(parsed) = parsed {
            // JSON escapes can make a different byte decode to the same event.
            prop_assume!(parsed[idx] != events[idx]);
            let err = verify(&parsed, &[], &[]).unwrap_err();
            prop_assert!(err.seq <= idx as u64 + 1, "edit at {} reported at {}", idx + 1, err.seq);
        }
    }
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(any::<String>())
}

proptest! {
    /// The direct encoder writes exactly what the generic canonicalizer does.
    #[test]
    fn direct_canonical_form_matches_the_generic_one(
        seq in any::<u64>(), time in any::<String>(), kind in any::<String>(), chain in proptest::collection::vec(any::<String>(), 0..4),
        a in opt_text(), b in opt_text(), c in opt_text(), d in opt_text(), e in opt_text(), f in opt_text(),
        g in opt_text(), h in opt_text(), i in opt_text(), j in opt_text(), k in opt_text(), prev in any::<String>(),
        parent in opt_text(), count in proptest::option::of(any::<u64>()),
    ) {
        let ev = Event { seq, time, kind, decision: a, subject: b, actor: c, chain, client_id: d, action: e, resource: f,
            scope: g, jti: h, grant_id: i, parent, count, reason: j, request_id: k, prev_hash: prev, hash: "x".into(), lane: 0 };
        let mut direct = String::new();
        ev.write_canonical(&mut direct);
        prop_assert_eq!(direct, ev.canonical_via_value().unwrap());
    }
}

#[test]
fn long_chains_verified_in_parallel_report_the_first_bad_entry() {
    let events = chain(20_000);
    assert_eq!(verify(&events, &[], &[]), Ok(20_000));
    let mut tampered = events.clone();
    tampered[15_000].scope = Some("admin".into());
    tampered[2_000].reason = Some("edited".into());
    assert_eq!(verify(&tampered, &[], &[]).unwrap_err().seq, 2_001);
    let mut boundary = events.clone();
    boundary[9_999].hash = boundary[9_998].hash.clone();
    assert_eq!(verify(&boundary, &[], &[]).unwrap_err().seq, 10_000);
    let mut upper = events.clone();
    upper[12_345].hash = upper[12_345].hash.to_uppercase();
    assert_eq!(verify(&upper, &[], &[]).unwrap_err().seq, 12_346);
}

#[test]
fn feeding_in_pages_equals_verifying_at_once() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let keys = [key.public().clone()];
    let events = chain(25_000);
    let cps: Vec<Checkpoint> = [1usize, 9_999, 10_000, 24_999, 25_000]
        .iter()
        .map(|&s| sign_checkpoint(&key, s as u64, &events[s - 1].hash, "t").unwrap())
        .collect();
    let mut v = ChainVerifier::new(&cps, &keys);
    for page in events.chunks(10_000) {
        v.feed(page).unwrap();
    }
    let done = v.finish().unwrap();
    assert_eq!((done.events, done.checkpoints, done.head.as_str()), (25_000, 5, events[24_999].hash.as_str()));

    // A page that skips an entry, fed after good pages, names the gap.
    let mut v = ChainVerifier::new(&cps, &keys);
    v.feed(&events[..10_000]).unwrap();
    assert_eq!(v.feed(&events[10_001..20_000]).unwrap_err().seq, 10_001);

    // A bad checkpoint before a broken entry is the earlier failure.
    let mut forged = cps[1].clone();
    forged.signature = cps[0].signature.clone();
    let mut tampered = events.clone();
    tampered[20_000].scope = Some("admin".into());
    let mut v = ChainVerifier::new(&[forged, cps[3].clone()], &keys);
    assert_eq!(v.feed(&tampered).unwrap_err().seq, 9_999);
    // Two valid checkpoints cannot vouch for different hashes at one seq.
    let twin = sign_checkpoint(&key, 10_000, &events[0].hash, "t").unwrap();
    assert_eq!(verify(&events, &[cps[2].clone(), twin], &keys).unwrap_err().seq, 10_000);
    // An empty chain verifies, and fails against any checkpoint.
    assert_eq!(verify(&[], &[], &keys), Ok(0));
    assert_eq!(verify(&[], &cps[..1], &keys).unwrap_err().seq, 1);
}

/// `n` events spread over lanes 1, 2 and 3 in turn (seq 1 in lane 1, 2 in
/// lane 2, …), each lane linked from its own genesis, in seq order.
fn laned(n: u64) -> Vec<Event> {
    let mut heads: BTreeMap<u64, String> = BTreeMap::new();
    (1..=n)
        .map(|seq| {
            let lane = seq % 3 + 1;
            let prev = heads.entry(lane).or_insert_with(|| lane_genesis(lane));
            let mut e = seal(event("token.issued", &format!("agt_{seq}")), seq, prev).unwrap();
            e.lane = lane;
            prev.clone_from(&e.hash);
            e
        })
        .collect()
}

#[test]
fn lanes_start_at_their_own_genesis() {
    assert_eq!(lane_genesis(0), GENESIS);
    let (one, two) = (lane_genesis(1), lane_genesis(2));
    assert!(is_chain_hash(&one) && is_chain_hash(&two) && one != two && one != GENESIS);
    assert_eq!(one, hex(&Sha256::digest(b"mandate audit lane 1")));
}

#[test]
fn interleaved_lanes_verify_with_checkpoints_of_their_heads() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let keys = [key.public().clone()];
    let events = laned(30);
    // The heads of lanes 1, 2 and 3 (seq 30, 28, 29) and one mid-lane event.
    let cps: Vec<Checkpoint> = [10usize, 28, 29, 30]
        .iter()
        .map(|&s| sign_checkpoint(&key, s as u64, &events[s - 1].hash, "t").unwrap())
        .collect();
    assert_eq!(verify(&events, &cps, &keys), Ok(30));
    let mut v = ChainVerifier::new(&cps, &keys);
    for lane in 1..=3 {
        let mine: Vec<Event> = events.iter().filter(|e| e.lane == lane).cloned().collect();
        // Fed in two pages each.
        v.feed_lane(lane, &mine[..5]).unwrap();
        v.feed_lane(lane, &mine[5..]).unwrap();
    }
    let done = v.finish().unwrap();
    assert_eq!((done.events, done.lanes, done.checkpoints, done.head.as_str()), (30, 3, 4, events[29].hash.as_str()));
    // The lane is kept in JSON only when it is not 0, and is not hashed.
    let json = serde_json::to_value(&events[0]).unwrap();
    assert_eq!(json["lane"], 2);
    assert_eq!(events[0].compute_hash().unwrap(), events[0].hash);
    assert!(serde_json::to_value(&chain(1)[0]).unwrap().get("lane").is_none());
}

#[test]
fn an_event_moved_to_another_lane_is_caught() {
    let events = laned(30);
    // seq 13 is lane 2's fifth event (after 10), and lands in lane 3 after 11.
    let mut moved = events.clone();
    moved[12].lane = 3;
    assert_eq!(verify(&moved, &[], &[]).unwrap_err().seq, 11);
    // A lane's first event, moved to a lane of its own.
    let mut alone = events.clone();
    alone[0].lane = 7;
    assert_eq!(verify(&alone, &[], &[]).unwrap_err().seq, 1);
    // Or into lane 0, which starts at 64 zeros.
    let mut zero = events.clone();
    zero[0].lane = 0;
    assert_eq!(verify(&zero, &[], &[]).unwrap_err().seq, 1);
}

#[test]
fn a_lane_tail_deleted_is_caught_by_its_heads_checkpoint() {
    let key = SigningKey::generate(KeyAlg::EdDSA).unwrap();
    let keys = [key.public().clone()];
    let events = laned(30);
    let heads: Vec<Checkpoint> =
        [28usize, 29, 30].iter().map(|&s| sign_checkpoint(&key, s as u64, &events[s - 1].hash, "t").unwrap()).collect();
    // Lane 2's head (seq 28) and the event before it (25) deleted: its lane
    // now ends at 22, and the checkpoint at 28 meets nothing.
    let cut: Vec<Event> = events.iter().filter(|e| e.seq != 28 && e.seq != 25).cloned().collect();
    assert_eq!(verify(&cut, &[], &keys), Ok(28), "without the checkpoint the shorter lane verifies");
    assert_eq!(verify(&cut, &heads, &keys).unwrap_err().seq, 23);
    // An event deleted mid-lane breaks the lane after its predecessor.
    let gap: Vec<Event> = events.iter().filter(|e| e.seq != 16).cloned().collect();
    assert_eq!(verify(&gap, &[], &keys).unwrap_err().seq, 14);
    // A failure in one lane does not hide an earlier one in another.
    let mut two = events.clone();
    two[20].scope = Some("admin".into()); // seq 21, lane 1 (after 18)
    two[7].scope = Some("admin".into()); // seq 8, lane 3 (after 5), walked after lane 1
    assert_eq!(verify(&two, &[], &keys).unwrap_err().seq, 6);
}
