//! The store conformance suite. Every store runs the same cases; a store
//! passes when each case does.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{Change, Mutation, Store, StoreError, StoredKey, StoredPolicy};
use mandate_model::records::{Agent, AgentKind, AgentStatus, ClientId, Resource, TokenRecord, User, UserStatus};
use mandate_model::{AgentId, Jti, ResourceId, ScopeSet, UserId};
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
fn t0() -> OffsetDateTime {
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
        revoked_at: None,
    }
}

async fn one(store: &Arc<dyn Store>, m: Mutation) -> Result<u64, StoreError> {
    store.commit(Change::new().with(m)).await.map(|v| v.first().copied().unwrap_or(0))
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
    one(&s, Mutation::InsertUserToken { hash: "h1".into(), user: u.id, created_at: t0() }).await?;
    ensure!(s.user_by_token_hash("h1").await? == Some(u.id));
    ensure!(s.user_by_token_hash("h2").await?.is_none());
    ensure!(s.user(UserId::from_ulid(ulid())).await?.is_none());
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
    one(&s, Mutation::SetAgentStatus { id: parent.id, from: AgentStatus::Active, to: AgentStatus::Suspended, at })
        .await?;
    let stale =
        one(&s, Mutation::SetAgentStatus { id: parent.id, from: AgentStatus::Active, to: AgentStatus::Retired, at })
            .await;
    ensure!(matches!(stale, Err(StoreError::Conflict(_))), "status change from a stale status accepted");
    ensure!(s.agent(parent.id).await?.map(|a| a.status) == Some(AgentStatus::Suspended));
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
    let k1 = StoredKey {
        kid: "k1".into(),
        alg: "EdDSA".into(),
        wrapped_private: vec![1, 2, 3, 0, 255],
        created_at: t0(),
        retired_at: None,
    };
    let k2 = StoredKey {
        kid: "k2".into(),
        alg: "ES256".into(),
        wrapped_private: vec![9; 64],
        created_at: t0() + Duration::seconds(1),
        retired_at: None,
    };
    one(&s, Mutation::InsertSigningKey(k1.clone())).await?;
    s.commit(
        Change::new()
            .with(Mutation::InsertSigningKey(k2.clone()))
            .with(Mutation::RetireSigningKeys { keep: "k2".into(), at: t0() + Duration::seconds(2) }),
    )
    .await?;
    let keys = s.signing_keys().await?;
    ensure!(keys.len() == 2);
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
    let t_child2 = token(child.id, "y");
    one(&s, Mutation::InsertToken(t_child2.clone())).await?;
    ensure!(
        one(&s, Mutation::RetireExpiredAgents { at: t0() + Duration::minutes(59) }).await? == 0,
        "retired before expiry"
    );
    ensure!(one(&s, Mutation::RetireExpiredAgents { at: t0() + Duration::hours(1) }).await? == 1);
    ensure!(s.agent(child.id).await?.map(|a| a.status) == Some(AgentStatus::Retired));
    ensure!(s.agent(mine.id).await?.map(|a| a.status) == Some(AgentStatus::Active), "a persistent agent was retired");
    ensure!(s.token(t_child2.jti).await?.and_then(|t| t.revoked_at).is_some(), "the expired agent's token lives on");
    Ok(())
}
