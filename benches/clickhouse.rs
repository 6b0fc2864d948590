//! Rows per second from `kcaudit replay --to-sinks` into a real ClickHouse server on this machine,
//! with the batch size and the server's CPU share. Run: `cargo bench --bench clickhouse`
//! (N=200000 by default; `KCAUDIT_BENCH_N` changes it). Under `cargo test` it is a 2,000-row smoke run.
//!
//! The server is Debian's clickhouse-server (18.16), started privately on a free loopback port with
//! its data in a temp dir; the table is the shipped events table in the types 18.16 supports (see
//! `tests/common/services.rs`). Replay runs the whole pipeline: decode, dedup, enrichment (none
//! configured), detection, then the ClickHouse sink (RowBinary, LZ4) with the given batch size.

#[allow(dead_code)]
#[path = "../tests/common/services.rs"]
mod services;

use std::time::Instant;

use kcaudit::config::Config;
use kcaudit::decode::Format;
use kcaudit::sources::replay::{run, ReplayRequest};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: u64 = if bench { std::env::var("KCAUDIT_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000) } else { 2_000 };
    let batches: &[usize] = if bench { &[1_000, 10_000, 50_000] } else { &[1_000] };
    let Some(server) = services::ClickHouseServer::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("events.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    kcaudit::loadgen::write_file(kcaudit::loadgen::GenOptions::default(), n, &mut f).unwrap();
    drop(f);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("| batch (events) | rows | seconds | rows/s | ClickHouse CPU s | ClickHouse CPU share of 2 cores | kcaudit CPU s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (i, &batch) in batches.iter().enumerate() {
        let table = format!("events_b{batch}");
        server.create_legacy_events_table("kcaudit", &table);
        let data = work.path().join(format!("data-{i}"));
        let config = Config::load(
            None,
            &[
                format!("data_dir={:?}", data.display().to_string()),
                "sinks.audit_log.enabled=false".into(),
                "sinks.clickhouse.enabled=true".into(),
                format!("sinks.clickhouse.urls=[{:?}]", server.url()),
                format!("sinks.clickhouse.table={table:?}"),
                format!("sinks.clickhouse.batch.max_events={batch}"),
                format!("sinks.clickhouse.batch.queue_capacity={}", batch * 2),
                "log.level=\"warn\"".into(),
            ],
        )
        .unwrap();
        let req = ReplayRequest { inputs: vec![input.display().to_string()], format: Format::Auto, out: None, progress: false, state: None, to_sinks: true };
        let pid = server.pid().unwrap();
        let (ch0, me0, t0) = (cpu_seconds(pid), cpu_seconds(std::process::id()), Instant::now());
        let report = rt.block_on(run(&config, &req)).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let (ch, me) = (cpu_seconds(pid) - ch0, cpu_seconds(std::process::id()) - me0);
        assert_eq!((report.totals.accepted, report.totals.dead_lettered, report.totals.failed), (n, 0, 0), "every row delivered");
        let rows = server.count(&format!("SELECT count() FROM kcaudit.{table} FINAL"));
        assert_eq!(rows, n, "exact row count in ClickHouse");
        println!("| {batch} | {rows} | {secs:.2} | {:.0} | {ch:.2} | {:.0} % | {me:.2} |", rows as f64 / secs, ch / secs / 2.0 * 100.0);
    }
}
