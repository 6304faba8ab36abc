//! Format `klaro`: Klaro's `klaro` cookie.
//!
//! A JSON object of service name to boolean, `{"matomo":true,"youtube":false}`: the services set
//! to `true` are granted. Klaro writes it percent-encoded
//! (`encodeURIComponent(JSON.stringify(consents))`); releases up to 0.7 wrote the raw JSON
//! (klaro-org/klaro-js, `src/consent-manager.js`, `saveConsents`). Both are read, through the
//! `json` format's parser.

use serde_json::Value;

use super::json;
use super::value::Granted;

/// Decodes a `klaro` value; `None` unless it is a JSON object.
pub fn decode(value: &[u8]) -> Option<Granted> {
    match json::parse(value)? {
        Value::Object(map) => json::true_keys(map),
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
    fn percent_encoded_services_set_true_are_granted() {
        // The `klaro` cookie of a request in the public advisory
        // https://cxsecurity.com/ascii/WLB-2023040041 (a site running Klaro).
        assert_eq!(
            keys("%7B%22klaro%22%3Atrue%2C%22mathCaptcha%22%3Atrue%7D"),
            Some(vec!["klaro".to_owned(), "mathCaptcha".to_owned()])
        );
        // creopard.de's refusal, from uBlockOrigin/uBOL-home's annoyances-cookies ruleset
        // (values it sets to decline banners on real sites).
        assert_eq!(
            keys(
                "%7B%22klaro%22%3Atrue%2C%22cms%22%3Atrue%2C%22adsense%22%3Afalse%2C\
                 %22youtube%22%3Afalse%2C%22twitter%22%3Afalse%2C%22matomo%22%3Afalse%7D"
            ),
            Some(vec!["cms".to_owned(), "klaro".to_owned()])
        );
    }

    #[test]
    fn service_names_with_dashes_are_kept_whole() {
        // The `klaro` cookie sent to www.mrw.es, as captured in a public scraper's Cookie header.
        assert_eq!(
            keys(
                "%7B%22necessary-cookies%22%3Atrue%2C%22preferences%22%3Afalse%2C\
                 %22google-analytics%22%3Afalse%2C%22google-ads%22%3Afalse%7D"
            ),
            Some(vec!["necessary-cookies".to_owned()])
        );
    }

    #[test]
    fn raw_json_of_older_releases_is_read() {
        // The first example above as Klaro <= 0.7 wrote it (JSON.stringify, not encoded).
        assert_eq!(
            keys(r#"{"klaro":true,"mathCaptcha":false}"#),
            Some(vec!["klaro".to_owned()])
        );
    }

    #[test]
    fn nothing_else_decodes() {
        for v in [
            "",
            "true",
            r#"["matomo"]"#,
            "%5B%22matomo%22%5D",
            r#"{"matomo":tru"#,
            "%7B%22matomo%22%3Atrue",
            "%7B%22matomo%22%3Atr",
            "matomo=true",
            "null",
        ] {
            assert_eq!(keys(v), None, "{v:?}");
        }
    }

    #[test]
    fn truthy_values_other_than_true_grant_nothing() {
        assert_eq!(
            keys(r#"{"matomo":1,"youtube":"true","ga":null}"#),
            Some(vec![])
        );
    }

    #[test]
    fn never_panics() {
        for input in super::super::tests::noise() {
            let _ = decode(&input);
        }
    }
}
