//! The store conformance suite. Every store runs the same cases; a store
//! passes when each case does.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_audit::{Checkpoint, Event};
use mandate_core::TrailReport;
use mandate_core::audit::{AuditQuery, AuditRecord, verify_trail};
use mandate_core::store::{
    ApprovalQuery, Change, GrantQuery, KeyUse, Mutation, Store, StoreError, StoredKey, StoredPolicy,
};
use mandate_model::records::{
    Agent, AgentKind, AgentStatus, Approval, ApprovalStatus, ApprovalSubject, AuthCodeRecord, ClientId, Grant,
    GrantStatus, RefreshRecord, Resource, SessionRecord, TokenRecord, User, UserStatus,
};
use mandate_model::{AgentId, ApprovalId, GrantId, Jti, ResourceId, ScopeSet, UserId};
use time::{Duration, OffsetDateTime};
use ulid::Ulid;

type Case = fn(Arc<dyn Store>) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), |s| Box::pin($name(s)))),*]
    };
}

/// Every case, by name.
pub const CASES: &[(&str, Case)] = cases![
    settings_are_set_once,
    users_round_trip_and_stay_unique,
    agents_round_trip_and_change_status_conditionally,
    resources_round_trip_and_stay_unique,
    policies_keep_every_version,
    signing_keys_rotate,
    tokens_round_trip_and_revoke,
    replay_store_burns_each_jti_once,
    a_failed_change_writes_nothing,
    concurrent_replays_admit_one,
    owners_and_expiry_revoke_agent_tokens,
    audit_events_chain_in_commit_order,
    an_audit_event_lands_with_its_change_or_not_at_all,
    audit_events_count_what_their_change_reached,
    a_count_of_a_later_mutation_fails_its_change,
    concurrent_appends_form_one_chain,
    checkpoints_are_kept_once_per_seq,
    audit_queries_filter_and_page,
    grants_revoke_once_and_list_by_person,
    approvals_are_decided_and_used_once,
    delegated_tokens_need_a_live_parent_and_grant,
    revocation_reaches_every_descendant,
    refresh_rotation_admits_one_use,
    dpop_proofs_are_single_use,
    status_indexes_never_repeat,
    revoked_tokens_show_in_their_status_list,
    sessions_round_trip_and_end,
    an_authorization_code_is_used_once,
    agents_are_listed_by_owner,
    user_tokens_expire_and_are_revoked_once,
    pending_requests_are_counted_and_approvals_paged,
    revoking_a_parent_during_its_exchange_never_leaves_a_live_child,
    appends_report_their_seq,
];

/// Runs every case on a fresh store from `factory`.
pub async fn run_all<F, Fut>(factory: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Arc<dyn Store>>>,
{
    let mut failures = Vec::new();
    for (name, case) in CASES {
        let store = factory().await?;
        if let Err(e) = case(store).await {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    ensure!(failures.is_empty(), "store conformance failures:\n{}", failures.join("\n"));
    Ok(())
}

static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn ulid() -> Ulid {
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

async fn one(store: &Arc<dyn Store>, m: Mutation) -> Result<u64, StoreError> {
    let mut change = Change::new();
    let h = change.push(m);
    store.commit(change).await?.affected(h)
}

async fn settings_are_set_once(s: Arc<dyn Store>) -> Result<()> {
    ensure!(s.setting("k").await?.is_none());
    ensure!(one(&s, Mutation::PutSettingIfAbsent { key: "k".into(), value: "v1".into() }).await? == 1);
    ensure!(one(&s, Mutation::PutSettingIfAbsent { key: "k".into(), value: "v2".into() }).await? == 0);
    ensure!(s.setting("k").await?.as_deref() == Some("v1"));
    Ok(())
}

async fn users_round_trip_and_stay_unique(s: Arc<dyn Store>) -> Result<()> {
    let u = user("ada@example.com");
    one(&s, Mutation::InsertUser(u.clone())).await?;
    ensure!(s.user(u.id).await? == Some(u.clone()), "user did not round-trip");
    ensure!(s.user_by_email("ada@example.com").await?.map(|x| x.id) == Some(u.id));
    let mut twin = user("ada@example.com");
    twin.name = "Twin".into();
    ensure!(
        matches!(one(&s, Mutation::InsertUser(twin)).await, Err(StoreError::Conflict(_))),
        "duplicate email accepted"
    );
    let mut changed = u.clone();
    changed.groups = vec!["admins".into()];
    changed.status = UserStatus::Disabled;
    one(&s, Mutation::UpdateUser(changed.clone())).await?;
    ensure!(s.user(u.id).await? == Some(changed));
    ensure!(s.user(UserId::from_ulid(ulid())).await?.is_none());
    Ok(())
}

/// A person's API tokens: found by hash, listed newest first, revoked once
/// (SECURITY row 45's neighbour: tokens that expire and can be revoked).
async fn user_tokens_expire_and_are_revoked_once(s: Arc<dyn Store>) -> Result<()> {
    let u = user("ada@example.com");
    let other = user("bob@example.com");
    one(&s, Mutation::InsertUser(u.clone())).await?;
    one(&s, Mutation::InsertUser(other.clone())).await?;
    let token = |n: i64| mandate_model::records::UserToken {
        id: mandate_model::UserTokenId::from_ulid(ulid()),
        user: u.id,
        created_at: t0() + Duration::seconds(n),
        expires_at: t0() + Duration::days(30),
        revoked_at: None,
    };
    let (a, b) = (token(0), token(1));
    one(&s, Mutation::InsertUserToken { token: a.clone(), hash: "h1".into() }).await?;
    one(&s, Mutation::InsertUserToken { token: b.clone(), hash: "h2".into() }).await?;
    ensure!(s.user_token_by_hash("h1").await? == Some(a.clone()), "token did not round-trip");
    ensure!(s.user_token_by_hash("h3").await?.is_none());
    ensure!(s.user_tokens(u.id).await? == vec![b.clone(), a.clone()], "not newest first");
    ensure!(s.user_tokens(other.id).await?.is_empty());
    let dup = mandate_model::records::UserToken { id: mandate_model::UserTokenId::from_ulid(ulid()), ..a.clone() };
    ensure!(
        matches!(
            one(&s, Mutation::InsertUserToken { token: dup, hash: "h1".into() }).await,
            Err(StoreError::Conflict(_))
        ),
        "a duplicate hash was accepted"
    );
    // Only its owner's token is revoked, once.
    ensure!(one(&s, Mutation::RevokeUserToken { id: a.id, user: other.id, at: t0() }).await? == 0);
    ensure!(one(&s, Mutation::RevokeUserToken { id: a.id, user: u.id, at: t0() }).await? == 1);
    ensure!(one(&s, Mutation::RevokeUserToken { id: a.id, user: u.id, at: t0() }).await? == 0);
    ensure!(s.user_token_by_hash("h1").await?.and_then(|t| t.revoked_at) == Some(t0()));
    ensure!(s.user_token_by_hash("h2").await?.and_then(|t| t.revoked_at).is_none());
    Ok(())
}

async fn agents_round_trip_and_change_status_conditionally(s: Arc<dyn Store>) -> Result<()> {
    let u = user("owner@example.com");
    one(&s, Mutation::InsertUser(u.clone())).await?;
    let parent = agent(u.id, None);
    let child = agent(u.id, Some(parent.id));
    one(&s, Mutation::InsertAgent(parent.clone())).await?;
    one(&s, Mutation::InsertAgent(child.clone())).await?;
    ensure!(s.agent(parent.id).await? == Some(parent.clone()), "agent did not round-trip");
    ensure!(s.agent(child.id).await? == Some(child.clone()), "ephemeral agent did not round-trip");
    ensure!(s.agent_children(parent.id).await?.iter().map(|a| a.id).collect::<Vec<_>>() == vec![child.id]);
    let orphan = agent(UserId::from_ulid(ulid()), None);
    ensure!(one(&s, Mutation::InsertAgent(orphan)).await.is_err(), "agent with a missing owner accepted");
    let at = t0();
    let admin = Some(mandate_model::records::SuspendedBy::Admin);
    one(
        &s,
        Mutation::SetAgentStatus {
            id: parent.id,
            from: AgentStatus::Active,
            to: AgentStatus::Suspended,
            at,
            by: admin,
        },
    )
    .await?;
    let stale = one(
        &s,
        Mutation::SetAgentStatus { id: parent.id, from: AgentStatus::Active, to: AgentStatus::Retired, at, by: None },
    )
    .await;
    ensure!(matches!(stale, Err(StoreError::Conflict(_))), "status change from a stale status accepted");
    let suspended = s.agent(parent.id).await?;
    ensure!(suspended.as_ref().map(|a| (a.status, a.suspended_by)) == Some((AgentStatus::Suspended, admin)));
    // An owner's resume of the admin's suspension fails in the store
    // itself (so a race with the admin's re-suspension cannot undo it).
    let owner = Some(mandate_model::records::SuspendedBy::Owner);
    let by_owner = one(
        &s,
        Mutation::SetAgentStatus {
            id: parent.id,
            from: AgentStatus::Suspended,
            to: AgentStatus::Active,
            at,
            by: owner,
        },
    )
    .await;
    ensure!(matches!(by_owner, Err(StoreError::Conflict(_))), "the owner resumed the admin's suspension");
    // Who suspended it is forgotten once it is active again.
    one(
        &s,
        Mutation::SetAgentStatus {
            id: parent.id,
            from: AgentStatus::Suspended,
            to: AgentStatus::Active,
            at,
            by: admin,
        },
    )
    .await?;
    ensure!(s.agent(parent.id).await?.map(|a| (a.status, a.suspended_by)) == Some((AgentStatus::Active, None)));
    Ok(())
}

async fn resources_round_trip_and_stay_unique(s: Arc<dyn Store>) -> Result<()> {
    let r = resource("https://api.example");
    one(&s, Mutation::InsertResource(r.clone())).await?;
    ensure!(s.resource(r.id).await? == Some(r.clone()));
    ensure!(s.resource_by_identifier("https://api.example").await? == Some(r.clone()));
    ensure!(matches!(
        one(&s, Mutation::InsertResource(resource("https://api.example"))).await,
        Err(StoreError::Conflict(_))
    ));
    one(&s, Mutation::InsertResource(resource("https://b.example"))).await?;
    ensure!(s.resources().await?.len() == 2);
    Ok(())
}

async fn policies_keep_every_version(s: Arc<dyn Store>) -> Result<()> {
    ensure!(s.current_policy().await?.is_none());
    for (i, text) in ["permit(principal, action, resource);", "forbid(principal, action, resource);"].iter().enumerate()
    {
        let p = StoredPolicy {
            version: format!("v{i}"),
            text: (*text).into(),
            created_at: t0() + Duration::seconds(i as i64),
        };
        one(&s, Mutation::PutPolicy(p.clone())).await?;
        ensure!(s.current_policy().await? == Some(p));
    }
    Ok(())
}

async fn signing_keys_rotate(s: Arc<dyn Store>) -> Result<()> {
    let key = |kid: &str, alg: &str, purpose: KeyUse, at: OffsetDateTime| StoredKey {
        kid: kid.into(),
        alg: alg.into(),
        purpose,
        wrapped_private: vec![1, 2, 3, 0, 255],
        public_jwk: Some(format!("{{\"kid\":\"{kid}\"}}")),
        created_at: at,
        retired_at: None,
    };
    let k1 = key("k1", "EdDSA", KeyUse::Token, t0());
    let k2 = key("k2", "ES256", KeyUse::Token, t0() + Duration::seconds(1));
    let audit = key("a1", "EdDSA", KeyUse::Audit, t0());
    one(&s, Mutation::InsertSigningKey(k1.clone())).await?;
    one(&s, Mutation::InsertSigningKey(audit.clone())).await?;
    s.commit(Change::new().with(Mutation::InsertSigningKey(k2.clone())).with(Mutation::RetireSigningKeys {
        purpose: KeyUse::Token,
        keep: "k2".into(),
        at: t0() + Duration::seconds(2),
    }))
    .await?;
    let keys = s.signing_keys().await?;
    ensure!(keys.len() == 3);
    ensure!(keys.iter().find(|k| k.kid == "a1") == Some(&audit), "a token rotation touched the audit key");
    let k1_now = keys.iter().find(|k| k.kid == "k1").cloned();
    ensure!(k1_now.as_ref().and_then(|k| k.retired_at) == Some(t0() + Duration::seconds(2)), "old key not retired");
    ensure!(keys.iter().find(|k| k.kid == "k2") == Some(&k2), "new key changed");
    ensure!(one(&s, Mutation::InsertSigningKey(k1)).await.is_err(), "duplicate kid accepted");
    Ok(())
}

async fn tokens_round_trip_and_revoke(s: Arc<dyn Store>) -> Result<()> {
    let u = user("t@example.com");
    one(&s, Mutation::InsertUser(u.clone())).await?;
    let a = agent(u.id, None);
    one(&s, Mutation::InsertAgent(a.clone())).await?;
    let t1 = token(a.id, &a.id.to_string());
    let t2 = token(a.id, &u.id.to_string());
    let t3 = token(a.id, &u.id.to_string());
    for t in [&t1, &t2, &t3] {
        one(&s, Mutation::InsertToken(t.clone())).await?;
    }
    ensure!(s.token(t1.jti).await? == Some(t1.clone()), "token did not round-trip");
    ensure!(one(&s, Mutation::RevokeToken { jti: t1.jti, at: t0() }).await? == 1);
    ensure!(
        one(&s, Mutation::RevokeToken { jti: t1.jti, at: t0() + Duration::seconds(9) }).await? == 0,
        "revoked twice"
    );
    ensure!(s.token(t1.jti).await?.and_then(|t| t.revoked_at) == Some(t0()), "first revocation time lost");
    ensure!(one(&s, Mutation::RevokeTokensOfSubject { subject: u.id.to_string(), at: t0() }).await? == 2);
    let t4 = token(a.id, &a.id.to_string());
    one(&s, Mutation::InsertToken(t4.clone())).await?;
    ensure!(
        one(&s, Mutation::RevokeTokensOfAgent { agent: a.id, at: t0() }).await? == 1,
        "only the live token is revoked"
    );
    ensure!(s.token(Jti::from_ulid(ulid())).await?.is_none());
    Ok(())
}

async fn replay_store_burns_each_jti_once(s: Arc<dyn Store>) -> Result<()> {
    let a = ClientId::Agent(AgentId::from_ulid(ulid()));
    let b = ClientId::Agent(AgentId::from_ulid(ulid()));
    let burn = |c: ClientId, exp: OffsetDateTime| Mutation::ConsumeAssertionJti {
        client: c,
        jti: "j-1".into(),
        expires_at: exp,
    };
    one(&s, burn(a, t0())).await?;
    ensure!(matches!(one(&s, burn(a, t0())).await, Err(StoreError::Replay)), "replayed jti accepted");
    one(&s, burn(b, t0())).await?;
    one(&s, Mutation::PurgeExpiredJtis { before: t0() - Duration::seconds(1) }).await?;
    ensure!(matches!(one(&s, burn(a, t0())).await, Err(StoreError::Replay)), "unexpired jti purged");
    one(&s, Mutation::PurgeExpiredJtis { before: t0() + Duration::seconds(1) }).await?;
    one(&s, burn(a, t0() + Duration::hours(1))).await?;
    Ok(())
}

async fn a_failed_change_writes_nothing(s: Arc<dyn Store>) -> Result<()> {
    let u = user("atomic@example.com");
    one(&s, Mutation::InsertUser(u.clone())).await?;
    let a = agent(u.id, None);
    one(&s, Mutation::InsertAgent(a.clone())).await?;
    let client = ClientId::Agent(a.id);
    one(&s, Mutation::ConsumeAssertionJti { client, jti: "used".into(), expires_at: t0() }).await?;
    let t = token(a.id, "x");
    let change = Change::new().with(Mutation::InsertToken(t.clone())).with(Mutation::ConsumeAssertionJti {
        client,
        jti: "used".into(),
        expires_at: t0(),
    });
    ensure!(matches!(s.commit(change).await, Err(StoreError::Replay)));
    ensure!(s.token(t.jti).await?.is_none(), "a token from a refused change was written");
    // Neighbouring changes committed together are unaffected.
    let good = token(a.id, "y");
    let (r1, r2) = tokio::join!(
        s.commit(Change::new().with(Mutation::ConsumeAssertionJti { client, jti: "used".into(), expires_at: t0() })),
        s.commit(Change::new().with(Mutation::InsertToken(good.clone())))
    );
    ensure!(r1.is_err() && r2.is_ok());
    ensure!(s.token(good.jti).await?.is_some());
    Ok(())
}

async fn concurrent_replays_admit_one(s: Arc<dyn Store>) -> Result<()> {
    let client = ClientId::Agent(AgentId::from_ulid(ulid()));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.commit(Change::new().with(Mutation::ConsumeAssertionJti { client, jti: "race".into(), expires_at: t0() }))
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await? {
            Ok(_) => ok += 1,
            Err(StoreError::Replay) => {}
            Err(e) => return Err(e.into()),
        }
    }
    ensure!(ok == 1, "{ok} concurrent uses of one jti succeeded");
    Ok(())
}

async fn owners_and_expiry_revoke_agent_tokens(s: Arc<dyn Store>) -> Result<()> {
    let u = user("o@example.com");
    let other = user("other@example.com");
    one(&s, Mutation::InsertUser(u.clone())).await?;
    one(&s, Mutation::InsertUser(other.clone())).await?;
    let mine = agent(u.id, None);
    let theirs = agent(other.id, None);
    let child = agent(u.id, Some(mine.id)); // ephemeral, expires at t0 + 1 h
    for a in [&mine, &theirs, &child] {
        one(&s, Mutation::InsertAgent(a.clone())).await?;
    }
    let (t_mine, t_theirs, t_child) = (token(mine.id, "x"), token(theirs.id, "x"), token(child.id, "x"));
    for t in [&t_mine, &t_theirs, &t_child] {
        one(&s, Mutation::InsertToken(t.clone())).await?;
    }
    ensure!(one(&s, Mutation::RevokeTokensOfOwnedAgents { owner: u.id, at: t0() }).await? == 2);
    ensure!(s.token(t_theirs.jti).await?.and_then(|t| t.revoked_at).is_none(), "another owner's token was revoked");
    ensure!(s.expired_agents(t0() + Duration::minutes(59)).await?.is_empty(), "expired before its time");
    let expired: Vec<AgentId> = s.expired_agents(t0() + Duration::hours(1)).await?.iter().map(|a| a.id).collect();
    ensure!(expired == vec![child.id], "expired agents: {expired:?}");
    one(
        &s,
        Mutation::SetAgentStatus {
            id: child.id,
            from: AgentStatus::Active,
            to: AgentStatus::Retired,
            at: t0() + Duration::hours(1),
            by: None,
        },
    )
    .await?;
    ensure!(s.expired_agents(t0() + Duration::hours(2)).await?.is_empty(), "a retired agent is listed as expiring");
    Ok(())
}

// ----- the audit trail -----

/// An unsealed event of `kind` by `actor`.
pub fn event(kind: &str, actor: &str) -> Event {
    let mut e = Event::new(kind, "2026-11-23T10:00:00.000000Z");
    e.decision = Some("allow".into());
    e.actor = Some(actor.into());
    e.chain = vec![actor.into()];
    e
}

fn append(e: Event) -> Mutation {
    AuditRecord::new(e).mutation()
}

async fn intact(s: &Arc<dyn Store>) -> Result<u64> {
    match verify_trail(s.as_ref(), &[], None).await? {
        TrailReport::Intact(v) => Ok(v.events),
        TrailReport::Broken(t) => anyhow::bail!("the trail does not verify: {t}"),
    }
}

async fn all_events(s: &Arc<dyn Store>) -> Result<Vec<Event>> {
    Ok(s.audit_events(&AuditQuery::page(0)).await?)
}

async fn audit_events_chain_in_commit_order(s: Arc<dyn Store>) -> Result<()> {
    ensure!(s.audit_head().await?.is_none());
    ensure!(intact(&s).await? == 0);
    let mut full = event("token.issued", "agt_x");
    full.subject = Some("usr_x".into());
    full.client_id = Some("agt_x".into());
    full.action = Some("read".into());
    full.resource = Some("https://api.example".into());
    full.scope = Some("read write".into());
    full.jti = Some("tok_x".into());
    full.grant_id = Some("grt_x".into());
    full.parent = Some("tok_p".into());
    full.reason = Some("quotes ' \" and \u{e9}\u{1F600} survive".into());
    full.request_id = Some("req-1".into());
    full.chain = vec!["usr_x".into(), "agt_a".into(), "agt_x".into()];
    for i in 0..5 {
        let mut e = full.clone();
        e.jti = Some(format!("tok_{i}"));
        one(&s, append(e)).await?;
    }
    let events = all_events(&s).await?;
    ensure!(events.iter().map(|e| e.seq).collect::<Vec<_>>() == vec![1, 2, 3, 4, 5], "seqs are not 1..5");
    let mut expected = full.clone();
    expected.jti = Some("tok_0".into());
    let first = events.first().cloned().unwrap_or_else(|| event("?", "?"));
    ensure!(
        Event { seq: 0, prev_hash: String::new(), hash: String::new(), ..first.clone() } == expected,
        "event did not round-trip: {first:?}"
    );
    ensure!(first.prev_hash == mandate_audit::GENESIS);
    ensure!(events.windows(2).all(|w| w.get(1).map(|b| &b.prev_hash) == w.first().map(|a| &a.hash)));
    ensure!(s.audit_head().await? == events.last().map(|e| (e.seq, e.hash.clone())));
    ensure!(intact(&s).await? == 5);
    Ok(())
}

async fn an_audit_event_lands_with_its_change_or_not_at_all(s: Arc<dyn Store>) -> Result<()> {
    let u = user("audit@example.com");
    one(&s, Mutation::InsertUser(u.clone())).await?;
    let a = agent(u.id, None);
    one(&s, Mutation::InsertAgent(a.clone())).await?;
    let client = ClientId::Agent(a.id);
    let burn = || Mutation::ConsumeAssertionJti { client, jti: "once".into(), expires_at: t0() };
    s.commit(Change::new().with(burn()).with(append(event("token.issued", "agt_1")))).await?;
    // Refused on its first write: nothing, not even the event, is kept.
    let refused = s.commit(Change::new().with(burn()).with(append(event("token.issued", "agt_2")))).await;
    ensure!(matches!(refused, Err(StoreError::Replay)), "replay accepted: {refused:?}");
    // Refused after writing: the token and the event are undone together.
    let t = token(a.id, "x");
    let late = s
        .commit(
            Change::new()
                .with(Mutation::InsertToken(t.clone()))
                .with(append(event("token.issued", "agt_3")))
                .with(burn()),
        )
        .await;
    ensure!(matches!(late, Err(StoreError::Replay)), "late replay accepted: {late:?}");
    ensure!(s.token(t.jti).await?.is_none(), "a token from a refused change was written");
    // The same, batched with changes that succeed: they keep their events
    // and the chain has no gap.
    let good = token(a.id, "y");
    let (r1, r2, r3) = tokio::join!(
        s.commit(
            Change::new()
                .with(Mutation::InsertToken(token(a.id, "z")))
                .with(append(event("token.issued", "agt_4")))
                .with(burn())
        ),
        s.commit(Change::new().with(Mutation::InsertToken(good.clone())).with(append(event("token.issued", "agt_5")))),
        s.commit(Change::new().with(append(event("token.denied", "agt_6")))),
    );
    ensure!(r1.is_err() && r2.is_ok() && r3.is_ok(), "{r1:?} {r2:?} {r3:?}");
    let actors: Vec<String> = all_events(&s).await?.into_iter().filter_map(|e| e.actor).collect();
    let mut sorted = actors.clone();
    sorted.sort();
    ensure!(sorted == ["agt_1", "agt_5", "agt_6"], "events kept: {actors:?}");
    ensure!(intact(&s).await? == 3);
    Ok(())
}

async fn audit_events_count_what_their_change_reached(s: Arc<dyn Store>) -> Result<()> {
    let u = user("count@example.com");
    one(&s, Mutation::InsertUser(u.clone())).await?;
    let a = agent(u.id, None);
    one(&s, Mutation::InsertAgent(a.clone())).await?;
    for _ in 0..3 {
        one(&s, Mutation::InsertToken(token(a.id, "x"))).await?;
    }
    // The record counts the second revocation, which reaches nothing, and
    // the first, put first after the record was written: handles, not
    // positions, say what is counted.
    let mut change = Change::new();
    let second = change.push(Mutation::RevokeTokensOfAgent { agent: a.id, at: t0() });
    change.push(AuditRecord::counting(event("agent.suspended", "admin"), &[second]).mutation());
    let first = change.prepend(Mutation::RevokeTokensOfAgent { agent: a.id, at: t0() });
    let mut counted = change.clone();
    counted = counted.with(AuditRecord::counting(event("agent.suspended", "admin"), &[first, second]).mutation());
    let receipt = s.commit(counted).await?;
    ensure!(receipt.affected(first)? == 3 && receipt.affected(second)? == 0, "{receipt:?}");
    let events = all_events(&s).await?;
    let counts: Vec<Option<u64>> = events.iter().map(|e| e.count).collect();
    ensure!(counts == vec![Some(0), Some(3)], "counts: {counts:?}");
    ensure!(intact(&s).await? == 2);
    Ok(())
}

async fn a_count_of_a_later_mutation_fails_its_change(s: Arc<dyn Store>) -> Result<()> {
    let u = user("later@example.com");
    // A record that counts the mutation after it (the second of its
    // change, named by a handle from a change built the same way): the
    // change fails and writes nothing, rather than count what it cannot.
    let mut shape = Change::new();
    shape.push(Mutation::PurgeExpiredJtis { before: t0() });
    let second = shape.push(Mutation::PurgeExpiredJtis { before: t0() });
    let mut bad = Change::new();
    bad.push(AuditRecord::counting(event("user.created", "admin"), &[second]).mutation());
    bad.push(Mutation::InsertUser(u.clone()));
    let before = all_events(&s).await?.len();
    ensure!(s.commit(bad).await.is_err(), "an event counting what comes after it was kept");
    ensure!(s.user(u.id).await?.is_none(), "the failed change wrote its user");
    ensure!(all_events(&s).await?.len() == before, "the failed change wrote its event");
    Ok(())
}

async fn concurrent_appends_form_one_chain(s: Arc<dyn Store>) -> Result<()> {
    let mut tasks = Vec::new();
    for t in 0..32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..16 {
                s.commit(Change::new().with(append(event("token.issued", &format!("agt_{t}_{i}"))))).await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    ensure!(intact(&s).await? == 512);
    Ok(())
}

async fn checkpoints_are_kept_once_per_seq(s: Arc<dyn Store>) -> Result<()> {
    ensure!(s.last_audit_checkpoint().await?.is_none());
    let cp = |seq: u64, sig: &str| Checkpoint {
        seq,
        hash: format!("{seq:064x}"),
        time: "2026-11-23T10:00:00.000000Z".into(),
        kid: "a1".into(),
        signature: sig.into(),
    };
    for seq in [10, 20, 30] {
        ensure!(one(&s, Mutation::InsertCheckpoint(cp(seq, "first"))).await? == 1);
    }
    ensure!(one(&s, Mutation::InsertCheckpoint(cp(20, "second"))).await? == 0, "a second checkpoint at one seq");
    ensure!(s.audit_checkpoints(10, 1).await? == vec![cp(20, "first")]);
    ensure!(s.audit_checkpoints(0, 10).await?.len() == 3);
    ensure!(s.last_audit_checkpoint().await? == Some(cp(30, "first")));
    Ok(())
}

async fn audit_queries_filter_and_page(s: Arc<dyn Store>) -> Result<()> {
    for i in 0..30u32 {
        let mut e = event(if i % 3 == 0 { "token.denied" } else { "token.issued" }, &format!("agt_{}", i % 2));
        e.subject = Some(format!("usr_{}", i % 5));
        e.jti = Some(format!("tok_{i}"));
        e.grant_id = (i < 10).then(|| "grt_a".to_owned());
        e.parent = (i == 7).then(|| "tok_3".to_owned());
        e.resource = Some(if i == 9 { "https://b.example".into() } else { "https://a.example".into() });
        e.time = format!("2026-11-23T10:00:{i:02}.000000Z");
        one(&s, append(e)).await?;
    }
    let q = |f: fn(&mut AuditQuery)| {
        let mut q = AuditQuery::page(0);
        f(&mut q);
        q
    };
    let seqs = |v: Vec<Event>| v.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    ensure!(seqs(s.audit_events(&q(|q| q.actor = Some("agt_1".into()))).await?).len() == 15);
    ensure!(seqs(s.audit_events(&q(|q| q.subject = Some("usr_4".into()))).await?) == vec![5, 10, 15, 20, 25, 30]);
    ensure!(seqs(s.audit_events(&q(|q| q.jti = Some("tok_12".into()))).await?) == vec![13]);
    ensure!(s.audit_events(&q(|q| q.grant = Some("grt_a".into()))).await?.len() == 10);
    ensure!(s.audit_events(&q(|q| q.kind = Some("token.denied".into()))).await?.len() == 10);
    ensure!(seqs(s.audit_events(&q(|q| q.parent = Some("tok_3".into()))).await?) == vec![8]);
    ensure!(seqs(s.audit_events(&q(|q| q.resource = Some("https://b.example".into()))).await?) == vec![10]);
    ensure!(
        seqs(s.audit_events(&q(|q| q.since = Some("2026-11-23T10:00:27.000000Z".into()))).await?) == vec![28, 29, 30]
    );
    let both = q(|q| {
        q.actor = Some("agt_0".into());
        q.kind = Some("token.denied".into());
        q.after = 10;
        q.limit = 2;
    });
    ensure!(seqs(s.audit_events(&both).await?) == vec![13, 19]);
    // Hostile filter values are only ever bound, never spliced.
    let hostile = q(|q| q.actor = Some("x' OR '1'='1".into()));
    ensure!(s.audit_events(&hostile).await?.is_empty());
    Ok(())
}

// ----- tampering with the database directly -----

/// Runs raw SQL against the database behind a store, as an attacker with
/// write access to it would.
pub type Exec = Arc<dyn Fn(String) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send + Sync>;

/// A store and the means to tamper with it behind its back.
pub struct TamperRig {
    pub store: Arc<dyn Store>,
    pub exec: Exec,
    /// SQL that drops the append-only triggers (an attacker would).
    pub drop_guards: &'static str,
    /// SQL that makes every audit insert fail (a fault injected in the database).
    pub fail_appends: &'static str,
    /// SQL that undoes `fail_appends`.
    pub restore_appends: &'static str,
    /// SQL that leaves the checkpoint at seq 10 unreadable, where the
    /// store's column types allow it at all.
    pub garble_checkpoint: Option<&'static str>,
}

/// The tamper cases, each on a fresh store with a 20-event trail and a
/// signed checkpoint at seq 20.
pub async fn run_tamper_suite<F, Fut>(factory: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<TamperRig>>,
{
    let cases: [(&str, &str, u64); 6] = [
        ("edit", "UPDATE audit_events SET scope = 'admin' WHERE seq = 5", 5),
        ("delete", "DELETE FROM audit_events WHERE seq = 7", 7),
        (
            "reorder",
            "UPDATE audit_events SET seq = -1 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = 4; \
             UPDATE audit_events SET seq = 4 WHERE seq = -1",
            3,
        ),
        (
            "insert",
            "UPDATE audit_events SET seq = -seq - 1 WHERE seq >= 12; UPDATE audit_events SET seq = -seq WHERE seq < 0; \
             INSERT INTO audit_events SELECT 12, time, type, decision, subject, actor, chain, client_id, action, resource, \
             scope, jti, grant_id, parent, count, reason, request_id, prev_hash, hash FROM audit_events WHERE seq = 11",
            12,
        ),
        ("truncate the tail", "DELETE FROM audit_events WHERE seq > 15", 16),
        ("edit the hash too", "UPDATE audit_events SET hash = prev_hash WHERE seq = 9", 9),
    ];
    let mut failures = Vec::new();
    for (name, sql, bad_seq) in cases {
        let rig = factory().await?;
        if let Err(e) = tamper_case(&rig, sql, bad_seq).await {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    type RigCase = for<'a> fn(&'a TamperRig) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;
    let rig_cases: [(&str, RigCase); 3] =
        [("rewrite", rewrite_case), ("fault", failed_append_case), ("corrupt checkpoint", corrupt_checkpoint_case)];
    for (name, case) in rig_cases {
        let rig = factory().await?;
        if let Err(e) = case(&rig).await {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    ensure!(failures.is_empty(), "tamper suite failures:\n{}", failures.join("\n"));
    Ok(())
}

/// Twenty events and checkpoints at seq 10 and 20, signed with an audit
/// key the store knows. Returns the checkpoint at 20 and the key.
async fn seeded_trail(rig: &TamperRig) -> Result<(Checkpoint, mandate_jose::SigningKey)> {
    let s = &rig.store;
    let key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
    one(s, Mutation::InsertSigningKey(audit_key_row(&key))).await?;
    let mut cp = None;
    for i in 0..20 {
        let mut e = event("token.issued", &format!("agt_{i}"));
        e.scope = Some("read".into());
        one(s, append(e)).await?;
        if i == 9 || i == 19 {
            let (seq, hash) = s.audit_head().await?.unwrap_or_default();
            let signed = mandate_audit::sign_checkpoint(&key, seq, &hash, "2026-11-23T10:00:00.000000Z")?;
            one(s, Mutation::InsertCheckpoint(signed.clone())).await?;
            cp = Some(signed);
        }
    }
    ensure!(intact(s).await? == 20);
    Ok((cp.ok_or_else(|| anyhow::anyhow!("no checkpoint"))?, key))
}

fn audit_key_row(key: &mandate_jose::SigningKey) -> StoredKey {
    StoredKey {
        kid: key.kid().into(),
        alg: "EdDSA".into(),
        purpose: KeyUse::Audit,
        wrapped_private: vec![0],
        public_jwk: Some(key.public().to_json().to_string()),
        created_at: t0(),
        retired_at: None,
    }
}

async fn broken_at(s: &Arc<dyn Store>, witnessed: &[Checkpoint]) -> Result<u64> {
    broken_against(s, witnessed, None).await
}

async fn broken_against(
    s: &Arc<dyn Store>,
    witnessed: &[Checkpoint],
    trusted: Option<&[mandate_jose::PublicJwk]>,
) -> Result<u64> {
    match verify_trail(s.as_ref(), witnessed, trusted).await? {
        TrailReport::Intact(v) => anyhow::bail!("tampering went unnoticed ({} events verify)", v.events),
        TrailReport::Broken(t) => Ok(t.seq),
    }
}

async fn tamper_case(rig: &TamperRig, sql: &str, bad_seq: u64) -> Result<()> {
    seeded_trail(rig).await?;
    // The triggers refuse the edit until they are dropped.
    ensure!((rig.exec)(sql.to_owned()).await.is_err(), "the append-only guard let an edit through");
    (rig.exec)(rig.drop_guards.to_owned()).await?;
    (rig.exec)(sql.to_owned()).await?;
    let seq = broken_at(&rig.store, &[]).await?;
    ensure!(seq == bad_seq, "reported seq {seq}, expected {bad_seq}");
    Ok(())
}

/// Rows rewritten with their hashes recomputed, as someone without the
/// audit key would: a partial recomputation is caught at the first
/// checkpoint it contradicts; a whole one by the stored checkpoints; with
/// those deleted, only by a witness; and a key row of the forger's own
/// defeats the stored keys, but not keys pinned outside the database.
fn rewrite_case(rig: &TamperRig) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> {
    Box::pin(async move {
        let (witnessed, key) = seeded_trail(rig).await?;
        let original = all_events(&rig.store).await?;
        let rewrite = |upto: usize| -> Result<String> {
            let mut events = original.clone();
            if let Some(e) = events.get_mut(4) {
                e.scope = Some("admin".into());
            }
            let mut prev = mandate_audit::GENESIS.to_owned();
            let mut sql = String::from("DELETE FROM audit_events;");
            for (i, e) in events.into_iter().enumerate() {
                let e = if i < upto { mandate_audit::seal(e, i as u64 + 1, &prev)? } else { e };
                prev = e.hash.clone();
                let q = |v: &Option<String>| {
                    v.as_ref().map_or("NULL".to_owned(), |s| format!("'{}'", s.replace('\'', "''")))
                };
                sql.push_str(&format!(
                    "INSERT INTO audit_events (seq, time, type, decision, actor, chain, scope, prev_hash, hash) \
                     VALUES ({}, '{}', '{}', {}, {}, '{}', {}, '{}', '{}');",
                    e.seq,
                    e.time,
                    e.kind,
                    q(&e.decision),
                    q(&e.actor),
                    serde_json::to_string(&e.chain)?,
                    q(&e.scope),
                    e.prev_hash,
                    e.hash
                ));
            }
            Ok(sql)
        };
        (rig.exec)(rig.drop_guards.to_owned()).await?;
        // Recomputed from the edit up to seq 15: the checkpoint at 10 disagrees
        // before the broken link at 16 is reached.
        (rig.exec)(rewrite(15)?).await?;
        ensure!(broken_at(&rig.store, &[]).await? == 10, "a partial rewrite was not caught at the first checkpoint");
        (rig.exec)(rewrite(20)?).await?;
        ensure!(broken_at(&rig.store, &[]).await? == 10, "the stored checkpoints did not catch the rewrite");
        (rig.exec)("DELETE FROM audit_checkpoints".to_owned()).await?;
        ensure!(intact(&rig.store).await? == 20, "the rewritten chain should verify on its own");
        ensure!(
            broken_at(&rig.store, std::slice::from_ref(&witnessed)).await? == 20,
            "the witness did not catch the rewrite"
        );
        // The forger adds an audit key of their own and re-signs.
        let forger = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
        one(&rig.store, Mutation::InsertSigningKey(audit_key_row(&forger))).await?;
        let (seq, hash) = rig.store.audit_head().await?.unwrap_or_default();
        let forged = mandate_audit::sign_checkpoint(&forger, seq, &hash, "2026-11-23T11:00:00.000000Z")?;
        one(&rig.store, Mutation::InsertCheckpoint(forged)).await?;
        ensure!(intact(&rig.store).await? == 20, "against the database's own keys the forgery verifies (documented)");
        let pinned = [key.public().clone()];
        ensure!(
            broken_against(&rig.store, &[], Some(&pinned)).await? == 20,
            "a pinned key did not reject the forged checkpoint"
        );
        Ok(())
    })
}

/// A checkpoint row edited so that it no longer reads is tampering, not an
/// error to shrug off.
fn corrupt_checkpoint_case(rig: &TamperRig) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> {
    Box::pin(async move {
        seeded_trail(rig).await?;
        let signature = "UPDATE audit_checkpoints SET signature = 'AAAA' WHERE seq = 10";
        (rig.exec)(signature.to_owned()).await?;
        match verify_trail(rig.store.as_ref(), &[], None).await? {
            TrailReport::Broken(t) => ensure!(t.seq == 10 && t.reason.contains("signature"), "{t}"),
            TrailReport::Intact(_) => anyhow::bail!("an edited checkpoint signature went unnoticed"),
        }
        if let Some(garble) = rig.garble_checkpoint {
            (rig.exec)(garble.to_owned()).await?;
            match verify_trail(rig.store.as_ref(), &[], None).await? {
                TrailReport::Broken(t) => ensure!(t.reason.contains("cannot be read"), "{t}"),
                TrailReport::Intact(_) => anyhow::bail!("an unreadable checkpoint row went unnoticed"),
            }
        }
        Ok(())
    })
}

fn change_again(burn: Mutation, t: TokenRecord) -> Change {
    Change::new().with(burn).with(Mutation::InsertToken(t)).with(append(event("token.issued", "agt_t")))
}

/// An audit insert that fails in the database takes its whole change with
/// it: no token, no burned jti, and the chain goes on without a gap.
fn failed_append_case(rig: &TamperRig) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> {
    Box::pin(async move {
        let s = &rig.store;
        let u = user("fault@example.com");
        one(s, Mutation::InsertUser(u.clone())).await?;
        let a = agent(u.id, None);
        one(s, Mutation::InsertAgent(a.clone())).await?;
        one(s, append(event("token.issued", "before"))).await?;
        (rig.exec)(rig.fail_appends.to_owned()).await?;
        let t = token(a.id, "x");
        let burn = Mutation::ConsumeAssertionJti { client: ClientId::Agent(a.id), jti: "f".into(), expires_at: t0() };
        let change = change_again(burn.clone(), t.clone());
        let (failed, other) =
            tokio::join!(s.commit(change), s.commit(Change::new().with(Mutation::InsertToken(token(a.id, "y")))));
        ensure!(failed.is_err(), "a change whose audit event failed was committed");
        ensure!(other.is_ok(), "a neighbour without events failed: {other:?}");
        ensure!(s.token(t.jti).await?.is_none(), "the token outlived its failed audit event");
        // The jti was not burned either: the same change goes through once
        // appends work again, and the chain goes on without a gap.
        (rig.exec)(rig.restore_appends.to_owned()).await?;
        s.commit(change_again(burn, t.clone())).await?;
        ensure!(s.token(t.jti).await?.is_some());
        ensure!(intact(s).await? == 2);
        Ok(())
    })
}

// ----- delegation -----

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

/// A user, two agents of theirs and a grant to the first.
async fn people(s: &Arc<dyn Store>, email: &str) -> Result<(User, Agent, Agent, Grant)> {
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

async fn grants_revoke_once_and_list_by_person(s: Arc<dyn Store>) -> Result<()> {
    let (u, a, _, g) = people(&s, "g@example.com").await?;
    let other = user("g2@example.com");
    one(&s, Mutation::InsertUser(other.clone())).await?;
    ensure!(s.grant(g.id).await? == Some(g.clone()), "grant did not round-trip");
    one(&s, Mutation::TouchGrant { id: g.id, at: t0() + Duration::seconds(5) }).await?;
    ensure!(s.grant(g.id).await?.and_then(|x| x.last_used_at) == Some(t0() + Duration::seconds(5)));
    let q = |user, agent, user_or_owner| GrantQuery { user, agent, user_or_owner, limit: 10 };
    ensure!(s.grants(&q(Some(u.id), None, None)).await?.len() == 1);
    ensure!(s.grants(&q(None, Some(a.id), None)).await?.len() == 1);
    ensure!(s.grants(&q(None, None, Some(u.id))).await?.len() == 1, "the owner sees grants to their agents");
    ensure!(s.grants(&q(None, None, Some(other.id))).await?.is_empty(), "a stranger sees a grant");
    ensure!(one(&s, Mutation::RevokeGrant { id: g.id, at: t0() }).await? == 1);
    ensure!(one(&s, Mutation::RevokeGrant { id: g.id, at: t0() }).await? == 0, "revoked twice");
    let g2 = grant(u.id, a.id);
    one(&s, Mutation::InsertGrant(g2.clone())).await?;
    ensure!(one(&s, Mutation::RevokeGrantsOfAgent { agent: a.id, at: t0() }).await? == 1);
    let g3 = grant(u.id, a.id);
    one(&s, Mutation::InsertGrant(g3.clone())).await?;
    ensure!(one(&s, Mutation::RevokeGrantsOfUser { user: u.id, at: t0() }).await? == 1);
    ensure!(s.grant(g3.id).await?.map(|x| x.status) == Some(GrantStatus::Revoked));
    Ok(())
}

/// Approvals pending per agent and per agent and user (CIBA requests and
/// action approvals alike) are counted (the caps of SECURITY row 45); the inbox pages by id; an agent's last use is
/// read by one grouped query; deciding an action approval keeps its grant.
async fn pending_requests_are_counted_and_approvals_paged(s: Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(&s, "pr@example.com").await?;
    let v = user("pr2@example.com");
    one(&s, Mutation::InsertUser(v.clone())).await?;
    let request = |user: UserId, minutes: i64| Approval {
        id: ApprovalId::from_ulid(ulid()),
        agent: a.id,
        user,
        approver: u.id,
        resource: "https://api.example".into(),
        subject: ApprovalSubject::Grant { scopes: g.scopes.clone(), requested_expiry: 600 },
        binding_message: None,
        status: ApprovalStatus::Pending,
        decided_by: None,
        created_at: t0(),
        expires_at: t0() + Duration::minutes(minutes),
        decided_at: None,
        grant: None,
        polled_at: None,
    };
    let mut ids = Vec::new();
    for (who, minutes) in [(u.id, 10), (u.id, 10), (v.id, 10), (u.id, 1)] {
        let r = request(who, minutes);
        ids.push(r.id);
        one(&s, Mutation::InsertApproval(r)).await?;
    }
    let now = t0() + Duration::minutes(5);
    ensure!(s.pending_requests(a.id, None, t0()).await? == 4);
    ensure!(s.pending_requests(a.id, None, now).await? == 3, "an expired request was counted");
    ensure!(s.pending_requests(a.id, Some(u.id), now).await? == 2);
    ensure!(s.pending_requests(a.id, Some(v.id), now).await? == 1);
    ensure!(s.pending_requests(b.id, None, now).await? == 0);
    // An action approval waits for a person too and counts; a decided one
    // no longer does.
    let action = Approval {
        subject: ApprovalSubject::Action {
            action: "send".into(),
            target: "mail/1".into(),
            chain: vec![a.id],
            binding: "b9".into(),
            properties: BTreeMap::new(),
        },
        grant: Some(g.id),
        ..request(u.id, 10)
    };
    one(&s, Mutation::InsertApproval(action.clone())).await?;
    let first = ids.first().copied().ok_or_else(|| anyhow::anyhow!("no request"))?;
    one(
        &s,
        Mutation::DecideApproval { id: first, to: ApprovalStatus::Denied, by: u.id.to_string(), grant: None, at: now },
    )
    .await?;
    ensure!(s.pending_requests(a.id, Some(u.id), now).await? == 2, "the action approval was not counted");
    ensure!(s.pending_requests(a.id, None, now).await? == 3);
    // Deciding an action approval keeps the grant it was asked under.
    one(
        &s,
        Mutation::DecideApproval {
            id: action.id,
            to: ApprovalStatus::Approved,
            by: u.id.to_string(),
            grant: None,
            at: now,
        },
    )
    .await?;
    ensure!(s.approval(action.id).await?.and_then(|x| x.grant) == Some(g.id), "the grant link was erased");
    // Paging, newest first: two pages of two, then one, then none.
    let page = |before| ApprovalQuery { approver: Some(u.id), before, limit: 2, ..ApprovalQuery::default() };
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let p = s.approvals(&page(before)).await?;
        if p.is_empty() {
            break;
        }
        ensure!(p.len() <= 2);
        before = p.last().map(|x| x.id);
        seen.extend(p.into_iter().map(|x| x.id));
    }
    let mut all = ids.clone();
    all.push(action.id);
    all.sort();
    all.reverse();
    ensure!(seen == all, "paging missed or repeated: {seen:?} vs {all:?}");
    // Last use per agent of an owner, in one read.
    ensure!(s.last_use_of_owned_agents(u.id).await?.is_empty());
    one(&s, Mutation::TouchGrant { id: g.id, at: t0() + Duration::seconds(7) }).await?;
    ensure!(s.last_use_of_owned_agents(u.id).await? == vec![(a.id, t0() + Duration::seconds(7))]);
    ensure!(s.last_use_of_owned_agents(v.id).await?.is_empty());
    Ok(())
}

async fn approvals_are_decided_and_used_once(s: Arc<dyn Store>) -> Result<()> {
    let (u, a, _, g) = people(&s, "ap@example.com").await?;
    let approval = |subject| Approval {
        id: ApprovalId::from_ulid(ulid()),
        agent: a.id,
        user: u.id,
        approver: u.id,
        resource: "https://api.example".into(),
        subject,
        binding_message: Some("book the trip".into()),
        status: ApprovalStatus::Pending,
        decided_by: None,
        created_at: t0(),
        expires_at: t0() + Duration::minutes(10),
        decided_at: None,
        grant: None,
        polled_at: None,
    };
    let ciba = approval(ApprovalSubject::Grant { scopes: g.scopes.clone(), requested_expiry: 600 });
    let action = approval(ApprovalSubject::Action {
        action: "send".into(),
        target: "mail/1".into(),
        chain: vec![a.id],
        binding: "b1".into(),
        properties: [("amount".to_owned(), "120 EUR".to_owned())].into(),
    });
    one(&s, Mutation::InsertApproval(ciba.clone())).await?;
    one(&s, Mutation::InsertApproval(action.clone())).await?;
    ensure!(s.approval(ciba.id).await? == Some(ciba.clone()), "approval did not round-trip");
    ensure!(s.approval(action.id).await? == Some(action.clone()), "action approval did not round-trip");
    let pending = ApprovalQuery {
        approver: Some(u.id),
        status: Some(ApprovalStatus::Pending),
        binding: None,
        before: None,
        limit: 10,
    };
    ensure!(s.approvals(&pending).await?.len() == 2);
    let bound = ApprovalQuery { binding: Some("b1".into()), ..ApprovalQuery::default() };
    ensure!(s.approvals(&ApprovalQuery { limit: 10, ..bound }).await?.len() == 1);
    // Nothing can be handed out before a decision.
    ensure!(matches!(one(&s, Mutation::ConsumeApproval { id: ciba.id, at: t0() }).await, Err(StoreError::Conflict(_))));
    let decide = |id, to| Mutation::DecideApproval { id, to, by: u.id.to_string(), grant: Some(g.id), at: t0() };
    one(&s, decide(ciba.id, ApprovalStatus::Approved)).await?;
    ensure!(
        matches!(one(&s, decide(ciba.id, ApprovalStatus::Denied)).await, Err(StoreError::Conflict(_))),
        "decided twice"
    );
    ensure!(s.approval(ciba.id).await?.and_then(|x| x.grant) == Some(g.id));
    one(&s, Mutation::PollApproval { id: ciba.id, at: t0() }).await?;
    one(&s, Mutation::ConsumeApproval { id: ciba.id, at: t0() }).await?;
    ensure!(
        matches!(one(&s, Mutation::ConsumeApproval { id: ciba.id, at: t0() }).await, Err(StoreError::Conflict(_))),
        "an approval was handed out twice"
    );
    // An expired request cannot be decided.
    let late = t0() + Duration::minutes(11);
    ensure!(matches!(
        one(
            &s,
            Mutation::DecideApproval {
                id: action.id,
                to: ApprovalStatus::Approved,
                by: "x".into(),
                grant: None,
                at: late
            }
        )
        .await,
        Err(StoreError::Conflict(_))
    ));
    Ok(())
}

async fn delegated_tokens_need_a_live_parent_and_grant(s: Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(&s, "d@example.com").await?;
    let mut parent = token(a.id, &u.id.to_string());
    parent.grant = Some(g.id);
    one(&s, Mutation::InsertToken(parent.clone())).await?;
    let child = child_of(&parent, b.id);
    one(&s, Mutation::InsertToken(child.clone())).await?;
    ensure!(s.token(child.jti).await? == Some(child.clone()), "child did not round-trip");
    // Under a revoked parent: refused.
    one(&s, Mutation::RevokeToken { jti: parent.jti, at: t0() }).await?;
    let orphan = child_of(&parent, b.id);
    ensure!(matches!(one(&s, Mutation::InsertToken(orphan.clone())).await, Err(StoreError::Conflict(_))));
    ensure!(s.token(orphan.jti).await?.is_none());
    // Under an unknown parent: refused.
    let mut stray = child_of(&parent, b.id);
    stray.parent = Some(Jti::from_ulid(ulid()));
    ensure!(matches!(one(&s, Mutation::InsertToken(stray)).await, Err(StoreError::Conflict(_))));
    // Under a revoked grant: refused.
    one(&s, Mutation::RevokeGrant { id: g.id, at: t0() }).await?;
    let mut late = token(a.id, &u.id.to_string());
    late.grant = Some(g.id);
    ensure!(matches!(one(&s, Mutation::InsertToken(late)).await, Err(StoreError::Conflict(_))));
    Ok(())
}

async fn revocation_reaches_every_descendant(s: Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(&s, "r@example.com").await?;
    let c = agent(u.id, Some(b.id));
    one(&s, Mutation::InsertAgent(c.clone())).await?;
    let live = |s: Arc<dyn Store>, t: Jti| async move {
        Ok::<_, anyhow::Error>(s.token(t).await?.is_some_and(|t| t.revoked_at.is_none()))
    };
    // root (a) → mid (b) → leaf (c), and a sibling of mid.
    let tree = |family: Option<&str>| {
        let mut root = token(a.id, &u.id.to_string());
        root.grant = Some(g.id);
        root.family = family.map(str::to_owned);
        let mid = child_of(&root, b.id);
        let leaf = child_of(&mid, c.id);
        let sibling = child_of(&root, b.id);
        [root, mid, leaf, sibling]
    };
    let insert = |s: Arc<dyn Store>, ts: [TokenRecord; 4]| async move {
        for t in ts {
            one(&s, Mutation::InsertToken(t)).await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    // A token: itself and everything below it.
    let [root, mid, leaf, sibling] = tree(None);
    insert(s.clone(), [root.clone(), mid.clone(), leaf.clone(), sibling.clone()]).await?;
    ensure!(one(&s, Mutation::RevokeToken { jti: mid.jti, at: t0() }).await? == 2, "mid and leaf");
    ensure!(
        !live(s.clone(), leaf.jti).await? && live(s.clone(), root.jti).await? && live(s.clone(), sibling.jti).await?
    );
    ensure!(one(&s, Mutation::RevokeToken { jti: root.jti, at: t0() }).await? == 2, "root and sibling");
    // An agent: every token whose chain contains it.
    let [root, mid, leaf, sibling] = tree(None);
    insert(s.clone(), [root.clone(), mid.clone(), leaf.clone(), sibling.clone()]).await?;
    ensure!(one(&s, Mutation::RevokeTokensOfAgent { agent: b.id, at: t0() }).await? == 3, "mid, leaf, sibling");
    ensure!(live(s.clone(), root.jti).await? && !live(s.clone(), leaf.jti).await?);
    one(&s, Mutation::RevokeToken { jti: root.jti, at: t0() }).await?;
    // A refresh family: its access tokens and their descendants.
    let [root, mid, leaf, sibling] = tree(Some("fam-1"));
    insert(s.clone(), [root.clone(), mid.clone(), leaf.clone(), sibling.clone()]).await?;
    ensure!(one(&s, Mutation::RevokeTokensOfFamily { family: "fam-1".into(), at: t0() }).await? == 4);
    // A grant: every token under it.
    let [root, mid, leaf, sibling] = tree(None);
    insert(s.clone(), [root, mid, leaf.clone(), sibling]).await?;
    ensure!(one(&s, Mutation::RevokeTokensOfGrant { grant: g.id, at: t0() }).await? == 4);
    // An owner: every token of their agents and below.
    let [root, mid, leaf, sibling] = tree(None);
    insert(s.clone(), [root, mid, leaf.clone(), sibling]).await?;
    ensure!(one(&s, Mutation::RevokeTokensOfOwnedAgents { owner: u.id, at: t0() }).await? == 4);
    ensure!(!live(s.clone(), leaf.jti).await?);
    Ok(())
}

async fn refresh_rotation_admits_one_use(s: Arc<dyn Store>) -> Result<()> {
    let (_, a, _, g) = people(&s, "rt@example.com").await?;
    let refresh = |hash: &str| RefreshRecord {
        hash: hash.into(),
        family: "fam-r".into(),
        grant: g.id,
        client_id: a.id,
        scopes: g.scopes.clone(),
        issued_at: t0(),
        expires_at: g.expires_at,
        used_at: None,
        revoked_at: None,
        cnf_jkt: Some("bound-jkt".into()),
    };
    one(&s, Mutation::InsertRefresh(refresh("h1"))).await?;
    ensure!(s.refresh("h1").await? == Some(refresh("h1")), "refresh token did not round-trip");
    one(&s, Mutation::UseRefresh { hash: "h1".into(), at: t0() }).await?;
    ensure!(matches!(
        one(&s, Mutation::UseRefresh { hash: "h1".into(), at: t0() }).await,
        Err(StoreError::Conflict(_))
    ));
    // Concurrent uses of one token: exactly one wins.
    one(&s, Mutation::InsertRefresh(refresh("h2"))).await?;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.commit(Change::new().with(Mutation::UseRefresh { hash: "h2".into(), at: t0() })).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await? {
            Ok(_) => won += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    ensure!(won == 1, "{won} concurrent uses of one refresh token succeeded");
    one(&s, Mutation::InsertRefresh(refresh("h3"))).await?;
    ensure!(one(&s, Mutation::RevokeRefreshFamily { family: "fam-r".into(), at: t0() }).await? == 3);
    ensure!(matches!(
        one(&s, Mutation::UseRefresh { hash: "h3".into(), at: t0() }).await,
        Err(StoreError::Conflict(_))
    ));
    Ok(())
}

/// SECURITY row 24: a revocation racing an exchange either makes the
/// exchange fail or reaches the child; never a live child of a revoked
/// parent. 1,000 races.
async fn revoking_a_parent_during_its_exchange_never_leaves_a_live_child(s: Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(&s, "race@example.com").await?;
    let (mut inserted, mut refused) = (0, 0);
    for _ in 0..1000 {
        let mut parent = token(a.id, &u.id.to_string());
        parent.grant = Some(g.id);
        one(&s, Mutation::InsertToken(parent.clone())).await?;
        let child = child_of(&parent, b.id);
        let (s1, s2) = (s.clone(), s.clone());
        let jti = parent.jti;
        let revoke =
            tokio::spawn(async move { s1.commit(Change::new().with(Mutation::RevokeToken { jti, at: t0() })).await });
        let c = child.clone();
        let exchange = tokio::spawn(async move { s2.commit(Change::new().with(Mutation::InsertToken(c))).await });
        revoke.await??;
        match exchange.await? {
            Ok(_) => inserted += 1,
            Err(StoreError::Conflict(_)) => refused += 1,
            Err(e) => return Err(e.into()),
        }
        let stored = s.token(child.jti).await?;
        ensure!(stored.is_none_or(|t| t.revoked_at.is_some()), "a live child of a revoked parent");
    }
    tracing_note(inserted, refused);
    Ok(())
}

fn tracing_note(inserted: u32, refused: u32) {
    eprintln!("race: {inserted} children inserted then revoked, {refused} exchanges refused");
}

async fn appends_report_their_seq(s: Arc<dyn Store>) -> Result<()> {
    let before = s.audit_head().await?.map(|(seq, _)| seq).unwrap_or(0);
    let event = Event::new("test.seq", "2026-01-01T00:00:00.000000000Z");
    let appended = one(&s, AuditRecord::new(event.clone()).mutation()).await?;
    ensure!(appended == before + 1, "append reported {appended}");
    let (r1, r2) =
        tokio::join!(one(&s, AuditRecord::new(event.clone()).mutation()), one(&s, AuditRecord::new(event).mutation()));
    let mut seqs: Vec<u64> = vec![r1?, r2?];
    seqs.sort_unstable();
    ensure!(seqs == vec![before + 2, before + 3], "concurrent appends reported {seqs:?}");
    Ok(())
}

async fn dpop_proofs_are_single_use(s: Arc<dyn Store>) -> Result<()> {
    let burn = |key: &str| Mutation::ConsumeDpopJti { key: key.into(), expires_at: t0() + Duration::minutes(1) };
    one(&s, burn("proof-1")).await?;
    ensure!(matches!(one(&s, burn("proof-1")).await, Err(StoreError::DpopReplay)), "a replayed proof was accepted");
    // The replay wrote nothing: a change holding it and a token is refused whole.
    let (_, a, _, _) = people(&s, "dpop@example.com").await?;
    let t = token(a.id, &a.id.to_string());
    let refused = s.commit(Change::new().with(burn("proof-1")).with(Mutation::InsertToken(t.clone()))).await;
    ensure!(matches!(refused, Err(StoreError::DpopReplay)), "expected a replay, got {refused:?}");
    ensure!(s.token(t.jti).await?.is_none(), "a token was written with a replayed proof");
    one(&s, burn("proof-2")).await?;
    // Forgotten once too old to be accepted anyway.
    one(&s, Mutation::PurgeExpiredJtis { before: t0() + Duration::minutes(2) }).await?;
    one(&s, burn("proof-1")).await?;
    Ok(())
}

async fn status_indexes_never_repeat(s: Arc<dyn Store>) -> Result<()> {
    let before = s.status_indexes_reserved().await?;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut firsts = Vec::new();
            for _ in 0..8 {
                firsts.push(one(&s, Mutation::ReserveStatusIndexes { count: 100 }).await?);
            }
            Ok::<_, StoreError>(firsts)
        }));
    }
    let mut firsts = Vec::new();
    for t in tasks {
        firsts.extend(t.await??);
    }
    firsts.sort_unstable();
    ensure!(firsts.len() == 128, "expected 128 reservations");
    ensure!(firsts.windows(2).all(|w| matches!(w, [a, b] if *b >= a + 100)), "reserved blocks overlap: {firsts:?}");
    ensure!(firsts.first().is_some_and(|f| *f >= before), "a block reused indexes below {before}");
    ensure!(s.status_indexes_reserved().await? == before + 12_800, "the counter did not advance by 12,800");
    Ok(())
}

async fn revoked_tokens_show_in_their_status_list(s: Arc<dyn Store>) -> Result<()> {
    let (_, a, _, _) = people(&s, "status@example.com").await?;
    let base = one(&s, Mutation::ReserveStatusIndexes { count: 4 }).await?;
    let mut parent = token(a.id, &a.id.to_string());
    parent.status_idx = Some(base);
    let mut child = token(a.id, &a.id.to_string());
    child.parent = Some(parent.jti);
    child.status_idx = Some(base + 1);
    let mut other = token(a.id, &a.id.to_string());
    other.status_idx = Some(base + 2);
    for t in [&parent, &child, &other] {
        one(&s, Mutation::InsertToken(t.clone())).await?;
    }
    ensure!(s.token(child.jti).await?.and_then(|t| t.status_idx) == Some(base + 1), "status_idx did not round-trip");
    ensure!(s.revoked_status_indexes(base, base + 4).await?.is_empty(), "nothing is revoked yet");
    one(&s, Mutation::RevokeToken { jti: parent.jti, at: t0() }).await?;
    let mut revoked = s.revoked_status_indexes(base, base + 4).await?;
    revoked.sort_unstable();
    ensure!(revoked == vec![base, base + 1], "the cascade must show in the list: {revoked:?}");
    ensure!(s.revoked_status_indexes(base + 2, base + 4).await?.is_empty(), "ranges are half-open");
    Ok(())
}

async fn sessions_round_trip_and_end(s: Arc<dyn Store>) -> Result<()> {
    let (u, _, _, _) = people(&s, "session@example.com").await?;
    let r = SessionRecord {
        hash: "session-hash".into(),
        user: u.id,
        csrf: "csrf-token".into(),
        created_at: t0(),
        expires_at: t0() + Duration::hours(8),
        revoked_at: None,
    };
    one(&s, Mutation::InsertSession(r.clone())).await?;
    ensure!(s.session("session-hash").await? == Some(r.clone()), "session did not round-trip");
    ensure!(s.session("other").await?.is_none());
    ensure!(matches!(one(&s, Mutation::InsertSession(r)).await, Err(StoreError::Conflict(_))), "duplicate session");
    ensure!(one(&s, Mutation::RevokeSession { hash: "session-hash".into(), at: t0() }).await? == 1);
    ensure!(one(&s, Mutation::RevokeSession { hash: "session-hash".into(), at: t0() }).await? == 0, "ended twice");
    ensure!(s.session("session-hash").await?.and_then(|x| x.revoked_at) == Some(t0()));
    Ok(())
}

async fn an_authorization_code_is_used_once(s: Arc<dyn Store>) -> Result<()> {
    let (u, a, _, g) = people(&s, "code@example.com").await?;
    let c = AuthCodeRecord {
        hash: "code-hash".into(),
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
    };
    one(&s, Mutation::InsertAuthCode(c.clone())).await?;
    ensure!(s.auth_code("code-hash").await? == Some(c), "code did not round-trip");
    // Eight redemptions at once: exactly one wins.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(
            async move { one(&s, Mutation::UseAuthCode { hash: "code-hash".into(), at: t0() }).await },
        ));
    }
    let mut won = 0;
    for t in tasks {
        match t.await? {
            Ok(_) => won += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    ensure!(won == 1, "{won} redemptions of one code won");
    ensure!(s.auth_code("code-hash").await?.and_then(|x| x.used_at) == Some(t0()));
    Ok(())
}

async fn agents_are_listed_by_owner(s: Arc<dyn Store>) -> Result<()> {
    let (u, a, b, _) = people(&s, "owner@example.com").await?;
    let (other, _, _, _) = people(&s, "owner2@example.com").await?;
    let mine: Vec<_> = s.agents_owned_by(u.id).await?.into_iter().map(|x| x.id).collect();
    let mut expected = vec![a.id, b.id];
    expected.sort();
    ensure!(mine == expected, "agents of the owner: {mine:?}");
    ensure!(s.agents_owned_by(other.id).await?.len() == 2);
    Ok(())
}
