//! What the record builders share: the consent cookie's SHA-256 digest as the audit log writes
//! it, lowercase hex, and the name of a consent's source.

use sha2::{Digest, Sha256};

use crate::policy::consent::{ConsentSpec, Format, Source};
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
        pairs.next().map(|p| hex64(&Sha256::digest(p.value).into()))
    }
}

/// Lowercase hex of a SHA-256 digest.
pub fn hex64(bytes: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    out
}

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
