//! The store conformance suite on PostgreSQL. Each case gets a fresh
//! database on the server named by `MANDATE_TEST_POSTGRES_URL`
//! (default: the local server, trust auth).

use std::sync::Arc;

use mandate_core::Store;
use sqlx::Connection;

fn admin_url() -> String {
    std::env::var("MANDATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> anyhow::Result<String> {
    let admin = admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    let name = format!(
        "mandate_test_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or(admin);
    Ok(format!("{base}/{name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_store_conformance_suite() -> anyhow::Result<()> {
    let created = std::sync::Mutex::new(Vec::new());
    let result = mandate_testkit::conformance::run_all(|| async {
        let url = fresh_database().await?;
        if let Ok(mut c) = created.lock() {
            c.push(url.clone());
        }
        let store: Arc<dyn Store> =
            Arc::new(mandate_store_postgres::PostgresStore::connect(&url).await?);
        Ok(store)
    })
    .await;
    let urls = created.lock().map(|c| c.clone()).unwrap_or_default();
    drop_databases(&urls).await?;
    result
}

/// Drops the databases a test created, closing their connections.
pub async fn drop_databases(urls: &[String]) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(&admin_url()).await?;
    for url in urls {
        if let Some((_, name)) = url.rsplit_once('/') {
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await?;
        }
    }
    Ok(())
}
