//! `mandate audit`: the trail read straight from the store, so that it can
//! be checked on a copy of the database with no server running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use mandate_audit::Checkpoint;
use mandate_core::audit::{self, AuditQuery};
use mandate_core::{Store, TrailReport};

/// Where the trail is: the SQLite database in a data dir, or a database URL.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The data dir of an embedded-SQLite deployment.
    #[arg(long, env = "MANDATE_DATA_DIR", default_value = "mandate-data")]
    data_dir: PathBuf,
    /// `postgres://…` or `sqlite://PATH`; overrides --data-dir.
    #[arg(long, env = "MANDATE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// One JSON event per line.
    Jsonl,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain and check every signed checkpoint. Exits 1
    /// and names the first bad seq on any edited, deleted, inserted or
    /// reordered event; with --checkpoint, also on a truncated tail or a
    /// rewritten chain.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Checkpoints kept outside Mandate (a witness): a JSON checkpoint,
        /// an array of them, or the body of GET /v1/audit/checkpoints.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
        /// Trust only these audit keys (a JWK set, as GET /v1/audit/keys
        /// serves it, kept outside the database). Without it, the keys
        /// stored in the database are used, which anyone able to write to
        /// the database could add to.
        #[arg(long)]
        audit_keys: Option<PathBuf>,
    },
    /// Print the delegation tree of a token (tok_…) or a grant (grt_…).
    Trace {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Print the tree as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stream the trail, oldest first.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        /// Only events after this seq.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Print the latest signed checkpoint, to keep somewhere Mandate cannot
    /// write (the witness that --checkpoint checks against).
    Checkpoint {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Runs an audit command; `Ok(false)` means the trail is broken.
pub async fn run(command: AuditCommand) -> Result<bool> {
    match command {
        AuditCommand::Verify { store, checkpoint, audit_keys } => {
            let witnessed = checkpoint.iter().map(|p| read_checkpoints(p)).collect::<Result<Vec<_>>>()?.concat();
            let pinned = audit_keys.as_deref().map(read_keys).transpose()?;
            let store = open(&store).await?;
            match audit::verify_trail(store.as_ref(), &witnessed, pinned.as_deref()).await? {
                TrailReport::Intact(v) => {
                    println!(
                        "ok: {} events, head {}, {} checkpoints verified ({} kept outside), {} lane(s)",
                        v.events,
                        v.head,
                        v.checkpoints,
                        witnessed.len(),
                        v.lanes
                    );
                    Ok(true)
                }
                TrailReport::Broken(t) => {
                    println!("BROKEN at seq {}: {}", t.seq, t.reason);
                    Ok(false)
                }
            }
        }
        AuditCommand::Trace { id, store, json } => {
            let store = open(&store).await?;
            let tree = audit::trace(store.as_ref(), &id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tree)?);
            } else {
                print!("{}", tree.render());
            }
            Ok(true)
        }
        AuditCommand::Export { store, format: Format::Jsonl, after } => {
            let store = open(&store).await?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut cursor = after;
            loop {
                let page = store.audit_events(&AuditQuery::page(cursor)).await?;
                let Some(last) = page.last() else { break };
                cursor = last.seq;
                for e in &page {
                    serde_json::to_writer(&mut out, e)?;
                    out.write_all(b"\n")?;
                }
            }
            out.flush()?;
            Ok(true)
        }
        AuditCommand::Checkpoint { store } => {
            let store = open(&store).await?;
            match store.last_audit_checkpoint().await? {
                Some(cp) => println!("{}", serde_json::to_string(&cp)?),
                None => bail!("no checkpoint has been signed yet"),
            }
            Ok(true)
        }
    }
}

/// Opens an existing store; never creates an empty one by mistake.
async fn open(args: &StoreArgs) -> Result<Arc<dyn Store>> {
    if args.database_url.is_none() {
        let db = args.data_dir.join("mandate.db");
        if !db.exists() {
            bail!("no database at {} (use --data-dir or --database-url)", db.display());
        }
    }
    crate::serve::open_store(&args.data_dir, args.database_url.as_deref()).await
}

/// A JWK set from a file.
fn read_keys(path: &Path) -> Result<Vec<mandate_jose::PublicJwk>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(mandate_jose::JwkSet::from_json(&value).with_context(|| format!("{}: not a JWK set", path.display()))?.keys)
}

/// Checkpoints from a file: one, an array, or `{"checkpoints": [...]}`.
fn read_checkpoints(path: &Path) -> Result<Vec<Checkpoint>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let list = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(mut obj) if obj.contains_key("checkpoints") => match obj.remove("checkpoints") {
            Some(serde_json::Value::Array(items)) => items,
            _ => bail!("{}: \"checkpoints\" is not an array", path.display()),
        },
        one => vec![one],
    };
    list.into_iter()
        .map(|v| serde_json::from_value(v).with_context(|| format!("{}: not a checkpoint", path.display())))
        .collect()
}
