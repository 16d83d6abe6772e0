//! The `mandate` binary: `serve`, `gateway`, the audit trail, key
//! management, client helpers and the admin subcommands.

mod admin;
mod audit;
mod demo;
mod policies;
mod review;
mod serve;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand};

/// mimalloc instead of glibc's allocator: under load glibc's `malloc`,
/// `free` and their consolidation took about a sixth of the server's CPU
/// (issue 19's profile, BENCHMARKS.md "Issue 19"). The default feature
/// `mimalloc`; without it, glibc's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Users: list, show, create, change, issue their API tokens.
    Users {
        #[command(subcommand)]
        command: admin::UsersCommand,
        #[command(flatten)]
        out: admin::Output,
    },
    /// Agents: list, show, register, change, suspend, resume, retire.
    Agents {
        #[command(subcommand)]
        command: admin::AgentsCommand,
        #[command(flatten)]
        out: admin::Output,
    },
    /// Resources (the APIs tokens are for): list, show, register.
    Resources {
        #[command(subcommand)]
        command: admin::ResourcesCommand,
        #[command(flatten)]
        out: admin::Output,
    },
    /// The Cedar policy set: print it, replace it, test a candidate against
    /// cases (exit 1 on any unexpected decision).
    Policies {
        #[command(subcommand)]
        command: admin::PoliciesCommand,
        #[command(flatten)]
        out: admin::Output,
    },
    /// Grants, the living delegation records: list, revoke.
    Grants {
        #[command(subcommand)]
        command: admin::GrantsCommand,
        #[command(flatten)]
        out: admin::Output,
    },
    /// The inventory report: live counts, peaks and churn per owner,
    /// resource or scope.
    Inventory {
        #[command(subcommand)]
        command: admin::InventoryCommand,
        #[command(flatten)]
        out: admin::Output,
    },
    /// Approvals: list, approve, deny (with a user's token, or the admin's).
    Approvals {
        #[command(subcommand)]
        command: admin::ApprovalsCommand,
        #[command(flatten)]
        out: admin::Output,
    },
    /// An agent's token by `client_credentials` and `private_key_jwt`.
    Token {
        #[command(flatten)]
        args: admin::TokenArgs,
        #[command(flatten)]
        out: admin::Output,
    },
    /// Introspect a token (`-` reads it from stdin) with the admin token.
    Introspect {
        token: String,
        #[command(flatten)]
        out: admin::Output,
    },
    /// The audit trail through the API, filtered.
    Events {
        #[command(flatten)]
        args: admin::EventsArgs,
        #[command(flatten)]
        out: admin::Output,
    },
    /// Check a token against the server and keep it (mode 0600) for the
    /// admin subcommands. Reads it from MANDATE_ADMIN_TOKEN, else stdin.
    Login {
        #[arg(long, env = "MANDATE_URL")]
        server: Option<String>,
    },
    /// Forget the token `mandate login` kept.
    Logout,
    /// Wait until the server is ready (`/readyz`).
    Ready {
        #[command(flatten)]
        server: admin::client::ServerArgs,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Print shell completions: `mandate completions bash > /etc/bash_completion.d/mandate`.
    Completions { shell: clap_complete::Shell },
    /// The access review's findings from a running server (`GET
    /// /v1/review`, every page): exit 0 when there are none, 1 when there
    /// are some.
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

/// Exit codes: 0 success; 1 a broken audit trail, an unexpected policy
/// decision or review findings; 2 any other failure; for
/// the admin subcommands 3 invalid input, 4 not authenticated or not
/// allowed, 5 not found, 6 a conflict (docs/cli.md).
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "mandate", &mut std::io::stdout());
        return std::process::ExitCode::SUCCESS;
    }
    let outcome =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime").and_then(
            |runtime| {
                runtime.block_on(async move {
                    match cli.command {
                        Command::Serve(args) => serve::run(*args).await.map(|()| true),
                        Command::Audit { command } => audit::run(command).await,
                        Command::Keys { command } => keys(command).await.map(|()| true),
                        Command::Gateway { config, log_format } => gateway(&config, log_format).await.map(|()| true),
                        Command::Demo => demo::run().await,
                        Command::Users { command, out } => admin::users(command, out).await.map(|()| true),
                        Command::Agents { command, out } => admin::agents(command, out).await.map(|()| true),
                        Command::Resources { command, out } => admin::resources(command, out).await.map(|()| true),
                        Command::Policies { command, out } => admin::policies(command, out).await,
                        Command::Grants { command, out } => admin::grants(command, out).await.map(|()| true),
                        Command::Approvals { command, out } => admin::approvals(command, out).await.map(|()| true),
                        Command::Inventory { command, out } => admin::inventory(command, out).await.map(|()| true),
                        Command::Token { args, out } => admin::token(args, out).await.map(|()| true),
                        Command::Introspect { token, out } => admin::introspect(token, out).await.map(|()| true),
                        Command::Events { args, out } => admin::events(args, out).await.map(|()| true),
                        Command::Login { server } => admin::login(server).await.map(|()| true),
                        Command::Logout => admin::logout().map(|()| true),
                        Command::Ready { server, wait } => admin::ready(server, wait).await.map(|()| true),
                        Command::Completions { .. } => Ok(true),
                        Command::Review(args) => review::run(args).await,
                    }
                })
            },
        );
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(id) = e.downcast_ref::<admin::client::Refused>().and_then(|r| r.request_id.as_deref()) {
                eprintln!("request id: {id}");
            }
            std::process::ExitCode::from(admin::client::exit_code(&e))
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
            println!("{}", client_assertion(&key, &client_id, &audience)?);
            Ok(())
        }
    }
}

/// A `private_key_jwt` client assertion, valid for 60 s, signed with the
/// Ed25519 key in `key` (PKCS#8).
pub(crate) fn client_assertion(key: &std::path::Path, client_id: &str, audience: &str) -> Result<String> {
    let der = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let key = mandate_jose::SigningKey::from_pkcs8(mandate_jose::KeyAlg::EdDSA, &der)?;
    let now = mandate_core::Clock::now(&mandate_core::SystemClock).unix_timestamp();
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut jti)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
    let claims = serde_json::json!({ "iss": client_id, "sub": client_id, "aud": audience, "iat": now, "exp": now + 60, "jti": jti });
    Ok(mandate_jose::jws::sign(&key, "JWT", &claims)?)
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
