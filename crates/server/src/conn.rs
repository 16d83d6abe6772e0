//! Serving connections (SECURITY row 39): every connection gets a header
//! timeout (from the first byte of a request head), an idle timeout (while
//! kept alive with nothing in flight) and, through the router, a body
//! timeout; the number of open connections is capped. At the cap, a new
//! connection evicts the one idle the longest (idle or half-sent requests
//! are what floods are made of), so that well-behaved clients are still
//! served; only when every connection has a request in flight is the new
//! one refused. One client address (other than a trusted proxy) may hold
//! only so many connections, so that it cannot fill the cap with requests
//! kept in flight.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest a client may take to send a request head, from its first byte.
    pub header_timeout: Duration,
    /// Longest a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Longest a client may take to send a whole request body, however it
    /// trickles in (applied by the router, see [`crate::router`]).
    pub body_timeout: Duration,
    /// Most connections one client address may hold (trusted proxies are
    /// exempt).
    pub max_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4_096,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_per_address: 256,
        }
    }
}

/// What one connection is doing, shared between its task, its reads and
/// the registry that evicts.
struct ConnState {
    /// The peer's address.
    peer: IpAddr,
    /// Requests being handled now.
    in_flight: AtomicU64,
    /// Milliseconds since `epoch` when the connection last became idle.
    idle_since: AtomicU64,
    /// Milliseconds since `epoch` of the first byte of a request head not
    /// yet handed to the router (0: none).
    head_started: AtomicU64,
    /// Set to close the connection (evicted, or timed out).
    close: Notify,
    closed: AtomicBool,
}

impl ConnState {
    fn evictable(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    fn shut(&self) {
        self.closed.store(true, Ordering::Release);
        self.close.notify_one();
    }
}

/// The open connections, for the cap and for eviction.
struct Registry {
    epoch: Instant,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a connection from `peer`, evicting the longest-idle one at
    /// the cap (the longest-idle one of `peer` at its own cap). `None` when
    /// every candidate has a request in flight.
    fn admit(&self, peer: IpAddr, limits: &Limits, exempt: bool) -> Option<(u64, Arc<ConnState>)> {
        let mut open = self.lock();
        let evict = |open: &mut HashMap<u64, Arc<ConnState>>, only: Option<IpAddr>| {
            let victim = open
                .iter()
                .filter(|(_, c)| only.is_none_or(|p| c.peer == p))
                .filter(|(_, c)| c.evictable() && !c.closed.load(Ordering::Acquire))
                .min_by_key(|(_, c)| c.idle_since.load(Ordering::Acquire))
                .map(|(id, c)| (*id, c.clone()));
            let (id, c) = victim?;
            c.shut();
            open.remove(&id);
            metrics::counter!("mandate_connections_evicted_total").increment(1);
            Some(())
        };
        if !exempt && open.values().filter(|c| c.peer == peer).count() >= limits.max_per_address {
            evict(&mut open, Some(peer))?;
        }
        if open.len() >= limits.max_connections {
            evict(&mut open, None)?;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            peer,
            in_flight: AtomicU64::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            head_started: AtomicU64::new(0),
            close: Notify::new(),
            closed: AtomicBool::new(false),
        });
        open.insert(id, state.clone());
        metrics::gauge!("mandate_connections_open").set(open.len() as f64);
        Some((id, state))
    }

    fn leave(&self, id: u64) {
        let mut open = self.lock();
        open.remove(&id);
        metrics::gauge!("mandate_connections_open").set(open.len() as f64);
    }
}

/// A TCP stream that notes when a request head starts arriving.
struct Watched {
    inner: TcpStream,
    state: Arc<ConnState>,
    registry: Arc<Registry>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
            && self.state.evictable()
        {
            // Bytes while nothing is in flight: a request head has begun.
            let now = self.registry.now_ms().max(1);
            let _ = self.state.head_started.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The router for one connection: marks requests in flight, and gives
/// handlers the peer's address.
#[derive(Clone)]
struct Tracked {
    router: Router,
    peer: SocketAddr,
    state: Arc<ConnState>,
    registry: Arc<Registry>,
}

/// Marks the end of a request when dropped (the response is ready, or the
/// request was abandoned).
struct InFlight {
    state: Arc<ConnState>,
    registry: Arc<Registry>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.idle_since.store(self.registry.now_ms(), Ordering::Release);
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl tower::Service<axum::http::Request<Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: axum::http::Request<Incoming>) -> Self::Future {
        self.state.in_flight.fetch_add(1, Ordering::AcqRel);
        self.state.head_started.store(0, Ordering::Release);
        let guard = InFlight { state: self.state.clone(), registry: self.registry.clone() };
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let fut = tower::ServiceExt::oneshot(self.router.clone(), req);
        Box::pin(async move {
            let resp = fut.await;
            drop(guard);
            resp
        })
    }
}

/// Accepts and serves connections on `listener` until `shutdown` resolves,
/// then lets open requests finish (at most 30 s).
pub async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    trusted_proxies: Vec<ipnet::IpNet>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry =
        Arc::new(Registry { epoch: Instant::now(), next: AtomicU64::new(1), open: Mutex::new(HashMap::new()) });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors or a transient error: back off a
                // little rather than spin, and keep serving.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks as we go.
        while tasks.try_join_next().is_some() {}
        let exempt = trusted_proxies.iter().any(|n| n.contains(&peer.ip()));
        let Some((id, state)) = registry.admit(peer.ip(), &limits, exempt) else {
            metrics::counter!("mandate_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = Watched { inner: stream, state: state.clone(), registry: registry.clone() };
        let service = Tracked { router: router.clone(), peer, state: state.clone(), registry: registry.clone() };
        let registry = registry.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            // Mandate's own watchdog times request heads from their first
            // byte; hyper's would also cut idle kept-alive connections.
            builder.header_read_timeout(None).keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
            tokio::pin!(conn);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut draining = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    () = state.close.notified() => break,
                    changed = stop.changed(), if !draining => {
                        if changed.is_err() || *stop.borrow() {
                            draining = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    _ = tick.tick() => {
                        if !state.evictable() {
                            continue;
                        }
                        let now = registry.now_ms();
                        let head = state.head_started.load(Ordering::Acquire);
                        let late_head = head != 0 && now.saturating_sub(head) > ms(limits.header_timeout);
                        let idle = head == 0
                            && now.saturating_sub(state.idle_since.load(Ordering::Acquire)) > ms(limits.idle_timeout);
                        if late_head || idle {
                            metrics::counter!("mandate_connections_timed_out_total", "why" => if late_head { "header" } else { "idle" }).increment(1);
                            break;
                        }
                    }
                }
            }
            registry.leave(id);
        });
    }
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(Duration::from_secs(30), async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("connections still open after 30 s of draining; closing them");
        tasks.abort_all();
    }
    Ok(())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A request body that must arrive whole within a deadline, however it
/// trickles in (a per-frame timeout would let one byte every few seconds
/// hold a connection for ever).
struct DeadlineBody {
    inner: axum::body::Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl axum::body::HttpBody for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            metrics::counter!("mandate_connections_timed_out_total", "why" => "body").increment(1);
            return Poll::Ready(Some(Err(axum::Error::new("the request body did not arrive in time"))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Gives every request body a deadline of `limit` for all of it.
pub(crate) async fn body_deadline(
    axum::extract::State(limit): axum::extract::State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let req =
        req.map(|inner| axum::body::Body::new(DeadlineBody { inner, deadline: Box::pin(tokio::time::sleep(limit)) }));
    next.run(req).await
}
