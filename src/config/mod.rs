//! Config files: serde types shaped like the files, compiled into validated types.
//!
//! `config/gateway.toml` becomes a [`GatewayConfig`]; every `*.toml` in the registry dir becomes a
//! [`HostPolicy`], and all of them together a [`Registry`]. Every error names the file, line,
//! column and field (`config/hosts/paris.toml:14:3: cookie[2]: set either name or prefix, not
//! both`). Unknown fields are errors, so a typo never silently weakens the policy. Relative paths
//! are resolved against the directory of the file that names them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::policy::consent::{ConsentSpec, Format};
use crate::policy::host::{HostPattern, HostTable};
use crate::policy::registry::{
    CookieEntry, CookieMatcher, HostPolicy, HostSpec, Mode, Registry, UnknownCookies, Upstream,
    NECESSARY,
};
use crate::policy::request_cookies::is_cookie_name;

#[cfg(test)]
pub(crate) mod fixture;

/// One configuration error, with its place. `line` and `column` are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Several errors, printed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A file's text, to turn byte spans into line and column.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, column)
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError {
            file: self.path.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        // toml's messages may span lines ("invalid array\nexpected `]`"): one line per error.
        let msg: Vec<&str> = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        self.error(
            e.span().unwrap_or(0..0),
            msg.join(": ").trim_end_matches('.').to_owned(),
        )
    }
}

/// An error with no better place than the start of a file (it cannot be read at all).
fn file_error(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: path.to_owned(),
        line: 1,
        column: 1,
        message: message.into(),
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn base_dir(file: &Path) -> PathBuf {
    file.parent().map(Path::to_owned).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// gateway.toml

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    listen: Spanned<RawListen>,
    tls: Option<Spanned<RawTls>>,
    admin: Option<RawAdmin>,
    registry: Option<RawRegistryDir>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    proxy: RawProxy,
    audit: Option<Spanned<RawAudit>>,
    #[serde(default)]
    inventory: RawInventory,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Spanned<String>,
    max_bytes: Option<Spanned<String>>,
    keep: Option<Spanned<i64>>,
    queue: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    http: Option<Spanned<String>>,
    https: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certs_dir: Spanned<String>,
    default_cert: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistryDir {
    dir: Option<Spanned<String>>,
    watch: Option<bool>,
    poll_interval: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    header_read_timeout: Option<Spanned<String>>,
    upstream_connect_timeout: Option<Spanned<String>>,
    upstream_response_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_header_bytes: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    shutdown_grace: Option<Spanned<String>>,
    memory_budget: Option<Spanned<String>>,
    max_purge_headers: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    workers: Option<Spanned<u32>>,
    #[serde(default)]
    reuse_port: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    max_names_per_host: Option<Spanned<i64>>,
    knowledge_base: Option<bool>,
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
}

/// The memory model behind `[limits] memory_budget`, from the bounds set in `server` and `tls`
/// and the resident sizes measured by `tests/memory.rs` (docs/configuration.md, "Memory per
/// connection").
pub mod memory {
    /// The process itself: runtime, registry, metrics, TLS configuration.
    pub const PROCESS: u64 = 20 << 20;
    /// An HTTP/1 connection whose client stopped reading a large response (measured: 47 to 56 KiB).
    pub const H1_STALLED: u64 = 56 << 10;
    /// An HTTP/1 connection itself (measured idle: 14 KiB), before its request head buffer.
    pub const H1_BASE: u64 = 16 << 10;
    /// HTTP/2 streams per connection (`server::H2_MAX_STREAMS`).
    pub const H2_STREAMS: u64 = 64;
    /// One stalled HTTP/2 stream with its upstream connection (measured: about 87 KiB).
    pub const H2_STREAM: u64 = 88 << 10;
    /// What an HTTP/2 client may upload ahead on one connection (`server::H2_CONNECTION_WINDOW`).
    pub const H2_RECEIVE_WINDOW: u64 = 1 << 20;
}

impl Limits {
    /// The most one client connection can hold: an HTTP/1 connection stalled on a response, or
    /// one still sending a request head of `max_header_bytes`; with `h2` (an https listener),
    /// an HTTP/2 connection with every stream stalled.
    pub fn worst_case_per_connection(&self, h2: bool) -> u64 {
        let head = memory::H1_BASE + self.max_header_bytes as u64;
        let h1 = memory::H1_STALLED.max(head);
        if h2 {
            h1.max(memory::H2_STREAMS * memory::H2_STREAM + memory::H2_RECEIVE_WINDOW)
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
        }
    }
}

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

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
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
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
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

/// Parses a duration such as `10s`, `500ms`, `1m30s` or `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {s:?}: expected a whole number followed by ms, s, m or h, as in \"10s\"")
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = total.saturating_add(part);
    }
    Ok(total)
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
fn parse_audit(
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

// ---------------------------------------------------------------------------------------------
// hosts/*.toml

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostFile {
    hosts: Spanned<Vec<Spanned<String>>>,
    upstream: Spanned<String>,
    upstream_host: Option<Spanned<String>>,
    upstream_ca: Option<Spanned<String>>,
    mode: Option<Mode>,
    unknown_cookies: Option<UnknownCookies>,
    #[serde(default)]
    gpc: Vec<Spanned<String>>,
    strip_request_cookies: Option<bool>,
    purge: Option<bool>,
    purge_unknown: Option<Spanned<bool>>,
    consent: Option<RawConsent>,
    #[serde(default, rename = "cookie")]
    cookies: Vec<Spanned<RawCookie>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsent {
    cookie: Option<Spanned<String>>,
    format: Option<Format>,
    cookiebot_outside_region: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCookie {
    name: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    category: Spanned<String>,
    consent: Option<Spanned<Keys>>,
    provider: Option<String>,
    function: Option<String>,
    purpose: Option<String>,
    #[serde(default)]
    domains: Vec<Spanned<String>>,
    path: Option<Spanned<String>>,
}

/// `consent = "ga"` or `consent = ["ga", "C0002"]`.
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a consent key or a list of consent keys")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Keys, E> {
                Ok(Keys(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = seq.next_element::<String>()? {
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_any(V)
    }
}

fn is_category_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let bad = |why: &str| format!("{s:?} is not an absolute http:// or https:// URL: {why}");
    let uri: http::Uri = s.trim().parse().map_err(|_| bad("it does not parse"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => http::uri::Scheme::HTTP,
        Some("https") => http::uri::Scheme::HTTPS,
        Some(_) => return Err(bad("the scheme must be http or https")),
        None => return Err(bad("it has no scheme")),
    };
    let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user information is not allowed"));
    }
    if authority.host().is_empty() {
        return Err(bad("it has no host"));
    }
    if uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str() != "/" && !pq.as_str().is_empty())
    {
        return Err(bad(
            "a path or query is not supported; requests keep their own path",
        ));
    }
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        });
    let authority = format!("{}:{port}", authority.host())
        .parse()
        .map_err(|_| bad("the host does not parse"))?;
    Ok(Upstream { scheme, authority })
}

/// Reads a CA bundle and parses it into the trust store of the host's upstream client: it must
/// hold at least one certificate, and each must parse as X.509.
fn load_ca_bundle(path: &Path) -> Result<crate::policy::registry::UpstreamTrust, String> {
    use rustls_pki_types::pem::PemObject;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    for c in &certs {
        webpki::anchor_from_trusted_cert(c)
            .map_err(|e| format!("a certificate does not parse: {e}"))?;
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err("no usable CA certificate".into());
    }
    Ok(crate::policy::registry::UpstreamTrust {
        path: path.to_owned(),
        digest: Sha256::digest(&bytes).into(),
        roots: std::sync::Arc::new(roots),
    })
}

/// Whether the `upstream_ca` bundle a compiled file was built with still has the same bytes
/// (read again at each reload: a bundle replaced under an unchanged host file is a change).
fn ca_unchanged(policy: &HostPolicy) -> bool {
    match &policy.upstream_ca {
        None => true,
        Some(t) => {
            std::fs::read(&t.path).is_ok_and(|b| <[u8; 32]>::from(Sha256::digest(&b)) == t.digest)
        }
    }
}

/// A compiled file's digest: its text's, and its `upstream_ca` bundle's if it names one.
fn entry_digest(text: &str, policy: &HostPolicy) -> [u8; 32] {
    let d = file_digest(text);
    match &policy.upstream_ca {
        None => d,
        Some(t) => {
            let mut h = Sha256::new();
            h.update(d);
            h.update(t.digest);
            h.finalize().into()
        }
    }
}

/// A compiled host file and where each of its host patterns was written (for duplicate errors
/// across files).
#[derive(Clone)]
struct CompiledFile {
    policy: std::sync::Arc<HostPolicy>,
    host_spans: Vec<Range<usize>>,
}

/// Compiles one registry file's text.
pub fn parse_host_file(path: &Path, text: &str) -> Result<HostPolicy, ConfigErrors> {
    compile_host_file(path, text).map(|c| std::sync::Arc::unwrap_or_clone(c.policy))
}

fn compile_host_file(path: &Path, text: &str) -> Result<CompiledFile, ConfigErrors> {
    let src = Source { path, text };
    let raw: RawHostFile =
        toml::from_str(text).map_err(|e| ConfigErrors(vec![src.toml_error(&e)]))?;
    let base = base_dir(path);
    let mut errors = Vec::new();

    // hosts
    let mut hosts = Vec::new();
    let mut host_spans = Vec::new();
    let mut seen = HostTable::default();
    if raw.hosts.get_ref().is_empty() {
        errors.push(src.error(raw.hosts.span(), "hosts: list at least one host name"));
    }
    for (i, h) in raw.hosts.get_ref().iter().enumerate() {
        match h.get_ref().parse::<HostPattern>() {
            Ok(p) => {
                if seen.insert(p.clone(), i).is_some() {
                    errors.push(src.error(h.span(), format!("hosts[{i}]: {p} is listed twice")));
                } else {
                    hosts.push(p);
                    host_spans.push(h.span());
                }
            }
            Err(e) => errors.push(src.error(h.span(), format!("hosts[{i}]: {e}"))),
        }
    }

    // upstream
    let upstream = parse_upstream(raw.upstream.get_ref())
        .map_err(|e| errors.push(src.error(raw.upstream.span(), format!("upstream: {e}"))))
        .ok();
    let upstream_host = raw.upstream_host.as_ref().and_then(|v| {
        let ok = v
            .get_ref()
            .parse::<http::uri::Authority>()
            .ok()
            .filter(|a| !a.as_str().contains('@'));
        match ok.and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()) {
            Some(hv) => Some(hv),
            None => {
                errors.push(src.error(
                    v.span(),
                    format!(
                        "upstream_host: {:?} is not a host name (with an optional port)",
                        v.get_ref()
                    ),
                ));
                None
            }
        }
    });
    let upstream_ca = raw.upstream_ca.as_ref().and_then(|v| {
        let p = resolve(&base, v.get_ref());
        if upstream.as_ref().is_some_and(|u| !u.is_tls()) {
            errors.push(src.error(v.span(), "upstream_ca: only used with an https:// upstream"));
            return None;
        }
        match load_ca_bundle(&p) {
            Ok(trust) => Some(std::sync::Arc::new(trust)),
            Err(why) => {
                errors.push(src.error(v.span(), format!("upstream_ca: {}: {why}", p.display())));
                None
            }
        }
    });

    // consent
    let format = raw
        .consent
        .as_ref()
        .and_then(|c| c.format)
        .unwrap_or(Format::Json);
    let consent_cookie = match raw.consent.as_ref().and_then(|c| c.cookie.as_ref()) {
        Some(c) if !is_cookie_name(c.get_ref()) => {
            errors.push(src.error(
                c.span(),
                format!(
                    "consent.cookie: {:?} is not a valid cookie name",
                    c.get_ref()
                ),
            ));
            c.get_ref().clone()
        }
        Some(c) => c.get_ref().clone(),
        None => format.default_cookie().to_owned(),
    };
    let mut consent = ConsentSpec::new(consent_cookie, format);
    if let Some(v) = raw
        .consent
        .as_ref()
        .and_then(|c| c.cookiebot_outside_region.as_ref())
    {
        if format.has_outside_region() {
            consent.outside_region = v.get_ref().clone();
        } else {
            errors.push(src.error(
                v.span(),
                format!("consent.cookiebot_outside_region: only used with format = \"cookiebot\", not {:?}", format.as_str()),
            ));
        }
    }

    let mode = raw.mode.unwrap_or(Mode::Enforce);
    let unknown_cookies = raw.unknown_cookies.unwrap_or(UnknownCookies::Drop);
    let purge_unknown = raw.purge_unknown.as_ref().is_some_and(|v| *v.get_ref());
    if let Some(v) = &raw.purge_unknown {
        if *v.get_ref() && unknown_cookies == UnknownCookies::Keep {
            errors.push(src.error(v.span(), "purge_unknown: needs unknown_cookies = \"drop\""));
        }
    }

    // cookies
    let mut cookies: Vec<CookieEntry> = Vec::new();
    let mut names: std::collections::HashMap<(bool, String), usize> =
        std::collections::HashMap::new();
    for (i, c) in raw.cookies.iter().enumerate() {
        let span = c.span();
        let c = c.get_ref();
        let at = format!("cookie[{i}]");
        let matcher = match (&c.name, &c.prefix) {
            (Some(_), Some(p)) => {
                errors.push(src.error(
                    p.span(),
                    format!("{at}: set either name or prefix, not both"),
                ));
                continue;
            }
            (None, None) => {
                errors.push(src.error(span.clone(), format!("{at}: set either name or prefix")));
                continue;
            }
            (Some(n), None) => (n, false),
            (None, Some(p)) => (p, true),
        };
        let (value, is_prefix) = matcher;
        let what = if is_prefix { "prefix" } else { "name" };
        if !is_cookie_name(value.get_ref()) {
            errors.push(src.error(
                value.span(),
                format!("{at}: {what} {:?} is not a valid cookie name (no spaces, quotes or separators)", value.get_ref()),
            ));
            continue;
        }
        if let Some(first) = names.insert((is_prefix, value.get_ref().clone()), i) {
            errors.push(src.error(
                value.span(),
                format!(
                    "{at}: {what} {:?} is already listed by cookie[{first}]",
                    value.get_ref()
                ),
            ));
            continue;
        }
        let category = c.category.get_ref().trim().to_owned();
        if !is_category_name(&category) {
            errors.push(src.error(
                c.category.span(),
                format!("{at}: category {category:?} must be letters, digits, '_', '-' or '.'"),
            ));
            continue;
        }
        if !is_prefix
            && consent.is_consent_cookie(value.get_ref().as_bytes())
            && category != NECESSARY
        {
            errors.push(src.error(
                c.category.span(),
                format!(
                    "{at}: {:?} is the consent cookie, which is always necessary",
                    value.get_ref()
                ),
            ));
            continue;
        }
        let keys = match &c.consent {
            None => vec![category.clone()],
            Some(k)
                if k.get_ref().0.is_empty()
                    || k.get_ref().0.iter().any(|s| s.trim().is_empty()) =>
            {
                errors.push(src.error(
                    k.span(),
                    format!("{at}: consent keys must be non-empty strings"),
                ));
                continue;
            }
            Some(k) => k.get_ref().0.clone(),
        };
        let mut domains = Vec::new();
        for (j, d) in c.domains.iter().enumerate() {
            let bare = d.get_ref().trim().trim_start_matches('.');
            match bare.parse::<HostPattern>() {
                Ok(HostPattern::Exact(_)) => domains.push(d.get_ref().trim().to_ascii_lowercase()),
                _ => errors.push(src.error(
                    d.span(),
                    format!("{at}: domains[{j}]: {:?} is not a domain name", d.get_ref()),
                )),
            }
        }
        let path = match &c.path {
            None => "/".to_owned(),
            Some(p)
                if p.get_ref().starts_with('/')
                    && p.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b';') =>
            {
                p.get_ref().clone()
            }
            Some(p) => {
                errors.push(src.error(
                    p.span(),
                    format!(
                        "{at}: path {:?} must start with '/' and hold no ';' or spaces",
                        p.get_ref()
                    ),
                ));
                continue;
            }
        };
        cookies.push(CookieEntry {
            matcher: if is_prefix {
                CookieMatcher::Prefix(value.get_ref().clone())
            } else {
                CookieMatcher::Name(value.get_ref().clone())
            },
            necessary: category == NECESSARY,
            refused_by_gpc: false,
            category,
            consent: keys,
            provider: c.provider.clone(),
            function: c.function.clone(),
            purpose: c.purpose.clone(),
            domains,
            path,
        });
    }

    // gpc: every category must be one the file uses, and never necessary.
    let mut gpc = Vec::new();
    for (i, g) in raw.gpc.iter().enumerate() {
        let name = g.get_ref().trim();
        if name == NECESSARY {
            errors.push(src.error(
                g.span(),
                format!("gpc[{i}]: \"necessary\" needs no consent and cannot be refused"),
            ));
        } else if !cookies.iter().any(|c| c.category == name) {
            errors.push(src.error(
                g.span(),
                format!("gpc[{i}]: no cookie entry has category {name:?}"),
            ));
        } else {
            gpc.push(name.to_owned());
        }
    }
    for c in &mut cookies {
        c.refused_by_gpc = gpc.contains(&c.category);
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let Some(upstream) = upstream else {
        // Unreachable: a failed upstream pushed an error above.
        return Err(ConfigErrors(vec![
            src.error(raw.upstream.span(), "upstream: invalid")
        ]));
    };
    let policy = HostPolicy::new(HostSpec {
        file: path.to_owned(),
        hosts,
        upstream,
        upstream_host,
        upstream_ca,
        mode,
        unknown_cookies,
        strip_request_cookies: raw.strip_request_cookies.unwrap_or(true),
        purge: raw.purge.unwrap_or(true),
        purge_unknown,
        consent,
        gpc,
        cookies,
    });
    Ok(CompiledFile {
        policy: std::sync::Arc::new(policy),
        host_spans,
    })
}

/// Largest registry file read: a bigger one is refused (it is no registry a person wrote, and
/// reading it whole on every reload would cost that much memory).
pub const MAX_REGISTRY_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The `*.toml` entries of a registry directory, sorted by name. Hidden entries (Kubernetes'
/// `..data` and `..2026_…` directories among them) are skipped; symlinks are followed by
/// [`read_registry`], which refuses an entry that is not a readable regular file.
pub fn registry_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        files.push(entry.path());
    }
    files.sort();
    Ok(files)
}

/// Reads one registry entry, refusing what is not a regular file of at most
/// [`MAX_REGISTRY_FILE_BYTES`]: a dangling or looping symlink, a directory, a FIFO (reading
/// it would block the reload), a socket or a device. Such an entry is an error like a parse
/// error, never a silently missing host.
fn read_registry_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            return Err(match (link, e.kind()) {
                (true, std::io::ErrorKind::NotFound) => {
                    "cannot be read: a dangling symlink (its target does not exist)".to_owned()
                }
                (true, _) if e.raw_os_error() == Some(40) => {
                    "cannot be read: a symlink loop".to_owned()
                }
                (true, _) => format!("cannot be read: cannot follow the symlink: {e}"),
                _ => format!("cannot be read: {e}"),
            });
        }
    };
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else {
            special_file_kind(&ft)
        };
        return Err(format!("cannot be read as a file: it is {what}"));
    }
    if meta.len() > MAX_REGISTRY_FILE_BYTES {
        return Err(format!(
            "file too large: {} bytes, at most {} (16 MiB)",
            meta.len(),
            MAX_REGISTRY_FILE_BYTES
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read file: {e}"))?;
    let mut text = String::new();
    // Bounded even if the file grows between the size check and the read.
    file.take(MAX_REGISTRY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if text.len() as u64 > MAX_REGISTRY_FILE_BYTES {
        return Err(format!(
            "file too large: more than {MAX_REGISTRY_FILE_BYTES} bytes (16 MiB)"
        ));
    }
    Ok(text)
}

#[cfg(unix)]
fn special_file_kind(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

#[cfg(not(unix))]
fn special_file_kind(_: &std::fs::FileType) -> &'static str {
    "not a regular file"
}

/// Reads every file of a registry directory, sorted by name.
pub fn read_registry(dir: &Path) -> Result<Vec<(PathBuf, String)>, ConfigErrors> {
    let files = registry_files(dir).map_err(|e| {
        ConfigErrors(vec![file_error(
            dir,
            format!("cannot read registry directory: {e}"),
        )])
    })?;
    if files.is_empty() {
        return Err(ConfigErrors(vec![file_error(
            dir,
            "registry directory holds no *.toml file: every request would be refused",
        )]));
    }
    let mut texts = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match read_registry_file(&f) {
            Ok(t) => texts.push((f, t)),
            Err(message) => errors.push(file_error(&f, message)),
        }
    }
    if errors.is_empty() {
        Ok(texts)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// SHA-256 of one file's content.
fn file_digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// SHA-256 (hex) over every file's name and content digest: equal digests, equal registries.
fn combine_digests<'a>(files: impl Iterator<Item = (&'a Path, [u8; 32])>) -> String {
    let mut hasher = Sha256::new();
    for (path, digest) in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(digest);
    }
    format!("{:x}", hasher.finalize())
}

/// What earlier compiles produced, by file: a reload recompiles only the files whose text
/// changed (a 1,000-host registry where one file changed reloads in a fraction of a full
/// compile). Holds each file's text, its digest and its compiled policy.
#[derive(Default)]
pub struct CompileCache {
    files: std::collections::HashMap<PathBuf, (String, [u8; 32], CompiledFile)>,
}

impl CompileCache {
    /// The registry digest of `files`, reusing the digests of unchanged files.
    pub fn digest(&self, files: &[(PathBuf, String)]) -> String {
        combine_digests(files.iter().map(|(p, t)| {
            let d = match self.files.get(p) {
                Some((text, d, c)) if text == t && ca_unchanged(&c.policy) => *d,
                _ => file_digest(t),
            };
            (p.as_path(), d)
        }))
    }
}

/// Loads and compiles every file of a registry directory. All errors of all files are returned.
pub fn load_registry(dir: &Path) -> Result<Registry, ConfigErrors> {
    compile_registry(&read_registry(dir)?)
}

/// Compiles a registry from `(path, text)` pairs (sorted by path by the caller): every file, the
/// cross-file checks, and the digest.
pub fn compile_registry(files: &[(PathBuf, String)]) -> Result<Registry, ConfigErrors> {
    compile_registry_cached(files, &mut CompileCache::default())
}

/// [`compile_registry`], reusing from `cache` every file whose text is unchanged and keeping in it
/// what this compile produced (only when the whole registry is valid).
pub fn compile_registry_cached(
    files: &[(PathBuf, String)],
    cache: &mut CompileCache,
) -> Result<Registry, ConfigErrors> {
    let todo: Vec<usize> = (0..files.len())
        .filter(|&i| {
            !matches!(cache.files.get(&files[i].0),
                    Some((text, _, c)) if *text == files[i].1 && ca_unchanged(&c.policy))
        })
        .collect();
    let fresh: Vec<(PathBuf, String)> = todo.iter().map(|&i| files[i].clone()).collect();
    let mut fresh = compile_files(&fresh).into_iter();
    let mut compiled: Vec<Result<CompiledFile, ConfigErrors>> = Vec::with_capacity(files.len());
    let mut next_todo = todo.iter().peekable();
    for (i, (path, _)) in files.iter().enumerate() {
        if next_todo.peek() == Some(&&i) {
            next_todo.next();
            compiled.push(fresh.next().unwrap_or_else(|| {
                Err(ConfigErrors(vec![file_error(
                    path,
                    "internal error: file not compiled",
                )]))
            }));
        } else if let Some((_, _, c)) = cache.files.get(path) {
            compiled.push(Ok(c.clone()));
        }
    }
    let mut errors = Vec::new();
    let mut policies = Vec::new();
    let mut owners: HostTable<PathBuf> = HostTable::default();
    for ((path, text), compiled) in files.iter().zip(&compiled) {
        match compiled {
            Err(ConfigErrors(e)) => errors.extend(e.iter().cloned()),
            Ok(c) => {
                let src = Source { path, text };
                let mut duplicate = false;
                for (pattern, span) in c.policy.hosts.iter().zip(&c.host_spans) {
                    if let Some(first) = owners.insert(pattern.clone(), path.clone()) {
                        errors.push(src.error(
                            span.clone(),
                            format!("hosts: {pattern} is already served by {}", first.display()),
                        ));
                        duplicate = true;
                    }
                }
                if !duplicate {
                    policies.push(std::sync::Arc::clone(&c.policy));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let mut next = std::collections::HashMap::with_capacity(files.len());
    let mut digests = Vec::with_capacity(files.len());
    for (i, ((path, text), c)) in files.iter().zip(compiled).enumerate() {
        let d = match (&c, cache.files.get(path)) {
            (Ok(c), _) if todo.binary_search(&i).is_ok() => entry_digest(text, &c.policy),
            (_, Some((_, d, _))) => *d,
            _ => file_digest(text),
        };
        digests.push(d);
        if let Ok(c) = c {
            next.insert(path.clone(), (text.clone(), d, c));
        }
    }
    let digest = combine_digests(files.iter().map(|(p, _)| p.as_path()).zip(digests));
    cache.files = next;
    Ok(Registry::from_shared(policies, digest))
}

/// Compiles every file on its own, spread over the machine's cores (files are independent; the
/// cross-file checks run after, in file order). Results are in the order of `files`.
fn compile_files(files: &[(PathBuf, String)]) -> Vec<Result<CompiledFile, ConfigErrors>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if workers < 2 || files.len() < 16 {
        return files.iter().map(|(p, t)| compile_host_file(p, t)).collect();
    }
    let chunk = files.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(p, t)| compile_host_file(p, t))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(files.chunks(chunk))
            .flat_map(|(h, part)| {
                // A compile that panicked is a bug; report it as that file's error, never crash.
                h.join().unwrap_or_else(|_| {
                    part.iter()
                        .map(|(p, _)| {
                            Err(ConfigErrors(vec![file_error(
                                p,
                                "internal error while compiling this file",
                            )]))
                        })
                        .collect()
                })
            })
            .collect()
    })
}

/// Loads the gateway file and its registry.
pub fn load(path: &Path) -> Result<(GatewayConfig, Registry), ConfigErrors> {
    let gateway = load_gateway(path)?;
    let registry = load_registry(&gateway.registry_dir)?;
    Ok((gateway, registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_err(text: &str) -> String {
        match parse_host_file(Path::new("hosts/t.toml"), text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const HEAD: &str = "hosts = [\"t.example\"]\nupstream = \"http://127.0.0.1:8000\"\n";

    #[test]
    fn durations_parse() {
        let cases = [
            ("10s", 10_000),
            ("500ms", 500),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            (" 3s ", 3000),
        ];
        for (s, ms) in cases {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for s in ["", "10", "s", "10 s", "1.5s", "-1s", "10sec", "10S"] {
            assert!(parse_duration(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        for s in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(s.parse::<Cidr>().is_err(), "{s}");
        }
    }

    #[test]
    fn positions_are_line_and_column() {
        let text = format!("{HEAD}\n[[cookie]]\nname = \"a\"\ncategory = \"x\"\n\n[[cookie]]\ncategory = \"y\"\nname = \"b\"\nprefix = \"c\"\n");
        assert_eq!(
            host_err(&text),
            "hosts/t.toml:11:10: cookie[1]: set either name or prefix, not both"
        );
    }

    #[test]
    fn neither_name_nor_prefix_points_at_the_entry() {
        let text = format!("{HEAD}[[cookie]]\ncategory = \"x\"\n");
        let e = host_err(&text);
        assert!(e.starts_with("hosts/t.toml:"), "{e}");
        assert!(e.ends_with("cookie[0]: set either name or prefix"), "{e}");
        let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
        assert!((3..=4).contains(&line), "{e}");
    }

    #[test]
    fn unknown_field_is_an_error() {
        let e = host_err(&format!(
            "{HEAD}[[cookie]]\nname = \"a\"\ncategory = \"x\"\ncategroy = \"y\"\n"
        ));
        assert!(
            e.starts_with("hosts/t.toml:6:1: unknown field `categroy`"),
            "{e}"
        );
    }

    #[test]
    fn each_invalid_host_file_is_refused_with_its_place() {
        let cases: Vec<(String, &str)> = vec![
            ("hosts = []\nupstream = \"http://a:1\"\n".into(), "1:9: hosts: list at least one host name"),
            ("hosts = [\"\"]\nupstream = \"http://a:1\"\n".into(), "1:10: hosts[0]: host pattern is empty"),
            ("hosts = [\"a.*.b\"]\nupstream = \"http://a:1\"\n".into(), "1:10: hosts[0]: host pattern \"a.*.b\""),
            ("hosts = [\"a\", \"A.\"]\nupstream = \"http://a:1\"\n".into(), "1:15: hosts[1]: a is listed twice"),
            ("hosts = [\"a\"]\nupstream = \"ftp://a:1\"\n".into(), "2:12: upstream: \"ftp://a:1\" is not an absolute"),
            ("hosts = [\"a\"]\nupstream = \"a:1\"\n".into(), "2:12: upstream: \"a:1\" is not an absolute"),
            ("hosts = [\"a\"]\nupstream = \"http://a:1/x\"\n".into(), "2:12: upstream: \"http://a:1/x\" is not an absolute"),
            (format!("{HEAD}mode = \"enforcing\"\n"), "3:8: unknown variant `enforcing`, expected `enforce` or `report-only`"),
            (format!("{HEAD}[[cookie]]\nname = \"a\"\ncategory = \"x\"\n[[cookie]]\nname = \"a\"\ncategory = \"y\"\n"), "7:8: cookie[1]: name \"a\" is already listed by cookie[0]"),
            (format!("{HEAD}[[cookie]]\nname = \"a b\"\ncategory = \"x\"\n"), "4:8: cookie[0]: name \"a b\" is not a valid cookie name"),
            (format!("{HEAD}[[cookie]]\nname = \"cookies_preferences\"\ncategory = \"x\"\n"), "5:12: cookie[0]: \"cookies_preferences\" is the consent cookie"),
            (format!("{HEAD}gpc = [\"marketting\"]\n[[cookie]]\nname = \"a\"\ncategory = \"marketing\"\n"), "3:8: gpc[0]: no cookie entry has category \"marketting\""),
            (format!("{HEAD}gpc = [\"necessary\"]\n"), "3:8: gpc[0]: \"necessary\" needs no consent"),
            (format!("{HEAD}unknown_cookies = \"keep\"\npurge_unknown = true\n"), "4:17: purge_unknown: needs unknown_cookies = \"drop\""),
            (format!("{HEAD}upstream_ca = \"ca.pem\"\n"), "3:15: upstream_ca: only used with an https:// upstream"),
            (format!("{HEAD}[[cookie]]\nname = \"a\"\ncategory = \"x\"\nconsent = []\n"), "6:11: cookie[0]: consent keys must be non-empty strings"),
            (format!("{HEAD}[[cookie]]\nname = \"a\"\ncategory = \"x\"\npath = \"x\"\n"), "6:8: cookie[0]: path \"x\" must start with '/'"),
            (format!("{HEAD}[[cookie]]\nname = \"a\"\ncategory = \"x\"\ndomains = [\"*.x\"]\n"), "6:12: cookie[0]: domains[0]: \"*.x\" is not a domain name"),
            ("hosts = [\"a\"\n".into(), "1:13: unclosed array, expected `]`"),
        ];
        for (text, want) in cases {
            let e = host_err(&text);
            let want = format!("hosts/t.toml:{want}");
            assert!(e.starts_with(&want), "want {want:?}\n got {e:?}");
        }
    }

    #[test]
    fn duplicate_host_across_files_names_both() {
        let files = vec![
            (
                PathBuf::from("hosts/a.toml"),
                "hosts = [\"x.example\"]\nupstream = \"http://a:1\"\n".to_owned(),
            ),
            (
                PathBuf::from("hosts/b.toml"),
                "hosts = [\"y.example\", \"X.example.\"]\nupstream = \"http://a:1\"\n".to_owned(),
            ),
        ];
        let e = compile_registry(&files).unwrap_err().to_string();
        assert_eq!(
            e,
            "hosts/b.toml:1:23: hosts: x.example is already served by hosts/a.toml"
        );
    }

    #[test]
    fn cached_compile_equals_a_fresh_one_and_survives_errors() {
        let file = |name: &str, host: &str, cat: &str| {
            (
                PathBuf::from(format!("hosts/{name}.toml")),
                format!("hosts = [\"{host}\"]\nupstream = \"http://a:1\"\n[[cookie]]\nname = \"c\"\ncategory = \"{cat}\"\n"),
            )
        };
        let mut cache = CompileCache::default();
        let v1 = vec![file("a", "a.test", "x"), file("b", "b.test", "y")];
        let r1 = compile_registry_cached(&v1, &mut cache).unwrap();
        assert_eq!(r1.digest, compile_registry(&v1).unwrap().digest);
        assert_eq!(cache.digest(&v1), r1.digest);
        // One file changes: the other's compiled policy is reused, the result is the same as fresh.
        let v2 = vec![file("a", "a.test", "x"), file("b", "b.test", "z")];
        let r2 = compile_registry_cached(&v2, &mut cache).unwrap();
        let fresh = compile_registry(&v2).unwrap();
        assert_eq!(r2.digest, fresh.digest);
        assert_ne!(r2.digest, r1.digest);
        assert!(
            std::sync::Arc::ptr_eq(&r1.policies[0], &r2.policies[0]),
            "unchanged file reused"
        );
        assert_eq!(r2.lookup(b"b.test").unwrap().cookies[0].category, "z");
        // A broken change fails and leaves the cache as it was.
        let bad = vec![
            file("a", "a.test", "x"),
            (PathBuf::from("hosts/b.toml"), "hosts = [".to_owned()),
        ];
        assert!(compile_registry_cached(&bad, &mut cache).is_err());
        assert_eq!(cache.digest(&v2), r2.digest);
        // A host moving to another file in the same change is not a duplicate.
        let moved = vec![file("a", "b.test", "x"), file("b", "a.test", "z")];
        let r3 = compile_registry_cached(&moved, &mut cache).unwrap();
        assert_eq!(
            r3.lookup(b"b.test").unwrap().file,
            PathBuf::from("hosts/a.toml")
        );
    }

    #[test]
    fn upstream_ca_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let text = format!(
            "hosts = [\"t.example\"]\nupstream = \"https://o.internal\"\nupstream_ca = \"{}\"\n",
            garbage.display()
        );
        let e = host_err(&text);
        assert!(
            e.starts_with("hosts/t.toml:3:15: upstream_ca:") && e.ends_with("no CERTIFICATE block"),
            "{e}"
        );
        let missing = text.replace("garbage.pem", "missing.pem");
        assert!(
            host_err(&missing).contains("cannot read"),
            "{}",
            host_err(&missing)
        );
    }

    #[test]
    fn defaults_are_fail_closed() {
        let p = parse_host_file(Path::new("t.toml"), HEAD).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.unknown_cookies, UnknownCookies::Drop);
        assert!(p.strip_request_cookies && p.purge && !p.purge_unknown);
        assert_eq!(p.consent.cookie, "cookies_preferences");
        assert_eq!(p.upstream.authority.as_str(), "127.0.0.1:8000");
    }

    #[test]
    fn consent_keys_default_to_category_and_accept_one_or_many() {
        let text = format!(
            "{HEAD}[[cookie]]\nname = \"a\"\ncategory = \"statistical\"\n[[cookie]]\nname = \"b\"\ncategory = \"s\"\nconsent = \"ga\"\n[[cookie]]\nname = \"c\"\ncategory = \"s\"\nconsent = [\"ga\", \"C0002\"]\n"
        );
        let p = parse_host_file(Path::new("t.toml"), &text).unwrap();
        let keys: Vec<Vec<String>> = p.cookies.iter().map(|c| c.consent.clone()).collect();
        assert_eq!(
            keys,
            vec![
                vec!["statistical".to_owned()],
                vec!["ga".into()],
                vec!["ga".into(), "C0002".into()]
            ]
        );
    }

    #[test]
    fn upstream_gets_default_port() {
        assert_eq!(
            parse_upstream("https://origin.internal")
                .unwrap()
                .authority
                .as_str(),
            "origin.internal:443"
        );
        assert_eq!(
            parse_upstream("http://origin.internal/")
                .unwrap()
                .authority
                .as_str(),
            "origin.internal:80"
        );
        assert!(parse_upstream("http://user@origin").is_err());
    }

    fn gw_err(text: &str) -> String {
        parse_gateway(Path::new("config/gateway.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn gateway_file_errors_name_their_place() {
        let cases = [
            (
                "[listen]\nhttp = \"nope\"\n",
                "config/gateway.toml:2:8: listen.http: \"nope\" is not an address",
            ),
            (
                "[listen]\n",
                "config/gateway.toml:1:1: listen: set http, https or both",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[limits]\nidle_timeout = \"10 sec\"\n",
                "config/gateway.toml:4:16: limits.idle_timeout: invalid duration \"10 sec\"",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[limits]\nmax_header_bytes = 10\n",
                "config/gateway.toml:4:20: limits.max_header_bytes: must be 8192",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[limits]\nmax_purge_headers = 0\n",
                "config/gateway.toml:4:21: limits.max_purge_headers: must be 1 to 1024",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[proxy]\ntrusted_proxies = [\"10/8\"]\n",
                "config/gateway.toml:4:20: proxy.trusted_proxies[0]:",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[proxy]\nworkers = 5000\n",
                "config/gateway.toml:4:11: proxy.workers: at most 1024",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[proxy]\nworkers = -1\n",
                "config/gateway.toml:4:11:",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\nextra = 1\n",
                "config/gateway.toml:3:1: unknown field `extra`",
            ),
            (
                "[listen]\nhttps = \"127.0.0.1:1\"\n",
                "config/gateway.toml:1:1: listen.https: needs a [tls] table",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"a.jsonl\"\nmax_bytes = \"10 MB\"\n",
                "config/gateway.toml:5:13: audit.max_bytes: invalid size \"10 MB\"",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"a.jsonl\"\nmax_bytes = \"512\"\n",
                "config/gateway.toml:5:13: audit.max_bytes: must be at least 1KiB",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"a.jsonl\"\nkeep = -1\n",
                "config/gateway.toml:5:8: audit.keep: must be 0 to 1000",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"\"\n",
                "config/gateway.toml:4:8: audit.path: set a file path or \"stdout\"",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"a.jsonl\"\nqueue = 0\n",
                "config/gateway.toml:5:9: audit.queue: must be 1 to 1048576",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\nfile = \"a.jsonl\"\n",
                "config/gateway.toml:4:1: unknown field `file`",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[inventory]\nmax_names_per_host = -1\n",
                "config/gateway.toml:4:22: inventory.max_names_per_host: must be 0 (off) to 1000000",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\n[inventory]\nknowledge = true\n",
                "config/gateway.toml:4:1: unknown field `knowledge`",
            ),
        ];
        for (text, want) in cases {
            let e = gw_err(text);
            assert!(e.starts_with(want), "want {want:?}\n got {e:?}");
        }
    }

    #[test]
    fn gateway_paths_resolve_against_its_directory() {
        let g = parse_gateway(
            Path::new("/etc/cg/gateway.toml"),
            "[listen]\nhttp = \"127.0.0.1:1\"\n[registry]\ndir = \"hosts\"\n[limits]\nidle_timeout = \"45s\"\n",
        )
        .unwrap();
        assert_eq!(g.registry_dir, PathBuf::from("/etc/cg/hosts"));
        assert_eq!(g.limits.idle_timeout, Duration::from_secs(45));
        assert_eq!(g.limits.max_connections, 10_000);
        assert_eq!(g.limits.max_purge_headers, 64);
        assert_eq!(g.audit, None);
    }

    #[test]
    fn audit_table_compiles_with_defaults_and_resolved_path() {
        let g = parse_gateway(
            Path::new("/etc/cg/gateway.toml"),
            "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"log/audit.jsonl\"\n",
        )
        .unwrap();
        assert_eq!(
            g.audit,
            Some(AuditConfig {
                path: AuditPath::File(PathBuf::from("/etc/cg/log/audit.jsonl")),
                max_bytes: 100 << 20,
                keep: 10,
                queue: DEFAULT_AUDIT_QUEUE,
            })
        );
        let g = parse_gateway(
            Path::new("gateway.toml"),
            "[listen]\nhttp = \"127.0.0.1:1\"\n[audit]\npath = \"stdout\"\nmax_bytes = \"4KiB\"\nkeep = 0\nqueue = 16\n",
        )
        .unwrap();
        assert_eq!(
            g.audit,
            Some(AuditConfig {
                path: AuditPath::Stdout,
                max_bytes: 4096,
                keep: 0,
                queue: 16,
            })
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("7B"), Ok(7));
        for bad in [
            "",
            "MiB",
            "10 MB",
            "1.5GiB",
            "-1",
            "99999999999999999999GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inventory_is_on_by_default_and_zero_turns_it_off() {
        let on = parse_gateway(Path::new("g.toml"), "[listen]\nhttp = \"127.0.0.1:1\"\n").unwrap();
        assert_eq!(on.inventory, InventoryConfig::default());
        assert_eq!(on.inventory.max_names_per_host, 1000);
        assert!(on.inventory.knowledge_base);
        let off = parse_gateway(
            Path::new("g.toml"),
            "[listen]\nhttp = \"127.0.0.1:1\"\n[inventory]\nmax_names_per_host = 0\nknowledge_base = false\n",
        )
        .unwrap();
        assert_eq!(
            off.inventory,
            InventoryConfig {
                max_names_per_host: 0,
                knowledge_base: false
            }
        );
    }
}
