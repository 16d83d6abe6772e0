//! `mandate-scale`: seeds a SQLite store with the data set of issue 18
//! ("Scale", the seeds' 80-to-1): 10,000 users, 100,000 persistent agents,
//! 700,000 ephemeral agents spawned by them and since retired, 2,000,000
//! grants, the tokens and audit events of the last 35 days, and writes a
//! set of 10,000 Cedar policies to a file (installed through
//! `PUT /v1/policies` by `bench/scale/run.sh`, which validates them).
//!
//! Every record goes through the store crate's own `Store::commit`, as the
//! server writes it: the same SQL, the same indexes, `agents.last_used_at`
//! moved by each token insert, a grant's last use by `TouchGrant`, and the
//! audit events sealed into the hash chain by the writer, in time order.
//! Only the batching differs: a thousand mutations per change.
//!
//! Randomness is a fixed-seed generator, so a seed and a scale always give
//! the same shape (ids and times follow the wall clock at the run).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Parser;
use mandate_audit::Event;
use mandate_core::Clock;
use mandate_core::audit::{AuditRecord, event_time, kind};
use mandate_core::store::{Change, Mutation, Store};
use mandate_model::actors::MayAct;
use mandate_model::limits::AgentLimits;
use mandate_model::records::{
    Agent, AgentKind, AgentOrigin, AgentStatus, ClientId, Grant, GrantStatus, Resource, SuspendedBy, TokenRecord, User,
    UserStatus,
};
use mandate_model::{AgentId, GrantId, Jti, ResourceId, ScopeSet, UserId};
use mandate_store_sqlite::SqliteStore;
use time::{Duration, OffsetDateTime};
use tokio::task::JoinSet;
use ulid::Ulid;

#[derive(Parser, Debug)]
#[command(about = "Seeds a Mandate SQLite store with the issue 18 scale data set")]
struct Args {
    /// The store file (`<data-dir>/mandate.db`); created and migrated if absent.
    #[arg(long)]
    db: PathBuf,
    /// Where to write the Cedar policy set (10,000 policies at scale 1).
    #[arg(long)]
    policies_out: PathBuf,
    /// Multiplies every count (0.01 for a quick try).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    #[arg(long, default_value_t = 18)]
    seed: u64,
    /// Mutations per committed change.
    #[arg(long, default_value_t = 1_000)]
    chunk: usize,
}

/// The resources: short identifiers keep 10,000 policies under the 1 MiB
/// policy-text limit.
const APIS: [&str; 8] = ["crm", "calendar", "mail", "files", "tickets", "billing", "wiki", "search"];
const GROUPS: [&str; 5] = ["eng", "ops", "sales", "support", "finance"];
/// The audit trail holds this much of the past: the review's default
/// windows are 30 days.
const TRAIL_DAYS: i64 = 35;

/// splitmix64: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
    /// True with probability `percent` / 100.
    fn pct(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn u128(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
    /// A time in `[from, to)`.
    fn between(&mut self, from: OffsetDateTime, to: OffsetDateTime) -> OffsetDateTime {
        let span = (to - from).whole_milliseconds().max(1) as u64;
        from + Duration::milliseconds((self.next() % span) as i64)
    }
    fn ulid(&mut self, at: OffsetDateTime) -> Ulid {
        let ms = u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        Ulid::from_parts(ms, self.u128())
    }
    fn jwks(&mut self) -> serde_json::Value {
        let mut x = [0u8; 32];
        for chunk in x.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(x);
        let kid = format!("{:016x}", self.next());
        serde_json::json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid }] })
    }
}

struct PAgent {
    id: AgentId,
    owner: usize,
    active: bool,
    created: OffsetDateTime,
    scopes: Option<String>,
}

struct LiveGrant {
    id: GrantId,
    user: usize,
    agent: usize,
    api: usize,
    scopes: String,
    from: OffsetDateTime,
    to: OffsetDateTime,
}

/// One use in the trail: a token issued (with its grant, if any), or an
/// allowed check of it.
struct Use {
    at: OffsetDateTime,
    agent: usize,
    grant: Option<usize>,
    api: usize,
    check: bool,
}

/// Commits changes, a few in flight (the writer folds them into one
/// transaction), or one at a time when order matters (the audit trail).
struct Committer {
    store: Arc<SqliteStore>,
    chunk: usize,
    pending: Change,
    in_pending: usize,
    inflight: JoinSet<Result<()>>,
    depth: usize,
    mutations: u64,
}

impl Committer {
    async fn push(&mut self, m: Mutation) -> Result<()> {
        self.pending.push(m);
        self.in_pending += 1;
        if self.in_pending >= self.chunk {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.in_pending == 0 {
            return Ok(());
        }
        let change = std::mem::take(&mut self.pending);
        self.mutations += self.in_pending as u64;
        self.in_pending = 0;
        let store = self.store.clone();
        self.inflight.spawn(async move { store.commit(change).await.map(|_| ()).context("commit") });
        while self.inflight.len() >= self.depth {
            self.join_one().await?;
        }
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        if let Some(done) = self.inflight.join_next().await {
            done.context("commit task")??;
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<()> {
        self.flush().await?;
        while !self.inflight.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }
}

fn scaled(n: f64, scale: f64) -> usize {
    ((n * scale).round() as usize).max(1)
}

fn scopes(s: &str) -> Result<ScopeSet> {
    ScopeSet::parse(s).map_err(|e| anyhow::anyhow!("scope {s}: {e}"))
}

fn phase(name: &str, started: Instant, count: usize) {
    eprintln!("[scale] {name}: {count} in {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.scale > 0.0 && args.scale <= 10.0) {
        bail!("--scale must be in (0, 10]");
    }
    let n_users = scaled(10_000.0, args.scale);
    let n_persistent = scaled(100_000.0, args.scale);
    let n_ephemeral = scaled(700_000.0, args.scale);
    let n_grants = scaled(2_000_000.0, args.scale);
    let n_policies = scaled(10_000.0, args.scale);
    let mut rng = Rng(args.seed);
    // The seeded times follow the wall clock, read through the Clock port.
    let now = mandate_core::SystemClock.now();
    let total = Instant::now();
    let store = Arc::new(SqliteStore::open(&args.db).await.context("opening the store")?);
    let mut c = Committer {
        store: store.clone(),
        chunk: args.chunk.max(1),
        pending: Change::new(),
        in_pending: 0,
        inflight: JoinSet::new(),
        depth: 3,
        mutations: 0,
    };

    // Resources: a checker id for the check events, and their identifiers.
    let mut resources = Vec::new();
    for (i, name) in APIS.iter().enumerate() {
        let created = now - Duration::days(1_000) + Duration::hours(i as i64);
        let id = ResourceId::from_ulid(rng.ulid(created));
        let scopes_map = BTreeMap::from([
            ("read".to_owned(), vec!["list".to_owned(), "get".to_owned()]),
            ("write".to_owned(), vec!["create".to_owned(), "update".to_owned()]),
            ("admin".to_owned(), Vec::new()),
        ]);
        let identifier = format!("https://{name}.example");
        c.push(Mutation::InsertResource(Resource {
            id,
            identifier: identifier.clone(),
            name: format!("{name} API"),
            scopes: scopes_map,
            jwks: None,
            created_at: created,
            gateway: None,
            exchange_to: Vec::new(),
            context: BTreeMap::new(),
            authorization_details_types: BTreeMap::new(),
        }))
        .await?;
        resources.push((id, identifier));
    }

    // Users: created over the three years before the last 400 days; a few
    // disabled (leavers); most in one or two groups.
    let t = Instant::now();
    let mut users: Vec<UserId> = Vec::with_capacity(n_users);
    let first = now - Duration::days(1_100);
    let step = Duration::days(700) / n_users as u32;
    for i in 0..n_users {
        let created = first + step * i as u32;
        let id = UserId::from_ulid(rng.ulid(created));
        let mut groups = Vec::new();
        if rng.pct(75) {
            groups.extend(GROUPS.get(rng.below(GROUPS.len())).map(|g| (*g).to_owned()));
            if rng.pct(20)
                && let Some(g) = GROUPS.get(rng.below(GROUPS.len())).map(|g| (*g).to_owned())
                && !groups.contains(&g)
            {
                groups.push(g);
            }
        }
        let status = if rng.pct(4) { UserStatus::Disabled } else { UserStatus::Active };
        c.push(Mutation::InsertUser(User {
            id,
            name: format!("User {i}"),
            email: format!("user{i}@scale.example"),
            groups,
            scim_groups: Vec::new(),
            attributes: BTreeMap::from([("site".to_owned(), format!("site-{}", i % 12))]),
            status,
            created_at: created,
            password_hash: None,
        }))
        .await?;
        users.push(id);
    }
    c.drain().await?;
    phase("users", t, n_users);

    // Persistent agents: created over the last 700 days, each with a key;
    // some with a scope ceiling or credential limits; a few suspended or
    // retired.
    let t = Instant::now();
    let mut agents: Vec<PAgent> = Vec::with_capacity(n_persistent);
    let first = now - Duration::days(700);
    let step = Duration::days(699) / n_persistent as u32;
    for i in 0..n_persistent {
        let created = first + step * i as u32;
        let id = AgentId::from_ulid(rng.ulid(created));
        let owner = rng.below(users.len());
        let r = rng.below(100);
        let (status, suspended_by) = match r {
            0..=3 => (AgentStatus::Suspended, Some(if r < 2 { SuspendedBy::Owner } else { SuspendedBy::Admin })),
            4..=7 => (AgentStatus::Retired, None),
            _ => (AgentStatus::Active, None),
        };
        let ceiling = match rng.below(10) {
            0..=3 => None,
            4..=7 => Some("read".to_owned()),
            _ => Some("read write".to_owned()),
        };
        let limits = if rng.pct(10) {
            AgentLimits { max_token_ttl: Some(600), ..AgentLimits::default() }
        } else {
            AgentLimits::default()
        };
        c.push(Mutation::InsertAgent(Agent {
            id,
            name: format!("svc-{i}"),
            owner: *users.get(owner).context("owner")?,
            kind: AgentKind::Persistent,
            parent: None,
            status,
            expires_at: None,
            description: Some(format!("service agent {i}")),
            scopes: ceiling.as_deref().map(scopes).transpose()?,
            jwks: Some(rng.jwks()),
            redirect_uris: Vec::new(),
            created_at: created,
            secret_hash: None,
            suspended_by,
            origin: AgentOrigin::Admin,
            metadata_url: None,
            public: false,
            federated_credentials: Vec::new(),
            limits,
        }))
        .await?;
        agents.push(PAgent { id, owner, active: status == AgentStatus::Active, created, scopes: ceiling });
    }
    c.drain().await?;
    phase("persistent agents", t, n_persistent);

    // Ephemeral agents: spawned over the last 90 days with a one-hour TTL,
    // all since retired. A third by 500 busy orchestrators (old agents),
    // the rest by any active agent created before them.
    let t = Instant::now();
    let active: Vec<usize> = (0..agents.len()).filter(|&i| agents.get(i).is_some_and(|a| a.active)).collect();
    let busy: Vec<usize> = active.iter().copied().take(500).collect();
    let first = now - Duration::days(90);
    let step = (Duration::days(90) - Duration::hours(2)) / n_ephemeral as u32;
    for i in 0..n_ephemeral {
        let created = first + step * i as u32;
        let mut p = if rng.pct(33) { busy.get(rng.below(busy.len())) } else { active.get(rng.below(active.len())) };
        if p.and_then(|&p| agents.get(p)).is_none_or(|a| a.created > created) {
            p = busy.get(rng.below(busy.len()));
        }
        let parent = p.and_then(|&p| agents.get(p)).context("no active parent")?;
        let id = AgentId::from_ulid(rng.ulid(created));
        c.push(Mutation::InsertAgent(Agent {
            id,
            name: format!("task-{i}"),
            owner: *users.get(parent.owner).context("owner")?,
            kind: AgentKind::Ephemeral,
            parent: Some(parent.id),
            status: AgentStatus::Retired,
            expires_at: Some(created + Duration::hours(1)),
            description: None,
            scopes: Some(scopes("read")?),
            jwks: Some(rng.jwks()),
            redirect_uris: Vec::new(),
            created_at: created,
            secret_hash: None,
            suspended_by: None,
            origin: AgentOrigin::Spawned,
            metadata_url: None,
            public: false,
            federated_credentials: Vec::new(),
            limits: AgentLimits::default(),
        }))
        .await?;
    }
    c.drain().await?;
    phase("ephemeral agents (retired)", t, n_ephemeral);

    // Grants: given over the last year, for 30 days (70%) or 90; 30%
    // revoked before their end, and every grant of a retired agent. Those
    // still active and alive inside the trail's window get used below.
    let t = Instant::now();
    let mut live_grants: Vec<LiveGrant> = Vec::new();
    let mut live_now = 0usize;
    let first = now - Duration::days(365);
    let step = (Duration::days(365) - Duration::hours(1)) / n_grants as u32;
    let trail_start = now - Duration::days(TRAIL_DAYS);
    for i in 0..n_grants {
        let created = first + step * i as u32;
        let ai = rng.below(agents.len());
        let agent = agents.get(ai).context("agent")?;
        let user = if rng.pct(70) { agent.owner } else { rng.below(users.len()) };
        let api = rng.below(APIS.len());
        let scope = match rng.below(10) {
            0..=5 => "read",
            6..=8 => "read write",
            _ => "write",
        };
        let lifetime = if rng.pct(70) { Duration::days(30) } else { Duration::days(90) };
        let expires = created + lifetime;
        let revoked = !agent.active || rng.pct(30);
        let revoked_at = if revoked {
            let end = expires.min(now);
            Some(rng.between(created, end))
        } else {
            None
        };
        let id = GrantId::from_ulid(rng.ulid(created));
        let may_act = if rng.pct(3) {
            let other = agents.get(rng.below(agents.len())).context("agent")?;
            Some(MayAct::parse(&other.id.to_string()).map_err(|e| anyhow::anyhow!("may_act: {e}"))?)
        } else {
            None
        };
        c.push(Mutation::InsertGrant(Grant {
            id,
            user: *users.get(user).context("user")?,
            agent: agent.id,
            resource: resources.get(api).map(|r| r.1.clone()).context("api")?,
            scopes: scopes(scope)?,
            purpose: Some("scale benchmark".into()),
            approved_by: if rng.pct(50) { "policy".into() } else { users.get(user).context("user")?.to_string() },
            status: if revoked { GrantStatus::Revoked } else { GrantStatus::Active },
            created_at: created,
            expires_at: expires,
            revoked_at,
            last_used_at: None,
            may_act,
            authorization_details: Default::default(),
            reapproved_at: None,
            reapprovals: 0,
            // An expired grant was reported lapsed when it expired, as
            // housekeeping (and the 0026/0028 migrations) would have.
            lapsed_at: (!revoked && expires <= now).then_some(expires),
        }))
        .await?;
        if !revoked && expires > now {
            live_now += 1;
        }
        if !revoked && expires > trail_start && rng.pct(70) {
            live_grants.push(LiveGrant {
                id,
                user,
                agent: ai,
                api,
                scopes: scope.to_owned(),
                from: created.max(trail_start),
                to: expires.min(now) - Duration::minutes(1),
            });
        }
    }
    c.drain().await?;
    phase("grants", t, n_grants);
    eprintln!("[scale] grants live now: {live_now}; used in the last {TRAIL_DAYS} days: {}", live_grants.len());

    // The trail: 60% of the active agents took 1–15 client_credentials
    // tokens in the last 35 days; each used grant 1–6 tokens; 15% of the
    // tokens were then checked (allowed) by their resource. In time order.
    let t = Instant::now();
    let mut uses: Vec<Use> = Vec::new();
    for &ai in &active {
        if !rng.pct(60) {
            continue;
        }
        let a = agents.get(ai).context("agent")?;
        let from = a.created.max(trail_start);
        for _ in 0..1 + rng.below(15) {
            let at = rng.between(from, now - Duration::minutes(1));
            uses.push(Use { at, agent: ai, grant: None, api: rng.below(APIS.len()), check: false });
        }
    }
    for (gi, g) in live_grants.iter().enumerate() {
        for _ in 0..1 + rng.below(6) {
            let at = rng.between(g.from, g.to);
            uses.push(Use { at, agent: g.agent, grant: Some(gi), api: g.api, check: false });
        }
    }
    let tokens = uses.len();
    for i in 0..tokens {
        if rng.pct(15)
            && let Some(u) = uses.get(i)
        {
            let at = u.at + Duration::seconds(1 + rng.below(600) as i64);
            if at < now {
                let (agent, grant, api) = (u.agent, u.grant, u.api);
                uses.push(Use { at, agent, grant, api, check: true });
            }
        }
    }
    uses.sort_by_key(|u| u.at);
    // Order matters: one change at a time.
    c.depth = 1;
    let mut last_jti: Vec<Option<Jti>> = vec![None; agents.len()];
    let mut grant_jti: Vec<Option<Jti>> = vec![None; live_grants.len()];
    for u in &uses {
        let a = agents.get(u.agent).context("agent")?;
        let (api_id, api) = resources.get(u.api).context("api")?;
        let g = u.grant.and_then(|gi| live_grants.get(gi));
        let (subject, chain, scope) = match g {
            Some(g) => (users.get(g.user).context("user")?.to_string(), vec![a.id], g.scopes.clone()),
            None => (a.id.to_string(), vec![a.id], a.scopes.clone().unwrap_or_else(|| "read".into())),
        };
        let mut event = Event::new(if u.check { kind::CHECK } else { kind::TOKEN_ISSUED }, event_time(u.at));
        event.decision = Some("allow".into());
        event.subject = Some(subject.clone());
        event.actor = Some(a.id.to_string());
        event.chain = chain.iter().map(ToString::to_string).collect();
        if let Some(g) = g {
            event.chain.insert(0, subject.clone());
            event.grant_id = Some(g.id.to_string());
        }
        event.resource = Some(api.clone());
        event.scope = Some(scope.clone());
        if u.check {
            let jti = match u.grant {
                Some(gi) => grant_jti.get(gi).copied().flatten(),
                None => last_jti.get(u.agent).copied().flatten(),
            };
            event.client_id = Some(api_id.to_string());
            event.action = Some(if scope.contains("read") { "get" } else { "create" }.into());
            event.jti = jti.map(|j| j.to_string());
            event.reason = Some(format!("Api::\"{api}\": allowed by policy"));
            c.push(AuditRecord::new(event).mutation()).await?;
            continue;
        }
        let jti = Jti::from_ulid(rng.ulid(u.at));
        event.client_id = Some(a.id.to_string());
        event.jti = Some(jti.to_string());
        let ttl = if g.is_some() { Duration::minutes(15) } else { Duration::minutes(5) };
        c.push(Mutation::InsertToken(TokenRecord {
            jti,
            client_id: ClientId::Agent(a.id),
            subject,
            audience: api.clone(),
            scopes: scopes(&scope)?,
            grant: g.map(|g| g.id),
            parent: None,
            chain,
            issued_at: u.at,
            expires_at: u.at + ttl,
            cnf_jkt: None,
            status_idx: None,
            family: None,
            revoked_at: None,
        }))
        .await?;
        if let Some(gi) = u.grant {
            let g = live_grants.get(gi).context("grant")?;
            c.push(Mutation::TouchGrant { id: g.id, at: u.at }).await?;
            if let Some(slot) = grant_jti.get_mut(gi) {
                *slot = Some(jti);
            }
        } else if let Some(slot) = last_jti.get_mut(u.agent) {
            *slot = Some(jti);
        }
        c.push(AuditRecord::new(event).mutation()).await?;
    }
    c.drain().await?;
    phase("tokens and audit events", t, uses.len());
    eprintln!("[scale] tokens issued: {tokens}; checks: {}", uses.len() - tokens);

    // Policies: per-agent and per-user permits, forbids, and @approval
    // permits, written tight (the policy text is limited to 1 MiB).
    let mut text = String::new();
    for i in 0..n_policies {
        let a = agents.get(rng.below(agents.len())).context("agent")?;
        let api = APIS.get(rng.below(APIS.len())).context("api")?;
        let user = users.get(rng.below(users.len())).context("user")?;
        match i % 20 {
            0..=10 => {
                text.push_str(&format!("permit(principal==Agent::\"{}\",action==Action::\"get\",resource);\n", a.id))
            }
            11..=12 => text.push_str(&format!("permit(principal==User::\"{user}\",action,resource);\n")),
            13..=15 => text.push_str(&format!(
                "permit(principal==User::\"{user}\",action,resource==Api::\"https://{api}.example\");\n"
            )),
            16..=17 => {
                text.push_str(&format!("forbid(principal==Agent::\"{}\",action==Action::\"update\",resource);\n", a.id))
            }
            _ => text.push_str(&format!(
                "@approval(\"user\")permit(principal==Agent::\"{}\",action==Action::\"create\",resource);\n",
                a.id
            )),
        }
    }
    std::fs::write(&args.policies_out, &text).context("writing the policies")?;
    eprintln!("[scale] {n_policies} policies, {} bytes, in {}", text.len(), args.policies_out.display());
    drop(c);
    drop(store);
    let secs = total.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "users": n_users, "persistent_agents": n_persistent, "ephemeral_agents": n_ephemeral,
            "grants": n_grants, "grants_live": live_now, "tokens": tokens, "audit_events": uses.len(),
            "policies": n_policies, "policy_bytes": text.len(), "seconds": secs,
        })
    );
    Ok(())
}
