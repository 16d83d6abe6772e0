//! `mandate gateway` as operators run it: a configuration mistake stops it
//! with a message naming the field; a good one serves the metadata and
//! challenges, and refuses with 503 while Mandate cannot be reached.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::support::{free_port, mandate};

fn config(port: u16, issuer: &str, extra: &str) -> String {
    format!(
        r#"
        issuer = "{issuer}"
        listen = "127.0.0.1:{port}"
        client_id = "agt_01JGATEWAY0000000000000000"
        key_file = "gateway.pk8"
        {extra}
        [[route]]
        prefix = "/mcp/everything"
        upstream = "http://127.0.0.1:9/mcp"
        resource = "http://127.0.0.1:{port}/mcp/everything"
        upstream_token = "exchange"
        upstream_resource = "http://127.0.0.1:9"
        scopes = ["tools"]
        "#
    )
}

/// Runs `mandate gateway` to its end; its exit code and stderr.
fn run_to_end(dir: &std::path::Path) -> Result<(Option<i32>, String)> {
    let out = mandate().args(["gateway", "--config"]).arg(dir.join("gateway.toml")).output()?;
    Ok((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[tokio::test]
async fn the_gateway_checks_its_configuration_then_serves() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    // No key yet.
    std::fs::write(dir.path().join("gateway.toml"), config(port, "http://127.0.0.1:9", ""))?;
    let (code, err) = run_to_end(dir.path())?;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("key_file") && err.contains("gateway.pk8"), "{err}");
    // A typo.
    std::fs::write(dir.path().join("gateway.toml"), config(port, "http://127.0.0.1:9", "max_body = 5"))?;
    let (code, err) = run_to_end(dir.path())?;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("max_body"), "{err}");

    let keygen = mandate().args(["keys", "client-keygen", "--out"]).arg(dir.path().join("gateway.pk8")).output()?;
    assert!(keygen.status.success());
    // Mandate is nowhere: the gateway starts, and fails closed.
    std::fs::write(dir.path().join("gateway.toml"), config(port, "http://127.0.0.1:9", ""))?;
    let mut child = mandate()
        .args(["gateway", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting mandate gateway")?;
    let outcome = async {
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let meta_url = format!("{base}/.well-known/oauth-protected-resource/mcp/everything");
        let deadline = Instant::now() + Duration::from_secs(30);
        let meta = loop {
            if let Ok(r) = http.get(&meta_url).send().await {
                break r;
            }
            if Instant::now() > deadline {
                bail!("mandate gateway did not start listening");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(meta.status(), 200);
        let meta: serde_json::Value = meta.json().await?;
        assert_eq!(meta["resource"], format!("{base}/mcp/everything"));
        assert_eq!(meta["authorization_servers"][0], "http://127.0.0.1:9");

        let resp = http.post(format!("{base}/mcp/everything")).body("{}").send().await?;
        assert_eq!(resp.status(), 401);
        let www = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(www, format!(r#"Bearer scope="tools", resource_metadata="{meta_url}""#));

        let resp = http.post(format!("{base}/mcp/everything")).bearer_auth("a.b.c").body("{}").send().await?;
        assert_eq!(resp.status(), 503, "no keys, no decision");
        assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
        Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    outcome
}
