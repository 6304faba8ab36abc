//! The Set-Cookie reader on arbitrary header values: never panics, and the name and value it
//! reads are slices of the header itself (nothing invented, nothing copied).
#![no_main]

use consent_gateway::policy::set_cookie::{parse_cookie_date, SetCookie};
use libfuzzer_sys::fuzz_target;

/// 2024-06-10T06:13:20Z, so that `Expires` dates land on both sides of "now".
const NOW: i64 = 1_718_000_000;

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let o = outer.as_ptr_range();
    let i = inner.as_ptr_range();
    inner.is_empty() || (o.start <= i.start && i.end <= o.end)
}

fuzz_target!(|header: &[u8]| {
    let sc = SetCookie::parse(header, NOW);
    assert!(within(header, sc.name), "name outside the header");
    assert!(within(header, sc.value), "value outside the header");
    assert!(!sc.name.starts_with(b" ") && !sc.name.ends_with(b" "));
    let _ = parse_cookie_date(header);
});
