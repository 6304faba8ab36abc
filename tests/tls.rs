//! TLS at both ends, with certificates made by the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::tls::*;
use common::*;
use consent_gateway::control::live::ReloadResult;
use http::Response;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn presented(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One HTTP/1.1 request on a TLS stream, keeping the stream open.
async fn h1_request(s: &mut TlsStream<TcpStream>, host: &str, headers: &str) -> Raw {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(r) = parse_response(&buf) {
            let len: usize = r
                .get("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            if r.body.len() >= len {
                return r;
            }
        }
    }
}

const SETS: &[&str] = &["sessionid=1; Secure", "_ga=2; Secure", "mystery=3"];

#[tokio::test]
async fn sni_selects_the_certificate_per_host() {
    let ca = Ca::new("test CA");
    let (a, b) = (ca.leaf(&["a.test"]), ca.leaf(&["b.test"]));
    let (up, _) = cookie_origin(SETS).await;
    let t = TlsGateway::start(&[("a.test", &a), ("b.test", &b)], None, portal_toml(up, "")).await;
    let s = connect(t.https(), "a.test", true, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(presented(&s), a.der);
    let s = connect(t.https(), "b.test", true, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(presented(&s), b.der);
    let m = String::from_utf8(admin(&t.gw, "/metrics").await.body).unwrap();
    assert!(
        m.contains("consent_gateway_tls_cert_not_after{host=\"a.test\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn wildcard_certificates_cover_their_subdomains() {
    let ca = Ca::new("test CA");
    let star = ca.leaf(&["*.portal.test"]);
    let under = ca.leaf(&["*.under.test"]);
    let (up, _) = cookie_origin(SETS).await;
    let t = TlsGateway::start(
        &[("*.portal.test", &star), ("_wildcard.under.test", &under)],
        None,
        portal_toml(up, ""),
    )
    .await;
    let s = connect(t.https(), "www.portal.test", true, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(presented(&s), star.der);
    let s = connect(t.https(), "x.under.test", true, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(presented(&s), under.der);
}

#[tokio::test]
async fn a_wildcard_certificate_is_not_offered_two_labels_down() {
    // *.portal.test covers www.portal.test, not a.b.portal.test (RFC 6125 §6.4.3): that name
    // gets the default certificate (which covers it here), not one the client would reject.
    let ca = Ca::new("test CA");
    let star = ca.leaf(&["*.portal.test"]);
    let default = ca.leaf(&["a.b.portal.test"]);
    let (up, _) = cookie_origin(SETS).await;
    let t = TlsGateway::start(
        &[("*.portal.test", &star), ("default", &default)],
        Some("default"),
        portal_toml(up, ""),
    )
    .await;
    let s = connect(t.https(), "a.b.portal.test", true, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(presented(&s), default.der);
    let s = connect(t.https(), "www.portal.test", true, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(presented(&s), star.der);
}

#[tokio::test]
async fn clients_without_sni_get_the_default_certificate() {
    let ca = Ca::new("test CA");
    let (a, default) = (ca.leaf(&["a.test"]), ca.leaf(&["default.test"]));
    let (up, _) = cookie_origin(SETS).await;
    let t = TlsGateway::start(
        &[("a.test", &a), ("default", &default)],
        Some("default"),
        portal_toml(up, ""),
    )
    .await;
    let s = connect(t.https(), "default.test", false, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(presented(&s), default.der);
    // An SNI name no certificate covers gets the default too (as nginx's default server).
    let mut roots_ok = connect(t.https(), "default.test", true, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(presented(&roots_ok), default.der);
    roots_ok.shutdown().await.unwrap();
}

#[tokio::test]
async fn http11_over_tls_is_filtered_and_says_https() {
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(&["portal.test"]);
    let (up, seen) = cookie_origin(SETS).await;
    let t = TlsGateway::start(&[("portal.test", &leaf)], None, portal_toml(up, "")).await;
    let mut s = connect(t.https(), "portal.test", true, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = h1_request(&mut s, "portal.test", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.set_cookie_names(), vec!["sessionid"]);
    assert_eq!(
        seen.last_headers().get("x-forwarded-proto").unwrap(),
        "https"
    );
}

#[tokio::test]
async fn h2_is_negotiated_and_filtered_the_same() {
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(&["portal.test"]);
    let (up, seen) = cookie_origin(SETS).await;
    let t = TlsGateway::start(&[("portal.test", &leaf)], None, portal_toml(up, "")).await;
    let s = connect(
        t.https(),
        "portal.test",
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
        // HTTP/2 clients send one Cookie header per cookie.
        let req = http::Request::get("https://portal.test/")
            .header("cookie", "sessionid=s")
            .header("cookie", consent)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let names: Vec<&str> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split('=').next().unwrap())
            .collect();
        let want: &[&str] = if consent.is_empty() {
            &["sessionid"]
        } else {
            &["sessionid", "_ga"]
        };
        assert_eq!(names, want, "consent {consent:?}");
        assert_eq!(resp.headers().get("vary").unwrap(), "Cookie");
        resp.into_body().collect().await.unwrap();
    }
    let h = seen.last_headers();
    assert_eq!(
        h.get_all("cookie").iter().count(),
        1,
        "the origin gets one Cookie header"
    );
    assert_eq!(h.get("host").unwrap(), "portal.test");
}

/// An origin speaking TLS with `leaf`, offering h2 and http/1.1; reports the HTTP version seen.
async fn tls_origin(
    leaf: &Leaf,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<http::Version>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    serve_tls(listener, &leaf.cert, &leaf.key, move |req| {
        let _ = tx.send(req.version());
        async {
            Response::builder()
                .header("set-cookie", "sessionid=o")
                .header("set-cookie", "_ga=o")
                .body(full("secure origin"))
                .unwrap()
        }
    });
    (addr, rx)
}

fn https_upstream_toml(up: SocketAddr, ca_path: &Path) -> String {
    portal_toml(
        up,
        &format!(
            "upstream_host = \"origin.test\"\nupstream_ca = \"{}\"",
            ca_path.display()
        ),
    )
    .replace(
        &format!("upstream = \"http://{up}\""),
        &format!("upstream = \"https://{up}\""),
    )
}

#[tokio::test]
async fn https_upstream_with_a_private_ca_speaks_h2_when_offered() {
    let origin_ca = Ca::new("origin CA");
    let (up, mut versions) = tls_origin(&origin_ca.leaf(&["origin.test"])).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("origin-ca.pem");
    std::fs::write(&ca_path, &origin_ca.pem).unwrap();
    let gw = gateway("", &[("p.toml", https_upstream_toml(up, &ca_path))]).await;
    let r = get(gw.http_addr.unwrap(), "portal.test", "/", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"secure origin");
    assert_eq!(r.set_cookie_names(), vec!["sessionid"]);
    assert_eq!(
        versions.recv().await.unwrap(),
        http::Version::HTTP_2,
        "h2 to the origin by ALPN"
    );
}

#[tokio::test]
async fn an_upstream_certificate_from_another_ca_is_502() {
    let (up, _) = tls_origin(&Ca::new("origin CA").leaf(&["origin.test"])).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("wrong-ca.pem");
    std::fs::write(&ca_path, Ca::new("some other CA").pem).unwrap();
    let gw = gateway("", &[("p.toml", https_upstream_toml(up, &ca_path))]).await;
    let r = get(gw.http_addr.unwrap(), "portal.test", "/", "").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.body, b"502 bad gateway\n");
}

/// Serves `secure origin` over TLS with `leaf` on `listener` until the returned task is aborted,
/// which closes the listener and every connection it accepted (an origin going down).
fn secure_origin(listener: tokio::net::TcpListener, leaf: &Leaf) -> tokio::task::JoinHandle<()> {
    serve_tls(listener, &leaf.cert, &leaf.key, |_| async {
        Response::new(full("secure origin"))
    })
}

/// Writes `text` to `path` by rename, as a secret mount or cert-manager replaces a file.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The `upstream_ca` bundle is read when the registry loads and again at each reload: an origin
/// re-issued by another CA is reached once the bundle is replaced and the gateway reloaded (the
/// upstream client is rebuilt on the new trust). Before, the bundle was read once, at the first
/// request, and kept: the reload changed nothing and the origin stayed a 502.
#[tokio::test]
async fn a_replaced_upstream_ca_is_trusted_after_a_reload() {
    let (ca1, ca2) = (Ca::new("origin CA 1"), Ca::new("origin CA 2"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let origin = secure_origin(listener, &ca1.leaf(&["origin.test"]));
    let bundles = tempfile::tempdir().unwrap();
    let ca_path = bundles.path().join("origin-ca.pem");
    std::fs::write(&ca_path, &ca1.pem).unwrap();
    let front = Ca::new("front CA").leaf(&["portal.test"]);
    let t = TlsGateway::start(
        &[("portal.test", &front)],
        None,
        https_upstream_toml(up, &ca_path),
    )
    .await;
    let http = t.gw.http_addr.unwrap();
    let r = get(http, "portal.test", "/", "").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"secure origin"[..]));
    assert_eq!(
        t.gw.reload().await,
        ReloadResult::Unchanged,
        "nothing changed"
    );

    // The origin is re-issued by CA-2 and restarted on the same port; the bundle is replaced.
    origin.abort();
    let _ = origin.await;
    let listener = tokio::net::TcpListener::bind(up).await.unwrap();
    let origin = secure_origin(listener, &ca2.leaf(&["origin.test"]));
    replace_file(&ca_path, &ca2.pem);
    assert_eq!(
        get(http, "portal.test", "/", "").await.status,
        502,
        "CA-1 is trusted until the reload"
    );
    let reloaded = t.gw.reload().await;
    assert!(
        matches!(reloaded, ReloadResult::Success(_)),
        "a replaced bundle is a change: {reloaded:?}"
    );
    let r = get(http, "portal.test", "/", "").await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"secure origin"[..]),
        "CA-2 trusted after the reload"
    );

    // A bundle that does not parse: the reload fails naming the host file and the bundle, and
    // the last good trust (CA-2) keeps serving.
    replace_file(&ca_path, "not a certificate\n");
    let ReloadResult::Error(errors) = t.gw.reload().await else {
        panic!("a broken bundle must fail the reload");
    };
    let bundle = ca_path.display().to_string();
    assert!(
        errors.iter().any(|e| e.file.ends_with("portal.toml")
            && e.message.contains(&bundle)
            && e.message.contains("no CERTIFICATE block")),
        "{errors:?}"
    );
    let r = get(http, "portal.test", "/", "").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"secure origin"[..]));
    let reg: serde_json::Value =
        serde_json::from_slice(&admin(&t.gw, "/registry").await.body).unwrap();
    assert!(
        reg["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains(&bundle),
        "{reg}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_consent-gateway"))
        .args(["check", "--config"])
        .arg(t.dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&bundle), "{stderr}");
    origin.abort();
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_connections_while_old_ones_keep_working() {
    let ca = Ca::new("test CA");
    let (v1, v2) = (ca.leaf(&["portal.test"]), ca.leaf(&["portal.test"]));
    let (up, _) = cookie_origin(SETS).await;
    let t = TlsGateway::start(&[("portal.test", &v1)], None, portal_toml(up, "")).await;
    let mut old = connect(t.https(), "portal.test", true, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(presented(&old), v1.der);
    assert_eq!(h1_request(&mut old, "portal.test", "").await.status, 200);

    let mut rx = t.gw.live.subscribe();
    write_pair(&t.dir.path().join("certs"), "portal.test", &v2);
    loop {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("renewal not picked up")
            .unwrap();
        if matches!(rx.borrow().1, ReloadResult::Success(_)) {
            break;
        }
    }
    let new = connect(t.https(), "portal.test", true, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(
        presented(&new),
        v2.der,
        "a new connection gets the renewed certificate"
    );
    assert_eq!(
        h1_request(&mut old, "portal.test", "").await.status,
        200,
        "the old connection keeps working"
    );
}

#[tokio::test]
async fn a_broken_certificate_keeps_the_old_one_and_reports_it() {
    let ca = Ca::new("test CA");
    let v1 = ca.leaf(&["portal.test"]);
    let (up, _) = cookie_origin(SETS).await;
    let t = TlsGateway::start(&[("portal.test", &v1)], None, portal_toml(up, "")).await;
    let mismatched = Leaf {
        key: ca.leaf(&["portal.test"]).key,
        ..ca.leaf(&["portal.test"])
    };
    write_pair(&t.dir.path().join("certs"), "portal.test", &mismatched);
    match t.gw.reload().await {
        ReloadResult::Error(e) => assert!(e[0].message.contains("does not match"), "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let s = connect(t.https(), "portal.test", true, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(
        presented(&s),
        v1.der,
        "the last good certificate keeps serving"
    );
    let reg: serde_json::Value =
        serde_json::from_slice(&admin(&t.gw, "/registry").await.body).unwrap();
    assert!(
        reg["last_error"]["file"]
            .as_str()
            .unwrap()
            .ends_with("portal.test.key"),
        "{reg}"
    );
}

/// An origin answering `ok <path>` with a necessary and a statistical cookie.
async fn path_origin() -> SocketAddr {
    let (addr, _) = origin(|req: http::Request<hyper::body::Incoming>| async move {
        Response::builder()
            .header("set-cookie", "sessionid=s1; Secure")
            .header("set-cookie", "_ga=2; Secure")
            .body(full(format!("ok {}", req.uri().path())))
            .unwrap()
    })
    .await;
    addr
}

/// HTTP/1.1 over TLS lets hyper's connection go between requests as plain HTTP/1.1 does
/// (`server::serve_h1`): one TLS connection is served across pauses longer than the release
/// delay, pipelined requests, and a head split by a pause, every response filtered.
#[tokio::test]
async fn one_tls_connection_serves_requests_across_idle_pauses() {
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(&["portal.test"]);
    let up = path_origin().await;
    let t = TlsGateway::start(&[("portal.test", &leaf)], None, portal_toml(up, "")).await;
    let mut s = connect(t.https(), "portal.test", true, &ca.pem, &[b"http/1.1"]).await;
    let mut pending = Vec::new();
    // Three times the release delay (a connection is let go one to two delays after its last
    // request started): it is let go in every pause.
    let pause = consent_gateway::edge::server::H1_RELEASE_AFTER * 3;
    for i in 0..4 {
        s.write_all(get_line(&format!("/r{i}")).as_bytes())
            .await
            .unwrap();
        let r = read_response(&mut s, &mut pending)
            .await
            .expect("a response");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, format!("ok /r{i}").as_bytes());
        assert_eq!(r.set_cookie_names(), vec!["sessionid"], "filtered");
        tokio::time::sleep(pause).await;
    }
    // Three requests in one write, after an idle pause.
    let three = format!("{}{}{}", get_line("/a"), get_line("/b"), get_line("/c"));
    s.write_all(three.as_bytes()).await.unwrap();
    for p in ["/a", "/b", "/c"] {
        let r = read_response(&mut s, &mut pending)
            .await
            .expect("a response");
        assert_eq!(r.body, format!("ok {p}").as_bytes());
    }
    tokio::time::sleep(pause).await;
    // A head in two TLS records with a pause between them.
    s.write_all(b"GET /split HTTP/1.1\r\n").await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(pause).await;
    s.write_all(b"Host: portal.test\r\n\r\n").await.unwrap();
    let r = read_response(&mut s, &mut pending)
        .await
        .expect("a response");
    assert_eq!(r.body, b"ok /split");
    assert_eq!(r.set_cookie_names(), vec!["sessionid"]);
    assert!(pending.is_empty(), "no stray bytes");
}

/// An idle TLS connection is closed after `header_read_timeout` (counted from the end of its
/// last response), and at once by the drain.
#[tokio::test]
async fn idle_tls_connections_close_after_header_read_timeout_and_at_the_drain() {
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(&["portal.test"]);
    let up = path_origin().await;
    let t = TlsGateway::start_with(
        &[("portal.test", &leaf)],
        None,
        portal_toml(up, ""),
        "[limits]\nheader_read_timeout = \"1s\"\nshutdown_grace = \"20s\"\n",
    )
    .await;
    let served = || async {
        let mut s = connect(t.https(), "portal.test", true, &ca.pem, &[b"http/1.1"]).await;
        let mut pending = Vec::new();
        s.write_all(get_line("/").as_bytes()).await.unwrap();
        let r = read_response(&mut s, &mut pending)
            .await
            .expect("a response");
        assert_eq!(r.status, 200);
        (s, pending)
    };
    let (mut quiet, mut pending) = served().await;
    let start = std::time::Instant::now();
    assert!(read_response(&mut quiet, &mut pending).await.is_none());
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );

    let (mut idle, mut pending) = served().await;
    tokio::time::sleep(consent_gateway::edge::server::H1_RELEASE_AFTER * 3).await;
    let TlsGateway { gw, dir: _dir } = t;
    gw.begin_shutdown();
    let start = std::time::Instant::now();
    assert_eq!(gw.wait().await, 0, "nothing had to be cut");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        read_response(&mut idle, &mut pending).await.is_none(),
        "closed"
    );
}

/// An upgrade (WebSocket) over TLS after kept-alive requests with idle pauses is tunnelled both
/// ways.
#[tokio::test]
async fn an_upgrade_over_tls_after_idle_pauses_is_tunnelled() {
    let up = echo_upgrade_origin().await;
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(&["portal.test"]);
    let t = TlsGateway::start(&[("portal.test", &leaf)], None, portal_toml(up, "")).await;
    let mut s = connect(t.https(), "portal.test", true, &ca.pem, &[b"http/1.1"]).await;
    let mut pending = Vec::new();
    for _ in 0..2 {
        s.write_all(get_line("/").as_bytes()).await.unwrap();
        let r = read_response(&mut s, &mut pending)
            .await
            .expect("a response");
        assert_eq!(r.body, b"plain");
        tokio::time::sleep(consent_gateway::edge::server::H1_RELEASE_AFTER * 3).await;
    }
    s.write_all(WEBSOCKET_UPGRADE).await.unwrap();
    let r = read_response(&mut s, &mut pending).await.expect("a 101");
    assert_eq!(r.status, 101);
    s.write_all(b"echo me").await.unwrap();
    let mut echo = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert_eq!(&echo, b"echo me");
}
