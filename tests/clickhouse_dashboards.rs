//! The Grafana dashboards (`dashboards/grafana/*.json`) and alert rules (`dashboards/alerts/*.yaml`)
//! against a current ClickHouse engine (chdb) loaded with the shared fixture timeline.
//!
//! Every `rawSql` of every dashboard (panel targets and template variables, found by walking the JSON)
//! and every alert query is expanded the way grafana-clickhouse-datasource v4 does it, then run:
//! - `$__conditionalAll(cond, $var)` (frontend): `1=1` when the variable is All or empty, else `cond`;
//! - `${var:singlequote}`, `${var}`, `$var` (Grafana template variables);
//! - `$__timeFilter(c)`, `$__fromTime`, `$__toTime`, `$__timeInterval(c)`, `$__interval_s` (backend).
//! Any other macro or variable fails the test. A query variable's All value is the list of values its
//! own query returns, as in Grafana.
//!
//! The panel numbers are then checked against values computed in Rust from the same events. The
//! alert rules are evaluated as Grafana would: each row of A is one instance, its single numeric
//! column is the value (the reduce step B is a no-op on numbers), and C's threshold decides.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};
use common::clickhouse::*;
use common::services::{chdb, chdb_python};
use kcaudit::sinks::clickhouse::row::EventRow;
use serde_json::Value;

// ------------------------------------------------------------------------------------------------
// Files
// ------------------------------------------------------------------------------------------------

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// (file name, dashboard JSON), sorted by file name.
fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo("dashboards/grafana")).expect("dashboards/grafana exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 6, "expected the kcaudit dashboards, found {}", out.len());
    out
}

fn dashboard<'a>(all: &'a [(String, Value)], uid: &str) -> &'a Value {
    &all.iter().find(|(_, d)| d["uid"] == uid).unwrap_or_else(|| panic!("no dashboard with uid {uid}")).1
}

fn panel<'a>(dash: &'a Value, title: &str) -> &'a Value {
    dash["panels"].as_array().unwrap().iter().find(|p| p["title"] == title).unwrap_or_else(|| panic!("{}: no panel {title:?}", dash["uid"]))
}

fn panel_sql(dash: &Value, title: &str) -> String {
    panel(dash, title)["targets"][0]["rawSql"].as_str().unwrap().to_string()
}

/// Every `rawSql` string anywhere in `v`, with a readable location.
fn walk_raw_sql(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            let here = match m.get("title").or_else(|| m.get("name")).and_then(Value::as_str) {
                Some(t) => format!("{at} > {t}"),
                None => at.to_string(),
            };
            for (k, x) in m {
                if k == "rawSql" {
                    out.push((here.clone(), x.as_str().unwrap_or_else(|| panic!("{here}: rawSql is not a string")).to_string()));
                } else {
                    walk_raw_sql(x, &here, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk_raw_sql(x, at, out)),
        _ => {}
    }
}

fn alert_files() -> Vec<(String, serde_yaml::Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo("dashboards/alerts")).expect("dashboards/alerts exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no alert rule files in dashboards/alerts");
    out
}

/// One provisioned alert rule reduced to what the test evaluates.
#[derive(Debug, Clone)]
struct AlertRule {
    uid: String,
    /// The data-source query (refId A).
    sql: String,
    /// Seconds back from "now" the query covers (relativeTimeRange.from).
    window_s: i64,
    /// Threshold of the condition: evaluator type and params.
    evaluator: (String, Vec<f64>),
    dashboard_uid: String,
    panel_id: i64,
}

fn y<'a>(v: &'a serde_yaml::Value, k: &str) -> &'a serde_yaml::Value {
    &v[k]
}

fn ystr(v: &serde_yaml::Value, k: &str) -> String {
    v[k].as_str().unwrap_or_else(|| panic!("missing string {k} in {v:?}")).to_string()
}

fn alert_rules() -> Vec<AlertRule> {
    let ds_uid = datasource_uid();
    let mut out = Vec::new();
    for (file, doc) in alert_files() {
        assert_eq!(doc["apiVersion"].as_i64(), Some(1), "{file}: apiVersion 1");
        for group in doc["groups"].as_sequence().unwrap_or_else(|| panic!("{file}: groups")) {
            assert!(group["name"].as_str().is_some() && group["folder"].as_str().is_some() && group["interval"].as_str().is_some(), "{file}: group name/folder/interval");
            for rule in group["rules"].as_sequence().unwrap() {
                let uid = ystr(rule, "uid");
                let data = rule["data"].as_sequence().unwrap_or_else(|| panic!("{uid}: data"));
                let by_ref: BTreeMap<String, &serde_yaml::Value> = data.iter().map(|d| (ystr(d, "refId"), d)).collect();
                assert_eq!(by_ref.len(), data.len(), "{uid}: refIds unique");
                // Exactly one data-source query, on the provisioned ClickHouse data source.
                let queries: Vec<&serde_yaml::Value> = data.iter().filter(|d| d["datasourceUid"].as_str() != Some("__expr__")).collect();
                assert_eq!(queries.len(), 1, "{uid}: one ClickHouse query");
                let q = queries[0];
                assert_eq!(ystr(q, "datasourceUid"), ds_uid, "{uid}: the provisioned data source");
                let m = y(q, "model");
                assert_eq!(ystr(&m["datasource"], "type"), "grafana-clickhouse-datasource", "{uid}");
                assert_eq!(ystr(&m["datasource"], "uid"), ds_uid, "{uid}");
                assert_eq!(ystr(m, "editorType"), "sql", "{uid}");
                assert_eq!(m["format"].as_i64(), Some(1), "{uid}: table format (one instance per row)");
                assert_eq!(ystr(m, "pluginVersion"), "4.20.0", "{uid}");
                assert_eq!(ystr(m, "refId"), ystr(q, "refId"), "{uid}");
                let window_s = q["relativeTimeRange"]["from"].as_i64().unwrap_or_else(|| panic!("{uid}: relativeTimeRange.from"));
                assert_eq!(q["relativeTimeRange"]["to"].as_i64(), Some(0), "{uid}: window ends now");
                // The condition is a threshold over a reduce over the query.
                let cond = by_ref.get(&ystr(rule, "condition")).unwrap_or_else(|| panic!("{uid}: condition refId exists"));
                let cm = &cond["model"];
                assert_eq!(ystr(cm, "type"), "threshold", "{uid}: condition is a threshold");
                let reduce = by_ref.get(&ystr(cm, "expression")).unwrap_or_else(|| panic!("{uid}: threshold input exists"));
                assert_eq!(ystr(&reduce["model"], "type"), "reduce", "{uid}: threshold over a reduce");
                assert_eq!(ystr(&reduce["model"], "expression"), ystr(q, "refId"), "{uid}: reduce over the query");
                let conds = cm["conditions"].as_sequence().unwrap();
                assert_eq!(conds.len(), 1, "{uid}: one threshold");
                let ev = &conds[0]["evaluator"];
                let evaluator = (ystr(ev, "type"), ev["params"].as_sequence().unwrap().iter().map(|p| p.as_f64().unwrap()).collect());
                for k in ["noDataState", "execErrState", "for", "title"] {
                    assert!(rule[k].as_str().is_some(), "{uid}: {k}");
                }
                assert_eq!(ystr(rule, "noDataState"), "OK", "{uid}: no row = nothing to report");
                assert!(rule["labels"]["severity"].as_str().is_some() && rule["annotations"]["summary"].as_str().is_some(), "{uid}: severity label and summary");
                out.push(AlertRule {
                    sql: ystr(m, "rawSql"),
                    window_s,
                    evaluator,
                    dashboard_uid: ystr(rule, "dashboardUid"),
                    panel_id: rule["panelId"].as_i64().unwrap_or_else(|| panic!("{uid}: panelId")),
                    uid,
                });
            }
        }
    }
    let uids: BTreeSet<&str> = out.iter().map(|r| r.uid.as_str()).collect();
    assert_eq!(uids.len(), out.len(), "alert rule uids are unique");
    out
}

fn alert<'a>(rules: &'a [AlertRule], uid: &str) -> &'a AlertRule {
    rules.iter().find(|r| r.uid == uid).unwrap_or_else(|| panic!("no alert rule {uid}"))
}

fn datasource_uid() -> String {
    let text = std::fs::read_to_string(repo("dashboards/grafana/provisioning/datasources/kcaudit-clickhouse.yaml")).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    ystr(&v["datasources"][0], "uid")
}

// ------------------------------------------------------------------------------------------------
// Macro and variable expansion (grafana-clickhouse-datasource v4)
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Var {
    /// "All" selected: the values are every option the variable has.
    All(Vec<String>),
    /// Explicit selection (a custom/textbox variable has exactly one value).
    Values(Vec<String>),
}

impl Var {
    fn values(&self) -> &[String] {
        match self {
            Var::All(v) | Var::Values(v) => v,
        }
    }
    fn one(v: &str) -> Var {
        Var::Values(vec![v.to_string()])
    }
}

#[derive(Debug, Clone)]
struct Ctx {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    interval_s: i64,
    vars: BTreeMap<String, Var>,
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

impl Ctx {
    fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Ctx {
        // Grafana's interval: the range over the panel's data points, on a "nice" step.
        let per_point = ((to - from).num_seconds() / 100).max(1);
        let interval_s = [1, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400].into_iter().rev().find(|&s| s <= per_point).unwrap_or(1);
        Ctx { from, to, interval_s, vars: BTreeMap::new() }
    }
    fn range(from: &str, to: &str) -> Ctx {
        Ctx::new(utc(from), utc(to))
    }
    fn with(mut self, name: &str, v: Var) -> Ctx {
        self.vars.insert(name.to_string(), v);
        self
    }
}

/// Arguments of the macro call whose '(' is at `open`; returns them and the index after ')'.
fn macro_args(s: &str, open: usize) -> Result<(Vec<String>, usize), String> {
    let b = s.as_bytes();
    assert_eq!(b[open], b'(');
    let (mut depth, mut quoted, mut start) = (0usize, false, open + 1);
    let mut args = Vec::new();
    let mut i = open;
    while i < b.len() {
        let c = b[i];
        if quoted {
            if c == b'\\' {
                i += 1;
            } else if c == b'\'' {
                quoted = false;
            }
        } else {
            match c {
                b'\'' => quoted = true,
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        args.push(s[start..i].trim().to_string());
                        return Ok((args, i + 1));
                    }
                }
                b',' if depth == 1 => {
                    args.push(s[start..i].trim().to_string());
                    start = i + 1;
                }
                _ => {}
            }
        }
        i += 1;
    }
    Err(format!("unbalanced macro call at {}", &s[open..]))
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn format_var(name: &str, format: Option<&str>, ctx: &Ctx) -> Result<String, String> {
    let v = ctx.vars.get(name).ok_or_else(|| format!("unknown variable ${name}"))?;
    match format {
        Some("singlequote") => Ok(v.values().iter().map(|x| format!("'{}'", x.replace('\\', "\\\\").replace('\'', "\\'"))).collect::<Vec<_>>().join(",")),
        None | Some("raw") if v.values().len() == 1 => Ok(v.values()[0].clone()),
        None | Some("raw") => Err(format!("${name} has several values: give it a format (singlequote)")),
        Some(f) => Err(format!("unsupported format ${{{name}:{f}}}")),
    }
}

/// Expand `sql` as the plugin would for `ctx`; any macro or variable not handled is an error.
fn expand(sql: &str, ctx: &Ctx) -> Result<String, String> {
    // 1. $__conditionalAll (the plugin's frontend, before variable interpolation), last one first.
    let mut s = sql.to_string();
    const CA: &str = "$__conditionalAll(";
    while let Some(i) = s.rfind(CA) {
        let (args, end) = macro_args(&s, i + CA.len() - 1)?;
        if args.len() != 2 {
            return Err(format!("$__conditionalAll takes 2 arguments: {args:?}"));
        }
        let name = args[1].trim_start_matches('$').trim_start_matches('{').trim_end_matches('}');
        let v = ctx.vars.get(name).ok_or_else(|| format!("$__conditionalAll over unknown variable {}", args[1]))?;
        let phrase = match v {
            Var::All(_) => "1=1".to_string(),
            Var::Values(x) if x.is_empty() || (x.len() == 1 && x[0].is_empty()) => "1=1".to_string(),
            Var::Values(_) => args[0].clone(),
        };
        s.replace_range(i..end, &phrase);
    }
    // 2. Template variables: ${name}, ${name:format}, $name (not $__ macros).
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() && b[i + 1] == b'{' {
            let close = s[i..].find('}').ok_or("unclosed ${")? + i;
            let inner = &s[i + 2..close];
            let (name, format) = match inner.split_once(':') {
                Some((n, f)) => (n, Some(f)),
                None => (inner, None),
            };
            out.push_str(&format_var(name, format, ctx)?);
            i = close + 1;
        } else if b[i] == b'$' && i + 1 < b.len() && (b[i + 1].is_ascii_alphabetic()) {
            let end = (i + 1..b.len()).find(|&j| !is_ident(b[j])).unwrap_or(b.len());
            out.push_str(&format_var(&s[i + 1..end], None, ctx)?);
            i = end;
        } else {
            let ch = s[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    // 3. Backend macros (pkg/macros/macros.go).
    let s = out;
    let mut out = String::new();
    let mut rest = s.as_str();
    let (from, to) = (format!("toDateTime({})", ctx.from.timestamp()), format!("toDateTime({})", ctx.to.timestamp()));
    while let Some(p) = rest.find("$__") {
        out.push_str(&rest[..p]);
        let after = &rest[p + 3..];
        let name_len = after.bytes().position(|c| !is_ident(c)).unwrap_or(after.len());
        let name = &after[..name_len];
        let tail = &after[name_len..];
        let (args, consumed) = if tail.starts_with('(') {
            let (a, end) = macro_args(tail, 0)?;
            (a, end)
        } else {
            (Vec::new(), 0)
        };
        let one_arg = |what: &str| -> Result<String, String> {
            match args.as_slice() {
                [c] if !c.is_empty() => Ok(c.clone()),
                _ => Err(format!("$__{what} takes one column: {args:?}")),
            }
        };
        let no_args = args.is_empty() || (args.len() == 1 && args[0].is_empty());
        let text = match name {
            "timeFilter" => {
                let c = one_arg(name)?;
                format!("{c} >= {from} AND {c} <= {to}")
            }
            "timeInterval" => format!("toStartOfInterval(toDateTime({}), INTERVAL {} second)", one_arg(name)?, ctx.interval_s),
            "fromTime" if no_args => from.clone(),
            "toTime" if no_args => to.clone(),
            "interval_s" if no_args => ctx.interval_s.to_string(),
            other => return Err(format!("unknown or misused macro $__{other}")),
        };
        out.push_str(&text);
        rest = &tail[consumed..];
    }
    out.push_str(rest);
    if out.contains("$__") || out.contains("${") {
        return Err(format!("left unexpanded: {out}"));
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// Running queries on chdb
// ------------------------------------------------------------------------------------------------

const TABLE_FORMAT: &str = "JSONCompactEachRowWithNamesAndTypes";

#[derive(Debug, Clone)]
struct Table {
    names: Vec<String>,
    types: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl Table {
    fn parse(out: &str) -> Table {
        let mut lines = out.lines().filter(|l| !l.trim().is_empty());
        let names: Vec<String> = serde_json::from_str(lines.next().expect("names line")).unwrap();
        let types: Vec<String> = serde_json::from_str(lines.next().expect("types line")).unwrap();
        let rows = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
        Table { names, types, rows }
    }
    fn col(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap_or_else(|| panic!("no column {name} in {:?}", self.names))
    }
    fn strs(&self, name: &str) -> Vec<String> {
        let c = self.col(name);
        self.rows.iter().map(|r| text(&r[c])).collect()
    }
    fn nums(&self, name: &str) -> Vec<f64> {
        let c = self.col(name);
        self.rows.iter().map(|r| num(&r[c])).collect()
    }
    /// The single value of a one-row result.
    fn scalar(&self, name: &str) -> f64 {
        assert_eq!(self.rows.len(), 1, "one row expected for {name}: {self:?}");
        self.nums(name)[0]
    }
    fn get(&self, row: usize, name: &str) -> &Value {
        &self.rows[row][self.col(name)]
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not a number: {s}")),
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Null => f64::NAN,
        other => panic!("not a number: {other}"),
    }
}

fn is_numeric_type(t: &str) -> bool {
    let t = t.trim_start_matches("Nullable(").trim_start_matches("LowCardinality(");
    ["UInt", "Int", "Float", "Decimal"].iter().any(|p| t.starts_with(p))
}

fn is_string_type(t: &str) -> bool {
    let t = t.trim_start_matches("Nullable(").trim_start_matches("LowCardinality(");
    t.starts_with("String")
}

/// A batch of keyed queries for one chdb session.
#[derive(Default)]
struct Batch {
    steps: Vec<(String, &'static str)>,
    keys: Vec<Option<String>>,
}

impl Batch {
    fn setup(&mut self, sql: String) {
        self.steps.push((sql, "TabSeparated"));
        self.keys.push(None);
    }
    fn query(&mut self, key: impl Into<String>, sql: String) {
        let key = key.into();
        assert!(!self.keys.iter().any(|k| k.as_deref() == Some(key.as_str())), "duplicate key {key}");
        self.steps.push((sql, TABLE_FORMAT));
        self.keys.push(Some(key));
    }
    /// Run; set-up steps must succeed; returns each keyed query's table or error.
    fn run(self, python: &Path, db: &Path) -> Results {
        let results = chdb(python, db, &self.steps);
        assert_eq!(results.len(), self.steps.len());
        let mut out = BTreeMap::new();
        for ((key, step), r) in self.keys.into_iter().zip(&self.steps).zip(results) {
            match key {
                None => assert!(r.ok, "set-up step failed: {}\n{}", r.error, step.0),
                Some(k) => {
                    let v = if r.ok { Ok(Table::parse(&r.output)) } else { Err(format!("{}\n--- SQL ---\n{}", r.error, step.0)) };
                    out.insert(k, (step.0.clone(), v));
                }
            }
        }
        Results(out)
    }
}

struct Results(BTreeMap<String, (String, Result<Table, String>)>);

impl Results {
    fn get(&self, key: &str) -> &Table {
        match &self.0.get(key).unwrap_or_else(|| panic!("no result {key}")).1 {
            Ok(t) => t,
            Err(e) => panic!("{key} failed: {e}"),
        }
    }
    fn assert_all_ok(&self) {
        let failed: Vec<String> = self.0.iter().filter_map(|(k, (_, r))| r.as_ref().err().map(|e| format!("{k}: {e}"))).collect();
        assert!(failed.is_empty(), "{} queries failed:\n\n{}", failed.len(), failed.join("\n\n"));
    }
}

// ------------------------------------------------------------------------------------------------
// The fixture, computed in Rust
// ------------------------------------------------------------------------------------------------

/// The events as the sink's rows (column name → value), so expectations use the very column values.
fn rows(events: &[kcaudit::event::AuditEvent]) -> Vec<Value> {
    events.iter().map(|e| serde_json::to_value(EventRow::new(e, 0)).unwrap()).collect()
}

fn s<'a>(r: &'a Value, k: &str) -> &'a str {
    r[k].as_str().unwrap_or_else(|| panic!("{k} is not a string in row"))
}

fn t_ms(r: &Value) -> i64 {
    r["event_time"].as_i64().unwrap()
}

fn in_range(r: &Value, ctx: &Ctx) -> bool {
    // $__timeFilter: both ends inclusive, at whole seconds.
    let t = t_ms(r);
    t >= ctx.from.timestamp() * 1000 && t <= ctx.to.timestamp() * 1000
}

fn is_exchange(r: &Value) -> bool {
    matches!(s(r, "event_type"), "TOKEN_EXCHANGE" | "TOKEN_EXCHANGE_ERROR")
}

fn rank(sev: &str) -> u8 {
    ["info", "low", "medium", "high", "critical"].iter().position(|x| *x == sev).map(|p| p as u8 + 1).unwrap_or(0)
}

/// One finding: (event time ms, severity rank, rule, event id, realm, client).
type F = (i64, u8, String, String, String, String);

fn findings(rows: &[Value]) -> Vec<F> {
    let mut out = Vec::new();
    for r in rows {
        let rules = r["finding_rules"].as_array().unwrap();
        let sevs = r["finding_severities"].as_array().unwrap();
        for (rule, sev) in rules.iter().zip(sevs) {
            out.push((t_ms(r), rank(sev.as_str().unwrap()), rule.as_str().unwrap().to_string(), s(r, "event_id").to_string(), s(r, "realm").to_string(), s(r, "client_id").to_string()));
        }
    }
    out
}

/// Triage order: newest first, then most severe, then rule, then event id.
fn triage_order(mut f: Vec<F>) -> Vec<F> {
    f.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
    f
}

// ------------------------------------------------------------------------------------------------
// Alert evaluation
// ------------------------------------------------------------------------------------------------

/// Firing instances: (labels "k=v,…", value) for each row whose value passes the threshold.
fn evaluate(rule: &AlertRule, t: &Table) -> Vec<(String, f64)> {
    let numeric: Vec<usize> = (0..t.names.len()).filter(|&i| is_numeric_type(&t.types[i])).collect();
    assert_eq!(numeric.len(), 1, "{}: exactly one numeric column (the value), got {:?} {:?}", rule.uid, t.names, t.types);
    for (i, ty) in t.types.iter().enumerate() {
        assert!(i == numeric[0] || is_string_type(ty), "{}: label column {} must be a string, is {ty}", rule.uid, t.names[i]);
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for row in &t.rows {
        let labels: Vec<String> = (0..t.names.len()).filter(|&i| i != numeric[0]).map(|i| format!("{}={}", t.names[i], text(&row[i]))).collect();
        let labels = labels.join(",");
        assert!(seen.insert(labels.clone()), "{}: duplicate label set {labels}", rule.uid);
        let v = num(&row[numeric[0]]);
        let (ty, p) = (&rule.evaluator.0, &rule.evaluator.1);
        let fires = match ty.as_str() {
            "gt" => v > p[0],
            "lt" => v < p[0],
            "within_range" => v > p[0] && v < p[1],
            "outside_range" => v < p[0] || v > p[1],
            other => panic!("{}: evaluator {other} not handled by this test", rule.uid),
        };
        if fires {
            out.push((labels, v));
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Structure
// ------------------------------------------------------------------------------------------------

const DS_TYPE: &str = "grafana-clickhouse-datasource";

fn check_ds(v: &Value, at: &str) {
    assert_eq!(v["type"], DS_TYPE, "{at}: datasource type");
    assert_eq!(v["uid"], "${datasource}", "{at}: datasource uid is the dashboard variable");
}

#[test]
fn dashboards_alerts_and_provisioning_are_well_formed() {
    let all = dashboards();
    let uids: BTreeSet<String> = all.iter().map(|(_, d)| d["uid"].as_str().unwrap().to_string()).collect();
    assert_eq!(uids.len(), all.len(), "dashboard uids are unique");
    let mut panel_ids: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();

    for (file, d) in &all {
        let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{file}: uid"));
        assert!(!uid.is_empty() && uid.len() <= 40, "{file}: uid {uid}");
        assert!(d["title"].as_str().is_some_and(|t| t.starts_with("kcaudit")), "{file}: title");
        assert!(d["tags"].as_array().unwrap().iter().any(|t| t == "kcaudit"), "{file}: tag kcaudit");
        let sv = d["schemaVersion"].as_i64().unwrap();
        assert!((36..=41).contains(&sv), "{file}: schemaVersion {sv}");
        assert_eq!(d["time"]["from"], "now-7d", "{file}: default range");
        assert_eq!(d["time"]["to"], "now", "{file}");
        assert!(d["id"].is_null(), "{file}: no instance-specific id");

        // Template variables.
        let vars = d["templating"]["list"].as_array().unwrap();
        let var = |n: &str| vars.iter().find(|v| v["name"] == n);
        let ds = var("datasource").unwrap_or_else(|| panic!("{file}: datasource variable"));
        assert_eq!(ds["type"], "datasource", "{file}");
        assert_eq!(ds["query"], DS_TYPE, "{file}");
        if uid != "kcaudit-event-detail" {
            let realm = var("realm").unwrap_or_else(|| panic!("{file}: realm variable"));
            assert_eq!(realm["type"], "query", "{file}: realm");
            assert_eq!(realm["multi"], true, "{file}: realm multi-value");
            assert_eq!(realm["includeAll"], true, "{file}: realm has All");
            assert!(realm["query"]["rawSql"].as_str().is_some_and(|q| q.contains("kcaudit.")), "{file}: realm query");
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            check_ds(&v["datasource"], &format!("{file} variable {}", v["name"]));
            assert_eq!(v["query"]["editorType"], "sql", "{file} variable {}", v["name"]);
        }

        // Panels.
        let panels = d["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{file}: panels");
        let ids = panel_ids.entry(uid.to_string()).or_default();
        let mut rects: Vec<(i64, i64, i64, i64, String)> = Vec::new();
        for p in panels {
            let title = p["title"].as_str().unwrap_or_else(|| panic!("{file}: panel title"));
            let at = format!("{file} / {title}");
            let id = p["id"].as_i64().unwrap_or_else(|| panic!("{at}: id"));
            assert!(ids.insert(id), "{at}: panel id {id} unique");
            let g = &p["gridPos"];
            let (h, w, x, yy) = (g["h"].as_i64().unwrap(), g["w"].as_i64().unwrap(), g["x"].as_i64().unwrap(), g["y"].as_i64().unwrap());
            assert!(h > 0 && w > 0 && x >= 0 && yy >= 0 && x + w <= 24, "{at}: gridPos {g}");
            for (x2, y2, w2, h2, other) in &rects {
                let overlap = x < x2 + w2 && *x2 < x + w && yy < y2 + h2 && *y2 < yy + h;
                assert!(!overlap, "{at} overlaps {other}");
            }
            rects.push((x, yy, w, h, title.to_string()));
            let ptype = p["type"].as_str().unwrap();
            assert!(["timeseries", "table", "stat", "barchart", "bargauge", "piechart", "logs"].contains(&ptype), "{at}: type {ptype}");
            check_ds(&p["datasource"], &at);
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{at}: targets"));
            assert!(!targets.is_empty(), "{at}: targets");
            let mut refs = BTreeSet::new();
            for t in targets {
                check_ds(&t["datasource"], &at);
                assert!(refs.insert(t["refId"].as_str().unwrap().to_string()), "{at}: refId unique");
                assert_eq!(t["editorType"], "sql", "{at}");
                assert_eq!(t["pluginVersion"], "4.20.0", "{at}");
                let fmt = t["format"].as_i64().unwrap_or_else(|| panic!("{at}: format is a number"));
                assert!([0, 1, 2].contains(&fmt), "{at}: format {fmt}");
                assert_eq!(fmt == 0, ptype == "timeseries", "{at}: time series panels use format 0, the others 1");
                assert_eq!(fmt == 2, ptype == "logs", "{at}");
                let sql = t["rawSql"].as_str().unwrap_or_else(|| panic!("{at}: rawSql"));
                assert!(sql.contains("kcaudit."), "{at}: uses the kcaudit database by name");
                assert!(!sql.contains("${database}"), "{at}");
            }
        }
    }

    // Every dashboard link resolves to a provisioned dashboard.
    fn urls(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "url" {
                        if let Some(u) = x.as_str() {
                            out.push(u.to_string());
                        }
                    }
                    urls(x, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| urls(x, out)),
            _ => {}
        }
    }
    let mut links = Vec::new();
    for (_, d) in &all {
        urls(&d["panels"], &mut links);
    }
    assert!(links.iter().any(|l| l.contains("var-event_id=${__value.raw}")), "event-id data links exist");
    for l in links.iter().filter(|l| !l.is_empty()) {
        let target = l.strip_prefix("/d/").unwrap_or_else(|| panic!("links stay inside Grafana: {l}"));
        let uid = target.split('/').next().unwrap();
        assert!(uids.contains(uid), "link to unknown dashboard {uid}: {l}");
    }
    // The triage table links each event id.
    let triage = dashboard(&all, "kcaudit-findings-triage");
    let table = panel(triage, "Findings (newest first)");
    let overrides = table["fieldConfig"]["overrides"].as_array().unwrap();
    assert!(
        overrides.iter().any(|o| o["matcher"]["options"] == "event_id" && o["properties"].as_array().unwrap().iter().any(|p| p["id"] == "links")),
        "the triage table links event_id"
    );

    // Alerts point at existing panels of existing dashboards.
    let rules = alert_rules();
    assert!(rules.len() >= 5, "alert rules: {}", rules.len());
    for r in &rules {
        let ids = panel_ids.get(&r.dashboard_uid).unwrap_or_else(|| panic!("{}: dashboard {} exists", r.uid, r.dashboard_uid));
        assert!(ids.contains(&r.panel_id), "{}: panel {} exists on {}", r.uid, r.panel_id, r.dashboard_uid);
        assert!(!r.sql.contains("${") && !r.sql.contains("$__conditionalAll"), "{}: alert queries run in the backend: no dashboard variables", r.uid);
        assert!(r.window_s > 0, "{}", r.uid);
    }

    // Provisioning files.
    let ds: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(repo("dashboards/grafana/provisioning/datasources/kcaudit-clickhouse.yaml")).unwrap()).unwrap();
    assert_eq!(ds["apiVersion"].as_i64(), Some(1));
    let d0 = &ds["datasources"][0];
    assert_eq!(ystr(d0, "type"), DS_TYPE);
    assert!(ystr(&d0["jsonData"], "username").len() > 1, "a dedicated read-only user");
    assert_eq!(ystr(&d0["jsonData"], "defaultDatabase"), "kcaudit");
    let pw = ystr(&d0["secureJsonData"], "password");
    assert!(pw.starts_with('$'), "password from the environment, not in the file: {pw}");
    let prov: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(repo("dashboards/grafana/provisioning/dashboards/kcaudit.yaml")).unwrap()).unwrap();
    assert_eq!(prov["apiVersion"].as_i64(), Some(1));
    assert_eq!(ystr(&prov["providers"][0], "type"), "file");
    assert!(prov["providers"][0]["options"]["path"].as_str().is_some());
}

#[test]
fn macro_expansion_follows_the_plugin() {
    let ctx = Ctx::range("2026-03-09T00:00:00Z", "2026-03-12T00:00:00Z")
        .with("realm", Var::All(vec!["a".into(), "b'c".into()]))
        .with("client", Var::All(vec!["x".into()]))
        .with("one", Var::Values(vec!["y".into()]))
        .with("n", Var::one("3"));
    let got = expand(
        "SELECT $__timeInterval(t) AS time FROM d.t WHERE $__timeFilter(t) AND realm IN (${realm:singlequote}) \
         AND $__conditionalAll(c IN (${client:singlequote}), $client) AND $__conditionalAll(c IN (${one:singlequote}), $one) \
         AND r >= $n AND h >= $__fromTime AND h <= $__toTime() AND $__interval_s > 0",
        &ctx,
    )
    .unwrap();
    assert_eq!(
        got,
        "SELECT toStartOfInterval(toDateTime(t), INTERVAL 1800 second) AS time FROM d.t \
         WHERE t >= toDateTime(1773014400) AND t <= toDateTime(1773273600) AND realm IN ('a','b\\'c') \
         AND 1=1 AND c IN ('y') \
         AND r >= 3 AND h >= toDateTime(1773014400) AND h <= toDateTime(1773273600) AND 1800 > 0"
    );
    for bad in ["$__timeFilter_ms(t)", "$__dateFilter(d)", "${nope:singlequote}", "$nope", "${realm:csv}", "${realm}", "$__timeFilter()", "$__conditionalAll(x, $nope)", "${__from}"] {
        assert!(expand(bad, &ctx).is_err(), "{bad} must not expand");
    }
}

// ------------------------------------------------------------------------------------------------
// The queries on the fixture
// ------------------------------------------------------------------------------------------------

const FROM: &str = "2026-03-09T00:00:00Z";
const TO: &str = "2026-03-12T00:00:00Z";
const S3: &str = "8103771d-fd89-4b0d-b38d-539594fc64eb";
const S5: &str = "02cdbb18-4db3-46cd-9f6f-5eaa54313a9d";

/// Variables of a dashboard whose query does not (yet) expand are resolved in later rounds.
fn variable_queries(d: &Value) -> Vec<(String, String)> {
    d["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query").map(|v| (v["name"].as_str().unwrap().to_string(), v["query"]["rawSql"].as_str().unwrap().to_string())).collect()
}

/// Resolve every query variable of every dashboard to "All" (its options = its query's result) for
/// the range of `base`, running the variable queries round by round as their dependencies resolve.
/// Custom and textbox variables get the values in `fixed`. Returns the context per dashboard uid.
fn resolve_all(all: &[(String, Value)], base: &Ctx, fixed: &BTreeMap<String, Var>, python: &Path, db: &Path) -> BTreeMap<String, Ctx> {
    let mut ctxs: BTreeMap<String, Ctx> = BTreeMap::new();
    for (_, d) in all {
        let mut c = base.clone();
        for v in d["templating"]["list"].as_array().unwrap() {
            let name = v["name"].as_str().unwrap();
            if matches!(v["type"].as_str(), Some("custom" | "textbox")) {
                c.vars.insert(name.to_string(), fixed.get(name).cloned().unwrap_or_else(|| panic!("no test value for variable {name}")));
            }
        }
        ctxs.insert(d["uid"].as_str().unwrap().to_string(), c);
    }
    for round in 0..4 {
        let mut batch = Batch::default();
        let mut pending = 0;
        for (_, d) in all {
            let uid = d["uid"].as_str().unwrap();
            for (name, sql) in variable_queries(d) {
                if ctxs[uid].vars.contains_key(&name) {
                    continue;
                }
                pending += 1;
                if let Ok(q) = expand(&sql, &ctxs[uid]) {
                    batch.query(format!("{uid}|{name}"), q);
                }
            }
        }
        if pending == 0 {
            return ctxs;
        }
        assert!(!batch.keys.is_empty(), "round {round}: {pending} variables cannot be expanded (unknown variable or macro)");
        let res = batch.run(python, db);
        res.assert_all_ok();
        for (key, (_, r)) in res.0 {
            let (uid, name) = key.split_once('|').unwrap();
            let t = r.unwrap();
            let values = t.rows.iter().map(|r| text(&r[0])).collect();
            ctxs.get_mut(uid).unwrap().vars.insert(name.to_string(), Var::All(values));
        }
    }
    panic!("variables depend on each other in a cycle");
}

/// Queue every rawSql of every dashboard under `scenario`; returns the number queued.
fn queue_all(batch: &mut Batch, all: &[(String, Value)], ctxs: &BTreeMap<String, Ctx>, scenario: &str) -> usize {
    let mut n = 0;
    for (file, d) in all {
        let mut found = Vec::new();
        walk_raw_sql(d, file, &mut found);
        let ctx = &ctxs[d["uid"].as_str().unwrap()];
        for (i, (at, sql)) in found.into_iter().enumerate() {
            let q = expand(&sql, ctx).unwrap_or_else(|e| panic!("{scenario}: {at}: {e}"));
            batch.query(format!("{scenario}|{file}|{i}|{at}"), q);
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_query_runs_and_matches_the_timeline() {
    let Some(python) = chdb_python() else { return };
    let events = fixture_events().await;
    let inserts = captured_inserts(&events, 10_000).await;
    let loaded_at = Utc::now();
    let rows = rows(&events);
    let all = dashboards();
    let rules = alert_rules();

    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("db");
    let mut load = Batch::default();
    for s in migration_steps(&schema_params()) {
        load.setup(s.0);
    }
    for (i, (q, body)) in inserts.iter().enumerate() {
        load.setup(load_step(q, body, work.path(), i).0);
    }
    load.query("count", "SELECT count() AS n FROM kcaudit.events".into());
    assert_eq!(load.run(&python, &db).get("count").scalar("n") as usize, events.len());

    // ---- Scenario A: the fixture range, every variable on All. ----
    let base = Ctx::range(FROM, TO);
    let fixed_a: BTreeMap<String, Var> = [("min_severity", Var::one("1")), ("event_id", Var::one(S3))].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let ctx_a = resolve_all(&all, &base, &fixed_a, &python, &db);
    // The realm variable lists every realm of the data; the client variable every client in range.
    let realms: BTreeSet<String> = rows.iter().map(|r| s(r, "realm").to_string()).filter(|r| !r.is_empty()).collect();
    let clients: BTreeSet<String> = rows.iter().filter(|r| in_range(r, &base)).map(|r| s(r, "client_id").to_string()).filter(|c| !c.is_empty()).collect();
    for (uid, c) in &ctx_a {
        if let Some(v) = c.vars.get("realm") {
            assert_eq!(v.values().iter().cloned().collect::<BTreeSet<_>>(), realms, "{uid}: realm options");
            assert_eq!(v.values().len(), realms.len(), "{uid}: realm options are distinct");
        }
        if let Some(v) = c.vars.get("client") {
            assert_eq!(v.values().iter().cloned().collect::<BTreeSet<_>>(), clients, "{uid}: client options");
        }
    }
    let all_findings = findings(&rows);
    let rules_in_data: BTreeSet<String> = all_findings.iter().map(|f| f.2.clone()).collect();
    assert_eq!(ctx_a["kcaudit-findings-triage"].vars["rule"].values().iter().cloned().collect::<BTreeSet<_>>(), rules_in_data, "rule options");

    // ---- Scenario B: one realm, one client, two rules, high or worse. ----
    let mut ctx_b = ctx_a.clone();
    for c in ctx_b.values_mut() {
        if c.vars.contains_key("realm") {
            c.vars.insert("realm".into(), Var::Values(vec!["acme-prod".into()]));
        }
        if c.vars.contains_key("client") {
            c.vars.insert("client".into(), Var::Values(vec!["reporting-batch".into()]));
        }
        if c.vars.contains_key("rule") {
            c.vars.insert("rule".into(), Var::Values(vec!["error-burst-client".into(), "impersonation-privileged-target".into()]));
        }
        if c.vars.contains_key("min_severity") {
            c.vars.insert("min_severity".into(), Var::one("4"));
        }
    }
    // ---- Scenario C: a range with no data at all. ----
    let empty = Ctx::range("2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z");
    let ctx_c: BTreeMap<String, Ctx> = ctx_a.iter().map(|(k, c)| (k.clone(), Ctx { from: empty.from, to: empty.to, interval_s: empty.interval_s, vars: c.vars.clone() })).collect();
    // ---- Day 3 only (2026-03-11), every variable on All. ----
    let day3 = |c: &Ctx| Ctx { from: utc("2026-03-11T00:00:00Z"), to: utc("2026-03-12T00:00:00Z"), interval_s: 900, vars: c.vars.clone() };
    let ctx_d: BTreeMap<String, Ctx> = ctx_a.iter().map(|(k, c)| (k.clone(), day3(c))).collect();
    // ---- Around the load: ingest time (inserted_at) is the wall clock of the load. ----
    let now_range = |c: &Ctx| {
        let mut n = Ctx::new(loaded_at - chrono::Duration::hours(1), loaded_at + chrono::Duration::hours(1));
        n.vars = c.vars.clone();
        n
    };
    let ctx_now: BTreeMap<String, Ctx> = ctx_a.iter().map(|(k, c)| (k.clone(), now_range(c))).collect();

    let mut batch = Batch::default();
    let mut n = 0;
    for (name, ctxs) in [("A", &ctx_a), ("B", &ctx_b), ("C", &ctx_c), ("D", &ctx_d), ("NOW", &ctx_now)] {
        n += queue_all(&mut batch, &all, ctxs, name);
    }
    // Alert queries: the fixture range, an empty range, a range around the load, and the S2 burst window.
    let alert_ranges = [
        ("A", base.clone()),
        ("C", empty.clone()),
        ("NOW", now_range(&base)),
        // S2: reporting-batch's 8 failures between 11:20:05 and 11:20:36.
        ("BURST", Ctx::range("2026-03-11T11:17:00Z", "2026-03-11T11:22:00Z")),
        // n17: api-gateway's single expired-token failure at 14:05:17.
        ("ONE", Ctx::range("2026-03-09T14:03:00Z", "2026-03-09T14:08:00Z")),
    ];
    for r in &rules {
        for (name, c) in &alert_ranges {
            batch.query(format!("alert|{}|{name}", r.uid), expand(&r.sql, c).unwrap_or_else(|e| panic!("alert {}: {e}", r.uid)));
            n += 1;
        }
    }
    let total_queued = n;
    let res = batch.run(&python, &db);
    res.assert_all_ok();
    assert!(total_queued > 200, "{total_queued} queries run");

    // Time-series targets return a DateTime column named time first (the plugin's time-series shape).
    for (file, d) in &all {
        for p in d["panels"].as_array().unwrap() {
            for tg in p["targets"].as_array().unwrap() {
                if tg["format"] == 0 {
                    let q = expand(tg["rawSql"].as_str().unwrap(), &ctx_a[d["uid"].as_str().unwrap()]).unwrap();
                    let (_, r) = res.0.values().find(|(sql, _)| *sql == q).unwrap_or_else(|| panic!("{file} {}: ran", p["title"]));
                    let t = r.as_ref().unwrap();
                    assert_eq!(t.names[0], "time", "{file} / {}: first column is time", p["title"]);
                    assert!(t.types[0].starts_with("DateTime"), "{file} / {}: time is a DateTime, is {}", p["title"], t.types[0]);
                    for ty in &t.types[1..] {
                        assert!(is_numeric_type(ty) || is_string_type(ty), "{file} / {}: {ty}", p["title"]);
                    }
                }
            }
        }
    }

    // A panel's result under a context: its expanded SQL ran above, so look the result up by that text.
    let find = |uid: &str, title: &str, ctxs: &BTreeMap<String, Ctx>| -> Table {
        let q = expand(&panel_sql(dashboard(&all, uid), title), &ctxs[uid]).unwrap();
        let (_, r) = res.0.values().find(|(sql, _)| *sql == q).unwrap_or_else(|| panic!("{uid} / {title}: not run"));
        r.clone().unwrap()
    };

    // ================= Token-exchange overview =================
    let exch: Vec<&Value> = rows.iter().filter(|r| is_exchange(r) && in_range(r, &base)).collect();
    let failed = exch.iter().filter(|r| s(r, "outcome") != "success").count();
    assert!(exch.len() > 30 && failed > 0);
    let ov = "kcaudit-token-exchange-overview";
    assert_eq!(find(ov, "Token exchanges", &ctx_a).scalar("exchanges") as usize, exch.len(), "volume = TOKEN_EXCHANGE + TOKEN_EXCHANGE_ERROR events");
    assert_eq!(find(ov, "Failed exchanges", &ctx_a).scalar("failed") as usize, failed);
    let rate = find(ov, "Failure rate", &ctx_a).scalar("failure_rate");
    assert!((rate - failed as f64 / exch.len() as f64).abs() < 1e-9, "failure rate {rate}");
    assert_eq!(find(ov, "Impersonation exchanges", &ctx_a).scalar("impersonations") as usize, exch.iter().filter(|r| !s(r, "requested_subject").is_empty()).count());
    let by_outcome = find(ov, "Token exchanges by outcome", &ctx_a);
    assert_eq!(by_outcome.nums("exchanges").iter().sum::<f64>() as usize, exch.len(), "the time series adds up to the volume");
    let by_outcome_failed: f64 = by_outcome.strs("outcome").iter().zip(by_outcome.nums("exchanges")).filter(|(o, _)| o.as_str() != "success").map(|(_, n)| n).sum();
    assert_eq!(by_outcome_failed as usize, failed);
    let exchangers = find(ov, "Exchangers", &ctx_a);
    let mut want_clients: BTreeMap<String, usize> = BTreeMap::new();
    for r in &exch {
        *want_clients.entry(s(r, "client_id").to_string()).or_default() += 1;
    }
    let got_clients: BTreeMap<String, usize> = exchangers.strs("client").into_iter().zip(exchangers.nums("exchanges").into_iter().map(|n| n as usize)).collect();
    assert_eq!(got_clients, want_clients, "exchanges per client");
    assert_eq!(find(ov, "Active exchangers", &ctx_a).scalar("exchangers") as usize, want_clients.len());
    let audiences = find(ov, "Top audiences", &ctx_a);
    let mut want_aud: BTreeMap<String, usize> = BTreeMap::new();
    for r in &exch {
        for a in r["audiences"].as_array().unwrap() {
            *want_aud.entry(a.as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    let got_aud: BTreeMap<String, usize> = audiences.strs("audience").into_iter().zip(audiences.nums("exchanges").into_iter().map(|n| n as usize)).collect();
    assert_eq!(got_aud, want_aud, "exchanges per audience");
    // Empty range: zero, not an error.
    assert_eq!(find(ov, "Token exchanges", &ctx_c).scalar("exchanges"), 0.0);
    assert!(find(ov, "Token exchanges by outcome", &ctx_c).rows.is_empty());
    // Scenario B: only reporting-batch in acme-prod.
    let rb: Vec<&&Value> = exch.iter().filter(|r| s(r, "client_id") == "reporting-batch" && s(r, "realm") == "acme-prod").collect();
    assert_eq!(find(ov, "Token exchanges", &ctx_b).scalar("exchanges") as usize, rb.len());

    // ================= Findings triage =================
    let ft = "kcaudit-findings-triage";
    let table = find(ft, "Findings (newest first)", &ctx_a);
    let want = triage_order(all_findings.iter().filter(|f| f.0 >= base.from.timestamp_millis() && f.0 <= base.to.timestamp_millis()).cloned().collect());
    assert!(want.len() >= 10, "the timeline has findings: {}", want.len());
    let got: Vec<(String, String)> = table.strs("event_id").into_iter().zip(table.strs("rule")).collect();
    let want_ids: Vec<(String, String)> = want.iter().map(|f| (f.3.clone(), f.2.clone())).collect();
    assert_eq!(got, want_ids, "one row per finding, newest first");
    assert_eq!(table.strs("severity"), want.iter().map(|f| ["", "info", "low", "medium", "high", "critical"][f.1 as usize].to_string()).collect::<Vec<_>>());
    let times = table.strs("time");
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    for c in ["time", "severity", "rule", "title", "reason", "client", "subject", "event_id"] {
        table.col(c);
    }
    let s3_row = got.iter().position(|(id, rule)| id == S3 && rule == "impersonation-privileged-target").expect("S3 is in the triage table");
    assert_eq!(text(table.get(s3_row, "severity")), "critical");
    assert_eq!(text(table.get(s3_row, "client")), "support-console");
    assert_eq!(text(table.get(s3_row, "subject")), "ops.admin");
    let sev = find(ft, "Findings by severity", &ctx_a);
    for (i, name) in ["info", "low", "medium", "high", "critical"].iter().enumerate() {
        assert_eq!(sev.scalar(name) as usize, want.iter().filter(|f| f.1 as usize == i + 1).count(), "{name} findings");
    }
    let over_time = find(ft, "Findings over time by rule", &ctx_a);
    assert_eq!(over_time.nums("findings").iter().sum::<f64>() as usize, want.len());
    let by_rule = find(ft, "Findings by rule", &ctx_a);
    assert_eq!(by_rule.strs("rule").into_iter().collect::<BTreeSet<_>>(), rules_in_data);
    assert_eq!(by_rule.strs("worst_severity")[0], "critical", "the worst rule first");
    // Scenario B: acme-prod / reporting-batch / two rules / high or worse.
    let table_b = find(ft, "Findings (newest first)", &ctx_b);
    let want_b = triage_order(
        want.iter()
            .filter(|f| f.4 == "acme-prod" && f.5 == "reporting-batch" && f.1 >= 4 && ["error-burst-client", "impersonation-privileged-target"].contains(&f.2.as_str()))
            .cloned()
            .collect(),
    );
    assert!(!want_b.is_empty());
    assert_eq!(table_b.strs("event_id").into_iter().zip(table_b.strs("rule")).collect::<Vec<_>>(), want_b.iter().map(|f| (f.3.clone(), f.2.clone())).collect::<Vec<_>>(), "filtered triage table");
    assert!(find(ft, "Findings (newest first)", &ctx_c).rows.is_empty());

    // ================= Clients and audiences =================
    let ca = "kcaudit-clients-audiences";
    let mut first: BTreeMap<(String, String, String), (i64, String)> = BTreeMap::new();
    for r in &rows {
        let x = s(r, "exchanger");
        if x.is_empty() {
            continue;
        }
        for a in r["audiences"].as_array().unwrap() {
            let k = (s(r, "realm").to_string(), x.to_string(), a.as_str().unwrap().to_string());
            let v = (t_ms(r), s(r, "event_id").to_string());
            let slot = first.entry(k).or_insert(v.clone());
            if v.0 < slot.0 {
                *slot = v;
            }
        }
    }
    let new_pairs = find(ca, "Newly seen exchanger → audience pairs (first seen in the range)", &ctx_d);
    let d3 = day3(&base);
    let want_new: BTreeSet<(String, String, String)> = first.iter().filter(|(_, (t, _))| *t >= d3.from.timestamp_millis() && *t <= d3.to.timestamp_millis()).map(|((_, x, a), (_, id))| (x.clone(), a.clone(), id.clone())).collect();
    let got_new: BTreeSet<(String, String, String)> = (0..new_pairs.rows.len()).map(|i| (text(new_pairs.get(i, "exchanger")), text(new_pairs.get(i, "audience")), text(new_pairs.get(i, "first_event_id")))).collect();
    assert_eq!(got_new, want_new, "pairs first seen on 2026-03-11");
    let s1 = (0..new_pairs.rows.len()).find(|&i| text(new_pairs.get(i, "exchanger")) == "api-gateway" && text(new_pairs.get(i, "audience")) == "hr-records-api").expect("S1: api-gateway → hr-records-api is newly seen on day 3");
    assert_eq!(text(new_pairs.get(s1, "status")), "obtained");
    assert_eq!(text(new_pairs.get(s1, "first_event_id")), "da217bd6-ce7c-410b-8a2f-18233ba504da");
    assert_eq!(num(new_pairs.get(s1, "exchanges")), 2.0, "alice and dmitri");
    assert!(new_pairs.strs("first_seen").windows(2).all(|w| w[0] >= w[1]), "newest first");
    // Over the whole fixture range every pair is new; over an empty range none is.
    assert_eq!(find(ca, "Newly seen exchanger → audience pairs (first seen in the range)", &ctx_a).rows.len(), first.len());
    assert!(find(ca, "Newly seen exchanger → audience pairs (first seen in the range)", &ctx_c).rows.is_empty());
    let pairs = find(ca, "Exchanger → audience pairs active in the range", &ctx_a);
    assert_eq!(pairs.rows.len(), first.len());
    let mut want_pair_counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in rows.iter().filter(|r| !s(r, "exchanger").is_empty()) {
        for a in r["audiences"].as_array().unwrap() {
            *want_pair_counts.entry((s(r, "exchanger").to_string(), a.as_str().unwrap().to_string())).or_default() += 1;
        }
    }
    let got_pair_counts: BTreeMap<(String, String), usize> = (0..pairs.rows.len()).map(|i| ((text(pairs.get(i, "exchanger")), text(pairs.get(i, "audience"))), num(pairs.get(i, "exchanges")) as usize)).collect();
    assert_eq!(got_pair_counts, want_pair_counts, "exchanger × audience counts");
    let matrix = find(ca, "Exchanger × audience matrix", &ctx_a);
    assert_eq!(matrix.names, vec!["exchanger", "audience", "exchanges"], "long form for the groupingToMatrix transformation");
    assert_eq!(matrix.rows.len(), want_pair_counts.len());
    let origins = find(ca, "Exchanger ← subject-token origin client", &ctx_a);
    assert!((0..origins.rows.len()).any(|i| text(origins.get(i, "exchanger")) == "orders-api" && text(origins.get(i, "origin_client")) == "api-gateway"), "chained exchanges");

    // ================= Impersonation =================
    let im = "kcaudit-impersonation";
    let who = find(im, "Who became whom", &ctx_a);
    let mut want_imp: Vec<&Value> = exch.iter().copied().filter(|r| !s(r, "requested_subject").is_empty()).collect();
    want_imp.sort_by(|a, b| t_ms(b).cmp(&t_ms(a)));
    assert_eq!(who.strs("event_id"), want_imp.iter().map(|r| s(r, "event_id").to_string()).collect::<Vec<_>>(), "every impersonation exchange, newest first");
    for (i, r) in want_imp.iter().enumerate() {
        let privileged = r["requested_subject_privileged"].as_bool().unwrap() || r["subject_privileged"].as_bool().unwrap();
        assert_eq!(who.get(i, "privileged").as_bool(), Some(privileged), "{}: privileged", s(r, "event_id"));
        assert_eq!(text(who.get(i, "impersonator")), s(r, "impersonator"));
        assert_eq!(text(who.get(i, "requested_subject")), s(r, "requested_subject"));
        assert_eq!(text(who.get(i, "outcome")), s(r, "outcome"));
        assert_eq!(text(who.get(i, "ip")), s(r, "ip_address"));
    }
    let row_of = |id: &str| who.strs("event_id").iter().position(|x| x == id).unwrap_or_else(|| panic!("{id} in Who became whom"));
    let s3i = row_of(S3);
    assert_eq!(text(who.get(s3i, "client")), "support-console", "S3");
    assert_eq!(text(who.get(s3i, "impersonator")), "sam.ortiz", "S3");
    assert_eq!(text(who.get(s3i, "requested_subject")), "ops.admin", "S3");
    assert_eq!(who.get(s3i, "privileged"), &Value::Bool(true), "S3: the target is privileged");
    assert_eq!(text(who.get(s3i, "outcome")), "success", "S3");
    assert_eq!(text(who.get(s3i, "ip")), "203.0.113.66", "S3");
    let s5i = row_of(S5);
    assert_eq!(text(who.get(s5i, "client")), "reporting-batch", "S5");
    assert_eq!(text(who.get(s5i, "requested_subject")), "erin.walsh", "S5");
    assert_eq!(text(who.get(s5i, "impersonator")), "", "S5: no impersonator recorded");
    assert_eq!(who.get(s5i, "privileged"), &Value::Bool(false), "S5");
    let imp_stats = find(im, "Impersonation exchanges", &ctx_a);
    assert_eq!(imp_stats.scalar("succeeded") as usize, want_imp.iter().filter(|r| s(r, "outcome") == "success").count());
    assert_eq!(imp_stats.scalar("denied") as usize, want_imp.iter().filter(|r| s(r, "outcome") != "success").count());
    assert_eq!(imp_stats.scalar("no_impersonator") as usize, want_imp.iter().filter(|r| s(r, "impersonator").is_empty()).count());
    assert_eq!(imp_stats.scalar("privileged_target") as usize, want_imp.iter().filter(|r| r["requested_subject_privileged"].as_bool().unwrap() || r["subject_privileged"].as_bool().unwrap()).count());
    let imp_pairs = find(im, "Impersonation pairs", &ctx_a);
    assert_eq!(imp_pairs.nums("attempts").iter().sum::<f64>() as usize, want_imp.len());
    assert_eq!(imp_pairs.get(0, "privileged"), &Value::Bool(true), "privileged targets first");

    // ================= Failures =================
    let fl = "kcaudit-failures";
    let fail_d3: Vec<&Value> = rows.iter().filter(|r| is_exchange(r) && s(r, "outcome") != "success" && in_range(r, &d3)).collect();
    let mut by_client: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_ip: BTreeMap<String, usize> = BTreeMap::new();
    for r in &fail_d3 {
        *by_client.entry(s(r, "client_id").to_string()).or_default() += 1;
        *by_ip.entry(s(r, "ip_address").to_string()).or_default() += 1;
    }
    let ranked = |m: &BTreeMap<String, usize>| {
        let mut v: Vec<(String, usize)> = m.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    };
    let fc = find(fl, "Failures by client (top 20)", &ctx_d);
    let got_fc: Vec<(String, usize)> = fc.strs("client").into_iter().zip(fc.nums("failures").into_iter().map(|n| n as usize)).collect();
    assert_eq!(got_fc, ranked(&by_client), "failures by client on 2026-03-11");
    assert_eq!(got_fc[0].0, "reporting-batch", "S2: reporting-batch fails most on day 3");
    assert_eq!(text(fc.get(0, "error_codes")), "client_not_found, invalid_token, not_allowed", "S2's error mix");
    let fi = find(fl, "Failures by source IP (top 20)", &ctx_d);
    let got_fi: Vec<(String, usize)> = fi.strs("ip").into_iter().zip(fi.nums("failures").into_iter().map(|n| n as usize)).collect();
    assert_eq!(got_fi, ranked(&by_ip), "failures by source IP on 2026-03-11");
    assert_eq!(got_fi[0].0, "198.51.100.23", "S2's new IP");
    let codes = find(fl, "Error codes", &ctx_a);
    let mut want_codes: BTreeMap<String, usize> = BTreeMap::new();
    for r in exch.iter().filter(|r| s(r, "outcome") != "success") {
        *want_codes.entry(s(r, "error").to_string()).or_default() += 1;
    }
    let got_codes: BTreeMap<String, usize> = codes.strs("error_code").into_iter().zip(codes.nums("failures").into_iter().map(|n| n as usize)).collect();
    assert_eq!(got_codes, want_codes);
    let latest = find(fl, "Latest failed exchanges", &ctx_a);
    assert_eq!(latest.rows.len(), failed);
    assert!(latest.strs("reason").iter().any(|r| r == "client not allowed to exchange to audience"), "Keycloak's reason detail");
    let fc_b = find(fl, "Failures by client (top 20)", &ctx_b);
    assert_eq!(fc_b.strs("client"), vec!["reporting-batch".to_string()], "the client filter applies");

    // ================= Event detail =================
    let ed = "kcaudit-event-detail";
    let ev = find(ed, "Event", &ctx_a);
    assert_eq!(ev.strs("event_id"), vec![S3.to_string()]);
    let ev_f = find(ed, "Findings on this event", &ctx_a);
    let mut want_ef: Vec<&F> = all_findings.iter().filter(|f| f.3 == S3).collect();
    want_ef.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
    assert_eq!(ev_f.strs("rule"), want_ef.iter().map(|f| f.2.clone()).collect::<Vec<_>>());
    let anchor = rows.iter().find(|r| s(r, "event_id") == S3).unwrap();
    let mut want_rel: Vec<&Value> = rows.iter().filter(|r| s(r, "realm") == s(anchor, "realm") && s(r, "client_id") == s(anchor, "client_id") && (t_ms(r) - t_ms(anchor)).abs() <= 3_600_000).collect();
    want_rel.sort_by_key(|r| t_ms(r));
    assert_eq!(find(ed, "Same realm and client, ±1 hour", &ctx_a).strs("event_id"), want_rel.iter().map(|r| s(r, "event_id").to_string()).collect::<Vec<_>>());
    let json = find(ed, "Event JSON (canonical kcaudit event)", &ctx_a);
    let back: Value = serde_json::from_str(&json.strs("event_json")[0]).unwrap();
    assert_eq!(back["id"], S3);

    // ================= Pipeline health (before anything goes wrong) =================
    let ph = "kcaudit-pipeline-health";
    assert_eq!(find(ph, "Events ingested", &ctx_now).scalar("events") as usize, events.len(), "every event was written around the load");
    assert_eq!(find(ph, "Events ingested", &ctx_a).scalar("events"), 0.0, "nothing was written in March 2026");
    assert_eq!(find(ph, "Dead letters", &ctx_now).scalar("dead_letters"), 0.0);
    assert!(find(ph, "Latest dead letters", &ctx_now).rows.is_empty());
    assert!(find(ph, "Dead letters over time", &ctx_now).rows.is_empty());
    let oldest = rows.iter().map(t_ms).min().unwrap();
    let lag = find(ph, "Ingest lag (inserted_at − event_time)", &ctx_now);
    let max_lag = lag.nums("maximum").into_iter().fold(0.0, f64::max);
    let want_max = (fixture_inserted_at(&python, &db) - oldest) as f64 / 1000.0;
    assert!((max_lag - want_max).abs() < 0.002, "max lag {max_lag} vs {want_max}");
    let by_source = find(ph, "Ingest by source", &ctx_now);
    assert_eq!(by_source.strs("source").into_iter().collect::<BTreeSet<_>>(), BTreeSet::from(["replay".to_string()]), "the fixture came from files");
    assert_eq!(by_source.nums("events").iter().sum::<f64>() as usize, events.len());
    let per_min = find(ph, "Events ingested per minute (by source)", &ctx_now);
    let interval = ctx_now[ph].interval_s as f64;
    assert!((per_min.nums("events_per_minute").iter().sum::<f64>() * interval / 60.0 - events.len() as f64).abs() < 1e-6, "per-minute rate × minutes = rows");

    // ================= Alerts =================
    let fired = |uid: &str, range: &str| -> Vec<(String, f64)> { evaluate(alert(&rules, uid), res.get(&format!("alert|{uid}|{range}"))) };
    for r in &rules {
        for (name, _) in &alert_ranges {
            evaluate(r, res.get(&format!("alert|{}|{name}", r.uid))); // shape checks on every result
        }
        assert!(res.get(&format!("alert|{}|C", r.uid)).rows.is_empty(), "{}: no row over a range without data", r.uid);
    }
    let labels = |f: &[F]| -> BTreeSet<String> { f.iter().map(|f| format!("realm={},rule={},client={}", f.4, f.2, f.5)).collect() };
    let in_base: Vec<F> = all_findings.iter().filter(|f| f.0 >= base.from.timestamp_millis() && f.0 <= base.to.timestamp_millis()).cloned().collect();
    let critical = fired("kcaudit-critical-finding", "A");
    assert!(!critical.is_empty(), "the critical-finding alert fires on the fixture (S3)");
    assert_eq!(critical.iter().map(|c| c.0.clone()).collect::<BTreeSet<_>>(), labels(&in_base.iter().filter(|f| f.1 == 5).cloned().collect::<Vec<_>>()));
    assert!(critical.iter().any(|c| c.0 == "realm=acme-prod,rule=impersonation-privileged-target,client=support-console"));
    assert!(res.get("alert|kcaudit-critical-finding|C").rows.is_empty(), "and returns no row over a range without findings");
    assert!(fired("kcaudit-critical-finding", "NOW").len() == critical.len(), "a finding also fires when it is ingested (late events)");
    let high_rules = ["impersonation-privileged-target", "naked-impersonation-service-client", "admin-action-after-impersonation", "new-audience", "audience-outside-policy"];
    let high = fired("kcaudit-high-identity-finding", "A");
    assert_eq!(high.iter().map(|c| c.0.clone()).collect::<BTreeSet<_>>(), labels(&in_base.iter().filter(|f| f.1 == 4 && high_rules.contains(&f.2.as_str())).cloned().collect::<Vec<_>>()));
    assert!(high.iter().any(|c| c.0 == "realm=acme-prod,rule=naked-impersonation-service-client,client=reporting-batch"), "S5 pages");
    let new_aud = fired("kcaudit-new-audience", "A");
    assert_eq!(new_aud.len(), 1, "{new_aud:?}");
    assert_eq!(new_aud[0].0, "realm=acme-prod,client=api-gateway,audiences=hr-records-api", "S1");
    let burst = fired("kcaudit-failed-exchange-burst", "BURST");
    assert_eq!(burst, vec![("realm=acme-prod,client=reporting-batch".to_string(), 8.0)], "S2: 8 failures in 31 s");
    assert!(!res.get("alert|kcaudit-failed-exchange-burst|ONE").rows.is_empty(), "a single failure is a row...");
    assert!(fired("kcaudit-failed-exchange-burst", "ONE").is_empty(), "...below the threshold");
    assert!(fired("kcaudit-failed-exchange-burst", "NOW").is_empty(), "event time only: the load itself is no burst");
    assert!(res.get("alert|kcaudit-dead-letters|NOW").rows.is_empty(), "no dead letters");
    assert!(res.get("alert|kcaudit-ingest-lag|NOW").rows.is_empty(), "file replays do not count as ingest lag");

    // ================= Something goes wrong: a dead letter and a late live event =================
    let now_ms = Utc::now().timestamp_millis();
    let mut late = Batch::default();
    late.setup(format!(
        "INSERT INTO kcaudit.dead_letters (dead_lettered_at, instance, sink, reason, error_code, event_id, event_time, realm, client_id, event_json) \
         VALUES (fromUnixTimestamp64Milli({now_ms}), 'kcaudit-1', 'clickhouse', 'Cannot parse input: expected Bool', 27, 'dl-1', fromUnixTimestamp64Milli({}), 'acme-prod', 'api-gateway', '{{}}')",
        now_ms - 60_000
    ));
    late.setup(format!(
        "INSERT INTO kcaudit.events (event_id, event_time, received_at, inserted_at, kind, event_type, outcome, realm, client_id, origin_input) \
         VALUES ('late-1', fromUnixTimestamp64Milli({}), fromUnixTimestamp64Milli({}), fromUnixTimestamp64Milli({now_ms}), 'user', 'TOKEN_EXCHANGE', 'success', 'acme-prod', 'api-gateway', 'webhook:/webhook/keycloak')",
        now_ms - 600_000,
        now_ms - 600_000
    ));
    let after = {
        let mut n = Ctx::new(Utc.timestamp_millis_opt(now_ms).unwrap() - chrono::Duration::minutes(10), Utc.timestamp_millis_opt(now_ms).unwrap() + chrono::Duration::minutes(1));
        n.vars = ctx_a[ph].vars.clone();
        n
    };
    for (k, title) in [("dl", "Dead letters"), ("latest", "Latest dead letters"), ("dlts", "Dead letters over time"), ("src", "Ingest by source")] {
        late.query(k, expand(&panel_sql(dashboard(&all, ph), title), &after).unwrap());
    }
    for uid in ["kcaudit-dead-letters", "kcaudit-ingest-lag"] {
        let r = alert(&rules, uid);
        let c = Ctx::new(Utc.timestamp_millis_opt(now_ms).unwrap() - chrono::Duration::seconds(r.window_s), Utc.timestamp_millis_opt(now_ms).unwrap() + chrono::Duration::seconds(1));
        late.query(uid, expand(&r.sql, &c).unwrap());
    }
    let res2 = late.run(&python, &db);
    res2.assert_all_ok();
    assert_eq!(res2.get("dl").scalar("dead_letters"), 1.0);
    assert_eq!(res2.get("latest").strs("reason"), vec!["Cannot parse input: expected Bool".to_string()]);
    assert_eq!(res2.get("dlts").nums("dead_letters").iter().sum::<f64>(), 1.0);
    assert!(res2.get("src").strs("source").contains(&"webhook".to_string()));
    assert_eq!(evaluate(alert(&rules, "kcaudit-dead-letters"), res2.get("kcaudit-dead-letters")), vec![("instance=kcaudit-1,sink=clickhouse".to_string(), 1.0)]);
    let lag_alert = evaluate(alert(&rules, "kcaudit-ingest-lag"), res2.get("kcaudit-ingest-lag"));
    assert_eq!(lag_alert.len(), 1, "{lag_alert:?}");
    assert_eq!(lag_alert[0].0, "source=webhook");
    assert!((lag_alert[0].1 - 600.0).abs() < 1e-6, "p95 lag of the late webhook event: {}", lag_alert[0].1);
}

/// The sink's inserted_at of the fixture rows (one INSERT, one wall-clock value), in ms.
fn fixture_inserted_at(python: &Path, db: &Path) -> i64 {
    let mut b = Batch::default();
    b.query("ins", "SELECT min(toUnixTimestamp64Milli(inserted_at)) AS lo, max(toUnixTimestamp64Milli(inserted_at)) AS hi FROM kcaudit.events".into());
    let res = b.run(python, db);
    let t = res.get("ins");
    let (lo, hi) = (t.scalar("lo") as i64, t.scalar("hi") as i64);
    assert_eq!(lo, hi, "one INSERT, one inserted_at");
    hi
}
