//! Shared by the benches: the fixture timeline, decoded once; the detector's stream and timing loop.
//! Each bench uses a part of this module.
#![allow(dead_code)]

use kcaudit::decode::{decode_body, Context, Decoded, DecodeOptions, Format};
use kcaudit::event::{AuditEvent, Origin};

/// Every event of the native fixture timeline, decoded.
pub fn fixture_events() -> Vec<AuditEvent> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keycloak/keycloak-native-events.jsonl");
    let body = std::fs::read(path).unwrap();
    let opts = DecodeOptions::default();
    let ctx = Context { opts: &opts, tz: opts.time_zone().unwrap(), deliveries: None, lines_may_be_noise: false };
    let mut items = Vec::new();
    decode_body(&body, Format::Auto, &Origin::default(), &ctx, &mut items);
    items.into_iter().filter_map(|i| if let Decoded::Event(e) = i.decoded { Some(std::sync::Arc::unwrap_or_clone(e)) } else { None }).collect()
}

/// `base` repeated to `n` events with fresh ids (`{tag}-{i}`) on a steady clock, `step_ms` apart from
/// `start_ms`: a stream the detector sees as new traffic, however often the base repeats.
pub fn retimed(base: &[AuditEvent], n: usize, start_ms: i64, step_ms: i64, tag: &str) -> Vec<AuditEvent> {
    (0..n)
        .map(|i| {
            let mut e = base[i % base.len()].clone();
            e.id = format!("{tag}-{i}");
            e.time = chrono::DateTime::from_timestamp_millis(start_ms + i as i64 * step_ms);
            e
        })
        .collect()
}

/// Time `batch` through a copy of `warm` (its options and state; no store), fresh for every sample so
/// each one starts from the same state.
pub fn bench_detector<M: criterion::measurement::Measurement>(b: &mut criterion::Bencher<'_, M>, warm: &kcaudit::detect::Detector, batch: &[AuditEvent]) {
    use kcaudit::detect::Detector;
    b.iter_batched(
        || (batch.to_vec(), Detector { opts: warm.opts.clone(), state: warm.state.clone(), store: None, partitions: None }),
        |(mut evs, mut d)| {
            for e in evs.iter_mut() {
                d.process(e);
            }
            (evs, d)
        },
        criterion::BatchSize::LargeInput,
    )
}

/// Resident memory of this process, in bytes (Linux).
#[allow(dead_code)] // not every bench measures memory
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

/// True under `cargo bench`, not when `cargo test --all-targets` smoke-runs the benches; then the
/// process gets the binary's memory settings (`kcaudit::process_memory::tune`), so the resident sizes
/// measured next are what kcaudit runs with.
#[allow(dead_code)] // not every bench measures memory
pub fn measuring_memory() -> bool {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    if benchmarking {
        kcaudit::process_memory::tune();
    }
    benchmarking
}
