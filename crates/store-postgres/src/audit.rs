//! The audit trail: events sealed under their lane's head row and inserted a batch at a time, and checkpoints.

use mandate_audit::{Checkpoint, Event};
use mandate_core::audit::seal_record;
use mandate_core::store::{Applied, Mutation, StoreError};
use mandate_store_sql::{EventRow, json};
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgRow};

use crate::writer::{map_write_error, misrouted};
use crate::{PgQuery, get, unavailable};

/// Applies one mutation of this family.
pub(crate) async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    let done = match m {
        Mutation::InsertCheckpoint(cp) => sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, time, kid, signature) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
        )
        .bind(i64::try_from(cp.seq).map_err(|_| StoreError::Unavailable("checkpoint seq does not fit a bigint".into()))?)
        .bind(&cp.hash)
        .bind(&cp.time)
        .bind(&cp.kid)
        .bind(&cp.signature)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "checkpoint"))?,
        other => return Err(misrouted(other)),
    };
    Ok(done.rows_affected())
}

/// A lane's head as the batch sees it: the lane, and its last event's
/// `seq` and hash (the lane's genesis before its first event).
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) lane: u64,
    pub(crate) seq: u64,
    pub(crate) hash: String,
}

/// The first key of the session advisory locks that mark a lane as owned
/// (the second is the lane's id): "mand" in ASCII.
const LANE_LOCK_CLASS: i32 = 0x6d61_6e64;

/// Who owns which lanes, for one node: a connection of its own that holds
/// a session advisory lock on each lane its writers own (decision 0031).
/// PostgreSQL releases the locks when the connection ends, so the lanes of
/// a node that stopped or crashed are free for the next writer that
/// starts, and lanes no longer pile up with restarts. Session locks are
/// re-entrant within their session, so the lanes this node holds are also
/// kept here, and its writers never take each other's.
pub(crate) struct LaneKeeper {
    options: sqlx::postgres::PgConnectOptions,
    held: tokio::sync::Mutex<(Option<PgConnection>, std::collections::BTreeSet<i64>)>,
}

/// The `application_name` of each node's lane-keeping connection.
pub const LANE_KEEPER_APPLICATION_NAME: &str = "mandate-audit-lanes";

impl LaneKeeper {
    pub(crate) fn new(options: sqlx::postgres::PgConnectOptions) -> Self {
        Self {
            options: options.application_name(LANE_KEEPER_APPLICATION_NAME),
            held: tokio::sync::Mutex::new((None, std::collections::BTreeSet::new())),
        }
    }

    /// Claims a lane for a writer task: the oldest lane no writer of any
    /// node owns, else a new one. Owning is a speed matter only: were two
    /// writers ever to share a lane (this node's lock connection lost while
    /// its writers go on), the head row's lock makes them take turns and
    /// the chain stays whole.
    pub(crate) async fn claim(&self) -> Result<u64, StoreError> {
        let mut held = self.held.lock().await;
        let (slot, mine) = &mut *held;
        if slot.is_none() {
            *slot = Some(PgConnection::connect_with(&self.options).await.map_err(unavailable)?);
        }
        let Some(conn) = slot.as_mut() else {
            return Err(StoreError::Unavailable("the audit lane connection is gone".into()));
        };
        match claim_on(conn, mine).await {
            Ok(id) => {
                mine.insert(id);
                u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("audit lane {id}")))
            }
            Err(e) => {
                // A lost connection lost its locks too: start afresh.
                *slot = None;
                mine.clear();
                Err(e)
            }
        }
    }
}

async fn claim_on(conn: &mut PgConnection, mine: &std::collections::BTreeSet<i64>) -> Result<i64, StoreError> {
    let lanes: Vec<i64> = sqlx::query_scalar("SELECT id FROM audit_lanes WHERE id <= 2147483647 ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
    for id in lanes.into_iter().filter(|id| !mine.contains(id)) {
        if try_lock(conn, id).await? {
            return Ok(id);
        }
    }
    // None free: a new lane. Another node may see it and lock it first.
    for _ in 0..8 {
        let id: i64 = sqlx::query_scalar("INSERT INTO audit_lanes DEFAULT VALUES RETURNING id")
            .fetch_one(&mut *conn)
            .await
            .map_err(unavailable)?;
        if try_lock(conn, id).await? {
            return Ok(id);
        }
    }
    Err(StoreError::Unavailable("no audit lane could be claimed".into()))
}

async fn try_lock(conn: &mut PgConnection, lane: i64) -> Result<bool, StoreError> {
    let key = i32::try_from(lane).map_err(|_| StoreError::Corrupt(format!("audit lane {lane}")))?;
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LANE_LOCK_CLASS)
        .bind(key)
        .fetch_one(&mut *conn)
        .await
        .map_err(unavailable)
}

/// Locks `lane`'s head row until the batch commits (only its own writer
/// waits for it) and takes `n` seqs from the shared sequence, with one
/// statement. Sequence values are never handed out twice and grow, so a
/// lane's events are numbered in its commit order; a rolled-back batch
/// leaves a gap.
async fn lock_lane(conn: &mut PgConnection, lane: u64, n: usize) -> Result<(Head, Vec<u64>), StoreError> {
    read_lane(conn, lane, n, true).await
}

/// Reads `lane`'s head and takes `n` seqs, locking the head row with
/// `lock` (see [`lock_lane`]); without it, the caller's write of the head
/// must check that it is still where it was read (`crate::issuance`).
pub(crate) async fn read_lane(
    conn: &mut PgConnection,
    lane: u64,
    n: usize,
    lock: bool,
) -> Result<(Head, Vec<u64>), StoreError> {
    let id = i64::try_from(lane).map_err(|_| StoreError::Unavailable(format!("audit lane {lane}")))?;
    let row = sqlx::query(if lock {
        "SELECT seq, hash, ARRAY(SELECT nextval('audit_seq') FROM generate_series(1, $2)) AS next \
         FROM audit_lanes WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT seq, hash, ARRAY(SELECT nextval('audit_seq') FROM generate_series(1, $2)) AS next \
         FROM audit_lanes WHERE id = $1"
    })
    .bind(id)
    .bind(i32::try_from(n).map_err(|_| StoreError::Unavailable("too many audit events in one batch".into()))?)
    .fetch_one(&mut *conn)
    .await
    .map_err(unavailable)?;
    let seq: i64 = get(&row, "seq")?;
    let hash: Option<String> = get(&row, "hash")?;
    // An undecodable head stops the writer: never restart a lane.
    let hash = match (seq, hash) {
        (0, None) => mandate_audit::lane_genesis(lane),
        (s, Some(h)) if s > 0 && mandate_audit::is_chain_hash(&h) => h,
        _ => {
            return Err(StoreError::Corrupt(format!(
                "the head of audit lane {lane} is not a seq and a SHA-256 hex digest"
            )));
        }
    };
    let seq = u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit lane head {seq}")))?;
    Ok((Head { lane, seq, hash }, reserved_seqs(&row)?))
}

/// The seqs a statement took from `audit_seq` (its `next` array), in order.
pub(crate) fn reserved_seqs(row: &PgRow) -> Result<Vec<u64>, StoreError> {
    let next: Vec<i64> = get(row, "next")?;
    let mut next = next
        .into_iter()
        .map(|s| u64::try_from(s).map_err(|_| StoreError::Corrupt(format!("audit seq {s}"))))
        .collect::<Result<Vec<_>, _>>()?;
    next.sort_unstable();
    Ok(next)
}

/// Seqs reserved for a batch's events, in the order they are used.
pub(crate) type Seqs = std::collections::VecDeque<u64>;

/// Seals the next event of `lane` after its head, locking the lane's row
/// the first time a batch needs it (the lock lasts until the batch
/// commits). `seqs` holds seqs reserved already; `want` is how many to
/// reserve at once when it runs out (the whole batch's, when known).
pub(crate) async fn append(
    conn: &mut PgConnection,
    lane: u64,
    head: &mut Option<Head>,
    seqs: &mut Seqs,
    want: usize,
    record: &mandate_core::AuditRecord,
    applied: &Applied,
) -> Result<Event, StoreError> {
    let current = match head.take() {
        Some(h) => h,
        None => {
            let (h, reserved) = lock_lane(conn, lane, want.max(1)).await?;
            seqs.extend(reserved);
            h
        }
    };
    let seq = match seqs.pop_front() {
        Some(s) => s,
        None => {
            let (_, reserved) = lock_lane(conn, lane, want.max(1)).await?;
            seqs.extend(reserved);
            seqs.pop_front().ok_or_else(|| StoreError::Unavailable("no audit seq was reserved".into()))?
        }
    };
    let sealed = seal_record(record, applied, seq, &current.hash).map(|mut e| {
        e.lane = lane;
        e
    });
    *head = Some(match &sealed {
        Ok(e) => Head { lane, seq: e.seq, hash: e.hash.clone() },
        Err(_) => current,
    });
    sealed
}

/// The array parameters [`bind_events`] binds, in its order.
const EVENT_TYPES: [&str; 19] = [
    "bigint", "text", "text", "text", "text", "text", "text", "text", "text", "text", "text", "text", "text", "text",
    "bigint", "text", "text", "text", "text",
];

/// An insert of the events bound by [`bind_events`] from parameter `first`
/// on, into the lane bound as parameter `lane`.
pub(crate) fn insert_events_sql(first: usize, lane: usize) -> String {
    format!(
        "INSERT INTO audit_events (lane, seq, time, type, decision, subject, actor, chain, \
         client_id, action, resource, scope, jti, grant_id, parent, count, reason, request_id, prev_hash, hash) \
         SELECT ${lane}::bigint, * FROM UNNEST({})",
        crate::unnest_args(first, &EVENT_TYPES)
    )
}

fn overflow(what: &str) -> StoreError {
    StoreError::Unavailable(format!("audit {what} does not fit a bigint"))
}

/// A lane, seq or count as PostgreSQL's bigint.
pub(crate) fn bigint(n: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| overflow(what))
}

/// Binds `events` column by column, one array each ([`EVENT_TYPES`]).
pub(crate) fn bind_events<'q>(q: PgQuery<'q>, events: &[Event]) -> Result<PgQuery<'q>, StoreError> {
    fn col(events: &[Event], f: impl Fn(&Event) -> Option<String>) -> Vec<Option<String>> {
        events.iter().map(f).collect()
    }
    let seqs = events.iter().map(|e| bigint(e.seq, "seq")).collect::<Result<Vec<_>, _>>()?;
    let counts =
        events.iter().map(|e| e.count.map(|c| bigint(c, "count")).transpose()).collect::<Result<Vec<_>, _>>()?;
    let chains = events.iter().map(|e| json(&e.chain)).collect::<Result<Vec<_>, _>>()?;
    Ok(q.bind(seqs)
        .bind(events.iter().map(|e| e.time.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.kind.clone()).collect::<Vec<_>>())
        .bind(col(events, |e| e.decision.clone()))
        .bind(col(events, |e| e.subject.clone()))
        .bind(col(events, |e| e.actor.clone()))
        .bind(chains)
        .bind(col(events, |e| e.client_id.clone()))
        .bind(col(events, |e| e.action.clone()))
        .bind(col(events, |e| e.resource.clone()))
        .bind(col(events, |e| e.scope.clone()))
        .bind(col(events, |e| e.jti.clone()))
        .bind(col(events, |e| e.grant_id.clone()))
        .bind(col(events, |e| e.parent.clone()))
        .bind(counts)
        .bind(col(events, |e| e.reason.clone()))
        .bind(col(events, |e| e.request_id.clone()))
        .bind(events.iter().map(|e| e.prev_hash.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.hash.clone()).collect::<Vec<_>>()))
}

static INSERT_EVENTS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH inserted AS ({}) UPDATE audit_lanes SET seq = $20, hash = $21 WHERE id = $22::bigint",
        insert_events_sql(1, 22)
    )
});

/// Inserts a batch's events and moves its lane's head row, with one
/// statement.
pub(crate) async fn insert_events(conn: &mut PgConnection, events: &[Event], head: &Head) -> Result<(), StoreError> {
    bind_events(sqlx::query(INSERT_EVENTS.as_str()), events)?
        .bind(bigint(head.seq, "head")?)
        .bind(&head.hash)
        .bind(bigint(head.lane, "lane")?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "audit event"))?;
    Ok(())
}

pub(crate) fn event_row(r: &PgRow) -> Result<Event, StoreError> {
    Event::try_from(EventRow {
        seq: get(r, "seq")?,
        time: get(r, "time")?,
        kind: get(r, "type")?,
        decision: get(r, "decision")?,
        subject: get(r, "subject")?,
        actor: get(r, "actor")?,
        chain: get(r, "chain")?,
        client_id: get(r, "client_id")?,
        action: get(r, "action")?,
        resource: get(r, "resource")?,
        scope: get(r, "scope")?,
        jti: get(r, "jti")?,
        grant_id: get(r, "grant_id")?,
        parent: get(r, "parent")?,
        count: get(r, "count")?,
        reason: get(r, "reason")?,
        request_id: get(r, "request_id")?,
        prev_hash: get(r, "prev_hash")?,
        hash: get(r, "hash")?,
        lane: get(r, "lane")?,
    })
}

pub(crate) fn checkpoint_row(r: &PgRow) -> Result<Checkpoint, StoreError> {
    let seq: i64 = get(r, "seq")?;
    Ok(Checkpoint {
        seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("checkpoint seq {seq}")))?,
        hash: get(r, "hash")?,
        time: get(r, "time")?,
        kid: get(r, "kid")?,
        signature: get(r, "signature")?,
    })
}
