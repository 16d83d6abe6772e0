//! `mandate review` against a running `mandate serve`: the table, the JSON,
//! the server's `--review-*` flags and the exit codes (0 none, 1 findings,
//! 4 refused, 3 invalid input).

use std::process::Output;

use anyhow::{Context, Result, ensure};
use mandate_jose::{KeyAlg, SigningKey};
use serde_json::{Value, json};

use crate::support::{ADMIN, Node, admin, free_port, mandate, seed};

fn review(url: &str, token: &str, args: &[&str]) -> Result<Output> {
    Ok(mandate().arg("review").args(["--server", url]).args(args).env("MANDATE_ADMIN_TOKEN", token).output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandate_review_reports_findings_with_its_exit_code() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data").to_string_lossy().into_owned();
    let port = free_port()?;
    let issuer = format!("http://127.0.0.1:{port}");
    // A stale window of 0 days: anything not used since now is stale.
    let serve = ["--data-dir", data.as_str(), "--review-stale-days", "0"];
    let node = Node::start(port, &issuer, &serve, &dir.path().join("server.log")).await?;

    let out = review(&node.url, ADMIN, &[])?;
    ensure!(out.status.code() == Some(0), "{out:?}");
    ensure!(String::from_utf8_lossy(&out.stdout) == "no findings\n", "{out:?}");

    let http = reqwest::Client::new();
    let (agent, _) = seed(&http, &node.url).await?;
    let out = review(&node.url, ADMIN, &[])?;
    let table = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.code() == Some(1), "{out:?}");
    ensure!(table.starts_with("KIND") && table.contains("stale") && table.contains(&agent), "{table}");
    ensure!(table.contains("retire") && table.ends_with("1 finding(s)\n"), "{table}");

    let out = review(&node.url, ADMIN, &["--json"])?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    let body: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(body["findings"][0]["kind"] == "stale" && body["findings"][0]["subject"] == agent.as_str(), "{body}");

    // A second stale agent, and one agent per request: the command follows
    // the pages (ADR 0038), prints the header once and counts them all.
    let other = admin(&http, &node.url, "/v1/users", json!({"name": "Two", "email": "two@example.com"})).await?;
    let key = SigningKey::generate(KeyAlg::EdDSA)?;
    let second = admin(
        &http,
        &node.url,
        "/v1/agents",
        json!({"name": "Second", "owner": other["id"], "jwks": {"keys": [key.public().to_json()]}}),
    )
    .await?;
    let second = second["client_id"].as_str().context("client_id")?;
    let out = review(&node.url, ADMIN, &["--page-size", "1"])?;
    let table = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.code() == Some(1), "{out:?}");
    ensure!(table.matches("KIND").count() == 1 && table.contains(&agent) && table.contains(second), "{table}");
    ensure!(table.ends_with("2 finding(s)\n"), "{table}");
    let out = review(&node.url, ADMIN, &["--json", "--page-size", "1"])?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    let body: Value = serde_json::from_slice(&out.stdout)?;
    let subjects: Vec<&str> =
        body["findings"].as_array().into_iter().flatten().filter_map(|f| f["subject"].as_str()).collect();
    ensure!(subjects == [second, agent.as_str()], "newest first, each once: {body}");

    // The query overrides the server's flag: within 30 days nothing is stale.
    let out = review(&node.url, ADMIN, &["--stale-days", "30"])?;
    ensure!(out.status.code() == Some(0), "{out:?}");

    // A wrong token is refused (exit 4); a threshold out of range is
    // invalid input (exit 3).
    let out = review(&node.url, "not-the-admin-token", &[])?;
    ensure!(out.status.code() == Some(4) && String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");
    let out = review(&node.url, ADMIN, &["--stale-days", "4000"])?;
    ensure!(out.status.code() == Some(3) && String::from_utf8_lossy(&out.stderr).contains("400"), "{out:?}");
    Ok(())
}

/// `mandate review lapsed` and `mandate grants reapprove` (ADR 0036): the
/// table and the JSON of the lapse report, exit 0; an unknown grant exits
/// 5, a malformed id 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandate_review_lapsed_and_grants_reapprove() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data").to_string_lossy().into_owned();
    let port = free_port()?;
    let issuer = format!("http://127.0.0.1:{port}");
    let node = Node::start(port, &issuer, &["--data-dir", data.as_str()], &dir.path().join("server.log")).await?;

    let out = review(&node.url, ADMIN, &["lapsed"])?;
    ensure!(out.status.code() == Some(0), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    ensure!(table.starts_with("ID") && table.contains("REPORTED"), "{table}");
    let out = review(&node.url, ADMIN, &["--json", "lapsed", "--since", "2026-01-01T00:00:00Z"])?;
    ensure!(out.status.code() == Some(0), "{out:?}");
    let body: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(body["items"] == serde_json::json!([]) && body["next_cursor"].is_null(), "{body}");
    let out = review(&node.url, ADMIN, &["lapsed", "--since", "yesterday"])?;
    ensure!(out.status.code() == Some(3), "{out:?}");

    let grants = |args: &[&str]| -> Result<Output> {
        Ok(mandate()
            .arg("grants")
            .args(["--server", node.url.as_str()])
            .args(args)
            .env("MANDATE_ADMIN_TOKEN", ADMIN)
            .output()?)
    };
    let out = grants(&["reapprove", "grt_01J00000000000000000000000"])?;
    ensure!(out.status.code() == Some(5), "an unknown grant: {out:?}");
    let out = grants(&["reapprove", "grt_01J00000000000000000000000", "--purpose", "plan Q3"])?;
    ensure!(out.status.code() == Some(5), "{out:?}");
    Ok(())
}
