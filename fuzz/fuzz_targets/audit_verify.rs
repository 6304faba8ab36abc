//! `audit verify` on arbitrary bytes, split into files on `%` bytes: never panics, and a report
//! never counts more records than there are lines.
#![no_main]

use consent_gateway::audit::verify::verify_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let files: Vec<&[u8]> = data
        .split(|&b| b == b'%')
        .filter(|f| !f.is_empty())
        .collect();
    let lines = data.iter().filter(|&&b| b == b'\n').count() as u64 + files.len() as u64;
    if let Ok(report) = verify_bytes(files.iter().map(|f| ("f", *f))) {
        assert!(report.records <= lines);
    }
});
