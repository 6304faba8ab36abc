//! The real binary under signals: SIGTERM drains, SIGHUP reloads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_consent-gateway");

/// The binary, started on a config in a temp dir; its JSON log lines arrive on `logs`.
struct Running {
    child: Child,
    logs: mpsc::Receiver<serde_json::Value>,
    http: SocketAddr,
    admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl Running {
    fn start(host_file: &str, extra: &str) -> Running {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!("[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[registry]\ndir = \"hosts\"\n{extra}"),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("hosts")).unwrap();
        std::fs::write(dir.path().join("hosts/portal.toml"), host_file).unwrap();
        let mut child = Command::new(BIN)
            .args(["run", "--log-format", "json", "--config"])
            .arg(dir.path().join("gateway.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                } else {
                    eprintln!("non-JSON log line: {line}");
                }
            }
        });
        let mut r = Running {
            child,
            logs,
            http: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            dir,
        };
        let ready = r.wait_log(|v| v["message"] == "consent-gateway listening");
        r.http = ready["http"].as_str().unwrap().parse().unwrap();
        r.admin = ready["admin"].as_str().unwrap().parse().unwrap();
        r
    }

    /// The first log line (from now on) that `pred` accepts.
    fn wait_log(&mut self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            let v = match self.logs.recv_timeout(Duration::from_secs(15)) {
                Ok(v) => v,
                Err(e) => {
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "expected log line did not come ({e}); gateway status: {:?}",
                        self.child.try_wait()
                    );
                }
            };
            if pred(&v) {
                return v;
            }
            if v["level"] == "ERROR" {
                eprintln!("gateway logged an error: {v}");
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait_exit(&mut self) -> i32 {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway did not exit within 15 s");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_request_and_exits_zero() {
    let (up, mut arrived, release_tx) = gated_origin(&["sessionid=1", "_ga=1"], "finished").await;
    let mut gw = Running::start(&portal_toml(up, ""), "[limits]\nshutdown_grace = \"20s\"\n");
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
    });
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
    assert_eq!(gw.wait_exit(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_registry() {
    static SETS: &[&str] = &["_ga=1", "sessionid=2"];
    let (up, _) = cookie_origin(SETS).await;
    // Watching off: only the signal can reload.
    let mut gw = Running::start(&portal_toml(up, ""), "watch = false\n");
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
    let line = gw.wait_log(|v| v["message"] == "registry reloaded");
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
    let err = gw.wait_log(|v| v["level"] == "ERROR");
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
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(), 0);
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
