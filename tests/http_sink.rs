//! The generic HTTP sink against an in-test collector: NDJSON / JSON array / one request per event,
//! canonical / OCSF / ECS records, bearer auth and gzip, routes, transient and permanent failures.

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::clickhouse::fixture_events;
use common::sink_run::{fates, start_sink};
use kcaudit::decode::Item;
use kcaudit::event::{AuditEvent, Severity};
use kcaudit::sinks::encode::{ocsf, JsonFormat};
use kcaudit::sinks::http::{AuthStrategy, Encoding, HttpSink, HttpSinkOptions};
use kcaudit::sinks::http_client::SecretOptions;
use kcaudit::sinks::{BatchOptions, RetryOptions};
use serde_json::Value;

#[derive(Default)]
struct Collector {
    /// (headers, decompressed body) per accepted request.
    seen: Vec<(HeaderMap, Vec<u8>)>,
    /// Status codes to answer next, in order (then 200).
    script: Vec<(u16, &'static str)>,
}

async fn collector() -> (String, Arc<Mutex<Collector>>) {
    let state: Arc<Mutex<Collector>> = Arc::default();
    let s = state.clone();
    let app = axum::Router::new().route(
        "/ingest",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move {
                let mut c = s.lock().unwrap();
                if !c.script.is_empty() {
                    let (code, text) = c.script.remove(0);
                    return (StatusCode::from_u16(code).unwrap(), text.to_string());
                }
                let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
                    use std::io::Read;
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).unwrap();
                    out
                } else {
                    body.to_vec()
                };
                c.seen.push((headers, body));
                (StatusCode::OK, "ok".to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

fn items(events: &[AuditEvent]) -> Vec<Item> {
    common::sink_run::items_of(events)
}

fn options(url: &str) -> HttpSinkOptions {
    HttpSinkOptions {
        url: url.into(),
        batch: BatchOptions { max_events: 1000, max_wait_ms: 20, queue_capacity: 1000 },
        retry: RetryOptions { max_attempts: 5, initial_backoff_ms: 10, max_backoff_ms: 50 },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_canonical_with_bearer_and_gzip() {
    let (url, state) = collector().await;
    let events = fixture_events().await;
    std::env::set_var("KCAUDIT_TEST_HTTP_TOKEN", "s3cr3t-token");
    let mut o = options(&url);
    o.gzip = true;
    o.auth.strategy = AuthStrategy::Bearer;
    o.auth.token = SecretOptions::from_env("KCAUDIT_TEST_HTTP_TOKEN");
    o.headers.insert("X-Team".into(), "identity".into());
    let run = start_sink(Box::new(HttpSink::new(&o).unwrap()), &o.batch, &o.retry);
    let report = run.push(items(&events)).await;
    assert_eq!(fates(&[report]), (67, 67, 0, 0));
    let c = state.lock().unwrap();
    assert_eq!(c.seen.len(), 1, "one batch, one request");
    let (h, body) = &c.seen[0];
    assert_eq!(h["authorization"], "Bearer s3cr3t-token");
    assert_eq!(h["content-type"], "application/x-ndjson");
    assert_eq!(h["x-team"], "identity");
    let got: Vec<AuditEvent> = body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
    assert_eq!(got, events, "every event, in order, exactly as kcaudit holds it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsf_json_arrays_split_by_size_and_valid() {
    let (url, state) = collector().await;
    let events = fixture_events().await;
    let mut o = options(&url);
    o.format = JsonFormat::Ocsf;
    o.encoding = Encoding::JsonArray;
    o.max_bytes = 16 * 1024;
    let run = start_sink(Box::new(HttpSink::new(&o).unwrap()), &o.batch, &o.retry);
    assert_eq!(fates(&[run.push(items(&events)).await]), (67, 67, 0, 0));
    let c = state.lock().unwrap();
    assert!(c.seen.len() > 1, "split into several requests");
    let mut records = Vec::new();
    for (_, body) in &c.seen {
        assert!(body.len() <= 16 * 1024 + 8 * 1024, "a request stays near the budget");
        let arr: Vec<Value> = serde_json::from_slice(body).unwrap();
        records.extend(arr);
    }
    let findings: usize = events.iter().map(|e| e.findings.len()).sum();
    assert_eq!(records.len(), events.len() + findings);
    for r in &records {
        ocsf::validate(r).unwrap_or_else(|e| panic!("{e}: {r}"));
    }
    assert_eq!(records.iter().filter(|r| r["class_uid"] == 2004).count(), findings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_call_webhook_gets_only_high_findings_one_request_each() {
    let (url, state) = collector().await;
    let events = fixture_events().await;
    let mut o = options(&url);
    o.encoding = Encoding::PerEvent;
    o.format = JsonFormat::Ecs;
    o.route.min_severity = Some(Severity::High);
    let run = start_sink(Box::new(HttpSink::new(&o).unwrap()), &o.batch, &o.retry);
    assert_eq!(fates(&[run.push(items(&events)).await]), (67, 67, 0, 0), "filtered events are done for this sink, not lost");
    let high: Vec<&AuditEvent> = events.iter().filter(|e| e.severity.is_some_and(|s| s >= Severity::High)).collect();
    assert!(!high.is_empty());
    let c = state.lock().unwrap();
    assert_eq!(c.seen.len(), high.len());
    for ((h, body), e) in c.seen.iter().zip(&high) {
        assert_eq!(h["content-type"], "application/json");
        let doc: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(doc["event"]["id"], e.id.as_str());
    }
    let m = run.metrics.render();
    assert!(m.contains(&format!("kcaudit_events_filtered_total{{sink=\"http\"}} {}", 67 - high.len())), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_endpoint_is_retried_and_a_refusal_is_dead_lettered_with_its_words() {
    let (url, state) = collector().await;
    let events = fixture_events().await;
    let o = options(&url);
    state.lock().unwrap().script = vec![(503, "busy"), (429, "slow down")];
    let run = start_sink(Box::new(HttpSink::new(&o).unwrap()), &o.batch, &o.retry);
    assert_eq!(fates(&[run.push(items(&events[..10])).await]), (10, 10, 0, 0));
    assert_eq!(state.lock().unwrap().seen.len(), 1, "delivered once after two transient answers");

    state.lock().unwrap().script = vec![(400, "{\"error\":\"schema violation at field x\"}")];
    let report = run.push(items(&events[10..20])).await;
    assert_eq!(fates(std::slice::from_ref(&report)), (10, 0, 10, 0));
    assert!(report.items[0].dead_lettered[0].1.contains("HTTP 400") && report.items[0].dead_lettered[0].1.contains("schema violation"), "{:?}", report.items[0]);
}

#[test]
fn config_takes_several_http_sinks_and_refuses_twins_and_header_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.toml");
    std::fs::write(
        &file,
        r#"
[[sinks.http]]
name = "collector"
url = "https://collector.example/ingest"
format = "ocsf"
[[sinks.http]]
name = "oncall"
url = "https://hooks.example/kcaudit"
encoding = "per_event"
route = { min_severity = "critical" }
"#,
    )
    .unwrap();
    let c = kcaudit::config::Config::load(Some(&file), &[]).unwrap();
    assert_eq!(c.sinks.http.len(), 2);
    assert_eq!(c.sinks.http[1].route.min_severity, Some(Severity::Critical));
    assert!(c.problems().iter().all(|p| !p.is_error), "{:?}", c.problems());

    std::fs::write(&file, "[[sinks.http]]\nname = \"stdout\"\nurl = \"https://x.example/\"\nheaders = { Authorization = \"Bearer abc\" }\n").unwrap();
    let c = kcaudit::config::Config::load(Some(&file), &[]).unwrap();
    let problems: Vec<String> = c.problems().iter().map(|p| p.to_string()).collect();
    assert!(problems.iter().any(|p| p.contains("used twice")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("[auth]")), "{problems:?}");
}
