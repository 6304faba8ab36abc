//! End to end, each consent format: a site behind the gateway keeps and drops exactly as its
//! registry says, for a consent cookie in that format (values from the decoders' cited sources).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

/// One format: its `[consent]` table, the analytics key, the advertising key, and a request
/// `Cookie` header that grants analytics and refuses advertising.
struct Case {
    format: &'static str,
    consent: &'static str,
    analytics_key: &'static str,
    ads_key: &'static str,
    cookie: &'static str,
}

const CASES: &[Case] = &[
    Case {
        format: "json",
        consent: "format = \"json\"",
        analytics_key: "ga",
        ads_key: "ads",
        cookie: "cookies_preferences=%7B%22ga%22%3Atrue%2C%22ads%22%3Afalse%2C%22timestamp%22%3A1718000000000%7D",
    },
    Case {
        format: "onetrust",
        consent: "format = \"onetrust\"",
        analytics_key: "C0002",
        ads_key: "C0004",
        cookie: "OptanonConsent=isGpcEnabled=0&datestamp=Mon+Nov+23+2026+10%3A00%3A00+GMT%2B0100&version=202409.1.0&isIABGlobal=false&hosts=&consentId=abc&interactionCount=1&landingPath=NotLandingPage&groups=C0001%3A1%2CC0002%3A1%2CC0003%3A0%2CC0004%3A0",
    },
    Case {
        format: "cookiebot",
        consent: "format = \"cookiebot\"",
        analytics_key: "statistics",
        ads_key: "marketing",
        cookie: "CookieConsent={stamp:%27Ab12Cd34%3D%3D%27%2Cnecessary:true%2Cpreferences:false%2Cstatistics:true%2Cmarketing:false%2Cmethod:%27explicit%27%2Cver:1%2Cutc:1718000000000%2Cregion:%27fr%27}",
    },
    Case {
        format: "klaro",
        consent: "format = \"klaro\"",
        analytics_key: "google-analytics",
        ads_key: "adsense",
        cookie: "klaro=%7B%22google-analytics%22%3Atrue%2C%22adsense%22%3Afalse%7D",
    },
    Case {
        format: "cc_cookie (v3, percent-encoded)",
        consent: "format = \"cc_cookie\"",
        analytics_key: "analytics",
        ads_key: "ads",
        cookie: "cc_cookie=%7B%22categories%22%3A%5B%22necessary%22%2C%22analytics%22%5D%2C%22revision%22%3A0%2C%22data%22%3Anull%7D",
    },
    Case {
        format: "cc_cookie (v2, raw, level)",
        consent: "format = \"cc_cookie\"",
        analytics_key: "analytics",
        ads_key: "ads",
        cookie: "cc_cookie={\"level\":[\"necessary\",\"analytics\"],\"revision\":0,\"data\":null,\"rfc_cookie\":false}",
    },
    Case {
        format: "complianz",
        consent: "format = \"complianz\"",
        analytics_key: "statistics",
        ads_key: "marketing",
        cookie: "cmplz_functional=allow; cmplz_statistics=allow; cmplz_marketing=deny; cmplz_banner-status=dismissed",
    },
    Case {
        format: "cookieyes",
        consent: "format = \"cookieyes\"",
        analytics_key: "analytics",
        ads_key: "advertisement",
        cookie: "cookieyes-consent=consentid:Zm9vYmFy,consent:yes,action:yes,necessary:yes,functional:no,analytics:yes,performance:no,advertisement:no,other:no",
    },
    Case {
        // LiveRamp/iabconsent fixture (v2_parsed_consent_fixture_test.go): purposes 1 3 6 7 8 10.
        format: "tcf",
        consent: "format = \"tcf\"",
        analytics_key: "purpose8",
        ads_key: "purpose4",
        cookie: "euconsent-v2=COvzTO5OvzTO5B7ABCENAPCYAKdAADkAAIqIFhwBAAGAAXAFGAsMAhYAgAMAAegBYAEKAAA.IFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAFAAECAAAgAAQARAEQAAAAAJAAIAAgAAAYQEAAAQmAgBC3ZAYzUw.QE5QAwCvgHyATkA",
    },
];

fn registry(up: std::net::SocketAddr, case: &Case) -> String {
    format!(
        "hosts = [\"site.test\"]\nupstream = \"http://{up}\"\n\n[consent]\n{}\n\n\
         [[cookie]]\nname = \"sessionid\"\ncategory = \"necessary\"\n\n\
         [[cookie]]\nname = \"_ga\"\ncategory = \"statistical\"\nconsent = \"{}\"\n\n\
         [[cookie]]\nname = \"ads\"\ncategory = \"marketing\"\nconsent = \"{}\"\n",
        case.consent, case.analytics_key, case.ads_key
    )
}

const SETS: &[&str] = &[
    "sessionid=1; Path=/",
    "_ga=GA1.2.3; Path=/",
    "ads=9; Path=/",
];

#[tokio::test]
async fn each_format_keeps_and_drops_as_the_registry_says() {
    let (up, seen) = cookie_origin(SETS).await;
    for case in CASES {
        let gw = gateway("", &[("site.toml", registry(up, case))]).await;
        let addr = gw.http_addr.unwrap();
        let r = get(
            addr,
            "site.test",
            "/",
            &format!("Cookie: {}; _ga=old; ads=old\r\n", case.cookie),
        )
        .await;
        assert_eq!(r.status, 200, "{}", case.format);
        let names: Vec<String> = r
            .all("set-cookie")
            .into_iter()
            .filter(|v| !v.contains("Max-Age=0"))
            .map(|v| v.split('=').next().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            vec!["sessionid", "_ga"],
            "{}: analytics granted, ads refused",
            case.format
        );
        // The refused `ads` the browser sent is stripped upstream and purged; `_ga` passes.
        let upstream_cookie = seen
            .last_headers()
            .get("cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            upstream_cookie.contains("_ga=old") && !upstream_cookie.contains("ads=old"),
            "{}: {upstream_cookie}",
            case.format
        );
        assert!(
            r.all("set-cookie")
                .iter()
                .any(|v| v.starts_with("ads=; Max-Age=0")),
            "{}",
            case.format
        );

        // Without the consent cookie: nothing but the necessary cookie.
        let r = get(addr, "site.test", "/", "").await;
        assert_eq!(
            r.set_cookie_names(),
            vec!["sessionid"],
            "{}: no consent",
            case.format
        );
    }
}

#[tokio::test]
async fn a_malformed_value_in_each_format_grants_nothing() {
    let (up, _) = cookie_origin(SETS).await;
    let broken = [
        ("json", "cookies_preferences=%7B%22ga%22%3Atru"),
        ("onetrust", "OptanonConsent=isGpcEnabled=0&datestamp=x"),
        ("cookiebot", "CookieConsent={stamp:%27x%27%2Cstatistics:tr"),
        ("klaro", "klaro=%7B%22google-analytics%22"),
        (
            "cc_cookie (v3, percent-encoded)",
            "cc_cookie=%7B%22categories%22%3A%5B",
        ),
        ("cookieyes", "cookieyes-consent=analytics"),
        ("tcf", "euconsent-v2=COvzTO5Ovz"),
    ];
    for (format, cookie) in broken {
        let case = CASES.iter().find(|c| c.format == format).unwrap();
        let gw = gateway("", &[("site.toml", registry(up, case))]).await;
        let r = get(
            gw.http_addr.unwrap(),
            "site.test",
            "/",
            &format!("Cookie: {cookie}\r\n"),
        )
        .await;
        assert_eq!(
            r.set_cookie_names(),
            vec!["sessionid"],
            "{format}: fails closed"
        );
    }
}

#[tokio::test]
async fn cookiebot_outside_region_grants_what_the_host_says() {
    let (up, _) = cookie_origin(SETS).await;
    let case = CASES.iter().find(|c| c.format == "cookiebot").unwrap();
    let with = registry(up, case).replace(
        "format = \"cookiebot\"",
        "format = \"cookiebot\"\ncookiebot_outside_region = [\"statistics\"]",
    );
    for (text, want) in [
        (registry(up, case), vec!["sessionid"]),
        (with, vec!["sessionid", "_ga"]),
    ] {
        let gw = gateway("", &[("site.toml", text)]).await;
        let r = get(
            gw.http_addr.unwrap(),
            "site.test",
            "/",
            "Cookie: CookieConsent=-1\r\n",
        )
        .await;
        assert_eq!(r.set_cookie_names(), want);
    }
}

#[tokio::test]
async fn complianz_consent_given_in_the_response_applies_to_it() {
    // The banner's "accept statistics" response sets cmplz_statistics=allow and the tracker.
    static ACCEPT: &[&str] = &[
        "cmplz_statistics=allow; Path=/",
        "_ga=GA1.2.3; Path=/",
        "ads=9; Path=/",
    ];
    let (up, _) = cookie_origin(ACCEPT).await;
    let case = CASES.iter().find(|c| c.format == "complianz").unwrap();
    let gw = gateway("", &[("site.toml", registry(up, case))]).await;
    let r = get(
        gw.http_addr.unwrap(),
        "site.test",
        "/",
        "Cookie: cmplz_marketing=deny\r\n",
    )
    .await;
    assert_eq!(r.set_cookie_names(), vec!["cmplz_statistics", "_ga"]);
}
