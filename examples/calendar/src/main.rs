//! Runs the example calendar against a Mandate issuer; see README.md.

use std::process::ExitCode;
use std::sync::Arc;

use mandate_example_calendar::{READ_SCOPE, SSF_PUSH_PATH, WRITE_SCOPE};
use mandate_jose::{KeyAlg, SigningKey};
use mandate_verifier::{Delivery, PollConfig, Poller, RemoteCheck, SsfReceiver, Verifier, VerifierConfig};

/// The environment variable that may carry `--ssf-push-authorization`,
/// so that the secret stays out of the process list.
const PUSH_AUTHORIZATION_VAR: &str = "MANDATE_SSF_PUSH_AUTHORIZATION";

const USAGE: &str = "usage: mandate-example-calendar [--issuer URL] [--audience URL] [--listen ADDR] [--public-url URL]
                               [--check-client-id res_… --check-key FILE.pk8] [--require-dpop]
                               [--ssf poll|push [--ssf-stream-id ID] [--ssf-push-authorization VALUE]]

  --issuer URL           Mandate's issuer (default http://127.0.0.1:7070)
  --audience URL         the calendar's resource identifier (default https://calendar.example)
  --listen ADDR          where to listen (default 127.0.0.1:8080)
  --public-url URL       the calendar's external base URL, for DPoP (default http://ADDR)
  --check-client-id ID   the calendar's resource id at Mandate, to ask /v1/check per action
  --check-key FILE       its private key, PKCS#8 (`mandate keys client-keygen --out FILE`)
  --require-dpop         refuse Bearer tokens
  --ssf poll|push        receive Mandate's Shared Signals: a revoked token is refused as soon as the
                         session-revoked event arrives. Creates a stream with the check credentials
                         (scope ssf.manage), then polls it (ssf.read) or takes pushes at PUBLIC_URL/ssf/events
  --ssf-stream-id ID     use this existing stream instead of creating one
  --ssf-push-authorization VALUE
                         the Authorization header the transmitter must send with pushes, and that a
                         created push stream is given (or set MANDATE_SSF_PUSH_AUTHORIZATION)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SsfMode {
    Poll,
    Push,
}

#[derive(Debug)]
struct Args {
    issuer: String,
    audience: String,
    listen: String,
    public_url: Option<String>,
    check_client_id: Option<String>,
    check_key: Option<String>,
    require_dpop: bool,
    ssf: Option<SsfMode>,
    ssf_stream_id: Option<String>,
    ssf_push_authorization: Option<String>,
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
        ssf: None,
        ssf_stream_id: None,
        ssf_push_authorization: std::env::var(PUSH_AUTHORIZATION_VAR).ok().filter(|v| !v.is_empty()),
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
            "--ssf" => {
                a.ssf = Some(match value()?.as_str() {
                    "poll" => SsfMode::Poll,
                    "push" => SsfMode::Push,
                    other => return Err(format!("--ssf is poll or push, not {other}")),
                })
            }
            "--ssf-stream-id" => a.ssf_stream_id = Some(value()?),
            "--ssf-push-authorization" => a.ssf_push_authorization = Some(value()?),
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
    let mut config = VerifierConfig::new(&args.issuer, &args.audience, public_url.clone());
    config.require_dpop = args.require_dpop;
    config.scopes_supported = vec![READ_SCOPE.into(), WRITE_SCOPE.into()];
    config.resource_name = Some("Example calendar".into());
    config.remote_check = remote_check(&args)?;
    let checks = config.remote_check.is_some();
    let verifier = Verifier::new(config).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| format!("{}: {e}", args.listen))?;
    let (app, poller) = match args.ssf {
        None => (mandate_example_calendar::router(verifier.clone()), None),
        Some(mode) => {
            if !checks {
                return Err(
                    "--ssf needs --check-client-id and --check-key: the calendar manages its stream with them".into()
                );
            }
            let receiver = subscribe(&args, &verifier, mode, &public_url).await?;
            let app = match mode {
                SsfMode::Push => mandate_example_calendar::router_with_ssf(verifier.clone(), &receiver.0),
                SsfMode::Poll => mandate_example_calendar::router(verifier.clone()),
            };
            (app, receiver.1)
        }
    };
    tracing::info!(
        listen = %args.listen, issuer = %args.issuer, audience = %args.audience, checks, ssf = ?args.ssf,
        metadata = %verifier.metadata_url(), "calendar listening"
    );
    let served = axum::serve(listener, app).await.map_err(|e| e.to_string());
    if let Some(p) = poller {
        p.stop().await;
    }
    served
}

/// Subscribes to the issuer's Shared Signals: the stream named by
/// `--ssf-stream-id`, or a new one for this calendar; for a poll stream,
/// the poller that reads it.
async fn subscribe(
    args: &Args,
    verifier: &Verifier,
    mode: SsfMode,
    public_url: &str,
) -> Result<(SsfReceiver, Option<Poller>), String> {
    let mut receiver = SsfReceiver::new(verifier).on_event(|e| {
        tracing::info!(jti = %e.jti, event_type = %e.event_type, subject = ?e.subject, "security event");
    });
    if mode == SsfMode::Push
        && let Some(a) = &args.ssf_push_authorization
    {
        receiver = receiver.with_push_authorization(a.clone());
    }
    let stream = match &args.ssf_stream_id {
        Some(id) => receiver.get_stream(id).await,
        None => {
            let delivery = match mode {
                SsfMode::Poll => Delivery::Poll,
                SsfMode::Push => Delivery::Push {
                    endpoint_url: format!("{}{SSF_PUSH_PATH}", public_url.trim_end_matches('/')),
                    authorization_header: args.ssf_push_authorization.clone(),
                },
            };
            receiver.create_stream(&delivery, "Example calendar").await
        }
    }
    .map_err(|e| format!("subscribing to Shared Signals: {e}"))?;
    tracing::info!(stream_id = %stream.stream_id, method = %stream.method, "subscribed to Shared Signals");
    let poller = match mode {
        SsfMode::Push => None,
        SsfMode::Poll => {
            let url = stream.endpoint_url.ok_or("the stream has no delivery.endpoint_url to poll")?;
            Some(receiver.spawn_poller(PollConfig::new(url)))
        }
    };
    Ok((receiver, poller))
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
