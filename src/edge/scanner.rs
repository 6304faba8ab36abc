//! Request checks that hyper's own HTTP/1 parser does not make, for a proxy in front of origins
//! that may parse differently (request smuggling).
//!
//! hyper (httparse) already answers 400 before any handler runs to: obs-fold, a bare CR, a NUL or
//! other control byte in a header, a space before the colon, differing or signed
//! `Content-Length`s, `Transfer-Encoding` on HTTP/1.0, and a last transfer coding other than
//! `chunked`. It lets three things through that a front proxy must refuse:
//! - `Content-Length` together with `Transfer-Encoding`: hyper drops the `Content-Length`, reads
//!   the body as chunked and closes after the response, so the handler never sees the conflict;
//! - a bare LF as a line ending (RFC 9112 §2.2 lets a recipient accept it; we do not);
//! - a `Transfer-Encoding` that is more than the single coding `chunked` (`gzip, chunked`, or two
//!   `Transfer-Encoding` lines): hyper de-chunks and the other codings would be lost on the way.
//!
//! The first two are invisible in the parsed request, so [`HeadCheck`] reads the bytes hyper
//! reads, finds each request head with hyper's own framing rules (httparse for the head, the same
//! chunked grammar for bodies), and judges each head.
//!
//! # Each request carries the verdict on its own head
//!
//! This is the one place that pairs a verdict with a request; the rest of the request path only
//! reads it. For each head it finds, the scanner queues a [`Judged`]: the [`HeadVerdict`] and the
//! head's identity, its method and target hashed with a key of the connection's own (the target
//! as `http::Uri` holds it: authority, and path and query without a fragment). hyper hands a
//! connection's requests to the service one at a time, in the order of their heads, so the oldest
//! verdict queued is the one for the request being handed out, as long as the scanner framed the
//! stream as hyper did. The edge's service calls [`HeadChecks::attach`] on every HTTP/1 request
//! before anything else: it takes that verdict, checks its identity against the request's method
//! and target, and inserts it into the request's extensions. A verdict on another head (the
//! scanner and hyper framed the stream differently: the one way a verdict could reach the wrong
//! request) is replaced by [`HeadVerdict::Unvetted`], and so is a missing one (the scanner lost
//! track: a head it cannot parse, a malformed chunked body, after which it stops; hyper closes
//! those connections anyway). [`check_request`](crate::proxy::checks::check_request) turns a
//! rejected or unvetted verdict into a 400 + `Connection: close` before anything reaches the
//! upstream. A request without the extension is an HTTP/2 one.
//!
//! [`check_request`](crate::proxy::checks::check_request) also refuses what the parsed request shows: `CONNECT` (405: a reverse proxy
//! opens no tunnels), `TRACE` (405), an absolute-form target or HTTP/2 `:authority` whose `Host` names another
//! server (400), and CR, LF or NUL in a header value (400; hyper's HTTP/2 side already refuses
//! these, this is belt and braces). HTTP/2 requests carry no head verdict: their framing is
//! binary, and the h2 crate checks `Content-Length` against the data it frames. An offer to
//! upgrade to `h2c` is removed rather than forwarded (h2c smuggling).

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use foldhash::fast::RandomState;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::checks::{is_chunked, HeadVerdict, Reason};

/// The most headers hyper's server parser accepts in one head (its default, which `server.rs`
/// keeps).
const MAX_HEADERS: usize = 100;

/// Verdicts queued ahead of the requests hyper has yet to hand out. hyper reads one buffer ahead
/// at most, so this only bounds a client that pipelines thousands of tiny requests: the ones past
/// it are refused.
const MAX_QUEUED: usize = 4096;

// ---------------------------------------------------------------------------------------------
// The scanner: request heads and body framing, read off the byte stream as hyper reads it.

/// Where the scanner is in the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head (into `HeadScanner::head`).
    Head,
    /// Inside a body of known length: bytes left.
    Length(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Stopped: the connection was upgraded, or the scanner lost track.
    Off,
}

/// hyper's chunked-body grammar (`proto/h1/decode.rs`), state for state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting the first hex digit of a size line.
    Start,
    /// In the size digits; the size so far.
    Size(u64),
    /// Whitespace after the size.
    SizeLws(u64),
    /// A chunk extension (after `;`), up to CR.
    Extension(u64),
    /// Expecting the LF of the size line.
    SizeLf(u64),
    /// Chunk data: bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: a CR (end) or a trailer line.
    EndCr,
    EndLf,
    Trailer,
    TrailerLf,
}

/// The scanner's verdict on one request head, and which head it was (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    pub verdict: HeadVerdict,
    /// [`head_id`] of the head's method and target; `None` for a head refused before its
    /// request line was read (too large, malformed).
    head: Option<u64>,
}

/// Reads the client's bytes and yields one verdict per request head.
#[derive(Debug)]
pub struct HeadScanner {
    phase: Phase,
    /// The head read so far (empty lines before it included).
    head: Vec<u8>,
    /// How much of `head` has already been searched for the empty line that ends it.
    searched: usize,
    /// Largest head accepted (`max_header_bytes`, as hyper's parser is configured).
    max_head: usize,
    /// The key of the heads' identities ([`head_id`]), shared with the service's end.
    keys: RandomState,
}

impl HeadScanner {
    pub fn new(max_head: usize) -> Self {
        HeadScanner {
            phase: Phase::Head,
            head: Vec::new(),
            searched: 0,
            max_head,
            keys: RandomState::default(),
        }
    }

    /// Whether the scanner has stopped.
    pub fn is_off(&self) -> bool {
        self.phase == Phase::Off
    }

    /// Whether every byte fed so far belongs to a complete request (head and body): the stream
    /// is between two requests. `false` once the scanner has stopped.
    pub fn between_requests(&self) -> bool {
        self.phase == Phase::Head && self.head.is_empty()
    }

    /// Stops scanning (the connection was upgraded: what follows is not HTTP).
    pub fn stop(&mut self) {
        self.phase = Phase::Off;
        self.head = Vec::new();
    }

    /// Feeds bytes read from the client; `verdict` is called once per complete request head.
    pub fn feed(&mut self, mut data: &[u8], verdict: &mut impl FnMut(Judged)) {
        while !data.is_empty() {
            match self.phase {
                Phase::Off => return,
                Phase::Head => data = self.feed_head(data, verdict),
                Phase::Length(left) => {
                    let n = usize::try_from(left).map_or(data.len(), |l| l.min(data.len()));
                    data = &data[n..];
                    let left = left - n as u64;
                    self.phase = if left == 0 {
                        Phase::Head
                    } else {
                        Phase::Length(left)
                    };
                }
                Phase::Chunked(c) => {
                    let (next, rest) = chunk_step(c, data);
                    data = rest;
                    self.phase = match next {
                        Some(Some(c)) => Phase::Chunked(c),
                        Some(None) => Phase::Head,
                        None => Phase::Off,
                    };
                }
            }
        }
    }

    /// Takes head bytes from `data`; returns what follows the head (if it ended).
    fn feed_head<'a>(&mut self, data: &'a [u8], verdict: &mut impl FnMut(Judged)) -> &'a [u8] {
        if self.head.is_empty() {
            // The usual case: the whole head in one read, judged where it lies.
            if let Some(start) = skip_empty_lines(data) {
                if let Some(end) = find_head_end(&data[start..]).map(|e| start + e) {
                    let (v, next) = judge(&data[start..end], self.max_head, &self.keys);
                    self.judged(v, next, verdict);
                    return &data[end..];
                }
            }
        }
        let before = self.head.len();
        self.head.extend_from_slice(data);
        let Some(start) = skip_empty_lines(&self.head) else {
            // Only empty lines so far (httparse skips them): keep at most a CR waiting for its LF.
            let keep_cr = self.head.last() == Some(&b'\r');
            self.head.clear();
            if keep_cr {
                self.head.push(b'\r');
            }
            self.searched = 0;
            return &[];
        };
        let from = self.searched.max(start).saturating_sub(2).max(start);
        let Some(end) = find_head_end(&self.head[from..]).map(|e| from + e) else {
            self.searched = self.head.len();
            if self.head.len() - start > self.max_head {
                self.reject(Reason::TooLarge, verdict);
            }
            return &[];
        };
        let (v, next) = judge(&self.head[start..end], self.max_head, &self.keys);
        self.judged(v, next, verdict);
        // What followed the head in this read: body or the next request.
        &data[end - before..]
    }

    /// Reports a head's verdict and moves on to its body (or stops, for a refused head).
    fn judged(&mut self, v: Judged, next: Phase, verdict: &mut impl FnMut(Judged)) {
        verdict(v);
        self.phase = if matches!(v.verdict, HeadVerdict::Rejected(_)) {
            // A refused request closes the connection: nothing after it is served.
            Phase::Off
        } else {
            next
        };
        self.head.clear();
        if self.head.capacity() > 16 * 1024 {
            self.head = Vec::new();
        }
        self.searched = 0;
    }

    fn reject(&mut self, r: Reason, verdict: &mut impl FnMut(Judged)) {
        verdict(Judged {
            verdict: HeadVerdict::Rejected(r),
            head: None,
        });
        self.stop();
    }
}

/// Where the request line starts after the empty lines httparse skips (`\r\n` or `\n`); `None`
/// when `buf` holds nothing else yet.
fn skip_empty_lines(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        match buf.get(i) {
            Some(b'\r') if buf.get(i + 1) == Some(&b'\n') => i += 2,
            Some(b'\r') if i + 1 == buf.len() => return None,
            Some(b'\n') => i += 1,
            Some(_) => return Some(i),
            None => return None,
        }
    }
}

/// The offset just past the empty line that ends a head (`\n\r\n` or `\n\n`), if any.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let at = i + p;
        match (buf.get(at + 1), buf.get(at + 2)) {
            (Some(b'\n'), _) => return Some(at + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(at + 3),
            _ => i = at + 1,
        }
    }
    None
}

/// Judges one complete head (from the request line to the empty line included) and says how its
/// body is framed: hyper's rules for requests (chunked if `Transfer-Encoding`, else
/// `Content-Length`, else no body).
fn judge(head: &[u8], max_head: usize, keys: &RandomState) -> (Judged, Phase) {
    let unnamed = |r| {
        let verdict = HeadVerdict::Rejected(r);
        (
            Judged {
                verdict,
                head: None,
            },
            Phase::Off,
        )
    };
    if head.len() > max_head {
        return unnamed(Reason::TooLarge);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return unnamed(Reason::Malformed),
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return unnamed(Reason::Malformed);
    };
    let (authority, path_and_query) = split_target(target.as_bytes());
    let id = Some(head_id(keys, method.as_bytes(), authority, path_and_query));
    let named = |verdict, next| (Judged { verdict, head: id }, next);
    let reject = |r| named(HeadVerdict::Rejected(r), Phase::Off);
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        return reject(Reason::BareLf);
    }
    let mut length: Option<u64> = None;
    let mut codings = 0usize;
    let mut chunked = false;
    let mut lengths = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            codings += 1;
            chunked = is_chunked(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            let Some(n) = decimal(h.value) else {
                return reject(Reason::ContentLength);
            };
            if length.is_some_and(|l| l != n) {
                return reject(Reason::ContentLength);
            }
            length = Some(n);
        }
    }
    if codings > 0 && lengths > 0 {
        return reject(Reason::LengthAndChunked);
    }
    if codings > 0 {
        if codings > 1 || !chunked || req.version != Some(1) {
            return reject(Reason::TransferCoding);
        }
        return named(HeadVerdict::Clean, Phase::Chunked(Chunk::Start));
    }
    match length {
        Some(n) if n > 0 => named(HeadVerdict::Clean, Phase::Length(n)),
        _ => named(HeadVerdict::Clean, Phase::Head),
    }
}

/// A request target split as `http::Uri` (which hyper builds from it) holds it: the authority
/// (empty for origin-form and `*`) and the path and query (cut at a `#`; `/` when an
/// absolute-form target has none; empty for authority-form).
fn split_target(target: &[u8]) -> (&[u8], &[u8]) {
    let no_fragment = |s: &[u8]| -> usize { s.iter().position(|&b| b == b'#').unwrap_or(s.len()) };
    if target.first() == Some(&b'/') || target == b"*" {
        return (b"", &target[..no_fragment(target)]);
    }
    let Some(scheme_end) = target.windows(3).position(|w| w == b"://") else {
        return (target, b"");
    };
    let rest = &target[scheme_end + 3..];
    let authority_end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let path_and_query = &tail[..no_fragment(tail)];
    if path_and_query.is_empty() {
        (authority, b"/")
    } else {
        (authority, path_and_query)
    }
}

/// A request head's identity: its method, authority and path-and-query, hashed with `keys`
/// (foldhash, seeded at random per connection and never shown, so that no client can make two
/// heads collide on purpose). std's SipHash cost 926 instructions per request here, foldhash 178
/// (callgrind, bench/callgrind.sh).
fn head_id(keys: &RandomState, method: &[u8], authority: &[u8], path_and_query: &[u8]) -> u64 {
    let mut h = keys.build_hasher();
    for part in [method, authority, path_and_query] {
        h.write_usize(part.len());
        h.write(part);
    }
    h.finish()
}

/// [`head_id`] of a request as hyper parsed it.
fn request_id<B>(keys: &RandomState, req: &http::Request<B>) -> u64 {
    let uri = req.uri();
    head_id(
        keys,
        req.method().as_str().as_bytes(),
        uri.authority().map_or(&b""[..], |a| a.as_str().as_bytes()),
        uri.path_and_query()
            .map_or(&b""[..], |p| p.as_str().as_bytes()),
    )
}

/// A `Content-Length` value as hyper reads it: ASCII digits only, no sign, no list.
fn decimal(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Advances the chunked-body state over `data`. Returns the next state (`Some(None)`: the body
/// ended) and the bytes not consumed; `None` when the body is malformed (hyper fails it too).
fn chunk_step(c: Chunk, data: &[u8]) -> (Option<Option<Chunk>>, &[u8]) {
    if let Chunk::Data(left) = c {
        let n = usize::try_from(left).map_or(data.len(), |l| l.min(data.len()));
        let left = left - n as u64;
        let next = if left == 0 {
            Chunk::DataCr
        } else {
            Chunk::Data(left)
        };
        return (Some(Some(next)), &data[n..]);
    }
    let Some((&b, rest)) = data.split_first() else {
        return (Some(Some(c)), data);
    };
    let hex = |size: u64| -> Option<u64> {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        size.checked_mul(16)?.checked_add(u64::from(d))
    };
    let next = match (c, b) {
        (Chunk::Start, _) => hex(0).map(Chunk::Size),
        (Chunk::Size(s), b'\t' | b' ') => Some(Chunk::SizeLws(s)),
        (Chunk::Size(s) | Chunk::SizeLws(s), b';') => Some(Chunk::Extension(s)),
        (Chunk::Size(s) | Chunk::SizeLws(s) | Chunk::Extension(s), b'\r') => Some(Chunk::SizeLf(s)),
        (Chunk::Size(s), _) => hex(s).map(Chunk::Size),
        (Chunk::SizeLws(s), b'\t' | b' ') => Some(Chunk::SizeLws(s)),
        (Chunk::SizeLws(_), _) => None,
        (Chunk::Extension(_), b'\n') => None,
        (Chunk::Extension(s), _) => Some(Chunk::Extension(s)),
        (Chunk::SizeLf(0), b'\n') => Some(Chunk::EndCr),
        (Chunk::SizeLf(s), b'\n') => Some(Chunk::Data(s)),
        (Chunk::SizeLf(_), _) => None,
        (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
        (Chunk::DataLf, b'\n') => Some(Chunk::Start),
        (Chunk::DataCr | Chunk::DataLf, _) => None,
        (Chunk::EndCr, b'\r') => Some(Chunk::EndLf),
        (Chunk::Trailer, b'\r') => Some(Chunk::TrailerLf),
        (Chunk::EndCr | Chunk::Trailer, _) => Some(Chunk::Trailer),
        (Chunk::TrailerLf, b'\n') => Some(Chunk::EndCr),
        (Chunk::TrailerLf, _) => None,
        (Chunk::EndLf, b'\n') => return (Some(None), rest),
        (Chunk::EndLf, _) => None,
        // Taken in bulk above; never reached with one byte.
        (Chunk::Data(left), _) => Some(Chunk::Data(left)),
    };
    match next {
        Some(n) => (Some(Some(n)), rest),
        None => (None, rest),
    }
}

// ---------------------------------------------------------------------------------------------
// The I/O wrapper and its handle.

/// What the connection's [`HeadCheck`] and its service share.
#[derive(Debug)]
struct Shared {
    verdicts: VecDeque<Judged>,
    /// The key of the heads' identities (the scanner's own).
    keys: RandomState,
    /// Set by the service when it answered 101: the scanner stops.
    upgraded: bool,
    /// Every byte read so far belongs to a complete request ([`HeadScanner::between_requests`]).
    between: bool,
}

/// The service's end of a [`HeadCheck`]: gives each request the verdict on its head.
#[derive(Debug, Clone)]
pub struct HeadChecks(Arc<Mutex<Shared>>);

impl HeadChecks {
    /// Inserts into `req`'s extensions the verdict on its head: the oldest one queued, if it was
    /// made on this request's head, else [`HeadVerdict::Unvetted`] (see the module doc). Called
    /// for every request of the connection, in the order hyper hands them out.
    pub fn attach<B>(&self, req: &mut http::Request<B>) {
        let verdict = match self.0.lock() {
            Ok(mut s) => match s.verdicts.pop_front() {
                Some(Judged {
                    verdict,
                    head: None,
                }) => verdict,
                Some(Judged {
                    verdict,
                    head: Some(id),
                }) => {
                    if id == request_id(&s.keys, req) {
                        verdict
                    } else {
                        tracing::warn!(
                            method = %req.method(),
                            "HTTP/1 head scanner out of step with hyper's parser: request not vetted"
                        );
                        s.verdicts.clear();
                        HeadVerdict::Unvetted
                    }
                }
                None => HeadVerdict::Unvetted,
            },
            Err(_) => HeadVerdict::Unvetted,
        };
        req.extensions_mut().insert(verdict);
    }

    /// Whether the connection is between requests: every byte read from it belongs to a
    /// complete request, and every request head read has been handed out. With nothing in
    /// flight, the server's HTTP/1 state holds nothing of the client's then.
    pub fn between_requests(&self) -> bool {
        self.0
            .lock()
            .is_ok_and(|s| s.between && !s.upgraded && s.verdicts.is_empty())
    }

    /// The connection switched protocols: what follows is not HTTP/1.
    pub fn upgraded(&self) {
        if let Ok(mut s) = self.0.lock() {
            s.upgraded = true;
            s.verdicts.clear();
        }
    }
}

/// A client connection whose request heads are judged as hyper reads them. Writes pass through.
pub struct HeadCheck<T> {
    inner: T,
    scanner: HeadScanner,
    shared: Arc<Mutex<Shared>>,
}

impl<T> HeadCheck<T> {
    /// Wraps a connection; `max_head` is the server's `max_header_bytes`.
    pub fn new(inner: T, max_head: usize) -> (Self, HeadChecks) {
        let scanner = HeadScanner::new(max_head);
        let shared = Arc::new(Mutex::new(Shared {
            verdicts: VecDeque::new(),
            keys: scanner.keys.clone(),
            upgraded: false,
            between: true,
        }));
        (
            HeadCheck {
                inner,
                scanner,
                shared: Arc::clone(&shared),
            },
            HeadChecks(shared),
        )
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadCheck<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                match this.shared.lock() {
                    Ok(mut shared) if !shared.upgraded && !this.scanner.is_off() => {
                        let scanner = &mut this.scanner;
                        let mut full = false;
                        scanner.feed(read, &mut |v| {
                            if shared.verdicts.len() < MAX_QUEUED {
                                shared.verdicts.push_back(v);
                            } else {
                                full = true;
                            }
                        });
                        if full {
                            scanner.stop();
                        }
                        shared.between = scanner.between_requests();
                    }
                    Ok(mut shared) => {
                        this.scanner.stop();
                        shared.between = false;
                    }
                    Err(_) => this.scanner.stop(),
                }
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadCheck<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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

    use HeadVerdict::{Clean, Rejected};

    fn verdicts_in_one_read(bytes: &[u8]) -> Vec<HeadVerdict> {
        let mut s = HeadScanner::new(8192);
        let mut out = Vec::new();
        s.feed(bytes, &mut |j| out.push(j.verdict));
        out
    }

    /// The same stream fed whole and one byte at a time gives the same verdicts.
    fn verdicts(bytes: &[u8]) -> Vec<HeadVerdict> {
        let whole = verdicts_in_one_read(bytes);
        let mut s = HeadScanner::new(8192);
        let mut trickled = Vec::new();
        for b in bytes.chunks(1) {
            s.feed(b, &mut |j| trickled.push(j.verdict));
        }
        assert_eq!(whole, trickled, "{:?}", String::from_utf8_lossy(bytes));
        whole
    }

    #[test]
    fn one_verdict_per_pipelined_request() {
        let stream = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\n\r\nGET /not-a-request HTTP/1.1\r\n\
            POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n1c \r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n\
            \r\nGET /d HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(verdicts(stream), vec![Clean, Clean, Clean, Clean]);
    }

    #[test]
    fn length_and_chunked_together_are_refused_either_order() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            // Refused, and nothing after it is judged: the connection closes.
            assert_eq!(verdicts(head), vec![Rejected(Reason::LengthAndChunked)]);
        }
    }

    #[test]
    fn transfer_codings_other_than_one_chunked_are_refused() {
        for te in [
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked, gzip\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: xchunked\r\n",
            "Transfer-Encoding: \r\n",
        ] {
            let req = format!("POST / HTTP/1.1\r\nHost: a\r\n{te}\r\n0\r\n\r\n");
            assert_eq!(
                verdicts(req.as_bytes()),
                vec![Rejected(Reason::TransferCoding)],
                "{te:?}"
            );
        }
        assert_eq!(
            verdicts(b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            vec![Rejected(Reason::TransferCoding)]
        );
        assert_eq!(
            verdicts(
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n0\r\n\r\n"
            ),
            vec![Clean]
        );
    }

    #[test]
    fn content_length_must_be_one_decimal_number() {
        for cl in ["+5", "5, 5", "0x5", "5 5", "", "99999999999999999999999"] {
            let req = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\n\r\nhello");
            assert_eq!(
                verdicts(req.as_bytes()),
                vec![Rejected(Reason::ContentLength)],
                "{cl:?}"
            );
        }
        assert_eq!(
            verdicts(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            vec![Rejected(Reason::ContentLength)]
        );
        assert_eq!(
            verdicts(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            vec![Clean]
        );
    }

    #[test]
    fn bare_lf_line_endings_are_refused() {
        for req in [
            &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\nX-B: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
        ] {
            assert_eq!(verdicts(req), vec![Rejected(Reason::BareLf)]);
        }
    }

    #[test]
    fn heads_hyper_refuses_are_refused_and_scanning_stops() {
        for req in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\nGET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"\rGET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(verdicts(req), vec![Rejected(Reason::Malformed)]);
        }
    }

    #[test]
    fn empty_lines_before_a_request_are_skipped() {
        assert_eq!(
            verdicts(b"\r\n\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            vec![Clean]
        );
    }

    #[test]
    fn a_malformed_chunked_body_stops_the_scanner() {
        let mut s = HeadScanner::new(8192);
        let mut out = Vec::new();
        s.feed(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n\r\n",
            &mut |j| out.push(j.verdict),
        );
        assert_eq!(out, vec![Clean]);
        assert!(s.is_off());
        for bad in [
            "5\nhello\r\n",
            "5;a\nb\r\nhello\r\n",
            "5\r\nhelloXY",
            "5 5\r\n",
        ] {
            let mut s = HeadScanner::new(8192);
            s.feed(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                &mut |_| {},
            );
            s.feed(bad.as_bytes(), &mut |_| {});
            assert!(s.is_off(), "{bad:?}");
        }
    }

    #[test]
    fn a_chunk_size_that_overflows_stops_the_scanner() {
        let mut s = HeadScanner::new(8192);
        s.feed(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            &mut |_| {},
        );
        assert!(s.is_off());
    }

    #[test]
    fn a_head_larger_than_the_limit_is_refused_before_it_ends() {
        let mut s = HeadScanner::new(100);
        let mut out = Vec::new();
        s.feed(b"GET / HTTP/1.1\r\n", &mut |j| out.push(j.verdict));
        for _ in 0..10 {
            s.feed(b"X-Padding: 0123456789\r\n", &mut |j| out.push(j.verdict));
        }
        assert_eq!(out, vec![Rejected(Reason::TooLarge)]);
        assert!(s.is_off());
    }

    /// The identity the scanner gives a head is the one the service computes from the request
    /// hyper builds out of it (`http::Uri` from the target bytes), whatever the target's form.
    #[test]
    fn a_head_and_its_parsed_request_have_one_identity() {
        let keys = RandomState::default();
        for target in [
            "/",
            "/a?b",
            "/a?b#c",
            "/#x",
            "/p%20q/{\"json\"}",
            "*",
            "http://A.test:80/x?y",
            "HTTP://a.test/p",
            "http://a.test",
            "http://a.test?q",
            "http://a.test#f",
            "http://user@[::1]:8080/x",
            "a.test:443",
        ] {
            let uri = http::Uri::try_from(target.as_bytes()).unwrap();
            let req = http::Request::builder()
                .method("GET")
                .uri(uri)
                .body(())
                .unwrap();
            let (authority, pq) = split_target(target.as_bytes());
            assert_eq!(
                head_id(&keys, b"GET", authority, pq),
                request_id(&keys, &req),
                "{target}"
            );
        }
        let other = head_id(&keys, b"GET", b"", b"/b");
        assert_ne!(head_id(&keys, b"GET", b"", b"/a"), other);
        assert_ne!(head_id(&keys, b"POST", b"", b"/b"), other);
        assert_ne!(head_id(&keys, b"GET", b"/", b"b"), other);
    }

    fn checks_fed(stream: &[u8]) -> HeadChecks {
        let mut scanner = HeadScanner::new(8192);
        let shared = Arc::new(Mutex::new(Shared {
            verdicts: VecDeque::new(),
            keys: scanner.keys.clone(),
            upgraded: false,
            between: true,
        }));
        scanner.feed(stream, &mut |j| {
            shared.lock().unwrap().verdicts.push_back(j)
        });
        HeadChecks(shared)
    }

    fn attached(checks: &HeadChecks, method: &str, uri: &str) -> HeadVerdict {
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap();
        checks.attach(&mut req);
        *req.extensions().get::<HeadVerdict>().unwrap()
    }

    #[test]
    fn each_request_gets_the_verdict_on_its_own_head() {
        let checks = checks_fed(
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
        );
        assert_eq!(attached(&checks, "GET", "/a"), Clean);
        assert_eq!(attached(&checks, "POST", "/b"), Clean);
        // No head left: not vetted.
        assert_eq!(attached(&checks, "GET", "/c"), HeadVerdict::Unvetted);

        let checks = checks_fed(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        // A request that is not the next head's (hyper framed the stream otherwise): refused,
        // and so is every later one of the connection.
        assert_eq!(attached(&checks, "GET", "/b"), HeadVerdict::Unvetted);
        assert_eq!(attached(&checks, "GET", "/b"), HeadVerdict::Unvetted);

        let checks = checks_fed(b"GET / HTTP/1.1\nHost: a\n\n");
        assert_eq!(attached(&checks, "GET", "/"), Rejected(Reason::BareLf));
        // A head too malformed to name is refused whichever request hyper makes of it.
        let checks = checks_fed(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n");
        assert_eq!(attached(&checks, "GET", "/x"), Rejected(Reason::Malformed));
    }

    #[test]
    fn endless_empty_lines_do_not_grow_memory() {
        let mut s = HeadScanner::new(100);
        for _ in 0..1000 {
            s.feed(b"\r\n", &mut |_| {});
        }
        assert!(s.head.len() <= 2, "{}", s.head.len());
    }
}
