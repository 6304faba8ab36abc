//! End to end, the request side: refused browser cookies never reach the origin and are purged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn registry(up: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "{}\n[[cookie]]\nname = \"__Host-track\"\ncategory = \"marketing\"\n\n[[cookie]]\nname = \"__Secure-ads\"\ncategory = \"marketing\"\n\n[[cookie]]\nname = \"_gid\"\ncategory = \"statistical\"\nconsent = \"ga\"\ndomains = [\".portal.test\"]\npath = \"/\"\n",
        portal_toml(up, extra)
    )
}

#[tokio::test]
async fn refused_cookie_is_absent_upstream_and_purged_in_the_response() {
    let (up, seen) = cookie_origin(&["sessionid=new; Path=/"]).await;
    let gw = gateway("", &[("p.toml", registry(up, ""))]).await;
    let r = get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/",
        "Cookie: sessionid=abc; _gid=GA1.2.3; cookies_preferences=%7B%22matomo%22%3Atrue%7D; _pk_id=7; mystery=1\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let h = seen.last_headers();
    assert_eq!(
        h.get_all("cookie").iter().collect::<Vec<_>>(),
        vec!["sessionid=abc; cookies_preferences=%7B%22matomo%22%3Atrue%7D; _pk_id=7"],
        "the origin never receives _gid (refused) nor mystery (unknown)"
    );
    assert_eq!(
        r.all("set-cookie"),
        vec![
            "sessionid=new; Path=/",
            "_gid=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/",
            // The registrable domain covers the entry's `.portal.test`: one deletion for it.
            "_gid=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Domain=portal.test",
        ]
    );
    assert_eq!(r.all("vary"), vec!["Cookie"]);
    let m = String::from_utf8(admin(&gw, "/metrics").await.body).unwrap();
    assert!(
        m.contains(
            r#"consent_gateway_request_cookies_total{host="portal.test",action="stripped"} 2"#
        ),
        "{m}"
    );
    assert!(
        m.contains(
            r#"consent_gateway_request_cookies_total{host="portal.test",action="purged"} 1"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn granted_cookies_pass_untouched() {
    let (up, seen) = cookie_origin(&[]).await;
    let gw = gateway("", &[("p.toml", registry(up, ""))]).await;
    let cookie = "sessionid=abc;_ga=GA1.2.3; cookies_preferences=[\"ga\"];  _gid=x";
    let r = get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/",
        &format!("Cookie: {cookie}\r\n"),
    )
    .await;
    assert!(r.all("set-cookie").is_empty());
    assert!(
        r.all("vary").is_empty(),
        "nothing set, nothing added: no Vary"
    );
    assert_eq!(
        seen.last_headers().get("cookie").unwrap(),
        cookie,
        "byte for byte"
    );
}

#[tokio::test]
async fn host_and_secure_prefixed_cookies_get_valid_deletions() {
    let (up, _) = cookie_origin(&[]).await;
    let gw = gateway("", &[("p.toml", registry(up, ""))]).await;
    let r = get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/",
        "Cookie: __Host-track=1; __Secure-ads=2\r\n",
    )
    .await;
    let sets = r.all("set-cookie");
    // One for __Host-, two for __Secure- (host-only and Domain=portal.test).
    assert_eq!(sets.len(), 3, "{sets:?}");
    // RFC 6265bis §4.1.3: __Host- needs Secure, Path=/ and no Domain; __Secure- needs Secure.
    let host = &sets[0];
    assert!(host.starts_with("__Host-track=;"), "{host}");
    assert!(
        host.contains("; Secure") && host.contains("; Path=/") && !host.contains("Domain"),
        "{host}"
    );
    assert!(host.contains("Max-Age=0") && host.contains("Expires=Thu, 01 Jan 1970 00:00:00 GMT"));
    for secure in &sets[1..] {
        assert!(
            secure.starts_with("__Secure-ads=;") && secure.ends_with("; Secure"),
            "{secure}"
        );
    }
}

#[tokio::test]
async fn report_only_neither_strips_nor_purges_but_counts() {
    let (up, seen) = cookie_origin(&[]).await;
    let gw = gateway("", &[("p.toml", registry(up, "mode = \"report-only\""))]).await;
    let cookie = "_gid=1; mystery=2; sessionid=3";
    let r = get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/",
        &format!("Cookie: {cookie}\r\n"),
    )
    .await;
    assert!(r.all("set-cookie").is_empty());
    assert_eq!(seen.last_headers().get("cookie").unwrap(), cookie);
    let m = String::from_utf8(admin(&gw, "/metrics").await.body).unwrap();
    assert!(
        m.contains(
            r#"consent_gateway_request_cookies_total{host="portal.test",action="would_strip"} 2"#
        ),
        "{m}"
    );
    assert!(
        m.contains(
            r#"consent_gateway_request_cookies_total{host="portal.test",action="would_purge"} 1"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn consent_granted_by_the_upstream_in_the_response_cancels_the_purge() {
    // The visitor accepts analytics on this very request: the upstream sets the consent cookie.
    static SETS: &[&str] = &["cookies_preferences=%7B%22ga%22%3Atrue%7D; Path=/"];
    let (up, seen) = cookie_origin(SETS).await;
    let gw = gateway("", &[("p.toml", registry(up, ""))]).await;
    let r = get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/accept",
        "Cookie: _gid=1\r\n",
    )
    .await;
    assert_eq!(
        r.all("set-cookie"),
        SETS.to_vec(),
        "no purge of _gid: the response grants it"
    );
    assert!(
        !seen.last_headers().contains_key("cookie"),
        "the request itself was still stripped"
    );
}

#[tokio::test]
async fn switches_off_leave_the_request_alone() {
    let (up, seen) = cookie_origin(&[]).await;
    let gw = gateway(
        "",
        &[(
            "p.toml",
            registry(up, "strip_request_cookies = false\npurge = false"),
        )],
    )
    .await;
    let r = get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/",
        "Cookie: _gid=1; mystery=2\r\n",
    )
    .await;
    assert!(r.all("set-cookie").is_empty());
    assert_eq!(
        seen.last_headers().get("cookie").unwrap(),
        "_gid=1; mystery=2"
    );
}

#[tokio::test]
async fn a_refused_cookie_the_origin_sets_again_is_dropped_and_purged() {
    // Departure from the SPEC's letter, kept to its intent: the origin's own `_gid` is dropped,
    // so it sets nothing, and the browser's old `_gid` is purged all the same.
    let (up, _) = cookie_origin(&["_gid=fresh; Path=/", "sessionid=s; Path=/"]).await;
    let gw = gateway("", &[("p.toml", registry(up, ""))]).await;
    let r = get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/",
        "Cookie: _gid=old\r\n",
    )
    .await;
    let sets = r.all("set-cookie");
    assert_eq!(sets[0], "sessionid=s; Path=/");
    assert!(
        !sets.iter().any(|s| s.starts_with("_gid=fresh")),
        "{sets:?}"
    );
    assert_eq!(
        sets.iter()
            .filter(|s| s.starts_with("_gid=; Max-Age=0"))
            .count(),
        2,
        "{sets:?}"
    );
}
