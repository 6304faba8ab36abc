//! Upstream clients: [`Upstreams`] hands out pooled clients, one per (trust, SNI name), trusting
//! the platform's roots unless the host names its own `upstream_ca` (read at registry load, keyed
//! by the digest of its bytes, so a reload with a new bundle gets a new client). An
//! [`UpstreamClient`] bounds the upstream's response head, skips header lines that do not parse,
//! and retries a bodiless idempotent request once when the upstream closed a kept-alive
//! connection under it.
//!
//! # The worker's own HTTP/1 pool
//!
//! The proxy worker's own pool of plain-http HTTP/1 upstream connections, driven by the requests
//! that use them.
//!
//! hyper-util's pooled client runs every upstream connection in a task of its own: each request
//! crosses a channel to that task, its response comes back over another, and for every HTTP/1
//! request one more task is spawned that returns the connection to the pool once the response
//! body has been read. An idle pooled connection keeps that task, the channel and hyper's read
//! and write buffers: about 30 KiB.
//!
//! Here a bodiless request (a GET, a HEAD...) to a plain-http upstream takes an idle socket of
//! the worker's pool (or connects), makes a hyper HTTP/1 client connection on it and drives that
//! connection itself: in the request's own future until the response head, then from the
//! response body ([`OwnBody`]), which polls the connection as the client takes the body. When the
//! response is complete and the connection idle, its socket goes back to the pool
//! (`without_shutdown`) and hyper's state is dropped: an idle pooled connection is a socket. A
//! request whose client goes away before the response head still completes in a task of its own
//! (and reads up to [`ABANDONED_DRAIN_BYTES`] of the body), so that its connection is pooled
//! again, as with the detached exchange of hyper-util's client.
//!
//! A pooled socket is checked before use: if its upstream closed it (or sent anything) while it
//! was idle, it is dropped. A request on a reused connection that the upstream closes before
//! answering is sent once more on a new connection when it has not been written, or when its
//! method is idempotent (it has no body here).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, TrySendError};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::crypto::ring as provider;
use rustls_pki_types::ServerName;
use tokio::time::Instant;

use crate::config::Limits;
use crate::policy::registry::HostPolicy;
use crate::proxy::idle::UpstreamBody;

/// Largest upstream response head accepted (status line and headers; `max_header_bytes` when
/// that is larger), beyond which the response is a 502 logged as `upstream response head too
/// large`; past 100 headers too. hyper-util's client has no head-size option: this is hyper's
/// read buffer cap (`http1_max_buf_size`), checked between reads, so a head may pass with one
/// read of slack (up to twice the cap) and the client never reads more than the cap at once.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Idle connections kept per upstream, per proxy worker (and per client, for TLS upstreams).
const MAX_IDLE_PER_UPSTREAM: usize = 512;

/// The body sent upstream: the client's, or none for a request sent (and perhaps resent) without
/// one.
pub(crate) type SentBody = Either<UpstreamBody, Empty<Bytes>>;

/// Why an upstream exchange failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// From hyper-util's pooled client (TLS upstreams, requests with a body or an upgrade).
    Client(hyper_util::client::legacy::Error),
    /// Connecting, for the worker's own pool ([`H1Pool`]).
    Connect(BoxError),
    /// The exchange on a connection of the worker's own pool.
    Http(hyper::Error),
    /// A new connection of the worker's own pool closed before the request could be written.
    Closed,
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Client(e) => e.fmt(f),
            UpstreamError::Connect(e) => write!(f, "connect: {e}"),
            UpstreamError::Http(e) => e.fmt(f),
            UpstreamError::Closed => f.write_str("connection closed before the request was sent"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Client(e) => Some(e),
            UpstreamError::Connect(e) => Some(e.as_ref()),
            UpstreamError::Http(e) => Some(e),
            UpstreamError::Closed => None,
        }
    }
}

/// An upstream response body: from hyper-util's pooled client, or from a connection of the
/// worker's own pool, which reading the body drives ([`OwnBody`]).
pub enum ResponseBody {
    Client(hyper::body::Incoming),
    Own(OwnBody),
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Client(b) => std::pin::Pin::new(b).poll_frame(cx),
            ResponseBody::Own(b) => std::pin::Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Client(b) => b.is_end_stream(),
            ResponseBody::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ResponseBody::Client(b) => b.size_hint(),
            ResponseBody::Own(b) => b.size_hint(),
        }
    }
}

/// A pooled client to upstreams, plain or TLS.
///
/// hyper-util already resends a request that a pooled connection refused before any byte of it
/// was written (`retry_canceled_requests`). An upstream can also close an idle kept-alive
/// connection while our request is on its way: the request is written, then the connection ends
/// without a response byte. A request with an idempotent method (RFC 9110 §9.2.2) and no body
/// is then sent once more; any other request (every POST, every request with a body) is not,
/// since the upstream may have acted on it.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Client<HttpsConnector<CappedConnector>, SentBody>,
    /// The worker's own pool, for bodiless requests to a plain-http upstream.
    own: Option<Arc<H1Pool>>,
}

impl UpstreamClient {
    /// The worker's own pool, if this client's upstreams are plain http.
    pub fn own_pool(&self) -> Option<&Arc<H1Pool>> {
        self.own.as_ref()
    }

    /// Sends one request and returns the upstream response head.
    pub async fn request(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        use hyper::body::Body as _;
        let replayable = is_idempotent(req.method()) && req.body().is_end_stream();
        let (parts, body) = req.into_parts();
        if !replayable {
            let sent = self
                .inner
                .request(Request::from_parts(parts, Either::Left(body)))
                .await;
            return sent.map(without_conflicting_length);
        }
        drop(body);
        // hyper consumes the request head as it writes it, and its error gives nothing back once
        // a byte was written: what a second attempt needs is kept aside first, and made into a
        // request only if that attempt happens.
        let replay = Replay::of(&parts);
        let first = self
            .inner
            .request(Request::from_parts(parts, Either::Right(Empty::new())))
            .await;
        let resp = match first {
            Err(e) if closed_before_answering(&e) => {
                tracing::info!(
                    upstream = %replay.uri.authority().map_or("", |a| a.as_str()),
                    method = %replay.method,
                    "upstream closed the connection before answering: sending the request once more"
                );
                self.inner.request(replay.into_request()).await
            }
            first => first,
        };
        resp.map(without_conflicting_length)
    }
}

/// The head of a bodiless request, kept to send it once more: its method, target, version and
/// headers (the header values share their bytes with the request's; the map itself is copied).
pub(crate) struct Replay {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Replay {
    pub(crate) fn of(parts: &http::request::Parts) -> Self {
        Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    pub(crate) fn into_request(self) -> Request<SentBody> {
        let mut req = Request::new(Either::Right(Empty::new()));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// Methods a client may send again without changing what the first one did (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether the upstream ended the connection without a byte of response (EOF or reset) — what
/// a stale kept-alive connection looks like. Not a connect failure, not a timeout.
fn closed_before_answering(e: &hyper_util::client::legacy::Error) -> bool {
    !e.is_connect() && closed_before_answering_by(causes(e))
}

/// [`closed_before_answering`], from the chain of an error's causes.
pub(crate) fn closed_before_answering_by<'a>(
    chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> bool {
    for s in chain {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
            if h.is_timeout() || h.is_parse() || h.is_user() {
                return false;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            );
        }
    }
    false
}

/// An upstream response with both `Transfer-Encoding` and `Content-Length` was read as chunked;
/// its `Content-Length` must not reach the client (RFC 9112 §6.3).
pub(crate) fn without_conflicting_length<B>(mut resp: Response<B>) -> Response<B> {
    if resp.headers().contains_key(header::TRANSFER_ENCODING) {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    resp
}

/// Largest `[limits] upstream_read_size`: the size of the per-thread scratch chunk.
const MAX_UPSTREAM_READ: usize = 64 * 1024;

/// The plain TCP connector with reads capped at `[limits] upstream_read_size` (TLS sits above
/// it). hyper's client reads as much as its read buffer holds (growing it up to the response
/// head limit on a fast body) and hands each read on as one body frame, which keeps its
/// allocation alive until the client has taken it: the cap bounds what a stalled response holds
/// (docs/configuration.md, "Memory per connection"). Small reads cost system calls: a 1 MiB body
/// read 4 KiB at a time took about five times the CPU it takes with 32 KiB reads (BENCHMARKS.md).
#[derive(Clone)]
pub struct CappedConnector {
    http: HttpConnector,
    read: usize,
}

impl CappedConnector {
    pub fn new(http: HttpConnector, read: usize) -> Self {
        CappedConnector {
            http,
            read: read.clamp(1, MAX_UPSTREAM_READ),
        }
    }
}

type ConnectFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<TokioIo<CappedTcp>, BoxError>> + Send>,
>;
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for CappedConnector {
    type Response = TokioIo<CappedTcp>;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let read = self.read;
        Box::pin(async move {
            let io = connecting.await?;
            Ok(TokioIo::new(CappedTcp {
                io: io.into_inner(),
                read,
            }))
        })
    }
}

thread_local! {
    /// Where [`CappedTcp`] reads (see its `poll_read`).
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; MAX_UPSTREAM_READ].into_boxed_slice());
}

/// A TCP stream whose reads return at most `read` bytes.
pub struct CappedTcp {
    io: tokio::net::TcpStream,
    read: usize,
}

impl CappedTcp {
    pub fn get_ref(&self) -> &tokio::net::TcpStream {
        &self.io
    }
}

impl hyper_util::client::legacy::connect::Connection for CappedTcp {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.io.connected()
    }
}

impl tokio::io::AsyncRead for CappedTcp {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() <= this.read {
            return std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        }
        // Through the thread's scratch chunk, copied into hyper's buffer: bounding a read to a
        // part of hyper's (uninitialized) buffer would mean zeroing that part first, on every
        // read, those that find nothing to read included.
        SCRATCH.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                let mut part = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(this.read));
                std::task::ready!(std::pin::Pin::new(&mut this.io).poll_read(cx, &mut part))?;
                let n = part.filled().len();
                buf.advance(n);
                return std::task::Poll::Ready(Ok(()));
            };
            let mut part = tokio::io::ReadBuf::new(&mut scratch[..this.read]);
            std::task::ready!(std::pin::Pin::new(&mut this.io).poll_read(cx, &mut part))?;
            buf.put_slice(part.filled());
            std::task::Poll::Ready(Ok(()))
        })
    }
}

impl tokio::io::AsyncWrite for CappedTcp {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, b)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Why an upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("TLS client configuration: {0}")]
    Config(String),
    #[error("upstream_host {0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// Clients by trust and SNI name ([`HostPolicy::upstream_client_key`]), built on first use and
/// pooled from then on. The CA bundle was read and parsed when the registry was compiled: nothing
/// here touches the filesystem. A reload that changes a bundle changes the key, so the host gets
/// a new client (and new connections) on its next request.
pub struct Upstreams {
    limits: Limits,
    /// The platform's trusted roots, read once.
    platform_roots: Arc<rustls::RootCertStore>,
    clients: Mutex<HashMap<[u8; 32], Arc<UpstreamClient>>>,
    /// The client of every plain-http upstream (no CA, no SNI): found without a lock.
    plain: std::sync::OnceLock<Arc<UpstreamClient>>,
}

impl Upstreams {
    pub fn new(limits: Limits) -> Self {
        let native = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!("no platform CA certificates found: https upstreams need upstream_ca");
        }
        Upstreams::with_roots(limits, Arc::new(roots))
    }

    fn with_roots(limits: Limits, platform_roots: Arc<rustls::RootCertStore>) -> Self {
        Upstreams {
            limits,
            platform_roots,
            clients: Mutex::new(HashMap::new()),
            plain: std::sync::OnceLock::new(),
        }
    }

    /// Clients of their own (their own connection pools) with the same limits and trusted roots:
    /// one per proxy worker, so that a pooled connection stays on the thread that uses it.
    pub fn sibling(&self) -> Upstreams {
        Upstreams::with_roots(self.limits.clone(), Arc::clone(&self.platform_roots))
    }

    /// The client for a host's upstream. No allocation once the client exists.
    pub fn client_for(&self, policy: &HostPolicy) -> Result<Arc<UpstreamClient>, UpstreamTlsError> {
        if !policy.upstream.is_tls() {
            if let Some(c) = self.plain.get() {
                return Ok(Arc::clone(c));
            }
            let built = Arc::new(self.build(None, None, true)?);
            return Ok(Arc::clone(self.plain.get_or_init(|| built)));
        }
        let key = &policy.upstream_client_key;
        if let Some(c) = self.clients.lock().ok().and_then(|m| m.get(key).cloned()) {
            return Ok(c);
        }
        let client = Arc::new(self.build(
            policy.upstream_ca.as_ref().map(|t| Arc::clone(&t.roots)),
            policy.upstream_sni.as_deref(),
            false,
        )?);
        if let Ok(mut m) = self.clients.lock() {
            m.insert(*key, Arc::clone(&client));
        }
        Ok(client)
    }

    /// A client; `plain`: for plain-http upstreams, with the worker's own pool ([`H1Pool`]).
    fn build(
        &self,
        ca: Option<Arc<rustls::RootCertStore>>,
        sni: Option<&str>,
        plain: bool,
    ) -> Result<UpstreamClient, UpstreamTlsError> {
        let roots = ca.unwrap_or_else(|| Arc::clone(&self.platform_roots));
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| UpstreamTlsError::Config(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(self.limits.upstream_connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match sni {
            Some(name) => {
                let sn = ServerName::try_from(name.to_owned())
                    .map_err(|_| UpstreamTlsError::ServerName(name.to_owned()))?;
                builder.with_server_name_resolver(FixedServerNameResolver::new(sn))
            }
            None => builder,
        };
        let max_head = MAX_RESPONSE_HEAD.max(self.limits.max_header_bytes);
        let own = plain.then(|| {
            Arc::new(H1Pool::new(
                CappedConnector::new(http.clone(), self.limits.upstream_read_size),
                max_head,
                MAX_IDLE_PER_UPSTREAM,
                self.limits.idle_timeout,
            ))
        });
        let connector = builder
            .enable_all_versions()
            .wrap_connector(CappedConnector::new(http, self.limits.upstream_read_size));
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.limits.idle_timeout)
            .pool_max_idle_per_host(MAX_IDLE_PER_UPSTREAM)
            // A pooled connection found closed before the request was written: resend.
            .retry_canceled_requests(true)
            // Response head limits. The header count stays hyper's default, 100 (setting it
            // moves the parser's header array to the heap).
            .http1_max_buf_size(max_head)
            .http2_max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
            // A header line that does not parse (a NUL or bare CR in a Set-Cookie, a space in
            // a name, obs-fold) is skipped rather than failing the whole response with a 502:
            // the cookie is not forwarded, the page still is.
            .http1_ignore_invalid_headers_in_responses(true)
            .build(connector);
        Ok(UpstreamClient { inner, own })
    }
}

// ---------------------------------------------------------------------------------------------
// The worker's own HTTP/1 pool.

type Conn = http1::Connection<TokioIo<CappedTcp>, SentBody>;
type Sent = Result<Response<Incoming>, TrySendError<Request<SentBody>>>;
type SentFuture = Pin<Box<dyn Future<Output = Sent> + Send>>;

/// Most of an abandoned response's body read (and thrown away) so that its upstream connection
/// can go back to the pool; a longer body closes the connection instead.
pub const ABANDONED_DRAIN_BYTES: usize = 64 * 1024;
/// Longest such a drain may take.
pub const ABANDONED_DRAIN_TIME: Duration = Duration::from_secs(1);

/// Idle plain-http HTTP/1 upstream connections of one proxy worker, by upstream.
pub struct H1Pool {
    connector: CappedConnector,
    builder: http1::Builder,
    idle: Mutex<Vec<IdleSet>>,
    /// Idle connections kept per upstream.
    max_idle: usize,
    /// How long a connection may stay idle in the pool.
    idle_timeout: Duration,
}

/// The idle connections to one upstream, the most recently used last.
struct IdleSet {
    authority: Authority,
    conns: VecDeque<(TokioIo<CappedTcp>, Instant)>,
}

impl H1Pool {
    pub fn new(
        connector: CappedConnector,
        max_head: usize,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Self {
        let mut builder = http1::Builder::new();
        builder
            // As the pooled client: the response head bound, and header lines that do not
            // parse skipped rather than failing the response.
            .max_buf_size(max_head)
            .ignore_invalid_headers_in_responses(true);
        H1Pool {
            connector,
            builder,
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        }
    }

    /// Sends a bodiless request (absolute-form URI, `Host` set) and waits for the response head,
    /// at most `timeout` from now (`None` past it). The response body drives the connection.
    pub async fn exchange(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        timeout: Duration,
    ) -> Option<Result<Response<ResponseBody>, UpstreamError>> {
        let deadline = Instant::now() + timeout;
        let (mut parts, body) = req.into_parts();
        drop(body);
        let authority = parts.uri.authority()?.clone();
        // HTTP/1 requests to an origin carry the path only.
        parts.uri = Uri::from(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let method = parts.method.clone();
        let result = tokio::time::timeout_at(deadline, async {
            let Some(io) = self.checkout(&authority) else {
                let req = Request::from_parts(parts, Either::Right(Empty::new()));
                return self.send_fresh(&authority, req, deadline).await;
            };
            // A reused connection may have been closed by its upstream a moment ago: keep what
            // it takes to send an idempotent request again.
            let again = is_idempotent(&parts.method).then(|| Replay::of(&parts));
            let req = Request::from_parts(parts, Either::Right(Empty::new()));
            match self.send(io, &authority, req, deadline).await {
                Err(Failed::NotSent(req)) => self.send_fresh(&authority, *req, deadline).await,
                Err(Failed::Sent(e)) if closed_before_answering_h1(&e) => match again {
                    Some(replay) => {
                        tracing::info!(
                            upstream = %authority,
                            method = %method,
                            "upstream closed the connection before answering: sending the request once more"
                        );
                        self.send_fresh(&authority, replay.into_request(), deadline)
                            .await
                    }
                    None => Err(UpstreamError::Http(e)),
                },
                Err(Failed::Sent(e)) => Err(UpstreamError::Http(e)),
                Err(Failed::Connect(e)) => Err(e),
                Ok(r) => Ok(r),
            }
        })
        .await;
        result.ok()
    }

    /// Sends on a new connection.
    async fn send_fresh(
        self: &Arc<Self>,
        authority: &Authority,
        req: Request<SentBody>,
        deadline: Instant,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::Connect(Box::new(e)))?;
        let io = tower_service::Service::call(&mut self.connector.clone(), uri)
            .await
            .map_err(UpstreamError::Connect)?;
        match self.send(io, authority, req, deadline).await {
            Ok(r) => Ok(r),
            Err(Failed::Sent(e)) => Err(UpstreamError::Http(e)),
            Err(Failed::NotSent(_)) => Err(UpstreamError::Closed),
            Err(Failed::Connect(e)) => Err(e),
        }
    }

    /// Sends on `io` and waits for the response head.
    async fn send(
        self: &Arc<Self>,
        io: TokioIo<CappedTcp>,
        authority: &Authority,
        req: Request<SentBody>,
        deadline: Instant,
    ) -> Result<Response<ResponseBody>, Failed> {
        let head_request = req.method() == Method::HEAD;
        let (mut sender, conn) = self
            .builder
            .handshake(io)
            .await
            .map_err(|e| Failed::Connect(UpstreamError::Http(e)))?;
        let sent: SentFuture = Box::pin(sender.try_send_request(req));
        let mut exchange = Exchange {
            conn: Some(Box::new(conn)),
            sent: Some(sent),
            pool: Arc::clone(self),
            authority: authority.clone(),
            deadline,
            head_request,
            detached: false,
            finished: None,
        };
        let head = std::future::poll_fn(|cx| exchange.poll_head(cx)).await;
        // No other request goes on this connection: once the response is read, it finishes.
        drop(sender);
        match head {
            Ok(resp) => Ok(exchange.respond(without_conflicting_length(resp))),
            Err(mut e) => match e.take_message() {
                Some(req) => Err(Failed::NotSent(Box::new(req))),
                None => Err(Failed::Sent(e.into_error())),
            },
        }
    }

    /// Takes the socket of a connection that is done (its response read, nothing more to send)
    /// back into the pool, unless its upstream sent more than the response.
    fn release(&self, authority: Authority, conn: Conn) {
        let parts = conn.into_parts();
        if parts.read_buf.is_empty() {
            self.checkin(authority, parts.io);
        }
    }

    /// An idle connection to `authority` that its upstream has not closed, the most recently
    /// used first.
    fn checkout(&self, authority: &Authority) -> Option<TokioIo<CappedTcp>> {
        let mut idle = self.idle.lock().ok()?;
        let set = idle.iter_mut().find(|s| s.authority == *authority)?;
        let now = Instant::now();
        while let Some((io, since)) = set.conns.pop_back() {
            if now.saturating_duration_since(since) < self.idle_timeout && still_open(&io) {
                return Some(io);
            }
        }
        None
    }

    /// Puts an idle connection back, and drops the oldest one if it expired, was closed by its
    /// upstream or is one too many.
    fn checkin(&self, authority: Authority, io: TokioIo<CappedTcp>) {
        if !still_open(&io) {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let i = match idle.iter().position(|s| s.authority == authority) {
            Some(i) => i,
            None => {
                idle.push(IdleSet {
                    authority,
                    conns: VecDeque::new(),
                });
                idle.len() - 1
            }
        };
        let set = &mut idle[i];
        let now = Instant::now();
        if let Some((oldest, since)) = set.conns.front() {
            if now.saturating_duration_since(*since) >= self.idle_timeout || !still_open(oldest) {
                set.conns.pop_front();
            }
        }
        if set.conns.len() >= self.max_idle {
            set.conns.pop_front();
        }
        set.conns.push_back((io, now));
    }
}

/// How a send failed.
enum Failed {
    /// The connection closed before the request was written: it can go on another.
    NotSent(Box<Request<SentBody>>),
    /// It failed after the request was (perhaps) written.
    Sent(hyper::Error),
    Connect(UpstreamError),
}

/// One request on a connection, until its response head. Dropped before that (the client went
/// away), it finishes in a task of its own so that the connection can be pooled again.
struct Exchange {
    /// Boxed: hyper's connection state is large, and moves from here to the response body.
    conn: Option<Box<Conn>>,
    sent: Option<SentFuture>,
    pool: Arc<H1Pool>,
    authority: Authority,
    deadline: Instant,
    head_request: bool,
    /// Already finishing on its own: dropped, it is not handed on again.
    detached: bool,
    /// The connection is done (`true`: cleanly).
    finished: Option<bool>,
}

impl Exchange {
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Sent> {
        if let (Some(conn), None) = (self.conn.as_mut(), self.finished) {
            if let Poll::Ready(r) = conn.poll_without_shutdown(cx) {
                // Done already: failed (the response future gets the error), or the whole
                // response read and nothing more to send (the request's sender is gone).
                self.finished = Some(r.is_ok());
            }
        }
        let Some(sent) = self.sent.as_mut() else {
            return Poll::Pending;
        };
        let r = ready!(sent.as_mut().poll(cx));
        self.sent = None;
        Poll::Ready(r)
    }

    /// The response, its body driving the connection from now on.
    fn respond(&mut self, resp: Response<Incoming>) -> Response<ResponseBody> {
        let reusable = keeps_alive(&resp, self.head_request);
        if let Some(ok) = self.finished {
            // The whole exchange is over (its response body is in the body's channel).
            if let Some(conn) = self.conn.take() {
                if ok && reusable {
                    self.pool.release(self.authority.clone(), *conn);
                }
            }
        }
        let driven = self.conn.take().map(|conn| Driven {
            conn,
            pool: Arc::clone(&self.pool),
            authority: self.authority.clone(),
            reusable,
        });
        resp.map(|body| {
            ResponseBody::Own(OwnBody {
                body,
                driven,
                failed: None,
            })
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        let (Some(conn), Some(sent)) = (self.conn.take(), self.sent.take()) else {
            return;
        };
        if Instant::now() >= self.deadline {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rest = Exchange {
            conn: Some(conn),
            sent: Some(sent),
            pool: Arc::clone(&self.pool),
            authority: self.authority.clone(),
            deadline: self.deadline,
            head_request: self.head_request,
            detached: true,
            finished: self.finished,
        };
        rt.spawn(async move {
            let head = tokio::time::timeout_at(
                rest.deadline,
                std::future::poll_fn(|cx| rest.poll_head(cx)),
            )
            .await;
            if let Ok(Ok(resp)) = head {
                drain_abandoned(rest.respond(resp).into_body()).await;
            }
        });
    }
}

/// Reads an abandoned response body to its end if it is short and quick.
pub async fn drain_abandoned(mut body: ResponseBody) {
    use http_body_util::BodyExt;
    let drain = async {
        let mut read = 0;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > ABANDONED_DRAIN_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(ABANDONED_DRAIN_TIME, drain).await;
}

/// A response body from a connection of the worker's pool; polling it drives the connection.
pub struct OwnBody {
    body: Incoming,
    /// Until the connection is done.
    driven: Option<Driven>,
    /// The body's error, held back one turn.
    failed: Option<hyper::Error>,
}

struct Driven {
    conn: Box<Conn>,
    pool: Arc<H1Pool>,
    authority: Authority,
    /// The response leaves the connection open for another request.
    reusable: bool,
}

impl OwnBody {
    /// Polls the connection; once it is done (the response read, nothing else to send), its
    /// socket goes back to the pool if the response kept it alive and nothing is left unread.
    fn drive(&mut self, cx: &mut Context<'_>) {
        let Some(d) = self.driven.as_mut() else {
            return;
        };
        let Poll::Ready(done) = d.conn.poll_without_shutdown(cx) else {
            return;
        };
        let Some(d) = self.driven.take() else {
            return;
        };
        if done.is_ok() && d.reusable {
            d.pool.release(d.authority, *d.conn);
        }
    }
}

impl Body for OwnBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        this.drive(cx);
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        if let Some(Err(e)) = frame {
            // The upstream cut the body. Not at once: hyper writes the response head (and what
            // came of the body) when the body is not ready, and fails the whole response if the
            // body fails before that, which would leave the client without any response.
            this.failed = Some(e);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if frame.is_none() || this.body.is_end_stream() {
            // The end: the connection may have become idle since it was polled.
            this.drive(cx);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether the response leaves its connection open: HTTP/1.1, no `Connection: close`, and a
/// body whose end is known without the connection closing.
fn keeps_alive(resp: &Response<Incoming>, head_request: bool) -> bool {
    if resp.version() != Version::HTTP_11 {
        return false;
    }
    let close = resp.headers().get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    });
    if close {
        return false;
    }
    let s = resp.status();
    head_request
        || s.is_informational()
        || s == StatusCode::NO_CONTENT
        || s == StatusCode::NOT_MODIFIED
        || resp.headers().contains_key(CONTENT_LENGTH)
        || resp.headers().contains_key(TRANSFER_ENCODING)
}

/// Whether an idle pooled socket is still open and quiet. Free when the runtime has seen
/// nothing on it; a one-byte read otherwise (an idle upstream connection that has anything to
/// read, end of stream included, is not reused).
fn still_open(io: &TokioIo<CappedTcp>) -> bool {
    let tcp = io.inner().get_ref();
    let waker = noop_waker();
    let mut cx = Context::from_waker(waker);
    if tcp.poll_read_ready(&mut cx).is_pending() {
        return true;
    }
    let mut byte = [0u8; 1];
    matches!(tcp.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn noop_waker() -> &'static Waker {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    static WAKER: OnceLock<Waker> = OnceLock::new();
    WAKER.get_or_init(|| Waker::from(Arc::new(Noop)))
}

/// Whether the upstream ended the connection without a byte of response (end of stream or
/// reset): what a kept-alive connection closed under the request looks like.
fn closed_before_answering_h1(e: &hyper::Error) -> bool {
    closed_before_answering_by(std::iter::once(e as _).chain(causes(e)))
}

/// The causes of an error, its own source first: the one walk over the chains of hyper and
/// hyper-util errors (hyper-util's client error wraps hyper's, which wraps an I/O error or the
/// request body's own error).
pub fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(e.source(), |s| s.source())
}
