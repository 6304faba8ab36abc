//! Format `json`: Opendatasoft's `cookies_preferences`.
//!
//! The value is a JSON object (keys whose value is `true` are granted; anything else, such as the
//! `timestamp` number, grants nothing) or a JSON array of key strings. It arrives raw or
//! percent-encoded (`encodeURIComponent(JSON.stringify(prefs))`, as the portals write it).

use serde_json::{Map, Value};

use super::value::{Granted, MAX_KEYS};

/// Decodes a `cookies_preferences` value; `None` when it is neither an object nor an array, or
/// when it has more than [`MAX_KEYS`] members or items (SPEC: such a value grants nothing).
///
/// Runs once per request, so it streams: no JSON tree is built, only the granted keys are kept.
/// Same rules as [`parse`] + [`true_keys`]/[`strings`]: a key is granted when its value is exactly
/// `true`, and when a key repeats the last occurrence wins (as in `JSON.parse`).
pub fn decode(value: &[u8]) -> Option<Granted> {
    let value = super::value::unquote(value);
    match value.first() {
        Some(b'{' | b'[') => stream(value),
        Some(_) if value.contains(&b'%') => {
            let decoded = super::value::percent_decoded(value);
            match decoded.trim_ascii().first() {
                Some(b'{' | b'[') => stream(&decoded),
                _ => None,
            }
        }
        _ => None,
    }
}

fn stream(bytes: &[u8]) -> Option<Granted> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let granted = serde::de::Deserializer::deserialize_any(&mut de, GrantedVisitor).ok()?;
    de.end().ok()?;
    Some(granted)
}

/// Visits the top-level object or array.
struct GrantedVisitor;

impl<'de> serde::de::Visitor<'de> for GrantedVisitor {
    type Value = Granted;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object of booleans or an array of keys")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Granted, A::Error> {
        // Last occurrence wins: one hash-map insert per member keeps this linear (a search of
        // the keys seen so far made an 8,000-key value cost a quarter of a second).
        let mut seen: foldhash::HashMap<std::borrow::Cow<'de, str>, bool> =
            foldhash::HashMap::default();
        let mut members = 0usize;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            members += 1;
            if members > MAX_KEYS {
                return Err(serde::de::Error::custom("more than MAX_KEYS keys"));
            }
            let IsTrue(on) = map.next_value()?;
            seen.insert(key, on);
        }
        Ok(Granted::from_keys(
            seen.into_iter()
                .filter(|(_, on)| *on)
                .map(|(k, _)| k.into_owned()),
        ))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Granted, A::Error> {
        let mut keys = Vec::new();
        let mut items = 0usize;
        while let Some(item) = seq.next_element::<MaybeString<'de>>()? {
            items += 1;
            if items > MAX_KEYS {
                return Err(serde::de::Error::custom("more than MAX_KEYS keys"));
            }
            if let MaybeString(Some(s)) = item {
                keys.push(s.into_owned());
            }
        }
        Ok(Granted::from_keys(keys))
    }
}

/// Any JSON value, consumed; true only for the literal `true`.
struct IsTrue(bool);

impl<'de> serde::Deserialize<'de> for IsTrue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = IsTrue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<IsTrue, E> {
                Ok(IsTrue(v))
            }
            fn visit_i64<E>(self, _: i64) -> Result<IsTrue, E> {
                Ok(IsTrue(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<IsTrue, E> {
                Ok(IsTrue(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<IsTrue, E> {
                Ok(IsTrue(false))
            }
            fn visit_str<E>(self, _: &str) -> Result<IsTrue, E> {
                Ok(IsTrue(false))
            }
            fn visit_unit<E>(self) -> Result<IsTrue, E> {
                Ok(IsTrue(false))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<IsTrue, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(IsTrue(false))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<IsTrue, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(IsTrue(false))
            }
        }
        d.deserialize_any(V)
    }
}

/// Any JSON value, consumed; the string when it is one.
struct MaybeString<'de>(Option<std::borrow::Cow<'de, str>>);

impl<'de> serde::Deserialize<'de> for MaybeString<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MaybeString<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<MaybeString<'de>, E> {
                Ok(MaybeString(Some(std::borrow::Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<MaybeString<'de>, E> {
                Ok(MaybeString(Some(std::borrow::Cow::Owned(v.to_owned()))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeString<'de>, E> {
                Ok(MaybeString(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeString<'de>, E> {
                Ok(MaybeString(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeString<'de>, E> {
                Ok(MaybeString(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeString<'de>, E> {
                Ok(MaybeString(None))
            }
            fn visit_unit<E>(self) -> Result<MaybeString<'de>, E> {
                Ok(MaybeString(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<MaybeString<'de>, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MaybeString(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<MaybeString<'de>, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(MaybeString(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a cookie value holding a JSON object or array, raw or percent-encoded (also shared by
/// the `klaro` and `cc_cookie` formats). A value is taken raw when it starts with `{` or `[`
/// (after trimming and unwrapping RFC 6265 double quotes), and percent-decoded otherwise. `None`
/// when it is not an object or array, or does not parse.
pub(super) fn parse(value: &[u8]) -> Option<Value> {
    let value = super::value::unquote(value);
    let parsed = match value.first() {
        Some(b'{' | b'[') => serde_json::from_slice(value).ok()?,
        Some(_) if value.contains(&b'%') => {
            let decoded = super::value::percent_decoded(value);
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

/// The keys of an object whose value is exactly `true` (not `1`, not `"true"`); `None` for an
/// object of more than [`MAX_KEYS`] keys.
pub(super) fn true_keys(map: Map<String, Value>) -> Option<Granted> {
    if map.len() > MAX_KEYS {
        return None;
    }
    Some(Granted::from_keys(
        map.into_iter()
            .filter(|(_, v)| *v == Value::Bool(true))
            .map(|(k, _)| k),
    ))
}

/// The strings of an array; other items grant nothing. `None` for more than [`MAX_KEYS`] items.
pub(super) fn strings(items: Vec<Value>) -> Option<Granted> {
    if items.len() > MAX_KEYS {
        return None;
    }
    Some(Granted::from_keys(items.into_iter().filter_map(
        |v| match v {
            Value::String(s) => Some(s),
            _ => None,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree-building path the streaming `decode` replaces, kept as the reference.
    fn by_tree(v: &[u8]) -> Option<Granted> {
        match parse(v)? {
            Value::Object(map) => true_keys(map),
            Value::Array(items) => strings(items),
            _ => None,
        }
    }

    #[test]
    fn streaming_decode_agrees_with_the_json_tree() {
        let cases = [
            r#"{"ga":true,"matomo":false,"timestamp":1718000000000}"#,
            r#"{"ga":true,"ga":false}"#,
            r#"{"ga":false,"ga":true,"x":{"y":[1,{"z":true}]},"n":null,"s":"true"}"#,
            r#"["ga","xiti",3,null,{"a":1},["b"],"pi\u0061no"]"#,
            "%7B%22necessary%22%3Atrue%2C%22statistical%22%3Afalse%7D",
            r#""{\"ga\":true}""#,
            r#"{"ga":true} trailing"#,
            r#"{"ga":tru}"#,
            "[",
            "{}",
            "[]",
            "42",
            "",
        ];
        for c in cases {
            assert_eq!(decode(c.as_bytes()), by_tree(c.as_bytes()), "{c}");
        }
    }

    use crate::policy::consent::test_support::keys_with;

    fn keys(v: &str) -> Option<Vec<String>> {
        keys_with(decode, v)
    }

    #[test]
    fn object_grants_keys_set_true() {
        // The shape Opendatasoft portals write (see bench/README.md, "Consent cookie format used by the harness").
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
