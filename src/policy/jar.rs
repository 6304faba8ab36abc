//! What a browser's cookie jar would do with a `Set-Cookie`, for one request URL.
//!
//! Pure. [`would_hold`] answers the one question response rule 4 (and Complianz's per-category
//! cookies) ask: would a browser store this `Set-Cookie`, received in the response to this URL,
//! and send it back with a request for the same URL? It follows the storage model of RFC 6265bis
//! §5.7 (Domain domain-match and not a public suffix, `Secure` only over https, the
//! `__Secure-`/`__Host-` prefix rules) and the retrieval rule that matters for the same URL
//! (Path path-match, §5.1.4, with the default-path when the cookie has none).
//!
//! [`purge_domains`] gives the `Domain` values a purge deletion must be sent under: every domain
//! from the request host up to its registrable domain. The Public Suffix List is the `psl`
//! crate's copy, compiled in (updated by `cargo update -p psl`; the crate is republished by its
//! maintainers' daily job whenever the list changes).

use std::borrow::Cow;
use std::net::IpAddr;

use crate::policy::set_cookie::SetCookie;

/// The URL of the request a response answers, as far as cookies care. Borrows from the
/// request: building one allocates only for a host with upper-case letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestUrl<'a> {
    /// Canonical host: lower case, no port, no trailing dot; an IPv6 address without brackets;
    /// empty when the `Host` could not name one (nothing domain-matches it then).
    pub host: Cow<'a, str>,
    /// The path as sent (percent-encoding kept, no query); `/` when the request had none.
    pub path: &'a str,
    /// The request came over https (a `Secure` cookie needs it).
    pub secure: bool,
}

impl<'a> RequestUrl<'a> {
    /// From a `Host` header value (or `:authority`), a request path and the scheme.
    pub fn new(raw_host: &'a str, path: &'a str, secure: bool) -> RequestUrl<'a> {
        RequestUrl {
            host: canonical_host(raw_host),
            path: if path.starts_with('/') { path } else { "/" },
            secure,
        }
    }

    /// The host is an IP address: no `Domain` attribute can widen a cookie beyond it.
    pub fn host_is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }
}

/// A `Host` value as cookies compare it (see [`RequestUrl::host`]).
fn canonical_host(raw: &str) -> Cow<'_, str> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, after)) if after.is_empty() || after.starts_with(':') => v6,
            _ => return Cow::Borrowed(""),
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return Cow::Borrowed(""),
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if !host.bytes().all(|b| b.is_ascii_graphic()) {
        return Cow::Borrowed("");
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Why a browser would not hold a `Set-Cookie` for the request URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Empty name and value, or name and value over 4,096 bytes together (§5.7 steps 2-3).
    Malformed,
    /// `Domain` does not domain-match the request host.
    ForeignDomain,
    /// `Domain` is a public suffix (other than the request host itself).
    PublicSuffixDomain,
    /// `Secure` on a plain-http request.
    SecureOverHttp,
    /// A `__Secure-` name without `Secure`, or a `__Host-` name without `Secure`, with a
    /// `Domain`, or without `Path=/`; or a nameless cookie whose value starts with a prefix.
    PrefixBroken,
    /// The cookie's path does not path-match the request path.
    PathElsewhere,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::ForeignDomain => "foreign_domain",
            Refusal::PublicSuffixDomain => "public_suffix_domain",
            Refusal::SecureOverHttp => "secure_over_http",
            Refusal::PrefixBroken => "prefix_broken",
            Refusal::PathElsewhere => "path_elsewhere",
        }
    }
}

/// Whether a name starts with a cookie prefix, compared case-insensitively as RFC 6265bis asks.
pub fn has_prefix(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// `__Secure-`
pub const SECURE_PREFIX: &[u8] = b"__Secure-";
/// `__Host-`
pub const HOST_PREFIX: &[u8] = b"__Host-";

/// Whether a browser would store `sc`, received for `url`, and send it back with a request for
/// `url`. `Ok(())` when it would; otherwise the first rule it breaks.
pub fn would_hold(sc: &SetCookie<'_>, url: &RequestUrl<'_>) -> Result<(), Refusal> {
    // §5.7 steps 2-3 (and §5.6 steps 2-4 of the parser).
    if (sc.name.is_empty() && sc.value.is_empty()) || sc.name.len() + sc.value.len() > 4096 {
        return Err(Refusal::Malformed);
    }
    // Domain (§5.7 steps 5-7). The attribute's leading dot is dropped and it is compared in
    // lower case.
    let host_only = match sc.domain {
        None => true,
        Some(raw) => {
            let raw = raw.strip_prefix(b".").unwrap_or(raw);
            let domain = String::from_utf8_lossy(raw).to_ascii_lowercase();
            if domain.is_empty() {
                true
            } else if !url.host_is_ip() && is_public_suffix(&domain) {
                // A public suffix is only accepted as the host itself, and then host-only.
                if domain == url.host {
                    true
                } else {
                    return Err(Refusal::PublicSuffixDomain);
                }
            } else if domain_match(&url.host, &domain) {
                false
            } else {
                return Err(Refusal::ForeignDomain);
            }
        }
    };
    // Secure (§5.7 step 15, "secure-only-flag" over a non-secure scheme).
    if sc.secure && !url.secure {
        return Err(Refusal::SecureOverHttp);
    }
    // Prefixes (§5.7 steps 18-20).
    if sc.name.is_empty()
        && (has_prefix(sc.value, SECURE_PREFIX) || has_prefix(sc.value, HOST_PREFIX))
    {
        return Err(Refusal::PrefixBroken);
    }
    if has_prefix(sc.name, SECURE_PREFIX) && !sc.secure {
        return Err(Refusal::PrefixBroken);
    }
    if has_prefix(sc.name, HOST_PREFIX)
        && !(sc.secure && host_only && sc.has_path_attribute && sc.path == Some(&b"/"[..]))
    {
        return Err(Refusal::PrefixBroken);
    }
    // Sent back for the same URL: the host matches by construction, the scheme was checked;
    // the path must path-match (§5.8.3).
    let cookie_path: &[u8] = match sc.path {
        Some(p) => p,
        None => default_path(url.path.as_bytes()),
    };
    if !path_match(url.path.as_bytes(), cookie_path) {
        return Err(Refusal::PathElsewhere);
    }
    Ok(())
}

/// RFC 6265bis §5.1.3: `domain` domain-matches `host` when they are identical, or when `domain`
/// is a suffix of `host` preceded by a `.` and `host` is a host name, not an IP address. Both are
/// canonical (lower case).
pub fn domain_match(host: &str, domain: &str) -> bool {
    if host == domain {
        return true;
    }
    host.len() > domain.len()
        && host.ends_with(domain)
        && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
        && host.parse::<IpAddr>().is_err()
}

/// RFC 6265bis §5.1.4: the default-path of a request path.
pub fn default_path(path: &[u8]) -> &[u8] {
    if !path.starts_with(b"/") {
        return b"/";
    }
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) | None => b"/",
        Some(at) => &path[..at],
    }
}

/// RFC 6265bis §5.1.4: whether `request_path` path-matches `cookie_path`.
pub fn path_match(request_path: &[u8], cookie_path: &[u8]) -> bool {
    if request_path == cookie_path {
        return true;
    }
    request_path.starts_with(cookie_path)
        && (cookie_path.ends_with(b"/") || request_path.get(cookie_path.len()) == Some(&b'/'))
}

/// Whether a canonical domain name is a public suffix (by the Public Suffix List with its
/// implicit `*` rule, so an unlisted top-level label such as `test` is one).
pub fn is_public_suffix(domain: &str) -> bool {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    !d.is_empty() && psl::suffix(d.as_bytes()).is_some_and(|s| s.as_bytes() == d.as_bytes())
}

/// The registrable domain (eTLD+1) of a canonical host name; `None` for an IP address, a single
/// label, or a public suffix.
pub fn registrable_domain(host: &str) -> Option<&str> {
    if host.is_empty() || !host.contains('.') || host.parse::<IpAddr>().is_ok() {
        return None;
    }
    let d = psl::domain(host.as_bytes())?;
    let len = d.as_bytes().len();
    host.get(host.len() - len..)
}

/// The `Domain` values under which a cookie the browser sends to `host` may be held, most
/// specific first: the host itself, then each parent up to and including its registrable
/// domain. Empty for an IP address, a single label or a public suffix (host-only only).
pub fn purge_domains(host: &str) -> Vec<&str> {
    let Some(registrable) = registrable_domain(host) else {
        return Vec::new();
    };
    let mut out = vec![host];
    let mut rest = host;
    while rest.len() > registrable.len() {
        match rest.split_once('.') {
            Some((_, parent)) => {
                out.push(parent);
                rest = parent;
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_779_000_000;

    fn url<'a>(host: &'a str, path: &'a str, secure: bool) -> RequestUrl<'a> {
        RequestUrl::new(host, path, secure)
    }

    fn hold(header: &str, u: &RequestUrl<'_>) -> Result<(), Refusal> {
        would_hold(&SetCookie::parse(header.as_bytes(), NOW), u)
    }

    #[test]
    fn request_url_is_canonical() {
        let u = url("WWW.Portal.Test.:8443", "/a/b", true);
        assert_eq!(u.host, "www.portal.test");
        assert_eq!(u.path, "/a/b");
        assert_eq!(url("[::1]:80", "", false).host, "::1");
        assert!(url("[::1]:80", "", false).host_is_ip());
        assert_eq!(url("[::1]:80", "", false).path, "/");
        assert_eq!(url("a b", "/", false).host, "");
        assert_eq!(url("a:b", "/", false).host, "");
        assert!(matches!(
            url("portal.test:80", "/", false).host,
            Cow::Borrowed("portal.test")
        ));
    }

    /// RFC 6265bis §5.1.3's definition, by example.
    #[test]
    fn domain_match_examples() {
        assert!(domain_match("www.example.com", "example.com"));
        assert!(domain_match("example.com", "example.com"));
        assert!(!domain_match("example.com", "www.example.com"));
        assert!(!domain_match("badexample.com", "example.com"));
        assert!(!domain_match("1.2.3.4", "2.3.4"));
        assert!(domain_match("1.2.3.4", "1.2.3.4"));
    }

    /// RFC 6265bis §5.1.4's default-path and path-match, by example.
    #[test]
    fn default_path_and_path_match_examples() {
        assert_eq!(default_path(b""), b"/");
        assert_eq!(default_path(b"relative"), b"/");
        assert_eq!(default_path(b"/"), b"/");
        assert_eq!(default_path(b"/docs"), b"/");
        assert_eq!(default_path(b"/docs/"), b"/docs");
        assert_eq!(default_path(b"/docs/Web/HTTP"), b"/docs/Web");
        // The RFC's §5.1.4 path-match cases.
        assert!(path_match(b"/docs", b"/docs"));
        assert!(path_match(b"/docs/", b"/docs"));
        assert!(path_match(b"/docs/Web/", b"/docs"));
        assert!(path_match(b"/docs/Web/HTTP", b"/docs"));
        assert!(path_match(b"/docs/Web/", b"/docs/"));
        assert!(!path_match(b"/", b"/docs"));
        assert!(!path_match(b"/docsets", b"/docs"));
        assert!(!path_match(b"/fr/docs", b"/docs"));
    }

    /// The examples of RFC 6265bis §3.1 and §4.1.3, and the storage model's rules, for a page at
    /// `https://www.example.com/`.
    #[test]
    fn the_rfc_examples_are_held_or_refused_as_a_browser_does() {
        let page = url("www.example.com", "/", true);
        let cases: [(&str, Result<(), Refusal>); 16] = [
            ("SID=31d4d96e407aad42", Ok(())),
            ("SID=31d4d96e407aad42; Path=/; Domain=example.com", Ok(())),
            ("SID=31d4d96e407aad42; Path=/; Secure; HttpOnly", Ok(())),
            ("lang=en-US; Path=/; Domain=example.com", Ok(())),
            ("lang=en-US; Domain=.EXAMPLE.com", Ok(())),
            ("lang=; Expires=Sun, 06 Nov 1994 08:49:37 GMT", Ok(())),
            ("x=1; Domain=www.example.com", Ok(())),
            ("x=1; Domain=other.example.com", Err(Refusal::ForeignDomain)),
            ("x=1; Domain=example.org", Err(Refusal::ForeignDomain)),
            ("x=1; Domain=com", Err(Refusal::PublicSuffixDomain)),
            ("x=1; Path=/docs", Err(Refusal::PathElsewhere)),
            (
                "__Secure-SID=12345; Domain=example.com",
                Err(Refusal::PrefixBroken),
            ),
            ("__Secure-SID=12345; Secure; Domain=example.com", Ok(())),
            ("__Host-SID=12345; Secure; Path=/", Ok(())),
            (
                "__Host-SID=12345; Secure; Domain=example.com; Path=/",
                Err(Refusal::PrefixBroken),
            ),
            ("__Host-SID=12345; Secure", Err(Refusal::PrefixBroken)),
        ];
        for (header, want) in cases {
            assert_eq!(hold(header, &page), want, "{header}");
        }
        // Over plain http, Secure is refused whatever else.
        let http = url("www.example.com", "/", false);
        assert_eq!(hold("SID=1; Secure", &http), Err(Refusal::SecureOverHttp));
        assert_eq!(
            hold("__Host-SID=1; Secure; Path=/", &http),
            Err(Refusal::SecureOverHttp)
        );
        // Prefixes are matched case-insensitively.
        assert_eq!(
            hold("__host-SID=1; Path=/", &page),
            Err(Refusal::PrefixBroken)
        );
        assert_eq!(hold("=__Host-x", &page), Err(Refusal::PrefixBroken));
        assert_eq!(hold("=", &page), Err(Refusal::Malformed));
        let big = format!("a={}", "v".repeat(4096));
        assert_eq!(hold(&big, &page), Err(Refusal::Malformed));
    }

    #[test]
    fn no_path_means_the_default_path_of_the_request() {
        let u = url("portal.test", "/explore/dataset/x", false);
        assert_eq!(hold("a=1", &u), Ok(()));
        assert_eq!(hold("a=1; Path=/explore", &u), Ok(()));
        assert_eq!(hold("a=1; Path=/explore/", &u), Ok(()));
        assert_eq!(hold("a=1; Path=/exp", &u), Err(Refusal::PathElsewhere));
        // A relative Path is the default path, which always matches its own URL.
        assert_eq!(hold("a=1; Path=elsewhere", &u), Ok(()));
    }

    #[test]
    fn public_suffixes_come_from_the_list() {
        for s in ["com", "co.uk", "test", "github.io", "paris"] {
            assert!(is_public_suffix(s), "{s}");
        }
        assert!(!is_public_suffix("opendatasoft.com"));
        assert!(!is_public_suffix("portal.test"));
        assert!(!is_public_suffix("example.co.uk"));
        // A public suffix as the host itself is accepted as host-only.
        assert_eq!(
            hold("a=1; Domain=github.io", &url("github.io", "/", false)),
            Ok(())
        );
        assert_eq!(
            hold("a=1; Domain=github.io", &url("me.github.io", "/", false)),
            Err(Refusal::PublicSuffixDomain)
        );
        assert_eq!(
            hold("a=1; Domain=test", &url("www.portal.test", "/", false)),
            Err(Refusal::PublicSuffixDomain)
        );
    }

    #[test]
    fn ip_hosts_take_no_domain_but_their_own() {
        let u = url("127.0.0.1:8080", "/", false);
        assert_eq!(hold("a=1; Domain=127.0.0.1", &u), Ok(()));
        assert_eq!(hold("a=1; Domain=0.0.1", &u), Err(Refusal::ForeignDomain));
        assert_eq!(hold("a=1; Domain=1", &u), Err(Refusal::ForeignDomain));
        let u = url("[::1]", "/", true);
        assert_eq!(hold("a=1; Secure; Path=/; Domain=::1", &u), Ok(()));
        assert_eq!(
            hold("__Host-a=1; Secure; Path=/; Domain=::1", &u),
            Err(Refusal::PrefixBroken)
        );
    }

    #[test]
    fn registrable_domains_and_purge_domains() {
        assert_eq!(registrable_domain("www.portal.test"), Some("portal.test"));
        assert_eq!(
            registrable_domain("schneider-electric.opendatasoft.com"),
            Some("opendatasoft.com")
        );
        assert_eq!(
            registrable_domain("a.b.example.co.uk"),
            Some("example.co.uk")
        );
        assert_eq!(registrable_domain("co.uk"), None);
        assert_eq!(registrable_domain("localhost"), None);
        assert_eq!(registrable_domain("127.0.0.1"), None);
        assert_eq!(registrable_domain("::1"), None);
        assert_eq!(
            purge_domains("www.portal.test"),
            vec!["www.portal.test", "portal.test"]
        );
        assert_eq!(
            purge_domains("a.b.example.co.uk"),
            vec!["a.b.example.co.uk", "b.example.co.uk", "example.co.uk"]
        );
        assert_eq!(purge_domains("portal.test"), vec!["portal.test"]);
        assert_eq!(purge_domains("dashboard.paris"), vec!["dashboard.paris"]);
        assert!(purge_domains("localhost").is_empty());
        assert!(purge_domains("10.0.0.1").is_empty());
        assert!(purge_domains("github.io").is_empty());
        assert!(purge_domains("").is_empty());
    }
}
