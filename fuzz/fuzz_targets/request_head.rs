//! The request-head scanner (`hardening`) on arbitrary client bytes: never panics, and the
//! verdicts do not depend on how the bytes were split into reads (whole, halves, one by one).
#![no_main]

use consent_gateway::edge::scanner::HeadScanner;
use consent_gateway::proxy::checks::HeadVerdict;
use libfuzzer_sys::fuzz_target;

fn verdicts<'a>(reads: impl Iterator<Item = &'a [u8]>) -> Vec<HeadVerdict> {
    let mut s = HeadScanner::new(4096);
    let mut out = Vec::new();
    for r in reads {
        s.feed(r, &mut |j| out.push(j.verdict));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let whole = verdicts(std::iter::once(data));
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let halves = verdicts([&data[..cut], &data[cut..]].into_iter());
    assert_eq!(whole, halves, "split at {cut}");
    let bytes = verdicts(data.chunks(1));
    assert_eq!(whole, bytes, "one byte at a time");
});
