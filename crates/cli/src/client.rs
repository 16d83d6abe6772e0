//! A small client of the admin API for the CLI's admin subcommands: the
//! server URL and the admin token, and a JSON GET/POST that turns problem
//! JSON (RFC 9457) into an error naming the status and the detail.

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

/// Where the admin API is and how to call it.
#[derive(Debug, Clone, Args)]
pub struct Server {
    /// The server's base URL.
    #[arg(long = "server", env = "MANDATE_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// The admin token (or a person's API token, for what they may read).
    #[arg(long, env = "MANDATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }

    /// `GET path` (with its query) → the JSON answer.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let resp = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .with_context(|| format!("calling {}", self.url))?;
        answer(resp).await
    }

    /// `POST path` with a JSON body → the JSON answer.
    #[allow(dead_code)] // for the admin subcommands that change things
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = reqwest::Client::new()
            .post(self.url(path))
            .bearer_auth(&self.admin_token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("calling {}", self.url))?;
        answer(resp).await
    }
}

async fn answer(resp: reqwest::Response) -> Result<Value> {
    let status = resp.status();
    let text = resp.text().await.context("reading the answer")?;
    if !status.is_success() {
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(text);
        bail!("the server answered {status}: {detail}");
    }
    serde_json::from_str(&text).context("the answer is not JSON")
}
