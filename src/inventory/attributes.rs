//! What the inventory records of one `Set-Cookie` header: its name and its attributes.
//!
//! Pure; the caller passes the clock. Read as a browser reads them (RFC 6265bis §5.6): the last
//! valid occurrence of an attribute wins, an attribute whose value does not parse is ignored.
//! The value of the cookie is never looked at.

use crate::policy::request_cookies::{find_semicolon, trim};
use crate::policy::set_cookie::parse_cookie_date;

/// The name and attributes of one `Set-Cookie` header value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attributes<'a> {
    /// As the filter reads it: text before the first `=` of the part before the first `;`,
    /// trimmed; empty when that part has no `=`.
    pub name: &'a [u8],
    pub domain: Option<&'a [u8]>,
    pub path: Option<&'a [u8]>,
    pub samesite: Option<&'a [u8]>,
    pub secure: bool,
    pub httponly: bool,
    /// Seconds the cookie lives: `Max-Age`, else `Expires` minus now; `None` for a session
    /// cookie. Zero or less for a deletion.
    pub lifetime: Option<i64>,
}

/// Reads one header value. `now` is seconds since the Unix epoch.
pub fn read(header: &[u8], now: i64) -> Attributes<'_> {
    let (name, attrs) = split(header);
    read_attributes(name, attrs, now)
}

/// A header value's cookie name and the bytes of its attributes (after the first `;`, empty
/// when there is none): the name without reading the attributes.
pub fn split(header: &[u8]) -> (&[u8], &[u8]) {
    let (pair, attrs) = match find_semicolon(header) {
        Some(at) => (&header[..at], &header[at + 1..]),
        None => (header, &[][..]),
    };
    let name = match pair.iter().position(|&b| b == b'=') {
        Some(at) => trim(&pair[..at]),
        None => &[],
    };
    (name, attrs)
}

/// Reads the attributes part of a header value (as [`split`] returns it).
pub fn read_attributes<'a>(name: &'a [u8], attrs: &'a [u8], now: i64) -> Attributes<'a> {
    let mut a = Attributes {
        name,
        ..Attributes::default()
    };
    let mut max_age: Option<i64> = None;
    let mut expires: Option<i64> = None;
    for av in attrs.split(|&b| b == b';') {
        let (k, v) = match av.iter().position(|&b| b == b'=') {
            Some(at) => (trim(&av[..at]), trim(&av[at + 1..])),
            None => (trim(av), &[][..]),
        };
        if k.eq_ignore_ascii_case(b"domain") {
            if !v.is_empty() {
                a.domain = Some(v);
            }
        } else if k.eq_ignore_ascii_case(b"path") {
            if v.first() == Some(&b'/') {
                a.path = Some(v);
            }
        } else if k.eq_ignore_ascii_case(b"samesite") {
            if !v.is_empty() {
                a.samesite = Some(v);
            }
        } else if k.eq_ignore_ascii_case(b"secure") {
            a.secure = true;
        } else if k.eq_ignore_ascii_case(b"httponly") {
            a.httponly = true;
        } else if k.eq_ignore_ascii_case(b"max-age") {
            if let Some(s) = max_age_seconds(v) {
                max_age = Some(s);
            }
        } else if k.eq_ignore_ascii_case(b"expires") {
            if let Some(t) = parse_cookie_date(v) {
                expires = Some(t.saturating_sub(now));
            }
        }
    }
    a.lifetime = max_age.or(expires);
    a
}

/// The cookie names of one `Cookie` header value, in order, as
/// [`crate::policy::request_cookies::pairs`] reads them (the same walk: the `;` that ends a value
/// is found eight bytes at a time).
pub fn cookie_names(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    crate::policy::request_cookies::pairs(header).map(|p| p.name)
}

/// Whether two byte strings are equal (`memcmp`: a byte-by-byte loop measured slower, even on
/// short names).
#[inline]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a == b
}

/// A `Max-Age` value in seconds (RFC 6265bis §5.6.2: optional `-` then digits), saturating.
fn max_age_seconds(v: &[u8]) -> Option<i64> {
    let (negative, digits) = match v {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, v),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0i64, |acc, &d| {
        acc.saturating_mul(10).saturating_add(i64::from(d - b'0'))
    });
    Some(if negative { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_779_000_000; // 2026-05-17

    /// The proxy records the filter's parse (`SetCookie::name`, `SetCookie::attributes`) in
    /// place of [`split`]: both must cut every header value the same way.
    #[test]
    fn split_agrees_with_the_filters_parse() {
        let cases: [&[u8]; 16] = [
            b"",
            b";",
            b"a",
            b"a=1",
            b"a=1;",
            b"a=1; Path=/",
            b" a =1 ; Secure;HttpOnly",
            b"=v; Domain=x",
            b"novalue; Path=/",
            b"a=b=c; Max-Age=0",
            b";a=1",
            b"\tn\t=v;;; ;",
            b"n=v\xff; x=\xfe",
            b"a; b=c",
            b"__Host-x=1; Path=/; Secure",
            b"  ;  ",
        ];
        for h in cases {
            let sc = crate::policy::set_cookie::SetCookie::parse(h, NOW);
            assert_eq!(
                split(h),
                (sc.name, sc.attributes),
                "{:?}",
                String::from_utf8_lossy(h)
            );
        }
    }

    #[test]
    fn attributes_are_read_as_a_browser_reads_them() {
        let a = read(
            b"_ga=GA1.2.3; Domain=.example.test; Path=/app; Max-Age=63072000; Secure; HttpOnly; SameSite=Lax",
            NOW,
        );
        assert_eq!(a.name, b"_ga");
        assert_eq!(a.domain, Some(&b".example.test"[..]));
        assert_eq!(a.path, Some(&b"/app"[..]));
        assert_eq!(a.samesite, Some(&b"Lax"[..]));
        assert!(a.secure && a.httponly);
        assert_eq!(a.lifetime, Some(63_072_000));
    }

    #[test]
    fn session_cookie_has_no_lifetime_and_bad_values_are_ignored() {
        let a = read(
            b"sid=1; Path=relative; Max-Age=soon; Expires=never; Domain=",
            NOW,
        );
        assert_eq!(a.name, b"sid");
        assert_eq!((a.path, a.domain, a.lifetime), (None, None, None));
        assert!(!a.secure && !a.httponly);
    }

    #[test]
    fn max_age_wins_over_expires_and_the_last_valid_one_counts() {
        let a = read(
            b"a=1; Max-Age=60; Expires=Wed, 17 May 2028 00:00:00 GMT; Max-Age=x; max-age=120",
            NOW,
        );
        assert_eq!(a.lifetime, Some(120));
        let a = read(b"a=1; Expires=Mon, 18 May 2026 00:00:00 GMT", NOW);
        let expected = crate::policy::set_cookie::days_from_civil(2026, 5, 18) * 86_400 - NOW;
        assert_eq!(a.lifetime, Some(expected));
        assert_eq!(read(b"a=; Max-Age=0", NOW).lifetime, Some(0));
        assert_eq!(read(b"a=; Max-Age=-5", NOW).lifetime, Some(-5));
        assert_eq!(
            read(b"a=; Max-Age=99999999999999999999999", NOW).lifetime,
            Some(i64::MAX)
        );
    }

    proptest::proptest! {
        /// Any header bytes: no panic, the same name as the filter reads, and only bytes of
        /// the header come back (nothing invented).
        #[test]
        fn any_header_reads_without_panic(h in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let a = read(&h, NOW);
            proptest::prop_assert_eq!(a.name, crate::policy::set_cookie::SetCookie::parse(&h, NOW).name);
            for v in [a.domain, a.path, a.samesite].into_iter().flatten() {
                proptest::prop_assert!(h.windows(v.len().max(1)).any(|w| w == v) || v.is_empty());
            }
        }
    }

    proptest::proptest! {
        /// Cookie header names: the same as the request side's reader, for any bytes (`;`,
        /// `=`, spaces and tabs made common).
        #[test]
        fn cookie_names_are_read_like_the_request_side_reads_them(
            h in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b';'),
                    proptest::strategy::Just(b'='),
                    proptest::strategy::Just(b' '),
                    proptest::strategy::Just(b'\t'),
                    proptest::num::u8::ANY,
                ],
                0..100,
            )
        ) {
            let want: Vec<&[u8]> = crate::policy::request_cookies::pairs(&h).map(|p| p.name).collect();
            let got: Vec<&[u8]> = cookie_names(&h).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn semicolons_are_found_in_every_position() {
        for len in 0..40 {
            for at in 0..=len {
                let mut s = vec![b'a'; len];
                if at < len {
                    s[at] = b';';
                }
                let want = (at < len).then_some(at);
                assert_eq!(find_semicolon(&s), want, "len {len} at {at}");
                // Bytes that differ from ';' by one bit never match.
                let near: Vec<u8> = s
                    .iter()
                    .map(|&b| if b == b';' { b';' } else { b';' ^ 0x80 })
                    .collect();
                assert_eq!(find_semicolon(&near), want);
            }
        }
    }

    #[test]
    fn name_is_read_like_the_filter_reads_it() {
        for h in [
            "sessionid=abc; Path=/",
            "  _ga  =GA1.2.3; Secure",
            "a=b=c",
            "=value",
            "novalue",
            "noequals; Path=/",
            "",
        ] {
            assert_eq!(
                read(h.as_bytes(), NOW).name,
                crate::policy::set_cookie::SetCookie::parse(h.as_bytes(), NOW).name,
                "{h:?}"
            );
        }
    }
}
