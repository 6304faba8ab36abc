//! The request path's compact form of a record, and its canonical serialization on the writer
//! thread.
//!
//! The request path writes the facts of a response into one small byte buffer (a
//! [`ResponseDraft`]: tagged fields, no JSON, no allocation per field), which the queue copies
//! into its own buffer; the writer thread turns it into the canonical JSON of [`super::record`]
//! straight into its output. The bytes are exactly those serde_json writes for
//! [`ResponseFacts`] ([`super::record::canonical_event`], tested against it), so the documented
//! serialization does not change: this is only a cheaper way to the same bytes.
//!
//! Pure: no files, sockets or clocks.

use super::digest::{consent_digest, source_name};
use super::record::{ConsentFacts, ReloadFacts, ResponseFacts, Stamp, FORMAT};
use crate::policy::consent::{Consent, ConsentSpec};
use crate::policy::decide::{Reason, Verdict};

// Tags of the fields. Numbers take 8 bytes (little-endian); strings a 4-byte length, then their
// bytes: UTF-8 (from a `&str`), except cookie names, which go in as sent and are made UTF-8 by the
// writer ([`put_str`]).
const TIME: u8 = 1;
const HOST: u8 = 2;
const GENERATION: u8 = 3;
const REGISTRY_DIGEST: u8 = 4;
const MODE: u8 = 5;
const PRESENT: u8 = 6;
const CONSENT_DIGEST: u8 = 7;
const GRANTED: u8 = 8;
const GPC: u8 = 9;
const SOURCE: u8 = 10;
const METHOD: u8 = 11;
const PATH: u8 = 12;
const STATUS: u8 = 13;
/// Two strings, name and category, then the verdict's and the reason's codes (a byte each: their
/// places in [`VERDICTS`] and [`REASONS`]).
const COOKIE: u8 = 14;
const STRIPPED: u8 = 15;
const PURGED: u8 = 16;
const RESULT: u8 = 17;
const ERROR: u8 = 18;

/// A cookie's verdict by code.
const VERDICTS: [Verdict; 3] = [Verdict::Keep, Verdict::Drop, Verdict::WouldDrop];

fn verdict_code(v: Verdict) -> u8 {
    match v {
        Verdict::Keep => 0,
        Verdict::Drop => 1,
        Verdict::WouldDrop => 2,
    }
}

/// A cookie's reason by code.
const REASONS: [Reason; 7] = [
    Reason::ConsentCookie,
    Reason::Necessary,
    Reason::Granted,
    Reason::Deletion,
    Reason::NotGranted,
    Reason::Gpc,
    Reason::Unknown,
];

fn reason_code(r: Reason) -> u8 {
    match r {
        Reason::ConsentCookie => 0,
        Reason::Necessary => 1,
        Reason::Granted => 2,
        Reason::Deletion => 3,
        Reason::NotGranted => 4,
        Reason::Gpc => 5,
        Reason::Unknown => 6,
    }
}

fn is_number(tag: u8) -> bool {
    matches!(tag, TIME | GENERATION | PRESENT | GPC | STATUS)
}

/// A `response` record being built on the request path: one buffer, filled in any order (the
/// proxy writes each list's items one after the other, which the writer reads fastest).
#[derive(Debug, Clone)]
pub struct ResponseDraft {
    /// Starts with the time (tag and 8 bytes), the rest in the order written.
    buf: Vec<u8>,
}

impl Default for ResponseDraft {
    fn default() -> Self {
        ResponseDraft::new()
    }
}

/// Bytes a draft starts with room for: a record of the bench's `/` (7 `Set-Cookie` headers)
/// takes about 620.
const DRAFT_BYTES: usize = 1024;

thread_local! {
    /// The buffer of the last draft dropped on this thread, for the next one: a draft lives
    /// from the response's filter to its hand-off to the queue (no `.await` in between), so
    /// each worker thread needs one, and requests allocate none.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Drop for ResponseDraft {
    fn drop(&mut self) {
        if self.buf.capacity() == DRAFT_BYTES {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            // (Fails only while the thread exits: the buffer is freed instead.)
            let _ = SPARE.try_with(|spare| spare.set(buf));
        }
    }
}

/// The request's and the policy's facts of a `response` record.
#[derive(Debug, Clone, Copy)]
pub struct ResponseHead<'a> {
    /// When the decision was made, milliseconds since the epoch.
    pub time_ms: i64,
    /// The registry file's first host name.
    pub host: &'a str,
    pub generation: u64,
    pub registry_digest: &'a str,
    /// `enforce` or `report-only`.
    pub mode: &'a str,
    pub method: &'a str,
    /// The request path, without its query.
    pub path: &'a str,
    pub status: u16,
}

impl ResponseDraft {
    /// An empty draft, with room for a typical record.
    pub fn new() -> Self {
        let spare = SPARE.try_with(std::cell::Cell::take).unwrap_or_default();
        let mut buf = match spare.capacity() {
            0 => Vec::with_capacity(DRAFT_BYTES),
            _ => spare,
        };
        // The time comes first, whenever [`Self::head`] is called (after the filter's
        // `set_cookie`s): what follows it is the same for every response of one page under one
        // consent, which [`ResponseWriter`] relies on.
        buf.push(TIME);
        buf.extend_from_slice(&0u64.to_le_bytes());
        ResponseDraft { buf }
    }

    fn num(&mut self, tag: u8, n: u64) {
        self.buf.push(tag);
        self.buf.extend_from_slice(&n.to_le_bytes());
    }

    fn put(&mut self, s: &[u8]) {
        // A string over 4 GiB cannot come from one request; cut rather than mis-frame.
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf
            .extend_from_slice(s.get(..len as usize).unwrap_or(s));
    }

    fn str(&mut self, tag: u8, s: &[u8]) {
        self.buf.push(tag);
        self.put(s);
    }

    /// The facts known without the filter.
    pub fn head(&mut self, h: &ResponseHead<'_>) {
        if let Some(time) = self.buf.get_mut(1..9) {
            time.copy_from_slice(&(h.time_ms as u64).to_le_bytes());
        }
        self.str(HOST, h.host.as_bytes());
        self.num(GENERATION, h.generation);
        self.str(REGISTRY_DIGEST, h.registry_digest.as_bytes());
        self.str(MODE, h.mode.as_bytes());
        self.str(METHOD, h.method.as_bytes());
        self.str(PATH, h.path.as_bytes());
        self.num(STATUS, u64::from(h.status));
    }

    /// The consent the response was judged under, as [`ConsentFacts::new`] has it.
    pub fn consent<'h>(
        &mut self,
        spec: &ConsentSpec,
        cookie_headers: impl IntoIterator<Item = &'h http::HeaderValue>,
        effective: &Consent,
    ) {
        let digest = consent_digest(spec, cookie_headers);
        self.num(PRESENT, u64::from(digest.is_some()));
        if let Some(d) = &digest {
            self.str(CONSENT_DIGEST, d);
        }
        for k in effective.granted.keys() {
            self.str(GRANTED, k.as_bytes());
        }
        self.num(GPC, u64::from(effective.gpc));
        self.str(SOURCE, source_name(effective.source).as_bytes());
    }

    fn consent_facts(&mut self, f: &ConsentFacts) {
        self.num(PRESENT, u64::from(f.present));
        if let Some(d) = &f.digest {
            self.str(CONSENT_DIGEST, d.as_bytes());
        }
        for k in &f.granted {
            self.str(GRANTED, k.as_bytes());
        }
        self.num(GPC, u64::from(f.gpc));
        self.str(SOURCE, f.source.as_bytes());
    }

    /// One upstream `Set-Cookie` and what was done with it. Call in header order. The name goes
    /// in as sent: the record has it with invalid UTF-8 replaced by U+FFFD.
    pub fn set_cookie(&mut self, name: &[u8], category: &str, verdict: Verdict, reason: Reason) {
        self.buf.push(COOKIE);
        self.put(name);
        self.put(category.as_bytes());
        self.buf.push(verdict_code(verdict));
        self.buf.push(reason_code(reason));
    }

    /// A browser cookie removed from the request (its name as for [`Self::set_cookie`]).
    pub fn stripped(&mut self, name: &[u8]) {
        self.str(STRIPPED, name);
    }

    /// A browser cookie a deletion was added for (its name as for [`Self::set_cookie`]).
    pub fn purged(&mut self, name: &[u8]) {
        self.str(PURGED, name);
    }

    /// The encoded facts.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

impl From<&ResponseFacts> for ResponseDraft {
    fn from(r: &ResponseFacts) -> Self {
        let mut d = ResponseDraft::new();
        d.head(&ResponseHead {
            time_ms: r.time_ms,
            host: &r.host,
            generation: r.generation,
            registry_digest: &r.registry_digest,
            mode: r.mode,
            method: &r.method,
            path: &r.path,
            status: r.status,
        });
        d.consent_facts(&r.consent);
        for c in &r.set_cookies {
            d.set_cookie(c.name.as_bytes(), &c.category, c.verdict, c.reason);
        }
        for n in &r.stripped {
            d.stripped(n.as_bytes());
        }
        for n in &r.purged {
            d.purged(n.as_bytes());
        }
        d
    }
}

/// A `reload` record's facts, in the same encoding.
pub fn encode_reload(r: &ReloadFacts, out: &mut Vec<u8>) {
    let mut d = ResponseDraft {
        buf: std::mem::take(out),
    };
    d.num(TIME, r.time_ms as u64);
    d.num(GENERATION, r.generation);
    d.str(REGISTRY_DIGEST, r.registry_digest.as_bytes());
    d.str(RESULT, r.result.as_bytes());
    if let Some(e) = &r.error {
        d.str(ERROR, e.as_bytes());
    }
    *out = std::mem::take(&mut d.buf);
}

/// Reads back what [`encode_reload`] wrote.
pub fn decode_reload(bytes: &[u8]) -> ReloadFacts {
    let mut r = ReloadFacts {
        time_ms: 0,
        generation: 0,
        registry_digest: String::new(),
        result: "error",
        error: None,
    };
    for (tag, v) in Items(bytes) {
        match (tag, v) {
            (TIME, Value::Num(n)) => r.time_ms = n as i64,
            (GENERATION, Value::Num(n)) => r.generation = n,
            (REGISTRY_DIGEST, Value::Str(s)) => r.registry_digest = lossy(s),
            (RESULT, Value::Str(s)) => r.result = if s == b"success" { "success" } else { "error" },
            (ERROR, Value::Str(s)) => r.error = Some(lossy(s)),
            _ => {}
        }
    }
    r
}

fn lossy(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Num(u64),
    Str(&'a [u8]),
    Cookie {
        name: &'a [u8],
        category: &'a [u8],
        verdict: Verdict,
        reason: Reason,
    },
}

/// The fields of an encoded record, in the order written. Stops at anything malformed (which
/// the encoder never writes).
struct Items<'a>(&'a [u8]);

impl<'a> Items<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        self.take(len as usize)
    }
}

impl<'a> Iterator for Items<'a> {
    type Item = (u8, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let tag = *self.take(1)?.first()?;
        let value = if is_number(tag) {
            Value::Num(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        } else if tag == COOKIE {
            Value::Cookie {
                name: self.string()?,
                category: self.string()?,
                verdict: *VERDICTS.get(usize::from(*self.take(1)?.first()?))?,
                reason: *REASONS.get(usize::from(*self.take(1)?.first()?))?,
            }
        } else {
            Value::Str(self.string()?)
        };
        Some((tag, value))
    }
}

/// `2026-12-01T10:00:00.123Z`, as [`super::record::rfc3339_millis`] writes it, with the text up
/// to the second kept from the record before (records come many to a second).
#[derive(Debug, Default)]
pub struct TimeText {
    second: Option<i64>,
    text: String,
}

impl TimeText {
    pub fn put(&mut self, out: &mut Vec<u8>, ms: i64) {
        // Within 1970..9999, as `rfc3339_millis` writes it.
        let t = crate::rfc3339_range(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
        );
        let ms = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
        let second = ms.div_euclid(1000);
        if self.second != Some(second) {
            let text = humantime::format_rfc3339_seconds(t).to_string();
            self.text = text.trim_end_matches('Z').to_owned();
            self.second = Some(second);
        }
        out.extend_from_slice(self.text.as_bytes());
        // 0 to 999.
        let millis = ms.rem_euclid(1000) as u32;
        out.push(b'.');
        out.push(b'0' + (millis / 100) as u8);
        out.push(b'0' + (millis / 10 % 10) as u8);
        out.push(b'0' + (millis % 10) as u8);
        out.push(b'Z');
    }
}

/// A decimal number, as serde_json writes it.
pub fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A JSON string, escaped as serde_json escapes it: `"`, `\` and the control characters below
/// U+0020 (`\b \t \n \f \r` by name, the others as `\u00XX` in lowercase hex); everything else,
/// U+007F and non-ASCII included, as is. `s` is UTF-8, or a cookie name as sent: invalid UTF-8 is
/// replaced by U+FFFD, as `String::from_utf8_lossy` does.
#[inline]
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    if is_plain(s) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else {
        put_escaped(out, s);
    }
}

/// Bytes that go into a JSON string as they are and are UTF-8 on their own: printable ASCII but
/// `"` and `\`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x80 {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// Whether every byte of `s` is [`PLAIN`]: the common case, checked eight bytes at a time
/// ([`crate::policy::scan`]).
#[inline]
fn is_plain(s: &[u8]) -> bool {
    use crate::policy::scan::{has_byte, has_byte_below, has_high_byte, skip_words};
    let at = skip_words(s, |w| {
        has_high_byte(w) | has_byte_below(w, 0x20) | has_byte(w, b'"') | has_byte(w, b'\\')
    });
    s[at..].iter().all(|&b| PLAIN[usize::from(b)])
}

/// [`put_str`] of a string that needs escaping (or U+FFFD).
#[cold]
fn put_escaped(out: &mut Vec<u8>, s: &[u8]) {
    let s = String::from_utf8_lossy(s);
    let s = s.as_bytes();
    out.push(b'"');
    let mut from = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s[from..i]);
        if esc.is_empty() {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(DIGITS[usize::from(b >> 4)]);
            out.push(DIGITS[usize::from(b & 15)]);
        } else {
            out.extend_from_slice(esc);
        }
        from = i + 1;
    }
    out.extend_from_slice(&s[from..]);
    out.push(b'"');
}

fn put_bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// The stamp's fields, as every record starts: `{"audit":1,"seq":..,"time":"..","replica":..,"kind":"<kind>"`.
fn put_start(out: &mut Vec<u8>, stamp: Stamp<'_>, time: &mut TimeText, ms: i64, kind: &str) {
    out.extend_from_slice(b"{\"audit\":");
    put_u64(out, u64::from(FORMAT));
    out.extend_from_slice(b",\"seq\":");
    put_u64(out, stamp.seq);
    out.extend_from_slice(b",\"time\":\"");
    time.put(out, ms);
    out.extend_from_slice(b"\",\"replica\":");
    put_str(out, stamp.replica.as_bytes());
    out.extend_from_slice(b",\"kind\":");
    put_str(out, kind.as_bytes());
}

/// Appends the canonical serialization of an encoded `response` record to `out`: the same bytes
/// as [`super::record::canonical_event`] of the [`ResponseFacts`] it was made from.
pub fn canonical_response(stamp: Stamp<'_>, draft: &[u8], time: &mut TimeText, out: &mut Vec<u8>) {
    put_response(stamp, draft, time, out);
}

/// [`canonical_response`]; returns where in `out` the fields after the stamp begin.
fn put_response(stamp: Stamp<'_>, draft: &[u8], time: &mut TimeText, out: &mut Vec<u8>) -> usize {
    let f = Fields::of(draft);
    // Room for the record, so that the pushes below never grow `out`: the draft's strings, at
    // most six bytes each escaped, and their keys (a generous bound; more only costs a grow).
    out.reserve(draft.len() * 6 + 512);
    put_start(out, stamp, time, f.time_ms, "response");
    let from = out.len();
    put_response_fields(&f, out);
    from
}

/// Drafts longer than this are not remembered by [`ResponseWriter`].
const MEMO_MAX_DRAFT: usize = 8 << 10;

/// Writes `response` records exactly as [`canonical_response`] does, remembering the last one's
/// bytes after `"kind":"response"`: the responses of one page under one consent repeat every
/// field but `seq` and `time`, and then those bytes are copied instead of written again. The
/// writer thread's own, so no lock.
#[derive(Debug, Default)]
pub struct ResponseWriter {
    time: TimeText,
    /// The last draft without its time (empty: none), and the bytes written for it after the
    /// stamp.
    key: Vec<u8>,
    rest: Vec<u8>,
}

impl ResponseWriter {
    /// Appends the canonical serialization of an encoded `response` record to `out`.
    pub fn write(&mut self, stamp: Stamp<'_>, draft: &[u8], out: &mut Vec<u8>) {
        // The draft's first item is its time ([`ResponseDraft::head`]); the rest is the key.
        let timed = match draft.split_first_chunk::<9>() {
            Some(([TIME, ms @ ..], key)) => Some((u64::from_le_bytes(*ms) as i64, key)),
            _ => None,
        };
        let Some((time_ms, key)) = timed else {
            canonical_response(stamp, draft, &mut self.time, out);
            return;
        };
        if !self.key.is_empty() && self.key == key {
            out.reserve(self.rest.len() + 128);
            put_start(out, stamp, &mut self.time, time_ms, "response");
            out.extend_from_slice(&self.rest);
            return;
        }
        let from = put_response(stamp, draft, &mut self.time, out);
        self.key.clear();
        self.rest.clear();
        if draft.len() <= MEMO_MAX_DRAFT {
            self.key.extend_from_slice(key);
            self.rest.extend_from_slice(&out[from..]);
        }
    }
}

/// A `response` record's fields after its stamp, to its closing `}`.
fn put_response_fields(f: &Fields<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"host\":");
    put_str(out, f.host);
    out.extend_from_slice(b",\"generation\":");
    put_u64(out, f.generation);
    out.extend_from_slice(b",\"registry_digest\":");
    put_str(out, f.registry_digest);
    out.extend_from_slice(b",\"mode\":");
    put_str(out, f.mode);
    out.extend_from_slice(b",\"consent\":{\"present\":");
    put_bool(out, f.present);
    out.extend_from_slice(b",\"digest\":");
    match f.consent_digest {
        Some(d) => put_str(out, d),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"granted\":");
    put_list(out, f.granted, GRANTED);
    out.extend_from_slice(b",\"gpc\":");
    put_bool(out, f.gpc);
    out.extend_from_slice(b",\"source\":");
    put_str(out, f.source);
    out.extend_from_slice(b"},\"method\":");
    put_str(out, f.method);
    out.extend_from_slice(b",\"path\":");
    put_str(out, f.path);
    out.extend_from_slice(b",\"status\":");
    put_u64(out, f.status);
    out.extend_from_slice(b",\"set_cookies\":[");
    let mut first = true;
    for (tag, v) in Items(f.set_cookies) {
        if let (
            COOKIE,
            Value::Cookie {
                name,
                category,
                verdict,
                reason,
            },
        ) = (tag, v)
        {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(b"{\"name\":");
            put_str(out, name);
            out.extend_from_slice(b",\"category\":");
            put_str(out, category);
            // Labels that need no escaping (tested).
            out.extend_from_slice(b",\"verdict\":\"");
            out.extend_from_slice(verdict.metric_label().as_bytes());
            out.extend_from_slice(b"\",\"reason\":\"");
            out.extend_from_slice(reason.as_str().as_bytes());
            out.extend_from_slice(b"\"}");
        }
    }
    out.extend_from_slice(b"],\"stripped\":");
    put_list(out, f.stripped, STRIPPED);
    out.extend_from_slice(b",\"purged\":");
    put_list(out, f.purged, PURGED);
    out.push(b'}');
}

/// The fields of an encoded `response` record, read in one pass: the single-valued ones, and
/// each list as the part of the draft from its first item to its last (items of other tags in
/// between, which the proxy does not write, are skipped when the list is written).
#[derive(Debug, Default)]
struct Fields<'a> {
    time_ms: i64,
    host: &'a [u8],
    generation: u64,
    registry_digest: &'a [u8],
    mode: &'a [u8],
    present: bool,
    consent_digest: Option<&'a [u8]>,
    granted: &'a [u8],
    gpc: bool,
    source: &'a [u8],
    method: &'a [u8],
    path: &'a [u8],
    status: u64,
    set_cookies: &'a [u8],
    stripped: &'a [u8],
    purged: &'a [u8],
}

impl<'a> Fields<'a> {
    fn of(draft: &'a [u8]) -> Self {
        let mut f = Fields::default();
        // Each list's part of `draft` (0..0 until its first item).
        let (mut granted, mut set_cookies, mut stripped, mut purged) = (0..0, 0..0, 0..0, 0..0);
        let mut items = Items(draft);
        loop {
            let at = draft.len() - items.0.len();
            let Some((tag, v)) = items.next() else { break };
            match (tag, v) {
                (TIME, Value::Num(n)) => f.time_ms = n as i64,
                (HOST, Value::Str(s)) => f.host = s,
                (GENERATION, Value::Num(n)) => f.generation = n,
                (REGISTRY_DIGEST, Value::Str(s)) => f.registry_digest = s,
                (MODE, Value::Str(s)) => f.mode = s,
                (PRESENT, Value::Num(n)) => f.present = n != 0,
                (CONSENT_DIGEST, Value::Str(s)) => f.consent_digest = Some(s),
                (GPC, Value::Num(n)) => f.gpc = n != 0,
                (SOURCE, Value::Str(s)) => f.source = s,
                (METHOD, Value::Str(s)) => f.method = s,
                (PATH, Value::Str(s)) => f.path = s,
                (STATUS, Value::Num(n)) => f.status = n,
                (GRANTED | COOKIE | STRIPPED | PURGED, _) => {
                    let list = match tag {
                        GRANTED => &mut granted,
                        COOKIE => &mut set_cookies,
                        STRIPPED => &mut stripped,
                        _ => &mut purged,
                    };
                    // (An item takes at least a byte: no list ends at 0.)
                    if list.end == 0 {
                        list.start = at;
                    }
                    list.end = draft.len() - items.0.len();
                }
                _ => {}
            }
        }
        let part = |r: std::ops::Range<usize>| draft.get(r).unwrap_or_default();
        f.granted = part(granted);
        f.set_cookies = part(set_cookies);
        f.stripped = part(stripped);
        f.purged = part(purged);
        f
    }
}

/// `[..]` of the strings tagged `want` in `items` (encoded items), in order.
fn put_list(out: &mut Vec<u8>, items: &[u8], want: u8) {
    out.push(b'[');
    let mut first = true;
    for (tag, v) in Items(items) {
        if let (true, Value::Str(s)) = (tag == want, v) {
            if !first {
                out.push(b',');
            }
            first = false;
            put_str(out, s);
        }
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{canonical_event, rfc3339_millis, CookieFacts, Event};

    fn facts(s: &str) -> ResponseFacts {
        ResponseFacts {
            time_ms: 1_764_583_200_123,
            host: format!("h{s}"),
            generation: u64::MAX,
            registry_digest: "d".repeat(64),
            mode: "report-only",
            consent: ConsentFacts {
                present: true,
                digest: Some("a".repeat(64)),
                granted: vec!["necessary".into(), s.into()],
                gpc: true,
                source: "response",
            },
            method: "GET".into(),
            path: format!("/p{s}"),
            status: 200,
            set_cookies: vec![
                CookieFacts {
                    name: s.into(),
                    category: "statistical".into(),
                    verdict: Verdict::WouldDrop,
                    reason: Reason::NotGranted,
                },
                CookieFacts {
                    name: "b".into(),
                    category: s.into(),
                    verdict: Verdict::Keep,
                    reason: Reason::Necessary,
                },
            ],
            stripped: vec![s.into(), "x".into()],
            purged: vec![s.into()],
        }
    }

    fn fast(stamp: Stamp<'_>, f: &ResponseFacts) -> Vec<u8> {
        let mut out = Vec::new();
        let draft = ResponseDraft::from(f);
        canonical_response(stamp, draft.bytes(), &mut TimeText::default(), &mut out);
        out
    }

    #[test]
    fn the_compact_path_writes_serde_json_bytes() {
        let stamp = Stamp {
            seq: 12_345,
            time_ms: 1_764_583_200_123,
            replica: "pod \"a\"\u{1}",
        };
        for s in [
            "",
            "plain",
            "quote\"back\\slash",
            "\u{0}\u{1f}\u{7f}\u{8}\u{c}\n\r\t",
            "é☃\u{10ffff}",
            "</script>",
        ] {
            let f = facts(s);
            let want = canonical_event(stamp, &Event::Response(Box::new(f.clone())));
            assert_eq!(
                String::from_utf8_lossy(&fast(stamp, &f)),
                String::from_utf8_lossy(&want)
            );
        }
        let mut none = facts("n");
        none.consent.digest = None;
        none.consent.present = false;
        none.consent.granted.clear();
        none.set_cookies.clear();
        none.stripped.clear();
        none.purged.clear();
        let want = canonical_event(stamp, &Event::Response(Box::new(none.clone())));
        assert_eq!(fast(stamp, &none), want);
    }

    #[test]
    fn the_remembered_fields_are_the_fields_written_again() {
        // Repeats (the same page again, a second later or in another second), changes in one
        // field only, a name that is not UTF-8, and back: every record as canonical_event
        // writes it, whether its fields were remembered or written.
        let mut bad_name = facts("b");
        bad_name.set_cookies[0].name = String::from_utf8_lossy(b"x\xffy").into_owned();
        let mut other_status = facts("a");
        other_status.status = 404;
        let mut other_time = facts("a");
        other_time.time_ms += 1_000;
        let mut earlier = facts("a");
        earlier.time_ms -= 61_000;
        let sequence = [
            facts("a"),
            facts("a"),
            other_time,
            earlier,
            other_status,
            facts("a"),
            facts("quote\"q"),
            facts("quote\"q"),
            bad_name.clone(),
            bad_name,
            facts("a"),
        ];
        let mut writer = ResponseWriter::default();
        let mut out = Vec::new();
        let mut want = Vec::new();
        for (n, f) in sequence.iter().enumerate() {
            let stamp = Stamp {
                seq: n as u64 + 1,
                time_ms: 0,
                replica: "r",
            };
            let draft = ResponseDraft::from(f);
            writer.write(stamp, draft.bytes(), &mut out);
            let stamp = Stamp {
                time_ms: f.time_ms,
                ..stamp
            };
            want.extend_from_slice(&canonical_event(
                stamp,
                &Event::Response(Box::new(f.clone())),
            ));
        }
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&want)
        );
        // A draft too large to remember is still written right, and the next one too.
        let mut large = facts("l");
        large.path = "/".repeat(MEMO_MAX_DRAFT);
        for f in [&large, &large, &facts("a")] {
            let stamp = Stamp {
                seq: 1,
                time_ms: f.time_ms,
                replica: "r",
            };
            let mut got = Vec::new();
            writer.write(stamp, ResponseDraft::from(f).bytes(), &mut got);
            assert_eq!(
                got,
                canonical_event(stamp, &Event::Response(Box::new(f.clone())))
            );
        }
    }

    #[test]
    fn every_byte_at_every_place_is_written_as_serde_json_writes_it() {
        // Strings of up to three 8-byte steps and a tail, each byte value at each place: the
        // fast check for strings that need no escaping never lets one through that does.
        for len in 1..=20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    let mut out = Vec::new();
                    put_str(&mut out, &s);
                    let want = serde_json::to_vec(&String::from_utf8_lossy(&s)).unwrap();
                    assert_eq!(out, want, "{s:?}");
                }
            }
        }
        for s in [
            "é☃\u{10ffff}",
            "\u{7f}",
            "abcdefgh\u{80}ijk",
            "abcdefghijklmnop\"x",
        ] {
            let mut out = Vec::new();
            put_str(&mut out, s.as_bytes());
            assert_eq!(out, serde_json::to_vec(s).unwrap());
        }
    }

    #[test]
    fn every_verdict_and_reason_round_trips_and_needs_no_escaping() {
        for v in VERDICTS {
            assert_eq!(VERDICTS[usize::from(verdict_code(v))], v);
            assert!(is_plain(v.metric_label().as_bytes()));
        }
        for r in REASONS {
            assert_eq!(REASONS[usize::from(reason_code(r))], r);
            assert!(is_plain(r.as_str().as_bytes()));
        }
        let stamp = Stamp {
            seq: 1,
            time_ms: 1_764_583_200_123,
            replica: "r",
        };
        let mut f = facts("x");
        f.set_cookies.clear();
        for v in VERDICTS {
            for r in REASONS {
                f.set_cookies.push(CookieFacts {
                    name: "n".into(),
                    category: "c".into(),
                    verdict: v,
                    reason: r,
                });
            }
        }
        let want = canonical_event(stamp, &Event::Response(Box::new(f.clone())));
        assert_eq!(fast(stamp, &f), want);
    }

    #[test]
    fn names_that_are_not_utf8_are_recorded_with_u_fffd() {
        let stamp = Stamp {
            seq: 1,
            time_ms: 1_764_583_200_123,
            replica: "r",
        };
        // Added after the draft's own lists: items of one list among another's are read too.
        let names: [&[u8]; 4] = [b"a\xffb", b"\xc3", b"ok", b"\xe2\x98\x83\x80\"\x01"];
        let mut f = facts("x");
        let mut d = ResponseDraft::from(&f);
        for n in names {
            d.set_cookie(n, "c", Verdict::Drop, Reason::Unknown);
            d.stripped(n);
            d.purged(n);
            let name = String::from_utf8_lossy(n).into_owned();
            f.set_cookies.push(CookieFacts {
                name: name.clone(),
                category: "c".into(),
                verdict: Verdict::Drop,
                reason: Reason::Unknown,
            });
            f.stripped.push(name.clone());
            f.purged.push(name);
        }
        let mut got = Vec::new();
        canonical_response(stamp, d.bytes(), &mut TimeText::default(), &mut got);
        let want = canonical_event(stamp, &Event::Response(Box::new(f)));
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(want).unwrap()
        );
    }

    #[test]
    fn times_and_numbers_are_written_as_serde_and_rfc3339_millis_write_them() {
        let mut t = TimeText::default();
        for ms in [
            0,
            -1,
            999,
            1000,
            951_825_600_007,
            1_795_435_200_999,
            1_795_435_201_000,
            253_402_300_799_999,
        ] {
            let mut out = Vec::new();
            t.put(&mut out, ms);
            assert_eq!(String::from_utf8(out).unwrap(), rfc3339_millis(ms));
        }
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::MAX] {
            let mut out = Vec::new();
            put_u64(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
    }

    #[test]
    fn reloads_round_trip() {
        for error in [None, Some("hosts/a.toml:1:2: bad \"x\"".to_owned())] {
            let r = ReloadFacts {
                time_ms: 1_764_583_200_123,
                generation: 7,
                registry_digest: "e".repeat(64),
                result: if error.is_some() { "error" } else { "success" },
                error,
            };
            let mut bytes = Vec::new();
            encode_reload(&r, &mut bytes);
            assert_eq!(decode_reload(&bytes), r);
        }
    }
}
