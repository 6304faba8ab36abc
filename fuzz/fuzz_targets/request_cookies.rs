//! The request `Cookie` header parser on arbitrary bytes: never panics, every pair is a slice of
//! the header, and there are never more pairs than `;`-separated parts.
#![no_main]

use consent_gateway::policy::request_cookies::pairs;
use libfuzzer_sys::fuzz_target;

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let o = outer.as_ptr_range();
    let i = inner.as_ptr_range();
    inner.is_empty() || (o.start <= i.start && i.end <= o.end)
}

fuzz_target!(|header: &[u8]| {
    let parts = header.iter().filter(|&&b| b == b';').count() + 1;
    let mut n = 0;
    for p in pairs(header) {
        assert!(within(header, p.name) && within(header, p.value));
        n += 1;
    }
    assert!(n <= parts, "{n} pairs from {parts} parts");
});
