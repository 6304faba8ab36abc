//! The real binary under signals: SIGTERM drains, SIGHUP reloads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_request_and_exits_zero() {
    let (up, mut arrived, release_tx) = gated_origin(&["sessionid=1", "_ga=1"], "finished").await;
    let mut gw = Binary::start(&portal_toml(up, ""), "[limits]\nshutdown_grace = \"20s\"\n").await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: portal.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    arrived.recv().await.unwrap();

    gw.signal("TERM");
    gw.wait_log(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listener closed"))
    })
    .await;
    let ready = get(gw.admin, "admin", "/readyz", "").await;
    assert_eq!(
        ready.status, 503,
        "readiness is off while draining; the admin listener stays up"
    );
    assert!(
        TcpStream::connect(gw.http).await.is_err(),
        "new connections are refused while draining"
    );

    release_tx.send(true).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let r = parse_response(&buf).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"finished"[..]));
    assert_eq!(r.set_cookie_names(), vec!["sessionid"]);
    assert_eq!(gw.exit_status().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_registry() {
    static SETS: &[&str] = &["_ga=1", "sessionid=2"];
    let (up, _) = cookie_origin(SETS).await;
    // Watching off: only the signal can reload.
    let mut gw = Binary::start(&portal_toml(up, ""), "watch = false\n").await;
    assert_eq!(
        get(gw.http, "portal.test", "/", "")
            .await
            .set_cookie_names(),
        vec!["sessionid"]
    );

    // Reclassify _ga as necessary, then SIGHUP.
    let edited = portal_toml(up, "").replace(
        "name = \"_ga\"\ncategory = \"statistical\"",
        "name = \"_ga\"\ncategory = \"necessary\"",
    );
    std::fs::write(gw.dir.path().join("hosts/portal.toml"), edited).unwrap();
    gw.signal("HUP");
    let line = gw.wait_log(|v| v["message"] == "registry reloaded").await;
    assert_eq!(line["generation"], 2);
    assert_eq!(
        get(gw.http, "portal.test", "/", "")
            .await
            .set_cookie_names(),
        vec!["_ga", "sessionid"]
    );

    // A broken file keeps the last good registry and shows the error.
    std::fs::write(
        gw.dir.path().join("hosts/portal.toml"),
        "hosts = [\"portal.test\"\n",
    )
    .unwrap();
    gw.signal("HUP");
    let err = gw.wait_log(|v| v["level"] == "ERROR").await;
    assert!(
        err["file"].as_str().unwrap().ends_with("hosts/portal.toml"),
        "{err}"
    );
    assert_eq!(
        get(gw.http, "portal.test", "/", "")
            .await
            .set_cookie_names(),
        vec!["_ga", "sessionid"]
    );
    let reg: serde_json::Value =
        serde_json::from_slice(&get(gw.admin, "admin", "/registry", "").await.body).unwrap();
    assert_eq!(reg["generation"], 2);
    assert_eq!(reg["last_error"]["line"], 1);
    let m = String::from_utf8(get(gw.admin, "admin", "/metrics", "").await.body).unwrap();
    assert!(
        m.contains("consent_gateway_config_last_reload_success 0"),
        "{m}"
    );
    assert!(
        m.contains(r#"consent_gateway_config_reloads_total{result="error"} 1"#),
        "{m}"
    );
    assert_eq!(gw.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn invalid_config_exits_one_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[listen]\nhttp = \"127.0.0.1:0\"\n[limits]\nidle_timeout = \"forever\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--log-format", "json", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway.toml:4:16: limits.idle_timeout: invalid duration"),
        "{err}"
    );
}
