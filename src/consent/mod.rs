//! Consent: which keys the visitor granted, decoded from the consent cookie.
//!
//! Pure. One decoder module per consent format; each turns the cookie value into [`Granted`].
//! Anything that does not decode grants nothing (opt-in, fail closed). `Sec-GPC: 1` is carried
//! beside the keys and narrows what they grant in the decision; it never grants.

pub mod json;

use std::fmt;

use serde::Deserialize;

use crate::request_cookies::CookiePair;

/// The consent keys a visitor granted. Invariant: sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    keys: Vec<Box<str>>,
}

impl Granted {
    /// Grants nothing.
    pub fn none() -> Self {
        Granted::default()
    }

    pub fn from_keys<I, S>(keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Box<str>>,
    {
        let mut keys: Vec<Box<str>> = keys.into_iter().map(Into::into).collect();
        keys.sort_unstable();
        keys.dedup();
        Granted { keys }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.keys.binary_search_by(|k| (**k).cmp(key)).is_ok()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| &**k)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// How the consent was found, for logs and `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No consent cookie in the request.
    Missing,
    /// A consent cookie that did not decode: grants nothing.
    Undecodable,
    /// A consent cookie that decoded.
    Cookie,
    /// The upstream set or deleted the consent cookie in this response.
    Response,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Missing => "no consent cookie",
            Source::Undecodable => "consent cookie does not decode",
            Source::Cookie => "consent cookie",
            Source::Response => "consent cookie set by the upstream in this response",
        })
    }
}

/// The consent in effect for one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    pub granted: Granted,
    /// The request carried `Sec-GPC: 1`.
    pub gpc: bool,
    pub source: Source,
}

impl Consent {
    /// No consent at all: only necessary cookies pass.
    pub fn none() -> Self {
        Consent {
            granted: Granted::none(),
            gpc: false,
            source: Source::Missing,
        }
    }
}

/// The consent cookie's format (`[consent] format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Opendatasoft's `cookies_preferences`: a JSON object of booleans or an array of keys.
    Json,
}

impl Format {
    /// The cookie the format uses when `[consent] cookie` is not set.
    pub fn default_cookie(self) -> &'static str {
        match self {
            Format::Json => "cookies_preferences",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
        }
    }

    /// Whether `cookiebot_outside_region` means anything for this format.
    pub fn has_outside_region(self) -> bool {
        false
    }

    /// Decodes one consent cookie value; `None` when it does not decode.
    pub fn decode(self, value: &[u8]) -> Option<Granted> {
        match self {
            Format::Json => json::decode(value),
        }
    }
}

/// Where a host reads consent from (`[consent]` of a registry file, compiled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentSpec {
    /// The consent cookie's exact name.
    pub cookie: String,
    pub format: Format,
    /// `cookiebot_outside_region`: the keys a value of `-1` grants (cookiebot only; empty by
    /// default, so a visitor outside a consent region is granted nothing).
    pub outside_region: Vec<String>,
}

impl ConsentSpec {
    /// A spec with no `cookiebot_outside_region` grants.
    pub fn new(cookie: impl Into<String>, format: Format) -> Self {
        ConsentSpec {
            cookie: cookie.into(),
            format,
            outside_region: Vec::new(),
        }
    }

    /// Whether a cookie name is the consent cookie (always necessary).
    pub fn is_consent_cookie(&self, name: &[u8]) -> bool {
        name == self.cookie.as_bytes()
    }

    /// Decodes the consent a request carries. The first consent cookie wins, as browsers send
    /// the most specific one first.
    pub fn from_request<'a>(
        &self,
        cookies: impl IntoIterator<Item = CookiePair<'a>>,
        gpc: bool,
    ) -> Consent {
        let value = cookies
            .into_iter()
            .find(|p| self.is_consent_cookie(p.name))
            .map(|p| p.value);
        self.from_value(value, gpc, Source::Cookie)
    }

    /// Decodes a consent cookie value (or its absence). `found` is the source to record when the
    /// value decodes.
    pub fn from_value(&self, value: Option<&[u8]>, gpc: bool, found: Source) -> Consent {
        let (granted, source) = match value {
            None => (Granted::none(), Source::Missing),
            Some(v) => match self.format.decode(v) {
                Some(g) => (g, found),
                None => (Granted::none(), Source::Undecodable),
            },
        };
        Consent {
            granted,
            gpc,
            source,
        }
    }
}

/// The consent a request carries: its `Cookie` header(s) and `Sec-GPC`. The proxy and
/// `explain` both read consent through this function.
pub fn from_request_headers(spec: &ConsentSpec, headers: &http::HeaderMap) -> Consent {
    let gpc = gpc_requested(headers.get_all("sec-gpc"));
    spec.from_request(
        crate::request_cookies::all_pairs(headers.get_all(http::header::COOKIE)),
        gpc,
    )
}

/// Whether a request's `Sec-GPC` header values ask for the Global Privacy Control.
pub fn gpc_requested<'a>(values: impl IntoIterator<Item = &'a http::HeaderValue>) -> bool {
    values
        .into_iter()
        .any(|v| v.as_bytes().trim_ascii() == b"1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_cookies::pairs;

    fn spec() -> ConsentSpec {
        ConsentSpec::new("cookies_preferences", Format::Json)
    }

    #[test]
    fn missing_cookie_grants_nothing() {
        let c = spec().from_request(pairs(b"sessionid=1; _ga=2"), false);
        assert!(c.granted.is_empty());
        assert_eq!(c.source, Source::Missing);
    }

    #[test]
    fn undecodable_cookie_grants_nothing() {
        let c = spec().from_request(pairs(b"cookies_preferences=garbage"), false);
        assert!(c.granted.is_empty());
        assert_eq!(c.source, Source::Undecodable);
    }

    #[test]
    fn first_consent_cookie_wins() {
        let c = spec().from_request(
            pairs(b"cookies_preferences={\"ga\":true}; cookies_preferences={\"matomo\":true}"),
            false,
        );
        assert!(c.granted.contains("ga"));
        assert!(!c.granted.contains("matomo"));
    }

    #[test]
    fn consent_cookie_found_after_non_utf8_pair() {
        let c = spec().from_request(pairs(b"x=\xff\xfe; cookies_preferences=[\"ga\"]"), true);
        assert!(c.granted.contains("ga"));
        assert!(c.gpc);
    }

    #[test]
    fn gpc_header_must_be_exactly_one() {
        let v = |s: &'static str| http::HeaderValue::from_static(s);
        assert!(gpc_requested(&[v("1")]));
        assert!(gpc_requested(&[v(" 1 ")]));
        assert!(!gpc_requested(&[v("0")]));
        assert!(!gpc_requested(&[v("true")]));
        assert!(!gpc_requested(&[]));
    }

    #[test]
    fn granted_is_a_set() {
        let g = Granted::from_keys(["b", "a", "b"]);
        assert_eq!(g.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert!(g.contains("a") && g.contains("b") && !g.contains("c"));
    }
}
