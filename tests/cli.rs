//! The `kcaudit` binary as a user runs it, and real-world samples written by other projects.

mod common;

use std::path::Path;
use std::process::Command;

use chrono::DateTime;
use common::*;
use kcaudit::decode::Format;
use kcaudit::event::{AuditEvent, EventKind};
use serde_json::Value;

fn kcaudit(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kcaudit")).current_dir(dir).args(args).output().expect("kcaudit runs")
}

#[test]
fn replay_prints_events_and_a_report_that_accounts_for_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("keycloak/keycloak-native-events.jsonl");
    let input = input.to_str().unwrap();
    let a = kcaudit(dir.path(), &["replay", "--report", "r.json", input]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let stdout = String::from_utf8(a.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 65);
    for l in stdout.lines() {
        let e: AuditEvent = serde_json::from_str(l).expect("every line is a canonical event");
        assert!(e.received_at.is_none(), "no wall clock in replay output");
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    let c = &report["inputs"][0]["counts"];
    assert_eq!(c["received"], 65);
    assert_eq!(c["accepted"], 65);

    // Deterministic: a second run is byte-identical.
    let b = kcaudit(dir.path(), &["replay", input]);
    assert_eq!(a.stdout, b.stdout);

    // The jboss log: 70 lines = 67 events + 3 skipped, each listed with its line number.
    let log = fixture("keycloak/jboss-logging.log");
    let out = kcaudit(dir.path(), &["replay", "--report", "j.json", "--out", "j.jsonl", log.to_str().unwrap()]);
    assert!(out.status.success());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("j.json")).unwrap()).unwrap();
    let c = &report["inputs"][0]["counts"];
    assert_eq!((c["received"].as_u64(), c["accepted"].as_u64(), c["skipped"].as_u64()), (Some(70), Some(67), Some(3)));
    let skipped: Vec<u64> = report["inputs"][0]["records"].as_array().unwrap().iter().filter(|r| r["status"] == "skipped").map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(skipped, vec![1, 2, 3]);
    assert_eq!(std::fs::read_to_string(dir.path().join("j.jsonl")).unwrap().lines().count(), 67);
}

#[test]
fn replay_reads_gzip_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read(fixture("keycloak/p2inc-webhook.jsonl")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &text).unwrap();
    std::fs::write(dir.path().join("p2.jsonl.gz"), gz.finish().unwrap()).unwrap();
    let out = kcaudit(dir.path(), &["replay", "p2.jsonl.gz"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 67);

    let mut child = Command::new(env!("CARGO_BIN_EXE_kcaudit"))
        .current_dir(dir.path())
        .args(["replay", "--format", "p2inc", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &text).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 67);
}

/// The binary keeps its heap out of transparent huge pages (issue #9: 2 MiB pages kept 10-20 MiB more
/// resident at peak), unless the operator chose with mimalloc's own `MIMALLOC_ALLOW_THP`. Read from
/// the running process's `/proc/<pid>/status` once it runs more than one thread: `main` sets the flag
/// before anything else, and the runtime's threads start after it.
#[cfg(target_os = "linux")]
#[test]
fn the_heap_stays_out_of_transparent_huge_pages_unless_the_operator_asks() {
    let dir = tempfile::tempdir().unwrap();
    let thp_enabled = |allow: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kcaudit"));
        c.current_dir(dir.path()).args(["replay", "--format", "keycloak", "-"]).env_remove("MIMALLOC_ALLOW_THP");
        if let Some(a) = allow {
            c.env("MIMALLOC_ALLOW_THP", a);
        }
        let mut child = c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
        let field = |status: &str, name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
        let started = std::time::Instant::now();
        let status = loop {
            let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
            if field(&status, "Threads:").is_some_and(|n| n != "1") {
                break status;
            }
            assert!(started.elapsed().as_secs() < 30, "kcaudit replay never started its runtime");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        field(&status, "THP_enabled:")
    };
    let Some(default) = thp_enabled(None) else {
        panic!("this kernel's /proc/<pid>/status has no THP_enabled line (Linux 5.0+)");
    };
    assert_eq!(default, "0", "transparent huge pages are off for kcaudit's heap by default");
    assert_eq!(thp_enabled(Some("1")).as_deref(), Some("1"), "MIMALLOC_ALLOW_THP=1 leaves them to mimalloc");
}

/// A file line far over `decode.max_record_bytes` (here 64 MB with no newline, as a corrupt or
/// hostile file has) is rejected with its length and dead-lettered with the part that was kept, the
/// lines around it are replayed, and the line is never held in memory whole: the child's peak RSS
/// (its own, from `wait4`) stays below the line's size.
#[cfg(target_os = "linux")]
#[test]
fn an_endless_line_is_rejected_without_being_held_in_memory() {
    use std::io::Write;
    let good = std::fs::read_to_string(fixture("keycloak/keycloak-native-events.jsonl")).unwrap().lines().take(2).map(str::to_owned).collect::<Vec<_>>();
    let long = 64 * 1024 * 1024;
    // The long line second, and first (where a file that opens a document is told from lines).
    for (at, before) in [(2u64, 1usize), (1, 0)] {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(dir.path().join("in.jsonl")).unwrap());
            for g in &good[..before] {
                writeln!(f, "{g}").unwrap();
            }
            let block = vec![b'x'; 1024 * 1024];
            for _ in 0..long / block.len() {
                f.write_all(&block).unwrap();
            }
            writeln!(f).unwrap();
            for g in &good[before..] {
                writeln!(f, "{g}").unwrap();
            }
        }
        let child = Command::new(env!("CARGO_BIN_EXE_kcaudit"))
            .current_dir(dir.path())
            .args(["replay", "--format", "keycloak", "--set", "decode.max_record_bytes=100000", "in.jsonl"])
            .stdout(std::fs::File::create(dir.path().join("out.jsonl")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("err.txt")).unwrap())
            .spawn()
            .unwrap();
        // Reaped with wait4 for the child's own peak RSS (the children's usage of this test binary is
        // a maximum over every test's children).
        let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
        // SAFETY: wait4 on our own child's pid, with valid pointers to locals.
        assert_eq!(unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) }, child.id() as libc::pid_t);
        let err = std::fs::read_to_string(dir.path().join("err.txt")).unwrap();
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap().lines().count(), 2, "line {at}: the lines around the long one are replayed");
        let peak_mib = usage.ru_maxrss / 1024;
        assert!(peak_mib < 80, "line {at}: peak RSS {peak_mib} MiB: the 64 MiB line was held whole (a debug build idles at ~45)");
        let dlq = kcaudit::dead_letter::DeadLetterStore::read_all(&dir.path().join("kcaudit-data/dead-letter.jsonl")).unwrap();
        assert_eq!(dlq.len(), 1);
        assert_eq!(dlq[0].origin.line, Some(at));
        assert!(dlq[0].reason.contains(&format!("record is {} bytes", long + 1)) && dlq[0].reason.contains("decode.max_record_bytes (100000)"), "{}", dlq[0].reason);
        assert!(dlq[0].raw.as_ref().is_some_and(|r| r.len() <= 100_002), "only the kept part is stored");
    }
}

#[test]
fn replay_fail_on_reject_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.jsonl"), "{\"id\":\"x\",\"type\":\"LOGIN\"\nnot json at all\n").unwrap();
    let out = kcaudit(dir.path(), &["replay", "--fail-on-reject", "--format", "keycloak", "bad.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    let dlq = kcaudit::dead_letter::DeadLetterStore::read_all(&dir.path().join("kcaudit-data/dead-letter.jsonl")).unwrap();
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].origin.line, Some(1));
    assert_eq!(dlq[1].raw.as_deref(), Some("not json at all"));
}

#[test]
fn validate_names_the_typoed_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.toml"), "[webhook]\nlisten = \"127.0.0.1:8787\"\n\n[sinks.audit_log]\nfsnyc = \"batch\"\n").unwrap();
    let out = kcaudit(dir.path(), &["validate", "--config", "k.toml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sinks.audit_log.fsnyc") && err.contains("unknown field"), "{err}");

    let ok = kcaudit(dir.path(), &["validate"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kcaudit.example.toml");
    let run_example = |secret: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kcaudit"));
        c.current_dir(dir.path()).args(["validate", "--config", example.to_str().unwrap()]).env_remove("KCAUDIT_WEBHOOK_SECRET");
        if let Some(s) = secret {
            c.env("KCAUDIT_WEBHOOK_SECRET", s);
        }
        c.output().unwrap()
    };
    let out = run_example(Some("x"));
    assert!(out.status.success(), "the shipped example is valid: {}", String::from_utf8_lossy(&out.stderr));
    let out = run_example(None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("environment variable KCAUDIT_WEBHOOK_SECRET is not set"), "a missing secret is explained");

    let remote_open = kcaudit(dir.path(), &["validate", "--set", "webhook.listen=0.0.0.0:8787"]);
    assert!(!remote_open.status.success());
    assert!(String::from_utf8_lossy(&remote_open.stderr).contains("webhook.auth.mode"));
}

/// A reader that has gone (`kcaudit schema event | head -c 0`) gets nothing more, quietly: no panic
/// ("failed printing to stdout"), the command's own exit status. The pipe's read end is closed before
/// the command starts, so every write meets the closed pipe.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_kcaudit")).args(["schema", "event"]).stdout(writer).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status.code());
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn committed_json_schema_is_current() {
    let out = kcaudit(Path::new(env!("CARGO_MANIFEST_DIR")), &["schema", "event"]);
    let committed = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/audit-event.schema.json")).unwrap();
    assert!(
        String::from_utf8(out.stdout).unwrap() == committed,
        "schemas/audit-event.schema.json is stale: run `cargo run -- schema event > schemas/audit-event.schema.json`"
    );
}

/// Elastic's ingest pipeline parsed these lines too: where both models have a field, they agree.
#[tokio::test]
async fn elastic_expected_parse_agrees() {
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixture("public-samples/jboss-logging/elastic-integrations__keycloak__test-log.log-expected.json")).unwrap()).unwrap();
    let records: Vec<&Value> = expected["expected"].as_array().unwrap().iter().filter(|e| e.get("keycloak").is_some()).collect();
    assert_eq!(records.len(), 17);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("originals.log");
    let lines: Vec<&str> = records.iter().map(|r| r["event"]["original"].as_str().unwrap()).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let (events, rep) = replay(dir.path(), &["decode.log_time_zone=\"America/Chicago\"", "dedup.enabled=false"], &[input], Format::JbossLogging).await;
    assert_eq!(rep.totals.accepted, 17, "{:?}", rep.inputs[0].records);
    for (e, x) in events.iter().zip(&records) {
        let ctx = x["event"]["original"].as_str().unwrap();
        let ts = DateTime::parse_from_rfc3339(x["@timestamp"].as_str().unwrap()).unwrap();
        assert_eq!(e.time.unwrap(), ts, "{ctx}");
        let k = &x["keycloak"];
        let s = |v: &Value| v.as_str().map(str::to_string);
        if e.kind == EventKind::Admin {
            let a = e.admin.as_ref().unwrap();
            assert_eq!(a.operation, s(&k["admin"]["operation"]), "{ctx}");
            assert_eq!(a.resource_type, s(&k["admin"]["resource"]["type"]), "{ctx}");
            assert_eq!(a.resource_path, s(&k["admin"]["resource"]["path"]), "{ctx}");
            assert_eq!(a.auth.realm_id, s(&k["realm"]["id"]), "{ctx}");
            assert_eq!(a.auth.client_uuid, s(&k["client"]["id"]), "{ctx}");
            assert_eq!(a.auth.user_id, s(&x["user"]["id"]), "{ctx}");
        } else {
            assert_eq!(Some(e.event_type.as_str()), s(&x["event"]["action"]).as_deref(), "{ctx}");
            assert_eq!(e.realm.id, s(&k["realm"]["id"]), "{ctx}");
            assert_eq!(e.client_id.as_deref(), s(&k["client"]["id"]).as_deref(), "{ctx}");
            assert_eq!(e.subject.id, s(&x["user"]["id"]), "{ctx}");
            assert_eq!(e.session_id, s(&k["session"]["id"]), "{ctx}");
            if let Some(code) = s(&x["event"]["code"]) {
                assert_eq!(e.error.as_deref(), Some(code.as_str()), "{ctx}");
            }
            if let Some(name) = s(&x["user"]["name"]) {
                assert_eq!(e.subject.username.as_deref(), Some(name.as_str()), "{ctx}");
            }
        }
        if let Some(ip) = s(&x["source"]["ip"]) {
            assert_eq!(e.ip.map(|i| i.to_string()), Some(ip), "{ctx}");
        }
    }
}

/// Every event record in the public samples decodes; non-event lines are skipped and counted.
#[tokio::test]
async fn public_samples_decode() {
    let cases: &[(&str, u64, u64)] = &[
        // (file, events, lines that are not events)
        ("public-samples/jboss-logging/elastic-integrations__keycloak__test-log.log", 15, 15),
        ("public-samples/jboss-logging/elastic-integrations__keycloak__deploy-sample_logs__test-log.log", 5, 5),
        ("public-samples/jboss-logging/elastic-integrations__keycloak__test-ecs-log.log", 0, 18),
        ("public-samples/jboss-logging/kill9zombie-keycloak_jsonlog_eventlistener__README.excerpt.log", 7, 0),
        ("public-samples/jboss-logging/kavahub-springseeds__FAQ.excerpt.log", 3, 0),
        ("public-samples/event-json/aznamier-keycloak-event-listener-rabbitmq__README.admin-event.json", 1, 0),
        ("public-samples/event-json/jessylenne-keycloak-event-listener-http__README.register-event.json", 1, 0),
    ];
    for (file, events, skipped) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (evs, rep) = replay(dir.path(), &[], &[fixture(file)], Format::Auto).await;
        let c = rep.totals;
        assert_eq!((c.accepted, c.skipped, c.rejected), (*events, *skipped, 0), "{file}: {:?}", rep.inputs[0].records);
        assert_eq!(evs.len() as u64, *events);
    }
    // Shapes worth pinning: the Java-class-tagged admin event, the id-less, time-less REGISTER.
    let dir = tempfile::tempdir().unwrap();
    let (evs, _) = replay(dir.path(), &[], &[fixture("public-samples/event-json/aznamier-keycloak-event-listener-rabbitmq__README.admin-event.json")], Format::Auto).await;
    let a = evs[0].admin.as_ref().unwrap();
    assert_eq!((a.operation.as_deref(), a.resource_type.as_deref(), a.auth.realm_id.as_deref()), (Some("UPDATE"), Some("USER"), Some("master")));
    assert!(evs[0].id_derived && !evs[0].details.contains_key("@class"));
    let (evs, _) = replay(dir.path(), &[], &[fixture("public-samples/event-json/jessylenne-keycloak-event-listener-http__README.register-event.json")], Format::Auto).await;
    assert_eq!(evs[0].event_type, "REGISTER");
    assert!(evs[0].time.is_none() && evs[0].warnings.iter().any(|w| w.code == "time_missing"));
    // kill9zombie's lines have a time of day but no date.
    let (evs, _) = replay(dir.path(), &[], &[fixture("public-samples/jboss-logging/kill9zombie-keycloak_jsonlog_eventlistener__README.excerpt.log")], Format::Auto).await;
    assert_eq!(evs.iter().filter(|e| e.kind == EventKind::Admin).count(), 3);
    assert!(evs.iter().all(|e| e.time.is_none()));
    // Datadog's samples hold JSON console lines inside YAML strings.
    let yaml: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(fixture("public-samples/jboss-logging/datadog-integrations-core__keycloak__keycloak_tests.yaml")).unwrap()).unwrap();
    let samples: Vec<String> = yaml["tests"].as_sequence().unwrap().iter().map(|t| t["sample"].as_str().unwrap().to_string()).collect();
    let input = dir.path().join("dd.log");
    std::fs::write(&input, samples.join("\n") + "\n").unwrap();
    let (evs, rep) = replay(dir.path(), &[], &[input], Format::Auto).await;
    assert_eq!((rep.totals.accepted, rep.totals.skipped), (1, 1));
    assert_eq!((evs[0].event_type.as_str(), evs[0].realm.name.as_deref()), ("CODE_TO_TOKEN", Some("master")));
    assert_eq!(evs[0].time_source, kcaudit::event::TimeSource::LogLine);
}

#[test]
fn schema_clickhouse_renders_the_ddl_with_the_configs_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = kcaudit(dir.path(), &["schema", "clickhouse", "--set", "sinks.clickhouse.database=\"audit\"", "--set", "sinks.clickhouse.schema.cluster=\"prod\"", "--set", "sinks.clickhouse.schema.ttl_days=30"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ddl = String::from_utf8(out.stdout).unwrap();
    for object in ["audit.events", "audit.findings", "audit.findings_mv", "audit.exchanger_audience_pairs", "audit.client_hourly", "audit.dead_letters", "audit.kcaudit_migrations"] {
        assert!(ddl.contains(&format!("IF NOT EXISTS {object} ON CLUSTER prod")), "{object} missing:\n{ddl}");
    }
    assert!(ddl.contains("TTL toDateTime(event_time) + INTERVAL 30 DAY"));
    // A TTL past ClickHouse's DateTime range is refused with the reason.
    let out = kcaudit(dir.path(), &["schema", "clickhouse", "--set", "sinks.clickhouse.schema.ttl_days=40000"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sinks.clickhouse.schema.ttl_days"));
}
