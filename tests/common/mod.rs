//! Test harness: a real origin on 127.0.0.1:0, a raw HTTP/1.1 client, and the gateway started in
//! process from config text.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use consent_gateway::config::{compile_registry, parse_gateway};
use consent_gateway::control::live::ReloadResult;
use consent_gateway::gateway::Gateway;

pub mod tls;

pub type OriginBody = BoxBody<Bytes, hyper::Error>;

pub fn full(b: impl Into<Bytes>) -> OriginBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// What the origin saw of each request: method, path and headers (in order, as received).
#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<Vec<(String, String, HeaderMap)>>>);

impl Seen {
    pub fn last_headers(&self) -> HeaderMap {
        self.0
            .lock()
            .unwrap()
            .last()
            .expect("origin saw no request")
            .2
            .clone()
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Starts an origin that answers every request with `handler`, recording what it saw.
pub async fn origin<H, F>(handler: H) -> (SocketAddr, Seen)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<OriginBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    record.0.lock().unwrap().push((
                        req.method().to_string(),
                        req.uri().to_string(),
                        req.headers().clone(),
                    ));
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, seen)
}

/// An origin that sends these `Set-Cookie` values (in order) on every response.
pub async fn cookie_origin(set_cookies: &'static [&'static str]) -> (SocketAddr, Seen) {
    origin(move |_req| async move {
        let mut b = Response::builder().header("content-type", "text/plain");
        for c in set_cookies {
            b = b.header("set-cookie", *c);
        }
        b.body(full("hello\n")).unwrap()
    })
    .await
}

/// A loopback address where nothing listens.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A registry file for host `portal.test` with the usual necessary and statistical cookies.
pub fn portal_toml(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"hosts = ["portal.test", "*.portal.test"]
upstream = "http://{upstream}"
{extra}

[[cookie]]
name = "sessionid"
category = "necessary"

[[cookie]]
name = "csrftoken"
category = "necessary"

[[cookie]]
name = "_ga"
category = "statistical"
consent = ["ga", "C0002"]

[[cookie]]
prefix = "_ga_"
category = "statistical"
consent = "ga"

[[cookie]]
name = "_pk_id"
category = "statistical"
consent = "matomo"

[[cookie]]
name = "ads"
category = "marketing"
"#
    )
}

/// The test host every unit test of the decision and the property tests build on
/// (`tests/fixtures/t.example.toml`, also loaded by `src/config/fixture.rs`), with `head`
/// (top-level keys such as `mode = "report-only"`) added before its first table.
pub fn test_policy(head: &str) -> consent_gateway::policy::registry::HostPolicy {
    let text = include_str!("../fixtures/t.example.toml");
    let (keys, tables) = text.split_once("\n[").unwrap();
    consent_gateway::config::parse_host_file(
        Path::new("t.toml"),
        &format!("{keys}\n{head}\n[{tables}"),
    )
    .unwrap_or_else(|e| panic!("tests/fixtures/t.example.toml: {e}"))
}

/// Starts the gateway in process on 127.0.0.1:0 (proxy and admin) with `[limits]`/`[proxy]`
/// text `extra` and the given registry files.
///
/// The number of proxy workers is the config's default (one per CPU), so tests run the real
/// multi-threaded path; [`gateway_with_workers`] fixes it for tests that count pooled upstream
/// connections (each worker has its own pool).
pub async fn gateway(extra: &str, files: &[(&str, String)]) -> Gateway {
    gateway_with_workers(extra, files, None).await
}

/// [`gateway`] with `workers` proxy workers.
pub async fn gateway_with_workers(
    extra: &str,
    files: &[(&str, String)],
    workers: Option<usize>,
) -> Gateway {
    let text =
        format!("[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}");
    let mut cfg = parse_gateway(Path::new("test/gateway.toml"), &text).unwrap();
    if let Some(n) = workers {
        cfg.workers = n;
    }
    // The registry lives in memory here: nothing to watch.
    cfg.watch = false;
    let files: Vec<_> = files
        .iter()
        .map(|(name, text)| (Path::new("test/hosts").join(name), text.clone()))
        .collect();
    let registry = compile_registry(&files).unwrap();
    Gateway::start(&cfg, registry).await.unwrap()
}

/// A response read off the wire.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    /// Header names lower-cased, values as raw bytes, in wire order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.all(name).into_iter().next()
    }

    pub fn set_cookie_names(&self) -> Vec<String> {
        self.all("set-cookie")
            .iter()
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap()
                    .split('=')
                    .next()
                    .unwrap()
                    .trim()
                    .to_owned()
            })
            .collect()
    }
}

/// Sends raw bytes, reads the whole response (the request should say `Connection: close`).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("response within 20 s")
        .unwrap();
    parse_response(&buf)
        .unwrap_or_else(|| panic!("unparseable response: {:?}", String::from_utf8_lossy(&buf)))
}

/// `GET path` for `host` with extra header lines (each ending in `\r\n`).
pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &str) -> Raw {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
    raw(addr, req.as_bytes()).await
}

/// Reads one response (with a `Content-Length`) off a kept-alive connection, plain or TLS,
/// leaving any bytes after it in `pending`; `None` when the connection closes first (a read
/// error counts as a close: a TLS peer may close without close_notify).
pub async fn read_response<S>(s: &mut S, pending: &mut Vec<u8>) -> Option<Raw>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse_response(&pending[..end + 4]).expect("a response head");
            let len: usize = head.get("content-length").map_or(0, |v| v.parse().unwrap());
            if pending.len() >= end + 4 + len {
                let rest = pending.split_off(end + 4 + len);
                let whole = std::mem::replace(pending, rest);
                return parse_response(&whole);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a response or a close within 10 s")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// A kept-alive `GET path` for `portal.test`.
pub fn get_line(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: portal.test\r\n\r\n")
}

/// The request line and headers of a WebSocket upgrade of `/ws` for `portal.test`.
pub const WEBSOCKET_UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: portal.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// An origin that answers `plain` to a request without `Upgrade`, and `101` to one with it,
/// then echoes what comes through the tunnel.
pub async fn echo_upgrade_origin() -> SocketAddr {
    let (addr, _) = origin(|mut req: Request<Incoming>| async move {
        if req.headers().get("upgrade").is_none() {
            return Response::new(full("plain"));
        }
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        });
        Response::builder()
            .status(101)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(full(Bytes::new()))
            .unwrap()
    })
    .await;
    addr
}

pub fn parse_response(buf: &[u8]) -> Option<Raw> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().as_bytes().to_vec()))
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case(b"chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Raw {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// The admin endpoint's answer to `GET path`.
pub async fn admin(gw: &Gateway, path: &str) -> Raw {
    get(gw.admin_addr.unwrap(), "admin", path, "").await
}

/// The percent-encoded `cookies_preferences` value granting `keys`.
pub fn prefs(keys: &[&str]) -> String {
    let json: Vec<String> = keys.iter().map(|k| format!("\"{k}\":true")).collect();
    let raw = format!("{{{},\"timestamp\":1718000000000}}", json.join(","));
    percent_encoding::utf8_percent_encode(&raw, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// An origin that reports each request's arrival on the returned receiver and answers (with
/// these `Set-Cookie` values and `body`) only once the returned sender is set to true.
pub async fn gated_origin(
    set_cookies: &'static [&'static str],
    body: &'static str,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    tokio::sync::watch::Sender<bool>,
) {
    let (arrived_tx, arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let (addr, _) = origin(move |_req| {
        let arrived_tx = arrived_tx.clone();
        let mut release = release.clone();
        async move {
            let _ = arrived_tx.send(());
            let _ = release.wait_for(|r| *r).await;
            let mut b = Response::builder();
            for c in set_cookies {
                b = b.header("set-cookie", *c);
            }
            b.body(full(body)).unwrap()
        }
    })
    .await;
    (addr, arrived, release_tx)
}

/// A gateway serving a registry directory on disk (`hosts/` in a temporary directory beside its
/// `gateway.toml`), with the watcher on and the poll an hour away: what the reload, filesystem
/// and audit tests drive.
pub struct Disk {
    pub gw: Gateway,
    pub dir: tempfile::TempDir,
}

impl Disk {
    /// Serves `files` (name, text) from `hosts/`.
    pub async fn start(files: &[(&str, String)]) -> Disk {
        Disk::start_with("", "", files).await
    }

    /// [`Disk::start`] with `tables` (whole tables, such as `[audit]`) and `registry` (more keys
    /// of `[registry]`, such as `watch = false`) in `gateway.toml`.
    pub async fn start_with(tables: &str, registry: &str, files: &[(&str, String)]) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!(
                "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{tables}\n\
                 [registry]\ndir = \"hosts\"\npoll_interval = \"1h\"\n{registry}"
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("hosts")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join("hosts").join(name), text).unwrap();
        }
        let (cfg, registry) =
            consent_gateway::config::load(&dir.path().join("gateway.toml")).unwrap();
        let gw = Gateway::start(&cfg, registry).await.unwrap();
        Disk { gw, dir }
    }

    pub fn hosts(&self) -> std::path::PathBuf {
        self.dir.path().join("hosts")
    }

    pub fn http(&self) -> SocketAddr {
        self.gw.http_addr.unwrap()
    }

    /// The status of `GET /` for `host`.
    pub async fn status(&self, host: &str) -> u16 {
        get(self.http(), host, "/", "").await.status
    }

    /// Writes a file the way editors and config tools do: temp file, then rename over.
    pub fn replace(&self, name: &str, text: &str) {
        let tmp = self.hosts().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.hosts().join(name)).unwrap();
    }

    /// Waits (on reload notifications, not a timer) until `done` holds for a reload result.
    pub async fn reloaded(&self, done: impl Fn(&ReloadResult) -> bool) -> ReloadResult {
        let mut rx = self.gw.live.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            {
                let (n, r) = &*rx.borrow_and_update();
                if *n > 0 && done(r) {
                    return r.clone();
                }
            }
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .expect("no matching reload within 10 s")
                .unwrap();
        }
    }

    /// Waits (on reload notifications) until the registry serving has a host named `host`
    /// (`serves` true) or has none (`serves` false).
    pub async fn until_serving(&self, host: &str, serves: bool) {
        let mut rx = self.gw.live.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            rx.borrow_and_update();
            let now = self
                .gw
                .live
                .load()
                .registry
                .lookup(host.as_bytes())
                .is_some();
            if now == serves {
                return;
            }
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .unwrap_or_else(|_| panic!("{host}: served {now} after 10 s, want {serves}"))
                .unwrap();
        }
    }

    pub async fn generation_becomes(&self, g: u64) {
        self.reloaded(|r| matches!(r, ReloadResult::Success(n) if *n >= g))
            .await;
        assert_eq!(self.gw.live.load().generation, g);
    }

    pub async fn fails(&self) -> Vec<consent_gateway::config::ConfigError> {
        match self.reloaded(|r| matches!(r, ReloadResult::Error(_))).await {
            ReloadResult::Error(e) => e,
            _ => unreachable!(),
        }
    }
}

/// The gateway's own binary, as built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_consent-gateway");

/// The real binary on a config in a temporary directory: `gateway.toml` (the listeners on
/// 127.0.0.1:0, https too when `extra` has a `[tls]` table; `[registry] dir = "hosts"`; then
/// `extra`) and `hosts/portal.toml`. It logs JSON on stderr, read line by line as it comes;
/// [`Binary::start`] returns once it logs that it listens. Killed when dropped.
pub struct Binary {
    pub child: tokio::process::Child,
    pid: u32,
    logs: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    /// Lines received and not matched yet (the gateway may log before the listeners are up).
    seen: Vec<serde_json::Value>,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Binary {
    /// Logs at `info`; standard output goes nowhere.
    pub async fn start(host_file: &str, extra: &str) -> Binary {
        Binary::start_with(host_file, extra, "info", std::process::Stdio::null()).await
    }

    /// [`Binary::start`] with `RUST_LOG` = `rust_log` and standard output to `stdout`.
    pub async fn start_with(
        host_file: &str,
        extra: &str,
        rust_log: &str,
        stdout: std::process::Stdio,
    ) -> Binary {
        let https = if extra.contains("[tls]") {
            "https = \"127.0.0.1:0\"\n"
        } else {
            ""
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!(
                "[listen]\nhttp = \"127.0.0.1:0\"\n{https}[admin]\nlisten = \"127.0.0.1:0\"\n\
                 [registry]\ndir = \"hosts\"\n{extra}"
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("hosts")).unwrap();
        std::fs::write(dir.path().join("hosts/portal.toml"), host_file).unwrap();
        let mut child = tokio::process::Command::new(BIN)
            .args(["run", "--log-format", "json", "--config"])
            .arg(dir.path().join("gateway.toml"))
            .env("RUST_LOG", rust_log)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt as _;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("non-JSON log line: {line}"),
                }
            }
        });
        let mut b = Binary {
            child,
            pid,
            logs,
            seen: Vec::new(),
            http: "0.0.0.0:0".parse().unwrap(),
            https: None,
            admin: "0.0.0.0:0".parse().unwrap(),
            dir,
        };
        let ready = b
            .wait_log(|v| v["message"] == "consent-gateway listening")
            .await;
        b.http = ready["http"].as_str().unwrap().parse().unwrap();
        b.https = ready["https"].as_str().and_then(|h| h.parse().ok());
        b.admin = ready["admin"].as_str().unwrap().parse().unwrap();
        b
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The first log line `pred` accepts, among those not matched yet or still to come; panics
    /// after 20 s without one.
    pub async fn wait_log(
        &mut self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        if let Some(at) = self.seen.iter().position(&pred) {
            return self.seen.remove(at);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let v = match tokio::time::timeout_at(deadline, self.logs.recv()).await {
                Ok(Some(v)) => v,
                Ok(None) => panic!(
                    "the gateway closed its log before the expected line; status: {:?}",
                    self.child.wait().await
                ),
                Err(_) => panic!(
                    "expected log line did not come within 20 s; status: {:?}",
                    self.child.try_wait()
                ),
            };
            if pred(&v) {
                return v;
            }
            if v["level"] == "ERROR" {
                eprintln!("gateway logged an error: {v}");
            }
            self.seen.push(v);
        }
    }

    /// Sends signal `sig` (`TERM`, `HUP`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the exit (at most 20 s) and returns its status.
    pub async fn exit_status(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the gateway exits within 20 s")
            .unwrap()
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.exit_status().await
    }
}

/// Log lines written while the guard lives, on this thread (tokio tests run an in-process
/// gateway's workers where their starter logs).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

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
    /// Captures `INFO` and above, as plain text.
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        pin_callsite_interest();
        let logs = Logs::default();
        let w = logs.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(sub))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Makes a thread-local log capture ([`Logs::capture`]) see every line, in a test binary whose
/// other tests run a gateway without one.
///
/// tracing caches each callsite's interest for the whole process, computed when the callsite is
/// first hit; while at most one dispatcher is registered it asks only the hitting thread's
/// default (tracing-core 0.1.36, `Rebuilder::JustOne`). A parallel test's gateway thread, with
/// no subscriber, would then pin a callsite that the capturing test asserts on to "never" (the
/// 499 line of hostile.rs's abandoned-request test went missing now and then). A second
/// dispatcher, registered for the whole process, makes every callsite registration ask all
/// registered dispatchers.
fn pin_callsite_interest() {
    static PIN: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    PIN.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
}

/// Serves `handler` over TLS (certificate chain and key in PEM; ALPN `h2` and `http/1.1`) on
/// `listener` until the returned task is aborted, which closes the listener and every
/// connection it accepted (an origin going down).
pub fn serve_tls<H, F>(
    listener: TcpListener,
    cert_pem: &str,
    key_pem: &str,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<OriginBody>> + Send + 'static,
{
    use rustls::pki_types::pem::PemObject as _;
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            conns.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(tls), svc)
                .await;
            });
        }
    })
}

/// Waits (at most 10 s) until `consent_gateway_connections_open{listener}` of the in-process
/// gateway satisfies `done`: the gateway's own count of the connections it has accepted and not
/// yet seen close (a connection's permit is back before it falls).
pub async fn open_connections(gw: &Gateway, listener: &'static str, done: impl Fn(i64) -> bool) {
    let label = consent_gateway::metrics::ListenerLabel { listener };
    let open = || gw.metrics.connections_open.get_or_create(&label).get();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done(open()) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{listener}: {} connections open after 10 s", open()));
}
