//! The rule unit tests under `rules/tests/` (fixture streams through the real replay pipeline), their
//! coverage of the rule set, the rule pages under `rules/`, and the Sigma export.

use std::collections::BTreeSet;
use std::path::Path;

use kcaudit::detect::rules_test::run_dir;
use kcaudit::detect::sigma::export_sigma;
use kcaudit::detect::RULES;

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Rules with at least one case that makes them fire. Every rule is listed: those that need long
/// histories (volume-outlier: 24 active hours; dormant-client: a 30-day gap; unusual-hour: 10 earlier
/// events) get them through `repeat` entries, which are just numbers.
const TRIGGERED: &[&str] = &[
    "impersonation-privileged-target",
    "naked-impersonation-service-client",
    "impersonation-first-by-client",
    "new-audience",
    "new-audience-attempt",
    "audience-outside-policy",
    "new-origin-client",
    "error-burst-client",
    "error-burst-ip",
    "failures-then-success",
    "audience-spraying",
    "new-network",
    "unusual-hour",
    "dormant-client",
    "volume-outlier",
    "exchange-config-change",
    "admin-action-after-impersonation",
    "multi-hop-chain",
    "delegated-exchange",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_case_passes_and_every_rule_is_covered() {
    let report = run_dir(&repo("rules/tests")).await.expect("rules/tests is readable");
    assert!(report.passed(), "{}", report.render());

    // Coverage: each listed rule is asserted present by a case, and the list is the whole rule set.
    let asserted: BTreeSet<&str> = report.cases.iter().flat_map(|c| c.rules_expected.iter().map(String::as_str)).collect();
    for rule in TRIGGERED {
        assert!(asserted.contains(rule), "no case in rules/tests makes {rule} fire");
    }
    let listed: BTreeSet<&str> = TRIGGERED.iter().copied().collect();
    let all: BTreeSet<&str> = RULES.iter().copied().collect();
    assert_eq!(listed, all, "TRIGGERED must name exactly the rule ids in detect::RULES");

    // False-positive traps: cases that assert silence exist, and each one replayed events.
    let traps = report.cases.iter().filter(|c| c.rules_expected.is_empty()).count();
    assert!(traps >= 5, "expected at least five cases that only assert silence, found {traps}");
    assert!(report.cases.iter().all(|c| c.events > 0));
}

#[tokio::test]
async fn a_failing_case_is_reported_with_what_was_expected_and_found() {
    let dir = tempfile::tempdir().unwrap();
    // Two errors are no burst, so the expectation is wrong: the case must fail and say why.
    std::fs::write(
        dir.path().join("wrong.yml"),
        "name: wrong on purpose\nevents:\n  - {id: a, time: 1773228031000, type: TOKEN_EXCHANGE_ERROR, realmId: r, clientId: c, ipAddress: 10.0.0.1, error: invalid_token}\n  - {id: b, time: 1773228032000, type: TOKEN_EXCHANGE_ERROR, realmId: r, clientId: c, ipAddress: 10.0.0.1, error: invalid_token}\nexpect:\n  b: {findings: [{rule: error-burst-client, severity: high}]}\n",
    )
    .unwrap();
    // A case whose config key does not exist cannot run: a failed case with the reason, not a pass.
    std::fs::write(dir.path().join("bad-config.yml"), "name: bad config\nconfig: {detect.learnin_period: 1h}\nevents: [{id: a, time: 1773228031000, type: LOGIN, realmId: r, clientId: c}]\nexpect: {a: {none_at_or_above: info}}\n").unwrap();
    let report = run_dir(dir.path()).await.unwrap();
    assert!(!report.passed());
    assert_eq!(report.failed(), 2);
    let bad = report.cases.iter().find(|c| c.name == "bad config").unwrap();
    assert!(bad.error.as_deref().is_some_and(|e| e.contains("learnin_period")), "{bad:?}");
    let wrong = report.cases.iter().find(|c| c.name == "wrong on purpose").unwrap();
    assert_eq!(wrong.failures.len(), 1);
    assert_eq!(wrong.failures[0].event_id, "b");
    assert!(wrong.failures[0].expected.contains("error-burst-client at high"));
    let text = report.render();
    assert!(text.contains("FAIL wrong on purpose") && text.contains("event b: expected error-burst-client at high") && text.contains("found: no findings"), "{text}");

    // An empty directory is an error, not a vacuous pass.
    let empty = tempfile::tempdir().unwrap();
    let e = run_dir(empty.path()).await.unwrap_err().to_string();
    assert!(e.contains("no test cases"), "{e}");
}

#[test]
fn every_rule_has_a_page_naming_its_attack_techniques_and_config() {
    let index = std::fs::read_to_string(repo("rules/README.md")).unwrap();
    for (rule, (_, yaml)) in RULES.iter().zip(export_sigma()) {
        let page = std::fs::read_to_string(repo(&format!("rules/{rule}.md"))).unwrap_or_else(|e| panic!("rules/{rule}.md: {e}"));
        assert!(index.contains(&format!("({rule}.md)")), "rules/README.md does not link {rule}.md");
        assert!(page.starts_with(&format!("# `{rule}`")), "rules/{rule}.md must start with its id as the title");
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        for tag in doc["tags"].as_sequence().unwrap() {
            let technique = tag.as_str().unwrap().trim_start_matches("attack.").to_uppercase();
            assert!(page.contains(&technique), "rules/{rule}.md does not name {technique}");
        }
        for section in ["## Why it matters", "## ATT&CK", "## Trigger logic", "## Known false positives", "## Tuning", "## Example finding"] {
            assert!(page.contains(section), "rules/{rule}.md lacks the section {section:?}");
        }
        assert!(page.contains(&format!("[detect.rules.{rule}]")), "rules/{rule}.md does not show its override table");
    }
}

#[test]
fn sigma_export_has_one_valid_rule_per_detection_rule() {
    let docs = export_sigma();
    assert_eq!(docs.len(), RULES.len());
    let levels = ["informational", "low", "medium", "high", "critical"];
    let mut ids = BTreeSet::new();
    let mut names = BTreeSet::new();
    for ((name, yaml), rule) in docs.iter().zip(RULES) {
        assert!(name.ends_with(".yml") && !name.contains('/'), "{name}");
        assert!(names.insert(name.clone()), "duplicate file name {name}");
        let doc: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{name} is not YAML: {e}\n{yaml}"));
        for key in ["title", "id", "status", "description", "logsource", "detection", "level", "tags", "falsepositives", "references"] {
            assert!(doc.get(key).is_some(), "{name} lacks {key}");
        }
        let id = doc["id"].as_str().unwrap();
        let uuid = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{name}: id {id} is not a UUID: {e}"));
        assert_eq!(uuid.get_version_num(), 5, "{name}: a stable (v5) UUID");
        assert!(ids.insert(id.to_string()), "duplicate id {id}");
        assert_eq!(doc["status"].as_str(), Some("experimental"));
        assert_eq!(doc["logsource"]["product"].as_str(), Some("keycloak"));
        assert_eq!(doc["logsource"]["service"].as_str(), Some("kcaudit"));
        let det = &doc["detection"];
        let cond = det["condition"].as_str().unwrap_or_else(|| panic!("{name}: detection has no condition"));
        assert!(det.get(cond).is_some(), "{name}: condition {cond} names no search identifier");
        assert_eq!(det[cond]["findings.rule"].as_str(), Some(*rule), "{name}: selects findings of {rule}");
        let level = doc["level"].as_str().unwrap();
        assert!(levels.contains(&level), "{name}: level {level} is not a Sigma level");
        let tags = doc["tags"].as_sequence().unwrap();
        assert!(!tags.is_empty(), "{name}: no ATT&CK tags");
        for t in tags {
            let t = t.as_str().unwrap();
            assert!(t.starts_with("attack.t") && t == t.to_lowercase(), "{name}: tag {t} is not attack.tNNNN in lowercase");
        }
        assert!(doc["references"].as_sequence().unwrap().iter().any(|r| r.as_str() == Some(&format!("rules/{rule}.md"))), "{name}: references its page");
        assert!(!doc["falsepositives"].as_sequence().unwrap().is_empty(), "{name}: falsepositives");
        assert!(!doc["description"].as_str().unwrap().trim().is_empty());
    }
    // Stable: the same export twice.
    assert_eq!(docs, export_sigma());
}
