//! Running one sink behind a real pipeline, as a source would: submit batches, wait for their
//! reports, read each event's fate (delivered, dead-lettered, failed).

use std::path::PathBuf;
use std::time::Duration;

use kcaudit::dead_letter::DeadLetterStore;
use kcaudit::decode::{Decoded, Format, Item};
use kcaudit::event::AuditEvent;
use kcaudit::metrics::Metrics;
use kcaudit::pipeline::{BatchReport, DedupOptions, Pipeline, PipelineOptions, SinkSpec};
use kcaudit::sinks::{BatchOptions, RetryOptions, Sink};

pub struct SinkRun {
    pub pipeline: Pipeline,
    pub metrics: Metrics,
    pub dlq: PathBuf,
    _dir: tempfile::TempDir,
}

/// A pipeline with just `sink`, its dead letters in a temp dir.
pub fn start_sink(sink: Box<dyn Sink>, batch: &BatchOptions, retry: &RetryOptions) -> SinkRun {
    let dir = tempfile::tempdir().unwrap();
    let dlq = dir.path().join("dead-letter.jsonl");
    let metrics = Metrics::new();
    let pipeline = Pipeline::start(
        vec![SinkSpec { sink, batch: batch.clone(), retry: retry.clone() }],
        DeadLetterStore::open(&dlq).unwrap(),
        metrics.clone(),
        &DedupOptions::default(),
        &PipelineOptions::default(),
    );
    SinkRun { pipeline, metrics, dlq, _dir: dir }
}

impl SinkRun {
    /// Submit one batch and wait (at most a minute) for its report: what a webhook sender is told.
    pub async fn push(&self, items: Vec<Item>) -> BatchReport {
        let rx = self.pipeline.handle().submit(items, "test", false).await.unwrap();
        tokio::time::timeout(Duration::from_secs(60), rx).await.expect("the batch is resolved").unwrap().unwrap()
    }

    /// Submit `items` in webhook-sized batches of 500, all in flight at once; every report.
    pub async fn push_all(&self, items: Vec<Item>) -> Vec<BatchReport> {
        let h = self.pipeline.handle();
        let mut pending = Vec::new();
        let mut items = items;
        while !items.is_empty() {
            let rest = items.split_off(items.len().min(500));
            pending.push(h.submit(std::mem::replace(&mut items, rest), "test", false).await.unwrap());
        }
        let mut out = Vec::new();
        for rx in pending {
            out.push(rx.await.unwrap().unwrap());
        }
        out
    }
}

/// (accepted, delivered by every sink, dead-lettered, failed) over reports.
pub fn fates(reports: &[BatchReport]) -> (u64, u64, u64, u64) {
    let (mut a, mut d, mut dl, mut f) = (0, 0, 0, 0);
    for r in reports {
        let c = r.counts();
        a += c.accepted;
        dl += c.dead_lettered;
        f += c.failed;
        d += r.items.iter().filter(|i| i.dead_lettered.is_empty() && i.failed.is_empty() && i.event_id.is_some()).count() as u64;
    }
    (a, d, dl, f)
}

/// The first dead-letter or failure reason, for assertion messages.
pub fn why(reports: &[BatchReport]) -> String {
    reports.iter().flat_map(|r| &r.items).flat_map(|i| i.dead_lettered.iter().chain(&i.failed)).map(|(s, r)| format!("{s}: {r}")).next().unwrap_or_default()
}

/// `n` distinct generated token-exchange events (a different seed gives different ids).
pub fn generated(seed: u64, n: u64) -> Vec<Item> {
    let mut body = Vec::new();
    kcaudit::loadgen::write_file(kcaudit::loadgen::GenOptions { seed, ..Default::default() }, n, &mut body).unwrap();
    super::decode(&body, Format::Auto)
}

/// Events as pipeline items (each keeps its own origin).
pub fn items_of(events: &[AuditEvent]) -> Vec<Item> {
    events.iter().map(|e| Item { origin: e.origin.clone(), decoded: Decoded::Event(std::sync::Arc::new(e.clone())), raw: None }).collect()
}

/// The enriched, flagged fixture events with a machine-independent origin and enrichment source
/// (the replay records absolute paths), for tests that pin exact request bodies.
pub async fn stable_fixture() -> Vec<AuditEvent> {
    let mut evs = super::clickhouse::fixture_events().await;
    for e in &mut evs {
        e.origin.input = e.origin.input.rsplit('/').next().unwrap().into();
        if let Some(en) = &mut e.enrichment {
            en.source = Some("directory:tests/fixtures/keycloak/admin-api".into());
        }
    }
    evs
}
