//! OAuth requests as the edge parsed them: one typed variant per grant.
//! The server turns a form into these before any use case sees it; which
//! parameters a grant accepts, which it requires and which may repeat is
//! decided there, once. A request that cannot be parsed still reaches its
//! use case, as [`BadGrant`] or [`Malformed`], so that it is refused after
//! the client authenticates and is recorded against that client, like any
//! other refusal.

use crate::Error;

pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
pub const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";
pub const GRANT_CIBA: &str = "urn:openid:params:grant-type:ciba";
pub const GRANT_REFRESH: &str = "refresh_token";
pub const GRANT_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const GRANT_JWT_BEARER: &str = mandate_jose::federated::JWT_BEARER_GRANT;
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The grants the token endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantType {
    ClientCredentials,
    AuthorizationCode,
    Ciba,
    Refresh,
    Exchange,
    /// RFC 7523 §2.1: a workload JWT or an ID-JAG (DESIGN §10).
    JwtBearer,
}

impl GrantType {
    pub const ALL: [GrantType; 6] =
        [Self::AuthorizationCode, Self::ClientCredentials, Self::Refresh, Self::Exchange, Self::Ciba, Self::JwtBearer];

    /// The `grant_type` value, if Mandate serves it.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }

    /// The `grant_type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => GRANT_CLIENT_CREDENTIALS,
            Self::AuthorizationCode => GRANT_AUTHORIZATION_CODE,
            Self::Ciba => GRANT_CIBA,
            Self::Refresh => GRANT_REFRESH,
            Self::Exchange => GRANT_EXCHANGE,
            Self::JwtBearer => GRANT_JWT_BEARER,
        }
    }

    /// Its name in an agent's `allowed_grant_types` (DESIGN §13).
    pub fn kind(self) -> mandate_model::limits::GrantKind {
        use mandate_model::limits::GrantKind as K;
        match self {
            Self::ClientCredentials => K::ClientCredentials,
            Self::AuthorizationCode => K::AuthorizationCode,
            Self::Ciba => K::Ciba,
            Self::Refresh => K::RefreshToken,
            Self::Exchange => K::TokenExchange,
            Self::JwtBearer => K::JwtBearer,
        }
    }

    /// A short name, for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::AuthorizationCode => "authorization_code",
            Self::Ciba => "ciba",
            Self::Refresh => "refresh_token",
            Self::Exchange => "token_exchange",
            Self::JwtBearer => "jwt_bearer",
        }
    }
}

/// A token request, one variant per grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantRequest {
    /// An agent acting as itself, or a resource server asking for
    /// `mandate:check`. Other parameters are ignored, as RFC 6749 allows.
    ClientCredentials { scope: Option<String>, resources: Vec<String> },
    /// RFC 6749 §4.1.3 with PKCE (RFC 7636). `resources` (RFC 8707 §2.2,
    /// which MCP clients send) may only name the grant's resource.
    AuthorizationCode {
        code: String,
        redirect_uri: Option<String>,
        code_verifier: Option<String>,
        resources: Vec<String>,
    },
    /// OpenID CIBA, poll mode.
    Ciba { auth_req_id: String },
    /// RFC 6749 §6; `resources` as for the code.
    Refresh { refresh_token: String, scope: Option<String>, resources: Vec<String> },
    /// RFC 8693.
    Exchange(ExchangeRequest),
    /// RFC 7523 §2.1. `assertion` is an ID-JAG (`typ: oauth-id-jag+jwt`),
    /// redeemed by the authenticated agent, or a workload JWT, which
    /// authenticates the agent itself; `scope` and `resources` may only
    /// narrow what an ID-JAG grants.
    JwtBearer { assertion: String, scope: Option<String>, resources: Vec<String> },
}

impl GrantRequest {
    pub fn grant_type(&self) -> GrantType {
        match self {
            Self::ClientCredentials { .. } => GrantType::ClientCredentials,
            Self::AuthorizationCode { .. } => GrantType::AuthorizationCode,
            Self::Ciba { .. } => GrantType::Ciba,
            Self::Refresh { .. } => GrantType::Refresh,
            Self::Exchange(_) => GrantType::Exchange,
            Self::JwtBearer { .. } => GrantType::JwtBearer,
        }
    }
}

/// An RFC 8693 request. `subject_token_type` and, when given,
/// `requested_token_type` and `actor_token_type` were checked at the edge
/// to be access tokens, the only type Mandate exchanges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeRequest {
    pub subject_token: String,
    /// It may only confirm the authenticated client: `act` is never taken
    /// from input.
    pub actor_token: Option<String>,
    pub resources: Vec<String>,
    pub audiences: Vec<String>,
    pub scope: Option<String>,
    /// A DPoP proof by the key a bound `subject_token` is bound to (its
    /// `cnf.jkt`), for this request (ADR 0024): how an agent that holds
    /// the token's key proves it when it calls with another key.
    pub subject_token_dpop: Option<String>,
    /// RFC 9396 `authorization_details` as sent (JSON text): only narrower
    /// than the subject token's; absent inherits them.
    pub authorization_details: Option<String>,
}

/// A `grant_type` that could not become a [`GrantRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum BadGrant {
    /// No grant Mandate serves: refused before the client authenticates.
    Unsupported(String),
    /// A grant Mandate serves, with parameters it does not accept.
    Malformed { grant: GrantType, error: Error },
}

/// The token endpoint's request.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub grant: Result<GrantRequest, BadGrant>,
    /// The `DPoP` headers (RFC 9449) the client sent: at most one is valid.
    pub dpop: Vec<String>,
}

/// `POST /oauth/bc-authorize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BcAuthorizeRequest {
    /// A user id (`usr_…`) or an email.
    pub login_hint: String,
    pub scope: Option<String>,
    pub resources: Vec<String>,
    pub binding_message: Option<String>,
    /// Seconds, as sent: its range is the use case's to check.
    pub requested_expiry: Option<String>,
    /// Who may act next for the user (`may_act`, ADR 0024): agent ids and
    /// `group:<name>`s separated by spaces, as sent.
    pub allowed_actors: Option<String>,
    /// CIBA §7.1: the bearer token Mandate presents when it calls a ping
    /// or push agent back; required of those, ignored for poll.
    pub client_notification_token: Option<String>,
    /// RFC 9396 `authorization_details` as sent (JSON text), checked
    /// against the resource's declared types by the use case.
    pub authorization_details: Option<String>,
}

/// A request the edge could not parse, with what it named, for the record
/// of its refusal.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    pub error: Error,
    pub resource: Option<String>,
    pub scope: Option<String>,
}

/// Request text kept in an event: at most 256 bytes.
pub fn bounded_input(s: &str) -> String {
    let mut end = s.len().min(256);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}
