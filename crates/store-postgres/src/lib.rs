//! The [`Store`] port on PostgreSQL, for deployments where several
//! stateless nodes share one database.
//!
//! Writes: a few writer tasks per node each take every change that is
//! waiting and apply the lot in one transaction (group commit), as the
//! SQLite store does; one refused change never undoes its neighbours. The
//! audit trail is a set of lanes, one hash chain per writer task (decision
//! 0031). A writer locks its own lane's head row once its batch's changes
//! are applied, takes the events' seqs from a sequence, seals them, inserts
//! them with a single statement and commits, so writers on every node
//! commit side by side, and each lane is numbered in its commit order.
//! Reads run on the pool. Migrations run under sqlx's advisory lock, so nodes may start
//! together.

mod approvals;
mod audit;
mod deliveries;
mod epoch;
mod grants;
mod identity;
mod inventory;
mod issuance;
mod keys;
mod listen;
mod review;
mod scim;
mod signals;
mod tokens;
mod writer;

use std::time::Duration;

use async_trait::async_trait;
use mandate_audit::{Checkpoint, Event};
use mandate_core::audit::{AuditBatch, AuditKey, AuditQuery};
use mandate_core::store::{
    AgentActivity, AgentListQuery, Applied, ApprovalQuery, AttemptCounter, Change, ChangeFeed, GrantQuery, KeyUse,
    ListedAgent, Page, PolicyVersion, Receipt, ResourceListQuery, ScimGroupQuery, ScimUserQuery, Store, StoreError,
    StoredKey, StoredPolicy, UserListQuery,
};
use mandate_model::records::{
    Agent, Approval, AuthCodeRecord, Grant, RefreshRecord, Resource, ScimGroup, ScimToken, ScimUserRecord,
    SessionRecord, TokenRecord, UpstreamLink, User, UserToken,
};
use mandate_model::{AgentId, ApprovalId, GrantId, GroupId, Jti, ResourceId, UserId};
use mandate_store_sql::{self as codec, AuthCodeRow, EVENT_COLUMNS, SessionRow, UpstreamLinkRow, ts};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Row};
use tokio::sync::{mpsc, oneshot};

use crate::approvals::approval_row;
pub use crate::audit::LANE_KEEPER_APPLICATION_NAME;
use crate::audit::{checkpoint_row, event_row};
use crate::grants::grant_row;
use crate::identity::{agent_row, resource_row, user_row, user_token_row};
use crate::tokens::{refresh_row, token_row};
use crate::writer::Job;
pub use crate::writer::{DEFAULT_WRITERS, MAX_WRITERS};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The `application_name` of each node's change-feed connection.
pub const FEED_APPLICATION_NAME: &str = "mandate-change-feed";

/// PostgreSQL store over a connection pool and its writer tasks.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    writer: mpsc::Sender<Job>,
    feed: tokio::sync::watch::Receiver<ChangeFeed>,
    epochs: std::sync::Arc<epoch::EpochReads>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresStore")
    }
}

/// A statement being bound, for the helpers that bind a batch's columns.
pub(crate) type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// `$first::t1[], $first+1::t2[], …`: the arguments of an `UNNEST` over
/// one array parameter per column, numbered from `first`, so that one
/// batch insert can be a part of a larger statement.
pub(crate) fn unnest_args(first: usize, types: &[&str]) -> String {
    types.iter().enumerate().map(|(i, t)| format!("${}::{t}[]", first + i)).collect::<Vec<_>>().join(", ")
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl PostgresStore {
    /// Connects to `url` and migrates the schema, with
    /// [`DEFAULT_WRITERS`] writer tasks.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_writers(url, DEFAULT_WRITERS).await
    }

    /// Connects to `url` and migrates the schema, with `writers` writer
    /// tasks (1 to [`MAX_WRITERS`]), each on a connection of its own.
    pub async fn connect_with_writers(url: &str, writers: u32) -> Result<Self, StoreError> {
        if !(1..=MAX_WRITERS).contains(&writers) {
            return Err(StoreError::Unavailable(format!("{writers} writers: 1 to {MAX_WRITERS} are allowed")));
        }
        let options: PgConnectOptions = url.parse().map_err(unavailable)?;
        // A node that stalls inside a transaction must not hold the audit
        // chain's head (and so every node's writes) for long.
        let options = options.options([("idle_in_transaction_session_timeout", "30s")]);
        let options = options.disable_statement_logging();
        // The change feed's connection is named, so that operators (and the
        // tests) can tell it apart in `pg_stat_activity`.
        let listening = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options.clone().application_name(FEED_APPLICATION_NAME));
        let pool = PgPoolOptions::new()
            .max_connections(32)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        MIGRATOR.run(&pool).await.map_err(unavailable)?;
        // The writers' own connections, one each, so that none waits for a
        // read's connection.
        let writing = PgPoolOptions::new()
            .max_connections(writers)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(writer::connect_options(options.clone()));
        let (writer, jobs) = mpsc::channel(4096);
        let jobs = std::sync::Arc::new(tokio::sync::Mutex::new(jobs));
        let lanes = std::sync::Arc::new(audit::LaneKeeper::new(options.clone()));
        writer::spawn(writing, jobs, lanes, writers)?;
        let feed = listen::spawn(listening);
        let epochs = epoch::EpochReads::spawn(pool.clone());
        Ok(Self { pool, writer, feed, epochs })
    }

    /// An inventory list: `sql` with its parameters (`$1` …) bound to
    /// `values` in order.
    async fn list(&self, sql: &str, values: Vec<codec::ListValue>) -> Result<Vec<PgRow>, StoreError> {
        let mut query = sqlx::query(sql);
        for v in values {
            query = match v {
                codec::ListValue::Text(t) => query.bind(t),
                codec::ListValue::Int(i) => query.bind(i),
            };
        }
        query.fetch_all(&self.pool).await.map_err(unavailable)
    }

    async fn one<T>(
        &self,
        sql: &'static str,
        bind: &str,
        map: impl FnOnce(&PgRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let row = sqlx::query(sql).bind(bind).fetch_optional(&self.pool).await.map_err(unavailable)?;
        row.as_ref().map(map).transpose()
    }
}

fn policy_row(r: &PgRow) -> Result<StoredPolicy, StoreError> {
    Ok(StoredPolicy {
        version: get(r, "version")?,
        text: get(r, "text")?,
        created_at: codec::from_ts(get(r, "created_at")?)?,
        author: get(r, "author")?,
    })
}

/// A history entry: `seq`, `version`, `author`, `created_at`, `bytes`.
fn policy_version_row(r: &PgRow) -> Result<PolicyVersion, StoreError> {
    let seq: i64 = get(r, "seq")?;
    let bytes: i64 = get(r, "bytes")?;
    Ok(PolicyVersion {
        number: u64::try_from(seq).map_err(|_| unavailable(format!("policy seq {seq}")))?,
        version: get(r, "version")?,
        author: get(r, "author")?,
        created_at: codec::from_ts(get(r, "created_at")?)?,
        bytes: u64::try_from(bytes).map_err(|_| unavailable(format!("policy length {bytes}")))?,
    })
}

pub(crate) fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
    row: &'r PgRow,
    col: &str,
) -> Result<T, StoreError> {
    row.try_get(col).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl Store for PostgresStore {
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<ChangeFeed>> {
        Some(self.feed.clone())
    }
    async fn commit(&self, change: Change) -> Result<Receipt, StoreError> {
        if change.is_empty() {
            return Applied::for_change(&change).into_receipt();
        }
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Job { change, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?
    }

    async fn epoch(&self) -> Result<u64, StoreError> {
        self.epochs.epoch().await
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.one("SELECT value FROM settings WHERE key = $1", key, |r| get(r, "value")).await
    }

    async fn attempt_counters(&self, keys: &[String]) -> Result<Vec<(String, AttemptCounter)>, StoreError> {
        let rows = sqlx::query("SELECT key, count, last_at FROM attempt_counters WHERE key = ANY($1)")
            .bind(keys)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let count: i32 = get(r, "count")?;
                let count = u32::try_from(count).map_err(|_| StoreError::Corrupt(format!("attempt count {count}")))?;
                Ok((get(r, "key")?, AttemptCounter { count, last: codec::from_ts(get(r, "last_at")?)? }))
            })
            .collect()
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.one(concat!(scim::user_select!(), " WHERE id = $1"), &id.to_string(), user_row).await
    }

    async fn group_members(&self, group: &str) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(concat!(
            scim::user_select!(),
            " WHERE users.groups::jsonb ? $1 \
             OR EXISTS (SELECT 1 FROM scim_group_members m JOIN scim_groups g ON g.id = m.group_id \
             WHERE m.user_id = users.id AND g.display_name = $1) ORDER BY id LIMIT 1000"
        ))
        .bind(group)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(user_row).collect()
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.one(concat!(scim::user_select!(), " WHERE email = $1"), email, user_row).await
    }

    async fn scim_token(&self, id: &str) -> Result<Option<ScimToken>, StoreError> {
        self.one("SELECT * FROM scim_tokens WHERE id = $1", id, scim::token_row).await
    }

    async fn scim_tokens(&self) -> Result<Vec<ScimToken>, StoreError> {
        let rows = sqlx::query("SELECT * FROM scim_tokens ORDER BY created_at DESC, id DESC")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(scim::token_row).collect()
    }

    async fn scim_user(&self, user: UserId) -> Result<Option<ScimUserRecord>, StoreError> {
        self.one("SELECT * FROM scim_users WHERE user_id = $1", &user.to_string(), scim::user_record_row).await
    }

    async fn scim_users(&self, q: &ScimUserQuery) -> Result<Page<UserId>, StoreError> {
        scim::users(&self.pool, q).await
    }

    async fn scim_group(&self, id: GroupId) -> Result<Option<ScimGroup>, StoreError> {
        scim::group(&self.pool, &id.to_string()).await
    }

    async fn scim_groups(&self, q: &ScimGroupQuery) -> Result<Page<ScimGroup>, StoreError> {
        scim::groups(&self.pool, q).await
    }

    async fn user_token_by_hash(&self, hash: &str) -> Result<Option<UserToken>, StoreError> {
        self.one("SELECT * FROM user_tokens WHERE hash = $1", hash, user_token_row).await
    }

    async fn user_tokens(&self, user: UserId) -> Result<Vec<UserToken>, StoreError> {
        let rows = sqlx::query("SELECT * FROM user_tokens WHERE user_id = $1 ORDER BY id DESC")
            .bind(user.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(user_token_row).collect()
    }

    async fn agent(&self, id: AgentId) -> Result<Option<Agent>, StoreError> {
        self.one("SELECT * FROM agents WHERE id = $1", &id.to_string(), agent_row).await
    }

    async fn agent_by_metadata_url(&self, url: &str) -> Result<Option<Agent>, StoreError> {
        self.one("SELECT * FROM agents WHERE metadata_url = $1", url, agent_row).await
    }

    async fn agents_federated_by(&self, issuer: &str, subject: &str) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM agents WHERE id IN ( \
             SELECT agent_id FROM agent_federations WHERE issuer = $1 AND subject = $2 \
             UNION SELECT agent_id FROM agent_federations WHERE issuer = $1 AND pattern) \
             ORDER BY id LIMIT $3",
        )
        .bind(issuer)
        .bind(subject)
        .bind(i64::from(mandate_core::store::MAX_FEDERATED_CANDIDATES))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(agent_row).collect()
    }

    async fn list_users(&self, q: &UserListQuery) -> Result<Vec<User>, StoreError> {
        let (tail, values) = codec::user_list_where(
            q,
            |n| format!("${n}"),
            |p| {
                format!(
                    "(users.groups::jsonb ? {p} \
                 OR EXISTS (SELECT 1 FROM scim_group_members m JOIN scim_groups g ON g.id = m.group_id \
                 WHERE m.user_id = users.id AND g.display_name = {p}))"
                )
            },
        );
        let rows = self.list(&format!("{}{tail}", scim::user_select!()), values).await?;
        rows.iter().map(user_row).collect()
    }

    async fn list_agents(&self, q: &AgentListQuery) -> Result<Vec<ListedAgent>, StoreError> {
        let (tail, values) = codec::agent_list_where(q, |n| format!("${n}"))?;
        let rows = self.list(&format!("SELECT * FROM agents{tail}"), values).await?;
        rows.iter()
            .map(|r| Ok(ListedAgent { agent: agent_row(r)?, last_used_at: codec::opt_ts(get(r, "last_used_at")?)? }))
            .collect()
    }

    async fn agent_activity(
        &self,
        agent: AgentId,
        now: time::OffsetDateTime,
    ) -> Result<Option<AgentActivity>, StoreError> {
        let row = sqlx::query(
            "SELECT a.last_used_at, \
             (SELECT count(*) FROM grants WHERE agent = a.id AND status = 'active' AND expires_at > $2) AS grants, \
             (SELECT count(*) FROM tokens WHERE client_id = a.id AND revoked_at IS NULL AND expires_at > $2) AS tokens \
             FROM agents a WHERE a.id = $1",
        )
        .bind(agent.to_string())
        .bind(ts(now)?)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.map(|r| {
            let count = |n: i64| u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("count {n}")));
            Ok(AgentActivity {
                live_grants: count(get(&r, "grants")?)?,
                live_tokens: count(get(&r, "tokens")?)?,
                last_used_at: codec::opt_ts(get(&r, "last_used_at")?)?,
            })
        })
        .transpose()
    }

    async fn list_resources(&self, q: &ResourceListQuery) -> Result<Vec<Resource>, StoreError> {
        let (tail, values) = codec::resource_list_where(q, |n| format!("${n}"));
        let rows = self.list(&format!("SELECT * FROM resources{tail}"), values).await?;
        rows.iter().map(resource_row).collect()
    }

    async fn agent_children(&self, parent: AgentId) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query("SELECT * FROM agents WHERE parent = $1 ORDER BY id")
            .bind(parent.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(agent_row).collect()
    }

    async fn resource(&self, id: ResourceId) -> Result<Option<Resource>, StoreError> {
        self.one("SELECT * FROM resources WHERE id = $1", &id.to_string(), resource_row).await
    }

    async fn resource_by_identifier(&self, identifier: &str) -> Result<Option<Resource>, StoreError> {
        self.one("SELECT * FROM resources WHERE identifier = $1", identifier, resource_row).await
    }

    async fn resources(&self) -> Result<Vec<Resource>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM resources ORDER BY id").fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(resource_row).collect()
    }

    async fn current_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        let row = sqlx::query("SELECT version, text, created_at, author FROM policies ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| policy_row(&r)).transpose()
    }

    async fn policy_versions(&self, before: Option<u64>, limit: u32) -> Result<Vec<PolicyVersion>, StoreError> {
        // Query input, not stored data: past every number means no bound.
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let rows = sqlx::query(
            "SELECT seq, version, author, created_at, octet_length(text)::BIGINT AS bytes FROM policies \
             WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(policy_version_row).collect()
    }

    async fn policy_version(&self, number: u64) -> Result<Option<(PolicyVersion, StoredPolicy)>, StoreError> {
        let Ok(seq) = i64::try_from(number) else { return Ok(None) };
        let row = sqlx::query(
            "SELECT seq, version, author, created_at, text, octet_length(text)::BIGINT AS bytes FROM policies \
             WHERE seq = $1",
        )
        .bind(seq)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.map(|r| Ok((policy_version_row(&r)?, policy_row(&r)?))).transpose()
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query("SELECT * FROM signing_keys ORDER BY created_at")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(StoredKey {
                    kid: get(r, "kid")?,
                    alg: get(r, "alg")?,
                    purpose: KeyUse::parse(&get::<String>(r, "purpose")?)?,
                    wrapped_private: get(r, "wrapped_private")?,
                    public_jwk: get(r, "public_jwk")?,
                    created_at: codec::from_ts(get(r, "created_at")?)?,
                    retired_at: codec::opt_ts(get(r, "retired_at")?)?,
                })
            })
            .collect()
    }

    async fn token(&self, jti: Jti) -> Result<Option<TokenRecord>, StoreError> {
        self.one("SELECT * FROM tokens WHERE jti = $1", &jti.to_string(), token_row).await
    }

    async fn grant(&self, id: GrantId) -> Result<Option<Grant>, StoreError> {
        self.one("SELECT * FROM grants WHERE id = $1", &id.to_string(), grant_row).await
    }

    async fn grants(&self, q: &GrantQuery) -> Result<Vec<Grant>, StoreError> {
        let (tail, values) = codec::grant_list_where(q, |n| format!("${n}"))?;
        let rows = self.list(&format!("SELECT * FROM grants{tail}"), values).await?;
        rows.iter().map(grant_row).collect()
    }

    async fn lapse_due(&self, now: time::OffsetDateTime, limit: u32) -> Result<Vec<Grant>, StoreError> {
        // Read from the partial index `grants_lapse_due` (migration 0028).
        let rows = sqlx::query(
            "SELECT * FROM grants WHERE status = 'active' AND lapsed_at IS NULL AND expires_at <= $1 \
             ORDER BY expires_at, id LIMIT $2",
        )
        .bind(ts(now)?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(grant_row).collect()
    }

    async fn lapsed_grants(&self, q: &mandate_core::store::LapsedQuery) -> Result<Vec<Grant>, StoreError> {
        let (tail, values) = codec::lapsed_list_where(q, |n| format!("${n}"))?;
        let rows = self.list(&format!("SELECT * FROM grants{tail}"), values).await?;
        rows.iter().map(grant_row).collect()
    }

    async fn approval(&self, id: ApprovalId) -> Result<Option<Approval>, StoreError> {
        self.one("SELECT * FROM approvals WHERE id = $1", &id.to_string(), approval_row).await
    }

    async fn backchannel(&self, agent: AgentId) -> Result<Option<mandate_model::delivery::Backchannel>, StoreError> {
        self.one("SELECT * FROM agent_backchannel WHERE agent = $1", &agent.to_string(), deliveries::backchannel_row)
            .await
    }

    async fn ciba_callback(
        &self,
        approval: ApprovalId,
    ) -> Result<Option<mandate_model::delivery::CibaCallback>, StoreError> {
        self.one("SELECT * FROM ciba_callbacks WHERE approval = $1", &approval.to_string(), deliveries::callback_row)
            .await
    }

    async fn due_deliveries(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::delivery::Delivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM deliveries WHERE status = 'pending' AND next_at <= $1 \
             AND (lease_until IS NULL OR lease_until <= $1) ORDER BY next_at, id LIMIT $2",
        )
        .bind(ts(now)?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(deliveries::delivery_row).collect()
    }

    async fn stream(&self, id: mandate_model::StreamId) -> Result<Option<mandate_model::ssf::Stream>, StoreError> {
        self.one("SELECT * FROM ssf_streams WHERE id = $1", &id.to_string(), signals::stream_row).await
    }

    async fn streams_of(&self, resource: ResourceId) -> Result<Vec<mandate_model::ssf::Stream>, StoreError> {
        let rows = sqlx::query("SELECT * FROM ssf_streams WHERE resource_id = $1 ORDER BY created_at, id")
            .bind(resource.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(signals::stream_row).collect()
    }

    async fn queued_events(
        &self,
        stream: mandate_model::StreamId,
        limit: u32,
    ) -> Result<Vec<mandate_model::ssf::QueuedEvent>, StoreError> {
        let rows = sqlx::query("SELECT * FROM ssf_events WHERE stream_id = $1 ORDER BY seq LIMIT $2")
            .bind(stream.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(signals::event_row).collect()
    }

    async fn removed_subjects(&self, stream: mandate_model::StreamId) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT subject FROM ssf_subjects WHERE stream_id = $1 ORDER BY subject")
            .bind(stream.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn due_streams(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::ssf::Stream>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM ssf_streams s WHERE method = 'push' AND status = 'enabled' AND next_at <= $1 \
             AND (lease_until IS NULL OR lease_until <= $1) \
             AND EXISTS (SELECT 1 FROM ssf_events e WHERE e.stream_id = s.id) ORDER BY next_at, id LIMIT $2",
        )
        .bind(ts(now)?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(signals::stream_row).collect()
    }

    async fn deliveries_about(&self, about: &str) -> Result<Vec<mandate_model::delivery::Delivery>, StoreError> {
        let rows = sqlx::query("SELECT * FROM deliveries WHERE about = $1 ORDER BY id")
            .bind(about)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(deliveries::delivery_row).collect()
    }

    async fn approvals(&self, q: &ApprovalQuery) -> Result<Vec<Approval>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM approvals WHERE ($1::text IS NULL OR (approver_group IS NULL AND approver = $1) \
             OR approver_group IN (SELECT jsonb_array_elements_text(($6::text)::jsonb))) AND ($2::text IS NULL OR status = $2) \
             AND ($3::text IS NULL OR binding = $3) AND ($5::text IS NULL OR id < $5) ORDER BY id DESC LIMIT $4",
        )
        .bind(q.approver.map(|u| u.to_string()))
        .bind(q.status.map(|s| s.as_str()))
        .bind(&q.binding)
        .bind(i64::from(q.limit))
        .bind(q.before.map(|a| a.to_string()))
        .bind(mandate_store_sql::json(&q.groups)?)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(approval_row).collect()
    }

    async fn pending_requests(
        &self,
        agent: AgentId,
        user: Option<UserId>,
        now: time::OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM approvals WHERE agent = $1 AND status = 'pending' \
             AND ($2::text IS NULL OR user_id = $2) AND expires_at > $3",
        )
        .bind(agent.to_string())
        .bind(user.map(|u| u.to_string()))
        .bind(ts(now)?)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("count {n}")))
    }

    async fn refresh(&self, hash: &str) -> Result<Option<RefreshRecord>, StoreError> {
        self.one("SELECT * FROM refresh_tokens WHERE hash = $1", hash, refresh_row).await
    }

    async fn auth_code(&self, hash: &str) -> Result<Option<AuthCodeRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM auth_codes WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| {
            AuthCodeRecord::try_from(AuthCodeRow {
                hash: get(&r, "hash")?,
                agent: get(&r, "agent")?,
                user_id: get(&r, "user_id")?,
                grant_id: get(&r, "grant_id")?,
                redirect_uri: get(&r, "redirect_uri")?,
                code_challenge: get(&r, "code_challenge")?,
                dpop_jkt: get(&r, "dpop_jkt")?,
                offline: get(&r, "offline")?,
                created_at: get(&r, "created_at")?,
                expires_at: get(&r, "expires_at")?,
                used_at: get(&r, "used_at")?,
            })
        })
        .transpose()
    }

    async fn upstream_linked(&self, user: UserId) -> Result<bool, StoreError> {
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM upstream_links WHERE user_id = $1)")
            .bind(user.to_string())
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn upstream_link(&self, issuer: &str, subject: &str) -> Result<Option<UpstreamLink>, StoreError> {
        let row = sqlx::query("SELECT * FROM upstream_links WHERE issuer = $1 AND subject = $2")
            .bind(issuer)
            .bind(subject)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| {
            UpstreamLink::try_from(UpstreamLinkRow {
                issuer: get(&r, "issuer")?,
                subject: get(&r, "subject")?,
                user_id: get(&r, "user_id")?,
                created_at: get(&r, "created_at")?,
            })
        })
        .transpose()
    }

    async fn session(&self, hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM sessions WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| {
            SessionRecord::try_from(SessionRow {
                hash: get(&r, "hash")?,
                user_id: get(&r, "user_id")?,
                csrf: get(&r, "csrf")?,
                created_at: get(&r, "created_at")?,
                expires_at: get(&r, "expires_at")?,
                revoked_at: get(&r, "revoked_at")?,
            })
        })
        .transpose()
    }

    async fn last_use_of_owned_agents(
        &self,
        owner: UserId,
    ) -> Result<Vec<(AgentId, time::OffsetDateTime)>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.agent AS agent, max(g.last_used_at) AS last_used FROM grants g JOIN agents a ON a.id = g.agent \
             WHERE a.owner = $1 AND g.last_used_at IS NOT NULL GROUP BY g.agent",
        )
        .bind(owner.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| Ok((codec::parse::<AgentId>(&get::<String>(r, "agent")?)?, codec::from_ts(get(r, "last_used")?)?)))
            .collect()
    }

    async fn agents_owned_by(&self, owner: UserId) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query("SELECT * FROM agents WHERE owner = $1 ORDER BY id")
            .bind(owner.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(agent_row).collect()
    }

    async fn revoked_status_indexes(&self, from: u64, to: u64) -> Result<Vec<u64>, StoreError> {
        let range = |v: u64| i64::try_from(v).map_err(|_| unavailable("status index overflow"));
        let rows: Vec<i64> = sqlx::query_scalar(
            "SELECT status_idx FROM tokens WHERE revoked_at IS NOT NULL AND status_idx IS NOT NULL \
             AND status_idx >= $1 AND status_idx < $2",
        )
        .bind(range(from)?)
        .bind(range(to)?)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.into_iter()
            .map(|i| u64::try_from(i).map_err(|_| StoreError::Corrupt(format!("status index {i}"))))
            .collect()
    }

    async fn status_indexes_reserved(&self) -> Result<u64, StoreError> {
        let next: i64 = sqlx::query_scalar("SELECT next FROM status_counter WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        u64::try_from(next).map_err(|_| unavailable("status index overflow"))
    }

    async fn inventory_tally(
        &self,
        tally: mandate_core::report::InventoryTally,
    ) -> Result<mandate_core::report::InventoryTally, StoreError> {
        inventory::tally(&self.pool, tally).await
    }

    async fn inventory_peaks(
        &self,
        by: mandate_core::report::ReportBy,
        first: &str,
        last: &str,
        since_24h: time::OffsetDateTime,
        since_7d: time::OffsetDateTime,
    ) -> Result<Vec<mandate_core::report::Peaks>, StoreError> {
        inventory::peaks(&self.pool, by, first, last, ts(since_24h)?, ts(since_7d)?).await
    }

    async fn spawned_since(&self, parent: AgentId, since: time::OffsetDateTime) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM agents WHERE parent = $1 AND created_at >= $2")
            .bind(parent.to_string())
            .bind(ts(since)?)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt("a negative count".into()))
    }

    async fn spawn_counts(
        &self,
        parents: &[AgentId],
        since: time::OffsetDateTime,
    ) -> Result<Vec<(AgentId, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT parent, count(*) AS n FROM agents WHERE parent = ANY($1) AND created_at >= $2 GROUP BY parent",
        )
        .bind(parents.iter().map(ToString::to_string).collect::<Vec<_>>())
        .bind(ts(since)?)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let parent: String = get(r, "parent")?;
                let parent =
                    parent.parse::<AgentId>().map_err(|_| StoreError::Corrupt(format!("agent id {parent}")))?;
                let n: i64 = get(r, "n")?;
                Ok((parent, u64::try_from(n).map_err(|_| StoreError::Corrupt("a negative count".into()))?))
            })
            .collect()
    }

    async fn live_grants_of(&self, agents: &[AgentId], now: time::OffsetDateTime) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM grants WHERE agent = ANY($1) AND status = 'active' AND expires_at > $2 ORDER BY id DESC",
        )
        .bind(agents.iter().map(ToString::to_string).collect::<Vec<_>>())
        .bind(ts(now)?)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(grant_row).collect()
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(concat!(scim::user_select!(), " WHERE id = ANY($1) ORDER BY id"))
            .bind(ids.iter().map(ToString::to_string).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(user_row).collect()
    }

    async fn campaign(
        &self,
        id: mandate_model::CampaignId,
    ) -> Result<Option<mandate_model::review::Campaign>, StoreError> {
        self.one("SELECT * FROM review_campaigns WHERE id = $1", &id.to_string(), review::campaign_row).await
    }

    async fn campaigns(
        &self,
        q: &mandate_core::store::CampaignQuery,
    ) -> Result<Vec<mandate_model::review::Campaign>, StoreError> {
        let (tail, values) = codec::campaigns_where(q, |n| format!("${n}"));
        let rows = self.list(&format!("SELECT * FROM review_campaigns{tail}"), values).await?;
        rows.iter().map(review::campaign_row).collect()
    }

    async fn campaigns_due(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<mandate_model::review::Campaign>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM review_campaigns WHERE status = 'open' AND deadline <= $1 ORDER BY deadline, id LIMIT $2",
        )
        .bind(ts(now)?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(review::campaign_row).collect()
    }

    async fn campaign_progress(
        &self,
        id: mandate_model::CampaignId,
    ) -> Result<mandate_core::store::CampaignProgress, StoreError> {
        let (items, decided): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(decision) FROM review_items WHERE campaign = $1")
                .bind(id.to_string())
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        let n = |v: i64| u64::try_from(v).map_err(|_| StoreError::Corrupt("a negative count".into()));
        Ok(mandate_core::store::CampaignProgress { items: n(items)?, decided: n(decided)? })
    }

    async fn review_item(
        &self,
        id: mandate_model::ReviewItemId,
    ) -> Result<Option<mandate_model::review::ReviewItem>, StoreError> {
        self.one("SELECT * FROM review_items WHERE id = $1", &id.to_string(), review::item_row).await
    }

    async fn review_items(
        &self,
        q: &mandate_core::store::ReviewItemQuery,
    ) -> Result<Vec<mandate_model::review::ReviewItem>, StoreError> {
        let (tail, values) = codec::review_items_where(q, |n| format!("${n}"));
        let rows = self.list(&format!("SELECT * FROM review_items{tail}"), values).await?;
        rows.iter().map(review::item_row).collect()
    }

    async fn expired_agents(&self, at: time::OffsetDateTime) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM agents WHERE kind = 'ephemeral' AND status <> 'retired' AND expires_at <= $1 ORDER BY id",
        )
        .bind(ts(at)?)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(agent_row).collect()
    }

    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| {
            let seq: i64 = get(&r, "seq")?;
            Ok((u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit seq {seq}")))?, get(&r, "hash")?))
        })
        .transpose()
    }

    async fn audit_lanes(&self) -> Result<Vec<mandate_core::audit::AuditLane>, StoreError> {
        // The lanes that hold events, read from the events themselves (an
        // index skip over `(lane, seq)`), not from the writers' head rows.
        let rows = sqlx::query(
            "WITH RECURSIVE lanes AS ( \
                 SELECT min(lane) AS lane FROM audit_events \
                 UNION ALL \
                 SELECT (SELECT min(lane) FROM audit_events WHERE lane > lanes.lane) FROM lanes WHERE lanes.lane IS NOT NULL) \
             SELECT e.lane, e.seq, e.hash, EXISTS (SELECT 1 FROM audit_checkpoints c WHERE c.seq = e.seq) AS checkpointed \
             FROM lanes CROSS JOIN LATERAL \
                 (SELECT lane, seq, hash FROM audit_events WHERE lane = lanes.lane ORDER BY seq DESC LIMIT 1) e \
             ORDER BY e.lane",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let lane: i64 = get(r, "lane")?;
                let seq: i64 = get(r, "seq")?;
                Ok(mandate_core::audit::AuditLane {
                    lane: u64::try_from(lane).map_err(|_| StoreError::Corrupt(format!("audit lane {lane}")))?,
                    seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit seq {seq}")))?,
                    hash: get(r, "hash")?,
                    checkpointed: get(r, "checkpointed")?,
                })
            })
            .collect()
    }

    async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<Event>, StoreError> {
        let (mut filter, values) = codec::audit_where(q, |n| format!("${n}"));
        let lane = match q.lane {
            Some(l) => {
                filter.push_str(&format!(" AND lane = ${}", values.len() + 2));
                Some(i64::try_from(l).map_err(|_| StoreError::Unavailable(format!("audit lane {l}")))?)
            }
            None => None,
        };
        let sql =
            format!("SELECT {EVENT_COLUMNS}, lane FROM audit_events WHERE {filter} ORDER BY seq LIMIT {}", q.limit);
        // SAFETY-FALLBACK: a cursor beyond i64 is past every seq: an empty page.
        let mut query = sqlx::query(&sql).bind(i64::try_from(q.after).unwrap_or(i64::MAX));
        for v in values {
            query = query.bind(v);
        }
        if let Some(l) = lane {
            query = query.bind(l);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(event_row).collect()
    }

    async fn audit_events_of(&self, b: &AuditBatch) -> Result<Vec<Event>, StoreError> {
        // Each key's range of its (key, seq) index after the cursor, its
        // first `per_key` kept by a window (ADR 0038).
        let column = match b.by {
            AuditKey::Actor => "actor",
            AuditKey::Grant => "grant_id",
        };
        let mut filter = format!("{column} = ANY($2) AND seq > $1");
        let mut n = 3;
        if b.kind.is_some() {
            n += 1;
            filter.push_str(&format!(" AND type = ${n}"));
        }
        if b.since.is_some() {
            n += 1;
            filter.push_str(&format!(" AND time >= ${n}"));
        }
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, lane FROM (SELECT {EVENT_COLUMNS}, lane, \
             row_number() OVER (PARTITION BY {column} ORDER BY seq) AS nth FROM audit_events WHERE {filter}) e \
             WHERE nth <= $3 ORDER BY {column}, seq"
        );
        // SAFETY-FALLBACK: a cursor beyond i64 is past every seq: nothing matches.
        let mut query = sqlx::query(&sql)
            .bind(i64::try_from(b.after).unwrap_or(i64::MAX))
            .bind(b.keys.clone())
            .bind(i64::from(b.per_key));
        if let Some(kind) = &b.kind {
            query = query.bind(kind.clone());
        }
        if let Some(since) = &b.since {
            query = query.bind(since.clone());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(event_row).collect()
    }

    async fn audit_checkpoints(&self, after: u64, limit: u32) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_checkpoints WHERE seq > $1 ORDER BY seq LIMIT $2")
            // SAFETY-FALLBACK: a cursor beyond i64 is past every seq.
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(checkpoint_row).collect()
    }

    async fn last_audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(checkpoint_row).transpose()
    }
}
