//! The admin API's HTTP client: where the server is, which token to send,
//! and what an answer that is not a success means for the exit code.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::login::Credentials;

/// Exit codes of the admin subcommands (the README and docs/cli.md list
/// them). 0 and 1 are success and "the answer is no" (a broken audit
/// trail, a policy test that did not match, review findings); 2 is any
/// other failure, as before.
pub mod exit {
    pub const FAILURE: u8 = 2;
    pub const INVALID: u8 = 3;
    pub const DENIED: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    pub const CONFLICT: u8 = 6;
}

/// The server answered with an error: the request changed nothing.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct Refused {
    pub status: StatusCode,
    /// The problem's `detail`, else its `title`, else the OAuth
    /// `error_description`, else the body's first line.
    pub message: String,
    pub request_id: Option<String>,
}

impl Refused {
    pub fn exit_code(&self) -> u8 {
        match self.status.as_u16() {
            400 | 413 | 415 | 422 => exit::INVALID,
            401 | 403 => exit::DENIED,
            404 => exit::NOT_FOUND,
            409 | 412 => exit::CONFLICT,
            _ => exit::FAILURE,
        }
    }

    fn from_body(status: StatusCode, body: &str) -> Self {
        let json: Option<Value> = serde_json::from_str(body).ok();
        let field = |name: &str| json.as_ref().and_then(|j| j.get(name)).and_then(Value::as_str).map(str::to_owned);
        let message = field("detail")
            .or_else(|| field("title"))
            .or_else(|| field("error_description"))
            .or_else(|| field("error"))
            .unwrap_or_else(|| body.lines().next().unwrap_or("").chars().take(200).collect());
        Refused { status, message, request_id: field("request_id") }
    }
}

/// The server and the bearer token every call sends.
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Where the server is and which token to use: `--server` and
/// `MANDATE_ADMIN_TOKEN` first, then what `mandate login` stored.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The server's base URL [default: the one `mandate login` stored, else
    /// http://127.0.0.1:7070].
    #[arg(long, env = "MANDATE_URL", global = true)]
    pub server: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The token from the environment; never from the command line, where
/// other users of the machine could read it.
const TOKEN_VAR: &str = "MANDATE_ADMIN_TOKEN";
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

impl Api {
    pub fn new(args: &ServerArgs) -> Result<Self> {
        let stored = Credentials::load()?;
        let token = std::env::var(TOKEN_VAR).ok().filter(|t| !t.is_empty());
        let base = match (&args.server, &stored) {
            (Some(s), _) => s.clone(),
            (None, Some(c)) => c.server.clone(),
            (None, None) => DEFAULT_SERVER.to_owned(),
        };
        let base = base.trim_end_matches('/').to_owned();
        // A stored token goes only to the server it was stored for.
        let token = token.or_else(|| stored.filter(|c| c.server.trim_end_matches('/') == base).map(|c| c.token));
        Self::with(base, token)
    }

    pub fn with(base: String, token: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("mandate-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Api { base, token, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        self.call(Method::GET, path, query, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Value> {
        self.call(Method::POST, path, &[], body).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Result<Value> {
        self.call(Method::PUT, path, &[], Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Result<Value> {
        self.call(Method::PATCH, path, &[], Some(body)).await
    }

    /// A form POST (the OAuth endpoints), authenticated by the form.
    pub async fn form(&self, path: &str, form: &[(&str, String)], bearer: bool) -> Result<Value> {
        let mut req = self.http.post(self.url(path)).form(form);
        if bearer {
            req = req.bearer_auth(self.token()?);
        }
        Self::answer(req.send().await.with_context(|| format!("calling {}", self.base))?).await
    }

    fn token(&self) -> Result<&str> {
        self.token
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("no token: set {TOKEN_VAR} or run `mandate login --server {}`", self.base))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(&self, method: Method, path: &str, query: &[(&str, String)], body: Option<Value>) -> Result<Value> {
        let mut url = url::Url::parse(&self.url(path)).with_context(|| format!("{} is not a URL", self.base))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut req = self.http.request(method, url).bearer_auth(self.token()?);
        if let Some(body) = body {
            req = req.json(&body);
        }
        Self::answer(req.send().await.with_context(|| format!("calling {}", self.base))?).await
    }

    async fn answer(resp: reqwest::Response) -> Result<Value> {
        let status = resp.status();
        let text = resp.text().await.context("reading the answer")?;
        if !status.is_success() {
            return Err(Refused::from_body(status, &text).into());
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("the server's answer is not JSON ({status})"))
    }
}

/// The exit code for a failed subcommand.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Refused>().map_or(exit::FAILURE, Refused::exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_and_oauth_errors_give_their_message_and_code() {
        let p = Refused::from_body(
            StatusCode::CONFLICT,
            r#"{"type":"urn:mandate:problem:conflict","title":"Conflict","status":409,"detail":"version moved","request_id":"r-1"}"#,
        );
        assert_eq!((p.message.as_str(), p.request_id.as_deref(), p.exit_code()), ("version moved", Some("r-1"), 6));
        let o = Refused::from_body(StatusCode::BAD_REQUEST, r#"{"error":"invalid_scope","error_description":"no"}"#);
        assert_eq!((o.message.as_str(), o.exit_code()), ("no", 3));
        let t = Refused::from_body(StatusCode::BAD_GATEWAY, "upstream\nsecond line");
        assert_eq!((t.message.as_str(), t.exit_code()), ("upstream", 2));
        assert_eq!(Refused::from_body(StatusCode::FORBIDDEN, "").exit_code(), 4);
        assert_eq!(Refused::from_body(StatusCode::NOT_FOUND, "{}").exit_code(), 5);
    }
}
