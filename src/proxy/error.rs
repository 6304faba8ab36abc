//! The request path's one error type, and the one place that turns it into a response.
//!
//! Statuses follow whose fault it is: the client's 400 (405 for `CONNECT`, 408 for a request body
//! that stalled), an unknown host 421, an upstream that refused or broke 502, an upstream too slow
//! 504. Bodies are short and name no internal detail.

use http::StatusCode;

use crate::proxy::upstream::causes;

/// Why a request could not be proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("request has no Host")]
    NoHost,
    #[error("request has an invalid or repeated Host")]
    BadHost,
    #[error("no registry file names this host")]
    UnknownHost,
    #[error("malformed request")]
    BadRequest,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body stalled")]
    RequestTimeout,
    #[error("upstream refused the connection")]
    UpstreamConnect,
    #[error("upstream name did not resolve (DNS)")]
    UpstreamDns,
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("upstream reset the connection")]
    UpstreamReset,
    #[error("upstream broke the protocol")]
    UpstreamProtocol,
    #[error("upstream response head too large")]
    UpstreamHeadTooLarge,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoHost | ProxyError::BadHost | ProxyError::BadRequest => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UnknownHost => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::UpstreamConnect
            | ProxyError::UpstreamDns
            | ProxyError::UpstreamReset
            | ProxyError::UpstreamProtocol
            | ProxyError::UpstreamHeadTooLarge => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The plain-text body sent to the client.
    pub fn body(self) -> &'static str {
        match self {
            ProxyError::NoHost => "400 bad request: no Host header\n",
            ProxyError::BadHost => "400 bad request: invalid Host header\n",
            ProxyError::BadRequest => "400 bad request\n",
            ProxyError::MethodNotAllowed => "405 method not allowed\n",
            ProxyError::RequestTimeout => "408 request timeout: the request body stalled\n",
            ProxyError::UnknownHost => "421 misdirected request: unknown host\n",
            ProxyError::UpstreamConnect
            | ProxyError::UpstreamDns
            | ProxyError::UpstreamReset
            | ProxyError::UpstreamProtocol
            | ProxyError::UpstreamHeadTooLarge => "502 bad gateway\n",
            ProxyError::UpstreamTimeout => "504 gateway timeout\n",
        }
    }

    /// The `kind` label of `consent_gateway_upstream_errors_total`, for upstream errors.
    pub fn upstream_kind(self) -> Option<&'static str> {
        match self {
            ProxyError::UpstreamConnect | ProxyError::UpstreamDns => Some("connect"),
            ProxyError::UpstreamTimeout => Some("timeout"),
            ProxyError::UpstreamReset => Some("reset"),
            ProxyError::UpstreamProtocol | ProxyError::UpstreamHeadTooLarge => Some("protocol"),
            _ => None,
        }
    }

    /// Classifies an error of the upstream client. A failure of the client's own request body
    /// (malformed chunking, a client that went away, a stall past `idle_timeout`) is the
    /// client's fault, not the upstream's.
    pub fn from_client(e: &hyper_util::client::legacy::Error) -> ProxyError {
        if let Some(client_fault) = client_body_error(e) {
            return client_fault;
        }
        classify(causes(e), e.is_connect())
    }

    /// Classifies an error of an upstream exchange (either client).
    pub fn from_upstream(e: &crate::proxy::upstream::UpstreamError) -> ProxyError {
        use crate::proxy::upstream::UpstreamError;
        match e {
            UpstreamError::Client(e) => ProxyError::from_client(e),
            UpstreamError::Connect(e) => {
                let e: &(dyn std::error::Error + 'static) = e.as_ref();
                classify(std::iter::once(e).chain(causes(e)), true)
            }
            UpstreamError::Http(e) => classify(std::iter::once(e as _).chain(causes(e)), false),
            UpstreamError::Closed => ProxyError::UpstreamReset,
        }
    }
}

/// What an upstream failure was, from its chain of causes (`connect`: it happened connecting).
fn classify<'a>(
    chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
    connect: bool,
) -> ProxyError {
    let (mut timed_out, mut reset, mut parse, mut too_large, mut dns) =
        (false, false, false, false, false);
    for s in chain {
        // hyper-util's HttpConnector says "dns error" for a failed name resolution (its
        // ConnectError is not public: its message is what tells).
        if connect && s.to_string().starts_with("dns error") {
            dns = true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::TimedOut => timed_out = true,
                std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof => reset = true,
                _ => {}
            }
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                too_large = true;
            } else if h.is_parse() || h.is_parse_status() {
                parse = true;
            } else if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                reset = true;
            } else if h.is_timeout() {
                timed_out = true;
            }
        }
    }
    if timed_out {
        ProxyError::UpstreamTimeout
    } else if dns {
        ProxyError::UpstreamDns
    } else if connect {
        ProxyError::UpstreamConnect
    } else if too_large {
        ProxyError::UpstreamHeadTooLarge
    } else if parse {
        ProxyError::UpstreamProtocol
    } else if reset {
        ProxyError::UpstreamReset
    } else {
        ProxyError::UpstreamProtocol
    }
}

/// When the upstream request failed because the client's body did (hyper's "error from user's
/// Body stream", caused by the client connection's own error or by [`IdleTimeout`]): 408 when
/// the client stalled (the body's or the connection's idle timeout), 400 otherwise (malformed
/// chunked framing, a client that went away mid-body).
///
/// [`IdleTimeout`]: crate::proxy::idle::IdleTimeout
fn client_body_error(e: &hyper_util::client::legacy::Error) -> Option<ProxyError> {
    let user = causes(e)
        .filter_map(|s| s.downcast_ref::<hyper::Error>())
        .find(|h| h.is_user())?;
    let cause = std::error::Error::source(user)?;
    if !cause.is::<crate::proxy::idle::IdleTimeout>() && !cause.is::<hyper::Error>() {
        return None;
    }
    let stalled = std::iter::once(cause).chain(causes(cause)).any(|x| {
        x.is::<crate::proxy::idle::IdleTimeout>()
            || x.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    });
    Some(if stalled {
        ProxyError::RequestTimeout
    } else {
        ProxyError::BadRequest
    })
}

/// The status hyper's HTTP/1 server answered a request head its parser refused, before any
/// handler ran (for the access log and the request counter): 414 or 431 for a head too large,
/// 400 for one that does not parse; `None` for an error that is not a refused head (a timeout,
/// a closed connection, an HTTP/2 preface on an HTTP/1 port).
///
/// hyper answers 414 for a request target longer than it can hold (65,534 bytes, only reachable
/// with a `max_header_bytes` above that) and 431 for any other head too large, but tells the two
/// apart in public only by its message: `is_parse_too_large` is true for both by design
/// (hyper#2706) and hyper 1.x has no other query. A test in tests/proxy.rs
/// (`uri_too_long_is_414_and_head_too_large_431_in_the_counters`) pins the message against the
/// hyper of Cargo.lock.
pub fn parser_refusal_status(e: &hyper::Error) -> Option<u16> {
    if e.is_parse_too_large() {
        Some(if e.to_string().starts_with("URI too long") {
            414
        } else {
            431
        })
    } else if e.is_parse() && !e.is_parse_version_h2() {
        Some(400)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_whose_fault_it_is() {
        let cases = [
            (ProxyError::NoHost, 400),
            (ProxyError::BadHost, 400),
            (ProxyError::BadRequest, 400),
            (ProxyError::MethodNotAllowed, 405),
            (ProxyError::RequestTimeout, 408),
            (ProxyError::UnknownHost, 421),
            (ProxyError::UpstreamConnect, 502),
            (ProxyError::UpstreamReset, 502),
            (ProxyError::UpstreamProtocol, 502),
            (ProxyError::UpstreamHeadTooLarge, 502),
            (ProxyError::UpstreamTimeout, 504),
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code, "{e:?}");
            assert!(e.body().starts_with(&code.to_string()), "{e:?}");
        }
    }
}
