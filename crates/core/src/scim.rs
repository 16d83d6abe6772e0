//! SCIM 2.0 provisioning (DESIGN §10, ADR 0020): the bearer tokens the
//! admin issues to a provisioning client, SCIM's view of people, and SCIM
//! Groups, whose `displayName`s are Cedar groups.
//!
//! Nothing is ever deleted of a person: a SCIM DELETE disables the user,
//! with the cascade disabling has, and hides the SCIM resource (RFC 7644
//! §3.6). A group may be deleted; its memberships go with it.
//!
//! Every write is a compare-and-swap against what was read: the person's
//! name, email and status, and the revision of SCIM's record (of the
//! person or the group), so a concurrent change makes the write fail with
//! [`Error::PreconditionFailed`] instead of being lost (RFC 7644 §3.14).

use std::collections::BTreeSet;

use mandate_model::records::{ScimGroup, ScimToken, ScimUserRecord, User, UserStatus};
use mandate_model::ssf::{Cause, InitiatingEntity};
use mandate_model::{GroupId, UserId, name};
use serde_json::{Map, Value, json};

use crate::audit::{AuditRecord, kind};
use crate::ports::new_ulid;
use crate::service::{Caller, Mandate};
use crate::store::{Change, Mutation, Page, Person, ScimGroupQuery, ScimUserQuery};
use crate::{Error, secrets};

/// The public id of a SCIM token: `scim_` and the first 16 hex digits of
/// its hash.
fn token_id(hash: &str) -> String {
    format!("scim_{}", hash.get(..16).unwrap_or(hash))
}

/// The longest `userName` or `externalId` kept.
const MAX_ID_CHARS: usize = 256;

/// What a SCIM client asks a User to be, parsed at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimUser {
    /// `userName` as sent: any string, unique without regard to case.
    pub user_name: String,
    pub external_id: Option<String>,
    /// `name`, `displayName` and `emails` as sent, to be answered back.
    pub profile: Map<String, Value>,
    /// The person's name: `displayName`, else `name.formatted`, else the
    /// given and family names; `None` when none is given (the email then).
    pub name: Option<String>,
    /// Where the person's email comes from: the primary (else the first)
    /// of `emails`, else `userName`; it must be a valid email.
    pub email: Option<String>,
    /// `None` when the request does not say (or says `null`): a new user is
    /// active, an existing one keeps its status, so a sync that leaves
    /// `active` out never switches a disabled person back on.
    pub active: Option<bool>,
}

/// A person as SCIM shows them: the user, and SCIM's record of them when
/// SCIM wrote one (a person it never wrote has `userName` = their email).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimPerson {
    pub user: User,
    pub record: Option<ScimUserRecord>,
}

impl ScimPerson {
    pub fn user_name(&self) -> &str {
        self.record.as_ref().map_or(&self.user.email, |r| &r.user_name)
    }

    pub fn external_id(&self) -> Option<&str> {
        self.record.as_ref().and_then(|r| r.external_id.as_deref())
    }

    /// `name`, `displayName` and `emails`: as SCIM sent them, or, for a
    /// person SCIM never wrote, from the user record.
    pub fn profile(&self) -> Map<String, Value> {
        match &self.record {
            Some(r) => r.profile.clone(),
            None => {
                let Value::Object(o) = json!({
                    "displayName": self.user.name,
                    "name": {"formatted": self.user.name},
                    "emails": [{"value": self.user.email, "type": "work", "primary": true}],
                }) else {
                    return Map::new();
                };
                o
            }
        }
    }

    /// The weak ETag (RFC 7644 §3.14): a hash of everything shown.
    pub fn version(&self) -> String {
        let shown = json!([
            self.user.name,
            self.user.email,
            self.user.status == UserStatus::Active,
            self.user_name(),
            self.external_id(),
            Value::Object(self.profile()),
        ]);
        weak_etag(&shown.to_string())
    }
}

/// What a SCIM client asks a Group to be, parsed at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimGroupSpec {
    /// The Cedar group name the members get.
    pub display_name: String,
    pub external_id: Option<String>,
    pub members: Vec<UserId>,
}

/// The weak ETag of a group: a hash of everything shown.
pub fn group_version(g: &ScimGroup) -> String {
    weak_etag(&json!([g.display_name, g.external_id, g.members]).to_string())
}

fn weak_etag(text: &str) -> String {
    let h = secrets::hash(text);
    format!("W/\"{}\"", h.get(..16).unwrap_or(&h))
}

fn valid_id(field: &'static str, s: &str) -> Result<String, Error> {
    if s.trim().is_empty() {
        return Err(Error::BadInput(format!("{field} must not be empty")));
    }
    Ok(name::validate_text(field, s, MAX_ID_CHARS)?)
}

/// The name and email a SCIM User gives the person, validated.
fn person_of(want: &ScimUser) -> Result<(String, String), Error> {
    let email = match &want.email {
        Some(e) => name::validate_email(e).map_err(|_| {
            Error::BadInput(format!("{e:?} is not a usable email: give emails[].value or an email as userName"))
        })?,
        None => return Err(Error::BadInput("no usable email: give emails[].value or an email as userName".into())),
    };
    let name = name::validate_name(want.name.as_deref().unwrap_or(&email))?;
    Ok((name, email))
}

impl Mandate {
    /// Issues a SCIM token (admin only); returns its id and its secret,
    /// shown once and stored hashed.
    pub async fn create_scim_token(&self, caller: Caller) -> Result<(String, String), Error> {
        self.require_admin(caller).await?;
        let secret = secrets::generate(secrets::SCIM_TOKEN_PREFIX, self.rng.as_ref())?;
        let hash = secrets::hash(&secret);
        let id = token_id(&hash);
        let mut event = self.admin_event(kind::SCIM_TOKEN_CREATED, caller);
        event.client_id = Some(id.clone());
        let token = ScimToken { id: id.clone(), hash, created_at: self.clock.now(), revoked_at: None };
        let change = Change::new().with(Mutation::InsertScimToken(token)).with(AuditRecord::new(event).mutation());
        self.store.commit(change).await.map_err(|e| match Error::from(e) {
            Error::Conflict(_) => Error::Unavailable("a SCIM token id collided".into()),
            other => other,
        })?;
        Ok((id, secret))
    }

    /// The SCIM tokens (admin only), newest first.
    pub async fn scim_tokens(&self, caller: Caller) -> Result<Vec<ScimToken>, Error> {
        self.require_admin(caller).await?;
        Ok(self.store.scim_tokens().await?)
    }

    /// Revokes a SCIM token (admin only); revoking twice is a no-op.
    pub async fn revoke_scim_token(&self, caller: Caller, id: &str) -> Result<(), Error> {
        self.require_admin(caller).await?;
        if self.store.scim_token(id).await?.is_none() {
            return Err(Error::NotFound(format!("SCIM token {id}")));
        }
        let mut event = self.admin_event(kind::SCIM_TOKEN_REVOKED, caller);
        event.client_id = Some(id.to_owned());
        let mut change = Change::new();
        let revoke = change.push(Mutation::RevokeScimToken { id: id.to_owned(), at: self.clock.now() });
        change.push(AuditRecord::counting(event, &[revoke]).mutation());
        self.store.commit(change).await?;
        Ok(())
    }

    /// The id of the live SCIM token `bearer` is, or `Unauthenticated`.
    pub async fn authenticate_scim(&self, bearer: &str) -> Result<String, Error> {
        if !bearer.starts_with(secrets::SCIM_TOKEN_PREFIX) {
            return Err(Error::Unauthenticated);
        }
        let id = token_id(&secrets::hash(bearer));
        let stored = self.store.scim_token(&id).await?.ok_or(Error::Unauthenticated)?;
        if !secrets::matches(bearer, &stored.hash) || stored.revoked_at.is_some() {
            return Err(Error::Unauthenticated);
        }
        Ok(id)
    }

    /// A person as a SCIM resource: missing once SCIM deleted them.
    pub async fn scim_person(&self, id: UserId) -> Result<ScimPerson, Error> {
        let missing = || Error::NotFound(format!("User {id}"));
        let user = self.store.user(id).await?.ok_or_else(missing)?;
        let record = self.store.scim_user(id).await?;
        if record.as_ref().is_some_and(|r| r.deleted_at.is_some()) {
            return Err(missing());
        }
        Ok(ScimPerson { user, record })
    }

    /// The people matching `query` (SCIM-deleted ones left out).
    pub async fn scim_people(&self, query: &ScimUserQuery) -> Result<Page<ScimPerson>, Error> {
        let page = self.store.scim_users(query).await?;
        let mut items = Vec::with_capacity(page.items.len());
        for id in page.items {
            // A person listed a moment ago is never removed, but SCIM may
            // have deleted them since: then they are left out.
            match self.scim_person(id).await {
                Ok(p) => items.push(p),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Page { total: page.total, items })
    }

    async fn user_name_taken(&self, user_name: &str, other_than: Option<UserId>) -> Result<bool, Error> {
        let q = ScimUserQuery { user_name: Some(user_name.to_owned()), limit: 2, ..Default::default() };
        Ok(self.store.scim_users(&q).await?.items.iter().any(|id| Some(*id) != other_than))
    }

    /// Creates a person for SCIM client `token`. A `userName` (without
    /// regard to case) or an email in use is a conflict.
    pub async fn scim_create_user(&self, token: &str, want: ScimUser) -> Result<ScimPerson, Error> {
        let user_name = valid_id("userName", &want.user_name)?;
        let external_id = want.external_id.as_deref().map(|x| valid_id("externalId", x)).transpose()?;
        let (name, email) = person_of(&want)?;
        if self.user_name_taken(&user_name, None).await? {
            return Err(Error::Conflict(format!("a User with userName {user_name:?} exists")));
        }
        if self.store.user_by_email(&email).await?.is_some() {
            return Err(Error::Conflict(format!("a user with the email {email} exists")));
        }
        let user = User {
            id: UserId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?),
            name,
            email,
            groups: Vec::new(),
            scim_groups: Vec::new(),
            attributes: Default::default(),
            status: if want.active.unwrap_or(true) { UserStatus::Active } else { UserStatus::Disabled },
            created_at: self.clock.now(),
            password_hash: None,
        };
        let record = ScimUserRecord {
            user: user.id,
            user_name,
            external_id,
            profile: want.profile,
            revision: 1,
            deleted_at: None,
        };
        let mut event = self.scim_event(kind::USER_CREATED, token, user.id);
        event.reason = Some("SCIM".into());
        let change = Change::new()
            .with(Mutation::InsertUser(user.clone()))
            .with(Mutation::PutScimUser { record: record.clone(), expect: None })
            .with(AuditRecord::new(event).mutation());
        self.store.commit(change).await?;
        Ok(ScimPerson { user, record: Some(record) })
    }

    /// Applies what SCIM client `token` asks of `read`, the person as read:
    /// `PreconditionFailed` if they changed since. Disabling revokes as
    /// disabling does.
    pub async fn scim_update_user(&self, token: &str, read: &ScimPerson, want: ScimUser) -> Result<ScimPerson, Error> {
        let user_name = valid_id("userName", &want.user_name)?;
        let external_id = want.external_id.as_deref().map(|x| valid_id("externalId", x)).transpose()?;
        let (name, email) = person_of(&want)?;
        let id = read.user.id;
        if self.user_name_taken(&user_name, Some(id)).await? {
            return Err(Error::Conflict(format!("a User with userName {user_name:?} exists")));
        }
        if email != read.user.email && self.store.user_by_email(&email).await?.is_some() {
            return Err(Error::Conflict(format!("a user with the email {email} exists")));
        }
        let status = match want.active {
            Some(true) => UserStatus::Active,
            Some(false) => UserStatus::Disabled,
            None => read.user.status,
        };
        let mut changed = Vec::new();
        if user_name != read.user_name() {
            changed.push("userName");
        }
        if external_id.as_deref() != read.external_id() {
            changed.push("externalId");
        }
        if name != read.user.name {
            changed.push("name");
        }
        if email != read.user.email {
            changed.push("email");
        }
        if status != read.user.status {
            changed.push(match status {
                UserStatus::Active => "status: active",
                UserStatus::Disabled => "status: disabled",
            });
        }
        let now = Person { name, email, status };
        let record = ScimUserRecord {
            user: id,
            user_name,
            external_id,
            profile: want.profile,
            revision: read.record.as_ref().map_or(1, |r| r.revision.saturating_add(1)),
            deleted_at: None,
        };
        let mut event = self.scim_event(kind::USER_UPDATED, token, id);
        event.reason =
            Some(if changed.is_empty() { "SCIM: no change".into() } else { format!("SCIM: {}", changed.join(", ")) });
        self.write_person(read, now, record, event, false).await
    }

    /// Disables the person `read` and hides them from SCIM; the record
    /// stays. They leave every SCIM group.
    pub async fn scim_delete_user(&self, token: &str, read: &ScimPerson) -> Result<(), Error> {
        let now = Person { status: UserStatus::Disabled, ..Person::of(&read.user) };
        let record = ScimUserRecord {
            user: read.user.id,
            user_name: read.user_name().to_owned(),
            external_id: read.external_id().map(str::to_owned),
            profile: read.profile(),
            revision: read.record.as_ref().map_or(1, |r| r.revision.saturating_add(1)),
            deleted_at: Some(self.clock.now()),
        };
        let event = self.scim_event(kind::SCIM_USER_DELETED, token, read.user.id);
        self.write_person(read, now, record, event, true).await.map(|_| ())
    }

    /// One compare-and-swap write of a person and SCIM's record of them,
    /// with the cascade when it disables them.
    async fn write_person(
        &self,
        read: &ScimPerson,
        now: Person,
        record: ScimUserRecord,
        mut event: mandate_audit::Event,
        leave_groups: bool,
    ) -> Result<ScimPerson, Error> {
        let id = read.user.id;
        let at = self.clock.now();
        let mut change = Change::new();
        change.push(Mutation::UpdatePersonIf { id, was: Person::of(&read.user), now: now.clone() });
        change.push(Mutation::PutScimUser { record: record.clone(), expect: read.record.as_ref().map(|r| r.revision) });
        let mut counted = Vec::new();
        if now.status == UserStatus::Disabled && read.user.status != UserStatus::Disabled {
            counted.push(change.push(Mutation::RevokeTokensOfSubject { subject: id.to_string(), at }));
            counted.push(change.push(Mutation::RevokeTokensOfOwnedAgents { owner: id, at }));
            change.push(Mutation::RevokeGrantsOfUser { user: id, at });
            Mandate::signal_revocations(
                &mut change,
                at,
                Cause::new(InitiatingEntity::Admin, "the person was deactivated by SCIM provisioning"),
            );
        }
        if leave_groups {
            change.push(Mutation::RemoveUserFromScimGroups { user: id });
        }
        if event.reason.is_none() {
            event.reason = Some("SCIM".into());
        }
        change.push(AuditRecord::counting(event, &counted).mutation());
        self.commit_signalling(change).await?;
        let user = User { name: now.name, email: now.email, status: now.status, ..read.user.clone() };
        let user = if leave_groups { User { scim_groups: Vec::new(), ..user } } else { user };
        Ok(ScimPerson { user, record: Some(record) })
    }

    fn scim_event(&self, what: &str, token: &str, subject: UserId) -> mandate_audit::Event {
        let mut event = self.event(what);
        event.decision = Some(crate::audit::ALLOW.into());
        event.actor = Some(token.to_owned());
        event.subject = Some(subject.to_string());
        event
    }

    /// A SCIM group.
    pub async fn scim_group(&self, id: GroupId) -> Result<ScimGroup, Error> {
        self.store.scim_group(id).await?.ok_or_else(|| Error::NotFound(format!("Group {id}")))
    }

    pub async fn scim_groups(&self, query: &ScimGroupQuery) -> Result<Page<ScimGroup>, Error> {
        Ok(self.store.scim_groups(query).await?)
    }

    /// The group as asked, validated: the `displayName` follows the rules
    /// of every Cedar group name, and each member is a User SCIM shows.
    async fn valid_group(&self, want: ScimGroupSpec) -> Result<ScimGroupSpec, Error> {
        let display_name = crate::admin::validate_groups(std::slice::from_ref(&want.display_name))?
            .pop()
            .ok_or_else(|| Error::BadInput("displayName is required".into()))?;
        // ADR 0037: the groups that open the console and the whole trail
        // are the admin token's to give, never a provisioning client's.
        if crate::audit::ADMIN_ONLY_GROUPS.contains(&display_name.as_str()) {
            return Err(Error::BadInput(format!(
                "displayName {display_name:?} is reserved: only the admin token gives it"
            )));
        }
        let external_id = want.external_id.as_deref().map(|x| valid_id("externalId", x)).transpose()?;
        let members: BTreeSet<UserId> = want.members.into_iter().collect();
        for m in &members {
            if let Err(Error::NotFound(_)) = self.scim_person(*m).await {
                return Err(Error::BadInput(format!("member {m} is not a User")));
            }
        }
        Ok(ScimGroupSpec { display_name, external_id, members: members.into_iter().collect() })
    }

    async fn display_name_taken(&self, display_name: &str, other_than: Option<GroupId>) -> Result<bool, Error> {
        let q = ScimGroupQuery { display_name: Some(display_name.to_owned()), limit: 2, ..Default::default() };
        Ok(self.store.scim_groups(&q).await?.items.iter().any(|g| Some(g.id) != other_than))
    }

    /// Creates a group for SCIM client `token`; a `displayName` in use
    /// (without regard to case) is a conflict.
    pub async fn scim_create_group(&self, token: &str, want: ScimGroupSpec) -> Result<ScimGroup, Error> {
        let want = self.valid_group(want).await?;
        if self.display_name_taken(&want.display_name, None).await? {
            return Err(Error::Conflict(format!("a Group with displayName {:?} exists", want.display_name)));
        }
        let now = self.clock.now();
        let group = ScimGroup {
            id: GroupId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?),
            display_name: want.display_name,
            external_id: want.external_id,
            members: want.members,
            revision: 1,
            created_at: now,
            updated_at: now,
        };
        let mut change = Change::new();
        change.push(Mutation::InsertScimGroup(group.clone()));
        if !group.members.is_empty() {
            change.push(Mutation::AddScimGroupMembers { group: group.id, users: group.members.clone() });
        }
        let mut event = self.group_event(kind::SCIM_GROUP_CREATED, token, &group);
        event.count = Some(group.members.len() as u64);
        change.push(AuditRecord::new(event).mutation());
        self.member_events(&mut change, token, &group, &group.members, &[]);
        self.store.commit(change).await?;
        Ok(group)
    }

    /// Makes the group `read` what SCIM client `token` asks:
    /// `PreconditionFailed` if it changed since it was read. Renaming it
    /// renames the Cedar group of every member.
    pub async fn scim_update_group(
        &self,
        token: &str,
        read: &ScimGroup,
        want: ScimGroupSpec,
    ) -> Result<ScimGroup, Error> {
        let want = self.valid_group(want).await?;
        if want.display_name != read.display_name && self.display_name_taken(&want.display_name, Some(read.id)).await? {
            return Err(Error::Conflict(format!("a Group with displayName {:?} exists", want.display_name)));
        }
        let before: BTreeSet<UserId> = read.members.iter().copied().collect();
        let after: BTreeSet<UserId> = want.members.iter().copied().collect();
        let added: Vec<UserId> = after.difference(&before).copied().collect();
        let removed: Vec<UserId> = before.difference(&after).copied().collect();
        let group = ScimGroup {
            display_name: want.display_name,
            external_id: want.external_id,
            members: want.members,
            revision: read.revision.saturating_add(1),
            updated_at: self.clock.now(),
            ..read.clone()
        };
        let mut change = Change::new();
        change.push(Mutation::UpdateScimGroup { group: group.clone(), expect: read.revision });
        if !added.is_empty() {
            change.push(Mutation::AddScimGroupMembers { group: group.id, users: added.clone() });
        }
        if !removed.is_empty() {
            change.push(Mutation::RemoveScimGroupMembers { group: group.id, users: removed.clone() });
        }
        let mut changed = Vec::new();
        if group.display_name != read.display_name {
            changed.push(format!("displayName {:?} -> {:?}", read.display_name, group.display_name));
        }
        if group.external_id != read.external_id {
            changed.push("externalId".to_owned());
        }
        if !added.is_empty() || !removed.is_empty() {
            changed.push(format!("members +{} -{}", added.len(), removed.len()));
        }
        let mut event = self.group_event(kind::SCIM_GROUP_UPDATED, token, &group);
        event.reason =
            Some(if changed.is_empty() { "SCIM: no change".into() } else { format!("SCIM: {}", changed.join(", ")) });
        change.push(AuditRecord::new(event).mutation());
        self.member_events(&mut change, token, &group, &added, &removed);
        self.store.commit(change).await?;
        Ok(group)
    }

    /// Deletes the group `read` and its memberships: its members lose that
    /// Cedar group (unless their sign-in source gives it too).
    pub async fn scim_delete_group(&self, token: &str, read: &ScimGroup) -> Result<(), Error> {
        let mut change = Change::new();
        change.push(Mutation::DeleteScimGroup { id: read.id, expect: read.revision });
        let mut event = self.group_event(kind::SCIM_GROUP_DELETED, token, read);
        event.count = Some(read.members.len() as u64);
        change.push(AuditRecord::new(event).mutation());
        self.member_events(&mut change, token, read, &[], &read.members);
        self.store.commit(change).await?;
        Ok(())
    }

    fn group_event(&self, what: &str, token: &str, group: &ScimGroup) -> mandate_audit::Event {
        let mut event = self.event(what);
        event.decision = Some(crate::audit::ALLOW.into());
        event.actor = Some(token.to_owned());
        event.resource = Some(group.id.to_string());
        event.reason = Some(format!("SCIM: {}", group.display_name));
        event
    }

    /// One event per person who joined or left the group, so that each
    /// person's trail shows when they got or lost the Cedar group.
    fn member_events(&self, change: &mut Change, token: &str, group: &ScimGroup, added: &[UserId], removed: &[UserId]) {
        for (what, users) in [(kind::SCIM_MEMBER_ADDED, added), (kind::SCIM_MEMBER_REMOVED, removed)] {
            for u in users {
                let mut event = self.group_event(what, token, group);
                event.subject = Some(u.to_string());
                change.push(AuditRecord::new(event).mutation());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::testing::World;

    fn want(user_name: &str, email: Option<&str>) -> ScimUser {
        ScimUser {
            user_name: user_name.into(),
            external_id: Some("ext-1".into()),
            profile: Map::new(),
            name: Some("Bob".into()),
            email: email.map(str::to_owned),
            active: None,
        }
    }

    #[tokio::test]
    async fn user_name_is_any_string_unique_without_regard_to_case() -> Result<(), Error> {
        let w = World::new().await;
        let (_, token) = w.m.create_scim_token(Caller::Admin).await?;
        let t = w.m.authenticate_scim(&token).await?;
        let bob = w.m.scim_create_user(&t, want("B0B-UUID", Some("carol@example.com"))).await?;
        assert_eq!((bob.user_name(), bob.user.email.as_str()), ("B0B-UUID", "carol@example.com"));
        let again = w.m.scim_create_user(&t, want("b0b-uuid", Some("other@example.com"))).await;
        assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
        let same_email = w.m.scim_create_user(&t, want("x", Some("CAROL@example.com"))).await;
        assert!(matches!(same_email, Err(Error::Conflict(_))), "{same_email:?}");
        // Without a usable email, nothing is created.
        for bad in [want("no-email", None), want("bad", Some("not-an-email"))] {
            let r = w.m.scim_create_user(&t, bad).await;
            assert!(matches!(r, Err(Error::BadInput(_))), "{r:?}");
        }
        let q = ScimUserQuery { user_name: Some("B0B-uuid".into()), limit: 10, ..Default::default() };
        assert_eq!(w.m.scim_people(&q).await?.items.len(), 1);
        let q = ScimUserQuery { external_id: Some("ext-1".into()), limit: 10, ..Default::default() };
        assert_eq!(w.m.scim_people(&q).await?.total, 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_stale_read_is_a_failed_precondition_and_changes_nothing() -> Result<(), Error> {
        let w = World::new().await;
        let t = "scim_test";
        let bob = w.m.scim_create_user(t, want("bob", Some("carol@example.com"))).await?;
        let renamed = w.m.scim_update_user(t, &bob, want("robert", Some("carol@example.com"))).await?;
        assert_eq!(renamed.user_name(), "robert");
        let stale = w.m.scim_update_user(t, &bob, want("bobby", Some("carol@example.com"))).await;
        assert!(matches!(stale, Err(Error::PreconditionFailed(_))), "{stale:?}");
        assert_eq!(w.m.scim_person(bob.user.id).await?.user_name(), "robert");
        Ok(())
    }

    #[tokio::test]
    async fn scim_groups_are_a_second_source_of_cedar_groups() -> Result<(), Error> {
        let w = World::new().await;
        let t = "scim_test";
        let alice = w.alice.id;
        let spec =
            |name: &str, members: Vec<UserId>| ScimGroupSpec { display_name: name.into(), external_id: None, members };
        let g = w.m.scim_create_group(t, spec("ops", vec![alice])).await?;
        let user = w.store.user(alice).await.unwrap().unwrap();
        assert_eq!(user.scim_groups, vec!["ops".to_owned()]);
        let sign_in = user.groups.clone();
        // Renaming the group renames the person's Cedar group.
        let g = w.m.scim_update_group(t, &g, spec("sre", vec![alice])).await?;
        let user = w.store.user(alice).await.unwrap().unwrap();
        assert_eq!((user.scim_groups, user.groups), (vec!["sre".to_owned()], sign_in.clone()));
        // A stale group is not written; a bad name or member is refused.
        let stale = w.m.scim_update_group(t, &ScimGroup { revision: 1, ..g.clone() }, spec("x", vec![])).await;
        assert!(matches!(stale, Err(Error::PreconditionFailed(_))), "{stale:?}");
        for bad in [spec("no spaces", vec![]), spec("ok", vec![w.bob.id, UserId::from_ulid(ulid::Ulid::nil())])] {
            let r = w.m.scim_update_group(t, &g, bad).await;
            assert!(matches!(r, Err(Error::BadInput(_))), "{r:?}");
        }
        w.m.scim_delete_group(t, &g).await?;
        let user = w.store.user(alice).await.unwrap().unwrap();
        assert!(user.scim_groups.is_empty() && user.groups == sign_in);
        Ok(())
    }
}
