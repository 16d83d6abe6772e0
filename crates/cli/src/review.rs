//! `mandate review`: the access review's findings (DESIGN §12) from a
//! running server; `mandate review campaigns|items|decide` for its
//! campaigns (crates/cli/src/admin).

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
}

/// `Ok(true)` when there are no findings; `main` exits 1 when there are
/// some (the answer is no), and by the refusal's code on errors.
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
    let mut query = Vec::new();
    for (name, v) in
        [("stale_days", args.stale_days), ("unused_days", args.unused_days), ("expiring_days", args.expiring_days)]
    {
        if let Some(v) = v {
            query.push((name, v.to_string()));
        }
    }
    let api = Api::new(&args.out.server)?;
    let answer = api.get("/v1/review", &query).await?;
    let findings = answer.get("findings").and_then(Value::as_array).cloned().unwrap_or_default();
    if args.out.server.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", table(&findings));
    }
    Ok(findings.is_empty())
}

/// Findings as a plain-text table: kind, subject, owner, suggestion, and
/// the evidence on one line.
fn table(findings: &[Value]) -> String {
    if findings.is_empty() {
        return "no findings\n".into();
    }
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
    let head = ["KIND", "SUBJECT", "OWNER", "SUGGESTION", "EVIDENCE"];
    let mut widths = head.map(str::len);
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
    let mut out = line(head);
    for [kind, subject, owner, suggestion, evidence] in &rows {
        out.push_str(&line([kind, subject, owner, suggestion, evidence]));
    }
    out.push_str(&format!("{} finding(s)\n", rows.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_lists_each_finding_and_the_count() {
        let f = serde_json::json!([{
            "id": "fnd_1", "kind": "over_broad", "subject": "agt_1", "owner": "usr_1",
            "evidence": {"unused": ["write"]}, "suggestion": {"action": "narrow", "scopes": ["read"]}
        }]);
        let t = table(f.as_array().map(Vec::as_slice).unwrap_or_default());
        assert!(t.starts_with("KIND"), "{t}");
        assert!(t.contains("over_broad") && t.contains("narrow to read") && t.contains("1 finding(s)"), "{t}");
        assert_eq!(table(&[]), "no findings\n");
    }
}
