//! SCIM's records (ADR 0020): provisioning tokens, SCIM's record of a
//! person, SCIM groups and their members, and the SCIM source of a
//! person's Cedar groups that every user read carries.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{Change, Mutation, Person, ScimGroupQuery, ScimUserQuery, Store, StoreError};
use mandate_model::records::{ScimGroup, ScimToken, ScimUserRecord, UserStatus};
use mandate_model::{GroupId, UserId};
use serde_json::json;
use time::Duration;

use super::fixtures::{one, t0, ulid, user};

pub async fn scim_tokens_are_kept_hashed_and_revoked_once(s: &Arc<dyn Store>) -> Result<()> {
    let a = ScimToken { id: "scim_aaaa".into(), hash: "h-a".into(), created_at: t0(), revoked_at: None };
    let b = ScimToken {
        id: "scim_bbbb".into(),
        hash: "h-b".into(),
        created_at: t0() + Duration::seconds(1),
        revoked_at: None,
    };
    one(s, Mutation::InsertScimToken(a.clone())).await?;
    one(s, Mutation::InsertScimToken(b.clone())).await?;
    ensure!(s.scim_token("scim_aaaa").await? == Some(a.clone()), "a SCIM token did not round-trip");
    ensure!(s.scim_token("scim_none").await?.is_none());
    let twin = ScimToken { hash: "h-other".into(), ..a.clone() };
    ensure!(matches!(one(s, Mutation::InsertScimToken(twin)).await, Err(StoreError::Conflict(_))), "duplicate id");
    let ids: Vec<String> = s.scim_tokens().await?.into_iter().map(|t| t.id).collect();
    ensure!(ids == ["scim_bbbb", "scim_aaaa"], "not newest first: {ids:?}");
    let at = t0() + Duration::seconds(5);
    ensure!(one(s, Mutation::RevokeScimToken { id: a.id.clone(), at }).await? == 1);
    ensure!(one(s, Mutation::RevokeScimToken { id: a.id.clone(), at: at + Duration::seconds(1) }).await? == 0);
    ensure!(s.scim_token("scim_aaaa").await?.and_then(|t| t.revoked_at) == Some(at), "revoked twice");
    Ok(())
}

fn record(user: UserId, user_name: &str) -> ScimUserRecord {
    let profile = json!({"emails": [{"value": "x@example.com", "primary": true}], "name": {"givenName": "X"}});
    ScimUserRecord {
        user,
        user_name: user_name.into(),
        external_id: Some(format!("ext-{user_name}")),
        profile: profile.as_object().cloned().unwrap_or_default(),
        revision: 1,
        deleted_at: None,
    }
}

pub async fn scim_users_are_unique_by_user_name_and_written_by_revision(s: &Arc<dyn Store>) -> Result<()> {
    let (ada, bob) = (user("ada@example.com"), user("bob@example.com"));
    one(s, Mutation::InsertUser(ada.clone())).await?;
    one(s, Mutation::InsertUser(bob.clone())).await?;
    let r = record(ada.id, "Ada.L");
    one(s, Mutation::PutScimUser { record: r.clone(), expect: None }).await?;
    ensure!(s.scim_user(ada.id).await? == Some(r.clone()), "SCIM's record did not round-trip");
    // Inserting again, or writing from a stale revision, is Stale.
    let again = one(s, Mutation::PutScimUser { record: r.clone(), expect: None }).await;
    ensure!(matches!(again, Err(StoreError::Stale(_))), "a second insert: {again:?}");
    let stale =
        one(s, Mutation::PutScimUser { record: ScimUserRecord { revision: 3, ..r.clone() }, expect: Some(2) }).await;
    ensure!(matches!(stale, Err(StoreError::Stale(_))), "a stale revision: {stale:?}");
    // userName is unique without regard to case.
    let clash = one(s, Mutation::PutScimUser { record: record(bob.id, "ADA.l"), expect: None }).await;
    ensure!(matches!(clash, Err(StoreError::Conflict(_))), "a userName differing in case: {clash:?}");
    ensure!(s.scim_user(bob.id).await?.is_none());
    let renamed = ScimUserRecord { user_name: "ada".into(), revision: 2, ..r.clone() };
    one(s, Mutation::PutScimUser { record: renamed.clone(), expect: Some(1) }).await?;
    ensure!(s.scim_user(ada.id).await? == Some(renamed.clone()));
    // A record needs its user.
    let orphan =
        one(s, Mutation::PutScimUser { record: record(UserId::from_ulid(ulid()), "orphan"), expect: None }).await;
    ensure!(matches!(orphan, Err(StoreError::Conflict(_))), "a record of no one: {orphan:?}");
    Ok(())
}

pub async fn scim_users_are_listed_by_user_name_external_id_and_email(s: &Arc<dyn Store>) -> Result<()> {
    let mut people = Vec::new();
    for n in 0..5 {
        let u = user(&format!("p{n}@example.com"));
        one(s, Mutation::InsertUser(u.clone())).await?;
        people.push(u.id);
    }
    people.sort();
    // p0..p2 have SCIM records; p3 and p4 do not (their userName is their email).
    for (n, id) in people.iter().take(3).enumerate() {
        let mut r = record(*id, &format!("User-{n}"));
        r.deleted_at = (n == 2).then_some(t0());
        one(s, Mutation::PutScimUser { record: r, expect: None }).await?;
    }
    let [p0, p1, p2, p3, p4] = <[UserId; 5]>::try_from(people).map_err(|_| anyhow::anyhow!("five people were made"))?;
    let all = s.scim_users(&ScimUserQuery { limit: 10, ..Default::default() }).await?;
    // p2 was deleted by SCIM: it is not listed.
    let shown = vec![p0, p1, p3, p4];
    ensure!(s.scim_user(p2).await?.is_some_and(|r| r.deleted_at.is_some()));
    ensure!(all.total == 4 && all.items == shown, "the SCIM-deleted person is listed, or the order is not by id");
    let page = s.scim_users(&ScimUserQuery { offset: 1, limit: 2, ..Default::default() }).await?;
    ensure!(page.total == 4 && page.items == [p1, p3], "paging: {page:?}");
    let by = |q: ScimUserQuery| async move { s.scim_users(&ScimUserQuery { limit: 10, ..q }).await };
    ensure!(by(ScimUserQuery { user_name: Some("user-1".into()), ..Default::default() }).await?.items == [p1]);
    ensure!(by(ScimUserQuery { user_name: Some("user-2".into()), ..Default::default() }).await?.total == 0);
    let p3_email = s.user(p3).await?.map(|u| u.email).unwrap_or_default();
    ensure!(
        by(ScimUserQuery { user_name: Some(p3_email.to_uppercase()), ..Default::default() }).await?.items == [p3],
        "the userName of a person without a record is their email"
    );
    let p0_email = s.user(p0).await?.map(|u| u.email).unwrap_or_default();
    ensure!(
        by(ScimUserQuery { user_name: Some(p0_email.clone()), ..Default::default() }).await?.total == 0,
        "a person with a record is found by their userName, not their email"
    );
    ensure!(by(ScimUserQuery { email: Some(p0_email), ..Default::default() }).await?.items == [p0]);
    ensure!(by(ScimUserQuery { external_id: Some("ext-User-0".into()), ..Default::default() }).await?.items == [p0]);
    Ok(())
}

pub async fn a_person_is_updated_only_from_what_was_read(s: &Arc<dyn Store>) -> Result<()> {
    let (ada, bob) = (user("ada@example.com"), user("bob@example.com"));
    one(s, Mutation::InsertUser(ada.clone())).await?;
    one(s, Mutation::InsertUser(bob.clone())).await?;
    let was = Person::of(&ada);
    let now = Person { name: "Ada L".into(), email: "ada.l@example.com".into(), status: UserStatus::Disabled };
    one(s, Mutation::UpdatePersonIf { id: ada.id, was: was.clone(), now: now.clone() }).await?;
    let read = s.user(ada.id).await?;
    ensure!(read.as_ref().map(Person::of) == Some(now.clone()), "the update did not land");
    ensure!(read.map(|u| u.groups) == Some(ada.groups.clone()), "the update changed the groups");
    let again = one(s, Mutation::UpdatePersonIf { id: ada.id, was, now: now.clone() }).await;
    ensure!(matches!(again, Err(StoreError::Stale(_))), "a write from a stale read: {again:?}");
    let taken = Person { email: bob.email.clone(), ..now.clone() };
    let clash = one(s, Mutation::UpdatePersonIf { id: ada.id, was: now, now: taken }).await;
    ensure!(matches!(clash, Err(StoreError::Conflict(_))), "another person's email: {clash:?}");
    Ok(())
}

fn group(name: &str) -> ScimGroup {
    ScimGroup {
        id: GroupId::from_ulid(ulid()),
        display_name: name.into(),
        external_id: Some(format!("ext-{name}")),
        members: Vec::new(),
        revision: 1,
        created_at: t0(),
        updated_at: t0(),
    }
}

pub async fn scim_groups_keep_members_and_give_them_cedar_groups(s: &Arc<dyn Store>) -> Result<()> {
    let (ada, bob) = (user("ada@example.com"), user("bob@example.com"));
    one(s, Mutation::InsertUser(ada.clone())).await?;
    one(s, Mutation::InsertUser(bob.clone())).await?;
    let eng = group("eng");
    let mut change = Change::new();
    change.push(Mutation::InsertScimGroup(eng.clone()));
    let added = change.push(Mutation::AddScimGroupMembers { group: eng.id, users: vec![ada.id, bob.id, ada.id] });
    ensure!(s.commit(change).await?.affected(added)? == 2);
    let mut members = vec![ada.id, bob.id];
    members.sort();
    let read = s.scim_group(eng.id).await?;
    ensure!(
        read == Some(ScimGroup { members: members.clone(), ..eng.clone() }),
        "the group did not round-trip: {read:?}"
    );
    ensure!(s.user(ada.id).await?.map(|u| u.scim_groups) == Some(vec!["eng".into()]));
    ensure!(s.user_by_email("bob@example.com").await?.map(|u| u.scim_groups) == Some(vec!["eng".into()]));
    // The sign-in source is untouched by either.
    ensure!(s.user(ada.id).await?.map(|u| u.groups) == Some(ada.groups.clone()));
    let ops = group("ops");
    one(s, Mutation::InsertScimGroup(ops.clone())).await?;
    one(s, Mutation::AddScimGroupMembers { group: ops.id, users: vec![ada.id] }).await?;
    ensure!(s.user(ada.id).await?.map(|u| u.scim_groups) == Some(vec!["eng".into(), "ops".into()]), "not sorted");
    // displayName is unique; a member must be a user.
    ensure!(matches!(one(s, Mutation::InsertScimGroup(group("eng"))).await, Err(StoreError::Conflict(_))));
    let nobody = one(s, Mutation::AddScimGroupMembers { group: ops.id, users: vec![UserId::from_ulid(ulid())] }).await;
    ensure!(matches!(nobody, Err(StoreError::Conflict(_))), "a member who is no user: {nobody:?}");
    // Renaming renames the Cedar group; a stale revision writes nothing.
    let renamed =
        ScimGroup { display_name: "sre".into(), revision: 2, updated_at: t0() + Duration::seconds(1), ..ops.clone() };
    one(s, Mutation::UpdateScimGroup { group: renamed.clone(), expect: 1 }).await?;
    let stale = one(
        s,
        Mutation::UpdateScimGroup { group: ScimGroup { display_name: "x".into(), ..renamed.clone() }, expect: 1 },
    )
    .await;
    ensure!(matches!(stale, Err(StoreError::Stale(_))), "a stale group write: {stale:?}");
    let clash = one(
        s,
        Mutation::UpdateScimGroup {
            group: ScimGroup { display_name: "eng".into(), revision: 3, ..renamed.clone() },
            expect: 2,
        },
    )
    .await;
    ensure!(matches!(clash, Err(StoreError::Conflict(_))), "a taken displayName: {clash:?}");
    ensure!(s.user(ada.id).await?.map(|u| u.scim_groups) == Some(vec!["eng".into(), "sre".into()]));
    // Lists: by displayName without regard to case, by externalId, paged.
    let by_name =
        s.scim_groups(&ScimGroupQuery { display_name: Some("SRE".into()), limit: 10, ..Default::default() }).await?;
    ensure!(by_name.total == 1 && by_name.items.first().map(|g| g.id) == Some(ops.id));
    let by_ext =
        s.scim_groups(&ScimGroupQuery { external_id: Some("ext-eng".into()), limit: 10, ..Default::default() }).await?;
    ensure!(by_ext.items.iter().map(|g| g.id).collect::<Vec<_>>() == [eng.id]);
    let page = s.scim_groups(&ScimGroupQuery { offset: 1, limit: 1, ..Default::default() }).await?;
    ensure!(page.total == 2 && page.items.len() == 1);
    // Removing members, a person leaving every group, deleting a group.
    ensure!(one(s, Mutation::RemoveScimGroupMembers { group: eng.id, users: vec![bob.id, bob.id] }).await? == 1);
    ensure!(s.user(bob.id).await?.map(|u| u.scim_groups) == Some(Vec::new()));
    ensure!(one(s, Mutation::RemoveUserFromScimGroups { user: ada.id }).await? == 2);
    ensure!(s.user(ada.id).await?.map(|u| u.scim_groups) == Some(Vec::new()));
    one(s, Mutation::AddScimGroupMembers { group: eng.id, users: vec![ada.id] }).await?;
    let gone = one(s, Mutation::DeleteScimGroup { id: eng.id, expect: 7 }).await;
    ensure!(matches!(gone, Err(StoreError::Stale(_))), "a stale delete: {gone:?}");
    one(s, Mutation::DeleteScimGroup { id: eng.id, expect: 1 }).await?;
    ensure!(s.scim_group(eng.id).await?.is_none());
    ensure!(s.user(ada.id).await?.map(|u| u.scim_groups) == Some(Vec::new()), "a deleted group's members keep it");
    Ok(())
}

/// Membership changes are decision inputs: committing one moves the epoch,
/// so that caches of users and decisions are dropped at once.
pub async fn membership_changes_move_the_epoch(s: &Arc<dyn Store>) -> Result<()> {
    let ada = user("ada@example.com");
    one(s, Mutation::InsertUser(ada.clone())).await?;
    let eng = group("eng");
    one(s, Mutation::InsertScimGroup(eng.clone())).await?;
    let mut last = s.epoch().await?;
    for m in [
        Mutation::AddScimGroupMembers { group: eng.id, users: vec![ada.id] },
        Mutation::UpdateScimGroup {
            group: ScimGroup { display_name: "sre".into(), revision: 2, ..eng.clone() },
            expect: 1,
        },
        Mutation::RemoveScimGroupMembers { group: eng.id, users: vec![ada.id] },
        Mutation::RemoveUserFromScimGroups { user: ada.id },
        Mutation::DeleteScimGroup { id: eng.id, expect: 2 },
    ] {
        let what = format!("{m:?}");
        one(s, m).await?;
        let now = s.epoch().await?;
        ensure!(now != last, "{what} did not move the epoch");
        last = now;
    }
    Ok(())
}
