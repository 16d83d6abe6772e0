//! The store conformance suite on the in-memory store, one test per case.

use std::sync::Arc;

use mandate_core::store::MemoryStore;
use mandate_testkit::conformance::Fresh;

async fn fresh_store() -> anyhow::Result<Fresh> {
    Ok(Fresh::new(Arc::new(MemoryStore::new())))
}

mandate_testkit::store_conformance!(fresh_store());
