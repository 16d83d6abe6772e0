//! Settings, people (users, their API tokens and sign-in sessions), agents, resources and the policy set.

use mandate_core::store::{Mutation, PolicyVersion, StoreError, StoredPolicy};
use mandate_model::AgentId;
use mandate_model::records::{Agent, FederatedCredential, Resource, User, UserToken};
use mandate_store_sql::{
    self as codec, AgentRow, ResourceRow, UserRow, UserTokenRow, agent_kind, json, ts, user_status,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::readers::Mapped;
use crate::unavailable;
use crate::writer::exec;

/// Applies one mutation of this family. (Long by nature: one arm per
/// mutation, each one statement; splitting the match would only hide it.)
pub(crate) fn apply(conn: &Connection, m: &Mutation) -> Result<u64, StoreError> {
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
        Mutation::InsertAgent(a) => {
            let n = exec(
                conn,
                "INSERT INTO agents (id, name, owner, kind, parent, status, expires_at, description, scopes, jwks, redirect_uris, secret_hash, created_at, updated_at, suspended_by, origin, metadata_url, public_client, federated_credentials, limits) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
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
                    a.origin.as_str(),
                    a.metadata_url,
                    a.public,
                    federated_json(&a.federated_credentials)?,
                    codec::limits_json(&a.limits)?,
                ],
                "agent",
            )?;
            index_federations(conn, a.id, &a.federated_credentials)?;
            Ok(n)
        }
        Mutation::NarrowAgentScopes { id, scopes } => {
            let n = exec(
                conn,
                "UPDATE agents SET scopes = ?1 WHERE id = ?2 AND status <> 'retired'",
                params![json(scopes)?, id.to_string()],
                "agent",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("agent {id} is retired or missing")));
            }
            Ok(n)
        }
        Mutation::SetAgentLimits { id, limits, at } => {
            let n = exec(
                conn,
                "UPDATE agents SET limits = ?1, updated_at = ?2 WHERE id = ?3",
                params![codec::limits_json(limits)?, ts(*at)?, id.to_string()],
                "agent",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("agent {id}")));
            }
            Ok(n)
        }
        Mutation::SetFederatedCredentials { id, credentials, at } => {
            let n = exec(
                conn,
                "UPDATE agents SET federated_credentials = ?1, updated_at = ?2 WHERE id = ?3",
                params![federated_json(credentials)?, ts(*at)?, id.to_string()],
                "agent",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("agent {id}")));
            }
            exec(conn, "DELETE FROM agent_federations WHERE agent_id = ?1", params![id.to_string()], "agent")?;
            index_federations(conn, *id, credentials)?;
            Ok(n)
        }
        Mutation::UpdateAgentRegistration { id, name, redirect_uris, jwks, public, at } => {
            let n = exec(
                conn,
                "UPDATE agents SET name = ?1, redirect_uris = ?2, jwks = ?3, public_client = ?4, updated_at = ?5 \
                 WHERE id = ?6 AND origin IN ('metadata_document', 'dynamic')",
                params![
                    name,
                    json(redirect_uris)?,
                    jwks.as_ref().map(json).transpose()?,
                    public,
                    ts(*at)?,
                    id.to_string()
                ],
                "agent",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("agent {id} is not a self-registered client")));
            }
            Ok(n)
        }
        Mutation::SetAgentStatus { id, from, to, at, by } => {
            let level = by.map(|b| b.as_str());
            let kept = if *to == mandate_model::records::AgentStatus::Suspended { level } else { None };
            // Resuming needs the level that suspended, or a higher one:
            // checked in the same statement, so a concurrent re-suspension
            // by the admin cannot be undone by an owner's resume.
            let n = exec(
                conn,
                "UPDATE agents SET status = ?1, updated_at = ?2, suspended_by = ?5, \
                 retired_at = CASE WHEN ?1 = 'retired' THEN ?2 ELSE NULL END WHERE id = ?3 AND status = ?4 \
                 AND NOT (?4 = 'suspended' AND ?1 = 'active' AND coalesce(?6, '') = 'owner' AND coalesce(suspended_by, 'admin') = 'admin')",
                params![to.as_str(), ts(*at)?, id.to_string(), from.as_str(), kept, level],
                "agent",
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("agent {id} is no longer {}", from.as_str())));
            }
            Ok(n)
        }
        Mutation::InsertResource(r) => exec(
            conn,
            "INSERT INTO resources (id, identifier, name, scopes, jwks, created_at, gateway, exchange_to, context, authorization_details_types) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                r.id.to_string(),
                r.identifier,
                r.name,
                json(&r.scopes)?,
                r.jwks.as_ref().map(json).transpose()?,
                ts(r.created_at)?,
                r.gateway.map(|g| g.to_string()),
                json(&r.exchange_to)?,
                json(&r.context)?,
                json(&r.authorization_details_types)?
            ],
            "resource",
        ),
        Mutation::PutPolicy(p) => exec(
            conn,
            "INSERT INTO policies (version, text, created_at, author) VALUES (?1, ?2, ?3, ?4)",
            params![p.version, p.text, ts(p.created_at)?, p.author],
            "policy",
        ),
        // One writer: nothing can come between this read and the commit.
        Mutation::ExpectPolicyVersion(expected) => {
            let current: Option<String> = conn
                .prepare_cached("SELECT version FROM policies ORDER BY seq DESC LIMIT 1")
                .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
                .map_err(unavailable)?;
            if current != *expected {
                return Err(StoreError::Conflict("the policy set changed".into()));
            }
            Ok(0)
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
        Mutation::InsertUpstreamLink(l) => exec(
            conn,
            "INSERT INTO upstream_links (issuer, subject, user_id, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![l.issuer, l.subject, l.user.to_string(), ts(l.created_at)?],
            "upstream link",
        ),
        Mutation::RevokeSession { hash, at } => exec(
            conn,
            "UPDATE sessions SET revoked_at = ?1 WHERE hash = ?2 AND revoked_at IS NULL",
            params![ts(*at)?, hash],
            "session",
        ),
        other => Err(crate::writer::misrouted(other)),
    }
}

pub(crate) fn user_row(r: &Row<'_>) -> Mapped<User> {
    Ok(User::try_from(UserRow {
        id: r.get("id")?,
        name: r.get("name")?,
        email: r.get("email")?,
        groups: r.get("groups")?,
        attributes: r.get("attributes")?,
        status: r.get("status")?,
        password_hash: r.get("password_hash")?,
        created_at: r.get("created_at")?,
        scim_groups: r.get("scim_groups")?,
    }))
}

/// The rules as stored: NULL when there are none.
fn federated_json(rules: &[FederatedCredential]) -> Result<Option<String>, StoreError> {
    if rules.is_empty() { Ok(None) } else { json(&rules).map(Some) }
}

/// One index row per rule, to find the agent from a token's `iss` and `sub`.
fn index_federations(conn: &Connection, id: AgentId, rules: &[FederatedCredential]) -> Result<(), StoreError> {
    for rule in rules {
        let (subject, pattern) = rule.index_key();
        exec(
            conn,
            "INSERT INTO agent_federations (issuer, subject, pattern, agent_id) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![rule.issuer, subject, pattern, id.to_string()],
            "agent federation",
        )?;
    }
    Ok(())
}

/// An agent with its recorded last use, for the inventory's lists.
pub(crate) fn listed_agent_row(r: &Row<'_>) -> Mapped<mandate_core::store::ListedAgent> {
    let last: Option<i64> = r.get("last_used_at")?;
    Ok(agent_row(r)?.and_then(|agent| {
        Ok(mandate_core::store::ListedAgent { agent, last_used_at: mandate_store_sql::opt_ts(last)? })
    }))
}

pub(crate) fn agent_row(r: &Row<'_>) -> Mapped<Agent> {
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
        origin: r.get("origin")?,
        metadata_url: r.get("metadata_url")?,
        public_client: r.get("public_client")?,
        federated_credentials: r.get("federated_credentials")?,
        limits: r.get("limits")?,
    }))
}

pub(crate) fn user_token_row(r: &Row<'_>) -> Mapped<UserToken> {
    Ok(UserToken::try_from(UserTokenRow {
        id: r.get("id")?,
        user_id: r.get("user_id")?,
        created_at: r.get("created_at")?,
        expires_at: r.get("expires_at")?,
        revoked_at: r.get("revoked_at")?,
    }))
}

pub(crate) fn resource_row(r: &Row<'_>) -> Mapped<Resource> {
    Ok(Resource::try_from(ResourceRow {
        id: r.get("id")?,
        identifier: r.get("identifier")?,
        name: r.get("name")?,
        scopes: r.get("scopes")?,
        jwks: r.get("jwks")?,
        created_at: r.get("created_at")?,
        gateway: r.get("gateway")?,
        exchange_to: r.get("exchange_to")?,
        context: r.get("context")?,
        authorization_details_types: r.get("authorization_details_types")?,
    }))
}

pub(crate) fn policy_row(r: &Row<'_>) -> Mapped<StoredPolicy> {
    let version: String = r.get("version")?;
    let text: String = r.get("text")?;
    let created: i64 = r.get("created_at")?;
    let author: Option<String> = r.get("author")?;
    Ok(codec::from_ts(created).map(|created_at| StoredPolicy { version, text, created_at, author }))
}

/// A history entry: `seq`, `version`, `author`, `created_at`, `bytes`.
pub(crate) fn policy_version_row(r: &Row<'_>) -> Mapped<PolicyVersion> {
    let seq: i64 = r.get("seq")?;
    let version: String = r.get("version")?;
    let author: Option<String> = r.get("author")?;
    let created: i64 = r.get("created_at")?;
    let bytes: i64 = r.get("bytes")?;
    let entry = || -> Result<PolicyVersion, StoreError> {
        let number = u64::try_from(seq).map_err(|_| unavailable(format!("policy seq {seq}")))?;
        let bytes = u64::try_from(bytes).map_err(|_| unavailable(format!("policy length {bytes}")))?;
        Ok(PolicyVersion { number, version, author, created_at: codec::from_ts(created)?, bytes })
    };
    Ok(entry())
}
