//! The [`Store`] port on PostgreSQL, for deployments where several
//! stateless nodes share one database.
//!
//! Writes: a few writer tasks per node each take every change that is
//! waiting and apply the lot in one transaction (group commit), as the
//! SQLite store does; one refused change never undoes its neighbours. The
//! audit chain's head is a single row. A writer locks it only once its
//! batch's changes are applied, then seals the batch's events, inserts them
//! with a single statement and commits, so writers on every node take turns
//! only for that tail, and events are numbered in commit order. Reads run on
//! the pool. Migrations run under sqlx's advisory lock, so nodes may start
//! together.

use std::time::Duration;

use async_trait::async_trait;
use mandate_audit::{Checkpoint, Event};
use mandate_core::audit::{AuditQuery, seal_record};
use mandate_core::store::{
    Applied, ApprovalQuery, Change, GrantQuery, Handle, KeyUse, Mutation, Receipt, Store, StoreError, StoredKey,
    StoredPolicy,
};
use mandate_model::records::{
    Agent, Approval, AuthCodeRecord, Grant, RefreshRecord, Resource, SessionRecord, TokenRecord, User, UserToken,
};
use mandate_model::{AgentId, ApprovalId, GrantId, Jti, ResourceId, UserId};
use mandate_store_sql::{
    self as codec, AgentRow, ApprovalRow, AuthCodeRow, EVENT_COLUMNS, EventRow, GrantRow, RefreshRow, ResourceRow,
    SessionRow, TokenRow, UserRow, UserTokenRow, agent_kind, json, ts, user_status,
};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Row};
use tokio::sync::{mpsc, oneshot};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Most changes folded into one transaction.
const MAX_BATCH: usize = 256;
/// Writer tasks per node. Each applies its batch's changes on its own
/// connection; they take turns only for the short tail that seals the
/// batch's events under the chain's head lock and commits.
const WRITERS: usize = 2;

struct Job {
    change: Change,
    reply: oneshot::Sender<Result<Receipt, StoreError>>,
}

/// PostgreSQL store over a connection pool and its writer tasks.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    writer: mpsc::Sender<Job>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresStore")
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl PostgresStore {
    /// Connects to `url` and migrates the schema.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(unavailable)?;
        // A node that stalls inside a transaction must not hold the audit
        // chain's head (and so every node's writes) for long.
        let options = options.options([("idle_in_transaction_session_timeout", "30s")]);
        let pool = PgPoolOptions::new()
            .max_connections(32)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.disable_statement_logging())
            .await
            .map_err(unavailable)?;
        MIGRATOR.run(&pool).await.map_err(unavailable)?;
        let (writer, jobs) = mpsc::channel(4096);
        let jobs = std::sync::Arc::new(tokio::sync::Mutex::new(jobs));
        for _ in 0..WRITERS {
            tokio::spawn(write_loop(pool.clone(), jobs.clone()));
        }
        Ok(Self { pool, writer })
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

fn map_write_error(e: sqlx::Error, what: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(format!("{what} already exists")),
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::Conflict(format!("{what} refers to a missing record"))
        }
        _ => unavailable(e),
    }
}

async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    let n = apply_one(conn, m).await?;
    // In the same transaction: a node that reads the new epoch reads this
    // change too.
    if m.invalidates() {
        sqlx::query("UPDATE epoch SET n = n + 1 WHERE id = 1").execute(&mut *conn).await.map_err(unavailable)?;
    }
    Ok(n)
}

async fn apply_one(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    let done = match m {
        Mutation::PutSettingIfAbsent { key, value } => sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "setting"))?,
        Mutation::InsertUser(u) => sqlx::query(
            "INSERT INTO users (id, name, email, groups, attributes, status, password_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(u.id.to_string())
        .bind(&u.name)
        .bind(&u.email)
        .bind(json(&u.groups)?)
        .bind(json(&u.attributes)?)
        .bind(user_status(u.status))
        .bind(&u.password_hash)
        .bind(ts(u.created_at)?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "user"))?,
        Mutation::UpdateUser(u) => {
            let r = sqlx::query("UPDATE users SET groups = $1, attributes = $2, status = $3 WHERE id = $4")
                .bind(json(&u.groups)?)
                .bind(json(&u.attributes)?)
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
        Mutation::InsertUserToken { token, hash } => sqlx::query(
            "INSERT INTO user_tokens (hash, id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hash)
        .bind(token.id.to_string())
        .bind(token.user.to_string())
        .bind(ts(token.created_at)?)
        .bind(ts(token.expires_at)?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "user token"))?,
        Mutation::RevokeUserToken { id, user, at } => sqlx::query(
            "UPDATE user_tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
        )
        .bind(ts(*at)?)
        .bind(id.to_string())
        .bind(user.to_string())
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?,
        Mutation::InsertAgent(a) => sqlx::query(
            "INSERT INTO agents (id, name, owner, kind, parent, status, expires_at, description, scopes, jwks, redirect_uris, secret_hash, created_at, updated_at, suspended_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(a.id.to_string())
        .bind(&a.name)
        .bind(a.owner.to_string())
        .bind(agent_kind(a.kind))
        .bind(a.parent.map(|p| p.to_string()))
        .bind(a.status.as_str())
        .bind(a.expires_at.map(ts).transpose()?)
        .bind(&a.description)
        .bind(a.scopes.as_ref().map(json).transpose()?)
        .bind(a.jwks.as_ref().map(json).transpose()?)
        .bind(json(&a.redirect_uris)?)
        .bind(&a.secret_hash)
        .bind(ts(a.created_at)?)
        .bind(ts(a.created_at)?)
        .bind(a.suspended_by.map(|b| b.as_str()))
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "agent"))?,
        Mutation::SetAgentStatus { id, from, to, at, by } => {
            let level = by.map(|b| b.as_str());
            let kept = if *to == mandate_model::records::AgentStatus::Suspended { level } else { None };
            // Resuming needs the level that suspended, or a higher one:
            // checked in the same statement, so a concurrent re-suspension
            // by the admin cannot be undone by an owner's resume.
            let r = sqlx::query(
                "UPDATE agents SET status = $1, updated_at = $2, suspended_by = $5 WHERE id = $3 AND status = $4 \
                 AND NOT ($4 = 'suspended' AND $1 = 'active' AND coalesce($6::text, '') = 'owner' \
                 AND coalesce(suspended_by, 'admin') = 'admin')",
            )
            .bind(to.as_str())
            .bind(ts(*at)?)
            .bind(id.to_string())
            .bind(from.as_str())
            .bind(kept)
            .bind(level)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("agent {id} is no longer {}", from.as_str())));
            }
            r
        }
        Mutation::RevokeTokensOfAgent { agent, at } => {
            return revoke_tree(conn, "client_id = $2 AND expires_at > $1", *at, &agent.to_string()).await;
        }
        Mutation::RevokeTokensOfSubject { subject, at } => sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE subject = $2 AND revoked_at IS NULL")
            .bind(ts(*at)?)
            .bind(subject)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::RevokeTokensOfOwnedAgents { owner, at } => {
            return revoke_tree(
                conn,
                "expires_at > $1 AND client_id IN (SELECT id FROM agents WHERE owner = $2)",
                *at,
                &owner.to_string(),
            )
            .await;
        }
        Mutation::InsertResource(r) => sqlx::query("INSERT INTO resources (id, identifier, name, scopes, jwks, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(r.id.to_string())
            .bind(&r.identifier)
            .bind(&r.name)
            .bind(json(&r.scopes)?)
            .bind(r.jwks.as_ref().map(json).transpose()?)
            .bind(ts(r.created_at)?)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "resource"))?,
        Mutation::PutPolicy(p) => sqlx::query("INSERT INTO policies (version, text, created_at) VALUES ($1, $2, $3)")
            .bind(&p.version)
            .bind(&p.text)
            .bind(ts(p.created_at)?)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::InsertSigningKey(k) => sqlx::query(
            "INSERT INTO signing_keys (kid, alg, purpose, wrapped_private, public_jwk, created_at, retired_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&k.kid)
        .bind(&k.alg)
        .bind(k.purpose.as_str())
        .bind(&k.wrapped_private)
        .bind(&k.public_jwk)
        .bind(ts(k.created_at)?)
        .bind(k.retired_at.map(ts).transpose()?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "signing key"))?,
        Mutation::RetireSigningKeys { purpose, keep, at } => sqlx::query(
            "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL AND purpose = $2 AND kid <> $3",
        )
            .bind(ts(*at)?)
            .bind(purpose.as_str())
            .bind(keep)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::ConsumeAssertionJti { client, jti, expires_at } => {
            let r = sqlx::query("INSERT INTO assertion_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(client.to_string())
                .bind(jti)
                .bind(ts(*expires_at)?)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Replay);
            }
            r
        }
        Mutation::ConsumeDpopJti { key, expires_at } => {
            let r = sqlx::query("INSERT INTO dpop_jtis (key, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(key)
                .bind(ts(*expires_at)?)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::DpopReplay);
            }
            r
        }
        Mutation::InsertSession(r) => sqlx::query(
            "INSERT INTO sessions (hash, user_id, csrf, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&r.hash)
        .bind(r.user.to_string())
        .bind(&r.csrf)
        .bind(ts(r.created_at)?)
        .bind(ts(r.expires_at)?)
        .bind(r.revoked_at.map(ts).transpose()?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "session"))?,
        Mutation::InsertAuthCode(c) => sqlx::query(
            "INSERT INTO auth_codes (hash, agent, user_id, grant_id, redirect_uri, code_challenge, created_at, expires_at, used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&c.hash)
        .bind(c.agent.to_string())
        .bind(c.user.to_string())
        .bind(c.grant.to_string())
        .bind(&c.redirect_uri)
        .bind(&c.code_challenge)
        .bind(ts(c.created_at)?)
        .bind(ts(c.expires_at)?)
        .bind(c.used_at.map(ts).transpose()?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "authorization code"))?,
        Mutation::UseAuthCode { hash, at } => {
            let r = sqlx::query("UPDATE auth_codes SET used_at = $1 WHERE hash = $2 AND used_at IS NULL")
                .bind(ts(*at)?)
                .bind(hash)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict("the authorization code was already used".into()));
            }
            r
        }
        Mutation::RevokeSession { hash, at } => {
            sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE hash = $2 AND revoked_at IS NULL")
                .bind(ts(*at)?)
                .bind(hash)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?
        }
        Mutation::ReserveStatusIndexes { count } => {
            let count = i64::try_from(*count).map_err(|_| unavailable("status index overflow"))?;
            let first: i64 =
                sqlx::query_scalar("UPDATE status_counter SET next = next + $1 WHERE id = 1 RETURNING next - $1")
                    .bind(count)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(unavailable)?;
            return u64::try_from(first).map_err(|_| unavailable("status index overflow"));
        }
        Mutation::InsertToken(t) => {
            token_may_be_inserted(conn, t).await?;
            sqlx::query(
            "INSERT INTO tokens (jti, client_id, subject, audience, scopes, grant_id, parent, chain, issued_at, expires_at, cnf_jkt, revoked_at, family, status_idx) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(t.jti.to_string())
        .bind(t.client_id.to_string())
        .bind(&t.subject)
        .bind(&t.audience)
        .bind(json(&t.scopes)?)
        .bind(t.grant.map(|g| g.to_string()))
        .bind(t.parent.map(|p| p.to_string()))
        .bind(json(&t.chain)?)
        .bind(ts(t.issued_at)?)
        .bind(ts(t.expires_at)?)
        .bind(&t.cnf_jkt)
        .bind(t.revoked_at.map(ts).transpose()?)
        .bind(&t.family)
        .bind(t.status_idx.map(i64::try_from).transpose().map_err(|_| unavailable("status index overflow"))?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "token"))?
        }
        Mutation::RevokeToken { jti, at } => return revoke_tree(conn, "jti = $2", *at, &jti.to_string()).await,
        Mutation::InsertGrant(g) => sqlx::query(
            "INSERT INTO grants (id, user_id, agent, resource, scopes, purpose, approved_by, status, created_at, expires_at, revoked_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(g.id.to_string())
        .bind(g.user.to_string())
        .bind(g.agent.to_string())
        .bind(&g.resource)
        .bind(json(&g.scopes)?)
        .bind(&g.purpose)
        .bind(&g.approved_by)
        .bind(g.status.as_str())
        .bind(ts(g.created_at)?)
        .bind(ts(g.expires_at)?)
        .bind(g.revoked_at.map(ts).transpose()?)
        .bind(g.last_used_at.map(ts).transpose()?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "grant"))?,
        Mutation::RevokeGrant { id, at } => sqlx::query("UPDATE grants SET status = 'revoked', revoked_at = $1 WHERE id = $2 AND status = 'active'")
            .bind(ts(*at)?)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::RevokeTokensOfGrant { grant, at } => {
            return revoke_tree(conn, "grant_id = $2 AND expires_at > $1", *at, &grant.to_string()).await;
        }
        Mutation::RevokeGrantsOfUser { user, at } => sqlx::query("UPDATE grants SET status = 'revoked', revoked_at = $1 WHERE user_id = $2 AND status = 'active'")
            .bind(ts(*at)?)
            .bind(user.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::RevokeGrantsOfAgent { agent, at } => sqlx::query("UPDATE grants SET status = 'revoked', revoked_at = $1 WHERE agent = $2 AND status = 'active'")
            .bind(ts(*at)?)
            .bind(agent.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::TouchGrant { id, at } => sqlx::query("UPDATE grants SET last_used_at = $1 WHERE id = $2")
            .bind(ts(*at)?)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::InsertApproval(a) => sqlx::query(
            "INSERT INTO approvals (id, agent, user_id, approver, resource, subject, binding, binding_message, status, decided_by, created_at, expires_at, decided_at, grant_id, polled_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(a.id.to_string())
        .bind(a.agent.to_string())
        .bind(a.user.to_string())
        .bind(a.approver.to_string())
        .bind(&a.resource)
        .bind(json(&a.subject)?)
        .bind(codec::approval_binding(a))
        .bind(&a.binding_message)
        .bind(a.status.as_str())
        .bind(&a.decided_by)
        .bind(ts(a.created_at)?)
        .bind(ts(a.expires_at)?)
        .bind(a.decided_at.map(ts).transpose()?)
        .bind(a.grant.map(|g| g.to_string()))
        .bind(a.polled_at.map(ts).transpose()?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "approval"))?,
        Mutation::DecideApproval { id, to, by, grant, at } => {
            let r = sqlx::query(
                "UPDATE approvals SET status = $1, decided_by = $2, decided_at = $3, grant_id = COALESCE($4, grant_id) \
                 WHERE id = $5 AND status = 'pending' AND expires_at > $3",
            )
            .bind(to.as_str())
            .bind(by)
            .bind(ts(*at)?)
            .bind(grant.map(|g| g.to_string()))
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "approval"))?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("approval {id} is no longer pending")));
            }
            r
        }
        Mutation::ConsumeApproval { id, at } => {
            let r = sqlx::query(
                "UPDATE approvals SET status = 'consumed' WHERE id = $1 AND status = 'approved' AND expires_at > $2",
            )
            .bind(id.to_string())
            .bind(ts(*at)?)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("approval {id} was already used")));
            }
            r
        }
        Mutation::PollApproval { id, at } => sqlx::query("UPDATE approvals SET polled_at = $1 WHERE id = $2")
            .bind(ts(*at)?)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::InsertRefresh(r) => sqlx::query(
            "INSERT INTO refresh_tokens (hash, family, grant_id, client_id, scopes, issued_at, expires_at, used_at, revoked_at, cnf_jkt) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&r.hash)
        .bind(&r.family)
        .bind(r.grant.to_string())
        .bind(r.client_id.to_string())
        .bind(json(&r.scopes)?)
        .bind(ts(r.issued_at)?)
        .bind(ts(r.expires_at)?)
        .bind(r.used_at.map(ts).transpose()?)
        .bind(r.revoked_at.map(ts).transpose()?)
        .bind(&r.cnf_jkt)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "refresh token"))?,
        Mutation::UseRefresh { hash, at } => {
            let r = sqlx::query(
                "UPDATE refresh_tokens SET used_at = $1 WHERE hash = $2 AND used_at IS NULL AND revoked_at IS NULL",
            )
            .bind(ts(*at)?)
            .bind(hash)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict("the refresh token was already used".into()));
            }
            r
        }
        Mutation::RevokeRefreshFamily { family, at } => sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL")
            .bind(ts(*at)?)
            .bind(family)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::RevokeTokensOfFamily { family, at } => {
            return revoke_tree(conn, "family = $2 AND expires_at > $1", *at, family).await;
        }
        Mutation::PurgeExpiredJtis { before } => {
            let mut n = 0;
            for table in ["assertion_jtis", "dpop_jtis"] {
                n += sqlx::query(&format!("DELETE FROM {table} WHERE expires_at < $1"))
                    .bind(ts(*before)?)
                    .execute(&mut *conn)
                    .await
                    .map_err(unavailable)?
                    .rows_affected();
            }
            return Ok(n);
        }
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
        // Sealed and inserted by the batch, which holds the chain's head.
        Mutation::AppendAudit(_) => return Err(StoreError::Unavailable("audit events are appended by the writer".into())),
    };
    Ok(done.rows_affected())
}

/// Revokes the live tokens matching `roots` (SQL over `tokens` with the
/// time as $1 and one text parameter as $2) and every token exchanged from
/// them, transitively. Two statements on purpose: the first takes the row
/// locks of the roots, waiting for any exchange that holds one (see
/// [`token_may_be_inserted`]); the second starts after that, so under READ
/// COMMITTED its snapshot includes the children such an exchange committed.
async fn revoke_tree(
    conn: &mut PgConnection,
    roots: &str,
    at: time::OffsetDateTime,
    param: &str,
) -> Result<u64, StoreError> {
    let direct = sqlx::query(&format!("UPDATE tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND {roots}"))
        .bind(ts(at)?)
        .bind(param)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?
        .rows_affected();
    let below = sqlx::query(&format!(
        "WITH RECURSIVE tree(jti) AS (SELECT jti FROM tokens WHERE parent IN (SELECT jti FROM tokens WHERE {roots}) \
         UNION SELECT t.jti FROM tokens t JOIN tree ON t.parent = tree.jti) \
         UPDATE tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND jti IN (SELECT jti FROM tree)"
    ))
    .bind(ts(at)?)
    .bind(param)
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?
    .rows_affected();
    Ok(direct + below)
}

/// A delegated token goes in only under a live parent and an active grant,
/// read `FOR SHARE`: a revocation that updated either row first makes this
/// wait and then see it revoked; one that comes later waits for this
/// transaction and then sees the new token (see [`revoke_tree`]).
async fn token_may_be_inserted(conn: &mut PgConnection, t: &TokenRecord) -> Result<(), StoreError> {
    if let Some(parent) = t.parent {
        let live: Option<bool> =
            sqlx::query_scalar("SELECT revoked_at IS NULL AND expires_at > $2 FROM tokens WHERE jti = $1 FOR SHARE")
                .bind(parent.to_string())
                .bind(ts(t.issued_at)?)
                .fetch_optional(&mut *conn)
                .await
                .map_err(unavailable)?;
        if live != Some(true) {
            return Err(StoreError::Conflict(format!("parent token {parent} is revoked or unknown")));
        }
    }
    if let Some(grant) = t.grant {
        let active: Option<bool> =
            sqlx::query_scalar("SELECT status = 'active' AND expires_at > $2 FROM grants WHERE id = $1 FOR SHARE")
                .bind(grant.to_string())
                .bind(ts(t.issued_at)?)
                .fetch_optional(&mut *conn)
                .await
                .map_err(unavailable)?;
        if active != Some(true) {
            return Err(StoreError::Conflict(format!("grant {grant} is not active")));
        }
    }
    Ok(())
}

/// The audit chain's head as the batch sees it.
#[derive(Debug, Clone)]
struct Head {
    seq: u64,
    hash: String,
}

/// Takes every waiting change and commits the lot in one transaction.
async fn write_loop(pool: PgPool, jobs: std::sync::Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut jobs = jobs.lock().await;
            let Some(first) = jobs.recv().await else { return };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        let results = apply_batch(&pool, &batch).await;
        for (job, result) in batch.drain(..).zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

type Outcome = Result<Receipt, StoreError>;

struct NeedSavepoints;

/// Applies a batch without savepoints first; an SQL error aborts a
/// PostgreSQL transaction, and a change that fails after writing must be
/// undone alone, so either replays the batch with a savepoint per change.
async fn apply_batch(pool: &PgPool, batch: &[Job]) -> Vec<Outcome> {
    let failed = |e: &dyn std::fmt::Display| batch.iter().map(|_| Err(unavailable(e))).collect();
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => return failed(&e),
    };
    match apply_in_transaction(&mut conn, batch, false).await {
        Ok(results) => results,
        Err(NeedSavepoints) => match apply_in_transaction(&mut conn, batch, true).await {
            Ok(results) => results,
            Err(NeedSavepoints) => failed(&"batch could not be applied"),
        },
    }
}

async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), StoreError> {
    sqlx::query(sql).execute(&mut *conn).await.map(|_| ()).map_err(unavailable)
}

async fn apply_in_transaction(
    conn: &mut PgConnection,
    batch: &[Job],
    savepoints: bool,
) -> Result<Vec<Outcome>, NeedSavepoints> {
    let all_fail = |e: StoreError| Ok(batch.iter().map(|_| Err(e.clone())).collect());
    // READ COMMITTED whatever the server's default: `seq` order is commit
    // order because the head row is locked, not because of snapshots. A
    // lock that cannot be had in 5 s fails the batch closed.
    if let Err(e) = exec(conn, "BEGIN ISOLATION LEVEL READ COMMITTED").await {
        return all_fail(e);
    }
    if let Err(e) = exec(conn, "SET LOCAL lock_timeout = '5s'").await {
        let _ = exec(conn, "ROLLBACK").await;
        return all_fail(e);
    }
    let mut head: Option<Head> = None;
    let mut events: Vec<Event> = Vec::new();
    // Without savepoints, events are sealed only once the batch's changes
    // are applied, so the head lock is held just for the tail.
    // (record, what the change had applied before it, the change's index,
    // the record's handle): the event's seq is its "affected" value.
    let mut deferred: Vec<(&mandate_core::AuditRecord, Applied, usize, Handle)> = Vec::new();
    let mut results: Vec<Result<Applied, StoreError>> = Vec::with_capacity(batch.len());
    for (job_index, job) in batch.iter().enumerate() {
        if savepoints && let Err(e) = exec(conn, "SAVEPOINT change").await {
            let _ = exec(conn, "ROLLBACK").await;
            return all_fail(e);
        }
        let (head_before, events_before, deferred_before) = (head.clone(), events.len(), deferred.len());
        let mut applied = Applied::for_change(&job.change);
        let mut outcome = Ok(());
        for (i, (h, m)) in job.change.iter().enumerate() {
            let done = match m {
                Mutation::AppendAudit(record) if !savepoints => {
                    deferred.push((record.as_ref(), applied.clone(), job_index, h));
                    Ok(0)
                }
                Mutation::AppendAudit(record) => append(conn, &mut head, record, &applied).await.map(|e| {
                    let seq = e.seq;
                    events.push(e);
                    seq
                }),
                other => apply(conn, other).await,
            };
            match done.and_then(|n| applied.set(h, n)) {
                Ok(()) => {}
                Err(e) => {
                    // Only a replay refused by ON CONFLICT DO NOTHING, as the
                    // change's first write, leaves the transaction usable
                    // with nothing of the change written.
                    let harmless = i == 0 && e == StoreError::Replay;
                    if !savepoints && !harmless {
                        let _ = exec(conn, "ROLLBACK").await;
                        return Err(NeedSavepoints);
                    }
                    outcome = Err(e);
                    break;
                }
            }
        }
        // With savepoints, a change's events go in with the change, so that
        // a failed insert undoes that change alone.
        if savepoints
            && outcome.is_ok()
            && let (Some(h), Some(mine)) = (&head, events.get(events_before..))
            && !mine.is_empty()
            && let Err(e) = insert_events(conn, mine, h).await
        {
            outcome = Err(e);
        }
        if savepoints {
            // A rolled-back savepoint is released too, so that subtransactions
            // do not pile up over a long batch.
            let undo = if outcome.is_err() { exec(conn, "ROLLBACK TO SAVEPOINT change").await } else { Ok(()) };
            if let Err(e) = undo.and(exec(conn, "RELEASE SAVEPOINT change").await) {
                let _ = exec(conn, "ROLLBACK").await;
                return all_fail(e);
            }
        }
        if outcome.is_err() {
            head = head_before;
            events.truncate(events_before);
            deferred.truncate(deferred_before);
        }
        results.push(outcome.map(|()| applied));
    }
    // Without savepoints, the batch's events are sealed now, under the head
    // lock, and go in with one statement; if that fails, the batch is
    // replayed change by change.
    if !savepoints && !deferred.is_empty() {
        for (record, before, job_index, h) in &deferred {
            match append(conn, &mut head, record, before).await {
                Ok(e) => {
                    if let Some(Ok(applied)) = results.get_mut(*job_index)
                        && applied.set(*h, e.seq).is_err()
                    {
                        let _ = exec(conn, "ROLLBACK").await;
                        return Err(NeedSavepoints);
                    }
                    events.push(e);
                }
                Err(_) => {
                    let _ = exec(conn, "ROLLBACK").await;
                    return Err(NeedSavepoints);
                }
            }
        }
        let sealed = match &head {
            Some(h) => insert_events(conn, &events, h).await,
            None => Err(StoreError::Unavailable("no chain head".into())),
        };
        if sealed.is_err() {
            let _ = exec(conn, "ROLLBACK").await;
            return Err(NeedSavepoints);
        }
    }
    match exec(conn, "COMMIT").await {
        Ok(()) => Ok(results.into_iter().map(|r| r.and_then(Applied::into_receipt)).collect()),
        Err(e) => {
            let _ = exec(conn, "ROLLBACK").await;
            all_fail(e)
        }
    }
}

/// Seals the next event after the chain's head, locking the head row the
/// first time a batch needs it (the lock lasts until the batch commits).
async fn append(
    conn: &mut PgConnection,
    head: &mut Option<Head>,
    record: &mandate_core::AuditRecord,
    applied: &Applied,
) -> Result<Event, StoreError> {
    let current = match head.take() {
        Some(h) => h,
        None => {
            let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *conn)
                .await
                .map_err(unavailable)?;
            let seq: i64 = get(&row, "seq")?;
            let hash: String = get(&row, "hash")?;
            // An undecodable head stops the writer: never restart the chain.
            if !mandate_audit::is_chain_hash(&hash) {
                return Err(StoreError::Corrupt("the audit chain head's hash is not a SHA-256 hex digest".into()));
            }
            Head { seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit head {seq}")))?, hash }
        }
    };
    let sealed = seal_record(record, applied, current.seq + 1, &current.hash);
    *head = Some(match &sealed {
        Ok(e) => Head { seq: e.seq, hash: e.hash.clone() },
        Err(_) => current,
    });
    sealed
}

/// Inserts a batch's events with one statement and moves the head row.
async fn insert_events(conn: &mut PgConnection, events: &[Event], head: &Head) -> Result<(), StoreError> {
    fn col(events: &[Event], f: impl Fn(&Event) -> Option<String>) -> Vec<Option<String>> {
        events.iter().map(f).collect()
    }
    let overflow = |what: &str| StoreError::Unavailable(format!("audit {what} does not fit a bigint"));
    let seqs =
        events.iter().map(|e| i64::try_from(e.seq).map_err(|_| overflow("seq"))).collect::<Result<Vec<_>, _>>()?;
    let counts = events
        .iter()
        .map(|e| e.count.map(|c| i64::try_from(c).map_err(|_| overflow("count"))).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let chains = events.iter().map(|e| json(&e.chain)).collect::<Result<Vec<_>, _>>()?;
    sqlx::query(
        "INSERT INTO audit_events (seq, time, type, decision, subject, actor, chain, client_id, action, resource, \
         scope, jti, grant_id, parent, count, reason, request_id, prev_hash, hash) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::bigint[], \
         $16::text[], $17::text[], $18::text[], $19::text[])",
    )
    .bind(seqs)
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
    .bind(events.iter().map(|e| e.hash.clone()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await
    .map_err(|e| map_write_error(e, "audit event"))?;
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(i64::try_from(head.seq).map_err(|_| overflow("head"))?)
        .bind(&head.hash)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
    row: &'r PgRow,
    col: &str,
) -> Result<T, StoreError> {
    row.try_get(col).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn user_row(r: &PgRow) -> Result<User, StoreError> {
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

fn agent_row(r: &PgRow) -> Result<Agent, StoreError> {
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
        suspended_by: get(r, "suspended_by")?,
    })
}

fn user_token_row(r: &PgRow) -> Result<UserToken, StoreError> {
    UserToken::try_from(UserTokenRow {
        id: get(r, "id")?,
        user_id: get(r, "user_id")?,
        created_at: get(r, "created_at")?,
        expires_at: get(r, "expires_at")?,
        revoked_at: get(r, "revoked_at")?,
    })
}

fn resource_row(r: &PgRow) -> Result<Resource, StoreError> {
    Resource::try_from(ResourceRow {
        id: get(r, "id")?,
        identifier: get(r, "identifier")?,
        name: get(r, "name")?,
        scopes: get(r, "scopes")?,
        jwks: get(r, "jwks")?,
        created_at: get(r, "created_at")?,
    })
}

fn token_row(r: &PgRow) -> Result<TokenRecord, StoreError> {
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
        status_idx: get(r, "status_idx")?,
        family: get(r, "family")?,
        revoked_at: get(r, "revoked_at")?,
    })
}

fn grant_row(r: &PgRow) -> Result<Grant, StoreError> {
    Grant::try_from(GrantRow {
        id: get(r, "id")?,
        user_id: get(r, "user_id")?,
        agent: get(r, "agent")?,
        resource: get(r, "resource")?,
        scopes: get(r, "scopes")?,
        purpose: get(r, "purpose")?,
        approved_by: get(r, "approved_by")?,
        status: get(r, "status")?,
        created_at: get(r, "created_at")?,
        expires_at: get(r, "expires_at")?,
        revoked_at: get(r, "revoked_at")?,
        last_used_at: get(r, "last_used_at")?,
    })
}

fn approval_row(r: &PgRow) -> Result<Approval, StoreError> {
    Approval::try_from(ApprovalRow {
        id: get(r, "id")?,
        agent: get(r, "agent")?,
        user_id: get(r, "user_id")?,
        approver: get(r, "approver")?,
        resource: get(r, "resource")?,
        subject: get(r, "subject")?,
        binding_message: get(r, "binding_message")?,
        status: get(r, "status")?,
        decided_by: get(r, "decided_by")?,
        created_at: get(r, "created_at")?,
        expires_at: get(r, "expires_at")?,
        decided_at: get(r, "decided_at")?,
        grant_id: get(r, "grant_id")?,
        polled_at: get(r, "polled_at")?,
    })
}

fn refresh_row(r: &PgRow) -> Result<RefreshRecord, StoreError> {
    RefreshRecord::try_from(RefreshRow {
        hash: get(r, "hash")?,
        family: get(r, "family")?,
        grant_id: get(r, "grant_id")?,
        client_id: get(r, "client_id")?,
        scopes: get(r, "scopes")?,
        issued_at: get(r, "issued_at")?,
        expires_at: get(r, "expires_at")?,
        used_at: get(r, "used_at")?,
        revoked_at: get(r, "revoked_at")?,
        cnf_jkt: get(r, "cnf_jkt")?,
    })
}

#[async_trait]
impl Store for PostgresStore {
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
        let n: i64 =
            sqlx::query_scalar("SELECT n FROM epoch WHERE id = 1").fetch_one(&self.pool).await.map_err(unavailable)?;
        Ok(n as u64)
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.one("SELECT value FROM settings WHERE key = $1", key, |r| get(r, "value")).await
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.one("SELECT * FROM users WHERE id = $1", &id.to_string(), user_row).await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.one("SELECT * FROM users WHERE email = $1", email, user_row).await
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
        let row = sqlx::query("SELECT version, text, created_at FROM policies ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
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
        let rows = sqlx::query(
            "SELECT * FROM grants WHERE ($1::text IS NULL OR user_id = $1) AND ($2::text IS NULL OR agent = $2) \
             AND ($3::text IS NULL OR user_id = $3 OR agent IN (SELECT id FROM agents WHERE owner = $3)) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(q.user.map(|u| u.to_string()))
        .bind(q.agent.map(|a| a.to_string()))
        .bind(q.user_or_owner.map(|u| u.to_string()))
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(grant_row).collect()
    }

    async fn approval(&self, id: ApprovalId) -> Result<Option<Approval>, StoreError> {
        self.one("SELECT * FROM approvals WHERE id = $1", &id.to_string(), approval_row).await
    }

    async fn approvals(&self, q: &ApprovalQuery) -> Result<Vec<Approval>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM approvals WHERE ($1::text IS NULL OR approver = $1) AND ($2::text IS NULL OR status = $2) \
             AND ($3::text IS NULL OR binding = $3) AND ($5::text IS NULL OR id < $5) ORDER BY id DESC LIMIT $4",
        )
        .bind(q.approver.map(|u| u.to_string()))
        .bind(q.status.map(|s| s.as_str()))
        .bind(&q.binding)
        .bind(i64::from(q.limit))
        .bind(q.before.map(|a| a.to_string()))
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
                created_at: get(&r, "created_at")?,
                expires_at: get(&r, "expires_at")?,
                used_at: get(&r, "used_at")?,
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

    async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<Event>, StoreError> {
        let (filter, values) = codec::audit_where(q, |n| format!("${n}"));
        let sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE {filter} ORDER BY seq LIMIT {}", q.limit);
        // SAFETY-FALLBACK: a cursor beyond i64 is past every seq: an empty page.
        let mut query = sqlx::query(&sql).bind(i64::try_from(q.after).unwrap_or(i64::MAX));
        for v in values {
            query = query.bind(v);
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

fn event_row(r: &PgRow) -> Result<Event, StoreError> {
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
    })
}

fn checkpoint_row(r: &PgRow) -> Result<Checkpoint, StoreError> {
    let seq: i64 = get(r, "seq")?;
    Ok(Checkpoint {
        seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("checkpoint seq {seq}")))?,
        hash: get(r, "hash")?,
        time: get(r, "time")?,
        kid: get(r, "kid")?,
        signature: get(r, "signature")?,
    })
}
