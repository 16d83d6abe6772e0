//! Settings, people (users, their API tokens and sign-in sessions), agents, resources and the policy set.

use mandate_core::store::{Mutation, StoreError};
use mandate_model::AgentId;
use mandate_model::records::{Agent, FederatedCredential, Resource, User, UserToken};
use mandate_store_sql::{AgentRow, ResourceRow, UserRow, UserTokenRow, agent_kind, json, ts, user_status};
use sqlx::postgres::{PgConnection, PgRow};

use crate::writer::{map_write_error, misrouted};
use crate::{get, unavailable};

/// Applies one mutation of this family. (Long by nature: one arm per
/// mutation, each one statement; splitting the match would only hide it.)
pub(crate) async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
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
        Mutation::InsertAgent(a) => {
            let r = sqlx::query(
            "INSERT INTO agents (id, name, owner, kind, parent, status, expires_at, description, scopes, jwks, redirect_uris, secret_hash, created_at, updated_at, suspended_by, origin, metadata_url, public_client, federated_credentials, limits) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
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
        .bind(a.origin.as_str())
        .bind(&a.metadata_url)
        .bind(a.public)
        .bind(federated_json(&a.federated_credentials)?)
        .bind(mandate_store_sql::limits_json(&a.limits)?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "agent"))?;
            index_federations(conn, a.id, &a.federated_credentials).await?;
            r
        }
        Mutation::NarrowAgentScopes { id, scopes } => {
            let r = sqlx::query("UPDATE agents SET scopes = $1 WHERE id = $2 AND status <> 'retired'")
                .bind(json(scopes)?)
                .bind(id.to_string())
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("agent {id} is retired or missing")));
            }
            r
        }
        Mutation::SetAgentLimits { id, limits, at } => {
            let r = sqlx::query("UPDATE agents SET limits = $1, updated_at = $2 WHERE id = $3")
                .bind(mandate_store_sql::limits_json(limits)?)
                .bind(ts(*at)?)
                .bind(id.to_string())
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("agent {id}")));
            }
            r
        }
        Mutation::SetFederatedCredentials { id, credentials, at } => {
            let r = sqlx::query("UPDATE agents SET federated_credentials = $1, updated_at = $2 WHERE id = $3")
                .bind(federated_json(credentials)?)
                .bind(ts(*at)?)
                .bind(id.to_string())
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("agent {id}")));
            }
            sqlx::query("DELETE FROM agent_federations WHERE agent_id = $1")
                .bind(id.to_string())
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            index_federations(conn, *id, credentials).await?;
            r
        }
        Mutation::UpdateAgentRegistration { id, name, redirect_uris, jwks, public, at } => {
            let r = sqlx::query(
                "UPDATE agents SET name = $1, redirect_uris = $2, jwks = $3, public_client = $4, updated_at = $5 \
                 WHERE id = $6 AND origin IN ('metadata_document', 'dynamic')",
            )
            .bind(name)
            .bind(json(redirect_uris)?)
            .bind(jwks.as_ref().map(json).transpose()?)
            .bind(*public)
            .bind(ts(*at)?)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("agent {id} is not a self-registered client")));
            }
            r
        }
        Mutation::SetAgentStatus { id, from, to, at, by } => {
            let level = by.map(|b| b.as_str());
            let kept = if *to == mandate_model::records::AgentStatus::Suspended { level } else { None };
            // Resuming needs the level that suspended, or a higher one:
            // checked in the same statement, so a concurrent re-suspension
            // by the admin cannot be undone by an owner's resume.
            let r = sqlx::query(
                "UPDATE agents SET status = $1, updated_at = $2, suspended_by = $5, \
                 retired_at = CASE WHEN $1 = 'retired' THEN $2 ELSE NULL END WHERE id = $3 AND status = $4 \
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
        Mutation::InsertResource(r) => sqlx::query("INSERT INTO resources (id, identifier, name, scopes, jwks, created_at, gateway, exchange_to, context, authorization_details_types) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(r.id.to_string())
            .bind(&r.identifier)
            .bind(&r.name)
            .bind(json(&r.scopes)?)
            .bind(r.jwks.as_ref().map(json).transpose()?)
            .bind(ts(r.created_at)?)
            .bind(r.gateway.map(|g| g.to_string()))
            .bind(json(&r.exchange_to)?)
            .bind(json(&r.context)?)
            .bind(json(&r.authorization_details_types)?)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_write_error(e, "resource"))?,
        Mutation::PutPolicy(p) => {
            sqlx::query("INSERT INTO policies (version, text, created_at, author) VALUES ($1, $2, $3, $4)")
                .bind(&p.version)
                .bind(&p.text)
                .bind(ts(p.created_at)?)
                .bind(&p.author)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?
        }
        Mutation::ExpectPolicyVersion(expected) => {
            // Read committed: hold other policy writers off until this
            // change commits, so that what is read here stays current.
            sqlx::query("LOCK TABLE policies IN EXCLUSIVE MODE").execute(&mut *conn).await.map_err(unavailable)?;
            let current: Option<String> = sqlx::query_scalar("SELECT version FROM policies ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await
                .map_err(unavailable)?;
            if current != *expected {
                return Err(StoreError::Conflict("the policy set changed".into()));
            }
            return Ok(0);
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
        Mutation::InsertUpstreamLink(l) => {
            sqlx::query("INSERT INTO upstream_links (issuer, subject, user_id, created_at) VALUES ($1, $2, $3, $4)")
                .bind(&l.issuer)
                .bind(&l.subject)
                .bind(l.user.to_string())
                .bind(ts(l.created_at)?)
                .execute(&mut *conn)
                .await
                .map_err(|e| map_write_error(e, "upstream link"))?
        }
        Mutation::RevokeSession { hash, at } => {
            sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE hash = $2 AND revoked_at IS NULL")
                .bind(ts(*at)?)
                .bind(hash)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?
        }
        other => return Err(misrouted(other)),
    };
    Ok(done.rows_affected())
}

pub(crate) fn user_row(r: &PgRow) -> Result<User, StoreError> {
    User::try_from(UserRow {
        id: get(r, "id")?,
        name: get(r, "name")?,
        email: get(r, "email")?,
        groups: get(r, "groups")?,
        attributes: get(r, "attributes")?,
        status: get(r, "status")?,
        password_hash: get(r, "password_hash")?,
        created_at: get(r, "created_at")?,
        scim_groups: get(r, "scim_groups")?,
    })
}

/// The rules as stored: NULL when there are none.
fn federated_json(rules: &[FederatedCredential]) -> Result<Option<String>, StoreError> {
    if rules.is_empty() { Ok(None) } else { json(&rules).map(Some) }
}

/// One index row per rule, to find the agent from a token's `iss` and `sub`.
async fn index_federations(
    conn: &mut PgConnection,
    id: AgentId,
    rules: &[FederatedCredential],
) -> Result<(), StoreError> {
    for rule in rules {
        let (subject, pattern) = rule.index_key();
        sqlx::query(
            "INSERT INTO agent_federations (issuer, subject, pattern, agent_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&rule.issuer)
        .bind(subject)
        .bind(pattern)
        .bind(id.to_string())
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "agent federation"))?;
    }
    Ok(())
}

pub(crate) fn agent_row(r: &PgRow) -> Result<Agent, StoreError> {
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
        origin: get(r, "origin")?,
        metadata_url: get(r, "metadata_url")?,
        public_client: get(r, "public_client")?,
        federated_credentials: get(r, "federated_credentials")?,
        limits: get(r, "limits")?,
    })
}

pub(crate) fn user_token_row(r: &PgRow) -> Result<UserToken, StoreError> {
    UserToken::try_from(UserTokenRow {
        id: get(r, "id")?,
        user_id: get(r, "user_id")?,
        created_at: get(r, "created_at")?,
        expires_at: get(r, "expires_at")?,
        revoked_at: get(r, "revoked_at")?,
    })
}

pub(crate) fn resource_row(r: &PgRow) -> Result<Resource, StoreError> {
    Resource::try_from(ResourceRow {
        id: get(r, "id")?,
        identifier: get(r, "identifier")?,
        name: get(r, "name")?,
        scopes: get(r, "scopes")?,
        jwks: get(r, "jwks")?,
        created_at: get(r, "created_at")?,
        gateway: get(r, "gateway")?,
        exchange_to: get(r, "exchange_to")?,
        context: get(r, "context")?,
        authorization_details_types: get(r, "authorization_details_types")?,
    })
}
