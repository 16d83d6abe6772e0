//! `mandate-loadgen`: an HTTP/1.1 load generator for the OAuth 2.0
//! `client_credentials` grant authenticated with `private_key_jwt`
//! (RFC 7523 client assertions signed with Ed25519), or with a workload
//! identity JWT from a trusted issuer (RS256 or ES256, `--workload-*`; the
//! `issuer` subcommand serves that issuer's discovery document and keys).
//!
//! Every request carries a fresh client assertion with a unique `jti`
//! (workload JWTs may instead be reused, as Kubernetes and CI clients reuse
//! theirs); all of them are signed *before* the timer starts so that the
//! measurement is of the authorization server, not of the load generator's
//! signing speed.
//!
//! Traffic is restricted to loopback addresses.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
    RsaPublicKeyComponents,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

const ASSERTION_TYPE_ENC: &str = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";
/// When only `--duration` bounds the run, at most this many assertions are
/// pre-generated (overridable with `--max-requests`).
const DEFAULT_DURATION_CAP: usize = 300_000;

#[derive(Parser, Debug)]
#[command(
    name = "mandate-loadgen",
    about = "Load generator for client_credentials + private_key_jwt token issuance (loopback only)",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Generate an Ed25519 key (PKCS#8 DER) and print its public JWK as JSON.
    Keygen {
        /// Where to write the private key.
        #[arg(long, default_value = "key.pk8")]
        out: PathBuf,
        /// Also write the public JWK to this file.
        #[arg(long)]
        jwk_out: Option<PathBuf>,
    },
    /// Print the public JWK of an existing PKCS#8 Ed25519 key.
    Jwk {
        #[arg(long)]
        key: PathBuf,
    },
    /// Serve a minimal MCP upstream for the gateway benchmark: every POST of
    /// a JSON-RPC request is answered at once with a result echoing its id
    /// (`tools/call`: one text item; anything else: an empty object).
    McpEcho {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// Serve a workload identity issuer for the workload benchmark: OIDC
    /// discovery at `/.well-known/openid-configuration`, its public keys at
    /// `/jwks` (RS256 2048-bit and ES256, `Cache-Control: max-age`), and
    /// `/stats` (how often each was fetched). The private keys are
    /// `rs256.pk8` and `es256.pk8` in `--keys-dir` (made if missing), for
    /// `--workload-key`. Prints one JSON line first: `{issuer, jwks_uri, kids}`.
    Issuer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        #[arg(long)]
        keys_dir: PathBuf,
        /// `max-age` of the key set, in seconds.
        #[arg(long, default_value_t = 300)]
        max_age: u64,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Token endpoint URL (http://, loopback host only); with `--json-body`,
    /// the URL the JSON is posted to. Repeat it to spread the connections
    /// over several nodes, round robin (a load balancer's share): the first
    /// is the default assertion audience and DPoP `htu`.
    #[arg(long, required = true)]
    token_endpoint: Vec<String>,
    /// OAuth client_id (also the assertion's iss and sub; with
    /// `--workload-key`, sent as the `client_id` parameter, or not at all
    /// when absent).
    #[arg(long)]
    client_id: Option<String>,
    /// Private Ed25519 key, PKCS#8 DER (v1 or v2).
    #[arg(long)]
    key: Option<PathBuf>,
    /// `grant_type` of the token requests.
    #[arg(long, default_value = "client_credentials")]
    grant_type: String,
    /// Another form parameter, `name=value` (repeatable), e.g. the
    /// `subject_token` of a token exchange.
    #[arg(long = "form")]
    form: Vec<String>,
    /// Post this file's JSON (the same body every time) instead of signed
    /// token requests: the check API. Needs `--bearer`.
    #[arg(long)]
    json_body: Option<PathBuf>,
    /// `Authorization: Bearer` token for `--json-body` requests.
    #[arg(long)]
    bearer: Option<String>,
    /// What a successful 200 body contains.
    #[arg(long, default_value = "\"access_token\"")]
    expect: String,
    /// JWS `kid`; defaults to the key's RFC 7638 thumbprint.
    #[arg(long)]
    kid: Option<String>,
    /// Assertion audience (the issuer URL); defaults to the token endpoint.
    #[arg(long)]
    aud: Option<String>,
    /// `resource` parameter (RFC 8707).
    #[arg(long)]
    resource: Option<String>,
    /// `scope` parameter.
    #[arg(long)]
    scope: Option<String>,
    /// Parallel workers, one keep-alive connection each.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Total measured requests (not counting warmup).
    #[arg(long)]
    requests: Option<usize>,
    /// Measured-phase time limit in seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Upper bound on pre-generated assertions for a `--duration`-only run.
    #[arg(long)]
    max_requests: Option<usize>,
    /// Requests sent before the timer starts (not counted).
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Send a DPoP proof (RFC 9449) with every request, signed by a fresh
    /// Ed25519 key; its `htu` is the token endpoint unless `--dpop-htu`.
    /// Proofs are signed before the run and must be used within a minute.
    #[arg(long)]
    dpop: bool,
    #[arg(long)]
    dpop_htu: Option<String>,
    /// Assertion lifetime (exp - iat) in seconds.
    #[arg(long, default_value_t = 600)]
    exp_secs: u64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Print the first successful response body to stderr (sanity check).
    #[arg(long)]
    show_response: bool,
    /// Print a single JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Spread the requests over the clients listed in this file (one
    /// client_id per line, all holding `--key`): request i is client
    /// i mod N's. Replaces `--client-id`.
    #[arg(long, conflicts_with = "client_id")]
    client_ids: Option<PathBuf>,
    /// Sign the requests as for a run (warm-up + measured), write them to
    /// this file and exit without sending any: one request per line, the
    /// form body, then a tab and the DPoP proof with `--dpop`. For drivers
    /// such as `wrk` (bench/wrk-token.lua), which cannot sign.
    #[arg(long)]
    write_bodies: Option<PathBuf>,
    #[command(flatten)]
    workload: WorkloadArgs,
}

/// Workload identity instead of `private_key_jwt`: the client assertion is a
/// JWT from a trusted issuer (`iss`, `sub`, `aud` = `--aud`, `iat`, `exp`,
/// a unique `jti`), signed with the issuer's key.
#[derive(Args, Debug)]
struct WorkloadArgs {
    /// The issuer's private key, PKCS#8 DER (RSA for RS256, P-256 for
    /// ES256; `mandate-loadgen issuer` writes both). Replaces `--key`.
    #[arg(long, requires_all = ["workload_iss", "workload_sub"])]
    workload_key: Option<PathBuf>,
    #[arg(long, value_parser = ["RS256", "ES256"], default_value = "RS256")]
    workload_alg: String,
    /// The JWT's `iss`: the trusted issuer's URL.
    #[arg(long)]
    workload_iss: Option<String>,
    /// The JWT's `sub`, as the agent's `federated_credentials` name it.
    #[arg(long)]
    workload_sub: Option<String>,
    /// Sign only this many JWTs and send them in turn (request i carries
    /// JWT i mod N), as clients reuse a workload token within its lifetime;
    /// 0 signs a fresh one per request.
    #[arg(long, default_value_t = 0)]
    workload_reuse: usize,
    /// Send the JWT as the `jwt-bearer` grant's `assertion` (RFC 7523 §2.1)
    /// with no client authentication, instead of as `client_assertion`.
    #[arg(long)]
    workload_grant: bool,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("mandate-loadgen: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Keygen { out, jwk_out }) => keygen(&out, jwk_out.as_deref()),
        Some(Cmd::Jwk { key }) => {
            let kp = load_key(&key)?;
            println!("{}", public_jwk(&kp)?);
            Ok(())
        }
        Some(Cmd::McpEcho { listen }) => {
            let rt =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().context("building tokio runtime")?;
            rt.block_on(mcp_echo(listen))
        }
        Some(Cmd::Issuer { listen, keys_dir, max_age }) => {
            let rt =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().context("building tokio runtime")?;
            rt.block_on(issuer(listen, &keys_dir, max_age))
        }
        None => {
            let rt =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().context("building tokio runtime")?;
            rt.block_on(run(cli.run))
        }
    }
}

// ---------------------------------------------------------------- mcp-echo

/// The answer to one JSON-RPC request body.
fn echo_answer(body: &[u8]) -> String {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let result = if req.get("method").and_then(Value::as_str) == Some("tools/call") {
        json!({"content": [{"type": "text", "text": "ok"}]})
    } else {
        json!({})
    };
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

async fn mcp_echo(listen: std::net::SocketAddr) -> Result<()> {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind(listen).await.context("binding")?;
    println!("{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let resp = hyper::Response::builder()
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(echo_answer(&body))));
                resp.map_err(|e| anyhow!("building a response: {e}"))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

// ---------------------------------------------------------------- issuer

/// Loads `dir/NAME`, or makes the key with `make` and writes it there.
fn load_or_make(dir: &std::path::Path, name: &str, make: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    let path = dir.join(name);
    if path.exists() {
        return std::fs::read(&path).with_context(|| format!("reading {}", path.display()));
    }
    let der = make()?;
    std::fs::write(&path, &der).with_context(|| format!("writing {}", path.display()))?;
    Ok(der)
}

async fn issuer(listen: SocketAddr, keys_dir: &std::path::Path, max_age: u64) -> Result<()> {
    std::fs::create_dir_all(keys_dir).with_context(|| format!("creating {}", keys_dir.display()))?;
    let rsa = load_or_make(keys_dir, "rs256.pk8", || {
        let kp = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow!("RSA key generation failed"))?;
        Ok(kp.as_der().map_err(|_| anyhow!("RSA key export failed"))?.as_ref().to_vec())
    })?;
    let ec = load_or_make(keys_dir, "es256.pk8", || {
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| anyhow!("P-256 key generation failed"))?;
        Ok(doc.as_ref().to_vec())
    })?;
    let signers = [Signer::from_pkcs8("RS256", &rsa)?, Signer::from_pkcs8("ES256", &ec)?];
    let listener = tokio::net::TcpListener::bind(listen).await.context("binding")?;
    let url = format!("http://{}", listener.local_addr()?);
    let keys: Vec<Value> = signers.iter().map(Signer::public_jwk).collect();
    let kids: serde_json::Map<String, Value> = signers.iter().map(|s| (s.alg().to_owned(), json!(s.kid()))).collect();
    let discovery = json!({
        "issuer": url,
        "jwks_uri": format!("{url}/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    })
    .to_string();
    let jwks = json!({ "keys": keys }).to_string();
    println!("{}", json!({"issuer": url, "jwks_uri": format!("{url}/jwks"), "kids": kids}));
    let cache = format!("max-age={max_age}");
    let shared = Arc::new((discovery, jwks, cache, AtomicUsize::new(0), AtomicUsize::new(0)));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move {
                    let (discovery, jwks, cache, n_discovery, n_jwks) = &*shared;
                    let (status, body, cached) = match (req.method(), req.uri().path()) {
                        (&Method::GET, "/.well-known/openid-configuration") => {
                            n_discovery.fetch_add(1, Ordering::Relaxed);
                            (200, discovery.clone(), false)
                        }
                        (&Method::GET, "/jwks") => {
                            n_jwks.fetch_add(1, Ordering::Relaxed);
                            (200, jwks.clone(), true)
                        }
                        (&Method::GET, "/stats") => {
                            let stats = json!({
                                "discovery": n_discovery.load(Ordering::Relaxed),
                                "jwks": n_jwks.load(Ordering::Relaxed),
                            });
                            (200, stats.to_string(), false)
                        }
                        _ => (404, r#"{"error":"not_found"}"#.to_owned(), false),
                    };
                    let mut resp = hyper::Response::builder().status(status).header("content-type", "application/json");
                    if cached {
                        resp = resp.header("cache-control", cache.as_str());
                    }
                    resp.body(Full::new(Bytes::from(body))).map_err(|e| anyhow!("building a response: {e}"))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

// ---------------------------------------------------------------- keys / JWS

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn load_key(path: &std::path::Path) -> Result<Ed25519KeyPair> {
    let der = std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
    Ed25519KeyPair::from_pkcs8(&der).map_err(|e| anyhow!("{} is not a PKCS#8 Ed25519 key: {e}", path.display()))
}

/// RFC 7638 thumbprint of an OKP/Ed25519 key.
fn thumbprint(kp: &Ed25519KeyPair) -> String {
    let x = b64(kp.public_key().as_ref());
    // Members in lexicographic order, no whitespace.
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    b64(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
}

fn public_jwk(kp: &Ed25519KeyPair) -> Result<String> {
    let jwk = json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64(kp.public_key().as_ref()),
        "kid": thumbprint(kp),
    });
    Ok(serde_json::to_string(&jwk)?)
}

/// What signs the client assertions: the client's Ed25519 key
/// (`private_key_jwt`), or a workload issuer's RSA or P-256 key.
enum Signer {
    Ed25519(Ed25519KeyPair),
    Rs256(RsaKeyPair),
    Es256(EcdsaKeyPair),
}

impl Signer {
    /// A workload issuer's key: `alg` is RS256 or ES256.
    fn from_pkcs8(alg: &str, der: &[u8]) -> Result<Self> {
        match alg {
            "RS256" => RsaKeyPair::from_pkcs8(der).map(Signer::Rs256).map_err(|e| anyhow!("not a PKCS#8 RSA key: {e}")),
            "ES256" => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                .map(Signer::Es256)
                .map_err(|e| anyhow!("not a PKCS#8 P-256 key: {e}")),
            other => bail!("unsupported workload algorithm {other}"),
        }
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Ed25519(_) => "EdDSA",
            Signer::Rs256(_) => "RS256",
            Signer::Es256(_) => "ES256",
        }
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let rng = SystemRandom::new();
        match self {
            Signer::Ed25519(kp) => Ok(kp.sign(msg).as_ref().to_vec()),
            Signer::Rs256(kp) => {
                let mut sig = vec![0; kp.public_modulus_len()];
                kp.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut sig).map_err(|_| anyhow!("RS256 signing failed"))?;
                Ok(sig)
            }
            Signer::Es256(kp) => Ok(kp.sign(&rng, msg).map_err(|_| anyhow!("ES256 signing failed"))?.as_ref().to_vec()),
        }
    }

    /// The public JWK's members that RFC 7638 hashes, in its order.
    fn thumbprint_members(&self) -> Vec<(&'static str, String)> {
        match self {
            Signer::Ed25519(kp) => {
                vec![("crv", "Ed25519".into()), ("kty", "OKP".into()), ("x", b64(kp.public_key().as_ref()))]
            }
            Signer::Rs256(kp) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(kp.public_key());
                vec![("e", b64(&c.e)), ("kty", "RSA".into()), ("n", b64(&c.n))]
            }
            Signer::Es256(kp) => {
                // An uncompressed point: 0x04 || x || y.
                let point = kp.public_key().as_ref();
                let (x, y) = point.get(1..).unwrap_or_default().split_at(point.len().saturating_sub(1) / 2);
                vec![("crv", "P-256".into()), ("kty", "EC".into()), ("x", b64(x)), ("y", b64(y))]
            }
        }
    }

    /// RFC 7638 thumbprint, the `kid`.
    fn kid(&self) -> String {
        let canonical: serde_json::Map<String, Value> =
            self.thumbprint_members().into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect();
        // serde_json's map is ordered by key: the canonical form.
        let text = Value::Object(canonical).to_string();
        b64(digest::digest(&digest::SHA256, text.as_bytes()).as_ref())
    }

    fn public_jwk(&self) -> Value {
        let mut jwk: serde_json::Map<String, Value> =
            self.thumbprint_members().into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect();
        jwk.insert("kid".into(), json!(self.kid()));
        jwk.insert("alg".into(), json!(self.alg()));
        jwk.insert("use".into(), json!("sig"));
        Value::Object(jwk)
    }
}

fn keygen(out: &std::path::Path, jwk_out: Option<&std::path::Path>) -> Result<()> {
    let rng = SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8v1(&rng).map_err(|_| anyhow!("key generation failed"))?;
    std::fs::write(out, doc.as_ref()).with_context(|| format!("writing {}", out.display()))?;
    let kp = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| anyhow!("reparsing key: {e}"))?;
    let jwk = public_jwk(&kp)?;
    if let Some(p) = jwk_out {
        std::fs::write(p, format!("{jwk}\n")).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{jwk}");
    Ok(())
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A request body and its DPoP proof, if any.
type Signed = (Bytes, Option<Bytes>);

/// How to sign the DPoP proof of each request.
struct DpopSpec {
    kp: Ed25519KeyPair,
    header_b64: String,
    htu: String,
}

struct AssertionSpec<'a> {
    dpop: Option<DpopSpec>,
    signer: &'a Signer,
    header_b64: String,
    /// The assertion's `iss` and `sub`.
    iss: &'a str,
    sub: &'a str,
    /// With `--client-ids`: request i's `iss` and `sub` are `clients[i % N]`.
    clients: Vec<String>,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti_prefix: String,
    /// `grant_type`, already encoded.
    grant_type: String,
    /// The form parameter the assertion goes in, with what precedes it:
    /// `client_assertion_type=…&client_assertion=`, or `assertion=`.
    assertion_param: String,
    /// Everything after the assertion value, already encoded.
    tail: String,
    /// Sign only this many assertions and send them in turn (0: one each).
    reuse: usize,
}

impl AssertionSpec<'_> {
    /// The request `i`: its body, and its DPoP proof when proofs are on.
    fn request(&self, i: usize) -> Result<Signed> {
        let proof = match &self.dpop {
            None => None,
            Some(d) => {
                let claims = json!({
                    "jti": format!("{}-p{i}", self.jti_prefix),
                    "htm": "POST",
                    "htu": d.htu,
                    "iat": self.iat,
                });
                let signing_input = format!("{}.{}", d.header_b64, b64(&serde_json::to_vec(&claims)?));
                let sig = d.kp.sign(signing_input.as_bytes());
                Some(Bytes::from(format!("{signing_input}.{}", b64(sig.as_ref()))))
            }
        };
        Ok((self.body(i)?, proof))
    }

    fn body(&self, i: usize) -> Result<Bytes> {
        let (iss, sub) = match self.clients.get(i % self.clients.len().max(1)) {
            Some(c) => (c.as_str(), c.as_str()),
            None => (self.iss, self.sub),
        };
        let claims = json!({
            "iss": iss,
            "sub": sub,
            "aud": self.aud,
            "iat": self.iat,
            "exp": self.exp,
            "jti": format!("{}-{i}", self.jti_prefix),
        });
        let signing_input = format!("{}.{}", self.header_b64, b64(&serde_json::to_vec(&claims)?));
        let sig = self.signer.sign(signing_input.as_bytes())?;
        let jws = format!("{signing_input}.{}", b64(&sig));
        let body = format!("grant_type={}&{}{jws}{}", self.grant_type, self.assertion_param, self.tail);
        Ok(Bytes::from(body))
    }
}

/// Sign `count` requests using all available cores; with `spec.reuse`,
/// sign that many and repeat them.
fn pregenerate(spec: &AssertionSpec<'_>, count: usize) -> Result<Vec<Signed>> {
    if spec.reuse > 0 && spec.reuse < count {
        let distinct = sign_all(spec, spec.reuse)?;
        return Ok((0..count).filter_map(|i| distinct.get(i % spec.reuse).cloned()).collect());
    }
    sign_all(spec, count)
}

fn sign_all(spec: &AssertionSpec<'_>, count: usize) -> Result<Vec<Signed>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(1);
    let chunk = count.div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<Signed>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(count);
                s.spawn(move || (start..end).map(|i| spec.request(i)).collect::<Result<Vec<_>>>())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("signing thread panicked")))).collect()
    });
    let mut out = Vec::with_capacity(count);
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// One request per line: the body, and `\t` + the DPoP proof when there is one.
fn write_bodies(path: &std::path::Path, bodies: &[Signed]) -> Result<()> {
    use std::io::Write as _;
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for (body, proof) in bodies {
        if body.contains(&b'\n') || body.contains(&b'\t') {
            bail!("a request body holds a tab or a newline: it cannot be written one per line");
        }
        out.write_all(body)?;
        if let Some(p) = proof {
            out.write_all(b"\t")?;
            out.write_all(p)?;
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------- target

struct Target {
    addr: SocketAddr,
    host_header: String,
    path: String,
}

fn parse_target(url: &str) -> Result<Target> {
    let uri: Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// token endpoints are supported (loopback benchmarking)");
    }
    let host = uri.host().ok_or_else(|| anyhow!("URL has no host: {url}"))?;
    let port = uri.port_u16().unwrap_or(80);
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .with_context(|| format!("host must be a loopback IP or localhost, got {host}"))?
    };
    if !ip.is_loopback() {
        bail!("refusing non-loopback target {ip}: this tool only benchmarks local servers");
    }
    let host_header = match uri.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(Target { addr: SocketAddr::new(ip, port), host_header, path })
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect timeout"))??;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

// ---------------------------------------------------------------- workers

#[derive(Default)]
struct WorkerStats {
    /// Latencies of successful requests, in nanoseconds.
    latencies: Vec<u64>,
    successes: u64,
    /// Non-success outcomes keyed by status code, or "io" for transport errors,
    /// or "200-no-token" for a 200 without an access_token.
    errors: BTreeMap<String, u64>,
    samples: BTreeMap<String, String>,
    warmup_successes: u64,
    warmup_errors: u64,
    first_success: Option<Bytes>,
    /// Index of the endpoint this worker talks to.
    target: usize,
}

enum Outcome {
    Success(Option<Bytes>),
    Error(String, String),
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn one_request(
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    sh: &Shared,
    target: usize,
    (body, proof): Signed,
) -> Outcome {
    let timeout = sh.timeout;
    let fut = async {
        let target = sh.targets.get(target).ok_or_else(|| anyhow!("no target {target}"))?;
        let need_new = match sender.as_mut() {
            None => true,
            Some(s) => s.is_closed() || s.ready().await.is_err(),
        };
        if need_new {
            *sender = None;
            *sender = Some(connect(target.addr).await?);
        }
        let s = sender.as_mut().ok_or_else(|| anyhow!("no connection"))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(target.path.as_str())
            .header(hyper::header::HOST, target.host_header.as_str())
            .header(hyper::header::CONTENT_TYPE, sh.content_type)
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(auth) = &sh.authorization {
            req = req.header(hyper::header::AUTHORIZATION, auth.as_str());
        }
        if let Some(p) = proof {
            req = req.header("dpop", hyper::header::HeaderValue::from_maybe_shared(p)?);
        }
        let req = req.body(Full::new(body))?;
        let resp = s.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, bytes))
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => {
            *sender = None;
            Outcome::Error("timeout".into(), String::new())
        }
        Ok(Err(e)) => {
            *sender = None;
            Outcome::Error("io".into(), format!("{e:#}"))
        }
        Ok(Ok((200, bytes))) if contains(&bytes, &sh.expect) => Outcome::Success(Some(bytes)),
        Ok(Ok((status, bytes))) => {
            let key = if status == 200 { "200-no-token".to_string() } else { status.to_string() };
            let sample = String::from_utf8_lossy(bytes.get(..bytes.len().min(300)).unwrap_or_default()).into_owned();
            Outcome::Error(key, sample)
        }
    }
}

struct Shared {
    bodies: Vec<Signed>,
    next: AtomicUsize,
    warmup: usize,
    /// Index one past the last measured request.
    limit: usize,
    /// Worker `k` talks to `targets[k % targets.len()]`.
    targets: Vec<Target>,
    timeout: Duration,
    duration: Option<Duration>,
    barrier: Barrier,
    content_type: &'static str,
    authorization: Option<String>,
    expect: Vec<u8>,
}

async fn worker(sh: Arc<Shared>, k: usize) -> WorkerStats {
    let mut st = WorkerStats { target: k % sh.targets.len().max(1), ..WorkerStats::default() };
    let mut sender = None;
    // Warm-up phase: indices [0, warmup).
    loop {
        let i = sh.next.fetch_add(1, Ordering::Relaxed);
        if i >= sh.warmup {
            break;
        }
        let Some(body) = sh.bodies.get(i).cloned() else {
            break;
        };
        match one_request(&mut sender, &sh, st.target, body).await {
            Outcome::Success(b) => {
                st.warmup_successes += 1;
                if st.first_success.is_none() {
                    st.first_success = b;
                }
            }
            Outcome::Error(..) => st.warmup_errors += 1,
        }
    }
    // Everybody (plus main) meets here; the counter then restarts at `warmup`.
    sh.barrier.wait().await;
    sh.barrier.wait().await;
    let start = Instant::now();
    let deadline = sh.duration.map(|d| start + d);
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let i = sh.next.fetch_add(1, Ordering::Relaxed);
        if i >= sh.limit {
            break;
        }
        let Some(body) = sh.bodies.get(i).cloned() else {
            break;
        };
        let t0 = Instant::now();
        let outcome = one_request(&mut sender, &sh, st.target, body).await;
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match outcome {
            Outcome::Success(b) => {
                st.successes += 1;
                st.latencies.push(ns);
                if st.first_success.is_none() {
                    st.first_success = b;
                }
            }
            Outcome::Error(key, sample) => {
                st.samples.entry(key.clone()).or_insert(sample);
                *st.errors.entry(key).or_default() += 1;
            }
        }
    }
    st
}

fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest-rank method.
    // (The epsilon keeps e.g. 99.9% of 1000 from rounding up to rank 1000.)
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted.get(idx).copied().unwrap_or_default() as f64 / 1e6
}

async fn run(a: RunArgs) -> Result<()> {
    let endpoint = a.token_endpoint.first().cloned().ok_or_else(|| anyhow!("--token-endpoint is required"))?;
    if a.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if a.duration.is_some_and(|d| !(d > 0.0 && d.is_finite())) {
        bail!("--duration must be a positive number of seconds");
    }
    let measured = match (a.requests, a.duration) {
        (Some(n), _) => n,
        (None, Some(_)) => a.max_requests.unwrap_or(DEFAULT_DURATION_CAP),
        (None, None) => bail!("give --requests N and/or --duration SECS so the run is bounded"),
    };
    let targets = a.token_endpoint.iter().map(|e| parse_target(e)).collect::<Result<Vec<_>>>()?;
    let total = a.warmup + measured;
    let t_gen = Instant::now();
    let (bodies, content_type, authorization) = match &a.json_body {
        Some(path) => {
            let body = Bytes::from(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
            let bearer = a.bearer.as_deref().ok_or_else(|| anyhow!("--json-body needs --bearer"))?;
            (vec![(body, None); total], "application/json", Some(format!("Bearer {bearer}")))
        }
        None => {
            let w = &a.workload;
            let (signer, iss, sub, assertion_param, mut tail) = match &w.workload_key {
                None if a.client_ids.is_some() => {
                    let key_path = a.key.clone().ok_or_else(|| anyhow!("--key is required"))?;
                    let param = format!("client_assertion_type={ASSERTION_TYPE_ENC}&client_assertion=");
                    (Signer::Ed25519(load_key(&key_path)?), String::new(), String::new(), param, String::new())
                }
                None => {
                    let client_id = a.client_id.clone().ok_or_else(|| anyhow!("--client-id is required"))?;
                    let key_path = a.key.clone().ok_or_else(|| anyhow!("--key is required"))?;
                    let param = format!("client_assertion_type={ASSERTION_TYPE_ENC}&client_assertion=");
                    (Signer::Ed25519(load_key(&key_path)?), client_id.clone(), client_id, param, String::new())
                }
                Some(path) => {
                    let der = std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
                    let signer = Signer::from_pkcs8(&w.workload_alg, &der)?;
                    let iss = w.workload_iss.clone().ok_or_else(|| anyhow!("--workload-iss is required"))?;
                    let sub = w.workload_sub.clone().ok_or_else(|| anyhow!("--workload-sub is required"))?;
                    let param = if w.workload_grant {
                        "assertion=".to_owned()
                    } else {
                        format!("client_assertion_type={ASSERTION_TYPE_ENC}&client_assertion=")
                    };
                    let tail = match &a.client_id {
                        Some(c) => format!("&client_id={}", form_encode(c)),
                        None => String::new(),
                    };
                    (signer, iss, sub, param, tail)
                }
            };
            if a.dpop && w.workload_reuse > 0 {
                bail!("--dpop needs a fresh proof per request: it does not go with --workload-reuse");
            }
            let kid = a.kid.clone().unwrap_or_else(|| signer.kid());
            let aud = a.aud.clone().unwrap_or_else(|| endpoint.clone());
            if let Some(r) = &a.resource {
                tail.push_str("&resource=");
                tail.push_str(&form_encode(r));
            }
            if let Some(s) = &a.scope {
                tail.push_str("&scope=");
                tail.push_str(&form_encode(s));
            }
            for pair in &a.form {
                let (k, v) = pair.split_once('=').ok_or_else(|| anyhow!("--form wants name=value, got {pair}"))?;
                tail.push_str(&format!("&{}={}", form_encode(k), form_encode(v)));
            }
            let clients = match &a.client_ids {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    let ids: Vec<String> =
                        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
                    if ids.is_empty() {
                        bail!("{} lists no client_id", path.display());
                    }
                    ids
                }
                None => Vec::new(),
            };
            let header = json!({"alg": signer.alg(), "typ": "JWT", "kid": kid});
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let mut rnd = [0u8; 9];
            SystemRandom::new().fill(&mut rnd).map_err(|_| anyhow!("rng failure"))?;
            let dpop = if a.dpop {
                let rng = SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow!("key generation failed"))?;
                let kp = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| anyhow!("key parse failed"))?;
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(kp.public_key().as_ref())});
                let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk});
                let htu = a.dpop_htu.clone().unwrap_or_else(|| endpoint.clone());
                Some(DpopSpec { kp, header_b64: b64(&serde_json::to_vec(&header)?), htu })
            } else {
                None
            };
            let grant_type = if w.workload_grant && w.workload_key.is_some() {
                "urn:ietf:params:oauth:grant-type:jwt-bearer"
            } else {
                a.grant_type.as_str()
            };
            let spec = AssertionSpec {
                dpop,
                signer: &signer,
                header_b64: b64(&serde_json::to_vec(&header)?),
                iss: &iss,
                sub: &sub,
                clients,
                aud: &aud,
                iat: now,
                exp: now + a.exp_secs,
                jti_prefix: b64(&rnd),
                grant_type: form_encode(grant_type),
                assertion_param,
                tail,
                reuse: w.workload_reuse,
            };
            let bodies = pregenerate(&spec, total)?;
            if !a.json {
                let signed = if spec.reuse > 0 { spec.reuse.min(total) } else { total };
                eprintln!(
                    "pre-generated {total} requests ({signed} signed {} assertions) in {:.2}s",
                    signer.alg(),
                    t_gen.elapsed().as_secs_f64()
                );
            }
            (bodies, "application/x-www-form-urlencoded", None)
        }
    };
    let gen_secs = t_gen.elapsed().as_secs_f64();
    if let Some(path) = &a.write_bodies {
        return write_bodies(path, &bodies);
    }

    let concurrency = a.concurrency;
    let shared = Arc::new(Shared {
        bodies,
        next: AtomicUsize::new(0),
        warmup: a.warmup,
        limit: total,
        targets,
        timeout: Duration::from_secs_f64(a.timeout),
        duration: a.duration.map(Duration::from_secs_f64),
        barrier: Barrier::new(concurrency + 1),
        content_type,
        authorization,
        expect: a.expect.clone().into_bytes(),
    });
    let handles: Vec<_> = (0..concurrency).map(|k| tokio::spawn(worker(shared.clone(), k))).collect();
    // End of warm-up: all workers have stopped taking indices.
    shared.barrier.wait().await;
    shared.next.store(a.warmup, Ordering::SeqCst);
    let start = Instant::now();
    shared.barrier.wait().await;
    let mut all = WorkerStats::default();
    // Successful measured requests per endpoint, in the order given.
    let mut per_target = vec![0u64; a.token_endpoint.len()];
    for h in handles {
        let st = h.await?;
        if let Some(n) = per_target.get_mut(st.target) {
            *n += st.successes;
        }
        all.latencies.extend(st.latencies);
        all.successes += st.successes;
        all.warmup_successes += st.warmup_successes;
        all.warmup_errors += st.warmup_errors;
        for (k, v) in st.errors {
            *all.errors.entry(k).or_default() += v;
        }
        if all.first_success.is_none() {
            all.first_success = st.first_success;
        }
        for (k, v) in st.samples {
            all.samples.entry(k).or_insert(v);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let mut lat = all.latencies;
    lat.sort_unstable();
    let errors_total: u64 = all.errors.values().sum();
    let requests = all.successes + errors_total;
    let rps = if wall > 0.0 { all.successes as f64 / wall } else { 0.0 };
    let mean_ms =
        if lat.is_empty() { 0.0 } else { lat.iter().map(|&n| n as f64).sum::<f64>() / lat.len() as f64 / 1e6 };
    let (p50, p90, p99, p999) =
        (percentile_ms(&lat, 50.0), percentile_ms(&lat, 90.0), percentile_ms(&lat, 99.0), percentile_ms(&lat, 99.9));
    let max = lat.last().map_or(0.0, |&n| n as f64 / 1e6);
    let exhausted = a.requests.is_none() && requests as usize >= measured;

    if a.json {
        let out = json!({
            "target": endpoint,
            "targets": a.token_endpoint,
            "successes_per_target": per_target,
            "concurrency": concurrency,
            "warmup": a.warmup,
            "warmup_successes": all.warmup_successes,
            "warmup_errors": all.warmup_errors,
            "requests": requests,
            "successes": all.successes,
            "errors": all.errors,
            "errors_total": errors_total,
            "error_samples": all.samples,
            "wall_secs": wall,
            "throughput_rps": rps,
            "latency_ms": {
                "p50": p50, "p90": p90, "p99": p99, "p99_9": p999, "max": max, "mean": mean_ms,
            },
            "pregen_secs": gen_secs,
            "assertions_exhausted": exhausted,
        });
        println!("{}", serde_json::to_string(&out)?);
    } else {
        let errs: Value = serde_json::to_value(&all.errors)?;
        println!("target:      {endpoint}");
        println!("concurrency: {concurrency}  (warmup {} ok / {} err)", all.warmup_successes, all.warmup_errors);
        println!("requests:    {requests}");
        println!("successes:   {}", all.successes);
        println!("errors:      {errors_total} {errs}");
        println!("wall time:   {wall:.3} s");
        println!("throughput:  {rps:.1} req/s (successful)");
        println!(
            "latency ms:  p50 {p50:.3}  p90 {p90:.3}  p99 {p99:.3}  p99.9 {p999:.3}  max {max:.3}  mean {mean_ms:.3}"
        );
        for (k, v) in &all.samples {
            eprintln!("sample {k} response: {v}");
        }
        if exhausted {
            eprintln!("note: all {measured} pre-generated assertions were used before --duration elapsed");
        }
    }
    if a.show_response
        && let Some(b) = &all.first_success
    {
        eprintln!("first successful response: {}", String::from_utf8_lossy(b));
    }
    if all.successes == 0 {
        bail!("no successful requests");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};

    // RFC 8037, Appendix A.1 and A.3.
    const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const RFC8037_THUMBPRINT: &str = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";

    fn rfc_key() -> Result<Ed25519KeyPair> {
        let seed = URL_SAFE_NO_PAD.decode(RFC8037_D)?;
        Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| anyhow!("{e}"))
    }

    #[test]
    fn thumbprint_matches_rfc8037() -> Result<()> {
        let kp = rfc_key()?;
        assert_eq!(b64(kp.public_key().as_ref()), RFC8037_X);
        assert_eq!(thumbprint(&kp), RFC8037_THUMBPRINT);
        let jwk: Value = serde_json::from_str(&public_jwk(&kp)?)?;
        assert_eq!(jwk, json!({"kty":"OKP","crv":"Ed25519","x":RFC8037_X,"kid":RFC8037_THUMBPRINT}));
        Ok(())
    }

    #[test]
    fn bodies_carry_valid_unique_assertions() -> Result<()> {
        let kp = rfc_key()?;
        let signer = Signer::Ed25519(kp);
        let spec = AssertionSpec {
            dpop: None,
            signer: &signer,
            header_b64: b64(br#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#),
            iss: "agt_1",
            sub: "agt_1",
            clients: Vec::new(),
            aud: "http://127.0.0.1:1",
            iat: 1000,
            exp: 1600,
            jti_prefix: "p".into(),
            grant_type: "client_credentials".into(),
            assertion_param: format!("client_assertion_type={ASSERTION_TYPE_ENC}&client_assertion="),
            tail: format!("&resource={}&scope={}", form_encode("https://api.example.com"), form_encode("read write")),
            reuse: 0,
        };
        let bodies = pregenerate(&spec, 50)?;
        assert_eq!(bodies.len(), 50);
        assert!(bodies.iter().all(|(_, proof)| proof.is_none()));
        let mut jtis = std::collections::HashSet::new();
        for (body, _) in &bodies {
            let text = std::str::from_utf8(body)?;
            assert!(text.starts_with(
                "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion="
            ));
            assert!(text.ends_with("&resource=https%3A%2F%2Fapi.example.com&scope=read+write"));
            let jws = text
                .split('&')
                .find_map(|kv| kv.strip_prefix("client_assertion="))
                .ok_or_else(|| anyhow!("no assertion"))?;
            let parts: Vec<&str> = jws.split('.').collect();
            assert_eq!(parts.len(), 3);
            let sig = URL_SAFE_NO_PAD.decode(parts[2])?;
            let Signer::Ed25519(kp) = &signer else { unreachable!() };
            UnparsedPublicKey::new(&ED25519, kp.public_key().as_ref())
                .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
                .map_err(|_| anyhow!("bad signature"))?;
            let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
            assert_eq!(claims["iss"], "agt_1");
            assert_eq!(claims["sub"], "agt_1");
            assert_eq!(claims["aud"], "http://127.0.0.1:1");
            assert_eq!(claims["exp"], 1600);
            jtis.insert(claims["jti"].as_str().unwrap_or_default().to_string());
        }
        assert_eq!(jtis.len(), 50);
        Ok(())
    }

    #[test]
    fn only_loopback_targets() -> Result<()> {
        let t = parse_target("http://127.0.0.1:8080/oauth/token")?;
        assert_eq!(t.addr, "127.0.0.1:8080".parse()?);
        assert_eq!(t.path, "/oauth/token");
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert!(parse_target("http://localhost:9/token").is_ok());
        assert!(parse_target("http://[::1]:9/token").is_ok());
        assert!(parse_target("http://10.0.0.1:9/token").is_err());
        assert!(parse_target("http://example.com/token").is_err());
        assert!(parse_target("https://127.0.0.1/token").is_err());
        Ok(())
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=1000).map(|i| i * 1_000_000).collect();
        assert!((percentile_ms(&v, 50.0) - 500.0).abs() < 1e-9);
        assert!((percentile_ms(&v, 99.9) - 999.0).abs() < 1e-9);
        assert!((percentile_ms(&v, 100.0) - 1000.0).abs() < 1e-9);
        assert!(percentile_ms(&[], 50.0).abs() < 1e-9);
    }

    #[test]
    fn dpop_proofs_are_signed_by_their_header_key_and_unique() -> Result<()> {
        let kp = rfc_key()?;
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow!("keygen"))?;
        let pk = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| anyhow!("parse"))?;
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pk.public_key().as_ref())});
        let header_b64 = b64(&serde_json::to_vec(&json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk}))?);
        let signer = Signer::Ed25519(kp);
        let spec = AssertionSpec {
            dpop: Some(DpopSpec { kp: pk, header_b64, htu: "http://127.0.0.1:1/oauth/token".into() }),
            signer: &signer,
            header_b64: b64(br#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#),
            iss: "agt_1",
            sub: "agt_1",
            clients: Vec::new(),
            aud: "http://127.0.0.1:1",
            iat: 1000,
            exp: 1600,
            jti_prefix: "p".into(),
            grant_type: "client_credentials".into(),
            assertion_param: format!("client_assertion_type={ASSERTION_TYPE_ENC}&client_assertion="),
            tail: String::new(),
            reuse: 0,
        };
        let reqs = pregenerate(&spec, 10)?;
        let mut jtis = std::collections::HashSet::new();
        for (_, proof) in &reqs {
            let proof = std::str::from_utf8(proof.as_ref().ok_or_else(|| anyhow!("no proof"))?)?;
            let parts: Vec<&str> = proof.split('.').collect();
            let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0])?)?;
            let x = URL_SAFE_NO_PAD.decode(header["jwk"]["x"].as_str().unwrap_or_default())?;
            UnparsedPublicKey::new(&ED25519, &x)
                .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &URL_SAFE_NO_PAD.decode(parts[2])?)
                .map_err(|_| anyhow!("bad proof signature"))?;
            let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
            assert_eq!(
                (claims["htm"].as_str(), claims["htu"].as_str()),
                (Some("POST"), Some("http://127.0.0.1:1/oauth/token"))
            );
            jtis.insert(claims["jti"].as_str().unwrap_or_default().to_owned());
        }
        assert_eq!(jtis.len(), 10);
        Ok(())
    }

    #[test]
    fn workload_jwts_verify_with_the_published_jwk_and_can_be_reused() -> Result<()> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256};
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow!("keygen"))?;
        let rsa = Signer::from_pkcs8("RS256", rsa.as_der().map_err(|_| anyhow!("der"))?.as_ref())?;
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| anyhow!("keygen"))?;
        let ec = Signer::from_pkcs8("ES256", ec.as_ref())?;
        for signer in [&rsa, &ec] {
            let jwk = signer.public_jwk();
            assert_eq!(jwk["kid"], json!(signer.kid()));
            assert_eq!(jwk["alg"], json!(signer.alg()));
            let header = json!({"alg": signer.alg(), "typ": "JWT", "kid": signer.kid()});
            let spec = AssertionSpec {
                dpop: None,
                signer,
                header_b64: b64(&serde_json::to_vec(&header)?),
                iss: "http://127.0.0.1:2",
                sub: "system:serviceaccount:bench:worker",
                clients: Vec::new(),
                aud: "http://127.0.0.1:1",
                iat: 1000,
                exp: 1600,
                jti_prefix: "w".into(),
                grant_type: "client_credentials".into(),
                assertion_param: format!("client_assertion_type={ASSERTION_TYPE_ENC}&client_assertion="),
                tail: "&client_id=agt_1".into(),
                reuse: 3,
            };
            let bodies = pregenerate(&spec, 10)?;
            assert_eq!(bodies.len(), 10);
            assert_eq!(bodies[0].0, bodies[3].0, "request i reuses JWT i mod 3");
            assert_ne!(bodies[0].0, bodies[1].0);
            let text = std::str::from_utf8(&bodies[4].0)?;
            assert!(text.ends_with("&client_id=agt_1"));
            let jws = text
                .split('&')
                .find_map(|kv| kv.strip_prefix("client_assertion="))
                .ok_or_else(|| anyhow!("no assertion"))?;
            let parts: Vec<&str> = jws.split('.').collect();
            let d = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap_or_default());
            let msg = format!("{}.{}", parts[0], parts[1]);
            let sig = URL_SAFE_NO_PAD.decode(parts[2])?;
            match signer {
                Signer::Rs256(_) => RsaPublicKeyComponents { n: d("n")?, e: d("e")? }
                    .verify(&RSA_PKCS1_2048_8192_SHA256, msg.as_bytes(), &sig)
                    .map_err(|_| anyhow!("bad RS256 signature"))?,
                _ => {
                    let point = [vec![4u8], d("x")?, d("y")?].concat();
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
                        .verify(msg.as_bytes(), &sig)
                        .map_err(|_| anyhow!("bad ES256 signature"))?
                }
            }
            let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
            assert_eq!(claims["iss"], "http://127.0.0.1:2");
            assert_eq!(claims["sub"], "system:serviceaccount:bench:worker");
            assert_eq!(claims["jti"], "w-1");
        }
        Ok(())
    }
}
