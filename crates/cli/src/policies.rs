//! `mandate policies test FILE --cases CASES.json`: decides the cases
//! under the candidate policy set on a running server
//! (`POST /v1/policies/test`) and prints a table, CI style: exit 0 when
//! every decision is the expected one, 1 on any other, 3 when the server
//! refuses the candidate or the cases, 2 on other errors.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::admin::client::Api;

/// `Ok(true)`: every case matched.
pub async fn test(api: &Api, file: &Path, cases: &Path, as_json: bool) -> Result<bool> {
    let policies = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let text = std::fs::read_to_string(cases).with_context(|| format!("reading {}", cases.display()))?;
    let parsed: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", cases.display()))?;
    let mut body = match parsed {
        Value::Array(items) => json!({ "cases": items }),
        Value::Object(o) => Value::Object(o),
        _ => bail!("{}: expected an array of cases or an object with `cases`", cases.display()),
    };
    if let Some(o) = body.as_object_mut() {
        o.insert("policies".into(), Value::String(policies));
    }
    let answer = api.post("/v1/policies/test", Some(body.clone())).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", table(&answer, &body));
    }
    Ok(answer.get("mismatched").and_then(Value::as_u64) == Some(0))
}

/// The results as aligned columns, then a summary line per part.
fn table(answer: &Value, request: &Value) -> String {
    let empty = Vec::new();
    let results = answer.get("results").and_then(Value::as_array).unwrap_or(&empty);
    let cases = request.get("cases").and_then(Value::as_array).unwrap_or(&empty);
    let str_of = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
    let mut rows = vec![[
        "#".to_owned(),
        "RESULT".into(),
        "EXPECTED".into(),
        "DECISION".into(),
        "NOW".into(),
        "PRINCIPAL".into(),
        "ACTION".into(),
        "DETERMINING".into(),
    ]];
    for (i, r) in results.iter().enumerate() {
        let case = cases.get(i);
        let determining: Vec<String> = r
            .get("determining")
            .and_then(Value::as_array)
            .map(|d| d.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        let ok = r.get("matches").and_then(Value::as_bool) == Some(true);
        rows.push([
            i.to_string(),
            if ok { "ok".into() } else { "FAIL".into() },
            str_of(r.get("expected")),
            str_of(r.get("decision")),
            str_of(r.get("current").and_then(|c| c.get("decision"))),
            str_of(case.and_then(|c| c.get("principal"))),
            str_of(case.and_then(|c| c.get("action"))),
            determining.join(","),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let n = |k: &str| answer.get(k).and_then(Value::as_u64).unwrap_or(0);
    let flips = answer.get("diff").and_then(Value::as_array).map_or(0, Vec::len);
    out.push_str(&format!(
        "{} matched, {} did not; {flips} decided differently from the current set\n",
        n("matched"),
        n("mismatched")
    ));
    if let Some(r) = answer.get("replay").filter(|r| r.is_object()) {
        let m = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
        out.push_str(&format!(
            "replay since {}: {} re-decided, {} skipped; {} allow -> deny, {} deny -> allow, {} other{}\n",
            str_of(r.get("since")),
            m("replayed"),
            m("skipped"),
            m("allow_to_deny"),
            m("deny_to_allow"),
            m("other_changes"),
            if r.get("truncated").and_then(Value::as_bool) == Some(true) { " (window truncated)" } else { "" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_marks_each_case_and_sums_up() {
        let answer = json!({
            "results": [
                {"decision": "allow", "expected": "allow", "matches": true, "determining": ["policy0"],
                 "current": {"decision": "deny"}},
                {"decision": "deny", "expected": "allow", "matches": false, "determining": [],
                 "current": {"decision": "deny"}}
            ],
            "diff": [{"case": 0, "from": "deny", "to": "allow"}],
            "matched": 1, "mismatched": 1
        });
        let request = json!({"cases": [
            {"principal": "agt_a", "action": "read"}, {"principal": "agt_b", "action": "write"}
        ]});
        let t = table(&answer, &request);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("0  ok") && lines[1].contains("policy0"), "{t}");
        assert!(lines[2].starts_with("1  FAIL") && lines[2].contains("agt_b"), "{t}");
        assert!(t.contains("1 matched, 1 did not; 1 decided differently"), "{t}");
    }
}
