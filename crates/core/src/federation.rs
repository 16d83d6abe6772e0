//! People who sign in with an upstream OpenID Connect provider (DESIGN §10).
//! The server runs the protocol (authorization code, PKCE, `state`,
//! `nonce`, the ID token's validation) and hands this module the identity
//! the provider vouched for; this module decides who that is here:
//!
//! - a person is found by the stored link (`iss`, `sub`), never by email
//!   alone;
//! - an unknown identity, with `jit_provisioning`, a verified email and an
//!   allowed domain, is linked to the active person with that email, or
//!   becomes a new person;
//! - the provider's groups replace the person's groups at every sign-in;
//! - unverified emails and disabled people are refused.
//!
//! Every outcome is one commit with its audit event; a refusal changes
//! nothing but the trail.

use std::collections::{BTreeMap, BTreeSet};

use mandate_model::UserId;
use mandate_model::records::{UpstreamLink, User, UserStatus};
use serde::Deserialize;

use crate::Error;
use crate::audit::{AuditRecord, DENY, kind};
use crate::ports::new_ulid;
use crate::service::Mandate;
use crate::session::SignedIn;
use crate::store::{Change, Mutation};
use mandate_model::name;

/// How Mandate authenticates to the provider's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

/// One `[[upstream_oidc]]` of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamIdp {
    /// Names the routes: `/login/oidc/{id}` and `/login/oidc/{id}/callback`.
    pub id: String,
    /// The button reads "Sign in with {display_name}".
    pub display_name: String,
    pub issuer: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<String>,
    /// PKCS#8 key for `private_key_jwt`.
    #[serde(default)]
    pub client_key_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    /// With an `email_claim` other than `email`: the operator's word that
    /// the provider verifies that claim's address. `email_verified` speaks
    /// only of `email`, so without this such a claim (`upn`,
    /// `preferred_username`, often editable by the user) is refused at
    /// start-up.
    #[serde(default)]
    pub email_claim_verified: bool,
    /// The claim holding the groups; none: the person's groups are left as
    /// they are.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Claim name → Cedar attribute name: string claims copied to the
    /// person's attributes at each sign-in.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    #[serde(default)]
    pub jit_provisioning: bool,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

fn default_email_claim() -> String {
    "email".into()
}

impl UpstreamIdp {
    /// The checks made at start-up.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(format!("upstream_oidc id {:?} must be 1-64 of a-z 0-9 - _", self.id));
        }
        if self.display_name.trim().is_empty() {
            return Err(format!("upstream_oidc {}: display_name is empty", self.id));
        }
        if self.email_claim != "email" && !self.email_claim_verified {
            return Err(format!(
                "upstream_oidc {}: email_verified speaks of the email claim only; with email_claim = {:?} set email_claim_verified = true if the provider verifies that address",
                self.id, self.email_claim
            ));
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            return Err(format!("upstream_oidc {}: scopes must include openid", self.id));
        }
        match self.client_auth {
            ClientAuth::ClientSecretBasic | ClientAuth::ClientSecretPost if self.client_secret.is_none() => {
                return Err(format!("upstream_oidc {}: client_secret is missing", self.id));
            }
            ClientAuth::PrivateKeyJwt => {
                if self.client_secret.is_some() {
                    return Err(format!(
                        "upstream_oidc {}: client_auth = \"private_key_jwt\" sends no client_secret; remove it",
                        self.id
                    ));
                }
                if self.client_key_file.is_none() {
                    return Err(format!(
                        "upstream_oidc {}: client_auth = \"private_key_jwt\" needs client_key_file",
                        self.id
                    ));
                }
                self.client_key().map_err(|e| format!("upstream_oidc {}: {e}", self.id))?;
            }
            _ => {}
        }
        if self.jit_provisioning && self.allowed_email_domains.is_empty() {
            return Err(format!(
                "upstream_oidc {}: jit_provisioning needs allowed_email_domains (who may be created)",
                self.id
            ));
        }
        Ok(())
    }
}

impl UpstreamIdp {
    /// The key Mandate signs its `private_key_jwt` assertions with, from
    /// `client_key_file`: PKCS#8, as DER or PEM (`-----BEGIN PRIVATE
    /// KEY-----`), Ed25519 or P-256 (as the gateway's `key_file`). `None`
    /// for the other ways of authenticating.
    pub fn client_key(&self) -> Result<Option<mandate_jose::SigningKey>, String> {
        use mandate_jose::SigningKey;
        if self.client_auth != ClientAuth::PrivateKeyJwt {
            return Ok(None);
        }
        let Some(path) = &self.client_key_file else { return Err("client_key_file is missing".into()) };
        let fail = |why: String| format!("client_key_file {}: {why}", path.display());
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        SigningKey::from_key_file(&bytes).map(Some).map_err(fail)
    }
}

/// What the provider vouched for in a validated ID token (and, where the
/// server asked, its UserInfo).
#[derive(Debug, Clone, Default)]
pub struct UpstreamIdentity {
    /// The provider's `iss`.
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    /// `None` when the provider has no groups claim configured.
    pub groups: Option<Vec<String>>,
    /// Mapped attributes (already renamed).
    pub attributes: BTreeMap<String, String>,
}

/// Whether `email`'s domain is one of `allowed` (case-insensitive, exact:
/// `example.com` does not allow `sub.example.com`).
pub fn domain_allowed(email: &str, allowed: &[String]) -> bool {
    email.rsplit_once('@').is_some_and(|(_, d)| allowed.iter().any(|a| a.eq_ignore_ascii_case(d)))
}

/// The groups of a claim that can be Cedar groups, deduplicated, at most
/// [`crate::admin::MAX_GROUPS`]; others are left out (and said so in the
/// event).
fn usable_groups(groups: &[String]) -> (Vec<String>, usize) {
    let mut seen = BTreeSet::new();
    let usable: Vec<String> = groups
        .iter()
        .filter(|g| name::validate_label("groups", g).is_ok())
        // ADR 0037: a provider never gives the admin token's groups.
        .filter(|g| !crate::audit::ADMIN_ONLY_GROUPS.contains(&g.as_str()))
        .filter(|g| seen.insert(g.as_str()))
        .take(crate::admin::MAX_GROUPS)
        .cloned()
        .collect();
    let dropped = groups.len() - usable.len();
    (usable, dropped)
}

/// The context a pending upstream sign-in's cookie is sealed under.
const PENDING_CONTEXT: &[u8] = b"mandate:upstream-oidc-pending:v1";

impl Mandate {
    /// Seals what a sign-in at an upstream provider must remember until the
    /// browser comes back (`state`, `nonce`, the PKCE verifier): encrypted
    /// and authenticated under the master key, so that any node reads it
    /// and nobody can forge or read it.
    pub fn seal_pending(&self, plain: &[u8]) -> Result<String, Error> {
        use base64::Engine;
        let sealed = self
            .kek
            .seal(PENDING_CONTEXT, plain)
            .map_err(|e| Error::Unavailable(format!("sealing a pending sign-in: {e}")))?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
    }

    /// What [`Self::seal_pending`] sealed, if `cookie` is genuine.
    pub fn open_pending(&self, cookie: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        if cookie.len() > 4096 {
            return None;
        }
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cookie).ok()?;
        self.kek.open(PENDING_CONTEXT, &sealed).ok()
    }

    /// Uses a `state` once: `false` if it was used before (a replayed
    /// response). Kept in the replay store until `expires_at`, so every
    /// node sees it.
    pub async fn burn_upstream_state(&self, state: &str, expires_at: time::OffsetDateTime) -> Result<bool, Error> {
        let key = format!("oidc-state:{}", crate::secrets::hash(state));
        match self.store.commit(Change::new().with(Mutation::ConsumeDpopJti { key, expires_at })).await {
            Ok(_) => Ok(true),
            Err(crate::StoreError::DpopReplay) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a sign-in at provider `idp` refused before any identity was
    /// established (a bad or replayed `state`, an ID token that failed
    /// validation, the provider's own error), and returns the refusal.
    pub async fn refuse_upstream(&self, idp: &str, why: &str) -> Error {
        let mut event = self.event(kind::SIGN_IN_FAILED);
        event.decision = Some(DENY.into());
        event.reason = Some(format!("upstream:{idp}: {why}"));
        match self.record(event).await {
            Ok(()) => Error::Forbidden(why.to_owned()),
            Err(e) => e,
        }
    }

    /// Signs in the person an upstream provider vouched for, under that
    /// provider's configuration `idp`.
    pub async fn sign_in_upstream(&self, idp: &UpstreamIdp, who: UpstreamIdentity) -> Result<SignedIn, Error> {
        let link = self.store.upstream_link(&who.issuer, &who.subject).await?;
        let how = format!("upstream:{} ({} {})", idp.id, who.issuer, who.subject);
        let refuse = |user: Option<UserId>, why: String| async move {
            let mut event = self.event(kind::SIGN_IN_FAILED);
            event.decision = Some(DENY.into());
            event.subject = user.map(|u| u.to_string());
            event.reason = Some(format!("upstream:{}: {why}", idp.id));
            self.record(event).await?;
            Err::<SignedIn, Error>(Error::Forbidden(why))
        };
        if !who.email_verified {
            return refuse(link.map(|l| l.user), "the identity provider has not verified this email address".into())
                .await;
        }
        let mut change = Change::new();
        let mut events = Vec::new();
        let mut created = false;
        let mut user = match link {
            Some(link) => match self.store.user(link.user).await? {
                Some(u) => u,
                None => return refuse(None, "the linked person no longer exists".into()).await,
            },
            None => {
                if !idp.jit_provisioning {
                    return refuse(
                        None,
                        "no Mandate account is linked to this identity; ask an administrator to add you".into(),
                    )
                    .await;
                }
                let Some(email) = who.email.as_deref().and_then(|e| mandate_model::name::validate_email(e).ok()) else {
                    return refuse(None, "the identity provider sent no usable email address".into()).await;
                };
                if !domain_allowed(&email, &idp.allowed_email_domains) {
                    return refuse(None, format!("the email domain of {email} is not allowed to sign in here")).await;
                }
                let user = match self.store.user_by_email(&email).await? {
                    // An account already linked to another identity is not
                    // taken over by a new one with its email (a reissued
                    // address, a second provider): an admin links it.
                    Some(existing) if self.store.upstream_linked(existing.id).await? => {
                        return refuse(
                            Some(existing.id),
                            format!("the account of {email} is linked to another sign-in; ask an administrator"),
                        )
                        .await;
                    }
                    Some(existing) => existing,
                    None => {
                        let display = who.name.as_deref().and_then(|n| mandate_model::name::validate_name(n).ok());
                        let user = User {
                            id: UserId::from_ulid(new_ulid(self.clock.as_ref(), self.rng.as_ref())?),
                            name: display.unwrap_or_else(|| email.clone()),
                            email: email.clone(),
                            groups: Vec::new(),
                            attributes: BTreeMap::new(),
                            status: UserStatus::Active,
                            created_at: self.clock.now(),
                            password_hash: None,
                            scim_groups: Vec::new(),
                        };
                        created = true;
                        let mut event = self.event(kind::USER_CREATED);
                        event.decision = Some(crate::audit::ALLOW.into());
                        event.subject = Some(user.id.to_string());
                        event.actor = Some(format!("upstream:{}", idp.id));
                        event.reason = Some("created at first sign-in (jit_provisioning)".into());
                        events.push(event);
                        user
                    }
                };
                change.push(Mutation::InsertUpstreamLink(UpstreamLink {
                    issuer: who.issuer.clone(),
                    subject: who.subject.clone(),
                    user: user.id,
                    created_at: self.clock.now(),
                }));
                let mut event = self.event(kind::USER_LINKED);
                event.decision = Some(crate::audit::ALLOW.into());
                event.subject = Some(user.id.to_string());
                event.actor = Some(format!("upstream:{}", idp.id));
                event.reason = Some(format!("linked to {} {}", who.issuer, who.subject));
                events.push(event);
                user
            }
        };
        if user.status != UserStatus::Active {
            return refuse(Some(user.id), "this account is disabled".into()).await;
        }
        // The provider's groups replace the person's at every sign-in, so
        // the next Cedar decision sees the change.
        let before = user.clone();
        let mut dropped = 0;
        if let Some(groups) = &who.groups {
            let (mut usable, n) = usable_groups(groups);
            dropped = n;
            // The admin token's groups the person holds stay: the provider
            // neither gives nor takes them (ADR 0037).
            let kept = before.groups.iter().filter(|g| crate::audit::ADMIN_ONLY_GROUPS.contains(&g.as_str()));
            let room = crate::admin::MAX_GROUPS.saturating_sub(kept.clone().count());
            usable.truncate(room);
            usable.extend(kept.cloned());
            user.groups = usable;
        }
        for (k, v) in &who.attributes {
            if name::validate_label("attributes", k).is_ok()
                && name::validate_text("attributes", v, crate::admin::MAX_ATTRIBUTE_VALUE).is_ok()
            {
                user.attributes.insert(k.clone(), v.clone());
            }
        }
        if created {
            // Before the link, which refers to the person.
            change.prepend(Mutation::InsertUser(user.clone()));
        } else if user != before {
            change.push(Mutation::UpdateUser(user.clone()));
            let mut event = self.event(kind::USER_UPDATED);
            event.decision = Some(crate::audit::ALLOW.into());
            event.subject = Some(user.id.to_string());
            event.actor = Some(format!("upstream:{}", idp.id));
            let mut why = format!("groups from the identity provider: [{}]", user.groups.join(","));
            if dropped > 0 {
                why.push_str(&format!(" ({dropped} unusable left out)"));
            }
            event.reason = Some(why);
            events.push(event);
        }
        for event in events {
            change.push(AuditRecord::new(event).mutation());
        }
        self.open_session(user, change, Some(how)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_match_exactly() {
        let allowed = vec!["example.com".to_owned()];
        assert!(domain_allowed("a@example.com", &allowed));
        assert!(domain_allowed("a@EXAMPLE.com", &allowed));
        assert!(!domain_allowed("a@sub.example.com", &allowed));
        assert!(!domain_allowed("a@example.com.evil.net", &allowed));
        assert!(!domain_allowed("example.com", &allowed));
    }

    use crate::store::Store;
    use crate::testing::World;
    use crate::{Caller, admin::UserPatch};

    const ISS: &str = "https://idp.example.com";

    fn idp(jit: bool) -> UpstreamIdp {
        UpstreamIdp {
            id: "corp".into(),
            display_name: "Corp".into(),
            issuer: ISS.into(),
            client_id: "mandate".into(),
            client_secret: Some("s".into()),
            client_key_file: None,
            client_auth: ClientAuth::ClientSecretBasic,
            scopes: default_scopes(),
            email_claim: default_email_claim(),
            email_claim_verified: false,
            groups_claim: Some("groups".into()),
            attributes: BTreeMap::new(),
            allowed_email_domains: vec!["example.com".into()],
            jit_provisioning: jit,
        }
    }

    fn who(sub: &str, email: &str, groups: Option<&[&str]>) -> UpstreamIdentity {
        UpstreamIdentity {
            issuer: ISS.into(),
            subject: sub.into(),
            email: Some(email.into()),
            email_verified: true,
            name: Some("Carol".into()),
            groups: groups.map(|g| g.iter().map(|s| (*s).to_owned()).collect()),
            attributes: BTreeMap::new(),
        }
    }

    /// Expects a refusal saying `why` that adds one `sign_in_failed` event
    /// and writes nothing else (no link, no person).
    async fn refused(w: &World, idp: &UpstreamIdp, who: UpstreamIdentity, why: &str) {
        let before = w.trail_len().await;
        let by_email = match who.email.as_deref() {
            Some(e) => w.store.user_by_email(e).await.unwrap(),
            None => None,
        };
        let (iss, sub) = (who.issuer.clone(), who.subject.clone());
        let email = who.email.clone();
        match w.m.sign_in_upstream(idp, who).await {
            Err(Error::Forbidden(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(w.trail_len().await, before + 1);
        let failed = w.events(kind::SIGN_IN_FAILED).await;
        let last = failed.last().unwrap();
        assert_eq!(last.seq, before + 1);
        assert!(last.reason.as_deref().unwrap_or_default().starts_with("upstream:corp: "), "{last:?}");
        assert!(w.store.upstream_link(&iss, &sub).await.unwrap().is_none());
        if let Some(e) = email {
            assert_eq!(w.store.user_by_email(&e).await.unwrap(), by_email);
        }
    }

    #[tokio::test]
    async fn an_unknown_identity_is_provisioned_then_found_by_its_link() {
        let w = World::new().await;
        let idp = idp(true);
        let first = w.m.sign_in_upstream(&idp, who("c-1", "carol@example.com", Some(&["eng"]))).await.unwrap();
        let carol = w.store.user_by_email("carol@example.com").await.unwrap().unwrap();
        assert_eq!(first.session.user.id, carol.id);
        assert_eq!((carol.name.as_str(), carol.groups.clone()), ("Carol", vec!["eng".to_owned()]));
        assert!(carol.password_hash.is_none());
        assert_eq!(w.store.upstream_link(ISS, "c-1").await.unwrap().map(|l| l.user), Some(carol.id));
        let created = w.events(kind::USER_CREATED).await;
        assert_eq!(created.last().unwrap().actor.as_deref(), Some("upstream:corp"));
        let n_created = created.len();
        // A new email at the provider: the same person, by (iss, sub).
        let again = w.m.sign_in_upstream(&idp, who("c-1", "carol.x@example.com", Some(&["eng"]))).await.unwrap();
        assert_eq!(again.session.user.id, carol.id);
        assert_eq!(w.events(kind::USER_CREATED).await.len(), n_created);
        assert_eq!(w.events(kind::USER_LINKED).await.len(), 1);
        assert!(w.store.user_by_email("carol.x@example.com").await.unwrap().is_none());
        // Nothing changed: no user.updated.
        assert!(w.events(kind::USER_UPDATED).await.iter().all(|e| e.subject != Some(carol.id.to_string())));
    }

    #[tokio::test]
    async fn an_existing_person_is_linked_by_email_and_gets_the_providers_groups() {
        let w = World::new().await;
        let signed = w.m.sign_in_upstream(&idp(true), who("a-1", "Alice@Example.com", Some(&["eng", "ops"]))).await;
        assert_eq!(signed.unwrap().session.user.id, w.alice.id);
        assert_eq!(w.store.upstream_link(ISS, "a-1").await.unwrap().map(|l| l.user), Some(w.alice.id));
        let alice = w.store.user(w.alice.id).await.unwrap().unwrap();
        assert_eq!(alice.groups, vec!["eng".to_owned(), "ops".to_owned()], "staff replaced");
        let updated = w.events(kind::USER_UPDATED).await;
        let last = updated.last().unwrap();
        assert_eq!(last.subject, Some(w.alice.id.to_string()));
        assert!(last.reason.as_deref().unwrap_or_default().contains("[eng,ops]"));
        // Another issuer with the same subject is another identity.
        let mut elsewhere = who("a-1", "alice@example.com", None);
        elsewhere.issuer = "https://other.example.com".into();
        refused(&w, &idp(false), elsewhere, "no Mandate account is linked").await;
    }

    #[tokio::test]
    async fn groups_are_replaced_cleared_or_left_as_the_claim_says() {
        let w = World::new().await;
        let idp = idp(true);
        w.m.sign_in_upstream(&idp, who("a-1", "alice@example.com", Some(&["eng"]))).await.unwrap();
        // No groups claim configured: the person's groups stay.
        w.m.sign_in_upstream(&idp, who("a-1", "alice@example.com", None)).await.unwrap();
        assert_eq!(w.store.user(w.alice.id).await.unwrap().unwrap().groups, vec!["eng".to_owned()]);
        // The claim is empty (or missing): no groups.
        w.m.sign_in_upstream(&idp, who("a-1", "alice@example.com", Some(&[]))).await.unwrap();
        assert!(w.store.user(w.alice.id).await.unwrap().unwrap().groups.is_empty());
        // Unusable names are left out and counted.
        w.m.sign_in_upstream(&idp, who("a-1", "alice@example.com", Some(&["CN=x,OU=y", "ops"]))).await.unwrap();
        assert_eq!(w.store.user(w.alice.id).await.unwrap().unwrap().groups, vec!["ops".to_owned()]);
        let last = w.events(kind::USER_UPDATED).await.pop().unwrap();
        assert!(last.reason.as_deref().unwrap_or_default().contains("1 unusable left out"), "{last:?}");
    }

    #[tokio::test]
    async fn refusals_write_nothing_but_their_event() {
        let w = World::new().await;
        let jit = idp(true);
        let mut unverified = who("c-1", "carol@example.com", Some(&["eng"]));
        unverified.email_verified = false;
        refused(&w, &jit, unverified, "has not verified this email").await;
        refused(&w, &jit, who("c-1", "carol@sub.example.com", None), "is not allowed to sign in here").await;
        refused(&w, &jit, who("c-1", "carol@example.org", None), "is not allowed to sign in here").await;
        let mut no_email = who("c-1", "x", None);
        no_email.email = None;
        refused(&w, &jit, no_email, "no usable email").await;
        refused(&w, &idp(false), who("c-1", "carol@example.com", None), "no Mandate account is linked").await;
        // An unverified email is refused even for a linked person, and the
        // person's groups stay.
        w.m.sign_in_upstream(&jit, who("a-1", "alice@example.com", Some(&["eng"]))).await.unwrap();
        let mut linked = who("a-1", "alice@example.com", Some(&["ops"]));
        linked.email_verified = false;
        let before = w.trail_len().await;
        assert!(matches!(w.m.sign_in_upstream(&jit, linked).await, Err(Error::Forbidden(_))));
        assert_eq!(w.trail_len().await, before + 1);
        let failed = w.events(kind::SIGN_IN_FAILED).await.pop().unwrap();
        assert_eq!(failed.subject, Some(w.alice.id.to_string()));
        assert_eq!(w.store.user(w.alice.id).await.unwrap().unwrap().groups, vec!["eng".to_owned()]);
    }

    #[tokio::test]
    async fn a_disabled_person_is_refused_linked_or_by_email() {
        let w = World::new().await;
        let jit = idp(true);
        w.m.sign_in_upstream(&jit, who("a-1", "alice@example.com", None)).await.unwrap();
        let off = UserPatch { status: Some(UserStatus::Disabled), ..UserPatch::default() };
        w.m.update_user(Caller::Admin, w.alice.id, off.clone()).await.unwrap();
        let before = w.trail_len().await;
        let refused_linked = w.m.sign_in_upstream(&jit, who("a-1", "alice@example.com", Some(&["eng"]))).await;
        assert!(matches!(refused_linked, Err(Error::Forbidden(m)) if m.contains("disabled")));
        assert_eq!(w.trail_len().await, before + 1);
        assert_eq!(w.store.user(w.alice.id).await.unwrap().unwrap().groups, vec!["staff".to_owned()]);
        // Bob, disabled before any link: no link is made.
        w.m.update_user(Caller::Admin, w.bob.id, off).await.unwrap();
        refused(&w, &jit, who("b-1", "bob@example.com", None), "this account is disabled").await;
    }

    #[test]
    fn the_client_key_is_read_as_der_or_pem() {
        use base64::Engine;
        let key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::ES256).unwrap();
        let dir = std::env::temp_dir().join(format!("mandate-federation-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.pkcs8());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        std::fs::write(dir.join("k.der"), key.pkcs8()).unwrap();
        std::fs::write(dir.join("k.pem"), pem).unwrap();
        std::fs::write(dir.join("bad.pem"), "-----BEGIN EC PRIVATE KEY-----\nAAAA\n").unwrap();
        let mut idp = UpstreamIdp { client_secret: None, client_auth: ClientAuth::PrivateKeyJwt, ..idp(false) };
        for file in ["k.der", "k.pem"] {
            idp.client_key_file = Some(dir.join(file));
            idp.validate().unwrap();
            assert_eq!(idp.client_key().unwrap().unwrap().public().to_json(), key.public().to_json(), "{file}");
        }
        idp.client_key_file = Some(dir.join("bad.pem"));
        assert!(idp.validate().unwrap_err().contains("PKCS#8"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn odd_groups_are_left_out() {
        let (g, n) = usable_groups(&["eng".into(), "eng".into(), "CN=x,OU=y".into(), "ops".into()]);
        assert_eq!(g, vec!["eng".to_owned(), "ops".to_owned()]);
        assert_eq!(n, 2);
    }

    #[test]
    fn another_email_claim_needs_the_operators_word() {
        let mut idp = idp(false);
        idp.email_claim = "upn".into();
        assert!(idp.validate().is_err_and(|e| e.contains("email_claim_verified")));
        idp.email_claim_verified = true;
        assert!(idp.validate().is_ok());
    }

    /// ADR 0037, one row per path that sets a person's groups: only the
    /// admin token gives `mandate-admins` or `mandate-auditors`; a person's
    /// own call, a console admin, a SCIM client and an upstream provider
    /// cannot, and a provider's sign-in does not take them away.
    #[tokio::test]
    async fn only_the_admin_token_gives_the_admin_only_groups() {
        use crate::audit::ADMIN_ONLY_GROUPS;
        use crate::scim::ScimGroupSpec;
        let w = World::new().await;
        let (alice, bob) = (w.alice.id, w.bob.id);
        let patch = |g: &[&str]| UserPatch {
            groups: Some(g.iter().map(|g| (*g).to_owned()).collect()),
            ..UserPatch::default()
        };
        // Bob opens the console: still not a way to give the groups.
        w.m.update_user(Caller::Admin, bob, patch(&[Mandate::ADMINS_GROUP])).await.unwrap();
        assert!(w.m.is_console_admin(bob).await.unwrap());
        let ops =
            w.m.scim_create_group(
                "scim_test",
                ScimGroupSpec { display_name: "ops".into(), external_id: None, members: vec![alice] },
            )
            .await
            .unwrap();
        let holds = |u: mandate_model::records::User, g: &str| u.groups.iter().chain(&u.scim_groups).any(|x| x == g);
        for group in ADMIN_ONLY_GROUPS {
            let spec = |members| ScimGroupSpec { display_name: group.into(), external_id: None, members };
            let rows: Vec<(&str, Result<(), Error>)> = vec![
                ("her own call", w.m.update_user(Caller::User(alice), alice, patch(&[group])).await.map(drop)),
                ("a console admin", w.m.update_user(Caller::ConsoleAdmin(bob), alice, patch(&[group])).await.map(drop)),
                ("a SCIM group", w.m.scim_create_group("scim_test", spec(vec![alice])).await.map(drop)),
                ("a SCIM rename", w.m.scim_update_group("scim_test", &ops, spec(vec![alice])).await.map(drop)),
            ];
            for (path, got) in rows {
                assert!(
                    matches!(got, Err(Error::Forbidden(_) | Error::BadInput(_))),
                    "{group} through {path}: {got:?}"
                );
                assert!(!holds(w.store.user(alice).await.unwrap().unwrap(), group), "{group} through {path}");
            }
            // The provider's claim: its other groups are taken, that one not.
            w.m.sign_in_upstream(&idp(true), who("a-1", "alice@example.com", Some(&[group, "eng"]))).await.unwrap();
            let after = w.store.user(alice).await.unwrap().unwrap();
            assert_eq!(after.groups, vec!["eng".to_owned()], "{group} through an upstream sign-in");
        }
        assert!(!w.m.is_console_admin(alice).await.unwrap() && !w.m.is_auditor(alice).await.unwrap());
        // The admin token gives them, and a later sign-in keeps them.
        w.m.update_user(Caller::Admin, alice, patch(&ADMIN_ONLY_GROUPS)).await.unwrap();
        w.m.sign_in_upstream(&idp(true), who("a-1", "alice@example.com", Some(&["ops"]))).await.unwrap();
        let after = w.store.user(alice).await.unwrap().unwrap();
        assert_eq!(after.groups, vec!["ops".to_owned(), "mandate-auditors".to_owned(), "mandate-admins".to_owned()]);
        assert!(w.m.is_console_admin(alice).await.unwrap() && w.m.is_auditor(alice).await.unwrap());
        // Disabled, the group opens nothing.
        let off = UserPatch { status: Some(mandate_model::records::UserStatus::Disabled), ..UserPatch::default() };
        w.m.update_user(Caller::Admin, alice, off).await.unwrap();
        assert!(!w.m.is_console_admin(alice).await.unwrap());
    }
}
