//! Format `cookiebot`: Cybot's Cookiebot `CookieConsent` cookie.
//!
//! The value is a JavaScript object literal, percent-encoded by the banner
//! (`{stamp:%27...%27%2Cnecessary:true%2Cpreferences:false%2Cstatistics:true%2Cmarketing:false%2C
//! method:%27explicit%27%2Cver:1%2Cutc:1718000000000%2Cregion:%27fr%27}`), or one of two bare
//! values (CybotAS/CookiebotWP `documentation/CookiebotAPI.md`, reading the cookie in PHP):
//! `0`, the visitor accepted nothing but strictly necessary cookies, and `-1`, the visitor is
//! not within a region that requires consent.
//!
//! Every key set to the bare literal `true` is granted: `preferences`, `statistics` and
//! `marketing`, and also `necessary`, which is harmless (necessary cookies pass without consent)
//! and keeps the rule uniform. The other members (`stamp`, `method`, `ver`, `utc`, `region`) are
//! strings or numbers and grant nothing. `0` decodes to an empty grant. `-1` also decodes to an
//! empty grant here; what it grants is a per-host choice, `cookiebot_outside_region`, applied by
//! [`super::ConsentSpec::from_value`] with [`is_outside_region`].

use super::value::{Granted, MAX_KEYS};

/// Whether the value is Cookiebot's `-1`: a visitor outside any consent region.
pub fn is_outside_region(value: &[u8]) -> bool {
    super::value::unquote(value) == b"-1"
}

/// Decodes a `CookieConsent` value; `None` unless it is `0`, `-1` or a well-formed object
/// literal (balanced quotes and brackets, every member `key:value`) of at most [`MAX_KEYS`] members.
pub fn decode(value: &[u8]) -> Option<Granted> {
    let value = super::value::unquote(value);
    if value == b"0" || value == b"-1" {
        return Some(Granted::none());
    }
    let text = super::value::percent_decoded(value);
    let [b'{', body @ .., b'}'] = text.trim_ascii() else {
        return None;
    };
    let mut keys = Vec::new();
    let mut members = 0usize;
    for_each_member(body, |member| {
        let member = member.trim_ascii();
        if member.is_empty() {
            // `{}` or a trailing comma.
            return Some(());
        }
        members += 1;
        if members > MAX_KEYS {
            return None;
        }
        let at = member.iter().position(|&b| b == b':')?;
        let key = unquote_key(member[..at].trim_ascii());
        if key.is_empty() {
            return None;
        }
        if member[at + 1..].trim_ascii() == b"true" {
            // A key that is not UTF-8 can match no registry key.
            if let Ok(key) = std::str::from_utf8(key) {
                keys.push(key);
            }
        }
        Some(())
    })?;
    Some(Granted::from_keys(keys))
}

/// Calls `member` with each top-level member of an object literal's body (split on commas
/// outside quotes and brackets). `None` when the quotes or brackets do not balance, or when
/// `member` returns `None`.
fn for_each_member<'a>(
    body: &'a [u8],
    mut member: impl FnMut(&'a [u8]) -> Option<()>,
) -> Option<()> {
    let mut start = 0;
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for (i, &b) in body.iter().enumerate() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == q {
                quote = None;
            }
            continue;
        }
        match b {
            b'\'' | b'"' => quote = Some(b),
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b',' if depth == 0 => {
                member(&body[start..i])?;
                start = i + 1;
            }
            _ => {}
        }
    }
    if quote.is_some() || depth != 0 {
        return None;
    }
    member(&body[start..])
}

/// A member name without its quotes, if quoted (`'necessary'`, `"necessary"`).
fn unquote_key(key: &[u8]) -> &[u8] {
    match key {
        [b'\'', inner @ .., b'\''] | [b'"', inner @ .., b'"'] => inner,
        k => k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::consent::test_support::{keys_with, owned};

    fn keys(v: &str) -> Option<Vec<String>> {
        keys_with(decode, v)
    }

    #[test]
    fn percent_encoded_literal_grants_keys_set_true() {
        // www.senukai.lt's CookieConsent (with `region`), as set by a public Selenium page object.
        assert_eq!(
            keys(
                "{stamp:%270lIcpTegmrXke0YX5PV8GQveHMzQq0C2e1NI4/Bw/d5voEO6b2VlnQ==%27%2C\
                 necessary:true%2Cpreferences:true%2Cstatistics:false%2Cmarketing:false%2Cver:1%2C\
                 utc:1647157895720%2Cregion:%27lt%27}"
            ),
            owned(&["necessary", "preferences"])
        );
        // A refusal from uBlockOrigin/uBOL-home's annoyances-cookies ruleset (values it sets to
        // decline banners on real sites).
        assert_eq!(
            keys(
                "{stamp:%27BvqlZ34xqOpzSOaxY1VgwOy5CZ1lfC4Xs2JNiDqz9M4rNuyyAY56Jg==%27%2C\
                 necessary:true%2Cpreferences:false%2Cstatistics:false%2Cmarketing:false%2C\
                 method:%27explicit%27%2Cver:1%2Cutc:1697932000537}"
            ),
            owned(&["necessary"])
        );
    }

    #[test]
    fn stamp_with_slash_and_plus_does_not_disturb_the_split() {
        // Same ruleset, an acceptance whose stamp holds `/` and `+`.
        assert_eq!(
            keys(
                "{stamp:%27fbbiPQWa8SRQm47Ge8hRVOAPAgw2jXlG8o/+hp1euVVi1qtFQj1O3w==%27%2C\
                 necessary:true%2Cpreferences:true%2Cstatistics:true%2Cmarketing:true%2C\
                 method:%27explicit%27%2Cver:4}"
            ),
            owned(&["marketing", "necessary", "preferences", "statistics"])
        );
    }

    #[test]
    fn literal_without_stamp_is_read() {
        // Same ruleset: some sites' banners accept a bare literal.
        assert_eq!(
            keys("{necessary:true%2Cpreferences:false%2Cstatistics:true%2Cmarketing:true}"),
            owned(&["marketing", "necessary", "statistics"])
        );
    }

    #[test]
    fn decoded_literal_is_read() {
        // The URL-decoded shape in https://sprtags.io/resources/blog/read-cookiebot-consent-state-sgtm
        assert_eq!(
            keys(
                "{stamp:'abcd1234',necessary:true,preferences:false,statistics:true,\
                 marketing:false,ver:1,utc:1740000000000,region:'fr'}"
            ),
            owned(&["necessary", "statistics"])
        );
        // Quoted member names, and a `,` inside a quoted string.
        assert_eq!(
            keys(r#"{"stamp":"a,b",'marketing': true }"#),
            owned(&["marketing"])
        );
    }

    #[test]
    fn bare_values_of_the_php_example_decode_to_nothing() {
        // CybotAS/CookiebotWP documentation/CookiebotAPI.md: `0` strictly necessary only, `-1`
        // outside a consent region (granted per host by ConsentSpec::from_value).
        assert_eq!(keys("0"), Some(vec![]));
        assert_eq!(keys("-1"), Some(vec![]));
        assert!(is_outside_region(b"-1"));
        assert!(is_outside_region(b" \"-1\" "));
        assert!(!is_outside_region(b"0"));
        assert!(!is_outside_region(b"{necessary:true}"));
    }

    #[test]
    fn values_other_than_bare_true_grant_nothing() {
        assert_eq!(
            keys("{statistics:'true'%2Cmarketing:1%2Cpreferences:{a:true}%2Cx:truely}"),
            Some(vec![])
        );
        assert_eq!(keys("{}"), Some(vec![]));
        assert_eq!(keys("{marketing:true,}"), owned(&["marketing"]));
    }

    #[test]
    fn malformed_and_truncated_values_do_not_decode() {
        for v in [
            "",
            "1",
            "-2",
            "true",
            "necessary:true",
            "{necessary:true",
            "{stamp:%27abc%2Cnecessary:true}",
            "{stamp:'abc,necessary:true}",
            "{necessary:true%2Cmarketing:tr",
            "{:true}",
            "{marketing}",
            "{a:[true}",
            "{a:true]}",
            "%7Bnecessary:true%7D%7D",
        ] {
            assert_eq!(keys(v), None, "{v:?}");
        }
        let real = "{stamp:%27BvqlZ34xqOpzSOaxY1VgwOy5CZ1lfC4Xs2JNiDqz9M4rNuyyAY56Jg==%27%2C\
                    necessary:true%2Cpreferences:false%2Cstatistics:false%2Cmarketing:true%2C\
                    method:%27explicit%27%2Cver:1%2Cutc:1697932000537}";
        for end in 2..real.len() - 1 {
            assert_eq!(keys(&real[..end]), None, "{:?}", &real[..end]);
        }
    }

    #[test]
    fn never_panics() {
        for input in super::super::tests::noise() {
            let _ = decode(&input);
            let _ = is_outside_region(&input);
        }
    }
}
