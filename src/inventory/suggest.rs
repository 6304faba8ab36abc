//! `consent-gateway suggest`: reads `/inventory` from one or more running gateways (replicas),
//! merges what they saw, and prints registry `[[cookie]]` entries for the unregistered names,
//! each marked for review.
//!
//! I/O at the edge ([`fetch_all`], plain `http://` with hyper); merging ([`merge`]) and writing
//! the entries ([`render`]) are pure.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::knowledge::Match;
use super::{CookieView, HostInventory, InventorySummary};

/// Time one admin request may take (connect, answer and body).
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest admin answer read.
const MAX_BODY: usize = 64 << 20;
/// The category printed when the knowledge base has no suggestion: granted by no consent key
/// until the reviewer picks one, so pasting it unreviewed changes nothing (the cookie stays
/// refused, as an unknown cookie under `unknown_cookies = "drop"`).
pub const UNCLASSIFIED: &str = "unclassified";

/// Why `suggest` failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SuggestError {
    /// The command line is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// An admin URL did not answer as a gateway (exit 1).
    #[error("{0}")]
    Fetch(String),
}

/// An admin URL, checked: `http://host:port` (a path, if any, is ignored).
fn admin_base(url: &str) -> Result<(String, Uri), SuggestError> {
    let bad = |why: &str| SuggestError::Usage(format!("--admin {url:?}: {why}"));
    let uri: Uri = url.trim().parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("only http:// admin URLs are supported")),
        _ => return Err(bad("expected http://HOST:PORT")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    if authority.as_str().contains('@') {
        return Err(bad("user info is not supported"));
    }
    let base = format!("http://{authority}");
    Ok((base, uri))
}

/// `GET base + path` with `Accept: application/json`; the answer parsed as `T`.
async fn get_json<T: DeserializeOwned>(base: &str, path: &str) -> Result<T, SuggestError> {
    let url = format!("{base}{path}");
    let fetch_err = |why: String| SuggestError::Fetch(format!("{url}: {why}"));
    let uri: Uri = url
        .parse()
        .map_err(|_| fetch_err("not a valid URL".into()))?;
    let authority = uri
        .authority()
        .ok_or_else(|| fetch_err("no host".into()))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let work = async {
        let stream = tokio::net::TcpStream::connect((authority.host(), port))
            .await
            .map_err(|e| fetch_err(format!("cannot connect: {e}")))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fetch_err(format!("no HTTP/1.1 answer: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(uri.clone())
            .header(header::HOST, authority.as_str())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "consent-gateway suggest")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fetch_err(format!("cannot build the request: {e}")))?;
        let resp = send.send_request(req).await.map_err(|e| {
            fetch_err(format!(
                "no HTTP answer (is it a consent-gateway admin endpoint?): {e}"
            ))
        })?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| fetch_err(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok::<_, SuggestError>((status, body))
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| fetch_err(format!("no answer within {}s", TIMEOUT.as_secs())))??;
    if status != StatusCode::OK {
        let first = String::from_utf8_lossy(&body[..body.len().min(200)])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        return Err(fetch_err(format!(
            "answered {status} ({first:?}): not the admin endpoint of a consent-gateway with an inventory"
        )));
    }
    serde_json::from_slice(&body).map_err(|e| {
        fetch_err(format!(
            "the answer is not a consent-gateway inventory (JSON: {e}); is this the admin endpoint?"
        ))
    })
}

/// One replica's inventories: `/inventory`, then `/inventory/{host}` for each host (or only
/// `host` when given).
async fn fetch_one(url: &str, host: Option<&str>) -> Result<Vec<HostInventory>, SuggestError> {
    let (base, _) = admin_base(url)?;
    let summary: InventorySummary = get_json(&base, "/inventory").await?;
    let hosts: Vec<String> = match host {
        Some(h) => vec![h.to_owned()],
        None => summary
            .hosts
            .iter()
            .filter(|h| h.loaded && h.unregistered > 0)
            .map(|h| h.host.clone())
            .collect(),
    };
    let mut out = Vec::new();
    for h in hosts {
        if h.is_empty() || h.contains(['/', '?', '#', ' ']) {
            return Err(SuggestError::Usage(format!(
                "--host {h:?}: not a host name"
            )));
        }
        out.push(get_json(&base, &format!("/inventory/{h}")).await?);
    }
    Ok(out)
}

/// Every replica's inventories, in the order of `urls`.
pub async fn fetch_all(
    urls: &[String],
    host: Option<&str>,
) -> Result<Vec<Vec<HostInventory>>, SuggestError> {
    if urls.is_empty() {
        return Err(SuggestError::Usage("--admin: give at least one URL".into()));
    }
    for u in urls {
        admin_base(u)?;
    }
    let mut all = Vec::new();
    for u in urls {
        all.push(fetch_one(u, host).await?);
    }
    Ok(all)
}

/// The replicas' inventories merged per host (by the registry file's first host name): for each
/// name, counts added, first seen the earliest, last seen the latest, attributes united.
/// A name is registered if any replica's registry lists it.
pub fn merge(replicas: Vec<Vec<HostInventory>>) -> Vec<HostInventory> {
    let mut hosts: BTreeMap<String, HostInventory> = BTreeMap::new();
    for inv in replicas.into_iter().flatten() {
        match hosts.get_mut(&inv.name) {
            None => {
                hosts.insert(inv.name.clone(), inv);
            }
            Some(h) => {
                h.overflow += inv.overflow;
                for c in inv.cookies {
                    match h.cookies.iter_mut().find(|m| m.name == c.name) {
                        Some(m) => merge_cookie(m, c),
                        None => h.cookies.push(c),
                    }
                }
            }
        }
    }
    let mut out: Vec<HostInventory> = hosts.into_values().collect();
    for h in &mut out {
        h.cookies.sort_by(|a, b| a.name.cmp(&b.name));
        h.names = h.cookies.len();
        h.registered = h.cookies.iter().filter(|c| c.registered).count();
        h.unregistered = h.names - h.registered;
    }
    out
}

fn merge_cookie(m: &mut CookieView, c: CookieView) {
    m.registered |= c.registered;
    if m.entry.is_none() {
        m.entry = c.entry;
    }
    if m.category.is_none() {
        m.category = c.category;
    }
    for s in c.seen_in {
        if !m.seen_in.contains(&s) {
            m.seen_in.push(s);
        }
    }
    m.seen_in.sort();
    m.seen_in.reverse(); // "set-cookie" before "request"
    m.set_count += c.set_count;
    m.request_count += c.request_count;
    // RFC 3339 in UTC with whole seconds, as every gateway writes it: compares as text.
    if c.first_seen < m.first_seen {
        m.first_seen = c.first_seen;
    }
    if c.last_seen > m.last_seen {
        m.last_seen = c.last_seen;
    }
    m.before_consent += c.before_consent;
    m.verdicts.kept += c.verdicts.kept;
    m.verdicts.dropped += c.verdicts.dropped;
    m.verdicts.would_drop += c.verdicts.would_drop;
    let a = &mut m.attributes;
    for (mine, theirs) in [
        (&mut a.domains, c.attributes.domains),
        (&mut a.paths, c.attributes.paths),
        (&mut a.samesite, c.attributes.samesite),
    ] {
        for v in theirs {
            if !mine.contains(&v) {
                mine.push(v);
            }
        }
    }
    a.secure |= c.attributes.secure;
    a.httponly |= c.attributes.httponly;
    a.lifetime = match (a.lifetime, c.attributes.lifetime) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    if m.suggestion.is_none() {
        m.suggestion = c.suggestion;
    }
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text for a comment line: one line, printable.
fn comment_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// What was seen of a group of names (one `[[cookie]]` entry), for its `# review:` line.
fn seen_line(cookies: &[&CookieView]) -> String {
    let set: u64 = cookies.iter().map(|c| c.set_count).sum();
    let req: u64 = cookies.iter().map(|c| c.request_count).sum();
    let early: u64 = cookies.iter().map(|c| c.before_consent).sum();
    let mut parts = Vec::new();
    if set > 0 {
        parts.push(format!(
            "set by the origin {}",
            plural(set, "time", "times")
        ));
    }
    if req > 0 {
        let script = if set == 0 {
            " (never set by the origin: a script's cookie?)"
        } else {
            ""
        };
        parts.push(format!(
            "sent by browsers {}{script}",
            plural(req, "time", "times")
        ));
    }
    let mut line = parts.join(", ");
    if set > 0 {
        line.push_str(&format!(
            "; {} before consent",
            if early == 0 {
                "never sent".to_owned()
            } else {
                format!("sent {}", plural(early, "time", "times"))
            }
        ));
    }
    let first = cookies
        .iter()
        .map(|c| c.first_seen.as_str())
        .min()
        .unwrap_or_default();
    let last = cookies
        .iter()
        .map(|c| c.last_seen.as_str())
        .max()
        .unwrap_or_default();
    line.push_str(&format!("; {first} to {last}"));
    line
}

fn lifetime_seen(cookies: &[&CookieView]) -> String {
    match cookies.iter().filter_map(|c| c.attributes.lifetime).max() {
        None if cookies.iter().all(|c| c.set_count == 0) => "not set through the gateway".into(),
        None => "session".into(),
        Some(s) if s >= 86_400 => format!("{} days", s / 86_400),
        Some(s) => format!("{s} seconds"),
    }
}

/// `[[cookie]]` entries for the unregistered names of merged inventories; `sources` names the
/// admin URLs read (for the header comment).
pub fn render(hosts: &[HostInventory], sources: &[String]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# consent-gateway suggest: read from {}.\n\
         # Categories come from the Open Cookie Database (Apache-2.0), or are \"{UNCLASSIFIED}\" where it\n\
         # does not know the name: review every entry (and its consent keys) before relying on it.\n",
        sources.join(", ")
    ));
    if hosts.iter().all(|h| h.unregistered == 0) {
        out.push_str("# No unregistered cookie name seen.\n");
    }
    for h in hosts {
        let unregistered: Vec<&CookieView> = h.cookies.iter().filter(|c| !c.registered).collect();
        out.push_str(&format!(
            "\n# ---- host {} (registry file {}): {} unregistered of {} names seen{}\n",
            comment_text(&h.name),
            comment_text(&h.file),
            unregistered.len(),
            h.names,
            if h.overflow > 0 {
                format!(
                    "; the inventory was full, {} sightings of further names not recorded",
                    h.overflow
                )
            } else {
                String::new()
            }
        ));
        // Names a knowledge-base prefix matches become one prefix entry; the others one each.
        let mut prefixes: BTreeMap<&str, Vec<&CookieView>> = BTreeMap::new();
        let mut names: Vec<&CookieView> = Vec::new();
        for c in &unregistered {
            match &c.suggestion {
                Some(s) if s.matched == Match::Prefix => {
                    prefixes.entry(s.entry.as_str()).or_default().push(c)
                }
                _ => names.push(c),
            }
        }
        for c in names {
            if !crate::policy::request_cookies::is_cookie_name(&c.name) {
                out.push_str(&format!(
                    "\n# skipped {:?}: not a valid cookie name for the registry ({})\n",
                    comment_text(&c.name),
                    seen_line(&[c])
                ));
                continue;
            }
            entry(&mut out, "name", &c.name, &[c]);
        }
        for (prefix, group) in prefixes {
            entry(&mut out, "prefix", prefix, &group);
        }
    }
    out
}

fn entry(out: &mut String, key: &str, value: &str, cookies: &[&CookieView]) {
    let suggestion = cookies.iter().find_map(|c| c.suggestion.as_ref());
    out.push_str("\n[[cookie]]\n");
    let names = if key == "prefix" {
        let list: Vec<String> = cookies.iter().take(5).map(|c| c.name.clone()).collect();
        let more = cookies.len().saturating_sub(5);
        format!(
            "names {}{}: ",
            comment_text(&list.join(", ")),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    } else {
        String::new()
    };
    out.push_str(&format!("# review: {names}{}\n", seen_line(cookies)));
    match suggestion {
        Some(s) => out.push_str(&format!(
            "# review: Open Cookie Database ({} match on {:?}): {}, {}; check it is what this site uses\n",
            s.matched.as_str(),
            comment_text(&s.entry),
            comment_text(&s.platform),
            comment_text(&s.source_category),
        )),
        None => out.push_str(
            "# review: not in the knowledge base: find out what sets it and choose its category\n",
        ),
    }
    out.push_str(&format!("{key} = {}\n", quoted(value)));
    out.push_str(&format!(
        "category = {}\n",
        quoted(suggestion.map_or(UNCLASSIFIED, |s| s.category.as_str()))
    ));
    if let Some(s) = suggestion.filter(|s| !s.platform.is_empty()) {
        out.push_str(&format!("provider = {}\n", quoted(&s.platform)));
    }
    let retention = match suggestion.map(|s| comment_text(&s.retention)) {
        Some(r) if !r.is_empty() => format!("{r} (Open Cookie Database)"),
        _ => "unknown".to_owned(),
    };
    out.push_str(&format!(
        "# retention: {retention}; longest lifetime seen: {}\n",
        lifetime_seen(cookies)
    ));
}

/// The whole command: fetch, merge, render.
pub async fn run(urls: &[String], host: Option<&str>) -> Result<String, SuggestError> {
    let replicas = fetch_all(urls, host).await?;
    Ok(render(&merge(replicas), urls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_are_checked() {
        assert!(admin_base("http://127.0.0.1:9090").is_ok());
        assert!(admin_base("http://127.0.0.1:9090/").is_ok());
        for bad in [
            "https://127.0.0.1:9090",
            "127.0.0.1:9090",
            "nope nope",
            "ftp://x",
        ] {
            assert!(
                matches!(admin_base(bad), Err(SuggestError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(quoted("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
        let v: toml::Value = toml::from_str(&format!("x = {}", quoted("é \"q\" \\ \t"))).unwrap();
        assert_eq!(v["x"].as_str(), Some("é \"q\" \\ \t"));
    }
}
