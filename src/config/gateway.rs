//! `gateway.toml`: the [`GatewayConfig`] schema (listeners, limits, TLS, audit, inventory),
//! parsed and validated, and the size and duration syntax its fields share.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::span::*;

// ---------------------------------------------------------------------------------------------
// gateway.toml

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub(super) listen: Spanned<RawListen>,
    pub(super) tls: Option<Spanned<RawTls>>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) registry: Option<RawRegistryDir>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) proxy: RawProxy,
    pub(super) audit: Option<Spanned<RawAudit>>,
    #[serde(default)]
    pub(super) inventory: RawInventory,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) path: Spanned<String>,
    pub(super) max_bytes: Option<Spanned<String>>,
    pub(super) keep: Option<Spanned<i64>>,
    pub(super) queue: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub(super) http: Option<Spanned<String>>,
    pub(super) https: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) certs_dir: Spanned<String>,
    pub(super) default_cert: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistryDir {
    pub(super) dir: Option<Spanned<String>>,
    pub(super) watch: Option<bool>,
    pub(super) poll_interval: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) header_read_timeout: Option<Spanned<String>>,
    pub(super) upstream_connect_timeout: Option<Spanned<String>>,
    pub(super) upstream_response_timeout: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) max_header_bytes: Option<Spanned<i64>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) shutdown_grace: Option<Spanned<String>>,
    pub(super) memory_budget: Option<Spanned<String>>,
    pub(super) max_purge_headers: Option<Spanned<i64>>,
    pub(super) upstream_read_size: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    #[serde(default)]
    pub(super) trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) workers: Option<Spanned<u32>>,
    #[serde(default)]
    pub(super) reuse_port: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInventory {
    pub(super) max_names_per_host: Option<Spanned<i64>>,
    pub(super) knowledge_base: Option<bool>,
}

/// `[inventory]`: the live cookie inventory (`/inventory`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryConfig {
    /// Distinct cookie names remembered per registry file; 0 turns the inventory off.
    pub max_names_per_host: usize,
    /// Suggest categories for unregistered names from the bundled knowledge base.
    pub knowledge_base: bool,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            max_names_per_host: 1000,
            knowledge_base: true,
        }
    }
}

/// The largest `[inventory] max_names_per_host`.
pub const MAX_INVENTORY_NAMES: i64 = 1_000_000;

/// The most proxy worker threads `[proxy] workers` may ask for.
pub const MAX_WORKERS: u32 = 1024;

/// Default of `[limits] max_purge_headers`.
pub const DEFAULT_PURGE_HEADERS: usize = 64;
/// Largest `[limits] max_purge_headers` accepted: a response head stays well under what
/// browsers accept (a deletion header is about 100 bytes).
pub const MAX_PURGE_HEADERS: i64 = 1024;

/// `[limits]`, with production defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Time to open a connection to an upstream.
    pub upstream_connect_timeout: Duration,
    /// Time an upstream has to send its response headers.
    pub upstream_response_timeout: Duration,
    /// Longest quiet spell on a connection or a streaming body.
    pub idle_timeout: Duration,
    /// Largest request head accepted (431 beyond).
    pub max_header_bytes: usize,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Time in-flight requests get to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Bytes the worst case of `max_connections` stalled clients may take ([`Limits::worst_case_memory`]);
    /// `check` warns when it does not fit.
    pub memory_budget: u64,
    /// Most purge deletions added to one response; further refused cookies wait for later
    /// responses.
    pub max_purge_headers: usize,
    /// Largest single read from an upstream connection: each read is handed on as one body
    /// frame, so this trades system calls per response byte for memory per stalled client
    /// ([`memory::h1_stalled`]).
    pub upstream_read_size: usize,
}

/// The memory model behind `[limits] memory_budget`, from the bounds set in `server` and `tls`
/// and the resident sizes measured by `tests/memory.rs` (docs/configuration.md, "Memory per
/// connection").
pub mod memory {
    /// The process itself: runtime, registry, metrics, TLS configuration.
    pub const PROCESS: u64 = 20 << 20;
    /// An HTTP/1 connection reading a request head (hyper's connection state and 8 KiB write
    /// buffer, the task), before its read buffer. Between requests a keep-alive connection
    /// holds none of it (`edge::server::serve_h1`: about 2 KiB measured, and its rustls session
    /// over TLS: about 13 KiB in all).
    pub const H1_BASE: u64 = 16 << 10;
    /// HTTP/2 streams per connection (`server::H2_MAX_STREAMS`).
    pub const H2_STREAMS: u64 = 64;
    /// What an HTTP/2 client may upload ahead on one connection (`server::H2_CONNECTION_WINDOW`).
    pub const H2_RECEIVE_WINDOW: u64 = 1 << 20;

    /// An HTTP/1 connection whose client stopped reading a large response, with reads of
    /// `read` bytes from its upstream: 48 KiB + 3 reads, a bound over what `tests/memory.rs`
    /// measured (200 clients): 47 to 56 KiB with 4 KiB reads, 70 to 74 KiB with 16 KiB, 119 to
    /// 135 KiB with 32 KiB. A stalled response keeps its last read, hyper's read buffer (which
    /// grows to hold a read) and the client side's buffers.
    pub fn h1_stalled(read: usize) -> u64 {
        (48 << 10) + 3 * read as u64
    }

    /// One stalled HTTP/2 stream with its upstream connection: 128 KiB + 3 reads, over what
    /// `tests/memory.rs` measured (64 streams): about 87 KiB with 4 KiB reads, 97 to 103 KiB
    /// with 16 KiB, 141 to 193 KiB with 32 KiB (the 193 KiB on a clean-clone CI run, after a
    /// bound of 104 KiB + 2 reads had held on four others).
    pub fn h2_stream(read: usize) -> u64 {
        (128 << 10) + 3 * read as u64
    }
}

impl Limits {
    /// The most one client connection can hold: an HTTP/1 connection stalled on a response, or
    /// one still sending a request head of `max_header_bytes`; with `h2` (an https listener),
    /// an HTTP/2 connection with every stream stalled.
    pub fn worst_case_per_connection(&self, h2: bool) -> u64 {
        let head = memory::H1_BASE + self.max_header_bytes as u64;
        let h1 = memory::h1_stalled(self.upstream_read_size).max(head);
        if h2 {
            h1.max(
                memory::H2_STREAMS * memory::h2_stream(self.upstream_read_size)
                    + memory::H2_RECEIVE_WINDOW,
            )
        } else {
            h1
        }
    }

    /// The resident memory of `max_connections` worst-case connections, plus the process.
    pub fn worst_case_memory(&self, h2: bool) -> u64 {
        memory::PROCESS + self.max_connections as u64 * self.worst_case_per_connection(h2)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            upstream_connect_timeout: Duration::from_secs(3),
            upstream_response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 65_536,
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(30),
            memory_budget: 256 << 20,
            max_purge_headers: DEFAULT_PURGE_HEADERS,
            upstream_read_size: DEFAULT_UPSTREAM_READ,
        }
    }
}

/// Default of `[limits] upstream_read_size`: as much as nginx reads at once with its default
/// `proxy_buffers` (8 x 4 KiB).
pub const DEFAULT_UPSTREAM_READ: usize = 32 << 10;
/// Smallest and largest `upstream_read_size` accepted.
pub const UPSTREAM_READ_RANGE: std::ops::RangeInclusive<u64> = (4 << 10)..=(64 << 10);

/// Default of `[registry] poll_interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// Smallest `max_header_bytes` accepted (hyper's smallest read buffer).
pub const MIN_HEADER_BYTES: i64 = 8192;
/// Largest `max_header_bytes` accepted.
pub const MAX_HEADER_BYTES: i64 = 1 << 24;

/// `[tls]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub certs_dir: PathBuf,
    pub default_cert: Option<String>,
}

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address): an [`ipnet::IpNet`] that also
/// matches the IPv4-mapped IPv6 form of its IPv4 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR (as in \"10.0.0.0/8\")"))?;
        let Some(prefix) = prefix else {
            return Ok(Cidr(addr.into()));
        };
        prefix
            .trim()
            .parse::<u8>()
            .ok()
            .and_then(|p| ipnet::IpNet::new(addr, p).ok())
            .map(Cidr)
            .ok_or_else(|| {
                let max = if addr.is_ipv4() { 32 } else { 128 };
                format!("{s:?}: prefix length must be 0 to {max}")
            })
    }
}

/// `config/gateway.toml`, compiled.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file it was read from.
    pub file: PathBuf,
    pub listen_http: Option<SocketAddr>,
    pub listen_https: Option<SocketAddr>,
    pub tls: Option<TlsConfig>,
    pub admin: Option<SocketAddr>,
    /// The registry directory (resolved against the file's directory).
    pub registry_dir: PathBuf,
    /// Watch the registry (and certs) directories and reload on change (`[registry] watch`,
    /// default true). When false, only SIGHUP reloads; registries that live in memory (the
    /// demo, tests) are never watched.
    pub watch: bool,
    /// How often the directories are re-read in case a change event was lost.
    pub poll_interval: Duration,
    pub limits: Limits,
    pub trusted_proxies: Vec<Cidr>,
    /// Proxy worker threads (`[proxy] workers`; 0 or absent: one per CPU the process may use).
    pub workers: usize,
    /// `[proxy] reuse_port` (default true): with several workers, one listening socket per worker
    /// (`SO_REUSEPORT`) instead of one shared socket.
    pub reuse_port: bool,
    /// `[audit]`: the audit log, when configured.
    /// `[inventory]`.
    pub inventory: InventoryConfig,
    pub audit: Option<AuditConfig>,
}

/// Where the audit log goes (`[audit] path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditPath {
    /// A file, rotated by size (resolved against the gateway file's directory).
    File(PathBuf),
    /// Standard output, one record a line (`path = "stdout"`), for a log collector.
    Stdout,
}

/// `[audit]`, compiled: the tamper-evident audit log (see [`crate::audit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub path: AuditPath,
    /// Rotate before a record would take the file past this size.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` ... `audit.jsonl.<keep>`).
    pub keep: u32,
    /// Records the queue between the request path and the writer holds; more are lost (counted
    /// and recorded), never waited for.
    pub queue: usize,
}

/// Default of `[audit] max_bytes`: 100 MiB.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 100 << 20;
/// Smallest `[audit] max_bytes` accepted.
pub const MIN_AUDIT_MAX_BYTES: u64 = 1 << 10;
/// Default of `[audit] keep`.
pub const DEFAULT_AUDIT_KEEP: u32 = 10;
/// Largest `[audit] keep` accepted.
pub const MAX_AUDIT_KEEP: i64 = 1000;
/// Default of `[audit] queue`.
pub const DEFAULT_AUDIT_QUEUE: usize = 8192;
/// Largest `[audit] queue` accepted.
pub const MAX_AUDIT_QUEUE: i64 = 1 << 20;

/// Parses a size such as `100MiB`, `512KiB`, `1GiB` or `65536` (bytes). `K`, `M`, `G` are
/// binary units too, as in nginx.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size {s:?}: expected a whole number of bytes, optionally followed by KiB, MiB or GiB, as in \"100MiB\""
        )
    };
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let shift = match t[digits..].trim_start() {
        "" | "B" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "m" | "MiB" => 20,
        "G" | "g" | "GiB" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// Parses a duration such as `10s`, `500ms`, `1m30s`, `1h 30m` or `1.5s` (humantime's syntax:
/// numbers each followed by a unit, `ms`, `s`, `m`, `h`, `d`, ... and their long names).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}): expected numbers each followed by a unit (ms, s, m, h, d), as in \"10s\" or \"1m30s\"")
    })
}

/// Reads and validates the gateway file.
pub fn load_gateway(path: &Path) -> Result<GatewayConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![file_error(path, format!("cannot read file: {e}"))]))?;
    parse_gateway(path, &text)
}

/// Validates the gateway file's text (`path` names it in errors and anchors relative paths).
pub fn parse_gateway(path: &Path, text: &str) -> Result<GatewayConfig, ConfigErrors> {
    let src = Source { path, text };
    let raw: RawGateway =
        toml::from_str(text).map_err(|e| ConfigErrors(vec![src.toml_error(&e)]))?;
    let base = base_dir(path);
    let mut errors = Vec::new();

    let addr = |field: &str, v: &Spanned<String>, errors: &mut Vec<ConfigError>| {
        v.get_ref()
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| {
                errors.push(src.error(
                    v.span(),
                    format!(
                        "{field}: {:?} is not an address and port, as in \"0.0.0.0:8080\"",
                        v.get_ref()
                    ),
                ));
            })
            .ok()
    };
    let listen = raw.listen.get_ref();
    let listen_http = listen
        .http
        .as_ref()
        .and_then(|v| addr("listen.http", v, &mut errors));
    let listen_https = listen
        .https
        .as_ref()
        .and_then(|v| addr("listen.https", v, &mut errors));
    if listen.http.is_none() && listen.https.is_none() {
        errors.push(src.error(raw.listen.span(), "listen: set http, https or both"));
    }
    if listen.https.is_some() && raw.tls.is_none() {
        errors.push(src.error(
            raw.listen.span(),
            "listen.https: needs a [tls] table with certs_dir",
        ));
    }
    let admin = raw
        .admin
        .as_ref()
        .and_then(|a| addr("admin.listen", &a.listen, &mut errors));
    let tls = raw.tls.as_ref().map(|t| {
        let t = t.get_ref();
        TlsConfig {
            certs_dir: resolve(&base, t.certs_dir.get_ref()),
            default_cert: t.default_cert.as_ref().map(|d| d.get_ref().clone()),
        }
    });
    let registry_dir = resolve(
        &base,
        raw.registry
            .as_ref()
            .and_then(|r| r.dir.as_ref())
            .map_or("hosts", |d| d.get_ref().as_str()),
    );
    let mut poll_interval = DEFAULT_POLL_INTERVAL;
    if let Some(v) = raw.registry.as_ref().and_then(|r| r.poll_interval.as_ref()) {
        match parse_duration(v.get_ref()) {
            Ok(d) if d >= Duration::from_secs(1) => poll_interval = d,
            Ok(_) => {
                errors.push(src.error(v.span(), "registry.poll_interval: must be at least 1s"))
            }
            Err(e) => errors.push(src.error(v.span(), format!("registry.poll_interval: {e}"))),
        }
    }

    let mut limits = Limits::default();
    let l = &raw.limits;
    let durations: [(&str, &Option<Spanned<String>>, &mut Duration); 5] = [
        (
            "limits.header_read_timeout",
            &l.header_read_timeout,
            &mut limits.header_read_timeout,
        ),
        (
            "limits.upstream_connect_timeout",
            &l.upstream_connect_timeout,
            &mut limits.upstream_connect_timeout,
        ),
        (
            "limits.upstream_response_timeout",
            &l.upstream_response_timeout,
            &mut limits.upstream_response_timeout,
        ),
        (
            "limits.idle_timeout",
            &l.idle_timeout,
            &mut limits.idle_timeout,
        ),
        (
            "limits.shutdown_grace",
            &l.shutdown_grace,
            &mut limits.shutdown_grace,
        ),
    ];
    for (field, value, slot) in durations {
        let Some(v) = value else { continue };
        match parse_duration(v.get_ref()) {
            Ok(d) if d.is_zero() && field != "limits.shutdown_grace" => {
                errors.push(src.error(v.span(), format!("{field}: must be more than zero")));
            }
            Ok(d) => *slot = d,
            Err(e) => errors.push(src.error(v.span(), format!("{field}: {e}"))),
        }
    }
    if let Some(v) = &l.max_header_bytes {
        match usize::try_from(*v.get_ref()) {
            Ok(n) if (MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(v.get_ref()) => {
                limits.max_header_bytes = n
            }
            _ => errors.push(src.error(
                v.span(),
                format!(
                    "limits.max_header_bytes: must be {MIN_HEADER_BYTES} to {MAX_HEADER_BYTES}"
                ),
            )),
        }
    }
    if let Some(v) = &l.memory_budget {
        match parse_size(v.get_ref()) {
            Ok(n) if n >= 16 << 20 => limits.memory_budget = n,
            Ok(_) => errors.push(src.error(v.span(), "limits.memory_budget: at least 16MiB")),
            Err(e) => errors.push(src.error(v.span(), format!("limits.memory_budget: {e}"))),
        }
    }
    if let Some(v) = &l.upstream_read_size {
        match parse_size(v.get_ref()) {
            Ok(n) if UPSTREAM_READ_RANGE.contains(&n) => limits.upstream_read_size = n as usize,
            Ok(_) => {
                errors.push(src.error(v.span(), "limits.upstream_read_size: must be 4KiB to 64KiB"))
            }
            Err(e) => errors.push(src.error(v.span(), format!("limits.upstream_read_size: {e}"))),
        }
    }
    if let Some(v) = &l.max_connections {
        match usize::try_from(*v.get_ref()) {
            Ok(n) if n > 0 => limits.max_connections = n,
            _ => errors.push(src.error(v.span(), "limits.max_connections: must be at least 1")),
        }
    }
    if let Some(v) = &l.max_purge_headers {
        match usize::try_from(*v.get_ref()) {
            Ok(n) if (1..=MAX_PURGE_HEADERS).contains(v.get_ref()) => limits.max_purge_headers = n,
            _ => errors.push(src.error(
                v.span(),
                format!(
                    "limits.max_purge_headers: must be 1 to {MAX_PURGE_HEADERS} (purge = false turns purging off)"
                ),
            )),
        }
    }
    // The connection idle timer also runs while a request waits for its upstream; a shorter
    // idle_timeout would cut those waits before upstream_response_timeout could answer 504.
    if limits.idle_timeout < limits.upstream_response_timeout {
        let span = l
            .idle_timeout
            .as_ref()
            .or(l.upstream_response_timeout.as_ref())
            .map_or(0..0, Spanned::span);
        errors.push(src.error(
            span,
            format!(
                "limits.idle_timeout ({:?}) must be at least limits.upstream_response_timeout ({:?})",
                limits.idle_timeout, limits.upstream_response_timeout
            ),
        ));
    }
    let mut trusted_proxies = Vec::new();
    for (i, v) in raw.proxy.trusted_proxies.iter().enumerate() {
        match v.get_ref().parse::<Cidr>() {
            Ok(c) => trusted_proxies.push(c),
            Err(e) => errors.push(src.error(v.span(), format!("proxy.trusted_proxies[{i}]: {e}"))),
        }
    }
    let workers = match &raw.proxy.workers {
        Some(w) if *w.get_ref() > MAX_WORKERS => {
            errors.push(src.error(
                w.span(),
                format!("proxy.workers: at most {MAX_WORKERS} (0 means one per CPU)"),
            ));
            0
        }
        Some(w) if *w.get_ref() > 0 => *w.get_ref() as usize,
        _ => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
    };
    let audit = raw
        .audit
        .as_ref()
        .and_then(|a| parse_audit(&src, &base, a.get_ref(), &mut errors));
    let mut inventory = InventoryConfig::default();
    if let Some(v) = &raw.inventory.max_names_per_host {
        match usize::try_from(*v.get_ref()) {
            Ok(n) if *v.get_ref() <= MAX_INVENTORY_NAMES => inventory.max_names_per_host = n,
            _ => errors.push(src.error(
                v.span(),
                format!("inventory.max_names_per_host: must be 0 (off) to {MAX_INVENTORY_NAMES}"),
            )),
        }
    }
    if let Some(kb) = raw.inventory.knowledge_base {
        inventory.knowledge_base = kb;
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(GatewayConfig {
        file: path.to_owned(),
        listen_http,
        listen_https,
        tls,
        admin,
        registry_dir,
        watch: raw.registry.as_ref().and_then(|r| r.watch).unwrap_or(true),
        poll_interval,
        limits,
        trusted_proxies,
        workers,
        reuse_port: raw.proxy.reuse_port.unwrap_or(true),
        audit,
        inventory,
    })
}

/// `[audit]`: every field checked, errors pushed with their place.
pub(super) fn parse_audit(
    src: &Source<'_>,
    base: &Path,
    raw: &RawAudit,
    errors: &mut Vec<ConfigError>,
) -> Option<AuditConfig> {
    let before = errors.len();
    let p = raw.path.get_ref().trim();
    let path = if p.is_empty() {
        errors.push(src.error(raw.path.span(), "audit.path: set a file path or \"stdout\""));
        AuditPath::Stdout
    } else if p == "stdout" {
        AuditPath::Stdout
    } else if p.ends_with('/') {
        errors.push(src.error(
            raw.path.span(),
            format!("audit.path: {p:?} names a directory; name the log file in it"),
        ));
        AuditPath::Stdout
    } else {
        AuditPath::File(resolve(base, p))
    };
    let mut max_bytes = DEFAULT_AUDIT_MAX_BYTES;
    if let Some(v) = &raw.max_bytes {
        match parse_size(v.get_ref()) {
            Ok(n) if n >= MIN_AUDIT_MAX_BYTES => max_bytes = n,
            Ok(_) => errors.push(src.error(v.span(), "audit.max_bytes: must be at least 1KiB")),
            Err(e) => errors.push(src.error(v.span(), format!("audit.max_bytes: {e}"))),
        }
    }
    let mut keep = DEFAULT_AUDIT_KEEP;
    if let Some(v) = &raw.keep {
        match u32::try_from(*v.get_ref()) {
            Ok(n) if i64::from(n) <= MAX_AUDIT_KEEP => keep = n,
            _ => errors.push(src.error(
                v.span(),
                format!("audit.keep: must be 0 to {MAX_AUDIT_KEEP}"),
            )),
        }
    }
    let mut queue = DEFAULT_AUDIT_QUEUE;
    if let Some(v) = &raw.queue {
        match usize::try_from(*v.get_ref()) {
            Ok(n) if n >= 1 && *v.get_ref() <= MAX_AUDIT_QUEUE => queue = n,
            _ => errors.push(src.error(
                v.span(),
                format!("audit.queue: must be 1 to {MAX_AUDIT_QUEUE}"),
            )),
        }
    }
    (errors.len() == before).then_some(AuditConfig {
        path,
        max_bytes,
        keep,
        queue,
    })
}
