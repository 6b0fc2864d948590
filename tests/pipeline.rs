//! The delivery contract with sinks that fail: transient failures are retried, permanent ones are
//! dead-lettered with the destination's reason, and the batch report says which.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::*;
use kcaudit::dead_letter::{DeadLetterStore, Stage};
use kcaudit::decode::Format;
use kcaudit::event::AuditEvent;
use kcaudit::metrics::Metrics;
use kcaudit::pipeline::{DedupOptions, ItemStatus, Pipeline, PipelineOptions, SinkSpec};
use kcaudit::sinks::{BatchOptions, BoxFuture, RetryOptions, Sink, SinkError, WriteReport};

/// Fails transiently `flaky` times, then refuses events whose client is "refuse-me", accepts the rest.
struct TestSink {
    flaky: Arc<AtomicU32>,
    written: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Sink for TestSink {
    fn name(&self) -> &str {
        "test"
    }
    fn write<'a>(&'a mut self, events: &'a [Arc<AuditEvent>]) -> BoxFuture<'a, Result<WriteReport, SinkError>> {
        Box::pin(async move {
            if self.flaky.load(Ordering::SeqCst) > 0 {
                self.flaky.fetch_sub(1, Ordering::SeqCst);
                return Err(SinkError::Transient("connection refused".into()));
            }
            let mut report = WriteReport::default();
            for (i, e) in events.iter().enumerate() {
                if e.client_id.as_deref() == Some("refuse-me") {
                    report.rejected.push((i, "mapper_parsing_exception: field [x] of different type".into()));
                } else {
                    self.written.lock().unwrap().push(e.id.clone());
                }
            }
            Ok(report)
        })
    }
}

fn body() -> String {
    (0..10)
        .map(|i| {
            let client = if i == 3 { "refuse-me" } else { "ok" };
            format!(r#"{{"id":"p{i}","time":1773043084120,"type":"LOGIN","realmId":"r","clientId":"{client}"}}"#)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn transient_failures_retry_permanent_ones_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let dlq_path = dir.path().join("dlq.jsonl");
    let flaky = Arc::new(AtomicU32::new(2));
    let written = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = TestSink { flaky: flaky.clone(), written: written.clone() };
    let metrics = Metrics::new();
    let pipeline = Pipeline::start(
        vec![SinkSpec { sink: Box::new(sink), batch: BatchOptions::default(), retry: RetryOptions { max_attempts: 5, initial_backoff_ms: 1, max_backoff_ms: 5 } }],
        DeadLetterStore::open(&dlq_path).unwrap(),
        metrics.clone(),
        &DedupOptions::default(),
        &PipelineOptions::default(),
    );
    let h = pipeline.handle();
    let items = decode(body().as_bytes(), Format::Auto);
    let report = h.try_submit(items, "test").await.unwrap();
    let c = report.counts();
    assert_eq!((c.received, c.accepted, c.dead_lettered, c.failed), (10, 10, 1, 0));
    assert_eq!(flaky.load(Ordering::SeqCst), 0, "both transient failures were retried");
    assert_eq!(written.lock().unwrap().len(), 9);
    let refused = report.items.iter().find(|i| !i.dead_lettered.is_empty()).unwrap();
    assert_eq!(refused.event_id.as_deref(), Some("p3"));
    assert!(refused.dead_lettered[0].1.contains("mapper_parsing_exception"));
    let dlq = DeadLetterStore::read_all(&dlq_path).unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!((dlq[0].stage, dlq[0].sink.as_deref()), (Stage::Sink, Some("test")));
    assert_eq!(dlq[0].event.as_ref().unwrap().id, "p3", "the event itself is kept for replay");
    assert!(metrics.render().contains(r#"kcaudit_sink_retries_total{sink="test"} 2"#));

    // Retries exhausted: dead-lettered with the last error, never silently dropped.
    flaky.store(100, Ordering::SeqCst);
    let items = decode(br#"{"id":"late","time":1773043084120,"type":"LOGIN","realmId":"r","clientId":"ok"}"#, Format::Auto);
    let report = h.try_submit(items, "test").await.unwrap();
    assert_eq!(report.items[0].status, ItemStatus::Accepted);
    assert!(report.items[0].dead_lettered[0].1.contains("gave up after 5 attempts: connection refused"), "{:?}", report.items[0]);
    drop(h);
    pipeline.shutdown().await;
}

#[tokio::test]
async fn conflicting_duplicates_are_kept_first_wins_and_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let first = r#"{"id":"same","time":1773043084120,"type":"TOKEN_EXCHANGE","realmId":"r","clientId":"api-gateway","details":{"audience":"orders-api"}}"#;
    let forged = first.replace("orders-api", "hr-records-api");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, format!("{first}\n{first}\n{forged}\n")).unwrap();
    let (evs, rep) = replay(dir.path(), &[], &[input], Format::Auto).await;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].token_exchange.as_ref().unwrap().audiences, vec!["orders-api"]);
    assert_eq!(rep.totals.duplicates, 2);
    let recs = &rep.inputs[0].records;
    assert_eq!(recs.len(), 2);
    assert!(recs[1].reason.as_deref().unwrap().contains("different content"));
    let dlq = DeadLetterStore::read_all(&dir.path().join("dead-letter.jsonl")).unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].stage, Stage::Dedup);
    assert_eq!(dlq[0].event.as_ref().unwrap().token_exchange.as_ref().unwrap().audiences, vec!["hr-records-api"]);
}

/// A sink that holds every write until released.
struct GateSink {
    gate: Arc<tokio::sync::Semaphore>,
    written: Arc<AtomicU32>,
}

impl Sink for GateSink {
    fn name(&self) -> &str {
        "gate"
    }
    fn write<'a>(&'a mut self, events: &'a [Arc<AuditEvent>]) -> BoxFuture<'a, Result<WriteReport, SinkError>> {
        Box::pin(async move {
            let _p = self.gate.acquire().await.map_err(|e| SinkError::Transient(e.to_string()))?;
            self.written.fetch_add(events.len() as u32, Ordering::SeqCst);
            Ok(WriteReport::default())
        })
    }
}

fn one(i: u32) -> Vec<kcaudit::decode::Item> {
    decode(format!(r#"{{"id":"g{i}","time":1773043084120,"type":"LOGIN","realmId":"r","clientId":"c"}}"#).as_bytes(), Format::Auto)
}

#[tokio::test]
async fn a_stuck_sink_backs_up_to_overloaded_and_nothing_queued_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let written = Arc::new(AtomicU32::new(0));
    let pipeline = Pipeline::start(
        vec![SinkSpec {
            sink: Box::new(GateSink { gate: gate.clone(), written: written.clone() }),
            batch: BatchOptions { max_events: 1, max_wait_ms: 0, queue_capacity: 1 },
            retry: RetryOptions::default(),
        }],
        DeadLetterStore::open(&dir.path().join("dlq.jsonl")).unwrap(),
        Metrics::new(),
        &DedupOptions::default(),
        &PipelineOptions { queue_batches: 1 },
    );
    let h = pipeline.handle();
    // The test runtime is single-threaded: while this task sleeps, every spawned submission runs up to
    // its first await, so each has either been queued or refused by the time the sleep ends.
    let tasks: Vec<_> = (0..100).map(|i| {
        let h2 = h.clone();
        tokio::spawn(async move { h2.try_submit(one(i), "test").await })
    }).collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (refused, queued): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|t| t.is_finished());
    assert!(queued.len() < 10, "only a handful of batches fit in the bounded queues ({})", queued.len());
    for t in refused {
        assert_eq!(t.await.unwrap().unwrap_err(), kcaudit::pipeline::PipelineError::Overloaded);
    }
    gate.add_permits(1000);
    let n = queued.len() as u32;
    for t in queued {
        assert_eq!(t.await.unwrap().unwrap().counts().accepted, 1, "a queued batch is never lost");
    }
    assert_eq!(written.load(Ordering::SeqCst), n);
    drop(h);
    pipeline.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_queued_batches() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let written = Arc::new(AtomicU32::new(0));
    let pipeline = Pipeline::start(
        vec![SinkSpec { sink: Box::new(GateSink { gate: gate.clone(), written: written.clone() }), batch: BatchOptions::default(), retry: RetryOptions::default() }],
        DeadLetterStore::open(&dir.path().join("dlq.jsonl")).unwrap(),
        Metrics::new(),
        &DedupOptions::default(),
        &PipelineOptions::default(),
    );
    let h = pipeline.handle();
    let mut pending = Vec::new();
    for i in 0..5 {
        pending.push(h.submit(one(i), "test", false).await.unwrap());
    }
    drop(h);
    let shutdown = tokio::spawn(pipeline.shutdown());
    gate.add_permits(1000);
    shutdown.await.unwrap();
    for rx in pending {
        assert_eq!(rx.await.unwrap().unwrap().counts().accepted, 1);
    }
    assert_eq!(written.load(Ordering::SeqCst), 5, "every queued event reached the sink before shutdown returned");
}

/// A source that reads nothing more until its events are acknowledged (Kafka at its in-flight cap,
/// replay, the spool) holds `waiting_for_acks`; sinks then write a partial batch at once instead of
/// waiting out `max_wait_ms` for events that cannot come. Time is paused (virtual), so the waits
/// are exact.
#[tokio::test(start_paused = true)]
async fn sinks_write_partial_batches_at_once_while_a_source_waits_for_acknowledgements() {
    let dir = tempfile::tempdir().unwrap();
    let written = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = TestSink { flaky: Arc::new(AtomicU32::new(0)), written: written.clone() };
    let pipeline = Pipeline::start(
        vec![SinkSpec { sink: Box::new(sink), batch: BatchOptions { max_events: 10_000, max_wait_ms: 60_000, queue_capacity: 100 }, retry: RetryOptions::default() }],
        DeadLetterStore::open(&dir.path().join("dlq.jsonl")).unwrap(),
        Metrics::new(),
        &DedupOptions::default(),
        &PipelineOptions::default(),
    );
    let h = pipeline.handle();
    let event = |id: &str| decode(format!(r#"{{"id":"{id}","time":1773043084120,"type":"LOGIN","realmId":"r","clientId":"ok"}}"#).as_bytes(), Format::Auto);
    let timed = |id: &'static str| {
        let (h, items) = (h.clone(), event(id));
        async move {
            let t = tokio::time::Instant::now();
            let report = h.try_submit(items, "test").await.unwrap();
            assert_eq!(report.counts().accepted, 1);
            t.elapsed()
        }
    };
    // Nobody waits: the partial batch waits for its timer, as configured.
    assert!(timed("a").await >= std::time::Duration::from_secs(60));
    // A source waits for acknowledgements: written at once.
    let waiting = h.waiting_for_acks();
    assert!(timed("b").await < std::time::Duration::from_secs(1));
    // A batch already waiting is written as soon as a source starts to wait.
    let late = tokio::spawn(timed("c"));
    drop(waiting);
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert!(!late.is_finished(), "written before its timer with no source waiting");
    let waiting = h.waiting_for_acks();
    let took = late.await.unwrap();
    assert!(took >= std::time::Duration::from_secs(5) && took < std::time::Duration::from_secs(6), "{took:?}");
    drop(waiting);
    assert_eq!(*written.lock().unwrap(), vec!["a", "b", "c"]);
    drop(h);
    pipeline.shutdown().await;
}
