//! The ClickHouse sink against a real ClickHouse server over the network (Debian's package, 18.16;
//! each test starts its own on free loopback ports): batching, concurrent writers, a server killed
//! mid-stream and restarted, a wrong password, a missing table, fail-over between URLs.
//!
//! 18.16 predates DateTime64, Map, Bool, LowCardinality-by-default and codecs, so these tests create
//! the events table with the older types that take the very same RowBinary bytes (Int64 milliseconds,
//! UInt8, String), and `details` as a JSON string (the sink's encoding for servers without Map),
//! derived from the shipped migration so the two cannot drift apart. The shipped DDL itself is proven on a current engine in `clickhouse_chdb.rs`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::services::{ClickHouseServer, CH_PASSWORD};
use common::sink_run::*;
use kcaudit::dead_letter::DeadLetterStore;
use kcaudit::sinks::clickhouse::config::ClickHouseOptions;
use kcaudit::sinks::clickhouse::ClickHouseSink;
use kcaudit::sinks::{BatchOptions, RetryOptions};

fn server_with_table() -> Option<ClickHouseServer> {
    let s = ClickHouseServer::start()?;
    s.create_legacy_events_table("kcaudit", "events");
    Some(s)
}

fn options(url: &str) -> ClickHouseOptions {
    ClickHouseOptions {
        enabled: true,
        urls: vec![url.to_string()],
        batch: BatchOptions { max_events: 2000, max_wait_ms: 50, queue_capacity: 4000 },
        retry: RetryOptions { max_attempts: 200, initial_backoff_ms: 50, max_backoff_ms: 1000 },
        ..Default::default()
    }
}

/// Row count after forcing the merges (OPTIMIZE ... FINAL does nothing while a background merge holds
/// the parts, so retry until the table has one part per partition).
async fn merged_count(s: &ClickHouseServer, table: &str) -> u64 {
    for _ in 0..100 {
        let _ = s.query(&format!("OPTIMIZE TABLE {table} FINAL"));
        let parts = s.count(&format!("SELECT count() FROM system.parts WHERE active AND database || '.' || table = '{table}'"));
        let partitions = s.count(&format!("SELECT uniqExact(partition) FROM system.parts WHERE active AND database || '.' || table = '{table}'"));
        if parts == partitions {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.count(&format!("SELECT count() FROM {table}"))
}

fn start(opts: &ClickHouseOptions) -> SinkRun {
    start_sink(Box::new(ClickHouseSink::new("clickhouse", opts).unwrap()), &opts.batch, &opts.retry)
}

fn inserts_so_far(s: &ClickHouseServer) -> u64 {
    s.count("SELECT sum(value) FROM system.events WHERE event = 'InsertQuery'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_concurrent_writers_land_exactly_once() {
    let Some(server) = server_with_table() else { return };
    let before = inserts_so_far(&server);
    // Three instances write their own 10k events each, and all three also receive the same 1k
    // events (an upstream that delivered to every instance).
    let shared = || generated(99, 1000);
    let runs: Vec<SinkRun> = (0..3).map(|_| start(&options(&server.url()))).collect();
    let mut tasks = Vec::new();
    for (i, run) in runs.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut items = generated(i as u64 + 1, 10_000);
            items.extend(shared());
            let reports = run.push_all(items).await;
            let delivered = run.metrics.render();
            run.pipeline.shutdown().await;
            (fates(&reports), delivered, why(&reports))
        }));
    }
    for t in tasks {
        let ((accepted, delivered, dead, failed), metrics, why) = t.await.unwrap();
        assert_eq!((accepted, delivered, dead, failed), (11_000, 11_000, 0, 0), "{why}");
        assert!(metrics.contains(r#"kcaudit_events_delivered_total{sink="clickhouse"} 11000"#), "{metrics}");
    }
    let inserts = inserts_so_far(&server) - before;
    // 33k rows with batches of up to 2000 events: batched (not one insert per webhook batch of 500
    // or per event), and the cap respected.
    assert!((17..=200).contains(&inserts), "{inserts} INSERT statements for 33k rows");
    assert_eq!(server.count("SELECT count() FROM kcaudit.events FINAL"), 31_000);
    assert_eq!(server.count("SELECT uniqExact(event_id) FROM kcaudit.events"), 31_000);
    assert_eq!(merged_count(&server, "kcaudit.events").await, 31_000, "after merging, every event is one row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_stream_then_restarted_loses_and_duplicates_nothing() {
    let Some(mut server) = server_with_table() else { return };
    let mut opts = options(&server.url());
    opts.batch = BatchOptions { max_events: 500, max_wait_ms: 20, queue_capacity: 1000 };
    opts.timeout_ms = 5000;
    let run = Arc::new(start(&opts));
    let items = generated(7, 30_000);
    let ids: HashSet<String> = items.iter().filter_map(|i| match &i.decoded {
        kcaudit::decode::Decoded::Event(e) => Some(e.id.clone()),
        _ => None,
    }).collect();
    assert_eq!(ids.len(), 30_000);
    let pusher = {
        let run = run.clone();
        tokio::spawn(async move { run.push_all(items).await })
    };
    // Let part of the stream land, then pull the plug.
    let t0 = Instant::now();
    while server.count("SELECT count() FROM kcaudit.events") < 3000 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no rows arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.resume();
    let reports = pusher.await.unwrap();
    assert_eq!(fates(&reports), (30_000, 30_000, 0, 0), "every event acknowledged as delivered once the server is back");
    let m = run.metrics.render();
    assert!(m.contains(r#"kcaudit_sink_errors_total{kind="transient",sink="clickhouse"}"#), "the outage was seen and retried: {m}");
    let raw = server.count("SELECT count() FROM kcaudit.events");
    assert!(raw >= 30_000, "nothing lost: {raw} rows");
    assert_eq!(server.count("SELECT count() FROM kcaudit.events FINAL"), 30_000);
    assert_eq!(server.count("SELECT uniqExact(event_id) FROM kcaudit.events"), 30_000);
    assert_eq!(merged_count(&server, "kcaudit.events").await, 30_000, "a batch retried after the crash collapsed into one copy");
    eprintln!("rows before the merge: {raw} (copies written by retries of inserts the server had committed)");
    Arc::try_unwrap(run).ok().unwrap().pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_missing_table_are_dead_lettered_never_acknowledged_as_delivered() {
    let Some(server) = server_with_table() else { return };
    // The right password for the `kcaudit` user works (read from the environment, as in production).
    std::env::set_var("KCAUDIT_TEST_CH_PASSWORD", CH_PASSWORD);
    let mut good = options(&server.url());
    good.user = "kcaudit".into();
    good.password_env = Some("KCAUDIT_TEST_CH_PASSWORD".into());
    let run = start(&good);
    let reports = run.push_all(generated(1, 100)).await;
    assert_eq!(fates(&reports), (100, 100, 0, 0), "{}", why(&reports));
    run.pipeline.shutdown().await;

    // A wrong password: every event dead-lettered with the server's words; none reported delivered.
    let pw_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw_file.path(), "not-the-password\n").unwrap();
    let mut bad = good.clone();
    bad.password_file = Some(pw_file.path().to_path_buf());
    let run = start(&bad);
    let reports = run.push_all(generated(2, 100)).await;
    assert_eq!(fates(&reports), (100, 0, 100, 0));
    let reason = &reports[0].items[0].dead_lettered[0].1;
    assert!(reason.contains("Code: 193") && reason.contains("Wrong password"), "{reason}");
    assert!(!reason.contains("not-the-password"), "the password itself is never in a reason");
    let m = run.metrics.render();
    assert!(m.contains(r#"kcaudit_sink_errors_total{kind="permanent",sink="clickhouse"}"#), "{m}");
    assert!(m.contains(r#"kcaudit_dead_letters_total{sink="clickhouse",stage="sink"} 100"#), "{m}");
    let dl = DeadLetterStore::read_all(&run.dlq).unwrap();
    assert_eq!(dl.len(), 100);
    assert!(dl.iter().all(|d| d.reason.contains("Wrong password") && d.event.is_some()), "each dead letter keeps the event for replay");
    run.pipeline.shutdown().await;

    // A missing table: same treatment (Vector dropped these batches and moved on).
    let mut missing = options(&server.url());
    missing.table = "no_such_table".into();
    let run = start(&missing);
    let reports = run.push_all(generated(3, 50)).await;
    assert_eq!(fates(&reports), (50, 0, 50, 0));
    let reason = &reports[0].items[0].dead_lettered[0].1;
    assert!(reason.contains("Code: 60") && reason.contains("no_such_table"), "{reason}");
    run.pipeline.shutdown().await;
    assert_eq!(server.count("SELECT count() FROM kcaudit.events"), 100, "only the good batch landed");

    // A table that lacks a column kcaudit writes (an old schema): the server refuses the rows; they
    // are dead-lettered locally and, since the credentials work, also in kcaudit.dead_letters (as
    // are the missing table's).
    server.exec("CREATE TABLE kcaudit.events_old AS kcaudit.events");
    server.exec("ALTER TABLE kcaudit.events_old DROP COLUMN severity_rank");
    let mut old = options(&server.url());
    old.table = "events_old".into();
    let run = start(&old);
    let reports = run.push_all(generated(4, 30)).await;
    assert_eq!(fates(&reports), (30, 0, 30, 0));
    let reason = &reports[0].items[0].dead_lettered[0].1;
    assert!(reason.contains("Code: 16") && reason.contains("severity_rank"), "{reason}");
    run.pipeline.shutdown().await;
    assert_eq!(server.count("SELECT count() FROM kcaudit.dead_letters WHERE error_code = 16 AND sink = 'clickhouse' AND event_json LIKE '{%'"), 30);
    assert_eq!(server.count("SELECT count() FROM kcaudit.dead_letters WHERE error_code = 60"), 50, "the missing table's batch is there too");
    assert_eq!(server.count("SELECT count() FROM kcaudit.dead_letters"), 80, "not the auth failures (that insert would fail the same way)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_url_when_a_replica_is_down() {
    let Some(server) = server_with_table() else { return };
    let dead = format!("http://127.0.0.1:{}", common::services::free_port());
    let mut opts = options(&server.url());
    opts.urls = vec![dead, server.url()];
    let run = start(&opts);
    let reports = run.push_all(generated(5, 2000)).await;
    assert_eq!(fates(&reports), (2000, 2000, 0, 0), "{}", why(&reports));
    run.pipeline.shutdown().await;
    assert_eq!(server.count("SELECT count() FROM kcaudit.events"), 2000);
    // Without a Map type the details travel as one JSON object per row.
    let details = server.query("SELECT details FROM kcaudit.events WHERE details != '{}' LIMIT 1 FORMAT TSVRaw").unwrap();
    let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_str(details.trim()).unwrap();
    assert!(!parsed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_an_internal_ca_and_a_client_certificate() {
    let pki = common::services::TestPki::generate();
    let Some(server) = ClickHouseServer::start_tls(&pki) else { return };
    server.create_legacy_events_table("kcaudit", "events");
    let url = format!("https://127.0.0.1:{}", server.https_port);
    let mut opts = options(&url);
    opts.tls.ca_file = Some(pki.path("ca.crt"));
    opts.tls.client_cert_file = Some(pki.path("client.crt"));
    opts.tls.client_key_file = Some(pki.path("client.key"));
    let run = start(&opts);
    let reports = run.push_all(generated(11, 300)).await;
    assert_eq!(fates(&reports), (300, 300, 0, 0), "{}", why(&reports));
    run.pipeline.shutdown().await;
    assert_eq!(server.count("SELECT count() FROM kcaudit.events"), 300);

    // The public roots do not vouch for the internal CA: refused, retried, then dead-lettered with
    // the certificate error (never sent in the clear, never reported delivered).
    let mut untrusted = options(&url);
    untrusted.retry = RetryOptions { max_attempts: 2, initial_backoff_ms: 10, max_backoff_ms: 10 };
    let run = start(&untrusted);
    let reports = run.push_all(generated(12, 10)).await;
    assert_eq!(fates(&reports), (10, 0, 10, 0));
    assert!(why(&reports).to_lowercase().contains("certificate"), "{}", why(&reports));
    run.pipeline.shutdown().await;

    // A config naming a key without its certificate is refused up front.
    let mut half = options(&url);
    half.tls.client_key_file = Some(pki.path("client.key"));
    let problems: Vec<String> = half.problems().iter().map(|p| p.to_string()).collect();
    assert!(problems.iter().any(|p| p.contains("sinks.clickhouse.tls") && p.contains("go together")), "{problems:?}");
    assert_eq!(server.count("SELECT count() FROM kcaudit.events"), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_tracked_idempotent_safe_to_run_concurrently_and_never_edited() {
    use kcaudit::sinks::clickhouse::schema::{migrate_with, Migration, SchemaParams};
    let Some(server) = ClickHouseServer::start() else { return };
    // Migrations in DDL this old server understands; the shipped ones are proven on chdb.
    const V1: Migration = Migration { version: 1, file: "0001_a.sql", sql: "CREATE TABLE IF NOT EXISTS ${database}.a ${on_cluster} (x String) ENGINE = MergeTree() ORDER BY x;\n" };
    const V2: Migration = Migration { version: 2, file: "0002_b.sql", sql: "-- a view over a\nCREATE TABLE IF NOT EXISTS ${database}.b (y UInt8) ENGINE = Log;\nCREATE VIEW IF NOT EXISTS ${database}.v AS SELECT x FROM ${database}.a;\n" };
    let opts = options(&server.url());
    let params = SchemaParams { database: "audit".into(), options: opts.schema.clone() };
    let client = kcaudit::sinks::clickhouse::client_for(&opts, &server.url(), None, false);

    // Three instances start at once.
    let runs: Vec<_> = (0..3)
        .map(|i| {
            let (client, params) = (client.clone(), params.clone());
            tokio::spawn(async move { migrate_with(&client, &params, &format!("instance-{i}"), &[V1, V2]).await })
        })
        .collect();
    for r in runs {
        let rep = r.await.unwrap().expect("concurrent migrations all succeed");
        assert_eq!(rep.applied.len() + rep.already.len(), 2);
    }
    assert_eq!(server.count("SELECT count() FROM system.tables WHERE database = 'audit' AND name IN ('a', 'b', 'v')"), 3);
    assert_eq!(server.count("SELECT count() FROM audit.kcaudit_migrations FINAL"), 2, "one record per migration");

    // Again: nothing to do.
    let rep = migrate_with(&client, &params, "later", &[V1, V2]).await.unwrap();
    assert_eq!((rep.applied.len(), rep.already.len()), (0, 2));

    // A new migration is applied alone.
    const V3: Migration = Migration { version: 3, file: "0003_c.sql", sql: "CREATE TABLE IF NOT EXISTS ${database}.c (z String) ENGINE = Log;\n" };
    let rep = migrate_with(&client, &params, "later", &[V1, V2, V3]).await.unwrap();
    assert_eq!(rep.applied, vec!["0003_c.sql".to_string()]);

    // An applied migration whose file changed is refused, naming it.
    const V2_EDITED: Migration = Migration { version: 2, file: "0002_b.sql", sql: "CREATE TABLE IF NOT EXISTS ${database}.b (y UInt16) ENGINE = Log;\n" };
    let err = migrate_with(&client, &params, "later", &[V1, V2_EDITED, V3]).await.unwrap_err().to_string();
    assert!(err.contains("0002_b.sql") && err.contains("must not be edited"), "{err}");
}
