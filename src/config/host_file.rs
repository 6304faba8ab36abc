//! One registry file (`hosts/*.toml`) compiled into a [`HostPolicy`]: the cookie entries,
//! consent spec, upstream and its trust, with every error at its file, line and column.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::policy::consent::{ConsentSpec, Format};
use crate::policy::host::{HostPattern, HostTable};
use crate::policy::registry::{
    CookieEntry, CookieMatcher, HostPolicy, HostSpec, Mode, UnknownCookies, Upstream, NECESSARY,
};
use crate::policy::request_cookies::is_cookie_name;

use super::span::*;

// ---------------------------------------------------------------------------------------------
// hosts/*.toml

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHostFile {
    pub(super) hosts: Spanned<Vec<Spanned<String>>>,
    pub(super) upstream: Spanned<String>,
    pub(super) upstream_host: Option<Spanned<String>>,
    pub(super) upstream_ca: Option<Spanned<String>>,
    pub(super) mode: Option<Mode>,
    pub(super) unknown_cookies: Option<UnknownCookies>,
    #[serde(default)]
    pub(super) gpc: Vec<Spanned<String>>,
    pub(super) strip_request_cookies: Option<bool>,
    pub(super) purge: Option<bool>,
    pub(super) purge_unknown: Option<Spanned<bool>>,
    pub(super) consent: Option<RawConsent>,
    #[serde(default, rename = "cookie")]
    pub(super) cookies: Vec<Spanned<RawCookie>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsent {
    pub(super) cookie: Option<Spanned<String>>,
    pub(super) format: Option<Format>,
    pub(super) cookiebot_outside_region: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCookie {
    pub(super) name: Option<Spanned<String>>,
    pub(super) prefix: Option<Spanned<String>>,
    pub(super) category: Spanned<String>,
    pub(super) consent: Option<Spanned<Keys>>,
    pub(super) provider: Option<String>,
    pub(super) function: Option<String>,
    pub(super) purpose: Option<String>,
    #[serde(default)]
    pub(super) domains: Vec<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
}

/// `consent = "ga"` or `consent = ["ga", "C0002"]`.
pub(super) struct Keys(Vec<String>);

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

pub(super) fn is_category_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

pub(super) fn parse_upstream(s: &str) -> Result<Upstream, String> {
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
pub(super) fn load_ca_bundle(
    path: &Path,
) -> Result<crate::policy::registry::UpstreamTrust, String> {
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
pub(super) fn ca_unchanged(policy: &HostPolicy) -> bool {
    match &policy.upstream_ca {
        None => true,
        Some(t) => {
            std::fs::read(&t.path).is_ok_and(|b| <[u8; 32]>::from(Sha256::digest(&b)) == t.digest)
        }
    }
}

/// A compiled file's digest: its text's, and its `upstream_ca` bundle's if it names one.
pub(super) fn entry_digest(text: &str, policy: &HostPolicy) -> [u8; 32] {
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
pub(super) struct CompiledFile {
    pub(super) policy: std::sync::Arc<HostPolicy>,
    pub(super) host_spans: Vec<Range<usize>>,
}

/// Compiles one registry file's text.
pub fn parse_host_file(path: &Path, text: &str) -> Result<HostPolicy, ConfigErrors> {
    compile_host_file(path, text).map(|c| std::sync::Arc::unwrap_or_clone(c.policy))
}

pub(super) fn compile_host_file(path: &Path, text: &str) -> Result<CompiledFile, ConfigErrors> {
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

/// SHA-256 of one file's content.
pub(super) fn file_digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}
