//! Consent: which keys the visitor granted, decoded from the consent cookie.
//!
//! Pure. One decoder module per consent format; each turns the cookie value into [`Granted`].
//! Anything that does not decode grants nothing (opt-in, fail closed): a decoder returns `None`
//! for a value it cannot read (recorded as [`Source::Undecodable`]) and an empty [`Granted`] for a
//! readable value that grants nothing. `Sec-GPC: 1` is carried beside the keys and narrows what
//! they grant in the decision; it never grants.
//!
//! # Formats
//! - [`json`]: Opendatasoft's `cookies_preferences`, a JSON object of booleans or array of keys.
//! - [`onetrust`]: `OptanonConsent`, form-encoded; the `groups` field's ids with `:1`.
//! - [`cookiebot`]: `CookieConsent`, a JS object literal; its keys set to `true`; `-1` (outside a
//!   consent region) grants the host's `cookiebot_outside_region` keys, see [`ConsentSpec::from_value`].
//! - [`klaro`]: `klaro`, a JSON object of services; the services set to `true`.
//! - [`cc_cookie`]: orestbida cookieconsent's `cc_cookie`; its `categories` (v3) or `level` (v2) array.
//! - [`complianz`]: one `cmplz_<category>=allow|deny` cookie per category (the configured cookie
//!   is their prefix); read from all cookies by [`ConsentSpec::from_request`], not by [`Format::decode`].
//! - [`cookieyes`]: `cookieyes-consent`, `key:yes|no` pairs; the category keys with `yes`.
//! - [`tcf`]: IAB TCF v2 `euconsent-v2` TC string; `purpose1`...`purpose24` with consent.

pub mod cc_cookie;
pub mod complianz;
pub mod cookiebot;
pub mod cookieyes;
pub mod json;
pub mod klaro;
pub mod onetrust;
pub mod tcf;
pub mod value;

pub use value::{Granted, MAX_KEYS, MAX_VALUE_BYTES};

use std::fmt;

use serde::Deserialize;

use crate::policy::recent::Recent;
use crate::policy::request_cookies::CookiePair;

/// How the consent was found, for logs and `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No consent cookie in the request.
    Missing,
    /// A consent cookie that did not decode (or holds more than [`MAX_KEYS`] keys): grants
    /// nothing.
    Undecodable,
    /// A consent cookie value longer than [`MAX_VALUE_BYTES`]: grants nothing, not even read.
    TooLarge,
    /// A consent cookie that decoded.
    Cookie,
    /// The upstream set or deleted the consent cookie in this response.
    Response,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Missing => "no consent cookie",
            Source::Undecodable => "consent cookie does not decode or holds more than 1,024 keys",
            Source::TooLarge => "consent cookie larger than 8 KiB",
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
    /// OneTrust's `OptanonConsent`: the group ids of its `groups` field with `:1`.
    #[serde(rename = "onetrust")]
    OneTrust,
    /// Cookiebot's `CookieConsent`: the keys of its JS object literal set to `true`; `-1` grants
    /// `cookiebot_outside_region`.
    Cookiebot,
    /// Klaro's `klaro`: the services of its JSON object set to `true`.
    Klaro,
    /// orestbida cookieconsent's `cc_cookie`: its `categories` (or v2 `level`) array.
    CcCookie,
    /// Complianz: one `<prefix><category>` cookie per category; the categories set to `allow`.
    Complianz,
    /// CookieYes's `cookieyes-consent`: the category keys set to `yes`.
    #[serde(rename = "cookieyes")]
    CookieYes,
    /// IAB TCF v2 `euconsent-v2`: `purpose1`...`purpose24` with consent.
    Tcf,
}

impl Format {
    /// Every format, in the order of the SPEC's table.
    pub const ALL: [Format; 8] = [
        Format::Json,
        Format::OneTrust,
        Format::Cookiebot,
        Format::Klaro,
        Format::CcCookie,
        Format::Complianz,
        Format::CookieYes,
        Format::Tcf,
    ];

    /// The cookie the format uses when `[consent] cookie` is not set. For [`Format::Complianz`]
    /// it is the prefix of the per-category cookies.
    pub fn default_cookie(self) -> &'static str {
        match self {
            Format::Json => "cookies_preferences",
            Format::OneTrust => "OptanonConsent",
            Format::Cookiebot => "CookieConsent",
            Format::Klaro => "klaro",
            Format::CcCookie => "cc_cookie",
            Format::Complianz => complianz::DEFAULT_PREFIX,
            Format::CookieYes => "cookieyes-consent",
            Format::Tcf => "euconsent-v2",
        }
    }

    /// The name in `[consent] format`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::OneTrust => "onetrust",
            Format::Cookiebot => "cookiebot",
            Format::Klaro => "klaro",
            Format::CcCookie => "cc_cookie",
            Format::Complianz => "complianz",
            Format::CookieYes => "cookieyes",
            Format::Tcf => "tcf",
        }
    }

    /// Whether `cookiebot_outside_region` means anything for this format.
    pub fn has_outside_region(self) -> bool {
        self == Format::Cookiebot
    }

    /// Decodes one consent cookie value; `None` when it does not decode. Complianz has no
    /// single-value form (one cookie per category), so it never decodes here: its consent is read
    /// by [`ConsentSpec::from_request`] and [`ConsentSpec::from_response`]. A Cookiebot `-1`
    /// decodes to nothing here; [`ConsentSpec::from_value`] grants `cookiebot_outside_region`.
    ///
    /// Values go through the per-thread memo of the last values decoded ([`Recent`], 512 bytes at
    /// most): visitors who made the same choices send the same bytes, and a decode
    /// (percent-decoding, JSON, a sorted key list) costs ~6,000 instructions where a hit costs a
    /// comparison and a reference-count increment. The result is the same either
    /// way: a decoder is a pure function of the format and the bytes.
    pub fn decode(self, value: &[u8]) -> Option<Granted> {
        if self == Format::Complianz {
            return self.decode_uncached(value);
        }
        Recent::through(&MEMO, self, value, || self.decode_uncached(value))
    }

    fn decode_uncached(self, value: &[u8]) -> Option<Granted> {
        match self {
            Format::Json => json::decode(value),
            Format::OneTrust => onetrust::decode(value),
            Format::Cookiebot => cookiebot::decode(value),
            Format::Klaro => klaro::decode(value),
            Format::CcCookie => cc_cookie::decode(value),
            Format::Complianz => None,
            Format::CookieYes => cookieyes::decode(value),
            Format::Tcf => tcf::decode(value),
        }
    }
}

thread_local! {
    /// The per-thread memo of [`Format::decode`].
    static MEMO: std::cell::RefCell<Recent<Format, Option<Granted>>> =
        std::cell::RefCell::default();
}

/// Where a host reads consent from (`[consent]` of a registry file, compiled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentSpec {
    /// The consent cookie's exact name; for [`Format::Complianz`], the prefix of the
    /// per-category consent cookies (`cmplz_` by default).
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

    /// Whether a cookie name is a consent cookie (always necessary): the consent cookie itself,
    /// or for [`Format::Complianz`] any name that starts with the (non-empty) prefix, Complianz's
    /// own bookkeeping cookies (`cmplz_banner-status`, `cmplz_policy_id`, ...) included.
    pub fn is_consent_cookie(&self, name: &[u8]) -> bool {
        match self.format {
            Format::Complianz => complianz::has_prefix(&self.cookie, name),
            _ => name == self.cookie.as_bytes(),
        }
    }

    /// Decodes the consent a request carries. The first consent cookie wins, as browsers send
    /// the most specific one first; for Complianz, the first cookie of each category.
    pub fn from_request<'a>(
        &self,
        cookies: impl IntoIterator<Item = CookiePair<'a>>,
        gpc: bool,
    ) -> Consent {
        if self.format == Format::Complianz {
            let (granted, source) = match complianz::from_cookies(
                &self.cookie,
                cookies.into_iter().map(|p| (p.name, p.value)),
            ) {
                complianz::Categories::Missing => (Granted::none(), Source::Missing),
                complianz::Categories::TooMany => (Granted::none(), Source::Undecodable),
                complianz::Categories::Granted(g) => (g, Source::Cookie),
            };
            return Consent {
                granted,
                gpc,
                source,
            };
        }
        let value = cookies
            .into_iter()
            .find(|p| self.is_consent_cookie(p.name))
            .map(|p| p.value);
        self.from_value(value, gpc, Source::Cookie)
    }

    /// Decodes a consent cookie value (or its absence). `found` is the source to record when the
    /// value decodes. A value over [`MAX_VALUE_BYTES`] is not read and grants nothing. A Cookiebot value of `-1` (a visitor outside any consent region) grants
    /// exactly `cookiebot_outside_region`. Complianz values never decode alone (see
    /// [`Format::decode`]).
    pub fn from_value(&self, value: Option<&[u8]>, gpc: bool, found: Source) -> Consent {
        let (granted, source) = match value {
            None => (Granted::none(), Source::Missing),
            Some(v) if v.len() > MAX_VALUE_BYTES => (Granted::none(), Source::TooLarge),
            Some(v) if self.format == Format::Cookiebot && cookiebot::is_outside_region(v) => (
                Granted::from_keys(self.outside_region.iter().map(String::as_str)),
                found,
            ),
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

    /// The consent in effect for a response, given the request's consent and the response's
    /// `Set-Cookie` headers in order, each as `(name, value, is_deletion)` (SPEC, response rule
    /// 4). `None` when the response sets no consent cookie: the request's consent stands.
    ///
    /// - Single-cookie formats: the last consent `Set-Cookie` decides; its value is decoded as
    ///   [`ConsentSpec::from_value`] does (source [`Source::Response`], or
    ///   [`Source::Undecodable`]); a deletion means no consent.
    /// - Complianz: each `Set-Cookie` carries one category, so the request's granted categories
    ///   are updated by each `<prefix><category>` header in order: `allow` grants the category,
    ///   any other value (`deny`) or a deletion withdraws it.
    ///
    /// The request's `Sec-GPC` carries over in every case.
    pub fn from_response<'a>(
        &self,
        request: &Consent,
        set_cookies: impl Iterator<Item = (&'a [u8], &'a [u8], bool)>,
    ) -> Option<Consent> {
        let mut set_cookies = set_cookies.filter(|(name, _, _)| self.is_consent_cookie(name));
        if self.format == Format::Complianz {
            let first = set_cookies.next()?;
            let mut keys: std::collections::BTreeSet<Box<str>> =
                request.granted.keys().map(Box::from).collect();
            for (name, value, is_deletion) in std::iter::once(first).chain(set_cookies) {
                complianz::apply(&mut keys, &self.cookie, name, value, is_deletion);
            }
            return Some(Consent {
                granted: Granted::from_keys(keys),
                gpc: request.gpc,
                source: Source::Response,
            });
        }
        let (_, value, is_deletion) = set_cookies.last()?;
        Some(if is_deletion {
            Consent {
                granted: Granted::none(),
                gpc: request.gpc,
                source: Source::Response,
            }
        } else {
            self.from_value(Some(value), request.gpc, Source::Response)
        })
    }
}

const SEC_GPC: http::HeaderName = http::HeaderName::from_static("sec-gpc");

/// The consent a request carries: its `Cookie` header(s) and `Sec-GPC`. The proxy and
/// `explain` both read consent through this function.
pub fn from_request_headers(spec: &ConsentSpec, headers: &http::HeaderMap) -> Consent {
    let gpc = gpc_requested(headers.get_all(SEC_GPC));
    spec.from_request(
        crate::policy::request_cookies::all_pairs(headers.get_all(http::header::COOKIE)),
        gpc,
    )
}

/// Whether a request's `Sec-GPC` header values ask for the Global Privacy Control.
pub fn gpc_requested<'a>(values: impl IntoIterator<Item = &'a http::HeaderValue>) -> bool {
    values
        .into_iter()
        .any(|v| v.as_bytes().trim_ascii() == b"1")
}

/// Helpers shared by the decoders' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::Granted;

    /// The keys a decoder grants for `v`, sorted; `None` when it does not decode.
    pub(crate) fn keys_with(decode: fn(&[u8]) -> Option<Granted>, v: &str) -> Option<Vec<String>> {
        decode(v.as_bytes()).map(|g| g.keys().map(str::to_owned).collect())
    }

    /// `Some` of these keys, owned, for comparing with [`keys_with`].
    pub(crate) fn owned(keys: &[&str]) -> Option<Vec<String>> {
        Some(keys.iter().map(|k| (*k).to_owned()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::request_cookies::pairs;

    /// The memo gives back what the decoder gives, for the value and the format asked, hit or
    /// miss, after more distinct values than it remembers.
    #[test]
    fn the_memo_answers_as_the_decoder_does() {
        let values: Vec<String> = (0..3 * crate::policy::recent::ENTRIES)
            .map(|i| format!("%7B%22k{i}%22%3Atrue%7D"))
            .chain(["%7B%22a%22%3Atrue%7D".to_owned(), "not json".to_owned()])
            .collect();
        for round in 0..3 {
            for v in &values {
                for format in Format::ALL {
                    assert_eq!(
                        format.decode(v.as_bytes()),
                        format.decode_uncached(v.as_bytes()),
                        "round {round}, {format:?}, {v}"
                    );
                }
            }
        }
        let g = Format::Json.decode(b"%7B%22k1%22%3Atrue%7D").unwrap();
        assert!(g.contains("k1") && !g.contains("k2"));
        let empty = Format::Json.decode(b"{}").unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty, Granted::none());
    }

    #[test]
    fn percent_decoding_matches_the_percent_encoding_crate() {
        let edge: [&[u8]; 12] = [
            b"",
            b"%",
            b"%%",
            b"%4",
            b"%41",
            b"a%41b",
            b"%zz%41",
            b"%%41",
            b"100%",
            b"%7B%22a%22%3Atrue%7D",
            b"%e2%82%ac",
            b"plain",
        ];
        let inputs = edge.iter().map(|e| e.to_vec()).chain(noise());
        for input in inputs {
            let ours = value::percent_decoded(&input);
            let theirs: std::borrow::Cow<'_, [u8]> =
                percent_encoding::percent_decode(&input).into();
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(&input));
            assert_eq!(
                matches!(ours, std::borrow::Cow::Borrowed(_)),
                matches!(theirs, std::borrow::Cow::Borrowed(_))
            );
        }
    }

    /// A few hundred pseudo-random inputs for the decoders' never-panics tests: raw bytes mixed
    /// with fragments of every format, from a fixed-seed LCG so failures reproduce.
    pub(super) fn noise() -> impl Iterator<Item = Vec<u8>> {
        const FRAGMENTS: [&[u8]; 40] = [
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b"'",
            b":",
            b",",
            b";",
            b"=",
            b"&",
            b".",
            b"%",
            b"%7B",
            b"%22",
            b"%3A",
            b"%2C",
            b"%27",
            b"%3",
            b"%",
            b"\\",
            b"true",
            b"yes",
            b"allow",
            b"-1",
            b"0",
            b"1",
            b"groups=",
            b"C0001:1",
            b"necessary",
            b"stamp:'",
            b"categories",
            b"level",
            b"cmplz_",
            b"consentid:",
            b"CO",
            b"C",
            b"A",
            b"_",
            b"\xff",
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        (0..400).map(move |_| {
            let parts = next() % 24;
            let mut input = Vec::new();
            for _ in 0..parts {
                if next() % 3 == 0 {
                    input.push((next() % 256) as u8);
                } else {
                    input.extend_from_slice(FRAGMENTS[next() % FRAGMENTS.len()]);
                }
            }
            input
        })
    }

    #[test]
    fn no_format_panics_on_noise() {
        for input in noise() {
            for format in Format::ALL {
                let _ = format.decode(&input);
                let spec = ConsentSpec::new(format.default_cookie(), format);
                let _ = spec.from_request(pairs(&input), false);
                let _ = spec.from_value(Some(&input), false, Source::Cookie);
                let set = [
                    (&input[..], &input[..], false),
                    (&b"cmplz_x"[..], &input[..], false),
                ];
                let _ = spec.from_response(&Consent::none(), set.into_iter());
            }
        }
    }

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
    fn first_consent_cookie_wins_across_cookie_headers() {
        let headers = [
            http::HeaderValue::from_static("a=1; cookies_preferences=%5B%22matomo%22%5D"),
            http::HeaderValue::from_static("cookies_preferences=[\"ga\"]"),
        ];
        let c = spec().from_request(crate::policy::request_cookies::all_pairs(&headers), false);
        assert_eq!(c.granted, Granted::from_keys(["matomo"]));
        // An undecodable first one is not skipped for a later one that decodes.
        let c = spec().from_request(
            pairs(b"cookies_preferences=garbage; cookies_preferences=[\"ga\"]"),
            false,
        );
        assert_eq!(c.source, Source::Undecodable);
        assert!(c.granted.is_empty());
    }

    /// A JSON object of `n` distinct keys, all `true`.
    fn json_of(n: usize) -> String {
        let members: Vec<String> = (0..n).map(|i| format!("\"k{i}\":true")).collect();
        format!("{{{}}}", members.join(","))
    }

    #[test]
    fn a_value_over_8_kib_grants_nothing() {
        let mut value = String::from("{\"ga\":true");
        while value.len() < MAX_VALUE_BYTES - 1 {
            value.push(' ');
        }
        value.push('}');
        assert_eq!(value.len(), MAX_VALUE_BYTES);
        let c = spec().from_value(Some(value.as_bytes()), false, Source::Cookie);
        assert_eq!(c.granted, Granted::from_keys(["ga"]));
        value.insert(1, ' ');
        let c = spec().from_value(Some(value.as_bytes()), false, Source::Cookie);
        assert!(c.granted.is_empty());
        assert_eq!(c.source, Source::TooLarge);
        // In the request and in the response alike.
        let header = format!("cookies_preferences={value}");
        let c = spec().from_request(pairs(header.as_bytes()), false);
        assert_eq!(c.source, Source::TooLarge);
        let set = [(&b"cookies_preferences"[..], value.as_bytes(), false)];
        let c = spec()
            .from_response(&request_consent(&["ga"], false), set.into_iter())
            .unwrap();
        assert!(c.granted.is_empty());
    }

    #[test]
    fn more_than_1024_keys_grant_nothing_in_every_format() {
        let at = MAX_KEYS;
        let over = MAX_KEYS + 1;
        let many = |n: usize, f: &dyn Fn(usize) -> String, sep: &str| {
            (0..n).map(f).collect::<Vec<_>>().join(sep)
        };
        let cases: Vec<(Format, String, String)> = vec![
            (Format::Json, json_of(at), json_of(over)),
            (
                Format::Json,
                format!("[{}]", many(at, &|i| format!("\"k{i}\""), ",")),
                format!("[{}]", many(over, &|i| format!("\"k{i}\""), ",")),
            ),
            (Format::Klaro, json_of(at), json_of(over)),
            (
                Format::CcCookie,
                format!(
                    "{{\"categories\":[{}]}}",
                    many(at, &|i| format!("\"k{i}\""), ",")
                ),
                format!(
                    "{{\"categories\":[{}]}}",
                    many(over, &|i| format!("\"k{i}\""), ",")
                ),
            ),
            (
                Format::OneTrust,
                format!("groups={}", many(at, &|i| format!("C{i}:1"), ",")),
                format!("groups={}", many(over, &|i| format!("C{i}:1"), ",")),
            ),
            (
                Format::Cookiebot,
                format!("{{{}}}", many(at, &|i| format!("k{i}:true"), ",")),
                format!("{{{}}}", many(over, &|i| format!("k{i}:true"), ",")),
            ),
            (
                Format::CookieYes,
                many(at, &|i| format!("k{i}:yes"), ","),
                many(over, &|i| format!("k{i}:yes"), ","),
            ),
        ];
        for (format, at_limit, over_limit) in cases {
            let granted = format.decode(at_limit.as_bytes());
            assert_eq!(
                granted.map(|g| g.keys().count()),
                Some(MAX_KEYS),
                "{format:?}"
            );
            assert_eq!(format.decode(over_limit.as_bytes()), None, "{format:?}");
        }
    }

    #[test]
    fn duplicate_json_keys_last_one_wins_at_any_size() {
        // 1,000 keys then the first one again, turned off: the last occurrence counts.
        let mut members: Vec<String> = (0..1000).map(|i| format!("\"k{i}\":true")).collect();
        members.push("\"k0\":false".to_owned());
        let v = format!("{{{}}}", members.join(","));
        let g = Format::Json.decode(v.as_bytes()).unwrap();
        assert_eq!(g.keys().count(), 999);
        assert!(!g.contains("k0") && g.contains("k1"));
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

    #[test]
    fn format_names_round_trip() {
        for format in Format::ALL {
            let parsed: Format = serde_json::from_str(&format!("{:?}", format.as_str())).unwrap();
            assert_eq!(parsed, format);
        }
        let names: Vec<&str> = Format::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(
            names,
            [
                "json",
                "onetrust",
                "cookiebot",
                "klaro",
                "cc_cookie",
                "complianz",
                "cookieyes",
                "tcf"
            ]
        );
        assert!(serde_json::from_str::<Format>("\"one_trust\"").is_err());
        assert!(serde_json::from_str::<Format>("\"cookie_yes\"").is_err());
    }

    #[test]
    fn default_cookies_follow_the_spec_table() {
        let cookies: Vec<&str> = Format::ALL.iter().map(|f| f.default_cookie()).collect();
        assert_eq!(
            cookies,
            [
                "cookies_preferences",
                "OptanonConsent",
                "CookieConsent",
                "klaro",
                "cc_cookie",
                "cmplz_",
                "cookieyes-consent",
                "euconsent-v2"
            ]
        );
    }

    #[test]
    fn only_cookiebot_has_an_outside_region() {
        for format in Format::ALL {
            assert_eq!(format.has_outside_region(), format == Format::Cookiebot);
        }
    }

    fn cookiebot(outside: &[&str]) -> ConsentSpec {
        let mut spec = ConsentSpec::new("CookieConsent", Format::Cookiebot);
        spec.outside_region = outside.iter().map(|k| (*k).to_owned()).collect();
        spec
    }

    #[test]
    fn cookiebot_outside_region_grants_the_configured_keys() {
        let c =
            cookiebot(&["statistics", "marketing"]).from_request(pairs(b"CookieConsent=-1"), true);
        assert_eq!(c.granted, Granted::from_keys(["marketing", "statistics"]));
        assert_eq!(c.source, Source::Cookie);
        assert!(c.gpc);
        // By default a visitor outside a consent region is granted nothing.
        let c = cookiebot(&[]).from_request(pairs(b"CookieConsent=-1"), false);
        assert!(c.granted.is_empty());
        assert_eq!(c.source, Source::Cookie);
        // `0` is "strictly necessary only", whatever the setting.
        let c = cookiebot(&["statistics"]).from_request(pairs(b"CookieConsent=0"), false);
        assert!(c.granted.is_empty());
        assert_eq!(c.source, Source::Cookie);
    }

    #[test]
    fn cookiebot_literal_is_read_through_the_spec() {
        let c = cookiebot(&["marketing"]).from_request(
            pairs(b"CookieConsent={stamp:%27x%27%2Cnecessary:true%2Cstatistics:true%2Cmarketing:false}"),
            false,
        );
        assert_eq!(c.granted, Granted::from_keys(["necessary", "statistics"]));
        let c = cookiebot(&["marketing"]).from_request(pairs(b"CookieConsent={oops"), false);
        assert_eq!(c.source, Source::Undecodable);
        assert!(c.granted.is_empty());
    }

    fn complianz() -> ConsentSpec {
        ConsentSpec::new("cmplz_", Format::Complianz)
    }

    #[test]
    fn complianz_consent_cookies_are_every_prefixed_name() {
        let spec = complianz();
        assert!(spec.is_consent_cookie(b"cmplz_marketing"));
        assert!(spec.is_consent_cookie(b"cmplz_banner-status"));
        assert!(!spec.is_consent_cookie(b"_ga"));
        assert!(!spec.is_consent_cookie(b"cmplz"));
        assert!(!ConsentSpec::new("", Format::Complianz).is_consent_cookie(b"_ga"));
        // Other formats keep an exact name.
        let json = spec_json();
        assert!(json.is_consent_cookie(b"cookies_preferences"));
        assert!(!json.is_consent_cookie(b"cookies_preferences_x"));
    }

    #[test]
    fn complianz_request_collects_every_category() {
        let c = complianz().from_request(
            pairs(b"_ga=1; cmplz_functional=allow; cmplz_statistics=allow; cmplz_marketing=deny"),
            true,
        );
        assert_eq!(c.granted, Granted::from_keys(["functional", "statistics"]));
        assert_eq!(c.source, Source::Cookie);
        assert!(c.gpc);
        let c = complianz().from_request(pairs(b"_ga=1"), false);
        assert!(c.granted.is_empty());
        assert_eq!(c.source, Source::Missing);
        // A lone value says nothing about which category it is for.
        let c = complianz().from_value(Some(b"allow"), false, Source::Response);
        assert_eq!(c.source, Source::Undecodable);
    }

    fn spec_json() -> ConsentSpec {
        ConsentSpec::new("cookies_preferences", Format::Json)
    }

    fn request_consent(keys: &[&str], gpc: bool) -> Consent {
        Consent {
            granted: Granted::from_keys(keys.iter().copied()),
            gpc,
            source: Source::Cookie,
        }
    }

    #[test]
    fn response_without_consent_cookie_keeps_the_request_consent() {
        let request = request_consent(&["ga"], true);
        let set = [(&b"_ga"[..], &b"1"[..], false), (b"sessionid", b"x", true)];
        assert_eq!(spec_json().from_response(&request, set.into_iter()), None);
        assert_eq!(complianz().from_response(&request, set.into_iter()), None);
        assert_eq!(
            spec_json().from_response(&request, std::iter::empty()),
            None
        );
    }

    #[test]
    fn response_consent_cookie_last_one_wins() {
        let request = request_consent(&["ga"], true);
        let set = [
            (
                &b"cookies_preferences"[..],
                &br#"{"matomo":true}"#[..],
                false,
            ),
            (b"_ga", b"1", false),
            (b"cookies_preferences", br#"{"xiti":true}"#, false),
        ];
        let c = spec_json()
            .from_response(&request, set.into_iter())
            .unwrap();
        assert_eq!(c.granted, Granted::from_keys(["xiti"]));
        assert_eq!(c.source, Source::Response);
        assert!(c.gpc);
    }

    #[test]
    fn response_deleting_the_consent_cookie_means_no_consent() {
        let request = request_consent(&["ga"], true);
        let set = [
            (&b"cookies_preferences"[..], &br#"{"ga":true}"#[..], false),
            (b"cookies_preferences", b"", true),
        ];
        let c = spec_json()
            .from_response(&request, set.into_iter())
            .unwrap();
        assert!(c.granted.is_empty());
        assert_eq!(c.source, Source::Response);
        assert!(c.gpc);
    }

    #[test]
    fn response_consent_cookie_that_does_not_decode_grants_nothing() {
        let request = request_consent(&["ga"], false);
        let set = [(&b"cookies_preferences"[..], &b"garbage"[..], false)];
        let c = spec_json()
            .from_response(&request, set.into_iter())
            .unwrap();
        assert!(c.granted.is_empty());
        assert_eq!(c.source, Source::Undecodable);
    }

    #[test]
    fn response_cookiebot_outside_region_uses_the_setting() {
        let request = request_consent(&[], true);
        let set = [(&b"CookieConsent"[..], &b"-1"[..], false)];
        let c = cookiebot(&["statistics"])
            .from_response(&request, set.into_iter())
            .unwrap();
        assert_eq!(c.granted, Granted::from_keys(["statistics"]));
        assert_eq!(c.source, Source::Response);
        assert!(c.gpc);
    }

    #[test]
    fn response_complianz_cookies_update_the_request_categories() {
        let request = request_consent(&["functional", "statistics"], true);
        let set = [
            (&b"cmplz_marketing"[..], &b"allow"[..], false),
            (b"_ga", b"1", false),
            (b"cmplz_statistics", b"deny", false),
            (b"cmplz_banner-status", b"dismissed", false),
        ];
        let c = complianz()
            .from_response(&request, set.into_iter())
            .unwrap();
        assert_eq!(c.granted, Granted::from_keys(["functional", "marketing"]));
        assert_eq!(c.source, Source::Response);
        assert!(c.gpc);
        // Deleting a category cookie withdraws the category; later headers still apply.
        let set = [
            (&b"cmplz_functional"[..], &b""[..], true),
            (b"cmplz_preferences", b"allow", false),
        ];
        let c = complianz()
            .from_response(&request, set.into_iter())
            .unwrap();
        assert_eq!(c.granted, Granted::from_keys(["preferences", "statistics"]));
        // Only bookkeeping cookies: the request's categories stand, from the response.
        let set = [(&b"cmplz_banner-status"[..], &b"dismissed"[..], false)];
        let c = complianz()
            .from_response(&request, set.into_iter())
            .unwrap();
        assert_eq!(c.granted, request.granted);
        assert_eq!(c.source, Source::Response);
    }
}
