//! Applying the decision to a request's and a response's headers.
//!
//! Pure over `http::HeaderMap`. Response side ([`filter_set_cookies`]): kept `Set-Cookie` headers
//! are forwarded byte for byte and in order; dropped ones are removed; none is merged or split.
//! Request side ([`strip_request`]): refused browser cookies are removed from the `Cookie` header
//! sent upstream and remembered, so that [`purge`] can add a deletion for each to the response.

use std::borrow::Cow;

use http::header::{Entry, CONNECTION, COOKIE, SET_COOKIE, TRAILER, VARY};
use http::{HeaderMap, HeaderValue};

use crate::policy::consent::Consent;
use crate::policy::decide::{decide, decide_cookie, Decision, Reason, Verdict};
use crate::policy::jar::{would_hold, RequestUrl};
use crate::policy::registry::{CookieEntry, HostPolicy, Mode};
use crate::policy::request_cookies::all_pairs;
use crate::policy::set_cookie::SetCookie;

/// Counts of one filtered response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub kept: usize,
    pub dropped: usize,
    pub would_drop: usize,
    /// Consent `Set-Cookie` headers that did not change the consent because a browser would not
    /// hold them for the request URL (rule 4's decoys). Forwarded, and counted in `kept` too.
    pub consent_not_held: usize,
    /// Purge had more deletions to add than `max_purge_headers`: some refused cookies the
    /// browser sent are left for later responses.
    pub purge_capped: bool,
}

impl Summary {
    /// The response carried at least one `Set-Cookie` from the upstream.
    pub fn any(&self) -> bool {
        self.kept + self.dropped + self.would_drop > 0
    }
}

/// The consent in effect for a response (SPEC, response rule 4): when the upstream sets the
/// consent cookie in the response, in a `Set-Cookie` that a browser would store and send back
/// for this URL ([`crate::policy::jar::would_hold`]), the last such header's value replaces the
/// request's consent for the whole response; deleting it means no consent. A consent
/// `Set-Cookie` the browser would not hold here changes nothing. `Sec-GPC` carries over.
pub fn response_consent<'c>(
    policy: &HostPolicy,
    request: &'c Consent,
    headers: &HeaderMap,
    now: i64,
    url: &RequestUrl<'_>,
) -> Cow<'c, Consent> {
    let parsed: Vec<SetCookie<'_>> = headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| SetCookie::parse(v.as_bytes(), now))
        .collect();
    consent_in_effect(policy, request, &parsed, url).0
}

/// [`response_consent`] over `Set-Cookie` values already parsed (the rule itself, per format,
/// is [`crate::policy::consent::ConsentSpec::from_response`]). Also returns how many consent
/// `Set-Cookie` headers were set aside because a browser would not hold them for `url`.
fn consent_in_effect<'c>(
    policy: &HostPolicy,
    request: &'c Consent,
    parsed: &[SetCookie<'_>],
    url: &RequestUrl<'_>,
) -> (Cow<'c, Consent>, usize) {
    let mut ignored = 0;
    let held = parsed.iter().filter(|sc| {
        if !policy.consent.is_consent_cookie(sc.name) {
            return false;
        }
        let held = would_hold(sc, url).is_ok();
        ignored += usize::from(!held);
        held
    });
    let consent = match policy
        .consent
        .from_response(request, held.map(|sc| (sc.name, sc.value, sc.is_deletion)))
    {
        None => Cow::Borrowed(request),
        Some(c) => Cow::Owned(c),
    };
    (consent, ignored)
}

/// Room for this many parsed `Set-Cookie` headers is made at once (more grow the vector).
/// A `SetCookie` is 72 bytes.
const PARSED_CAPACITY: usize = 16;

/// Filters the `Set-Cookie` headers of an upstream response in place. `observe` sees every
/// header with its decision, in order (for metrics, logs and `explain`). `url` is the request's
/// (rule 4 judges the upstream's consent cookie by it).
pub fn filter_set_cookies<'p>(
    policy: &'p HostPolicy,
    request_consent: &Consent,
    headers: &mut HeaderMap,
    now: i64,
    url: &RequestUrl<'_>,
    observe: impl FnMut(&SetCookie<'_>, &Decision<'p>),
) -> Summary {
    let exchange = Exchange {
        url: url.clone(),
        now,
        max_purge_headers: usize::MAX,
    };
    filter_response(
        policy,
        request_consent,
        &RequestSide::default(),
        headers,
        &exchange,
        observe,
    )
    .0
}

/// The request a response answers, as the response side needs it.
#[derive(Debug, Clone)]
pub struct Exchange<'a> {
    /// The request's URL (rule 4 judges the upstream's consent cookie by it; purge deletes under
    /// its host's `Domain` variants).
    pub url: RequestUrl<'a>,
    /// Seconds since the Unix epoch ("in the past" for `Expires`).
    pub now: i64,
    /// `[limits] max_purge_headers`: the most deletions purge adds to one response.
    pub max_purge_headers: usize,
}

/// The whole response side, between the upstream response and the downstream one: the
/// `Set-Cookie` filter and purging, both under the consent in effect for the response. Each
/// `Set-Cookie` value is parsed once. Returns the filter's counts, the names of the cookies
/// that were (or would be) purged, and the consent the upstream's own consent cookie put in
/// effect (rule 4; `None`: the request's consent stood).
pub fn filter_response<'p, 's>(
    policy: &'p HostPolicy,
    request_consent: &Consent,
    side: &'s RequestSide<'_>,
    headers: &mut HeaderMap,
    exchange: &Exchange<'_>,
    mut observe: impl FnMut(&SetCookie<'_>, &Decision<'p>),
) -> (Summary, Vec<&'s [u8]>, Option<Consent>) {
    let (now, url) = (exchange.now, &exchange.url);
    let mut summary = Summary::default();
    if !headers.contains_key(SET_COOKIE) && side.candidates.is_empty() {
        return (summary, Vec::new(), None);
    }
    let (changed, verdicts, set_by_upstream) = {
        // Sized once: the values' iterator does not know its length, and growing the vector
        // 1, 4, 8 cost more than the room for a typical response's headers.
        let values = headers.get_all(SET_COOKIE);
        let mut parsed: Vec<SetCookie<'_>> = match values.iter().next() {
            Some(_) => Vec::with_capacity(PARSED_CAPACITY),
            None => Vec::new(),
        };
        parsed.extend(values.iter().map(|v| SetCookie::parse(v.as_bytes(), now)));
        // `Some` only when the upstream's own consent cookie changes the consent.
        let (effective, not_held) = consent_in_effect(policy, request_consent, &parsed, url);
        summary.consent_not_held = not_held;
        let changed = match effective {
            Cow::Borrowed(_) => None,
            Cow::Owned(c) => Some(c),
        };
        let effective = changed.as_ref().unwrap_or(request_consent);
        // The verdicts are only kept when something is dropped (the headers are then rebuilt)
        // or when a browser cookie may be purged (a header that reaches the browser spares it).
        let keep_verdicts = !side.candidates.is_empty();
        let mut verdicts: Vec<Verdict> = Vec::new();
        let mut keeping = false;
        for (i, sc) in parsed.iter().enumerate() {
            let d = decide(policy, effective, sc);
            observe(sc, &d);
            match d.verdict {
                Verdict::Keep => summary.kept += 1,
                Verdict::Drop => summary.dropped += 1,
                Verdict::WouldDrop => summary.would_drop += 1,
            }
            if !keeping && (d.verdict == Verdict::Drop || keep_verdicts) {
                // The first verdict worth keeping: the ones before it were not drops.
                keeping = true;
                verdicts.reserve_exact(parsed.len());
                verdicts.resize(i, Verdict::Keep);
            }
            if keeping {
                verdicts.push(d.verdict);
            }
        }
        // Which candidates the upstream sets itself in a header that reaches the browser. A
        // header the filter drops sets nothing, so it must not spare the old cookie its purge
        // (else an origin re-sending a refused tracker on every page would keep it alive).
        let set_by_upstream: Vec<bool> = side
            .candidates
            .iter()
            .map(|c| {
                parsed
                    .iter()
                    .zip(&verdicts)
                    .any(|(p, v)| *v != Verdict::Drop && p.name == c.name.as_slice())
            })
            .collect();
        (changed, verdicts, set_by_upstream)
    };
    if summary.dropped > 0 {
        // The kept values go back in their order, through one entry (one hash for all).
        if let http::header::Entry::Occupied(e) = headers.entry(SET_COOKIE) {
            let (_, values) = e.remove_entry_mult();
            let mut kept = values
                .zip(verdicts)
                .filter(|(_, verdict)| *verdict != Verdict::Drop)
                .map(|(value, _)| value)
                .collect::<Vec<HeaderValue>>()
                .into_iter();
            if let Some(first) = kept.next() {
                if let http::header::Entry::Vacant(e) = headers.entry(SET_COOKIE) {
                    let mut entry = e.insert_entry(first);
                    for value in kept {
                        entry.append(value);
                    }
                }
            }
        }
    }
    let effective = changed.as_ref().unwrap_or(request_consent);
    let (purged, capped) = purge(policy, effective, side, &set_by_upstream, headers, exchange);
    summary.purge_capped = capped;
    (summary, purged, changed)
}

/// A browser cookie that consent may refuse, remembered from the request for purging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'p> {
    pub name: Vec<u8>,
    /// Its registry entry; `None` for an unknown cookie.
    pub entry: Option<&'p CookieEntry>,
}

/// What the request side did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestSide<'p> {
    /// Cookies removed from the `Cookie` header (or that would be, in report-only mode).
    pub stripped: usize,
    /// Their names, in request order (for the audit log).
    pub stripped_names: Vec<Vec<u8>>,
    /// Browser cookies that consent may refuse, by name, once each: registry cookies that are not
    /// necessary, and unknown ones under `purge_unknown`. Judged again at response time.
    pub candidates: Vec<Candidate<'p>>,
}

/// Request side. With `strip_request_cookies` in enforce mode, removes the cookies consent does
/// not allow from the `Cookie` header(s), writing the kept pairs back as one header; the consent
/// cookie and necessary cookies always pass. Returns the count and the purge candidates.
pub fn strip_request<'p>(
    policy: &'p HostPolicy,
    consent: &Consent,
    headers: &mut HeaderMap,
) -> RequestSide<'p> {
    let mut side = RequestSide::default();
    if !headers.contains_key(COOKIE) {
        return side;
    }
    // Candidate names seen, so that thousands of cookies cost one hash each, not a scan each.
    let mut candidate_names: foldhash::HashSet<&[u8]> = foldhash::HashSet::default();
    // Where the refused pairs stand (in request order): the kept pairs are only rebuilt when
    // something was refused, and each pair is judged once.
    let mut refused: Vec<usize> = Vec::new();
    for (i, pair) in all_pairs(headers.get_all(COOKIE)).enumerate() {
        let d = decide_cookie(policy, consent, pair.name, false);
        if d.verdict != Verdict::Keep {
            side.stripped += 1;
            side.stripped_names.push(pair.name.to_vec());
            refused.push(i);
        }
        let candidate = match d.entry {
            _ if d.reason == Reason::ConsentCookie => false,
            Some(e) => !e.necessary,
            None => policy.purge_unknown && !pair.name.is_empty(),
        };
        if candidate && candidate_names.insert(pair.name) {
            side.candidates.push(Candidate {
                name: pair.name.to_vec(),
                entry: d.entry,
            });
        }
    }
    let refused_any = !refused.is_empty();
    let mut kept: Vec<u8> = Vec::new();
    if refused_any {
        let mut refused = refused.into_iter().peekable();
        for (i, pair) in all_pairs(headers.get_all(COOKIE)).enumerate() {
            if refused.next_if_eq(&i).is_some() {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            if !pair.name.is_empty() {
                kept.extend_from_slice(pair.name);
                kept.push(b'=');
            }
            kept.extend_from_slice(pair.value);
        }
    }
    let enforce = policy.strip_request_cookies && policy.mode == Mode::Enforce;
    if enforce && refused_any {
        if kept.is_empty() {
            headers.remove(COOKIE);
        } else if let Ok(v) = HeaderValue::from_bytes(&kept) {
            headers.insert(COOKIE, v);
        }
    } else if headers.get_all(COOKIE).iter().nth(1).is_some() {
        // Several Cookie headers (HTTP/2 style) go upstream as one, as RFC 9113 §8.2.3 asks.
        let joined: Vec<&[u8]> = headers
            .get_all(COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            headers.insert(COOKIE, v);
        }
    }
    if !policy.strip_request_cookies {
        side.stripped = 0;
        side.stripped_names.clear();
    }
    side
}

/// The `Expires` of a purge deletion: long past by any clock.
const EPOCH: &str = "Thu, 01 Jan 1970 00:00:00 GMT";

/// Response side of purging: for each candidate the consent in effect does not grant, and that
/// the upstream does not set itself in a header the filter keeps (`set_by_upstream`, by
/// candidate), appends its deletions (see [`deletions`]), in the order the browser sent the
/// names, as long as they fit in `max_purge_headers`. The first name whose deletions do not fit
/// ends it: that name and the ones after it are purged on later responses (the browser sends
/// them again). A name whose deletions alone exceed the limit gets the first ones (host-only,
/// then the most specific domains) when it comes first. Adds nothing unless `purge` is on in
/// enforce mode. Returns the names purged (or that would be, in report-only mode) and whether
/// the limit left any out.
fn purge<'s>(
    policy: &HostPolicy,
    consent: &Consent,
    side: &'s RequestSide<'_>,
    set_by_upstream: &[bool],
    headers: &mut HeaderMap,
    exchange: &Exchange<'_>,
) -> (Vec<&'s [u8]>, bool) {
    let mut purged = Vec::new();
    if !policy.purge {
        return (purged, false);
    }
    let domains = crate::policy::jar::purge_domains(&exchange.url.host);
    let mut budget = exchange.max_purge_headers;
    let mut capped = false;
    for (c, set_here) in side.candidates.iter().zip(set_by_upstream) {
        if *set_here || decide_cookie(policy, consent, &c.name, false).verdict == Verdict::Keep {
            continue;
        }
        let mut values = deletions(&c.name, c.entry, &domains);
        if values.len() > budget {
            capped = true;
            if !purged.is_empty() || budget == 0 {
                break;
            }
            values.truncate(budget);
        }
        budget -= values.len();
        purged.push(c.name.as_slice());
        if policy.mode != Mode::Enforce {
            continue;
        }
        for value in values {
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                headers.append(SET_COOKIE, v);
            }
        }
        if capped {
            break;
        }
    }
    (purged, capped)
}

/// The deletion headers for one cookie name the browser sent to a host whose `Domain` variants
/// are `host_domains` ([`crate::policy::jar::purge_domains`]): `name=; Max-Age=0; Expires=<past>;
/// Path=<path>`, host-only, then once per domain from the host up to its registrable domain,
/// then once per entry `domains` value not already covered (compared without a leading dot, in
/// lower case). The request's `Cookie` header does not say under which `Domain` the browser
/// holds the cookie, and a deletion only applies to the cookie of the same domain, so every
/// variant a site may have used gets one. A `__Host-` name (any case) gets exactly one deletion,
/// `Path=/; Secure`, no `Domain`; a `__Secure-` name gets `Secure` on each (RFC 6265bis §4.1.3).
pub fn deletions(name: &[u8], entry: Option<&CookieEntry>, host_domains: &[&str]) -> Vec<Vec<u8>> {
    let base = |path: &str| {
        let mut v = name.to_vec();
        v.extend_from_slice(b"=; Max-Age=0; Expires=");
        v.extend_from_slice(EPOCH.as_bytes());
        v.extend_from_slice(b"; Path=");
        v.extend_from_slice(path.as_bytes());
        v
    };
    if crate::policy::jar::has_prefix(name, crate::policy::jar::HOST_PREFIX) {
        let mut v = base("/");
        v.extend_from_slice(b"; Secure");
        return vec![v];
    }
    let secure = crate::policy::jar::has_prefix(name, crate::policy::jar::SECURE_PREFIX);
    let path = entry.map_or("/", |e| e.path.as_str());
    let mut domains: Vec<Cow<'_, str>> = host_domains.iter().map(|d| Cow::Borrowed(*d)).collect();
    for d in entry.map_or(&[][..], |e| &e.domains[..]) {
        let d = d.strip_prefix('.').unwrap_or(d);
        let d = if d.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(d.to_ascii_lowercase())
        } else {
            Cow::Borrowed(d)
        };
        if !d.is_empty() && !domains.contains(&d) {
            domains.push(d);
        }
    }
    std::iter::once(None)
        .chain(domains.iter().map(Some))
        .map(|domain| {
            let mut v = base(path);
            if let Some(d) = domain {
                v.extend_from_slice(b"; Domain=");
                v.extend_from_slice(d.as_bytes());
            }
            if secure {
                v.extend_from_slice(b"; Secure");
            }
            v
        })
        .collect()
}

/// Removes every `Set-Cookie` field (any case: header names are lower-cased when read) from an
/// upstream's trailer section or 1xx head and returns them. SPEC, Trailers: such a cookie is
/// never forwarded, whatever the consent, since no decision was made on it at the response head
/// (and an HTTP/1.1 client would not get it anyway: hyper never writes `Set-Cookie` in trailers).
pub fn take_set_cookies(fields: &mut HeaderMap) -> Vec<HeaderValue> {
    match fields.entry(SET_COOKIE) {
        Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
        Entry::Vacant(_) => Vec::new(),
    }
}

/// The `Trailer` field to forward in a downstream response head: the names the upstream's
/// `Trailer` field(s) announce, without `Set-Cookie` (never forwarded in trailers); `None` when
/// none is left, or when the upstream's `Connection` names `Trailer` (hop-by-hop then).
///
/// hyper writes trailers to an HTTP/1.1 client only for the names the response head's `Trailer`
/// field announces (and only when the request said `TE: trailers`), so the field must survive
/// the removal of hop-by-hop headers for the other trailer fields to pass.
pub fn trailer_announcement(headers: &HeaderMap) -> Option<HeaderValue> {
    let is_hop = headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailer"))
    });
    if is_hop {
        return None;
    }
    let mut out: Vec<u8> = Vec::new();
    for name in headers
        .get_all(TRAILER)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case(b"set-cookie"))
    {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(name);
    }
    if out.is_empty() {
        return None;
    }
    // Pieces of valid header values joined by ", ": a valid value too.
    HeaderValue::from_bytes(&out).ok()
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
    use crate::policy::consent::{ConsentSpec, Format, Granted, Source};
    use crate::policy::registry::Mode;

    const NOW: i64 = 1_779_000_000;

    /// The URL the unit tests' responses answer: `http://portal.test/`.
    fn test_url() -> RequestUrl<'static> {
        RequestUrl::new("portal.test", "/", false)
    }

    /// The test host (`tests/fixtures/t.example.toml`) in `mode`.
    fn policy(mode: Mode) -> HostPolicy {
        let mut p = policy_from("");
        p.mode = mode;
        p
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
        let s = filter_set_cookies(&p, &consent(&[]), &mut h, NOW, &test_url(), |_, _| {});
        assert_eq!(set_cookies(&h), vec!["sessionid=abc;  HttpOnly ;Secure"]);
        assert_eq!(
            s,
            Summary {
                kept: 1,
                dropped: 3,
                would_drop: 0,
                consent_not_held: 0,
                purge_capped: false
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
        filter_set_cookies(&p, &consent(&["ga"]), &mut h, NOW, &test_url(), |_, _| {});
        assert_eq!(set_cookies(&h), all.to_vec());
    }

    #[test]
    fn report_only_changes_nothing_but_counts() {
        let p = policy(Mode::ReportOnly);
        let all = ["_ga=1", "sessionid=abc", "x=1"];
        let mut h = headers(&all);
        let s = filter_set_cookies(&p, &consent(&[]), &mut h, NOW, &test_url(), |_, _| {});
        assert_eq!(set_cookies(&h), all.to_vec());
        assert_eq!(
            s,
            Summary {
                kept: 1,
                dropped: 0,
                would_drop: 2,
                consent_not_held: 0,
                purge_capped: false
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
        filter_set_cookies(&p, &consent(&[]), &mut h, NOW, &test_url(), |_, _| {});
        assert_eq!(set_cookies(&h).len(), 3);
    }

    #[test]
    fn a_consent_cookie_the_browser_would_not_hold_grants_nothing() {
        let p = policy(Mode::Enforce);
        // Each decoy is forwarded (the consent cookie is always necessary) but leaves the
        // request's consent (nothing granted) in force, so `_ga` is dropped.
        let url = RequestUrl::new("www.portal.test", "/explore/", false);
        for decoy in [
            "cookies_preferences=[\"ga\"]; Domain=other.test; Path=/",
            "cookies_preferences=[\"ga\"]; Domain=test; Path=/",
            "cookies_preferences=[\"ga\"]; Path=/admin",
            "cookies_preferences=[\"ga\"]; Path=/; Secure",
            "cookies_preferences=[\"ga\"]; Path=/; Domain=www.portal.test.evil",
        ] {
            let mut h = headers(&["_ga=1", decoy]);
            let s = filter_set_cookies(&p, &consent(&[]), &mut h, NOW, &url, |_, _| {});
            assert_eq!(set_cookies(&h), vec![decoy], "{decoy}");
            assert_eq!(s.consent_not_held, 1, "{decoy}");
        }
        // A decoy after a real one does not undo it either: the last *held* header counts.
        let mut h = headers(&[
            "cookies_preferences=[\"ga\"]; Path=/",
            "cookies_preferences=[]; Path=/elsewhere",
            "_ga=1",
        ]);
        filter_set_cookies(&p, &consent(&[]), &mut h, NOW, &url, |_, _| {});
        assert_eq!(set_cookies(&h).len(), 3);
        // Held: host-only, the registrable domain, a parent path, the default path.
        for held in [
            "cookies_preferences=[\"ga\"]; Path=/",
            "cookies_preferences=[\"ga\"]; Domain=portal.test; Path=/",
            "cookies_preferences=[\"ga\"]; Domain=.WWW.portal.test; Path=/explore",
            "cookies_preferences=[\"ga\"]",
        ] {
            let mut h = headers(&["_ga=1", held]);
            let s = filter_set_cookies(&p, &consent(&[]), &mut h, NOW, &url, |_, _| {});
            assert_eq!(set_cookies(&h).len(), 2, "{held}");
            assert_eq!(s.consent_not_held, 0, "{held}");
        }
        // Secure is held over https, and a __Host- consent cookie needs its prefix rules there.
        let https = RequestUrl::new("www.portal.test", "/", true);
        let mut h = headers(&["_ga=1", "cookies_preferences=[\"ga\"]; Path=/; Secure"]);
        filter_set_cookies(&p, &consent(&[]), &mut h, NOW, &https, |_, _| {});
        assert_eq!(set_cookies(&h).len(), 2);
    }

    #[test]
    fn a_deletion_of_the_consent_cookie_elsewhere_withdraws_nothing() {
        let p = policy(Mode::Enforce);
        let mut h = headers(&["_ga=1", "cookies_preferences=; Max-Age=0; Path=/other"]);
        filter_set_cookies(&p, &consent(&["ga"]), &mut h, NOW, &test_url(), |_, _| {});
        assert_eq!(set_cookies(&h).len(), 2);
    }

    #[test]
    fn complianz_category_cookies_follow_the_same_rule() {
        let mut p = policy(Mode::Enforce);
        p.consent = ConsentSpec::new("cmplz_", Format::Complianz);
        let url = RequestUrl::new("www.portal.test", "/", false);
        let c = Consent {
            granted: Granted::none(),
            gpc: false,
            source: Source::Cookie,
        };
        let mut h = headers(&["cmplz_ga=allow; Domain=elsewhere.test", "_ga=1"]);
        filter_set_cookies(&p, &c, &mut h, NOW, &url, |_, _| {});
        assert_eq!(
            set_cookies(&h),
            vec!["cmplz_ga=allow; Domain=elsewhere.test"]
        );
        let mut h = headers(&["cmplz_ga=allow; Domain=portal.test", "_ga=1"]);
        filter_set_cookies(&p, &c, &mut h, NOW, &url, |_, _| {});
        assert_eq!(set_cookies(&h).len(), 2);
    }

    #[test]
    fn consent_deleted_in_response_means_no_consent() {
        let p = policy(Mode::Enforce);
        let mut h = headers(&["_ga=1", "cookies_preferences=; Max-Age=0", "sessionid=2"]);
        filter_set_cookies(&p, &consent(&["ga"]), &mut h, NOW, &test_url(), |_, _| {});
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
        filter_set_cookies(&p, &consent(&["ga"]), &mut h, NOW, &test_url(), |_, _| {});
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
        filter_set_cookies(&p, &consent(&[]), &mut h, NOW, &test_url(), |sc, d| {
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
        assert!(!filter_set_cookies(&p, &consent(&[]), &mut h, NOW, &test_url(), |_, _| {}).any());
        assert_eq!(h, before);
    }

    /// The test host with `extra` head keys (`purge = false`, ...).
    fn policy_from(extra: &str) -> HostPolicy {
        crate::config::fixture::host_policy(extra)
    }

    fn request(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    #[test]
    fn refused_browser_cookies_are_stripped_and_the_rest_kept_in_order() {
        let p = policy_from("");
        let mut h =
            request("sessionid=s1; _ga=GA1; cookies_preferences=[\"ga\"]; _pk_id.1.ab=x; zz=1");
        let side = strip_request(&p, &consent(&["ga"]), &mut h);
        assert_eq!(
            h.get(COOKIE).unwrap(),
            "sessionid=s1; _ga=GA1; cookies_preferences=[\"ga\"]"
        );
        assert_eq!(side.stripped, 2);
        let names: Vec<&[u8]> = side.candidates.iter().map(|c| c.name.as_slice()).collect();
        assert_eq!(
            names,
            vec![&b"_ga"[..], b"_pk_id.1.ab"],
            "unknown zz is no candidate without purge_unknown"
        );
    }

    #[test]
    fn nothing_refused_leaves_the_cookie_header_untouched() {
        let p = policy_from("");
        let mut h = request("sessionid=s1;_ga=GA1");
        strip_request(&p, &consent(&["ga"]), &mut h);
        assert_eq!(h.get(COOKIE).unwrap(), "sessionid=s1;_ga=GA1");
    }

    #[test]
    fn only_refused_cookies_removes_the_header() {
        let p = policy_from("");
        let mut h = request("_ga=1; zz=2");
        strip_request(&p, &consent(&[]), &mut h);
        assert!(!h.contains_key(COOKIE));
    }

    #[test]
    fn strip_off_or_report_only_leaves_the_header() {
        for extra in ["strip_request_cookies = false", "mode = \"report-only\""] {
            let p = policy_from(extra);
            let mut h = request("_ga=1; zz=2");
            let side = strip_request(&p, &consent(&[]), &mut h);
            assert_eq!(h.get(COOKIE).unwrap(), "_ga=1; zz=2", "{extra}");
            assert_eq!(
                side.stripped,
                if extra.starts_with("mode") { 2 } else { 0 },
                "{extra}"
            );
        }
    }

    #[test]
    fn several_cookie_headers_go_upstream_as_one() {
        let p = policy_from("");
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("sessionid=1"));
        h.append(COOKIE, HeaderValue::from_static("_ga=2"));
        strip_request(&p, &consent(&["ga"]), &mut h);
        assert_eq!(
            h.get_all(COOKIE).iter().collect::<Vec<_>>(),
            vec!["sessionid=1; _ga=2"]
        );
    }

    fn purged_with(
        extra: &str,
        cookie: &str,
        keys: &[&str],
        upstream_sets: &[&str],
    ) -> Vec<String> {
        let p = policy_from(extra);
        let c = consent(keys);
        let mut req = request(cookie);
        let side = strip_request(&p, &c, &mut req);
        let mut resp = headers(upstream_sets);
        let exchange = Exchange {
            url: RequestUrl::new("www.t.example", "/", false),
            now: NOW,
            max_purge_headers: 64,
        };
        filter_response(&p, &c, &side, &mut resp, &exchange, |_, _| {});
        set_cookies(&resp).into_iter().map(str::to_owned).collect()
    }

    /// Purges with `max_purge_headers` = `max` for host `host`; the deletions and the summary.
    fn purged_capped(host: &str, cookie: &str, max: usize) -> (Vec<String>, Summary) {
        let p = policy_from("purge_unknown = true");
        let c = consent(&[]);
        let mut req = request(cookie);
        let side = strip_request(&p, &c, &mut req);
        let mut resp = HeaderMap::new();
        let exchange = Exchange {
            url: RequestUrl::new(host, "/", false),
            now: NOW,
            max_purge_headers: max,
        };
        let (summary, names, _) = filter_response(&p, &c, &side, &mut resp, &exchange, |_, _| {});
        let got: Vec<String> = set_cookies(&resp).into_iter().map(str::to_owned).collect();
        assert!(got.len() <= max);
        assert_eq!(
            names.len(),
            got.iter()
                .map(|v| v.split('=').next().unwrap())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        );
        (got, summary)
    }

    #[test]
    fn purge_covers_every_domain_from_the_host_to_its_registrable_domain() {
        let (got, s) = purged_capped("a.b.t.example:8080", "zz=1", 64);
        assert_eq!(
            got,
            vec![
                "zz=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/",
                "zz=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Domain=a.b.t.example",
                "zz=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Domain=b.t.example",
                "zz=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Domain=t.example",
            ]
        );
        assert!(!s.purge_capped);
        // An IP address or a single label: host-only only.
        for host in ["127.0.0.1", "[::1]:8080", "localhost"] {
            let (got, _) = purged_capped(host, "zz=1; __Secure-ads=2", 64);
            assert_eq!(
                got,
                vec![
                    "zz=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/",
                    "__Secure-ads=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Secure",
                ],
                "{host}"
            );
        }
        // __Secure- gets Secure on each variant; __Host- (any case) exactly one deletion.
        let (got, _) = purged_capped("www.t.example", "__Secure-ads=2; __host-x=1", 64);
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[..3]
            .iter()
            .all(|v| v.starts_with("__Secure-ads=;") && v.ends_with("; Secure")));
        assert_eq!(
            got[3],
            "__host-x=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Secure"
        );
    }

    #[test]
    fn purge_stops_at_max_purge_headers_in_browser_order() {
        // Each unknown name costs 3 deletions under www.t.example.
        let cookie: Vec<String> = (0..30).map(|i| format!("c{i}=1")).collect();
        let (got, s) = purged_capped("www.t.example", &cookie.join("; "), 64);
        assert!(s.purge_capped);
        assert_eq!(got.len(), 63, "21 whole names, never a name cut short");
        let names: Vec<&str> = got.iter().map(|v| v.split('=').next().unwrap()).collect();
        assert_eq!(names.first(), Some(&"c0"));
        assert_eq!(names.last(), Some(&"c20"));
        // Exactly at the limit: not capped.
        let (got, s) = purged_capped("www.t.example", &cookie[..3].join("; "), 9);
        assert_eq!((got.len(), s.purge_capped), (9, false));
        // One name with more variants than the limit: the most specific ones go out.
        let (got, s) = purged_capped("a.b.t.example", "zz=1", 2);
        assert!(s.purge_capped);
        assert_eq!(got.len(), 2);
        assert!(got[1].ends_with("Domain=a.b.t.example"));
    }

    #[test]
    fn entry_domains_add_only_what_the_host_does_not_cover() {
        let p = policy_from("");
        let entry = p.lookup(b"_ga");
        let got = deletions(b"_ga", entry, &["www.t.example", "t.example"]);
        let domains: Vec<String> = got
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .map(|v| {
                v.split("Domain=")
                    .nth(1)
                    .unwrap_or("(host-only)")
                    .to_owned()
            })
            .collect();
        // `.t.example` is covered by t.example; `example` adds one.
        assert_eq!(
            domains,
            ["(host-only)", "www.t.example", "t.example", "example"]
        );
    }

    #[test]
    fn purge_expires_each_variant_once() {
        let got = purged_with("", "_ga=1; _ga=2; sessionid=3", &[], &[]);
        assert_eq!(
            got,
            vec![
                "_ga=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/",
                "_ga=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Domain=www.t.example",
                "_ga=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Domain=t.example",
                "_ga=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Domain=example",
            ]
        );
    }

    #[test]
    fn purge_uses_the_entry_path_and_the_sent_name() {
        let got = purged_with("", "_pk_id.1.ab=x", &[], &[]);
        assert_eq!(
            got,
            vec![
                "_pk_id.1.ab=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/app",
                "_pk_id.1.ab=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/app; Domain=www.t.example",
                "_pk_id.1.ab=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/app; Domain=t.example",
            ]
        );
    }

    #[test]
    fn prefixed_names_get_valid_deletions() {
        let got = purged_with("", "__Host-track=1; __Secure-ads=2", &[], &[]);
        assert_eq!(
            got,
            vec![
                // __Host-: Secure, Path=/, never a Domain (its domains are ignored).
                "__Host-track=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Secure",
                "__Secure-ads=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Secure",
                "__Secure-ads=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Domain=www.t.example; Secure",
                "__Secure-ads=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Domain=t.example; Secure",
            ]
        );
        for v in &got {
            let sc = SetCookie::parse(v.as_bytes(), NOW);
            assert!(sc.is_deletion, "{v}");
        }
    }

    #[test]
    fn purge_skips_granted_necessary_and_upstream_set_cookies() {
        assert!(purged_with(
            "",
            "_ga=1; sessionid=2; cookies_preferences=x",
            &["ga"],
            &[]
        )
        .is_empty());
        // The upstream sets _ga itself and the browser keeps that header: no purge added.
        assert_eq!(
            purged_with("", "_ga=1", &["ga"], &["_ga=new"]),
            vec!["_ga=new"]
        );
        assert_eq!(
            purged_with("mode = \"report-only\"", "_ga=1", &[], &["_ga=new"]),
            vec!["_ga=new"]
        );
    }

    #[test]
    fn a_refused_cookie_the_upstream_sets_again_is_dropped_and_still_purged() {
        // The origin re-sends the refused tracker; the filter drops it, and the browser's old
        // copy is expired all the same (a dropped header sets nothing).
        let got = purged_with("", "_ga=1", &[], &["_ga=new", "sessionid=2"]);
        assert_eq!(got[0], "sessionid=2");
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(got[1..].iter().all(|v| v.starts_with("_ga=; Max-Age=0")));
    }

    #[test]
    fn purge_judges_by_the_consent_in_effect_for_the_response() {
        let got = purged_with("", "_ga=1", &[], &["cookies_preferences=[\"ga\"]"]);
        assert_eq!(got, vec!["cookies_preferences=[\"ga\"]"]);
        let got = purged_with("", "_ga=1", &["ga"], &["cookies_preferences=; Max-Age=0"]);
        assert_eq!(
            got.len(),
            5,
            "consent withdrawn in the response: _ga purged (4 variants) {got:?}"
        );
    }

    #[test]
    fn purge_unknown_extends_to_unknown_cookies() {
        assert!(purged_with("", "zz=1", &[], &[]).is_empty());
        let got = purged_with("purge_unknown = true", "zz=1", &[], &[]);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[0],
            "zz=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/"
        );
    }

    #[test]
    fn purge_off_or_report_only_adds_nothing() {
        assert!(purged_with("purge = false", "_ga=1", &[], &[]).is_empty());
        assert!(purged_with("mode = \"report-only\"", "_ga=1", &[], &[]).is_empty());
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

    #[test]
    fn trailer_set_cookies_are_all_taken() {
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("_ga=1"));
        h.append("x-checksum", HeaderValue::from_static("abc"));
        h.append(SET_COOKIE, HeaderValue::from_static("ads=2; Path=/"));
        let taken = take_set_cookies(&mut h);
        assert_eq!(taken, vec!["_ga=1", "ads=2; Path=/"]);
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("x-checksum").unwrap(), "abc");
        assert!(take_set_cookies(&mut h).is_empty());
    }

    #[test]
    fn the_trailer_announcement_loses_set_cookie() {
        type Fields<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Fields<'_>, Option<&str>); 6] = [
            (&[("trailer", "X-Checksum, Set-Cookie")], Some("X-Checksum")),
            (
                &[("trailer", "SET-COOKIE,x-a"), ("trailer", "x-b")],
                Some("x-a, x-b"),
            ),
            (&[("trailer", "Set-Cookie")], None),
            (&[("trailer", " , ")], None),
            (&[], None),
            // Named by Connection: hop-by-hop, not forwarded.
            (
                &[("connection", "keep-alive, Trailer"), ("trailer", "x-a")],
                None,
            ),
        ];
        for (fields, want) in cases {
            let mut h = HeaderMap::new();
            for (n, v) in fields {
                h.append(*n, HeaderValue::from_str(v).unwrap());
            }
            let got = trailer_announcement(&h);
            assert_eq!(
                got.as_ref().map(|v| v.to_str().unwrap()),
                want,
                "{fields:?}"
            );
        }
    }
}
