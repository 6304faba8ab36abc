//! End to end, the gateway judging cookies as the browser will: a consent `Set-Cookie` from the
//! origin counts only if the browser would hold it for the page (response rule 4), and purge
//! deletions cover every `Domain` a tracker may hide under, within `max_purge_headers`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::Response;

/// An origin that sets the consent cookie given in the request's `x-set-consent` header (if
/// any), then `_ga`, on every response.
async fn consent_setting_origin() -> std::net::SocketAddr {
    let (addr, _) = origin(|req| async move {
        let mut b = Response::builder();
        if let Some(v) = req.headers().get("x-set-consent") {
            b = b.header("set-cookie", v.clone());
        }
        b.header("set-cookie", "_ga=GA1.2.3.4; Path=/; Max-Age=63072000")
            .body(full("page\n"))
            .unwrap()
    })
    .await;
    addr
}

#[tokio::test]
async fn decoy_consent_cookies_do_not_grant_while_a_held_one_does() {
    let up = consent_setting_origin().await;
    let prefixed = format!(
        "{}\n",
        portal_toml(up, "[consent]\ncookie = \"__Secure-prefs\"")
            .replace("\"portal.test\", \"*.portal.test\"", "\"prefixed.test\"")
    );
    let gw = gateway("", &[("p.toml", portal_toml(up, "")), ("q.toml", prefixed)]).await;
    let addr = gw.http_addr.unwrap();
    let grant = "%5B%22ga%22%5D";
    // (host, consent Set-Cookie from the origin): the page is http://<host>/explore/x.
    let decoys = [
        (
            "www.portal.test",
            format!("cookies_preferences={grant}; Path=/; Domain=other.test"),
        ),
        (
            "www.portal.test",
            format!("cookies_preferences={grant}; Path=/; Domain=test"),
        ),
        (
            "www.portal.test",
            format!("cookies_preferences={grant}; Path=/admin"),
        ),
        (
            "www.portal.test",
            format!("cookies_preferences={grant}; Path=/; Secure"),
        ),
        ("prefixed.test", format!("__Secure-prefs={grant}; Path=/")),
    ];
    for (host, decoy) in &decoys {
        let r = get(
            addr,
            host,
            "/explore/x",
            &format!("X-Set-Consent: {decoy}\r\n"),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.all("set-cookie"),
            vec![decoy.clone()],
            "{decoy}: forwarded as is (always necessary), but it grants nothing: _ga dropped"
        );
    }
    // A host-only Path=/ consent cookie is one the browser holds: it grants.
    let held = format!("cookies_preferences={grant}; Path=/");
    let r = get(
        addr,
        "www.portal.test",
        "/explore/x",
        &format!("X-Set-Consent: {held}\r\n"),
    )
    .await;
    assert_eq!(
        r.set_cookie_names(),
        vec!["cookies_preferences", "_ga"],
        "{:?}",
        r.all("set-cookie")
    );
    let m = String::from_utf8(admin(&gw, "/metrics").await.body).unwrap();
    assert!(
        m.contains(r#"consent_gateway_set_cookie_total{host="portal.test",category="statistical",verdict="dropped"} 4"#),
        "{m}"
    );
}

/// The portal's registry plus a `__Host-` tracker.
fn portal_with_host_prefix(up: std::net::SocketAddr) -> String {
    format!(
        "{}\n[[cookie]]\nname = \"__Host-track\"\ncategory = \"marketing\"\n",
        portal_toml(up, "")
    )
}

#[tokio::test]
async fn a_refused_ga_is_deleted_under_every_domain_up_to_the_registrable_one() {
    let (up, seen) = cookie_origin(&[]).await;
    let gw = gateway("", &[("p.toml", portal_with_host_prefix(up))]).await;
    let r = get(
        gw.http_addr.unwrap(),
        "www.portal.test",
        "/explore/",
        "Cookie: _ga=GA1.1.123.456; __Host-track=1; sessionid=s\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        seen.last_headers().get("cookie").unwrap(),
        "sessionid=s",
        "refused cookies never reach the origin"
    );
    assert_eq!(
        r.all("set-cookie"),
        vec![
            // gtag's _ga lives on the registrable domain (Domain=portal.test): host-only alone
            // would leave it in the jar.
            "_ga=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/",
            "_ga=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Domain=www.portal.test",
            "_ga=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Domain=portal.test",
            // __Host-: exactly one deletion, Secure, Path=/, no Domain.
            "__Host-track=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Secure",
        ]
    );
    assert_eq!(r.all("vary"), vec!["Cookie"]);
}

#[tokio::test]
async fn thousands_of_refused_cookies_get_at_most_max_purge_headers_deletions() {
    let (up, _) = cookie_origin(&["sessionid=new; Path=/"]).await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let cookies: Vec<String> = (0..2000).map(|i| format!("_ga_{i:04}=1")).collect();
    let r = get(
        gw.http_addr.unwrap(),
        "www.portal.test",
        "/",
        &format!("Cookie: {}\r\n", cookies.join("; ")),
    )
    .await;
    assert_eq!(r.status, 200);
    let sets = r.all("set-cookie");
    assert_eq!(
        sets[0], "sessionid=new; Path=/",
        "the origin's own header first"
    );
    let deletions = &sets[1..];
    assert!(
        deletions.len() <= 64,
        "{} deletions for 2,000 refused cookies",
        deletions.len()
    );
    // Three per name (host-only, www.portal.test, portal.test): 21 whole names, the first ones
    // the browser sent; the others wait for later responses.
    assert_eq!(deletions.len(), 63);
    let names: Vec<&str> = deletions
        .iter()
        .map(|v| v.split('=').next().unwrap())
        .collect();
    assert_eq!(names[0], "_ga_0000");
    assert_eq!(names[62], "_ga_0020");
    let m = String::from_utf8(admin(&gw, "/metrics").await.body).unwrap();
    assert!(
        m.contains(r#"consent_gateway_purge_capped_total{host="portal.test"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(
            r#"consent_gateway_request_cookies_total{host="portal.test",action="purged"} 21"#
        ),
        "{m}"
    );
    // A lower limit from the config.
    let gw = gateway(
        "[limits]\nmax_purge_headers = 7\n",
        &[("p.toml", portal_toml(up, ""))],
    )
    .await;
    let r = get(
        gw.http_addr.unwrap(),
        "www.portal.test",
        "/",
        &format!("Cookie: {}\r\n", cookies[..10].join("; ")),
    )
    .await;
    assert_eq!(r.all("set-cookie").len(), 1 + 6);
}
