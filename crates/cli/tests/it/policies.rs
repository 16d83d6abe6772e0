//! `mandate policies test` as CI runs it: exit 0 when every case decides
//! as expected, 1 when one does not, 2 when the test cannot be run.

use anyhow::Result;
use serde_json::json;

use crate::support::{ADMIN, API, Node, free_port, mandate, seed};

#[tokio::test]
async fn policies_test_exits_by_whether_every_case_matched() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let issuer = format!("http://127.0.0.1:{port}");
    let data = dir.path().join("data");
    let args = ["--data-dir", data.to_str().unwrap_or(".")];
    let node = Node::start(port, &issuer, &args, &dir.path().join("serve.log")).await?;
    let http = reqwest::Client::new();
    let (agent, _) = seed(&http, &node.url).await?;
    let policy = dir.path().join("policies.cedar");
    std::fs::write(
        &policy,
        format!("permit(principal is Agent, action == Action::\"read\", resource == Api::\"{API}\");"),
    )?;
    let cases = dir.path().join("cases.json");
    let run = |expected: &str| -> Result<(Option<i32>, String)> {
        std::fs::write(
            &cases,
            json!([{"principal": agent, "action": "read", "resource": API, "expected": expected}]).to_string(),
        )?;
        let out = mandate()
            .args(["policies", "test"])
            .arg(&policy)
            .arg("--cases")
            .arg(&cases)
            .args(["--server", &node.url])
            .env("MANDATE_ADMIN_TOKEN", ADMIN)
            .output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.code(), text))
    };
    let (code, out) = run("allow")?;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok") && out.contains("1 matched, 0 did not"), "{out}");
    let (code, out) = run("deny")?;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL"), "{out}");
    // A candidate the validator refuses: invalid input (3), with its message.
    std::fs::write(&policy, "permit(principal, action == Action::\"fly\", resource);")?;
    let (code, out) = run("allow")?;
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("fly"), "{out}");
    node.kill()?;
    Ok(())
}
