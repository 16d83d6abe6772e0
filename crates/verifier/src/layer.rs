//! Integration with tower and axum: a layer that authenticates each request
//! and an extractor that hands handlers the result.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{FromRequestParts, Request};
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::request::Parts;
use axum::response::Response;
use mandate_model::claims::AccessTokenClaims;
use tower::{Layer, Service};

use crate::error::ChallengePending;
use crate::{Scheme, Verifier, VerifyError};

/// A request whose token (and DPoP proof) verified.
#[derive(Clone)]
pub struct Authenticated {
    pub claims: AccessTokenClaims,
    /// The access token as presented, for [`Verifier::check`].
    pub token: String,
    /// The proof key's thumbprint when the token is DPoP-bound.
    pub dpop_jkt: Option<String>,
}

impl std::fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticated")
            .field("claims", &self.claims)
            .field("dpop_jkt", &self.dpop_jkt)
            .finish_non_exhaustive()
    }
}

impl Authenticated {
    /// The token's scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.claims.scope.split(' ').filter(|s| !s.is_empty())
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// The RFC 9396 details the token carries (DESIGN §13), empty when it
    /// carries none. Which of them covers a concrete action is decided by
    /// the check API (`authorization_details` in the check).
    pub fn authorization_details(&self) -> &[mandate_model::details::AuthorizationDetail] {
        self.claims.authorization_details.as_ref().map_or(&[], |d| d.0.as_slice())
    }

    /// `Err(InsufficientScope)` (403, RFC 6750 §3.1) unless the token
    /// carries `scope`.
    pub fn require_scope(&self, scope: &str) -> Result<(), VerifyError> {
        if self.has_scope(scope) { Ok(()) } else { Err(VerifyError::InsufficientScope(scope.to_owned())) }
    }

    /// The agent acting now: the outermost `act.sub` (RFC 8693 §4.1), or
    /// the client when the token carries no chain.
    pub fn actor(&self) -> &str {
        self.claims.act.as_ref().map_or(&self.claims.client_id, |a| &a.sub)
    }
}

/// Reads what [`MandateAuthLayer`] put in the request. Without the layer
/// the request is refused with 401, never let through.
impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = VerifyError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Self>().cloned().ok_or(VerifyError::MissingToken)
    }
}

/// Authenticates every request with a [`Verifier`]: refused requests get
/// the error response and never reach the service; accepted ones carry an
/// [`Authenticated`] extension. Refusals the service returns (such as
/// [`Authenticated::require_scope`]'s) get their challenges completed.
#[derive(Debug, Clone)]
pub struct MandateAuthLayer {
    verifier: Verifier,
}

impl MandateAuthLayer {
    pub fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }
}

impl<S> Layer<S> for MandateAuthLayer {
    type Service = MandateAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MandateAuth { inner, verifier: self.verifier.clone() }
    }
}

/// The service [`MandateAuthLayer`] wraps around another.
#[derive(Debug, Clone)]
pub struct MandateAuth<S> {
    inner: S,
    verifier: Verifier,
}

impl<S> Service<Request> for MandateAuth<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The clone is not ready; the service that was polled ready is used.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let scheme = Scheme::of(&parts.headers);
            match verifier.authenticate(&parts).await {
                Ok(auth) => {
                    parts.extensions.insert(auth);
                    let mut resp = inner.call(Request::from_parts(parts, body)).await?;
                    if let Some(ChallengePending(err)) = resp.extensions_mut().remove::<ChallengePending>() {
                        let full = verifier.reject(&err, scheme);
                        resp.headers_mut().remove(WWW_AUTHENTICATE);
                        for v in full.headers().get_all(WWW_AUTHENTICATE) {
                            resp.headers_mut().append(WWW_AUTHENTICATE, v.clone());
                        }
                    }
                    Ok(resp)
                }
                Err(err) => {
                    tracing::debug!(error = %err, "request refused");
                    Ok(verifier.reject(&err, scheme))
                }
            }
        })
    }
}
