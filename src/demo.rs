//! `consent-gateway demo`: a sample portal on loopback with the gateway in front of it.
//!
//! The sample portal sends what an Opendatasoft portal with analytics sends: the four necessary
//! cookies, Google Analytics and Matomo cookies, and one cookie no registry names. Its page shows
//! which cookies it set and which ones it received, so the gateway's work is visible.

use std::net::SocketAddr;
use std::path::PathBuf;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::ProxyBody;
use crate::config::{compile_registry, GatewayConfig, Limits};
use crate::gateway::Gateway;

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

/// The registry file of the demo portal (its upstream filled in at start).
pub fn registry_toml(origin: SocketAddr) -> String {
    format!(
        r#"hosts = ["127.0.0.1", "localhost"]
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

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The sample portal's answer to any request.
pub fn origin_response<B>(req: &Request<B>) -> Response<ProxyBody> {
    let received: Vec<String> = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .map(|v| html_escape(&String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let set: String = ORIGIN_SET_COOKIES
        .iter()
        .map(|c| format!("<li><code>{}</code></li>", html_escape(c)))
        .collect();
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>consent-gateway demo portal</title></head>
<body>
<h1>Sample data portal</h1>
<p>This page is served by a sample portal behind consent-gateway. On every response the portal sets
the cookies below; the gateway removes those the visitor's <code>cookies_preferences</code> does not allow.</p>
<h2>Cookies the portal set on this response</h2><ul>{set}</ul>
<h2>Cookie header the portal received</h2><p><code>{received}</code></p>
<h2>Try</h2>
<ul>
<li>No consent cookie: only <code>sessionid</code>, <code>csrftoken</code> and <code>django_language</code> reach the browser.</li>
<li><code>cookies_preferences={{"ga":true}}</code> (percent-encoded): Google Analytics cookies too.</li>
<li><code>cookies_preferences={{"ga":true,"matomo":true}}</code>: Matomo's too. <code>tracker_id</code> is in no registry and is always dropped.</li>
</ul>
</body></html>
"#,
        received = if received.is_empty() {
            "(none)".to_owned()
        } else {
            received.join("; ")
        }
    );
    let mut r = Response::new(ProxyBody::full(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    for c in ORIGIN_SET_COOKIES {
        h.append(header::SET_COOKIE, HeaderValue::from_static(c));
    }
    r
}

/// A running demo.
pub struct Demo {
    pub origin: SocketAddr,
    pub gateway: Gateway,
    _origin_stop: watch::Sender<bool>,
}

impl Demo {
    /// What to print for the user.
    pub fn instructions(&self) -> String {
        let gw = self
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
             \n  open:    http://{gw}/            (the sample portal through the gateway)\
             \n  origin:  http://{origin}/   (the same portal directly, unfiltered)\
             \n  admin:   http://{admin}/metrics and /registry\n\
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

/// Starts the sample portal and the gateway on loopback. The gateway listens on `port`, or on
/// any free port when `port` is 0 or taken.
pub async fn start(port: u16) -> Result<Demo, crate::gateway::StartError> {
    let origin_listener = TcpListener::bind("127.0.0.1:0").await?;
    let origin = origin_listener.local_addr()?;
    let (origin_stop, stop_rx) = watch::channel(false);
    let handler = |req: Request<hyper::body::Incoming>, _peer| async move { origin_response(&req) };
    tokio::spawn(crate::server::serve(
        origin_listener,
        handler,
        Limits::default(),
        None,
        stop_rx,
        None,
    ));

    let file = PathBuf::from("demo/hosts/demo.toml");
    let registry = compile_registry(&[(file, registry_toml(origin))])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let mut config = GatewayConfig {
        file: PathBuf::from("demo/gateway.toml"),
        listen_http: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        listen_https: None,
        tls: None,
        admin: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        registry_dir: PathBuf::from("demo/hosts"),
        watch: false,
        poll_interval: crate::config::DEFAULT_POLL_INTERVAL,
        limits: Limits::default(),
        trusted_proxies: Vec::new(),
    };
    let gateway = match Gateway::start(&config, registry.clone()).await {
        Ok(g) => g,
        Err(e) if port != 0 => {
            tracing::warn!("port {port} unavailable ({e}); using a free port");
            config.listen_http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            Gateway::start(&config, registry).await?
        }
        Err(e) => return Err(e),
    };
    Ok(Demo {
        origin,
        gateway,
        _origin_stop: origin_stop,
    })
}
