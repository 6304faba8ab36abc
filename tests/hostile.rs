//! Hostile clients: starved probes, abandoned requests, protocol faults, rapid reset.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// 200 idle (and slowloris) connections to the admin port: `/healthz` and `/readyz` keep
/// answering 200 within a second, again and again. Before the probe lane, the 65th admin
/// connection got a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_admin_connections_are_hogged() {
    let (origin, _) = cookie_origin(&[]).await;
    let gw = gateway("", &[("portal.toml", portal_toml(origin, ""))]).await;
    let admin_addr = gw.admin_addr.unwrap();
    let mut hogs = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(admin_addr).await.unwrap();
        if i % 2 == 1 {
            // Half of them start a request head and never finish it.
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n")
                .await
                .unwrap();
        }
        hogs.push(s);
    }
    for round in 0..6 {
        for path in ["/healthz", "/readyz"] {
            let t = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(1), admin(&gw, path))
                .await
                .unwrap_or_else(|_| panic!("round {round}: {path} took over a second"));
            assert_eq!(r.status, 200, "round {round}: {path}: {r:?}");
            assert!(t.elapsed() < Duration::from_secs(1));
        }
        // New hogs keep arriving while the probes are asked.
        for _ in 0..20 {
            hogs.push(TcpStream::connect(admin_addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(hogs);
}

/// Over the admin limit, what is not a probe gets a 503 (and the probe still a 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_admin_limit_only_probes_are_served() {
    let (origin, _) = cookie_origin(&[]).await;
    let gw = gateway("", &[("portal.toml", portal_toml(origin, ""))]).await;
    let admin_addr = gw.admin_addr.unwrap();
    let mut hogs = Vec::new();
    for _ in 0..consent_gateway::admin::MAX_CONNECTIONS {
        hogs.push(TcpStream::connect(admin_addr).await.unwrap());
    }
    // The hogs hold every full slot once accepted: a probe afterwards is in the lane.
    assert_eq!(admin(&gw, "/healthz").await.status, 200);
    assert_eq!(admin(&gw, "/metrics").await.status, 503);
    drop(hogs);
    // The full slots free up once the hogs are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if admin(&gw, "/metrics").await.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "/metrics never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
