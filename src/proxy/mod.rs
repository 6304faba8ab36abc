//! The request path, from a client's request to the downstream response.
//!
//! [`Proxy::handle`] cannot fail: it loads the registry snapshot once, runs
//! [`Proxy::try_handle`], turns any [`ProxyError`] into a response, counts and logs. In
//! `try_handle`: find the host's policy (421 if none), read the consent once, forward the request
//! with hop-by-hop headers removed and `X-Forwarded-*` set, wait for the upstream response head
//! (bounded by `upstream_response_timeout`), filter its `Set-Cookie` headers, add `Vary: Cookie`,
//! and stream the body back. A 101 upgrade is filtered the same way, then tunnelled.

pub mod body;
pub mod checks;
pub mod error;
pub mod upstream;

pub use body::UpstreamBody;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::config::{Cidr, Limits};
use crate::control::live::Live;
use crate::inventory::{Inventory, Shard};
use crate::metrics::{CounterCache, HostKind, HostLabel, Metrics};
use crate::policy::decide::Verdict;
use crate::policy::filter::{add_vary_cookie, filter_response, strip_request, Exchange, Summary};
use crate::policy::jar::RequestUrl;
use crate::policy::registry::{HostPolicy, Mode};
use crate::proxy::body::{IdleBody, ProxyBody, SideDoor};
use crate::proxy::error::ProxyError;
use upstream::{UpstreamClient, Upstreams};

/// Everything the request path needs.
pub struct Proxy {
    live: Arc<Live>,
    /// Pooled upstream clients, shared by the http and https listeners.
    upstreams: Arc<Upstreams>,
    metrics: Arc<Metrics>,
    /// This proxy's handles on the per-request counters.
    counters: CounterCache,
    limits: Limits,
    /// Peers whose `X-Forwarded-*` headers are kept (and appended to).
    trusted_proxies: Vec<Cidr>,
    /// `http` or `https`: what the client spoke, for `X-Forwarded-Proto`.
    scheme: &'static str,
    /// The audit log's queue, with `[audit]`.
    audit: Option<crate::audit::Sink>,
    /// This proxy's part of the cookie inventory; `None` when the inventory is off.
    inventory: Option<Shard>,
}

/// What the access log says about one request.
#[derive(Default)]
struct Outcome {
    /// The policy that served the request (`None` before the host is known).
    policy: Option<Arc<HostPolicy>>,
    cookies: Summary,
    /// Browser cookies stripped from the request (would be, in report-only mode).
    stripped: usize,
    /// Browser cookies purged in the response (would be, in report-only mode).
    purged: usize,
}

/// A request being answered. Dropped before it is answered (the client closed its connection
/// or reset its stream while the gateway waited on the upstream): logged with status 499 and
/// counted as a client abort.
struct InFlight<'a> {
    proxy: &'a Proxy,
    start: Instant,
    method: http::Method,
    uri: Uri,
    peer: SocketAddr,
    outcome: Outcome,
    /// The response exists: nothing is abandoned from here on (the body has its own hook).
    answered: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let host = self
            .outcome
            .policy
            .as_ref()
            .map_or("unknown", |p| p.name.as_str());
        tracing::info!(
            target: "consent_gateway::access",
            host,
            method = %self.method,
            path = self.uri.path(),
            status = 499u16,
            duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            upstream = %self.outcome.policy.as_ref().map_or(String::new(), |p| p.upstream.to_string()),
            peer = %self.peer,
            "client abandoned the request before the response"
        );
        let m = &self.proxy.metrics;
        m.duration.observe(self.start.elapsed().as_secs_f64());
        self.proxy.counters.request(m, host, 499);
        m.client_aborts
            .get_or_create(&HostLabel {
                host: host.to_owned(),
            })
            .inc();
    }
}

/// What an audit record needs from the request, kept from before it is forwarded (its path
/// is the URL's, kept anyway). Clones share their bytes: nothing is copied unless a record is
/// made.
struct AuditRequest {
    method: http::Method,
    /// The `Cookie` headers as the browser sent them (for the consent cookie's digest).
    cookies: Vec<HeaderValue>,
}

impl AuditRequest {
    fn new<B>(req: &Request<B>) -> Self {
        AuditRequest {
            method: req.method().clone(),
            cookies: req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .cloned()
                .collect(),
        }
    }
}

/// Headers that only concern one connection (RFC 9110 §7.6.1), besides those `Connection` names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

impl Proxy {
    pub fn new(
        live: Arc<Live>,
        upstreams: Arc<Upstreams>,
        metrics: Arc<Metrics>,
        limits: Limits,
        trusted_proxies: Vec<Cidr>,
        scheme: &'static str,
        inventory: &Arc<Inventory>,
    ) -> Self {
        Proxy {
            live,
            upstreams,
            metrics,
            counters: CounterCache::default(),
            limits,
            trusted_proxies,
            scheme,
            audit: None,
            inventory: inventory.shard(),
        }
    }

    /// Hands a record of every response with a decision to `audit` (see [`crate::audit`]).
    pub fn with_audit(mut self, audit: Option<crate::audit::Sink>) -> Self {
        self.audit = audit;
        self
    }

    /// Answers one request. Never fails: errors become short plain-text responses.
    ///
    /// A request the client abandons (its connection closed, its HTTP/2 stream reset) before the
    /// response is complete is logged with status 499, as nginx does, and counted in
    /// `consent_gateway_client_aborts_total{host}`: before the response head by [`InFlight`]
    /// (this future is dropped), during the body by the body's abandon hook.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let mut flight = InFlight {
            proxy: &self,
            start: Instant::now(),
            method: req.method().clone(),
            // A Uri clone shares its bytes: the path is logged without a copy.
            uri: req.uri().clone(),
            peer,
            outcome: Outcome::default(),
            answered: false,
        };
        let response = match self.try_handle(req, peer, &mut flight.outcome).await {
            Ok(r) => r,
            Err(e) => {
                let outcome = &flight.outcome;
                if let Some(kind) = e.upstream_kind() {
                    let host = outcome
                        .policy
                        .as_ref()
                        .map_or("unknown", |p| p.name.as_str());
                    self.metrics
                        .upstream_errors
                        .get_or_create(&HostKind {
                            host: host.to_owned(),
                            kind,
                        })
                        .inc();
                    tracing::warn!(
                        host,
                        upstream = %outcome.policy.as_ref().map(|p| &p.upstream).map_or(String::new(), ToString::to_string),
                        kind,
                        "upstream error: {e}"
                    );
                }
                error_response(e)
            }
        };
        flight.answered = true;
        let outcome = &flight.outcome;
        let elapsed = flight.start.elapsed();
        let code = response.status().as_u16();
        let host = outcome
            .policy
            .as_ref()
            .map_or("unknown", |p| p.name.as_str());
        self.metrics.duration.observe(elapsed.as_secs_f64());
        tracing::info!(
            target: "consent_gateway::access",
            host,
            method = %flight.method,
            path = flight.uri.path(),
            status = code,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream = %outcome.policy.as_ref().map_or(String::new(), |p| p.upstream.to_string()),
            peer = %peer,
            cookies_kept = outcome.cookies.kept,
            cookies_dropped = outcome.cookies.dropped,
            cookies_would_drop = outcome.cookies.would_drop,
            cookies_stripped = outcome.stripped,
            cookies_purged = outcome.purged,
        );
        self.counters.request(&self.metrics, host, code);
        let (parts, body) = response.into_parts();
        let body = match body {
            ProxyBody::Upstream(b, side_door) => {
                let metrics = Arc::clone(&self.metrics);
                let (host, method, uri) =
                    (host.to_owned(), flight.method.clone(), flight.uri.clone());
                let start = flight.start;
                ProxyBody::Upstream(
                    b.on_abandon(Box::new(move || {
                        tracing::info!(
                            target: "consent_gateway::access",
                            host,
                            method = %method,
                            path = uri.path(),
                            status = 499u16,
                            duration_ms = start.elapsed().as_secs_f64() * 1000.0,
                            peer = %peer,
                            "client abandoned the response body (the response head was {code})"
                        );
                        metrics
                            .client_aborts
                            .get_or_create(&HostLabel { host })
                            .inc();
                    })),
                    side_door,
                )
            }
            other => other,
        };
        Response::from_parts(parts, body)
    }

    async fn try_handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        outcome: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // The snapshot is held to the end of the request (and of its tunnel, if it upgrades).
        let snapshot = self.live.load();
        let host = request_host(&req)?;
        checks::check_request(&mut req)?;
        let policy: &Arc<HostPolicy> = snapshot
            .registry
            .lookup(host.as_bytes())
            .ok_or(ProxyError::UnknownHost)?;
        outcome.policy = Some(Arc::clone(policy));

        let downstream_version = req.version();
        let consent = crate::policy::consent::from_request_headers(&policy.consent, req.headers());
        if let Some(shard) = &self.inventory {
            // Every name the browser sent, before the request side strips any.
            shard
                .recorder(policy, crate::unix_now())
                .request_cookies(req.headers());
        }
        // Shares the request's bytes: the URL cookies are judged against (rule 4, purge).
        let request_uri = req.uri().clone();
        let upgrade = requested_upgrade(req.headers());
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        // With the audit log on: what a record of this request needs, read before the request is
        // changed and sent (the `Cookie` values are shared, not copied).
        let audit = self
            .audit
            .as_ref()
            .map(|sink| (sink, AuditRequest::new(&req)));

        let (mut parts, body) = req.into_parts();
        let side = strip_request(policy, &consent, &mut parts.headers);
        strip_hop_by_hop(&mut parts.headers);
        // Trailers reach an HTTP/2 client, and an HTTP/1.1 client that said `TE: trailers` (the
        // only TE value left now): the response head then keeps its `Trailer` field.
        let takes_trailers =
            downstream_version == http::Version::HTTP_2 || parts.headers.contains_key(header::TE);
        parts.headers.remove(header::EXPECT);
        if let Some(proto) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, proto.clone());
        }
        self.set_forwarded(&mut parts.headers, &host, peer);
        match &policy.upstream_host {
            Some(h) => {
                parts.headers.insert(header::HOST, h.clone());
            }
            None => {
                if !parts.headers.contains_key(header::HOST) {
                    // Absolute-form request without Host: keep the name the client asked for.
                    let v = HeaderValue::from_str(&host).map_err(|_| ProxyError::BadHost)?;
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = Uri::builder()
            .scheme(policy.upstream.scheme.clone())
            .authority(policy.upstream.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| ProxyError::BadRequest)?;
        parts.version = http::Version::HTTP_11;
        // `upstream_response_timeout` bounds the wait for the response head once the request
        // has been sent: a slow upload is bounded by `idle_timeout` between its frames instead.
        let (sent_tx, sent) = tokio::sync::oneshot::channel();
        let mut upstream_req = Request::from_parts(
            parts,
            IdleBody::new(body, self.limits.idle_timeout).notify_end(sent_tx),
        );
        // A cookie outside the response head is never forwarded (SPEC, Trailers): the body
        // removes the trailers' ([`ProxyBody`]). hyper's client reads 1xx responses and passes
        // none on (and its server sends no 1xx but its own 100 Continue), so a 1xx's cookies
        // never reach the client; this hook only counts and logs those of an HTTP/1.1 upstream
        // (the HTTP/2 library skips an HTTP/2 upstream's 1xx without showing them).
        let side_door = SideDoor {
            metrics: Arc::clone(&self.metrics),
            policy: Arc::clone(policy),
        };
        let informational = side_door.clone();
        hyper::ext::on_informational(&mut upstream_req, move |res| {
            let cookies: Vec<HeaderValue> = res
                .headers()
                .get_all(header::SET_COOKIE)
                .iter()
                .cloned()
                .collect();
            informational.dropped(&cookies, "1xx");
        });

        let client = self.upstreams.client_for(policy).map_err(|e| {
            tracing::error!(host = %policy.name, "cannot build the upstream client: {e}");
            ProxyError::UpstreamConnect
        })?;
        let response_timeout = self.limits.upstream_response_timeout;
        let deadline = async move {
            // Sent, or dropped unsent (the upstream answered before reading it all, or the
            // request is being sent without it): the wait for the response head starts now.
            let _ = sent.await;
            tokio::time::sleep(response_timeout).await;
        };
        if downstream_version == http::Version::HTTP_2 {
            // Let the connection read what followed this stream's HEADERS first: a stream the
            // client resets at once (rapid reset sends HEADERS and RST_STREAM together) is then
            // dropped here, before it costs the origin anything.
            tokio::task::yield_now().await;
        }
        let sent = if upgrade.is_none() && hyper::body::Body::is_end_stream(upstream_req.body()) {
            // No body to stream: the exchange runs detached, so that a client that cancels
            // (closes, resets its stream) does not abort the upstream connect or the request
            // on a pooled connection, which would cost a new upstream connection each time.
            exchange_detached(client, upstream_req, response_timeout).await
        } else {
            tokio::select! {
                r = client.request(upstream_req) => Some(r),
                () = deadline => None,
            }
        };
        let mut resp = match sent {
            None => return Err(ProxyError::UpstreamTimeout),
            Some(Err(e)) => {
                tracing::debug!(error = ?e, "upstream request failed");
                return Err(ProxyError::from_client(&e));
            }
            Some(Ok(r)) => r,
        };

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut resp));
        let (mut parts, body) = resp.into_parts();
        let upgraded_proto = if switching {
            if client_upgrade.is_none() {
                // The upstream switched protocols on a request that did not ask to.
                return Err(ProxyError::UpstreamProtocol);
            }
            parts.headers.get(header::UPGRADE).cloned()
        } else {
            None
        };
        let trailer = if takes_trailers && parts.headers.contains_key(header::TRAILER) {
            crate::policy::filter::trailer_announcement(&parts.headers)
        } else {
            None
        };
        strip_hop_by_hop(&mut parts.headers);
        if let Some(t) = trailer {
            parts.headers.insert(header::TRAILER, t);
        }
        // An intermediary sends its own version (RFC 9110 §6.2): an HTTP/1.0 (or HTTP/2)
        // upstream must not turn the client's HTTP/1.1 connection into a closing HTTP/1.0 one.
        // hyper itself answers an HTTP/1.0 client in HTTP/1.0.
        parts.version = if downstream_version == http::Version::HTTP_2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        if let Some(proto) = upgraded_proto {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, proto);
        }

        let now = crate::unix_now();
        let exchange = Exchange {
            url: RequestUrl::new(&host, request_uri.path(), self.scheme == "https"),
            now,
            max_purge_headers: self.limits.max_purge_headers,
        };
        let metrics = &self.metrics;
        let mut groups: Vec<((&str, &'static str), u64)> = Vec::with_capacity(4);
        // The inventory sees every upstream Set-Cookie (attributes first, then each verdict).
        let mut inventory = self.inventory.as_ref().map(|s| s.recorder(policy, now));
        if let Some(rec) = inventory.as_mut() {
            for v in parts.headers.get_all(header::SET_COOKIE) {
                rec.set_cookie(v.as_bytes());
            }
        }
        let no_consent = consent.source == crate::policy::consent::Source::Missing;
        // The audit record being built (one buffer): the filter's decisions go in as they come.
        let mut audit_draft = audit.as_ref().map(|_| crate::audit::ResponseDraft::new());
        let (summary, purged, changed) = filter_response(
            policy,
            &consent,
            &side,
            &mut parts.headers,
            &exchange,
            |sc, d| {
                if let Some(draft) = audit_draft.as_mut() {
                    draft.set_cookie(
                        sc.name,
                        d.category(),
                        d.verdict.metric_label(),
                        d.reason.as_str(),
                    );
                }
                // Counted per (category, verdict) once the response is filtered: a typical
                // response has 7 headers in 2-3 groups, so 2-3 metric lookups instead of 7.
                let key = (d.category(), d.verdict.metric_label());
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, n)) => *n += 1,
                    None => groups.push((key, 1)),
                }
                if let Some(rec) = inventory.as_mut() {
                    rec.verdict(sc.name, d.verdict, no_consent);
                }
                match d.verdict {
                    Verdict::Keep => {}
                    Verdict::Drop => tracing::debug!(
                        host = %policy.name,
                        cookie = %String::from_utf8_lossy(sc.name),
                        category = d.category(),
                        verdict = d.verdict.as_str(),
                        reason = d.reason.as_str(),
                        "set-cookie dropped"
                    ),
                    // report-only: the SPEC wants each would-be drop logged, not only counted.
                    Verdict::WouldDrop => tracing::info!(
                        host = %policy.name,
                        cookie = %String::from_utf8_lossy(sc.name),
                        category = d.category(),
                        verdict = d.verdict.as_str(),
                        reason = d.reason.as_str(),
                        "set-cookie would be dropped (report-only)"
                    ),
                }
            },
        );
        // Releases this worker's inventory shard (never held across an await).
        drop(inventory);
        if summary.purge_capped && policy.mode == Mode::Enforce {
            self.metrics
                .purge_capped
                .get_or_create(&HostLabel {
                    host: policy.name.clone(),
                })
                .inc();
            tracing::info!(
                host = %policy.name,
                max_purge_headers = self.limits.max_purge_headers,
                "purge capped: the other refused cookies are deleted on later responses"
            );
        }
        if summary.consent_not_held > 0 {
            tracing::info!(
                host = %policy.name,
                cookie = %policy.consent.cookie,
                count = summary.consent_not_held,
                "consent set-cookie from the upstream ignored: a browser would not hold it for this URL"
            );
        }
        for ((category, verdict), n) in groups {
            self.counters
                .set_cookie(metrics, &policy.name, category, verdict, n);
        }
        let purged_names = purged;
        let purged = purged_names.len();
        let enforce = policy.mode == Mode::Enforce;
        if summary.any() || (purged > 0 && enforce) {
            add_vary_cookie(&mut parts.headers);
        }
        if let (Some((sink, request)), Some(mut draft)) = (audit, audit_draft) {
            // One record per response in which the gateway decided anything. The consent is
            // the one the filter judged by (the upstream's own consent cookie may have set it).
            if summary.any() || side.stripped > 0 || purged > 0 {
                draft.head(&crate::audit::ResponseHead {
                    time_ms: crate::unix_now_ms(),
                    host: &policy.name,
                    generation: snapshot.generation,
                    registry_digest: &snapshot.registry.digest,
                    mode: policy.mode.as_str(),
                    method: request.method.as_str(),
                    // Only the path: the audit log holds no query strings.
                    path: request_uri.path(),
                    status: parts.status.as_u16(),
                });
                draft.consent(
                    &policy.consent,
                    &request.cookies,
                    changed.as_ref().unwrap_or(&consent),
                );
                for n in &side.stripped_names {
                    draft.stripped(n);
                }
                for n in &purged_names {
                    draft.purged(n);
                }
                sink.response(&draft);
            }
        }
        self.count_request_cookies(
            policy,
            side.stripped,
            if enforce { "stripped" } else { "would_strip" },
        );
        self.count_request_cookies(
            policy,
            purged,
            if enforce { "purged" } else { "would_purge" },
        );
        if !enforce && (side.stripped > 0 || purged > 0) {
            tracing::info!(
                host = %policy.name,
                would_strip = side.stripped,
                would_purge = purged,
                "browser cookies refused by consent (report-only: nothing changed)"
            );
        }
        outcome.cookies = summary;
        outcome.stripped = side.stripped;
        outcome.purged = purged;

        if let (Some(client), Some(upstream)) = (client_upgrade, upstream_upgrade) {
            let held = Arc::clone(&snapshot);
            tokio::spawn(async move {
                let _registry = held;
                match tokio::try_join!(client, upstream) {
                    Ok((c, u)) => {
                        let mut c = TokioIo::new(c);
                        let mut u = TokioIo::new(u);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                            tracing::debug!(error = %e, "upgraded tunnel closed with an error");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
        Ok(Response::from_parts(
            parts,
            ProxyBody::Upstream(
                IdleBody::new(body, self.limits.idle_timeout),
                Some(side_door),
            ),
        ))
    }

    fn count_request_cookies(&self, policy: &HostPolicy, n: usize, action: &'static str) {
        if n > 0 {
            self.counters
                .request_cookies(&self.metrics, &policy.name, action, n as u64);
        }
    }

    /// `X-Forwarded-For`, `-Proto` and `-Host`: kept (and appended to) only from trusted proxies.
    fn set_forwarded(&self, headers: &mut HeaderMap, host: &str, peer: SocketAddr) {
        let ip = peer.ip().to_canonical();
        let trusted = self.trusted_proxies.iter().any(|c| c.contains(ip));
        let prior: Vec<&str> = if trusted {
            headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect()
        } else {
            Vec::new()
        };
        let xff = if prior.is_empty() {
            ip_header_value(ip)
        } else {
            HeaderValue::from_str(&format!("{}, {ip}", prior.join(", "))).ok()
        };
        if let Some(v) = xff {
            headers.insert(X_FORWARDED_FOR, v);
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.scheme));
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            if let Ok(v) = HeaderValue::from_str(host) {
                headers.insert(X_FORWARDED_HOST, v);
            }
        }
    }
}

/// Most of an abandoned response's body read (and thrown away) so that its upstream connection
/// can go back to the pool; a longer body closes the connection instead.
const ABANDONED_DRAIN_BYTES: usize = 64 * 1024;
/// Longest such a drain may take.
const ABANDONED_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends a bodiless request from a task of its own and waits for the response head (`None`
/// after `timeout`). If the caller is dropped meanwhile (the client went away), the task goes
/// on: the connect completes and the connection is pooled, the response head is read and up
/// to [`ABANDONED_DRAIN_BYTES`] of its body, so that the connection is pooled again. A client
/// that opens and cancels requests in a loop therefore costs the origin its requests, never a
/// new connection each.
async fn exchange_detached(
    client: Arc<UpstreamClient>,
    req: Request<UpstreamBody>,
    timeout: std::time::Duration,
) -> Option<Result<Response<Incoming>, hyper_util::client::legacy::Error>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok(result) = tokio::time::timeout(timeout, client.request(req)).await else {
            return;
        };
        if let Err(Ok(resp)) = tx.send(result) {
            drain_abandoned(resp.into_body()).await;
        }
    });
    rx.await.ok()
}

/// Reads an abandoned response body to its end if it is short and quick.
async fn drain_abandoned(mut body: Incoming) {
    use http_body_util::BodyExt;
    let drain = async {
        let mut read = 0;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, bytes::Bytes::len);
            if read > ABANDONED_DRAIN_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(ABANDONED_DRAIN_TIME, drain).await;
}

/// An address as a header value. IPv4 is written by hand: `Display` through `fmt` cost more than
/// the rest of the forwarding headers together (callgrind).
fn ip_header_value(ip: std::net::IpAddr) -> Option<HeaderValue> {
    let std::net::IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).ok();
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + (o / 10) % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n]).ok()
}

/// The host a request is for: the authority of an absolute-form target, else the one `Host`
/// header. Returned as sent (port included); the registry lookup normalises it.
fn request_host<B>(req: &Request<B>) -> Result<String, ProxyError> {
    if let Some(a) = req.uri().authority() {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400, absolute-form or not.
        if req.version() == http::Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
            return Err(ProxyError::NoHost);
        }
        return Ok(a.as_str().to_owned());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next().ok_or(ProxyError::NoHost)?;
    if hosts.next().is_some() {
        return Err(ProxyError::BadHost);
    }
    let host = host.to_str().map_err(|_| ProxyError::BadHost)?.trim();
    if host.is_empty() {
        return Err(ProxyError::BadHost);
    }
    Ok(host.to_owned())
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` and an `Upgrade` value).
fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes hop-by-hop headers: those `Connection` names, the fixed list, and `TE` unless it is
/// `trailers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these but `Connection`: one pass over the names (standard
    // names compare as small integers) instead of a hash lookup per name.
    let (mut connection, mut fixed, mut has_te) = (false, false, false);
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if name == header::TE {
            has_te = true;
        } else if HOP_BY_HOP.contains(name) {
            fixed = true;
        }
    }
    if connection {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    if connection || fixed {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
    if let Some(te) = headers.get(header::TE).filter(|_| has_te) {
        let trailers = te.as_bytes().split(|&b| b == b',').any(|t| {
            t.split(|&b| b == b';')
                .next()
                .is_some_and(|n| n.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// The response for a request the gateway could not proxy.
pub fn error_response(e: ProxyError) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(e.body()));
    *r.status_mut() = e.status();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if e.status() == StatusCode::BAD_REQUEST {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("cookie", "a=1"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["accept", "cookie"]);
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.10.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(ip).unwrap(), ip.to_string().as_str());
        }
        for o in 0..=255u8 {
            let ip = std::net::IpAddr::from([o, 255 - o, o / 3, o / 17]);
            assert_eq!(ip_header_value(ip).unwrap(), ip.to_string().as_str());
        }
    }

    #[test]
    fn te_trailers_is_kept() {
        let mut h = map(&[("te", "trailers, deflate;q=0.5")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").unwrap(), "trailers");
        let mut h = map(&[("te", "gzip"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("te").is_none());
        // Named by Connection: removed even when it says trailers.
        let mut h = map(&[("connection", "te"), ("te", "trailers")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
        // Only one of the fixed list, without Connection.
        let mut h = map(&[("keep-alive", "timeout=5"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        // Nothing to remove: nothing changes.
        let mut h = map(&[("accept", "*/*"), ("cookie", "a=1"), ("cookie", "b=2")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn upgrade_needs_connection_upgrade() {
        assert!(requested_upgrade(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ]))
        .is_some());
        assert!(requested_upgrade(&map(&[("upgrade", "websocket")])).is_none());
        assert!(requested_upgrade(&map(&[("connection", "upgrade")])).is_none());
    }

    #[test]
    fn host_comes_from_the_one_host_header() {
        let req = |hs: &[&str]| {
            let mut b = Request::builder().uri("/x");
            for h in hs {
                b = b.header("host", *h);
            }
            b.body(()).unwrap()
        };
        assert_eq!(
            request_host(&req(&["a.example:8080"])),
            Ok("a.example:8080".into())
        );
        assert_eq!(request_host(&req(&[])), Err(ProxyError::NoHost));
        assert_eq!(request_host(&req(&["a", "b"])), Err(ProxyError::BadHost));
        assert_eq!(request_host(&req(&[""])), Err(ProxyError::BadHost));
        let abs = Request::builder()
            .uri("http://b.example/x")
            .header("host", "a")
            .body(())
            .unwrap();
        assert_eq!(request_host(&abs), Ok("b.example".into()));
    }
}
