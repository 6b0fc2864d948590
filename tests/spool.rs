//! The durable ingest spool (`[spool]`): webhook requests answered once on disk, drained to the sinks
//! at their pace, surviving SIGKILL and torn files.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use common::services::free_port;
use common::*;

/// An HTTP destination that answers 503 while down and records the event ids it takes while up.
#[derive(Clone, Default)]
struct Destination {
    up: Arc<AtomicBool>,
    ids: Arc<Mutex<Vec<String>>>,
    refused: Arc<AtomicUsize>,
}

async fn take(State(d): State<Destination>, body: String) -> StatusCode {
    if !d.up.load(Ordering::SeqCst) {
        d.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let values: Vec<serde_json::Value> = match serde_json::from_str::<Vec<serde_json::Value>>(&body) {
        Ok(v) => v,
        Err(_) => body.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect(),
    };
    let mut ids = d.ids.lock().unwrap();
    ids.extend(values.iter().map(|v| v["id"].as_str().unwrap().to_string()));
    StatusCode::OK
}

async fn start_destination() -> (Destination, String) {
    let d = Destination::default();
    let app = axum::Router::new().route("/ingest", axum::routing::post(take)).with_state(d.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (d, url)
}

fn sets(data: &Path, port: u16, url: &str) -> Vec<String> {
    vec![
        format!("data_dir={:?}", data.display().to_string()),
        format!("webhook.listen=\"127.0.0.1:{port}\""),
        "spool.enabled=true".into(),
        "sinks.audit_log.enabled=false".into(),
        format!("sinks.http=[{{ name = \"siem\", enabled = true, url = {url:?}, retry = {{ max_attempts = 1000000, initial_backoff_ms = 20, max_backoff_ms = 200 }} }}]"),
    ]
}


/// A native Keycloak event with id `n`.
fn event(base: &[serde_json::Value], n: usize) -> (String, String) {
    let mut v = base[n % base.len()].clone();
    let id = format!("5f00d000-0000-4000-8000-{n:012}");
    v["id"] = serde_json::Value::String(id.clone());
    (id, v.to_string())
}

fn base_events() -> Vec<serde_json::Value> {
    std::fs::read_to_string(fixture("keycloak/keycloak-native-events.jsonl")).unwrap().lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_the_sink_down_loses_nothing_that_was_acknowledged() {
    let (dest, url) = start_destination().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sets = sets(&dir.path().join("data"), port, &url);
    let log = dir.path().join("kcaudit.log");
    let mut first = spawn_serve(&sets, &log);
    let endpoint = format!("http://127.0.0.1:{port}/v1/events");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let t = Instant::now();
    while client.get(format!("http://127.0.0.1:{port}/healthz")).send().await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "kcaudit did not start:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A load generator: 8 connections posting single events (as Keycloak's webhook sender does),
    // while the destination refuses everything. kcaudit is killed in the middle.
    let base = Arc::new(base_events());
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, endpoint, base, acked, next) = (client.clone(), endpoint.clone(), base.clone(), acked.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= 5_000 {
                    return;
                }
                let (id, body) = event(&base, n);
                match client.post(&endpoint).header("content-type", "application/json").body(body).send().await {
                    Ok(r) if r.status().is_success() => acked.lock().unwrap().push(id),
                    Ok(_) => {}
                    Err(_) => return, // kcaudit is gone
                }
            }
        }));
    }
    let t = Instant::now();
    while acked.lock().unwrap().len() < 1_500 {
        assert!(t.elapsed() < Duration::from_secs(120), "only {} acknowledged:\n{}", acked.lock().unwrap().len(), std::fs::read_to_string(&log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let metrics = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or(0.0);
    let (appends, fsyncs) = (value("kcaudit_spool_appends_total"), value("kcaudit_spool_fsyncs_total"));
    eprintln!("group commit: {appends} spooled requests, {fsyncs} fsyncs");
    assert!(appends >= 1_000.0 && fsyncs > 0.0);
    first.kill().unwrap(); // SIGKILL, requests still in flight
    first.wait().unwrap();
    for t in tasks {
        let _ = t.await;
    }
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() < 5_000, "the kill landed mid-load");
    assert!(dest.ids.lock().unwrap().is_empty() && dest.refused.load(Ordering::SeqCst) > 0, "the sink was down the whole time");

    // Restart on the same data directory; the destination recovers.
    let mut second = spawn_serve(&sets, &log);
    dest.up.store(true, Ordering::SeqCst);
    let t = Instant::now();
    loop {
        let got: BTreeSet<String> = dest.ids.lock().unwrap().iter().cloned().collect();
        if acked.is_subset(&got) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "{} of {} acknowledged events delivered:\n{}", acked.intersection(&got).count(), acked.len(), std::fs::read_to_string(&log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Command::new("kill").args(["-TERM", &second.id().to_string()]).status().unwrap();
    assert!(second.wait().unwrap().success());
    let got = dest.ids.lock().unwrap().clone();
    let unique: BTreeSet<&String> = got.iter().collect();
    // Every acknowledged event, exactly once after dedup by id; nothing the generator never sent.
    assert!(acked.iter().all(|id| unique.contains(id)));
    assert!(unique.iter().all(|id| id.starts_with("5f00d000-")));
    // The log of the first run says how many requests each fsync covered (group commit).
    eprintln!("acknowledged {}, delivered {} ({} unique; the rest were spooled but their response was cut by the kill, or repeats)", acked.len(), got.len(), unique.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_spool_from_a_crash_is_recovered_at_start() {
    let (dest, url) = start_destination().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = base_events();
    // First run, destination down: 20 requests spooled, none delivered; then the process dies.
    let port = free_port();
    let mut s = sets(&data, port, &url);
    let log = dir.path().join("kcaudit.log");
    let mut first = spawn_serve(&s, &log);
    let endpoint = format!("http://127.0.0.1:{port}/v1/events");
    let t = Instant::now();
    while reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "kcaudit did not start:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 0..20 {
        let r = reqwest::Client::new().post(&endpoint).body(event(&base, n).1).send().await.unwrap();
        assert_eq!(r.status(), 202, "answered once on disk");
    }
    assert!(wait_until(10, || dest.refused.load(Ordering::SeqCst) > 0).await);
    first.kill().unwrap();
    first.wait().unwrap();
    // A crash in the middle of a write: the last frame is cut short, and junk follows.
    let spool = data.join("spool");
    let seg = std::fs::read_dir(&spool).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "seg")).unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, [&bytes[..bytes.len() - 7], b"\x00garbage"].concat()).unwrap();

    // Second run: starts by itself, quarantines the torn tail, delivers the 19 whole requests.
    dest.up.store(true, Ordering::SeqCst);
    s.retain(|x| !x.starts_with("webhook.listen"));
    s.push("webhook.listen=\"127.0.0.1:0\"".into());
    let refs: Vec<&str> = s.iter().map(String::as_str).collect();
    let running = kcaudit::server::start(&temp_config(&data, &refs)).await.expect("kcaudit starts on a torn spool");
    assert!(wait_until(30, || dest.ids.lock().unwrap().iter().collect::<BTreeSet<_>>().len() >= 19).await);
    let quarantined = running.pipeline.metrics.spool_quarantined.get();
    running.stop().await.unwrap();
    let ids: BTreeSet<String> = dest.ids.lock().unwrap().iter().cloned().collect();
    let want: BTreeSet<String> = (0..19).map(|n| event(&base, n).0).collect();
    assert_eq!(ids, want, "every whole frame, nothing of the torn one");
    assert!(quarantined > 0);
    assert_eq!(std::fs::read_dir(spool.join("quarantine")).unwrap().count(), 1);
}
