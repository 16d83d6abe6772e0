//! Who may act next for a user down a delegation chain: RFC 8693 §4.4
//! `may_act`, named by a grant request or a policy (ADR 0024).
//!
//! A constraint names agents (`agt_…`) and groups (`group:<name>`). An
//! agent is in a group when its owner is (the person's Cedar groups, both
//! sources: ADR 0020), decided when the agent acts, not when it is named.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{AgentId, ModelError};

/// The most names one constraint may hold.
pub const MAX_ACTORS: usize = 16;

/// The prefix of a group name in a constraint.
pub const GROUP_PREFIX: &str = "group:";

/// One name in a constraint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActorName {
    Agent(AgentId),
    /// A group of people: their agents may act.
    Group(String),
}

impl ActorName {
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::InvalidField { field: "may_act", reason };
        if let Some(group) = s.strip_prefix(GROUP_PREFIX) {
            let name = crate::name::validate_label("may_act", group)?;
            return Ok(Self::Group(name));
        }
        s.parse::<AgentId>()
            .map(Self::Agent)
            .map_err(|_| invalid(format!("{s:?} is neither an agent id (agt_…) nor group:<name>")))
    }
}

impl fmt::Display for ActorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Agent(a) => write!(f, "{a}"),
            Self::Group(g) => write!(f, "{GROUP_PREFIX}{g}"),
        }
    }
}

/// A non-empty set of at most [`MAX_ACTORS`] names: the agents that may
/// act next. No constraint at all is `Option::None` where one is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MayAct(BTreeSet<ActorName>);

impl MayAct {
    /// Parses a space-separated list (`agt_… group:ops`), as the grant
    /// requests and `@may_act` spell it.
    pub fn parse(list: &str) -> Result<Self, ModelError> {
        Self::from_names(list.split(' ').filter(|s| !s.is_empty()).map(ActorName::parse))
    }

    pub fn from_names(names: impl IntoIterator<Item = Result<ActorName, ModelError>>) -> Result<Self, ModelError> {
        let set = names.into_iter().collect::<Result<BTreeSet<_>, _>>()?;
        let invalid = |reason: String| ModelError::InvalidField { field: "may_act", reason };
        if set.is_empty() {
            return Err(invalid("name at least one agent (agt_…) or group:<name>".into()));
        }
        if set.len() > MAX_ACTORS {
            return Err(invalid(format!("at most {MAX_ACTORS} names")));
        }
        Ok(Self(set))
    }

    pub fn names(&self) -> impl Iterator<Item = &ActorName> {
        self.0.iter()
    }

    /// The agents named one by one.
    pub fn agents(&self) -> impl Iterator<Item = AgentId> + '_ {
        self.0.iter().filter_map(|n| match n {
            ActorName::Agent(a) => Some(*a),
            ActorName::Group(_) => None,
        })
    }

    fn groups(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|n| match n {
            ActorName::Group(g) => Some(g.as_str()),
            ActorName::Agent(_) => None,
        })
    }

    /// Whether `agent`, whose owner is in `groups`, may act.
    pub fn covers(&self, agent: AgentId, groups: &BTreeSet<&str>) -> bool {
        self.0.contains(&ActorName::Agent(agent)) || self.groups().any(|g| groups.contains(g))
    }

    /// Whether every agent `self` lets act is one `wider` lets act too,
    /// `groups_of` giving the groups of each agent `self` names. A group
    /// is covered only by the same group: its membership changes.
    pub fn within(&self, wider: &Self, groups_of: impl Fn(AgentId) -> BTreeSet<String>) -> bool {
        self.0.iter().all(|n| match n {
            ActorName::Group(_) => wider.0.contains(n),
            ActorName::Agent(a) => {
                let groups = groups_of(*a);
                wider.covers(*a, &groups.iter().map(String::as_str).collect())
            }
        })
    }

    /// The names both constraints hold: what two constraints that must
    /// both hold still let act, or `None` if they have no name in common.
    pub fn intersect(&self, other: &Self) -> Option<Self> {
        let common: BTreeSet<ActorName> = self.0.intersection(&other.0).cloned().collect();
        (!common.is_empty()).then_some(Self(common))
    }

    /// The list as it is stored and shown: space-separated.
    pub fn to_list(&self) -> String {
        self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
    }

    /// The names as strings, for JSON answers.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for MayAct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_list())
    }
}

/// The claim (RFC 8693 §4.4 is a JSON object whose members identify the
/// party that may act): one agent is `{"sub": "agt_…"}`, exactly as the
/// RFC shows; several names, or a group, are Mandate's member
/// `{"mandate_actors": ["agt_…", "group:ops"]}`. A relying party that only
/// knows `sub` finds none there, so it cannot take one name for the whole.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MayActClaim {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mandate_actors: Option<Vec<String>>,
}

impl Serialize for MayAct {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let claim = match self.0.iter().collect::<Vec<_>>().as_slice() {
            [ActorName::Agent(a)] => MayActClaim { sub: Some(a.to_string()), mandate_actors: None },
            _ => MayActClaim { sub: None, mandate_actors: Some(self.to_strings()) },
        };
        claim.serialize(s)
    }
}

impl<'de> Deserialize<'de> for MayAct {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let claim = MayActClaim::deserialize(d)?;
        let parsed = match (claim.sub, claim.mandate_actors) {
            (Some(sub), None) => ActorName::parse(&sub).and_then(|n| Self::from_names([Ok(n)])),
            (None, Some(list)) => Self::from_names(list.iter().map(|s| ActorName::parse(s))),
            _ => return Err(D::Error::custom("may_act holds either sub or mandate_actors")),
        };
        parsed.map_err(D::Error::custom)
    }
}

/// `may_act` on a record, as a list of names (`["agt_…", "group:ops"]`).
pub mod as_list {
    use serde::Serializer;

    use super::MayAct;

    pub fn serialize<S: Serializer>(v: &Option<MayAct>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(m) => s.collect_seq(m.to_strings()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn agent(n: u64) -> AgentId {
        AgentId::from_ulid(ulid::Ulid::from_parts(1_700_000_000_000, u128::from(n)))
    }

    #[test]
    fn a_list_parses_and_refuses_what_names_no_agent_or_group() {
        let a = agent(1);
        let m = MayAct::parse(&format!("{a} group:ops {a}")).unwrap();
        assert_eq!(m.to_list(), format!("{a} group:ops"));
        for bad in ["", "   ", "usr_01HZZZZZZZZZZZZZZZZZZZZZZZ", "group:", "group:a b", "agt_x", "ops"] {
            assert!(MayAct::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let many = (0..17).map(|i| agent(i).to_string()).collect::<Vec<_>>().join(" ");
        assert!(MayAct::parse(&many).is_err());
    }

    #[test]
    fn one_agent_is_the_rfc_form_and_anything_else_the_list() {
        let a = agent(1);
        let one = MayAct::parse(&a.to_string()).unwrap();
        let json = serde_json::to_value(&one).unwrap();
        assert_eq!(json, serde_json::json!({"sub": a.to_string()}));
        assert_eq!(serde_json::from_value::<MayAct>(json).unwrap(), one);
        let group = MayAct::parse("group:ops").unwrap();
        let json = serde_json::to_value(&group).unwrap();
        assert_eq!(json, serde_json::json!({"mandate_actors": ["group:ops"]}));
        assert_eq!(serde_json::from_value::<MayAct>(json).unwrap(), group);
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"sub": a.to_string(), "mandate_actors": ["group:ops"]}),
            serde_json::json!({"mandate_actors": []}),
            serde_json::json!({"sub": "group:ops", "iss": "x"}),
        ] {
            assert!(serde_json::from_value::<MayAct>(bad.clone()).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn an_agent_is_covered_by_its_id_or_its_owners_group() {
        let (a, b) = (agent(1), agent(2));
        let m = MayAct::parse(&format!("{a} group:ops")).unwrap();
        assert!(m.covers(a, &BTreeSet::new()));
        assert!(!m.covers(b, &BTreeSet::from(["dev"])));
        assert!(m.covers(b, &BTreeSet::from(["dev", "ops"])));
        // Narrower lists are within; a group only within the same group.
        let by_id = MayAct::parse(&b.to_string()).unwrap();
        assert!(by_id.within(&m, |_| BTreeSet::from(["ops".to_owned()])));
        assert!(!by_id.within(&m, |_| BTreeSet::new()));
        assert!(!MayAct::parse("group:dev").unwrap().within(&m, |_| BTreeSet::new()));
        assert_eq!(m.intersect(&by_id), None);
        assert_eq!(m.intersect(&MayAct::parse("group:ops").unwrap()).map(|x| x.to_list()), Some("group:ops".into()));
    }
}
