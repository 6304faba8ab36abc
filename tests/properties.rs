//! Property tests on the parsers of outside input and on the response filter.
//!
//! Parsers: never panic on arbitrary bytes, and what they return points into their input.
//! Filter: never adds a header, never touches another header, is idempotent, forwards kept
//! headers byte for byte and in order, changes nothing in report-only mode, counts every header,
//! and agrees with `explain`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::{Duration, UNIX_EPOCH};

use http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use common::test_policy;
use consent_gateway::cli::explain::explain;
use consent_gateway::policy::consent::from_request_headers;
use consent_gateway::policy::consent::{Consent, Format, Granted, Source};
use consent_gateway::policy::decide::Verdict;
use consent_gateway::policy::filter::{filter_set_cookies, Summary};
use consent_gateway::policy::registry::{HostPolicy, Mode};
use consent_gateway::policy::request_cookies::pairs;
use consent_gateway::policy::set_cookie::{parse_cookie_date, SetCookie};

/// 2026-05-17, as in the unit tests.
const NOW: i64 = 1_779_000_000;

/// The URL the responses answer: `http://portal.test/`.
fn test_url() -> consent_gateway::policy::jar::RequestUrl<'static> {
    consent_gateway::policy::jar::RequestUrl::new("portal.test", "/", false)
}

// ---------------------------------------------------------------------------------------------
// Registry

/// The test host (`tests/fixtures/t.example.toml`): every kind of entry the decision
/// distinguishes, in `mode`, with unknown cookies kept or dropped.
fn policy(mode: Mode, unknown_keep: bool) -> HostPolicy {
    let unknown = if unknown_keep { "keep" } else { "drop" };
    test_policy(&format!(
        "mode = \"{}\"\nunknown_cookies = \"{unknown}\"",
        mode.as_str()
    ))
}

/// Consent keys the registry uses, plus ones it does not.
const KEYS: &[&str] = &[
    "ga",
    "C0002",
    "matomo",
    "marketing",
    "facebook",
    "statistical",
    "necessary",
    "xiti",
];

// ---------------------------------------------------------------------------------------------
// Strategies

/// Names the registry knows (exact, prefix-matched, consent cookie) and names it does not.
fn cookie_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "sessionid",
            "csrftoken",
            "cookies_preferences",
            "_ga",
            "_ga_XYZ",
            "_ga_",
            "_gid",
            "_gat_UA-1",
            "_pk_id.1.abcd",
            "ads_id",
            "_fbp",
            "SessionID",
            "_g",
        ])
        .prop_map(str::to_owned),
        2 => "[A-Za-z0-9_.!#$%&'*+^`|~-]{0,12}",
        1 => Just(String::new()),
    ]
}

/// A cookie value: plain tokens, consent values in the formats portals write, and noise.
fn cookie_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9._-]{0,16}",
        1 => Just(r#"{"ga":true,"matomo":false,"timestamp":1718000000000}"#.to_owned()),
        1 => Just("%7B%22marketing%22%3Atrue%2C%22ga%22%3Atrue%7D".to_owned()),
        1 => Just(r#"["facebook"]"#.to_owned()),
        1 => Just("[]".to_owned()),
        1 => Just("garbage".to_owned()),
        1 => "[ -:<-~]{0,16}",
    ]
}

fn attribute() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "Max-Age=0",
            "max-age=-1",
            "Max-Age=3600",
            "Max-Age=zero",
            "Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            "Expires=Fri, 01 Jan 2100 00:00:00 GMT",
            "expires=never",
            "Path=/",
            "Domain=.t.example",
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
        ])
        .prop_map(str::to_owned),
        "[ -:<-~]{0,16}",
    ]
}

/// One `Set-Cookie` value as text: mostly well-formed, sometimes arbitrary visible ASCII.
fn set_cookie_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (
            cookie_name(),
            any::<bool>(),
            cookie_value(),
            prop::collection::vec(attribute(), 0..4),
            prop::sample::select(vec![";", "; ", " ;", ";\t"]),
        )
            .prop_map(|(name, with_eq, value, attrs, sep)| {
                let mut s = if with_eq {
                    format!("{name}={value}")
                } else {
                    value
                };
                for a in attrs {
                    s.push_str(sep);
                    s.push_str(&a);
                }
                s
            }),
        1 => "[ -~]{0,40}",
    ]
}

/// Set-Cookie values valid for `HeaderValue::from_bytes`, occasionally with obs-text bytes.
fn set_cookie_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        8 => set_cookie_text().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..32),
    ]
    .prop_filter_map("not a valid header value", |b| {
        HeaderValue::from_bytes(&b).ok()
    })
}

fn consent() -> impl Strategy<Value = Consent> {
    (
        prop::sample::subsequence(KEYS.to_vec(), 0..=KEYS.len()),
        any::<bool>(),
    )
        .prop_map(|(keys, gpc)| Consent {
            granted: Granted::from_keys(keys),
            gpc,
            source: Source::Cookie,
        })
}

/// A response: other headers around `set_cookies`, interleaved so the map's order matters.
fn response(set_cookies: &[HeaderValue]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    h.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    for (i, v) in set_cookies.iter().enumerate() {
        h.append(SET_COOKIE, v.clone());
        if i == 1 {
            h.append(VARY, HeaderValue::from_static("Origin"));
            h.append(
                HeaderName::from_static("x-after"),
                HeaderValue::from_static("1"),
            );
        }
    }
    h
}

fn set_cookies(h: &HeaderMap) -> Vec<HeaderValue> {
    h.get_all(SET_COOKIE).iter().cloned().collect()
}

fn is_subsequence(small: &[HeaderValue], big: &[HeaderValue]) -> bool {
    let mut big = big.iter();
    small
        .iter()
        .all(|s| big.any(|b| b.as_bytes() == s.as_bytes()))
}

/// `inner` is empty or lies within `outer`.
fn within(outer: &[u8], inner: &[u8]) -> bool {
    if inner.is_empty() {
        return true;
    }
    let o = outer.as_ptr_range();
    let i = inner.as_ptr_range();
    o.start <= i.start && i.end <= o.end
}

fn trimmed(s: &[u8]) -> bool {
    !matches!(s.first(), Some(b' ' | b'\t')) && !matches!(s.last(), Some(b' ' | b'\t'))
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig::with_cases(cases)
}

// ---------------------------------------------------------------------------------------------
// Parsers

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn consent_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = Format::Json.decode(&bytes);
    }

    #[test]
    fn consent_decoding_never_panics_on_json_like_input(
        s in r#"[%{}\[\]":,0-9a-z \\]{0,64}"#
    ) {
        let _ = Format::Json.decode(s.as_bytes());
    }

    #[test]
    fn consent_object_round_trips_raw_and_percent_encoded(
        prefs in prop::collection::btree_map("[a-zA-Z0-9_]{1,8}", any::<bool>(), 0..6)
    ) {
        let json = serde_json::to_string(&prefs).unwrap();
        let want: Vec<&str> = prefs.iter().filter(|(_, v)| **v).map(|(k, _)| k.as_str()).collect();
        let raw = Format::Json.decode(json.as_bytes()).unwrap();
        prop_assert_eq!(raw.keys().collect::<Vec<_>>(), want.clone());
        let encoded: String = percent_encoding::utf8_percent_encode(
            &json,
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        let decoded = Format::Json.decode(encoded.as_bytes()).unwrap();
        prop_assert_eq!(decoded.keys().collect::<Vec<_>>(), want);
    }

    #[test]
    fn request_cookie_pairs_point_into_the_header(
        bytes in prop::collection::vec(any::<u8>(), 0..128)
    ) {
        for p in pairs(&bytes) {
            prop_assert!(within(&bytes, p.name));
            prop_assert!(within(&bytes, p.value));
            prop_assert!(!p.name.contains(&b';') && !p.name.contains(&b'='));
            prop_assert!(!p.value.contains(&b';'));
            prop_assert!(trimmed(p.name) && trimmed(p.value));
        }
    }

    #[test]
    fn request_cookie_pairs_of_a_rendered_header_are_its_pairs(
        cookies in prop::collection::vec(("[A-Za-z0-9_]{1,8}", "[A-Za-z0-9%=_]{0,8}"), 0..6)
    ) {
        let header = cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let got: Vec<(&[u8], &[u8])> = pairs(header.as_bytes()).map(|p| (p.name, p.value)).collect();
        let want: Vec<(&[u8], &[u8])> =
            cookies.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn set_cookie_parse_never_panics_and_name_points_into_the_header(
        bytes in prop::collection::vec(any::<u8>(), 0..128),
        now in any::<i64>(),
    ) {
        let sc = SetCookie::parse(&bytes, now);
        prop_assert!(within(&bytes, sc.name));
        prop_assert!(within(&bytes, sc.value));
        prop_assert!(!sc.name.contains(&b';') && !sc.name.contains(&b'='));
        prop_assert!(trimmed(sc.name));
    }

    #[test]
    fn set_cookie_parse_reads_structured_headers(header in set_cookie_text()) {
        let sc = SetCookie::parse(header.as_bytes(), NOW);
        prop_assert!(within(header.as_bytes(), sc.name));
        // The name is what precedes the first '=' of the part before the first ';'.
        let pair = header.split(';').next().unwrap_or("");
        let want = pair.split_once('=').map_or("", |(n, _)| n.trim_matches([' ', '\t']));
        prop_assert_eq!(sc.name, want.as_bytes());
    }

    #[test]
    fn cookie_date_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Some(t) = parse_cookie_date(&bytes) {
            // Year 1601 is the earliest a browser accepts; four-digit years at most.
            prop_assert!((-11_644_473_600..253_402_300_800).contains(&t), "{t}");
        }
    }

    #[test]
    fn cookie_date_parse_never_panics_on_date_like_input(
        tokens in prop::collection::vec(
            prop_oneof![
                "[0-9]{1,5}",
                "[0-9]{1,3}:[0-9]{1,3}:[0-9]{1,3}[a-z]{0,2}",
                prop::sample::select(vec!["Jan", "feb", "DECEMBER", "Thu", "GMT", "Mayo"])
                    .prop_map(str::to_owned),
                "[ -~]{1,4}",
            ],
            0..8,
        ),
        sep in prop::sample::select(vec![" ", ", ", "-", "\t", "/"]),
    ) {
        if let Some(t) = parse_cookie_date(tokens.join(sep).as_bytes()) {
            prop_assert!((-11_644_473_600..253_402_300_800).contains(&t), "{t}");
        }
    }

    #[test]
    fn http_dates_parse_to_their_instant(secs in 0u64..253_402_300_800) {
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        prop_assert_eq!(parse_cookie_date(date.as_bytes()), Some(secs as i64), "{}", date);
    }
}

// ---------------------------------------------------------------------------------------------
// Filter

/// Runs the filter once, checking every property that one run has, and returns the output.
fn check_filter(
    p: &HostPolicy,
    c: &Consent,
    input: &HeaderMap,
) -> Result<(HeaderMap, Summary), TestCaseError> {
    let mut out = input.clone();
    let mut verdicts = Vec::new();
    let summary = filter_set_cookies(p, c, &mut out, NOW, &test_url(), |_, d| {
        verdicts.push(d.verdict)
    });
    let before = set_cookies(input);
    let after = set_cookies(&out);

    // Every header is judged once, and the counts add up.
    prop_assert_eq!(verdicts.len(), before.len());
    prop_assert_eq!(
        summary.kept + summary.dropped + summary.would_drop,
        before.len()
    );
    prop_assert_eq!(after.len(), summary.kept + summary.would_drop);

    // Never adds; kept headers are byte-identical and in order: exactly the non-dropped ones.
    prop_assert!(after.len() <= before.len());
    prop_assert!(is_subsequence(&after, &before));
    let want: Vec<HeaderValue> = before
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| **v != Verdict::Drop)
        .map(|(h, _)| h.clone())
        .collect();
    prop_assert_eq!(&after, &want);

    // Other headers are untouched.
    prop_assert_eq!(
        out.keys_len(),
        input.keys_len() - usize::from(after.is_empty() && !before.is_empty())
    );
    for name in input.keys().filter(|k| *k != SET_COOKIE) {
        let a: Vec<&HeaderValue> = input.get_all(name).iter().collect();
        let b: Vec<&HeaderValue> = out.get_all(name).iter().collect();
        prop_assert_eq!(a, b, "header {} changed", name);
    }

    match p.mode {
        Mode::ReportOnly => {
            prop_assert_eq!(summary.dropped, 0);
            prop_assert_eq!(&out, input);
        }
        Mode::Enforce => prop_assert_eq!(summary.would_drop, 0),
    }
    Ok((out, summary))
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn filter_properties_hold(
        values in prop::collection::vec(set_cookie_value(), 0..8),
        c in consent(),
        report_only in any::<bool>(),
        unknown_keep in any::<bool>(),
    ) {
        let mode = if report_only { Mode::ReportOnly } else { Mode::Enforce };
        let p = policy(mode, unknown_keep);
        let input = response(&values);
        let (once, _) = check_filter(&p, &c, &input)?;
        let (twice, second) = check_filter(&p, &c, &once)?;
        prop_assert_eq!(&twice, &once, "filtering twice differs from filtering once");
        prop_assert_eq!(second.dropped, 0);
    }

    #[test]
    fn necessary_and_deletions_always_survive(
        values in prop::collection::vec(set_cookie_value(), 0..8),
        c in consent(),
    ) {
        let p = policy(Mode::Enforce, false);
        let mut out = response(&values);
        filter_set_cookies(&p, &c, &mut out, NOW, &test_url(), |_, _| {});
        let after = set_cookies(&out);
        for v in &values {
            let sc = SetCookie::parse(v.as_bytes(), NOW);
            let necessary = p.lookup(sc.name).is_some_and(|e| e.necessary)
                || sc.name == b"cookies_preferences";
            if necessary || sc.is_deletion {
                prop_assert!(after.contains(v), "{:?} was dropped", v);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// explain agrees with the filter

fn consent_cookie() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some("sessionid=1; cookies_preferences=garbage".to_owned())),
        4 => prop::sample::subsequence(KEYS.to_vec(), 0..=KEYS.len()).prop_map(|keys| {
            let json: String = format!(
                "{{{}}}",
                keys.iter().map(|k| format!("\"{k}\":true")).collect::<Vec<_>>().join(",")
            );
            let enc = percent_encoding::utf8_percent_encode(&json, percent_encoding::NON_ALPHANUMERIC);
            Some(format!("sessionid=1; cookies_preferences={enc}"))
        }),
    ]
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn explain_and_filter_agree(
        texts in prop::collection::vec(set_cookie_text(), 1..8),
        cookie in consent_cookie(),
        gpc in any::<bool>(),
        report_only in any::<bool>(),
    ) {
        // explain refuses what is not a valid header value; the filter never sees those.
        let texts: Vec<String> = texts
            .into_iter()
            .filter(|t| HeaderValue::from_str(t).is_ok())
            .collect();
        let mode = if report_only { Mode::ReportOnly } else { Mode::Enforce };
        let p = policy(mode, false);
        let (_, lines) = explain(&p, cookie.as_deref(), gpc, &test_url(), &texts, NOW).unwrap();

        let mut req = HeaderMap::new();
        if let Some(c) = &cookie {
            req.insert(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        if gpc {
            req.insert("sec-gpc", HeaderValue::from_static("1"));
        }
        let c = from_request_headers(&p.consent, &req);
        let mut resp = HeaderMap::new();
        for t in &texts {
            resp.append(SET_COOKIE, HeaderValue::from_str(t).unwrap());
        }
        let before = set_cookies(&resp);
        let mut seen = Vec::new();
        filter_set_cookies(&p, &c, &mut resp, NOW, &test_url(), |sc, d| {
            seen.push((
                d.verdict.as_str(),
                String::from_utf8_lossy(sc.name).into_owned(),
                d.category().to_owned(),
                d.reason.as_str(),
            ));
        });
        let explained: Vec<_> = lines
            .iter()
            .map(|l| (l.verdict, l.name.clone(), l.category.clone(), l.reason))
            .collect();
        prop_assert_eq!(&explained, &seen);

        // What explain calls "drop" is exactly what the filter removed.
        let kept: Vec<HeaderValue> = before
            .iter()
            .zip(&lines)
            .filter(|(_, l)| l.verdict != "drop")
            .map(|(h, _)| h.clone())
            .collect();
        prop_assert_eq!(set_cookies(&resp), kept);
    }
}
