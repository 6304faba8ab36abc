//! Every consent format's decoder on arbitrary cookie values: never panics, and decoding is a
//! pure function of the value (the same bytes grant the same keys twice).
#![no_main]

use consent_gateway::policy::consent::{ConsentSpec, Format, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &[u8]| {
    for format in Format::ALL {
        let once = format.decode(value);
        assert_eq!(once, format.decode(value), "{format:?}");
        let spec = ConsentSpec::new(format.default_cookie(), format);
        let _ = spec.from_value(
            Some(value),
            value.first().is_some_and(|b| b & 1 == 1),
            Source::Cookie,
        );
    }
});
