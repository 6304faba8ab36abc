//! Format `cc_cookie`: orestbida/cookieconsent's `cc_cookie`.
//!
//! A JSON object whose category array is granted:
//! - v3 writes `encodeURIComponent(JSON.stringify({categories, revision, data, consentTimestamp,
//!   consentId, services, lastConsentTimestamp, ...}))` (orestbida/cookieconsent
//!   `src/utils/cookies.js`, `setCookie`);
//! - v2 writes raw JSON, percent-encoded only with `use_rfc_cookie`; up to v2.8 the array is
//!   `level`, from v2.9 both `categories` and a copy in `level` (orestbida/cookieconsent v2
//!   `src/cookieconsent.js`, "Copy of the `categories` property for compatibility purposes with
//!   version v2.8.0 and below").
//!
//! `categories` is read when present, else `level`. The v3 `services` (services enabled within
//! each category) grant nothing: registry entries name categories.

use serde_json::Value;

use super::json;
use super::value::Granted;

/// Decodes a `cc_cookie` value; `None` unless it is a JSON object with a `categories` or
/// `level` array.
pub fn decode(value: &[u8]) -> Option<Granted> {
    let Value::Object(mut map) = json::parse(value)? else {
        return None;
    };
    let list = match map.remove("categories") {
        Some(list) => list,
        None => map.remove("level")?,
    };
    match list {
        Value::Array(items) => json::strings(items),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::consent::test_support::keys_with;

    fn keys(v: &str) -> Option<Vec<String>> {
        keys_with(decode, v)
    }

    #[test]
    fn v3_percent_encoded_categories_are_granted() {
        // The cc_cookie of chat.mistral.ai (v3: consentId, services, expirationTime), as captured
        // in a public script's Cookie header.
        assert_eq!(
            keys(
                "%7B%22categories%22%3A%5B%22necessary%22%5D%2C%22revision%22%3A1%2C%22data%22%3Anull\
                 %2C%22consentTimestamp%22%3A%222024-11-20T19%3A02%3A36.823Z%22%2C%22consentId%22%3A\
                 %2212fd04af-4af6-48a3-8531-b7cf317849d1%22%2C%22services%22%3A%7B%22necessary%22%3A\
                 %5B%5D%2C%22analytics%22%3A%5B%5D%2C%22support%22%3A%5B%5D%7D%2C\
                 %22lastConsentTimestamp%22%3A%222024-11-20T19%3A02%3A36.823Z%22%2C\
                 %22expirationTime%22%3A1747854156824%7D"
            ),
            Some(vec!["necessary".to_owned()])
        );
        // happyscribe.com's cc_cookie, same source kind.
        assert_eq!(
            keys(
                "%7B%22categories%22%3A%5B%22necessary%22%2C%22analytics%22%2C%22marketing%22%5D\
                 %2C%22revision%22%3A0%2C%22data%22%3Anull%2C%22consentTimestamp%22%3A\
                 %222024-03-29T14%3A18%3A19.878Z%22%2C%22consentId%22%3A\
                 %22d532bf02-4c6e-43ea-a713-281ff8cefb2d%22%2C%22services%22%3A%7B%22necessary%22\
                 %3A%5B%5D%2C%22analytics%22%3A%5B%5D%2C%22marketing%22%3A%5B%5D%7D%2C\
                 %22lastConsentTimestamp%22%3A%222024-03-29T14%3A18%3A19.878Z%22%7D"
            ),
            Some(vec![
                "analytics".to_owned(),
                "marketing".to_owned(),
                "necessary".to_owned()
            ])
        );
    }

    #[test]
    fn v2_raw_level_is_granted() {
        // stredocesky.ceskyhokej.cz's cc_cookie (v2.8 and below: `level` only), as captured in a
        // public script's Cookie header.
        assert_eq!(
            keys(
                r#"{"level":["necessary","analytics","targeting","social-media"],"revision":0,"data":null,"rfc_cookie":false}"#
            ),
            Some(vec![
                "analytics".to_owned(),
                "necessary".to_owned(),
                "social-media".to_owned(),
                "targeting".to_owned()
            ])
        );
    }

    #[test]
    fn v2_rfc_cookie_is_percent_encoded() {
        // A v2 cookie written with `use_rfc_cookie: true`, from uBlockOrigin/uBOL-home's
        // annoyances-cookies ruleset (values it sets to decline banners on real sites).
        assert_eq!(
            keys(
                "%7B%22level%22%3A%5B%22necessary%22%5D%2C%22revision%22%3A0%2C%22data%22%3A\
                 %7B%22id%22%3A%22DarYF7gx7v%22%7D%2C%22rfc_cookie%22%3Atrue%7D"
            ),
            Some(vec!["necessary".to_owned()])
        );
    }

    #[test]
    fn v2_9_categories_win_over_level() {
        // v2.9 writes both arrays (same uBOL-home ruleset, the "Arena Cookie Consent" entry).
        assert_eq!(
            keys(
                r#"{"categories":["necessary"],"level":["necessary"],"revision":0,"data":null,"rfc_cookie":false,"consent_date":"1970-00-00T00:00:00.000Z","consent_uuid":"00000000-0000-0000-0000-000000000000","last_consent_update":"1970-01-01T00:00:00.000Z"}"#
            ),
            Some(vec!["necessary".to_owned()])
        );
        assert_eq!(
            keys(r#"{"categories":["analytics"],"level":["marketing"]}"#),
            Some(vec!["analytics".to_owned()])
        );
    }

    #[test]
    fn empty_level_grants_nothing_but_decodes() {
        // What a public TestCafe suite expects after saving settings with analytics off.
        assert_eq!(keys(r#"{"level":[],"revision":0}"#), Some(vec![]));
    }

    #[test]
    fn services_and_non_strings_grant_nothing() {
        assert_eq!(
            keys(r#"{"categories":["analytics",3,null],"services":{"analytics":["ga"]}}"#),
            Some(vec!["analytics".to_owned()])
        );
    }

    #[test]
    fn nothing_else_decodes() {
        for v in [
            "",
            "{}",
            r#"{"revision":0}"#,
            r#"{"categories":"analytics"}"#,
            r#"{"level":{"analytics":true}}"#,
            r#"["necessary"]"#,
            r#"{"categories":["necessary""#,
            "%7B%22categories%22%3A%5B%22necessary%22",
            "%7B%22categories%22%3A%5B%22nec",
            "necessary",
        ] {
            assert_eq!(keys(v), None, "{v:?}");
        }
    }

    #[test]
    fn never_panics() {
        for input in super::super::tests::noise() {
            let _ = decode(&input);
        }
    }
}
