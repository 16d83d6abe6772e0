//! Delegation rules (DESIGN §3.2, RFC 8693): who acts for whom, and how
//! authority only narrows at each hop. Pure: the caller passes `now`.
//!
//! These are the rules the token exchange (DESIGN §3.2) applies; they are
//! kept here, without I/O, so that their invariants are property-tested on
//! their own (a hop never widens scope, never changes audience except as
//! allowed, never outlives its parent; a chain never repeats an agent or
//! exceeds its depth).

use thiserror::Error;
use time::{Duration, OffsetDateTime};

use crate::claims::{Actor, MAX_ACT_DEPTH};
use crate::{AgentId, Scope, ScopeSet, UserId};

/// The default most agents a chain may hold (DESIGN §3.2 rule 5).
pub const DEFAULT_MAX_DEPTH: usize = 4;

/// Why a delegation hop is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DelegationError {
    #[error("agent {0} already appears in the delegation chain")]
    AgentRepeated(AgentId),
    #[error("the delegation chain would be {depth} agents deep; at most {max} are allowed")]
    TooDeep { depth: usize, max: usize },
    #[error("act claim nested deeper than {MAX_ACT_DEPTH}")]
    ActTooDeep,
    #[error("{0:?} in an act claim is not an agent id")]
    NotAnAgent(String),
    #[error("{0:?} is neither a user nor an agent id")]
    BadSubject(String),
    #[error("scope {0} is not in the token being exchanged")]
    ScopeWidened(Scope),
    #[error("a delegated token needs at least one scope")]
    NoScope,
    #[error("audience {0} is not the token's, nor one its grant covers")]
    AudienceNotAllowed(String),
    #[error("the token being exchanged has expired")]
    ParentExpired,
}

/// Who a token acts for and through whom: the user it was delegated by (if
/// any), then every agent from the first to the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    user: Option<UserId>,
    agents: Vec<AgentId>,
}

impl Chain {
    /// An agent acting as itself (`client_credentials`): `sub` is the agent.
    pub fn agent_alone(agent: AgentId) -> Self {
        Self { user: None, agents: vec![agent] }
    }

    /// An agent acting for a user (a grant): `sub` is the user.
    pub fn for_user(user: UserId, agent: AgentId) -> Self {
        Self { user: Some(user), agents: vec![agent] }
    }

    pub fn user(&self) -> Option<UserId> {
        self.user
    }

    /// Agents from the first actor to the current one.
    pub fn agents(&self) -> &[AgentId] {
        &self.agents
    }

    /// The agent presenting the token (RFC 8693 §4.1: the outermost `act`).
    pub fn current(&self) -> Option<AgentId> {
        self.agents.last().copied()
    }

    pub fn depth(&self) -> usize {
        self.agents.len()
    }

    /// The chain after one more hop to `next`: no agent twice, at most
    /// `max_depth` agents (DESIGN §3.2 rule 5).
    pub fn extend(&self, next: AgentId, max_depth: usize) -> Result<Chain, DelegationError> {
        if self.agents.contains(&next) {
            return Err(DelegationError::AgentRepeated(next));
        }
        let depth = self.agents.len() + 1;
        if depth > max_depth {
            return Err(DelegationError::TooDeep { depth, max: max_depth });
        }
        let mut agents = self.agents.clone();
        agents.push(next);
        Ok(Chain { user: self.user, agents })
    }

    /// The token's `sub`: the user, or the agent acting alone.
    pub fn subject(&self) -> String {
        match (self.user, self.agents.first()) {
            (Some(u), _) => u.to_string(),
            (None, Some(a)) => a.to_string(),
            (None, None) => String::new(),
        }
    }

    /// The `act` claim, built only from this chain (never copied from
    /// input): the outermost `act.sub` is the current agent, each nested
    /// `act` the one before it. An agent acting alone is its own `sub` and
    /// has no `act`.
    pub fn to_act(&self) -> Option<Actor> {
        let actors: &[AgentId] = match self.user {
            Some(_) => &self.agents,
            // The first agent is the subject itself.
            None => self.agents.get(1..).unwrap_or_default(),
        };
        actors.iter().fold(None, |inner, agent| Some(Actor { sub: agent.to_string(), act: inner.map(Box::new) }))
    }

    /// Rebuilds the chain from a verified token's `sub` and `act`. The
    /// nesting is bounded before anything else is looked at (SECURITY row
    /// 23), and every actor must be an agent.
    pub fn from_claims(sub: &str, act: Option<&Actor>) -> Result<Chain, DelegationError> {
        let mut actors = Vec::new();
        let mut cur = act;
        while let Some(a) = cur {
            if actors.len() == MAX_ACT_DEPTH {
                return Err(DelegationError::ActTooDeep);
            }
            actors.push(a.sub.parse::<AgentId>().map_err(|_| DelegationError::NotAnAgent(a.sub.clone()))?);
            cur = a.act.as_deref();
        }
        actors.reverse();
        let (user, mut agents) = if let Ok(u) = sub.parse::<UserId>() {
            (Some(u), Vec::new())
        } else if let Ok(a) = sub.parse::<AgentId>() {
            (None, vec![a])
        } else {
            return Err(DelegationError::BadSubject(sub.to_owned()));
        };
        agents.extend(actors);
        if user.is_some() && agents.is_empty() {
            // A user's token always names the agent that holds it.
            return Err(DelegationError::BadSubject(sub.to_owned()));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = agents.iter().find(|a| !seen.insert(**a)) {
            return Err(DelegationError::AgentRepeated(*dup));
        }
        Ok(Chain { user, agents })
    }
}

/// What a token carries that a hop may only narrow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub scopes: ScopeSet,
    /// The `aud`: exactly one resource identifier (or the issuer).
    pub audience: String,
    pub expires_at: OffsetDateTime,
}

/// What the next hop asks for; `None` keeps the parent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopRequest {
    pub scopes: Option<ScopeSet>,
    pub audience: Option<String>,
    /// The lifetime a fresh token would get; the hop gets no more than its
    /// parent has left.
    pub lifetime: Duration,
}

/// The authority of a delegated token (DESIGN §3.2 rule 3): its scopes are
/// the requested ones, all within the parent's; its audience is the
/// parent's, or, when the parent's audience is the issuer itself, one for
/// which `grant_covers(audience, scopes)` holds (scope names mean different
/// things at different resources, so the grant must cover these scopes
/// *there*); it expires at the earlier of `now + lifetime` and the parent's
/// expiry.
pub fn narrow(
    parent: &Authority,
    request: &HopRequest,
    now: OffsetDateTime,
    issuer: &str,
    grant_covers: impl Fn(&str, &ScopeSet) -> bool,
) -> Result<Authority, DelegationError> {
    if parent.expires_at <= now {
        return Err(DelegationError::ParentExpired);
    }
    let scopes = match &request.scopes {
        None => parent.scopes.clone(),
        Some(asked) => {
            if let Some(wider) = asked.iter().find(|s| !parent.scopes.contains(s)) {
                return Err(DelegationError::ScopeWidened(wider.clone()));
            }
            asked.clone()
        }
    };
    if scopes.is_empty() {
        return Err(DelegationError::NoScope);
    }
    let audience = match &request.audience {
        None => parent.audience.clone(),
        Some(a) if *a == parent.audience => a.clone(),
        Some(a) if parent.audience == issuer && grant_covers(a, &scopes) => a.clone(),
        Some(a) => return Err(DelegationError::AudienceNotAllowed(a.clone())),
    };
    let expires_at =
        now.checked_add(request.lifetime.max(Duration::ZERO)).map_or(parent.expires_at, |t| t.min(parent.expires_at));
    Ok(Authority { scopes, audience, expires_at })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ulid::Ulid;

    use super::*;

    const ISSUER: &str = "https://mandate.example";

    fn agent(n: u8) -> AgentId {
        AgentId::from_ulid(Ulid::from_parts(1_800_000_000_000, u128::from(n)))
    }

    fn user() -> UserId {
        UserId::from_ulid(Ulid::from_parts(1_800_000_000_000, 7))
    }

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    fn scopes(names: &[&str]) -> ScopeSet {
        if names.is_empty() { ScopeSet::default() } else { ScopeSet::parse(&names.join(" ")).unwrap() }
    }

    #[test]
    fn act_names_the_current_agent_outermost() {
        let chain = Chain::for_user(user(), agent(1)).extend(agent(2), 4).unwrap().extend(agent(3), 4).unwrap();
        let act = chain.to_act().unwrap();
        assert_eq!(act.sub, agent(3).to_string());
        assert_eq!(act.act.as_ref().map(|a| a.sub.clone()), Some(agent(2).to_string()));
        assert_eq!(act.depth(), 3);
        assert_eq!(chain.subject(), user().to_string());
        assert_eq!(Chain::from_claims(&chain.subject(), Some(&act)), Ok(chain));
        // An agent alone is its own subject, with no act until it delegates.
        let alone = Chain::agent_alone(agent(1));
        assert_eq!((alone.subject(), alone.to_act()), (agent(1).to_string(), None));
        let hop = alone.extend(agent(2), 4).unwrap();
        assert_eq!(hop.to_act().map(|a| a.depth()), Some(1));
        assert_eq!(Chain::from_claims(&hop.subject(), hop.to_act().as_ref()), Ok(hop));
    }

    #[test]
    fn hostile_act_claims_are_refused_before_anything_else() {
        let mut deep = Actor { sub: agent(1).to_string(), act: None };
        for _ in 0..10_000 {
            deep = Actor { sub: agent(1).to_string(), act: Some(Box::new(deep)) };
        }
        assert_eq!(Chain::from_claims(&user().to_string(), Some(&deep)), Err(DelegationError::ActTooDeep));
        // Dropping a 10,000-deep Box chain recursively could overflow the
        // stack; unwind it by hand.
        let mut cur = Some(Box::new(deep));
        while let Some(mut a) = cur {
            cur = a.act.take();
        }
        let user_as_actor = Actor { sub: user().to_string(), act: None };
        assert!(matches!(
            Chain::from_claims(&user().to_string(), Some(&user_as_actor)),
            Err(DelegationError::NotAnAgent(_))
        ));
        let twice =
            Actor { sub: agent(1).to_string(), act: Some(Box::new(Actor { sub: agent(1).to_string(), act: None })) };
        assert_eq!(
            Chain::from_claims(&user().to_string(), Some(&twice)),
            Err(DelegationError::AgentRepeated(agent(1)))
        );
        assert!(matches!(Chain::from_claims("admin", None), Err(DelegationError::BadSubject(_))));
        assert!(matches!(Chain::from_claims(&user().to_string(), None), Err(DelegationError::BadSubject(_))));
    }

    #[test]
    fn a_hop_cannot_widen_move_or_outlive_its_parent() {
        let parent =
            Authority { scopes: scopes(&["read", "write"]), audience: "https://a.example".into(), expires_at: t(100) };
        let req = |s: Option<&[&str]>, aud: Option<&str>, life: i64| HopRequest {
            scopes: s.map(scopes),
            audience: aud.map(Into::into),
            lifetime: Duration::seconds(life),
        };
        let none = |_: &str, _: &ScopeSet| false;
        let child = narrow(&parent, &req(Some(&["read"]), None, 300), t(0), ISSUER, none);
        assert_eq!(child.as_ref().map(|c| c.expires_at), Ok(t(100)), "clamped to the parent's expiry");
        assert_eq!(
            narrow(&parent, &req(Some(&["admin"]), None, 60), t(0), ISSUER, none),
            Err(DelegationError::ScopeWidened(Scope::parse("admin").unwrap()))
        );
        // Depth: the fifth agent is refused at the default maximum.
        let mut chain = Chain::for_user(user(), agent(1));
        for n in 2..=4 {
            chain = chain.extend(agent(n), DEFAULT_MAX_DEPTH).unwrap();
        }
        assert_eq!(chain.extend(agent(5), DEFAULT_MAX_DEPTH), Err(DelegationError::TooDeep { depth: 5, max: 4 }));
        assert!(matches!(
            narrow(&parent, &req(None, Some("https://b.example"), 60), t(0), ISSUER, |_, _| true),
            Err(DelegationError::AudienceNotAllowed(_))
        ));
        assert_eq!(narrow(&parent, &req(None, None, 60), t(100), ISSUER, none), Err(DelegationError::ParentExpired));
        assert_eq!(narrow(&parent, &req(Some(&[]), None, 60), t(0), ISSUER, none), Err(DelegationError::NoScope));
        // A token for the issuer may be exchanged for an audience its grant covers.
        let at_issuer = Authority { audience: ISSUER.into(), ..parent.clone() };
        let covers = |a: &str, s: &ScopeSet| a == "https://b.example" && s.is_subset_of(&scopes(&["read"]));
        let moved = narrow(&at_issuer, &req(Some(&["read"]), Some("https://b.example"), 60), t(0), ISSUER, covers);
        assert_eq!(moved.map(|c| c.audience), Ok("https://b.example".to_owned()));
        // The same move with a scope the grant does not cover there.
        let wider = narrow(&at_issuer, &req(None, Some("https://b.example"), 60), t(0), ISSUER, covers);
        assert!(matches!(wider, Err(DelegationError::AudienceNotAllowed(_))));
        // A lifetime that would overflow the calendar is the parent's.
        let long = narrow(&parent, &req(None, None, i64::MAX), t(0), ISSUER, none);
        assert_eq!(long.map(|c| c.expires_at), Ok(t(100)));
    }

    const NAMES: [&str; 6] = ["read", "write", "send", "list", "delete", "admin"];

    fn scope_subset() -> impl Strategy<Value = ScopeSet> {
        proptest::sample::subsequence(NAMES.to_vec(), 0..=NAMES.len()).prop_map(|v| scopes(&v))
    }

    proptest! {
        /// A chain of random hops: every accepted child's scopes are within
        /// its parent's, its audience is its parent's (or one the grant
        /// covers, from the issuer), and it expires no later than its parent.
        #[test]
        fn authority_only_narrows_along_a_chain(
            root_scopes in scope_subset(),
            root_ttl in 1i64..10_000,
            from_issuer in any::<bool>(),
            hops in proptest::collection::vec(
                (proptest::option::of(scope_subset()), proptest::option::of(0usize..4), -100i64..20_000, 0i64..5_000),
                1..8,
            ),
        ) {
            let audiences = [ISSUER, "https://a.example", "https://b.example", "https://c.example"];
            let covered = |a: &str, _: &ScopeSet| a != "https://c.example";
            let mut parent = Authority {
                scopes: root_scopes,
                audience: if from_issuer { ISSUER.into() } else { "https://a.example".into() },
                expires_at: t(root_ttl),
            };
            let mut now = t(0);
            for (asked, aud, lifetime, wait) in hops {
                now += Duration::seconds(wait);
                let req = HopRequest {
                    scopes: asked.clone(),
                    audience: aud.and_then(|i| audiences.get(i)).map(|a| (*a).to_owned()),
                    lifetime: Duration::seconds(lifetime),
                };
                match narrow(&parent, &req, now, ISSUER, covered) {
                    Ok(child) => {
                        prop_assert!(child.scopes.is_subset_of(&parent.scopes));
                        prop_assert!(!child.scopes.is_empty());
                        prop_assert!(child.expires_at <= parent.expires_at);
                        prop_assert!(parent.expires_at > now);
                        prop_assert!(
                            child.audience == parent.audience
                                || (parent.audience == ISSUER && covered(&child.audience, &child.scopes))
                        );
                        parent = child;
                    }
                    Err(DelegationError::ScopeWidened(s)) => {
                        prop_assert!(!parent.scopes.contains(&s));
                        prop_assert!(asked.is_some_and(|a| a.contains(&s)));
                    }
                    Err(_) => {}
                }
            }
        }

        /// However hops are attempted, an accepted chain never repeats an
        /// agent, never exceeds its depth, and survives its own `act`.
        #[test]
        fn chains_never_repeat_an_agent_or_exceed_their_depth(
            with_user in any::<bool>(),
            next in proptest::collection::vec(0u8..8, 0..12),
            max in 1usize..6,
        ) {
            let mut chain = if with_user { Chain::for_user(user(), agent(0)) } else { Chain::agent_alone(agent(0)) };
            for n in next {
                match chain.extend(agent(n), max) {
                    Ok(c) => chain = c,
                    Err(DelegationError::AgentRepeated(a)) => prop_assert!(chain.agents().contains(&a)),
                    Err(DelegationError::TooDeep { depth, max: m }) => prop_assert!(depth > m),
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
                let mut seen = std::collections::BTreeSet::new();
                prop_assert!(chain.agents().iter().all(|a| seen.insert(*a)));
                prop_assert!(chain.depth() <= max.max(1));
            }
            prop_assert_eq!(Chain::from_claims(&chain.subject(), chain.to_act().as_ref()), Ok(chain));
        }
    }
}
