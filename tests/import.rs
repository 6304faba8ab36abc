//! `import-policy`: each portal's policy page (`tests/fixtures/policies/`) and Markdown variants
//! imported, compiled by the same code as `check`, and rendered through the real admin endpoint
//! (`/policy/{host}`): the same cookies, providers, functions and purposes as the page.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use consent_gateway::cli::import::{import, Imported};
use consent_gateway::config::compile_registry;
use consent_gateway::policy::page::escape;
use serde_json::Value;

/// The policy pages of the five shipped portals, owned by the repository.
fn pages_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies")
}

/// Every policy page with the portal it describes (from its "Cookies used on the
/// <https://HOST> platform" line), which is also its file name.
fn pages() -> Vec<(PathBuf, String, String)> {
    let dir = pages_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "five policy pages in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let host = text
                .split("<https://")
                .nth(1)
                .and_then(|s| s.split('>').next())
                .unwrap_or_else(|| panic!("{}: no <https://host> line", p.display()))
                .to_owned();
            assert_eq!(p.file_stem().unwrap().to_str(), Some(host.as_str()));
            (p, host, text)
        })
        .collect()
}

/// A policy table row: provider, function, cookie name, purpose.
#[derive(Debug)]
struct Row {
    provider: String,
    function: String,
    name: String,
    purpose: String,
}

/// The rows of the page's tables, read independently of the importer: four tab-separated cells,
/// the header row left out.
fn rows(text: &str) -> Vec<Row> {
    text.lines()
        .map(|l| l.split('\t').map(str::trim).collect::<Vec<_>>())
        .filter(|c| c.len() == 4 && c[2] != "Cookie name(s)")
        .map(|c| Row {
            provider: c[0].into(),
            function: c[1].into(),
            name: c[2].into(),
            purpose: c[3].into(),
        })
        .collect()
}

/// Imports, compiles (as `check` does) and serves the result; returns the policy as JSON and
/// HTML from the admin endpoint.
async fn round_trip(text: &str, host: &str) -> (Imported, Value, String) {
    let imported = import(text, "page.txt", host).unwrap();
    let file = (
        PathBuf::from(format!("imported/{host}.toml")),
        imported.toml.clone(),
    );
    let registry = compile_registry(std::slice::from_ref(&file))
        .unwrap_or_else(|e| panic!("{e}\n---\n{}", imported.toml));
    let cfg = consent_gateway::config::parse_gateway(
        Path::new("test/gateway.toml"),
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut cfg = cfg;
    cfg.watch = false;
    let gw = consent_gateway::gateway::Gateway::start(&cfg, registry)
        .await
        .unwrap();
    let admin_addr = gw.admin_addr.unwrap();
    let j = get(
        admin_addr,
        "admin",
        &format!("/policy/{host}"),
        "Accept: application/json\r\n",
    )
    .await;
    assert_eq!(j.status, 200);
    let h = get(admin_addr, "admin", &format!("/policy/{host}"), "").await;
    assert_eq!(h.status, 200);
    (
        imported,
        serde_json::from_slice(&j.body).unwrap(),
        String::from_utf8(h.body).unwrap(),
    )
}

/// Every cookie of the policy JSON: (category, name, match, provider, function, purpose).
fn cookies(v: &Value) -> Vec<(String, String, String, Value, Value, Value)> {
    let mut out = Vec::new();
    for c in v["categories"].as_array().unwrap() {
        for k in c["cookies"].as_array().unwrap() {
            out.push((
                c["name"].as_str().unwrap().to_owned(),
                k["name"].as_str().unwrap().to_owned(),
                k["match"].as_str().unwrap().to_owned(),
                k["provider"].clone(),
                k["function"].clone(),
                k["purpose"].clone(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn each_portal_page_round_trips_through_the_policy_page() {
    for (path, host, text) in pages() {
        let want = rows(&text);
        assert!(!want.is_empty(), "{}: no rows", path.display());
        let (imported, json, html) = round_trip(&text, &host).await;
        assert_eq!(imported.unclassified, 0, "{}", imported.toml);
        assert_eq!(json["host"], host.as_str());
        let got = cookies(&json);
        assert_eq!(got.len(), want.len(), "{}: {got:?}", path.display());
        for r in &want {
            let g = got
                .iter()
                .find(|g| g.1 == r.name)
                .unwrap_or_else(|| panic!("{}: {} missing", path.display(), r.name));
            assert_eq!(g.0, "necessary", "{}", r.name);
            assert_eq!(g.2, "name");
            assert_eq!(g.3, r.provider.as_str());
            assert_eq!(g.4, r.function.as_str());
            assert_eq!(g.5, r.purpose.as_str());
            for s in [&r.name, &r.provider, &r.function, &r.purpose] {
                assert!(
                    html.contains(&escape(s)),
                    "{}: {s:?} not on the HTML page",
                    path.display()
                );
            }
        }
        // The consent cookie comes out necessary.
        assert!(got
            .iter()
            .any(|g| g.1 == "cookies_preferences" && g.0 == "necessary"));
    }
}

#[test]
fn each_portal_page_imports_through_the_cli_and_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::create_dir(&hosts).unwrap();
    for (path, host, _) in pages() {
        let out = Command::new(env!("CARGO_BIN_EXE_consent-gateway"))
            .args(["import-policy"])
            .arg(&path)
            .args(["--host", &host])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let toml = String::from_utf8(out.stdout).unwrap();
        assert!(toml.contains(&format!(
            "upstream = \"http://{}.origin.invalid:8000\"",
            host.replace('.', "-")
        )));
        std::fs::write(hosts.join(format!("{host}.toml")), toml).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains("4 cookie entries"), "{stderr}");
        assert!(stderr.contains("0 lines left as comments"), "{stderr}");
    }
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[listen]\nhttp = \"127.0.0.1:0\"\n[registry]\ndir = \"hosts\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_consent-gateway"))
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
}

#[test]
fn cli_errors_name_the_file_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page.txt");
    std::fs::write(&page, "Cookies policy\n\nNo tables here.\n").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_consent-gateway"))
            .args(args)
            .output()
            .unwrap()
    };
    let p = page.to_str().unwrap();
    let out = run(&["import-policy", p, "--host", "x.test"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with(&format!("{p}:1:1: no cookie table found")));
    let out = run(&["import-policy", p, "--host", "not a host"]);
    assert_eq!(out.status.code(), Some(1));
    let missing = dir.path().join("missing.txt");
    let out = run(&[
        "import-policy",
        missing.to_str().unwrap(),
        "--host",
        "x.test",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.txt:1:1: cannot read"));
    let out = run(&["import-policy", p]);
    assert_eq!(out.status.code(), Some(2), "--host is required");
}

/// A Markdown page with other heading levels, blank lines inside tables, a header row in
/// another order, a statistical section with several names per cell and a prefix, a marketing
/// section, and a section no category fits.
const MARKDOWN: &str = "\
# Cookie policy

Some prose about cookies, which is not a heading.

## Which cookies we use

### Strictly necessary cookies


Cookie name(s)\tService provider's name\tFunction and location\tPurposes

sessionid\tOpendatasoft\tAuthentication\tTo remember the user


cookies_preferences\tOpendatasoft\tConsent\tTo remember the visitor's cookie preferences

#### Audience measurement (statistics)

Service provider's name\tFunction and location\tCookie name(s)\tPurposes
Google\tGoogle Analytics\t_ga, _gid\tTo count visits & \"sessions\"

Matomo\tMatomo analytics\t_pk_id.*\tTo tell visitors apart

###### Advertising

Service provider's name\tFunction and location\tCookie name(s)\tPurposes
AdCo\tAds\tad_id\tTo show ads

## Our partners' widgets

Service provider's name\tFunction and location\tCookie name(s)\tPurposes
Widgets Inc\tEmbedded map\twidget_state\tTo remember the map position
";

#[tokio::test]
async fn markdown_variant_is_classified_by_section() {
    let (imported, json, html) = round_trip(MARKDOWN, "variant.example").await;
    let got: Vec<(String, String, String)> = cookies(&json)
        .into_iter()
        .map(|c| (c.0, c.1, c.2))
        .collect();
    let want = [
        ("necessary", "sessionid", "name"),
        ("necessary", "cookies_preferences", "name"),
        ("statistical", "_ga", "name"),
        ("statistical", "_gid", "name"),
        ("statistical", "_pk_id.", "prefix"),
        ("marketing", "ad_id", "name"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| ((*a).into(), (*b).into(), (*c).into()))
        .collect();
    assert_eq!(got, want, "{}", imported.toml);

    // Known analytics cookies get Opendatasoft's consent keys; others their category.
    let stat = &json["categories"][1]["cookies"];
    assert_eq!(stat[0]["consent"], serde_json::json!(["ga"]));
    assert_eq!(stat[2]["consent"], serde_json::json!(["matomo"]));
    assert_eq!(
        json["categories"][2]["cookies"][0]["consent"],
        serde_json::json!(["marketing"])
    );
    assert_eq!(stat[0]["purpose"], "To count visits & \"sessions\"");
    assert!(html.contains("To count visits &amp; &quot;sessions&quot;"));
    assert!(html.contains("<code>_pk_id.*</code>"));

    // The widget row is not dropped: it is a commented entry naming its line.
    assert_eq!(imported.unclassified, 1, "{}", imported.toml);
    assert!(
        imported.toml.contains("# UNCLASSIFIED page.txt:32\n# [[cookie]]\n# name = \"widget_state\"\n# category = \"UNCLASSIFIED\"\n# provider = \"Widgets Inc\""),
        "{}",
        imported.toml
    );
    assert!(imported
        .toml
        .contains("# --- UNCLASSIFIED: \"Our partners' widgets\" (page.txt:29)"));
    assert!(!html.contains("widget_state"));
}

#[tokio::test]
async fn plain_text_variant_with_pipe_table_and_placeholders() {
    let page = "\
Cookies policy


Functionality cookies
| Cookie | Provider | Purpose |
|---|---|---|
| `csrftoken` | Opendatasoft | CSRF protection |

Web analytics
| Cookie | Provider | Purpose |
|--------|----------|---------|
| _ga_<container-id> | Google | Session state |
| _gat, bad=name | Google | Throttling |

Cookies necessary for the platform to function properly
Opendatasoft\tChoices related to your cookie preferences\tcookies_preferences\tTo remember choices
Opendatasoft\tSession\tcsrftoken\tListed a second time
";
    let (imported, json, _) = round_trip(page, "plain.example").await;
    let got: Vec<(String, String, String)> = cookies(&json)
        .into_iter()
        .map(|c| (c.0, c.1, c.2))
        .collect();
    assert_eq!(
        got,
        [
            ("necessary".into(), "csrftoken".into(), "name".into()),
            (
                "necessary".into(),
                "cookies_preferences".into(),
                "name".into()
            ),
            ("statistical".into(), "_ga_".into(), "prefix".into()),
            ("statistical".into(), "_gat".into(), "name".into()),
        ],
        "{}",
        imported.toml
    );
    assert_eq!(json["categories"][1]["cookies"][0]["provider"], "Google");
    // An invalid name and a name listed twice are kept as comments.
    assert!(imported
        .toml
        .contains("# UNREADABLE page.txt:13: \"bad=name\" is not a valid cookie name"));
    assert!(imported
        .toml
        .contains("# DUPLICATE page.txt:17: already listed at page.txt:7"));
    assert_eq!(imported.unclassified, 2);
}

#[test]
fn consent_cookie_is_necessary_whatever_its_section() {
    let page = "## Analytics\n\nService provider's name\tFunction and location\tCookie name(s)\tPurposes\nOpendatasoft\tConsent\tcookies_preferences\tChoices\nGoogle\tGA\t_ga\tVisitors\n";
    let out = import(page, "p.txt", "x.example").unwrap();
    assert!(
        out.toml
            .contains("name = \"cookies_preferences\"\ncategory = \"necessary\""),
        "{}",
        out.toml
    );
    compile_registry(&[(PathBuf::from("x.toml"), out.toml)]).unwrap();
}

#[test]
fn page_without_the_consent_cookie_gets_it_added_as_necessary() {
    let page = "Statistics\nService provider's name\tFunction and location\tCookie name(s)\tPurposes\nGoogle\tGA\t_ga\tVisitors\n";
    let out = import(page, "p.txt", "x.example").unwrap();
    assert_eq!(out.cookies, 2);
    assert!(out
        .toml
        .contains("name = \"cookies_preferences\"\ncategory = \"necessary\""));
    compile_registry(&[(PathBuf::from("x.toml"), out.toml)]).unwrap();
}

/// A page listing cookies the shipped dashboard.paris file has (same and other categories) and
/// cookies it lacks.
const MERGE_PAGE: &str = "\
## Cookies on this portal

### Strictly necessary cookies

Service provider's name\tFunction and location\tCookie name(s)\tPurposes
Opendatasoft\tAuthentication\tsessionid\tTo remember the user
Opendatasoft\tLoad balancing\tlb_route\tTo keep a visitor on one server

### Audience measurement

Service provider's name\tFunction and location\tCookie name(s)\tPurposes
Google\tGoogle Analytics\t_ga, _ga_*\tTo count visits
Hotjar\tHeatmaps\t_hjSessionUser_*\tTo tell visitors apart

### Advertising

Service provider's name\tFunction and location\tCookie name(s)\tPurposes
Google\tAds\t_gid, IDE\tTo show ads

### Partner widgets

Service provider's name\tFunction and location\tCookie name(s)\tPurposes
Widgets Inc\tEmbedded map\twidget_state\tTo remember the map position
";

fn shipped(name: &str) -> (PathBuf, String) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/hosts")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap();
    (p, text)
}

#[test]
fn merge_adds_the_missing_cookies_and_keeps_every_existing_decision() {
    use consent_gateway::cli::import::merge;
    let (path, existing) = shipped("dashboard-paris.toml");
    let before = consent_gateway::config::parse_host_file(&path, &existing).unwrap();
    let m = merge(
        MERGE_PAGE,
        "page.txt",
        &existing,
        &path,
        Some("dashboard.paris"),
    )
    .unwrap();

    // The file's own text comes first, unchanged: its comments, gpc and analytics entries stay.
    assert!(m.toml.starts_with(&existing), "{}", m.toml);
    let after = consent_gateway::config::parse_host_file(&path, &m.toml)
        .unwrap_or_else(|e| panic!("{e}\n{}", m.toml));
    assert_eq!(after.gpc, before.gpc);
    assert_eq!(after.consent.cookie, before.consent.cookie);
    assert_eq!(after.cookies.len(), before.cookies.len() + m.added);
    // Every name an entry of the file matched is matched by the same entry after the merge.
    for e in &before.cookies {
        for probe in [
            e.matcher.as_str().to_owned(),
            format!("{}x", e.matcher.as_str()),
        ] {
            assert_eq!(
                before.lookup(probe.as_bytes()),
                after.lookup(probe.as_bytes()),
                "{probe}"
            );
        }
    }

    // Added: the names no entry covered, with the page's category, provider and purpose.
    let got = |name: &str| after.lookup(name.as_bytes()).map(|e| e.category.as_str());
    assert_eq!(got("lb_route"), Some("necessary"));
    assert_eq!(got("_hjSessionUser_123"), Some("statistical"));
    assert_eq!(got("IDE"), Some("marketing"));
    let ide = after.lookup(b"IDE").unwrap();
    assert_eq!(ide.provider.as_deref(), Some("Google"));
    assert_eq!(ide.purpose.as_deref(), Some("To show ads"));
    assert_eq!(m.added, 3, "{}", m.toml);
    // sessionid, _ga and _ga_* are there with the same category.
    assert_eq!(m.already, 3, "{}", m.toml);
    // _gid is statistical in the file; the page's "marketing" is left as a comment.
    assert_eq!(m.differs, 1);
    assert_eq!(got("_gid"), Some("statistical"));
    assert!(m.toml.contains(
        "# DIFFERS page.txt:18: the page lists \"_gid\" as marketing; this file's entry \"_gid\" (category statistical) stands"
    ), "{}", m.toml);
    // The row no category fits stays a comment to classify.
    assert_eq!(m.unclassified, 1);
    assert!(m
        .toml
        .contains("# UNCLASSIFIED page.txt:23\n# [[cookie]]\n# name = \"widget_state\""));
    assert!(got("widget_state").is_none());
}

/// The portal's own page lists nothing the shipped file lacks: the output is the file, byte for
/// byte (no section header for sections whose cookies are all there).
#[test]
fn merge_of_the_portals_own_page_changes_nothing() {
    use consent_gateway::cli::import::merge;
    for (path, host, text) in pages() {
        let file = format!("{}.toml", host.split('.').next().unwrap());
        let file = if host == "dashboard.paris" {
            "dashboard-paris.toml".to_owned()
        } else {
            file
        };
        let (existing_path, existing) = shipped(&file);
        let m = merge(&text, "page.txt", &existing, &existing_path, None).unwrap();
        assert_eq!(m.toml, existing, "{}", path.display());
        assert_eq!((m.added, m.already, m.differs), (0, 4, 0));
    }
}

#[test]
fn merge_through_the_cli_prints_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::create_dir(&hosts).unwrap();
    let (_, existing) = shipped("dashboard-paris.toml");
    let file = hosts.join("dashboard-paris.toml");
    std::fs::write(&file, &existing).unwrap();
    let page = dir.path().join("page.txt");
    std::fs::write(&page, MERGE_PAGE).unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_consent-gateway"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "import-policy".as_ref(),
        page.as_os_str(),
        "--merge".as_ref(),
        file.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("3 cookie entries added to"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), existing);

    // The output, put in place of the file, passes check; explain keeps _ga with consent.
    std::fs::write(&file, &out.stdout).unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[listen]\nhttp = \"127.0.0.1:0\"\n[registry]\ndir = \"hosts\"\n",
    )
    .unwrap();
    let config = dir.path().join("gateway.toml");
    let out = run(&["check".as_ref(), "--config".as_ref(), config.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "explain".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--host".as_ref(),
        "dashboard.paris".as_ref(),
        "--cookie".as_ref(),
        "cookies_preferences=%7B%22ga%22%3Atrue%7D".as_ref(),
        "--set-cookie".as_ref(),
        "_ga=GA1.1.1".as_ref(),
        "--set-cookie".as_ref(),
        "IDE=1".as_ref(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("keep") && l.contains("_ga")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("drop") && l.contains("IDE")),
        "{stdout}"
    );

    // --host must be one of the file's hosts; a file that does not pass check is refused.
    let out = run(&[
        "import-policy".as_ref(),
        page.as_os_str(),
        "--merge".as_ref(),
        file.as_os_str(),
        "--host".as_ref(),
        "other.example".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not one of this file's hosts"));
    let bad = hosts.join("bad.toml");
    std::fs::write(
        &bad,
        "hosts = [\"x.example\"]\nupstream = \"http://127.0.0.1:1\"\nmode = \"sometimes\"\n",
    )
    .unwrap();
    let out = run(&[
        "import-policy".as_ref(),
        page.as_os_str(),
        "--merge".as_ref(),
        bad.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:3:", bad.display())),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
