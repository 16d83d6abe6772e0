//! Delegated authority (DESIGN §3.1, §3.2, §5, §7): CIBA requests decided
//! by policy, grants, approvals, rotating refresh tokens and token exchange.
//! Every path re-checks the whole chain and the user's current rights, and
//! records its outcome in the same change as the state it writes.

mod approvals;
mod ciba;
mod exchange;
mod grants;
pub mod idjag;
mod may_act;
mod minting;
mod reapproval;
mod refresh;

pub use approvals::Approvers;
pub use ciba::BcAuthorized;
pub(crate) use minting::Mint;
pub use reapproval::{Lapsed, Reapproved};

use mandate_audit::Event;
use mandate_model::ScopeSet;
use mandate_model::records::{Agent, TokenRecord};

use crate::Error;
use crate::audit::{DENY, kind, reason};
use crate::chain::{LiveToken, NotLive};
use crate::service::{AuthenticatedClient, Mandate};

pub const REFRESH_TOKEN_PREFIX: &str = "mnd_rt_";

/// The scopes `scope` names, required and non-empty.
pub(crate) fn parse_scopes(scope: Option<&str>) -> Result<ScopeSet, Error> {
    match scope {
        None | Some("") => Err(Error::InvalidScope("scope is required".into())),
        Some(s) => ScopeSet::parse(s).map_err(|e| Error::InvalidScope(e.to_string())),
    }
}

fn one_resource(resources: &[&str]) -> Result<String, Error> {
    match resources {
        [] => Err(Error::InvalidTarget("resource is required: tokens are bound to one audience".into())),
        [one] => Ok((*one).to_owned()),
        _ => Err(Error::InvalidTarget("exactly one resource per token".into())),
    }
}

impl Mandate {
    /// The agent behind an authenticated client, or `unauthorized_client`.
    pub(crate) fn agent_of<'c>(client: &'c AuthenticatedClient, what: &str) -> Result<&'c Agent, Error> {
        client.agent.as_ref().ok_or_else(|| Error::UnauthorizedClient(format!("only an agent may use {what}")))
    }

    /// Records how a token request that failed (or waits) ended, with what
    /// the refusal changes (a poll time, a revoked family).
    pub(crate) fn refusal_event(&self, client: &AuthenticatedClient, grant_type: &str, e: &Error) -> Event {
        let mut event = self.client_event(
            match e {
                Error::AuthorizationPending | Error::SlowDown => kind::CIBA_POLLED,
                Error::InvalidGrant(m) if m.contains("family is revoked") => kind::REFRESH_REUSED,
                _ => kind::TOKEN_DENIED,
            },
            client,
        );
        event.decision = Some(DENY.into());
        event.reason = Some(format!("{grant_type}: {}", reason(e)));
        event
    }

    /// For tests and the check API: the token is live as a whole.
    pub async fn token_status(&self, token: &str) -> Result<Result<std::sync::Arc<LiveToken>, NotLive>, Error> {
        self.live_chain(token).await
    }
}

/// `token_type`: `DPoP` for a bound token (RFC 9449 §5).
pub(crate) fn token_type(record: &TokenRecord) -> &'static str {
    if record.cnf_jkt.is_some() { "DPoP" } else { "Bearer" }
}
