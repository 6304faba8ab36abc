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

const BIN: &str = env!("CARGO_BIN_EXE_consent-gateway");

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
