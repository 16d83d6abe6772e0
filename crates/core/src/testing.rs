//! What the use cases' unit tests share: the service over a
//! [`MemoryStore`], a clock that moves only by hand, randomness from a
//! fixed seed, and a small world to act in (Alice, who is staff; Bob, who
//! is not; a calendar API; the policies below; agents with keys the tests
//! hold). Everything goes through the same `Mandate` the server builds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mandate_jose::kek::Kek;
use mandate_jose::{KeyAlg, SigningKey};
use mandate_model::AgentId;
use mandate_model::records::{Agent, AgentKind, User};
use time::OffsetDateTime;

use crate::audit::AuditQuery;
use crate::oauth::{ClientCredentials, IssuedToken};
use crate::ports::{Random, RandomError};
use crate::request::{BcAuthorizeRequest, ExchangeRequest, GrantRequest, TokenRequest};
use crate::store::{MemoryStore, Store};
use crate::{Caller, CheckAnswer, CheckRequest, CheckedResource, Checker, Config, Error, Mandate, ManualClock};
use crate::{NewAgent, NewResource, NewUser};

pub(crate) const ISSUER: &str = "https://mandate.test";
pub(crate) const CAL: &str = "https://calendar.example";

/// The calendar's policies (as the HTTP scenarios use them).
pub(crate) const POLICIES: &str = r#"
// Staff hold every calendar right.
permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
// Agents may read.
permit (principal is Agent, action in [Action::"list", Action::"get"], resource);
// Agents may be granted write, once the user approves the grant.
@approval("user")
permit (principal is Agent, action == Action::"create", resource is Api);
// Writing a sensitive event needs the user's approval each time.
@approval("user")
permit (principal is Agent, action == Action::"create", resource is Resource) when { resource.hasTag("sensitive") };
permit (principal is Agent, action == Action::"create", resource is Resource) unless { resource.hasTag("sensitive") };
// Agents may spawn helpers.
permit (principal is Agent, action == Action::"mandate:spawn", resource);
// Nobody may touch the board's calendar.
forbid (principal, action, resource is Resource) when { resource.hasTag("owner") && resource.getTag("owner") == "board" };
"#;

/// Randomness from a counter (SplitMix64): every run draws the same bytes,
/// and no two draws are alike.
#[derive(Debug, Default)]
pub(crate) struct SeededRandom(AtomicU64);

impl Random for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError> {
        for chunk in buf.chunks_mut(8) {
            let mut z = self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

/// The fixed start of every test's clock.
pub(crate) fn start() -> OffsetDateTime {
    time::macros::datetime!(2026-11-23 10:00:00 UTC)
}

/// An agent the test holds the key of.
pub(crate) struct Client {
    pub agent: Agent,
    pub key: SigningKey,
}

impl Client {
    pub(crate) fn id(&self) -> AgentId {
        self.agent.id
    }
}

/// The service over a memory store, and the world the tests act in.
pub(crate) struct World {
    pub m: Mandate,
    /// The store itself, read past the service's caches.
    pub store: Arc<MemoryStore>,
    pub clock: Arc<ManualClock>,
    pub alice: User,
    pub bob: User,
    /// Alice's agent.
    pub planner: Client,
    /// An ephemeral child of the planner, which policy lets the planner
    /// delegate to (Mandate's default policy).
    pub helper: Client,
    jtis: AtomicU64,
}

impl World {
    pub(crate) async fn new() -> World {
        World::with(|_| {}).await
    }

    /// A world whose configuration `tweak` may change.
    pub(crate) async fn with(tweak: impl FnOnce(&mut Config)) -> World {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(start()));
        let mut config = Config::new(ISSUER);
        tweak(&mut config);
        let kek = Kek::from_bytes(&[7u8; 32]).expect("a key-encryption key");
        let m = Mandate::open(store.clone(), clock.clone(), Arc::new(SeededRandom::default()), kek, config)
            .await
            .expect("the service opens");
        let user = |name: &str, email: &str, groups: &[&str]| NewUser {
            name: name.into(),
            email: email.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            attributes: BTreeMap::new(),
            password: None,
        };
        let alice = m.create_user(Caller::Admin, user("Alice", "alice@example.com", &["staff"])).await.expect("alice");
        let bob = m.create_user(Caller::Admin, user("Bob", "bob@example.com", &[])).await.expect("bob");
        let scopes = BTreeMap::from([
            ("read".to_owned(), vec!["list".to_owned(), "get".to_owned()]),
            ("write".to_owned(), vec!["create".to_owned()]),
        ]);
        m.create_resource(
            Caller::Admin,
            NewResource {
                identifier: CAL.into(),
                name: "Calendar".into(),
                scopes,
                jwks: None,
                gateway: None,
                exchange_to: Vec::new(),
                context: Default::default(),
                authorization_details_types: Default::default(),
            },
        )
        .await
        .expect("the calendar");
        m.put_policies(Caller::Admin, POLICIES).await.expect("the policies");
        let planner = register(&m, alice.id, None, Some(&["read", "write"])).await.expect("the planner");
        let helper =
            register(&m, alice.id, Some(planner.agent.id), Some(&["read", "write"])).await.expect("the helper");
        World { m, store, clock, alice, bob, planner, helper, jtis: AtomicU64::new(0) }
    }

    /// Registers an agent of `owner` (an ephemeral child of `parent` when
    /// given) with a fresh key and a read/write ceiling.
    pub(crate) async fn agent(&self, owner: mandate_model::UserId, parent: Option<AgentId>) -> Result<Client, Error> {
        register(&self.m, owner, parent, Some(&["read", "write"])).await
    }

    /// Registers an agent with the ceiling `scopes` (none: no ceiling).
    pub(crate) async fn agent_with(
        &self,
        owner: mandate_model::UserId,
        parent: Option<AgentId>,
        scopes: Option<&[&str]>,
    ) -> Result<Client, Error> {
        register(&self.m, owner, parent, scopes).await
    }

    /// A fresh `private_key_jwt` assertion for `c`.
    pub(crate) fn assertion(&self, c: &Client) -> String {
        let now = self.clock_now().unix_timestamp();
        let n = self.jtis.fetch_add(1, Ordering::Relaxed);
        let claims = serde_json::json!({
            "iss": c.id().to_string(), "sub": c.id().to_string(), "aud": ISSUER,
            "iat": now, "exp": now + 120, "jti": format!("jti-{n}"),
        });
        mandate_jose::jws::sign(&c.key, "JWT", &claims).expect("an assertion")
    }

    /// Credentials carrying `assertion`.
    pub(crate) fn with_assertion(assertion: String) -> ClientCredentials {
        ClientCredentials::Assertion {
            assertion_type: mandate_jose::assertion::CLIENT_ASSERTION_TYPE.into(),
            assertion,
            client_id: None,
        }
    }

    /// Fresh credentials for `c`.
    pub(crate) fn creds(&self, c: &Client) -> ClientCredentials {
        Self::with_assertion(self.assertion(c))
    }

    pub(crate) fn clock_now(&self) -> OffsetDateTime {
        crate::Clock::now(self.clock.as_ref())
    }

    /// Any grant at the token endpoint, as `c`.
    pub(crate) async fn grant(&self, c: &Client, grant: GrantRequest) -> Result<IssuedToken, Error> {
        self.m.token(&self.creds(c), TokenRequest { grant: Ok(grant), dpop: Vec::new() }).await
    }

    /// `client_credentials` for `scope` at `resource`, as `c`.
    pub(crate) async fn client_credentials(
        &self,
        c: &Client,
        resource: &str,
        scope: &str,
    ) -> Result<IssuedToken, Error> {
        let g = GrantRequest::ClientCredentials { scope: Some(scope.into()), resources: vec![resource.into()] };
        self.grant(c, g).await
    }

    /// `POST /oauth/bc-authorize` by `c` for Alice, on the calendar.
    pub(crate) async fn ciba(&self, c: &Client, scope: &str) -> Result<crate::BcAuthorized, Error> {
        let req = BcAuthorizeRequest {
            login_hint: self.alice.email.clone(),
            scope: Some(scope.into()),
            resources: vec![CAL.into()],
            binding_message: Some("plan the offsite".into()),
            requested_expiry: None,
            allowed_actors: None,
            client_notification_token: None,
            authorization_details: None,
        };
        self.m.bc_authorize(&self.creds(c), Ok(req)).await
    }

    /// A CIBA poll by `c`.
    pub(crate) async fn poll(&self, c: &Client, auth_req_id: &str) -> Result<IssuedToken, Error> {
        self.grant(c, GrantRequest::Ciba { auth_req_id: auth_req_id.into() }).await
    }

    /// A grant of `scope` from Alice to `c` that policy self-authorises,
    /// and its first tokens.
    pub(crate) async fn granted(&self, c: &Client, scope: &str) -> IssuedToken {
        let asked = self.ciba(c, scope).await.expect("bc-authorize");
        self.poll(c, &asked.auth_req_id).await.expect("the first tokens")
    }

    /// Token exchange of `subject` by `c`, optionally narrowed to `scope`.
    pub(crate) async fn exchange(&self, c: &Client, subject: &str, scope: Option<&str>) -> Result<IssuedToken, Error> {
        let x = ExchangeRequest {
            subject_token: subject.into(),
            actor_token: None,
            resources: Vec::new(),
            audiences: Vec::new(),
            authorization_details: None,
            scope: scope.map(str::to_owned),
            subject_token_dpop: None,
        };
        self.grant(c, GrantRequest::Exchange(x)).await
    }

    /// `POST /v1/check` as the admin, for `action` on the event `id`.
    pub(crate) async fn check(&self, token: &str, action: &str, id: &str, properties: &[(&str, &str)]) -> CheckAnswer {
        let req = CheckRequest {
            token: token.into(),
            action: action.into(),
            resource: CheckedResource {
                kind: "event".into(),
                id: id.into(),
                properties: properties.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            },
            context: None,
            client_address: None,
            authorization_details: None,
            probe: false,
        };
        self.m.check(&Checker::Admin, &req).await.expect("a decision")
    }

    /// Whether the token is live as a whole, as every use checks.
    pub(crate) async fn is_live(&self, token: &str) -> bool {
        self.m.token_status(token).await.expect("a store that answers").is_ok()
    }

    /// The stored record of an issued token.
    pub(crate) async fn record(&self, issued: &IssuedToken) -> mandate_model::records::TokenRecord {
        self.store.token(issued.jti).await.expect("a store that answers").expect("the token's record")
    }

    /// Every event of `kind` so far.
    pub(crate) async fn events(&self, kind: &str) -> Vec<mandate_audit::Event> {
        let q = AuditQuery { kind: Some(kind.into()), ..AuditQuery::page(0) };
        self.store.audit_events(&q).await.expect("a store that answers")
    }

    /// The number of events so far.
    pub(crate) async fn trail_len(&self) -> u64 {
        self.store.audit_head().await.expect("a store that answers").map_or(0, |(seq, _)| seq)
    }
}

/// Registers an agent of `owner` (an ephemeral child of `parent` when
/// given) with a fresh key and a read/write ceiling.
async fn register(
    m: &Mandate,
    owner: mandate_model::UserId,
    parent: Option<AgentId>,
    scopes: Option<&[&str]>,
) -> Result<Client, Error> {
    let key = SigningKey::generate(KeyAlg::EdDSA).map_err(|e| Error::Unavailable(e.to_string()))?;
    let new = NewAgent {
        name: "Agent".into(),
        owner,
        kind: parent.map(|_| AgentKind::Ephemeral),
        parent,
        ttl_seconds: None,
        scopes: scopes.map(|s| s.iter().map(|x| (*x).to_owned()).collect()),
        jwks: Some(serde_json::json!({"keys": [key.public().to_json()]})),
        redirect_uris: Vec::new(),
        description: None,
        token_endpoint_auth_method: None,
        federated_credentials: Vec::new(),
        limits: Default::default(),
        backchannel_token_delivery_mode: None,
        backchannel_client_notification_endpoint: None,
    };
    let (agent, _) = m.create_agent(Caller::Admin, new).await?;
    Ok(Client { agent, key })
}
