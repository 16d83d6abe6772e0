//! SCIM 2.0 provisioning of people (DESIGN §10): the bearer tokens the
//! admin issues to a provisioning client, and the SCIM User operations,
//! mapped onto Mandate's users. Nothing is ever deleted: a SCIM DELETE
//! disables the user, with the cascade disabling has, and hides the SCIM
//! resource (RFC 7644 §3.6).
//!
//! Tokens, their revocations and deletion marks are kept as write-once
//! settings (ADR 0020): a token is found by the first 16 hex digits of its
//! hash and then compared in full, in constant time.

use mandate_model::UserId;
use mandate_model::name;
use mandate_model::records::{User, UserStatus};

use crate::audit::{AuditRecord, kind};
use crate::ports::new_ulid;
use crate::service::{Caller, Mandate};
use crate::store::{Change, Mutation};
use crate::{Error, secrets};

const TOKEN_SETTING: &str = "scim.token.";
const REVOKED_SETTING: &str = "scim.revoked.";
const DELETED_SETTING: &str = "scim.deleted.";

/// The public id of a SCIM token: `scim_` and the first 16 hex digits of
/// its hash.
fn token_id(hash: &str) -> String {
    format!("scim_{}", hash.get(..16).unwrap_or(hash))
}

/// What a SCIM client asks a User to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimUser {
    /// The `userName`, which is the email.
    pub email: String,
    pub name: String,
    /// `None` when the request does not say (or says `null`): a new user is
    /// active, an existing one keeps its status, so a sync that leaves
    /// `active` out never switches a disabled person back on.
    pub active: Option<bool>,
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
        let mut change = Change::new();
        let put = change.push(Mutation::PutSettingIfAbsent { key: format!("{TOKEN_SETTING}{id}"), value: hash });
        change.push(AuditRecord::new(event).mutation());
        if self.store.commit(change).await?.affected(put)? != 1 {
            return Err(Error::Unavailable("a SCIM token id collided".into()));
        }
        Ok((id, secret))
    }

    /// Revokes a SCIM token (admin only); revoking twice is a no-op.
    pub async fn revoke_scim_token(&self, caller: Caller, id: &str) -> Result<(), Error> {
        self.require_admin(caller).await?;
        if self.store.setting(&format!("{TOKEN_SETTING}{id}")).await?.is_none() {
            return Err(Error::NotFound(format!("SCIM token {id}")));
        }
        let at = self.clock.now().unix_timestamp().to_string();
        let mut event = self.admin_event(kind::SCIM_TOKEN_REVOKED, caller);
        event.client_id = Some(id.to_owned());
        let mut change = Change::new();
        let put = change.push(Mutation::PutSettingIfAbsent { key: format!("{REVOKED_SETTING}{id}"), value: at });
        change.push(AuditRecord::counting(event, &[put]).mutation());
        self.store.commit(change).await?;
        Ok(())
    }

    /// The id of the live SCIM token `bearer` is, or `Unauthenticated`.
    pub async fn authenticate_scim(&self, bearer: &str) -> Result<String, Error> {
        if !bearer.starts_with(secrets::SCIM_TOKEN_PREFIX) {
            return Err(Error::Unauthenticated);
        }
        let id = token_id(&secrets::hash(bearer));
        let stored = self.store.setting(&format!("{TOKEN_SETTING}{id}")).await?.ok_or(Error::Unauthenticated)?;
        if !secrets::matches(bearer, &stored) {
            return Err(Error::Unauthenticated);
        }
        if self.store.setting(&format!("{REVOKED_SETTING}{id}")).await?.is_some() {
            return Err(Error::Unauthenticated);
        }
        Ok(id)
    }

    async fn scim_deleted(&self, id: UserId) -> Result<bool, Error> {
        Ok(self.store.setting(&format!("{DELETED_SETTING}{id}")).await?.is_some())
    }

    /// A user as a SCIM resource: missing once SCIM deleted it.
    pub async fn scim_user(&self, id: UserId) -> Result<User, Error> {
        match self.store.user(id).await? {
            Some(u) if !self.scim_deleted(id).await? => Ok(u),
            _ => Err(Error::NotFound(format!("User {id}"))),
        }
    }

    /// The user whose email is `email`, unless SCIM deleted it.
    pub async fn scim_user_by_email(&self, email: &str) -> Result<Option<User>, Error> {
        let Ok(email) = name::validate_email(email) else { return Ok(None) };
        match self.store.user_by_email(&email).await? {
            Some(u) if !self.scim_deleted(u.id).await? => Ok(Some(u)),
            _ => Ok(None),
        }
    }

    /// Creates a user for SCIM client `token`; an email in use is a conflict.
    pub async fn scim_create_user(&self, token: &str, new: ScimUser) -> Result<User, Error> {
        let name = name::validate_name(&new.name)?;
        let email = name::validate_email(&new.email)?;
        if self.store.user_by_email(&email).await?.is_some() {
            return Err(Error::Conflict(format!("a user with userName {email} exists")));
        }
        let user = User {
            id: UserId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?),
            name,
            email,
            groups: Vec::new(),
            attributes: Default::default(),
            status: if new.active.unwrap_or(true) { UserStatus::Active } else { UserStatus::Disabled },
            created_at: self.clock.now(),
            password_hash: None,
        };
        let mut event = self.event(kind::USER_CREATED);
        event.decision = Some(crate::audit::ALLOW.into());
        event.actor = Some(token.to_owned());
        event.subject = Some(user.id.to_string());
        event.reason = Some("SCIM".into());
        self.store
            .commit(Change::new().with(Mutation::InsertUser(user.clone())).with(AuditRecord::new(event).mutation()))
            .await?;
        Ok(user)
    }

    /// Applies what SCIM client `token` asks of user `id`. The email and the
    /// name are kept by Mandate as they were created: a change of either is
    /// refused (`mutability`). Disabling revokes as disabling does.
    pub async fn scim_update_user(&self, token: &str, id: UserId, want: ScimUser) -> Result<User, Error> {
        let mut user = self.scim_user(id).await?;
        if name::validate_email(&want.email)? != user.email {
            return Err(Error::Forbidden("userName (the email) cannot change".into()));
        }
        if name::validate_name(&want.name)? != user.name {
            return Err(Error::Forbidden("the name cannot change".into()));
        }
        let to = match want.active {
            Some(true) => UserStatus::Active,
            Some(false) => UserStatus::Disabled,
            None => user.status,
        };
        self.set_scim_status(token, &mut user, to, kind::USER_UPDATED).await?;
        Ok(user)
    }

    /// Disables user `id` and hides it from SCIM; the record stays.
    pub async fn scim_delete_user(&self, token: &str, id: UserId) -> Result<(), Error> {
        let mut user = self.scim_user(id).await?;
        self.set_scim_status(token, &mut user, UserStatus::Disabled, kind::SCIM_USER_DELETED).await
    }

    async fn set_scim_status(&self, token: &str, user: &mut User, to: UserStatus, what: &str) -> Result<(), Error> {
        let id = user.id;
        let disabling = to == UserStatus::Disabled && user.status != UserStatus::Disabled;
        let changed = user.status != to;
        user.status = to;
        let now = self.clock.now();
        let mut change = Change::new().with(Mutation::UpdateUser(user.clone()));
        let mut counted = Vec::new();
        if disabling {
            counted.push(change.push(Mutation::RevokeTokensOfSubject { subject: id.to_string(), at: now }));
            counted.push(change.push(Mutation::RevokeTokensOfOwnedAgents { owner: id, at: now }));
            change.push(Mutation::RevokeGrantsOfUser { user: id, at: now });
        }
        if what == kind::SCIM_USER_DELETED {
            change.push(Mutation::PutSettingIfAbsent {
                key: format!("{DELETED_SETTING}{id}"),
                value: now.unix_timestamp().to_string(),
            });
        }
        let mut event = self.event(what);
        event.decision = Some(crate::audit::ALLOW.into());
        event.actor = Some(token.to_owned());
        event.subject = Some(id.to_string());
        event.reason = Some(match (changed, to) {
            (false, _) => "SCIM: no change".into(),
            (true, UserStatus::Disabled) => "SCIM: status: disabled".into(),
            (true, UserStatus::Active) => "SCIM: status: active".into(),
        });
        change.push(AuditRecord::counting(event, &counted).mutation());
        self.store.commit(change).await?;
        Ok(())
    }
}
