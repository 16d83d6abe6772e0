//! SIGKILL mid-load, again and again: every token a client received has
//! its audit event, and the chain verifies. Acknowledged-but-lost is 0.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Node, export, free_port, issued_jtis, one_token, seed, verify};

const ROUNDS: usize = 6;
const CLIENTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_load_nothing_acknowledged_is_lost() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data_arg = data.to_string_lossy().into_owned();
    let log = dir.path().join("server.log");
    let port = free_port()?;
    let issuer = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let node = Node::start(port, &issuer, &["--data-dir", &data_arg], &log).await?;
    let (agent, key) = seed(&http, &node.url).await?;
    let mut node = Some(node);
    let received: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut cut_off = 0;
    for round in 0..ROUNDS {
        let running = match node.take() {
            Some(n) => n,
            None => Node::start(port, &issuer, &["--data-dir", &data_arg], &log).await?,
        };
        let url = running.url.clone();
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let (http, url, issuer, agent, key, received) =
                (http.clone(), url.clone(), issuer.clone(), agent.clone(), key.clone(), received.clone());
            clients.push(tokio::spawn(async move {
                let mut n = (round * 1_000_000 + c * 10_000) as u64;
                loop {
                    n += 1;
                    match one_token(&http, &url, &issuer, &agent, &key, n).await {
                        Ok(Some(jti)) => received.lock().map(|mut r| r.push(jti)).unwrap_or_default(),
                        Ok(None) => {}
                        // The server is gone: this client's round is over.
                        Err(_) => return,
                    }
                }
            }));
        }
        // Let the load build, then pull the plug while requests are in flight.
        tokio::time::sleep(Duration::from_millis(300 + 97 * round as u64)).await;
        let before = received.lock().map(|r| r.len()).unwrap_or(0);
        running.kill()?;
        for c in clients {
            c.await?;
        }
        let after = received.lock().map(|r| r.len()).unwrap_or(0);
        anyhow::ensure!(after > cut_off, "round {round} issued no tokens");
        cut_off = after;
        eprintln!("round {round}: {} tokens received by the kill, {after} in all", before);
    }
    let store = ["--data-dir", data_arg.as_str()];
    let (code, out) = verify(&store)?;
    anyhow::ensure!(code == 0, "the chain does not verify after {ROUNDS} kills: {out}");
    let recorded = issued_jtis(&export(&store)?);
    let received = received.lock().map(|r| r.clone()).unwrap_or_default();
    let lost: Vec<&String> = received.iter().filter(|j| !recorded.contains(*j)).collect();
    anyhow::ensure!(
        lost.is_empty(),
        "{} of {} acknowledged tokens have no audit event: {lost:?}",
        lost.len(),
        received.len()
    );
    eprintln!("{} tokens acknowledged across {ROUNDS} kills, all recorded; {out}", received.len());
    Ok(())
}
