//! Format `json`: Opendatasoft's `cookies_preferences`.
//!
//! The value is a JSON object (keys whose value is `true` are granted; anything else, such as the
//! `timestamp` number, grants nothing) or a JSON array of key strings. It arrives raw or
//! percent-encoded (`encodeURIComponent(JSON.stringify(prefs))`, as the portals write it).

use serde_json::{Map, Value};

use super::Granted;

/// Decodes a `cookies_preferences` value; `None` when it is neither an object nor an array.
pub fn decode(value: &[u8]) -> Option<Granted> {
    match parse(value)? {
        Value::Object(map) => Some(true_keys(map)),
        Value::Array(items) => Some(strings(items)),
        _ => None,
    }
}

/// Parses a cookie value holding a JSON object or array, raw or percent-encoded (also shared by
/// the `klaro` and `cc_cookie` formats). A value is taken raw when it starts with `{` or `[`
/// (after trimming and unwrapping RFC 6265 double quotes), and percent-decoded otherwise. `None`
/// when it is not an object or array, or does not parse.
pub(super) fn parse(value: &[u8]) -> Option<Value> {
    let value = super::unquote(value);
    let parsed = match value.first() {
        Some(b'{' | b'[') => serde_json::from_slice(value).ok()?,
        Some(_) if value.contains(&b'%') => {
            let decoded = super::percent_decoded(value);
            match decoded.trim_ascii().first() {
                Some(b'{' | b'[') => serde_json::from_slice(&decoded).ok()?,
                _ => return None,
            }
        }
        _ => return None,
    };
    match parsed {
        Value::Object(_) | Value::Array(_) => Some(parsed),
        _ => None,
    }
}

/// The keys of an object whose value is exactly `true` (not `1`, not `"true"`).
pub(super) fn true_keys(map: Map<String, Value>) -> Granted {
    Granted::from_keys(
        map.into_iter()
            .filter(|(_, v)| *v == Value::Bool(true))
            .map(|(k, _)| k),
    )
}

/// The strings of an array; other items grant nothing.
pub(super) fn strings(items: Vec<Value>) -> Granted {
    Granted::from_keys(items.into_iter().filter_map(|v| match v {
        Value::String(s) => Some(s),
        _ => None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &str) -> Option<Vec<String>> {
        decode(v.as_bytes()).map(|g| g.keys().map(str::to_owned).collect())
    }

    #[test]
    fn object_grants_keys_set_true() {
        // The shape Opendatasoft portals write (see ../shared/bench/README.md).
        assert_eq!(
            keys(r#"{"ga":true,"matomo":false,"timestamp":1718000000000}"#),
            Some(vec!["ga".to_owned()])
        );
    }

    #[test]
    fn percent_encoded_object_is_decoded() {
        assert_eq!(
            keys(
                "%7B%22necessary%22%3Atrue%2C%22statistical%22%3Afalse%2C%22marketing%22%3Atrue%7D"
            ),
            Some(vec!["marketing".to_owned(), "necessary".to_owned()])
        );
    }

    #[test]
    fn array_grants_its_strings() {
        assert_eq!(
            keys(r#"["ga","xiti",3,null]"#),
            Some(vec!["ga".to_owned(), "xiti".to_owned()])
        );
        assert_eq!(keys("%5B%22piano%22%5D"), Some(vec!["piano".to_owned()]));
    }

    #[test]
    fn truthy_values_other_than_true_grant_nothing() {
        assert_eq!(
            keys(r#"{"ga":1,"matomo":"true","xiti":{"on":true}}"#),
            Some(vec![])
        );
    }

    #[test]
    fn quoted_value_is_unwrapped() {
        assert_eq!(keys(r#""{"ga":true}""#), Some(vec!["ga".to_owned()]));
    }

    #[test]
    fn anything_else_does_not_decode() {
        for v in [
            "",
            "true",
            "\"ga\"",
            "42",
            "{",
            "{\"ga\":tru}",
            "%7B",
            "%ZZ",
            "ga=true",
            "null",
            "%22ga%22",
        ] {
            assert_eq!(keys(v), None, "{v:?}");
        }
    }
}
