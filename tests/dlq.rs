//! Dead letters as a workflow (`kcaudit dlq list|show|replay|purge|compact`): dead letters made by real
//! pipeline runs with a sink that refuses, then listed, shown, purged and replayed once the cause is
//! fixed; the ledger says what became of each record, and every event arrives exactly once.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use kcaudit::config::Config;
use kcaudit::dead_letter::ledger::State;
use kcaudit::dead_letter::workflow::{replay, Filter, Outcome, ReplayOptions, Store};
use kcaudit::dead_letter::{DeadLetterStore, Stage};
use kcaudit::decode::Format;
use kcaudit::event::AuditEvent;
use kcaudit::metrics::Metrics;
use kcaudit::pipeline::{DedupOptions, Pipeline, PipelineOptions, SinkSpec};
use kcaudit::sinks::{BatchOptions, BoxFuture, RetryOptions, Sink, SinkError, WriteReport};
use serde_json::Value;

/// A sink that refuses everything (permanently) while `refuse` is set, and records what it took.
#[derive(Clone)]
struct Gate {
    refuse: Arc<AtomicBool>,
    written: Arc<Mutex<Vec<AuditEvent>>>,
}

impl Gate {
    fn new() -> Gate {
        Gate { refuse: Arc::new(AtomicBool::new(true)), written: Arc::default() }
    }

    fn spec(&self) -> SinkSpec {
        SinkSpec { sink: Box::new(self.clone()), batch: BatchOptions { max_events: 100, max_wait_ms: 1, queue_capacity: 1000 }, retry: RetryOptions { max_attempts: 1, initial_backoff_ms: 1, max_backoff_ms: 1 } }
    }

    /// Written events' ids, with how many times each arrived.
    fn arrivals(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for e in self.written.lock().unwrap().iter() {
            *m.entry(e.id.clone()).or_default() += 1;
        }
        m
    }
}

impl Sink for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    fn write<'a>(&'a mut self, events: &'a [Arc<AuditEvent>]) -> BoxFuture<'a, Result<WriteReport, SinkError>> {
        Box::pin(async move {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(SinkError::Permanent("index kcaudit is closed".into()));
            }
            self.written.lock().unwrap().extend(events.iter().map(|e| (**e).clone()));
            Ok(WriteReport::default())
        })
    }
}

fn event(id: &str, client: &str) -> String {
    format!(r#"{{"id":"{id}","time":1773043084120,"type":"LOGIN","realmId":"r","clientId":"{client}"}}"#)
}

/// Run `body` through a real pipeline into `gate`, dead letters into `dlq`.
async fn ingest(gate: &Gate, dlq: &Path, body: &str) {
    let pipeline = Pipeline::start(vec![gate.spec()], DeadLetterStore::open(dlq).unwrap(), Metrics::new(), &DedupOptions::default(), &PipelineOptions::default());
    let report = pipeline.handle().submit(decode(body.as_bytes(), Format::Keycloak), "test", false).await.unwrap().await.unwrap().unwrap();
    assert_eq!(report.counts().failed, 0);
    pipeline.shutdown().await;
}

fn ids_by<'a>(loaded: &'a kcaudit::dead_letter::workflow::Loaded, f: impl Fn(&kcaudit::dead_letter::DeadLetter) -> bool) -> Vec<&'a str> {
    loaded.scan.records.iter().filter(|s| f(&s.record)).map(|s| s.record.id.as_str()).collect()
}

#[tokio::test]
async fn replay_after_the_fix_delivers_each_event_once_and_the_ledger_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config: Config = temp_config(dir.path(), &[]);
    let dlq = config.data_path(&config.dead_letter.path);
    let gate = Gate::new();

    // e0..e5 refused by the sink; one undecodable line; e9 twice with different content (the second
    // is a dedup-stage dead letter); then e0 again in a second run (its dedup memory is gone): the
    // same event dead-lettered twice for the same sink.
    let mut lines: Vec<String> = (0..6).map(|i| event(&format!("e{i}"), "ok")).collect();
    lines.push("not json at all".into());
    ingest(&gate, &dlq, &lines.join("\n")).await;
    gate.refuse.store(false, Ordering::SeqCst);
    ingest(&gate, &dlq, &format!("{}\n{}", event("e9", "first"), event("e9", "second"))).await;
    gate.refuse.store(true, Ordering::SeqCst);
    ingest(&gate, &dlq, &event("e0", "ok")).await;
    assert_eq!(gate.arrivals(), HashMap::from([("e9".to_string(), 1)]));
    gate.written.lock().unwrap().clear();

    let store = Store::new(&config, &Default::default());
    let loaded = store.load().unwrap();
    assert_eq!(loaded.scan.records.len(), 9);
    let sink_ids = ids_by(&loaded, |r| r.stage == Stage::Sink);
    assert_eq!(sink_ids.len(), 7);
    let decode_id = ids_by(&loaded, |r| r.stage == Stage::Decode)[0].to_string();
    let dedup_id = ids_by(&loaded, |r| r.stage == Stage::Dedup)[0].to_string();
    let e1 = ids_by(&loaded, |r| r.event.as_ref().is_some_and(|e| e.id == "e1"))[0].to_string();
    let make = {
        let gate = gate.clone();
        move |_: &Config| Ok(vec![gate.spec()])
    };

    // Not fixed yet: e1 fails again; the pipeline dead-letters it anew and the ledger links old -> new.
    let metrics = Metrics::new();
    let only_e1 = Filter { ids: vec![e1[..8].to_string()], ..Default::default() };
    let s = replay(&config, &store, &only_e1, &ReplayOptions::default(), &make, &metrics).await.unwrap();
    assert_eq!((s.selected, s.replayed, s.failed_again, s.all_replayed()), (1, 0, 1, false));
    let loaded = store.load().unwrap();
    assert_eq!(loaded.scan.records.len(), 10);
    let decision = loaded.ledger.decision(&e1).unwrap();
    assert_eq!((decision.action, decision.outcome.as_str()), (State::Superseded, "failed_again"));
    assert_eq!(decision.superseded_by, s.records[0].new_ids);
    let e1_new = decision.superseded_by[0].clone();
    let newest = loaded.scan.records.last().unwrap();
    assert_eq!(newest.record.id, e1_new);
    assert_eq!(newest.record.event.as_ref().unwrap().id, "e1");
    assert_eq!(loaded.ledger.replay_of(&e1_new), Some(e1.as_str()));
    assert_eq!(metrics.dead_letters_replayed.with_label_values(&["failed_again"]).get(), 1);
    assert!(gate.arrivals().is_empty());

    // Fixed. Default selection: decode and sink stages (the dedup record waits for --stage dedup).
    gate.refuse.store(false, Ordering::SeqCst);
    let metrics = Metrics::new();
    let s = replay(&config, &store, &Filter::default(), &ReplayOptions::default(), &make, &metrics).await.unwrap();
    assert_eq!((s.selected, s.replayed, s.failed_again, s.failed, s.skipped, s.not_selected), (8, 7, 1, 0, 0, 1), "{:#?}", s.records);
    assert!(!s.all_replayed(), "the undecodable line fails again");
    let want: HashMap<String, usize> = (0..6).map(|i| (format!("e{i}"), 1)).collect();
    assert_eq!(gate.arrivals(), want, "every refused event arrives exactly once (e0's two records included)");
    assert_eq!(metrics.dead_letters_replayed.with_label_values(&["delivered"]).get(), 7);
    assert_eq!(metrics.dead_letters_replayed.with_label_values(&["failed_again"]).get(), 1);
    assert_eq!(metrics.events_delivered_total_for("gate"), 6);

    let loaded = store.load().unwrap();
    let state_of = |id: &str| loaded.ledger.state(id);
    for id in &sink_ids {
        let want = if *id == e1 { State::Superseded } else { State::Replayed };
        assert_eq!(state_of(id), want, "{id}");
    }
    assert_eq!(state_of(&e1_new), State::Replayed);
    assert_eq!(loaded.ledger.decision(&e1_new).unwrap().sinks, vec!["gate".to_string()]);
    assert_eq!(state_of(&decode_id), State::Superseded);
    let decode_new = loaded.ledger.decision(&decode_id).unwrap().superseded_by.clone();
    assert_eq!(decode_new.len(), 1);
    assert_eq!(state_of(&decode_new[0]), State::Pending);
    assert_eq!(loaded.scan.records.iter().find(|s| s.record.id == decode_new[0]).unwrap().record.raw.as_deref(), Some("not json at all"));
    assert_eq!(state_of(&dedup_id), State::Pending);

    // Nothing left to replay to the sink: a second replay replays nothing and delivers nothing.
    gate.written.lock().unwrap().clear();
    let sink_only = Filter { stages: vec![Stage::Sink], ..Default::default() };
    let s = replay(&config, &store, &sink_only, &ReplayOptions::default(), &make, &Metrics::new()).await.unwrap();
    assert_eq!((s.selected, s.replayed, s.all_replayed()), (0, 0, true));
    assert!(gate.arrivals().is_empty());

    // Asked for explicitly, the dedup record goes through the pipeline like new input.
    let dedup_only = Filter { stages: vec![Stage::Dedup], ..Default::default() };
    let dry = replay(&config, &store, &dedup_only, &ReplayOptions { dry_run: true, ..Default::default() }, &make, &Metrics::new()).await.unwrap();
    assert_eq!(dry.records.iter().map(|r| (r.id.as_str(), r.outcome)).collect::<Vec<_>>(), vec![(dedup_id.as_str(), Outcome::WouldReplay)]);
    assert!(gate.arrivals().is_empty(), "a dry run sends nothing");
    let s = replay(&config, &store, &dedup_only, &ReplayOptions::default(), &make, &Metrics::new()).await.unwrap();
    assert_eq!((s.selected, s.replayed), (1, 1));
    assert_eq!(gate.written.lock().unwrap()[0].client_id.as_deref(), Some("second"));
}

/// `Metrics` has no by-name getter; read the delivered counter of a sink from the registry.
trait DeliveredFor {
    fn events_delivered_total_for(&self, sink: &str) -> u64;
}

impl DeliveredFor for Metrics {
    fn events_delivered_total_for(&self, sink: &str) -> u64 {
        self.delivered.with_label_values(&[sink]).get()
    }
}

// ---------------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------------

fn kcaudit(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kcaudit")).current_dir(dir).env("RUST_LOG", "warn").args(args).output().expect("kcaudit runs")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// `kcaudit dlq list ARGS --json`: the records' ids, in file order.
fn list(dir: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["dlq", "list", "--json"];
    all.extend_from_slice(args);
    let o = kcaudit(dir, &all);
    assert!(o.status.success(), "{:?}: {}", args, text(&o).1);
    text(&o).0.lines().map(|l| serde_json::from_str(l).expect("a JSON line per record")).collect()
}

fn count(dir: &Path, args: &[&str]) -> usize {
    list(dir, args).len()
}

/// The audit log on /dev/full refuses every write (ENOSPC): a real sink failing in a real run.
#[cfg(target_os = "linux")]
#[test]
fn cli_list_show_purge_replay_after_the_fix_and_compact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events: Vec<String> = (0..4).map(|i| event(&format!("k{i}"), "ok")).collect();
    std::fs::write(d.join("in.jsonl"), format!("{}\nnot json at all\n", events.join("\n"))).unwrap();
    let broken = ["--set", "sinks.audit_log.path=\"/dev/full\"", "--set", "sinks.audit_log.retry.max_attempts=1"];
    let mut args = vec!["replay", "--to-sinks", "--quiet", "--format", "keycloak"];
    args.extend_from_slice(&broken);
    args.push("in.jsonl");
    let o = kcaudit(d, &args);
    assert!(o.status.success(), "{}", text(&o).1);
    let dlq_file = d.join("kcaudit-data/dead-letter.jsonl");

    // list: the table, then a summary by stage and sink; each filter with exact counts.
    let o = kcaudit(d, &["dlq", "list"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(out.starts_with("ID "), "{out}");
    assert_eq!(out.lines().count(), 1 + 5 + 1, "{out}");
    assert_eq!(out.lines().last().unwrap(), "5 dead letters (pending): stage decode 1, sink 4; sink audit_log 4");
    assert_eq!(count(d, &[]), 5);
    assert_eq!(count(d, &["--stage", "sink"]), 4);
    assert_eq!(count(d, &["--stage", "decode"]), 1);
    assert_eq!(count(d, &["--stage", "decode", "--stage", "sink"]), 5);
    assert_eq!(count(d, &["--stage", "auth"]), 0);
    assert_eq!(count(d, &["--sink", "audit_log"]), 4);
    assert_eq!(count(d, &["--sink", "clickhouse"]), 0);
    assert_eq!(count(d, &["--reason", "NO SPACE LEFT"]), 4);
    assert_eq!(count(d, &["--reason", "no space", "--stage", "decode"]), 0);
    assert_eq!(count(d, &["--since", "1h"]), 5);
    assert_eq!(count(d, &["--until", "1h"]), 0);
    assert_eq!(count(d, &["--since", "2000-01-01T00:00:00Z", "--until", "2100-01-01T00:00:00Z"]), 5);
    assert_eq!(count(d, &["--state", "replayed"]), 0);
    let bad = kcaudit(d, &["dlq", "list", "--since", "last tuesday"]);
    assert!(!bad.status.success() && text(&bad).1.contains("RFC 3339"), "{}", text(&bad).1);

    let records = list(d, &["--stage", "sink"]);
    let sink_ids: Vec<String> = records.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert!(records.iter().all(|r| r["state"] == "pending" && r["record"]["sink"] == "audit_log" && r["record"]["event"]["id"].is_string()));
    let decode_id = list(d, &["--stage", "decode"])[0]["id"].as_str().unwrap().to_string();

    // show: the whole record, pretty; --raw: the stored line; an unknown id is a clear error.
    let o = kcaudit(d, &["dlq", "show", &sink_ids[0]]);
    assert!(o.status.success(), "{}", text(&o).1);
    let shown: Value = serde_json::from_str(&text(&o).0).unwrap();
    assert!(text(&o).0.contains("\n  \"state\": \"pending\""), "pretty-printed");
    assert_eq!(shown["record"]["id"], sink_ids[0].as_str());
    let stored: Vec<String> = std::fs::read_to_string(&dlq_file).unwrap().lines().map(String::from).collect();
    let at = stored.iter().position(|l| l.contains(&sink_ids[0])).unwrap();
    assert_eq!(shown["line"], at as u64 + 1);
    assert!(shown["record"]["reason"].as_str().unwrap().contains("No space left"));
    let o = kcaudit(d, &["dlq", "show", "--raw", &sink_ids[0][..8]]);
    assert_eq!(text(&o).0, format!("{}\n", stored[at]));
    let o = kcaudit(d, &["dlq", "show", "0000-not-an-id"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("unknown dead-letter id \"0000-not-an-id\""), "{}", text(&o).1);

    // purge without --yes: says what would go, does nothing, fails.
    let o = kcaudit(d, &["dlq", "purge", "--stage", "decode"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).0.contains(&decode_id));
    assert!(text(&o).1.contains("1 dead letter (pending): stage decode 1 would be purged"), "{}", text(&o).1);
    assert_eq!(count(d, &[]), 5);
    let o = kcaudit(d, &["dlq", "purge", "--yes"]);
    assert!(!o.status.success() && text(&o).1.contains("--all"), "no selector: refused");
    assert_eq!(count(d, &[]), 5);

    // A dry run shows where each record would go.
    let o = kcaudit(d, &["dlq", "replay", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).0.lines().filter(|l| l.ends_with("-> audit_log")).count(), 5, "{}", text(&o).0);
    assert_eq!(count(d, &[]), 5);

    // Replay before the fix: fails again, exit 2; the old record is superseded by a new one.
    let mut args = vec!["dlq", "replay", "--id", &sink_ids[0]];
    args.extend_from_slice(&broken);
    let o = kcaudit(d, &args);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("1 pending record(s) selected: 0 replayed, 1 failed again"), "{}", text(&o).1);
    let superseded = list(d, &["--state", "superseded"]);
    assert_eq!(superseded.len(), 1);
    let new_id = superseded[0]["history"][0]["superseded_by"][0].as_str().unwrap().to_string();
    let o = kcaudit(d, &["dlq", "show", &new_id]);
    let shown: Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(shown["replay_of"], sink_ids[0].as_str());
    assert_eq!(shown["record"]["event"]["id"], superseded[0]["record"]["event"]["id"]);
    assert_eq!(count(d, &["--stage", "sink"]), 4);

    // The fix: the audit log goes to a writable file. Every refused event arrives exactly once.
    let fixed = ["--set", "sinks.audit_log.path=\"audit.jsonl\""];
    let mut args = vec!["dlq", "replay", "--stage", "sink", "--quiet"];
    args.extend_from_slice(&fixed);
    let o = kcaudit(d, &args);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).1.contains("4 pending record(s) selected: 4 replayed, 0 failed again, 0 failed, 0 skipped"), "{}", text(&o).1);
    let audit = d.join("kcaudit-data/audit.jsonl");
    let mut got: Vec<String> = std::fs::read_to_string(&audit).unwrap().lines().map(|l| serde_json::from_str::<AuditEvent>(l).unwrap().id).collect();
    got.sort();
    assert_eq!(got, vec!["k0", "k1", "k2", "k3"]);
    assert_eq!(count(d, &["--state", "replayed"]), 4);
    assert_eq!(count(d, &["--state", "superseded"]), 1);
    assert_eq!(count(d, &[]), 1, "only the undecodable line is pending");

    // Again: nothing to replay, nothing sent.
    let o = kcaudit(d, &args);
    assert!(o.status.success());
    assert!(text(&o).1.contains("0 pending record(s) selected"), "{}", text(&o).1);
    assert_eq!(std::fs::read_to_string(&audit).unwrap().lines().count(), 4);
    let o = kcaudit(d, &["dlq", "replay", "--id", &sink_ids[1]]);
    assert!(o.status.success());
    assert!(text(&o).1.contains("is already replayed"), "{}", text(&o).1);

    // Purge the undecodable line for good.
    let o = kcaudit(d, &["dlq", "purge", "--id", &decode_id, "--yes"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(count(d, &[]), 0);
    assert_eq!(count(d, &["--state", "purged"]), 1);
    assert_eq!(count(d, &["--state", "all"]), 6);
    let ledger: Vec<Value> = std::fs::read_to_string(d.join("kcaudit-data/dead-letter.jsonl.state.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let actions: Vec<&str> = ledger.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["superseded", "replayed", "replayed", "replayed", "replayed", "purged"]);

    // A corrupt line is reported with its number and skipped; everything else still reads.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&dlq_file).unwrap();
        f.write_all(b"{\"this is\": not json\n").unwrap();
    }
    let o = kcaudit(d, &["dlq", "list", "--state", "all"]);
    assert!(o.status.success());
    assert!(text(&o).1.contains("dead-letter.jsonl line 7: not a dead-letter record"), "{}", text(&o).1);
    assert_eq!(text(&o).0.lines().last().unwrap(), "6 dead letters (all): stage decode 1, sink 5; sink audit_log 5");

    // Compact: resolved records go, the unreadable line stays as it is; the ledger keeps the history.
    let o = kcaudit(d, &["dlq", "compact"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).1.contains("0 kept, 6 removed, 1 unreadable line(s) kept"), "{}", text(&o).1);
    assert_eq!(std::fs::read_to_string(&dlq_file).unwrap(), "{\"this is\": not json\n");
    assert_eq!(count(d, &["--state", "all"]), 0);
}
