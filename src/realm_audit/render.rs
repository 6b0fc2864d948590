//! Text and JSON output.
//!
//! Text is for people reviewing a realm: grouped by file, worst first, each finding with the client,
//! where in the file, what is wrong and the fix, and one summary line at the end that CI logs show.
//! JSON is for scripts: the findings as they are plus per-severity counts, so a dashboard does not
//! have to count.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{counts, sort_findings, Finding};

/// Human-readable report.
pub fn render_text(findings: &[Finding]) -> String {
    let mut sorted = findings.to_vec();
    sort_findings(&mut sorted);

    let mut by_file: BTreeMap<&str, Vec<&Finding>> = BTreeMap::new();
    for f in &sorted {
        by_file.entry(f.file.as_str()).or_default().push(f);
    }

    let mut out = String::new();
    for (file, items) in &by_file {
        let realm = items.iter().find_map(|f| f.realm.as_deref());
        out.push_str(&format!("== {file}"));
        if let Some(realm) = realm {
            out.push_str(&format!(" (realm {})", one_line(realm)));
        }
        out.push('\n');
        for f in items {
            out.push_str(&format!("  {:<8} {}", f.severity.name().to_uppercase(), f.rule));
            if let Some(client) = &f.client {
                out.push_str(&format!("  client={}", one_line(client)));
            }
            out.push('\n');
            if let Some(loc) = &f.location {
                out.push_str(&format!("           at {}\n", one_line(loc)));
            }
            out.push_str(&format!("           {}\n", one_line(&f.message)));
            out.push_str(&format!("           fix: {}\n", one_line(&f.fix)));
        }
        out.push('\n');
    }
    out.push_str(&summary_line(&sorted, by_file.len()));
    out.push('\n');
    out
}

/// `{"findings":[...], "counts": {"critical":n, "high":n, "medium":n, "low":n, "info":n}}`.
pub fn render_json(findings: &[Finding]) -> String {
    let value = json_value(findings);
    serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
}

/// [`render_json`] plus an `errors` array (one message per unreadable input) for `run`.
pub(crate) fn render_json_with_errors(findings: &[Finding], errors: &[String]) -> String {
    let mut value = json_value(findings);
    if let Value::Object(map) = &mut value {
        map.insert("errors".to_string(), json!(errors));
    }
    serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
}

fn json_value(findings: &[Finding]) -> Value {
    let mut sorted = findings.to_vec();
    sort_findings(&mut sorted);
    let mut count_map = serde_json::Map::new();
    for (s, n) in counts(&sorted) {
        count_map.insert(s.name().to_string(), json!(n));
    }
    json!({
        "findings": serde_json::to_value(&sorted).unwrap_or_else(|_| json!([])),
        "counts": Value::Object(count_map),
    })
}

/// "3 findings in 2 files: 1 critical, 1 high, 1 medium, 0 low, 0 info" or "no findings".
fn summary_line(findings: &[Finding], files: usize) -> String {
    if findings.is_empty() {
        return "kcaudit audit-realm: no findings".to_string();
    }
    let parts: Vec<String> = counts(findings)
        .iter()
        .map(|(s, n)| format!("{n} {}", s.name()))
        .collect();
    format!(
        "kcaudit audit-realm: {} finding{} in {files} file{}: {}",
        findings.len(),
        if findings.len() == 1 { "" } else { "s" },
        if files == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// Values come from the audited file; keep each on one line so a crafted clientId cannot forge
/// report lines.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}
