//! The config loader on arbitrary text: the gateway file, one registry file, and a registry of
//! several files (split on a `%%` line). Never panics, and every error renders as
//! `file:line:col: message` (positions computed from byte offsets into the text).
#![no_main]

use std::path::{Path, PathBuf};

use consent_gateway::config::{compile_registry, parse_gateway, parse_host_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let gateway = Path::new("/etc/consent-gateway/gateway.toml");
    if let Err(e) = parse_gateway(gateway, &text) {
        assert!(!e.to_string().is_empty());
        for err in &e.0 {
            assert!(
                err.file == gateway && err.line >= 1 && err.column >= 1,
                "{err}"
            );
        }
    }
    let host = Path::new("/etc/consent-gateway/hosts/portal.toml");
    if let Err(e) = parse_host_file(host, &text) {
        assert!(!e.to_string().is_empty());
        for err in &e.0 {
            assert!(
                err.file == host && err.line >= 1 && err.column >= 1,
                "{err}"
            );
        }
    }
    let files: Vec<(PathBuf, String)> = text
        .split("\n%%\n")
        .take(4)
        .enumerate()
        .map(|(i, t)| (PathBuf::from(format!("hosts/{i}.toml")), t.to_owned()))
        .collect();
    if let Err(e) = compile_registry(&files) {
        assert!(!e.to_string().is_empty());
    }
});
