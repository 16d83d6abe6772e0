//! The store conformance suite on SQLite (one test per case, each on a
//! database file of its own), and what only SQLite has.
// Test helpers index JSON freely; a missing member fails the test.
#![allow(clippy::indexing_slicing)]

use std::sync::Arc;

use mandate_core::Store;

use mandate_testkit::conformance::{Exec, Fresh, TamperRig};

/// A fresh store in a temporary directory of its own.
async fn fresh_store() -> anyhow::Result<Fresh> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(mandate_store_sqlite::SqliteStore::open(&dir.path().join("case.db")).await?);
    Ok(Fresh::new(store).keeping(dir))
}

mandate_testkit::store_conformance!(fresh_store());

/// A fresh store, and the means to edit its database file behind its back
/// (the tamper cases), including a trigger that fails every audit insert.
async fn tamper_rig() -> anyhow::Result<(TamperRig, Fresh)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tamper.db");
    let store: Arc<dyn Store> = Arc::new(mandate_store_sqlite::SqliteStore::open(&path).await?);
    let exec: Exec = Arc::new(move |sql: String| {
        let path = path.clone();
        Box::pin(async move {
            let conn = rusqlite::Connection::open(&path)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.execute_batch(&format!("BEGIN; {sql}; COMMIT;"))?;
            Ok(())
        })
    });
    let rig = TamperRig {
        store: store.clone(),
        exec,
        drop_guards: "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete",
        fail_appends: "CREATE TRIGGER audit_fail BEFORE INSERT ON audit_events \
                       BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
        restore_appends: "DROP TRIGGER audit_fail",
        garble_checkpoint: Some("UPDATE audit_checkpoints SET signature = x'00ff' WHERE seq = 10"),
        extra_event_columns: "",
    };
    Ok((rig, Fresh::new(store).keeping(dir)))
}

mandate_testkit::store_tamper_suite!(tamper_rig());

/// A grant token for the planner and a hop to a fresh child: (parent, child id, hop).
async fn hop(w: &mandate_testkit::scenarios::World) -> anyhow::Result<(String, String, String)> {
    let parent = w.granted(&w.planner, "read").await?["access_token"].as_str().unwrap_or_default().to_owned();
    let child = w.spawn(&w.planner, serde_json::json!({})).await?;
    let (_, hop) = w.exchange(&child, &parent, &[]).await?;
    Ok((parent, child.id, hop["access_token"].as_str().unwrap_or_default().to_owned()))
}

/// Liveness is also checked at use, not only written by cascades: with the
/// cascade bypassed (rows edited behind the store's back, then a change that
/// moves the epoch so no node keeps a cached answer), a token under a
/// revoked ancestor, under a revoked grant, or with a suspended agent in its
/// chain is dead to the check API and to introspection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_is_checked_at_use_even_without_the_cascade() -> anyhow::Result<()> {
    use mandate_testkit::scenarios::{World, claims};
    use serde_json::json;
    let w = World::new(mandate_testkit::TestServer::start().await?).await?;
    let db = rusqlite::Connection::open(w.s.data_dir.join("mandate.db"))?;
    db.busy_timeout(std::time::Duration::from_secs(5))?;
    /// SQL for (the parent's jti, its grant, the child agent).
    type Edit = fn(&str, &str, &str) -> String;
    let edits: [(&str, Edit); 3] = [
        ("exchanged from", |parent, _, _| format!("UPDATE tokens SET revoked_at = 1 WHERE jti = '{parent}'")),
        ("grant", |_, grant, _| format!("UPDATE grants SET status = 'revoked' WHERE id = '{grant}'")),
        ("may not act", |_, _, child| format!("UPDATE agents SET status = 'suspended' WHERE id = '{child}'")),
    ];
    for (why, edit) in edits {
        let (parent, child, token) = hop(&w).await?;
        let c = claims(&parent);
        let (jti, grant) = (c["jti"].as_str().unwrap_or_default(), c["grant_id"].as_str().unwrap_or_default());
        db.execute_batch(&edit(jti, grant, &child))?;
        // Any change through the store moves the epoch; this one is unrelated.
        let (st, _) =
            w.s.admin(
                reqwest::Method::PATCH,
                &format!("/v1/users/{}", w.bob),
                Some(json!({"groups": [why.replace(' ', "-")]})),
            )
            .await?;
        anyhow::ensure!(st == 200);
        anyhow::ensure!(w.s.introspect(&token).await?["active"] == false, "{why}: the hop is still active");
        let d = w.check(&token, "get", "e1", json!({})).await?;
        anyhow::ensure!(
            d["decision"] == "deny" && d["reasons"][0].as_str().is_some_and(|r| r.contains(why)),
            "{why}: {d}"
        );
    }
    Ok(())
}

/// An audit chain head that cannot be decoded stops the store from
/// opening: the chain is never restarted at seq 0 over a trail that exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_audit_head_stops_the_writer() -> anyhow::Result<()> {
    use mandate_core::store::Change;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("head.db");
    {
        let store = mandate_store_sqlite::SqliteStore::open(&path).await?;
        for i in 0..3 {
            let e = mandate_testkit::conformance::event("token.issued", &format!("agt_{i}"));
            store.commit(Change::new().with(mandate_core::AuditRecord::new(e).mutation())).await?;
        }
    }
    let conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch(
        "DROP TRIGGER audit_events_no_update; UPDATE audit_events SET hash = 'not a hash' WHERE seq = 3",
    )?;
    drop(conn);
    let opened = mandate_store_sqlite::SqliteStore::open(&path).await;
    anyhow::ensure!(opened.is_err(), "a store with an undecodable head opened");
    // Nothing was appended over it.
    let conn = rusqlite::Connection::open(&path)?;
    let n: i64 = conn.query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0))?;
    anyhow::ensure!(n == 3, "{n} events");
    Ok(())
}

/// Migration 0007 on a database made before it: emails take their one
/// spelling (a row whose lower-cased twin exists is left for an admin),
/// and existing API tokens get an id and a 30-day expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_security_migration_normalises_emails_and_dates_old_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path)?;
        for sql in [
            include_str!("../../migrations/0001_init.sql"),
            include_str!("../../migrations/0002_audit.sql"),
            include_str!("../../migrations/0003_delegation.sql"),
            include_str!("../../migrations/0004_resource_side.sql"),
            include_str!("../../migrations/0005_web.sql"),
            include_str!("../../migrations/0006_authorization_codes.sql"),
        ] {
            conn.execute_batch(sql)?;
        }
        conn.pragma_update(None, "user_version", 6)?;
        let users = [
            ("usr_01M00000000000000000000001", "Ada.Lovelace@example.com"),
            ("usr_01M00000000000000000000002", "Bob@example.com"),
            ("usr_01M00000000000000000000003", "bob@example.com"),
        ];
        for (id, email) in users {
            conn.execute(
                "INSERT INTO users (id, name, email, groups, attributes, status, created_at) VALUES (?1, 'x', ?2, '[]', '{}', 'active', 1)",
                rusqlite::params![id, email],
            )?;
        }
        conn.execute(
            "INSERT INTO user_tokens (hash, user_id, created_at) VALUES ('abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789', 'usr_01M00000000000000000000001', 1000)",
            [],
        )?;
        conn.execute(
            "INSERT INTO agents (id, name, owner, kind, status, redirect_uris, created_at, updated_at) \
             VALUES ('agt_01M00000000000000000000009', 'a', 'usr_01M00000000000000000000001', 'persistent', 'suspended', '[]', 1, 1)",
            [],
        )?;
    }
    let store = mandate_store_sqlite::SqliteStore::open(&path).await?;
    let ada = store.user_by_email("ada.lovelace@example.com").await?;
    anyhow::ensure!(ada.as_ref().map(|u| u.id.to_string()).as_deref() == Some("usr_01M00000000000000000000001"));
    // The two Bobs collide: both are kept as they were.
    let bob = store.user("usr_01M00000000000000000000002".parse()?).await?;
    anyhow::ensure!(bob.map(|u| u.email).as_deref() == Some("Bob@example.com"));
    let token = store
        .user_token_by_hash("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
        .await?
        .ok_or_else(|| anyhow::anyhow!("the old token is gone"))?;
    anyhow::ensure!(token.id.to_string() == "utk_0ABCDEF0123456789ABCDEF012", "{}", token.id);
    let lifetime = token.expires_at - token.created_at;
    anyhow::ensure!(lifetime == time::Duration::days(30), "{lifetime}");
    // Who suspended it before is not known: the admin, so the owner cannot resume it.
    let agent = store.agent("agt_01M00000000000000000000009".parse()?).await?;
    anyhow::ensure!(
        agent.and_then(|a| a.suspended_by) == Some(mandate_model::records::SuspendedBy::Admin),
        "an old suspension is not the admin's"
    );
    Ok(())
}

/// ADR 0020: SCIM tokens, their revocations and deletion marks kept as
/// settings before 0011 move into the SCIM tables, with the times they
/// recorded, and the settings go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scim_migration_moves_settings_into_tables() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        for sql in [
            include_str!("../../migrations/0001_init.sql"),
            include_str!("../../migrations/0002_audit.sql"),
            include_str!("../../migrations/0003_delegation.sql"),
            include_str!("../../migrations/0004_resource_side.sql"),
            include_str!("../../migrations/0005_web.sql"),
            include_str!("../../migrations/0006_authorization_codes.sql"),
            include_str!("../../migrations/0007_security.sql"),
            include_str!("../../migrations/0008_mcp.sql"),
            include_str!("../../migrations/0009_registration.sql"),
            include_str!("../../migrations/0010_upstream_links.sql"),
        ] {
            conn.execute_batch(sql)?;
        }
        conn.pragma_update(None, "user_version", 10)?;
        conn.execute(
            "INSERT INTO users (id, name, email, groups, attributes, status, created_at) \
             VALUES ('usr_01M00000000000000000000001', 'Ada', 'ada@example.com', '[]', '{}', 'disabled', 1)",
            [],
        )?;
        conn.execute_batch(
            "INSERT INTO settings (key, value) VALUES ('scim.token.scim_00aa', 'hash-a'), ('scim.token.scim_00bb', 'hash-b'), \
               ('scim.revoked.scim_00bb', '1700000100'), ('scim.deleted.usr_01M00000000000000000000001', '1700000200'), \
               ('other.setting', 'kept'); \
             INSERT INTO audit_events (seq, time, type, chain, client_id, prev_hash, hash) VALUES \
               (1, '2023-11-14T22:13:20.000000Z', 'scim.token_created', '[]', 'scim_00aa', '0000000000000000000000000000000000000000000000000000000000000000', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'), \
               (2, '2023-11-14T22:13:30.000000Z', 'scim.token_created', '[]', 'scim_00bb', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb');",
        )?;
    }
    let store = mandate_store_sqlite::SqliteStore::open(&path).await?;
    let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs);
    let a = store.scim_token("scim_00aa").await?.ok_or_else(|| anyhow::anyhow!("token a is gone"))?;
    anyhow::ensure!(a.hash == "hash-a" && a.created_at == at(1_700_000_000)? && a.revoked_at.is_none(), "{a:?}");
    let b = store.scim_token("scim_00bb").await?.ok_or_else(|| anyhow::anyhow!("token b is gone"))?;
    anyhow::ensure!(b.created_at == at(1_700_000_010)? && b.revoked_at == Some(at(1_700_000_100)?), "{b:?}");
    let ada = store.scim_user("usr_01M00000000000000000000001".parse()?).await?;
    anyhow::ensure!(
        ada.as_ref().map(|r| (r.user_name.as_str(), r.deleted_at))
            == Some(("ada@example.com", Some(at(1_700_000_200)?))),
        "{ada:?}"
    );
    anyhow::ensure!(
        store.setting("scim.token.scim_00aa").await?.is_none() && store.setting("other.setting").await?.is_some()
    );
    Ok(())
}

/// Migration 0029 (ADR 0039) on a database made before it: a
/// `session-revoked` event already waiting gets its token's `sub` as its
/// principal, so that its SET names the person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_principal_migration_fills_waiting_session_revoked_events() -> anyhow::Result<()> {
    use mandate_core::store::{Change, Mutation};
    use mandate_model::ssf::{Cause, EventSet, InitiatingEntity, Stream, StreamDelivery, StreamStatus};
    use mandate_testkit::conformance::{agent, resource, t0, token, user};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("old.db");
    let u = user("principal@example.com");
    let (stream, jti) = {
        let store = mandate_store_sqlite::SqliteStore::open(&path).await?;
        let a = agent(u.id, None);
        let r = resource("https://api.example");
        let stream = Stream {
            id: "sst_01ARZ3NDEKTSV4RRFFQ69G5FAV".parse()?,
            resource: r.id,
            audience: r.identifier.clone(),
            status: StreamStatus::Enabled,
            status_reason: None,
            delivery: StreamDelivery::Poll,
            events: EventSet::all(),
            description: None,
            created_at: t0(),
            updated_at: t0(),
            failures: 0,
            next_at: t0(),
            lease_holder: None,
            lease_until: None,
            verified_at: None,
        };
        let t = token(a.id, &u.id.to_string());
        let at = t0() + time::Duration::seconds(5);
        let change = Change::new()
            .with(Mutation::InsertUser(u.clone()))
            .with(Mutation::InsertAgent(a.clone()))
            .with(Mutation::InsertResource(r))
            .with(Mutation::InsertStream(stream.clone()))
            .with(Mutation::InsertToken(t.clone()))
            .with(Mutation::RevokeToken { jti: t.jti, at })
            .with(Mutation::SignalRevocations { at, cause: Cause::new(InitiatingEntity::Admin, "r") });
        store.commit(change).await?;
        (stream, t.jti)
    };
    // Back to the schema before 0029.
    let conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch("ALTER TABLE ssf_events DROP COLUMN principal")?;
    conn.pragma_update(None, "user_version", 28)?;
    drop(conn);
    let store = mandate_store_sqlite::SqliteStore::open(&path).await?;
    let events = store.queued_events(stream.id, 10).await?;
    let principals: Vec<(String, Option<String>)> =
        events.iter().map(|e| (e.signal.subject.clone(), e.signal.principal.clone())).collect();
    anyhow::ensure!(principals == vec![(jti.to_string(), Some(u.id.to_string()))], "{principals:?}");
    Ok(())
}
