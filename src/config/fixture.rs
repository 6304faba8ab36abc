//! The unit tests' host policy: `tests/fixtures/t.example.toml` (what the property tests load
//! too, through `tests/common`), compiled by [`super::parse_host_file`] as a registry file is.

#![allow(clippy::unwrap_used)] // tests: the fixture compiles, or every test says why

use crate::policy::registry::HostPolicy;

/// The fixture's text.
pub(crate) const TEXT: &str = include_str!("../../tests/fixtures/t.example.toml");

/// The fixture with `head` (top-level keys such as `mode = "report-only"`) added before its
/// first table.
pub(crate) fn host_policy(head: &str) -> HostPolicy {
    let (keys, tables) = TEXT.split_once("\n[").unwrap();
    let text = format!("{keys}\n{head}\n[{tables}");
    super::parse_host_file(std::path::Path::new("t.toml"), &text)
        .unwrap_or_else(|e| panic!("tests/fixtures/t.example.toml: {e}"))
}
