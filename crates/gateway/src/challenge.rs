//! `WWW-Authenticate` challenges (RFC 6750 §3, RFC 9449 §7.1, RFC 9728
//! §5.1): what an MCP client reads to find the authorization server
//! (`resource_metadata`), which scopes to ask for (`scope`), and whether to
//! step up (`insufficient_scope`).

use mandate_verifier::{DPOP_ALGS, Scheme};

/// One challenge; parameters are written in a fixed order: `algs` (DPoP),
/// `error`, `error_description`, `scope`, `resource_metadata`.
#[derive(Debug, Clone)]
pub struct Challenge<'a> {
    scheme: Scheme,
    error: Option<(&'static str, String)>,
    scope: Option<String>,
    resource_metadata: &'a str,
}

impl<'a> Challenge<'a> {
    pub fn new(scheme: Scheme, resource_metadata: &'a str) -> Self {
        Self { scheme, error: None, scope: None, resource_metadata }
    }

    pub fn error(mut self, code: &'static str, description: String) -> Self {
        self.error = Some((code, description));
        self
    }

    /// The scopes, space-separated; left out when empty.
    pub fn scope(mut self, scope: String) -> Self {
        self.scope = (!scope.is_empty()).then_some(scope);
        self
    }

    pub fn render(&self) -> String {
        let mut params: Vec<(&str, &str)> = Vec::new();
        if self.scheme == Scheme::Dpop {
            params.push(("algs", DPOP_ALGS));
        }
        if let Some((code, description)) = &self.error {
            params.push(("error", code));
            params.push(("error_description", description));
        }
        if let Some(scope) = &self.scope {
            params.push(("scope", scope));
        }
        params.push(("resource_metadata", self.resource_metadata));
        let params: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", quoted(v))).collect();
        format!("{} {}", self.scheme.name(), params.join(", "))
    }
}

/// An RFC 9110 quoted-string: quotes and backslashes escaped, anything
/// outside printable ASCII replaced, long text cut, so that the header is
/// always valid whatever a message holds.
fn quoted(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars().take(500) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp/everything";

    #[test]
    fn the_bare_challenge_names_the_metadata() {
        assert_eq!(Challenge::new(Scheme::Bearer, META).render(), format!(r#"Bearer resource_metadata="{META}""#));
        let scoped = Challenge::new(Scheme::Bearer, META).scope("tools.read tools.write".into()).render();
        assert_eq!(scoped, format!(r#"Bearer scope="tools.read tools.write", resource_metadata="{META}""#));
        assert_eq!(
            Challenge::new(Scheme::Bearer, META).scope(String::new()).render(),
            format!(r#"Bearer resource_metadata="{META}""#)
        );
    }

    #[test]
    fn errors_and_dpop() {
        let c = Challenge::new(Scheme::Dpop, META)
            .error("invalid_dpop_proof", "DPoP proof: the proof was already used".into());
        assert_eq!(
            c.render(),
            format!(
                r#"DPoP algs="EdDSA ES256", error="invalid_dpop_proof", error_description="DPoP proof: the proof was already used", resource_metadata="{META}""#
            )
        );
    }

    #[test]
    fn values_are_escaped() {
        let c = Challenge::new(Scheme::Bearer, META).error("invalid_token", "a \"b\" \\ c\r\nd é".into());
        let v = c.render();
        assert!(v.contains(r#"error_description="a \"b\" \\ c??d ?""#), "{v}");
        assert!(axum::http::HeaderValue::from_str(&v).is_ok());
    }
}
