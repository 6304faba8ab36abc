//! The heads of a request and its response as they cross the gateway: which host a request is
//! for, what only concerns one connection (hop-by-hop), who sent the request (`X-Forwarded-*`)
//! and where it goes (the upstream's URI and `Host`). Functions of a head only: no I/O, no
//! policy decision (the cookies are [`crate::policy::filter`]'s).
//!
//! The request head, client to upstream ([`to_upstream`], in this order):
//! 1. hop-by-hop headers removed ([`strip_hop_by_hop`]): the fields `Connection` names, the fixed
//!    list of RFC 9110 §7.6.1, and `TE` unless it says `trailers` (kept as `TE: trailers`);
//!    `Expect` too (hyper has answered `100-continue` itself);
//! 2. an upgrade the client asked for ([`requested_upgrade`], e.g. WebSocket) announced again:
//!    `Connection: upgrade` and its `Upgrade`;
//! 3. `X-Forwarded-For`, `-Proto` and `-Host` ([`set_forwarded`]): set, or kept and appended to
//!    when the peer is a trusted proxy;
//! 4. `Host`: the host's `upstream_host` when it names one, else the client's (an absolute-form
//!    request without `Host` gets the target's authority);
//! 5. the target: the upstream's scheme and authority with the client's path and query, as
//!    HTTP/1.1 (hyper's client speaks HTTP/2 to a TLS upstream that chose it by ALPN).
//!
//! No `Via` and no `Forwarded` (RFC 7239) are added: nginx's `proxy_pass` adds neither either.
//!
//! The response head, upstream to client ([`to_client`]): hop-by-hop removed (the `Trailer`
//! field kept, without `Set-Cookie`, for a client that takes trailers), the gateway's own HTTP
//! version, and an upgrade the upstream accepted announced again.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{request, response, HeaderMap, Request, Uri, Version};

use crate::config::Cidr;
use crate::policy::registry::HostPolicy;
use crate::proxy::error::ProxyError;

/// Headers that only concern one connection (RFC 9110 §7.6.1), besides those `Connection` names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The host a request is for, as the client sent it (port included; the registry lookup
/// normalises it). It shares the request's bytes: the lookup and `X-Forwarded-Host` copy
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestHost {
    /// The one `Host` header: visible ASCII, not empty, no surrounding whitespace.
    Header(HeaderValue),
    /// The authority of an absolute-form target (HTTP/2's `:authority`).
    Authority(Authority),
}

impl RequestHost {
    pub fn as_str(&self) -> &str {
        match self {
            // Checked to be visible ASCII when it was read.
            RequestHost::Header(v) => v.to_str().unwrap_or_default(),
            RequestHost::Authority(a) => a.as_str(),
        }
    }

    /// As a header value: the `Host` header itself (shared), or the authority copied.
    pub fn to_header_value(&self) -> Option<HeaderValue> {
        match self {
            RequestHost::Header(v) => Some(v.clone()),
            RequestHost::Authority(a) => HeaderValue::from_str(a.as_str()).ok(),
        }
    }
}

/// The host a request is for: the authority of an absolute-form target, else the one `Host`
/// header.
pub fn request_host<B>(req: &Request<B>) -> Result<RequestHost, ProxyError> {
    if let Some(a) = req.uri().authority() {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400, absolute-form or not.
        if req.version() == Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
            return Err(ProxyError::NoHost);
        }
        return Ok(RequestHost::Authority(a.clone()));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next().ok_or(ProxyError::NoHost)?;
    if hosts.next().is_some() {
        return Err(ProxyError::BadHost);
    }
    let trimmed = host
        .to_str()
        .map_err(|_| ProxyError::BadHost)?
        .as_bytes()
        .trim_ascii();
    if trimmed.is_empty() {
        return Err(ProxyError::BadHost);
    }
    if trimmed.len() == host.len() {
        return Ok(RequestHost::Header(host.clone()));
    }
    // Whitespace around the value (HTTP/1 parsers remove it; an HTTP/2 field may carry it).
    HeaderValue::from_bytes(trimmed)
        .map(RequestHost::Header)
        .map_err(|_| ProxyError::BadHost)
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` and an `Upgrade` value).
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Who sent a request, for its `X-Forwarded-*` headers.
pub struct Forwarded<'a> {
    /// The peer's address (an IPv4-mapped IPv6 address as IPv4).
    pub peer: IpAddr,
    /// Whether the peer is a trusted proxy: its `X-Forwarded-*` headers are kept (and
    /// `X-Forwarded-For` appended to).
    pub trusted: bool,
    /// `http` or `https`: what the client spoke.
    pub proto: &'static str,
    pub host: &'a RequestHost,
}

impl<'a> Forwarded<'a> {
    /// `peer` is trusted when one of `trusted_proxies` holds its address.
    pub fn new(
        peer: SocketAddr,
        trusted_proxies: &[Cidr],
        proto: &'static str,
        host: &'a RequestHost,
    ) -> Self {
        let ip = peer.ip().to_canonical();
        Forwarded {
            peer: ip,
            trusted: trusted_proxies.iter().any(|c| c.contains(ip)),
            proto,
            host,
        }
    }
}

/// Rewrites a client's request head (its cookies already judged) into the upstream's: the steps
/// of the module doc, in order. `upgrade` is what [`requested_upgrade`] found before.
pub fn to_upstream(
    parts: &mut request::Parts,
    policy: &HostPolicy,
    from: &Forwarded<'_>,
    upgrade: Option<&HeaderValue>,
) -> Result<(), ProxyError> {
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    if let Some(proto) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    let host = from.host.to_header_value();
    set_forwarded(headers, from, host.as_ref());
    match &policy.upstream_host {
        Some(h) => {
            headers.insert(header::HOST, h.clone());
        }
        None => {
            if !headers.contains_key(header::HOST) {
                // Absolute-form request without Host: keep the name the client asked for.
                headers.insert(header::HOST, host.ok_or(ProxyError::BadHost)?);
            }
        }
    }
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = Uri::builder()
        .scheme(policy.upstream.scheme.clone())
        .authority(policy.upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ProxyError::BadRequest)?;
    parts.version = Version::HTTP_11;
    Ok(())
}

/// Whether the client takes trailers: HTTP/2, or HTTP/1.1 with `TE: trailers` (the only `TE`
/// value [`to_upstream`] leaves in `upstream_headers`). The response head then keeps its
/// `Trailer` field ([`to_client`]).
pub fn takes_trailers(client: Version, upstream_headers: &HeaderMap) -> bool {
    client == Version::HTTP_2 || upstream_headers.contains_key(header::TE)
}

/// Rewrites an upstream's response head into the client's: hop-by-hop headers removed, except
/// the `Trailer` field when the client `takes_trailers` (HTTP/2, or `TE: trailers`), which
/// keeps the fields it names but `Set-Cookie` ([`trailer_announcement`]); the gateway's own
/// version (RFC 9110 §6.2: an HTTP/1.0 or HTTP/2 upstream must not turn the client's HTTP/1.1
/// connection into a closing HTTP/1.0 one; hyper itself answers an HTTP/1.0 client in
/// HTTP/1.0); and `upgraded`, the protocol the upstream switched to, announced again.
///
/// [`trailer_announcement`]: crate::policy::filter::trailer_announcement
pub fn to_client(
    parts: &mut response::Parts,
    client: Version,
    takes_trailers: bool,
    upgraded: Option<HeaderValue>,
) {
    let trailer = if takes_trailers && parts.headers.contains_key(header::TRAILER) {
        crate::policy::filter::trailer_announcement(&parts.headers)
    } else {
        None
    };
    strip_hop_by_hop(&mut parts.headers);
    if let Some(t) = trailer {
        parts.headers.insert(header::TRAILER, t);
    }
    parts.version = if client == Version::HTTP_2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if let Some(proto) = upgraded {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto);
    }
}

/// `X-Forwarded-For`, `-Proto` and `-Host`, kept (and appended to) only from a trusted proxy.
/// `host` is the request's host as a header value.
pub fn set_forwarded(headers: &mut HeaderMap, from: &Forwarded<'_>, host: Option<&HeaderValue>) {
    let ip = from.peer;
    let prior: Vec<&str> = if from.trusted {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    } else {
        Vec::new()
    };
    let xff = if prior.is_empty() {
        ip_header_value(ip)
    } else {
        HeaderValue::from_str(&format!("{}, {ip}", prior.join(", "))).ok()
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !(from.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(from.proto));
    }
    if !(from.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        if let Some(v) = host {
            headers.insert(X_FORWARDED_HOST, v.clone());
        }
    }
}

/// An address as a header value. IPv4 is written by hand: `Display` through `fmt` cost more than
/// the rest of the forwarding headers together (callgrind).
fn ip_header_value(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).ok();
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + (o / 10) % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n]).ok()
}

/// Removes hop-by-hop headers: those `Connection` names, the fixed list, and `TE` unless it is
/// `trailers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these but `Connection`: one pass over the names (standard
    // names compare as small integers) instead of a hash lookup per name; only the names
    // present are removed afterwards.
    let (mut present, mut has_te) = (0u8, false);
    for name in headers.keys() {
        if name == header::TE {
            has_te = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present & 1 != 0 {
        // The names `Connection` lists. Its values share the message's bytes (a clone is a
        // reference count); a name is looked up from its text without building a `HeaderName`.
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let rest: Vec<HeaderValue> = values.cloned().collect();
        for value in first.iter().chain(&rest) {
            for token in value.as_bytes().split(|&b| b == b',') {
                if let Ok(name) = std::str::from_utf8(token.trim_ascii()) {
                    headers.remove(name);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if let Some(te) = headers.get(header::TE).filter(|_| has_te) {
        let trailers = te.as_bytes().split(|&b| b == b',').any(|t| {
            t.split(|&b| b == b';')
                .next()
                .is_some_and(|n| n.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("cookie", "a=1"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["accept", "cookie"]);
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.10.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(ip).unwrap(), ip.to_string().as_str());
        }
        for o in 0..=255u8 {
            let ip = std::net::IpAddr::from([o, 255 - o, o / 3, o / 17]);
            assert_eq!(ip_header_value(ip).unwrap(), ip.to_string().as_str());
        }
    }

    #[test]
    fn te_trailers_is_kept() {
        let mut h = map(&[("te", "trailers, deflate;q=0.5")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").unwrap(), "trailers");
        let mut h = map(&[("te", "gzip"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("te").is_none());
        // Named by Connection: removed even when it says trailers.
        let mut h = map(&[("connection", "te"), ("te", "trailers")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
        // Only one of the fixed list, without Connection.
        let mut h = map(&[("keep-alive", "timeout=5"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        // Nothing to remove: nothing changes.
        let mut h = map(&[("accept", "*/*"), ("cookie", "a=1"), ("cookie", "b=2")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn upgrade_needs_connection_upgrade() {
        assert!(requested_upgrade(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ]))
        .is_some());
        assert!(requested_upgrade(&map(&[("upgrade", "websocket")])).is_none());
        assert!(requested_upgrade(&map(&[("connection", "upgrade")])).is_none());
    }

    #[test]
    fn host_comes_from_the_one_host_header() {
        let req = |hs: &[&str]| {
            let mut b = Request::builder().uri("/x");
            for h in hs {
                b = b.header("host", *h);
            }
            b.body(()).unwrap()
        };
        let host = |r: &Request<()>| request_host(r).map(|h| h.as_str().to_owned());
        assert_eq!(host(&req(&["a.example:8080"])), Ok("a.example:8080".into()));
        assert_eq!(host(&req(&[])), Err(ProxyError::NoHost));
        assert_eq!(host(&req(&["a", "b"])), Err(ProxyError::BadHost));
        assert_eq!(host(&req(&[""])), Err(ProxyError::BadHost));
        assert_eq!(host(&req(&[" \t"])), Err(ProxyError::BadHost));
        assert_eq!(host(&req(&["a\u{e9}"])), Err(ProxyError::BadHost));
        // Surrounding whitespace (an HTTP/2 field may carry it) is not part of the name.
        assert_eq!(host(&req(&[" a.example "])), Ok("a.example".into()));
        let abs = Request::builder()
            .uri("http://b.example/x")
            .header("host", "a")
            .body(())
            .unwrap();
        assert_eq!(host(&abs), Ok("b.example".into()));
        let h = request_host(&abs).unwrap();
        assert_eq!(h.to_header_value().unwrap(), "b.example");
    }

    #[test]
    fn forwarded_headers_are_set_or_appended_from_a_trusted_proxy() {
        let host = RequestHost::Header(HeaderValue::from_static("a.example"));
        let peer: SocketAddr = "[::ffff:10.0.0.7]:4000".parse().unwrap();
        let trusted = [Cidr("10.0.0.0/8".parse().unwrap())];
        let sent = || {
            map(&[
                ("x-forwarded-for", "192.0.2.1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "outer.example"),
            ])
        };
        let from = Forwarded::new(peer, &trusted, "http", &host);
        assert!(from.trusted);
        let mut h = sent();
        set_forwarded(&mut h, &from, host.to_header_value().as_ref());
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "outer.example");
        let from = Forwarded::new(peer, &[], "http", &host);
        let mut h = sent();
        set_forwarded(&mut h, &from, host.to_header_value().as_ref());
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
    }
}
