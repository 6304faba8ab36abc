//! The keep/drop decision for one `Set-Cookie` header: a pure function of the host's policy, the
//! consent in effect and what the header says.

use std::fmt;

use crate::policy::consent::Consent;
use crate::policy::registry::{CookieEntry, HostPolicy, Mode, UnknownCookies};
use crate::policy::set_cookie::SetCookie;

/// What happens to the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded byte for byte.
    Keep,
    /// Removed from the response.
    Drop,
    /// Would be removed, but the host is in `report-only` mode: forwarded, logged and counted.
    WouldDrop,
}

impl Verdict {
    /// The label used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Keep => "keep",
            Verdict::Drop => "drop",
            Verdict::WouldDrop => "would-drop",
        }
    }

    /// The `verdict` label of `consent_gateway_set_cookie_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Verdict::Keep => "kept",
            Verdict::Drop => "dropped",
            Verdict::WouldDrop => "would_drop",
        }
    }
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The host's consent cookie: always necessary.
    ConsentCookie,
    /// Category `necessary`.
    Necessary,
    /// One of the entry's consent keys is granted.
    Granted,
    /// `Max-Age` <= 0 or `Expires` in the past: withdrawal always works.
    Deletion,
    /// None of the entry's consent keys is granted.
    NotGranted,
    /// Granted, but the category is refused under `Sec-GPC: 1`.
    Gpc,
    /// The registry does not name the cookie (`unknown_cookies` decides).
    Unknown,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConsentCookie => "consent-cookie",
            Reason::Necessary => "necessary",
            Reason::Granted => "granted",
            Reason::Deletion => "deletion",
            Reason::NotGranted => "not-granted",
            Reason::Gpc => "gpc",
            Reason::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The category label for a cookie the registry does not name.
pub const UNKNOWN_CATEGORY: &str = "unknown";

/// A verdict, its reason and the registry entry it was judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'p> {
    pub verdict: Verdict,
    pub reason: Reason,
    pub entry: Option<&'p CookieEntry>,
}

impl<'p> Decision<'p> {
    /// The entry's category, `necessary` for an unlisted consent cookie, else `unknown`.
    pub fn category(&self) -> &'p str {
        match (self.entry, self.reason) {
            (Some(e), _) => &e.category,
            (None, Reason::ConsentCookie) => crate::policy::registry::NECESSARY,
            (None, _) => UNKNOWN_CATEGORY,
        }
    }
}

/// What the registry says about a cookie name before any consent: its entry, and whether it is
/// the host's consent cookie (always necessary, listed or not). The first step of [`decide`],
/// and what the inventory shows as a name's entry and category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known<'p> {
    pub entry: Option<&'p CookieEntry>,
    pub consent_cookie: bool,
}

impl<'p> Known<'p> {
    /// Looks `name` up in `policy`'s registry entries and consent cookie.
    pub fn of(policy: &'p HostPolicy, name: &[u8]) -> Self {
        Known {
            entry: policy.lookup(name),
            consent_cookie: policy.consent.is_consent_cookie(name),
        }
    }

    /// Listed, or the consent cookie.
    pub fn registered(&self) -> bool {
        self.entry.is_some() || self.consent_cookie
    }

    /// The entry's category, `necessary` for an unlisted consent cookie, `None` for a cookie the
    /// registry does not know.
    pub fn category(&self) -> Option<&'p str> {
        match self.entry {
            Some(e) => Some(&e.category),
            None if self.consent_cookie => Some(crate::policy::registry::NECESSARY),
            None => None,
        }
    }
}

/// Decides one `Set-Cookie` header.
pub fn decide<'p>(policy: &'p HostPolicy, consent: &Consent, sc: &SetCookie<'_>) -> Decision<'p> {
    decide_cookie(policy, consent, sc.name, sc.is_deletion)
}

/// The one keep/drop decision, for a cookie of `policy`'s host named `name`: in a `Set-Cookie`
/// header ([`decide`]; `is_deletion` as the header says), or sent by the browser in the request's
/// `Cookie` header (`is_deletion` false: the request side's strip and purge). The response
/// filter, the request side, `explain` and the inventory's verdicts all come from here.
pub fn decide_cookie<'p>(
    policy: &'p HostPolicy,
    consent: &Consent,
    name: &[u8],
    is_deletion: bool,
) -> Decision<'p> {
    let known = Known::of(policy, name);
    let keep = |reason| Decision {
        verdict: Verdict::Keep,
        reason,
        entry: known.entry,
    };
    let refuse = |reason| Decision {
        verdict: match policy.mode {
            Mode::Enforce => Verdict::Drop,
            Mode::ReportOnly => Verdict::WouldDrop,
        },
        reason,
        entry: known.entry,
    };
    if known.consent_cookie {
        return keep(Reason::ConsentCookie);
    }
    if is_deletion {
        return keep(Reason::Deletion);
    }
    let Some(e) = known.entry else {
        return match policy.unknown_cookies {
            UnknownCookies::Keep => keep(Reason::Unknown),
            UnknownCookies::Drop => refuse(Reason::Unknown),
        };
    };
    if e.necessary {
        keep(Reason::Necessary)
    } else if !e.consent.iter().any(|k| consent.granted.contains(k)) {
        refuse(Reason::NotGranted)
    } else if consent.gpc && e.refused_by_gpc {
        refuse(Reason::Gpc)
    } else {
        keep(Reason::Granted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::consent::{Granted, Source};

    /// The test host (`tests/fixtures/t.example.toml`) in `mode`, with `unknown` cookies.
    fn policy(mode: Mode, unknown: UnknownCookies) -> HostPolicy {
        let mut p = crate::config::fixture::host_policy("");
        p.mode = mode;
        p.unknown_cookies = unknown;
        p
    }

    fn consent(keys: &[&str], gpc: bool) -> Consent {
        Consent {
            granted: Granted::from_keys(keys.iter().copied()),
            gpc,
            source: Source::Cookie,
        }
    }

    const NOW: i64 = 1_779_000_000;

    fn run(p: &HostPolicy, c: &Consent, header: &str) -> (Verdict, Reason, &'static str) {
        let d = decide(p, c, &SetCookie::parse(header.as_bytes(), NOW));
        // The category label is checked by category_label_* tests; leak-free static for the table.
        let cat = match d.category() {
            "necessary" => "necessary",
            "statistical" => "statistical",
            "marketing" => "marketing",
            "unknown" => "unknown",
            other => panic!("unexpected category {other}"),
        };
        (d.verdict, d.reason, cat)
    }

    type Case<'a> = (&'a str, &'a Consent, &'a str, (Verdict, Reason, &'a str));

    #[test]
    fn decision_table() {
        use Reason::*;
        use Verdict::*;
        let enforce = policy(Mode::Enforce, UnknownCookies::Drop);
        let none = consent(&[], false);
        let ga = consent(&["ga"], false);
        let onetrust = consent(&["C0002"], false);
        let all_gpc = consent(&["ga", "marketing"], true);
        let cases: Vec<Case> = vec![
            (
                "necessary kept without consent",
                &none,
                "sessionid=1; HttpOnly",
                (Keep, Necessary, "necessary"),
            ),
            (
                "refused cookie dropped",
                &none,
                "_ga=GA1.2.3",
                (Drop, NotGranted, "statistical"),
            ),
            (
                "granted cookie kept",
                &ga,
                "_ga=GA1.2.3",
                (Keep, Granted, "statistical"),
            ),
            (
                "any listed key grants",
                &onetrust,
                "_ga=GA1.2.3",
                (Keep, Granted, "statistical"),
            ),
            (
                "prefix entry judged by its keys",
                &onetrust,
                "_ga_ABC=1",
                (Drop, NotGranted, "statistical"),
            ),
            (
                "deletion of refused cookie is kept",
                &none,
                "_ga=; Max-Age=0",
                (Keep, Deletion, "statistical"),
            ),
            (
                "deletion of unknown cookie is kept",
                &none,
                "zz=; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
                (Keep, Deletion, "unknown"),
            ),
            (
                "unknown dropped under drop",
                &ga,
                "zz=1",
                (Drop, Unknown, "unknown"),
            ),
            (
                "empty name is unknown",
                &ga,
                "novalue",
                (Drop, Unknown, "unknown"),
            ),
            (
                "consent cookie always kept",
                &none,
                "cookies_preferences=x",
                (Keep, ConsentCookie, "necessary"),
            ),
            (
                "gpc refuses a granted gpc category",
                &all_gpc,
                "ads=1",
                (Drop, Gpc, "marketing"),
            ),
            (
                "gpc leaves other categories",
                &all_gpc,
                "_ga=1",
                (Keep, Granted, "statistical"),
            ),
            (
                "gpc never refuses necessary",
                &all_gpc,
                "sessionid=1",
                (Keep, Necessary, "necessary"),
            ),
        ];
        for (what, c, header, want) in cases {
            assert_eq!(run(&enforce, c, header), want, "{what}");
        }
    }

    #[test]
    fn unknown_kept_under_keep() {
        let p = policy(Mode::Enforce, UnknownCookies::Keep);
        assert_eq!(
            run(&p, &consent(&[], false), "zz=1"),
            (Verdict::Keep, Reason::Unknown, "unknown")
        );
    }

    #[test]
    fn report_only_turns_drops_into_would_drops() {
        let p = policy(Mode::ReportOnly, UnknownCookies::Drop);
        let none = consent(&[], false);
        assert_eq!(
            run(&p, &none, "_ga=1"),
            (Verdict::WouldDrop, Reason::NotGranted, "statistical")
        );
        assert_eq!(
            run(&p, &none, "zz=1"),
            (Verdict::WouldDrop, Reason::Unknown, "unknown")
        );
        assert_eq!(
            run(&p, &none, "sessionid=1"),
            (Verdict::Keep, Reason::Necessary, "necessary")
        );
    }

    #[test]
    fn gpc_without_grant_reports_not_granted() {
        let p = policy(Mode::Enforce, UnknownCookies::Drop);
        assert_eq!(
            run(&p, &consent(&[], true), "ads=1"),
            (Verdict::Drop, Reason::NotGranted, "marketing")
        );
    }
}
