//! Format `tcf`: the IAB Europe Transparency & Consent Framework v2 TC string, `euconsent-v2`.
//!
//! The TC string is base64url without padding, segments joined by `.`, the core segment first
//! (IAB Tech Lab, "Consent string and vendor list formats v2"). Only the core segment's fixed
//! head is read, bit by bit, most significant first: Version (6 bits, must be 2), Created (36),
//! LastUpdated (36), CmpId (12), CmpVersion (12), ConsentScreen (6), ConsentLanguage (12),
//! VendorListVersion (12), TcfPolicyVersion (6), IsServiceSpecific (1), UseNonStandardTexts (1),
//! SpecialFeatureOptIns (12), then PurposesConsent (24): bit `i` set grants `purpose{i+1}`.
//! The vendor sections and the other segments grant nothing here. A string too short to hold
//! PurposesConsent (a truncated cookie), of another version, or with a character outside the
//! alphabet does not decode. `+` and `/` (plain base64) and trailing `=` are tolerated.

use super::value::Granted;

/// The bit at which PurposesConsent starts: the sum of the field widths before it.
const PURPOSES_AT: usize = 6 + 36 + 36 + 12 + 12 + 6 + 12 + 12 + 6 + 1 + 1 + 12;

/// Bits read from the core segment: the head through PurposesConsent.
const HEAD_BITS: usize = PURPOSES_AT + 24;

/// Base64 characters holding [`HEAD_BITS`] (6 bits each, rounded up).
const HEAD_CHARS: usize = HEAD_BITS.div_ceil(6);

/// The key each purpose grants, by purpose id - 1.
const PURPOSE_KEYS: [&str; 24] = [
    "purpose1",
    "purpose2",
    "purpose3",
    "purpose4",
    "purpose5",
    "purpose6",
    "purpose7",
    "purpose8",
    "purpose9",
    "purpose10",
    "purpose11",
    "purpose12",
    "purpose13",
    "purpose14",
    "purpose15",
    "purpose16",
    "purpose17",
    "purpose18",
    "purpose19",
    "purpose20",
    "purpose21",
    "purpose22",
    "purpose23",
    "purpose24",
];

/// The 6-bit value of a base64url (or base64) character.
fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' | b'+' => Some(62),
        b'_' | b'/' => Some(63),
        _ => None,
    }
}

/// Decodes an `euconsent-v2` value; `None` unless its core segment is a TC string of version 2
/// long enough to hold PurposesConsent.
pub fn decode(value: &[u8]) -> Option<Granted> {
    let value = super::value::unquote(value);
    let core = value.split(|&b| b == b'.').next().unwrap_or_default();
    let mut end = core.len();
    while end > 0 && core[end - 1] == b'=' {
        end -= 1;
    }
    let core = &core[..end];
    if core.len() < HEAD_CHARS || !core.iter().all(|&c| sextet(c).is_some()) {
        return None;
    }
    let mut head = [0u8; HEAD_CHARS];
    for (slot, &c) in head.iter_mut().zip(core) {
        *slot = sextet(c)?;
    }
    let bit = |i: usize| (head[i / 6] >> (5 - i % 6)) & 1 == 1;
    let version = (0..6).fold(0u8, |v, i| (v << 1) | u8::from(bit(i)));
    if version != 2 {
        return None;
    }
    Some(Granted::from_keys(
        PURPOSE_KEYS
            .iter()
            .enumerate()
            .filter(|(i, _)| bit(PURPOSES_AT + i))
            .map(|(_, k)| *k),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::consent::test_support::keys_with;

    fn keys(v: &str) -> Option<Vec<String>> {
        keys_with(decode, v)
    }

    fn purposes(ids: &[usize]) -> Option<Vec<String>> {
        let mut keys: Vec<String> = ids.iter().map(|i| format!("purpose{i}")).collect();
        keys.sort();
        Some(keys)
    }

    /// Encodes a core segment head: version, zeros up to PurposesConsent, the purpose bits
    /// (`purposes` bit `i` = purpose `i + 1`), then `tail` zero bits, base64url.
    fn encode(version: u8, purposes: u32, tail: usize) -> String {
        let mut bits = Vec::new();
        bits.extend((0..6).rev().map(|i| (version >> i) & 1 == 1));
        bits.resize(PURPOSES_AT, false);
        bits.extend((0..24).map(|i| (purposes >> i) & 1 == 1));
        bits.resize(bits.len() + tail, false);
        while bits.len() % 6 != 0 {
            bits.push(false);
        }
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        bits.chunks(6)
            .map(|c| {
                let v = c.iter().fold(0usize, |v, &b| (v << 1) | usize::from(b));
                char::from(ALPHABET[v])
            })
            .collect()
    }

    #[test]
    fn published_tc_strings_grant_their_purposes() {
        // Fixtures of LiveRamp/iabconsent (v2_parsed_consent_fixture_test.go), generated with the
        // IAB's encoder at https://iabtcf.com/#/encode, with the PurposesConsent they list.
        assert_eq!(
            keys(
                "COvzTO5OvzTO5B7ABCENAPCYAKdAADkAAIqIFhwBAAGAAXAFGAsMAhYAgAMAAegBYAEKAAA.\
                 IFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAFAAECA\
                 AAgAAQARAEQAAAAAJAAIAAgAAAYQEAAAQmAgBC3ZAYzUw.QE5QAwCvgHyATkA"
            ),
            purposes(&[1, 3, 6, 7, 8, 10])
        );
        assert_eq!(
            keys("COvzTO5OvzTO5BRAAAENAPCoALIAADgAAAAAAewAwABAAlAB6ABBFADBQAQA9hAAAcAA"),
            purposes(&[1, 3, 4, 7])
        );
        // A TCF v2.2 string (TcfPolicyVersion 4).
        assert_eq!(
            keys("COvzTO5OvzTO5B7ABCENAPEYAIAAAIAAAIqIAAoAAoAA.QAAo.IAAo"),
            purposes(&[1])
        );
        // No purpose consented: decodes, grants nothing.
        assert_eq!(
            keys(
                "COvzTO5OvzTO5BZAFMENAPCgAAAAAAAAAAwIFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAgEAACEA\
                 AAAAgAQBAAAAAAAGBAAgAAAAAAAFAAECAAAgAAQARAEQAAAAAJAAIAAgAAAYQEAAAQmAgBC3ZAYzUwLQI\
                 oghAAQhhARggACAIAAAAcQAAEAQAAAAgAQBAIAAEIAAAABAAgCAAAAAAAMCABAAAAAAAAKAAIEAABAAAg\
                 AiAIgAAAAASAAQABAAAAwgIAAAhMBACFuyAxmpgAA"
            ),
            Some(vec![])
        );
    }

    #[test]
    fn refusals_set_by_a_content_blocker_grant_nothing() {
        // euconsent-v2 values uBlockOrigin/uBOL-home's annoyances-cookies ruleset sets to decline
        // TCF banners on real sites.
        for v in [
            "CPubvkAPubvkAAHABBENDMCgAAAAAAAAAB5YAAAAAAAA.YAAAAAAAAAAA",
            "CPzEX8APzEX8ADtACBESAUEgAAAAAAAAAAiQAAAAAAAA",
            "CPtgasAPtgasAAGABCENDECgAAAAAAAAAApAAAAAAAAA.YAAAAAAAAAAA",
        ] {
            assert_eq!(keys(v), Some(vec![]), "{v:?}");
        }
    }

    #[test]
    fn each_purpose_bit_maps_to_its_purpose() {
        for i in 0..24 {
            let s = encode(2, 1 << i, 0);
            assert_eq!(keys(&s), purposes(&[i + 1]), "{s}");
        }
        assert_eq!(
            keys(&encode(2, 0x00ff_ffff, 60)),
            purposes(&(1..=24).collect::<Vec<_>>())
        );
        assert_eq!(keys(&encode(2, 0, 0)), Some(vec![]));
    }

    #[test]
    fn padding_plain_base64_and_quotes_are_tolerated() {
        let s = encode(2, 0b101, 0);
        assert_eq!(keys(&format!("{s}==")), purposes(&[1, 3]));
        assert_eq!(keys(&format!("\"{s}.YAAAAAAAAAAA\"")), purposes(&[1, 3]));
        let all = encode(2, 0x00ff_ffff, 0);
        assert!(all.contains('_'));
        assert_eq!(keys(&all.replace('_', "/")), keys(&all));
    }

    #[test]
    fn other_versions_do_not_decode() {
        // TCF v1 (IAB's v1.1 example, version 1), and a made-up version 3.
        assert_eq!(keys("BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA"), None);
        assert_eq!(keys(&encode(1, 1, 60)), None);
        assert_eq!(keys(&encode(3, 1, 60)), None);
    }

    #[test]
    fn truncated_and_malformed_strings_do_not_decode() {
        let real = "COvzTO5OvzTO5BRAAAENAPCoALIAADgAAAAAAewAwABAAlAB6ABBFADBQAQA9hAAAcAA";
        for end in 0..HEAD_CHARS {
            assert_eq!(keys(&real[..end]), None, "{:?}", &real[..end]);
        }
        assert_eq!(keys(&real[..HEAD_CHARS]), purposes(&[1, 3, 4, 7]));
        for v in [
            "",
            ".",
            ".COvzTO5OvzTO5BRAAAENAPCoALIAADgAAAAAAewAwABAAlAB6ABBFADBQAQA9hAAAcAA",
            "COvzTO5OvzTO5BRAAAENAPCoALIA ADgAAAAAAewAwABAAlAB6ABBFADBQAQA9hAAAcAA",
            "COvzTO5OvzTO5BRAAAENAPCoALIA%3DADgAAAAAAewAwABAAlAB6ABBFADBQAQA9hAAAcAA",
            "COvzTO5OvzTO5BRAAAENAPCoALIA=ADgAAAAAAewAwABAAlAB6ABBFADBQAQA9hAAAcAA",
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
