//! Cost of the enrichment stage on the cached path (directory in memory; the admin API's cache is hit
//! the same way after the first lookup). Run: `cargo bench --bench enrich`.
//!
//! Reports time per batch of 1000 token-exchange events; divide by 1000 for the per-event cost.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use kcaudit::config::Config;
use kcaudit::event::AuditEvent;

mod common;
use kcaudit::metrics::Metrics;

// The same allocator as the kcaudit binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn events() -> Vec<AuditEvent> {
    let te: Vec<AuditEvent> = common::fixture_events().into_iter().filter(|e| e.token_exchange.is_some()).collect();
    te.iter().cycle().take(1000).cloned().collect()
}

fn bench(c: &mut Criterion) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keycloak/admin-api");
    let config = Config::load(None, &[format!("enrich.directory={dir:?}"), "enrich.reload_check_secs=3600".into()]).unwrap();
    let enricher = config.enricher(None, Metrics::new()).unwrap().unwrap();
    let batch = events();
    let mut g = c.benchmark_group("enrich");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("directory_1000_token_exchanges", |b| {
        b.iter_batched(
            || batch.clone(),
            |mut evs| {
                futures::executor::block_on(enricher.enrich_all(evs.iter_mut()));
                evs
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
