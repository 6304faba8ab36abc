//! `import-policy`: a cookie-policy page, as text (see tests/fixtures/policies/), read into a
//! registry file.
//!
//! Pure: text in, registry TOML out. The page is a sequence of headings, prose and tables.
//! Headings are Markdown `#` lines or, in plain text, short lines that do not end like a
//! sentence. Tables are tab-separated rows (Markdown `|` rows are read too); blank lines inside
//! a table do not end it, and a header row (`Cookie name(s)`, `Purposes`, ...) says which column
//! holds what. Each row's category comes from the heading it sits under ([`classify`]).
//!
//! Nothing is dropped silently: a row under a heading that names no known category, a row that
//! cannot be read, a cookie name that is not a valid name, or a name listed twice comes out as
//! `#` comment lines at its place in the output, naming the source line.

use std::fmt::Write as _;

use crate::policy::registry::{CookieMatcher, HostPolicy, NECESSARY};
use crate::policy::request_cookies::is_cookie_name;

/// The consent cookie the imported file names (Opendatasoft's, the `json` format's default).
pub const CONSENT_COOKIE: &str = "cookies_preferences";

/// What [`import`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The registry file.
    pub toml: String,
    /// `[[cookie]]` entries written.
    pub cookies: usize,
    /// Source lines or names written as comments for a person to classify.
    pub unclassified: usize,
}

/// Why nothing could be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("{file}:1:1: --host: {host:?} is not a host name")]
    BadHost { file: String, host: String },
    #[error("{file}:1:1: no cookie table found (rows of tab-separated cells under a heading)")]
    NoTable { file: String },
}

/// Category of a section heading, from the words portals use for it; `None` when it names none.
///
/// When a heading names several categories, the one that needs consent wins over `necessary`
/// (fail closed), and `marketing` over `statistical` over the rest.
pub fn classify(heading: &str) -> Option<&'static str> {
    let h = heading.to_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| h.contains(w));
    if any(&[
        "advertis",
        "marketing",
        "targeting",
        "publicit",
        "ad tracking",
        "retargeting",
    ]) {
        Some("marketing")
    } else if any(&[
        "statistic",
        "analytic",
        "audience",
        "measurement",
        "performance",
        "mesure d",
    ]) {
        Some("statistical")
    } else if any(&["social", "sharing"]) {
        Some("social")
    } else if any(&["personalis", "personaliz", "preference cookies"]) {
        Some("preferences")
    } else if any(&[
        "necessary",
        "essential",
        "strictly",
        "required",
        "functionality",
        "functional",
        "function properly",
        "technical",
        "nécessaire",
        "necesari",
    ]) {
        Some(NECESSARY)
    } else {
        None
    }
}

/// The consent key a known analytics cookie is granted by in Opendatasoft's
/// `cookies_preferences` (`{"ga":true,"matomo":false}`); `None`: the category name.
pub fn known_consent_key(name: &str) -> Option<&'static str> {
    if name == "_ga"
        || name.starts_with("_ga_")
        || name.starts_with("_gid")
        || name.starts_with("_gat")
    {
        Some("ga")
    } else if name.starts_with("_pk_") {
        Some("matomo")
    } else {
        None
    }
}

/// A placeholder upstream for `host`: `.invalid` never resolves (RFC 2606), so the file is
/// accepted by `check` and answers 502 until someone puts the real origin in.
pub fn placeholder_upstream(host: &str) -> String {
    format!("http://{}.origin.invalid:8000", slug(host))
}

/// `host` as one DNS label: `*.` dropped, every other character that is not a letter or digit
/// replaced by `-`.
pub fn slug(host: &str) -> String {
    let h = host.trim().trim_start_matches("*.").to_ascii_lowercase();
    let s: String = h
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = s.trim_matches('-').to_owned();
    if s.is_empty() {
        "portal".to_owned()
    } else {
        s
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One line of the page.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    Blank,
    /// A heading's text, without `#` marks or emphasis.
    Heading(String),
    /// Table cells, trimmed.
    Row(Vec<String>),
    /// A Markdown table's `|---|---|` line.
    Rule,
    Prose(&'a str),
}

/// Drops `**bold**`, `*emphasis*` and `` `code` `` marks around a cell or heading: only when
/// they open and close it, since `*` also marks a prefix (`_pk_id.*`). Not `_`: cookie names
/// start and end with it.
fn strip_emphasis(s: &str) -> String {
    let mut t = s.trim();
    loop {
        let inner = ["**", "*", "`"].iter().find_map(|m| {
            t.strip_prefix(m)
                .and_then(|r| r.strip_suffix(m))
                .filter(|r| !r.is_empty())
        });
        match inner {
            Some(i) => t = i.trim(),
            None => return t.to_owned(),
        }
    }
}

fn read_line(raw: &str) -> Line<'_> {
    let line = raw.trim_end_matches(['\r', '\n']);
    let t = line.trim();
    if t.is_empty() {
        return Line::Blank;
    }
    if line.contains('\t') {
        let cells: Vec<String> = line.split('\t').map(strip_emphasis).collect();
        if cells.iter().filter(|c| !c.is_empty()).count() >= 2 {
            return Line::Row(cells);
        }
    }
    if t.starts_with('|') {
        let inner = t.trim_start_matches('|').trim_end_matches('|');
        if inner
            .chars()
            .all(|c| matches!(c, '-' | ':' | '|' | ' ' | '\t'))
        {
            return Line::Rule;
        }
        return Line::Row(inner.split('|').map(strip_emphasis).collect());
    }
    if let Some(rest) = t.strip_prefix('#') {
        let text = rest.trim_start_matches('#');
        if text.starts_with(' ') || text.is_empty() {
            return Line::Heading(strip_emphasis(text.trim().trim_end_matches('#')));
        }
    }
    // Setext underlines and thematic breaks.
    if t.chars().all(|c| matches!(c, '=' | '-' | '*' | '_' | ' ')) {
        return Line::Blank;
    }
    // Plain text: a short line that does not read as a sentence or a list item is a heading.
    let sentence_end = t.ends_with(['.', ':', ';', ',', '!']);
    let list_item = t.starts_with("- ") || t.starts_with("* ") || t.starts_with("+ ");
    if !sentence_end && !list_item && t.chars().count() <= 160 {
        return Line::Heading(strip_emphasis(t));
    }
    Line::Prose(t)
}

/// Which column holds what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Columns {
    provider: Option<usize>,
    function: Option<usize>,
    names: usize,
    purpose: Option<usize>,
}

/// The portals' pages' order: provider, function and location, cookie name(s), purposes.
const SEED_COLUMNS: Columns = Columns {
    provider: Some(0),
    function: Some(1),
    names: 2,
    purpose: Some(3),
};

/// The columns a header row names; `None` when the row is not a header (every non-empty cell
/// of a header names a column kind; the first one naming cookies is the names column).
fn header(cells: &[String]) -> Option<Columns> {
    let mut names = None;
    let mut provider = None;
    let mut function = None;
    let mut purpose = None;
    for (i, c) in cells.iter().enumerate() {
        let c = c.to_lowercase();
        if c.is_empty() {
            continue;
        }
        let has = |words: &[&str]| words.iter().any(|w| c.contains(w));
        if has(&["cookie"]) || matches!(c.as_str(), "name" | "name(s)" | "names") {
            names = names.or(Some(i));
        } else if has(&[
            "provider",
            "vendor",
            "company",
            "publisher",
            "service",
            "third part",
        ]) {
            provider = provider.or(Some(i));
        } else if has(&["purpose", "description", "finalit", "why"]) {
            purpose = purpose.or(Some(i));
        } else if has(&["function", "location", "type", "used for"]) {
            function = function.or(Some(i));
        } else if !has(&[
            "duration",
            "expir",
            "lifetime",
            "retention",
            "domain",
            "category",
            "storage",
        ]) {
            return None;
        }
    }
    let names = names?;
    (provider.is_some() || purpose.is_some() || function.is_some()).then_some(Columns {
        provider,
        function,
        names,
        purpose,
    })
}

/// One name of a names cell: an exact name, or a prefix when it ends in `*` or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    Exact(String),
    Prefix(String),
    /// Not a valid cookie name, as written.
    Invalid(String),
}

impl Name {
    /// As a person reads it: a prefix with a trailing `*`.
    fn display(&self) -> String {
        match self {
            Name::Exact(s) | Name::Invalid(s) => s.clone(),
            Name::Prefix(s) => format!("{s}*"),
        }
    }
}

/// Splits a names cell: `_ga, _gid`, `_pk_id.*`, `_ga_<container-id>`, `a / b`, `a and b`.
fn names(cell: &str) -> Vec<Name> {
    // Text in parentheses explains, it names nothing.
    let mut plain = String::with_capacity(cell.len());
    let mut depth = 0_u32;
    for c in cell.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            c if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    plain
        .split([',', ';', '/', ' ', '\u{a0}'])
        .map(|t| t.trim().trim_matches(['`', '"', '\''].as_slice()))
        .filter(|t| !t.is_empty() && !t.chars().all(|c| c == '*'))
        .filter(|t| !matches!(*t, "and" | "or" | "&" | "et" | "y"))
        .map(name)
        .collect()
}

fn name(raw: &str) -> Name {
    // Markdown escapes (`\_ga`) are not part of the name.
    let raw = raw.replace('\\', "");
    // A wildcard or a placeholder (`_ga_*`, `_pk_id.<site>`, `_ga_XXXXXX`) ends a prefix.
    let cut = raw.find(['<', '{', '[', '*']).or_else(|| {
        let stem = raw.trim_end_matches('X');
        (raw.len() - stem.len() >= 3 && stem.ends_with(['_', '.', '-'])).then_some(stem.len())
    });
    match cut {
        Some(i) => {
            let p = raw.get(..i).unwrap_or("");
            if is_cookie_name(p) {
                Name::Prefix(p.to_owned())
            } else {
                Name::Invalid(raw.clone())
            }
        }
        None if is_cookie_name(&raw) => Name::Exact(raw),
        None => Name::Invalid(raw),
    }
}

/// One cookie entry to write.
struct Entry<'a> {
    name: &'a Name,
    category: &'a str,
    provider: Option<&'a str>,
    function: Option<&'a str>,
    purpose: Option<&'a str>,
}

fn write_entry(out: &mut String, e: &Entry<'_>, commented: bool) {
    let p = if commented { "# " } else { "" };
    let _ = writeln!(out, "{p}[[cookie]]");
    match e.name {
        Name::Exact(n) | Name::Invalid(n) => {
            let _ = writeln!(out, "{p}name = {}", toml_str(n));
        }
        Name::Prefix(n) => {
            let _ = writeln!(out, "{p}prefix = {}", toml_str(n));
        }
    }
    let _ = writeln!(out, "{p}category = {}", toml_str(e.category));
    let key = match e.name {
        Name::Exact(n) | Name::Prefix(n) | Name::Invalid(n) => known_consent_key(n),
    };
    if let (Some(key), false) = (key, e.category == NECESSARY) {
        let _ = writeln!(out, "{p}consent = {}", toml_str(key));
    }
    for (field, v) in [
        ("provider", e.provider),
        ("function", e.function),
        ("purpose", e.purpose),
    ] {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            let _ = writeln!(out, "{p}{field} = {}", toml_str(v));
        }
    }
    out.push('\n');
}

/// Reads the page `text` (named `source` in messages) and writes the registry file for `host`.
pub fn import(text: &str, source: &str, host: &str) -> Result<Imported, ImportError> {
    let host_ok = host
        .trim()
        .parse::<crate::policy::host::HostPattern>()
        .ok()
        .map(|p| p.to_string());
    let Some(host) = host_ok else {
        return Err(ImportError::BadHost {
            file: source.to_owned(),
            host: host.to_owned(),
        });
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {host}: cookie registry imported by `consent-gateway import-policy` from {source}."
    );
    let _ = writeln!(
        out,
        "# Review it: each cookie's category comes from the heading it sits under on the page;"
    );
    let _ = writeln!(
        out,
        "# lines starting with \"# UNCLASSIFIED\" or \"# UNREADABLE\" need a person to decide."
    );
    let _ = writeln!(out, "hosts = [{}]", toml_str(&host));
    let _ = writeln!(
        out,
        "# PLACEHOLDER: the .invalid name never resolves (RFC 2606). Replace it with this portal's origin."
    );
    let _ = writeln!(out, "upstream = {}", toml_str(&placeholder_upstream(&host)));
    if !host.starts_with("*.") {
        let _ = writeln!(out, "upstream_host = {}", toml_str(&host));
    }
    let _ = writeln!(
        out,
        "# Consider \"report-only\" first: it logs and counts what enforce would drop."
    );
    out.push_str("mode = \"enforce\"\nunknown_cookies = \"drop\"\n\n");
    let _ = writeln!(
        out,
        "[consent]\ncookie = {}\nformat = \"json\"\n",
        toml_str(CONSENT_COOKIE)
    );

    let read = read_page(text, source, None, &mut out)?;
    let mut cookies = read.added;
    if !read.consent_cookie_seen {
        let _ = writeln!(
            out,
            "# --- necessary: the consent cookie, always necessary (not listed on the page) ---\n"
        );
        let n = Name::Exact(CONSENT_COOKIE.to_owned());
        write_entry(
            &mut out,
            &Entry {
                name: &n,
                category: NECESSARY,
                provider: None,
                function: None,
                purpose: Some("Remembers the visitor's cookie choices"),
            },
            false,
        );
        cookies += 1;
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    Ok(Imported {
        toml: out,
        cookies,
        unclassified: read.unclassified,
    })
}

/// What [`merge`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The existing file, unchanged, followed by what was added (the existing file byte for
    /// byte when nothing was).
    pub toml: String,
    /// `[[cookie]]` entries added.
    pub added: usize,
    /// Names the page lists that an entry of the file already covers, with the same category.
    pub already: usize,
    /// Names the page lists under another category than the file's entry for them (the file's
    /// entry stands; a `# DIFFERS` comment says so).
    pub differs: usize,
    /// Source lines or names written as comments for a person to classify.
    pub unclassified: usize,
}

/// Why a page could not be merged into a registry file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Page(#[from] ImportError),
    /// The existing file does not pass `check`.
    #[error("{0}")]
    Existing(crate::config::ConfigErrors),
    #[error("{file}:1:1: --host: {host:?} is not one of this file's hosts ({hosts})")]
    OtherHost {
        file: String,
        host: String,
        hosts: String,
    },
    /// The merged file does not pass `check` (a bug: what is added never collides).
    #[error("the merged file does not pass check:\n{0}")]
    Merged(crate::config::ConfigErrors),
}

/// Adds to the registry file `existing` (its text; `path` is where it was read, for messages and
/// relative paths) the cookies the page `text` lists that none of its entries covers, keeping
/// everything the file has: its text is copied unchanged and the new entries appended. A name
/// an entry already matches (exactly, by a prefix, or as the consent cookie) is left to that
/// entry, so every cookie the file decided before is decided the same way after. `host`, if
/// given, must be one of the file's `hosts`. The result is checked as `check` would.
pub fn merge(
    text: &str,
    source: &str,
    existing: &str,
    path: &std::path::Path,
    host: Option<&str>,
) -> Result<Merged, MergeError> {
    let policy = crate::config::parse_host_file(path, existing).map_err(MergeError::Existing)?;
    if let Some(h) = host {
        let wanted = h.trim().parse::<crate::policy::host::HostPattern>().ok();
        if wanted.is_none() || !policy.hosts.iter().any(|p| Some(p) == wanted.as_ref()) {
            return Err(MergeError::OtherHost {
                file: path.display().to_string(),
                host: h.to_owned(),
                hosts: policy
                    .hosts
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let mut body = String::new();
    let read = read_page(text, source, Some(&policy), &mut body)?;
    let mut toml = existing.to_owned();
    if !body.is_empty() {
        if !toml.is_empty() && !toml.ends_with('\n') {
            toml.push('\n');
        }
        let _ = writeln!(
            toml,
            "\n# === Added by `consent-gateway import-policy --merge` from {source}: the cookies the\n\
             # === page lists that no entry above covers. Review them: each category comes from\n\
             # === the page's heading, and the consent keys are the importer's defaults (ga,\n\
             # === matomo, else the category); check them against this file's [consent] format.\n"
        );
        toml.push_str(&body);
        while toml.ends_with("\n\n") {
            toml.pop();
        }
    }
    crate::config::parse_host_file(path, &toml).map_err(MergeError::Merged)?;
    Ok(Merged {
        toml,
        added: read.added,
        already: read.already,
        differs: read.differs,
        unclassified: read.unclassified,
    })
}

/// What [`read_page`] wrote.
struct Read {
    added: usize,
    unclassified: usize,
    already: usize,
    differs: usize,
    consent_cookie_seen: bool,
}

/// The entry of `policy` that already decides `n`, as (how it matches, category): the consent
/// cookie, the entry `lookup` finds for an exact name, or for a prefix a prefix entry that
/// covers every name it does.
fn covered(policy: &HostPolicy, n: &Name) -> Option<(String, String)> {
    match n {
        Name::Exact(s) => {
            if policy.consent.is_consent_cookie(s.as_bytes()) {
                return Some(("the consent cookie".to_owned(), NECESSARY.to_owned()));
            }
            policy
                .lookup(s.as_bytes())
                .map(|e| (matcher_display(&e.matcher), e.category.clone()))
        }
        Name::Prefix(s) => policy
            .cookies
            .iter()
            .filter(|e| matches!(&e.matcher, CookieMatcher::Prefix(q) if s.starts_with(q.as_str())))
            .max_by_key(|e| e.matcher.as_str().len())
            .map(|e| (matcher_display(&e.matcher), e.category.clone())),
        Name::Invalid(_) => None,
    }
}

fn matcher_display(m: &CookieMatcher) -> String {
    match m {
        CookieMatcher::Name(n) => format!("{n:?}"),
        CookieMatcher::Prefix(p) => format!("{:?}", format!("{p}*")),
    }
}

/// Reads the page's sections and tables into `out`: a `# ---` line per section, then its
/// entries (and the rows left as comments). With `existing`, names an entry of that file
/// already covers are left out (see [`merge`]), and a section with nothing left writes nothing.
fn read_page(
    text: &str,
    source: &str,
    existing: Option<&HostPolicy>,
    out: &mut String,
) -> Result<Read, ImportError> {
    let mut heading: Option<(String, usize)> = None;
    let mut category: Option<&'static str> = None;
    let mut columns: Option<Columns> = None;
    let mut announced = false;
    // The current section's `# ---` line, written before its first output.
    let mut pending: Option<String> = None;
    let mut seen: Vec<(Name, usize)> = Vec::new();
    let mut tables = 0_usize;
    let mut read = Read {
        added: 0,
        unclassified: 0,
        already: 0,
        differs: 0,
        consent_cookie_seen: false,
    };
    let flush = |out: &mut String, pending: &mut Option<String>| {
        if let Some(p) = pending.take() {
            out.push_str(&p);
        }
    };

    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        match read_line(raw) {
            Line::Heading(h) => {
                category = classify(&h);
                heading = Some((h, lineno));
                // Each section's table may order its columns differently.
                columns = None;
                announced = false;
                pending = None;
            }
            Line::Blank | Line::Rule | Line::Prose(_) => {}
            Line::Row(cells) => {
                if let Some(c) = header(&cells) {
                    columns = Some(c);
                    tables += 1;
                    continue;
                }
                let cols = columns.unwrap_or(SEED_COLUMNS);
                if columns.is_none() {
                    tables += 1;
                    columns = Some(SEED_COLUMNS);
                }
                if !announced {
                    announced = true;
                    let (h, at) = heading
                        .as_ref()
                        .map_or(("(no heading)", 0), |(h, at)| (h.as_str(), *at));
                    pending = Some(match category {
                        Some(c) => format!("# --- {c}: {h:?} ({source}:{at}) ---\n\n"),
                        None => format!(
                            "# --- UNCLASSIFIED: {h:?} ({source}:{at}) names no category \
                             this importer knows; set each category and uncomment ---\n\n"
                        ),
                    });
                }
                let cell = |i: Option<usize>| {
                    i.and_then(|i| cells.get(i))
                        .map(String::as_str)
                        .filter(|s| !s.is_empty())
                };
                let Some(names_cell) = cell(Some(cols.names)) else {
                    read.unclassified += 1;
                    flush(out, &mut pending);
                    let _ = writeln!(
                        out,
                        "# UNREADABLE {source}:{lineno}: no cookie name in column {}: {}\n",
                        cols.names + 1,
                        raw.trim().replace('\t', " | ")
                    );
                    continue;
                };
                let found = names(names_cell);
                if found.is_empty() {
                    read.unclassified += 1;
                    flush(out, &mut pending);
                    let _ = writeln!(
                        out,
                        "# UNREADABLE {source}:{lineno}: no cookie name in {names_cell:?}\n"
                    );
                    continue;
                }
                for n in &found {
                    let is_consent_cookie = matches!(n, Name::Exact(s) if s == CONSENT_COOKIE);
                    read.consent_cookie_seen |= is_consent_cookie;
                    // The consent cookie is necessary whatever section lists it.
                    let cat = if is_consent_cookie {
                        Some(NECESSARY)
                    } else {
                        category
                    };
                    let entry = Entry {
                        name: n,
                        category: cat.unwrap_or("UNCLASSIFIED"),
                        provider: cell(cols.provider),
                        function: cell(cols.function),
                        purpose: cell(cols.purpose),
                    };
                    if let Some((by, theirs)) = existing.and_then(|p| covered(p, n)) {
                        match cat {
                            Some(c) if c != theirs => {
                                read.differs += 1;
                                flush(out, &mut pending);
                                let _ = writeln!(
                                    out,
                                    "# DIFFERS {source}:{lineno}: the page lists {:?} as {c}; \
                                     this file's entry {by} (category {theirs}) stands\n",
                                    n.display()
                                );
                            }
                            _ => read.already += 1,
                        }
                        if !seen.iter().any(|(s, _)| s == n) {
                            seen.push((n.clone(), lineno));
                        }
                        continue;
                    }
                    flush(out, &mut pending);
                    if let Name::Invalid(s) = n {
                        read.unclassified += 1;
                        let _ = writeln!(
                            out,
                            "# UNREADABLE {source}:{lineno}: {s:?} is not a valid cookie name"
                        );
                        write_entry(out, &entry, true);
                    } else if let Some((_, first)) = seen.iter().find(|(s, _)| s == n) {
                        read.unclassified += 1;
                        let _ = writeln!(
                            out,
                            "# DUPLICATE {source}:{lineno}: already listed at {source}:{first}"
                        );
                        write_entry(out, &entry, true);
                    } else if cat.is_none() {
                        read.unclassified += 1;
                        let _ = writeln!(out, "# UNCLASSIFIED {source}:{lineno}");
                        write_entry(out, &entry, true);
                    } else {
                        seen.push((n.clone(), lineno));
                        read.added += 1;
                        write_entry(out, &entry, false);
                    }
                }
            }
        }
    }
    if tables == 0 {
        return Err(ImportError::NoTable {
            file: source.to_owned(),
        });
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_map_to_categories() {
        for (h, want) in [
            (
                "Cookies necessary for the platform to function properly/functionality cookies",
                Some("necessary"),
            ),
            ("Statistics cookies", Some("statistical")),
            ("Audience measurement", Some("statistical")),
            (
                "Web analytics (Google Analytics, Matomo)",
                Some("statistical"),
            ),
            ("Advertising cookies", Some("marketing")),
            ("Marketing and targeting", Some("marketing")),
            ("Strictly necessary cookies", Some("necessary")),
            (
                "Analytics cookies we consider necessary",
                Some("statistical"),
            ),
            ("Other cookies", None),
            ("What is a cookie?", None),
        ] {
            assert_eq!(classify(h), want, "{h}");
        }
    }

    #[test]
    fn names_cell_splits_and_marks_prefixes() {
        use Name::*;
        assert_eq!(
            names("_ga, _gid"),
            [Exact("_ga".into()), Exact("_gid".into())]
        );
        assert_eq!(names("_pk_id.*"), [Prefix("_pk_id.".into())]);
        assert_eq!(names("`_ga_*`"), [Prefix("_ga_".into())]);
        assert_eq!(names("_ga_<container-id>"), [Prefix("_ga_".into())]);
        assert_eq!(names("_ga_XXXXXXX"), [Prefix("_ga_".into())]);
        assert_eq!(names("XSRF-TOKEN"), [Exact("XSRF-TOKEN".into())]);
        assert_eq!(
            names("atuserid and atidvisitor (AT Internet)"),
            [Exact("atuserid".into()), Exact("atidvisitor".into())]
        );
        assert_eq!(names("\\_ga"), [Exact("_ga".into())]);
        assert_eq!(names("sessionid"), [Exact("sessionid".into())]);
    }

    #[test]
    fn lines_are_read_as_headings_rows_and_prose() {
        assert_eq!(
            read_line("## Cookies policy"),
            Line::Heading("Cookies policy".into())
        );
        assert_eq!(
            read_line("**Analytics**"),
            Line::Heading("Analytics".into())
        );
        assert_eq!(
            read_line("Several types of cookies exist:"),
            Line::Prose("Several types of cookies exist:")
        );
        assert_eq!(read_line("| --- | :-: |"), Line::Rule);
        assert_eq!(
            read_line("| a | b |"),
            Line::Row(vec!["a".into(), "b".into()])
        );
        assert_eq!(read_line("#hashtag"), Line::Heading("#hashtag".into()));
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
    }

    #[test]
    fn slug_is_one_label() {
        assert_eq!(slug("dashboard.paris"), "dashboard-paris");
        assert_eq!(slug("*.Example.COM"), "example-com");
    }
}
