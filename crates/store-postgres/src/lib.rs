//! The [`Store`] port on PostgreSQL, for deployments where several
//! stateless nodes share one database.
//!
//! Each change is one transaction. PostgreSQL already flushes the WAL of
//! concurrent commits together (group commit), so many connections
//! committing at once share an fsync. Migrations run under sqlx's advisory
//! lock, so nodes may start together.

use std::time::Duration;

use async_trait::async_trait;
use mandate_core::store::codec::{self, AgentRow, ResourceRow, TokenRow, UserRow, agent_kind, json, ts, user_status};
use mandate_core::store::{Change, Mutation, Store, StoreError, StoredKey, StoredPolicy};
use mandate_model::records::{Agent, Resource, TokenRecord, User};
use mandate_model::{AgentId, Jti, ResourceId, UserId};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Row};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// PostgreSQL store over a connection pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
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
        let pool = PgPoolOptions::new()
            .max_connections(32)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.disable_statement_logging())
            .await
            .map_err(unavailable)?;
        MIGRATOR.run(&pool).await.map_err(unavailable)?;
        Ok(Self { pool })
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
        .bind(json(&u.groups))
        .bind(json(&u.attributes))
        .bind(user_status(u.status))
        .bind(&u.password_hash)
        .bind(ts(u.created_at))
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "user"))?,
        Mutation::UpdateUser(u) => {
            let r = sqlx::query("UPDATE users SET groups = $1, attributes = $2, status = $3 WHERE id = $4")
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
        Mutation::InsertUserToken { hash, user, created_at } => sqlx::query("INSERT INTO user_tokens (hash, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(hash)
            .bind(user.to_string())
            .bind(ts(*created_at))
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "user token"))?,
        Mutation::InsertAgent(a) => sqlx::query(
            "INSERT INTO agents (id, name, owner, kind, parent, status, expires_at, description, scopes, jwks, redirect_uris, secret_hash, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
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
            let r = sqlx::query("UPDATE agents SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4")
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
        Mutation::RevokeTokensOfAgent { agent, at } => sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE client_id = $2 AND revoked_at IS NULL")
            .bind(ts(*at))
            .bind(agent.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::RevokeTokensOfSubject { subject, at } => sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE subject = $2 AND revoked_at IS NULL")
            .bind(ts(*at))
            .bind(subject)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::RevokeTokensOfOwnedAgents { owner, at } => sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND client_id IN (SELECT id FROM agents WHERE owner = $2)",
        )
        .bind(ts(*at))
        .bind(owner.to_string())
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?,
        Mutation::RetireExpiredAgents { at } => {
            sqlx::query(
                "UPDATE tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND client_id IN \
                 (SELECT id FROM agents WHERE kind = 'ephemeral' AND status <> 'retired' AND expires_at <= $1)",
            )
            .bind(ts(*at))
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            sqlx::query("UPDATE agents SET status = 'retired', updated_at = $1 WHERE kind = 'ephemeral' AND status <> 'retired' AND expires_at <= $1")
                .bind(ts(*at))
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?
        }
        Mutation::InsertResource(r) => sqlx::query("INSERT INTO resources (id, identifier, name, scopes, jwks, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(r.id.to_string())
            .bind(&r.identifier)
            .bind(&r.name)
            .bind(json(&r.scopes))
            .bind(r.jwks.as_ref().map(json))
            .bind(ts(r.created_at))
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "resource"))?,
        Mutation::PutPolicy(p) => sqlx::query("INSERT INTO policies (version, text, created_at) VALUES ($1, $2, $3)")
            .bind(&p.version)
            .bind(&p.text)
            .bind(ts(p.created_at))
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::InsertSigningKey(k) => sqlx::query("INSERT INTO signing_keys (kid, alg, wrapped_private, created_at, retired_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&k.kid)
            .bind(&k.alg)
            .bind(&k.wrapped_private)
            .bind(ts(k.created_at))
            .bind(k.retired_at.map(ts))
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "signing key"))?,
        Mutation::RetireSigningKeys { keep, at } => sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL AND kid <> $2")
            .bind(ts(*at))
            .bind(keep)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::ConsumeAssertionJti { client, jti, expires_at } => {
            let r = sqlx::query("INSERT INTO assertion_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
        Mutation::RevokeToken { jti, at } => sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE jti = $2 AND revoked_at IS NULL")
            .bind(ts(*at))
            .bind(jti.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        Mutation::PurgeExpiredJtis { before } => sqlx::query("DELETE FROM assertion_jtis WHERE expires_at < $1")
            .bind(ts(*before))
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
    };
    Ok(done.rows_affected())
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
        revoked_at: get(r, "revoked_at")?,
    })
}

#[async_trait]
impl Store for PostgresStore {
    async fn commit(&self, change: Change) -> Result<Vec<u64>, StoreError> {
        if change.0.is_empty() {
            return Ok(vec![]);
        }
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let mut affected = Vec::with_capacity(change.0.len());
        for m in &change.0 {
            // On error the transaction is dropped, which rolls it back.
            affected.push(apply(&mut tx, m).await?);
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(affected)
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

    async fn user_by_token_hash(&self, hash: &str) -> Result<Option<UserId>, StoreError> {
        self.one("SELECT user_id FROM user_tokens WHERE hash = $1", hash, |r| {
            codec::parse(&get::<String>(r, "user_id")?)
        })
        .await
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
                    wrapped_private: get(r, "wrapped_private")?,
                    created_at: codec::from_ts(get(r, "created_at")?)?,
                    retired_at: codec::opt_ts(get(r, "retired_at")?)?,
                })
            })
            .collect()
    }

    async fn token(&self, jti: Jti) -> Result<Option<TokenRecord>, StoreError> {
        self.one("SELECT * FROM tokens WHERE jti = $1", &jti.to_string(), token_row).await
    }
}
