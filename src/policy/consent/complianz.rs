//! Format `complianz`: Complianz (WordPress) keeps one cookie per consent category.
//!
//! `cmplz_<category>=allow|deny` (`cmplz_functional`, `cmplz_preferences`, `cmplz_statistics`,
//! `cmplz_marketing`; complianz.io, "Cookies from Complianz"), written by the banner's
//! `cmplz_set_consent(category, 'allow'|'deny')` (complianz/complianz-gdpr cookiebanner
//! script). The categories set to `allow` are granted, keyed by the category (`statistics`).
//! The same prefix also names Complianz's bookkeeping cookies (`cmplz_banner-status=dismissed`,
//! `cmplz_policy_id=14`, `cmplz_consented_services=`, `cmplz_id`); their values are never
//! `allow`, so they grant nothing, and as consent cookies they are always necessary.
//!
//! There is no single value to decode: the request's consent is read from all its cookies
//! ([`from_cookies`]) and a response's from each `Set-Cookie` in turn ([`apply`]).
//! `[consent] cookie` is the prefix, `cmplz_` by default.

use super::value::{Granted, MAX_KEYS};

/// The prefix of Complianz's cookies when `[consent] cookie` is not set.
pub const DEFAULT_PREFIX: &str = "cmplz_";

/// Whether a cookie name starts with the prefix. An empty prefix matches nothing, so a bad
/// configuration cannot make every cookie a consent cookie.
pub fn has_prefix(prefix: &str, name: &[u8]) -> bool {
    !prefix.is_empty() && name.starts_with(prefix.as_bytes())
}

/// The category a cookie name carries: the text after the prefix, when non-empty UTF-8.
pub fn category<'a>(prefix: &str, name: &'a [u8]) -> Option<&'a str> {
    if !has_prefix(prefix, name) {
        return None;
    }
    match std::str::from_utf8(&name[prefix.len()..]) {
        Ok(c) if !c.is_empty() => Some(c),
        _ => None,
    }
}

/// Whether a category cookie's value grants it: exactly `allow` (trimmed, unquoted).
pub fn allows(value: &[u8]) -> bool {
    super::value::unquote(value) == b"allow"
}

/// What a request's Complianz cookies say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Categories {
    /// No cookie has the prefix.
    Missing,
    /// More than [`MAX_KEYS`] cookies have the prefix: grants nothing (SPEC, Consent).
    TooMany,
    /// The categories set to `allow`.
    Granted(Granted),
}

/// The categories a request grants, from its cookies as `(name, value)` in order. The first
/// cookie of each category wins, as browsers send the most specific one first. Linear: one
/// hash-set insert per prefixed cookie.
pub fn from_cookies<'a>(
    prefix: &str,
    cookies: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Categories {
    let mut found = 0usize;
    let mut seen: foldhash::HashSet<&str> = foldhash::HashSet::default();
    let mut granted: Vec<&str> = Vec::new();
    for (name, value) in cookies {
        if !has_prefix(prefix, name) {
            continue;
        }
        found += 1;
        if found > MAX_KEYS {
            return Categories::TooMany;
        }
        let Some(category) = category(prefix, name) else {
            continue;
        };
        if !seen.insert(category) {
            continue;
        }
        if allows(value) {
            granted.push(category);
        }
    }
    if found == 0 {
        Categories::Missing
    } else {
        Categories::Granted(Granted::from_keys(granted))
    }
}

/// Applies one `Set-Cookie` of the upstream response to the granted categories `keys`: a
/// category cookie set to `allow` grants its category; set to anything else (`deny`) or deleted,
/// withdraws it. Names without the prefix or without a category change nothing.
pub fn apply(
    keys: &mut std::collections::BTreeSet<Box<str>>,
    prefix: &str,
    name: &[u8],
    value: &[u8],
    is_deletion: bool,
) {
    let Some(category) = category(prefix, name) else {
        return;
    };
    if !is_deletion && allows(value) {
        if !keys.contains(category) {
            keys.insert(category.into());
        }
    } else {
        keys.remove(category);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::request_cookies::pairs;

    fn request(header: &str) -> Option<Vec<String>> {
        match from_cookies(
            DEFAULT_PREFIX,
            pairs(header.as_bytes()).map(|p| (p.name, p.value)),
        ) {
            Categories::Granted(g) => Some(g.keys().map(str::to_owned).collect()),
            Categories::Missing => None,
            Categories::TooMany => panic!("too many"),
        }
    }

    fn owned(keys: &[&str]) -> Option<Vec<String>> {
        Some(keys.iter().map(|k| (*k).to_owned()).collect())
    }

    #[test]
    fn allowed_categories_are_granted() {
        // daily-adventures.cz's Cookie header after "accept all", as captured in a public curl
        // example; the bookkeeping cookies grant nothing.
        assert_eq!(
            request(
                "cmplz_consented_services=; cmplz_policy_id=14; cmplz_marketing=allow; \
                 cmplz_statistics=allow; cmplz_preferences=allow; cmplz_functional=allow; \
                 cmplz_banner-status=dismissed"
            ),
            owned(&["functional", "marketing", "preferences", "statistics"])
        );
    }

    #[test]
    fn denied_categories_are_not_granted() {
        // After `cmplz_deny_all()`: every category `deny` but functional (complianz-gdpr
        // cookiebanner script), beside unrelated cookies.
        assert_eq!(
            request(
                "_ga=GA1.1.85573617.1766952688; cmplz_functional=allow; cmplz_preferences=deny; \
                 cmplz_statistics=deny; cmplz_marketing=deny; cmplz_banner-status=dismissed"
            ),
            owned(&["functional"])
        );
    }

    #[test]
    fn no_prefixed_cookie_is_missing_consent() {
        assert_eq!(request("_ga=1; sessionid=2"), None);
        assert_eq!(request(""), None);
        // A bookkeeping cookie alone is a consent cookie that grants nothing.
        assert_eq!(request("cmplz_banner-status=dismissed"), Some(vec![]));
    }

    #[test]
    fn first_cookie_of_a_category_wins() {
        assert_eq!(
            request("cmplz_marketing=deny; cmplz_marketing=allow; cmplz_statistics=allow"),
            owned(&["statistics"])
        );
    }

    #[test]
    fn only_exact_allow_grants() {
        assert_eq!(
            request(
                "cmplz_marketing=Allow; cmplz_statistics=allowed; cmplz_preferences=\"allow\"; \
                 cmplz_=allow; cmplz_functional=1"
            ),
            owned(&["preferences"])
        );
    }

    #[test]
    fn empty_prefix_matches_nothing() {
        assert!(!has_prefix("", b"cmplz_marketing"));
        assert_eq!(
            from_cookies("", pairs(b"marketing=allow").map(|p| (p.name, p.value))),
            Categories::Missing
        );
    }

    #[test]
    fn more_than_max_keys_prefixed_cookies_grant_nothing() {
        let at_limit: Vec<String> = (0..MAX_KEYS).map(|i| format!("cmplz_c{i}=allow")).collect();
        let header = at_limit.join("; ");
        assert_eq!(request(&header).map(|k| k.len()), Some(MAX_KEYS));
        let over = format!("{header}; cmplz_marketing=allow");
        assert_eq!(
            from_cookies(
                DEFAULT_PREFIX,
                pairs(over.as_bytes()).map(|p| (p.name, p.value))
            ),
            Categories::TooMany
        );
    }

    #[test]
    fn set_cookies_update_the_categories_in_order() {
        let mut keys: std::collections::BTreeSet<Box<str>> =
            ["functional".into(), "statistics".into()]
                .into_iter()
                .collect();
        apply(
            &mut keys,
            DEFAULT_PREFIX,
            b"cmplz_marketing",
            b"allow",
            false,
        );
        apply(
            &mut keys,
            DEFAULT_PREFIX,
            b"cmplz_statistics",
            b"deny",
            false,
        );
        apply(
            &mut keys,
            DEFAULT_PREFIX,
            b"cmplz_banner-status",
            b"dismissed",
            false,
        );
        apply(&mut keys, DEFAULT_PREFIX, b"_ga", b"allow", false);
        assert_eq!(
            keys.iter().map(|k| &**k).collect::<Vec<_>>(),
            ["functional", "marketing"]
        );
        // A deletion withdraws, whatever its value.
        apply(
            &mut keys,
            DEFAULT_PREFIX,
            b"cmplz_functional",
            b"allow",
            true,
        );
        apply(
            &mut keys,
            DEFAULT_PREFIX,
            b"cmplz_marketing",
            b"allow",
            false,
        );
        assert_eq!(keys.iter().map(|k| &**k).collect::<Vec<_>>(), ["marketing"]);
    }

    #[test]
    fn never_panics() {
        for input in super::super::tests::noise() {
            let _ = from_cookies(DEFAULT_PREFIX, pairs(&input).map(|p| (p.name, p.value)));
            let mut keys = std::collections::BTreeSet::new();
            apply(&mut keys, DEFAULT_PREFIX, &input, &input, false);
            let _ = category(DEFAULT_PREFIX, &input);
        }
    }
}
