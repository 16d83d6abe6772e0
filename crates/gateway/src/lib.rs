//! Mandate's gateway (`mandate gateway --config gateway.toml`, DESIGN §9):
//! a reverse proxy that protects MCP servers and HTTP APIs with Mandate.
//!
//! For each `[[route]]` (a path prefix in front of one upstream) it
//!
//! - serves RFC 9728 metadata at
//!   `/.well-known/oauth-protected-resource<prefix>` and answers requests
//!   without a good token with `401` and a `WWW-Authenticate` challenge
//!   naming it, so that MCP clients find Mandate on their own;
//! - verifies every token with `mandate-verifier` for the route's resource:
//!   signature, issuer, audience, lifetime, DPoP binding, status list;
//! - on MCP routes, decides every JSON-RPC `tools/call` with Mandate's
//!   check API before forwarding it (a deny for want of scope is a `403
//!   insufficient_scope` challenge, so the client steps up; other denials
//!   and approvals needed are JSON-RPC errors), and filters `tools/list`
//!   results to the tools the token may call, in JSON or event streams;
//! - never forwards the client's `Authorization` or `DPoP`: the upstream
//!   gets nothing, or a token Mandate exchanged for its own audience;
//! - fails closed: when Mandate cannot be asked or a body cannot be
//!   parsed, nothing is forwarded (SECURITY row 49).
//!
//! docs/gateway.md is the user's reference.

mod challenge;
mod config;
mod decide;
mod error;
mod gateway;
mod http;
mod jsonrpc;
mod mcp;
mod sse;
mod stream;
mod upstream;

pub use config::{
    Config, ConfigError, DEFAULT_MAX_BODY_BYTES, DEFAULT_UPSTREAM_TIMEOUT_SECS, RouteConfig, RouteKind, UpstreamToken,
    load_key,
};
pub use error::code;
pub use gateway::Gateway;

/// Why the gateway stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listening on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// Loads the key, binds `listen` and serves until the process is stopped.
pub async fn run(config: Config) -> Result<(), RunError> {
    let addr = config.listen;
    let gateway = Gateway::new(config)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| RunError::Bind { addr, source })?;
    tracing::info!(
        %addr,
        public_url = %gateway.config().public_url,
        issuer = %gateway.config().issuer,
        routes = gateway.config().routes.len(),
        "gateway listening"
    );
    for r in &gateway.config().routes {
        tracing::info!(prefix = %r.prefix, kind = ?r.kind, resource = %r.resource, upstream = %r.upstream, "route");
    }
    gateway.serve(listener).await.map_err(RunError::Serve)
}
