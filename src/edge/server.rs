//! Accepting connections and serving HTTP on them, with limits and a graceful drain.
//!
//! [`serve`] takes what it needs: a bound listener, a handler, the limits, a shutdown signal and,
//! for the https listener, a TLS acceptor. Plain connections speak HTTP/1.1; TLS connections
//! speak what ALPN chose, `h2` or HTTP/1.1. On shutdown it closes the listener (new connections
//! are refused), lets every connection finish its in-flight requests, and after `shutdown_grace`
//! cuts what remains.
//!
//! Limits against slow or greedy clients:
//! - `header_read_timeout` bounds the time to send a request head, counted from when the server
//!   starts waiting for it, so it also bounds how long an idle kept-alive connection stays open
//!   between requests (hyper closes it without a response; slowloris connections end this way);
//! - `idle_timeout` bounds any stall of a connection ([`IdleIo`]) and of a streamed body;
//! - `max_connections`: past it a new connection gets a 503 and is closed at once;
//! - an HTTP/1 connection serves at most [`MAX_REQUESTS_PER_CONNECTION`] requests, then the
//!   response says `Connection: close` (like nginx's `keepalive_requests`);
//! - every HTTP/1 request head is also judged by [`HeadCheck`] (request smuggling), its verdict
//!   handed to the request as an extension for `proxy::checks::check_request`.
//!
//! hyper answers a request its parser refuses (400, 431, 414) itself, with an empty body, before
//! any handler runs; such a refusal is logged here with the access log's target and counted in
//! `consent_gateway_requests_total{host="unknown"}`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::edge::scanner::{HeadCheck, HeadChecks};
use crate::metrics::{HostCode, ListenerLabel, Metrics};
use crate::proxy::body::{IdleIo, ProxyBody};
use prometheus_client::metrics::gauge::Gauge;

/// Requests served on one HTTP/1 connection before the gateway asks the client to reconnect.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 1000;

/// The answer to a connection over `max_connections`.
const OVERLOADED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 24\r\nconnection: close\r\n\r\n503 service unavailable\n";

/// Streams an HTTP/2 client may have open at once on one connection (nginx: 128, HAProxy: 100;
/// each stalled stream holds about 85 KiB here with its upstream connection, so 64 keep one
/// stalled client under 6 MiB).
pub const H2_MAX_STREAMS: u32 = 64;
/// Response bytes buffered per HTTP/2 stream that the client has not taken.
pub const H2_SEND_BUF: usize = 16 * 1024;
/// Request body bytes a client may send ahead on one stream (the HTTP/2 default window).
pub const H2_STREAM_WINDOW: u32 = 65_535;
/// Request body bytes a client may send ahead on one connection, all streams together.
pub const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// The HTTP/1 connection buffer bound: a whole request head (`max_header_bytes`), never less
/// than hyper's smallest (8 KiB).
pub fn h1_buf_size(limits: &Limits) -> usize {
    limits.max_header_bytes.max(8192)
}

/// Waits until the shutdown flag is set (or its sender is gone).
pub async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Serves `listener` until `shutdown` turns true, then drains. Returns how many connections were
/// cut at the end of `shutdown_grace`.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    metrics: Option<Arc<Metrics>>,
    shutdown: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) -> usize
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let hooks = ListenerHooks {
        permits: Arc::new(Semaphore::new(limits.max_connections)),
        closed: None,
        worker_gauge: None,
        probes: None,
        listener: "http",
    };
    serve_with(listener, handler, limits, metrics, shutdown, tls, hooks).await
}

/// What a listener shares with the other listeners of a gateway.
pub struct ListenerHooks {
    /// `max_connections`, counted over every listener (and worker) holding this semaphore.
    pub permits: Arc<Semaphore>,
    /// Told, with the number of connections left to drain, once the listener is closed. Without
    /// it, [`serve_with`] logs the close itself.
    pub closed: Option<tokio::sync::oneshot::Sender<usize>>,
    /// The serving worker's own open-connections gauge.
    pub worker_gauge: Option<Gauge>,
    /// The admin listener's probe lane: connections over the limit are still served, for
    /// probes only (see [`ProbeLane`]). Plain (non-TLS) listeners only.
    pub probes: Option<ProbeLane>,
    /// The `listener` label of `consent_gateway_connections_open`: `http`, `https` or `admin`.
    pub listener: &'static str,
}

/// How long a connection in the probe lane has to send its one request head. Kubelet and load
/// balancer probes send theirs at once; an idle or slow connection leaves the lane after this.
pub const PROBE_HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections the probe lane serves at once (each costs a task, a socket and hyper's read
/// buffer, about 10 KiB, for at most [`PROBE_HEAD_TIMEOUT`]).
pub const PROBE_LANE_SLOTS: usize = 1024;

/// Health probes served whatever other connections do (the admin listener's rule: idle or slow
/// connections can never make `/healthz` or `/readyz` fail or wait).
///
/// A connection that arrives when the listener's own limit is taken is not refused: it enters
/// the probe lane, where it gets one request, whose head must arrive within
/// [`PROBE_HEAD_TIMEOUT`], answered only if it is a probe (anything else gets a 503), and is
/// then closed. Idle connections therefore hold a lane slot for at most a second, and the lane
/// has [`PROBE_LANE_SLOTS`] of them: starving it takes a thousand new connections a second,
/// each of which is accepted and closed in turn.
#[derive(Clone)]
pub struct ProbeLane {
    pub slots: Arc<Semaphore>,
    /// Whether a request path is a probe.
    pub is_probe: fn(&str) -> bool,
}

impl ProbeLane {
    pub fn new(is_probe: fn(&str) -> bool) -> Self {
        ProbeLane {
            slots: Arc::new(Semaphore::new(PROBE_LANE_SLOTS)),
            is_probe,
        }
    }
}

/// [`serve`], with the connection budget and the close notice of `hooks`.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    metrics: Option<Arc<Metrics>>,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
    hooks: ListenerHooks,
) -> usize
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let permits = hooks.permits;
    let worker_gauge = hooks.worker_gauge;
    let open_gauge = metrics.as_ref().map(|m| {
        m.connections_open
            .get_or_create(&ListenerLabel {
                listener: hooks.listener,
            })
            .clone()
    });
    let probes = hooks.probes.filter(|_| tls.is_none());
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        // The connection's read buffer and write queue are bounded by this (hyper's default is
        // about 400 KiB): a client that stops reading holds at most this much of its response
        // here (see crate::config::Limits::worst_case_memory). It must hold a whole request head.
        .max_buf_size(h1_buf_size(&limits))
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Per-stream and per-connection bounds (hyper's defaults: 400 KiB of send buffer per
        // stream, 1 MiB receive windows): a client that opens every stream it may for a large
        // response and never reads holds at most H2_MAX_STREAMS x H2_SEND_BUF here, whatever
        // windows it announces; what it uploads is bounded by the receive windows.
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_send_buf_size(H2_SEND_BUF)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW);
    loop {
        tokio::select! {
            biased;
            () = shutdown_requested(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    let lane = probes.as_ref().and_then(|l| {
                        Arc::clone(&l.slots).try_acquire_owned().ok().map(|p| (p, l.is_probe))
                    });
                    match lane {
                        Some((slot, is_probe)) => {
                            let open = OpenGuard::new([open_gauge.clone(), None]);
                            let conn = serve_probe_lane(stream, peer, slot, is_probe, handler.clone());
                            conns.spawn(async move {
                                let _open = open;
                                conn.await;
                            });
                        }
                        None => refuse(stream, peer, metrics.as_deref()),
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let (h1, h2, tls) = (h1.clone(), h2.clone(), tls.clone());
                let drain = drain_rx.clone();
                let metrics = metrics.clone();
                let gauges = OpenGuard::new([open_gauge.clone(), worker_gauge.clone()]);
                let (idle, handshake) = (limits.idle_timeout, limits.header_read_timeout);
                let max_head = limits.max_header_bytes;
                conns.spawn(async move {
                    let _permit = permit;
                    let _open = gauges;
                    let io = IdleIo::new(stream, idle);
                    let Some(acceptor) = tls else {
                        let (io, checks) = HeadCheck::new(io, max_head);
                        let (io, gate) = GateIo::new(io);
                        let svc = service(handler, peer, Some(checks), gate);
                        return drive_h1(&h1, TokioIo::new(io), svc, drain, peer, metrics).await;
                    };
                    let stream = match tokio::time::timeout(handshake, acceptor.accept(io)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let streams = Arc::new(H2Streams::new());
                        let svc = service_h2(handler, peer, Arc::clone(&streams));
                        drive_h2(&h2, TokioIo::new(stream), svc, drain, peer, streams, idle, metrics).await;
                    } else {
                        let (io, checks) = HeadCheck::new(stream, max_head);
                        let (io, gate) = GateIo::new(io);
                        let svc = service(handler, peer, Some(checks), gate);
                        drive_h1(&h1, TokioIo::new(io), svc, drain, peer, metrics).await;
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let open = conns.len();
    match hooks.closed {
        Some(tx) => {
            tracing::debug!(connections = open, "listener closed, draining connections");
            let _ = tx.send(open);
        }
        None => {
            tracing::info!(connections = open, grace = ?limits.shutdown_grace, "listener closed, draining connections");
        }
    }
    let deadline = tokio::time::sleep(limits.shutdown_grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = conns.join_next() => if next.is_none() { return 0 },
            () = &mut deadline => {
                let cut = conns.len();
                tracing::warn!(connections = cut, "shutdown grace over: cutting connections still open");
                conns.abort_all();
                while conns.join_next().await.is_some() {}
                return cut;
            }
        }
    }
}

/// One connection in the probe lane (see [`ProbeLane`]): one request, probes only.
async fn serve_probe_lane<H, F>(
    stream: TcpStream,
    peer: SocketAddr,
    slot: tokio::sync::OwnedSemaphorePermit,
    is_probe: fn(&str) -> bool,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let _slot = slot;
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(PROBE_HEAD_TIMEOUT)
        .max_buf_size(PROBE_MAX_HEAD)
        .keep_alive(false);
    let svc = service_fn(move |req: Request<Incoming>| {
        let probe = is_probe(req.uri().path());
        let fut = probe.then(|| handler(req, peer));
        async move {
            Ok::<_, Infallible>(match fut {
                Some(f) => f.await,
                None => {
                    let mut r = Response::new(ProxyBody::full(
                        "503 service unavailable: admin connection limit reached\n",
                    ));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    r
                }
            })
        }
    });
    // The whole connection is bounded too: a probe answer a client does not read cannot hold
    // the slot.
    let io = IdleIo::new(stream, PROBE_HEAD_TIMEOUT);
    let conn = h1.serve_connection(TokioIo::new(io), svc);
    if tokio::time::timeout(2 * PROBE_HEAD_TIMEOUT, conn)
        .await
        .is_err()
    {
        tracing::debug!(peer = %peer, "admin probe-lane connection cut");
    }
}

/// Largest request head in the probe lane (hyper's smallest read buffer).
const PROBE_MAX_HEAD: usize = 8192;

/// The service of one connection. With `checks` (HTTP/1) each request carries its head verdict,
/// a 101 stops the head scanner, and the response to the connection's
/// [`MAX_REQUESTS_PER_CONNECTION`]th request closes it.
fn service<H, F>(
    handler: H,
    peer: SocketAddr,
    checks: Option<HeadChecks>,
    gate: Arc<WriteGate>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<GatedBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<GatedBody>, Infallible>> + Send + 'static,
> + Send
       + 'static
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let served = AtomicUsize::new(0);
    service_fn(move |mut req: Request<Incoming>| {
        let checks = checks.clone();
        let mut last = false;
        if let Some(c) = &checks {
            req.extensions_mut().insert(c.next_verdict());
            last = served.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_REQUESTS_PER_CONNECTION;
        }
        let fut = handler(req, peer);
        let gate = Arc::clone(&gate);
        async move {
            let mut resp = fut.await;
            if let Some(c) = checks {
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    c.upgraded();
                } else if last {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
            }
            Ok::<_, Infallible>(resp.map(|inner| GatedBody { inner, gate }))
        }
    })
}

/// Response body bytes an HTTP/1 connection may hold that its client has not taken yet: the
/// response body is not read further (from the upstream) until the socket has accepted what
/// was handed over. hyper's own bound on its write queue is `max_buf_size`, which must also
/// hold a whole request head (64 KiB by default); this one is smaller.
pub const H1_WRITE_AHEAD: usize = 8 * 1024;

/// Counts body bytes handed to hyper against bytes written to the socket (see
/// [`H1_WRITE_AHEAD`]).
#[derive(Default)]
pub struct WriteGate {
    /// Body bytes handed over minus bytes written (head and framing bytes written count too, so
    /// this errs low).
    ahead: AtomicUsize,
    /// The body waiting for the socket to drain.
    waiting: std::sync::Mutex<Option<std::task::Waker>>,
}

impl WriteGate {
    fn written(&self, n: usize) {
        let before = self
            .ahead
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                Some(a.saturating_sub(n))
            })
            .unwrap_or(0);
        if before >= H1_WRITE_AHEAD && before.saturating_sub(n) < H1_WRITE_AHEAD {
            if let Some(w) = self.waiting.lock().ok().and_then(|mut w| w.take()) {
                w.wake();
            }
        }
    }
}

/// The connection's socket, reporting what it writes to its [`WriteGate`].
pub struct GateIo<T> {
    inner: T,
    gate: Arc<WriteGate>,
}

impl<T> GateIo<T> {
    fn new(inner: T) -> (Self, Arc<WriteGate>) {
        let gate = Arc::new(WriteGate::default());
        (
            GateIo {
                inner,
                gate: Arc::clone(&gate),
            },
            gate,
        )
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for GateIo<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for GateIo<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_write(cx, b));
        if let Ok(n) = &r {
            self.gate.written(*n);
        }
        std::task::Poll::Ready(r)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r =
            std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
        if let Ok(n) = &r {
            self.gate.written(*n);
        }
        std::task::Poll::Ready(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTP/1 response body held back while [`H1_WRITE_AHEAD`] bytes wait for the socket.
pub struct GatedBody {
    inner: ProxyBody,
    gate: Arc<WriteGate>,
}

impl hyper::body::Body for GatedBody {
    type Data = bytes::Bytes;
    type Error = crate::proxy::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.gate.ahead.load(Ordering::Relaxed) >= H1_WRITE_AHEAD {
            if let Ok(mut w) = this.gate.waiting.lock() {
                *w = Some(cx.waker().clone());
            }
            // The socket may have drained meanwhile.
            if this.gate.ahead.load(Ordering::Relaxed) >= H1_WRITE_AHEAD {
                return std::task::Poll::Pending;
            }
        }
        let frame = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                this.gate.ahead.fetch_add(d.len(), Ordering::Relaxed);
            }
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves HTTP/1.1 (with upgrades) on one connection until it ends or the drain asks it to stop
/// after its in-flight request.
async fn drive_h1<I, S>(
    builder: &http1::Builder,
    io: I,
    svc: S,
    mut drain: watch::Receiver<bool>,
    peer: SocketAddr,
    metrics: Option<Arc<Metrics>>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = GatedBody> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(io, svc).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                h1_connection_error(&e, peer, metrics.as_deref());
            }
        }
        () = shutdown_requested(&mut drain) => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                h1_connection_error(&e, peer, metrics.as_deref());
            }
        }
    }
}

/// Logs how an HTTP/1 connection failed. A request head hyper's parser refused was answered by
/// hyper itself (no handler ran, so no access log line yet): log and count it here.
fn h1_connection_error(e: &hyper::Error, peer: SocketAddr, metrics: Option<&Metrics>) {
    let status: u16 = if e.is_parse_too_large() {
        // hyper's two "too large" answers; only its message tells them apart.
        if e.to_string().contains("URI") {
            414
        } else {
            431
        }
    } else if e.is_parse() && !e.is_parse_version_h2() {
        400
    } else {
        if e.is_timeout() {
            tracing::debug!(peer = %peer, "request head not received within header_read_timeout: connection closed");
        } else {
            tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
        }
        return;
    };
    tracing::info!(
        target: "consent_gateway::access",
        host = "unknown",
        status,
        peer = %peer,
        error = %e,
        "request refused by the HTTP/1 parser"
    );
    if let Some(m) = metrics {
        m.requests
            .get_or_create(&HostCode {
                host: "unknown".into(),
                code: status,
            })
            .inc();
    }
}

/// Streams a client may cancel (reset, or abandon before their response is complete) on one
/// HTTP/2 connection in a burst; [`H2_CANCEL_REFILL_PER_SEC`] more come back each second.
/// Past it the connection is told GOAWAY and closed. The h2 library's own limit counts only
/// resets of streams not yet accepted, which a client pacing its resets (ten, then a PING)
/// never reaches.
pub const H2_CANCEL_BURST: f64 = 100.0;
/// Cancels given back per second (a browser navigating away cancels a few dozen at once, now
/// and then).
pub const H2_CANCEL_REFILL_PER_SEC: f64 = 10.0;

/// What one HTTP/2 connection's streams are doing, for the idle rule and the cancel limit.
struct H2Streams {
    /// Streams being answered: from the request to the end of the response body.
    active: AtomicUsize,
    /// When `active` last fell to zero.
    idle_since: std::sync::Mutex<Instant>,
    /// Cancel budget (a token bucket): tokens left and when they were counted.
    budget: std::sync::Mutex<(f64, Instant)>,
    /// Woken when the budget is spent.
    flood: tokio::sync::Notify,
}

impl H2Streams {
    fn new() -> Self {
        H2Streams {
            active: AtomicUsize::new(0),
            idle_since: std::sync::Mutex::new(Instant::now()),
            budget: std::sync::Mutex::new((H2_CANCEL_BURST, Instant::now())),
            flood: tokio::sync::Notify::new(),
        }
    }

    fn opened(self: &Arc<Self>) -> ActiveStream {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveStream {
            streams: Arc::clone(self),
            finished: false,
        }
    }

    /// A stream was cancelled by the client: spends one token, and wakes the connection when
    /// none is left.
    fn cancelled(&self) {
        let Ok(mut b) = self.budget.lock() else {
            return;
        };
        let now = Instant::now();
        let (tokens, at) = *b;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * H2_CANCEL_REFILL_PER_SEC)
            .min(H2_CANCEL_BURST)
            - 1.0;
        *b = (tokens, now);
        if tokens < 0.0 {
            self.flood.notify_one();
        }
    }

    /// When the connection has had no stream for `idle`, `None` while a stream is active.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        self.idle_since.lock().ok().map(|t| *t + idle)
    }
}

/// One stream being answered; dropped before `finished`, the client cancelled it.
struct ActiveStream {
    streams: Arc<H2Streams>,
    finished: bool,
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        if !self.finished {
            self.streams.cancelled();
        }
        if self.streams.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            if let Ok(mut t) = self.streams.idle_since.lock() {
                *t = Instant::now();
            }
        }
    }
}

/// A response body on an HTTP/2 stream: keeps the stream counted as active until its end.
pub struct H2Body {
    inner: ProxyBody,
    stream: ActiveStream,
}

impl hyper::body::Body for H2Body {
    type Data = bytes::Bytes;
    type Error = crate::proxy::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() || this.inner.is_end_stream() || matches!(frame, Some(Err(_))) {
            this.stream.finished = true;
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The service of one HTTP/2 connection: each stream counted from its request to the end of its
/// response body, and each one the client cancels charged to the connection's cancel budget.
fn service_h2<H, F>(
    handler: H,
    peer: SocketAddr,
    streams: Arc<H2Streams>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<H2Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<H2Body>, Infallible>> + Send + 'static,
> + Send
       + 'static
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    service_fn(move |req: Request<Incoming>| {
        let mut stream = streams.opened();
        let fut = handler(req, peer);
        async move {
            let resp = fut.await;
            stream.finished = hyper::body::Body::is_end_stream(resp.body());
            Ok::<_, Infallible>(resp.map(|inner| H2Body { inner, stream }))
        }
    })
}

/// Serves HTTP/2 on one connection; the drain sends GOAWAY and lets open streams finish.
/// A connection without a stream for `idle` is closed (GOAWAY), whatever PINGs or other frames
/// keep its socket busy; so is one whose client spends its cancel budget ([`H2_CANCEL_BURST`]).
#[allow(clippy::too_many_arguments)]
async fn drive_h2<I, S>(
    builder: &http2::Builder<TokioExecutor>,
    io: I,
    svc: S,
    mut drain: watch::Receiver<bool>,
    peer: SocketAddr,
    streams: Arc<H2Streams>,
    idle: Duration,
    metrics: Option<Arc<Metrics>>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = H2Body> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    loop {
        let idle_at = streams.idle_deadline(idle);
        let idle_check = tokio::time::sleep_until(
            idle_at.map_or_else(|| tokio::time::Instant::now() + idle, Into::into),
        );
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "h2 connection ended with an error");
                }
                return;
            }
            () = shutdown_requested(&mut drain) => break,
            () = streams.flood.notified() => {
                tracing::warn!(
                    peer = %peer,
                    burst = H2_CANCEL_BURST,
                    per_second = H2_CANCEL_REFILL_PER_SEC,
                    "HTTP/2 client cancels too many streams: connection closed (GOAWAY)"
                );
                if let Some(m) = &metrics {
                    m.h2_cancel_limited.inc();
                }
                // The client's open streams are cut: its connection is what is being refused.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
                return;
            }
            () = idle_check => {
                if streams.idle_deadline(idle).is_some_and(|at| at <= Instant::now()) {
                    tracing::debug!(peer = %peer, "HTTP/2 connection without a stream for idle_timeout: closed (GOAWAY)");
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Answers 503 to a connection over `max_connections` without waiting on it.
fn refuse(stream: TcpStream, peer: SocketAddr, metrics: Option<&Metrics>) {
    if let Some(m) = metrics {
        m.connections_refused.inc();
    }
    tracing::warn!(peer = %peer, "max_connections reached: connection refused with 503");
    let _ = stream.try_write(OVERLOADED);
}

/// Keeps `consent_gateway_connections_open{listener}` (and the worker's own gauge) right,
/// however the connection task ends.
struct OpenGuard([Option<Gauge>; 2]);

impl OpenGuard {
    fn new(gauges: [Option<Gauge>; 2]) -> Self {
        for g in gauges.iter().flatten() {
            g.inc();
        }
        OpenGuard(gauges)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        for g in self.0.iter().flatten() {
            g.dec();
        }
    }
}
