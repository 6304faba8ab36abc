//! The registry directory off the happy path: entries that cannot be read as files, and a
//! directory removed and created again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use consent_gateway::control::live::ReloadResult;

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
    let d = Disk::start(&[("portal.toml", good.clone())]).await;
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
    let d = Disk::start(&[("portal.toml", portal_toml(origin, ""))]).await;
    assert_eq!(d.status("portal.test").await, 200);
    std::fs::remove_dir_all(d.hosts()).unwrap();
    // The removal is an error: the last good registry keeps serving.
    let errors = d.fails().await;
    assert!(
        errors[0].file.starts_with(d.hosts()),
        "the error names the directory: {errors:?}"
    );
    assert_eq!(d.status("portal.test").await, 200);
    std::fs::create_dir(d.hosts()).unwrap();
    let with =
        |extra: &str| format!("hosts = [\"portal.test\"{extra}]\nupstream = \"http://{origin}\"\n");
    std::fs::write(d.hosts().join("portal.toml"), with(", \"again.test\"")).unwrap();
    d.until_serving("again.test", true).await;
    assert_eq!(d.status("again.test").await, 200);
    // An edit in the new directory.
    d.replace("portal.toml", &with(", \"edited.test\""));
    d.until_serving("edited.test", true).await;
    assert_eq!(d.status("edited.test").await, 200);
    d.until_serving("again.test", false).await;
    assert_eq!(d.status("again.test").await, 421);
}
