//! The Kafka source against a real Kafka-protocol broker (tansu, built by `scripts/test.sh`): the
//! shared fixture stream in SnuK87/keycloak-kafka's format goes through the broker, a consumer group
//! and the pipeline into the real audit-log sink, with exact counts and committed offsets.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::services::Broker;
use common::*;
use kcaudit::sinks::file::{AuditLogOptions, FileSink};
use kcaudit::sources::kafka::{KafkaSource, KafkaSourceOptions};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;

fn lines(file: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(file)).unwrap().lines().filter(|l| !l.trim().is_empty()).map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_stream_through_a_real_broker_into_the_audit_log() {
    let Some(broker) = Broker::start() else { return };
    let brokers = broker.bootstrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let topics = [NewTopic::new("keycloak-events", 3, TopicReplication::Fixed(1)), NewTopic::new("keycloak-admin-events", 1, TopicReplication::Fixed(1))];
    for r in admin.create_topics(&topics, &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
    let user = lines("keycloak/keycloak-kafka-events.jsonl");
    let admin_events = lines("keycloak/keycloak-kafka-admin-events.jsonl");
    let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    for (i, v) in user.iter().enumerate() {
        p.send(FutureRecord::<str, str>::to("keycloak-events").payload(v).key("acme").partition(i as i32 % 3), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
    for v in &admin_events {
        p.send(FutureRecord::<(), str>::to("keycloak-admin-events").payload(v), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let opts = AuditLogOptions::default();
    let run = common::sink_run::start_sink(Box::new(FileSink::open("audit_log", &log, &opts).unwrap()), &opts.batch, &opts.retry);
    let source_opts = KafkaSourceOptions { enabled: true, brokers: brokers.clone(), group_id: "kcaudit-it".into(), commit_interval_ms: 100, max_batch_wait_ms: 20, ..Default::default() };
    let source = KafkaSource::new(&source_opts, &Default::default(), run.metrics.clone()).unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(source.run(run.pipeline.handle(), async move {
        let _ = rx.await;
    }));
    let want = user.len() + admin_events.len();
    let read = || kcaudit::sources::replay::read_events(&log).unwrap_or_default();
    let t0 = Instant::now();
    while read().len() < want && t0.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    run.pipeline.shutdown().await;

    let events = read();
    assert_eq!(events.len(), want, "every record once");
    let ids: BTreeSet<String> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), want);
    let k = events.iter().find_map(|e| e.origin.kafka.clone().filter(|k| k.topic == "keycloak-events")).unwrap();
    assert_eq!(k.key.as_deref(), Some("acme"), "the record key is kept as metadata");
    // The group's committed offsets reach the end of every partition.
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "kcaudit-it").create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..3 {
        list.add_partition("keycloak-events", p);
    }
    let got = c.committed_offsets(list, Duration::from_secs(10)).unwrap();
    let committed: i64 = (0..3).map(|p| got.find_partition("keycloak-events", p).and_then(|e| e.offset().to_raw()).unwrap_or(0)).sum();
    assert_eq!(committed, user.len() as i64);
}
