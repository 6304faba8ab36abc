//! Hostile clients: starved probes, abandoned requests, protocol faults, rapid reset.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
    for _ in 0..consent_gateway::control::admin::MAX_CONNECTIONS {
        hogs.push(TcpStream::connect(admin_addr).await.unwrap());
    }
    // The hogs hold every full slot once accepted: a probe afterwards is in the lane.
    assert_eq!(admin(&gw, "/healthz").await.status, 200);
    assert_eq!(admin(&gw, "/metrics").await.status, 503);
    drop(hogs);
    // The full slots free up once the hogs are gone: once the gateway has seen every close (the
    // open connections gauge falls to 0, after each permit is back), /metrics is served again.
    open_connections(&gw, "admin", |n| n == 0).await;
    assert_eq!(
        admin(&gw, "/metrics").await.status,
        200,
        "/metrics served again"
    );
}

// ---------------------------------------------------------------------------------------------
// Protocol faults.

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
    // The scrape's own connection is counted on the admin listener (earlier scrapes' connections
    // may not be closed on the gateway's side yet).
    let admin_open = metric(&gw, "consent_gateway_connections_open{listener=\"admin\"}").await;
    assert!(admin_open >= 1.0, "{admin_open}");
    drop(held);
    wait_metric(
        &gw,
        "consent_gateway_connections_open{listener=\"http\"}",
        0.0,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 abuse and amplification toward the origin.

/// An origin that answers every request after `delay`, counting the connections it accepts.
async fn counting_origin(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (a, r) = (Arc::clone(&accepted), Arc::clone(&requests));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(
                            Response::builder().body(full("ok\n")).unwrap(),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, accepted, requests)
}

/// A gateway with an https listener (self-signed `portal.test`), `extra` config and one worker.
async fn tls_gateway(
    upstream: SocketAddr,
    extra: &str,
) -> (Gateway, tempfile::TempDir, rustls::RootCertStore) {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["portal.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::create_dir(dir.path().join("hosts")).unwrap();
    std::fs::write(dir.path().join("certs/portal.test.crt"), cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("certs/portal.test.key"),
        key.serialize_pem(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("hosts/portal.toml"),
        portal_toml(upstream, ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!("[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[tls]\ncerts_dir = \"certs\"\n[registry]\ndir = \"hosts\"\nwatch = false\n[proxy]\nworkers = 1\n{extra}"),
    )
    .unwrap();
    let (cfg, registry) = consent_gateway::config::load(&dir.path().join("gateway.toml")).unwrap();
    let gw = Gateway::start(&cfg, registry).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    (gw, dir, roots)
}

/// An HTTP/2 client connection (ALPN h2) to the gateway's https listener.
async fn h2_client(
    gw: &Gateway,
    roots: &rustls::RootCertStore,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::client::Connection<tokio_rustls::client::TlsStream<TcpStream>, bytes::Bytes>,
) {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(gw.https_addr.unwrap()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("portal.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2::client::Builder::new()
        // The largest windows a client may ask for.
        .initial_window_size(u32::MAX >> 1)
        .initial_connection_window_size(u32::MAX >> 1)
        .handshake(tls)
        .await
        .unwrap()
}

/// Paced rapid reset: batches of 10 requests each cancelled at once (RST_STREAM CANCEL),
/// then a PING, for 2 s (the attack ran for longer; the shape is the same). Before: each
/// cancelled stream aborted the upstream connect it had started, thousands of new upstream
/// connections a second. Now the origin sees a handful of connections, and the client's
/// connection is closed once it spends its cancel budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_rapid_reset_does_not_amplify_toward_the_origin() {
    let (origin, accepted, requests) = counting_origin(Duration::from_millis(5)).await;
    let (gw, _dir, roots) = tls_gateway(origin, "").await;
    let (mut send, conn) = h2_client(&gw, &roots).await;
    let mut conn = conn;
    let mut ping = conn.ping_pong().unwrap();
    let conn_task = tokio::spawn(conn);
    let start = Instant::now();
    let mut cancelled = 0usize;
    let mut closed = false;
    'attack: while start.elapsed() < Duration::from_secs(2) {
        for _ in 0..10 {
            let Ok(ready) = send.clone().ready().await else {
                closed = true;
                break 'attack;
            };
            send = ready;
            let req = http::Request::get("https://portal.test/x")
                .body(())
                .unwrap();
            let Ok((resp, mut stream)) = send.send_request(req, true) else {
                closed = true;
                break 'attack;
            };
            stream.send_reset(h2::Reason::CANCEL);
            drop(resp);
            cancelled += 1;
        }
        if ping.ping(h2::Ping::opaque()).await.is_err() {
            closed = true;
            break;
        }
    }
    if !closed {
        // The GOAWAY may still be on its way.
        closed = tokio::time::timeout(Duration::from_secs(3), conn_task)
            .await
            .is_ok();
    }
    // Let detached exchanges finish before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conns = accepted.load(Ordering::SeqCst);
    eprintln!(
        "rapid reset: {cancelled} streams cancelled, origin saw {conns} connections and {} requests, client connection closed: {closed}",
        requests.load(Ordering::SeqCst)
    );
    assert!(
        conns <= 20,
        "{conns} upstream connections for {cancelled} cancels"
    );
    assert!(
        closed,
        "the client's connection stayed open after {cancelled} cancels"
    );
    assert!(metric(&gw, "consent_gateway_h2_cancel_limited_total").await >= 1.0);
}

/// Requests whose clients go away before the answer cost no upstream connection each: the
/// exchange completes and its connection goes back to the pool (one worker, one pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_reuse_upstream_connections() {
    let (origin, accepted, requests) = counting_origin(Duration::from_millis(50)).await;
    let gw = gateway_with_workers("", &[("portal.toml", portal_toml(origin, ""))], Some(1)).await;
    for i in 0..30 {
        let mut s = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: portal.test\r\n\r\n")
            .await
            .unwrap();
        // Wait until the origin has the request, then leave.
        while requests.load(Ordering::SeqCst) <= i {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(s);
        // The next request comes once the abandoned one has been answered.
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    let conns = accepted.load(Ordering::SeqCst);
    assert!(
        conns <= 3,
        "{conns} upstream connections for 30 abandoned requests"
    );
    // The last abort is noticed when the gateway next polls that connection: wait for it.
    wait_metric(
        &gw,
        "consent_gateway_client_aborts_total{host=\"portal.test\"}",
        30.0,
    )
    .await;
}

/// An HTTP/2 connection that opens no stream and only sends PINGs is closed by `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_only_h2_connection_is_closed_by_idle_timeout() {
    let (origin, _, _) = counting_origin(Duration::ZERO).await;
    let (gw, _dir, roots) = tls_gateway(
        origin,
        "[limits]\nidle_timeout = \"1s\"\nupstream_response_timeout = \"1s\"\n",
    )
    .await;
    let (send, mut conn) = h2_client(&gw, &roots).await;
    let mut ping = conn.ping_pong().unwrap();
    let conn_task = tokio::spawn(conn);
    let start = Instant::now();
    let pinger = tokio::spawn(async move {
        while ping.ping(h2::Ping::opaque()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::timeout(Duration::from_secs(5), conn_task)
        .await
        .expect("the PING-only connection was still open after 5 s")
        .unwrap()
        .ok();
    let lived = start.elapsed();
    assert!(
        lived >= Duration::from_millis(900),
        "closed too early: {lived:?}"
    );
    pinger.abort();
    drop(send);
}
