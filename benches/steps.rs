//! Micro-benchmarks of every hot step, per event, against the floor of just parsing the JSON.
//! Run: `cargo bench --bench steps` (`-- floor` or `-- encode` to pick groups).
//!
//! All groups work on batches of 1,000 events so criterion's per-iteration overhead vanishes; the
//! reported throughput (elements/s) is events per second on one core.
//!
//! - `floor/*`: serde_json alone. `keycloak_borrowed` parses the load generator's NDJSON (the shape
//!   `scripts/bench.sh` posts) into a borrowed struct of Keycloak's `EventRepresentation` fields — the
//!   issue's floor; `canonical_owned` parses kcaudit's own canonical JSON into [`AuditEvent`].
//!   The pipeline's cost per event is judged against these (target: at most 3×).
//! - `decode/*`: `decode_body` per wire format (the fixture renderings, and the loadgen NDJSON).
//! - `dedup/*`: the dedup window's check on fresh ids (the common case). Before timing it, the bench
//!   fills the default window (a million UUID ids) and prints its resident size per id.
//! - `detect/*`: the detector on a warm state, with all rules, with none (state bookkeeping only) and
//!   with each rule alone.
//! - `encode/*`: every output encoder: audit-log JSON lines, Splunk HEC envelopes, ECS documents,
//!   OCSF records, CEF, LEEF, syslog RFC 5424, and ClickHouse RowBinary (through the official
//!   client's insert into a loopback HTTP endpoint that discards the body: serialisation, LZ4 and
//!   the HTTP framing, without a server's cost). Enrichment's cached path is `benches/enrich.rs`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde::Deserialize;

use kcaudit::decode::{decode_body, Context, Decoded, DecodeOptions, Format, Item};
use kcaudit::detect::config::RuleOverride;
use kcaudit::detect::{DetectOptions, Detector, RULES};
use kcaudit::event::{AuditEvent, Origin};
use kcaudit::pipeline::dedup::Dedup;

mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const N: usize = 1000;

/// Keycloak's `EventRepresentation`, borrowed where serde can: the least any consumer must do.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FloorEvent<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    time: i64,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    realm_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    client_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ip_address: Option<Cow<'a, str>>,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow)]
    details: Option<HashMap<Cow<'a, str>, Cow<'a, str>>>,
}

fn loadgen_body(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    kcaudit::loadgen::write_file(kcaudit::loadgen::GenOptions::default(), n as u64, &mut out).unwrap();
    out
}

fn decode(body: &[u8], format: Format, noise: bool) -> Vec<Item> {
    let opts = DecodeOptions { max_records_per_body: usize::MAX, ..DecodeOptions::default() };
    let ctx = Context { opts: &opts, tz: opts.time_zone().unwrap(), deliveries: None, lines_may_be_noise: noise };
    let mut items = Vec::new();
    decode_body(body, format, &Origin::default(), &ctx, &mut items);
    items
}

fn events_of(items: Vec<Item>) -> Vec<AuditEvent> {
    items.into_iter().filter_map(|i| if let Decoded::Event(e) = i.decoded { Some(std::sync::Arc::unwrap_or_clone(e)) } else { None }).collect()
}

/// The loadgen stream decoded: many clients, users and audiences, 2 % errors.
fn loadgen_events(n: usize) -> Vec<AuditEvent> {
    events_of(decode(&loadgen_body(n), Format::Auto, false))
}

fn floor(c: &mut Criterion) {
    let body = loadgen_body(N);
    let text = std::str::from_utf8(&body).unwrap();
    let canonical: Vec<String> = loadgen_events(N).iter().map(|e| serde_json::to_string(e).unwrap()).collect();
    let mut g = c.benchmark_group("floor");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("keycloak_borrowed", |b| {
        b.iter(|| text.lines().map(|l| serde_json::from_str::<FloorEvent>(l).unwrap().time).sum::<i64>())
    });
    g.bench_function("canonical_owned", |b| {
        b.iter(|| canonical.iter().map(|l| serde_json::from_str::<AuditEvent>(l).unwrap()).count())
    });
    g.finish();
}

fn decoders(c: &mut Criterion) {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keycloak/");
    let cases: Vec<(&str, Format, bool, Vec<u8>)> = vec![
        ("loadgen_ndjson_auto", Format::Auto, false, loadgen_body(N)),
        ("loadgen_ndjson_keycloak", Format::Keycloak, false, loadgen_body(N)),
        ("keycloak_native", Format::Auto, false, std::fs::read(format!("{fixtures}keycloak-native-events.jsonl")).unwrap()),
        ("keycloak_kafka", Format::Auto, false, std::fs::read(format!("{fixtures}keycloak-kafka-events.jsonl")).unwrap()),
        ("p2inc_webhook", Format::Auto, false, std::fs::read(format!("{fixtures}p2inc-webhook.jsonl")).unwrap()),
        ("jboss_logging", Format::Auto, true, std::fs::read(format!("{fixtures}jboss-logging.log")).unwrap()),
        ("kcaudit_canonical", Format::Auto, false, {
            let mut out = Vec::new();
            for e in loadgen_events(N) {
                serde_json::to_writer(&mut out, &e).unwrap();
                out.push(b'\n');
            }
            out
        }),
    ];
    let mut g = c.benchmark_group("decode");
    for (name, format, noise, body) in &cases {
        let n = decode(body, *format, *noise).iter().filter(|i| matches!(i.decoded, Decoded::Event(_))).count();
        assert!(n > 0, "{name}: no events decoded");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(*name, |b| b.iter(|| decode(body, *format, *noise)));
    }
    g.finish();
}

/// Resident bytes per remembered id of a full default window: a million Keycloak (UUID) ids, the
/// events built and dropped one at a time, so what stays resident is the window. Measured on a second
/// window while the first is kept: the first's growth can reuse memory the earlier groups freed (and
/// would read low).
fn dedup_size() {
    let defaults = kcaudit::pipeline::DedupOptions::default();
    let mut e = loadgen_events(1).remove(0);
    let mut fill = |round: u128| {
        let mut d = Dedup::new(defaults.window_secs, defaults.max_entries);
        for i in 0..defaults.max_entries as u128 {
            e.id = uuid::Uuid::from_u128((round << 64 | i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)).to_string();
            d.check(&e);
        }
        d
    };
    let first = fill(0);
    let before = common::rss_bytes();
    let d = fill(1);
    let resident = common::rss_bytes().saturating_sub(before);
    println!(
        "dedup window: {} ids, {:.1} MiB resident = {:.0} bytes per id",
        d.len(),
        resident as f64 / 1048576.0,
        resident as f64 / d.len().max(1) as f64
    );
    drop(first);
}

fn dedup(c: &mut Criterion) {
    if common::measuring_memory() {
        dedup_size();
    }
    let evs = loadgen_events(N);
    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(N as u64));
    let mut round = 0u64;
    g.bench_function("fresh_ids_window_100k", |b| {
        b.iter_batched(
            || {
                // A window already holding 100,000 ids, then 1,000 new ones.
                round += 1;
                let mut d = Dedup::new(3600, 1_000_000);
                let mut warm = evs[0].clone();
                for i in 0..100_000 {
                    warm.id = format!("warm-{round}-{i}");
                    d.check(&warm);
                }
                let fresh: Vec<AuditEvent> = evs.iter().cloned().enumerate().map(|(i, mut e)| { e.id = format!("new-{round}-{i}"); e }).collect();
                (d, fresh)
            },
            |(mut d, fresh)| {
                for e in &fresh {
                    d.check(e);
                }
                (d, fresh)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn detection(c: &mut Criterion) {
    let base = loadgen_events(20_000);
    let t0 = 1_773_043_084_120i64;
    let with = |only: Option<&str>| {
        let mut opts = DetectOptions::default();
        if let Some(keep) = only {
            for r in RULES {
                if *r != keep {
                    opts.rules.insert((*r).to_string(), RuleOverride { enabled: Some(false), ..Default::default() });
                }
            }
        }
        let mut d = Detector::new(opts);
        for mut e in common::retimed(&base, base.len(), t0, 10, "warm") {
            d.process(&mut e);
        }
        d
    };
    let batch = common::retimed(&base, N, t0 + base.len() as i64 * 10, 10, "bench");
    // Warm detectors are built inside the bench closure, so only selected benchmarks pay for them.
    let run = |g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, only: Option<&str>| {
        g.bench_function(name, |b| {
            let warm = with(only);
            common::bench_detector(b, &warm, &batch)
        });
    };
    let mut g = c.benchmark_group("detect");
    g.throughput(Throughput::Elements(N as u64));
    run(&mut g, "all_rules", None);
    run(&mut g, "no_rules", Some(""));
    g.finish();
    let mut g = c.benchmark_group("detect_rule");
    g.throughput(Throughput::Elements(N as u64));
    g.warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    for r in RULES {
        run(&mut g, r, Some(r));
    }
    g.finish();
}

/// A loopback HTTP endpoint that reads and discards every request body and answers 200: the
/// ClickHouse client's INSERT path without a server behind it.
fn discard_server(rt: &tokio::runtime::Runtime) -> String {
    use axum::{body::Bytes, routing::post, Router};
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", post(|_body: Bytes| async { "" }));
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn encoders(c: &mut Criterion) {
    use kcaudit::sinks::encode::{cef, ecs, leef, ocsf, syslog};
    let mut evs = loadgen_events(N);
    // Realistic enrichment and findings on a share of them, so the encoders see every field.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keycloak/admin-api");
    let config = kcaudit::config::Config::load(None, &[format!("enrich.directory={dir:?}")]).unwrap();
    let enricher = config.enricher(None, kcaudit::metrics::Metrics::new()).unwrap().unwrap();
    futures::executor::block_on(enricher.enrich_all(evs.iter_mut()));
    let mut d = Detector::new(DetectOptions { learning_period: std::time::Duration::ZERO, min_observations: 1, ..DetectOptions::default() });
    for e in evs.iter_mut() {
        d.process(e);
    }
    let evs: Vec<Arc<AuditEvent>> = evs.into_iter().map(Arc::new).collect();
    let hec = kcaudit::sinks::splunk_hec::EnvelopeSettings::from_options(&Default::default());
    let cef_o = cef::CefOptions::default();
    let leef_o = leef::LeefOptions::default();
    let sys = syslog::SyslogFormat::default();

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(N as u64));
    // As the audit log writes them: one memo of the enrichment's shared parts kept across batches.
    let mut memo = kcaudit::json_line::Memo::default();
    g.bench_function("audit_log_json_lines", |b| b.iter(|| kcaudit::sinks::file::encode_lines(&evs, &mut memo).len()));
    g.bench_function("splunk_hec_envelope", |b| b.iter(|| evs.iter().map(|e| hec.envelope(e).len()).sum::<usize>()));
    g.bench_function("ecs_document", |b| b.iter(|| evs.iter().map(|e| serde_json::to_vec(&ecs::document(e)).unwrap().len()).sum::<usize>()));
    g.bench_function("ocsf_records", |b| {
        b.iter(|| evs.iter().flat_map(|e| ocsf::records(e)).map(|r| serde_json::to_vec(&r).unwrap().len()).sum::<usize>())
    });
    g.bench_function("cef", |b| b.iter(|| evs.iter().map(|e| cef::event(e, &cef_o).len()).sum::<usize>()));
    g.bench_function("leef", |b| b.iter(|| evs.iter().map(|e| leef::event(e, &leef_o).len()).sum::<usize>()));
    g.bench_function("syslog_rfc5424", |b| b.iter(|| evs.iter().map(|e| syslog::frame_event(&sys, e).len()).sum::<usize>()));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let url = discard_server(&rt);
    let client = kcaudit::sinks::clickhouse::client_for(&Default::default(), &url, None, false);
    let now = chrono::Utc::now().timestamp_millis();
    g.bench_function("clickhouse_rowbinary_lz4", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut insert = client.insert::<kcaudit::sinks::clickhouse::row::EventRow<'_>>("events").await.unwrap();
                for e in &evs {
                    insert.write(&kcaudit::sinks::clickhouse::row::EventRow::new(e, now)).await.unwrap();
                }
                insert.end().await.unwrap();
            })
        })
    });
    g.finish();
}

criterion_group!(benches, floor, decoders, dedup, detection, encoders);
criterion_main!(benches);
