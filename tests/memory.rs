//! Memory under stalled clients, measured on the real binary: the gateway runs as a child
//! process and its resident set is read from `/proc/<pid>/status` (`VmRSS`). The origin and the
//! clients run in the test process, so their own buffers are not counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use http::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The gateway binary, quiet but for its own info lines (not one access log line a request).
async fn start(host_file: &str, extra: &str) -> Binary {
    Binary::start_with(
        host_file,
        extra,
        "warn,consent_gateway=info,consent_gateway::access=warn",
        std::process::Stdio::null(),
    )
    .await
}

/// The gateway's resident set, in KiB.
fn rss_kib(gw: &Binary) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Waits until the resident set stops growing (two readings 300 ms apart within 1 %), at most
/// 20 s; returns it.
async fn settled_rss_kib(gw: &Binary) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = rss_kib(gw);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = rss_kib(gw);
        if now <= last + last / 100 || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// The gateway binary with an https listener (a self-signed certificate for `portal.test`) in
/// front of `up`, one worker, and a client connector that trusts it and offers `alpn`. The
/// directory holds the certificate: keep it while the gateway runs.
async fn start_tls(
    up: SocketAddr,
    alpn: &[u8],
) -> (Binary, tokio_rustls::TlsConnector, tempfile::TempDir) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["portal.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::write(dir.path().join("certs/portal.test.crt"), cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("certs/portal.test.key"),
        key.serialize_pem(),
    )
    .unwrap();
    let gw = start(
        &portal_toml(up, ""),
        &format!(
            "[proxy]\nworkers = 1\n[tls]\ncerts_dir = \"{}\"\n",
            dir.path().join("certs").display()
        ),
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    (gw, connector, dir)
}

/// Connects to the gateway's https listener as `portal.test`.
async fn connect_tls(
    gw: &Binary,
    connector: &tokio_rustls::TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(gw.https.expect("https listener"))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("portal.test").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// An origin whose every response is 32 MiB, sent as fast as the gateway takes it.
async fn big_origin() -> SocketAddr {
    let (addr, _) = origin(|_req| async {
        Response::builder()
            .body(http_body_util::BodyExt::boxed(Repeat(512)))
            .unwrap()
    })
    .await;
    addr
}

/// `n` frames of 64 KiB.
struct Repeat(usize);

impl hyper::body::Body for Repeat {
    type Data = bytes::Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(None);
        }
        self.0 -= 1;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes::Bytes::from(
            vec![b'x'; 64 * 1024],
        )))))
    }
}

/// HTTP/1 clients that ask for a large response and never read it: the gateway's resident set
/// grows by less than the memory model's bound per client (`config::memory::h1_stalled`: 60 KiB
/// with 4 KiB upstream reads, 144 KiB with the default 32 KiB; it was about 590 KiB before reads
/// and buffers were bounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http1_clients_cost_little_memory() {
    for (read, setting) in [(4 << 10, "upstream_read_size = \"4KiB\"\n"), (32 << 10, "")] {
        let per_client = stalled_http1_clients(setting).await;
        let bound = consent_gateway::config::memory::h1_stalled(read) >> 10;
        assert!(
            per_client < bound,
            "{per_client} KiB per stalled client with {} KiB reads (bound {bound} KiB)",
            read >> 10
        );
    }
}

/// The resident KiB each of 200 stalled HTTP/1 clients adds, with `limits` in `[limits]`.
async fn stalled_http1_clients(limits: &str) -> u64 {
    const CLIENTS: usize = 200;
    let up = big_origin().await;
    let gw = start(
        &portal_toml(up, ""),
        &format!("[proxy]\nworkers = 1\n[limits]\n{limits}"),
    )
    .await;
    // Warm up: allocator arenas, pools, the first connections.
    for _ in 0..3 {
        let r = get(gw.http, "portal.test", "/warm", "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 32 << 20);
    }
    let before = settled_rss_kib(&gw).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut s = TcpStream::connect(gw.http).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: portal.test\r\n\r\n")
            .await
            .unwrap();
        clients.push(s);
    }
    let after = settled_rss_kib(&gw).await;
    let per_client = after.saturating_sub(before) / CLIENTS as u64;
    eprintln!(
        "stalled HTTP/1 clients ({limits:?}): RSS {before} KiB -> {after} KiB, {per_client} KiB per client ({CLIENTS} clients)"
    );
    drop(clients);
    per_client
}

/// Idle HTTP/1.1 keep-alive connections, each of which has served one request: the gateway's
/// resident set grows by less than 8 KiB per connection (it was about 20 KiB: hyper's read and
/// write buffers stayed allocated for the life of the connection).
/// Sends `GET /` on a kept-alive connection and reads its `ok` response.
async fn get_ok<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: portal.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.ends_with(b"ok\n") {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "a response");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
}

/// What `clients` idle keep-alive connections cost the gateway, in bytes each: each opened by
/// `open` and served one `GET /`, after 50 opened and closed to warm up (allocator arenas, the
/// upstream pool). Returns the connections, still open.
async fn idle_cost<S, F, Fut>(
    gw: &Binary,
    clients: usize,
    label: &str,
    mut open: F,
) -> (u64, Vec<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    let mut warm = Vec::new();
    for _ in 0..50 {
        let mut s = open().await;
        get_ok(&mut s).await;
        warm.push(s);
    }
    drop(warm);
    let before = settled_rss_kib(gw).await;
    let mut held = Vec::new();
    for _ in 0..clients {
        let mut s = open().await;
        get_ok(&mut s).await;
        held.push(s);
    }
    let after = settled_rss_kib(gw).await;
    let per_client = (after.saturating_sub(before) * 1024) / clients as u64;
    eprintln!(
        "idle keep-alive {label} clients: RSS {before} KiB -> {after} KiB, {per_client} bytes per client ({clients} clients)"
    );
    (per_client, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_cost_little_memory() {
    // Few enough to fit a default open-files limit of 1024, in this process and the gateway's.
    const CLIENTS: usize = 400;
    let (up, _) = origin(|_req| async { Response::new(full("ok\n")) }).await;
    let gw = start(&portal_toml(up, ""), "[proxy]\nworkers = 1\n").await;
    let (per_client, clients) = idle_cost(&gw, CLIENTS, "HTTP/1.1", || async {
        TcpStream::connect(gw.http).await.unwrap()
    })
    .await;
    assert!(per_client < 8 * 1024, "{per_client} bytes per idle client");
    drop(clients);
}

/// The same over TLS (HTTP/1.1): between requests the connection keeps its TLS session and
/// lets hyper's state go (`server::serve_h1`), as a plain one does (22 KiB a connection when
/// hyper's state stayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_keep_alive_connections_cost_little_memory() {
    const CLIENTS: usize = 400;
    let (up, _) = origin(|_req| async { Response::new(full("ok\n")) }).await;
    let (gw, connector, _certs) = start_tls(up, b"http/1.1").await;
    let (per_client, mut clients) = idle_cost(&gw, CLIENTS, "HTTP/1.1 over TLS", || {
        connect_tls(&gw, &connector)
    })
    .await;
    assert!(
        per_client < 16 * 1024,
        "{per_client} bytes per idle TLS client"
    );
    // And they are still served.
    for s in clients.iter_mut().take(20) {
        get_ok(s).await;
    }
    drop(clients);
}

/// One HTTP/2 client announcing the largest windows, opening 256 streams for a large response
/// each and then never reading its socket: the gateway's resident set grows by less than the
/// memory model's bound (15 MiB with the default 32 KiB upstream reads; it was about 150 MB).
/// The gateway lets 64 streams run at once; the client queues the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http2_streams_cost_little_memory() {
    let up = big_origin().await;
    let (gw, connector, _certs) = start_tls(up, b"h2").await;
    for _ in 0..3 {
        let r = get(gw.http, "portal.test", "/warm", "").await;
        assert_eq!(r.body.len(), 32 << 20);
    }
    let before = settled_rss_kib(&gw).await;

    let tls = connect_tls(&gw, &connector).await;
    let (mut send, conn) = h2::client::Builder::new()
        .initial_window_size(u32::MAX >> 1)
        .initial_connection_window_size(u32::MAX >> 1)
        .max_concurrent_streams(1024)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .unwrap();
    // The connection is driven until every response head is in, then never polled again: the
    // client stops reading its socket.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        let mut conn = conn;
        tokio::select! {
            _ = &mut conn => None,
            _ = stop_rx => Some(conn),
        }
    });
    let mut heads = Vec::new();
    let mut opened = 0;
    for _ in 0..256 {
        let Ok(Ok(ready)) =
            tokio::time::timeout(Duration::from_secs(2), send.clone().ready()).await
        else {
            break;
        };
        send = ready;
        let req = http::Request::get("https://portal.test/big")
            .body(())
            .unwrap();
        let Ok((resp, _)) = send.send_request(req, true) else {
            break;
        };
        heads.push(resp);
        opened += 1;
    }
    // The response heads of the streams the gateway lets run at once: the first within 20 s (a
    // loaded machine), the others within 5 s more.
    let mut answered = 0;
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for h in heads
        .iter_mut()
        .take(consent_gateway::edge::server::H2_MAX_STREAMS as usize)
    {
        let got = tokio::time::timeout_at(deadline, h).await;
        if answered == 0 {
            deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        }
        match got {
            Ok(Ok(r)) if r.status() == 200 => answered += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = stop_tx.send(());
    let held = driver.await.unwrap();
    let after = settled_rss_kib(&gw).await;
    let growth = after.saturating_sub(before);
    eprintln!(
        "stalled HTTP/2 client: {opened} streams sent, {answered} answered; RSS {before} KiB -> {after} KiB (+{growth} KiB)"
    );
    assert!(answered > 0);
    // The memory model's bound for one HTTP/2 connection with every stream stalled, with the
    // default 32 KiB upstream reads: 64 x 224 KiB + the 1 MiB receive window.
    let bound = (consent_gateway::config::memory::H2_STREAMS
        * consent_gateway::config::memory::h2_stream(32 << 10)
        + consent_gateway::config::memory::H2_RECEIVE_WINDOW)
        >> 10;
    assert!(
        growth < bound,
        "+{growth} KiB for one stalled HTTP/2 client (bound {bound} KiB)"
    );
    drop(held);
}

/// `check` computes the worst case of `max_connections` stalled clients from the config and
/// warns (exit 0) when it does not fit `[limits] memory_budget`.
#[test]
fn check_warns_when_the_worst_case_does_not_fit_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("hosts")).unwrap();
    std::fs::write(
        dir.path().join("hosts/portal.toml"),
        portal_toml("127.0.0.1:9".parse().unwrap(), ""),
    )
    .unwrap();
    let run = |limits: &str| {
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!(
                "[listen]\nhttp = \"127.0.0.1:0\"\n[registry]\ndir = \"hosts\"\n[limits]\n{limits}"
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(dir.path().join("gateway.toml"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The defaults: 10,000 connections of 144 KiB (stalled, 32 KiB upstream reads) do not fit
    // 256 MiB.
    let (code, _, err) = run("");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: memory: worst case 1427 MiB"),
        "{err}"
    );
    assert!(
        err.contains("does not fit; limits.max_connections = 1678 would"),
        "{err}"
    );
    // What the shipped Kubernetes config says.
    let (code, out, err) = run("memory_budget = \"256MiB\"\nmax_connections = 1650\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("memory: worst case 253 MiB"), "{out}");
    assert!(!err.contains("does not fit"), "{err}");
    // Smaller upstream reads: a head of 64 KiB (80 KiB) is the larger worst case.
    let (code, out, err) = run("max_connections = 3000\nupstream_read_size = \"8KiB\"\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("memory: worst case 255 MiB"), "{out}");
    // A budget that does not parse is a config error with its place.
    let (code, _, err) = run("memory_budget = \"lots\"\n");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("gateway.toml:6:17: limits.memory_budget:"),
        "{err}"
    );
}
