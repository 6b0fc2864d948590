//! Events per second from a Kafka topic through decode → enrich → detect into the audit-log sink and
//! into a blackhole sink, with the producer and a real broker (tansu, built by `scripts/test.sh`) on
//! this machine. Run: `cargo bench --bench kafka` (N=200000 by default; `KCAUDIT_BENCH_N`). Under
//! `cargo test` it is a 2,000-event smoke run.

#[allow(dead_code)]
#[path = "../tests/common/services.rs"]
mod services;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kcaudit::config::Config;
use kcaudit::dead_letter::DeadLetterStore;
use kcaudit::event::AuditEvent;
use kcaudit::metrics::Metrics;
use kcaudit::pipeline::{Pipeline, SinkSpec};
use kcaudit::sinks::file::{AuditLogOptions, FileSink};
use kcaudit::sinks::{BatchOptions, BoxFuture, RetryOptions, Sink, SinkError, WriteReport};
use kcaudit::sources::kafka::{KafkaSource, KafkaSourceOptions};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Blackhole;

impl Sink for Blackhole {
    fn name(&self) -> &str {
        "blackhole"
    }
    fn write<'a>(&'a mut self, _events: &'a [Arc<AuditEvent>]) -> BoxFuture<'a, Result<WriteReport, SinkError>> {
        Box::pin(async { Ok(WriteReport::default()) })
    }
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
    (f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0)) / 100.0
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: u64 = if bench { std::env::var("KCAUDIT_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000) } else { 2_000 };
    let Some(broker) = services::Broker::start() else { return };
    let brokers = broker.bootstrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut body = Vec::new();
    kcaudit::loadgen::write_file(kcaudit::loadgen::GenOptions::default(), n, &mut body).unwrap();
    let values: Vec<String> = String::from_utf8(body).unwrap().lines().map(String::from).collect();
    println!("| sink | events | seconds | events/s | kcaudit CPU s per 1M events |");
    println!("|---|---:|---:|---:|---:|");
    for (i, sink_name) in ["audit_log", "blackhole"].iter().enumerate() {
        let topic = format!("bench-{i}");
        rt.block_on(async {
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
            for r in admin.create_topics(&[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))], &AdminOptions::new()).await.unwrap() {
                r.unwrap();
            }
            let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "5").create().unwrap();
            let sends: Vec<_> = values.iter().map(|v| p.send_result(FutureRecord::<(), str>::to(&topic).payload(v))).collect();
            for s in sends {
                if let Ok(f) = s {
                    let _ = f.await;
                }
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let sink: Box<dyn Sink> = if *sink_name == "audit_log" { Box::new(FileSink::open("audit_log", &dir.path().join("audit.jsonl"), &AuditLogOptions::default()).unwrap()) } else { Box::new(Blackhole) };
        let config = Config::default();
        let stages = config.stages(None, metrics.clone(), None).unwrap();
        let (count, secs, cpu) = rt.block_on(async {
            let pipeline = Pipeline::start_with(
                vec![SinkSpec { sink, batch: BatchOptions { max_events: 1000, max_wait_ms: 10, queue_capacity: 8192 }, retry: RetryOptions::default() }],
                stages,
                DeadLetterStore::open(&dir.path().join("dlq.jsonl")).unwrap(),
                metrics.clone(),
                &config.dedup,
                &config.pipeline,
            );
            // tansu holds each fetch for the whole fetch.wait.max.ms even with records waiting (a Kafka
            // broker answers at once): at librdkafka's 500 ms default the broker, not kcaudit, is measured.
            let options = [("fetch.wait.max.ms".to_string(), "5".to_string())].into();
            let opts = KafkaSourceOptions { enabled: true, brokers: brokers.clone(), group_id: format!("bench-{i}"), topics: vec![topic.clone()], options, ..Default::default() };
            let source = KafkaSource::new(&opts, &config.decode, metrics.clone()).unwrap();
            let (stop, rx) = tokio::sync::oneshot::channel::<()>();
            let (t0, c0) = (Instant::now(), cpu_seconds());
            let task = tokio::spawn(source.run(pipeline.handle(), async move {
                let _ = rx.await;
            }));
            let delivered = || metrics.delivered.with_label_values(&[sink_name]).get();
            while delivered() < n && t0.elapsed() < Duration::from_secs(600) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
            let count = delivered();
            let _ = stop.send(());
            let _ = task.await;
            pipeline.shutdown().await;
            (count, secs, cpu)
        });
        assert_eq!(count, n, "every event delivered");
        println!("| {sink_name} | {count} | {secs:.2} | {:.0} | {:.1} |", count as f64 / secs, cpu / count as f64 * 1e6);
    }
}
