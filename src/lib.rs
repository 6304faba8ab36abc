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
//! - [`proxy`]: one request from the client to the upstream and back (read this first: its
//!   module doc walks one request): the handler ([`proxy`]), request checks ([`proxy::checks`]),
//!   the heads' rewriting for the upstream and for the client (hop-by-hop, `X-Forwarded-*`,
//!   `Host`, target: [`proxy::header_ops`]), the upstream client pool and the worker's own HTTP/1
//!   pool ([`proxy::upstream`]), the response body with its trailer filter ([`proxy::body`]), idle
//!   timeouts for bodies and connections ([`proxy::idle`]), the error type and its status mapping
//!   ([`proxy::error`]).
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
//! - this file: the clock and its RFC 3339 stamps, which every part may use.

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

/// The latest instant humantime writes in RFC 3339 (9999-12-31T23:59:59Z).
const RFC3339_MAX_SECS: u64 = 253_402_300_799;

/// `t` within what RFC 3339 stamps can say (1970 to 9999): the clock's stamps are written from
/// it, never a panic on a clock set outside.
pub(crate) fn rfc3339_range(t: std::time::SystemTime) -> std::time::SystemTime {
    let epoch = std::time::UNIX_EPOCH;
    t.clamp(
        epoch,
        epoch + std::time::Duration::from_secs(RFC3339_MAX_SECS),
    )
}

/// `2026-11-23T10:00:00Z` (UTC, whole seconds): the stamps of `/registry` and the inventory.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(rfc3339_range(t)).to_string()
}
