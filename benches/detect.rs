//! Cost of the detection stage per event, and the size of its state.
//! Run: `cargo bench --bench detect`.
//!
//! - `detect/1000_events`: the fixture's token-exchange events, re-timed onto a steady clock and given
//!   fresh ids, pushed through the detector (state warm: the baselines exist).
//! - Before the timing runs, the bench builds a state holding 1,000,000 (realm, exchanger, audience)
//!   keys (1,000 clients × 1,000 audiences, each from its own network) and prints its resident size
//!   (bytes per key), its serialised size and the time to save it into redb.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use kcaudit::detect::{DetectOptions, Detector};

mod common;
use common::{fixture_events, rss_bytes};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Push a million exchanges through a fresh detector, the `i`-th by `pick(i)` = (client, audience,
/// event time offset in ms), and print the resident growth per key. The events are built and
/// dropped one at a time, so what stays resident is the state.
fn grow_state(what: &str, pick: impl Fn(i64) -> (i64, i64, i64)) -> Detector {
    let rss_before = rss_bytes();
    let mut d = Detector::new(DetectOptions::default());
    let base = fixture_events().into_iter().find(|e| e.event_type == "TOKEN_EXCHANGE" && e.token_exchange.as_ref().is_some_and(|t| !t.audiences.is_empty())).unwrap();
    let t0 = 1_773_043_084_120i64;
    for i in 0..1_000_000 {
        let (c, a, ms) = pick(i);
        let mut e = base.clone();
        e.client_id = Some(format!("client-{c}").into());
        e.token_exchange.as_mut().unwrap().audiences = vec![format!("audience-{a}").into()];
        e.time = chrono::DateTime::from_timestamp_millis(t0 + ms);
        d.process(&mut e);
    }
    let resident = rss_bytes().saturating_sub(rss_before);
    println!(
        "detect {what}: {:.1} MiB resident for {} keys = {:.0} bytes per key",
        resident as f64 / 1048576.0,
        d.state.key_count(),
        resident as f64 / d.state.key_count().max(1) as f64
    );
    d
}

/// Resident bytes per key of the baselines alone: the same million keys, but each client's events
/// 700 s apart (past `spray_window`), so its sliding windows hold one entry each.
fn baseline_size() -> Detector {
    grow_state("baselines in memory (windows drained)", |i| (i % 1000, i / 1000, i * 700))
}

fn state_size() {
    // Client by client, a millisecond apart: every key is also in a full spraying window.
    let d = grow_state("state in memory (every key also in a full spraying window)", |i| (i / 1000, i % 1000, i));
    let bytes = d.state.approx_bytes();
    let dir = tempfile::tempdir().unwrap();
    let mut store = kcaudit::detect::store::StateStore::open(&dir.path().join("s.redb")).unwrap();
    let started = std::time::Instant::now();
    store.save(&d.state).unwrap();
    let took = started.elapsed();
    let file = std::fs::metadata(dir.path().join("s.redb")).unwrap().len();
    println!(
        "detect state: {} keys, {:.1} MiB serialised, {:.1} MiB redb file, saved in {:.2} s",
        d.state.key_count(),
        bytes as f64 / 1048576.0,
        file as f64 / 1048576.0,
        took.as_secs_f64()
    );
}

fn bench(c: &mut Criterion) {
    if common::measuring_memory() {
        // Each measurement is resident growth, so the first one's state stays alive through the
        // second (memory it freed would be reused and read as zero).
        let kept = baseline_size();
        state_size();
        drop(kept);
    }
    let base = fixture_events();
    let t0 = 1_773_043_084_120i64;
    let mut warm = Detector::new(DetectOptions::default());
    for mut e in common::retimed(&base, 20_000, t0, 1000, "bench") {
        warm.process(&mut e);
    }
    let batch = common::retimed(&base, 1000, t0 + 20_000_000, 1000, "bench");
    let mut g = c.benchmark_group("detect");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("1000_events", |b| common::bench_detector(b, &warm, &batch));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
