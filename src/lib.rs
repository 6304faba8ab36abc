//! consent-gateway: a reverse proxy that enforces cookie consent at the edge.
//!
//! # Layout
//!
//! Pure modules (no sockets, files or clocks):
//! - [`host`]: host patterns (`name`, `*.suffix`) and the most-specific-match host table.
//! - [`request_cookies`]: the request's `Cookie` header(s) read as bytes.
//! - [`consent`]: consent cookie decoding, one module per format, and `Sec-GPC`.
//! - [`set_cookie`]: one `Set-Cookie` value read as a browser reads it (name, deletion, attributes).
//! - [`jar`]: what a browser's jar would do: hold a `Set-Cookie` for a URL or not (RFC 6265bis
//!   storage model, Public Suffix List), and the `Domain` variants a purge must cover.
//! - [`registry`]: the compiled per-host policy and its cookie-name index.
//! - [`policy`]: the keep/drop decision for one `Set-Cookie`, with its reason.
//! - [`filter`]: the decision applied to a response's headers; `Vary: Cookie`.
//! - [`policy_page`]: a host's cookie policy rendered as HTML and JSON for `/policy/{host}`.
//! - [`import`]: `import-policy`: a cookie-policy page read into a registry file.
//! - [`audit`]: the tamper-evident audit log: records, their hash chain, `audit verify`, and its
//!   writer thread (the one I/O part, fed by a bounded queue that never blocks a request).
//! - [`inventory`]: the live cookie inventory (per-worker shards), the bundled cookie knowledge
//!   base, `/inventory/{host}` as HTML, and `suggest` (its I/O part reads other gateways).
//!
//! Edges and I/O:
//! - [`config`]: the config files, parsed and compiled into a registry; `file:line:col` errors.
//! - [`explain`]: the `explain` command over the same filter the proxy runs.
//! - [`error`]: the request path's error type and its status mapping.
//! - [`body`]: streamed bodies and connections with idle timeouts.
//! - [`hardening`]: request smuggling checks hyper does not make (raw request heads judged).
//! - [`proxy`]: one request from the client to the upstream and back (read this first).
//! - [`server`]: accept loop, connection limit, graceful drain.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/registry`, `/policy/{host}`, `/inventory`.
//! - [`metrics`]: the Prometheus metrics.
//! - [`reload`]: the live registry handle and reloads.
//! - [`gateway`]: listeners bound and everything started; what `main`, the demo and tests run.
//! - [`demo`]: the built-in sample portal behind the gateway.

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod body;
pub mod config;
pub mod consent;
pub mod demo;
pub mod error;
pub mod explain;
pub mod filter;
pub mod gateway;
pub mod hardening;
pub mod host;
pub mod import;
pub mod inventory;
pub mod jar;
pub mod metrics;
pub mod policy;
pub mod policy_page;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod request_cookies;
pub mod server;
pub mod set_cookie;
pub mod tls;

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
