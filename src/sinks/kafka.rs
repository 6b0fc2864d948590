//! The Kafka sink: canonical (enriched, flagged) events, or OCSF / ECS records, produced to a topic.
//!
//! - Keyed by `realm/exchanger` (the event's client when it is not an exchange), so one client's
//!   events stay ordered in one partition, and a downstream worker that owns the partition owns the
//!   client's detection state.
//! - Idempotent producer, `acks=all`: a retried send never duplicates within the producer session.
//! - The delivery report of every record drives the acknowledgement: an event counts as delivered only
//!   when the broker has acknowledged all of its records; a retriable producer error becomes a
//!   transient failure (the driver retries with backoff), anything else a dead letter with the
//!   broker's error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::encode::{json_records, JsonFormat};
use super::http_client::SecretOptions;
use super::route::RouteFilter;
use super::{BatchOptions, RetryOptions, SinkError, WriteReport};
use crate::config::Problem;
use crate::event::AuditEvent;

/// `[sinks.kafka]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkOptions {
    pub enabled: bool,
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    pub format: JsonFormat,
    /// Time limit for one record's delivery (`message.timeout.ms`), in milliseconds.
    pub delivery_timeout_ms: u64,
    /// SASL password, from env or file (mechanism and user go in `options`).
    pub sasl_password: Option<SecretOptions>,
    /// Any librdkafka producer property (`compression.type`, `security.protocol`, `linger.ms`, ...).
    /// `enable.idempotence` and `acks` are kcaudit's.
    pub options: BTreeMap<String, String>,
    pub route: RouteFilter,
    pub batch: BatchOptions,
    pub retry: RetryOptions,
}

impl Default for KafkaSinkOptions {
    fn default() -> Self {
        KafkaSinkOptions {
            enabled: false,
            brokers: "127.0.0.1:9092".into(),
            topic: "kcaudit-events".into(),
            format: JsonFormat::Canonical,
            delivery_timeout_ms: 30_000,
            sasl_password: None,
            options: BTreeMap::new(),
            route: RouteFilter::default(),
            batch: BatchOptions { max_events: 1000, max_wait_ms: 20, queue_capacity: 10_000 },
            retry: RetryOptions::default(),
        }
    }
}

impl KafkaSinkOptions {
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        let err = |key: &str, message: String| Problem { key: format!("sinks.kafka.{key}"), message, is_error: true };
        if self.brokers.trim().is_empty() {
            p.push(err("brokers", "list at least one broker".into()));
        }
        if self.topic.is_empty() || self.topic.len() > 249 || !self.topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            p.push(err("topic", format!("{:?} is not a valid Kafka topic name", self.topic)));
        }
        for k in ["enable.idempotence", "acks", "bootstrap.servers"] {
            if self.options.contains_key(k) {
                p.push(err(&format!("options.{k}"), "set by kcaudit".into()));
            }
        }
        if let Some(s) = &self.sasl_password {
            if let Err(e) = s.read() {
                p.push(err("sasl_password", e));
            }
        }
        p
    }
}

/// An idempotent, `acks=all` producer's settings: the user's librdkafka `options` first, then
/// kcaudit's own (which they cannot override).
pub fn producer_config(brokers: &str, options: &BTreeMap<String, String>, sasl_password: Option<&SecretOptions>, delivery_timeout_ms: u64) -> anyhow::Result<ClientConfig> {
    let mut c = ClientConfig::new();
    c.set("compression.type", "lz4").set("linger.ms", "5");
    for (k, v) in options {
        c.set(k, v);
    }
    c.set("bootstrap.servers", brokers).set("enable.idempotence", "true").set("acks", "all").set("message.timeout.ms", delivery_timeout_ms.to_string());
    if let Some(s) = sasl_password {
        c.set("sasl.password", s.read().map_err(anyhow::Error::msg)?);
    }
    Ok(c)
}

/// The partitioning key: realm and exchanger (or client), so one client's events keep their order.
pub fn key(e: &AuditEvent) -> String {
    let realm = e.realm.name.as_deref().or(e.realm.id.as_deref()).unwrap_or("");
    let client = e.token_exchange.as_ref().and_then(|t| t.exchanger.as_deref()).or(e.client_id.as_deref()).unwrap_or("");
    format!("{realm}/{client}")
}

pub struct KafkaSink {
    name: String,
    opts: KafkaSinkOptions,
    producer: FutureProducer,
}

impl KafkaSink {
    pub fn new(name: &str, opts: &KafkaSinkOptions) -> anyhow::Result<KafkaSink> {
        let problems: Vec<String> = opts.problems().iter().filter(|p| p.is_error).map(|p| p.to_string()).collect();
        anyhow::ensure!(problems.is_empty(), "invalid [sinks.kafka]: {}", problems.join("; "));
        let c = producer_config(&opts.brokers, &opts.options, opts.sasl_password.as_ref(), opts.delivery_timeout_ms)?;
        Ok(KafkaSink { name: name.to_string(), opts: opts.clone(), producer: c.create()? })
    }

    async fn write_batch(&mut self, events: &[Arc<AuditEvent>]) -> Result<WriteReport, SinkError> {
        // Enqueue everything first (the producer batches and pipelines), then collect the reports.
        let mut report = WriteReport::default();
        let mut retry = std::collections::BTreeSet::new();
        let mut pending: std::collections::VecDeque<(usize, rdkafka::producer::DeliveryFuture)> = std::collections::VecDeque::new();
        let settle = |i: usize, outcome: Result<(), KafkaError>, report: &mut WriteReport, retry: &mut std::collections::BTreeSet<usize>| {
            if let Err(e) = outcome {
                if transient(&e) {
                    retry.insert(i);
                    report.error = Some(format!("{}: {e}", self.opts.topic));
                } else {
                    report.rejected.push((i, format!("Kafka refused the record for {}: {e}", self.opts.topic)));
                }
            }
        };
        for (i, e) in events.iter().enumerate() {
            let k = key(e);
            for payload in json_records(e, self.opts.format) {
                loop {
                    match self.producer.send_result(FutureRecord::to(&self.opts.topic).key(&k).payload(&payload)) {
                        Ok(f) => {
                            pending.push_back((i, f));
                            break;
                        }
                        // The local queue is full: wait for the oldest record's report, then retry.
                        Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => match pending.pop_front() {
                            Some((j, f)) => settle(j, delivery(f.await), &mut report, &mut retry),
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        },
                        Err((e, _)) => {
                            settle(i, Err(e), &mut report, &mut retry);
                            break;
                        }
                    }
                }
            }
        }
        while let Some((i, f)) = pending.pop_front() {
            settle(i, delivery(f.await), &mut report, &mut retry);
        }
        let rejected: std::collections::BTreeSet<usize> = report.rejected.iter().map(|(i, _)| *i).collect();
        report.retry = retry.into_iter().filter(|i| !rejected.contains(i)).collect();
        if report.retry.len() == events.len() {
            return Err(SinkError::Transient(report.error.unwrap_or_default()));
        }
        Ok(report)
    }
}

fn delivery(r: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, futures::channel::oneshot::Canceled>) -> Result<(), KafkaError> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e),
        Err(_) => Err(KafkaError::Canceled),
    }
}

/// Producer errors worth retrying: the broker is unreachable or busy, or the record timed out.
fn transient(e: &KafkaError) -> bool {
    match e.rdkafka_error_code() {
        Some(c) => !matches!(
            c,
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidRecord
        ),
        None => true,
    }
}

super::routed_sink!(KafkaSink, |s: &KafkaSink| vec![("messaging.system", "kafka".to_string()), ("messaging.destination.name", s.opts.topic.clone())]);
