//! The admin endpoint: `/healthz`, `/readyz`, `/metrics`, `/registry`, `/policy/{host}`,
//! `/inventory` and `/inventory/{host}`.
//!
//! Served on its own listener, which stays up while the proxy listener drains. The listener
//! serves [`MAX_CONNECTIONS`] connections in full; past that, connections are not refused but
//! served in the probe lane ([`crate::edge::server::ProbeLane`]): one request each, `/healthz` and
//! `/readyz` only, its head due within a second. So no number of idle or slow admin
//! connections can make a probe fail or wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::config::ConfigError;
use crate::control::live::Live;
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::policy::page;

/// Admin connections served in full at once (scrapers, operators); more are served for probes
/// only.
pub const MAX_CONNECTIONS: usize = 64;

/// Whether `path` is a health probe, answered whatever the number of admin connections.
pub fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// What the admin endpoint reads.
pub struct AdminState {
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    /// True once the registry is loaded and the listeners are bound; false while draining.
    pub ready: Arc<AtomicBool>,
    /// The live cookie inventory.
    pub inventory: Arc<Inventory>,
}

#[derive(Serialize)]
struct RegistryView<'a> {
    generation: u64,
    loaded_at: &'a str,
    digest: &'a str,
    hosts: Vec<HostView>,
    last_error: Option<ConfigError>,
}

#[derive(Serialize)]
struct HostView {
    file: String,
    hosts: Vec<String>,
    upstream: String,
    mode: &'static str,
    cookies: usize,
}

/// Answers one admin request.
pub fn handle<B>(state: &AdminState, req: &Request<B>) -> Response<Bytes> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" => {
            state
                .inventory
                .update_metrics(&state.live.load().registry, &state.metrics);
            let mut r = Response::new(Bytes::from(state.metrics.encode()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/registry" => {
            let snap = state.live.load();
            let view = RegistryView {
                generation: snap.generation,
                loaded_at: &snap.loaded_at,
                digest: &snap.registry.digest,
                hosts: snap
                    .registry
                    .policies
                    .iter()
                    .map(|p| HostView {
                        file: p.file.display().to_string(),
                        hosts: p.hosts.iter().map(ToString::to_string).collect(),
                        upstream: p.upstream.to_string(),
                        mode: p.mode.as_str(),
                        cookies: p.cookies.len(),
                    })
                    .collect(),
                last_error: state.live.last_error(),
            };
            json(&view)
        }
        "/inventory" => json(&state.inventory.summary(&state.live.load().registry)),
        path => match (
            path.strip_prefix("/policy/"),
            path.strip_prefix("/inventory/"),
        ) {
            (Some(host), _) => policy(state, host, req.headers()),
            (_, Some(host)) => inventory(state, host, req.headers()),
            _ => text(StatusCode::NOT_FOUND, "404 not found\n"),
        },
    }
}

/// `/policy/{host}`: the policy of the registry file serving `host` (matched as the proxy
/// matches a Host header), from the snapshot serving now.
fn policy(state: &AdminState, host: &str, headers: &http::HeaderMap) -> Response<Bytes> {
    let snap = state.live.load();
    let Some(p) = registry_file(&snap.registry, host) else {
        return text(
            StatusCode::NOT_FOUND,
            "404 no registry file names this host\n",
        );
    };
    let view = page::view(host, p, snap.generation, &snap.loaded_at);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let mut r = if page::wants_json(accept) {
        json(&view)
    } else {
        html_page(page::html(&view))
    };
    let h = r.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The registry file serving `host` (matched as the proxy matches a Host header), or `None`
/// for an empty host or one with a path in it.
fn registry_file<'r>(
    registry: &'r crate::policy::registry::Registry,
    host: &str,
) -> Option<&'r Arc<crate::policy::registry::HostPolicy>> {
    (!host.is_empty() && !host.contains('/'))
        .then(|| registry.lookup(host.as_bytes()))
        .flatten()
}

/// A self-contained HTML page (`/policy`, `/inventory`): no script, no external resource, only
/// its inline style, and a CSP that says so.
fn html_page(body: String) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json<T: Serialize>(v: &T) -> Response<Bytes> {
    match serde_json::to_vec_pretty(v) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut r = Response::new(Bytes::from(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500 internal server error\n",
        ),
    }
}

/// `/inventory/{host}`: the cookie inventory of the registry file serving `host`, judged by the
/// snapshot serving now. JSON, or HTML when `Accept` prefers `text/html` (a browser).
fn inventory(state: &AdminState, host: &str, headers: &http::HeaderMap) -> Response<Bytes> {
    let snap = state.live.load();
    let Some(p) = registry_file(&snap.registry, host) else {
        return text(
            StatusCode::NOT_FOUND,
            "404 no registry file names this host\n",
        );
    };
    let view = state.inventory.host_view(host, p);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let mut r = if crate::inventory::page::wants_html(accept) {
        html_page(crate::inventory::page::html(&view))
    } else {
        json(&view)
    };
    let h = r.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
