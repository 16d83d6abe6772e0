//! The [`Store`] port on embedded SQLite.
//!
//! Durability: WAL with `synchronous = FULL`, so a change is on disk before
//! it is acknowledged. Throughput: one writer task owns the only write
//! connection and applies every change that is waiting in one transaction
//! (group commit); one refused change never undoes its neighbours (see
//! [`apply_batch`]). Reads use a separate pool.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use mandate_core::store::codec::{
    self, AgentRow, ResourceRow, TokenRow, UserRow, agent_kind, json, ts, user_status,
};
use mandate_core::store::{Change, Mutation, Store, StoreError, StoredKey, StoredPolicy};
use mandate_model::records::{Agent, Resource, TokenRecord, User};
use mandate_model::{AgentId, Jti, ResourceId, UserId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Most changes folded into one transaction.
const MAX_BATCH: usize = 512;

struct Job {
    change: Change,
    reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
}

/// SQLite store: a read pool and a group-committing writer.
#[derive(Clone)]
pub struct SqliteStore {
    reads: SqlitePool,
    writer: mpsc::Sender<Job>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            .disable_statement_logging();
        let mut writer = SqliteConnection::connect_with(&options)
            .await
            .map_err(unavailable)?;
        MIGRATOR.run(&mut writer).await.map_err(unavailable)?;
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options.read_only(true))
            .await
            .map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(write_loop(writer, rx));
        Ok(Self { reads, writer: tx })
    }

    async fn one<T>(
        &self,
        sql: &'static str,
        bind: &str,
        map: impl FnOnce(&SqliteRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let row = sqlx::query(sql)
            .bind(bind)
            .fetch_optional(&self.reads)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(map).transpose()
    }
}

async fn write_loop(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = apply_batch(&mut conn, &batch).await;
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
async fn apply_batch(
    conn: &mut SqliteConnection,
    batch: &[Job],
) -> Vec<Result<Vec<u64>, StoreError>> {
    match apply_in_transaction(conn, batch, false).await {
        Ok(results) => results,
        Err(NeedSavepoints) => match apply_in_transaction(conn, batch, true).await {
            Ok(results) => results,
            Err(NeedSavepoints) => batch
                .iter()
                .map(|_| Err(unavailable("batch could not be applied")))
                .collect(),
        },
    }
}

struct NeedSavepoints;

async fn apply_in_transaction(
    conn: &mut SqliteConnection,
    batch: &[Job],
    savepoints: bool,
) -> Result<Vec<Result<Vec<u64>, StoreError>>, NeedSavepoints> {
    if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        return Ok(batch.iter().map(|_| Err(unavailable(&e))).collect());
    }
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let guarded = savepoints && job.change.0.len() > 1;
        if guarded {
            if let Err(e) = sqlx::query("SAVEPOINT change").execute(&mut *conn).await {
                results.push(Err(unavailable(e)));
                continue;
            }
        }
        let mut affected = Vec::with_capacity(job.change.0.len());
        let mut outcome = Ok(());
        for (i, m) in job.change.0.iter().enumerate() {
            match apply(conn, m).await {
                Ok(n) => affected.push(n),
                Err(e) => {
                    if i > 0 && !savepoints {
                        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                        return Err(NeedSavepoints);
                    }
                    outcome = Err(e);
                    break;
                }
            }
        }
        if guarded {
            let end = if outcome.is_ok() {
                "RELEASE change"
            } else {
                "ROLLBACK TO change"
            };
            if let Err(e) = sqlx::query(end).execute(&mut *conn).await {
                outcome = Err(unavailable(e));
            }
            if outcome.is_err() {
                let _ = sqlx::query("RELEASE change").execute(&mut *conn).await;
            }
        }
        results.push(outcome.map(|()| affected));
    }
    match sqlx::query("COMMIT").execute(&mut *conn).await {
        Ok(_) => Ok(results),
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Ok(batch.iter().map(|_| Err(unavailable(&e))).collect())
        }
    }
}

fn map_write_error(e: sqlx::Error, what: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("{what} already exists"))
        }
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::Conflict(format!("{what} refers to a missing record"))
        }
        _ => unavailable(e),
    }
}

async fn apply(conn: &mut SqliteConnection, m: &Mutation) -> Result<u64, StoreError> {
    let done = match m {
        Mutation::PutSettingIfAbsent { key, value } => sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "setting"))?,
        Mutation::InsertUser(u) => sqlx::query(
            "INSERT INTO users (id, name, email, groups, attributes, status, password_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(u.id.to_string())
        .bind(&u.name)
        .bind(&u.email)
        .bind(json(&u.groups))
        .bind(json(&u.attributes))
        .bind(user_status(u.status))
        .bind(&u.password_hash)
        .bind(ts(u.created_at))
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "user"))?,
        Mutation::UpdateUser(u) => {
            let r = sqlx::query("UPDATE users SET groups = ?, attributes = ?, status = ? WHERE id = ?")
                .bind(json(&u.groups))
                .bind(json(&u.attributes))
                .bind(user_status(u.status))
                .bind(u.id.to_string())
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("user {}", u.id)));
            }
            r
        }
        Mutation::InsertUserToken { hash, user, created_at } => sqlx::query("INSERT INTO user_tokens (hash, user_id, created_at) VALUES (?, ?, ?)")
            .bind(hash)
            .bind(user.to_string())
            .bind(ts(*created_at))
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "user token"))?,
        Mutation::InsertAgent(a) => sqlx::query(
            "INSERT INTO agents (id, name, owner, kind, parent, status, expires_at, description, scopes, jwks, redirect_uris, secret_hash, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(a.id.to_string())
        .bind(&a.name)
        .bind(a.owner.to_string())
        .bind(agent_kind(a.kind))
        .bind(a.parent.map(|p| p.to_string()))
        .bind(a.status.as_str())
        .bind(a.expires_at.map(ts))
        .bind(&a.description)
        .bind(a.scopes.as_ref().map(json))
        .bind(a.jwks.as_ref().map(json))
        .bind(json(&a.redirect_uris))
        .bind(&a.secret_hash)
        .bind(ts(a.created_at))
        .bind(ts(a.created_at))
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "agent"))?,
        Mutation::SetAgentStatus { id, from, to, at } => {
            let r = sqlx::query("UPDATE agents SET status = ?, updated_at = ? WHERE id = ? AND status = ?")
                .bind(to.as_str())
                .bind(ts(*at))
                .bind(id.to_string())
                .bind(from.as_str())
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("agent {id} is no longer {}", from.as_str())));
            }
            r
        }
        Mutation::RevokeTokensOfAgent { agent, at } => sqlx::query("UPDATE tokens SET revoked_at = ? WHERE client_id = ? AND revoked_at IS NULL")
            .bind(ts(*at))
            .bind(agent.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::RevokeTokensOfSubject { subject, at } => sqlx::query("UPDATE tokens SET revoked_at = ? WHERE subject = ? AND revoked_at IS NULL")
            .bind(ts(*at))
            .bind(subject)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::InsertResource(r) => sqlx::query("INSERT INTO resources (id, identifier, name, scopes, jwks, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(r.id.to_string())
            .bind(&r.identifier)
            .bind(&r.name)
            .bind(json(&r.scopes))
            .bind(r.jwks.as_ref().map(json))
            .bind(ts(r.created_at))
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "resource"))?,
        Mutation::PutPolicy(p) => sqlx::query("INSERT INTO policies (version, text, created_at) VALUES (?, ?, ?)")
            .bind(&p.version)
            .bind(&p.text)
            .bind(ts(p.created_at))
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::InsertSigningKey(k) => sqlx::query("INSERT INTO signing_keys (kid, alg, wrapped_private, created_at, retired_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&k.kid)
            .bind(&k.alg)
            .bind(&k.wrapped_private)
            .bind(ts(k.created_at))
            .bind(k.retired_at.map(ts))
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "signing key"))?,
        Mutation::RetireSigningKeys { keep, at } => sqlx::query("UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL AND kid <> ?")
            .bind(ts(*at))
            .bind(keep)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::ConsumeAssertionJti { client, jti, expires_at } => {
            let r = sqlx::query("INSERT INTO assertion_jtis (client_id, jti, expires_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
                .bind(client.to_string())
                .bind(jti)
                .bind(ts(*expires_at))
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Replay);
            }
            r
        }
        Mutation::InsertToken(t) => sqlx::query(
            "INSERT INTO tokens (jti, client_id, subject, audience, scopes, grant_id, parent, chain, issued_at, expires_at, cnf_jkt, revoked_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(t.jti.to_string())
        .bind(t.client_id.to_string())
        .bind(&t.subject)
        .bind(&t.audience)
        .bind(json(&t.scopes))
        .bind(t.grant.map(|g| g.to_string()))
        .bind(t.parent.map(|p| p.to_string()))
        .bind(json(&t.chain))
        .bind(ts(t.issued_at))
        .bind(ts(t.expires_at))
        .bind(&t.cnf_jkt)
        .bind(t.revoked_at.map(ts))
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "token"))?,
        Mutation::RevokeToken { jti, at } => sqlx::query("UPDATE tokens SET revoked_at = ? WHERE jti = ? AND revoked_at IS NULL")
            .bind(ts(*at))
            .bind(jti.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::PurgeExpiredJtis { before } => sqlx::query("DELETE FROM assertion_jtis WHERE expires_at < ?")
            .bind(ts(*before))
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
    };
    Ok(done.rows_affected())
}

fn get<'r, T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>>(
    row: &'r SqliteRow,
    col: &str,
) -> Result<T, StoreError> {
    row.try_get(col)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn user_row(r: &SqliteRow) -> Result<User, StoreError> {
    User::try_from(UserRow {
        id: get(r, "id")?,
        name: get(r, "name")?,
        email: get(r, "email")?,
        groups: get(r, "groups")?,
        attributes: get(r, "attributes")?,
        status: get(r, "status")?,
        password_hash: get(r, "password_hash")?,
        created_at: get(r, "created_at")?,
    })
}

fn agent_row(r: &SqliteRow) -> Result<Agent, StoreError> {
    Agent::try_from(AgentRow {
        id: get(r, "id")?,
        name: get(r, "name")?,
        owner: get(r, "owner")?,
        kind: get(r, "kind")?,
        parent: get(r, "parent")?,
        status: get(r, "status")?,
        expires_at: get(r, "expires_at")?,
        description: get(r, "description")?,
        scopes: get(r, "scopes")?,
        jwks: get(r, "jwks")?,
        redirect_uris: get(r, "redirect_uris")?,
        secret_hash: get(r, "secret_hash")?,
        created_at: get(r, "created_at")?,
    })
}

fn resource_row(r: &SqliteRow) -> Result<Resource, StoreError> {
    Resource::try_from(ResourceRow {
        id: get(r, "id")?,
        identifier: get(r, "identifier")?,
        name: get(r, "name")?,
        scopes: get(r, "scopes")?,
        jwks: get(r, "jwks")?,
        created_at: get(r, "created_at")?,
    })
}

fn token_row(r: &SqliteRow) -> Result<TokenRecord, StoreError> {
    TokenRecord::try_from(TokenRow {
        jti: get(r, "jti")?,
        client_id: get(r, "client_id")?,
        subject: get(r, "subject")?,
        audience: get(r, "audience")?,
        scopes: get(r, "scopes")?,
        grant_id: get(r, "grant_id")?,
        parent: get(r, "parent")?,
        chain: get(r, "chain")?,
        issued_at: get(r, "issued_at")?,
        expires_at: get(r, "expires_at")?,
        cnf_jkt: get(r, "cnf_jkt")?,
        revoked_at: get(r, "revoked_at")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, change: Change) -> Result<Vec<u64>, StoreError> {
        if change.0.is_empty() {
            return Ok(vec![]);
        }
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Job { change, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.one("SELECT value FROM settings WHERE key = ?", key, |r| {
            get(r, "value")
        })
        .await
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.one(
            "SELECT * FROM users WHERE id = ?",
            &id.to_string(),
            user_row,
        )
        .await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.one("SELECT * FROM users WHERE email = ?", email, user_row)
            .await
    }

    async fn user_by_token_hash(&self, hash: &str) -> Result<Option<UserId>, StoreError> {
        self.one(
            "SELECT user_id FROM user_tokens WHERE hash = ?",
            hash,
            |r| codec::parse(&get::<String>(r, "user_id")?),
        )
        .await
    }

    async fn agent(&self, id: AgentId) -> Result<Option<Agent>, StoreError> {
        self.one(
            "SELECT * FROM agents WHERE id = ?",
            &id.to_string(),
            agent_row,
        )
        .await
    }

    async fn agent_children(&self, parent: AgentId) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query("SELECT * FROM agents WHERE parent = ? ORDER BY id")
            .bind(parent.to_string())
            .fetch_all(&self.reads)
            .await
            .map_err(unavailable)?;
        rows.iter().map(agent_row).collect()
    }

    async fn resource(&self, id: ResourceId) -> Result<Option<Resource>, StoreError> {
        self.one(
            "SELECT * FROM resources WHERE id = ?",
            &id.to_string(),
            resource_row,
        )
        .await
    }

    async fn resource_by_identifier(
        &self,
        identifier: &str,
    ) -> Result<Option<Resource>, StoreError> {
        self.one(
            "SELECT * FROM resources WHERE identifier = ?",
            identifier,
            resource_row,
        )
        .await
    }

    async fn resources(&self) -> Result<Vec<Resource>, StoreError> {
        let rows = sqlx::query("SELECT * FROM resources ORDER BY id")
            .fetch_all(&self.reads)
            .await
            .map_err(unavailable)?;
        rows.iter().map(resource_row).collect()
    }

    async fn current_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        let row =
            sqlx::query("SELECT version, text, created_at FROM policies ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&self.reads)
                .await
                .map_err(unavailable)?;
        row.map(|r| {
            Ok(StoredPolicy {
                version: get(&r, "version")?,
                text: get(&r, "text")?,
                created_at: codec::from_ts(get(&r, "created_at")?)?,
            })
        })
        .transpose()
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query("SELECT * FROM signing_keys ORDER BY created_at")
            .fetch_all(&self.reads)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(StoredKey {
                    kid: get(r, "kid")?,
                    alg: get(r, "alg")?,
                    wrapped_private: get(r, "wrapped_private")?,
                    created_at: codec::from_ts(get(r, "created_at")?)?,
                    retired_at: codec::opt_ts(get(r, "retired_at")?)?,
                })
            })
            .collect()
    }

    async fn token(&self, jti: Jti) -> Result<Option<TokenRecord>, StoreError> {
        self.one(
            "SELECT * FROM tokens WHERE jti = ?",
            &jti.to_string(),
            token_row,
        )
        .await
    }
}

/// Opens a store from a `sqlite://` URL or a plain path.
pub async fn open_url(url: &str) -> Result<SqliteStore, StoreError> {
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    let path = path.split('?').next().unwrap_or(path);
    let _ = SqliteConnectOptions::from_str(&format!("sqlite://{path}")).map_err(unavailable)?;
    SqliteStore::open(Path::new(path)).await
}
