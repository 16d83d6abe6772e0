//! The README's walk-through with the `mandate` admin subcommands only: no
//! curl, no jq. Each step's answer, its exit code on refusal, and the
//! stored `mandate login` token.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Result, ensure};
use serde_json::Value;

use crate::support::{ADMIN, Node, free_port, mandate};

/// Runs `mandate args…` against `url`, with the admin token in the
/// environment unless `token` says otherwise.
fn run(url: &str, token: Option<&str>, config: &Path, args: &[&str]) -> Result<Output> {
    let mut cmd: Command = mandate();
    cmd.args(args).env("MANDATE_URL", url).env("MANDATE_CONFIG_DIR", config).env_remove("MANDATE_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("MANDATE_ADMIN_TOKEN", t);
    }
    Ok(cmd.stdin(Stdio::null()).output()?)
}

fn ok(out: &Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout.clone())?.trim_end().to_owned())
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walk_through_runs_with_the_cli_alone() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = dir.path().join("config");
    let port = free_port()?;
    let issuer = format!("http://127.0.0.1:{port}");
    let node = Node::start(port, &issuer, &["--data-dir", &data.to_string_lossy()], &dir.path().join("log")).await?;
    let url = node.url.clone();
    let admin = |args: &[&str]| run(&url, Some(ADMIN), &config, args);

    ensure!(ok(&admin(&["ready", "--wait", "5"])?)? == "ready");
    let user = ok(&admin(&[
        "users",
        "create",
        "--name",
        "Alice Example",
        "--email",
        "alice@example.com",
        "--group",
        "eng",
        "--attribute",
        "dept=r&d",
        "--field",
        "id",
    ])?)?;
    ensure!(user.starts_with("usr_"), "{user}");
    let shown = ok(&admin(&["users", "get", &user])?)?;
    ensure!(shown.contains("alice@example.com") && shown.contains("eng"), "{shown}");

    ok(&admin(&[
        "resources",
        "create",
        "--identifier",
        "https://mail.example.com",
        "--name",
        "Mail API",
        "--scope",
        "mail.read=messages:list,messages:get",
        "--scope",
        "mail.send=",
    ])?)?;
    let policy = dir.path().join("policy.cedar");
    std::fs::write(
        &policy,
        r#"permit(principal is Agent, action in [Action::"messages:list", Action::"messages:get"], resource == Api::"https://mail.example.com");"#,
    )?;
    let version = ok(&admin(&["policies", "put", &policy.to_string_lossy(), "--field", "version"])?)?;
    ensure!(version.starts_with("sha256:"), "{version}");
    ensure!(ok(&admin(&["policies", "get"])?)?.contains("messages:list"));
    // A policy naming an unknown action: the validator's message, exit 3.
    let bad = dir.path().join("bad.cedar");
    std::fs::write(&bad, r#"permit(principal, action == Action::"messages:delete", resource);"#)?;
    let refused = admin(&["policies", "put", &bad.to_string_lossy()])?;
    ensure!(code(&refused) == Some(3), "{refused:?}");
    ensure!(String::from_utf8_lossy(&refused.stderr).contains("messages:delete"));
    ensure!(ok(&admin(&["policies", "get", "--field", "version"])?)? == version, "a refused set changed nothing");

    let key = dir.path().join("agent.pk8");
    let jwks = ok(&admin(&["keys", "client-keygen", "--out", &key.to_string_lossy()])?)?;
    let jwks_file = dir.path().join("agent.jwks.json");
    std::fs::write(&jwks_file, jwks)?;
    let agent = ok(&admin(&[
        "agents",
        "create",
        "--name",
        "Mail triage bot",
        "--owner",
        &user,
        "--description",
        "Sorts the inbox",
        "--scope",
        "mail.read",
        "--scope",
        "mail.send",
        "--jwks",
        &jwks_file.to_string_lossy(),
        "--field",
        "id",
    ])?)?;
    ensure!(agent.starts_with("agt_"), "{agent}");
    let described = ok(&admin(&["agents", "get", &agent, "--json"])?)?;
    let described: Value = serde_json::from_str(&described)?;
    ensure!(described["owner"] == user.as_str() && described["scopes"][1] == "mail.send", "{described}");

    let key_arg = key.to_string_lossy().into_owned();
    let token_args = |scope: &'static str| {
        vec![
            "token".to_owned(),
            "--key".into(),
            key_arg.clone(),
            "--client-id".into(),
            agent.clone(),
            "--resource".into(),
            "https://mail.example.com".into(),
            "--scope".into(),
            scope.into(),
        ]
    };
    let read = token_args("mail.read");
    let token = ok(&run(&url, None, &config, &read.iter().map(String::as_str).collect::<Vec<_>>())?)?;
    ensure!(token.split('.').count() == 3, "{token}");
    // The policy does not allow mail.send: invalid_scope, exit 3.
    let send = token_args("mail.send");
    let denied = run(&url, None, &config, &send.iter().map(String::as_str).collect::<Vec<_>>())?;
    ensure!(code(&denied) == Some(3), "{denied:?}");
    ensure!(String::from_utf8_lossy(&denied.stderr).contains("policy does not allow mail.send"));

    ensure!(ok(&admin(&["introspect", &token, "--field", "active"])?)? == "true");
    let suspended = ok(&admin(&["agents", "suspend", &agent, "--json"])?)?;
    let suspended: Value = serde_json::from_str(&suspended)?;
    ensure!(suspended["status"] == "suspended" && suspended["revoked_tokens"] == 1, "{suspended}");
    ensure!(ok(&admin(&["introspect", &token, "--json"])?)?.contains("\"active\": false"));

    let events = ok(&admin(&["events", "--actor", &agent])?)?;
    let mut lines = events.lines();
    ensure!(lines.next().is_some_and(|h| h.starts_with("SEQ") && h.contains("DECISION")), "{events}");
    ensure!(events.contains("token.issued") && events.contains("token.denied"), "{events}");

    // Refusals and their exit codes; nothing changed.
    let missing = admin(&["agents", "get", "agt_01M817E3XNWP72RX60A4Q918EP"])?;
    ensure!(code(&missing) == Some(5), "{missing:?}");
    ensure!(String::from_utf8_lossy(&missing.stderr).contains("request id:"), "{missing:?}");
    let stranger = run(&url, Some("not-the-admin-token-at-all-0000"), &config, &["users", "get", &user])?;
    ensure!(code(&stranger) == Some(4), "{stranger:?}");
    let no_token = run(&url, None, &config, &["users", "get", &user])?;
    ensure!(code(&no_token) == Some(2) && String::from_utf8_lossy(&no_token.stderr).contains("mandate login"));
    let path_trick = admin(&["users", "get", "../v1/keys"])?;
    ensure!(code(&path_trick) == Some(2), "{path_trick:?}");

    // Completions for a shell.
    ensure!(ok(&admin(&["completions", "bash"])?)?.contains("mandate"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_keeps_the_token_for_its_server_only() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    let port = free_port()?;
    let issuer = format!("http://127.0.0.1:{port}");
    let node = Node::start(
        port,
        &issuer,
        &["--data-dir", &dir.path().join("data").to_string_lossy()],
        &dir.path().join("log"),
    )
    .await?;
    let url = node.url.clone();

    // A wrong token is refused and not kept.
    let wrong = run(&url, Some("not-the-admin-token-at-all-0000"), &config, &["login", "--server", &url])?;
    ensure!(code(&wrong) == Some(4), "{wrong:?}");
    ensure!(!config.join("credentials.json").exists());

    ok(&run(&url, Some(ADMIN), &config, &["login", "--server", &url])?)?;
    let file = config.join("credentials.json");
    let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "{mode:o}");
    ensure!(std::fs::metadata(&config)?.permissions().mode() & 0o077 == 0);

    // Without the environment, the stored token is used.
    let user = ok(&run(
        &url,
        None,
        &config,
        &["users", "create", "--name", "Bo", "--email", "bo@example.com", "--field", "id"],
    )?)?;
    ensure!(user.starts_with("usr_"));
    // Another server never receives it.
    let other = format!("http://127.0.0.1:{}", free_port()?);
    let elsewhere = run(&url, None, &config, &["users", "get", &user, "--server", &other])?;
    ensure!(code(&elsewhere) == Some(2) && String::from_utf8_lossy(&elsewhere.stderr).contains("no token"));
    // A file others can read is refused, not used.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    let loose = run(&url, None, &config, &["users", "get", &user])?;
    ensure!(code(&loose) == Some(2) && String::from_utf8_lossy(&loose.stderr).contains("chmod 600"), "{loose:?}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;

    ok(&run(&url, None, &config, &["logout"])?)?;
    ensure!(!file.exists());
    let after = run(&url, None, &config, &["users", "get", &user])?;
    ensure!(code(&after) == Some(2), "{after:?}");
    Ok(())
}
