//! The live cookie inventory end to end: a real origin, real clients, `/inventory` read back;
//! the knowledge-base generator; `suggest` over two gateways and `check` on its output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::*;
use consent_gateway::config::load;
use consent_gateway::control::live::ReloadResult;
use consent_gateway::gateway::Gateway;
use serde_json::Value;

/// What the origin sets on every response: a registered necessary cookie, two names the
/// knowledge base knows (`_ga` exactly, `_hjSessionUser_1234` by the `_hjSessionUser_` prefix)
/// and one it does not (Django's `messages`). The values are markers that must never show up in
/// the inventory.
const SET_COOKIES: &[&str] = &[
    "sessionid=VALUE-SESSION-1; Path=/; HttpOnly; Secure; SameSite=Lax",
    "_ga=VALUE-GA-2; Domain=inv.test; Path=/; Max-Age=63072000",
    "_hjSessionUser_1234=VALUE-HJ-3; Path=/; Max-Age=31536000; SameSite=None; Secure",
    "messages=VALUE-MESSAGES-4; Path=/",
];
const VALUES: &[&str] = &[
    "VALUE-SESSION-1",
    "VALUE-GA-2",
    "VALUE-HJ-3",
    "VALUE-MESSAGES-4",
    "VALUE-SCRIPT-5",
    "VALUE-CONSENT",
];

fn registry(upstream: SocketAddr, mode: &str, extra: &str) -> String {
    format!(
        "hosts = [\"inv.test\"]\nupstream = \"http://{upstream}\"\nmode = \"{mode}\"\n\
         [[cookie]]\nname = \"sessionid\"\ncategory = \"necessary\"\nprovider = \"Django\"\n{extra}"
    )
}

async fn inventory(gw: &Gateway, host: &str) -> (Value, String) {
    let r = admin(gw, &format!("/inventory/{host}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.get("content-type").as_deref(), Some("application/json"));
    let body = String::from_utf8(r.body).unwrap();
    (serde_json::from_str(&body).unwrap(), body)
}

fn cookie<'a>(inv: &'a Value, name: &str) -> &'a Value {
    inv["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the inventory: {inv:#}"))
}

/// One page view without consent, then two with consent (statistical), one of them carrying a
/// cookie that only a script could have set.
async fn traffic(http: SocketAddr) {
    let none = get(http, "inv.test", "/", "").await;
    assert_eq!(none.status, 200);
    let prefs = prefs(&["statistical"]);
    for extra in ["", "; _pk_id.1.a1b2=VALUE-SCRIPT-5"] {
        let r = get(
            http,
            "inv.test",
            "/page",
            &format!("Cookie: cookies_preferences={prefs}{extra}\r\n"),
        )
        .await;
        assert_eq!(r.status, 200);
    }
}

#[tokio::test]
async fn every_name_seen_is_listed_with_its_fields_and_never_its_value() {
    let (origin, _) = cookie_origin(SET_COOKIES).await;
    let gw = gateway("", &[("inv.toml", registry(origin, "report-only", ""))]).await;
    traffic(gw.http_addr.unwrap()).await;
    let (inv, body) = inventory(&gw, "inv.test").await;
    for v in VALUES {
        assert!(
            !body.contains(v),
            "the value {v} leaked into /inventory: {body}"
        );
    }
    assert_eq!(inv["name"], "inv.test");
    assert_eq!(inv["max_names_per_host"], 1000);
    assert_eq!(inv["overflow"], 0);

    let sid = cookie(&inv, "sessionid");
    assert_eq!(sid["registered"], true);
    assert_eq!(sid["entry"], serde_json::json!({"name": "sessionid"}));
    assert_eq!(sid["category"], "necessary");
    assert_eq!(sid["seen_in"], serde_json::json!(["set-cookie"]));
    assert_eq!(sid["set_count"], 3);
    assert_eq!(sid["request_count"], 0);
    assert_eq!(
        sid["before_consent"], 1,
        "one response answered a request without consent"
    );
    assert_eq!(
        sid["verdicts"],
        serde_json::json!({"kept": 3, "dropped": 0, "would_drop": 0})
    );
    assert_eq!(
        sid["attributes"],
        serde_json::json!({"domains": [], "paths": ["/"], "samesite": ["Lax"], "secure": true,
                           "httponly": true, "lifetime": null})
    );
    assert_eq!(
        sid["suggestion"],
        Value::Null,
        "the registry wins over the database"
    );

    let ga = cookie(&inv, "_ga");
    assert_eq!(ga["registered"], false);
    assert_eq!(ga["entry"], Value::Null);
    assert_eq!(ga["category"], Value::Null);
    assert_eq!(ga["before_consent"], 1);
    assert_eq!(
        ga["verdicts"],
        serde_json::json!({"kept": 0, "dropped": 0, "would_drop": 3})
    );
    assert_eq!(ga["attributes"]["domains"], serde_json::json!(["inv.test"]));
    assert_eq!(ga["attributes"]["lifetime"], 63_072_000);
    let s = &ga["suggestion"];
    assert_eq!(s["category"], "statistical");
    assert_eq!(s["platform"], "Google Analytics");
    assert_eq!(s["controller"], "Google");
    assert_eq!(s["retention"], "2 years");
    assert_eq!(s["match"], "exact");
    assert_eq!(s["source"], "open-cookie-database");

    let hj = cookie(&inv, "_hjSessionUser_1234");
    assert_eq!(hj["suggestion"]["match"], "prefix");
    assert_eq!(hj["suggestion"]["entry"], "_hjSessionUser_");
    assert_eq!(hj["suggestion"]["platform"], "Hotjar");
    assert_eq!(hj["attributes"]["samesite"], serde_json::json!(["None"]));

    let messages = cookie(&inv, "messages");
    assert_eq!(messages["registered"], false);
    assert_eq!(
        messages["suggestion"],
        Value::Null,
        "not in the knowledge base"
    );

    // Set by a script: only ever seen in the browser's Cookie header.
    let script = cookie(&inv, "_pk_id.1.a1b2");
    assert_eq!(script["seen_in"], serde_json::json!(["request"]));
    assert_eq!(
        (&script["set_count"], &script["request_count"]),
        (&0.into(), &1.into())
    );
    assert_eq!(script["before_consent"], 0);
    // The longest prefix wins: the database has both `_pk_id` (Matomo) and `_pk_id.` (Piwik).
    assert_eq!(script["suggestion"]["entry"], "_pk_id.");
    assert_eq!(script["suggestion"]["platform"], "Piwik");
    assert_eq!(script["suggestion"]["match"], "prefix");

    // The consent cookie itself is necessary, listed or not.
    let consent = cookie(&inv, "cookies_preferences");
    assert_eq!(consent["registered"], true);
    assert_eq!(consent["category"], "necessary");
    assert_eq!(consent["request_count"], 2);

    assert_eq!(inv["names"], 6);
    assert_eq!(inv["registered"], 2);
    assert_eq!(inv["unregistered"], 4);
    for c in inv["cookies"].as_array().unwrap() {
        let (first, last) = (
            c["first_seen"].as_str().unwrap(),
            c["last_seen"].as_str().unwrap(),
        );
        assert!(
            first.len() == 20 && first.ends_with('Z') && first <= last,
            "{c}"
        );
    }

    // The host list, the metric and the HTML view.
    let r = admin(&gw, "/inventory").await;
    let all: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        all["hosts"],
        serde_json::json!([{"host": "inv.test", "file": "test/hosts/inv.toml", "loaded": true,
                            "names": 6, "registered": 2, "unregistered": 4, "overflow": 0}])
    );
    let metrics = String::from_utf8(admin(&gw, "/metrics").await.body).unwrap();
    assert!(
        metrics.contains("consent_gateway_inventory_unregistered{host=\"inv.test\"} 4"),
        "{metrics}"
    );
    let html = get(
        gw.admin_addr.unwrap(),
        "admin",
        "/inventory/inv.test",
        "Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n",
    )
    .await;
    assert_eq!(html.status, 200);
    assert_eq!(
        html.get("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(html
        .get("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    let page = String::from_utf8(html.body).unwrap();
    assert!(!page.contains("<script"));
    for v in VALUES {
        assert!(!page.contains(v), "the value {v} leaked into the page");
    }
    let unregistered = page.split("<h2 id=\"registered\">").next().unwrap();
    assert!(unregistered.contains("<code>messages</code>"));
    assert!(unregistered.contains("Google Analytics"));
    assert!(
        unregistered.contains("class=\"early\""),
        "before consent stands out"
    );
    let registered = page.split("<h2 id=\"registered\">").nth(1).unwrap();
    assert!(registered.contains("<code>sessionid</code>"));
    assert!(
        !registered.contains("class=\"early\""),
        "a necessary cookie set before consent is not flagged"
    );
    assert_eq!(admin(&gw, "/inventory/nowhere.test").await.status, 404);
}

#[tokio::test]
async fn dropped_cookies_never_count_as_before_consent() {
    let (origin, _) = cookie_origin(SET_COOKIES).await;
    let gw = gateway("", &[("inv.toml", registry(origin, "enforce", ""))]).await;
    let r = get(gw.http_addr.unwrap(), "inv.test", "/", "").await;
    assert_eq!(r.set_cookie_names(), ["sessionid"]);
    let (inv, _) = inventory(&gw, "inv.test").await;
    let ga = cookie(&inv, "_ga");
    assert_eq!(ga["verdicts"]["dropped"], 1);
    assert_eq!(
        ga["before_consent"], 0,
        "dropped: it never reached the browser"
    );
    assert_eq!(cookie(&inv, "sessionid")["before_consent"], 1);
}

#[tokio::test]
async fn the_cap_keeps_the_first_names_and_counts_the_rest() {
    let (origin, _) = cookie_origin(SET_COOKIES).await;
    let gw = gateway(
        "[inventory]\nmax_names_per_host = 3\n",
        &[("inv.toml", registry(origin, "report-only", ""))],
    )
    .await;
    for _ in 0..2 {
        get(
            gw.http_addr.unwrap(),
            "inv.test",
            "/",
            "Cookie: extra=1\r\n",
        )
        .await;
    }
    let (inv, _) = inventory(&gw, "inv.test").await;
    let names: Vec<&str> = inv["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // The request's cookie is seen first, then the Set-Cookie headers in order.
    assert_eq!(names, ["_ga", "extra", "sessionid"]);
    assert_eq!(inv["names"], 3);
    // Per response, _hjSessionUser_1234 and messages found the inventory full.
    assert_eq!(inv["overflow"], 4);
}

#[tokio::test]
async fn the_inventory_can_be_turned_off() {
    let (origin, _) = cookie_origin(SET_COOKIES).await;
    let gw = gateway(
        "[inventory]\nmax_names_per_host = 0\n",
        &[("inv.toml", registry(origin, "report-only", ""))],
    )
    .await;
    let r = get(gw.http_addr.unwrap(), "inv.test", "/", "").await;
    assert_eq!(r.set_cookie_names().len(), 4, "proxying is unchanged");
    let (inv, _) = inventory(&gw, "inv.test").await;
    assert_eq!(inv["names"], 0);
    assert_eq!(inv["max_names_per_host"], 0);
}

#[tokio::test]
async fn the_inventory_survives_a_reload_and_follows_the_registry() {
    let (origin, _) = cookie_origin(SET_COOKIES).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [registry]\ndir = \"hosts\"\nwatch = false\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("hosts")).unwrap();
    let file = dir.path().join("hosts").join("inv.toml");
    std::fs::write(&file, registry(origin, "report-only", "")).unwrap();
    let (cfg, reg) = load(&dir.path().join("gateway.toml")).unwrap();
    let gw = Gateway::start(&cfg, reg).await.unwrap();
    get(gw.http_addr.unwrap(), "inv.test", "/", "").await;
    let (before, _) = inventory(&gw, "inv.test").await;
    assert_eq!(cookie(&before, "messages")["registered"], false);

    std::fs::write(
        &file,
        registry(
            origin,
            "report-only",
            "[[cookie]]\nname = \"messages\"\ncategory = \"necessary\"\nprovider = \"Django\"\n",
        ),
    )
    .unwrap();
    assert!(matches!(gw.reload().await, ReloadResult::Success { .. }));
    let (after, _) = inventory(&gw, "inv.test").await;
    let m = cookie(&after, "messages");
    assert_eq!(m["registered"], true);
    assert_eq!(m["entry"], serde_json::json!({"name": "messages"}));
    assert_eq!(m["category"], "necessary");
    assert_eq!(m["set_count"], 1, "what was seen before the reload is kept");
    assert_eq!(m["suggestion"], Value::Null);
    get(gw.http_addr.unwrap(), "inv.test", "/", "").await;
    let (later, _) = inventory(&gw, "inv.test").await;
    assert_eq!(cookie(&later, "messages")["set_count"], 2);
    assert_eq!(later["names"], 4);
    assert_eq!(later["unregistered"], 2);
}

/// `suggest` over two gateways (replicas): counts merged, and the printed entries, appended to
/// the host's registry file, pass `check`.
#[tokio::test]
async fn suggest_merges_replicas_and_its_output_passes_check() {
    let (origin, _) = cookie_origin(SET_COOKIES).await;
    let host_file = registry(origin, "report-only", "");
    let a = gateway("", &[("inv.toml", host_file.clone())]).await;
    let b = gateway("", &[("inv.toml", host_file.clone())]).await;
    traffic(a.http_addr.unwrap()).await;
    get(b.http_addr.unwrap(), "inv.test", "/", "").await;
    let urls: Vec<String> = [&a, &b]
        .iter()
        .map(|g| format!("http://{}", g.admin_addr.unwrap()))
        .collect();
    let out = tokio::task::spawn_blocking({
        let urls = urls.join(",");
        move || {
            Command::new(BIN)
                .args(["suggest", "--admin", &urls])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for v in VALUES {
        assert!(!text.contains(v));
    }
    let entries: toml::Value = toml::from_str(&text).unwrap();
    let cookies = entries["cookie"].as_array().unwrap();
    let find = |key: &str, v: &str| {
        cookies
            .iter()
            .find(|c| c.get(key).and_then(|x| x.as_str()) == Some(v))
            .unwrap_or_else(|| panic!("no {key} = {v:?} in\n{text}"))
    };
    assert_eq!(
        find("name", "_ga")["category"].as_str(),
        Some("statistical")
    );
    assert_eq!(
        find("name", "_ga")["provider"].as_str(),
        Some("Google Analytics")
    );
    assert_eq!(
        find("prefix", "_hjSessionUser_")["provider"].as_str(),
        Some("Hotjar")
    );
    assert_eq!(
        find("prefix", "_pk_id.")["category"].as_str(),
        Some("statistical")
    );
    assert_eq!(
        find("name", "messages")["category"].as_str(),
        Some("unclassified")
    );
    assert!(
        cookies.iter().all(
            |c| c.get("name").and_then(|n| n.as_str()) != Some("sessionid")
                && c.get("name").and_then(|n| n.as_str()) != Some("cookies_preferences")
        ),
        "registered names are not suggested:\n{text}"
    );
    assert_eq!(cookies.len(), 4, "{text}");
    // Merged: 3 responses from a, 1 from b; 2 of them answered requests without consent.
    let ga_block: Vec<&str> = text
        .split("\n\n")
        .filter(|b| b.contains("name = \"_ga\""))
        .collect();
    assert_eq!(ga_block.len(), 1, "{text}");
    assert!(
        ga_block[0].contains("# review: set by the origin 4 times; sent 2 times before consent"),
        "{}",
        ga_block[0]
    );
    assert!(
        ga_block[0].contains("# retention: 2 years"),
        "{}",
        ga_block[0]
    );
    let script = text
        .split("\n\n")
        .find(|b| b.contains("prefix = \"_pk_id.\""))
        .unwrap();
    assert!(
        script.contains("sent by browsers 1 time (never set by the origin"),
        "{script}"
    );

    // Appended to the host's file, `check` accepts it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[listen]\nhttp = \"127.0.0.1:0\"\n[registry]\ndir = \"hosts\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("hosts")).unwrap();
    std::fs::write(
        dir.path().join("hosts/inv.toml"),
        format!("{host_file}\n{text}"),
    )
    .unwrap();
    let check = Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "check refused the suggestion:\n{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // And with it, the gateway registers every name it saw.
    let (cfg, reg) = load(&dir.path().join("gateway.toml")).unwrap();
    let policy = reg.lookup(b"inv.test").unwrap();
    for name in ["_ga", "_hjSessionUser_1234", "messages", "_pk_id.1.a1b2"] {
        assert!(policy.lookup(name.as_bytes()).is_some(), "{name}");
    }
    drop(cfg);
}

#[tokio::test]
async fn suggest_says_clearly_when_an_admin_url_is_not_a_gateway() {
    let closed = closed_port().await;
    let (not_gateway, _) = cookie_origin(&[]).await;
    let (origin, _) = cookie_origin(SET_COOKIES).await;
    let gw = gateway("", &[("inv.toml", registry(origin, "report-only", ""))]).await;
    let good = format!("http://{}", gw.admin_addr.unwrap());
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || Command::new(BIN).args(args).output().unwrap())
    };
    let cases = [
        (format!("http://{closed}"), 1, "cannot connect"),
        (
            format!("{good},http://{not_gateway}"),
            1,
            "not a consent-gateway inventory",
        ),
        (
            format!("https://{}", gw.admin_addr.unwrap()),
            2,
            "only http://",
        ),
        ("nonsense".to_owned(), 2, "expected http://HOST:PORT"),
    ];
    for (admin, code, says) in cases {
        let out = run(vec!["suggest".into(), "--admin".into(), admin.clone()])
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{admin}: {err}");
        assert!(err.contains(says), "{admin}: {err}");
        assert!(out.stdout.is_empty());
    }
    let out = run(vec![
        "suggest".into(),
        "--admin".into(),
        good,
        "--host".into(),
        "nowhere.test".into(),
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}

/// The generator turns a small CSV into exactly the expected table: wildcards become prefixes,
/// short prefixes and non-cookie names are left out, duplicates merge or, when their categories
/// disagree, are left out, categories are mapped (never to `necessary`).
#[test]
fn the_generator_makes_the_expected_table_from_a_small_csv() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("tests/fixtures/knowledge-base");
    let out = tempfile::tempdir().unwrap();
    let table = out.path().join("kb.tsv");
    let run = Command::new("python3")
        .arg(root.join("data/generate-knowledge-base.py"))
        .arg(fixtures.join("small.csv"))
        .arg(&table)
        .output()
        .expect("python3 runs the generator");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&table).unwrap(),
        std::fs::read_to_string(fixtures.join("expected.tsv")).unwrap()
    );
    for why in [
        "prefix '_s': shorter than 4 characters",
        "prefix 'sb-': shorter than 4 characters",
        "'Site History': not a cookie name",
        "'token': listed 2 times with categories marketing, preferences",
    ] {
        assert!(stderr.contains(why), "{why} not in {stderr}");
    }
    assert!(stderr.contains("9 entries, 4 left out"), "{stderr}");
}

/// The table compiled into the binary is what the generator makes of the bundled CSV (so it
/// can be regenerated from a newer CSV, and nobody edited it by hand).
#[test]
fn the_bundled_table_is_the_generators_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = Command::new("python3")
        .arg(root.join("data/generate-knowledge-base.py"))
        .arg(root.join("data/open-cookie-database/open-cookie-database.csv"))
        .arg("-")
        .output()
        .expect("python3 runs the generator");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bundled = std::fs::read_to_string(root.join("data/knowledge-base.tsv")).unwrap();
    assert!(
        String::from_utf8(run.stdout).unwrap() == bundled,
        "data/knowledge-base.tsv is stale: run python3 data/generate-knowledge-base.py"
    );
}
