//! Property test: `jar::would_hold` ("would a browser store this Set-Cookie and send it back for
//! this URL") agrees with a straightforward reference model, written here from RFC 6265bis
//! (§5.6 parsing, §5.7 storage, §5.1.3 domain-match, §5.1.4 paths, §4.1.3 prefixes), for random
//! attribute sets and request URLs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use proptest::prelude::*;

use consent_gateway::policy::jar::{would_hold, RequestUrl};
use consent_gateway::policy::set_cookie::SetCookie;

const NOW: i64 = 1_779_000_000;

/// The public suffixes among the names generated below (from publicsuffix.org's list: `test`
/// has no entry, so the implicit `*` rule makes it one; `co.uk` and `uk` are listed).
const PUBLIC_SUFFIXES: [&str; 3] = ["test", "co.uk", "uk"];

const HOSTS: [&str; 6] = [
    "www.portal.test",
    "portal.test",
    "a.example.co.uk",
    "example.co.uk",
    "127.0.0.1",
    "WWW.Portal.Test:8080",
];
const PATHS: [&str; 7] = ["/", "/a", "/a/", "/a/b", "/ab", "/b/c", ""];
const NAMES: [&str; 7] = [
    "a",
    "__Secure-a",
    "__Host-a",
    "__host-A",
    "__SECURE-b",
    "",
    "x",
];
const VALUES: [&str; 4] = ["1", "", "__Host-x", "__secure-y"];
const DOMAINS: [&str; 14] = [
    "",
    ".",
    "portal.test",
    ".portal.test",
    "www.portal.test",
    "PORTAL.Test",
    "test",
    ".test",
    "other.test",
    "x.www.portal.test",
    "co.uk",
    "example.co.uk",
    "127.0.0.1",
    "0.0.1",
];
const COOKIE_PATHS: [&str; 8] = ["", "/", "/a", "/a/", "/ab", "a", "/a/b", "/b"];

fn attribute() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..DOMAINS.len(), any::<bool>()).prop_map(|(i, upper)| format!(
            "{}={}",
            if upper { "DOMAIN" } else { "Domain" },
            DOMAINS[i]
        )),
        (0..COOKIE_PATHS.len(), any::<bool>()).prop_map(|(i, upper)| format!(
            "{}={}",
            if upper { "PATH" } else { "path" },
            COOKIE_PATHS[i]
        )),
        Just("Secure".to_owned()),
        Just("secure".to_owned()),
        Just("HttpOnly".to_owned()),
        Just("Max-Age=0".to_owned()),
        Just("SameSite=Lax".to_owned()),
        Just("Expires=Thu, 01 Jan 1970 00:00:00 GMT".to_owned()),
    ]
}

/// RFC 6265bis, step by step, on strings.
fn reference(header: &str, raw_host: &str, request_path: &str, https: bool) -> bool {
    // The request host, canonical: no port, lower case.
    let host = raw_host
        .rsplit_once(':')
        .map_or(raw_host, |(h, _)| h)
        .to_ascii_lowercase();
    let request_path = if request_path.starts_with('/') {
        request_path
    } else {
        "/"
    };
    // §5.6: the pair, then the attributes; the last of each kind wins.
    let mut parts = header.split(';');
    let pair = parts.next().unwrap();
    let (name, value) = match pair.find('=') {
        Some(i) => (pair[..i].trim(), pair[i + 1..].trim()),
        None => ("", pair.trim()),
    };
    if name.is_empty() && value.is_empty() {
        return false;
    }
    let mut domain_attribute: Option<String> = None;
    let mut path_attribute: Option<String> = None;
    let mut secure = false;
    for av in parts {
        let (k, v) = match av.find('=') {
            Some(i) => (av[..i].trim(), av[i + 1..].trim()),
            None => (av.trim(), ""),
        };
        match k.to_ascii_lowercase().as_str() {
            "domain" if !v.is_empty() => {
                let v = v.strip_prefix('.').unwrap_or(v);
                domain_attribute = Some(v.to_ascii_lowercase());
            }
            "path" => path_attribute = Some(v.to_owned()),
            "secure" => secure = true,
            _ => {}
        }
    }
    // §5.7: the domain.
    let is_ip = host.parse::<IpAddr>().is_ok();
    let mut host_only = true;
    if let Some(d) = domain_attribute.filter(|d| !d.is_empty()) {
        if PUBLIC_SUFFIXES.contains(&d.as_str()) {
            if d != host {
                return false;
            }
        } else {
            let matches = d == host || (host.ends_with(&format!(".{d}")) && !is_ip);
            if !matches {
                return false;
            }
            host_only = false;
        }
    }
    // §5.7: the path (the default-path of §5.1.4 when absent or not starting with `/`).
    let cookie_path = match &path_attribute {
        Some(p) if p.starts_with('/') => p.clone(),
        _ => {
            let last = request_path.rfind('/').unwrap();
            if last == 0 {
                "/".to_owned()
            } else {
                request_path[..last].to_owned()
            }
        }
    };
    // §5.7: Secure over a non-secure scheme.
    if secure && !https {
        return false;
    }
    // §5.7: prefixes, case-insensitive.
    let lower_name = name.to_ascii_lowercase();
    let lower_value = value.to_ascii_lowercase();
    if name.is_empty()
        && (lower_value.starts_with("__secure-") || lower_value.starts_with("__host-"))
    {
        return false;
    }
    if lower_name.starts_with("__secure-") && !secure {
        return false;
    }
    if lower_name.starts_with("__host-")
        && !(secure && host_only && path_attribute.as_deref() == Some("/"))
    {
        return false;
    }
    // §5.1.4: sent back to the same URL only if the path path-matches.
    request_path == cookie_path
        || (request_path.starts_with(&cookie_path)
            && (cookie_path.ends_with('/') || request_path[cookie_path.len()..].starts_with('/')))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn would_hold_agrees_with_the_rfc_reference_model(
        name in 0..NAMES.len(),
        value in 0..VALUES.len(),
        attributes in proptest::collection::vec(attribute(), 0..5),
        host in 0..HOSTS.len(),
        path in 0..PATHS.len(),
        https in any::<bool>(),
    ) {
        let mut header = if NAMES[name].is_empty() {
            VALUES[value].to_owned()
        } else {
            format!("{}={}", NAMES[name], VALUES[value])
        };
        for a in &attributes {
            header.push_str("; ");
            header.push_str(a);
        }
        let url = RequestUrl::new(HOSTS[host], PATHS[path], https);
        let ours = would_hold(&SetCookie::parse(header.as_bytes(), NOW), &url);
        let theirs = reference(&header, HOSTS[host], PATHS[path], https);
        prop_assert_eq!(
            ours.is_ok(),
            theirs,
            "{} for http{}://{}{}: ours {:?}",
            header,
            if https { "s" } else { "" },
            HOSTS[host],
            PATHS[path],
            ours
        );
    }
}
