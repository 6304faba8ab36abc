//! The audit log: what the gateway records, and `audit verify` on real files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use consent_gateway::audit::{Audit, Event, ReloadFacts};
use consent_gateway::config::{AuditConfig, AuditPath};
use consent_gateway::metrics::Metrics;

fn rotated(path: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

/// Writes `n` reload records through the real writer into `path`, rotating at `max_bytes`.
async fn write_log(path: &Path, n: u64, max_bytes: u64, keep: u32) {
    let cfg = AuditConfig {
        path: AuditPath::File(path.to_owned()),
        max_bytes,
        keep,
        queue: 1024,
    };
    let audit = Audit::start(&cfg, Arc::new(Metrics::new()), 1, &"a".repeat(64)).unwrap();
    for g in 0..n {
        audit.sink().record(Event::Reload(ReloadFacts {
            time_ms: consent_gateway::unix_now_ms(),
            generation: g + 2,
            registry_digest: format!("{g:064x}"),
            result: "success",
            error: None,
        }));
    }
    audit.flush().await;
    assert!(
        audit
            .close(tokio::time::Instant::now() + Duration::from_secs(20))
            .await
    );
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn verify(files: &[PathBuf]) -> Out {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The rotated set oldest first, as `audit verify` wants it.
fn in_order(path: &Path, keep: u32) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=keep)
        .rev()
        .map(|n| rotated(path, n))
        .filter(|p| p.exists())
        .collect();
    files.push(path.to_owned());
    files
}

fn lines(p: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(p).unwrap();
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(p: &Path, lines: &[Vec<u8>]) {
    std::fs::write(p, lines.concat()).unwrap();
}

/// A rotated log of three files in a temp dir.
async fn rotated_log() -> (tempfile::TempDir, PathBuf, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 20, 2048, 5).await;
    let files = in_order(&path, 5);
    assert!(files.len() >= 3, "expected rotations: {files:?}");
    (dir, path, files)
}

#[tokio::test]
async fn verify_accepts_a_rotated_log_and_reports_count_and_span() {
    let (_dir, _path, files) = rotated_log().await;
    let out = verify(&files);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // 20 reloads and the start record.
    assert!(
        out.stdout.starts_with("intact: 21 records from 20"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(" to 20"), "{}", out.stdout);
    assert!(out.stdout.contains("lost: 0 records"), "{}", out.stdout);
}

#[tokio::test]
async fn one_changed_byte_is_reported_at_its_line() {
    let (_dir, _path, files) = rotated_log().await;
    let target = &files[1];
    let mut ls = lines(target);
    // A byte inside the record (the generation number), not the seal.
    let at = ls[1].iter().position(|&b| b == b'"').unwrap() + 3;
    ls[1][at] ^= 0x01;
    write_lines(target, &ls);
    let out = verify(&files);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr
            .starts_with(&format!("{}:2: record altered", target.display())),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_deleted_line_is_reported_where_it_was() {
    let (_dir, _path, files) = rotated_log().await;
    let target = &files[1];
    let mut ls = lines(target);
    assert!(ls.len() >= 3, "{}", ls.len());
    ls.remove(1);
    write_lines(target, &ls);
    let out = verify(&files);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with(&format!("{}:2: chain broken", target.display())),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn swapped_lines_are_reported_at_the_first_of_them() {
    let (_dir, _path, files) = rotated_log().await;
    let target = &files[1];
    let mut ls = lines(target);
    ls.swap(0, 1);
    write_lines(target, &ls);
    let out = verify(&files);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with(&format!("{}:1: chain broken", target.display())),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_truncated_file_is_reported_at_the_right_line() {
    // A rotated file cut at a line boundary: the next file's first record no longer chains.
    let (_dir, _path, files) = rotated_log().await;
    let mut ls = lines(&files[0]);
    ls.pop();
    write_lines(&files[0], &ls);
    let out = verify(&files);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with(&format!("{}:1: chain broken", files[1].display())),
        "{}",
        out.stderr
    );

    // A rotated file cut mid-line: that line is not a whole record, and not the log's end.
    let (_dir, _path, files) = rotated_log().await;
    let ls = lines(&files[0]);
    let mut bytes = ls[..ls.len() - 1].concat();
    bytes.extend_from_slice(&ls[ls.len() - 1][..50]);
    std::fs::write(&files[0], bytes).unwrap();
    let out = verify(&files);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with(&format!("{}:{}: not a whole", files[0].display(), ls.len())),
        "{}",
        out.stderr
    );

    // The live file cut mid-line (a crash while writing): a torn last line, not tampering.
    let (_dir, path, files) = rotated_log().await;
    let ls = lines(&path);
    let mut bytes = ls[..ls.len() - 1].concat();
    bytes.extend_from_slice(&ls[ls.len() - 1][..50]);
    std::fs::write(&path, bytes).unwrap();
    let out = verify(&files);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("torn: {}:{}:", path.display(), ls.len())),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn files_out_of_order_name_the_first_line_of_the_misplaced_file() {
    let (_dir, _path, mut files) = rotated_log().await;
    files.swap(0, 1);
    let out = verify(&files);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with(&format!("{}:1:", files[1].display())),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("oldest first"), "{}", out.stderr);
}

#[test]
fn usage_errors_exit_2_and_unreadable_files_exit_1() {
    assert_eq!(verify(&[]).code, 2);
    let out = verify(&[PathBuf::from("/nonexistent/audit.jsonl")]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with("/nonexistent/audit.jsonl: cannot read"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn the_documented_by_hand_check_agrees_with_verify() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/audit-verify.sh");
    let (_dir, _path, files) = rotated_log().await;
    let run = |files: &[PathBuf]| {
        Command::new("bash")
            .arg(&script)
            .args(files)
            .output()
            .unwrap()
    };
    let ok = run(&files);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("intact: 21 records"));
    let mut ls = lines(&files[2]);
    let at = ls[0].len() / 3;
    ls[0][at] ^= 0x02;
    write_lines(&files[2], &ls);
    let bad = run(&files);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr)
        .starts_with(&format!("{}:1: record altered", files[2].display())));
}

// ---------------------------------------------------------------------------------------------
// The gateway's records, through a real origin and a real client.

use common::*;

/// The origin of the decision tests: `/plain` sets nothing; anything else sets these cookies.
async fn decisions_origin() -> std::net::SocketAddr {
    let (addr, _) = origin(|req| async move {
        let mut b = http::Response::builder().header("content-type", "text/plain");
        if req.uri().path() != "/plain" {
            for c in [
                "sessionid=SESSVALUE1; Path=/; HttpOnly",
                "_ga=GA1.2.GAVALUE2; Max-Age=63072000",
                "ads=ADSVALUE3",
                "mystery=MYSTERYVALUE4",
            ] {
                b = b.header("set-cookie", c);
            }
        }
        b.body(full("hello\n")).unwrap()
    })
    .await;
    addr
}

fn audit_extra(path: &Path, more: &str) -> String {
    format!("[audit]\npath = \"{}\"\n{more}", path.display())
}

/// The records of a log file, parsed, without the start record.
fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read(path)
        .unwrap()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] != "start")
        .collect()
}

fn cookie_facts(r: &serde_json::Value) -> Vec<(String, String, String, String)> {
    r["set_cookies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_owned();
            (s("name"), s("category"), s("verdict"), s("reason"))
        })
        .collect()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    consent_gateway::audit::record::sha256_hex(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_say_what_was_kept_dropped_stripped_purged_and_would_drop() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let up = decisions_origin().await;
    let report_only = portal_toml(up, "mode = \"report-only\"").replace(
        "hosts = [\"portal.test\", \"*.portal.test\"]",
        "hosts = [\"ro.test\"]",
    );
    let gw = gateway(
        &audit_extra(&log, ""),
        &[
            ("portal.toml", portal_toml(up, "")),
            ("ro.toml", report_only),
        ],
    )
    .await;
    let ga = prefs(&["ga"]);

    // 1. No consent: the tracker set by the origin is dropped, the one the browser holds is
    //    stripped and purged.
    let r = get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/page?email=QUERYSECRET&x=1",
        "Cookie: _ga=BROWSERGAVALUE5; sessionid=BROWSERSESSION6\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    // 2. Consent to `ga`: kept.
    let r = get(
        gw.http_addr.unwrap(),
        "portal.test",
        "/granted",
        &format!("Cookie: cookies_preferences={ga}\r\nSec-GPC: 1\r\n"),
    )
    .await;
    assert_eq!(r.status, 200);
    // 3. Report-only: would-drop, would-strip, would-purge; nothing changed.
    let r = get(
        gw.http_addr.unwrap(),
        "ro.test",
        "/ro",
        "Cookie: _pk_id=BROWSERPK7\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.set_cookie_names().contains(&"_ga".to_owned()));
    // 4. Nothing decided: no record.
    let r = get(gw.http_addr.unwrap(), "portal.test", "/plain", "").await;
    assert_eq!(r.status, 200);

    gw.audit().unwrap().flush().await;
    let recs = records(&log);
    assert_eq!(recs.len(), 3, "{recs:#?}");
    let digest = gw.live.load().registry.digest.clone();
    for r in &recs {
        assert_eq!(r["kind"], "response");
        assert_eq!(r["method"], "GET");
        assert_eq!(r["status"], 200);
        assert_eq!(r["generation"], 1);
        assert_eq!(r["registry_digest"], digest.as_str());
        assert_eq!(r["audit"], 1);
    }

    let none = &recs[0];
    assert_eq!(none["host"], "portal.test");
    assert_eq!(none["mode"], "enforce");
    assert_eq!(none["path"], "/page");
    assert_eq!(
        none["consent"],
        serde_json::json!({"present": false, "digest": null, "granted": [], "gpc": false, "source": "none"})
    );
    let s = |a: &str, b: &str, c: &str, d: &str| (a.into(), b.into(), c.into(), d.into());
    assert_eq!(
        cookie_facts(none),
        vec![
            s("sessionid", "necessary", "kept", "necessary"),
            s("_ga", "statistical", "dropped", "not-granted"),
            s("ads", "marketing", "dropped", "not-granted"),
            s("mystery", "unknown", "dropped", "unknown"),
        ]
    );
    assert_eq!(strings(&none["stripped"]), vec!["_ga"]);
    assert_eq!(strings(&none["purged"]), vec!["_ga"]);

    let granted = &recs[1];
    assert_eq!(granted["consent"]["present"], true);
    assert_eq!(
        granted["consent"]["digest"],
        sha256_hex(ga.as_bytes()).as_str()
    );
    assert_eq!(strings(&granted["consent"]["granted"]), vec!["ga"]);
    assert_eq!(granted["consent"]["gpc"], true);
    assert_eq!(granted["consent"]["source"], "request");
    assert_eq!(
        cookie_facts(granted)[1],
        s("_ga", "statistical", "kept", "granted")
    );
    assert!(strings(&granted["stripped"]).is_empty());
    assert!(strings(&granted["purged"]).is_empty());

    let ro = &recs[2];
    assert_eq!(ro["host"], "ro.test");
    assert_eq!(ro["mode"], "report-only");
    assert_eq!(
        cookie_facts(ro)[1],
        s("_ga", "statistical", "would_drop", "not-granted")
    );
    assert_eq!(strings(&ro["stripped"]), vec!["_pk_id"]);
    assert_eq!(strings(&ro["purged"]), vec!["_pk_id"]);

    // No value, query string or address anywhere in the file's bytes.
    let bytes = String::from_utf8(std::fs::read(&log).unwrap()).unwrap();
    for secret in [
        "VALUE",
        "BROWSER",
        "GA1.2",
        "QUERYSECRET",
        "email",
        "?",
        "127.0.0.1",
        &ga,
    ] {
        assert!(
            !bytes.contains(secret),
            "{secret:?} in the audit log:\n{bytes}"
        );
    }
    let peer = gw.http_addr.unwrap().ip().to_string();
    assert!(!bytes.contains(&peer));

    // And the whole file verifies.
    let out = verify(std::slice::from_ref(&log));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("intact: 4 records"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_recorded_with_generation_digest_and_result() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let up = decisions_origin().await;
    let d = Disk::start_with(
        &audit_extra(&log, ""),
        "watch = false\n",
        &[("portal.toml", portal_toml(up, ""))],
    )
    .await;
    d.replace("portal.toml", &portal_toml(up, "purge = false"));
    let result = d.gw.reload().await;
    assert_eq!(
        result,
        consent_gateway::control::live::ReloadResult::Success(2)
    );
    let digest = d.gw.live.load().registry.digest.clone();
    d.gw.audit().unwrap().flush().await;
    let recs = records(&log);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["kind"], "reload");
    assert_eq!(recs[0]["generation"], 2);
    assert_eq!(recs[0]["registry_digest"], digest.as_str());
    assert_eq!(recs[0]["result"], "success");
    assert_eq!(recs[0]["error"], serde_json::Value::Null);

    // A failed reload (here: the registry directory is not there) is recorded with its first
    // error; the last good registry keeps serving.
    std::fs::remove_dir_all(d.hosts()).unwrap();
    let result = d.gw.reload().await;
    assert!(
        matches!(
            result,
            consent_gateway::control::live::ReloadResult::Error(_)
        ),
        "{result:?}"
    );
    d.gw.audit().unwrap().flush().await;
    let recs = records(&log);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert_eq!(recs[1]["kind"], "reload");
    assert_eq!(recs[1]["result"], "error");
    assert_eq!(recs[1]["generation"], 2);
    assert_eq!(recs[1]["registry_digest"], digest.as_str());
    assert!(
        recs[1]["error"]
            .as_str()
            .unwrap()
            .starts_with(d.hosts().to_str().unwrap()),
        "{}",
        recs[1]["error"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_of_a_live_gateway_verifies_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let up = decisions_origin().await;
    let gw = gateway(
        &audit_extra(&log, "max_bytes = \"2KiB\"\nkeep = 50\n"),
        &[("portal.toml", portal_toml(up, ""))],
    )
    .await;
    for i in 0..30 {
        let r = get(gw.http_addr.unwrap(), "portal.test", &format!("/p{i}"), "").await;
        assert_eq!(r.status, 200);
    }
    gw.audit().unwrap().flush().await;
    let files = in_order(&log, 50);
    assert!(files.len() > 5, "{files:?}");
    let out = verify(&files);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("intact: 31 records"),
        "{}",
        out.stdout
    );
}

async fn metric(gw: &consent_gateway::gateway::Gateway, name: &str) -> u64 {
    let text = String::from_utf8(admin(gw, "/metrics").await.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_loses_records_counts_and_tells_them_and_never_holds_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let up = decisions_origin().await;
    let gw = gateway(
        &audit_extra(&log, "queue = 4\n"),
        &[("portal.toml", portal_toml(up, ""))],
    )
    .await;
    gw.audit().unwrap().flush().await;
    const N: usize = 40;
    {
        // The writer is stuck (a slow disk) for as long as the guard lives: a request that
        // waited for it would never be answered.
        let _stuck = gw.audit().unwrap().hold_writer();
        for i in 0..N {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                get(gw.http_addr.unwrap(), "portal.test", &format!("/q{i}"), ""),
            )
            .await
            .expect("a request waited for the audit writer");
            assert_eq!(r.status, 200);
        }
        let lost = metric(&gw, "consent_gateway_audit_lost_total").await;
        // At most the queue (4) and the record in the writer's hands got through.
        assert!(lost >= (N - 5) as u64, "lost {lost}");
    }
    gw.audit().unwrap().flush().await;
    let lost = metric(&gw, "consent_gateway_audit_lost_total").await;
    let recs = records(&log);
    let responses = recs.iter().filter(|r| r["kind"] == "response").count();
    let told: u64 = recs
        .iter()
        .filter(|r| r["kind"] == "loss")
        .map(|r| {
            assert_eq!(r["lost"], r["queue_full"]);
            r["lost"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(told, lost, "{recs:#?}");
    assert_eq!(responses as u64 + lost, N as u64);
    let out = verify(std::slice::from_ref(&log));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("lost: {lost} records")),
        "{}",
        out.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// The real binary: a directory it cannot write, SIGTERM, standard output.

/// A metric's value once it reaches `want` (the writer counts on its own thread), or the last
/// value after 20 s.
async fn metric_reaches(gw: &Binary, name: &str, want: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = String::from_utf8(get(gw.admin, "admin", "/metrics", "").await.body).unwrap();
        let v: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        if v >= want || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A directory this process cannot create files in. As root (which ignores permission bits) a
/// mode-0555 directory is still writable, so sysfs (which refuses new files to everyone) stands
/// in for it.
fn unwritable_dir(tmp: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = tmp.join("readonly");
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::File::create(d.join("probe")).is_err() {
        return d;
    }
    let sys = PathBuf::from("/sys");
    assert!(
        std::fs::File::create(sys.join("consent-gateway-audit-probe")).is_err(),
        "no unwritable directory on this machine"
    );
    sys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_directory_logs_an_error_and_every_request_is_served() {
    let up = decisions_origin().await;
    let tmp = tempfile::tempdir().unwrap();
    let log = unwritable_dir(tmp.path()).join("consent-gateway-audit.jsonl");
    let mut gw = Binary::start_with(
        &portal_toml(up, ""),
        &audit_extra(&log, ""),
        "info",
        std::process::Stdio::null(),
    )
    .await;
    let err = gw.wait_log(|v| v["level"] == "ERROR").await;
    assert_eq!(
        err["message"],
        "cannot open the audit log: records are counted as lost; requests are served as usual",
        "{err}"
    );
    assert_eq!(err["file"], log.display().to_string().as_str());
    for i in 0..20 {
        let r = get(gw.http, "portal.test", &format!("/r{i}"), "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.set_cookie_names(), vec!["sessionid"]);
    }
    assert_eq!(
        metric_reaches(&gw, "consent_gateway_audit_lost_total", 20).await,
        20
    );
    assert!(metric_reaches(&gw, "consent_gateway_audit_write_errors_total", 1).await >= 1);
    assert_eq!(
        metric_reaches(&gw, "consent_gateway_audit_records_total", 0).await,
        0
    );
    assert!(!log.exists());
    assert!(gw.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_every_queued_record_before_exit() {
    let up = decisions_origin().await;
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.jsonl");
    let mut gw = Binary::start_with(
        &portal_toml(up, ""),
        &audit_extra(&log, ""),
        "info",
        std::process::Stdio::null(),
    )
    .await;
    const N: usize = 50;
    for i in 0..N {
        let r = get(gw.http, "portal.test", &format!("/t{i}"), "").await;
        assert_eq!(r.status, 200);
    }
    assert!(gw.terminate().await.success());
    let recs = records(&log);
    assert_eq!(recs.len(), N, "every record written before exit");
    let out = verify(std::slice::from_ref(&log));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // A restart goes on with the same chain.
    let mut again = Binary::start_with(
        &portal_toml(up, ""),
        &audit_extra(&log, ""),
        "info",
        std::process::Stdio::null(),
    )
    .await;
    let anchored = again
        .wait_log(|v| v["message"] == "audit log: chain anchored")
        .await;
    assert_eq!(anchored["from"], log.display().to_string().as_str());
    let r = get(again.http, "portal.test", "/after", "").await;
    assert_eq!(r.status, 200);
    assert!(again.terminate().await.success());
    let out = verify(std::slice::from_ref(&log));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with(&format!("intact: {} records", N + 3)),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("starts: 2"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_carries_the_records_one_json_object_a_line() {
    let up = decisions_origin().await;
    let mut gw = Binary::start_with(
        &portal_toml(up, ""),
        "[audit]\npath = \"stdout\"\n",
        "info",
        std::process::Stdio::piped(),
    )
    .await;
    let mut stdout = gw.child.stdout.take().unwrap();
    for i in 0..5 {
        let r = get(gw.http, "portal.test", &format!("/s{i}"), "").await;
        assert_eq!(r.status, 200);
    }
    assert!(gw.terminate().await.success());
    let mut out = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    for l in &lines {
        assert!(l.starts_with("{\"audit\":1,"), "{l}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("collected.jsonl");
    std::fs::write(&file, &text).unwrap();
    let v = verify(&[file]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(v.stdout.starts_with("intact: 6 records"), "{}", v.stdout);
}

// ---------------------------------------------------------------------------------------------
// Properties: verify never panics; every log the writer produces verifies.

use consent_gateway::audit::record::{ConsentFacts, CookieFacts, ResponseFacts};
use consent_gateway::audit::verify::verify_bytes;
use consent_gateway::policy::decide::{Reason, Verdict};
use proptest::prelude::*;

fn facts() -> impl Strategy<Value = Event> {
    let text = "\\PC{0,12}|[\"\\\\\\x00-\\x1f\\x7f{}:,]{0,6}";
    (
        text,
        prop::collection::vec((text, "[a-z]{1,8}", 0..3usize), 0..5),
        prop::collection::vec(text, 0..3),
        any::<bool>(),
        any::<u16>(),
        0..2i64 << 40,
    )
        .prop_map(|(path, cookies, granted, gpc, status, time_ms)| {
            Event::Response(Box::new(ResponseFacts {
                time_ms,
                host: "portal.test".into(),
                generation: 1,
                registry_digest: "0".repeat(64),
                mode: "enforce",
                consent: ConsentFacts {
                    present: gpc,
                    digest: None,
                    granted,
                    gpc,
                    source: "none",
                },
                method: "GET".into(),
                path,
                status,
                set_cookies: cookies
                    .into_iter()
                    .map(|(name, category, v)| CookieFacts {
                        name,
                        category,
                        verdict: [Verdict::Keep, Verdict::Drop, Verdict::WouldDrop][v],
                        reason: Reason::Unknown,
                    })
                    .collect(),
                stripped: Vec::new(),
                purged: Vec::new(),
            }))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The writer serializes the request path's compact records itself: byte for byte what
    /// serde_json writes for the same facts (the documented canonical serialization).
    #[test]
    fn the_writers_own_serialization_is_serde_jsons(
        event in facts(),
        names in prop::collection::vec("\\PC{0,8}|[\"\\\\\\x00-\\x1f\\x7f]{0,3}", 0..3),
        seq in any::<u64>(),
        digest in prop::option::of("[0-9a-f]{64}"),
        time_ms in any::<i64>(),
    ) {
        use consent_gateway::audit::compact::{canonical_response, TimeText};
        use consent_gateway::audit::record::{canonical_event, Stamp};
        let Event::Response(mut r) = event else { return Ok(()) };
        r.time_ms = time_ms / 1000;
        r.stripped.clone_from(&names);
        r.purged = names.into_iter().rev().collect();
        r.consent.digest = digest;
        let stamp = Stamp { seq, time_ms: r.time_ms, replica: "pod-\"a\"" };
        let want = canonical_event(stamp, &Event::Response(r.clone()));
        let mut got = Vec::new();
        let draft = consent_gateway::audit::ResponseDraft::from(&*r);
        canonical_response(stamp, draft.bytes(), &mut TimeText::default(), &mut got);
        prop_assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
    }

    #[test]
    fn every_log_the_writer_produces_verifies(
        events in prop::collection::vec(facts(), 0..40),
        max_bytes in 1024u64..6144,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let n = events.len() as u64;
        rt.block_on(async {
            let cfg = AuditConfig {
                path: AuditPath::File(path.clone()),
                max_bytes,
                keep: 1000,
                queue: 64,
            };
            let audit = Audit::start(&cfg, Arc::new(Metrics::new()), 1, "d").unwrap();
            for e in events {
                // A full queue would lose records: wait for the writer now and then.
                audit.sink().record(e);
                audit.flush().await;
            }
            audit.close(tokio::time::Instant::now() + Duration::from_secs(20)).await;
        });
        let files = in_order(&path, 1000);
        let bytes: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        let report = verify_bytes(names.iter().map(String::as_str).zip(bytes.iter().map(Vec::as_slice)));
        let report = report.unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(report.records, n + 1);
        prop_assert!(report.torn.is_empty() && report.gaps.is_empty() && report.lost == 0);
    }

    #[test]
    fn verify_never_panics_on_arbitrary_bytes(
        files in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 1..4)
    ) {
        let _ = verify_bytes(files.iter().map(|f| ("f", f.as_slice())));
    }

    #[test]
    fn verify_never_panics_on_a_damaged_log(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..4u8), 1..6)
    ) {
        use consent_gateway::audit::record::{canonical_loss, seal, LossFacts, Stamp};
        let mut prev = "a".repeat(64);
        let mut log = Vec::new();
        for seq in 1..6 {
            let c = canonical_loss(
                Stamp { seq, time_ms: 0, replica: "r" },
                &LossFacts { lost: 1, queue_full: 1, write_error: 0 },
            );
            let (h, line) = seal(&prev, &c);
            prev = h;
            log.extend_from_slice(&line);
        }
        let original = log.clone();
        for (at, byte, op) in edits {
            if log.is_empty() {
                break;
            }
            let i = at.index(log.len());
            match op {
                0 => log[i] = byte,
                1 => { log.remove(i); }
                2 => log.insert(i, byte),
                _ => log.truncate(i),
            }
        }
        let result = verify_bytes([("f", log.as_slice())]);
        // A changed log never verifies as the same whole chain.
        if log != original {
            if let Ok(r) = result {
                prop_assert!(r.records < 5 || r.last_hash.as_deref() != Some(prev.as_str()) || !r.torn.is_empty());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_the_upstream_sets_in_the_response_is_the_one_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let (up, _) = origin(|_req| async move {
        let granted = format!("cookies_preferences={}; Path=/", prefs(&["ga"]));
        http::Response::builder()
            .header("set-cookie", granted)
            .header("set-cookie", "_ga=GA1.2.NEWVALUE; Path=/")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let gw = gateway(
        &audit_extra(&log, ""),
        &[("portal.toml", portal_toml(up, ""))],
    )
    .await;
    let r = get(gw.http_addr.unwrap(), "portal.test", "/accept", "").await;
    assert_eq!(r.status, 200);
    assert!(r.set_cookie_names().contains(&"_ga".to_owned()));
    gw.audit().unwrap().flush().await;
    let recs = records(&log);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    let c = &recs[0]["consent"];
    assert_eq!(c["present"], false, "the request carried no consent cookie");
    assert_eq!(c["digest"], serde_json::Value::Null);
    assert_eq!(c["source"], "response");
    assert_eq!(strings(&c["granted"]), vec!["ga"]);
    assert_eq!(
        cookie_facts(&recs[0])[1],
        (
            "_ga".to_owned(),
            "statistical".to_owned(),
            "kept".to_owned(),
            "granted".to_owned()
        )
    );
}

#[test]
fn check_names_the_audit_log_and_warns_about_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("hosts")).unwrap();
    std::fs::write(
        dir.path().join("hosts/portal.toml"),
        portal_toml("127.0.0.1:9".parse().unwrap(), ""),
    )
    .unwrap();
    let run = |audit: &str| {
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!("[listen]\nhttp = \"127.0.0.1:0\"\n[audit]\n{audit}"),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(dir.path().join("gateway.toml"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run("path = \"log/audit.jsonl\"\nkeep = 3\n");
    assert_eq!(code, 0, "{stderr}");
    let log = dir.path().join("log/audit.jsonl");
    assert!(
        stdout.contains(&format!(
            "audit log: {} (rotated at 104857600 bytes, 3 rotated files kept, queue 8192)",
            log.display()
        )),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: audit.path: directory") && stderr.contains("does not exist"),
        "{stderr}"
    );
    std::fs::create_dir(dir.path().join("log")).unwrap();
    let (code, _, stderr) = run("path = \"log/audit.jsonl\"\n");
    assert_eq!(code, 0);
    // (The default limits draw check's memory_budget warning: only the audit one is asserted.)
    assert!(!stderr.contains("warning: audit"), "{stderr}");
    let (code, stdout, _) = run("path = \"stdout\"\nqueue = 10\n");
    assert_eq!(code, 0);
    assert!(
        stdout.contains("audit log: standard output (queue 10)"),
        "{stdout}"
    );
    let (code, _, stderr) = run("path = \"log/audit.jsonl\"\nkeep = 5000\n");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("gateway.toml:5:8: audit.keep: must be 0 to 1000"),
        "{stderr}"
    );
}
