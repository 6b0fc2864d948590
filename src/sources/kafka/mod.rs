//! The Kafka source: a consumer-group member that decodes each record's value with the same decoders
//! as every other source and commits offsets only for the contiguous prefix of records whose events
//! every sink accepted or dead-lettered ([`tracker`]).
//!
//! - Records are read with `enable.auto.commit=false` and `enable.auto.offset.store=false`: kcaudit,
//!   not librdkafka, decides what is committed, with an explicit offset list (the offset of the next
//!   record to read), never a "store this message" call with its +1 convention.
//! - Prefetch is bounded twice: librdkafka's own queue (`queued.max.messages.kbytes`, 4 MiB here
//!   where librdkafka defaults to 64 MiB; 16 MiB measured 14 MiB more peak RSS for the same rate in
//!   issue #9) and `max_in_flight_records` handed to the pipeline and not yet finished; a large lag
//!   never becomes a large heap. While the source waits at that cap, sinks write partial batches at
//!   once ([`PipelineHandle::waiting_for_acks`]). With the smaller queue, librdkafka must
//!   look again soon after the queue drains (`fetch.queue.backoff.ms` 10 here, 1000 by default),
//!   or a full queue would stall fetching for a second at a time (issue #9 measured half the rate).
//! - On partition revocation (a rebalance) and on shutdown, the consumer waits up to
//!   `revoke_timeout_ms` for the in-flight records of those partitions, commits what is committable
//!   synchronously, and only then lets the partitions go. Whatever is still unfinished is redelivered
//!   to the next owner (at least once; the pipeline's and ClickHouse's dedup by event id absorb it).
//! - A record whose events could neither be delivered nor dead-lettered (the dead-letter store itself
//!   failed) is submitted again after `retry_backoff_ms`, and holds the commit until it succeeds.
//! - Consumer lag per partition is exported as `kcaudit_kafka_consumer_lag{topic,partition}`.

pub mod tracker;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use self::tracker::{OffsetTracker, Tp};
use crate::config::Problem;
use crate::decode::{decode_body, Context, DecodeOptions, Format, Item};
use crate::event::{AuditEvent, KafkaRecord, Origin};
use crate::metrics::Metrics;
use crate::pipeline::{AckWaiter, ItemStatus, PipelineHandle};
use crate::sinks::http_client::SecretOptions;

/// `[kafka]`: consume Keycloak events from Kafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSourceOptions {
    pub enabled: bool,
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group; every kcaudit worker of one deployment uses the same.
    pub group_id: String,
    /// Topics to consume (SnuK87/keycloak-kafka defaults shown).
    pub topics: Vec<String>,
    /// A regular expression of topics instead (librdkafka syntax, must start with `^`).
    pub topic_pattern: Option<String>,
    /// Decoder for the record values (`auto` detects per record).
    pub format: Format,
    /// Records per pipeline batch.
    pub max_batch_records: usize,
    /// Longest wait to fill a batch, in milliseconds.
    pub max_batch_wait_ms: u64,
    /// Records handed to the pipeline and not yet finished before reading pauses. Each costs a few
    /// KiB of memory while in flight; 5,000 already keeps both cores busy.
    pub max_in_flight_records: usize,
    /// How often committable offsets are committed, in milliseconds.
    pub commit_interval_ms: u64,
    /// On rebalance or shutdown: longest wait for in-flight records before committing and letting go.
    pub revoke_timeout_ms: u64,
    /// Wait before resubmitting a record whose events could not even be dead-lettered.
    pub retry_backoff_ms: u64,
    /// How often consumer lag is measured, in milliseconds.
    pub lag_interval_ms: u64,
    /// Worker role: the compacted topic holding the detection state of each input partition (created
    /// on first use with as many partitions as the input; see `docs/scale-out.md`).
    pub state_topic: String,
    /// Worker role: longest time to read a partition's state back when it is assigned, in milliseconds.
    pub state_restore_timeout_ms: u64,
    /// SASL password (for `sasl.mechanism = SCRAM-SHA-512` etc. in `options`), from env or file.
    pub sasl_password: Option<SecretOptions>,
    /// Any librdkafka consumer property (`security.protocol`, `sasl.mechanism`, `sasl.username`,
    /// `ssl.ca.location`, `fetch.max.bytes`, ...). kcaudit's own settings (group, commits, offset store)
    /// cannot be overridden.
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaSourceOptions {
    fn default() -> Self {
        KafkaSourceOptions {
            enabled: false,
            brokers: "127.0.0.1:9092".into(),
            group_id: "kcaudit".into(),
            topics: vec!["keycloak-events".into(), "keycloak-admin-events".into()],
            topic_pattern: None,
            format: Format::Auto,
            max_batch_records: 500,
            max_batch_wait_ms: 50,
            max_in_flight_records: 5_000,
            commit_interval_ms: 1000,
            revoke_timeout_ms: 10_000,
            retry_backoff_ms: 1000,
            lag_interval_ms: 10_000,
            state_topic: "kcaudit-detect-state".into(),
            state_restore_timeout_ms: 60_000,
            sasl_password: None,
            options: BTreeMap::new(),
        }
    }
}

/// Option prefixes that describe the connection (passed on to helper clients such as the worker's
/// changelog producer).
const CONNECTION: &[&str] = &["security.protocol", "sasl.", "ssl.", "ssl_", "client.dns.lookup", "socket.", "broker.address.family", "reconnect.backoff"];

/// librdkafka properties kcaudit sets itself.
const OWN: &[&str] = &["group.id", "enable.auto.commit", "enable.auto.offset.store", "bootstrap.servers"];

impl KafkaSourceOptions {
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        let err = |key: &str, message: String| Problem { key: format!("kafka.{key}"), message, is_error: true };
        if self.brokers.trim().is_empty() {
            p.push(err("brokers", "list at least one broker (host:port)".into()));
        }
        if self.topics.is_empty() && self.topic_pattern.is_none() {
            p.push(err("topics", "name topics or a topic_pattern".into()));
        }
        if let Some(pat) = &self.topic_pattern {
            if !pat.starts_with('^') {
                p.push(err("topic_pattern", "librdkafka treats a subscription as a pattern only when it starts with ^".into()));
            }
        }
        for k in self.options.keys() {
            if OWN.contains(&k.as_str()) {
                p.push(err(&format!("options.{k}"), "set by kcaudit (commits must follow delivery); use the dedicated option".into()));
            }
        }
        if let Some(s) = &self.sasl_password {
            if let Err(e) = s.read() {
                p.push(err("sasl_password", e));
            }
        }
        if self.max_batch_records == 0 || self.max_in_flight_records == 0 {
            p.push(err("max_batch_records", "must be greater than 0".into()));
        }
        p
    }

    /// The librdkafka configuration.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let mut c = ClientConfig::new();
        c.set("queued.max.messages.kbytes", "4096");
        c.set("fetch.queue.backoff.ms", "10");
        c.set("auto.offset.reset", "earliest");
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers).set("group.id", &self.group_id).set("enable.auto.commit", "false").set("enable.auto.offset.store", "false");
        if let Some(s) = &self.sasl_password {
            c.set("sasl.password", s.read().map_err(anyhow::Error::msg)?);
        }
        Ok(c)
    }
}

/// What the owner of per-partition state needs to hear from the consumer: the worker role's
/// partitioned detector (`detect::partitioned`).
pub trait PartitionHooks: Send + Sync {
    /// Partitions were assigned: load their state. Runs before any of their records is read.
    fn assigned(&self, parts: &[Tp]);
    /// Offsets are about to be committed: make durable whatever processing the committed records
    /// did. False holds the commit (it is tried again at the next interval).
    fn flush(&self) -> bool;
    /// Partitions were revoked, after their in-flight records drained and their offsets committed.
    fn revoked(&self, parts: &[Tp]);
}

/// Shared between the consume loop, completion tasks and the rebalance callback.
struct Shared {
    hooks: std::sync::OnceLock<Arc<dyn PartitionHooks>>,
    /// Set when the source runs: the revoke wait tells the sinks not to wait to fill their batches.
    ack_waiter: std::sync::OnceLock<AckWaiter>,
    tracker: Mutex<OffsetTracker>,
    /// Signalled whenever a record finishes (the revoke wait and the in-flight limit wait on it).
    finished: tokio::sync::Notify,
    revoke_timeout: Duration,
    metrics: Metrics,
}

/// The consumer context: drains and commits before partitions are taken away.
struct RebalanceContext {
    shared: Arc<Shared>,
}

impl ClientContext for RebalanceContext {}

fn tps(list: &TopicPartitionList) -> Vec<Tp> {
    list.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
}

impl RebalanceContext {
    /// Wait (bounded) until `parts` have nothing in flight, then commit their points synchronously.
    fn drain_and_commit(&self, consumer: &BaseConsumer<Self>, parts: &[Tp]) {
        let deadline = Instant::now() + self.shared.revoke_timeout;
        let _waiting = self.shared.ack_waiter.get().map(AckWaiter::wait);
        loop {
            let busy: usize = {
                let t = self.shared.tracker.lock().expect("tracker lock");
                parts.iter().map(|tp| t.in_flight(tp)).sum()
            };
            if busy == 0 || Instant::now() >= deadline {
                if busy > 0 {
                    tracing::warn!(records = busy, "Partitions revoked with records still in flight; they will be redelivered to the next owner.");
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let points: Vec<(Tp, i64)> = {
            let mut t = self.shared.tracker.lock().expect("tracker lock");
            let pts = t.commit_points().into_iter().filter(|(tp, _)| parts.contains(tp)).collect();
            t.forget(parts);
            pts
        };
        commit_after_flush(&self.shared, consumer, &points, CommitMode::Sync);
        if let Some(h) = self.shared.hooks.get() {
            h.revoked(parts);
        }
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let parts = tps(list);
            tracing::info!(partitions = ?parts, "Partitions revoked: draining in-flight records and committing.");
            self.drain_and_commit(consumer, &parts);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let parts = tps(list);
            tracing::info!(partitions = ?parts, "Partitions assigned.");
            // Still inside the poll that returns the partitions' first records: their state is in
            // place before any of them reaches the pipeline.
            if let Some(h) = self.shared.hooks.get() {
                h.assigned(&parts);
            }
        }
        // Counted from the rebalance lists, once ready (state restored): asking the consumer for its
        // assignment from inside this callback deadlocks librdkafka.
        match rebalance {
            Rebalance::Assign(list) => self.shared.metrics.kafka_assigned.add(list.count() as i64),
            Rebalance::Revoke(list) => self.shared.metrics.kafka_assigned.sub(list.count() as i64),
            Rebalance::Error(_) => {}
        }
    }
}

/// Commit `points` once the hooks (if any) made the work behind them durable.
fn commit_after_flush(shared: &Shared, consumer: &impl Consumer<RebalanceContext>, points: &[(Tp, i64)], mode: CommitMode) {
    if points.is_empty() {
        return;
    }
    if let Some(h) = shared.hooks.get() {
        if !h.flush() {
            tracing::warn!("Offsets not committed this round: the partition state could not be made durable.");
            return;
        }
    }
    commit(consumer, points, mode);
}

fn commit(consumer: &impl Consumer<RebalanceContext>, points: &[(Tp, i64)], mode: CommitMode) {
    if points.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in points {
        if list.add_partition_offset(topic, *partition, Offset::Offset(*offset)).is_err() {
            return;
        }
    }
    if let Err(e) = consumer.commit(&list, mode) {
        tracing::warn!(error = %e, "Kafka offset commit failed; it is retried with the next commit.");
    }
}

/// One record's place in a pipeline batch: its partition, offset and how many items it produced.
struct RecordSlot {
    tp: Tp,
    offset: i64,
    items: std::ops::Range<usize>,
}

/// The origin of a record; `inputs` keeps each partition's `kafka:<topic>/<partition>` input label, so
/// that records share it instead of formatting their own.
fn origin_of(m: &BorrowedMessage<'_>, inputs: &mut Vec<(String, i32, Arc<str>)>) -> Origin {
    let headers = m
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default())).collect())
        .unwrap_or_default();
    Origin {
        input: match inputs.iter().find(|(t, p, _)| *p == m.partition() && t == m.topic()) {
            Some((_, _, input)) => input.clone(),
            None => {
                let input: Arc<str> = format!("kafka:{}/{}", m.topic(), m.partition()).into();
                inputs.push((m.topic().to_string(), m.partition(), input.clone()));
                input
            }
        },
        kafka: Some(Arc::new(KafkaRecord {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        })),
        ..Default::default()
    }
}

/// A running Kafka source.
pub struct KafkaSource {
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    shared: Arc<Shared>,
    opts: KafkaSourceOptions,
    decode: DecodeOptions,
    tz: chrono_tz::Tz,
}

impl KafkaSource {
    pub fn new(opts: &KafkaSourceOptions, decode: &DecodeOptions, metrics: Metrics) -> anyhow::Result<KafkaSource> {
        let problems: Vec<String> = opts.problems().iter().filter(|p| p.is_error).map(|p| p.to_string()).collect();
        anyhow::ensure!(problems.is_empty(), "invalid [kafka]: {}", problems.join("; "));
        let shared = Arc::new(Shared { hooks: Default::default(), ack_waiter: Default::default(), tracker: Mutex::default(), finished: tokio::sync::Notify::new(), revoke_timeout: Duration::from_millis(opts.revoke_timeout_ms), metrics });
        let consumer: StreamConsumer<RebalanceContext> = opts.client_config()?.create_with_context(RebalanceContext { shared: shared.clone() })?;
        let topics: Vec<&str> = match &opts.topic_pattern {
            Some(p) => vec![p.as_str()],
            None => opts.topics.iter().map(String::as_str).collect(),
        };
        consumer.subscribe(&topics)?;
        Ok(KafkaSource { consumer: Arc::new(consumer), shared, opts: opts.clone(), decode: decode.clone(), tz: decode.time_zone().map_err(anyhow::Error::msg)? })
    }

    /// Tell `hooks` about assignments, commits and revocations (set before [`KafkaSource::run`]).
    pub fn with_hooks(self, hooks: Arc<dyn PartitionHooks>) -> Self {
        let _ = self.shared.hooks.set(hooks);
        self
    }

    /// The librdkafka settings shared by helper clients (brokers, security), without the group.
    pub fn connection_config(opts: &KafkaSourceOptions) -> anyhow::Result<ClientConfig> {
        let mut c = ClientConfig::new();
        for (k, v) in &opts.options {
            if CONNECTION.iter().any(|p| k.starts_with(p)) {
                c.set(k, v);
            }
        }
        c.set("bootstrap.servers", &opts.brokers);
        if let Some(s) = &opts.sasl_password {
            c.set("sasl.password", s.read().map_err(anyhow::Error::msg)?);
        }
        Ok(c)
    }

    /// Consume until `stop` resolves; then drain in-flight records (bounded), commit, and leave the group.
    pub async fn run(self, pipeline: PipelineHandle, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(stop);
        let _ = self.shared.ack_waiter.set(pipeline.ack_waiter());
        let committer = {
            let (consumer, shared, every) = (self.consumer.clone(), self.shared.clone(), Duration::from_millis(self.opts.commit_interval_ms.max(10)));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let points = shared.tracker.lock().expect("tracker lock").commit_points();
                    let (consumer, shared) = (consumer.clone(), shared.clone());
                    // The flush before the commit may block (broker round trips).
                    let _ = tokio::task::spawn_blocking(move || commit_after_flush(&shared, &*consumer, &points, CommitMode::Async)).await;
                }
            })
        };
        let lag = self.spawn_lag_reporter();
        let mut tasks = tokio::task::JoinSet::new();
        let mut inputs = Vec::new();
        loop {
            // Bounded prefetch: wait while too many records are in flight (telling the sinks not to
            // wait for more to fill their batches).
            let mut waiting = None;
            while self.shared.tracker.lock().expect("tracker lock").total_in_flight() >= self.opts.max_in_flight_records {
                waiting.get_or_insert_with(|| pipeline.waiting_for_acks());
                tokio::select! {
                    _ = self.shared.finished.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            drop(waiting);
            let mut items: Vec<Item> = Vec::new();
            let mut slots: Vec<RecordSlot> = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(self.opts.max_batch_wait_ms);
            let stopping = loop {
                let next = tokio::select! {
                    biased;
                    _ = &mut stop => break true,
                    r = tokio::time::timeout_at(deadline, self.consumer.recv()), if slots.len() < self.opts.max_batch_records => r,
                    _ = std::future::ready(()), if slots.len() >= self.opts.max_batch_records => break false,
                };
                match next {
                    Err(_) => break false, // batch window over
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "Kafka consume error; continuing.");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(Ok(m)) => {
                        let origin = origin_of(&m, &mut inputs);
                        let tp = (m.topic().to_string(), m.partition());
                        let start = items.len();
                        let ctx = Context { opts: &self.decode, tz: self.tz, deliveries: None, lines_may_be_noise: false };
                        match m.payload() {
                            Some(bytes) => decode_body(bytes, self.opts.format, &origin, &ctx, &mut items),
                            None => items.push(Item { origin, decoded: crate::decode::Decoded::Skipped("record without a value (tombstone)".into()), raw: None }),
                        }
                        self.shared.tracker.lock().expect("tracker lock").track(&tp, m.offset());
                        slots.push(RecordSlot { tp, offset: m.offset(), items: start..items.len() });
                    }
                }
                if tokio::time::Instant::now() >= deadline && !slots.is_empty() {
                    break false;
                }
            };
            if !slots.is_empty() {
                tasks.spawn(complete(pipeline.clone(), items, slots, self.shared.clone(), Duration::from_millis(self.opts.retry_backoff_ms)));
            }
            while tasks.try_join_next().is_some() {}
            if stopping {
                break;
            }
        }
        // Shutdown: let in-flight records finish (bounded), commit, leave the group.
        let deadline = tokio::time::Instant::now() + self.shared.revoke_timeout;
        let _waiting = pipeline.waiting_for_acks();
        while !tasks.is_empty() {
            if tokio::time::timeout_at(deadline, tasks.join_next()).await.is_err() {
                tracing::warn!(batches = tasks.len(), "Shutting down with Kafka records still in flight; they will be consumed again.");
                break;
            }
        }
        committer.abort();
        lag.abort();
        let points = self.shared.tracker.lock().expect("tracker lock").commit_points();
        let (consumer, shared) = (self.consumer.clone(), self.shared.clone());
        let _ = tokio::task::spawn_blocking(move || commit_after_flush(&shared, &*consumer, &points, CommitMode::Sync)).await;
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Measure lag periodically. The measurement blocks (broker round trips), so it runs on the
    /// blocking pool one round at a time, inside an abortable async loop.
    fn spawn_lag_reporter(&self) -> tokio::task::JoinHandle<()> {
        let (consumer, shared, every) = (self.consumer.clone(), self.shared.clone(), Duration::from_millis(self.opts.lag_interval_ms.max(100)));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let (consumer, shared) = (consumer.clone(), shared.clone());
                let _ = tokio::task::spawn_blocking(move || measure_lag(&consumer, &shared)).await;
            }
        })
    }
}

fn measure_lag(consumer: &StreamConsumer<RebalanceContext>, shared: &Shared) {
    let Ok(assignment) = consumer.assignment() else { return };
    for e in assignment.elements() {
        let (topic, partition) = (e.topic().to_string(), e.partition());
        let Ok((_, high)) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(5)) else { continue };
        let pos = shared.tracker.lock().expect("tracker lock").position(&(topic.clone(), partition));
        let pos = pos.or_else(|| consumer.committed_offsets(assignment.clone(), Duration::from_secs(5)).ok().and_then(|c| c.find_partition(&topic, partition).and_then(|p| p.offset().to_raw())));
        if let Some(pos) = pos {
            shared.metrics.kafka_lag.with_label_values(&[&topic, &partition.to_string()]).set((high - pos).max(0));
        }
    }
}

/// Wait for a batch's report, resubmit records whose events failed outright, then mark the records done.
async fn complete(pipeline: PipelineHandle, items: Vec<Item>, slots: Vec<RecordSlot>, shared: Arc<Shared>, backoff: Duration) {
    // One trace per poll batch (not per record): the pipeline's stages and deliveries are its children.
    let span = tracing::info_span!(
        target: "kcaudit_otel",
        "kafka.batch",
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = %BatchTopics(&slots),
        messaging.batch.message_count = slots.len(),
    );
    tracing::Instrument::instrument(complete_batch(pipeline, items, slots, shared, backoff), span).await
}

/// The distinct topics of a batch, comma-separated (usually one), for the batch span.
struct BatchTopics<'a>(&'a [RecordSlot]);

impl std::fmt::Display for BatchTopics<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut seen: Vec<&str> = Vec::new();
        for s in self.0 {
            if !seen.contains(&s.tp.0.as_str()) {
                seen.push(&s.tp.0);
            }
        }
        f.write_str(&seen.join(","))
    }
}

async fn complete_batch(pipeline: PipelineHandle, items: Vec<Item>, slots: Vec<RecordSlot>, shared: Arc<Shared>, backoff: Duration) {
    let mut pending_items = items;
    let mut pending_slots = slots;
    loop {
        // The pipeline hands back each accepted event (`keep_events`), so a retry is rebuilt from
        // those instead of from a deep copy of every batch made in case one fails (that copy was a
        // sixth of the Kafka path's CPU).
        let report = match pipeline.submit(std::mem::take(&mut pending_items), "kafka", true).await {
            Ok(rx) => rx.await.ok().and_then(Result::ok),
            Err(_) => None,
        };
        let Some(report) = report else {
            // The pipeline is shutting down: leave the records uncommitted (they will be read again).
            return;
        };
        let mut retry_items = Vec::new();
        let mut retry_slots = Vec::new();
        for slot in pending_slots {
            let failed = report.items[slot.items.clone()].iter().any(|i| i.status == ItemStatus::Accepted && !i.failed.is_empty());
            if failed {
                // Only the events that failed go again: the delivered ones would be duplicates now,
                // and rejected records are already in the dead-letter store.
                let start = retry_items.len();
                for r in &report.items[slot.items.clone()] {
                    if let (ItemStatus::Accepted, false, Some(ev)) = (r.status, r.failed.is_empty(), &r.event) {
                        let mut ev = AuditEvent::clone(ev);
                        ev.clear_verdicts();
                        retry_items.push(Item { origin: r.origin.clone(), decoded: crate::decode::Decoded::Event(Arc::new(ev)), raw: None });
                    }
                }
                retry_slots.push(RecordSlot { items: start..retry_items.len(), ..slot });
            } else {
                shared.tracker.lock().expect("tracker lock").done(&slot.tp, slot.offset);
            }
        }
        shared.finished.notify_waiters();
        if retry_slots.is_empty() {
            return;
        }
        tracing::warn!(records = retry_slots.len(), "Kafka records could be neither delivered nor dead-lettered; retrying (their offsets are not committed).");
        tokio::time::sleep(backoff).await;
        pending_items = retry_items;
        pending_slots = retry_slots;
    }
}

#[cfg(test)]
mod tests {
    /// The statically built librdkafka must speak TLS and SASL/SCRAM (`ssl-vendored`): a build
    /// without them would only fail at a customer's secured broker.
    #[test]
    fn librdkafka_is_built_with_tls_and_sasl() {
        let features = rdkafka::config::ClientConfig::new().create_native_config().unwrap().get("builtin.features").unwrap();
        for want in ["ssl", "sasl_scram", "sasl_plain", "sasl_oauthbearer", "zstd", "lz4"] {
            assert!(features.split(',').any(|f| f == want), "librdkafka lacks {want}: {features}");
        }
    }
}
