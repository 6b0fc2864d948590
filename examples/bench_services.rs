//! The real services `scripts/bench.sh` measures against, started privately on loopback with the
//! same code the tests use (`tests/common/services.rs`): a ClickHouse server (Debian's package) with
//! an events table, and a tansu Kafka-protocol broker with a topic filled from an NDJSON file.
//!
//!   bench_services EVENTS.jsonl TOPIC
//!
//! Prints one JSON line (`clickhouse_url`, `clickhouse_table`, `clickhouse_pid`, `kafka_brokers`,
//! `kafka_topic`, `kafka_records`) once everything is ready, then keeps the services up until its
//! standard input closes; then it stops them. Exits non-zero (with the reason) if a service is missing.

#[allow(dead_code)]
#[path = "../tests/common/services.rs"]
mod services;

use std::io::{BufRead, Read};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [events, topic] = args.as_slice() else { anyhow::bail!("usage: bench_services EVENTS.jsonl TOPIC") };
    // Missing services are errors here, never skips.
    std::env::set_var("KCAUDIT_REQUIRE_SERVICES", "1");
    let clickhouse = services::ClickHouseServer::start().ok_or_else(|| anyhow::anyhow!("no ClickHouse server"))?;
    clickhouse.create_legacy_events_table("kcaudit", "events");
    let broker = services::Broker::start().ok_or_else(|| anyhow::anyhow!("no Kafka broker"))?;
    let brokers = broker.bootstrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let lines: Vec<String> = std::io::BufReader::new(std::fs::File::open(events)?).lines().collect::<Result<_, _>>()?;
    let produced = rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
        for r in admin.create_topics(&[NewTopic::new(topic, 2, TopicReplication::Fixed(1))], &AdminOptions::new()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
        }
        let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "5").set("batch.num.messages", "1000").create()?;
        let sends: Vec<_> = lines.iter().map(|v| p.send_result(FutureRecord::<(), str>::to(topic).payload(v))).collect();
        let mut ok = 0u64;
        for s in sends {
            let f = s.map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
            f.await?.map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
            ok += 1;
        }
        anyhow::Ok(ok)
    })?;
    println!(
        "{}",
        serde_json::json!({
            "clickhouse_url": clickhouse.url(),
            "clickhouse_table": "events",
            "clickhouse_pid": clickhouse.pid(),
            "kafka_brokers": brokers,
            "kafka_topic": topic,
            "kafka_records": produced,
        })
    );
    // Serve until the caller closes our stdin (or dies).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(broker);
    drop(clickhouse);
    Ok(())
}
