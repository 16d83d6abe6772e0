//! The `mandate` binary: `serve`, `gateway`, the audit trail, key
//! management and client helpers.

mod audit;
mod client;
mod demo;
mod review;
mod serve;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mandate", version, about = "Identity and authorization server for AI agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<serve::ServeArgs>),
    /// Verify, trace and export the audit trail, straight from the store
    /// (no running server needed).
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Run the gateway: a reverse proxy that protects MCP servers and HTTP
    /// APIs with Mandate's tokens, per-tool decisions and token exchange
    /// (docs/gateway.md).
    Gateway {
        /// The gateway's configuration (TOML; examples/gateway.toml).
        #[arg(long, env = "MANDATE_GATEWAY_CONFIG")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        log_format: serve::LogFormat,
    },
    /// The whole story end to end (users, agents, CIBA, approval, spawn,
    /// delegation, revocation, workload identity, trace, audit) against a real server and the
    /// example calendar API, on a temporary directory.
    Demo,
    /// Signing keys and client keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The access review's findings from a running server (`GET
    /// /v1/review`): exit 0 when there are none, 3 when there are some.
    Review(review::ReviewArgs),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new signing key through the admin API; the old one stays
    /// published until its tokens have expired.
    Rotate {
        #[arg(long, env = "MANDATE_URL", default_value = "http://127.0.0.1:7070")]
        url: String,
        #[arg(long, env = "MANDATE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        /// EdDSA (default) or ES256.
        #[arg(long)]
        alg: Option<String>,
    },
    /// Generate an Ed25519 key pair for an agent: writes the private key
    /// (PKCS#8) to FILE and prints the public JWK set to register.
    ClientKeygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a fresh `private_key_jwt` client assertion (valid 60 s).
    ClientAssertion {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        client_id: String,
        /// The issuer URL (the assertion's audience).
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        audience: String,
    },
}

/// Exit codes: 0 success, 1 a broken audit trail, 2 any other failure,
/// 3 review findings present (`mandate review`).
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let outcome =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime").and_then(
            |runtime| {
                runtime.block_on(async move {
                    let verdict = |ok: bool| u8::from(!ok);
                    match cli.command {
                        Command::Serve(args) => serve::run(*args).await.map(|()| 0),
                        Command::Audit { command } => audit::run(command).await.map(verdict),
                        Command::Keys { command } => keys(command).await.map(|()| 0),
                        Command::Gateway { config, log_format } => gateway(&config, log_format).await.map(|()| 0),
                        Command::Demo => demo::run().await.map(verdict),
                        Command::Review(args) => review::run(args).await,
                    }
                })
            },
        );
    match outcome {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn gateway(config: &std::path::Path, log_format: serve::LogFormat) -> Result<()> {
    serve::init_logging(log_format);
    let config = mandate_gateway::Config::load(config).with_context(|| format!("loading {}", config.display()))?;
    tokio::select! {
        outcome = mandate_gateway::run(config) => outcome.context("the gateway stopped"),
        () = serve::shutdown_signal() => {
            tracing::info!("signalled; the gateway stops");
            Ok(())
        }
    }
}

async fn keys(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Rotate { url, admin_token, alg } => {
            let body = match alg {
                Some(a) => serde_json::json!({ "alg": a }),
                None => serde_json::json!({}),
            };
            let resp = reqwest::Client::new()
                .post(format!("{}/v1/keys/rotate", url.trim_end_matches('/')))
                .bearer_auth(admin_token)
                .json(&body)
                .send()
                .await
                .context("calling the admin API")?;
            let status = resp.status();
            let text = resp.text().await?;
            if !status.is_success() {
                bail!("rotation failed ({status}): {text}");
            }
            println!("{text}");
            Ok(())
        }
        KeysCommand::ClientKeygen { out } => {
            let key = mandate_jose::SigningKey::generate(mandate_jose::KeyAlg::EdDSA)?;
            write_private(&out, key.pkcs8())?;
            println!("{}", serde_json::json!({ "keys": [key.public().to_json()] }));
            Ok(())
        }
        KeysCommand::ClientAssertion { key, client_id, audience } => {
            let der = std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
            let key = mandate_jose::SigningKey::from_pkcs8(mandate_jose::KeyAlg::EdDSA, &der)?;
            let now = mandate_core::Clock::now(&mandate_core::SystemClock).unix_timestamp();
            let mut jti = [0u8; 16];
            aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut jti)
                .map_err(|_| anyhow::anyhow!("no randomness"))?;
            let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
            let claims = serde_json::json!({ "iss": client_id, "sub": client_id, "aud": audience, "iat": now, "exp": now + 60, "jti": jti });
            println!("{}", mandate_jose::jws::sign(&key, "JWT", &claims)?);
            Ok(())
        }
    }
}

/// Writes a secret file readable only by its owner.
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
