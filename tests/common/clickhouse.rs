//! Shared ClickHouse test helpers: the enriched fixture timeline, the rendered migrations, a capture
//! endpoint that records the sink's INSERTs byte for byte, and the chdb step that loads them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::*;
use kcaudit::decode::Format;
use kcaudit::event::AuditEvent;
use kcaudit::sinks::clickhouse::config::{Auto, ClickHouseOptions, Compression, SchemaOptions};
use kcaudit::sinks::clickhouse::schema::{statements, SchemaParams, MIGRATIONS};
use kcaudit::sinks::clickhouse::ClickHouseSink;
use kcaudit::sinks::Sink;

/// What the capture endpoint saw: (query, body) per INSERT.
pub type Captured = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A stand-in that speaks just enough of ClickHouse's HTTP interface for the sink: the version probe
/// and INSERTs (recorded, answered 200).
pub async fn capture_endpoint(version: &'static str) -> (String, Captured) {
    use axum::body::Bytes;
    use axum::extract::{Query, State};
    let seen: Captured = Arc::default();
    async fn handle(State((seen, version)): State<(Captured, &'static str)>, Query(q): Query<BTreeMap<String, String>>, body: Bytes) -> Vec<u8> {
        let mut query = q.get("query").cloned().unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        // The HTTP `database` parameter is the default database of the statement: make it explicit
        // so the statement can be replayed as is.
        if let (Some(db), Some(rest)) = (q.get("database"), query.strip_prefix("INSERT INTO ")) {
            query = format!("INSERT INTO `{db}`.{rest}");
        }
        if query.contains("SELECT version()") {
            // RowBinary String: LEB128 length, then the bytes.
            let mut out = vec![version.len() as u8];
            out.extend_from_slice(version.as_bytes());
            return out;
        }
        seen.lock().unwrap().push((query, body.to_vec()));
        Vec::new()
    }
    let app = axum::Router::new().route("/", axum::routing::post(handle).get(handle)).with_state((seen.clone(), version));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// The enriched, flagged fixture timeline (user and admin events), as detection tests produce it.
pub async fn fixture_events() -> Vec<AuditEvent> {
    let dir = tempfile::tempdir().unwrap();
    let snap = format!("enrich.directory={:?}", fixture("keycloak/admin-api").display().to_string());
    let inputs = vec![fixture("keycloak/keycloak-native-events.jsonl"), fixture("keycloak/keycloak-native-admin-events.jsonl")];
    let (evs, rep) = replay(dir.path(), &[&snap, "detect.learning_period=\"1d\""], &inputs, Format::Auto).await;
    assert_eq!(rep.totals.rejected, 0);
    assert_eq!(evs.len(), 67);
    evs
}

pub fn schema_params() -> SchemaParams {
    // A TTL of ten years: the shipped clause is exercised, and the 2026 fixture does not expire (a TTL
    // past 2106 would wrap around ClickHouse's DateTime range and expire everything at once).
    SchemaParams { database: "kcaudit".into(), options: SchemaOptions { ttl_days: 3650, ..Default::default() } }
}

/// Every statement of every migration, in order, preceded by the bootstrap statements.
pub fn migration_steps(p: &SchemaParams) -> Vec<(String, &'static str)> {
    let mut steps: Vec<(String, &str)> = p.bootstrap().into_iter().map(|s| (s, "TabSeparated")).collect();
    for m in MIGRATIONS {
        steps.extend(statements(&p.render(m.sql)).into_iter().map(|s| (s, "TabSeparated")));
    }
    steps
}

/// Capture the sink's INSERTs for `events`; returns (query, body) pairs.
pub async fn captured_inserts(events: &[AuditEvent], max_rows_per_insert: usize) -> Vec<(String, Vec<u8>)> {
    let (url, seen) = capture_endpoint("26.9.2.1").await;
    let opts = ClickHouseOptions {
        enabled: true,
        urls: vec![url],
        compression: Compression::None,
        validation: Auto::Off,
        max_rows_per_insert,
        ..Default::default()
    };
    let mut sink = ClickHouseSink::new("clickhouse", &opts).unwrap();
    let arcs: Vec<Arc<AuditEvent>> = events.iter().cloned().map(Arc::new).collect();
    let report = sink.write(&arcs).await.expect("the capture endpoint accepts everything");
    assert!(report.rejected.is_empty() && report.retry.is_empty(), "{report:?}");
    let seen = seen.lock().unwrap().clone();
    seen
}

/// Load one captured INSERT into chdb with the very statement and bytes the sink sent.
pub fn load_step(query: &str, body: &[u8], dir: &Path, n: usize) -> (String, &'static str) {
    let file: PathBuf = dir.join(format!("insert-{n}.bin"));
    std::fs::write(&file, body).unwrap();
    assert!(query.ends_with("FORMAT RowBinary"), "the sink sends plain RowBinary when validation is off: {query}");
    let sql = query.replacen(" FORMAT RowBinary", &format!(" FROM INFILE '{}' FORMAT RowBinary", file.display()), 1);
    (sql, "TabSeparated")
}

