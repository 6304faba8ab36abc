//! Host patterns and the host table: which registry entry serves a request's Host.
//!
//! Pure: no I/O. A pattern is parsed once ([`HostPattern::from_str`]) into a normalised form, and
//! the [`HostTable`] answers lookups with the most specific match: an exact name beats any
//! wildcard, and among wildcards the longest suffix wins.

// foldhash: the keys are the registry's own (names from config files), lookups never insert, so
// a fast hasher is safe here; SipHash was ~2 % of the request path.
use foldhash::HashMap;
use std::fmt;
use std::str::FromStr;

/// One `hosts` entry of a registry file, normalised to lower case without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `dashboard.paris`: that name only.
    Exact(String),
    /// `*.dashboard.paris`: one or more labels below the suffix, never the bare suffix.
    /// Stored with its leading dot (`.dashboard.paris`) so a match is a plain `ends_with`.
    Wildcard(String),
}

/// Why a `hosts` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    #[error("host pattern is empty")]
    Empty,
    #[error(
        "host pattern {0:?}: '*' is only allowed as the whole first label, as in \"*.example.com\""
    )]
    MisplacedWildcard(String),
    #[error("host pattern {0:?}: a wildcard needs a suffix with at least one label, as in \"*.example.com\"")]
    BareWildcard(String),
    #[error("host pattern {0:?}: empty label")]
    EmptyLabel(String),
    #[error("host pattern {0:?}: label longer than 63 bytes")]
    LabelTooLong(String),
    #[error(
        "host pattern {0:?}: invalid character {1:?} (letters, digits, '-' and '_' only; no port, scheme or path)"
    )]
    InvalidChar(String, char),
}

impl FromStr for HostPattern {
    type Err = HostPatternError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(HostPatternError::Empty);
        }
        let lower = trimmed.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        let (wildcard, rest) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None if name == "*" => return Err(HostPatternError::BareWildcard(raw.to_owned())),
            None => (false, name),
        };
        if rest.is_empty() {
            return Err(HostPatternError::BareWildcard(raw.to_owned()));
        }
        // An IPv6 literal is accepted in brackets, as it appears in a Host header.
        if !wildcard && rest.starts_with('[') {
            let inner = rest
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .ok_or_else(|| HostPatternError::InvalidChar(raw.to_owned(), '['))?;
            inner
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| HostPatternError::InvalidChar(raw.to_owned(), '['))?;
            return Ok(HostPattern::Exact(rest.to_owned()));
        }
        for label in rest.split('.') {
            if label.is_empty() {
                return Err(HostPatternError::EmptyLabel(raw.to_owned()));
            }
            if label.len() > 63 {
                return Err(HostPatternError::LabelTooLong(raw.to_owned()));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(if c == '*' {
                    HostPatternError::MisplacedWildcard(raw.to_owned())
                } else {
                    HostPatternError::InvalidChar(raw.to_owned(), c)
                });
            }
        }
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{rest}"))
        } else {
            HostPattern::Exact(rest.to_owned())
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// Normalises a Host header (or `:authority`) for lookup: port removed, trailing dot removed,
/// lower case. Returns `None` for a value that cannot name a host (empty, or bytes that are not
/// visible ASCII).
pub fn normalize_host(raw: &[u8]) -> Option<String> {
    normalized_host(raw).map(std::borrow::Cow::into_owned)
}

/// [`normalize_host`], borrowing the header's bytes unless a letter must be lowered (a Host
/// with a port, `127.0.0.1:8080`, is looked up without an allocation).
pub fn normalized_host(raw: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    let raw = std::str::from_utf8(raw).ok()?.trim();
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let host = if raw.starts_with('[') {
        // [v6]:port or [v6]
        let end = raw.find(']')?;
        let after = &raw[end + 1..];
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        &raw[..=end]
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    })
}

/// Host lookup table. Invariant: `wildcards` is sorted by suffix length, longest first, so the
/// first suffix that matches is the most specific one.
#[derive(Debug, Clone)]
pub struct HostTable<T> {
    exact: HashMap<String, T>,
    wildcards: Vec<(String, T)>,
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        HostTable {
            exact: HashMap::default(),
            wildcards: Vec::new(),
        }
    }
}

impl<T> HostTable<T> {
    /// Adds a pattern; returns the value it replaces when the same pattern was already present,
    /// so the caller can report a duplicate.
    pub fn insert(&mut self, pattern: HostPattern, value: T) -> Option<T> {
        match pattern {
            HostPattern::Exact(name) => self.exact.insert(name, value),
            HostPattern::Wildcard(suffix) => {
                if let Some(slot) = self.wildcards.iter_mut().find(|(s, _)| *s == suffix) {
                    return Some(std::mem::replace(&mut slot.1, value));
                }
                let at = self
                    .wildcards
                    .iter()
                    .position(|(s, _)| s.len() < suffix.len())
                    .unwrap_or(self.wildcards.len());
                self.wildcards.insert(at, (suffix, value));
                None
            }
        }
    }

    /// The value for a host already normalised by [`normalize_host`].
    pub fn get(&self, host: &str) -> Option<&T> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, v)| v)
    }

    /// The value for a raw Host header value.
    pub fn lookup(&self, raw_host: &[u8]) -> Option<&T> {
        // Fast path: most Host headers are already lower case without a port.
        if let Ok(s) = std::str::from_utf8(raw_host) {
            if let Some(v) = self.exact.get(s) {
                return Some(v);
            }
        }
        self.get(&normalized_host(raw_host)?)
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_case_host_is_normalised_without_a_copy() {
        for (raw, want, borrowed) in [
            ("127.0.0.1:8080", "127.0.0.1", true),
            ("a.example.", "a.example", true),
            ("A.Example:80", "a.example", false),
            ("[::1]:443", "[::1]", true),
        ] {
            let got = normalized_host(raw.as_bytes()).unwrap();
            assert_eq!(got, want, "{raw}");
            assert_eq!(
                matches!(got, std::borrow::Cow::Borrowed(_)),
                borrowed,
                "{raw}"
            );
        }
    }

    fn table(patterns: &[&str]) -> HostTable<String> {
        let mut t = HostTable::default();
        for p in patterns {
            let pat: HostPattern = p.parse().unwrap();
            assert!(t.insert(pat, (*p).to_owned()).is_none(), "duplicate {p}");
        }
        t
    }

    #[test]
    fn patterns_are_normalised() {
        let cases = [
            (
                "Dashboard.Paris",
                HostPattern::Exact("dashboard.paris".into()),
            ),
            (
                "dashboard.paris.",
                HostPattern::Exact("dashboard.paris".into()),
            ),
            (
                "*.Dashboard.paris",
                HostPattern::Wildcard(".dashboard.paris".into()),
            ),
            ("127.0.0.1", HostPattern::Exact("127.0.0.1".into())),
            ("[::1]", HostPattern::Exact("[::1]".into())),
            ("localhost", HostPattern::Exact("localhost".into())),
        ];
        for (raw, want) in cases {
            assert_eq!(raw.parse::<HostPattern>().as_ref(), Ok(&want), "{raw}");
        }
    }

    #[test]
    fn invalid_patterns_are_refused() {
        let cases = [
            "",
            "  ",
            "*",
            "*.",
            "a.*.b",
            "**.b",
            "a..b",
            "dashboard.paris:443",
            "https://dashboard.paris",
            "dash board.paris",
            "[::1",
        ];
        for raw in cases {
            assert!(raw.parse::<HostPattern>().is_err(), "{raw:?} accepted");
        }
    }

    #[test]
    fn host_header_is_normalised_for_lookup() {
        let cases: [(&[u8], Option<&str>); 9] = [
            (b"Dashboard.Paris", Some("dashboard.paris")),
            (b"dashboard.paris:8080", Some("dashboard.paris")),
            (b"dashboard.paris.:443", Some("dashboard.paris")),
            (b"[::1]:8080", Some("[::1]")),
            (b"127.0.0.1:18090", Some("127.0.0.1")),
            (b"", None),
            (b"a b", None),
            (b"host:port", None),
            (b"\xff", None),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_host(raw).as_deref(), want, "{raw:?}");
        }
    }

    #[test]
    fn exact_beats_wildcard() {
        let t = table(&["*.paris", "dashboard.paris"]);
        assert_eq!(
            t.lookup(b"dashboard.paris").map(String::as_str),
            Some("dashboard.paris")
        );
        assert_eq!(t.lookup(b"www.paris").map(String::as_str), Some("*.paris"));
    }

    #[test]
    fn longest_wildcard_wins() {
        let t = table(&["*.paris", "*.dashboard.paris"]);
        assert_eq!(
            t.lookup(b"a.dashboard.paris").map(String::as_str),
            Some("*.dashboard.paris")
        );
        assert_eq!(
            t.lookup(b"a.b.dashboard.paris").map(String::as_str),
            Some("*.dashboard.paris")
        );
        assert_eq!(
            t.lookup(b"dashboard.paris").map(String::as_str),
            Some("*.paris")
        );
    }

    #[test]
    fn wildcard_does_not_match_bare_suffix() {
        let t = table(&["*.dashboard.paris"]);
        assert_eq!(t.lookup(b"dashboard.paris"), None);
        assert_eq!(t.lookup(b"xdashboard.paris"), None);
        assert_eq!(
            t.lookup(b"www.dashboard.paris").map(String::as_str),
            Some("*.dashboard.paris")
        );
    }

    #[test]
    fn lookup_ignores_case_port_and_trailing_dot() {
        let t = table(&["dashboard.paris"]);
        for raw in [
            &b"DASHBOARD.paris"[..],
            b"dashboard.paris.",
            b"dashboard.paris:443",
            b"Dashboard.Paris.:80",
        ] {
            assert!(t.lookup(raw).is_some(), "{raw:?}");
        }
        assert!(t.lookup(b"dashboard.paris.evil").is_none());
    }

    #[test]
    fn duplicate_pattern_is_reported() {
        let mut t = HostTable::default();
        assert!(t.insert("*.a.b".parse().unwrap(), 1).is_none());
        assert_eq!(t.insert("*.A.b.".parse().unwrap(), 2), Some(1));
        assert!(t.insert("a.b".parse().unwrap(), 3).is_none());
        assert_eq!(t.insert("A.B".parse().unwrap(), 4), Some(3));
    }
}
