//! `/inventory/{host}` as an HTML page for a person reviewing a host's cookies: unregistered
//! names first with their suggestions, then registered ones; cookies that went to browsers
//! before consent stand out. Pure; no script, no external resource (the admin endpoint serves it
//! with a CSP that allows only the inline style).

use super::{CookieView, HostInventory};
use crate::policy::page::escape;

const STYLE: &str = "body{font-family:system-ui,sans-serif;line-height:1.5;margin:0;color:#1a1a1a;background:#fff}\
main{max-width:90rem;margin:0 auto;padding:1rem 1.5rem 3rem}\
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem;font-size:.95rem}\
caption{text-align:left;font-weight:600;padding:.25rem 0}\
th,td{border:1px solid #767676;padding:.35rem .5rem;text-align:left;vertical-align:top}\
thead th{background:#eee}\
code{font-family:ui-monospace,monospace}\
.none{color:#595959;font-style:italic}\
.meta{color:#404040}\
.early{background:#fde2e1;font-weight:600}\
.early::after{content:\" \\26A0\"}\
@media (prefers-color-scheme:dark){body{background:#121212;color:#eee}thead th{background:#2a2a2a}.meta,.none{color:#bbb}.early{background:#5c1f1c}}";

/// Whether an `Accept` header asks for HTML rather than JSON: it names `text/html` with a
/// higher `q` than `application/json` (browsers do; `curl`'s `*/*` and a missing header get
/// JSON, the endpoint's default).
pub fn wants_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let (mut html, mut json) = (0.0_f32, 0.0_f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .filter_map(|q| q.trim().parse::<f32>().ok())
            .next_back()
            .unwrap_or(1.0);
        match media.as_str() {
            "text/html" => html = html.max(q),
            "application/json" => json = json.max(q),
            _ => {}
        }
    }
    html > 0.0 && html > json
}

fn list(values: &[String]) -> String {
    if values.is_empty() {
        return "<span class=\"none\">none</span>".to_owned();
    }
    values
        .iter()
        .map(|v| format!("<code>{}</code>", escape(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn lifetime(seconds: Option<i64>) -> String {
    match seconds {
        None => "session".to_owned(),
        Some(s) if s >= 86_400 => format!("{} d", s / 86_400),
        Some(s) if s >= 3600 => format!("{} h", s / 3600),
        Some(s) => format!("{s} s"),
    }
}

fn attributes(c: &CookieView) -> String {
    let a = &c.attributes;
    if c.set_count == 0 {
        return "<span class=\"none\">never set through the gateway (a script's cookie?)</span>"
            .to_owned();
    }
    let mut flags = Vec::new();
    if a.secure {
        flags.push("Secure");
    }
    if a.httponly {
        flags.push("HttpOnly");
    }
    format!(
        "Domain {}<br>Path {}<br>SameSite {}<br>{}{}lifetime {}",
        list(&a.domains),
        list(&a.paths),
        list(&a.samesite),
        flags.join(", "),
        if flags.is_empty() { "" } else { "<br>" },
        lifetime(a.lifetime)
    )
}

fn seen(c: &CookieView) -> String {
    let mut parts = Vec::new();
    if c.set_count > 0 {
        parts.push(format!("Set-Cookie &times;{}", c.set_count));
    }
    if c.request_count > 0 {
        parts.push(format!("browser &times;{}", c.request_count));
    }
    format!(
        "{}<br><span class=\"meta\">{} &ndash; {}</span>",
        parts.join("<br>"),
        escape(&c.first_seen),
        escape(&c.last_seen)
    )
}

/// Highlighted when it went out before consent and is not a necessary cookie (those need none).
fn before_consent(c: &CookieView) -> String {
    let necessary = c.category.as_deref() == Some(crate::policy::registry::NECESSARY);
    if c.before_consent > 0 && !necessary {
        format!("<td class=\"early\">{}</td>", c.before_consent)
    } else {
        "<td>0</td>".to_owned()
    }
}

fn verdicts(c: &CookieView) -> String {
    let v = &c.verdicts;
    format!(
        "kept {}<br>dropped {}<br>would drop {}",
        v.kept, v.dropped, v.would_drop
    )
}

fn suggestion(c: &CookieView) -> String {
    match &c.suggestion {
        None => "<span class=\"none\">not in the knowledge base</span>".to_owned(),
        Some(s) => format!(
            "<strong>{}</strong> &middot; {} &middot; retention {}<br><span class=\"meta\">{} match \
             on <code>{}</code> ({}: {})</span>",
            escape(&s.category),
            escape(&s.platform),
            escape(&s.retention),
            s.matched.as_str(),
            escape(&s.entry),
            escape(&s.source),
            escape(&s.source_category),
        ),
    }
}

/// The page.
pub fn html(v: &HostInventory) -> String {
    let host = escape(&v.host);
    let mut out = String::with_capacity(8192);
    out.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str(&format!("<title>Cookie inventory of {host}</title>\n"));
    out.push_str(&format!(
        "<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
    ));
    out.push_str(&format!("<h1>Cookie inventory of {host}</h1>\n"));
    out.push_str(&format!(
        "<p>Every cookie name this gateway process has seen for the registry file <code>{}</code> \
         since it started: in the origin's <code>Set-Cookie</code> headers and in the \
         <code>Cookie</code> headers browsers sent (cookies set by the page's scripts show up \
         there). {} names: {} not in the registry, {} in it. Mode <code>{}</code>. No cookie \
         value is ever recorded.</p>\n",
        escape(&v.file),
        v.names,
        v.unregistered,
        v.registered,
        escape(&v.mode),
    ));
    if v.overflow > 0 {
        out.push_str(&format!(
            "<p class=\"early\">The inventory is full ({} names): {} sightings of further names \
             were not recorded.</p>\n",
            v.max_names_per_host, v.overflow
        ));
    }
    out.push_str(
        "<p><em>Before consent</em> counts the <code>Set-Cookie</code> headers that went to \
         browsers (or would have been dropped, in report-only mode, but went anyway) in answer to \
         requests carrying no consent cookie; highlighted for every cookie that is not \
         necessary. <code>consent-gateway suggest</code> \
         turns the unregistered names into registry entries to review.</p>\n",
    );

    let (unregistered, registered): (Vec<&CookieView>, Vec<&CookieView>) =
        v.cookies.iter().partition(|c| !c.registered);
    out.push_str("<section aria-labelledby=\"unregistered\">\n<h2 id=\"unregistered\">Not in the registry</h2>\n");
    if unregistered.is_empty() {
        out.push_str("<p class=\"none\">None seen.</p>\n");
    } else {
        out.push_str(
            "<table>\n<caption>Unregistered cookie names</caption>\n<thead>\n<tr>\
             <th scope=\"col\">Cookie name</th><th scope=\"col\">Seen</th>\
             <th scope=\"col\">Before consent</th><th scope=\"col\">Verdicts</th>\
             <th scope=\"col\">Attributes</th><th scope=\"col\">Suggestion</th></tr>\n\
             </thead>\n<tbody>\n",
        );
        for c in unregistered {
            out.push_str(&format!(
                "<tr><th scope=\"row\"><code>{}</code></th><td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(&c.name),
                seen(c),
                before_consent(c),
                verdicts(c),
                attributes(c),
                suggestion(c),
            ));
        }
        out.push_str("</tbody>\n</table>\n");
    }
    out.push_str("</section>\n");

    out.push_str(
        "<section aria-labelledby=\"registered\">\n<h2 id=\"registered\">In the registry</h2>\n",
    );
    if registered.is_empty() {
        out.push_str("<p class=\"none\">None seen.</p>\n");
    } else {
        out.push_str(
            "<table>\n<caption>Registered cookie names</caption>\n<thead>\n<tr>\
             <th scope=\"col\">Cookie name</th><th scope=\"col\">Entry</th>\
             <th scope=\"col\">Category</th><th scope=\"col\">Seen</th>\
             <th scope=\"col\">Before consent</th><th scope=\"col\">Verdicts</th>\
             <th scope=\"col\">Attributes</th></tr>\n</thead>\n<tbody>\n",
        );
        for c in registered {
            let entry = match &c.entry {
                Some(super::EntryView::Name(n)) => format!("name <code>{}</code>", escape(n)),
                Some(super::EntryView::Prefix(p)) => format!("prefix <code>{}</code>", escape(p)),
                None => "<span class=\"meta\">the consent cookie</span>".to_owned(),
            };
            out.push_str(&format!(
                "<tr><th scope=\"row\"><code>{}</code></th><td>{entry}</td><td>{}</td><td>{}</td>{}<td>{}</td><td>{}</td></tr>\n",
                escape(&c.name),
                escape(c.category.as_deref().unwrap_or_default()),
                seen(c),
                before_consent(c),
                verdicts(c),
                attributes(c),
            ));
        }
        out.push_str("</tbody>\n</table>\n");
    }
    out.push_str("</section>\n");
    out.push_str(
        "<footer>\n<p class=\"meta\">Per gateway process, kept in memory. Also available as JSON \
         (the default; <code>Accept: application/json</code>).</p>\n</footer>\n</main>\n</body>\n</html>\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_get_html_and_tools_get_json() {
        let chrome = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8";
        assert!(wants_html(Some(chrome)));
        assert!(!wants_html(None));
        assert!(!wants_html(Some("*/*")));
        assert!(!wants_html(Some("application/json")));
        assert!(!wants_html(Some("text/html;q=0.5, application/json")));
        assert!(!wants_html(Some("text/html;q=0")));
        assert!(wants_html(Some("application/json;q=0.1, text/html")));
    }
}
