//! `mandate review`: the access review's findings (DESIGN §12) from a
//! running server; `mandate review campaigns|items|decide` for its
//! campaigns (crates/cli/src/admin).

use std::io::Write;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use crate::admin::Output;
use crate::admin::client::Api;

#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// Campaigns and decisions; without one, the findings.
    #[command(subcommand)]
    command: Option<crate::admin::ReviewCommand>,
    #[command(flatten)]
    out: Output,
    /// Days without use before an agent or grant is stale (0 = now); the
    /// server's `--review-stale-days` when not given.
    #[arg(long)]
    stale_days: Option<u32>,
    /// Days a scope or delegation permission may go unused.
    #[arg(long)]
    unused_days: Option<u32>,
    /// Days ahead in which an ending grant is reported as expiring.
    #[arg(long)]
    expiring_days: Option<u32>,
    /// Agents the server reviews per request (1 to 1,000); the command
    /// follows the pages to the end either way. The default, 100, keeps
    /// each request within the 200 ms a list page is held to at 100,000
    /// agents (a page of 500 took about 250 ms p95: BENCHMARKS.md).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    page_size: u32,
}

/// `Ok(true)` when there are no findings; `main` exits 1 when there are
/// some (the answer is no), and by the refusal's code on errors. Follows
/// the review's pages to the end, printing each as it arrives, so that
/// neither side holds every finding.
pub async fn run(args: ReviewArgs) -> Result<bool> {
    if let Some(command) = args.command {
        // Not clap's `args_conflicts_with_subcommands`: it also refuses the
        // global `--server` and `--json` before a subcommand.
        if args.stale_days.is_some() || args.unused_days.is_some() || args.expiring_days.is_some() {
            anyhow::bail!("--stale-days, --unused-days and --expiring-days apply to the findings, not to a subcommand");
        }
        crate::admin::review(command, args.out).await?;
        return Ok(true);
    }
    // Each request reviews one page of agents, so it stays short however
    // large the store (ADR 0038); the client's per-request timeout holds.
    let mut query = vec![("limit", args.page_size.to_string())];
    for (name, v) in
        [("stale_days", args.stale_days), ("unused_days", args.unused_days), ("expiring_days", args.expiring_days)]
    {
        if let Some(v) = v {
            query.push((name, v.to_string()));
        }
    }
    let api = Api::new(&args.out.server)?;
    let json = args.out.server.json;
    let mut count = 0usize;
    // The first page before any output: a refused token or threshold
    // prints nothing but the error.
    let mut answer = api.get("/v1/review", &query).await?;
    let mut stdout = std::io::stdout().lock();
    if json {
        // One JSON document, `{"findings": [...]}`, written a page at a time.
        write!(stdout, "{{\"findings\": [")?;
    }
    loop {
        let findings = answer.get("findings").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        if json {
            for f in findings {
                write!(stdout, "{}\n  {}", if count == 0 { "" } else { "," }, serde_json::to_string(f)?)?;
                count += 1;
            }
        } else if !findings.is_empty() {
            write!(stdout, "{}", table(findings, count == 0))?;
            count += findings.len();
        }
        stdout.flush()?;
        match answer.get("next_cursor").and_then(Value::as_str) {
            Some(next) => {
                query.retain(|(k, _)| *k != "cursor");
                query.push(("cursor", next.to_owned()));
            }
            None => break,
        }
        answer = api.get("/v1/review", &query).await?;
    }
    if json {
        writeln!(stdout, "{}]}}", if count == 0 { "" } else { "\n" })?;
    } else if count == 0 {
        writeln!(stdout, "no findings")?;
    } else {
        writeln!(stdout, "{count} finding(s)")?;
    }
    Ok(count == 0)
}

/// A page of findings as a plain-text table: kind, subject, owner,
/// suggestion, and the evidence on one line; the header when `head`.
/// Columns are as wide as this page needs.
fn table(findings: &[Value], head: bool) -> String {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let rows: Vec<[String; 5]> = findings
        .iter()
        .map(|f| {
            let s = f.get("suggestion").cloned().unwrap_or_default();
            let mut suggestion = text(&s, "action");
            if let Some(scopes) = s.get("scopes").and_then(Value::as_array) {
                let list: Vec<&str> = scopes.iter().filter_map(Value::as_str).collect();
                suggestion = format!("{suggestion} to {}", list.join(" "));
            }
            let evidence = f.get("evidence").map(Value::to_string).unwrap_or_default();
            [text(f, "kind"), text(f, "subject"), text(f, "owner"), suggestion, evidence]
        })
        .collect();
    let header = ["KIND", "SUBJECT", "OWNER", "SUGGESTION", "EVIDENCE"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths.iter()).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
        out
    };
    let mut out = if head { line(header) } else { String::new() };
    for [kind, subject, owner, suggestion, evidence] in &rows {
        out.push_str(&line([kind, subject, owner, suggestion, evidence]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_lists_each_finding_and_the_header_once() {
        let f = serde_json::json!([{
            "id": "fnd_1", "kind": "over_broad", "subject": "agt_1", "owner": "usr_1",
            "evidence": {"unused": ["write"]}, "suggestion": {"action": "narrow", "scopes": ["read"]}
        }]);
        let page = f.as_array().map(Vec::as_slice).unwrap_or_default();
        let t = table(page, true);
        assert!(t.starts_with("KIND"), "{t}");
        assert!(t.contains("over_broad") && t.contains("narrow to read"), "{t}");
        let next = table(page, false);
        assert!(!next.contains("KIND") && next.starts_with("over_broad"), "{next}");
    }
}
