//! Hot reload through the directory watcher: every way a registry changes on disk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use consent_gateway::config::load;
use consent_gateway::control::live::ReloadResult;
use consent_gateway::gateway::Gateway;

/// Origin sending `_ga` and `sessionid`; registry text where `_ga` has `category`.
fn portal_with_ga(up: SocketAddr, category: &str) -> String {
    portal_toml(up, "").replace(
        "name = \"_ga\"\ncategory = \"statistical\"",
        &format!("name = \"_ga\"\ncategory = \"{category}\""),
    )
}

const GA_AND_SESSION: &[&str] = &["_ga=1", "sessionid=2"];

async fn names(addr: SocketAddr, host: &str) -> (u16, Vec<String>) {
    let r = get(addr, host, "/", "").await;
    (r.status, r.set_cookie_names())
}

#[tokio::test]
async fn edit_in_place_is_picked_up() {
    let (up, _) = cookie_origin(GA_AND_SESSION).await;
    let d = Disk::start(&[("portal.toml", portal_with_ga(up, "statistical"))]).await;
    assert_eq!(names(d.http(), "portal.test").await.1, vec!["sessionid"]);
    std::fs::write(
        d.hosts().join("portal.toml"),
        portal_with_ga(up, "necessary"),
    )
    .unwrap();
    d.generation_becomes(2).await;
    assert_eq!(
        names(d.http(), "portal.test").await.1,
        vec!["_ga", "sessionid"]
    );
}

#[tokio::test]
async fn write_temp_then_rename_is_picked_up() {
    let (up, _) = cookie_origin(GA_AND_SESSION).await;
    let d = Disk::start(&[("portal.toml", portal_with_ga(up, "statistical"))]).await;
    d.replace("portal.toml", &portal_with_ga(up, "necessary"));
    d.generation_becomes(2).await;
    assert_eq!(
        names(d.http(), "portal.test").await.1,
        vec!["_ga", "sessionid"]
    );
}

#[tokio::test]
async fn adding_and_deleting_a_file_adds_and_removes_its_hosts() {
    let (up, _) = cookie_origin(GA_AND_SESSION).await;
    let d = Disk::start(&[("portal.toml", portal_toml(up, ""))]).await;
    assert_eq!(names(d.http(), "other.test").await.0, 421);
    let other = portal_toml(up, "").replace(
        "hosts = [\"portal.test\", \"*.portal.test\"]",
        "hosts = [\"other.test\"]",
    );
    d.replace("other.toml", &other);
    d.generation_becomes(2).await;
    assert_eq!(names(d.http(), "other.test").await.0, 200);
    std::fs::remove_file(d.hosts().join("other.toml")).unwrap();
    d.generation_becomes(3).await;
    assert_eq!(names(d.http(), "other.test").await.0, 421);
    assert_eq!(names(d.http(), "portal.test").await.0, 200);
}

#[tokio::test]
async fn invalid_toml_keeps_the_old_registry_until_fixed() {
    let (up, _) = cookie_origin(GA_AND_SESSION).await;
    let d = Disk::start(&[("portal.toml", portal_with_ga(up, "statistical"))]).await;
    d.replace("portal.toml", "hosts = [\"portal.test\"\nupstream = 3\n");
    let errors = d.fails().await;
    assert!(errors[0].file.ends_with("hosts/portal.toml"));
    assert_eq!((errors[0].line, errors[0].column), (2, 1));
    assert_eq!(
        names(d.http(), "portal.test").await,
        (200, vec!["sessionid".to_owned()])
    );
    let reg: serde_json::Value =
        serde_json::from_slice(&admin(&d.gw, "/registry").await.body).unwrap();
    assert_eq!(reg["generation"], 1);
    assert_eq!(reg["last_error"]["line"], 2);
    assert!(reg["last_error"]["file"]
        .as_str()
        .unwrap()
        .ends_with("portal.toml"));
    let m = String::from_utf8(admin(&d.gw, "/metrics").await.body).unwrap();
    assert!(
        m.contains("consent_gateway_config_last_reload_success 0"),
        "{m}"
    );
    assert!(
        m.contains(r#"consent_gateway_config_reloads_total{result="error"}"#),
        "{m}"
    );

    // Recovery: a good file serves and clears the error.
    d.replace("portal.toml", &portal_with_ga(up, "necessary"));
    d.generation_becomes(2).await;
    assert_eq!(
        names(d.http(), "portal.test").await.1,
        vec!["_ga", "sessionid"]
    );
    let reg: serde_json::Value =
        serde_json::from_slice(&admin(&d.gw, "/registry").await.body).unwrap();
    assert!(reg["last_error"].is_null(), "{reg}");
    let m = String::from_utf8(admin(&d.gw, "/metrics").await.body).unwrap();
    assert!(m.contains("consent_gateway_config_last_reload_success 1"));
    assert!(m.contains("consent_gateway_config_generation 2"));
}

#[tokio::test]
async fn duplicate_host_across_files_keeps_the_old_registry() {
    let (up, _) = cookie_origin(GA_AND_SESSION).await;
    let d = Disk::start(&[("a.toml", portal_toml(up, ""))]).await;
    d.replace("b.toml", &portal_toml(up, ""));
    let errors = d.fails().await;
    assert!(
        errors[0]
            .message
            .contains("portal.test is already served by"),
        "{errors:?}"
    );
    assert!(errors[0].file.ends_with("hosts/b.toml"));
    assert_eq!(d.gw.live.load().generation, 1);
    assert_eq!(names(d.http(), "portal.test").await.0, 200);
}

#[tokio::test]
async fn a_host_moving_between_files_in_one_change_is_not_a_duplicate() {
    let (up, _) = cookie_origin(GA_AND_SESSION).await;
    let a_with = portal_toml(up, "");
    let a_without = a_with.replace(
        "hosts = [\"portal.test\", \"*.portal.test\"]",
        "hosts = [\"stay.test\"]",
    );
    let d = Disk::start(&[("a.toml", a_with.clone())]).await;
    // One change: both files renamed into place back to back.
    let tmp_a = d.hosts().join(".a.tmp");
    let tmp_b = d.hosts().join(".b.tmp");
    std::fs::write(&tmp_a, &a_without).unwrap();
    std::fs::write(&tmp_b, &a_with).unwrap();
    std::fs::rename(&tmp_a, d.hosts().join("a.toml")).unwrap();
    std::fs::rename(&tmp_b, d.hosts().join("b.toml")).unwrap();
    let r = d.reloaded(|_| true).await;
    assert_eq!(
        r,
        ReloadResult::Success(2),
        "the move reloads in one step, with no error"
    );
    let reg: serde_json::Value =
        serde_json::from_slice(&admin(&d.gw, "/registry").await.body).unwrap();
    assert!(reg["hosts"][1]["file"]
        .as_str()
        .unwrap()
        .ends_with("b.toml"));
    assert_eq!(reg["hosts"][1]["hosts"][0], "portal.test");
    assert_eq!(names(d.http(), "stay.test").await.0, 200);
}

#[tokio::test]
async fn touch_without_change_does_nothing() {
    let (up, _) = cookie_origin(GA_AND_SESSION).await;
    let text = portal_toml(up, "");
    let d = Disk::start(&[("portal.toml", text.clone())]).await;
    d.replace("portal.toml", &text);
    let r = d.reloaded(|_| true).await;
    assert_eq!(r, ReloadResult::Unchanged);
    assert_eq!(d.gw.live.load().generation, 1);
    let m = String::from_utf8(admin(&d.gw, "/metrics").await.body).unwrap();
    assert!(
        m.contains(r#"consent_gateway_config_reloads_total{result="unchanged"}"#),
        "{m}"
    );
}

/// Lays out a directory as the kubelet mounts a ConfigMap: a timestamped data dir, `..data`
/// pointing at it, and each key a symlink through `..data`.
fn configmap_version(hosts: &Path, stamp: &str, files: &[(&str, &str)]) {
    let data = hosts.join(stamp);
    std::fs::create_dir(&data).unwrap();
    for (name, text) in files {
        std::fs::write(data.join(name), text).unwrap();
    }
}

#[tokio::test]
async fn kubernetes_configmap_symlink_swap_is_picked_up() {
    let (up, _) = cookie_origin(GA_AND_SESSION).await;
    let v1 = portal_with_ga(up, "statistical");
    let v2 = portal_with_ga(up, "necessary");
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::create_dir(&hosts).unwrap();
    configmap_version(&hosts, "..2026_11_23_10_00_00.123", &[("portal.toml", &v1)]);
    std::os::unix::fs::symlink("..2026_11_23_10_00_00.123", hosts.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/portal.toml", hosts.join("portal.toml")).unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[registry]\ndir = \"hosts\"\npoll_interval = \"1h\"\n",
    )
    .unwrap();
    let (cfg, registry) = load(&dir.path().join("gateway.toml")).unwrap();
    assert_eq!(
        registry.policies.len(),
        1,
        "hidden ..data and ..timestamp entries are not registry files"
    );
    let gw = Gateway::start(&cfg, registry).await.unwrap();
    let mut rx = gw.live.subscribe();
    let addr = gw.http_addr.unwrap();
    assert_eq!(names(addr, "portal.test").await.1, vec!["sessionid"]);

    // The kubelet's atomic update: new data dir, `..data_tmp` link, rename over `..data`, old dir removed.
    configmap_version(&hosts, "..2026_11_23_10_05_00.456", &[("portal.toml", &v2)]);
    std::os::unix::fs::symlink("..2026_11_23_10_05_00.456", hosts.join("..data_tmp")).unwrap();
    std::fs::rename(hosts.join("..data_tmp"), hosts.join("..data")).unwrap();
    std::fs::remove_dir_all(hosts.join("..2026_11_23_10_00_00.123")).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.live.load().generation < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, rx.changed())
            .await
            .expect("ConfigMap swap not picked up")
            .unwrap();
    }
    assert_eq!(names(addr, "portal.test").await.1, vec!["_ga", "sessionid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rewrites_under_load_fail_no_request_and_never_mix_registries() {
    // In registry A both trackers are statistical (dropped without consent); in B both are
    // necessary (kept). A response under one registry has both or neither, never one of them.
    static SETS: &[&str] = &["_ga=1", "_gid=2", "sessionid=3"];
    let (up, _) = cookie_origin(SETS).await;
    let base = format!(
        "{}\n[[cookie]]\nname = \"_gid\"\ncategory = \"statistical\"\nconsent = \"ga\"\n",
        portal_toml(up, "")
    );
    let a = base.clone();
    let b = base
        .replace(
            "name = \"_ga\"\ncategory = \"statistical\"",
            "name = \"_ga\"\ncategory = \"necessary\"",
        )
        .replace(
            "name = \"_gid\"\ncategory = \"statistical\"",
            "name = \"_gid\"\ncategory = \"necessary\"",
        );
    assert_ne!(a, b);
    let d = Disk::start(&[("portal.toml", a.clone())]).await;
    let addr = d.http();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, saw_a, saw_b) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, saw_a, saw_b) = (stop.clone(), ok.clone(), saw_a.clone(), saw_b.clone());
        clients.push(tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Empty<bytes::Bytes>>();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(format!("http://{addr}/"))
                    .header("host", "portal.test")
                    .body(http_body_util::Empty::new())
                    .unwrap();
                match client.request(req).await {
                    Err(e) => failures.push(format!("request failed: {e}")),
                    Ok(resp) => {
                        let status = resp.status();
                        let names: Vec<String> = resp
                            .headers()
                            .get_all("set-cookie")
                            .iter()
                            .map(|v| v.to_str().unwrap().split('=').next().unwrap().to_owned())
                            .collect();
                        if status != 200 {
                            failures.push(format!("status {status}"));
                        } else if names == ["sessionid"] {
                            saw_a.fetch_add(1, Ordering::Relaxed);
                        } else if names == ["_ga", "_gid", "sessionid"] {
                            saw_b.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures.push(format!("mixed registries in one response: {names:?}"));
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            failures
        }));
    }
    for i in 0..50u64 {
        d.replace("portal.toml", if i % 2 == 0 { &b } else { &a });
        d.generation_becomes(i + 2).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(d.gw.live.load().generation, 51);
    let (ok, a_n, b_n) = (
        ok.load(Ordering::Relaxed),
        saw_a.load(Ordering::Relaxed),
        saw_b.load(Ordering::Relaxed),
    );
    assert!(
        a_n > 0 && b_n > 0,
        "both registries served: A {a_n}, B {b_n}"
    );
    eprintln!("{ok} requests during 50 reloads: {a_n} under A, {b_n} under B, 0 failed");
}
