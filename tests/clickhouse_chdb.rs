//! The ClickHouse schema and the sink's bytes against a current ClickHouse engine (chdb, in-process
//! through Python): every migration applies (twice: idempotent), the exact RowBinary body the sink
//! sends for the shared fixture timeline loads into the events table and reads back equal, and the
//! findings/aggregate views fill with what the timeline implies.
//!
//! The sink talks to a capture endpoint here (it answers `SELECT version()` and records each INSERT's
//! query and body); the recorded bytes are then loaded with `INSERT ... FROM INFILE`, so what is tested
//! is exactly what a current server would receive.

mod common;

use std::collections::BTreeMap;

use common::clickhouse::*;
use common::services::{chdb, chdb_python};
use kcaudit::event::AuditEvent;
use kcaudit::sinks::clickhouse::row::EventRow;
use serde_json::Value;

/// Column list of the captured INSERT (`INSERT INTO db.t(a,b,...)`), unquoted.
fn columns(query: &str) -> Vec<String> {
    let open = query.find('(').unwrap();
    let close = query.find(')').unwrap();
    query[open + 1..close].split(',').map(|c| c.trim().trim_matches('`').trim_matches('"').to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_and_the_sinks_bytes_read_back_equal_on_a_current_engine() {
    let Some(python) = chdb_python() else { return };
    let events = fixture_events().await;
    let inserts = captured_inserts(&events, 40).await;
    assert_eq!(inserts.len(), 2, "67 events with max_rows_per_insert=40 make two INSERTs");

    let work = tempfile::tempdir().unwrap();
    let p = schema_params();
    let mut steps = migration_steps(&p);
    let n_migration = steps.len();
    steps.extend(migration_steps(&p)); // a second run must be a no-op, not an error
    for (i, (q, body)) in inserts.iter().enumerate() {
        steps.push(load_step(q, body, work.path(), i));
    }
    let cols = columns(&inserts[0].0);
    // Read back each column in its JSON form: DateTime64 as epoch milliseconds, the rest as is.
    let select: Vec<String> = cols
        .iter()
        .map(|c| match c.as_str() {
            "event_time" | "received_at" | "inserted_at" => format!("toUnixTimestamp64Milli({c}) AS {c}"),
            _ => c.clone(),
        })
        .collect();
    steps.push((format!("SELECT {} FROM kcaudit.events ORDER BY event_id SETTINGS output_format_json_quote_64bit_integers = 0", select.join(", ")), "JSONEachRow"));
    steps.push(("SELECT name, type FROM system.columns WHERE database = 'kcaudit' AND table = 'events' ORDER BY position".into(), "TabSeparated"));
    let results = chdb(&python, &work.path().join("db"), &steps);
    for (i, (s, r)) in steps.iter().zip(&results).enumerate() {
        assert!(r.ok, "step {i} failed{}: {}\n{}", if i >= n_migration && i < 2 * n_migration { " (second migration run)" } else { "" }, r.error, s.0);
    }

    // Every column the table has is written by the sink (no column silently left to its default).
    let table_cols: Vec<String> = results.last().unwrap().output.lines().map(|l| l.split('\t').next().unwrap().to_string()).collect();
    let mut a = table_cols.clone();
    let mut b = cols.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the events table and the sink's row have the same columns");

    // Read back equal, row by row and column by column.
    let got: Vec<Value> = results[results.len() - 2].output.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let inserted_at = got[0]["inserted_at"].as_i64().unwrap();
    let mut want: Vec<Value> = events.iter().map(|e| serde_json::to_value(EventRow::new(e, inserted_at)).unwrap()).collect();
    want.sort_by(|x, y| x["event_id"].as_str().cmp(&y["event_id"].as_str()));
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        for c in &cols {
            assert_eq!(g[c], w[c], "event {} column {c}", w["event_id"]);
        }
    }
    // The JSON copy is the whole canonical event.
    let back: AuditEvent = serde_json::from_str(got.iter().find(|g| g["finding_rules"].as_array().is_some_and(|a| !a.is_empty())).unwrap()["event_json"].as_str().unwrap()).unwrap();
    assert!(events.contains(&back));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_fill_with_what_the_timeline_implies() {
    let Some(python) = chdb_python() else { return };
    let events = fixture_events().await;
    let inserts = captured_inserts(&events, 10_000).await;
    let work = tempfile::tempdir().unwrap();
    let mut steps = migration_steps(&schema_params());
    let n = steps.len();
    for (i, (q, body)) in inserts.iter().enumerate() {
        steps.push(load_step(q, body, work.path(), i));
    }
    let queries = [
        // 0: findings: one row per (event, rule)
        "SELECT count(), uniqExact(event_id) FROM kcaudit.findings",
        // 1: pairs first seen on the last day
        "SELECT exchanger, audience FROM kcaudit.exchanger_audience_pairs GROUP BY realm, exchanger, audience HAVING min(first_seen) >= '2026-03-11 00:00:00' ORDER BY exchanger, audience",
        // 2: total events from the hourly aggregate
        "SELECT countMerge(events) FROM kcaudit.client_hourly",
        // 3: subject-client pairs
        "SELECT exchanger, subject_token_client, countMerge(exchanges) FROM kcaudit.exchanger_subject_client_pairs GROUP BY realm, exchanger, subject_token_client ORDER BY exchanger, subject_token_client",
    ];
    steps.extend(queries.iter().map(|q| (q.to_string(), "TabSeparated")));
    let results = chdb(&python, &work.path().join("db"), &steps);
    for (s, r) in steps.iter().zip(&results) {
        assert!(r.ok, "{}: {}", s.0, r.error);
    }
    let out = |i: usize| results[n + inserts.len() + i].output.clone();

    let findings: usize = events.iter().map(|e| e.findings.len()).sum();
    let flagged = events.iter().filter(|e| !e.findings.is_empty()).count();
    assert!(findings > 0);
    assert_eq!(out(0).trim(), format!("{findings}\t{flagged}"));

    let new_pairs = out(1);
    assert!(new_pairs.lines().any(|l| l == "api-gateway\thr-records-api"), "S1's pair is newly seen on day 3: {new_pairs}");
    // The same set computed from the events themselves.
    let mut first: BTreeMap<(String, String), String> = BTreeMap::new();
    for e in &events {
        let (Some(te), Some(t)) = (&e.token_exchange, e.time) else { continue };
        let Some(x) = te.exchanger.clone().filter(|x| !x.is_empty()) else { continue };
        for a in &te.audiences {
            let ts = t.format("%Y-%m-%d %H:%M:%S%.3f").to_string();
            let slot = first.entry((x.to_string(), a.to_string())).or_insert(ts.clone());
            if ts < *slot {
                *slot = ts;
            }
        }
    }
    let want: Vec<String> = first.iter().filter(|(_, t)| t.as_str() >= "2026-03-11").map(|((x, a), _)| format!("{x}\t{a}")).collect();
    assert_eq!(new_pairs.lines().map(String::from).collect::<Vec<_>>(), want);

    assert_eq!(out(2).trim(), events.len().to_string());
    let chained = out(3);
    assert!(chained.lines().any(|l| l.starts_with("orders-api\tapi-gateway\t")), "orders-api exchanges tokens issued to api-gateway: {chained}");
}
