//! The cookie knowledge base: what is publicly known about a cookie name (the platform that sets
//! it, a category, its retention), from the Open Cookie Database.
//!
//! Pure. The table is `data/knowledge-base.tsv`, generated from the database's CSV by
//! `data/generate-knowledge-base.py` and compiled into the binary; `data/README.md` says how it
//! is made and how its categories map onto the registry's. It only ever *suggests*: a name the
//! host's registry lists is never looked up here (see [`suggest_for`]), because the database
//! attributes generic names to one platform (`sessionid` is Django's session cookie on most
//! sites, not Instagram's marketing cookie).

use std::sync::OnceLock;

use foldhash::HashMap;
use serde::{Deserialize, Serialize};

use crate::policy::registry::HostPolicy;

/// The generated table, compiled in.
const BUNDLED: &str = include_str!("../../data/knowledge-base.tsv");

/// A prefix entry shorter than this never matches: short prefixes (`_s`, `mp_`) capture the
/// names of other platforms and other categories.
pub const MIN_PREFIX: usize = 4;

/// Where suggestions come from (the `source` of a suggestion).
pub const SOURCE: &str = "open-cookie-database";

/// The table's columns, in order (its header line).
const COLUMNS: [&str; 8] = [
    "name",
    "match",
    "platform",
    "category",
    "source_category",
    "domain",
    "retention",
    "controller",
];

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'t> {
    /// The cookie name, or the prefix of the names, as the database lists it.
    pub name: &'t str,
    pub prefix: bool,
    pub platform: &'t str,
    /// The registry category suggested (the database's category mapped; never `necessary`).
    pub category: &'t str,
    /// The database's own category.
    pub source_category: &'t str,
    /// Where the database says the cookie is set (may be empty).
    pub domain: &'t str,
    pub retention: &'t str,
    pub controller: &'t str,
}

/// How a name matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Match {
    Exact,
    Prefix,
}

impl Match {
    pub fn as_str(self) -> &'static str {
        match self {
            Match::Exact => "exact",
            Match::Prefix => "prefix",
        }
    }
}

/// The table, indexed.
#[derive(Debug, Default)]
pub struct KnowledgeBase<'t> {
    entries: Vec<Entry<'t>>,
    /// Exact names → index in `entries`.
    exact: HashMap<&'t str, usize>,
    /// Prefix entries (at least [`MIN_PREFIX`] bytes) as indexes in `entries`. Invariant:
    /// longest first, so the first that matches is the longest.
    prefixes: Vec<usize>,
}

impl<'t> KnowledgeBase<'t> {
    /// Reads the table's text. Lines starting with `#`, the header line, lines without the eight
    /// columns and prefixes shorter than [`MIN_PREFIX`] are skipped; the first of two rows with
    /// the same name and kind wins (the generator writes none).
    pub fn parse(text: &'t str) -> Self {
        let mut kb = KnowledgeBase::default();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.len() != COLUMNS.len() || cols == COLUMNS {
                continue;
            }
            let prefix = match cols[1] {
                "exact" => false,
                "prefix" => true,
                _ => continue,
            };
            let name = cols[0];
            if name.is_empty() || (prefix && name.len() < MIN_PREFIX) {
                continue;
            }
            let i = kb.entries.len();
            if prefix {
                if kb.prefixes.iter().any(|&p| kb.entries[p].name == name) {
                    continue;
                }
                kb.prefixes.push(i);
            } else if kb.exact.insert(name, i).is_some() {
                continue;
            }
            kb.entries.push(Entry {
                name,
                prefix,
                platform: cols[2],
                category: cols[3],
                source_category: cols[4],
                domain: cols[5],
                retention: cols[6],
                controller: cols[7],
            });
        }
        let entries = &kb.entries;
        kb.prefixes
            .sort_by(|&a, &b| entries[b].name.len().cmp(&entries[a].name.len()));
        kb
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the table says about a cookie name: its exact entry, else the longest prefix entry
    /// the name starts with, else nothing. Case-sensitive, as cookie names are.
    pub fn lookup(&self, name: &[u8]) -> Option<(&Entry<'t>, Match)> {
        let text = std::str::from_utf8(name).ok()?;
        if let Some(&i) = self.exact.get(text) {
            return Some((&self.entries[i], Match::Exact));
        }
        self.prefixes
            .iter()
            .map(|&i| &self.entries[i])
            .find(|e| text.starts_with(e.name))
            .map(|e| (e, Match::Prefix))
    }
}

/// The knowledge base compiled into the binary (read once).
pub fn bundled() -> &'static KnowledgeBase<'static> {
    static KB: OnceLock<KnowledgeBase<'static>> = OnceLock::new();
    KB.get_or_init(|| KnowledgeBase::parse(BUNDLED))
}

/// A suggestion for an unregistered cookie name, as `/inventory/{host}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suggestion {
    pub category: String,
    pub platform: String,
    pub controller: String,
    pub retention: String,
    /// `exact`, or `prefix` when the name matched a prefix entry.
    #[serde(rename = "match")]
    pub matched: Match,
    /// The name or prefix of the entry that matched.
    pub entry: String,
    /// The database's own category, before mapping.
    pub source_category: String,
    /// Where the suggestion comes from.
    pub source: String,
}

/// The suggestion for `name` on `policy`'s host: none when the host's registry lists the name
/// (the registry always wins) or when it is the consent cookie; else the knowledge base's.
pub fn suggest_for(kb: &KnowledgeBase<'_>, policy: &HostPolicy, name: &[u8]) -> Option<Suggestion> {
    if crate::policy::decide::Known::of(policy, name).registered() {
        return None;
    }
    let (e, matched) = kb.lookup(name)?;
    Some(Suggestion {
        category: e.category.to_owned(),
        platform: e.platform.to_owned(),
        controller: e.controller.to_owned(),
        retention: e.retention.to_owned(),
        matched,
        entry: e.name.to_owned(),
        source_category: e.source_category.to_owned(),
        source: SOURCE.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "# comment\n\
name\tmatch\tplatform\tcategory\tsource_category\tdomain\tretention\tcontroller\n\
_ga\texact\tGoogle Analytics\tstatistical\tAnalytics\t\t2 years\tGoogle\n\
_ga_\tprefix\tGoogle Analytics\tstatistical\tAnalytics\t\t2 years\tGoogle\n\
_hjSession\tprefix\tHotjar\tpreferences\tFunctional\t\t30 minutes\tHotjar\n\
_hjSessionUser_\tprefix\tHotjar\tpreferences\tFunctional\t\t365 days\tHotjar\n\
_s\tprefix\tMarfeel\tstatistical\tAnalytics\t\tsession\tMarfeel\n\
sessionid\texact\tInstagram\tmarketing\tMarketing\tinstagram.com\t1 year\tMeta\n\
broken line\n";

    #[test]
    fn exact_name_wins_over_prefix() {
        let kb = KnowledgeBase::parse(TABLE);
        let (e, m) = kb.lookup(b"_ga").unwrap();
        assert_eq!((e.name, m), ("_ga", Match::Exact));
        let (e, m) = kb.lookup(b"_ga_ABC123").unwrap();
        assert_eq!((e.name, m), ("_ga_", Match::Prefix));
    }

    #[test]
    fn prefix_match_prefers_longest() {
        let kb = KnowledgeBase::parse(TABLE);
        let (e, m) = kb.lookup(b"_hjSessionUser_1234").unwrap();
        assert_eq!(
            (e.name, e.retention, m),
            ("_hjSessionUser_", "365 days", Match::Prefix)
        );
        let (e, _) = kb.lookup(b"_hjSession_99").unwrap();
        assert_eq!(e.name, "_hjSession");
    }

    #[test]
    fn short_prefixes_and_bad_lines_are_ignored() {
        let kb = KnowledgeBase::parse(TABLE);
        assert_eq!(kb.len(), 5);
        assert!(
            kb.lookup(b"_session").is_none(),
            "the 2-character prefix _s never matches"
        );
        assert!(kb.lookup(b"messages").is_none());
        assert!(kb.lookup(b"_G").is_none());
        assert!(kb.lookup(&[0xff, b'a']).is_none());
    }

    #[test]
    fn the_bundled_table_reads_whole() {
        let kb = bundled();
        let rows = BUNDLED
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count()
            - 1;
        assert_eq!(kb.len(), rows, "every generated row is read");
        assert!(kb.len() > 2000);
        let (e, m) = kb.lookup(b"_ga").unwrap();
        assert_eq!(
            (e.category, e.platform, m),
            ("statistical", "Google Analytics", Match::Exact)
        );
        let (e, m) = kb.lookup(b"_hjSessionUser_1234").unwrap();
        assert_eq!((e.name, m), ("_hjSessionUser_", Match::Prefix));
        assert!(kb.lookup(b"messages").is_none());
        assert!(
            kb.entries
                .iter()
                .all(|e| e.category != crate::policy::registry::NECESSARY),
            "the knowledge base never suggests necessary"
        );
        assert!(kb
            .prefixes
            .iter()
            .all(|&i| kb.entries[i].name.len() >= MIN_PREFIX));
    }

    #[test]
    fn a_registered_name_is_never_suggested() {
        // Django's session cookie, registered as necessary: the database's "Instagram,
        // Marketing" must not be offered for it.
        let policy = crate::config::parse_host_file(
            std::path::Path::new("hosts/django.toml"),
            "hosts = [\"django.test\"]\nupstream = \"http://127.0.0.1:1\"\n\
             [[cookie]]\nname = \"sessionid\"\ncategory = \"necessary\"\n",
        )
        .unwrap();
        let kb = bundled();
        assert_eq!(kb.lookup(b"sessionid").unwrap().0.platform, "Instagram");
        assert_eq!(suggest_for(kb, &policy, b"sessionid"), None);
        assert_eq!(suggest_for(kb, &policy, b"cookies_preferences"), None);
        let ga = suggest_for(kb, &policy, b"_ga").unwrap();
        assert_eq!(
            (ga.category.as_str(), ga.platform.as_str(), ga.matched),
            ("statistical", "Google Analytics", Match::Exact)
        );
        // Unregistered on a host without that entry, the database's reading is offered.
        let other = crate::config::parse_host_file(
            std::path::Path::new("hosts/other.toml"),
            "hosts = [\"other.test\"]\nupstream = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        assert_eq!(
            suggest_for(kb, &other, b"sessionid").unwrap().category,
            "marketing"
        );
    }
}
