//! Rendering views for people and scripts. Every view is first turned into
//! its JSON document (the contract's shape); text, CSV, Markdown and HTML are
//! rendered from that JSON, so all formats always carry the same facts.

use serde_json::Value;

/// Text of a JSON scalar for a table cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join("; "),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Renders rows of objects as an aligned text table with the given columns
/// (key, heading). Missing keys print as `-`.
pub fn table(rows: &[Value], columns: &[(&str, &str)]) -> String {
    table_of(rows.iter().map(|r| row_cells(r, columns)), columns)
}

/// The cells of `row` in a table of `columns` ([`table`]).
pub fn row_cells(row: &Value, columns: &[(&str, &str)]) -> Vec<String> {
    columns
        .iter()
        .map(|(k, _)| cell(row.get(*k).unwrap_or(&Value::Null)))
        .collect()
}

/// [`table`] of rows given as their cells ([`row_cells`]), so that a
/// caller may let each row's JSON go once its cells are made.
pub fn table_of(rows: impl IntoIterator<Item = Vec<String>>, columns: &[(&str, &str)]) -> String {
    let mut grid: Vec<Vec<String>> = vec![columns.iter().map(|(_, h)| h.to_string()).collect()];
    grid.extend(rows);
    let widths: Vec<usize> = (0..columns.len())
        .map(|c| {
            grid.iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
                .min(60)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in grid.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(text, w)| {
                let text: String = if text.chars().count() > *w {
                    text.chars()
                        .take(w.saturating_sub(1))
                        .chain(std::iter::once('…'))
                        .collect()
                } else {
                    text.clone()
                };
                format!("{text:<w$}", w = *w)
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

/// All keys of the objects in `rows`, in first-seen order: the columns of a
/// report whose shape the renderer does not special-case.
pub fn columns_of(rows: &[Value]) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        if let Value::Object(m) = r {
            for k in m.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    cols
}

/// A CSV field, quoted when needed (RFC 4180). Cells that a spreadsheet
/// would run as a formula get a leading apostrophe (CSV injection).
pub fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) && text.parse::<f64>().is_err() {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Escapes text for HTML.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for a Markdown table cell.
pub fn md_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Short form of an RFC 3339 time for tables: `2026-09-15 10:20`.
fn short_time(t: &str) -> String {
    if t.len() >= 16 {
        format!("{} {}", &t[..10], &t[11..16])
    } else {
        t.to_string()
    }
}

fn corrections_note(entry: &Value) -> String {
    match entry.get("corrections").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            let parts: Vec<String> = list
                .iter()
                .map(|c| {
                    format!(
                        "corrected by {} on {}: {} (original: {})",
                        s(c, "actor"),
                        short_time(s(c, "recorded_at")),
                        s(c, "reason"),
                        cell(c.get("original").unwrap_or(&Value::Null))
                    )
                })
                .collect();
            parts.join("; ")
        }
        _ => String::new(),
    }
}

/// The timeline as text: one line per entry, corrections indented below.
pub fn timeline_text(doc: &Value) -> String {
    let mut out = String::new();
    let entries = doc
        .get("entries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    out.push_str(&format!("Chronology of {}", s(doc, "pupil")));
    if let Some(a) = doc.get("as_of").and_then(Value::as_str) {
        out.push_str(&format!(" as recorded by {a}"));
    }
    out.push_str(&format!(" — {} entries\n\n", entries.len()));
    for e in &entries {
        out.push_str(&format!(
            "{}  #{:<7} {:<28} {:<6} {}\n",
            short_time(s(e, "occurred_at")),
            e.get("position").and_then(Value::as_u64).unwrap_or(0),
            s(e, "type"),
            s(e, "actor"),
            s(e, "summary")
        ));
        let note = corrections_note(e);
        if !note.is_empty() {
            out.push_str(&format!("{:>27}{note}\n", ""));
        }
    }
    out
}

const TIMELINE_COLUMNS: &[&str] = &[
    "occurred_at",
    "recorded_at",
    "position",
    "type",
    "actor",
    "summary",
    "corrections",
    "event_id",
];

/// The timeline as CSV (one row per entry; corrections in one column).
pub fn timeline_csv(doc: &Value) -> String {
    let mut out = TIMELINE_COLUMNS.join(",");
    out.push('\n');
    for e in doc
        .get("entries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let row: Vec<String> = TIMELINE_COLUMNS
            .iter()
            .map(|c| match *c {
                "corrections" => csv_field(&corrections_note(e)),
                k => csv_field(&cell(e.get(k).unwrap_or(&Value::Null))),
            })
            .collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// The timeline as a Markdown document.
pub fn timeline_md(doc: &Value) -> String {
    let mut out = format!("# Chronology of {}\n\n", md_escape(s(doc, "pupil")));
    if let Some(a) = doc.get("as_of").and_then(Value::as_str) {
        out.push_str(&format!("As recorded by {a}.\n\n"));
    }
    out.push_str(
        "| When | # | Type | Recorded by | Entry | Corrections |\n|---|---|---|---|---|---|\n",
    );
    for e in doc
        .get("entries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            md_escape(&short_time(s(e, "occurred_at"))),
            e.get("position").and_then(Value::as_u64).unwrap_or(0),
            md_escape(s(e, "type")),
            md_escape(s(e, "actor")),
            md_escape(s(e, "summary")),
            md_escape(&corrections_note(e))
        ));
    }
    out
}

/// The timeline as a self-contained, printable HTML page.
pub fn timeline_html(doc: &Value, generated_at: &str, school: &str) -> String {
    let pupil = html_escape(s(doc, "pupil"));
    let as_of = doc
        .get("as_of")
        .and_then(Value::as_str)
        .map(|a| format!("<p class=\"asof\">As recorded by {}.</p>", html_escape(a)))
        .unwrap_or_default();
    let mut rows = String::new();
    for e in doc
        .get("entries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let note = corrections_note(e);
        let note = if note.is_empty() {
            String::new()
        } else {
            format!("<div class=\"corr\">{}</div>", html_escape(&note))
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td class=\"meta\">{}<br>#{}</td></tr>\n",
            html_escape(&short_time(s(e, "occurred_at"))),
            html_escape(s(e, "type")),
            html_escape(s(e, "actor")),
            html_escape(&cell(e.get("data").unwrap_or(&Value::Null))).chars().take(400).collect::<String>(),
            html_escape(s(e, "summary")),
            note,
            html_escape(&short_time(s(e, "recorded_at"))),
            e.get("position").and_then(Value::as_u64).unwrap_or(0),
        ));
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Chronology of {pupil}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#111}}
h1{{font-size:1.4em;margin-bottom:.2em}}
.sub,.asof{{color:#555;margin:.2em 0}}
table{{border-collapse:collapse;width:100%;margin-top:1em;font-size:.9em}}
th,td{{border:1px solid #bbb;padding:.35em .5em;vertical-align:top;text-align:left}}
th{{background:#eee}}
.corr{{color:#8a2b00;font-size:.85em;margin-top:.3em}}
.meta{{color:#555;font-size:.8em;white-space:nowrap}}
.foot{{color:#555;font-size:.8em;margin-top:1.5em}}
@media print{{body{{margin:1cm}} th{{background:#eee !important}}}}
</style></head><body>
<h1>Chronology of {pupil}</h1>
<p class="sub">School {school}. CONFIDENTIAL: safeguarding record. Generated {generated}.</p>
{as_of}
<table><thead><tr><th>When</th><th>Type</th><th>Recorded by</th><th>Details</th><th>Entry</th><th>Recorded / position</th></tr></thead>
<tbody>
{rows}</tbody></table>
<p class="foot">Produced by casebook from an append-only, hash-chained log. Corrections are shown with the original values.</p>
</body></html>
"#,
        school = html_escape(school),
        generated = html_escape(generated_at),
    )
}
