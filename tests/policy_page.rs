//! `/policy/{host}` on the admin listener: the HTML page, the JSON schema, host matching, and the
//! generation it was rendered from.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use consent_gateway::config::load;
use consent_gateway::control::live::ReloadResult;
use consent_gateway::gateway::Gateway;
use serde_json::Value;

fn body(r: &Raw) -> String {
    String::from_utf8(r.body.clone()).unwrap()
}

async fn json(gw: &Gateway, path: &str) -> (Raw, Value) {
    let r = get(
        gw.admin_addr.unwrap(),
        "admin",
        path,
        "Accept: application/json\r\n",
    )
    .await;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r, v)
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

const EXTRA: &str = r#"gpc = ["marketing"]
[consent]
cookie = "cookies_preferences"
format = "json"
"#;

async fn portal() -> Gateway {
    let up = closed_port().await;
    gateway("", &[("portal.toml", portal_toml(up, EXTRA))]).await
}

#[tokio::test]
async fn html_lists_every_cookie_of_the_registry() {
    let gw = portal().await;
    let r = admin(&gw, "/policy/portal.test").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.get("content-type").unwrap(), "text/html; charset=utf-8");
    assert_eq!(r.get("vary").unwrap(), "Accept");
    assert!(r
        .get("content-security-policy")
        .unwrap()
        .starts_with("default-src 'none'"));
    let h = body(&r);
    for name in ["sessionid", "csrftoken", "_ga", "_pk_id", "ads"] {
        assert!(
            h.contains(&format!("<code>{name}</code>")),
            "{name} missing from\n{h}"
        );
    }
    // A prefix is marked as one.
    assert!(h.contains("<code>_ga_*</code>"), "{h}");
    // Accessible, self-contained markup.
    assert!(h.starts_with("<!doctype html>\n<html lang=\"en\">"));
    assert!(h.contains("<h1>Cookie policy of portal.test</h1>"));
    assert_eq!(h.matches("<caption>").count(), 3, "one table per category");
    assert!(h.contains("<th scope=\"col\">Cookie name</th>"));
    assert!(h.contains("<th scope=\"row\"><code>sessionid</code></th>"));
    assert!(!h.contains("<script"));
    // Necessary first, then the file's order.
    let nec = h.find("id=\"category-necessary\"").unwrap();
    let stat = h.find("id=\"category-statistical\"").unwrap();
    let mkt = h.find("id=\"category-marketing\"").unwrap();
    assert!(nec < stat && stat < mkt);
    // Consent keys, format, cookie name, mode and generation.
    assert!(h.contains("<code>ga</code> or <code>C0002</code>"));
    assert!(h.contains("<code>cookies_preferences</code> (format <code>json</code>)"));
    assert!(h.contains("Registry generation 1 loaded at"));
    assert!(h.contains("mode <code>enforce</code>"));
}

#[tokio::test]
async fn json_schema_is_stable() {
    let gw = portal().await;
    let (r, v) = json(&gw, "/policy/portal.test").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.get("content-type").unwrap(), "application/json");
    assert_eq!(
        keys(&v),
        [
            "categories",
            "consent",
            "generation",
            "gpc",
            "host",
            "hosts",
            "loaded_at",
            "mode",
            "name",
            "schema",
            "unknown_cookies"
        ]
    );
    assert_eq!(v["schema"], "consent-gateway/policy/v1");
    assert_eq!(v["host"], "portal.test");
    assert_eq!(v["name"], "portal.test");
    assert_eq!(
        v["hosts"],
        serde_json::json!(["portal.test", "*.portal.test"])
    );
    assert_eq!(v["generation"], 1);
    assert_eq!(v["mode"], "enforce");
    assert_eq!(v["unknown_cookies"], "drop");
    assert_eq!(
        v["consent"],
        serde_json::json!({"cookie": "cookies_preferences", "format": "json"})
    );
    assert_eq!(v["gpc"], serde_json::json!(["marketing"]));
    assert!(v["loaded_at"].as_str().unwrap().ends_with('Z'));

    let cats = v["categories"].as_array().unwrap();
    let names: Vec<&str> = cats.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["necessary", "statistical", "marketing"]);
    for c in cats {
        assert_eq!(
            keys(c),
            ["cookies", "name", "refused_by_gpc", "requires_consent"]
        );
        for k in c["cookies"].as_array().unwrap() {
            assert_eq!(
                keys(k),
                [
                    "consent", "display", "domains", "function", "match", "name", "path",
                    "provider", "purpose"
                ]
            );
        }
    }
    assert_eq!(cats[0]["requires_consent"], false);
    assert_eq!(cats[2]["refused_by_gpc"], true);
    let ga_prefix = &cats[1]["cookies"][1];
    assert_eq!(
        ga_prefix,
        &serde_json::json!({
            "name": "_ga_", "match": "prefix", "display": "_ga_*",
            "provider": null, "function": null, "purpose": null,
            "consent": ["ga"], "domains": [], "path": "/"
        })
    );
    assert_eq!(
        cats[1]["cookies"][0]["consent"],
        serde_json::json!(["ga", "C0002"])
    );
    assert_eq!(cats[0]["cookies"][0]["consent"], serde_json::json!([]));
}

#[tokio::test]
async fn host_is_matched_as_the_proxy_matches_it() {
    let gw = portal().await;
    for ok in [
        "portal.test",
        "PORTAL.Test:8443",
        "portal.test.",
        "a.b.portal.test",
    ] {
        let (r, v) = json(&gw, &format!("/policy/{ok}")).await;
        assert_eq!(r.status, 200, "{ok}");
        assert_eq!(v["name"], "portal.test", "{ok}");
        assert_eq!(v["host"], ok);
    }
    for missing in [
        "/policy/other.test",
        "/policy/",
        "/policy/portal.test/x",
        "/policy",
    ] {
        let r = admin(&gw, missing).await;
        assert_eq!(r.status, 404, "{missing}");
        assert_eq!(r.get("content-type").unwrap(), "text/plain; charset=utf-8");
    }
}

#[tokio::test]
async fn registry_text_is_escaped_in_html() {
    let up = closed_port().await;
    let file = format!(
        r#"hosts = ["evil.test"]
upstream = "http://{up}"

[[cookie]]
name = "x"
category = "necessary"
provider = "<script>alert(1)</script>"
purpose = "a \"quoted\" & 'single' purpose"
"#
    );
    let gw = gateway("", &[("evil.toml", file)]).await;
    let h = body(&admin(&gw, "/policy/evil.test").await);
    assert!(!h.contains("<script>"), "{h}");
    assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(h.contains("a &quot;quoted&quot; &amp; &#39;single&#39; purpose"));
}

#[tokio::test]
async fn policy_follows_the_registry_serving_now() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[registry]\ndir = \"hosts\"\nwatch = false\n",
    )
    .unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::create_dir(&hosts).unwrap();
    let up = closed_port().await;
    std::fs::write(hosts.join("portal.toml"), portal_toml(up, "")).unwrap();
    let (cfg, registry) = load(&dir.path().join("gateway.toml")).unwrap();
    let gw = Gateway::start(&cfg, registry).await.unwrap();

    let (_, v) = json(&gw, "/policy/portal.test").await;
    assert_eq!(v["generation"], 1);
    assert!(!body(&admin(&gw, "/policy/portal.test").await).contains("new_cookie"));

    let extra = "\n[[cookie]]\nname = \"new_cookie\"\ncategory = \"marketing\"\n";
    std::fs::write(
        hosts.join("portal.toml"),
        format!("{}{extra}", portal_toml(up, "")),
    )
    .unwrap();
    assert_eq!(gw.reload().await, ReloadResult::Success(2));

    let (_, v) = json(&gw, "/policy/portal.test").await;
    assert_eq!(v["generation"], 2);
    let h = body(&admin(&gw, "/policy/portal.test").await);
    assert!(h.contains("<code>new_cookie</code>"));
    assert!(h.contains("Registry generation 2 loaded at"));
}
