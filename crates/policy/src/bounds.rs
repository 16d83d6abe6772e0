//! Bounds on a policy text, checked before Cedar parses it (SECURITY row
//! 41). Cedar's parser and the trees it builds recurse once per level of
//! nesting, so a text nested hundreds of levels deep would overflow a
//! thread's stack and abort the process. This is not a parser: it scans
//! tokens only far enough to tell strings and comments from code, and
//! counts, per statement, how deep brackets nest, how many `if`s there are
//! and how many operators chain. Every accepted text is then parsed by
//! Cedar, on a thread with a stack sized for these bounds.

/// Deepest nesting of `(`, `[` and `{` in one statement.
pub const MAX_BRACKET_DEPTH: usize = 32;
/// Most `if` expressions in one statement (they nest without brackets).
pub const MAX_IFS: usize = 32;
/// Most operators in one statement: each one can deepen the expression
/// tree by a level (`a && b && …`, `x.a.b.…`).
pub const MAX_OPERATORS: usize = 2_000;

/// Why a text was refused before parsing.
pub fn check(text: &str) -> Result<(), String> {
    let mut scan = Scan { line: 1, statement_line: 1, depth: 0, ifs: 0, operators: 0 };
    let mut chars = text.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        match c {
            '\n' => scan.line += 1,
            '"' => {
                // A string literal: skip to its closing quote, past escapes.
                loop {
                    match chars.next() {
                        None => return Ok(()), // unterminated: Cedar reports it
                        Some((_, '\\')) => {
                            chars.next();
                        }
                        Some((_, '"')) => break,
                        Some((_, '\n')) => scan.line += 1,
                        Some(_) => {}
                    }
                }
            }
            '/' if chars.peek().map(|(_, n)| *n) == Some('/') => {
                // A comment, to the end of the line.
                for (_, n) in chars.by_ref() {
                    if n == '\n' {
                        scan.line += 1;
                        break;
                    }
                }
            }
            '(' | '[' | '{' => {
                scan.depth += 1;
                if scan.depth > MAX_BRACKET_DEPTH {
                    return Err(scan.too("brackets nest", MAX_BRACKET_DEPTH));
                }
            }
            ')' | ']' | '}' => scan.depth = scan.depth.saturating_sub(1),
            ';' if scan.depth == 0 => scan.next_statement(),
            '&' | '|' | '=' | '!' | '<' | '>' | '+' | '-' | '*' | '.' => {
                // `&&`, `||`, `==`, `!=`, `<=`, `>=` count once.
                let next = chars.peek().map(|(_, n)| *n);
                let doubled = matches!(c, '&' | '|' | '=') && next == Some(c);
                let compared = matches!(c, '!' | '<' | '>') && next == Some('=');
                if doubled || compared {
                    chars.next();
                }
                scan.operator()?;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut word = String::from(c);
                while let Some((_, n)) = chars.peek().copied() {
                    if n.is_alphanumeric() || n == '_' {
                        word.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                match word.as_str() {
                    "if" => {
                        scan.ifs += 1;
                        if scan.ifs > MAX_IFS {
                            return Err(scan.too("if expressions are", MAX_IFS));
                        }
                        scan.operator()?;
                    }
                    "in" | "has" | "like" | "is" | "then" | "else" => scan.operator()?,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(())
}

struct Scan {
    line: usize,
    statement_line: usize,
    depth: usize,
    ifs: usize,
    operators: usize,
}

impl Scan {
    fn next_statement(&mut self) {
        self.statement_line = self.line;
        self.ifs = 0;
        self.operators = 0;
    }

    fn operator(&mut self) -> Result<(), String> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            return Err(self.too("operators chain", MAX_OPERATORS));
        }
        Ok(())
    }

    fn too(&self, what: &str, max: usize) -> String {
        format!(
            "the policy starting on line {}: {what} more than {max} deep or long (at line {}); split it up",
            self.statement_line, self.line
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_policies_pass() {
        let text = r#"
            // A comment with ((((( and "quotes
            @approval("user")
            permit (principal in Group::"staff", action in [Action::"a", Action::"b"], resource)
              when { resource.hasTag("x") && resource.getTag("x") == "((((((((((((((((((((((((((((((((((((" };
            forbid (principal, action, resource) unless { if principal has parent then true else false };
        "#;
        assert_eq!(check(text), Ok(()));
        // Large sets are shallow, however long.
        let set: Vec<String> = (0..5_000).map(|i| format!("Agent::\"a{i}\"")).collect();
        assert_eq!(check(&format!("permit (principal in [{}], action, resource);", set.join(", "))), Ok(()));
        // Each statement has its own budget.
        let one = format!("permit (principal, action, resource) when {{ {} }};\n", vec!["true"; 1_000].join(" && "));
        assert_eq!(check(&one.repeat(50)), Ok(()));
    }

    #[test]
    fn strings_with_escapes_and_brackets_are_skipped_whole() {
        // Escaped quotes, a backslash before a newline, brackets and
        // operators inside strings: none of them count.
        let inner = format!(r#"\"{}\\"#, "((((&&||..".repeat(100));
        let text =
            format!("permit (principal, action, resource) when {{ resource.getTag(\"k\") == \"{inner}\\\n\" }};");
        assert_eq!(check(&text), Ok(()));
        // A bracket after a string is still counted.
        let deep =
            format!("permit (principal, action, resource) when {{ \"a\\\"b\" == \"c\" && {}true }};", "(".repeat(40));
        assert!(check(&deep).is_err());
    }

    #[test]
    fn deep_or_long_nesting_is_refused() {
        let parens =
            format!("permit (principal, action, resource) when {{ {}true{} }};", "(".repeat(150), ")".repeat(150));
        assert!(check(&parens).is_err());
        let chain = format!("permit (principal, action, resource) when {{ {} }};", vec!["true"; 3_000].join(" && "));
        assert!(check(&chain).is_err());
        let ifs = format!(
            "permit (principal, action, resource) when {{ {}true{} }};",
            "if true then ".repeat(40),
            " else false".repeat(40)
        );
        assert!(check(&ifs).is_err());
        let members = format!("permit (principal, action, resource) when {{ principal{} }};", ".a".repeat(3_000));
        assert!(check(&members).is_err());
        let err =
            check(&format!("\n\nforbid (principal, action, resource) when {{ {}x }};", "[".repeat(40))).unwrap_err();
        assert!(err.contains("line 3"), "{err}");
    }
}
