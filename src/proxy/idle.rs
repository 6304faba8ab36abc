//! Idle timeouts: [`IdleBody`] fails a body that stays quiet longer than `idle_timeout`;
//! [`IdleIo`] does the same for a whole client connection. [`UpstreamBody`] is the client's
//! request body as sent upstream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body went quiet for longer than `idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("body idle for longer than {0:?}")]
pub struct IdleTimeout(pub Duration);

/// A body whose frames must keep coming: each wait for the next frame is bounded by `timeout`.
/// The timer is only created when a frame is not ready at once, so small bodies cost nothing.
pub struct IdleBody<B> {
    inner: B,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Told once the whole body has been read (see [`IdleBody::notify_end`]).
    on_end: Option<tokio::sync::oneshot::Sender<()>>,
    /// Called if the body is dropped before its end without an error of its own: the reader
    /// (the client) gave up on it (see [`IdleBody::on_abandon`]).
    on_abandon: Option<Abandoned>,
    /// The body ended, or failed: dropping it now abandons nothing.
    finished: bool,
}

/// What to do when a body is abandoned (see [`IdleBody::on_abandon`]).
pub type Abandoned = Box<dyn FnOnce() + Send + Sync>;

impl<B> IdleBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        IdleBody {
            inner,
            timeout,
            sleep: None,
            on_end: None,
            on_abandon: None,
            finished: false,
        }
    }
}

impl<B> Drop for IdleBody<B> {
    fn drop(&mut self) {
        if let Some(f) = self.on_abandon.take() {
            if !self.finished {
                f();
            }
        }
    }
}

impl<B: Body> IdleBody<B> {
    /// Sends on `done` once the whole body has been read (at once for an empty body). Dropped
    /// unsent when the body is dropped before its end.
    pub fn notify_end(mut self, done: tokio::sync::oneshot::Sender<()>) -> Self {
        if self.inner.is_end_stream() {
            let _ = done.send(());
        } else {
            self.on_end = Some(done);
        }
        self
    }

    /// Calls `f` if the body is dropped before its end (an empty body never is), unless the
    /// body failed itself (upstream error, idle timeout): its reader abandoned it.
    pub fn on_abandon(mut self, f: Abandoned) -> Self {
        if !self.inner.is_end_stream() {
            self.on_abandon = Some(f);
        }
        self
    }

    fn ended(&mut self) {
        self.finished = true;
        if let Some(done) = self.on_end.take() {
            let _ = done.send(());
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(s) = this.sleep.as_mut() {
                    s.as_mut().reset(Instant::now() + this.timeout);
                }
                if frame.is_none()
                    || this.inner.is_end_stream()
                    || frame.as_ref().is_some_and(Result::is_err)
                {
                    this.ended();
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(sleep.as_mut().poll(cx));
                this.finished = true;
                Poll::Ready(Some(Err(Box::new(IdleTimeout(timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's request body as sent upstream: streamed, with the idle timeout.
pub type UpstreamBody = IdleBody<hyper::body::Incoming>;

/// A connection that fails with `TimedOut` when neither side moves a byte for `timeout` while
/// it is being read or written. Activity only records a timestamp; the timer is re-armed lazily
/// when it fires early.
pub struct IdleIo<T> {
    inner: T,
    timeout: Duration,
    last_activity: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        IdleIo {
            inner,
            timeout,
            last_activity: Instant::now(),
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// `Ready(err)` once the connection has been idle for `timeout`.
    ///
    /// The timer is not moved on every request (that costs a timer-wheel update per request):
    /// it stays at its old deadline, and when it fires while the connection was active since,
    /// it is re-armed to `last_activity + timeout`. One re-arm per `timeout` at most.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let deadline = self.last_activity + self.timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle timeout",
                ));
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_times_out_after_idle_timeout() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut io = IdleIo::new(ours, TIMEOUT);
        let start = Instant::now();
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_pushes_the_deadline_back() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut io = IdleIo::new(ours, TIMEOUT);
        let start = Instant::now();
        let mut buf = [0u8; 8];
        // A byte every 6 s for 30 s: never idle for 10 s, although the first timer (armed at
        // the start for 10 s) fires in between and must be re-armed, not obeyed.
        for _ in 0..5 {
            let peer = async {
                tokio::time::sleep(Duration::from_secs(6)).await;
                theirs.write_all(b"x").await.unwrap();
            };
            let (n, ()) = tokio::join!(io.read(&mut buf), peer);
            assert_eq!(n.unwrap(), 1);
        }
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        // Then silence: it ends 10 s after the last byte.
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(40));
    }
}
