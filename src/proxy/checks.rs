//! Request checks before anything is forwarded (request smuggling and methods a reverse proxy
//! refuses): the verdict on its own head that the edge attached to an HTTP/1 request (how it is
//! paired: [`crate::edge::scanner`]), then what the parsed request shows. See the scanner's module doc for what hyper
//! already refuses and why these checks exist.

use http::header::{self, HeaderMap};
use http::{Method, Request};

use crate::proxy::error::ProxyError;

/// What [`HeadCheck`] found in one request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadVerdict {
    /// Unambiguous framing and line endings.
    Clean,
    /// Ambiguous: refuse it.
    Rejected(Reason),
    /// The scanner had no verdict for this request (it lost track of the stream): refuse it.
    Unvetted,
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// `Transfer-Encoding` other than one `chunked`, or on HTTP/1.0.
    TransferCoding,
    /// `Content-Length` that is not one decimal number (repeated values must agree).
    ContentLength,
    /// A line of the head ends with LF alone.
    BareLf,
    /// The head does not parse (hyper refuses it too).
    Malformed,
    /// The head is larger than `max_header_bytes` (hyper answers 431).
    TooLarge,
    /// Too many requests queued on one connection.
    Pipelined,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LengthAndChunked => "content-length with transfer-encoding",
            Reason::TransferCoding => "transfer-encoding other than chunked",
            Reason::ContentLength => "invalid content-length",
            Reason::BareLf => "bare LF line ending",
            Reason::Malformed => "malformed head",
            Reason::TooLarge => "head too large",
            Reason::Pipelined => "too many pipelined requests",
        }
    }
}

/// Checks a request before it is forwarded: the head verdict [`HeadCheck`] left in its
/// extensions (none for HTTP/2, whose framing is not textual), then what is visible in the parsed
/// request. `Err` means answer the error and forward nothing.
pub fn check_request<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    decline_h2c_upgrade(req.headers_mut());
    let method = req.method().clone();
    let refused = |reason: &'static str, e: ProxyError| {
        tracing::info!(
            method = %method,
            reason,
            "request refused before forwarding"
        );
        Err(e)
    };
    match req.extensions().get::<HeadVerdict>() {
        None | Some(HeadVerdict::Clean) => {}
        Some(HeadVerdict::Rejected(r)) => return refused(r.as_str(), ProxyError::BadRequest),
        Some(HeadVerdict::Unvetted) => {
            return refused("request head not vetted", ProxyError::BadRequest)
        }
    }
    if method == Method::CONNECT {
        return refused("CONNECT to a reverse proxy", ProxyError::MethodNotAllowed);
    }
    if method == Method::TRACE {
        // TRACE echoes the request back (cross-site tracing); nginx refuses it too.
        return refused("TRACE", ProxyError::MethodNotAllowed);
    }
    let headers = req.headers();
    if let Some(r) = framing_problem(headers) {
        return refused(r.as_str(), ProxyError::BadRequest);
    }
    if headers.values().any(|v| has_cr_lf_nul(v.as_bytes())) {
        return refused("CR, LF or NUL in a header value", ProxyError::BadRequest);
    }
    if let Some(authority) = req.uri().authority() {
        // Absolute-form (or HTTP/2 `:authority`): a `Host` naming another server would reach the
        // upstream unchanged while the registry was chosen by the authority.
        let scheme_port = if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        for host in headers.get_all(header::HOST) {
            if !same_authority(authority, host.as_bytes(), scheme_port) {
                return refused("Host differs from the request target", ProxyError::BadHost);
            }
        }
    }
    Ok(())
}

/// Whether `bytes` hold a CR, an LF or a NUL, eight bytes at a time ([`crate::policy::scan`]).
fn has_cr_lf_nul(bytes: &[u8]) -> bool {
    use crate::policy::scan::{has_byte, has_byte_below, skip_words};
    let at = skip_words(bytes, |w| {
        has_byte_below(w, 1) | has_byte(w, b'\r') | has_byte(w, b'\n')
    });
    bytes[at..].iter().any(|&b| matches!(b, b'\r' | b'\n' | 0))
}

/// Removes an offer to upgrade to cleartext HTTP/2 (`Upgrade: h2c`): an upstream that accepted it
/// would get a raw HTTP/2 tunnel whose responses the cookie filter never sees (h2c smuggling).
/// The request goes on as plain HTTP/1.1, as if the offer had been declined; other upgrades
/// (WebSocket) are untouched.
fn decline_h2c_upgrade(headers: &mut HeaderMap) {
    let h2c = headers.get_all(header::UPGRADE).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"))
    });
    if h2c {
        headers.remove(header::UPGRADE);
        headers.remove("http2-settings");
    }
}

/// `Transfer-Encoding` and `Content-Length` as hyper left them in the parsed request.
fn framing_problem(headers: &HeaderMap) -> Option<Reason> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        if codings.next().is_some() || !is_chunked(first.as_bytes()) {
            return Some(Reason::TransferCoding);
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Some(Reason::LengthAndChunked);
        }
    }
    None
}

pub(crate) fn is_chunked(v: &[u8]) -> bool {
    v.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// Whether a `Host` value names the same server as the request target's authority.
fn same_authority(target: &http::uri::Authority, host: &[u8], default_port: u16) -> bool {
    let Ok(host) = http::uri::Authority::try_from(host.trim_ascii()) else {
        return false;
    };
    let name = |a: &http::uri::Authority| a.host().trim_end_matches('.').to_ascii_lowercase();
    name(target) == name(&host)
        && target.port_u16().unwrap_or(default_port) == host.port_u16().unwrap_or(default_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use HeadVerdict::{Clean, Rejected};

    #[test]
    fn cr_lf_nul_found_at_every_offset_and_nothing_else() {
        let plain = |b: u8| !matches!(b, b'\r' | b'\n' | 0);
        for len in 0..40usize {
            let base: Vec<u8> = (0..len).map(|i| b"a-Z;=\t~\x7f\x80\xff "[i % 11]).collect();
            assert!(!has_cr_lf_nul(&base), "{len}");
            for at in 0..len {
                for bad in [b'\r', b'\n', 0u8] {
                    let mut v = base.clone();
                    v[at] = bad;
                    assert!(has_cr_lf_nul(&v), "{len} {at} {bad}");
                }
            }
        }
        // Every byte value alone and beside its neighbours.
        for b in 0..=255u8 {
            let v = [b'x', b, b.saturating_add(1), b'y', b, b'z', b, b'q', b, b];
            assert_eq!(has_cr_lf_nul(&v), v.iter().any(|&c| !plain(c)), "{b}");
        }
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn check_request_follows_the_head_verdict() {
        let mut r = req("GET", "/", &[("host", "a")]);
        assert_eq!(check_request(&mut r), Ok(()), "no verdict (HTTP/2)");
        r.extensions_mut().insert(Clean);
        assert_eq!(check_request(&mut r), Ok(()));
        r.extensions_mut().insert(Rejected(Reason::BareLf));
        assert_eq!(check_request(&mut r), Err(ProxyError::BadRequest));
        r.extensions_mut().insert(HeadVerdict::Unvetted);
        assert_eq!(check_request(&mut r), Err(ProxyError::BadRequest));
    }

    #[test]
    fn an_h2c_upgrade_offer_is_removed_and_websocket_kept() {
        let mut r = req(
            "GET",
            "/",
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "H2C"),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
        );
        assert_eq!(check_request(&mut r), Ok(()));
        assert!(r.headers().get("upgrade").is_none());
        assert!(r.headers().get("http2-settings").is_none());
        let mut ws = req(
            "GET",
            "/",
            &[("connection", "Upgrade"), ("upgrade", "websocket")],
        );
        assert_eq!(check_request(&mut ws), Ok(()));
        assert_eq!(ws.headers()["upgrade"], "websocket");
    }

    #[test]
    fn check_request_refuses_what_the_parsed_request_shows() {
        let cases: [(Request<()>, Result<(), ProxyError>); 10] = [
            (req("GET", "/", &[("host", "a")]), Ok(())),
            (
                req("CONNECT", "a:443", &[("host", "a:443")]),
                Err(ProxyError::MethodNotAllowed),
            ),
            (req("TRACE", "/", &[]), Err(ProxyError::MethodNotAllowed)),
            (
                req("POST", "/", &[("transfer-encoding", "gzip, chunked")]),
                Err(ProxyError::BadRequest),
            ),
            (
                req(
                    "POST",
                    "/",
                    &[("transfer-encoding", "chunked"), ("content-length", "3")],
                ),
                Err(ProxyError::BadRequest),
            ),
            (
                req("POST", "/", &[("transfer-encoding", "chunked")]),
                Ok(()),
            ),
            (
                req("GET", "http://a.test/", &[("host", "evil.test")]),
                Err(ProxyError::BadHost),
            ),
            (
                req("GET", "http://a.test/", &[("host", "A.test:80")]),
                Ok(()),
            ),
            (
                req("GET", "https://a.test/", &[("host", "a.test:80")]),
                Err(ProxyError::BadHost),
            ),
            (req("GET", "http://a.test:8080/", &[]), Ok(())),
        ];
        for (mut r, want) in cases {
            assert_eq!(
                check_request(&mut r),
                want,
                "{} {} {:?}",
                r.method(),
                r.uri(),
                r.headers()
            );
        }
    }
}
