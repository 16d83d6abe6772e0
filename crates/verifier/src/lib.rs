//! The resource-server SDK for Mandate: everything an API needs to accept
//! Mandate's access tokens.
//!
//! - **Tokens** (RFC 9068, DESIGN §2) are verified against the issuer's
//!   published keys only: fetched from its JWKS, cached for the `max-age` it
//!   sends (5 minutes otherwise), and fetched again when a token names a key
//!   not yet seen, at most once every 10 seconds. `typ`, `iss`, `aud` (this
//!   resource), `exp` (strictly), `nbf`/`iat` with leeway, and each key's algorithm are
//!   checked by `mandate-jose`.
//! - **DPoP** (RFC 9449 §7): a token bound by `cnf.jkt` is accepted only with
//!   the `DPoP` scheme and a fresh proof, signed by the bound key, for this
//!   method and URL and carrying the token's hash (`ath`); each proof once.
//!   A bound token sent as `Bearer`, or an unbound one as `DPoP`, is refused.
//! - **Revocation**: a token's Token Status List is read (only from
//!   `{issuer}/statuslists/…`), verified and cached.
//! - **Decisions**: [`Verifier::check`] asks Mandate's check API whether the
//!   agent may do one action on one resource now.
//! - **Calling further**: [`Verifier::exchange`] trades the caller's token
//!   for one to another audience (RFC 8693), so that the caller's token is
//!   never passed on.
//! - **Several resources**: [`Verifier::for_audience`] makes a verifier for
//!   another resource of the same issuer sharing keys, caches and
//!   credentials (a gateway in front of many).
//! - **Shared Signals** ([`ssf`]): an [`SsfReceiver`] takes the issuer's
//!   Security Event Tokens, pushed (RFC 8935) or polled (RFC 8936), and a
//!   `session-revoked` event makes the verifier refuse that token at once,
//!   before its status list's `ttl` runs out.
//! - **Discovery**: RFC 9728 metadata at `/.well-known/oauth-protected-resource`,
//!   named by every challenge.
//!
//! Everything fails closed. When the keys, a status list or the check API
//! cannot be read, the request is refused with `503` and `Retry-After`
//! rather than `401`, which would make a client throw away a good token
//! while the issuer is briefly unreachable. Once fetched, keys keep serving
//! for up to an hour past their `max-age` while the issuer is unreachable.
//!
//! Fetches use `reqwest` without TLS unless this crate's `rustls` feature is
//! on: **an `https://` issuer needs `features = ["rustls"]`**.
//!
//! # Verifying a token
//!
//! ```
//! use std::sync::Arc;
//!
//! use mandate_jose::{JwkSet, KeyAlg, SigningKey, access};
//! use mandate_model::claims::AccessTokenClaims;
//! use mandate_verifier::{Verifier, VerifierConfig, VerifyError};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // What Mandate would do: sign a token for the calendar with its key.
//!     let issuer_key = SigningKey::generate(KeyAlg::EdDSA)?;
//!     let now = 1_800_000_000;
//!     let claims = AccessTokenClaims {
//!         iss: "https://mandate.example".into(),
//!         sub: "usr_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
//!         aud: "https://calendar.example".into(),
//!         exp: now + 300,
//!         iat: now,
//!         nbf: now,
//!         jti: "tok_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
//!         client_id: "agt_01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
//!         scope: "calendar:read".into(),
//!         act: None,
//!         may_act: None,
//!         authorization_details: None,
//!         grant_id: None,
//!         purpose: None,
//!         cnf: None,
//!         status: None,
//!     };
//!     let token = access::mint(&issuer_key, &claims)?;
//!
//!     // The calendar trusts Mandate's public key, and a fixed clock here.
//!     let mut config =
//!         VerifierConfig::new("https://mandate.example", "https://calendar.example", "https://calendar.example");
//!     config.clock = Arc::new(move || now + 10);
//!     let verifier = Verifier::with_static_keys(config, JwkSet { keys: vec![issuer_key.public().clone()] })?;
//!
//!     let verified = verifier.verify(&token).await?;
//!     assert_eq!(verified.client_id, "agt_01JABCDEFGHJKMNPQRSTVWXYZ0");
//!
//!     // Another audience's token is refused.
//!     let other = access::mint(&issuer_key, &AccessTokenClaims { aud: "https://mail.example".into(), ..claims })?;
//!     assert!(matches!(verifier.verify(&other).await, Err(VerifyError::Token(_))));
//!     Ok(())
//! }
//! ```
//!
//! # Protecting an axum application
//!
//! ```no_run
//! use axum::routing::get;
//! use axum::{Json, Router};
//! use mandate_verifier::{Authenticated, Verifier, VerifierConfig, VerifyError, metadata_router};
//!
//! async fn events(auth: Authenticated) -> Result<Json<Vec<String>>, VerifyError> {
//!     auth.require_scope("calendar:read")?;
//!     Ok(Json(vec![format!("{} for {}", auth.actor(), auth.claims.sub)]))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = VerifierConfig::new("http://127.0.0.1:7070", "https://calendar.example", "http://127.0.0.1:8080");
//!     let verifier = Verifier::new(config)?;
//!     let app = Router::new()
//!         .route("/events", get(events))
//!         // Every route above needs a token; the metadata below does not.
//!         .layer(verifier.layer())
//!         .merge(metadata_router(verifier));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```

mod check;
mod config;
mod error;
mod fetch;
mod keys;
mod layer;
mod metadata;
mod replay;
pub mod ssf;
mod status;
mod verifier;

pub use check::{CheckAnswer, CheckResource, Decision, ExchangeError, ExchangedToken};
pub use config::{Clock, RemoteCheck, VerifierConfig, system_time};
pub use error::{DPOP_ALGS, Scheme, VerifyError};
pub use keys::MIN_REFETCH_INTERVAL;
pub use layer::{Authenticated, MandateAuth, MandateAuthLayer};
pub use metadata::{METADATA_PATH, ProtectedResourceMetadata, metadata_router};
pub use ssf::{Delivery, PollConfig, Poller, Received, SecurityEvent, SetError, SsfReceiver};
pub use verifier::{DPOP_HEADER, Verifier};

#[cfg(test)]
mod tests;
