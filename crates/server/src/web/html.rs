//! HTML building: every value that reaches a page goes through [`esc`].

use std::fmt::Write;

use mandate_model::records::User;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Bidi controls could reorder what a person reads (SECURITY row 30).
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => {
                let _ = write!(out, "&#x{:X};", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A whole page: the header with navigation and the sign-out button when a
/// person is signed in, then `main`.
pub fn layout(title: &str, who: Option<(&User, &str)>, current: &str, main: &str) -> String {
    let mut nav = String::new();
    if let Some((user, csrf)) = who {
        nav.push_str(r#"<nav aria-label="Main"><ul>"#);
        for (href, label) in
            [("/approvals", "Approvals"), ("/grants", "Grants"), ("/agents", "Agents"), ("/audit", "Audit")]
        {
            let here = if href == current { r#" aria-current="page""# } else { "" };
            let _ = write!(nav, r#"<li><a href="{href}"{here}>{label}</a></li>"#);
        }
        let _ = write!(
            nav,
            r#"</ul></nav><form class="signout" method="post" action="/logout"><span>{}</span>{}<button type="submit">Sign out</button></form>"#,
            esc(&user.email),
            csrf_field(csrf),
        );
    }
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Mandate</title>
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header><span class="brand">Mandate</span>{nav}</header>
<main id="main" tabindex="-1">
<h1>{title}</h1>
{main}
</main>
</body>
</html>
"##,
        title = esc(title),
    )
}

pub fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

/// A one-button form that posts to `action` (and updates the live region
/// in place when scripts run).
pub fn button_form(action: &str, csrf: &str, label: &str, extra: &str, class: &str) -> String {
    format!(
        r#"<form method="post" action="{}" data-live>{}{extra}<button type="submit" class="{class}">{}</button></form>"#,
        esc(action),
        csrf_field(csrf),
        esc(label)
    )
}

/// A status message region that screen readers announce.
pub fn notice(text: &str, kind: &str) -> String {
    if text.is_empty() {
        return r#"<p id="notice" role="status" aria-live="polite" tabindex="-1"></p>"#.into();
    }
    format!(r#"<p id="notice" role="status" aria-live="polite" tabindex="-1" class="{kind}">{}</p>"#, esc(text))
}

/// A time as `YYYY-MM-DD HH:MM UTC`.
pub fn when(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_bidi() {
        assert_eq!(esc(r#"<a href="x">'&"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;");
        assert_eq!(esc("a\u{202E}b"), "a&#x202E;b");
    }
}
