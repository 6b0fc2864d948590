//! `kcaudit rules test`: detection rules tested with small fixture streams, the way `vector test`
//! tests a configuration.
//!
//! A rule is only as good as the cases it was shown to fire on and the cases it was shown to stay
//! quiet on. Each YAML file under `rules/tests/` is one case: a few Keycloak events in the native
//! `EventRepresentation` JSON shape, optional `--set`-style configuration, and per event id what
//! must (and must not) be found. The events go through the real replay pipeline (decode, dedup,
//! enrichment, detection), not a shortcut into the detector, so a case also catches a decoder or
//! enrichment change that silently starves a rule. The format is documented in `rules/README.md`.
//!
//! A case file that cannot be run (bad YAML, unknown rule id, an expectation for an event id the
//! stream does not contain, a record the decoder rejects) is reported as a failed case with the
//! reason, never skipped: a test that cannot run must not look like a test that passed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::config::Config;
use crate::decode::Format;
use crate::event::{AuditEvent, Finding, Severity};
use crate::sources::replay::{self, ReplayRequest};

/// Most events one `repeat` entry may generate: generous for hourly baselines over weeks, small
/// enough that a typo (`count: 1000000000`) fails with a message instead of exhausting memory.
const MAX_REPEAT: u64 = 100_000;

/// The expectation key that applies to every event without an entry of its own.
pub const EVERY_OTHER_EVENT: &str = "*";

/// One test case file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows, in one line (printed by `kcaudit rules test`).
    pub name: String,
    /// `--set`-style overrides (`detect.learning_period: "1h"`), applied after the defaults.
    #[serde(default)]
    pub config: BTreeMap<String, serde_yaml::Value>,
    /// An enrichment directory snapshot (`enrich.directory`), relative to the case file.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// Keycloak events in arrival order; an entry may be `{repeat: {count, every}, event: {...}}`.
    pub events: Vec<Json>,
    /// Per event id (or `"*"` for every event without its own entry): what must be found.
    pub expect: BTreeMap<String, Expect>,
}

/// What one event's findings must look like. Every given part must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Findings that must be present (other findings may be present too).
    #[serde(default)]
    pub findings: Vec<ExpectedFinding>,
    /// No finding at this severity or above (`info`: no finding at all).
    #[serde(default)]
    pub none_at_or_above: Option<Severity>,
    /// Rules that must not fire on this event, at any severity.
    #[serde(default)]
    pub absent: Vec<String>,
}

/// A finding that must be present: this rule at exactly this severity, with the reason and related
/// events when given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedFinding {
    pub rule: String,
    pub severity: Severity,
    /// Substrings the finding's reason must contain (the explanation is part of the contract).
    #[serde(default)]
    pub reason_contains: Vec<String>,
    /// Event ids that must be among the finding's `related_event_ids`.
    #[serde(default)]
    pub related: Vec<String>,
}

/// The outcome of a test directory.
#[derive(Debug, Clone, Serialize)]
pub struct RulesTestReport {
    pub dir: PathBuf,
    pub cases: Vec<CaseReport>,
}

/// The outcome of one case file.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub file: PathBuf,
    /// The case's `name` (the file name when the file could not be read).
    pub name: String,
    pub passed: bool,
    /// Why the case could not be run at all (then `failures` is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every expectation that did not hold.
    pub failures: Vec<Failure>,
    /// Rules whose presence the case asserts (for coverage checks).
    pub rules_expected: BTreeSet<String>,
    /// Rules the case asserts to be absent somewhere (`absent`).
    pub rules_absent: BTreeSet<String>,
    /// Events replayed.
    pub events: usize,
}

/// One expectation that did not hold: what was wanted and everything that was found on the event.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub event_id: String,
    pub expected: String,
    pub found: Vec<FoundFinding>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FoundFinding {
    pub rule: String,
    pub severity: Severity,
    pub reason: String,
    pub related_event_ids: Vec<String>,
}

impl From<&Finding> for FoundFinding {
    fn from(f: &Finding) -> Self {
        FoundFinding { rule: f.rule.clone(), severity: f.severity, reason: f.reason.clone(), related_event_ids: f.related_event_ids.clone() }
    }
}

impl RulesTestReport {
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.passed)
    }

    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed).count()
    }

    /// One line per case, then the details of each failure, then a summary line.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for c in &self.cases {
            s.push_str(&format!("{} {} ({})\n", if c.passed { "PASS" } else { "FAIL" }, c.name, c.file.display()));
            if let Some(e) = &c.error {
                s.push_str(&format!("    cannot run: {e}\n"));
            }
            for f in &c.failures {
                s.push_str(&format!("    event {}: expected {}\n", f.event_id, f.expected));
                if f.found.is_empty() {
                    s.push_str("      found: no findings\n");
                }
                for g in &f.found {
                    s.push_str(&format!("      found: {} {}: {}\n", g.rule, g.severity, g.reason));
                }
            }
        }
        s.push_str(&format!("{} cases, {} passed, {} failed\n", self.cases.len(), self.cases.len() - self.failed(), self.failed()));
        s
    }
}

/// Run every `*.yml` / `*.yaml` case in `dir` (not recursive), in file-name order.
pub async fn run_dir(dir: &Path) -> anyhow::Result<RulesTestReport> {
    let entries = std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("cannot read rule test directory {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| anyhow::anyhow!("cannot read rule test directory {}: {e}", dir.display()))?.path();
        if path.is_file() && path.extension().is_some_and(|x| x == "yml" || x == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        anyhow::bail!("no test cases (*.yml, *.yaml) in {}", dir.display());
    }
    let mut cases = Vec::with_capacity(files.len());
    for f in files {
        cases.push(run_file(&f).await);
    }
    Ok(RulesTestReport { dir: dir.to_path_buf(), cases })
}

/// Run one case file. Never fails: a case that cannot be run is a failed case with `error` set.
pub async fn run_file(path: &Path) -> CaseReport {
    let mut report = CaseReport {
        file: path.to_path_buf(),
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        passed: false,
        error: None,
        failures: Vec::new(),
        rules_expected: BTreeSet::new(),
        rules_absent: BTreeSet::new(),
        events: 0,
    };
    let case = match std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display())).and_then(|t| parse_case(&t)) {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    report.name = case.name.clone();
    report.rules_expected = case.expect.values().flat_map(|e| e.findings.iter().map(|f| f.rule.clone())).collect();
    report.rules_absent = case.expect.values().flat_map(|e| e.absent.iter().cloned()).collect();
    let base = path.parent().unwrap_or(Path::new("."));
    match run_case(&case, base).await {
        Ok((events, failures)) => {
            report.events = events;
            report.passed = failures.is_empty();
            report.failures = failures;
        }
        Err(e) => report.error = Some(format!("{e:#}")),
    }
    report
}

/// Parse and check a case: everything that would make the case meaningless is refused here, so a
/// typo cannot turn into an assertion that trivially holds.
pub fn parse_case(text: &str) -> Result<Case, String> {
    let mut case: Case = serde_yaml::from_str(text).map_err(|e| format!("not a valid test case: {e}"))?;
    if case.name.trim().is_empty() {
        return Err("`name` is empty".into());
    }
    case.events = expand_events(&case.events)?;
    if case.events.is_empty() {
        return Err("`events` is empty".into());
    }
    let mut ids = BTreeSet::new();
    for (i, ev) in case.events.iter().enumerate() {
        let id = ev.get("id").and_then(Json::as_str).ok_or_else(|| format!("event #{} has no string `id` (expectations are keyed by id)", i + 1))?;
        if !ids.insert(id.to_string()) {
            return Err(format!("event id {id} appears twice (the pipeline would drop the second as a duplicate)"));
        }
    }
    if case.expect.is_empty() {
        return Err("`expect` is empty: the case would assert nothing".into());
    }
    for (id, e) in &case.expect {
        if id != EVERY_OTHER_EVENT && !ids.contains(id) {
            return Err(format!("expect names event {id}, which is not in `events`"));
        }
        if e.findings.is_empty() && e.none_at_or_above.is_none() && e.absent.is_empty() {
            return Err(format!("expect.{id} asserts nothing (give findings, none_at_or_above or absent)"));
        }
        for rule in e.findings.iter().map(|f| &f.rule).chain(&e.absent) {
            if !super::RULES.contains(&rule.as_str()) {
                return Err(format!("expect.{id} names unknown rule {rule}; known rules: {}", super::RULES.join(", ")));
            }
        }
        for f in &e.findings {
            if let Some(r) = f.related.iter().find(|r| !ids.contains(*r)) {
                return Err(format!("expect.{id}: related event {r} is not in `events`"));
            }
        }
    }
    Ok(case)
}

/// Expand `repeat` entries and turn RFC 3339 `time` strings into epoch milliseconds, so the stream
/// handed to kcaudit is exactly what Keycloak's REST API would return.
fn expand_events(items: &[Json]) -> Result<Vec<Json>, String> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let n = i + 1;
        let Some(obj) = item.as_object() else { return Err(format!("event #{n} is not a mapping")) };
        if let Some(rep) = obj.get("repeat") {
            if let Some(k) = obj.keys().find(|k| *k != "repeat" && *k != "event") {
                return Err(format!("event #{n}: a repeat entry has only `repeat` and `event`, not `{k}`"));
            }
            let count = rep.get("count").and_then(Json::as_u64).ok_or_else(|| format!("event #{n}: repeat.count must be a positive integer"))?;
            if count == 0 || count > MAX_REPEAT {
                return Err(format!("event #{n}: repeat.count must be between 1 and {MAX_REPEAT}, not {count}"));
            }
            let every = rep.get("every").and_then(Json::as_str).ok_or_else(|| format!("event #{n}: repeat.every must be a duration such as \"1h\""))?;
            let every: Duration = humantime::parse_duration(every).map_err(|e| format!("event #{n}: repeat.every {every:?}: {e}"))?;
            if let Some(k) = rep.as_object().and_then(|r| r.keys().find(|k| *k != "count" && *k != "every")) {
                return Err(format!("event #{n}: unknown repeat key `{k}` (expected count, every)"));
            }
            let template = obj.get("event").ok_or_else(|| format!("event #{n}: a repeat entry needs an `event`"))?;
            let mut template = normalise_time(template, n)?;
            let id = template.get("id").and_then(Json::as_str).ok_or_else(|| format!("event #{n}: the repeated event needs a string `id` (copies are <id>-1, <id>-2, ...)"))?.to_string();
            let start = template.get("time").and_then(Json::as_i64).ok_or_else(|| format!("event #{n}: the repeated event needs a `time` (epoch milliseconds or RFC 3339)"))?;
            let step = i64::try_from(every.as_millis()).map_err(|_| format!("event #{n}: repeat.every is too long"))?;
            for k in 0..count {
                let k = i64::try_from(k).unwrap_or(i64::MAX);
                let t = step.checked_mul(k).and_then(|d| start.checked_add(d)).ok_or_else(|| format!("event #{n}: repeated times overflow"))?;
                template["id"] = Json::from(format!("{id}-{}", k + 1));
                template["time"] = Json::from(t);
                out.push(template.clone());
            }
        } else {
            out.push(normalise_time(item, n)?);
        }
    }
    Ok(out)
}

fn normalise_time(ev: &Json, n: usize) -> Result<Json, String> {
    let Some(obj) = ev.as_object() else { return Err(format!("event #{n} is not a mapping")) };
    let mut obj = obj.clone();
    // A numeric string is left alone (relays send those; the decoder reads them with a warning), any
    // other string must be RFC 3339: a typo must not become an event without a time.
    if let Some(Json::String(s)) = obj.get("time").filter(|t| t.as_str().is_some_and(|s| !s.bytes().all(|b| b.is_ascii_digit()))) {
        let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| format!("event #{n}: time {s:?} is not RFC 3339 (or give epoch milliseconds): {e}"))?;
        obj.insert("time".into(), Json::from(t.timestamp_millis()));
    }
    Ok(Json::Object(obj))
}

/// A temporary directory removed on drop (the library cannot use the `tempfile` dev-dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let p = std::env::temp_dir().join(format!("kcaudit-rules-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `--set` arguments for a case: a fresh data directory, the snapshot, then the case's keys.
fn sets(case: &Case, base: &Path, data_dir: &Path) -> anyhow::Result<Vec<String>> {
    let quote = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let mut sets = vec![format!("data_dir={}", quote(data_dir))];
    if let Some(d) = &case.directory {
        let d = base.join(d);
        if !d.is_dir() {
            anyhow::bail!("directory {} does not exist", d.display());
        }
        sets.push(format!("enrich.directory={}", quote(&d)));
    }
    for (key, v) in &case.config {
        let v = toml::Value::try_from(v).map_err(|e| anyhow::anyhow!("config.{key}: the value cannot be written as TOML ({e})"))?;
        sets.push(format!("{key}={v}"));
    }
    Ok(sets)
}

/// Replay the case's events; returns how many were replayed and the expectations that failed.
async fn run_case(case: &Case, base: &Path) -> anyhow::Result<(usize, Vec<Failure>)> {
    let tmp = TempDir::new()?;
    let config = Config::load(None, &sets(case, base, &tmp.0)?)?;
    let errors: Vec<String> = config.problems().into_iter().filter(|p| p.is_error).map(|p| p.to_string()).collect();
    if !errors.is_empty() {
        anyhow::bail!("configuration: {}", errors.join("; "));
    }
    if !config.detect.enabled {
        anyhow::bail!("detect.enabled is false: nothing would be detected");
    }
    let input = tmp.0.join("events.jsonl");
    let mut body = String::new();
    for ev in &case.events {
        body.push_str(&serde_json::to_string(ev)?);
        body.push('\n');
    }
    std::fs::write(&input, body)?;
    let out = tmp.0.join("out.jsonl");
    let req = ReplayRequest { inputs: vec![input.display().to_string()], format: Format::Keycloak, out: Some(out.clone()), progress: false, state: None, to_sinks: false };
    let rep = replay::run(&config, &req).await?;
    if rep.totals.rejected > 0 || rep.totals.duplicates > 0 || rep.totals.skipped > 0 {
        let why: Vec<String> = rep
            .inputs
            .iter()
            .flat_map(|i| &i.records)
            .filter(|r| r.reason.is_some())
            .map(|r| format!("{} ({} of the expanded stream): {}", r.event_id.as_deref().unwrap_or("an event"), r.line.map(|l| format!("line {l}")).unwrap_or_else(|| "a line".into()), r.reason.as_deref().unwrap_or("")))
            .collect();
        anyhow::bail!("not every event reached detection: {}", why.join("; "));
    }
    let events = replay::read_events(&out)?;
    Ok((case.events.len(), check(case, &events)))
}

/// Compare the replayed events with the case's expectations.
pub fn check(case: &Case, events: &[AuditEvent]) -> Vec<Failure> {
    let by_id: HashMap<&str, &AuditEvent> = events.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut failures = Vec::new();
    for ev in &case.events {
        let id = ev.get("id").and_then(Json::as_str).unwrap_or_default();
        let Some(want) = case.expect.get(id).or_else(|| case.expect.get(EVERY_OTHER_EVENT)) else { continue };
        let Some(got) = by_id.get(id) else {
            failures.push(Failure { event_id: id.into(), expected: "the event in the output".into(), found: Vec::new() });
            continue;
        };
        let found: Vec<FoundFinding> = got.findings.iter().map(FoundFinding::from).collect();
        let mut fail = |expected: String| failures.push(Failure { event_id: id.into(), expected, found: found.clone() });
        for f in &want.findings {
            let ok = got.findings.iter().any(|g| {
                g.rule == f.rule && g.severity == f.severity && f.reason_contains.iter().all(|s| g.reason.contains(s.as_str())) && f.related.iter().all(|r| g.related_event_ids.contains(r))
            });
            if !ok {
                let mut e = format!("{} at {}", f.rule, f.severity);
                if !f.reason_contains.is_empty() {
                    e.push_str(&format!(" with a reason containing {:?}", f.reason_contains));
                }
                if !f.related.is_empty() {
                    e.push_str(&format!(" related to {:?}", f.related));
                }
                fail(e);
            }
        }
        if let Some(s) = want.none_at_or_above {
            if got.findings.iter().any(|g| g.severity >= s) {
                fail(if s == Severity::Info { "no finding at all".into() } else { format!("no finding at {s} or above") });
            }
        }
        for rule in &want.absent {
            if got.findings.iter().any(|g| &g.rule == rule) {
                fail(format!("no {rule} finding"));
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    const CASE: &str = r#"
name: t
config:
  detect.learning_period: "1h"
  detect.dev_realms: [dev]
events:
  - {id: a, time: "2026-03-09T10:00:00Z", type: TOKEN_EXCHANGE, realmId: r, clientId: c}
  - repeat: {count: 3, every: 1h}
    event: {id: b, time: 1773050400000, type: LOGIN, realmId: r, clientId: c}
expect:
  a: {none_at_or_above: info}
  b-3: {findings: [{rule: new-network, severity: medium}], absent: [unusual-hour]}
"#;

    #[test]
    fn repeat_expands_and_times_become_epoch_millis() {
        let c = parse_case(CASE).unwrap();
        let ids: Vec<&str> = c.events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["a", "b-1", "b-2", "b-3"]);
        assert_eq!(c.events[0]["time"], Json::from(1_773_050_400_000_i64));
        assert_eq!(c.events[3]["time"], Json::from(1_773_050_400_000_i64 + 2 * 3_600_000));
    }

    #[test]
    fn config_values_become_toml_set_arguments() {
        let c = parse_case(CASE).unwrap();
        let s = sets(&c, Path::new("."), Path::new("/tmp/x \"y\"")).unwrap();
        let conf = Config::load(None, &s).unwrap();
        assert_eq!(conf.data_dir, PathBuf::from("/tmp/x \"y\""), "quotes in a path survive: {s:?}");
        assert_eq!(conf.detect.learning_period, Duration::from_secs(3600));
        assert_eq!(conf.detect.dev_realms, ["dev"]);
    }

    #[test]
    fn meaningless_cases_are_refused_with_the_reason() {
        let refuse = |text: &str, needle: &str| {
            let e = parse_case(text).unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        let ev = "events: [{id: a, type: LOGIN}]\n";
        refuse(&format!("name: t\n{ev}expect: {{a: {{}}}}\n"), "asserts nothing");
        refuse(&format!("name: t\n{ev}expect: {{z: {{none_at_or_above: low}}}}\n"), "not in `events`");
        refuse(&format!("name: t\n{ev}expect: {{a: {{absent: [new-netwrok]}}}}\n"), "unknown rule new-netwrok");
        refuse(&format!("name: t\n{ev}expect: {{}}\n"), "`expect` is empty");
        refuse("name: t\nevents: [{id: a}, {id: a}]\nexpect: {a: {none_at_or_above: low}}\n", "appears twice");
        refuse(&format!("name: t\n{ev}expect: {{a: {{none_at_or_above: loud}}}}\n"), "not a valid test case");
        refuse("name: t\nevents: [{repeat: {count: 0, every: 1h}, event: {id: a, time: 1}}]\nexpect: {a-1: {none_at_or_above: low}}\n", "between 1 and");
        refuse("name: t\nevents: [{id: a, time: 2026-03-09 10:00}]\nexpect: {a: {none_at_or_above: low}}\n", "is not RFC 3339");
    }

    fn event(id: &str, findings: &[(&str, Severity)]) -> AuditEvent {
        use crate::decode::{decode_body, Context, DecodeOptions, Decoded};
        let body = format!(r#"{{"id":"{id}","time":1773050400000,"type":"LOGIN","realmId":"r","clientId":"c"}}"#);
        let opts = DecodeOptions::default();
        let ctx = Context { opts: &opts, tz: opts.time_zone().unwrap(), deliveries: None, lines_may_be_noise: false };
        let mut items = Vec::new();
        decode_body(body.as_bytes(), Format::Keycloak, &Default::default(), &ctx, &mut items);
        let Decoded::Event(ev) = &items[0].decoded else { panic!("{:?}", items[0].decoded) };
        let mut ev = (**ev).clone();
        ev.findings = findings
            .iter()
            .map(|(r, s)| Finding { rule: r.to_string(), severity: *s, title: String::new(), reason: format!("because {r}"), attack: vec![], related_event_ids: vec!["x".into()] })
            .collect();
        ev
    }

    #[test]
    fn presence_absence_and_thresholds_are_each_checked() {
        let c = parse_case(
            "name: t\nevents: [{id: a}, {id: b}, {id: c}]\nexpect:\n  a: {findings: [{rule: new-network, severity: medium, reason_contains: [new-network], related: [b]}]}\n  b: {none_at_or_above: medium}\n  '*': {absent: [dormant-client]}\n",
        )
        .unwrap();
        // Everything holds.
        let ok = [event("a", &[("new-network", Severity::Medium)]), event("b", &[("unusual-hour", Severity::Low)]), event("c", &[])];
        let mut c2 = c.clone();
        c2.expect.get_mut("a").unwrap().findings[0].related = vec!["x".into()];
        assert!(check(&c2, &ok).is_empty(), "{:?}", check(&c2, &ok));
        // Wrong severity, a loud event, a forbidden rule on a `*` event, a missing related id.
        let bad = [event("a", &[("new-network", Severity::High)]), event("b", &[("new-audience", Severity::Medium)]), event("c", &[("dormant-client", Severity::Low)])];
        let f = check(&c, &bad);
        let what: Vec<(&str, &str)> = f.iter().map(|f| (f.event_id.as_str(), f.expected.as_str())).collect();
        assert_eq!(what.len(), 3, "{what:?}");
        assert!(what[0].0 == "a" && what[0].1.starts_with("new-network at medium"), "{what:?}");
        assert_eq!(what[1], ("b", "no finding at medium or above"));
        assert_eq!(what[2], ("c", "no dormant-client finding"));
        assert_eq!(f[0].found[0].severity, Severity::High, "the report shows what was found");
        // The related id is checked: `a` matches on rule and severity but is not related to `b`.
        let f = check(&c, &ok);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].expected.contains("related to [\"b\"]"), "{}", f[0].expected);
        // A missing event is a failure, not a pass.
        let f = check(&c, &ok[1..]);
        assert!(f.iter().any(|f| f.event_id == "a" && f.expected == "the event in the output"), "{f:?}");
    }
}
