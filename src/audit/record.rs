//! Audit records: the facts the request path hands over, their canonical serialization, and the
//! seal that chains each line to the one before.
//!
//! Pure: no files, sockets or clocks (times come in as milliseconds since the epoch).
//!
//! # A sealed line
//! The canonical serialization `C` of a record is the compact JSON object (serde_json, no spaces,
//! fields in the order of the structs below) of every field but `prev` and `hash`; it starts with
//! `{` and ends with `}`. Its hash is `H = SHA-256(P ‖ C)`, lowercase hex, where `P` is the
//! previous record's hash as 64 ASCII hex characters. The line written is `C` with its final `}`
//! replaced by `,"prev":"P","hash":"H"}`, then `\n`. So the last [`SEAL_LEN`] (149) bytes of a
//! line (before its newline) are always the seal, and `C` is the line's bytes before them plus
//! `}`: a third party recomputes `H` from the bytes on disk without re-serializing any JSON.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::policy::consent::{Consent, ConsentSpec};
use crate::policy::decide::{Reason, Verdict};

/// The `audit` field of every record: the format's version, and what tells an audit line apart
/// from the access log when both go to one stream.
pub const FORMAT: u32 = 1;

/// Length of a hash in hex.
pub const HASH_LEN: usize = 64;

const PREV_KEY: &[u8] = b",\"prev\":\"";
const HASH_KEY: &[u8] = b"\",\"hash\":\"";
const END: &[u8] = b"\"}";

/// Bytes of the seal at the end of every line: `,"prev":"<64 hex>","hash":"<64 hex>"}`.
pub const SEAL_LEN: usize = PREV_KEY.len() + HASH_LEN + HASH_KEY.len() + HASH_LEN + END.len();

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `H = SHA-256(P ‖ C)` in lowercase hex.
pub fn chain_hash(prev: &str, canonical: &[u8]) -> String {
    String::from_utf8_lossy(&chain_hash_hex(prev.as_bytes(), canonical)).into_owned()
}

/// [`chain_hash`] as 64 ASCII bytes.
pub fn chain_hash_hex(prev: &[u8], canonical: &[u8]) -> [u8; HASH_LEN] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    super::digest::hex64(&h.finalize().into())
}

/// Seals a canonical record after `prev`: returns its hash and the line to write (with `\n`).
/// `canonical` is a JSON object with at least one field (it ends with `}`).
pub fn seal(prev: &str, canonical: &[u8]) -> (String, Vec<u8>) {
    let mut line = Vec::with_capacity(canonical.len() + SEAL_LEN + 1);
    let hash = seal_onto(&mut line, prev.as_bytes(), canonical);
    (String::from_utf8_lossy(&hash).into_owned(), line)
}

/// [`seal`], appending the line to `out`; returns the hash.
pub fn seal_onto(out: &mut Vec<u8>, prev: &[u8], canonical: &[u8]) -> [u8; HASH_LEN] {
    let start = out.len();
    out.reserve(canonical.len() + SEAL_LEN + 1);
    out.extend_from_slice(canonical);
    seal_in_place(out, start, prev)
}

/// [`seal`] of the canonical bytes that end `out` (from `start`), where they are: they become the
/// line. Returns the hash.
pub fn seal_in_place(out: &mut Vec<u8>, start: usize, prev: &[u8]) -> [u8; HASH_LEN] {
    let hash = chain_hash_hex(prev, out.get(start..).unwrap_or_default());
    if out.len() > start && out.last() == Some(&b'}') {
        out.pop();
    }
    out.reserve(SEAL_LEN + 1);
    out.extend_from_slice(PREV_KEY);
    out.extend_from_slice(prev);
    out.extend_from_slice(HASH_KEY);
    out.extend_from_slice(&hash);
    out.extend_from_slice(END);
    out.push(b'\n');
    hash
}

/// A line shaped like a sealed record (its seal not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed<'a> {
    /// `P`, the previous record's hash.
    pub prev: &'a str,
    /// `H`, as written.
    pub hash: &'a str,
    /// `C`, rebuilt from the line.
    pub canonical: Vec<u8>,
}

impl Sealed<'_> {
    /// Whether `hash` is the hash of `prev` and the content.
    pub fn intact(&self) -> bool {
        chain_hash_hex(self.prev.as_bytes(), &self.canonical) == self.hash.as_bytes()
    }
}

fn is_hash(b: &[u8]) -> bool {
    b.len() == HASH_LEN && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads the seal off a line (without its `\n`); `None` when the line does not end with a
/// well-formed seal or has nothing before it (a torn or foreign line).
pub fn unseal(line: &[u8]) -> Option<Sealed<'_>> {
    let at = line.len().checked_sub(SEAL_LEN)?;
    let (head, seal) = line.split_at(at);
    if head.len() < 2 || head.first() != Some(&b'{') {
        return None;
    }
    let rest = seal.strip_prefix(PREV_KEY)?;
    let (prev, rest) = rest.split_at_checked(HASH_LEN)?;
    let rest = rest.strip_prefix(HASH_KEY)?;
    let (hash, rest) = rest.split_at_checked(HASH_LEN)?;
    if rest != END || !is_hash(prev) || !is_hash(hash) {
        return None;
    }
    let mut canonical = Vec::with_capacity(head.len() + 1);
    canonical.extend_from_slice(head);
    canonical.push(b'}');
    Some(Sealed {
        // Checked above: ASCII hex digits.
        prev: std::str::from_utf8(prev).ok()?,
        hash: std::str::from_utf8(hash).ok()?,
        canonical,
    })
}

/// `2026-12-01T10:00:00.123Z` (UTC, milliseconds) for `ms` since the epoch; before 1970 (a
/// clock [`crate::unix_now_ms`] already reads as 0) it is the epoch.
pub fn rfc3339_millis(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(crate::rfc3339_range(t)).to_string()
}

/// The consent a response was judged under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsentFacts {
    /// The request carried the consent cookie.
    pub present: bool,
    /// SHA-256 of its value as sent (hex); `null` without one. Never the value.
    pub digest: Option<String>,
    /// The keys granted for this response's decisions, sorted.
    pub granted: Vec<String>,
    /// The request carried `Sec-GPC: 1`.
    pub gpc: bool,
    /// Where `granted` comes from: `none` (no consent cookie), `undecodable`, `too_large` (over
    /// 8 KiB: not read), `request`, or `response` (a consent cookie the upstream set in this
    /// response).
    pub source: &'static str,
}

impl ConsentFacts {
    /// The facts of a request's `Cookie` header(s) and the consent in effect for its response.
    /// For Complianz (one cookie per category) the digest covers the `name=value` pairs of every
    /// consent cookie, in request order, joined by `; `.
    pub fn new<'h>(
        spec: &ConsentSpec,
        cookie_headers: impl IntoIterator<Item = &'h http::HeaderValue>,
        effective: &Consent,
    ) -> Self {
        let digest = super::digest::consent_digest(spec, cookie_headers)
            .map(|d| String::from_utf8_lossy(&d).into_owned());
        ConsentFacts {
            present: digest.is_some(),
            digest,
            granted: effective.granted.keys().map(str::to_owned).collect(),
            gpc: effective.gpc,
            source: super::digest::source_name(effective.source),
        }
    }
}

/// One `Set-Cookie` of the upstream response and what the gateway did with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CookieFacts {
    /// The cookie's name (invalid UTF-8 replaced by U+FFFD). Never its value.
    pub name: String,
    pub category: String,
    /// `kept`, `dropped` or `would_drop` ([`Verdict::metric_label`]).
    #[serde(serialize_with = "verdict_label")]
    pub verdict: Verdict,
    /// [`Reason::as_str`].
    #[serde(serialize_with = "reason_label")]
    pub reason: Reason,
}

fn verdict_label<S: serde::Serializer>(v: &Verdict, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.metric_label())
}

fn reason_label<S: serde::Serializer>(r: &Reason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

/// A proxied response in which the gateway decided something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResponseFacts {
    /// When the decision was made, milliseconds since the epoch.
    #[serde(skip)]
    pub time_ms: i64,
    /// The registry file's first host name.
    pub host: String,
    pub generation: u64,
    pub registry_digest: String,
    /// `enforce` or `report-only`.
    pub mode: &'static str,
    pub consent: ConsentFacts,
    pub method: String,
    /// The request path, without its query.
    pub path: String,
    pub status: u16,
    pub set_cookies: Vec<CookieFacts>,
    /// Browser cookies removed from the request (would be, in report-only mode).
    pub stripped: Vec<String>,
    /// Browser cookies expired by deletions added to the response (would be, in report-only).
    pub purged: Vec<String>,
}

/// A registry reload that changed the policy, or failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadFacts {
    #[serde(skip)]
    pub time_ms: i64,
    /// The generation serving after the reload.
    pub generation: u64,
    /// The digest of the registry serving after the reload.
    pub registry_digest: String,
    /// `success` or `error`.
    pub result: &'static str,
    /// The first error (`file:line:col: message`) of a failed reload.
    pub error: Option<String>,
}

/// What a process writes first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartFacts {
    /// The gateway's version.
    pub version: &'static str,
    pub generation: u64,
    pub registry_digest: String,
}

/// Records that never reached the log since the last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LossFacts {
    pub lost: u64,
    /// Dropped because the queue was full.
    pub queue_full: u64,
    /// Dropped because writing failed (those that had a `seq` leave a gap).
    pub write_error: u64,
}

/// What the request path and the reloader hand to the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Response(Box<ResponseFacts>),
    Reload(ReloadFacts),
}

/// The fields every record starts with.
#[derive(Serialize)]
struct Record<'a, B: Serialize> {
    audit: u32,
    seq: u64,
    time: &'a str,
    replica: &'a str,
    kind: &'static str,
    #[serde(flatten)]
    body: &'a B,
}

/// The fields of every record before `prev`, as the writer stamps them.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub seq: u64,
    pub time_ms: i64,
    pub replica: &'a str,
}

fn canonical<B: Serialize>(stamp: Stamp<'_>, kind: &'static str, body: &B) -> Vec<u8> {
    let time = rfc3339_millis(stamp.time_ms);
    let record = Record {
        audit: FORMAT,
        seq: stamp.seq,
        time: &time,
        replica: stamp.replica,
        kind,
        body,
    };
    // Serializing these types cannot fail: no maps with non-string keys, no fallible impls.
    serde_json::to_vec(&record).unwrap_or_default()
}

/// The canonical serialization of an event's record.
pub fn canonical_event(stamp: Stamp<'_>, event: &Event) -> Vec<u8> {
    match event {
        Event::Response(r) => canonical(stamp, "response", &**r),
        Event::Reload(r) => canonical(stamp, "reload", r),
    }
}

/// The canonical serialization of a `start` record.
pub fn canonical_start(stamp: Stamp<'_>, facts: &StartFacts) -> Vec<u8> {
    canonical(stamp, "start", facts)
}

/// The canonical serialization of a `loss` record.
pub fn canonical_loss(stamp: Stamp<'_>, facts: &LossFacts) -> Vec<u8> {
    canonical(stamp, "loss", facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn stamp(seq: u64) -> Stamp<'static> {
        Stamp {
            seq,
            time_ms: 1_764_583_200_123,
            replica: "pod-a",
        }
    }

    #[test]
    fn seal_is_149_bytes_and_unseals_to_the_same_canonical_bytes() {
        let c = canonical_loss(
            stamp(7),
            &LossFacts {
                lost: 3,
                queue_full: 3,
                write_error: 0,
            },
        );
        assert_eq!(SEAL_LEN, 149);
        let (hash, line) = seal(ZERO, &c);
        assert_eq!(*line.last().unwrap(), b'\n');
        let body = &line[..line.len() - 1];
        let s = unseal(body).unwrap();
        assert_eq!(s.prev, ZERO);
        assert_eq!(s.hash, hash);
        assert_eq!(s.canonical, c);
        assert!(s.intact());
        // The hash is over P then C, as documented.
        let mut bytes = ZERO.as_bytes().to_vec();
        bytes.extend_from_slice(&c);
        assert_eq!(sha256_hex(&bytes), hash);
        // The line is JSON with the record's fields, prev and hash last.
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["kind"], "loss");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["audit"], 1);
        assert_eq!(v["prev"], ZERO);
        assert_eq!(v["hash"], hash.as_str());
    }

    #[test]
    fn canonical_fields_come_in_a_fixed_order() {
        let c = canonical_start(
            stamp(1),
            &StartFacts {
                version: "1.2.3",
                generation: 4,
                registry_digest: "ab".into(),
            },
        );
        assert_eq!(
            String::from_utf8(c).unwrap(),
            r#"{"audit":1,"seq":1,"time":"2025-12-01T10:00:00.123Z","replica":"pod-a","kind":"start","version":"1.2.3","generation":4,"registry_digest":"ab"}"#
        );
    }

    #[test]
    fn any_changed_byte_breaks_the_seal() {
        let c = canonical_loss(
            stamp(2),
            &LossFacts {
                lost: 1,
                queue_full: 0,
                write_error: 1,
            },
        );
        let (_, line) = seal(ZERO, &c);
        let body = &line[..line.len() - 1];
        for i in 0..body.len() {
            let mut bad = body.to_vec();
            bad[i] ^= 0x01;
            let ok = unseal(&bad).is_some_and(|s| s.intact());
            assert!(!ok, "byte {i} changed and the seal still holds");
        }
    }

    #[test]
    fn foreign_and_torn_lines_do_not_unseal() {
        assert!(unseal(b"").is_none());
        assert!(unseal(b"{\"timestamp\":\"x\",\"level\":\"INFO\"}").is_none());
        let (_, line) = seal(ZERO, br#"{"a":1}"#);
        for cut in 0..line.len() - 1 {
            assert!(unseal(&line[..cut]).is_none(), "cut at {cut}");
        }
        // Upper-case hex is not what the writer writes.
        let upper = String::from_utf8(line[..line.len() - 1].to_vec())
            .unwrap()
            .replace(ZERO, &ZERO.replace('0', "A"));
        assert!(unseal(upper.as_bytes()).is_none());
    }

    #[test]
    fn times_are_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_825_600_007), "2000-02-29T12:00:00.007Z");
        assert_eq!(
            rfc3339_millis(1_795_435_200_999),
            "2026-11-23T12:00:00.999Z"
        );
        assert_eq!(rfc3339_millis(-1), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(i64::MAX), "9999-12-31T23:59:59.000Z");
    }

    #[test]
    fn consent_digest_is_of_the_first_consent_cookie_value() {
        use crate::policy::consent::Format;
        let spec = ConsentSpec::new("cookies_preferences", Format::Json);
        let h = [http::HeaderValue::from_static(
            "a=1; cookies_preferences=%7B%22ga%22%3Atrue%7D; cookies_preferences=x",
        )];
        let consent = crate::policy::consent::from_request_headers(&spec, &{
            let mut m = http::HeaderMap::new();
            m.insert(http::header::COOKIE, h[0].clone());
            m
        });
        let f = ConsentFacts::new(&spec, &h, &consent);
        assert!(f.present);
        assert_eq!(
            f.digest.as_deref(),
            Some(sha256_hex(b"%7B%22ga%22%3Atrue%7D").as_str())
        );
        assert_eq!(f.granted, vec!["ga".to_owned()]);
        assert_eq!(f.source, "request");
        let none = ConsentFacts::new(&spec, &[], &Consent::none());
        assert!(!none.present);
        assert_eq!(none.digest, None);
        assert_eq!(none.source, "none");
    }

    #[test]
    fn complianz_digest_covers_every_category_cookie() {
        use crate::policy::consent::Format;
        let spec = ConsentSpec::new("cmplz_", Format::Complianz);
        let h = [http::HeaderValue::from_static(
            "cmplz_statistics=allow; x=1; cmplz_marketing=deny",
        )];
        let f = ConsentFacts::new(&spec, &h, &Consent::none());
        assert_eq!(
            f.digest.as_deref(),
            Some(sha256_hex(b"cmplz_statistics=allow; cmplz_marketing=deny").as_str())
        );
    }
}
