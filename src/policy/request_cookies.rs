//! Reading the request's `Cookie` header(s) as bytes.
//!
//! Pure. Browsers send `name=value; name2=value2`; HTTP/2 clients may send several `Cookie`
//! headers. The header is split on `;` only and each pair on its first `=`, so a value holding
//! `,` or `=` stays whole, and a pair that is not UTF-8 never hides the others.

use super::scan::{has_byte, skip_words};

/// One `name=value` pair of a `Cookie` header, both trimmed of spaces and tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookiePair<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
}

/// RFC 6265 `token`: visible ASCII except separators. What `check` requires of a registry
/// entry's cookie name, and what `import-policy` and `suggest` take as one.
pub fn is_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// Trims spaces and tabs (RFC 6265's optional whitespace), not the other ASCII whitespace that
/// `<[u8]>::trim_ascii` would also take. Shared with the `Set-Cookie` reader.
pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The pairs of one `Cookie` header value, in order. A part without `=` has an empty name (as
/// RFC 6265bis reads it); empty parts (`a=1;; b=2`) are skipped. The `;` that ends a value (a
/// consent cookie's is often 100 bytes and more) is found eight bytes at a time.
pub fn pairs(header: &[u8]) -> impl Iterator<Item = CookiePair<'_>> {
    let mut rest = Some(header);
    std::iter::from_fn(move || loop {
        let s = rest?;
        let (part, next) = match find_semicolon(s) {
            Some(at) => (&s[..at], s.get(at + 1..)),
            None => (s, None),
        };
        rest = next;
        let part = trim(part);
        if part.is_empty() {
            continue;
        }
        return Some(match part.iter().position(|&b| b == b'=') {
            Some(at) => CookiePair {
                name: trim(&part[..at]),
                value: trim(&part[at + 1..]),
            },
            None => CookiePair {
                name: &[],
                value: part,
            },
        });
    })
}

/// The first `;` in `s`, eight bytes at a time ([`super::scan`]).
pub(crate) fn find_semicolon(s: &[u8]) -> Option<usize> {
    let at = skip_words(s, |w| has_byte(w, b';'));
    s[at..].iter().position(|&b| b == b';').map(|i| at + i)
}

/// The pairs of every `Cookie` header of a request, in order.
pub fn all_pairs<'a>(
    headers: impl IntoIterator<Item = &'a http::HeaderValue>,
) -> impl Iterator<Item = CookiePair<'a>> {
    headers.into_iter().flat_map(|h| pairs(h.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(h: &[u8]) -> Vec<(&[u8], &[u8])> {
        pairs(h).map(|p| (p.name, p.value)).collect()
    }

    #[test]
    fn splits_on_semicolon_and_first_equals() {
        assert_eq!(
            collect(b"a=1; b=x=y; c={\"ga\":true,\"m\":false}"),
            vec![
                (&b"a"[..], &b"1"[..]),
                (b"b", b"x=y"),
                (b"c", b"{\"ga\":true,\"m\":false}")
            ]
        );
    }

    #[test]
    fn tolerates_missing_spaces_and_empty_parts() {
        assert_eq!(
            collect(b"a=1;b=2;; ;c="),
            vec![(&b"a"[..], &b"1"[..]), (b"b", b"2"), (b"c", b"")]
        );
    }

    #[test]
    fn part_without_equals_has_empty_name() {
        assert_eq!(
            collect(b"lonely; a=1"),
            vec![(&b""[..], &b"lonely"[..]), (b"a", b"1")]
        );
    }

    #[test]
    fn non_utf8_pair_does_not_hide_the_others() {
        let got = collect(b"bad=\xff\xfe; cookies_preferences=x; \xc3=1");
        assert_eq!(got.len(), 3);
        assert_eq!(got[1], (&b"cookies_preferences"[..], &b"x"[..]));
    }

    #[test]
    fn several_headers_are_read_in_order() {
        let hs = [
            http::HeaderValue::from_static("a=1"),
            http::HeaderValue::from_static("b=2; c=3"),
        ];
        let names: Vec<&[u8]> = all_pairs(&hs).map(|p| p.name).collect();
        assert_eq!(names, vec![&b"a"[..], b"b", b"c"]);
    }
}
