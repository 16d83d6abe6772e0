//! Validation of human-facing text: names, emails, resource identifiers.
//!
//! Names are shown to people who approve delegations, so a name that looks
//! like another (Cyrillic `а` for Latin `a`), hides characters (zero-width,
//! bidi controls) or has a compatibility twin is refused (UTS #39, RFC 8264).

use unicode_normalization::UnicodeNormalization;
use unicode_security::{GeneralSecurityProfile, RestrictionLevel, RestrictionLevelDetection};

use crate::ModelError;

pub const MAX_NAME_CHARS: usize = 128;
pub const MAX_DESCRIPTION_CHARS: usize = 1024;

/// Punctuation allowed in display names besides identifier characters.
const NAME_PUNCTUATION: &[char] = &[' ', '-', '_', '.', '\'', '(', ')', '@', '&', ',', ':', '/', '#', '+'];

/// Checks a display name and returns it unchanged when it is acceptable.
pub fn validate_name(name: &str) -> Result<String, ModelError> {
    let err = |m: &str| Err(ModelError::InvalidName(m.to_owned()));
    if name.is_empty() || name.trim() != name {
        return err("must be non-empty, without leading or trailing spaces");
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return err("longer than 128 characters");
    }
    if name.contains("  ") {
        return err("has repeated spaces");
    }
    if name.chars().any(|c| c.is_control() || is_invisible(c)) {
        return err("has control, zero-width or bidirectional characters");
    }
    if name.nfc().ne(name.chars()) || name.nfkc().ne(name.chars()) {
        return err("is not in Unicode normalization form NFKC");
    }
    if !name.chars().all(|c| NAME_PUNCTUATION.contains(&c) || c.identifier_allowed()) {
        return err("has characters not allowed in identifiers (UTS #39)");
    }
    let letters: String = name.chars().filter(|c| !NAME_PUNCTUATION.contains(c)).collect();
    if letters.detect_restriction_level() > RestrictionLevel::HighlyRestrictive {
        return err("mixes scripts in a way that can be confused with another name (UTS #39)");
    }
    Ok(name.to_owned())
}

/// Free text (descriptions, purposes): printable, no invisible characters.
pub fn validate_text(field: &'static str, text: &str, max_chars: usize) -> Result<String, ModelError> {
    if text.chars().count() > max_chars {
        return Err(ModelError::InvalidField { field, reason: format!("longer than {max_chars} characters") });
    }
    if text.chars().any(|c| (c.is_control() && c != '\n') || is_invisible(c)) {
        return Err(ModelError::InvalidField {
            field,
            reason: "has control, zero-width or bidirectional characters".into(),
        });
    }
    Ok(text.to_owned())
}

/// Format characters that render as nothing or reorder text.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{E0000}'..='\u{E0FFF}')
}

/// A deliberately plain email check: one `@`, printable ASCII-or-letters on
/// both sides, a dotted domain. Returns the address in its one stored
/// spelling: local part lower-cased in ASCII, domain lower-cased.
pub fn validate_email(email: &str) -> Result<String, ModelError> {
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control() || is_invisible(c)) {
        return Err(ModelError::InvalidEmail);
    }
    let (local, domain) = email.split_once('@').ok_or(ModelError::InvalidEmail)?;
    if local.is_empty() || local.len() > 64 || domain.contains('@') || !domain.contains('.') {
        return Err(ModelError::InvalidEmail);
    }
    if domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
        return Err(ModelError::InvalidEmail);
    }
    if !domain.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '.') {
        return Err(ModelError::InvalidEmail);
    }
    // One spelling per address, made at write time and for every lookup:
    // the local part lower-cased in ASCII (as mail systems treat it in
    // practice), the domain lower-cased.
    Ok(format!("{}@{}", local.to_ascii_lowercase(), domain.to_lowercase()))
}

/// Group names and attribute keys: short, ASCII, no spaces.
pub fn validate_label(field: &'static str, s: &str) -> Result<String, ModelError> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
        return Err(ModelError::InvalidField { field, reason: format!("{s:?} must be 1-64 of A-Z a-z 0-9 - _ . :") });
    }
    Ok(s.to_owned())
}

/// A resource identifier (RFC 8707 §2): an absolute http(s) URI without a
/// fragment or user info. It is compared byte for byte, so it must already
/// be in its canonical form (lower-case scheme and host).
pub fn validate_resource_identifier(uri: &str) -> Result<String, ModelError> {
    let bad = |m: &str| Err(ModelError::InvalidResourceIdentifier(m.to_owned()));
    if uri.len() > 2048 {
        return bad("longer than 2048 bytes");
    }
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("must be printable ASCII without spaces");
    }
    let Ok(url) = url::Url::parse(uri) else { return bad("must be an absolute https:// (or http://) URI") };
    // The `url` crate would also read `https:host` or `https:\\host`:
    // identifiers are spelt the one way they are compared.
    if !matches!(url.scheme(), "https" | "http") || !uri.starts_with(&format!("{}://", url.scheme())) {
        return bad("must be an absolute https:// (or http://) URI");
    }
    if url.fragment().is_some() {
        return bad("must not have a fragment");
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return bad("must have a host and no user info");
    };
    if !url.username().is_empty() || url.password().is_some() {
        return bad("must have a host and no user info");
    }
    // The parser lowercases the host; the identifier must already be so.
    if !uri.contains(host) {
        return bad("host must be lower case");
    }
    // The parser resolves dot segments; the identifier must not have any.
    let before_query = uri.split('?').next().unwrap_or_default();
    if before_query.split('/').any(|seg| seg == "." || seg == "..") {
        return bad("must not have dot segments");
    }
    Ok(uri.to_owned())
}

/// Whether `url` is `http` to a loopback host, named exactly
/// (`127.0.0.1`, `[::1]` or `localhost`): what native apps and development
/// use instead of https.
pub fn is_loopback_http(url: &url::Url) -> bool {
    url.scheme() == "http" && matches!(url.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"))
}

/// Whether the redirect URI a request names is one the client registered:
/// the same string (RFC 9700 §4.1), or, for a loopback http redirect, the
/// same but for the port, which a native app picks when it starts
/// (RFC 8252 §7.3).
pub fn redirect_matches(registered: &str, requested: &str) -> bool {
    if registered == requested {
        return true;
    }
    let (Ok(reg), Ok(mut req)) = (url::Url::parse(registered), url::Url::parse(requested)) else {
        return false;
    };
    // Only a request spelt exactly as the URL library writes it, so that
    // nothing but the port can differ.
    if !is_loopback_http(&reg) || req.as_str() != requested || reg.as_str() != registered {
        return false;
    }
    if req.set_port(reg.port()).is_err() {
        return false;
    }
    req.as_str() == reg.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_redirects_may_name_any_port() {
        for (reg, req, ok) in [
            ("https://app.example/cb", "https://app.example/cb", true),
            ("https://app.example/cb", "https://app.example:8443/cb", false),
            ("http://127.0.0.1/callback", "http://127.0.0.1:36959/callback", true),
            ("http://127.0.0.1:3000/callback", "http://127.0.0.1:36959/callback", true),
            ("http://localhost/callback", "http://localhost:5173/callback", true),
            ("http://[::1]/cb", "http://[::1]:9/cb", true),
            ("http://127.0.0.1/callback", "http://127.0.0.1:36959/callback/x", false),
            ("http://127.0.0.1/callback", "http://127.0.0.1:36959/callback?x=1", false),
            ("http://127.0.0.1/callback", "http://127.0.0.2:36959/callback", false),
            ("http://127.0.0.1/callback", "https://127.0.0.1:36959/callback", false),
            ("http://127.0.0.1/callback", "http://127.0.0.1:36959/%63allback", false),
            ("http://127.0.0.1/callback", "http://user@127.0.0.1:36959/callback", false),
            ("http://127.0.0.1/callback", "http://127.0.0.1:36959/callback#f", false),
            ("http://127.0.0.1/callback", "HTTP://127.0.0.1:36959/callback", false),
        ] {
            assert_eq!(redirect_matches(reg, req), ok, "{reg} vs {req}");
        }
    }

    #[test]
    fn accepts_ordinary_names() {
        for n in ["Travel agent", "agent-7 (billing)", "Zoë", "日本語エージェント", "O'Brien & Co."] {
            assert_eq!(validate_name(n).as_deref(), Ok(n), "{n}");
        }
    }

    #[test]
    fn refuses_confusable_and_hidden_names() {
        for n in [
            "p\u{0430}ypal",    // Cyrillic а inside Latin
            "pay\u{200B}pal",   // zero-width space
            "evil\u{202E}gpj",  // right-to-left override
            "ｐａｙｐａｌ",     // fullwidth: NFKC twin
            "e\u{0301}t\u{e9}", // not NFC
            "tab\there",
            "",
            " padded ",
            "a  b",
        ] {
            assert!(validate_name(n).is_err(), "{n:?} accepted");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(validate_email("Alice@Example.COM").as_deref(), Ok("alice@example.com"));
        for e in ["", "alice", "a@b", "a@@b.c", "a b@c.d", "a@b..c", "@b.c"] {
            assert!(validate_email(e).is_err(), "{e}");
        }
    }

    #[test]
    fn resource_identifiers() {
        assert!(validate_resource_identifier("https://api.example.com").is_ok());
        assert!(validate_resource_identifier("https://api.example.com/v1/mail").is_ok());
        for u in [
            "api.example.com",
            "https://api.example.com#x",
            "https://user@api.example.com",
            "https://API.example.com",
            "ftp://x",
            "https://a/../b",
            "https://",
            "https:api.example.com",
            "https:\\\\api.example.com",
            "https://api.example.com:99999/",
        ] {
            assert!(validate_resource_identifier(u).is_err(), "{u}");
        }
    }
}
