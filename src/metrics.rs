//! Prometheus metrics (names fixed by the SPEC). Label values stay bounded: `host` is the first
//! name of a registry file (`unknown` for a 421), `category` a registry category or `unknown`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `http`, `https` or `admin`.
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostCode {
    pub host: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CookieLabels {
    pub host: String,
    pub category: String,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostKind {
    pub host: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostAction {
    pub host: String,
    pub action: &'static str,
}

/// Every metric of the process. Cheap to share (`Arc`); all handles are atomic.
pub struct Metrics {
    registry: Registry,
    /// `consent_gateway_requests_total{host,code}`
    pub requests: Family<HostCode, Counter>,
    /// `consent_gateway_request_duration_seconds`
    pub duration: Histogram,
    /// `consent_gateway_set_cookie_total{host,category,verdict}`
    pub set_cookie: Family<CookieLabels, Counter>,
    /// `consent_gateway_request_cookies_total{host,action}`: browser cookies stripped or purged.
    pub request_cookies: Family<HostAction, Counter>,
    /// `consent_gateway_config_reloads_total{result}`
    pub reloads: Family<ResultLabel, Counter>,
    /// `consent_gateway_config_last_reload_success`
    pub last_reload_success: Gauge,
    /// `consent_gateway_config_generation`
    pub generation: Gauge,
    /// `consent_gateway_upstream_errors_total{host,kind}`
    pub upstream_errors: Family<HostKind, Counter>,
    /// `consent_gateway_connections_open{listener}`
    pub connections_open: Family<ListenerLabel, Gauge>,
    /// `consent_gateway_client_aborts_total{host}`: requests the client abandoned before the
    /// response was complete (logged with status 499).
    pub client_aborts: Family<HostLabel, Counter>,
    /// `consent_gateway_purge_capped_total{host}`: responses whose purge deletions hit
    /// `[limits] max_purge_headers` (the other refused cookies wait for later responses).
    pub purge_capped: Family<HostLabel, Counter>,
    /// `consent_gateway_worker_connections_open{worker}`: the same, by proxy worker, so that an
    /// uneven split of connections between workers shows.
    pub worker_connections_open: Family<WorkerLabel, Gauge>,
    /// `consent_gateway_h2_cancel_limited_total`: HTTP/2 connections closed because their
    /// client cancelled streams faster than the per-connection budget.
    pub h2_cancel_limited: Counter,
    /// `consent_gateway_connections_refused_total`: over `max_connections`.
    pub connections_refused: Counter,
    /// `consent_gateway_tls_cert_not_after{host}`: seconds since the epoch; `host` is the
    /// certificate's file name without `.crt`.
    pub tls_cert_not_after: Family<HostLabel, Gauge>,
    /// `consent_gateway_audit_lost_total`: audit records that never reached the log (queue
    /// full, or a failed write).
    pub audit_lost: Counter,
    /// `consent_gateway_audit_write_errors_total`: failed opens, writes and rotations of the
    /// audit log.
    pub audit_write_errors: Counter,
    /// `consent_gateway_audit_records_total`: audit records written.
    pub audit_records: Counter,
    /// `consent_gateway_inventory_unregistered{host}`: distinct unregistered cookie names seen
    /// (set from the inventory when `/metrics` is read).
    pub inventory_unregistered: Family<HostLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("consent_gateway");
        let requests = Family::<HostCode, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by registry host and status code",
            requests.clone(),
        );
        let buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        let duration = Histogram::new(buckets.into_iter());
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head",
            duration.clone(),
        );
        let set_cookie = Family::<CookieLabels, Counter>::default();
        registry.register(
            "set_cookie",
            "Set-Cookie headers from upstreams, by host, category and verdict",
            set_cookie.clone(),
        );
        let request_cookies = Family::<HostAction, Counter>::default();
        registry.register(
            "request_cookies",
            "Browser cookies refused by consent, by host and action (stripped, purged, would_strip, would_purge)",
            request_cookies.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Registry reloads by result",
            reloads.clone(),
        );
        let last_reload_success = Gauge::default();
        registry.register(
            "config_last_reload_success",
            "1 if the last reload succeeded, 0 if it failed",
            last_reload_success.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the registry serving",
            generation.clone(),
        );
        let upstream_errors = Family::<HostKind, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream failures by host and kind",
            upstream_errors.clone(),
        );
        let connections_open = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "connections_open",
            "Client connections open, by listener (http, https, admin)",
            connections_open.clone(),
        );
        let client_aborts = Family::<HostLabel, Counter>::default();
        registry.register(
            "client_aborts",
            "Requests the client abandoned before the response was complete (logged as 499)",
            client_aborts.clone(),
        );
        let purge_capped = Family::<HostLabel, Counter>::default();
        registry.register(
            "purge_capped",
            "Responses whose purge deletions hit max_purge_headers",
            purge_capped.clone(),
        );
        let worker_connections_open = Family::<WorkerLabel, Gauge>::default();
        registry.register(
            "worker_connections_open",
            "Client connections open, by proxy worker",
            worker_connections_open.clone(),
        );
        let h2_cancel_limited = Counter::default();
        registry.register(
            "h2_cancel_limited",
            "HTTP/2 connections closed for cancelling (resetting) streams faster than allowed",
            h2_cancel_limited.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Client connections refused over max_connections",
            connections_refused.clone(),
        );
        let tls_cert_not_after = Family::<HostLabel, Gauge>::default();
        registry.register(
            "tls_cert_not_after",
            "Expiry of each served certificate, seconds since the epoch",
            tls_cert_not_after.clone(),
        );
        let audit_lost = Counter::default();
        registry.register(
            "audit_lost",
            "Audit records that never reached the audit log (queue full or write failed)",
            audit_lost.clone(),
        );
        let audit_write_errors = Counter::default();
        registry.register(
            "audit_write_errors",
            "Failed opens, writes and rotations of the audit log",
            audit_write_errors.clone(),
        );
        let audit_records = Counter::default();
        registry.register(
            "audit_records",
            "Audit records written",
            audit_records.clone(),
        );
        let inventory_unregistered = Family::<HostLabel, Gauge>::default();
        registry.register(
            "inventory_unregistered",
            "Distinct cookie names seen that the host's registry does not list",
            inventory_unregistered.clone(),
        );
        Metrics {
            registry,
            audit_lost,
            audit_write_errors,
            audit_records,
            tls_cert_not_after,
            inventory_unregistered,
            requests,
            duration,
            set_cookie,
            request_cookies,
            reloads,
            last_reload_success,
            generation,
            upstream_errors,
            connections_open,
            client_aborts,
            purge_capped,
            worker_connections_open,
            connections_refused,
            h2_cancel_limited,
        }
    }

    /// Sets `consent_gateway_tls_cert_not_after` to exactly the certificates serving: each one's
    /// name (the file stem) and `notAfter` (Unix seconds).
    pub fn set_certs<'a>(&self, certs: impl IntoIterator<Item = (&'a str, i64)>) {
        self.tls_cert_not_after.clear();
        for (name, not_after) in certs {
            self.tls_cert_not_after
                .get_or_create(&HostLabel {
                    host: name.to_owned(),
                })
                .set(not_after);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The counters one proxy worker bumps on every request, kept by host so that a request finds
/// them without building a label set: `Family::get_or_create` allocates the label strings and
/// hashes them with SipHash under the family's lock, three times per request. Each worker has its
/// own cache, so its lock is never contended. Bounded like the labels: registry names, status
/// codes, categories.
#[derive(Default)]
pub struct CounterCache {
    hosts: std::sync::Mutex<foldhash::HashMap<String, HostCounters>>,
}

#[derive(Default)]
struct HostCounters {
    codes: Vec<(u16, Counter)>,
    cookies: Vec<((String, &'static str), Counter)>,
    actions: Vec<(&'static str, Counter)>,
}

impl CounterCache {
    fn with_host(&self, host: &str, f: impl FnOnce(&mut HostCounters)) {
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = hosts.get_mut(host) {
            f(h);
            return;
        }
        f(hosts.entry(host.to_owned()).or_default());
    }

    /// `consent_gateway_requests_total{host,code}` += 1.
    pub fn request(&self, m: &Metrics, host: &str, code: u16) {
        self.with_host(host, |h| {
            cached(
                &mut h.codes,
                |k| *k == code,
                || {
                    let labels = HostCode {
                        host: host.to_owned(),
                        code,
                    };
                    (code, m.requests.get_or_create(&labels).clone())
                },
            )
            .inc();
        });
    }

    /// `consent_gateway_set_cookie_total{host,category,verdict}` += `n`.
    pub fn set_cookie(
        &self,
        m: &Metrics,
        host: &str,
        category: &str,
        verdict: &'static str,
        n: u64,
    ) {
        self.set_cookies(m, host, &[((category, verdict), n)]);
    }

    /// [`CounterCache::set_cookie`] for each `((category, verdict), n)` of one response: one
    /// lock and one host lookup for all of them.
    pub fn set_cookies(&self, m: &Metrics, host: &str, groups: &[((&str, &'static str), u64)]) {
        if groups.is_empty() {
            return;
        }
        self.with_host(host, |h| {
            for &((category, verdict), n) in groups {
                let is = |(cat, v): &(String, &str)| cat == category && *v == verdict;
                cached(&mut h.cookies, is, || {
                    let labels = CookieLabels {
                        host: host.to_owned(),
                        category: category.to_owned(),
                        verdict,
                    };
                    let c = m.set_cookie.get_or_create(&labels).clone();
                    ((category.to_owned(), verdict), c)
                })
                .inc_by(n);
            }
        });
    }

    /// `consent_gateway_request_cookies_total{host,action}` += `n`.
    pub fn request_cookies(&self, m: &Metrics, host: &str, action: &'static str, n: u64) {
        self.with_host(host, |h| {
            cached(
                &mut h.actions,
                |a| *a == action,
                || {
                    let labels = HostAction {
                        host: host.to_owned(),
                        action,
                    };
                    (action, m.request_cookies.get_or_create(&labels).clone())
                },
            )
            .inc_by(n);
        });
    }
}

/// The counter in `list` whose key `is` accepts; on first use, `make` gives its key and its
/// handle from the metric family.
fn cached<K>(
    list: &mut Vec<(K, Counter)>,
    is: impl Fn(&K) -> bool,
    make: impl FnOnce() -> (K, Counter),
) -> &Counter {
    let at = match list.iter().position(|(k, _)| is(k)) {
        Some(at) => at,
        None => {
            list.push(make());
            list.len() - 1
        }
    };
    &list[at].1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_counts_into_the_families() {
        let m = Metrics::new();
        let a = CounterCache::default();
        let b = CounterCache::default();
        a.request(&m, "portal.test", 200);
        a.request(&m, "portal.test", 200);
        b.request(&m, "portal.test", 200);
        a.request(&m, "portal.test", 502);
        a.request(&m, "unknown", 421);
        a.set_cookie(&m, "portal.test", "marketing", "dropped", 3);
        b.set_cookie(&m, "portal.test", "marketing", "dropped", 1);
        a.set_cookie(&m, "portal.test", "marketing", "kept", 2);
        a.request_cookies(&m, "portal.test", "purged", 4);
        let text = m.encode();
        for line in [
            r#"consent_gateway_requests_total{host="portal.test",code="200"} 3"#,
            r#"consent_gateway_requests_total{host="portal.test",code="502"} 1"#,
            r#"consent_gateway_requests_total{host="unknown",code="421"} 1"#,
            r#"consent_gateway_set_cookie_total{host="portal.test",category="marketing",verdict="dropped"} 4"#,
            r#"consent_gateway_set_cookie_total{host="portal.test",category="marketing",verdict="kept"} 2"#,
            r#"consent_gateway_request_cookies_total{host="portal.test",action="purged"} 4"#,
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
