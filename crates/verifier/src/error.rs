//! Why a request was refused, and the one place where that becomes an HTTP
//! response with its `WWW-Authenticate` challenges (RFC 6750 §3, RFC 9449
//! §7.1, RFC 9728 §5.1).

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_jose::JoseError;
use mandate_jose::dpop::DpopError;
use serde_json::json;

/// The DPoP algorithms this SDK verifies, as its challenges announce them.
pub const DPOP_ALGS: &str = "EdDSA ES256";

/// Why a request was refused. Messages are safe to send to the client:
/// fetch failures are logged in detail and described here only in general.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No credentials of a scheme this resource accepts (RFC 6750 §3.1: the
    /// challenge then carries no error code).
    #[error("the request carries no access token")]
    MissingToken,
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// The access token's signature, type, issuer, audience or lifetime.
    #[error("access token: {0}")]
    Token(#[from] JoseError),
    /// The token is well-formed but may not be used here or any longer.
    #[error("{0}")]
    InvalidToken(String),
    /// The DPoP proof itself.
    #[error(transparent)]
    Proof(#[from] DpopError),
    /// The DPoP proof, judged with the token and the proofs seen before.
    #[error("DPoP proof: {0}")]
    InvalidProof(&'static str),
    #[error("the token does not carry scope {0}")]
    InsufficientScope(String),
    /// Something the decision depends on (keys, status list, check API)
    /// could not be read: the request is refused, never let through.
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("verifier misconfigured: {0}")]
    Config(String),
}

impl VerifyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::MissingToken | Self::Token(_) | Self::InvalidToken(_) | Self::Proof(_) | Self::InvalidProof(_) => {
                StatusCode::UNAUTHORIZED
            }
            Self::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OAuth error code, `None` when the request had no credentials.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::MissingToken => None,
            Self::InvalidRequest(_) => Some("invalid_request"),
            Self::Token(_) | Self::InvalidToken(_) => Some("invalid_token"),
            Self::Proof(_) | Self::InvalidProof(_) => Some("invalid_dpop_proof"),
            Self::InsufficientScope(_) => Some("insufficient_scope"),
            Self::Unavailable(_) => Some("temporarily_unavailable"),
            Self::Config(_) => Some("server_error"),
        }
    }

    fn challenged(&self) -> bool {
        matches!(self.status(), StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
    }
}

/// The authentication scheme of a request's `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Dpop,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Self::Bearer => "Bearer",
            Self::Dpop => "DPoP",
        }
    }

    /// Parses a scheme name, case-insensitively (RFC 9110 §11.1).
    pub fn parse(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("bearer") {
            Some(Self::Bearer)
        } else if name.eq_ignore_ascii_case("dpop") {
            Some(Self::Dpop)
        } else {
            None
        }
    }

    /// The scheme of the first `Authorization` header, if it is one of ours.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        Self::parse(value.split(' ').next().unwrap_or_default())
    }
}

/// The challenges this resource server sends.
#[derive(Debug, Clone, Default)]
pub(crate) struct Challenges {
    pub realm: String,
    pub resource_metadata: Option<String>,
    pub bearer: bool,
    pub dpop: bool,
}

impl Challenges {
    /// One challenge per accepted scheme. The error attributes go on the
    /// scheme the request used (a proof error always on DPoP), or on the
    /// first offered scheme when the request used none that is offered.
    pub(crate) fn render(&self, err: &VerifyError, used: Option<Scheme>) -> Vec<String> {
        if !err.challenged() {
            return Vec::new();
        }
        let offered: Vec<Scheme> = [(self.bearer, Scheme::Bearer), (self.dpop, Scheme::Dpop)]
            .into_iter()
            .filter_map(|(on, s)| on.then_some(s))
            .collect();
        let wanted = match err {
            VerifyError::Proof(_) | VerifyError::InvalidProof(_) => Some(Scheme::Dpop),
            _ => used,
        };
        let target = wanted.filter(|s| offered.contains(s)).or_else(|| offered.first().copied());
        offered.iter().map(|&s| self.challenge(s, (Some(s) == target).then_some(err))).collect()
    }

    fn challenge(&self, scheme: Scheme, err: Option<&VerifyError>) -> String {
        let mut params: Vec<(&str, String)> = Vec::new();
        if !self.realm.is_empty() {
            params.push(("realm", self.realm.clone()));
        }
        if scheme == Scheme::Dpop {
            params.push(("algs", DPOP_ALGS.to_owned()));
        }
        if let Some(e) = err
            && let Some(code) = e.code()
        {
            params.push(("error", code.to_owned()));
            params.push(("error_description", e.to_string()));
            if let VerifyError::InsufficientScope(scope) = e {
                params.push(("scope", scope.clone()));
            }
        }
        if let Some(url) = &self.resource_metadata {
            params.push(("resource_metadata", url.clone()));
        }
        let params: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", quoted(v))).collect();
        if params.is_empty() { scheme.name().to_owned() } else { format!("{} {}", scheme.name(), params.join(", ")) }
    }
}

/// An RFC 9110 quoted-string: quotes and backslashes escaped, anything
/// outside printable ASCII replaced, long text cut.
fn quoted(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars().take(300) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// Marks a refusal whose challenges a [`MandateAuth`](crate::MandateAuth)
/// service completes with its realm, schemes and metadata URL.
#[derive(Debug, Clone)]
pub(crate) struct ChallengePending(pub VerifyError);

pub(crate) fn respond(err: &VerifyError, challenges: &[String]) -> Response {
    let body = match err.code() {
        Some(code) => json!({ "error": code, "error_description": err.to_string() }),
        None => json!({ "error_description": err.to_string() }),
    };
    let mut resp = (err.status(), Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in challenges {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::WWW_AUTHENTICATE, v);
        }
    }
    if err.status() == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp.extensions_mut().insert(ChallengePending(err.clone()));
    resp
}

/// A bare response with a `Bearer` challenge; behind a
/// [`MandateAuthLayer`](crate::MandateAuthLayer) the challenges are
/// completed on the way out.
impl IntoResponse for VerifyError {
    fn into_response(self) -> Response {
        let bare = Challenges { bearer: true, ..Challenges::default() };
        respond(&self, &bare.render(&self, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> Challenges {
        Challenges {
            realm: "https://calendar.example".into(),
            resource_metadata: Some("https://cal.example/.well-known/oauth-protected-resource".into()),
            bearer: true,
            dpop: true,
        }
    }

    #[test]
    fn no_credentials_means_no_error_attributes() {
        assert_eq!(
            both().render(&VerifyError::MissingToken, None),
            [
                r#"Bearer realm="https://calendar.example", resource_metadata="https://cal.example/.well-known/oauth-protected-resource""#,
                r#"DPoP realm="https://calendar.example", algs="EdDSA ES256", resource_metadata="https://cal.example/.well-known/oauth-protected-resource""#,
            ]
        );
    }

    #[test]
    fn the_error_goes_on_the_scheme_used() {
        let c = Challenges { resource_metadata: None, ..both() };
        let err = VerifyError::Token(JoseError::Expired);
        assert_eq!(
            c.render(&err, Some(Scheme::Bearer)),
            [
                r#"Bearer realm="https://calendar.example", error="invalid_token", error_description="access token: token has expired""#,
                r#"DPoP realm="https://calendar.example", algs="EdDSA ES256""#,
            ]
        );
        let dpop = c.render(&err, Some(Scheme::Dpop));
        assert_eq!(dpop.first().map(String::as_str), Some(r#"Bearer realm="https://calendar.example""#));
        assert!(dpop.get(1).is_some_and(|d| d.contains(r#"algs="EdDSA ES256", error="invalid_token""#)));
        // A proof error is DPoP's whatever the scheme.
        let proof = c.render(&VerifyError::Proof(DpopError::MissingAth), Some(Scheme::Bearer));
        assert!(proof.get(1).is_some_and(|d| d.contains(r#"error="invalid_dpop_proof""#)), "{proof:?}");
    }

    #[test]
    fn dpop_only_resources_challenge_with_dpop_alone() {
        let c = Challenges { bearer: false, ..both() };
        let got = c.render(&VerifyError::InvalidToken("DPoP-bound tokens only".into()), Some(Scheme::Bearer));
        assert_eq!(got.len(), 1);
        assert!(got.first().is_some_and(|d| d.starts_with("DPoP ") && d.contains(r#"error="invalid_token""#)));
    }

    #[test]
    fn insufficient_scope_names_the_scope() {
        let c = Challenges { dpop: false, resource_metadata: None, ..both() };
        assert_eq!(
            c.render(&VerifyError::InsufficientScope("calendar:write".into()), Some(Scheme::Bearer)),
            [
                r#"Bearer realm="https://calendar.example", error="insufficient_scope", error_description="the token does not carry scope calendar:write", scope="calendar:write""#
            ]
        );
        let resp = VerifyError::InsufficientScope("calendar:write".into()).into_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn descriptions_are_escaped() {
        let c = Challenges { dpop: false, resource_metadata: None, ..both() };
        let got = c.render(&VerifyError::InvalidToken("a \"quoted\" \\ line\r\nbreak é".into()), Some(Scheme::Bearer));
        assert_eq!(
            got.first().map(String::as_str),
            Some(
                r#"Bearer realm="https://calendar.example", error="invalid_token", error_description="a \"quoted\" \\ line??break ?""#
            )
        );
        assert!(got.iter().all(|v| HeaderValue::from_str(v).is_ok()));
    }

    #[test]
    fn unavailable_is_503_without_challenge() {
        let err = VerifyError::Unavailable("the token's status could not be read");
        assert!(both().render(&err, Some(Scheme::Bearer)).is_empty());
        let resp = err.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("5"));
    }
}
