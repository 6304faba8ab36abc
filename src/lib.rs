//! consent-gateway: a reverse proxy that enforces cookie consent at the edge.
//!
//! # Layout
//!
//! The folders are the parts; arrows point one way, from the command line and the edge toward the
//! pure core (`.ci/check-layers.py` fails the build on an arrow pointing back up or an import
//! cycle). Top to bottom:
//!
//! - [`cli`]: the commands beside `run`: `explain`, `import-policy`, `demo`.
//! - [`gateway`]: listeners bound and everything started; what `main`, the demo and tests run.
//! - [`edge`]: what faces the client before a request exists: accept loop, connection limit,
//!   graceful drain ([`edge::server`]); the HTTP/1 head scanner that sees the bytes hyper parses
//!   ([`edge::scanner`]); the https listener's rustls config ([`edge::tls`]).
//! - [`proxy`]: one request from the client to the upstream and back (read this first): the
//!   handler ([`proxy`]), request checks ([`proxy::checks`]), the upstream client pool
//!   ([`proxy::upstream`]), streamed bodies with idle timeouts ([`proxy::body`]), the error type and
//!   its status mapping ([`proxy::error`]).
//! - [`control`]: the live registry handle and its reloads ([`control::live`]), the server
//!   certificates reloaded with it ([`control::certs`]), the admin endpoint ([`control::admin`]).
//! - [`audit`]: the tamper-evident audit log: records, their hash chain, `audit verify`, and its
//!   writer thread (fed by a bounded queue that never blocks a request).
//! - [`inventory`]: the live cookie inventory (per-worker shards), the bundled cookie knowledge
//!   base, `/inventory/{host}` as HTML, and `suggest`.
//! - [`metrics`]: the Prometheus metrics.
//! - [`config`]: the config files, parsed and compiled into a registry; `file:line:col` errors.
//! - [`policy`]: the pure core (no sockets, files or clocks): host patterns, the registry, the
//!   request's cookies, consent decoding, a `Set-Cookie` as a browser reads and stores it, the one
//!   keep/drop decision ([`policy::decide`]) and its application to a request or response
//!   ([`policy::filter`]), a host's policy page.
//! - this file: the clock and the UTC calendar, which every part may use.

#![forbid(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod config;
pub mod control;
pub mod edge;
pub mod gateway;
pub mod inventory;
pub mod metrics;
pub mod policy;
pub mod proxy;

/// Milliseconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Seconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The UTC `[year, month, day, hour, minute, second]` of `secs` seconds since the Unix epoch
/// (negative before 1970), by Howard Hinnant's `civil_from_days`: what the RFC 3339 stamps of
/// `/registry`, the inventory and the audit log are written from.
pub(crate) fn utc_civil(secs: i64) -> [i64; 6] {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    [y, m, d, rem / 3600, rem % 3600 / 60, rem % 60]
}

/// `2026-11-23T10:00:00Z` (UTC, whole seconds).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let [y, m, d, hh, mm, ss] = crate::utc_civil(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}
