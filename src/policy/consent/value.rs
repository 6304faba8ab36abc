//! What every consent decoder shares: the [`Granted`] set it returns, the limits that bound its
//! work, and how a cookie value is unquoted and percent-decoded before it is read.

use std::borrow::Cow;
use std::sync::Arc;

/// A consent cookie value longer than this (in bytes, as sent) grants nothing (SPEC, Consent).
pub const MAX_VALUE_BYTES: usize = 8192;

/// A consent value holding more keys than this (members, items, groups or pairs, counted as
/// written, duplicates included; for Complianz, prefixed cookies) grants nothing (SPEC, Consent).
/// Every decoder stops reading once past it, so a hostile value costs no more than a valid one.
pub const MAX_KEYS: usize = 1024;

/// The consent keys a visitor granted. Invariant: sorted and without duplicates.
///
/// Shared, so that a clone (the per-thread memo of decoded values hands out one per request,
/// see [`super::Format::decode`]) allocates nothing. `None`: nothing granted (never an empty
/// slice, so that equality stays equality of the keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    keys: Option<Arc<[Box<str>]>>,
}

impl Granted {
    /// Grants nothing.
    pub fn none() -> Self {
        Granted::default()
    }

    pub fn from_keys<I, S>(keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Box<str>>,
    {
        let mut keys: Vec<Box<str>> = keys.into_iter().map(Into::into).collect();
        keys.sort_unstable();
        keys.dedup();
        Granted {
            keys: (!keys.is_empty()).then(|| Arc::from(keys)),
        }
    }

    fn slice(&self) -> &[Box<str>] {
        self.keys.as_deref().unwrap_or(&[])
    }

    pub fn contains(&self, key: &str) -> bool {
        self.slice().binary_search_by(|k| (**k).cmp(key)).is_ok()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.slice().iter().map(|k| &**k)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_none()
    }
}

/// A cookie value as the decoders read it: trimmed of ASCII whitespace and, when wrapped in
/// double quotes (an RFC 6265 quoted cookie-value), unwrapped.
pub(crate) fn unquote(value: &[u8]) -> &[u8] {
    match value.trim_ascii() {
        [b'"', inner @ .., b'"'] => inner,
        v => v,
    }
}

/// The value with its `%XX` escapes decoded (an invalid escape stays as is); borrowed when there
/// is nothing to decode. `percent_encoding::percent_decode`, after a `%` search (memchr) that
/// spares a value without one the crate's byte-by-byte scan: it runs on every request's
/// consent cookie. Measured against the hand-written decoder it replaces (criterion, same run):
/// 0.74x the time on a portal's encoded cookie, 0.18x on a value without `%`, 1.9x (+200 ns) on
/// OneTrust's `groups`.
pub(crate) fn percent_decoded(value: &[u8]) -> Cow<'_, [u8]> {
    if !value.contains(&b'%') {
        return Cow::Borrowed(value);
    }
    percent_encoding::percent_decode(value).into()
}
