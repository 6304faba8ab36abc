//! The registry directory off the happy path: entries that cannot be read as files, and a
//! directory removed and created again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use consent_gateway::config::load;
use consent_gateway::control::live::ReloadResult;
use consent_gateway::gateway::Gateway;

const BIN: &str = env!("CARGO_BIN_EXE_consent-gateway");

struct Disk {
    gw: Gateway,
    dir: tempfile::TempDir,
}

impl Disk {
    async fn start(text: &str) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gateway.toml"),
            "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[registry]\ndir = \"hosts\"\npoll_interval = \"1h\"\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("hosts")).unwrap();
        std::fs::write(dir.path().join("hosts/portal.toml"), text).unwrap();
        let (cfg, registry) = load(&dir.path().join("gateway.toml")).unwrap();
        let gw = Gateway::start(&cfg, registry).await.unwrap();
        Disk { gw, dir }
    }

    fn hosts(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    async fn status(&self, host: &str) -> u16 {
        get(self.gw.http_addr.unwrap(), host, "/", "").await.status
    }

    /// Waits until `host` answers `want` (the watcher at work), at most `within`.
    async fn serves(&self, host: &str, want: u16, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.status(host).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{host}: {got}, want {want} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

/// Each kind of unreadable `*.toml` entry, put in place of (or beside) a good file: the reload
/// fails naming the entry, the last good registry keeps serving, `/registry` shows the error.
/// Before, the entry was skipped: a host silently vanished (421) with `last_error` null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_entries_keep_the_last_good_registry() {
    let (origin, _) = cookie_origin(&[]).await;
    let good = portal_toml(origin, "");
    let d = Disk::start(&good).await;
    assert_eq!(d.status("portal.test").await, 200);
    let portal = d.hosts().join("portal.toml");
    type Setup = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, &str, Setup, &str)> = vec![
        (
            "dangling symlink",
            "portal.toml",
            Box::new(|p: &Path| {
                std::fs::remove_file(p).unwrap();
                std::os::unix::fs::symlink(p.with_file_name("gone.toml.orig"), p).unwrap();
            }),
            "dangling symlink",
        ),
        (
            "looping symlink",
            "portal.toml",
            Box::new(|p: &Path| {
                std::fs::remove_file(p).unwrap();
                std::os::unix::fs::symlink(p, p).unwrap();
            }),
            "symlink loop",
        ),
        (
            "directory",
            "extra.toml",
            Box::new(|p: &Path| std::fs::create_dir(p.with_file_name("extra.toml")).unwrap()),
            "it is a directory",
        ),
        (
            "FIFO",
            "extra.toml",
            Box::new(|p: &Path| mkfifo(&p.with_file_name("extra.toml"))),
            "it is a FIFO",
        ),
        (
            "file over 16 MiB",
            "portal.toml",
            Box::new(move |p: &Path| {
                let mut big = std::fs::read(p).unwrap();
                big.resize(16 * 1024 * 1024 + 1, b'\n');
                std::fs::write(p, big).unwrap();
            }),
            "file too large",
        ),
    ];
    for (what, file, setup, message) in cases {
        setup(&portal);
        let r = d.gw.reload().await;
        let ReloadResult::Error(errors) = &r else {
            panic!("{what}: reload {r:?}");
        };
        assert!(
            errors
                .iter()
                .any(|e| e.file.ends_with(file) && e.message.contains(message)),
            "{what}: {errors:?}"
        );
        assert_eq!(d.status("portal.test").await, 200, "{what}: host removed");
        let reg: serde_json::Value =
            serde_json::from_slice(&admin(&d.gw, "/registry").await.body).unwrap();
        let last = &reg["last_error"];
        assert!(
            last["file"].as_str().unwrap().ends_with(file),
            "{what}: {reg}"
        );
        assert!(
            last["message"].as_str().unwrap().contains(message),
            "{what}: {reg}"
        );

        // `check` refuses it too, naming the file.
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(d.dir.path().join("gateway.toml"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{what}: {stdout}{stderr}");
        assert!(
            stderr.contains(file) && stderr.contains(message),
            "{what}: {stderr}"
        );

        // Put the good state back.
        let extra = d.hosts().join("extra.toml");
        if std::fs::symlink_metadata(&extra).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir(&extra).unwrap();
        } else if std::fs::symlink_metadata(&extra).is_ok() {
            std::fs::remove_file(&extra).unwrap();
        }
        if std::fs::symlink_metadata(&portal).is_ok() {
            std::fs::remove_file(&portal).unwrap();
        }
        std::fs::write(&portal, &good).unwrap();
        let r = d.gw.reload().await;
        assert!(!matches!(r, ReloadResult::Error(_)), "{what}: {r:?}");
        let reg: serde_json::Value =
            serde_json::from_slice(&admin(&d.gw, "/registry").await.body).unwrap();
        assert!(reg["last_error"].is_null(), "{reg}");
    }
}

/// The registry directory removed and created again: the watch is re-established, and a later
/// edit is applied within seconds (the poll is an hour). Before, changes waited for the poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreated_registry_dir_is_watched_again() {
    let (origin, _) = cookie_origin(&[]).await;
    let d = Disk::start(&portal_toml(origin, "")).await;
    d.serves("portal.test", 200, Duration::from_secs(5)).await;
    std::fs::remove_dir_all(d.hosts()).unwrap();
    // The removal is an error: the last good registry keeps serving.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.status("portal.test").await, 200);
    std::fs::create_dir(d.hosts()).unwrap();
    let with =
        |extra: &str| format!("hosts = [\"portal.test\"{extra}]\nupstream = \"http://{origin}\"\n");
    std::fs::write(d.hosts().join("portal.toml"), with(", \"again.test\"")).unwrap();
    d.serves("again.test", 200, Duration::from_secs(5)).await;
    // An edit in the new directory.
    let tmp = d.hosts().join(".portal.toml.tmp");
    std::fs::write(&tmp, with(", \"edited.test\"")).unwrap();
    std::fs::rename(&tmp, d.hosts().join("portal.toml")).unwrap();
    d.serves("edited.test", 200, Duration::from_secs(5)).await;
    d.serves("again.test", 421, Duration::from_secs(5)).await;
}
