//! Credential policy per agent, as data (DESIGN §13): limits an agent
//! carries on what it may be issued. The server's settings are the
//! defaults; an agent's limits, and a spawned child's, can only tighten
//! them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// A grant at the token endpoint, by its short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    ClientCredentials,
    AuthorizationCode,
    RefreshToken,
    TokenExchange,
    Ciba,
    JwtBearer,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::TokenExchange => "token_exchange",
            Self::Ciba => "ciba",
            Self::JwtBearer => "jwt_bearer",
        }
    }
}

/// How a client proved who it is at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// RFC 7523 §2.2 with the agent's own registered key.
    PrivateKeyJwt,
    /// A JWT from a trusted issuer naming the agent (DESIGN §10).
    Workload,
    /// `client_secret_basic`, development only.
    ClientSecret,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::Workload => "workload",
            Self::ClientSecret => "client_secret",
        }
    }
}

/// The limits an agent carries, as registered: each one absent means
/// "the server's (or the parent's) value".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentLimits {
    /// Longest lifetime of an access token issued to the agent, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_ttl: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_grant_types: Option<BTreeSet<GrantKind>>,
    /// Most agents a chain the agent is part of may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delegation_depth: Option<usize>,
    /// Resource identifiers (token audiences) the agent may be issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_resources: Option<BTreeSet<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_dpop: Option<bool>,
    /// Most live ephemeral children the agent may have at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ephemeral_children: Option<u64>,
    /// Longest lifetime of a child the agent spawns, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ephemeral_ttl: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_client_auth: Option<BTreeSet<ClientAuth>>,
}

/// Limits in force: every one has a value (a `None` set means "any").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub max_token_ttl: i64,
    pub allowed_grant_types: Option<BTreeSet<GrantKind>>,
    pub max_delegation_depth: usize,
    pub allowed_resources: Option<BTreeSet<String>>,
    pub require_dpop: bool,
    pub max_ephemeral_children: u64,
    pub max_ephemeral_ttl: i64,
    pub allowed_client_auth: Option<BTreeSet<ClientAuth>>,
}

/// Most resources an agent's `allowed_resources` may list.
pub const MAX_ALLOWED_RESOURCES: usize = 64;

fn looser(limit: &'static str, reason: String) -> ModelError {
    ModelError::InvalidField { field: limit, reason }
}

/// `asked` must be a subset of `bound` (a `None` bound allows any).
fn subset<T: Ord + Clone>(asked: &BTreeSet<T>, bound: Option<&BTreeSet<T>>) -> Option<T> {
    bound.and_then(|b| asked.iter().find(|x| !b.contains(*x)).cloned())
}

fn meet<T: Ord + Clone>(a: Option<&BTreeSet<T>>, b: Option<&BTreeSet<T>>) -> Option<BTreeSet<T>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.intersection(b).cloned().collect()),
        (Some(x), None) | (None, Some(x)) => Some(x.clone()),
        (None, None) => None,
    }
}

impl AgentLimits {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Refuses limits that are malformed or looser than `bound` (the
    /// server's defaults, or a spawning parent's limits in force), naming
    /// the limit.
    pub fn check_within(&self, bound: &Limits) -> Result<(), ModelError> {
        if let Some(ttl) = self.max_token_ttl {
            if ttl <= 0 {
                return Err(looser("limits.max_token_ttl", "must be at least 1 second".into()));
            }
            if ttl > bound.max_token_ttl {
                return Err(looser(
                    "limits.max_token_ttl",
                    format!("{ttl} is looser than the limit in force, {}", bound.max_token_ttl),
                ));
            }
        }
        if let Some(g) = &self.allowed_grant_types
            && let Some(extra) = subset(g, bound.allowed_grant_types.as_ref())
        {
            return Err(looser(
                "limits.allowed_grant_types",
                format!("{} is not allowed by the limit in force", extra.as_str()),
            ));
        }
        if let Some(depth) = self.max_delegation_depth {
            if depth == 0 {
                return Err(looser("limits.max_delegation_depth", "must be at least 1".into()));
            }
            if depth > bound.max_delegation_depth {
                return Err(looser(
                    "limits.max_delegation_depth",
                    format!("{depth} is looser than the limit in force, {}", bound.max_delegation_depth),
                ));
            }
        }
        if let Some(r) = &self.allowed_resources {
            if r.len() > MAX_ALLOWED_RESOURCES {
                return Err(looser("limits.allowed_resources", format!("at most {MAX_ALLOWED_RESOURCES} resources")));
            }
            if let Some(bad) = r.iter().find(|r| crate::name::validate_resource_identifier(r).is_err()) {
                return Err(looser("limits.allowed_resources", format!("{bad:?} is not an absolute URI")));
            }
            if let Some(extra) = subset(r, bound.allowed_resources.as_ref()) {
                return Err(looser(
                    "limits.allowed_resources",
                    format!("{extra} is not allowed by the limit in force"),
                ));
            }
        }
        if self.require_dpop == Some(false) && bound.require_dpop {
            return Err(looser("limits.require_dpop", "false is looser than the limit in force, true".into()));
        }
        if let Some(n) = self.max_ephemeral_children
            && n > bound.max_ephemeral_children
        {
            return Err(looser(
                "limits.max_ephemeral_children",
                format!("{n} is looser than the limit in force, {}", bound.max_ephemeral_children),
            ));
        }
        if let Some(ttl) = self.max_ephemeral_ttl {
            if ttl <= 0 {
                return Err(looser("limits.max_ephemeral_ttl", "must be at least 1 second".into()));
            }
            if ttl > bound.max_ephemeral_ttl {
                return Err(looser(
                    "limits.max_ephemeral_ttl",
                    format!("{ttl} is looser than the limit in force, {}", bound.max_ephemeral_ttl),
                ));
            }
        }
        if let Some(a) = &self.allowed_client_auth
            && let Some(extra) = subset(a, bound.allowed_client_auth.as_ref())
        {
            return Err(looser(
                "limits.allowed_client_auth",
                format!("{} is not allowed by the limit in force", extra.as_str()),
            ));
        }
        Ok(())
    }

    /// The tighter of two sets of limits, limit by limit (what a spawned
    /// child records: its parent's, narrowed by what it asked for).
    pub fn tightest(&self, other: &AgentLimits) -> AgentLimits {
        fn min<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        AgentLimits {
            max_token_ttl: min(self.max_token_ttl, other.max_token_ttl),
            allowed_grant_types: meet(self.allowed_grant_types.as_ref(), other.allowed_grant_types.as_ref()),
            max_delegation_depth: min(self.max_delegation_depth, other.max_delegation_depth),
            allowed_resources: meet(self.allowed_resources.as_ref(), other.allowed_resources.as_ref()),
            require_dpop: match (self.require_dpop, other.require_dpop) {
                (Some(a), Some(b)) => Some(a || b),
                (a, b) => a.or(b),
            },
            max_ephemeral_children: min(self.max_ephemeral_children, other.max_ephemeral_children),
            max_ephemeral_ttl: min(self.max_ephemeral_ttl, other.max_ephemeral_ttl),
            allowed_client_auth: meet(self.allowed_client_auth.as_ref(), other.allowed_client_auth.as_ref()),
        }
    }
}

impl Limits {
    /// These limits narrowed by an agent's own (never widened: a stored
    /// value looser than these is ignored, so a server default tightened
    /// after the agent was registered still holds).
    pub fn narrowed_by(&self, own: &AgentLimits) -> Limits {
        Limits {
            max_token_ttl: own.max_token_ttl.map_or(self.max_token_ttl, |t| t.min(self.max_token_ttl)),
            allowed_grant_types: meet(self.allowed_grant_types.as_ref(), own.allowed_grant_types.as_ref()),
            max_delegation_depth: own
                .max_delegation_depth
                .map_or(self.max_delegation_depth, |d| d.min(self.max_delegation_depth)),
            allowed_resources: meet(self.allowed_resources.as_ref(), own.allowed_resources.as_ref()),
            require_dpop: self.require_dpop || own.require_dpop == Some(true),
            max_ephemeral_children: own
                .max_ephemeral_children
                .map_or(self.max_ephemeral_children, |n| n.min(self.max_ephemeral_children)),
            max_ephemeral_ttl: own.max_ephemeral_ttl.map_or(self.max_ephemeral_ttl, |t| t.min(self.max_ephemeral_ttl)),
            allowed_client_auth: meet(self.allowed_client_auth.as_ref(), own.allowed_client_auth.as_ref()),
        }
    }

    pub fn allows_grant(&self, g: GrantKind) -> bool {
        self.allowed_grant_types.as_ref().is_none_or(|s| s.contains(&g))
    }

    pub fn allows_resource(&self, identifier: &str) -> bool {
        self.allowed_resources.as_ref().is_none_or(|s| s.contains(identifier))
    }

    /// `None` is a public client, which holds no credential: it passes
    /// only when client authentication is not limited.
    pub fn allows_client_auth(&self, method: Option<ClientAuth>) -> bool {
        match (&self.allowed_client_auth, method) {
            (None, _) => true,
            (Some(s), Some(m)) => s.contains(&m),
            (Some(_), None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Limits {
        Limits {
            max_token_ttl: 300,
            allowed_grant_types: None,
            max_delegation_depth: 4,
            allowed_resources: None,
            require_dpop: false,
            max_ephemeral_children: 100,
            max_ephemeral_ttl: 3600,
            allowed_client_auth: Some([ClientAuth::PrivateKeyJwt, ClientAuth::Workload].into()),
        }
    }

    fn field(e: ModelError) -> &'static str {
        match e {
            ModelError::InvalidField { field, .. } => field,
            _ => "",
        }
    }

    #[test]
    fn a_limit_looser_than_the_server_is_refused_by_name() {
        let s = server();
        let cases: Vec<(AgentLimits, &str)> = vec![
            (AgentLimits { max_token_ttl: Some(301), ..Default::default() }, "limits.max_token_ttl"),
            (AgentLimits { max_token_ttl: Some(0), ..Default::default() }, "limits.max_token_ttl"),
            (AgentLimits { max_delegation_depth: Some(5), ..Default::default() }, "limits.max_delegation_depth"),
            (AgentLimits { max_ephemeral_children: Some(101), ..Default::default() }, "limits.max_ephemeral_children"),
            (AgentLimits { max_ephemeral_ttl: Some(3601), ..Default::default() }, "limits.max_ephemeral_ttl"),
            (
                AgentLimits { allowed_client_auth: Some([ClientAuth::ClientSecret].into()), ..Default::default() },
                "limits.allowed_client_auth",
            ),
            (
                AgentLimits { allowed_resources: Some(["not a uri".to_owned()].into()), ..Default::default() },
                "limits.allowed_resources",
            ),
        ];
        for (limits, name) in cases {
            let e = limits.check_within(&s).err();
            assert_eq!(e.map(field), Some(name), "{limits:?}");
        }
        let mut dpop = s.clone();
        dpop.require_dpop = true;
        let off = AgentLimits { require_dpop: Some(false), ..Default::default() };
        assert_eq!(off.check_within(&dpop).err().map(field), Some("limits.require_dpop"));
        assert!(off.check_within(&s).is_ok());
    }

    #[test]
    fn tighter_limits_pass_and_narrow_what_is_in_force() {
        let s = server();
        let own = AgentLimits {
            max_token_ttl: Some(60),
            allowed_grant_types: Some([GrantKind::ClientCredentials].into()),
            max_delegation_depth: Some(2),
            allowed_resources: Some(["https://calendar.example".to_owned()].into()),
            require_dpop: Some(true),
            max_ephemeral_children: Some(1),
            max_ephemeral_ttl: Some(60),
            allowed_client_auth: Some([ClientAuth::Workload].into()),
        };
        assert!(own.check_within(&s).is_ok());
        let l = s.narrowed_by(&own);
        assert_eq!((l.max_token_ttl, l.max_delegation_depth, l.max_ephemeral_children), (60, 2, 1));
        assert!(l.require_dpop);
        assert!(l.allows_grant(GrantKind::ClientCredentials) && !l.allows_grant(GrantKind::TokenExchange));
        assert!(l.allows_resource("https://calendar.example") && !l.allows_resource("https://mail.example"));
        assert!(l.allows_client_auth(Some(ClientAuth::Workload)));
        assert!(!l.allows_client_auth(Some(ClientAuth::PrivateKeyJwt)) && !l.allows_client_auth(None));
        // A child bounded by these may not widen any of them.
        let wider = AgentLimits { allowed_grant_types: Some([GrantKind::Ciba].into()), ..Default::default() };
        assert_eq!(wider.check_within(&l).err().map(field), Some("limits.allowed_grant_types"));
    }

    #[test]
    fn a_stored_value_never_widens_what_is_in_force() {
        let mut s = server();
        let own = AgentLimits { max_token_ttl: Some(200), require_dpop: Some(false), ..Default::default() };
        s.max_token_ttl = 100;
        s.require_dpop = true;
        let l = s.narrowed_by(&own);
        assert_eq!(l.max_token_ttl, 100);
        assert!(l.require_dpop);
    }

    #[test]
    fn the_tightest_of_two_takes_each_limit_from_the_tighter() {
        let a = AgentLimits {
            max_token_ttl: Some(100),
            allowed_grant_types: Some([GrantKind::ClientCredentials, GrantKind::TokenExchange].into()),
            require_dpop: Some(true),
            ..Default::default()
        };
        let b = AgentLimits {
            max_token_ttl: Some(200),
            allowed_grant_types: Some([GrantKind::TokenExchange].into()),
            require_dpop: Some(false),
            max_ephemeral_children: Some(3),
            ..Default::default()
        };
        let t = a.tightest(&b);
        assert_eq!(t.max_token_ttl, Some(100));
        assert_eq!(t.allowed_grant_types, Some([GrantKind::TokenExchange].into()));
        assert_eq!(t.require_dpop, Some(true));
        assert_eq!(t.max_ephemeral_children, Some(3));
    }

    #[test]
    fn limits_are_json_with_short_names() {
        let l: AgentLimits = serde_json::from_str(
            r#"{"allowed_grant_types":["token_exchange","jwt_bearer","refresh_token"],"allowed_client_auth":["workload"]}"#,
        )
        .unwrap_or_default();
        assert_eq!(
            l.allowed_grant_types,
            Some([GrantKind::TokenExchange, GrantKind::JwtBearer, GrantKind::RefreshToken].into())
        );
        assert!(serde_json::from_str::<AgentLimits>(r#"{"max_ttl":5}"#).is_err());
    }
}
