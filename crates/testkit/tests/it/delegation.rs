//! The delegation scenarios (issue 4) on SQLite; the PostgreSQL suite runs
//! the same ones.

use mandate_testkit::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_delegation_scenarios() -> anyhow::Result<()> {
    mandate_testkit::scenarios::run_all(TestServer::start).await
}
