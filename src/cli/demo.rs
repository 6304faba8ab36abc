//! `consent-gateway demo`: a sample portal on loopback with the gateway in front of it.
//!
//! The sample portal sends what an Opendatasoft portal with analytics sends: the necessary
//! cookies, Google Analytics and Matomo cookies, and one cookie no registry names. Its page has a
//! consent banner that writes `cookies_preferences` as the portal does, an analytics script that
//! writes cookies from JavaScript when consent allows, and panels showing the cookies the browser
//! holds and the ones the portal set and received, so the gateway's work is visible.
//!
//! The address the visitor opens is a recorder in front of the gateway: it forwards every
//! request to the gateway unchanged and keeps the `Set-Cookie` lines of the gateway's responses
//! since the page was last loaded, which the page shows beside the ones the portal sent
//! ([`RECEIVED_PATH`]). A page cannot read the `Set-Cookie` headers of its own response.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::{compile_registry, GatewayConfig, Limits};
use crate::gateway::Gateway;
use crate::proxy::body::{IdleBody, ProxyBody};

/// The cookies the sample portal sets on every page.
pub const ORIGIN_SET_COOKIES: [&str; 9] = [
    "sessionid=demo-session-1234; HttpOnly; Path=/; SameSite=Lax",
    "csrftoken=demo-csrf-5678; Path=/; SameSite=Lax",
    "django_language=en; Path=/",
    "_ga=GA1.1.123456789.1763900000; Path=/; Max-Age=63072000",
    "_gid=GA1.1.987654321.1763900000; Path=/; Max-Age=86400",
    "_ga_DEMO123=GS1.1.1763900000.1.0.1763900000.0.0.0; Path=/; Max-Age=63072000",
    "_pk_id.1.1fff=0123456789abcdef.1763900000.; Path=/; Max-Age=33696000",
    "_pk_ses.1.1fff=1; Path=/; Max-Age=1800",
    "tracker_id=third-party-42; Path=/; Max-Age=31536000",
];

/// The registry file of the demo portal (its upstream filled in at start), for `127.0.0.1`,
/// `localhost` and `extra_hosts`.
pub fn registry_toml(origin: SocketAddr, extra_hosts: &[&str]) -> String {
    let hosts: String = ["127.0.0.1", "localhost"]
        .iter()
        .chain(extra_hosts)
        .map(|h| format!("{h:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"hosts = [{hosts}]
upstream = "http://{origin}"
mode = "enforce"
unknown_cookies = "drop"

[[cookie]]
name = "sessionid"
category = "necessary"
provider = "Opendatasoft"
function = "Authentication (front and back office)"
purpose = "To remember the user from one page to another"

[[cookie]]
name = "django_language"
category = "necessary"
provider = "Opendatasoft"
function = "Language selection (front and back office)"
purpose = "To remember the visitor's language"

[[cookie]]
name = "csrftoken"
category = "necessary"
provider = "Opendatasoft"
function = "API (CSRF) (front et back office)"
purpose = "To retrieve data via API calls"

[[cookie]]
name = "cookies_preferences"
category = "necessary"
provider = "Opendatasoft"
function = "Choices related to your cookie preferences"
purpose = "To remember the visitor's cookie preferences"

[[cookie]]
name = "_ga"
category = "statistical"
consent = "ga"
provider = "Google"
purpose = "Google Analytics visitor id"

[[cookie]]
prefix = "_ga_"
category = "statistical"
consent = "ga"
provider = "Google"
purpose = "Google Analytics 4 session state"

[[cookie]]
name = "_gid"
category = "statistical"
consent = "ga"
provider = "Google"
purpose = "Google Analytics 24-hour visitor id"

[[cookie]]
prefix = "_pk_id."
category = "statistical"
consent = "matomo"
provider = "Matomo"
purpose = "Matomo visitor id"

[[cookie]]
prefix = "_pk_ses."
category = "statistical"
consent = "matomo"
provider = "Matomo"
purpose = "Matomo session"
"#
    )
}

/// Path of the sample portal's analytics script.
pub const ANALYTICS_JS_PATH: &str = "/demo/analytics.js";

/// The cookie the analytics script writes from JavaScript (as gtag.js writes `_ga_<container>`):
/// never set by the server, so it leaves the browser only through the gateway's purge.
pub const JS_COOKIE: &str = "_ga_JSDEMO1";

/// A small analytics script: it reads `cookies_preferences` as the portal's tag manager does and
/// writes Google Analytics and Matomo cookies from JavaScript when they are granted. When they are
/// not, it writes nothing and deletes nothing: removing what the browser still holds is the
/// gateway's purge.
///
/// Google Analytics' cookies are written as gtag.js writes them with its default
/// `cookie_domain: 'auto'`: on the highest domain of the page's host that the browser accepts
/// (found by writing a probe cookie from the top label down: the registrable domain, e.g.
/// `Domain=portal.test` for `www.portal.test`), host-only on an IP address or a single-label
/// host; and `_ga` is written again on every page, as gtag refreshes its expiry. Matomo's are
/// host-only, as matomo.js writes them by default.
const ANALYTICS_JS: &str = r#"// Sample analytics: writes cookies from JavaScript when cookies_preferences allows it.
(function () {
  "use strict";
  function read(name) {
    var m = document.cookie.match(new RegExp("(?:^|;\\s*)" + name.replace(/[.]/g, "\\.") + "=([^;]*)"));
    return m ? m[1] : null;
  }
  var prefs = {};
  try { prefs = JSON.parse(decodeURIComponent(read("cookies_preferences") || "{}")) || {}; } catch (e) { prefs = {}; }
  var now = Math.floor(Date.now() / 1000);
  function set(name, value, maxAge, domain) {
    document.cookie = name + "=" + value + "; Path=/; Max-Age=" + maxAge + "; SameSite=Lax" + (domain ? "; Domain=" + domain : "");
  }
  // gtag.js's cookie_domain 'auto': the first domain, from the top label down, that takes a cookie.
  function autoDomain() {
    var host = location.hostname;
    if (host.indexOf(".") < 0 || /^[0-9.]+$/.test(host) || host.indexOf(":") >= 0) return null;
    var labels = host.split(".");
    for (var i = labels.length - 1; i >= 0; i--) {
      var d = labels.slice(i).join(".");
      set("_demo_probe", "1", 10, d);
      if (read("_demo_probe") === "1") { set("_demo_probe", "", 0, d); return d; }
    }
    return null;
  }
  var wrote = [];
  if (prefs.ga === true) {
    var domain = autoDomain();
    set("_ga", read("_ga") || "GA1.1." + Math.floor(Math.random() * 1e9) + "." + now, 63072000, domain); wrote.push("_ga");
    set("JSCOOKIE", "GS1.1." + now + ".1.0." + now + ".0.0.0", 63072000, domain); wrote.push("JSCOOKIE");
  }
  if (prefs.matomo === true && read("_pk_id.1.1fff") === null) {
    set("_pk_id.1.1fff", Math.floor(Math.random() * 1e15).toString(16) + "." + now + ".", 33696000); wrote.push("_pk_id.1.1fff");
  }
  window.demoAnalytics = { ran: true, wrote: wrote };
})();
"#;

/// The page's banner and cookie panel. Writes `cookies_preferences` the way an Opendatasoft
/// portal does: `encodeURIComponent(JSON.stringify({"ga":…,"matomo":…,"timestamp":…}))`.
const PAGE_JS: &str = r##"(function () {
  "use strict";
  var NECESSARY = ["sessionid", "csrftoken", "django_language", "cookies_preferences"];
  var STATISTICAL = [/^_ga$/, /^_ga_/, /^_gid$/, /^_pk_id\./, /^_pk_ses\./];
  function category(name) {
    if (NECESSARY.indexOf(name) >= 0) return "necessary";
    for (var i = 0; i < STATISTICAL.length; i++) if (STATISTICAL[i].test(name)) return "statistical";
    return "unknown";
  }
  function cookies() {
    return document.cookie.split(";").map(function (c) { return c.trim(); }).filter(Boolean).map(function (c) {
      var i = c.indexOf("="); return { name: i < 0 ? "" : c.slice(0, i), value: i < 0 ? c : c.slice(i + 1) };
    });
  }
  function prefs() {
    var c = cookies().filter(function (c) { return c.name === "cookies_preferences"; })[0];
    if (!c) return null;
    try { return JSON.parse(decodeURIComponent(c.value)); } catch (e) { return null; }
  }
  function save(p) {
    p.timestamp = Date.now();
    document.cookie = "cookies_preferences=" + encodeURIComponent(JSON.stringify(p)) + "; Path=/; Max-Age=31536000; SameSite=Lax";
    location.reload();
  }
  function render() {
    var list = document.getElementById("browser-cookies");
    list.textContent = "";
    var all = cookies();
    all.sort(function (a, b) { return category(a.name).localeCompare(category(b.name)) || a.name.localeCompare(b.name); });
    all.forEach(function (c) {
      var li = document.createElement("li");
      li.className = "cookie " + category(c.name);
      li.setAttribute("data-name", c.name);
      var code = document.createElement("code"); code.textContent = c.name;
      var tag = document.createElement("span"); tag.className = "tag"; tag.textContent = category(c.name);
      li.appendChild(code); li.appendChild(document.createTextNode(" ")); li.appendChild(tag);
      list.appendChild(li);
    });
    if (!all.length) { var li = document.createElement("li"); li.textContent = "(none)"; list.appendChild(li); }
    var p = prefs();
    var state = document.getElementById("consent-state");
    state.textContent = p === null ? "No choice made yet: only necessary cookies are allowed."
      : "Google Analytics " + (p.ga === true ? "allowed" : "refused") + ", Matomo " + (p.matomo === true ? "allowed" : "refused") + ".";
    document.getElementById("consent-banner").hidden = p !== null;
    var a = window.demoAnalytics;
    document.getElementById("analytics-state").textContent = a && a.wrote.length ? "The analytics script wrote: " + a.wrote.join(", ") + "." : "The analytics script wrote nothing.";
  }
  document.getElementById("accept-all").addEventListener("click", function () { save({ ga: true, matomo: true }); });
  document.getElementById("necessary-only").addEventListener("click", function () { save({ ga: false, matomo: false }); });
  document.getElementById("save-choice").addEventListener("click", function () {
    save({ ga: document.getElementById("choose-ga").checked, matomo: document.getElementById("choose-matomo").checked });
  });
  // What the gateway sent, side by side with what the portal sent (RECEIVED_PATH, on the
  // demo's front address; elsewhere it is not there and the panel says so).
  function nameOf(line) { var i = line.indexOf("="); return (i < 0 ? "" : line.slice(0, i)).trim(); }
  function isDeletion(line) { return /;\s*max-age=(0|-\d+)\s*(;|$)/i.test(line) || /expires=thu, 01 jan 1970/i.test(line); }
  function showReceived(data) {
    var list = document.getElementById("received-set-cookie");
    list.textContent = "";
    var kept = {};
    data.responses.forEach(function (r) {
      var li = document.createElement("li"); li.className = "response";
      var h = document.createElement("strong"); h.textContent = r.request; li.appendChild(h);
      var ul = document.createElement("ul"); ul.className = "cookies";
      if (!r.set_cookie.length) { var none = document.createElement("li"); none.textContent = "(no Set-Cookie)"; ul.appendChild(none); }
      r.set_cookie.forEach(function (line) {
        var del = isDeletion(line);
        if (!del && r.request === "GET /") kept[nameOf(line)] = true;
        var item = document.createElement("li");
        item.className = "set " + (del ? "deletion" : "kept");
        item.setAttribute("data-name", nameOf(line));
        var code = document.createElement("code"); code.textContent = line; item.appendChild(code);
        if (del) { var tag = document.createElement("span"); tag.className = "tag"; tag.textContent = "deletion added by the gateway"; item.appendChild(document.createTextNode(" ")); item.appendChild(tag); }
        ul.appendChild(item);
      });
      li.appendChild(ul); list.appendChild(li);
    });
    Array.prototype.forEach.call(document.querySelectorAll("#portal-set-cookie li.set"), function (li) {
      var dropped = !kept[nameOf(li.textContent)];
      li.className = "set " + (dropped ? "dropped" : "kept");
      if (dropped) { var tag = document.createElement("span"); tag.className = "tag"; tag.textContent = "dropped by the gateway"; li.appendChild(document.createTextNode(" ")); li.appendChild(tag); }
    });
    document.getElementById("received-note").textContent = data.responses.length
      ? "The Set-Cookie lines of the gateway's responses since this page was loaded."
      : "Nothing recorded yet.";
    return data;
  }
  window.demoReceived = fetch("RECEIVED_PATH", { cache: "no-store" })
    .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
    .then(showReceived)
    .catch(function () {
      document.getElementById("received-note").textContent = "Open the address printed as \"open:\" by consent-gateway demo to see what the gateway sent.";
      return null;
    });
  document.getElementById("open-settings").addEventListener("click", function () {
    var p = prefs() || {};
    document.getElementById("choose-ga").checked = p.ga === true;
    document.getElementById("choose-matomo").checked = p.matomo === true;
    document.getElementById("consent-banner").hidden = false;
  });
  render();
})();
"##;

const PAGE_CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1a1a1a;background:#f6f7f9;line-height:1.45}\
header{background:#143d59;color:#fff;padding:.8rem 1.5rem;display:flex;justify-content:space-between;align-items:center}\
header h1{font-size:1.3rem;margin:0}header button{font:inherit}\
main{max-width:80rem;margin:0 auto;padding:1rem 1.5rem 2rem}\
.panels{display:grid;grid-template-columns:1fr 1fr;gap:1rem}\
section.panel{background:#fff;border:1px solid #d0d4da;border-radius:6px;padding:.6rem 1rem}\
section.panel h2{font-size:1.05rem;margin:.3rem 0 .6rem}\
ul.cookies{list-style:none;padding:0;margin:0}ul.cookies li{padding:.15rem 0}\
.tag{font-size:.75rem;border-radius:3px;padding:0 .35rem;color:#fff;background:#6b7280}\
.necessary .tag{background:#1f7a3a}.statistical .tag{background:#b45309}\
#state{background:#fff;border-left:4px solid #143d59;padding:.5rem 1rem;margin:1rem 0}\
#consent-banner{background:#fff;border-bottom:3px solid #143d59;padding:.8rem 1.5rem}\
#consent-banner[hidden]{display:none}\
.compare{display:grid;grid-template-columns:1fr 1fr;gap:1rem;margin-top:1rem}\
li.dropped code{text-decoration:line-through;color:#6b7280}.dropped .tag{background:#b91c1c}\
li.deletion .tag{background:#b91c1c}li.response{margin:.3rem 0}\
#consent-banner h2{margin:0 0 .4rem;font-size:1.1rem}\
#consent-banner button{font:inherit;padding:.45rem .9rem;margin:.3rem .4rem .3rem 0;border-radius:4px;border:1px solid #143d59;background:#fff;color:#143d59;cursor:pointer}\
#consent-banner button.primary{background:#143d59;color:#fff}\
fieldset{border:1px solid #d0d4da;margin:.4rem 0}code{font-family:ui-monospace,monospace;font-size:.9em}\
li.set code{word-break:break-all}li.set{padding:.1rem 0}#received{word-break:break-all}.compare>section{min-width:0}";

fn page(set: &str, received: &str) -> String {
    let js = PAGE_JS.replace("RECEIVED_PATH", RECEIVED_PATH);
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>consent-gateway demo portal</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{PAGE_CSS}</style>
<script src="{ANALYTICS_JS_PATH}"></script>
</head>
<body>
<header><h1>Sample data portal</h1><button type="button" id="open-settings">Cookie settings</button></header>
<div id="consent-banner" role="dialog" aria-labelledby="banner-title" hidden>
<h2 id="banner-title">Cookies on this portal</h2>
<p>We use necessary cookies to run the portal, and, with your consent, audience measurement (Google Analytics, Matomo).</p>
<button type="button" class="primary" id="accept-all">Accept all</button>
<button type="button" id="necessary-only">Necessary only</button>
<fieldset><legend>Choose per category</legend>
<label><input type="checkbox" id="choose-ga"> Statistics: Google Analytics</label>
<label><input type="checkbox" id="choose-matomo"> Statistics: Matomo</label>
<button type="button" id="save-choice">Save my choice</button>
</fieldset>
</div>
<main>
<p>This page is served by a sample portal behind consent-gateway. On every response the portal sets
the cookies below; the gateway removes those the visitor's <code>cookies_preferences</code> does not allow,
and expires the ones the browser still holds once consent is withdrawn.</p>
<div id="state"><strong>Your choice:</strong> <span id="consent-state"></span> <span id="analytics-state"></span></div>
<div class="compare">
<section class="panel" aria-labelledby="h-portal-set"><h2 id="h-portal-set">Set-Cookie the portal sent</h2>
<p><small>Every line of the portal's response to this page, before the gateway.</small></p>
<ul class="cookies" id="portal-set-cookie">{set}</ul></section>
<section class="panel" aria-labelledby="h-received-set"><h2 id="h-received-set">Set-Cookie the browser received from the gateway</h2>
<p><small id="received-note">Loading…</small></p>
<ul class="cookies" id="received-set-cookie"></ul></section>
</div>
<div class="panels compare">
<section class="panel" aria-labelledby="h-browser"><h2 id="h-browser">Cookies your browser holds now</h2>
<p><small>From <code>document.cookie</code>; <code>HttpOnly</code> cookies (<code>sessionid</code>) are not visible to scripts.</small></p>
<ul class="cookies" id="browser-cookies"></ul></section>
<section class="panel" aria-labelledby="h-received"><h2 id="h-received">Cookie header the portal received</h2>
<p><code id="received">{received}</code></p></section>
</div>
<h2>Try</h2>
<ul id="try">
<li>No consent cookie: only <code>sessionid</code>, <code>csrftoken</code> and <code>django_language</code> reach the browser.</li>
<li><code>cookies_preferences={{"ga":true}}</code> (percent-encoded): Google Analytics cookies too.</li>
<li><code>cookies_preferences={{"ga":true,"matomo":true}}</code>: Matomo's too. <code>tracker_id</code> is in no registry and is always dropped.</li>
<li>Accept all, then "Cookie settings" and "Necessary only": the right-hand list shows the deletions the gateway adds for the cookies the browser still holds.</li>
</ul>
</main>
<script>{js}</script>
</body></html>
"#
    )
}

/// The sample portal's answer to any request: the analytics script at [`ANALYTICS_JS_PATH`]
/// (no cookies), otherwise the page with every [`ORIGIN_SET_COOKIES`] header.
pub fn origin_response<B>(req: &Request<B>) -> Response<ProxyBody> {
    if req.uri().path() == RECEIVED_PATH {
        // Answered by the front recorder; the portal itself has no such page.
        let mut r = Response::new(ProxyBody::full("404 not found\n"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    if req.uri().path() == ANALYTICS_JS_PATH {
        let mut r = Response::new(ProxyBody::full(ANALYTICS_JS.replace("JSCOOKIE", JS_COOKIE)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
        return r;
    }
    let received: Vec<String> = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .map(|v| crate::policy::page::escape(&String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let set: String = ORIGIN_SET_COOKIES
        .iter()
        .map(|c| {
            format!(
                "<li class=\"set\"><code>{}</code></li>",
                crate::policy::page::escape(c)
            )
        })
        .collect();
    let received = if received.is_empty() {
        "(none)".to_owned()
    } else {
        received.join("; ")
    };
    let mut r = Response::new(ProxyBody::full(page(&set, &received)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Each reload must reach the portal, so that the gateway sees the browser's cookies.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in ORIGIN_SET_COOKIES {
        h.append(header::SET_COOKIE, HeaderValue::from_static(c));
    }
    r
}

/// Path, on the demo's front address, of the `Set-Cookie` lines the gateway sent since the page
/// was last loaded: `{"responses":[{"request":"GET /","set_cookie":["…"]}]}`.
pub const RECEIVED_PATH: &str = "/demo/received";

/// What the front recorder keeps: per response of the gateway since the last page load, the
/// request (`GET /`) and its `Set-Cookie` lines as sent.
#[derive(Debug, Default, serde::Serialize)]
struct Received {
    responses: Vec<ReceivedResponse>,
}

#[derive(Debug, serde::Serialize)]
struct ReceivedResponse {
    request: String,
    set_cookie: Vec<String>,
}

/// The demo's front address: forwards each request to the gateway unchanged (one connection per
/// request), records the `Set-Cookie` lines of the answer, and serves [`RECEIVED_PATH`].
async fn front(
    req: Request<Incoming>,
    gateway: SocketAddr,
    seen: Arc<Mutex<Received>>,
) -> Response<ProxyBody> {
    if req.uri().path() == RECEIVED_PATH {
        let body = match seen.lock() {
            Ok(s) => serde_json::to_vec(&*s).unwrap_or_default(),
            Err(_) => b"{\"responses\":[]}".to_vec(),
        };
        let mut r = Response::new(ProxyBody::full(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    }
    let page = req.method() == Method::GET && req.uri().path() == "/";
    let request = format!("{} {}", req.method(), req.uri().path());
    match forward(req, gateway).await {
        Ok(r) => {
            let set_cookie: Vec<String> = r
                .headers()
                .get_all(header::SET_COOKIE)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            if let Ok(mut s) = seen.lock() {
                if page {
                    s.responses.clear();
                }
                if page || !set_cookie.is_empty() {
                    s.responses.push(ReceivedResponse {
                        request,
                        set_cookie,
                    });
                }
            }
            r
        }
        Err(e) => {
            tracing::warn!("demo: forwarding to the gateway failed: {e}");
            let mut r = Response::new(ProxyBody::full("502 bad gateway\n"));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
    }
}

async fn forward(
    req: Request<Incoming>,
    gateway: SocketAddr,
) -> Result<Response<ProxyBody>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(gateway).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (parts, body) = sender.send_request(req).await?.into_parts();
    let body = ProxyBody::Upstream(
        IdleBody::new(
            crate::proxy::upstream::ResponseBody::Client(body),
            Duration::from_secs(60),
        ),
        None,
    );
    Ok(Response::from_parts(parts, body))
}

/// A running demo.
pub struct Demo {
    /// The address to open: the recorder in front of the gateway.
    pub open: SocketAddr,
    pub origin: SocketAddr,
    pub gateway: Gateway,
    _origin_stop: watch::Sender<bool>,
}

impl Demo {
    /// What to print for the user.
    pub fn instructions(&self) -> String {
        let gw = self.open;
        let gateway = self
            .gateway
            .http_addr
            .map(|a| a.to_string())
            .unwrap_or_default();
        let admin = self
            .gateway
            .admin_addr
            .map(|a| a.to_string())
            .unwrap_or_default();
        let ga = "%7B%22ga%22%3Atrue%7D";
        let all = "%7B%22ga%22%3Atrue%2C%22matomo%22%3Atrue%7D";
        format!(
            "consent-gateway demo\n\
             \n  open:    http://{gw}/            (the sample portal through the gateway: consent banner,\
             \n                                    analytics script, the cookies your browser holds, the\
             \n                                    Set-Cookie lines the portal sent and those the gateway sent)\
             \n  gateway: http://{gateway}/   (the gateway itself; open: forwards to it and records its answers)\
             \n  origin:  http://{origin}/   (the same portal directly, unfiltered)\
             \n  admin:   http://{admin}/metrics, /registry and /policy/127.0.0.1 (the published cookie policy)\n\
             \nIn the browser: \"Accept all\", and the analytics cookies appear after the reload; \"Cookie\
             \nsettings\" then \"Necessary only\", and the gateway expires them on the next response.\n\
             \nTry (compare the Set-Cookie lines):\n\
             \n  # 1. no consent: only the necessary cookies come back\
             \n  curl -si http://{gw}/ | grep -i '^set-cookie'\n\
             \n  # 2. consent to Google Analytics: _ga, _gid and _ga_DEMO123 are kept too\
             \n  curl -si -H 'Cookie: cookies_preferences={ga}' http://{gw}/ | grep -i '^set-cookie'\n\
             \n  # 3. consent to Google Analytics and Matomo: tracker_id (in no registry) is still dropped\
             \n  curl -si -H 'Cookie: cookies_preferences={all}' http://{gw}/ | grep -i '^set-cookie'\n\
             \nPress Ctrl-C to stop.",
            origin = self.origin,
        )
    }
}

/// Starts the sample portal, the gateway in front of it, and the recorder in front of the
/// gateway, on loopback. The recorder (the address to open) listens on `port`, or on any free
/// port when `port` is 0 or taken; the gateway and the portal on free ports.
pub async fn start(port: u16) -> Result<Demo, crate::gateway::StartError> {
    start_for(port, &[]).await
}

/// [`start`] with the registry also naming `extra_hosts` (host names mapped to loopback, such as
/// the browser test's `www.portal.test`, under which cookies can have a `Domain`).
pub async fn start_for(
    port: u16,
    extra_hosts: &[&str],
) -> Result<Demo, crate::gateway::StartError> {
    let origin_listener = TcpListener::bind("127.0.0.1:0").await?;
    let origin = origin_listener.local_addr()?;
    let (origin_stop, stop_rx) = watch::channel(false);
    let handler = |req: Request<Incoming>, _peer| std::future::ready(origin_response(&req));
    tokio::spawn(crate::edge::server::serve(
        origin_listener,
        handler,
        Limits::default(),
        None,
        stop_rx.clone(),
        None,
    ));

    let file = PathBuf::from("demo/hosts/demo.toml");
    let registry = compile_registry(&[(file, registry_toml(origin, extra_hosts))])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let config = GatewayConfig {
        file: PathBuf::from("demo/gateway.toml"),
        listen_http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        listen_https: None,
        tls: None,
        admin: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        registry_dir: PathBuf::from("demo/hosts"),
        watch: false,
        poll_interval: crate::config::DEFAULT_POLL_INTERVAL,
        limits: Limits::default(),
        trusted_proxies: Vec::new(),
        workers: 1,
        reuse_port: false,
        audit: None,
        inventory: crate::config::InventoryConfig::default(),
    };
    let gateway = Gateway::start(&config, registry).await?;
    let gateway_addr = gateway
        .http_addr
        .ok_or_else(|| std::io::Error::other("the demo gateway has no http listener"))?;

    let front_listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) if port != 0 => {
            tracing::warn!("port {port} unavailable ({e}); using a free port");
            TcpListener::bind("127.0.0.1:0").await?
        }
        Err(e) => return Err(e.into()),
    };
    let open = front_listener.local_addr()?;
    let seen = Arc::new(Mutex::new(Received::default()));
    let handler = move |req: Request<Incoming>, _peer| {
        let seen = Arc::clone(&seen);
        Box::pin(front(req, gateway_addr, seen))
    };
    tokio::spawn(crate::edge::server::serve(
        front_listener,
        handler,
        Limits::default(),
        None,
        stop_rx,
        None,
    ));
    Ok(Demo {
        open,
        origin,
        gateway,
        _origin_stop: origin_stop,
    })
}
