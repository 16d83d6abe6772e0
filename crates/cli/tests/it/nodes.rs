//! Two `mandate serve` processes on one PostgreSQL, under concurrent load,
//! append to one audit chain that still verifies.

use std::sync::{Arc, Mutex};

use sqlx::Connection;

use crate::support::{Node, export, free_port, issued_jtis, one_token, seed, verify};

fn admin_url() -> String {
    std::env::var("MANDATE_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_append_to_one_chain() -> anyhow::Result<()> {
    let admin = admin_url();
    let name = format!("mandate_nodes_{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or_default();
    let url = format!("{base}/{name}");
    let result = run(&url).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
    result
}

async fn run(url: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (pa, pb) = (free_port()?, free_port()?);
    // Both nodes share one issuer, as a deployment behind one name does.
    let issuer = format!("http://127.0.0.1:{pa}");
    // The load below is one client at full speed: rate limits off.
    let args = [
        "--database-url",
        url,
        "--data-dir",
        dir.path().to_str().unwrap_or("."),
        "--rate-limit-per-address",
        "0",
        "--rate-limit-per-client",
        "0",
    ];
    let a = Node::start(pa, &issuer, &args, &dir.path().join("a.log")).await?;
    let b = Node::start(pb, &issuer, &args, &dir.path().join("b.log")).await?;
    let http = reqwest::Client::new();
    let (agent, key) = seed(&http, &a.url).await?;
    // Node B picks up the policy within its one-second sync.
    let mut n = 0;
    while one_token(&http, &b.url, &issuer, &agent, &key, n).await?.is_none() {
        n += 1;
        anyhow::ensure!(n < 100, "node B never issued");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let received: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in 0..16u64 {
        let url = if c % 2 == 0 { a.url.clone() } else { b.url.clone() };
        let (http, issuer, agent, key, received) =
            (http.clone(), issuer.clone(), agent.clone(), key.clone(), received.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                if let Some(jti) = one_token(&http, &url, &issuer, &agent, &key, 1_000 + c * 100 + i).await? {
                    received.lock().map(|mut r| r.push(jti)).unwrap_or_default();
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let received = received.lock().map(|r| r.clone()).unwrap_or_default();
    anyhow::ensure!(received.len() == 640, "only {} of 640 tokens were issued", received.len());
    drop((a, b));
    let store = ["--database-url", url];
    let (code, out) = verify(&store)?;
    anyhow::ensure!(code == 0, "the shared chain does not verify: {out}");
    let events = export(&store)?;
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    anyhow::ensure!(seqs.len() == events.len(), "an event has no seq");
    anyhow::ensure!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs are not unique and in order");
    // Seqs may have holes on PostgreSQL (decisions 0031, 0044): a busy
    // writer reserves the seqs of its next batch, and those of a node that
    // stops, or whose next batch goes the long way, are never used. At
    // most a batch's worth per node per such turn; far fewer here.
    let holes = seqs.last().copied().unwrap_or(0).saturating_sub(seqs.len() as u64);
    anyhow::ensure!(holes <= 1024, "{holes} seqs are missing");
    let recorded = issued_jtis(&events);
    anyhow::ensure!(received.iter().all(|j| recorded.contains(j)), "a token issued by a node has no event");
    eprintln!("{} events from two nodes; {out}", events.len());
    Ok(())
}
