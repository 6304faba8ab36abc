//! Applying the decision to a response's headers.
//!
//! Pure over `http::HeaderMap`. Kept `Set-Cookie` headers are forwarded byte for byte and in
//! order; dropped ones are removed; nothing is merged, split or added here.

use std::borrow::Cow;

use http::header::{SET_COOKIE, VARY};
use http::{HeaderMap, HeaderValue};

use crate::consent::{Consent, Source};
use crate::policy::{decide, Decision, Verdict};
use crate::registry::HostPolicy;
use crate::set_cookie::SetCookie;

/// Counts of one filtered response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub kept: usize,
    pub dropped: usize,
    pub would_drop: usize,
}

impl Summary {
    /// The response carried at least one `Set-Cookie` from the upstream.
    pub fn any(&self) -> bool {
        self.kept + self.dropped + self.would_drop > 0
    }
}

/// The consent in effect for a response (SPEC, response rule 4): when the upstream sets the
/// consent cookie anywhere in the response, the last such header's value replaces the request's
/// consent for the whole response; deleting it means no consent. `Sec-GPC` carries over.
pub fn response_consent<'c>(
    policy: &HostPolicy,
    request: &'c Consent,
    headers: &HeaderMap,
    now: i64,
) -> Cow<'c, Consent> {
    let last = headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| SetCookie::parse(v.as_bytes(), now))
        .filter(|sc| policy.consent.is_consent_cookie(sc.name))
        .last();
    match last {
        None => Cow::Borrowed(request),
        Some(sc) if sc.is_deletion => Cow::Owned(Consent {
            source: Source::Response,
            ..Consent::none()
        }),
        Some(sc) => {
            let mut c = policy
                .consent
                .from_value(Some(sc.value), request.gpc, Source::Response);
            c.gpc = request.gpc;
            Cow::Owned(c)
        }
    }
}

/// Filters the `Set-Cookie` headers of an upstream response in place. `observe` sees every
/// header with its decision, in order (for metrics, logs and `explain`).
pub fn filter_set_cookies(
    policy: &HostPolicy,
    request_consent: &Consent,
    headers: &mut HeaderMap,
    now: i64,
    mut observe: impl FnMut(&SetCookie<'_>, &Decision<'_>),
) -> Summary {
    let mut summary = Summary::default();
    if !headers.contains_key(SET_COOKIE) {
        return summary;
    }
    let consent = response_consent(policy, request_consent, headers, now);
    let mut verdicts: Vec<Verdict> = Vec::new();
    for value in headers.get_all(SET_COOKIE) {
        let sc = SetCookie::parse(value.as_bytes(), now);
        let d = decide(policy, &consent, &sc);
        observe(&sc, &d);
        match d.verdict {
            Verdict::Keep => summary.kept += 1,
            Verdict::Drop => summary.dropped += 1,
            Verdict::WouldDrop => summary.would_drop += 1,
        }
        verdicts.push(d.verdict);
    }
    if summary.dropped > 0 {
        let values: Vec<HeaderValue> = match headers.entry(SET_COOKIE) {
            http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
            http::header::Entry::Vacant(_) => Vec::new(),
        };
        for (value, verdict) in values.into_iter().zip(verdicts) {
            if verdict != Verdict::Drop {
                headers.append(SET_COOKIE, value);
            }
        }
    }
    summary
}

/// Adds `Cookie` to `Vary`, merged with what is there: left alone when `Vary` already names
/// `Cookie` or is `*`; otherwise the existing values and `Cookie` become one header.
pub fn add_vary_cookie(headers: &mut HeaderMap) {
    let mut existing: Vec<u8> = Vec::new();
    for v in headers.get_all(VARY) {
        let bytes = v.as_bytes();
        let names_it = bytes
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(b"cookie"));
        if names_it {
            return;
        }
        let bytes = bytes.trim_ascii();
        if !bytes.is_empty() {
            if !existing.is_empty() {
                existing.extend_from_slice(b", ");
            }
            existing.extend_from_slice(bytes);
        }
    }
    if existing.is_empty() {
        headers.insert(VARY, HeaderValue::from_static("Cookie"));
        return;
    }
    existing.extend_from_slice(b", Cookie");
    // The bytes come from valid header values joined by ", ", so they are a valid value too.
    if let Ok(v) = HeaderValue::from_bytes(&existing) {
        headers.insert(VARY, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::{ConsentSpec, Format, Granted};
    use crate::registry::{CookieEntry, CookieMatcher, Mode, UnknownCookies, Upstream, NECESSARY};

    const NOW: i64 = 1_779_000_000;

    pub(crate) fn policy(mode: Mode) -> HostPolicy {
        let e = |name: &str, cat: &str| CookieEntry {
            matcher: CookieMatcher::Name(name.into()),
            category: cat.into(),
            necessary: cat == NECESSARY,
            refused_by_gpc: false,
            consent: vec![if cat == "statistical" {
                "ga".into()
            } else {
                cat.into()
            }],
            provider: None,
            function: None,
            purpose: None,
            domains: vec![],
            path: "/".into(),
        };
        HostPolicy::new(
            "t.toml".into(),
            vec!["t.example".parse().unwrap()],
            Upstream {
                scheme: http::uri::Scheme::HTTP,
                authority: "127.0.0.1:1".parse().unwrap(),
            },
            None,
            None,
            mode,
            UnknownCookies::Drop,
            true,
            true,
            false,
            ConsentSpec::new("cookies_preferences", Format::Json),
            vec![],
            vec![
                e("sessionid", "necessary"),
                e("_ga", "statistical"),
                e("_gid", "statistical"),
            ],
        )
    }

    fn headers(set_cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/html"));
        for s in set_cookies {
            h.append(SET_COOKIE, HeaderValue::from_str(s).unwrap());
        }
        h
    }

    fn set_cookies(h: &HeaderMap) -> Vec<&str> {
        h.get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    fn consent(keys: &[&str]) -> Consent {
        Consent {
            granted: Granted::from_keys(keys.iter().copied()),
            gpc: false,
            source: Source::Cookie,
        }
    }

    #[test]
    fn refused_cookies_are_removed_and_kept_ones_stay_in_order() {
        let p = policy(Mode::Enforce);
        let mut h = headers(&[
            "_ga=1; Path=/",
            "sessionid=abc;  HttpOnly ;Secure",
            "x=1",
            "_gid=2",
        ]);
        let s = filter_set_cookies(&p, &consent(&[]), &mut h, NOW, |_, _| {});
        assert_eq!(set_cookies(&h), vec!["sessionid=abc;  HttpOnly ;Secure"]);
        assert_eq!(
            s,
            Summary {
                kept: 1,
                dropped: 3,
                would_drop: 0
            }
        );
        assert_eq!(h.get("content-type").unwrap(), "text/html");
    }

    #[test]
    fn granted_response_is_untouched() {
        let p = policy(Mode::Enforce);
        let all = [
            "_ga=1; Path=/",
            "sessionid=abc",
            "_gid=2; Domain=.t.example",
        ];
        let mut h = headers(&all);
        filter_set_cookies(&p, &consent(&["ga"]), &mut h, NOW, |_, _| {});
        assert_eq!(set_cookies(&h), all.to_vec());
    }

    #[test]
    fn report_only_changes_nothing_but_counts() {
        let p = policy(Mode::ReportOnly);
        let all = ["_ga=1", "sessionid=abc", "x=1"];
        let mut h = headers(&all);
        let s = filter_set_cookies(&p, &consent(&[]), &mut h, NOW, |_, _| {});
        assert_eq!(set_cookies(&h), all.to_vec());
        assert_eq!(
            s,
            Summary {
                kept: 1,
                dropped: 0,
                would_drop: 2
            }
        );
    }

    #[test]
    fn consent_set_in_response_applies_to_whole_response() {
        let p = policy(Mode::Enforce);
        // The _ga header comes before the consent cookie: the rule is per response, not per order.
        let mut h = headers(&[
            "_ga=1",
            "cookies_preferences={\"ga\":true}; Path=/",
            "_gid=2",
        ]);
        filter_set_cookies(&p, &consent(&[]), &mut h, NOW, |_, _| {});
        assert_eq!(set_cookies(&h).len(), 3);
    }

    #[test]
    fn consent_deleted_in_response_means_no_consent() {
        let p = policy(Mode::Enforce);
        let mut h = headers(&["_ga=1", "cookies_preferences=; Max-Age=0", "sessionid=2"]);
        filter_set_cookies(&p, &consent(&["ga"]), &mut h, NOW, |_, _| {});
        assert_eq!(
            set_cookies(&h),
            vec!["cookies_preferences=; Max-Age=0", "sessionid=2"]
        );
    }

    #[test]
    fn last_consent_cookie_in_response_wins() {
        let p = policy(Mode::Enforce);
        let mut h = headers(&[
            "cookies_preferences=[\"ga\"]",
            "cookies_preferences=[]",
            "_ga=1",
        ]);
        filter_set_cookies(&p, &consent(&["ga"]), &mut h, NOW, |_, _| {});
        assert_eq!(
            set_cookies(&h),
            vec!["cookies_preferences=[\"ga\"]", "cookies_preferences=[]"]
        );
    }

    #[test]
    fn observe_sees_every_header_in_order() {
        let p = policy(Mode::Enforce);
        let mut h = headers(&["_ga=1", "sessionid=2", "zz=3"]);
        let mut seen = Vec::new();
        filter_set_cookies(&p, &consent(&[]), &mut h, NOW, |sc, d| {
            seen.push((
                String::from_utf8_lossy(sc.name).into_owned(),
                d.verdict,
                d.category().to_owned(),
            ));
        });
        assert_eq!(
            seen,
            vec![
                ("_ga".into(), Verdict::Drop, "statistical".into()),
                ("sessionid".into(), Verdict::Keep, "necessary".into()),
                ("zz".into(), Verdict::Drop, "unknown".into()),
            ]
        );
    }

    #[test]
    fn no_set_cookie_no_work() {
        let p = policy(Mode::Enforce);
        let mut h = headers(&[]);
        let before = h.clone();
        assert!(!filter_set_cookies(&p, &consent(&[]), &mut h, NOW, |_, _| {}).any());
        assert_eq!(h, before);
    }

    #[test]
    fn vary_cookie_is_merged() {
        let cases: [(&[&str], &str); 6] = [
            (&[], "Cookie"),
            (&["Accept-Encoding"], "Accept-Encoding, Cookie"),
            (
                &["Accept-Encoding", "Origin"],
                "Accept-Encoding, Origin, Cookie",
            ),
            (&["accept-encoding, cookie"], "accept-encoding, cookie"),
            (&["*"], "*"),
            (&["Origin,COOKIE"], "Origin,COOKIE"),
        ];
        for (existing, want) in cases {
            let mut h = HeaderMap::new();
            for v in existing {
                h.append(VARY, HeaderValue::from_str(v).unwrap());
            }
            add_vary_cookie(&mut h);
            let got: Vec<_> = h
                .get_all(VARY)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            assert_eq!(got, vec![want.to_owned()], "{existing:?}");
        }
    }
}
