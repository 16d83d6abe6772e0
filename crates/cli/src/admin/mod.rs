//! The admin subcommands: `mandate users|agents|resources|policies|grants|
//! approvals …`, `login`, `token`, `introspect`, `events`, `ready` and
//! `completions`. Each one calls the HTTP API (DESIGN §7, §12) and prints a
//! table, one field (`--field`) or the server's JSON (`--json`).

pub mod client;
pub mod login;
pub mod table;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use client::{Api, ServerArgs};
use login::Credentials;
use table::Column;

/// How a command's answer is printed.
#[derive(Debug, Clone, Args)]
pub struct Output {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print only this member of the answer (e.g. `id`), for scripts.
    #[arg(long, global = true)]
    pub field: Option<String>,
}

/// Paging through a list (`?limit=&cursor=` → `next_cursor`).
#[derive(Debug, Clone, Args)]
pub struct Page {
    /// Items per page.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Start after this cursor (a previous answer's `next_cursor`).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow `next_cursor` to the end.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users.
    List {
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Show one user.
    Get { id: String },
    /// Create a user.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        /// A group (repeat for more).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// An attribute as NAME=VALUE (repeat for more).
        #[arg(long = "attribute", value_parser = key_value)]
        attributes: Vec<(String, String)>,
        /// Read a password for the web sign-in from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's groups, attributes or status; in force at the next
    /// decision.
    Update {
        id: String,
        /// The user's groups, replacing the old ones (repeat for more).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Remove every group.
        #[arg(long, conflicts_with = "groups")]
        no_groups: bool,
        /// The user's attributes as NAME=VALUE, replacing the old ones.
        #[arg(long = "attribute", value_parser = key_value)]
        attributes: Vec<(String, String)>,
        /// active or disabled.
        #[arg(long)]
        status: Option<String>,
    },
    /// Issue the user's own API token (approvals, own grants), shown once.
    Token {
        id: String,
        #[arg(long)]
        ttl_seconds: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List agents, filtered.
    List {
        #[arg(long)]
        owner: Option<String>,
        /// persistent or ephemeral.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        origin: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        parent: Option<String>,
        /// Last used before this time (RFC 3339).
        #[arg(long)]
        used_before: Option<String>,
        /// Last used after this time (RFC 3339).
        #[arg(long)]
        used_after: Option<String>,
        /// Expiring before this time (RFC 3339).
        #[arg(long)]
        expires_before: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Show one agent.
    Get { id: String },
    /// Register an agent. Without `--jwks` the server returns a client
    /// secret (development only).
    Create {
        #[arg(long)]
        name: String,
        /// The accountable owner (`usr_…`).
        #[arg(long)]
        owner: String,
        #[arg(long)]
        description: Option<String>,
        /// A scope of the agent's ceiling (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A JWK set file (`mandate keys client-keygen` prints one).
        #[arg(long)]
        jwks: Option<PathBuf>,
        /// persistent (default) or ephemeral.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        parent: Option<String>,
        #[arg(long)]
        ttl_seconds: Option<i64>,
        /// A redirect URI for the authorization code flow (repeat for more).
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
    },
    /// Change an agent's description, ceiling, owner or limits.
    Update {
        id: String,
        #[arg(long)]
        description: Option<String>,
        /// The new ceiling, replacing the old one (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A new accountable owner (`usr_…`).
        #[arg(long)]
        owner: Option<String>,
        /// The agent's credential limits, as a JSON file (DESIGN §13).
        #[arg(long)]
        limits: Option<PathBuf>,
    },
    /// Suspend an agent: its tokens die at once.
    Suspend { id: String },
    /// Resume a suspended agent.
    Resume { id: String },
    /// Retire an agent, for good, with its ephemeral descendants.
    Retire { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ResourcesCommand {
    /// List resources.
    List {
        #[command(flatten)]
        page: Page,
    },
    /// Show one resource.
    Get { id: String },
    /// Register a resource.
    Create {
        /// Its identifier, the tokens' audience (`https://…`).
        #[arg(long)]
        identifier: String,
        #[arg(long)]
        name: String,
        /// A scope as NAME=ACTION,ACTION… (`NAME=` covers the action of its
        /// own name); repeat for more.
        #[arg(long = "scope", value_parser = scope_actions, required = true)]
        scopes: Vec<(String, Vec<String>)>,
        /// The resource server's JWK set file, for `private_key_jwt`.
        #[arg(long)]
        jwks: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoliciesCommand {
    /// Print the policy set (Cedar text); `--json` adds its version and
    /// the schema.
    Get,
    /// Decide test cases under a candidate policy set without installing
    /// it (`POST /v1/policies/test`); exit 1 if any decision is not the
    /// expected one.
    Test {
        /// The candidate policy set (Cedar text).
        file: PathBuf,
        /// A JSON array of cases, or `{cases: [...], replay?: {since, limit}}`
        /// (docs/governance.md, "Policy testing").
        #[arg(long)]
        cases: PathBuf,
    },
    /// Replace the policy set with FILE (`-` for stdin), atomically.
    Put {
        file: PathBuf,
        /// Refuse (exit 6) unless the stored set is still this version.
        #[arg(long)]
        expected_version: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// List grants: all of them for the admin, a person's own with a user
    /// token.
    List {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Revoke a grant and every token issued under it.
    Revoke { id: String },
    /// Renew a grant that ends within the review window: policy decides
    /// again, and may ask a person first (the answer then says `pending`
    /// and names the approval).
    Reapprove {
        id: String,
        /// A new purpose for the grant, shown to whoever approves.
        #[arg(long)]
        purpose: Option<String>,
    },
}

/// `mandate review …`: access review campaigns (DESIGN §12).
#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// Review campaigns: create, list, show.
    Campaigns {
        #[command(subcommand)]
        command: CampaignsCommand,
    },
    /// Decide a review item: keep, narrow (to --scopes, or the finding's
    /// suggestion) or revoke; applied at once.
    Decide {
        /// The item (`rvi_…`).
        item: String,
        #[arg(value_parser = ["keep", "narrow", "revoke"])]
        decision: String,
        /// With narrow: the scopes to keep, space- or comma-separated.
        #[arg(long)]
        scopes: Option<String>,
    },
    /// Review items: those assigned to you (`--assignee me`, the default
    /// with a person's token), or any for the admin and auditors.
    Items {
        #[arg(long)]
        assignee: Option<String>,
        #[arg(long)]
        campaign: Option<String>,
        /// `open` (undecided items of open campaigns, the default) or `all`.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Grants that expired without being revoked, as housekeeping
    /// reported them (`GET /v1/review/lapsed`), newest first: exit 0.
    Lapsed {
        /// Only those reported at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        page: Page,
    },
}

#[derive(Debug, Subcommand)]
pub enum CampaignsCommand {
    /// Start a campaign over the findings of a scope (every finding when
    /// neither --owner nor --resource is given).
    Create {
        /// Only findings whose accountable owner is this user (`usr_…`).
        #[arg(long)]
        owner: Option<String>,
        /// Only findings about grants for this resource identifier.
        #[arg(long)]
        resource: Option<String>,
        /// RFC 3339, e.g. 2026-12-31T17:00:00Z.
        #[arg(long)]
        deadline: String,
        /// What undecided items become at the deadline.
        #[arg(long, value_parser = ["keep", "revoke"])]
        default: String,
    },
    /// List campaigns, newest first, with their progress.
    List {
        /// `open` or `closed`.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// One campaign and its items.
    Show {
        id: String,
        #[command(flatten)]
        page: Page,
    },
}

const CAMPAIGN_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("STATUS", "status"),
    ("OWNER", "scope.owner"),
    ("RESOURCE", "scope.resource"),
    ("DEADLINE", "deadline"),
    ("DEFAULT", "default"),
    ("DECIDED", "items_decided"),
    ("ITEMS", "items_total"),
];
const ITEM_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("KIND", "finding.kind"),
    ("SUBJECT", "finding.subject"),
    ("SUGGESTION", "finding.suggestion.action"),
    ("ASSIGNEE", "assignee"),
    ("DECISION", "decision"),
    ("BY", "decided_by"),
];

pub async fn review(cmd: ReviewCommand, out: Output) -> Result<()> {
    let api = Api::new(&out.server)?;
    match cmd {
        ReviewCommand::Lapsed { since, page } => lapsed(since, page, out).await,
        ReviewCommand::Campaigns { command: CampaignsCommand::Create { owner, resource, deadline, default } } => {
            let mut scope = json!({});
            if let Some(o) = owner {
                insert(&mut scope, "owner", json!(o));
            }
            if let Some(r) = resource {
                insert(&mut scope, "resource", json!(r));
            }
            let body = json!({ "scope": scope, "deadline": deadline, "default": default });
            show(&out, &api.post("/v1/review/campaigns", Some(body)).await?)
        }
        ReviewCommand::Campaigns { command: CampaignsCommand::List { status, page } } => {
            let mut q = Vec::new();
            push(&mut q, "status", &status);
            list(&api, &out, "/v1/review/campaigns", q, &page, CAMPAIGN_COLUMNS).await
        }
        ReviewCommand::Campaigns { command: CampaignsCommand::Show { id, page } } => {
            let mut q = Vec::new();
            if let Some(l) = page.limit {
                q.push(("limit", l.to_string()));
            }
            push(&mut q, "cursor", &page.cursor);
            let answer = api.get(&format!("/v1/review/campaigns/{}", seg(&id)?), &q).await?;
            if out.server.json || out.field.is_some() {
                return show(&out, &answer);
            }
            let mut head = answer.clone();
            if let Some(o) = head.as_object_mut() {
                o.remove("items");
            }
            print!("{}", table::record(&head));
            println!();
            print!("{}", table::render(&items(&answer), ITEM_COLUMNS));
            if let Some(c) = answer.get("next_cursor").and_then(Value::as_str) {
                eprintln!("more: --cursor {c}");
            }
            Ok(())
        }
        ReviewCommand::Items { assignee, campaign, status, page } => {
            let mut q = Vec::new();
            push(&mut q, "assignee", &assignee);
            push(&mut q, "campaign", &campaign);
            push(&mut q, "status", &status);
            list(&api, &out, "/v1/review/items", q, &page, ITEM_COLUMNS).await
        }
        ReviewCommand::Decide { item, decision, scopes } => {
            let mut body = json!({ "decision": decision });
            if let Some(s) = scopes {
                let list: Vec<&str> = s.split([' ', ',']).filter(|x| !x.is_empty()).collect();
                insert(&mut body, "scopes", json!(list));
            }
            show(&out, &api.post(&format!("/v1/review/items/{}/decide", seg(&item)?), Some(body)).await?)
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Live grants, tokens and ephemeral agents per owner, resource or
    /// scope, with their 24 h and 7 d peaks and churn (admin, auditors).
    Report {
        /// What to count by.
        #[arg(long, value_enum)]
        by: ReportBy,
        #[command(flatten)]
        page: Page,
    },
}

/// The dimension of `mandate inventory report`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReportBy {
    Owner,
    Resource,
    Scope,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List approvals (pending by default).
    List {
        /// pending, approved, denied or expired.
        #[arg(long, default_value = "pending")]
        status: String,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Approve a request.
    Approve { id: String },
    /// Deny a request.
    Deny { id: String },
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The agent's private key (PKCS#8, from `mandate keys client-keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// The agent's client id (`agt_…`).
    #[arg(long)]
    pub client_id: String,
    /// The audience the token is for.
    #[arg(long)]
    pub resource: String,
    /// A scope (repeat for more).
    #[arg(long = "scope", required = true)]
    pub scopes: Vec<String>,
    /// The issuer, the assertion's audience [default: the server URL].
    #[arg(long)]
    pub issuer: Option<String>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[arg(long)]
    pub actor: Option<String>,
    #[arg(long)]
    pub subject: Option<String>,
    #[arg(long)]
    pub jti: Option<String>,
    #[arg(long)]
    pub grant: Option<String>,
    /// An event type, e.g. `token.issued`.
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Events at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub limit: Option<u32>,
}

const USER_COLUMNS: &[Column] =
    &[("ID", "id"), ("NAME", "name"), ("EMAIL", "email"), ("GROUPS", "groups"), ("STATUS", "status")];
const AGENT_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("OWNER", "owner"),
    ("KIND", "kind"),
    ("STATUS", "status"),
    ("SCOPES", "scopes"),
    ("EXPIRES", "expires_at"),
];
const RESOURCE_COLUMNS: &[Column] = &[("ID", "id"), ("IDENTIFIER", "identifier"), ("NAME", "name")];
const GRANT_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("USER", "user"),
    ("AGENT", "agent"),
    ("RESOURCE", "resource"),
    ("SCOPES", "scopes"),
    ("STATUS", "status"),
    ("EXPIRES", "expires_at"),
];
const LAPSED_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("USER", "user"),
    ("AGENT", "agent"),
    ("RESOURCE", "resource"),
    ("SCOPES", "scopes"),
    ("EXPIRED", "expires_at"),
    ("REPORTED", "lapsed_at"),
];

const REPORT_COLUMNS: &[Column] = &[
    ("KEY", "key"),
    ("GRANTS", "live.grants"),
    ("TOKENS", "live.tokens"),
    ("EPHEMERAL", "live.ephemeral_agents"),
    ("PEAK7D_GRANTS", "peak_7d.grants"),
    ("PEAK7D_TOKENS", "peak_7d.tokens"),
    ("PEAK7D_EPHEMERAL", "peak_7d.ephemeral_agents"),
    ("NEW24H_GRANTS", "churn_24h.created.grants"),
    ("ENDED24H_GRANTS", "churn_24h.ended.grants"),
    ("NEW24H_TOKENS", "churn_24h.created.tokens"),
    ("ENDED24H_TOKENS", "churn_24h.ended.tokens"),
];
const APPROVAL_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("STATUS", "status"),
    ("AGENT", "agent"),
    ("ACTION", "action"),
    ("RESOURCE", "resource"),
    ("MESSAGE", "binding_message"),
];
const EVENT_COLUMNS: &[Column] = &[
    ("SEQ", "seq"),
    ("TIME", "time"),
    ("TYPE", "type"),
    ("DECISION", "decision"),
    ("ACTOR", "actor"),
    ("SUBJECT", "subject"),
    ("SCOPE", "scope"),
    ("REASON", "reason"),
];

/// Prints one answer as `out` asks.
fn show(out: &Output, v: &Value) -> Result<()> {
    if let Some(name) = &out.field {
        match v.get(name) {
            Some(Value::String(s)) => println!("{s}"),
            Some(other) if !other.is_null() => println!("{other}"),
            _ => bail!("the answer has no {name:?}"),
        }
    } else if out.server.json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!("{}", table::record(v));
    }
    Ok(())
}

/// The items of a list answer: `items`, or the one array it holds.
fn items(v: &Value) -> Vec<Value> {
    if let Some(a) = v.get("items").and_then(Value::as_array) {
        return a.clone();
    }
    v.as_object().and_then(|o| o.values().find_map(Value::as_array)).cloned().unwrap_or_default()
}

/// Fetches a list, following `next_cursor` with `--all`, and prints it.
async fn list(
    api: &Api,
    out: &Output,
    path: &str,
    mut query: Vec<(&str, String)>,
    page: &Page,
    columns: &[Column],
) -> Result<()> {
    if let Some(l) = page.limit {
        query.push(("limit", l.to_string()));
    }
    let mut cursor = page.cursor.clone();
    let mut all = Vec::new();
    let next = loop {
        let mut q = query.clone();
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let answer = api.get(path, &q).await?;
        all.extend(items(&answer));
        let next = answer.get("next_cursor").cloned().unwrap_or(Value::Null);
        match (page.all, next.as_str()) {
            (true, Some(c)) if Some(c) != cursor.as_deref() => cursor = Some(c.to_owned()),
            _ => break next,
        }
    };
    if out.server.json {
        println!("{}", serde_json::to_string_pretty(&json!({ "items": all, "next_cursor": next }))?);
    } else if let Some(name) = &out.field {
        for item in &all {
            println!("{}", table::cell(item.get(name)));
        }
    } else {
        print!("{}", table::render(&all, columns));
        if let Some(c) = next.as_str() {
            eprintln!("more: --cursor {c} (or --all)");
        }
    }
    Ok(())
}

fn push(q: &mut Vec<(&'static str, String)>, name: &'static str, v: &Option<String>) {
    if let Some(v) = v {
        q.push((name, v.clone()));
    }
}

/// Adds a member to a JSON object.
fn insert(body: &mut Value, name: &str, value: Value) {
    if let Some(o) = body.as_object_mut() {
        o.insert(name.to_owned(), value);
    }
}

fn seg(id: &str) -> Result<&str> {
    // Ids are `usr_…`-like; refuse anything that would change the path.
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        bail!("{id:?} is not an id");
    }
    Ok(id)
}

fn read_json(path: &Path) -> Result<Value> {
    let text = read_text(path)?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn read_text(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| "expected NAME=VALUE".to_owned())
}

fn scope_actions(s: &str) -> Result<(String, Vec<String>), String> {
    let (name, actions) = s.split_once('=').ok_or_else(|| "expected NAME=ACTION,ACTION… or NAME=".to_owned())?;
    let actions = actions.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
    Ok((name.to_owned(), actions))
}

pub async fn users(cmd: UsersCommand, out: Output) -> Result<()> {
    let api = Api::new(&out.server)?;
    match cmd {
        UsersCommand::List { status, page } => {
            let mut q = Vec::new();
            push(&mut q, "status", &status);
            list(&api, &out, "/v1/users", q, &page, USER_COLUMNS).await
        }
        UsersCommand::Get { id } => show(&out, &api.get(&format!("/v1/users/{}", seg(&id)?), &[]).await?),
        UsersCommand::Create { name, email, groups, attributes, password_stdin } => {
            let mut body = json!({ "name": name, "email": email, "groups": groups,
                "attributes": attributes.into_iter().collect::<std::collections::BTreeMap<_, _>>() });
            if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
                insert(&mut body, "password", json!(line.trim_end_matches(['\r', '\n'])));
            }
            show(&out, &api.post("/v1/users", Some(body)).await?)
        }
        UsersCommand::Update { id, groups, no_groups, attributes, status } => {
            let mut body = Map::new();
            if no_groups || !groups.is_empty() {
                body.insert("groups".into(), json!(groups));
            }
            if !attributes.is_empty() {
                body.insert(
                    "attributes".into(),
                    json!(attributes.into_iter().collect::<std::collections::BTreeMap<_, _>>()),
                );
            }
            if let Some(s) = status {
                body.insert("status".into(), json!(s));
            }
            if body.is_empty() {
                bail!("nothing to change: give --group, --no-groups, --attribute or --status");
            }
            show(&out, &api.patch(&format!("/v1/users/{}", seg(&id)?), Value::Object(body)).await?)
        }
        UsersCommand::Token { id, ttl_seconds } => {
            let body = ttl_seconds.map(|t| json!({ "ttl_seconds": t }));
            let answer = api.post(&format!("/v1/users/{}/tokens", seg(&id)?), body).await?;
            show(&out, &answer)
        }
    }
}

pub async fn agents(cmd: AgentsCommand, out: Output) -> Result<()> {
    let api = Api::new(&out.server)?;
    match cmd {
        AgentsCommand::List { owner, kind, origin, status, parent, used_before, used_after, expires_before, page } => {
            let mut q = Vec::new();
            for (name, v) in [
                ("owner", &owner),
                ("kind", &kind),
                ("origin", &origin),
                ("status", &status),
                ("parent", &parent),
                ("used_before", &used_before),
                ("used_after", &used_after),
                ("expires_before", &expires_before),
            ] {
                push(&mut q, name, v);
            }
            list(&api, &out, "/v1/agents", q, &page, AGENT_COLUMNS).await
        }
        AgentsCommand::Get { id } => show(&out, &api.get(&format!("/v1/agents/{}", seg(&id)?), &[]).await?),
        AgentsCommand::Create { name, owner, description, scopes, jwks, kind, parent, ttl_seconds, redirect_uris } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("owner".into(), json!(owner));
            let optional = [
                ("description", description.map(Value::from)),
                ("kind", kind.map(Value::from)),
                ("parent", parent.map(Value::from)),
                ("ttl_seconds", ttl_seconds.map(Value::from)),
                ("scopes", (!scopes.is_empty()).then(|| json!(scopes))),
                ("redirect_uris", (!redirect_uris.is_empty()).then(|| json!(redirect_uris))),
                ("jwks", jwks.as_deref().map(read_json).transpose()?),
            ];
            for (k, v) in optional {
                if let Some(v) = v {
                    body.insert(k.into(), v);
                }
            }
            show(&out, &api.post("/v1/agents", Some(Value::Object(body))).await?)
        }
        AgentsCommand::Update { id, description, scopes, owner, limits } => {
            let mut body = Map::new();
            if let Some(d) = description {
                body.insert("description".into(), json!(d));
            }
            if !scopes.is_empty() {
                body.insert("scopes".into(), json!(scopes));
            }
            if let Some(o) = owner {
                body.insert("owner".into(), json!(o));
            }
            if let Some(l) = limits {
                body.insert("limits".into(), read_json(&l)?);
            }
            if body.is_empty() {
                bail!("nothing to change: give --description, --scope, --owner or --limits");
            }
            show(&out, &api.patch(&format!("/v1/agents/{}", seg(&id)?), Value::Object(body)).await?)
        }
        AgentsCommand::Suspend { id } => lifecycle(&api, &out, &id, "suspend").await,
        AgentsCommand::Resume { id } => lifecycle(&api, &out, &id, "resume").await,
        AgentsCommand::Retire { id } => lifecycle(&api, &out, &id, "retire").await,
    }
}

async fn lifecycle(api: &Api, out: &Output, id: &str, op: &str) -> Result<()> {
    show(out, &api.post(&format!("/v1/agents/{}/{op}", seg(id)?), None).await?)
}

pub async fn resources(cmd: ResourcesCommand, out: Output) -> Result<()> {
    let api = Api::new(&out.server)?;
    match cmd {
        ResourcesCommand::List { page } => list(&api, &out, "/v1/resources", Vec::new(), &page, RESOURCE_COLUMNS).await,
        ResourcesCommand::Get { id } => show(&out, &api.get(&format!("/v1/resources/{}", seg(&id)?), &[]).await?),
        ResourcesCommand::Create { identifier, name, scopes, jwks } => {
            let scopes: Map<String, Value> = scopes.into_iter().map(|(k, v)| (k, json!(v))).collect();
            let mut body = json!({ "identifier": identifier, "name": name, "scopes": scopes });
            if let Some(j) = jwks {
                insert(&mut body, "jwks", read_json(&j)?);
            }
            show(&out, &api.post("/v1/resources", Some(body)).await?)
        }
    }
}

/// `Ok(false)`: a policy test with a decision that was not expected.
pub async fn policies(cmd: PoliciesCommand, out: Output) -> Result<bool> {
    let api = Api::new(&out.server)?;
    match cmd {
        PoliciesCommand::Test { file, cases } => crate::policies::test(&api, &file, &cases, out.server.json).await,
        PoliciesCommand::Get => {
            let answer = api.get("/v1/policies", &[]).await?;
            if out.server.json || out.field.is_some() {
                show(&out, &answer)?;
                return Ok(true);
            }
            print!("{}", answer.get("policies").and_then(Value::as_str).unwrap_or(""));
            Ok(true)
        }
        PoliciesCommand::Put { file, expected_version } => {
            let mut body = json!({ "policies": read_text(&file)? });
            if let Some(v) = expected_version {
                insert(&mut body, "expected_version", json!(v));
            }
            show(&out, &api.put("/v1/policies", body).await?)?;
            Ok(true)
        }
    }
}

pub async fn grants(cmd: GrantsCommand, out: Output) -> Result<()> {
    let api = Api::new(&out.server)?;
    match cmd {
        GrantsCommand::List { user, agent, page } => {
            let mut q = Vec::new();
            push(&mut q, "user", &user);
            push(&mut q, "agent", &agent);
            list(&api, &out, "/v1/grants", q, &page, GRANT_COLUMNS).await
        }
        GrantsCommand::Revoke { id } => show(&out, &api.post(&format!("/v1/grants/{}/revoke", seg(&id)?), None).await?),
        GrantsCommand::Reapprove { id, purpose } => {
            let body = purpose.map(|p| json!({ "purpose": p }));
            show(&out, &api.post(&format!("/v1/grants/{}/reapprove", seg(&id)?), body).await?)
        }
    }
}

/// `mandate review lapsed`: the grants housekeeping reported lapsed
/// (`GET /v1/review/lapsed`), newest report first.
pub async fn lapsed(since: Option<String>, page: Page, out: Output) -> Result<()> {
    let api = Api::new(&out.server)?;
    let mut q = Vec::new();
    push(&mut q, "since", &since);
    list(&api, &out, "/v1/review/lapsed", q, &page, LAPSED_COLUMNS).await
}

/// `mandate inventory report --by …`: `GET /v1/inventory/report`.
pub async fn inventory(cmd: InventoryCommand, out: Output) -> Result<()> {
    let api = Api::new(&out.server)?;
    match cmd {
        InventoryCommand::Report { by, page } => {
            let by = match by {
                ReportBy::Owner => "owner",
                ReportBy::Resource => "resource",
                ReportBy::Scope => "scope",
            };
            list(&api, &out, "/v1/inventory/report", vec![("by", by.to_owned())], &page, REPORT_COLUMNS).await
        }
    }
}

pub async fn approvals(cmd: ApprovalsCommand, out: Output) -> Result<()> {
    let api = Api::new(&out.server)?;
    match cmd {
        ApprovalsCommand::List { status, limit } => {
            let mut q = vec![("status", status)];
            if let Some(l) = limit {
                q.push(("limit", l.to_string()));
            }
            let answer = api.get("/v1/approvals", &q).await?;
            if out.server.json {
                return show(&out, &answer);
            }
            print!("{}", table::render(&items(&answer), APPROVAL_COLUMNS));
            Ok(())
        }
        ApprovalsCommand::Approve { id } => {
            show(&out, &api.post(&format!("/v1/approvals/{}/approve", seg(&id)?), None).await?)
        }
        ApprovalsCommand::Deny { id } => {
            show(&out, &api.post(&format!("/v1/approvals/{}/deny", seg(&id)?), None).await?)
        }
    }
}

/// `mandate token`: a `client_credentials` token with `private_key_jwt`.
/// Prints the access token alone, so that `$(mandate token …)` is the token.
pub async fn token(args: TokenArgs, out: Output) -> Result<()> {
    let api = Api::new(&out.server)?;
    let issuer = args.issuer.unwrap_or_else(|| api.base().to_owned());
    let assertion = crate::client_assertion(&args.key, &args.client_id, &issuer)?;
    let form = [
        ("grant_type", "client_credentials".to_owned()),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned()),
        ("client_assertion", assertion),
        ("resource", args.resource),
        ("scope", args.scopes.join(" ")),
    ];
    let answer = api.form("/oauth/token", &form, false).await?;
    if out.server.json || out.field.is_some() {
        return show(&out, &answer);
    }
    match answer.get("access_token").and_then(Value::as_str) {
        Some(t) => {
            println!("{t}");
            Ok(())
        }
        None => bail!("the answer has no access_token"),
    }
}

/// `mandate introspect TOKEN`, with the admin token.
pub async fn introspect(token: String, out: Output) -> Result<()> {
    let api = Api::new(&out.server)?;
    let token = if token == "-" {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("reading the token from stdin")?;
        line.trim().to_owned()
    } else {
        token
    };
    show(&out, &api.form("/oauth/introspect", &[("token", token)], true).await?)
}

/// `mandate events`: the audit trail through the API (`mandate audit`
/// reads the store itself).
pub async fn events(args: EventsArgs, out: Output) -> Result<()> {
    let api = Api::new(&out.server)?;
    let mut q = Vec::new();
    for (name, v) in [
        ("actor", &args.actor),
        ("subject", &args.subject),
        ("jti", &args.jti),
        ("grant", &args.grant),
        ("type", &args.kind),
        ("since", &args.since),
    ] {
        push(&mut q, name, v);
    }
    if let Some(l) = args.limit {
        q.push(("limit", l.to_string()));
    }
    let answer = api.get("/v1/audit", &q).await?;
    if out.server.json {
        return show(&out, &answer);
    }
    print!("{}", table::render(&items(&answer), EVENT_COLUMNS));
    Ok(())
}

/// `mandate login`: checks the token against the server, then keeps it.
pub async fn login(server: Option<String>) -> Result<()> {
    let server = server.unwrap_or_else(|| client::DEFAULT_SERVER.to_owned()).trim_end_matches('/').to_owned();
    let token = match std::env::var("MANDATE_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()) {
        Some(t) => t,
        None => {
            eprintln!("Paste the admin token (or a user's API token), then Enter:");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the token from stdin")?;
            line.trim().to_owned()
        }
    };
    if token.is_empty() {
        bail!("no token given");
    }
    // Any valid token may list pending approvals; a wrong one gets 401.
    let api = Api::with(server.clone(), Some(token.clone()))?;
    api.get("/v1/approvals", &[("status", "pending".to_owned()), ("limit", "1".to_owned())]).await?;
    let path = Credentials { server: server.clone(), token }.save()?;
    eprintln!("logged in to {server}; the token is in {} (mode 0600)", path.display());
    Ok(())
}

pub fn logout() -> Result<()> {
    if Credentials::remove()? {
        eprintln!("logged out");
    } else {
        eprintln!("not logged in");
    }
    Ok(())
}

/// `mandate ready`: waits until `/readyz` answers 200.
pub async fn ready(server: ServerArgs, wait: u64) -> Result<()> {
    let api = Api::with(server.server.unwrap_or_else(|| client::DEFAULT_SERVER.to_owned()), None)?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        if let Ok(r) = http.get(format!("{}/readyz", api.base().trim_end_matches('/'))).send().await
            && r.status().is_success()
        {
            println!("ready");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{} is not ready", api.base());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_answers_give_their_items() {
        assert_eq!(items(&json!({"items": [1], "grants": [2]})), vec![json!(1)]);
        assert_eq!(items(&json!({"approvals": [3], "next_before": null})), vec![json!(3)]);
        assert!(items(&json!({"x": 1})).is_empty());
    }

    #[test]
    fn scopes_and_pairs_parse() {
        assert_eq!(scope_actions("mail.read=a, b").ok(), Some(("mail.read".into(), vec!["a".into(), "b".into()])));
        assert_eq!(scope_actions("mail.send=").ok(), Some(("mail.send".into(), vec![])));
        assert!(scope_actions("mail.send").is_err());
        assert_eq!(key_value("dept=r&d=x").ok(), Some(("dept".into(), "r&d=x".into())));
    }

    #[test]
    fn an_id_cannot_change_the_path() {
        assert!(seg("usr_01ABC").is_ok());
        for bad in ["", "../keys", "a/b", "a?b", "a b", "a%2f"] {
            assert!(seg(bad).is_err(), "{bad}");
        }
    }
}
