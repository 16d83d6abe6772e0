//! The fetcher against a small HTTP/1.1 server on a random loopback port,
//! written on bare tokio sockets so that each test controls exactly what is
//! sent: lying or missing `Content-Length`, chunked bodies, slow answers.
//!
//! Only loopback is ever connected to: every test that names a private
//! address expects it to be refused before any connection is made.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mandate_fetch::{FetchError, FetchPolicy, Fetcher, HostPatterns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

const KIB: usize = 1024;

struct Server {
    port: u16,
    /// Requests received so far.
    hits: Arc<AtomicUsize>,
    /// The head (request line and headers) of each request, in order.
    heads: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (h, r) = (Arc::clone(&hits), Arc::clone(&heads));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (h, r) = (Arc::clone(&h), Arc::clone(&r));
                tokio::spawn(async move {
                    let _ = serve(stream, port, &h, &r).await;
                });
            }
        });
        Self { port, hits, heads }
    }

    fn url(&self, host: &str, path: &str) -> Url {
        Url::parse(&format!("http://{host}:{}{path}", self.port)).unwrap()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn response(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn json(body: &[u8]) -> Vec<u8> {
    response(
        "200 OK",
        &[
            ("Content-Type", "application/json".to_owned()),
            ("Content-Length", body.len().to_string()),
            ("Cache-Control", "public, max-age=600".to_owned()),
        ],
        body,
    )
}

fn redirect(location: &str) -> Vec<u8> {
    response("302 Found", &[("Location", location.to_owned()), ("Content-Length", "0".to_owned())], b"")
}

async fn chunked(stream: &mut TcpStream, chunk: usize, count: usize) -> std::io::Result<()> {
    let head = response(
        "200 OK",
        &[("Content-Type", "application/json".to_owned()), ("Transfer-Encoding", "chunked".to_owned())],
        b"",
    );
    stream.write_all(&head).await?;
    for _ in 0..count {
        stream.write_all(format!("{chunk:x}\r\n").as_bytes()).await?;
        stream.write_all(&vec![b' '; chunk]).await?;
        stream.write_all(b"\r\n").await?;
    }
    stream.write_all(b"0\r\n\r\n").await
}

async fn serve(
    mut stream: TcpStream,
    port: u16,
    hits: &AtomicUsize,
    heads: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    hits.fetch_add(1, Ordering::SeqCst);
    heads.lock().unwrap().push(head.clone());
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();

    let reply = match path.as_str() {
        "/ok" => json(br#"{"client_id":"x"}"#),
        "/html" => response("200 OK", &[("Content-Type", "text/html".to_owned())], b"<p>hi</p>"),
        "/gzip" => response(
            "200 OK",
            &[("Content-Type", "application/json".to_owned()), ("Content-Encoding", "gzip".to_owned())],
            b"\x1f\x8b",
        ),
        "/not-found" => response("404 Not Found", &[("Content-Length", "0".to_owned())], b""),
        "/not-modified" => response("304 Not Modified", &[], b""),
        "/no-location" => response("302 Found", &[("Content-Length", "0".to_owned())], b""),
        "/exactly-64k" => json(&vec![b' '; 64 * KIB]),
        "/big-content-length" => {
            // Announces more than the limit, then sends nothing: the
            // refusal must come from the header alone.
            response("200 OK", &[("Content-Length", (64 * KIB + 1).to_string())], b"")
        }
        "/big-chunked" => return chunked(&mut stream, 8 * KIB, 9).await, // 72 KiB, no Content-Length
        "/exactly-64k-chunked" => return chunked(&mut stream, 8 * KIB, 8).await,
        "/endless-chunked" => return chunked(&mut stream, 16 * KIB, 100_000).await,
        "/big-no-length" => {
            // Neither Content-Length nor chunked: the body ends when the
            // connection closes.
            let mut reply = response("200 OK", &[("Content-Type", "application/json".to_owned())], b"");
            reply.extend_from_slice(&vec![b' '; 100 * KIB]);
            reply
        }
        "/to-private" => redirect("http://10.1.2.3/"),
        "/to-private-https" => redirect("https://10.1.2.3/client.json"),
        "/to-metadata" => redirect("http://169.254.169.254/latest/meta-data/"),
        "/to-unspecified" => redirect(&format!("http://0.0.0.0:{port}/ok")),
        "/to-mapped-loopback" => redirect(&format!("http://[::ffff:127.0.0.1]:{port}/ok")),
        "/to-ip" => redirect(&format!("http://127.0.0.1:{port}/ok")),
        "/to-outside" => redirect("https://evil.example.net/"),
        "/to-credentials" => redirect(&format!("http://user:pw@localhost:{port}/ok")),
        "/to-ftp" => redirect("ftp://localhost/x"),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            json(b"{}")
        }
        "/slow-body" => {
            let head = response("200 OK", &[("Content-Length", "10".to_owned())], b"{");
            stream.write_all(&head).await?;
            tokio::time::sleep(Duration::from_secs(10)).await;
            b"        }".to_vec()
        }
        other => match other.strip_prefix("/redirect/").and_then(|n| n.parse::<usize>().ok()) {
            Some(0) => json(br#"{"hops":"done"}"#),
            Some(n) => redirect(&format!("/redirect/{}", n - 1)),
            None => response("404 Not Found", &[("Content-Length", "0".to_owned())], b""),
        },
    };
    stream.write_all(&reply).await?;
    stream.shutdown().await
}

fn fetcher(policy: FetchPolicy) -> Fetcher {
    Fetcher::new(policy).unwrap()
}

fn dev() -> Fetcher {
    fetcher(FetchPolicy { dev_loopback: true, ..FetchPolicy::default() })
}

fn dev_allowing(hosts: &str) -> Fetcher {
    let allowed_hosts: HostPatterns = hosts.parse().unwrap();
    fetcher(FetchPolicy { dev_loopback: true, allowed_hosts: Some(allowed_hosts), ..FetchPolicy::default() })
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn a_good_fetch() {
    let server = Server::start().await;
    for host in ["127.0.0.1", "localhost", "[::1]"] {
        let url = server.url(host, "/ok");
        if host == "[::1]" {
            // The server listens on IPv4 only: [::1] passes the checks and
            // then finds nobody there.
            assert!(matches!(dev().get(&url).await, Err(FetchError::Network(_))));
            continue;
        }
        let got = dev().get(&url).await.unwrap();
        assert_eq!(got.body, br#"{"client_id":"x"}"#);
        assert_eq!(got.final_url, url);
        assert_eq!(got.content_type.as_deref(), Some("application/json"));
        assert!(got.is_json());
        assert_eq!(got.cache.max_age, Some(Duration::from_secs(600)));
        assert!(!got.cache.no_store);
    }
    let heads = server.heads();
    assert_eq!(heads.len(), 2);
    for head in &heads {
        assert!(head.starts_with("GET /ok HTTP/1.1\r\n"), "{head}");
        assert_eq!(header(head, "accept"), Some("application/json"));
        assert!(header(head, "user-agent").is_some_and(|ua| ua.starts_with("Mandate/")));
        assert_eq!(header(head, "cookie"), None);
        assert_eq!(header(head, "accept-encoding"), None);
        assert_eq!(header(head, "proxy-authorization"), None);
    }
}

#[tokio::test]
async fn the_accept_header_is_configurable_and_other_content_types_are_returned() {
    let server = Server::start().await;
    let f = fetcher(FetchPolicy {
        dev_loopback: true,
        accept: "application/jwk-set+json".to_owned(),
        ..FetchPolicy::default()
    });
    f.get(&server.url("127.0.0.1", "/ok")).await.unwrap();
    assert_eq!(header(&server.heads()[0], "accept"), Some("application/jwk-set+json"));
    let html = f.get(&server.url("127.0.0.1", "/html")).await.unwrap();
    assert_eq!(html.content_type.as_deref(), Some("text/html"));
    assert!(!html.is_json());
}

#[tokio::test]
async fn http_is_refused_without_dev_loopback() {
    let server = Server::start().await;
    let prod = fetcher(FetchPolicy::default());
    assert!(matches!(prod.get(&server.url("localhost", "/ok")).await, Err(FetchError::NotHttps)));
    // A loopback literal is refused for its address first.
    assert!(matches!(prod.get(&server.url("127.0.0.1", "/ok")).await, Err(FetchError::PrivateAddress)));
    // With dev_loopback, http still goes to loopback only.
    assert!(matches!(dev().get(&Url::parse("http://example.com/x").unwrap()).await, Err(FetchError::NotHttps)));
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn localhost_resolves_to_loopback_and_is_refused_without_dev_loopback() {
    let server = Server::start().await;
    let prod = fetcher(FetchPolicy::default());
    // https passes the static checks; the resolver refuses the name.
    let url = Url::parse(&format!("https://localhost:{}/ok", server.port)).unwrap();
    assert!(prod.check_url(&url).is_ok());
    assert!(matches!(prod.get(&url).await, Err(FetchError::PrivateAddress)));
    let url = Url::parse(&format!("https://LocalHost:{}/ok", server.port)).unwrap();
    assert!(matches!(prod.get(&url).await, Err(FetchError::PrivateAddress)));
    // With a trailing dot, the name is refused too: for its address where
    // the system resolver knows it, as unresolvable where it does not.
    let url = Url::parse(&format!("https://localhost.:{}/ok", server.port)).unwrap();
    let got = prod.get(&url).await;
    assert!(matches!(got, Err(FetchError::PrivateAddress | FetchError::Dns(_))), "{got:?}");
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn unspecified_addresses_are_refused_even_with_dev_loopback() {
    let server = Server::start().await;
    for host in ["0.0.0.0", "[::]", "[::ffff:127.0.0.1]", "0"] {
        let url = server.url(host, "/ok");
        assert!(matches!(dev().get(&url).await, Err(FetchError::PrivateAddress)), "{url}");
    }
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn private_literals_are_refused_without_connecting() {
    let prod = fetcher(FetchPolicy::default());
    let dev = dev();
    for url in [
        "https://10.0.0.1/x",
        "https://192.168.1.1/client.json",
        "https://169.254.169.254/latest/meta-data/",
        "https://100.64.0.1/x",
        "https://[fc00::1]/x",
        "https://[fe80::1]/x",
        "https://[2001:db8::1]/x",
    ] {
        let url = Url::parse(url).unwrap();
        let started = Instant::now();
        assert!(matches!(prod.get(&url).await, Err(FetchError::PrivateAddress)), "{url}");
        assert!(matches!(dev.get(&url).await, Err(FetchError::PrivateAddress)), "{url}");
        // Refused up front by the static check (a failed connection would
        // be a Network error, or a Timeout), hence no wait either.
        assert!(matches!(prod.check_url(&url), Err(FetchError::PrivateAddress)), "{url}");
        assert!(started.elapsed() < Duration::from_millis(500), "{url}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let server = Server::start().await;
    let f = dev();
    for path in ["/big-content-length", "/big-chunked", "/endless-chunked", "/big-no-length"] {
        let started = Instant::now();
        let got = f.get(&server.url("127.0.0.1", path)).await;
        assert!(matches!(got, Err(FetchError::TooLarge { limit: 65_536 })), "{path}: {got:?}");
        // Well before the 5 s timeout: the limit stopped the read.
        assert!(started.elapsed() < Duration::from_secs(4), "{path}");
    }
    // The limit itself is allowed, with or without Content-Length.
    for path in ["/exactly-64k", "/exactly-64k-chunked"] {
        let got = f.get(&server.url("127.0.0.1", path)).await.unwrap();
        assert_eq!(got.body.len(), 64 * KIB, "{path}");
    }
    // A smaller limit applies too.
    let small = fetcher(FetchPolicy { dev_loopback: true, max_bytes: 10, ..FetchPolicy::default() });
    assert!(matches!(small.get(&server.url("127.0.0.1", "/ok")).await, Err(FetchError::TooLarge { limit: 10 })));
}

#[tokio::test]
async fn redirects_to_private_addresses_are_refused() {
    let server = Server::start().await;
    let f = dev();
    for path in ["/to-private", "/to-private-https", "/to-metadata", "/to-unspecified", "/to-mapped-loopback"] {
        let got = f.get(&server.url("127.0.0.1", path)).await;
        assert!(matches!(got, Err(FetchError::PrivateAddress)), "{path}: {got:?}");
    }
    // Only the first request of each reached a server: ours.
    assert_eq!(server.hits(), 5);
}

#[tokio::test]
async fn redirect_hops_are_checked_like_the_first_url() {
    let server = Server::start().await;
    let f = dev();
    let got = f.get(&server.url("127.0.0.1", "/to-credentials")).await;
    assert!(matches!(got, Err(FetchError::Credentials)), "{got:?}");
    let got = f.get(&server.url("127.0.0.1", "/to-ftp")).await;
    assert!(matches!(got, Err(FetchError::NotHttps)), "{got:?}");
    // A hop to a loopback literal is fine under dev_loopback.
    let got = f.get(&server.url("127.0.0.1", "/to-ip")).await.unwrap();
    assert_eq!(got.final_url, server.url("127.0.0.1", "/ok"));
    assert_eq!(server.hits(), 4);
}

#[tokio::test]
async fn up_to_three_redirects_are_followed() {
    let server = Server::start().await;
    let f = dev();
    let got = f.get(&server.url("localhost", "/redirect/3")).await.unwrap();
    assert_eq!(got.body, br#"{"hops":"done"}"#);
    assert_eq!(got.final_url, server.url("localhost", "/redirect/0"));
    assert_eq!(server.hits(), 4);
    // No Referer on the hops.
    assert!(server.heads().iter().all(|head| header(head, "referer").is_none()));

    let got = f.get(&server.url("localhost", "/redirect/4")).await;
    assert!(matches!(got, Err(FetchError::TooManyRedirects { max: 3 })), "{got:?}");
    // The fourth redirect was refused before it was followed.
    assert_eq!(server.hits(), 8);

    let none = fetcher(FetchPolicy { dev_loopback: true, max_redirects: 0, ..FetchPolicy::default() });
    let got = none.get(&server.url("localhost", "/redirect/1")).await;
    assert!(matches!(got, Err(FetchError::TooManyRedirects { max: 0 })), "{got:?}");
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let server = Server::start().await;
    let f = fetcher(FetchPolicy {
        dev_loopback: true,
        timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        ..FetchPolicy::default()
    });
    for path in ["/slow", "/slow-body"] {
        let started = Instant::now();
        let got = f.get(&server.url("127.0.0.1", path)).await;
        let took = started.elapsed();
        assert!(matches!(got, Err(FetchError::Timeout)), "{path}: {got:?}");
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{path}: {took:?}");
    }
}

#[tokio::test]
async fn hosts_outside_the_allow_list_are_refused_on_every_hop() {
    let server = Server::start().await;
    let f = dev_allowing("localhost,*.example.com");
    f.get(&server.url("localhost", "/ok")).await.unwrap();
    f.get(&server.url("localhost", "/redirect/2")).await.unwrap();
    assert_eq!(server.hits(), 4);
    // An IP literal matches no pattern.
    assert!(matches!(f.get(&server.url("127.0.0.1", "/ok")).await, Err(FetchError::HostNotAllowed)));
    assert_eq!(server.hits(), 4);
    // A redirect hop to a host outside the list.
    assert!(matches!(f.get(&server.url("localhost", "/to-ip")).await, Err(FetchError::HostNotAllowed)));
    assert!(matches!(f.get(&server.url("localhost", "/to-outside")).await, Err(FetchError::HostNotAllowed)));
    assert_eq!(server.hits(), 6);
    // Refused before any resolution.
    let prod = fetcher(FetchPolicy { allowed_hosts: Some("*.example.com".parse().unwrap()), ..FetchPolicy::default() });
    assert!(matches!(
        prod.get(&Url::parse("https://evil.example.net/x").unwrap()).await,
        Err(FetchError::HostNotAllowed)
    ));
}

#[tokio::test]
async fn only_200_is_a_document() {
    let server = Server::start().await;
    let f = dev();
    assert!(matches!(f.get(&server.url("127.0.0.1", "/not-found")).await, Err(FetchError::Status(404))));
    assert!(matches!(f.get(&server.url("127.0.0.1", "/not-modified")).await, Err(FetchError::Status(304))));
    assert!(matches!(f.get(&server.url("127.0.0.1", "/no-location")).await, Err(FetchError::Status(302))));
    assert!(matches!(f.get(&server.url("127.0.0.1", "/gzip")).await, Err(FetchError::Encoded)));
}

#[tokio::test]
async fn a_closed_port_is_a_network_error_with_a_safe_message() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = Url::parse(&format!("http://127.0.0.1:{port}/x")).unwrap();
    let err = dev().get(&url).await.unwrap_err();
    assert!(matches!(err, FetchError::Network(_)), "{err:?}");
    let shown = err.to_string();
    assert!(!shown.contains("127.0.0.1") && !shown.to_lowercase().contains("refused"), "{shown}");
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test]
async fn a_post_follows_no_redirect_and_keeps_the_guards() {
    let server = Server::start().await;
    let f = dev();
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static("Bearer cb-token"));
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    let got = f.post(&server.url("127.0.0.1", "/ok"), headers.clone(), br#"{"auth_req_id":"x"}"#.to_vec()).await;
    assert_eq!(got.unwrap().status(), 200);
    let head = server.heads().pop().unwrap();
    assert!(head.starts_with("POST /ok "), "{head}");
    assert_eq!(header(&head, "authorization"), Some("Bearer cb-token"));
    // A redirect is the answer, not followed: the body goes nowhere else.
    let got = f.post(&server.url("127.0.0.1", "/to-ip"), headers.clone(), b"{}".to_vec()).await.unwrap();
    assert!(got.status().is_redirection(), "{}", got.status());
    assert_eq!(server.hits(), 2);
    // The same guards as a fetch, before anything is sent.
    let prod = fetcher(FetchPolicy::default());
    let refused = prod.post(&server.url("127.0.0.1", "/ok"), headers.clone(), b"{}".to_vec()).await;
    assert!(matches!(refused, Err(FetchError::NotHttps | FetchError::PrivateAddress)), "{refused:?}");
    let private = Url::parse("https://10.0.0.1/cb").unwrap();
    assert!(matches!(f.post(&private, headers, b"{}".to_vec()).await, Err(FetchError::PrivateAddress)));
    assert_eq!(server.hits(), 2);
}
