//! Records the cases build, and the small helpers they share.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use mandate_audit::Event;
use mandate_core::TrailReport;
use mandate_core::audit::{AuditQuery, AuditRecord, verify_trail};
use mandate_core::store::{Change, Mutation, Store, StoreError};
use mandate_model::records::{
    Agent, AgentKind, AgentStatus, ClientId, Grant, GrantStatus, Resource, TokenRecord, User, UserStatus,
};
use mandate_model::{AgentId, GrantId, Jti, ResourceId, ScopeSet, UserId};
use time::{Duration, OffsetDateTime};
use ulid::Ulid;

static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A fresh ULID: increasing within a run, random below.
pub(crate) fn ulid() -> Ulid {
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut r = [0u8; 16];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut r).ok();
    Ulid::from_parts(1_700_000_000_000 + n, u128::from_le_bytes(r))
}

/// A fixed instant with nanoseconds, to catch lossy time storage.
pub fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_123_456_789).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub fn user(email: &str) -> User {
    User {
        id: UserId::from_ulid(ulid()),
        name: "Ada".into(),
        email: email.into(),
        groups: vec!["eng".into(), "ops".into()],
        attributes: BTreeMap::from([("dept".into(), "r&d".into())]),
        status: UserStatus::Active,
        created_at: t0(),
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        scim_groups: Vec::new(),
    }
}

pub fn agent(owner: UserId, parent: Option<AgentId>) -> Agent {
    Agent {
        id: AgentId::from_ulid(ulid()),
        name: "Agent".into(),
        owner,
        kind: if parent.is_some() { AgentKind::Ephemeral } else { AgentKind::Persistent },
        parent,
        status: AgentStatus::Active,
        expires_at: parent.map(|_| t0() + Duration::hours(1)),
        description: Some("does things".into()),
        scopes: Some(ScopeSet::parse("read write").unwrap_or_default()),
        jwks: Some(
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}),
        ),
        redirect_uris: vec!["https://app.example/cb".into()],
        created_at: t0(),
        secret_hash: None,
        suspended_by: None,
        origin: if parent.is_some() {
            mandate_model::records::AgentOrigin::Spawned
        } else {
            mandate_model::records::AgentOrigin::Admin
        },
        metadata_url: None,
        public: false,
        federated_credentials: Vec::new(),
        limits: Default::default(),
    }
}

pub fn resource(identifier: &str) -> Resource {
    Resource {
        id: ResourceId::from_ulid(ulid()),
        identifier: identifier.into(),
        name: "API".into(),
        scopes: BTreeMap::from([("read".into(), vec![]), ("mail".into(), vec!["send".into(), "list".into()])]),
        jwks: None,
        created_at: t0(),
        gateway: None,
        exchange_to: vec!["https://upstream.example/api".into()],
        context: BTreeMap::from([("amount".into(), mandate_model::records::ContextType::Long)]),
        authorization_details_types: BTreeMap::from([(
            "payment_initiation".into(),
            mandate_model::details::DetailType {
                schema: serde_json::json!({"type": "object", "properties": {"amount": {"type": "number"}}}),
                bounds: BTreeMap::from([("amount".into(), mandate_model::details::Bound::Max)]),
            },
        )]),
    }
}

pub fn token(agent: AgentId, subject: &str) -> TokenRecord {
    TokenRecord {
        jti: Jti::from_ulid(ulid()),
        client_id: ClientId::Agent(agent),
        subject: subject.into(),
        audience: "https://api.example".into(),
        scopes: ScopeSet::parse("read").unwrap_or_default(),
        grant: None,
        parent: None,
        chain: vec![agent],
        issued_at: t0(),
        expires_at: t0() + Duration::minutes(5),
        cnf_jkt: None,
        status_idx: None,
        family: None,
        revoked_at: None,
    }
}

pub fn grant(user: UserId, agent: AgentId) -> Grant {
    Grant {
        id: GrantId::from_ulid(ulid()),
        user,
        agent,
        resource: "https://api.example".into(),
        scopes: ScopeSet::parse("read mail").unwrap_or_default(),
        purpose: Some("plan the offsite".into()),
        approved_by: "policy".into(),
        status: GrantStatus::Active,
        created_at: t0(),
        expires_at: t0() + Duration::hours(8),
        revoked_at: None,
        last_used_at: None,
        may_act: None,
        authorization_details: mandate_model::details::AuthorizationDetails::parse(
            r#"[{"type":"payment_initiation","amount":120,"currency":"EUR","creditor":"ACME"}]"#,
        )
        .unwrap_or_default(),
        reapproved_at: None,
        reapprovals: 0,
        lapsed_at: None,
    }
}

/// A token exchanged from `parent` by `agent`.
pub fn child_of(parent: &TokenRecord, agent: AgentId) -> TokenRecord {
    let mut t = token(agent, &parent.subject);
    t.parent = Some(parent.jti);
    t.grant = parent.grant;
    t.chain = parent.chain.iter().copied().chain([agent]).collect();
    t.expires_at = parent.expires_at;
    t
}

/// An unsealed event of `kind` by `actor`.
pub fn event(kind: &str, actor: &str) -> Event {
    let mut e = Event::new(kind, "2026-11-23T10:00:00.000000Z");
    e.decision = Some("allow".into());
    e.actor = Some(actor.into());
    e.chain = vec![actor.into()];
    e
}

pub(crate) fn append(e: Event) -> Mutation {
    AuditRecord::new(e).mutation()
}

/// Commits `m` alone; what it affected.
pub(crate) async fn one(store: &Arc<dyn Store>, m: Mutation) -> Result<u64, StoreError> {
    let mut change = Change::new();
    let h = change.push(m);
    store.commit(change).await?.affected(h)
}

/// How many events the trail holds, once it verifies.
pub(crate) async fn intact(s: &Arc<dyn Store>) -> Result<u64> {
    match verify_trail(s.as_ref(), &[], None).await? {
        TrailReport::Intact(v) => Ok(v.events),
        TrailReport::Broken(t) => anyhow::bail!("the trail does not verify: {t}"),
    }
}

pub(crate) async fn all_events(s: &Arc<dyn Store>) -> Result<Vec<Event>> {
    Ok(s.audit_events(&AuditQuery::page(0)).await?)
}

/// A user, two agents of theirs (the second an ephemeral child of the
/// first) and a grant to the first.
pub(crate) async fn people(s: &Arc<dyn Store>, email: &str) -> Result<(User, Agent, Agent, Grant)> {
    let u = user(email);
    one(s, Mutation::InsertUser(u.clone())).await?;
    let a = agent(u.id, None);
    let b = agent(u.id, Some(a.id));
    one(s, Mutation::InsertAgent(a.clone())).await?;
    one(s, Mutation::InsertAgent(b.clone())).await?;
    let g = grant(u.id, a.id);
    one(s, Mutation::InsertGrant(g.clone())).await?;
    Ok((u, a, b, g))
}

/// Whether the token is stored and unrevoked.
pub(crate) async fn live(s: &Arc<dyn Store>, t: Jti) -> Result<bool> {
    Ok(s.token(t).await?.is_some_and(|t| t.revoked_at.is_none()))
}

/// A refresh token of family `fam-r` under `g`, held by `agent`.
pub(crate) fn refresh(hash: &str, g: &Grant, agent: AgentId) -> mandate_model::records::RefreshRecord {
    mandate_model::records::RefreshRecord {
        hash: hash.into(),
        family: "fam-r".into(),
        grant: g.id,
        client_id: agent,
        scopes: g.scopes.clone(),
        issued_at: t0(),
        expires_at: g.expires_at,
        used_at: None,
        revoked_at: None,
        cnf_jkt: Some("bound-jkt".into()),
    }
}

/// An authorization code for `u`'s grant `g` to `a`, unused.
pub(crate) fn auth_code(hash: &str, u: &User, a: &Agent, g: &Grant) -> mandate_model::records::AuthCodeRecord {
    mandate_model::records::AuthCodeRecord {
        hash: hash.into(),
        agent: a.id,
        user: u.id,
        grant: g.id,
        redirect_uri: "https://app.example/cb".into(),
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        dpop_jkt: Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".into()),
        offline: false,
        created_at: t0(),
        expires_at: t0() + Duration::seconds(60),
        used_at: None,
    }
}

/// A pending CIBA-style approval of `g`'s scopes, asked by `a` of `u`.
pub(crate) fn pending_grant_approval(u: &User, a: &Agent, g: &Grant) -> mandate_model::records::Approval {
    use mandate_model::records::{Approval, ApprovalStatus, ApprovalSubject};
    Approval {
        id: mandate_model::ApprovalId::from_ulid(ulid()),
        agent: a.id,
        user: u.id,
        approver: u.id,
        resource: g.resource.clone(),
        subject: ApprovalSubject::Grant {
            scopes: g.scopes.clone(),
            requested_expiry: 600,
            may_act: None,
            authorization_details: g.authorization_details.clone(),
        },
        binding_message: None,
        status: ApprovalStatus::Pending,
        decided_by: None,
        created_at: t0(),
        expires_at: t0() + Duration::minutes(10),
        decided_at: None,
        grant: None,
        polled_at: None,
        group: None,
        required: 1,
        approved_by: Vec::new(),
    }
}
