//! The request path: one request from the client to the upstream and back. Read it in this order.
//!
//! 1. The edge ([`crate::edge::server`]) accepted the connection and hyper parsed the request
//!    head. An HTTP/1 request carries the head scanner's verdict on the bytes of that very head
//!    ([`crate::edge::scanner`] says how the two are paired). The edge calls [`Proxy::handle`].
//! 2. [`Proxy::handle`] cannot fail: it runs `Proxy::try_handle`, turns a [`ProxyError`] into a
//!    short response ([`error`]), writes the access log line and counts; a client that goes away
//!    before its response is complete is logged with status 499.
//! 3. `Proxy::try_handle`, one step after the other:
//!    - the host the request is for ([`header_ops::request_host`]) and the request checks
//!      ([`checks`]: the head verdict, `CONNECT`/`TRACE`, framing, `Host` against the target):
//!      400 or 405, nothing forwarded;
//!    - the host's policy in the registry snapshot (421 if none); the snapshot is held to the
//!      end of the request;
//!    - the consent, read once from the `Cookie` header ([`crate::policy::consent`]); the
//!      inventory sees every cookie name the browser sent;
//!    - the request side of the policy: refused cookies stripped, purge candidates noted
//!      ([`crate::policy::filter::strip_request`]);
//!    - the head rewritten for the upstream ([`header_ops::to_upstream`]: hop-by-hop headers,
//!      `X-Forwarded-*`, `Host`, the upstream's target);
//!    - sent through the host's pooled client ([`upstream`]) by `Proxy::send_upstream`, a
//!      bodiless request detached from the client; the wait for the response head is bounded by
//!      `upstream_response_timeout`;
//!    - the response head rewritten for the client ([`header_ops::to_client`]); a 1xx's
//!      `Set-Cookie` fields were counted as dropped on the way (hyper forwards no 1xx);
//!    - its `Set-Cookie` headers judged, purge deletions added, `Vary: Cookie`
//!      (`Proxy::filter_set_cookies`, [`crate::policy::filter::filter_response`]), each decision
//!      counted;
//!    - one audit record if anything was decided ([`crate::audit`]); the request-side counters;
//!    - the body streamed back ([`body`]: an idle timeout between frames, `Set-Cookie` fields
//!      of its trailers removed); after a 101, the two upgraded connections joined in a tunnel.

pub mod body;
pub mod checks;
pub mod error;
pub mod header_ops;
pub mod idle;
pub mod upstream;

pub use body::UpstreamBody;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{request, response, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::config::{Cidr, Limits};
use crate::control::live::{Live, Snapshot};
use crate::inventory::{Inventory, Shard};
use crate::metrics::{CounterCache, HostKind, HostLabel, Metrics};
use crate::policy::consent::Consent;
use crate::policy::decide::Verdict;
use crate::policy::filter::{
    add_vary_cookie, filter_response, strip_request, Exchange, RequestSide, Summary,
};
use crate::policy::jar::RequestUrl;
use crate::policy::registry::{HostPolicy, Mode};
use crate::proxy::body::{IdleBody, ProxyBody, SideDoor};
use crate::proxy::error::ProxyError;
use header_ops::Forwarded;
use upstream::{ResponseBody, UpstreamClient, UpstreamError, Upstreams};
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

/// What an audit record needs from the request, kept from before it is forwarded. Clones
/// share their bytes: nothing is copied unless a record is made.
struct AuditRequest<'a> {
    sink: &'a crate::audit::Sink,
    method: http::Method,
    /// The request's path (the URL's, kept anyway): the audit log holds no query strings.
    path: &'a str,
    /// The `Cookie` headers as the browser sent them (for the consent cookie's digest): the
    /// first, and the others (HTTP/2 clients may send several), so that the usual single header
    /// needs no vector.
    cookie: Option<HeaderValue>,
    more_cookies: Vec<HeaderValue>,
}

impl<'a> AuditRequest<'a> {
    fn new<B>(sink: &'a crate::audit::Sink, req: &Request<B>, path: &'a str) -> Self {
        let mut cookies = req.headers().get_all(header::COOKIE).iter();
        AuditRequest {
            sink,
            method: req.method().clone(),
            path,
            cookie: cookies.next().cloned(),
            more_cookies: cookies.cloned().collect(),
        }
    }

    /// Hands the sink one record of the response, if the gateway decided anything in it. The
    /// consent recorded is the one the filter judged by (the upstream's own consent cookie may
    /// have set it).
    fn record(
        self,
        snapshot: &Snapshot,
        policy: &HostPolicy,
        consent: &Consent,
        side: &RequestSide<'_>,
        filtered: &mut Filtered<'_>,
        status: StatusCode,
    ) {
        let Some(mut draft) = filtered.audit.take() else {
            return;
        };
        // One record per response in which the gateway decided anything.
        if filtered.summary.any() || side.stripped > 0 || !filtered.purged.is_empty() {
            draft.head(&crate::audit::ResponseHead {
                time_ms: crate::unix_now_ms(),
                host: &policy.name,
                generation: snapshot.generation,
                registry_digest: &snapshot.registry.digest,
                mode: policy.mode.as_str(),
                method: self.method.as_str(),
                path: self.path,
                status: status.as_u16(),
            });
            draft.consent(
                &policy.consent,
                self.cookie.iter().chain(&self.more_cookies),
                filtered.changed.as_ref().unwrap_or(consent),
            );
            for n in &side.stripped_names {
                draft.stripped(n);
            }
            for n in &filtered.purged {
                draft.purged(n);
            }
            self.sink.response(&draft);
        }
    }
}

/// What the response side of the policy did: for the access log, the counters and the audit
/// record.
struct Filtered<'s> {
    summary: Summary,
    /// The browser cookies purged (would be, in report-only mode), by name.
    purged: Vec<&'s [u8]>,
    /// The consent the filter judged by, when the response's own consent cookie changed it
    /// (`None`: the request's stands).
    changed: Option<Consent>,
    /// With the audit log: the record being built (one buffer), each `Set-Cookie` decision in
    /// it as it came.
    audit: Option<crate::audit::ResponseDraft>,
}

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
                // The policy, not a copy of its name: nothing allocated unless the body is
                // abandoned.
                let (policy, method, uri) = (
                    outcome.policy.clone(),
                    flight.method.clone(),
                    flight.uri.clone(),
                );
                let start = flight.start;
                ProxyBody::Upstream(
                    b.on_abandon(Box::new(move || {
                        let host = policy.as_ref().map_or("unknown", |p| p.name.as_str());
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
                            .get_or_create(&HostLabel {
                                host: host.to_owned(),
                            })
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
        let host = header_ops::request_host(&req)?;
        checks::check_request(&mut req)?;
        let policy: &Arc<HostPolicy> = snapshot
            .registry
            .lookup(host.as_str().as_bytes())
            .ok_or(ProxyError::UnknownHost)?;
        outcome.policy = Some(Arc::clone(policy));

        // What the browser consents to and what it sent, read before anything is changed.
        let consent = crate::policy::consent::from_request_headers(&policy.consent, req.headers());
        if let Some(shard) = &self.inventory {
            // Every name the browser sent, before the request side strips any.
            shard
                .recorder(policy, crate::unix_now())
                .request_cookies(req.headers());
        }
        let client_version = req.version();
        // Shares the request's bytes: the URL cookies are judged against (rule 4, purge).
        let request_uri = req.uri().clone();
        // With the audit log on: what a record of this request needs (the `Cookie` values are
        // shared, not copied).
        let audit = self
            .audit
            .as_ref()
            .map(|sink| AuditRequest::new(sink, &req, request_uri.path()));
        let upgrade = header_ops::requested_upgrade(req.headers());
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

        // The request the upstream gets: refused cookies stripped, the head rewritten.
        let (mut parts, body) = req.into_parts();
        let side = strip_request(policy, &consent, &mut parts.headers);
        let from = Forwarded::new(peer, &self.trusted_proxies, self.scheme, &host);
        header_ops::to_upstream(&mut parts, policy, &from, upgrade.as_ref())?;
        let takes_trailers = header_ops::takes_trailers(client_version, &parts.headers);
        // A cookie outside the response head is never forwarded (SPEC, Trailers): the body
        // removes the trailers' ([`ProxyBody`]), and a 1xx's are counted (`send_upstream`).
        let side_door = SideDoor {
            metrics: Arc::clone(&self.metrics),
            policy: Arc::clone(policy),
        };
        let resp = self
            .send_upstream(
                policy,
                parts,
                body,
                client_version,
                upgrade.is_some(),
                side_door.clone(),
            )
            .await?;

        // The response the client gets: its head rewritten, then its cookies judged, purged,
        // counted and audited.
        let (mut parts, body, upstream_upgrade) = client_response(
            resp,
            client_upgrade.is_some(),
            client_version,
            takes_trailers,
        )?;
        let exchange = Exchange {
            url: RequestUrl::new(host.as_str(), request_uri.path(), self.scheme == "https"),
            now: crate::unix_now(),
            max_purge_headers: self.limits.max_purge_headers,
        };
        let mut filtered = self.filter_set_cookies(
            policy,
            &consent,
            &side,
            &mut parts.headers,
            &exchange,
            audit.is_some(),
        );
        if let Some(request) = audit {
            request.record(
                &snapshot,
                policy,
                &consent,
                &side,
                &mut filtered,
                parts.status,
            );
        }
        self.count_request_side(policy, &side, &filtered);
        outcome.cookies = filtered.summary;
        outcome.stripped = side.stripped;
        outcome.purged = filtered.purged.len();

        if let (Some(client), Some(upstream)) = (client_upgrade, upstream_upgrade) {
            tokio::spawn(tunnel(client, upstream, Arc::clone(&snapshot)));
        }
        Ok(Response::from_parts(
            parts,
            ProxyBody::Upstream(
                IdleBody::new(body, self.limits.idle_timeout),
                Some(side_door),
            ),
        ))
    }

    /// Sends the upstream request through the host's pooled client and waits for the response
    /// head. `upstream_response_timeout` bounds the wait once the request has been sent: a slow
    /// upload is bounded by `idle_timeout` between its frames instead. A bodiless request that is
    /// not an upgrade (`tunnel`) is sent from a task of its own ([`exchange_detached`]). The
    /// `Set-Cookie` fields of an informational (1xx) response are counted as dropped through
    /// `informational`.
    async fn send_upstream(
        &self,
        policy: &HostPolicy,
        parts: request::Parts,
        body: Incoming,
        client_version: Version,
        tunnel: bool,
        informational: SideDoor,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let (sent_tx, sent) = tokio::sync::oneshot::channel();
        let mut req = Request::from_parts(
            parts,
            IdleBody::new(body, self.limits.idle_timeout).notify_end(sent_tx),
        );
        // hyper's client reads 1xx responses and passes none on (and its server sends no 1xx but
        // its own 100 Continue), so a 1xx's cookies never reach the client; this hook only counts
        // and logs those of an HTTP/1.1 upstream (the HTTP/2 library skips an HTTP/2 upstream's
        // 1xx without showing them).
        hyper::ext::on_informational(&mut req, move |res| {
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
        if client_version == Version::HTTP_2 {
            // Let the connection read what followed this stream's HEADERS first: a stream the
            // client resets at once (rapid reset sends HEADERS and RST_STREAM together) is then
            // dropped here, before it costs the origin anything.
            tokio::task::yield_now().await;
        }
        let sent = if !tunnel && hyper::body::Body::is_end_stream(req.body()) {
            // No body to stream: the exchange runs detached, so that a client that cancels
            // (closes, resets its stream) does not abort the upstream connect or the request
            // on a pooled connection, which would cost a new upstream connection each time.
            exchange_detached(client, req, response_timeout).await
        } else {
            tokio::select! {
                r = client.request(req) => Some(
                    r.map(|r| r.map(ResponseBody::Client)).map_err(UpstreamError::Client)
                ),
                () = deadline => None,
            }
        };
        match sent {
            None => Err(ProxyError::UpstreamTimeout),
            Some(Err(e)) => {
                tracing::debug!(error = ?e, "upstream request failed");
                Err(ProxyError::from_upstream(&e))
            }
            Some(Ok(r)) => Ok(r),
        }
    }

    /// The response side of the policy on the response head's `headers`
    /// ([`filter_response`]): each `Set-Cookie` judged (and shown to the inventory), purge
    /// deletions added, `Vary: Cookie` when the response depends on the cookies; each decision
    /// counted, a drop logged at debug, a would-be drop (report only) at info. With `audit`, each
    /// decision also goes into an audit record.
    fn filter_set_cookies<'s>(
        &self,
        policy: &Arc<HostPolicy>,
        consent: &Consent,
        side: &'s RequestSide<'_>,
        headers: &mut HeaderMap,
        exchange: &Exchange<'_>,
        audit: bool,
    ) -> Filtered<'s> {
        let metrics = &self.metrics;
        let mut groups: Vec<((&str, &'static str), u64)> = Vec::with_capacity(4);
        // The inventory sees every upstream Set-Cookie (its attributes, then its verdict), as
        // the filter parsed it: the name and the attributes are not looked for twice.
        let mut inventory = self
            .inventory
            .as_ref()
            .map(|s| s.recorder(policy, exchange.now));
        let no_consent = consent.source == crate::policy::consent::Source::Missing;
        // The audit record being built (one buffer): the filter's decisions go in as they come.
        let mut audit_draft = audit.then(crate::audit::ResponseDraft::new);
        let (summary, purged, changed) =
            filter_response(policy, consent, side, headers, exchange, |sc, d| {
                if let Some(draft) = audit_draft.as_mut() {
                    draft.set_cookie(sc.name, d.category(), d.verdict, d.reason);
                }
                // Counted per (category, verdict) once the response is filtered: a typical
                // response has 7 headers in 2-3 groups, so 2-3 metric lookups instead of 7.
                let key = (d.category(), d.verdict.metric_label());
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, n)) => *n += 1,
                    None => groups.push((key, 1)),
                }
                if let Some(rec) = inventory.as_mut() {
                    rec.set_cookie_parts(sc.name, sc.attributes);
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
            });
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
        self.counters.set_cookies(metrics, &policy.name, &groups);
        if summary.any() || (!purged.is_empty() && policy.mode == Mode::Enforce) {
            add_vary_cookie(headers);
        }
        Filtered {
            summary,
            purged,
            changed,
            audit: audit_draft,
        }
    }

    /// Counts the browser cookies stripped and purged (would be, in report-only mode, where a
    /// line says so too).
    fn count_request_side(
        &self,
        policy: &HostPolicy,
        side: &RequestSide<'_>,
        filtered: &Filtered<'_>,
    ) {
        let enforce = policy.mode == Mode::Enforce;
        let purged = filtered.purged.len();
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
    }

    fn count_request_cookies(&self, policy: &HostPolicy, n: usize, action: &'static str) {
        if n > 0 {
            self.counters
                .request_cookies(&self.metrics, &policy.name, action, n as u64);
        }
    }
}

/// The upstream's response as the client gets it: its head rewritten
/// ([`header_ops::to_client`]), its body, and after a 101 the upstream's side of the tunnel. A
/// 101 to a request that did not ask to upgrade (`asked_upgrade`) is the upstream's fault.
fn client_response(
    mut resp: Response<ResponseBody>,
    asked_upgrade: bool,
    client: Version,
    takes_trailers: bool,
) -> Result<(response::Parts, ResponseBody, Option<OnUpgrade>), ProxyError> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && !asked_upgrade {
        return Err(ProxyError::UpstreamProtocol);
    }
    let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut resp));
    let (mut parts, body) = resp.into_parts();
    let upgraded = if switching {
        parts.headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    header_ops::to_client(&mut parts, client, takes_trailers, upgraded);
    Ok((parts, body, upstream_upgrade))
}

/// Joins the client's and the upstream's connections after a 101 until either side closes.
/// `held` is the registry snapshot the request was served with, kept as long as the tunnel.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, held: Arc<Snapshot>) {
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
}

/// Sends a bodiless request and waits for the response head (`None` after `timeout`). If the
/// caller is dropped meanwhile (the client went away), the exchange goes on by itself: the
/// connect completes and the connection is pooled, the response head is read and up to
/// [`upstream::ABANDONED_DRAIN_BYTES`] of its body, so that the connection is pooled again. A
/// client that opens and cancels requests in a loop therefore costs the origin its requests,
/// never a new connection each. To a plain-http upstream the request goes through the worker's
/// own pool, in this task ([`upstream::H1Pool::exchange`]); to others, from a task of its own.
async fn exchange_detached(
    client: Arc<UpstreamClient>,
    req: Request<UpstreamBody>,
    timeout: std::time::Duration,
) -> Option<Result<Response<ResponseBody>, UpstreamError>> {
    if let Some(pool) = client.own_pool() {
        return pool.exchange(req, timeout).await;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok(result) = tokio::time::timeout(timeout, client.request(req)).await else {
            return;
        };
        let result = result
            .map(|r| r.map(ResponseBody::Client))
            .map_err(UpstreamError::Client);
        if let Err(Ok(resp)) = tx.send(result) {
            upstream::drain_abandoned(resp.into_body()).await;
        }
    });
    rx.await.ok()
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
