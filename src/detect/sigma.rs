//! `kcaudit rules export --sigma`: one Sigma rule per detection rule, alerting on kcaudit's findings.
//!
//! kcaudit's rules are stateful (first seen, windows, learned hours), which Sigma cannot express
//! without backend-specific extensions (`siem-and-detection.md` §3.1, §3.3). So the state lives in
//! the stream and each event carries its findings; the Sigma rules here only select events whose
//! `findings[].rule` is the rule's id. That keeps every SIEM's alert a trivial single-event match while
//! still giving each rule its own title, level, ATT&CK tags and false-positive notes.
//!
//! The text comes from the rule pages under `rules/` (compiled in, so the export needs no files at run
//! time and cannot drift from the docs shipped with the binary); the YAML is produced by serialising a
//! struct, never by pasting strings into a template.

use serde::Serialize;
use uuid::Uuid;

use crate::event::Severity;

/// Namespace for the rules' UUIDv5 ids: the same rule id always yields the same Sigma id, so a SIEM
/// that imports the export twice updates its rules instead of duplicating them.
const SIGMA_NAMESPACE: Uuid = Uuid::from_u128(0x6b63_6175_6469_7400_8000_0000_5349_474d);

#[derive(Serialize)]
struct SigmaRule {
    title: String,
    id: String,
    status: &'static str,
    description: String,
    references: Vec<String>,
    author: &'static str,
    tags: Vec<String>,
    logsource: LogSource,
    detection: Detection,
    fields: Vec<&'static str>,
    falsepositives: Vec<String>,
    level: &'static str,
}

#[derive(Serialize)]
struct LogSource {
    product: &'static str,
    service: &'static str,
    definition: &'static str,
}

#[derive(Serialize)]
struct Detection {
    selection: Selection,
    condition: &'static str,
}

#[derive(Serialize)]
struct Selection {
    /// Sigma addresses nested fields with dots; for an array of objects, backends match any element.
    #[serde(rename = "findings.rule")]
    rule: String,
}

/// The severity a rule's findings have by default (before overrides and development realms). Rules
/// with two levels (success / denied) are exported at the first, higher one: the Sigma rule alerts on
/// the rule as a whole, and the event's own `severity` field says how bad this one was. Kept equal to
/// the table in the `detect` module doc by a test.
pub fn default_severity(rule: &str) -> Option<Severity> {
    Some(match rule {
        "impersonation-privileged-target" => Severity::Critical,
        "naked-impersonation-service-client" | "audience-outside-policy" | "error-burst-client" | "error-burst-ip" | "audience-spraying" | "admin-action-after-impersonation" => Severity::High,
        "impersonation-first-by-client" | "new-audience" | "new-audience-attempt" | "new-origin-client" | "failures-then-success" | "new-network" | "dormant-client" | "volume-outlier" => Severity::Medium,
        "unusual-hour" | "exchange-config-change" | "multi-hop-chain" => Severity::Low,
        "delegated-exchange" => Severity::Info,
        _ => return None,
    })
}

fn sigma_level(s: Severity) -> &'static str {
    match s {
        Severity::Info => "informational",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// The rule's documentation page, compiled in.
fn page(rule: &str) -> Option<&'static str> {
    macro_rules! pages {
        ($($id:literal),* $(,)?) => {
            match rule {
                $($id => Some(include_str!(concat!("../../rules/", $id, ".md"))),)*
                _ => None,
            }
        };
    }
    super::for_each_rule!(pages)
}

/// The first paragraph after the page's title, on one line.
fn first_paragraph(md: &str) -> Option<String> {
    let text: Vec<&str> = md
        .lines()
        .skip_while(|l| l.trim().is_empty() || l.starts_with('#'))
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    (!text.is_empty()).then(|| text.join(" "))
}

/// The bullets of the page's "Known false positives" section, each on one line.
fn false_positives(md: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut inside = false;
    for l in md.lines() {
        if l.starts_with("## ") {
            inside = l.trim_start_matches("## ").trim().eq_ignore_ascii_case("Known false positives");
            continue;
        }
        if !inside {
            continue;
        }
        if let Some(b) = l.strip_prefix("- ") {
            out.push(b.trim().to_string());
        } else if l.starts_with("  ") && !l.trim().is_empty() {
            if let Some(last) = out.last_mut() {
                last.push(' ');
                last.push_str(l.trim());
            }
        }
    }
    out
}

fn file_name(rule: &str) -> String {
    format!("kcaudit_{}.yml", rule.replace('-', "_"))
}

fn rule_doc(rule: &str) -> SigmaRule {
    let md = page(rule).unwrap_or("");
    let summary = first_paragraph(md).unwrap_or_else(|| format!("{}.", super::title(rule)));
    let mut falsepositives = false_positives(md);
    if falsepositives.is_empty() {
        falsepositives.push("See the rule page".into());
    }
    SigmaRule {
        title: format!("kcaudit: {}", super::title(rule)),
        id: Uuid::new_v5(&SIGMA_NAMESPACE, rule.as_bytes()).to_string(),
        status: "experimental",
        description: format!(
            "{summary} Matches Keycloak events on which kcaudit stamped a `{rule}` finding; the detection itself (baselines, windows, thresholds) runs in kcaudit, and the event's `findings` entry carries the reason and related event ids."
        ),
        references: vec![format!("rules/{rule}.md")],
        author: "kcaudit",
        tags: super::attack(rule).iter().map(|t| format!("attack.{}", t.to_lowercase())).collect(),
        logsource: LogSource {
            product: "keycloak",
            service: "kcaudit",
            definition: "kcaudit audit events (JSON lines, one canonical event per Keycloak event) with detection enabled; see schemas/audit-event.schema.json",
        },
        detection: Detection { selection: Selection { rule: rule.to_string() }, condition: "selection" },
        fields: vec!["time", "realm.name", "client_id", "subject.username", "ip_address", "severity", "findings.severity", "findings.reason", "findings.related_event_ids"],
        falsepositives,
        level: sigma_level(default_severity(rule).unwrap_or(Severity::Medium)),
    }
}

/// One Sigma rule per detection rule id, in [`super::RULES`] order: (file name, YAML).
pub fn export_sigma() -> Vec<(String, String)> {
    super::RULES
        .iter()
        .map(|rule| {
            // Serialising plain structs of strings cannot fail; should it ever, say so in the file.
            let yaml = serde_yaml::to_string(&rule_doc(rule)).unwrap_or_else(|e| format!("# could not serialise the Sigma rule for {rule}: {e}\n"));
            (file_name(rule), yaml)
        })
        .collect()
}

/// Write [`export_sigma`] into `dir` (created if missing); returns how many files were written.
pub fn write_sigma(dir: &std::path::Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let docs = export_sigma();
    for (name, yaml) in &docs {
        let path = dir.join(name);
        std::fs::write(&path, yaml).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(docs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module doc's rule table (`| ids | fires when | default |`): each id with the first
    /// severity word of its default column.
    fn documented_defaults() -> Vec<(String, Severity)> {
        let mut out = Vec::new();
        for line in include_str!("mod.rs").lines().filter_map(|l| l.strip_prefix("//! | `")) {
            let cells: Vec<&str> = line.split(" | ").collect();
            let ids: Vec<String> = cells[0].split('`').enumerate().filter(|(i, _)| i % 2 == 0).map(|(_, s)| s.to_string()).filter(|s| !s.trim().is_empty() && !s.contains('/')).collect();
            let default = cells.last().unwrap().trim_end_matches('|').trim();
            let word: String = default.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
            let sev = Severity::parse(&word).unwrap_or_else(|e| panic!("{line}: {e}"));
            out.extend(ids.into_iter().map(|id| (id, sev)));
        }
        out
    }

    #[test]
    fn levels_follow_the_documented_defaults() {
        let doc = documented_defaults();
        assert_eq!(doc.len(), crate::detect::RULES.len(), "{doc:?}");
        for (id, sev) in doc {
            assert_eq!(default_severity(&id), Some(sev), "{id}");
        }
    }

    #[test]
    fn every_rule_has_a_page_with_a_summary_and_false_positives() {
        for rule in crate::detect::RULES {
            let md = page(rule).unwrap_or_else(|| panic!("no page compiled in for {rule}"));
            let summary = first_paragraph(md).unwrap();
            assert!(!summary.starts_with('#') && summary.len() > 40, "{rule}: {summary}");
            assert!(!false_positives(md).is_empty(), "{rule}: no bullets under Known false positives");
        }
    }

    #[test]
    fn page_text_is_extracted_as_written() {
        let md = "# `x`: X\n\nFirst line\nsecond line.\n\nMore.\n\n## Known false positives\n\n- one\n  continued\n- two\n\n## Tuning\n\n- not this\n";
        assert_eq!(first_paragraph(md).as_deref(), Some("First line second line."));
        assert_eq!(false_positives(md), ["one continued", "two"]);
    }

    #[test]
    fn yaml_is_escaped_by_the_serialiser() {
        // A description with YAML-significant characters must round-trip, not break the document.
        let mut r = rule_doc("new-audience");
        r.description = "a: b\n- c # d 'e' \"f\"".into();
        let y = serde_yaml::to_string(&r).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
        assert_eq!(v["description"].as_str(), Some("a: b\n- c # d 'e' \"f\""));
        assert_eq!(v["detection"]["selection"]["findings.rule"].as_str(), Some("new-audience"));
        assert_eq!(v["level"].as_str(), Some("medium"));
        assert_eq!(v["tags"][0].as_str(), Some("attack.t1550.001"));
    }
}
