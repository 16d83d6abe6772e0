//! The [`Store`] port on embedded SQLite.
//!
//! Durability: WAL with `synchronous = FULL`, so a change is on disk before
//! it is acknowledged.
//!
//! Throughput: one writer thread owns the only write connection and applies
//! every change that is waiting in one transaction (group commit), so one
//! fsync covers many requests; one refused change never undoes its
//! neighbours (see `writer.rs`). The writer also holds the audit
//! chain's head, so events are numbered and linked in commit order with no
//! lock beyond the one writer. Reads run on a small pool of read-only
//! connections, on Tokio's blocking pool: never on the async workers, so
//! that a long audit page cannot stall the requests they serve.
//!
//! This store is for one process: several nodes share PostgreSQL instead.

mod approvals;
mod audit;
mod deliveries;
mod grants;
mod identity;
mod inventory;
mod keys;
mod readers;
mod review;
mod scim;
mod signals;
mod tokens;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use mandate_audit::{Checkpoint, Event};
use mandate_core::audit::{AuditBatch, AuditKey, AuditQuery};
use mandate_core::store::{
    AgentActivity, AgentListQuery, Applied, ApprovalQuery, AttemptCounter, Change, GrantQuery, ListedAgent, Page,
    PolicyVersion, Receipt, ResourceListQuery, ScimGroupQuery, ScimUserQuery, Store, StoreError, StoredKey,
    StoredPolicy, UserListQuery,
};
use mandate_model::records::{
    Agent, Approval, AuthCodeRecord, Grant, RefreshRecord, Resource, ScimGroup, ScimToken, ScimUserRecord,
    SessionRecord, TokenRecord, UpstreamLink, User, UserToken,
};
use mandate_model::{AgentId, ApprovalId, GrantId, GroupId, Jti, ResourceId, UserId};
use mandate_store_sql::{self as codec, AuthCodeRow, EVENT_COLUMNS, SessionRow, UpstreamLinkRow, ts};
use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::oneshot;

use crate::approvals::approval_row;
use crate::audit::{checkpoint_row, event_row, load_head};
use crate::grants::grant_row;
use crate::identity::{
    agent_row, listed_agent_row, policy_row, policy_version_row, resource_row, user_row, user_token_row,
};
use crate::keys::key_row;
use crate::readers::Readers;
use crate::tokens::{refresh_row, token_row};
use crate::writer::{Job, checkpoint_loop, write_loop};

/// The schema, in order; each runs once, tracked by `PRAGMA user_version`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_audit.sql"),
    include_str!("../migrations/0003_delegation.sql"),
    include_str!("../migrations/0004_resource_side.sql"),
    include_str!("../migrations/0005_web.sql"),
    include_str!("../migrations/0006_authorization_codes.sql"),
    include_str!("../migrations/0007_security.sql"),
    include_str!("../migrations/0008_mcp.sql"),
    include_str!("../migrations/0009_registration.sql"),
    include_str!("../migrations/0010_upstream_links.sql"),
    include_str!("../migrations/0011_scim.sql"),
    include_str!("../migrations/0012_federated_credentials.sql"),
    include_str!("../migrations/0013_agent_limits.sql"),
    include_str!("../migrations/0014_resource_context.sql"),
    include_str!("../migrations/0015_grant_may_act.sql"),
    include_str!("../migrations/0016_deliveries.sql"),
    include_str!("../migrations/0017_authorization_details.sql"),
    include_str!("../migrations/0018_group_approvals.sql"),
    include_str!("../migrations/0019_shared_signals.sql"),
    include_str!("../migrations/0020_attempt_counters.sql"),
    include_str!("../migrations/0021_inventory.sql"),
    include_str!("../migrations/0022_policy_history.sql"),
    include_str!("../migrations/0023_review.sql"),
    include_str!("../migrations/0024_review_campaigns.sql"),
    include_str!("../migrations/0025_inventory_report.sql"),
    include_str!("../migrations/0026_reapproval.sql"),
    include_str!("../migrations/0027_agents_status.sql"),
    include_str!("../migrations/0028_ssf_subjects.sql"),
    include_str!("../migrations/0029_ssf_event_principal.sql"),
];

/// The writer connection's page cache, in KiB (as a negative `cache_size`).
const WRITER_CACHE_KIB: i64 = -65_536;

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

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(crate) fn configure(conn: &Connection) -> rusqlite::Result<()> {
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

    /// An inventory list: `sql` with its parameters (`?1` …) bound to
    /// `values` in order.
    async fn list<T: Send + 'static>(
        &self,
        sql: String,
        values: Vec<codec::ListValue>,
        map: fn(&Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = self
            .read(move |c| {
                let bound = values.into_iter().map(|v| match v {
                    codec::ListValue::Text(t) => rusqlite::types::Value::Text(t),
                    codec::ListValue::Int(i) => rusqlite::types::Value::Integer(i),
                });
                c.prepare_cached(&sql)?
                    .query_map(rusqlite::params_from_iter(bound), map)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
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

    async fn attempt_counters(&self, keys: &[String]) -> Result<Vec<(String, AttemptCounter)>, StoreError> {
        let keys = keys.to_vec();
        let rows: Vec<(String, u32, i64)> = self
            .read(move |c| {
                let mut stmt = c.prepare_cached("SELECT key, count, last_at FROM attempt_counters WHERE key = ?1")?;
                let mut out = Vec::new();
                for k in keys {
                    if let Some(row) = stmt.query_row([k], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()? {
                        out.push(row);
                    }
                }
                Ok(out)
            })
            .await?;
        rows.into_iter()
            .map(|(k, count, last)| Ok((k, AttemptCounter { count, last: codec::from_ts(last)? })))
            .collect()
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        const SQL: &str = concat!(scim::user_select!(), " WHERE id = ?1");
        self.one(SQL, &id.to_string(), user_row).await
    }

    async fn group_members(&self, group: &str) -> Result<Vec<User>, StoreError> {
        const SQL: &str = concat!(
            scim::user_select!(),
            " WHERE EXISTS (SELECT 1 FROM json_each(users.groups) WHERE value = ?1) \
             OR EXISTS (SELECT 1 FROM scim_group_members m JOIN scim_groups g ON g.id = m.group_id \
             WHERE m.user_id = users.id AND g.display_name = ?1) ORDER BY id LIMIT 1000"
        );
        self.many(SQL, Some(group.to_owned()), user_row).await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        const SQL: &str = concat!(scim::user_select!(), " WHERE email = ?1");
        self.one(SQL, email, user_row).await
    }

    async fn scim_token(&self, id: &str) -> Result<Option<ScimToken>, StoreError> {
        self.one("SELECT * FROM scim_tokens WHERE id = ?1", id, scim::token_row).await
    }

    async fn scim_tokens(&self) -> Result<Vec<ScimToken>, StoreError> {
        self.many("SELECT * FROM scim_tokens ORDER BY created_at DESC, id DESC", None, scim::token_row).await
    }

    async fn scim_user(&self, user: UserId) -> Result<Option<ScimUserRecord>, StoreError> {
        self.one("SELECT * FROM scim_users WHERE user_id = ?1", &user.to_string(), scim::user_record_row).await
    }

    async fn scim_users(&self, q: &ScimUserQuery) -> Result<Page<UserId>, StoreError> {
        let q = q.clone();
        self.read(move |c| Ok(scim::users(c, &q))).await?
    }

    async fn scim_group(&self, id: GroupId) -> Result<Option<ScimGroup>, StoreError> {
        let id = id.to_string();
        self.read(move |c| scim::group(c, &id)).await?.transpose()
    }

    async fn scim_groups(&self, q: &ScimGroupQuery) -> Result<Page<ScimGroup>, StoreError> {
        let q = q.clone();
        self.read(move |c| Ok(scim::groups(c, &q))).await?
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

    async fn agent_by_metadata_url(&self, url: &str) -> Result<Option<Agent>, StoreError> {
        self.one("SELECT * FROM agents WHERE metadata_url = ?1", url, agent_row).await
    }

    async fn agents_federated_by(&self, issuer: &str, subject: &str) -> Result<Vec<Agent>, StoreError> {
        let (issuer, subject) = (issuer.to_owned(), subject.to_owned());
        let rows = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT * FROM agents WHERE id IN ( \
                     SELECT agent_id FROM agent_federations WHERE issuer = ?1 AND subject = ?2 \
                     UNION SELECT agent_id FROM agent_federations WHERE issuer = ?1 AND pattern = 1) \
                     ORDER BY id LIMIT ?3",
                )?
                .query_map(params![issuer, subject, mandate_core::store::MAX_FEDERATED_CANDIDATES], agent_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
    }

    async fn list_users(&self, q: &UserListQuery) -> Result<Vec<User>, StoreError> {
        let (tail, values) = codec::user_list_where(
            q,
            |n| format!("?{n}"),
            |p| {
                format!(
                    "(EXISTS (SELECT 1 FROM json_each(users.groups) WHERE value = {p}) \
                 OR EXISTS (SELECT 1 FROM scim_group_members m JOIN scim_groups g ON g.id = m.group_id \
                 WHERE m.user_id = users.id AND g.display_name = {p}))"
                )
            },
        );
        self.list(format!("{}{tail}", scim::user_select!()), values, user_row).await
    }

    async fn list_agents(&self, q: &AgentListQuery) -> Result<Vec<ListedAgent>, StoreError> {
        let (sql, values) = agents_sql(q)?;
        self.list(sql, values, listed_agent_row).await
    }

    async fn agent_activity(
        &self,
        agent: AgentId,
        now: time::OffsetDateTime,
    ) -> Result<Option<AgentActivity>, StoreError> {
        let (id, at) = (agent.to_string(), ts(now)?);
        let row = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT a.last_used_at, \
                     (SELECT count(*) FROM grants WHERE agent = a.id AND status = 'active' AND expires_at > ?2), \
                     (SELECT count(*) FROM tokens WHERE client_id = a.id AND revoked_at IS NULL AND expires_at > ?2) \
                     FROM agents a WHERE a.id = ?1",
                )?
                .query_row(params![id, at], |r| {
                    Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })
                .optional()
            })
            .await?;
        row.map(|(last, grants, tokens)| {
            let count = |n: i64| u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("count {n}")));
            Ok(AgentActivity {
                live_grants: count(grants)?,
                live_tokens: count(tokens)?,
                last_used_at: codec::opt_ts(last)?,
            })
        })
        .transpose()
    }

    async fn list_resources(&self, q: &ResourceListQuery) -> Result<Vec<Resource>, StoreError> {
        let (tail, values) = codec::resource_list_where(q, |n| format!("?{n}"));
        self.list(format!("SELECT * FROM resources{tail}"), values, resource_row).await
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

    async fn policy_versions(&self, before: Option<u64>, limit: u32) -> Result<Vec<PolicyVersion>, StoreError> {
        // Query input, not stored data: past every number means no bound.
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, version, author, created_at, length(CAST(text AS BLOB)) AS bytes FROM policies \
                 WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
            stmt.query_map(params![before, limit], policy_version_row)?.collect::<rusqlite::Result<Vec<_>>>()
        })
        .await?
        .into_iter()
        .collect()
    }

    async fn policy_version(&self, number: u64) -> Result<Option<(PolicyVersion, StoredPolicy)>, StoreError> {
        let Ok(seq) = i64::try_from(number) else { return Ok(None) };
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, version, author, created_at, text, length(CAST(text AS BLOB)) AS bytes FROM policies \
                 WHERE seq = ?1",
            )?;
            stmt.query_row([seq], |r| {
                let entry = policy_version_row(r)?;
                let policy = policy_row(r)?;
                Ok(entry.and_then(|e| policy.map(|p| (e, p))))
            })
            .optional()
        })
        .await?
        .transpose()
    }

    async fn current_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        Ok(self
            .many("SELECT version, text, created_at, author FROM policies ORDER BY seq DESC LIMIT 1", None, policy_row)
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
        let (tail, values) = codec::grant_list_where(q, |n| format!("?{n}"))?;
        self.list(format!("SELECT * FROM grants{tail}"), values, grant_row).await
    }

    async fn lapse_due(&self, now: time::OffsetDateTime, limit: u32) -> Result<Vec<Grant>, StoreError> {
        let values = vec![codec::ListValue::Int(ts(now)?), codec::ListValue::Int(i64::from(limit))];
        // Read from the partial index `grants_lapse_due` (migration 0026).
        let sql = "SELECT * FROM grants WHERE status = 'active' AND lapsed_at IS NULL AND expires_at <= ?1 \
                   ORDER BY expires_at, id LIMIT ?2";
        self.list(sql.to_owned(), values, grant_row).await
    }

    async fn lapsed_grants(&self, q: &mandate_core::store::LapsedQuery) -> Result<Vec<Grant>, StoreError> {
        let (tail, values) = codec::lapsed_list_where(q, |n| format!("?{n}"))?;
        self.list(format!("SELECT * FROM grants{tail}"), values, grant_row).await
    }

    async fn approval(&self, id: ApprovalId) -> Result<Option<Approval>, StoreError> {
        self.one("SELECT * FROM approvals WHERE id = ?1", &id.to_string(), approval_row).await
    }

    async fn backchannel(&self, agent: AgentId) -> Result<Option<mandate_model::delivery::Backchannel>, StoreError> {
        self.one("SELECT * FROM agent_backchannel WHERE agent = ?1", agent.to_string(), deliveries::backchannel_row)
            .await
    }

    async fn ciba_callback(
        &self,
        approval: ApprovalId,
    ) -> Result<Option<mandate_model::delivery::CibaCallback>, StoreError> {
        self.one("SELECT * FROM ciba_callbacks WHERE approval = ?1", approval.to_string(), deliveries::callback_row)
            .await
    }

    async fn due_deliveries(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::delivery::Delivery>, StoreError> {
        let now = ts(now)?;
        let rows = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT * FROM deliveries WHERE status = 'pending' AND next_at <= ?1 \
                     AND (lease_until IS NULL OR lease_until <= ?1) ORDER BY next_at, id LIMIT ?2",
                )?
                .query_map(params![now, limit], deliveries::delivery_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
    }

    async fn stream(&self, id: mandate_model::StreamId) -> Result<Option<mandate_model::ssf::Stream>, StoreError> {
        self.one("SELECT * FROM ssf_streams WHERE id = ?1", id.to_string(), signals::stream_row).await
    }

    async fn streams_of(
        &self,
        resource: mandate_model::ResourceId,
    ) -> Result<Vec<mandate_model::ssf::Stream>, StoreError> {
        self.many(
            "SELECT * FROM ssf_streams WHERE resource_id = ?1 ORDER BY created_at, id",
            Some(resource.to_string()),
            signals::stream_row,
        )
        .await
    }

    async fn queued_events(
        &self,
        stream: mandate_model::StreamId,
        limit: u32,
    ) -> Result<Vec<mandate_model::ssf::QueuedEvent>, StoreError> {
        let stream = stream.to_string();
        let rows = self
            .read(move |c| {
                c.prepare_cached("SELECT * FROM ssf_events WHERE stream_id = ?1 ORDER BY seq LIMIT ?2")?
                    .query_map(params![stream, limit], signals::event_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
    }

    async fn removed_subjects(&self, stream: mandate_model::StreamId) -> Result<Vec<String>, StoreError> {
        let stream = stream.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT subject FROM ssf_subjects WHERE stream_id = ?1 ORDER BY subject")?
                .query_map(params![stream], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await
    }

    async fn due_streams(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::ssf::Stream>, StoreError> {
        let now = ts(now)?;
        let rows = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT * FROM ssf_streams s WHERE method = 'push' AND status = 'enabled' AND next_at <= ?1 \
                     AND (lease_until IS NULL OR lease_until <= ?1) \
                     AND EXISTS (SELECT 1 FROM ssf_events e WHERE e.stream_id = s.id) ORDER BY next_at, id LIMIT ?2",
                )?
                .query_map(params![now, limit], signals::stream_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
    }

    async fn deliveries_about(&self, about: &str) -> Result<Vec<mandate_model::delivery::Delivery>, StoreError> {
        self.many(
            "SELECT * FROM deliveries WHERE about = ?1 ORDER BY id",
            Some(about.to_owned()),
            deliveries::delivery_row,
        )
        .await
    }

    async fn approvals(&self, q: &ApprovalQuery) -> Result<Vec<Approval>, StoreError> {
        let (approver, status) = (q.approver.map(|u| u.to_string()), q.status.map(|s| s.as_str()));
        let before = q.before.map(|a| a.to_string());
        let (binding, limit) = (q.binding.clone(), q.limit);
        let groups = mandate_store_sql::json(&q.groups)?;
        let rows = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT * FROM approvals WHERE (?1 IS NULL OR (approver_group IS NULL AND approver = ?1) \
                 OR approver_group IN (SELECT value FROM json_each(?6))) AND (?2 IS NULL OR status = ?2) \
                 AND (?3 IS NULL OR binding = ?3) AND (?5 IS NULL OR id < ?5) ORDER BY id DESC LIMIT ?4",
                )?
                .query_map(params![approver, status, binding, limit, before, groups], approval_row)?
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
                dpop_jkt: r.get("dpop_jkt")?,
                offline: r.get("offline")?,
                created_at: r.get("created_at")?,
                expires_at: r.get("expires_at")?,
                used_at: r.get("used_at")?,
            }))
        })
        .await
    }

    async fn upstream_linked(&self, user: UserId) -> Result<bool, StoreError> {
        let user = user.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT EXISTS (SELECT 1 FROM upstream_links WHERE user_id = ?1)")?
                .query_row([user], |r| r.get::<_, bool>(0))
        })
        .await
    }

    async fn upstream_link(&self, issuer: &str, subject: &str) -> Result<Option<UpstreamLink>, StoreError> {
        let (issuer, subject) = (issuer.to_owned(), subject.to_owned());
        self.read(move |c| {
            c.prepare_cached("SELECT * FROM upstream_links WHERE issuer = ?1 AND subject = ?2")?
                .query_row([issuer, subject], |r| {
                    Ok(UpstreamLink::try_from(UpstreamLinkRow {
                        issuer: r.get("issuer")?,
                        subject: r.get("subject")?,
                        user_id: r.get("user_id")?,
                        created_at: r.get("created_at")?,
                    }))
                })
                .optional()
        })
        .await?
        .transpose()
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

    async fn inventory_tally(
        &self,
        tally: mandate_core::report::InventoryTally,
    ) -> Result<mandate_core::report::InventoryTally, StoreError> {
        let since = ts(tally.since())?;
        self.read(move |c| inventory::tally(c, tally, since)).await?
    }

    async fn inventory_peaks(
        &self,
        by: mandate_core::report::ReportBy,
        first: &str,
        last: &str,
        since_24h: time::OffsetDateTime,
        since_7d: time::OffsetDateTime,
    ) -> Result<Vec<mandate_core::report::Peaks>, StoreError> {
        let (first, last) = (first.to_owned(), last.to_owned());
        let (s24, s7) = (ts(since_24h)?, ts(since_7d)?);
        self.read(move |c| inventory::peaks(c, by, &first, &last, s24, s7)).await?
    }

    async fn spawned_since(&self, parent: AgentId, since: time::OffsetDateTime) -> Result<u64, StoreError> {
        let since = ts(since)?;
        let n: i64 = self
            .read(move |c| {
                c.prepare_cached("SELECT count(*) FROM agents WHERE parent = ?1 AND created_at >= ?2")?
                    .query_row(params![parent.to_string(), since], |r| r.get(0))
            })
            .await?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt("a negative count".into()))
    }

    async fn spawn_counts(
        &self,
        parents: &[AgentId],
        since: time::OffsetDateTime,
    ) -> Result<Vec<(AgentId, u64)>, StoreError> {
        let (ids, since) = (id_list(parents)?, ts(since)?);
        let rows = self
            .read(move |c| {
                c.prepare_cached(SPAWN_COUNTS_SQL)?
                    .query_map(params![ids, since], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter()
            .map(|(parent, n)| {
                let parent =
                    parent.parse::<AgentId>().map_err(|_| StoreError::Corrupt(format!("agent id {parent}")))?;
                Ok((parent, u64::try_from(n).map_err(|_| StoreError::Corrupt("a negative count".into()))?))
            })
            .collect()
    }

    async fn live_grants_of(&self, agents: &[AgentId], now: time::OffsetDateTime) -> Result<Vec<Grant>, StoreError> {
        let values = vec![codec::ListValue::Text(id_list(agents)?), codec::ListValue::Int(ts(now)?)];
        self.list(LIVE_GRANTS_SQL.to_owned(), values, grant_row).await
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, StoreError> {
        const SQL: &str = concat!(scim::user_select!(), " WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id");
        self.list(SQL.to_owned(), vec![codec::ListValue::Text(id_list(ids)?)], user_row).await
    }

    async fn campaign(
        &self,
        id: mandate_model::CampaignId,
    ) -> Result<Option<mandate_model::review::Campaign>, StoreError> {
        self.one("SELECT * FROM review_campaigns WHERE id = ?1", id.to_string(), review::campaign_row).await
    }

    async fn campaigns(
        &self,
        q: &mandate_core::store::CampaignQuery,
    ) -> Result<Vec<mandate_model::review::Campaign>, StoreError> {
        let (tail, values) = codec::campaigns_where(q, |n| format!("?{n}"));
        self.list(format!("SELECT * FROM review_campaigns{tail}"), values, review::campaign_row).await
    }

    async fn campaigns_due(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::review::Campaign>, StoreError> {
        let values = vec![codec::ListValue::Int(ts(now)?), codec::ListValue::Int(i64::from(limit))];
        let sql =
            "SELECT * FROM review_campaigns WHERE status = 'open' AND deadline <= ?1 ORDER BY deadline, id LIMIT ?2";
        self.list(sql.to_owned(), values, review::campaign_row).await
    }

    async fn campaign_progress(
        &self,
        id: mandate_model::CampaignId,
    ) -> Result<mandate_core::store::CampaignProgress, StoreError> {
        let id = id.to_string();
        let (items, decided): (i64, i64) = self
            .read(move |c| {
                c.prepare_cached("SELECT count(*), count(decision) FROM review_items WHERE campaign = ?1")?
                    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            })
            .await?;
        let n = |v: i64| u64::try_from(v).map_err(|_| StoreError::Corrupt("a negative count".into()));
        Ok(mandate_core::store::CampaignProgress { items: n(items)?, decided: n(decided)? })
    }

    async fn review_item(
        &self,
        id: mandate_model::ReviewItemId,
    ) -> Result<Option<mandate_model::review::ReviewItem>, StoreError> {
        self.one("SELECT * FROM review_items WHERE id = ?1", id.to_string(), review::item_row).await
    }

    async fn review_items(
        &self,
        q: &mandate_core::store::ReviewItemQuery,
    ) -> Result<Vec<mandate_model::review::ReviewItem>, StoreError> {
        let (tail, values) = codec::review_items_where(q, |n| format!("?{n}"));
        self.list(format!("SELECT * FROM review_items{tail}"), values, review::item_row).await
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

    async fn audit_lanes(&self) -> Result<Vec<mandate_core::audit::AuditLane>, StoreError> {
        // One writer thread, one lane: the last event is its head.
        let head = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT e.seq, e.hash, EXISTS (SELECT 1 FROM audit_checkpoints c WHERE c.seq = e.seq) \
                     FROM audit_events e ORDER BY e.seq DESC LIMIT 1",
                )?
                .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?)))
                .optional()
            })
            .await?;
        head.map(|(seq, hash, checkpointed)| {
            let seq = u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit seq {seq}")))?;
            Ok(mandate_core::audit::AuditLane { lane: 0, seq, hash, checkpointed })
        })
        .into_iter()
        .collect()
    }

    async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<Event>, StoreError> {
        // Every event is in lane 0.
        if q.lane.is_some_and(|l| l != 0) {
            return Ok(Vec::new());
        }
        let (sql, values) = audit_sql(q);
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

    async fn audit_events_of(&self, b: &AuditBatch) -> Result<Vec<Event>, StoreError> {
        let (sql, values) = audit_batch_sql(b)?;
        let rows = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(&sql)?;
                stmt.query_map(rusqlite::params_from_iter(values), event_row)?.collect::<rusqlite::Result<Vec<_>>>()
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

/// The audit query `q` and its bound values after the cursor.
///
/// A type together with a subject, actor, token, grant or parent is
/// written `+type = ?`, which keeps SQLite from answering it by the index
/// on `(type, seq)`: with no statistics the planner rates that index as
/// selective as the one on `(grant_id, seq)`, and takes it, so "the first
/// token of this grant" walked the `token.issued` events from the start,
/// once per live grant in a review (1.16 million events and 168,586 live
/// grants in issue 18's benchmark; see BENCHMARKS.md, "Scale"). The
/// narrower index then serves the query and the type is checked per row.
fn audit_sql(q: &AuditQuery) -> (String, Vec<String>) {
    let (mut filter, values) = codec::audit_where(q, |n| format!("?{n}"));
    let narrower = [&q.subject, &q.actor, &q.jti, &q.grant, &q.parent].iter().any(|v| v.is_some());
    if q.kind.is_some() && narrower {
        filter = filter.replace(" AND type = ", " AND +type = ");
    }
    (format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE {filter} ORDER BY seq LIMIT {}", q.limit), values)
}

/// The agent list `q`. `expires_before` is written `+expires_at < ?`, so
/// that a page walks the ids newest first and stops at its last match: by
/// the index on `expires_at` (the plan SQLite 3.40 picks; the bundled 3.46
/// did not, in issue 18's benchmark) it would sort every agent that ever
/// expired (700,000 retired ephemeral ones there) to keep the newest.
fn agents_sql(q: &AgentListQuery) -> Result<(String, Vec<codec::ListValue>), StoreError> {
    let (tail, values) = codec::agent_list_where(q, |n| format!("?{n}"))?;
    Ok((format!("SELECT * FROM agents{}", tail.replace("expires_at < ", "+expires_at < ")), values))
}

/// Ids as one JSON array, bound as a single parameter and read with
/// `json_each`: one prepared statement serves any number of them.
fn id_list<T: ToString>(ids: &[T]) -> Result<String, StoreError> {
    codec::json(&ids.iter().map(ToString::to_string).collect::<Vec<_>>())
}

/// Children per parent since a time, by the index on (parent, created_at).
const SPAWN_COUNTS_SQL: &str = "SELECT parent, count(*) FROM agents \
     WHERE parent IN (SELECT value FROM json_each(?1)) AND parent IS NOT NULL AND created_at >= ?2 GROUP BY parent";

/// The live grants of many agents, by the index on (agent, id).
const LIVE_GRANTS_SQL: &str = "SELECT * FROM grants WHERE agent IN (SELECT value FROM json_each(?1)) \
     AND status = 'active' AND expires_at > ?2 ORDER BY id DESC";

/// The events of many actors or grants (ADR 0038): each key's range of its
/// `(key, seq)` index after the cursor, its first `per_key` kept by a
/// window. The type is `+type`, as in [`audit_sql`], so that the key's
/// index answers.
fn audit_batch_sql(b: &AuditBatch) -> Result<(String, Vec<rusqlite::types::Value>), StoreError> {
    use rusqlite::types::Value;
    let column = match b.by {
        AuditKey::Actor => "actor",
        AuditKey::Grant => "grant_id",
    };
    // SAFETY-FALLBACK: a cursor beyond i64 is past every seq: nothing matches.
    let after = i64::try_from(b.after).unwrap_or(i64::MAX);
    let mut values = vec![Value::Integer(after), Value::Text(id_list(&b.keys)?), Value::Integer(i64::from(b.per_key))];
    let mut filter = format!("{column} IN (SELECT value FROM json_each(?2)) AND seq > ?1");
    if let Some(kind) = &b.kind {
        values.push(Value::Text(kind.clone()));
        filter.push_str(&format!(" AND +type = ?{}", values.len()));
    }
    if let Some(since) = &b.since {
        values.push(Value::Text(since.clone()));
        filter.push_str(&format!(" AND time >= ?{}", values.len()));
    }
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM (SELECT {EVENT_COLUMNS}, \
         row_number() OVER (PARTITION BY {column} ORDER BY seq) AS nth FROM audit_events WHERE {filter}) \
         WHERE nth <= ?3 ORDER BY {column}, seq"
    );
    Ok((sql, values))
}

/// Opens a store from a `sqlite://PATH` URL or a plain path.
pub async fn open_url(url: &str) -> Result<SqliteStore, StoreError> {
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let path = path.split('?').next().unwrap_or(path);
    SqliteStore::open(Path::new(path)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan SQLite picks for `q`, one line per step.
    fn plan(conn: &Connection, q: &AuditQuery) -> rusqlite::Result<String> {
        let (sql, values) = audit_sql(q);
        let mut bound: Vec<&dyn rusqlite::ToSql> = vec![&0i64];
        bound.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let rows = stmt.query_map(bound.as_slice(), |r| r.get::<_, String>(3))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map(|r| r.join("\n"))
    }

    #[test]
    fn a_type_with_a_narrower_filter_is_answered_by_the_narrower_index() -> Result<(), Box<dyn std::error::Error>> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        let kind = Some("token.issued".to_owned());
        let by_grant =
            AuditQuery { grant: Some("grt_1".into()), kind: kind.clone(), limit: 1, ..AuditQuery::default() };
        assert!(plan(&conn, &by_grant)?.contains("audit_events_grant"), "{}", plan(&conn, &by_grant)?);
        let by_jti = AuditQuery { jti: Some("tok_1".into()), kind: kind.clone(), limit: 1, ..AuditQuery::default() };
        assert!(plan(&conn, &by_jti)?.contains("audit_events_jti"), "{}", plan(&conn, &by_jti)?);
        let by_parent =
            AuditQuery { parent: Some("tok_1".into()), kind: kind.clone(), limit: 1, ..AuditQuery::default() };
        assert!(plan(&conn, &by_parent)?.contains("audit_events_parent"), "{}", plan(&conn, &by_parent)?);
        // A page of agents that expired walks the ids, with no sort.
        let expired = AgentListQuery {
            expires_before: Some(time::OffsetDateTime::UNIX_EPOCH),
            limit: 100,
            ..AgentListQuery::default()
        };
        let (sql, values) = agents_sql(&expired)?;
        let bound: Vec<rusqlite::types::Value> = values
            .into_iter()
            .map(|v| match v {
                codec::ListValue::Text(t) => rusqlite::types::Value::Text(t),
                codec::ListValue::Int(i) => rusqlite::types::Value::Integer(i),
            })
            .collect();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let steps = stmt
            .query_map(rusqlite::params_from_iter(bound), |r| r.get::<_, String>(3))?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .join("\n");
        assert!(!steps.contains("TEMP B-TREE"), "{steps}");
        // A type alone still has its own index.
        let by_type = AuditQuery { kind, limit: 1, ..AuditQuery::default() };
        assert!(plan(&conn, &by_type)?.contains("audit_events_type"), "{}", plan(&conn, &by_type)?);
        Ok(())
    }

    /// The plan of any statement, one line per step.
    fn plan_of(conn: &Connection, sql: &str, values: Vec<rusqlite::types::Value>) -> rusqlite::Result<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let steps = stmt.query_map(rusqlite::params_from_iter(values), |r| r.get::<_, String>(3))?;
        steps.collect::<rusqlite::Result<Vec<_>>>().map(|r| r.join("\n"))
    }

    fn agents_plan(conn: &Connection, q: &AgentListQuery) -> Result<String, Box<dyn std::error::Error>> {
        let (sql, values) = agents_sql(q)?;
        let bound = values
            .into_iter()
            .map(|v| match v {
                codec::ListValue::Text(t) => rusqlite::types::Value::Text(t),
                codec::ListValue::Int(i) => rusqlite::types::Value::Integer(i),
            })
            .collect();
        Ok(plan_of(conn, &sql, bound)?)
    }

    #[test]
    fn a_page_of_agents_by_status_is_a_range_of_the_status_index() -> Result<(), Box<dyn std::error::Error>> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        let suspended = AgentListQuery {
            status: Some(mandate_model::records::AgentStatus::Suspended),
            limit: 1000,
            ..AgentListQuery::default()
        };
        let steps = agents_plan(&conn, &suspended)?;
        assert!(steps.contains("agents_status_id (status=?") && !steps.contains("TEMP B-TREE"), "{steps}");
        let unused = AgentListQuery {
            used_before: Some(time::OffsetDateTime::UNIX_EPOCH),
            before: Some("agt_01J00000000000000000000000".parse::<AgentId>()?),
            ..suspended
        };
        let steps = agents_plan(&conn, &unused)?;
        assert!(steps.contains("agents_status_id (status=? AND id<?)") && !steps.contains("TEMP B-TREE"), "{steps}");
        // The review's walk keeps its index of the agents that are not retired.
        let live = AgentListQuery { not_retired: true, limit: 500, ..AgentListQuery::default() };
        let steps = agents_plan(&conn, &live)?;
        assert!(steps.contains("agents_live") && !steps.contains("TEMP B-TREE"), "{steps}");
        Ok(())
    }

    #[test]
    fn the_reviews_page_reads_are_answered_by_their_indexes() -> Result<(), Box<dyn std::error::Error>> {
        use rusqlite::types::Value;
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        let ids = Value::Text(r#"["agt_1","agt_2"]"#.into());
        let steps = plan_of(&conn, SPAWN_COUNTS_SQL, vec![ids.clone(), Value::Integer(0)])?;
        assert!(steps.contains("agents_parent_created (parent=? AND created_at>?)"), "{steps}");
        let steps = plan_of(&conn, LIVE_GRANTS_SQL, vec![ids, Value::Integer(0)])?;
        assert!(steps.contains("USING INDEX grants_agent"), "{steps}");
        let batch = |by, kind: Option<&str>| AuditBatch {
            by,
            keys: vec!["k1".into(), "k2".into()],
            kind: kind.map(str::to_owned),
            after: 0,
            since: Some("2026-01-01T00:00:00Z".into()),
            per_key: 5001,
        };
        for (b, index) in [
            (batch(AuditKey::Actor, None), "audit_events_actor (actor=? AND seq>?)"),
            (batch(AuditKey::Grant, None), "audit_events_grant (grant_id=? AND seq>?)"),
            (batch(AuditKey::Grant, Some("token.issued")), "audit_events_grant (grant_id=? AND seq>?)"),
        ] {
            let (sql, values) = audit_batch_sql(&b)?;
            let steps = plan_of(&conn, &sql, values)?;
            assert!(steps.contains(index), "{b:?}: {steps}");
        }
        Ok(())
    }
}
