//! The store conformance suite on PostgreSQL, one test per case. Each case
//! gets a fresh database on the server named by `MANDATE_TEST_POSTGRES_URL`
//! (default: the local server, trust auth), dropped when it is over, so the
//! cases run in parallel.
// Test helpers index JSON freely; a missing member fails the test.
#![allow(clippy::indexing_slicing)]

use std::sync::Arc;

use mandate_core::Store;
use mandate_testkit::conformance::{Exec, Fresh, TamperRig};
use sqlx::Connection;

fn admin_url() -> String {
    std::env::var("MANDATE_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> anyhow::Result<String> {
    let admin = admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    let name = format!("mandate_test_{}", ulid::Ulid::new().to_string().to_lowercase());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin);
    Ok(format!("{base}/{name}"))
}

/// Runs `test` on a fresh database of its own, which is dropped afterwards
/// whatever the outcome.
async fn on_fresh_database<F, Fut>(test: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let url = fresh_database().await?;
    let result = test(url.clone()).await;
    drop_databases(&[url]).await?;
    result
}

/// A fresh store on a database of its own, dropped when the case is over.
async fn fresh_store() -> anyhow::Result<Fresh> {
    store_on(fresh_database().await?).await
}

/// A store on the database at `url`, which is dropped when the case is over.
async fn store_on(url: String) -> anyhow::Result<Fresh> {
    store_with_writers(url, mandate_store_postgres::DEFAULT_WRITERS).await
}

/// [`store_on`] with `writers` writer tasks, and so as many lanes.
async fn store_with_writers(url: String, writers: u32) -> anyhow::Result<Fresh> {
    match mandate_store_postgres::PostgresStore::connect_with_writers(&url, writers).await {
        Ok(store) => Ok(Fresh::new(Arc::new(store)).on_close(move || async move { drop_databases(&[url]).await })),
        Err(e) => {
            drop_databases(&[url]).await?;
            Err(e.into())
        }
    }
}

mandate_testkit::store_conformance!(fresh_store());

/// A fresh store, and the means to edit its database behind its back (the
/// tamper cases), including a trigger that fails every audit insert. The
/// shared cases expect one chain, numbered without gaps: one writer, one
/// lane. The lane cases below take several.
async fn tamper_rig() -> anyhow::Result<(TamperRig, Fresh)> {
    tamper_rig_with(1).await
}

async fn tamper_rig_with(writers: u32) -> anyhow::Result<(TamperRig, Fresh)> {
    let url = fresh_database().await?;
    let fresh = store_with_writers(url.clone(), writers).await?;
    let exec: Exec = Arc::new(move |sql: String| {
        let url = url.clone();
        Box::pin(async move {
            let pool = sqlx::PgPool::connect(&url).await?;
            let done = sqlx::raw_sql(&format!("BEGIN; {sql}; COMMIT;")).execute(&pool).await;
            pool.close().await;
            done?;
            Ok(())
        })
    });
    let rig = TamperRig {
        store: fresh.store.clone(),
        exec,
        drop_guards: "DROP TRIGGER audit_events_no_change ON audit_events",
        fail_appends: "CREATE FUNCTION audit_fail() RETURNS trigger LANGUAGE plpgsql AS \
                       'BEGIN RAISE EXCEPTION ''injected fault''; END'; \
                       CREATE TRIGGER audit_fail BEFORE INSERT ON audit_events \
                       FOR EACH ROW EXECUTE FUNCTION audit_fail()",
        restore_appends: "DROP TRIGGER audit_fail ON audit_events",
        // Every column is typed and NOT NULL: no row can be left unreadable.
        garble_checkpoint: None,
        extra_event_columns: ", lane",
    };
    Ok((rig, fresh))
}

mandate_testkit::store_tamper_suite!(tamper_rig());

/// The tamper cases of a trail with several lanes (four writers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_moved_to_another_lane_is_caught() -> anyhow::Result<()> {
    let (rig, fresh) = tamper_rig_with(4).await?;
    let outcome = mandate_testkit::conformance::tamper::an_event_moved_to_another_lane_is_caught(&rig).await;
    drop(rig);
    fresh.finish(outcome).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lane_tail_is_caught_by_its_checkpoint() -> anyhow::Result<()> {
    let (rig, fresh) = tamper_rig_with(4).await?;
    let outcome = mandate_testkit::conformance::tamper::a_deleted_lane_tail_is_caught_by_its_checkpoint(&rig).await;
    drop(rig);
    fresh.finish(outcome).await
}

/// Drops the databases a test created, closing their connections.
pub async fn drop_databases(urls: &[String]) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(&admin_url()).await?;
    for url in urls {
        if let Some((_, name)) = url.rsplit_once('/') {
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
        }
    }
    Ok(())
}

/// Two server nodes on one database: a revocation on one is seen by the
/// other at once; a policy change reaches the other within its sync period.
/// Nodes sharing the database at `url` as a deployment's do: one issuer,
/// one data dir (for the key-encryption key) and one clock; each node its
/// own store, as a process of its own would have.
struct Nodes {
    url: String,
    dir: tempfile::TempDir,
    clock: Arc<mandate_core::ManualClock>,
    /// Seconds between polls for other nodes' changes; `None`: the default.
    sync_interval: Option<i64>,
}

impl Nodes {
    fn on(url: &str) -> anyhow::Result<Self> {
        let now = mandate_core::Clock::now(&mandate_core::SystemClock);
        let clock = Arc::new(mandate_core::ManualClock::new(now));
        Ok(Self { url: url.to_owned(), dir: tempfile::tempdir()?, clock, sync_interval: None })
    }

    /// No poll within a test (once an hour): only the change feed, or a
    /// request's own epoch read, carries another node's change.
    fn without_polls(self) -> Self {
        Self { sync_interval: Some(3_600), ..self }
    }

    async fn store(&self) -> anyhow::Result<Arc<dyn Store>> {
        Ok(Arc::new(mandate_store_postgres::PostgresStore::connect(&self.url).await?))
    }

    async fn start(&self) -> anyhow::Result<mandate_testkit::TestServer> {
        self.start_on(self.store().await?).await
    }

    async fn start_on(&self, store: Arc<dyn Store>) -> anyhow::Result<mandate_testkit::TestServer> {
        let poll = self.sync_interval;
        mandate_testkit::TestServer::start_on(store, self.dir.path(), self.clock.clone(), move |c| {
            c.issuer = "https://mandate.test".into();
            if let Some(every) = poll {
                c.sync_interval = every;
            }
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_database() -> anyhow::Result<()> {
    on_fresh_database(|url| async move {
        let nodes = Nodes::on(&url)?;
        let (a, b) = (nodes.start().await?, nodes.start().await?);
        // Both nodes publish the one key created by whichever started first.
        let ka: serde_json::Value = a.http.get(format!("{}/jwks.json", a.url)).send().await?.json().await?;
        let kb: serde_json::Value = b.http.get(format!("{}/jwks.json", b.url)).send().await?.json().await?;
        anyhow::ensure!(ka == kb, "nodes publish different keys: {ka} vs {kb}");

        let (_, agent) = a.seed().await?;
        // Policies reach other nodes by their one-second sync; do it now.
        b.mandate.sync_from_store().await?;
        let (st, body) = b.token(&agent, "https://api.example.com", "read").await?;
        anyhow::ensure!(st == 200, "node B could not issue: {body}");
        let token = body["access_token"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(a.introspect(&token).await?["active"] == true);
        // B has now verified and cached the token's live chain.
        anyhow::ensure!(b.introspect(&token).await?["active"] == true);
        // An assertion used on one node is refused on the other.
        let once = a.assertion(&agent, serde_json::json!({}));
        let (st, _) = a.token_with(&once, "https://api.example.com", "read").await?;
        anyhow::ensure!(st == 200);
        let (st, _) = b.token_with(&once, "https://api.example.com", "read").await?;
        anyhow::ensure!(st == 401, "a replay on the other node was accepted");
        // B serves the token's status list (and keeps it).
        let status = mandate_testkit::scenarios::claims(&token)["status"]["status_list"].clone();
        let idx = status["idx"].as_u64().unwrap_or(u64::MAX);
        let uri = status["uri"].as_str().unwrap_or_default().to_owned();
        let path = uri.trim_start_matches("https://mandate.test").to_owned();
        let bit_on_b = || async {
            let list = b.http.get(format!("{}{path}", b.url)).send().await?.text().await?;
            let keys = mandate_jose::JwkSet::from_json(
                &b.http.get(format!("{}/jwks.json", b.url)).send().await?.json::<serde_json::Value>().await?,
            )?;
            let (_, bits) = mandate_jose::statuslist::verify(&list, &keys, &uri, b.now())?;
            Ok::<_, anyhow::Error>(bits.is_invalid(idx))
        };
        anyhow::ensure!(bit_on_b().await? == Some(false), "a live token is listed as revoked");
        // Revoke on A (suspend), and B refuses at once.
        let (st, _) = a.admin(reqwest::Method::POST, &format!("/v1/agents/{}/suspend", agent.id), None).await?;
        anyhow::ensure!(st == 200);
        anyhow::ensure!(
            b.introspect(&token).await? == serde_json::json!({"active": false}),
            "node B still honours a revoked token"
        );
        anyhow::ensure!(bit_on_b().await? == Some(true), "node B's status list missed A's revocation");
        let (st, _) = b.token(&agent, "https://api.example.com", "read").await?;
        anyhow::ensure!(st == 401, "node B still authenticates a suspended agent");
        // A policy change on A reaches B.
        let (st, _) = a.admin(reqwest::Method::POST, &format!("/v1/agents/{}/resume", agent.id), None).await?;
        anyhow::ensure!(st == 200);
        a.put_policies(r#"forbid(principal, action, resource);"#).await?;
        b.mandate.sync_from_store().await?;
        let (st, body) = b.token(&agent, "https://api.example.com", "read").await?;
        anyhow::ensure!(st == 400 && body["error"] == "invalid_scope", "node B kept the old policy: {body}");
        // A key rotated on A is published and accepted by B.
        let (st, rotated) = a.admin(reqwest::Method::POST, "/v1/keys/rotate", None).await?;
        anyhow::ensure!(st == 200);
        b.mandate.sync_from_store().await?;
        let kb: serde_json::Value = b.http.get(format!("{}/jwks.json", b.url)).send().await?.json().await?;
        anyhow::ensure!(
            kb.to_string().contains(rotated["kid"].as_str().unwrap_or("?")),
            "node B does not publish the new key"
        );
        a.stop().await?;
        b.stop().await?;
        Ok::<_, anyhow::Error>(())
    })
    .await
}

/// Thirty tokens one after the other from `node`, then a checkpoint if due.
async fn burst(node: &mandate_testkit::TestServer, agent: &mandate_testkit::TestAgent) -> anyhow::Result<()> {
    for _ in 0..30 {
        let (st, body) = node.token(agent, "https://api.example.com", "read").await?;
        anyhow::ensure!(st == 200, "{body}");
    }
    node.mandate.checkpoint_if_due().await?;
    Ok(())
}

/// Two nodes issuing tokens at the same time write the trail side by side,
/// each writer in a lane of its own; afterwards the trail verifies on both
/// nodes, against checkpoints signed while they wrote, and a witness
/// verifies what `/v1/audit` serves offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_write_the_trail_concurrently_and_it_verifies() -> anyhow::Result<()> {
    on_fresh_database(|url| async move {
        let nodes = Nodes::on(&url)?;
        let (a, b) = (nodes.start().await?, nodes.start().await?);
        let (_, agent) = a.seed().await?;
        b.mandate.sync_from_store().await?;
        for _ in 0..2 {
            let (ra, rb) = tokio::join!(burst(&a, &agent), burst(&b, &agent));
            ra?;
            rb?;
            // A checkpoint is due again once its interval (60 s) has
            // passed: each round ends with one, whoever signs it.
            nodes.clock.advance(time::Duration::seconds(61));
        }
        a.mandate.checkpoint_if_due().await?;
        let reader = nodes.store().await?;
        let lanes = reader.audit_lanes().await?;
        anyhow::ensure!(lanes.len() >= 2, "the two nodes wrote {} lane(s)", lanes.len());
        let total = reader.audit_events(&mandate_core::audit::AuditQuery::page(0)).await?.len();
        for node in [&a, &b] {
            let (st, body) = node.admin(reqwest::Method::GET, "/v1/audit/verify", None).await?;
            anyhow::ensure!(st == 200 && body["valid"] == true, "{body}");
            anyhow::ensure!(body["events"] == total && body["lanes"] == lanes.len(), "{body}");
            anyhow::ensure!(body["checkpoints"].as_u64().unwrap_or(0) >= 2, "{body}");
        }
        // A witness: the events as served, the checkpoints and the keys.
        let (_, events) = a.admin(reqwest::Method::GET, "/v1/audit?limit=1000", None).await?;
        let events: Vec<mandate_audit::Event> = serde_json::from_value(events["events"].clone())?;
        let (_, cps) = a.admin(reqwest::Method::GET, "/v1/audit/checkpoints?limit=1000", None).await?;
        let cps: Vec<mandate_audit::Checkpoint> = serde_json::from_value(cps["checkpoints"].clone())?;
        let (_, keys) = a.call(reqwest::Method::GET, "/v1/audit/keys", None, None).await?;
        let keys = mandate_jose::JwkSet::from_json(&keys)?.keys;
        anyhow::ensure!(events.len() == total, "{} of {total} events served", events.len());
        anyhow::ensure!(mandate_audit::verify(&events, &cps, &keys) == Ok(total as u64));
        a.stop().await?;
        b.stop().await?;
        Ok::<_, anyhow::Error>(())
    })
    .await
}

/// Waits up to `within` for `f` to hold, checking every 20 ms.
async fn eventually<F, Fut>(within: std::time::Duration, mut f: F) -> anyhow::Result<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Issue 17 §1: a change committed on one node reaches the other through
/// LISTEN/NOTIFY, with the poll turned down to once an hour; the feed's
/// connection killed (`pg_terminate_backend`) is noticed, re-established,
/// and a change made while it was down is still picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_pushed_between_nodes() -> anyhow::Result<()> {
    use std::time::Duration;
    on_fresh_database(|url| async move {
        // No poll within the test: only the feed can carry a change.
        let nodes = Nodes::on(&url)?.without_polls();
        let a = nodes.start().await?;
        let store_b = nodes.store().await?;
        let b = nodes.start_on(store_b.clone()).await?;
        let feed = store_b.changes().ok_or_else(|| anyhow::anyhow!("PostgreSQL has no change feed"))?;
        let listening = || {
            let feed = feed.clone();
            async move { Ok(feed.borrow().listening) }
        };
        anyhow::ensure!(eventually(Duration::from_secs(5), listening).await?, "the feed never listened");
        let (_, agent) = a.seed().await?;
        let b = &b;
        let agent = &agent;
        let issues = |want: u16| move || async move {
            let (st, _) = b.token(agent, "https://api.example.com", "read").await?;
            Ok(st == want)
        };
        // A's policy reaches B without a poll.
        anyhow::ensure!(eventually(Duration::from_secs(3), issues(200)).await?, "A's policy never reached B");
        let epoch = store_b.epoch().await?;
        anyhow::ensure!(feed.borrow().epoch == epoch, "the feed heard epoch {} of {epoch}", feed.borrow().epoch);
        a.put_policies(r#"forbid(principal, action, resource);"#).await?;
        anyhow::ensure!(eventually(Duration::from_secs(3), issues(400)).await?, "A's forbid never reached B");
        // Kill every node's feed connection; change the policy at once.
        let mut admin = sqlx::PgConnection::connect(&url).await?;
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
        )
        .bind(mandate_store_postgres::FEED_APPLICATION_NAME)
        .fetch_all(&mut admin)
        .await?;
        anyhow::ensure!(killed.len() == 2 && killed.iter().all(|k| *k), "killed {killed:?}");
        a.put_policies(
            r#"permit(principal is Agent, action == Action::"read", resource == Api::"https://api.example.com");"#,
        )
        .await?;
        // B notices the loss, listens again, and syncs what it missed.
        anyhow::ensure!(eventually(Duration::from_secs(10), issues(200)).await?, "a change made while the feed was down was lost");
        anyhow::ensure!(eventually(Duration::from_secs(10), listening).await?, "the feed did not recover");
        a.put_policies(r#"forbid(principal, action, resource);"#).await?;
        anyhow::ensure!(eventually(Duration::from_secs(3), issues(400)).await?, "the recovered feed carries nothing");
        a.stop().await?;
        Ok::<_, anyhow::Error>(())
    })
    .await
}

/// Issue 17 §1 (decision 0030): three nodes on one database, the third
/// deaf to notifications (its feed claims to listen and never hears a
/// thing) and none polling within the test. What any node commits is in
/// force on the others at their first request after it: revocations,
/// policies and signing keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_decide_on_the_newest_state_at_once() -> anyhow::Result<()> {
    use mandate_testkit::TestServer;
    use reqwest::Method;
    use serde_json::json;
    on_fresh_database(|url| async move {
        let nodes = Nodes::on(&url)?.without_polls();
        let (a, b) = (nodes.start().await?, nodes.start().await?);
        let c = nodes.start_on(mandate_testkit::faulty::FaultyStore::deaf(nodes.store().await?)).await?;
        const API: &str = "https://api.example.com";
        let token_of = |body: &serde_json::Value| body["access_token"].as_str().unwrap_or_default().to_owned();
        let kid_of = |jwt: &str| mandate_testkit::scenarios::header(jwt)["kid"].clone();
        async fn check(node: &TestServer, token: &str) -> anyhow::Result<String> {
            let body = json!({"token": token, "action": "read", "resource": {"type": "doc", "id": "d1"}});
            let (st, body) = node.admin(Method::POST, "/v1/check", Some(body)).await?;
            anyhow::ensure!(st == 200, "check: {st} {body}");
            Ok(body["decision"].as_str().unwrap_or_default().to_owned())
        }

        // A stores the policy; C, which heard nothing, issues under it.
        const PERMIT: &str = r#"permit(principal is Agent, action == Action::"read", resource);"#;
        let (_, agent) = a.seed().await?;
        a.put_policies(PERMIT).await?;
        let (st, body) = c.token(&agent, API, "read").await?;
        anyhow::ensure!(st == 200, "C did not follow A's policy: {st} {body}");
        let token = token_of(&body);
        for node in [&a, &b, &c] {
            anyhow::ensure!(node.introspect(&token).await?["active"] == true);
        }
        // Every node decides the token endpoint at the newest epoch it
        // knows of, without reading it (decision 0042): C, deaf, at an
        // old one. What it decided on a moved epoch is decided again.
        let (_, c_again) = c.mandate.optimistic_runs();
        // Revoked on B (the agent suspended): refused on A and C at once.
        let (st, _) = b.admin(Method::POST, &format!("/v1/agents/{}/suspend", agent.id), None).await?;
        anyhow::ensure!(st == 200);
        for node in [&a, &c] {
            let (st, _) = node.token(&agent, API, "read").await?;
            anyhow::ensure!(st == 401, "a node authenticates a suspended agent: {st}");
            anyhow::ensure!(
                node.introspect(&token).await? == json!({"active": false}),
                "a node honours a revoked token"
            );
        }
        let (c_decided, again) = c.mandate.optimistic_runs();
        anyhow::ensure!(c_decided > 0 && again > c_again, "C never decided again what it decided at a moved epoch");
        anyhow::ensure!(a.mandate.optimistic_runs().0 > 0, "A, which hears the feed, never decided at it");
        let (st, _) = c.admin(Method::POST, &format!("/v1/agents/{}/resume", agent.id), None).await?;
        anyhow::ensure!(st == 200);
        let (st, body) = a.token(&agent, API, "read").await?;
        anyhow::ensure!(st == 200, "A did not see C resume the agent: {st} {body}");
        let live = token_of(&body);

        for node in [&a, &b, &c] {
            anyhow::ensure!(check(node, &live).await? == "allow", "a check refused under the permit");
        }
        // A policy that forbids everything, put on B, bites on A and C at
        // their first request: issuance and checks alike.
        b.put_policies("forbid(principal, action, resource);").await?;
        for node in [&a, &c] {
            let (st, body) = node.token(&agent, API, "read").await?;
            anyhow::ensure!(st == 400 && body["error"] == "invalid_scope", "issued under the old policy: {st} {body}");
            anyhow::ensure!(check(node, &live).await? == "deny", "a check decided under the old policy");
        }
        // Permitted again on C; A and B follow at once.
        c.put_policies(PERMIT).await?;
        for node in [&a, &b] {
            let (st, body) = node.token(&agent, API, "read").await?;
            anyhow::ensure!(st == 200, "did not follow C's policy: {st} {body}");
            anyhow::ensure!(check(node, &live).await? == "allow");
        }

        // A key rotated on A: B and the deaf C sign with it at their next token.
        let (st, rotated) = a.admin(Method::POST, "/v1/keys/rotate", None).await?;
        anyhow::ensure!(st == 200, "rotate: {st} {rotated}");
        for node in [&b, &c] {
            let (st, body) = node.token(&agent, API, "read").await?;
            anyhow::ensure!(st == 200, "{st} {body}");
            anyhow::ensure!(kid_of(&token_of(&body)) == rotated["kid"], "a node signs with the retired key");
        }
        for node in [a, b, c] {
            node.stop().await?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
}

/// A PostgreSQL cluster of the test's own, on a free port, that it may
/// crash and restart (the shared server must stay up for every other test).
struct PrivateCluster {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivateCluster {
    /// Runs a PostgreSQL program as the owner of the data directory (the
    /// `postgres` user when the tests run as root, which PostgreSQL refuses).
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(program);
        let root = std::process::Command::new("id").arg("-u").output()?.stdout.starts_with(b"0");
        let status = if root {
            std::process::Command::new("runuser").args(["-u", "postgres", "--"]).arg(&exe).args(args).status()?
        } else {
            std::process::Command::new(&exe).args(args).status()?
        };
        anyhow::ensure!(status.success(), "{program} {args:?}: {status}");
        Ok(())
    }

    fn start() -> anyhow::Result<Self> {
        let versions = std::fs::read_dir("/usr/lib/postgresql")?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("bin/initdb").exists())
            .max_by_key(|p| p.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0))
            .ok_or_else(|| anyhow::anyhow!("no PostgreSQL server programs under /usr/lib/postgresql"))?;
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let me = Self { bin: versions.join("bin"), dir, port };
        if std::process::Command::new("id").arg("-u").output()?.stdout.starts_with(b"0") {
            let s = std::process::Command::new("chown").arg("-R").arg("postgres").arg(me.dir.path()).status()?;
            anyhow::ensure!(s.success(), "chown: {s}");
        }
        let data = me.data();
        me.run("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])?;
        me.pg_ctl("start")?;
        Ok(me)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn pg_ctl(&self, verb: &str) -> anyhow::Result<()> {
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let log = self.dir.path().join("log").display().to_string();
        let data = self.data();
        match verb {
            // An immediate shutdown is a crash: recovery replays the WAL.
            "restart" => {
                self.run("pg_ctl", &["-D", &data, "-o", &opts, "-l", &log, "-m", "immediate", "-w", "restart"])
            }
            "stop" => self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]),
            _ => self.run("pg_ctl", &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"]),
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl("stop");
    }
}

/// Issue 17 §1: PostgreSQL crashes and restarts under load. The nodes are
/// not restarted: they refuse while it is down (fail closed), serve again
/// once it is back, and every token they acknowledged is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_survive_a_postgres_restart_without_losing_an_acknowledged_write() -> anyhow::Result<()> {
    use std::time::Duration;
    let cluster = PrivateCluster::start()?;
    let nodes = Nodes::on(&cluster.url())?;
    let (a, b) = (Arc::new(nodes.start().await?), Arc::new(nodes.start().await?));
    let (_, agent) = a.seed().await?;
    b.mandate.sync_from_store().await?;
    let agent = Arc::new(agent);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Two clients per node, issuing as fast as they are answered.
    let mut load = Vec::new();
    for node in [a.clone(), b.clone(), a.clone(), b.clone()] {
        let (agent, stop) = (agent.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut refused = 0u32;
            let mut last_ok = None;
            let mut longest = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let began = tokio::time::Instant::now();
                let answer = node.token(&agent, "https://api.example.com", "read").await;
                longest = longest.max(began.elapsed());
                match answer {
                    Ok((200, body)) => {
                        acknowledged.push(body["access_token"].as_str().unwrap_or_default().to_owned());
                        last_ok = Some(tokio::time::Instant::now());
                    }
                    // Fail closed while the database is away (and the
                    // per-address limit, which this load can reach).
                    Ok((st, body)) => {
                        anyhow::ensure!(st == 503 || st == 429, "an outage answered {st} {body}");
                        refused += 1;
                    }
                    Err(_) => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Ok::<_, anyhow::Error>((acknowledged, refused, last_ok, longest))
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted = tokio::time::Instant::now();
    // Crashed (an immediate shutdown: recovery replays the WAL), down for
    // two seconds, then started again.
    let c = tokio::task::spawn_blocking(move || {
        cluster.pg_ctl("stop")?;
        std::thread::sleep(Duration::from_secs(2));
        cluster.pg_ctl("start").map(|()| cluster)
    })
    .await??;
    let back = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut tokens = Vec::new();
    let mut refused = 0;
    let mut longest = Duration::ZERO;
    for l in load {
        let (acknowledged, r, last_ok, waited) = l.await??;
        anyhow::ensure!(last_ok.is_some_and(|t| t > back), "a client was never served after the restart");
        tokens.extend(acknowledged);
        refused += r;
        longest = longest.max(waited);
    }
    anyhow::ensure!(tokens.len() > 20, "too little load: {} tokens", tokens.len());
    // The outage was felt: requests made meanwhile were refused (503), or
    // waited for a connection (up to the pool's 5 s) and were answered once
    // the database was back. Which of the two is a matter of timing.
    anyhow::ensure!(
        refused > 0 || longest >= Duration::from_secs(1),
        "nothing was refused and no request waited while the database was down (longest {longest:?})"
    );
    // Every token acknowledged, before, during or after the crash, is live
    // on both nodes: nothing acknowledged was lost.
    for t in &tokens {
        for node in [&a, &b] {
            let seen = node.introspect(t).await?;
            anyhow::ensure!(seen["active"] == true, "an acknowledged token was lost: {seen}");
        }
    }
    eprintln!(
        "down and back in {:?}; {} tokens acknowledged, {refused} requests refused meanwhile, the longest took {longest:?}",
        back - restarted,
        tokens.len()
    );
    drop(c);
    Ok(())
}

/// The delegation scenarios (DESIGN §3), each on a fresh database, as the
/// SQLite suite runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_delegation_scenarios() -> anyhow::Result<()> {
    let created = std::sync::Mutex::new(Vec::new());
    let dir = tempfile::tempdir()?;
    let result = mandate_testkit::scenarios::run_all(|| async {
        let url = fresh_database().await?;
        if let Ok(mut c) = created.lock() {
            c.push(url.clone());
        }
        let store: Arc<dyn Store> = Arc::new(mandate_store_postgres::PostgresStore::connect(&url).await?);
        let clock = Arc::new(mandate_core::ManualClock::new(mandate_core::Clock::now(&mandate_core::SystemClock)));
        // Loopback callbacks: the CIBA ping and push scenario's receiver.
        mandate_testkit::TestServer::start_on(store, dir.path(), clock, |c| c.dev_loopback_fetch = true).await
    })
    .await;
    let urls = created.lock().map(|c| c.clone()).unwrap_or_default();
    drop_databases(&urls).await?;
    result
}

/// ADR 0040: plain issuances go in with one statement, ended by a call of
/// `mandate_batch_holds`; PostgreSQL counts the calls of PL/pgSQL
/// functions where `track_functions = 'pl'`. (A backend reports its counts
/// when it goes idle, at most once a second; a backend left idle reports
/// only after a longer timeout, so the writer is kept going, one lone
/// plain change every half second, until the calls show.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_issuances_take_the_one_statement_way() -> anyhow::Result<()> {
    on_fresh_database(|url| async move {
        let db = url.rsplit('/').next().unwrap_or_default().to_owned();
        let mut admin = sqlx::PgConnection::connect(&admin_url()).await?;
        sqlx::query(&format!("ALTER DATABASE {db} SET track_functions = 'pl'")).execute(&mut admin).await?;
        admin.close().await?;
        let store: Arc<dyn Store> = Arc::new(mandate_store_postgres::PostgresStore::connect_with_writers(&url, 1).await?);
        mandate_testkit::conformance::concurrency::concurrent_issuances_with_replays_stand_or_fall_alone(&store).await?;
        let pool = sqlx::PgPool::connect(&url).await?;
        let calls = || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_user_functions WHERE funcname = 'mandate_batch_holds'",
            )
            .fetch_one(&pool)
            .await?;
            anyhow::Ok(n)
        };
        let mut seen = false;
        for i in 0..40 {
            if calls().await? > 0 {
                seen = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            store.commit(append_event(&format!("agt_flush_{i}"))).await?;
        }
        anyhow::ensure!(seen, "no batch took the one-statement way ({} calls)", calls().await?);
        pool.close().await;
        Ok::<_, anyhow::Error>(())
    })
    .await
}

/// A change that appends one `token.issued` event about agent `agent`.
fn append_event(agent: &str) -> mandate_core::store::Change {
    let e = mandate_testkit::conformance::event("token.issued", agent);
    mandate_core::store::Change::new().with(mandate_core::AuditRecord::new(e).mutation())
}

/// Verifies the whole trail and returns how many events it holds.
async fn trail_events(store: &dyn Store) -> anyhow::Result<u64> {
    match mandate_core::audit::verify_trail(store, &[], None).await? {
        mandate_core::TrailReport::Intact(v) => Ok(v.events),
        mandate_core::TrailReport::Broken(t) => anyhow::bail!("the trail does not verify: {t}"),
    }
}

/// Two writers on one lane (a node's lane-keeping connection lost, and a
/// new node claiming the lane its writer still uses): the one-statement
/// way reads the head without a lock, and must not seal two batches after
/// the same head. Its guard sends the loser the long way, under the
/// head's lock, and the trail is still one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_one_lane_still_write_one_chain() -> anyhow::Result<()> {
    on_fresh_database(|url| async move {
        let append = |node: &str, i: u32| append_event(&format!("agt_{node}_{i}"));
        let a = Arc::new(mandate_store_postgres::PostgresStore::connect_with_writers(&url, 1).await?);
        a.commit(append("a", 0)).await?;
        let pool = sqlx::PgPool::connect(&url).await?;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = current_database()",
        )
        .bind(mandate_store_postgres::LANE_KEEPER_APPLICATION_NAME)
        .execute(&pool)
        .await?;
        let b = Arc::new(mandate_store_postgres::PostgresStore::connect_with_writers(&url, 1).await?);
        b.commit(append("b", 0)).await?;
        let lanes: i64 = sqlx::query_scalar("SELECT count(DISTINCT lane) FROM audit_events").fetch_one(&pool).await?;
        anyhow::ensure!(lanes == 1, "the second node's writer took a lane of its own ({lanes} lanes)");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 1..=200 {
            let (a, b) = (a.clone(), b.clone());
            tasks.spawn(async move { a.commit(append("a", i)).await.and(b.commit(append("b", i)).await) });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let events = trail_events(a.as_ref()).await?;
        anyhow::ensure!(events == 402, "{events} events");
        pool.close().await;
        Ok::<_, anyhow::Error>(())
    })
    .await
}

/// The epoch reader and the writer keep their connections while they are
/// busy, instead of taking one from the pool (and having sqlx check it)
/// for every read and batch. Those kept connections cut under load
/// (`pg_terminate_backend`, as a restarted server or a proxy would): an
/// epoch read asked on a cut connection is asked again on a good one, so
/// a cut does not fail the reads waiting on it; a batch on a cut
/// connection fails closed, its connection is closed rather than kept,
/// and the next batch commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_connections_that_are_cut_are_replaced() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    on_fresh_database(|url| async move {
        let store = Arc::new(mandate_store_postgres::PostgresStore::connect_with_writers(&url, 1).await?);
        let append = |i: u64| append_event(&format!("agt_{i}"));
        let stop = Arc::new(AtomicBool::new(false));
        let (read_errors, reads) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, stop, read_errors, reads) = (store.clone(), stop.clone(), read_errors.clone(), reads.clone());
            readers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match store.epoch().await {
                        Ok(_) => reads.fetch_add(1, Ordering::Relaxed),
                        Err(_) => read_errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..8u64 {
            let (store, stop) = (store.clone(), stop.clone());
            writers.spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let _ = store.commit(append(i)).await;
                    i += 8;
                }
            });
        }
        let mut admin = sqlx::PgConnection::connect(&url).await?;
        const CUTS: u64 = 5;
        for _ in 0..CUTS {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            // Every connection of the store but the feed's and the lane
            // keeper's: the reader's, the writer's and the pool's.
            let killed: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                 AND application_name NOT IN ($1, $2)",
            )
            .bind(mandate_store_postgres::FEED_APPLICATION_NAME)
            .bind(mandate_store_postgres::LANE_KEEPER_APPLICATION_NAME)
            .fetch_all(&mut admin)
            .await?;
            anyhow::ensure!(killed.len() >= 2, "only {} connections to cut", killed.len());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        while let Some(done) = readers.join_next().await {
            done?;
        }
        while let Some(done) = writers.join_next().await {
            done?;
        }
        anyhow::ensure!(reads.load(Ordering::Relaxed) > 100, "{} reads", reads.load(Ordering::Relaxed));
        // Without the retry every cut fails the read in flight on the kept
        // connection, and every reader waiting on it (11 failures for 5
        // cuts, measured). With it, a read fails only if the cut also
        // catches the pool connection the retry takes (a backend signalled
        // but not yet gone), which a busy machine has shown once.
        let failed = read_errors.load(Ordering::Relaxed);
        anyhow::ensure!(failed < CUTS, "{failed} epoch reads failed in {CUTS} cuts");
        // Writes go on after the cuts, one after the other.
        for i in 0..20 {
            store.commit(append(1_000_000 + i)).await?;
        }
        trail_events(store.as_ref()).await?;
        Ok::<_, anyhow::Error>(())
    })
    .await
}

/// A lane head that cannot be decoded stops its writer: the change that
/// would append after it fails whole, and the lane is never restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_audit_head_stops_the_writer() -> anyhow::Result<()> {
    use mandate_core::store::Mutation;
    on_fresh_database(|url| async move {
        let store = mandate_store_postgres::PostgresStore::connect_with_writers(&url, 1).await?;
        let append = |i: u32| append_event(&format!("agt_{i}"));
        for i in 0..3 {
            store.commit(append(i)).await?;
        }
        let pool = sqlx::PgPool::connect(&url).await?;
        sqlx::query("UPDATE audit_lanes SET hash = 'not a hash'").execute(&pool).await?;
        let marker = Mutation::PutSettingIfAbsent { key: "marker".into(), value: "x".into() };
        let refused = store.commit(append(9).with(marker)).await;
        anyhow::ensure!(refused.is_err(), "an event was appended after an undecodable head");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&pool).await?;
        anyhow::ensure!(n == 3, "{n} events");
        anyhow::ensure!(store.setting("marker").await?.is_none(), "the change was partly written");
        pool.close().await;
        Ok::<_, anyhow::Error>(())
    })
    .await
}

/// Migration 0008 on a database made before it: emails take their one
/// spelling (ASCII lower case, whatever the database's locale; a row whose
/// lower-cased twin exists is left for an admin), and existing API tokens
/// get an id and a 30-day expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_security_migration_normalises_emails_and_dates_old_tokens() -> anyhow::Result<()> {
    on_fresh_database(|url| async move {
        // The schema as it was: every migration before 0008.
        let old = tempfile::tempdir()?;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.as_str() < "0008" {
                std::fs::copy(entry.path(), old.path().join(&name))?;
            }
        }
        let pool = sqlx::PgPool::connect(&url).await?;
        sqlx::migrate::Migrator::new(old.path()).await?.run(&pool).await?;
        for (id, email) in [
            ("usr_01M00000000000000000000001", "Ada.Lovelace@example.com"),
            ("usr_01M00000000000000000000002", "Bob@example.com"),
            ("usr_01M00000000000000000000003", "bob@example.com"),
            ("usr_01M00000000000000000000004", "ÉMILE@example.com"),
        ] {
            sqlx::query("INSERT INTO users (id, name, email, groups, attributes, status, created_at) VALUES ($1, 'x', $2, '[]', '{}', 'active', 1)")
                .bind(id)
                .bind(email)
                .execute(&pool)
                .await?;
        }
        sqlx::query("INSERT INTO user_tokens (hash, user_id, created_at) VALUES ('abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789', 'usr_01M00000000000000000000001', 1000)")
            .execute(&pool)
            .await?;
        sqlx::query(
            "INSERT INTO agents (id, name, owner, kind, status, redirect_uris, created_at, updated_at) \
             VALUES ('agt_01M00000000000000000000009', 'a', 'usr_01M00000000000000000000001', 'persistent', 'suspended', '[]', 1, 1)",
        )
        .execute(&pool)
        .await?;
        pool.close().await;
        let store = mandate_store_postgres::PostgresStore::connect(&url).await?;
        let ada = store.user_by_email("ada.lovelace@example.com").await?;
        anyhow::ensure!(ada.map(|u| u.id.to_string()).as_deref() == Some("usr_01M00000000000000000000001"));
        let bob = store.user("usr_01M00000000000000000000002".parse()?).await?;
        anyhow::ensure!(bob.map(|u| u.email).as_deref() == Some("Bob@example.com"), "a colliding row was changed");
        // Only ASCII letters change, as in SQLite and in the server.
        let emile = store.user("usr_01M00000000000000000000004".parse()?).await?;
        anyhow::ensure!(emile.map(|u| u.email).as_deref() == Some("Émile@example.com"));
        let token = store
            .user_token_by_hash("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
            .await?
            .ok_or_else(|| anyhow::anyhow!("the old token is gone"))?;
        anyhow::ensure!(token.id.to_string() == "utk_0ABCDEF0123456789ABCDEF012", "{}", token.id);
        anyhow::ensure!(token.expires_at - token.created_at == time::Duration::days(30));
        let agent = store.agent("agt_01M00000000000000000000009".parse()?).await?;
        anyhow::ensure!(
            agent.and_then(|a| a.suspended_by) == Some(mandate_model::records::SuspendedBy::Admin),
            "an old suspension is not the admin's"
        );
        Ok::<_, anyhow::Error>(())
    })
    .await
}

/// One password sign-in on `base`: the status and the `Retry-After`.
async fn sign_in(base: &str, email: &str, password: &str) -> anyhow::Result<(u16, Option<String>)> {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let page = http.get(format!("{base}/login")).send().await?;
    let login = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        // `__Host-mandate_login` under an https issuer.
        .find_map(|c| c.split(';').next().filter(|p| p.contains("mandate_login=")).map(str::to_owned))
        .unwrap_or_default();
    let html = page.text().await?;
    let csrf = html.split(r#"name="csrf" value=""#).nth(1).and_then(|r| r.split('"').next()).unwrap_or_default();
    let resp = http
        .post(format!("{base}/login"))
        .header("cookie", login)
        .form(&[("csrf", csrf), ("next", "/grants"), ("email", email), ("password", password)])
        .send()
        .await?;
    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok((resp.status().as_u16(), retry))
}

/// Sign-in failures are counted in the store (issue 17 §2, decision 0029):
/// failures on node A pace the attempts on node B, and guesses sent to both
/// nodes at once are counted one by one. With counters per node, a guesser
/// would get three free failures from each node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_failures_on_one_node_pace_another() -> anyhow::Result<()> {
    on_fresh_database(|url| async move {
        let nodes = Nodes::on(&url)?;
        let (a, b) = (nodes.start().await?, nodes.start().await?);
        for email in ["carol@example.com", "dave@example.com"] {
            let body = serde_json::json!({"name": "Someone", "email": email, "password": "correct horse battery"});
            let (st, _) = a.admin(reqwest::Method::POST, "/v1/users", Some(body)).await?;
            anyhow::ensure!(st == 201);
        }
        // Three free failures on A; the next attempt, on B, waits 1 s, even
        // with the right password.
        for _ in 0..3 {
            anyhow::ensure!(sign_in(&a.url, "carol@example.com", "wrong").await?.0 == 401);
        }
        let paced = sign_in(&b.url, "carol@example.com", "correct horse battery").await?;
        anyhow::ensure!(paced == (429, Some("1".into())), "node B did not pace what node A counted: {paced:?}");
        nodes.clock.advance(time::Duration::seconds(1));
        anyhow::ensure!(sign_in(&b.url, "carol@example.com", "wrong").await?.0 == 401);
        // The wait doubles, on A too.
        let paced = sign_in(&a.url, "carol@example.com", "correct horse battery").await?;
        anyhow::ensure!(paced == (429, Some("2".into())), "node A did not pace what node B counted: {paced:?}");
        // Twelve guesses at once, half on each node: three get to the
        // password, whatever the interleaving; the rest wait.
        let guesses = (0..12).map(|n| {
            let base = if n % 2 == 0 { a.url.clone() } else { b.url.clone() };
            tokio::spawn(async move { sign_in(&base, "dave@example.com", "wrong").await })
        });
        let mut checked = 0;
        for g in guesses.collect::<Vec<_>>() {
            match g.await?? {
                (401, _) => checked += 1,
                (429, Some(_)) => {}
                other => anyhow::bail!("a guess got {other:?}"),
            }
        }
        anyhow::ensure!(checked == 3, "{checked} of 12 parallel guesses reached the password");
        a.stop().await?;
        b.stop().await?;
        Ok::<_, anyhow::Error>(())
    })
    .await
}

/// The receiver's `ssf.manage` token from node `s`.
async fn ssf_manage(s: &mandate_testkit::TestServer, receiver: &mandate_testkit::TestAgent) -> anyhow::Result<String> {
    let (st, body) = s.token(receiver, "https://mandate.test", "ssf.manage").await?;
    anyhow::ensure!(st == 200, "{body}");
    Ok(body["access_token"].as_str().unwrap_or_default().to_owned())
}

/// Shared Signals on two nodes (ADR 0028): the events of a revocation on
/// node A are written in A's transaction and polled, verified and
/// acknowledged through node B; A then has nothing left to give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_written_on_one_node_are_polled_on_the_other() -> anyhow::Result<()> {
    use mandate_testkit::TestAgent;
    use reqwest::Method;
    use serde_json::json;
    on_fresh_database(|url| async move {
        let nodes = Nodes::on(&url)?;
        let (a, b) = (nodes.start().await?, nodes.start().await?);
        let user = a.create_user("ssf@example.com").await?;
        let rs_key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
        let (st, rs) = a
            .admin(
                Method::POST,
                "/v1/resources",
                Some(json!({"identifier": "https://rs.example", "name": "RS", "scopes": {"read": []},
                            "jwks": {"keys": [rs_key.public().to_json()]}})),
            )
            .await?;
        anyhow::ensure!(st == 201, "{rs}");
        let receiver = TestAgent { id: rs["id"].as_str().unwrap_or_default().to_owned(), key: rs_key };
        a.put_policies(
            r#"permit(principal is Agent, action == Action::"read", resource == Api::"https://rs.example");"#,
        )
        .await?;
        let agent = a.create_agent(&user, mandate_jose::KeyAlg::EdDSA).await?;
        let on_a = ssf_manage(&a, &receiver).await?;
        let (st, stream) = a
            .call(Method::POST, "/ssf/streams", Some(&on_a), Some(json!({"delivery": {"method": "urn:ietf:rfc:8936"}})))
            .await?;
        anyhow::ensure!(st == 201, "{stream}");
        let id = stream["stream_id"].as_str().unwrap_or_default().to_owned();
        let mut jtis = Vec::new();
        for _ in 0..3 {
            let (st, body) = a.token(&agent, "https://rs.example", "read").await?;
            anyhow::ensure!(st == 200, "{body}");
            let t = body["access_token"].as_str().unwrap_or_default();
            jtis.push(mandate_testkit::scenarios::claims(t)["jti"].as_str().unwrap_or_default().to_owned());
        }
        let (st, _) = a.admin(Method::POST, &format!("/v1/agents/{}/suspend", agent.id), None).await?;
        anyhow::ensure!(st == 200);
        // B, with a token of its own, polls what A wrote.
        b.mandate.sync_from_store().await?;
        let on_b = ssf_manage(&b, &receiver).await?;
        let poll = format!("/ssf/poll/{id}");
        let (st, out) = b.call(Method::POST, &poll, Some(&on_b), Some(json!({}))).await?;
        anyhow::ensure!(st == 200, "{out}");
        let sets = out["sets"].as_object().cloned().unwrap_or_default();
        let jwks: serde_json::Value = b.http.get(format!("{}/jwks.json", b.url)).send().await?.json().await?;
        let keys = mandate_jose::JwkSet::from_json_external(&jwks)?;
        let mut subjects = Vec::new();
        for (jti, set) in &sets {
            let set = set.as_str().unwrap_or_default();
            let jws = mandate_jose::jws::Unverified::parse(set, false)?;
            jws.verify(&keys)?;
            anyhow::ensure!(jws.header.typ.as_deref() == Some("secevent+jwt"));
            let c = mandate_testkit::scenarios::claims(set);
            anyhow::ensure!(c["jti"] == jti.as_str() && c["aud"] == "https://rs.example", "{c}");
            // A complex subject (ADR 0039): the session is the token.
            anyhow::ensure!(c["sub_id"]["format"] == "complex", "{c}");
            subjects.push(c["sub_id"]["session"]["id"].as_str().unwrap_or_default().to_owned());
        }
        subjects.sort();
        jtis.sort();
        anyhow::ensure!(subjects == jtis, "B polled {subjects:?}, A revoked {jtis:?}");
        let acked: Vec<&String> = sets.keys().collect();
        let (st, out) =
            b.call(Method::POST, &poll, Some(&on_b), Some(json!({"ack": acked, "returnImmediately": true}))).await?;
        anyhow::ensure!(st == 200 && out["sets"] == json!({}), "{out}");
        let (st, out) = a.call(Method::POST, &poll, Some(&on_a), Some(json!({"returnImmediately": true}))).await?;
        anyhow::ensure!(st == 200 && out["sets"] == json!({}), "A still holds acknowledged events: {out}");
        // A long poll on B (RFC 8936's default) is answered by an event A
        // queues while it waits, well within the bound (30 s): B looks
        // again every 250 ms for what other nodes queued.
        let started = std::time::Instant::now();
        let verify = async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            a.call(Method::POST, "/ssf/verify", Some(&on_a), Some(json!({"stream_id": id, "state": "from A"}))).await
        };
        let (polled, verified) = tokio::join!(b.call(Method::POST, &poll, Some(&on_b), Some(json!({}))), verify);
        anyhow::ensure!(verified?.0 == 204);
        let (st, out) = polled?;
        let took = started.elapsed();
        anyhow::ensure!(st == 200 && out["sets"].as_object().is_some_and(|m| m.len() == 1), "{out}");
        anyhow::ensure!(took < std::time::Duration::from_secs(5), "B's long poll waited {took:?}");
        a.stop().await?;
        b.stop().await?;
        Ok::<_, anyhow::Error>(())
    })
    .await
}

/// Decision 0031: a starting writer takes a lane no running writer owns
/// (its node's lock on it is gone with the node) before it makes a new
/// one, so lanes do not pile up with restarts; a lane a running writer
/// owns is never taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_writer_reuses_an_idle_lane_and_never_a_live_one() -> anyhow::Result<()> {
    use mandate_core::store::Change;
    on_fresh_database(|url| async move {
        let connect = |url: String| async move {
            anyhow::Ok(Arc::new(mandate_store_postgres::PostgresStore::connect_with_writers(&url, 1).await?))
        };
        let write = |store: Arc<mandate_store_postgres::PostgresStore>, actor: &'static str| async move {
            let record = mandate_core::AuditRecord::new(mandate_testkit::conformance::event("test.event", actor));
            store.commit(Change::new().with(record.mutation())).await?;
            anyhow::Ok(())
        };
        let lanes_of = |store: Arc<mandate_store_postgres::PostgresStore>| async move {
            anyhow::Ok(store.audit_lanes().await?.into_iter().map(|l| l.lane).collect::<Vec<_>>())
        };
        let keepers = |url: String| async move {
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(mandate_store_postgres::LANE_KEEPER_APPLICATION_NAME)
                .fetch_one(&mut conn)
                .await?;
            anyhow::Ok(n)
        };
        let a = connect(url.clone()).await?;
        write(a.clone(), "a").await?;
        let first = lanes_of(a.clone()).await?;
        anyhow::ensure!(first.len() == 1, "{first:?}");
        // While A runs, B takes a lane of its own.
        let b = connect(url.clone()).await?;
        write(b.clone(), "b").await?;
        let both = lanes_of(b.clone()).await?;
        anyhow::ensure!(both.len() == 2 && both.contains(&first[0]), "{both:?}");
        // A stops; C takes A's lane rather than a new one.
        drop(a);
        let mut gone = false;
        for _ in 0..100 {
            if keepers(url.clone()).await? == 1 {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        anyhow::ensure!(gone, "A's lane keeper did not go");
        let c = connect(url.clone()).await?;
        write(c.clone(), "c").await?;
        let after = lanes_of(c.clone()).await?;
        anyhow::ensure!(after == both, "C made a new lane: {after:?}, not one of {both:?}");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_lanes")
            .fetch_one(&mut sqlx::PgConnection::connect(&url).await?)
            .await?;
        anyhow::ensure!(rows == 2, "{rows} lane rows");
        // B and C, running, write side by side in their own lanes, and the
        // trail verifies.
        write(b.clone(), "b2").await?;
        write(c.clone(), "c2").await?;
        let report = mandate_core::audit::verify_trail(c.as_ref(), &[], None).await?;
        anyhow::ensure!(matches!(report, mandate_core::audit::TrailReport::Intact(_)), "{report:?}");
        let events = c.audit_events(&mandate_core::audit::AuditQuery { limit: 100, ..Default::default() }).await?;
        let lane_of = |actor: &str| events.iter().find(|e| e.actor.as_deref() == Some(actor)).map(|e| e.lane);
        anyhow::ensure!(lane_of("a") == lane_of("c") && lane_of("c") == lane_of("c2"), "C writes in A's old lane");
        anyhow::ensure!(lane_of("b") == lane_of("b2") && lane_of("b") != lane_of("c"), "B keeps its own lane");
        Ok(())
    })
    .await
}

/// Migration 0031 (ADR 0039) on a database made before it: a
/// `session-revoked` event already waiting gets its token's `sub` as its
/// principal, so that its SET names the person.
#[tokio::test]
async fn the_principal_migration_fills_waiting_session_revoked_events() -> anyhow::Result<()> {
    use mandate_core::store::{Change, Mutation};
    use mandate_model::ssf::{Cause, EventSet, InitiatingEntity, Stream, StreamDelivery, StreamStatus};
    use mandate_testkit::conformance::{agent, resource, t0, token, user};
    on_fresh_database(|url| async move {
        let u = user("principal@example.com");
        let a = agent(u.id, None);
        let r = resource("https://api.example");
        let stream = Stream {
            id: mandate_model::StreamId::from_ulid(ulid::Ulid::new()),
            resource: r.id,
            audience: r.identifier.clone(),
            status: StreamStatus::Enabled,
            status_reason: None,
            delivery: StreamDelivery::Poll,
            events: EventSet::all(),
            description: None,
            created_at: t0(),
            updated_at: t0(),
            failures: 0,
            next_at: t0(),
            lease_holder: None,
            lease_until: None,
            verified_at: None,
        };
        let t = token(a.id, &u.id.to_string());
        let at = t0() + time::Duration::seconds(5);
        {
            let store = mandate_store_postgres::PostgresStore::connect(&url).await?;
            let change = Change::new()
                .with(Mutation::InsertUser(u.clone()))
                .with(Mutation::InsertAgent(a))
                .with(Mutation::InsertResource(r))
                .with(Mutation::InsertStream(stream.clone()))
                .with(Mutation::InsertToken(t.clone()))
                .with(Mutation::RevokeToken { jti: t.jti, at })
                .with(Mutation::SignalRevocations { at, cause: Cause::new(InitiatingEntity::Admin, "r") });
            store.commit(change).await?;
        }
        // Back to the schema before 0031.
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        sqlx::query("ALTER TABLE ssf_events DROP COLUMN principal").execute(&mut conn).await?;
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 31").execute(&mut conn).await?;
        conn.close().await?;
        let store = mandate_store_postgres::PostgresStore::connect(&url).await?;
        let events = store.queued_events(stream.id, 10).await?;
        let principals: Vec<(String, Option<String>)> =
            events.iter().map(|e| (e.signal.subject.clone(), e.signal.principal.clone())).collect();
        anyhow::ensure!(principals == vec![(t.jti.to_string(), Some(u.id.to_string()))], "{principals:?}");
        Ok(())
    })
    .await
}
