//! What the record builders share: the consent cookie's SHA-256 digest as the audit log writes
//! it, lowercase hex, and the name of a consent's source.

use sha2::{Digest, Sha256};

use crate::policy::consent::{ConsentSpec, Format, Source};
use crate::policy::recent::Recent;
use crate::policy::request_cookies::all_pairs;

/// SHA-256 (hex) of the consent cookie's value as sent; for Complianz, of the `name=value` pairs
/// of every consent cookie in request order joined by `; `. `None` without a consent cookie.
pub fn consent_digest<'h>(
    spec: &ConsentSpec,
    cookie_headers: impl IntoIterator<Item = &'h http::HeaderValue>,
) -> Option<[u8; 64]> {
    let mut pairs = all_pairs(cookie_headers).filter(|p| spec.is_consent_cookie(p.name));
    if spec.format == Format::Complianz {
        let mut h = Sha256::new();
        let mut any = false;
        for p in pairs {
            if any {
                h.update(b"; ");
            }
            any = true;
            h.update(p.name);
            h.update(b"=");
            h.update(p.value);
        }
        any.then(|| hex64(&h.finalize().into()))
    } else {
        pairs.next().map(|p| value_digest(p.value))
    }
}

thread_local! {
    /// The consent values this thread hashed lately, with their digests ([`Recent`]): a
    /// visitor's consent value comes back with each of their requests.
    static MEMO: std::cell::RefCell<Recent<(), [u8; 64]>> = std::cell::RefCell::default();
}

/// The hex SHA-256 of one consent value, from [`MEMO`] when it was hashed lately.
fn value_digest(value: &[u8]) -> [u8; 64] {
    Recent::through(&MEMO, (), value, || hex64(&Sha256::digest(value).into()))
}

/// Lowercase hex of a SHA-256 digest.
pub fn hex64(bytes: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
    out
}

/// The two lowercase hex digits of each byte value: one look-up a byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [DIGITS[b >> 4], DIGITS[b & 15]];
        b += 1;
    }
    t
};

/// The `source` of a consent: see [`super::record::ConsentFacts::source`].
pub fn source_name(s: Source) -> &'static str {
    match s {
        Source::Missing => "none",
        Source::Undecodable => "undecodable",
        Source::TooLarge => "too_large",
        Source::Cookie => "request",
        Source::Response => "response",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(v: &[u8]) -> [u8; 64] {
        hex64(&Sha256::digest(v).into())
    }

    #[test]
    fn remembered_digests_are_the_digests_of_their_values() {
        // More distinct values than are remembered, in turns, then each again; and values
        // that differ only in their last byte or length, and one too long to remember.
        let values: Vec<Vec<u8>> = (0..crate::policy::recent::ENTRIES * 2 + 3)
            .map(|i| format!("%7B%22necessary%22%3Atrue%7D{i}").into_bytes())
            .collect();
        for round in 0..3 {
            for (i, v) in values.iter().enumerate() {
                assert_eq!(value_digest(v), plain(v), "round {round}, value {i}");
                let mut w = v.clone();
                w.push(b'x');
                assert_eq!(value_digest(&w), plain(&w));
                assert_eq!(value_digest(&v[..v.len() - 1]), plain(&v[..v.len() - 1]));
            }
        }
        let long = vec![b'a'; crate::policy::recent::MAX_VALUE + 1];
        assert_eq!(value_digest(&long), plain(&long));
        assert_eq!(value_digest(b""), plain(b""));
    }
}
