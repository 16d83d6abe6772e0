//! Signing keys, stored wrapped by the key-encryption key.

use mandate_core::store::{KeyUse, Mutation, StoreError, StoredKey};
use mandate_store_sql::{self as codec, ts};
use rusqlite::{Connection, Row, params};

use crate::readers::Mapped;
use crate::writer::exec;

/// Applies one mutation of this family.
pub(crate) fn apply(conn: &Connection, m: &Mutation) -> Result<u64, StoreError> {
    match m {
        Mutation::InsertSigningKey(k) => exec(
            conn,
            "INSERT INTO signing_keys (kid, alg, purpose, wrapped_private, public_jwk, created_at, retired_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                k.kid,
                k.alg,
                k.purpose.as_str(),
                k.wrapped_private,
                k.public_jwk,
                ts(k.created_at)?,
                k.retired_at.map(ts).transpose()?
            ],
            "signing key",
        ),
        Mutation::RetireSigningKeys { purpose, keep, at } => exec(
            conn,
            "UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL AND purpose = ?2 AND kid <> ?3",
            params![ts(*at)?, purpose.as_str(), keep],
            "signing key",
        ),
        other => Err(crate::writer::misrouted(other)),
    }
}

pub(crate) fn key_row(r: &Row<'_>) -> Mapped<StoredKey> {
    let created: i64 = r.get("created_at")?;
    let retired: Option<i64> = r.get("retired_at")?;
    let kid: String = r.get("kid")?;
    let alg: String = r.get("alg")?;
    let purpose: String = r.get("purpose")?;
    let wrapped_private: Vec<u8> = r.get("wrapped_private")?;
    let public_jwk: Option<String> = r.get("public_jwk")?;
    Ok((|| {
        Ok(StoredKey {
            kid,
            alg,
            purpose: KeyUse::parse(&purpose)?,
            wrapped_private,
            public_jwk,
            created_at: codec::from_ts(created)?,
            retired_at: codec::opt_ts(retired)?,
        })
    })())
}
