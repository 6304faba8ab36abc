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
