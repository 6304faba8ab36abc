//! HTTP/1.1 keep-alive connections between requests: the gateway lets its HTTP connection state
//! go while a client connection is idle and starts it again with the next request
//! (`server::serve_h1`). These tests drive one client connection through idle pauses,
//! pipelining, split heads and bodies, upgrades and the drain, with raw bytes over TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An origin that records `METHOD path body` of every request it has read whole, and answers
/// `ok <path>` with two cookies.
async fn recording_origin() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = Arc::clone(&seen);
    let (addr, _) = origin(move |req: Request<Incoming>| {
        let s = Arc::clone(&s);
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            s.lock().unwrap().push(format!(
                "{} {} {}",
                parts.method,
                parts.uri.path(),
                String::from_utf8_lossy(&body)
            ));
            Response::builder()
                .header("set-cookie", "sessionid=s1; Path=/")
                .header("set-cookie", "ads=1; Path=/")
                .body(full(format!("ok {}", parts.uri.path())))
                .unwrap()
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test]
async fn one_connection_serves_requests_across_idle_pauses() {
    let (up, seen) = recording_origin().await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let mut s = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..5 {
        s.write_all(get_line(&format!("/r{i}")).as_bytes())
            .await
            .unwrap();
        let r = read_response(&mut s, &mut pending)
            .await
            .expect("a response");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, format!("ok /r{i}").as_bytes());
        assert_eq!(r.set_cookie_names(), vec!["sessionid"], "filtered");
        // The connection goes idle between requests (the pause is what is tested).
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(seen.lock().unwrap().len(), 5);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (up, seen) = recording_origin().await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let mut s = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
    let three = format!("{}{}{}", get_line("/a"), get_line("/b"), get_line("/c"));
    s.write_all(three.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    for p in ["/a", "/b", "/c"] {
        let r = read_response(&mut s, &mut pending)
            .await
            .expect("a response");
        assert_eq!(r.body, format!("ok {p}").as_bytes());
    }
    // And the connection is still usable after it went idle.
    s.write_all(get_line("/d").as_bytes()).await.unwrap();
    let r = read_response(&mut s, &mut pending)
        .await
        .expect("a response");
    assert_eq!(r.body, b"ok /d");
    assert_eq!(seen.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn a_head_and_a_body_split_by_pauses_are_served_whole() {
    let (up, seen) = recording_origin().await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let mut s = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
    let mut pending = Vec::new();
    // A first request, so that the split one comes on an idle kept-alive connection.
    s.write_all(get_line("/first").as_bytes()).await.unwrap();
    read_response(&mut s, &mut pending)
        .await
        .expect("a response");
    let parts: [&[u8]; 4] = [
        b"POST /split HTTP/1.1\r\nHo",
        b"st: portal.test\r\nContent-Length: 10\r\n\r\n",
        b"01234",
        b"56789",
    ];
    for p in parts {
        s.write_all(p).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = read_response(&mut s, &mut pending)
        .await
        .expect("a response");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok /split"[..]));
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec!["GET /first ", "POST /split 0123456789"]
    );
}

/// A request refused before its body was read: the rest of its body, sent later and shaped like
/// a request, is never served as one.
#[tokio::test]
async fn the_unread_rest_of_a_refused_body_is_never_a_request() {
    let (up, seen) = recording_origin().await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let mut s = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
    let mut pending = Vec::new();
    // An unknown host is answered at once, without reading the body.
    let smuggled = get_line("/smuggled");
    let head = format!(
        "POST /x HTTP/1.1\r\nHost: unknown.test\r\nContent-Length: {}\r\n\r\n",
        smuggled.len() + 5
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(b"12345").await.unwrap();
    let r = read_response(&mut s, &mut pending)
        .await
        .expect("a response");
    assert!(r.status >= 400, "{}", r.status);
    // The rest of the body arrives once the gateway has answered.
    let _ = s.write_all(smuggled.as_bytes()).await;
    if let Some(r) = read_response(&mut s, &mut pending).await {
        panic!("a second response: {} {:?}", r.status, r.body);
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

#[tokio::test]
async fn an_upgrade_after_kept_alive_requests_is_tunnelled() {
    let up = echo_upgrade_origin().await;
    let gw = gateway("", &[("p.toml", portal_toml(up, ""))]).await;
    let mut s = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
    let mut pending = Vec::new();
    for _ in 0..2 {
        s.write_all(get_line("/").as_bytes()).await.unwrap();
        let r = read_response(&mut s, &mut pending)
            .await
            .expect("a response");
        assert_eq!(r.body, b"plain");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    s.write_all(WEBSOCKET_UPGRADE).await.unwrap();
    let r = read_response(&mut s, &mut pending).await.expect("a 101");
    assert_eq!(r.status, 101);
    s.write_all(b"echo me").await.unwrap();
    let mut echo = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert_eq!(&echo, b"echo me");
}

#[tokio::test]
async fn the_drain_closes_idle_connections_at_once() {
    let (up, _) = recording_origin().await;
    let gw = gateway(
        "[limits]\nshutdown_grace = \"20s\"\n",
        &[("p.toml", portal_toml(up, ""))],
    )
    .await;
    let mut s = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
    let mut pending = Vec::new();
    s.write_all(get_line("/").as_bytes()).await.unwrap();
    read_response(&mut s, &mut pending)
        .await
        .expect("a response");
    // A second connection that has not sent anything yet.
    let mut fresh = TcpStream::connect(gw.http_addr.unwrap()).await.unwrap();
    gw.begin_shutdown();
    let start = std::time::Instant::now();
    assert_eq!(gw.wait().await, 0, "nothing had to be cut");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let mut rest = [0u8; 16];
    assert_eq!(s.read(&mut rest).await.unwrap_or(0), 0, "closed");
    assert_eq!(fresh.read(&mut rest).await.unwrap_or(0), 0, "closed");
}

/// A client that opens a connection and sends nothing, or goes quiet between requests, is
/// closed after `header_read_timeout`, as one that sends a head too slowly.
#[tokio::test]
async fn silent_and_slow_clients_are_closed_after_header_read_timeout() {
    let (up, _) = recording_origin().await;
    let gw = gateway(
        "[limits]\nheader_read_timeout = \"1s\"\n",
        &[("p.toml", portal_toml(up, ""))],
    )
    .await;
    let addr = gw.http_addr.unwrap();
    let closed_after = |mut s: TcpStream| async move {
        let start = std::time::Instant::now();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed within 5 s")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without a response");
        start.elapsed()
    };
    // Silent from the start.
    let silent = TcpStream::connect(addr).await.unwrap();
    // A head that starts at once and never ends: the time counts from the connection, not
    // from its last byte.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let slow = async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        slow.write_all(b"Host: portal.test\r\n").await.unwrap();
        closed_after(slow).await + Duration::from_millis(600)
    };
    let (a, b) = tokio::join!(closed_after(silent), slow);
    for t in [a, b] {
        assert!(
            t >= Duration::from_millis(900) && t < Duration::from_secs(3),
            "{t:?}"
        );
    }
}
