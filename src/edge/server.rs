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
//!   between requests (it is closed without a response; slowloris connections end this way);
//! - `idle_timeout` bounds any stall of a connection ([`IdleIo`]) and of a streamed body;
//! - `max_connections`: past it a new connection gets a 503 and is closed at once;
//! - an HTTP/1 connection serves at most [`MAX_REQUESTS_PER_CONNECTION`] requests, then the
//!   response says `Connection: close` (like nginx's `keepalive_requests`);
//! - every HTTP/1 request head is also judged by [`HeadCheck`] (request smuggling), and each
//!   request carries the verdict on its own head (paired as [`crate::edge::scanner`] explains)
//!   for `proxy::checks::check_request`.
//!
//! HTTP/1.1 connections, plain and over TLS, hold no HTTP state while they wait for their next
//! request ([`serve_h1`]): hyper's connection, with its buffers, lives only while there is a
//! request to read or a response to write.
//!
//! hyper answers a request its parser refuses (400, 431, 414) itself, with an empty body, before
//! any handler runs; such a refusal is logged here with the access log's target and counted in
//! `consent_gateway_requests_total{host="unknown"}`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, CONNECTION, UPGRADE};
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
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + Unpin + 'static,
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
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + Unpin + 'static,
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
    // HTTP/1 connections share theirs (a new hyper connection is made from it for every busy
    // period of a connection).
    let h1_shared = Arc::new(h1.clone());
    let h1_limits = H1Limits {
        header_read: limits.header_read_timeout,
        idle: limits.idle_timeout,
        max_head: limits.max_header_bytes,
    };
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
                let drain = drain_rx.clone();
                let metrics = metrics.clone();
                let gauges = OpenGuard::new([open_gauge.clone(), worker_gauge.clone()]);
                let Some(acceptor) = tls.clone() else {
                    let h1 = Arc::clone(&h1_shared);
                    conns.spawn(async move {
                        let _permit = permit;
                        let _open = gauges;
                        let io = IdleIo::new(stream, h1_limits.idle);
                        serve_h1(io, peer, handler, &h1, h1_limits, drain, metrics).await;
                    });
                    continue;
                };
                let (h1, h2) = (Arc::clone(&h1_shared), h2.clone());
                let (idle, handshake) = (limits.idle_timeout, limits.header_read_timeout);
                conns.spawn(async move {
                    // Dropped in reverse: the permit is back before the gauges fall, so whoever
                    // sees a connection's close in the gauge can count on its permit.
                    let _open = gauges;
                    let _permit = permit;
                    let io = IdleIo::new(stream, idle);
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
                        serve_h1(stream, peer, handler, &h1, h1_limits, drain, metrics).await;
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

/// The service of one HTTP/1 connection: each request carries its head verdict, a 101 stops the
/// head scanner, and the response to the connection's [`MAX_REQUESTS_PER_CONNECTION`]th request
/// closes it. It outlives the hyper connections of a client connection ([`serve_h1`]), so
/// the count is the client connection's.
pub struct H1Service<H> {
    handler: H,
    peer: SocketAddr,
    checks: HeadChecks,
    gate: Arc<WriteGate>,
}

impl<H> H1Service<H> {
    fn new(handler: H, peer: SocketAddr, checks: HeadChecks, gate: Arc<WriteGate>) -> Self {
        H1Service {
            handler,
            peer,
            checks,
            gate,
        }
    }
}

impl<H, F> hyper::service::Service<Request<Incoming>> for H1Service<H>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F,
    F: Future<Output = Response<ProxyBody>> + Unpin,
{
    type Response = Response<GatedBody>;
    type Error = Infallible;
    type Future = Respond<F>;

    fn call(&self, mut req: Request<Incoming>) -> Respond<F> {
        self.checks.attach(&mut req);
        let last =
            self.gate.requests.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_REQUESTS_PER_CONNECTION;
        // A request that may switch protocols: the connection must be able to hand its socket
        // to the tunnel, which only a connection driven with upgrades does (see drive_exchange).
        // The response waits one turn so that the driver sees this first.
        let hold = req.headers().contains_key(UPGRADE);
        if hold {
            self.gate.upgrade.store(true, Ordering::Relaxed);
        }
        self.gate.in_flight.fetch_add(1, Ordering::Relaxed);
        Respond {
            fut: (self.handler)(req, self.peer),
            answer: Some(InFlight(Arc::clone(&self.gate))),
            checks: self.checks.clone(),
            last,
            hold,
        }
    }
}

/// The response of one HTTP/1 request (see [`H1Service`]).
pub struct Respond<F> {
    fut: F,
    /// Counts the request as in flight until its response body is gone.
    answer: Option<InFlight>,
    checks: HeadChecks,
    last: bool,
    hold: bool,
}

impl<F> Future for Respond<F>
where
    F: Future<Output = Response<ProxyBody>> + Unpin,
{
    type Output = Result<Response<GatedBody>, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        if this.hold {
            this.hold = false;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let mut resp = std::task::ready!(std::pin::Pin::new(&mut this.fut).poll(cx));
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            this.checks.upgraded();
        } else if this.last {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let Some(gate) = this.answer.take() else {
            // Polled again after its answer: hyper never does.
            return std::task::Poll::Pending;
        };
        std::task::Poll::Ready(Ok(resp.map(|inner| GatedBody { inner, gate })))
    }
}

/// A request whose response body has not been dropped yet (see [`WriteGate::in_flight`]).
pub struct InFlight(Arc<WriteGate>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Response body bytes an HTTP/1 connection may hold that its client has not taken yet: the
/// response body is not read further (from the upstream) until the socket has accepted what
/// was handed over. hyper's own bound on its write queue is `max_buf_size`, which must also
/// hold a whole request head (64 KiB by default); this one is smaller.
pub const H1_WRITE_AHEAD: usize = 8 * 1024;

/// What one HTTP/1 connection's socket ([`GateIo`]), its service and its response bodies share:
/// the write-ahead bound ([`H1_WRITE_AHEAD`]), and what tells that the connection is idle
/// between two requests, so that its hyper connection can be let go ([`serve_h1`]).
#[derive(Default)]
pub struct WriteGate {
    /// Body bytes handed over minus bytes written (head and framing bytes written count too, so
    /// this errs low).
    ahead: AtomicUsize,
    /// The body waiting for the socket to drain.
    waiting: std::sync::Mutex<Option<std::task::Waker>>,
    /// Requests handed to the service whose response body has not been dropped by hyper yet.
    in_flight: AtomicUsize,
    /// Requests handed to the service on this connection.
    requests: AtomicUsize,
    /// Everything hyper wrote has reached the socket: the last write-side call on the socket was
    /// a flush that completed (hyper flushes its socket only once its own buffer is empty).
    flushed: AtomicBool,
    /// hyper's last read of the socket found nothing to read.
    read_blocked: AtomicBool,
    /// A request of this connection asked to switch protocols.
    upgrade: AtomicBool,
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

    /// hyper holds nothing of this connection's: no request in flight, no byte left to write,
    /// and it waits for the client's next bytes. (With [`HeadChecks::between_requests`], its
    /// read buffer is empty too.)
    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.flushed.load(Ordering::Relaxed)
            && self.read_blocked.load(Ordering::Relaxed)
    }
}

/// The connection's socket, reporting what it writes to its [`WriteGate`].
pub struct GateIo<T> {
    inner: T,
    gate: Arc<WriteGate>,
}

impl<T> GateIo<T> {
    fn new(inner: T) -> (Self, Arc<WriteGate>) {
        let gate = Arc::new(WriteGate {
            flushed: AtomicBool::new(true),
            ..WriteGate::default()
        });
        (
            GateIo {
                inner,
                gate: Arc::clone(&gate),
            },
            gate,
        )
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for GateIo<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        self.gate
            .read_blocked
            .store(r.is_pending(), Ordering::Relaxed);
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for GateIo<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.gate.flushed.store(false, Ordering::Relaxed);
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
        self.gate.flushed.store(false, Ordering::Relaxed);
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
        let r = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_flush(cx));
        self.gate.flushed.store(r.is_ok(), Ordering::Relaxed);
        std::task::Poll::Ready(r)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.gate.flushed.store(false, Ordering::Relaxed);
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTP/1 response body held back while [`H1_WRITE_AHEAD`] bytes wait for the socket; the
/// request counts as in flight until hyper drops it.
pub struct GatedBody {
    inner: ProxyBody,
    gate: InFlight,
}

impl hyper::body::Body for GatedBody {
    type Data = bytes::Bytes;
    type Error = crate::proxy::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        let gate = &this.gate.0;
        if gate.ahead.load(Ordering::Relaxed) >= H1_WRITE_AHEAD {
            if let Ok(mut w) = gate.waiting.lock() {
                *w = Some(cx.waker().clone());
            }
            // The socket may have drained meanwhile.
            if gate.ahead.load(Ordering::Relaxed) >= H1_WRITE_AHEAD {
                return std::task::Poll::Pending;
            }
        }
        let frame = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                gate.ahead.fetch_add(d.len(), Ordering::Relaxed);
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

/// The time limits and head size of an HTTP/1 connection.
#[derive(Clone, Copy)]
struct H1Limits {
    /// `header_read_timeout`: from the moment the server waits for a request head.
    header_read: Duration,
    /// `idle_timeout`.
    idle: Duration,
    /// `max_header_bytes`.
    max_head: usize,
}

/// How long an HTTP/1 connection may stay idle with its hyper connection (buffers and
/// state) before that is let go ([`serve_h1`]): between [`H1_RELEASE_AFTER`] and twice
/// that after its last request started. A client whose next request follows within that keeps
/// its hyper connection, and costs nothing more per request than with a long-lived one.
pub const H1_RELEASE_AFTER: Duration = Duration::from_millis(20);

/// A connection whose next bytes can be waited for without hyper ([`serve_h1`]).
pub trait ReadReady {
    /// Ready when a read would not wait: the socket has bytes, or bytes were already taken off
    /// it and are held above it.
    fn poll_read_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>>;
}

impl ReadReady for IdleIo<TcpStream> {
    fn poll_read_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_ref().poll_read_ready(cx)
    }
}

impl ReadReady for tokio_rustls::server::TlsStream<IdleIo<TcpStream>> {
    fn poll_read_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        let (io, tls) = self.get_mut();
        // rustls decrypts every whole record it has read. hyper is let go only after its last
        // read found nothing (which tokio-rustls says only when rustls holds no plaintext), so
        // this is a safeguard: plaintext, a close_notify or an error already held is for a
        // read to see now, not after the socket's next bytes.
        match tls.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {
                io.get_ref().poll_read_ready(cx)
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Serves an HTTP/1 connection, plain or over TLS, holding no HTTP buffer while it waits between
/// requests.
///
/// hyper keeps an 8 KiB read buffer and an 8 KiB write buffer (and its connection state) for as
/// long as its connection lives, idle keep-alive ones included. Here a hyper connection only
/// lives while there is something to do: it is started when the client's socket becomes
/// readable, and let go (`without_shutdown`) once it has been idle for [`H1_RELEASE_AFTER`]: no
/// request started meanwhile, none in flight, its response flushed, every byte read belonging to
/// a complete request, and hyper waiting for more. The socket (with the head scanner, the write
/// gate and the service, which keep the connection's state) then waits for readability on its
/// own ([`ReadReady`]), and the next request gets a new hyper connection. Between requests a plain
/// connection costs its task, its socket and its timers (about 2 KiB) instead of about 17 KiB; a
/// TLS one keeps its rustls session besides.
///
/// The limits are those of a long-lived hyper connection: the wait for the next request head
/// (idle, then reading it) is bounded by `header_read_timeout` from the end of the previous
/// response (and by `idle_timeout`); the drain closes an idle connection at once and lets a busy
/// one finish its request; a request that may switch protocols keeps its hyper connection.
async fn serve_h1<T, H, F>(
    io: T,
    peer: SocketAddr,
    handler: H,
    builder: &http1::Builder,
    limits: H1Limits,
    mut drain: watch::Receiver<bool>,
    metrics: Option<Arc<Metrics>>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + ReadReady + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + Unpin + 'static,
{
    let (io, checks) = HeadCheck::new(io, limits.max_head);
    let (io, gate) = GateIo::new(io);
    let mut svc = H1Service::new(handler, peer, checks.clone(), Arc::clone(&gate));
    let mut io = io;
    // One wait for the drain and one timer for the whole connection, not one per request: the
    // timer is not moved when a request ends; when it fires early, it is set again.
    let drain_requested = shutdown_requested(&mut drain);
    tokio::pin!(drain_requested);
    let mut stop = Stop {
        fut: drain_requested,
        requested: false,
    };
    let idle_limit = limits.header_read.min(limits.idle);
    let mut since = tokio::time::Instant::now();
    let timer = tokio::time::sleep_until(since + idle_limit);
    tokio::pin!(timer);
    loop {
        let socket = io.get_mut().get_mut();
        let woken = std::future::poll_fn(|cx| {
            if stop.requested(cx) {
                return Poll::Ready(Idle::Drain);
            }
            if let Poll::Ready(r) = socket.poll_read_ready(cx) {
                return Poll::Ready(Idle::Readable(r));
            }
            loop {
                std::task::ready!(timer.as_mut().poll(cx));
                let deadline = since + idle_limit;
                if deadline <= tokio::time::Instant::now() {
                    return Poll::Ready(Idle::TimedOut);
                }
                timer.as_mut().reset(deadline);
            }
        })
        .await;
        match woken {
            Idle::Readable(Ok(())) => {}
            Idle::Drain => {
                close_idle(&mut io).await;
                return;
            }
            Idle::Readable(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                return;
            }
            Idle::TimedOut => {
                tracing::debug!(peer = %peer, "request head not received within header_read_timeout: connection closed");
                close_idle(&mut io).await;
                return;
            }
        }
        // What is left of header_read_timeout for this head.
        let head_deadline = since + limits.header_read;
        let mut h1 = builder.clone();
        h1.header_read_timeout(
            head_deadline.saturating_duration_since(tokio::time::Instant::now()),
        );
        let conn = h1.serve_connection(TokioIo::new(io), svc);
        let exchange = Box::pin(drive_exchange(
            conn,
            &gate,
            &checks,
            &mut stop,
            timer.as_mut(),
            peer,
            &metrics,
        ));
        let Some(parts) = exchange.await else {
            return;
        };
        // hyper's read buffer is empty when the connection is idle (or holds empty lines, which
        // its parser skips before a request line anyway); anything else would be part of a
        // request it did not finish reading.
        if !parts.read_buf.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            tracing::debug!(peer = %peer, bytes = parts.read_buf.len(), "unread request bytes when the connection went idle: closed");
            return;
        }
        tracing::trace!(peer = %peer, "connection idle: its HTTP/1 state let go");
        io = parts.io.into_inner();
        svc = parts.service;
        // Idle for at least that long already (the timer fires early, and is set again).
        since = tokio::time::Instant::now() - H1_RELEASE_AFTER;
    }
}

/// Closes a connection of [`serve_h1`] that waits for its next request, as hyper closes an idle
/// one: a TLS connection sends its close_notify, and the socket its FIN. At most for
/// [`CLOSE_IDLE_WITHIN`]: a client that does not read its socket cannot hold the close.
async fn close_idle<T: tokio::io::AsyncWrite + Unpin>(io: &mut T) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(CLOSE_IDLE_WITHIN, io.shutdown()).await;
}

/// See [`close_idle`].
const CLOSE_IDLE_WITHIN: Duration = Duration::from_secs(1);

/// What ended an idle wait of [`serve_h1`].
enum Idle {
    Readable(std::io::Result<()>),
    Drain,
    TimedOut,
}

/// The drain, as a connection of [`serve_h1`] waits for it all its life.
struct Stop<'a, F> {
    fut: std::pin::Pin<&'a mut F>,
    requested: bool,
}

impl<F: Future<Output = ()>> Stop<'_, F> {
    /// Whether the drain has begun (polled until it has, never after).
    fn requested(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if !self.requested && self.fut.as_mut().poll(cx).is_ready() {
            self.requested = true;
        }
        self.requested
    }
}

/// The hyper connection of [`serve_h1`], at one of its stages.
enum Stage<I, S>
where
    S: hyper::service::HttpService<Incoming>,
{
    /// Serving requests, let go when idle.
    Serving(http1::Connection<I, S>),
    /// Idle: being let go (`without_shutdown`).
    Releasing(http1::Connection<I, S>),
    /// A request may switch protocols: served to its end, with upgrades.
    Upgradable(http1::UpgradeableConnection<I, S>),
    Done,
}

/// Drives one hyper connection of [`serve_h1`] until it is idle (returns its parts: the
/// socket and the service) or ends (returns `None`).
async fn drive_exchange<I, H, F, D>(
    conn: http1::Connection<I, H1Service<H>>,
    gate: &WriteGate,
    checks: &HeadChecks,
    stop: &mut Stop<'_, D>,
    mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
    peer: SocketAddr,
    metrics: &Option<Arc<Metrics>>,
) -> Option<http1::Parts<I, H1Service<H>>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + Unpin + 'static,
    D: Future<Output = ()>,
{
    let mut stage = Stage::Serving(conn);
    let mut draining = false;
    // Looked at every H1_RELEASE_AFTER: the connection is let go when no request started since
    // the last look and it is idle.
    let mut seen = gate.requests.load(Ordering::Relaxed);
    timer
        .as_mut()
        .reset(tokio::time::Instant::now() + H1_RELEASE_AFTER);
    std::future::poll_fn(move |cx| loop {
        if !draining && stop.requested(cx) {
            draining = true;
            match &mut stage {
                Stage::Serving(c) | Stage::Releasing(c) => {
                    std::pin::Pin::new(c).graceful_shutdown()
                }
                Stage::Upgradable(c) => std::pin::Pin::new(c).graceful_shutdown(),
                Stage::Done => {}
            }
        }
        let ended = |r: hyper::Result<()>| {
            if let Err(e) = r {
                h1_connection_error(&e, peer, metrics.as_deref());
            }
            Poll::Ready(None)
        };
        match &mut stage {
            Stage::Serving(c) => {
                if let Poll::Ready(r) = std::pin::Pin::new(&mut *c).poll(cx) {
                    stage = Stage::Done;
                    return ended(r);
                }
                if gate.upgrade.load(Ordering::Relaxed) {
                    let Stage::Serving(c) = std::mem::replace(&mut stage, Stage::Done) else {
                        return Poll::Ready(None);
                    };
                    stage = Stage::Upgradable(c.with_upgrades());
                    continue;
                }
                if draining || timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let started = gate.requests.load(Ordering::Relaxed);
                if started != seen || !gate.idle() || !checks.between_requests() {
                    seen = started;
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + H1_RELEASE_AFTER);
                    continue;
                }
                // Idle: an idle hyper connection asked to shut down closes at once, and
                // `without_shutdown` gives its socket back instead of closing it.
                std::pin::Pin::new(&mut *c).graceful_shutdown();
                let Stage::Serving(c) = std::mem::replace(&mut stage, Stage::Done) else {
                    return Poll::Ready(None);
                };
                stage = Stage::Releasing(c);
            }
            Stage::Releasing(c) => {
                return match c.poll_without_shutdown(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        stage = Stage::Done;
                        ended(Err(e))
                    }
                    Poll::Ready(Ok(())) => {
                        let Stage::Releasing(c) = std::mem::replace(&mut stage, Stage::Done) else {
                            return Poll::Ready(None);
                        };
                        Poll::Ready(Some(c.into_parts()))
                    }
                };
            }
            Stage::Upgradable(c) => {
                let r = std::task::ready!(std::pin::Pin::new(&mut *c).poll(cx));
                stage = Stage::Done;
                return ended(r);
            }
            Stage::Done => return Poll::Ready(None),
        }
    })
    .await
}

/// Logs how an HTTP/1 connection failed. A request head hyper's parser refused was answered by
/// hyper itself (no handler ran, so no access log line yet): log and count it here.
fn h1_connection_error(e: &hyper::Error, peer: SocketAddr, metrics: Option<&Metrics>) {
    let Some(status) = crate::proxy::error::parser_refusal_status(e) else {
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
