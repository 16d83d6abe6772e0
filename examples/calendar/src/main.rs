//! Runs the example calendar against a Mandate issuer; see README.md.

use std::process::ExitCode;
use std::sync::Arc;

use mandate_example_calendar::{READ_SCOPE, WRITE_SCOPE};
use mandate_jose::{KeyAlg, SigningKey};
use mandate_verifier::{RemoteCheck, Verifier, VerifierConfig};

const USAGE: &str = "usage: mandate-example-calendar [--issuer URL] [--audience URL] [--listen ADDR] [--public-url URL]
                               [--check-client-id res_… --check-key FILE.pk8] [--require-dpop]

  --issuer URL           Mandate's issuer (default http://127.0.0.1:7070)
  --audience URL         the calendar's resource identifier (default https://calendar.example)
  --listen ADDR          where to listen (default 127.0.0.1:8080)
  --public-url URL       the calendar's external base URL, for DPoP (default http://ADDR)
  --check-client-id ID   the calendar's resource id at Mandate, to ask /v1/check per action
  --check-key FILE       its private key, PKCS#8 (`mandate keys client-keygen --out FILE`)
  --require-dpop         refuse Bearer tokens";

#[derive(Debug)]
struct Args {
    issuer: String,
    audience: String,
    listen: String,
    public_url: Option<String>,
    check_client_id: Option<String>,
    check_key: Option<String>,
    require_dpop: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        issuer: "http://127.0.0.1:7070".into(),
        audience: "https://calendar.example".into(),
        listen: "127.0.0.1:8080".into(),
        public_url: None,
        check_client_id: None,
        check_key: None,
        require_dpop: false,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--issuer" => a.issuer = value()?,
            "--audience" => a.audience = value()?,
            "--listen" => a.listen = value()?,
            "--public-url" => a.public_url = Some(value()?),
            "--check-client-id" => a.check_client_id = Some(value()?),
            "--check-key" => a.check_key = Some(value()?),
            "--require-dpop" => a.require_dpop = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn remote_check(args: &Args) -> Result<Option<RemoteCheck>, String> {
    let (id, path) = match (&args.check_client_id, &args.check_key) {
        (None, None) => return Ok(None),
        (Some(id), Some(path)) => (id, path),
        _ => return Err("--check-client-id and --check-key go together".into()),
    };
    let der = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
    let key = SigningKey::from_pkcs8(KeyAlg::EdDSA, &der)
        .or_else(|_| SigningKey::from_pkcs8(KeyAlg::ES256, &der))
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(Some(RemoteCheck { client_id: id.clone(), key: Arc::new(key) }))
}

async fn run(args: Args) -> Result<(), String> {
    let public_url = args.public_url.clone().unwrap_or_else(|| format!("http://{}", args.listen));
    let mut config = VerifierConfig::new(&args.issuer, &args.audience, public_url);
    config.require_dpop = args.require_dpop;
    config.scopes_supported = vec![READ_SCOPE.into(), WRITE_SCOPE.into()];
    config.resource_name = Some("Example calendar".into());
    config.remote_check = remote_check(&args)?;
    let checks = config.remote_check.is_some();
    let verifier = Verifier::new(config).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| format!("{}: {e}", args.listen))?;
    tracing::info!(
        listen = %args.listen, issuer = %args.issuer, audience = %args.audience, checks,
        metadata = %verifier.metadata_url(), "calendar listening"
    );
    mandate_example_calendar::serve(listener, verifier).await.map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) };
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
