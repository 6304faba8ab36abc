//! `consent-gateway explain`: the proxy's filter run on headers given on the command line.
//!
//! The request's consent is read by [`crate::policy::consent::from_request_headers`] and the response filtered by
//! [`crate::policy::filter::filter_set_cookies`], the two functions the proxy calls. With `--purge`,
//! [`purge`] runs the request side and the whole response side ([`crate::policy::filter::strip_request`],
//! [`crate::policy::filter::filter_response`]) as the proxy does, to show the deletions added.

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use crate::policy::consent::{from_request_headers, Consent};
use crate::policy::filter::{filter_set_cookies, response_consent};
use crate::policy::jar::RequestUrl;
use crate::policy::registry::HostPolicy;

/// One explained `Set-Cookie`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub verdict: &'static str,
    pub name: String,
    pub category: String,
    pub reason: &'static str,
    pub detail: String,
}

/// Explains how `policy` treats `set_cookies` for a request to `url` with `cookie` and `gpc`.
pub fn explain(
    policy: &HostPolicy,
    cookie: Option<&str>,
    gpc: bool,
    url: &RequestUrl<'_>,
    set_cookies: &[String],
    now: i64,
) -> Result<(Consent, Vec<Line>), String> {
    let (req, mut resp) = exchange_headers(cookie, gpc, set_cookies)?;
    let consent = from_request_headers(&policy.consent, &req);
    let effective = response_consent(policy, &consent, &resp, now, url).into_owned();
    let mut lines = Vec::new();
    filter_set_cookies(policy, &consent, &mut resp, now, url, |sc, d| {
        let name = String::from_utf8_lossy(sc.name).into_owned();
        let keys = d.entry.map(|e| e.consent.join(", ")).unwrap_or_default();
        let detail = match d.reason {
            crate::policy::decide::Reason::ConsentCookie => {
                "the consent cookie is always necessary".to_owned()
            }
            crate::policy::decide::Reason::Necessary => {
                "category necessary needs no consent".to_owned()
            }
            crate::policy::decide::Reason::Granted => {
                format!("consent key granted (any of: {keys})")
            }
            crate::policy::decide::Reason::Deletion => {
                "a deletion is always kept, so withdrawal works".to_owned()
            }
            crate::policy::decide::Reason::NotGranted => {
                format!("no consent key granted (needs any of: {keys})")
            }
            crate::policy::decide::Reason::Gpc => {
                format!("category {} is refused under Sec-GPC: 1", d.category())
            }
            crate::policy::decide::Reason::Unknown => format!(
                "not in the registry; unknown_cookies = {}",
                match policy.unknown_cookies {
                    crate::policy::registry::UnknownCookies::Drop => "drop",
                    crate::policy::registry::UnknownCookies::Keep => "keep",
                }
            ),
        };
        lines.push(Line {
            verdict: d.verdict.as_str(),
            name,
            category: d.category().to_owned(),
            reason: d.reason.as_str(),
            detail,
        });
    });
    Ok((effective, lines))
}

/// One purge deletion a request would get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The cookie name it deletes.
    pub name: String,
    /// The whole `Set-Cookie` value.
    pub header: String,
}

/// What purge does for a request to `url` with `cookie` and `gpc`, the upstream answering with
/// `set_cookies`: the deletions added, in order, and whether `max_purge_headers` left some
/// refused cookies for later responses. Report-only hosts add nothing (as in the proxy).
pub fn purge(
    policy: &HostPolicy,
    cookie: Option<&str>,
    gpc: bool,
    exchange: &crate::policy::filter::Exchange<'_>,
    set_cookies: &[String],
) -> Result<(Vec<Deletion>, bool), String> {
    let (mut req, mut resp) = exchange_headers(cookie, gpc, set_cookies)?;
    let consent = from_request_headers(&policy.consent, &req);
    let side = crate::policy::filter::strip_request(policy, &consent, &mut req);
    let mut kept = 0;
    let (summary, _, _) = crate::policy::filter::filter_response(
        policy,
        &consent,
        &side,
        &mut resp,
        exchange,
        |_, d| {
            if d.verdict != crate::policy::decide::Verdict::Drop {
                kept += 1;
            }
        },
    );
    let deletions = resp
        .get_all(SET_COOKIE)
        .iter()
        .skip(kept)
        .map(|v| {
            let header = String::from_utf8_lossy(v.as_bytes()).into_owned();
            let name = header.split('=').next().unwrap_or_default().to_owned();
            Deletion { name, header }
        })
        .collect();
    Ok((deletions, summary.purge_capped))
}

/// The request headers (`--cookie`, `--gpc`) and upstream response headers (`--set-cookie`)
/// that `explain` judges, as the proxy would receive them.
fn exchange_headers(
    cookie: Option<&str>,
    gpc: bool,
    set_cookies: &[String],
) -> Result<(HeaderMap, HeaderMap), String> {
    let mut req = HeaderMap::new();
    if let Some(c) = cookie {
        let v = HeaderValue::from_str(c)
            .map_err(|_| format!("--cookie {c:?}: not a valid header value"))?;
        req.insert(COOKIE, v);
    }
    if gpc {
        req.insert("sec-gpc", HeaderValue::from_static("1"));
    }
    let mut resp = HeaderMap::new();
    for s in set_cookies {
        let v = HeaderValue::from_str(s)
            .map_err(|_| format!("--set-cookie {s:?}: not a valid header value"))?;
        resp.append(SET_COOKIE, v);
    }
    Ok((req, resp))
}
