//! Readable output: a list of records as aligned columns, one record as
//! `name: value` lines. `--json` prints the server's JSON instead.

use serde_json::Value;

/// A column: its heading and the member it shows (`a.b` reaches into an
/// object).
pub type Column = (&'static str, &'static str);

/// One cell's text: strings bare, arrays joined by commas, absent as `-`.
pub fn cell(v: Option<&Value>) -> String {
    let text = match v {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.is_empty() => "-".to_owned(),
        Some(Value::Array(a)) => a.iter().map(|x| cell(Some(x))).collect::<Vec<_>>().join(","),
        Some(Value::Object(o)) if o.is_empty() => "-".to_owned(),
        Some(other) => other.to_string(),
    };
    // One line per record, and nothing a terminal would act on.
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn member<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, name| v.get(name))
}

/// The rows as aligned columns, headings first.
pub fn render(rows: &[Value], columns: &[Column]) -> String {
    let cells: Vec<Vec<String>> =
        rows.iter().map(|r| columns.iter().map(|(_, path)| cell(member(r, path))).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (head, _))| {
            cells.iter().filter_map(|row| row.get(i)).map(|c| c.chars().count()).chain([head.len()]).max().unwrap_or(0)
        })
        .collect();
    let line = |texts: Vec<&str>| {
        let mut out = String::new();
        for (i, (t, w)) in texts.iter().zip(&widths).enumerate() {
            if i + 1 == texts.len() {
                out.push_str(t);
            } else {
                out.push_str(t);
                out.extend(std::iter::repeat_n(' ', w.saturating_sub(t.chars().count()) + 2));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(columns.iter().map(|(h, _)| *h).collect());
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// One record, `name: value` per line, in the server's order.
pub fn record(v: &Value) -> String {
    match v.as_object() {
        Some(o) => {
            let width = o.keys().map(String::len).max().unwrap_or(0);
            o.iter().map(|(k, v)| format!("{k:width$}  {}\n", cell(Some(v)))).collect()
        }
        None => format!("{}\n", cell(Some(v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_align_and_cells_stay_on_one_line() {
        let rows = vec![
            json!({"id": "usr_1", "name": "Alice\nX", "groups": ["a", "b"], "meta": {"n": 1}}),
            json!({"id": "usr_22", "name": null, "groups": []}),
        ];
        let out = render(&rows, &[("ID", "id"), ("NAME", "name"), ("GROUPS", "groups"), ("N", "meta.n")]);
        assert_eq!(out, "ID      NAME     GROUPS  N\nusr_1   Alice X  a,b     1\nusr_22  -        -       -\n");
    }

    #[test]
    fn a_record_is_one_member_per_line() {
        assert_eq!(record(&json!({"id": "x", "scopes": ["a"]})), "id      x\nscopes  a\n");
    }
}
