//! `gateway.toml`: read once at start, checked whole, and refused with a
//! message naming the field when anything is off (DESIGN §9). Nothing has
//! a silent default that weakens a route: `upstream_token` must be said.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use mandate_jose::SigningKey;
use serde::Deserialize;
use url::Url;

/// Largest request body accepted by default (413 beyond).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
const MAX_MAX_BODY_BYTES: usize = 64 << 20;
/// How long the upstream may take to start answering, by default.
pub const DEFAULT_UPSTREAM_TIMEOUT_SECS: u64 = 300;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Parse(String),
    #[error("{0}")]
    Invalid(String),
    #[error("key_file {path}: {why}")]
    Key { path: PathBuf, why: String },
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// What a route protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// An MCP server (streamable HTTP): every `tools/call` is decided by
    /// the check API, `tools/list` is filtered.
    Mcp,
    /// A plain HTTP API: the token is verified, then the request forwarded.
    Http,
}

/// What the gateway sends upstream in `Authorization`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamToken {
    /// Nothing.
    None,
    /// `Bearer` with a token exchanged (RFC 8693) from the client's, for
    /// this audience.
    Exchange { resource: String },
}

/// One protected upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// A path prefix without a trailing slash, such as `/mcp/everything`.
    pub prefix: String,
    pub upstream: Url,
    pub kind: RouteKind,
    /// The registered resource's identifier: the `aud` of the tokens this
    /// route accepts.
    pub resource: String,
    pub upstream_token: UpstreamToken,
    /// Scopes advertised in the metadata and in `401` challenges.
    pub scopes: Vec<String>,
}

/// The whole, checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The Mandate the gateway trusts, as its tokens carry it in `iss`.
    pub issuer: String,
    pub listen: SocketAddr,
    /// The gateway's externally visible base URL, without a trailing slash:
    /// the base of metadata URLs and of DPoP proofs' `htu`.
    pub public_url: String,
    /// The gateway's own agent (`agt_…`).
    pub client_id: String,
    /// Its `private_key_jwt` key: PKCS#8, DER or PEM. A relative path is
    /// relative to the configuration file.
    pub key_file: PathBuf,
    pub max_body_bytes: usize,
    pub upstream_timeout: Duration,
    pub routes: Vec<RouteConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    issuer: String,
    listen: String,
    #[serde(default)]
    public_url: Option<String>,
    client_id: String,
    key_file: PathBuf,
    #[serde(default)]
    max_body_bytes: Option<usize>,
    #[serde(default)]
    upstream_timeout_secs: Option<u64>,
    #[serde(default, rename = "route")]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: String,
    upstream: String,
    #[serde(default)]
    kind: Option<RouteKind>,
    resource: String,
    upstream_token: RawUpstreamToken,
    #[serde(default)]
    upstream_resource: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawUpstreamToken {
    None,
    Exchange,
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml(&text, base)
    }

    /// Parses and checks a configuration; `base` is where a relative
    /// `key_file` is found.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            Figment::from(Toml::string(text)).extract().map_err(|e| ConfigError::Parse(e.to_string()))?;
        raw.check(base)
    }
}

impl RawConfig {
    fn check(self, base: &Path) -> Result<Config, ConfigError> {
        let issuer_url = http_url("issuer", &self.issuer)?;
        if issuer_url.path() != "/" && self.issuer.ends_with('/') {
            return Err(invalid("issuer: write it without a trailing slash, exactly as tokens carry it in iss"));
        }
        let listen: SocketAddr =
            self.listen.parse().map_err(|_| invalid(format!("listen: {:?} is not an address:port", self.listen)))?;
        let public_url = match self.public_url {
            Some(u) => {
                let url = http_url("public_url", &u)?;
                if url.path() != "/" {
                    return Err(invalid("public_url: give the gateway's origin only; routes add their prefixes"));
                }
                u.trim_end_matches('/').to_owned()
            }
            None if listen.ip().is_unspecified() => {
                return Err(invalid(format!(
                    "public_url is required when listen is {listen}: clients need an address to reach"
                )));
            }
            None => format!("http://{listen}"),
        };
        if self.client_id.trim().is_empty() || self.client_id.chars().any(char::is_control) {
            return Err(invalid("client_id: the gateway's agent id (agt_…)"));
        }
        let max_body_bytes = self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if !(1..=MAX_MAX_BODY_BYTES).contains(&max_body_bytes) {
            return Err(invalid(format!("max_body_bytes: between 1 and {MAX_MAX_BODY_BYTES}")));
        }
        let timeout = self.upstream_timeout_secs.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_SECS);
        if !(1..=3600).contains(&timeout) {
            return Err(invalid("upstream_timeout_secs: between 1 and 3600"));
        }
        if self.routes.is_empty() {
            return Err(invalid("no [[route]]: the gateway would protect nothing"));
        }
        let mut routes: Vec<RouteConfig> = Vec::with_capacity(self.routes.len());
        for (n, r) in self.routes.into_iter().enumerate() {
            let route = r.check().map_err(|e| invalid(format!("route {}: {e}", n + 1)))?;
            if routes.iter().any(|o| o.prefix == route.prefix) {
                return Err(invalid(format!("route {}: prefix {} is used twice", n + 1, route.prefix)));
            }
            routes.push(route);
        }
        let key_file = if self.key_file.is_absolute() { self.key_file } else { base.join(self.key_file) };
        Ok(Config {
            issuer: self.issuer,
            listen,
            public_url,
            client_id: self.client_id,
            key_file,
            max_body_bytes,
            upstream_timeout: Duration::from_secs(timeout),
            routes,
        })
    }
}

impl RawRoute {
    fn check(self) -> Result<RouteConfig, String> {
        check_prefix(&self.prefix)?;
        let upstream = http_url("upstream", &self.upstream).map_err(|e| e.to_string())?;
        if upstream.query().is_some() {
            return Err("upstream: no query string".into());
        }
        if self.resource.is_empty()
            || Url::parse(&self.resource).is_err()
            || self.resource.chars().any(char::is_control)
        {
            return Err("resource: the registered resource's identifier, an absolute URI".into());
        }
        let upstream_token = match (self.upstream_token, self.upstream_resource) {
            (RawUpstreamToken::Exchange, Some(r)) => {
                if Url::parse(&r).is_err() || r.chars().any(char::is_control) {
                    return Err("upstream_resource: an absolute URI".into());
                }
                UpstreamToken::Exchange { resource: r }
            }
            (RawUpstreamToken::Exchange, None) => {
                return Err(
                    "upstream_token = \"exchange\" needs upstream_resource, the audience to exchange for".into()
                );
            }
            (RawUpstreamToken::None, None) => UpstreamToken::None,
            (RawUpstreamToken::None, Some(_)) => {
                return Err("upstream_resource is only read with upstream_token = \"exchange\"".into());
            }
        };
        for s in &self.scopes {
            // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
            let ok = !s.is_empty()
                && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
            if !ok {
                return Err(format!("scopes: {s:?} is not a scope token"));
            }
        }
        Ok(RouteConfig {
            prefix: self.prefix,
            upstream,
            kind: self.kind.unwrap_or(RouteKind::Mcp),
            resource: self.resource,
            upstream_token,
            scopes: self.scopes,
        })
    }
}

/// A prefix is matched against raw request paths, so it is kept to plain
/// segments: no dot segments, escapes or empty segments, nothing under
/// `/.well-known`.
fn check_prefix(prefix: &str) -> Result<(), String> {
    let Some(rest) = prefix.strip_prefix('/') else {
        return Err(format!("prefix {prefix:?} must start with /"));
    };
    if rest.is_empty() {
        return Err("prefix \"/\" would swallow the metadata paths; give a path such as /mcp".into());
    }
    for seg in rest.split('/') {
        let plain = !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b));
        if !plain {
            return Err(format!(
                "prefix {prefix:?}: segments are letters, digits and -._~!$&'()*+,;=:@, with no empty, . or .. segment and no trailing slash"
            ));
        }
    }
    if prefix == "/.well-known" || prefix.starts_with("/.well-known/") {
        return Err("prefix: /.well-known is the gateway's own".into());
    }
    Ok(())
}

fn http_url(name: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|e| invalid(format!("{name}: {value:?} is not a URL ({e})")))?;
    match url.scheme() {
        "http" => {}
        "https" if cfg!(feature = "rustls") => {}
        "https" => {
            return Err(invalid(format!(
                "{name}: https needs mandate-gateway built with its rustls feature; use http (loopback, or a TLS sidecar)"
            )));
        }
        other => return Err(invalid(format!("{name}: scheme {other} is not http(s)"))),
    }
    if url.host().is_none() || !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(invalid(format!("{name}: an http(s) URL with a host, without user info or fragment")));
    }
    Ok(url)
}

/// Loads the gateway's `private_key_jwt` key: PKCS#8, as DER (what
/// `mandate keys client-keygen` writes) or PEM (`-----BEGIN PRIVATE
/// KEY-----`), Ed25519 or P-256.
pub fn load_key(path: &Path) -> Result<SigningKey, ConfigError> {
    let fail = |why: String| ConfigError::Key { path: path.to_owned(), why };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    warn_if_readable_by_others(path);
    SigningKey::from_key_file(&bytes).map_err(fail)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the gateway's key file is readable by others; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use mandate_jose::KeyAlg;

    use super::*;

    const GOOD: &str = r#"
        issuer = "http://127.0.0.1:7070"
        listen = "127.0.0.1:8080"
        client_id = "agt_01JGATEWAY"
        key_file = "gateway.pk8"

        [[route]]
        prefix = "/mcp/everything"
        upstream = "http://127.0.0.1:3001/mcp"
        kind = "mcp"
        resource = "http://127.0.0.1:8080/mcp/everything"
        upstream_token = "exchange"
        upstream_resource = "http://127.0.0.1:3001"
        scopes = ["tools.read", "tools.write"]

        [[route]]
        prefix = "/api/calendar"
        upstream = "http://127.0.0.1:3002/v1"
        kind = "http"
        resource = "https://calendar.example"
        upstream_token = "none"
    "#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/mandate"))
    }

    fn refused(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_design_example_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.issuer, "http://127.0.0.1:7070");
        assert_eq!(c.public_url, "http://127.0.0.1:8080", "defaults to http://<listen>");
        assert_eq!(c.key_file, PathBuf::from("/etc/mandate/gateway.pk8"), "relative to the file");
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.upstream_timeout, Duration::from_secs(DEFAULT_UPSTREAM_TIMEOUT_SECS));
        assert_eq!(c.routes.len(), 2);
        let mcp = &c.routes[0];
        assert_eq!(mcp.kind, RouteKind::Mcp);
        assert_eq!(mcp.upstream.as_str(), "http://127.0.0.1:3001/mcp");
        assert_eq!(mcp.upstream_token, UpstreamToken::Exchange { resource: "http://127.0.0.1:3001".into() });
        assert_eq!(mcp.scopes, ["tools.read", "tools.write"]);
        let http = &c.routes[1];
        assert_eq!(http.kind, RouteKind::Http);
        assert_eq!(http.upstream_token, UpstreamToken::None);
        assert!(http.scopes.is_empty());
    }

    #[test]
    fn the_shipped_example_parses() {
        let c = parse(include_str!("../../../examples/gateway.toml")).unwrap();
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].prefix, "/mcp/everything");
        assert_eq!(c.routes[1].kind, RouteKind::Http);
    }

    #[test]
    fn public_url_and_limits() {
        let c = parse(&GOOD.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"0.0.0.0:8080\"\npublic_url = \"https://gw.example/\"\nmax_body_bytes = 4096\nupstream_timeout_secs = 10",
        ));
        // https needs the rustls feature.
        if cfg!(feature = "rustls") {
            let c = c.unwrap();
            assert_eq!(c.public_url, "https://gw.example");
            assert_eq!(c.max_body_bytes, 4096);
        } else {
            assert!(c.unwrap_err().to_string().contains("rustls"));
        }
        let unspecified = GOOD.replace("listen = \"127.0.0.1:8080\"", "listen = \"0.0.0.0:8080\"");
        assert!(refused(&unspecified).contains("public_url is required"));
        let with_path = GOOD.replace("client_id", "public_url = \"http://gw.example/base\"\nclient_id");
        assert!(refused(&with_path).contains("origin only"));
        assert!(refused(&GOOD.replace("client_id", "max_body_bytes = 0\nclient_id")).contains("max_body_bytes"));
        assert!(refused(&GOOD.replace("\"127.0.0.1:8080\"\n", "\"localhost\"\n")).contains("listen"));
    }

    #[test]
    fn typos_and_missing_fields_are_refused() {
        assert!(refused(&GOOD.replace("client_id", "clientid")).contains("clientid"));
        assert!(refused(&GOOD.replace("kind = \"mcp\"", "kind = \"grpc\"")).contains("grpc"));
        assert!(refused(&GOOD.replace("upstream_token = \"none\"", "")).contains("upstream_token"));
        assert!(
            refused(&GOOD.replace("upstream_token = \"none\"", "upstream_token = \"passthrough\""))
                .contains("passthrough")
        );
        let unknown = GOOD.replace("scopes = [", "scope = [");
        assert!(refused(&unknown).contains("scope"), "{}", refused(&unknown));
    }

    #[test]
    fn routes_are_checked() {
        let none: String = GOOD.split("[[route]]").next().unwrap().to_owned();
        assert!(refused(&none).contains("no [[route]]"));
        for (bad, why) in [
            ("prefix = \"mcp\"", "must start with /"),
            ("prefix = \"/\"", "swallow"),
            ("prefix = \"/mcp/\"", "segments"),
            ("prefix = \"/mcp//x\"", "segments"),
            ("prefix = \"/mcp/../x\"", "segments"),
            ("prefix = \"/mcp/%2e%2e\"", "segments"),
            ("prefix = \"/.well-known/x\"", "well-known"),
        ] {
            let text = GOOD.replace("prefix = \"/mcp/everything\"", bad);
            assert!(refused(&text).contains(why), "{bad}: {}", refused(&text));
            assert!(refused(&text).starts_with("route 1:"), "{}", refused(&text));
        }
        let twice = GOOD.replace("/api/calendar", "/mcp/everything");
        assert!(refused(&twice).contains("used twice"));
        let ftp = GOOD.replace("http://127.0.0.1:3002/v1", "ftp://127.0.0.1/v1");
        assert!(refused(&ftp).contains("ftp"));
        let query = GOOD.replace("http://127.0.0.1:3002/v1", "http://127.0.0.1:3002/v1?a=b");
        assert!(refused(&query).contains("query"));
        let userinfo = GOOD.replace("http://127.0.0.1:3002/v1", "http://u:p@127.0.0.1:3002/v1");
        assert!(refused(&userinfo).contains("user info"));
        let no_aud = GOOD.replace("resource = \"https://calendar.example\"", "resource = \"calendar\"");
        assert!(refused(&no_aud).contains("absolute URI"));
        let no_target = GOOD.replace("upstream_resource = \"http://127.0.0.1:3001\"", "");
        assert!(refused(&no_target).contains("needs upstream_resource"));
        let stray =
            GOOD.replace("upstream_token = \"none\"", "upstream_token = \"none\"\nupstream_resource = \"http://x\"");
        assert!(refused(&stray).contains("only read with"));
        let scope = GOOD.replace("\"tools.write\"", "\"tools write\"");
        assert!(refused(&scope).contains("not a scope token"));
        let quote = GOOD.replace("\"tools.write\"", "'tools\"write'");
        assert!(refused(&quote).contains("not a scope token"));
        let https = GOOD.replace("http://127.0.0.1:3002/v1", "https://127.0.0.1:3002/v1");
        assert_eq!(parse(&https).is_ok(), cfg!(feature = "rustls"));
    }

    #[test]
    fn keys_load_from_der_and_pem() {
        let dir = tempfile::tempdir().unwrap();
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256] {
            let key = SigningKey::generate(alg).unwrap();
            let der = dir.path().join("k.der");
            std::fs::write(&der, key.pkcs8()).unwrap();
            assert_eq!(load_key(&der).unwrap().kid(), key.kid());
            let b64 = base64::engine::general_purpose::STANDARD.encode(key.pkcs8());
            let lines: Vec<String> =
                b64.as_bytes().chunks(64).map(|c| String::from_utf8(c.to_vec()).unwrap()).collect();
            let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
            let pem_path = dir.path().join("k.pem");
            std::fs::write(&pem_path, pem).unwrap();
            assert_eq!(load_key(&pem_path).unwrap().kid(), key.kid());
        }
        let sec1 = dir.path().join("ec.pem");
        std::fs::write(&sec1, "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n").unwrap();
        assert!(load_key(&sec1).unwrap_err().to_string().contains("openssl pkcs8"));
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a key").unwrap();
        assert!(load_key(&junk).unwrap_err().to_string().contains("PKCS#8"));
        assert!(load_key(&dir.path().join("missing")).is_err());
    }
}
