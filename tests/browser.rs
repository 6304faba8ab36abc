//! The demo in a real browser: headless Chromium (Debian's `chromium`) driven over the DevTools
//! protocol on a pipe, against `consent-gateway demo` started in process.
//!
//! accept all → reload → analytics cookies present; necessary only → reload → analytics cookies
//! expired by the gateway; necessary cookies present throughout. Screenshots of the three states
//! are written to `<target>/browser-screenshots/` and their paths printed.
//!
//! The page is loaded under a host name, `www.portal.test` (Chromium's host resolver maps it, and
//! only it, to 127.0.0.1: no other name resolves), so that the analytics script can write its
//! Google Analytics cookies with `Domain=portal.test` as gtag.js does; a `Domain` attribute is
//! not allowed on an IP host. Withdrawing consent must leave no `_ga` in Chromium's jar under
//! any domain.
//!
//! Never skipped: without Chromium the test fails and says how to install it (`.ci/run` does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The whole test's budget.
const BUDGET: Duration = Duration::from_secs(60);

/// The page's host name, mapped to loopback in Chromium, and its registrable domain: where the
/// analytics script writes `_ga` (gtag.js's `cookie_domain: 'auto'`).
const PAGE_HOST: &str = "www.portal.test";
const COOKIE_DOMAIN: &str = "portal.test";

fn chromium() -> PathBuf {
    let candidates = [
        std::env::var("CHROMIUM").ok(),
        Some("/usr/bin/chromium".to_owned()),
        Some("/usr/bin/chromium-browser".to_owned()),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "Chromium not found (looked at $CHROMIUM, /usr/bin/chromium, /usr/bin/chromium-browser). \
                 Install Debian's package: apt-get install -y chromium (bash .ci/run does this on CI)"
            )
        })
}

/// A Chromium process and a DevTools session on one page, over `--remote-debugging-pipe`.
struct Browser {
    child: Child,
    to: ChildStdin,
    from: Receiver<Value>,
    /// Events read while waiting for a reply.
    events: VecDeque<Value>,
    next_id: u64,
    session: String,
    deadline: Instant,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch(deadline: Instant) -> Browser {
        let exe = chromium();
        let profile = tempfile::tempdir().unwrap();
        // Chromium reads DevTools commands on fd 3 and writes replies on fd 4; the shell maps them
        // onto our stdin and stdout pipes (std::process cannot pass extra descriptors).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" 3<&0 4>&1 </dev/null >/dev/null")
            .arg(&exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--mute-audio",
                "--password-store=basic",
                "--use-mock-keychain",
                "--window-size=1200,900",
                "--remote-debugging-pipe",
                // Traffic stays on loopback: the page's name goes to 127.0.0.1, no other name
                // resolves, and an http:// navigation is not tried over https first.
                &format!("--host-resolver-rules=MAP {PAGE_HOST} 127.0.0.1, MAP * ~NOTFOUND"),
                "--disable-features=HttpsUpgrades",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(profile.path().join("chromium.log")).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let to = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut msg = Vec::new();
            match out.read_until(0, &mut msg) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    msg.pop();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to,
            from,
            events: VecDeque::new(),
            next_id: 0,
            session: String::new(),
            deadline,
            _profile: profile,
        };
        let target = b.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = b.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.call("Page.enable", json!({}));
        b.call("Network.enable", json!({}));
        b
    }

    fn recv(&mut self) -> Value {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.from.recv_timeout(left) {
            Ok(v) => v,
            Err(_) => panic!("Chromium did not answer within the test's {BUDGET:?} budget"),
        }
    }

    fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        self.to.flush().unwrap();
        loop {
            let v = self.recv();
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
            self.events.push_back(v);
        }
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.send(method, params, Some(s))
    }

    /// Waits for the page's next `load` event (events already queued are dropped first by
    /// [`Browser::forget_events`]).
    fn wait_load(&mut self) {
        loop {
            let v = match self.events.pop_front() {
                Some(v) => v,
                None => self.recv(),
            };
            if v["method"] == "Page.loadEventFired" {
                return;
            }
        }
    }

    fn forget_events(&mut self) {
        self.events.clear();
        while let Ok(v) = self.from.try_recv() {
            drop(v);
        }
    }

    fn navigate(&mut self, url: &str) {
        self.forget_events();
        self.call("Page.navigate", json!({"url": url}));
        self.wait_load();
    }

    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expr`, a promise, and returns what it resolves to.
    fn eval_await(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Clicks the element with this id with the mouse, as a visitor would, and waits for the
    /// reload the banner triggers.
    fn click_and_wait_reload(&mut self, id: &str) {
        let at = self.eval(&format!(
            "(() => {{ const e = document.getElementById({id:?}); e.scrollIntoView(); \
             const r = e.getBoundingClientRect(); \
             return e.offsetParent === null ? null : [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = (
            at[0]
                .as_f64()
                .unwrap_or_else(|| panic!("#{id} is not visible")),
            at[1].as_f64().unwrap(),
        );
        self.forget_events();
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
        self.wait_load();
    }

    /// Every cookie in the browser's jar, whatever its domain: (name, domain as stored: a leading
    /// dot for a `Domain` cookie).
    fn jar(&mut self) -> Vec<(String, String)> {
        let r = self.browser_call("Storage.getCookies", json!({}));
        r["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["domain"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Every cookie the browser holds for the page, `HttpOnly` ones included.
    fn cookie_names(&mut self) -> Vec<String> {
        let r = self.call("Network.getCookies", json!({}));
        let mut names: Vec<String> = r["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    fn screenshot(&mut self, path: &Path) {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": false}),
        );
        let png = base64_decode(r["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
        println!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium's own log (mostly D-Bus noise in containers) only matters when a step failed.
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self._profile.path().join("chromium.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- chromium log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'=' && *b != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0_u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..chunk.len()]);
    }
    out
}

fn screenshot_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_owned();
    let dir = target.join("browser-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const NECESSARY: [&str; 3] = ["csrftoken", "django_language", "sessionid"];

fn is_analytics(name: &str) -> bool {
    name == "_ga" || name == "_gid" || name.starts_with("_ga_") || name.starts_with("_pk_")
}

#[test]
fn consent_banner_accept_then_withdraw_in_chromium() {
    let deadline = Instant::now() + BUDGET;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let demo = rt
        .block_on(consent_gateway::cli::demo::start_for(0, &[PAGE_HOST]))
        .unwrap();
    // The demo's front address: it forwards to the gateway and records what the gateway sent.
    let url = format!("http://{PAGE_HOST}:{}/", demo.open.port());
    let shots = screenshot_dir();
    let mut b = Browser::launch(deadline);
    // The page is judged at 1280x1000 CSS pixels (the banner must not cover content there).
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
    );

    // 1. First visit: no choice yet. The banner shows; only necessary cookies are held.
    b.navigate(&url);
    let held = b.cookie_names();
    for n in NECESSARY {
        assert!(held.contains(&n.to_owned()), "first visit: {n} in {held:?}");
    }
    assert!(
        !held.iter().any(|n| is_analytics(n) || n == "tracker_id"),
        "first visit: {held:?}"
    );
    assert_eq!(
        b.eval("document.getElementById('consent-banner').hidden"),
        false
    );
    banner_covers_nothing(&mut b);
    b.screenshot(&shots.join("1-first-visit.png"));

    // 2. Accept all: the banner writes cookies_preferences and reloads; the gateway now keeps
    //    the portal's analytics cookies and the script writes its own.
    b.click_and_wait_reload("accept-all");
    let prefs = b.eval(
        "decodeURIComponent(document.cookie.match(/(?:^|; )cookies_preferences=([^;]*)/)[1])",
    );
    let prefs: Value = serde_json::from_str(prefs.as_str().unwrap()).unwrap();
    assert_eq!(
        (prefs["ga"].clone(), prefs["matomo"].clone()),
        (json!(true), json!(true))
    );
    assert!(prefs["timestamp"].is_number());
    let held = b.cookie_names();
    for n in NECESSARY
        .iter()
        .chain(&[
            "cookies_preferences",
            "_ga",
            "_gid",
            "_ga_DEMO123",
            "_pk_id.1.1fff",
        ])
        .chain(&[consent_gateway::cli::demo::JS_COOKIE])
    {
        assert!(
            held.contains(&(*n).to_owned()),
            "after accept: {n} in {held:?}"
        );
    }
    assert!(!held.contains(&"tracker_id".to_owned()), "{held:?}");
    assert_eq!(
        b.eval("document.getElementById('consent-banner').hidden"),
        true
    );
    let panel = b.eval("document.getElementById('browser-cookies').textContent");
    assert!(
        panel
            .as_str()
            .unwrap()
            .contains(consent_gateway::cli::demo::JS_COOKIE),
        "{panel}"
    );
    // The demo page, side by side: the portal's analytics lines reached the browser.
    let received = demo_page_received(&mut b);
    for n in ["_ga", "_gid", "_ga_DEMO123", "_pk_id.1.1fff"] {
        assert!(
            received.iter().any(|(name, del)| name == n && !del),
            "after accept, the page lists {n} as received: {received:?}"
        );
    }
    assert!(
        !received.iter().any(|(_, del)| *del),
        "after accept, no deletion: {received:?}"
    );
    // The analytics script wrote Google Analytics' cookies on the registrable domain, as gtag.js
    // does, beside the portal's host-only `_ga`: the purge must reach both.
    let jar = b.jar();
    let dot_domain = format!(".{COOKIE_DOMAIN}");
    for n in ["_ga", consent_gateway::cli::demo::JS_COOKIE] {
        assert!(
            jar.iter().any(|(name, d)| name == n && *d == dot_domain),
            "after accept: {n} on Domain={COOKIE_DOMAIN} in {jar:?}"
        );
    }
    assert!(
        jar.iter().any(|(name, d)| name == "_ga" && d == PAGE_HOST),
        "after accept: the portal's host-only _ga in {jar:?}"
    );
    b.screenshot(&shots.join("2-accepted.png"));

    // 3. Withdraw: "Necessary only" from the settings. On the reload the browser sends the
    //    analytics cookies, consent refuses them, and the gateway expires them: on the page's
    //    response for those the portal does not set again (the script's), and on the analytics
    //    script's response (which sets nothing) for the others.
    b.eval("document.getElementById('open-settings').click()");
    b.click_and_wait_reload("necessary-only");
    let held = b.cookie_names();
    for n in NECESSARY.iter().chain(&["cookies_preferences"]) {
        assert!(
            held.contains(&(*n).to_owned()),
            "after withdrawal: {n} in {held:?}"
        );
    }
    let left: Vec<&String> = held.iter().filter(|n| is_analytics(n)).collect();
    // The demo page lists the deletions the gateway added on the page's response, for every
    // analytics cookie the browser held, the one only JavaScript wrote included, and marks the
    // portal's analytics lines as dropped.
    let received = demo_page_received(&mut b);
    for n in [
        "_ga",
        "_gid",
        "_ga_DEMO123",
        "_pk_id.1.1fff",
        "_pk_ses.1.1fff",
        consent_gateway::cli::demo::JS_COOKIE,
    ] {
        assert!(
            received.iter().any(|(name, del)| name == n && *del),
            "after withdrawal, the page lists a deletion of {n}: {received:?}"
        );
    }
    let dropped = b.eval(
        "Array.from(document.querySelectorAll('#portal-set-cookie li.dropped code'))\
         .map(e => e.textContent.split('=')[0])",
    );
    assert_eq!(
        dropped,
        json!([
            "_ga",
            "_gid",
            "_ga_DEMO123",
            "_pk_id.1.1fff",
            "_pk_ses.1.1fff",
            "tracker_id"
        ]),
        "the portal's lines the gateway dropped"
    );
    b.screenshot(&shots.join("3-withdrawn.png"));
    // Not only the cookies sent to this page: none is left in the jar under any domain.
    let jar = b.jar();
    let left_in_jar: Vec<&(String, String)> =
        jar.iter().filter(|(name, _)| is_analytics(name)).collect();
    assert!(
        left_in_jar.is_empty(),
        "after withdrawal, analytics cookies remain in Chromium's jar: {left_in_jar:?}"
    );
    assert!(
        left.is_empty(),
        "after withdrawal, analytics cookies remain: {left:?}"
    );
    let received = b.eval("document.getElementById('received').textContent");
    assert!(
        !received.as_str().unwrap().contains("_ga"),
        "the portal received refused cookies: {received}"
    );
    assert!(
        Instant::now() < deadline,
        "the browser test took longer than {BUDGET:?}"
    );
    drop(b);
    demo.gateway.begin_shutdown();
}

/// The demo page's "Set-Cookie the browser received from the gateway" list for the page's own
/// response (`GET /`), once the page has loaded it: (cookie name, is a deletion) per line.
fn demo_page_received(b: &mut Browser) -> Vec<(String, bool)> {
    let loaded = b.eval_await("window.demoReceived.then(d => d !== null)");
    assert_eq!(
        loaded,
        json!(true),
        "the page could not load what the gateway sent"
    );
    let v = b.eval(
        "Array.from(document.querySelectorAll('#received-set-cookie > li.response'))\
         .filter(r => r.querySelector('strong').textContent === 'GET /')\
         .flatMap(r => Array.from(r.querySelectorAll('li.set')))\
         .map(li => [li.dataset.name, li.classList.contains('deletion')])",
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_bool().unwrap()))
        .collect()
}

/// At 1280x1000 the consent banner sits in the page's flow: nothing of the page's content lies
/// under it, and it does not float over what follows.
fn banner_covers_nothing(b: &mut Browser) {
    let v = b.eval(
        "(() => { const ban = document.getElementById('consent-banner'); \
           const r = ban.getBoundingClientRect(); \
           const pos = getComputedStyle(ban).position; \
           const hit = Array.from(document.querySelectorAll('main *')).filter(e => { \
             const q = e.getBoundingClientRect(); \
             return q.width > 0 && q.height > 0 && q.left < r.right && q.right > r.left \
               && q.top < r.bottom && q.bottom > r.top; }).map(e => e.tagName + '#' + e.id); \
           return [innerWidth, innerHeight, pos, r.height, hit]; })()",
    );
    assert_eq!(v[0], json!(1280), "{v}");
    assert_eq!(v[1], json!(1000), "{v}");
    assert!(
        v[2] == "static" || v[2] == "relative",
        "the banner floats ({}): it can cover the page",
        v[2]
    );
    assert!(v[3].as_f64().unwrap() > 0.0, "the banner is not shown: {v}");
    assert_eq!(v[4], json!([]), "page content under the banner");
}
