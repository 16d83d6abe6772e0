//! What pages share: the escaper every template renders with, and how
//! values are written on them.

use std::fmt::{self, Write};

/// The pages' escaper (`askama.toml`): askama's HTML escaping, plus the
/// bidirectional controls, which could reorder what a person reads
/// (SECURITY row 30), written as character references.
#[derive(Debug, Clone, Copy, Default)]
pub struct Html;

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl askama::filters::Escaper for Html {
    fn write_escaped_str<W: Write>(&self, mut dest: W, string: &str) -> fmt::Result {
        let mut rest = string;
        while let Some((i, c)) = rest.char_indices().find(|(_, c)| is_bidi_control(*c)) {
            askama::filters::Html.write_escaped_str(&mut dest, rest.get(..i).unwrap_or_default())?;
            write!(dest, "&#x{:X};", u32::from(c))?;
            rest = rest.get(i + c.len_utf8()..).unwrap_or_default();
        }
        askama::filters::Html.write_escaped_str(dest, rest)
    }

    fn write_escaped_char<W: Write>(&self, mut dest: W, c: char) -> fmt::Result {
        if is_bidi_control(c) {
            write!(dest, "&#x{:X};", u32::from(c))
        } else {
            askama::filters::Html.write_escaped_char(dest, c)
        }
    }
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A time as `YYYY-MM-DD HH:MM UTC`.
pub fn when(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
}

#[cfg(test)]
mod tests {
    use askama::filters::Escaper;

    use super::*;

    fn esc(s: &str) -> String {
        let mut out = String::new();
        let escaped = Html.write_escaped_str(&mut out, s);
        assert!(escaped.is_ok());
        out
    }

    #[test]
    fn escapes_markup_quotes_and_bidi() {
        assert_eq!(esc(r#"<a href="x">'&"#), "&#60;a href=&#34;x&#34;&#62;&#39;&#38;");
        assert_eq!(esc("a\u{202E}b\u{2066}"), "a&#x202E;b&#x2066;");
    }
}
