//! Sinks and the driver that runs them.
//!
//! A sink only knows how to write a batch of events to its destination and how to classify a failure
//! (transient: retry; permanent: dead-letter). Everything else every sink needs the same way lives in
//! [`run_sink`]: a bounded input channel (backpressure), batching by count and time, retries with
//! exponential backoff and jitter, the dead-letter hand-off with the destination's error, metrics, and
//! resolving each event's acknowledgement. Later sinks (ClickHouse, Kafka, SIEMs) implement [`Sink`]
//! and get all of that for free.

pub mod blackhole;
pub mod clickhouse;
pub mod elasticsearch;
pub mod encode;
pub mod file;
pub mod http;
pub mod http_client;
pub mod kafka;
pub mod route;
pub mod sentinel;
pub mod splunk_hec;
pub mod stdout;
pub mod syslog;
pub mod text;
pub mod tls;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::dead_letter::{DeadLetter, DeadLetterStore, Stage};
use crate::event::AuditEvent;
use crate::metrics::Metrics;
use crate::pipeline::ack::{AckToken, SinkResult};
use crate::telemetry::TraceParent;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Cut a batch into requests: `sizes` (each event's encoded size) into consecutive ranges of at most
/// `max_rows` events and, unless a single event is larger (it then goes alone), `max_bytes` bytes.
/// Shared by every sink that splits batches (ClickHouse inserts, HEC and `_bulk` requests).
pub fn cut(sizes: &[usize], max_rows: usize, max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0usize, 0usize);
    for (i, s) in sizes.iter().enumerate() {
        let rows = i - start;
        if rows > 0 && (rows >= max_rows.max(1) || bytes + s > max_bytes) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += s;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// How a write failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying (connection refused, timeout, disk momentarily full, 5xx, ...).
    #[error("transient failure: {0}")]
    Transient(String),
    /// Retrying cannot help (authentication refused, schema mismatch, ...): dead-letter the batch.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

/// Per-event results of a batch write that partly succeeded (e.g. Elasticsearch `_bulk` items).
#[derive(Debug, Default, Clone)]
pub struct WriteReport {
    /// Indexes (into the batch) refused permanently, with the destination's reason.
    pub rejected: Vec<(usize, String)>,
    /// Indexes that failed transiently and should be retried.
    pub retry: Vec<usize>,
    /// The destination's error behind `retry` (for logs and, if retries run out, the dead letter).
    pub error: Option<String>,
}

/// A destination for canonical events.
pub trait Sink: Send + 'static {
    /// Short name used in metrics, dead letters and logs (`audit_log`, `stdout`, ...).
    fn name(&self) -> &str;
    /// Write a batch durably (as durable as the sink promises). `Ok` means every event not listed in
    /// the report is accepted by the destination.
    fn write<'a>(&'a mut self, events: &'a [Arc<AuditEvent>]) -> BoxFuture<'a, Result<WriteReport, SinkError>>;
    /// Whether this sink takes `event` at all (its route). Events it does not take are resolved at
    /// once for this sink and counted as filtered.
    fn accepts(&self, _event: &AuditEvent) -> bool {
        true
    }
    /// OpenTelemetry attributes naming the destination on delivery spans (`db.system.name`,
    /// `messaging.system`, `server.address`, ...): constants only, never credentials.
    fn otel_attributes(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Called once when the pipeline shuts down, after the last batch.
    fn close<'a>(&'a mut self) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

/// `impl Sink` for a sink that has a `name: String`, options with a `route: RouteFilter` in
/// `self.opts`, and an `async fn write_batch(&mut self, &[Arc<AuditEvent>])`: the shape of every
/// network sink, so the trait wiring is written once.
macro_rules! routed_sink {
    ($t:ty) => {
        $crate::sinks::routed_sink!($t, |_s: &$t| Vec::new());
    };
    // With the OpenTelemetry attributes of its delivery spans.
    ($t:ty, $otel:expr) => {
        impl $crate::sinks::Sink for $t {
            fn otel_attributes(&self) -> Vec<(&'static str, String)> {
                ($otel)(self)
            }

            fn name(&self) -> &str {
                &self.name
            }

            fn accepts(&self, event: &$crate::event::AuditEvent) -> bool {
                self.opts.route.matches(event)
            }

            fn write<'a>(
                &'a mut self,
                events: &'a [std::sync::Arc<$crate::event::AuditEvent>],
            ) -> $crate::sinks::BoxFuture<'a, Result<$crate::sinks::WriteReport, $crate::sinks::SinkError>> {
                Box::pin(self.write_batch(events))
            }
        }
    };
}
pub(crate) use routed_sink;

/// Batching options shared by all sinks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchOptions {
    /// Most events per write.
    pub max_events: usize,
    /// Longest a partial batch waits for more events, in milliseconds. 0 (the default of the local
    /// sinks: audit log, stdout, blackhole) writes whatever is queued at once: while one write (and
    /// its fsync) is in progress the next batch gathers, so batches grow with the load and a lone
    /// event never waits for a timer. Network sinks default to a wait that suits their receivers
    /// (ClickHouse wants few large inserts).
    pub max_wait_ms: u64,
    /// Capacity of the sink's input queue in events; when full, the pipeline waits (backpressure).
    pub queue_capacity: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { max_events: 1000, max_wait_ms: 0, queue_capacity: 4096 }
    }
}

/// Retry options shared by all sinks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryOptions {
    /// Attempts per batch before the remaining events are dead-lettered (1 = no retry).
    pub max_attempts: u32,
    /// First backoff, in milliseconds; doubles each attempt, with ±50 % jitter.
    pub initial_backoff_ms: u64,
    /// Longest backoff, in milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions { max_attempts: 8, initial_backoff_ms: 100, max_backoff_ms: 30_000 }
    }
}

impl RetryOptions {
    /// Backoff before attempt `attempt` (1-based count of failures so far), with jitter so many
    /// instances do not retry in lock-step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.initial_backoff_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30)).min(self.max_backoff_ms);
        let jitter = rand::thread_rng().gen_range(0.5..1.5);
        Duration::from_millis(((base as f64) * jitter) as u64)
    }
}

/// One event on its way to a sink.
pub struct SinkItem {
    pub event: Arc<AuditEvent>,
    pub ack: AckToken,
    /// The span of the request or batch the event came in with (untraced: no allocation).
    pub trace: TraceParent,
}

/// Start a sink's driver task; returns the sender the pipeline feeds and the task handle (which ends
/// after the sender is dropped and the last batch is written).
pub fn spawn_sink(
    sink: Box<dyn Sink>,
    batch: BatchOptions,
    retry: RetryOptions,
    upstream_waiting: watch::Receiver<usize>,
    dlq: DeadLetterStore,
    metrics: Metrics,
) -> (mpsc::Sender<SinkItem>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(batch.queue_capacity.max(1));
    let handle = tokio::spawn(run_sink(sink, rx, batch, retry, upstream_waiting, dlq, metrics));
    (tx, handle)
}

async fn run_sink(
    mut sink: Box<dyn Sink>,
    mut rx: mpsc::Receiver<SinkItem>,
    batch: BatchOptions,
    retry: RetryOptions,
    mut upstream_waiting: watch::Receiver<usize>,
    dlq: DeadLetterStore,
    metrics: Metrics,
) {
    let name = sink.name().to_string();
    let max_events = batch.max_events.max(1);
    let mut items: Vec<SinkItem> = Vec::with_capacity(max_events);
    // Events outside the sink's route are done for this sink as soon as they arrive.
    let take = |sink: &dyn Sink, it: SinkItem, items: &mut Vec<SinkItem>| {
        if sink.accepts(&it.event) {
            items.push(it);
        } else {
            metrics.filtered.with_label_values(&[sink.name()]).inc();
            it.ack.resolve(SinkResult::Delivered);
        }
    };
    while let Some(first) = rx.recv().await {
        take(&*sink, first, &mut items);
        if items.is_empty() {
            continue;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(batch.max_wait_ms);
        while items.len() < max_events {
            match rx.try_recv() {
                Ok(it) => take(&*sink, it, &mut items),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                // No wait configured: write what is queued now. (A zero timeout is not free: tokio
                // rounds the deadline up to its next millisecond tick, which put up to 1 ms on every
                // single-event request.)
                Err(mpsc::error::TryRecvError::Empty) if batch.max_wait_ms == 0 => break,
                // A source that reads nothing more until these events are acknowledged: waiting
                // for more cannot fill the batch (see `PipelineHandle::waiting_for_acks`).
                Err(mpsc::error::TryRecvError::Empty) if *upstream_waiting.borrow() > 0 => break,
                Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                    r = tokio::time::timeout_at(deadline, rx.recv()) => match r {
                        Ok(Some(it)) => take(&*sink, it, &mut items),
                        _ => break,
                    },
                    // Also when the pipeline is gone (an error): then nothing more comes either.
                    _ = upstream_waiting.wait_for(|n| *n > 0) => break,
                },
            }
        }
        deliver(&mut *sink, &name, std::mem::take(&mut items), &retry, &dlq, &metrics).await;
    }
    if let Err(e) = sink.close().await {
        tracing::error!(sink = %name, error = %e, "Sink failed to close cleanly.");
    }
}

/// The delivery spans of one batch: one per distinct originating request or batch among its events,
/// each a child of that origin and each covering the whole write (retries and dead-lettering
/// included). A batch mixes events of many requests; one span per origin keeps every request's trace
/// complete on its own (the alternative, one span per batch with links, leaves each request's tree
/// without its delivery). The count is bounded by the batch size and is usually one or a few; an
/// untraced batch creates nothing.
struct DeliverySpans(Vec<(opentelemetry::trace::SpanId, tracing::Span)>);

impl DeliverySpans {
    fn start(sink: &dyn Sink, name: &str, items: &[SinkItem]) -> DeliverySpans {
        let mut spans: Vec<(opentelemetry::trace::SpanId, tracing::Span)> = Vec::new();
        for it in items {
            let Some(id) = it.trace.span_id() else { continue };
            if spans.iter().any(|(s, _)| *s == id) {
                continue;
            }
            let span = crate::child_span!(
                &it.trace,
                "sink.deliver",
                otel.name = %format_args!("deliver {name}"),
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                kcaudit.sink = name,
                kcaudit.events = items.iter().filter(|i| i.trace.span_id() == Some(id)).count(),
                kcaudit.batch_events = items.len(),
                kcaudit.attempts = tracing::field::Empty,
                kcaudit.dead_lettered = tracing::field::Empty,
                error.type = tracing::field::Empty,
            );
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            for (k, v) in sink.otel_attributes() {
                span.set_attribute(k, v);
            }
            spans.push((id, span));
        }
        DeliverySpans(spans)
    }

    fn finish(self, attempts: u32, dead_lettered: usize, error: Option<&'static str>) {
        for (_, s) in self.0 {
            s.record("kcaudit.attempts", attempts);
            s.record("kcaudit.dead_lettered", dead_lettered);
            if let Some(e) = error {
                s.record("error.type", e);
                s.record("otel.status_code", "ERROR");
            }
        }
    }
}

/// Write one batch with retries; every item's token is resolved before this returns.
async fn deliver(sink: &mut dyn Sink, name: &str, items: Vec<SinkItem>, retry: &RetryOptions, dlq: &DeadLetterStore, metrics: &Metrics) {
    let spans = DeliverySpans::start(sink, name, &items);
    let mut pending: Vec<SinkItem> = items;
    let mut refused: Vec<(SinkItem, String)> = Vec::new();
    let mut attempt = 0u32;
    while !pending.is_empty() {
        attempt += 1;
        let events: Vec<Arc<AuditEvent>> = pending.iter().map(|i| i.event.clone()).collect();
        let outcome = sink.write(&events).await;
        let (permanent, transient, last_error): (Vec<(usize, String)>, Vec<usize>, String) = match outcome {
            Ok(r) => (r.rejected, r.retry, r.error.unwrap_or_default()),
            Err(SinkError::Permanent(e)) => ((0..pending.len()).map(|i| (i, e.clone())).collect(), vec![], e),
            Err(SinkError::Transient(e)) => (vec![], (0..pending.len()).collect(), e),
        };
        if !permanent.is_empty() {
            metrics.sink_errors.with_label_values(&[name, "permanent"]).inc();
        }
        if !transient.is_empty() {
            metrics.sink_errors.with_label_values(&[name, "transient"]).inc();
        }
        // Split pending into delivered / refused / retry, by index.
        let mut fate = vec![0u8; pending.len()]; // 0 delivered, 1 refused, 2 retry
        let mut reasons: Vec<Option<String>> = vec![None; pending.len()];
        for (i, r) in permanent {
            if let Some(f) = fate.get_mut(i) {
                *f = 1;
                reasons[i] = Some(r);
            }
        }
        for i in transient {
            if let Some(f) = fate.get_mut(i) {
                if *f == 0 {
                    *f = 2;
                }
            }
        }
        let mut next = Vec::new();
        let give_up = attempt >= retry.max_attempts.max(1);
        // One label lookup per batch, not per event (a hash and a lock each).
        let delivered = metrics.delivered.with_label_values(&[name]);
        for (i, item) in pending.into_iter().enumerate() {
            match fate[i] {
                0 => {
                    delivered.inc();
                    item.ack.resolve(SinkResult::Delivered);
                }
                1 => refused.push((item, reasons[i].take().unwrap_or_default())),
                _ if give_up => {
                    let why = if last_error.is_empty() { "transient failure".to_string() } else { last_error.clone() };
                    refused.push((item, format!("gave up after {attempt} attempts: {why}")));
                }
                _ => next.push(item),
            }
        }
        pending = next;
        if !pending.is_empty() {
            metrics.sink_retries.with_label_values(&[name]).inc();
            let wait = retry.backoff(attempt);
            tracing::warn!(sink = %name, attempt, retry_in_ms = wait.as_millis() as u64, error = %last_error, events = pending.len(), "Sink write failed; retrying.");
            tokio::time::sleep(wait).await;
        }
    }
    if refused.is_empty() {
        spans.finish(attempt, 0, None);
        return;
    }
    let records: Vec<DeadLetter> = refused
        .iter()
        .map(|(item, reason)| {
            let mut d = DeadLetter::new(Stage::Sink, reason.clone(), item.event.origin.clone()).with_event((*item.event).clone());
            d.sink = Some(name.to_string());
            d
        })
        .collect();
    let dead_lettered = refused.len();
    match dlq.append(records).await {
        Ok(()) => {
            spans.finish(attempt, dead_lettered, Some("dead_lettered"));
            for (item, reason) in refused {
                metrics.dead_lettered.with_label_values(&[Stage::Sink.name(), name]).inc();
                tracing::error!(sink = %name, event_id = %item.event.id, reason = %reason, "Event dead-lettered by sink.");
                item.ack.resolve(SinkResult::DeadLettered(reason));
            }
        }
        Err(e) => {
            spans.finish(attempt, 0, Some("dead_letter_store_failed"));
            for (item, reason) in refused {
                tracing::error!(sink = %name, event_id = %item.event.id, error = %e, "Dead-letter store unavailable; event NOT acknowledged.");
                item.ack.resolve(SinkResult::Failed(format!("{reason}; and the dead-letter store failed: {e}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_by_rows_and_bytes() {
        assert_eq!(cut(&[10; 5], 2, 1000), vec![0..2, 2..4, 4..5]);
        assert_eq!(cut(&[10; 5], 100, 25), vec![0..2, 2..4, 4..5]);
        assert_eq!(cut(&[100, 1, 1], 100, 50), vec![0..1, 1..3], "an oversized row goes alone");
        assert_eq!(cut(&[1, 100, 1], usize::MAX, 50), vec![0..1, 1..2, 2..3]);
        assert!(cut(&[], 10, 10).is_empty());
    }

}
