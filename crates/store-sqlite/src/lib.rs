//! The [`Store`] port on embedded SQLite.
//!
//! Durability: WAL with `synchronous = FULL`, so a change is on disk before
//! it is acknowledged.
//!
//! Throughput: one writer thread owns the only write connection and applies
//! every change that is waiting in one transaction (group commit), so one
//! fsync covers many requests; one refused change never undoes its
//! neighbours (see [`apply_batch`]). The writer also holds the audit
//! chain's head, so events are numbered and linked in commit order with no
//! lock beyond the one writer. Reads run on a small pool of read-only
//! connections, on Tokio's blocking pool: never on the async workers, so
//! that a long audit page cannot stall the requests they serve.
//!
//! This store is for one process: several nodes share PostgreSQL instead.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mandate_audit::{Checkpoint, Event, GENESIS};
use mandate_core::audit::AuditQuery;
use mandate_core::store::{
    Applied, ApprovalQuery, Change, GrantQuery, KeyUse, Mutation, Receipt, Store, StoreError, StoredKey, StoredPolicy,
};
use mandate_model::records::{
    Agent, Approval, AuthCodeRecord, Grant, RefreshRecord, Resource, SessionRecord, TokenRecord, User, UserToken,
};
use mandate_model::{AgentId, ApprovalId, GrantId, Jti, ResourceId, UserId};
use mandate_store_sql::{
    self as codec, AgentRow, ApprovalRow, AuthCodeRow, EVENT_COLUMNS, EventRow, GrantRow, RefreshRow, ResourceRow,
    SessionRow, TokenRow, UserRow, UserTokenRow, agent_kind, json, ts, user_status,
};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, params};
use tokio::sync::oneshot;

/// The schema, in order; each runs once, tracked by `PRAGMA user_version`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_audit.sql"),
    include_str!("../migrations/0003_delegation.sql"),
    include_str!("../migrations/0004_resource_side.sql"),
    include_str!("../migrations/0005_web.sql"),
    include_str!("../migrations/0006_authorization_codes.sql"),
    include_str!("../migrations/0007_security.sql"),
];

/// Most changes folded into one transaction.
const MAX_BATCH: usize = 512;
/// Longest a batch waits for more changes once one has arrived.
const LINGER: Duration = Duration::from_micros(200);
/// A batch this large commits without lingering.
const LINGER_UNTIL: usize = 16;
/// The writer connection's page cache, in KiB (as a negative `cache_size`).
const WRITER_CACHE_KIB: i64 = -65_536;
/// Read connections kept open.
const MAX_IDLE_READERS: usize = 8;

struct Job {
    change: Change,
    reply: oneshot::Sender<Result<Receipt, StoreError>>,
}

/// SQLite store: pooled readers and a group-committing writer thread.
pub struct SqliteStore {
    /// Dropping it stops the checkpoint thread.
    _stop_checkpoints: mpsc::Sender<()>,
    path: PathBuf,
    readers: Arc<Readers>,
    writer: Mutex<mpsc::Sender<Job>>,
    /// Advanced by the writer after committing a batch that invalidates
    /// (one process owns the database, so memory is enough).
    epoch: Arc<AtomicU64>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version <= current {
            continue;
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path).map_err(unavailable)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(unavailable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!("could not enable WAL (journal_mode is {mode})")));
        }
        configure(&conn).map_err(unavailable)?;
        // The writer's batches touch the tail of every audit index; a page
        // cache that holds them avoids spilling mid-transaction and
        // re-reading index pages (measured: see BENCHMARKS.md).
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB).map_err(unavailable)?;
        migrate(&mut conn).map_err(unavailable)?;
        // Checkpoints run on their own thread, so that copying the WAL back
        // into the database does not stall the writer; the writer checkpoints
        // itself only if that thread falls far behind.
        conn.pragma_update(None, "wal_autocheckpoint", 10_000).map_err(unavailable)?;
        let checkpointer = Connection::open(path).map_err(unavailable)?;
        configure(&checkpointer).map_err(unavailable)?;
        let (stop_checkpoints, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("mandate-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, stopped))
            .map_err(unavailable)?;
        let head = load_head(&conn).map_err(unavailable)?;
        let (tx, rx) = mpsc::channel();
        let epoch = Arc::new(AtomicU64::new(0));
        let writer_epoch = epoch.clone();
        std::thread::Builder::new()
            .name("mandate-sqlite-writer".into())
            .spawn(move || write_loop(conn, rx, head, &writer_epoch))
            .map_err(unavailable)?;
        Ok(Self {
            _stop_checkpoints: stop_checkpoints,
            path: path.to_owned(),
            readers: Arc::new(Readers { path: path.to_owned(), idle: Mutex::new(Vec::new()) }),
            writer: Mutex::new(tx),
            epoch,
        })
    }

    /// Runs `f` on a pooled read-only connection, on the blocking pool:
    /// reads never run on the async workers, so a 10,000-row audit page
    /// cannot stall the requests they serve.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.run(f))
            .await
            .map_err(|e| unavailable(format!("a read stopped: {e}")))?
    }

    async fn one<T: Send + 'static>(
        &self,
        sql: &'static str,
        bind: impl Into<String>,
        map: fn(&Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
    ) -> Result<Option<T>, StoreError> {
        let bind = bind.into();
        self.read(move |c| c.prepare_cached(sql)?.query_row([bind], map).optional()).await?.transpose()
    }

    async fn many<T: Send + 'static>(
        &self,
        sql: &'static str,
        bind: Option<String>,
        map: fn(&Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(sql)?;
                let rows = match bind {
                    Some(b) => stmt.query_map([b], map)?.collect::<rusqlite::Result<Vec<_>>>()?,
                    None => stmt.query_map([], map)?.collect::<rusqlite::Result<Vec<_>>>()?,
                };
                Ok(rows)
            })
            .await?;
        rows.into_iter().collect()
    }
}

/// The read-only connections, kept between reads.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Runs `f` on an idle connection (or a new one), then keeps it.
    fn run<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let pooled = self.idle.lock().map_err(|_| unavailable("reader pool poisoned"))?.pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(unavailable)?;
                configure(&c).map_err(unavailable)?;
                c
            }
        };
        let result = f(&conn).map_err(|e| match e {
            rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..) => {
                StoreError::Corrupt(e.to_string())
            }
            other => unavailable(other),
        });
        if let Ok(mut pool) = self.idle.lock()
            && pool.len() < MAX_IDLE_READERS
        {
            pool.push(conn);
        }
        result
    }
}

/// The audit chain's head: the last event's seq and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: String,
}

fn load_head(conn: &Connection) -> rusqlite::Result<Head> {
    let last = conn
        .query_row("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?;
    match last {
        None => Ok(Head { seq: 0, hash: GENESIS.to_owned() }),
        // An undecodable head stops the store from opening: the chain is
        // never restarted at seq 0 over a trail that exists.
        Some((seq, hash)) => match u64::try_from(seq) {
            Ok(seq) if seq > 0 && mandate_audit::is_chain_hash(&hash) => Ok(Head { seq, hash }),
            _ => Err(rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Integer,
                format!("the audit chain head (seq {seq}) cannot be decoded").into(),
            )),
        },
    }
}

/// A passive checkpoint every half second until the store is dropped.
fn checkpoint_loop(conn: Connection, stop: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_millis(500)) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Job>, mut head: Head, epoch: &AtomicU64) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut last_batch = 0;
    while let Ok(first) = rx.recv() {
        batch.push(first);
        // Linger briefly while work keeps arriving (the last batch held more
        // than one change): under load a commit, and its fsync, then covers
        // more changes, which frees CPU for the requests themselves. A
        // server with one request in flight commits at once.
        let deadline = Instant::now() + if last_batch > 1 { LINGER } else { Duration::ZERO };
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    let now = Instant::now();
                    if batch.len() >= LINGER_UNTIL || now >= deadline {
                        break;
                    }
                    match rx.recv_timeout(deadline - now) {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
            }
        }
        last_batch = batch.len();
        metrics::histogram!("mandate_store_commit_batch_size").record(batch.len() as f64);
        let results = apply_batch(&mut conn, &batch, &mut head);
        // Committed: caches keyed by the epoch go stale now, before any
        // change of this batch is acknowledged.
        if batch.iter().zip(&results).any(|(job, r)| r.is_ok() && job.change.mutations().any(Mutation::invalidates)) {
            epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        for (job, result) in batch.drain(..).zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

/// One transaction for the whole batch. Changes are applied without
/// savepoints first: a change that fails on its first mutation has written
/// nothing (each statement is atomic), which covers the common refusals
/// (a replayed `jti`, a duplicate). Only when a change fails after writing
/// is the batch rolled back and replayed with a savepoint per change.
///
/// The audit head moves with the transaction: it is put back to where it
/// was whenever what advanced it is rolled back.
fn apply_batch(conn: &mut Connection, batch: &[Job], head: &mut Head) -> Vec<Result<Receipt, StoreError>> {
    match apply_in_transaction(conn, batch, false, head) {
        Ok(results) => results,
        Err(NeedSavepoints) => match apply_in_transaction(conn, batch, true, head) {
            Ok(results) => results,
            Err(NeedSavepoints) => batch.iter().map(|_| Err(unavailable("batch could not be applied"))).collect(),
        },
    }
}

struct NeedSavepoints;

fn apply_in_transaction(
    conn: &mut Connection,
    batch: &[Job],
    savepoints: bool,
    head: &mut Head,
) -> Result<Vec<Result<Receipt, StoreError>>, NeedSavepoints> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return Ok(batch.iter().map(|_| Err(unavailable(&e))).collect());
    }
    let start = head.clone();
    // Abandons the whole batch: nothing of it is kept, the head goes back.
    let abandon = |conn: &Connection, head: &mut Head, why: &dyn std::fmt::Display| {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        *head = start.clone();
        Ok(batch.iter().map(|_| Err(unavailable(why))).collect())
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let guarded = savepoints && job.change.len() > 1;
        if guarded && let Err(e) = conn.execute_batch("SAVEPOINT change") {
            return abandon(conn, head, &e);
        }
        let before = head.clone();
        let mut applied = Applied::for_change(&job.change);
        let mut outcome = Ok(());
        for (i, (h, m)) in job.change.iter().enumerate() {
            match apply(conn, m, &applied, head).and_then(|n| applied.set(h, n)) {
                Ok(()) => {}
                Err(e) => {
                    // SQLITE_FULL, IOERR or NOMEM may roll back the whole
                    // transaction: then the batch so far is gone, and
                    // continuing would commit later changes on their own.
                    if conn.is_autocommit() {
                        return abandon(conn, head, &e);
                    }
                    if i > 0 && !savepoints {
                        let _ = conn.execute_batch("ROLLBACK");
                        *head = start;
                        return Err(NeedSavepoints);
                    }
                    outcome = Err(e);
                    break;
                }
            }
        }
        if guarded {
            let end = if outcome.is_ok() { "RELEASE change" } else { "ROLLBACK TO change; RELEASE change" };
            // If the savepoint cannot be closed, what it holds is unknown.
            if let Err(e) = conn.execute_batch(end) {
                return abandon(conn, head, &e);
            }
        }
        if outcome.is_err() {
            *head = before;
        }
        results.push(outcome.and_then(|()| applied.into_receipt()));
    }
    if conn.is_autocommit() {
        return abandon(conn, head, &"the transaction was rolled back by SQLite");
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => Ok(results),
        Err(e) => abandon(conn, head, &e),
    }
}

fn map_write_error(e: rusqlite::Error, what: &str) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => {
            StoreError::Conflict(format!("{what} conflicts with an existing record or refers to a missing one"))
        }
        _ => unavailable(e),
    }
}

fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params, what: &str) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(unavailable)?;
    stmt.execute(params).map(|n| n as u64).map_err(|e| map_write_error(e, what))
}

/// Applies one mutation; `applied` holds what the change's earlier
/// mutations did, and `head` is the audit chain's head.
fn apply(conn: &Connection, m: &Mutation, applied: &Applied, head: &mut Head) -> Result<u64, StoreError> {
    match m {
        Mutation::PutSettingIfAbsent { key, value } => exec(
            conn,
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
            params![key, value],
            "setting",
        ),
        Mutation::InsertUser(u) => exec(
            conn,
            "INSERT INTO users (id, name, email, groups, attributes, status, password_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                u.id.to_string(),
                u.name,
                u.email,
                json(&u.groups)?,
                json(&u.attributes)?,
                user_status(u.status),
                u.password_hash,
                ts(u.created_at)?
            ],
            "user",
        ),
        Mutation::UpdateUser(u) => {
            let n = exec(
                conn,
                "UPDATE users SET groups = ?1, attributes = ?2, status = ?3 WHERE id = ?4",
                params![json(&u.groups)?, json(&u.attributes)?, user_status(u.status), u.id.to_string()],
                "user",
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("user {}", u.id)));
            }
            Ok(n)
        }
        Mutation::InsertUserToken { token, hash } => exec(
            conn,
            "INSERT INTO user_tokens (hash, id, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash, token.id.to_string(), token.user.to_string(), ts(token.created_at)?, ts(token.expires_at)?],
            "user token",
        ),
        Mutation::RevokeUserToken { id, user, at } => exec(
            conn,
            "UPDATE user_tokens SET revoked_at = ?1 WHERE id = ?2 AND user_id = ?3 AND revoked_at IS NULL",
            params![ts(*at)?, id.to_string(), user.to_string()],
            "user token",
        ),
        Mutation::InsertAgent(a) => exec(
            conn,
            "INSERT INTO agents (id, name, owner, kind, parent, status, expires_at, description, scopes, jwks, redirect_uris, secret_hash, created_at, updated_at, suspended_by) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14)",
            params![
                a.id.to_string(),
                a.name,
                a.owner.to_string(),
                agent_kind(a.kind),
                a.parent.map(|p| p.to_string()),
                a.status.as_str(),
                a.expires_at.map(ts).transpose()?,
                a.description,
                a.scopes.as_ref().map(json).transpose()?,
                a.jwks.as_ref().map(json).transpose()?,
                json(&a.redirect_uris)?,
                a.secret_hash,
                ts(a.created_at)?,
                a.suspended_by.map(|b| b.as_str()),
            ],
            "agent",
        ),
        Mutation::SetAgentStatus { id, from, to, at, by } => {
            let level = by.map(|b| b.as_str());
            let kept = if *to == mandate_model::records::AgentStatus::Suspended { level } else { None };
            // Resuming needs the level that suspended, or a higher one:
            // checked in the same statement, so a concurrent re-suspension
            // by the admin cannot be undone by an owner's resume.
            let n = exec(
                conn,
                "UPDATE agents SET status = ?1, updated_at = ?2, suspended_by = ?5 WHERE id = ?3 AND status = ?4 \
                 AND NOT (?4 = 'suspended' AND ?1 = 'active' AND coalesce(?6, '') = 'owner' AND coalesce(suspended_by, 'admin') = 'admin')",
                params![to.as_str(), ts(*at)?, id.to_string(), from.as_str(), kept, level],
                "agent",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("agent {id} is no longer {}", from.as_str())));
            }
            Ok(n)
        }
        Mutation::RevokeTokensOfAgent { agent, at } => {
            revoke_tree(conn, "client_id = ?2 AND expires_at > ?1", params![ts(*at)?, agent.to_string()])
        }
        Mutation::RevokeTokensOfSubject { subject, at } => exec(
            conn,
            "UPDATE tokens SET revoked_at = ?1 WHERE subject = ?2 AND revoked_at IS NULL",
            params![ts(*at)?, subject],
            "tokens",
        ),
        Mutation::RevokeTokensOfOwnedAgents { owner, at } => revoke_tree(
            conn,
            "expires_at > ?1 AND client_id IN (SELECT id FROM agents WHERE owner = ?2)",
            params![ts(*at)?, owner.to_string()],
        ),
        Mutation::InsertResource(r) => exec(
            conn,
            "INSERT INTO resources (id, identifier, name, scopes, jwks, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                r.id.to_string(),
                r.identifier,
                r.name,
                json(&r.scopes)?,
                r.jwks.as_ref().map(json).transpose()?,
                ts(r.created_at)?
            ],
            "resource",
        ),
        Mutation::PutPolicy(p) => exec(
            conn,
            "INSERT INTO policies (version, text, created_at) VALUES (?1, ?2, ?3)",
            params![p.version, p.text, ts(p.created_at)?],
            "policy",
        ),
        Mutation::InsertSigningKey(k) => exec(
            conn,
            "INSERT INTO signing_keys (kid, alg, purpose, wrapped_private, public_jwk, created_at, retired_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                k.kid,
                k.alg,
                k.purpose.as_str(),
                k.wrapped_private,
                k.public_jwk,
                ts(k.created_at)?,
                k.retired_at.map(ts).transpose()?
            ],
            "signing key",
        ),
        Mutation::RetireSigningKeys { purpose, keep, at } => exec(
            conn,
            "UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL AND purpose = ?2 AND kid <> ?3",
            params![ts(*at)?, purpose.as_str(), keep],
            "signing key",
        ),
        Mutation::ConsumeAssertionJti { client, jti, expires_at } => {
            let n = exec(
                conn,
                "INSERT INTO assertion_jtis (client_id, jti, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![client.to_string(), jti, ts(*expires_at)?],
                "assertion jti",
            )?;
            if n == 0 {
                return Err(StoreError::Replay);
            }
            Ok(n)
        }
        Mutation::ConsumeDpopJti { key, expires_at } => {
            let n = exec(
                conn,
                "INSERT INTO dpop_jtis (key, expires_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![key, ts(*expires_at)?],
                "DPoP proof",
            )?;
            if n == 0 {
                return Err(StoreError::DpopReplay);
            }
            Ok(n)
        }
        Mutation::InsertSession(r) => exec(
            conn,
            "INSERT INTO sessions (hash, user_id, csrf, created_at, expires_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                r.hash,
                r.user.to_string(),
                r.csrf,
                ts(r.created_at)?,
                ts(r.expires_at)?,
                r.revoked_at.map(ts).transpose()?
            ],
            "session",
        ),
        Mutation::InsertAuthCode(c) => exec(
            conn,
            "INSERT INTO auth_codes (hash, agent, user_id, grant_id, redirect_uri, code_challenge, created_at, expires_at, used_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                c.hash,
                c.agent.to_string(),
                c.user.to_string(),
                c.grant.to_string(),
                c.redirect_uri,
                c.code_challenge,
                ts(c.created_at)?,
                ts(c.expires_at)?,
                c.used_at.map(ts).transpose()?
            ],
            "authorization code",
        ),
        Mutation::UseAuthCode { hash, at } => {
            let n = exec(
                conn,
                "UPDATE auth_codes SET used_at = ?1 WHERE hash = ?2 AND used_at IS NULL",
                params![ts(*at)?, hash],
                "authorization code",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict("the authorization code was already used".into()));
            }
            Ok(n)
        }
        Mutation::RevokeSession { hash, at } => exec(
            conn,
            "UPDATE sessions SET revoked_at = ?1 WHERE hash = ?2 AND revoked_at IS NULL",
            params![ts(*at)?, hash],
            "session",
        ),
        Mutation::ReserveStatusIndexes { count } => {
            let count = i64::try_from(*count).map_err(|_| unavailable("status index overflow"))?;
            let first: i64 = conn
                .prepare_cached("UPDATE status_counter SET next = next + ?1 WHERE id = 1 RETURNING next - ?1")
                .and_then(|mut s| s.query_row([count], |r| r.get(0)))
                .map_err(unavailable)?;
            u64::try_from(first).map_err(|_| unavailable("status index overflow"))
        }
        Mutation::InsertToken(t) => {
            token_may_be_inserted(conn, t)?;
            exec(
                conn,
                "INSERT INTO tokens (jti, client_id, subject, audience, scopes, grant_id, parent, chain, issued_at, expires_at, cnf_jkt, revoked_at, family, status_idx) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    t.jti.to_string(),
                    t.client_id.to_string(),
                    t.subject,
                    t.audience,
                    json(&t.scopes)?,
                    t.grant.map(|g| g.to_string()),
                    t.parent.map(|p| p.to_string()),
                    json(&t.chain)?,
                    ts(t.issued_at)?,
                    ts(t.expires_at)?,
                    t.cnf_jkt,
                    t.revoked_at.map(ts).transpose()?,
                    t.family,
                    t.status_idx.map(i64::try_from).transpose().map_err(|_| unavailable("status index overflow"))?,
                ],
                "token",
            )
        }
        Mutation::RevokeToken { jti, at } => revoke_tree(conn, "jti = ?2", params![ts(*at)?, jti.to_string()]),
        Mutation::InsertGrant(g) => exec(
            conn,
            "INSERT INTO grants (id, user_id, agent, resource, scopes, purpose, approved_by, status, created_at, expires_at, revoked_at, last_used_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                g.id.to_string(),
                g.user.to_string(),
                g.agent.to_string(),
                g.resource,
                json(&g.scopes)?,
                g.purpose,
                g.approved_by,
                g.status.as_str(),
                ts(g.created_at)?,
                ts(g.expires_at)?,
                g.revoked_at.map(ts).transpose()?,
                g.last_used_at.map(ts).transpose()?,
            ],
            "grant",
        ),
        Mutation::RevokeGrant { id, at } => exec(
            conn,
            "UPDATE grants SET status = 'revoked', revoked_at = ?1 WHERE id = ?2 AND status = 'active'",
            params![ts(*at)?, id.to_string()],
            "grant",
        ),
        Mutation::RevokeTokensOfGrant { grant, at } => {
            revoke_tree(conn, "grant_id = ?2 AND expires_at > ?1", params![ts(*at)?, grant.to_string()])
        }
        Mutation::RevokeGrantsOfUser { user, at } => exec(
            conn,
            "UPDATE grants SET status = 'revoked', revoked_at = ?1 WHERE user_id = ?2 AND status = 'active'",
            params![ts(*at)?, user.to_string()],
            "grants",
        ),
        Mutation::RevokeGrantsOfAgent { agent, at } => exec(
            conn,
            "UPDATE grants SET status = 'revoked', revoked_at = ?1 WHERE agent = ?2 AND status = 'active'",
            params![ts(*at)?, agent.to_string()],
            "grants",
        ),
        Mutation::TouchGrant { id, at } => {
            exec(conn, "UPDATE grants SET last_used_at = ?1 WHERE id = ?2", params![ts(*at)?, id.to_string()], "grant")
        }
        Mutation::InsertApproval(a) => exec(
            conn,
            "INSERT INTO approvals (id, agent, user_id, approver, resource, subject, binding, binding_message, status, decided_by, created_at, expires_at, decided_at, grant_id, polled_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                a.id.to_string(),
                a.agent.to_string(),
                a.user.to_string(),
                a.approver.to_string(),
                a.resource,
                json(&a.subject)?,
                codec::approval_binding(a),
                a.binding_message,
                a.status.as_str(),
                a.decided_by,
                ts(a.created_at)?,
                ts(a.expires_at)?,
                a.decided_at.map(ts).transpose()?,
                a.grant.map(|g| g.to_string()),
                a.polled_at.map(ts).transpose()?,
            ],
            "approval",
        ),
        Mutation::DecideApproval { id, to, by, grant, at } => {
            let n = exec(
                conn,
                "UPDATE approvals SET status = ?1, decided_by = ?2, decided_at = ?3, grant_id = COALESCE(?4, grant_id) \
                 WHERE id = ?5 AND status = 'pending' AND expires_at > ?3",
                params![to.as_str(), by, ts(*at)?, grant.map(|g| g.to_string()), id.to_string()],
                "approval",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("approval {id} is no longer pending")));
            }
            Ok(n)
        }
        Mutation::ConsumeApproval { id, at } => {
            let n = exec(
                conn,
                "UPDATE approvals SET status = 'consumed' WHERE id = ?1 AND status = 'approved' AND expires_at > ?2",
                params![id.to_string(), ts(*at)?],
                "approval",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("approval {id} was already used")));
            }
            Ok(n)
        }
        Mutation::PollApproval { id, at } => exec(
            conn,
            "UPDATE approvals SET polled_at = ?1 WHERE id = ?2",
            params![ts(*at)?, id.to_string()],
            "approval",
        ),
        Mutation::InsertRefresh(r) => exec(
            conn,
            "INSERT INTO refresh_tokens (hash, family, grant_id, client_id, scopes, issued_at, expires_at, used_at, revoked_at, cnf_jkt) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                r.hash,
                r.family,
                r.grant.to_string(),
                r.client_id.to_string(),
                json(&r.scopes)?,
                ts(r.issued_at)?,
                ts(r.expires_at)?,
                r.used_at.map(ts).transpose()?,
                r.revoked_at.map(ts).transpose()?,
                r.cnf_jkt,
            ],
            "refresh token",
        ),
        Mutation::UseRefresh { hash, at } => {
            let n = exec(
                conn,
                "UPDATE refresh_tokens SET used_at = ?1 WHERE hash = ?2 AND used_at IS NULL AND revoked_at IS NULL",
                params![ts(*at)?, hash],
                "refresh token",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict("the refresh token was already used".into()));
            }
            Ok(n)
        }
        Mutation::RevokeRefreshFamily { family, at } => exec(
            conn,
            "UPDATE refresh_tokens SET revoked_at = ?1 WHERE family = ?2 AND revoked_at IS NULL",
            params![ts(*at)?, family],
            "refresh tokens",
        ),
        Mutation::RevokeTokensOfFamily { family, at } => {
            revoke_tree(conn, "family = ?2 AND expires_at > ?1", params![ts(*at)?, family])
        }
        Mutation::PurgeExpiredJtis { before } => {
            let n = exec(
                conn,
                "DELETE FROM assertion_jtis WHERE expires_at < ?1",
                params![ts(*before)?],
                "assertion jtis",
            )?;
            Ok(n + exec(conn, "DELETE FROM dpop_jtis WHERE expires_at < ?1", params![ts(*before)?], "DPoP proofs")?)
        }
        Mutation::AppendAudit(record) => {
            // Hashed from the record in place: the writer is the hot path.
            let e = &record.event;
            let seq = head.seq + 1;
            let count = record.count(applied)?;
            let hash = record.hash_at(seq, &head.hash, count);
            exec(
                conn,
                "INSERT INTO audit_events (seq, time, type, decision, subject, actor, chain, client_id, action, resource, \
                 scope, jti, grant_id, parent, count, reason, request_id, prev_hash, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
                params![
                    i64::try_from(seq).map_err(|_| unavailable("audit seq overflow"))?,
                    e.time,
                    e.kind,
                    e.decision,
                    e.subject,
                    e.actor,
                    json(&e.chain)?,
                    e.client_id,
                    e.action,
                    e.resource,
                    e.scope,
                    e.jti,
                    e.grant_id,
                    e.parent,
                    count.map(|c| i64::try_from(c).map_err(|_| unavailable("audit count overflow"))).transpose()?,
                    e.reason,
                    e.request_id,
                    head.hash,
                    hash,
                ],
                "audit event",
            )?;
            *head = Head { seq, hash };
            Ok(seq)
        }
        Mutation::InsertCheckpoint(cp) => exec(
            conn,
            "INSERT INTO audit_checkpoints (seq, hash, time, kid, signature) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (seq) DO NOTHING",
            params![
                i64::try_from(cp.seq).map_err(|_| unavailable("checkpoint seq overflow"))?,
                cp.hash,
                cp.time,
                cp.kid,
                cp.signature
            ],
            "checkpoint",
        ),
    }
}

/// Revokes the live tokens matching `roots` (SQL over `tokens`, with the
/// revocation time as ?1) and every token exchanged from any of them,
/// transitively. A child never outlives its parent, so expired roots are
/// skipped. One statement: the writer thread is the only writer.
fn revoke_tree(conn: &Connection, roots: &str, params: impl rusqlite::Params) -> Result<u64, StoreError> {
    let sql = format!(
        "WITH RECURSIVE tree(jti) AS (SELECT jti FROM tokens WHERE {roots} \
         UNION SELECT t.jti FROM tokens t JOIN tree ON t.parent = tree.jti) \
         UPDATE tokens SET revoked_at = ?1 WHERE revoked_at IS NULL AND jti IN (SELECT jti FROM tree)"
    );
    exec(conn, &sql, params, "tokens")
}

/// A delegated token goes in only under a live parent and an active grant.
fn token_may_be_inserted(conn: &Connection, t: &TokenRecord) -> Result<(), StoreError> {
    let issued_at = ts(t.issued_at)?;
    if let Some(parent) = t.parent {
        let live: Option<bool> = conn
            .prepare_cached("SELECT revoked_at IS NULL AND expires_at > ?2 FROM tokens WHERE jti = ?1")
            .and_then(|mut st| st.query_row(params![parent.to_string(), issued_at], |r| r.get(0)).optional())
            .map_err(unavailable)?;
        if live != Some(true) {
            return Err(StoreError::Conflict(format!("parent token {parent} is revoked or unknown")));
        }
    }
    if let Some(grant) = t.grant {
        let active: Option<bool> = conn
            .prepare_cached("SELECT status = 'active' AND expires_at > ?2 FROM grants WHERE id = ?1")
            .and_then(|mut st| st.query_row(params![grant.to_string(), issued_at], |r| r.get(0)).optional())
            .map_err(unavailable)?;
        if active != Some(true) {
            return Err(StoreError::Conflict(format!("grant {grant} is not active")));
        }
    }
    Ok(())
}

type Mapped<T> = rusqlite::Result<Result<T, StoreError>>;

fn user_row(r: &Row<'_>) -> Mapped<User> {
    Ok(User::try_from(UserRow {
        id: r.get("id")?,
        name: r.get("name")?,
        email: r.get("email")?,
        groups: r.get("groups")?,
        attributes: r.get("attributes")?,
        status: r.get("status")?,
        password_hash: r.get("password_hash")?,
        created_at: r.get("created_at")?,
    }))
}

fn agent_row(r: &Row<'_>) -> Mapped<Agent> {
    Ok(Agent::try_from(AgentRow {
        id: r.get("id")?,
        name: r.get("name")?,
        owner: r.get("owner")?,
        kind: r.get("kind")?,
        parent: r.get("parent")?,
        status: r.get("status")?,
        expires_at: r.get("expires_at")?,
        description: r.get("description")?,
        scopes: r.get("scopes")?,
        jwks: r.get("jwks")?,
        redirect_uris: r.get("redirect_uris")?,
        secret_hash: r.get("secret_hash")?,
        created_at: r.get("created_at")?,
        suspended_by: r.get("suspended_by")?,
    }))
}

fn user_token_row(r: &Row<'_>) -> Mapped<UserToken> {
    Ok(UserToken::try_from(UserTokenRow {
        id: r.get("id")?,
        user_id: r.get("user_id")?,
        created_at: r.get("created_at")?,
        expires_at: r.get("expires_at")?,
        revoked_at: r.get("revoked_at")?,
    }))
}

fn resource_row(r: &Row<'_>) -> Mapped<Resource> {
    Ok(Resource::try_from(ResourceRow {
        id: r.get("id")?,
        identifier: r.get("identifier")?,
        name: r.get("name")?,
        scopes: r.get("scopes")?,
        jwks: r.get("jwks")?,
        created_at: r.get("created_at")?,
    }))
}

fn token_row(r: &Row<'_>) -> Mapped<TokenRecord> {
    Ok(TokenRecord::try_from(TokenRow {
        jti: r.get("jti")?,
        client_id: r.get("client_id")?,
        subject: r.get("subject")?,
        audience: r.get("audience")?,
        scopes: r.get("scopes")?,
        grant_id: r.get("grant_id")?,
        parent: r.get("parent")?,
        chain: r.get("chain")?,
        issued_at: r.get("issued_at")?,
        expires_at: r.get("expires_at")?,
        cnf_jkt: r.get("cnf_jkt")?,
        status_idx: r.get("status_idx")?,
        family: r.get("family")?,
        revoked_at: r.get("revoked_at")?,
    }))
}

fn grant_row(r: &Row<'_>) -> Mapped<Grant> {
    Ok(Grant::try_from(GrantRow {
        id: r.get("id")?,
        user_id: r.get("user_id")?,
        agent: r.get("agent")?,
        resource: r.get("resource")?,
        scopes: r.get("scopes")?,
        purpose: r.get("purpose")?,
        approved_by: r.get("approved_by")?,
        status: r.get("status")?,
        created_at: r.get("created_at")?,
        expires_at: r.get("expires_at")?,
        revoked_at: r.get("revoked_at")?,
        last_used_at: r.get("last_used_at")?,
    }))
}

fn approval_row(r: &Row<'_>) -> Mapped<Approval> {
    Ok(Approval::try_from(ApprovalRow {
        id: r.get("id")?,
        agent: r.get("agent")?,
        user_id: r.get("user_id")?,
        approver: r.get("approver")?,
        resource: r.get("resource")?,
        subject: r.get("subject")?,
        binding_message: r.get("binding_message")?,
        status: r.get("status")?,
        decided_by: r.get("decided_by")?,
        created_at: r.get("created_at")?,
        expires_at: r.get("expires_at")?,
        decided_at: r.get("decided_at")?,
        grant_id: r.get("grant_id")?,
        polled_at: r.get("polled_at")?,
    }))
}

fn refresh_row(r: &Row<'_>) -> Mapped<RefreshRecord> {
    Ok(RefreshRecord::try_from(RefreshRow {
        hash: r.get("hash")?,
        family: r.get("family")?,
        grant_id: r.get("grant_id")?,
        client_id: r.get("client_id")?,
        scopes: r.get("scopes")?,
        issued_at: r.get("issued_at")?,
        expires_at: r.get("expires_at")?,
        used_at: r.get("used_at")?,
        revoked_at: r.get("revoked_at")?,
        cnf_jkt: r.get("cnf_jkt")?,
    }))
}

fn key_row(r: &Row<'_>) -> Mapped<StoredKey> {
    let created: i64 = r.get("created_at")?;
    let retired: Option<i64> = r.get("retired_at")?;
    let kid: String = r.get("kid")?;
    let alg: String = r.get("alg")?;
    let purpose: String = r.get("purpose")?;
    let wrapped_private: Vec<u8> = r.get("wrapped_private")?;
    let public_jwk: Option<String> = r.get("public_jwk")?;
    Ok((|| {
        Ok(StoredKey {
            kid,
            alg,
            purpose: KeyUse::parse(&purpose)?,
            wrapped_private,
            public_jwk,
            created_at: codec::from_ts(created)?,
            retired_at: codec::opt_ts(retired)?,
        })
    })())
}

/// An event row, by position in `EVENT_COLUMNS` (a name lookup per column
/// costs more than the rest of reading the row).
fn event_row(r: &Row<'_>) -> Mapped<Event> {
    Ok(Event::try_from(EventRow {
        seq: r.get(0)?,
        time: r.get(1)?,
        kind: r.get(2)?,
        decision: r.get(3)?,
        subject: r.get(4)?,
        actor: r.get(5)?,
        chain: r.get(6)?,
        client_id: r.get(7)?,
        action: r.get(8)?,
        resource: r.get(9)?,
        scope: r.get(10)?,
        jti: r.get(11)?,
        grant_id: r.get(12)?,
        parent: r.get(13)?,
        count: r.get(14)?,
        reason: r.get(15)?,
        request_id: r.get(16)?,
        prev_hash: r.get(17)?,
        hash: r.get(18)?,
    }))
}

fn checkpoint_row(r: &Row<'_>) -> Mapped<Checkpoint> {
    let seq: i64 = r.get("seq")?;
    Ok(u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("checkpoint seq {seq}"))).and_then(|seq| {
        Ok(Checkpoint {
            seq,
            hash: r.get("hash").map_err(|e| StoreError::Corrupt(e.to_string()))?,
            time: r.get("time").map_err(|e| StoreError::Corrupt(e.to_string()))?,
            kid: r.get("kid").map_err(|e| StoreError::Corrupt(e.to_string()))?,
            signature: r.get("signature").map_err(|e| StoreError::Corrupt(e.to_string()))?,
        })
    }))
}

fn policy_row(r: &Row<'_>) -> Mapped<StoredPolicy> {
    let version: String = r.get("version")?;
    let text: String = r.get("text")?;
    let created: i64 = r.get("created_at")?;
    Ok(codec::from_ts(created).map(|created_at| StoredPolicy { version, text, created_at }))
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, change: Change) -> Result<Receipt, StoreError> {
        if change.is_empty() {
            return Applied::for_change(&change).into_receipt();
        }
        let (reply, rx) = oneshot::channel();
        self.writer
            .lock()
            .map_err(|_| unavailable("writer handle poisoned"))?
            .send(Job { change, reply })
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?
    }

    async fn epoch(&self) -> Result<u64, StoreError> {
        Ok(self.epoch.load(std::sync::atomic::Ordering::SeqCst))
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.one("SELECT value FROM settings WHERE key = ?1", key, |r| Ok(Ok(r.get(0)?))).await
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.one("SELECT * FROM users WHERE id = ?1", &id.to_string(), user_row).await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.one("SELECT * FROM users WHERE email = ?1", email, user_row).await
    }

    async fn user_token_by_hash(&self, hash: &str) -> Result<Option<UserToken>, StoreError> {
        self.one("SELECT * FROM user_tokens WHERE hash = ?1", hash, user_token_row).await
    }

    async fn user_tokens(&self, user: UserId) -> Result<Vec<UserToken>, StoreError> {
        let rows = self
            .read(move |c| {
                let mut stmt = c.prepare_cached("SELECT * FROM user_tokens WHERE user_id = ?1 ORDER BY id DESC")?;
                stmt.query_map([user.to_string()], user_token_row)?.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
    }

    async fn agent(&self, id: AgentId) -> Result<Option<Agent>, StoreError> {
        self.one("SELECT * FROM agents WHERE id = ?1", &id.to_string(), agent_row).await
    }

    async fn agent_children(&self, parent: AgentId) -> Result<Vec<Agent>, StoreError> {
        self.many("SELECT * FROM agents WHERE parent = ?1 ORDER BY id", Some(parent.to_string()), agent_row).await
    }

    async fn resource(&self, id: ResourceId) -> Result<Option<Resource>, StoreError> {
        self.one("SELECT * FROM resources WHERE id = ?1", &id.to_string(), resource_row).await
    }

    async fn resource_by_identifier(&self, identifier: &str) -> Result<Option<Resource>, StoreError> {
        self.one("SELECT * FROM resources WHERE identifier = ?1", identifier, resource_row).await
    }

    async fn resources(&self) -> Result<Vec<Resource>, StoreError> {
        self.many("SELECT * FROM resources ORDER BY id", None, resource_row).await
    }

    async fn current_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        Ok(self
            .many("SELECT version, text, created_at FROM policies ORDER BY seq DESC LIMIT 1", None, policy_row)
            .await?
            .into_iter()
            .next())
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.many("SELECT * FROM signing_keys ORDER BY created_at", None, key_row).await
    }

    async fn token(&self, jti: Jti) -> Result<Option<TokenRecord>, StoreError> {
        self.one("SELECT * FROM tokens WHERE jti = ?1", &jti.to_string(), token_row).await
    }

    async fn grant(&self, id: GrantId) -> Result<Option<Grant>, StoreError> {
        self.one("SELECT * FROM grants WHERE id = ?1", &id.to_string(), grant_row).await
    }

    async fn grants(&self, q: &GrantQuery) -> Result<Vec<Grant>, StoreError> {
        let (user, agent, either) =
            (q.user.map(|u| u.to_string()), q.agent.map(|a| a.to_string()), q.user_or_owner.map(|u| u.to_string()));
        let limit = q.limit;
        let rows = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT * FROM grants WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR agent = ?2) \
                 AND (?3 IS NULL OR user_id = ?3 OR agent IN (SELECT id FROM agents WHERE owner = ?3)) \
                 ORDER BY id DESC LIMIT ?4",
                )?
                .query_map(params![user, agent, either, limit], grant_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
    }

    async fn approval(&self, id: ApprovalId) -> Result<Option<Approval>, StoreError> {
        self.one("SELECT * FROM approvals WHERE id = ?1", &id.to_string(), approval_row).await
    }

    async fn approvals(&self, q: &ApprovalQuery) -> Result<Vec<Approval>, StoreError> {
        let (approver, status) = (q.approver.map(|u| u.to_string()), q.status.map(|s| s.as_str()));
        let before = q.before.map(|a| a.to_string());
        let (binding, limit) = (q.binding.clone(), q.limit);
        let rows = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT * FROM approvals WHERE (?1 IS NULL OR approver = ?1) AND (?2 IS NULL OR status = ?2) \
                 AND (?3 IS NULL OR binding = ?3) AND (?5 IS NULL OR id < ?5) ORDER BY id DESC LIMIT ?4",
                )?
                .query_map(params![approver, status, binding, limit, before], approval_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
    }

    async fn pending_requests(
        &self,
        agent: AgentId,
        user: Option<UserId>,
        now: time::OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let (user, now) = (user.map(|u| u.to_string()), ts(now)?);
        let n: i64 = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT count(*) FROM approvals WHERE agent = ?1 AND status = 'pending' \
                 AND (?2 IS NULL OR user_id = ?2) AND expires_at > ?3",
                )?
                .query_row(params![agent.to_string(), user, now], |r| r.get(0))
            })
            .await?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("count {n}")))
    }

    async fn refresh(&self, hash: &str) -> Result<Option<RefreshRecord>, StoreError> {
        self.one("SELECT * FROM refresh_tokens WHERE hash = ?1", hash, refresh_row).await
    }

    async fn auth_code(&self, hash: &str) -> Result<Option<AuthCodeRecord>, StoreError> {
        self.one("SELECT * FROM auth_codes WHERE hash = ?1", hash, |r| {
            Ok(AuthCodeRecord::try_from(AuthCodeRow {
                hash: r.get("hash")?,
                agent: r.get("agent")?,
                user_id: r.get("user_id")?,
                grant_id: r.get("grant_id")?,
                redirect_uri: r.get("redirect_uri")?,
                code_challenge: r.get("code_challenge")?,
                created_at: r.get("created_at")?,
                expires_at: r.get("expires_at")?,
                used_at: r.get("used_at")?,
            }))
        })
        .await
    }

    async fn session(&self, hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.one("SELECT * FROM sessions WHERE hash = ?1", hash, |r| {
            Ok(SessionRecord::try_from(SessionRow {
                hash: r.get("hash")?,
                user_id: r.get("user_id")?,
                csrf: r.get("csrf")?,
                created_at: r.get("created_at")?,
                expires_at: r.get("expires_at")?,
                revoked_at: r.get("revoked_at")?,
            }))
        })
        .await
    }

    async fn last_use_of_owned_agents(
        &self,
        owner: UserId,
    ) -> Result<Vec<(AgentId, time::OffsetDateTime)>, StoreError> {
        let rows = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT g.agent, max(g.last_used_at) FROM grants g JOIN agents a ON a.id = g.agent \
                 WHERE a.owner = ?1 AND g.last_used_at IS NOT NULL GROUP BY g.agent",
                )?
                .query_map([owner.to_string()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().map(|(a, t)| Ok((codec::parse::<AgentId>(&a)?, codec::from_ts(t)?))).collect()
    }

    async fn agents_owned_by(&self, owner: UserId) -> Result<Vec<Agent>, StoreError> {
        let rows = self
            .read(move |c| {
                let mut stmt = c.prepare_cached("SELECT * FROM agents WHERE owner = ?1 ORDER BY id")?;
                stmt.query_map([owner.to_string()], agent_row)?.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
    }

    async fn revoked_status_indexes(&self, from: u64, to: u64) -> Result<Vec<u64>, StoreError> {
        let range = |v: u64| i64::try_from(v).map_err(|_| unavailable("status index overflow"));
        let (from, to) = (range(from)?, range(to)?);
        let rows = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT status_idx FROM tokens WHERE revoked_at IS NOT NULL AND status_idx IS NOT NULL \
                 AND status_idx >= ?1 AND status_idx < ?2",
                )?;
                stmt.query_map([from, to], |r| r.get::<_, i64>(0))?.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter()
            .map(|i| u64::try_from(i).map_err(|_| StoreError::Corrupt(format!("status index {i}"))))
            .collect()
    }

    async fn status_indexes_reserved(&self) -> Result<u64, StoreError> {
        let next: i64 =
            self.read(move |c| c.query_row("SELECT next FROM status_counter WHERE id = 1", [], |r| r.get(0))).await?;
        u64::try_from(next).map_err(|_| unavailable("status index overflow"))
    }

    async fn expired_agents(&self, at: time::OffsetDateTime) -> Result<Vec<Agent>, StoreError> {
        let at = ts(at)?;
        let rows = self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT * FROM agents WHERE kind = 'ephemeral' AND status <> 'retired' AND expires_at <= ?1 ORDER BY id",
            )?;
            stmt.query_map([at], agent_row)?.collect::<rusqlite::Result<Vec<_>>>()
        }).await?;
        rows.into_iter().collect()
    }

    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        let head = self
            .read(move |c| {
                c.prepare_cached("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")?
                    .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                    .optional()
            })
            .await?;
        head.map(|(seq, hash)| {
            u64::try_from(seq).map(|s| (s, hash)).map_err(|_| StoreError::Corrupt(format!("audit seq {seq}")))
        })
        .transpose()
    }

    async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<Event>, StoreError> {
        let (filter, values) = codec::audit_where(q, |n| format!("?{n}"));
        let sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE {filter} ORDER BY seq LIMIT {}", q.limit);
        // SAFETY-FALLBACK: a cursor beyond i64 is past every seq: an empty page.
        let after = i64::try_from(q.after).unwrap_or(i64::MAX);
        let rows = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(&sql)?;
                let mut bound: Vec<&dyn rusqlite::ToSql> = vec![&after];
                bound.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
                stmt.query_map(bound.as_slice(), event_row)?.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
    }

    async fn audit_checkpoints(&self, after: u64, limit: u32) -> Result<Vec<Checkpoint>, StoreError> {
        // SAFETY-FALLBACK: a cursor beyond i64 is past every seq: an empty page.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = self
            .read(move |c| {
                c.prepare_cached("SELECT * FROM audit_checkpoints WHERE seq > ?1 ORDER BY seq LIMIT ?2")?
                    .query_map(params![after, limit], checkpoint_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
    }

    async fn last_audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self
            .many("SELECT * FROM audit_checkpoints ORDER BY seq DESC LIMIT 1", None, checkpoint_row)
            .await?
            .into_iter()
            .next())
    }
}

/// Opens a store from a `sqlite://PATH` URL or a plain path.
pub async fn open_url(url: &str) -> Result<SqliteStore, StoreError> {
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let path = path.split('?').next().unwrap_or(path);
    SqliteStore::open(Path::new(path)).await
}
