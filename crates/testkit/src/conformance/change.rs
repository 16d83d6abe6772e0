//! What every change guarantees: all of it or nothing, references to
//! records that exist, and an epoch that moves with anything a cache of
//! liveness or decisions depends on.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{ApprovalQuery, Change, GrantQuery, KeyUse, Mutation, Store, StoreError, StoredKey};
use mandate_model::records::{
    AgentStatus, Approval, ApprovalStatus, ApprovalSubject, ClientId, SessionRecord, SuspendedBy, UserToken,
};
use mandate_model::{AgentId, ApprovalId, GrantId, UserId, UserTokenId};
use time::Duration;

use super::fixtures::{
    agent, all_events, append, auth_code, child_of, event, grant, intact, one, pending_grant_approval, people, refresh,
    resource, t0, token, ulid, user,
};

pub async fn a_failed_change_writes_nothing(s: &Arc<dyn Store>) -> Result<()> {
    let u = user("atomic@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    let a = agent(u.id, None);
    one(s, Mutation::InsertAgent(a.clone())).await?;
    let client = ClientId::Agent(a.id);
    one(s, Mutation::ConsumeAssertionJti { client, jti: "used".into(), expires_at: t0() }).await?;
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
    ensure!(matches!(r1, Err(StoreError::Replay)) && r2.is_ok(), "{r1:?} {r2:?}");
    ensure!(s.token(good.jti).await?.is_some());
    // An empty change commits and reports nothing.
    ensure!(s.commit(Change::new()).await.is_ok(), "an empty change failed");
    Ok(())
}

/// Everything a store answers, to compare before and after a change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    users: Vec<Option<mandate_model::records::User>>,
    user_tokens: Vec<UserToken>,
    agents: Vec<mandate_model::records::Agent>,
    resources: Vec<mandate_model::records::Resource>,
    policy: Option<mandate_core::store::StoredPolicy>,
    keys: Vec<StoredKey>,
    tokens: Vec<Option<mandate_model::records::TokenRecord>>,
    grants: Vec<mandate_model::records::Grant>,
    approvals: Vec<Approval>,
    refresh: Option<mandate_model::records::RefreshRecord>,
    session: Option<SessionRecord>,
    code: Option<mandate_model::records::AuthCodeRecord>,
    setting: Option<String>,
    reserved: u64,
    revoked: Vec<u64>,
    head: Option<(u64, String)>,
    events: usize,
    checkpoints: Vec<mandate_audit::Checkpoint>,
}

/// One change that writes every kind of record and revokes every way,
/// then fails on its last mutation: afterwards the store answers exactly
/// as before, and the jtis it burned are unburned.
pub async fn a_change_failing_late_undoes_every_kind_of_write(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(s, "late@example.com").await?;
    let base = one(s, Mutation::ReserveStatusIndexes { count: 4 }).await?;
    let mut root = token(a.id, &u.id.to_string());
    root.grant = Some(g.id);
    root.family = Some("fam-r".into());
    root.status_idx = Some(base);
    let mut child = child_of(&root, b.id);
    child.status_idx = Some(base + 1);
    for t in [&root, &child] {
        one(s, Mutation::InsertToken(t.clone())).await?;
    }
    one(s, Mutation::InsertRefresh(refresh("h1", &g, a.id))).await?;
    let pending = pending_grant_approval(&u, &a, &g);
    one(s, Mutation::InsertApproval(pending.clone())).await?;
    let session = SessionRecord {
        hash: "session".into(),
        user: u.id,
        csrf: "csrf".into(),
        created_at: t0(),
        expires_at: t0() + Duration::hours(1),
        revoked_at: None,
    };
    one(s, Mutation::InsertSession(session.clone())).await?;
    one(s, Mutation::InsertAuthCode(auth_code("code", &u, &a, &g))).await?;
    let api_token = UserToken {
        id: UserTokenId::from_ulid(ulid()),
        user: u.id,
        created_at: t0(),
        expires_at: t0() + Duration::days(1),
        revoked_at: None,
    };
    one(s, Mutation::InsertUserToken { token: api_token.clone(), hash: "api".into() }).await?;
    let key = |kid: &str| StoredKey {
        kid: kid.into(),
        alg: "EdDSA".into(),
        purpose: KeyUse::Token,
        wrapped_private: vec![1],
        public_jwk: None,
        created_at: t0(),
        retired_at: None,
    };
    one(s, Mutation::InsertSigningKey(key("k1"))).await?;
    let client = ClientId::Agent(a.id);
    let far = t0() + Duration::days(1);
    one(s, Mutation::ConsumeAssertionJti { client, jti: "old".into(), expires_at: far }).await?;
    one(s, Mutation::ConsumeDpopJti { key: "old-proof".into(), expires_at: far }).await?;
    one(s, append(event("token.issued", "agt_before"))).await?;

    let snapshot = || async {
        Ok::<_, anyhow::Error>(Snapshot {
            users: vec![s.user(u.id).await?, s.user_by_email("new@example.com").await?],
            user_tokens: s.user_tokens(u.id).await?,
            agents: s.agents_owned_by(u.id).await?,
            resources: s.resources().await?,
            policy: s.current_policy().await?,
            keys: s.signing_keys().await?,
            tokens: vec![s.token(root.jti).await?, s.token(child.jti).await?],
            grants: s.grants(&GrantQuery { user: Some(u.id), limit: 100, ..GrantQuery::default() }).await?,
            approvals: s
                .approvals(&ApprovalQuery { approver: Some(u.id), limit: 100, ..ApprovalQuery::default() })
                .await?,
            refresh: s.refresh("h1").await?,
            session: s.session("session").await?,
            code: s.auth_code("code").await?,
            setting: s.setting("late").await?,
            reserved: s.status_indexes_reserved().await?,
            revoked: s.revoked_status_indexes(base, base + 4).await?,
            head: s.audit_head().await?,
            events: all_events(s).await?.len(),
            checkpoints: s.audit_checkpoints(0, 100).await?,
        })
    };
    let before = snapshot().await?;

    let now = t0() + Duration::seconds(1);
    let newcomer = user("new@example.com");
    let new_agent = agent(u.id, None);
    let new_grant = grant(u.id, a.id);
    let mut new_token = token(a.id, &u.id.to_string());
    new_token.grant = Some(g.id);
    let mut new_approval = pending.clone();
    new_approval.id = ApprovalId::from_ulid(ulid());
    let mut changed_user = u.clone();
    changed_user.groups = vec!["changed".into()];
    let new_session = SessionRecord { hash: "session-2".into(), ..session };
    let mut new_refresh = refresh("h2", &g, a.id);
    new_refresh.family = "fam-2".into();
    let new_api_token = UserToken { id: UserTokenId::from_ulid(ulid()), ..api_token.clone() };
    let mut cp = mandate_audit::Checkpoint {
        seq: 1,
        hash: String::new(),
        time: "2026-11-23T10:00:00.000000Z".into(),
        kid: "a1".into(),
        signature: "sig".into(),
    };
    cp.hash = before.head.clone().map(|(_, h)| h).unwrap_or_default();
    let everything = vec![
        Mutation::PutSettingIfAbsent { key: "late".into(), value: "x".into() },
        Mutation::InsertUser(newcomer.clone()),
        Mutation::UpdateUser(changed_user),
        Mutation::InsertUserToken { token: new_api_token, hash: "api-2".into() },
        Mutation::RevokeUserToken { id: api_token.id, user: u.id, at: now },
        Mutation::InsertAgent(new_agent.clone()),
        Mutation::SetAgentStatus {
            id: a.id,
            from: AgentStatus::Active,
            to: AgentStatus::Suspended,
            at: now,
            by: Some(SuspendedBy::Admin),
        },
        Mutation::InsertResource(resource("https://late.example")),
        Mutation::PutPolicy(mandate_core::store::StoredPolicy {
            version: "late".into(),
            text: "forbid(principal, action, resource);".into(),
            created_at: now,
            author: Some("admin".into()),
        }),
        Mutation::InsertSigningKey(key("k2")),
        Mutation::RetireSigningKeys { purpose: KeyUse::Token, keep: "k2".into(), at: now },
        Mutation::ConsumeAssertionJti { client, jti: "new".into(), expires_at: far },
        Mutation::ConsumeDpopJti { key: "new-proof".into(), expires_at: far },
        Mutation::InsertSession(new_session),
        Mutation::RevokeSession { hash: "session".into(), at: now },
        Mutation::UseAuthCode { hash: "code".into(), at: now },
        Mutation::InsertAuthCode(auth_code("code-2", &u, &a, &g)),
        Mutation::ReserveStatusIndexes { count: 10 },
        Mutation::InsertToken(new_token.clone()),
        Mutation::TouchGrant { id: g.id, at: now },
        Mutation::InsertGrant(new_grant.clone()),
        Mutation::InsertApproval(new_approval.clone()),
        Mutation::DecideApproval {
            id: pending.id,
            to: ApprovalStatus::Approved,
            by: u.id.to_string(),
            grant: Some(new_grant.id),
            at: now,
        },
        Mutation::PollApproval { id: new_approval.id, at: now },
        Mutation::InsertRefresh(new_refresh),
        Mutation::UseRefresh { hash: "h1".into(), at: now },
        Mutation::RevokeToken { jti: child.jti, at: now },
        Mutation::RevokeTokensOfAgent { agent: a.id, at: now },
        Mutation::RevokeTokensOfSubject { subject: u.id.to_string(), at: now },
        Mutation::RevokeTokensOfOwnedAgents { owner: u.id, at: now },
        Mutation::RevokeTokensOfGrant { grant: g.id, at: now },
        Mutation::RevokeTokensOfFamily { family: "fam-r".into(), at: now },
        Mutation::RevokeRefreshFamily { family: "fam-r".into(), at: now },
        Mutation::RevokeGrant { id: g.id, at: now },
        Mutation::RevokeGrantsOfUser { user: u.id, at: now },
        Mutation::RevokeGrantsOfAgent { agent: a.id, at: now },
        Mutation::PurgeExpiredJtis { before: far + Duration::days(1) },
        append(event("token.issued", "agt_during")),
        Mutation::InsertCheckpoint(cp),
        // Fails: the refresh token was used above, in this very change.
        Mutation::UseRefresh { hash: "h1".into(), at: now },
    ];
    let failed = s.commit(everything.into_iter().collect()).await;
    ensure!(matches!(failed, Err(StoreError::Conflict(_))), "the change should fail on its last mutation: {failed:?}");
    let after = snapshot().await?;
    ensure!(after == before, "the failed change left writes behind:\nbefore {before:?}\nafter  {after:?}");
    ensure!(s.token(new_token.jti).await?.is_none() && s.grant(new_grant.id).await?.is_none());
    ensure!(s.approval(new_approval.id).await?.is_none() && s.agent(new_agent.id).await?.is_none());
    ensure!(s.refresh("h2").await?.is_none() && s.session("session-2").await?.is_none());
    ensure!(s.auth_code("code-2").await?.is_none() && s.user_token_by_hash("api-2").await?.is_none());
    // What it burned is unburned, and what it purged is still burned.
    one(s, Mutation::ConsumeAssertionJti { client, jti: "new".into(), expires_at: far }).await?;
    one(s, Mutation::ConsumeDpopJti { key: "new-proof".into(), expires_at: far }).await?;
    let old = one(s, Mutation::ConsumeAssertionJti { client, jti: "old".into(), expires_at: far }).await;
    ensure!(matches!(old, Err(StoreError::Replay)), "the failed change's purge was kept: {old:?}");
    let old = one(s, Mutation::ConsumeDpopJti { key: "old-proof".into(), expires_at: far }).await;
    ensure!(matches!(old, Err(StoreError::DpopReplay)), "the failed change's purge was kept: {old:?}");
    // And the trail goes on from where it was.
    let seq = one(s, append(event("token.issued", "agt_after"))).await?;
    // (A store with several lanes may leave a gap in `seq` where the
    // failed change's event was numbered; it never keeps the event.)
    ensure!(before.head.is_some_and(|(head, _)| seq > head), "the trail went back");
    ensure!(all_events(s).await?.len() == before.events + 1, "the trail moved on by a failed change");
    ensure!(super::fixtures::intact(s).await? == before.events as u64 + 1);
    Ok(())
}

/// Records name other records only when those exist: a reference to a
/// missing one is a `Conflict`, and nothing is written.
pub async fn records_refer_only_to_records_that_exist(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, _, g) = people(s, "refs@example.com").await?;
    let nobody = UserId::from_ulid(ulid());
    let no_agent = AgentId::from_ulid(ulid());
    let no_grant = GrantId::from_ulid(ulid());
    let refused = |m: Mutation, what: &'static str| async move {
        let r = one(s, m).await;
        ensure!(matches!(r, Err(StoreError::Conflict(_))), "{what}: expected a conflict, got {r:?}");
        Ok::<_, anyhow::Error>(())
    };
    let orphan = agent(nobody, None);
    refused(Mutation::InsertAgent(orphan.clone()), "an agent with a missing owner").await?;
    ensure!(s.agent(orphan.id).await?.is_none());
    let stray = agent(u.id, Some(no_agent));
    refused(Mutation::InsertAgent(stray.clone()), "an agent with a missing parent").await?;
    ensure!(s.agent(stray.id).await?.is_none());
    let ut = UserToken {
        id: UserTokenId::from_ulid(ulid()),
        user: nobody,
        created_at: t0(),
        expires_at: t0() + Duration::days(1),
        revoked_at: None,
    };
    refused(Mutation::InsertUserToken { token: ut, hash: "stray".into() }, "a token of a missing user").await?;
    ensure!(s.user_token_by_hash("stray").await?.is_none());
    for (gr, what) in
        [(grant(nobody, a.id), "a grant from a missing user"), (grant(u.id, no_agent), "to a missing agent")]
    {
        refused(Mutation::InsertGrant(gr.clone()), what).await?;
        ensure!(s.grant(gr.id).await?.is_none());
    }
    let approval = Approval {
        id: ApprovalId::from_ulid(ulid()),
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
    };
    let variants = [
        (Approval { agent: no_agent, ..approval.clone() }, "an approval for a missing agent"),
        (Approval { user: nobody, ..approval.clone() }, "for a missing user"),
        (Approval { approver: nobody, ..approval.clone() }, "decided by a missing user"),
        (Approval { grant: Some(no_grant), ..approval.clone() }, "under a missing grant"),
    ];
    for (mut x, what) in variants {
        x.id = ApprovalId::from_ulid(ulid());
        refused(Mutation::InsertApproval(x.clone()), what).await?;
        ensure!(s.approval(x.id).await?.is_none());
    }
    // A decision may not point at a missing grant either; it stays pending.
    one(s, Mutation::InsertApproval(approval.clone())).await?;
    let decide = Mutation::DecideApproval {
        id: approval.id,
        to: ApprovalStatus::Approved,
        by: u.id.to_string(),
        grant: Some(no_grant),
        at: t0(),
    };
    refused(decide, "a decision naming a missing grant").await?;
    ensure!(s.approval(approval.id).await?.map(|x| x.status) == Some(ApprovalStatus::Pending));
    let mut r = refresh("stray", &g, a.id);
    r.grant = no_grant;
    refused(Mutation::InsertRefresh(r), "a refresh token under a missing grant").await?;
    ensure!(s.refresh("stray").await?.is_none());
    let session = SessionRecord {
        hash: "stray".into(),
        user: nobody,
        csrf: "csrf".into(),
        created_at: t0(),
        expires_at: t0() + Duration::hours(1),
        revoked_at: None,
    };
    refused(Mutation::InsertSession(session), "a session of a missing user").await?;
    ensure!(s.session("stray").await?.is_none());
    let code = auth_code("stray", &u, &a, &g);
    let codes = [
        (mandate_model::records::AuthCodeRecord { agent: no_agent, ..code.clone() }, "a code for a missing agent"),
        (mandate_model::records::AuthCodeRecord { user: nobody, ..code.clone() }, "for a missing user"),
        (mandate_model::records::AuthCodeRecord { grant: no_grant, ..code.clone() }, "under a missing grant"),
    ];
    for (c, what) in codes {
        refused(Mutation::InsertAuthCode(c), what).await?;
        ensure!(s.auth_code("stray").await?.is_none());
    }
    Ok(())
}

/// Every mutation that [`Mutation::invalidates`] moves the epoch once its
/// change commits, even when it changes no row; and a read after the new
/// epoch sees the change.
pub async fn the_epoch_moves_with_every_invalidating_change(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, b, g) = people(s, "epoch@example.com").await?;
    let mut t = token(a.id, &u.id.to_string());
    t.grant = Some(g.id);
    one(s, Mutation::InsertToken(t.clone())).await?;
    let pending = pending_grant_approval(&u, &a, &g);
    one(s, Mutation::InsertApproval(pending.clone())).await?;
    let mut disabled = u.clone();
    disabled.status = mandate_model::records::UserStatus::Disabled;
    let at = t0();
    let invalidating = vec![
        Mutation::RevokeToken { jti: t.jti, at },
        Mutation::UpdateUser(disabled),
        Mutation::RevokeUserToken { id: UserTokenId::from_ulid(ulid()), user: u.id, at },
        Mutation::SetAgentStatus {
            id: b.id,
            from: AgentStatus::Active,
            to: AgentStatus::Suspended,
            at,
            by: Some(SuspendedBy::Admin),
        },
        Mutation::RevokeTokensOfAgent { agent: a.id, at },
        Mutation::RevokeTokensOfSubject { subject: u.id.to_string(), at },
        Mutation::RevokeTokensOfOwnedAgents { owner: u.id, at },
        Mutation::RevokeTokensOfGrant { grant: g.id, at },
        Mutation::RevokeTokensOfFamily { family: "none".into(), at },
        Mutation::DecideApproval { id: pending.id, to: ApprovalStatus::Denied, by: u.id.to_string(), grant: None, at },
        Mutation::RevokeGrant { id: g.id, at },
        Mutation::RevokeGrantsOfUser { user: u.id, at },
        Mutation::RevokeGrantsOfAgent { agent: a.id, at },
        // Who a workload token's issuer and subject find (DESIGN §10).
        Mutation::InsertAgent(mandate_model::records::Agent {
            federated_credentials: vec![mandate_model::records::FederatedCredential {
                issuer: "https://ci.example".into(),
                subject: Some("job".into()),
                subject_pattern: None,
                audiences: Vec::new(),
                claims: Default::default(),
                single_use: false,
            }],
            ..super::fixtures::agent(u.id, None)
        }),
        Mutation::SetFederatedCredentials { id: a.id, credentials: Vec::new(), at },
    ];
    for m in invalidating {
        ensure!(m.invalidates(), "{m:?} does not invalidate");
        let before = s.epoch().await?;
        let what = format!("{m:?}");
        one(s, m).await?;
        ensure!(s.epoch().await? != before, "the epoch stayed at {before} after {what}");
    }
    // And the reads after it see what moved it.
    ensure!(s.token(t.jti).await?.is_some_and(|x| x.revoked_at.is_some()));
    ensure!(s.agent(b.id).await?.map(|x| x.status) == Some(AgentStatus::Suspended));
    ensure!(s.approval(pending.id).await?.map(|x| x.status) == Some(ApprovalStatus::Denied));
    Ok(())
}

/// An issuance as a request decided at `epoch` commits it (decision 0042):
/// its client assertion's `jti`, its token and its event, expecting the
/// epoch still to be `epoch`.
pub(crate) fn issuance_at(agent: AgentId, jti: &str, t: &mandate_model::records::TokenRecord, epoch: u64) -> Change {
    let mut change = issuance(agent, jti, t);
    change.expect_epoch(epoch);
    change
}

/// A plain `client_credentials` issuance: the assertion's `jti` burned, the
/// token, its event.
pub(crate) fn issuance(agent: AgentId, jti: &str, t: &mandate_model::records::TokenRecord) -> Change {
    let client = ClientId::Agent(agent);
    Change::new()
        .with(Mutation::ConsumeAssertionJti { client, jti: jti.into(), expires_at: t0() + Duration::hours(1) })
        .with(Mutation::InsertToken(t.clone()))
        .with(append(event("token.issued", &agent.to_string())))
}

/// A change that expects the epoch it was decided at is applied only while
/// the epoch is still that one (decision 0042). Once it moved, the change
/// fails with `Moved` and writes nothing: no token, no event, no burned
/// `jti` (the same issuance stands at the new epoch), and no lifecycle
/// change either.
pub async fn a_change_expecting_a_moved_epoch_writes_nothing(s: &Arc<dyn Store>) -> Result<()> {
    let (_, a, b, _) = people(s, "expect@example.com").await?;
    let before = intact(s).await?;
    let decided = s.epoch().await?;
    let first = token(a.id, "first");
    s.commit(issuance_at(a.id, "j1", &first, decided)).await?;
    ensure!(s.token(first.jti).await?.is_some(), "an issuance at the current epoch left no token");
    ensure!(s.epoch().await? == decided, "a plain issuance moved the epoch");
    // Another request suspends b: the epoch moves.
    let at = t0();
    let suspend = |id, from, to| Mutation::SetAgentStatus { id, from, to, at, by: Some(SuspendedBy::Admin) };
    one(s, suspend(b.id, AgentStatus::Active, AgentStatus::Suspended)).await?;
    let now = s.epoch().await?;
    ensure!(now != decided, "the suspension did not move the epoch");
    let late = token(a.id, "late");
    match s.commit(issuance_at(a.id, "j2", &late, decided)).await {
        Err(StoreError::Moved) => {}
        other => anyhow::bail!("an issuance decided at a moved epoch was answered {other:?}"),
    }
    ensure!(s.token(late.jti).await?.is_none(), "a refused issuance left its token");
    ensure!(intact(s).await? == before + 1, "a refused issuance left its event");
    // Its jti was not burned: decided again, at the new epoch, it stands.
    s.commit(issuance_at(a.id, "j2", &late, now)).await?;
    ensure!(s.token(late.jti).await?.is_some());
    // A lifecycle change expecting the old epoch is refused alike.
    let mut resume = Change::new().with(suspend(b.id, AgentStatus::Suspended, AgentStatus::Active));
    resume.expect_epoch(decided);
    ensure!(matches!(s.commit(resume).await, Err(StoreError::Moved)), "a stale lifecycle change was applied");
    ensure!(s.agent(b.id).await?.map(|x| x.status) == Some(AgentStatus::Suspended));
    ensure!(s.epoch().await? == now, "a refused change moved the epoch");
    ensure!(intact(s).await? == before + 2);
    Ok(())
}
