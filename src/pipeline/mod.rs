//! The pipeline: decoded records in; deduplicated events out to every sink; one report per batch back.
//!
//! ```text
//! source ──(decode, in the source's task)──► [bounded queue] ──► dedup + dead-letter rejects ──► enrich ──►
//!     [bounded queue per sink] ──► sink driver (batch, retry, dead-letter) ──► ack ──► report to source
//! ```
//!
//! Decoding happens in the source's own task (in parallel across webhook requests); the central stage
//! is sequential so deduplication sees records in arrival order and replays are deterministic. Every
//! queue is bounded: a slow sink slows the central stage, which fills the input queue, which makes the
//! webhook answer 503 (`try_submit`) or makes replay wait (`submit`). Nothing is buffered without
//! limit.
//!
//! ## Reconfiguration (hot reload)
//!
//! The central stage takes [`Reconfigure`] commands on a channel of their own, selected alongside
//! submissions and applied only between batches: a batch is deduplicated, enriched, detected and
//! fanned out wholly under one generation of rules, routes and sinks. A sink whose options changed is
//! replaced by starting a new driver and switching the fan-out to it; the old driver's sender is
//! dropped, so it writes what it already holds (with its old options and retries), dead-letters what
//! it cannot write, resolves every acknowledgement token it holds, closes and ends. Nothing in flight
//! is dropped, and a webhook request spanning the switch is answered once both drivers resolved its
//! events. Every driver handle, old and new, is awaited at shutdown.

pub mod ack;
pub mod dedup;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::dead_letter::{DeadLetter, DeadLetterStore, Stage};
use crate::decode::{Decoded, Item};
use crate::detect::Detector;
use crate::enrich::Enricher;
use crate::event::{AuditEvent, Origin, Warning};
use crate::metrics::{reason_label, Metrics};
use crate::sinks::{spawn_sink, BatchOptions, RetryOptions, Sink, SinkItem};
use crate::telemetry::TraceParent;
use tracing::Instrument;
use ack::AckGroup;
use dedup::{Dedup, Verdict};

/// `[dedup]`: repeat suppression by event id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DedupOptions {
    pub enabled: bool,
    /// Window in event time, seconds: a repeat of an id seen within this span of the newest event is
    /// dropped. p2-inc retries for up to 15 minutes and a Kafka rebalance redelivers seconds' worth, but a
    /// consumer reset re-reads the whole topic: the default, 7 days, matches Kafka's default retention.
    /// Memory stays bounded by `max_entries` whatever the window.
    pub window_secs: u64,
    /// Most ids remembered (memory bound: about 43 bytes each, so ~43 MiB at the default).
    pub max_entries: usize,
}

impl Default for DedupOptions {
    fn default() -> Self {
        DedupOptions { enabled: true, window_secs: 7 * 24 * 3600, max_entries: 1_000_000 }
    }
}

/// `[pipeline]`: queueing between stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineOptions {
    /// Batches (webhook requests, replay chunks) queued before the central stage; when full the
    /// webhook answers 503 with Retry-After.
    pub queue_batches: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions { queue_batches: 64 }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PipelineError {
    #[error("the pipeline is overloaded; retry later")]
    Overloaded,
    #[error("kcaudit is shutting down")]
    ShuttingDown,
    #[error("the dead-letter store could not be written: {0}")]
    DeadLetterUnavailable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Accepted,
    Duplicate,
    Rejected,
    Skipped,
}

/// What happened to one record.
#[derive(Debug, Clone, Serialize)]
pub struct ItemReport {
    pub origin: Origin,
    pub status: ItemStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
    /// For duplicates: the repeat's content differed from the first delivery.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub conflict: bool,
    /// (sink, reason) for sinks that dead-lettered this accepted event.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dead_lettered: Vec<(String, String)>,
    /// (sink, reason) for sinks that could neither deliver nor dead-letter it. Non-empty means the
    /// source must not acknowledge the batch.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<(String, String)>,
    /// The accepted event (kept only when the source asked for it).
    #[serde(skip)]
    pub event: Option<Arc<AuditEvent>>,
}

impl ItemReport {
    fn new(origin: Origin, status: ItemStatus) -> Self {
        ItemReport { origin, status, reason: None, event_id: None, warnings: vec![], conflict: false, dead_lettered: vec![], failed: vec![], event: None }
    }
}

/// Counts over a batch. `received = accepted + duplicates + rejected + skipped` always holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub received: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub skipped: u64,
    /// Accepted events that carry warnings.
    pub warned: u64,
    /// Accepted events that at least one sink dead-lettered.
    pub dead_lettered: u64,
    /// Accepted events neither delivered nor dead-lettered by some sink (not safe to acknowledge).
    pub failed: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.received += o.received;
        self.accepted += o.accepted;
        self.duplicates += o.duplicates;
        self.rejected += o.rejected;
        self.skipped += o.skipped;
        self.warned += o.warned;
        self.dead_lettered += o.dead_lettered;
        self.failed += o.failed;
    }
}

#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    pub items: Vec<ItemReport>,
}

impl BatchReport {
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for i in &self.items {
            c.received += 1;
            match i.status {
                ItemStatus::Accepted => {
                    c.accepted += 1;
                    c.warned += u64::from(!i.warnings.is_empty());
                    c.dead_lettered += u64::from(!i.dead_lettered.is_empty());
                    c.failed += u64::from(!i.failed.is_empty());
                }
                ItemStatus::Duplicate => c.duplicates += 1,
                ItemStatus::Rejected => c.rejected += 1,
                ItemStatus::Skipped => c.skipped += 1,
            }
        }
        c
    }
}

struct Submission {
    items: Vec<Item>,
    source: &'static str,
    keep_events: bool,
    /// The submitting request's or batch's span: the stage spans and every sink's delivery span are
    /// its children, though they run in other tasks.
    trace: TraceParent,
    reply: oneshot::Sender<Result<BatchReport, PipelineError>>,
}

/// A cheap, clonable handle sources use to submit batches.
#[derive(Clone)]
pub struct PipelineHandle {
    tx: mpsc::Sender<Submission>,
    closing: Arc<AtomicBool>,
    /// How many sources are waiting for acknowledgements before they read more ([`AckWait`]).
    waiting: Arc<watch::Sender<usize>>,
    pub metrics: Metrics,
    pub dead_letters: DeadLetterStore,
}

impl PipelineHandle {
    fn submission(&self, items: Vec<Item>, source: &'static str, keep_events: bool) -> (Submission, oneshot::Receiver<Result<BatchReport, PipelineError>>) {
        let (reply, rx) = oneshot::channel();
        (Submission { items, source, keep_events, trace: TraceParent::current(), reply }, rx)
    }

    /// The caller's current span (a webhook request, a Kafka batch) becomes the parent of the
    /// pipeline's spans for this batch, with `[telemetry]` on.
    ///
    /// Submit without waiting for queue space: `Overloaded` when the queue is full (the webhook turns
    /// that into 503 + Retry-After). Resolves when every event is delivered or dead-lettered.
    pub async fn try_submit(&self, items: Vec<Item>, source: &'static str) -> Result<BatchReport, PipelineError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(PipelineError::ShuttingDown);
        }
        let (sub, rx) = self.submission(items, source, false);
        self.tx.try_send(sub).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PipelineError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => PipelineError::ShuttingDown,
        })?;
        rx.await.map_err(|_| PipelineError::ShuttingDown)?
    }

    /// Submit, waiting for queue space (replay). Returns a future for the report, so a caller can keep
    /// several batches in flight while preserving order.
    pub async fn submit(&self, items: Vec<Item>, source: &'static str, keep_events: bool) -> Result<oneshot::Receiver<Result<BatchReport, PipelineError>>, PipelineError> {
        let (sub, rx) = self.submission(items, source, keep_events);
        self.tx.send(sub).await.map_err(|_| PipelineError::ShuttingDown)?;
        Ok(rx)
    }

    /// Store records that never became pipeline items (e.g. a request that failed authentication).
    pub async fn dead_letter(&self, records: Vec<DeadLetter>) -> Result<(), PipelineError> {
        let n: Vec<(Stage, Option<String>)> = records.iter().map(|r| (r.stage, r.sink.clone())).collect();
        self.dead_letters.append(records).await.map_err(|e| PipelineError::DeadLetterUnavailable(e.to_string()))?;
        for (stage, sink) in n {
            self.metrics.dead_lettered.with_label_values(&[stage.name(), sink.as_deref().unwrap_or("")]).inc();
        }
        Ok(())
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Held by a source while it reads nothing more until some of its events are acknowledged (Kafka
    /// at `max_in_flight_records`, replay at its batches in flight and at the end of its input, the
    /// spool at `max_in_flight`). While any source holds one, sinks write partial batches at once
    /// instead of waiting up to `batch.max_wait_ms` for events that cannot come: with ClickHouse's
    /// 10,000-event, 1-second batches and Kafka's 5,000 records in flight, every batch used to wait
    /// the full second (issue #9 measured 5,000 events/s from Kafka and 3,400 from replay).
    pub fn waiting_for_acks(&self) -> AckWait {
        self.ack_waiter().wait()
    }

    /// What [`PipelineHandle::waiting_for_acks`] needs, for code that must not keep the pipeline
    /// alive (a Kafka rebalance callback).
    pub fn ack_waiter(&self) -> AckWaiter {
        AckWaiter(self.waiting.clone())
    }

    /// Stop taking new batches (sources answer 503); batches already queued still complete.
    pub fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::Release);
    }
}

/// See [`PipelineHandle::ack_waiter`].
#[derive(Clone)]
pub struct AckWaiter(Arc<watch::Sender<usize>>);

impl AckWaiter {
    pub fn wait(&self) -> AckWait {
        self.0.send_modify(|n| *n += 1);
        AckWait(self.0.clone())
    }
}

/// See [`PipelineHandle::waiting_for_acks`]; the wait ends when this is dropped.
pub struct AckWait(Arc<watch::Sender<usize>>);

impl Drop for AckWait {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A sink with its driver options.
pub struct SinkSpec {
    pub sink: Box<dyn Sink>,
    pub batch: BatchOptions,
    pub retry: RetryOptions,
}

/// A new generation of the parts of the pipeline that can change while it runs (hot reload).
/// Everything here is built and validated before it is sent: applying it cannot fail.
#[derive(Default)]
pub struct Reconfigure {
    /// Sinks to start; a running sink of the same name is retired (drained, flushed, closed).
    pub start: Vec<SinkSpec>,
    /// Names of running sinks to retire without a replacement.
    pub stop: Vec<String>,
    /// `Some(new)`: replace the enrichment stage (`Some(None)` removes it); `None`: keep it.
    pub enricher: Option<Option<Arc<Enricher>>>,
    /// New detection options for the running detector; its state (baselines, windows, the redb
    /// store or the owned partitions) is kept.
    pub detect: Option<crate::detect::DetectOptions>,
}

struct ReconfigureCommand {
    change: Reconfigure,
    applied: oneshot::Sender<()>,
}

/// Sends [`Reconfigure`] commands to the central stage. Holding one does not keep the pipeline alive.
#[derive(Clone)]
pub struct PipelineControl {
    tx: mpsc::UnboundedSender<ReconfigureCommand>,
}

impl PipelineControl {
    /// Apply `change` between two batches; resolves once it is in force.
    pub async fn reconfigure(&self, change: Reconfigure) -> Result<(), PipelineError> {
        let (applied, rx) = oneshot::channel();
        self.tx.send(ReconfigureCommand { change, applied }).map_err(|_| PipelineError::ShuttingDown)?;
        rx.await.map_err(|_| PipelineError::ShuttingDown)
    }
}

/// Sink driver tasks, including retired ones still draining; awaited at shutdown.
type Drivers = Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>;

/// The running pipeline: the central stage and one driver task per sink.
pub struct Pipeline {
    handle: PipelineHandle,
    control: PipelineControl,
    central: tokio::task::JoinHandle<()>,
    drivers: Drivers,
}

impl Pipeline {
    pub fn start(sinks: Vec<SinkSpec>, dead_letters: DeadLetterStore, metrics: Metrics, dedup: &DedupOptions, opts: &PipelineOptions) -> Pipeline {
        Self::start_with(sinks, Stages::default(), dead_letters, metrics, dedup, opts)
    }

    /// Start with enrichment and detection stages (applied, in that order, to accepted events before
    /// the sinks).
    pub fn start_with(
        sinks: Vec<SinkSpec>,
        stages: Stages,
        dead_letters: DeadLetterStore,
        metrics: Metrics,
        dedup: &DedupOptions,
        opts: &PipelineOptions,
    ) -> Pipeline {
        let (tx, rx) = mpsc::channel(opts.queue_batches.max(1));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(watch::Sender::new(0));
        let mut central = Central {
            sinks: Vec::new(),
            waiting: waiting.clone(),
            drivers: Drivers::default(),
            enricher: stages.enricher,
            detector: stages.detector,
            dedup: dedup.enabled.then(|| Arc::new(Mutex::new(Dedup::new(dedup.window_secs, dedup.max_entries)))),
            dead_letters: dead_letters.clone(),
            metrics: metrics.clone(),
        };
        for s in sinks {
            central.start_sink(s);
        }
        let drivers = central.drivers.clone();
        let central = tokio::spawn(central.run(rx, control_rx));
        Pipeline {
            handle: PipelineHandle { tx, closing: Arc::new(AtomicBool::new(false)), waiting, metrics, dead_letters },
            control: PipelineControl { tx: control_tx },
            central,
            drivers,
        }
    }

    pub fn handle(&self) -> PipelineHandle {
        self.handle.clone()
    }

    /// The handle that reconfigures the running pipeline (hot reload).
    pub fn control(&self) -> PipelineControl {
        self.control.clone()
    }

    /// Finish everything queued, flush and close every sink, then return.
    pub async fn shutdown(self) {
        self.handle.begin_shutdown();
        let Pipeline { handle, central, drivers, control } = self;
        drop((handle, control));
        // Sources hold handle clones; the central stage ends when all of them are dropped, and with it
        // the senders of every sink driver, which then flush and end.
        let _ = central.await;
        let drivers = std::mem::take(&mut *drivers.lock().unwrap_or_else(|p| p.into_inner()));
        for d in drivers {
            let _ = d.await;
        }
    }
}

/// The optional processing stages between dedup and the sinks.
#[derive(Default)]
pub struct Stages {
    pub enricher: Option<Arc<Enricher>>,
    /// Shared so its state can be persisted and inspected while the pipeline runs.
    pub detector: Option<Arc<Mutex<Detector>>>,
}

struct Central {
    /// Each sink's name is shared with every acknowledgement token made for it.
    sinks: Vec<(Arc<str>, mpsc::Sender<SinkItem>)>,
    /// Given to every sink driver (see [`PipelineHandle::waiting_for_acks`]).
    waiting: Arc<watch::Sender<usize>>,
    drivers: Drivers,
    enricher: Option<Arc<Enricher>>,
    detector: Option<Arc<Mutex<Detector>>>,
    dedup: Option<Arc<Mutex<Dedup>>>,
    dead_letters: DeadLetterStore,
    metrics: Metrics,
}

impl Central {
    async fn run(mut self, mut rx: mpsc::Receiver<Submission>, mut control: mpsc::UnboundedReceiver<ReconfigureCommand>) {
        loop {
            // `process` runs to completion inside one branch, so a reconfiguration always lands
            // between batches; `biased` applies a pending one before the next batch.
            tokio::select! {
                biased;
                Some(cmd) = control.recv() => {
                    self.reconfigure(cmd.change);
                    let _ = cmd.applied.send(());
                }
                sub = rx.recv() => match sub {
                    Some(sub) => self.process(sub).await,
                    None => break,
                },
            }
        }
        if let Some(d) = &self.detector {
            d.lock().unwrap_or_else(|p| p.into_inner()).persist(true);
        }
    }

    /// Spawn a sink's driver; a running sink of the same name is retired (see [`Central::retire`]).
    fn start_sink(&mut self, s: SinkSpec) {
        let name: Arc<str> = s.sink.name().into();
        let (tx, h) = spawn_sink(s.sink, s.batch, s.retry, self.waiting.subscribe(), self.dead_letters.clone(), self.metrics.clone());
        self.drivers.lock().unwrap_or_else(|p| p.into_inner()).push(h);
        match self.sinks.iter_mut().find(|(n, _)| *n == name) {
            // Dropping the old sender retires the old driver: it drains what it holds, then ends.
            Some(slot) => slot.1 = tx,
            None => self.sinks.push((name, tx)),
        }
    }

    /// Stop feeding a sink; its driver drains, flushes and closes on its own (awaited at shutdown).
    fn retire(&mut self, name: &str) {
        self.sinks.retain(|(n, _)| &**n != name);
    }

    fn reconfigure(&mut self, change: Reconfigure) {
        for name in &change.stop {
            self.retire(name);
        }
        for s in change.start {
            self.start_sink(s);
        }
        if let Some(e) = change.enricher {
            self.enricher = e;
        }
        if let (Some(opts), Some(d)) = (change.detect, &self.detector) {
            let mut d = d.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = d.store.as_mut() {
                s.save_every = opts.state_save_every;
            }
            d.opts = opts;
        }
        // Drivers that have finished draining need no awaiting at shutdown.
        self.drivers.lock().unwrap_or_else(|p| p.into_inner()).retain(|h| !h.is_finished());
    }

    fn dedup_verdict(&self, ev: &AuditEvent) -> Verdict {
        match &self.dedup {
            Some(d) => d.lock().map(|mut d| d.check(ev)).unwrap_or(Verdict::New),
            None => Verdict::New,
        }
    }

    fn forget(dedup: &Option<Arc<Mutex<Dedup>>>, id: &str) {
        if let Some(d) = dedup {
            if let Ok(mut d) = d.lock() {
                d.forget(id);
            }
        }
    }

    /// One span per stage and batch (never per event): dedup, enrich, detect; the sink drivers add
    /// their delivery spans under the same parent.
    async fn process(&self, sub: Submission) {
        let m = &self.metrics;
        let trace = sub.trace;
        let mut reports = Vec::with_capacity(sub.items.len());
        let mut dead = Vec::new();
        let mut fresh: Vec<(usize, Arc<AuditEvent>)> = Vec::new();
        let dedup_span = crate::child_span!(&trace, "dedup", kcaudit.source = sub.source, kcaudit.records = sub.items.len(), kcaudit.accepted = tracing::field::Empty);
        let in_dedup = dedup_span.enter();
        // One label lookup per submission, not per record (a hash and a lock each).
        let received = m.received.with_label_values(&[sub.source]);
        for item in sub.items {
            received.inc();
            match item.decoded {
                Decoded::Skipped(reason) => {
                    m.skipped.inc();
                    let mut r = ItemReport::new(item.origin, ItemStatus::Skipped);
                    r.reason = Some(reason);
                    reports.push(r);
                }
                Decoded::Rejected(reason) => {
                    let label = reason_label(&reason);
                    m.rejected.with_label_values(&[label]).inc();
                    let stage = if label == "auth" { Stage::Auth } else { Stage::Decode };
                    let mut d = DeadLetter::new(stage, reason.clone(), item.origin.clone());
                    if let Some(raw) = &item.raw {
                        d = d.with_raw(raw);
                    }
                    dead.push(d);
                    let mut r = ItemReport::new(item.origin, ItemStatus::Rejected);
                    r.reason = Some(reason);
                    reports.push(r);
                }
                Decoded::Event(ev) => {
                    let verdict = self.dedup_verdict(&ev);
                    let mut r = ItemReport::new(item.origin, ItemStatus::Accepted);
                    r.event_id = Some(ev.id.clone());
                    match verdict {
                        Verdict::New => {
                            m.accepted.inc();
                            for w in &ev.warnings {
                                m.warnings.with_label_values(&[&w.code]).inc();
                            }
                            r.warnings = ev.warnings.clone();
                            fresh.push((reports.len(), ev));
                        }
                        Verdict::Duplicate => {
                            m.duplicates.with_label_values(&["false"]).inc();
                            r.status = ItemStatus::Duplicate;
                            r.reason = Some(format!("event id {} already seen within the dedup window", ev.id));
                        }
                        Verdict::Conflict => {
                            m.duplicates.with_label_values(&["true"]).inc();
                            r.status = ItemStatus::Duplicate;
                            r.conflict = true;
                            let reason = format!(
                                "event id {} was already seen with different content; the first delivery was kept and this one dead-lettered",
                                ev.id
                            );
                            tracing::warn!(event_id = %ev.id, "Event id reused with different content.");
                            r.reason = Some(reason.clone());
                            dead.push(DeadLetter::new(Stage::Dedup, reason, r.origin.clone()).with_event(Arc::unwrap_or_clone(ev)));
                        }
                    }
                    reports.push(r);
                }
            }
        }
        dedup_span.record("kcaudit.accepted", fresh.len());
        drop(in_dedup);
        drop(dedup_span);
        if let Some(en) = &self.enricher {
            let mut refs: Vec<&mut AuditEvent> = Vec::with_capacity(fresh.len());
            for (_, e) in fresh.iter_mut() {
                // Not yet shared (decoding made it, nothing else holds it): changed in place.
                refs.push(Arc::make_mut(e));
            }
            // The admin-API calls made while enriching are children of this span.
            let span = crate::child_span!(&trace, "enrich", kcaudit.events = refs.len());
            en.enrich_all(refs).instrument(span).await;
        }
        if let Some(d) = &self.detector {
            let span = crate::child_span!(&trace, "detect", kcaudit.events = fresh.len(), kcaudit.findings = tracing::field::Empty);
            let _in = span.enter();
            let mut d = d.lock().unwrap_or_else(|p| p.into_inner());
            for (_, e) in fresh.iter_mut() {
                d.process(Arc::make_mut(e));
            }
            d.persist(false);
            span.record("kcaudit.findings", fresh.iter().map(|(_, e)| e.findings.len()).sum::<usize>());
        }
        let accepted = fresh;
        if sub.keep_events {
            for (pos, ev) in &accepted {
                reports[*pos].event = Some(ev.clone());
            }
        }
        if !dead.is_empty() {
            let stages: Vec<Stage> = dead.iter().map(|d| d.stage).collect();
            if let Err(e) = self.dead_letters.append(dead).await {
                tracing::error!(error = %e, "Dead-letter store unavailable; batch refused.");
                for (_, ev) in &accepted {
                    Self::forget(&self.dedup, &ev.id);
                }
                let _ = sub.reply.send(Err(PipelineError::DeadLetterUnavailable(e.to_string())));
                return;
            }
            for s in stages {
                m.dead_lettered.with_label_values(&[s.name(), ""]).inc();
            }
        }

        let positions: Vec<usize> = accepted.iter().map(|(p, _)| *p).collect();
        let dedup = self.dedup.clone();
        let reply = sub.reply;
        let group = AckGroup::new(
            accepted.len(),
            self.sinks.len(),
            Box::new(move |fates| {
                let mut reports = reports;
                for (k, fate) in fates.into_iter().enumerate() {
                    if let Some(r) = reports.get_mut(positions[k]) {
                        // The report carries the event's id (one copy of it, not two).
                        if let Some(id) = r.event_id.as_deref().filter(|_| !fate.failed.is_empty()) {
                            Self::forget(&dedup, id);
                        }
                        r.dead_lettered = fate.dead_lettered;
                        r.failed = fate.failed;
                    }
                }
                let _ = reply.send(Ok(BatchReport { items: reports }));
            }),
        );
        for (k, (_, ev)) in accepted.into_iter().enumerate() {
            for (name, tx) in &self.sinks {
                // A closed sink channel drops the item, whose token then resolves as a failure.
                let _ = tx.send(SinkItem { event: ev.clone(), ack: group.token(k, name), trace: trace.clone() }).await;
            }
        }
    }
}
