//! The scale-out topology on a real Kafka-protocol broker (tansu, built by `scripts/test.sh`):
//! webhooks into an *edge*, normalised events through a keyed topic, *workers* that enrich and
//! detect with per-partition state kept in a changelog topic.
//!
//! - The fixture timeline posted to an edge arrives at a worker's audit log, counts exact.
//! - Two workers in one group with a rebalance in the middle flag exactly what one worker flags,
//!   because the new owner of a partition restores its detection state from the changelog.
//! - A worker killed with SIGKILL mid-stream and restarted delivers every event at least once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::services::Broker;
use common::*;
use kcaudit::event::AuditEvent;
use kcaudit::server::Running;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;

async fn create_topic(brokers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    for r in admin.create_topics(&[NewTopic::new(name, partitions, TopicReplication::Fixed(1))], &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
}

/// Every complete line of a JSON-lines audit log, as events.
fn audit_log(path: &Path) -> Vec<AuditEvent> {
    common::complete_lines(path)
        .lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit log line is not an event ({e}): {l}"))).collect()
}

/// The fixture timeline (user and admin events, Keycloak's native JSON) in event-time order.
fn timeline() -> Vec<String> {
    let mut all: Vec<(i64, String)> = ["keycloak/keycloak-native-events.jsonl", "keycloak/keycloak-native-admin-events.jsonl"]
        .iter()
        .flat_map(|f| std::fs::read_to_string(fixture(f)).unwrap().lines().filter(|l| !l.trim().is_empty()).map(String::from).collect::<Vec<_>>())
        .map(|l| (serde_json::from_str::<serde_json::Value>(&l).unwrap()["time"].as_i64().unwrap(), l))
        .collect();
    all.sort_by_key(|(t, _)| *t);
    all.into_iter().map(|(_, l)| l).collect()
}

fn edge_config(dir: &Path, brokers: &str) -> kcaudit::config::Config {
    temp_config(
        dir,
        &[
            "role=\"edge\"",
            "webhook.listen=\"127.0.0.1:0\"",
            "sinks.audit_log.enabled=false",
            "sinks.kafka.enabled=true",
            &format!("sinks.kafka.brokers={brokers:?}"),
            "sinks.kafka.topic=\"kcaudit-ingest\"",
        ],
    )
}

fn worker_sets(brokers: &str, group: &str) -> Vec<String> {
    vec![
        "role=\"worker\"".into(),
        "webhook.listen=\"127.0.0.1:0\"".into(),
        "kafka.enabled=true".into(),
        format!("kafka.brokers={brokers:?}"),
        format!("kafka.group_id={group:?}"),
        "kafka.topics=[\"kcaudit-ingest\"]".into(),
        format!("kafka.state_topic=\"{group}-state\""),
        "kafka.commit_interval_ms=100".into(),
        "kafka.max_batch_wait_ms=20".into(),
        format!("enrich.directory={:?}", fixture("keycloak/admin-api").display().to_string()),
        "detect.learning_period=\"1d\"".into(),
    ]
}

async fn worker(dir: &Path, brokers: &str, group: &str) -> Running {
    let sets = worker_sets(brokers, group);
    let refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    kcaudit::server::start(&temp_config(dir, &refs)).await.expect("worker starts")
}

async fn post(edge: &Running, lines: &[String]) {
    let url = format!("http://{}/v1/events", edge.webhook_addr.unwrap());
    let body = lines.join("\n");
    let r = reqwest::Client::new().post(&url).header("content-type", "application/x-ndjson").body(body).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "edge answered {status}: {text}");
}

/// A gauge or counter value from a running instance's metrics.
fn metric(r: &Running, name: &str) -> f64 {
    r.pipeline.metrics.render().lines().filter(|l| l.starts_with(name) && !l.starts_with('#')).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Findings per event id, in a comparable form.
fn findings(events: &[AuditEvent]) -> BTreeMap<String, Vec<String>> {
    events.iter().map(|e| (e.id.clone(), e.findings.iter().map(|f| format!("{} {} {} {:?}", f.rule, f.severity.name(), f.reason, f.related_event_ids)).collect())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_then_workers_with_a_rebalance_flag_what_a_single_worker_flags() {
    let _ = tracing_subscriber::fmt().with_env_filter("kcaudit=debug").with_test_writer().try_init();
    let Some(broker) = Broker::start() else { return };
    let brokers = broker.bootstrap();
    create_topic(&brokers, "kcaudit-ingest", 4).await;
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let edge = kcaudit::server::start(&edge_config(dirs[0].path(), &brokers)).await.expect("edge starts");
    let events = timeline();
    let half = events.len() / 2;

    // Worker A alone takes the first half of the timeline.
    let a = worker(dirs[1].path(), &brokers, "workers").await;
    let to_worker = reqwest::Client::new().post(format!("http://{}/v1/events", a.webhook_addr.unwrap())).body(events[0].clone()).send().await.unwrap();
    assert_eq!(to_worker.status(), 404, "a worker takes events from Kafka only");
    assert_eq!(reqwest::get(format!("http://{}/healthz", a.webhook_addr.unwrap())).await.unwrap().status(), 200);
    post(&edge, &events[..half]).await;
    let log_a = dirs[1].path().join("audit.jsonl");
    assert!(wait_until(90, || audit_log(&log_a).len() >= half).await, "worker A got {} of {half}", audit_log(&log_a).len());
    assert!(metric(&a, "kcaudit_detect_changelog_records_total") > 0.0, "A wrote its state to the changelog:\n{}", a.pipeline.metrics.render());

    // Worker B joins: the group rebalances; B restores the state of the partitions it takes over.
    let b = worker(dirs[2].path(), &brokers, "workers").await;
    assert!(
        wait_until(90, || metric(&a, "kcaudit_kafka_assigned_partitions") > 0.0 && metric(&b, "kcaudit_kafka_assigned_partitions") > 0.0).await,
        "both workers own partitions (A {}, B {})",
        metric(&a, "kcaudit_kafka_assigned_partitions"),
        metric(&b, "kcaudit_kafka_assigned_partitions")
    );
    assert_eq!(metric(&a, "kcaudit_kafka_assigned_partitions") + metric(&b, "kcaudit_kafka_assigned_partitions"), 4.0);
    assert!(metric(&b, "kcaudit_detect_state_rows_restored_total") > 0.0, "B restored state it had never built itself");
    assert_eq!(metric(&b, "kcaudit_detect_state_restore_failures_total"), 0.0);

    // The second half goes to whichever worker owns each key's partition now.
    post(&edge, &events[half..]).await;
    let log_b = dirs[2].path().join("audit.jsonl");
    let both = || {
        let mut all = audit_log(&log_a);
        all.extend(audit_log(&log_b));
        all
    };
    assert!(wait_until(90, || both().iter().map(|e| e.id.clone()).collect::<BTreeSet<_>>().len() >= events.len()).await);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    edge.stop().await.unwrap();
    let two = both();
    assert!(two.len() >= events.len());
    assert!(two.iter().all(|e| e.origin.kafka.as_ref().is_some_and(|k| k.topic == "kcaudit-ingest")), "workers read the edge's topic");
    assert!(two.iter().all(|e| e.origin.input.starts_with("webhook:")), "the edge's provenance is kept");
    assert!(two.iter().any(|e| e.enrichment.is_some()), "workers enrich");

    // One worker, a group (and changelog) of its own, the whole topic.
    let c = worker(dirs[3].path(), &brokers, "single").await;
    let log_c = dirs[3].path().join("audit.jsonl");
    assert!(wait_until(90, || audit_log(&log_c).len() >= events.len()).await);
    c.stop().await.unwrap();
    let one = audit_log(&log_c);
    assert_eq!(one.len(), events.len(), "exact count through edge and worker");
    assert_eq!(one.iter().map(|e| e.id.clone()).collect::<BTreeSet<_>>().len(), events.len());

    let (f2, f1) = (findings(&two), findings(&one));
    assert_eq!(f2.len(), f1.len());
    assert!(f1.values().any(|f| !f.is_empty()), "the timeline raises findings");
    for (id, want) in &f1 {
        assert_eq!(f2.get(id), Some(want), "event {id}: two workers with a rebalance flagged differently from one");
    }
}

/// Native Keycloak events with fresh ids: `n` of them, cycling through the fixture's user events.
fn generated(n: usize) -> Vec<(String, String, String)> {
    let base: Vec<serde_json::Value> = std::fs::read_to_string(fixture("keycloak/keycloak-native-events.jsonl")).unwrap().lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    (0..n)
        .map(|i| {
            let mut v = base[i % base.len()].clone();
            let id = format!("00000000-0000-4000-8000-{i:012}");
            v["id"] = serde_json::Value::String(id.clone());
            v["time"] = serde_json::json!(v["time"].as_i64().unwrap() + (i / base.len()) as i64 * 1000);
            let key = v["clientId"].as_str().unwrap_or("").to_string();
            (id, key, v.to_string())
        })
        .collect()
}

fn lines_in(path: &Path) -> usize {
    std::fs::read(path).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_and_restarted_delivers_every_event() {
    let Some(broker) = Broker::start() else { return };
    let brokers = broker.bootstrap();
    create_topic(&brokers, "kcaudit-ingest", 3).await;
    let records = generated(12_000);
    // One record per produce batch: tansu 0.6 answers a fetch from an offset inside a stored batch
    // with the *next* batch, so a consumer resuming mid-batch (as after a kill) would never see the
    // rest of that batch. Kafka returns the containing batch; this keeps the test about kcaudit.
    let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "0").set("batch.num.messages", "1").create().unwrap();
    let sends: Vec<_> = records.iter().map(|(_, key, value)| p.send(FutureRecord::to("kcaudit-ingest").key(key).payload(value), Duration::from_secs(30))).collect();
    for s in futures::future::join_all(sends).await {
        s.map_err(|(e, _)| e).unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut sets = worker_sets(&brokers, "kill");
    // Small audit-log batches: many fsynced batches, so the kill lands between and inside them.
    sets.extend(["sinks.audit_log.batch.max_events=200".to_string(), format!("data_dir={:?}", data.display().to_string())]);
    // A killed member keeps its partitions until its session times out (librdkafka's default is 45 s).
    sets.push("kafka.options={ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"1000\" }".into());
    let stderr = dir.path().join("worker.log");
    let log = data.join("audit.jsonl");

    let mut first = spawn_serve(&sets, &stderr);
    let t = Instant::now();
    while lines_in(&log) < 2_000 {
        assert!(t.elapsed() < Duration::from_secs(120), "worker wrote {} lines; its log:\n{}", lines_in(&log), std::fs::read_to_string(&stderr).unwrap_or_default());
        assert!(first.try_wait().unwrap().is_none(), "worker exited early:\n{}", std::fs::read_to_string(&stderr).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let at_kill = lines_in(&log);
    assert!(at_kill < records.len(), "the kill must land mid-stream ({at_kill} of {} written)", records.len());

    let mut second = spawn_serve(&sets, &stderr);
    let want: BTreeSet<&str> = records.iter().map(|(id, _, _)| id.as_str()).collect();
    let t = Instant::now();
    loop {
        let got: BTreeSet<String> = audit_log(&log).into_iter().map(|e| e.id).collect();
        if want.iter().all(|id| got.contains(*id)) {
            break;
        }
        if t.elapsed() > Duration::from_secs(180) {
            let missing: Vec<&&str> = want.iter().filter(|id| !got.contains(**id)).collect();
            let dead = std::fs::read_to_string(data.join("dead-letter.jsonl")).unwrap_or_default();
            panic!(
                "after the restart {} of {} ids; missing e.g. {:?}; {} dead letters (first: {}); at kill {at_kill}; log:\n{}",
                got.len(),
                want.len(),
                &missing[..missing.len().min(5)],
                dead.lines().count(),
                dead.lines().next().unwrap_or("").chars().take(600).collect::<String>(),
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        assert!(second.try_wait().unwrap().is_none(), "restarted worker exited:\n{}", std::fs::read_to_string(&stderr).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Graceful stop: the remaining offsets are committed.
    Command::new("kill").args(["-TERM", &second.id().to_string()]).status().unwrap();
    assert!(second.wait().unwrap().success(), "clean exit after SIGTERM:\n{}", std::fs::read_to_string(&stderr).unwrap_or_default());

    // Every line parses (a torn last line from the kill was cut on restart), every event is there,
    // and the repeats are what at-least-once allows: records after the last commit before the kill.
    let events = audit_log(&log);
    let ids: BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), records.len());
    let repeats = events.len() - ids.len();
    eprintln!("kill -9 at {at_kill} lines: {repeats} events delivered twice (removed downstream by event id)");
    assert!(repeats <= at_kill, "only records read before the kill can come again");
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "kill").create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..3 {
        list.add_partition("kcaudit-ingest", p);
    }
    let got = c.committed_offsets(list, Duration::from_secs(10)).unwrap();
    let committed: i64 = (0..3).map(|p| got.find_partition("kcaudit-ingest", p).and_then(|e| e.offset().to_raw()).unwrap_or(0)).sum();
    assert_eq!(committed, records.len() as i64, "the group's commits reach the end");
}

