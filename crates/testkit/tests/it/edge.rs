//! The edge (SECURITY rows 39 and 45): connection limits and timeouts,
//! rate limits per address and per client, trusted proxies, and repeated
//! refusals counted into one event.

use std::time::Duration;

use mandate_server::conn::Limits;
use mandate_server::edge::{EdgeConfig, Rate};
use mandate_testkit::{TestServer, test_edge};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn small(max_connections: usize) -> EdgeConfig {
    EdgeConfig {
        connections: Limits {
            max_connections,
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(1),
            max_per_address: 1_000,
        },
        ..test_edge()
    }
}

/// A connection to `target` from another loopback address (Linux routes
/// all of 127.0.0.0/8 to the loopback interface).
async fn connect_from(source: &str, target: &str) -> anyhow::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    Ok(socket.connect(target.parse()?).await?)
}

fn addr(s: &TestServer) -> String {
    s.url.trim_start_matches("http://").to_owned()
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        // A 408 or similar before closing also counts as closing.
        Ok(Ok(_)) => matches!(tokio::time::timeout(within, stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_))),
        Err(_) => false,
    }
}

/// More idle and half-sent connections than the cap: new, well-behaved
/// clients are still served at once (the longest-idle connections make
/// room), and stragglers are cut off by the header and idle timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_cannot_starve_new_clients() -> anyhow::Result<()> {
    let s = TestServer::start_with_edge(small(40)).await?;
    let target = addr(&s);
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(TcpStream::connect(&target).await?);
    }
    let mut half = Vec::new();
    for _ in 0..40 {
        let mut c = TcpStream::connect(&target).await?;
        c.write_all(b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n").await?;
        half.push(c);
    }
    // A new client, on a fresh connection each time, is served.
    for _ in 0..5 {
        let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
        let resp =
            tokio::time::timeout(Duration::from_secs(2), fresh.get(format!("{}/healthz", s.url)).send()).await??;
        assert_eq!(resp.status(), 200);
    }
    // What is left of the flood is closed by the timeouts.
    let mut survivors = 0;
    for c in half.iter_mut().chain(idle.iter_mut()) {
        if !closed_within(c, Duration::from_secs(4)).await {
            survivors += 1;
        }
    }
    assert_eq!(survivors, 0, "{survivors} connections outlived the header and idle timeouts");
    s.stop().await?;
    Ok(())
}

/// A request head sent byte by byte is cut off after the header timeout;
/// a body that never comes is answered with an error; a kept-alive
/// connection closes after the idle timeout, but serves requests until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_bodies_and_idle_connections_are_closed() -> anyhow::Result<()> {
    let s = TestServer::start_with_edge(small(100)).await?;
    let target = addr(&s);
    // Slowloris: one byte of head every 300 ms.
    let mut slow = TcpStream::connect(&target).await?;
    let started = std::time::Instant::now();
    let mut cut = false;
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n".iter() {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    assert!(cut || closed_within(&mut slow, Duration::from_secs(3)).await, "a slow head was never cut off");
    // A body that never arrives.
    let mut stalled = TcpStream::connect(&target).await?;
    stalled
        .write_all(b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 50\r\n\r\ngrant")
        .await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(4), stalled.read(&mut buf)).await??;
    let head = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
    assert!(n == 0 || head.starts_with("HTTP/1.1 4"), "a stalled body got {head:?}");
    // A body that trickles in, a byte every 300 ms, is cut off at the
    // deadline for the whole body (a per-frame timeout never would be).
    let mut trickle = TcpStream::connect(&target).await?;
    trickle
        .write_all(b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n")
        .await?;
    let started = std::time::Instant::now();
    let mut answered = false;
    while started.elapsed() < Duration::from_secs(5) {
        if trickle.write_all(b"a").await.is_err() {
            answered = true;
            break;
        }
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), trickle.read(&mut buf)).await {
            answered = n == 0 || String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).starts_with("HTTP/1.1 4");
            break;
        }
    }
    assert!(answered, "a trickling body held its connection past the deadline");
    // Kept alive: two requests on one connection, then it is closed when idle.
    let mut kept = TcpStream::connect(&target).await?;
    for _ in 0..2 {
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let n = kept.read(&mut buf).await?;
        assert!(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).starts_with("HTTP/1.1 200"));
    }
    assert!(closed_within(&mut kept, Duration::from_secs(5)).await, "an idle connection stayed open");
    s.stop().await?;
    Ok(())
}

/// One address cannot hold more than its share of connections, even with
/// requests in flight; other addresses are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() -> anyhow::Result<()> {
    let mut edge = small(50);
    edge.connections.max_per_address = 10;
    edge.connections.body_timeout = Duration::from_secs(30);
    let s = TestServer::start_with_edge(edge).await?;
    let target = addr(&s);
    // 127.0.0.2 keeps 30 requests in flight, bodies never finishing.
    let mut held = Vec::new();
    for _ in 0..30 {
        let mut c = connect_from("127.0.0.2", &target).await?;
        let _ = c
            .write_all(b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ngrant")
            .await;
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // At most its share of them is open; the rest were refused.
    let mut open = 0;
    for c in held.iter_mut() {
        if !closed_within(c, Duration::from_millis(200)).await {
            open += 1;
        }
    }
    assert!(open <= 10, "one address holds {open} connections");
    // Everyone else is served.
    for _ in 0..5 {
        let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
        let resp =
            tokio::time::timeout(Duration::from_secs(2), fresh.get(format!("{}/healthz", s.url)).send()).await??;
        assert_eq!(resp.status(), 200);
    }
    s.stop().await?;
    Ok(())
}

/// Per client address, on the endpoints that take credentials: 429 with
/// `Retry-After`, in the endpoint's own error format; other endpoints and
/// other addresses are not affected.
#[tokio::test]
async fn floods_from_one_address_get_429_with_retry_after() -> anyhow::Result<()> {
    let edge = EdgeConfig { per_address: Some(Rate { per_second: 5 }), ..test_edge() };
    let s = TestServer::start_with_edge(edge).await?;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..30 {
        let resp =
            s.http.post(format!("{}/oauth/token", s.url)).form(&[("grant_type", "client_credentials")]).send().await?;
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 && limited.is_none() {
            let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
            limited = Some((retry, resp.json::<serde_json::Value>().await?));
        }
    }
    let (retry, body) = limited.ok_or_else(|| anyhow::anyhow!("never limited: {statuses:?}"))?;
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|n| n >= 1)), "no Retry-After");
    assert_eq!(body["error"], "slow_down", "{body}");
    assert!(statuses.iter().take(10).filter(|s| **s == 401).count() >= 5, "the burst was not served: {statuses:?}");
    // The admin API answers in problem JSON.
    let mut problem = None;
    for _ in 0..30 {
        let (st, body) = s.admin(Method::GET, "/v1/grants", None).await?;
        if st == 429 {
            problem = Some(body);
            break;
        }
    }
    assert_eq!(problem.map(|b| b["type"].clone()), Some(json!("urn:mandate:problem:rate-limited")));
    // Discovery and the JWKS are never limited.
    for _ in 0..30 {
        assert_eq!(s.http.get(format!("{}/jwks.json", s.url)).send().await?.status(), 200);
    }
    s.stop().await?;
    Ok(())
}

/// Per client at the OAuth endpoints, once it has authenticated: naming a
/// client in bad assertions does not use up its budget.
#[tokio::test]
async fn floods_for_one_client_id_get_429() -> anyhow::Result<()> {
    let edge = EdgeConfig { per_client: Some(Rate { per_second: 3 }), ..test_edge() };
    let s = TestServer::start_with_edge(edge).await?;
    let (_, agent) = s.seed().await?;
    for _ in 0..20 {
        let forged = s.assertion(&agent, json!({"aud": "https://elsewhere.example"}));
        assert_eq!(s.token_with(&forged, "https://api.example.com", "read").await?.0, 401);
    }
    assert_eq!(s.token(&agent, "https://api.example.com", "read").await?.0, 200, "an attacker used up its budget");
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(s.token(&agent, "https://api.example.com", "read").await?.0);
    }
    assert!(statuses.contains(&200) && statuses.contains(&429), "{statuses:?}");
    // Another client is not held up.
    let user = s.create_user("second@example.com").await?;
    let other = s.create_agent(&user, mandate_jose::KeyAlg::EdDSA).await?;
    assert_eq!(s.token(&other, "https://api.example.com", "read").await?.0, 200);
    s.stop().await?;
    Ok(())
}

/// Behind a trusted proxy each forwarded address has its own budget; from
/// anyone else, a forwarded address is ignored (a client cannot pick one).
#[tokio::test]
async fn forwarded_addresses_count_only_behind_trusted_proxies() -> anyhow::Result<()> {
    let limited_from = |edge: EdgeConfig| async move {
        let s = TestServer::start_with_edge(edge).await?;
        let mut limited = std::collections::BTreeSet::new();
        for i in 0..40 {
            let from = format!("198.51.100.{}", i % 4);
            let resp = s
                .http
                .post(format!("{}/oauth/token", s.url))
                .header("x-forwarded-for", &from)
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await?;
            if resp.status() == 429 {
                limited.insert(from);
            }
        }
        s.stop().await?;
        anyhow::Ok(limited.len())
    };
    let rate = Some(Rate { per_second: 5 });
    // Trusted: four addresses of 10 requests each, within each one's burst.
    let trusted = EdgeConfig { per_address: rate, trusted_proxies: vec!["127.0.0.1/32".parse()?], ..test_edge() };
    assert_eq!(limited_from(trusted).await?, 0, "forwarded addresses shared one budget");
    // Untrusted: the header is ignored, so all 40 share 127.0.0.1's budget.
    let untrusted = EdgeConfig { per_address: rate, ..test_edge() };
    assert!(limited_from(untrusted).await? > 0, "a spoofed X-Forwarded-For was believed");
    Ok(())
}

/// Repeated identical refusals of unauthenticated callers from one source
/// are counted into one event per window: the trail shows them all, in
/// number, and grows by a few rows, not one per request.
#[tokio::test]
async fn repeated_refusals_are_counted_into_one_event() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let before = s.audit("").await?.len();
    for n in 0..50 {
        // Another claimed client each time: the count does not care.
        let client = format!("agt_01JZZZZZZZZZZZZZZZZZZZ{n:02}");
        let (st, _) = s
            .form(
                "/oauth/token",
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", client.as_str()),
                    ("client_assertion_type", mandate_jose::assertion::CLIENT_ASSERTION_TYPE),
                    ("client_assertion", "x.y.z"),
                ],
            )
            .await?;
        assert_eq!(st, 401);
        let (st, _) = s.call(Method::GET, "/v1/grants", Some("wrong-admin-token-0000"), None).await?;
        assert_eq!(st, 401);
    }
    // The first variants of each kind are written whole (at most eight
    // client ids apart, then one catch-all); the rest are counted.
    let written = s.audit("").await?.len() - before;
    let most = mandate_core::refusals::MAX_VARIANTS + 2;
    assert!(written <= most, "{written} refusals were written, not counted");
    s.clock.advance(time::Duration::seconds(61));
    s.mandate.flush_refusals(false).await?;
    let events = s.audit("").await?;
    let refusals: Vec<_> =
        events.iter().filter(|e| e["type"] == "client.auth_failed" || e["type"] == "admin.auth_failed").collect();
    let total: u64 = refusals.iter().map(|e| e["count"].as_u64().unwrap_or(1)).sum();
    assert_eq!(total, 100, "every refusal is in the trail, in number: {refusals:?}");
    assert!(refusals.len() <= most + 2, "{} rows for 100 refusals", refusals.len());
    assert!(
        refusals
            .iter()
            .filter(|e| e["count"].as_u64() > Some(1))
            .all(|e| e["reason"].as_str().is_some_and(|r| r.contains("127.0.0.1")))
    );
    assert_eq!(s.verify_audit().await?["valid"], true);
    s.stop().await?;
    Ok(())
}
