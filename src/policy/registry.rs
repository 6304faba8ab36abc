//! The compiled registry: per-host cookie policy, indexed for the request path.
//!
//! Pure. Built by [`crate::config`] from the registry files; nothing here is optional or needs
//! re-checking per request. A [`Registry`] is immutable once built: a reload builds a new one.

// foldhash: the keys are the registry's own (names from config files), lookups never insert, so
// a fast hasher is safe here; SipHash was ~2 % of the request path.
use foldhash::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::consent::ConsentSpec;
use crate::policy::host::{HostPattern, HostTable};

/// `mode` of a registry file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Drop what consent does not allow.
    Enforce,
    /// Decide and report (logs, metrics), change nothing.
    ReportOnly,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::ReportOnly => "report-only",
        }
    }
}

/// `unknown_cookies` of a registry file: what happens to cookies the registry does not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownCookies {
    Drop,
    Keep,
}

/// How a registry entry matches cookie names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieMatcher {
    /// Exactly this name (case-sensitive).
    Name(String),
    /// Every name that starts with this (case-sensitive).
    Prefix(String),
}

impl CookieMatcher {
    pub fn as_str(&self) -> &str {
        match self {
            CookieMatcher::Name(s) | CookieMatcher::Prefix(s) => s,
        }
    }
}

/// The category name that needs no consent.
pub const NECESSARY: &str = "necessary";

/// One `[[cookie]]` entry, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieEntry {
    pub matcher: CookieMatcher,
    pub category: String,
    /// `category == "necessary"`: kept whatever the consent.
    pub necessary: bool,
    /// The category is in the host's `gpc` list: refused when the request has `Sec-GPC: 1`.
    pub refused_by_gpc: bool,
    /// Consent keys, any of which grants this cookie. Never empty (defaults to the category).
    pub consent: Vec<String>,
    pub provider: Option<String>,
    pub function: Option<String>,
    pub purpose: Option<String>,
    /// Domain variants to purge besides host-only.
    pub domains: Vec<String>,
    /// Path of purge deletions.
    pub path: String,
}

/// Where a host's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host:port`, port always present.
    pub authority: http::uri::Authority,
}

impl Upstream {
    pub fn is_tls(&self) -> bool {
        self.scheme == http::uri::Scheme::HTTPS
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// A host's `upstream_ca` bundle, read and parsed when the registry was compiled (never on the
/// request path). A reload reads the file again; `digest` (SHA-256 of its bytes) tells whether
/// the trust changed, and keys the upstream client built on it.
#[derive(Debug)]
pub struct UpstreamTrust {
    /// The bundle's path, resolved against the host file's directory.
    pub path: PathBuf,
    /// SHA-256 of the file's bytes as read.
    pub digest: [u8; 32],
    /// Its certificates, the only trust anchors of this host's upstream.
    pub roots: Arc<rustls::RootCertStore>,
}

/// One registry file, compiled: everything the request path needs for one portal.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// The file it came from.
    pub file: PathBuf,
    /// The first `hosts` entry: the `host` label of metrics and the name in logs.
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub upstream: Upstream,
    /// Host header (and SNI) sent upstream; `None` keeps the client's Host.
    pub upstream_host: Option<http::HeaderValue>,
    pub upstream_ca: Option<Arc<UpstreamTrust>>,
    /// The TLS server name sent upstream when it is not the `upstream` host: the host of
    /// `upstream_host`.
    pub upstream_sni: Option<Box<str>>,
    /// Which pooled upstream client serves this host: SHA-256 over the trust (`upstream_ca`'s
    /// digest, or the platform's roots) and the SNI name. Equal keys, interchangeable clients;
    /// a changed bundle gives a new key, so a new client.
    pub upstream_client_key: [u8; 32],
    pub mode: Mode,
    pub unknown_cookies: UnknownCookies,
    pub strip_request_cookies: bool,
    pub purge: bool,
    pub purge_unknown: bool,
    pub consent: ConsentSpec,
    /// Categories named by `gpc`.
    pub gpc: Vec<String>,
    /// Entries in file order.
    pub cookies: Vec<CookieEntry>,
    /// Exact names → index in `cookies`.
    exact: HashMap<Box<[u8]>, usize>,
    /// Prefixes → index in `cookies`. Invariant: longest prefix first.
    prefixes: Vec<(Box<[u8]>, usize)>,
}

/// What a [`HostPolicy`] is built from: one registry file's settings, by name (each is the
/// [`HostPolicy`] field of the same name). [`HostPolicy::new`] adds what is derived from them.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub file: PathBuf,
    pub hosts: Vec<HostPattern>,
    pub upstream: Upstream,
    pub upstream_host: Option<http::HeaderValue>,
    pub upstream_ca: Option<Arc<UpstreamTrust>>,
    pub mode: Mode,
    pub unknown_cookies: UnknownCookies,
    pub strip_request_cookies: bool,
    pub purge: bool,
    pub purge_unknown: bool,
    pub consent: ConsentSpec,
    pub gpc: Vec<String>,
    pub cookies: Vec<CookieEntry>,
}

impl HostPolicy {
    /// Builds the lookup indexes, the name, the upstream SNI and the upstream client key. The
    /// caller has checked that names and prefixes are unique.
    pub fn new(spec: HostSpec) -> Self {
        let mut exact = HashMap::default();
        let mut prefixes = Vec::new();
        for (i, c) in spec.cookies.iter().enumerate() {
            match &c.matcher {
                CookieMatcher::Name(n) => {
                    exact.entry(n.as_bytes().into()).or_insert(i);
                }
                CookieMatcher::Prefix(p) => prefixes.push((p.as_bytes().into(), i)),
            }
        }
        prefixes.sort_by_key(|p: &(Box<[u8]>, usize)| std::cmp::Reverse(p.0.len()));
        let name = spec
            .hosts
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        let upstream_sni: Option<Box<str>> = spec
            .upstream_host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(|h| {
                h.parse::<http::uri::Authority>()
                    .map_or_else(|_| h.into(), |a| a.host().into())
            });
        let upstream_client_key = {
            use sha2::{Digest, Sha256};
            let mut k = Sha256::new();
            match &spec.upstream_ca {
                Some(t) => {
                    k.update([1]);
                    k.update(t.digest);
                }
                None => k.update([0]),
            }
            if let Some(sni) = &upstream_sni {
                k.update([1]);
                k.update(sni.as_bytes());
            }
            k.finalize().into()
        };
        HostPolicy {
            file: spec.file,
            name,
            hosts: spec.hosts,
            upstream: spec.upstream,
            upstream_host: spec.upstream_host,
            upstream_ca: spec.upstream_ca,
            upstream_sni,
            upstream_client_key,
            mode: spec.mode,
            unknown_cookies: spec.unknown_cookies,
            strip_request_cookies: spec.strip_request_cookies,
            purge: spec.purge,
            purge_unknown: spec.purge_unknown,
            consent: spec.consent,
            gpc: spec.gpc,
            cookies: spec.cookies,
            exact,
            prefixes,
        }
    }

    /// The registry entry for a cookie name: an exact name beats any prefix, and the longest
    /// prefix wins.
    pub fn lookup(&self, name: &[u8]) -> Option<&CookieEntry> {
        if let Some(&i) = self.exact.get(name) {
            return self.cookies.get(i);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| name.starts_with(p))
            .and_then(|&(_, i)| self.cookies.get(i))
    }
}

/// One loaded registry: every host file, compiled and indexed.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    hosts: HostTable<Arc<HostPolicy>>,
    /// Policies in file-name order.
    pub policies: Vec<Arc<HostPolicy>>,
    /// SHA-256 over every file's name and content, hex.
    pub digest: String,
}

impl Registry {
    /// Builds the host table. The caller has checked that no host pattern is named twice.
    pub fn new(policies: Vec<HostPolicy>, digest: String) -> Self {
        Self::from_shared(policies.into_iter().map(Arc::new).collect(), digest)
    }

    /// [`Registry::new`] over policies that may also serve in other registries (a reload reuses
    /// the compiled policies of unchanged files).
    pub fn from_shared(policies: Vec<Arc<HostPolicy>>, digest: String) -> Self {
        let mut hosts = HostTable::default();
        for p in &policies {
            for h in &p.hosts {
                hosts.insert(h.clone(), Arc::clone(p));
            }
        }
        Registry {
            hosts,
            policies,
            digest,
        }
    }

    /// The policy serving a raw Host header value, if any.
    pub fn lookup(&self, raw_host: &[u8]) -> Option<&Arc<HostPolicy>> {
        self.hosts.lookup(raw_host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host whose registry is `entries` (`("name" or "prefix", value, category)`), compiled
    /// from a registry file as `check` reads it.
    fn policy(entries: &[(&str, &str, &str)]) -> HostPolicy {
        let mut text = String::from("hosts = [\"t.example\"]\nupstream = \"http://127.0.0.1:1\"\n");
        for (kind, value, category) in entries {
            text += &format!("[[cookie]]\n{kind} = \"{value}\"\ncategory = \"{category}\"\n");
        }
        crate::config::parse_host_file(std::path::Path::new("t.toml"), &text).unwrap()
    }

    fn category_of<'a>(p: &'a HostPolicy, name: &str) -> Option<&'a str> {
        p.lookup(name.as_bytes()).map(|e| e.category.as_str())
    }

    #[test]
    fn exact_name_beats_prefix() {
        let p = policy(&[
            ("prefix", "_ga", "statistical"),
            ("name", "_gat", "necessary"),
        ]);
        assert_eq!(category_of(&p, "_gat"), Some("necessary"));
        assert_eq!(category_of(&p, "_ga_X"), Some("statistical"));
    }

    #[test]
    fn prefix_match_prefers_longest() {
        let p = policy(&[
            ("prefix", "_ga", "a"),
            ("prefix", "_ga_", "b"),
            ("prefix", "_", "c"),
        ]);
        assert_eq!(category_of(&p, "_ga_ABC"), Some("b"));
        assert_eq!(category_of(&p, "_gax"), Some("a"));
        assert_eq!(category_of(&p, "_x"), Some("c"));
        assert_eq!(category_of(&p, "x_ga_"), None);
    }

    #[test]
    fn names_are_case_sensitive() {
        let p = policy(&[
            ("name", "sessionid", "necessary"),
            ("prefix", "_pk_id.", "statistical"),
        ]);
        assert_eq!(category_of(&p, "SessionID"), None);
        assert_eq!(category_of(&p, "_PK_id.1"), None);
        assert_eq!(category_of(&p, "_pk_id.1.abcd"), Some("statistical"));
    }

    #[test]
    fn non_utf8_name_matches_nothing_registered() {
        let p = policy(&[("prefix", "_", "c")]);
        assert!(p.lookup(b"\xff\xfe").is_none());
        assert!(p.lookup(b"").is_none());
    }
}
