//! The Kafka source: records through a consumer group into the pipeline, offsets committed only for
//! the contiguous prefix of finished records. These tests use librdkafka's in-process mock cluster
//! (fault injection); `tests/kafka_broker.rs` runs the same paths against a real broker.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kcaudit::dead_letter::DeadLetterStore;
use kcaudit::event::AuditEvent;
use kcaudit::metrics::Metrics;
use kcaudit::pipeline::{DedupOptions, Pipeline, PipelineOptions, SinkSpec};
use kcaudit::sinks::{BatchOptions, BoxFuture, RetryOptions, Sink, SinkError, WriteReport};
use kcaudit::sources::kafka::{KafkaSource, KafkaSourceOptions};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;

/// A sink that records what it accepted and refuses (transiently) the events in `hold` until
/// `release` is set.
#[derive(Clone, Default)]
struct Probe {
    got: Arc<Mutex<Vec<String>>>,
    hold: Arc<Mutex<HashSet<String>>>,
    release: Arc<AtomicBool>,
}

impl Sink for Probe {
    fn name(&self) -> &str {
        "probe"
    }
    fn write<'a>(&'a mut self, events: &'a [Arc<AuditEvent>]) -> BoxFuture<'a, Result<WriteReport, SinkError>> {
        Box::pin(async move {
            let hold = self.hold.lock().unwrap().clone();
            let released = self.release.load(Ordering::SeqCst);
            let mut report = WriteReport::default();
            for (i, e) in events.iter().enumerate() {
                if !released && hold.contains(&e.id) {
                    report.retry.push(i);
                    report.error = Some("held by the test".into());
                } else {
                    self.got.lock().unwrap().push(e.id.clone());
                }
            }
            Ok(report)
        })
    }
}

async fn produce(brokers: &str, topic: &str, values: &[String], partitions: i32) {
    let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).set("enable.idempotence", "true").create().unwrap();
    for (i, v) in values.iter().enumerate() {
        let part = (i as i32) % partitions;
        p.send(FutureRecord::<(), str>::to(topic).payload(v).partition(part), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
}

fn lines(file: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(file)).unwrap().lines().filter(|l| !l.trim().is_empty()).map(String::from).collect()
}

fn source_options(brokers: &str, topics: &[&str]) -> KafkaSourceOptions {
    KafkaSourceOptions {
        enabled: true,
        brokers: brokers.into(),
        group_id: "kcaudit-test".into(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        max_batch_wait_ms: 20,
        commit_interval_ms: 50,
        lag_interval_ms: 200,
        retry_backoff_ms: 50,
        options: std::env::var("KCAUDIT_KAFKA_DEBUG").ok().map(|d| [("debug".to_string(), d)].into_iter().collect()).unwrap_or_default(),
        ..Default::default()
    }
}

/// Committed offsets of the group for `topic` partitions 0..n.
fn committed(brokers: &str, group: &str, topic: &str, n: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..n {
        list.add_partition(topic, p);
    }
    let got = c.committed_offsets(list, Duration::from_secs(10)).unwrap();
    (0..n).map(|p| got.find_partition(topic, p).and_then(|e| e.offset().to_raw()).unwrap_or(-1)).collect()
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pipeline: Pipeline,
    metrics: Metrics,
}

fn run(opts: &KafkaSourceOptions, sink: Box<dyn Sink>, dir: &std::path::Path) -> Running {
    run_with(opts, sink, BatchOptions { max_events: 1000, max_wait_ms: 200, queue_capacity: 2000 }, dir)
}

fn run_with(opts: &KafkaSourceOptions, sink: Box<dyn Sink>, batch: BatchOptions, dir: &std::path::Path) -> Running {
    let metrics = Metrics::new();
    let pipeline = Pipeline::start(
        vec![SinkSpec { sink, batch, retry: RetryOptions { max_attempts: 1_000_000, initial_backoff_ms: 20, max_backoff_ms: 100 } }],
        DeadLetterStore::open(&dir.join("dlq.jsonl")).unwrap(),
        metrics.clone(),
        &DedupOptions::default(),
        &PipelineOptions::default(),
    );
    let source = KafkaSource::new(opts, &Default::default(), metrics.clone()).unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(source.run(pipeline.handle(), async move {
        let _ = rx.await;
    }));
    Running { stop, task, pipeline, metrics }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_stream_in_keycloak_kafka_format_arrives_exactly_and_offsets_are_committed() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("keycloak-events", 3, 1).unwrap();
    cluster.create_topic("keycloak-admin-events", 1, 1).unwrap();
    let user = lines("keycloak/keycloak-kafka-events.jsonl");
    let admin = lines("keycloak/keycloak-kafka-admin-events.jsonl");
    produce(&brokers, "keycloak-events", &user, 3).await;
    produce(&brokers, "keycloak-admin-events", &admin, 1).await;

    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::default();
    let r = run(&source_options(&brokers, &["keycloak-events", "keycloak-admin-events"]), Box::new(probe.clone()), dir.path());
    let want = user.len() + admin.len();
    assert!(wait_until(60, || probe.got.lock().unwrap().len() >= want).await, "only {} of {want} events", probe.got.lock().unwrap().len());
    let per_partition: Vec<i64> = (0..3).map(|p| user.iter().enumerate().filter(|(i, _)| (*i as i32) % 3 == p).count() as i64).collect();
    assert!(wait_until(30, || committed(&brokers, "kcaudit-test", "keycloak-events", 3) == per_partition).await, "committed {:?}, want {per_partition:?}", committed(&brokers, "kcaudit-test", "keycloak-events", 3));
    r.stop.send(()).unwrap();
    r.task.await.unwrap().unwrap();
    let m = r.metrics.render();
    r.pipeline.shutdown().await;

    let got = probe.got.lock().unwrap().clone();
    assert_eq!(got.len(), want, "exactly once each");
    let ids: BTreeSet<String> = got.into_iter().collect();
    let fixture_ids: BTreeSet<String> = user.iter().chain(&admin).map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, fixture_ids);
    assert_eq!(committed(&brokers, "kcaudit-test", "keycloak-admin-events", 1), vec![admin.len() as i64]);
    assert!(m.contains(r#"kcaudit_records_received_total{source="kafka"} 67"#), "{m}");
}

/// ClickHouse's sink batches 10,000 events for up to a second; the source stops reading at
/// `max_in_flight_records` (5,000) until events are acknowledged. Each batch used to wait out its
/// full timer (5,000 events/s at best). Here the timer is a minute and the cap 20 records: five
/// rounds of waiting would take five minutes, so arriving within 30 s means no round waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_batch_larger_than_the_in_flight_cap_does_not_wait_for_its_timer() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("keycloak-events", 1, 1).unwrap();
    let user: Vec<String> = lines("keycloak/keycloak-kafka-events.jsonl").into_iter().take(60).collect();
    assert_eq!(user.len(), 60);
    produce(&brokers, "keycloak-events", &user, 1).await;

    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::default();
    let opts = KafkaSourceOptions { max_in_flight_records: 20, max_batch_records: 10, ..source_options(&brokers, &["keycloak-events"]) };
    let r = run_with(&opts, Box::new(probe.clone()), BatchOptions { max_events: 10_000, max_wait_ms: 60_000, queue_capacity: 20_000 }, dir.path());
    let want = user.len();
    // All but the last window: once the topic is read to its end, the source is waiting for new
    // records, not for acknowledgements, and the last partial batch waits for its timer as configured.
    assert!(wait_until(30, || probe.got.lock().unwrap().len() >= want - 20).await, "only {} of {want} events within 30 s", probe.got.lock().unwrap().len());
    // Stopping waits for the records in flight (up to `revoke_timeout_ms`, 10 s): that wait, too,
    // has the sink write at once, so every record the source read is delivered before it lets go.
    let t = std::time::Instant::now();
    r.stop.send(()).unwrap();
    r.task.await.unwrap().unwrap();
    assert!(t.elapsed() < Duration::from_secs(9), "stopping took {:?}", t.elapsed());
    let m = r.metrics.render();
    let read: usize = m.lines().find_map(|l| l.strip_prefix(r#"kcaudit_records_received_total{source="kafka"} "#)).and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("{m}"));
    assert!(read >= want - 20, "read {read}");
    assert_eq!(probe.got.lock().unwrap().len(), read, "every record read was delivered before the source let go");
    r.pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_record_holds_the_commit_while_the_100_after_it_succeed() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("events", 1, 1).unwrap();
    let mut body = Vec::new();
    kcaudit::loadgen::write_file(kcaudit::loadgen::GenOptions::default(), 200, &mut body).unwrap();
    let values: Vec<String> = String::from_utf8(body).unwrap().lines().map(String::from).collect();
    let n = 50usize;
    let held_id = serde_json::from_str::<serde_json::Value>(&values[n]).unwrap()["id"].as_str().unwrap().to_string();
    produce(&brokers, "events", &values[..n + 101], 1).await;

    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::default();
    probe.hold.lock().unwrap().insert(held_id.clone());
    // One pipeline batch and one sink write hold N..N+100, so the sink can refuse N while it
    // accepts the 100 after it (the sink driver retries the refused event in place).
    let mut opts = source_options(&brokers, &["events"]);
    opts.max_batch_records = 1000;
    opts.max_batch_wait_ms = 500;
    let r = run(&opts, Box::new(probe.clone()), dir.path());
    // Everything but record N arrives...
    assert!(wait_until(60, || probe.got.lock().unwrap().len() >= n + 100).await);
    // ...and for a while the commit stays at N, however often the committer runs.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = committed(&brokers, "kcaudit-test", "events", 1)[0];
        assert!(c <= n as i64, "committed {c} passed the pending record {n}");
    }
    // (The records before N share N's pipeline batch here, whose report waits for N: they are
    // committed together once N is through. The guarantee is the bound above.)
    // Release: N is delivered, and the commit moves to the end.
    probe.release.store(true, Ordering::SeqCst);
    assert!(wait_until(30, || committed(&brokers, "kcaudit-test", "events", 1) == vec![(n + 101) as i64]).await);
    r.stop.send(()).unwrap();
    r.task.await.unwrap().unwrap();
    r.pipeline.shutdown().await;
    let got = probe.got.lock().unwrap().clone();
    assert_eq!(got.iter().filter(|id| **id == held_id).count(), 1, "N delivered once");
    assert_eq!(got.len(), n + 101, "nothing skipped, nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_produces_every_event_keyed_by_realm_and_exchanger() {
    use kcaudit::sinks::kafka::{key, KafkaSink, KafkaSinkOptions};
    use rdkafka::consumer::StreamConsumer;
    use rdkafka::Message;
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("kcaudit-events", 3, 1).unwrap();
    let events = common::clickhouse::fixture_events().await;
    let o = KafkaSinkOptions { enabled: true, brokers: brokers.clone(), ..Default::default() };
    let run = common::sink_run::start_sink(Box::new(KafkaSink::new("kafka", &o).unwrap()), &o.batch, &o.retry);
    let items = common::sink_run::items_of(&events);
    let report = run.push(items).await;
    assert_eq!(common::sink_run::fates(&[report]), (67, 67, 0, 0), "acknowledged only after the broker's delivery reports");
    run.pipeline.shutdown().await;

    let c: StreamConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "check").set("auto.offset.reset", "earliest").create().unwrap();
    c.subscribe(&["kcaudit-events"]).unwrap();
    let mut got: Vec<(String, i32, AuditEvent)> = Vec::new();
    while got.len() < events.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv()).await.expect("records arrive").unwrap();
        let e: AuditEvent = serde_json::from_slice(m.payload().unwrap()).unwrap();
        got.push((String::from_utf8(m.key().unwrap().to_vec()).unwrap(), m.partition(), e));
    }
    let mut by_key: std::collections::HashMap<String, i32> = Default::default();
    for (k, p, e) in &got {
        assert_eq!(k, &key(e));
        assert_eq!(*by_key.entry(k.clone()).or_insert(*p), *p, "one key, one partition: {k}");
        assert!(events.contains(e), "the event as kcaudit holds it");
    }
    assert!(by_key.contains_key("acme-prod/api-gateway"), "{:?}", by_key.keys());
    let ids: BTreeSet<&str> = got.iter().map(|(_, _, e)| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_broker_goes_down_and_comes_back_the_consumer_resumes_by_itself() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("events", 2, 1).unwrap();
    let mut body = Vec::new();
    kcaudit::loadgen::write_file(kcaudit::loadgen::GenOptions::default(), 400, &mut body).unwrap();
    let values: Vec<String> = String::from_utf8(body).unwrap().lines().map(String::from).collect();
    produce(&brokers, "events", &values[..200], 2).await;

    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::default();
    let r = run(&source_options(&brokers, &["events"]), Box::new(probe.clone()), dir.path());
    assert!(wait_until(60, || probe.got.lock().unwrap().len() >= 200).await, "first half consumed");
    assert!(wait_until(30, || committed(&brokers, "kcaudit-test", "events", 2).iter().sum::<i64>() == 200).await);

    // The broker goes away for a while: fetches and commits fail, the consumer keeps trying.
    cluster.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.broker_up(1).unwrap();
    // Nobody restarts kcaudit: new records flow and commits resume on their own.
    produce(&brokers, "events", &values[200..], 2).await;
    assert!(wait_until(90, || probe.got.lock().unwrap().len() >= 400).await, "the second half arrived after the outage: {}", probe.got.lock().unwrap().len());
    assert!(wait_until(30, || committed(&brokers, "kcaudit-test", "events", 2).iter().sum::<i64>() == 400).await, "commits resumed");
    r.stop.send(()).unwrap();
    r.task.await.unwrap().unwrap();
    r.pipeline.shutdown().await;
    let got = probe.got.lock().unwrap().clone();
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 400, "every record delivered");
    assert_eq!(r.metrics.accepted.get() + r.metrics.duplicates.with_label_values(&["false"]).get(), r.metrics.received.with_label_values(&["kafka"]).get());
}

/// A sink that refuses every event permanently (each one is dead-lettered).
struct Refuser;

impl Sink for Refuser {
    fn name(&self) -> &str {
        "refuser"
    }
    fn write<'a>(&'a mut self, events: &'a [Arc<AuditEvent>]) -> BoxFuture<'a, Result<WriteReport, SinkError>> {
        Box::pin(async move { Ok(WriteReport { rejected: (0..events.len()).map(|i| (i, "refused by the test".to_string())).collect(), ..Default::default() }) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_published_to_the_dead_letter_topic_as_well_as_the_file() {
    use kcaudit::dead_letter::DeadLetterTopicOptions;
    use rdkafka::consumer::StreamConsumer;
    use rdkafka::Message;
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("kcaudit-dead-letters", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dlq_path = dir.path().join("dlq.jsonl");
    let topic = DeadLetterTopicOptions { enabled: true, brokers: brokers.clone(), ..Default::default() };
    let dlq = DeadLetterStore::open(&dlq_path).unwrap().with_topic(&topic).unwrap();
    let pipeline = Pipeline::start(
        vec![SinkSpec { sink: Box::new(Refuser), batch: BatchOptions::default(), retry: RetryOptions::default() }],
        dlq,
        Metrics::new(),
        &DedupOptions::default(),
        &PipelineOptions::default(),
    );
    let events = common::clickhouse::fixture_events().await;
    let mut body = Vec::new();
    for e in &events[..10] {
        serde_json::to_writer(&mut body, e).unwrap();
        body.push(b'\n');
    }
    body.extend_from_slice(b"{not json\n");
    let items = decode(&body, kcaudit::decode::Format::Auto);
    let report = pipeline.handle().submit(items, "test", false).await.unwrap().await.unwrap().unwrap();
    let c = report.counts();
    assert_eq!((c.accepted, c.dead_lettered, c.rejected, c.failed), (10, 10, 1, 0));
    pipeline.shutdown().await;

    let file = DeadLetterStore::read_all(&dlq_path).unwrap();
    assert_eq!(file.len(), 11);
    let consumer: StreamConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "dlq-check").set("auto.offset.reset", "earliest").create().unwrap();
    consumer.subscribe(&["kcaudit-dead-letters"]).unwrap();
    let mut got = Vec::new();
    while got.len() < 11 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("dead letters arrive on the topic").unwrap();
        let d: kcaudit::dead_letter::DeadLetter = serde_json::from_slice(m.payload().unwrap()).unwrap();
        if let Some(e) = &d.event {
            assert_eq!(m.key(), Some(e.id.as_bytes()), "keyed by event id");
        }
        got.push(d);
    }
    let reasons: BTreeSet<String> = got.iter().map(|d| d.reason.clone()).collect();
    assert!(reasons.iter().any(|r| r.contains("refused by the test")) && reasons.len() == 2, "{reasons:?}");
    let ids = |v: &[kcaudit::dead_letter::DeadLetter]| v.iter().filter_map(|d| d.event.as_ref().map(|e| e.id.clone())).collect::<BTreeSet<_>>();
    assert_eq!(ids(&got), ids(&file), "the topic holds what the file holds");
}
