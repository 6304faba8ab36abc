//! End to end: a real origin on loopback, the gateway in front, a raw client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PORTAL: &[&str] = &[
    "sessionid=abc123; HttpOnly; Secure; SameSite=Lax; Path=/",
    "_ga=GA1.2.3.4; Path=/; Max-Age=63072000",
    "csrftoken=tok;Path=/",
    "_ga_ABC123=GS1.1.1; Path=/",
    "_pk_id=1.2; Path=/",
    "ads=1; Domain=.portal.test",
    "mystery=42",
];

async fn portal(extra_host: &str) -> (consent_gateway::gateway::Gateway, Seen) {
    let (up, seen) = cookie_origin(PORTAL).await;
    let gw = gateway("", &[("portal.toml", portal_toml(up, extra_host))]).await;
    (gw, seen)
}

fn cookie(v: &str) -> String {
    format!("Cookie: {v}\r\n")
}

#[tokio::test]
async fn no_consent_keeps_only_necessary_cookies() {
    let (gw, _) = portal("").await;
    let r = get(gw.http_addr.unwrap(), "portal.test", "/", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.set_cookie_names(), vec!["sessionid", "csrftoken"]);
    assert_eq!(r.body, b"hello\n");
}

#[tokio::test]
async fn granted_keys_keep_their_cookies_byte_for_byte_in_order() {
    let (gw, _) = portal("").await;
    let r = get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/",
        &cookie(&format!("cookies_preferences={}", prefs(&["ga"]))),
    )
    .await;
    assert_eq!(
        r.all("set-cookie"),
        vec![
            "sessionid=abc123; HttpOnly; Secure; SameSite=Lax; Path=/",
            "_ga=GA1.2.3.4; Path=/; Max-Age=63072000",
            "csrftoken=tok;Path=/",
            "_ga_ABC123=GS1.1.1; Path=/",
        ]
    );
}

#[tokio::test]
async fn each_consent_case_end_to_end() {
    let (gw, _) = portal("gpc = [\"statistical\"]").await;
    let addr = gw.http_addr.unwrap();
    let all = prefs(&["ga", "matomo", "marketing"]);
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "no consent cookie",
            String::new(),
            vec!["sessionid", "csrftoken"],
        ),
        (
            "undecodable consent",
            cookie("cookies_preferences=%7Bnot-json"),
            vec!["sessionid", "csrftoken"],
        ),
        (
            "raw JSON object",
            cookie("cookies_preferences={\"matomo\":true,\"ga\":false}"),
            vec!["sessionid", "csrftoken", "_pk_id"],
        ),
        (
            "JSON array of keys",
            cookie("cookies_preferences=[\"marketing\"]"),
            vec!["sessionid", "csrftoken", "ads"],
        ),
        (
            "percent-encoded, all",
            cookie(&format!("cookies_preferences={all}")),
            vec![
                "sessionid",
                "_ga",
                "csrftoken",
                "_ga_ABC123",
                "_pk_id",
                "ads",
            ],
        ),
        (
            "any listed key grants",
            cookie("cookies_preferences=[\"C0002\"]"),
            vec!["sessionid", "_ga", "csrftoken"],
        ),
        (
            "Sec-GPC refuses the gpc categories",
            format!(
                "{}Sec-GPC: 1\r\n",
                cookie(&format!("cookies_preferences={all}"))
            ),
            vec!["sessionid", "csrftoken", "ads"],
        ),
        (
            "consent cookie after a non-UTF-8 cookie",
            "Cookie: bad=\u{ff}; cookies_preferences=[\"ga\"]\r\n".to_owned(),
            vec!["sessionid", "_ga", "csrftoken", "_ga_ABC123"],
        ),
        (
            "several Cookie headers",
            "Cookie: a=1\r\nCookie: cookies_preferences=[\"ga\"]\r\n".to_owned(),
            vec!["sessionid", "_ga", "csrftoken", "_ga_ABC123"],
        ),
    ];
    for (what, headers, want) in cases {
        let r = get(addr, "Portal.Test:8080", "/", &headers).await;
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(r.set_cookie_names(), want, "{what}");
    }
}

#[tokio::test]
async fn report_only_changes_nothing_but_counts() {
    let (gw, _) = portal("mode = \"report-only\"").await;
    let r = get(gw.http_addr.unwrap(), "portal.test", "/", "").await;
    assert_eq!(r.all("set-cookie"), PORTAL.to_vec());
    let m = String::from_utf8(admin(&gw, "/metrics").await.body).unwrap();
    assert!(
        m.contains(r#"consent_gateway_set_cookie_total{host="portal.test",category="statistical",verdict="would_drop"} 3"#),
        "{m}"
    );
    assert!(m.contains(r#"consent_gateway_set_cookie_total{host="portal.test",category="unknown",verdict="would_drop"} 1"#));
}

#[tokio::test]
async fn consent_set_by_the_upstream_applies_to_its_whole_response() {
    static SETS: &[&str] = &[
        "_ga=1",
        "cookies_preferences=%7B%22ga%22%3Atrue%7D; Path=/",
        "_pk_id=2",
    ];
    let (up, _) = cookie_origin(SETS).await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let r = get(gw.http_addr.unwrap(), "portal.test", "/", "").await;
    assert_eq!(r.set_cookie_names(), vec!["_ga", "cookies_preferences"]);
}

#[tokio::test]
async fn deletions_are_always_kept() {
    static SETS: &[&str] = &[
        "_ga=; Max-Age=0; Path=/",
        "mystery=; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        "_pk_id=live",
    ];
    let (up, _) = cookie_origin(SETS).await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let r = get(gw.http_addr.unwrap(), "portal.test", "/", "").await;
    assert_eq!(r.all("set-cookie"), SETS[..2].to_vec());
}

#[tokio::test]
async fn vary_cookie_is_added_and_merged() {
    let (up, _) = origin(|req| async move {
        let mut b = Response::builder().header("vary", "Accept-Encoding");
        if req.uri().path() == "/cookies" {
            b = b.header("set-cookie", "sessionid=1");
        }
        b.body(full("x")).unwrap()
    })
    .await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let addr = gw.http_addr.unwrap();
    let r = get(addr, "portal.test", "/cookies", "").await;
    assert_eq!(r.all("vary"), vec!["Accept-Encoding, Cookie"]);
    let r = get(addr, "portal.test", "/plain", "").await;
    assert_eq!(
        r.all("vary"),
        vec!["Accept-Encoding"],
        "no Set-Cookie, no Vary: Cookie"
    );
}

#[tokio::test]
async fn filter_runs_on_304_and_head() {
    let (up, _) = origin(|req| async move {
        let status = if req.uri().path() == "/304" { 304 } else { 200 };
        Response::builder()
            .status(status)
            .header("set-cookie", "_ga=1")
            .header("set-cookie", "sessionid=2")
            .header("content-length", "5")
            .body(full(
                if req.method() == http::Method::HEAD || status == 304 {
                    ""
                } else {
                    "hello"
                },
            ))
            .unwrap()
    })
    .await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let addr = gw.http_addr.unwrap();
    let r = get(addr, "portal.test", "/304", "").await;
    assert_eq!(
        (r.status, r.set_cookie_names()),
        (304, vec!["sessionid".to_owned()])
    );
    let r = raw(
        addr,
        b"HEAD / HTTP/1.1\r\nHost: portal.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        (r.status, r.set_cookie_names()),
        (200, vec!["sessionid".to_owned()])
    );
    assert!(r.body.is_empty());
    assert_eq!(r.get("content-length").as_deref(), Some("5"));
}

#[tokio::test]
async fn unknown_host_is_421_and_no_host_is_400() {
    let (gw, seen) = portal("").await;
    let addr = gw.http_addr.unwrap();
    let r = get(addr, "elsewhere.test", "/", "").await;
    assert_eq!(r.status, 421);
    assert_eq!(r.body, b"421 misdirected request: unknown host\n");
    // The wildcard covers labels below it, not the bare suffix's neighbours.
    assert_eq!(get(addr, "evilportal.test", "/", "").await.status, 421);
    assert_eq!(get(addr, "a.portal.test", "/", "").await.status, 200);
    let r = raw(addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 400);
    let r = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: portal.test\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
    let r = raw(addr, b"GARBAGE\r\n\r\n").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        seen.count(),
        1,
        "only the a.portal.test request reached the origin"
    );
    let m = String::from_utf8(admin(&gw, "/metrics").await.body).unwrap();
    assert!(
        m.contains(r#"consent_gateway_requests_total{host="unknown",code="421"} 2"#),
        "{m}"
    );
}

#[tokio::test]
async fn upstream_down_is_502() {
    let down = closed_port().await;
    let gw = gateway("", &[("p.toml", portal_toml(down, ""))]).await;
    let r = get(gw.http_addr.unwrap(), "portal.test", "/", "").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.body, b"502 bad gateway\n");
    let m = String::from_utf8(admin(&gw, "/metrics").await.body).unwrap();
    assert!(
        m.contains(r#"consent_gateway_upstream_errors_total{host="portal.test",kind="connect"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn upstream_slower_than_response_timeout_is_504() {
    // Reads the whole request, then stays silent: for a GET and for a POST whose body was
    // sent in full, the wait for the response head ends in a 504.
    let (up, _) = origin(|req| async move {
        let _ = req.into_body().collect().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(full("late"))
    })
    .await;
    let gw = gateway(
        "[limits]\nupstream_response_timeout = \"300ms\"\n",
        &[("p.toml", portal_toml(up, ""))],
    )
    .await;
    let start = std::time::Instant::now();
    let r = get(gw.http_addr.unwrap(), "portal.test", "/", "").await;
    assert_eq!(r.status, 504);
    assert!(start.elapsed() < Duration::from_secs(4));
    let start = std::time::Instant::now();
    let r = raw(
        gw.http_addr.unwrap(),
        b"POST /form HTTP/1.1\r\nHost: portal.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(r.status, 504);
    assert!(start.elapsed() < Duration::from_secs(4));
    let m = String::from_utf8(admin(&gw, "/metrics").await.body).unwrap();
    assert!(
        m.contains(r#"consent_gateway_upstream_errors_total{host="portal.test",kind="timeout"} 2"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_slow_upload_is_not_cut_by_the_response_timeout() {
    // The origin answers once it has the whole body. The client takes ~1.6 s to send it, in
    // pieces 400 ms apart: longer than upstream_response_timeout (1 s), but never idle for
    // idle_timeout (2 s). The response timeout counts from the end of the upload, as the
    // SPEC has it ("bounds the wait for the upstream's response headers").
    let (up, _) = origin(|req| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::new(full(format!("got {} bytes", body.len())))
    })
    .await;
    let gw = gateway(
        "[limits]\nupstream_response_timeout = \"1s\"\nidle_timeout = \"2s\"\n",
        &[("p.toml", portal_toml(up, ""))],
    )
    .await;
    let mut s = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: portal.test\r\nContent-Length: 20\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    for _ in 0..4 {
        s.write_all(b"12345").await.unwrap();
        // The pacing of the upload is what the test is about, not a wait for an event.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(start.elapsed() > Duration::from_secs(1));
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let r = parse_response(&buf).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"got 20 bytes"[..]));
}

#[tokio::test]
async fn upstream_reset_before_answering_is_502() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            // Zero linger makes the close an RST; it does not block on a reset.
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let r = get(gw.http_addr.unwrap(), "portal.test", "/", "").await;
    assert_eq!(r.status, 502);
}

#[tokio::test]
async fn large_bodies_stream_both_ways_intact() {
    // The origin echoes the request body back, streaming.
    let (up, _) = origin(|req| async move {
        let body = req.into_body().boxed();
        Response::builder()
            .header("set-cookie", "_ga=1")
            .body(body)
            .unwrap()
    })
    .await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let size = 16 * 1024 * 1024;
    let payload: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let want = Sha256::digest(&payload);
    let mut s = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
    let head = format!("POST /echo HTTP/1.1\r\nHost: portal.test\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n");
    let (mut rd, mut wr) = s.split();
    let send = async {
        wr.write_all(head.as_bytes()).await.unwrap();
        for chunk in payload.chunks(64 * 1024) {
            wr.write_all(chunk).await.unwrap();
        }
    };
    let mut buf = Vec::with_capacity(size + 1024);
    let recv = rd.read_to_end(&mut buf);
    let ((), n) = tokio::join!(send, recv);
    n.unwrap();
    let r = parse_response(&buf).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.all("set-cookie").is_empty());
    assert_eq!(r.body.len(), size);
    assert_eq!(Sha256::digest(&r.body), want);
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_reach_the_origin() {
    let (gw, seen) = portal("").await;
    let r = get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/",
        "Connection: X-Private\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: gzip\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\nX-Kept: yes\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let h = seen.last_headers();
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the origin: {h:?}");
    }
    assert_eq!(h.get("x-kept").unwrap(), "yes");
    assert_eq!(h.get("host").unwrap(), "portal.test");
}

#[tokio::test]
async fn upstream_host_replaces_host() {
    let (up, seen) = cookie_origin(&[]).await;
    let gw = gateway(
        "",
        &[(
            "p.toml",
            portal_toml(up, "upstream_host = \"origin.internal\""),
        )],
    )
    .await;
    get(gw.http_addr.unwrap(), "portal.test", "/", "").await;
    let h = seen.last_headers();
    assert_eq!(h.get("host").unwrap(), "origin.internal");
    assert_eq!(h.get("x-forwarded-host").unwrap(), "portal.test");
}

#[tokio::test]
async fn x_forwarded_headers_from_untrusted_client_are_replaced() {
    let (gw, seen) = portal("").await;
    get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/",
        "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: bank.example\r\n",
    )
    .await;
    let h = seen.last_headers();
    assert_eq!(
        h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
        vec!["127.0.0.1"]
    );
    assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
    assert_eq!(h.get("x-forwarded-host").unwrap(), "portal.test");
}

#[tokio::test]
async fn x_forwarded_headers_from_trusted_proxy_are_kept_and_appended() {
    let (up, seen) = cookie_origin(PORTAL).await;
    let gw = gateway(
        "[proxy]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
        &[("p.toml", portal_toml(up, ""))],
    )
    .await;
    get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/",
        "X-Forwarded-For: 203.0.113.7, 10.0.0.2\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: www.portal.test\r\n",
    )
    .await;
    let h = seen.last_headers();
    assert_eq!(
        h.get("x-forwarded-for").unwrap(),
        "203.0.113.7, 10.0.0.2, 127.0.0.1"
    );
    assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
    assert_eq!(h.get("x-forwarded-host").unwrap(), "www.portal.test");
}

#[tokio::test]
async fn request_headers_too_large_is_431() {
    let (up, seen) = cookie_origin(PORTAL).await;
    let gw = gateway(
        "[limits]\nmax_header_bytes = 16384\n",
        &[("p.toml", portal_toml(up, ""))],
    )
    .await;
    let big = "a".repeat(20_000);
    let r = get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/",
        &format!("X-Big: {big}\r\n"),
    )
    .await;
    assert_eq!(r.status, 431);
    assert_eq!(seen.count(), 0);
}

/// hyper answers a head its parser refuses itself (no handler runs), and tells a target too long
/// (414) from a head too large (431) only by its error's message: the request counter (and the
/// access log) must say what hyper answered.
#[tokio::test]
async fn uri_too_long_is_414_and_head_too_large_431_in_the_counters() {
    let (up, seen) = cookie_origin(PORTAL).await;
    // hyper's longest target is 65,534 bytes: a head limit above it lets a longer one parse.
    let wide = gateway(
        "[limits]\nmax_header_bytes = 131072\n",
        &[("p.toml", portal_toml(up, ""))],
    )
    .await;
    let long = format!("/{}", "a".repeat(70_000));
    let r = get(wide.http_addr.unwrap(), "portal.test", &long, "").await;
    assert_eq!(r.status, 414);
    let narrow = gateway(
        "[limits]\nmax_header_bytes = 16384\n",
        &[("p.toml", portal_toml(up, ""))],
    )
    .await;
    let big = "a".repeat(20_000);
    let r = get(
        narrow.http_addr.unwrap(),
        "portal.test",
        "/",
        &format!("X-Big: {big}\r\n"),
    )
    .await;
    assert_eq!(r.status, 431);
    assert_eq!(seen.count(), 0);
    // Counted when hyper's connection ends, which the client may see first: wait for the lines.
    for (gw, want) in [
        (
            &wide,
            r#"consent_gateway_requests_total{host="unknown",code="414"} 1"#,
        ),
        (
            &narrow,
            r#"consent_gateway_requests_total{host="unknown",code="431"} 1"#,
        ),
    ] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m = String::from_utf8(admin(gw, "/metrics").await.body).unwrap();
            if m.contains(want) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{want} not in {m}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn metrics_present_after_traffic() {
    let (gw, _) = portal("").await;
    get(gw.http_addr.unwrap(), "portal.test", "/", "").await;
    let r = admin(&gw, "/metrics").await;
    assert_eq!(r.status, 200);
    let m = String::from_utf8(r.body).unwrap();
    for want in [
        r#"consent_gateway_requests_total{host="portal.test",code="200"} 1"#,
        "consent_gateway_request_duration_seconds_count 1",
        r#"consent_gateway_set_cookie_total{host="portal.test",category="necessary",verdict="kept"} 2"#,
        r#"consent_gateway_set_cookie_total{host="portal.test",category="statistical",verdict="dropped"} 3"#,
        r#"consent_gateway_set_cookie_total{host="portal.test",category="marketing",verdict="dropped"} 1"#,
        r#"consent_gateway_set_cookie_total{host="portal.test",category="unknown",verdict="dropped"} 1"#,
        "consent_gateway_config_last_reload_success 1",
        "consent_gateway_config_generation 1",
        "# TYPE consent_gateway_config_reloads counter",
        "# TYPE consent_gateway_upstream_errors counter",
    ] {
        assert!(m.contains(want), "missing {want:?} in\n{m}");
    }
}

#[tokio::test]
async fn admin_health_registry_and_unknown_paths() {
    let (gw, _) = portal("").await;
    assert_eq!(admin(&gw, "/healthz").await.status, 200);
    assert_eq!(admin(&gw, "/readyz").await.status, 200);
    assert_eq!(admin(&gw, "/nope").await.status, 404);
    let r = admin(&gw, "/registry").await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["generation"], 1);
    assert_eq!(
        v["hosts"][0]["hosts"],
        serde_json::json!(["portal.test", "*.portal.test"])
    );
    assert_eq!(v["hosts"][0]["mode"], "enforce");
    assert_eq!(v["hosts"][0]["cookies"], 6);
    assert!(v["last_error"].is_null());
    assert_eq!(v["digest"].as_str().unwrap().len(), 64);
    assert!(v["loaded_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn shutdown_finishes_in_flight_request_and_turns_readiness_off() {
    let (up, mut arrived, release) = gated_origin(&["sessionid=1", "_ga=1"], "done").await;
    let mut gw = gateway(
        "[limits]\nshutdown_grace = \"10s\"\n",
        &[("p.toml", portal_toml(up, ""))],
    )
    .await;
    let addr = gw.http_addr.unwrap();
    let admin_addr = gw.admin_addr.unwrap();
    // Start a request, and shut down once it has reached the origin.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: portal.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    arrived.recv().await.unwrap();
    gw.begin_shutdown();
    let ready = get(admin_addr, "admin", "/readyz", "").await;
    assert_eq!(ready.status, 503, "readiness turns off while draining");
    // Once every worker has closed the listener, new connections are refused.
    assert_eq!(
        gw.listeners_closed().await,
        1,
        "one connection left to drain"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still accepting while draining"
    );
    release.send(true).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let r = parse_response(&buf).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"done"[..]));
    assert_eq!(
        r.set_cookie_names(),
        vec!["sessionid"],
        "in-flight response is still filtered"
    );
    assert_eq!(gw.wait().await, 0, "nothing had to be cut");
}

#[tokio::test]
async fn shutdown_grace_cuts_what_remains() {
    let (up, mut arrived, _never) = gated_origin(&[], "never").await;
    let gw = gateway(
        "[limits]\nshutdown_grace = \"200ms\"\n",
        &[("p.toml", portal_toml(up, ""))],
    )
    .await;
    let mut s = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: portal.test\r\n\r\n")
        .await
        .unwrap();
    arrived.recv().await.unwrap();
    gw.begin_shutdown();
    let start = std::time::Instant::now();
    assert_eq!(gw.wait().await, 1);
    assert!(start.elapsed() < Duration::from_secs(5));
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(buf.is_empty(), "the cut connection got no response");
}

#[tokio::test]
async fn websocket_upgrade_is_filtered_then_tunnelled() {
    // The origin accepts the upgrade (with cookies on the 101) and echoes every byte back.
    let (up, _) = origin(|mut req| async move {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Response::builder()
            .status(101)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .header("set-cookie", "_ga=1")
            .header("set-cookie", "sessionid=ws")
            .body(full(Bytes::new()))
            .unwrap()
    })
    .await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let mut s = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: portal.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let r = parse_response(&head).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(
        r.set_cookie_names(),
        vec!["sessionid"],
        "the 101 response is filtered"
    );
    assert_eq!(r.get("upgrade").as_deref(), Some("websocket"));
    // A masked WebSocket text frame "hello" goes through and comes back byte for byte.
    let frame = [
        0x81u8, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    s.write_all(&frame).await.unwrap();
    let mut echo = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo, frame);
}

#[tokio::test]
async fn keep_alive_connection_serves_several_requests() {
    let (gw, seen) = portal("").await;
    let mut s = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: portal.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: portal.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(seen.count(), 2);
}

#[tokio::test]
async fn request_body_reaches_the_origin() {
    let (up, _) = origin(|req| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::new(full(format!(
            "got {} bytes: {}",
            body.len(),
            String::from_utf8_lossy(&body)
        )))
    })
    .await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let r = raw(
        gw.http_addr.unwrap(),
        b"POST /form HTTP/1.1\r\nHost: portal.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.body, b"got 11 bytes: hello world");
}
