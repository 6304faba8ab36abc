//! Hostile clients, broken origins and overload, driven with raw bytes over TCP.
//!
//! Each refusal test checks the status, that the origin saw nothing (or exactly what it should:
//! never a second, smuggled request), and that the gateway then serves a normal request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

// ---------------------------------------------------------------------------------------------
// Harness.

/// One request as the origin saw it, body included (`Err` when the body broke off).
#[derive(Debug, Clone)]
struct SeenReq {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Result<Vec<u8>, String>,
}

/// Every request the origin finished reading, in order.
#[derive(Clone)]
struct Recorded {
    all: Arc<Mutex<Vec<SeenReq>>>,
    count: tokio::sync::watch::Sender<usize>,
}

impl Recorded {
    fn all(&self) -> Vec<SeenReq> {
        self.all.lock().unwrap().clone()
    }

    fn len(&self) -> usize {
        self.all.lock().unwrap().len()
    }

    fn paths(&self) -> Vec<String> {
        self.all().into_iter().map(|r| r.uri).collect()
    }

    /// Waits (bounded) until the origin has recorded `n` requests.
    async fn wait_for(&self, n: usize) {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|c| *c >= n))
            .await
            .expect("origin records the request within 5 s")
            .unwrap();
    }
}

/// An origin that reads each request's whole body, records it, and answers 200 with a necessary
/// and a marketing cookie.
async fn recording_origin() -> (SocketAddr, Recorded) {
    let rec = Recorded {
        all: Arc::default(),
        count: tokio::sync::watch::channel(0).0,
    };
    let r = rec.clone();
    let (addr, _) = origin(move |req: Request<Incoming>| {
        let r = r.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .map_err(|e| e.to_string());
            let n = {
                let mut all = r.all.lock().unwrap();
                all.push(SeenReq {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    headers: parts.headers,
                    body,
                });
                all.len()
            };
            r.count.send_replace(n);
            Response::builder()
                .header("set-cookie", "sessionid=s1; Path=/")
                .header("set-cookie", "ads=1; Path=/")
                .header("content-type", "text/plain")
                .body(full("ok\n"))
                .unwrap()
        }
    })
    .await;
    (addr, rec)
}

/// A registry file for `ok.test`, a second portal that keeps working while `portal.test`'s
/// origin misbehaves.
fn ok_toml(upstream: SocketAddr) -> String {
    format!(
        "hosts = [\"ok.test\"]\nupstream = \"http://{upstream}\"\n\n[[cookie]]\nname = \"sessionid\"\ncategory = \"necessary\"\n"
    )
}

/// Sends `bytes` on a new connection and reads until the gateway closes it (bounded: panics if
/// the gateway keeps the connection open for 5 s).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut s, &mut buf))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "gateway did not close the connection; got {:?}",
                String::from_utf8_lossy(&buf)
            )
        });
    buf
}

/// Reads until EOF or a reset (a reset after the response is still the end).
async fn read_to_close(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The status codes of the responses in `wire`, in order.
fn statuses(wire: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(wire);
    text.match_indices("HTTP/1.1 ")
        .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n'))
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// The gateway still serves: a normal request on a new connection gets 200 and is the one new
/// request the origin sees.
async fn assert_still_serving(addr: SocketAddr, rec: &Recorded) {
    let before = rec.len();
    let r = get(addr, "portal.test", "/still-serving", "").await;
    assert_eq!(r.status, 200, "the gateway still serves");
    assert_eq!(r.set_cookie_names(), vec!["sessionid"], "and still filters");
    // The origin records a request before it answers it.
    let new = rec.paths()[before..].to_vec();
    assert_eq!(
        new.iter().filter(|p| *p == "/still-serving").count(),
        1,
        "{new:?}"
    );
}

/// Sends `bytes`, expects exactly one `status` response with `Connection: close`, the connection
/// closed, and nothing forwarded; then checks the gateway still serves.
async fn assert_refused(addr: SocketAddr, rec: &Recorded, bytes: &[u8], status: u16) {
    let before = rec.len();
    let wire = exchange(addr, bytes).await;
    let what = String::from_utf8_lossy(bytes).into_owned();
    assert_eq!(statuses(&wire), vec![status], "{what:?}");
    if status == 400 {
        let r = parse_response(&wire).unwrap();
        assert_eq!(r.get("connection").as_deref(), Some("close"), "{what:?}");
    }
    assert_still_serving(addr, rec).await;
    assert_eq!(
        rec.paths()[before..],
        ["/still-serving"],
        "the origin saw nothing of {what:?}"
    );
}

async fn portal_gateway(limits: &str) -> (consent_gateway::gateway::Gateway, SocketAddr, Recorded) {
    let (up, rec) = recording_origin().await;
    let gw = gateway(limits, &[("portal.toml", portal_toml(up, ""))]).await;
    let addr = gw.http_addr.unwrap();
    (gw, addr, rec)
}

// ---------------------------------------------------------------------------------------------
// Request smuggling: ambiguous framing is refused with 400 and close, never forwarded.

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_in_either_order() {
    let (_gw, addr, rec) = portal_gateway("").await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: portal.test\r\n\r\n";
    for head in [
        "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
        "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let req = format!("POST / HTTP/1.1\r\nHost: portal.test\r\n{head}\r\n0\r\n\r\n{smuggled}");
        assert_refused(addr, &rec, req.as_bytes(), 400).await;
    }
    // With Expect: 100-continue the refusal comes before any 100.
    let req = "POST / HTTP/1.1\r\nHost: portal.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_refused(addr, &rec, req.as_bytes(), 400).await;
}

#[tokio::test]
async fn differing_duplicate_content_lengths_are_refused() {
    let (_gw, addr, rec) = portal_gateway("").await;
    for head in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: 5, 5\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: 5 6\r\n",
    ] {
        let req = format!("POST / HTTP/1.1\r\nHost: portal.test\r\n{head}\r\nhello!GET /smuggled HTTP/1.1\r\nHost: portal.test\r\n\r\n");
        assert_refused(addr, &rec, req.as_bytes(), 400).await;
    }
    // Two equal values are one length (RFC 9110 §8.6): forwarded once, with that body.
    let wire = exchange(
        addr,
        b"POST /same HTTP/1.1\r\nHost: portal.test\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(statuses(&wire), vec![200]);
    let last = rec.all().pop().unwrap();
    assert_eq!(last.headers.get_all("content-length").iter().count(), 1);
    assert_eq!(
        (last.uri.as_str(), last.body.unwrap()),
        ("/same", b"hello".to_vec())
    );
}

#[tokio::test]
async fn transfer_encoding_on_http_1_0_is_refused() {
    let (_gw, addr, rec) = portal_gateway("").await;
    let req = b"POST / HTTP/1.0\r\nHost: portal.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_refused(addr, &rec, req, 400).await;
}

#[tokio::test]
async fn transfer_codings_other_than_a_single_chunked_are_refused() {
    let (_gw, addr, rec) = portal_gateway("").await;
    for te in [
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding : chunked\r\n",
        "Transfer-Encoding:\x0bchunked\r\n",
    ] {
        let req = format!("POST / HTTP/1.1\r\nHost: portal.test\r\n{te}\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: portal.test\r\n\r\n");
        assert_refused(addr, &rec, req.as_bytes(), 400).await;
    }
    // The one accepted coding: forwarded once, de-chunked.
    let wire = exchange(
        addr,
        b"POST /chunked HTTP/1.1\r\nHost: portal.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&wire), vec![200]);
    let last = rec.all().pop().unwrap();
    assert_eq!(
        (last.uri.as_str(), last.body.unwrap()),
        ("/chunked", b"hello".to_vec())
    );
}

#[tokio::test]
async fn obs_fold_is_refused() {
    let (_gw, addr, rec) = portal_gateway("").await;
    for req in [
        &b"GET / HTTP/1.1\r\nHost: portal.test\r\nX-A: a\r\n b\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: portal.test\r\nX-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: portal.test\r\nContent-Length: 5\r\n\tTransfer-Encoding: chunked\r\n\r\nhello",
    ] {
        assert_refused(addr, &rec, req, 400).await;
    }
}

#[tokio::test]
async fn bare_cr_lf_or_nul_in_a_request_head_is_refused() {
    let (_gw, addr, rec) = portal_gateway("").await;
    for req in [
        &b"GET / HTTP/1.1\r\nHost: portal.test\r\nX-A: a\rb\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: portal.test\r\nX-A: a\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: portal.test\r\nX-A: a\nX-B: b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: portal.test\n\n",
        b"GET / HTTP/1.1\r\nHost: portal.test\r\n\n",
        b"GET / HTTP/1.1\r\nHost: portal.test\r\nX-A: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: portal.test\r\nX A: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n Host: portal.test\r\n\r\n",
    ] {
        assert_refused(addr, &rec, req, 400).await;
    }
}

#[tokio::test]
async fn requests_pipelined_behind_a_refused_one_are_never_forwarded() {
    let (_gw, addr, rec) = portal_gateway("").await;
    let wire = exchange(
        addr,
        b"GET /first HTTP/1.1\r\nHost: portal.test\r\n\r\n\
          POST /ambiguous HTTP/1.1\r\nHost: portal.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /smuggled HTTP/1.1\r\nHost: portal.test\r\n\r\n\
          GET /third HTTP/1.1\r\nHost: portal.test\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&wire), vec![200, 400]);
    assert_eq!(rec.paths(), ["/first"]);
    assert_still_serving(addr, &rec).await;
}

#[tokio::test]
async fn a_body_that_looks_like_a_request_stays_a_body() {
    let (_gw, addr, rec) = portal_gateway("").await;
    let inner = "GET /smuggled HTTP/1.1\r\nHost: portal.test\r\n\r\n";
    let chunked = format!(
        "POST /chunked HTTP/1.1\r\nHost: portal.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
        inner.len()
    );
    let sized = format!(
        "POST /sized HTTP/1.1\r\nHost: portal.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{inner}",
        inner.len()
    );
    let wire = exchange(addr, format!("{chunked}{sized}").as_bytes()).await;
    assert_eq!(statuses(&wire), vec![200, 200]);
    let seen = rec.all();
    assert_eq!(rec.paths(), ["/chunked", "/sized"]);
    for s in seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.body.unwrap(), inner.as_bytes());
    }
}

#[tokio::test]
async fn a_malformed_chunked_body_is_400_and_never_completes_at_the_origin() {
    let (_gw, addr, rec) = portal_gateway("").await;
    for body in [
        "5\r\nhello\r\nzz\r\n",
        "ffffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
        "5;a\nb\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
    ] {
        let before = rec.len();
        let req = format!("POST /bad-chunks HTTP/1.1\r\nHost: portal.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}GET /smuggled HTTP/1.1\r\nHost: portal.test\r\n\r\n");
        let wire = exchange(addr, req.as_bytes()).await;
        assert_eq!(statuses(&wire), vec![400], "{body:?}");
        // The body streams, so the origin may have seen the head start; it never sees the
        // request complete, nor anything after it.
        assert_still_serving(addr, &rec).await;
        for s in &rec.all()[before..] {
            assert!(
                s.uri == "/still-serving" || (s.uri == "/bad-chunks" && s.body.is_err()),
                "{s:?}"
            );
        }
    }
}

#[tokio::test]
async fn connect_and_a_host_differing_from_the_target_are_refused() {
    let (_gw, addr, rec) = portal_gateway("").await;
    assert_refused(
        addr,
        &rec,
        b"CONNECT portal.test:443 HTTP/1.1\r\nHost: portal.test:443\r\nConnection: close\r\n\r\n",
        405,
    )
    .await;
    assert_refused(
        addr,
        &rec,
        b"GET http://portal.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n",
        400,
    )
    .await;
    assert_refused(
        addr,
        &rec,
        b"GET / HTTP/1.1\r\nHost: portal.test\r\nHost: evil.test\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn trace_is_refused() {
    let (_gw, addr, rec) = portal_gateway("").await;
    assert_refused(
        addr,
        &rec,
        b"TRACE / HTTP/1.1\r\nHost: portal.test\r\nCookie: sessionid=s\r\nConnection: close\r\n\r\n",
        405,
    )
    .await;
}

#[tokio::test]
async fn an_h2c_upgrade_offer_is_never_forwarded() {
    let offer = b"GET /h2c HTTP/1.1\r\nHost: portal.test\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    // An ordinary origin: the request arrives as plain HTTP/1.1.
    let (_gw, addr, rec) = portal_gateway("").await;
    let wire = exchange(addr, offer).await;
    assert_eq!(statuses(&wire), vec![200]);
    let seen = rec.all().pop().unwrap();
    assert_eq!(seen.uri, "/h2c");
    assert!(seen.headers.get("upgrade").is_none(), "{:?}", seen.headers);
    assert!(seen.headers.get("http2-settings").is_none());
    // An origin that switches to h2c whatever it is asked: no tunnel, 502.
    let switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
    let (_gw, addr, heads, rec) = broken_origin_gateway(switch, After::Close, "").await;
    assert_eq!(statuses(&exchange(addr, offer).await), vec![502]);
    let head = String::from_utf8_lossy(&heads.lock().unwrap()[0]).to_ascii_lowercase();
    assert!(
        !head.contains("upgrade:") && !head.contains("http2-settings"),
        "{head}"
    );
    assert_other_portal_served(addr, &rec).await;
}

#[tokio::test]
async fn refusals_are_logged_and_counted() {
    let (logs, _guard) = Logs::capture();
    let (gw, addr, _rec) = portal_gateway("").await;
    // Refused by hyper's parser (no handler runs; hyper's own 400 has an empty body).
    let wire = exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: portal.test\r\nX: a\r\n b\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&wire), vec![400]);
    // Refused by the gateway's own checks.
    let wire = exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: portal.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&wire), vec![400]);
    let r = parse_response(&wire).unwrap();
    assert_eq!(r.body, b"400 bad request\n");
    let text = logs.text();
    assert!(
        text.contains("request refused by the HTTP/1 parser"),
        "{text}"
    );
    assert!(
        text.contains("request refused before forwarding")
            && text.contains("content-length with transfer-encoding"),
        "{text}"
    );
    let m = String::from_utf8(admin(&gw, "/metrics").await.body).unwrap();
    assert!(
        m.contains(r#"consent_gateway_requests_total{host="unknown",code="400"} 2"#),
        "{m}"
    );
}

// ---------------------------------------------------------------------------------------------
// Slow and greedy clients.

#[tokio::test]
async fn slowloris_does_not_starve_other_clients() {
    const SLOW: usize = 500;
    const WAVE: usize = 50;
    let (gw, addr, rec) = portal_gateway("[limits]\nheader_read_timeout = \"2s\"\n").await;
    let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut slow = JoinSet::new();
    for i in 0..SLOW {
        let ready_tx = ready_tx.clone();
        slow.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let start = Instant::now();
            s.write_all(b"GET /slow HTTP/1.1\r\nHost: portal.test\r\n")
                .await
                .unwrap();
            let _ = ready_tx.send(());
            let mut tick = tokio::time::interval(Duration::from_millis(150 + (i % 7) as u64 * 10));
            let mut buf = [0u8; 256];
            let trickle = async {
                loop {
                    tokio::select! {
                        r = s.read(&mut buf) => match r {
                            Ok(0) | Err(_) => return Ok(start.elapsed()),
                            Ok(_) => return Err("the gateway answered a request that never ended"),
                        },
                        _ = tick.tick() => {
                            if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                                return Ok(start.elapsed());
                            }
                        }
                    }
                }
            };
            // Bounded: a connection still open after 8 s fails the test.
            tokio::time::timeout(Duration::from_secs(8), trickle)
                .await
                .unwrap_or(Err("still open after 8 s"))
        });
        if (i + 1) % WAVE == 0 {
            // The listener's backlog is 128: let the gateway accept each wave before the next
            // (an attacker's connections arrive over time; a burst past the backlog would
            // measure the kernel's SYN retry, not the gateway).
            for _ in 0..WAVE {
                ready.recv().await.unwrap();
            }
            // The gateway accepts every slow connection.
            let want = i64::try_from(i + 1).unwrap();
            open_connections(&gw, "http", |n| n >= want).await;
        }
    }
    drop(ready_tx);
    // All 500 are trickling: a normal client is served as usual.
    let normal_start = Instant::now();
    for i in 0..20 {
        let t = Instant::now();
        let r = get(addr, "portal.test", &format!("/normal/{i}"), "").await;
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "a normal request took {:?} under slowloris",
            t.elapsed()
        );
    }
    let normal_took = normal_start.elapsed();
    assert!(
        normal_took < Duration::from_secs(2),
        "normal requests finished while the slow ones were still trickling ({normal_took:?})"
    );
    // Every slow connection was cut by header_read_timeout (2 s), not earlier, not much later.
    while let Some(r) = slow.join_next().await {
        let closed_after = r.unwrap().unwrap();
        assert!(
            closed_after >= Duration::from_millis(1900) && closed_after < Duration::from_secs(6),
            "slow connection closed after {closed_after:?}"
        );
    }
    // Nothing of the slow requests reached the origin.
    assert_eq!(rec.len(), 20);
    assert!(rec.paths().iter().all(|p| p.starts_with("/normal/")));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_header_read_timeout() {
    let (_gw, addr, _rec) = portal_gateway("[limits]\nheader_read_timeout = \"1s\"\n").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: portal.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.ends_with(b"ok\n") {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "response before close");
        buf.extend_from_slice(&chunk[..n]);
    }
    let idle_since = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without another response");
    let idle = idle_since.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
}

/// Sends one keep-alive request on `s` and reads its whole response (the recording origin's
/// responses carry a `Content-Length`).
async fn one_exchange(s: &mut TcpStream, path: &str) -> Vec<u8> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: portal.test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(r) = parse_response(&buf) {
            let want = r
                .get("content-length")
                .and_then(|v| v.parse::<usize>().ok());
            if want == Some(r.body.len()) {
                return buf;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(n > 0, "closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn connections_over_max_connections_get_503_and_the_others_are_served() {
    // Four workers, one budget: the limit counts connections over all of them.
    let (up, rec) = recording_origin().await;
    let gw = gateway_with_workers(
        "[limits]\nmax_connections = 2\n",
        &[("portal.toml", portal_toml(up, ""))],
        Some(4),
    )
    .await;
    let addr = gw.http_addr.unwrap();
    // Served once each, so both surely hold a permit.
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        statuses(&one_exchange(&mut first, "/first-a").await),
        vec![200]
    );
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        statuses(&one_exchange(&mut second, "/second-a").await),
        vec![200]
    );
    let wire = exchange(addr, b"GET /third HTTP/1.1\r\nHost: portal.test\r\n\r\n").await;
    let r = parse_response(&wire).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.body, b"503 service unavailable\n");
    // The two open connections are counted once in total and once by the worker serving each.
    let text = String::from_utf8(admin(&gw, "/metrics").await.body).unwrap();
    let by_worker: Vec<i64> = (0..4)
        .map(|w| {
            let key = format!("consent_gateway_worker_connections_open{{worker=\"{w}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&key));
            line.and_then(|l| l[key.len()..].trim().parse().ok())
                .unwrap_or_else(|| panic!("no gauge for worker {w}:\n{text}"))
        })
        .collect();
    assert_eq!(by_worker.iter().sum::<i64>(), 2, "{by_worker:?}");
    assert!(
        text.contains("consent_gateway_connections_open{listener=\"http\"} 2\n"),
        "{text}"
    );
    // The connections within the limit are still served.
    first
        .write_all(b"GET /first HTTP/1.1\r\nHost: portal.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut first, &mut buf))
        .await
        .unwrap();
    assert_eq!(statuses(&buf), vec![200]);
    assert_eq!(rec.paths(), ["/first-a", "/second-a", "/first"]);
    // A closed connection gives its permit back: once the gateway has seen the close (the open
    // connections gauge falls, after the permit is back), a new one is served.
    drop(first);
    open_connections(&gw, "http", |n| n <= 1).await;
    let wire = exchange(
        addr,
        b"GET /fourth HTTP/1.1\r\nHost: portal.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        statuses(&wire),
        vec![200],
        "a permit came back after a connection closed"
    );
    drop(second);
}

#[tokio::test]
async fn a_keep_alive_connection_serves_at_most_1000_requests() {
    let (_gw, addr, rec) = portal_gateway("").await;
    let max = consent_gateway::edge::server::MAX_REQUESTS_PER_CONNECTION;
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut buf)).await;
        buf
    });
    let mut pipelined = Vec::new();
    for i in 0..=max {
        pipelined.extend_from_slice(
            format!("GET /{i} HTTP/1.1\r\nHost: portal.test\r\n\r\n").as_bytes(),
        );
    }
    wr.write_all(&pipelined).await.unwrap();
    let wire = reader.await.unwrap();
    let codes = statuses(&wire);
    assert_eq!(
        codes.len(),
        max,
        "one response per request up to the limit, then close"
    );
    assert!(codes.iter().all(|&c| c == 200));
    let text = String::from_utf8_lossy(&wire);
    let last = &text[text.rfind("HTTP/1.1 ").unwrap()..];
    assert!(last.contains("connection: close"), "{last}");
    assert_eq!(rec.len(), max);
    assert_eq!(rec.paths().last().unwrap(), &format!("/{}", max - 1));
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_and_never_completes_at_the_origin() {
    let (_gw, addr, rec) =
        portal_gateway("[limits]\nidle_timeout = \"1s\"\nupstream_response_timeout = \"1s\"\n")
            .await;
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /stalled HTTP/1.1\r\nHost: portal.test\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut s, &mut buf))
        .await
        .expect("answered and closed within 5 s");
    // Whichever 1 s timer fires first: the upstream response timeout (504), or the client body
    // or connection idle timeout (408).
    let codes = statuses(&buf);
    assert!(codes == [504] || codes == [408], "{codes:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    rec.wait_for(1).await;
    let seen = rec.all();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].body.is_err(),
        "the origin saw a body that broke off"
    );
    assert_still_serving(addr, &rec).await;
}

// ---------------------------------------------------------------------------------------------
// Broken origins.

/// What a scripted origin does after writing its bytes.
#[derive(Clone, Copy, Debug)]
enum After {
    Close,
    /// Closes with a TCP reset.
    Reset,
    /// Never answers at all.
    Hang,
    /// Answers the first request of each connection (keep-alive); closes on reading the second.
    OnceThenClose,
}

/// An origin on raw TCP: for each request head it reads, writes `response` then does `after`.
/// Returns its address and every request head (with any body bytes that came along) it read.
async fn scripted_origin(
    response: Vec<u8>,
    after: After,
) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = Arc::clone(&heads);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let response = response.clone();
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut served = false;
                let mut chunk = [0u8; 4096];
                loop {
                    let end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    h.lock().unwrap().push(buf.drain(..end).collect());
                    match after {
                        After::Hang => {
                            // Holds the connection until the gateway gives up on it.
                            let _ = s.read(&mut chunk).await;
                            return;
                        }
                        After::OnceThenClose if served => return,
                        _ => {}
                    }
                    served = true;
                    if s.write_all(&response).await.is_err() {
                        return;
                    }
                    match after {
                        After::Close => return,
                        After::Reset => {
                            let _ = s.set_zero_linger();
                            return;
                        }
                        After::Hang | After::OnceThenClose => {}
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// A gateway with `portal.test` in front of a scripted origin and `ok.test` in front of a
/// recording one.
async fn broken_origin_gateway(
    response: &[u8],
    after: After,
    limits: &str,
) -> (
    consent_gateway::gateway::Gateway,
    SocketAddr,
    Arc<Mutex<Vec<Vec<u8>>>>,
    Recorded,
) {
    let (bad, heads) = scripted_origin(response.to_vec(), after).await;
    let (good, rec) = recording_origin().await;
    // One worker, one upstream pool: the tests count what reaches the origin over pooled
    // connections.
    let gw = gateway_with_workers(
        limits,
        &[
            ("portal.toml", portal_toml(bad, "")),
            ("ok.toml", ok_toml(good)),
        ],
        Some(1),
    )
    .await;
    let addr = gw.http_addr.unwrap();
    (gw, addr, heads, rec)
}

/// The other portal is still served.
async fn assert_other_portal_served(addr: SocketAddr, rec: &Recorded) {
    let r = get(addr, "ok.test", "/", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok\n");
    rec.wait_for(1).await;
}

const GET_PORTAL: &[u8] = b"GET / HTTP/1.1\r\nHost: portal.test\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn an_origin_reset_mid_body_ends_the_client_response() {
    for (response, after) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten.."[..],
            After::Reset,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..",
            After::Close,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten..\r\n",
            After::Reset,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten..\r\n",
            After::Close,
        ),
    ] {
        let (_gw, addr, heads, rec) = broken_origin_gateway(response, after, "").await;
        let start = Instant::now();
        // `exchange` fails the test if the gateway leaves the client hanging.
        let wire = exchange(addr, GET_PORTAL).await;
        assert!(start.elapsed() < Duration::from_secs(2));
        let text = String::from_utf8_lossy(&wire);
        assert_eq!(statuses(&wire), vec![200], "{text}");
        if text.contains("content-length: 100") {
            let body = &wire[wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
            assert!(body.len() < 100, "the client sees a short body: {text}");
        } else {
            assert!(!text.ends_with("0\r\n\r\n"), "no final chunk: {text}");
        }
        assert_eq!(heads.lock().unwrap().len(), 1);
        assert_other_portal_served(addr, &rec).await;
    }
}

#[tokio::test]
async fn an_origin_that_never_answers_is_504() {
    let (_gw, addr, heads, rec) = broken_origin_gateway(
        b"",
        After::Hang,
        "[limits]\nupstream_response_timeout = \"1s\"\n",
    )
    .await;
    let start = Instant::now();
    let wire = exchange(addr, GET_PORTAL).await;
    assert_eq!(statuses(&wire), vec![504]);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(heads.lock().unwrap().len(), 1, "sent once, not retried");
    assert_other_portal_served(addr, &rec).await;
}

#[tokio::test]
async fn invalid_response_header_lines_are_skipped_and_the_response_flows() {
    let response = b"HTTP/1.1 200 OK\r\n\
        Set-Cookie: sessionid=a\x01b; Path=/\r\n\
        Set-Cookie: csrftoken=t; Path=/\r\n\
        Bad Name: x\r\n\
        Set-Cookie\x7f: ads=1\r\n\
        X-Folded: a\r\n b\r\n\
        Set-Cookie: sessionid=\x7f\r\n\
        Content-Length: 3\r\n\r\nok\n";
    let (_gw, addr, _heads, rec) = broken_origin_gateway(response, After::Close, "").await;
    let r = parse_response(&exchange(addr, GET_PORTAL).await).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.all("set-cookie"), vec!["csrftoken=t; Path=/"]);
    assert_eq!(r.get("bad name"), None);
    assert_eq!(r.body, b"ok\n");
    assert_other_portal_served(addr, &rec).await;
}

#[tokio::test]
async fn a_nul_or_bare_cr_in_a_response_header_is_502() {
    for response in [
        &b"HTTP/1.1 200 OK\r\nSet-Cookie: sessionid=a\x00b\r\nContent-Length: 3\r\n\r\nok\n"[..],
        b"HTTP/1.1 200 OK\r\nSet-Cookie: sessionid=a\rb\r\nContent-Length: 3\r\n\r\nok\n",
    ] {
        let (_gw, addr, _heads, rec) = broken_origin_gateway(response, After::Close, "").await;
        assert_eq!(statuses(&exchange(addr, GET_PORTAL).await), vec![502]);
        assert_other_portal_served(addr, &rec).await;
    }
}

#[tokio::test]
async fn obs_text_in_set_cookie_is_judged_by_name_and_kept_bytes_are_exact() {
    let response = b"HTTP/1.1 200 OK\r\n\
        Set-Cookie: sessionid=caf\xe9; Path=/\r\n\
        Set-Cookie: \xffads=1\r\n\
        Set-Cookie: ads=\xff\r\n\
        Content-Length: 3\r\n\r\nok\n";
    let (_gw, addr, _heads, rec) = broken_origin_gateway(response, After::Close, "").await;
    let wire = exchange(addr, GET_PORTAL).await;
    assert_eq!(statuses(&wire), vec![200]);
    // The head is not UTF-8: read its lines as bytes.
    let head = &wire[..wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap()];
    let cookies: Vec<&[u8]> = head
        .split(|&b| b == b'\n')
        .filter_map(|l| l.strip_prefix(b"set-cookie: "))
        .map(|v| v.strip_suffix(b"\r").unwrap_or(v))
        .collect();
    assert_eq!(cookies, vec![&b"sessionid=caf\xe9; Path=/"[..]]);
    assert_other_portal_served(addr, &rec).await;
}

#[tokio::test]
async fn informational_responses_are_skipped_and_the_final_one_is_filtered() {
    let response = b"HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nSet-Cookie: ads=early\r\n\r\n\
        HTTP/1.1 200 OK\r\nSet-Cookie: sessionid=s; Path=/\r\nSet-Cookie: ads=1\r\nContent-Length: 3\r\n\r\nok\n";
    let (_gw, addr, _heads, rec) = broken_origin_gateway(response, After::Close, "").await;
    let wire = exchange(addr, GET_PORTAL).await;
    assert_eq!(statuses(&wire), vec![200]);
    let r = parse_response(&wire).unwrap();
    assert_eq!(r.all("set-cookie"), vec!["sessionid=s; Path=/"]);
    assert_eq!(
        r.get("link"),
        None,
        "hints of a 1xx are not merged into the final response"
    );
    assert_eq!(r.body, b"ok\n");
    assert_other_portal_served(addr, &rec).await;
}

#[tokio::test]
async fn an_origin_response_with_length_and_chunked_is_forwarded_without_the_length() {
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n";
    let (_gw, addr, _heads, _rec) = broken_origin_gateway(response, After::Close, "").await;
    let r = parse_response(&exchange(addr, GET_PORTAL).await).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.get("content-length"), None);
    assert_eq!(r.body, b"ok\n");
}

#[tokio::test]
async fn a_get_is_sent_again_once_when_the_origin_closes_a_kept_alive_connection() {
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
    let (_gw, addr, heads, _rec) = broken_origin_gateway(response, After::OnceThenClose, "").await;
    for i in 0..10 {
        let r = get(addr, "portal.test", &format!("/{i}"), "").await;
        assert_eq!(r.status, 200, "request {i}");
    }
    // Every request after the first met a stale pooled connection and was sent once more.
    assert_eq!(heads.lock().unwrap().len(), 19);
    for method in ["HEAD", "OPTIONS", "DELETE"] {
        let req = format!("{method} / HTTP/1.1\r\nHost: portal.test\r\nConnection: close\r\n\r\n");
        assert_eq!(
            statuses(&exchange(addr, req.as_bytes()).await),
            vec![200],
            "{method}"
        );
    }
}

#[tokio::test]
async fn a_post_is_never_sent_again() {
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
    let (_gw, addr, heads, rec) = broken_origin_gateway(response, After::OnceThenClose, "").await;
    let post = b"POST /order HTTP/1.1\r\nHost: portal.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    assert_eq!(statuses(&exchange(addr, post).await), vec![200]);
    // The pooled connection is stale: the POST reaches it, the origin closes, 502.
    assert_eq!(statuses(&exchange(addr, post).await), vec![502]);
    let posts = heads
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.windows(11).any(|w| w == b"POST /order"))
        .count();
    assert_eq!(posts, 2, "each POST was sent exactly once");
    // A bodiless POST is not idempotent either.
    let empty_post = b"POST /order HTTP/1.1\r\nHost: portal.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let before = heads.lock().unwrap().len();
    let _ = exchange(addr, empty_post).await;
    let _ = exchange(addr, empty_post).await;
    assert_eq!(heads.lock().unwrap().len() - before, 2);
    assert_other_portal_served(addr, &rec).await;
}

#[tokio::test]
async fn an_oversized_origin_response_head_is_502_with_a_log_line() {
    let (logs, _guard) = Logs::capture();
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..150 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"Content-Length: 3\r\n\r\nok\n");
    // hyper checks its 64 KiB buffer between reads, so a head may overshoot by one read: past
    // 128 KiB it never passes.
    let mut large = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    large.extend(vec![b'a'; 150_000]);
    large.extend_from_slice(b"\r\nContent-Length: 3\r\n\r\nok\n");
    for response in [many, large] {
        let (_gw, addr, _heads, rec) = broken_origin_gateway(&response, After::Close, "").await;
        assert_eq!(statuses(&exchange(addr, GET_PORTAL).await), vec![502]);
        assert_other_portal_served(addr, &rec).await;
    }
    let text = logs.text();
    assert_eq!(
        text.matches("upstream error: upstream response head too large")
            .count(),
        2,
        "{text}"
    );
    // Within the limit: a 60 KB header passes.
    let mut fits = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    fits.extend(vec![b'a'; 60_000]);
    fits.extend_from_slice(b"\r\nContent-Length: 3\r\n\r\nok\n");
    let (_gw, addr, _heads, _rec) = broken_origin_gateway(&fits, After::Close, "").await;
    assert_eq!(statuses(&exchange(addr, GET_PORTAL).await), vec![200]);
}
