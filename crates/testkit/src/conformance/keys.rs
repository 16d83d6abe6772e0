//! Signing keys: rotation retires the old keys of one use only.

use std::sync::Arc;

use anyhow::{Result, ensure};
use mandate_core::store::{Change, KeyUse, Mutation, Store, StoreError, StoredKey};
use time::{Duration, OffsetDateTime};

use super::fixtures::{one, t0};

pub async fn signing_keys_rotate(s: &Arc<dyn Store>) -> Result<()> {
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
    let audit = key("a1", "EdDSA", KeyUse::Audit, t0() - Duration::seconds(1));
    one(s, Mutation::InsertSigningKey(k1.clone())).await?;
    one(s, Mutation::InsertSigningKey(audit.clone())).await?;
    let mut change = Change::new().with(Mutation::InsertSigningKey(k2.clone()));
    let retired = change.push(Mutation::RetireSigningKeys {
        purpose: KeyUse::Token,
        keep: "k2".into(),
        at: t0() + Duration::seconds(2),
    });
    ensure!(s.commit(change).await?.affected(retired)? == 1, "one token key to retire");
    let keys = s.signing_keys().await?;
    let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
    ensure!(kids == ["a1", "k1", "k2"], "keys are listed oldest first: {kids:?}");
    ensure!(keys.iter().find(|k| k.kid == "a1") == Some(&audit), "a token rotation touched the audit key");
    let k1_now = keys.iter().find(|k| k.kid == "k1").cloned();
    ensure!(k1_now.as_ref().and_then(|k| k.retired_at) == Some(t0() + Duration::seconds(2)), "old key not retired");
    ensure!(keys.iter().find(|k| k.kid == "k2") == Some(&k2), "new key changed");
    ensure!(
        matches!(one(s, Mutation::InsertSigningKey(k1)).await, Err(StoreError::Conflict(_))),
        "duplicate kid accepted"
    );
    // A retired key keeps its first retirement.
    let again =
        Mutation::RetireSigningKeys { purpose: KeyUse::Token, keep: "k2".into(), at: t0() + Duration::hours(1) };
    ensure!(one(s, again).await? == 0, "a retired key was retired again");
    Ok(())
}
