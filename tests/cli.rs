//! The command line, run as a user runs it: `check` and `explain` against config directories
//! written to temp dirs, exit codes and the lines printed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_consent-gateway");

const GATEWAY: &str = "[listen]\nhttp = \"127.0.0.1:8080\"\n\n[registry]\ndir = \"hosts\"\n";

/// A config directory: `gateway.toml` and `hosts/*.toml`.
struct ConfigDir {
    dir: tempfile::TempDir,
}

impl ConfigDir {
    fn new(gateway: &str, hosts: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("gateway.toml"), gateway).unwrap();
        fs::create_dir(dir.path().join("hosts")).unwrap();
        for (name, text) in hosts {
            fs::write(dir.path().join("hosts").join(name), text).unwrap();
        }
        ConfigDir { dir }
    }

    /// Runs the binary in the config directory with `--config gateway.toml`, so that the files
    /// named in its output are `gateway.toml` and `hosts/<name>`.
    fn run(&self, command: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .current_dir(self.dir.path())
            .arg(command)
            .args(["--config", "gateway.toml"])
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// check: the shipped configuration

#[test]
fn check_accepts_the_shipped_config_and_names_every_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(root.join("config/gateway.toml"))
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );

    let hosts_dir = root.join("config/hosts");
    let mut files: Vec<PathBuf> = fs::read_dir(&hosts_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());

    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), files.len(), "{stdout}");
    for file in &files {
        let prefix = format!("{}: ", file.display());
        let matching: Vec<&&str> = lines.iter().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(
            matching.len(),
            1,
            "no single line for {}:\n{stdout}",
            file.display()
        );
        let table: toml::Table = toml::from_str(&fs::read_to_string(file).unwrap()).unwrap();
        let hosts = table["hosts"].as_array().unwrap();
        assert!(!hosts.is_empty());
        for h in hosts {
            let h = h.as_str().unwrap();
            assert!(matching[0].contains(h), "{h} missing from {}", matching[0]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// check: each invalid configuration names its place

const HEAD: &str = "hosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:8000\"\n";

/// A host file with one valid header and `rest` appended.
fn host(rest: &str) -> String {
    format!("{HEAD}{rest}")
}

/// Runs `check` and asserts exit 1 with exactly one error line, `file:line:col: ...` containing
/// `phrase`.
fn assert_check_error(
    gateway: &str,
    hosts: &[(&str, &str)],
    file: &str,
    line: usize,
    col: usize,
    phrase: &str,
) {
    let dir = ConfigDir::new(gateway, hosts);
    let out = dir.run("check", &[]);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{stderr}",
        text(&out.stdout)
    );
    let place = format!("{file}:{line}:{col}: ");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{file}:")))
        .collect();
    assert_eq!(errors.len(), 1, "want one error line for {file}:\n{stderr}");
    assert!(
        errors[0].starts_with(&place),
        "want {place:?}, got {:?}",
        errors[0]
    );
    assert!(
        errors[0].contains(phrase),
        "want {phrase:?} in {:?}",
        errors[0]
    );
}

#[test]
fn check_refuses_a_host_served_by_two_files() {
    let a = "hosts = [\"x.example\"]\nupstream = \"http://127.0.0.1:8000\"\n";
    let b = "hosts = [\"y.example\", \"X.Example.\"]\nupstream = \"http://127.0.0.1:8001\"\n";
    assert_check_error(
        GATEWAY,
        &[("a.toml", a), ("b.toml", b)],
        "hosts/b.toml",
        1,
        23,
        "hosts: x.example is already served by hosts/a.toml",
    );
}

#[test]
fn check_refuses_an_empty_host_pattern() {
    let t = "hosts = [\"a.example\", \"\"]\nupstream = \"http://127.0.0.1:8000\"\n";
    assert_check_error(
        GATEWAY,
        &[("a.toml", t)],
        "hosts/a.toml",
        1,
        23,
        "hosts[1]: host pattern is empty",
    );
}

#[test]
fn check_refuses_an_invalid_host_pattern() {
    let t = "hosts = [\"a.*.example\"]\nupstream = \"http://127.0.0.1:8000\"\n";
    assert_check_error(
        GATEWAY,
        &[("a.toml", t)],
        "hosts/a.toml",
        1,
        10,
        "hosts[0]: host pattern \"a.*.example\"",
    );
}

#[test]
fn check_refuses_a_cookie_with_neither_name_nor_prefix() {
    let t = host("\n[[cookie]]\nname = \"sessionid\"\ncategory = \"necessary\"\n\n[[cookie]]\ncategory = \"statistical\"\n");
    // The place is the entry's `[[cookie]]` header.
    assert_check_error(
        GATEWAY,
        &[("a.toml", &t)],
        "hosts/a.toml",
        8,
        1,
        "cookie[1]: set either name or prefix",
    );
}

#[test]
fn check_refuses_a_cookie_with_both_name_and_prefix() {
    let t = host("\n[[cookie]]\nname = \"_ga\"\n  prefix = \"_ga_\"\ncategory = \"statistical\"\n");
    assert_check_error(
        GATEWAY,
        &[("a.toml", &t)],
        "hosts/a.toml",
        6,
        12,
        "cookie[0]: set either name or prefix, not both",
    );
}

#[test]
fn check_refuses_a_cookie_name_listed_twice() {
    let t = host(
        "[[cookie]]\nname = \"_ga\"\ncategory = \"statistical\"\n\
         [[cookie]]\nname = \"_gid\"\ncategory = \"statistical\"\n\
         [[cookie]]\ncategory = \"marketing\"\nname = \"_ga\"\n",
    );
    assert_check_error(
        GATEWAY,
        &[("a.toml", &t)],
        "hosts/a.toml",
        11,
        8,
        "cookie[2]: name \"_ga\" is already listed by cookie[0]",
    );
}

#[test]
fn check_refuses_an_upstream_that_is_not_an_absolute_http_url() {
    for (upstream, why) in [
        ("ftp://origin:21", "the scheme must be http or https"),
        (
            "origin.internal:8000",
            "is not an absolute http:// or https:// URL",
        ),
        ("/just/a/path", "is not an absolute http:// or https:// URL"),
    ] {
        let t = format!("hosts = [\"a.example\"]\n\nupstream = \"{upstream}\"\n");
        assert_check_error(
            GATEWAY,
            &[("a.toml", &t)],
            "hosts/a.toml",
            3,
            12,
            &format!("upstream: \"{upstream}\" is not an absolute"),
        );
        assert_check_error(GATEWAY, &[("a.toml", &t)], "hosts/a.toml", 3, 12, why);
    }
}

#[test]
fn check_refuses_an_unknown_mode() {
    let t = host("mode = \"enforcing\"\n");
    assert_check_error(
        GATEWAY,
        &[("a.toml", &t)],
        "hosts/a.toml",
        3,
        8,
        "unknown variant `enforcing`, expected `enforce` or `report-only`",
    );
}

#[test]
fn check_refuses_a_duration_that_does_not_parse() {
    let gateway = format!(
        "{GATEWAY}\n[limits]\nheader_read_timeout = \"10s\"\nidle_timeout = \"a minute\"\n"
    );
    assert_check_error(
        &gateway,
        &[("a.toml", HEAD)],
        "gateway.toml",
        9,
        16,
        "limits.idle_timeout: invalid duration \"a minute\"",
    );
}

#[test]
fn check_refuses_invalid_toml_in_a_host_file() {
    let t = "hosts = [\"a.example\"\nupstream = \"http://127.0.0.1:8000\"\n";
    assert_check_error(
        GATEWAY,
        &[("a.toml", t)],
        "hosts/a.toml",
        2,
        1,
        "missing comma between array elements",
    );
}

#[test]
fn check_refuses_invalid_toml_in_the_gateway_file() {
    assert_check_error(
        "[listen\nhttp = \"127.0.0.1:8080\"\n",
        &[("a.toml", HEAD)],
        "gateway.toml",
        1,
        8,
        "unclosed table",
    );
}

#[test]
fn check_refuses_an_unknown_field_in_a_cookie_entry() {
    let t = host("[[cookie]]\nname = \"_ga\"\ncategroy = \"statistical\"\n");
    assert_check_error(
        GATEWAY,
        &[("a.toml", &t)],
        "hosts/a.toml",
        5,
        1,
        "unknown field `categroy`",
    );
}

#[test]
fn check_refuses_an_unknown_field_in_the_gateway_file() {
    let gateway = format!("{GATEWAY}\n[limits]\nidle_timeout = \"60s\"\nidle_timout = \"60s\"\n");
    assert_check_error(
        &gateway,
        &[("a.toml", HEAD)],
        "gateway.toml",
        9,
        1,
        "unknown field `idle_timout`",
    );
}

#[test]
fn check_reports_errors_of_every_file() {
    let dir = ConfigDir::new(
        GATEWAY,
        &[
            ("a.toml", &host("mode = \"strict\"\n")),
            (
                "b.toml",
                "hosts = [\"\"]\nupstream = \"http://127.0.0.1:8000\"\n",
            ),
        ],
    );
    let out = dir.run("check", &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.lines().any(|l| l.starts_with("hosts/a.toml:3:8: ")),
        "{stderr}"
    );
    assert!(
        stderr.lines().any(|l| l.starts_with("hosts/b.toml:1:10: ")),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// explain

const PORTAL: &str = r#"hosts = ["portal.example", "*.portal.example"]
upstream = "http://127.0.0.1:8000"
gpc = ["statistical"]

[[cookie]]
name = "sessionid"
category = "necessary"

[[cookie]]
name = "_ga"
category = "statistical"
consent = "ga"

[[cookie]]
prefix = "_ga_"
category = "statistical"
consent = "ga"

[[cookie]]
name = "ads_id"
category = "marketing"
"#;

const SET_COOKIES: &[&str] = &[
    "sessionid=abc; Path=/; HttpOnly; Secure; SameSite=Lax",
    "_ga=GA1.2.3; Path=/; Max-Age=63072000",
    "_ga_ABC=GS1.1.1; Path=/",
    "ads_id=x; Domain=.portal.example; Path=/",
    "tracker=1",
    "_ga=; Max-Age=0",
];

/// Runs `explain` for `portal.example` and returns its lines split into
/// `[verdict, name, category, "reason:"]`.
fn explain(extra: &[&str]) -> Vec<[String; 4]> {
    let dir = ConfigDir::new(GATEWAY, &[("portal.toml", PORTAL)]);
    let mut args = vec!["--host", "www.portal.example"];
    args.extend_from_slice(extra);
    for s in SET_COOKIES {
        args.extend_from_slice(&["--set-cookie", s]);
    }
    let out = dir.run("explain", &args);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    let lines: Vec<[String; 4]> = stdout
        .lines()
        .map(|l| {
            let f: Vec<String> = l.split_whitespace().take(4).map(str::to_owned).collect();
            f.try_into()
                .unwrap_or_else(|f| panic!("short line {l:?}: {f:?}"))
        })
        .collect();
    assert_eq!(lines.len(), SET_COOKIES.len(), "{stdout}");
    lines
}

fn want(rows: &[[&str; 4]]) -> Vec<[String; 4]> {
    rows.iter().map(|r| r.map(str::to_owned)).collect()
}

#[test]
fn explain_without_consent_keeps_only_necessary_and_deletions() {
    assert_eq!(
        explain(&[]),
        want(&[
            ["keep", "sessionid", "necessary", "necessary:"],
            ["drop", "_ga", "statistical", "not-granted:"],
            ["drop", "_ga_ABC", "statistical", "not-granted:"],
            ["drop", "ads_id", "marketing", "not-granted:"],
            ["drop", "tracker", "unknown", "unknown:"],
            ["keep", "_ga", "statistical", "deletion:"],
        ])
    );
}

#[test]
fn explain_with_percent_encoded_consent_keeps_granted_cookies() {
    let cookie = "sessionid=abc; cookies_preferences=%7B%22ga%22%3Atrue%2C%22marketing%22%3Afalse%2C%22timestamp%22%3A1718000000000%7D";
    assert_eq!(
        explain(&["--cookie", cookie]),
        want(&[
            ["keep", "sessionid", "necessary", "necessary:"],
            ["keep", "_ga", "statistical", "granted:"],
            ["keep", "_ga_ABC", "statistical", "granted:"],
            ["drop", "ads_id", "marketing", "not-granted:"],
            ["drop", "tracker", "unknown", "unknown:"],
            ["keep", "_ga", "statistical", "deletion:"],
        ])
    );
}

#[test]
fn explain_with_gpc_refuses_the_gpc_categories() {
    let cookie = r#"cookies_preferences={"ga":true,"marketing":true}"#;
    assert_eq!(
        explain(&["--cookie", cookie, "--gpc"]),
        want(&[
            ["keep", "sessionid", "necessary", "necessary:"],
            ["drop", "_ga", "statistical", "gpc:"],
            ["drop", "_ga_ABC", "statistical", "gpc:"],
            ["keep", "ads_id", "marketing", "granted:"],
            ["drop", "tracker", "unknown", "unknown:"],
            ["keep", "_ga", "statistical", "deletion:"],
        ])
    );
}

#[test]
fn explain_purge_shows_the_deletions_a_request_would_get() {
    let dir = ConfigDir::new(GATEWAY, &[("portal.toml", PORTAL)]);
    let out = dir.run(
        "explain",
        &[
            "--host",
            "www.portal.example",
            "--cookie",
            "_ga=GA1.1.1; sessionid=s; ads_id=1",
            "--purge",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let d = "=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/";
    let want: Vec<String> = ["_ga", "ads_id"]
        .iter()
        .flat_map(|n| {
            [
                format!("purge      {n}{d}"),
                format!("purge      {n}{d}; Domain=www.portal.example"),
                format!("purge      {n}{d}; Domain=portal.example"),
            ]
        })
        .collect();
    assert_eq!(text(&out.stdout).lines().collect::<Vec<_>>(), want);
}

#[test]
fn explain_an_unknown_host_exits_1() {
    let dir = ConfigDir::new(GATEWAY, &[("portal.toml", PORTAL)]);
    let out = dir.run(
        "explain",
        &["--host", "portal.example.org", "--set-cookie", "a=1"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("portal.example.org"));
}

#[test]
fn explain_without_host_is_a_usage_error() {
    let dir = ConfigDir::new(GATEWAY, &[("portal.toml", PORTAL)]);
    let out = dir.run("explain", &["--set-cookie", "a=1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("--host"));
}
