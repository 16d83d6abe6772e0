//! Who may act next for the user (RFC 8693 §4.4 `may_act`, ADR 0024): the
//! constraint a grant request and the policies that allow it name, which
//! every token under the grant carries; and the exchange's holder rule
//! for a DPoP-bound subject token.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use mandate_jose::dpop::{self, ProofRules};
use mandate_model::actors::MayAct;
use mandate_model::records::{Agent, Resource, User, UserStatus};
use mandate_model::{AgentId, ScopeSet};
use mandate_policy::{Principal, Target};
use time::OffsetDateTime;

use crate::Error;
use crate::service::Mandate;
use crate::store::Mutation;

impl Mandate {
    /// The constraint a new grant of `scopes` at `res` from `user` to
    /// `agent` carries: the names the request gives (`allowed_actors`),
    /// which must be agents that exist (`invalid_request`) and lie within
    /// what the allowing policies name (`access_denied`); else the
    /// policies' own; else none.
    pub(crate) async fn grant_may_act(
        &self,
        user: &User,
        agent: &Agent,
        res: &Resource,
        scopes: &ScopeSet,
        asked: Option<&str>,
    ) -> Result<Option<MayAct>, Error> {
        let asked = asked
            .map(|s| MayAct::parse(s).map_err(|e| Error::InvalidRequest(format!("allowed_actors: {e}"))))
            .transpose()?;
        let mut groups: BTreeMap<AgentId, BTreeSet<String>> = BTreeMap::new();
        if let Some(a) = &asked {
            for id in a.agents() {
                let named =
                    self.store.agent(id).await?.ok_or_else(|| {
                        Error::InvalidRequest(format!("allowed_actors names {id}, which is no agent"))
                    })?;
                groups.insert(id, self.groups_of(&named).await?);
            }
        }
        let policy = self.policy_may_act(user, agent, res, scopes).await?;
        match (asked, policy) {
            (None, p) => Ok(p),
            (Some(a), None) => Ok(Some(a)),
            (Some(a), Some(p)) => {
                if a.within(&p, |id| groups.get(&id).cloned().unwrap_or_default()) {
                    Ok(Some(a))
                } else {
                    Err(Error::AccessDenied(format!("policy lets only {p} act next with this grant, not all of {a}")))
                }
            }
        }
    }

    /// What the permits that allow the grant name with `@may_act`: every
    /// one restricts, so the names they all hold (`access_denied` when they
    /// hold none in common).
    async fn policy_may_act(
        &self,
        user: &User,
        agent: &Agent,
        res: &Resource,
        scopes: &ScopeSet,
    ) -> Result<Option<MayAct>, Error> {
        let related = self.related(&[agent], &[user]).await?;
        let facts = self.facts(Some(user), &[agent], false);
        let engine = self.fresh_engine().await?;
        let mut found: Option<MayAct> = None;
        for scope in scopes.iter() {
            for action in res.actions_of(scope).unwrap_or_default() {
                let target = Target::Api(&res.identifier);
                for principal in [Principal::User(user), Principal::Agent(agent)] {
                    let d = self.caches.issuance(&engine, principal, &action, target, &related, &facts);
                    for m in d.may_act {
                        found = match found {
                            None => Some(m),
                            Some(f) => Some(f.intersect(&m).ok_or_else(|| {
                                Error::AccessDenied(format!(
                                    "the policies that allow this grant name nobody in common to act next ({f}; {m})"
                                ))
                            })?),
                        };
                    }
                }
            }
        }
        Ok(found)
    }

    /// The groups an agent is in: its owner's, while the owner is active.
    pub(crate) async fn groups_of(&self, agent: &Agent) -> Result<BTreeSet<String>, Error> {
        Ok(match self.store.user(agent.owner).await? {
            Some(u) if u.status == UserStatus::Active => u.groups.into_iter().chain(u.scim_groups).collect(),
            _ => BTreeSet::new(),
        })
    }

    /// Whether `may_act` lets `agent` act now.
    pub(crate) async fn may_act_covers(&self, may_act: &MayAct, agent: &Agent) -> Result<bool, Error> {
        let groups = self.groups_of(agent).await?;
        Ok(may_act.covers(agent.id, &groups.iter().map(String::as_str).collect()))
    }

    /// A `subject_token_dpop` proof: a DPoP proof for this token request
    /// (`htm` POST, `htu` the token endpoint) with `ath` the hash of the
    /// subject token, signed by the key the subject token is bound to.
    /// Returns the burn of its `jti`, to ride with the new token.
    pub(crate) fn subject_proof(&self, proof: &str, subject_token: &str, bound: &str) -> Result<Mutation, Error> {
        let refuse = |why: String| Error::InvalidGrant(format!("subject_token_dpop: {why}"));
        if !proof.is_ascii() {
            return Err(refuse("not ASCII".into()));
        }
        let now = self.clock.now().unix_timestamp();
        let htu = self.config.token_endpoint();
        let rules = ProofRules {
            htm: "POST",
            htu: &htu,
            now,
            max_age: self.config.dpop_max_age,
            max_skew: self.config.dpop_max_skew,
            access_token: Some(subject_token),
        };
        let verified = dpop::verify_proof(proof, &rules).map_err(|e| refuse(e.to_string()))?;
        if self.config.dpop_nonces && !verified.nonce.as_deref().is_some_and(|n| self.nonce_is_current(n, now)) {
            let nonce =
                self.dpop_nonce().ok_or_else(|| Error::Unavailable("a DPoP nonce could not be sealed".into()))?;
            return Err(Error::UseDpopNonce { nonce });
        }
        if !mandate_jose::ct_eq(verified.jkt.as_bytes(), bound.as_bytes()) {
            return Err(Error::InvalidGrant(
                "subject token is DPoP-bound to another key than the one subject_token_dpop proves".into(),
            ));
        }
        let until = verified.iat.max(now) + self.config.dpop_max_age + self.config.dpop_max_skew + 1;
        let expires_at = OffsetDateTime::from_unix_timestamp(until).map_err(|_| refuse("iat out of range".into()))?;
        Ok(Mutation::ConsumeDpopJti { key: verified.replay_key, expires_at })
    }
}

impl Mandate {
    /// The holder rule of a token exchange (ADR 0024). A subject token
    /// bound to a key (`cnf.jkt`) may be exchanged when the caller's own
    /// DPoP proof is by that key, when `subject_token_dpop` proves it, or
    /// when the token's `may_act` names the caller (checked before this),
    /// or when the caller is the gateway of the token's audience
    /// (`gateway_hop`): the token was presented to it, and it verified the
    /// holder's proof then. Anything else is `invalid_grant`. Returns the
    /// burn of a `subject_token_dpop` proof's `jti`.
    pub(crate) fn holder_of(
        &self,
        subject: &mandate_model::claims::AccessTokenClaims,
        subject_token: &str,
        proof: Option<&str>,
        caller_jkt: Option<&str>,
        gateway_hop: bool,
    ) -> Result<Option<Mutation>, Error> {
        let Some(bound) = subject.cnf.as_ref().map(|c| c.jkt.as_str()) else {
            return match proof {
                Some(_) => Err(Error::InvalidRequest(
                    "subject_token_dpop is only for a DPoP-bound subject token, and this one is not bound".into(),
                )),
                None => Ok(None),
            };
        };
        // A proof that was sent is checked, whoever the caller is.
        let burn = proof.map(|p| self.subject_proof(p, subject_token, bound)).transpose()?;
        let holder = caller_jkt.is_some_and(|k| mandate_jose::ct_eq(k.as_bytes(), bound.as_bytes()));
        if holder || burn.is_some() || subject.may_act.is_some() || gateway_hop {
            return Ok(burn);
        }
        Err(Error::InvalidGrant(
            "subject token is DPoP-bound to another key: prove that key with subject_token_dpop, or be named by \
             its may_act"
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    //! The constraint a grant request names, and the holder rule, on a
    //! memory store.

    use mandate_jose::dpop::{ProofClaims, access_token_hash, sign_proof};
    use mandate_jose::{KeyAlg, SigningKey};
    use mandate_model::actors::MayAct;
    use mandate_model::claims::{AccessTokenClaims, Confirmation};

    use crate::Error;
    use crate::ports::Clock;
    use crate::testing::{CAL, World};

    fn claims(jkt: Option<&str>, may_act: Option<&str>) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: crate::testing::ISSUER.into(),
            sub: "usr_x".into(),
            aud: CAL.into(),
            exp: 0,
            iat: 0,
            nbf: 0,
            jti: "j".into(),
            client_id: "agt_x".into(),
            scope: "read".into(),
            act: None,
            may_act: may_act.map(|m| MayAct::parse(m).unwrap()),
            authorization_details: Default::default(),
            grant_id: None,
            purpose: None,
            cnf: jkt.map(|j| Confirmation { jkt: j.into() }),
            status: None,
        }
    }

    fn proof(w: &World, key: &SigningKey, token: &str, jti: &str) -> String {
        let htu = w.m.config.token_endpoint();
        let iat = w.clock.now().unix_timestamp();
        let c = ProofClaims { jti, htm: "POST", htu: &htu, iat, ath: Some(access_token_hash(token)), nonce: None };
        sign_proof(key, &c).unwrap()
    }

    #[tokio::test]
    async fn a_bound_subject_token_needs_its_holder_a_second_proof_or_may_act() {
        let w = World::new().await;
        let holder = SigningKey::generate(KeyAlg::EdDSA).unwrap();
        let other = SigningKey::generate(KeyAlg::ES256).unwrap();
        let jkt = holder.public().thumbprint();
        let (token, bound) = ("the.subject.token", claims(Some(&jkt), None));
        // Unbound: nothing to prove, and a proof is a mistake.
        assert!(matches!(w.m.holder_of(&claims(None, None), token, None, None, false), Ok(None)));
        let p = proof(&w, &holder, token, "p0");
        let unbound = w.m.holder_of(&claims(None, None), token, Some(&p), None, false);
        assert!(matches!(unbound, Err(Error::InvalidRequest(_))), "{unbound:?}");
        // Its holder calls with its key.
        assert!(matches!(w.m.holder_of(&bound, token, None, Some(&jkt), false), Ok(None)));
        // Anyone else, with their own key or none, is refused.
        let other_jkt = other.public().thumbprint();
        for caller in [None, Some(other_jkt.as_str())] {
            let r = w.m.holder_of(&bound, token, None, caller, false);
            assert!(matches!(r, Err(Error::InvalidGrant(ref m)) if m.contains("DPoP-bound to another key")), "{r:?}");
        }
        // …unless it proves the key: the proof's jti is burned.
        let ok = w.m.holder_of(&bound, token, Some(&proof(&w, &holder, token, "p1")), Some(&other_jkt), false);
        assert!(matches!(ok, Ok(Some(crate::store::Mutation::ConsumeDpopJti { .. }))), "{ok:?}");
        // A proof by another key, or for another token, proves nothing.
        for bad in [proof(&w, &other, token, "p2"), proof(&w, &holder, "another.token", "p3")] {
            let r = w.m.holder_of(&bound, token, Some(&bad), None, false);
            assert!(matches!(r, Err(Error::InvalidGrant(_))), "{r:?}");
        }
        // …or is named by may_act, or is the gateway it was presented to.
        let listed = claims(Some(&jkt), Some(&w.helper.id().to_string()));
        assert!(matches!(w.m.holder_of(&listed, token, None, None, false), Ok(None)));
        assert!(matches!(w.m.holder_of(&bound, token, None, None, true), Ok(None)));
    }

    #[tokio::test]
    async fn a_grant_request_names_existing_agents_only() {
        let w = World::new().await;
        let res = w.m.resource_by_identifier(CAL).await.unwrap();
        let scopes = mandate_model::ScopeSet::parse("read").unwrap();
        let ask = |s: String| {
            let (w, res, scopes) = (&w, res.clone(), scopes.clone());
            async move { w.m.grant_may_act(&w.alice, &w.planner.agent, &res, &scopes, Some(&s)).await }
        };
        let named = ask(format!("{} group:ops", w.helper.id())).await.unwrap();
        assert_eq!(named.map(|m| m.to_list()), Some(format!("{} group:ops", w.helper.id())));
        for bad in ["agt_01HZZZZZZZZZZZZZZZZZZZZZZZ", "nobody", ""] {
            let r = ask(bad.to_owned()).await;
            assert!(matches!(r, Err(Error::InvalidRequest(ref m)) if m.contains("allowed_actors")), "{bad}: {r:?}");
        }
        // Nothing named, no policy naming anyone: no constraint.
        assert_eq!(w.m.grant_may_act(&w.alice, &w.planner.agent, &res, &scopes, None).await.unwrap(), None);
    }
}
