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
    // Checkpoints every 500 events, so that they are signed under load and
    // between kills too.
    // Rate limits off: the load is one client at full speed.
    let serve = [
        "--data-dir",
        data_arg.as_str(),
        "--audit-checkpoint-events",
        "500",
        "--rate-limit-per-address",
        "0",
        "--rate-limit-per-client",
        "0",
    ];
    let node = Node::start(port, &issuer, &serve, &log).await?;
    let (agent, key) = seed(&http, &node.url).await?;
    let mut node = Some(node);
    let received: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut cut_off = 0;
    for round in 0..ROUNDS {
        let running = match node.take() {
            Some(n) => n,
            None => Node::start(port, &issuer, &serve, &log).await?,
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
    // The trace of one of them, offline.
    let jti = received.last().cloned().unwrap_or_default();
    let out = crate::support::mandate().args(["audit", "trace", &jti]).args(store).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && text.contains(&format!("{agent} -> {} [read] {jti}", crate::support::API)),
        "trace: {text}"
    );
    let out =
        crate::support::mandate().args(["audit", "trace", "tok_01JZZZZZZZZZZZZZZZZZZZZZZZ"]).args(store).output()?;
    anyhow::ensure!(out.status.code() == Some(2), "an unknown token traced: {}", String::from_utf8_lossy(&out.stdout));
    truncation_is_caught_by_a_witness(&data, &store)
}

/// The latest checkpoint, kept outside; then the tail cut off behind
/// Mandate's back. Without the witness the shorter chain is self-consistent
/// (its last stored checkpoints go too); with it, `verify` exits 1 and names
/// the first missing seq.
fn truncation_is_caught_by_a_witness(data: &std::path::Path, store: &[&str]) -> anyhow::Result<()> {
    let out = crate::support::mandate().args(["audit", "checkpoint"]).args(store).output()?;
    anyhow::ensure!(out.status.success(), "no checkpoint: {}", String::from_utf8_lossy(&out.stderr));
    let witness_path = data.with_file_name("witness.json");
    std::fs::write(&witness_path, &out.stdout)?;
    let witness: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let seq = witness["seq"].as_u64().unwrap_or(0);
    anyhow::ensure!(seq > 10, "checkpoint at {seq}");
    let witness_arg = witness_path.to_string_lossy().into_owned();
    let with_witness: Vec<&str> = store.iter().copied().chain(["--checkpoint", witness_arg.as_str()]).collect();
    let (code, out) = verify(&with_witness)?;
    anyhow::ensure!(code == 0, "the witness does not match the intact chain: {out}");
    cut_tail(data, seq)?;
    let (code, out) = verify(store)?;
    anyhow::ensure!(code == 0, "without a witness the truncated chain should verify: {out}");
    let (code, out) = verify(&with_witness)?;
    anyhow::ensure!(code == 1, "truncation went unnoticed by the witness (exit {code}): {out}");
    anyhow::ensure!(out.contains(&format!("BROKEN at seq {}", seq - 4)), "{out}");
    Ok(())
}

/// Drops the append-only trigger and deletes the last five events up to
/// `seq`, with every later event and checkpoint, as someone with write
/// access to the file could.
fn cut_tail(data: &std::path::Path, seq: u64) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open(data.join("mandate.db"))?;
    let keep = seq - 5;
    conn.execute_batch(&format!(
        "DROP TRIGGER audit_events_no_delete; DELETE FROM audit_events WHERE seq > {keep}; \
         DELETE FROM audit_checkpoints WHERE seq > {keep};"
    ))?;
    Ok(())
}
