//! Load shared by the stores' benchmarks.

use std::sync::Arc;

use mandate_core::audit::AuditRecord;
use mandate_core::store::{Change, Store, StoreError};

/// `tasks` concurrent writers, each committing `per_task` changes of one
/// audit event, as concurrent requests do. Events look like real token
/// issuance: one of `tasks` agents, and a ULID jti, which grows with time
/// as real jtis do. Returns the events appended.
pub async fn append_concurrently(store: Arc<dyn Store>, tasks: usize, per_task: usize) -> Result<u64, StoreError> {
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                let mut e = crate::conformance::event("token.issued", &format!("agt_{t:04}"));
                e.jti = Some(format!("tok_{}", ulid::Ulid::new()));
                e.request_id = Some(format!("req-{t}-{i}"));
                e.subject = Some("usr_01JABCDEFGHJKMNPQRSTVWXYZ0".into());
                e.resource = Some("https://api.example.com".into());
                e.scope = Some("read".into());
                store.commit(Change::new().with(AuditRecord::new(e).mutation())).await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for h in handles {
        h.await.map_err(|e| StoreError::Unavailable(e.to_string()))??;
    }
    Ok((tasks * per_task) as u64)
}
