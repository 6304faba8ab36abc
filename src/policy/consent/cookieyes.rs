//! Format `cookieyes`: CookieYes's `cookieyes-consent` cookie.
//!
//! The value is `key:value` pairs joined by raw commas,
//! `consentid:<id>,consent:yes,action:yes,necessary:yes,functional:no,analytics:yes,...`,
//! sometimes percent-encoded as a whole (`%2C`, `%3A`). The category keys set to `yes` are
//! granted. `consentid`, `consent` (whether the visitor consented at all) and `action` (whether
//! the visitor acted on the banner) are bookkeeping, not categories: they never grant, so a
//! `consent:yes` cannot satisfy a registry entry whose consent key happens to be `consent`.

use super::value::{Granted, MAX_KEYS};

/// The members that describe the consent record rather than a category.
const META: [&[u8]; 3] = [b"consentid", b"consent", b"action"];

/// Decodes a `cookieyes-consent` value; `None` unless it has at least one pair and every
/// non-empty part is `key:value` with a non-empty key, at most [`MAX_KEYS`] of them.
pub fn decode(value: &[u8]) -> Option<Granted> {
    let text = super::value::percent_decoded(super::value::unquote(value));
    let mut keys = Vec::new();
    let mut pairs = 0;
    for part in text.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() {
            continue;
        }
        let at = part.iter().position(|&b| b == b':')?;
        let key = part[..at].trim_ascii();
        if key.is_empty() {
            return None;
        }
        pairs += 1;
        if pairs > MAX_KEYS {
            return None;
        }
        if part[at + 1..].trim_ascii() == b"yes" && !META.contains(&key) {
            // A key that is not UTF-8 can match no registry key.
            if let Ok(key) = std::str::from_utf8(key) {
                keys.push(key);
            }
        }
    }
    (pairs > 0).then(|| Granted::from_keys(keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::consent::test_support::{keys_with, owned};

    fn keys(v: &str) -> Option<Vec<String>> {
        keys_with(decode, v)
    }

    #[test]
    fn categories_with_yes_are_granted() {
        // follovery.com's cookieyes-consent (no `other` category), as captured in a public
        // script's Cookie header.
        assert_eq!(
            keys(
                "consentid:a0luUlByM3NGTFp2dkMyQkJXdHoxdHFVeHI2TEM5Yms,consent:no,action:,\
                 necessary:yes,functional:yes,analytics:no,performance:no,advertisement:no"
            ),
            owned(&["functional", "necessary"])
        );
        // A rejection (`action:yes`, only necessary), same source kind.
        assert_eq!(
            keys(
                "consentid:WHRLbHhJZVJlTXR3b0F4MUpUQWNCZDRNbXRpTWNEcmE,consent:no,action:yes,\
                 necessary:yes,functional:no,analytics:no,performance:no,advertisement:no,other:no"
            ),
            owned(&["necessary"])
        );
    }

    #[test]
    fn meta_fields_never_grant() {
        // An acceptance of everything, same source kind: `consent:yes` and `action:yes` are not
        // categories.
        assert_eq!(
            keys(
                "consentid:d2JnOWNtWmgyM0pMdEU0ZkZXSGhzdE9BaTkxekF3WEk,consent:yes,action:yes,\
                 necessary:yes,functional:yes,analytics:yes,performance:yes,advertisement:yes,other:yes"
            ),
            owned(&[
                "advertisement",
                "analytics",
                "functional",
                "necessary",
                "other",
                "performance"
            ])
        );
    }

    #[test]
    fn cookie_before_any_choice_decodes_to_nothing() {
        // A value with every status empty (no choice recorded yet), same source kind.
        assert_eq!(
            keys(
                "consentid:YjZOOUV4T2h6UkFoTUwzM2ZpWGE0SFFpZXZaUXFhMk8,consent:,action:,\
                 necessary:,functional:,analytics:,performance:,advertisement:,other:"
            ),
            Some(vec![])
        );
    }

    #[test]
    fn percent_encoded_value_is_read() {
        // The rejection above percent-encoded as a whole.
        assert_eq!(
            keys(
                "consentid%3AWHRLbHhJZVJlTXR3b0F4MUpUQWNCZDRNbXRpTWNEcmE%2Cconsent%3Ano%2C\
                 action%3Ayes%2Cnecessary%3Ayes%2Cfunctional%3Ano%2Canalytics%3Ayes"
            ),
            owned(&["analytics", "necessary"])
        );
    }

    #[test]
    fn malformed_and_truncated_values_do_not_decode() {
        for v in [
            "",
            ",",
            "yes",
            "analytics",
            "consentid:abc,analytics",
            ":yes",
            "analytics:yes,:yes",
            "consentid%3Aabc%2Canalytics",
        ] {
            assert_eq!(keys(v), None, "{v:?}");
        }
        // Cut after a key: that part does not decode; cut inside `yes`: not granted.
        assert_eq!(keys("consentid:abc,consent:yes,analytics"), None);
        assert_eq!(keys("consentid:abc,analytics:ye"), Some(vec![]));
    }

    #[test]
    fn never_panics() {
        for input in super::super::tests::noise() {
            let _ = decode(&input);
        }
    }
}
