//! Settings, people (users, their API tokens, sessions), agents and their
//! status, resources and the policy set.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{AgentListQuery, Change, Mutation, Store, StoreError, StoredPolicy};
use mandate_model::UserId;
use mandate_model::records::{
    AgentStatus, FederatedCredential, SessionRecord, SuspendedBy, UpstreamLink, UserStatus, UserToken,
};
use time::Duration;

use super::fixtures::{agent, one, people, resource, t0, ulid, user};

pub async fn settings_are_set_once(s: &Arc<dyn Store>) -> Result<()> {
    ensure!(s.setting("k").await?.is_none());
    ensure!(one(s, Mutation::PutSettingIfAbsent { key: "k".into(), value: "v1".into() }).await? == 1);
    ensure!(one(s, Mutation::PutSettingIfAbsent { key: "k".into(), value: "v2".into() }).await? == 0);
    ensure!(s.setting("k").await?.as_deref() == Some("v1"));
    Ok(())
}

pub async fn users_round_trip_and_stay_unique(s: &Arc<dyn Store>) -> Result<()> {
    let u = user("ada@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    ensure!(s.user(u.id).await? == Some(u.clone()), "user did not round-trip");
    ensure!(s.user_by_email("ada@example.com").await?.map(|x| x.id) == Some(u.id));
    let mut twin = user("ada@example.com");
    twin.name = "Twin".into();
    ensure!(
        matches!(one(s, Mutation::InsertUser(twin)).await, Err(StoreError::Conflict(_))),
        "duplicate email accepted"
    );
    let mut same_id = user("other@example.com");
    same_id.id = u.id;
    ensure!(
        matches!(one(s, Mutation::InsertUser(same_id)).await, Err(StoreError::Conflict(_))),
        "duplicate id accepted"
    );
    // An update changes groups, attributes and status, and nothing else.
    let mut changed = u.clone();
    changed.groups = vec!["admins".into()];
    changed.status = UserStatus::Disabled;
    changed.attributes.insert("level".into(), "2".into());
    let mut asked = changed.clone();
    asked.name = "Renamed".into();
    asked.password_hash = None;
    one(s, Mutation::UpdateUser(asked)).await?;
    ensure!(s.user(u.id).await? == Some(changed), "an update changed more than groups, attributes and status");
    let stranger = user("nobody@example.com");
    ensure!(
        matches!(one(s, Mutation::UpdateUser(stranger)).await, Err(StoreError::NotFound(_))),
        "an update of an unknown user"
    );
    ensure!(s.user(UserId::from_ulid(ulid())).await?.is_none());
    Ok(())
}

/// A person's API tokens: found by hash, listed newest first, revoked once
/// (SECURITY row 45's neighbour: tokens that expire and can be revoked).
pub async fn user_tokens_expire_and_are_revoked_once(s: &Arc<dyn Store>) -> Result<()> {
    let u = user("ada@example.com");
    let other = user("bob@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    one(s, Mutation::InsertUser(other.clone())).await?;
    let token = |n: i64| UserToken {
        id: mandate_model::UserTokenId::from_ulid(ulid()),
        user: u.id,
        created_at: t0() + Duration::seconds(n),
        expires_at: t0() + Duration::days(30),
        revoked_at: None,
    };
    let (a, b) = (token(0), token(1));
    one(s, Mutation::InsertUserToken { token: a.clone(), hash: "h1".into() }).await?;
    one(s, Mutation::InsertUserToken { token: b.clone(), hash: "h2".into() }).await?;
    ensure!(s.user_token_by_hash("h1").await? == Some(a.clone()), "token did not round-trip");
    ensure!(s.user_token_by_hash("h3").await?.is_none());
    ensure!(s.user_tokens(u.id).await? == vec![b.clone(), a.clone()], "not newest first");
    ensure!(s.user_tokens(other.id).await?.is_empty());
    let dup = UserToken { id: mandate_model::UserTokenId::from_ulid(ulid()), ..a.clone() };
    ensure!(
        matches!(
            one(s, Mutation::InsertUserToken { token: dup, hash: "h1".into() }).await,
            Err(StoreError::Conflict(_))
        ),
        "a duplicate hash was accepted"
    );
    ensure!(
        matches!(
            one(s, Mutation::InsertUserToken { token: a.clone(), hash: "h4".into() }).await,
            Err(StoreError::Conflict(_))
        ),
        "a duplicate id was accepted"
    );
    // Only its owner's token is revoked, once.
    ensure!(one(s, Mutation::RevokeUserToken { id: a.id, user: other.id, at: t0() }).await? == 0);
    ensure!(one(s, Mutation::RevokeUserToken { id: a.id, user: u.id, at: t0() }).await? == 1);
    ensure!(one(s, Mutation::RevokeUserToken { id: a.id, user: u.id, at: t0() }).await? == 0);
    ensure!(s.user_token_by_hash("h1").await?.and_then(|t| t.revoked_at) == Some(t0()));
    ensure!(s.user_token_by_hash("h2").await?.and_then(|t| t.revoked_at).is_none());
    Ok(())
}

pub async fn agents_round_trip_and_change_status_conditionally(s: &Arc<dyn Store>) -> Result<()> {
    let u = user("owner@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    let parent = agent(u.id, None);
    let child = agent(u.id, Some(parent.id));
    one(s, Mutation::InsertAgent(parent.clone())).await?;
    one(s, Mutation::InsertAgent(child.clone())).await?;
    ensure!(s.agent(parent.id).await? == Some(parent.clone()), "agent did not round-trip");
    ensure!(s.agent(child.id).await? == Some(child.clone()), "ephemeral agent did not round-trip");
    ensure!(s.agent_children(parent.id).await?.iter().map(|a| a.id).collect::<Vec<_>>() == vec![child.id]);
    ensure!(
        matches!(one(s, Mutation::InsertAgent(parent.clone())).await, Err(StoreError::Conflict(_))),
        "a duplicate agent id was accepted"
    );
    let at = t0();
    let admin = Some(SuspendedBy::Admin);
    let set = |from, to, by| Mutation::SetAgentStatus { id: parent.id, from, to, at, by };
    one(s, set(AgentStatus::Active, AgentStatus::Suspended, admin)).await?;
    let stale = one(s, set(AgentStatus::Active, AgentStatus::Retired, None)).await;
    ensure!(matches!(stale, Err(StoreError::Conflict(_))), "status change from a stale status accepted");
    let suspended = s.agent(parent.id).await?;
    ensure!(suspended.as_ref().map(|a| (a.status, a.suspended_by)) == Some((AgentStatus::Suspended, admin)));
    // An owner's resume of the admin's suspension fails in the store
    // itself (so a race with the admin's re-suspension cannot undo it).
    let owner = Some(SuspendedBy::Owner);
    let by_owner = one(s, set(AgentStatus::Suspended, AgentStatus::Active, owner)).await;
    ensure!(matches!(by_owner, Err(StoreError::Conflict(_))), "the owner resumed the admin's suspension");
    ensure!(s.agent(parent.id).await?.map(|a| a.status) == Some(AgentStatus::Suspended));
    // Who suspended it is forgotten once it is active again.
    one(s, set(AgentStatus::Suspended, AgentStatus::Active, admin)).await?;
    ensure!(s.agent(parent.id).await?.map(|a| (a.status, a.suspended_by)) == Some((AgentStatus::Active, None)));
    // An owner resumes what an owner suspended.
    one(s, set(AgentStatus::Active, AgentStatus::Suspended, owner)).await?;
    one(s, set(AgentStatus::Suspended, AgentStatus::Active, owner)).await?;
    ensure!(s.agent(parent.id).await?.map(|a| (a.status, a.suspended_by)) == Some((AgentStatus::Active, None)));
    let unknown = Mutation::SetAgentStatus {
        id: agent(u.id, None).id,
        from: AgentStatus::Active,
        to: AgentStatus::Suspended,
        at,
        by: admin,
    };
    ensure!(matches!(one(s, unknown).await, Err(StoreError::Conflict(_))), "an unknown agent changed status");
    Ok(())
}

pub async fn federated_credentials_find_their_agent(s: &Arc<dyn Store>) -> Result<()> {
    const CI: &str = "https://ci.example";
    let u = user("wif@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    let rule = |subject: Option<&str>, pattern: Option<&str>| FederatedCredential {
        issuer: CI.into(),
        subject: subject.map(str::to_owned),
        subject_pattern: pattern.map(str::to_owned),
        audiences: vec!["api://mandate".into()],
        claims: std::collections::BTreeMap::from([("ref".into(), serde_json::json!("refs/heads/main"))]),
        single_use: true,
    };
    let mut exact = agent(u.id, None);
    exact.federated_credentials = vec![rule(Some("repo:acme/app"), None)];
    let mut pattern = agent(u.id, None);
    pattern.federated_credentials = vec![rule(None, Some("repo:acme/*"))];
    let plain = agent(u.id, None);
    for a in [&exact, &pattern, &plain] {
        one(s, Mutation::InsertAgent(a.clone())).await?;
    }
    ensure!(s.agent(exact.id).await? == Some(exact.clone()), "federated credentials did not round-trip");
    let ids = |v: Vec<mandate_model::records::Agent>| {
        let mut ids: Vec<_> = v.into_iter().map(|a| a.id).collect();
        ids.sort();
        ids
    };
    let mut both = vec![exact.id, pattern.id];
    both.sort();
    ensure!(ids(s.agents_federated_by(CI, "repo:acme/app").await?) == both, "exact rule and pattern");
    // Patterns are the caller's to match: every one of the issuer comes back.
    ensure!(ids(s.agents_federated_by(CI, "repo:other/x").await?) == vec![pattern.id], "patterns only");
    ensure!(s.agents_federated_by("https://other.example", "repo:acme/app").await?.is_empty(), "another issuer");
    // Replacing the rules replaces the index; an empty list removes it.
    let set = |id, credentials| Mutation::SetFederatedCredentials { id, credentials, at: t0() };
    one(s, set(exact.id, vec![rule(Some("repo:acme/other"), None)])).await?;
    ensure!(ids(s.agents_federated_by(CI, "repo:acme/app").await?) == vec![pattern.id], "stale index row");
    one(s, set(pattern.id, Vec::new())).await?;
    ensure!(s.agents_federated_by(CI, "repo:other/x").await?.is_empty(), "removed rules still found");
    ensure!(s.agent(pattern.id).await?.is_some_and(|a| a.federated_credentials.is_empty()));
    let unknown = set(agent(u.id, None).id, vec![rule(Some("x"), None)]);
    ensure!(matches!(one(s, unknown).await, Err(StoreError::Conflict(_))), "an unknown agent got rules");
    Ok(())
}

pub async fn agent_limits_round_trip_and_change(s: &Arc<dyn Store>) -> Result<()> {
    use mandate_model::limits::{AgentLimits, ClientAuth, GrantKind};
    let u = user("limits@example.com");
    one(s, Mutation::InsertUser(u.clone())).await?;
    let mut limited = agent(u.id, None);
    limited.limits = AgentLimits {
        max_token_ttl: Some(60),
        allowed_grant_types: Some([GrantKind::ClientCredentials, GrantKind::TokenExchange].into()),
        max_delegation_depth: Some(2),
        allowed_resources: Some(["https://calendar.example".to_owned()].into()),
        require_dpop: Some(true),
        max_ephemeral_children: Some(3),
        max_ephemeral_ttl: Some(120),
        allowed_client_auth: Some([ClientAuth::Workload].into()),
    };
    let plain = agent(u.id, None);
    for a in [&limited, &plain] {
        one(s, Mutation::InsertAgent(a.clone())).await?;
    }
    ensure!(s.agent(limited.id).await? == Some(limited.clone()), "limits did not round-trip");
    ensure!(s.agent(plain.id).await?.is_some_and(|a| a.limits.is_empty()), "an agent without limits got some");
    // Replacing them replaces every one; empty limits clear them.
    let tighter = AgentLimits { max_token_ttl: Some(30), ..Default::default() };
    let epoch = s.epoch().await?;
    one(s, Mutation::SetAgentLimits { id: limited.id, limits: tighter.clone(), at: t0() }).await?;
    ensure!(s.epoch().await? > epoch, "a change of limits must move the epoch");
    ensure!(s.agent(limited.id).await?.is_some_and(|a| a.limits == tighter), "limits were not replaced");
    one(s, Mutation::SetAgentLimits { id: limited.id, limits: AgentLimits::default(), at: t0() }).await?;
    ensure!(s.agent(limited.id).await?.is_some_and(|a| a.limits.is_empty()), "limits were not cleared");
    let unknown = Mutation::SetAgentLimits { id: agent(u.id, None).id, limits: tighter, at: t0() };
    ensure!(matches!(one(s, unknown).await, Err(StoreError::Conflict(_))), "an unknown agent got limits");
    Ok(())
}

pub async fn agents_are_listed_by_owner(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, b, _) = people(s, "owner@example.com").await?;
    let (other, _, _, _) = people(s, "owner2@example.com").await?;
    let mine: Vec<_> = s.agents_owned_by(u.id).await?.into_iter().map(|x| x.id).collect();
    let mut expected = vec![a.id, b.id];
    expected.sort();
    ensure!(mine == expected, "agents of the owner: {mine:?}");
    ensure!(s.agents_owned_by(other.id).await?.len() == 2);
    Ok(())
}

/// The access review's walk (ADR 0033): agents that are not retired,
/// newest first, a page at a time (the inventory list with `not_retired`);
/// children counted by parent from a time.
pub async fn live_agents_are_paged_and_spawns_counted(s: &Arc<dyn Store>) -> Result<()> {
    let (u, a, b, _) = people(s, "review@example.com").await?;
    let mut c = agent(u.id, Some(a.id));
    c.created_at = t0() + Duration::hours(2);
    one(s, Mutation::InsertAgent(c.clone())).await?;
    let gone = agent(u.id, None);
    one(s, Mutation::InsertAgent(gone.clone())).await?;
    let retire = Mutation::SetAgentStatus {
        id: gone.id,
        from: AgentStatus::Active,
        to: AgentStatus::Retired,
        at: t0(),
        by: None,
    };
    ensure!(one(s, retire).await? == 1);
    let mut live = vec![a.id, b.id, c.id];
    live.sort();
    live.reverse();
    let page = |before: Option<mandate_model::AgentId>, limit: u32| {
        let s = s.clone();
        async move {
            let q = AgentListQuery { not_retired: true, before, limit, ..AgentListQuery::default() };
            Ok::<_, StoreError>(s.list_agents(&q).await?.into_iter().map(|x| x.agent.id).collect::<Vec<_>>())
        }
    };
    ensure!(page(None, 10).await? == live, "every live agent, newest first, none retired");
    let first = page(None, 2).await?;
    ensure!(first == live.get(..2).unwrap_or_default(), "at most the limit: {first:?}");
    let rest = page(first.last().copied(), 2).await?;
    ensure!(rest == live.get(2..).unwrap_or_default(), "the next page starts below the cursor: {rest:?}");
    ensure!(page(live.last().copied(), 2).await?.is_empty(), "past the last");
    ensure!(s.spawned_since(a.id, t0()).await? == 2, "both children");
    ensure!(s.spawned_since(a.id, t0() + Duration::hours(1)).await? == 1, "only the later child");
    ensure!(s.spawned_since(b.id, t0()).await? == 0, "no children");
    Ok(())
}

pub async fn resources_round_trip_and_stay_unique(s: &Arc<dyn Store>) -> Result<()> {
    let r = resource("https://api.example");
    one(s, Mutation::InsertResource(r.clone())).await?;
    ensure!(s.resource(r.id).await? == Some(r.clone()));
    ensure!(s.resource_by_identifier("https://api.example").await? == Some(r.clone()));
    ensure!(matches!(
        one(s, Mutation::InsertResource(resource("https://api.example"))).await,
        Err(StoreError::Conflict(_))
    ));
    let mut same_id = resource("https://c.example");
    same_id.id = r.id;
    ensure!(matches!(one(s, Mutation::InsertResource(same_id)).await, Err(StoreError::Conflict(_))));
    let b = resource("https://b.example");
    one(s, Mutation::InsertResource(b.clone())).await?;
    let mut ids = vec![r.id, b.id];
    ids.sort();
    ensure!(s.resources().await?.into_iter().map(|x| x.id).collect::<Vec<_>>() == ids, "not listed by id");
    Ok(())
}

pub async fn policies_keep_every_version(s: &Arc<dyn Store>) -> Result<()> {
    ensure!(s.current_policy().await?.is_none());
    for (i, text) in ["permit(principal, action, resource);", "forbid(principal, action, resource);"].iter().enumerate()
    {
        let p = StoredPolicy {
            version: format!("v{i}"),
            text: (*text).into(),
            created_at: t0() + Duration::seconds(i as i64),
            author: (i == 1).then(|| "usr_author".to_owned()),
        };
        one(s, Mutation::PutPolicy(p.clone())).await?;
        ensure!(s.current_policy().await? == Some(p));
    }
    Ok(())
}

pub async fn policy_history_is_numbered_paged_and_read_back(s: &Arc<dyn Store>) -> Result<()> {
    ensure!(s.policy_versions(None, 10).await?.is_empty());
    ensure!(s.policy_version(1).await?.is_none());
    let texts = ["permit(principal, action, resource);", "forbid(principal, action, resource);", "é"];
    for (i, text) in texts.iter().enumerate() {
        let p = StoredPolicy {
            version: format!("h{i}"),
            text: (*text).into(),
            created_at: t0() + Duration::seconds(i as i64),
            author: Some(format!("author{i}")),
        };
        one(s, Mutation::PutPolicy(p)).await?;
    }
    let all = s.policy_versions(None, 10).await?;
    ensure!(all.len() == 3, "{all:?}");
    let numbers: Vec<u64> = all.iter().map(|v| v.number).collect();
    ensure!(numbers.windows(2).all(|w| matches!(w, [a, b] if a > b)), "not newest first: {numbers:?}");
    let newest = all.first().ok_or_else(|| anyhow::anyhow!("no newest"))?;
    ensure!(newest.version == "h2" && newest.bytes == 2, "length in bytes: {newest:?}");
    ensure!(newest.author.as_deref() == Some("author2"));
    let page = s.policy_versions(Some(newest.number), 1).await?;
    ensure!(page.len() == 1 && page.first().map(|v| v.version.as_str()) == Some("h1"), "{page:?}");
    let (entry, text) = s.policy_version(newest.number).await?.ok_or_else(|| anyhow::anyhow!("version missing"))?;
    ensure!(entry == *newest && text.text == "é" && text.author.as_deref() == Some("author2"));
    ensure!(s.policy_version(newest.number + 1).await?.is_none());
    Ok(())
}

pub async fn a_policy_is_put_only_over_the_version_expected(s: &Arc<dyn Store>) -> Result<()> {
    let put = |v: &str| StoredPolicy { version: v.into(), text: format!("// {v}"), created_at: t0(), author: None };
    let guarded = |expected: Option<&str>, v: &str| {
        Change::new().with(Mutation::ExpectPolicyVersion(expected.map(str::to_owned))).with(Mutation::PutPolicy(put(v)))
    };
    // With nothing stored, only `None` is current.
    ensure!(matches!(s.commit(guarded(Some("x"), "a")).await, Err(StoreError::Conflict(_))));
    s.commit(guarded(None, "a")).await?;
    ensure!(matches!(s.commit(guarded(None, "b")).await, Err(StoreError::Conflict(_))));
    ensure!(matches!(s.commit(guarded(Some("b"), "b")).await, Err(StoreError::Conflict(_))));
    ensure!(s.current_policy().await?.map(|p| p.version) == Some("a".into()), "a refused change wrote");
    ensure!(s.policy_versions(None, 10).await?.len() == 1, "a refused change was kept in the history");
    s.commit(guarded(Some("a"), "b")).await?;
    ensure!(s.current_policy().await?.map(|p| p.version) == Some("b".into()));
    Ok(())
}

pub async fn sessions_round_trip_and_end(s: &Arc<dyn Store>) -> Result<()> {
    let (u, _, _, _) = people(s, "session@example.com").await?;
    let r = SessionRecord {
        hash: "session-hash".into(),
        user: u.id,
        csrf: "csrf-token".into(),
        created_at: t0(),
        expires_at: t0() + Duration::hours(8),
        revoked_at: None,
    };
    one(s, Mutation::InsertSession(r.clone())).await?;
    ensure!(s.session("session-hash").await? == Some(r.clone()), "session did not round-trip");
    ensure!(s.session("other").await?.is_none());
    ensure!(matches!(one(s, Mutation::InsertSession(r)).await, Err(StoreError::Conflict(_))), "duplicate session");
    ensure!(one(s, Mutation::RevokeSession { hash: "session-hash".into(), at: t0() }).await? == 1);
    ensure!(one(s, Mutation::RevokeSession { hash: "session-hash".into(), at: t0() }).await? == 0, "ended twice");
    ensure!(s.session("session-hash").await?.and_then(|x| x.revoked_at) == Some(t0()));
    Ok(())
}

pub async fn upstream_links_find_their_person(s: &Arc<dyn Store>) -> Result<()> {
    let (u, _, _, _) = people(s, "linked@example.com").await?;
    let link = UpstreamLink {
        issuer: "https://idp.example.com".into(),
        subject: "248289761001".into(),
        user: u.id,
        created_at: t0(),
    };
    ensure!(s.upstream_link(&link.issuer, &link.subject).await?.is_none());
    ensure!(!s.upstream_linked(u.id).await?, "linked before any link");
    one(s, Mutation::InsertUpstreamLink(link.clone())).await?;
    ensure!(s.upstream_linked(u.id).await?, "not linked after its link");
    ensure!(s.upstream_link(&link.issuer, &link.subject).await? == Some(link.clone()), "link did not round-trip");
    // The pair is the key: the same sub at another issuer is another identity.
    ensure!(s.upstream_link("https://other.example.com", &link.subject).await?.is_none(), "found by sub alone");
    ensure!(s.upstream_link(&link.issuer, "248289761002").await?.is_none());
    ensure!(
        matches!(one(s, Mutation::InsertUpstreamLink(link.clone())).await, Err(StoreError::Conflict(_))),
        "a second link of one identity"
    );
    // One person may hold links at several issuers.
    let second = UpstreamLink { issuer: "https://other.example.com".into(), ..link.clone() };
    one(s, Mutation::InsertUpstreamLink(second.clone())).await?;
    ensure!(s.upstream_link(&second.issuer, &second.subject).await?.map(|l| l.user) == Some(u.id));
    let orphan = UpstreamLink { subject: "nobody".into(), user: UserId::from_ulid(ulid()), ..link };
    ensure!(
        matches!(one(s, Mutation::InsertUpstreamLink(orphan)).await, Err(StoreError::Conflict(_))),
        "a link to a missing user"
    );
    Ok(())
}
