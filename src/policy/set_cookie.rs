//! Reading one `Set-Cookie` header value the way a browser does (RFC 6265bis §5.6).
//!
//! Pure: the caller passes the clock. Only what the decision needs is read: the cookie name and
//! value, whether the header deletes the cookie, and the attributes that say where a browser
//! would store it (`Domain`, `Path`, `Secure`; judged by [`crate::policy::jar`]). Attribute values that
//! do not parse are ignored, as a browser ignores them.

/// What the decision needs to know about one `Set-Cookie` header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetCookie<'a> {
    /// Text before the first `=` of the part before the first `;`, trimmed of spaces and tabs;
    /// empty when that part has no `=`. Raw bytes: a name that is not UTF-8 matches nothing.
    pub name: &'a [u8],
    /// The value, trimmed (the consent cookie's value is decoded from it).
    pub value: &'a [u8],
    /// The bytes after the first `;` (empty when there is none): the attributes, unread.
    pub attributes: &'a [u8],
    /// `Max-Age` <= 0, or (without a valid `Max-Age`) an `Expires` at or before `now`.
    pub is_deletion: bool,
    /// The last `Domain` attribute with a non-empty value (RFC 6265bis §5.6.3), as written:
    /// leading dot and case kept ([`crate::policy::jar`] canonicalises it). `None`: host-only.
    pub domain: Option<&'a [u8]>,
    /// The last `Path` attribute, when its value starts with `/` (§5.6.4). `None` when there is
    /// none, or when the last one is empty or relative: the cookie gets the request's
    /// default-path.
    pub path: Option<&'a [u8]>,
    /// A `Path` attribute was present at all (the `__Host-` prefix asks for one).
    pub has_path_attribute: bool,
    /// A `Secure` attribute was present.
    pub secure: bool,
}

/// Attribute values longer than this are ignored, as browsers ignore them (RFC 6265bis §5.6).
pub const MAX_ATTRIBUTE_VALUE: usize = 1024;

use crate::policy::request_cookies::trim;

fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = s.iter().position(|&b| b == sep)?;
    Some((&s[..at], &s[at + 1..]))
}

impl<'a> SetCookie<'a> {
    /// Reads a header value. `now` is seconds since the Unix epoch.
    pub fn parse(header: &'a [u8], now: i64) -> SetCookie<'a> {
        let (pair, attrs) = split_once(header, b';').unwrap_or((header, &[]));
        let (name, value) = match split_once(pair, b'=') {
            Some((n, v)) => (trim(n), trim(v)),
            None => (&[][..], trim(pair)),
        };
        // The last valid occurrence of each attribute wins; invalid ones are ignored.
        let mut max_age: Option<bool> = None; // Some(true) = deletes
        let mut expires_past: Option<bool> = None;
        let mut domain = None;
        let mut path = None;
        let mut has_path_attribute = false;
        let mut secure = false;
        // One pass over each attribute finds both its `=` and the `;` that ends it.
        let mut rest = (attrs.len() < header.len()).then_some(attrs);
        while let Some(s) = rest {
            let (mut eq, mut end) = (None, s.len());
            for (i, &b) in s.iter().enumerate() {
                if b == b';' {
                    end = i;
                    break;
                }
                if b == b'=' && eq.is_none() {
                    eq = Some(i);
                }
            }
            rest = s.get(end + 1..);
            let av = &s[..end];
            let (k, v) = match eq {
                Some(at) => (trim(&av[..at]), trim(&av[at + 1..])),
                None => (trim(av), &[][..]),
            };
            if v.len() > MAX_ATTRIBUTE_VALUE {
                continue;
            }
            if k.eq_ignore_ascii_case(b"max-age") {
                if let Some(deletes) = max_age_deletes(v) {
                    max_age = Some(deletes);
                }
            } else if k.eq_ignore_ascii_case(b"expires") {
                if let Some(t) = parse_cookie_date(v) {
                    expires_past = Some(t <= now);
                }
            } else if k.eq_ignore_ascii_case(b"domain") {
                if !v.is_empty() {
                    domain = Some(v);
                }
            } else if k.eq_ignore_ascii_case(b"path") {
                has_path_attribute = true;
                path = v.starts_with(b"/").then_some(v);
            } else if k.eq_ignore_ascii_case(b"secure") {
                secure = true;
            }
        }
        let is_deletion = max_age.or(expires_past).unwrap_or(false);
        SetCookie {
            name,
            value,
            attributes: attrs,
            is_deletion,
            domain,
            path,
            has_path_attribute,
            secure,
        }
    }
}

/// `Some(true)` when a `Max-Age` value is <= 0, `Some(false)` when positive, `None` when it is not
/// a valid `Max-Age` (RFC 6265bis §5.6.2: optional `-` then digits only).
fn max_age_deletes(v: &[u8]) -> Option<bool> {
    let (negative, digits) = match v {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, v),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(negative || digits.iter().all(|&d| d == b'0'))
}

/// The cookie-date algorithm of RFC 6265 §5.1.1, as browsers implement it. Returns seconds since
/// the Unix epoch, or `None` for a date a browser would ignore.
pub fn parse_cookie_date(v: &[u8]) -> Option<i64> {
    let is_delim = |b: u8| {
        b == 0x09
            || (0x20..=0x2F).contains(&b)
            || (0x3B..=0x40).contains(&b)
            || (0x5B..=0x60).contains(&b)
            || (0x7B..=0x7E).contains(&b)
    };
    let mut time: Option<(u32, u32, u32)> = None;
    let mut day: Option<u32> = None;
    let mut month: Option<u32> = None;
    let mut year: Option<u32> = None;
    for token in v.split(|&b| is_delim(b)).filter(|t| !t.is_empty()) {
        if time.is_none() {
            if let Some(t) = parse_time(token) {
                time = Some(t);
                continue;
            }
        }
        if day.is_none() {
            if let Some(d) = leading_digits(token, 1, 2) {
                day = Some(d);
                continue;
            }
        }
        if month.is_none() && token.len() >= 3 {
            const MONTHS: [&[u8; 3]; 12] = [
                b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct",
                b"nov", b"dec",
            ];
            if let Some(m) = MONTHS
                .iter()
                .position(|m| token[..3].eq_ignore_ascii_case(&m[..]))
            {
                month = Some(m as u32 + 1);
                continue;
            }
        }
        if year.is_none() {
            if let Some(y) = leading_digits(token, 2, 4) {
                year = Some(y);
                continue;
            }
        }
    }
    let (h, mi, s) = time?;
    let (day, month, mut year) = (day?, month?, year?);
    if (70..=99).contains(&year) {
        year += 1900;
    } else if year <= 69 {
        year += 2000;
    }
    if !(1..=31).contains(&day) || year < 1601 || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    Some(days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s))
}

/// `min..=max` digits at the start of the token, then nothing or a non-digit.
fn leading_digits(token: &[u8], min: usize, max: usize) -> Option<u32> {
    let n = token.iter().take_while(|b| b.is_ascii_digit()).count();
    if n < min || n > max {
        return None;
    }
    token[..n]
        .iter()
        .try_fold(0u32, |acc, &d| Some(acc * 10 + u32::from(d - b'0')))
}

/// `hms-time = time-field ":" time-field ":" time-field` (1-2 digits each), then anything non-digit.
fn parse_time(token: &[u8]) -> Option<(u32, u32, u32)> {
    let mut parts = token.splitn(3, |&b| b == b':');
    let h = parts.next()?;
    let m = parts.next()?;
    let s = parts.next()?;
    let field = |f: &[u8], whole: bool| {
        let n = f.iter().take_while(|b| b.is_ascii_digit()).count();
        if !(1..=2).contains(&n) || (whole && n != f.len()) {
            return None;
        }
        f[..n]
            .iter()
            .try_fold(0u32, |acc, &d| Some(acc * 10 + u32::from(d - b'0')))
    };
    Some((field(h, true)?, field(m, true)?, field(s, false)?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_779_000_000; // 2026-05-17

    fn name(h: &str) -> String {
        String::from_utf8_lossy(SetCookie::parse(h.as_bytes(), NOW).name).into_owned()
    }

    fn deletes(h: &str) -> bool {
        SetCookie::parse(h.as_bytes(), NOW).is_deletion
    }

    #[test]
    fn name_is_text_before_first_equals_of_first_part() {
        let cases = [
            ("sessionid=abc; Path=/", "sessionid"),
            ("  _ga  =GA1.2.3; Secure", "_ga"),
            ("\t_gid\t=x", "_gid"),
            ("a=b=c", "a"),
            ("=value", ""),
            ("novalue", ""),
            ("noequals; Path=/", ""),
            ("name=", "name"),
            ("x; y=z", ""),
            ("__Host-id=1; Secure; Path=/", "__Host-id"),
            ("", ""),
        ];
        for (h, want) in cases {
            assert_eq!(name(h), want, "{h:?}");
        }
    }

    #[test]
    fn value_is_trimmed_text_after_first_equals() {
        let sc = SetCookie::parse(b"cookies_preferences= {\"ga\":true} ; Path=/", NOW);
        assert_eq!(sc.value, b"{\"ga\":true}");
        let sc = SetCookie::parse(b"bare", NOW);
        assert_eq!(sc.value, b"bare");
    }

    #[test]
    fn max_age_zero_or_negative_is_deletion() {
        for h in [
            "a=; Max-Age=0",
            "a=; max-age=-1",
            "a=1; MAX-AGE=000",
            "a=1; Max-Age = -999999999999999999999",
        ] {
            assert!(deletes(h), "{h}");
        }
        for h in ["a=1; Max-Age=1", "a=1; Max-Age=99999999999999999999", "a=1"] {
            assert!(!deletes(h), "{h}");
        }
    }

    #[test]
    fn invalid_max_age_is_ignored() {
        for h in [
            "a=; Max-Age=zero",
            "a=; Max-Age=",
            "a=; Max-Age=0x0",
            "a=; Max-Age=+0",
            "a=; Max-Age=-",
            "a=; Max-Age=1.5",
        ] {
            assert!(!deletes(h), "{h}");
        }
        // An invalid Max-Age does not hide a valid past Expires.
        assert!(deletes(
            "a=; Max-Age=abc; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        ));
    }

    #[test]
    fn expires_in_the_past_is_deletion() {
        for h in [
            "a=; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            "a=; expires=Thursday, 01-Jan-70 00:00:01 GMT",
            "a=; Expires=Sun Nov  6 08:49:37 1994",
            "a=; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Path=/",
        ] {
            assert!(deletes(h), "{h}");
        }
        for h in [
            "a=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT",
            "a=1; Expires=Sat, 01-Jan-2050 10:00:00 UTC",
        ] {
            assert!(!deletes(h), "{h}");
        }
    }

    #[test]
    fn unparseable_expires_is_ignored() {
        for h in [
            "a=1; Expires=never",
            "a=1; Expires=Thu, 32 Jan 1970 00:00:00 GMT",
            "a=1; Expires=Thu, 01 Jan 1970 25:00:00 GMT",
            "a=1; Expires=Thu, 01 Foo 1970 00:00:00 GMT",
            "a=1; Expires=01 Jan 1500 00:00:00",
            "a=1; Expires=",
        ] {
            assert!(!deletes(h), "{h}");
        }
    }

    #[test]
    fn max_age_wins_over_expires() {
        assert!(!deletes(
            "a=1; Max-Age=3600; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        ));
        assert!(deletes(
            "a=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT; Max-Age=0"
        ));
    }

    #[test]
    fn last_valid_attribute_wins() {
        assert!(!deletes("a=1; Max-Age=0; Max-Age=10"));
        assert!(deletes("a=1; Max-Age=10; Max-Age=0"));
        assert!(deletes(
            "a=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        ));
    }

    #[test]
    fn attribute_names_do_not_leak_into_cookie_name() {
        // "Max-Age=0" as the cookie's own pair is a cookie named Max-Age, not a deletion.
        assert!(!deletes("Max-Age=0"));
        assert_eq!(name("Max-Age=0"), "Max-Age");
    }

    #[test]
    fn domain_path_and_secure_are_read_as_a_browser_reads_them() {
        let sc = SetCookie::parse(
            b"a=1; Domain=.Portal.Test; path=/x; SECURE; Domain=; Path=relative",
            NOW,
        );
        // An empty Domain is ignored; a relative Path replaces the earlier one with the default.
        assert_eq!(sc.domain, Some(&b".Portal.Test"[..]));
        assert_eq!(sc.path, None);
        assert!(sc.has_path_attribute && sc.secure);
        let sc = SetCookie::parse(b"a=1; Path=/a; Domain=x.test; Domain=y.test", NOW);
        assert_eq!(sc.domain, Some(&b"y.test"[..]));
        assert_eq!(sc.path, Some(&b"/a"[..]));
        assert!(!sc.secure);
        let sc = SetCookie::parse(b"a=1", NOW);
        assert_eq!(
            (sc.domain, sc.path, sc.has_path_attribute),
            (None, None, false)
        );
        // Over 1,024 bytes, an attribute value is ignored.
        let long = format!("a=1; Domain=x.test; Domain={}.test", "a".repeat(1100));
        assert_eq!(
            SetCookie::parse(long.as_bytes(), NOW).domain,
            Some(&b"x.test"[..])
        );
        // The cookie's own pair is not an attribute.
        let sc = SetCookie::parse(b"Secure=1; Path=/", NOW);
        assert!(!sc.secure);
    }

    #[test]
    fn cookie_dates_parse_to_epoch_seconds() {
        let cases: [(&str, i64); 5] = [
            ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
            ("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_777),
            ("Sunday, 06-Nov-94 08:49:37 GMT", 784_111_777),
            ("Sun Nov  6 08:49:37 1994", 784_111_777),
            ("Tue, 29 Feb 2000 12:00:00 GMT", 951_825_600),
        ];
        for (s, want) in cases {
            assert_eq!(parse_cookie_date(s.as_bytes()), Some(want), "{s}");
        }
    }
}
