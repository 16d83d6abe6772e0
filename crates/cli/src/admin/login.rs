//! `mandate login`: a token kept in a file only its owner can read, so
//! that admin subcommands need neither the environment nor the command
//! line to carry it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// What `mandate login` stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub server: String,
    pub token: String,
}

const FILE: &str = "credentials.json";

/// `$MANDATE_CONFIG_DIR`, else `$XDG_CONFIG_HOME/mandate`, else
/// `$HOME/.config/mandate`.
pub fn dir() -> Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = var("MANDATE_CONFIG_DIR") {
        return Ok(d);
    }
    if let Some(d) = var("XDG_CONFIG_HOME") {
        return Ok(d.join("mandate"));
    }
    match var("HOME") {
        Some(h) => Ok(h.join(".config").join("mandate")),
        None => bail!("no HOME, XDG_CONFIG_HOME or MANDATE_CONFIG_DIR to keep the credentials in"),
    }
}

impl Credentials {
    /// The stored credentials, if any. A file that others can read is
    /// refused rather than used, as ssh refuses such a key.
    pub fn load() -> Result<Option<Self>> {
        let path = dir()?.join(FILE);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if meta.permissions().mode() & 0o077 != 0 {
            bail!("{} can be read by others: run `chmod 600` on it or `mandate login` again", path.display());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let creds: Credentials = serde_json::from_str(&text)
            .with_context(|| format!("{} is not what `mandate login` writes", path.display()))?;
        Ok(Some(creds))
    }

    /// Writes the file (mode 0600, in a 0700 directory) by a rename, so a
    /// reader never sees half of it.
    pub fn save(&self) -> Result<PathBuf> {
        let dir = dir()?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(FILE);
        let tmp = dir.join(format!(".{FILE}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Removes the file; `false` when there was none.
    pub fn remove() -> Result<bool> {
        let path = dir()?.join(FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
}
