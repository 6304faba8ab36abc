//! The side doors of a response (SPEC, Trailers): a `Set-Cookie` in the upstream's chunked
//! trailers or in a 1xx informational response never reaches a client, over HTTP/1.1 (with and
//! without `TE: trailers`) or HTTP/2, whatever the consent; it is counted as dropped with
//! category `unknown`. Other trailer fields pass where the downstream protocol allows.
//!
//! The origin writes its responses by hand (hyper's server would refuse `Set-Cookie` in
//! trailers), on 127.0.0.1, one request per connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::tls::*;
use common::*;
use consent_gateway::gateway::Gateway;
use http_body_util::{BodyExt, Empty};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(20);

/// A chunked response whose trailers set two cookies (one a necessary cookie, in another case)
/// beside a checksum field, announced by `Trailer` as a careful origin does.
const CHUNKED_WITH_TRAILERS: &str = "HTTP/1.1 200 OK\r\n\
    Content-Type: text/plain\r\n\
    Transfer-Encoding: chunked\r\n\
    Trailer: X-Checksum, Set-Cookie\r\n\
    Connection: close\r\n\
    \r\n\
    6\r\nhello \r\n\
    6\r\nworld\n\r\n\
    0\r\n\
    Set-Cookie: _ga=1\r\n\
    X-Checksum: abc\r\n\
    SET-COOKIE: sessionid=s; Path=/\r\n\
    \r\n";

/// A 103 Early Hints carrying a cookie, then the response.
const EARLY_HINTS_THEN_200: &str = "HTTP/1.1 103 Early Hints\r\n\
    Link: </style.css>; rel=preload; as=style\r\n\
    Set-Cookie: _ga=early\r\n\
    Set-Cookie: sessionid=early\r\n\
    \r\n\
    HTTP/1.1 200 OK\r\n\
    Content-Type: text/plain\r\n\
    Content-Length: 6\r\n\
    Connection: close\r\n\
    \r\n\
    hello\n";

/// An origin that answers every request (one per connection) with `response`, written as is.
async fn raw_origin(response: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(response.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// `consent_gateway_set_cookie_total{host="portal.test",category="unknown",verdict="dropped"}`.
async fn dropped_unknown(gw: &Gateway) -> u64 {
    let m = String::from_utf8(admin(gw, "/metrics").await.body).unwrap();
    let key = r#"consent_gateway_set_cookie_total{host="portal.test",category="unknown",verdict="dropped"} "#;
    m.lines()
        .find_map(|l| l.strip_prefix(key))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// An HTTP/1.1 response read to the connection's end: head fields, the de-chunked body, and the
/// trailer section's fields (names lower-cased).
struct Chunked {
    head: String,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Chunked {
    fn trailer(&self, name: &str) -> Vec<&str> {
        self.trailers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn read_chunked(buf: &[u8]) -> Chunked {
    let text = String::from_utf8_lossy(buf);
    let (head, mut rest) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ntransfer-encoding: chunked"),
        "a chunked response: {head}"
    );
    let mut body = Vec::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        rest = after;
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest.as_bytes()[..size]);
        rest = rest[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after a chunk");
    }
    // The trailer section: fields, each ending in CRLF, then an empty line (a complete message).
    let section = rest.strip_suffix("\r\n").expect("the final CRLF");
    assert!(
        section.is_empty() || section.ends_with("\r\n"),
        "a complete trailer section: {rest:?}"
    );
    let trailers = section
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("a trailer field");
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    Chunked {
        head: head.to_owned(),
        body,
        trailers,
    }
}

/// `GET /` for `www.portal.test` over HTTP/1.1 with extra header lines, read to the end.
async fn h1_get(addr: SocketAddr, headers: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req =
        format!("GET / HTTP/1.1\r\nHost: www.portal.test\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .expect("the whole response within the deadline")
        .unwrap();
    buf
}

#[tokio::test]
async fn h1_trailers_lose_their_cookies_and_keep_the_rest_with_te_trailers() {
    let up = raw_origin(CHUNKED_WITH_TRAILERS).await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let addr = gw.http_addr.unwrap();
    assert_eq!(dropped_unknown(&gw).await, 0);

    // The client grants everything: the trailers' cookies are dropped all the same.
    let consent = format!(
        "Cookie: cookies_preferences={}\r\n",
        prefs(&["ga", "matomo"])
    );
    let r = read_chunked(&h1_get(addr, &format!("TE: trailers\r\n{consent}")).await);
    assert_eq!(r.body, b"hello world\n");
    assert_eq!(r.trailer("x-checksum"), vec!["abc"], "{:?}", r.trailers);
    assert!(r.trailer("set-cookie").is_empty(), "{:?}", r.trailers);
    assert!(
        !r.head.to_ascii_lowercase().contains("set-cookie"),
        "{}",
        r.head
    );
    // The announcement of the trailers is forwarded without Set-Cookie.
    let head = r.head.to_ascii_lowercase();
    assert!(head.contains("\r\ntrailer: x-checksum\r\n"), "{}", r.head);
    assert_eq!(dropped_unknown(&gw).await, 2);

    // Without TE: trailers, HTTP/1.1 sends no trailer section at all, and announces none.
    let r = read_chunked(&h1_get(addr, &consent).await);
    assert_eq!(r.body, b"hello world\n");
    assert!(r.trailers.is_empty(), "{:?}", r.trailers);
    assert!(
        !r.head.to_ascii_lowercase().contains("\r\ntrailer:"),
        "{}",
        r.head
    );
    // The cookies were taken out all the same (and counted).
    assert_eq!(dropped_unknown(&gw).await, 4);
    gw.begin_shutdown();
}

#[tokio::test]
async fn h2_trailers_lose_their_cookies_and_keep_the_rest() {
    let up = raw_origin(CHUNKED_WITH_TRAILERS).await;
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(&["*.portal.test"]);
    let t = TlsGateway::start(&[("*.portal.test", &leaf)], None, portal_toml(up, "")).await;
    assert_eq!(dropped_unknown(&t.gw).await, 0);
    let s = connect(
        t.https(),
        "www.portal.test",
        true,
        &ca.pem,
        &[b"h2", b"http/1.1"],
    )
    .await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    for consent in ["", "cookies_preferences=[\"ga\"]"] {
        let req = http::Request::get("https://www.portal.test/")
            .header("cookie", consent)
            .header("te", "trailers")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(DEADLINE, send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert!(resp.headers().get("set-cookie").is_none());
        assert_eq!(resp.headers().get("trailer").unwrap(), "X-Checksum");
        let (mut body, mut trailers) = (Vec::new(), Vec::new());
        let mut incoming = resp.into_body();
        while let Some(frame) = tokio::time::timeout(DEADLINE, incoming.frame())
            .await
            .unwrap()
        {
            match frame.unwrap().into_data() {
                Ok(d) => body.extend_from_slice(&d),
                Err(f) => trailers.push(f.into_trailers().unwrap()),
            }
        }
        assert_eq!(body, b"hello world\n");
        assert_eq!(
            trailers.len(),
            1,
            "one trailing HEADERS frame: {trailers:?}"
        );
        let tr = &trailers[0];
        assert_eq!(tr.get("x-checksum").unwrap(), "abc", "{tr:?}");
        assert!(
            tr.get("set-cookie").is_none(),
            "consent {consent:?}: {tr:?}"
        );
        assert_eq!(tr.len(), 1, "{tr:?}");
    }
    assert_eq!(dropped_unknown(&t.gw).await, 4);
}

#[tokio::test]
async fn h2_trailers_of_only_cookies_end_the_stream_without_trailers() {
    const ONLY_COOKIES: &str = "HTTP/1.1 200 OK\r\n\
        Transfer-Encoding: chunked\r\n\
        Trailer: Set-Cookie\r\n\
        Connection: close\r\n\
        \r\n\
        2\r\nok\r\n\
        0\r\n\
        set-cookie: ads=1\r\n\
        \r\n";
    let up = raw_origin(ONLY_COOKIES).await;
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(&["*.portal.test"]);
    let t = TlsGateway::start(&[("*.portal.test", &leaf)], None, portal_toml(up, "")).await;
    let s = connect(t.https(), "www.portal.test", true, &ca.pem, &[b"h2"]).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://www.portal.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert!(resp.headers().get("trailer").is_none(), "{resp:?}");
    let collected = tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    assert!(collected.trailers().is_none(), "{:?}", collected.trailers());
    assert_eq!(collected.to_bytes(), "ok");
    assert_eq!(dropped_unknown(&t.gw).await, 1);
}

#[tokio::test]
async fn cookies_in_a_103_never_reach_the_client() {
    let up = raw_origin(EARLY_HINTS_THEN_200).await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let consent = format!("Cookie: cookies_preferences={}\r\n", prefs(&["ga"]));
    let buf = h1_get(gw.http_addr.unwrap(), &consent).await;
    let text = String::from_utf8_lossy(&buf);
    // hyper's client reads the 103 and forwards nothing of it (hyper's server has no way to
    // send a 1xx but its own 100 Continue): the client gets the 200 alone.
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("103"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("set-cookie"), "{text}");
    assert!(!text.contains("early"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello\n"), "{text}");
    // The gateway saw them (an HTTP/1.1 upstream's 1xx are read by hyper's client and shown to
    // the gateway) and counts them as dropped.
    assert_eq!(dropped_unknown(&gw).await, 2);
    gw.begin_shutdown();
}

/// A body of these frames, of unknown length (so that hyper sends no `content-length`).
struct Streamed(Vec<Frame<Bytes>>);

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = (!self.0.is_empty()).then(|| Ok(self.0.remove(0)));
        std::task::Poll::Ready(next)
    }
}

/// An origin over TLS whose responses end with trailers holding a cookie and a checksum
/// (hyper's HTTP/2 server sends them as a trailing HEADERS frame; its HTTP/1.1 server would
/// refuse the cookie). Reports the HTTP version of each request.
async fn tls_trailers_origin(
    leaf: &Leaf,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<http::Version>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, versions) = tokio::sync::mpsc::unbounded_channel();
    serve_tls(listener, &leaf.cert, &leaf.key, move |req| {
        let _ = tx.send(req.version());
        let mut t = http::HeaderMap::new();
        t.append("set-cookie", "_ga=h2".parse().unwrap());
        t.append("x-checksum", "abc".parse().unwrap());
        let body = Streamed(vec![
            Frame::data(Bytes::from_static(b"hello world\n")),
            Frame::trailers(t),
        ]);
        let resp = http::Response::builder()
            .header("trailer", "set-cookie, x-checksum")
            .body(body.map_err(|never| match never {}).boxed())
            .unwrap();
        async move { resp }
    });
    (addr, versions)
}

#[tokio::test]
async fn an_h2_upstreams_trailing_headers_lose_their_cookies() {
    let origin_ca = Ca::new("origin CA");
    let (up, mut versions) = tls_trailers_origin(&origin_ca.leaf(&["origin.test"])).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("origin-ca.pem");
    std::fs::write(&ca_path, &origin_ca.pem).unwrap();
    let host_file = portal_toml(
        up,
        &format!(
            "upstream_host = \"origin.test\"\nupstream_ca = \"{}\"",
            ca_path.display()
        ),
    )
    .replace(
        &format!("upstream = \"http://{up}\""),
        &format!("upstream = \"https://{up}\""),
    );
    let gw = gateway("", &[("p.toml", host_file)]).await;
    let r = read_chunked(&h1_get(gw.http_addr.unwrap(), "TE: trailers\r\n").await);
    assert_eq!(r.body, b"hello world\n");
    assert_eq!(r.trailer("x-checksum"), vec!["abc"], "{:?}", r.trailers);
    assert!(r.trailer("set-cookie").is_empty(), "{:?}", r.trailers);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("\r\ntrailer: x-checksum\r\n"),
        "{}",
        r.head
    );
    assert_eq!(
        versions.recv().await.unwrap(),
        http::Version::HTTP_2,
        "HTTP/2 to the origin by ALPN"
    );
    assert_eq!(dropped_unknown(&gw).await, 1);
    gw.begin_shutdown();
}
