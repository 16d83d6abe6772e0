//! Whether a token is live as a whole (DESIGN §4, §5): the token itself,
//! every token it was exchanged from, its grant, every agent in its chain
//! and the user it acts for. One check, shared by introspection, the check
//! API, token exchange and refresh, so that no path skips a revocation.

use mandate_model::claims::AccessTokenClaims;
use mandate_model::delegation::Chain;
use mandate_model::records::{Agent, ClientId, Grant, TokenRecord, User, UserStatus};
use mandate_model::{Jti, UserId};

use std::sync::Arc;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use mandate_policy::Related;

use crate::Error;
use crate::footprint::{CacheFill, Footprint, Weighed, bounded};
use crate::service::Mandate;

/// The most ancestors followed; chains are at most `MAX_ACT_DEPTH` deep.
const MAX_ANCESTORS: usize = mandate_model::claims::MAX_ACT_DEPTH;

/// A token that is live with everything it depends on, and what it depends on.
#[derive(Debug, Clone)]
pub struct LiveToken {
    pub claims: AccessTokenClaims,
    pub record: TokenRecord,
    /// `None` for a resource server's own token (`mandate:check`).
    pub chain: Option<Chain>,
    /// The agents of the chain, first to current.
    pub agents: Vec<Agent>,
    pub user: Option<User>,
    pub grant: Option<Grant>,
    /// The first token of its delegation tree (itself when it was not
    /// exchanged from another).
    pub root: Jti,
}

impl LiveToken {
    /// The agent presenting the token.
    pub fn current(&self) -> Option<&Agent> {
        self.agents.last()
    }

    /// The chain as audit events spell it: the user, then each agent.
    pub fn chain_names(&self) -> Vec<String> {
        self.chain.as_ref().map(chain_names).unwrap_or_default()
    }
}

/// The user (if any), then each agent.
pub fn chain_names(chain: &Chain) -> Vec<String> {
    chain.user().map(|u| u.to_string()).into_iter().chain(chain.agents().iter().map(ToString::to_string)).collect()
}

/// Why a token is not live; said in audit events and check answers, never
/// in introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotLive {
    Unverifiable,
    Unknown,
    Revoked,
    Expired,
    AncestorRevoked(Jti),
    GrantInactive,
    AgentInactive(String),
    UserInactive(UserId),
    BadChain(String),
}

impl std::fmt::Display for NotLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotLive::Unverifiable => f.write_str("the token does not verify"),
            NotLive::Unknown => f.write_str("the token is unknown"),
            NotLive::Revoked => f.write_str("the token is revoked"),
            NotLive::Expired => f.write_str("the token has expired"),
            NotLive::AncestorRevoked(j) => write!(f, "token {j}, which it was exchanged from, is revoked"),
            NotLive::GrantInactive => f.write_str("its grant is revoked or expired"),
            NotLive::AgentInactive(a) => write!(f, "agent {a} in its chain may not act"),
            NotLive::UserInactive(u) => write!(f, "user {u} is disabled"),
            NotLive::BadChain(m) => write!(f, "its chain is invalid: {m}"),
        }
    }
}

impl Mandate {
    /// Verifies `token` and checks that it and everything above it is live
    /// now. Store failures are errors (the caller fails closed), not
    /// answers. A live chain is kept per node until the store's epoch moves
    /// (any revocation, lifecycle, user or approval change on any node) or
    /// the first expiry in the chain passes, so a revocation is seen at once.
    pub(crate) async fn live_chain(&self, token: &str) -> Result<Result<Arc<LiveToken>, NotLive>, Error> {
        let key = token_key(token);
        let epoch = self.store.epoch().await?;
        let now = self.clock.now();
        if let Some(hit) = self.caches.live(&key, epoch, now) {
            return Ok(Ok(hit));
        }
        let Some(claims) = self.verify_ours(token).await? else {
            return Ok(Err(NotLive::Unverifiable));
        };
        let live = self.live_claims(claims).await?;
        if let Ok(l) = &live {
            let until = l
                .agents
                .iter()
                .filter_map(|a| a.expires_at)
                .chain(l.grant.as_ref().map(|g| g.expires_at))
                .fold(l.record.expires_at, OffsetDateTime::min);
            self.caches.keep_live(key, epoch, until, l.clone());
        }
        Ok(live)
    }

    pub(crate) async fn live_claims(
        &self,
        claims: AccessTokenClaims,
    ) -> Result<Result<Arc<LiveToken>, NotLive>, Error> {
        let now = self.clock.now();
        let Ok(jti) = claims.jti.parse::<Jti>() else {
            return Ok(Err(NotLive::Unknown));
        };
        let Some(record) = self.store.token(jti).await? else {
            return Ok(Err(NotLive::Unknown));
        };
        if record.revoked_at.is_some() {
            return Ok(Err(NotLive::Revoked));
        }
        if now >= record.expires_at {
            return Ok(Err(NotLive::Expired));
        }
        if matches!(record.client_id, ClientId::Resource(_)) {
            // A resource server's own token acts for nobody.
            if claims.act.is_some() || !record.chain.is_empty() {
                return Ok(Err(NotLive::BadChain("a resource server's token has no chain".into())));
            }
            let root = record.jti;
            return Ok(Ok(Arc::new(LiveToken {
                claims,
                record,
                chain: None,
                agents: vec![],
                user: None,
                grant: None,
                root,
            })));
        }
        // The chain comes from the signed claims; the stored one must agree.
        let chain = match Chain::from_claims(&claims.sub, claims.act.as_ref()) {
            Ok(c) => c,
            Err(e) => return Ok(Err(NotLive::BadChain(e.to_string()))),
        };
        if chain.agents() != record.chain.as_slice() || chain.current().map(ClientId::Agent) != Some(record.client_id) {
            return Ok(Err(NotLive::BadChain("the token's act does not match its record".into())));
        }
        // Every ancestor: revocation cascades when it is written, and this
        // catches whatever a cascade could not reach.
        let mut parent = record.parent;
        let mut root = record.jti;
        let mut hops = 0;
        while let Some(p) = parent {
            hops += 1;
            if hops > MAX_ANCESTORS {
                return Ok(Err(NotLive::BadChain("too many ancestors".into())));
            }
            match self.store.token(p).await? {
                Some(a) if a.revoked_at.is_none() => {
                    root = a.jti;
                    parent = a.parent;
                }
                _ => return Ok(Err(NotLive::AncestorRevoked(p))),
            }
        }
        let grant = match record.grant {
            None => None,
            Some(g) => match self.store.grant(g).await? {
                Some(grant) if grant.is_live(now) => Some(grant),
                _ => return Ok(Err(NotLive::GrantInactive)),
            },
        };
        let mut agents = Vec::with_capacity(chain.depth());
        for id in chain.agents() {
            match self.store.agent(*id).await? {
                Some(a) if self.agent_may_act(&a).await? => agents.push(a),
                _ => return Ok(Err(NotLive::AgentInactive(id.to_string()))),
            }
        }
        let user = match chain.user() {
            None => None,
            Some(u) => match self.store.user(u).await? {
                Some(user) if user.status == UserStatus::Active => Some(user),
                _ => return Ok(Err(NotLive::UserInactive(u))),
            },
        };
        Ok(Ok(Arc::new(LiveToken { claims, record, chain: Some(chain), agents, user, grant, root })))
    }
}

impl Mandate {
    /// Every record a decision about `agents` can reach through attributes
    /// (SECURITY row 38): each agent's owner, its parent, transitively, and
    /// the parents' owners, plus `users`. A record that does not exist is
    /// left out, and a decision that reaches for it is a denial; a store
    /// that cannot answer is an error (the request fails closed).
    pub(crate) async fn related(&self, agents: &[&Agent], users: &[&User]) -> Result<Related, Error> {
        let mut related = Related::new();
        for u in users {
            related.add_user((*u).clone());
        }
        let mut todo: Vec<Agent> = agents.iter().map(|a| (*a).clone()).collect();
        let mut seen = std::collections::BTreeSet::new();
        let most = (agents.len() + 1) * (mandate_policy::MAX_PARENTS + 1);
        while let Some(agent) = todo.pop() {
            if !seen.insert(agent.id) || seen.len() > most {
                continue;
            }
            if related.user(agent.owner).is_none()
                && let Some(owner) = self.store.user(agent.owner).await?
            {
                related.add_user(owner);
            }
            if let Some(parent) = agent.parent
                && related.agent(parent).is_none()
                && let Some(p) = self.store.agent(parent).await?
            {
                todo.push(p);
            }
            related.add_agent(agent);
        }
        Ok(related)
    }

    /// The request facts a decision sees as `context` (DESIGN §13): the
    /// user the agents act for (its record must be in the decision's
    /// `Related`), the agents of the chain, the time, whether the token is
    /// (or will be) DPoP-bound, and the address of the request being
    /// served (after trusted proxies): at the token, CIBA and authorization
    /// endpoints, the agent's. A check states the agent's address itself.
    pub(crate) fn facts(&self, user: Option<&User>, agents: &[&Agent], dpop_bound: bool) -> mandate_policy::Facts {
        mandate_policy::Facts {
            user: user.map(|u| u.id),
            chain: agents.iter().map(|a| a.id).collect(),
            now: self.clock.now().unix_timestamp(),
            dpop_bound,
            client_address: crate::audit::current_client(),
            declared: Default::default(),
        }
    }
}

/// Bytes each per-node cache may hold (estimated, `crate::footprint`);
/// past its budget the least useful entries are evicted (S3-FIFO). A live
/// chain holds its token, agents, user and grant (about 5 KiB); a verified
/// token's claims about 1 KiB; a check decision a few hundred bytes.
const VERIFIED_BYTES: u64 = 32 << 20;
const LIVE_BYTES: u64 = 64 << 20;
const DECISIONS_BYTES: u64 = 32 << 20;
const ISSUANCE_BYTES: u64 = 32 << 20;
/// A typical issuance decision's weight: a digest, an action, the policy
/// version and the determining policies.
const TYPICAL_ISSUANCE: u64 = 320;

/// A token's cache key: its SHA-256, so that the cache holds no tokens.
pub(crate) fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A decision the check API made, kept while nothing it read has changed.
#[derive(Debug, Clone)]
pub(crate) struct CachedDecision {
    pub decision: &'static str,
    pub reasons: Vec<String>,
}

type DecisionKey = ([u8; 32], String, String, String);
/// (SHA-256 of the decision key, which spells the principal, the target
/// and every record they reach; action). The digest, not the key: a key
/// spells whole records (about 1-2 KiB), and a node issuing to 100,000
/// agents held one per agent.
type IssuanceKey = ([u8; 32], String);

type Cache<K, V> = crate::footprint::Cache<K, V>;

/// A live chain with the epoch it was read at and its first expiry.
type LiveEntry = ((u64, OffsetDateTime), Arc<LiveToken>);

impl Footprint for LiveToken {
    fn heap_bytes(&self) -> usize {
        self.claims.heap_bytes()
            + self.record.heap_bytes()
            + self.chain.as_ref().map_or(0, |c| std::mem::size_of_val(c.agents()))
            + self.agents.heap_bytes()
            + self.user.heap_bytes()
            + self.grant.heap_bytes()
    }
}

impl Footprint for CachedDecision {
    fn heap_bytes(&self) -> usize {
        self.reasons.heap_bytes()
    }
}

/// Per-node caches, each entry stamped with the store epoch it was read
/// at. None outlives a change: an entry is used only at the same epoch.
/// Each is bounded by bytes; past the bound the least useful entries are
/// evicted.
pub(crate) struct Caches {
    verified: Cache<[u8; 32], AccessTokenClaims>,
    /// The epoch and first expiry of a live chain.
    live: Cache<[u8; 32], LiveEntry>,
    /// The epoch and policy version a decision was made at.
    decisions: Cache<DecisionKey, ((u64, String), CachedDecision)>,
    /// Issuance decisions by (decision key, action), with the policy
    /// version they were made under.
    issuance: Cache<IssuanceKey, (String, mandate_policy::Decision)>,
}

impl Default for Caches {
    fn default() -> Self {
        Self {
            verified: bounded(VERIFIED_BYTES, 1_024),
            live: bounded(LIVE_BYTES, 5_120),
            decisions: bounded(DECISIONS_BYTES, 1_536),
            issuance: bounded(ISSUANCE_BYTES, TYPICAL_ISSUANCE),
        }
    }
}

impl Caches {
    /// How full each cache is, for the `mandate_cache_*` gauges.
    pub(crate) fn fill(&self) -> [CacheFill; 4] {
        [
            CacheFill::of("verified_tokens", &self.verified),
            CacheFill::of("live_chains", &self.live),
            CacheFill::of("check_decisions", &self.decisions),
            CacheFill::of("issuance_decisions", &self.issuance),
        ]
    }

    /// Claims of a token whose signature was verified before and which has
    /// not expired since.
    pub(crate) fn verified(&self, key: &[u8; 32], now: i64) -> Option<AccessTokenClaims> {
        self.verified.get(key).map(Weighed::into_value).filter(|c| c.exp > now && c.nbf <= now)
    }

    pub(crate) fn keep_verified(&self, key: [u8; 32], claims: AccessTokenClaims) {
        self.verified.insert(key, Weighed::new::<[u8; 32]>(0, claims));
    }

    fn live(&self, key: &[u8; 32], epoch: u64, now: OffsetDateTime) -> Option<Arc<LiveToken>> {
        self.live
            .get(key)
            .map(Weighed::into_value)
            .filter(|((e, until), _)| *e == epoch && now < *until)
            .map(|(_, l)| l)
    }

    fn keep_live(&self, key: [u8; 32], epoch: u64, until: OffsetDateTime, live: Arc<LiveToken>) {
        self.live.insert(key, Weighed::new::<[u8; 32]>(0, ((epoch, until), live)));
    }

    /// The decision for `principal` doing `action` on `target`, from the
    /// cache when the same principal, target and records they reach (every
    /// field a decision reads) asked the same under the same policy set,
    /// else from Cedar. Exact without an epoch: the key holds everything
    /// the decision depends on.
    pub(crate) fn issuance(
        &self,
        engine: &mandate_policy::PolicyEngine,
        principal: mandate_policy::Principal<'_>,
        action: &str,
        target: mandate_policy::Target<'_>,
        related: &mandate_policy::Related,
        facts: &mandate_policy::Facts,
    ) -> mandate_policy::Decision {
        // A reference that does not resolve has no key: decided (denied)
        // every time, never cached.
        let Ok(scene) = mandate_policy::decision_key_with(principal, target, related, facts) else {
            return engine.decide_with(principal, action, target, related, facts);
        };
        let key = (token_key(&scene), action.to_owned());
        if let Some((v, d)) = self.issuance.get(&key).map(Weighed::into_value)
            && v == engine.version()
        {
            return d;
        }
        let d = engine.decide_with(principal, action, target, related, facts);
        // Errors are not kept: they are retried, and deny meanwhile.
        if d.errors.is_empty() {
            let key_heap = key.1.len();
            self.issuance.insert(key, Weighed::new::<IssuanceKey>(key_heap, (engine.version().to_owned(), d.clone())));
        }
        d
    }

    pub(crate) fn decision(&self, key: &DecisionKey, epoch: u64, version: &str) -> Option<CachedDecision> {
        self.decisions
            .get(key)
            .map(Weighed::into_value)
            .filter(|((e, v), _)| *e == epoch && v == version)
            .map(|(_, d)| d)
    }

    pub(crate) fn keep_decision(&self, key: DecisionKey, epoch: u64, version: String, d: CachedDecision) {
        let key_heap = key.1.len() + key.2.len() + key.3.len();
        self.decisions.insert(key, Weighed::new::<DecisionKey>(key_heap, ((epoch, version), d)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(i: usize) -> CachedDecision {
        // About 1 KiB each, as a decision naming a few policies with
        // their reasons.
        CachedDecision { decision: "allow", reasons: vec![format!("{i:01024}")] }
    }

    #[test]
    fn a_full_cache_keeps_its_byte_budget_and_the_entries_in_use() {
        let caches = Caches::default();
        let key = |i: usize| ([0u8; 32], i.to_string(), String::new(), String::new());
        // 1,000 decisions asked for again and again, among 100,000 asked
        // for once.
        let hot = 1_000;
        let total = 100_000;
        for i in 0..total {
            caches.keep_decision(key(i), 1, "v".into(), decision(i));
            if i >= hot && i % 10 == 0 {
                let h = (i / 10) % hot;
                if caches.decision(&key(h), 1, "v").is_none() {
                    caches.keep_decision(key(h), 1, "v".into(), decision(h));
                }
            }
        }
        let [_, _, fill, _] = caches.fill();
        assert!(fill.bytes <= DECISIONS_BYTES, "{} bytes held", fill.bytes);
        // 100,000 decisions of over 1 KiB: a cache bounded by count held
        // them all (over 100 MiB).
        assert!(fill.entries < 30_000, "{} entries held", fill.entries);
        let kept = (0..hot).filter(|&i| caches.decision(&key(i), 1, "v").is_some()).count();
        assert!(kept > 950, "only {kept} of the {hot} decisions in use are kept");
        assert!(caches.decision(&key(0), 2, "v").is_none(), "an entry of another epoch was used");
    }
}
