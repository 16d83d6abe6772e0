//! Signing keys, stored wrapped by the key-encryption key.

use mandate_core::store::{Mutation, StoreError};
use mandate_store_sql::ts;
use sqlx::postgres::PgConnection;

use crate::unavailable;
use crate::writer::{map_write_error, misrouted};

/// Applies one mutation of this family.
pub(crate) async fn apply(conn: &mut PgConnection, m: &Mutation) -> Result<u64, StoreError> {
    let done = match m {
        Mutation::InsertSigningKey(k) => sqlx::query(
            "INSERT INTO signing_keys (kid, alg, purpose, wrapped_private, public_jwk, created_at, retired_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&k.kid)
        .bind(&k.alg)
        .bind(k.purpose.as_str())
        .bind(&k.wrapped_private)
        .bind(&k.public_jwk)
        .bind(ts(k.created_at)?)
        .bind(k.retired_at.map(ts).transpose()?)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_write_error(e, "signing key"))?,
        Mutation::RetireSigningKeys { purpose, keep, at } => sqlx::query(
            "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL AND purpose = $2 AND kid <> $3",
        )
            .bind(ts(*at)?)
            .bind(purpose.as_str())
            .bind(keep)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?,
        other => return Err(misrouted(other)),
    };
    Ok(done.rows_affected())
}
