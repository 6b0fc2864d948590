//! Detection state per Kafka partition, for the worker role, with a compacted changelog topic.
//!
//! Records reach the workers keyed by realm and exchanger (the edge's Kafka sink), so every event of a
//! client lands in one partition, and the worker that owns a partition owns the detection state of
//! its clients. Each owned partition gets a [`State`] of its own: findings then depend only on the
//! partition's records, never on which worker holds which partition or when a rebalance happened, so
//! one worker and five workers flag the same events.
//!
//! The state is kept in a compacted changelog topic, Kafka Streams style: a record per changed
//! client (and realm) after every batch, written to the changelog partition with the same number as
//! the input partition and keyed by `input-topic NUL kind NUL realm [NUL client]`. Before any input
//! offset is committed the changelog producer is flushed, so a committed offset never runs ahead of
//! the state that includes its records. When a partition is assigned, its changelog partition is read
//! from the beginning into a fresh state before any of its records is processed; when it is revoked
//! (after the in-flight records drained) the changelog is flushed and the state dropped.
//!
//! Why a changelog rather than rebuilding from ClickHouse: it needs nothing but the Kafka the worker
//! already depends on, it restores in one sequential read of a compacted partition (a row per client,
//! not every event ever seen), and it restores the exact state (windows, novelty marks, precursors),
//! where re-running detection over stored events would depend on ClickHouse being enabled and would
//! re-derive state from possibly filtered or expired rows. `docs/scale-out.md` has the whole picture.
//!
//! Records of a partition this instance does not own (left in flight when the partition was revoked)
//! are delivered but not run through detection: the new owner processes them again, and two owners
//! must never write one partition's changelog.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::state::State;
use super::store::{changed_rows, clear_changed, Row, Rows};
use super::Detector;
use crate::metrics::Metrics;

pub use crate::sources::kafka::tracker::Tp;

/// The partition an event was read from, when it came from Kafka.
pub fn partition_of(ev: &crate::event::AuditEvent) -> Option<Tp> {
    ev.origin.kafka.as_ref().map(|k| (k.topic.clone(), k.partition))
}

/// The states of the partitions this instance owns.
#[derive(Default)]
pub struct Partitions {
    pub owned: BTreeMap<Tp, State>,
    /// Where changed rows go after each batch (none in unit tests).
    pub changelog: Option<Arc<Changelog>>,
}

impl Partitions {
    /// Send the changed rows of every owned partition to the changelog (queued; [`Changelog::flush`]
    /// makes them durable).
    pub fn persist(&mut self) {
        let Some(log) = &self.changelog else { return };
        for (tp, state) in self.owned.iter_mut() {
            let dirty = state.realms.values().any(|r| r.clients.values().any(|c| c.dirty));
            if !dirty {
                continue;
            }
            match changed_rows(state, false) {
                Ok(rows) => {
                    log.send(tp, rows);
                    clear_changed(state);
                }
                Err(e) => tracing::error!(error = %e, "Could not encode detection state for the changelog."),
            }
        }
    }
}

impl Detector {
    /// Switch to one state per owned Kafka partition (the worker role).
    pub fn partitioned(mut self, changelog: Option<Arc<Changelog>>) -> Detector {
        self.partitions = Some(Partitions { owned: BTreeMap::new(), changelog });
        self
    }
}

/// Counts delivery failures so a flush can tell whether everything it waited for arrived.
struct Deliveries {
    failed: AtomicU64,
}

struct ChangelogContext(Arc<Deliveries>);

impl ClientContext for ChangelogContext {}

impl ProducerContext for ChangelogContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.0.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "A detection-state changelog record was not delivered; offsets are held until a flush succeeds.");
        }
    }
}

/// The compacted changelog topic of the worker's detection state.
pub struct Changelog {
    topic: String,
    config: ClientConfig,
    producer: ThreadedProducer<ChangelogContext>,
    deliveries: Arc<Deliveries>,
    /// Failures already reported by an earlier flush.
    seen_failed: AtomicU64,
    restore_timeout: Duration,
    metrics: Metrics,
}

fn row_key(input_topic: &str, row: &Row) -> String {
    match row {
        Row::Meta(_) => format!("{input_topic}\u{0}m"),
        Row::Realm(realm, _) => format!("{input_topic}\u{0}r\u{0}{realm}"),
        Row::Client(realm, client, _) => format!("{input_topic}\u{0}c\u{0}{realm}\u{0}{client}"),
    }
}

/// The row a changelog record holds, and the input topic it belongs to.
fn parse_record(key: &[u8], value: &[u8]) -> Option<(String, Row)> {
    let key = std::str::from_utf8(key).ok()?;
    let mut parts = key.split('\u{0}');
    let topic = parts.next()?.to_string();
    let row = match (parts.next()?, parts.next(), parts.next()) {
        ("m", None, None) => Row::Meta(std::str::from_utf8(value).ok()?.parse().ok()?),
        ("r", Some(realm), None) => Row::Realm(realm.to_string(), value.to_vec()),
        ("c", Some(realm), Some(client)) => Row::Client(realm.to_string(), client.to_string(), value.to_vec()),
        _ => return None,
    };
    Some((topic, row))
}

impl Changelog {
    /// `config` carries the brokers and security settings (the Kafka source's, minus its group).
    pub fn new(config: ClientConfig, topic: &str, restore_timeout: Duration, metrics: Metrics) -> anyhow::Result<Changelog> {
        let deliveries = Arc::new(Deliveries { failed: AtomicU64::new(0) });
        let mut pc = config.clone();
        pc.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5").set("compression.type", "lz4");
        let producer: ThreadedProducer<ChangelogContext> = pc.create_with_context(ChangelogContext(deliveries.clone()))?;
        Ok(Changelog { topic: topic.to_string(), config, producer, deliveries, seen_failed: AtomicU64::new(0), restore_timeout, metrics })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Create the changelog topic (compacted) when it does not exist, with at least `partitions`
    /// partitions; an existing topic with fewer partitions is an error (its records could not follow
    /// the input partitions).
    pub fn ensure_topic(&self, partitions: i32) -> anyhow::Result<()> {
        let consumer: BaseConsumer = self.config.create()?;
        let md = consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(10))?;
        let existing = md.topics().iter().find(|t| t.name() == self.topic && t.error().is_none()).map(|t| t.partitions().len() as i32);
        match existing {
            Some(n) if n >= partitions => return Ok(()),
            Some(n) if n > 0 => anyhow::bail!(
                "the detection-state changelog topic {} has {n} partitions but the input has {partitions}; give it at least as many (kafka-topics --alter --partitions {partitions})",
                self.topic
            ),
            _ => {}
        }
        let admin: AdminClient<DefaultClientContext> = self.config.create()?;
        let topic = NewTopic::new(&self.topic, partitions.max(1), TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = block_on_aside(async { Ok(admin.create_topics([&topic], &opts).await?) })?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(topic = %self.topic, partitions, "Created the detection-state changelog topic (compacted)."),
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => anyhow::bail!("cannot create the changelog topic {t}: {e}"),
            }
        }
        Ok(())
    }

    /// Queue rows of one input partition's state.
    pub fn send(&self, tp: &Tp, rows: Vec<Row>) {
        for row in rows {
            let key = row_key(&tp.0, &row);
            let meta;
            let value: &[u8] = match &row {
                Row::Meta(t) => {
                    meta = t.to_string();
                    meta.as_bytes()
                }
                Row::Realm(_, v) | Row::Client(_, _, v) => v,
            };
            let mut record = BaseRecord::to(&self.topic).partition(tp.1).key(&key).payload(value);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => {
                        self.deliveries.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "Could not queue a detection-state changelog record.");
                        break;
                    }
                }
            }
            self.metrics.detect_changelog_records.inc();
        }
    }

    /// Write a marker record to each changelog partition and return the offsets they got.
    fn write_markers(&self, partitions: &BTreeSet<i32>) -> anyhow::Result<BTreeMap<i32, i64>> {
        let producer: rdkafka::producer::FutureProducer = self.config.create()?;
        block_on_aside(async {
            let mut out = BTreeMap::new();
            for p in partitions {
                let record = rdkafka::producer::FutureRecord::to(&self.topic).partition(*p).key("\u{0}marker").payload("restore");
                let d = producer.send(record, self.restore_timeout).await.map_err(|(e, _)| anyhow::anyhow!("cannot write a restore marker to {}/{p}: {e}", self.topic))?;
                out.insert(d.partition, d.offset);
            }
            Ok(out)
        })
    }

    /// Wait until every queued record is acknowledged. False when something was not delivered since
    /// the last flush (the caller then holds its offset commit).
    pub fn flush(&self, timeout: Duration) -> bool {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "Detection-state changelog flush timed out; offsets are held.");
            return false;
        }
        let failed = self.deliveries.failed.load(Ordering::Relaxed);
        let before = self.seen_failed.swap(failed, Ordering::Relaxed);
        failed == before
    }

    /// Read the changelog partitions of `parts` from the beginning into one state per input partition.
    ///
    /// "The end" is fenced with a marker record this call writes to each partition first: everything
    /// before the marker's offset is read, whatever the broker reports as its high watermark (some
    /// Kafka-protocol brokers report batch positions there), and whatever the previous owner flushed
    /// before letting the partition go is included.
    pub fn restore(&self, parts: &[Tp]) -> anyhow::Result<BTreeMap<Tp, (State, usize)>> {
        let started = Instant::now();
        let deadline = started + self.restore_timeout;
        let numbers: BTreeSet<i32> = parts.iter().map(|(_, p)| *p).collect();
        let mut ends = self.write_markers(&numbers)?;
        let mut c = self.config.clone();
        c.set("group.id", "kcaudit-changelog-restore").set("enable.auto.commit", "false").set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer = c.create()?;
        let mut list = TopicPartitionList::new();
        for p in ends.keys() {
            list.add_partition_offset(&self.topic, *p, Offset::Beginning)?;
        }
        let mut rows: BTreeMap<Tp, Rows> = parts.iter().map(|tp| (tp.clone(), Rows::default())).collect();
        if !ends.is_empty() {
            consumer.assign(&list)?;
        }
        while !ends.is_empty() {
            anyhow::ensure!(Instant::now() < deadline, "restoring detection state from {} took longer than {:?}", self.topic, self.restore_timeout);
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(e)) => tracing::warn!(error = %e, "Changelog read error while restoring; retrying."),
                Some(Ok(m)) => {
                    let p = m.partition();
                    // kcaudit writes no tombstones; a record without a value is skipped.
                    if let Some((topic, row)) = m.key().zip(m.payload()).and_then(|(k, v)| parse_record(k, v)) {
                        if let Some(r) = rows.get_mut(&(topic, p)) {
                            r.apply(row);
                        }
                    }
                    if ends.get(&p).is_some_and(|marker| m.offset() >= *marker) {
                        ends.remove(&p);
                    }
                }
            }
        }
        let mut out = BTreeMap::new();
        for (tp, r) in rows {
            let n = r.len();
            let state = r.into_state().map_err(|e| anyhow::anyhow!("changelog {} holds an unreadable row for {}/{}: {e}", self.topic, tp.0, tp.1))?;
            out.insert(tp, (state, n));
        }
        tracing::info!(partitions = ?parts, elapsed_ms = started.elapsed().as_millis() as u64, "Detection state restored from the changelog.");
        Ok(out)
    }
}

/// Run a future on a private runtime in a thread of its own. The rebalance callback that needs this
/// may itself run on a runtime thread, where blocking on a future directly would panic.
fn block_on_aside<T: Send>(f: impl std::future::Future<Output = anyhow::Result<T>> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(f)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a Kafka admin task panicked"))?
    })
}

/// The Kafka source's partition hooks for a partitioned detector: restore on assignment, flush
/// before commits, drop on revocation.
pub struct PartitionedDetection {
    pub detector: Arc<Mutex<Detector>>,
    pub changelog: Arc<Changelog>,
    pub metrics: Metrics,
    /// How long a flush before a commit may wait.
    pub flush_timeout: Duration,
}

impl crate::sources::kafka::PartitionHooks for PartitionedDetection {
    fn assigned(&self, parts: &[Tp]) {
        let max = parts.iter().map(|(_, p)| *p).max().unwrap_or(0);
        if let Err(e) = self.changelog.ensure_topic(max + 1) {
            tracing::error!(error = format!("{e:#}"), "Detection-state changelog unavailable; these partitions start with empty state.");
            self.metrics.detect_restore_failures.inc();
        }
        let restored = match self.changelog.restore(parts) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "Could not restore detection state; these partitions start with empty state (learning again).");
                self.metrics.detect_restore_failures.inc();
                BTreeMap::new()
            }
        };
        let mut d = self.detector.lock().unwrap_or_else(|p| p.into_inner());
        let Some(owned) = d.partitions.as_mut().map(|p| &mut p.owned) else { return };
        for tp in parts {
            let (state, rows) = restored.get(tp).cloned().unwrap_or_default();
            self.metrics.detect_rows_restored.inc_by(rows as u64);
            owned.insert(tp.clone(), state);
        }
    }

    fn flush(&self) -> bool {
        // Rows of the batches processed so far are queued by the pipeline after each batch.
        self.changelog.flush(self.flush_timeout)
    }

    fn revoked(&self, parts: &[Tp]) {
        let mut d = self.detector.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = d.partitions.as_mut() {
            p.persist();
            for tp in parts {
                p.owned.remove(tp);
            }
        }
        drop(d);
        self.changelog.flush(self.flush_timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_round_trip() {
        for row in [Row::Meta(42), Row::Realm("acme".into(), b"{}".to_vec()), Row::Client("acme".into(), "svc-a".into(), b"{\"x\":1}".to_vec())] {
            let key = row_key("kcaudit-ingest", &row);
            let value = match &row {
                Row::Meta(t) => t.to_string().into_bytes(),
                Row::Realm(_, v) | Row::Client(_, _, v) => v.clone(),
            };
            assert_eq!(parse_record(key.as_bytes(), &value), Some(("kcaudit-ingest".to_string(), row)));
        }
        assert_eq!(parse_record(b"t\0x\0y", b""), None);
        assert_eq!(parse_record(b"t\0m", b"not a number"), None);
    }
}
