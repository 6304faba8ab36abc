//! Format `onetrust`: OneTrust's `OptanonConsent` cookie.
//!
//! The value is form-encoded, `isGpcEnabled=0&datestamp=...&groups=C0001%3A1%2CC0002%3A0&...`
//! (OneTrust, "OneTrust Cookies", my.onetrust.com article UUID-2dc719a8): its `groups` field
//! lists `group-id:status` pairs, status `1` for consent. The value is split on `&` first and
//! only then is the `groups` field percent-decoded, so an encoded `&` or `groups=` inside another
//! field (`landingPath`, `datestamp`) cannot inject groups. A raw `C0001:1,C0002:0` is read too.
//! Group ids are taken as they are (`C0002`, `BG50`, `STACK42`, the older numeric `2`); the
//! `hosts` field (per-vendor consent) grants nothing.

use super::value::{Granted, MAX_KEYS};

/// Decodes an `OptanonConsent` value; `None` when it has no `groups` field, a group entry is
/// not `id:status`, or there are more than [`MAX_KEYS`] groups.
pub fn decode(value: &[u8]) -> Option<Granted> {
    let groups = super::value::unquote(value)
        .split(|&b| b == b'&')
        .find_map(|field| field.strip_prefix(b"groups="))?;
    let groups = super::value::percent_decoded(groups);
    let mut keys = Vec::new();
    let mut entries = 0usize;
    for entry in groups.split(|&b| b == b',') {
        let entry = entry.trim_ascii();
        if entry.is_empty() {
            continue;
        }
        entries += 1;
        if entries > MAX_KEYS {
            return None;
        }
        let at = entry.iter().position(|&b| b == b':')?;
        let id = entry[..at].trim_ascii();
        if id.is_empty() {
            return None;
        }
        if entry[at + 1..].trim_ascii() == b"1" {
            // An id that is not UTF-8 can match no registry key.
            if let Ok(id) = std::str::from_utf8(id) {
                keys.push(id);
            }
        }
    }
    Some(Granted::from_keys(keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::consent::test_support::{keys_with, owned};

    fn keys(v: &str) -> Option<Vec<String>> {
        keys_with(decode, v)
    }

    #[test]
    fn full_cookie_grants_groups_with_1() {
        // trustpilot.com's OptanonConsent, as captured in a public script's Cookie header.
        assert_eq!(
            keys(
                "isGpcEnabled=0&datestamp=Mon+May+22+2023+18%3A27%3A21+GMT%2B0530+(India+Standard+Time)\
                 &version=6.28.0&isIABGlobal=false&hosts=&consentId=63880818-a19a-45bf-b393-73fdb59f1e32\
                 &interactionCount=1&landingPath=NotLandingPage\
                 &groups=C0001%3A1%2CC0002%3A1%2CC0003%3A1%2CC0004%3A1&geolocation=IN%3BTN\
                 &AwaitingReconsent=false"
            ),
            owned(&["C0001", "C0002", "C0003", "C0004"])
        );
        // A refusal of everything but C0001 (a Colruyt site's cookie, same source kind).
        assert_eq!(
            keys(
                "isGpcEnabled=0&datestamp=Sat+Mar+23+2024+22%3A01%3A13+GMT%2B0100+\
                 (Midden-Europese+standaardtijd)&version=6.20.0&isIABGlobal=false&hosts=\
                 &consentId=13d04fa6-4999-4c05-92f8-c9cf306cdc29&interactionCount=1\
                 &landingPath=NotLandingPage&groups=C0001%3A1%2CC0003%3A0%2CC0002%3A0%2CC0004%3A0\
                 &geolocation=%3B&AwaitingReconsent=false"
            ),
            owned(&["C0001"])
        );
    }

    #[test]
    fn hosts_field_grants_nothing() {
        // duolingo.com's OptanonConsent (per-host consent in `hosts`), same source kind.
        assert_eq!(
            keys(
                "isGpcEnabled=0&datestamp=Sat+Jun+04+2022+23%3A23%3A24+GMT%2B0300+(Israel+Daylight+Time)\
                 &version=6.16.0&isIABGlobal=false&consentId=b2595719-beb7-417d-b1a1-ae76ea789238\
                 &interactionCount=0&landingPath=https%3A%2F%2Fwww.duolingo.com%2F\
                 &groups=C0001%3A1%2CC0002%3A1%2CC0003%3A1%2CC0004%3A1\
                 &hosts=H3%3A1%2CH14%3A1%2CH11%3A1%2CH1%3A1%2CH15%3A1"
            ),
            owned(&["C0001", "C0002", "C0003", "C0004"])
        );
    }

    #[test]
    fn custom_and_numeric_group_ids_are_kept() {
        // From uBlockOrigin/uBOL-home's annoyances-cookies ruleset (values it sets to decline
        // banners on real sites): OneTrust stacks, and the older numeric group ids.
        assert_eq!(
            keys("groups=C0004%3A0%2CC0003%3A1%2CC0002%3A0%2CC0001%3A1%2CSTACK42%3A0"),
            owned(&["C0001", "C0003"])
        );
        assert_eq!(
            keys("groups=1%3A1%2C2%3A0%2C3%3A1%2C4%3A0%2C5%3A1%2CBG57%3A0%2CBG58%3A0%2CBG59%3A0"),
            owned(&["1", "3", "5"])
        );
    }

    #[test]
    fn raw_groups_are_read() {
        // The groups format as documented by Toolstation's engineering docs,
        // https://toolstation-docs-develop.vercel.getdemo.dev/eu24-web/cookie-consent/effects
        assert_eq!(
            keys("isGpcEnabled=0&groups=C0004:0,C0001:1,C0002:0,C0003:0"),
            owned(&["C0001"])
        );
    }

    #[test]
    fn split_on_ampersand_before_decoding() {
        // An encoded `&groups=` inside another field must not count.
        assert_eq!(
            keys("landingPath=https%3A%2F%2Fx%2F%3Fa%3D1%26groups%3DC0002%3A1&groups=C0001%3A1"),
            owned(&["C0001"])
        );
        assert_eq!(keys("landingPath=%26groups%3DC0002%3A1"), None);
    }

    #[test]
    fn empty_groups_decode_to_nothing() {
        assert_eq!(keys("isGpcEnabled=0&groups=&hosts="), Some(vec![]));
    }

    #[test]
    fn missing_malformed_and_truncated_groups_do_not_decode() {
        for v in [
            "",
            "isGpcEnabled=0&datestamp=Mon",
            "C0001:1,C0002:1",
            "groups",
            "groups=C0001",
            "groups=C0001%3",
            "groups=%3A1",
            "groups=C0001%3A1%2CC0002",
            "Groups=C0001%3A1",
        ] {
            assert_eq!(keys(v), None, "{v:?}");
        }
        // Cut inside the last entry: the id without its status.
        assert_eq!(keys("groups=C0001%3A1%2CC0002%3A"), owned(&["C0001"]));
    }

    #[test]
    fn never_panics() {
        for input in super::super::tests::noise() {
            let _ = decode(&input);
        }
    }
}
