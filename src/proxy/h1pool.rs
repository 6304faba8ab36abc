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

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, TrySendError};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::proxy::upstream::{
    closed_before_answering_by, is_idempotent, without_conflicting_length, CappedConnector,
    CappedTcp, Replay, ResponseBody, SentBody, UpstreamError,
};

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
        req: Request<crate::proxy::body::UpstreamBody>,
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
                Err(Failed::Sent(e)) if closed_before_answering(&e) => match again {
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
fn closed_before_answering(e: &hyper::Error) -> bool {
    closed_before_answering_by(std::iter::once(e as _).chain(crate::proxy::error::causes(e)))
}
