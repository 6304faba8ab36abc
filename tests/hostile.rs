//! Hostile clients: starved probes, abandoned requests, protocol faults, rapid reset.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use consent_gateway::gateway::Gateway;
use http::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// 200 idle (and slowloris) connections to the admin port: `/healthz` and `/readyz` keep
/// answering 200 within a second, again and again. Before the probe lane, the 65th admin
/// connection got a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_admin_connections_are_hogged() {
    let (origin, _) = cookie_origin(&[]).await;
    let gw = gateway("", &[("portal.toml", portal_toml(origin, ""))]).await;
    let admin_addr = gw.admin_addr.unwrap();
    let mut hogs = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(admin_addr).await.unwrap();
        if i % 2 == 1 {
            // Half of them start a request head and never finish it.
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n")
                .await
                .unwrap();
        }
        hogs.push(s);
    }
    for round in 0..6 {
        for path in ["/healthz", "/readyz"] {
            let t = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(1), admin(&gw, path))
                .await
                .unwrap_or_else(|_| panic!("round {round}: {path} took over a second"));
            assert_eq!(r.status, 200, "round {round}: {path}: {r:?}");
            assert!(t.elapsed() < Duration::from_secs(1));
        }
        // New hogs keep arriving while the probes are asked.
        for _ in 0..20 {
            hogs.push(TcpStream::connect(admin_addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(hogs);
}

/// Over the admin limit, what is not a probe gets a 503 (and the probe still a 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_admin_limit_only_probes_are_served() {
    let (origin, _) = cookie_origin(&[]).await;
    let gw = gateway("", &[("portal.toml", portal_toml(origin, ""))]).await;
    let admin_addr = gw.admin_addr.unwrap();
    let mut hogs = Vec::new();
    for _ in 0..consent_gateway::admin::MAX_CONNECTIONS {
        hogs.push(TcpStream::connect(admin_addr).await.unwrap());
    }
    // The hogs hold every full slot once accepted: a probe afterwards is in the lane.
    assert_eq!(admin(&gw, "/healthz").await.status, 200);
    assert_eq!(admin(&gw, "/metrics").await.status, 503);
    drop(hogs);
    // The full slots free up once the hogs are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if admin(&gw, "/metrics").await.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "/metrics never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol faults.

/// Log lines written while the guard lives (the gateway's workers log where their starter logs).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let w = logs.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(sub))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Reads one response off a kept-alive connection: the head, then the body by its
/// Content-Length or chunked framing. Returns the raw head and the body.
async fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.unwrap();
        assert!(
            n > 0,
            "connection closed in the head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap())
    {
        body.resize(len, 0);
        s.read_exact(&mut body).await.unwrap();
    } else if lower.contains("transfer-encoding: chunked") {
        let mut raw = Vec::new();
        while !raw.ends_with(b"\r\n0\r\n\r\n") && raw != b"0\r\n\r\n" {
            let n = s.read(&mut byte).await.unwrap();
            assert!(n > 0, "connection closed in a chunked body");
            raw.push(byte[0]);
        }
        body = raw;
    }
    (head, body)
}

/// An origin that speaks HTTP/1.0: one response per connection, the body up to the close.
async fn http10_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: sessionid=1\r\n\r\nhello from 1.0\n")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// An HTTP/1.1 client of an HTTP/1.0 origin gets HTTP/1.1 and keeps its connection: two
/// requests on one connection. Before, the answer was `HTTP/1.0` and the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_origin_is_answered_as_http11_with_keep_alive() {
    let (origin, accepted) = http10_origin().await;
    let gw = gateway("", &[("portal.toml", portal_toml(origin, ""))]).await;
    let mut s = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
    for i in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: portal.test\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
            .await
            .unwrap_or_else(|_| panic!("request {i}: no response"));
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        assert!(
            String::from_utf8_lossy(&body).contains("hello from 1.0"),
            "request {i}: {body:?}"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // An HTTP/1.0 client still gets HTTP/1.0 (hyper answers in the client's version).
    let r = raw(
        gw.http_addr.unwrap(),
        b"GET / HTTP/1.0\r\nHost: portal.test\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
}

/// A name that does not resolve is logged as a DNS failure, not as a refused connection; the
/// metric kind stays `connect`. The name has a 64-byte label, which the resolver refuses
/// without sending a query (no traffic leaves loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_upstream_is_logged_as_dns_failure() {
    let (logs, _guard) = Logs::capture();
    let name = format!("{}.test", "a".repeat(64));
    let file = format!("hosts = [\"portal.test\"]\nupstream = \"http://{name}:8080\"\n");
    let gw = gateway("", &[("portal.toml", file)]).await;
    let r = get(gw.http_addr.unwrap(), "portal.test", "/", "").await;
    assert_eq!(r.status, 502);
    let text = String::from_utf8(admin(&gw, "/metrics").await.body).unwrap();
    assert!(
        text.contains(
            "consent_gateway_upstream_errors_total{host=\"portal.test\",kind=\"connect\"} 1"
        ),
        "{text}"
    );
    let log = logs.text();
    assert!(log.contains("did not resolve (DNS)"), "{log}");
    assert!(!log.contains("refused the connection"), "{log}");
}

/// RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400 even in absolute form; HTTP/1.0
/// may omit it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_http11_without_host_is_400() {
    let (origin, seen) = cookie_origin(&[]).await;
    let gw = gateway("", &[("portal.toml", portal_toml(origin, ""))]).await;
    let addr = gw.http_addr.unwrap();
    let r = raw(
        addr,
        b"GET http://portal.test/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(seen.count(), 0);
    let r = raw(addr, b"GET http://portal.test/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = raw(
        addr,
        b"GET http://portal.test/x HTTP/1.1\r\nHost: portal.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// The value of one metric line (`name{labels}`), 0 when absent.
async fn metric(gw: &Gateway, key: &str) -> f64 {
    let text = String::from_utf8(admin(gw, "/metrics").await.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn wait_metric(gw: &Gateway, key: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(gw, key).await;
        if v == want {
            return;
        }
        assert!(Instant::now() < deadline, "{key} is {v}, want {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that closes its connection while the origin thinks, and one that closes it in the
/// middle of a long body: both logged with status 499 and counted as client aborts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_are_logged_and_counted_as_499() {
    let (logs, _guard) = Logs::capture();
    let (gated, mut arrived, _release) = gated_origin(&[], "never sent\n").await;
    let (endless, _) = origin(|_req| async {
        let chunks = futures_stream(1 << 20);
        Response::builder().body(chunks).unwrap()
    })
    .await;
    let gw = gateway(
        "",
        &[
            ("portal.toml", portal_toml(gated, "")),
            (
                "big.toml",
                format!("hosts = [\"big.test\"]\nupstream = \"http://{endless}\"\n"),
            ),
        ],
    )
    .await;
    let addr = gw.http_addr.unwrap();
    let key = "consent_gateway_client_aborts_total{host=\"portal.test\"}";
    assert_eq!(metric(&gw, key).await, 0.0);

    // Before the response head.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /waiting HTTP/1.1\r\nHost: portal.test\r\n\r\n")
        .await
        .unwrap();
    arrived.recv().await.unwrap();
    drop(s);
    wait_metric(&gw, key, 1.0).await;
    wait_metric(
        &gw,
        "consent_gateway_requests_total{host=\"portal.test\",code=\"499\"}",
        1.0,
    )
    .await;

    // In the middle of the body.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: big.test\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 4096];
    let n = s.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    drop(s);
    wait_metric(
        &gw,
        "consent_gateway_client_aborts_total{host=\"big.test\"}",
        1.0,
    )
    .await;

    let log = logs.text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("status=499")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("path=\"/waiting\"") || l.contains("path=/waiting")),
        "{log}"
    );
    assert!(lines.iter().any(|l| l.contains("/big")), "{log}");
}

/// A body of `chunks` 16 KiB chunks, streamed (with backpressure).
fn futures_stream(chunks: usize) -> OriginBody {
    use http_body_util::BodyExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    tokio::spawn(async move {
        let chunk = bytes::Bytes::from(vec![b'x'; 16 * 1024]);
        for _ in 0..chunks {
            if tx.send(chunk.clone()).await.is_err() {
                return;
            }
        }
    });
    ChannelBody(rx).boxed()
}

/// A body fed by a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// The metrics of the open-connection gauge, by listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_counted_by_listener() {
    let (origin, _) = cookie_origin(&[]).await;
    let gw = gateway("", &[("portal.toml", portal_toml(origin, ""))]).await;
    let held: Vec<TcpStream> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(TcpStream::connect(gw.http_addr.unwrap()).await.unwrap());
        }
        v
    };
    wait_metric(
        &gw,
        "consent_gateway_connections_open{listener=\"http\"}",
        3.0,
    )
    .await;
    // The scrape's own connection is the admin listener's one.
    assert_eq!(
        metric(&gw, "consent_gateway_connections_open{listener=\"admin\"}").await,
        1.0
    );
    drop(held);
    wait_metric(
        &gw,
        "consent_gateway_connections_open{listener=\"http\"}",
        0.0,
    )
    .await;
}
