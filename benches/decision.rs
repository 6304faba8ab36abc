//! The cost of the consent decision on a realistic portal response: the 7 `Set-Cookie` headers of
//! the bench upstream (`bench/upstream.conf`: 3 necessary, 3 statistical, 1 marketing)
//! judged against a 40-entry registry (dashboard.paris's 15 entries plus 25 common trackers and
//! platform cookies, names and prefixes).
//!
//! - `decide_7`: `policy::decide` over the 7 pre-parsed headers (the decision alone).
//! - `filter_7_necessary_only`: what the proxy does per response in the common case (consent
//!   refused, 4 of 7 dropped): read the request's percent-encoded `cookies_preferences` (the
//!   same value every iteration: after the first, a hit in the worker's consent memo), then
//!   `filter_set_cookies` on the response's headers.
//! - `filter_7_all_granted`: the same with everything granted (nothing dropped).
//!
//! - `consent/*`: hostile consent cookies (SPEC, Consent: decoding is linear; a value over 8 KiB
//!   or 1,024 keys grants nothing): a 60 KB `cookies_preferences` holding 8,000 keys, read from a
//!   request (`request_60kb_8000_keys`) and by the JSON decoder alone (`json_decode_60kb_8000_keys`);
//!   the largest value that is still decoded (`json_decode_1000_keys`, just under both limits);
//!   a Complianz request carrying 3,000 `cmplz_*` cookies (`complianz_3000_cookies`).
//!
//! Each iteration is one response (or one consent read). Run:
//! `cargo bench --bench decision -- --quick`.

use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use consent_gateway::policy::consent::from_request_headers;
use consent_gateway::policy::consent::{ConsentSpec, Format};
use consent_gateway::policy::decide::decide;
use consent_gateway::policy::filter::filter_set_cookies;
use consent_gateway::policy::registry::HostPolicy;
use consent_gateway::policy::request_cookies::pairs;
use consent_gateway::policy::set_cookie::SetCookie;

/// The bench upstream's `Set-Cookie` headers, in its order.
const SET_COOKIES: [&str; 7] = [
    "sessionid=abc123; Path=/; HttpOnly; Secure; SameSite=Lax",
    "csrftoken=tok; Path=/; Secure",
    "django_language=en; Path=/",
    "_ga=GA1.2.123.456; Path=/; Max-Age=63072000",
    "_gid=GA1.2.789; Path=/; Max-Age=86400",
    "_ga_ABC123=GS1.1.1; Path=/",
    "ads_id=x; Domain=.example.test; Path=/",
];

/// 25 entries beyond dashboard.paris's 15: advertising, analytics, preferences and platform
/// cookies, as a portal with a few integrations lists them.
const MORE_ENTRIES: &str = r#"
[[cookie]]
name = "ads_id"
category = "marketing"
consent = ["marketing", "ads"]
domains = [".example.test"]

[[cookie]]
name = "_fbp"
category = "marketing"
consent = ["facebook", "marketing"]

[[cookie]]
name = "_fbc"
category = "marketing"
consent = ["facebook", "marketing"]

[[cookie]]
prefix = "_gcl_"
category = "marketing"
consent = ["google_ads", "marketing"]

[[cookie]]
name = "IDE"
category = "marketing"
consent = ["google_ads", "marketing"]

[[cookie]]
name = "test_cookie"
category = "marketing"
consent = ["google_ads", "marketing"]

[[cookie]]
name = "_uetsid"
category = "marketing"
consent = ["bing", "marketing"]

[[cookie]]
name = "_uetvid"
category = "marketing"
consent = ["bing", "marketing"]

[[cookie]]
name = "li_gc"
category = "marketing"
consent = ["linkedin", "marketing"]

[[cookie]]
name = "bcookie"
category = "marketing"
consent = ["linkedin", "marketing"]

[[cookie]]
prefix = "_hjSession_"
category = "statistical"
consent = "hotjar"

[[cookie]]
prefix = "_hj"
category = "statistical"
consent = "hotjar"

[[cookie]]
name = "_clck"
category = "statistical"
consent = "clarity"

[[cookie]]
name = "_clsk"
category = "statistical"
consent = "clarity"

[[cookie]]
prefix = "mp_"
category = "statistical"
consent = "mixpanel"

[[cookie]]
name = "ajs_anonymous_id"
category = "statistical"
consent = "segment"

[[cookie]]
name = "ajs_user_id"
category = "statistical"
consent = "segment"

[[cookie]]
prefix = "_dc_gtm_"
category = "statistical"
consent = "ga"

[[cookie]]
prefix = "intercom-id-"
category = "preferences"
consent = ["intercom", "preferences"]

[[cookie]]
prefix = "intercom-session-"
category = "preferences"
consent = ["intercom", "preferences"]

[[cookie]]
name = "theme"
category = "preferences"

[[cookie]]
name = "timezone"
category = "preferences"

[[cookie]]
name = "__Host-session"
category = "necessary"

[[cookie]]
name = "__Secure-refresh"
category = "necessary"

[[cookie]]
prefix = "AWSALB"
category = "necessary"
"#;

/// Every consent key the registry uses.
const ALL_KEYS: [&str; 18] = [
    "ga",
    "matomo",
    "xiti",
    "at",
    "piano",
    "marketing",
    "ads",
    "facebook",
    "google_ads",
    "bing",
    "linkedin",
    "hotjar",
    "clarity",
    "mixpanel",
    "segment",
    "intercom",
    "preferences",
    "statistical",
];

fn policy() -> HostPolicy {
    let text = format!(
        "{}{MORE_ENTRIES}",
        include_str!("../config/hosts/dashboard-paris.toml")
    );
    let p = consent_gateway::config::parse_host_file(Path::new("bench.toml"), &text)
        .unwrap_or_else(|e| panic!("bench registry: {e}"));
    assert_eq!(p.cookies.len(), 40, "the bench registry has 40 entries");
    p
}

/// A request's `Cookie` header as a portal's browser sends it: the necessary cookies and
/// `cookies_preferences` as the portals write it (`encodeURIComponent(JSON.stringify(prefs))`).
fn request(granted: bool) -> HeaderMap {
    let prefs: Vec<String> = ALL_KEYS
        .iter()
        .map(|k| format!("\"{k}\":{granted}"))
        .chain(["\"timestamp\":1718000000000".to_owned()])
        .collect();
    let json = format!("{{{}}}", prefs.join(","));
    let encoded = percent_encoding::utf8_percent_encode(&json, percent_encoding::NON_ALPHANUMERIC);
    let cookie = format!(
        "sessionid=abc123; csrftoken=tok; django_language=en; cookies_preferences={encoded}"
    );
    let mut h = HeaderMap::new();
    h.insert(
        COOKIE,
        HeaderValue::from_str(&cookie).unwrap_or_else(|e| panic!("{e}")),
    );
    h
}

fn response() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    for s in SET_COOKIES {
        h.append(SET_COOKIE, HeaderValue::from_static(s));
    }
    h
}

fn bench(c: &mut Criterion) {
    let policy = policy();
    let now = consent_gateway::unix_now();
    let response = response();
    let refused = request(false);
    let granted = request(true);
    let url = consent_gateway::policy::jar::RequestUrl::new("dashboard.paris", "/explore/", true);

    // Sanity: the cases are the ones named.
    for (req, want_kept) in [(&refused, 3), (&granted, 7)] {
        let mut h = response.clone();
        let s = filter_set_cookies(
            &policy,
            &from_request_headers(&policy.consent, req),
            &mut h,
            now,
            &url,
            |_, _| {},
        );
        assert_eq!((s.kept, s.dropped), (want_kept, 7 - want_kept));
    }

    let mut g = c.benchmark_group("per_response");
    g.throughput(Throughput::Elements(1));

    let parsed: Vec<SetCookie<'_>> = SET_COOKIES
        .iter()
        .map(|s| SetCookie::parse(s.as_bytes(), now))
        .collect();
    let consent = from_request_headers(&policy.consent, &refused);
    g.bench_function("decide_7", |b| {
        b.iter(|| {
            for sc in &parsed {
                black_box(decide(
                    black_box(&policy),
                    black_box(&consent),
                    black_box(sc),
                ));
            }
        })
    });

    for (name, req) in [
        ("filter_7_necessary_only", &refused),
        ("filter_7_all_granted", &granted),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || response.clone(),
                |headers| {
                    let consent = from_request_headers(&policy.consent, black_box(req));
                    black_box(filter_set_cookies(
                        &policy,
                        &consent,
                        headers,
                        now,
                        &url,
                        |_, _| {},
                    ))
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// `n` distinct three-character keys (`"a0b":1,` is 8 bytes), one in 16 granted (`true`).
fn json_keys(n: usize) -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let members: Vec<String> = (0..n)
        .map(|i| {
            let k: String = [i / 1296, (i / 36) % 36, i % 36]
                .iter()
                .map(|&d| char::from(ALPHABET[d % 36]))
                .collect();
            format!("\"{k}\":{}", if i % 16 == 0 { "true" } else { "1" })
        })
        .collect();
    format!("{{{}}}", members.join(","))
}

fn consent(c: &mut Criterion) {
    let mut g = c.benchmark_group("consent");
    g.throughput(Throughput::Elements(1));

    let json = ConsentSpec::new("cookies_preferences", Format::Json);
    let big = json_keys(8000);
    assert!((60_000..70_000).contains(&big.len()), "{}", big.len());
    let header = format!("sessionid=abc; cookies_preferences={big}");
    g.bench_function("request_60kb_8000_keys", |b| {
        b.iter(|| black_box(json.from_request(pairs(black_box(header.as_bytes())), false)))
    });
    g.bench_function("json_decode_60kb_8000_keys", |b| {
        b.iter(|| black_box(Format::Json.decode(black_box(big.as_bytes()))))
    });
    let under = json_keys(1000);
    assert!(under.len() < 8192, "{}", under.len());
    g.bench_function("json_decode_1000_keys", |b| {
        b.iter(|| black_box(Format::Json.decode(black_box(under.as_bytes()))))
    });

    let complianz = ConsentSpec::new("cmplz_", Format::Complianz);
    let cookies: Vec<String> = (0..3000).map(|i| format!("cmplz_c{i}=allow")).collect();
    let header = cookies.join("; ");
    g.bench_function("complianz_3000_cookies", |b| {
        b.iter(|| black_box(complianz.from_request(pairs(black_box(header.as_bytes())), false)))
    });
    g.finish();
}

criterion_group!(benches, bench, consent);
criterion_main!(benches);
