//! `/policy/{host}`: a host's cookie policy rendered from the registry serving now.
//!
//! Pure: [`view`] turns a [`HostPolicy`] and the generation that holds it into a [`PolicyView`],
//! which [`html`] renders as a self-contained accessible page (no script, no external resource)
//! and which serialises as the JSON answer. The admin endpoint does the content negotiation.
//!
//! The JSON schema is stable (`schema` is `consent-gateway/policy/v1`); fields are only ever
//! added. It is documented in docs/security.md ("Published cookie policy").

use serde::Serialize;

use crate::policy::registry::{CookieMatcher, HostPolicy, NECESSARY};

/// The value of `schema` in the JSON answer.
pub const SCHEMA: &str = "consent-gateway/policy/v1";

/// One host's policy as published.
#[derive(Debug, Serialize)]
pub struct PolicyView {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// The host asked for, as given in the path.
    pub host: String,
    /// The first `hosts` entry of the registry file that serves it.
    pub name: String,
    /// Every host pattern of that file.
    pub hosts: Vec<String>,
    /// The registry generation this was rendered from.
    pub generation: u64,
    /// When that generation was loaded (RFC 3339, UTC).
    pub loaded_at: String,
    /// `enforce` or `report-only`.
    pub mode: &'static str,
    /// `drop` or `keep`: what happens to cookies no entry names.
    pub unknown_cookies: &'static str,
    pub consent: ConsentView,
    /// Categories refused when the request carries `Sec-GPC: 1`.
    pub gpc: Vec<String>,
    /// Categories, `necessary` first, then in the order the file first uses them.
    pub categories: Vec<CategoryView>,
}

/// Where consent is read from.
#[derive(Debug, Serialize)]
pub struct ConsentView {
    /// The consent cookie's name (a prefix for `complianz`).
    pub cookie: String,
    /// The consent format (`json`, `onetrust`, ...).
    pub format: &'static str,
}

/// One category and its cookies, in file order.
#[derive(Debug, Serialize)]
pub struct CategoryView {
    pub name: String,
    /// False only for `necessary`.
    pub requires_consent: bool,
    /// The category is in the host's `gpc` list.
    pub refused_by_gpc: bool,
    pub cookies: Vec<CookieView>,
}

/// One `[[cookie]]` entry.
#[derive(Debug, Serialize)]
pub struct CookieView {
    /// The exact name, or the prefix.
    pub name: String,
    /// `name` or `prefix`.
    #[serde(rename = "match")]
    pub matcher: &'static str,
    /// The name as shown to people: a prefix ends in `*` (`_ga_*`).
    pub display: String,
    pub provider: Option<String>,
    pub function: Option<String>,
    pub purpose: Option<String>,
    /// Consent keys, any of which grants it; empty for a necessary cookie.
    pub consent: Vec<String>,
    /// Domain variants the gateway expires besides host-only.
    pub domains: Vec<String>,
    /// Path of the gateway's deletions.
    pub path: String,
}

/// The published view of `policy`, as served by `generation` (loaded at `loaded_at`).
pub fn view(host: &str, policy: &HostPolicy, generation: u64, loaded_at: &str) -> PolicyView {
    let mut categories: Vec<CategoryView> = Vec::new();
    for c in &policy.cookies {
        let i = match categories.iter().position(|k| k.name == c.category) {
            Some(i) => i,
            None => {
                categories.push(CategoryView {
                    name: c.category.clone(),
                    requires_consent: !c.necessary,
                    refused_by_gpc: c.refused_by_gpc,
                    cookies: Vec::new(),
                });
                categories.len() - 1
            }
        };
        let (name, matcher, display) = match &c.matcher {
            CookieMatcher::Name(n) => (n.clone(), "name", n.clone()),
            CookieMatcher::Prefix(p) => (p.clone(), "prefix", format!("{p}*")),
        };
        if let Some(cat) = categories.get_mut(i) {
            cat.cookies.push(CookieView {
                name,
                matcher,
                display,
                provider: c.provider.clone(),
                function: c.function.clone(),
                purpose: c.purpose.clone(),
                consent: if c.necessary {
                    Vec::new()
                } else {
                    c.consent.clone()
                },
                domains: c.domains.clone(),
                path: c.path.clone(),
            });
        }
    }
    // Stable: necessary first, the rest keep their first-use order.
    categories.sort_by_key(|c| c.name != NECESSARY);
    PolicyView {
        schema: SCHEMA,
        host: host.to_owned(),
        name: policy.name.clone(),
        hosts: policy.hosts.iter().map(ToString::to_string).collect(),
        generation,
        loaded_at: loaded_at.to_owned(),
        mode: policy.mode.as_str(),
        unknown_cookies: match policy.unknown_cookies {
            crate::policy::registry::UnknownCookies::Drop => "drop",
            crate::policy::registry::UnknownCookies::Keep => "keep",
        },
        consent: ConsentView {
            cookie: policy.consent.cookie.clone(),
            format: policy.consent.format.as_str(),
        },
        gpc: policy.gpc.clone(),
        categories,
    }
}

/// Escapes text for HTML element content and double- or single-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A category name as a heading: `statistical` → `Statistical`.
fn title(category: &str) -> String {
    let mut c = category.chars();
    match c.next() {
        Some(f) => f
            .to_uppercase()
            .chain(c)
            .collect::<String>()
            .replace(['_', '-'], " "),
        None => String::new(),
    }
}

/// An `id` for a category's heading: letters, digits and `-` only.
fn anchor(category: &str) -> String {
    let slug: String = category
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("category-{slug}")
}

fn opt(s: Option<&String>) -> String {
    s.map_or_else(
        || "<span class=\"none\">not stated</span>".to_owned(),
        |s| escape(s),
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;line-height:1.5;margin:0;color:#1a1a1a;background:#fff}\
main{max-width:72rem;margin:0 auto;padding:1rem 1.5rem 3rem}\
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}\
caption{text-align:left;font-weight:600;padding:.25rem 0}\
th,td{border:1px solid #767676;padding:.4rem .6rem;text-align:left;vertical-align:top}\
thead th{background:#eee}\
code{font-family:ui-monospace,monospace}\
.none{color:#595959;font-style:italic}\
.meta{color:#404040}\
@media (prefers-color-scheme:dark){body{background:#121212;color:#eee}thead th{background:#2a2a2a}.meta,.none{color:#bbb}}";

/// The page a portal can link as its cookie policy.
pub fn html(v: &PolicyView) -> String {
    let host = escape(&v.host);
    let mut out = String::with_capacity(4096);
    out.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str(&format!("<title>Cookie policy of {host}</title>\n"));
    out.push_str(&format!(
        "<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
    ));
    out.push_str(&format!("<h1>Cookie policy of {host}</h1>\n"));

    let enforcement = if v.mode == "enforce" {
        "The gateway in front of this site removes every cookie below that your consent does \
         not allow before it reaches your browser, and expires such cookies if your browser \
         still holds them."
    } else {
        "This site is in <strong>report-only</strong> mode: the gateway in front of it records \
         which cookies your consent does not allow but does not remove them yet."
    };
    out.push_str(&format!(
        "<p>This page lists every cookie this site may set, by category. It is generated from \
         the cookie registry that is enforced right now. {enforcement}</p>\n"
    ));
    let unknown = if v.unknown_cookies == "drop" {
        "Cookies not listed here are removed."
    } else {
        "Cookies not listed here are let through."
    };
    out.push_str(&format!(
        "<p>Your choices are read from the cookie <code>{}</code> (format <code>{}</code>). \
         Necessary cookies need no consent; every other cookie is set only when you consent to \
         one of its consent keys. {unknown}</p>\n",
        escape(&v.consent.cookie),
        escape(v.consent.format),
    ));
    if !v.gpc.is_empty() {
        let cats: Vec<String> = v.gpc.iter().map(|c| escape(&title(c))).collect();
        out.push_str(&format!(
            "<p>When your browser sends a Global Privacy Control signal (<code>Sec-GPC: 1</code>), \
             these categories are refused whatever you chose: {}.</p>\n",
            cats.join(", ")
        ));
    }

    if v.categories.len() > 1 {
        out.push_str("<nav aria-label=\"Categories\">\n<h2>Categories</h2>\n<ul>\n");
        for c in &v.categories {
            out.push_str(&format!(
                "<li><a href=\"#{}\">{}</a> ({} {})</li>\n",
                anchor(&c.name),
                escape(&title(&c.name)),
                c.cookies.len(),
                if c.cookies.len() == 1 {
                    "entry"
                } else {
                    "entries"
                }
            ));
        }
        out.push_str("</ul>\n</nav>\n");
    }
    if v.categories.is_empty() {
        out.push_str("<p>The registry lists no cookie for this site.</p>\n");
    }

    for c in &v.categories {
        let id = anchor(&c.name);
        let name = escape(&title(&c.name));
        out.push_str(&format!(
            "<section aria-labelledby=\"{id}\">\n<h2 id=\"{id}\">{name}</h2>\n"
        ));
        if c.requires_consent {
            out.push_str(&format!(
                "<p>Set only with your consent.{}</p>\n",
                if c.refused_by_gpc {
                    " Refused when your browser sends a Global Privacy Control signal."
                } else {
                    ""
                }
            ));
        } else {
            out.push_str("<p>Needed for the site to work; set without asking for consent.</p>\n");
        }
        out.push_str(&format!(
            "<table>\n<caption>{name} cookies of {host}</caption>\n<thead>\n<tr>\
             <th scope=\"col\">Cookie name</th><th scope=\"col\">Provider</th>\
             <th scope=\"col\">Function</th><th scope=\"col\">Purpose</th>\
             <th scope=\"col\">Consent key</th></tr>\n</thead>\n<tbody>\n"
        ));
        for k in &c.cookies {
            let cookie = if k.matcher == "prefix" {
                format!(
                    "<code>{}</code> <span class=\"meta\">(every cookie whose name starts with \
                     <code>{}</code>)</span>",
                    escape(&k.display),
                    escape(&k.name)
                )
            } else {
                format!("<code>{}</code>", escape(&k.name))
            };
            let consent = if k.consent.is_empty() {
                "<span class=\"none\">none needed</span>".to_owned()
            } else {
                k.consent
                    .iter()
                    .map(|s| format!("<code>{}</code>", escape(s)))
                    .collect::<Vec<_>>()
                    .join(" or ")
            };
            out.push_str(&format!(
                "<tr><th scope=\"row\">{cookie}</th><td>{}</td><td>{}</td><td>{}</td><td>{consent}</td></tr>\n",
                opt(k.provider.as_ref()),
                opt(k.function.as_ref()),
                opt(k.purpose.as_ref()),
            ));
        }
        out.push_str("</tbody>\n</table>\n</section>\n");
    }

    out.push_str(&format!(
        "<footer>\n<p class=\"meta\">Registry generation {} loaded at <time datetime=\"{}\">{}</time>; \
         mode <code>{}</code>. Also available as JSON (<code>Accept: application/json</code>).</p>\n\
         </footer>\n</main>\n</body>\n</html>\n",
        v.generation,
        escape(&v.loaded_at),
        escape(&v.loaded_at),
        escape(v.mode),
    ));
    out
}

/// Whether an `Accept` header prefers `application/json` to `text/html`. Media ranges are
/// weighed by `q`; a tie, a missing header or `*/*` alone means HTML.
pub fn wants_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut json = 0.0_f32;
    let mut html = 0.0_f32;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/json" => json = json.max(q),
            "text/html" => html = html.max(q),
            "application/*" => json = json.max(q * 0.99),
            "text/*" | "*/*" => html = html.max(q * 0.99),
            _ => {}
        }
    }
    json > 0.0 && json > html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_host_file;

    const FILE: &str = r#"hosts = ["portal.test", "*.portal.test"]
upstream = "http://127.0.0.1:1"
gpc = ["marketing"]

[[cookie]]
prefix = "_ga_"
category = "statistical"
consent = ["ga", "C0002"]
provider = "Google"
purpose = "GA4 <session> & state"

[[cookie]]
name = "ads"
category = "marketing"

[[cookie]]
name = "sessionid"
category = "necessary"
provider = "Opendatasoft"
function = "Authentication"
purpose = "To remember the user"
"#;

    fn sample() -> PolicyView {
        let p = parse_host_file(std::path::Path::new("t.toml"), FILE).unwrap();
        view("portal.test", &p, 7, "2026-01-01T00:00:00Z")
    }

    #[test]
    fn necessary_comes_first_then_file_order() {
        let names: Vec<String> = sample().categories.into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["necessary", "statistical", "marketing"]);
    }

    #[test]
    fn prefix_is_marked_and_necessary_has_no_keys() {
        let v = sample();
        let ga = &v.categories[1].cookies[0];
        assert_eq!((ga.matcher, ga.display.as_str()), ("prefix", "_ga_*"));
        assert_eq!(ga.consent, ["ga", "C0002"]);
        assert!(v.categories[0].cookies[0].consent.is_empty());
        assert!(v.categories[2].refused_by_gpc);
        assert!(!v.categories[1].refused_by_gpc);
    }

    #[test]
    fn html_escapes_registry_text() {
        let h = html(&sample());
        assert!(h.contains("GA4 &lt;session&gt; &amp; state"));
        assert!(!h.contains("<session>"));
        assert!(!h.contains("<script"));
    }

    #[test]
    fn html_has_accessible_structure() {
        let h = html(&sample());
        assert!(h.starts_with("<!doctype html>\n<html lang=\"en\">"));
        assert_eq!(h.matches("<caption>").count(), 3);
        assert!(h.contains("<th scope=\"col\">Cookie name</th>"));
        assert!(h.contains("<th scope=\"row\"><code>sessionid</code></th>"));
        assert!(h.contains("Registry generation 7"));
    }

    #[test]
    fn accept_negotiation() {
        assert!(!wants_json(None));
        assert!(wants_json(Some("application/json")));
        assert!(wants_json(Some("application/json, text/plain;q=0.5")));
        assert!(!wants_json(Some("*/*")));
        assert!(!wants_json(Some("text/html,application/json")));
        assert!(!wants_json(Some(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(wants_json(Some("text/html;q=0.5, application/json")));
        assert!(!wants_json(Some("application/json;q=0")));
    }
}
